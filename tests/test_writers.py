"""One way to write a file: every call in the source tree that writes, appends to or replaces a
file goes through skipkd/io/files.py (atomic_write and its kin, open_append, open_lock), which
never follows a link. This test reads the source of every module (tests aside: they write in
their own temporary folders) and fails on any other write call, unless the allow-list below
names it with the reason it is safe. A stale allow-list entry fails too."""
import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SAFE_OPENER = "skipkd/io/files.py"

# (file, call) -> why this write is safe without the safe opener
ALLOWED = {
    ("skipkd/train/tensorboard.py", "SummaryWriter"):
        "TensorBoard writes its own event files into runs/KEY, a folder RunOutputs refuses when "
        "it is a link (outputs.py _check_tensorboard_writable)",
    ("evaluate.py", "SummaryWriter"):
        "the --logdir folder is checked by check_output_dir first (no link, not an input)",
    ("skipkd/train/distributed.py", "open"): "os.devnull, for the non-zero ranks' output",
    ("sweep.py", "os.open"): "os.devnull, after a broken pipe",
    ("utils/preload/client.py", "os.open"): "os.devnull, for a script's stdout=DEVNULL",
    ("utils/preload/server.py", "os.open"): "os.devnull (read-only), a script's stdin",
    ("convertToOnnx.py", "torch.onnx.export"):
        "the exporter needs a file name: it writes a fresh mkstemp file, which export_to then "
        "moves into place with os.replace (the link, never its target, is replaced)",
    ("convertToOnnx.py", "onnx.save"): "the same private mkstemp file as torch.onnx.export",
    ("convertToOnnx.py", "os.replace"): "export_to's atomic move of its own mkstemp file",
    ("visualize.py", "os.replace"):
        "graphviz renders into a private TemporaryDirectory; only the image is moved into place",
    ("visualize.py", "render"): "into the private TemporaryDirectory (render's directory=)",
    ("skipkd/io/outputs.py", "os.replace"):
        "RunOutputs.write_files puts the temporaries of write_temporary (the safe opener) in "
        "place once the run's record lists them: atomic, a link is replaced, never followed",
}

# call -> index of the argument that says where it writes (None: the call writes by itself)
_TARGET_ARG = {"savefig": 0, "np.save": 0, "np.savez": 0, "np.savetxt": 0, "torch.save": 1,
               "json.dump": 1, "pickle.dump": 1, "onnx.save": 1, "torch.onnx.export": 2}
_ALWAYS = {"os.open", "os.replace", "os.rename", "shutil.copy", "shutil.copyfile",
           "shutil.copy2", "shutil.move", "SummaryWriter", "write_text", "write_bytes",
           "write_html", "write_image", "to_csv", "render"}


def _name(func) -> str:
    """'np.save' for np.save(...), 'savefig' for fig.savefig(...), 'open' for open(...); ''
    for a call of a local function or of another object's open (run.open)."""
    if isinstance(func, ast.Name):
        return func.id if func.id in ("open", "SummaryWriter") else ""
    if isinstance(func, ast.Attribute):
        if isinstance(func.value, ast.Name) and func.value.id in ("os", "np", "numpy", "torch",
                                                                  "json", "pickle", "onnx",
                                                                  "shutil", "io", "builtins"):
            return f"{func.value.id.replace('numpy', 'np')}.{func.attr}"
        if (isinstance(func.value, ast.Attribute) and isinstance(func.value.value, ast.Name)
                and func.value.value.id == "torch" and func.value.attr == "onnx"):
            return f"torch.onnx.{func.attr}"
        return "" if func.attr == "open" else func.attr
    return ""


def _mode(call):
    for kw in call.keywords:
        if kw.arg == "mode":
            return kw.value
    return call.args[1] if len(call.args) > 1 else None


