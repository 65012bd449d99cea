"""The report's text: report.md (protocol, results table, teachers, failed trials, commands,
figures) and the CSV tables (one row per configuration, one per trial).
"""
import csv
import io
import os
import shlex

from utils.sweep.spec.keys import to_argv

__all__ = ["markdown", "configs_csv", "trials_csv"]


def _num(v, fmt="{:.2f}"):
    return "" if v is None else fmt.format(v)


def _secs(v):
    return "" if v is None else f"{v:.1f} s" if v < 10 else f"{v:.0f} s"


def _pm(n, m, s):
    if m is None:
        return "–"
    return f"{m:.2f} ± {s:.2f}" if s is not None else f"{m:.2f}"


def _delta_text(d):
    n, m, _, lo, hi = d
    if m is None:
        return ""
    return f"{m:+.2f} [{lo:+.2f}, {hi:+.2f}]" if lo is not None else f"{m:+.2f} (1 seed)"


def _command(row, sweep_dir) -> str:
    """The run's command, from the repository root."""
    argv = list(row["argv"])
    if "--teacher-checkpoint" in argv:
        i = argv.index("--teacher-checkpoint")
        if argv[i + 1].startswith("saved_pth_model/"):
            argv[i + 1] = os.path.join(sweep_dir, argv[i + 1])
    argv += ["--run-name", row["key"], "--output-dir", sweep_dir]
    return " ".join(shlex.quote(a) for a in ["python", row["script"] or "?"] + argv)


def _environments(rows):
    envs = set()
    for r in rows:
        e = r.get("environment") or {}
        n = e.get("threads", "?")
        envs.add(f"{e.get('device', '?')}, {n} thread{'' if n == 1 else 's'}, torch "
                 f"{e.get('torch', '?')}")
    return sorted(envs)


def markdown(rep, command_line) -> str:
    """report.md: the study, its protocol, the results, shared teachers, failed trials, the
    runs' commands and the figures."""
    lines = (_md_head(rep, command_line) + _md_protocol(rep) + rep.get("extra_md", [])
             + _md_results(rep)
             + _md_teachers(rep) + _md_failed(rep) + _md_commands(rep) + _md_figures(rep))
    return "\n".join(lines)


def _md_head(rep, command_line) -> list:
    spec, name = rep["spec"], rep["name"]
    c = rep["counts"]
    lines = [f"# Sweep `{name}`", ""]
    if spec.get("description"):
        lines += [spec["description"], ""]
    lines += [f"Study `{name}` in `{rep['storage']}`, made {rep['made']} by `{command_line}`.",
              f"Trials: {c['done'] - c['pruned']} run keys complete, {c['running']} running, "
              f"{c['waiting']} "
              f"waiting, {c['failed']} failed"
              + (f"; {c['retried']} attempt(s) killed or interrupted and taken up again"
                 if c["retried"] else "")
              + (f"; {c['pruned']} pruned" if c["pruned"] else "")
              + (f"; {len(c['skipped'])} left out (unusable recorded result)"
                 if c.get("skipped") else "") + ".", ""]
    return lines


def _md_protocol(rep) -> list:
    spec = rep["spec"]
    lines = ["## Protocol", "",
             f"- Script: `{spec['script']}`; flags of every run: "
             f"`{' '.join(to_argv(spec['fixed'])) or '(none)'}`."]
    if spec["grid"]:
        for axis, rule in spec["grid"].items():
            vals = (list(rule["variants"]) if "variants" in rule else rule["values"])
            desc = ", ".join(
                f"`{v}`" + (f" ({' '.join(to_argv(rule['variants'][v]))})" if "variants" in rule
                            else "") for v in vals)
            lines.append(f"- Axis `{axis}`: {desc}.")
    if spec["teacher"] is not None:
        lines.append("- Students distil from a shared teacher run (`model_training.py`, one per "
                     f"seed and teacher; flags "
                     f"{' '.join(to_argv(spec['teacher'])) or '(inherited)'}), "
                     f"loaded with `--teacher-checkpoint`.")
    protocols = sorted({str(r["protocol"]) for r in rep["rows"]})
    lines += [f"- Validation protocol: {'; '.join(protocols)}. *Test best* is the test accuracy "
              f"of the checkpoint with the best validation score, *test last* that of the last "
              f"epoch; mean ± sample standard deviation over seeds.",
              f"- Machines: {'; '.join(_environments(rep['rows']))}."]
    if rep["kind"] == "search":
        lines.append(_md_search(spec["search"]))
    if rep["kind"] == "grid":
        base = spec.get("baseline")
        if base:
            shown = ", ".join(f"{a}={lab}" for a, lab in base.items())
            lines.append(f"- Δ: the difference to `{shown}` "
                         f"(the other axes equal) of the same seed, paired over seeds; 95% "
                         f"confidence interval = mean ± t(0.975, n−1)·sd/√n.")
        learned = any(c.get("kd_learned_params") is not None for c in rep["configs"])
        lines.append("- Cost: *wall time / run* is the run's training time from its summary (a "
                     "shared teacher's is listed with the teachers), *images/s* its training "
                     "throughput (none for a resumed run)"
                     + ("; *learned by the KD terms*: the parameters the distillation terms "
                        "train besides the student (connectors, regressors, embeddings), never "
                        "exported with it." if learned else "."))
    return lines


