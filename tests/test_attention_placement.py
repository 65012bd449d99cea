"""Attention placements and types as registries: a placement registered from a test is placed by
every family through the one rule (skipkd.models.placement), refused by the families that cannot
host its form, trains through the real script and is rebuilt from the checkpoint; attention types
get only the options they declare (ECA its kernel size, SE none)."""
import inspect

import pytest
import torch

from skipkd.models import (ADDITIVE, ATTENTION_LAYERS, ECA, ECA_PLACEMENTS, MODELS, MULTIPLICATIVE,
                           PLACEMENTS, SE, ParallelECA, ParallelSE, create_model,
                           register_placement, unregister_placement)
from skipkd.models.attention import create_attn

ENTRY = "stage_entry"              # multiplicative, on the first block of every stage
ENTRY_SHORTCUT = "stage_entry_sc"  # additive, on the shortcut of the first block of every stage


@pytest.fixture
def entry_placements():
    """Register the two test placements (recording every site the first rule is asked about)
    and remove them afterwards, so that other tests never see them."""
    seen = []

    def entry(site):
        seen.append(site)
        return MULTIPLICATIVE if site.block == 0 else None

    register_placement(ENTRY, entry)
    register_placement(ENTRY_SHORTCUT, lambda site: ADDITIVE if site.block == 0 else None,
                       forms=(ADDITIVE,))
    yield seen
    unregister_placement(ENTRY)
    unregister_placement(ENTRY_SHORTCUT)
    assert ENTRY not in ECA_PLACEMENTS and ENTRY_SHORTCUT not in PLACEMENTS
    assert tuple(ECA_PLACEMENTS) == ("none", "parallel", "last", "all")


def _attention_names(model) -> dict:
    """name -> module for every attention module of the model (by class, not by attribute)."""
    kinds = (ECA, ParallelECA, SE, ParallelSE)
    return {name: m for name, m in model.named_modules() if isinstance(m, kinds)}


def test_a_registered_placement_is_placed_by_every_family(entry_placements):
    # live: the registry's names, in order, and every family that can host the form
    assert tuple(ECA_PLACEMENTS) == ("none", "parallel", "last", "all", ENTRY, ENTRY_SHORTCUT)
    assert MODELS["resnet18"].placements[-2:] == (ENTRY, ENTRY_SHORTCUT)
    assert MODELS["vgg8"].placements == ("none", "last", "all", ENTRY)

    # resnet18: 4 stages of 2 blocks; wrn_16_2: 3 groups of 2 blocks. Expected positions come
    # from the block lists, not from the rule.
    for name, n_stages in (("resnet18", 4), ("wrn_16_2", 3)):
        model = create_model(name, base_width=4, placement=ENTRY, eca_k=3)
        assert len(model.stages) == n_stages and all(len(stage) == 2 for stage in model.stages)
        found = _attention_names(model)
        assert sorted(found) == [f"stages.{s}.0.attn" for s in range(n_stages)], name
        assert all(type(m) is ECA and m.k_size == 3 for m in found.values())
        for s, stage in enumerate(model.stages):
            assert stage[0].attn is found[f"stages.{s}.0.attn"]
            assert stage[1].attn is None
            assert stage[0].shortcut_attn is None and stage[1].shortcut_attn is None
        assert model.placement == ENTRY
        out = model(torch.randn(2, 3, 32, 32))
        assert out.logits.shape == (2, 10) and out.hint is not None

    # the sites the rule was asked about, for the last model built (wrn_16_2)
    sites = entry_placements[-6:]
    assert [(s.family, s.stage, s.block) for s in sites] == [
        ("wrn", g, i) for g in range(3) for i in range(2)]
    assert [s.is_hint for s in sites] == [False] * 4 + [True, False]
    assert [s.shortcut for s in sites] == ["projection", "identity"] * 3  # 16 -> 32 in group 1

    # the additive one: on the shortcut of each stage's first block of resnet18, SE this time
    model = create_model("resnet18", base_width=4, placement=ENTRY_SHORTCUT, attn="se")
    found = _attention_names(model)
    assert sorted(found) == [f"stages.{s}.0.shortcut_attn" for s in range(4)]
    assert all(type(m) is ParallelSE for m in found.values())

    # families without an added shortcut refuse the additive form, in the usual words
    with pytest.raises(ValueError, match=r"^vgg8 \(vgg\) defines the ECA placements none, last, "
                                         rf"all, {ENTRY}; got '{ENTRY_SHORTCUT}'$"):
        create_model("vgg8", base_width=4, placement=ENTRY_SHORTCUT)
    with pytest.raises(ValueError, match=rf"^ShuffleNetV2 defines .*; got '{ENTRY_SHORTCUT}'$"):
        MODELS["shufflev2"].factory(num_classes=10, base_width=16, in_channels=3,
                                    placement=ENTRY_SHORTCUT, eca_k=None, attn="eca")
    # ... but host the multiplicative one: VGG's first conv of each of its 5 stages
    vgg = create_model("vgg8", base_width=4, placement=ENTRY)
    assert sorted(_attention_names(vgg)) == ["stages.0.2", "stages.1.2", "stages.2.2",
                                             "stages.3.2", "stem.2"]


