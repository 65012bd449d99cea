"""The stage loop: train one model (a teacher, a student or a baseline) for its epochs, validate
after each, keep the best and the last checkpoint and a resumable state, and log every epoch to
the arrays, TensorBoard and the console.

    result = train_stage(Stage(role, config, model, loss_fn, epochs), run, saved)

The pieces: `Stage` (what is trained), `RunContext` (what a run's stages share), `StageState`
(what is carried from epoch to epoch and saved for --resume), `StageTrainer` (optimiser,
schedule, checkpoints, one epoch of training and one of validation) and `EpochLogger` (the
outputs of an epoch).
"""
import os
import signal
import time
from dataclasses import dataclass, field

import torch
from torch import nn

from ..models import count_parameters

from ..data import DataDesc
from ..models.config import ModelConfig
from ..roles import Role
from ..errors import RunInterrupted, UserError
from ..io.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from .distributed import (barrier, dist_info, is_main, reduce_carry, sync_buffers,
                          wrap_distributed)
from .engine import NonFiniteLoss, evaluate, recalibrate_bn, train_one_epoch
from .optim import OptimRecipe, build_optimizer, build_scheduler, effective_lr
from .resume import check_resume_args, resume_command, rng_state, set_rng_state
from .setup import Loaders
from .signals import StopFlag
from .epoch_log import EpochLogger, epoch_line, loss_parts  # noqa: F401  (part of this module's API)

__all__ = ["Stage", "RunContext", "StageState", "StageTrainer", "EpochLogger", "train_stage",
           "report_test_accuracy", "loss_parts", "epoch_line"]


@dataclass
class Stage:
    """One model to train."""
    role: Role                # names its files, logs and summary section
    config: ModelConfig       # what rebuilds the model (its to_json is saved in its checkpoints)
    model: nn.Module
    loss_fn: nn.Module        # DistillationLoss: CE alone, or CE + distillation terms
    epochs: int

    @property
    def arch(self) -> str:
        return self.config.arch


@dataclass
class RunContext:
    """What the stages of one run share."""
    args: object              # the parsed command line
    device: torch.device
    loaders: Loaders
    data: DataDesc
    outputs: object           # RunOutputs: where every file of the run goes
    recipe: OptimRecipe            # how each stage trains (OptimRecipe.from_args of the command line)


@dataclass
class StageState:
    """What a stage carries from epoch to epoch; saved after every epoch for --resume."""
    history: dict = field(default_factory=lambda: {k: [] for k in (
        "train_acc", "val_acc", "train_loss", "val_loss")})
    epoch: int = 0                # epochs done
    step: int = 0                 # the next batch of epoch `epoch` (after an interrupt)
    carry: dict | None = None     # that interrupted epoch's running sums
    best: float | None = None     # the best validation score so far
    best_epoch: int = -1
    train_time: float = 0.0       # seconds spent in training epochs

    def record(self, tr: dict, va: dict):
        """Append one epoch's metrics: each loss part ('ce', one per distillation term), the
        learning rate at the end and the start of the epoch, accuracies and losses."""
        h = self.history
        for k in loss_parts(tr):
            h.setdefault(f"train_loss_{k}", []).append(tr[k])
        h.setdefault("train_lr", []).append(tr["lr"])
        h.setdefault("train_lr_start", []).append(tr["lr_start"])
        h["train_acc"].append(tr["acc"])
        h["train_loss"].append(tr["loss"])
        h["val_acc"].append(va["acc"])
        h["val_loss"].append(va["loss"])

    def improved(self, score: float, epoch: int) -> bool:
        """Whether `score` (higher is better) beats the best so far; if so it becomes the best."""
        if self.best is not None and score <= self.best:
            return False
        self.best, self.best_epoch = score, epoch + 1
        return True


