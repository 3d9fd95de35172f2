"""Multi-process training under `torchrun`: one process per GPU (or CPU processes with gloo).

torchrun sets WORLD_SIZE, RANK and LOCAL_RANK; without them training runs in one process and
every function here is a no-op. Rank 0 evaluates and writes checkpoints; the others follow its
decisions (early stop) through a broadcast.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class World:
    """This process's place in the job: size 1 and rank 0 when not under torchrun."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def world_from_env(environ: dict[str, str] | None = None) -> World:
    env = os.environ if environ is None else environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(size, int(env.get("RANK", "0")), int(env.get("LOCAL_RANK", "0")))


def start(world: World, device: torch.device) -> torch.device:
    """Join the process group (NCCL on CUDA, gloo on CPU); returns this rank's device."""
    if not world.distributed:
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend)
    log.info("rank %d of %d on %s (%s)", world.rank, world.size, device, backend)
    return device


def stop(world: World) -> None:
    if world.distributed and dist.is_initialized():
        dist.destroy_process_group()


def share(world: World, *values: int) -> tuple[int, ...]:
    """Rank 0's integers on every rank (decisions only rank 0 can make), sent as a tensor:
    nothing is pickled between processes."""
    if not world.distributed:
        return values
    # gloo and NCCL both broadcast int64 tensors; NCCL needs them on the rank's GPU.
    device = (
        torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else None
    )
    box = torch.tensor(values, dtype=torch.int64, device=device)
    dist.broadcast(box, src=0)
    return tuple(int(v) for v in box.tolist())


def barrier(world: World) -> None:
    if world.distributed:
        dist.barrier()
