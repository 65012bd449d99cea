"""Write docs/MODELS.md from the model registry: every registered model with its family,
parameter count for 100 classes, default width, hint (shape at 32 x 32) and ECA placements, all
computed from the models themselves (on the meta device), then each family's own documentation
(its module docstring: the reference it follows, its hint and placements).

    python experiments/models_doc.py            # writes docs/MODELS.md
    python experiments/models_doc.py --check    # exit 1 if it is out of date
"""
import argparse
import inspect
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skipkd.io.files import atomic_write_text  # noqa: E402
from skipkd.models import MODELS, count_parameters, create_model, feature_shapes  # noqa: E402

OUT = os.path.join(REPO, "docs", "MODELS.md")


def describe(name: str) -> dict:
    spec = MODELS[name]
    with torch.device("meta"):
        model = create_model(name, num_classes=100)
    shapes = feature_shapes(model)
    hint = shapes["hint"]
    return {"family": spec.family, "params": count_parameters(model),
            "width": spec.default_width, "placements": ", ".join(spec.placements),
            "hint": " x ".join(map(str, hint)) if hint else "none",
            "stages": len(shapes["feats"]) - 1, "embedding": shapes["embedding"][0],
            "module": type(model).__module__,
            # where the name is registered, when that is not the class's own module
            "registered_in": getattr(spec.factory, "func", spec.factory).__module__}


def render() -> str:
    names, aliases = {}, {}
    wholesale = sorted(n for n, spec in MODELS.items() if spec.family == "torchvision")
    for name, spec in MODELS.items():  # the first name registered for a spec; the rest alias it
        if spec.family == "torchvision":  # registered wholesale: one paragraph below, not rows
            continue
        first = next((n for n, s in names.items() if s is spec), None)
        if first is None:
            names[name] = spec
        else:
            aliases.setdefault(first, []).append(name)
    rows = {n: describe(n) for n in names}
    lines = [
        "# Models",
        "",
        "Every model is registered by name (`skipkd/models/registry.py`) and honours one feature "
        "contract (`skipkd/models/contract.py`): logits and the skip-connection hint always, stage "
        "features, their pre-activations and the pooled embedding when a distillation term asks. "
        "This page is written by `python experiments/models_doc.py` from the registry; the "
        "numbers are computed from the models.",
        "",
        "- **params**: for 100 classes (CIFAR-100), at the default width. For the benchmark "
        "families they equal the reference implementation's (RepDistiller), which the tests "
        "assert from hand computations.",
        "- **default width**: what `--width` means for the family and what a run gets without "
        "it (see each family below); smaller widths give proportionally narrower networks.",
        "- **hint**: the output of the hint block's projection shortcut (C x H x W at 32 x 32); "
        "`none` where the family has no projection shortcut, and `--kd skip` refuses it (use "
        "fitnet, at, crd, ...).",
        "- **stages / embedding**: how many stage outputs `feats` has after the stem, and the "
        "width of the pooled embedding.",
        "",
        "| model | aliases | family | params (100 classes) | default width | hint | stages | "
        "embedding | ECA placements |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for n, r in rows.items():
        lines.append(f"| `{n}` | {', '.join(f'`{a}`' for a in aliases.get(n, [])) or '-'} | "
                     f"{r['family']} | {r['params']:,} | {r['width']} | {r['hint']} | "
                     f"{r['stages']} | {r['embedding']} | {r['placements']} |")
    lines.append("")
    seen = set()
    for n, r in rows.items():
        if r["module"] in seen:
            continue
        seen.add(r["module"])
        doc = inspect.getdoc(sys.modules[r["module"]]) or ""
        lines += [f"## `{r['module'].replace('.', '/')}.py`", "", doc.strip(), ""]
    for n, r in rows.items():  # a configuration of a class documented above (the ImageNet nets)
        module = r["registered_in"]
        if module in seen or module == "skipkd.models":
            continue
        seen.add(module)
        doc = inspect.getdoc(sys.modules[module]) or ""
        lines += [f"## `{module.replace('.', '/')}.py`", "", doc.strip(), ""]
    if wholesale:
        import skipkd.models.torchvision_zoo as zoo
        lines += ["## `skipkd/models/torchvision_zoo.py`", "",
                  (inspect.getdoc(zoo) or "").strip(), "",
                  f"The {len(wholesale)} names registered here: "
                  + ", ".join(f"`{n}`" for n in wholesale) + ".", ""]
    return "\n".join(lines)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/MODELS.md differs")
    args = p.parse_args()
    text = render()
    if args.check:
        with open(OUT) as f:
            same = f.read() == text
        print("docs/MODELS.md is " + ("up to date" if same else
                                      "out of date: run python experiments/models_doc.py"))
        sys.exit(0 if same else 1)
    atomic_write_text(OUT, text)
    print(f"wrote {os.path.relpath(OUT, REPO)}")


if __name__ == "__main__":
    main()
