"""S3 sink throughput against moto (HTTPS, loopback) beside boto3's own upload_fileobj.

Starts moto in server mode over HTTPS with a throw-away trustme CA, then, in the same run and
alternating so that machine noise hits both alike, uploads the same N MiB of random bytes:

- through the portshift S3 sink (HashingStream over 1 MiB chunks from memory -> sink.put:
  the stream's SHA-256, a SHA-256 per part, x-amz-checksum-sha256 on every request), with the
  default max_concurrency (2) and with 10 (boto3's default thread count);
- with boto3's ``upload_fileobj`` from an in-memory BytesIO (default TransferConfig: 8 MiB parts,
  10 threads, CRC32 checksums as boto3 computes them by default).

Both use 8 MiB parts. Prints the median MB/s (10^6 B/s) of each and the ratios.

    .venv/bin/python benchmarks/s3_throughput.py [--mib 64] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import boto3
import trustme
from botocore.config import Config

MIB = 1024 * 1024


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_moto(work: Path) -> tuple[subprocess.Popen[bytes], str, Path]:
    ca = trustme.CA()
    cert = ca.issue_cert("127.0.0.1")
    ca.cert_pem.write_to_path(work / "ca.pem")
    cert.private_key_pem.write_to_path(work / "server.key")
    cert.cert_chain_pems[0].write_to_path(work / "server.pem")
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    proc = subprocess.Popen(
        [sys.executable, "-c", "from moto.server import main; main()", "-H", "127.0.0.1", "-p", str(port),
         "-c", str(work / "server.pem"), "-k", str(work / "server.key")],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env,
    )
    ctx = ssl.create_default_context(cafile=str(work / "ca.pem"))
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1) as raw, ctx.wrap_socket(
                raw, server_hostname="127.0.0.1"
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
    ap.add_argument("--mib", type=int, default=64, help="size of the object (MiB)")
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    size = args.mib * MIB

    os.environ["PORTSHIFT_AWS_ACCESS_KEY_ID"] = "AKIABENCHMARK0000001"
    os.environ["PORTSHIFT_AWS_SECRET_ACCESS_KEY"] = "benchmark-secret"  # noqa: S105 - moto ignores it
    from portshift_sink_s3 import S3Options, S3Sink

    from portshift.config import build_options
    from portshift.hashing import HashingStream

    with tempfile.TemporaryDirectory(prefix="s3bench-") as tmp:
        proc, url, ca = start_moto(Path(tmp))
        try:
            plain = boto3.session.Session().client(
                "s3", endpoint_url=url, region_name="us-east-1", verify=str(ca),
                aws_access_key_id="bench", aws_secret_access_key="bench",
                config=Config(s3={"addressing_style": "path"}, max_pool_connections=16),
            )
            plain.create_bucket(Bucket="bench")

            def sink(concurrency: int) -> S3Sink:
                opts = build_options(S3Options, {
                    "bucket": "bench", "region": "us-east-1", "endpoint_url": url, "ca_bundle": str(ca),
                    "addressing_style": "path", "part_size": "8MiB", "max_concurrency": concurrency,
                }, "sink")
                return S3Sink(opts)

            sinks = {2: sink(2), 10: sink(10)}
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

            runs: dict[str, list[float]] = {"sink (max_concurrency=2)": [], "sink (max_concurrency=10)": [],
                                            "boto3 upload_fileobj": []}
            through_boto3()  # warm up connections and moto
            for _ in range(args.rounds):
                runs["boto3 upload_fileobj"].append(timed(through_boto3))
                runs["sink (max_concurrency=2)"].append(timed(through_sink(2)))
                runs["sink (max_concurrency=10)"].append(timed(through_sink(10)))

            import hashlib

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


if __name__ == "__main__":
    main()
