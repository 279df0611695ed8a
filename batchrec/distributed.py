"""Where the work runs: the device, and the process group of data-parallel training (DDP).

One process; `torchrun --nproc_per_node=N`, which sets RANK, WORLD_SIZE and LOCAL_RANK; or the
workers of a Ray Train `TorchTrainer`, which forms the process group itself. Rank 0 alone logs,
evaluates and writes. NCCL on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Literal

Device = Literal["auto", "cpu", "cuda"]


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
    ray: bool = False  # a Ray Train worker: Ray owns the process group and picks the GPU

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

    @classmethod
    def ray_worker(cls) -> Group:
        """This Ray Train worker's place in the group TorchTrainer has already formed."""
        import ray.train

        ctx = ray.train.get_context()
        return cls(ctx.get_world_rank(), ctx.get_world_size(), ctx.get_local_rank(), ray=True)

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
        if self.ray and device(name).type == "cuda":
            import ray.train.torch

            return ray.train.torch.get_device()
        return device(name, self.local_rank if self.world > 1 else None)

    def sum(self, values):
        """The element-wise sum of a tensor over every rank."""
        if self.world > 1:
            import torch.distributed as dist

            summed = _for_backend(values)
            dist.all_reduce(summed)
            return summed.to(values.device)
        return values

    def max(self, value: int) -> int:
        """The largest of one integer over every rank."""
        if self.world == 1:
            return value
        import torch
        import torch.distributed as dist

        t = _for_backend(torch.tensor([value], dtype=torch.int64))
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return int(t.item())

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def stop(self) -> None:
        import torch.distributed as dist

        if self.world > 1 and not self.ray and dist.is_initialized():
            dist.destroy_process_group()


def _for_backend(t):
    """A copy of `t` where the process group's collectives can take it (NCCL: on this GPU)."""
    import torch.distributed as dist

    return t.to("cuda", copy=True) if dist.get_backend() == "nccl" else t.clone()
