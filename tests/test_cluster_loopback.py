"""The local Ray a job starts listens on 127.0.0.1 only, and nothing of it outlives a SIGKILLed driver.

`ttsvar run ... runtime.kind=ray` runs in a subprocess (it starts its own Ray). While its actor works, every
listening TCP socket of the driver and of its Ray processes (GCS, raylet, agents, workers) must be on a
loopback address. Then the driver alone is SIGKILLed: the watchdog it started stops the rest within seconds.
Linux only (reads /proc).
"""

import ipaddress
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cluster.watchdog import _same, ray_descendants

pytestmark = [pytest.mark.slow, pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="needs Linux /proc")]

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent


def _addr(hex_addr: str) -> str:
    """/proc/net/tcp{,6} address (little-endian 32-bit words in hex) -> text."""
    raw = bytes.fromhex(hex_addr)
    words = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))
    return str(ipaddress.ip_address(words))


def listening(pids: set[int]) -> list[tuple[int, str, int]]:
    """(pid, address, port) of every listening TCP socket the processes `pids` hold."""
    inodes: dict[str, tuple[str, int]] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            f = line.split()
            if f[3] == "0A":  # LISTEN
                host, port = f[1].split(":")
                inodes[f[9]] = (_addr(host), int(port, 16))
    out = []
    for pid in pids:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if target.startswith("socket:[") and target[8:-1] in inodes:
                out.append((pid, *inodes[target[8:-1]]))
    return out


def is_loopback(addr: str) -> bool:
    ip = ipaddress.ip_address(addr)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def test_local_ray_listens_on_loopback_only_and_dies_with_its_driver(tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a photo of a red circle\na photo of two blue squares\n" * 20)
    args = [f"prompts={prompts}", f"output.dir={tmp_path / 'out'}", "runtime.kind=ray", "runtime.quiet=true",
            "search.strategy=tts-var", "search.n=2", "runtime.prompts_per_unit=1",
            "reward.name=helpers_components:redness", "search.features=test-pixels"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(TESTS)])}
    proc = subprocess.Popen([sys.executable, "-m", "ttsvar.cli", "run", *args], cwd=ROOT, env=env,
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ray_procs: dict[int, int] = {}
    try:
        t0 = time.monotonic()
        while True:  # until a unit is on disk: every Ray process is up (an actor is working)
            assert proc.poll() is None, f"driver exited early: {proc.stderr.read().decode()[-2000:]}"
            assert time.monotonic() - t0 < 180, "no prompt finished in time"
            ray_procs.update(ray_descendants(proc.pid, "session_"))
            manifest = tmp_path / "out" / "manifest.jsonl"
            if manifest.exists() and manifest.read_text().count("\n") >= 1:
                break
            time.sleep(0.2)
        ray_procs.update(ray_descendants(proc.pid, "session_"))
        socks = listening({proc.pid, *ray_procs})
        assert len(socks) >= 3, f"expected the GCS, the raylet and the workers to listen, found {socks}"
        exposed = [s for s in socks if not is_loopback(s[1])]
        assert not exposed, f"listening on non-loopback addresses: {exposed}"
    finally:
        os.kill(proc.pid, signal.SIGKILL)  # the driver alone, as a crash would
        proc.wait()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline and any(_same(p, s) for p, s in ray_procs.items()):
        time.sleep(0.2)
    left = [p for p, s in ray_procs.items() if _same(p, s)]
    try:
        assert not left, f"Ray processes left after the driver was killed: {left}"
    finally:
        for p in left:  # clean up anyway (only the processes this test's driver started)
            os.kill(p, signal.SIGKILL)
