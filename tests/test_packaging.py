"""The distributions, built and installed the way a user installs them, then used.

In a copy of the checkout, README.md's own ``install-from-wheels`` commands build every
distribution (the core at the root and each ``plugins/*/pyproject.toml``): ``python -m build``
makes the sdist, then the wheel *from that sdist*, so a file the sdist lacks is missing from the
wheel too. The wheels are installed, core first and non-editable, into a fresh virtual
environment. Then, through that environment's own commands: ``portshift plugins --json`` lists
every plugin with its distribution and no broken one, the server's static files are installed,
and a demo export of the Chorus simulator into a local folder passes GNU ``sha256sum -c``.
README.md's ``install-from-checkout`` commands run too, in a second fresh environment, and
docs/releasing.md's build-and-check commands in the first.

Everything runs offline, in fresh environments whose only portshift code is what was installed
into them (how: tests/fresh_env.py).
"""

from __future__ import annotations

import email.parser
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

from .fresh_env import REPO, bridge_to_our_packages, copy_checkout, fenced, fresh_venv, run, run_block, venv_env

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

TOKEN = "packaging-test-chorus-token-4d8e1f"  # the simulator's token, not a real credential


# --- what the repository declares -----------------------------------------------------------------
def project_dirs() -> dict[str, str]:
    """distribution name -> its folder, relative to the repository root ("." for the core)."""
    out = {}
    for pyproject in [REPO / "pyproject.toml", *sorted((REPO / "plugins").glob("*/pyproject.toml"))]:
        out[tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]["name"]] = pyproject.parent.relative_to(
            REPO
        ).as_posix()
    return out


def pyproject(rel: str) -> dict[str, Any]:
    return tomllib.loads((REPO / rel / "pyproject.toml").read_text(encoding="utf-8"))


def version(rel: str) -> str:
    """The version a distribution is built with (the core's comes from portshift/__init__.py)."""
    meta = pyproject(rel)["project"]
    if "version" in meta:
        return str(meta["version"])
    assert meta.get("dynamic") == ["version"], f"{rel}: no version"
    m = re.search(r'^__version__ = "([^"]+)"$', (REPO / "portshift" / "__init__.py").read_text(encoding="utf-8"), re.M)
    assert m, "portshift/__init__.py has no __version__"
    return m.group(1)


def normalized(name: str) -> str:
    return re.sub(r"[-_.]+", "_", name).lower()


def package_files(rel: str) -> list[str]:
    """The files of the import packages of one distribution, relative to its folder."""
    root = REPO / rel
    includes = pyproject(rel)["tool"]["setuptools"]["packages"]["find"]["include"]
    tops = sorted({pattern.rstrip("*") for pattern in includes})
    files = []
    for top in tops:
        for path in (root / top).rglob("*"):
            if path.is_file() and "__pycache__" not in path.parts and not path.name.endswith(".pyc"):
                files.append(path.relative_to(root).as_posix())
    assert files, f"{rel}: no package files found for {includes}"
    return sorted(files)


# --- the fixtures: one build, one environment for every check ------------------------------------
@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    missing = [tool for tool in ("build", "twine") if importlib.util.find_spec(tool) is None]
    assert not missing, f"the packaging tests need {missing} in this environment: run `make setup` (they are test extras)"
    base = tmp_path_factory.mktemp("packaging")
    checkout = copy_checkout(base / "checkout")
    bridge = bridge_to_our_packages(base)
    venv = fresh_venv(base / "venv", bridge)
    block = fenced((REPO / "README.md").read_text(encoding="utf-8"), "install-from-wheels")
    started = time.monotonic()
    r = run_block(block, checkout, venv_env(venv))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    return {
        "base": base,
        "checkout": checkout,
        "bridge": bridge,
        "venv": venv,
        "dist": checkout / "dist",
        "output": r.stdout + r.stderr,
        "seconds": time.monotonic() - started,
    }


def venv_json(installed: dict[str, Any], *args: str) -> Any:
    r = run([installed["venv"] / "bin" / "portshift", *args], installed["base"], venv_env(installed["venv"]))
    assert r.returncode == 0, r.stdout + r.stderr
    return json.loads(r.stdout)


