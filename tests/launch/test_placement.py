"""Placement: the pure layout over the whole flag matrix, then real Ray placement groups on
simulated clusters (``ray.cluster_utils.Cluster``, logical GPUs) of 1, 2 and 4 nodes of 8 GPUs
beside a CPU-only head, and a cluster without GPUs.

One Ray cluster for the module: the head has no GPUs; ``gpu_nodes`` adds or removes GPU nodes,
and ``placed`` reserves one real placement group per cluster size whose probed bundles serve
every layout of that size.
"""

from __future__ import annotations

import random
import re
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import pytest
import ray
from ray.cluster_utils import Cluster
from ray.util.placement_group import placement_group_table

from agentrl.errors import ConfigError
from agentrl.launch.placement import (
    ENGINE_SHARE,
    TRAINER_SHARE,
    BundleRef,
    Layout,
    Placement,
    PlacementConfig,
    PlacementError,
    assign_bundles,
    create_placement,
    order_bundles,
    plan_layout,
)

GPUS_PER_NODE = 8
NODE_COUNTS = (1, 2, 4)
ENGINE_SIZES = (1, 2, 4)
PLACE_TIMEOUT_S = 120  # 32 probe actors start on 2 shared cores


def node_config(nodes: int, colocate: bool, engine_gpus: int) -> PlacementConfig:
    """The launch of a cluster of ``nodes`` x 8 GPUs: colocated, the trainer on every GPU; else half for
    the trainer (one node's worth per node pair, half a node on one node) and half for the engines."""
    if colocate:
        return PlacementConfig(actor_num_nodes=nodes, actor_num_gpus_per_node=GPUS_PER_NODE, colocate=True,
                               rollout_num_gpus_per_engine=engine_gpus)
    trainer_nodes, per_node = (1, GPUS_PER_NODE // 2) if nodes == 1 else (nodes // 2, GPUS_PER_NODE)
    return PlacementConfig(actor_num_nodes=trainer_nodes, actor_num_gpus_per_node=per_node,
                           rollout_num_gpus=nodes * GPUS_PER_NODE // 2, rollout_num_gpus_per_engine=engine_gpus)


def assert_layout_invariants(layout: Layout, config: PlacementConfig) -> None:
    """Every invariant of a layout, from the flags' meanings."""
    ranks, engine_bundles, size = config.trainer_ranks, config.engine_bundles, config.rollout_num_gpus_per_engine
    offset = 0 if config.colocate else ranks
    assert layout.num_bundles == (max(ranks, engine_bundles) if config.colocate else ranks + engine_bundles)
    assert layout.trainer == tuple(range(ranks))
    assert len(layout.engines) == engine_bundles // size
    assert all(engine == tuple(range(engine[0], engine[0] + size)) for engine in layout.engines)
    assert [i for engine in layout.engines for i in engine] == list(range(offset, offset + engine_bundles))
    used = set(layout.trainer) | {i for engine in layout.engines for i in engine}
    assert used == set(range(layout.num_bundles))


@pytest.mark.parametrize("engine_gpus", ENGINE_SIZES)
@pytest.mark.parametrize("colocate", [True, False], ids=["colocated", "disaggregated"])
@pytest.mark.parametrize("nodes", NODE_COUNTS)
def test_layout_of_every_cluster_size(nodes, colocate, engine_gpus):
    config = node_config(nodes, colocate, engine_gpus)
    layout = plan_layout(config)
    assert_layout_invariants(layout, config)
    assert layout.num_bundles == nodes * GPUS_PER_NODE
    engine_bundles = {i for engine in layout.engines for i in engine}
    assert engine_bundles == set(layout.trainer) if colocate else not engine_bundles & set(layout.trainer)


@pytest.mark.parametrize("kwargs, bundles, engines", [
    ({"actor_num_gpus_per_node": 4, "colocate": True, "rollout_num_gpus": 2}, 4, ((0,), (1,))),
    ({"actor_num_gpus_per_node": 2, "colocate": True, "rollout_num_gpus": 4, "rollout_num_gpus_per_engine": 2}, 4, ((0, 1), (2, 3))),
    ({"actor_num_gpus_per_node": 2, "colocate": True, "rollout_num_gpus": 0}, 2, ()),
    ({"actor_num_gpus_per_node": 2, "rollout_num_gpus": 0}, 2, ()),
    ({"actor_num_nodes": 2, "actor_num_gpus_per_node": 1, "rollout_num_gpus": 1}, 3, ((2,),)),
])
def test_layout_edge_cases(kwargs, bundles, engines):
    config = PlacementConfig(**kwargs)
    layout = plan_layout(config)
    assert_layout_invariants(layout, config)
    assert (layout.num_bundles, layout.engines) == (bundles, engines)


def test_cpu_layout_uses_cpu_bundles():
    layout = plan_layout(PlacementConfig(actor_num_gpus_per_node=2, rollout_num_gpus=2, use_gpus=False,
                                         actor_num_cpus_per_rank=3))
    assert layout.bundle == {"CPU": 3}
    assert layout.describe() == "4 {CPU:3} bundles (2 trainer ranks, 2 engines of 1)"
    gpu = plan_layout(PlacementConfig(actor_num_gpus_per_node=2, rollout_num_gpus=4, rollout_num_gpus_per_engine=2,
                                      actor_num_cpus_per_rank=3))
    assert gpu.bundle == {"GPU": 1, "CPU": 1}
    assert gpu.describe() == "6 {GPU:1, CPU:1} bundles (2 trainer ranks, 2 engines of 2)"


@pytest.mark.parametrize("kwargs, message", [
    ({"actor_num_nodes": 0, "rollout_num_gpus": 1}, "--actor-num-nodes must be >= 1, got 0"),
    ({"actor_num_gpus_per_node": 0, "colocate": True}, "--actor-num-gpus-per-node must be >= 1, got 0"),
    ({"rollout_num_gpus": -1}, "--rollout-num-gpus must be >= 0, got -1"),
    ({"rollout_num_gpus": 2, "rollout_num_gpus_per_engine": 0}, "--rollout-num-gpus-per-engine must be >= 1, got 0"),
    ({"colocate": True, "use_gpus": False, "actor_num_cpus_per_rank": 0}, "--actor-num-cpus-per-rank must be >= 1, got 0"),
    ({}, ("--rollout-num-gpus is required without --colocate: the engines take their own GPUs after the trainer's "
          "(0: no engines, use --rollout-engine-urls)")),
    ({"rollout_num_gpus": 6, "rollout_num_gpus_per_engine": 4}, "--rollout-num-gpus 6 is not a multiple of --rollout-num-gpus-per-engine 4"),
    ({"actor_num_gpus_per_node": 6, "colocate": True, "rollout_num_gpus_per_engine": 4},
     "--rollout-num-gpus 6 is not a multiple of --rollout-num-gpus-per-engine 4"),
])
def test_config_errors_name_the_flag(kwargs, message):
    with pytest.raises(ConfigError) as info:
        PlacementConfig(**kwargs)
    assert str(info.value) == message


def test_colocate_defaults_rollout_gpus_to_the_trainers():
    config = PlacementConfig(actor_num_nodes=2, actor_num_gpus_per_node=4, colocate=True, rollout_num_gpus_per_engine=2)
    assert (config.trainer_ranks, config.engine_bundles, config.num_engines) == (8, 8, 4)


def test_order_is_physical_whatever_the_bundle_indices():
    """Node IPs sort numerically (10.0.0.9 < 10.0.0.10), IPv6 after IPv4, host names last; GPU ids
    numerically; nodes sharing an IP by node id. Any numbering of the bundles gives the same order."""
    places = [("10.0.0.9", "a"), ("10.0.0.9", "b"), ("10.0.0.10", "a"), ("fe80::1", "c"), ("gpu-host", "d")]
    physical = [(ip, node, str(gpu)) for ip, node in places for gpu in (0, 1, 2, 9, 10)]
    for seed in range(5):
        shuffled = random.Random(seed).sample(physical, len(physical))
        bundles = [BundleRef(index, ip, node, gpu) for index, (ip, node, gpu) in enumerate(shuffled)]
        assert [(b.node_ip, b.node_id, b.gpu_id) for b in order_bundles(bundles)] == physical


def test_cpu_bundles_order_by_node_then_index():
    bundles = [BundleRef(0, "10.0.0.2", "x", None), BundleRef(1, "10.0.0.1", "y", None), BundleRef(2, "10.0.0.2", "x", None),
               BundleRef(3, "10.0.0.1", "y", None)]
    assert [b.index for b in order_bundles(bundles)] == [1, 3, 0, 2]


def two_nodes() -> list[BundleRef]:
    return [BundleRef(8 * n + g, "10.0.0.1", f"node{n}", str(g)) for n in range(2) for g in range(8)]


def test_an_engine_straddling_nodes_is_refused():
    layout = plan_layout(PlacementConfig(actor_num_gpus_per_node=6, rollout_num_gpus=8, rollout_num_gpus_per_engine=4))
    with pytest.raises(PlacementError) as info:
        assign_bundles(layout, two_nodes()[:14], pg=None)
    assert str(info.value) == (
        "engine 0 would straddle 2 nodes without filling them (node 10.0.0.1/node0: GPU 6, GPU 7; "
        "node 10.0.0.1/node1: GPU 0, GPU 1): make the trainer's rank count "
        "(--actor-num-nodes x --actor-num-gpus-per-node) and the GPUs each node gives the job multiples of "
        "--rollout-num-gpus-per-engine")


def test_an_engine_filling_whole_nodes_is_placed():
    layout = plan_layout(PlacementConfig(actor_num_nodes=2, actor_num_gpus_per_node=8, colocate=True, rollout_num_gpus_per_engine=16))
    placement = assign_bundles(layout, two_nodes(), pg=None)
    assert placement.engines == (tuple(two_nodes()),)


def test_assign_needs_every_bundle():
    layout = plan_layout(PlacementConfig(actor_num_gpus_per_node=8, colocate=True))
    with pytest.raises(ValueError, match="the layout has 8 bundles, 16 were given"):
        assign_bundles(layout, two_nodes(), pg=None)


def test_planning_imports_neither_ray_nor_torch():
    """Planning is pure, and the probe actor (defined in the same module) cannot reach CUDA through torch."""
    code = "import sys, agentrl.launch.placement; print(sorted({'ray', 'torch'} & set(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


# --- Ray: real placement groups on a simulated cluster -------------------------------------------

@ray.remote
def where_am_i() -> tuple[str, list[str], str | None]:
    """(node id, Ray's GPU ids, CUDA_VISIBLE_DEVICES) of the task: Ray's bookkeeping, no CUDA."""
    import os

    return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()], os.environ.get("CUDA_VISIBLE_DEVICES")


@ray.remote
class Holder:
    """An actor that only says where it is, to hold a share of a bundle."""

    def where(self) -> tuple[str, list[str]]:
        return ray.get_runtime_context().get_node_id(), [str(g) for g in ray.get_gpu_ids()]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head without GPUs (the usual Ray head) and no dashboard (its port is shared with other tests)."""
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 8, "num_gpus": 0, "include_dashboard": False})
    try:
        ray.init(address=cluster.address, logging_level="WARNING")
        yield cluster
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def gpu_nodes(request, cluster) -> int:
    """Adds or removes worker nodes of 8 logical GPUs until the cluster has ``request.param``."""
    workers = [node for node in cluster.list_all_nodes() if node is not cluster.head_node]
    for node in workers[request.param:]:
        cluster.remove_node(node)
    for _ in range(request.param - len(workers)):
        cluster.add_node(num_cpus=GPUS_PER_NODE, num_gpus=GPUS_PER_NODE)
    cluster.wait_for_nodes()
    return request.param


@pytest.fixture(scope="module")
def placed(gpu_nodes) -> Iterator[Placement]:
    """A real placement filling every GPU: disaggregated, engines of 2 GPUs."""
    placement = create_placement(plan_layout(node_config(gpu_nodes, False, 2)), timeout_s=PLACE_TIMEOUT_S)
    yield placement
    placement.remove()


def physical(placement: Placement) -> list[BundleRef]:
    """Every bundle of a disaggregated placement in logical order."""
    return [*placement.trainer, *(b for engine in placement.engines for b in engine)]


def on_nodes(*counts: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Runs a test on the cluster with each count of GPU nodes (0: no GPUs). Tests without GPUs
    come first in the file so that pytest's grouping by parameter only ever adds nodes."""
    ids = [f"{n}x8gpu" if n else "no-gpu" for n in counts]
    return lambda test: pytest.mark.slow(pytest.mark.parametrize("gpu_nodes", counts, indirect=True, ids=ids)(test))


@on_nodes(0)
def test_cpu_bundles_on_a_cluster_without_gpus(gpu_nodes, cluster):
    config = PlacementConfig(actor_num_gpus_per_node=2, rollout_num_gpus=2, use_gpus=False, actor_num_cpus_per_rank=2)
    placement = create_placement(plan_layout(config), timeout_s=PLACE_TIMEOUT_S)
    try:
        bundles = physical(placement)
        assert {(b.node_id, b.gpu_id) for b in bundles} == {(cluster.head_node.node_id, None)}
        assert [b.index for b in bundles] == [0, 1, 2, 3]
        options = placement.actor_options("trainer", 1)
        assert (options["num_cpus"], options["num_gpus"]) == (2 * TRAINER_SHARE, 0)
        node_id, gpu_ids, _ = ray.get(where_am_i.options(**options).remote(), timeout=60)
        assert (node_id, gpu_ids) == (cluster.head_node.node_id, [])
    finally:
        placement.remove()


@on_nodes(0)
def test_gpu_bundles_on_a_cluster_without_gpus_fail_fast(gpu_nodes):
    layout = plan_layout(PlacementConfig(actor_num_gpus_per_node=1, rollout_num_gpus=1))
    with pytest.raises(PlacementError, match=r"not ready after 1 s: the cluster has 0 GPUs \(0 free\) and 8 CPUs "
                                             r"\(\d+ free\) on 1 node; without GPUs, run with CPU bundles \(--device cpu\)$"):
        create_placement(layout, timeout_s=1)




@on_nodes(*NODE_COUNTS)
def test_bundles_in_node_then_gpu_order(gpu_nodes, placed):
    bundles = physical(placed)
    assert sorted(b.index for b in bundles) == list(range(gpu_nodes * GPUS_PER_NODE))
    blocks = [bundles[i:i + GPUS_PER_NODE] for i in range(0, len(bundles), GPUS_PER_NODE)]
    for block in blocks:
        assert len({b.node_id for b in block}) == 1
        assert [b.gpu_id for b in block] == [str(g) for g in range(GPUS_PER_NODE)]
    nodes = [(block[0].node_ip, block[0].node_id) for block in blocks]
    assert nodes == sorted(set(nodes))
    assert {b.node_id for b in bundles} == {n["NodeID"] for n in ray.nodes() if n["Alive"] and n["Resources"].get("GPU")}


@on_nodes(*NODE_COUNTS)
def test_actors_run_on_their_bundles_gpu(gpu_nodes, placed):
    """A task given ``actor_options`` runs on the node and GPU its BundleRef names (first and last of each role)."""
    roles = [("trainer", 0), ("trainer", len(placed.trainer) - 1), ("engine", 0), ("engine", len(placed.engines) - 1)]
    found = ray.get([where_am_i.options(**placed.actor_options(*role)).remote() for role in roles], timeout=60)
    for role, (node_id, gpu_ids, visible) in zip(roles, found):
        bundle = placed.bundle_of(*role)
        assert (node_id, gpu_ids, visible) == (bundle.node_id, [bundle.gpu_id], bundle.gpu_id)


@on_nodes(*NODE_COUNTS)
def test_probes_release_their_bundles(gpu_nodes, placed):
    key = f"GPU_group_{placed.pg.id.hex()}"
    deadline = time.monotonic() + 30
    while ray.available_resources().get(key) != gpu_nodes * GPUS_PER_NODE:
        assert time.monotonic() < deadline, f"bundles still held: {ray.available_resources().get(key)} GPUs free"
        time.sleep(0.2)


@pytest.mark.parametrize("engine_gpus", ENGINE_SIZES)
@pytest.mark.parametrize("colocate", [True, False], ids=["colocated", "disaggregated"])
@on_nodes(*NODE_COUNTS)
def test_assignment_on_probed_bundles(gpu_nodes, placed, colocate, engine_gpus):
    """Every layout of this cluster size on the real, probed bundles of ``placed``."""
    bundles = physical(placed)
    placement = assign_bundles(plan_layout(node_config(gpu_nodes, colocate, engine_gpus)), bundles, placed.pg)
    assert placement.trainer == tuple(bundles[:len(placement.trainer)])
    engine_bundles = [b for engine in placement.engines for b in engine]
    if colocate:
        assert engine_bundles == list(placement.trainer)
    else:
        assert not set(engine_bundles) & set(placement.trainer)
        assert engine_bundles == bundles[len(placement.trainer):]
    for engine in placement.engines:
        assert len({b.node_id for b in engine}) == 1
        assert [int(b.gpu_id) for b in engine] == list(range(int(engine[0].gpu_id), int(engine[0].gpu_id) + engine_gpus))
    for role, count in (("trainer", len(placement.trainer)), ("engine", len(placement.engines))):
        for i in range(count):
            options = placement.actor_options(role, i)
            assert options["scheduling_strategy"].placement_group_bundle_index == placement.bundle_of(role, i).index


@on_nodes(*NODE_COUNTS)
def test_colocated_rank_and_engine_share_a_gpu(gpu_nodes, placed):
    placement = assign_bundles(plan_layout(node_config(gpu_nodes, True, 1)), physical(placed), placed.pg)
    trainer_options, engine_options = placement.actor_options("trainer", 0), placement.actor_options("engine", 0)
    assert (trainer_options["num_gpus"], engine_options["num_gpus"]) == (TRAINER_SHARE, ENGINE_SHARE)
    actors = [Holder.options(**trainer_options).remote(), Holder.options(**engine_options).remote()]
    try:
        both = ray.get([actor.where.remote() for actor in actors], timeout=60)
    finally:
        for actor in actors:
            ray.kill(actor)
    bundle = placement.trainer[0]
    assert both == [(bundle.node_id, [bundle.gpu_id])] * 2


@on_nodes(1)
def test_unsatisfiable_group_fails_within_its_bound(gpu_nodes):
    gpus = gpu_nodes * GPUS_PER_NODE
    layout = plan_layout(PlacementConfig(actor_num_gpus_per_node=gpus + 1, rollout_num_gpus=0))
    start = time.monotonic()
    with pytest.raises(PlacementError) as info:
        create_placement(layout, timeout_s=2)
    assert time.monotonic() - start < 2 + 10
    assert re.fullmatch(
        rf"placement group of {gpus + 1} \{{GPU:1, CPU:1\}} bundles \({gpus + 1} trainer ranks, 0 engines of 0\), "
        rf"strategy PACK, not ready after 2 s: the cluster has {gpus} GPUs \(\d+ free\) and {gpus + 8} CPUs "
        rf"\(\d+ free\) on {gpu_nodes + 1} nodes; lower --actor-num-nodes, --actor-num-gpus-per-node, "
        r"--rollout-num-gpus, add nodes, or free what other jobs hold", str(info.value))
    assert "PENDING" not in {group["state"] for group in placement_group_table().values()}
