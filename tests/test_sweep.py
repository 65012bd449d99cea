"""sweep.py: grids on Optuna run by several worker processes (the embedded journal storage and a
real PostgreSQL server), a worker killed with kill -9 mid-trial, the report's numbers against
the runs' own JSON summaries, and bad input (one line, nothing written)."""
import csv
import glob
import json
import math
import os
import pwd
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import pytest
import torch

from conftest import REPO_ROOT, run_script, script_env, start_script

pytestmark = pytest.mark.slow  # heavy end-to-end checks: `pytest -m "not slow"` skips them

SWEEP = os.path.join(REPO_ROOT, "sweep.py")
# tiny synthetic runs: the student (and a teacher of the same size) at width 4, one epoch
TINY = {"dataset": "synthetic", "synthetic-train-size": 60, "synthetic-test-size": 20,
        "width": 4, "epochs": 1, "batch-size": 20, "device": "cpu", "progress": False,
        "tensorboard": False, "teacher": "resnet8", "student": "resnet8", "precision": "fp32"}
# 6 trials: the no-teacher student and logit KD, 3 seeds (so the paired CI has 2 dof)
GRID6 = {"description": "tiny test grid", "fixed": TINY,
         "grid": {"kd": ["none", "logit"], "seed": [0, 1, 2]}, "heartbeat": 1, "grace": 4}
WORKER_FLAGS = ("--poll", "0.2")


# ------------------------------------------------------------------ helpers
def _write(tmp_path, name, spec):
    path = tmp_path / name
    path.write_text(json.dumps(spec, indent=1))
    return str(path)


def _sweep(*args, timeout=120):
    """sweep.py as a user runs it (its own process; conftest.run_script)."""
    return run_script(SWEEP, *args, timeout=timeout)


def _cli(*args):
    """sweep.py's main() in this process (create and report: the training scripts' parsers,
    plotly and matplotlib are imported once, not per call); returns its exit code."""
    import sweep
    try:
        return sweep.main([str(a) for a in args])
    except SystemExit as exc:
        return exc.code


def _ok(proc):
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc


_STARTED = []  # worker processes of the running test


@pytest.fixture(autouse=True)
def _stop_leftover_workers():
    """A test that fails half-way leaves no worker running (their children get SIGTERM from
    the kernel when their worker dies)."""
    yield
    while _STARTED:
        proc = _STARTED.pop()
        if proc.poll() is None:
            proc.kill()
            proc.wait(30)
        proc.log_file.close()


def _worker(sweep_dir, study, log_path, storage=None, extra=()):
    args = ["work", study, "--dir", sweep_dir, *WORKER_FLAGS, *extra]
    if storage:
        args += ["--storage", storage]
    log = open(log_path, "w")
    proc = start_script(SWEEP, *args, stdout=log, stderr=subprocess.STDOUT)
    proc.log_file, proc.log_path = log, log_path
    _STARTED.append(proc)
    return proc


