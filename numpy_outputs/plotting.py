"""Accuracy and loss curves of a run's teacher and student (and a baseline) as a PNG
(matplotlib) and an interactive HTML page (plotly), from the per-epoch arrays in numpy_outputs/.

    python numpy_outputs/plotting.py --list
    python numpy_outputs/plotting.py --run KEY [KEY ...] [--baseline KEY] [--metric both]
"""
import glob
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:  # run as a script from anywhere: the repo's packages come first
    sys.path.insert(0, ROOT)

from skipkd.cli import positive_int  # noqa: E402
from skipkd.errors import UserError, exit_on_user_error  # noqa: E402
from skipkd.io.outputs import atomic_write  # noqa: E402
from utils.analysis.runs import check_run_keys, list_run_keys, load_history  # noqa: E402
from utils.analysis.toolargs import check_output_dir, check_output_path, tool_parser  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
ROLE_ORDER = ("teacher", "student", "baseline")
SPLIT_STYLE = {"val": "-", "train": "--"}          # matplotlib line styles
SPLIT_DASH = {"val": "solid", "train": "dash"}     # plotly dash styles
METRIC_LABEL = {"accuracy": "accuracy (%)", "loss": "cross-entropy (mean per image)",
                "distillation": "distillation term (mean per image)"}
PANEL_TITLE = {"accuracy": "accuracy", "loss": "cross-entropy: training vs validation",
               "distillation": "distillation terms (training)"}


def get_args_parser():
    p = tool_parser("Plot per-epoch accuracy and loss curves of training runs "
                                  "(teacher, student, optional baseline) to PNG and HTML.")
    p.add_argument("--run", nargs="+", metavar="KEY", default=None,
                   help="run key(s) to plot; several keys are overlaid in one figure "
                        "(default: the most recently written run)")
    p.add_argument("--baseline", metavar="KEY", default=None,
                   help="also draw this baseline run (a model_training.py run, or the student of "
                        "a --kd none run)")
    p.add_argument("--metric", choices=["accuracy", "loss", "both"], default="both",
                   help="which curves to draw; 'loss' compares training and validation "
                        "cross-entropy, and adds a panel of the distillation terms")
    p.add_argument("--split", choices=["train", "val", "both"], default="both",
                   help="training and/or validation curves (validation solid, training dashed)")
    p.add_argument("--numpy-dir", default=HERE,
                   help="folder with the {split}_{metric}_{role}_{key}.npy arrays")
    p.add_argument("--out-dir", default=None,
                   help="where to write the figures (default: <numpy-dir>/plots)")
    p.add_argument("--name", default=None,
                   help="file name stem of the figures (default: curves_<first key>)")
    p.add_argument("--format", nargs="+", choices=["png", "html"], default=["png", "html"],
                   dest="formats", help="output formats")
    p.add_argument("--plotlyjs", choices=["inline", "cdn"], default="inline",
                   help="embed plotly.js in the HTML (works offline, ~4 MB) or load it from a CDN")
    p.add_argument("--loss-scale", choices=["linear", "log"], default="log",
                   help="y axis of the loss panels (log keeps a first-epoch spike from flattening "
                        "every other curve)")
    p.add_argument("--dpi", type=positive_int, default=120, help="PNG resolution (dots per inch)")
    p.add_argument("--list", action="store_true", help="list the run keys found and exit")
    return p


def collect_series(numpy_dir, keys, baseline, metrics, splits):
    """-> list of dicts {label, role, key, split, metric, y (list of floats)}; x is 1..len(y)."""
    multi = len(keys) > 1
    entries = []  # (key, role, label prefix)
    for key in keys:
        hist = load_history(numpy_dir, key)
        for role in ROLE_ORDER:
            if role in hist:
                entries.append((key, role, hist[role], f"{key}: {role}" if multi else role))
    if baseline is not None:
        hist = load_history(numpy_dir, baseline)
        role = "baseline" if "baseline" in hist else "student"  # a kd-none run: its student
        if role not in hist:
            raise UserError(f"run {baseline!r} has no baseline or student arrays in {numpy_dir}")
        entries.append((baseline, "baseline", hist[role], f"baseline ({baseline})"))
    series = []
    for key, role, hist, prefix in entries:
        for metric in metrics:
            if metric == "distillation":  # the training loss's distillation parts
                for (split, name), y in hist.items():
                    if split == "train" and name.startswith("loss_") and name != "loss_ce":
                        series.append({"label": f"{prefix} {name[5:]}", "role": role, "key": key,
                                       "split": "train", "metric": metric, "part": name[5:],
                                       "y": [float(v) for v in y]})
                continue
            for split in splits:
                # like with like: training CE against validation CE (validation has no KD term)
                y = hist.get((split, metric))
                if metric == "loss" and split == "train" and ("train", "loss_ce") in hist:
                    y = hist[("train", "loss_ce")]
                if y is not None and len(y):
                    series.append({"label": f"{prefix} {split}", "role": role, "key": key,
                                   "split": split, "metric": metric,
                                   "y": [float(v) for v in y]})
    if not series:
        raise UserError(f"no {'/'.join(metrics)} arrays found for {', '.join(keys)} in {numpy_dir}")
    return series


def _colours(series):
    """One colour per (run, role) line pair, from matplotlib's default cycle."""
    import matplotlib
    from matplotlib.colors import to_hex
    cycle = [to_hex(c) for c in matplotlib.rcParams["axes.prop_cycle"].by_key()["color"]]
    pairs = list(dict.fromkeys((s["key"], s["role"]) for s in series))
    return {pair: cycle[i % len(cycle)] for i, pair in enumerate(pairs)}


