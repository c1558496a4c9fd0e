"""A copy of the checkout and fresh virtual environments that install from it offline, for the
tests that install portshift the way a user does (tests/test_packaging.py).

A fresh environment sees the third-party packages of the environment running the tests (the
dependencies, setuptools, build, twine, pip) through a ``.pth`` file that appends a folder of links
to them, leaving out every ``portshift*`` distribution and the editable finders of ``make setup``:
the portshift code it runs is only what was installed into it. pip runs with ``PIP_NO_INDEX`` and
without build isolation, ``python -m build`` with ``--no-isolation``.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
#: what a build or a test run leaves in a tree, never part of a checkout
LEFTOVERS = ("__pycache__", "*.pyc", ".pytest_cache", ".ruff_cache", ".hypothesis", "build", "*.egg-info")


def fenced(text: str, tag: str) -> str:
    """The one fenced block whose info string carries ``tag`` (```sh install-from-wheels)."""
    found = [
        m.group(3) for m in re.finditer(r"^(`{3,})([^\n]*)\n(.*?)^\1[ \t]*$", text, re.M | re.S) if tag in m.group(2).split()
    ]
    assert len(found) == 1, f"expected one code block tagged {tag!r}, found {len(found)}"
    return found[0]


def copy_checkout(dest: Path) -> Path:
    """The files a clone of this repository has (plus uncommitted and new, unignored files)."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"], cwd=REPO, capture_output=True, timeout=60
    )
    if listed.returncode == 0:
        for rel in filter(None, listed.stdout.decode().split("\0")):
            src = REPO / rel
            if src.is_file():
                (dest / rel).parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dest / rel)
    else:  # not a git checkout (an unpacked archive): the tree, less what a build or a test leaves
        shutil.copytree(REPO, dest, ignore=shutil.ignore_patterns(".venv", ".tools", ".git", "demo-export", "dist", *LEFTOVERS))
    return dest


def bridge_to_our_packages(base: Path) -> Path:
    """A folder of links to the third-party packages of this environment, without portshift."""
    bridge = base / "bridge"
    bridge.mkdir()
    for site in sorted({sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}):
        for entry in Path(site).iterdir():
            name = entry.name
            if (
                name.lower().startswith(("portshift", "__editable__", "__pycache__"))
                or name.endswith(".pth")
                or (bridge / name).exists()
            ):
                continue
            (bridge / name).symlink_to(entry)
    return bridge


def fresh_venv(path: Path, bridge: Path) -> Path:
    """A new virtual environment that sees the bridge; its ``pip`` is the bridged pip (seeding
    one with ensurepip takes seconds, and on Python < 3.12 brings an old setuptools that would
    shadow ours, >= 77 as the pyproject files require, in the offline builds)."""
    made = subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(path)], capture_output=True, text=True, timeout=300)
    assert made.returncode == 0, made.stdout + made.stderr
    python = path / "bin" / "python"
    purelib = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        capture_output=True,
        text=True,
        timeout=60,
    ).stdout.strip()
    Path(purelib, "_portshift_test_bridge.pth").write_text(f"import sys; sys.path.append({str(bridge)!r})\n")
    pip = path / "bin" / "pip"
    pip.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)
    return path


def venv_env(venv: Path, **extra: str) -> dict[str, str]:
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("PORTSHIFT_", "PIP_")) and k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")
    }
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}",
        VIRTUAL_ENV=str(venv),
        PIP_NO_INDEX="1",
        PIP_NO_BUILD_ISOLATION="0",  # sic: pip reads this variable the other way round; it turns isolation off
        PIP_DISABLE_PIP_VERSION_CHECK="1",
        PIP_NO_COMPILE="1",
        PIP_CONFIG_FILE=os.devnull,  # this machine's pip configuration (indexes, find-links) does not apply
        PYTHONDONTWRITEBYTECODE="1",
    )
    env.update(extra)
    return env


def run(args: list[str | Path], cwd: Path, env: dict[str, str], timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run a command in ``cwd``: never in the repository, whose portshift/ folder ``python -c``
    would import instead of the installed copy."""
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, env=env, cwd=cwd, timeout=timeout)


def run_block(block: str, cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """A shell block of the docs, as written, except that ``python -m build`` runs offline."""
    script = "set -euxo pipefail\n" + block.replace("python -m build ", "python -m build --no-isolation ")
    return run(["bash", "-c", script], cwd, env, timeout=600)
