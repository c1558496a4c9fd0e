"""The manifests of a finished job: every configured writer, the primary (first-named) one last,
so that its manifest also lists the files the other writers stored (BagIt tag files); then the
detached signature when the job has a signing key. ``sha256sum -c`` on the primary manifest
then covers everything under the export root but the manifest and its signature."""

from __future__ import annotations

import heapq
from collections.abc import Iterable, Iterator

from ..api import JobInfo, ManifestEntry, Sink, StoredFile
from ..config import JobConfig
from ..errors import IntegrityError
from ..hashing import HashingStream
from ..manifest import SIGNATURE_SUFFIX
from ..state import FileRecord, State


class ManifestRun:
    """Writes the manifests of one job through the job's sink, recording each stored file."""

    def __init__(self, cfg: JobConfig, state: State, job_id: str, export_root: str, sink: Sink) -> None:
        self.cfg, self.state, self.job_id, self.export_root, self.sink = cfg, state, job_id, export_root, sink
        self.stored: dict[str, StoredFile] = {}
        self._signed: dict[str, bytearray] = {}

    def write(self, info: JobInfo) -> tuple[str, str]:
        """Run the writers; return the primary manifest's key and SHA-256."""
        self.state.remove_manifest_files(self.job_id)  # a manifest attempt that crashed is rewritten
        primary_key = primary_sha = ""
        for n, (_name, cls, options) in reversed(list(enumerate(self.cfg.writers))):
            earlier = list(self.stored.values())
            primary = cls(options).write(info, lambda earlier=earlier: self._entries(earlier), self._store)
            if n == 0:
                primary_key, primary_sha = f"{self.export_root}/{primary}", self.stored[primary].sha256
                if self.cfg.signing_key is not None:
                    from ..signing import sign

                    signature = sign(self.cfg.signing_key, bytes(self._signed[primary]))
                    self._store(primary + SIGNATURE_SUFFIX, iter([signature]))
            self._signed.clear()
        return primary_key, primary_sha

    def _content(self) -> Iterator[ManifestEntry]:
        for row in self.state.files(self.job_id):
            yield ManifestEntry(
                path=row["key"],
                size=row["size"],
                sha256=row["sha256"],
                recording_id=row["recording_id"],
                artifact=row["artifact"],
                content_type=row["content_type"],
                recorded_at=row["recorded_at"],
                verified=row["verified"] or "",
            )

    def _entries(self, earlier: list[StoredFile]) -> Iterator[ManifestEntry]:
        """The job's files and the manifest files stored before this writer, sorted by path."""
        extra = [
            ManifestEntry(path=f.path, size=f.size, sha256=f.sha256, recording_id="", artifact="manifest")
            for f in sorted(earlier, key=lambda f: f.path)
        ]
        return heapq.merge(self._content(), extra, key=lambda e: e.path)

    def _store(self, path: str, chunks: Iterable[bytes]) -> StoredFile:
        stream = HashingStream(chunks)
        if self.cfg.signing_key is not None:
            self._signed[path] = bytearray()
            stream.observe(self._signed[path].extend)
        result = self.sink.put(f"{self.export_root}/{path}", stream, None)
        if not stream.finished or result.size != stream.bytes_read:
            raise IntegrityError(f"{path}: the sink did not store the whole manifest")
        stored = StoredFile(path=path, size=stream.bytes_read, sha256=stream.sha256_hex())
        self.state.add_file(
            self.job_id,
            FileRecord(
                key=path,
                size=stored.size,
                sha256=stored.sha256,
                recording_id="",
                artifact="manifest",
                kind="manifest",
                verified=result.verified,
                provider_checksums=result.checksums,
            ),
        )
        self.stored[path] = stored
        return stored
