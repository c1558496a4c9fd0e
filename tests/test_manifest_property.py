"""Property: whatever ids, titles, artifact names, extensions and contents a source sends, a run
through the real pipeline into the local sink leaves an export root that GNU ``sha256sum -c
--strict`` accepts, whose manifest lists exactly the files on disk plus the JSON index, and
whose index maps every file back to its recording. Titles (call metadata) stay inside the
metadata artifact: never in the manifest, the index or the state DB."""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from portshift.api import Artifact, Opened, Recording, Source, Window
from portshift.config import load_job
from portshift.manifest import INDEX_NAME, MANIFEST_NAME
from portshift.options import PluginOptions
from portshift.pipeline import Runner, RunRequest
from portshift.state import State
from portshift.verify import verify_dir

from .support import plugin

SHA256SUM = shutil.which("sha256sum")


@dataclass
class GenArtifact:
    name: str
    ext: str
    content: bytes
    cuts: list[int]  #: how the content is chunked on the wire
    declare: bool  #: the source declares size and SHA-256 in advance


@dataclass
class GenRecording:
    id: str
    started_at: datetime | None
    title: str
    artifacts: list[GenArtifact]


class PropOptions(PluginOptions):
    section = "source"


class PropSource(Source):
    """Sends whatever the test generated."""

    Options = PropOptions
    recordings_to_send: ClassVar[list[GenRecording]] = []

    def location(self) -> str:
        return "prop:"

    def recordings(self, window: Window) -> Iterator[Recording]:
        for r in self.recordings_to_send:
            yield Recording(id=r.id, started_at=r.started_at)

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        gen = next(r for r in self.recordings_to_send if r.id == recording.id)
        for a in gen.artifacts:

            def open_(a: GenArtifact = a) -> Opened:
                return Opened(chunks=_chunks(a.content, a.cuts), size=len(a.content) if a.declare else None)

            yield Artifact(
                name=a.name,
                open=open_,
                extension=a.ext,
                size=len(a.content) if a.declare else None,
                sha256=hashlib.sha256(a.content).hexdigest() if a.declare else None,
            )
        meta = {"id": gen.id, "title": gen.title, "participants": [gen.title + "@example.com"]}
        yield Artifact.from_bytes("metadata", json.dumps(meta).encode(), "json", "application/json")


def _chunks(data: bytes, cuts: list[int]) -> Iterator[bytes]:
    pos = 0
    for n in cuts:
        yield data[pos : pos + n]
        pos += n
    yield data[pos:]


@pytest.fixture(scope="module")
def prop_source() -> Iterator[type[PropSource]]:
    with plugin("test-manifest-property-source", sources={"prop": PropSource}):
        yield PropSource


# unicode scalar values (what UTF-8/JSON text can carry); lone surrogates are the subject of
# their own test below
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=60)
nasty = st.sampled_from(["..", ".", "/", "a/../../b", "\\x", "x\r\ny", "nul\x00", " ", "-n", "*", "#hash", "日本", "ok"])
label = st.one_of(nasty, text)
when = st.one_of(
    st.none(),
    st.datetimes(min_value=datetime(2015, 1, 2), max_value=datetime(2025, 12, 31), timezones=st.just(timezone.utc)),
    st.datetimes(min_value=datetime(2015, 1, 2), max_value=datetime(2025, 12, 31)).map(
        lambda d: d.replace(tzinfo=timezone(timedelta(hours=-7)))
    ),
)


@st.composite
def artifacts(draw: st.DrawFn) -> list[GenArtifact]:
    names = draw(st.lists(label, min_size=1, max_size=3, unique=True).filter(lambda ns: "metadata" not in ns))
    out = []
    for name in names:
        content = draw(st.binary(max_size=3000))
        cuts = draw(st.lists(st.integers(0, 800), max_size=6))
        out.append(GenArtifact(name=name, ext=draw(label), content=content, cuts=cuts, declare=draw(st.booleans())))
    return out


@st.composite
def tenants(draw: st.DrawFn) -> list[GenRecording]:
    ids = draw(st.lists(label, min_size=1, max_size=5, unique=True))
    tag = "TITLE" + secrets.token_hex(6)
    return [GenRecording(id=i, started_at=draw(when), title=f"{tag} {draw(text)}", artifacts=draw(artifacts())) for i in ids]


def _run(recordings: list[GenRecording], work: Path) -> tuple[Any, Path, Path]:
    PropSource.recordings_to_send = recordings
    doc = {
        "job": {"transfers": 3, "retries": 0},
        "source": {"type": "prop"},
        "sink": {"type": "local", "path": str(work / "out")},
    }
    cfg = load_job(None, doc=doc)
    with State.open(work / "state.db") as state:
        result = Runner(cfg, state, retry_base=0.0).run(RunRequest())
    return result, work / "out" / result.export_root, work / "state.db"


