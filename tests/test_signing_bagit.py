"""Tamper evidence: a signed manifest checked by stock OpenSSL, and BagIt output checked by the
Library of Congress's bagit tool."""

from __future__ import annotations

import subprocess
from pathlib import Path

import bagit
import pytest

from portshift.errors import ConfigError, ExitCode

from .support import run_job, sha256sum_check
from .test_cli import portshift


@pytest.fixture(scope="module")
def keypair(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    d = tmp_path_factory.mktemp("keys")
    subprocess.run(["openssl", "genpkey", "-algorithm", "ed25519", "-out", str(d / "k.pem")], check=True)
    subprocess.run(["openssl", "pkey", "-in", str(d / "k.pem"), "-pubout", "-out", str(d / "k.pub.pem")], check=True)
    return d / "k.pem", d / "k.pub.pem"


def doc(out: Path, **job: object) -> dict:
    return {
        "job": job,
        "source": {"type": "example", "count": 4, "media_size": 3000},
        "sink": {"type": "local", "path": str(out)},
    }


def openssl_verify(root: Path, pub: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            "openssl",
            "pkeyutl",
            "-verify",
            "-pubin",
            "-inkey",
            str(pub),
            "-rawin",
            "-in",
            "portshift-manifest.txt",
            "-sigfile",
            "portshift-manifest.txt.sig",
        ],
        cwd=root,
        capture_output=True,
        text=True,
    )


def test_signed_manifest_verifies_with_openssl_and_portshift(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    key, pub = keypair
    result = run_job(doc(tmp_path / "out", signing_key_file=str(key)), tmp_path / "s.db")
    root = tmp_path / "out" / result.export_root
    assert openssl_verify(root, pub).returncode == 0
    assert portshift("verify", str(root), "--public-key", str(pub)).returncode == 0
    # tamper with one manifest line: sha256sum may still pass if the file is changed too, the signature may not
    manifest = root / "portshift-manifest.txt"
    manifest.write_text(manifest.read_text().replace("# files: 8", "# files: 9"))
    assert openssl_verify(root, pub).returncode != 0
    r = portshift("verify", str(root), "--public-key", str(pub))
    assert r.returncode == ExitCode.VERIFY_FAILED and "signature does not match" in r.stderr


def test_the_signing_key_is_checked_before_any_transfer(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nCANARYnotakey\n-----END PRIVATE KEY-----\n")
    with pytest.raises(ConfigError, match="not an unencrypted PEM private key") as e:
        run_job(doc(tmp_path / "out", signing_key_file=str(bad)), tmp_path / "s.db")
    assert "CANARY" not in str(e.value)
    assert not (tmp_path / "out").exists()


def test_bagit_output_validates_with_the_library_of_congress_tool(tmp_path: Path) -> None:
    result = run_job(doc(tmp_path / "out", manifest=["sha256sum", "bagit"]), tmp_path / "s.db")
    root = tmp_path / "out" / result.export_root
    bag = bagit.Bag(str(root))
    bag.validate()  # raises BagValidationError on any problem
    info = bag.info
    assert info["Payload-Oxum"] == f"{result.bytes}.{result.files}"
    assert info["External-Identifier"] == result.job_id
    assert all(p.startswith("data/") for p in bag.payload_files())
    check = sha256sum_check(root)
    assert check.returncode == 0 and "tagmanifest-sha256.txt: OK" in check.stdout
    assert portshift("verify", str(root)).returncode == 0


def test_verify_store_streams_the_export_back_through_a_reader(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    key, pub = keypair
    result = run_job(doc(tmp_path / "out", signing_key_file=str(key)), tmp_path / "s.db")
    store = tmp_path / "store.toml"
    store.write_text(f'[store]\ntype = "local"\npath = "{tmp_path / "out"}"\n')
    ok = portshift("verify", "--store", str(store), result.export_root, "--public-key", str(pub))
    assert ok.returncode == 0, ok.stderr
    assert "signature: OK" in ok.stdout and "OK: 9 ok, 0 differ, 0 missing, 0 extra" in ok.stdout
    media = sorted((tmp_path / "out" / result.export_root).rglob("media.mp3"))
    media[0].write_bytes(b"changed")
    (tmp_path / "out" / result.export_root / "extra.bin").write_bytes(b"x")
    bad = portshift("verify", "--store", str(store), result.export_root, "--json")
    assert bad.returncode == ExitCode.VERIFY_FAILED
    report = __import__("json").loads(bad.stdout)
    assert report["differ"] == [media[0].relative_to(tmp_path / "out" / result.export_root).as_posix()]
    assert report["extra"] == ["extra.bin"]


def test_the_signing_key_can_come_from_standard_input_with_the_other_secrets(tmp_path: Path) -> None:
    import json
    import subprocess

    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

    from .support import PORTSHIFT

    key = Ed25519PrivateKey.generate()
    pem = key.private_bytes(Encoding.PEM, PrivateFormat.PKCS8, NoEncryption()).decode()
    pub = tmp_path / "pub.pem"
    pub.write_bytes(key.public_key().public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo))
    job = tmp_path / "job.toml"
    job.write_text(f'[source]\ntype = "example"\ncount = 2\n\n[sink]\ntype = "local"\npath = "{tmp_path / "out"}"\n')
    r = subprocess.run(
        [*PORTSHIFT, "run", "--config", str(job), "--state", str(tmp_path / "s.db"), "--secrets-from-stdin", "--report", "json"],
        input=json.dumps({"job": {"signing_key": pem}}),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    root = tmp_path / "out" / json.loads(r.stdout)["export_root"]
    assert (root / "portshift-manifest.txt.sig").exists()
    check = subprocess.run([*PORTSHIFT, "verify", str(root), "--public-key", str(pub)], capture_output=True, text=True)
    assert check.returncode == 0 and "signature: OK" in check.stdout, check.stdout + check.stderr
    assert "PRIVATE KEY" not in r.stdout + r.stderr
