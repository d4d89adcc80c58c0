"""Multi-node simulation (`ray.cluster_utils.Cluster`): a job joins an existing cluster by its address
(`runtime.address=host:port`), one generator actor per node, and a worker node is removed while its
actor is in the middle of a unit. Specification: no prompt is lost or duplicated, and the images are those of the
local runtime.
"""

import os
import time

import helpers_components  # noqa: F401 - registers the test-pixels features in this process
import pytest
import ray
import torch
from ray.cluster_utils import Cluster
from test_cluster import PROMPTS, PYTHONPATH, assert_same_results, make_job, read_outputs

from cluster import run_ray_job
from ttsvar.jobs import run_job

pytestmark = pytest.mark.slow
SLOW_ENV = "TTSVAR_TEST_SLOW_NODE"


def redness_slow_on_marked_node(images, prompts):
    """`redness`; on the node started with TTSVAR_TEST_SLOW_NODE=1 every call first sleeps 0.7 s, so that
    node's units outlast the ~2 s Ray takes to notice that the node is gone, on any machine."""
    if os.environ.get(SLOW_ENV):
        time.sleep(0.7)
    return helpers_components.redness(images, prompts)


@pytest.fixture(scope="module")
def two_nodes():
    """A head and a worker node with 1 CPU each. Nodes are processes started from here: they inherit
    PYTHONPATH, so actors import the helper reward. Fast health checks: a removed node is noticed in ~1 s."""
    old = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = PYTHONPATH
    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": 1, "include_dashboard": False,
        "_system_config": {"health_check_period_ms": 300, "health_check_failure_threshold": 3}})
    worker = cluster.add_node(num_cpus=1, env_vars={SLOW_ENV: "1"})
    cluster.wait_for_nodes()
    try:
        yield cluster, worker
    finally:
        if ray.is_initialized():
            ray.shutdown()
        cluster.shutdown()
        if old is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = old


def test_node_removed_mid_unit(two_nodes, tmp_path):
    cluster, worker = two_nodes
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("\n".join(PROMPTS) + "\n")
    assert torch.get_num_threads() == 1
    run_job(make_job(prompts, tmp_path / "local", "runtime.prompts_per_unit=1"))
    reference = read_outputs(tmp_path / "local")

    removed = []

    def remove_worker_node(rj):
        # the first actor to be ready would otherwise take every unit while the other node is still importing
        # torch (a busy 2-core machine can take seconds longer for one node): hold the job until both are up
        # by waiting for the other actor's (idempotent) ready call before the driver assigns any unit
        waiting = [s.handle for s in rj.slots if not s.ready and not s.dead]
        if len(rj.slots) == 2 and len(waiting) == 1 and not rj.flights:
            ray.get(waiting[0].ready.remote(), timeout=300)
        # remove the worker node as soon as its actor has sent a unit to the first reward scale: that unit
        # and the one queued behind it still need 3 slow reward calls each, so the actor cannot finish them
        # before Ray notices the node is gone, on any machine
        on_worker = [s for s in rj.slots if s.node_id == worker.node_id and not s.dead]
        if not removed and any(rj.flights[u].reports == 2 for s in on_worker for u in s.units):
            removed.append(sorted(u for s in on_worker for u in s.units))
            cluster.remove_node(worker, allow_graceful=False)

    out = tmp_path / "ray"
    job = make_job(prompts, out, "runtime.kind=ray", f"runtime.address={cluster.address}", "runtime.actors=2",
                   "runtime.prompts_per_unit=1", "reward.name=test_cluster_nodes:redness_slow_on_marked_node")
    s = run_ray_job(job, on_event=remove_worker_node)
    assert not ray.is_initialized(), "the driver must disconnect from a cluster it joined"
    assert removed, "the worker node's actor never reached a reward scale"
    assert s["actors_started"] == 3  # 2 + 1 replacement (never placed: the head's CPU is taken)
    assert s["units_requeued"] == len(removed[0]) and (s["prompts_ok"], s["prompts_failed"]) == (6, 0)
    assert_same_results(out, reference)
