"""The report's figures, each drawn twice: with plotly (figures.html, interactive) and with
matplotlib (a PNG). A grid: test accuracy per configuration, the paired deltas against the
baseline, accuracy against cost. A search: the objective per trial, and against each parameter.

Imports plotly and matplotlib at once (build.py imports it: `sweep.py report` is the only user).
"""
import plotly.graph_objects as go
from matplotlib.figure import Figure
from plotly.subplots import make_subplots

__all__ = ["figures"]


def figures(rep):
    """[(name, plotly figure, matplotlib figure)]."""
    if rep["kind"] == "grid":
        cs = rep["configs"]
        figs = [("accuracy", *_accuracy(cs))]
        # a configuration whose seeds share none with the baseline's (a partial study) has no Δ
        with_delta = [c for c in cs if c.get("baseline")
                      and c["delta_test_acc_best"][1] is not None]
        if with_delta:
            figs.append(("deltas", *_deltas(with_delta)))
        figs.append(("cost", *_cost(cs)))
        return figs
    rows = sorted(rep["rows"], key=lambda r: r["number"])
    return [("history", *_history(rows)),
            ("params", *_params(rows, rep["spec"]["search"]["params"]))]


def _canvas(width, height=4.5):
    """A matplotlib figure (not pyplot's: no global state) with one axes."""
    mfig = Figure(figsize=(width, height), layout="constrained")
    return mfig, mfig.subplots()


def _accuracy(cs):
    names = [c["config"] for c in cs]
    pfig = go.Figure()
    mfig, ax = _canvas(max(6, 1.1 * len(cs) + 2))
    width = 0.38
    for i, (f, label) in enumerate((("test_acc_best", "test best (best-val checkpoint)"),
                                    ("test_acc_last", "test last (last epoch)"))):
        means = [c[f][1] for c in cs]
        stds = [c[f][2] or 0 for c in cs]
        pfig.add_trace(go.Bar(name=label, x=names, y=means,
                              error_y=dict(type="data", array=stds)))
        ax.bar([j + (i - 0.5) * width for j in range(len(cs))], means, width, yerr=stds,
               capsize=3, label=label)
    pfig.update_layout(barmode="group", title="Test accuracy (mean ± std over seeds)",
                       yaxis_title="accuracy %", template="plotly_white")
    ax.set_xticks(range(len(cs)), names, rotation=20, ha="right")
    ax.set_ylabel("test accuracy %")
    ax.set_title("Test accuracy (mean ± std over seeds)")
    ax.legend()
    return pfig, mfig


def _deltas(with_delta):
    names = [c["config"] for c in with_delta]
    means = [c["delta_test_acc_best"][1] for c in with_delta]
    lo = [(m - c["delta_test_acc_best"][3]) if c["delta_test_acc_best"][3] is not None
          else 0 for m, c in zip(means, with_delta)]
    pfig = go.Figure(go.Bar(x=names, y=means, error_y=dict(type="data", array=lo)))
    pfig.update_layout(title="Δ test accuracy (best-val checkpoint) vs baseline, "
                             "paired by seed, 95% CI", yaxis_title="points",
                       template="plotly_white")
    mfig, ax = _canvas(max(6, 1.1 * len(names) + 2))
    ax.bar(range(len(names)), means, yerr=lo, capsize=4, color="tab:green")
    ax.axhline(0, color="black", lw=0.8)
    ax.set_xticks(range(len(names)), names, rotation=20, ha="right")
    ax.set_ylabel("Δ test accuracy (points)")
    ax.set_title("Δ vs baseline, paired by seed (95% CI)")
    return pfig, mfig


def _cost(cs):
    pfig = go.Figure()
    mfig, ax = _canvas(6.5)
    for c in cs:
        x, y = c["wall_time_s"][1], c["test_acc_best"][1]
        pfig.add_trace(go.Scatter(x=[x], y=[y], mode="markers+text", text=[c["config"]],
                                  textposition="top center", name=c["config"],
                                  error_y=dict(type="data",
                                               array=[c["test_acc_best"][2] or 0])))
        ax.errorbar([x], [y], yerr=[c["test_acc_best"][2] or 0], fmt="o", capsize=3)
        ax.annotate(c["config"], (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    pfig.update_layout(title="Accuracy against cost", xaxis_title="wall time per run (s)",
                       yaxis_title="test accuracy % (best-val checkpoint)",
                       template="plotly_white", showlegend=False)
    ax.set_xlabel("wall time per run (s)")
    ax.set_ylabel("test accuracy % (best-val checkpoint)")
    ax.set_title("Accuracy against cost")
    return pfig, mfig


def _history(rows):
    xs = [r["number"] for r in rows]
    ys = [r["value"] for r in rows]
    best = [max(ys[:i + 1]) for i in range(len(ys))]
    pfig = go.Figure([go.Scatter(x=xs, y=ys, mode="markers", name="trial"),
                      go.Scatter(x=xs, y=best, mode="lines", name="best so far")])
    pfig.update_layout(title="Search history", xaxis_title="trial",
                       yaxis_title="held-out validation accuracy %", template="plotly_white")
    mfig, ax = _canvas(6.5)
    ax.plot(xs, ys, "o", label="trial")
    ax.step(xs, best, where="post", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel("held-out validation accuracy %")
    ax.legend()
    return pfig, mfig


def _params(rows, rules):
    """The objective against each searched parameter (rules: the search's params)."""
    params = list(rules)
    ys = [r["value"] for r in rows]
    pfig = make_subplots(rows=1, cols=len(params), subplot_titles=params)
    mfig = Figure(figsize=(3.2 * len(params) + 1, 3.6), layout="constrained")
    axes = mfig.subplots(1, len(params), squeeze=False)[0]
    for i, p in enumerate(params):
        px = [r["params_optuna"].get(p) for r in rows]
        pfig.add_trace(go.Scatter(x=px, y=ys, mode="markers", name=p), row=1, col=i + 1)
        axes[i].plot([str(v) if isinstance(v, str) else v for v in px], ys, "o")
        axes[i].set_xlabel(p)
        if rules[p].get("log"):
            axes[i].set_xscale("log")
            pfig.update_xaxes(type="log", row=1, col=i + 1)
    axes[0].set_ylabel("validation accuracy %")
    pfig.update_layout(title="Objective against each parameter", showlegend=False,
                       template="plotly_white")
    return pfig, mfig
