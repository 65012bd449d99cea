"""Shared fixtures: a tiny CIFAR-10 directory in the real on-disk format and a script runner."""
import os
import subprocess
import sys
import threading

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from skipkd.data import make_synthetic, write_cifar10  # noqa: E402
from utils.preload import PRELOAD, ServedProcess, start_server  # noqa: E402

# One intra-op thread: the models here are tiny, and on a small, shared CI machine OpenMP's
# spin-waiting with 2+ threads can make the same test 10-20x slower under any CPU contention.
torch.set_num_threads(1)

TINY_TRAIN, TINY_TEST = 200, 100


# the bad-input battery's verdicts (case -> the one-line message), printed after the run
BATTERY_VERDICTS = {}


def pytest_runtest_logreport(report):
    """Gather the battery's verdicts from the test reports (in the main process, also when
    pytest-xdist runs the tests in others)."""
    if report.when != "call":
        return
    props = dict(report.user_properties)
    if "battery_verdict" in props:
        case = report.nodeid.rsplit("[", 1)[-1].rstrip("]")
        BATTERY_VERDICTS[case] = props["battery_verdict"] + (
            "  [outputs unchanged]" if props.get("battery_unchanged") else "")


def pytest_terminal_summary(terminalreporter):
    if BATTERY_VERDICTS:
        terminalreporter.section(f"bad-input battery: {len(BATTERY_VERDICTS)} cases")
        for case, verdict in BATTERY_VERDICTS.items():
            terminalreporter.write_line(f"{case}: {verdict}")


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: needs a CUDA GPU (tests/test_cuda.py); skipped, "
                                       "with the reason, where none is visible")
    config.addinivalue_line("markers", "compile: runs torch.compile (slow to compile)")
    config.addinivalue_line("markers", "slow: a heavy end-to-end check (the bad-input battery, "
                                       "the GPU check's dry run, sweep workers, kill -9 and "
                                       "resume, torchrun, the demo); `pytest -m 'not slow'` "
                                       "skips them")


