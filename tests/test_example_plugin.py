"""The example plugin of docs/writing-plugins.md, installed for real and used like a third-party plugin.

A fresh virtual environment is made in a temporary folder; a copy of the core and a copy of
docs/examples/portshift-sink-memo are built and installed into it with pip, offline
(``--no-index --no-deps --no-build-isolation``). The new environment sees the packages of the
environment running these tests (the core's dependencies, pip, setuptools, pytest) through a
``.pth`` file: nothing is installed into, or changed in, that environment.

Then, through the new environment's own ``portshift`` command: ``portshift plugins --json`` lists
the sink with its distribution; a real job runs through it and GNU ``sha256sum -c`` checks the
export; the memo lines match the manifest and their HMAC checks; ``portshift verify --store``
reads the export back through the plugin's reader; and the example's own test suite (the
conformance kit included) passes against the installed package.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path
from typing import Any

import pytest

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

REPO = Path(__file__).resolve().parents[1]
EXAMPLE = REPO / "docs" / "examples" / "portshift-sink-memo"
DIST = "portshift-sink-memo"
MEMO_KEY = "memo-key-for-the-example-plugin-test-5b1f0c"
IGNORE = shutil.ignore_patterns("__pycache__", ".pytest_cache", ".ruff_cache", "build", "*.egg-info")


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PORTSHIFT_") and k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    env.update(extra)
    return env


def run(
    args: list[str | Path], cwd: Path, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``: never in the repository, whose portshift/ folder ``python -c``
    would import instead of the installed copy."""
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, env=env or clean_env(), cwd=cwd, timeout=timeout
    )


