"""The MLflow tracking server with basic authentication: its plan, its admin user, and the process itself.

`mlgraph mlflow-server` runs `mlflow server --app-name basic-auth` over:

- a tracking store on PostgreSQL when configured ($MLGRAPH_MLFLOW_BACKEND_URI, else the `mlflow`
  database of $MLGRAPH_POSTGRES_URL's server), SQLite at $SHARED_DRIVE/state/mlflow.db otherwise;
- the auth store (users and password hashes) at $SHARED_DRIVE/state/mlflow-auth.db, apart from it;
- artifacts served from $SHARED_DRIVE/mlflow-artifacts; 127.0.0.1 unless a host is given.

The admin is $MLFLOW_TRACKING_USERNAME / $MLFLOW_TRACKING_PASSWORD, the same variables every MLflow
client reads. The password reaches MLflow only through its own MLFLOW_AUTH_ADMIN_PASSWORD variable in
the server's environment, and only while the admin user does not exist yet; the auth app's ini file
(which it insists on for the auth store's URI) holds no secret and lives in a private temporary
directory outside the drive, removed when the server exits. The tracking store's URI (which may hold
a database password) goes through MLFLOW_BACKEND_STORE_URI, never the command line (`ps` shows that).

Plain Python, no Dagster; mlflow is imported only to check the stored admin password.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from mlgraph.core.drive import POSTGRES_URL_ENV, DriveLayout
from mlgraph.core.tracking import redact_url

USERNAME_ENV = "MLFLOW_TRACKING_USERNAME"
PASSWORD_ENV = "MLFLOW_TRACKING_PASSWORD"
BACKEND_URI_ENV = "MLGRAPH_MLFLOW_BACKEND_URI"
MLFLOW_DATABASE = "mlflow"  # scripts/postgres-local creates it next to Dagster's
SECRET_KEY_ENV = "MLFLOW_FLASK_SERVER_SECRET_KEY"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 5000
# Authenticated users may read every experiment; writing needs a grant (or the admin). MLflow's default.
DEFAULT_PERMISSION = "READ"
PERMISSIONS = ("READ", "EDIT", "MANAGE", "NO_PERMISSIONS")
# What the server process must not inherit: the clients' credentials (it gets the admin's its own way).
_CLIENT_ONLY_ENV = (USERNAME_ENV, PASSWORD_ENV, "MLFLOW_TRACKING_URI", "MLFLOW_TRACKING_TOKEN")


class MlflowServerError(RuntimeError):
    """The server cannot start as configured; the message names the setting and the fix."""


@dataclass(frozen=True)
class ServerPlan:
    """Everything `mlflow server` is started with. `backend_uri` may hold a password: never print it."""

    host: str
    port: int
    workers: int
    backend_uri: str
    backend_source: str
    auth_db: Path
    artifacts: Path
    default_permission: str = DEFAULT_PERMISSION
    allowed_hosts: str | None = None  # MLflow's Host-header allow-list; localhost only when unset

    @property
    def url(self) -> str:
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::") else self.host
        return f"http://{host}:{self.port}"

    def describe(self) -> list[str]:
        """What an operator needs to know, with every password masked."""
        return [
            f"MLflow tracking server on {self.url} (bind {self.host}:{self.port}, {self.workers} worker(s))",
            f"tracking store: {redact_url(self.backend_uri)} ({self.backend_source})",
            f"auth store: {self.auth_db} (users and password hashes)",
            f"artifacts: {self.artifacts}",
        ]


def postgres_mlflow_uri(postgres_url: str, database: str = MLFLOW_DATABASE) -> str:
    """The same server, role and password as `postgres_url`, database `database`."""
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(postgres_url)
    except (ArgumentError, ValueError):  # ValueError: a port that is not a number (never quoted: it may be a secret)
        raise MlflowServerError(
            f"{POSTGRES_URL_ENV} is not a database URL. Fix: set it like "
            "postgresql+psycopg2://mlgraph:<password>@127.0.0.1:5433/mlgraph, or set "
            f"{BACKEND_URI_ENV} for MLflow's store directly"
        ) from None
    return url.set(database=database).render_as_string(hide_password=False)


def backend_store(environ: Mapping[str, str], layout: DriveLayout) -> tuple[str, str]:
    """(tracking store URI, where it came from): $MLGRAPH_MLFLOW_BACKEND_URI, else Postgres, else SQLite."""
    if environ.get(BACKEND_URI_ENV):
        return environ[BACKEND_URI_ENV], f"${BACKEND_URI_ENV}"
    if environ.get(POSTGRES_URL_ENV):
        return postgres_mlflow_uri(environ[POSTGRES_URL_ENV]), f"database {MLFLOW_DATABASE!r} of ${POSTGRES_URL_ENV}"
    db = layout.mlflow_db()
    return f"sqlite:///{db}", "SQLite on the shared drive"


def plan(
    host: str = DEFAULT_HOST,
    port: int = DEFAULT_PORT,
    workers: int = 1,
    environ: Mapping[str, str] | None = None,
    drive_root: str | os.PathLike[str] | None = None,
    default_permission: str = DEFAULT_PERMISSION,
    allowed_hosts: str | None = None,
) -> ServerPlan:
    """The server this environment describes; raises MlflowServerError naming what to fix."""
    env = os.environ if environ is None else environ
    if not 0 < port < 65536:
        raise MlflowServerError(f"--port {port} is not a TCP port. Fix: use 1-65535 (default {DEFAULT_PORT})")
    if workers < 1:
        raise MlflowServerError(f"--workers {workers} must be at least 1")
    if default_permission not in PERMISSIONS:
        raise MlflowServerError(f"default permission {default_permission!r} is not one of {', '.join(PERMISSIONS)}")
    if not env.get(USERNAME_ENV) or not env.get(PASSWORD_ENV):
        raise MlflowServerError(
            f"the MLflow server needs an admin: set {USERNAME_ENV} and {PASSWORD_ENV} (the credentials the "
            "clients use too) before starting it; the password is never written to a file"
        )
    layout = DriveLayout.at(drive_root)
    uri, source = backend_store(env, layout)
    return ServerPlan(
        host=host,
        port=port,
        workers=workers,
        backend_uri=uri,
        backend_source=source,
        auth_db=layout.mlflow_auth_db(),
        artifacts=layout.mlflow_artifacts_dir(),
        default_permission=default_permission,
        allowed_hosts=allowed_hosts or None,
    )


def admin_status(auth_db: Path, username: str, password: str) -> str:
    """ "new" (no such admin yet: the server creates it), "match", or "differs" (the stored password stays)."""
    if not auth_db.exists() or auth_db.stat().st_size == 0:
        return "new"
    import warnings

    with warnings.catch_warnings():  # mlflow.server's own import-time deprecation noise
        warnings.simplefilter("ignore", DeprecationWarning)
        from mlflow.server.auth.sqlalchemy_store import SqlAlchemyStore

    store = SqlAlchemyStore()
    store.init_db(f"sqlite:///{auth_db}")
    try:
        if not store.has_user(username, use_primary=True):
            return "new"
        return "match" if store.authenticate_user(username, password, use_primary=True) else "differs"
    finally:
        store.engine.dispose()


def mismatch_warning(username: str, auth_db: Path) -> str:
    return (
        f"WARNING: {PASSWORD_ENV} differs from the stored password of MLflow admin user {username!r} "
        f"({auth_db}). The stored password stays in force; mlgraph never resets it. Clients using this "
        f"{PASSWORD_ENV} will get 401 Unauthorized. Fix: set {PASSWORD_ENV} to the stored password, or change "
        "it on the running server (MLflow UI > account, or `mlflow.server.get_app_client('basic-auth', "
        "tracking_uri).update_user_password(...)`)"
    )


def auth_ini(plan: ServerPlan) -> str:
    """The auth app's configuration: where its users live. No admin name or password: the environment has them."""
    auth_db = str(plan.auth_db).replace("%", "%%")  # configparser interpolates '%'
    return "\n".join(
        [
            "[mlflow]",
            f"default_permission = {plan.default_permission}",
            f"database_uri = sqlite:///{auth_db}",
            "authorization_function = mlflow.server.auth:authenticate_request_basic_auth",
            "",
        ]
    )


