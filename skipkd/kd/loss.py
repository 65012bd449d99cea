"""DistillationLoss: CE plus the chosen distillation terms, with the frozen teacher run inside.

The training loop calls `loss_fn(x, student_output, y)` and never knows which method is used.
"""
import copy
import dataclasses
import functools
from contextlib import nullcontext

import torch
import torch.nn.functional as F
from torch import nn

from ..models import FEATURES, ModelOutput, fold_batchnorm
from ..models.torchvision_zoo import LOGIT_NEEDS
from ..models.contract import BLOCK_FEATURES

from .registry import KD_TERMS, KDBatch, TermContext, parse_kd, term_options

__all__ = ["KD_MODES", "DistillationLoss"]

# examples for help texts and tests; any +-joined list of registered terms is accepted
KD_MODES = ("none", "skip", "logit", "skip+logit")


class DistillationLoss(nn.Module):
    """loss = ce_weight * CE(s, y) + sum over the chosen terms of weight * term(student, teacher).

    terms: 'none', registered term names joined by '+' (skipkd.kd.registry.KD_TERMS: 'skip',
    'logit', 'skip+logit', ...) or a list of names. weights: {term: weight}; a chosen term left
    out gets its own default_weight (skip 0.3, logit 1.0, ...). The scripts' legacy --alpha and
    --beta are turned into weights by skipkd.cli, never here.
    context: a TermContext with the models' feature shapes, the training set's size and labels,
    and the temperature; options: {term: {key: value}} (--kd-opt).
    `forward` returns (total loss, dict of detached parts: 'ce' and one per term, and
    name_part for the parts of terms that return several).
    fast_teacher: run the frozen teacher as a BatchNorm-folded copy, and only as far as the
    terms need (hint-only when no term needs its logits). Same values, less work.
    compile_teacher: torch.compile that inference function (worth it on CPU and GPU alike); True
    or a torch.compile mode ('default', 'reduce-overhead': CUDA graphs, 'max-autotune').
    """

    def __init__(self, terms="none", teacher: nn.Module | None = None,
                 weights: dict | None = None, context: TermContext | None = None,
                 options: dict | None = None, ce_weight: float = 1.0,
                 label_smoothing: float = 0.0, fast_teacher: bool = True,
                 compile_teacher: bool | str = False):
        super().__init__()
        self.names = parse_kd(terms) if isinstance(terms, str) else parse_kd("+".join(terms) or "none")
        self.mode = "+".join(self.names) or "none"
        if self.names and teacher is None:
            raise ValueError(f"KD mode {self.mode!r} needs a teacher")
        weights = dict(weights or {})
        unknown = sorted(set(weights) - set(self.names))
        if unknown:
            raise ValueError(f"a weight is given for {unknown[0]!r}, which is not among the "
                             f"chosen terms ({', '.join(self.names) or 'none'})")
        if any(not float(w) >= 0 for w in weights.values()):
            raise ValueError("distillation weights must be >= 0")
        self.compile_teacher = compile_teacher
        self.weights = {n: float(weights.get(n, KD_TERMS[n].default_weight)) for n in self.names}
        self.label_smoothing = label_smoothing
        if ce_weight < 0:
            raise ValueError("the cross-entropy weight must be >= 0")
        self.ce_weight = float(ce_weight)  # 0.1 in Hinton KD's CIFAR-100 runs (RepDistiller)
        if self.ce_weight == 0 and not any(self.weights.values()):
            raise ValueError("every loss weight is zero (the cross-entropy weight and each "
                             "term's): the loss is identically zero and nothing would be learned")
        # the teacher is a plain attribute: not in state_dict, not in parameters(), never trained
        self.__dict__["teacher"] = teacher if self.names else None
        self.__dict__["teacher_infer"] = None
        if self.teacher is not None:
            self.teacher.eval()
            for p in self.teacher.parameters():
                p.requires_grad_(False)
            if fast_teacher:
                self.__dict__["teacher_infer"] = fold_batchnorm(self.teacher)
        ctx = context or TermContext()  # not modified: each term gets its own copy
        readable = [n for n, c in KD_TERMS.items() if c.needs <= LOGIT_NEEDS]
        for who, shapes in (("student", ctx.student_shapes), ("teacher", ctx.teacher_shapes)):
            for name in self.names if shapes.get("logits_only") else ():
                wants = sorted(KD_TERMS[name].needs - LOGIT_NEEDS)
                if wants:
                    raise ValueError(f"{name} needs the {who}'s {', '.join(wants)}, and the "
                                     f"{who} is a logit-only network: choose terms that read "
                                     f"logits ({', '.join(readable)})")
        options = options or {}
        unknown = sorted(set(options) - set(self.names))
        if unknown:
            raise ValueError(f"--kd-opt names {unknown[0]!r}, which is not among the chosen "
                             f"terms ({', '.join(self.names) or 'none'})")
        self.options = {}
        for name in self.names:  # a submodule per term, named after it (state_dict: skip.*)
            self.options[name] = term_options(name, options.get(name))
            self.add_module(name, KD_TERMS[name](dataclasses.replace(ctx, options=self.options[name])))
        # each term instance says what it reads (skip's options change it: hint, hint_out, ...)
        self.needs = frozenset().union(*(getattr(self, n).needs for n in self.names))
        self.features = self.needs & set(FEATURES)  # what both nets must return besides logits
        if self.features:  # the folded copy when there is one, else the teacher itself
            (self.teacher_infer or self.teacher).request_features(self.features)

    @property
    def terms(self) -> dict:
        return {name: getattr(self, name) for name in self.names}

    @property
    def needs_index(self) -> bool:
        """Whether the loader must give each batch's training-set indices."""
        return "index" in self.needs

    def learned_parameters(self) -> dict:
        """{term: number of parameters it trains with the student} (connectors, heads; not
        exported with the student)."""
        return {n: sum(p.numel() for p in t.parameters() if p.requires_grad)
                for n, t in self.terms.items()}

    @property
    def connector(self) -> nn.Module | None:
        """The learned hint connector of the chosen terms (the skip term's), if any; not part of
        the exported student."""
        for term in self.terms.values():
            conn = getattr(term, "connector", None)
            if isinstance(conn, nn.Module) and not isinstance(conn, nn.Identity):
                return conn
        return None

    def train(self, mode: bool = True):
        super().train(mode)
        if self.teacher is not None:
            self.teacher.eval()  # frozen: BN statistics must not move
        return self

    def _teacher_for(self, x: torch.Tensor):
        """The network to run and the input dtype. Under autocast the folded teacher is kept as a
        copy in the autocast dtype, so its weights are not cast again at every step."""
        if self.teacher_infer is None:
            return self.teacher, None
        if next(self.teacher_infer.parameters()).device != x.device:  # moved after __init__
            self.__dict__["teacher_infer"] = self.teacher_infer.to(x.device)
            self.__dict__.pop("_teacher_cast", None)
        dev = x.device.type
        if not torch.is_autocast_enabled(dev):
            return self.teacher_infer, None
        dtype = torch.get_autocast_dtype(dev)
        cache = self.__dict__.setdefault("_teacher_cast", {})
        if dtype not in cache:
            cache[dtype] = copy.deepcopy(self.teacher_infer).to(dtype)
        return cache[dtype], dtype

    def teacher_forward(self, x: torch.Tensor) -> ModelOutput:
        """The teacher's outputs, without autograd: only the hint (logits None) when no term
        needs more; only as far as the hint block's output or the last projection shortcut
        (forward_prefix, logits None) when the terms need no more than those; else logits,
        hint and the requested features."""
        net, dtype = self._teacher_for(x)
        ctx = nullcontext() if dtype is None else torch.autocast(x.device.type, enabled=False)
        if dtype is not None:
            x = x.to(dtype)
        wanted = self.needs & {"logits", *FEATURES}
        hint_only = not wanted and hasattr(net, "forward_hint")
        prefix = bool(wanted) and wanted <= BLOCK_FEATURES and hasattr(net, "forward_prefix")
        fn = net.forward_hint if hint_only else net
        if prefix:
            fn = functools.partial(net.forward_prefix, want=self.needs & {"hint", *BLOCK_FEATURES})
        if self.compile_teacher:
            compiled = self.__dict__.setdefault("_compiled", {})
            key = (id(net), hint_only, prefix)
            if key not in compiled:
                mode = self.compile_teacher if isinstance(self.compile_teacher, str) else None
                compiled[key] = torch.compile(fn, mode=mode)
            fn = compiled[key]
        with torch.inference_mode(), ctx:
            out = ModelOutput(None, fn(x)) if hint_only else fn(x)
        # inference tensors cannot be saved for backward: clone them into normal tensors
        return ModelOutput(*(_clone(v) for v in out))

    def forward(self, x, student_out, y, index=None, epoch: float = 0.0):
        ce = F.cross_entropy(student_out.logits.float(), y, label_smoothing=self.label_smoothing)
        parts = {"ce": ce.detach()}
        total = ce if self.ce_weight == 1.0 else self.ce_weight * ce
        if self.teacher is not None:
            teacher_out = self.teacher_forward(x)
            batch = KDBatch(y=y, index=index, epoch=float(epoch))
            for name, term in self.terms.items():
                value = term(student_out, teacher_out, batch)
                sub = value if isinstance(value, dict) else {}  # named parts that sum to it
                if sub:
                    if tuple(sub) != tuple(getattr(term, "parts", ())):
                        raise ValueError(f"term {name!r} returned parts {tuple(sub)}, but "
                                         f"declares {tuple(getattr(term, 'parts', ()))}")
                    value = sum(sub.values())
                total = total + self.weights[name] * value
                parts[name] = value.detach()
                parts.update((f"{name}_{part}", v.detach()) for part, v in sub.items())
        return total, parts


def _clone(v):
    if v is None:
        return None
    if isinstance(v, (tuple, list)):
        return tuple(t.clone() for t in v)
    return v.clone()
