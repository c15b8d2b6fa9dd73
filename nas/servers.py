"""`nas server`: a Prefect API server and an MLflow tracking server on loopback, for repeated commands.

Both need a password: whoever reaches a port on this machine (another user, a web page in a
browser) could otherwise create flow runs or read and write the store. The password is random,
kept in a file only the user can read, and the lines to export read it from there.

Without them every `nas search` starts a temporary Prefect server (about 20 s on a fresh Prefect
home) and opens the SQLite store itself. With them running, a command only connects. Both run
as children in their own sessions (a Ctrl-C reaches them once, through us) and stop together.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import secrets
import shlex
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType

AUTH_USER = "nas"  # the user both servers know, with the password of SECRET_FILE
SECRET_FILE = "server-secret"
OWNER = "NAS_OWNER_PID"  # in the environment of every process a command starts, for its watchdog
HOST = "127.0.0.1"
READY_SECONDS = 180.0  # a fresh Prefect home first creates its database: 20 s here, more on a busy machine
STOP_SECONDS = 15.0


@dataclass(frozen=True)
class Service:
    name: str
    command: list[str]
    health_url: str
    log: Path
    env: dict[str, str] = field(default_factory=dict)  # added to this process's environment


def server_secret(folder: Path) -> Path:
    """The file holding the servers' password: random, made once, readable by the user alone."""
    path = folder / SECRET_FILE
    if not path.exists():
        folder.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as file:
            file.write(secrets.token_urlsafe(24))
    return path


