"""Bad input of every kind: one line naming what is wrong and how to fix it, a documented
non-zero exit code, no traceback, no secret echoed, and nothing written or changed.

Each case here is a row of the table in docs/errors.md (a test keeps the two in step).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from portshift.errors import ExitCode

from .support import PORTSHIFT

ROOT = Path(__file__).resolve().parents[1]
CANARY = "CANARY-badinput-7Q2x9"
SINK = '[sink]\ntype = "local"\npath = "{out}"\n'
SOURCE = '[source]\ntype = "example"\n'
#: canary S3 credentials, for the cases that get past reading them
S3_KEYS = {"PORTSHIFT_AWS_ACCESS_KEY_ID": "AKIA" + CANARY, "PORTSHIFT_AWS_SECRET_ACCESS_KEY": CANARY}


@dataclass
class Case:
    id: str
    job: str | None  # job file text; {out} and {tmp} are filled in; None: no file is written
    args: list[str] = field(default_factory=list)
    expect: str = ""  # a substring of the one-line message
    code: int = ExitCode.USAGE
    env: dict[str, str] = field(default_factory=dict)
    stdin: str | None = None
    needs: str | None = None  # a plugin module the case needs
    setup: str | None = None  # a named preparation step


CASES = [
    Case("job-file-missing", None, ["run", "--config", "{tmp}/nope.toml"], "does not exist"),
    Case("job-file-empty", "", ["run"], "is empty"),
    Case("job-file-is-a-folder", None, ["run", "--config", "{tmp}"], "is a folder"),
    Case("job-file-unreadable", SOURCE + SINK, ["run"], "not readable", setup="chmod000"),
    Case("job-file-not-toml", "[source\ntype = example", ["run"], "not valid TOML"),
    Case("job-file-not-utf8", None, ["run"], "not UTF-8", setup="latin1"),
    Case("unknown-section", SOURCE + SINK + "[extra]\na = 1\n", ["run"], "unknown section or key 'extra'"),
    Case("unknown-key", SOURCE + "cuont = 3\n" + SINK, ["run"], "unknown key 'cuont' (valid keys:"),
    Case("unknown-job-key", "[job]\ntransfer = 3\n" + SOURCE + SINK, ["run"], "unknown key 'transfer'"),
    Case("wrong-type", SOURCE + 'count = "many"\n' + SINK, ["run"], "[source] count:"),
    Case("missing-source-section", SINK, ["run"], "the [source] section is missing"),
    Case("missing-type", "[source]\ncount = 1\n" + SINK, ["run"], "[source] type is missing"),
    Case("unknown-source-type", '[source]\ntype = "gong"\n' + SINK, ["run"], "unknown source type 'gong'"),
    Case("unknown-sink-type", SOURCE + '[sink]\ntype = "dropbox"\n', ["run"], "unknown sink type 'dropbox'"),
    Case("missing-required-option", SOURCE + '[sink]\ntype = "local"\n', ["run"], "[sink] path: required"),
    Case("bad-key-template", '[job]\nkey_template = "{id}/{title}"\n' + SOURCE + SINK, ["run"], "unknown field {title}"),
    Case(
        "unknown-manifest-writer",
        '[job]\nmanifest = ["md5sum"]\n' + SOURCE + SINK,
        ["run"],
        "unknown manifest writer type 'md5sum'",
    ),
    Case("transfers-zero", SOURCE + SINK, ["run", "--transfers", "0"], "between 1 and 64"),
    Case("transfers-huge", SOURCE + SINK, ["run", "--transfers", "100000"], "between 1 and 64"),
    Case("transfers-not-a-number", SOURCE + SINK, ["run", "--transfers", "four"], "is not a valid integer"),
    Case("invalid-date", SOURCE + SINK, ["run", "--since", "2024-13-45"], "is not a date"),
    Case("since-after-until", SOURCE + SINK, ["run", "--since", "2025-01-01", "--until", "2024-01-01"], "before --until"),
    Case(
        "empty-window-in-job-file",
        "[job]\nsince = 2030-01-01\nuntil = 2029-01-01\n" + SOURCE + SINK,
        ["run"],
        "the export window is empty",
    ),
    Case("state-folder-missing", SOURCE + SINK, ["run", "--state", "{tmp}/no/such/dir/state.db"], "does not exist"),
    Case("state-is-a-folder", SOURCE + SINK, ["run", "--state", "{tmp}"], "is a folder"),
    Case("state-not-sqlite", SOURCE + SINK, ["run"], "cannot open the state file", setup="garbage-state"),
    Case(
        "secrets-stdin-not-json",
        SOURCE + SINK,
        ["run", "--secrets-from-stdin"],
        "not a JSON document",
        stdin=f"{CANARY} not json",
    ),
    Case(
        "secrets-stdin-wrong-section",
        SOURCE + SINK,
        ["run", "--secrets-from-stdin"],
        "unknown sections: dest",
        stdin=json.dumps({"dest": {"token": CANARY}}),
    ),
    Case(
        "signing-key-not-a-key",
        '[job]\nsigning_key_file = "{tmp}/sign.pem"\n' + SOURCE + SINK,
        ["run"],
        "not an unencrypted PEM private key",
        setup="bad-signing-key",
    ),
    Case("signing-key-file-missing", '[job]\nsigning_key_file = "{tmp}/none.pem"\n' + SOURCE + SINK, ["run"], "does not exist"),
    Case("verify-not-an-export", None, ["verify", "{tmp}"], "no portshift-manifest.txt"),
    Case(
        "verify-hand-edited-manifest",
        None,
        ["verify", "{tmp}/export"],
        "is not a valid entry",
        code=ExitCode.VERIFY_FAILED,
        setup="edited-manifest",
    ),
    Case("unknown-job-id", None, ["jobs", "show", "nope", "--state", "{tmp}/state.db"], "no job 'nope'", setup="empty-state"),
    Case("jobs-show-without-state", None, ["jobs", "show", "nope", "--state", "{tmp}/state.db"], "no state file at"),
    # plugin inputs
    Case(
        "chorus-token-missing",
        '[source]\ntype = "chorus"\n' + SINK,
        ["run"],
        "PORTSHIFT_CHORUS_TOKEN",
        needs="portshift_source_chorus",
    ),
    Case(
        "chorus-token-in-job-file",
        f'[source]\ntype = "chorus"\ntoken = "{CANARY}"\n' + SINK,
        ["run"],
        "never read from the job file",
        needs="portshift_source_chorus",
    ),
    Case(
        "chorus-plain-http",
        '[source]\ntype = "chorus"\nbase_url = "http://127.0.0.1:9"\n' + SINK,
        ["run"],
        "must be an https:// URL",
        env={"PORTSHIFT_CHORUS_TOKEN": CANARY},
        needs="portshift_source_chorus",
    ),
    Case(
        "chorus-token-file-unreadable",
        '[source]\ntype = "chorus"\ntoken_file = "{tmp}/none"\n' + SINK,
        ["run"],
        "does not exist",
        needs="portshift_source_chorus",
    ),
    Case(
        "s3-plain-http-endpoint",
        SOURCE + '[sink]\ntype = "s3"\nbucket = "acme-calls"\nregion = "us-east-1"\nendpoint_url = "http://127.0.0.1:9"\n',
        ["run"],
        "must be an https:// URL",
        env=S3_KEYS,
        needs="portshift_sink_s3",
    ),
    Case(
        "s3-impossible-bucket-name",
        SOURCE + '[sink]\ntype = "s3"\nbucket = "No_Such..Bucket"\nregion = "us-east-1"\n',
        ["run"],
        "bucket",
        env=S3_KEYS,
        needs="portshift_sink_s3",
    ),
    Case(
        "s3-no-credentials",
        SOURCE + '[sink]\ntype = "s3"\nbucket = "acme-calls"\nregion = "us-east-1"\n',
        ["run"],
        "credential",
        needs="portshift_sink_s3",
    ),
    Case(
        "azure-expired-sas",
        SOURCE + '[sink]\ntype = "azure"\naccount_url = "https://acct.blob.core.windows.net"\ncontainer = "calls"\n',
        ["run"],
        "expired",
        env={"PORTSHIFT_AZURE_SAS": f"sv=2024-11-04&se=2020-01-01T00:00:00Z&sp=cw&spr=https&sig={CANARY}"},
        needs="portshift_sink_azure",
    ),
    Case(
        "gcs-key-not-json",
        SOURCE + '[sink]\ntype = "gcs"\nbucket = "b"\nkey_file = "{tmp}/key.json"\n',
        ["run"],
        "JSON",
        setup="gcs-garbage-key",
        needs="portshift_sink_gcs",
    ),
]


def _prepare(case: Case, tmp: Path) -> tuple[list[str], Path]:
    job = tmp / "job.toml"
    state = tmp / "state.db"
    if case.job is not None:
        job.write_text(
            case.job.format(out=tmp / "out", tmp=tmp)
            if "{" in case.job and "{id}" not in case.job
            else case.job.replace("{out}", str(tmp / "out")).replace("{tmp}", str(tmp))
        )
    if case.setup == "chmod000":
        job.chmod(0)
    elif case.setup == "latin1":
        job.write_bytes('[source]\ntype = "caf\xe9"\n'.encode("latin-1"))
    elif case.setup == "garbage-state":
        state.write_bytes(b"this is not a database" * 100)
    elif case.setup == "empty-state":
        from portshift.state import State

        State.open(state).close()
    elif case.setup == "bad-signing-key":
        (tmp / "sign.pem").write_text(f"-----BEGIN PRIVATE KEY-----\n{CANARY}\n-----END PRIVATE KEY-----\n")
    elif case.setup == "gcs-garbage-key":
        (tmp / "key.json").write_text(f"{{'private_key': '{CANARY}'")
    elif case.setup == "edited-manifest":
        export = tmp / "export"
        export.mkdir()
        (export / "a.bin").write_bytes(b"a")
        digest = hashlib.sha256(b"a").hexdigest()
        (export / "portshift-manifest.txt").write_text(f"# portshift manifest format 1\n{digest}  a.bin\n{digest} a.bin!\n")
    args = [a.replace("{tmp}", str(tmp)) for a in case.args]
    if args and args[0] == "run":
        if "--config" not in args:
            args += ["--config", str(job)]
        if "--state" not in args:
            args += ["--state", str(state)]
    return args, state


def _snapshot(tmp: Path) -> dict[str, str]:
    return {
        p.relative_to(tmp).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "dir"
        for p in sorted(tmp.rglob("*"))
        if os.access(p, os.R_OK)
    }


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input(case: Case, tmp_path: Path) -> None:
    if case.needs and importlib.util.find_spec(case.needs) is None:
        pytest.skip(f"{case.needs} is not installed")
    args, _ = _prepare(case, tmp_path)
    before = _snapshot(tmp_path)
    env = {**os.environ, **case.env}
    for name in (
        "PORTSHIFT_DEBUG",
        "PORTSHIFT_CHORUS_TOKEN",
        "PORTSHIFT_AZURE_SAS",
        "PORTSHIFT_GCS_KEY",
        "PORTSHIFT_AWS_ACCESS_KEY_ID",
        "PORTSHIFT_AWS_SECRET_ACCESS_KEY",
        "PORTSHIFT_SIGNING_KEY",
    ):
        if name not in case.env:
            env.pop(name, None)
    prefix: list[str] = []
    if case.setup == "chmod000" and os.geteuid() == 0:
        # root reads any file: drop the capabilities that let it, so the permission bits apply
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search"]
    r = subprocess.run([*prefix, *PORTSHIFT, *args], capture_output=True, text=True, env=env, input=case.stdin, timeout=60)
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    if case.code == ExitCode.VERIFY_FAILED:
        lines = [ln for ln in r.stdout.splitlines() if ln.strip() and case.expect in ln]
        assert lines, r.stdout
    else:
        assert len(lines) == 1, f"expected one line, got: {r.stderr!r}"
        assert lines[0].startswith("portshift: error: "), lines[0]
        assert case.expect in lines[0], lines[0]
    assert r.returncode == case.code, (r.returncode, r.stderr)
    assert "Traceback" not in r.stderr + r.stdout
    assert CANARY not in r.stderr + r.stdout
    assert _snapshot(tmp_path) == before, "bad input changed files"
    assert not (tmp_path / "out").exists()


def test_every_case_is_a_row_of_docs_errors_md() -> None:
    doc = (ROOT / "docs" / "errors.md").read_text()
    rows = set(re.findall(r"^\| `([a-z0-9-]+)` \|", doc, re.M))
    ids = {c.id for c in CASES}
    assert ids - rows == set(), f"cases missing from docs/errors.md: {sorted(ids - rows)}"
    assert rows - ids == set(), f"rows in docs/errors.md without a test: {sorted(rows - ids)}"
    assert len(ids) >= 25
