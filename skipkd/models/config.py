"""ModelConfig: everything that defines one network of a run, as one typed record.

    config = ModelConfig("resnet18", num_classes=10, base_width=16, placement="parallel")
    model = config.build()          # create_model + the initialisation recipe

`to_json()` is the checkpoint's "model" description, from which skipkd.io.checkpoint rebuilds
the network (the initialisation is not in it: the weights are).
"""
from dataclasses import dataclass

from . import create_model
from .init import apply_init_

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

    def build(self):
        """The network, initialised; ValueError for a width, placement or initialisation the
        family does not define."""
        model = create_model(self.arch, num_classes=self.num_classes, base_width=self.base_width,
                             in_channels=self.in_channels, placement=self.placement,
                             eca_k=self.eca_k, attn=self.attn)
        apply_init_(model, self.init, self.zero_residual)
        return model

    def to_json(self) -> dict:
        """The checkpoint's "model" field."""
        return {"arch": self.arch, "num_classes": self.num_classes, "base_width": self.base_width,
                "in_channels": self.in_channels, "placement": self.placement,
                "eca_k": self.eca_k, "attn": self.attn, "image_size": self.image_size}
