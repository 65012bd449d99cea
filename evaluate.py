"""Evaluate a checkpoint on the test split of its dataset (or its held-out validation split, or
another dataset).

    python evaluate.py saved_pth_model/KEY_student.pth [--tta] [--dataset cifar10 --data-dir ./data]

Writes (next to the checkpoint unless --out-dir): {stem}_eval.json (accuracy, loss, per-class
accuracy, confusion matrix) and {stem}_confusion.png; logs a predictions-vs-labels figure to
TensorBoard. Images are normalised with the checkpoint's own mean/std.
"""
import json
import os

import torch.nn.functional as F

from utils.analysis import (checkpoint_loader, checkpoint_test_data, confusion_figure,
                            confusion_matrix, predict_logits)
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.cli import add_bool, positive_int
from skipkd.data import DATASETS
from skipkd.errors import exit_on_user_error
from skipkd.io.outputs import atomic_write, atomic_write_text
from skipkd.train.setup import resolve_device
from skipkd.train.tensorboard import predictions_figure
from utils.analysis.toolargs import (check_distinct_outputs, check_output_dir, check_output_path,
                            tool_parser)


def get_args_parser():
    p = tool_parser("Evaluate a checkpoint: accuracy, per-class accuracy, confusion "
                                  "matrix (PNG), optional flip TTA, JSON and a TensorBoard figure.")
    p.add_argument("checkpoint", help="a .pth checkpoint written by the training scripts")
    p.add_argument("--dataset", choices=list(DATASETS) + ["imagenet"], default=None,
                   help="evaluate on this dataset's test split (default: the checkpoint's own; the "
                        "synthetic split is rebuilt with the run's sizes and seed)")
    p.add_argument("--data-dir", default=None,
                   help="folder holding the dataset (default: the run's --data-dir saved in the "
                        "checkpoint, printed when used)")
    add_bool(p, "--download", False, "download the dataset when it is not in --data-dir")
    p.add_argument("--split", choices=["test", "val"], default="test",
                   help="test: the test split; val: the run's validation set (its held-out part "
                        "of the training split under --val-split, else the test split)")
    p.add_argument("--limit", type=positive_int, default=None,
                   help="evaluate the first N test images (default: the run's --limit-test, if any)")
    add_bool(p, "--tta", False, "test-time augmentation: average the logits of each image and "
                                "its horizontal flip")
    p.add_argument("--batch-size", type=positive_int, default=None,
                   help="evaluation batch size (default: the run's --eval-batch-size)")
    p.add_argument("--device", default="cpu", help="cpu, cuda, cuda:N or auto")
    p.add_argument("--out-dir", default=None,
                   help="folder for the JSON and the confusion-matrix PNG (default: the "
                        "checkpoint's folder)")
    p.add_argument("--json", default=None, help="JSON path (default: <out-dir>/<stem>_eval.json)")
    add_bool(p, "--normalize-cm", True, "confusion matrix in percent of each true class "
                                        "(false: raw counts)")
    add_bool(p, "--tensorboard", True, "log a predictions-vs-labels figure to TensorBoard")
    p.add_argument("--logdir", default=None,
                   help="TensorBoard folder (default: runs/eval_<stem> beside saved_pth_model/, "
                        "else ./runs/eval_<stem>)")
    p.add_argument("--num-images", type=positive_int, default=16,
                   help="test images in the predictions-vs-labels figure")
    add_bool(p, "--quiet", False, "print only the accuracy line (and the data folder when it "
                                  "comes from the checkpoint)")
    return p


def default_logdir(checkpoint, stem):
    folder = os.path.dirname(os.path.abspath(checkpoint))
    root = os.path.dirname(folder) if os.path.basename(folder) == "saved_pth_model" else "."
    return os.path.join(root, "runs", f"eval_{stem}")


def _class_names(names, k):
    """Class names from checkpoint metadata or a dataset: k strings (indices where missing)."""
    names = [str(c) for c in names] if isinstance(names, (list, tuple)) else []
    return names[:k] + [str(i) for i in range(len(names), k)]


def output_paths(args):
    """-> (stem, out_dir, json path, confusion PNG path, TensorBoard folder or None), checked
    before any work: none may be the checkpoint, an existing folder where a file goes, or an
    unwritable place."""
    stem = (os.path.splitext(os.path.basename(args.checkpoint))[0]
            + ("_val" if args.split == "val" else "") + ("_tta" if args.tta else ""))
    inputs = [args.checkpoint]
    out_dir = args.out_dir or os.path.dirname(os.path.abspath(args.checkpoint))
    check_output_dir(out_dir, inputs, "--out-dir")
    json_path = args.json or os.path.join(out_dir, f"{stem}_eval.json")
    cm_path = os.path.join(out_dir, f"{stem}_confusion.png")
    check_output_path(json_path, inputs, "--json", create=True)
    check_output_path(cm_path, inputs, "the confusion-matrix PNG", create=True)
    check_distinct_outputs([("--json", json_path), ("the confusion-matrix PNG", cm_path)])
    tb_dir = None
    if args.tensorboard:
        tb_dir = args.logdir or default_logdir(args.checkpoint, stem)
        check_output_dir(tb_dir, inputs, "--logdir")
    return stem, out_dir, json_path, cm_path, tb_dir


