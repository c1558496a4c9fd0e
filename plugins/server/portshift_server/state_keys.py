"""A customer's own key for a job's metadata through the service ("bring your own key", docs/byok.md).

A request may carry ``state_key``::

    "state_key": {"key": "kms:arn:aws:kms:eu-west-1:111122223333:key/<id>",
                  "access_key_id": "...", "secret_access_key": "...", "session_token": "..."}

or, with the S3 sink, ``"use_sink_credentials": true`` instead of the three credentials. The job's
worker then seals the job's rows in the state with that key (the core's ``[state] key``).

- Only AWS KMS keys (``kms:``, from the ``portshift-sink-s3`` plugin; offered when it is installed).
  A ``file:`` key names a file on the service's host: for a stranger's request that would be a
  read of the operator's files, and a key the customer cannot revoke; it is refused.
- The KMS endpoint and its CA are the operator's (``[state_key]`` in ``--service-config``), as the
  S3 ``endpoint_url`` is: a request never chooses where a worker connects.
- The credentials travel like the sink's: in the credential document handed to the hardened
  worker (``{"state": {"key_access_key_id": ...}}``), never in the job file, the service
  database, a log or argv. The job file holds the key's name (an ARN, no secret).
"""

from __future__ import annotations

import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portshift import ConfigError
from portshift.state.sealed import UNAVAILABLE

from .destinations import blur_network_error
from .offers import MAX_SECRET, NAME, RequestError

#: the fields of ``state_key`` in a request
CREDENTIALS = ("access_key_id", "secret_access_key", "session_token")
FIELDS = ("key", *CREDENTIALS, "use_sink_credentials")
#: the file name of the operator's KMS CA in a job's work folder (the job file names it relatively:
#: the worker runs in that folder, unisolated or in its sandbox)
CA_NAME = "kms-ca.pem"
_HINT = "kms:arn:aws:kms:<region>:<account>:key/<key id> (or an alias ARN)"


@dataclass
class StateKeyOptions:
    """The operator's ``[state_key]``: where the workers reach KMS (AWS when unset)."""

    endpoint_url: str | None = None
    ca_bundle: Path | None = None

    @classmethod
    def from_config(cls, table: Any) -> StateKeyOptions:
        if table is None:
            return cls()
        if not isinstance(table, dict) or set(table) - {"endpoint_url", "ca_bundle"}:
            raise ConfigError("--service-config [state_key]: a table of endpoint_url and ca_bundle (both optional)")
        url, ca = table.get("endpoint_url"), table.get("ca_bundle")
        if url is not None and (not isinstance(url, str) or not url.startswith("https://")):
            raise ConfigError("--service-config [state_key] endpoint_url: an https:// URL")
        if ca is not None and (not isinstance(ca, str) or not Path(ca).is_file()):
            raise ConfigError("--service-config [state_key] ca_bundle: the path of a CA file (PEM) that exists")
        return cls(url, Path(ca) if ca else None)

    @staticmethod
    def offered() -> bool:
        """Whether this service can seal with KMS keys (the ``kms`` key provider is installed)."""
        from portshift import plugins

        return "kms" in plugins.key_providers().classes


@dataclass
class StateKey:
    key: str  #: ``kms:arn:...``, the name stored beside the job (no secret)
    credentials: dict[str, str]  #: for the worker's ``"state"`` credentials (``key_access_key_id``, ...)


def _check_key(options: StateKeyOptions, value: Any) -> str:
    if not isinstance(value, str) or not value or len(value) > 2048:
        raise RequestError(f"state_key.key: required, the ARN of your KMS key as {_HINT}")
    key = value.strip()
    if key.startswith("arn:"):
        key = "kms:" + key
    provider, _, _ = key.partition(":")
    if provider == "file":
        raise RequestError(
            "state_key.key: file: keys name a file on the service's host, which a request cannot use; "
            f"give a KMS key you control and can revoke, as {_HINT}"
        )
    if provider != "kms":
        raise RequestError(f"state_key.key: this service takes AWS KMS keys only, as {_HINT}")
    from portshift.key_providers import key_provider

    try:  # the provider checks the ARN's form (no network)
        key_provider(key, endpoint_url=options.endpoint_url, ca_bundle=options.ca_bundle)
    except ConfigError:
        raise RequestError(f"state_key.key: not the ARN of a KMS key; use {_HINT}") from None
    return key


