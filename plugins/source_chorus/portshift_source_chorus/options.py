"""The ``[source]`` options of ``type = "chorus"``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator

from portshift import HttpsUrl, PluginOptions, Secret, secret_field

#: every artifact, in the order they are yielded; the last four are opt-in (see DEFAULT_ARTIFACTS)
ARTIFACTS = ("media", "transcript", "captions", "metadata", "summary", "action_items", "scorecards", "email")
DEFAULT_ARTIFACTS = ("media", "transcript", "captions", "metadata")
ENGAGEMENT_TYPES = ("meeting", "dialer", "email", "content_viewed", "unrecorded_meeting")

#: The conversation fields requested by default: the list a client verified against real
#: tenants uses (ramnathsagar/chorusai-mcp-server), which includes the utterances.
DEFAULT_FIELDS = (
    "name",
    "status",
    "language",
    "private",
    "owner",
    "participants",
    "recording",
    "recording.duration",
    "recording.start_time",
    "recording.utterances",
)

Artifact = Literal["media", "transcript", "captions", "metadata", "summary", "action_items", "scorecards", "email"]
EngagementType = Literal["meeting", "dialer", "email", "content_viewed", "unrecorded_meeting"]


class ChorusOptions(PluginOptions):
    """Export every recorded call of a Chorus tenant (``[source] type = "chorus"``)."""

    section = "source"

    base_url: HttpsUrl = Field(default="https://chorus.ai", description="the Chorus API host (https only)")
    token: Secret | None = secret_field(
        env="PORTSHIFT_CHORUS_TOKEN",
        description="the Chorus API token (Personal Settings -> API Access); from PORTSHIFT_CHORUS_TOKEN or token_file",
    )
    token_file: Path | None = Field(default=None, description="a file holding the token (Docker/Kubernetes secret)")
    auth_scheme: Literal["raw", "bearer"] = Field(
        default="raw", description="'raw': Authorization: <token> (as Chorus documents); 'bearer': Authorization: Bearer <token>"
    )
    engagement_types: list[EngagementType] = Field(
        default_factory=lambda: ["meeting", "dialer"], min_length=1, description="engagement types to list"
    )
    artifacts: list[Artifact] = Field(
        default_factory=lambda: list(DEFAULT_ARTIFACTS),
        min_length=1,
        description="what to export per call: media, transcript (JSON), captions (WebVTT), metadata (JSON); opt-in: "
        "summary, action_items (JSON, where the conversation carries them), scorecards (JSON), email (JSON, e-mail engagements)",
    )
    window_days: float = Field(
        default=7.0, gt=0, le=366, description="days per listing window (the API lists newest first and cannot seek)"
    )
    include_unprocessed: bool = Field(
        default=False,
        description="export calls that are live, scheduled or still processing as they are now, instead of marking "
        "them pending for a later run",
    )
    include_no_show: bool = Field(
        default=False,
        description="also export the metadata of no-show calls that recorded nothing (recorded no-shows are always exported)",
    )
    conversation_fields: list[str] = Field(
        default_factory=lambda: list(DEFAULT_FIELDS), min_length=1, description="the `fields` asked of /api/v1/conversations/{id}"
    )
    media_info: bool = Field(
        default=False, description="ask /media?info=true (a JSON answer carrying a download link) instead of a redirect"
    )
    requests_per_second: Annotated[float, Field(ge=0, le=1000)] | Literal["auto"] = Field(
        default="auto",
        description="'auto' (the default): find the tenant's limit, starting at 1 request a second (the rate found is "
        "kept in the state for the next run); a number: a fixed ceiling on requests to the Chorus API (0: no limit), "
        "halved after each 429, regained slowly",
    )
    min_requests_per_second: float = Field(
        default=0.1, gt=0, le=1000, description="the rate 429s never push the client below (0.1/s = 6 a minute)"
    )
    burst: int = Field(default=1, ge=1, le=100, description="requests that may go out at once before the ceiling applies")
    retries: int = Field(
        default=5, ge=0, le=20, description="retries of one request (5xx, resets, timeouts; 429s: see retry_budget)"
    )
    retry_budget: float = Field(
        default=900.0,
        ge=0,
        le=86400,
        description="seconds one request may spend waiting on 429s (Retry-After or backoff) before it fails",
    )
    backoff_base: float = Field(default=1.0, ge=0, le=60, description="first retry delay in seconds (doubles, with jitter)")
    backoff_cap: float = Field(default=60.0, ge=0, le=600, description="longest retry delay in seconds")
    max_retry_after: float = Field(
        default=300.0, ge=0, le=3600, description="longest Retry-After honoured, in seconds (longer hints are capped)"
    )
    link_refreshes: int = Field(default=3, ge=0, le=10, description="times an expired media link is asked for again")
    resume_downloads: bool = Field(default=True, description="continue a dropped media download with a Range request")
    ca_bundle: Path | None = Field(default=None, description="PEM file of extra CAs to trust (private CAs, tests)")
    connect_timeout: float = Field(default=15.0, gt=0, le=600, description="seconds to connect")
    read_timeout: float = Field(default=120.0, gt=0, le=3600, description="seconds without receiving a byte")
    chunk_size: int = Field(default=1024 * 1024, ge=4096, le=64 * 1024 * 1024, description="bytes per media read")
    strict: bool = Field(
        default=False, description="a call answering 403/404 fails the job instead of being skipped with its reason"
    )

    @field_validator("base_url")
    @classmethod
    def _strip_slash(cls, v: str) -> str:
        if "?" in v or "#" in v:
            raise ValueError("must not carry a query string or fragment")
        return v.rstrip("/")

    @field_validator("artifacts", "engagement_types", "conversation_fields")
    @classmethod
    def _unique(cls, v: list[str]) -> list[str]:
        seen: list[str] = []
        for item in v:
            if item not in seen:
                seen.append(item)
        return seen

    @model_validator(mode="after")
    def _fields_have_utterances(self) -> ChorusOptions:
        wants_text = {"transcript", "captions"} & set(self.artifacts)
        if wants_text and "recording.utterances" not in self.conversation_fields:
            raise ValueError("conversation_fields must include 'recording.utterances' to export a transcript or captions")
        return self