class StageTrainer:
    """The optimiser, schedule and checkpoints of one stage, and its epochs of training and
    validation. Only rank 0 writes files."""

    def __init__(self, stage: Stage, run: RunContext):
        self.stage, self.run = stage, run
        args, model = run.args, stage.model
        if dist_info().enabled and args.sync_bn:
            stage.model = model = nn.SyncBatchNorm.convert_sync_batchnorm(model)  # same Parameters
        extra = [p for p in stage.loss_fn.parameters() if p.requires_grad]  # learned by terms
        self.optimizer = build_optimizer(list(model.parameters()) + extra, run.recipe, stage.arch)
        self.scheduler = build_scheduler(self.optimizer, run.recipe, len(run.loaders.train),
                                         stage.epochs)
        self.scaler = torch.amp.GradScaler(run.device.type) if args.precision == "fp16" else None
        out = run.outputs
        self.best_path = out.checkpoint(stage.role)
        self.last_path = out.checkpoint(stage.role, last=True)
        self.state_path = out.checkpoint(stage.role, state=True)
        self.ckpt_kwargs = dict(arch=stage.arch, role=stage.role, model_cfg=stage.config.to_json(),
                                data_cfg=run.data.to_json(), args=vars(args),
                                writer=run.outputs.write_file)
        self.main = is_main()

    def save_state(self, state: StageState, complete=False, result=None):
        if not self.main:
            return
        save_checkpoint(self.state_path, self.stage.model, epoch=state.epoch, extra={
            "kind": "state", "step": state.step, "carry": state.carry, "stage_complete": complete,
            "result": result, "loss_state": self.stage.loss_fn.state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(), "history": state.history, "best_score": state.best,
            "best_epoch": state.best_epoch, "train_time": state.train_time,
            "epochs": self.stage.epochs}, **self.ckpt_kwargs)

    def restore(self, saved: dict) -> StageState:
        """The StageState of a saved training state, with the model, the terms' learned parts,
        the optimiser, the schedule and the random-number state put back."""
        stage = self.stage
        try:
            stage.model.load_state_dict(saved["state_dict"])
            stage.loss_fn.load_state_dict(saved["loss_state"])
            self.optimizer.load_state_dict(saved["optimizer"])
            self.scheduler.load_state_dict(saved["scheduler"])
            if self.scaler is not None and saved.get("scaler"):
                self.scaler.load_state_dict(saved["scaler"])
            set_rng_state(saved["rng"])
        except (RuntimeError, KeyError, ValueError, TypeError) as exc:
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:160]
            raise UserError(f"--resume: {self.state_path} does not fit this run ({first})") from None
        state = StageState(history={k: list(v) for k, v in saved["history"].items()},
                           epoch=saved["epoch"], step=saved["step"],
                           # the saved running sums are over all ranks: rank 0 carries them
                           carry=saved.get("carry") if self.main else None,
                           best=saved["best_score"], best_epoch=saved["best_epoch"],
                           train_time=saved.get("train_time", 0.0))
        if self.main:
            print(f"[{stage.role}] resuming at epoch {state.epoch + 1}, step {state.step} from "
                  f"{self.state_path}")
        return state

    def runner(self) -> nn.Module:
        """What the training steps call: DDP under torchrun, compiled with --compile on CUDA."""
        runner = wrap_distributed(self.stage.model, self.stage.loss_fn, self.run.device)
        if self.run.args.compile and self.run.device.type == "cuda":
            # the CPU training step measured slower compiled; reduce-overhead: CUDA graphs
            runner = torch.compile(runner, mode=self.run.args.compile_mode)
        return runner

    def train_epoch(self, runner, epoch: int, state: StageState, stop: StopFlag) -> dict:
        """One training epoch from state.step; a non-finite loss or an interrupt ends the run
        with a one-line message (the state of the interrupted step is saved first)."""
        stage, run, args = self.stage, self.run, self.run.args
        t0 = time.perf_counter()
        try:
            tr = train_one_epoch(runner, stage.loss_fn, run.loaders.train, self.optimizer,
                                 self.scheduler, run.device, args.precision, self.scaler,
                                 desc=f"{stage.role} {epoch + 1}/{stage.epochs}",
                                 show_progress=args.progress, epoch=epoch, start_step=state.step,
                                 carry=state.carry, should_stop=stop)
        except NonFiniteLoss as exc:
            kept = (f"the last good state is kept in {self.state_path}"
                    if os.path.exists(self.state_path) else "no epoch of it completed, no state kept")
            raise UserError(f"{exc}; stopped, {kept} - try a lower --lr in a new run "
                            f"(--overwrite or another --run-name)") from None
        state.train_time += time.perf_counter() - t0
        state.step, state.carry = 0, None
        if tr.get("interrupted"):
            state.epoch, state.step = epoch, tr["step"]
            state.carry = reduce_carry(tr["carry"], run.device)
            self.save_state(state)
            code = 143 if stop.signum == signal.SIGTERM else 130
            raise RunInterrupted(f"interrupted in {stage.role} epoch {epoch + 1} at step "
                                 f"{tr['step']}/{len(run.loaders.train)}; state saved to "
                                 f"{self.state_path}. Resume with: {resume_command()}", code)
        return tr

    def validate(self, epoch: int) -> dict:
        """BN statistics re-estimated first with --bn-recalibrate N, and made equal on every
        rank; then the validation set in fp32."""
        model, run = self.stage.model, self.run
        if run.args.bn_recalibrate:
            recalibrate_bn(model, run.loaders.train.iterate(epoch), run.args.bn_recalibrate)
        sync_buffers(model)
        return evaluate(model, run.loaders.val, run.device, "fp32")

    def keep_best(self, state: StageState, epoch: int, tr: dict, va: dict):
        score = va["acc"] if self.run.args.select_by == "acc" else -va["loss"]
        if state.improved(score, epoch) and self.main:
            save_checkpoint(self.best_path, self.stage.model, epoch=epoch + 1,
                            metrics={"epoch": epoch + 1, "train": tr, "val": va},
                            **self.ckpt_kwargs)

    def finish(self, state: StageState, tr, va, resumed: bool, wall: float) -> dict:
        """The last checkpoint, the test-set report and the stage's result dict."""
        stage, run, h = self.stage, self.run, state.history
        if va is None:  # resumed at the very end: evaluate the final weights once more
            va = evaluate(stage.model, run.loaders.val, run.device, "fp32")
            tr = {"loss": h["train_loss"][-1], "acc": h["train_acc"][-1]}
        if self.main:
            save_checkpoint(self.last_path, stage.model, epoch=stage.epochs,
                            metrics={"epoch": stage.epochs, "train": tr, "val": va},
                            **self.ckpt_kwargs)
        barrier()  # rank 0's checkpoints are on disk before any rank reads them
        result = {
            "arch": stage.arch, "placement": stage.config.placement,
            "base_width": stage.config.base_width, "params": count_parameters(stage.model),
            "best_epoch": state.best_epoch,
            "best_val_acc": h["val_acc"][state.best_epoch - 1],
            "best_val_loss": h["val_loss"][state.best_epoch - 1],
            "final_val_acc": h["val_acc"][-1], "final_train_acc": h["train_acc"][-1],
            "epochs": stage.epochs, "checkpoint": self.best_path,
            "last_checkpoint": self.last_path, "wall_time_s": round(wall, 2),
            # throughput only for a stage trained in one go (a resumed one mixes two runs)
            "train_images_per_s": None if resumed else round(
                stage.epochs * run.loaders.train.num_samples / max(state.train_time, 1e-9), 1),
            "effective_lr": effective_lr(run.recipe, stage.arch),
        }
        result.update(report_test_accuracy(stage.model, self.best_path, run.loaders.report,
                                           run.data, run.device, "fp32", result))
        state.epoch = stage.epochs
        self.save_state(state, complete=True, result=result)
        return result


