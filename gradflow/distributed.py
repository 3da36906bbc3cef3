"""torch.distributed for training: join the group torchrun describes, reduce, check replicas."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.distributed as dist
from torch import Tensor, nn

from .errors import UserInputError


@dataclass
class World:
    """This process's place: rank, number of processes, device; ``owns_group``: we joined it."""

    rank: int = 0
    size: int = 1
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    owns_group: bool = False

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def broadcast_buffers(self, module: nn.Module) -> None:
        """Copy rank 0's buffers (BN running statistics) to every rank, as DDP does before
        each forward; after a train-mode forward each rank holds its own shard's statistics."""
        if self.distributed:
            for buffer in module.buffers():
                dist.broadcast(buffer, 0)

    def sum(self, values: Tensor) -> Tensor:
        """Sum over ranks (identity in one process)."""
        if self.distributed:
            dist.all_reduce(values)
        return values


def setup_world(device: str) -> World:
    """Join the torch.distributed group torchrun describes (WORLD_SIZE > 1), pick the device."""
    size = int(os.environ.get("WORLD_SIZE", "1"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if device == "auto":
        device = f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(device)
    except RuntimeError as err:
        raise UserInputError(f"bad --device {device!r}: {err}") from None
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise UserInputError(f"--device {device} asked for, but CUDA is not available")
    if chosen.type == "cuda" and chosen.index is None:
        chosen = torch.device("cuda", local_rank)
    if chosen.type == "cuda":
        torch.cuda.set_device(chosen)
    if size == 1:
        return World(device=chosen)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if chosen.type == "cuda" else "gloo")
    return World(dist.get_rank(), dist.get_world_size(), chosen, owns)


def weights_spread(core: nn.Module, world: World) -> float:
    """max |w_rank - w_rank0| over parameters and ranks (0.0: the replicas are in sync)."""
    if not world.distributed:
        return 0.0
    flat = nn.utils.parameters_to_vector(core.parameters()).detach()
    reference = flat.clone()
    dist.broadcast(reference, 0)
    spread = (flat - reference).abs().max().double()
    dist.all_reduce(spread, op=dist.ReduceOp.MAX)
    return float(spread)
