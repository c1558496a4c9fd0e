"""Which service database ``portshift serve`` uses: ``--database postgresql://...`` (PostgreSQL over
verified TLS, the jobs' worker state in it too), else ``service.db`` in the data folder (SQLite, a
one-machine trial, each job's state a file in its work folder)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from portshift.errors import ConfigError
from portshift.secrets import Secret
from portshift.state import is_postgres_url

PASSWORD_ENV = "PORTSHIFT_SERVE_DATABASE_PASSWORD"  # noqa: S105 - a variable name


@dataclass
class DatabaseOptions:
    url: str | None = None
    password_file: Path | None = None
    ca_bundle: Path | None = None


def database_password(options: DatabaseOptions) -> Secret | None:
    """From ``--database-password-file``, else ``PORTSHIFT_SERVE_DATABASE_PASSWORD``, else none."""
    if options.password_file is not None:
        try:
            text = options.password_file.read_text(encoding="utf-8").strip()
        except OSError as e:
            raise ConfigError(f"--database-password-file {options.password_file}: cannot read it ({type(e).__name__})") from None
        if not text:
            raise ConfigError(f"--database-password-file {options.password_file}: the file is empty")
        return Secret(text, "password")
    value = os.environ.get(PASSWORD_ENV, "").strip()
    return Secret(value, "password") if value else None


def open_service_db(data_dir: Path, options: DatabaseOptions, *, must_exist: bool = False) -> Any:
    """The service database: a :class:`~.service_pg.PgServiceDB` or a :class:`~.db.ServiceDB`."""
    if options.url:
        if not is_postgres_url(options.url):
            raise ConfigError(
                "--database must be a postgresql:// URL", hint="without it, the service keeps service.db in --data-dir"
            )
        from .service_pg import PgServiceDB, open_service_state

        return PgServiceDB(open_service_state(options.url, database_password(options), options.ca_bundle))
    from .db import ServiceDB

    if must_exist and not (data_dir / "service.db").exists():
        raise ConfigError(
            f"no service database in {data_dir}",
            hint="pass the --data-dir (or --database) the service runs with: portshift serve --data-dir DIR signups ...",
        )
    return ServiceDB(data_dir / "service.db")


def job_states_for(db: Any) -> Any:
    """Where the jobs' workers keep their state: the service's PostgreSQL, else a file per job."""
    from .job_state import FileJobStates

    if getattr(db, "path", None) is None:
        from .job_roles import PgJobStates

        return PgJobStates(db)
    return FileJobStates()
