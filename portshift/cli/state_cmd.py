"""`portshift state rewrap --to KEY`: wrap every sealed job's data key with a new key (docs/byok.md)."""

from __future__ import annotations

from pathlib import Path

import click

from ..key_providers import key_provider
from ..state.choose import open_chosen_state, state_options
from . import common_options
from .options import read_stdin_secrets, secrets_stdin_option


@click.group("state")
@common_options
def command() -> None:
    """Manage the job state."""


@command.command("rewrap")
@click.option("--to", "to_key", required=True, metavar="KEY", help='the new key: "kms:arn:aws:kms:..." or "file:/path/state.key"')
@click.option("--state", "state_path", metavar="PATH|URL", help="the state: a file or a postgresql:// URL")
@click.option("--key-endpoint-url", metavar="URL", help="the https:// endpoint of a KMS-compatible service (both keys)")
@click.option("--key-ca-bundle", type=click.Path(dir_okay=False, path_type=Path), help="the CA (PEM) of that endpoint")
@secrets_stdin_option
@common_options
def rewrap(
    to_key: str, state_path: str | None, key_endpoint_url: str | None, key_ca_bundle: Path | None, secrets_from_stdin: bool
) -> None:
    """Wrap the data key of every sealed job with KEY instead of the key it has now (rotation, or
    moving to another key). The sealed rows are not touched; the old key must still be available."""
    secrets = read_stdin_secrets() if secrets_from_stdin else None
    new = key_provider(to_key, endpoint_url=key_endpoint_url, ca_bundle=key_ca_bundle)
    new.check()
    with open_chosen_state(state_path, state_options(None, secrets), create=False) as state:
        if key_endpoint_url or key_ca_bundle:
            state.seals.endpoint_url = key_endpoint_url or state.seals.endpoint_url
            state.seals.ca_bundle = key_ca_bundle or state.seals.ca_bundle
        count = state.seals.rewrap(new)
    click.echo(f"re-wrapped the data keys of {count} job{'s' if count != 1 else ''} with {new.label}")
