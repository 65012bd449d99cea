"""Efficiency report: parameters, MACs, checkpoint size, latency and throughput, side by side.

    python efficiency.py --run KEY                       # KEY_teacher.pth vs KEY_student.pth
    python efficiency.py TEACHER.pth STUDENT.pth [...]   # any checkpoints; ratios vs the first

Prints a markdown table and writes JSON. MACs come from torch.utils.flop_counter (convolutions
and matmuls; MACs = FLOPs / 2) for one image of the training size.
"""
import json
import os

import torch

from utils.analysis import (count_macs, count_parameters, file_size_mb, time_latency,
                            time_throughput)
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.cli import positive_int
from skipkd.errors import UserError, exit_on_user_error
from skipkd.io.outputs import atomic_write_text
from skipkd.train.setup import resolve_device
from utils.analysis.runs import run_checkpoints
from utils.analysis.toolargs import check_distinct_outputs, check_output_path, tool_parser


def get_args_parser():
    p = tool_parser("Compare the cost of checkpoints (teacher vs student): "
                                  "parameters, MACs, size on disk, latency and throughput.")
    p.add_argument("checkpoints", nargs="*", metavar="CHECKPOINT",
                   help="checkpoints to compare (the first is the reference of the ratios)")
    p.add_argument("--run", metavar="KEY", default=None,
                   help="compare KEY_teacher.pth with KEY_student.pth (a baseline run: "
                        "KEY_baseline.pth alone) from --ckpt-dir")
    p.add_argument("--ckpt-dir", default="saved_pth_model",
                   help="folder holding the {key}_{role}.pth checkpoints (for --run)")
    p.add_argument("--latency-repeats", type=positive_int, default=50,
                   help="timed batch-1 forward passes; the median is reported")
    p.add_argument("--throughput-batch", type=positive_int, default=256,
                   help="batch size of the throughput measurement")
    p.add_argument("--throughput-iters", type=positive_int, default=5,
                   help="timed batches of the throughput measurement")
    p.add_argument("--warmup", type=positive_int, default=3, help="untimed passes before timing")
    p.add_argument("--threads", type=positive_int, default=None,
                   help="CPU threads for PyTorch (default: PyTorch's choice)")
    p.add_argument("--device", default="cpu", help="cpu (the usual report), cuda or cuda:N")
    p.add_argument("--no-timing", dest="timing", action="store_false",
                   help="skip latency and throughput (counts and sizes only)")
    p.add_argument("--json", default=None,
                   help="JSON path (default: efficiency_<key or first stem>.json next to the first "
                        "checkpoint)")
    p.add_argument("--markdown", default=None, help="also save the markdown table to this file")
    return p


def measure(path, role, device, args):
    ckpt = load_checkpoint(path)
    model = model_from_checkpoint(ckpt, path).to(device).eval()
    cfg = ckpt["model"]
    c, size = cfg.get("in_channels", 3), cfg.get("image_size") or 32
    val = ckpt["metrics"].get("val") if isinstance(ckpt.get("metrics"), dict) else None
    acc = val.get("acc") if isinstance(val, dict) else None  # shown only when it is a number
    row = {
        "label": role or ckpt.get("role") or os.path.basename(path),
        "checkpoint": os.path.abspath(path), "arch": cfg["arch"], "placement": cfg["placement"],
        "base_width": cfg["base_width"], "input": [c, size, size],
        "params": count_parameters(model),                        # sum of numel
        "macs": count_macs(model, (1, c, size, size)),            # per image
        "size_mb": round(file_size_mb(path), 3),                  # checkpoint file, MiB
        "val_acc": acc if isinstance(acc, (int, float)) and not isinstance(acc, bool) else None,
    }
    if args.timing:
        x1 = torch.randn(1, c, size, size, device=device)
        xb = torch.randn(args.throughput_batch, c, size, size, device=device)
        row["latency_ms"] = time_latency(model, x1, args.latency_repeats, args.warmup)
        row["throughput_img_s"] = time_throughput(model, xb, args.throughput_iters, args.warmup)
    return row


