"""`portshift verify DIR`: re-hash a local copy of an export against its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..api import Reader
from ..config import build_options, load_toml
from ..errors import ConfigError, ExitCode, VerificationError
from ..manifest import MANIFEST_NAME, SIGNATURE_SUFFIX
from ..plugins import readers
from ..signing import verify_signature
from ..verify import verify_dir, verify_store
from . import common_options
from .options import read_stdin_secrets, secrets_stdin_option


def _reader(path: Path, secrets_from_stdin: bool) -> Reader:
    doc = load_toml(path)
    unknown = set(doc) - {"store"}
    if unknown or "store" not in doc or not isinstance(doc["store"], dict):
        raise ConfigError(f"{path}: expected one [store] section (like the job file's [sink]) and nothing else")
    section = dict(doc["store"])
    kind = section.pop("type", None)
    if not kind:
        raise ConfigError("[store] type is missing", hint='e.g. type = "s3"')
    cls = readers().get(kind)
    if secrets_from_stdin:
        from ..secrets import Secret

        given = read_stdin_secrets().get("store", {})
        section.update({k: Secret(v, k) for k, v in given.items()})
    return cls(build_options(cls.Options, section, "store"))


@click.command("verify")
@click.argument("root")
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="also check portshift-manifest.txt.sig with this Ed25519 public key (PEM)",
)
@click.option(
    "--store",
    "store_path",
    type=click.Path(path_type=Path),
    help="check the export in its bucket: a TOML file with a [store] section like the job's [sink], read-only credentials",
)
@secrets_stdin_option
@common_options
def command(root: str, as_json: bool, public_key: Path | None, store_path: Path | None, secrets_from_stdin: bool) -> int:
    """Re-hash every file of an export root against portshift-manifest.txt and report
    ok / differ / missing / extra.

    ROOT is a local folder (a downloaded copy), or with --store the export root's name (the
    job id) in the bucket, streamed back without touching the disk."""
    manifest_bytes: bytes
    signature: bytes | None
    if store_path is not None:
        reader = _reader(store_path, secrets_from_stdin)
        try:
            report = verify_store(reader, root)
            manifest_bytes = b"".join(reader.open(f"{root.strip('/')}/{MANIFEST_NAME}"))
            try:
                signature = b"".join(reader.open(f"{root.strip('/')}/{MANIFEST_NAME}{SIGNATURE_SUFFIX}"))
            except FileNotFoundError:
                signature = None
        finally:
            reader.close()
    else:
        local = Path(root)
        report = verify_dir(local)
        manifest_bytes = (local / MANIFEST_NAME).read_bytes()
        sig_path = local / (MANIFEST_NAME + SIGNATURE_SUFFIX)
        signature = sig_path.read_bytes() if sig_path.is_file() else None
    if public_key is not None:
        if signature is None:
            raise VerificationError(
                f"no signature {MANIFEST_NAME}{SIGNATURE_SUFFIX} beside the manifest: the export was not signed"
            )
        verify_signature(public_key, manifest_bytes, signature)
        if not as_json:
            click.echo(f"signature: OK ({MANIFEST_NAME}{SIGNATURE_SUFFIX}, Ed25519)")
    if as_json:
        click.echo(
            json.dumps(
                {
                    "ok": len(report.ok),
                    "differ": report.differ,
                    "missing": report.missing,
                    "extra": report.extra,
                    "bad_lines": report.bad_lines,
                    "passed": report.passed,
                }
            )
        )
    else:
        for rel in report.differ:
            click.echo(f"* differ   {rel}")
        for rel in report.missing:
            click.echo(f"- missing  {rel}")
        for rel in report.extra:
            click.echo(f"+ extra    {rel}")
        for n in report.bad_lines:
            click.echo(f"! line {n} of the manifest is not a valid entry")
        verdict = "OK" if report.passed else "FAILED"
        click.echo(
            f"{verdict}: {len(report.ok)} ok, {len(report.differ)} differ, {len(report.missing)} missing, "
            f"{len(report.extra)} extra" + (f", {len(report.bad_lines)} bad lines" if report.bad_lines else "")
        )
    return ExitCode.OK if report.passed else ExitCode.VERIFY_FAILED
