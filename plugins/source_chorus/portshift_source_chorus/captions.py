"""WebVTT captions from a Chorus conversation document.

One cue per utterance of ``data.attributes.recording.utterances``, sorted by ``index`` (the array
order is not guaranteed): start ``snippet_time``, end ``snippet_time + snippet_length``, the
speaker as a WebVTT voice span (``<v Name>``), the text with ``&``, ``<`` and ``>`` escaped so
that a player shows it verbatim (and ``-->`` can never end up in a cue).
"""

from __future__ import annotations

import math
from typing import Any


def utterances(doc: Any) -> list[dict[str, Any]]:
    node = doc
    for key in ("data", "attributes", "recording", "utterances"):
        node = node.get(key) if isinstance(node, dict) else None
    if not isinstance(node, list):
        return []
    return [u for u in node if isinstance(u, dict)]


def _seconds(value: Any) -> float:
    if isinstance(value, bool):
        return 0.0
    try:
        out = float(value)
    except (TypeError, ValueError):
        return 0.0
    return out if math.isfinite(out) and out > 0 else 0.0


def timestamp(seconds: float) -> str:
    ms = int(round(seconds * 1000))
    hours, ms = divmod(ms, 3_600_000)
    minutes, ms = divmod(ms, 60_000)
    secs, ms = divmod(ms, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}.{ms:03d}"


def escape(text: str) -> str:
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _order(u: dict[str, Any]) -> tuple[float, float]:
    index = u.get("index")
    if isinstance(index, bool) or not isinstance(index, (int, float)):
        index = math.inf
    return (float(index), _seconds(u.get("snippet_time")))


def webvtt(doc: Any) -> str:
    """The captions of a conversation document (a header only when it has no utterances)."""
    lines = ["WEBVTT", ""]
    n = 0
    for u in sorted(utterances(doc), key=_order):
        text = " ".join(str(u.get("snippet") or "").split())
        if not text:
            continue
        start = _seconds(u.get("snippet_time"))
        start_ms = int(round(start * 1000))
        end_ms = max(int(round((start + _seconds(u.get("snippet_length"))) * 1000)), start_ms + 1)
        n += 1
        cue = escape(text)
        speaker = " ".join(str(u.get("speaker_name") or "").split())
        if speaker:
            cue = f"<v {escape(speaker)}>{cue}"
        lines += [str(n), f"{timestamp(start_ms / 1000)} --> {timestamp(end_ms / 1000)}", cue, ""]
    return "\n".join(lines)
