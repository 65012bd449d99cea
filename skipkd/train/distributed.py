"""DistributedDataParallel from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK):
nccl on CUDA, gloo on CPU. A plain `python script.py` run is a world of one without a process
group; a torchrun launch always joins one (a 1-process torchrun runs DDP on nccl too)."""
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

__all__ = ["DistInfo", "init_distributed", "dist_info", "is_main", "all_reduce_sum", "barrier",
           "broadcast_flag", "cleanup", "wrap_distributed", "sync_buffers", "reduce_carry"]


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


def wrap_distributed(model, loss_fn, device):
    """DistributedDataParallel around the trained model under torchrun; the connector's few
    gradients (if any) are averaged across ranks by hooks. A single process gets `model` back."""
    info = dist_info()
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    for p in (p for p in loss_fn.parameters() if p.requires_grad):
        def _average(param, world=info.world_size):
            dist.all_reduce(param.grad)
            param.grad.div_(world)
        p.register_post_accumulate_grad_hook(_average)
    return DDP(model, device_ids=[device.index] if device.type == "cuda" else None)

def sync_buffers(model):
    """BN running statistics drift apart between ranks after DDP's last broadcast: give every
    rank rank 0's, the ones that are saved, before evaluating."""
    if dist_info().enabled:
        for b in model.buffers():
            dist.broadcast(b, src=0)

def reduce_carry(carry, device):
    """The interrupted epoch's running sums over all ranks (saved by rank 0, resumed by it)."""
    if not dist_info().enabled or carry is None:
        return carry
    keys = sorted(carry["sums"])
    t = torch.tensor([carry["sums"][k] for k in keys] + [carry["correct"], carry["seen"]],
                     dtype=torch.float64, device=device)
    all_reduce_sum(t)
    vals = t.tolist()
    return {"sums": dict(zip(keys, vals[:len(keys)])), "correct": int(round(vals[-2])),
            "seen": int(round(vals[-1])), "lr": carry["lr"], "lr_start": carry.get("lr_start")}
