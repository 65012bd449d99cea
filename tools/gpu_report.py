"""The GPU check's results read back (each part's JSON or summary, validated where it is a run's)
and written as OUT/summary.md."""
import json
import os
import re

TEST_LINE = re.compile(r"^(tests/\S+::\S+)\s+(PASSED|FAILED|SKIPPED|ERROR|XFAIL|XPASS)")


def parse_tests(log_text):
    found = {}
    for line in log_text.splitlines():
        m = TEST_LINE.match(line.strip())
        if m:
            found[m.group(1).split("::", 1)[1]] = m.group(2)
    return found


def read_json(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


# (run key and part name, architecture, precision) of the depth check
DEPTH_RUNS = (("depth_resnet18", "resnet18", "auto"), ("depth_resnet34", "resnet34", "auto"),
              ("depth_resnet34_fp32", "resnet34", "fp32"))


def depth_result(work):
    """{part: figures} of the depth check's runs that left a usable summary."""
    from skipkd.errors import UserError
    from skipkd.io.summary import read_summary
    out = {}
    for tag, _, _ in DEPTH_RUNS:
        try:
            s = read_summary(os.path.join(work, "depth", "numpy_outputs", f"summary_{tag}.json"),
                             tag)
        except UserError:
            continue
        r = s.get("baseline") or {}
        out[tag] = {"arch": r.get("arch"), "precision": (s.get("args") or {}).get("precision"),
                    **{k: r.get(k) for k in ("base_width", "epochs", "best_val_acc",
                                             "test_acc_best", "test_acc_last",
                                             "train_images_per_s")}}
    return out


def fmnist_result(work):
    """The Fashion-MNIST run's figures from its summary (validated; None when unusable)."""
    from skipkd.errors import UserError
    from skipkd.io.summary import read_summary
    try:
        s = read_summary(os.path.join(work, "fmnist", "numpy_outputs", "summary_gpu_check.json"),
                         "gpu_check")
    except UserError:
        return None
    dataset = s.get("dataset") or {}
    out = {"protocol": dataset.get("protocol"), "train_size": dataset.get("train_size"),
           "wall_time_s": s.get("wall_time_s")}
    for role in ("teacher", "student"):
        r = s.get(role) or {}
        out[role] = {k: r.get(k) for k in ("arch", "base_width", "epochs", "params", "best_epoch",
                                           "best_val_acc", "test_acc_best", "test_acc_last",
                                           "train_images_per_s", "wall_time_s")}
    return out


def markdown(summary):
    env = summary["environment"]
    lines = [f"# GPU check{' (CPU dry run)' if env['dry_run'] else ''}", "",
             f"- machine: {env.get('gpu') or env.get('processor') or 'CPU'}"
             + (f", {env.get('gpu_memory_gib')} GiB, capability {env.get('capability')}, "
                f"{env.get('sm_count')} SMs" if env.get("gpu") else "")
             + f"; {env['cpu_count']} CPU cores; torch {env['torch']}"
             + (f", CUDA {env.get('cuda')}, cuDNN {env.get('cudnn')}" if env.get("gpu") else ""),
             f"- driver: {env['nvidia_smi']}" if env.get("nvidia_smi") else "",
             f"- total {summary['wall_s']:.0f} s of a {summary['budget_s']:.0f} s budget", "",
             "| part | status | seconds | limit |", "|---|---|---:|---:|"]
    for name, p in summary["parts"].items():
        lines.append(f"| {name} | {p['status']} | {p.get('wall_s', 0):.0f} | {p.get('limit_s', 0):.0f} |")
    tests = summary.get("tests") or {}
    if tests:
        lines += ["", "## CUDA tests", "", "| test | result |", "|---|---|"]
        lines += [f"| `{k}` | {v} |" for k, v in tests.items()]
    for name, bench in summary.get("benchmarks", {}).items():
        cfg = bench["config"]
        lines += ["", f"## {name}: {cfg['teacher']} -> {cfg['student']}, width {cfg['width']}, "
                      f"batch {cfg['batch_size']}, placement {cfg.get('placement', cfg.get('eca'))}, kd {cfg['kd']}, compile "
                      f"{cfg['compile']} ({bench.get('device_name')})", "",
                  "| bench | path | precision | images/s (median) | repeats | x ref | peak MiB |",
                  "|---|---|---|---:|---:|---:|---:|"]
        for r in bench["rows"]:
            ratio = f"{r['ratio']:.2f}" if r.get("ratio") is not None else "-"
            runs = r.get("runs") or []
            spread = f"{min(runs):,.0f}-{max(runs):,.0f} ({len(runs)})" if runs else "-"
            lines.append(f"| {r['bench']} | {r['path']} | {r['precision']} | "
                         f"{r['images_per_s']:,.0f} | {spread} | {ratio} | "
                         f"{r['peak_mem_mib']:,.0f} |")
    fm = summary.get("fmnist")
    if fm:
        lines += ["", f"## Fashion-MNIST ({fm['train_size']} train images, {fm['protocol']})", "",
                  "| role | arch | width | epochs | test acc (best-val ckpt) | test acc (last) | "
                  "train images/s |", "|---|---|---:|---:|---:|---:|---:|"]
        for role in ("teacher", "student"):
            r = fm[role]
            lines.append(f"| {role} | {r['arch']} | {r['base_width']} | {r['epochs']} | "
                         f"{_pct(r['test_acc_best'])} | {_pct(r['test_acc_last'])} | "
                         f"{r['train_images_per_s'] or 0:,.0f} |")
    depth = summary.get("depth")
    if depth:
        lines += ["", "## Depth: each net alone, the fmnist part's recipe", "",
                  "| run | arch | precision | width | epochs | test acc (best-val ckpt) | "
                  "test acc (last) |", "|---|---|---|---:|---:|---:|---:|"]
        for tag, r in depth.items():
            lines.append(f"| {tag} | {r['arch']} | {r['precision']} | {r['base_width']} | "
                         f"{r['epochs']} | {_pct(r['test_acc_best'])} | "
                         f"{_pct(r['test_acc_last'])} |")
    if summary.get("sweep_small"):
        lines += _sweep_lines(summary["sweep_small"])
    return "\n".join(line for line in lines if line is not None) + "\n"


def _pct(v):
    return f"{v:.2f}%" if isinstance(v, (int, float)) else "-"




def sweep_result(work):
    """The small pair's trials/hour at each --per-gpu level (tools/gpu_sweep.py), or None."""
    data = read_json(os.path.join(work, "sweep_small.json"))
    return data if isinstance(data, dict) and isinstance(data.get("levels"), list) else None


def _sweep_lines(sw):
    lines = ["", f"## Many trials per GPU: {sw.get('pair')}", "",
             "| per GPU | trials | done | wall s | trials/hour | train images/s | x per-gpu 1 |",
             "|---:|---:|---:|---:|---:|---:|---:|"]
    for lv in sw["levels"]:
        x = lv.get("x_per_gpu_1")
        lines.append(f"| {lv['per_gpu']} | {lv['trials']} | {lv['done']} | {lv['wall_s']:.0f} | "
                     f"{lv['trials_per_hour']:,.0f} | {lv['images_per_s']:,.0f} | "
                     f"{'-' if x is None else f'{x:.2f}'} |")
    return lines
