"""Joining or starting Ray, and sizing the actors from the cluster's resources.

Called by the driver (`cluster.driver.RayJob.run`) once per job, before any actor starts.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import ray

from ttsvar.config import RuntimeConfig

from . import ClusterError

log = logging.getLogger("ttsvar.cluster")

LOOPBACK = "127.0.0.1"
# Ray's switch for a single-machine Ray (its default on macOS and Windows): every process of the node then
# binds and advertises the loopback address. Read at import (ray_constants) and by each Ray process.
_LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"
_watchdog: subprocess.Popen | None = None


@contextlib.contextmanager
def _loopback_only():
    """Start a local Ray whose node address and every port are on 127.0.0.1: its processes inherit the
    environment variable; the constant is read by this process's `ray.init`. Both are restored after."""
    from ray._private import ray_constants

    old_env = os.environ.get(_LOCAL_ONLY_ENV)
    old_const = getattr(ray_constants, "ENABLE_RAY_CLUSTER", None)
    os.environ[_LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        if old_env is None:
            os.environ.pop(_LOCAL_ONLY_ENV, None)
        else:
            os.environ[_LOCAL_ONLY_ENV] = old_env
        if old_const is not None:
            ray_constants.ENABLE_RAY_CLUSTER = old_const


def _session_dir() -> str:
    try:
        return str(ray._private.worker.global_worker.node.get_session_dir_path())
    except Exception:  # noqa: BLE001 - private API; the watchdog then matches `ray::` processes only
        return ""


def _start_watchdog() -> None:
    """After starting a local Ray: a process that stops its processes if this one dies without doing so."""
    global _watchdog
    session = _session_dir()
    if not Path("/proc/self/stat").exists():
        log.info("if this process is killed, stop the Ray it started (session %s) with `kill -9 -- -%d` "
                 "(its process group)", session or "?", os.getpgrp())
        return
    _watchdog = subprocess.Popen([sys.executable, str(Path(__file__).with_name("watchdog.py")), str(os.getpid()),
                                  session], stdin=subprocess.DEVNULL, start_new_session=True)
    log.info("local Ray on %s (session %s); watchdog pid %d stops it if this process dies", LOOPBACK, session,
             _watchdog.pid)


def check_reachable(address: str, timeout: float = 5.0) -> None:
    """A `host:port` (or `ray://host:port`) nobody answers on is a `ClusterError` within `timeout` seconds:
    `ray.init` itself retries for minutes before it gives up. `auto` (the cluster `ray start` left on this
    machine) is Ray's to find."""
    target = address.removeprefix("ray://")
    host, sep, port = target.rpartition(":")
    if address == "auto" or not sep or not port.isdigit():
        return
    try:
        socket.create_connection((host.strip("[]") or "127.0.0.1", int(port)), timeout=timeout).close()
    except OSError as e:
        raise ClusterError(f"cannot join the Ray cluster at runtime.address={address!r}: nothing answers on "
                           f"{host}:{port} ({e.strerror or type(e).__name__}). Start it with `ray start --head`, "
                           "check the address and firewall, or leave runtime.address unset to start a local Ray "
                           "on this machine") from None


def connect(rt: RuntimeConfig) -> bool:
    """Make sure this process is connected to Ray. Returns True if it started Ray (then it must stop it).

    Already connected (a test or a notebook called `ray.init`): use that connection as is.
    `runtime.address` None: start a new local Ray with the machine's resources, dashboard off (or, with
    `runtime.dashboard`, bound to 127.0.0.1). "auto" or "host:port" or "ray://host:port": join that cluster.
    The command line's SIGTERM handler (stop as on Ctrl-C) is put back after `ray.init` replaced it.
    """
    if ray.is_initialized():
        return False
    handler = signal.getsignal(signal.SIGTERM)
    try:
        return _connect(rt)
    finally:
        if getattr(handler, "ttsvar_terminate", False) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, handler)


def _connect(rt: RuntimeConfig) -> bool:
    level = logging.WARNING if rt.quiet else logging.INFO
    if rt.address:
        if rt.dashboard:
            log.warning("runtime.dashboard is ignored when joining a cluster (runtime.address=%s): the "
                        "cluster's head node decides whether it runs a dashboard", rt.address)
        check_reachable(rt.address)
        try:
            ray.init(address=rt.address, logging_level=level, log_to_driver=not rt.quiet)
        except (ConnectionError, ValueError, RuntimeError) as e:
            if "ray[client]" in str(e):
                raise ClusterError(f"runtime.address={rt.address!r} joins through Ray Client, which needs "
                                   "`pip install 'ray[client]'` here and on the head node; or run the job on "
                                   "the head node with runtime.address=auto") from e
            why = str(e).rstrip(".")
            raise ClusterError(
                f"cannot join the Ray cluster at runtime.address={rt.address!r}: {why}. Start one with "
                "`ray start --head` (and `ray start --address=<head>:6379` on the other nodes), or leave "
                "runtime.address unset to start a local Ray on this machine") from e
        return True
    kw: dict = {"include_dashboard": bool(rt.dashboard), "_node_ip_address": LOOPBACK}
    if rt.dashboard:
        kw["dashboard_host"] = LOOPBACK
    # "local" starts a new instance even if a `ray start` cluster runs here: address=None would join it.
    try:
        with _loopback_only():
            ray.init(address="local", logging_level=level, log_to_driver=not rt.quiet, **kw)
    except Exception as e:
        if rt.dashboard and "missing packages" in str(e):
            raise ClusterError("runtime.dashboard=true needs the Ray dashboard's packages: "
                               "`pip install 'ray[default]'`, or leave runtime.dashboard=false") from e
        raise
    ip = ray.util.get_node_ip_address()
    if ip != LOOPBACK:
        log.warning("the local Ray advertises %s, not %s: its ports may be reachable from the network", ip, LOOPBACK)
    _start_watchdog()
    return True