# --- the distributions --------------------------------------------------------------------------
def test_every_distribution_is_built_as_an_sdist_and_a_wheel_from_that_sdist(installed: dict[str, Any]) -> None:
    dist: Path = installed["dist"]
    dirs = project_dirs()
    assert {"portshift", "portshift-source-chorus", "portshift-sink-s3", "portshift-server"} <= set(dirs)
    built = sorted(p.name for p in dist.iterdir())
    expected = []
    for name, rel in dirs.items():
        v = version(rel)
        expected += [f"{normalized(name)}-{v}.tar.gz", f"{normalized(name)}-{v}-py3-none-any.whl"]
    assert built == sorted(expected)
    # `python -m build` builds the wheel from the unpacked sdist, not from the checkout
    assert installed["output"].count("Building wheel from sdist") == len(dirs), installed["output"][-3000:]


@pytest.mark.parametrize("name", sorted(project_dirs()))
def test_the_sdist_and_the_wheel_carry_the_code_the_license_and_the_readme(installed: dict[str, Any], name: str) -> None:
    rel = project_dirs()[name]
    meta = pyproject(rel)["project"]
    stem = f"{normalized(name)}-{version(rel)}"
    files = package_files(rel)

    with zipfile.ZipFile(installed["dist"] / f"{stem}-py3-none-any.whl") as whl:
        names = set(whl.namelist())
        missing = sorted(set(files) - names)
        assert not missing, f"{name}: files of the package missing from the wheel: {missing}"
        assert f"{stem}.dist-info/licenses/LICENSE" in names
        assert whl.read(f"{stem}.dist-info/licenses/LICENSE") == (REPO / "LICENSE").read_bytes()
        metadata = email.parser.Parser().parsestr(whl.read(f"{stem}.dist-info/METADATA").decode())
        entry_points = whl.read(f"{stem}.dist-info/entry_points.txt").decode()
    assert metadata["Name"] == name and metadata["Version"] == version(rel)
    assert metadata["License-Expression"] == "Apache-2.0" and metadata.get_all("License-File") == ["LICENSE"]
    assert metadata["Requires-Python"] == ">=3.10"
    assert metadata["Description-Content-Type"].startswith("text/markdown")
    assert metadata.get_payload().strip() == (REPO / rel / "README.md").read_text(encoding="utf-8").strip()
    if rel == ".":
        assert "[console_scripts]\nportshift = portshift.cli:main" in entry_points
    else:
        [floor] = [  # the core itself (an extra such as portshift[postgres] is asked for apart)
            d for d in metadata.get_all("Requires-Dist") if re.split(r"[ <>=;\[]", d)[0] == "portshift" and "extra ==" not in d
        ]
        m = re.fullmatch(r"portshift>=([\d.]+)", floor)
        assert m, f"{name} must require the core with a floor (portshift>=X.Y), not {floor!r}"
        as_tuple = [int(x) for x in m.group(1).split(".")]
        assert as_tuple <= [int(x) for x in version(".").split(".")], f"{name} requires a newer core than this one: {floor}"
        for ep_name, target in meta["entry-points"]["portshift"].items():
            assert f"[portshift]\n{ep_name} = {target}" in entry_points

    with tarfile.open(installed["dist"] / f"{stem}.tar.gz") as sdist:
        members = {m.name.split("/", 1)[1] for m in sdist.getmembers() if "/" in m.name and m.isfile()}
    for needed in ("pyproject.toml", "README.md", "LICENSE", "PKG-INFO", *files):
        assert needed in members, f"{name}: {needed} is missing from the sdist"
    assert (REPO / rel / "LICENSE").read_bytes() == (REPO / "LICENSE").read_bytes(), f"{rel}/LICENSE differs from LICENSE"


# --- the installed environment -----------------------------------------------------------------
def test_portshift_plugins_lists_every_plugin_from_its_installed_wheel(installed: dict[str, Any]) -> None:
    info = venv_json(installed, "plugins", "--json")
    assert info["failed"] == []
    plugin_dists = {name: rel for name, rel in project_dirs().items() if rel != "."}
    listed = {p["distribution"]["name"]: p for p in info["plugins"] if p["distribution"]}
    assert sorted(listed) == sorted(plugin_dists), "the installed plugins are exactly the repository's"
    for name, rel in plugin_dists.items():
        assert listed[name]["distribution"]["version"] == version(rel)
        assert listed[name]["name"] in pyproject(rel)["project"]["entry-points"]["portshift"]
    assert info["sources"]["chorus"]["plugin"] == "portshift-source-chorus"
    assert {"s3", "azure", "gcs", "local"} <= set(info["sinks"])

    # every module comes from the new environment's site-packages, none from the checkout
    modules = ["portshift", *sorted({normalized(n) for n in plugin_dists})]
    where = run(
        [
            installed["venv"] / "bin" / "python",
            "-c",
            f"import {', '.join(modules)}; print('\\n'.join(m.__file__ for m in ({', '.join(modules)},)))",
        ],
        installed["base"],
        venv_env(installed["venv"]),
    )
    assert where.returncode == 0, where.stderr
    for path in where.stdout.split():
        assert Path(path).is_relative_to(installed["venv"]) and "site-packages" in Path(path).parts, path

    # what every distribution declares is present (pip check reads the installed metadata)
    check = run([installed["venv"] / "bin" / "python", "-m", "pip", "check"], installed["base"], venv_env(installed["venv"]))
    assert check.returncode == 0, check.stdout + check.stderr


