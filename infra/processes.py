"""Process control for the local services: start a process in its own session with a PID file
and a log, wait on its health check, stop it with everything it started (TERM, INT, KILL),
or kill it outright the way a dying machine would.

What the services are (commands, ports, health checks, credentials) lives in infra/services.py.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from infra import settings


@dataclass(frozen=True)
class Service:
    """One managed process: how to start it, which ports it takes, how to tell it is healthy."""

    name: str
    command: Callable[[], list[str]]
    ports: Callable[[], list[int]]
    health: Callable[[], bool]
    timeout_s: float
    env: Callable[[], dict[str, str]] = field(default=lambda: {})
    after_start: Callable[[], None] | None = None


def state(*parts: str) -> Path:
    path = settings.state_dir().joinpath(*parts)
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


def pid_file(name: str) -> Path:
    return state("pids", f"{name}.pid")


def log_file(name: str) -> Path:
    return state("logs", f"{name}.log")




def read_pid(name: str) -> int | None:
    path = pid_file(name)
    try:
        pid = int(path.read_text().strip())
    except (OSError, ValueError):
        return None
    return pid if alive(pid) else None


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as gone.
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class ServiceError(RuntimeError):
    pass


def start(service: Service) -> str:
    """Start one service unless it already runs; return a one-line status."""
    pid = read_pid(service.name)
    if pid is not None:
        if _wait_healthy(service, pid, timeout_s=service.timeout_s):
            return f"{service.name}: already running (pid {pid})"
        raise ServiceError(f"{service.name}: pid {pid} runs but is not healthy; see "
                           f"{log_file(service.name)} (try `make services-down`)")
    busy = [port for port in service.ports() if port_in_use(port)]
    if busy:
        raise ServiceError(
            f"{service.name}: port(s) {busy} already in use by another process; free them or "
            "move the service with MB_<NAME>_PORT (see infra/settings.py)")
    log = open(log_file(service.name), "ab")
    env = {**os.environ, **service.env()}
    proc = subprocess.Popen(service.command(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, env=env, cwd=settings.REPO_ROOT,
                            start_new_session=True)
    pid_file(service.name).write_text(str(proc.pid))
    if not _wait_healthy(service, proc.pid, service.timeout_s):
        stop_all([service.name])
        raise ServiceError(f"{service.name}: not healthy after {service.timeout_s:.0f} s; "
                           f"see the log {log_file(service.name)}")
    if service.after_start:
        service.after_start()
    return f"{service.name}: started (pid {proc.pid})"


def _wait_healthy(service: Service, pid: int, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not alive(pid):
            return False
        if service.health():
            return True
        time.sleep(0.5)
    return False


def _signal_group(pid: int, sig: int) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _stat(pid: int) -> tuple[str, int, int] | None:
    """(state, parent pid, process group) of one live process, None if it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1]), int(fields[2])
    except (OSError, IndexError, ValueError):
        return None


def _processes() -> dict[int, tuple[str, int, int]]:
    stats = {int(p): _stat(int(p)) for p in os.listdir("/proc") if p.isdigit()}
    return {pid: st for pid, st in stats.items() if st is not None and st[0] != "Z"}


def _tree_groups(pgid: int) -> set[int]:
    """The service's process group and the groups of everything it started. A Prefect worker
    starts each flow run in a session of its own, so signalling the worker's group alone would
    leave its flow runs running, orphaned, after the worker stopped."""
    procs = _processes()
    members = {pid for pid, (_, _, group) in procs.items() if group == pgid}
    groups, frontier = {pgid}, list(members)
    while frontier:
        parent = frontier.pop()
        for pid, (_, ppid, group) in procs.items():
            if ppid == parent and pid not in members:
                members.add(pid)
                groups.add(group)
                frontier.append(pid)
    return groups


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except (ProcessLookupError, PermissionError):
        return False
    return any(group == pgid for _, _, group in _processes().values())


def stop_all(names: list[str], term_s: float = 20.0, int_s: float = 5.0) -> list[str]:
    """Stop services and everything they started, by process group: TERM, then INT, then
    KILL; all at once, bounded in time."""
    return _stop(names, ((signal.SIGTERM, term_s), (signal.SIGINT, int_s),
                         (signal.SIGKILL, 3.0)))


def kill_all(names: list[str]) -> list[str]:
    """SIGKILL services and everything they started, with no chance to clean up: what a
    worker machine that dies looks like to the rest of the pipeline."""
    return _stop(names, ((signal.SIGKILL, 3.0),))


def _stop(names: list[str], steps: tuple[tuple[int, float], ...]) -> list[str]:
    pids = {n: int(pid_file(n).read_text()) for n in names if pid_file(n).exists()
            and pid_file(n).read_text().strip().isdigit()}
    # The tree is read once, before any signal: a child whose parent died is re-parented
    # to init and could no longer be found from the service.
    groups = {n: _tree_groups(pid) for n, pid in pids.items()}
    lines = []
    for sig, wait_s in steps:
        running = {n: {g for g in gs if _group_alive(g)} for n, gs in groups.items()}
        running = {n: gs for n, gs in running.items() if gs}
        if not running:
            break
        for gs in running.values():
            for group in gs:
                _signal_group(group, sig)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline and any(
                _group_alive(g) for gs in running.values() for g in gs):
            time.sleep(0.2)
    for name, pid in pids.items():
        state_word = "still running!" if any(_group_alive(g) for g in groups[name]) \
            else "stopped"
        lines.append(f"{name}: {state_word} (pid {pid})")
        if not _group_alive(pid):
            pid_file(name).unlink(missing_ok=True)
    return lines
