"""The documentation is kept true by these tests.

- docs/plugins.md documents every hook with its exact signature;
- docs/cli.md documents every built-in command and option, every exit code, every environment
  variable the core reads;
- docs/job-file.md documents every [job] key, key-template field and built-in plugin option, and
  every complete job file shown in docs/*.md loads;
- docs/manifest.md's example is what a real job writes;
- docs/writing-plugins.md shows the files of docs/examples/portshift-sink-memo verbatim;
- the plugin-author pages and the example import only ``portshift`` and ``portshift.testing``, and
  the sink shown in docs/plugins.md passes the conformance kit.
"""

from __future__ import annotations

import ast
import hashlib
import inspect
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import pytest

from portshift import hookspecs, plugins
from portshift.cli import get_cli
from portshift.config import JobSection, build_options, load_job
from portshift.errors import ExitCode
from portshift.keys import FIELDS
from portshift.pipeline import Runner, RunRequest
from portshift.plugins import load_plugins, pm
from portshift.state import State
from portshift.testing import SinkContract, read_back_folder

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
DOCS = REPO / "docs"
EXAMPLE = DOCS / "examples" / "portshift-sink-memo"


# --- reading Markdown ---------------------------------------------------------------------------
@dataclass
class Block:
    info: str  #: the fence's info string: ``python title="x.py"``
    body: str
    line: int  #: line number of the opening fence

    @property
    def lang(self) -> str:
        return self.info.split()[0] if self.info.split() else ""

    @property
    def title(self) -> str | None:
        m = re.search(r'title="([^"]+)"', self.info)
        return m.group(1) if m else None

    @property
    def is_job_file(self) -> bool:
        return self.lang == "toml" and "job-file" in self.info.split()[1:]


def fenced_blocks(text: str) -> list[Block]:
    """Fenced code blocks (``` or longer fences), in order."""
    blocks: list[Block] = []
    lines = text.split("\n")
    i = 0
    while i < len(lines):
        m = re.match(r"^(`{3,})(.*)$", lines[i])
        if not m:
            i += 1
            continue
        fence, info, start = m.group(1), m.group(2).strip(), i
        body: list[str] = []
        i += 1
        while i < len(lines) and not re.match(rf"^`{{{len(fence)},}}\s*$", lines[i]):
            body.append(lines[i])
            i += 1
        assert i < len(lines), f"unclosed code block at line {start + 1}"
        blocks.append(Block(info, "\n".join(body) + "\n", start + 1))
        i += 1
    return blocks


def without_code(text: str) -> str:
    """The text with fenced code blocks blanked out (keeps line numbers)."""
    out: list[str] = []
    fence: str | None = None
    for line in text.split("\n"):
        if fence is None:
            m = re.match(r"^(`{3,})", line)
            if m:
                fence = m.group(1)
                out.append("")
                continue
            out.append(line)
        else:
            if re.match(rf"^`{{{len(fence)},}}\s*$", line):
                fence = None
            out.append("")
    return "\n".join(out)


def sections(text: str) -> list[tuple[int, str, str]]:
    """(level, heading text, body up to the next heading)."""
    prose = without_code(text)
    lines = prose.split("\n")
    raw = text.split("\n")
    heads = [
        (i, len(m.group(1)), m.group(2).strip()) for i, line in enumerate(lines) if (m := re.match(r"^(#{1,6})\s+(.*)$", line))
    ]
    out = []
    for n, (i, level, title) in enumerate(heads):
        end = heads[n + 1][0] if n + 1 < len(heads) else len(lines)
        out.append((level, title, "\n".join(raw[i + 1 : end])))
    return out


def section(text: str, title: str) -> str:
    found = [body for _, t, body in sections(text) if t == title]
    assert len(found) == 1, f"expected exactly one section headed {title!r}, found {len(found)}"
    return found[0]


def first_cells(body: str) -> list[str]:
    """First cells of the Markdown table rows in ``body`` (header and separator rows dropped)."""
    rows = [line for line in without_code(body).split("\n") if line.startswith("|")]
    cells = [re.split(r"(?<!\\)\|", row)[1].strip() for row in rows]
    return [c for c in cells[1:] if not re.fullmatch(r":?-+:?", c)]


def ticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


# --- docs/plugins.md: the hooks -------------------------------------------------------------------
HOOK_HEADING = re.compile(r"^`?([a-z_][a-z0-9_]*)\(([^)]*)\)`?$")


def spec_signatures() -> dict[str, list[str]]:
    """Every hook the plugin manager knows, with its spec's parameters, checked against the
    hookspecs module itself."""
    load_plugins()
    from_pm = {name: list(caller.spec.argnames) for name, caller in vars(pm.hook).items() if getattr(caller, "spec", None)}
    from_module = {
        name: list(inspect.signature(fn).parameters)
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, "portshift_spec")
    }
    assert from_pm == from_module, "the plugin manager and portshift.hookspecs disagree"
    assert from_pm, "no hooks found"
    return from_pm


def documented_hooks(text: str) -> dict[str, tuple[list[str], str]]:
    out: dict[str, tuple[list[str], str]] = {}
    for _, title, body in sections(text):
        m = HOOK_HEADING.match(title)
        if not m:
            continue
        name = m.group(1)
        args = [a.strip() for a in m.group(2).split(",") if a.strip()]
        assert name not in out, f"hook {name} is documented twice"
        out[name] = (args, body)
    return out


def test_every_hook_is_documented() -> None:
    specs = spec_signatures()
    docs = documented_hooks(read("plugins.md"))
    missing = sorted(set(specs) - set(docs))
    assert not missing, f"hooks missing from docs/plugins.md (add a heading `name(args)`): {missing}"
    wrong = {name: (docs[name][0], specs[name]) for name in specs if docs[name][0] != specs[name]}
    assert not wrong, f"documented signature differs from portshift/hookspecs.py (doc, spec): {wrong}"
    stale = sorted(set(docs) - set(specs))
    assert not stale, f"docs/plugins.md documents hooks that do not exist: {stale}"


def test_every_hook_section_has_arguments_when_and_an_example() -> None:
    for name, (args, body) in documented_hooks(read("plugins.md")).items():
        for arg in args:
            assert re.search(rf"^- `{arg}`:", body, re.M), f"{name}: argument {arg} is not described"
        assert "**When it is called:**" in body, f"{name}: say when it is called"
        examples = [b for b in fenced_blocks(body) if b.lang == "python"]
        assert examples, f"{name}: no example"
        assert any(f"def {name}(" in b.body and "@hookimpl" in b.body for b in examples), (
            f"{name}: the example implements no {name}"
        )


@pytest.mark.parametrize("page", ["plugins.md", "writing-plugins.md"])
def test_python_examples_compile(page: str) -> None:
    blocks = [b for b in fenced_blocks(read(page)) if b.lang == "python"]
    assert blocks
    for b in blocks:
        try:
            ast.parse(b.body)
        except SyntaxError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"docs/{page} line {b.line}: the python example does not parse: {e}")


def test_plugins_doc_names_the_contract() -> None:
    """The shapes, errors and helpers the brief promises plugin authors are all on the page."""
    text = read("plugins.md")
    heads = {t for _, t, _ in sections(text)}
    for shape in (
        "Source",
        "Recording",
        "Window",
        "Artifact",
        "Opened",
        "Sink",
        "PutResult",
        "Reader",
        "ManifestWriter",
        "ManifestEntry",
        "StoredFile",
        "JobInfo",
        "FileExported",
    ):
        assert f"### `{shape}`" in {f"### {h}" for h in heads}, f"no section for {shape}"
    import portshift.api as api

    for shape in api.__all__:
        assert f"`{shape}`" in text, f"portshift.api.{shape} is not documented"
    for name in (
        "SkipRecording",
        "AuthError",
        "SourceError",
        "SinkError",
        "IntegrityError",
        "ConfigError",
        "RemoteError",
        "Secret",
        "secret_field",
        "register_mask",
        "ssl_context",
        "https_client",
        "require_https",
        "HttpsUrl",
        "Backoff",
        "parse_retry_after",
        "RateLimiter",
        "call_with_retries",
        "redact_url",
        "SinkContract",
        "SourceContract",
        "PORTSHIFT_LOAD_PLUGINS",
        "[project.entry-points.portshift]",
    ):
        assert name in text, f"{name} is not documented in docs/plugins.md"
    import portshift.testing as kit
    from portshift.testing import ReaderContract, SinkContract, SourceContract

    undocumented = [name for name in kit.__all__ if f"`{name}" not in text]
    assert not undocumented, f"portshift.testing names missing from docs/plugins.md: {undocumented}"
    contracts = (
        (SinkContract, ("sink", "read_back", "many_size", "threads", "bounded_size", "memory_budget", "replaces_objects")),
        (SourceContract, ("source", "window")),
        (ReaderContract, ("reader", "store", "many_size", "max_chunk")),
    )
    for contract, fixtures in contracts:
        for name in fixtures:
            assert hasattr(contract, name), f"{contract.__name__}.{name} no longer exists"
            assert f"`{name}" in text, f"{contract.__name__}.{name} is not documented"


