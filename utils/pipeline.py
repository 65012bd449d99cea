"""What both training scripts share: device, data, loaders and the per-stage epoch loop that
evaluates, keeps the best checkpoint, and writes numpy arrays, JSON and TensorBoard."""
import os
import platform
import random
import shlex
import signal
import sys
import time

import numpy as np
import torch

from models import count_parameters, create_model

from .checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .data import (SYNTHETIC_SEED, Augment, TensorLoader, channel_stats, held_out_split,
                   load_dataset)
from .engine import NonFiniteLoss, evaluate, recalibrate_bn, train_one_epoch
from .distributed import all_reduce_sum, barrier, broadcast_flag, dist_info, is_main
from .errors import RunInterrupted, UserError
from .optim import build_optimizer, build_scheduler, effective_lr
from .tensorboard import log_epoch, log_graph, log_hparams, log_predictions, make_writer

__all__ = ["resolve_device", "seed_everything", "prepare_data", "make_loaders", "build_model",
           "train_stage", "report_test_accuracy", "environment", "load_state",
           "finished_stages", "loss_parts", "StopFlag"]


def resolve_device(name: str) -> torch.device:
    """The torch.device for --device (auto: this rank's GPU if there is one, else the CPU); on
    CUDA it also turns on cuDNN's autotuner (the input size is fixed, so each convolution's
    fastest algorithm is picked once)."""
    dev = _resolve_device(name)
    if dev.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return dev


def _resolve_device(name: str) -> torch.device:
    info = dist_info()
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", info.local_rank) if info.enabled else torch.device("cuda")
        return torch.device("cpu")
    if info.enabled and name == "cuda":
        return torch.device("cuda", info.local_rank)
    try:
        dev = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"device {name} requested but CUDA is not available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise UserError(f"device {name} requested but only {torch.cuda.device_count()} CUDA "
                        f"device(s) are visible")
    if dev.type not in ("cpu", "cuda"):  # e.g. 'mps', 'xla': a RuntimeError traceback later
        raise UserError(f"unsupported device {name!r} (use auto, cpu, cuda or cuda:N)")
    return dev


def seed_everything(seed: int):
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def prepare_data(args):
    """-> (train, test, data_cfg). Normalisation statistics come from the training images.

    With --val-split F > 0 a stratified, seeded (--split-seed) fraction F of the training set is
    held out for validation (checkpoint selection) and the test set is only reported:
    data_cfg['protocol'] says which ('test-as-val' or 'held-out-val (...)'), data_cfg['train_size']
    counts the images trained on and data_cfg['val_size'] the held-out ones. `train` is still
    the whole (--limit-train'ed) training split: make_loaders carves the same held-out part out
    of it (split_indices is deterministic), so the statistics here are of the train part only.
    """
    name = args.dataset
    if name == "auto":
        if os.path.isdir(os.path.join(args.data_dir, "cifar-10-batches-py")) or args.download:
            name = "cifar10"
        else:
            print(f"notice: CIFAR-10 not found in {args.data_dir}/cifar-10-batches-py; using the "
                  f"built-in synthetic dataset instead (put CIFAR-10 there or pass --download)")
            name = "synthetic"
    kwargs = {"image_size": getattr(args, "image_size", 32)}  # readers that do not take it ignore it
    if name == "synthetic":
        kwargs = dict(train_size=args.synthetic_train_size, test_size=args.synthetic_test_size,
                      seed=SYNTHETIC_SEED)  # the dataset is fixed; --seed only changes training
    train, test = load_dataset(name, args.data_dir, args.download, **kwargs)
    if args.limit_train:
        train.images, train.labels = train.images[:args.limit_train], train.labels[:args.limit_train]
    if args.limit_test:
        test.images, test.labels = test.images[:args.limit_test], test.labels[:args.limit_test]
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"dataset {name} in {args.data_dir} has no images")
    if name == "svhn" and getattr(args, "hflip", False):
        print("notice: --hflip mirrors SVHN's digits at random; --no-hflip usually suits digits")
    fraction = float(getattr(args, "val_split", 0) or 0)
    split_seed = int(getattr(args, "split_seed", 0) or 0)
    fit = train
    split = {"protocol": "test-as-val", "val_split": 0.0, "val_size": len(test)}
    if fraction > 0:
        fit, val, digest = held_out_split(train, fraction, split_seed)
        if len(val) == 0 or len(fit) == 0:
            raise UserError(f"--val-split {fraction:g} of {len(train)} training images leaves "
                            f"{len(fit)} to train on and {len(val)} to validate on; use a "
                            f"fraction that leaves both non-empty")
        split = {"protocol": f"held-out-val ({100 * fraction:g}% of train, stratified, "
                             f"split seed {split_seed})",
                 "val_split": fraction, "split_seed": split_seed, "val_size": len(val),
                 "val_indices_sha1": digest}
    c = fit.images.shape[1]
    if args.normalize:
        mean, std = channel_stats(fit.images)
    else:
        mean, std = [0.0] * c, [1.0] * c
    num_classes = max(len(train.classes), int(train.labels.max()) + 1)
    data_cfg = {"dataset": name, "mean": mean, "std": std, "classes": list(train.classes),
                "num_classes": num_classes, "in_channels": c,
                "image_size": int(train.images.shape[-1]),
                "train_size": len(fit), "test_size": len(test), **split,
                **({"preprocessing": train.info["preprocessing"]}
                   if train.info.get("preprocessing") else {})}
    return train, test, data_cfg