def _md_search(s) -> str:
    """The protocol's line on a search: its ranges, budget, sampler and pruner."""
    ranges = "; ".join(
        f"`{f}` in {r['choices']}" if "choices" in r else
        f"`{f}` {r['type']} in [{r['low']}, {r['high']}]" + (" (log)" if r["log"] else "")
        + (f" step {r['step']}" if r["step"] else "") for f, r in s["params"].items())
    return (f"- Search: {ranges}; {s['n_trials']} trials, {s['sampler']} sampler, "
            f"{'median pruner' if s['pruner'] == 'median' else 'no pruning'}; the "
            f"objective is the best held-out validation accuracy.")


def _md_results(rep) -> list:
    if rep["kind"] == "grid":
        return ["", "## Results", ""] + _grid_table(rep)
    lines = ["", "## Trials (best held-out validation accuracy first)", ""] + _search_table(rep)
    pruned_at = rep["counts"]["pruned_at"]
    if pruned_at:
        lines += ["", "Pruned (stopped early on their validation accuracy): " + ", ".join(
            f"trial {n} (epoch {e})" for n, e in pruned_at) + "."]
    return lines


def _md_teachers(rep) -> list:
    if not rep["teachers"]:
        return []
    lines = ["", "## Shared teachers", "",
             "| teacher run | seed | test best % | test last % | params | wall time |",
             "|---|---|---|---|---|---|"]
    for r in rep["teachers"]:
        lines.append(f"| `{r['key']}` | {r['seed']} | {_num(r['test_acc_best'])} | "
                     f"{_num(r['test_acc_last'])} | {_num(r['params'], '{:,}')} | "
                     f"{_secs(r['wall_time_s'])} |")
    return lines


def _md_failed(rep) -> list:
    if not rep["failed"]:
        return []
    lines = ["", "## Failed trials", "", "| trial | run key | error |", "|---|---|---|"]
    for t in rep["failed"]:
        err = str(t.user_attrs.get("error", "")).replace("|", "\\|")
        lines.append(f"| {t.number} | `{t.user_attrs.get('key')}` | {err} |")
    return lines


def _md_commands(rep) -> list:
    lines = ["", "## Commands", "",
             ("Each run, from the repository root (first seed of each configuration; the "
              "others differ in `--seed` and `--run-name`):" if rep["kind"] == "grid" else
              "The best trial's run, from the repository root:"), "", "```bash"]
    if rep["teachers"]:
        lines.append(_command(rep["teachers"][0], rep["sweep_dir"]))
    if rep["kind"] == "grid":
        lines += [_command(cfg["rows"][0], rep["sweep_dir"]) for cfg in rep["configs"]]
    else:
        best = max(rep["rows"], key=lambda r: r["value"] if r["value"] is not None else -1)
        lines.append(_command(best, rep["sweep_dir"]))
    return lines + ["```"]


def _md_figures(rep) -> list:
    lines = ["", "## Figures", ""]
    for fig in rep.get("figure_names", []):
        lines.append(f"![{fig}]({fig}.png)")
    lines += ["", "Interactive: [figures.html](figures.html). Every trial: "
              "[trials.csv](trials.csv)" + (", every configuration: [configs.csv](configs.csv)"
                                            if rep["kind"] == "grid" else "") + ".", ""]
    return lines


def _grid_table(rep):
    has_delta = any(c.get("baseline") for c in rep["configs"])
    head = "| configuration | seeds | test best % | test last % |"
    sep = "|---|---|---|---|"
    if has_delta:
        head += " Δ test best [95% CI] | Δ test last [95% CI] |"
        sep += "---|---|"
    learned = any(c.get("kd_learned_params") is not None for c in rep["configs"])
    head += " params |" + (" learned by the KD terms |" if learned else "")
    sep += "---|" + ("---|" if learned else "")
    head += " wall time / run | images/s |"
    sep += "---|---|"
    lines = [head, sep]
    for c in rep["configs"]:
        line = (f"| {c['config']} | {len(c['seeds'])} | {_pm(*c['test_acc_best'])} | "
                f"{_pm(*c['test_acc_last'])} |")
        if has_delta:
            if c.get("baseline"):
                line += (f" {_delta_text(c['delta_test_acc_best'])} | "
                         f"{_delta_text(c['delta_test_acc_last'])} |")
            else:
                line += " (baseline) | |" if _is_baseline(c, rep) else " | |"
        line += f" {_num(c['params'], '{:,}')} |"
        if learned:
            line += f" {_num(c.get('kd_learned_params'), '{:,}')} |"
        line += (f" {_secs(c['wall_time_s'][1])} | "
                 f"{_num(c['train_images_per_s'][1], '{:,.0f}')} |")
        lines.append(line)
    return lines