def command(plan: ServerPlan, python: str | None = None) -> list[str]:
    """The `mlflow server` command line: nothing secret on it (the store URI is in the environment)."""
    allowed = ["--allowed-hosts", plan.allowed_hosts] if plan.allowed_hosts else []
    return [
        python or sys.executable,
        "-m",
        "mlflow",
        "server",
        "--app-name",
        "basic-auth",
        "--host",
        plan.host,
        "--port",
        str(plan.port),
        "--workers",
        str(plan.workers),
        "--serve-artifacts",
        "--artifacts-destination",
        str(plan.artifacts),
        *allowed,
    ]


def server_env(
    plan: ServerPlan, ini_path: Path, environ: Mapping[str, str], *, bootstrap_password: bool
) -> dict[str, str]:
    """The server's environment: the caller's, without the clients' credentials, plus MLflow's own settings."""
    env = {k: v for k, v in environ.items() if k not in _CLIENT_ONLY_ENV}
    env.update(
        {
            "MLFLOW_AUTH_CONFIG_PATH": str(ini_path),
            "MLFLOW_AUTH_ADMIN_USERNAME": environ[USERNAME_ENV],
            "MLFLOW_BACKEND_STORE_URI": plan.backend_uri,
        }
    )
    env.pop("MLFLOW_AUTH_ADMIN_PASSWORD", None)
    # The UI's CSRF key: the operator's if set (several servers must share one), else fresh per start
    # (an open UI page then needs a reload after a restart); never written anywhere.
    env.setdefault(SECRET_KEY_ENV, secrets.token_urlsafe(32))
    # MLflow's GenAI job runners (7 huey consumer processes) serve nothing mlgraph uses.
    env.setdefault("MLFLOW_SERVER_ENABLE_JOB_EXECUTION", "false")
    if bootstrap_password:  # only needed to create the admin; afterwards MLflow ignores it anyway
        env["MLFLOW_AUTH_ADMIN_PASSWORD"] = environ[PASSWORD_ENV]
    return env


