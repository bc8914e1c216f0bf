"""A shared MLflow tracking server for a team: PostgreSQL backend store, served artifact store.

`anomaly-spotter server start --dir DIR` sets up and starts, on this machine:

- a PostgreSQL cluster in DIR/postgres (`initdb`, then `pg_ctl start`; Debian's `postgresql` package has
  the binaries, found on PATH or in /usr/lib/postgresql/<version>/bin), listening on 127.0.0.1 only,
  with password authentication: a database `mlflow` owned by the role `mlflow`, whose random password
  is in DIR/postgres.password (readable by its owner only);
- `mlflow server --backend-store-uri postgresql+psycopg://mlflow@127.0.0.1:<pg port>/mlflow
  --serve-artifacts --artifacts-destination DIR/artifacts` (or the `--artifacts-destination` given, e.g. s3://bucket/path),
  in the background, its log in DIR/mlflow-server.log. The password reaches it in its environment
  (PGPASSWORD), never on a command line.

Everyone then sets MLFLOW_TRACKING_URI=http://<host>:<port>. Runs and model versions live in PostgreSQL,
artifacts under the artifacts destination, and the store records `mlflow-artifacts:/...` locations (the
server's proxy), never a path of someone's clone. What was started, with its ports, is in DIR/server.json;
`server stop --dir DIR` stops both, `server start` again restarts them on the same data.

PostgreSQL refuses to run as root: started by root, the cluster runs as the user `postgres` (which the
Debian package creates), so DIR must be a folder that user can enter (not under /root).

Only the standard library is imported here. The server needs the
PostgreSQL driver psycopg (version 3, `pip install -e '.[team]'`), named in the URI
(`postgresql+psycopg://`) whatever SQLAlchemy's default.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from anomaly_spotter.core.errors import AnomalySpotterError

STATE_FILE = "server.json"
PG_DATA = "postgres"
PG_LOG = "postgres.log"
PG_PASSWORD_FILE = "postgres.password"
# The cluster's superuser, for setting up the role and database only; mlflow server never uses it.
ADMIN_USER = "admin"
ADMIN_PASSWORD_FILE = "postgres-admin.password"
MLFLOW_LOG = "mlflow-server.log"
ARTIFACTS = "artifacts"
DB_NAME = "mlflow"
DB_USER = "mlflow"
PG_SYSTEM_USER = "postgres"  # PostgreSQL will not run as root; Debian's package creates this user
PG_BIN_GLOB = "/usr/lib/postgresql/*/bin"  # Debian / Ubuntu
PG_TOOLS = ("initdb", "pg_ctl", "postgres", "createdb", "psql")
DEFAULT_PORT = 5000
LOOPBACK_HOSTS = ("127.0.0.1", "localhost", "::1")
START_TIMEOUT_S = 180
STOP_TIMEOUT_S = 30
POLL_S = 0.5
LOG_TAIL_LINES = 20


class TeamServerError(AnomalySpotterError):
    """The shared tracking server cannot be set up, started or stopped."""


@dataclass
class ServerState:
    """What `start` set up and started (DIR/server.json)."""

    host: str
    port: int
    pg_port: int
    artifacts_destination: str
    bin_dir: str
    mlflow_pid: int | None = None
    workers: int | None = None
    allowed_hosts: str | None = None

    @property
    def tracking_uri(self) -> str:
        """The URI clients on this machine use (`--host 0.0.0.0` listens on every interface)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "::", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def backend_store_uri(self) -> str:
        return f"postgresql+psycopg://{DB_USER}@127.0.0.1:{self.pg_port}/{DB_NAME}"


# --------------------------------------------------------------------------------------------------
# finding things
# --------------------------------------------------------------------------------------------------


def _version_key(path: Path) -> tuple[int, ...]:
    return tuple(int(n) for n in re.findall(r"\d+", path.parent.name)) or (0,)


def find_postgres_bin(extra: Sequence[str | Path] = ()) -> Path | None:
    """The folder holding initdb, pg_ctl, postgres and createdb: `extra` folders first, then the folder of
    `pg_ctl` on PATH (symlinks resolved), then the newest /usr/lib/postgresql/<version>/bin; None if none
    has them all."""
    candidates = [Path(p) for p in extra]
    on_path = shutil.which("pg_ctl")
    if on_path:
        candidates.append(Path(on_path).resolve().parent)
    candidates += sorted((Path(p) for p in glob.glob(PG_BIN_GLOB)), key=_version_key, reverse=True)
    for folder in candidates:
        if all(os.access(folder / tool, os.X_OK) for tool in PG_TOOLS):
            return folder
    return None


