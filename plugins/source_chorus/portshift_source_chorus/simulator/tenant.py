"""A deterministic synthetic Chorus tenant: calls, conversation documents and media bytes.

Everything is derived from a seed, so two simulators with the same arguments serve the same
bytes, and a test can know in advance what an export must contain. Media bytes are generated on
the fly from any offset in constant memory: a 2 GiB recording costs no memory, and its SHA-256
(:meth:`Tenant.media_sha256`) is computed by streaming the same generator.
"""

from __future__ import annotations

import hashlib
import json
import random
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

BLOCK = 64 * 1024

DEFAULT_START = datetime(2024, 1, 1, tzinfo=timezone.utc)
DEFAULT_END = datetime(2024, 4, 1, tzinfo=timezone.utc)

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

    @property
    def started_at(self) -> datetime:
        return datetime.fromtimestamp(self.date_time, tz=timezone.utc)

    @property
    def listed(self) -> bool:
        return not self.private

    def exportable(self, include_unprocessed: bool = False, include_no_show: bool = False) -> bool:
        """Would the Chorus source list this call with these filters?"""
        if self.private or self.engagement_type not in ("meeting", "dialer"):
            return False
        if not include_unprocessed and self.processing_state != "done":
            return False
        if not include_no_show and self.no_show:
            return False
        return self.duration > 0


@dataclass
class TenantSpec:
    """What to generate. Ratios are shares of all calls, chosen deterministically from the seed."""

    calls: int = 40
    seed: int = 0
    start: datetime = DEFAULT_START
    end: datetime = DEFAULT_END
    media_size: int | tuple[int, int] = 64 * 1024  #: bytes, or an inclusive (min, max) range
    media_sizes: dict[int, int] = field(default_factory=dict)  #: call index -> size override
    unprocessed_ratio: float = 0.05
    no_show_ratio: float = 0.05
    zero_duration_ratio: float = 0.03
    private_ratio: float = 0.05
    other_type_ratio: float = 0.05  #: e-mails: listed only when asked for, never exported
    not_found_ratio: float = 0.0  #: listed, but 404 on /conversations/{id} and /media
    forbidden_ratio: float = 0.0  #: listed, but 403 on /conversations/{id} and /media
    same_second_ratio: float = 0.1  #: share of calls sharing their start second with another


