"""What both training scripts share: device, data, loaders and the per-stage epoch loop that
evaluates, keeps the best checkpoint, and writes numpy arrays, JSON and TensorBoard."""
import os
import platform
import random
import time

import numpy as np
import torch

from models import create_model

from .checkpoint import save_checkpoint
from .data import Augment, TensorLoader, channel_stats, load_dataset
from .engine import NonFiniteLoss, evaluate, train_one_epoch
from .errors import UserError
from .optim import build_optimizer, build_scheduler, effective_lr
from .tensorboard import log_epoch, log_graph, log_hparams, log_predictions

__all__ = ["resolve_device", "seed_everything", "prepare_data", "make_loaders", "build_model",
           "count_params", "train_stage", "environment"]


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    return dev


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(args):
    """-> (train, test, data_cfg). Normalisation statistics come from the training split."""
    name = args.dataset
    if name == "auto":
        if os.path.isdir(os.path.join(args.data_dir, "cifar-10-batches-py")) or args.download:
            name = "cifar10"
        else:
            print(f"notice: CIFAR-10 not found in {args.data_dir}/cifar-10-batches-py; using the "
                  f"built-in synthetic dataset instead (put CIFAR-10 there or pass --download)")
            name = "synthetic"
    kwargs = {}
    if name == "synthetic":
        kwargs = dict(train_size=args.synthetic_train_size, test_size=args.synthetic_test_size,
                      seed=1234)  # the dataset is fixed; --seed only changes training
    train, test = load_dataset(name, args.data_dir, args.download, **kwargs)
    if args.limit_train:
        train.images, train.labels = train.images[:args.limit_train], train.labels[:args.limit_train]
    if args.limit_test:
        test.images, test.labels = test.images[:args.limit_test], test.labels[:args.limit_test]
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"dataset {name} in {args.data_dir} has no images")
    c = train.images.shape[1]
    if args.normalize:
        mean, std = channel_stats(train.images)
    else:
        mean, std = [0.0] * c, [1.0] * c
    num_classes = max(len(train.classes), int(train.labels.max()) + 1)
    data_cfg = {"dataset": name, "mean": mean, "std": std, "classes": list(train.classes),
                "num_classes": num_classes, "in_channels": c,
                "image_size": int(train.images.shape[-1]),
                "train_size": len(train), "test_size": len(test)}
    return train, test, data_cfg


def make_loaders(train, test, data_cfg, args, device):
    aug = Augment(crop_padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip)
    train_loader = TensorLoader(train, args.batch_size, device, data_cfg["mean"], data_cfg["std"],
                                shuffle=args.shuffle, augment=aug, seed=args.seed,
                                channels_last=args.channels_last)
    test_loader = TensorLoader(test, args.eval_batch_size, device, data_cfg["mean"], data_cfg["std"],
                               channels_last=args.channels_last)
    return train_loader, test_loader


def build_model(arch, data_cfg, width, eca, eca_k, device, channels_last=False):
    model = create_model(arch, num_classes=data_cfg["num_classes"], base_width=width,
                         in_channels=data_cfg["in_channels"], eca=eca, eca_k=eca_k).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = {"num_classes": data_cfg["num_classes"], "base_width": width,
           "in_channels": data_cfg["in_channels"], "eca": eca, "eca_k": eca_k,
           "image_size": data_cfg["image_size"]}
    return model, cfg


def count_params(model) -> int:
    return sum(p.numel() for p in model.parameters())


def environment(device):
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(),
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


