"""The feature contract every model honours, as one base class.

forward(x) -> ModelOutput(logits, hint, feats, preact_feats, embedding, hint_out, shortcuts):
- logits (B, K) always;
- hint: the skip-connection feature, the output of the hint block's projection shortcut
  (after its BN, before the residual add), or None for a family without a projection shortcut
  (`has_hint` False: `--kd skip` refuses it);
- feats / preact_feats / embedding only after request_features(...) asked for them (what the
  chosen distillation terms need): the stem's and every stage's output, the same before their
  last ReLU, and the pooled features the classifier sees. The default path computes nothing
  extra;
- hint_out / shortcuts likewise only when requested, and only from families that list them in
  `block_features` (None elsewhere): the hint block's output (after the residual add and its
  ReLU) and the output of every projection shortcut (after its BN, before the add), in network
  order. What skip KD's `where=mid` and `stages=all` variants match.

A family subclasses FeatureModel and implements `forward_all(x) -> (feats, preact_feats, hint)`
and a classifier `self.fc` over `pool(feats[-1])`; it may override `forward_features` (the
plain path: (last feature map, hint)) when that can skip work, and provides `forward_hint`
(only the hint: how far a frozen teacher runs for skip KD) when it has a hint. A family with
`block_features` takes a `taps` dict in forward_all (filled with "hint_out" and "shortcuts")
and provides `forward_prefix(x, want)`: a ModelOutput without logits that runs only as far as
the requested ones of hint, hint_out and shortcuts need.
"""
from typing import NamedTuple

import torch
from torch import nn

__all__ = ["FEATURES", "BLOCK_FEATURES", "ModelOutput", "FeatureModel"]

# what a model can return besides logits and the hint, computed only when requested
FEATURES = ("feats", "preact_feats", "embedding", "hint_out", "shortcuts")
# the FEATURES that come from inside residual blocks: only families that list them return them
BLOCK_FEATURES = frozenset({"hint_out", "shortcuts"})


class ModelOutput(NamedTuple):
    """The feature contract every model honours. logits and hint always (hint None where the
    family has none); the rest only after `model.request_features(...)` asked for them (None
    otherwise, so the default path costs nothing extra)."""
    logits: torch.Tensor                  # (B, num_classes)
    hint: torch.Tensor | None             # (B, C_hint, H_hint, W_hint)
    feats: tuple | None = None            # stem output, then each stage's output (B, C, H, W)
    preact_feats: tuple | None = None     # the same before their last ReLU
    embedding: torch.Tensor | None = None  # the pooled features the classifier sees (B, C)
    hint_out: torch.Tensor | None = None  # the hint block's output (B, C_hint, H_hint, W_hint)
    shortcuts: tuple | None = None        # every projection shortcut's output (B, C, H, W)


class FeatureModel(nn.Module):
    """Base class of every model: request_features and the forward that honours it."""

    feature_request: frozenset = frozenset()
    has_hint: bool = True
    block_features: frozenset = frozenset()  # which of BLOCK_FEATURES the family can return

    def request_features(self, names) -> "FeatureModel":
        """From now on forward() also returns these of FEATURES (what distillation terms need);
        an empty set restores the plain path."""
        names = frozenset(names)
        unknown = names - set(FEATURES)
        if unknown:
            raise ValueError(f"unknown features {sorted(unknown)}; known: {', '.join(FEATURES)}")
        self.feature_request = names
        return self

    def forward_all(self, x: torch.Tensor) -> tuple[tuple, tuple, torch.Tensor | None]:
        raise NotImplementedError

    def forward_features(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """(the last feature map, hint): the plain path. A family without a hint whose network
        is `stem` then `stages` in sequence runs just those; otherwise forward_all's values."""
        if not self.has_hint and hasattr(self, "stem") and hasattr(self, "stages"):
            x = self.stem(x)
            for stage in self.stages:
                x = stage(x)
            return x, None
        feats, _, hint = self.forward_all(x)
        return feats[-1], hint

    def pool(self, fmap: torch.Tensor) -> torch.Tensor:
        """Global average pooling to (B, C); no .view (channels_last safe)."""
        return torch.flatten(fmap.mean(dim=(2, 3)), 1)

    def forward(self, x: torch.Tensor) -> ModelOutput:
        want = self.feature_request
        if not want:
            fmap, hint = self.forward_features(x)
            return ModelOutput(self.fc(self.pool(fmap)), hint)
        taps = {} if want & self.block_features else None
        feats, preacts, hint = self.forward_all(x) if taps is None else self.forward_all(x, taps)
        emb = self.pool(feats[-1])
        taps = taps or {}
        return ModelOutput(self.fc(emb), hint,
                           feats=feats if "feats" in want else None,
                           preact_feats=preacts if "preact_feats" in want else None,
                           embedding=emb if "embedding" in want else None,
                           hint_out=taps.get("hint_out") if "hint_out" in want else None,
                           shortcuts=(tuple(taps["shortcuts"]) if "shortcuts" in want
                                      and "shortcuts" in taps else None))
