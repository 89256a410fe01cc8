"""This process's place in a ``torchrun`` job: world size, rank, and the few collectives the
training loop needs (all no-ops in a single process)."""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class Distributed:
    """This process's place in a ``torchrun`` job (world size 1 without one)."""

    world_size: int = 1
    rank: int = 0
    local_rank: int = 0
    initialized_here: bool = False

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world_size > 1

    @classmethod
    def from_environment(cls, device: torch.device) -> Distributed:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        if world_size <= 1:
            return cls()
        rank, local_rank = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
        initialized_here = False
        if not dist.is_initialized():
            if device.type == "cuda":
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
            initialized_here = True
        return cls(world_size, rank, local_rank, initialized_here)

    def any(self, flag: bool, device: torch.device) -> bool:
        """True on every process if ``flag`` is true on any (a collective: call it everywhere)."""
        return flag if not self.active else self.max_value(1.0 if flag else 0.0, device) > 0

    def max_value(self, value: float, device: torch.device) -> float:
        """The largest ``value`` over every process (a collective: call it everywhere)."""
        if not self.active:
            return value
        tensor = torch.tensor([float(value)], dtype=torch.float64, device=device)
        dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def barrier(self) -> None:
        if self.active:
            dist.barrier()

    def close(self) -> None:
        if self.initialized_here and dist.is_initialized():
            dist.destroy_process_group()

    def sum_to_host(self, values: torch.Tensor, device: torch.device) -> torch.Tensor:
        """``values`` (a float64 CPU tensor) summed over every process (a collective: call it everywhere)."""
        if not self.active:
            return values
        values = values.to(device) if device.type == "cuda" else values
        dist.all_reduce(values)
        return values.cpu()
