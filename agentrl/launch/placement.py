"""Placement of a Ray launch: which GPU (or CPU share) each trainer rank and each engine gets.

Flags and meanings are slime's (``slime/utils/arguments.py``, ``slime/ray/placement_group.py``):
the trainer has ``actor_num_nodes * actor_num_gpus_per_node`` ranks, one bundle each; the engines
have ``rollout_num_gpus`` bundles, ``rollout_num_gpus_per_engine`` per engine. With ``colocate``
the engines share the trainer's bundles from bundle 0 and ``rollout_num_gpus`` defaults to the
trainer's count; without it they take the bundles after the trainer's.

Two layers:

1. Planning (:class:`PlacementConfig`, :func:`plan_layout`) is pure: no Ray, no I/O. It works on
   *logical* bundles ``0 .. num_bundles - 1``.
2. Reservation (:func:`create_placement`, the only code that imports Ray) makes one placement
   group of ``{GPU: 1, CPU: 1}`` bundles (``{CPU: n}`` on a cluster without GPUs), strategy
   ``PACK``, asks a probe actor on each bundle where it landed, and sorts the bundles by
   (node IP, node id, GPU id) -- (node IP, node id, bundle index) for CPU bundles -- so logical
   bundle ``i`` is a stable physical GPU. :func:`assign_bundles` maps the layout onto them.

Invariants of a :class:`Placement`: trainer rank ``i`` is logical bundle ``i``; each engine is a
run of ``rollout_num_gpus_per_engine`` consecutive logical bundles; engines are disjoint from
each other, disjoint from the trainer's bundles without ``colocate`` and the trainer's first
bundles with it; an engine sits on one node or fills every node of the group it touches.
"""

from __future__ import annotations

import ipaddress
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from agentrl.errors import AgentRLError, ConfigError

if TYPE_CHECKING:
    from ray.util.placement_group import PlacementGroup

Role = Literal["trainer", "engine"]

TRAINER_SHARE = 0.4
"""Fraction of its bundle (GPU and CPUs) a trainer rank's actor asks for (slime's train actors)."""
ENGINE_SHARE = 0.2
"""Fraction of its first bundle an engine's actor asks for (slime's engines). With
:data:`TRAINER_SHARE` it fits one bundle, so a colocated rank and engine share a GPU."""


class PlacementError(AgentRLError):
    """The cluster did not give the layout its bundles in time, or gave them where an engine
    cannot use them. The message says what was waited for and what the cluster has."""

    exit_code = 1


