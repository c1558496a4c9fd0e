"""A request turned into a job file (no secret) and a credential document (for the worker's
standard input), here and nowhere else. Every refusal is a :class:`RequestError` naming the field,
never the value."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from .bodies import TEXT
from .destinations import DestinationRefused
from .offers import MAX_INTEGER, MAX_NUMBER, MAX_SECRET, MAX_STRING, NAME, Catalogue, Field_, Offer, RequestError
from .state_keys import job_file_state, parse_state_key, resume_credentials

# --- turning a request into a job file and a credential document --------------------------------------


@dataclass
class BuiltJob:
    job_toml: str
    secrets: bytearray  #: the JSON document for ``--secrets-from-stdin``; zeroed after hand-off
    source_type: str
    sink_type: str
    state_key: str | None = None  #: the customer's key (its name: a KMS key ARN) sealing the job's state


def _value(offer: Offer, f: Field_, value: Any) -> Any:
    where = f"{offer.section}.{f.name}"
    if f.kind == "string":
        if not isinstance(value, str):
            raise RequestError(f"{where}: must be a string")
        if len(value) > MAX_STRING or not TEXT.match(value):
            raise RequestError(f"{where}: too long, or contains control or bidirectional-override characters")
        if f.pattern and not re.match(f.pattern, value):
            raise RequestError(f"{where}: {f.hint or 'not in the expected form'}")
        return value
    if f.kind == "boolean":
        if not isinstance(value, bool):
            raise RequestError(f"{where}: must be true or false")
        return value
    if f.kind == "integer":
        if isinstance(value, bool) or not isinstance(value, int) or abs(value) > MAX_INTEGER:
            raise RequestError(f"{where}: must be an integer")
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value or abs(value) > MAX_NUMBER:
        raise RequestError(f"{where}: must be a number")
    return float(value)


def _section(
    catalogue: Catalogue, section: str, doc: Any, secrets_only: bool = False
) -> tuple[Offer, dict[str, Any], dict[str, str]]:
    if not isinstance(doc, dict):
        raise RequestError(f"{section}: must be an object")
    offer = catalogue.offer(section, doc.get("type"))
    options: dict[str, Any] = {}
    creds: dict[str, str] = {}
    for key, value in doc.items():
        if key == "type":
            continue
        if key in offer.secrets:
            if not isinstance(value, str):
                raise RequestError(f"{section}.{key}: must be a string")
            if len(value) > MAX_SECRET:
                raise RequestError(f"{section}.{key}: longer than {MAX_SECRET} characters")
            if value:
                creds[key] = value
        elif key in offer.fields and not secrets_only:
            if value is None or value == "":
                continue
            options[key] = _value(offer, offer.fields[key], value)
        else:
            valid = ", ".join(["type", *(offer.secrets if secrets_only else [*offer.fields, *offer.secrets])])
            shown = key if NAME.match(key) else "(a key)"
            raise RequestError(f"{section}: unknown field {shown} (valid: {valid})")
    for name, required in offer.secrets.items():
        if required and name not in creds:
            raise RequestError(f"{section}.{name}: the credential is missing")
    if not secrets_only:
        for f in offer.fields.values():
            if f.required and f.name not in options:
                raise RequestError(f"{section}.{f.name}: required")
    return offer, options, creds


def _window(doc: dict[str, Any]) -> dict[str, date]:
    out: dict[str, date] = {}
    for key in ("since", "until"):
        value = doc.get(key)
        if value in (None, ""):
            continue
        if not isinstance(value, str) or len(value) != 10:
            raise RequestError(f"{key}: must be a date like 2024-01-31")
        try:
            out[key] = date.fromisoformat(value)
        except ValueError:
            raise RequestError(f"{key}: must be a date like 2024-01-31") from None
    if "since" in out and "until" in out and out["since"] >= out["until"]:
        raise RequestError("since must be before until")
    return out


def _check_destination(catalogue: Catalogue, sink_type: str, options: dict[str, Any], creds: dict[str, str]) -> None:
    """The hosts a request chooses must be on the operator's allow-lists (destinations.py)."""
    try:
        if sink_type == "azure" and "account_url" in options:
            catalogue.outbound.check_azure_account_url(options["account_url"])
        if sink_type == "gcs" and "key" in creds:
            catalogue.outbound.check_gcs_key(creds["key"])
    except DestinationRefused as e:
        raise RequestError(str(e)) from None


