#!/usr/bin/env bash
# Regenerate the README example images in docs/img/ from the evidence study's runs on the real
# Fashion-MNIST (docs/RESULTS.md): the skip KD + ECA parallel student of seed 0 in the low-data
# regime, against the no-teacher student of the same seed. Needs the study's sweep folder
# (`python sweep.py work evidence_low`, after its pilot) and the dataset; about a minute on a CPU.
# Usage: bash docs/make_images.sh [python] [sweep folder] [Fashion-MNIST folder]
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${1:-.venv/bin/python}
SWEEP=${2:-sweeps/evidence_low}
DATA=${3:-/usr/share/datasets/fashion-mnist}
KD=evidence_low_seed=0_method=skip-eca-parallel
BASE=evidence_low_seed=0_method=none
CKPT="$SWEEP/saved_pth_model/${KD}_student.pth"
for f in "$CKPT" "$SWEEP/numpy_outputs/summary_${BASE}.json"; do
    [ -f "$f" ] || { echo "error: $f not found: run the evidence study first (docs/RESULTS.md)" >&2; exit 2; }
done
RUN=$(mktemp -d)
IMG=docs/img
mkdir -p "$IMG"

"$PY" numpy_outputs/plotting.py --numpy-dir "$SWEEP/numpy_outputs" --run "$KD" \
    --baseline "$BASE" --format png --dpi 80 --loss-scale log --out-dir "$IMG" --name curves
"$PY" evaluate.py "$CKPT" --data-dir "$DATA" --out-dir "$RUN/eval" --no-tensorboard
cp "$RUN/eval/${KD}_student_confusion.png" "$IMG/confusion_matrix.png"
"$PY" visualize.py "$CKPT" --output "$RUN/graph.png"
"$PY" - "$RUN" "$IMG" "$CKPT" "$DATA" <<'PY'
import sys
from PIL import Image
sys.path.insert(0, ".")
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from utils.analysis.features import save_feature_figures, test_image

run, img, path, data = sys.argv[1:5]
ckpt = load_checkpoint(path)
model = model_from_checkpoint(ckpt, path).eval()
image, _, _ = test_image(ckpt, 0, data_dir=data)
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