def _mlflow_executable() -> str:
    """The `mlflow` command of this Python environment (else the one on PATH)."""
    here = Path(sys.executable).parent / "mlflow"
    if here.is_file() and os.access(here, os.X_OK):
        return str(here)
    found = shutil.which("mlflow")
    if found is None:
        raise TeamServerError("no `mlflow` command in this environment; pip install -e '.[team]'")
    return found


def postgres_account() -> tuple[int, int] | None:
    """(uid, gid) PostgreSQL runs as when we are root (it refuses root); None: as ourselves."""
    if os.geteuid() != 0:
        return None
    try:
        entry = pwd.getpwnam(PG_SYSTEM_USER)
    except KeyError:
        raise TeamServerError(
            f"PostgreSQL refuses to run as root and there is no user {PG_SYSTEM_USER!r} to run it as: "
            f"apt-get install -y postgresql creates it (or useradd --system {PG_SYSTEM_USER}), "
            "or run `anomaly-spotter server start` as a normal user"
        ) from None
    return entry.pw_uid, entry.pw_gid


def _can_enter(path: Path, uid: int, gid: int) -> bool:
    st = path.stat()
    if st.st_uid == uid:
        return bool(st.st_mode & 0o100)
    if st.st_gid == gid:
        return bool(st.st_mode & 0o010)
    return bool(st.st_mode & 0o001)


def _check_reachable(folder: Path, account: tuple[int, int]) -> None:
    for parent in [folder, *folder.parents]:
        if not _can_enter(parent, *account):
            raise TeamServerError(
                f"PostgreSQL runs as user {PG_SYSTEM_USER!r} (it refuses root), who cannot enter {parent} "
                f"(mode {parent.stat().st_mode & 0o777:o}) on the way to {folder}; choose a --dir that "
                "user can reach, e.g. under /srv or /tmp, or chmod o+x the folder"
            )


def default_allowed_hosts() -> str:
    """Host names `mlflow server --allowed-hosts` accepts when listening beyond loopback and none were
    given: MLflow's defaults (localhost, private IPs) and this machine's names, any port. (MLflow answers
    403 "Invalid Host header" to a client that reaches it by another name.)"""
    names = sorted({socket.gethostname(), socket.getfqdn()} - {"", "localhost"})
    try:
        from mlflow.server.security_utils import get_default_allowed_hosts

        base = list(get_default_allowed_hosts())
    except ImportError:  # an MLflow without it: loopback names only
        base = ["localhost", "localhost:*", "127.0.0.1", "127.0.0.1:*"]
    return ",".join([*base, *names, *(f"{name}:*" for name in names)])


def _port_busy(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket() as sock:
        sock.settimeout(1)
        return sock.connect_ex((host, port)) == 0


# --------------------------------------------------------------------------------------------------
# state
# --------------------------------------------------------------------------------------------------


def load_state(folder: Path) -> ServerState | None:
    path = Path(folder) / STATE_FILE
    if not path.is_file():
        return None
    try:
        return ServerState(**json.loads(path.read_text()))
    except (OSError, ValueError, TypeError) as err:
        raise TeamServerError(f"{path}: unreadable ({err}); move the folder away and start anew") from err


def _save_state(folder: Path, state: ServerState) -> None:
    path = folder / STATE_FILE
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(asdict(state), indent=2) + "\n")
    tmp.replace(path)


def _log_tail(path: Path) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join(lines[-LOG_TAIL_LINES:])


# --------------------------------------------------------------------------------------------------
# PostgreSQL
# --------------------------------------------------------------------------------------------------


