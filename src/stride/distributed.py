"""One attribution run sharded over the processes of a torch.distributed job (`torchrun`).

The run goes in phases (STRIDE's: `StrideAttributor.shard_phases`), and every process finishes a
phase before any starts the next: STRIDE's designs are trained on the ranks that own them (design
d on rank d mod world size; the first-order features, when the run uses them, count as one more
part), then each design's measurement and recovery are split into query blocks, (design, query
block) pairs shared round robin over all ranks. Every result is a stage in the shared run folder.
Rank 0 holds the folder's lock, claims it first, and once every phase is done it runs the ordinary
single-process path, which finds the stages (and the blocks) stored and loads them, then writes
the outputs. Nothing but a one-byte failure flag travels between processes, so the scores are
those of a single-process run with the same seed and thread count, and a killed job resumes from
its stages and blocks.

Backends: gloo on the CPU, NCCL on CUDA (each process then takes the GPU of its local rank).
"""

from __future__ import annotations

import contextlib
import datetime
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TypeVar

import torch
import torch.distributed as dist

from stride.errors import StrideError

T = TypeVar("T")
WAIT_LIMIT = datetime.timedelta(days=7)  # a rank may wait this long for the slowest one's designs


@dataclass(frozen=True)
class Shard:
    """This process's place in the job: its rank, the world size and its rank on this machine."""

    rank: int
    world: int
    local_rank: int

    @property
    def leader(self) -> bool:
        return self.rank == 0

    def owns(self, part: int) -> bool:
        """Whether this process computes independent part `part` (round robin over the ranks)."""
        return part % self.world == self.rank


def current_shard() -> Shard | None:
    """This process's shard when torchrun started more than one process (WORLD_SIZE > 1), else None."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return None
    return Shard(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))


def check_parts(shard: Shard, n_parts: int, what: str) -> None:
    """Refuse a world size larger than the most independent parts of any phase: some ranks would
    have nothing to do in every phase."""
    if shard.world > n_parts:
        remedy = "run it as one process" if n_parts == 1 else f"start at most {n_parts} in all"
        raise StrideError(f"torchrun started {shard.world} processes, but no phase of this run has more than "
                          f"{n_parts} independent part(s) ({what}): {remedy}")  # fmt: skip


def shard_device(shard: Shard, device: torch.device) -> torch.device:
    """The device of this rank: with CUDA, the GPU of its local rank unless one was named."""
    if device.type == "cuda" and device.index is None:
        return torch.device("cuda", shard.local_rank)
    return device


@contextlib.contextmanager
def process_group(shard: Shard | None, device: torch.device) -> Iterator[None]:
    """Join the job's process group for the block (nothing for a single process)."""
    if shard is None:
        yield
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend, timeout=WAIT_LIMIT)
    try:
        yield
    finally:
        dist.destroy_process_group()


def together(shard: Shard | None, step: Callable[[], T], device: torch.device) -> T:
    """Run `step` on this rank, then wait for every rank: when any of them failed, every rank raises
    (the failing one its own error, the others a StrideError pointing at it)."""
    if shard is None:
        return step()
    failure: BaseException | None = None
    result = None
    try:
        result = step()
    except BaseException as exc:  # reported to the other ranks before it is raised here
        failure = exc
    flag = torch.tensor([0 if failure is None else 1], device=device)
    dist.all_reduce(flag, op=dist.ReduceOp.MAX)
    if failure is not None:
        raise failure
    if flag.item():
        raise StrideError(f"another process of this torchrun job failed (its message is above); rank {shard.rank} "
                          "stops too. Finished stages are kept: rerun to resume")  # fmt: skip
    return result  # type: ignore[return-value]  # set: step() returned without raising