# the files that take longest (measured with --durations), run first: with
# --no-loadscope-reorder (the Makefile), pytest-xdist's --dist loadfile hands files to its
# processes in collection order (by default it would reorder them by their number of tests),
# so starting the long ones first keeps one process from finishing its last long file alone
# while the others idle
LONGEST_FIRST = ("test_sweep_tune.py", "test_gpu_check.py", "test_resume.py", "test_sweep.py",
                 "test_gpu_check_runs.py",
                 "test_run_safety.py", "test_bad_input.py", "test_imagenet.py", "test_tools.py",
                 "test_derived_files.py", "test_models.py", "test_distributed.py", "test_e2e.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: order kept within


def script_env():
    """Environment for subprocess runs: CPU only, unbuffered, no GUI backend, few threads."""
    env = dict(os.environ)
    env.update({
        "PYTHONUNBUFFERED": "1",
        "PYTHONDONTWRITEBYTECODE": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "MPLBACKEND": "Agg",
        "OMP_NUM_THREADS": "1",
        "MKL_NUM_THREADS": "1",
        "TF_CPP_MIN_LOG_LEVEL": "3",
        "TQDM_DISABLE": "1",
    })
    env.pop("PYTHONSTARTUP", None)
    return env


# this process's script server (utils/preload/server.py, with the suite's preloads), started
# on first use; test threads may ask for it at once
_SERVER = {}
_SERVER_START = threading.Lock()
SUITE_PRELOAD = PRELOAD + ("torchvision.models", "torchvision.transforms", "optuna",
                           "matplotlib", "PIL.Image", "yaml")  # and the tools' own


def _served(env):
    """This process's script server when it can run a script with environment env, else None
    (SKIPKD_TEST_SUBPROCESS=1, no server here, or env changes what the libraries read at
    import)."""
    if os.environ.get("SKIPKD_TEST_SUBPROCESS") == "1":
        return None
    with _SERVER_START:
        if _SERVER.get("pid") != os.getpid():
            _SERVER.update(pid=os.getpid(), server=start_server(script_env(), SUITE_PRELOAD))
    srv = _SERVER["server"]
    return srv if srv is not None and srv.serves(env) else None


def _read(f):
    """A captured stream as subprocess.run(..., text=True) returns it."""
    import io
    f.seek(0)
    return io.TextIOWrapper(f, newline=None).read()


def run_script(script, *args, timeout=300, check=False, env=None, umask=None):
    """Run `python <script> args...` from the repository root (env: more environment
    variables; umask: the process's file-mode mask); returns the CompletedProcess. The process
    is a child of the script server (the libraries already imported; utils/preload/server.py),
    or a plain subprocess where the environment changes what the libraries read at import or
    SKIPKD_TEST_SUBPROCESS=1."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, script), *[str(a) for a in args]]
    full_env = {**script_env(), **(env or {})}
    srv = _served(full_env)
    if srv is None:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout,
                              preexec_fn=None if umask is None else (lambda: os.umask(umask)))
    else:
        import tempfile
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            child = ServedProcess(srv, cmd, full_env, REPO_ROOT, stdout=out, stderr=err,
                                  umask=umask)
            try:
                child.wait(timeout)
            except subprocess.TimeoutExpired:
                child.kill_group()
                child.wait()
                raise subprocess.TimeoutExpired(cmd, timeout, output=_read(out),
                                                stderr=_read(err)) from None
            proc = subprocess.CompletedProcess(cmd, child.returncode, _read(out), _read(err))
    if check and proc.returncode != 0:
        raise AssertionError(f"{script} {' '.join(map(str, args))} failed with {proc.returncode}\n"
                             f"--- stdout\n{proc.stdout}\n--- stderr\n{proc.stderr}")
    return proc


def assert_ok(proc):
    """A script run that exited 0 (its output shown otherwise)."""
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


def assert_refused(proc, *needles):
    """A script run refused with exit 2 and one line on stderr (no traceback) that contains
    every needle (any case); returns that line."""
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and len(err.splitlines()) == 1, proc.stderr
    for needle in needles:
        assert needle.lower() in err.lower(), (needle, err)
    return err


@pytest.fixture(scope="session")
def repo_root():
    return REPO_ROOT


@pytest.fixture(scope="session")
def run():
    """The script runner as a fixture: run('model_training.py', '--epochs', 1, ...)."""
    return run_script


@pytest.fixture(scope="session")
def tiny_data():
    """(train, test) ImageData written into the tiny CIFAR-10 directory."""
    return make_synthetic(TINY_TRAIN, seed=11), make_synthetic(TINY_TEST, seed=12)


@pytest.fixture(scope="session")
def tiny_cifar(tmp_path_factory, tiny_data):
    """A data directory holding cifar-10-batches-py/ with 200 train and 100 test images."""
    data_dir = tmp_path_factory.mktemp("tiny_cifar")
    write_cifar10(str(data_dir), *tiny_data)
    return str(data_dir)


# flags that make a training run small and quiet; tests add the rest
FAST_FLAGS = ("--dataset", "cifar10", "--width", "4", "--batch-size", "50",
              "--eval-batch-size", "100", "--no-progress", "--device", "cpu")


@pytest.fixture(scope="session")
def fast_flags(tiny_cifar):
    return [*FAST_FLAGS, "--data-dir", tiny_cifar]


def start_script(script, *args, stdout=None, stderr=None, env=None):
    """Start `python <script> args...` like run_script but without waiting (for signal tests);
    stdout/stderr as subprocess.Popen takes them (files, None to inherit, DEVNULL, PIPE,
    STDOUT). Returns the Popen, or a utils.preload.ServedProcess that is handled like one;
    either way the process leads a process group of its own, as a shell's job does (a test may
    signal the group as a terminal's Ctrl-C would)."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, script), *[str(a) for a in args]]
    full_env = {**script_env(), **(env or {})}
    srv = _served(full_env)
    if srv is None:
        return subprocess.Popen(cmd, cwd=REPO_ROOT, env=full_env, stdout=stdout, stderr=stderr,
                                preexec_fn=os.setpgrp)
    return ServedProcess(srv, cmd, full_env, REPO_ROOT, stdout=stdout, stderr=stderr)


@pytest.fixture(scope="session")
def start():
    """start_script as a fixture: proc = start('model_training.py', ..., stderr=f)."""
    return start_script


def files_digest(root):
    """{relative path: sha256} of every file under root (empty when root does not exist)."""
    import hashlib
    digest = {}
    for folder, _, files in os.walk(root):
        for name in files:
            path = os.path.join(folder, name)
            with open(path, "rb") as f:
                digest[os.path.relpath(path, root)] = hashlib.sha256(f.read()).hexdigest()
    return digest


@pytest.fixture(scope="session")
def digest():
    """files_digest as a fixture: digest(root) -> {relative path: sha256}."""
    return files_digest
