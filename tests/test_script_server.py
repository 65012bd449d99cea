"""The suite's script runner (utils/preload/server.py via conftest.run_script) against a plain
`python script.py`: the same exit status, stdout and stderr for a script that returns, exits
with a number or a message, raises, is killed by a signal, leaves a thread running, registers an
atexit function, reads stdin or its environment, takes a signal while it runs; and a real
script's refusal and output alike."""
import os
import signal
import subprocess
import textwrap
import time

import pytest

import conftest
from conftest import REPO_ROOT, run_script, start_script

SCRIPTS = {
    "returns": "print('out'); import sys; print('err', file=sys.stderr)",
    "exit-3": "import sys; print('x'); sys.exit(3)",
    "exit-256": "import sys; sys.exit(256)",
    "exit-minus-1": "import sys; sys.exit(-1)",
    "exit-message": "import sys; sys.exit('a message')",
    "raises": "def f():\n    raise ValueError('bad value')\nf()",
    "killed": "import os, signal; print('before', flush=True); os.kill(os.getpid(), signal.SIGKILL)",
    "thread": textwrap.dedent("""\
        import threading, time
        def later():
            time.sleep(0.3)
            print('from the thread')
        threading.Thread(target=later).start()
        print('main done')"""),
    "atexit": "import atexit; atexit.register(lambda: print('at exit')); print('body')",
    "atexit-reads-main": textwrap.dedent("""\
        import atexit, sys
        NAME = 'the script'
        atexit.register(lambda: print(sys.modules['__main__'].NAME))"""),
    "stdin-argv-path": textwrap.dedent("""\
        import os, sys
        print(repr(sys.stdin.read()), sys.argv[1:], os.path.basename(sys.argv[0]))
        print(sys.path[0] == os.path.dirname(os.path.abspath(__file__)), __name__)
        print(os.getcwd(), os.environ.get('SKIPKD_SERVER_PROBE'), os.environ.get('OMP_NUM_THREADS'))"""),
}


def _both(script, *args, env=None):
    served = run_script(script, *args, env=env)
    os.environ["SKIPKD_TEST_SUBPROCESS"] = "1"
    try:
        plain = run_script(script, *args, env=env)
    finally:
        del os.environ["SKIPKD_TEST_SUBPROCESS"]
    return served, plain


@pytest.fixture(autouse=True)
def _server_on(monkeypatch):
    monkeypatch.delenv("SKIPKD_TEST_SUBPROCESS", raising=False)
    if conftest._served(conftest.script_env()) is None:
        pytest.fail("the script server did not start")


@pytest.mark.parametrize("name", list(SCRIPTS))
def test_a_served_run_is_a_plain_run(name, tmp_path):
    path = tmp_path / f"{name}.py"
    path.write_text(SCRIPTS[name] + "\n")
    served, plain = _both(str(path), "a1", "--b", env={"SKIPKD_SERVER_PROBE": "on"})
    assert (served.returncode, served.stdout) == (plain.returncode, plain.stdout)
    assert served.stderr == plain.stderr  # a traceback too: the same frames, the script's
    if name == "raises":
        assert served.stderr.startswith("Traceback")
        assert served.stderr.splitlines()[-1] == "ValueError: bad value"
    if name == "stdin-argv-path":
        assert "'' ['a1', '--b'] stdin-argv-path.py" in served.stdout, served.stdout
        assert f"{REPO_ROOT} on 1" in served.stdout


def test_a_missing_script_is_exit_2_alike(tmp_path):
    served, plain = _both(str(tmp_path / "nowhere.py"))
    assert (served.returncode, served.stdout, served.stderr) == \
        (plain.returncode, plain.stdout, plain.stderr)
    assert served.returncode == 2 and "can't open file" in served.stderr


@pytest.mark.slow  # real training runs, each also as a fresh interpreter
def test_a_real_script_refuses_and_reports_alike(tmp_path, tiny_cifar):
    served, plain = _both("model_training.py", "--model", "resnet19")
    assert served.returncode == plain.returncode == 2
    assert served.stderr == plain.stderr and "resnet19" in served.stderr
    out = [tmp_path / "served", tmp_path / "plain"]
    flags = [*conftest.FAST_FLAGS, "--data-dir", tiny_cifar, "--epochs", "1", "--model", "resnet8",
             "--no-tensorboard", "--limit-train", "100"]
    served = run_script("model_training.py", *flags, "--output-dir", out[0], check=True)
    os.environ["SKIPKD_TEST_SUBPROCESS"] = "1"
    try:
        plain = run_script("model_training.py", *flags, "--output-dir", out[1], check=True)
    finally:
        del os.environ["SKIPKD_TEST_SUBPROCESS"]
    # the same seed, data and code: the same accuracies, printed the same way (times aside)
    strip = [line.rsplit("[", 1)[0] for line in served.stdout.splitlines() if "epoch" in line]
    assert strip and strip == [line.rsplit("[", 1)[0] for line in plain.stdout.splitlines()
                               if "epoch" in line]
    assert sorted(os.listdir(out[0] / "saved_pth_model")) == \
        sorted(os.listdir(out[1] / "saved_pth_model"))


def test_an_import_time_variable_runs_a_plain_subprocess(tmp_path):
    path = tmp_path / "probe.py"
    path.write_text("import os\nprint(os.getpgid(0) == os.getpid())\n")
    served = run_script(str(path))
    plain_env = run_script(str(path), env={"OMP_NUM_THREADS": "2"})
    assert served.stdout.strip() == "True"  # its own group: a child of the server
    assert plain_env.stdout.strip() == "False"  # in the test's group: a plain subprocess