# --- docs/cli.md --------------------------------------------------------------------------------
COMMON = {"--log-level", "--log-format"}
HELP = {"-h", "--help"}


def walk(cmd: click.Command, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], click.Command]]:
    out = [(path, cmd)]
    if isinstance(cmd, click.Group):
        for name, sub in sorted(cmd.commands.items()):
            out += walk(sub, (*path, name))
    return out


def builtin_commands() -> dict[tuple[str, ...], click.Command]:
    return {
        path: cmd
        for path, cmd in walk(get_cli())
        if not path or (cmd.callback is not None and cmd.callback.__module__.startswith("portshift."))
    }


def option_names(cmd: click.Command) -> set[str]:
    names: set[str] = set()
    for p in cmd.params:
        if isinstance(p, click.Option):
            names.update(p.opts)
            names.update(p.secondary_opts)
    return names


def cli_sections() -> dict[tuple[str, ...], str]:
    out = {}
    for _, title, body in sections(read("cli.md")):
        m = re.fullmatch(r"`portshift((?: [a-z][a-z0-9-]*)*)`", title)
        if m:
            out[tuple(m.group(1).split())] = body
    return out


def test_every_cli_command_and_option_is_documented_and_exists() -> None:
    commands = builtin_commands()
    documented = cli_sections()
    unknown = sorted(" ".join(p) for p in documented if p not in dict(walk(get_cli())))
    assert not unknown, f"docs/cli.md documents commands that do not exist: {unknown}"
    missing = sorted(" ".join(("portshift", *p)) for p in commands if p not in documented)
    assert not missing, f"commands missing from docs/cli.md (add a heading `portshift <command>`): {missing}"
    for path, cmd in commands.items():
        shown = {
            opt
            for cell in first_cells(documented[path])
            for tick in ticked(cell)
            for opt in re.findall(r"(?<![\w-])(--?[a-z][a-z0-9-]*)", tick)
        }
        real = option_names(cmd) | HELP  # click adds -h/--help to every command
        where = "portshift " + " ".join(path)
        assert shown <= real, f"{where}: docs/cli.md shows options that do not exist: {sorted(shown - real)}"
        needed = real - HELP - (COMMON if path else set())
        assert needed <= shown, f"{where}: options missing from its table in docs/cli.md: {sorted(needed - shown)}"
    every = section(read("cli.md"), "Options every command takes")
    shown_common = {opt for cell in first_cells(every) for tick in ticked(cell) for opt in re.findall(r"--[a-z-]+", tick)}
    assert shown_common == COMMON
    for path, cmd in commands.items():
        assert COMMON <= option_names(cmd), f"portshift {' '.join(path)} lacks {COMMON - option_names(cmd)}"


def test_every_exit_code_is_documented_with_its_number() -> None:
    codes = {name: value for name, value in vars(ExitCode).items() if name.isupper() and isinstance(value, int)}
    rows = re.findall(r"^\|\s*(\d+)\s*\|\s*`([A-Z_]+)`\s*\|", section(read("cli.md"), "Exit codes"), re.M)
    documented: dict[str, int] = {}
    for number, name in rows:
        assert name not in documented, f"exit code {name} is documented twice"
        documented[name] = int(number)
    assert documented == codes, f"docs/cli.md exit codes {documented} differ from portshift.errors.ExitCode {codes}"