def _pg(bin_dir: Path, tool: str, args: Sequence[str], account: tuple[int, int] | None, **kw) -> str:
    """Run a PostgreSQL tool (as `account` when given); TeamServerError with its output if it fails."""
    cmd = [str(bin_dir / tool), *args]
    extra = {"user": account[0], "group": account[1], "extra_groups": []} if account else {}
    kw.setdefault("cwd", "/")  # a folder `account` can enter, wherever we were started
    try:
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=120, **extra, **kw)
    except (OSError, subprocess.SubprocessError) as err:
        raise TeamServerError(f"{' '.join(cmd)}: {err}") from err
    if result.returncode != 0:
        output = (result.stdout + result.stderr).strip()
        raise TeamServerError(f"{' '.join(cmd)} failed ({result.returncode}):\n{output}")
    return result.stdout


def _chown(path: Path, account: tuple[int, int] | None) -> None:
    if account is not None:
        os.chown(path, *account)


def _init_cluster(folder: Path, bin_dir: Path, pg_port: int, account: tuple[int, int] | None) -> None:
    """initdb a cluster in folder/postgres, loopback TCP only: its superuser `admin` and, made by
    `_create_database`, the role `mlflow` (no superuser) that owns the database; random passwords."""
    data = folder / PG_DATA
    data.mkdir(mode=0o700)
    _chown(data, account)
    for name in (PG_PASSWORD_FILE, ADMIN_PASSWORD_FILE):
        password_file = folder / name
        password_file.touch(mode=0o600)
        password_file.write_text(secrets.token_urlsafe(24) + "\n")
        _chown(password_file, account)
    _pg(
        bin_dir,
        "initdb",
        [
            "-D",
            str(data),
            "-U",
            ADMIN_USER,
            f"--pwfile={folder / ADMIN_PASSWORD_FILE}",
            "--auth=scram-sha-256",
            "-E",
            "UTF8",
            "--locale=C",
        ],
        account,
    )
    with (data / "postgresql.conf").open("a") as conf:
        conf.write(
            "\n# anomaly-spotter server: loopback TCP only (mlflow server is the only client)\n"
            f"listen_addresses = '127.0.0.1'\nport = {pg_port}\nunix_socket_directories = ''\n"
        )


def _password(folder: Path) -> str:
    return (folder / PG_PASSWORD_FILE).read_text().strip()


def _pg_running(folder: Path, bin_dir: Path, account: tuple[int, int] | None) -> bool:
    try:
        _pg(bin_dir, "pg_ctl", ["status", "-D", str(folder / PG_DATA)], account)
    except TeamServerError:
        return False
    return True


def _start_postgres(folder: Path, state: ServerState, account: tuple[int, int] | None) -> bool:
    """Start the cluster unless it runs; whether it was started."""
    bin_dir = Path(state.bin_dir)
    if _pg_running(folder, bin_dir, account):
        return False
    if _port_busy(state.pg_port):
        raise TeamServerError(
            f"PostgreSQL port {state.pg_port} (in {folder / STATE_FILE}) is taken by another program; "
            f"stop it, or set another pg_port there and in {folder / PG_DATA}/postgresql.conf"
        )
    log = folder / PG_LOG
    log.touch()
    _chown(log, account)
    try:
        _pg(
            bin_dir,
            "pg_ctl",
            ["start", "-D", str(folder / PG_DATA), "-l", str(log), "-w", "-t", "60"],
            account,
        )
    except TeamServerError as err:
        raise TeamServerError(f"{err}\n{log}:\n{_log_tail(log)}") from None
    return True


def _create_database(folder: Path, state: ServerState) -> None:
    """The role `mlflow` (login, no superuser, no role or database creation) and its database `mlflow`,
    made by the cluster's `admin` (clusters from before `admin` existed keep their `mlflow` owner)."""
    admin_file = folder / ADMIN_PASSWORD_FILE
    admin = admin_file.read_text().strip() if admin_file.is_file() else None
    user = ADMIN_USER if admin is not None else DB_USER
    env = {**os.environ, "PGPASSWORD": admin or _password(folder), "LC_ALL": "C"}  # errors in English
    conn = ["-h", "127.0.0.1", "-p", str(state.pg_port), "-U", user]
    bin_dir = Path(state.bin_dir)
    if admin is not None:  # the role's password goes on stdin, never on a command line
        create = (
            f"CREATE ROLE {DB_USER} LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE PASSWORD '{_password(folder)}'"
        )
        sql = (
            "SELECT "
            + _sql_text(create)
            + f" WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{DB_USER}')"
            + " \\gexec\n"
        )
        _pg(
            bin_dir,
            "psql",
            [*conn, "-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q"],
            None,
            env=env,
            input=sql,
        )
    try:
        _pg(bin_dir, "createdb", [*conn, "-O", DB_USER, DB_NAME], None, env=env)
    except TeamServerError as err:
        if "already exists" not in str(err):
            raise


