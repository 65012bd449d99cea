"""The outputs of each epoch of a stage: the run's history (numpy_outputs/), TensorBoard and the
console line; and the loss parts of an epoch's metrics."""
import os

from .distributed import is_main
from .optim import effective_lr
from .tensorboard import log_epoch, log_graph, log_hparams, log_predictions, make_writer

__all__ = ["EpochLogger", "epoch_line", "loss_parts"]


class EpochLogger:
    """Each epoch to the arrays (numpy_outputs/), TensorBoard and the console; rank 0 only."""

    def __init__(self, stage, run, start_epoch: int):
        self.stage, self.run, self.main = stage, run, is_main()
        # purge_step: events of an earlier attempt at or after this epoch are dropped (a fresh
        # stage after a kill -9 before its first saved state starts at 0: no duplicate steps)
        if run.args.tensorboard and self.main:
            run.outputs.record_tensorboard()
        self.writer = make_writer(os.path.join(run.outputs.tb_dir, stage.role),
                                  run.args.tensorboard and self.main, purge_step=start_epoch)

    def graph(self):
        log_graph(self.writer, self.stage.model, next(iter(self.run.loaders.val.iterate(0)))[0])

    def epoch(self, state, epoch: int, tr: dict, va: dict, seconds: float):
        if self.main:
            self.run.outputs.save_history(self.stage.role, state.history)
        log_epoch(self.writer, self.stage.role, epoch, tr, va)
        if self.main:
            print(epoch_line(self.stage.role, epoch, self.stage.epochs, tr, va, seconds),
                  flush=True)

    def finish(self, result: dict):
        """Predictions and hyper-parameters to TensorBoard, then close it."""
        stage, run = self.stage, self.run
        log_predictions(self.writer, f"{stage.role}/predictions_vs_labels", stage.model,
                        run.loaders.val, run.data.classes, stage.epochs)
        log_hparams(self.writer, {"role": stage.role, "arch": stage.arch,
                                  "placement": stage.config.placement,
                                  "width": stage.config.base_width,
                                  "lr": effective_lr(run.recipe, stage.arch),
                                  "batch_size": run.args.batch_size, "epochs": stage.epochs},
                    {f"hparam/{stage.role}_best_val_acc": result["best_val_acc"]})
        self.close()

    def close(self):
        if self.writer is not None:
            self.writer.close()


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