class Tenant:
    """The calls of one synthetic tenant, newest first."""

    def __init__(self, spec: TenantSpec | None = None, **kwargs: object) -> None:
        self.spec = spec or TenantSpec(**kwargs)  # type: ignore[arg-type]
        s = self.spec
        if s.end <= s.start:
            raise ValueError("the tenant's end must be after its start")
        span = int((s.end - s.start).total_seconds())
        start = int(s.start.timestamp())
        calls: list[Call] = []
        previous_second: int | None = None
        for i in range(s.calls):
            r = _rng(s.seed, "call", i)
            eid = hashlib.sha256(f"{s.seed}:engagement:{i}".encode()).hexdigest()[:32].upper()
            if previous_second is not None and r.random() < s.same_second_ratio:
                second = previous_second
            else:
                second = start + r.randrange(span)
            previous_second = second
            kind = "email" if r.random() < s.other_type_ratio else ("meeting" if r.random() < 0.6 else "dialer")
            duration = round(r.uniform(30, 3600), 2)
            state = "done"
            if r.random() < s.unprocessed_ratio:
                state = r.choice(["processing", "live", "scheduled"])
            no_show = r.random() < s.no_show_ratio
            if r.random() < s.zero_duration_ratio or kind == "email":
                duration = 0.0
            private = r.random() < s.private_ratio
            hidden = None
            u = _unit(s.seed, "hidden", i)
            if u < s.not_found_ratio:
                hidden = "not_found"
            elif u < s.not_found_ratio + s.forbidden_ratio:
                hidden = "forbidden"
            if i in s.media_sizes:
                size = s.media_sizes[i]
            elif isinstance(s.media_size, tuple):
                size = r.randint(s.media_size[0], s.media_size[1])
            else:
                size = int(s.media_size)
            audio_only = kind == "dialer" or r.random() < 0.2
            if kind == "dialer":
                ctype = r.choice(["audio/mpeg", "audio/mp4", "audio/wav"])
            elif audio_only:
                ctype = "audio/mpeg"
            else:
                ctype = "video/mp4"
            calls.append(Call(i, eid, kind, second, duration, state, no_show, private, hidden, size, ctype, audio_only))
        calls.sort(key=lambda c: (c.date_time, c.engagement_id), reverse=True)
        self.calls: list[Call] = calls
        self.by_id: dict[str, Call] = {c.engagement_id: c for c in calls}
        self._sha_cache: dict[str, str] = {}
        self._lock = threading.Lock()

    # --- what tests ask ----------------------------------------------------------------------
    def exportable(
        self,
        start: datetime | None = None,
        end: datetime | None = None,
        types: tuple[str, ...] = ("meeting", "dialer"),
        include_unprocessed: bool = False,
        include_no_show: bool = False,
    ) -> list[Call]:
        """The calls the Chorus source must list for the window ``[start, end)``."""
        out = []
        for c in self.calls:
            if start is not None and c.started_at < start:
                continue
            if end is not None and c.started_at >= end:
                continue
            if c.engagement_type in types and c.exportable(include_unprocessed, include_no_show):
                out.append(c)
        return out

    def media_chunks(self, call_id: str, start: int = 0, end: int | None = None) -> Iterator[bytes]:
        """The media bytes ``[start, end)`` of a call, in pieces of at most 64 KiB."""
        call = self.by_id[call_id]
        return media_chunks(self.spec.seed, call_id, call.media_size, start, end)

    def media_sha256(self, call_id: str) -> str:
        """SHA-256 of a call's media, computed by streaming (cached)."""
        with self._lock:
            if call_id in self._sha_cache:
                return self._sha_cache[call_id]
        h = hashlib.sha256()
        for piece in self.media_chunks(call_id):
            h.update(piece)
        digest = h.hexdigest()
        with self._lock:
            self._sha_cache[call_id] = digest
        return digest

    def media_size(self, call_id: str) -> int:
        return self.by_id[call_id].media_size

    # --- documents -----------------------------------------------------------------------
    def participants(self, call: Call) -> list[dict[str, object]]:
        r = _rng(self.spec.seed, "people", call.index)
        people = []
        for n in range(r.randint(2, 4)):
            first, last = r.choice(_FIRST), r.choice(_LAST)
            rep = n == 0
            people.append(
                {
                    "name": f"{first} {last}",
                    "email": f"{first.lower()}.{last.lower()}@{'seller' if rep else 'buyer'}.example",
                    "person_id": 1_000_000 + call.index * 10 + n,
                    "user_id": 300_000 + call.index if rep else None,
                    "title": "Account Executive" if rep else r.choice(["CTO", "VP Sales", "Buyer", "Engineer"]),
                    "company_name": "Seller Inc" if rep else r.choice(_COMPANIES),
                    "type": "rep" if rep else "customer",
                }
            )
        return people

    def engagement(self, call: Call) -> dict[str, object]:
        """The ``/v3/engagements`` item of a call (the shape of the published example)."""
        people = self.participants(call)
        rep = people[0]
        return {
            "engagement_id": call.engagement_id,
            "engagement_type": call.engagement_type,
            "subject": f"Call {call.index}: {_rng(self.spec.seed, 'subject', call.index).choice(_WORDS)} sync",
            "date_time": call.date_time,
            "duration": call.duration,
            "processing_state": call.processing_state,
            "no_show": call.no_show,
            "language": "en",
            "compliance": "compliant",
            "user_id": rep["user_id"],
            "user_name": rep["name"],
            "user_email": rep["email"],
            "account_id": f"acc-{call.index % 7}",
            "account_name": people[-1]["company_name"],
            "participants": people,
            "tracker_matches": [{"name": "Pricing", "num_matches": call.index % 3, "type": "chorus"}],
            "url": f"https://chorus.ai/meeting/{call.engagement_id}",
        }

    def utterances(self, call: Call) -> list[dict[str, object]]:
        """Utterances in a shuffled array order (clients must sort by ``index``)."""
        r = _rng(self.spec.seed, "utterances", call.index)
        people = self.participants(call)
        count = max(0, min(60, int(call.duration // 45)))
        t = round(r.uniform(0, 3), 3)
        out: list[dict[str, object]] = []
        for n in range(count):
            who = people[r.randrange(len(people))]
            words = [r.choice(_WORDS) for _ in range(r.randint(3, 14))]
            if n % 7 == 3:
                words.insert(1, "<b>R&D</b> -->")  # text a caption writer must escape
            length = round(r.uniform(0.8, 12.0), 3)
            out.append(
                {
                    "id": f"{call.engagement_id}-{n}",
                    "index": n,
                    "snippet": " ".join(words),
                    "snippet_time": t,
                    "snippet_length": length,
                    "snippet_word_count": len(words),
                    "speaker_name": who["name"],
                    "speaker_type": who["type"],
                    "speaker_id": who["person_id"],
                    "participant": who["person_id"],
                    "engaging": r.random() < 0.1,
                    "date_time": (call.started_at + timedelta(seconds=t)).isoformat().replace("+00:00", "Z"),
                }
            )
            t = round(t + length + r.uniform(0, 2), 3)
        r.shuffle(out)
        return out

    def conversation(self, call: Call, fields: set[str] | None) -> dict[str, object]:
        """The ``/api/v1/conversations/{id}`` document. Utterances only when ``fields`` asks."""
        people = self.participants(call)
        recording: dict[str, object] = {
            "start_time": call.started_at.isoformat().replace("+00:00", "Z"),
            "duration": call.duration,
            "audio_only": call.audio_only,
            "end_reason": "ended",
        }
        if fields is not None and "recording.utterances" in fields:
            recording["utterances"] = self.utterances(call)
        status = {"done": "done"}.get(call.processing_state, call.processing_state)
        return {
            "data": {
                "id": call.engagement_id,
                "type": "recording",
                "attributes": {
                    "name": f"Call {call.index}",
                    "status": "no show" if call.no_show else status,
                    "language": "en",
                    "private": False,
                    "source": "zoom" if call.engagement_type == "meeting" else "dialer",
                    "owner": {k: people[0][k] for k in ("email", "name", "person_id", "user_id")},
                    "participants": people,
                    "recording": recording,
                },
            }
        }

    def conversation_bytes(self, call_id: str, fields: set[str] | None) -> bytes:
        """The exact bytes the simulator serves for a conversation document."""
        return json.dumps(self.conversation(self.by_id[call_id], fields), ensure_ascii=False).encode()


def _base_block(seed: int, call_id: str) -> bytes:
    out = bytearray()
    counter = 0
    while len(out) < BLOCK:
        out += hashlib.sha256(f"{seed}:{call_id}:{counter}".encode()).digest()
        counter += 1
    return bytes(out[:BLOCK])


def media_chunks(seed: int, call_id: str, size: int, start: int = 0, end: int | None = None) -> Iterator[bytes]:
    """Bytes ``[start, end)`` of a ``size``-byte synthetic media file, at most 64 KiB per piece.

    Block ``n`` (64 KiB) is the call's base block with its first 8 bytes replaced by ``n``, so any
    reordering, duplication or loss of a block changes the SHA-256.
    """
    end = size if end is None else min(end, size)
    if start >= end:
        return
    base = _base_block(seed, call_id)
    pos = start
    while pos < end:
        n, off = divmod(pos, BLOCK)
        block = n.to_bytes(8, "big") + base[8:]
        piece = block[off : off + (end - pos)]
        yield piece
        pos += len(piece)