def _finish(proc, timeout=240):
    try:
        code = proc.wait(timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.log_file.close()
    return code, open(proc.log_path).read()


def _load(sweep_dir, study, storage=None):
    from utils.sweep.run.storage import load_sweep, open_store
    return load_sweep(open_store(storage, sweep_dir, create=False), study)


def _by_key(study):
    out = {}
    for t in study.get_trials(deepcopy=False):
        out.setdefault(t.user_attrs["key"], []).append(t)
    return out


def _summary(sweep_dir, key):
    with open(os.path.join(sweep_dir, "numpy_outputs", f"summary_{key}.json")) as f:
        return json.load(f)


def _alive(pid):
    """True while `pid` runs (a zombie counts as gone)."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return "\nState:\tZ" not in f.read()
    except FileNotFoundError:
        return False


def _wait_until(done, what, timeout=120, procs=()):
    deadline = time.monotonic() + timeout
    while not done():
        for p in procs:
            if p.poll() is not None:
                pytest.fail(f"worker exited ({p.returncode}) before {what}:\n"
                            f"{open(p.log_path).read()}")
        if time.monotonic() > deadline:
            pytest.fail(f"no {what} after {timeout}s")
        time.sleep(0.02)


def _expected_report(sweep_dir, study):
    """Per kd value, recomputed from the runs' own JSON summaries: mean/std of the student's
    test accuracy (best-val checkpoint and last epoch), and the paired delta against kd none
    with its 95% CI (t distribution)."""
    from scipy.stats import t as student_t
    runs = {}
    for path in glob.glob(os.path.join(sweep_dir, "numpy_outputs", f"summary_{study}_*.json")):
        with open(path) as f:
            s = json.load(f)
        runs[(s["args"]["kd"], s["args"]["seed"])] = s
    assert len(runs) == 6, sorted(runs)
    out = {}
    for kd in ("none", "logit"):
        row = {}
        for field in ("test_acc_best", "test_acc_last"):
            xs = [runs[(kd, s)]["student"][field] for s in (0, 1, 2)]
            row[f"{field}_mean"], row[f"{field}_std"] = statistics.mean(xs), statistics.stdev(xs)
            if kd != "none":
                d = [runs[(kd, s)]["student"][field] - runs[("none", s)]["student"][field]
                     for s in (0, 1, 2)]
                half = student_t.ppf(0.975, 2) * statistics.stdev(d) / math.sqrt(3)
                tag = field.split("_")[-1]
                row[f"delta_{tag}_mean"] = statistics.mean(d)
                row[f"delta_{tag}_ci_low"] = statistics.mean(d) - half
                row[f"delta_{tag}_ci_high"] = statistics.mean(d) + half
        row["wall_time_s_mean"] = statistics.mean(runs[(kd, s)]["wall_time_s"] for s in (0, 1, 2))
        row["params"] = runs[(kd, 0)]["student"]["params"]
        row["kd_learned_params"] = sum(runs[(kd, 0)]["student"]["kd_learned_params"].values())
        out[f"kd={kd}"] = row
    return out


# ------------------------------------------------------------------ PostgreSQL
def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _pg_binaries():
    initdb = shutil.which("initdb")
    if initdb is None:
        found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"))
        initdb = found[-1] if found else None
    if initdb is None:
        return None
    pg_ctl = os.path.join(os.path.dirname(os.path.realpath(initdb)), "pg_ctl")
    return os.path.realpath(initdb), pg_ctl if os.path.exists(pg_ctl) else shutil.which("pg_ctl")


@pytest.fixture(scope="module")
def postgres_url():
    """A throwaway PostgreSQL server: initdb into a temporary folder, a unix socket there and a
    free local port, started for this module and stopped at its end. As root it runs as the
    'postgres' (or 'nobody') user, since the server refuses root."""
    binaries = _pg_binaries()
    if binaries is None or binaries[1] is None:
        pytest.skip("PostgreSQL is not installed (no initdb/pg_ctl): `make test` as root installs "
                    "Debian's postgresql, else: sudo apt-get install postgresql")
    import importlib.util
    if not any(importlib.util.find_spec(m) for m in ("psycopg", "psycopg2")):
        pytest.skip("no PostgreSQL driver for SQLAlchemy: pip install psycopg2-binary")
    initdb, pg_ctl = binaries
    run_as = []
    folder = tempfile.mkdtemp(prefix="sweep-pg-")  # in /tmp: reachable by the server's user
    if os.geteuid() == 0:
        user = next((u for u in ("postgres", "nobody") if _has_user(u)), None)
        runuser = shutil.which("runuser")
        if user is None or runuser is None:
            shutil.rmtree(folder)
            pytest.skip("running as root without runuser or a 'postgres'/'nobody' user: the "
                        "PostgreSQL server refuses to run as root")
        os.chown(folder, pwd.getpwnam(user).pw_uid, pwd.getpwnam(user).pw_gid)
        run_as = [runuser, "-u", user, "--"]
    data, port = os.path.join(folder, "data"), _free_port()
    try:
        subprocess.run(run_as + [initdb, "-D", data, "-A", "trust", "-U", "sweep", "-E", "UTF8",
                                 "--no-sync"], check=True, capture_output=True, timeout=120)
        subprocess.run(run_as + [pg_ctl, "-D", data, "-l", os.path.join(folder, "server.log"),
                                 "-w", "-t", "60", "-o",
                                 f"-p {port} -k {folder} -c listen_addresses=127.0.0.1 "
                                 f"-c fsync=off", "start"],
                       check=True, capture_output=True, timeout=120)
    except (subprocess.CalledProcessError, subprocess.TimeoutExpired) as exc:
        log = os.path.join(folder, "server.log")
        detail = open(log).read()[-2000:] if os.path.exists(log) else getattr(exc, "stderr", "")
        shutil.rmtree(folder, ignore_errors=True)
        pytest.fail(f"could not start PostgreSQL: {exc}\n{detail}")
    try:
        yield f"postgresql://sweep@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run(run_as + [pg_ctl, "-D", data, "-m", "immediate", "-w", "stop"],
                       capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)


def _has_user(name):
    try:
        pwd.getpwnam(name)
        return True
    except KeyError:
        return False


# ------------------------------------------------------------------ two workers, one grid
@pytest.mark.parametrize("backend", ["journal", "postgresql"])
def test_two_workers_complete_grid_and_report(tmp_path, backend, request, capsys):
    """Two worker processes share a 6-trial grid: every trial runs once (one trial per run key,
    complete, each run trained one epoch), both workers take part, and the report's numbers
    equal those recomputed from the runs' JSON summaries."""
    storage = request.getfixturevalue("postgres_url") if backend == "postgresql" else None
    study = f"g6{backend[:2]}"
    sweep_dir = str(tmp_path / "sweep")
    grid = _write(tmp_path, "grid.json", GRID6)
    assert _cli("create", study, "--grid", grid, "--dir", sweep_dir,
                *(["--storage", storage] if storage else [])) == 0
    if backend == "journal":
        assert os.path.isfile(os.path.join(sweep_dir, "optuna-journal.log"))
    # --threads reaches the runs (the tests' environment has OMP_NUM_THREADS=1)
    workers = [_worker(sweep_dir, study, tmp_path / f"w{i}.log", storage,
                       extra=("--threads", "2") if i == 0 else ()) for i in range(2)]
    for w in workers:
        code, out = _finish(w)
        assert code == 0, out
        assert "Traceback" not in out, out

    sweep = _load(sweep_dir, study, storage)
    assert sweep.teachers is None
    trials = _by_key(sweep.study)
    assert len(trials) == 6
    pids = set()
    for key, ts in trials.items():
        assert [t.state.name for t in ts] == ["COMPLETE"], (key, ts)  # once, never retried
        t = ts[0]
        pids.add(t.user_attrs["worker"]["pid"])
        summary = _summary(sweep_dir, key)
        by_first = t.user_attrs["worker"]["pid"] == workers[0].pid
        assert summary["environment"]["threads"] == (2 if by_first else 1), key
        assert t.user_attrs["test_acc_best"] == summary["student"]["test_acc_best"]
        assert t.user_attrs["test_acc_last"] == summary["student"]["test_acc_last"]
        assert t.value == summary["student"]["best_val_acc"]  # the objective: held-out
        assert t.user_attrs["result"]["val_acc"] == list(t.intermediate_values.values())
        log = open(os.path.join(sweep_dir, t.user_attrs["worker"]["log"])).read()
        assert log.count("[student] epoch 1/1") == 1, log
    assert len(pids) == 2, "both workers should have run trials"

    doc = tmp_path / "docs" / "RESULTS.md"
    doc.parent.mkdir()
    kept_above = "# Results\n\n## The study\n\n```bash\n# a comment, not a heading\n```\n"
    kept_below = "\n## Reading\n\nKept too.\n"
    doc.write_text(f"{kept_above}<!-- sweep.py report {study}: begin -->\nold table\n"
                   f"<!-- sweep.py report {study}: end -->{kept_below}")
    out = os.path.join(sweep_dir, "report")
    for _ in range(2):  # regenerated: the block is replaced, never appended to
        assert _cli("report", study, "--dir", sweep_dir, "--update", str(doc),
                    *(["--storage", storage] if storage else [])) == 0
    text = doc.read_text()
    assert text.startswith(kept_above) and text.endswith(kept_below)
    assert "old table" not in text and text.count("| kd=logit | 3 |") == 1
    assert "\n### Results\n" in text and "\n## Results\n" not in text  # under "## The study"
    assert "](../sweep/report/accuracy.png)" in text  # links relative to the document
    for name in ("report.md", "configs.csv", "trials.csv", "figures.html", "accuracy.png",
                 "deltas.png", "cost.png"):
        assert os.path.getsize(os.path.join(out, name)) > 0, name
    with open(os.path.join(out, "configs.csv")) as f:
        rows = {r["config"]: r for r in csv.DictReader(f)}
    want = _expected_report(sweep_dir, study)
    assert set(rows) == set(want)
    for config, expected in want.items():
        for field, value in expected.items():
            assert float(rows[config][field]) == pytest.approx(value, rel=1e-9, abs=1e-9), \
                (config, field)
    assert rows["kd=logit"]["baseline"] == "kd=none" and rows["kd=none"]["baseline"] == ""
    # another baseline at report time: the same pairs, the other way round
    other = os.path.join(sweep_dir, "vs-logit")
    assert _cli("report", study, "--dir", sweep_dir, "--baseline", "kd=logit", "--out", other,
                *(["--storage", storage] if storage else [])) == 0
    with open(os.path.join(other, "configs.csv")) as f:
        flipped = {r["config"]: r for r in csv.DictReader(f)}
    assert flipped["kd=none"]["baseline"] == "kd=logit" and flipped["kd=logit"]["baseline"] == ""
    assert float(flipped["kd=none"]["delta_best_mean"]) == pytest.approx(
        -want["kd=logit"]["delta_best_mean"], abs=1e-9)
    md = open(os.path.join(out, "report.md")).read()
    w = want["kd=logit"]
    assert (f"| kd=logit | 3 | {w['test_acc_best_mean']:.2f} ± {w['test_acc_best_std']:.2f} | "
            f"{w['test_acc_last_mean']:.2f} ± {w['test_acc_last_std']:.2f} | "
            f"{w['delta_best_mean']:+.2f} [{w['delta_best_ci_low']:+.2f}, "
            f"{w['delta_best_ci_high']:+.2f}] |") in md, md
    assert "held-out-val" in md  # the protocol is named
    assert "| learned by the KD terms |" in md
    with open(os.path.join(out, "trials.csv")) as f:
        assert len(list(csv.DictReader(f))) == 6
    capsys.readouterr()
    assert _cli("work", "nosuch", "--dir", sweep_dir,
                *(["--storage", storage] if storage else [])) == 2
    where = storage or os.path.join(sweep_dir, "optuna-journal.log")
    assert capsys.readouterr().err.strip() == (
        f"error: unknown study 'nosuch' in {where} (studies there: {study})")


# ------------------------------------------------------------------ kill -9 of a worker
@pytest.mark.parametrize("start", ["preloaded", "fresh"])
def test_worker_killed_mid_trial_is_taken_up_once(tmp_path, start):
    """Worker A runs the shared teacher and is killed with kill -9 after its first epoch: its
    child stops too (no orphan keeps training), whether it was forked from A's preloaded
    interpreter or started fresh (--no-preload); worker B, busy with the no-teacher student,
    sees A's heartbeat stop, queues the teacher again, resumes it from its state, then runs the
    student that waited for it. Every run key ends with exactly one complete trial."""
    spec = {"fixed": {**TINY, "seed": 0}, "grid": {"kd": ["none", "logit"]},
            "teacher": {"eca": "none", "epochs": 8}, "heartbeat": 1, "grace": 3}
    study, sweep_dir = "kill", str(tmp_path / "sweep")
    assert _cli("create", study, "--grid", _write(tmp_path, "grid.json", spec), "--dir",
                sweep_dir) == 0
    sweep = _load(sweep_dir, study)
    (tkey,) = _by_key(sweep.teachers)
    state = os.path.join(sweep_dir, "saved_pth_model", f"{tkey}_baseline_state.pth")

    a = _worker(sweep_dir, study, tmp_path / "a.log",
                extra=("--no-preload",) if start == "fresh" else ())
    _wait_until(lambda: os.path.exists(os.path.join(sweep_dir, "logs", f"{tkey}.trial0.log")),
                "teacher trial claimed by worker A", procs=[a])
    b = _worker(sweep_dir, study, tmp_path / "b.log")
    _wait_until(lambda: os.path.exists(state), "the teacher's first state", procs=[a])
    a.send_signal(signal.SIGKILL)
    assert _finish(a)[0] == -signal.SIGKILL
    killed = _by_key(_load(sweep_dir, study).teachers)[tkey][0]
    assert killed.user_attrs["child_preloaded"] is (start == "preloaded")
    child = killed.user_attrs["child_pid"]
    _wait_until(lambda: not _alive(child), "exit of the killed worker's child", timeout=30)
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert not saved["stage_complete"], "the kill came after the teacher had finished"

    code, out = _finish(b)
    assert code == 0, out
    assert "no heartbeat" in out and "queued again" in out, out
    sweep = _load(sweep_dir, study)
    (killed, retry), = _by_key(sweep.teachers).values()
    assert killed.state.name == "FAIL" and killed.system_attrs["sweep:end"] == "stale"
    assert retry.state.name == "COMPLETE" and retry.user_attrs["retry_of"] == killed.number
    assert retry.user_attrs["attempt"] == 2 and retry.user_attrs["worker"]["mode"] == "resume"
    assert retry.user_attrs["worker"]["pid"] == b.pid
    log = open(os.path.join(sweep_dir, retry.user_attrs["worker"]["log"])).read()
    assert "[baseline] resuming at epoch" in log, log
    import numpy as np
    curve = np.load(os.path.join(sweep_dir, "numpy_outputs", f"val_accuracy_{tkey}.npy"))
    assert curve.shape == (8,)  # every epoch once: resumed, not trained again
    assert retry.user_attrs["test_acc_best"] == _summary(sweep_dir, tkey)["baseline"][
        "test_acc_best"]
    students = _by_key(sweep.study)
    assert len(students) == 2
    for key, ts in students.items():
        assert [t.state.name for t in ts] == ["COMPLETE"], (key, ts)
    logit = students[f"{study}_kd=logit"][0]
    assert f"{tkey}_baseline.pth" in " ".join(logit.user_attrs["argv"])
    assert _summary(sweep_dir, f"{study}_kd=logit")["teacher"]["loaded"]


# ------------------------------------------------------------------ Ctrl-C
@pytest.mark.parametrize("to", ["worker", "group"])
def test_ctrl_c_stops_a_worker_cleanly(tmp_path, to):
    """SIGINT (Ctrl-C) to a worker, or to its whole process group as a terminal sends it: its
    child saves a mid-run state and exits, the worker exits 130, and the trial is queued again
    (for the next worker to resume). The preloaded interpreter the child was forked from is in
    a session of its own: the terminal's Ctrl-C does not kill it under its child."""
    spec = {"fixed": {**TINY, "epochs": 8, "seed": 0, "kd": "none"}, "heartbeat": 1, "grace": 3}
    study, sweep_dir = "stop", str(tmp_path / "sweep")
    assert _cli("create", study, "--grid", _write(tmp_path, "grid.json", spec), "--dir",
                sweep_dir) == 0
    key = "stop"  # a grid without axes: one trial, named after the study
    state = os.path.join(sweep_dir, "saved_pth_model", f"{key}_student_state.pth")
    w = _worker(sweep_dir, study, tmp_path / "w.log")
    _wait_until(lambda: os.path.exists(state), "the run's first state", procs=[w])
    if to == "group":
        assert os.getpgid(w.pid) == w.pid  # the worker leads its group, as a shell's job
        os.killpg(w.pid, signal.SIGINT)
    else:
        w.send_signal(signal.SIGINT)
    code, out = _finish(w, timeout=60)
    assert code == 130, out
    assert "Traceback" not in out and "queued again" in out, out
    (first, retry), = _by_key(_load(sweep_dir, study).study).values()
    assert first.state.name == "FAIL" and first.system_attrs["sweep:end"] == "interrupted"
    assert retry.state.name == "WAITING" and retry.user_attrs["retry_of"] == first.number
    assert not _alive(first.user_attrs["child_pid"])
    saved = torch.load(state, map_location="cpu", weights_only=True)
    assert not saved["stage_complete"] and saved["epoch"] < 8
    assert first.user_attrs["child_preloaded"] is True  # forked from the worker's interpreter
    log = open(os.path.join(sweep_dir, first.user_attrs["worker"]["log"])).read()
    assert "SIGINT received" in log and "state saved" in log, log
    assert "SIGTERM" not in log, log  # one signal, the worker's: not its interpreter's death


# ------------------------------------------------------------------ how trials start
def test_a_trial_from_the_preloaded_interpreter_equals_a_fresh_ones(tmp_path):
    """By default a worker starts its trials as forks of one interpreter that has imported torch
    (utils/preload); --no-preload starts each as a fresh `python SCRIPT`. The same trial gives
    the same run either way: the same per-epoch accuracies, summary and weights, bit for bit."""
    spec = {"fixed": {**TINY, "epochs": 2, "seed": 3, "kd": "none"}, "heartbeat": 1, "grace": 4}
    runs = {}
    for mode, extra in (("preloaded", ()), ("fresh", ("--no-preload",))):
        sweep_dir = str(tmp_path / mode)
        assert _cli("create", "same", "--grid", _write(tmp_path, f"{mode}.json", spec), "--dir",
                    sweep_dir) == 0
        code, out = _finish(_worker(sweep_dir, "same", tmp_path / f"{mode}.log", extra=extra))
        assert code == 0 and "did not start" not in out, out
        (trial,), = _by_key(_load(sweep_dir, "same").study).values()
        assert trial.state.name == "COMPLETE"
        assert trial.user_attrs["child_preloaded"] is (mode == "preloaded")
        runs[mode] = sweep_dir
    import numpy as np
    a, b = runs["preloaded"], runs["fresh"]
    for name in ("val_accuracy_student_same.npy", "train_loss_student_same.npy",
                 "val_loss_student_same.npy"):
        assert np.array_equal(np.load(os.path.join(a, "numpy_outputs", name)),
                              np.load(os.path.join(b, "numpy_outputs", name))), name
    sa, sb = _summary(a, "same"), _summary(b, "same")
    for field in ("best_val_acc", "test_acc_best", "test_acc_last"):
        assert sa["student"][field] == sb["student"][field], field
    wa, wb = (torch.load(os.path.join(d, "saved_pth_model", "same_student.pth"),
                         map_location="cpu", weights_only=True) for d in (a, b))
    sda, sdb = wa["state_dict"], wb["state_dict"]
    assert sda.keys() == sdb.keys() and all(torch.equal(sda[k], sdb[k]) for k in sda)


def _ppid(pid):
    with open(f"/proc/{pid}/status") as f:
        return int(next(line for line in f if line.startswith("PPid:")).split()[1])


def test_a_preloaded_interpreter_killed_under_its_trial(tmp_path):
    """kill -9 of the preloaded interpreter (and so of the trial's parent) mid-trial: the trial
    gets SIGTERM, saves its state and exits; the worker records it as interrupted, not failed,
    queues it again, takes the retry up itself with a new interpreter, and resumes it."""
    spec = {"fixed": {**TINY, "epochs": 8, "seed": 0, "kd": "none"}, "heartbeat": 1, "grace": 4}
    study, sweep_dir = "lost", str(tmp_path / "sweep")
    assert _cli("create", study, "--grid", _write(tmp_path, "grid.json", spec), "--dir",
                sweep_dir) == 0
    state = os.path.join(sweep_dir, "saved_pth_model", "lost_student_state.pth")
    w = _worker(sweep_dir, study, tmp_path / "w.log")
    _wait_until(lambda: os.path.exists(state), "the run's first state", procs=[w])
    (first,), = _by_key(_load(sweep_dir, study).study).values()
    assert first.user_attrs["child_preloaded"] is True
    child = first.user_attrs["child_pid"]
    server = _ppid(_ppid(child))  # the script's parent is a handler the server forked
    with open(f"/proc/{server}/cmdline", "rb") as f:
        assert b"utils/preload/server.py" in f.read()
    os.kill(server, signal.SIGKILL)
    code, out = _finish(w, timeout=120)
    assert code == 0, out
    assert "interrupted; queued again" in out and "failed" not in out.replace("0 failed", ""), out
    (first, retry), = _by_key(_load(sweep_dir, study).study).values()
    assert first.state.name == "FAIL" and first.system_attrs["sweep:end"] == "interrupted"
    assert retry.state.name == "COMPLETE" and retry.user_attrs["worker"]["mode"] == "resume"
    assert retry.user_attrs["child_preloaded"] is True
    log = open(os.path.join(sweep_dir, first.user_attrs["worker"]["log"])).read()
    assert "SIGTERM received" in log and "state saved" in log, log


def test_the_trial_start_benchmark_prints_both_ways(repo_root):
    """tools/bench_trial_start.py at its smallest: one trial each way, its figures read back."""
    proc = subprocess.run([sys.executable, os.path.join(repo_root, "tools", "bench_trial_start.py"),
                           "--trials", "1", "--repeats", "1"], capture_output=True, text=True,
                          timeout=300, env=script_env())
    assert proc.returncode == 0, proc.stdout + proc.stderr
    figures = re.findall(r"median (preloaded|fresh) *: +([\d.]+) s wall", proc.stdout)
    assert [w for w, _ in figures] == ["preloaded", "fresh"] and all(float(v) > 0
                                                                     for _, v in figures)
    assert re.search(r"fresh / preloaded: [\d.]+x wall, [\d.]+x CPU", proc.stdout), proc.stdout
    assert "preloaded 1 trials in" in proc.stdout and "(1/1 started preloaded)" in proc.stdout
    assert "(0/1 started preloaded)" in proc.stdout, proc.stdout


# ------------------------------------------------------------------ a search
def test_search_from_flags(tmp_path):
    """A search space given as flags: two trials sample the temperature in its range, run it,
    report the per-epoch validation accuracy as intermediate values; the report ranks them."""
    sweep_dir = str(tmp_path / "sweep")
    fixed = " ".join(f"--{k} {str(v).lower() if isinstance(v, bool) else v}"
                     for k, v in TINY.items() if k != "epochs")
    assert _cli("create", "srch", "--dir", sweep_dir, "--args",
                f"{fixed} --epochs 2 --kd logit --eca none", "--search",
                "temperature=float:1:8", "--n-trials", 2, "--pruner", "none") == 0
    code, out = _finish(_worker(sweep_dir, "srch", tmp_path / "w.log"))
    assert code == 0, out
    trials = _load(sweep_dir, "srch").study.get_trials()
    assert [t.state.name for t in trials] == ["COMPLETE", "COMPLETE"]
    for t in trials:
        temp = t.params["temperature"]
        assert 1 <= temp <= 8
        argv = t.user_attrs["argv"]
        assert float(argv[argv.index("--temperature") + 1]) == temp
        assert _summary(sweep_dir, t.user_attrs["key"])["args"]["temperature"] == temp
        assert sorted(t.intermediate_values) == [1, 2]
    assert _cli("report", "srch", "--dir", sweep_dir) == 0
    md = open(os.path.join(sweep_dir, "report", "report.md")).read()
    assert "`temperature`" in md and os.path.exists(os.path.join(sweep_dir, "report",
                                                                 "history.png"))


# ------------------------------------------------------------------ bad input
def _one_line_error(capsys, *args, needle):
    code = _cli(*args)
    err = capsys.readouterr().err.strip()
    assert code == 2, (args, code, err)
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    assert "Traceback" not in err
    assert needle.lower() in err.lower(), (needle, err)
    return err


@pytest.fixture
def made_study(tmp_path):
    """A created (not run) study 'made' in tmp/made, and a digest of the folder."""
    spec = {"fixed": {**TINY, "seed": 0}, "grid": {"kd": ["none"]}}
    sweep_dir = str(tmp_path / "made")
    assert _cli("create", "made", "--grid", _write(tmp_path, "ok.json", spec), "--dir",
                sweep_dir) == 0
    return sweep_dir


def test_bad_input_is_one_line_and_writes_nothing(tmp_path, capsys, digest, made_study):
    ok = {"fixed": {**TINY, "seed": 0}, "grid": {"kd": ["none", "logit"]}}
    new = str(tmp_path / "new")
    grid = lambda name, spec: _write(tmp_path, name, spec)  # noqa: E731
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"grid": {"kd": ["none", }')
    before = digest(str(tmp_path))
    cases = [
        (("work", "nosuch", "--dir", new), "no sweep storage"),
        (("report", "nosuch", "--dir", new), "no sweep storage"),
        (("work", "nosuch", "--dir", made_study), "unknown study 'nosuch'"),
        (("report", "nosuch", "--dir", made_study), "unknown study 'nosuch'"),
        (("create", "made", "--grid", grid("ok.json", ok), "--dir", made_study),
         "already exists"),
        (("create", "x", "--grid", str(bad_json), "--dir", new),
         "invalid JSON: Expecting value at line 1"),
        (("create", "x", "--grid", str(tmp_path / "missing.json"), "--dir", new),
         "does not exist"),
        (("create", "x", "--grid", grid("top.json", {**ok, "grids": {}}), "--dir", new),
         "unknown entry 'grids'"),
        (("create", "x", "--grid", grid("empty.json", {**ok, "grid": {"kd": []}}), "--dir", new),
         "non-empty list"),
        (("create", "x", "--grid", grid("m.json", {**ok, "grid": {"kd": ["none", "nosuch"]}}),
          "--dir", new), "nosuch"),
        (("create", "x", "--grid", grid("s.json", {**ok, "fixed": {**ok["fixed"],
                                                                  "student": "resnet99"}}),
          "--dir", new), "unknown model 'resnet99'"),
        (("create", "x", "--grid", grid("f.json", {**ok, "fixed": {**ok["fixed"], "foo": 1}}),
          "--dir", new), "--foo is not a flag"),
        (("create", "x", "--grid", grid("r.json", {**ok, "fixed": {**ok["fixed"],
                                                                  "run-name": "a"}}),
          "--dir", new), "set by the sweep"),
        (("create", "x", "--grid", grid("ok2.json", ok), "--dir", new, "--storage",
          "postgresql://sweep@127.0.0.1:1/postgres"), "cannot connect"),
        (("work", "x", "--dir", new, "--storage", "postgresql://sweep@127.0.0.1:1/postgres"),
         "cannot connect"),
        (("create", "../x", "--grid", grid("ok3.json", ok)), "bad study name"),
        (("report", "made", "--dir", made_study, "--baseline", "nosuch=1"),
         "baseline names 'nosuch', which is not a grid axis"),
        (("report", "made", "--dir", made_study, "--baseline", "kd"), "expected AXIS=VALUE"),
        (("report", "made", "--dir", made_study, "--update", str(tmp_path / "nodoc.md")),
         "not a file"),
        (("report", "made", "--dir", made_study, "--update", grid("doc.md", "no block")),
         "needs exactly one line '<!-- sweep.py report made: begin -->'"),
    ]
    before = digest(str(tmp_path))
    for args, needle in cases:
        _one_line_error(capsys, *args, needle=needle)
        assert digest(str(tmp_path)) == before, f"{args} wrote something"
    assert not os.path.exists(new)


def test_bad_grid_from_the_command_line(tmp_path):
    """The real entry point: exit 2, one line on stderr, no traceback, no sweep folder."""
    bad = tmp_path / "bad.toml"
    bad.write_text("[grid\nkd = 1\n")
    proc = _sweep("create", "x", "--grid", bad, "--dir", tmp_path / "sweep")
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: grid file") and "invalid TOML" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert not os.path.exists(tmp_path / "sweep")


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(REPO_ROOT, "experiments", "grids",
                                                                "*.json")) +
                                        glob.glob(os.path.join(REPO_ROOT, "experiments", "grids",
                                                               "gpu", "*.json"))),
                         ids=os.path.basename)
