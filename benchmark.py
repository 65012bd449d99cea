"""Throughput benchmark: images/s of teacher training, the student distillation step (teacher
forward included) and evaluation, for our path and a straightforward reference path, timed in
the same process on the same data.

Reference path = how such code is usually written: torchvision PIL transforms through a
DataLoader with worker processes, the teacher run with autograd on, `.item()` every batch. On
CUDA both paths run with cuDNN's autotuner on (as RepDistiller and most CIFAR scripts set it).

    python benchmark.py --teacher resnet34 --student resnet18 --width 16 --batch-size 128
    python benchmark.py --teacher resnet34_imagenet --student resnet18_imagenet --width 64 \
        --image-size 224 --batch-size 64 --benches distill,data

The `data` bench times the streamed ImageNet pipeline alone (skipkd/data/stream.py: decode,
random-resized crop, flip, on --data-workers loader processes) on JPEG files it writes first
(--data-files of 500 x 375 pixels, ImageNet's typical size), so a user sees whether decoding or
the network sets the pace of a 224-pixel run.
"""
import argparse
import json
import os
import platform
import statistics
import sys
import time

import numpy as np
import torch

from skipkd.models import ECA_PLACEMENTS, MODELS, create_model, default_width, feature_shapes
from skipkd.cli import OneLineParser, add_bool, int_in, kd_spec, model_name, positive_int
from skipkd.data import Augment, TensorLoader, channel_stats, make_synthetic
from skipkd.train.engine import PRECISIONS, autocast_context
from skipkd.errors import exit_on_user_error
from skipkd.kd import KD_TERMS, DistillationLoss, TermContext, parse_kd
from skipkd.io.outputs import atomic_write_text
from skipkd.train.setup import resolve_device
from utils.analysis.toolargs import check_output_path


def precision_list(text) -> list:
    """--precisions: distinct names of PRECISIONS, comma-separated."""
    names = [p.strip() for p in str(text).split(",") if p.strip()]
    unknown = [p for p in names if p not in PRECISIONS]
    if not names or unknown or len(set(names)) != len(names):
        raise argparse.ArgumentTypeError(
            f"expected distinct precisions among {', '.join(PRECISIONS)}, got {text!r}")
    return names


def get_args_parser():
    p = OneLineParser(description=__doc__.split("\n\n")[0],
                      formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--teacher", type=model_name, default="resnet34", help="teacher architecture")
    p.add_argument("--student", type=model_name, default="resnet18", help="student architecture")
    p.add_argument("--width", type=positive_int, default=None,
                   help="base width of both nets (default: 16 for resnet18..152, each benchmark "
                        "model's reference width otherwise)")
    p.add_argument("--placement", "--eca", dest="placement", choices=ECA_PLACEMENTS,
                   default="parallel", help="attention placement")
    p.add_argument("--kd", type=kd_spec, default="skip",
                   help="distillation terms joined by '+' (see model_training_mid.py --help)")
    p.add_argument("--image-size", type=int_in(8, 1024), default=32,
                   help="image size of the model benches' synthetic data, and the crop of the "
                        "data bench")
    p.add_argument("--batch-size", type=positive_int, default=128, help="training batch size")
    p.add_argument("--eval-batch-size", type=positive_int, default=512, help="evaluation batch size")
    p.add_argument("--steps", type=positive_int, default=10, help="timed steps per repeat")
    p.add_argument("--warmup", type=positive_int, default=2, help="untimed steps before timing")
    p.add_argument("--repeats", type=positive_int, default=3, help="repeats; medians are reported")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--precisions", type=precision_list, default="fp32,bf16",
                   help=f"comma-separated precisions to time on our path ({', '.join(PRECISIONS)})")
    add_bool(p, "--channels-last", False, "channels_last memory format on our path")
    add_bool(p, "--compile", False, "torch.compile on our path: the teacher's inference, and the "
                                    "trained model on CUDA / the evaluated model")
    p.add_argument("--compile-mode", choices=["default", "reduce-overhead", "max-autotune"],
                   default="default", help="torch.compile's mode with --compile (reduce-overhead: "
                                           "CUDA graphs)")
    add_bool(p, "--reference", True, "also time the reference path")
    p.add_argument("--workers", type=int_in(0, 256), default=2, help="DataLoader workers of the reference path")
    p.add_argument("--benches", default="teacher,distill,eval",
                   help="comma-separated: teacher (teacher training), distill (student step), eval, "
                        "terms (the student step with each distillation term of --terms alone, "
                        "against the plain student step), data (the streamed ImageNet pipeline "
                        "alone, per --data-workers)")
    p.add_argument("--data-workers", default="0,1,2",
                   help="the data bench's loader process counts, comma-separated")
    p.add_argument("--data-files", type=positive_int, default=256,
                   help="JPEG files the data bench writes and reads")
    p.add_argument("--terms", default="all",
                   help="the terms bench's terms: 'all' registered ones, or names joined by '+'")
    p.add_argument("--json", default=None, help="also write the results to this JSON file")
    return p