@dataclass(frozen=True)
class PlacementConfig:
    """The placement flags (slime's names and defaults), validated when built.

    Attributes:
        actor_num_nodes: ``--actor-num-nodes``. Only the product with
            ``actor_num_gpus_per_node`` matters (the trainer's rank count), as in slime: ranks
            land on the first bundles in physical order, whatever node that is.
        actor_num_gpus_per_node: ``--actor-num-gpus-per-node``.
        rollout_num_gpus: ``--rollout-num-gpus``: bundles of all engines together. ``None``:
            the trainer's rank count with ``colocate``, refused without it. 0: no engines are
            placed (engines given by URL).
        rollout_num_gpus_per_engine: ``--rollout-num-gpus-per-engine``: bundles per engine (its
            tensor-parallel size).
        colocate: ``--colocate``: the engines share the trainer's bundles.
        use_gpus: bundles hold one GPU each. ``False`` on a cluster without GPUs: every GPU
            count above then counts CPU bundles of ``actor_num_cpus_per_rank`` CPUs.
        actor_num_cpus_per_rank: ``--actor-num-cpus-per-rank``: CPUs of a CPU bundle (a GPU
            bundle always holds 1 CPU).
    """

    actor_num_nodes: int = 1
    actor_num_gpus_per_node: int = 8
    rollout_num_gpus: int | None = None
    rollout_num_gpus_per_engine: int = 1
    colocate: bool = False
    use_gpus: bool = True
    actor_num_cpus_per_rank: int = 1

    def __post_init__(self) -> None:
        minimums = {"actor_num_nodes": 1, "actor_num_gpus_per_node": 1, "rollout_num_gpus": 0,
                    "rollout_num_gpus_per_engine": 1, "actor_num_cpus_per_rank": 1}
        for name, minimum in minimums.items():
            value = getattr(self, name)
            if value is not None and value < minimum:
                raise ConfigError(f"{_flag(name)} must be >= {minimum}, got {value}")
        if self.rollout_num_gpus is None and not self.colocate:
            raise ConfigError("--rollout-num-gpus is required without --colocate: the engines take their own "
                              "GPUs after the trainer's (0: no engines, use --rollout-engine-urls)")
        if self.engine_bundles % self.rollout_num_gpus_per_engine:
            raise ConfigError(f"--rollout-num-gpus {self.engine_bundles} is not a multiple of "
                              f"--rollout-num-gpus-per-engine {self.rollout_num_gpus_per_engine}")

    @property
    def trainer_ranks(self) -> int:
        """Trainer ranks (data-parallel world size): ``actor_num_nodes * actor_num_gpus_per_node``."""
        return self.actor_num_nodes * self.actor_num_gpus_per_node

    @property
    def engine_bundles(self) -> int:
        """Bundles of all engines: ``rollout_num_gpus``, or the trainer's count when that is ``None``."""
        return self.trainer_ranks if self.rollout_num_gpus is None else self.rollout_num_gpus

    @property
    def num_engines(self) -> int:
        """Engines placed: ``engine_bundles / rollout_num_gpus_per_engine``."""
        return self.engine_bundles // self.rollout_num_gpus_per_engine


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Layout:
    """Which logical bundles each role takes; logical bundle ``i`` is the i-th in physical order.

    Attributes:
        num_bundles: bundles of the placement group: ``max(ranks, engine bundles)`` with
            ``colocate``, their sum without.
        trainer: logical bundle of each trainer rank (``trainer[r] == r``).
        engines: logical bundles of each engine, consecutive, from 0 with ``colocate`` and from
            the trainer's rank count without.
        use_gpus: bundles are ``{GPU: 1, CPU: 1}``; else ``{CPU: cpus_per_bundle}``.
        cpus_per_bundle: CPUs in each bundle.
    """

    num_bundles: int
    trainer: tuple[int, ...]
    engines: tuple[tuple[int, ...], ...]
    use_gpus: bool
    cpus_per_bundle: int

    @property
    def bundle(self) -> dict[str, float]:
        """The resources of one bundle, as Ray takes them."""
        if self.use_gpus:
            return {"GPU": 1, "CPU": self.cpus_per_bundle}
        return {"CPU": self.cpus_per_bundle}

    def describe(self) -> str:
        """E.g. ``16 {GPU:1, CPU:1} bundles (8 trainer ranks, 4 engines of 2)``."""
        shape = ", ".join(f"{k}:{v:g}" for k, v in self.bundle.items())
        size = len(self.engines[0]) if self.engines else 0
        return (f"{self.num_bundles} {{{shape}}} bundles ({len(self.trainer)} trainer ranks, "
                f"{len(self.engines)} engines of {size})")


def plan_layout(config: PlacementConfig) -> Layout:
    """The bundles of a launch (pure). ``config`` was validated when built, so this cannot fail."""
    ranks, size = config.trainer_ranks, config.rollout_num_gpus_per_engine
    offset = 0 if config.colocate else ranks
    engines = tuple(tuple(range(offset + j * size, offset + (j + 1) * size)) for j in range(config.num_engines))
    return Layout(
        num_bundles=max(ranks, offset + config.engine_bundles),
        trainer=tuple(range(ranks)),
        engines=engines,
        use_gpus=config.use_gpus,
        cpus_per_bundle=1 if config.use_gpus else config.actor_num_cpus_per_rank,
    )


@dataclass(frozen=True)
class BundleRef:
    """One bundle of the placement group and where it physically is.

    Attributes:
        index: its index in the Ray placement group (``placement_group_bundle_index``).
        node_ip: IP of its node.
        node_id: Ray node id (hex) of its node; tells apart nodes that share an IP (several
            raylets on one host, as in ``ray.cluster_utils.Cluster``).
        gpu_id: Ray's id of its GPU on that node (what ``CUDA_VISIBLE_DEVICES`` names there);
            ``None`` for a CPU bundle.
    """

    index: int
    node_ip: str
    node_id: str
    gpu_id: str | None


def order_bundles(bundles: Sequence[BundleRef]) -> tuple[BundleRef, ...]:
    """The bundles in physical order: by node IP (numerically; host names after IPs), node id,
    GPU id (numerically) and bundle index. The order depends only on where bundles are, not on
    the index Ray gave them, except for CPU bundles of one node."""
    return tuple(sorted(bundles, key=_physical_key))


