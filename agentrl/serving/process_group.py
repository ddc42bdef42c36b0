"""The weight-update process group: the trainer (rank 0) and the engines, apart from everything else.

Why not the default group or ``torch.distributed.new_group``: the trainer's default group holds
its data-parallel ranks, and ``new_group`` can only carve subgroups out of it, with every rank of
it taking part. The engines are other processes (other programs, other hosts) that belong to no
such group, and an engine has no default group at all. So the weight-update group is a
*separate world*: its own rendezvous store at ``master_address:master_port`` (a TCP store served
by rank 0), its own ranks (trainer 0, engine GPUs ``1..N``), its own name, and it never becomes
or touches the default group. Collectives on it go through the group object itself
(``group.broadcast``), so they cannot land on the trainer's data-parallel group by mistake.

Wire compatibility: SGLang's engines (``init_weights_update_group``) and slime's trainers build
this group the same way: ``torch.distributed.rendezvous("tcp://addr:port", rank, world_size)``,
the store prefixed with the group name, and torch's internal ``_new_process_group_helper`` with
no ranks list (a group of its own). :func:`join` does the same, so an agentrl trainer can update
an SGLang engine and a slime trainer can update ``agentrl serve``, as long as both ends run torch
versions that lay out store keys alike. The helper is private torch API (used the same way by
SGLang, slime, OpenRLHF and verl); the gloo tests in ``tests/serving/test_weight_update.py`` fail
if a torch upgrade breaks it.

One NCCL caveat: torch splits a new NCCL group off the default group when that group was bound
to a device (``init_process_group(device_id=...)``), which would hang here; :func:`join` refuses
that case with a clear error.
"""

from __future__ import annotations

import datetime
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch.distributed import distributed_c10d as c10d

BACKENDS = ("gloo", "nccl")


@dataclass
class WeightUpdateGroup:
    """A joined weight-update group; this process is ``rank`` of ``world_size``."""

    name: str
    backend: str
    rank: int
    world_size: int
    _pg: dist.ProcessGroup

    def broadcast(self, tensor: torch.Tensor) -> None:
        """Send ``tensor`` from rank 0 (on rank 0) or receive it in place (elsewhere); blocks
        until this rank's part is done (for NCCL: until the transfer is queued on the stream)."""
        self._pg.broadcast(tensor, 0).wait()

    def destroy(self) -> None:
        """Leave the group and free its name; safe to call twice."""
        if self._pg in c10d._world.pg_map:
            dist.destroy_process_group(self._pg)


def join(
    *, master_address: str, master_port: int, rank: int, world_size: int, group_name: str,
    backend: str, timeout: datetime.timedelta,
) -> WeightUpdateGroup:
    """Join (rank 0: create and serve the store of) the weight-update group.

    Blocks until all ``world_size`` ranks have joined, or ``timeout``.

    Raises:
        ValueError: an unknown backend, a name already in use in this process, or an NCCL group
            that torch would split off a device-bound default group.
        RuntimeError / DistStoreError: the rendezvous or the backend failed (e.g. timed out).
    """
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if group_name in c10d._world.pg_names.values():
        raise ValueError(f"a process group named {group_name!r} already exists in this process; destroy it first")
    if backend == "nccl" and dist.is_initialized() and c10d._get_default_group().bound_device_id is not None:
        raise ValueError("the default process group is bound to a device (init_process_group(device_id=...)); "
                         "torch would split the NCCL weight-update group off it and hang: initialise it without device_id")
    rendezvous = c10d.rendezvous  # type: ignore[attr-defined]  # public, but missing from torch's __all__
    store, _, _ = next(rendezvous(f"tcp://{master_address}:{master_port}", rank, world_size, timeout=timeout))
    store.set_timeout(timeout)
    pg, _ = c10d._new_process_group_helper(
        world_size, rank, [], c10d.Backend(backend), c10d.PrefixStore(group_name, store),
        group_name=group_name, timeout=timeout,  # type: ignore[arg-type]  # a str NewType in newer torch
    )
    c10d._world.pg_group_ranks[pg] = {i: i for i in range(world_size)}  # destroy_process_group reads it
    return WeightUpdateGroup(group_name, backend, rank, world_size, pg)