# ------------------------------------------------------------------ timing helpers
def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time_steps(step_fn, batches, device, warmup, steps):
    """Runs warmup + steps calls of step_fn over `batches` (cycled); returns seconds of `steps`."""
    it = iter(batches)

    def nxt():
        nonlocal it
        try:
            return next(it)
        except StopIteration:
            it = iter(batches)
            return next(it)

    for _ in range(warmup):
        step_fn(*nxt())
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(steps):
        step_fn(*nxt())
    _sync(device)
    return time.perf_counter() - t0


def _peak_reset(device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def _peak(device):
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    try:
        import resource
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    except ImportError:
        return float("nan")


# ------------------------------------------------------------------ our path
def width_of(args, arch: str) -> int:
    """--width, else 16 for our 4-stage ResNets (a CPU-sized width) and the reference width of
    the KD benchmark's models."""
    if args.width is not None:
        return args.width
    return 16 if MODELS[arch].family == "resnet" else default_width(arch)


class _WithIndex:
    """Iterating gives one epoch of (x, y, training-set indices), for terms with memory banks."""

    def __init__(self, loader):
        self.loader, self.epoch = loader, 0

    def __iter__(self):
        self.epoch += 1
        return self.loader.iterate(self.epoch - 1, with_index=True)


def ours(bench, args, data, device, precision, kd=None):
    """Our path's images/s for `bench`; kd: the distillation terms of the student step
    (default --kd)."""
    torch.manual_seed(0)
    kd = args.kd if kd is None else kd
    mean, std = channel_stats(data.images)
    cl = args.channels_last
    train_loader = TensorLoader(data, args.batch_size, device, mean, std, shuffle=True,
                                augment=Augment(4, True, False), drop_last=True, channels_last=cl)
    eval_loader = TensorLoader(data, args.eval_batch_size, device, mean, std, drop_last=True,
                               channels_last=cl)
    fmt = torch.channels_last if cl else torch.contiguous_format
    teacher = create_model(args.teacher, base_width=width_of(args, args.teacher),
                           placement=args.placement).to(device, memory_format=fmt)
    student = create_model(args.student, base_width=width_of(args, args.student),
                           placement=args.placement).to(device, memory_format=fmt)
    model = {"teacher": teacher, "distill": student, "eval": student}[bench]
    if bench == "distill":
        ctx = TermContext(student_shapes=feature_shapes(student), teacher_shapes=feature_shapes(teacher),
                          num_classes=int(data.labels.max()) + 1, num_samples=len(data.labels),
                          train_labels=train_loader.labels)
        loss_fn = DistillationLoss(kd, teacher, compile_teacher=args.compile and args.compile_mode,
                                   context=ctx).to(device)
        student.request_features(loss_fn.features)
        if loss_fn.needs_index:
            train_loader = _WithIndex(train_loader)
    else:
        loss_fn = DistillationLoss("none")
    # as in training: the CPU training step measured slower compiled, so only CUDA compiles it
    fwd = (torch.compile(model, mode=args.compile_mode)
           if args.compile and (device.type == "cuda" or bench == "eval") else model)
    opt = torch.optim.SGD(list(model.parameters()) + list(loss_fn.parameters()), lr=0.01,
                          momentum=0.9, nesterov=True, weight_decay=5e-4, fused=True)
    correct = torch.zeros((), dtype=torch.long, device=device)
    loss_sum = torch.zeros((), device=device)
    ctx = lambda: autocast_context(device, precision)  # noqa: E731

    if bench == "eval":
        model.eval()

        @torch.inference_mode()
        def step(x, y):
            with ctx():
                logits = fwd(x).logits
            correct.add_((logits.argmax(1) == y).sum())
        loader, bs = eval_loader, args.eval_batch_size
    else:
        model.train()
        loss_fn.train()

        def step(x, y, index=None):
            torch.compiler.cudagraph_mark_step_begin()  # --compile-mode reduce-overhead: a new step
            with ctx():
                out = fwd(x)
                loss, _ = loss_fn(x, out, y, index=index)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loss_sum.add_(loss.detach())          # stays on the device: no sync per step
            correct.add_((out.logits.argmax(1) == y).sum())
        loader, bs = train_loader, args.batch_size
    return _run(step, loader, bs, args, device)


# ------------------------------------------------------------------ reference path
class _PILDataset(torch.utils.data.Dataset):
    def __init__(self, images, labels, transform):
        self.images = images.permute(0, 2, 3, 1).numpy()  # (N, H, W, C) uint8 like torchvision
        self.labels = labels.tolist()
        self.transform = transform

    def __len__(self):
        return len(self.labels)

    def __getitem__(self, i):
        from PIL import Image
        return self.transform(Image.fromarray(self.images[i])), self.labels[i]


def reference(bench, args, data, device):
    import torch.nn.functional as F
    import torchvision.transforms as T

    torch.manual_seed(0)
    mean, std = channel_stats(data.images)
    size = data.images.shape[-1]
    train_tf = T.Compose([T.RandomCrop(size, padding=4), T.RandomHorizontalFlip(), T.ToTensor(),
                          T.Normalize(mean, std)])
    eval_tf = T.Compose([T.ToTensor(), T.Normalize(mean, std)])
    train = bench != "eval"
    ds = _PILDataset(data.images, data.labels, train_tf if train else eval_tf)
    bs = args.batch_size if train else args.eval_batch_size
    loader = torch.utils.data.DataLoader(ds, batch_size=bs, shuffle=train, drop_last=True,
                                         num_workers=args.workers, persistent_workers=args.workers > 0)
    teacher = create_model(args.teacher, base_width=width_of(args, args.teacher),
                           placement=args.placement).to(device)
    student = create_model(args.student, base_width=width_of(args, args.student),
                           placement=args.placement).to(device)
    model = teacher if bench == "teacher" else student
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
    stats = {"loss": 0.0, "correct": 0}
    if bench == "eval":
        model.eval()

        def step(x, y):
            x, y = x.to(device), y.to(device)
            with torch.no_grad():
                logits = model(x).logits
            stats["loss"] += F.cross_entropy(logits, y).item()
            stats["correct"] += (logits.argmax(1) == y).sum().item()
    else:
        model.train()
        teacher.eval() if bench == "distill" else None

        def step(x, y):
            x, y = x.to(device), y.to(device)
            opt.zero_grad()
            out = model(x)
            loss = F.cross_entropy(out.logits, y)
            if bench == "distill":
                t_out = teacher(x)                      # autograd on, as commonly written
                if out.hint is not None and t_out.hint is not None and \
                        out.hint.shape == t_out.hint.shape:
                    loss = loss + 0.3 * F.mse_loss(out.hint, t_out.hint.detach())
                else:  # no hint to match (or of another shape): Hinton KD, T = 4
                    loss = loss + 16 * F.kl_div(F.log_softmax(out.logits / 4, 1),
                                                F.softmax(t_out.logits.detach() / 4, 1),
                                                reduction="batchmean")
            loss.backward()
            opt.step()
            stats["loss"] += loss.item()               # host sync every batch
            stats["correct"] += (out.logits.argmax(1) == y).sum().item()
    return _run(step, loader, bs, args, device)


def _run(step, loader, bs, args, device):
    times = []
    _peak_reset(device)
    for _ in range(args.repeats):
        times.append(_time_steps(step, loader, device, args.warmup, args.steps))
    per_s = [args.steps * bs / t for t in times]
    return {"images_per_s": statistics.median(per_s), "runs": per_s, "peak_mem_mib": _peak(device)}


# ------------------------------------------------------------------ main
def data_pipeline(args, device, workers: int) -> dict:
    """images/s of StreamLoader (decode + random-resized crop + flip + normalise) over
    --data-files JPEGs of 500 x 375 pixels written to a temporary folder; medians of --repeats
    epochs after one untimed epoch."""
    import tempfile

    from PIL import Image

    from skipkd.data.stream import StreamLoader, scan_files
    with tempfile.TemporaryDirectory() as root:
        rng = np.random.default_rng(0)
        for i in range(args.data_files):
            folder = os.path.join(root, "train" if i % 5 else "val", f"c{i % 2}")
            os.makedirs(folder, exist_ok=True)
            pixels = rng.integers(0, 256, (375, 500, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(os.path.join(folder, f"{i}.JPEG"), quality=90)
        files, _ = scan_files(root, "data bench")
        loader = StreamLoader(files, args.batch_size, device, train=True,
                              image_size=args.image_size, shuffle=True, workers=workers)
        runs = []
        for epoch in range(args.repeats + 1):
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            t0, n = time.perf_counter(), 0
            for x, _ in loader.iterate(epoch):
                n += len(x)
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            if epoch:  # the first epoch starts the processes and warms the page cache
                runs.append(n / (time.perf_counter() - t0))
    return {"images_per_s": statistics.median(runs), "runs": runs, "peak_mem_mib": 0.0}


def main(args):
    if args.json:  # before any timing: not a folder, a writable place
        check_output_path(args.json, what="--json", create=True)
    device = resolve_device(args.device)
    benches = [b.strip() for b in args.benches.split(",") if b.strip()]
    for b in benches:
        if b not in ("teacher", "distill", "eval", "terms", "data"):
            raise SystemExit(f"benchmark.py: error: unknown bench {b!r} "
                             f"(teacher, distill, eval, terms, data)")
    try:
        data_workers = [int(w) for w in args.data_workers.split(",") if w.strip()]
        if not data_workers or min(data_workers) < 0 or max(data_workers) > 256:
            raise ValueError
    except ValueError:
        raise SystemExit(f"benchmark.py: error: --data-workers: expected counts in 0..256, got "
                         f"{args.data_workers!r}") from None
    try:
        terms = list(KD_TERMS) if args.terms == "all" else parse_kd(args.terms)
    except ValueError as exc:
        raise SystemExit(f"benchmark.py: error: --terms: {exc}") from None
    precisions = args.precisions
    n = max(args.batch_size, args.eval_batch_size) * (args.steps + args.warmup + 1)
    budget = 20000 * 32 * 32 // args.image_size ** 2  # images: at most ~60 MB of pixels
    data = make_synthetic(max(min(n, budget), args.batch_size, args.eval_batch_size), seed=0,
                          image_size=args.image_size)
    rows = []
    result = {"config": {k: v for k, v in vars(args).items()}, "device": str(device),
              "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else
              platform.processor() or platform.machine(), "torch": torch.__version__, "rows": rows}

    def add(row):  # the JSON is rewritten after every row: a run stopped midway keeps its rows
        rows.append(row)
        if args.json:  # a private temporary file, then os.replace (skipkd.io.outputs)
            atomic_write_text(args.json, json.dumps(result, indent=2))

    for bench in benches:
        if bench == "data":  # the streamed pipeline alone, per loader process count
            for workers in data_workers:
                r = data_pipeline(args, device, workers)
                add({"bench": "data", "path": f"workers={workers}", "precision": "-", **r,
                     "ratio": None})
            continue
        if bench == "terms":  # each term alone against the plain student step, per precision
            for prec in precisions:
                plain = ours("distill", args, data, device, prec, kd="none")
                add({"bench": "terms", "path": "none", "precision": prec, **plain, "ratio": 1.0})
                for term in terms:
                    r = ours("distill", args, data, device, prec, kd=term)
                    add({"bench": "terms", "path": term, "precision": prec, **r,
                         "ratio": r["images_per_s"] / plain["images_per_s"]})
            continue
        ref = reference(bench, args, data, device) if args.reference else None
        if ref:
            add({"bench": bench, "path": "reference", "precision": "fp32", **ref, "ratio": 1.0})
        for prec in precisions:
            r = ours(bench, args, data, device, prec)
            ratio = r["images_per_s"] / ref["images_per_s"] if ref else None
            add({"bench": bench, "path": "ours", "precision": prec, **r, "ratio": ratio})
    # the ratio is against the reference path, or (terms bench) against the plain student step
    head = f"{'bench':8} {'path':10} {'prec':5} {'images/s':>10} {'ratio':>7} {'peak MiB':>9}"
    print(f"device {device}, {args.teacher} -> {args.student}, width "
          f"{width_of(args, args.teacher)}/{width_of(args, args.student)}, placement {args.placement}, "
          f"kd {args.kd}, batch {args.batch_size} (eval {args.eval_batch_size}), "
          f"channels_last {args.channels_last}, compile {args.compile}, threads {torch.get_num_threads()}")
    print(head)
    print("-" * len(head))
    for r in rows:
        ratio = f"{r['ratio']:.2f}" if r["ratio"] is not None else "-"
        print(f"{r['bench']:8} {r['path']:10} {r['precision']:5} {r['images_per_s']:10.1f} "
              f"{ratio:>7} {r['peak_mem_mib']:9.0f}")
    print(json.dumps({"rows": [{k: (round(v, 2) if isinstance(v, float) else v)
                                for k, v in r.items() if k != "runs"} for r in rows]}))
    return result


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
