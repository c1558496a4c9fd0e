"""Which job a run works on, and over which window: resume an unfinished job, start a new one,
or say there is nothing to do.

The rules, in order (docs/job-file.md, "Windows and resume"):

1. ``--new`` abandons an unfinished job of the same job file (its in-flight uploads cleaned up).
2. An unfinished job of the same job file is resumed with its own window, unless the command
   names a different window: ``--since DATE`` other than its start, or ``--until DATE`` other
   than its end. ``--since last`` and a repeated ``--since DATE`` without ``--until`` resume it,
   whatever "now" is: a scheduled run after a failed one picks the failed one up.
3. No unfinished job and no window asked for, but a complete one exists: up to date. The same
   for a worker (``portshift worker``) whose window is the last complete job's: the job it was
   started for is done.
4. Otherwise a new job: ``--since last`` starts ``relist_margin`` before the last complete job's
   end (or at the oldest call a job left pending, within ``pending_lookback``), so that calls
   that were still processing are exported once ready; what earlier jobs exported is not
   exported again.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from datetime import datetime, timezone

from ..api import Window
from ..config import DEFAULT_SINCE, JobConfig, parse_duration, parse_when
from ..errors import ConfigError
from ..records import JobRecord, JobStatus
from ..state import State
from .result import RunRequest

log = logging.getLogger("portshift.run")


def iso(dt: datetime) -> str:
    return dt.astimezone(timezone.utc).isoformat(timespec="seconds").replace("+00:00", "Z")


def from_iso(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@dataclass
class Plan:
    """What :func:`plan_job` decided."""

    key: str
    window: Window
    resume: JobRecord | None = None  #: the unfinished job to finish
    up_to_date: JobRecord | None = None  #: nothing to do: this job is complete
    abandon: JobRecord | None = None  #: --new: this unfinished job is given up first
    incremental: bool = False  #: --since last: skip what earlier jobs exported
    done: set[str] = field(default_factory=set)  #: recordings the resumed job already exported
    earlier: dict[str, str] = field(default_factory=dict)  #: recording -> the earlier job that exported it


def run_command(cfg: JobConfig, extra: str = "") -> str:
    """The command that runs this job file again, for advice printed to the user."""
    where = f" --config {shlex.quote(str(cfg.path))}" if cfg.path else ""
    return f"portshift run{where}{extra}"


def plan_job(cfg: JobConfig, state: State | None, req: RunRequest, key: str) -> Plan:
    unfinished = state.unfinished_job(key) if state is not None else None
    if unfinished is not None and unfinished.status is JobStatus.ABANDONED:
        unfinished = None
    abandon = None
    if req.new and unfinished is not None:
        abandon, unfinished = unfinished, None

    if unfinished is not None:
        _refuse_other_window(cfg, req, unfinished)
        window = Window(from_iso(unfinished.window_start), from_iso(unfinished.window_end))
        plan = Plan(key, window, resume=unfinished, incremental=unfinished.incremental)
        plan.done = state.done_recordings(unfinished.id) if state is not None else set()
    else:
        asked = req.since is not None or req.since_last or req.until is not None
        last = state.last_complete_job(key) if state is not None else None
        if not asked and not req.new and last is not None:
            return Plan(key, Window(from_iso(last.window_start), from_iso(last.window_end)), up_to_date=last)
        window, incremental = _new_window(cfg, state, req, key, last)
        if req.worker and last is not None and (last.window_start, last.window_end) == (iso(window.start), iso(window.end)):
            # a worker of a job that is complete already (it started after the others finished
            # it): nothing left to claim; planning the same window again would export it twice
            return Plan(key, window, up_to_date=last)
        plan = Plan(key, window, abandon=abandon, incremental=incremental)
    if plan.incremental and state is not None:
        plan.earlier = state.exported_by_earlier_jobs(key, iso(plan.window.start), plan.resume.id if plan.resume else "")
    return plan


def _refuse_other_window(cfg: JobConfig, req: RunRequest, job: JobRecord) -> None:
    other_start = req.since is not None and iso(req.since) != job.window_start
    other_end = req.until is not None and iso(req.until) != job.window_end
    if other_start or other_end:
        raise ConfigError(
            f"job {job.id} of this job file is unfinished (window {job.window_start} .. {job.window_end}) "
            "and this command asks for another window",
            hint=f"finish it with `{run_command(cfg)}`, or give it up with `{run_command(cfg, ' --new')}`",
        )


def _new_window(cfg: JobConfig, state: State | None, req: RunRequest, key: str, last: JobRecord | None) -> tuple[Window, bool]:
    until = req.until
    if until is None and cfg.job.until is not None:
        until = parse_when(cfg.job.until, "[job] until")
    if until is None:
        until = datetime.now(timezone.utc).replace(microsecond=0)
    since = req.since
    incremental = False
    if req.since_last:
        if last is None:
            log.info("--since last: no complete job of this job file yet; exporting the whole window")
        else:
            incremental = True
            # never before the last job's own start: time no job of this file covered stays out
            since = max(from_iso(last.window_end) - parse_duration(cfg.job.relist_margin), from_iso(last.window_start))
            oldest = state.oldest_pending(key) if state is not None else None
            if oldest:
                floor = from_iso(last.window_end) - parse_duration(cfg.job.pending_lookback)
                since = min(since, max(from_iso(oldest), floor))
    if since is None and cfg.job.since is not None:
        since = parse_when(cfg.job.since, "[job] since")
    if since is None:
        since = DEFAULT_SINCE
    if since >= until:
        raise ConfigError(f"the export window is empty: since {iso(since)} is not before until {iso(until)}")
    return Window(since, until), incremental
