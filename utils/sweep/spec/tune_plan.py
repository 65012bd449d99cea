"""A tune file's searches and retrain grid as plans, every command line checked by the scripts'
parsers before anything is written (spec/tune.py has the tune file's shape)."""
from skipkd.errors import UserError
from utils.sweep.spec.check import check_argv, check_plan
from utils.sweep.spec.expand import expand, search_trial
from utils.sweep.spec.normalize import normalize_spec
from utils.sweep.spec.breadth import check_breadth, check_warmups
from utils.sweep.spec.tune import (confirm_name, confirm_raw, retrain_name, retrain_raw,
                                   search_name, search_raw)

__all__ = ["sub_specs", "param_ends"]


def sub_specs(spec, name, parsers):
    """Every search's (study name, normalized spec, plan), checked by the scripts' parsers,
    and the retrain grid checked at the start settings (at create time)."""
    check_breadth(spec["tune"], spec["fixed"], "tune", parsers.kd_terms())
    out = []
    for label, m in spec["tune"]["methods"].items():
        if not m["params"]:
            continue
        sname = search_name(name, label)
        sspec = normalize_spec(search_raw(spec, label), f"tune method {label}")
        plan = expand(sspec, sname, parsers)
        check_plan(sspec, plan, parsers)
        if m["start"] is not None:
            t = search_trial(sspec, "check", 0, m["start"], None)
            args = check_argv(parsers, t["script"], t["argv"], f"method {label}, start setting")
            check_warmups(args, f"tune method {label}, start setting", parsers.kd_terms())
        _check_held_out(parsers, sspec, label)
        out.append((sname, sspec, plan))
    # the retrain as it may come out: every searched method with a tuned row at its low ends
    stand_in = {label: {f: param_ends(r)[0] for f, r in m["params"].items()}
                for label, m in spec["tune"]["methods"].items() if m["params"]}
    rspec = normalize_spec(retrain_raw(spec, stand_in, force=True), "tune retrain")
    plans = [(rspec, expand(rspec, retrain_name(name), parsers))]
    if spec["tune"]["confirm"] is not None:  # and the confirmation runs, likewise
        cands = {label: [p] for label, p in stand_in.items()}
        cspec = normalize_spec(confirm_raw(spec, cands), "tune confirm")
        plans.append((cspec, expand(cspec, confirm_name(name), parsers)))
    for pspec, plan in plans:
        check_plan(pspec, plan, parsers)
        for t in plan["trials"]:
            check_warmups(check_argv(parsers, t["script"], t["argv"], f"trial {t['key']}"),
                          f"trial {t['key']}", parsers.kd_terms())
    return out


def param_ends(rule) -> list:
    return list(rule["choices"]) if "choices" in rule else [rule["low"], rule["high"]]


def _check_held_out(parsers, sspec, label):
    """A search is scored on a held-out split: --val-split must end up > 0 (a preset such as
    'crd' or 'original' sets 0, the test set as validation)."""
    params = sspec["search"]["params"]
    base = {f: param_ends(r)[0] for f, r in params.items()}
    for flag, rule in params.items():  # each end of each parameter, as check_plan parses them
        for value in param_ends(rule):
            t = search_trial(sspec, "check", 0, {**base, flag: value}, None)
            args = check_argv(parsers, t["script"], t["argv"], f"tune method {label}")
            check_warmups(args, f"tune method {label}, --{flag} {value}", parsers.kd_terms())
            if not getattr(args, "val_split", 0):
                raise UserError(f"tune method {label}: the search needs a held-out validation "
                                f"split (--val-split > 0) at every point it may try: it never "
                                f"reads the test set")
