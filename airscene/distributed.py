"""The processes of a run: one, or several launched by ``torchrun`` (torch.distributed).

``torchrun --nproc-per-node K -m airscene train ...`` starts K processes and tells each its rank
and the world's size in the environment (``RANK``, ``WORLD_SIZE``, ``MASTER_ADDR``, ...).
``World.from_environment`` joins that process group (gloo on CPU, NCCL on CUDA); without
torchrun it is the world of one process, and every collective below is the identity, so the
single-process run has nothing to configure and does no communication.

Each process (rank) trains on its own shard of every minibatch; the gradients are averaged by
``torch.nn.parallel.DistributedDataParallel``, everything else the ranks must agree on (the NVIL
signal moments, the metric sums, the decision to skip a non-finite step) by the sums here.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from airscene.errors import AirsceneError


def launched_by_torchrun() -> bool:
    """True in a process started by torchrun (or any launcher that sets its variables)."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def main_process() -> bool:
    """True unless this is a torchrun process of rank other than 0 (before any group exists)."""
    return os.environ.get("RANK", "0") == "0"


@dataclass(frozen=True)
class World:
    """This process's place among the processes of the run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    joined: bool = False  # True when this World initialised the process group (and must end it)

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes checkpoints, logs and progress bars."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @classmethod
    def from_environment(cls, device: torch.device) -> World:
        """The world torchrun started this process in (gloo for CPU, NCCL for CUDA), or the
        world of this one process when it was not started by torchrun."""
        if dist.is_available() and dist.is_initialized():  # a caller set the group up itself
            return cls(dist.get_rank(), dist.get_world_size(), _local_rank(), joined=False)
        if not launched_by_torchrun() or int(os.environ["WORLD_SIZE"]) == 1:
            return cls()
        if not dist.is_available():
            raise AirsceneError(
                "torchrun started this process, but PyTorch has no torch.distributed"
            )
        backend = "nccl" if device.type == "cuda" else "gloo"
        try:
            dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
        except (RuntimeError, ValueError) as error:
            raise AirsceneError(f"could not join the torchrun process group ({error})") from None
        return cls(dist.get_rank(), dist.get_world_size(), _local_rank(), joined=True)

    def device(self, device: torch.device) -> torch.device:
        """On CUDA, each process of a machine takes the GPU of its local rank."""
        if device.type == "cuda" and self.distributed:
            torch.cuda.set_device(self.local_rank)
            return torch.device("cuda", self.local_rank)
        return device

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """``tensor`` summed over the ranks (in place, and returned); the identity for one."""
        if self.distributed:
            dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
        return tensor

    def gather(self, value: Any) -> list[Any]:
        """Every rank's ``value`` (plain picklable data), in rank order, on every rank."""
        if not self.distributed:
            return [value]
        values: list[Any] = [None] * self.size
        dist.all_gather_object(values, value)
        return values

    def agree(self, flag: bool) -> bool:
        """True only if ``flag`` is True on every rank (one small all-reduce)."""
        if not self.distributed:
            return flag
        votes = torch.tensor([0.0 if flag else 1.0], device=_collective_device())
        return bool(self.sum(votes).item() == 0)

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def close(self) -> None:
        """Leave the process group if this World joined it."""
        if self.joined and dist.is_initialized():
            dist.destroy_process_group()


def _local_rank() -> int:
    return int(os.environ.get("LOCAL_RANK", 0))


def _collective_device() -> torch.device:
    """Where a small tensor for a collective must live: the GPU under NCCL, else the CPU."""
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")
