"""The Ray launcher: trainer ranks, engines and the rollout manager as Ray actors.

Used with ``--launcher ray``, and by default when ``agentrl train`` runs as a Ray job
(``ray job submit -- agentrl train ...`` sets ``RAY_ADDRESS``). Without a cluster address it
starts a local one. The phases, each with a bounded wait that says what it waited for:

1. placement: one group of ``{GPU:1, CPU:1}`` bundles (``{CPU:n}`` with ``--device cpu``), in
   physical order (:mod:`agentrl.launch.placement`);
2. trainer ranks: a :class:`~agentrl.launch.ray_actors.TrainerActor` per trainer bundle, joined
   in one ``torch.distributed`` group (rank 0's node is the rendezvous);
3. the rollout manager: a CPU-only actor on this (the driver's) node, which starts sglang-router
   and an engine actor per engine's bundles, and plays the episodes;
4. rank 0 pushes weights to the engines through the manager's fleet.

Trajectories come back to the loop; each rank's share goes to it as one object through Ray's
object store. An actor that dies fails the run with an error naming it and what it was doing;
leaving (normally, on an error, or on a signal) stops the engines and the router, kills every
actor and frees the placement group.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
from collections.abc import AsyncIterator, Awaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from tqdm.auto import tqdm

from agentrl.checkpoint import LoopState
from agentrl.errors import TrainingError
from agentrl.launch.placement import Placement, create_placement, plan_layout
from agentrl.rollout.manager import RolloutResult
from agentrl.rollout.trajectory import Trajectory
from agentrl.trainers.dp_split import RankShare

if TYPE_CHECKING:
    from agentrl.config import TrainConfig

log = logging.getLogger(__name__)
T = TypeVar("T")
CLOSE_TIMEOUT_S = 30.0
"""Bound on an actor's cleanup (engines stopped, groups left) before it is killed anyway."""
RANK_METRICS = ("train/grad_norm", "train/lr", "train/optimizer_steps")
"""Metrics every rank reports alike (after the gradient all-reduce); the others are summed."""


async def call(ref: Awaitable[T], what: str, timeout_s: float, *, flag: str = "--actor-call-timeout") -> T:
    """Await an actor call; a dead actor or an exceeded bound becomes a :class:`TrainingError`
    that names ``what`` (the actor and what it was doing) and the ``flag`` that sets the bound."""
    import ray

    try:
        return await asyncio.wait_for(ref, timeout_s)
    except TimeoutError:
        raise TrainingError(f"{what} did not finish within {timeout_s:g} s ({flag})") from None
    except ray.exceptions.ActorDiedError as e:
        raise TrainingError(f"{what} failed: the actor died ({str(e).splitlines()[0][:300]})") from None
    except ray.exceptions.RayTaskError as e:
        cause = e.cause if isinstance(e.cause, Exception) else e
        raise TrainingError(f"{what} failed: {type(cause).__name__}: {cause}") from cause


class RayRollouts:
    """:class:`~agentrl.launch.base.Rollouts` over the rollout manager actor."""

    def __init__(self, actor: Any, timeout_s: float) -> None:
        self.actor, self.timeout_s = actor, timeout_s

    async def rollout(self, step: int) -> RolloutResult:
        return await call(self.actor.rollout.remote(step), f"the rollout manager, playing step {step + 1}'s episodes", self.timeout_s)

    async def evaluate(self) -> dict[str, list[Trajectory]]:
        return await call(self.actor.evaluate.remote(), "the rollout manager, evaluating", self.timeout_s)

    async def seek(self, position: dict[str, int]) -> None:
        await call(self.actor.seek.remote(position), "the rollout manager, seeking the task stream", self.timeout_s)

    async def note_weight_version(self, weight_version: int) -> None:
        await call(self.actor.note_weight_version.remote(weight_version), "the rollout manager", self.timeout_s)


class RayTrainers:
    """:class:`~agentrl.launch.base.Trainers` over one :class:`TrainerActor` per rank."""

    def __init__(self, ranks: list[Any], timeout_s: float) -> None:
        self.ranks, self.timeout_s = ranks, timeout_s
        self.world_size = len(ranks)

    async def train(self, shares: list[RankShare]) -> dict[str, float]:
        import ray

        refs = [ray.put(share.sequences) for share in shares]  # one object per rank, through the object store
        calls = [call(rank.train.remote(ref, share.num_samples), f"trainer rank {i}, training", self.timeout_s)
                 for i, (rank, ref, share) in enumerate(zip(self.ranks, refs, shares))]
        return merge_rank_metrics(await asyncio.gather(*calls))

    async def push_weights(self, weight_version: int) -> None:
        await call(self.ranks[0].push_weights.remote(weight_version), f"trainer rank 0, pushing weight version {weight_version}",
                   self.timeout_s)

    async def save(self, root: Path, state: LoopState) -> Path:
        return Path(await call(self.ranks[0].save.remote(str(root), state), "trainer rank 0, saving a checkpoint", self.timeout_s))

    async def load(self, checkpoint: Path) -> LoopState:
        states = await asyncio.gather(*(call(rank.load.remote(str(checkpoint)), f"trainer rank {i}, loading {checkpoint}", self.timeout_s)
                                        for i, rank in enumerate(self.ranks)))
        state: LoopState = states[0]
        return state

    async def export_hf(self, path: Path) -> None:
        await call(self.ranks[0].export_hf.remote(str(path)), "trainer rank 0, exporting the model", self.timeout_s)


