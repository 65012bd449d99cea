"""The feature-map notebook's settings (features_visualization.ipynb), read from environment
variables so that it also runs headless, and checked before any work: a bad value is a one-line
error that names the variable, in the notebook as on the command line.

    FEATURES_CHECKPOINT  a .pth of the training scripts ('' : train a tiny one)
    FEATURES_IMAGE       an image file ('' : a test image of the checkpoint's dataset)
    FEATURES_INDEX       which test image (an integer >= 0)
    FEATURES_DATA_DIR    the folder holding the checkpoint's dataset ('' : the saved one)
    FEATURES_LAYER       the layer whose channels are drawn
    FEATURES_OUT_DIR     where the PNGs go (made when missing)
"""
import os
import sys

from skipkd.data import SYNTHETIC_SEED, Augment, TensorLoader, channel_stats, load_dataset
from skipkd.errors import UserError
from skipkd.io.checkpoint import save_checkpoint
from skipkd.kd import DistillationLoss
from skipkd.models import create_model
from skipkd.train.engine import evaluate, train_one_epoch

__all__ = ["notebook_settings", "one_line_errors", "check_layer", "MAX_INDEX",
           "train_tiny_checkpoint"]

MAX_INDEX = 10 ** 9  # beyond any test split; the split's own size is checked when it is read


def _path(environ, name, kind):
    """'' (not given) or an existing file / folder, named by its variable when it is not."""
    value = environ.get(name, "").strip()
    if not value:
        return ""
    if kind == "file" and not os.path.isfile(value):
        raise UserError(f"{name}={value!r}: " + ("is a folder, not a file"
                                                  if os.path.isdir(value) else "no such file"))
    if kind == "folder" and not os.path.isdir(value):
        raise UserError(f"{name}={value!r}: no such folder")
    return value


def notebook_settings(environ=None) -> dict:
    """-> {checkpoint, image, index, data_dir, layer, out_dir} from the FEATURES_* variables,
    each checked; the output folder is made here (its parent must be writable)."""
    environ = os.environ if environ is None else environ
    text = environ.get("FEATURES_INDEX", "0").strip() or "0"
    try:
        index = int(text)
    except ValueError:
        raise UserError(f"FEATURES_INDEX={text[:40]!r}: expected an integer >= 0") from None
    if not 0 <= index <= MAX_INDEX:
        raise UserError(f"FEATURES_INDEX={index}: expected an integer in 0..{MAX_INDEX:,}")
    layer = environ.get("FEATURES_LAYER", "").strip() or "stages.0.0"
    if len(layer) > 100 or not all(c.isalnum() or c in "._" for c in layer):
        raise UserError(f"FEATURES_LAYER={layer[:40]!r}: not a layer name (e.g. stages.0.0, "
                        f"hint)")
    settings = {"checkpoint": _path(environ, "FEATURES_CHECKPOINT", "file"),
                "image": _path(environ, "FEATURES_IMAGE", "file"), "index": index,
                "data_dir": _path(environ, "FEATURES_DATA_DIR", "folder") or None,
                "layer": layer}
    out_dir = environ.get("FEATURES_OUT_DIR", "").strip() or "feature_maps"
    if os.path.exists(out_dir) and not os.path.isdir(out_dir):
        raise UserError(f"FEATURES_OUT_DIR={out_dir!r}: is a file, not a folder")
    try:  # last: nothing is made when another setting is wrong
        os.makedirs(out_dir, exist_ok=True)
    except OSError as exc:
        raise UserError(f"FEATURES_OUT_DIR={out_dir!r}: cannot create it "
                        f"({exc.strerror or type(exc).__name__})") from None
    return {**settings, "out_dir": out_dir}


def check_layer(layer: str, features) -> str:
    """FEATURES_LAYER must name a captured layer of this model."""
    if layer not in features:
        raise UserError(f"FEATURES_LAYER={layer!r}: no such layer in this model; choose from "
                        f"{', '.join(features)}")
    return layer


def one_line_errors():
    """In IPython/Jupyter, show a UserError (a bad setting, a missing or damaged file) as one
    line 'error: ...', as the scripts do, instead of a traceback. Elsewhere: nothing."""
    shell = getattr(sys.modules.get("IPython"), "get_ipython", lambda: None)()
    if shell is None:
        return

    def show(shell, etype, value, tb, tb_offset=None):
        stb = [f"error: {value}"]  # the whole "traceback" shown and sent to the frontend
        shell._showtraceback(etype, value, stb)
        return stb

    shell.set_custom_exc((UserError,), show)


# ---------------------------------------------------------------- a tiny real model
def train_tiny_checkpoint(path: str, arch="resnet18", width=4, placement="parallel", epochs=1,
                          train_size=512, test_size=128, batch_size=64, lr=0.05, seed=0,
                          dataset="synthetic", data_dir=None) -> str:
    """Train a small model with the repo's engine and save a regular checkpoint (the same format
    as the training scripts). Seconds on a CPU. dataset: 'synthetic' (made in memory), or a
    dataset read from `data_dir` (its first train_size / test_size images; the folder is saved
    as the run's --data-dir, like a training script does)."""
    import torch


    torch.manual_seed(seed)
    if dataset == "synthetic":
        # the same split evaluate.py / test_image rebuild from the saved args
        train, test = load_dataset("synthetic", train_size=train_size, test_size=test_size,
                                   seed=SYNTHETIC_SEED)
    else:
        train, test = load_dataset(dataset, data_dir or "./data")
        train.images, train.labels = train.images[:train_size], train.labels[:train_size]
        test.images, test.labels = test.images[:test_size], test.labels[:test_size]
    mean, std = channel_stats(train.images)
    c, size = train.images.shape[1], train.images.shape[-1]
    data_cfg = {"dataset": dataset, "mean": mean, "std": std, "classes": list(train.classes),
                "num_classes": len(train.classes), "in_channels": c, "image_size": size,
                "train_size": len(train), "test_size": len(test)}
    model_cfg = {"num_classes": len(train.classes), "base_width": width, "in_channels": c,
                 "placement": placement, "eca_k": None, "image_size": size}
    model = create_model(arch, num_classes=len(train.classes), base_width=width, in_channels=c, placement=placement)
    train_loader = TensorLoader(train, batch_size, "cpu", mean, std, shuffle=True,
                                augment=Augment(crop_padding=4, hflip=True), seed=seed)
    test_loader = TensorLoader(test, 256, "cpu", mean, std)
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, nesterov=True, weight_decay=5e-4)
    loss_fn = DistillationLoss("none")
    for epoch in range(epochs):
        tr = train_one_epoch(model, loss_fn, train_loader, opt, show_progress=False)
        va = evaluate(model, test_loader)
    args = {"dataset": dataset, "synthetic_train_size": train_size,
            "synthetic_test_size": test_size, "eval_batch_size": 256, "epochs": epochs,
            "batch_size": batch_size, "lr": lr, "seed": seed, "width": width, "placement": placement,
            "limit_test": None if dataset == "synthetic" else test_size,
            "script": "utils.analysis.notebook.train_tiny_checkpoint"}
    if dataset != "synthetic":
        args.update(data_dir=data_dir or "./data", limit_train=train_size)
    save_checkpoint(path, model, arch=arch, role="baseline", model_cfg=model_cfg, data_cfg=data_cfg,
                    args=args, metrics={"epoch": epochs, "train": tr, "val": va}, epoch=epochs)
    return path
