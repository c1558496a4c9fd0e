"""`portshift verify DIR`: re-hash a local copy of an export against its manifest."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ..errors import ExitCode, VerificationError
from ..manifest import MANIFEST_NAME, SIGNATURE_SUFFIX
from ..signing import verify_signature
from ..verify import verify_dir
from . import common_options


@click.command("verify")
@click.argument("root", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="machine-readable report")
@click.option(
    "--public-key",
    type=click.Path(path_type=Path),
    help="also check portshift-manifest.txt.sig with this Ed25519 public key (PEM)",
)
@common_options
def command(root: Path, as_json: bool, public_key: Path | None) -> int:
    """Re-hash every file of an export root against portshift-manifest.txt and report
    ok / differ / missing / extra."""
    report = verify_dir(root)
    if public_key is not None:
        sig = root / (MANIFEST_NAME + SIGNATURE_SUFFIX)
        if not sig.is_file():
            raise VerificationError(f"no signature {sig.name} beside the manifest: the export was not signed")
        verify_signature(public_key, (root / MANIFEST_NAME).read_bytes(), sig.read_bytes())
        if not as_json:
            click.echo(f"signature: OK ({sig.name}, Ed25519)")
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