def make_loaders(train, test, data_cfg, args, device):
    """-> (train_loader, val_loader, report_loader). Under 'test-as-val' the validation loader
    is the test set's and report_loader is None; under a held-out split the validation loader
    holds the held-out training images and report_loader the test set (evaluated once per
    stage by train_stage for the report)."""
    report_loader = None
    info = dist_info()
    shard = {"rank": info.rank, "world_size": info.world_size}  # each rank its share of a batch
    if data_cfg.get("val_split", 0) > 0:
        train, val, digest = held_out_split(train, data_cfg["val_split"], data_cfg["split_seed"])
        if digest != data_cfg.get("val_indices_sha1") or len(val) != data_cfg["val_size"]:
            raise RuntimeError("make_loaders: the held-out split differs from prepare_data's")
        report_loader = TensorLoader(test, args.eval_batch_size, device, data_cfg["mean"],
                                     data_cfg["std"], channels_last=args.channels_last, **shard)
    else:
        val = test
    aug = Augment(crop_padding=args.crop_padding, hflip=args.hflip, vflip=args.vflip)
    train_loader = TensorLoader(train, args.batch_size, device, data_cfg["mean"], data_cfg["std"],
                                shuffle=args.shuffle, augment=aug, seed=args.seed,
                                channels_last=args.channels_last, **shard)
    val_loader = TensorLoader(val, args.eval_batch_size, device, data_cfg["mean"], data_cfg["std"],
                              channels_last=args.channels_last, **shard)
    return train_loader, val_loader, report_loader


@torch.no_grad()
def report_test_accuracy(model, best_path, report_loader, data_cfg, device, precision, result):
    """The test accuracy of the best checkpoint and of the last weights, for the result dict.
    Under 'test-as-val' they are the validation numbers (the best one was selected on the test
    set, so it is optimistic); under a held-out split the test set is evaluated here, once."""
    out = {"protocol": data_cfg.get("protocol", "test-as-val")}
    if report_loader is None:
        out.update(test_acc_best=result["best_val_acc"], test_acc_last=result["final_val_acc"])
        return out
    last = evaluate(model, report_loader, device, precision)
    best_model = model_from_checkpoint(load_checkpoint(best_path), best_path).to(device)
    best = evaluate(best_model, report_loader, device, precision)
    out.update(test_acc_best=best["acc"], test_acc_last=last["acc"], test_loss_best=best["loss"],
               test_loss_last=last["loss"], test_size=len(report_loader.labels))
    is_main() and print(f"test ({out['protocol']}): best-epoch checkpoint {best['acc']:.2f}%, last epoch "
          f"{last['acc']:.2f}% on {out['test_size']} test images", flush=True)
    return out


def build_model(arch, data_cfg, width, eca, eca_k, device, channels_last=False, attn="eca"):
    """eca: the attention placement; attn: the attention module (models.ATTENTION_LAYERS)."""
    model = create_model(arch, num_classes=data_cfg["num_classes"], base_width=width,
                         in_channels=data_cfg["in_channels"], eca=eca, eca_k=eca_k,
                         attn=attn).to(device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    cfg = {"num_classes": data_cfg["num_classes"], "base_width": width,
           "in_channels": data_cfg["in_channels"], "eca": eca, "eca_k": eca_k, "attn": attn,
           "image_size": data_cfg["image_size"]}
    return model, cfg


def environment(device):
    return {"torch": torch.__version__, "python": platform.python_version(),
            "device": str(device), "threads": torch.get_num_threads(),
            "world_size": dist_info().world_size, "dist_backend": dist_info().backend,
            "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None}


class StopFlag:
    """SIGINT/SIGTERM set a flag that the training loop checks at every step boundary; a second
    Ctrl-C interrupts at once."""

    def __init__(self, collective_every=0, device="cpu"):
        self.signum = None
        self._old = {}
        # distributed runs: ranks agree every `collective_every` steps (any rank's signal stops
        # all of them at the same step), so no host sync happens per step
        self.collective_every, self.device, self._calls = collective_every, device, 0

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step...",
              file=sys.stderr, flush=True)

    def __call__(self):
        if not self.collective_every:
            return self.signum is not None
        self._calls += 1
        if self._calls % self.collective_every:
            return False
        return broadcast_flag(self.signum is not None, self.device)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)


