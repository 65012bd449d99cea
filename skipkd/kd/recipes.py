"""Published distillation recipes as one flag: `--kd-recipe NAME` on model_training_mid.py.

A recipe holds, per distillation term it covers, the term weight, the term's options, the
temperature of the logit term (--temperature) and the cross-entropy weight (--ce-weight) of a
published configuration. It fills only what the command line leaves unset: a --kd-weights entry,
a --kd-opt key, --ce-weight, --temperature, or a term's own weight flag (--beta for logit,
--alpha for skip) that the user gives wins over the recipe. It applies to the terms of --kd that
it covers (other terms, e.g. skip in skip+logit, keep their settings) and is refused when --kd
chooses none of them, or when the chosen terms' published CE weights disagree and --ce-weight
does not settle it. The run's arguments (and so its summary) record the recipe's name and the
values it resolved to.

* lskd: logit standardisation (Sun, Ren, Li, Wang & Cao, "Logit Standardization in Knowledge
  Distillation", CVPR 2024). Both logits are z-scored per sample before the softmax, with the
  temperature as the base temperature: z' = (z - mean(z)) / (std(z) + 1e-7), std with Bessel's
  correction (torch.std's default), as the authors' code (sunshangquan/logit-standardization-KD,
  mdistiller/distillers/KD.py and DKD.py, normalize()). Values from that repository: its README
  runs KD and DKD "+Ours" as --logit-stand --base-temp 2 --kd-weight 9 (tools/train.py), and
  its CTKD script (CTKD/scripts/run_cifar_distill.sh) writes the KD run as -r 0.1 -a 9
  --kd_T 2, i.e. CE weight 0.1, KD weight 9, T 2 (the CE weight is mdistiller's KD default,
  which tools/train.py leaves as it is). Why it may help: the student matches the teacher's
  logit relations rather than their scale, which a smaller student may not reach; z-scored
  logits (std 1) at T = 2 give soft, small KL values, hence the large weight.
    - logit: weight 9, --temperature 2, logit.standardize=1, CE weight 0.1.
    - dkd: alpha 9 and beta 72 (9 x DKD's own 1 and 8), dkd.temperature=2, dkd.standardize=1, CE
      weight 1 (DKD.CE_WEIGHT, left unchanged there). Read literally, tools/train.py sets
      BETA = ALPHA * 9 after ALPHA has become 9 (so 81) and writes the base temperature to the
      KD section, leaving DKD's own T at 4; this recipe follows the stated intent (both weights
      times 9, base temperature 2). Give dkd.beta=81 or dkd.temperature=4 to reproduce the code.
* dist-cifar: DIST (Huang, You, Wang, Qian & Xu, "Knowledge Distillation from A Stronger
  Teacher", NeurIPS 2022) with its CIFAR-100 configuration, configs/strategies/distill/
  dist_cifar.yaml of the authors' classification toolbox (DIST_KD's README trains CIFAR with it;
  read in the copy kept in hunto/LocalMamba, classification/): kd dist_t4 (DIST with beta =
  gamma = 1 and tau = 4, lib/models/losses/kd_loss.py), kd_loss_weight 2, ori_loss_weight 1.
    - dist: weight 2, dist.beta=1, dist.gamma=1, dist.tau=4, CE weight 1. The loss equals the
      term's defaults (beta = gamma = 2 at weight 1); the recipe states the published numbers.
  Why it may help: asking only for correlated predictions tolerates a much stronger teacher.
* hinton: Hinton KD as the CIFAR-100 benchmark runs it (RepDistiller scripts/
  run_cifar_distill.sh `--distill kd -r 0.1 -a 0.9`, --kd_T 4 by default; mdistiller's
  engine/cfg.py KD section: TEMPERATURE 4, CE_WEIGHT 0.1, KD_WEIGHT 0.9).
    - logit: weight 0.9, --temperature 4, CE weight 0.1.
  The literature's KD baseline: compare other methods against it rather than against CE
  weight 1 and KD weight 1 (this toolkit's --beta default).
* hinton-imagenet, dkd-imagenet, dist-imagenet: the ImageNet ResNet-34 -> ResNet-18
  configurations of the same methods (with --preset imagenet; docs/BENCHMARK.md).
    - hinton-imagenet: logit weight 0.5, --temperature 1, CE weight 0.5 (mdistiller
      configs/imagenet/r34_r18/kd.yaml; torchdistill's rrpr2020 KD config, alpha 0.5, T 1).
    - dkd-imagenet: dkd alpha 1, beta 0.5, temperature 1, warm-up 1 epoch, CE weight 1
      (mdistiller configs/imagenet/r34_r18/dkd.yaml, alpha from its engine/cfg.py).
    - dist-imagenet: dist weight 2 with beta = gamma = tau = 1, CE weight 1 (the authors'
      configs/strategies/distill/resnet_dist.yaml, kept in hunto/LocalMamba; torchdistill's
      sample DIST config).
"""
from dataclasses import dataclass, field

from .registry import term_options

__all__ = ["TermRecipe", "Recipe", "KD_RECIPES", "resolve_recipe"]


@dataclass(frozen=True)
class TermRecipe:
    """What a recipe sets for one term (None: leaves it as it is)."""
    weight: float | None = None
    options: dict = field(default_factory=dict)
    temperature: float | None = None  # --temperature: the logit term's
    ce_weight: float | None = None    # --ce-weight, the CE weight published with this term


@dataclass(frozen=True)
class Recipe:
    paper: str
    source: str
    terms: dict  # term name -> TermRecipe