def test_example_grids_are_valid(path, capsys):
    """The grids in experiments/grids (the two experiment runners' studies among them) pass
    every trial through the scripts' parsers (--dry-run writes nothing)."""
    assert _cli("create", "example", "--grid", path, "--dry-run") == 0
    assert "the grid is valid" in capsys.readouterr().out


def test_empty_database_is_not_written_to(postgres_url, capsys):
    """work/report on a database without a study: one line, and no Optuna table created."""
    import importlib.util

    import sqlalchemy
    driver = "psycopg" if importlib.util.find_spec("psycopg") else "psycopg2"

    def engine_of(url, **kw):
        return sqlalchemy.create_engine(url.replace("postgresql://", f"postgresql+{driver}://"),
                                        **kw)

    engine = engine_of(postgres_url, isolation_level="AUTOCOMMIT")
    with engine.connect() as conn:
        conn.execute(sqlalchemy.text("CREATE DATABASE empty_db"))
    empty = postgres_url.rsplit("/", 1)[0] + "/empty_db"
    for command in ("work", "report"):
        assert _cli(command, "x", "--storage", empty) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: no sweep storage") and "no Optuna tables" in err, err
    probe = engine_of(empty)
    assert sqlalchemy.inspect(probe).get_table_names() == []
    probe.dispose()
    engine.dispose()


