"""Equal breadth: what `sweep.py create` requires of a tune file so that every method had the
same chance (docs/RESULTS.md, "The rule"; docs/SWEEPS.md, "Equal-budget tuning").

- Every distillation method names its main weight (`weight`), searched on a log scale from
  WEIGHT_SPAN[0] to WEIGHT_SPAN[1] times its start value, and the start value is the term's
  published default weight (docs/METHODS.md).
- Every term with a temperature searches it, over the same range in every method.
- Every distillation method searches the CE weight, over the same range in every method.
- A loss variant with its own scale is its own method: an option that changes the term's scale
  (SCALE_OPTIONS) is not searched beside its weight.
- No combination of searched options is one the term refuses (KDTerm.check_combination).
- The student alone (kd none) searches the recipe knobs every method shares, SHARED_RECIPE,
  with the same budget.
- No warm-up is longer than the run (checked on the parsed command lines: tune_plan.py).
"""
import itertools
import math

from skipkd.errors import UserError

__all__ = ["WEIGHT_SPAN", "TEMPERATURE_FLAGS", "SCALE_OPTIONS", "SHARED_RECIPE",
           "check_breadth", "check_warmups"]

WEIGHT_SPAN = (1 / 30, 100)
# the flag that sets each term's temperature (the logit term's is the script's own)
TEMPERATURE_FLAGS = {"logit": "temperature", "dkd": "kd-opt.dkd.temperature",
                     "dist": "kd-opt.dist.tau"}
# options whose values put the term's loss on another scale (mse vs cosine differ by ~2,000x;
# one hint vs one per stage sums several terms)
SCALE_OPTIONS = ("kd-opt.skip.loss", "kd-opt.skip.stages", "kd-opt.skip.stage_weights")
SHARED_RECIPE = ("lr", "weight-decay")
# the flags that set a term's weight
_LEGACY = {"alpha": "skip", "beta": "logit"}
_REL = 0.02  # relative tolerance of a range end (a file gives 0.01 for 0.3/30)


def _weight_term(flag):
    if flag in _LEGACY:
        return _LEGACY[flag]
    if flag.startswith("kd-weights."):
        return flag.partition(".")[2]
    return None


def _close(a, b):
    return abs(a - b) <= _REL * max(abs(a), abs(b))


def _range(rule):
    return (float(rule["low"]), float(rule["high"]), bool(rule.get("log")))


def check_breadth(tune: dict, fixed: dict, what: str, KD_TERMS: dict):
    """Refuse a tune whose methods do not search with the same breadth (one line each);
    KD_TERMS: the terms' registry (Parsers.kd_terms(): their defaults and rules)."""
    temps, ces = {}, {}
    for label, m in tune["methods"].items():
        mwhat = f"{what}.methods.{label}"
        kd = str(m["flags"].get("kd", fixed.get("kd", "skip")))
        terms = [] if kd == "none" else kd.split("+")
        params = m["params"]
        if not terms:
            missing = [f for f in SHARED_RECIPE if f not in params]
            if missing:
                raise UserError(f"{mwhat}: the student alone gets the same budget over the "
                                f"recipe every method shares: search --{missing[0]} too "
                                f"(unequal breadth)")
            continue
        if not params:
            raise UserError(f"{mwhat}: every method is searched with the same budget; this one "
                            f"has no params (unequal breadth)")
        w = m["weight"]
        if w is None:
            raise UserError(f"{mwhat}: name its main weight (\"weight\": the searched flag), "
                            f"searched over x{WEIGHT_SPAN[0]:.3g}..x{WEIGHT_SPAN[1]:g} of its "
                            f"published default")
        term = _weight_term(w)
        if term not in terms or term not in KD_TERMS:
            raise UserError(f"{mwhat}.weight: --{w} is not the weight of one of its terms "
                            f"({kd})")
        default = float(KD_TERMS[term].default_weight)
        start = (m["start"] or {}).get(w)
        rule = params[w]
        if isinstance(start, bool) or not isinstance(start, (int, float)) or \
                not _close(float(start), default):
            raise UserError(f"{mwhat}.start: --{w} starts at its published default, {default:g} "
                            f"(got {start!r}): the span is relative to it")
        if "choices" in rule or not rule.get("log") or not (
                _close(rule["low"], default * WEIGHT_SPAN[0]) and
                _close(rule["high"], default * WEIGHT_SPAN[1])):
            raise UserError(f"{mwhat}.params.{w}: unequal breadth: every method searches its "
                            f"main weight on a log scale over x{WEIGHT_SPAN[0]:.3g}..x"
                            f"{WEIGHT_SPAN[1]:g} of its default: {default * WEIGHT_SPAN[0]:.4g}.."
                            f"{default * WEIGHT_SPAN[1]:.4g}")
        scaled = [f for f in params if f in SCALE_OPTIONS]
        if scaled:
            raise UserError(f"{mwhat}.params: --{scaled[0]} changes the scale of the loss its "
                            f"weight multiplies: make each variant its own method with its own "
                            f"weight range")
        for t in terms:
            flag = TEMPERATURE_FLAGS.get(t)
            if flag is None:
                continue
            if flag not in params or "choices" in params[flag]:
                raise UserError(f"{mwhat}.params: term {t} has a temperature: search --{flag} "
                                f"(a range) like every method that has one")
            temps[f"{label} ({t})"] = _range(params[flag])
        if "ce-weight" not in params or "choices" in params["ce-weight"]:
            raise UserError(f"{mwhat}.params: every distillation method searches --ce-weight "
                            f"(a range), over the same range")
        ces[label] = _range(params["ce-weight"])
        given = {**fixed, **m["flags"]}
        _check_combinations(label, params, terms, KD_TERMS, mwhat, given)
    for name, ranges in (("temperature", temps), ("CE weight", ces)):
        distinct = sorted(set(ranges.values()))
        if len(distinct) > 1:
            a, b = (next(lab for lab, r in ranges.items() if r == d) for d in distinct[:2])
            raise UserError(f"{what}: unequal breadth: the {name} range of {a} {ranges[a][:2]} "
                            f"differs from {b}'s {ranges[b][:2]}")


