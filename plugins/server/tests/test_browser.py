"""The real page in headless Chromium (Debian's, driven by playwright-core): fill the form with a
canary token, start a job, watch the progress reach done, sign up; then sweep the service's files,
logs, /proc of server and workers, and the browser's own profile for the canary."""

from __future__ import annotations

import base64
import hashlib
import json
import struct
import subprocess
import time
import zlib
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from .conftest import Certs, Server, canary_value, find_canary
from .test_api import verify_export
from .test_secrets import all_files, proc_texts

REPO = Path(__file__).resolve().parents[3]
PLAYWRIGHT = REPO / ".tools" / "server-browser" / "node_modules" / "playwright-core"
DRIVER = Path(__file__).parent / "browser" / "drive.cjs"


def spki_pin(cert_pem: Path) -> str:
    cert = x509.load_pem_x509_certificate(
        cert_pem.read_bytes().split(b"-----END CERTIFICATE-----")[0] + b"-----END CERTIFICATE-----\n"
    )
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", path
    return struct.unpack(">II", data[16:24])


def bar_filled(path: Path) -> bool:
    """Decode the bar's PNG (8-bit RGB/RGBA, no interlace) and check its middle row: the pixel
    near the left end and the pixel near the right end have the same (filled) colour."""
    data = path.read_bytes()
    width, height = png_size(path)
    depth, ctype = data[24], data[25]
    assert depth == 8 and ctype in (2, 6), (depth, ctype)
    chunks, pos = b"", 8
    while pos < len(data):
        length = struct.unpack(">I", data[pos : pos + 4])[0]
        if data[pos + 4 : pos + 8] == b"IDAT":
            chunks += data[pos + 8 : pos + 8 + length]
        pos += 12 + length
    raw = zlib.decompress(chunks)
    bpp = 3 if ctype == 2 else 4
    stride = width * bpp
    rows, prev = [], bytearray(stride)
    for y in range(height):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1 : (y + 1) * (stride + 1)])
        for i in range(stride):
            a = line[i - bpp] if i >= bpp else 0
            b, c = prev[i], prev[i - bpp] if i >= bpp else 0
            if f == 1:
                line[i] = (line[i] + a) & 0xFF
            elif f == 2:
                line[i] = (line[i] + b) & 0xFF
            elif f == 3:
                line[i] = (line[i] + (a + b) // 2) & 0xFF
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[i] = (line[i] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 0xFF
        rows.append(bytes(line))
        prev = line
    mid = rows[height // 2]
    left, right = mid[8 * bpp : 8 * bpp + 3], mid[(width - 8) * bpp : (width - 8) * bpp + 3]
    return left == right and left != b"\xff\xff\xff"


@pytest.fixture(scope="module")
def browser_ready() -> None:
    if not (Path("/usr/bin/chromium").exists() and PLAYWRIGHT.is_dir()):
        pytest.fail("the browser test needs Debian's chromium and playwright-core: run plugins/server/setup.sh (make setup does)")


def test_the_page_in_chromium_runs_a_job_and_leaks_nothing(
    browser_ready: None, server: Server, certs: Certs, tmp_path: Path
) -> None:
    token = canary_value("browser")
    profile, shot = tmp_path / "profile", tmp_path / "page.png"
    cfg = {
        "url": server.url + "/",
        "token": token,
        "spki": spki_pin(certs.cert),
        "profile": str(profile),
        "screenshot": str(shot),
        "playwright": str(PLAYWRIGHT),
    }
    before = set((server.local_root).iterdir()) if server.local_root.exists() else set()
    out_file, err_file = tmp_path / "driver.out", tmp_path / "driver.err"
    with open(out_file, "wb") as o, open(err_file, "wb") as e:
        driver = subprocess.Popen(["node", str(DRIVER)], stdin=subprocess.PIPE, stdout=o, stderr=e)
    assert driver.stdin is not None
    driver.stdin.write(json.dumps(cfg).encode())
    driver.stdin.close()
    proc: dict[str, bytes] = proc_texts(server.pid)
    deadline = time.monotonic() + 120
    while driver.poll() is None and time.monotonic() < deadline:
        for pid in server.workers():
            proc.update(proc_texts(pid))
        time.sleep(0.05)
    assert driver.wait(30) == 0, err_file.read_text()[-3000:]
    seen = json.loads(out_file.read_text())

    assert seen["status"] == "complete", seen
    assert "token" in seen["missingError"] and "missing" in seen["missingError"]
    assert seen["tokenAfterSubmit"] == "", "the page clears credentials once sent"
    assert seen["secretInputs"] and all(i["type"] == "password" and i["autocomplete"] == "off" for i in seen["secretInputs"])
    # no CSP violation, no script error; the one 400 is the deliberate submit without a token
    assert [m for m in seen["console"] if "status of 400" not in m] == [], seen["console"]
    files = [int(f) for s, f, _, _ in seen["progress"] if s == "running"]
    assert any(0 < f < 12 for f in files), f"live progress was shown: {seen['progress'][:40]}"
    assert seen["signup"].startswith("Thank you")
    assert seen["pageHeaders"]["cache-control"] == "no-store"
    new = set(server.local_root.iterdir()) - before
    roots = [d / seen["exportRoot"] for d in new if (d / seen["exportRoot"]).is_dir()]
    assert len(roots) == 1
    manifest = roots[0] / "portshift-manifest.txt"
    assert seen["manifest"] == hashlib.sha256(manifest.read_bytes()).hexdigest()
    assert verify_export(roots[0]) == 13
    assert shot.stat().st_size > 10_000

    # the progress bar: indeterminate or rising while running, 100 % at the end; a rate was shown
    percents = [p for s, _, p, _ in seen["progress"] if s == "running" and p]
    assert percents, "once the worker has listed the window the bar is determinate while running"
    assert percents == sorted(percents, key=int)
    assert seen["percent"] == "100" and seen["barValue"] == 100
    assert any(r.endswith("/s") for s, _, _, r in seen["progress"] if s == "running"), seen["progress"][:20]
    bar = png_size(Path(str(shot) + ".bar.png"))
    assert bar[0] > 100 and bar[1] >= 8, bar
    assert bar_filled(Path(str(shot) + ".bar.png")), "the bar's screenshot is filled end to end"
    # the least-privilege policy is the documentation's, word for word
    assert seen["policyShown"] and seen["policyHiddenForLocal"]
    assert seen["policySource"] == "docs/permissions/s3.md"
    assert seen["policy"] in (REPO / "docs" / "permissions" / "s3.md").read_text()
    assert '"s3:PutObject"' in seen["policy"]
    # the verify panel's commands, run as shown (the key fetched as its curl line would), succeed
    commands = seen["verifyCommands"].splitlines()
    assert commands[0] == f"cd '{seen['exportRoot']}'" and seen["manifest"] in seen["verifyCommands"]
    curl = next(line for line in commands if line.startswith("curl "))
    (roots[0] / "manifest-signing.pub.pem").write_bytes(server.client().get(curl.split()[-1]).content)
    script = "\n".join(["set -e", f"cd {roots[0].parent}", *[c for c in commands if not c.startswith("curl ")]])
    done = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "Signature Verified Successfully" in done.stdout and ": OK" in done.stdout
    assert f"{seen['manifest']}  portshift-manifest.txt" in done.stdout
    (roots[0] / "manifest-signing.pub.pem").unlink()
    # the security page and its link
    assert seen["securityHref"] == "/security" and seen["securityStatus"] == 200
    assert "No advisories" in seen["advisories"]
    assert png_size(Path(str(shot) + ".security.png"))[1] > 300

    assert any(k.endswith("/environ") and not k.startswith(f"{server.pid}/") for k in proc), "a worker was seen"
    assert not {k: h for k, data in proc.items() if (h := find_canary(data, [token]))}
    leaks = {str(p): h for p in all_files(server.data_dir.parent, profile) if (h := find_canary(p.read_bytes(), [token]))}
    assert not leaks, leaks