def _credentials(doc: dict[str, Any], sink_type: str, sink_creds: dict[str, str]) -> dict[str, str]:
    given: dict[str, str] = {}
    for name in CREDENTIALS:
        value = doc.get(name)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) > MAX_SECRET:
            raise RequestError(f"state_key.{name}: must be a string of at most {MAX_SECRET} characters")
        given[name] = value
    reuse = doc.get("use_sink_credentials", False)
    if not isinstance(reuse, bool):
        raise RequestError("state_key.use_sink_credentials: must be true or false")
    if reuse:
        if given:
            raise RequestError("state_key: give either the key's own credentials or use_sink_credentials, not both")
        if sink_type != "s3":
            raise RequestError("state_key.use_sink_credentials: only with the s3 sink (its credentials are AWS credentials)")
        given = {k: sink_creds[k] for k in CREDENTIALS if sink_creds.get(k)}
    if "access_key_id" not in given or "secret_access_key" not in given:
        raise RequestError(
            "state_key: give access_key_id and secret_access_key for the key (or use_sink_credentials: true "
            "with the s3 sink); the service's workers have no cloud identity of their own"
        )
    return {f"key_{k}": v for k, v in given.items()}


def _fields(doc: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
    if not isinstance(doc, dict):
        raise RequestError("state_key: must be an object with key and its credentials")
    for name in doc:
        if name not in allowed:
            shown = name if isinstance(name, str) and NAME.match(name) else "(a key)"
            raise RequestError(f"state_key: unknown field {shown} (valid: {', '.join(allowed)})")
    return doc


def parse_state_key(options: StateKeyOptions, doc: Any, sink_type: str, sink_creds: dict[str, str]) -> StateKey | None:
    """A new job's ``state_key`` (None when the request has none); :class:`RequestError`, one
    line naming the field and never its value, when it is wrong."""
    if doc is None:
        return None
    if not options.offered():
        raise RequestError("state_key: this service does not offer customer keys (its operator has not installed KMS support)")
    doc = _fields(doc, FIELDS)
    key = _check_key(options, doc.get("key"))
    return StateKey(key, _credentials(doc, sink_type, sink_creds))


def resume_credentials(doc: Any, sink_type: str, sink_creds: dict[str, str]) -> dict[str, str]:
    """The key's credentials again, to resume a sealed job (the key itself is in its job file)."""
    if doc is None:
        raise RequestError("state_key: this job is sealed with your key; give its credentials again to resume it")
    return _credentials(_fields(doc, FIELDS[1:]), sink_type, sink_creds)


def job_file_state(options: StateKeyOptions, key: str) -> dict[str, Any]:
    """The job file's ``[state]`` section (no secret)."""
    state: dict[str, Any] = {"key": key}
    if options.endpoint_url:
        state["key_endpoint_url"] = options.endpoint_url
    if options.ca_bundle:
        state["key_ca_bundle"] = CA_NAME
    return state


def place_ca(options: StateKeyOptions, work: Path) -> None:
    """Copy the operator's KMS CA (a public certificate) into the job's work folder."""
    if options.ca_bundle:
        shutil.copyfile(options.ca_bundle, work / CA_NAME)


# --- what the service keeps of a sealed job's outcome ---------------------------------------------

#: the worker's one line when the customer's key cannot be used (the S3 plugin's kms.py)
_UNAVAILABLE = re.compile(
    r"^the customer's key (kms:arn:[\w:/.-]+) is not available for job [\w-]+: ([A-Za-z][\w ]{0,80}?(?: \(\w+\))?)(?: \(|;|$)"
)
#: kept in memory, never in the service database, for a sealed job (they may name the customer's data)
SEALED_FIELDS = ("export_root", "manifest_sha256")


def key_unavailable(line: str | None) -> str | None:
    """The service's own line for a worker that stopped because the key cannot be used (it names
    the key and what KMS answered, nothing of the data), else None."""
    m = _UNAVAILABLE.match(line or "")
    if m is None:
        return None
    why = m.group(2).strip()
    return f"{UNAVAILABLE} ({m.group(1)}: {why}); the key's owner can enable it again or grant access, nothing is lost"


def seal_outcome(values: dict[str, Any], worker_error: str | None) -> dict[str, Any]:
    """Take out of ``values`` (a finished sealed run's row update) what may name the customer's
    data: the export root, the manifest digest and the worker's own error text. They are
    returned, for the service to keep in memory; the row gets the service's own text instead."""
    kept = {k: values[k] for k in SEALED_FIELDS if values.get(k) is not None}
    values.update({k: None for k in kept})
    if worker_error and values.get("error"):
        kept["error"] = values["error"]
        values["error"] = key_unavailable(worker_error) or (
            "the worker stopped with an error; its text may name your data, so the service shows it only "
            "until it restarts and never stores it"
        )
    return kept


def sealed_view(row: dict[str, Any], kept: dict[str, Any] | None) -> dict[str, Any]:
    """The API's ``state_key`` and ``sealed`` of a job, and a sealed job's fields kept in memory."""
    key = row.get("sealed_with")
    out: dict[str, Any] = {"state_key": key, "sealed": None}
    if not key:
        return out
    error = row.get("error") or ""
    if error.startswith(UNAVAILABLE):
        out["sealed"] = error.split(";", 1)[0]
    for k, v in (kept or {}).items():
        out[k] = blur_network_error(v) if k == "error" else v
    return out