def _sql_text(text: str) -> str:
    """A SQL string literal of `text`."""
    return "'" + text.replace("'", "''") + "'"


def _stop_postgres(folder: Path, state: ServerState, account: tuple[int, int] | None) -> bool:
    bin_dir = Path(state.bin_dir)
    if not _pg_running(folder, bin_dir, account):
        return False
    _pg(bin_dir, "pg_ctl", ["stop", "-D", str(folder / PG_DATA), "-m", "fast", "-w", "-t", "60"], account)
    return True


# --------------------------------------------------------------------------------------------------
# mlflow server
# --------------------------------------------------------------------------------------------------


def _is_ours(pid: int | None) -> bool:
    """Whether `pid` is alive and an mlflow server (not a recycled pid)."""
    if not pid:
        return False
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except OSError:
        try:
            os.kill(pid, 0)
        except OSError:
            return False
        return True  # no /proc: trust the pid
    return b"mlflow" in cmdline and b"server" in cmdline


def healthy(uri: str, timeout: float = 2.0) -> bool:
    """Whether an MLflow server answers `GET <uri>/health` with 200."""
    try:
        with urllib.request.urlopen(f"{uri.rstrip('/')}/health", timeout=timeout) as resp:
            return resp.status == 200
    except (urllib.error.URLError, OSError):
        return False


def mlflow_server_command(state: ServerState) -> list[str]:
    """The `mlflow server` command line (no secret in it: the password is PGPASSWORD in its environment)."""
    cmd = [
        _mlflow_executable(),
        "server",
        "--backend-store-uri",
        state.backend_store_uri,
        "--serve-artifacts",
        "--artifacts-destination",
        state.artifacts_destination,
        "--host",
        state.host,
        "--port",
        str(state.port),
    ]
    if state.workers:
        cmd += ["--workers", str(state.workers)]
    if state.allowed_hosts:
        cmd += ["--allowed-hosts", state.allowed_hosts]
    return cmd


def _start_mlflow(folder: Path, state: ServerState, timeout_s: float) -> None:
    if _port_busy(state.port):
        raise TeamServerError(
            f"port {state.port} is already in use (another mlflow server?); stop that or choose --port"
        )
    log_path = folder / MLFLOW_LOG
    env = {**os.environ, "PGPASSWORD": _password(folder)}
    env.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    with log_path.open("a") as log:
        proc = subprocess.Popen(
            mlflow_server_command(state),
            cwd=folder,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: `stop` ends it and its workers together
        )
    state.mlflow_pid = proc.pid
    _save_state(folder, state)
    deadline = time.monotonic() + timeout_s
    while not healthy(state.tracking_uri):
        if proc.poll() is not None:
            raise TeamServerError(
                f"mlflow server exited ({proc.returncode}) while starting; {log_path}:\n{_log_tail(log_path)}"
            )
        if time.monotonic() > deadline:
            _stop_mlflow(state)
            raise TeamServerError(
                f"mlflow server did not answer {state.tracking_uri}/health in {timeout_s:.0f} s "
                f"(stopped it); {log_path}:\n{_log_tail(log_path)}"
            )
        time.sleep(POLL_S)


