"""The Ray driver: schedules work units onto generator actors and applies the search decisions.

One `RayJob` per job, in the process that called `run_job` (the driver). Its loop is

    assign queued units to actors with free slots  ->  wait for any actor message  ->  handle it

and each message is one step of the engine protocol (`ttsvar.engine`): a `Report` is answered with
`Coordinator.decide` (a `Selection` goes back to the same actor) or, when final, with `Coordinator.pick`
and a `collect` call; the collected `UnitImages` go to the job's single `ResultWriter`. Every actor holds
up to `runtime.units_in_flight` units, and a Ray actor runs its calls one at a time in submission order,
so while the driver decides for one unit the actor is already computing another.

Failures (all bounded, none silent):
* an actor that dies (process killed, node removed): its unfinished units go back to the front of the
  queue and re-run from the start on another actor; a replacement actor is launched. A unit that has
  lost its actor `MAX_ACTOR_LOSSES` times is recorded as failed (it may be what kills the actors).
* an exception inside a unit (raised in the actor, or by the strategy here): the unit is dropped; a unit of
  several prompts is re-queued as one unit per prompt (a bad prompt costs only itself), a single prompt is
  re-run up to `runtime.retries` times if the error can be transient (`ttsvar.core.errors.is_transient`) and
  then recorded as failed with the error.
* an actor whose constructor raises before any actor has started: a config error, raised at once.

Before any actor starts, the driver checks what needs no model (`ttsvar.jobs.preflight`, `open_output`); the
first actor that is ready checks every prompt against the job's text models (`check_prompts`).
"""

from __future__ import annotations

import logging
import time
import traceback
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import ray
from ray.exceptions import RayError, RayTaskError

from search.registry import build_strategy
from ttsvar.config import JobConfig
from ttsvar.core.errors import is_transient
from ttsvar.engine import Coordinator, Report, WorkUnit, make_units, split_unit
from ttsvar.jobs import ResultWriter, check_prompts, job_items, preflight, reward_scale_for
from ttsvar.progress import progress_bar

from . import ClusterError
from .actors import GeneratorActor, RewardActor
from .runtime import ActorPlan, connect, disconnect, plan_actors

log = logging.getLogger("ttsvar.cluster")

MAX_ACTOR_LOSSES = 3  # a unit whose actor died this often is recorded as failed instead of re-run again
START_TIMEOUT_S = 900.0  # no generator actor alive and ready for this long: give up (resources never came)
WAIT_POLL_S = 2.0  # how often the loop wakes up without a message, to check the timeout above


@dataclass
class ActorSlot:
    """The driver's record of one generator actor: which units it holds, whether it is up."""

    index: int
    handle: Any
    ready: bool = False
    dead: bool = False
    pid: int | None = None
    host: str | None = None
    node_id: str | None = None
    units: set[int] = field(default_factory=set)


@dataclass
class Flight:
    """A unit being run: on which actor, and (once its final report came) the picks awaiting images."""

    unit: WorkUnit
    slot: ActorSlot
    reports: int = 0  # reports received so far (0: the actor has not reached the first decision scale)
    final: Report | None = None
    picks: dict[int, int] | None = None


def _check_one_to_one(unit: WorkUnit, unit_id: int, prompt_indices: list[int], what: str) -> None:
    """Every prompt of the unit comes back exactly once, and nothing else (a protocol bug, not a data error)."""
    if unit_id != unit.unit_id or sorted(prompt_indices) != sorted(unit.prompt_indices):
        raise ValueError(f"actor returned {what} for unit {unit_id} with prompts {sorted(prompt_indices)}; "
                         f"expected unit {unit.unit_id} with prompts {sorted(unit.prompt_indices)}")


def _last_line(e: BaseException) -> str:
    lines = [x for x in str(e).strip().splitlines() if x.strip()]
    return lines[-1].strip() if lines else type(e).__name__


def _error_text(e: BaseException) -> str:
    """A short error for the manifest: the end of the (remote) traceback, ending with the exception line."""
    if isinstance(e, RayTaskError):
        lines = [x for x in str(e).strip().splitlines() if x.strip()]
        return "\n".join(lines[-8:])
    return "".join(traceback.format_exception(type(e), e, e.__traceback__, limit=3))


def _start_error(who: str, check: str, e: BaseException) -> ClusterError:
    """An actor constructor's error: one line (its last line), the actor's traceback as `detail` (`--debug`)."""
    err = ClusterError(f"{who} could not start: {_last_line(e)} (check {check}; --debug shows the actor's "
                       "traceback)")
    err.detail = str(e)
    return err


