"""The request rate a source found (``requests_per_second = "auto"``), kept per source location for
the next run: the same answers from a SQLite file and a PostgreSQL database, migrations included."""

from __future__ import annotations

from .conftest import StateBackend


def test_the_rate_found_is_kept_per_source_location_and_replaced(state_backend: StateBackend) -> None:
    with state_backend.open() as state:
        assert state.source_rate("chorus https://a.example") is None
        state.save_source_rate("chorus https://a.example", 4.25)
        state.save_source_rate("chorus https://b.example", 0.5)
        state.save_source_rate("chorus https://a.example", 3.5)  # the next run's rate replaces it
    with state_backend.open(create=False) as state:  # kept across processes
        assert state.source_rate("chorus https://a.example") == 3.5
        assert state.source_rate("chorus https://b.example") == 0.5
        assert state.source_rate("chorus https://c.example") is None
