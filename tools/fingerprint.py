"""Fingerprints of what the toolkit computes, to show that a refactoring changed no number.

    python tools/fingerprint.py --out before.json            # on the old code
    python tools/fingerprint.py --out after.json --compare before.json

It records, on the CPU with fixed seeds:
- models: a hash of the initial weights of every registered architecture x attention placement
  it hosts x attention type (width 8, ShuffleNetV1 12, 10 classes, 32 pixels), and of its logits on one input;
- runs: a tiny distillation run (synthetic CIFAR-10 layout, 2 epochs) per distillation term, and
  a student-alone run per model family: a hash of the student's final weights and of the
  run's loss and accuracy arrays.

`--compare` prints every earlier entry that differs or is missing and exits 1 if any does;
entries that did not exist before (a model registered since) are counted as new. Hashes are of
values (tensors in key order, arrays), not of files, so a renamed metadata field does not count.
"""
import argparse
import glob
import hashlib
import inspect
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from skipkd.data import make_synthetic, write_cifar10  # noqa: E402
from skipkd.io.files import atomic_write_text  # noqa: E402
from skipkd.kd import KD_TERMS  # noqa: E402
from skipkd.models import ATTENTION_LAYERS, MODELS, create_model  # noqa: E402

# one small student (and teacher) per family for the student-alone runs
FAMILY_MODELS = {"resnet": "resnet18", "cifar_resnet": "resnet8", "wrn": "wrn_16_1",
                 "vgg": "vgg8", "mobilenetv2": "MobileNetV2", "shufflenetv1": "ShuffleV1",
                 "shufflenetv2": "ShuffleV2"}


def tensor_hash(tensors) -> str:
    h = hashlib.sha256()
    for name, t in tensors:
        h.update(name.encode())
        h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def placement_kwarg() -> str:
    """create_model's name for the placement ('placement' now, 'eca' before the rename)."""
    params = inspect.signature(create_model).parameters
    return "placement" if "placement" in params else "eca"


def model_fingerprints() -> dict:
    out, key = {}, placement_kwarg()
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    for name, spec in sorted(MODELS.items()):
        if spec.family == "torchvision":  # torchvision's own classifiers: not this toolkit's
            continue
        for placement in spec.placements:
            for attn in sorted(ATTENTION_LAYERS) if placement != "none" else ["eca"]:
                torch.manual_seed(0)
                width = 12 if spec.family == "shufflenetv1" else 8  # 3 groups divide 12
                model = create_model(name, num_classes=10, base_width=width,
                                     **{key: placement, "attn": attn}).eval()
                with torch.no_grad():
                    logits = model(x).logits
                out[f"{name}/{placement}/{attn}"] = (
                    tensor_hash(sorted(model.state_dict().items())) + ":"
                    + tensor_hash([("logits", logits)]))
    return out


def run_fingerprint(data_dir: str, out_dir: str, args: list) -> str:
    cmd = [sys.executable, os.path.join(ROOT, "model_training_mid.py"), "--dataset", "cifar10",
           "--data-dir", data_dir, "--output-dir", out_dir, "--device", "cpu", "--no-progress",
           "--batch-size", "50", "--eval-batch-size", "100", "--epochs", "2", "--seed", "3",
           "--precision", "fp32", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        return "failed: " + (proc.stderr.strip().splitlines() or ["?"])[-1][:200]
    ckpts = sorted(glob.glob(os.path.join(out_dir, "saved_pth_model", "*_student_last.pth")))
    state = torch.load(ckpts[-1], map_location="cpu", weights_only=True)
    weights = state.get("state_dict", state.get("model_state_dict", state))
    arrays = sorted(glob.glob(os.path.join(out_dir, "numpy_outputs", "*.npy")))
    h = hashlib.sha256()
    for path in arrays:
        h.update(os.path.basename(path).encode())
        h.update(np.load(path, allow_pickle=False).astype(np.float64).tobytes())
    return (tensor_hash(sorted((k, v) for k, v in weights.items() if torch.is_tensor(v)))
            + ":" + h.hexdigest()[:16])


def run_fingerprints(work: str) -> dict:
    data_dir = os.path.join(work, "data")
    os.makedirs(data_dir)
    write_cifar10(data_dir, make_synthetic(200, seed=11), make_synthetic(100, seed=12))
    runs = {}
    common = ["--teacher", "resnet18", "--student", "resnet18", "--width", "4",
              "--teacher-epochs", "1"]
    for term in sorted(KD_TERMS):
        runs[f"kd/{term}"] = ["--kd", term, *common]
    runs["kd/skip+logit/parallel"] = ["--kd", "skip+logit", "--eca", "parallel", *common]
    for family, model in sorted(FAMILY_MODELS.items()):
        runs[f"alone/{family}"] = ["--kd", "none", "--student", model, "--width", "8",
                                   "--eca", "last"]
        if family == "shufflenetv1":
            runs[f"alone/{family}"][5] = "12"
    out = {}
    for i, (name, args) in enumerate(runs.items()):
        out[name] = run_fingerprint(data_dir, os.path.join(work, f"run{i}"), args)
        print(f"  {name}: {out[name]}", flush=True)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="the JSON file to write (a new file)")
    p.add_argument("--compare", help="an earlier fingerprint JSON to compare with")
    p.add_argument("--models-only", action="store_true", help="skip the training runs")
    args = p.parse_args(argv)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    result = {"models": model_fingerprints()}
    print(f"{len(result['models'])} model fingerprints")
    if not args.models_only:
        with tempfile.TemporaryDirectory() as work:
            result["runs"] = run_fingerprints(work)
    atomic_write_text(args.out, json.dumps(result, indent=1, sort_keys=True) + "\n")
    if args.compare:
        with open(args.compare) as f:
            before = json.load(f)
        old = {f"{part}/{k}": v for part, entries in before.items() for k, v in entries.items()}
        new = {f"{part}/{k}": v for part, entries in result.items() for k, v in entries.items()}
        differ = [k for k in sorted(old) if new.get(k) != old[k]]  # changed or gone
        added = sorted(set(new) - set(old))  # models or runs that did not exist before
        for name in differ:
            print(f"DIFFERS: {name}")
        print(f"{len(old) - len(differ)} of {len(old)} earlier fingerprints identical"
              + (f"; {len(added)} new ({', '.join(added[:3])}{', ...' if len(added) > 3 else ''})"
                 if added else ""))
        return 1 if differ else 0
    return 0


if __name__ == "__main__":
    sys.exit(main())