class RayJob:
    """Runs one job on Ray. `run()` connects (or starts Ray), launches actors, drives the units, cleans up."""

    def __init__(self, job: JobConfig, on_event: Callable[[RayJob], None] | None = None):
        self.job, self.rt, self.on_event = job, job.runtime, on_event
        self.slots: list[ActorSlot] = []
        self.reward_handles: list = []
        self.pending: dict[Any, tuple[str, ActorSlot | None, int | None]] = {}  # ref -> (kind, slot, unit)
        self.flights: dict[int, Flight] = {}
        self.queue: deque[WorkUnit] = deque()
        self.failures: dict[int, int] = {}
        self.losses: dict[int, int] = {}
        self.coord: Coordinator | None = None
        self.num_scales: int | None = None
        self.latency: list[float] = []  # report arrived -> selection sent, per decision
        self.decide_calls = 0  # Coordinator.decide / pick calls (one per report: a unit at one scale)
        self.units_retried = self.units_requeued = self.actors_restarted = 0
        self.last_loss = ""
        self.reward_actors_ready = 0
        self.total = 0
        self.writer: ResultWriter | None = None
        self.plan: ActorPlan | None = None
        self.t_start = self.t_first_ready = None  # perf_counter at launch / when the first actor was ready
        self.connect_s = 0.0
        self._no_actor_since = time.monotonic()
        self.todo: list = []
        self.next_uid = 0

    # -- job ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        t0 = time.perf_counter()
        items = job_items(self.job)
        preflight(self.job)
        self.writer = writer = ResultWriter(self.job, items)
        try:
            return self._run(writer, items, t0)
        finally:
            writer.close()

    def _run(self, writer: ResultWriter, items: list, t0: float) -> dict:
        self.todo = todo = writer.pending()
        skipped = len(items) - len(todo)
        self.total = len(todo)
        extra = {"runtime": "ray", "skipped_done": skipped, "output_dir": str(writer.out.root)}
        if not todo:
            return writer.summary(time.perf_counter() - t0, {**extra, "actors": 0})
        units = make_units([it.index for it in todo], [it.prompt for it in todo], self.job.seed,
                           self.rt.prompts_per_unit)
        self.queue.extend(units)
        self.next_uid = len(units)
        t = time.perf_counter()
        started = connect(self.rt)
        self.connect_s = time.perf_counter() - t
        self.bar = progress_bar(len(todo), self.rt.quiet)
        try:
            self.plan = plan_actors(self.rt, self.job.model.device)
            log.info("ttsvar on Ray: %s", self.plan)
            self.t_start = time.perf_counter()
            self._launch_reward_actors()
            for _ in range(self.plan.generators):
                self._launch()
            self._no_actor_since = time.monotonic()
            while self.queue or self.flights:
                self._assign()
                self._step()
        finally:
            self.bar.close()
            self._stop_actors()
            disconnect(started)
        wall = time.perf_counter() - t0
        return writer.summary(wall, {**extra, **self._stats(len(units))})

    def _stats(self, n_units: int) -> dict:
        lat = np.asarray(self.latency) * 1e3
        coord = self.coord
        n_dec = self.decide_calls
        return {
            "actors": self.plan.generators, "reward_actors": self.plan.reward_actors,
            "actors_started": len(self.slots), "actors_restarted": self.actors_restarted,
            "actor_hosts": sorted({s.host for s in self.slots if s.host}),
            "ray_connect_s": round(self.connect_s, 3),
            "actor_start_s": round(self.t_first_ready - self.t_start, 3) if self.t_first_ready else None,
            "units": n_units, "units_retried": self.units_retried, "units_requeued": self.units_requeued,
            "time_decide": round(coord.time_decide, 4) if coord else 0.0,
            "decide_ms_per_call": round(coord.time_decide * 1e3 / n_dec, 4) if n_dec else None,
            "coordinator_latency_ms": None if not len(lat) else {
                "mean": round(float(lat.mean()), 4), "p50": round(float(np.median(lat)), 4),
                "p95": round(float(np.percentile(lat, 95)), 4), "max": round(float(lat.max()), 4),
                "decisions": int(len(lat))},
        }

    # -- actors -------------------------------------------------------------------------------------

    def _launch_reward_actors(self) -> None:
        cls = ray.remote(RewardActor).options(**self.plan.options, max_restarts=0)
        for _ in range(self.plan.reward_actors):
            h = cls.remote(self.job)
            self.reward_handles.append(h)
            self.pending[h.ready.remote()] = ("reward_ready", None, None)

    def _launch(self) -> ActorSlot:
        cls = ray.remote(GeneratorActor).options(**self.plan.options, max_restarts=0, max_concurrency=1)
        slot = ActorSlot(len(self.slots), None)
        slot.handle = cls.remote(self.job, self.reward_handles or None, slot.index)
        self.slots.append(slot)
        self.pending[slot.handle.ready.remote()] = ("ready", slot, None)
        return slot

    def _live(self) -> list[ActorSlot]:
        return [s for s in self.slots if s.ready and not s.dead]

    def _can_work(self) -> bool:
        """Some generator actor is up, and so is a reward actor if the job uses a pool (else the generator
        actors would block on their first score call)."""
        return bool(self._live()) and (not self.plan.reward_actors or self.reward_actors_ready > 0)

    def _stop_actors(self) -> None:
        # idle actors free their models first (GPU memory on a shared cluster); busy ones (the job stopped on
        # an error) would run their queued units before a shutdown call, so they are only killed
        live = [s.handle for s in self._live() if not s.units] + self.reward_handles
        if live:
            try:
                ray.get([h.shutdown.remote() for h in live], timeout=30)
            except (RayError, TimeoutError) as e:
                log.debug("shutdown of some actors failed: %s", e)
        for h in [s.handle for s in self.slots] + self.reward_handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception as e:  # noqa: BLE001 - best-effort cleanup
                log.debug("kill failed: %s", e)

    # -- scheduling ---------------------------------------------------------------------------------

    def _assign(self) -> None:
        """Fill every ready actor up to `units_in_flight` units, least loaded first."""
        if self.coord is None or not self._can_work():
            return
        while self.queue:
            free = [s for s in self._live() if len(s.units) < self.rt.units_in_flight]
            if not free:
                return
            slot = min(free, key=lambda s: (len(s.units), s.index))
            unit = self.queue.popleft()
            self.coord.begin(unit)
            self.flights[unit.unit_id] = Flight(unit, slot)
            slot.units.add(unit.unit_id)
            self.pending[slot.handle.start.remote(unit)] = ("report", slot, unit.unit_id)

    def _step(self) -> None:
        if not self.pending:
            raise ClusterError(f"no generator actor is left to run {len(self.queue)} queued unit(s) "
                               f"({self.actors_restarted} replacement(s) were started; last loss: "
                               f"{self.last_loss}). Finished prompts are in the manifest; re-run the same "
                               "job to finish the rest")
        done, _ = ray.wait(list(self.pending), num_returns=1, timeout=WAIT_POLL_S)
        arrived = time.perf_counter()
        if not done:
            if self._can_work():
                self._no_actor_since = time.monotonic()
            elif time.monotonic() - self._no_actor_since > START_TIMEOUT_S:
                raise ClusterError(
                    f"no generator actor (or, with a pool, no reward actor) has been up for "
                    f"{START_TIMEOUT_S:.0f} s: the cluster cannot place {self.plan} (free now: "
                    f"{ray.available_resources()}). Lower runtime.actors / runtime.cpus_per_actor or add nodes")
            return
        ref = done[0]
        kind, slot, uid = self.pending.pop(ref)
        {"ready": self._on_ready, "reward_ready": self._on_reward_ready, "report": self._on_report,
         "images": self._on_images}[kind](ref, slot, uid, arrived)
        self.bar.set_postfix(actors=len(self._live()), refresh=False)
        if self.on_event is not None:
            self.on_event(self)

    def _get(self, ref, slot: ActorSlot, uid: int | None):
        """ray.get that turns failures into the right recovery: returns (ok, value)."""
        try:
            return True, ray.get(ref)
        except RayTaskError as e:  # the unit raised inside a live actor
            self._unit_failed(uid, e)
        except RayError as e:  # the actor (or its node) is gone
            self._lost(slot, e)
        return False, None

    def _on_ready(self, ref, slot: ActorSlot, uid, arrived) -> None:
        try:
            info = ray.get(ref)
        except RayError as e:
            if getattr(e, "actor_init_failed", False) and not any(s.ready for s in self.slots):
                raise _start_error(f"generator actor {slot.index}", "the job config and weights", e) from None
            self._lost(slot, e)
            return
        if self.num_scales is None:
            self.t_first_ready = time.perf_counter()
            self.num_scales = info["num_scales"]
            strategy = build_strategy(self.job.search)
            plan = strategy.plan(self.num_scales, self.job.search.n)
            self.coord = Coordinator(strategy, plan, reward_scale_for(self.job, plan))
            problems = ray.get(slot.handle.check_prompts.remote([it.prompt for it in self.todo]))
            check_prompts(self.job, self.todo, problems)  # raises PromptError listing every bad line
        elif info["num_scales"] != self.num_scales:
            raise ClusterError(f"actor {slot.index} on {info['host']} loaded a model with {info['num_scales']} "
                               f"scales, the others {self.num_scales}: every node must have the same weights")
        slot.ready, slot.pid, slot.host, slot.node_id = True, info["pid"], info["host"], info["node_id"]
        log.info("generator actor %d ready: pid %s on %s (%s, %d threads)", slot.index, slot.pid, slot.host,
                 info["device"], info["threads"])

    def _on_reward_ready(self, ref, slot, uid, arrived) -> None:
        try:
            info = ray.get(ref)
        except RayError as e:
            raise _start_error("a reward actor", "the reward config", e) from None
        self.reward_actors_ready += 1
        log.info("reward actor ready: pid %s on %s", info["pid"], info["host"])

    def _on_report(self, ref, slot: ActorSlot, uid: int, arrived: float) -> None:
        ok, rep = self._get(ref, slot, uid)
        if not ok:
            return
        fl = self.flights[uid]
        fl.reports += 1
        self.decide_calls += 1
        try:
            _check_one_to_one(fl.unit, rep.unit_id, [g.prompt_index for g in rep.groups], "report")
            if rep.final:
                fl.final, fl.picks = rep, self.coord.pick(rep)
                nxt = slot.handle.collect.remote(uid, fl.picks, self.job.output.save_candidates)
                self.pending[nxt] = ("images", slot, uid)
            else:
                sel = self.coord.decide(rep)
                self.pending[slot.handle.apply.remote(sel)] = ("report", slot, uid)
                self.latency.append(time.perf_counter() - arrived)
        except Exception as e:  # noqa: BLE001 - a strategy error fails this unit, the job goes on
            self._unit_failed(uid, e)

    def _on_images(self, ref, slot: ActorSlot, uid: int, arrived) -> None:
        ok, images = self._get(ref, slot, uid)
        if not ok:
            return
        try:
            _check_one_to_one(self.flights[uid].unit, images.unit_id, list(images.images), "images")
        except ValueError as e:
            self._unit_failed(uid, e)
            return
        fl = self.flights.pop(uid)
        slot.units.discard(uid)
        self.writer.write_unit(self.coord, fl.final, fl.picks, images)
        self.bar.update(len(fl.unit.prompt_indices))

    # -- failures -----------------------------------------------------------------------------------

    def _forget(self, uid: int) -> WorkUnit:
        fl = self.flights.pop(uid)
        fl.slot.units.discard(uid)
        for p in fl.unit.prompt_indices:
            self.coord.groups.pop(p, None)
        return fl.unit

    def _give_up(self, unit: WorkUnit, error: str) -> None:
        self.writer.write_failure(unit, error)
        self.bar.update(len(unit.prompt_indices))

    def _unit_failed(self, uid: int, e: BaseException) -> None:
        slot = self.flights[uid].slot
        unit = self._forget(uid)
        if not slot.dead:
            slot.handle.drop.remote(uid)  # free the unit's state; nothing waits on this
        for ref, (_, _, u) in list(self.pending.items()):
            if u == uid:
                del self.pending[ref]
        err = _error_text(e)
        if len(unit.prompt_indices) > 1:  # find the prompt(s) at fault: each runs alone
            singles = split_unit(unit, self.next_uid)
            self.next_uid += len(singles)
            log.warning("unit %d (prompts %s) failed (%s); running its prompts one by one", uid, unit.prompt_indices,
                        err.splitlines()[-1] if err else "")
            self.queue.extendleft(reversed(singles))
            return
        n = self.failures[uid] = self.failures.get(uid, 0) + 1
        if n > self.rt.retries or not is_transient(e):
            log.error("prompt %d failed%s; recorded as failed: %s", unit.prompt_indices[0],
                      f" {n} times" if n > 1 else "", err.splitlines()[-1] if err else "")
            self.writer.write_failure(unit, err, e)
            self.bar.update(len(unit.prompt_indices))
        else:
            log.warning("unit %d failed (attempt %d of %d), re-queued: %s", uid, n, self.rt.retries + 1,
                        err.splitlines()[-1] if err else "")
            self.units_retried += 1
            self.queue.append(unit)

    def _lost(self, slot: ActorSlot, e: BaseException) -> None:
        """An actor is gone: re-queue its units from the start, forget its messages, launch a replacement."""
        if slot.dead:
            return
        slot.dead = True
        where = f"pid {slot.pid} on {slot.host}" if slot.ready else "not started yet"
        self.last_loss = f"generator actor {slot.index} ({where}): {_last_line(e)}"
        log.warning("lost %s", self.last_loss)
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        for ref, (_, s, _) in list(self.pending.items()):
            if s is slot:
                del self.pending[ref]
        for uid in sorted(slot.units, reverse=True):
            unit = self._forget(uid)
            n = self.losses[uid] = self.losses.get(uid, 0) + 1
            if n >= MAX_ACTOR_LOSSES:
                self._give_up(unit, f"the actor running this unit died {n} times (last: {e})")
            else:
                self.units_requeued += 1
                self.queue.appendleft(unit)
        if self.actors_restarted < max(3, 2 * self.plan.generators):
            self.actors_restarted += 1
            self._launch()
        if not self._can_work():
            self._no_actor_since = time.monotonic()