def services(tracking_uri: str, artifact_dir: Path | None, prefect_port: int, mlflow_port: int,
             log_dir: Path, secret: Path) -> list[Service]:
    """The two servers, each behind the password in `secret` (user AUTH_USER): Prefect's API (and UI)
    with CSRF protection and its own origin only, and MLflow's tracking server in front of the store,
    with MLflow's basic-auth app (its users in a database beside the logs)."""
    password = secret.read_text().strip()
    scripts = Path(sys.executable).parent  # this environment's own prefect and mlflow
    mlflow = [str(scripts / "mlflow"), "server", "--backend-store-uri", tracking_uri, "--host", HOST,
              "--port", str(mlflow_port), "--workers", "1", "--app-name", "basic-auth"]
    if artifact_dir is not None:  # new experiments' artifacts land beside the store, as without the server
        mlflow += ["--artifacts-destination", artifact_dir.as_uri()]
    auth_config = log_dir / "mlflow-auth.ini"
    auth_config.write_text(f"[mlflow]\ndefault_permission = NO_PERMISSIONS\n"
                           f"database_uri = sqlite:///{log_dir / 'mlflow-auth.db'}\nadmin_username = {AUTH_USER}\n"
                           "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
                           # A password check costs a PBKDF2 hash; a search makes hundreds of requests.
                           "auth_cache_ttl_seconds = 300\n")
    return [
        Service("Prefect API", [str(scripts / "prefect"), "server", "start", "--host", HOST, "--port",
                                str(prefect_port), "--analytics-off"],
                f"http://{HOST}:{prefect_port}/api/health", log_dir / "prefect-server.log",
                {"PREFECT_SERVER_API_AUTH_STRING": f"{AUTH_USER}:{password}",
                 "PREFECT_SERVER_API_CSRF_PROTECTION_ENABLED": "true",
                 "PREFECT_SERVER_API_CORS_ALLOWED_ORIGINS": f"http://{HOST}:{prefect_port}"}),
        Service("MLflow tracking", mlflow, f"http://{HOST}:{mlflow_port}/health", log_dir / "mlflow-server.log",
                {"MLFLOW_AUTH_CONFIG_PATH": str(auth_config), "MLFLOW_AUTH_ADMIN_PASSWORD": password,
                 # Signs the auth app's CSRF tokens; derived, so that it stays the same across restarts.
                 "MLFLOW_FLASK_SERVER_SECRET_KEY": hashlib.sha256(f"csrf:{password}".encode()).hexdigest(),
                 # MLflow's GenAI job runner: seven worker processes this project never gives a job.
                 "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}),
    ]


def client_exports(prefect_port: int, mlflow_port: int, secret: Path) -> dict[str, str]:
    """What a shell exports to use the servers: their addresses, and the password read from its file
    when the line runs, so that it is never printed."""
    password = f'"$(cat {shlex.quote(str(secret))})"'
    return {"PREFECT_API_URL": f"http://{HOST}:{prefect_port}/api",
            "PREFECT_API_AUTH_STRING": f'{AUTH_USER}:{password}',
            "MLFLOW_TRACKING_URI": f"http://{HOST}:{mlflow_port}",
            "MLFLOW_TRACKING_USERNAME": AUTH_USER, "MLFLOW_TRACKING_PASSWORD": password}


def serve(wanted: list[Service], exports: dict[str, str], on_ready: Callable[[], None] = lambda: None) -> int:
    """Start every service, call `on_ready` and say how to use them once all answer, and keep them
    until Ctrl-C or SIGTERM."""
    signal.signal(signal.SIGTERM, _interrupt)
    running: list[tuple[Service, subprocess.Popen]] = []
    try:
        for service in wanted:
            service.log.parent.mkdir(parents=True, exist_ok=True)
            with open(service.log, "ab") as log:
                running.append((service, subprocess.Popen(service.command, stdout=log, stderr=subprocess.STDOUT,
                                                          stdin=subprocess.DEVNULL, start_new_session=True,
                                                          env={**os.environ, **service.env})))
        print("starting " + " and ".join(s.name for s in wanted) + " ...", flush=True)
        for service, process in running:
            if not _wait_ready(service, process):
                print(f"{service.name} did not start; its log is {service.log}", file=sys.stderr)
                return 1
        on_ready()
        print("ready. In another shell, point the nas commands at them:", flush=True)
        for name, value in exports.items():
            print(f"  export {name}={value}")
        print("Ctrl-C stops both.", flush=True)
        while True:
            for service, process in running:
                if process.poll() is not None:
                    print(f"{service.name} stopped (exit {process.returncode}); its log is {service.log}",
                          file=sys.stderr)
                    return 1
            time.sleep(1.0)
    except KeyboardInterrupt:
        print("stopping ...", flush=True)
        return 0
    finally:
        _stop([process for _, process in running])


def processes_with(variable: str, value: str) -> list[int]:
    """The processes (readable by us) whose environment sets `variable` to `value`."""
    wanted = f"{variable}={value}".encode()
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        with contextlib.suppress(OSError):  # gone meanwhile, or not ours to read
            with open(f"/proc/{pid}/environ", "rb") as environ:
                if wanted in environ.read().split(b"\0"):
                    found.append(int(pid))
    return found


def _watch(owner: int) -> None:
    """The watchdog's body: wait for the kernel's word that `owner` died, then end what it started."""
    def reap(*_: object) -> None:
        for pid in processes_with(OWNER, str(owner)):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGTERM)
        sys.exit(0)

    signal.signal(signal.SIGTERM, reap)
    if os.getppid() != owner:  # died before the kernel was asked to tell
        reap()
    while True:
        signal.pause()


def end_children_at_death() -> None:
    """Make what this process starts (Prefect's temporary API server) end with it, even on kill -9.

    Children outlive a process killed with SIGKILL. A watchdog child learns of our death
    from the kernel (PR_SET_PDEATHSIG) and ends every process whose environment carries our
    mark, which whatever we start inherits. Linux only; elsewhere nothing happens.
    """
    if not sys.platform.startswith("linux") or OWNER in os.environ:  # an outer command's watchdog covers us
        return
    os.environ[OWNER] = str(os.getpid())
    subprocess.Popen([sys.executable, "-m", "nas.servers", "watch", os.environ[OWNER]],
                     preexec_fn=_signal_at_parent_death, start_new_session=True, stdin=subprocess.DEVNULL,
                     stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                     env={k: v for k, v in os.environ.items() if k != OWNER})


def _signal_at_parent_death() -> None:
    import ctypes

    ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # 1: PR_SET_PDEATHSIG


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt


def _wait_ready(service: Service, process: subprocess.Popen) -> bool:
    deadline = time.monotonic() + READY_SECONDS
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(OSError):  # not listening yet
            with urllib.request.urlopen(service.health_url, timeout=2) as response:
                if response.status == 200:
                    return True
        time.sleep(0.5)
    return False


def _stop(processes: list[subprocess.Popen]) -> None:
    """SIGTERM to each whole process group (servers have workers), then SIGKILL what is left."""
    for process in processes:
        _signal_group(process, signal.SIGTERM)
    deadline = time.monotonic() + STOP_SECONDS
    for process in processes:
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=max(deadline - time.monotonic(), 0.1))
        _signal_group(process, signal.SIGKILL)  # workers that outlived their parent go too


def _signal_group(process: subprocess.Popen, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):  # already gone
        os.killpg(process.pid, sig)


if __name__ == "__main__" and sys.argv[1:2] == ["watch"]:  # the watchdog of end_children_at_death
    _watch(int(sys.argv[2]))