def test_toml_grid_is_the_json_grid(tmp_path):
    """The same grid written in TOML and in JSON expands to the same trials."""
    from utils.sweep.spec.expand import expand
    from utils.sweep.spec.parsers import Parsers
    from utils.sweep.spec.normalize import normalize_spec
    from utils.sweep.spec.sources import load_spec_file
    toml = tmp_path / "g.toml"
    toml.write_text('script = "model_training_mid.py"\n'
                    '[fixed]\ndataset = "synthetic"\nwidth = 4\ntensorboard = false\n'
                    '[grid]\nseed = [0, 1]\nkd = ["none", "skip"]\n'
                    '[grid.pair]\nr8 = {teacher = "resnet8", student = "resnet8"}\n'
                    '[teacher]\neca = "none"\n')
    spec = {"script": "model_training_mid.py",
            "fixed": {"dataset": "synthetic", "width": 4, "tensorboard": False},
            "grid": {"seed": [0, 1], "kd": ["none", "skip"],
                     "pair": {"r8": {"teacher": "resnet8", "student": "resnet8"}}},
            "teacher": {"eca": "none"}}
    plans = [expand(normalize_spec(load_spec_file(path), path), "t", Parsers())
             for path in (str(toml), _write(tmp_path, "g.json", spec))]
    assert plans[0] == plans[1]
    assert len(plans[0]["trials"]) == 4 and len(plans[0]["teachers"]) == 2
    skip = [t for t in plans[0]["trials"] if t["axes"]["kd"] == "skip"][0]
    assert skip["teacher_key"] and "--teacher-checkpoint" in skip["argv"]
