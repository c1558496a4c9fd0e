"""The real page in headless Chromium (Debian's, driven by playwright-core): fill the form with a
canary token, start a job, watch the progress reach done, sign up; then sweep the service's files,
logs, /proc of server and workers, and the browser's own profile for the canary."""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess
import time
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
    files = [int(f) for s, f in seen["progress"] if s == "running"]
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

    assert any(k.endswith("/environ") and not k.startswith(f"{server.pid}/") for k in proc), "a worker was seen"
    assert not {k: h for k, data in proc.items() if (h := find_canary(data, [token]))}
    leaks = {str(p): h for p in all_files(server.data_dir.parent, profile) if (h := find_canary(p.read_bytes(), [token]))}
    assert not leaks, leaks
