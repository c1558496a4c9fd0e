"""The OpenAPI 3.1 document of the API, built from this service's offers."""

from __future__ import annotations

from typing import Any

from portshift import __version__

from .offers import MAX_INTEGER, MAX_NUMBER, MAX_STRING, TEXT, Catalogue, Field_, Offer

_KIND: dict[str, dict[str, Any]] = {
    "string": {"type": "string", "maxLength": MAX_STRING, "pattern": TEXT.pattern},
    "integer": {"type": "integer", "minimum": -MAX_INTEGER, "maximum": MAX_INTEGER},
    "number": {"type": "number", "minimum": -MAX_NUMBER, "maximum": MAX_NUMBER},
    "boolean": {"type": "boolean"},
}
#: Patterns shared by the schema and the server (written so Python and ECMAScript read them alike).
_CTRL = r"\x00-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"  # controls and bidi controls
_SPACE = r" \u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000\ufeff"
SIGNUP_TEXT = rf"^[^{_CTRL}]*$"
SIGNUP_NAME = rf"^[^{_CTRL}]*[^{_CTRL}{_SPACE}][^{_CTRL}]*$"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
#: an ASCII address with a dotted domain (internationalised domains in their xn-- form)
EMAIL = rf"^[A-Za-z0-9.!#$%&'*+/=?^_`{{|}}~-]{{1,64}}@{_LABEL}(?:\.{_LABEL})+$"


def _field_schema(f: Field_) -> dict[str, Any]:
    schema = {**_KIND[f.kind], "description": f.label or f.name}
    if f.pattern:
        schema["pattern"] = f.pattern
    return schema


def _offer_schema(offer: Offer, secrets_only: bool = False) -> dict[str, Any]:
    props: dict[str, Any] = {"type": {"const": offer.type}}
    required = ["type"]
    if not secrets_only:
        for f in offer.fields.values():
            props[f.name] = _field_schema(f)
            if f.required:
                required.append(f.name)
    for name, req in offer.secrets.items():
        props[name] = {
            "type": "string",
            "format": "password",
            "writeOnly": True,
            "maxLength": 16384,
            "description": "a credential: handed to the job's worker over a pipe, never stored or echoed",
        }
        if req:
            required.append(name)
            props[name]["minLength"] = 1
    return {"type": "object", "properties": props, "required": required, "additionalProperties": False}


def _err(description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}}}


def _body(ref: str) -> dict[str, Any]:
    return {"required": True, "content": {"application/json": {"schema": {"$ref": f"#/components/schemas/{ref}"}}}}


