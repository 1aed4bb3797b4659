"""Start, stop and report the services: python -m services.common.ctl {up,down,status} [SERVICE...]."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

from services.common.config import SERVICES, Config

# The warm CLI server (cli/forkserver.py): started after the services, stopped before them.
CLI_SERVER = "cli"
PROCESSES = (*SERVICES, CLI_SERVER)
REPO = Path(__file__).resolve().parents[2]
# MYDOCKER_UP_TIMEOUT: for slow machines, e.g. scripts/test-cgroup2's emulated guest (a start there can pass a minute).
UP_TIMEOUT = float(os.environ.get("MYDOCKER_UP_TIMEOUT") or 20.0)
DOWN_TIMEOUT = 15.0
POLL_SECONDS = 0.1
LOG_TAIL_LINES = 15
PROC = Path("/proc")


# --- pure helpers -------------------------------------------------------------------------------


def parse_pid(text: str) -> int | None:
    """The pid a pidfile holds, or None when the text is not one positive decimal number."""
    text = text.strip()
    if not text.isdigit():
        return None
    pid = int(text)
    return pid if pid > 0 else None


def module_of(service: str) -> str:
    """The module `python -m` runs for a service or the CLI server."""
    return "cli.forkserver" if service == CLI_SERVER else f"services.{service}"


def cmdline_is_service(cmdline: bytes, service: str) -> bool:
    """True when a NUL-separated /proc cmdline runs `python -m services.<service>` (or the CLI server).

    The module must be a whole argument: a shim (`services.executor.shim`) or ctl itself
    (`services.common.ctl up state`) must never be mistaken for the service.
    """
    args = cmdline.split(b"\0")
    return module_of(service).encode() in args


def is_service_process(pid: int, service: str, proc: Path = PROC) -> bool:
    """True when `pid` is alive and really is that service; a zombie has an empty cmdline."""
    try:
        cmdline = (proc / str(pid) / "cmdline").read_bytes()
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return False
    return cmdline_is_service(cmdline, service)


def read_pidfile(path: Path) -> int | None:
    try:
        return parse_pid(path.read_text())
    except FileNotFoundError:
        return None


def service_pid(config: Config, service: str, proc: Path = PROC) -> int | None:
    """The pid of the running service according to its pidfile, or None when it is not running."""
    pid = read_pidfile(config.pid_path(service))
    return pid if pid is not None and is_service_process(pid, service, proc) else None


def running_services(config: Config, proc: Path = PROC) -> dict[str, int]:
    """Pid of each service whose pidfile names a live process of that service."""
    pids = {service: service_pid(config, service, proc) for service in PROCESSES}
    return {service: pid for service, pid in pids.items() if pid is not None}


def service_env(config: Config, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment pointing a service, script or CLI run from this checkout at `config`."""
    env = dict(os.environ if base is None else base)
    env.update(MYDOCKER_ROOT=str(config.root), MYDOCKER_RUN=str(config.run), PYTHONPATH=str(REPO))
    return env


def log_tail(path: Path, lines: int = LOG_TAIL_LINES) -> list[str]:
    try:
        return path.read_text(errors="replace").splitlines()[-lines:]
    except FileNotFoundError:
        return [f"(no log file at {path})"]


def status_line(service: str, pid: int | None, socket: Path, health: str) -> str:
    return f"{service:<9} {pid if pid is not None else '-':>7}  {socket}  {health}"


def parse_services(names: Sequence[str]) -> list[str]:
    """The services named (all of them and the CLI server when none), in start order; ValueError for an unknown one."""
    unknown = [name for name in names if name not in PROCESSES]
    if unknown:
        raise ValueError(f"unknown service {unknown[0]!r}: choose from {', '.join(PROCESSES)}")
    return [service for service in PROCESSES if not names or service in names]


# --- side effects -------------------------------------------------------------------------------


