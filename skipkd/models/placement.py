"""Where attention goes: one registry of placements and one rule for every model family.

A family describes each place it could put attention as a BlockSite (its stage, its index in
the stage, whether it is the hint block or the network's last block, what shortcut it adds) and
asks attention_form(placement, site), the only rule there is: MULTIPLICATIVE (on the block's
residual branch, before the add), ADDITIVE (on the shortcut, before the add: the "parallel"
form) or None. The family's AttentionPlacer turns that answer into the attention module, built
here, which the block receives ready made (`attn` / `shortcut_attn`); blocks interpret no flag.

A placement is a rule, BlockSite -> form or None, and the forms it may return. The built-ins
(ECA_PLACEMENTS, in this order):
  none      no attention;
  parallel  ADDITIVE on the shortcut of every block of the first stage that adds one;
  last      MULTIPLICATIVE on the hint block (a family without a hint: the last block);
  all       MULTIPLICATIVE on every block.
A new placement is one register_placement(name, rule, forms=...) call. A family hosts every
placement whose forms it can host (its `forms` in the model registry: no shortcut is ever added
in VGG or ShuffleNetV2, so they host no ADDITIVE placement) and refuses the others with a
ValueError listing the ones it hosts. ADDITIVE goes only on blocks that add a shortcut
(site.shortcut "projection" or "identity"); elsewhere the site gets none.
"""
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Callable

from torch import nn

from .attention import ADDITIVE, FORMS, MULTIPLICATIVE, create_attn

__all__ = ["BlockSite", "Placement", "PLACEMENTS", "ECA_PLACEMENTS", "BUILTIN_PLACEMENTS",
           "register_placement", "unregister_placement", "hosted_placements", "check_placement",
           "attention_form", "AttentionPlacer"]

SHORTCUTS = ("projection", "identity", "none")


@dataclass(frozen=True)
class BlockSite:
    """One block a family could put attention on (a residual block, a unit, VGG's conv-BN)."""
    family: str             # the model family ("resnet", "wrn", "vgg", ...)
    stage: int              # 0-based stage
    block: int              # 0-based index of the block within its stage
    is_hint: bool = False   # the hint block (its projection shortcut gives the hint)
    is_last: bool = False   # the network's last block
    shortcut: str = "none"  # what the block adds to its branch: "projection", "identity" or
    #                         "none" (nothing added: a concatenation, or no shortcut at all)
    has_hint: bool = True   # whether the family has a hint block at all

    def __post_init__(self):
        if self.shortcut not in SHORTCUTS:
            raise ValueError(f"shortcut must be one of {', '.join(SHORTCUTS)}, got {self.shortcut!r}")


@dataclass(frozen=True)
class Placement:
    rule: Callable          # rule(site: BlockSite) -> MULTIPLICATIVE, ADDITIVE or None
    forms: tuple            # the forms the rule may return


PLACEMENTS: dict[str, Placement] = {}


class _PlacementNames(Sequence):
    """The registered placement names, in registration order: a live, read-only view of
    PLACEMENTS (a placement registered later appears in it)."""

    def __getitem__(self, index):
        return tuple(PLACEMENTS)[index]

    def __len__(self) -> int:
        return len(PLACEMENTS)

    def __iter__(self):
        return iter(tuple(PLACEMENTS))

    def __contains__(self, name) -> bool:
        return isinstance(name, str) and name in PLACEMENTS

    def __eq__(self, other) -> bool:
        return isinstance(other, (tuple, list, _PlacementNames)) and tuple(self) == tuple(other)

    __hash__ = None

    def __repr__(self) -> str:
        return repr(tuple(PLACEMENTS))


ECA_PLACEMENTS = _PlacementNames()


def register_placement(name: str, rule: Callable, forms: tuple = (MULTIPLICATIVE,)) -> Placement:
    """Register a placement: rule(site) -> MULTIPLICATIVE, ADDITIVE or None for every BlockSite;
    forms: those it may return (what decides which families host it)."""
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"bad placement name {name!r}")
    if name in PLACEMENTS:
        raise ValueError(f"placement {name!r} is registered twice")
    forms = tuple(forms)
    if not set(forms) <= set(FORMS):
        raise ValueError(f"placement {name!r}: forms must come from {', '.join(FORMS)}, got {forms}")
    PLACEMENTS[name] = Placement(rule, forms)
    return PLACEMENTS[name]


def unregister_placement(name: str) -> None:
    """Remove a registered placement (not a built-in one)."""
    if name in BUILTIN_PLACEMENTS:
        raise ValueError(f"the built-in placement {name!r} cannot be removed")
    del PLACEMENTS[name]


def hosted_placements(forms) -> tuple:
    """The placements a family that can host these attention forms defines, in order."""
    return tuple(name for name, p in PLACEMENTS.items() if set(p.forms) <= set(forms))


def check_placement(placement: str, owner: str, forms=FORMS) -> None:
    """ValueError unless `owner` (a family that hosts `forms`) defines `placement`."""
    hosted = hosted_placements(forms)
    if placement not in hosted:
        raise ValueError(f"{owner} defines the ECA placements {', '.join(hosted)}; "
                         f"got {placement!r}")


def attention_form(placement: str, site: BlockSite) -> str | None:
    """THE placement rule: which attention `placement` puts on `site`: MULTIPLICATIVE (residual
    branch), ADDITIVE (on the shortcut, only where the block adds one) or None."""
    if placement not in PLACEMENTS:
        raise ValueError(f"unknown ECA placement {placement!r}; choose from "
                         f"{', '.join(PLACEMENTS)}")
    p = PLACEMENTS[placement]
    form = p.rule(site)
    if form is not None and form not in p.forms:
        raise ValueError(f"placement {placement!r} put {form!r} attention on {site}, but "
                         f"declares the forms {', '.join(p.forms)}")
    if form == ADDITIVE and site.shortcut == "none":
        return None
    return form


class AttentionPlacer:
    """One model's attention: placement, attention type (`layer`) and its options. Checks that
    `owner` (a family hosting `forms`) defines the placement, then builds each block's modules."""

    def __init__(self, placement: str, layer: str = "eca", k_size: int | None = None, *,
                 owner: str, forms=FORMS):
        check_placement(placement, owner, forms)
        self.placement, self.layer, self.k_size = placement, layer, k_size

    def __call__(self, site: BlockSite, channels: int) -> tuple[nn.Module | None, nn.Module | None]:
        """(attention on the residual branch, attention on the shortcut) for `site`, over
        `channels` channels; at most one of them is not None."""
        form = attention_form(self.placement, site)
        module = create_attn(form, channels, self.layer, k_size=self.k_size)
        return (module, None) if form != ADDITIVE else (None, module)


def _last(site: BlockSite) -> str | None:
    """The hint block; the last block where the family has no hint."""
    return MULTIPLICATIVE if (site.is_hint if site.has_hint else site.is_last) else None


register_placement("none", lambda site: None, forms=())
register_placement("parallel", lambda site: ADDITIVE if site.stage == 0 else None, forms=(ADDITIVE,))
register_placement("last", _last)
register_placement("all", lambda site: MULTIPLICATIVE)
BUILTIN_PLACEMENTS = tuple(PLACEMENTS)