def _json(schema_ref: str, description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": {"$ref": schema_ref}}}}


def _state_key(with_key: bool) -> dict[str, Any]:
    """A customer's KMS key sealing the job's state (docs/byok.md), and its credentials."""
    props: dict[str, Any] = {"key": {"type": "string", "description": "kms:arn:aws:kms:<region>:<account>:key/<key id>"}}
    props = props if with_key else {}
    props |= {name: {"type": "string", "writeOnly": True} for name in ("access_key_id", "secret_access_key", "session_token")}
    props["use_sink_credentials"] = {"type": "boolean", "description": "use the s3 sink's credentials for the key"}
    return {"type": "object", "properties": props, "additionalProperties": False, **({"required": ["key"]} if with_key else {})}


def spec(catalogue: Catalogue) -> dict[str, Any]:
    keys = catalogue.state_key.offered()  # a customer's key is described only where it is accepted
    job_id = {
        "name": "job_id",
        "in": "path",
        "required": True,
        "schema": {"type": "string"},
        "description": "the random job id returned when the job was created",
    }
    limited = {
        "429": {
            **_err("rate limited, or this client already runs as many jobs as one client may; see Retry-After"),
            "headers": {"Retry-After": {"schema": {"type": "integer"}}},
        },
        "408": _err("the body was not sent in time"),
    }
    date = {
        "type": "string",
        "format": "date",
        "pattern": r"^[0-9]{4}-[0-9]{2}-[0-9]{2}$",
        "description": "YYYY-MM-DD; since must be before until",
    }
    job = {
        "type": "object",
        "properties": {
            "id": {"type": "string"},
            "status": {"enum": ["starting", "running", "cancelling", "complete", "partial", "failed", "cancelled"]},
            "created_at": {"type": ["string", "null"]},
            "started_at": {"type": ["string", "null"]},
            "finished_at": {"type": ["string", "null"]},
            "source_type": {"type": "string"},
            "sink_type": {"type": "string"},
            "attempts": {"type": ["integer", "null"]},
            "files": {"type": "integer", "description": "files stored and confirmed by the destination"},
            "bytes": {"type": "integer"},
            "recordings": {"type": "object", "properties": {k: {"type": "integer"} for k in ("done", "failed", "skipped")}},
            "recordings_total": {
                "type": ["integer", "null"],
                "description": "recordings the source listed in the window, once the listing has covered it",
            },
            "export_root": {"type": ["string", "null"], "description": "folder of this export under the destination prefix"},
            "manifest_sha256": {"type": ["string", "null"], "description": "SHA-256 of portshift-manifest.txt"},
            "error": {"type": ["string", "null"]},
            "messages": {"type": "array", "items": {"type": "string"}, "description": "recent warnings of the worker"},
            "state_key": {"type": ["string", "null"], "description": "the customer's key sealing the job's state (its ARN)"},
            "sealed": {
                "type": ["string", "null"],
                "description": "set when the customer's key was not available to the job's last run",
            },
        },
        "required": ["id", "status", "files", "bytes"],
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "portshift service",
            "version": __version__,
            "description": "Export call recordings into your own bucket. Credentials sent to this API are handed "
            "to one fresh worker process per job over a pipe and are never stored, logged or echoed.",
        },
        "paths": {
            "/.well-known/security.txt": {
                "get": {
                    "summary": "how to report a vulnerability (RFC 9116)",
                    "responses": {
                        "200": {"description": "security.txt", "content": {"text/plain": {"schema": {"type": "string"}}}}
                    },
                }
            },
            "/advisories": {
                "get": {
                    "summary": "security advisories (JSON Feed 1.1)",
                    "responses": {
                        "200": {"description": "the feed", "content": {"application/feed+json": {"schema": {"type": "object"}}}}
                    },
                }
            },
            "/manifest-signing.pub.pem": {
                "get": {
                    "summary": "the public key every job's manifest signature checks against",
                    "responses": {
                        "200": {"description": "PEM", "content": {"application/x-pem-file": {"schema": {"type": "string"}}}},
                        "404": _err("this service does not sign manifests"),
                    },
                }
            },
            "/api/health": {"get": {"summary": "liveness (no load figures)", "responses": {"200": {"description": "up"}}}},
            "/api/offers": {
                "get": {
                    "summary": "source and sink types offered, with their fields",
                    "responses": {"200": {"description": "the offers"}},
                }
            },
            "/api/jobs": {
                "post": {
                    "summary": "start an export job",
                    "requestBody": _body("JobRequest"),
                    "responses": {
                        "201": _json("#/components/schemas/Job", "started"),
                        "400": _err(
                            "invalid request (the message names the field, never its value), or state_key's key cannot be used"
                        ),
                        "403": _err("cross-origin request"),
                        "413": _err("body too large"),
                        "415": _err("not application/json"),
                        **limited,
                        "503": _err("too many jobs running, or KMS out of reach for state_key's key"),
                    },
                }
            },
            "/api/jobs/{job_id}": {
                "get": {
                    "summary": "a job's status and progress",
                    "parameters": [job_id],
                    "responses": {"200": _json("#/components/schemas/Job", "the job"), "404": _err("no such job")},
                }
            },
            "/api/jobs/{job_id}/events": {
                "get": {
                    "summary": "server-sent events: `status` (a Job document) on every change, then `end`",
                    "parameters": [job_id],
                    "responses": {
                        "200": {
                            "description": "an event stream",
                            "content": {"text/event-stream": {"schema": {"type": "string"}}},
                        },
                        "404": _err("no such job"),
                        "429": _err("too many streams for this job or this client; see Retry-After"),
                        "503": _err("too many streams in the service; see Retry-After"),
                    },
                }
            },
            "/api/jobs/{job_id}/cancel": {
                "post": {
                    "summary": "stop a running job cleanly (it can be resumed)",
                    "parameters": [job_id],
                    "responses": {
                        "202": _json("#/components/schemas/Job", "cancelling"),
                        "403": _err("cross-origin request"),
                        "404": _err("no such job"),
                        "409": _err("not running"),
                    },
                }
            },
            "/api/jobs/{job_id}/resume": {
                "post": {
                    "summary": "resume a failed, partial or cancelled job: send its credentials again",
                    "parameters": [job_id],
                    "requestBody": _body("ResumeRequest"),
                    "responses": {
                        "202": _json("#/components/schemas/Job", "resumed"),
                        "400": _err("invalid request, or the sealed job's key cannot be used"),
                        "403": _err("cross-origin request"),
                        "404": _err("no such job"),
                        "409": _err("the job cannot be resumed now"),
                        "413": _err("body too large"),
                        "415": _err("not application/json"),
                        **limited,
                        "503": _err("too many jobs running, or KMS out of reach for state_key's key"),
                    },
                }
            },
            "/api/signups": {
                "post": {
                    "summary": "early-access sign-up",
                    "requestBody": _body("Signup"),
                    "responses": {
                        "201": {"description": "stored"},
                        "400": _err("invalid"),
                        "403": _err("cross-origin request"),
                        "413": _err("body too large"),
                        "415": _err("not application/json"),
                        **limited,
                    },
                }
            },
        },
        "components": {
            "schemas": {
                "Error": {"type": "object", "properties": {"error": {"type": "string"}}, "required": ["error"]},
                "Job": job,
                "JobRequest": {
                    "type": "object",
                    "properties": {
                        "source": {"oneOf": [_offer_schema(o) for o in catalogue.sources.values()]},
                        "sink": {"oneOf": [_offer_schema(o) for o in catalogue.sinks.values()]},
                        "since": date,
                        "until": date,
                        **({"state_key": _state_key(True)} if keys else {}),
                    },
                    "required": ["source", "sink"],
                    "additionalProperties": False,
                },
                "ResumeRequest": {
                    "type": "object",
                    "properties": {
                        "source": {"oneOf": [_offer_schema(o, True) for o in catalogue.sources.values()]},
                        "sink": {"oneOf": [_offer_schema(o, True) for o in catalogue.sinks.values()]},
                        **({"state_key": _state_key(False)} if keys else {}),
                    },
                    "additionalProperties": False,
                },
                "Signup": {
                    "type": "object",
                    "properties": {
                        "name": {"type": "string", "maxLength": 200, "pattern": SIGNUP_NAME},
                        "email": {"type": "string", "maxLength": 254, "pattern": EMAIL},
                        "company": {"type": "string", "maxLength": 200, "pattern": SIGNUP_TEXT},
                    },
                    "required": ["name", "email"],
                    "additionalProperties": False,
                },
            }
        },
    }
