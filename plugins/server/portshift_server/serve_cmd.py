"""`portshift serve`: the export service over HTTPS (there is no plain-HTTP listener)."""

from __future__ import annotations

import logging
import os
import secrets as _random
import ssl
from pathlib import Path
from typing import Any

import click
import platformdirs

from portshift.cli import common_options
from portshift.errors import ConfigError
from portshift.hardening import harden_process

from . import retention
from .retention import RetentionSweeper
from .service_store import DatabaseOptions, job_states_for, open_service_db

log = logging.getLogger("portshift.server")


def _no_color_message(record: logging.LogRecord) -> bool:
    record.__dict__.pop("color_message", None)  # uvicorn's terminal-coloured copy of the message
    return True


def server_ssl_context(cert: Path, key: Path) -> ssl.SSLContext:
    """TLS 1.2 minimum, the certificate chain and key given; no client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_CIPHER_SERVER_PREFERENCE | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers("ECDHE+AESGCM:ECDHE+CHACHA20:!aNULL:!MD5:!DSS:!RC4:!3DES")
    try:
        ctx.load_cert_chain(certfile=str(cert), keyfile=str(key))
    except FileNotFoundError:
        raise ConfigError("--cert/--key: file not found") from None
    except (ssl.SSLError, OSError) as e:
        raise ConfigError(f"--cert/--key: not a matching PEM certificate and private key ({type(e).__name__})") from None
    return ctx


def _data_dir(data_dir: Path | None) -> Path:
    data_dir = (data_dir or Path(platformdirs.user_data_dir("portshift-server"))).resolve()
    data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    os.chmod(data_dir, 0o700)
    return data_dir


def load_server_secret(path: Path | None) -> bytes:
    if path is None:
        log.info("no --secret-file: a new rate-limit key was generated for this run (counters restart at each start)")
        return _random.token_bytes(32)
    try:
        data = path.read_bytes().strip()
    except OSError as e:
        raise ConfigError(f"--secret-file {path}: cannot read it ({type(e).__name__})") from None
    if len(data) < 32:
        raise ConfigError(f"--secret-file {path}: needs at least 32 bytes", hint="e.g. head -c 48 /dev/urandom | base64 > FILE")
    return data


def _rate(ctx: click.Context, param: click.Parameter, value: str) -> Any:
    from .ratelimit import RateLimit

    try:
        return RateLimit.parse(value)
    except ValueError:
        raise click.BadParameter("expected N/SECONDS, e.g. 10/3600", ctx=ctx, param=param) from None


@click.group("serve", invoke_without_command=True)
@click.option("--cert", type=click.Path(path_type=Path, dir_okay=False), help="TLS certificate chain (PEM); required")
@click.option("--key", "key_path", type=click.Path(path_type=Path, dir_okay=False), help="TLS private key (PEM); required")
@click.option("--host", default="127.0.0.1", show_default=True, help="address to listen on")
@click.option("--port", default=8443, show_default=True, type=click.IntRange(1, 65535))
@click.option(
    "--data-dir",
    type=click.Path(path_type=Path, file_okay=False),
    help="service DB and job work folders (default: the user data folder, portshift-server)",
)
@click.option(
    "--database",
    "database_url",
    metavar="URL",
    envvar="PORTSHIFT_SERVE_DATABASE",
    help="postgresql:// URL (no password) of the service database, jobs' state included; default: service.db in --data-dir",
)
@click.option(
    "--database-password-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the database role's password (else PORTSHIFT_SERVE_DATABASE_PASSWORD)",
)
@click.option(
    "--database-ca",
    type=click.Path(path_type=Path, dir_okay=False),
    help="CA (PEM) of the database's certificate (else sslrootcert= in the URL, else the system store)",
)
@click.option(
    "--retention-days",
    default=7.0,
    show_default=True,
    type=click.FloatRange(min=0, min_open=True),
    help="days a finished job (its work data and state) is kept before it is deleted",
)
@click.option(
    "--service-config",
    type=click.Path(path_type=Path, dir_okay=False),
    help="TOML: offered sources/sinks, options fixed by the operator (see docs/serve.md)",
)
@click.option(
    "--local-root",
    type=click.Path(path_type=Path, file_okay=False),
    help="offer the local sink, confined to this folder (trials and tests)",
)
@click.option(
    "--secret-file",
    type=click.Path(path_type=Path, dir_okay=False),
    envvar="PORTSHIFT_SERVER_SECRET_FILE",
    help="key (>= 32 bytes) for the HMAC of client addresses; default: a new one per start",
)
@click.option("--max-jobs", default=4, show_default=True, type=click.IntRange(1, 256), help="jobs running at once")
@click.option(
    "--max-jobs-per-client",
    default=1,
    show_default=True,
    type=click.IntRange(1, 256),
    help="jobs one client (/64, /32) runs at once",
)
@click.option(
    "--max-connections", default=1000, show_default=True, type=click.IntRange(16, 1_000_000), help="open connections at once"
)
@click.option(
    "--header-timeout",
    default=10.0,
    show_default=True,
    type=click.FloatRange(1, 300),
    help="seconds for a TLS handshake or a request head",
)
@click.option(
    "--security-contact",
    default="mailto:security@portshift.app",
    show_default=True,
    help="Contact: line of /.well-known/security.txt",
)
@click.option(
    "--signing-key-file",
    type=click.Path(path_type=Path, dir_okay=False),
    help="Ed25519 private key (PEM) every job signs its manifest with (docs/manifest.md)",
)
@click.option("--transfers", default=4, show_default=True, type=click.IntRange(1, 64), help="transfers per job")
@click.option(
    "--rate-jobs",
    default="10/3600",
    show_default=True,
    callback=_rate,
    help="job creations/resumptions per client address: N/SECONDS",
)
@click.option(
    "--rate-signups", default="5/3600", show_default=True, callback=_rate, help="sign-ups per client address: N/SECONDS"
)
@click.option(
    "--cancel-grace",
    default=15.0,
    show_default=True,
    type=float,
    help="seconds a cancelled worker has to stop cleanly before it is killed",
)
@click.option("--max-runtime", default=24 * 3600.0, show_default=True, type=float, help="seconds a job may run")
@click.option(
    "--launcher",
    "launcher_name",
    type=click.Choice(["sandbox", "unisolated"]),
    default="sandbox",
    show_default=True,
    help="sandbox: each job in bubblewrap under its own uid (needs root); unisolated: development only",
)
@click.option(
    "--worker-python",
    type=click.Path(path_type=Path, dir_okay=False),
    help="the Python sandboxed workers run (default: this one); every user must be able to read it",
)
@common_options
@click.pass_context
def command(
    ctx: click.Context,
    cert: Path | None,
    key_path: Path | None,
    host: str,
    port: int,
    data_dir: Path | None,
    database_url: str | None,
    database_password_file: Path | None,
    database_ca: Path | None,
    retention_days: float,
    service_config: Path | None,
    local_root: Path | None,
    secret_file: Path | None,
    max_jobs: int,
    max_jobs_per_client: int,
    max_connections: int,
    header_timeout: float,
    security_contact: str,
    signing_key_file: Path | None,
    transfers: int,
    rate_jobs: Any,
    rate_signups: Any,
    cancel_grace: float,
    max_runtime: float,
    launcher_name: str,
    worker_python: Path | None,
) -> None:
    """Run the export service: the JSON API and the web page, over HTTPS only.

    Each job runs in a fresh `portshift run` worker, sandboxed under its own uid, that gets its
    credentials once it has hardened itself. See docs/serve.md. `portshift serve signups ...`
    manages the early-access list."""
    database = DatabaseOptions(database_url, database_password_file, database_ca)
    if ctx.invoked_subcommand is not None:
        ctx.obj = {"data_dir": data_dir, "database": database}
        return
    if cert is None or key_path is None:
        raise ConfigError("serve needs --cert and --key (PEM)", hint="see docs/serve.md for a throw-away certificate")
    import uvicorn

    from .app import create_app
    from .connections import ConnectionLimits, GuardedServer, protocol_class
    from .jobs import JobManager
    from .offers import load_catalogue

    harden_process()
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).addFilter(_no_color_message)
    os.umask(0o077)
    tls = server_ssl_context(cert, key_path)
    data_dir = _data_dir(data_dir)
    if local_root is not None:
        local_root = local_root.resolve()
        local_root.mkdir(parents=True, exist_ok=True, mode=0o700)
    catalogue = load_catalogue(service_config, local_root, transfers)
    public_key = None
    if signing_key_file is not None:
        from portshift.signing import load_signing_key, public_key_pem

        key = load_signing_key(signing_key_file.resolve())  # refuses a missing, unreadable or non-Ed25519 key now
        assert key is not None
        public_key = public_key_pem(key)
        catalogue.signing_key = key  # in memory; workers get it over their credential channel
    secret = load_server_secret(secret_file)
    hidden = [data_dir, cert, key_path, secret_file, signing_key_file, service_config, local_root]
    launcher = _launcher(launcher_name, worker_python, [p.resolve() for p in hidden if p is not None])
    db = open_service_db(data_dir, database)
    manager = JobManager(
        db,
        catalogue,
        launcher,
        data_dir / "jobs",
        max_jobs=max_jobs,
        max_jobs_per_client=max_jobs_per_client,
        cancel_grace=cancel_grace,
        max_runtime=max_runtime,
        states=job_states_for(db),
    )
    sweeper = RetentionSweeper(
        lambda: retention.sweep(db, manager.states, data_dir / "jobs", retention_days, running=manager.running_ids),
        every=max(1.0, min(3600.0, retention_days * 86400 / 4)),  # at least four rounds per period
    ).start()
    if hasattr(launcher, "reachable"):
        launcher.reachable([p for p in (data_dir, data_dir / "jobs", local_root) if p is not None])
    app = create_app(
        db, manager, catalogue, secret, rate_jobs, rate_signups, security_contact=security_contact, signing_public_key=public_key
    )
    limits = ConnectionLimits(max_connections, handshake_timeout=header_timeout, header_timeout=header_timeout)
    limits.fit_to_file_limit()
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        log_config=None,  # portshift's scrubbing handler is already on the root logger
        access_log=False,  # our own request line: no query string, job ids shortened
        proxy_headers=False,  # the client address is the TLS peer; X-Forwarded-For is not trusted
        server_header=False,
        timeout_graceful_shutdown=5,
        timeout_keep_alive=int(limits.keep_alive),
        h11_max_incomplete_event_size=16 * 1024,  # a request head over 16 KiB is refused
        http=protocol_class(limits),
        ssl_context_factory=lambda config, default: tls,
    )

    class Server(GuardedServer):
        def handle_exit(self, sig: int, frame: Any) -> None:
            manager.begin_shutdown()  # workers start stopping now, not after open connections close
            super().handle_exit(sig, frame)

    server = Server(config, limits)
    log.info(
        "serving https://%s:%d (TLS 1.2+), data in %s, service database %s, at most %d connections",
        *(host, port, data_dir, db.location, limits.max_connections),
    )
    try:
        server.run()
    finally:
        sweeper.stop()
        db.close()


def _launcher(name: str, worker_python: Path | None, hidden: list[Path]) -> Any:
    """The sandbox launcher, refused in one line where the host cannot give it; or, asked for by
    name, the unisolated one (development only)."""
    if name == "unisolated":
        from .launcher import UnisolatedLauncher

        log.warning("--launcher unisolated: workers run as this user and see its files; for development only")
        return UnisolatedLauncher()
    from .sandbox import SandboxLauncher, check_sandbox

    launcher = SandboxLauncher(check_sandbox(), hidden=hidden, python=str(worker_python) if worker_python else None)
    launcher.probe()
    return launcher


@command.command("status")
@click.pass_context
def status_cmd(ctx: click.Context) -> None:
    """How many jobs are in each status (operators only: /api/health does not tell)."""
    db = _open_db(ctx)
    try:
        counts = db.job_counts()
    finally:
        db.close()
    for name in ("starting", "running", "cancelling", "complete", "partial", "failed", "cancelled"):
        click.echo(f"{name}: {counts.get(name, 0)}")


@command.group("signups")
def signups_group() -> None:
    """The early-access sign-ups (the only personal data the service keeps)."""


def _open_db(ctx: click.Context) -> Any:
    obj = ctx.find_object(dict) or {}
    data_dir = (obj.get("data_dir") or Path(platformdirs.user_data_dir("portshift-server"))).resolve()
    return open_service_db(data_dir, obj.get("database") or DatabaseOptions(), must_exist=True)


@signups_group.command("export")
@click.option("--output", "-o", type=click.Path(path_type=Path, dir_okay=False), help="write here (mode 0600) instead of stdout")
@click.pass_context
def signups_export(ctx: click.Context, output: Path | None) -> None:
    """Write the sign-ups as CSV; cells that a spreadsheet would run as formulas are quoted."""
    from .signups import export_csv

    db = _open_db(ctx)
    try:
        text = export_csv(db)
    finally:
        db.close()
    if output is None:
        click.echo(text, nl=False)
        return
    fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8", newline="") as f:
        f.write(text)


@signups_group.command("delete")
@click.argument("email")
@click.pass_context
def signups_delete(ctx: click.Context, email: str) -> None:
    """Erase one person's sign-up (a right-to-erasure request), zeroed on disk."""
    db = _open_db(ctx)
    try:
        deleted = db.delete_signup(email)
    finally:
        db.close()
    if not deleted:
        raise ConfigError("no sign-up with that e-mail address", hint="addresses are matched case-insensitively")
    click.echo("deleted 1 sign-up")
