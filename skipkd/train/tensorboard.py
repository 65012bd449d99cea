"""TensorBoard helpers: per-epoch scalars, model graph, predictions-vs-labels figure, hparams."""
import warnings

import torch

from ..models import OutputsAsTuple

__all__ = ["make_writer", "log_epoch", "log_graph", "log_predictions", "predictions_figure",
           "log_hparams"]


def make_writer(logdir, enabled=True, purge_step=None):
    """purge_step: on resume, events at or after this epoch (from the interrupted attempt) are
    hidden, so the curves continue with no duplicate and no gap."""
    if not enabled:
        return None
    from torch.utils.tensorboard import SummaryWriter
    return SummaryWriter(log_dir=logdir, purge_step=purge_step)


def log_epoch(writer, role, epoch, train, val):
    """Scalars under '<role>/...': loss split into CE and KD parts, accuracy, learning rate."""
    if writer is None:
        return
    skip = {"acc", "lr", "lr_start", "samples"}
    for k in (k for k in train if k not in skip):  # the total, 'ce' and each distillation term
        writer.add_scalar(f"{role}/train_{'loss' if k == 'loss' else 'loss_' + k}", train[k], epoch)
    writer.add_scalar(f"{role}/train_accuracy", train["acc"], epoch)
    writer.add_scalar(f"{role}/val_loss", val["loss"], epoch)
    writer.add_scalar(f"{role}/val_accuracy", val["acc"], epoch)
    writer.add_scalar(f"{role}/lr", train["lr"], epoch)              # the epoch's last step's
    if "lr_start" in train:
        writer.add_scalar(f"{role}/lr_start", train["lr_start"], epoch)  # its first step's
    writer.flush()


def log_graph(writer, model, example):
    if writer is None:
        return
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            writer.add_graph(OutputsAsTuple(model, with_hint=True).eval(), example[:1])
    except Exception as exc:  # tracing is best-effort: never lose a run over a graph
        print(f"note: model graph not logged ({type(exc).__name__})")


def predictions_figure(images, labels, preds, classes, mean=None, std=None, n=16):
    """A grid of test images titled 'pred / true' (green when right, red when wrong)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n = min(n, len(labels))
    cols = min(8, n)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(1.6 * cols, 1.9 * rows), squeeze=False)
    for i, ax in enumerate(axes.flat):
        ax.axis("off")
        if i >= n:
            continue
        img = images[i].float() / 255.0  # (C, H, W) uint8 -> [0, 1]
        img = img.permute(1, 2, 0).cpu().numpy()
        ax.imshow(img.squeeze(-1) if img.shape[-1] == 1 else img,
                  cmap="gray" if img.shape[-1] == 1 else None)
        p, t = int(preds[i]), int(labels[i])
        name = lambda c: classes[c] if c < len(classes) else str(c)
        ax.set_title(f"{name(p)}\n/ {name(t)}", fontsize=7, color="green" if p == t else "red")
    fig.tight_layout()
    return fig


@torch.no_grad()
def log_predictions(writer, tag, model, loader, classes, step, n=16):
    if writer is None:
        return
    model.eval()
    imgs_u8, labels = loader.preview(n)
    logits = model(loader.normalise(imgs_u8)).logits
    fig = predictions_figure(imgs_u8.cpu(), labels.cpu(), logits.argmax(1).cpu(), classes)
    writer.add_figure(tag, fig, global_step=step, close=True)


def log_hparams(writer, hparams: dict, metrics: dict):
    if writer is None:
        return
    clean = {k: (v if isinstance(v, (int, float, str, bool)) else str(v)) for k, v in hparams.items()}
    writer.add_hparams(clean, metrics, run_name="hparams")
    writer.flush()