def env_table() -> dict[str, str]:
    """variable -> kind (setting, secret, option) from docs/cli.md's table."""
    rows = re.findall(
        r"^\|\s*`(PORTSHIFT_[A-Z0-9_]+)`\s*\|\s*([a-z]+)\s*\|", section(read("cli.md"), "Environment variables"), re.M
    )
    table: dict[str, str] = {}
    for name, kind in rows:
        assert name not in table, f"{name} is documented twice in docs/cli.md"
        assert kind in ("setting", "secret", "option"), f"{name}: kind {kind!r} is not setting, secret or option"
        table[name] = kind
    return table


def test_every_environment_variable_the_core_reads_is_documented() -> None:
    from portshift.settings import Settings, env_name

    names: set[str] = {env_name(f) for f in Settings.model_fields}
    for path in (REPO / "portshift").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and re.fullmatch(r"PORTSHIFT_[A-Z0-9_]+", node.value)
            ):
                names.add(node.value)
    assert {"PORTSHIFT_DEBUG", "PORTSHIFT_LOAD_PLUGINS", "PORTSHIFT_STATE", "PORTSHIFT_SIGNING_KEY"} <= names
    documented = set(env_table())
    assert names <= documented, f"environment variables missing from docs/cli.md: {sorted(names - documented)}"


def test_every_setting_is_documented_and_every_documented_setting_exists() -> None:
    from portshift.settings import Settings, env_name

    fields = {env_name(f) for f in Settings.model_fields}
    documented = {name for name, kind in env_table().items() if kind == "setting"}
    assert fields - documented == set(), f"settings missing from docs/cli.md: {sorted(fields - documented)}"
    assert documented - fields == set(), f"docs/cli.md lists settings portshift/settings.py lacks: {sorted(documented - fields)}"


def test_every_secret_variable_is_documented_as_a_secret() -> None:
    load_plugins()
    secrets = {"PORTSHIFT_SIGNING_KEY"}
    for registry in (plugins.sources(), plugins.sinks()):
        for cls in registry.classes.values():
            secrets |= {str(extra["env"]) for extra in cls.Options.secret_fields().values()}
    table = env_table()
    wrong = {name: table.get(name) for name in secrets if table.get(name) != "secret"}
    assert not wrong, f"secret variables not documented as secrets in docs/cli.md: {wrong}"
    # every documented secret is one a plugin of this repository (installed here or not) reads
    sources = [
        p.read_text(encoding="utf-8")
        for p in [*(REPO / "portshift").rglob("*.py"), *(REPO / "plugins").glob("*/portshift_*/**/*.py")]
    ]
    stale = [n for n, kind in table.items() if kind == "secret" and not any(f'"{n}"' in text for text in sources)]
    assert not stale, f"docs/cli.md documents secret variables nothing reads: {stale}"


def test_every_command_option_read_from_the_environment_is_documented() -> None:
    envvars = set()
    for _, cmd in walk(get_cli()):
        for p in cmd.params:
            if isinstance(p, click.Option) and p.envvar:
                envvars |= {p.envvar} if isinstance(p.envvar, str) else set(p.envvar)
    documented = {name for name, kind in env_table().items() if kind == "option"}
    assert envvars <= documented, f"options read from the environment missing from docs/cli.md: {sorted(envvars - documented)}"
    plugin_code = "".join(p.read_text(encoding="utf-8") for p in (REPO / "plugins").glob("*/portshift_*/**/*.py"))
    stale = [n for n in documented - envvars if f'envvar="{n}"' not in plugin_code]
    assert not stale, f"docs/cli.md documents option variables no command reads: {stale}"