def _health(config: Config, service: str) -> str:
    if service == CLI_SERVER:
        return cli_server_health(config)
    # Imported here so `down` never loads grpc.
    from services.common.client import check_health

    return check_health(config, service).status


def cli_server_health(config: Config) -> str:
    """SERVING when the CLI server's process runs and accepts connections on its socket."""
    if service_pid(config, CLI_SERVER) is None:
        return "UNREACHABLE"
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    try:
        probe.connect(str(config.socket_path(CLI_SERVER)))
    except OSError:
        return "UNREACHABLE"
    finally:
        probe.close()
    return "SERVING"


def spawn(config: Config, service: str, args: Sequence[str] = ()) -> subprocess.Popen:
    """Start one service detached from us: its own session, output appended to its log file."""
    log_path = config.log_path(service)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    env = service_env(config)
    # Bytecode is compiled at install; let the service refresh it for files edited since.
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    with open(log_path, "ab") as log_file:
        return subprocess.Popen(
            [sys.executable, "-m", module_of(service), *args],
            cwd=REPO,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            close_fds=True,
            start_new_session=True,
        )


def _wait_until(done: Callable[[], bool], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while not done():
        if time.monotonic() >= deadline:
            return False
        time.sleep(POLL_SECONDS)
    return True


def own_line(lines: Sequence[str], service: str) -> str:
    """The last line a service wrote about itself before exiting ("mydocker-state: ..."), "" when none."""
    prefix = f"mydocker-{service}:"
    return next((line for line in reversed(lines) if line.startswith(prefix)), "")


def _fail(config: Config, service: str, why: str) -> int:
    log_path = config.log_path(service)
    # The service's own one-line reason first (a damaged database, a held lock), then the context.
    reason = own_line(log_tail(log_path), service)
    if reason:
        print(reason, file=sys.stderr)
    print(f"ctl: {service} is not serving ({why}); last lines of {log_path}:", file=sys.stderr)
    for line in log_tail(log_path):
        print(f"    {line}", file=sys.stderr)
    return 1


def up(config: Config, services: list[str], timeout: float = UP_TIMEOUT) -> int:
    """Start every service that is not SERVING, then wait until all of them are."""
    started: dict[str, subprocess.Popen] = {}
    notes: dict[str, str] = {}
    pending: list[str] = []
    for service in services:
        pid = service_pid(config, service)
        if _health(config, service) == "SERVING":
            notes[service] = f"already serving (pid {pid if pid is not None else '?'})"
            continue
        pending.append(service)
        if pid is not None:
            # Alive but not serving yet: most likely still starting, so give it time rather than a rival.
            notes[service] = f"waited for pid {pid}"
        else:
            started[service] = spawn(config, service)
            notes[service] = f"started (pid {started[service].pid})"

    deadline = time.monotonic() + timeout
    while pending:
        for service in list(pending):
            if _health(config, service) == "SERVING":
                pending.remove(service)
            elif service_pid(config, service) is not None:
                continue
            elif service not in started:
                # The process we were giving time died: start a fresh one, once.
                started[service] = spawn(config, service)
                notes[service] = f"started (pid {started[service].pid})"
            elif started[service].poll() is not None:
                child = started[service]
                return _fail(config, service, f"pid {child.pid} exited with status {child.returncode}")
        if not pending:
            break
        if time.monotonic() >= deadline:
            service = pending[0]
            child = started.get(service)
            if child is not None and child.poll() is None:
                # Ours and hung: kill it, or it would linger without a pidfile that `down` could find.
                child.kill()
                child.wait()
            return _fail(config, service, f"not SERVING after {timeout:.0f}s")
        time.sleep(POLL_SECONDS)
    for service in services:
        print(f"{service}: {notes[service]}, SERVING")
    if all(_health(config, service) == "SERVING" for service in SERVICES):
        return repair(config)
    return 0


def restart(config: Config, service: str, args: Sequence[str] = (), timeout: float = UP_TIMEOUT) -> str:
    """Stop `service` if it runs, start it with `args` and wait until it serves: "" then, else one line why not.

    For `mydocker system check --repair --rebuild-state`, which must not run `repair` as `up` does.
    """
    down(config, [service])
    child = spawn(config, service, args)
    _wait_until(lambda: child.poll() is not None or _health(config, service) == "SERVING", timeout)
    if _health(config, service) == "SERVING":
        return ""
    if child.poll() is None:
        child.kill()
        child.wait()
        return f"the {service} service was not serving {timeout:.0f}s after its start: see {config.log_path(service)}"
    return own_line(log_tail(config.log_path(service)), service) or (
        f"the {service} service exited with status {child.returncode}: see {config.log_path(service)}"
    )


def repair(config: Config) -> int:
    """Finish or undo what a crash of any service (or CLI) left half-done: `mydocker system check --repair`.

    Services reconcile their own state as they start, but only the CLI sees all three, e.g. a shim
    whose record a rolled-back run deleted while the executor was down.
    """
    result = subprocess.run(
        [str(REPO / "mydocker"), "system", "check", "--repair", "--quiet"],
        env=service_env(config),
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=UP_TIMEOUT * 6,
    )
    for line in (result.stdout + result.stderr).splitlines():
        print(f"check: {line}")
    if result.returncode != 0:
        print("ctl: the services are up, but `mydocker system check --repair` could not fix everything (see above)", file=sys.stderr)
    return result.returncode


def down(config: Config, services: list[str], timeout: float = DOWN_TIMEOUT) -> int:
    """Stop each service by its pidfile's pid (SIGTERM, SIGKILL after `timeout`); containers and shims stay."""
    running: dict[str, int] = {}
    for service in reversed(services):
        pid_path = config.pid_path(service)
        pid = service_pid(config, service)
        if pid is not None:
            running[service] = pid
        elif pid_path.exists():
            pid_path.unlink(missing_ok=True)
            print(f"{service}: not running (removed stale {pid_path})")
        else:
            print(f"{service}: not running")
    # SIGTERM every one first so their grace periods overlap.
    for pid in running.values():
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    _wait_until(lambda: not any(is_service_process(pid, name) for name, pid in running.items()), timeout)
    for service, pid in running.items():
        if not is_service_process(pid, service):
            print(f"{service}: stopped (pid {pid})")
            continue
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        _wait_until(lambda: not is_service_process(pid, service), timeout)
        print(f"{service}: killed (pid {pid}): still running {timeout:.0f}s after SIGTERM")
        # A graceful stop removes both itself; a killed service leaves them behind.
        if read_pidfile(config.pid_path(service)) == pid:
            config.pid_path(service).unlink(missing_ok=True)
            config.socket_path(service).unlink(missing_ok=True)
    return 0


def status(config: Config, services: list[str]) -> int:
    """One line per service: name, pid, socket, health; 0 only when every one is SERVING."""
    all_serving = True
    for service in services:
        health = _health(config, service)
        all_serving &= health == "SERVING"
        print(status_line(service, service_pid(config, service), config.socket_path(service), health))
    return 0 if all_serving else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ctl", description="Start, stop or report the mydocker services.")
    parser.add_argument("action", choices=("up", "down", "status"))
    parser.add_argument("services", nargs="*", metavar="SERVICE", help=f"default: {' '.join(PROCESSES)}")
    parser.add_argument("--root", help="state root (default: $MYDOCKER_ROOT or /var/lib/mydocker)")
    parser.add_argument("--run", help="runtime root (default: $MYDOCKER_RUN or /run/mydocker)")
    args = parser.parse_args(argv)
    try:
        services = parse_services(args.services)
    except ValueError as err:
        parser.error(str(err))
    config = Config.from_env(root=args.root, run=args.run)
    action = {"up": up, "down": down, "status": status}[args.action]
    return action(config, services)


if __name__ == "__main__":
    sys.exit(main())
