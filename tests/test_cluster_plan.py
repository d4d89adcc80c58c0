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