def merge_rank_metrics(per_rank: list[dict[str, float]]) -> dict[str, float]:
    """The whole batch's metrics from each rank's: loss terms and counts summed (each rank's are
    normalised by global counts), :data:`RANK_METRICS` taken from rank 0."""
    merged: dict[str, float] = {}
    for metrics in per_rank:
        for key, value in metrics.items():
            merged[key] = merged.get(key, 0.0) + value
    return merged | {key: per_rank[0][key] for key in RANK_METRICS if key in per_rank[0]}


@contextlib.asynccontextmanager
async def launch_ray(cfg: TrainConfig, model_dir: Path, run_dir: Path) -> AsyncIterator[tuple[RayTrainers, RayRollouts]]:
    """Start the run's actors on the Ray cluster (see the module docstring); tear them down on exit."""
    import ray

    layout = plan_layout(cfg.placement())
    started_ray = not ray.is_initialized()
    if started_ray:  # connects to RAY_ADDRESS (a Ray job's cluster), else starts one here with CPUs enough for the layout
        cpus = None if os.environ.get("RAY_ADDRESS") else max(os.cpu_count() or 1, layout.num_bundles * layout.cpus_per_bundle + 1)
        await asyncio.to_thread(ray.init, log_to_driver=True, num_cpus=cpus)
    placement = await asyncio.to_thread(create_placement, layout, timeout_s=cfg.placement_timeout)
    actors: list[Any] = []
    graceful = False
    try:
        ranks = await _start_ranks(cfg, placement, model_dir, run_dir, actors)
        manager = await _start_manager(cfg, placement, model_dir, run_dir, ranks[0], actors)
        yield RayTrainers(ranks, cfg.actor_call_timeout), RayRollouts(manager, cfg.actor_call_timeout)
        graceful = True
    finally:
        await _tear_down(actors, placement, graceful=graceful)
        if started_ray:
            await asyncio.to_thread(ray.shutdown)


async def _start_ranks(cfg: TrainConfig, placement: Placement, model_dir: Path, run_dir: Path, actors: list[Any]) -> list[Any]:
    import ray

    from agentrl.launch.ray_actors import TrainerActor

    world = len(placement.trainer)
    remote: Any = ray.remote(TrainerActor)  # Ray's stubs type a handle as its class
    ranks: list[Any] = [remote.options(**placement.actor_options("trainer", i)).remote(i, world, cfg, str(model_dir), str(run_dir))
             for i in range(world)]
    actors.extend(ranks)
    setup = functools.partial(call, timeout_s=cfg.actor_setup_timeout, flag="--actor-setup-timeout")
    master, port = await setup(ranks[0].open_rendezvous.remote(), "trainer rank 0, opening the group's rendezvous")
    pids = await asyncio.gather(*(setup(rank.setup.remote(master, port), f"trainer rank {i}, joining the group and loading the model")
                                  for i, rank in enumerate(ranks)))
    tqdm.write("[agentrl] trainer ranks up: " + ", ".join(f"rank {i} pid {pid} on {placement.trainer[i].node_ip}" for i, pid in enumerate(pids)))
    return ranks


async def _start_manager(cfg: TrainConfig, placement: Placement, model_dir: Path, run_dir: Path, trainer0: Any, actors: list[Any]) -> Any:
    import ray
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    from agentrl.launch.ray_actors import RolloutManagerActor

    here = NodeAffinitySchedulingStrategy(node_id=ray.get_runtime_context().get_node_id(), soft=False)
    remote: Any = ray.remote(RolloutManagerActor)
    manager = remote.options(num_cpus=1, scheduling_strategy=here).remote(cfg, str(model_dir), str(run_dir), placement)
    actors.append(manager)
    setup = functools.partial(call, timeout_s=cfg.actor_setup_timeout, flag="--actor-setup-timeout")
    await setup(manager.start_with.remote(trainer0), "the rollout manager, starting the engines and the router")
    await setup(trainer0.connect_engines.remote(manager), "trainer rank 0, connecting to the engines")
    return manager


async def _tear_down(actors: list[Any], placement: Placement, *, graceful: bool) -> None:
    """After a run that ended well, each actor's own cleanup, bounded; then (always, also after an
    error, when a rank may hang in a collective its dead peer never joins) kill every actor: their
    engines and the router die with them."""
    import ray

    try:
        for actor in actors if graceful else []:  # ranks first (rank 0 leaves the weight group while engines answer), then the manager
            try:
                await asyncio.wait_for(actor.aclose.remote(), CLOSE_TIMEOUT_S)
            except Exception as e:  # a dead or stuck actor: killing it below ends its children too
                log.warning("an actor's cleanup failed (%s: %s); killing it", type(e).__name__, (str(e).splitlines() or [""])[0][:200])
    finally:  # also when the cleanup above is cancelled (a second signal)
        for actor in actors:
            ray.kill(actor, no_restart=True)
        placement.remove()
