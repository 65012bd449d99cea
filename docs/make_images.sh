#!/usr/bin/env bash
# Regenerate the README example images in docs/img/ from a short real run on the built-in
# synthetic dataset (CPU, a few minutes). Usage: bash docs/make_images.sh [python]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
RUN=$(mktemp -d)
IMG=docs/img
mkdir -p "$IMG"
DATA=(--dataset synthetic --synthetic-train-size 2000 --synthetic-test-size 500 --epochs 8
      --width 8 --no-progress --no-tensorboard --output-dir "$RUN")

"$PY" model_training_mid.py "${DATA[@]}" --teacher resnet34 --student resnet18 --kd skip \
    --eca parallel --run-name docs-kd
"$PY" model_training.py "${DATA[@]}" --model resnet18 --run-name docs-base
"$PY" model_training.py "${DATA[@]}" --model resnet18 --width 4 --epochs 1 --run-name docs-w4

"$PY" numpy_outputs/plotting.py --numpy-dir "$RUN/numpy_outputs" --run docs-kd \
    --baseline docs-base --format png --dpi 80 --loss-scale log --out-dir "$IMG" --name curves
"$PY" evaluate.py "$RUN/saved_pth_model/docs-kd_student.pth" --out-dir "$RUN/eval" --no-tensorboard
cp "$RUN/eval/docs-kd_student_confusion.png" "$IMG/confusion_matrix.png"
"$PY" visualize.py "$RUN/saved_pth_model/docs-w4_baseline.pth" --output "$RUN/graph.png"
"$PY" - "$RUN" "$IMG" <<'PY'
import sys
from PIL import Image
sys.path.insert(0, ".")
from utils.train.checkpoint import load_checkpoint, model_from_checkpoint
from utils.analysis.features import save_feature_figures, test_image

run, img = sys.argv[1], sys.argv[2]
path = f"{run}/saved_pth_model/docs-kd_student.pth"
ckpt = load_checkpoint(path)
model = model_from_checkpoint(ckpt, path).eval()
image, _, _ = test_image(ckpt, 0)
paths = save_feature_figures(model, ckpt, image, run + "/fm", layer="stages.0.0", dpi=80)
# torchviz graph: downscale; every figure: 256-colour palette to keep the files small
graph = Image.open(f"{run}/graph.png").convert("RGB")
graph.thumbnail((560, 2000), Image.LANCZOS)
graph.save(f"{img}/model_graph.png")
for name, src in [("feature_maps_mean.png", paths["mean_activations"]),
                  ("feature_maps_hint.png", paths["hint"])]:
    Image.open(src).convert("RGB").save(f"{img}/{name}")
for name in ("curves.png", "confusion_matrix.png", "model_graph.png", "feature_maps_mean.png",
             "feature_maps_hint.png"):
    p = f"{img}/{name}"
    Image.open(p).convert("RGB").quantize(256).save(p, optimize=True)
PY
ls -l "$IMG"
rm -rf "$RUN"