# --- docs/job-file.md ---------------------------------------------------------------------------
def test_job_file_doc_lists_every_option() -> None:
    from portshift.default_plugins.bagit_manifest import BagitOptions
    from portshift.default_plugins.example_source import ExampleOptions
    from portshift.default_plugins.local_sink import LocalOptions

    text = read("job-file.md")

    def names(title: str) -> list[str]:
        return [ticked(c)[0] for c in first_cells(section(text, title)) if ticked(c)]

    assert sorted(names("`[job]`")) == sorted(JobSection.model_fields)
    fields = [n.strip("{}") for c in first_cells(section(text, "`key_template`")) for n in ticked(c)]
    assert sorted(fields) == sorted(FIELDS)
    assert sorted(names("The `example` source")) == sorted(ExampleOptions.model_fields)
    assert sorted(names("The `local` sink")) == sorted(LocalOptions.model_fields)
    assert sorted(names("`[manifest.<writer>]`")) == sorted(BagitOptions.model_fields)


def test_key_template_example_is_what_portshift_builds() -> None:
    from datetime import datetime, timezone

    from portshift.keys import build_key, check_template

    m = re.search(r'`key_template = "([^"]+)"` gives `([^`]+)`', read("job-file.md"))
    assert m, "docs/job-file.md should show a key_template example and the key it gives"
    check_template(m.group(1))
    built = build_key(
        m.group(1),
        recording_id="ex0000000000",
        artifact="media",
        ext="mp3",
        started_at=datetime(2024, 1, 1, 9, tzinfo=timezone.utc),
        fields={"type": "meeting"},
        source="example",
    )
    assert built == m.group(2)


def job_blocks() -> list[Any]:
    params = []
    for page in sorted(DOCS.glob("*.md")):
        for b in fenced_blocks(page.read_text(encoding="utf-8")):
            if b.is_job_file:
                params.append(pytest.param(page.name, b.body, id=f"{page.name}:{b.line}"))
    return params


#: Credentials that a plugin inspects while validating its options need a plausible shape.
DUMMY_SECRETS = {
    "PORTSHIFT_AZURE_SAS": "sv=2022-11-02&sr=c&sp=cw&se=2099-01-01T00:00:00Z&spr=https&sig=ZG9jcy10ZXN0LXNpZ25hdHVyZQ%3D%3D",
}


def _dummy_secret(env: str) -> str:
    if env == "PORTSHIFT_GCS_KEY":
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric import rsa

        pem = rsa.generate_private_key(public_exponent=65537, key_size=2048).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        return json.dumps(
            {
                "type": "service_account",
                "project_id": "docs-test",
                "private_key_id": "0" * 40,
                "private_key": pem.decode(),
                "client_email": "docs-test@docs-test.iam.gserviceaccount.com",
                "client_id": "1",
                "token_uri": "https://oauth2.googleapis.com/token",
            }
        )
    return DUMMY_SECRETS.get(env, "docs-test-credential-0123456789")


@pytest.fixture
def example_memo_plugin(monkeypatch: pytest.MonkeyPatch) -> Any:
    """Register docs/examples/portshift-sink-memo in this process unless it is installed (it is
    installed for real, in a venv of its own, by tests/test_example_plugin.py)."""
    load_plugins()
    if "memo" in plugins.sinks().classes:
        yield
        return
    sys.path.insert(0, str(EXAMPLE))
    monkeypatch.setattr(sys, "dont_write_bytecode", True)  # leave no __pycache__ in docs/
    try:
        import portshift_sink_memo

        pm.register(portshift_sink_memo, name="docs-example-portshift-sink-memo")
        try:
            yield
        finally:
            pm.unregister(portshift_sink_memo)
    finally:
        sys.path.remove(str(EXAMPLE))


