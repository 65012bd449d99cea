"""The short table printed at the end of a run."""

__all__ = ["results_table"]


def _fmt_params(n):
    return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}K"


def results_table(rows):
    """rows: list of (label, result dict from train_stage or a loaded checkpoint)."""
    head = ("model", "arch", "placement", "width", "params", "best val acc", "final val acc")
    lines = [head]
    for label, r in rows:
        lines.append((label, r["arch"], r["placement"], str(r["base_width"]), _fmt_params(r["params"]),
                      f"{r['best_val_acc']:.2f}%", f"{r['final_val_acc']:.2f}%"
                      if r.get("final_val_acc") is not None else "-"))
    widths = [max(len(row[i]) for row in lines) for i in range(len(head))]
    out = ["  ".join(c.ljust(w) for c, w in zip(row, widths)) for row in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)
