"""Draw a checkpoint's autograd graph with torchviz (needs Graphviz's `dot` program).

    python visualize.py saved_pth_model/KEY_student.pth --output model_graph.png
"""
import os
import shutil
import tempfile

import torch

from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
from skipkd.cli import positive_int
from skipkd.errors import UserError, exit_on_user_error
from utils.analysis.toolargs import check_output_path, tool_parser

FORMATS = ("png", "svg", "pdf")


def get_args_parser():
    p = tool_parser("Render the architecture of a checkpoint as a torchviz "
                                  "(Graphviz) graph of its forward pass.")
    p.add_argument("checkpoint", help="a .pth checkpoint written by the training scripts")
    p.add_argument("--output", "-o", default=None,
                   help="image to write; its extension (.png, .svg, .pdf) picks the format "
                        "(default: the checkpoint path with _graph.png)")
    p.add_argument("--with-hint", action="store_true",
                   help="draw the graph of both outputs, logits and the skip-connection hint")
    p.add_argument("--show-attrs", action="store_true",
                   help="label the autograd nodes with their saved attributes (stride, padding...)")
    p.add_argument("--rankdir", choices=["TB", "LR"], default="TB",
                   help="layout direction: top-to-bottom or left-to-right")
    p.add_argument("--dpi", type=positive_int, default=72, help="resolution of a PNG output")
    return p


def check_dot():
    """One-line error naming the Debian package when Graphviz's `dot` is not on PATH."""
    if shutil.which("dot") is None:
        raise UserError("Graphviz's 'dot' program was not found on PATH: install the Debian "
                        "package 'graphviz' (sudo apt-get install graphviz) or your system's "
                        "Graphviz")


def make_graph(model, example, with_hint=False, show_attrs=False, rankdir="TB", dpi=72):
    """-> graphviz.Digraph of one forward pass on `example` (B, C, H, W); parameters are labelled
    with their state_dict names."""
    from torchviz import make_dot

    model.eval()
    out = model(example.requires_grad_(False))
    roots = (out.logits, out.hint) if with_hint else out.logits
    dot = make_dot(roots, params=dict(model.named_parameters()), show_attrs=show_attrs)
    dot.graph_attr.update(rankdir=rankdir, dpi=str(dpi))
    return dot


def render(dot, output, fmt):
    """Render into a private temporary folder beside `output` (graphviz writes its dot source
    next to the image and deletes it afterwards: never in the user's folder, where that name
    could be an existing file such as the checkpoint), then move only the image into place."""
    import graphviz
    folder = os.path.dirname(os.path.abspath(output))
    with tempfile.TemporaryDirectory(prefix=".visualize-", dir=folder) as tmp:
        try:
            image = dot.render(filename="graph", directory=tmp, format=fmt, cleanup=True)
        except graphviz.ExecutableNotFound:
            check_dot()
            raise UserError("Graphviz's 'dot' could not be run: install the Debian package "
                            "'graphviz'") from None
        except graphviz.CalledProcessError as exc:
            raise UserError(f"Graphviz failed to render the graph (exit {exc.returncode})") from None
        os.replace(image, output)  # same folder: atomic, an earlier image stays until then
    return output


def main(args):
    output = args.output or os.path.splitext(args.checkpoint)[0] + "_graph.png"
    fmt = os.path.splitext(output)[1].lstrip(".").lower()
    if fmt not in FORMATS:
        raise UserError(f"--output must end in one of {', '.join('.' + f for f in FORMATS)}, "
                        f"got {output!r}")
    check_output_path(output, inputs=[args.checkpoint], what="--output")
    ckpt = load_checkpoint(args.checkpoint)
    model = model_from_checkpoint(ckpt, args.checkpoint)
    if args.with_hint and not getattr(model, "has_hint", True):
        raise UserError(f"--with-hint: {ckpt['model']['arch']} has no skip-connection hint "
                        f"(its family has no projection shortcut)")
    check_dot()
    cfg = ckpt["model"]
    c = cfg.get("in_channels", 3)
    size = cfg.get("image_size") or 32
    dot = make_graph(model, torch.zeros(1, c, size, size), args.with_hint, args.show_attrs,
                     args.rankdir, args.dpi)
    path = render(dot, output, fmt)
    print(f"wrote {path} ({cfg['arch']}, placement {cfg['placement']}, width {cfg['base_width']}, "
          f"{len(dot.body)} graph elements)")
    return path


if __name__ == "__main__":
    exit_on_user_error(main)(get_args_parser().parse_args())
