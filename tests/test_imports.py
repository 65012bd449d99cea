"""The shape of the code, read from its imports (docs/ARCHITECTURE.md draws it): no import
circle, no module that imports a root script, no function-level import of the project inside a
package (an entry script may import lazily to keep --help fast), utils.sweep's layers import
downwards only, and `import skipkd` loads no client."""
import ast
import os
import re
import subprocess
import tempfile
import sys

import pytest

from conftest import REPO_ROOT

PACKAGES = ("skipkd", "utils")
SWEEP_LAYERS = ("spec", "run", "report")  # lowest first: a layer imports only those before it


def _modules() -> dict:
    """{dotted module name: path} of every module of the project (tests aside)."""
    out = {}
    for folder, dirs, files in os.walk(REPO_ROOT):
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in
                   ("tests", "__pycache__", "data", "sweeps", "runs")]
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                dotted = os.path.relpath(path, REPO_ROOT)[:-3].replace(os.sep, ".")
                out[dotted.removesuffix(".__init__")] = path
    return out


MODULES = _modules()
ROOT_SCRIPTS = {m for m, p in MODULES.items() if "." not in m
                and os.path.dirname(p) == REPO_ROOT}


def _targets(module, node) -> list:
    """The project modules an import statement of `module` loads."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in MODULES]
    package = module if MODULES[module].endswith("__init__.py") else module.rpartition(".")[0]
    if node.level:
        parts = package.split(".")
        base = ".".join(parts[:len(parts) - node.level + 1] + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    out = []
    for alias in node.names:
        if f"{base}.{alias.name}" in MODULES:
            out.append(f"{base}.{alias.name}")
        elif base in MODULES:
            out.append(base)
    return out


def import_graph():
    """-> ({module: {imported project modules}}, [(module, imported, line) imported inside a
    function])."""
    edges, lazy = {}, []
    for module, path in MODULES.items():
        with open(path, encoding="utf-8") as f:
            tree = ast.parse(f.read())

        def visit(node, in_function):
            for child in ast.iter_child_nodes(node):
                if isinstance(child, (ast.Import, ast.ImportFrom)):
                    for target in _targets(module, child):
                        edges.setdefault(module, set()).add(target)
                        if in_function:
                            lazy.append((module, target, child.lineno))
                visit(child, in_function or isinstance(child, (ast.FunctionDef,
                                                                ast.AsyncFunctionDef)))
        visit(tree, False)
    return edges, lazy


EDGES, LAZY = import_graph()


def _cycle(edges):
    """One import circle as a list of modules, or None."""
    state = {}

    def visit(node, path):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                return path[path.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt, path + [nxt])
                if found:
                    return found
        state[node] = "done"
        return None

    for start in sorted(edges):
        if start not in state:
            found = visit(start, [start])
            if found:
                return found
    return None


def test_no_import_circle():
    assert _cycle(EDGES) is None, " -> ".join(_cycle(EDGES))


def test_the_cycle_finder_finds_one():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}}) is None


def test_no_function_level_import_of_the_project_in_a_package():
    bad = [f"{m}:{line} imports {t}" for m, t, line in LAZY if m.startswith(PACKAGES)]
    assert not bad, bad


def test_no_module_imports_a_root_script():
    bad = [f"{m} imports {t}" for m, ts in EDGES.items() for t in ts if t in ROOT_SCRIPTS]
    assert not bad, bad


@pytest.mark.parametrize("layer", SWEEP_LAYERS)
def test_sweep_layers_import_downwards_only(layer):
    above = SWEEP_LAYERS[SWEEP_LAYERS.index(layer) + 1:]
    here = f"utils.sweep.{layer}"
    bad = [f"{m} imports {t}" for m, ts in EDGES.items() if m.startswith(here)
           for t in ts if t.startswith(tuple(f"utils.sweep.{a}" for a in above))]
    assert not bad, bad


def test_skipkd_imports_no_client():
    """skipkd is the library: nothing in it imports utils or a root script, at import time or
    later (the static graph), and importing it loads neither."""
    bad = [f"{m} imports {t}" for m, ts in EDGES.items() if m.startswith("skipkd")
           for t in ts if not t.startswith("skipkd")]
    assert not bad, bad
    code = ("import sys, skipkd, skipkd.cli, skipkd.train.distill, skipkd.train.baseline\n"
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            f"{sorted(ROOT_SCRIPTS | {'utils'})!r}))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out == "[]", out


def test_no_getattr_on_args_in_the_library():
    """The library reads the parsed arguments by name (args.lr), never through
    getattr(args, name, default): a default written a second time drifts from the parser's."""
    bad = []
    on_args = re.compile(r"getattr\(\s*[\w.]*\bargs\s*,")  # args, run.args, self.args ...
    for module, path in MODULES.items():
        if module.startswith("skipkd"):
            with open(path, encoding="utf-8") as f:
                bad += [f"{module}:{i}" for i, line in enumerate(f, 1) if on_args.search(line)]
    assert not bad, bad
    assert on_args.search('x = getattr(run.args, "bn_recalibrate", 0)')


def test_torchvision_is_imported_only_when_a_tv_network_is_asked_for():
    """A run of the toolkit's own networks never imports torchvision (about a second of every
    script's start), nor, on the CPU, torch.compile's compiler (the CUDA-graph step marker would
    load it: another second); a name the toolkit's own families lack (a tv_ network, or an
    unknown name, whose message lists every model) loads torchvision's classifiers. In a fresh
    interpreter."""
    code = ("import runpy, sys\n"
            "sys.argv = ['model_training_mid.py', '--dataset', 'synthetic', "
            "'--synthetic-train-size', '40', '--synthetic-test-size', '20', '--width', '4', "
            "'--epochs', '1', '--batch-size', '20', '--no-progress', '--no-tensorboard', "
            "'--device', 'cpu', '--precision', 'fp32', '--output-dir', sys.argv[1], "
            "'--run-name', 'r']\n"
            "status = 0\n"
            "try:\n"
            "    runpy.run_path('model_training_mid.py', run_name='__main__')\n"
            "except SystemExit as e:\n"
            "    status = e.code\n"
            "print('exit', status)\n"
            "print('compiler', 'torch._inductor.compile_fx' in sys.modules)\n"
            "from skipkd.models import MODELS\n"
            "print('resnet18' in MODELS, 'torchvision' in sys.modules)\n"
            "print('tv_resnet18' in MODELS, 'torchvision' in sys.modules)\n")
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-c", code, out], cwd=REPO_ROOT,
                              capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-4:] == ["exit 0", "compiler False", "True False",
                                                          "True True"], \
        proc.stdout[-2000:]
