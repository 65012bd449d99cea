"""train_one_epoch / evaluate: each returns a dict of metrics; metrics stay on the device
until the end of the epoch (no host synchronisation per step)."""
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from .distributed import all_reduce_sum, dist_info
from .progress import progress

__all__ = ["PRECISIONS", "train_one_epoch", "evaluate", "autocast_context", "recalibrate_bn", "NonFiniteLoss"]


class NonFiniteLoss(RuntimeError):
    pass


PRECISIONS = ("fp32", "bf16", "fp16")


def autocast_context(device: torch.device, precision: str):
    """One switch for precision: fp32 -> nullcontext, bf16/fp16 -> torch.autocast."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    if precision == "fp32":
        return nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


# Long on purpose: the training step is the hot path; it stays in one piece so what runs per
# batch (and that nothing synchronises with the host) reads top to bottom.
def train_one_epoch(model, loss_fn, loader, optimizer, scheduler=None, device="cpu",
                    precision="fp32", scaler=None, desc="train", show_progress=True, epoch=None,
                    start_step=0, carry=None, should_stop=None):
    """One pass over `loader` (epoch `epoch`, from batch `start_step`).
    loss_fn(x, model_out, y, index=..., epoch=epochs done, fractional) -> (loss, parts); the
    batch's training-set indices are passed when loss_fn.needs_index.

    Returns {'loss', 'acc' (percent), 'ce', 'skip', 'logit' (those present)} as floats averaged
    per sample, 'lr' (the learning rate of the epoch's last step) and 'lr_start' (its first). When `should_stop()` turns true the epoch stops at a step boundary and
    the dict instead has 'interrupted': True, 'step' (next batch) and 'carry' (running sums to
    pass back as `carry` when resuming).
    """
    device = torch.device(device)
    model.train()
    loss_fn.train()
    carry = carry or {}
    sums = {k: torch.as_tensor(v, dtype=torch.float32, device=device)
            for k, v in carry.get("sums", {}).items()}
    correct = torch.as_tensor(carry.get("correct", 0), dtype=torch.long, device=device)
    seen = int(carry.get("seen", 0))
    lr_start = carry.get("lr_start", carry.get("lr"))  # the rate of the epoch's first step
    lr = lr_start
    with_index = getattr(loss_fn, "needs_index", False)  # a term keeps per-sample state
    if epoch is None:  # any iterable of (x, y)
        if with_index:
            raise ValueError("a distillation term needs sample indices: pass the epoch")
        batches = iter(loader)
    else:
        batches = loader.iterate(epoch, start_step, with_index=with_index)
    total = len(loader) - start_step
    bar = progress(batches, total=total, desc=desc, enabled=show_progress)
    step = start_step
    for batch in bar:
        x, y, index = batch if with_index else (*batch, None)
        lr = optimizer.param_groups[0]["lr"]  # the rate this step uses (a float: no sync)
        if lr_start is None:
            lr_start = lr
        if device.type == "cuda":  # CUDA graphs (--compile-mode reduce-overhead); on the CPU
            torch.compiler.cudagraph_mark_step_begin()  # it would only import the compiler
        with autocast_context(device, precision):
            out = model(x)
            loss, parts = loss_fn(x, out, y, index=index, epoch=(epoch or 0) + step / len(loader))
        optimizer.zero_grad(set_to_none=True)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            optimizer.step()
        if scheduler is not None:
            scheduler.step()
        b = y.shape[0]
        seen += b
        step += 1
        parts = {"loss": loss.detach(), **parts}
        for k, v in parts.items():
            sums[k] = sums.get(k, 0) + v.float() * b
        correct += (out.logits.argmax(1) == y).sum()
        if should_stop is not None and should_stop() and step < len(loader):
            bar.close()
            return {"interrupted": True, "step": step,
                    "carry": {"sums": {k: v.item() for k, v in sums.items()},
                              "correct": int(correct.item()), "seen": seen, "lr": lr,
                              "lr_start": lr_start}}
    bar.close()
    metrics = _epoch_metrics(sums, correct, seen, device, desc)
    metrics["lr"] = lr                      # the rate of the epoch's last step
    metrics["lr_start"] = lr if lr_start is None else lr_start
    return metrics


def _epoch_metrics(sums, correct, seen, device, desc) -> dict:
    """Per-sample means of the summed losses, accuracy (percent) and the sample count, over every
    rank's shard under torchrun; a non-finite loss raises NonFiniteLoss."""
    if dist_info().enabled:
        keys = sorted(sums)
        packed = torch.stack([sums[k].float() for k in keys]
                             + [correct.float(), torch.tensor(float(seen), device=device)])
        all_reduce_sum(packed)
        sums = dict(zip(keys, packed[:len(keys)]))
        correct, seen = packed[len(keys)].round().long(), int(packed[-1].item())
    metrics = {k: (v / max(seen, 1)).item() for k, v in sums.items()}
    if not all(v == v and abs(v) != float("inf") for v in metrics.values()):
        raise NonFiniteLoss(f"non-finite training loss in {desc}: "
                            + ", ".join(f"{k} {v:.4g}" for k, v in metrics.items()))
    metrics["acc"] = 100.0 * correct.item() / max(seen, 1)
    metrics["samples"] = seen
    return metrics


@torch.no_grad()
def evaluate(model, loader, device="cpu", precision="fp32", num_classes=None, desc="eval",
             show_progress=False):
    """Returns {'loss', 'acc' (percent), 'per_class_acc' (list, percent)} over the whole loader."""
    device = torch.device(device)
    model.eval()
    loss_sum = torch.zeros((), dtype=torch.float64, device=device)
    correct = torch.zeros((), dtype=torch.long, device=device)
    per_class_correct = per_class_total = None
    if num_classes:
        per_class_correct = torch.zeros(num_classes, dtype=torch.long, device=device)
        per_class_total = torch.zeros(num_classes, dtype=torch.long, device=device)
    seen = 0
    for x, y in progress(loader, desc=desc, enabled=show_progress):
        with autocast_context(device, precision):
            logits = model(x).logits
        loss_sum += F.cross_entropy(logits.float(), y, reduction="sum")
        pred = logits.argmax(1)
        correct += (pred == y).sum()
        seen += y.shape[0]
        if num_classes:
            per_class_total += torch.bincount(y, minlength=num_classes)
            per_class_correct += torch.bincount(y[pred == y], minlength=num_classes)
    if dist_info().enabled:  # each rank evaluated its shard
        packed = torch.stack([loss_sum.double(), correct.double(),
                              torch.tensor(float(seen), dtype=torch.float64, device=device)])
        all_reduce_sum(packed)
        loss_sum, correct, seen = packed[0], packed[1].round().long(), int(packed[2].item())
        if per_class_correct is not None:
            all_reduce_sum(per_class_correct)
            all_reduce_sum(per_class_total)
    out = {"loss": loss_sum.item() / max(seen, 1), "acc": 100.0 * correct.item() / max(seen, 1),
           "samples": seen}
    if per_class_correct is not None:
        tot = per_class_total.clamp_min(1).double()
        out["per_class_acc"] = (100.0 * per_class_correct.double() / tot).tolist()
    return out


@torch.no_grad()
def recalibrate_bn(model, batches, num_batches: int):
    """Re-estimate every BatchNorm's running mean and variance as a plain average over
    `num_batches` training batches (train-mode forward, no gradient; the weights do not change).

    Why: running statistics are an exponential average of past batches, so after a short first
    epoch with a fast-moving warm-up they describe earlier weights, and evaluation with them can
    show a validation loss in the hundreds for a model that is fine."""
    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or num_batches <= 0:
        return 0
    momenta = [m.momentum for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative average over the batches below
    was_training = model.training
    model.train()
    seen = 0
    try:
        for x, _ in batches:
            if seen >= num_batches:
                break
            model(x)
            seen += 1
    finally:
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
        model.train(was_training)
    return seen