@pytest.mark.parametrize(("page", "body"), job_blocks())
def test_job_files_in_the_docs_load(
    page: str, body: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, example_memo_plugin: None
) -> None:
    doc = tomllib.loads(body)
    not_installed = []
    for section_name, registry in (("source", plugins.sources()), ("sink", plugins.sinks())):
        kind = doc[section_name]["type"]
        if kind not in registry.classes:
            not_installed.append(f"[{section_name}] type {kind!r} (the portshift-{section_name}-{kind} plugin)")
            continue
        # credentials: only those the block itself names (in a comment or as a *_file option)
        for name, extra in registry.classes[kind].Options.secret_fields().items():
            env = str(extra["env"])
            monkeypatch.delenv(env, raising=False)
            if env in body:
                monkeypatch.setenv(env, _dummy_secret(env))
            file_key = f"{name}_file"
            if file_key in doc[section_name] and not Path(doc[section_name][file_key]).exists():
                secret_file = tmp_path / file_key
                secret_file.write_text(_dummy_secret(env) + "\n")
                doc[section_name][file_key] = str(secret_file)
        # the installed half is checked even when the other half's plugin is missing
        options = {k: v for k, v in doc[section_name].items() if k != "type"}
        build_options(registry.classes[kind].Options, options, section_name)
    if not_installed:
        pytest.skip("not installed here: " + ", ".join(not_installed) + "; the rest of the block is valid")
    monkeypatch.delenv("PORTSHIFT_SIGNING_KEY", raising=False)
    if "signing_key_file" in doc.get("job", {}):
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

        key_file = tmp_path / "manifest-signing.pem"
        key_file.write_bytes(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
            )
        )
        doc["job"]["signing_key_file"] = str(key_file)
    state_password = doc.get("state", {}).get("password_file")
    if state_password and not Path(state_password).exists():
        (tmp_path / "state-password").write_text("docs-test-password\n")
        doc["state"]["password_file"] = str(tmp_path / "state-password")
    cfg = load_job(None, doc=doc)
    assert cfg.source_type == doc["source"]["type"] and cfg.sink_type == doc["sink"]["type"]
    assert [w[0] for w in cfg.writers] == doc.get("job", {}).get("manifest", ["sha256sum"])


def test_the_docs_show_complete_job_files() -> None:
    pages = {p.values[0] for p in job_blocks()}
    assert {"job-file.md", "manifest.md", "writing-plugins.md"} <= pages


# --- docs/manifest.md ---------------------------------------------------------------------------
def _header_key(line: str) -> str:
    body = line[1:].strip()
    return body.split(": ", 1)[0] if ": " in body else re.sub(r"\d+$", "<n>", body)


def _entries(text: str) -> list[tuple[str, str]]:
    out = []
    for line in text.splitlines():
        if line.startswith("#") or not line:
            continue
        m = re.fullmatch(r"([0-9a-f]{64})  ([A-Za-z0-9._/-]+)", line)
        assert m, f"not an entry line: {line!r}"
        out.append((m.group(1), m.group(2)))
    return out


def _shape(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shape(v) for v in value]
    return type(value).__name__


