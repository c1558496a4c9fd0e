"""S3 sink throughput against moto (HTTPS, loopback) beside boto3's own upload_fileobj.

Starts moto in server mode over HTTPS with a throw-away trustme CA, then, in the same run and
alternating so that machine noise hits both alike, uploads the same N MiB of random bytes:

- through the portshift S3 sink (HashingStream over 1 MiB chunks from memory -> sink.put:
  the stream's SHA-256, a SHA-256 per part, x-amz-checksum-sha256 on every request), with
  max_concurrency 2 (the default until session 5; 4 since) and with 10 (boto3's default thread count);
- with boto3's ``upload_fileobj`` from an in-memory BytesIO (default TransferConfig: 8 MiB parts,
  10 threads, CRC32 checksums as boto3 computes them by default).

Both use 8 MiB parts. Prints the median MB/s (10^6 B/s) of each and the ratios.

    .venv/bin/python benchmarks/s3_throughput.py [--mib 64] [--rounds 3]

``--bench6`` runs issue 8's benchmark 6 instead: 1 GiB (``--mib`` to change) into the same local
S3 server, in the same run, round by round in rotating order:

- baseline: boto3's ``upload_fileobj`` of the 1 GiB held in memory (``BytesIO``, default
  TransferConfig);
- portshift through the real pipeline: a ``portshift run`` subprocess with the built-in
  ``example`` source (one recording whose media file is those same bytes, generated on the fly)
  into the ``s3`` sink with its defaults (8 MiB parts, max_concurrency 4), timed from process
  start to exit (interpreter start, plugin loading, state DB, the metadata file and both
  manifests included);
- the sink alone: ``S3Sink.put`` of a ``HashingStream`` over the in-memory bytes (1 MiB chunks).

Every object is checked (size on the server; the pipeline's manifest SHA-256 against the bytes),
the last round's three objects are downloaded and re-hashed, and ratios portshift / boto3 are
printed (target >= 0.8).

    .venv/bin/python benchmarks/s3_throughput.py --bench6 [--rounds 2] [--profile DIR]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import boto3
import trustme
from botocore.config import Config

from portshift.testing import PORTSHIFT

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def bench_bucket(url: str, ca: Path) -> Any:
    """A plain boto3 client of the moto server at ``url``, with the bucket ``bench`` created."""
    plain = boto3.session.Session().client(
        "s3",
        endpoint_url=url,
        region_name="us-east-1",
        verify=str(ca),
        aws_access_key_id="bench",
        aws_secret_access_key="bench",
        config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
    )
    plain.create_bucket(Bucket="bench")
    return plain


def bench_sink(url: str, ca: Path, **options: Any) -> Any:
    """The S3 sink into the bucket ``bench`` of the moto server at ``url``, with ``options``."""
    from portshift_sink_s3 import S3Options, S3Sink

    from portshift.config import build_options

    base = {"bucket": "bench", "region": "us-east-1", "endpoint_url": url, "ca_bundle": str(ca), "addressing_style": "path"}
    return S3Sink(build_options(S3Options, {**base, **options}, "sink"))


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(work / "ca.pem")
    cert.private_key_pem.write_to_path(work / "server.key")
    cert.cert_chain_pems[0].write_to_path(work / "server.pem")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "from moto.server import main; main()",
            "-H",
            "127.0.0.1",
            "-p",
            str(port),
            "-c",
            str(work / "server.pem"),
            "-k",
            str(work / "server.key"),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=env,
    )
    ctx = ssl.create_default_context(cafile=str(work / "ca.pem"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with (
                socket.create_connection(("127.0.0.1", port), timeout=1) as raw,
                ctx.wrap_socket(raw, server_hostname="127.0.0.1"),
            ):
                return proc, f"https://127.0.0.1:{port}", work / "ca.pem"
        except OSError:
            time.sleep(0.1)
    proc.kill()
    sys.exit("moto did not start")


def timed(fn: Callable[[], None]) -> float:
    started = time.perf_counter()
    fn()
    return time.perf_counter() - started


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mib", type=int, default=None, help="size of the object (MiB; 64, or 1024 with --bench6)")
    ap.add_argument("--rounds", type=int, default=None, help="rounds (3, or 2 with --bench6)")
    ap.add_argument("--bench6", action="store_true", help="issue 8 benchmark 6: pipeline and sink vs boto3 at 1 GiB")
    ap.add_argument("--profile", metavar="DIR", help="with --bench6: py-spy record the pipeline run into DIR")
    args = ap.parse_args()
    if args.bench6:
        bench6(args.mib or 1024, args.rounds or 2, args.profile)
        return
    args.mib = args.mib or 64
    args.rounds = args.rounds or 3
    size = args.mib * MIB

    os.environ["PORTSHIFT_AWS_ACCESS_KEY_ID"] = "AKIABENCHMARK0000001"
    os.environ["PORTSHIFT_AWS_SECRET_ACCESS_KEY"] = "benchmark-secret"  # noqa: S105 - moto ignores it

    from portshift.hashing import HashingStream

    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        proc, url, ca = start_moto(Path(tmp))
        try:
            plain = bench_bucket(url, ca)

            sinks = {n: bench_sink(url, ca, part_size="8MiB", max_concurrency=n) for n in (2, 10)}
            data = os.urandom(size)

            def chunks() -> Iterator[bytes]:
                view = memoryview(data)
                for i in range(0, size, MIB):
                    yield bytes(view[i : i + MIB])

            def through_sink(concurrency: int) -> Callable[[], None]:
                def go() -> None:
                    result = sinks[concurrency].put(f"sink-{concurrency}.bin", HashingStream(chunks()), size)
                    assert result.size == size

                return go

            def through_boto3() -> None:
                plain.upload_fileobj(io.BytesIO(data), "bench", "boto3.bin")

            runs: dict[str, list[float]] = {
                "sink (max_concurrency=2)": [],
                "sink (max_concurrency=10)": [],
                "boto3 upload_fileobj": [],
            }
            through_boto3()  # warm up connections and moto
            for _ in range(args.rounds):
                runs["boto3 upload_fileobj"].append(timed(through_boto3))
                runs["sink (max_concurrency=2)"].append(timed(through_sink(2)))
                runs["sink (max_concurrency=10)"].append(timed(through_sink(10)))

            digest = hashlib.sha256(data).hexdigest()
            for key in ("sink-2.bin", "sink-10.bin", "boto3.bin"):
                body = plain.get_object(Bucket="bench", Key=key)["Body"].read()
                assert hashlib.sha256(body).hexdigest() == digest, key
        finally:
            proc.terminate()
            proc.wait(10)

    rate = {name: size / statistics.median(times) / 1e6 for name, times in runs.items()}
    print(f"object: {args.mib} MiB, 8 MiB parts, moto over HTTPS on 127.0.0.1, median of {args.rounds}")
    for name, mbs in rate.items():
        times = ", ".join(f"{t:.2f}" for t in runs[name])
        print(f"  {name:28s} {mbs:7.1f} MB/s   (runs: {times} s)")
    base = rate["boto3 upload_fileobj"]
    print(f"  ratio sink(2)/boto3:  {rate['sink (max_concurrency=2)'] / base:.2f}")
    print(f"  ratio sink(10)/boto3: {rate['sink (max_concurrency=10)'] / base:.2f}")
    print("  all three objects re-downloaded: SHA-256 matches")


# --- issue 8, benchmark 6 -----------------------------------------------------------------------

SEED = "0:ex0000000000"  # the example source's first recording (seed 0)


def sha256_stream(body: Any) -> str:
    h = hashlib.sha256()
    for piece in iter(lambda: body.read(8 * MIB), b""):
        h.update(piece)
    return h.hexdigest()


def run_pipeline(work: Path, url: str, ca: Path, size: int, prefix: str, profile: str | None) -> tuple[float, float]:
    """One ``portshift run`` subprocess; (seconds from start to exit, seconds from the job's
    first log line to exit)."""
    job = work / f"{prefix}.toml"
    job.write_text(
        f'[job]\ntransfers = 4\n\n[source]\ntype = "example"\ncount = 1\nmedia_size = {size}\n\n'
        f'[sink]\ntype = "s3"\nbucket = "bench"\nprefix = "{prefix}"\nregion = "us-east-1"\n'
        f'endpoint_url = "{url}"\nca_bundle = "{ca}"\naddressing_style = "path"\n'
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "PORTSHIFT_"))}
    env.update(
        PORTSHIFT_AWS_ACCESS_KEY_ID="AKIABENCHMARK0000001",
        PORTSHIFT_AWS_SECRET_ACCESS_KEY="benchmark-secret",
        PORTSHIFT_LOAD_PLUGINS="portshift-sink-s3",
    )
    argv = [*PORTSHIFT, "run", "--config", str(job), "--state", str(work / f"{prefix}.db"), "--no-progress"]
    if profile:
        Path(profile).mkdir(parents=True, exist_ok=True)
        if not shutil.which("py-spy"):
            sys.exit("--profile needs py-spy on PATH (pip install py-spy)")
        argv = [
            "py-spy",
            "record",
            "--subprocesses",
            "--rate",
            "50",
            "--format",
            "raw",
            "-o",
            str(Path(profile) / f"{prefix}.folded.txt"),
            "--",
            *argv,
        ]
    started = time.perf_counter()
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    job_started = started
    assert proc.stderr is not None
    err = []
    for line in proc.stderr:
        err.append(line)
        if "exporting" in line and job_started == started:
            job_started = time.perf_counter()
    proc.wait()
    ended = time.perf_counter()
    if proc.returncode != 0:
        sys.exit(f"portshift run failed ({proc.returncode}): {''.join(err)[-2000:]}")
    return ended - started, ended - job_started


def bench6(mib: int, rounds: int, profile: str | None) -> None:
    size = mib * MIB
    os.environ["PORTSHIFT_AWS_ACCESS_KEY_ID"] = "AKIABENCHMARK0000001"
    os.environ["PORTSHIFT_AWS_SECRET_ACCESS_KEY"] = "benchmark-secret"  # noqa: S105 - moto ignores it

    from portshift.default_plugins.example_source import synthetic_chunks
    from portshift.hashing import HashingStream

    # The very bytes the example source generates for the pipeline's media file.
    data = b"".join(synthetic_chunks(size, SEED))
    digest = hashlib.sha256(data).hexdigest()
    names = ("boto3 upload_fileobj", "portshift run (pipeline)", "S3Sink.put (sink alone)")
    runs: dict[str, list[float]] = {n: [] for n in names}
    job_times: list[float] = []
    with tempfile.TemporaryDirectory(prefix="s3bench6-") as tmp:
        work = Path(tmp)
        proc, url, ca = start_moto(work)
        try:
            plain = bench_bucket(url, ca)
            sink = bench_sink(url, ca)

            def chunks() -> Iterator[bytes]:
                view = memoryview(data)
                for i in range(0, size, MIB):
                    yield bytes(view[i : i + MIB])

            plain.upload_fileobj(io.BytesIO(data[: 64 * MIB]), "bench", "warm-up")  # connections, moto
            plain.delete_object(Bucket="bench", Key="warm-up")
            last: dict[str, str] = {}
            for r in range(rounds):
                keys: dict[str, str] = {}
                for name in names[r % 3 :] + names[: r % 3]:  # rotate the order round by round
                    if name == names[0]:
                        key = f"boto3-{r}.bin"
                        runs[name].append(timed(lambda k=key: plain.upload_fileobj(io.BytesIO(data), "bench", k)))
                    elif name == names[1]:
                        wall, job_time = run_pipeline(work, url, ca, size, f"pipe{r}", profile)
                        runs[name].append(wall)
                        job_times.append(job_time)
                        objs = plain.list_objects_v2(Bucket="bench", Prefix=f"pipe{r}/")["Contents"]
                        key = next(o["Key"] for o in objs if o["Key"].endswith("media.mp3"))
                        manifest = next(o["Key"] for o in objs if o["Key"].endswith("portshift-manifest.txt"))
                        text = plain.get_object(Bucket="bench", Key=manifest)["Body"].read().decode()
                        assert f"{digest}  " in text, "the manifest's SHA-256 is not the SHA-256 of the bytes"
                    else:
                        key = f"sink-{r}.bin"
                        runs[name].append(timed(lambda k=key: sink.put(k, HashingStream(chunks()), size)))
                    assert plain.head_object(Bucket="bench", Key=key)["ContentLength"] == size, name
                    keys[name] = key
                    print(f"  round {r + 1}: {name:28s} {size / runs[name][-1] / 1e6:7.1f} MB/s", flush=True)
                if r < rounds - 1:  # keep moto's disk small
                    for key in keys.values():
                        plain.delete_object(Bucket="bench", Key=key)
                last = keys
            for name, key in last.items():
                got = sha256_stream(plain.get_object(Bucket="bench", Key=key)["Body"])
                assert got == digest, f"{name}: the stored object differs"
            sink.close()
        finally:
            proc.terminate()
            proc.wait(30)

    rate = {n: size / statistics.median(t) / 1e6 for n, t in runs.items()}
    print(f"benchmark 6: {mib} MiB into moto over HTTPS on 127.0.0.1, 8 MiB parts, median of {rounds}")
    for name in names:
        times = ", ".join(f"{t:.1f}" for t in runs[name])
        print(f"  {name:28s} {rate[name]:7.1f} MB/s   (runs: {times} s)")
    job_rate = size / statistics.median(job_times) / 1e6
    print(f"  {'  pipeline, job only':28s} {job_rate:7.1f} MB/s   (from the job's first log line to exit)")
    base = rate[names[0]]
    print(f"  ratio pipeline/boto3:   {rate[names[1]] / base:.2f}   (target >= 0.8)")
    print(f"  ratio sink alone/boto3: {rate[names[2]] / base:.2f}")
    print("  last round's three objects re-downloaded: SHA-256 matches the bytes and the manifest")


if __name__ == "__main__":
    main()