def doc_blocks(text: str) -> list[tuple[str, str]]:
    """(info string, body) of each fenced code block of a Markdown page."""
    return [(m.group(2).strip(), m.group(3)) for m in re.finditer(r"^(`{3,})([^\n]*)\n(.*?)^\1[ \t]*$", text, re.M | re.S)]


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    base = tmp_path_factory.mktemp("example-plugin")
    # copies: a build in place would leave build/ and *.egg-info in the repository
    core = base / "src" / "portshift"
    shutil.copytree(REPO / "portshift", core / "portshift", ignore=IGNORE)
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy2(REPO / name, core / name)
    plugin = base / "src" / DIST
    shutil.copytree(EXAMPLE, plugin, ignore=IGNORE)

    env_dir = base / "venv"
    made = run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", env_dir], base)
    assert made.returncode == 0, made.stderr
    python = env_dir / "bin" / "python"
    purelib = run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], base).stdout.strip()
    ours = {sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    Path(purelib, "_portshift_test_bridge.pth").write_text(
        "".join(f"import site; site.addsitedir({p!r})\n" for p in sorted(ours))
    )

    probe = run(
        [
            python,
            "-c",
            "import importlib.util as u, setuptools; print(setuptools.__version__, "
            "bool(u.find_spec('setuptools.command.bdist_wheel') or u.find_spec('wheel')))",
        ],
        base,
    )
    assert probe.returncode == 0 and probe.stdout.split()[1] == "True", (
        "building the example offline needs setuptools >= 70.1 (or the wheel package) in the environment running the "
        f"tests (`make setup` installs both); found: {probe.stdout.strip() or probe.stderr.strip()}"
    )
    installed = run(
        [
            python,
            "-m",
            "pip",
            "install",
            "--no-index",
            "--no-deps",
            "--no-build-isolation",
            "--disable-pip-version-check",
            "--quiet",
            core,
            plugin,
        ],
        base,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stdout + installed.stderr

    where = run(
        [python, "-c", "import portshift, portshift_sink_memo; print(portshift.__file__); print(portshift_sink_memo.__file__)"],
        base,
    )
    assert where.returncode == 0, where.stderr
    assert all(Path(p).is_relative_to(env_dir) for p in where.stdout.split()), f"not imported from the new venv: {where.stdout}"
    portshift = env_dir / "bin" / "portshift"
    assert portshift.is_file(), "the core's console script was not installed"
    return {"base": base, "python": python, "portshift": portshift, "plugin": plugin}


def plugins_json(venv: dict[str, Any], **env: str) -> dict[str, Any]:
    r = run([venv["portshift"], "plugins", "--json"], venv["base"], env=clean_env(**env))
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_portshift_plugins_lists_the_new_sink_with_its_distribution(venv: dict[str, Any]) -> None:
    info = plugins_json(venv)
    assert info["sinks"]["memo"]["plugin"] == DIST
    [entry] = [p for p in info["plugins"] if p["distribution"] and p["distribution"]["name"] == DIST]
    assert entry["name"] == "memo" and entry["distribution"]["version"] == "0.1.0"
    assert {"register_sinks", "register_readers"} <= set(entry["hooks"])
    schema = info["sinks"]["memo"]["options"]
    assert set(schema["properties"]) == {"path", "memo", "memo_key", "memo_key_file"}
    assert schema["required"] == ["path"]
    assert not [f for f in info["failed"] if f["plugin"] == DIST]

    # the allow-list: empty loads no installed plugin, naming the distribution loads it alone
    assert set(plugins_json(venv, PORTSHIFT_LOAD_PLUGINS="")["sinks"]) == {"local"}
    assert set(plugins_json(venv, PORTSHIFT_LOAD_PLUGINS=DIST)["sinks"]) == {"local", "memo"}

    # the text listing shown in docs/writing-plugins.md is what `portshift plugins` prints
    text = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    [shown] = [body for info_, body in doc_blocks(text) if info_ == "text" and body.startswith("Sinks:")]
    real = run([venv["portshift"], "plugins"], venv["base"], env=clean_env(PORTSHIFT_LOAD_PLUGINS=DIST)).stdout.splitlines()
    assert any(line.lstrip().startswith("memo ") for line in shown.splitlines())
    for line in shown.splitlines():
        assert line in real, f"docs/writing-plugins.md shows {line!r}; `portshift plugins` prints:\n" + "\n".join(real)


def test_a_job_runs_through_the_installed_plugin(venv: dict[str, Any], tmp_path: Path) -> None:
    # the job file is the one docs/writing-plugins.md shows
    text = (REPO / "docs" / "writing-plugins.md").read_text(encoding="utf-8")
    [body] = [b for info_, b in doc_blocks(text) if info_.split()[:2] == ["toml", "job-file"]]
    doc = tomllib.loads(body)
    assert doc["sink"]["type"] == "memo" and doc["source"]["type"] == "example"
    dest = tmp_path / "deliveries"
    job = tmp_path / "job.toml"
    job.write_text(body.replace(f'path = "{doc["sink"]["path"]}"', f'path = "{dest}"'))
    state = tmp_path / "state.db"
    env = clean_env(PORTSHIFT_LOAD_PLUGINS=DIST, PORTSHIFT_MEMO_KEY=MEMO_KEY)

    r = run([venv["portshift"], "run", "--config", job, "--state", state, "--no-progress"], tmp_path, env=env)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "complete" in r.stdout
    [root] = [p for p in dest.iterdir() if p.is_dir()]

    # GNU sha256sum checks the export, with no portshift involved
    check = run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], root)
    assert check.returncode == 0, check.stdout + check.stderr
    manifest = [
        line.split("  ", 1)
        for line in (root / "portshift-manifest.txt").read_text().splitlines()
        if line and not line.startswith("#")
    ]
    assert len(manifest) == 1 + 2 * doc["source"]["count"]  # the index, then media + metadata per call
    assert check.stdout.count(": OK") == len(manifest)

    # one memo line per stored file, in the order of durable writes: the manifest text last
    memo = [json.loads(line) for line in (dest / "deliveries.jsonl").read_text().splitlines()]
    txt_sha = hashlib.sha256((root / "portshift-manifest.txt").read_bytes()).hexdigest()
    expected = {f"{root.name}/{path}": sha for sha, path in manifest} | {f"{root.name}/portshift-manifest.txt": txt_sha}
    assert {m["key"]: m["sha256"] for m in memo} == expected and len(memo) == len(expected)
    assert memo[-1]["key"] == f"{root.name}/portshift-manifest.txt"
    for m in memo:
        assert m["size"] == (dest / m["key"]).stat().st_size
        signed = json.dumps({k: m[k] for k in ("key", "size", "sha256", "stored_at")}, sort_keys=True, separators=(",", ":"))
        assert hmac.compare_digest(m["hmac"], hmac.new(MEMO_KEY.encode(), signed.encode(), hashlib.sha256).hexdigest())

    # the memo key never left memory
    for path in [*dest.rglob("*"), *tmp_path.glob("state.db*")]:
        if path.is_file():
            assert MEMO_KEY.encode() not in path.read_bytes(), f"the memo key is in {path}"
    assert MEMO_KEY not in r.stdout + r.stderr

    # portshift verify --store reads the export back through the plugin's reader
    store = tmp_path / "store.toml"
    store.write_text(f'[store]\ntype = "memo"\npath = "{dest}"\n')
    ok = run([venv["portshift"], "verify", root.name, "--store", store], tmp_path, env=env)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.strip().endswith(f"OK: {len(manifest)} ok, 0 differ, 0 missing, 0 extra")
    media = sorted(root.rglob("media.mp3"))[0]
    media.write_bytes(b"not the recording")
    bad = run([venv["portshift"], "verify", root.name, "--store", store, "--json"], tmp_path, env=env)
    assert bad.returncode == 4, bad.stdout + bad.stderr
    assert json.loads(bad.stdout)["differ"] == [media.relative_to(root).as_posix()]
    assert run(["sha256sum", "-c", "--quiet", "portshift-manifest.txt"], root).returncode != 0


def test_the_example_test_suite_passes_against_the_installed_package(venv: dict[str, Any]) -> None:
    plugin = venv["plugin"]
    shutil.rmtree(plugin / "portshift_sink_memo")  # so that only the installed package can be imported
    r = run([venv["python"], "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests"], plugin, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    passed = re.search(r"(\d+) passed", r.stdout)
    assert passed and int(passed.group(1)) >= 20, r.stdout[-2000:]
    assert not re.search(r"\d+ (failed|skipped|error)", r.stdout), r.stdout[-2000:]