def test_manifest_doc_matches_real_output(tmp_path: Path) -> None:
    text = read("manifest.md")
    blocks = fenced_blocks(text)
    job_doc = tomllib.loads(next(b for b in blocks if b.is_job_file).body)
    doc_txt = next(b for b in blocks if b.title == "portshift-manifest.txt").body
    doc_json = next(b for b in blocks if b.title == "portshift-manifest.json").body

    job_doc["sink"]["path"] = str(tmp_path / "exports")
    with State.open(tmp_path / "state.db") as state:
        result = Runner(load_job(None, doc=job_doc), state, retry_base=0.0).run(RunRequest())
    assert result.status == "complete", result.message
    root = tmp_path / "exports" / result.export_root
    real_txt = (root / "portshift-manifest.txt").read_text(encoding="utf-8")
    real_json = (root / "portshift-manifest.json").read_text(encoding="utf-8")
    assert subprocess.run(["sha256sum", "-c", "--strict", "--quiet", "portshift-manifest.txt"], cwd=root).returncode == 0

    # header: the same keys in the same order; values that do not depend on time or the job id match
    doc_head = [line for line in doc_txt.splitlines() if line.startswith("#")]
    real_head = [line for line in real_txt.splitlines() if line.startswith("#")]
    assert [_header_key(x) for x in doc_head] == [_header_key(x) for x in real_head]
    assert doc_head[0] == real_head[0], "the format version line differs"
    for doc_line, real_line in zip(doc_head, real_head):
        if _header_key(doc_line) in ("check with", "window", "files", "bytes", "source"):
            assert doc_line == real_line
    shapes = {
        "job": r"# job: \d{8}T\d{6}Z-[0-9a-f]{6}",
        "started": r"# started: \S+",
        "finished": r"# finished: \S+",
        "tool": r"# tool: portshift \S+",
    }
    for line in doc_head + real_head:
        if _header_key(line) in shapes:
            assert re.fullmatch(shapes[_header_key(line)], line), line

    # entries: the index first, then the same files with the same SHA-256 (the example source is deterministic)
    doc_entries, real_entries = _entries(doc_txt), _entries(real_txt)
    assert doc_entries[0][1] == real_entries[0][1] == "portshift-manifest.json"
    assert doc_entries[1:] == real_entries[1:]
    # the example is consistent with itself: its index line is the SHA-256 of its JSON example
    assert hashlib.sha256(doc_json.encode()).hexdigest() == doc_entries[0][0]

    # the JSON index: the same keys, in the same order, and the same files
    dj, rj = json.loads(doc_json), json.loads(real_json)
    assert _shape(dj) == _shape(rj) and list(dj) == list(rj) and list(dj["job"]) == list(rj["job"])
    assert dj["files"] == rj["files"]
    assert {k: dj["job"][k] for k in ("window", "source", "file_count", "total_bytes")} == {
        k: rj["job"][k] for k in ("window", "source", "file_count", "total_bytes")
    }
    assert dj["format"] == rj["format"] == int(doc_head[0].rsplit(" ", 1)[1])
    doc_id = dj["job"]["id"]
    assert f"# job: {doc_id}" in doc_head

    # the listing of the files written matches the real tree
    listing = next(b for b in blocks if b.lang == "text" and b.body.startswith(f"{doc_id}/"))
    real_files = sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())
    assert listing.body.split() == [f"{doc_id}/{p}" for p in real_files]

    # every JSON key is explained in the index table
    table = {t for c in first_cells(section(text, "`portshift-manifest.json`, the index")) for t in ticked(c)}
    expected = {"format"} | {f"job.{k}" for k in rj["job"] if k != "window"} | {"job.window.start", "job.window.end", "files"}
    expected |= {f"files[].{k}" for k in rj["files"][0]}
    assert expected <= table, f"index keys missing from docs/manifest.md: {sorted(expected - table)}"
    header_table = [ticked(c)[0] for c in first_cells(section(text, "Header lines"))]
    assert [_header_key(x) for x in header_table] == [_header_key(x) for x in real_head]


# --- docs/writing-plugins.md ---------------------------------------------------------------------
def example_files() -> list[str]:
    skip = {"__pycache__", ".ruff_cache", ".pytest_cache", "build"}
    return sorted(
        p.relative_to(EXAMPLE).as_posix()
        for p in EXAMPLE.rglob("*")
        if p.is_file()
        and not (set(p.relative_to(EXAMPLE).parts) & skip)
        and not any(part.endswith(".egg-info") for part in p.parts)
    )


def test_writing_plugins_shows_the_example_files_verbatim() -> None:
    shown = {b.title: b.body for b in fenced_blocks(read("writing-plugins.md")) if b.title}
    files = example_files()
    assert "pyproject.toml" in files and "tests/test_contract.py" in files
    assert sorted(shown) == files, "docs/writing-plugins.md must show every file of the example, and only those"
    for name in files:
        assert shown[name] == (EXAMPLE / name).read_text(encoding="utf-8"), (
            f"docs/writing-plugins.md shows a different {name} than docs/examples/portshift-sink-memo/{name}"
        )


# --- links between the pages ----------------------------------------------------------------------
def slug(heading: str) -> str:
    """GitHub's anchor for a heading."""
    text = heading.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


@pytest.mark.parametrize(
    "page",
    ["plugins.md", "writing-plugins.md", "manifest.md", "job-file.md", "cli.md", "releasing.md", "scaling.md", "byok.md"],
)
def test_links_resolve(page: str) -> None:
    prose = without_code(read(page))
    for target in re.findall(r"\]\(([^)\s]+)\)", prose):
        if re.match(r"https?://", target):
            continue
        path, _, anchor = target.partition("#")
        file = (DOCS / path).resolve() if path else DOCS / page
        assert file.exists(), f"docs/{page}: link to {target}: no such file"
        if anchor:
            assert file.suffix == ".md", f"docs/{page}: anchor in a link to a non-Markdown file: {target}"
            anchors = {slug(t) for _, t, _ in sections(file.read_text(encoding="utf-8"))}
            assert anchor in anchors, f"docs/{page}: link to {target}: no heading with that anchor"


