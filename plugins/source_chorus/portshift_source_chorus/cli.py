"""``portshift chorus simulate``: run the Chorus API simulator until Ctrl-C (test/demo tooling)."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import click

_UNITS = {
    "": 1,
    "b": 1,
    "k": 1000,
    "kb": 1000,
    "kib": 1024,
    "m": 1000**2,
    "mb": 1000**2,
    "mib": 1024**2,
    "g": 1000**3,
    "gb": 1000**3,
    "gib": 1024**3,
}


def parse_size(text: str) -> int:
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*", text)
    if not m or m.group(2).lower() not in _UNITS:
        raise click.BadParameter(f"{text!r} is not a size (e.g. 65536, 512KiB, 20MiB, 2GiB)")
    return int(float(m.group(1)) * _UNITS[m.group(2).lower()])


def parse_sizes(text: str) -> int | tuple[int, int]:
    if "-" in text.strip()[1:]:
        lo, hi = text.split("-", 1)
        a, b = parse_size(lo), parse_size(hi)
        if a > b:
            raise click.BadParameter("a size range is MIN-MAX")
        return (a, b)
    return parse_size(text)


def _date(text: str) -> datetime:
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise click.BadParameter(f"{text!r} is not an ISO date") from None
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def _write_private(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.exists():
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text + "\n")


def write_job(path: Path, base_url: str, ca: Path, export_to: Path, start: str, end: str, token_file: Path | None = None) -> None:
    """A job file that exports the simulated tenant into a local folder (written atomically)."""
    text = (
        "# written by `portshift chorus simulate` (demo): the simulated tenant into a local folder\n"
        "[job]\n"
        "transfers = 4\n"
        f'since = "{start}"\n'
        f'until = "{end}"\n\n'
        "[source]\n"
        'type = "chorus"\n'
        f"base_url = {json.dumps(base_url)}\n"
        f"ca_bundle = {json.dumps(str(ca))}  # the simulator's throw-away CA\n"
        "requests_per_second = 50\n"
        + (
            f"token_file = {json.dumps(str(token_file))}\n\n"
            if token_file
            else "# the token comes from PORTSHIFT_CHORUS_TOKEN (the one the simulator was started with)\n\n"
        )
        + "[sink]\n"
        'type = "local"\n'
        f"path = {json.dumps(str(export_to))}\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)


@click.group("chorus")
def chorus() -> None:
    """Chorus source tools."""


@chorus.command("simulate")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on (loopback)")
@click.option("--port", type=int, default=0, help="API port (default: a free one)")
@click.option("--media-port", type=int, default=0, help="media host port (default: a free one)")
@click.option("--calls", type=int, default=40, show_default=True, help="engagements in the synthetic tenant")
@click.option("--seed", type=int, default=0, show_default=True, help="changes every call and every byte")
@click.option("--media-size", default="256KiB", show_default=True, help="bytes per recording, or MIN-MAX (e.g. 1MiB-8MiB)")
@click.option("--big", "big", multiple=True, metavar="INDEX=SIZE", help="one call's media size, e.g. 0=2GiB (repeatable)")
@click.option("--start", "start", default="2024-01-01", show_default=True, help="first possible call date (ISO)")
@click.option("--end", "end", default="2024-04-01", show_default=True, help="end of the tenant's calls (ISO)")
@click.option("--ca-out", type=click.Path(path_type=Path), help="write the throw-away CA (PEM) here, for ca_bundle")
@click.option("--token-out", type=click.Path(path_type=Path), help="write the token here (mode 0600), for token_file")
@click.option("--info-out", type=click.Path(path_type=Path), help="write {base_url, ca_bundle, media_origin} as JSON when ready")
@click.option(
    "--job-out",
    type=click.Path(path_type=Path),
    help="when ready, write a job file exporting this tenant into --export-to (the token stays in the environment)",
)
@click.option(
    "--export-to",
    type=click.Path(path_type=Path),
    default=Path("demo-export"),
    show_default=True,
    help="the local folder the --job-out job file exports into",
)
@click.option("--media-mode", type=click.Choice(["redirect", "json", "direct"]), default="redirect", show_default=True)
@click.option("--json-shape", type=click.Choice(["flat", "jsonapi"]), default="flat", show_default=True)
@click.option("--link-ttl", type=float, default=300.0, show_default=True, help="seconds a media link stays valid")
@click.option("--page-size", default="10", show_default=True, help="items per page; a comma list varies them (e.g. 1,7,25)")
@click.option("--duplicates", type=int, default=0, help="items repeated from the previous page on each page")
@click.option(
    "--end-marker",
    type=click.Choice(["space", "missing", "empty", "null", "empty_page", "repeat", "mixed"]),
    default="space",
    show_default=True,
    help="how the last page ends the listing",
)
@click.option("--fault-times", type=int, default=1, show_default=True, help="failures per affected resource (-1: always)")
@click.option("--throttle", type=float, default=0.0, help="share of resources answered 429 first")
@click.option("--retry-after", default="1", show_default=True, help="Retry-After of injected 429s: N, date:N, 0, garbage, none")
@click.option("--server-errors", type=float, default=0.0, help="share of resources answered 500 first")
@click.option("--resets", type=float, default=0.0, help="share of bodies cut by a connection reset half-way")
@click.option("--truncate", type=float, default=0.0, help="share of bodies closed half-way (announced length not met)")
@click.option("--slow", type=float, default=0.0, help="seconds to wait before answering (with --slow-ratio)")
@click.option("--slow-ratio", type=float, default=1.0, show_default=True, help="share of resources that are slow")
@click.option("--expired-links", type=float, default=0.0, help="share of calls whose first media link is already expired")
@click.option("--expired-status", type=click.Choice(["403", "410"]), default="403", show_default=True)
@click.option("--not-found", type=float, default=0.0, help="share of listed calls answering 404 (private / not visible)")
@click.option("--forbidden", type=float, default=0.0, help="share of listed calls answering 403")
@click.option("--private", type=float, default=0.05, show_default=True, help="share of calls never listed (private)")
@click.option("--rate-limit", type=float, default=0.0, help="requests per second the API enforces with 429s (0: none)")
@click.option("--rate-limit-no-retry-after", is_flag=True, help="rate-limit 429s come without Retry-After")
@click.option(
    "--rate-limit-halve-after", type=float, default=0.0, metavar="SECONDS", help="the --rate-limit halves this long after start"
)
@click.option("--rate-window", default="", help="a fixed-window limit N/SECONDS, e.g. 10/60 (10 requests a minute)")
@click.option("--unprocessed", type=float, default=0.05, show_default=True, help="share of calls live, scheduled or processing")
@click.option("--no-show", type=float, default=0.05, show_default=True, help="share of calls marked no_show")
@click.option("--unrecorded-no-shows", is_flag=True, help="no-shows recorded nothing (default: they keep their recording)")
@click.option("--media-missing", type=float, default=0.0, help="share of calls whose media answers 404 (transcript kept)")
@click.option("--summaries", type=float, default=0.0, help="share of calls whose conversation carries a summary")
@click.option("--scorecards", type=float, default=0.0, help="share of calls a scorecard names")
@click.option("--ignore-date-filters", is_flag=True, help="/v3/engagements ignores min_date/max_date")
@click.option("--trackers-always", is_flag=True, help="tracker_matches even without with_trackers=true")
def simulate(**kw: Any) -> None:
    """Run a Chorus API simulator over HTTPS on loopback until Ctrl-C.

    The token is taken from PORTSHIFT_CHORUS_TOKEN when set (never from the command line),
    otherwise a random one is made and printed. Test and demo tooling: its throw-away CA is
    trusted only by clients given --ca-out's file as ca_bundle.
    """
    from .simulator import Behaviour, ChorusSimulator, Fault, Faults, MediaConfig, Paging, TenantSpec
    from .simulator.tenant import Tenant

    big: dict[int, int] = {}
    for item in kw["big"]:
        idx, _, size = item.partition("=")
        if not idx.isdigit() or not size:
            raise click.BadParameter(f"{item!r}: use INDEX=SIZE, e.g. 0=2GiB", param_hint="--big")
        big[int(idx)] = parse_size(size)
    try:
        sizes = tuple(int(s) for s in kw["page_size"].split(","))
    except ValueError:
        raise click.BadParameter("a comma list of integers", param_hint="--page-size") from None
    times = kw["fault_times"]
    window: tuple[int, float] | None = None
    if kw["rate_window"]:
        n, _, secs = kw["rate_window"].partition("/")
        try:
            window = (int(n), float(secs))
        except ValueError:
            raise click.BadParameter("use N/SECONDS, e.g. 10/60", param_hint="--rate-window") from None

    def fault(ratio: float, on: tuple[str, ...] | None = None) -> Fault | None:
        if ratio <= 0:
            return None
        return Fault(ratio=ratio, times=times, on=on or ("list", "conversation", "media_api", "media"))

    tenant = Tenant(
        TenantSpec(
            calls=kw["calls"],
            seed=kw["seed"],
            start=_date(kw["start"]),
            end=_date(kw["end"]),
            media_size=parse_sizes(kw["media_size"]),
            media_sizes=big,
            not_found_ratio=kw["not_found"],
            forbidden_ratio=kw["forbidden"],
            private_ratio=kw["private"],
            unprocessed_ratio=kw["unprocessed"],
            no_show_ratio=kw["no_show"],
            recorded_no_show=not kw["unrecorded_no_shows"],
            media_missing_ratio=kw["media_missing"],
            summary_ratio=kw["summaries"],
            scorecard_ratio=kw["scorecards"],
        )
    )
    faults = Faults(
        throttle=fault(kw["throttle"]),
        retry_after=kw["retry_after"],
        server_error=fault(kw["server_errors"]),
        reset=fault(kw["resets"]),
        truncate=fault(kw["truncate"]),
        slow=fault(kw["slow_ratio"]) if kw["slow"] > 0 else None,
        slow_seconds=kw["slow"],
        expired_link=fault(kw["expired_links"], ("media_api",)),
        expired_status=int(kw["expired_status"]),
        rate_limit=kw["rate_limit"],
        rate_limit_retry_after=not kw["rate_limit_no_retry_after"],
        rate_limit_halve_after=kw["rate_limit_halve_after"],
        rate_window=window,
    )
    token = os.environ.get("PORTSHIFT_CHORUS_TOKEN") or None
    sim = ChorusSimulator(
        tenant,
        token=token,
        faults=faults,
        paging=Paging(page_sizes=sizes, duplicates=kw["duplicates"], end_marker=kw["end_marker"]),
        media=MediaConfig(mode=kw["media_mode"], json_shape=kw["json_shape"], link_ttl=kw["link_ttl"]),
        behaviour=Behaviour(ignore_date_filters=kw["ignore_date_filters"], trackers_only_on_request=not kw["trackers_always"]),
        host=kw["host"],
        port=kw["port"],
        media_port=kw["media_port"],
        ca_path=kw["ca_out"],
    )
    sim.start()
    stop = threading.Event()

    def _stop(signum: int, frame: Any) -> None:
        stop.set()

    previous = {s: signal.signal(s, _stop) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        if kw["token_out"]:
            _write_private(kw["token_out"], sim.token)
        exportable = len(tenant.exportable())
        echo = click.echo
        echo("Chorus simulator ready (test/demo tooling; Ctrl-C to stop)")
        echo(f"  base_url     {sim.base_url}")
        echo(f"  ca_bundle    {sim.ca_path.resolve()}")
        echo(f"  media host   {sim.media_origin} ({kw['media_mode']})")
        if token:
            echo("  token        from PORTSHIFT_CHORUS_TOKEN")
        elif kw["token_out"]:
            echo(f"  token_file   {kw['token_out']}")
        else:
            echo(f"  token        {sim.token}  (export PORTSHIFT_CHORUS_TOKEN=...)")
        echo(f"  tenant       {len(tenant.calls)} engagements, {exportable} recorded calls to export, seed {kw['seed']}")
        echo(f"  window       {kw['start']} .. {kw['end']}")
        if kw["info_out"]:
            info = {
                "base_url": sim.base_url,
                "ca_bundle": str(sim.ca_path.resolve()),
                "media_origin": sim.media_origin,
                "exportable": exportable,
            }
            kw["info_out"].parent.mkdir(parents=True, exist_ok=True)
            tmp = kw["info_out"].with_suffix(".tmp")
            tmp.write_text(json.dumps(info, indent=2) + "\n")
            tmp.replace(kw["info_out"])
        if kw["job_out"]:
            token_file = kw["token_out"].resolve() if kw["token_out"] and not token else None
            write_job(
                kw["job_out"], sim.base_url, sim.ca_path.resolve(), kw["export_to"].resolve(), kw["start"], kw["end"], token_file
            )
            echo(f"  job file     {kw['job_out']}  (portshift run --config {kw['job_out']})")
        while not stop.wait(0.5):
            pass
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
        sim.stop()
        st = sim.stats
        click.echo(
            f"stopped: {st.total('api')} API requests, {st.total('media')} media requests, "
            f"{st.throttled} answered 429, {st.links_issued} media links issued, "
            f"{len(st.writes)} requests that would have changed the tenant"
        )