def test_the_server_finds_its_static_files_in_the_installed_package(installed: dict[str, Any]) -> None:
    shipped = sorted(p.name for p in (REPO / "plugins" / "server" / "portshift_server" / "static").iterdir())
    code = (
        "import importlib.resources as r; "
        "print('\\n'.join(sorted(p.name for p in (r.files('portshift_server') / 'static').iterdir())))"
    )
    r = run([installed["venv"] / "bin" / "python", "-c", code], installed["base"], venv_env(installed["venv"]))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == shipped
    helped = run([installed["venv"] / "bin" / "portshift", "serve", "--help"], installed["base"], venv_env(installed["venv"]))
    assert helped.returncode == 0 and "--secret-file" in helped.stdout, helped.stdout + helped.stderr


def test_a_demo_export_from_the_chorus_simulator_passes_sha256sum(installed: dict[str, Any], tmp_path: Path) -> None:
    portshift = installed["venv"] / "bin" / "portshift"
    env = venv_env(installed["venv"], PORTSHIFT_CHORUS_TOKEN=TOKEN, PORTSHIFT_RETRY_BASE="0")
    job, export = tmp_path / "job.toml", tmp_path / "export"
    sim = subprocess.Popen(
        [
            str(portshift),
            "chorus",
            "simulate",
            "--calls",
            "12",
            "--media-size",
            "16KiB-256KiB",
            "--job-out",
            str(job),
            "--export-to",
            str(export),
            "--ca-out",
            str(tmp_path / "ca.pem"),
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.monotonic() + 60
        while not job.exists():
            assert sim.poll() is None, f"the simulator exited: {sim.stderr.read() if sim.stderr else ''}"
            assert time.monotonic() < deadline, "the simulator did not write its job file within 60 s"
            time.sleep(0.05)
        time.sleep(0.1)  # the file is written whole once the server is ready; let the write finish
        r = run([portshift, "run", "--config", job, "--state", tmp_path / "state.db", "--no-progress"], tmp_path, env)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "complete" in r.stdout
    finally:
        sim.send_signal(signal.SIGINT)
        try:
            sim.wait(timeout=15)
        except subprocess.TimeoutExpired:  # pragma: no cover - a hung simulator must not hang the suite
            sim.kill()
            sim.wait()
    [root] = [p.parent for p in export.rglob("portshift-manifest.txt")]
    check = run(["sha256sum", "-c", "--strict", "portshift-manifest.txt"], root, os.environ.copy())
    assert check.returncode == 0, check.stdout + check.stderr
    entries = [line for line in (root / "portshift-manifest.txt").read_text().splitlines() if line and not line.startswith("#")]
    assert check.stdout.count(": OK") == len(entries) > 12  # the index, then several artifacts per call
    assert any(line.endswith(".mp3") or "/media" in line for line in entries), entries[:5]


# --- the other install path of README.md -----------------------------------------------------------
def test_install_from_a_checkout_as_the_readme_says(installed: dict[str, Any]) -> None:
    base: Path = installed["base"]
    checkout = copy_checkout(base / "checkout-2")
    venv = fresh_venv(base / "venv-2", installed["bridge"])
    block = fenced((REPO / "README.md").read_text(encoding="utf-8"), "install-from-checkout")
    r = run_block(block, checkout, venv_env(venv))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    assert "FAILED TO LOAD" not in r.stdout
    named = set(re.findall(r"\./plugins/([a-z0-9_]+)", block))
    assert named, "the block installs no plugin"
    for rel in named:
        name = pyproject(f"plugins/{rel}")["project"]["name"]
        assert re.search(rf"^  \S+\s+{re.escape(name)} {re.escape(version(f'plugins/{rel}'))}$", r.stdout, re.M), r.stdout
    # not editable: the installed modules live in the environment, not in the checkout
    where = run([venv / "bin" / "python", "-c", "import portshift; print(portshift.__file__)"], base, venv_env(venv))
    assert Path(where.stdout.strip()).is_relative_to(venv), where.stdout + where.stderr


# --- docs/releasing.md ---------------------------------------------------------------------------
def test_all_distributions_carry_one_version_as_releasing_md_says() -> None:
    versions = {name: version(rel) for name, rel in project_dirs().items()}
    assert len(set(versions.values())) == 1, f"docs/releasing.md: one version for every distribution; found {versions}"
    text = (REPO / "docs" / "releasing.md").read_text(encoding="utf-8")
    assert "`portshift/__init__.py`" in text and "plugins/*/pyproject.toml" in text
    [v] = set(versions.values())
    assert f"git tag -a v{v} " in text, "the tag example shows another version than the current one"


def test_the_release_commands_build_check_and_upload_every_file_core_first(installed: dict[str, Any]) -> None:
    text = (REPO / "docs" / "releasing.md").read_text(encoding="utf-8")
    release = [line for line in fenced(text, "release-build").splitlines() if line.strip()]
    readme = fenced((REPO / "README.md").read_text(encoding="utf-8"), "install-from-wheels").splitlines()
    builds = [line.split("#")[0].rstrip() for line in readme if "python -m build" in line]
    # the build commands are README's, which the `installed` fixture ran; the rest runs here on their output
    assert release[0] == "rm -rf dist" and release[1 : 1 + len(builds)] == builds, release
    rest = release[1 + len(builds) :]
    assert rest == ["python -m twine check --strict dist/*"], rest
    checkout: Path = installed["checkout"]
    r = run_block("\n".join(rest), checkout, venv_env(installed["venv"]))
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-6000:]
    assert r.stdout.count("PASSED") == 2 * len(project_dirs()), r.stdout  # twine check: one line per file
    built = sorted(p.name for p in (checkout / "dist").iterdir())

    # the upload commands, expanded by the shell in dist/'s parent, name every file once, the core first
    uploads = [line for line in fenced(text, "release-upload").splitlines() if line.strip()]
    assert all(line.startswith("python -m twine upload ") for line in uploads), uploads
    expanded = []
    for line in uploads:
        args = line.split()[4:]
        listed = run(["bash", "-c", 'printf "%s\\n" ' + " ".join(args)], checkout, os.environ.copy()).stdout.split()
        expanded.append(sorted(Path(a).name for a in listed))
    core = f"portshift-{version('.')}"
    assert expanded[0] == sorted([f"{core}.tar.gz", f"{core}-py3-none-any.whl"]), expanded[0]
    assert sorted(sum(expanded, [])) == built, "the upload commands must name every built file exactly once"


# --- every install instruction in the docs -------------------------------------------------------
def install_pages() -> list[Path]:
    return [REPO / "README.md", *sorted((REPO / "docs").rglob("*.md")), *sorted((REPO / "plugins").glob("*/README.md"))]


def test_no_page_installs_portshift_from_an_index_before_it_is_published() -> None:
    """Until docs/releasing.md has been followed, `pip install portshift...` by name cannot work."""
    wrong = []
    for page in install_pages():
        if page.name == "releasing.md":  # says what to write *after* the first release
            continue
        for n, line in enumerate(page.read_text(encoding="utf-8").splitlines(), 1):
            for cmd in re.findall(r"pip install ([^`#\n]*)", line):
                names = [a.strip("'\"") for a in cmd.split() if not a.startswith("-")]
                wrong += [
                    f"{page.relative_to(REPO)}:{n}: {a}" for a in names if re.fullmatch(r"portshift[\w.-]*(\[[\w,]+\])?", a)
                ]
    assert not wrong, "these pages install portshift by name, which is not on PyPI yet:\n" + "\n".join(wrong)


def test_every_plugin_folder_the_docs_install_exists() -> None:
    named = set()
    for page in install_pages():
        for cmd in re.findall(r"pip install ([^`#\n]*)", page.read_text(encoding="utf-8")):
            named |= {m.group(1) for m in re.finditer(r"(?:^|[\s'\"])(?:\./)?(plugins/[\w-]+)", cmd)}
    assert named, "no page installs a plugin from its folder"
    missing = sorted(p for p in named if not (REPO / p / "pyproject.toml").is_file())
    assert not missing, f"the docs install plugin folders that do not exist: {missing}"
