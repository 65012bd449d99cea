"""A checked spec's trials: every grid point (or a search's trial) as a run key and the
script's command line, the shared teacher runs the students load, and Optuna's view of the
parameters (its distributions).
"""
import itertools

from skipkd.errors import UserError
from skipkd.io.outputs import RUN_KEY_MAX, validate_run_key
from utils.sweep.spec.keys import _KEY_BAD, _digest, _label, to_argv, trial_key
from utils.sweep.spec.normalize import axis_labels
from utils.sweep.spec.scripts import SWEEP_OWNED, TEACHER_SCRIPT

__all__ = ["expand", "grid_distributions", "search_distributions", "search_trial"]


def _set_flag(args: dict, parsers, script, flag, value):
    """args[flag] = value, dropping any alias of the same flag (a `name.sub` entry replaces
    only itself and the plain flag it is gathered into)."""
    base, dot, _ = flag.partition(".")
    if dot:
        drop = [f for f in args if f == flag or (f == base)]
    else:
        dest = parsers.dest(script, flag)
        drop = [f for f in args if parsers.dest(script, f) == dest]
    for other in drop:
        del args[other]
    args[flag] = value


def _teacher_run(spec, args: dict, parsers, study):
    """(key, argv, seed) of the shared teacher that the student run `args` needs, or None
    (no shared teachers, --kd none, or a --teacher-checkpoint of its own)."""
    script = spec["script"]
    student = {parsers.dest(script, f): v for f, v in args.items()}
    if spec["teacher"] is None or student.get("kd", "skip") == "none" or \
            student.get("teacher_checkpoint"):
        return None
    targs = {}
    for flag, value in args.items():
        dest = parsers.dest(script, flag)
        if dest in parsers.student_only() or parsers.dest(TEACHER_SCRIPT, flag) is None:
            continue
        targs[flag] = value
    _set_flag(targs, parsers, TEACHER_SCRIPT, "model", student.get("teacher") or "resnet34")
    if student.get("teacher_width") is not None:
        _set_flag(targs, parsers, TEACHER_SCRIPT, "width", student["teacher_width"])
    if student.get("teacher_epochs") is not None:
        _set_flag(targs, parsers, TEACHER_SCRIPT, "epochs", student["teacher_epochs"])
    if "placement" not in {parsers.dest(TEACHER_SCRIPT, f) for f in targs}:
        targs["eca"] = "none"  # the flag's old spelling: the trial keys of earlier studies stay
    for flag, value in spec["teacher"].items():
        if parsers.dest(TEACHER_SCRIPT, flag) is None:
            raise UserError(f"teacher: --{flag} is not a flag of {TEACHER_SCRIPT}")
        if parsers.dest(TEACHER_SCRIPT, flag) in SWEEP_OWNED:
            raise UserError(f"teacher: --{flag} is set by the sweep itself")
        _set_flag(targs, parsers, TEACHER_SCRIPT, flag, value)
    argv = to_argv(targs)
    by_dest = {parsers.dest(TEACHER_SCRIPT, f): v for f, v in targs.items()}
    # the student script refuses a checkpoint of another architecture or width than it asks
    for student_dest, teacher_dest, flag in (("teacher", "model", "--teacher"),
                                             ("teacher_width", "width", "--teacher-width")):
        want = student.get(student_dest)
        if want is not None and by_dest.get(teacher_dest) != want:
            raise UserError(f"teacher: the shared teacher's --{teacher_dest} "
                            f"{by_dest.get(teacher_dest)} differs from the students' {flag} "
                            f"{want}: set it once, with the students' {flag}")
    seed = by_dest.get("seed", 0)
    key = f"{study}_teacher_{by_dest['model']}_seed={_label(seed)}_{_digest(argv)}"
    return validate_run_key(_KEY_BAD.sub("-", key)[:RUN_KEY_MAX]), argv, seed


def _check_owned(spec, parsers):
    script = spec["script"]
    flags = list(spec["fixed"])
    for rule in (spec["grid"] or {}).values():
        flags += ([rule["flag"]] if "flag" in rule else
                  [f for v in rule["variants"].values() for f in v])
    flags += list((spec["search"] or {}).get("params", {}))
    for flag in flags:
        dest = parsers.dest(script, flag)
        if dest is None:
            raise UserError(f"--{flag.partition('.')[0]} is not a flag of {script} (see "
                            f"python {script} --help)")
        if dest in SWEEP_OWNED:
            raise UserError(f"--{flag} is set by the sweep itself (each trial is one run key "
                            f"in the sweep folder)")