def train_stage(*, role, arch, model, model_cfg, loss_fn, args, device, train_loader, test_loader,
                data_cfg, outputs, writer, array_role=None, epochs=None):
    """Train one model for `epochs`; keep the best (by args.select_by) and the last checkpoint.

    Returns a dict of results for the JSON summary.
    """
    epochs = epochs or args.epochs
    array_role = role if array_role is None else array_role
    extra_params = [p for p in loss_fn.parameters() if p.requires_grad]  # connector, if any
    optimizer = build_optimizer(list(model.parameters()) + extra_params, args)
    scheduler = build_scheduler(optimizer, args, len(train_loader), epochs)
    scaler = torch.amp.GradScaler("cuda") if args.precision == "fp16" else None
    history = {k: [] for k in ("train_acc", "val_acc", "train_loss", "val_loss")}
    best, best_epoch = None, -1
    best_path, last_path = outputs.checkpoint(role), outputs.checkpoint(role, last=True)
    log_graph(writer, model, next(iter(test_loader))[0])
    start = time.perf_counter()
    train_time = 0.0
    for epoch in range(epochs):
        t0 = time.perf_counter()
        try:
            tr = train_one_epoch(model, loss_fn, train_loader, optimizer, scheduler, device,
                                 args.precision, scaler, desc=f"{role} {epoch + 1}/{epochs}",
                                 show_progress=args.progress)
        except NonFiniteLoss as exc:
            raise UserError(f"{exc}; stopping ({best_path} keeps the last good best checkpoint) "
                            f"- try a lower --lr") from None
        train_time += time.perf_counter() - t0
        va = evaluate(model, test_loader, device, args.precision)
        for k in ("ce", "skip", "logit"):
            if k in tr:
                history.setdefault(f"train_loss_{k}", []).append(tr[k])
        history.setdefault("train_lr", []).append(tr["lr"])
        history["train_acc"].append(tr["acc"])
        history["train_loss"].append(tr["loss"])
        history["val_acc"].append(va["acc"])
        history["val_loss"].append(va["loss"])
        outputs.save_history(array_role, history)
        log_epoch(writer, role, epoch, tr, va)
        score = va["acc"] if args.select_by == "acc" else -va["loss"]
        metrics = {"epoch": epoch + 1, "train": tr, "val": va}
        ckpt_kwargs = dict(arch=arch, role=role, model_cfg=model_cfg, data_cfg=data_cfg,
                           args=vars(args), epoch=epoch + 1)
        if best is None or score > best:
            best, best_epoch = score, epoch + 1
            save_checkpoint(best_path, model, metrics=metrics, **ckpt_kwargs)
        parts = " ".join(f"{k} {tr[k]:.4f}" for k in ("ce", "skip", "logit") if k in tr)
        print(f"[{role}] epoch {epoch + 1}/{epochs}  train loss {tr['loss']:.4f} ({parts})  "
              f"acc {tr['acc']:.2f}%  |  val loss {va['loss']:.4f}  acc {va['acc']:.2f}%  "
              f"lr {tr['lr']:.4g}  [{time.perf_counter() - t0:.1f}s]", flush=True)
    save_checkpoint(last_path, model, metrics={"epoch": epochs, "train": tr, "val": va}, **ckpt_kwargs)
    log_predictions(writer, f"{role}/predictions_vs_labels", model, test_loader,
                    data_cfg["classes"], epochs)
    wall = time.perf_counter() - start
    result = {
        "arch": arch, "eca": model_cfg["eca"], "base_width": model_cfg["base_width"],
        "params": count_params(model),
        "best_epoch": best_epoch,
        "best_val_acc": history["val_acc"][best_epoch - 1],
        "best_val_loss": history["val_loss"][best_epoch - 1],
        "final_val_acc": history["val_acc"][-1], "final_train_acc": history["train_acc"][-1],
        "epochs": epochs, "checkpoint": best_path, "last_checkpoint": last_path,
        "wall_time_s": round(wall, 2),
        "train_images_per_s": round(epochs * train_loader.num_samples / max(train_time, 1e-9), 1),
        "effective_lr": effective_lr(args),
    }
    log_hparams(writer, {"role": role, "arch": arch, "eca": model_cfg["eca"],
                         "width": model_cfg["base_width"], "lr": effective_lr(args),
                         "batch_size": args.batch_size, "epochs": epochs},
                {f"hparam/{role}_best_val_acc": result["best_val_acc"]})
    return result
