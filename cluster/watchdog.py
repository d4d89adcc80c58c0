"""Stops the Ray processes a driver started when the driver dies without stopping them (kill -9, a crash).

`cluster.runtime.connect` starts it, after starting a local Ray, as a separate process in its own session
(so that killing the driver's process group does not kill it too):

    python cluster/watchdog.py <driver pid> <Ray session dir>

Every half second it records the driver's descendant processes that belong to that Ray (their command line
names the session dir, or starts with `ray::`: workers, actors, agents), with their start times. When the
driver is gone it sends SIGTERM, then SIGKILL, to each recorded process that is still the same process, and
exits. After a normal `ray.shutdown`, `cluster.runtime.disconnect` sends it SIGTERM: it then stops whatever
of that Ray is still running and exits. Linux only (reads /proc); standard library only, so that it starts
fast and imports nothing of the job.
"""

from __future__ import annotations

import os
import signal
import sys
import time

POLL_S = 0.5
TERM_GRACE_S = 3.0


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time in clock ticks) of a live, non-zombie process, else None."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
    except OSError:
        return None
    fields = data[data.rfind(")") + 2:].split()  # after "pid (comm) "
    if not fields or fields[0] in ("Z", "X"):
        return None
    return int(fields[1]), int(fields[19])


def _cmdline(pid: int) -> str:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().replace(b"\0", b" ").decode("utf-8", "replace")
    except OSError:
        return ""


def ray_descendants(root: int, session_dir: str) -> dict[int, int]:
    """pid -> start time of the descendants of `root` that belong to the Ray session `session_dir`."""
    children: dict[int, list[int]] = {}
    starts: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        st = _stat(int(name))
        if st is not None:
            children.setdefault(st[0], []).append(int(name))
            starts[int(name)] = st[1]
    out, todo, me = {}, list(children.get(root, [])), os.getpid()
    while todo:
        pid = todo.pop()
        todo.extend(children.get(pid, []))
        if pid == me:  # the watchdog is a child of the driver too
            continue
        cmd = _cmdline(pid)
        if cmd.startswith("ray::") or (session_dir and session_dir in cmd):
            out[pid] = starts[pid]
    return out


def _same(pid: int, start: int) -> bool:
    st = _stat(pid)
    return st is not None and st[1] == start


def stop(procs: dict[int, int]) -> list[int]:
    """SIGTERM, then SIGKILL after a grace period, to each (pid, start time) that is still that process."""
    live = {p: s for p, s in procs.items() if _same(p, s)}
    for pid in live:
        try:
            os.kill(pid, signal.SIGTERM)
        except OSError:
            pass
    deadline = time.monotonic() + TERM_GRACE_S
    while time.monotonic() < deadline and any(_same(p, s) for p, s in live.items()):
        time.sleep(0.1)
    for pid, start in live.items():
        if _same(pid, start):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return sorted(live)


def main(argv: list[str]) -> int:
    driver, session_dir = int(argv[0]), argv[1] if len(argv) > 1 else ""
    for sig in (signal.SIGINT, signal.SIGHUP):  # Ctrl-C in the driver's terminal is the driver's to handle
        signal.signal(sig, signal.SIG_IGN)
    done = []
    signal.signal(signal.SIGTERM, lambda *_: done.append(True))  # the driver shut Ray down: final sweep
    first = _stat(driver)
    if first is None:
        return 0
    known: dict[int, int] = {}
    while not done and _same(driver, first[1]):
        known = {p: s for p, s in known.items() if _same(p, s)}
        known.update(ray_descendants(driver, session_dir))
        time.sleep(POLL_S)
    stopped = stop(known)
    if stopped and not done:
        print(f"ttsvar watchdog: driver {driver} died; stopped its Ray processes {stopped}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