def _private_file(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        handle.write(text)


def serve(
    plan: ServerPlan,
    environ: Mapping[str, str] | None = None,
    echo: Callable[[str], None] = print,
    python: str | None = None,
) -> int:
    """Run the server in the foreground until it exits; SIGTERM/SIGINT are passed on; returns its exit code."""
    env_in = dict(os.environ if environ is None else environ)
    username, password = env_in[USERNAME_ENV], env_in[PASSWORD_ENV]
    plan.artifacts.mkdir(parents=True, exist_ok=True)
    plan.auth_db.parent.mkdir(parents=True, exist_ok=True)
    if not plan.auth_db.exists():
        # Created empty and private before MLflow fills it: it holds the users' password hashes.
        _private_file(plan.auth_db, "")
    status = admin_status(plan.auth_db, username, password)
    if status == "differs":
        echo(mismatch_warning(username, plan.auth_db))
    elif status == "new":
        echo(f"creating MLflow admin user {username!r} from {USERNAME_ENV}/{PASSWORD_ENV}")
    for line in plan.describe():
        echo(line)
    if plan.host not in ("127.0.0.1", "localhost", "::1"):
        echo(f"WARNING: bound to {plan.host}: basic auth sends passwords in clear text; put a TLS proxy in front")
        if not plan.allowed_hosts:
            echo("note: MLflow answers only requests addressed to localhost until --allowed-hosts names this server")
    ensure_port_free(plan.host, plan.port)
    private = Path(tempfile.mkdtemp(prefix="mlgraph-mlflow-auth-"))  # 0700, outside the drive
    try:
        ini = private / "basic_auth.ini"
        _private_file(ini, auth_ini(plan))
        env = server_env(plan, ini, env_in, bootstrap_password=status == "new")
        return run_forwarding_signals(command(plan, python), env)
    finally:
        shutil.rmtree(private, ignore_errors=True)


def ensure_port_free(host: str, port: int) -> None:
    """Fail clearly now: `mlflow server` reports a taken port only in its log, and then exits 0."""
    import errno
    import socket

    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as uvicorn: TIME_WAIT is no conflict
        try:
            sock.bind((host, port))
        except OSError as exc:
            reason = "is in use (another server?)" if exc.errno == errno.EADDRINUSE else f"cannot be bound: {exc}"
            raise MlflowServerError(f"{host}:{port} {reason}. Fix: stop that server or pick another --port") from None


def run_forwarding_signals(argv: list[str], env: Mapping[str, str]) -> int:
    """Run `argv`, passing SIGTERM and SIGINT on to it; its exit code (128 + signal if it was killed)."""
    proc = subprocess.Popen(argv, env=dict(env))

    def forward(signum: int, _frame: object) -> None:
        if proc.poll() is None:
            proc.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        code = proc.wait()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
    return 128 - code if code < 0 else code