def test_a_registered_placement_trains_and_reloads(entry_placements, tmp_path):
    import model_training
    from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint
    args = model_training.parse_args([
        "--dataset", "synthetic", "--synthetic-train-size", "64", "--synthetic-test-size", "32",
        "--epochs", "1", "--width", "8", "--device", "cpu", "--batch-size", "32",
        "--no-progress", "--output-dir", str(tmp_path), "--run-name", "entry",
        "--eca", ENTRY])
    assert args.placement == ENTRY
    model_training.main(args)
    path = str(tmp_path / "saved_pth_model" / "entry_baseline.pth")
    ckpt = load_checkpoint(path)
    assert (ckpt["model"]["arch"], ckpt["model"]["placement"]) == ("resnet18", ENTRY)
    # the hint block (stage 4, block 1) is also saved under its alias hint_block
    assert sorted(k for k in ckpt["state_dict"] if ".attn." in k) == [
        "hint_block.attn.conv.weight", *(f"stages.{s}.0.attn.conv.weight" for s in range(4))]
    model = model_from_checkpoint(ckpt, path)
    assert model.placement == ENTRY
    assert sorted(_attention_names(model)) == [f"stages.{s}.0.attn" for s in range(4)]
    for key, value in model.state_dict().items():
        assert torch.equal(value, ckpt["state_dict"][key]), key


def test_attention_types_get_only_the_options_they_declare():
    assert ATTENTION_LAYERS["eca"].options == ("k_size",)
    assert ATTENTION_LAYERS["se"].options == ()
    for cls in (SE, ParallelSE):
        assert "k_size" not in inspect.signature(cls).parameters
        with pytest.raises(TypeError):
            cls(16, k_size=3)
    se = create_attn(MULTIPLICATIVE, 16, "se", k_size=3)  # the kernel size does not reach SE
    assert type(se) is SE and se.fc1.out_channels == 1
    eca = create_attn(ADDITIVE, 16, "eca", k_size=5)
    assert type(eca) is ParallelECA and eca.k_size == 5 and eca.conv.kernel_size == (5,)
    model = create_model("resnet18", base_width=4, placement="all", eca_k=7, attn="se")
    assert {type(m) for m in _attention_names(model).values()} == {SE}
    model = create_model("resnet18", base_width=4, placement="all", eca_k=7)
    assert {m.k_size for m in _attention_names(model).values()} == {7}
    assert create_attn(None, 16, "se") is None
    with pytest.raises(ValueError, match="unknown attention form"):
        create_attn("sideways", 16, "eca")


def test_built_in_placements_cannot_be_removed_or_registered_twice():
    with pytest.raises(ValueError, match="built-in"):
        unregister_placement("parallel")
    with pytest.raises(ValueError, match="twice"):
        register_placement("all", lambda site: MULTIPLICATIVE)
    with pytest.raises(ValueError, match="forms"):
        register_placement("bogus_forms", lambda site: None, forms=("sideways",))
    assert tuple(ECA_PLACEMENTS) == ("none", "parallel", "last", "all")