def rng_state():
    st = {"torch": torch.get_rng_state(), "python": _plain_py_state(random.getstate())}
    np_state = np.random.get_state()
    st["numpy"] = {"name": np_state[0], "keys": torch.from_numpy(np_state[1].astype(np.int64)),
                   "pos": int(np_state[2]), "has_gauss": int(np_state[3]),
                   "gauss": float(np_state[4])}
    if torch.cuda.is_available():
        st["cuda"] = torch.cuda.get_rng_state_all()
    return st


def _plain_py_state(state):
    version, internal, gauss = state
    return {"version": version, "internal": list(internal), "gauss": gauss}


def set_rng_state(st):
    torch.set_rng_state(st["torch"])
    py = st["python"]
    random.setstate((py["version"], tuple(py["internal"]), py["gauss"]))
    n = st["numpy"]
    np.random.set_state((n["name"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["gauss"]))
    if "cuda" in st and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(st["cuda"])


def resume_command():
    argv = [a for a in sys.argv if a not in ("--overwrite",)]
    cmd = " ".join(shlex.quote(a) for a in [os.path.basename(sys.executable)] + argv)
    return cmd if "--resume" in argv else cmd + " --resume"


def finished_stages(outputs, roles, args) -> bool:
    """True when every role's saved state says its stage is complete (nothing to resume); a
    state written with other training settings is refused as by --resume itself."""
    for role in roles:
        path = outputs.checkpoint(role, state=True)
        if not os.path.isfile(path):
            return False
        state = load_state(path)
        check_resume_args(state, args, path)
        if not state.get("stage_complete"):
            return False
    return True


def load_state(path):
    """The per-epoch full training state of a stage, or None when there is none."""
    if not os.path.exists(path):
        return None
    ckpt = load_checkpoint(path)
    if ckpt.get("kind") != "state":
        raise UserError(f"{path} is not a training-state file")
    return ckpt


# flags that do not change what is trained: they may differ between a run and its --resume
RESUME_FREE_ARGS = frozenset({"resume", "overwrite", "progress", "tensorboard", "output_dir",
                              "data_dir", "download", "device", "eval_batch_size", "channels_last",
                              "run_name"})


def check_resume_args(state, args, path):
    """A state continues only the run that wrote it: a changed architecture, width, batch size,
    learning rate, epoch count, ... would fail to load or (worse) silently train something else
    (the optimizer and scheduler states bring back the saved learning rate)."""
    from .checkpoint import to_plain
    saved, now = state.get("args") or {}, to_plain(vars(args))
    diff = [k for k in sorted(saved)
            if k in now and k not in RESUME_FREE_ARGS and saved[k] != now[k]]
    if diff:
        shown = ", ".join(f"--{k.replace('_', '-')} {saved[k]!r} (now {now[k]!r})"
                          for k in diff[:4])
        raise UserError(f"--resume: {path} was written with other settings: {shown}"
                        f"{' ...' if len(diff) > 4 else ''}; resume with the original flags, or "
                        f"start again with --overwrite")


def train_stage(*, role, arch, model, model_cfg, loss_fn, args, device, train_loader, val_loader,
                data_cfg, outputs, array_role=None, epochs=None, state=None, report_loader=None):
    """Train one model for `epochs`; keep the best (by args.select_by) and the last checkpoint,
    and a full training state after every epoch (and on Ctrl-C/SIGTERM, mid-epoch) in
    saved_pth_model/{key}_{role}_state.pth. `state`: such a state to resume from.

    Returns a dict of results for the JSON summary, with the protocol and the test accuracy of
    the best and the last weights (`report_loader`: the test set under a held-out validation
    split, see report_test_accuracy).
    """
    epochs = epochs or args.epochs
    array_role = role if array_role is None else array_role
    info, main = dist_info(), is_main()  # only rank 0 writes files, logs and prints
    if info.enabled and getattr(args, "sync_bn", False):
        model = torch.nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameter objects
    extra_params = [p for p in loss_fn.parameters() if p.requires_grad]  # connector, if any
    optimizer = build_optimizer(list(model.parameters()) + extra_params, args)
    scheduler = build_scheduler(optimizer, args, len(train_loader), epochs)
    scaler = torch.amp.GradScaler(device.type) if args.precision == "fp16" else None
    history = {k: [] for k in ("train_acc", "val_acc", "train_loss", "val_loss")}
    best, best_epoch, start_epoch, start_step, carry, train_time = None, -1, 0, 0, None, 0.0
    best_path, last_path = outputs.checkpoint(role), outputs.checkpoint(role, last=True)
    state_path = outputs.checkpoint(role, state=True)
    if state is not None:
        check_resume_args(state, args, state_path)
        if state.get("stage_complete"):
            return state["result"]
        try:
            model.load_state_dict(state["state_dict"])
            loss_fn.load_state_dict(state["loss_state"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            if scaler is not None and state.get("scaler"):
                scaler.load_state_dict(state["scaler"])
            set_rng_state(state["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"--resume: {state_path} does not fit this run ({first})") from None
        history = {k: list(v) for k, v in state["history"].items()}
        best, best_epoch = state["best_score"], state["best_epoch"]
        start_epoch, start_step, carry = state["epoch"], state["step"], state.get("carry")
        train_time = state.get("train_time", 0.0)
        if not main:
            carry = None  # the saved running sums are over all ranks: rank 0 carries them
        if main:
            print(f"[{role}] resuming at epoch {start_epoch + 1}, step {start_step} from {state_path}")
    runner = wrap_distributed(model, loss_fn, device)  # DDP under torchrun, else the model
    if getattr(args, "compile", False) and device.type == "cuda":
        runner = torch.compile(runner)  # the CPU training step measured slower compiled
    if main:
        outputs.claim()  # the stage's first write: the run's record of its files
    # purge_step: events of an earlier attempt at or after this epoch are dropped (a fresh stage
    # after a kill -9 before its first saved state starts at 0: no duplicate steps)
    writer = make_writer(os.path.join(outputs.tb_dir, role), args.tensorboard and main,
                         purge_step=start_epoch)
    if state is None:
        log_graph(writer, model, next(iter(val_loader.iterate(0)))[0])
    ckpt_kwargs = dict(arch=arch, role=role, model_cfg=model_cfg, data_cfg=data_cfg, args=vars(args))

    def save_state(epoch, step, carry, complete=False, result=None):
        if not main:
            return
        save_checkpoint(state_path, model, epoch=epoch, extra={
            "kind": "state", "step": step, "carry": carry, "stage_complete": complete,
            "result": result, "loss_state": loss_fn.state_dict(),
            "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
            "scaler": scaler.state_dict() if scaler is not None else None, "rng": rng_state(),
            "history": history, "best_score": best, "best_epoch": best_epoch,
            "train_time": train_time, "epochs": epochs}, **ckpt_kwargs)

    start = time.perf_counter()
    tr = va = None
    with StopFlag(collective_every=20 if info.enabled else 0, device=device) as stop:
        for epoch in range(start_epoch, epochs):
            t0 = time.perf_counter()
            try:
                tr = train_one_epoch(runner, loss_fn, train_loader, optimizer, scheduler, device,
                                     args.precision, scaler, desc=f"{role} {epoch + 1}/{epochs}",
                                     show_progress=args.progress, epoch=epoch,
                                     start_step=start_step, carry=carry, should_stop=stop)
            except NonFiniteLoss as exc:
                kept = (f"the last good state is kept in {state_path}"
                        if os.path.exists(state_path) else "no epoch of it completed, no state kept")
                raise UserError(f"{exc}; stopped, {kept} - try a lower --lr in a new run "
                                f"(--overwrite or another --run-name)") from None
            train_time += time.perf_counter() - t0
            start_step, carry = 0, None
            if tr.get("interrupted"):
                save_state(epoch, tr["step"], reduce_carry(tr["carry"], device))
                if writer is not None:
                    writer.close()
                code = 143 if stop.signum == signal.SIGTERM else 130
                raise RunInterrupted(f"interrupted in {role} epoch {epoch + 1} at step "
                                     f"{tr['step']}/{len(train_loader)}; state saved to "
                                     f"{state_path}. Resume with: {resume_command()}", code)
            if getattr(args, "bn_recalibrate", 0):
                recalibrate_bn(model, train_loader.iterate(epoch), args.bn_recalibrate)
            sync_buffers(model)
            va = evaluate(model, val_loader, device, "fp32")
            for k in loss_parts(tr):  # 'ce' and one per distillation term
                history.setdefault(f"train_loss_{k}", []).append(tr[k])
            history.setdefault("train_lr", []).append(tr["lr"])
            history.setdefault("train_lr_start", []).append(tr["lr_start"])
            history["train_acc"].append(tr["acc"])
            history["train_loss"].append(tr["loss"])
            history["val_acc"].append(va["acc"])
            history["val_loss"].append(va["loss"])
            if main:
                outputs.save_history(array_role, history)
            log_epoch(writer, role, epoch, tr, va)
            score = va["acc"] if args.select_by == "acc" else -va["loss"]
            metrics = {"epoch": epoch + 1, "train": tr, "val": va}
            if best is None or score > best:
                best, best_epoch = score, epoch + 1
                if main:
                    save_checkpoint(best_path, model, metrics=metrics, epoch=epoch + 1, **ckpt_kwargs)
            save_state(epoch + 1, 0, None)
            if main:
                print(epoch_line(role, epoch, epochs, tr, va, time.perf_counter() - t0), flush=True)
    if va is None:  # resumed at the very end: evaluate the final weights once more
        va = evaluate(model, val_loader, device, "fp32")
        tr = {"loss": history["train_loss"][-1], "acc": history["train_acc"][-1]}
    if main:
        save_checkpoint(last_path, model, metrics={"epoch": epochs, "train": tr, "val": va},
                        epoch=epochs, **ckpt_kwargs)
    barrier()  # rank 0's checkpoints are on disk before any rank reads them
    log_predictions(writer, f"{role}/predictions_vs_labels", model, val_loader,
                    data_cfg["classes"], epochs)
    wall = time.perf_counter() - start
    result = {
        "arch": arch, "eca": model_cfg["eca"], "base_width": model_cfg["base_width"],
        "params": count_parameters(model),
        "best_epoch": best_epoch,
        "best_val_acc": history["val_acc"][best_epoch - 1],
        "best_val_loss": history["val_loss"][best_epoch - 1],
        "final_val_acc": history["val_acc"][-1], "final_train_acc": history["train_acc"][-1],
        "epochs": epochs, "checkpoint": best_path, "last_checkpoint": last_path,
        "wall_time_s": round(wall, 2),
        "train_images_per_s": round((epochs - start_epoch) * train_loader.num_samples
                                    / max(train_time, 1e-9), 1) if state is None else None,
        "effective_lr": effective_lr(args),
    }
    result.update(report_test_accuracy(model, best_path, report_loader, data_cfg, device,
                                       "fp32", result))
    save_state(epochs, 0, None, complete=True, result=result)
    log_hparams(writer, {"role": role, "arch": arch, "eca": model_cfg["eca"],
                         "width": model_cfg["base_width"], "lr": effective_lr(args),
                         "batch_size": args.batch_size, "epochs": epochs},
                {f"hparam/{role}_best_val_acc": result["best_val_acc"]})
    if writer is not None:
        writer.close()
    barrier()
    return result


_NOT_PARTS = frozenset({"loss", "acc", "lr", "lr_start", "samples", "interrupted", "step", "carry"})


def loss_parts(metrics) -> list:
    """The loss parts of a training epoch's metrics: 'ce', then the distillation terms."""
    return [k for k in metrics if k not in _NOT_PARTS]


def epoch_line(role, epoch, epochs, tr, va, seconds):
    """One console line per epoch. Training and validation are compared on the same quantity,
    cross-entropy; the distillation parts and the total training loss follow in brackets. The
    learning rate is the epoch's last step's, with its first step's where it moved."""
    kd = [f"{k} {tr[k]:.4f}" for k in loss_parts(tr) if k != "ce"]
    extra = f" ({', '.join(kd)}; total {tr['loss']:.4f})" if kd else ""
    lr = (f"{tr['lr_start']:.4g}->{tr['lr']:.4g}"
          if abs(tr.get("lr_start", tr["lr"]) - tr["lr"]) > 1e-12 * max(abs(tr["lr"]), 1e-30)
          else f"{tr['lr']:.4g}")
    return (f"[{role}] epoch {epoch + 1}/{epochs}  train ce {tr.get('ce', tr['loss']):.4f}{extra}  "
            f"acc {tr['acc']:.2f}%  |  val ce {va['loss']:.4f}  acc {va['acc']:.2f}%  lr {lr}  "
            f"[{seconds:.1f}s]")


def wrap_distributed(model, loss_fn, device):
    """DistributedDataParallel around the trained model under torchrun; the connector's few
    gradients (if any) are averaged across ranks by hooks. A single process gets `model` back."""
    info = dist_info()
    if not info.enabled:
        return model
    from torch.nn.parallel import DistributedDataParallel as DDP
    import torch.distributed as dist
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
        import torch.distributed as dist
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
