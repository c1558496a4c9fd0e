"""Issue 19 (S3): one Chorus recording over HTTPS into moto over TLS — portshift vs rclone vs boto3.

Starts the Chorus simulator (``portshift chorus simulate``, HTTPS on 127.0.0.1) with one call whose
media is ``--size`` bytes and moto in server mode over TLS (the tests' setup, see
``s3_throughput.start_moto``), then, round by round in rotating order so that machine noise hits
all alike:

- **portshift**: a ``portshift run`` subprocess exporting that call's media from the Chorus source
  into the ``s3`` sink (its defaults, or one variant per ``--sink PART:CONC``), timed from process
  start to exit (interpreter start, plugin loading, listing, state DB and manifests included);
- **rclone**: ``rclone copyurl`` of the same media into the same bucket (an S3 remote configured
  with ``RCLONE_CONFIG_*`` variables, endpoint the moto TLS URL, both test CAs via ``--ca-cert``;
  rclone's defaults: 5 MiB chunks, 4 in flight, an MD5 per part; ``--s3-no-head``, because
  rclone's HEAD ``?versionId=null`` after a multipart upload is refused by moto with 400, and
  portshift does not read back either). The signed media link is asked
  from the API (one request, inside the timing) because rclone cannot send the API token
  to the API alone (``--header`` would go to S3 as well);
- **boto3**: ``upload_fileobj`` of the same bytes from memory (``BytesIO``, default TransferConfig),
  in this process with a warm client (the issue's baseline);
- **boto3-process** (``--only`` it): the same as a process of its own, timed from its start as
  ``portshift run`` is: interpreter start, boto3's import, the client, the bytes read into memory
  from a file on tmpfs, ``upload_fileobj``;
- **sink** (``--only`` it): portshift's S3 sink alone, in this process, fed the same bytes from
  memory (``S3Sink.put`` of a ``HashingStream`` over 1 MiB chunks, its defaults, a warm client):
  the same work as boto3's step plus the whole-file SHA-256 and a SHA-256 per part, without
  the download and the process start of ``portshift run``.

Every object is checked (size on the server; the portshift manifest's SHA-256 against the
simulator's), the last round's objects are downloaded and re-hashed, and each object is deleted
right after its step, so that every step finds moto holding nothing (moto keeps objects in memory
and temp files: with the objects of a round kept until its end, a step run after 2-4 others cost
moto 5.5-6.7 CPU-s for the same 512 MiB against 3.2-4.1 for the first of its round). The Chorus source runs with
``requests_per_second = --rate`` (default 0, no pacing, as ``chorus_throughput.py``): what is
compared is the data path of one big recording; at the product default (``auto``, from 1 request/s)
the three API requests portshift makes before the media (listing, metadata, media link) wait about 2 s for
their turns, where rclone is handed the link. Prints MB/s (10^6 B/s), the
ratios portshift/rclone (target >= 1.0) and portshift/boto3 (target >= 0.9), and the load average.

    .venv/bin/python benchmarks/s3_copyurl.py [--size 512MiB] [--rounds 3] [--sink 8MiB:4 --sink 16MiB:2 ...]
        [--only portshift,rclone,boto3] [--profile DIR] [--rate R]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from chorus_common import MIB, Simulator, child_env, children_cpu, portshift_run, proc_cpu
from chorus_throughput import media_sha256, parse_size, pick_seed
from s3_throughput import bench_bucket, bench_sink, sha256_stream, start_moto

KEY_ID, SECRET = "AKIABENCHMARK0000001", "benchmark-secret"
#: boto3 as a user runs it, a process of its own: argv = the bytes' file, endpoint, CA, key
BOTO3_PROCESS = (
    "import io, sys\n"
    "import boto3\n"
    "from botocore.config import Config\n"
    "data = open(sys.argv[1], 'rb').read()\n"
    "c = boto3.session.Session().client('s3', endpoint_url=sys.argv[2], region_name='us-east-1', verify=sys.argv[3],\n"
    "    config=Config(s3={'addressing_style': 'path'}))\n"
    "c.upload_fileobj(io.BytesIO(data), 'bench', sys.argv[4])\n"
)
PS = "portshift run"


def signed_link(sim: Simulator, cid: str) -> str:
    """The media host's signed link, as the API's redirect gives it (not followed)."""

    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: object, **kwargs: object) -> None:
            return None

    ctx = ssl.create_default_context(cafile=str(sim.ca))
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=ctx), NoRedirect)
    req = urllib.request.Request(f"{sim.base_url}/api/v1/conversations/{cid}/media")
    req.add_header("Authorization", sim.token_file.read_text().strip())
    try:
        opener.open(req, timeout=30)
    except urllib.error.HTTPError as e:
        if e.code in (301, 302, 303, 307, 308):
            return str(e.headers["Location"])
        raise
    sys.exit("the simulator did not redirect to a signed link")


def tool(argv: list[str], env: dict[str, str], what: str) -> None:
    """Run a baseline's process; a failure ends the benchmark with its last words."""
    res = subprocess.run(argv, env=env, capture_output=True, text=True)
    if res.returncode != 0:
        sys.exit(f"{what} failed: {res.stderr[-2000:]}")


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=parse_size, default=512 * MIB, help="media size (default 512MiB)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument(
        "--sink",
        action="append",
        metavar="PART:CONC",
        help="a portshift variant with the s3 sink's part_size and max_concurrency, e.g. 8MiB:4 (repeat to "
        "compare several in the same run; 'default' for the sink's defaults, the default)",
    )
    ap.add_argument("--rclone-args", default="", help="extra rclone flags, e.g. '--s3-chunk-size 8M'")
    ap.add_argument("--profile", type=Path, metavar="DIR", help="py-spy record each portshift run into DIR (speedscope)")
    ap.add_argument("--log-level", default="info", help="portshift's log level (debug keeps each run's log in the temp dir)")
    ap.add_argument(
        "--rate",
        type=float,
        default=0,
        help="the Chorus source's requests_per_second (default 0: no pacing; the product default, auto, starts at 1 "
        "request a second: about 2 s for the 3 API requests portshift makes before the media)",
    )
    ap.add_argument(
        "--only",
        default="portshift,rclone,boto3",
        help="comma-separated subset of portshift,rclone,boto3,boto3-process,sink",
    )
    args = ap.parse_args()
    size: int = args.size
    if shutil.which("rclone") is None and "rclone" in args.only:
        sys.exit("rclone is not installed (apt-get install rclone)")

    seed, call = pick_seed()
    cid = call.engagement_id  # type: ignore[attr-defined]
    day = call.started_at.date()  # type: ignore[attr-defined]
    print(f"SHA-256 of the {size // MIB} MiB media (simulator's generator) ...", flush=True)
    expected = media_sha256(seed, cid, size)
    from portshift_source_chorus.simulator import media_chunks

    work = Path(tempfile.mkdtemp(prefix="portshift-bench-s3url-"))
    sim = Simulator.start(work / "sim", "--calls", "1", "--seed", str(seed), "--private", "0", "--big", f"0={size}")
    moto, url, moto_ca = start_moto(work)
    both_cas = work / "both-cas.pem"
    held: list[Path] = []  #: the folder of the bytes boto3-process reads (made on first use)
    sinks: list[Any] = []  #: the S3 sink of the "sink" step (made on first use)
    both_cas.write_text(sim.ca.read_text() + moto_ca.read_text())
    runs: dict[str, list[float]] = {}
    loads: list[str] = []
    notes: list[str] = []
    try:
        plain = bench_bucket(url, moto_ca)
        data = b"".join(media_chunks(seed, cid, size))
        assert hashlib.sha256(data).hexdigest() == expected

        def portshift(r: int, variant: str) -> str:
            prefix = f"ps{r}-{len(variant)}{variant.replace(':', '-')}"
            sink_extra = ""
            if variant != "default":
                part, conc = variant.split(":")
                sink_extra = f'part_size = "{part}"\nmax_concurrency = {int(conc)}\n'
            job = work / f"{prefix}.toml"
            job.write_text(
                f"[job]\ntransfers = 1\nsince = {day}\nuntil = {day.fromordinal(day.toordinal() + 1)}\n\n"
                f'[source]\ntype = "chorus"\nbase_url = "{sim.base_url}"\nca_bundle = "{sim.ca}"\n'
                f'token_file = "{sim.token_file}"\nartifacts = ["media"]\nrequests_per_second = {args.rate:g}\n'
                f'engagement_types = ["{call.engagement_type}"]\n\n'  # type: ignore[attr-defined]
                f'[sink]\ntype = "s3"\nbucket = "bench"\nprefix = "{prefix}"\nregion = "us-east-1"\n'
                f'endpoint_url = "{url}"\nca_bundle = "{moto_ca}"\naddressing_style = "path"\n{sink_extra}'
            )
            env = child_env(
                PORTSHIFT_LOAD_PLUGINS="portshift-source-chorus,portshift-sink-s3",
                PORTSHIFT_AWS_ACCESS_KEY_ID=KEY_ID,
                PORTSHIFT_AWS_SECRET_ACCESS_KEY=SECRET,
            )
            env = {k: v for k, v in env.items() if not k.startswith("AWS_")}
            prof = args.profile / f"{prefix}.speedscope.json" if args.profile else None
            res = portshift_run(job, work / f"{prefix}.db", env=env, progress=False, profile=prof, log_level=args.log_level)
            notes.append(f"job phase {res.job:.2f} s, peak RSS {res.peak_rss / MIB:.0f} MiB")
            if args.log_level == "debug":
                (Path(tempfile.gettempdir()) / f"s3_copyurl-{prefix}.log").write_text(res.stderr)
            objs = plain.list_objects_v2(Bucket="bench", Prefix=f"{prefix}/")["Contents"]
            manifest = next(o["Key"] for o in objs if o["Key"].endswith("portshift-manifest.txt"))
            text = plain.get_object(Bucket="bench", Key=manifest)["Body"].read().decode()
            assert f"{expected}  " in text, "the manifest's SHA-256 is not the simulator's"
            return next(o["Key"] for o in objs if "/media." in o["Key"])

        def rclone(r: int) -> str:
            key = f"rclone-{r}.bin"
            env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "RCLONE_"))}
            env.update(
                RCLONE_CONFIG_MOTO_TYPE="s3",
                RCLONE_CONFIG_MOTO_PROVIDER="Other",
                RCLONE_CONFIG_MOTO_ACCESS_KEY_ID=KEY_ID,
                RCLONE_CONFIG_MOTO_SECRET_ACCESS_KEY=SECRET,
                RCLONE_CONFIG_MOTO_ENDPOINT=url,
                RCLONE_CONFIG_MOTO_REGION="us-east-1",
                RCLONE_CONFIG_MOTO_FORCE_PATH_STYLE="true",
            )
            link = signed_link(sim, cid)
            argv = ["rclone", "copyurl", "--config", "/dev/null", "--ca-cert", str(both_cas), "--s3-no-head"]
            tool(argv + [*args.rclone_args.split(), link, f"moto:bench/{key}"], env, "rclone")
            return key

        def boto3_(r: int) -> str:
            key = f"boto3-{r}.bin"
            plain.upload_fileobj(io.BytesIO(data), "bench", key)
            return key

        def boto3_process(r: int) -> str:
            key = f"boto3p-{r}.bin"
            if not held:  # once, on tmpfs where there is one: read back from memory, not the disk
                shm = "/dev/shm" if os.path.isdir("/dev/shm") else None
                held.append(Path(tempfile.mkdtemp(prefix="portshift-bench-s3url-", dir=shm)))
                (held[0] / "media.bin").write_bytes(data)
            data_file = held[0] / "media.bin"
            env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
            env.update(AWS_ACCESS_KEY_ID=KEY_ID, AWS_SECRET_ACCESS_KEY=SECRET)  # not in argv
            tool([sys.executable, "-c", BOTO3_PROCESS, str(data_file), url, str(moto_ca), key], env, "boto3 as a process")
            return key

        def sink_(r: int) -> str:
            from portshift.hashing import HashingStream

            if not sinks:
                os.environ["PORTSHIFT_AWS_ACCESS_KEY_ID"] = KEY_ID
                os.environ["PORTSHIFT_AWS_SECRET_ACCESS_KEY"] = SECRET
                sinks.append(bench_sink(url, moto_ca))
            view = memoryview(data)
            result = sinks[0].put(f"sink-{r}.bin", HashingStream(bytes(view[i : i + MIB]) for i in range(0, size, MIB)), size)
            assert result.size == size
            return f"sink-{r}.bin"

        steps: dict[str, Callable[[int], str]] = {}
        variants = args.sink or ["default"]
        for v in variants:
            steps[PS if v == "default" else f"{PS} {v}"] = lambda r, v=v: portshift(r, v)

        steps |= {
            "rclone copyurl": rclone,
            "boto3 upload_fileobj": boto3_,
            "boto3-process upload_fileobj": boto3_process,
            "sink S3Sink.put": sink_,
        }
        wanted = [n for n in steps if n.split()[0] in args.only.split(",")]
        plain.upload_fileobj(io.BytesIO(data[: 64 * MIB]), "bench", "warm-up")  # connections, moto
        plain.delete_object(Bucket="bench", Key="warm-up")
        for r in range(args.rounds):
            order = wanted[r % len(wanted) :] + wanted[: r % len(wanted)]
            for name in order:
                before = load()
                cpu0 = (time.process_time(), children_cpu(), proc_cpu(moto.pid), sim.cpu())
                t0 = time.perf_counter()
                key = steps[name](r)
                elapsed = time.perf_counter() - t0
                cpu1 = (time.process_time(), children_cpu(), proc_cpu(moto.pid), sim.cpu())
                client, mo, si = cpu1[0] - cpu0[0] + cpu1[1] - cpu0[1], cpu1[2] - cpu0[2], cpu1[3] - cpu0[3]
                notes.append(f"CPU s: client {client:.1f}, moto {mo:.1f}, simulator {si:.1f}")
                runs.setdefault(name, []).append(elapsed)
                assert plain.head_object(Bucket="bench", Key=key)["ContentLength"] == size, name
                if r == args.rounds - 1:  # the last round's objects are read back and hashed
                    got = sha256_stream(plain.get_object(Bucket="bench", Key=key)["Body"])
                    assert got == expected, f"{name}: the stored object differs"
                # Gone before the next step: moto keeps each object in memory and temp files, and a
                # step after 2-4 others in the same moto cost it 5.5-6.7 CPU-s against 3.2-4.1.
                plain.delete_object(Bucket="bench", Key=key)
                loads.append(before)
                extra = "; " + "; ".join(notes) if notes else ""
                notes.clear()
                mbs = size / elapsed / 1e6
                print(f"  round {r + 1}: {name:22s} {mbs:7.1f} MB/s  ({elapsed:.2f} s; {before}{extra})", flush=True)
    finally:
        for sink in sinks:
            sink.close()
        sim.stop()
        moto.terminate()
        moto.wait(30)
        shutil.rmtree(work, ignore_errors=True)
        for folder in held:
            shutil.rmtree(folder, ignore_errors=True)

    rate = {n: size / statistics.median(t) / 1e6 for n, t in runs.items()}
    settings = "portshift variants (part_size:max_concurrency): " + ", ".join(variants)
    print(f"\none {size // MIB} MiB recording, Chorus simulator (HTTPS) -> moto (TLS), 127.0.0.1, median of {args.rounds}")
    rclone = f"rclone {args.rclone_args or 'defaults'} (5 MiB chunks, 4 in flight) with --s3-no-head"
    print(f"  {settings}; {rclone}; Chorus requests_per_second = {args.rate:g}")
    for name, times in runs.items():
        print(f"  {name:22s} {rate[name]:7.1f} MB/s   (runs: {', '.join(f'{t:.2f}' for t in times)} s)")
    for mine in (n for n in runs if n.startswith((PS, "sink"))):
        for other, target in (("rclone copyurl", 1.0), ("boto3 upload_fileobj", 0.9), ("boto3-process upload_fileobj", 0.9)):
            if other in rate:
                pairs = [b / a for a, b in zip(runs[mine], runs[other])]
                print(
                    f"  ratio {mine} / {other.split()[0]}: {rate[mine] / rate[other]:.2f} (medians; per round "
                    + ", ".join(f"{p:.2f}" for p in pairs)
                    + f")  target >= {target}"
                )
    print(f"  load average at each start: {'; '.join(loads)}; now {load()}")
    print("  last round's objects re-downloaded: SHA-256 = the simulator's")


if __name__ == "__main__":
    main()