def _manifest_paths(root: Path) -> list[str]:
    return [ln.split("  ", 1)[1] for ln in (root / MANIFEST_NAME).read_text().splitlines() if ln and not ln.startswith("#")]


@pytest.mark.skipif(SHA256SUM is None, reason="GNU coreutils sha256sum is not installed")
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(recordings=tenants())
def test_any_tenant_gives_a_manifest_gnu_sha256sum_accepts(prop_source: type[PropSource], recordings: list[GenRecording]) -> None:
    with tempfile.TemporaryDirectory(prefix="ps-prop-") as tmp:
        work = Path(tmp)
        result, root, state_db = _run(recordings, work)
        assert result.status == "complete", (result.message, result.failed)

        # GNU sha256sum, strict: every line well-formed, every file present and matching
        check = subprocess.run([SHA256SUM, "-c", "--strict", MANIFEST_NAME], cwd=root, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr

        # exactly the files on disk (but the manifest itself), plus the JSON index
        on_disk = {p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file()}
        listed = _manifest_paths(root)
        assert len(listed) == len(set(listed))
        assert set(listed) == on_disk - {MANIFEST_NAME}
        assert INDEX_NAME in listed

        # the index maps every file back to what the source sent, byte for byte
        index = json.loads((root / INDEX_NAME).read_text())
        files = index["files"]
        assert {f["path"] for f in files} == set(listed) - {INDEX_NAME}
        expect = {(r.id, a.name): a.content for r in recordings for a in r.artifacts}
        got: dict[tuple[str, str], bytes] = {}
        for f in files:
            data = (root / f["path"]).read_bytes()
            assert hashlib.sha256(data).hexdigest() == f["sha256"] and len(data) == f["size"]
            if f["artifact"] != "metadata":
                got[(f["recording_id"], f["artifact"])] = data
        assert got == expect
        assert sorted(f["recording_id"] for f in files if f["artifact"] == "metadata") == sorted(r.id for r in recordings)
        n_files = len(files)
        assert index["job"]["file_count"] == n_files == result.files
        assert f"# files: {n_files}" in (root / MANIFEST_NAME).read_text()
        assert verify_dir(root).passed

        # call metadata stays in the metadata artifact
        tag = recordings[0].title.split(" ", 1)[0].encode()
        assert tag not in (root / MANIFEST_NAME).read_bytes()
        assert tag not in (root / INDEX_NAME).read_bytes()
        for suffix in ("", "-wal", "-shm"):
            p = Path(f"{state_db}{suffix}")
            if p.exists():
                assert tag not in p.read_bytes()


class _Fixed(Source):
    Options = PropOptions
    ids: ClassVar[list[str]] = []

    def recordings(self, window: Window) -> Iterator[Recording]:
        for i in self.ids:
            yield Recording(id=i, started_at=datetime(2024, 1, 1, tzinfo=timezone.utc))

    def artifacts(self, recording: Recording) -> Iterator[Artifact]:
        yield Artifact.from_bytes("media", f"content of {recording.id!r}".encode("utf-8", "backslashreplace"), "bin")


@pytest.fixture
def fixed_source() -> Iterator[type[_Fixed]]:
    with plugin("test-manifest-property-fixed", sources={"fixed": _Fixed}):
        yield _Fixed


def _run_fixed(ids: list[str], work: Path) -> tuple[Any, Path]:
    _Fixed.ids = ids
    doc = {"job": {"retries": 0}, "source": {"type": "fixed"}, "sink": {"type": "local", "path": str(work / "out")}}
    with State.open(work / "s.db") as state:
        result = Runner(load_job(None, doc=doc), state, retry_base=0.0).run(RunRequest())
        done = state.done_recordings(result.job_id) if result.job_id else set()
    return result, done


def test_an_id_with_a_lone_surrogate_does_not_stop_the_export(fixed_source: type[_Fixed], tmp_path: Path) -> None:
    """json.loads('"\\ud800"') gives such an id; SQLite cannot store it as UTF-8. One odd id may
    fail its recording, but it must not stop the job, and the other recordings get done."""
    result, done = _run_fixed(["ok1", "bad\ud800id", "ok2"], tmp_path)
    assert result.status in ("complete", "partial"), result.message
    assert {"ok1", "ok2"} <= done


def test_two_ids_that_sanitise_alike_both_survive(fixed_source: type[_Fixed], tmp_path: Path) -> None:
    forged = "a_b-" + hashlib.sha256(b"a/b").hexdigest()[:8]
    result, done = _run_fixed(["a/b", forged], tmp_path)
    assert result.status == "complete"
    root = tmp_path / "out" / result.export_root
    index = json.loads((root / INDEX_NAME).read_text())
    media = [f for f in index["files"] if f["artifact"] == "media"]
    assert sorted(f["recording_id"] for f in media) == sorted(["a/b", forged])
    assert len({f["path"] for f in media}) == 2