def _stop_mlflow(state: ServerState) -> bool:
    pid = state.mlflow_pid
    if not _is_ours(pid):
        return False
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + STOP_TIMEOUT_S
    while time.monotonic() < deadline:
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            break
        _reap(pid)
        time.sleep(POLL_S)
    else:
        try:
            os.killpg(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _reap(pid)
    return True


def _reap(pid: int) -> None:
    """Collect `pid`'s exit status if this process started it (so it is not left a zombie)."""
    try:
        os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        pass


# --------------------------------------------------------------------------------------------------
# the commands
# --------------------------------------------------------------------------------------------------


def start(
    folder: Path,
    host: str | None = None,
    port: int | None = None,
    pg_port: int | None = None,
    artifacts_destination: str | None = None,
    workers: int | None = None,
    allowed_hosts: str | None = None,
    timeout_s: float = START_TIMEOUT_S,
) -> ServerState:
    """Set up `folder` if new (PostgreSQL cluster, database `mlflow`, artifacts folder) and start
    PostgreSQL and `mlflow server` (host 127.0.0.1 and port 5000 unless given); returns the state (the
    URI for clients: `.tracking_uri`). A folder set up before keeps its PostgreSQL port and artifacts
    destination, and its last host, port, workers and allowed hosts unless given. Already running: as is."""
    folder = Path(folder).absolute()
    account = postgres_account()
    state = load_state(folder)
    if state is None:
        state = _set_up(folder, pg_port, artifacts_destination, account)
    elif artifacts_destination and artifacts_destination != state.artifacts_destination:
        raise TeamServerError(
            f"{folder} keeps its artifacts in {state.artifacts_destination}; the store's runs point there, "
            "so it cannot change on restart (start a new --dir for another destination)"
        )
    elif _is_ours(state.mlflow_pid) and healthy(state.tracking_uri):
        return state
    state.host = host or state.host
    state.port = port or state.port
    state.workers = workers or state.workers
    state.allowed_hosts = allowed_hosts or state.allowed_hosts
    if not state.allowed_hosts and state.host not in LOOPBACK_HOSTS:
        state.allowed_hosts = default_allowed_hosts()
    started = _start_postgres(folder, state, account)
    try:
        _create_database(folder, state)
        _start_mlflow(folder, state, timeout_s)
    except BaseException:
        if started:  # leave nothing running that this call started
            _stop_postgres(folder, state, account)
        raise
    return state


def _set_up(
    folder: Path, pg_port: int | None, artifacts_destination: str | None, account: tuple[int, int] | None
) -> ServerState:
    bin_dir = find_postgres_bin()
    if bin_dir is None:
        raise TeamServerError(
            f"PostgreSQL is not installed (no initdb / pg_ctl on PATH or in {PG_BIN_GLOB}): "
            "apt-get install -y postgresql"
        )
    if folder.exists() and any(folder.iterdir()):
        raise TeamServerError(f"{folder} is not empty and holds no {STATE_FILE}: choose a new --dir")
    folder.mkdir(parents=True, exist_ok=True)
    if account is not None:
        _check_reachable(folder, account)
    destination = artifacts_destination or str(folder / ARTIFACTS)
    if "://" not in destination:
        destination = str(Path(destination).absolute())
        Path(destination).mkdir(parents=True, exist_ok=True)
    state = ServerState("127.0.0.1", DEFAULT_PORT, pg_port or free_port(), destination, str(bin_dir))
    try:
        _init_cluster(folder, bin_dir, state.pg_port, account)
    except BaseException:
        for entry in folder.iterdir():  # it was empty: leave it so, for the next try
            if entry.is_dir():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        raise
    _save_state(folder, state)
    return state


def _not_set_up(folder: Path) -> TeamServerError:
    return TeamServerError(
        f"{folder} holds no {STATE_FILE}: not a folder `anomaly-spotter server start --dir` set up"
    )


def stop(folder: Path) -> tuple[bool, bool]:
    """Stop `mlflow server` (its whole process group) and PostgreSQL; (mlflow stopped, postgres stopped)."""
    folder = Path(folder).absolute()
    state = load_state(folder)
    if state is None:
        raise _not_set_up(folder)
    stopped_mlflow = _stop_mlflow(state)
    stopped_pg = _stop_postgres(folder, state, postgres_account())
    state.mlflow_pid = None
    _save_state(folder, state)
    return stopped_mlflow, stopped_pg


def status(folder: Path) -> dict[str, object]:
    """What runs: tracking URI, whether mlflow server answers, whether PostgreSQL runs."""
    folder = Path(folder).absolute()
    state = load_state(folder)
    if state is None:
        raise _not_set_up(folder)
    return {
        "tracking_uri": state.tracking_uri,
        "mlflow_server": "up" if _is_ours(state.mlflow_pid) and healthy(state.tracking_uri) else "down",
        "postgres": "up" if _pg_running(folder, Path(state.bin_dir), postgres_account()) else "down",
        "backend_store_uri": state.backend_store_uri,
        "artifacts_destination": state.artifacts_destination,
        "logs": f"{folder / MLFLOW_LOG}, {folder / PG_LOG}",
    }


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (free when asked; the caller binds it soon after)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]
