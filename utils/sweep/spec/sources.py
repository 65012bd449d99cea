"""Where a raw spec comes from: a grid file (JSON or TOML) or the flags of `sweep.py create`
(--args, --axis, --seeds, --search, ...). Both give the raw dict that spec.normalize_spec checks.
"""
import json
import shlex

from skipkd.errors import UserError
from utils.sweep.spec.normalize import TOP_KEYS

__all__ = ["load_spec_file", "spec_from_flags", "tokens_to_args", "baseline_flag"]


def _scalar(text: str):
    """'3' -> 3, '0.5' -> 0.5, anything else stays text (the scripts parse true/false)."""
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text


def tokens_to_args(tokens, what: str) -> dict:
    """['--width', '8', '--no-progress', '--kd-opt', 'a=1', '--kd-opt', 'b=2'] ->
    {'width': 8, 'progress': False, 'kd-opt': ['a=1', 'b=2']}."""
    out, i = {}, 0
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise UserError(f"{what}: expected a --flag, got {tok!r}")
        name, eq, value = tok[2:].partition("=")
        i += 1
        if eq:
            values = [value]
        else:
            values = []
            while i < len(tokens) and not tokens[i].startswith("--"):
                values.append(tokens[i])
                i += 1
        if len(values) > 1:
            raise UserError(f"{what}: --{name} takes one value, got {' '.join(values)}")
        if not values:
            name, value = (name[3:], False) if name.startswith("no-") else (name, True)
        else:
            value = _scalar(values[0])
        if name in out:
            prev = out[name]
            out[name] = (prev if isinstance(prev, list) else [prev]) + [value]
        else:
            out[name] = value
    return out


def load_spec_file(path: str) -> dict:
    """The raw spec of a .json or .toml grid file; unreadable or malformed: one-line error."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except FileNotFoundError:
        raise UserError(f"grid file {path} does not exist") from None
    except IsADirectoryError:
        raise UserError(f"grid file {path} is a folder") from None
    except OSError as exc:
        raise UserError(f"cannot read grid file {path}: {exc.strerror}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise UserError(f"grid file {path} is not UTF-8 text") from None
    if path.lower().endswith(".toml"):
        import tomllib
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise UserError(f"grid file {path}: invalid TOML: {exc}") from None
        except RecursionError:
            raise UserError(f"grid file {path}: nested too deeply") from None
    else:
        try:
            raw = json.loads(text)
        except json.JSONDecodeError as exc:
            raise UserError(f"grid file {path}: invalid JSON: {exc.msg} at line {exc.lineno} "
                            f"column {exc.colno}") from None
        except RecursionError:
            raise UserError(f"grid file {path}: nested too deeply") from None
        except ValueError as exc:  # e.g. an integer of more digits than Python converts
            raise UserError(f"grid file {path}: {str(exc).splitlines()[0][:120]}") from None
    if not isinstance(raw, dict):
        raise UserError(f"grid file {path}: expected an object of {', '.join(TOP_KEYS)}")
    return raw


def _parse_search_flag(text: str):
    """NAME=float:LOW:HIGH[:log] | int:LOW:HIGH[:log] | choice:A,B,... -> (name, param spec)."""
    name, eq, rule = text.partition("=")
    kind, _, rest = rule.partition(":")
    if not eq or not name or kind not in ("float", "int", "choice") or not rest:
        raise UserError(f"--search {text!r}: expected NAME=float:LOW:HIGH[:log], "
                        f"NAME=int:LOW:HIGH[:log] or NAME=choice:A,B,...")
    if kind == "choice":
        return name, {"choices": [_scalar(v) for v in rest.split(",") if v]}
    bits = rest.split(":")
    if len(bits) not in (2, 3) or (len(bits) == 3 and bits[2] != "log"):
        raise UserError(f"--search {text!r}: expected {kind}:LOW:HIGH or {kind}:LOW:HIGH:log")
    cast = float if kind == "float" else int
    try:
        low, high = cast(bits[0]), cast(bits[1])
    except ValueError:
        raise UserError(f"--search {text!r}: LOW and HIGH must be {kind}s") from None
    return name, {"type": kind, "low": low, "high": high, "log": len(bits) == 3}


def spec_from_flags(args) -> dict:
    """The raw spec that `sweep.py create` flags describe (no --grid file)."""
    raw = {"script": args.script or "model_training_mid.py",
           "fixed": tokens_to_args(shlex.split(args.args or ""), "--args")}
    grid = {}
    for item in args.axis or ():
        name, eq, values = item.partition("=")
        if not eq or not name or not values:
            raise UserError(f"--axis {item!r}: expected NAME=V1,V2,...")
        grid[name] = [_scalar(v) for v in values.split(",") if v]
    if args.seeds:
        try:
            grid = {"seed": [int(s) for s in args.seeds.split(",") if s.strip()], **grid}
        except ValueError:
            raise UserError(f"--seeds {args.seeds!r}: expected comma-separated integers") from None
    if grid:
        raw["grid"] = grid
    if args.search:
        raw["search"] = {"params": dict(_parse_search_flag(s) for s in args.search)}
        if args.n_trials is not None:
            raw["search"]["n_trials"] = args.n_trials
        if args.pruner is not None:
            raw["search"]["pruner"] = args.pruner
    elif args.n_trials is not None or args.pruner is not None:
        raise UserError("--n-trials and --pruner belong to a search (--search NAME=...)")
    if args.teacher_args is not None:
        raw["teacher"] = tokens_to_args(shlex.split(args.teacher_args), "--teacher-args")
    if args.baseline:
        raw["baseline"] = baseline_flag(args.baseline)
    return raw


def baseline_flag(text: str) -> dict:
    """--baseline AXIS=VALUE -> {axis: value} (checked against the grid by normalize_baseline)."""
    name, eq, value = text.partition("=")
    if not eq:
        raise UserError(f"--baseline {text!r}: expected AXIS=VALUE")
    return {name: value}
