"""Ray actors: generator actors (the model half of the engine) and an optional shared pool of reward actors.

The driver (`cluster.driver.RayJob`) launches them with `ray.remote(cls).options(num_cpus=..., num_gpus=...)`:
resources are declared where an actor is launched, never inside it. Each actor loads its models once in
its constructor and is freed with `shutdown()` before the driver kills it.

A generator actor hosts a `ttsvar.engine.Worker` and forwards the driver's calls to it unchanged, so the
Ray runtime and the local runtime run the same model code; the strategy never runs here.
"""

from __future__ import annotations

import logging
import os
import socket
from typing import Any

import numpy as np
import ray
import torch
from ray.exceptions import RayActorError

from ttsvar.config import JobConfig
from ttsvar.engine import Report, Selection, UnitImages, WorkUnit, score_images

log = logging.getLogger("ttsvar.cluster")


def _set_threads(job: JobConfig) -> int:
    """One torch thread per reserved CPU. CPU float32 matmuls give different low bits with different
    thread counts, so a local run with the same thread count writes byte-identical images."""
    n = max(1, int(job.runtime.cpus_per_actor))
    torch.set_num_threads(n)
    return n


def _import_plugins(job: JobConfig) -> None:
    """Import a 'package.module:object' reward's module before anything is built: such a module may also
    register the feature extractor the job names (the driver's imports do not reach actor processes)."""
    if ":" in job.reward.name:
        from rewards.registry import load_import_path

        load_import_path(job.reward.name)


def _where() -> dict:
    return {"pid": os.getpid(), "host": socket.gethostname(), "node_id": ray.get_runtime_context().get_node_id()}


# ----------------------------------------------------------------------------- reward pool


class RewardActor:
    """Holds one reward model and, built on first use, the job's clustering feature extractor.

    Generator actors call `score` and `extract` through `RewardPool`; arrays travel as numpy (CPU)."""

    def __init__(self, job: JobConfig):
        from ttsvar.jobs import build_reward_for

        self.job = job
        self.threads = _set_threads(job)
        _import_plugins(job)
        self.reward = build_reward_for(job)
        self.features = None

    def ready(self) -> dict:
        return {**_where(), "threads": self.threads}

    def score(self, images: np.ndarray, prompts: list[str], groups: np.ndarray | None) -> np.ndarray:
        return score_images(self.reward, torch.from_numpy(images), prompts, groups)

    def extract(self, images: np.ndarray) -> np.ndarray:
        if self.features is None:
            from rewards.features import create_features
            from ttsvar.jobs import features_name

            self.features = create_features(features_name(self.job), **self.job.search.features_opts)
        return np.asarray(self.features.extract(torch.from_numpy(images)), np.float32)

    def shutdown(self) -> None:
        self.reward = self.features = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()


class RewardPoolEmpty(RuntimeError):
    """Every reward actor of the pool has died: no unit can be scored any more, so the driver stops the job
    (instead of failing every remaining prompt in turn)."""


class RewardPool:
    """Round-robin client of the reward actors, used inside a generator actor. A dead reward actor is
    dropped from this client's list and the call goes to the next one."""

    def __init__(self, handles: list, start: int = 0):
        if not handles:
            raise ValueError("RewardPool needs at least one reward actor handle")
        self.handles = list(handles)
        self._next = start

    def call(self, method: str, *args: Any) -> np.ndarray:
        while self.handles:
            h = self.handles[self._next % len(self.handles)]
            self._next += 1
            try:
                return ray.get(getattr(h, method).remote(*args))
            except RayActorError as e:
                log.warning("a reward actor died (%s); %d left in the pool", e, len(self.handles) - 1)
                self.handles.remove(h)
        raise RewardPoolEmpty("every reward actor of the pool has died; re-run the job on the same output.dir "
                              "(finished prompts are kept)")


def _to_numpy(images: torch.Tensor) -> np.ndarray:
    return images.detach().to("cpu", torch.float32).numpy()


class PooledReward:
    """Stands in for a reward in `Worker`: same `score(images, prompts, groups)` method, served by the pool.
    The generator actor's `Worker` has already cut the call at group boundaries; the reward actor's
    `score_images` hands the groups on to the reward (a plain function gets none)."""

    def __init__(self, pool: RewardPool):
        self.pool = pool

    def score(self, images: torch.Tensor, prompts: list[str], groups: np.ndarray | None = None) -> np.ndarray:
        g = None if groups is None else np.asarray(groups)
        return self.pool.call("score", _to_numpy(images), list(prompts), g)


class PooledFeatures:
    """Stands in for a feature extractor in `Worker`: `extract(images) -> float32 [B, F]`, served by the pool."""

    def __init__(self, pool: RewardPool):
        self.pool = pool

    def extract(self, images: torch.Tensor) -> np.ndarray:
        return self.pool.call("extract", _to_numpy(images))


# ----------------------------------------------------------------------------- generator actor


class GeneratorActor:
    """One per GPU (or per CPU slot): loads the generator once, holds the state of its in-flight units.

    The driver calls `ready()` once, then per unit `start` -> `apply`... -> `collect` (or `drop` after a
    failure), exactly the `Worker` protocol; calls run one at a time in submission order, so while the
    driver decides one unit the actor is already computing another."""

    def __init__(self, job: JobConfig, reward_actors: list | None = None, index: int = 0):
        from ttsvar.jobs import build_components, make_worker

        self.threads = _set_threads(job)
        self.index = index
        _import_plugins(job)
        if reward_actors:  # the reward and feature models live in the pool: stand-ins call it
            pool = RewardPool(reward_actors, start=index)
            comp = build_components(job, reward=PooledReward(pool), features=PooledFeatures(pool))
        else:
            comp = build_components(job)
        self.comp, self.job = comp, job
        self.worker = make_worker(job, comp)
        self.device = str(getattr(comp.generator, "device", "?"))

    def ready(self) -> dict:
        """Called once by the driver: where this actor runs and the model's number of scales."""
        return {**_where(), "device": self.device, "threads": self.threads,
                "num_scales": self.worker.gen.num_scales}

    def check_prompts(self, prompts: list[str]) -> dict[str, str]:
        """prompt -> why this actor's text models cannot read it (`ttsvar.prompts.prompt_problems`); the driver
        asks the first ready actor before any unit starts."""
        from ttsvar.jobs import reward_config
        from ttsvar.prompts import prompt_problems

        return prompt_problems(self.comp, prompts, self.job.runtime.score_batch, reward_config(self.job).name)

    def start(self, unit: WorkUnit) -> Report:
        return self.worker.start(unit)

    def apply(self, selection: Selection) -> Report:
        return self.worker.apply(selection)

    def collect(self, unit_id: int, picks: dict[int, int], keep_all: bool) -> UnitImages:
        return self.worker.collect(unit_id, picks, keep_all)

    def drop(self, unit_id: int) -> None:
        self.worker.drop(unit_id)

    def shutdown(self) -> None:
        self.worker.units.clear()
        self.worker = self.comp = None
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