def _physical_key(bundle: BundleRef) -> tuple[Any, ...]:
    try:
        address = ipaddress.ip_address(bundle.node_ip)
        ip_key: tuple[int, int, int, str] = (0, address.version, int(address), "")
    except ValueError:
        ip_key = (1, 0, 0, bundle.node_ip)
    gpu = bundle.gpu_id or ""
    gpu_key = (0, int(gpu), "") if gpu.isdigit() else (1, 0, gpu)
    return ip_key, bundle.node_id, gpu_key, bundle.index


def assign_bundles(layout: Layout, ordered: Sequence[BundleRef], pg: PlacementGroup) -> Placement:
    """Places the layout on bundles in physical order: logical bundle ``i`` is ``ordered[i]``.

    Raises:
        ValueError: ``ordered`` does not hold ``layout.num_bundles`` bundles.
        PlacementError: an engine would straddle nodes without filling them (its GPUs could not
            form one tensor-parallel group on one node).
    """
    if len(ordered) != layout.num_bundles:
        raise ValueError(f"the layout has {layout.num_bundles} bundles, {len(ordered)} were given")
    engines = tuple(tuple(ordered[i] for i in engine) for engine in layout.engines)
    group_per_node = Counter(b.node_id for b in ordered)
    for number, engine in enumerate(engines):
        _check_engine_nodes(number, engine, group_per_node)
    return Placement(pg=pg, layout=layout, trainer=tuple(ordered[i] for i in layout.trainer), engines=engines)


def _check_engine_nodes(number: int, engine: tuple[BundleRef, ...], group_per_node: Counter[str]) -> None:
    """An engine sits on one node, or (bigger than a node) takes every bundle of the nodes it touches."""
    mine = Counter(b.node_id for b in engine)
    if len(mine) == 1 or all(group_per_node[node] == count for node, count in mine.items()):
        return
    where = "; ".join(f"node {ip}/{node[:8]}: {', '.join(_slot(b) for b in engine if b.node_id == node)}"
                      for ip, node in dict.fromkeys((b.node_ip, b.node_id) for b in engine))
    raise PlacementError(
        f"engine {number} would straddle {len(mine)} nodes without filling them ({where}): make the trainer's "
        "rank count (--actor-num-nodes x --actor-num-gpus-per-node) and the GPUs each node gives the job "
        "multiples of --rollout-num-gpus-per-engine")


def _slot(bundle: BundleRef) -> str:
    return f"GPU {bundle.gpu_id}" if bundle.gpu_id is not None else f"bundle {bundle.index}"


@dataclass(frozen=True)
class Placement:
    """The reserved bundles, by role. Made by :func:`create_placement`; freed by :meth:`remove`.

    Attributes:
        pg: the Ray placement group holding every bundle.
        layout: the plan it realises.
        trainer: the bundle of each trainer rank, in rank order (= physical order).
        engines: the bundles of each engine. Its actor runs on the first; its server uses the
            GPUs of all of them (``gpu_id`` of each, on ``node_ip``).
    """

    pg: PlacementGroup
    layout: Layout
    trainer: tuple[BundleRef, ...]
    engines: tuple[tuple[BundleRef, ...], ...]

    def bundle_of(self, role: Role, index: int) -> BundleRef:
        """The bundle the actor of trainer rank ``index`` or of engine ``index`` runs on."""
        if role == "trainer":
            return self.trainer[index]
        if role == "engine":
            return self.engines[index][0]
        raise ValueError(f"role must be 'trainer' or 'engine', got {role!r}")

    def actor_options(self, role: Role, index: int) -> dict[str, Any]:
        """Keyword arguments of ``ActorClass.options(...)`` for trainer rank or engine ``index``.

        Its bundle as ``scheduling_strategy``, and its share of the bundle's GPU and CPUs
        (:data:`TRAINER_SHARE`, :data:`ENGINE_SHARE`). Ray sets the actor's
        ``CUDA_VISIBLE_DEVICES`` to the bundle's GPU (a multi-GPU engine's server needs its
        other GPUs too) and ``OMP_NUM_THREADS`` to ``max(1, floor(num_cpus))``, so an actor that
        computes on CPU sets its own thread count.
        """
        from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

        share = TRAINER_SHARE if role == "trainer" else ENGINE_SHARE
        bundle = self.bundle_of(role, index)
        return {
            "scheduling_strategy": PlacementGroupSchedulingStrategy(
                placement_group=self.pg, placement_group_bundle_index=bundle.index),
            "num_cpus": share * self.layout.cpus_per_bundle,
            "num_gpus": share if self.layout.use_gpus else 0,
        }

    def remove(self) -> None:
        """Frees every bundle; actors still on them are killed by Ray."""
        from ray.util.placement_group import remove_placement_group

        remove_placement_group(self.pg)


