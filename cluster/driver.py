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
  (The retry policy of both runtimes is `ttsvar.engine.Coordinator.fail` / `lost`.)
* an exception inside a unit (raised in the actor, or by the strategy here): the unit is dropped; a unit of
  several prompts is re-queued as one unit per prompt (a bad prompt costs only itself), a single prompt is
  re-run up to `runtime.retries` times if the error can be transient (`ttsvar.core.errors.is_transient`) and
  then recorded as failed with the error.
* an actor whose constructor raises before any actor has started: a config error, raised at once.

Before any actor starts, the driver prepares the job exactly as the local runtime does (`ttsvar.jobs.prepare_job`:
checks that need no model, output.dir, the units); the first actor that is ready checks every prompt against the
job's text models (`check_prompts`) and gives the number of scales the coordinator needs (`make_coordinator`).

The driver is split in four: this loop (`RayJob`: launching actors, dispatching replies by their typed
`Pending` record), where work is (`cluster.scheduling.Scheduler`), what to do when a unit fails or an actor dies
(`cluster.failures.Recovery`, applying `Coordinator.fail` / `lost`), and what is counted (`cluster.stats`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import ray
from ray.exceptions import RayError, RayTaskError

from ttsvar.config import JobConfig
from ttsvar.core.device import resolve_device
from ttsvar.core.errors import TtsvarError
from ttsvar.engine import MAX_ACTOR_LOSSES, Coordinator, WorkUnit
from ttsvar.jobs import PreparedJob, ResultWriter, make_coordinator, prepare_job
from ttsvar.progress import progress_bar
from ttsvar.prompts import check_prompts

from . import ClusterError
from .actors import GeneratorActor, RewardActor, RewardPoolEmpty
from .failures import Recovery, last_line
from .runtime import ActorPlan, connect, disconnect, plan_actors
from .scheduling import ActorReady, ActorSlot, Flight, Pending, RewardReady, Scheduler, UnitImagesDue, UnitReport
from .stats import DriverStats

log = logging.getLogger("ttsvar.cluster")

__all__ = ["MAX_ACTOR_LOSSES", "ActorSlot", "Flight", "RayJob"]

START_TIMEOUT_S = 900.0  # no generator actor alive and ready for this long: give up (resources never came)
WAIT_POLL_S = 2.0  # how often the loop wakes up without a message, to check the timeout above


def _check_one_to_one(unit: WorkUnit, unit_id: int, prompt_indices: list[int], what: str) -> None:
    """Every prompt of the unit comes back exactly once, and nothing else (a protocol bug, not a data error)."""
    if unit_id != unit.unit_id or sorted(prompt_indices) != sorted(unit.prompt_indices):
        raise ValueError(f"actor returned {what} for unit {unit_id} with prompts {sorted(prompt_indices)}; "
                         f"expected unit {unit.unit_id} with prompts {sorted(unit.prompt_indices)}")


def _start_error(who: str, check: str, e: BaseException) -> ClusterError:
    """An actor constructor's error: one line (its last line), the actor's traceback as `detail` (`--debug`)."""
    err = ClusterError(f"{who} could not start: {last_line(e)} (check {check}; --debug shows the actor's "
                       "traceback)")
    err.detail = str(e)
    cause = getattr(e, "cause", None)
    err.exit_code = cause.exit_code if isinstance(cause, TtsvarError) else _exit_code_named(last_line(e))
    return err


def _exit_code_named(line: str) -> int:
    """The exit code of the ttsvar error a remote traceback's last line names (`...MissingFileError: ...`): Ray
    hands an actor constructor's error back as text only, and bad input (2) must not read as a crash (1)."""
    head = line.split(":", 1)[0].rsplit(".", 1)[-1].strip()
    todo, seen = [TtsvarError], {}
    while todo:
        cls = todo.pop()
        seen[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return seen[head].exit_code if head in seen else ClusterError.exit_code


class RayJob:
    """Runs one job on Ray. `run()` connects (or starts Ray), launches actors, drives the units, cleans up.

    `on_event(self)` (tests) is called after every reply handled; it may read `slots`, `flights`, `writer.ok`
    and `total`."""

    def __init__(self, job: JobConfig, on_event: Callable[[RayJob], None] | None = None):
        self.job, self.rt, self.on_event = job, job.runtime, on_event
        self.sched = Scheduler(self.rt.units_in_flight)
        self.stats = DriverStats()
        self.reward_handles: list = []
        self.coord: Coordinator | None = None
        self.num_scales: int | None = None
        self.prep: PreparedJob | None = None
        self.writer: ResultWriter | None = None
        self.recovery: Recovery | None = None
        self.plan: ActorPlan | None = None
        self.total = 0
        self.last_loss = ""
        self._no_actor_since = time.monotonic()

    @property
    def slots(self) -> list[ActorSlot]:
        return self.sched.slots

    @property
    def flights(self) -> dict[int, Flight]:
        return self.sched.flights

    # -- job ----------------------------------------------------------------------------------------

    def run(self) -> dict:
        self.prep = prep = prepare_job(self.job)
        self.writer = prep.writer
        try:
            return self._run(prep)
        finally:
            prep.writer.close()

    def _run(self, prep: PreparedJob) -> dict:
        self.total = len(prep.todo)
        extra = prep.extra("ray")
        if not prep.todo:
            return prep.writer.summary(time.perf_counter() - prep.t0, {**extra, "actors": 0})
        self.sched.queue.extend(prep.units)
        if not self.rt.address and not ray.is_initialized():  # a local Ray on this machine: check before it starts
            resolve_device(self.job.model.device, "model.device")
        t = time.perf_counter()
        started = connect(self.rt)
        self.stats.connect_s = time.perf_counter() - t
        self.bar = progress_bar(len(prep.todo), self.rt.quiet)
        self.recovery = Recovery(self.sched, prep.writer, self.bar, self.stats, self.rt.retries)
        try:
            self.plan = plan_actors(self.rt, self.job.model.device, local=started and not self.rt.address)
            log.info("ttsvar on Ray: %s", self.plan)
            self.stats.t_start = time.perf_counter()
            self._launch_reward_actors()
            for _ in range(self.plan.generators):
                self._launch()
            self._no_actor_since = time.monotonic()
            while self.sched.busy():
                self._assign()
                self._step()
        finally:
            self.bar.close()
            self._stop_actors()
            disconnect(started)
        wall = time.perf_counter() - prep.t0
        return prep.writer.summary(wall, {**extra, **self.stats.summary(self.plan, self.slots, self.coord,
                                                                        len(prep.units))})

    # -- actors -------------------------------------------------------------------------------------

    def _launch_reward_actors(self) -> None:
        cls = ray.remote(RewardActor).options(**self.plan.options, max_restarts=0)
        for _ in range(self.plan.reward_actors):
            h = cls.remote(self.job)
            self.reward_handles.append(h)
            self.sched.expect(h.ready.remote(), RewardReady())

    def _launch(self) -> ActorSlot:
        cls = ray.remote(GeneratorActor).options(**self.plan.options, max_restarts=0, max_concurrency=1)
        slot = self.sched.add_slot()
        slot.handle = cls.remote(self.job, self.reward_handles or None, slot.index)
        self.sched.expect(slot.handle.ready.remote(), ActorReady(slot))
        return slot

    def _can_work(self) -> bool:
        """Some generator actor is up, and so is a reward actor if the job uses a pool (else the generator
        actors would block on their first score call)."""
        return bool(self.sched.live()) and (not self.plan.reward_actors or self.stats.reward_actors_ready > 0)

    def _stop_actors(self) -> None:
        # idle actors free their models first (GPU memory on a shared cluster); busy ones (the job stopped on
        # an error) would run their queued units before a shutdown call, so they are only killed
        live = [s.handle for s in self.sched.live() if not s.units] + self.reward_handles
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

    # -- the loop -----------------------------------------------------------------------------------

    def _assign(self) -> None:
        """Fill every ready actor up to `units_in_flight` units, least loaded first."""
        if self.coord is None or not self._can_work():
            return
        while (nxt := self.sched.next_assignment()) is not None:
            slot, unit = nxt
            self.coord.begin(unit)
            self.sched.start(unit, slot)
            self.sched.expect(slot.handle.start.remote(unit), UnitReport(slot, unit.unit_id))

    def _step(self) -> None:
        if not self.sched.pending:
            raise ClusterError(f"no generator actor is left to run {len(self.sched.queue)} queued unit(s) "
                               f"({self.stats.actors_restarted} replacement(s) were started; last loss: "
                               f"{self.last_loss}). Finished prompts are in the manifest; re-run the same "
                               "job to finish the rest")
        done, _ = ray.wait(list(self.sched.pending), num_returns=1, timeout=WAIT_POLL_S)
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
        self._handle(ref, self.sched.take(ref), arrived)
        self.bar.set_postfix(actors=len(self.sched.live()), refresh=False)
        if self.on_event is not None:
            self.on_event(self)

    def _handle(self, ref, rec: Pending, arrived: float) -> None:
        if isinstance(rec, ActorReady):
            self._on_ready(ref, rec.slot)
        elif isinstance(rec, RewardReady):
            self._on_reward_ready(ref)
        elif isinstance(rec, UnitReport):
            self._on_report(ref, rec.slot, rec.unit_id, arrived)
        elif isinstance(rec, UnitImagesDue):
            self._on_images(ref, rec.slot, rec.unit_id)
        else:
            raise TypeError(f"no handler for {type(rec).__name__}")

    def _get(self, ref, slot: ActorSlot, uid: int):
        """ray.get that turns failures into the right recovery: returns (ok, value)."""
        try:
            return True, ray.get(ref)
        except RewardPoolEmpty:  # every remaining unit would fail the same way: stop, keeping what is done
            raise ClusterError("every reward actor of the pool (runtime.reward_actors) has died; finished "
                               "prompts are in the manifest: re-run the same job to finish the rest") from None
        except RayTaskError as e:  # the unit raised inside a live actor
            self.recovery.unit_failed(self.coord, uid, e)
        except RayError as e:  # the actor (or its node) is gone
            self._lost(slot, e)
        return False, None

    def _on_ready(self, ref, slot: ActorSlot) -> None:
        try:
            info = ray.get(ref)
        except RayError as e:
            if getattr(e, "actor_init_failed", False) and not any(s.ready for s in self.slots):
                raise _start_error(f"generator actor {slot.index}", "the job config and weights", e) from None
            self._lost(slot, e)
            return
        if self.num_scales is None:
            todo = self.prep.todo
            try:
                problems = ray.get(slot.handle.check_prompts.remote([it.prompt for it in todo]))
            except RayTaskError:
                raise
            except RayError as e:  # the actor died during the check: the next one to come up does it
                self._lost(slot, e)
                return
            check_prompts(self.job.prompts, todo, problems)  # raises PromptError listing every bad line
            self.stats.t_first_ready = time.perf_counter()
            self.num_scales = info["num_scales"]
            self.coord = make_coordinator(self.job, self.num_scales, next_unit_id=len(self.prep.units))
        elif info["num_scales"] != self.num_scales:
            raise ClusterError(f"actor {slot.index} on {info['host']} loaded a model with {info['num_scales']} "
                               f"scales, the others {self.num_scales}: every node must have the same weights")
        slot.ready, slot.pid, slot.host, slot.node_id = True, info["pid"], info["host"], info["node_id"]
        log.info("generator actor %d ready: pid %s on %s (%s, %d threads)", slot.index, slot.pid, slot.host,
                 info["device"], info["threads"])

    def _on_reward_ready(self, ref) -> None:
        try:
            info = ray.get(ref)
        except RayError as e:
            raise _start_error("a reward actor", "the reward config", e) from None
        self.stats.reward_actors_ready += 1
        log.info("reward actor ready: pid %s on %s", info["pid"], info["host"])

    def _on_report(self, ref, slot: ActorSlot, uid: int, arrived: float) -> None:
        ok, rep = self._get(ref, slot, uid)
        if not ok:
            return
        fl = self.sched.flights[uid]
        fl.reports += 1
        self.stats.decide_calls += 1
        try:
            _check_one_to_one(fl.unit, rep.unit_id, [g.prompt_index for g in rep.groups], "report")
            if rep.final:
                fl.final, fl.picks = rep, self.coord.pick(rep)
                nxt = slot.handle.collect.remote(uid, fl.picks, self.job.output.save_candidates)
                self.sched.expect(nxt, UnitImagesDue(slot, uid))
            else:
                sel = self.coord.decide(rep)
                self.sched.expect(slot.handle.apply.remote(sel), UnitReport(slot, uid))
                self.stats.latency.append(time.perf_counter() - arrived)
        except Exception as e:  # noqa: BLE001 - a strategy error fails this unit, the job goes on
            self.recovery.unit_failed(self.coord, uid, e)

    def _on_images(self, ref, slot: ActorSlot, uid: int) -> None:
        ok, images = self._get(ref, slot, uid)
        if not ok:
            return
        try:
            _check_one_to_one(self.sched.flights[uid].unit, images.unit_id, list(images.images), "images")
        except ValueError as e:
            self.recovery.unit_failed(self.coord, uid, e)
            return
        fl = self.sched.finish(uid)
        self.writer.write_unit(self.coord, fl.final, fl.picks, images)
        self.bar.update(len(fl.unit.prompt_indices))

    def _lost(self, slot: ActorSlot, e: BaseException) -> None:
        """An actor is gone: re-queue its units from the start, forget its messages, launch a replacement."""
        if slot.dead:
            return
        slot.dead = True
        where = f"pid {slot.pid} on {slot.host}" if slot.ready else "not started yet"
        self.last_loss = f"generator actor {slot.index} ({where}): {last_line(e)}"
        log.warning("lost %s", self.last_loss)
        try:
            ray.kill(slot.handle, no_restart=True)
        except Exception:  # noqa: BLE001 - it may already be gone
            pass
        self.sched.forget_slot(slot)
        self.recovery.units_lost(self.coord, slot, e)
        # a prompt that kills actors and is abandoned for it has paid for the actors it took: only deaths no
        # prompt answers for (a bad node, out of memory everywhere) use up the replacement budget
        budget = max(3, 2 * self.plan.generators) + MAX_ACTOR_LOSSES * self.stats.units_abandoned_lost
        if self.stats.actors_restarted < budget:
            self.stats.actors_restarted += 1
            self._launch()
        if not self._can_work():
            self._no_actor_since = time.monotonic()