# --- the public surface: what plugin authors are shown ---------------------------------------------
PUBLIC_MODULES = {"portshift", "portshift.testing"}


def _portshift_imports(code: str) -> list[tuple[str, list[str]]]:
    """(module, names) of every import of portshift or one of its modules in ``code``."""
    out = []
    for node in ast.walk(ast.parse(code)):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            if node.module == "portshift" or node.module.startswith("portshift."):
                out.append((node.module, [a.name for a in node.names]))
        elif isinstance(node, ast.Import):
            out += [(a.name, []) for a in node.names if a.name == "portshift" or a.name.startswith("portshift.")]
    return out


def author_code() -> list[Any]:
    params = []
    for page in ("plugins.md", "writing-plugins.md"):
        for b in fenced_blocks(read(page)):
            if b.lang == "python":
                params.append(pytest.param(b.body, id=f"{page}:{b.line}"))
    for path in sorted(EXAMPLE.rglob("*.py")):
        params.append(pytest.param(path.read_text(encoding="utf-8"), id=f"example:{path.relative_to(EXAMPLE)}"))
    return params


@pytest.mark.parametrize("code", author_code())
def test_plugin_authors_import_only_portshift_and_portshift_testing(code: str) -> None:
    import portshift
    import portshift.testing

    surface = {"portshift": set(portshift.__all__), "portshift.testing": set(portshift.testing.__all__)}
    for module, names in _portshift_imports(code):
        assert module in PUBLIC_MODULES, f"imports {module}: plugin code imports from portshift or portshift.testing only"
        missing = [n for n in names if n not in surface[module]]
        assert not missing, f"{module} does not export {missing}"


def test_the_example_plugin_is_checked_for_its_imports() -> None:
    ids = [p.id for p in author_code()]
    assert "example:portshift_sink_memo/sink.py" in ids and any(i.startswith("plugins.md:") for i in ids)


def kit_checked_sink() -> type:
    """The sink of the ``python kit-checked`` block of docs/plugins.md, run as written."""
    [block] = [b for b in fenced_blocks(read("plugins.md")) if b.lang == "python" and "kit-checked" in b.info.split()]
    namespace: dict[str, Any] = {"__name__": "docs_plugins_journal_example"}
    exec(compile(block.body, f"docs/plugins.md:{block.line}", "exec", dont_inherit=True), namespace)  # noqa: S102
    from portshift import Sink

    [sink] = [v for v in namespace.values() if isinstance(v, type) and issubclass(v, Sink) and v is not Sink]
    return sink


class TestTheJournalExampleOfThePluginsPagePassesTheKit(SinkContract):
    """docs/plugins.md's journal example is the kit-passing version: journal None-checked, entries
    ended only after a successful commit or abort, recover() idempotent."""

    @pytest.fixture
    def sink(self, tmp_path: Path) -> Any:
        cls = kit_checked_sink()
        sink = cls(build_options(cls.Options, {"path": str(tmp_path / "dest")}, "sink"))
        yield sink
        sink.close()

    @pytest.fixture
    def read_back(self, tmp_path: Path) -> Any:
        return read_back_folder(tmp_path / "dest")


def test_the_journal_section_says_when_the_journal_is_none() -> None:
    body = section(read("plugins.md"), "`Journal`")
    assert "**`None`**" in body and "only after a successful" in body


@pytest.mark.parametrize("shape", ["Artifact", "Opened"])
def test_the_documented_constructor_is_the_dataclass(shape: str) -> None:
    """`Artifact(...)` and `Opened(...)` on the page list the dataclass's fields, in order."""
    import dataclasses
    import re

    import portshift.api as api

    text = " ".join(read("plugins.md").split())
    m = re.search(rf"`{shape}\(([^)]*)\)`", text)
    assert m, f"no `{shape}(...)` signature on the page"
    documented = [p.strip().split("=")[0] for p in m.group(1).split(",")]
    assert documented == [f.name for f in dataclasses.fields(getattr(api, shape))]