def train_stage(stage: Stage, run: RunContext, saved: dict | None = None) -> dict:
    """Train `stage.model` for `stage.epochs`; keep the best (by --select-by) and the last
    checkpoint, and a full training state after every epoch (and on Ctrl-C/SIGTERM, mid-epoch)
    in saved_pth_model/{key}_{role}_state.pth. `saved`: such a state to resume from.

    Returns the stage's results for the JSON summary, with the protocol and the test accuracy
    of the best and the last weights (see report_test_accuracy).
    """
    trainer = StageTrainer(stage, run)
    if saved is not None:
        check_resume_args(saved, run.args, trainer.state_path)
        if saved.get("stage_complete"):
            return saved["result"]
    state = trainer.restore(saved) if saved is not None else StageState()
    runner = trainer.runner()
    if trainer.main:
        run.outputs.claim()  # the stage's first write: the run's record of its files
    log = EpochLogger(stage, run, state.epoch)
    if saved is None:
        log.graph()
    start = time.perf_counter()
    tr = va = None
    distributed = dist_info().enabled
    with StopFlag(collective_every=20 if distributed else 0, device=run.device) as stop:
        for epoch in range(state.epoch, stage.epochs):
            t0 = time.perf_counter()
            try:
                tr = trainer.train_epoch(runner, epoch, state, stop)
            except RunInterrupted:
                log.close()
                raise
            va = trainer.validate(epoch)
            state.record(tr, va)
            log.epoch(state, epoch, tr, va, time.perf_counter() - t0)
            trainer.keep_best(state, epoch, tr, va)
            state.epoch = epoch + 1
            trainer.save_state(state)
    result = trainer.finish(state, tr, va, resumed=saved is not None,
                            wall=time.perf_counter() - start)
    log.finish(result)
    barrier()
    return result


@torch.no_grad()
def report_test_accuracy(model, best_path, report_loader, data: DataDesc, device, precision,
                         result):
    """The test accuracy of the best checkpoint and of the last weights, for the result dict.
    Under 'test-as-val' they are the validation numbers (the best one was selected on the test
    set, so it is optimistic); under a held-out split the test set is evaluated here, once."""
    out = {"protocol": data.protocol}
    if not data.test_read:  # --no-report-test: the test split was never read
        out.update(test_acc_best=None, test_acc_last=None, test_read=False)
        return out
    if report_loader is None:
        out.update(test_acc_best=result["best_val_acc"], test_acc_last=result["final_val_acc"])
        return out
    last = evaluate(model, report_loader, device, precision)
    best_model = model_from_checkpoint(load_checkpoint(best_path), best_path).to(device)
    best = evaluate(best_model, report_loader, device, precision)
    out.update(test_acc_best=best["acc"], test_acc_last=last["acc"], test_loss_best=best["loss"],
               test_loss_last=last["loss"], test_size=len(report_loader.labels))
    if is_main():
        print(f"test ({out['protocol']}): best-epoch checkpoint {best['acc']:.2f}%, last epoch "
              f"{last['acc']:.2f}% on {out['test_size']} test images", flush=True)
    return out