def test_a_timeout_kills_the_run_and_its_children(tmp_path):
    path = tmp_path / "sleeps.py"
    pidfile = tmp_path / "child.pid"
    path.write_text(textwrap.dedent(f"""\
        import subprocess, sys, time
        child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
        open({str(pidfile)!r}, "w").write(str(child.pid))
        print("started", flush=True)
        time.sleep(60)"""))
    with pytest.raises(subprocess.TimeoutExpired) as err:
        run_script(str(path), timeout=3)
    assert "started" in err.value.output
    pid = int(pidfile.read_text())
    for _ in range(50):  # the group was sent SIGKILL: the grandchild is gone (or a zombie)
        try:
            with open(f"/proc/{pid}/stat") as f:
                if f.read().split(")")[-1].split()[0] == "Z":
                    break
        except FileNotFoundError:
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"process {pid} outlived the timeout")


def test_the_server_runs_concurrent_requests(tmp_path):
    """Four runs that each wait until all four have started: served one at a time, they would
    wait out their 60 s and fail."""
    from concurrent.futures import ThreadPoolExecutor
    path = tmp_path / "meet.py"
    path.write_text(textwrap.dedent(f"""\
        import os, sys, time
        open(os.path.join({str(tmp_path)!r}, "here." + sys.argv[1]), "w").close()
        for _ in range(600):
            if len([n for n in os.listdir({str(tmp_path)!r}) if n.startswith("here.")]) == 4:
                print(sys.argv[1])
                sys.exit(0)
            time.sleep(0.1)
        sys.exit(1)"""))
    with ThreadPoolExecutor(max_workers=4) as pool:
        procs = list(pool.map(lambda i: run_script(str(path), i), range(4)))
    assert [(p.returncode, p.stdout.strip()) for p in procs] == [(0, str(i)) for i in range(4)]


LOOP = textwrap.dedent("""\
    import sys, time
    print('ready', flush=True)
    print('to stderr', file=sys.stderr, flush=True)
    time.sleep(5)""")


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_a_started_script_takes_a_signal_as_a_plain_one(tmp_path, sig):
    """start_script's process (served or a Popen) signalled once it is running: the same exit
    status, the same output (stderr merged into stdout, read through a pipe)."""
    path = tmp_path / "loop.py"
    path.write_text(LOOP + "\n")
    results = []
    for plain in (False, True):
        if plain:
            os.environ["SKIPKD_TEST_SUBPROCESS"] = "1"
        try:
            proc = start_script(str(path), stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        finally:
            os.environ.pop("SKIPKD_TEST_SUBPROCESS", None)
        assert isinstance(proc, subprocess.Popen) == plain
        assert proc.stdout.readline() == b"ready\n"
        assert proc.stdout.readline() == b"to stderr\n"
        assert proc.poll() is None
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.2)
        proc.send_signal(sig)
        out, _ = proc.communicate(timeout=60)
        last = out.decode().strip().splitlines()[-1:]  # SIGINT: the KeyboardInterrupt traceback
        results.append((proc.returncode, last))
    assert results[0] == results[1]
    if sig == signal.SIGINT and signal.getsignal(signal.SIGINT) == signal.SIG_IGN:
        assert results[0] == (0, [])  # inherited from a process that ignores it (xdist's workers)
    else:
        assert results[0] == (-sig, ["KeyboardInterrupt"] if sig == signal.SIGINT else [])


def test_a_server_closed_or_gone_starts_nothing(tmp_path):
    """utils/preload's server as a sweep worker uses it: ready, then a script through it; once
    closed it says so, its socket folder is gone, and a new start is an OSError (the worker then
    starts the trial as a fresh interpreter), not a hang or a half-started process."""
    from utils.preload import ServedProcess, start_server
    env = conftest.script_env()
    srv = start_server(env, preload=("numpy",), wait=False)
    assert srv is not None and srv.ready(timeout=60) is True and srv.serves(env)
    assert not srv.serves({**env, "OMP_NUM_THREADS": "7"})  # read at import: not this server's
    path = tmp_path / "exit-3.py"
    path.write_text(SCRIPTS["exit-3"] + "\n")
    out = tmp_path / "out.txt"
    with open(out, "wb") as f:
        proc = ServedProcess(srv, ["python", str(path)], env, str(tmp_path), stdout=f,
                             stderr=subprocess.STDOUT, start_new_session=True,
                             die_with_server=True)
        assert proc.wait(60) == 3
    assert out.read_text() == "x\n"
    folder = os.path.dirname(srv.socket)
    srv.close()
    assert srv.ready() is False and not srv.serves(env) and not os.path.exists(folder)
    with pytest.raises(OSError):
        ServedProcess(srv, ["python", str(path)], env, str(tmp_path))
    # a server killed (its socket file still there): no start either, and it says so
    gone = start_server(env, preload=("numpy",))
    assert gone is not None and gone.serves(env)
    gone.proc.kill()
    gone.proc.wait()
    assert os.path.exists(gone.socket) and not gone.serves(env)
    with pytest.raises(OSError):
        ServedProcess(gone, ["python", str(path)], env, str(tmp_path))
    # close removes its socket and its folder, never anything else found there
    keep = os.path.join(gone.folder, "keep.txt")
    with open(keep, "w") as f:
        f.write("not the server's")
    folder = gone.folder
    gone.close()
    assert not os.path.exists(gone.socket) and os.listdir(folder) == ["keep.txt"]
    os.unlink(keep)
    os.rmdir(folder)
