"""ModelConfig: everything that defines one network of a run, as one typed record.

    config = ModelConfig("resnet18", num_classes=10, base_width=16, placement="parallel")
    model = config.build()          # create_model + the initialisation recipe

`to_json()` is the checkpoint's "model" description, from which skipkd.io.checkpoint rebuilds
the network (the initialisation and the starting weights are not in it: the trained weights
are).
"""
from dataclasses import dataclass

from . import create_model
from .init import apply_init_
from .pretrained import load_weights

__all__ = ["ModelConfig"]


@dataclass(frozen=True)
class ModelConfig:
    arch: str                    # a registered model name (skipkd.models.MODELS)
    num_classes: int
    base_width: int
    in_channels: int = 3
    image_size: int = 32         # the input it is trained on (feature shapes follow from it)
    placement: str = "none"      # where attention goes (skipkd.models.PLACEMENTS)
    eca_k: int | None = None     # ECA's kernel size (None: ECA-Net's adaptive rule)
    attn: str = "eca"            # the attention module (skipkd.models.ATTENTION_LAYERS)
    init: str = "model"          # the initialisation recipe (skipkd.models.init)
    zero_residual: bool = False  # zero the last BN of each residual branch
    weights: str | None = None   # pretrained weights to start from (skipkd.models.pretrained)

    def build(self, replace_head: bool = True):
        """(the network, initialised and with `weights` loaded, a line saying what the weights
        gave or None); ValueError for a width, placement or initialisation the family does not
        define, or weights that do not fit (replace_head=False: nor a head of other classes).
        On the meta device the weights are checked, not loaded."""
        model = create_model(self.arch, num_classes=self.num_classes, base_width=self.base_width,
                             in_channels=self.in_channels, placement=self.placement,
                             eca_k=self.eca_k, attn=self.attn)
        apply_init_(model, self.init, self.zero_residual)
        note = None
        if self.weights is not None:
            note = load_weights(model, self.weights, self.arch, replace_head=replace_head)
        return model, note

    def to_json(self) -> dict:
        """The checkpoint's "model" field."""
        return {"arch": self.arch, "num_classes": self.num_classes, "base_width": self.base_width,
                "in_channels": self.in_channels, "placement": self.placement,
                "eca_k": self.eca_k, "attn": self.attn, "image_size": self.image_size}
