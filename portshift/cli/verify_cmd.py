"""`portshift verify DIR`: re-hash a local copy of an export against its manifest."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import click

from ..api import Reader
from ..config import build_options, load_toml
from ..errors import ConfigError, ExitCode, VerificationError
from ..manifest import INDEX_NAME, MANIFEST_NAME, SIGNATURE_SUFFIX
from ..plugins import readers
from ..signing import verify_signature
from ..verify import verify_dir, verify_store
from . import common_options
from .options import read_stdin_secrets, secrets_stdin_option

if TYPE_CHECKING:
    from ..completeness import SourceComparison


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
@click.option(
    "--against-source",
    is_flag=True,
    help="also list the export's window at the source again (needs --config) and report new, gone and vanished calls",
)
@click.option("--config", "-c", "config_path", type=click.Path(path_type=Path), help="the job file, for --against-source")
@secrets_stdin_option
@common_options
def command(
    root: str,
    as_json: bool,
    public_key: Path | None,
    store_path: Path | None,
    against_source: bool,
    config_path: Path | None,
    secrets_from_stdin: bool,
) -> int:
    """Re-hash every file of an export root against portshift-manifest.txt and report
    ok / differ / missing / extra.

    ROOT is a local folder (a downloaded copy), or with --store the export root's name (the
    job id) in the bucket, streamed back without touching the disk."""
    if against_source and config_path is None:
        raise ConfigError("--against-source needs --config job.toml (the source to list again)")
    if store_path is not None and against_source and secrets_from_stdin:
        raise ConfigError("--secrets-from-stdin serves either --store or --against-source, not both")
    manifest_bytes: bytes
    signature: bytes | None
    index_bytes: bytes | None = None
    if store_path is not None:
        reader = _reader(store_path, secrets_from_stdin)
        try:
            report = verify_store(reader, root)
            manifest_bytes = b"".join(reader.open(f"{root.strip('/')}/{MANIFEST_NAME}"))
            try:
                signature = b"".join(reader.open(f"{root.strip('/')}/{MANIFEST_NAME}{SIGNATURE_SUFFIX}"))
            except FileNotFoundError:
                signature = None
            if against_source:
                index_bytes = b"".join(reader.open(f"{root.strip('/')}/{INDEX_NAME}"))
        finally:
            reader.close()
    else:
        local = Path(root)
        report = verify_dir(local)
        manifest_bytes = (local / MANIFEST_NAME).read_bytes()
        sig_path = local / (MANIFEST_NAME + SIGNATURE_SUFFIX)
        signature = sig_path.read_bytes() if sig_path.is_file() else None
        if against_source:
            index_bytes = (local / INDEX_NAME).read_bytes() if (local / INDEX_NAME).is_file() else b""
    if public_key is not None:
        if signature is None:
            raise VerificationError(
                f"no signature {MANIFEST_NAME}{SIGNATURE_SUFFIX} beside the manifest: the export was not signed"
            )
        verify_signature(public_key, manifest_bytes, signature)
        if not as_json:
            click.echo(f"signature: OK ({MANIFEST_NAME}{SIGNATURE_SUFFIX}, Ed25519)")
    source = None
    if against_source and config_path is not None:
        from ..completeness import compare_with_source, load_index
        from .options import load

        source = compare_with_source(load_index(index_bytes or b""), load(config_path, secrets_from_stdin and not store_path))
    if as_json:
        doc = {
            "ok": len(report.ok),
            "differ": report.differ,
            "missing": report.missing,
            "extra": report.extra,
            "bad_lines": report.bad_lines,
            "passed": report.passed and (source is None or source.passed),
        }
        if source is not None:
            doc["source"] = source.as_dict()
        click.echo(json.dumps(doc))
    else:
        _echo_each(
            ("* differ   {}", report.differ),
            ("- missing  {}", report.missing),
            ("+ extra    {}", report.extra),
            ("! line {} of the manifest is not a valid entry", report.bad_lines),
        )
        verdict = "OK" if report.passed else "FAILED"
        click.echo(
            f"{verdict}: {len(report.ok)} ok, {len(report.differ)} differ, {len(report.missing)} missing, "
            f"{len(report.extra)} extra" + (f", {len(report.bad_lines)} bad lines" if report.bad_lines else "")
        )
        if source is not None:
            _print_source(source)
    passed = report.passed and (source is None or source.passed)
    return ExitCode.OK if passed else ExitCode.VERIFY_FAILED


def _echo_each(*groups: tuple[str, Iterable[object]]) -> None:
    """One line per item of each group, ``template.format(item)``, group after group."""
    for template, items in groups:
        for item in items:
            click.echo(template.format(item))


def _print_source(source: SourceComparison) -> None:
    _echo_each(
        ("+ new      {}  (at the source now, not in the export)", source.new),
        ("- gone     {}  (exported, no longer listed by the source)", source.gone),
        ("- vanished {}  (not exported, no longer listed by the source)", source.vanished),
    )
    verdict = "OK" if source.passed else "CHANGED"
    same = "the same listing as at export time" if source.same_listing else "the listing differs from export time"
    click.echo(
        f"source {verdict}: {source.listed_now} listed now, {len(source.new)} new, {len(source.gone)} gone, "
        f"{len(source.vanished)} vanished; {same}"
    )
    if source.limits:
        click.echo(f"source limits: {source.limits}")
