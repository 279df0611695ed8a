"""Where the work runs: the device, and the process group under torchrun (DDP).

One process, or `torchrun --nproc_per_node=N`: torchrun sets RANK, WORLD_SIZE and LOCAL_RANK;
rank 0 alone logs, evaluates and writes. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any


def device(name: str = "auto", local_rank: int | None = None):
    """The torch device for `name` ("auto": CUDA when visible, else CPU); with `local_rank`
    (under DDP), this process's own GPU."""
    import torch

    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(name)
    return torch.device("cuda", local_rank) if dev.type == "cuda" and local_rank is not None else dev


def is_main() -> bool:
    """Whether this process is rank 0 (always, outside torchrun)."""
    return int(os.environ.get("RANK", "0")) == 0


@dataclass
class Group:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @classmethod
    def start(cls, device_name: str) -> Group:
        """Join torchrun's process group (a no-op in one process)."""
        import torch
        import torch.distributed as dist

        world = int(os.environ.get("WORLD_SIZE", "1"))
        if world == 1:
            return cls()
        group = cls(int(os.environ["RANK"]), world, int(os.environ.get("LOCAL_RANK", "0")))
        use_cuda = device_name in ("auto", "cuda") and torch.cuda.is_available()
        if use_cuda:
            torch.cuda.set_device(group.local_rank)
        if not dist.is_initialized():
            dist.init_process_group("nccl" if use_cuda else "gloo")
        return group

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def device(self, name: str):
        """This process's device: under DDP on CUDA, the GPU of its local rank."""
        return device(name, self.local_rank if self.world > 1 else None)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and dist.is_initialized():
            dist.destroy_process_group()
