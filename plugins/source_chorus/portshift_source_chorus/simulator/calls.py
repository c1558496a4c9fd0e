"""One call of the synthetic tenant, and the deterministic randomness everything is derived from."""

from __future__ import annotations

import hashlib
import random
from dataclasses import dataclass
from datetime import datetime, timezone

_WORDS = (
    "pricing renewal budget timeline integration security review pilot onboarding contract "
    "forecast pipeline quarter discount champion procurement legal signature rollout roadmap "
    "feature dashboard export latency support region migration seats license question answer"
).split()
_FIRST = ["Ana", "Björn", "Chloé", "Dmitri", "Esther", "Farid", "Grace", "Hiro", "Inès", "Jonas", "Kwame", "Lena"]
_LAST = ["Okafor", "Müller", "Dubois", "Ivanova", "Cohen", "Haddad", "Hopper", "Tanaka", "Silva", "Berg", "Mensah", "Nowak"]
_COMPANIES = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark & Sons"]


def _rng(*parts: object) -> random.Random:
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "big"))


def _unit(*parts: object) -> float:
    """A deterministic number in [0, 1) for ``parts``."""
    digest = hashlib.sha256(":".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "big") / 2**64


@dataclass(frozen=True)
class Call:
    """One engagement of the tenant, with what the simulator needs to serve it."""

    index: int
    engagement_id: str
    engagement_type: str  #: meeting, dialer, or a type without a recording (email)
    date_time: int  #: epoch seconds
    duration: float
    processing_state: str
    no_show: bool
    private: bool  #: never listed ("recordings marked as private are not returned")
    hidden: str | None  #: listed, but "not_found"/"forbidden" for the token's user
    media_size: int
    content_type: str
    audio_only: bool
    media_missing: bool = False  #: the conversation is there, its media answers 404 (removed, expired)
    has_summary: bool = False  #: the conversation carries an AI summary and action items

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.date_time, tz=timezone.utc)

    @property
    def listed(self) -> bool:
        return not self.private

    @property
    def has_media(self) -> bool:
        return (
            self.engagement_type in ("meeting", "dialer")
            and self.duration > 0
            and self.processing_state == "done"
            and not self.media_missing
        )

    def outcome(self, include_unprocessed: bool = False, include_no_show: bool = False) -> str:
        """What an export must make of this call once listed: ``export`` (a recorded call),
        ``metadata`` (nothing recorded, metadata only), ``pending:<state>``, ``skipped:<reason>``."""
        if self.engagement_type not in ("meeting", "dialer"):
            return "metadata"
        if not include_unprocessed and self.processing_state != "done":
            return f"pending:{self.processing_state}"
        if self.duration > 0:
            return "export"
        if self.no_show:
            return "metadata" if include_no_show else "skipped:no_show"
        return "skipped:no_recording"

    def exportable(self, include_unprocessed: bool = False, include_no_show: bool = False) -> bool:
        """Would the Chorus source export this call in full (media, transcript...) if listed?"""
        return not self.private and self.outcome(include_unprocessed, include_no_show) == "export"