def plot_png(series, metrics, path, title, dpi=120, loss_scale="linear"):
    import matplotlib
    matplotlib.use("Agg")  # headless: never opens a window
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    colours = _colours(series)
    fig, axes = plt.subplots(1, len(metrics), figsize=(6.2 * len(metrics), 4.2), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for s in (s for s in series if s["metric"] == metric):
            epochs = range(1, len(s["y"]) + 1)
            style = ":" if metric == "distillation" and s.get("part") != "skip" else SPLIT_STYLE[s["split"]]
            ax.plot(epochs, s["y"], style, color=colours[(s["key"], s["role"])],
                    label=s["label"], marker="o" if len(s["y"]) <= 20 else None, markersize=3)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))  # whole epochs only
        ax.set_ylabel(METRIC_LABEL[metric])
        if metric != "accuracy":
            ax.set_yscale(loss_scale)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        ax.set_title(PANEL_TITLE[metric], fontsize=9)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=dpi), "wb", suffix=".png")
    finally:
        plt.close(fig)
    return path


def plot_html(series, metrics, path, title, plotlyjs="inline", loss_scale="linear"):
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    colours = _colours(series)
    fig = make_subplots(rows=1, cols=len(metrics), subplot_titles=[PANEL_TITLE[m] for m in metrics])
    for col, metric in enumerate(metrics, start=1):
        for s in (s for s in series if s["metric"] == metric):
            # plain lists keep the values readable in the HTML (numpy arrays become base64)
            fig.add_trace(go.Scatter(x=list(range(1, len(s["y"]) + 1)), y=s["y"], name=s["label"],
                                     mode="lines+markers", legendgroup=s["label"],
                                     showlegend=col == 1 or len(metrics) == 1,
                                     line=dict(color=colours[(s["key"], s["role"])],
                                               dash=SPLIT_DASH[s["split"]])),
                          row=1, col=col)
        fig.update_xaxes(title_text="epoch", row=1, col=col)
        fig.update_yaxes(title_text=METRIC_LABEL[metric], row=1, col=col,
                         type=loss_scale if metric != "accuracy" else "linear")
    fig.update_layout(title=title, hovermode="x unified", template="plotly_white")
    html = fig.to_html(include_plotlyjs=True if plotlyjs == "inline" else "cdn", full_html=True)
    atomic_write(path, lambda f: f.write(html.encode("utf-8")), "wb", suffix=".html")
    return path


def newest_run(numpy_dir, keys):
    def mtime(key):
        paths = [os.path.join(numpy_dir, f"summary_{key}.json"),
                 os.path.join(numpy_dir, f"history_{key}.json")] + \
                [os.path.join(numpy_dir, f"val_accuracy{r}_{key}.npy")
                 for r in ("", "_teacher", "_student")]
        return max((os.path.getmtime(p) for p in paths if os.path.exists(p)), default=0.0)
    return max(keys, key=mtime)


def main(args):
    numpy_dir = args.numpy_dir
    if not os.path.isdir(numpy_dir):
        raise UserError(f"--numpy-dir folder not found: {numpy_dir}")
    if args.list:
        keys = list_run_keys(numpy_dir)
        print("\n".join(keys) if keys else f"no runs found in {numpy_dir}")
        return keys
    available = check_run_keys(numpy_dir, (args.run or []) + ([args.baseline] if args.baseline else []))
    if not args.run:
        if not available:
            raise UserError(f"no runs found in {numpy_dir} (train one first, or pass --numpy-dir)")
        args.run = [newest_run(numpy_dir, available)]
        print(f"plotting the newest run '{args.run[0]}' (choose with --run; see --list)")
    metrics = ["accuracy", "loss"] if args.metric == "both" else [args.metric]
    splits = ["val", "train"] if args.split == "both" else [args.split]
    out_dir = args.out_dir or os.path.join(numpy_dir, "plots")
    more = f"_and_{len(args.run) - 1}_more" if len(args.run) > 1 else ""
    name = args.name or f"curves_{args.run[0]}{more}"
    # the arrays and summaries of the folder are this tool's inputs: never an output
    inputs = [p for pattern in ("*.npy", "summary_*.json", "history_*.json", "manifest_*.json")
              for p in glob.glob(os.path.join(glob.escape(numpy_dir), pattern))]
    check_output_dir(out_dir, inputs, "--out-dir")
    for fmt in args.formats:
        check_output_path(os.path.join(out_dir, f"{name}.{fmt}"), inputs, f"the {fmt.upper()} "
                          f"output", create=True)
    if "loss" in metrics:  # the distillation terms get their own panel, when a run has any
        metrics.append("distillation")
    series = collect_series(numpy_dir, args.run, args.baseline, metrics, splits)
    metrics = [m for m in metrics if any(s["metric"] == m for s in series)]

    os.makedirs(out_dir, exist_ok=True)
    title = " vs ".join(args.run) + (f" (baseline {args.baseline})" if args.baseline else "")
    written = []
    if "png" in args.formats:
        written.append(plot_png(series, metrics, os.path.join(out_dir, name + ".png"), title, args.dpi,
                                args.loss_scale))
    if "html" in args.formats:
        written.append(plot_html(series, metrics, os.path.join(out_dir, name + ".html"), title,
                                 args.plotlyjs, args.loss_scale))
    for path in written:
        print(f"wrote {path}")
    return written


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