def _is_baseline(c, rep):
    base = rep["spec"].get("baseline") or {}
    return bool(base) and all(c["axes"].get(a) == l for a, l in base.items())


def _search_table(rep):
    params = list(rep["spec"]["search"]["params"])
    lines = ["| trial | " + " | ".join(f"`{p}`" for p in params) +
             " | val best % | test best % | test last % | epochs |",
             "|---|" + "---|" * len(params) + "---|---|---|---|"]
    rows = sorted(rep["rows"], key=lambda r: -(r["value"] if r["value"] is not None else -1))
    for r in rows:
        vals = [_num(r["params_optuna"].get(p), "{:.4g}") if isinstance(
            r["params_optuna"].get(p), float) else str(r["params_optuna"].get(p, ""))
            for p in params]
        lines.append(f"| {r['number']} | " + " | ".join(vals) +
                     f" | {_num(r['value'])} | {_num(r['test_acc_best'])} | "
                     f"{_num(r['test_acc_last'])} | {r['epochs']} |")
    return lines


def _csv(header, rows) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(header)
    for row in rows:
        w.writerow(["" if v is None else (repr(v) if isinstance(v, float) else v) for v in row])
    return buf.getvalue()


def configs_csv(rep) -> str:
    axes = list((rep["spec"]["grid"] or {}).keys())
    axes = [a for a in axes if a != "seed"]
    header = (["config"] + axes +
              ["n", "seeds", "test_acc_best_mean", "test_acc_best_std", "test_acc_last_mean",
               "test_acc_last_std", "best_epoch_mean", "epochs", "baseline",
               "delta_best_n", "delta_best_mean", "delta_best_ci_low", "delta_best_ci_high",
               "delta_last_n", "delta_last_mean", "delta_last_ci_low", "delta_last_ci_high",
               "params", "teacher_params", "kd_learned_params", "wall_time_s_mean",
               "wall_time_s_total", "train_images_per_s_mean", "protocol", "run_keys"])
    rows = []
    for c in rep["configs"]:
        db = c.get("delta_test_acc_best") or (None,) * 5
        dl = c.get("delta_test_acc_last") or (None,) * 5
        rows.append([c["config"]] + [c["axes"].get(a, "") for a in axes] +
                    [c["test_acc_best"][0], " ".join(map(str, c["seeds"])),
                     c["test_acc_best"][1], c["test_acc_best"][2],
                     c["test_acc_last"][1], c["test_acc_last"][2], c["best_epoch"][1],
                     c["epochs"], c.get("baseline") or "",
                     db[0], db[1], db[3], db[4], dl[0], dl[1], dl[3], dl[4],
                     c["params"], c["teacher_params"], c.get("kd_learned_params"),
                     c["wall_time_s"][1],
                     c["wall_time_total"], c["train_images_per_s"][1],
                     "; ".join(c["protocols"]), " ".join(c["keys"])])
    return _csv(header, rows)


def trials_csv(rep) -> str:
    params = list((rep["spec"]["search"] or {}).get("params", {})) or \
        [a for a in (rep["spec"]["grid"] or {})]
    header = (["trial", "study", "run_key", "config", "seed"] + params +
              ["objective_best_val_acc", "test_acc_best", "test_acc_last", "best_epoch",
               "epochs", "params", "wall_time_s", "train_images_per_s", "trial_duration_s",
               "attempt", "protocol", "val_acc_per_epoch"])
    rows = []
    for study, rs in (("teachers", rep["teachers"]), ("main", rep["rows"])):
        for r in rs:
            rows.append([r["number"], study, r["key"], r["config"], r["seed"]] +
                        [r["params_optuna"].get(p) for p in params] +
                        [r["value"], r["test_acc_best"], r["test_acc_last"], r["best_epoch"],
                         r["epochs"], r["params"], r["wall_time_s"], r["train_images_per_s"],
                         r["duration_s"], r["attempt"], r["protocol"],
                         " ".join(f"{v:.4f}" for v in (r.get("val_acc") or []))])
    return _csv(header, rows)