def expand(spec: dict, study: str, parsers) -> dict:
    """The trials of a spec: {'trials': [...], 'teachers': [...]} for a grid (every point, in
    queue order: seeds outermost), and the one shared teacher of a search. Each trial:
    key, script, argv, axes ({axis: label}), config (label without the seed), seed, params
    (Optuna's view: {axis: value}), teacher_key."""
    _check_owned(spec, parsers)
    if spec["search"] is not None:
        return _expand_search(spec, study, parsers)
    teachers, trials = {}, []
    grid = spec["grid"]
    axes = sorted(grid, key=lambda a: a != "seed")  # seeds outermost
    choices = [[(lab, _axis_flags(grid[a], i)) for i, lab in enumerate(axis_labels(grid[a]))]
               for a in axes]
    for combo in itertools.product(*choices):
        labels = {a: lab for a, (lab, _) in zip(axes, combo)}
        if any(all(labels[a] in vals for a, vals in ex.items()) for ex in spec["exclude"]):
            continue
        args = dict(spec["fixed"])
        for _, flags in combo:
            for flag, value in flags.items():
                _set_flag(args, parsers, spec["script"], flag, value)
        parts = [(a, labels[a]) for a in grid]  # key in the file's axis order
        key = trial_key(study, parts)
        t = _teacher_run(spec, args, parsers, study) if spec["teacher"] is not None else None
        if t is not None:
            teachers.setdefault(t[0], {"key": t[0], "script": TEACHER_SCRIPT, "argv": t[1],
                                       "seed": t[2], "role": "teacher"})
            args["teacher-checkpoint"] = f"saved_pth_model/{t[0]}_baseline.pth"
        by_dest = {parsers.dest(spec["script"], f): v for f, v in args.items()}
        params = {a: (grid[a]["values"][axis_labels(grid[a]).index(labels[a])]
                      if "values" in grid[a] else labels[a]) for a in grid}
        trials.append({"key": key, "script": spec["script"], "argv": to_argv(args),
                       "axes": {a: labels[a] for a in grid},
                       "config": ", ".join(f"{a}={labels[a]}" for a in grid if a != "seed")
                       or "(fixed flags)",
                       "seed": by_dest.get("seed", 0), "params": params,
                       "teacher_key": t[0] if t else None})
    if not trials:
        raise UserError("the grid is empty (every point is excluded)")
    keys = [t["key"] for t in trials]
    if len(set(keys)) != len(keys):
        raise UserError("two grid points get the same run key; rename a variant")
    return {"trials": trials, "teachers": list(teachers.values()), "teacher_key": None}


def _expand_search(spec: dict, study: str, parsers) -> dict:
    """The plan of a search: no trials yet (workers sample them), and its shared teacher."""
    teachers = {}
    t = _teacher_run(spec, dict(spec["fixed"]), parsers, study)
    if t is not None:
        for flag in spec["search"]["params"]:
            dest = parsers.dest(spec["script"], flag)
            if dest not in parsers.student_only() and \
                    parsers.dest(TEACHER_SCRIPT, flag) is not None:
                raise UserError(f"search parameter --{flag} would change the shared teacher "
                                f"(it is a teacher flag too): drop 'teacher' or the parameter")
        teachers[t[0]] = {"key": t[0], "script": TEACHER_SCRIPT, "argv": t[1], "seed": t[2],
                          "role": "teacher"}
    return {"trials": [], "teachers": list(teachers.values()),
            "teacher_key": t[0] if t else None}


def _axis_flags(rule, i) -> dict:
    if "variants" in rule:
        return list(rule["variants"].values())[i]
    return {rule["flag"]: rule["values"][i]}


def grid_distributions(spec) -> dict:
    """Optuna's view of a grid: one categorical parameter per axis."""
    from optuna.distributions import CategoricalDistribution
    return {a: CategoricalDistribution(rule["values"] if "values" in rule
                                       else list(rule["variants"]))
            for a, rule in (spec["grid"] or {}).items()}


def search_distributions(spec) -> dict:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution
    out = {}
    for flag, rule in spec["search"]["params"].items():
        if "choices" in rule:
            out[flag] = CategoricalDistribution(rule["choices"])
        elif rule["type"] == "int":
            out[flag] = IntDistribution(rule["low"], rule["high"], log=rule["log"],
                                        step=rule["step"] or 1)
        else:
            out[flag] = FloatDistribution(rule["low"], rule["high"], log=rule["log"],
                                          step=rule["step"])
    return out


def search_trial(spec: dict, study: str, number: int, params: dict, teacher_key) -> dict:
    """The trial record of search trial `number` with sampled `params` (no parsers needed)."""
    args = dict(spec["fixed"])
    args.update(params)
    if teacher_key:
        args["teacher-checkpoint"] = f"saved_pth_model/{teacher_key}_baseline.pth"
    key = trial_key(study, [("trial", str(number))])
    return {"key": key, "script": spec["script"], "argv": to_argv(args), "axes": {},
            "config": ", ".join(f"{k}={_label(v)}" for k, v in params.items()),
            "seed": args.get("seed", 0), "params": params, "teacher_key": teacher_key}
