"""Export a checkpoint to ONNX and verify it: onnx.checker, then onnxruntime against PyTorch.

    python convertToOnnx.py saved_pth_model/KEY_student.pth [--output model.onnx] [--with-hint]

The graph has one input 'input' (B, C, H, W) float32, normalised like the training data
(the checkpoint's data.mean/std), and the output 'logits' (B, num_classes) (+ 'hint' with
--with-hint), all with a dynamic batch axis. Initializers keep the checkpoint's state_dict names
(BatchNorm stays a node; onnxruntime fuses it into the convolutions when it loads the model,
or pass --fold-bn to fold it at export time).
"""
import os
import tempfile
import warnings

import numpy as np
import torch

from utils.analysis import OutputsAsTuple
from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.cli import positive_int
from skipkd.errors import UserError, exit_on_user_error
from utils.analysis.toolargs import check_output_path, tool_parser
from skipkd.cli import SEED, float_in


def get_args_parser():
    p = tool_parser("Convert a checkpoint (teacher, student or baseline) to ONNX "
                                  "with a dynamic batch axis and check it against PyTorch.")
    p.add_argument("checkpoint", help="a .pth checkpoint written by the training scripts")
    p.add_argument("--output", "-o", default=None,
                   help="ONNX file to write (default: the checkpoint path with .onnx)")
    p.add_argument("--with-hint", action="store_true",
                   help="also output the skip-connection hint (B, C, H, W) as 'hint'")
    p.add_argument("--opset", type=positive_int, default=None,
                   help="ONNX opset version (default: the exporter's default)")
    p.add_argument("--fold-bn", action="store_true",
                   help="fold BatchNorm into the convolutions at export (initializers then get "
                        "generated names); onnxruntime does this fusion itself by default")
    p.add_argument("--batch-sizes", type=positive_int, nargs="+", default=[1, 7],
                   help="batch sizes of the random inputs compared between PyTorch and onnxruntime")
    p.add_argument("--tolerance", type=float_in(0, 1e6), default=1e-4,
                   help="largest allowed difference between onnxruntime and PyTorch outputs, "
                        "max |difference| / max(1, max |output|) (absolute for outputs of order 1); "
                        "above it the script exits with status 1")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the random test inputs")
    return p


def _strip_prefix(model_proto, prefix="model."):
    """Rename initializers 'model.X' (the export wrapper's attribute) to the state_dict key 'X'."""
    renames = {}
    for init in model_proto.graph.initializer:
        if init.name.startswith(prefix):
            renames[init.name] = init.name[len(prefix):]
            init.name = renames[init.name]
    for node in model_proto.graph.node:
        for i, name in enumerate(node.input):
            if name in renames:
                node.input[i] = renames[name]
    for inp in model_proto.graph.input:  # only when initializers are also graph inputs
        if inp.name in renames:
            inp.name = renames[inp.name]
    return model_proto


def export_onnx(model, path, example, with_hint=False, opset=None, fold_bn=False):
    """Legacy (TorchScript) exporter: the dynamo exporter needs the onnxscript package."""
    import onnx

    output_names = ["logits", "hint"] if with_hint else ["logits"]
    dynamic_axes = {name: {0: "batch"} for name in ["input"] + output_names}
    wrapper = OutputsAsTuple(model, with_hint).eval()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the legacy exporter's deprecation notices
        torch.onnx.export(wrapper, (example,), path, input_names=["input"],
                          output_names=output_names, dynamic_axes=dynamic_axes,
                          opset_version=opset, do_constant_folding=fold_bn, dynamo=False)
    proto = onnx.load(path)
    onnx.save(_strip_prefix(proto), path)
    onnx.checker.check_model(path, full_check=True)  # raises onnx.checker.ValidationError
    return onnx.load(path)


@torch.no_grad()
def compare_with_onnxruntime(model, path, input_shape, batch_sizes, with_hint=False, seed=0):
    """-> {batch size: {output name: max abs difference / max(1, max |PyTorch output|)}} on
    random normal inputs: absolute for outputs of order 1, relative for large ones (float32
    rounding grows with the magnitude, e.g. the huge logits of a barely trained network)."""
    import onnxruntime as ort

    session = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    gen = torch.Generator().manual_seed(seed)
    diffs = {}
    for b in batch_sizes:
        x = torch.randn(b, *input_shape, generator=gen)  # (B, C, H, W), like normalised images
        out = model(x)
        ref = {"logits": out.logits, "hint": out.hint}
        got = dict(zip(names, session.run(None, {"input": x.numpy()})))
        diffs[b] = {n: float(np.max(np.abs(got[n] - ref[n].numpy()))
                             / max(1.0, float(ref[n].abs().max()))) for n in names}
    return diffs


def export_to(output, model, example, with_hint=False, opset=None, fold_bn=False):
    """export_onnx into a temporary file beside `output`, then os.replace: a failed export
    leaves an earlier file at `output` as it was and no partial file behind."""
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".onnx",
                               dir=os.path.dirname(os.path.abspath(output)))
    os.close(fd)
    try:
        proto = export_onnx(model, tmp, example, with_hint, opset, fold_bn)
        os.replace(tmp, output)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return proto


def main(args):
    output = args.output or os.path.splitext(args.checkpoint)[0] + ".onnx"
    check_output_path(output, inputs=[args.checkpoint], what="--output")
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint).eval()
    if args.with_hint and not getattr(model, "has_hint", True):
        raise UserError(f"--with-hint: {ckpt['model']['arch']} has no skip-connection hint "
                        f"(its family has no projection shortcut)")
    cfg = ckpt["model"]
    c = cfg.get("in_channels", 3)
    size = cfg.get("image_size") or (ckpt.get("data") or {}).get("image_size") or 32
    example = torch.zeros(1, c, size, size)
    import onnx
    try:
        proto = export_to(output, model, example, args.with_hint, args.opset, args.fold_bn)
    except onnx.checker.ValidationError as exc:
        raise UserError(f"the exported model fails onnx.checker: {str(exc).splitlines()[0]}") from None
    opset = max(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    print(f"exported {cfg['arch']} (placement {cfg['placement']}, width {cfg['base_width']}, "
          f"{cfg['num_classes']} classes) -> {output} [opset {opset}, "
          f"{os.path.getsize(output) / 2 ** 20:.2f} MB, outputs "
          f"{', '.join(o.name for o in proto.graph.output)}; onnx.checker ok]")
    diffs = compare_with_onnxruntime(model, output, (c, size, size), args.batch_sizes,
                                     args.with_hint, args.seed)
    worst = 0.0
    for b, d in diffs.items():
        print(f"batch {b}: max |onnxruntime - pytorch| / max(1, max |pytorch|) " +
              ", ".join(f"{n} {v:.3g}" for n, v in d.items()))
        worst = max(worst, *d.values())
    if not worst <= args.tolerance:  # also catches NaN
        raise SystemExit(f"error: onnxruntime differs from PyTorch by {worst:.3g} "
                         f"(> --tolerance {args.tolerance:g})")
    print(f"ok: onnxruntime matches PyTorch within {args.tolerance:g} (max {worst:.3g})")
    return {"output": output, "max_abs_diff": worst, "diffs": diffs}


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
