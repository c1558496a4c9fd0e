"""The documents a synthetic tenant serves: ``/v3/engagements`` items, conversation documents
with utterances, summaries, scorecards and e-mails. Derived from the seed, like everything else."""

from __future__ import annotations

import json
from datetime import timedelta
from typing import TYPE_CHECKING

from .calls import _COMPANIES, _FIRST, _LAST, _WORDS, Call, _rng, _unit

if TYPE_CHECKING:
    from .tenant import TenantSpec


class Documents:
    """Mixed into :class:`~.tenant.Tenant`."""

    spec: TenantSpec
    by_id: dict[str, Call]
    calls: list[Call]
    generated: set[str]

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

    def engagement(self, call: Call, trackers: bool = True) -> dict[str, object]:
        """The ``/v3/engagements`` item of a call (the shape of the published example); tracker
        matches only when asked (``with_trackers=true``)."""
        people = self.participants(call)
        rep = people[0]
        item: dict[str, object] = {
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
            "url": f"https://chorus.ai/meeting/{call.engagement_id}",
        }
        if trackers:
            item["tracker_matches"] = [{"name": "Pricing", "num_matches": call.index % 3, "type": "chorus"}]
        return item

    def summary(self, call: Call) -> tuple[str, list[str]] | None:
        """The call's AI summary and action items, if Chorus holds them."""
        if not (call.has_summary or call.engagement_id in self.generated):
            return None
        r = _rng(self.spec.seed, "summary", call.index)
        text = f"The team discussed {r.choice(_WORDS)} and {r.choice(_WORDS)}."
        return text, [f"Send the {r.choice(_WORDS)} follow-up", f"Book a {r.choice(_WORDS)} review"]

    def scorecards(self) -> list[dict[str, object]]:
        """The tenant's scorecards, JSON:API items naming their call by ``conversation_id``."""
        out: list[dict[str, object]] = []
        for c in sorted(self.calls, key=lambda c: c.index):
            if c.private or _unit(self.spec.seed, "scorecard", c.index) >= self.spec.scorecard_ratio:
                continue
            out.append(
                {
                    "id": f"sc-{c.index}",
                    "type": "scorecard",
                    "attributes": {"conversation_id": c.engagement_id, "score": c.index % 5 + 1, "submitted": True},
                }
            )
        return out

    def email_bytes(self, call_id: str) -> bytes:
        """``GET /api/v1/emails/{id}`` of an e-mail engagement (the real shape is undocumented)."""
        call = self.by_id[call_id]
        people = self.participants(call)
        doc = {
            "data": {
                "id": call_id,
                "type": "email",
                "attributes": {"subject": f"Re: call {call.index}", "from": people[0]["email"], "sent_at": call.date_time},
            }
        }
        return json.dumps(doc, ensure_ascii=False).encode()

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
        attributes: dict[str, object] = {}
        summary = self.summary(call)
        if summary is not None and fields is not None:
            if "summary" in fields:
                attributes["summary"] = summary[0]
            if "action_items" in fields:
                attributes["action_items"] = summary[1]
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
                    **attributes,
                },
            }
        }

    def conversation_bytes(self, call_id: str, fields: set[str] | None) -> bytes:
        """The exact bytes the simulator serves for a conversation document."""
        return json.dumps(self.conversation(self.by_id[call_id], fields), ensure_ascii=False).encode()