KD_RECIPES = {
    "lskd": Recipe(
        "Sun, Ren, Li, Wang & Cao, Logit Standardization in Knowledge Distillation, CVPR 2024",
        "sunshangquan/logit-standardization-KD: README, tools/train.py, "
        "CTKD/scripts/run_cifar_distill.sh",
        {"logit": TermRecipe(weight=9.0, options={"standardize": True}, temperature=2.0,
                             ce_weight=0.1),
         "dkd": TermRecipe(options={"alpha": 9.0, "beta": 72.0, "temperature": 2.0,
                                    "standardize": True}, ce_weight=1.0)}),
    "dist-cifar": Recipe(
        "Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, "
        "NeurIPS 2022",
        "the authors' configs/strategies/distill/dist_cifar.yaml (hunto/LocalMamba, "
        "classification/)",
        {"dist": TermRecipe(weight=2.0, options={"beta": 1.0, "gamma": 1.0, "tau": 4.0},
                            ce_weight=1.0)}),
    "hinton": Recipe(
        "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015",
        "RepDistiller scripts/run_cifar_distill.sh (-r 0.1 -a 0.9, kd_T 4); mdistiller "
        "engine/cfg.py (KD)",
        {"logit": TermRecipe(weight=0.9, temperature=4.0, ce_weight=0.1)}),
    "hinton-imagenet": Recipe(
        "Hinton, Vinyals & Dean, Distilling the Knowledge in a Neural Network, 2015",
        "mdistiller configs/imagenet/r34_r18/kd.yaml (KD TEMPERATURE 1, CE_WEIGHT 0.5, "
        "KD_WEIGHT 0.5); torchdistill configs/official/ilsvrc2012/yoshitomo-matsubara/rrpr2020/"
        "kd-resnet18_from_resnet34.yaml (temperature 1.0, alpha 0.5)",
        {"logit": TermRecipe(weight=0.5, temperature=1.0, ce_weight=0.5)}),
    "dkd-imagenet": Recipe(
        "Zhao, Cui, Song, Qiu & Liang, Decoupled Knowledge Distillation, CVPR 2022",
        "mdistiller configs/imagenet/r34_r18/dkd.yaml (CE_WEIGHT 1.0, BETA 0.5, T 1.0, WARMUP 1; "
        "ALPHA 1.0 from mdistiller/engine/cfg.py)",
        {"dkd": TermRecipe(options={"alpha": 1.0, "beta": 0.5, "temperature": 1.0,
                                    "warmup": 1.0}, ce_weight=1.0)}),
    "dist-imagenet": Recipe(
        "Huang, You, Wang, Qian & Xu, Knowledge Distillation from A Stronger Teacher, "
        "NeurIPS 2022",
        "the authors' configs/strategies/distill/resnet_dist.yaml (copy in hunto/LocalMamba, "
        "classification/: kd dist, kd_loss_weight 2, ori_loss_weight 1, DIST(beta=1, gamma=1, "
        "tau=1)); torchdistill configs/sample/ilsvrc2012/dist/resnet18_from_resnet34.yaml",
        {"dist": TermRecipe(weight=2.0, options={"beta": 1.0, "gamma": 1.0, "tau": 1.0},
                            ce_weight=1.0)}),
}


def resolve_recipe(name: str, terms, weights=None, options=None, given=()) -> dict:
    """Recipe `name` applied to the chosen terms (--kd), under what the user gave: weights
    {term: w} (--kd-weights), options {term: {key: value}} (--kd-opt) and `given`, the names of
    what the command line set: scalar flags (ce_weight, temperature) and terms whose weight a
    flag of the script set (skipkd.cli maps --alpha to skip, --beta to logit).
    -> {"kd_weights": {...}, "kd_opt": {...}, "ce_weight": float | None,
    "temperature": float | None} (None: unchanged). ValueError (one line) for an unknown
    recipe, one that covers none of the terms, or covered terms whose CE weights disagree while
    --ce-weight is not given."""
    if name not in KD_RECIPES:
        raise ValueError(f"unknown --kd-recipe {name!r}; choose from {', '.join(KD_RECIPES)}")
    recipe, terms, given = KD_RECIPES[name], list(terms), set(given)
    covered = [t for t in terms if t in recipe.terms]
    if not covered:
        raise ValueError(f"--kd-recipe {name} sets up {' or '.join(recipe.terms)}, which --kd "
                         f"{'+'.join(terms) or 'none'} does not choose")
    out_w, out_o = dict(weights or {}), {t: dict(kv) for t, kv in (options or {}).items()}
    for t in covered:
        part = recipe.terms[t]
        if part.weight is not None and t not in out_w and t not in given:
            out_w[t] = float(part.weight)
        opts = {**part.options, **out_o.get(t, {})}  # the user's keys win
        if opts:
            cast = term_options(t, opts)
            out_o[t] = {k: cast[k] for k in opts}
    ce = {recipe.terms[t].ce_weight for t in covered} - {None}
    if len(ce) > 1 and "ce_weight" not in given:
        raise ValueError(f"--kd-recipe {name} publishes different CE weights for "
                         f"{' and '.join(covered)} ({', '.join(f'{c:g}' for c in sorted(ce))}); "
                         f"give --ce-weight")
    temps = {recipe.terms[t].temperature for t in covered} - {None}
    return {"kd_weights": out_w, "kd_opt": out_o,
            "ce_weight": ce.pop() if len(ce) == 1 and "ce_weight" not in given else None,
            "temperature": (temps.pop() if len(temps) == 1 and "temperature" not in given
                            else None)}
