"""DistributedDataParallel from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK):
nccl on CUDA, gloo on CPU. A plain `python script.py` run is a world of one without a process
group; a torchrun launch always joins one (a 1-process torchrun runs DDP on nccl too)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "dist_info", "is_main", "all_reduce_sum", "barrier",
           "broadcast_flag", "cleanup"]


@dataclass
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    backend: str | None = None  # the process group's ("nccl", "gloo"); None without torchrun

    @property
    def enabled(self):
        return self.backend is not None

    @property
    def is_main(self):
        return self.rank == 0


_INFO = DistInfo()


def init_distributed(device_name: str = "auto") -> DistInfo:
    """Join the process group when launched by torchrun; returns this process's DistInfo."""
    global _INFO
    if "WORLD_SIZE" not in os.environ or "RANK" not in os.environ:  # not launched by torchrun
        _INFO = DistInfo()
        return _INFO
    world = int(os.environ["WORLD_SIZE"])
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and not str(device_name).startswith("cpu")
    if use_cuda:
        torch.cuda.set_device(local)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    _INFO = DistInfo(rank, world, local, dist.get_backend())
    if rank != 0:  # one console: the other ranks print nothing (errors still reach stderr)
        import sys
        sys.stdout = open(os.devnull, "w")
    return _INFO


def dist_info() -> DistInfo:
    return _INFO


def is_main() -> bool:
    return _INFO.is_main


def all_reduce_sum(t: torch.Tensor) -> torch.Tensor:
    """In-place sum over ranks (a no-op in a single process)."""
    if _INFO.enabled:
        dist.all_reduce(t, op=dist.ReduceOp.SUM)
    return t


def barrier():
    if _INFO.enabled:
        dist.barrier()


def broadcast_flag(flag: bool, device) -> bool:
    """True on every rank when any rank says True."""
    if not _INFO.enabled:
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item() > 0)


def cleanup():
    if _INFO.enabled and dist.is_initialized():
        dist.destroy_process_group()
