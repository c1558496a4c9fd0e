"""What a source found about its service, kept for its next run: the request rate of
``requests_per_second = "auto"`` (:class:`portshift.AutoRate`), keyed by the source's type and
location (e.g. ``chorus https://tenant.example``), never by a credential. Same SQL on both backends."""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any


class SourceRates:
    """Mixed into :class:`portshift.state.State` (it is a :class:`portshift.RateMemory`)."""

    def _rows(self, what: str, query: str, params: list[Any]) -> list[tuple[Any, ...]]:
        raise NotImplementedError

    def _write(self, what: str, query: str, params: list[Any]) -> int:
        raise NotImplementedError

    def source_rate(self, key: str) -> float | None:
        """The request rate a source found at ``key``, for its next run (``None``: none kept)."""
        rows = self._rows("read the source's rate", "select rate from source_rates where source_key = ?", [key])
        return float(rows[0][0]) if rows else None

    def save_source_rate(self, key: str, rate: float) -> None:
        query = "insert into source_rates values (?, ?, ?) on conflict (source_key) do update set rate = excluded.rate, "
        now = datetime.now(timezone.utc).isoformat(timespec="seconds")
        self._write("keep the source's rate", query + "updated_at = excluded.updated_at", [key, float(rate), now])