def create_placement(layout: Layout, *, timeout_s: float = 60.0) -> Placement:
    """Reserves the layout's bundles on the connected Ray cluster (``ray.init`` done) and places
    the roles on them in physical order.

    Each wait -- the group becoming ready, the probes reporting -- is bounded by ``timeout_s``.

    Raises:
        PlacementError: the group was not ready or the probes did not report in time (the group
            is removed first, so it does not take the resources later), or an engine would
            straddle nodes.
    """
    from ray.util.placement_group import remove_placement_group

    pg = _reserve(layout, timeout_s)
    try:
        return assign_bundles(layout, order_bundles(_probe(pg, layout, timeout_s)), pg)
    except BaseException:
        remove_placement_group(pg)
        raise


def _reserve(layout: Layout, timeout_s: float) -> PlacementGroup:
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    pg = placement_group([layout.bundle] * layout.num_bundles, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        capacity = _capacity(layout.use_gpus)
        remove_placement_group(pg)
        raise PlacementError(f"placement group of {layout.describe()}, strategy PACK, "
                             f"not ready after {timeout_s:g} s: {capacity}") from e
    ready: PlacementGroup = pg
    return ready


def _capacity(use_gpus: bool) -> str:
    """What the cluster has, and what to change, for a placement error."""
    import ray

    total, free = ray.cluster_resources(), ray.available_resources()
    nodes = sum(1 for node in ray.nodes() if node["Alive"])
    have = (f"the cluster has {total.get('GPU', 0):g} GPUs ({free.get('GPU', 0):g} free) and "
            f"{total.get('CPU', 0):g} CPUs ({free.get('CPU', 0):g} free) on {nodes} node{'' if nodes == 1 else 's'}")
    if use_gpus and not total.get("GPU"):
        return f"{have}; without GPUs, run with CPU bundles (--device cpu)"
    flags = "--actor-num-nodes, --actor-num-gpus-per-node, --rollout-num-gpus"
    if not use_gpus:
        flags += ", --actor-num-cpus-per-rank"
    return f"{have}; lower {flags}, add nodes, or free what other jobs hold"


def _probe(pg: PlacementGroup, layout: Layout, timeout_s: float) -> list[BundleRef]:
    """Asks an actor holding each bundle where it is; the actors are killed before returning."""
    import ray
    from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

    probe_class = ray.remote(_BundleProbe)
    probes: list[Any] = [  # Ray's stubs type an actor's handle as its class
        probe_class.options(
            num_cpus=layout.cpus_per_bundle, num_gpus=1 if layout.use_gpus else 0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(placement_group=pg, placement_group_bundle_index=i),
        ).remote()
        for i in range(layout.num_bundles)
    ]
    try:
        found = ray.get([probe.where.remote() for probe in probes], timeout=timeout_s)
    except ray.exceptions.GetTimeoutError as e:
        raise PlacementError(f"the {layout.num_bundles} bundle probes (one actor per bundle, reporting its node "
                             f"and GPU) did not all report after {timeout_s:g} s: the nodes may be short of "
                             "memory or slow to start workers; raise the placement timeout") from e
    except ray.exceptions.RayError as e:
        raise PlacementError(f"a bundle probe (an actor reporting its node and GPU) failed: {e}") from e
    finally:
        for probe in probes:
            ray.kill(probe)
    return [BundleRef(index, ip, node_id, gpu_id) for index, (ip, node_id, gpu_id) in enumerate(found)]


class _BundleProbe:
    """Reports where Ray put it, from Ray's bookkeeping only (it never touches CUDA)."""

    def where(self) -> tuple[str, str, str | None]:
        """(node IP, node id, GPU id or ``None``)."""
        import ray

        gpu_ids = ray.get_gpu_ids()
        node_id = ray.get_runtime_context().get_node_id()
        return ray.util.get_node_ip_address(), node_id, str(gpu_ids[0]) if gpu_ids else None