def _credentials(
    catalogue: Catalogue, source: dict[str, str], sink: dict[str, str], state: dict[str, str] | None = None
) -> bytearray:
    """The document handed to the hardened worker over its credential channel: the customer's
    credentials (the state key's in ``state``) and, when the service signs manifests, its signing
    key (never a file the worker could be pointed at, never the job file)."""
    doc: dict[str, dict[str, str]] = {}
    if source:
        doc["source"] = source
    if sink:
        doc["sink"] = sink
    if state:
        doc["state"] = state
    if catalogue.signing_key is not None:
        doc["job"] = {"signing_key": catalogue.signing_key.reveal()}
    return bytearray(json.dumps(doc).encode())


def build_job(catalogue: Catalogue, doc: Any, default_folder: str) -> BuiltJob:
    """Validate a POST /api/jobs body; return the job file text and the credential document.
    ``default_folder``: the local sink's folder when the request names none (the job's internal
    name, never its id)."""
    if not isinstance(doc, dict):
        raise RequestError("the body must be a JSON object with source and sink")
    unknown = set(doc) - {"source", "sink", "since", "until", "state_key"}
    if unknown:
        raise RequestError("unknown top-level fields (valid: source, sink, since, until, state_key)")
    if "source" not in doc or "sink" not in doc:
        raise RequestError("source and sink are required")
    src_offer, src_opts, src_creds = _section(catalogue, "source", doc["source"])
    snk_offer, snk_opts, snk_creds = _section(catalogue, "sink", doc["sink"])
    window = _window(doc)
    _check_destination(catalogue, snk_offer.type, snk_opts, snk_creds)
    key = parse_state_key(catalogue.state_key, doc.get("state_key"), snk_offer.type, snk_creds)
    if snk_offer.type == "local":
        assert catalogue.local_root is not None
        folder = snk_opts.pop("folder", None) or default_folder  # checked against its pattern
        snk_opts["path"] = str(catalogue.local_root / folder)
    job: dict[str, Any] = {"transfers": catalogue.transfers, **window}
    tables: dict[str, dict[str, Any]] = {
        "job": job,
        "source": {"type": src_offer.type, **src_offer.fixed, **src_opts},
        "sink": {"type": snk_offer.type, **snk_offer.fixed, **snk_opts},
    }
    if key is not None:
        tables["state"] = job_file_state(catalogue.state_key, key.key)
    secrets = _credentials(catalogue, src_creds, snk_creds, key.credentials if key else None)
    return BuiltJob(to_toml(tables), secrets, src_offer.type, snk_offer.type, key.key if key else None)


def build_credentials(catalogue: Catalogue, doc: Any, source_type: str, sink_type: str, sealed: bool = False) -> bytearray:
    """Validate a resume body (credentials only, for the types the job was created with; with
    ``sealed``, the state key's credentials too)."""
    allowed = {"source", "sink", "state_key"} if sealed else {"source", "sink"}
    if not isinstance(doc, dict) or set(doc) - allowed:
        raise RequestError(f"the body must be a JSON object with {' and '.join(sorted(allowed))} credentials only")
    src = dict(doc.get("source") or {})
    snk = dict(doc.get("sink") or {})
    for part, expected in ((src, source_type), (snk, sink_type)):
        if part.setdefault("type", expected) != expected:
            raise RequestError("source.type and sink.type cannot change when resuming")
    _, _, src_creds = _section(catalogue, "source", src, secrets_only=True)
    _, _, snk_creds = _section(catalogue, "sink", snk, secrets_only=True)
    _check_destination(catalogue, sink_type, {}, snk_creds)
    state = resume_credentials(doc.get("state_key"), sink_type, snk_creds) if sealed else None
    return _credentials(catalogue, src_creds, snk_creds, state)


# --- a small TOML writer (job files only: tables of scalars, lists of scalars) ------------------------


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, str):
        # a JSON string is a valid TOML basic string when non-ASCII stays as is (no surrogate escapes)
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, Path):
        return json.dumps(str(value), ensure_ascii=False)
    if isinstance(value, list):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} to a job file")


def to_toml(doc: dict[str, dict[str, Any]]) -> str:
    lines: list[str] = []
    for table, values in doc.items():
        lines.append(f"[{table}]")
        for key, value in values.items():
            if not NAME.match(key):
                raise TypeError(f"bad option name {key!r}")
            lines.append(f"{key} = {_toml_value(value)}")
        lines.append("")
    return "\n".join(lines)