def _check_combinations(label, params, terms, terms_registry, what, given=None):
    """Every combination of the searched choices of each term's options, with the options the
    method's flags set (`given`: flag -> value), is one the term accepts."""
    for t in terms:
        cls = terms_registry[t]
        prefix = f"kd-opt.{t}."
        set_here = {f[len(prefix):]: v for f, v in (given or {}).items() if f.startswith(prefix)}
        chosen = {f[len(prefix):]: r["choices"] for f, r in params.items()
                  if f.startswith(prefix) and "choices" in r}
        if not chosen:
            continue
        keys = list(chosen)
        n = math.prod(len(v) for v in chosen.values())
        if n > 10_000:
            raise UserError(f"{what}.params: {n:,} combinations of {t}'s options (at most 10,000)")
        for combo in itertools.product(*(chosen[k] for k in keys)):
            opts = {**cls.options, **set_here, **dict(zip(keys, combo))}
            try:
                cls.check_combination(opts)
            except (ValueError, KeyError, TypeError) as exc:
                pairs = ", ".join(f"{t}.{k}={v}" for k, v in zip(keys, combo))
                raise UserError(f"{what}.params: the search may draw {pairs}, which the term "
                                f"refuses ({exc}): a lost trial; search fewer choices") from None


def check_warmups(args, what: str, KD_TERMS: dict):
    """A warm-up (the recipe's, or a term's `warmup` option, its default included) no longer
    than the run; `args` is a parsed command line, KD_TERMS the terms' registry."""
    epochs = getattr(args, "epochs", None)
    if epochs is None:
        return
    warm = getattr(args, "warmup_epochs", None)
    if warm is not None and warm > epochs:
        raise UserError(f"{what}: --warmup-epochs {warm:g} is longer than the run ({epochs} "
                        f"epochs)")
    kd = getattr(args, "kd", "none") or "none"
    for t in ([] if kd == "none" else kd.split("+")):
        cls = KD_TERMS.get(t)
        if cls is None or "warmup" not in cls.options:
            continue
        value = float({**cls.options, **(getattr(args, "kd_opt", {}) or {}).get(t, {})}["warmup"])
        if value > epochs:
            raise UserError(f"{what}: {t}.warmup {value:g} is longer than the run ({epochs} "
                            f"epochs): its weight never reaches full strength; set "
                            f"kd-opt.{t}.warmup <= {epochs}")
