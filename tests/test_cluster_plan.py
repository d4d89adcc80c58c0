"""Actor planning (no Ray instance needed: the cluster's resources are faked)."""

import pytest

pytest.importorskip("ray")

from cluster import ClusterError  # noqa: E402
from cluster import runtime as rt_mod  # noqa: E402
from ttsvar.config import RuntimeConfig  # noqa: E402


@pytest.fixture
def two_gpus(monkeypatch):
    monkeypatch.setattr(rt_mod.ray, "cluster_resources", lambda: {"CPU": 16.0, "GPU": 2.0})


def test_one_actor_per_gpu_by_default(two_gpus):
    plan = rt_mod.plan_actors(RuntimeConfig(kind="ray"), "auto")
    assert plan.use_gpu and plan.options["num_gpus"] == 1
    assert plan.generators == 2


def test_gpus_per_actor_packs_actors(two_gpus):
    plan = rt_mod.plan_actors(RuntimeConfig(kind="ray", gpus_per_actor=0.5), "auto")
    assert plan.options["num_gpus"] == 0.5
    assert plan.generators == 4


@pytest.mark.parametrize("bad", [0.0, -1.0, 1.5])
def test_bad_gpu_share_is_refused(two_gpus, bad):
    with pytest.raises(ClusterError, match="gpus_per_actor"):
        rt_mod.plan_actors(RuntimeConfig(kind="ray", gpus_per_actor=bad), "auto")


def test_cpu_model_on_a_gpu_cluster_uses_cpu_actors(two_gpus):
    plan = rt_mod.plan_actors(RuntimeConfig(kind="ray"), "cpu")
    assert not plan.use_gpu and plan.options["num_gpus"] == 0


def test_an_address_nobody_answers_on_is_refused_in_seconds_not_minutes():
    import socket
    import time

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t0 = time.perf_counter()
    with pytest.raises(ClusterError, match=rf"runtime.address='127.0.0.1:{port}': nothing answers on"):
        rt_mod.check_reachable(f"127.0.0.1:{port}")
    assert time.perf_counter() - t0 < 5
    rt_mod.check_reachable("auto")  # Ray's to find


def test_a_unit_whose_actor_died_runs_alone():
    """After a loss every unit of the dead actor is a suspect: it takes an idle actor and keeps it to itself,
    so its next death is blamed on it alone (cluster/failures.py)."""
    from cluster.scheduling import Scheduler
    from ttsvar.engine import WorkUnit

    sched = Scheduler(units_in_flight=2)
    a, b = sched.add_slot(), sched.add_slot()
    a.ready = b.ready = True
    units = [WorkUnit(i, [i], [f"p{i}"], [i]) for i in range(4)]
    sched.queue.extend(units)
    sched.suspects.add(0)
    slot, unit = sched.next_assignment()
    assert unit.unit_id == 0 and not slot.units
    sched.start(unit, slot)
    slot2, unit2 = sched.next_assignment()  # the other actor: the suspect keeps its own
    assert slot2 is not slot and unit2.unit_id == 1
    sched.start(unit2, slot2)
    slot3, unit3 = sched.next_assignment()
    assert slot3 is slot2 and unit3.unit_id == 2
    sched.start(unit3, slot3)
    assert sched.next_assignment() is None  # unit 3 waits: one actor is full, the other runs a suspect
    sched.finish(0)
    assert not sched.suspects and sched.next_assignment()[0] is slot


def test_an_actor_larger_than_the_local_machine_is_refused_at_once(monkeypatch):
    """On the Ray a job started on this machine no autoscaler can add a node: it used to wait 15 minutes."""
    monkeypatch.setattr(rt_mod.ray, "cluster_resources", lambda: {"CPU": 2.0})
    with pytest.raises(ClusterError, match=r"one actor needs 64 CPU / 0 GPU .* this machine has 2 CPU"):
        rt_mod.plan_actors(RuntimeConfig(kind="ray", cpus_per_actor=64), "cpu", local=True)
    rt_mod.plan_actors(RuntimeConfig(kind="ray", cpus_per_actor=64), "cpu")  # a cluster may still grow: a warning
    rt_mod.plan_actors(RuntimeConfig(kind="ray", actors=4), "cpu", local=True)  # each fits: they take turns


@pytest.mark.parametrize("address, message", [
    ("http://127.0.0.1:8265", "is not an address .an http:// URL is the dashboard's"),
    ("127.0.0.1:99999", r"port 99999 is not in \[1, 65535\]"),
    ("127.0.0.1", "is not an address: use auto, host:port"),
    ("ray://head", "is not an address"),
])
def test_a_malformed_address_is_refused_before_ray_starts(address, message):
    from ttsvar.config import load_config
    from ttsvar.core.errors import ConfigError

    with pytest.raises(ConfigError, match=rf"runtime.address={address!r} {message}" if "port" not in message
                       else message):
        load_config(None, ["runtime.kind=ray", f"runtime.address={address}"])
    for good in ("auto", "head-1.cluster:6379", "ray://10.0.0.2:10001", '"[::1]:6379"'):
        load_config(None, ["runtime.kind=ray", f"runtime.address={good}"])
    with pytest.raises(ConfigError, match="quote it"):
        load_config(None, ["runtime.kind=ray", "runtime.address=[::1]:6379"])


def test_a_gpu_share_on_cpu_actors_is_named_as_ignored(monkeypatch, caplog):
    monkeypatch.setattr(rt_mod.ray, "cluster_resources", lambda: {"CPU": 4.0})
    rt_mod.plan_actors(RuntimeConfig(kind="ray", gpus_per_actor=0.5), "auto")
    assert "runtime.gpus_per_actor=0.5 is ignored: the actors run on CPUs (the Ray cluster has no GPUs)" in caplog.text
