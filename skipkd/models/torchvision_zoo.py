"""Any torchvision classification model as a logit-only network: `tv_<name>` in the registry
(`tv_convnext_tiny`, `tv_efficientnet_b0`, `tv_vit_b_16`, ... every name
torchvision.models.list_models() gives for classification).

Such a network gives logits and nothing else: no skip-connection hint, no stage features, no
attention placement (it hosts `none` only), so it can teach (or learn) through the terms that
read logits alone (logit and its standardisation, DKD, DIST); a term that needs features
refuses it in one line. Its weights come from torchvision's weights names or files
(skipkd/models/pretrained.py, `--teacher-weights`, `--init-weights`); `--width` does not apply
(its registered width is 1, a placeholder). Three input channels only. For torchvision's
ResNets prefer resnet18_imagenet ... resnet152_imagenet (skipkd/models/imagenet.py): the same
networks and weights, with the hint and every feature.

torchvision (about a second to import) is imported when a tv_ network is first looked up or the
registry is listed (registry.register_lazy), not by every script that starts.
"""
import torch

from .contract import ModelOutput
from .contract import FeatureModel
from .registry import register_lazy, register_model

__all__ = ["TV_PREFIX", "LogitOnly", "tv_name", "LOGIT_NEEDS"]

TV_PREFIX = "tv_"
LOGIT_NEEDS = frozenset({"logits", "index"})  # what a term may read from a logit-only network


def tv_name(arch: str) -> str | None:
    """torchvision's model name of a registered tv_ network, else None."""
    return arch[len(TV_PREFIX):] if arch.startswith(TV_PREFIX) else None


class LogitOnly(FeatureModel):
    """A torchvision classifier (`net`) behind the feature contract: logits only."""

    has_hint = False
    logits_only = True

    def __init__(self, name: str, num_classes: int = 1000, base_width: int = 1, in_channels=3,
                 placement="none", eca_k=None, attn="eca"):
        super().__init__()
        if in_channels != 3:
            raise ValueError(f"tv_{name} takes 3 input channels, not {in_channels}")
        if placement != "none":
            raise ValueError(f"tv_{name} hosts no attention placement but none")
        import torchvision
        self.tv_name, self.placement = name, "none"
        self.net = torchvision.models.get_model(name, weights=None, num_classes=num_classes)

    def request_features(self, names) -> "LogitOnly":
        names = frozenset(names)
        if names:
            raise ValueError(f"tv_{self.tv_name} gives logits only, not {', '.join(sorted(names))}")
        self.feature_request = names
        return self

    def forward(self, x: torch.Tensor) -> ModelOutput:
        return ModelOutput(self.net(x), None)


def _factory(name):
    def build(num_classes=1000, base_width=1, in_channels=3, placement="none", eca_k=None,
              attn="eca"):
        return LogitOnly(name, num_classes, base_width, in_channels, placement, eca_k, attn)
    build.__module__ = __name__
    return build


def _register_all():
    """Every torchvision classification model as tv_<name>."""
    import torchvision
    for name in torchvision.models.list_models(module=torchvision.models):
        register_model(TV_PREFIX + name, _factory(name), default_width=1, family="torchvision",
                       forms=())


register_lazy(_register_all)

