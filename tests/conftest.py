"""Shared fixtures: a tiny CIFAR-10 directory in the real on-disk format and a script runner."""
import os
import subprocess
import sys

import pytest
import torch

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if REPO_ROOT not in sys.path:
    sys.path.insert(0, REPO_ROOT)

from skipkd.data import make_synthetic, write_cifar10  # noqa: E402

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
                                       "resume, torchrun); `pytest -m 'not slow'` skips them")


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


# environment variables that libraries read when they are imported (thread pools, CUDA
# visibility, CPU kernels, the plotting backend, the interpreter's own): a run whose values
# differ from the script server's runs as a plain subprocess (tests/script_server.py)
IMPORT_TIME_ENV = ("ATEN_", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "NVIDIA_",
                   "PYTORCH_", "TORCH_", "PYTHON", "LD_", "MPLBACKEND", "MALLOC_")
_SERVER = {}  # this process's script server: {"proc", "socket", "env", "tmp"}


def _import_time_env(env):
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def _server():
    """This process's script server (tests/script_server.py), started on first use; None where
    SKIPKD_TEST_SUBPROCESS=1 asks for plain subprocesses or it cannot start."""
    if os.environ.get("SKIPKD_TEST_SUBPROCESS") == "1" or not hasattr(os, "fork"):
        return None
    if _SERVER.get("pid") != os.getpid():
        import atexit
        import tempfile
        tmp = tempfile.mkdtemp(prefix="skipkd-scripts-")
        sock = os.path.join(tmp, "s")
        env = script_env()
        proc = subprocess.Popen([sys.executable, os.path.join(REPO_ROOT, "tests", "script_server.py"),
                                 sock], cwd=REPO_ROOT, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE)
        if proc.stdout.readline().strip() != b"ready":
            proc.kill()
            return None
        atexit.register(proc.kill)
        _SERVER.clear()
        _SERVER.update(pid=os.getpid(), proc=proc, socket=sock, env=_import_time_env(env),
                       tmp=tmp, count=0)
    return _SERVER


def _run_served(server, cmd, env, timeout):
    """Run cmd (python script args...) in a child of the script server; a CompletedProcess
    like subprocess.run(..., capture_output=True, text=True) returns, TimeoutExpired likewise."""
    import json
    import signal
    import socket
    server["count"] += 1
    out = os.path.join(server["tmp"], f"{server['count']}.out")
    err = os.path.join(server["tmp"], f"{server['count']}.err")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.connect(server["socket"])
        conn.sendall((json.dumps({"argv": cmd[1:], "env": env, "cwd": REPO_ROOT, "stdout": out,
                                  "stderr": err}) + "\n").encode())
        buffer = bytearray()

        def reply():
            while b"\n" not in buffer:
                chunk = conn.recv(4096)
                if not chunk:
                    raise RuntimeError("the script server closed the connection")
                buffer.extend(chunk)
            line, _, rest = bytes(buffer).partition(b"\n")
            buffer[:] = rest
            return json.loads(line)

        pid = reply()["pid"]
        conn.settimeout(timeout)
        try:
            returncode = reply()["returncode"]
            timed_out = False
        except socket.timeout:
            os.killpg(pid, signal.SIGKILL)
            conn.settimeout(None)
            timed_out = True
            reply()

    def read(path):
        with open(path) as f:
            text = f.read()
        os.remove(path)
        return text

    stdout, stderr = read(out), read(err)
    if timed_out:
        raise subprocess.TimeoutExpired(cmd, timeout, output=stdout, stderr=stderr)
    return subprocess.CompletedProcess(cmd, returncode, stdout, stderr)


def run_script(script, *args, timeout=300, check=False, env=None):
    """Run `python <script> args...` from the repository root (env: more environment
    variables); returns the CompletedProcess. The process is a child of the script server
    (the libraries already imported; tests/script_server.py), or a plain subprocess where the
    environment changes what the libraries read at import or SKIPKD_TEST_SUBPROCESS=1."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, script), *[str(a) for a in args]]
    full_env = {**script_env(), **(env or {})}
    server = _server()
    if server is not None and _import_time_env(full_env) == server["env"]:
        proc = _run_served(server, cmd, full_env, timeout)
    else:
        proc = subprocess.run(cmd, cwd=REPO_ROOT, env=full_env, capture_output=True, text=True,
                              timeout=timeout)
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


def start_script(script, *args, stdout=None, stderr=None):
    """Start `python <script> args...` like run_script but without waiting (for signal tests);
    stdout/stderr: open files (or None to inherit). Returns the Popen."""
    cmd = [sys.executable, os.path.join(REPO_ROOT, script), *[str(a) for a in args]]
    return subprocess.Popen(cmd, cwd=REPO_ROOT, env=script_env(), stdout=stdout, stderr=stderr)


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
