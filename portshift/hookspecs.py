"""The whole plugin contract of portshift.

Implement a hook with :data:`portshift.hookimpl`; pluggy lets an implementation accept fewer
arguments than the spec. Hooks are always called with keyword arguments. Every hook here is
documented in ``docs/plugins.md`` (a test keeps the two in step).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    import click

    from .api import JobInfo
    from .events import FileExported

hookspec = pluggy.HookspecMarker("portshift")


@hookspec
def register_sources(register: Any) -> None:
    """Contribute sources: call ``register(name, SourceClass)`` for each.

    Instead of the class, a plugin may pass a reference ``"package.module:ClassName"``: the
    module is imported only when a job (or ``portshift plugins``) uses that name. This keeps a
    heavy SDK out of every run that does not need it. The same holds for every ``register_*``.

    :param register: ``register(name: str, cls: type[portshift.api.Source] | str)``
    """


@hookspec
def register_sinks(register: Any) -> None:
    """Contribute sinks: call ``register(name, SinkClass)`` for each.

    :param register: ``register(name: str, cls: type[portshift.api.Sink] | str)``
    """


@hookspec
def register_manifest_writers(register: Any) -> None:
    """Contribute manifest writers: call ``register(name, WriterClass)`` for each.

    :param register: ``register(name: str, cls: type[portshift.api.ManifestWriter] | str)``
    """


@hookspec
def register_readers(register: Any) -> None:
    """Contribute readers, used by ``portshift verify --store`` to check an export in place:
    call ``register(name, ReaderClass)`` with the same name as the matching sink.

    :param register: ``register(name: str, cls: type[portshift.api.Reader] | str)``
    """


@hookspec
def register_key_providers(register: Any) -> None:
    """Contribute key providers for sealing job metadata with the customer's key (docs/byok.md):
    call ``register(name, ProviderClass)``; a job file names a key as ``"<name>:<reference>"``.

    :param register: ``register(name: str, cls: type[portshift.KeyProvider] | str)``
    """


@hookspec
def register_commands(cli: click.Group) -> None:
    """Add commands or groups to the ``portshift`` command line.

    :param cli: the top-level click group
    """


@hookspec
def job_started(job: JobInfo, resumed: bool) -> None:
    """A job started (or resumed). Carries no secret and no content.

    :param job: the job's id, window, source and sink names and locations
    :param resumed: True when an unfinished job is being continued
    """


@hookspec
def file_exported(job: JobInfo, file: FileExported) -> None:
    """One file was stored, confirmed and checked. Called from worker threads.

    :param job: the running job
    :param file: key, size, SHA-256, recording id and artifact name of the file
    """


@hookspec
def job_finished(job: JobInfo, manifest_sha256: str | None) -> None:
    """A job ended (``job.status`` says how: complete, partial, failed, interrupted).

    :param job: the job, with its final counts
    :param manifest_sha256: the primary manifest's SHA-256 when one was written
    """