def disconnect(started: bool) -> None:
    global _watchdog
    if started and ray.is_initialized():
        ray.shutdown()
    if started and _watchdog is not None:
        _watchdog.terminate()
        try:
            _watchdog.wait(timeout=10)
        except subprocess.TimeoutExpired:
            _watchdog.kill()
        _watchdog = None


@dataclass
class ActorPlan:
    """How many actors to start and what each reserves (Ray resource options)."""

    generators: int
    reward_actors: int
    use_gpu: bool
    options: dict  # ray .options(...) for each actor: num_cpus, num_gpus

    def __str__(self) -> str:
        kind = "GPU" if self.use_gpu else "CPU"
        pool = f" + {self.reward_actors} reward actor(s)" if self.reward_actors else ""
        return f"{self.generators} generator actor(s){pool}, each {self.options} ({kind})"


def plan_actors(rt: RuntimeConfig, model_device: str, local: bool = False) -> ActorPlan:
    """Actor count and resources. One generator actor per GPU (minus the reward actors, which take a GPU
    each), or one on a CPU-only cluster; `runtime.actors` overrides the count. `model.device=cpu` runs
    CPU actors even on a GPU cluster. `local`: the Ray is the one this job started on this machine (no
    autoscaler can add a node), so an actor larger than the machine is refused at once."""
    total = ray.cluster_resources()
    gpus = int(total.get("GPU", 0))
    cpus = float(total.get("CPU", 0))
    if model_device.startswith("cuda") and gpus == 0:
        raise ClusterError(f"model.device={model_device!r} but the Ray cluster has no GPUs "
                           f"(resources: {dict(total)}); use model.device=auto or cpu")
    if model_device.startswith("cuda:") and model_device != "cuda:0":
        raise ClusterError(f"model.device={model_device!r}: on Ray each actor sees only its own GPU (as cuda:0); "
                           "use model.device=auto or cuda")
    use_gpu = gpus > 0 and model_device != "cpu"
    if not use_gpu and float(rt.gpus_per_actor) != 1.0:  # set on purpose, and it will not apply
        log.warning("runtime.gpus_per_actor=%s is ignored: the actors run on CPUs (%s)", rt.gpus_per_actor,
                    "model.device=cpu" if gpus else "the Ray cluster has no GPUs")
    n_reward = int(rt.reward_actors)
    if n_reward < 0:
        raise ClusterError(f"runtime.reward_actors must be >= 0, got {n_reward}")
    gpa = float(rt.gpus_per_actor)
    if not 0 < gpa <= 1 and not (gpa > 1 and gpa.is_integer()):
        raise ClusterError(f"runtime.gpus_per_actor must be in (0, 1] or a whole number, got {gpa}")
    if rt.actors is not None:
        n = int(rt.actors)
    else:  # as many actors as fit on the GPUs (several per GPU when gpus_per_actor < 1)
        n = max(1, int((gpus - n_reward * gpa) // gpa)) if use_gpu else 1
    if rt.cpus_per_actor <= 0:
        raise ClusterError(f"runtime.cpus_per_actor must be > 0, got {rt.cpus_per_actor}")
    options = {"num_cpus": float(rt.cpus_per_actor), "num_gpus": gpa if use_gpu else 0}
    plan = ActorPlan(n, n_reward, use_gpu, options)
    if local and (rt.cpus_per_actor > cpus or (use_gpu and gpa > gpus)):
        raise ClusterError(f"one actor needs {rt.cpus_per_actor:.4g} CPU / {gpa if use_gpu else 0:.4g} GPU "
                           f"(runtime.cpus_per_actor, runtime.gpus_per_actor) but this machine has {cpus:.4g} CPU / "
                           f"{gpus} GPU: lower them, or join a larger cluster with runtime.address")
    need_cpu = (n + n_reward) * rt.cpus_per_actor
    need_gpu = (n + n_reward) * gpa if use_gpu else 0
    if need_cpu > cpus or need_gpu > gpus:
        log.warning("%s need %.4g CPU / %.4g GPU but the cluster has %.4g CPU / %d GPU: the others start when "
                    "resources free up (or an autoscaler adds nodes)", plan, need_cpu, need_gpu,
                    cpus, gpus)
    return plan
