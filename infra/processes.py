"""Process control for the local services: start a process in its own session with a PID file
and a log, wait on its health check, stop it with everything it started (TERM, INT, KILL),
or kill it outright the way a dying machine would.

The PID file records the process's identity (PID, start time, command line, read with psutil):
a process is the service only while all three match, so a PID the system has given to another
process since is reported stale and never signalled.

What the services are (commands, ports, health checks, credentials) lives in infra/services.py.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import psutil

from infra import retry, settings


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


def _identity(proc: psutil.Process) -> dict:
    """What makes a process this one and no other: a PID is reused once its process is gone,
    a PID with the same start time and command line is not."""
    with proc.oneshot():
        return {"pid": proc.pid, "create_time": proc.create_time(), "cmdline": proc.cmdline()}


def record_pid(name: str, pid: int) -> None:
    """Write the PID file of a process just started: its PID, start time and command line."""
    proc = psutil.Process(pid)
    # Popen returns once the exec has begun; the kernel fills in the new command line a moment
    # later, and until then it reads empty.
    retry.until(lambda: bool(proc.cmdline()), retry.RetryPolicy(
        retries=None, backoff_s=0.001, backoff_max_s=0.05, deadline_s=5.0))
    pid_file(name).write_text(json.dumps(_identity(proc)))


def recorded_pid(name: str) -> int | None:
    """The PID a PID file names, ours or not (for messages); None without a readable file.
    A bare number is the format before identities were recorded."""
    try:
        record = json.loads(pid_file(name).read_text())
        return int(record["pid"] if isinstance(record, dict) else record)
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owned(name: str) -> psutil.Process | None:
    """The live process a service's PID file recorded, or None when the file is missing, in an
    older format, or names a PID the system has since given to another process."""
    try:
        wanted = json.loads(pid_file(name).read_text())
        proc = psutil.Process(int(wanted["pid"]))
        if _identity(proc) != wanted or proc.status() == psutil.STATUS_ZOMBIE:
            return None
    except (OSError, ValueError, KeyError, TypeError, psutil.Error):
        return None
    return proc


def read_pid(name: str) -> int | None:
    """The PID of a service's process while it runs; None if it does not (or the file is stale)."""
    proc = owned(name)
    return proc.pid if proc is not None else None


def _running(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
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
        if _wait_healthy(service, psutil.Process(pid), timeout_s=service.timeout_s):
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
    try:
        record_pid(service.name, proc.pid)
    except psutil.Error as err:
        raise ServiceError(f"{service.name}: exited as it started; see the log "
                           f"{log_file(service.name)}") from err
    if not _wait_healthy(service, psutil.Process(proc.pid), service.timeout_s):
        stop_all([service.name])
        raise ServiceError(f"{service.name}: not healthy after {service.timeout_s:.0f} s; "
                           f"see the log {log_file(service.name)}")
    if service.after_start:
        service.after_start()
    return f"{service.name}: started (pid {proc.pid})"


def _wait_healthy(service: Service, proc: psutil.Process, timeout_s: float) -> bool:
    return retry.until(service.health, retry.health(timeout_s),
                       give_up=lambda: not _running(proc))


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def _tree_groups(proc: psutil.Process) -> set[int]:
    """The service's process group and the groups of everything it started. A Prefect worker
    starts each flow run in a session of its own, so signalling the worker's group alone would
    leave its flow runs running, orphaned, after the worker stopped. A member of the service's
    group whose parent died (re-parented to init) still counts, with what it started."""
    pgid = _pgid(proc.pid)
    roots = {proc, *(p for p in psutil.process_iter() if pgid is not None and _pgid(p.pid) == pgid)}
    members = set(roots)
    for root in roots:
        try:
            members.update(root.children(recursive=True))
        except psutil.Error:
            pass
    return {g for g in map(_pgid, (p.pid for p in members)) if g is not None}


def _group_alive(pgid: int) -> bool:
    for proc in psutil.process_iter(["status"]):
        if proc.info["status"] != psutil.STATUS_ZOMBIE and _pgid(proc.pid) == pgid:
            return True
    return False


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
    lines, procs = [], {}
    for name in names:
        proc = owned(name)
        if proc is not None:
            procs[name] = proc
        elif pid_file(name).exists():
            # Never signal a process we cannot prove is ours: its PID may belong to anyone now.
            lines.append(f"{name}: not running (stale PID file for pid {recorded_pid(name)} "
                         "removed; that process, if any, was left alone)")
            pid_file(name).unlink(missing_ok=True)
    # The tree is read once, before any signal: a child whose parent died is re-parented
    # to init and could no longer be found from the service.
    groups = {n: _tree_groups(proc) for n, proc in procs.items()}
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
    for name, proc in procs.items():
        state_word = "still running!" if any(_group_alive(g) for g in groups[name]) \
            else "stopped"
        lines.append(f"{name}: {state_word} (pid {proc.pid})")
        if not _running(proc):
            pid_file(name).unlink(missing_ok=True)
    return lines
