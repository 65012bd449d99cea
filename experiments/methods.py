"""Write docs/METHODS.md from the registry of distillation terms: for each term its paper, what
it makes the student match, what it needs from both networks, its default weight and options,
and what it learns and keeps for the standard pair, counted on the real models; then each
term's own documentation (its module docstring: equations, defaults and their sources).

    python experiments/methods.py            # writes docs/METHODS.md and docs/GUIDE.md's table
    python experiments/methods.py --check    # exit 1 if either is out of date

The standard pair: resnet34 -> resnet18 at base width 64 with ECA parallel, on CIFAR-100
(100 classes, 32 x 32 RGB, 45,000 training images after the default held-out 10%).
"""
import argparse
import inspect
import os
import sys

import torch

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from skipkd.io.files import atomic_write_text  # noqa: E402
from skipkd.models import create_model, feature_shapes  # noqa: E402
from skipkd.kd import KD_RECIPES, KD_TERMS, DistillationLoss, TermContext  # noqa: E402
from skipkd.kd import recipes as _recipes  # noqa: E402

PAIR = dict(teacher="resnet34", student="resnet18", width=64, placement="parallel", classes=100,
            train_images=45_000)
OUT = os.path.join(REPO, "docs", "METHODS.md")
README = os.path.join(REPO, "docs", "GUIDE.md")  # the user guide holds the short table
START, END = "<!-- methods:start -->", "<!-- methods:end -->"


def learned_and_kept(name: str) -> tuple[int, int]:
    """(parameters the term learns, elements of the buffers it keeps) for the standard pair
    (the networks on the meta device: nothing of them is allocated)."""
    with torch.device("meta"):
        student = create_model(PAIR["student"], num_classes=PAIR["classes"],
                               base_width=PAIR["width"], placement=PAIR["placement"])
        teacher = create_model(PAIR["teacher"], num_classes=PAIR["classes"],
                               base_width=PAIR["width"], placement=PAIR["placement"])
    labels = torch.arange(PAIR["train_images"]) % PAIR["classes"]
    ctx = TermContext(student_shapes=feature_shapes(student),
                      teacher_shapes=feature_shapes(teacher), num_classes=PAIR["classes"],
                      num_samples=PAIR["train_images"], train_labels=labels, epochs=240)
    loss = DistillationLoss(name, teacher, context=ctx, fast_teacher=False)
    term = loss.terms[name]
    learned = sum(p.numel() for p in term.parameters() if p.requires_grad)
    saved = term.state_dict()  # parameters and persistent buffers
    kept = sum(b.numel() for n, b in term.named_buffers() if n in saved)
    return learned, kept


def _count(n: int) -> str:
    if n == 0:
        return "0"
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K" if n >= 1e3 else str(n)


def render() -> str:
    lines = [
        "# Distillation methods",
        "",
        "Every method is a loss term in its own file under `skipkd/kd/`, registered by name. "
        "Combine them with `--kd a+b`, weight them with `--kd-weights a=w,b=w` and set their "
        "options with `--kd-opt a.key=value`; the total loss is cross-entropy plus the "
        "weighted terms. This page is written by `python experiments/methods.py` from the "
        "registry and the terms' own documentation.",
        "",
        f"'Learns' and 'keeps' are counted on the standard pair: {PAIR['teacher']} -> "
        f"{PAIR['student']} at base width {PAIR['width']} with ECA placement {PAIR['placement']}, "
        f"{PAIR['classes']} classes, {PAIR['train_images']:,} training images. What a term "
        f"learns trains with the student and is not exported with it; what it keeps (buffers) "
        f"is saved with the resumable training state only.",
        "",
        "| term | paper | matches | needs | default weight | options (defaults) | learns | keeps |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name, cls in KD_TERMS.items():
        learned, kept = learned_and_kept(name)
        opts = ", ".join(f"{k}={v}" for k, v in cls.options.items()) or "-"
        needs = ", ".join(sorted(cls.needs))
        lines.append(f"| `{name}` | {cls.paper} | {cls.matches} | {needs} | "
                     f"{cls.default_weight:g} | {opts} | {_count(learned)} params | "
                     f"{_count(kept)} values |")
    lines += ["", "Parts: terms that return several parts log each as `<term>_<part>` "
              "besides their sum: " + "; ".join(
                  f"`{n}`: {', '.join(c.parts)}" for n, c in KD_TERMS.items() if c.parts) + ".",
              ""]
    for name, cls in KD_TERMS.items():
        doc = inspect.getdoc(sys.modules[cls.__module__]) or ""
        lines += [f"## `{name}`", "", doc.strip(), ""]
        class_doc = inspect.getdoc(cls)
        if class_doc and class_doc not in doc:
            lines += [class_doc.strip(), ""]
        lines += [f"Source: `{cls.__module__.replace('.', '/')}.py`.", ""]
    return "\n".join(lines + recipe_lines())


def recipe_lines() -> list:
    """The published recipes (--kd-recipe): a table of what each sets, then their sources."""
    lines = ["## Recipes (`--kd-recipe`)", "",
             "| recipe | term | weight | options | --temperature | CE weight |",
             "|---|---|---|---|---|---|"]
    show = lambda v: "-" if v is None else f"{v:g}"  # noqa: E731
    for name, recipe in KD_RECIPES.items():
        for term, part in recipe.terms.items():
            opts = ", ".join(f"{term}.{k}={v:g}" if not isinstance(v, bool) else
                             f"{term}.{k}={int(v)}" for k, v in part.options.items()) or "-"
            lines.append(f"| `{name}` | `{term}` | {show(part.weight)} | {opts} | "
                         f"{show(part.temperature)} | {show(part.ce_weight)} |")
    doc = inspect.getdoc(_recipes).split("\n", 1)[1].strip()
    return lines + ["", doc, "", "Source: `skipkd/kd/recipes.py`.", ""]


def readme_table() -> str:
    """The guide's short table (between its methods markers)."""
    rows = ["| term | paper | matches | default weight | learns |", "|---|---|---|---|---|"]
    for name, cls in KD_TERMS.items():
        learned, _ = learned_and_kept(name)
        rows.append(f"| `{name}` | {cls.paper} | {cls.matches} | {cls.default_weight:g} | "
                    f"{_count(learned)} |")
    return "\n".join(rows)


def with_readme_table(readme: str) -> str:
    head, sep, rest = readme.partition(START)
    _, sep2, tail = rest.partition(END)
    if not (sep and sep2):
        raise SystemExit(f"docs/GUIDE.md has no {START} ... {END} block")
    return f"{head}{START}\n{readme_table()}\n{END}{tail}"


def _write(path, text):
    atomic_write_text(path, text)


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true",
                   help="exit 1 if docs/METHODS.md or the guide's table differs")
    args = p.parse_args()
    text = render()
    with open(README) as f:
        readme = f.read()
    new_readme = with_readme_table(readme)
    if args.check:
        with open(OUT) as f:
            same = f.read() == text and readme == new_readme
        print("docs/METHODS.md and the guide's table are " + (
            "up to date" if same else "out of date: run python experiments/methods.py"))
        sys.exit(0 if same else 1)
    _write(OUT, text)
    _write(README, new_readme)
    print(f"wrote {os.path.relpath(OUT, REPO)} and the guide's table ({len(KD_TERMS)} terms)")


if __name__ == "__main__":
    main()