def _handed_in(node, parents) -> bool:
    """Whether `node` is a parameter of an enclosing lambda (a file object that a safe writer,
    e.g. atomic_write(path, lambda f: ...), hands in), or a parameter named f of a function."""
    if not isinstance(node, ast.Name):
        return False
    for p in parents:
        if isinstance(p, ast.Lambda) and node.id in {a.arg for a in p.args.args}:
            return True
        if isinstance(p, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.id == "f" and \
                "f" in {a.arg for a in p.args.args}:
            return True
    return False


def write_calls(source: str):
    """[(call name, line)] of the calls in `source` that write a file without the safe opener."""
    tree = ast.parse(source)
    found = []

    def visit(node, parents):
        if isinstance(node, ast.Call):
            name = _name(node.func)
            if name in ("open", "io.open", "builtins.open"):
                mode = _mode(node)
                if mode is not None and not (isinstance(mode, ast.Constant)
                                             and isinstance(mode.value, str)
                                             and not set(mode.value) & set("wax+")):
                    found.append(("open", node.lineno))
            elif name in _TARGET_ARG:
                i = _TARGET_ARG[name]
                target = node.args[i] if len(node.args) > i else None
                if not _handed_in(target, parents):
                    found.append((name, node.lineno))
            elif name in _ALWAYS:
                found.append((name, node.lineno))
        for child in ast.iter_child_nodes(node):
            visit(child, parents + [node])

    visit(tree, [])
    return found


def _sources():
    for folder, dirs, files in os.walk(REPO):
        rel_folder = os.path.relpath(folder, REPO)
        dirs[:] = [d for d in dirs if not d.startswith(".") and d not in ("tests", "__pycache__",
                                                                          "data", "sweeps", "runs")]
        for name in sorted(files):
            if name.endswith(".py"):
                rel = os.path.normpath(os.path.join(rel_folder, name)).replace(os.sep, "/")
                yield rel, os.path.join(folder, name)


def test_every_write_goes_through_the_safe_opener():
    bad, used = [], set()
    for rel, path in _sources():
        if rel == SAFE_OPENER:
            continue
        with open(path, encoding="utf-8") as f:
            calls = write_calls(f.read())
        for name, line in calls:
            if (rel, name) in ALLOWED:
                used.add((rel, name))
            else:
                bad.append(f"{rel}:{line}: {name}(...)")
    assert not bad, ("write calls outside skipkd/io/files.py (use atomic_write, "
                     "atomic_write_text, open_append or open_lock, or add an ALLOWED entry with "
                     "the reason): " + "; ".join(bad))
    stale = sorted(set(ALLOWED) - used)
    assert not stale, f"ALLOWED entries that no longer match a call: {stale}"


@pytest.mark.parametrize("source, expected", [
    ("open(p, 'a')", ["open"]),
    ("open(p, mode='w')", ["open"]),
    ("open(p, m)", ["open"]),             # a mode the test cannot read is a write
    ("open(p)", []),
    ("run.open(key, roles)", []),          # another object's open: not a file
    ("render()", []),                      # a local function
    ("open(p, 'rb')", []),
    ("np.save(path, x)", ["np.save"]),
    ("atomic_write(p, lambda f: np.save(f, x), 'wb')", []),
    ("fig.savefig('out.png')", ["savefig"]),
    ("atomic_write(p, lambda f, m=fig: m.savefig(f, format='png'), 'wb')", []),
    ("torch.save(obj, path)", ["torch.save"]),
    ("def save(path):\n    torch.save(obj, path)", ["torch.save"]),
    ("def write(f):\n    json.dump(obj, f)", []),
    ("Path(p).write_text('x')", ["write_text"]),
    ("os.open(p, os.O_WRONLY)", ["os.open"]),
    ("torch.onnx.export(m, (x,), path)", ["torch.onnx.export"]),
])
def test_the_walk_finds_write_calls(source, expected):
    """The detector itself, on snippets: a test that could never fail would prove nothing."""
    assert [name for name, _ in write_calls(source)] == expected


def _limit_file_size(limit):
    """preexec_fn: writes past `limit` bytes fail with EFBIG (as a full disk fails with ENOSPC),
    instead of killing the process with SIGXFSZ."""
    def set_limit():
        import resource
        import signal
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))
    return set_limit


def test_a_failed_torch_save_is_the_os_error_and_keeps_the_old_file(tmp_path):
    """torch.save wraps the file's OSError in a RuntimeError: atomic_write gives the OSError
    back (errno and file name), and the earlier file at the path is kept whole."""
    import subprocess
    import sys
    target = tmp_path / "model.pth"
    target.write_bytes(b"the earlier checkpoint")
    code = ("import os, errno, torch\n"
            "from skipkd.io.files import atomic_write\n"
            "try:\n"
            f"    atomic_write({str(target)!r}, lambda f: torch.save(torch.zeros(500_000), f),"
            " 'wb', suffix='.pth')\n"
            "except OSError as exc:\n"
            "    print(errno.errorcode[exc.errno], exc.filename)\n")
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                          preexec_fn=_limit_file_size(500_000), timeout=120)
    assert proc.stdout.split() == ["EFBIG", str(target)], proc.stdout + proc.stderr
    assert target.read_bytes() == b"the earlier checkpoint"
    assert sorted(os.listdir(tmp_path)) == ["model.pth"]  # no temporary left behind


def test_a_run_on_a_full_disk_ends_in_one_line(tmp_path):
    """A checkpoint that does not fit (a file-size limit stands in for a full disk): one line,
    exit 2, no traceback."""
    import subprocess
    import sys
    from conftest import script_env
    proc = subprocess.run(
        [sys.executable, os.path.join(REPO, "model_training.py"), "--dataset", "synthetic",
         "--synthetic-train-size", "40", "--synthetic-test-size", "20", "--model", "resnet18",
         "--width", "16", "--epochs", "1", "--batch-size", "20", "--no-progress",
         "--no-tensorboard", "--device", "cpu", "--output-dir", str(tmp_path), "--run-name", "r"],
        cwd=REPO, env=script_env(), capture_output=True, text=True,
        preexec_fn=_limit_file_size(1_000_000), timeout=300)
    err = proc.stderr.strip()
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert len(err.splitlines()) == 1, err
    assert "r_baseline.pth: File too large; earlier files are unchanged" in err, err