def logged_accuracy(ckpt, data_cfg, dataset, args) -> tuple:
    """(the validation accuracy the training run logged for this checkpoint, or None; whether it
    was measured on these very images: the run's dataset, its validation set (the test split
    unless a held-out --val-split was used), no --limit of our own). Checkpoint metadata is
    untrusted: anything malformed counts as not logged."""
    metrics = ckpt.get("metrics") if isinstance(ckpt.get("metrics"), dict) else {}
    val = metrics.get("val")
    logged = val.get("acc") if isinstance(val, dict) else None
    if isinstance(logged, bool) or not isinstance(logged, (int, float)):
        logged = None
    try:
        held_out = float(data_cfg.get("val_split") or 0) > 0
    except (TypeError, ValueError):  # already refused by checkpoint_test_data for --split val
        held_out = False
    own_split = (dataset == data_cfg.get("dataset") and args.limit is None
                 and (args.split == "val" or not held_out))
    return logged, own_split


def write_figures(args, cm, classes, title, cm_path, tb_dir, predictions, tag, acc, step):
    """The confusion-matrix PNG, and (with --logdir) a grid of predictions and the accuracy in
    TensorBoard. predictions: (images uint8, labels, predicted labels)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig = confusion_figure(cm, classes, title, normalize=args.normalize_cm)
    atomic_write(cm_path, lambda f: fig.savefig(f, format="png", dpi=110), "wb", suffix=".png")
    plt.close(fig)
    if tb_dir is None:
        return
    from torch.utils.tensorboard import SummaryWriter
    data, labels, preds = predictions
    n = min(args.num_images, len(data))
    fig = predictions_figure(data.images[:n], labels[:n], preds[:n], classes, n=n)
    with SummaryWriter(log_dir=tb_dir) as writer:
        writer.add_figure(tag, fig, global_step=step, close=True)
        writer.add_scalar("eval/accuracy", acc, step)


def print_per_class(classes, per_class_acc, per_class_total, k):
    width = max(len(c) for c in classes[:k])
    if k <= 20:
        for c, a, n in zip(classes, per_class_acc, per_class_total):
            print(f"  {c:<{width}}  {a:6.2f}%  ({n} images)")
    else:  # 100 classes: the extremes only
        order = sorted(range(k), key=lambda i: per_class_acc[i])
        print("  worst: " + ", ".join(f"{classes[i]} {per_class_acc[i]:.0f}%" for i in order[:5]))
        print("  best:  " + ", ".join(f"{classes[i]} {per_class_acc[i]:.0f}%" for i in order[-5:]))


def main(args):
    stem, out_dir, json_path, cm_path, tb_dir = output_paths(args)
    ckpt = load_checkpoint(args.checkpoint)
    device = resolve_device(args.device)
    model = model_from_checkpoint(ckpt, args.checkpoint).to(device).eval()
    source = {}  # the data folder read, and whether it came from the checkpoint (printed then)
    test, dataset = checkpoint_test_data(ckpt, args.dataset, args.data_dir, args.download,
                                         args.limit, args.split, info=source,
                                         path=args.checkpoint)
    loader = checkpoint_loader(ckpt, test, args.batch_size, device, path=args.checkpoint)
    logits, labels = predict_logits(model, loader, tta=args.tta)  # (N, K), (N,)
    preds = logits.argmax(1)
    k = ckpt["model"]["num_classes"]
    cm = confusion_matrix(labels, preds, k)                        # (K, K) true x predicted
    per_class_total = cm.sum(1)
    per_class_acc = (100.0 * cm.diag().double() / per_class_total.clamp_min(1)).tolist()
    data_cfg = ckpt.get("data") if isinstance(ckpt.get("data"), dict) else {}
    # class names: the checkpoint's for its own dataset, the loaded dataset's otherwise
    classes = _class_names(data_cfg.get("classes") if dataset == data_cfg.get("dataset")
                           else test.classes, k)
    acc = 100.0 * (preds == labels).double().mean().item()
    loss = F.cross_entropy(logits, labels).item()
    logged, own_split = logged_accuracy(ckpt, data_cfg, dataset, args)
    epoch = ckpt.get("epoch")
    step = epoch if isinstance(epoch, int) and not isinstance(epoch, bool) else 0
    role = ckpt.get("role") if isinstance(ckpt.get("role"), str) else None

    os.makedirs(out_dir, exist_ok=True)
    cfg = ckpt["model"]
    title = (f"{cfg['arch']} ({role or '?'}, placement {cfg['placement']}, width "
             f"{cfg['base_width']}) on {dataset} {args.split}: {acc:.2f}%"
             + (" with flip TTA" if args.tta else ""))
    write_figures(args, cm, classes, title, cm_path, tb_dir,
                  (test, labels, preds), f"{role or 'model'}/eval_predictions_vs_labels", acc, step)

    result = {
        "checkpoint": os.path.abspath(args.checkpoint), "role": role,
        "arch": cfg["arch"], "placement": cfg["placement"], "base_width": cfg["base_width"],
        "epoch": epoch if step == epoch else None, "dataset": dataset, "split": args.split,
        "data_dir": source.get("data_dir"),
        "data_dir_from_checkpoint": source.get("data_dir_from_checkpoint", False),
        "num_images": len(test), "tta": args.tta,
        "accuracy": acc, "loss": loss, "logged_val_accuracy": logged,
        "same_split_as_training": own_split,
        "per_class_accuracy": dict(zip(classes, per_class_acc)),
        "per_class_count": dict(zip(classes, per_class_total.tolist())),
        "classes": classes, "confusion_matrix": cm.tolist(),
        "confusion_png": cm_path, "tensorboard_dir": tb_dir,
    }
    atomic_write_text(json_path, json.dumps(result, indent=2) + "\n")

    print(f"{title}  (loss {loss:.4f}, {len(test)} images"
          + (f"; logged val accuracy {logged:.2f}%" if logged is not None and own_split else "")
          + ")")
    if not args.quiet:
        print_per_class(classes, per_class_acc, per_class_total.tolist(), k)
        print(f"wrote {json_path}\nwrote {cm_path}" + (f"\nTensorBoard: {tb_dir}" if tb_dir else ""))
    return result


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