def _fmt(key, v):
    if v is None:
        return "-"
    if key == "params":
        return f"{v / 1e6:.3f}M" if v >= 1e6 else f"{v / 1e3:.1f}K"
    if key == "macs":
        return f"{v / 1e9:.3f}G" if v >= 1e9 else f"{v / 1e6:.2f}M"
    if key == "val_acc":
        return f"{v:.2f}%"
    if key == "latency_ms":
        return f"{v:.2f} ms"
    if key == "throughput_img_s":
        return f"{v:,.0f} img/s"
    if key == "size_mb":
        return f"{v:.2f} MB"
    return str(v)


ROWS = [("architecture", "arch"), ("attention placement", "placement"), ("base width", "base_width"),
        ("parameters", "params"), ("MACs / image", "macs"), ("checkpoint size", "size_mb"),
        ("val accuracy", "val_acc"), ("latency, batch 1", "latency_ms"),
        ("throughput", "throughput_img_s")]
# ratio first/this: > 1 means this model is smaller/faster for costs, better for throughput
RATIO_KEYS = {"params": "first/this", "macs": "first/this", "size_mb": "first/this",
              "latency_ms": "first/this", "throughput_img_s": "this/first"}


def markdown_table(rows, batch):
    ref = rows[0]
    head = ["", *[r["label"] for r in rows]]
    if len(rows) > 1:
        head += [f"{ref['label']} / {r['label']}" for r in rows[1:]]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, key in ROWS:
        if all(r.get(key) is None for r in rows):
            continue
        if key == "throughput_img_s":
            name = f"throughput, batch {batch}"
        cells = [name, *[_fmt(key, r.get(key)) for r in rows]]
        for r in rows[1:]:
            a, b = ref.get(key), r.get(key)
            if key in RATIO_KEYS and a and b:
                ratio = a / b if RATIO_KEYS[key] == "first/this" else b / a
                cells.append(f"{ratio:.2f}x")
            else:
                cells.append("")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(args):
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    if args.run and args.checkpoints:
        raise UserError("give checkpoints or --run KEY, not both")
    if args.run:
        found = run_checkpoints(args.ckpt_dir, args.run)
        entries = [(found[r], r) for r in ("teacher", "student", "baseline") if r in found]
        name = args.run
    elif args.checkpoints:
        entries = [(p, None) for p in args.checkpoints]
        name = os.path.splitext(os.path.basename(args.checkpoints[0]))[0]
    else:
        raise UserError("nothing to measure: pass checkpoints or --run KEY (see --help)")
    inputs = [p for p, _ in entries]
    json_path = args.json or os.path.join(os.path.dirname(os.path.abspath(entries[0][0])),
                                          f"efficiency_{name}.json")
    check_output_path(json_path, inputs, "--json", create=True)
    if args.markdown:
        check_output_path(args.markdown, inputs, "--markdown", create=True)
        check_distinct_outputs([("--json", json_path), ("--markdown", args.markdown)])
    rows = [measure(p, role, device, args) for p, role in entries]
    labels = [r["label"] for r in rows]
    if len(set(labels)) < len(labels):  # e.g. two students: label by file instead
        for r in rows:
            r["label"] = os.path.splitext(os.path.basename(r["checkpoint"]))[0]
    table = markdown_table(rows, args.throughput_batch)
    print(table)
    report = {"models": rows, "device": str(device), "threads": torch.get_num_threads(),
              "throughput_batch": args.throughput_batch, "latency_repeats": args.latency_repeats,
              "torch": torch.__version__}
    if len(rows) > 1:
        report["compression_ratio"] = rows[0]["params"] / rows[1]["params"]
        report["mac_ratio"] = rows[0]["macs"] / rows[1]["macs"]
        print(f"\ncompression: {rows[0]['label']} has {report['compression_ratio']:.2f}x the "
              f"parameters and {report['mac_ratio']:.2f}x the MACs of {rows[1]['label']}")
    atomic_write_text(json_path, json.dumps(report, indent=2) + "\n")
    if args.markdown:
        atomic_write_text(args.markdown, table + "\n")
    print(f"wrote {json_path}")
    return report


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
