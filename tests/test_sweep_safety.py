"""The sweep writes only its own files: a planted link at a trial's log, at the GPU slots'
folder or at a slot lock; trial records edited in the storage (a run key that climbs out of the
sweep folder, an unknown script, flags that ask for --overwrite); a run of the user's under a
trial's key; --gpus on a machine without GPUs; a report folder of another study. Each is refused
in one line (or the trial is failed with the reason), nothing outside the sweep's own files is
written, and no traceback is shown.

Nothing here trains: every trial is refused before its run starts."""
import hashlib
import json
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, run_script

SWEEP = os.path.join(REPO_ROOT, "sweep.py")
TINY = {"dataset": "synthetic", "synthetic-train-size": 60, "synthetic-test-size": 20,
        "width": 4, "epochs": 1, "batch-size": 20, "device": "cpu", "progress": False,
        "tensorboard": False, "model": "resnet8", "precision": "fp32"}
NOTES = b"the user's own notes\n"


def _sweep(*args, env=None, timeout=180):
    return run_script(SWEEP, *args, env=env, timeout=timeout)


def _create(tmp_path, study, seeds, sweep_dir):
    grid = tmp_path / f"{study}.json"
    grid.write_text(json.dumps({"script": "model_training.py", "fixed": TINY,
                                "grid": {"seed": list(seeds)}}))
    proc = _sweep("create", study, "--grid", grid, "--dir", sweep_dir)
    assert proc.returncode == 0, proc.stderr
    return proc


def _trials(sweep_dir, study):
    import optuna
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    storage = JournalStorage(JournalFileBackend(os.path.join(sweep_dir, "optuna-journal.log")))
    study_obj = optuna.load_study(study_name=study, storage=storage)
    return storage, study_obj.get_trials(deepcopy=False)


def _digest(folder) -> dict:
    out = {}
    for root, dirs, files in os.walk(folder):
        for name in files + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            path = os.path.join(root, name)
            rel = os.path.relpath(path, folder)
            out[rel] = ("link:" + os.readlink(path) if os.path.islink(path) else
                        hashlib.sha256(open(path, "rb").read()).hexdigest())
    return out


def _one_line(proc, *needles):
    err = proc.stderr.strip()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1 and err.startswith("error:"), err
    for n in needles:
        assert n.lower() in err.lower(), (n, err)


def test_bad_trials_fail_with_their_reason_and_write_nothing_outside(tmp_path):
    """One worker over eight trials, each made bad in its own way after `create`; each fails
    with its reason, the worker lives on, and nothing is written outside the sweep's own
    files."""
    sweep_dir, outside = tmp_path / "sw", tmp_path / "user"
    outside.mkdir()
    notes = outside / "notes.txt"
    notes.write_bytes(NOTES)
    _create(tmp_path, "ss", range(8), sweep_dir)
    storage, trials = _trials(sweep_dir, "ss")
    keys = [t.user_attrs["key"] for t in trials]
    # 0: its log is a planted link to the user's notes
    (sweep_dir / "logs").mkdir()
    os.symlink(notes, sweep_dir / "logs" / f"{keys[0]}.trial0.log")
    # 1, 2, 3: records edited in the journal
    storage.set_trial_user_attr(trials[1]._trial_id, "key", "../../../../user/pwn")
    storage.set_trial_user_attr(trials[2]._trial_id, "script", "../evil.py")
    storage.set_trial_user_attr(trials[3]._trial_id, "argv", trials[3].user_attrs["argv"]
                                + ["--overwrite"])
    # 4: the user's own finished run under the trial's key (made after create), on the trial's
    # second attempt (a retry must not adopt it either)
    user_run = sweep_dir / "numpy_outputs"
    user_run.mkdir()
    (user_run / f"summary_{keys[4]}.json").write_text('{"the": "user\'s run"}')
    storage.set_trial_user_attr(trials[4]._trial_id, "attempt", 2)
    # 5: flags that would fetch data into a folder the storage names
    storage.set_trial_user_attr(trials[5]._trial_id, "argv", trials[5].user_attrs["argv"]
                                + ["--data-dir", str(outside / "data"), "--download"])
    # 6: a run key that is not a string
    storage.set_trial_user_attr(trials[6]._trial_id, "key", ["not", "a", "key"])
    # 7: a run record nested too deeply to read
    (user_run / f"manifest_{keys[7]}.json").write_text("[" * 100_000)
    before_user, before_sweep_files = _digest(outside), _digest(sweep_dir / "numpy_outputs")

    proc = _sweep("work", "ss", "--dir", sweep_dir, "--no-wait", "--poll", "0.2")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    _, trials = _trials(sweep_dir, "ss")
    errors = {t.number: t.user_attrs.get("error", "") for t in trials}
    assert all(t.state.name == "FAIL" for t in trials), [t.state for t in trials]
    assert "symbolic link" in errors[0]
    assert "run key" in errors[1] and "not one this sweep wrote" in errors[1]
    assert "evil.py" in errors[2]
    assert "--overwrite" in errors[3]
    assert "not made by this sweep" in errors[4]
    assert "--download" in errors[5]
    assert "run key" in errors[6]
    assert "unreadable" in errors[7]
    assert _digest(outside) == before_user and notes.read_bytes() == NOTES
    assert _digest(sweep_dir / "numpy_outputs") == before_sweep_files  # the user's run as it was
    assert not (tmp_path / "pwn.trial1.log").exists() and not (outside / "pwn.trial1.log").exists()
    assert sorted(os.listdir(sweep_dir / "logs")) == [f"{keys[0]}.trial0.log"]  # the link only


def test_create_refuses_a_users_run_under_a_trial_key(tmp_path):
    """A finished run of the user's in --dir with a trial's key is refused at create; nothing
    is written (no journal)."""
    sweep_dir = tmp_path / "sw"
    (sweep_dir / "numpy_outputs").mkdir(parents=True)
    (sweep_dir / "numpy_outputs" / "good_seed=0_summary.json").write_text("{}")  # not a key's
    from utils.sweep.spec.keys import trial_key
    key = trial_key("good", [("seed", "0")])
    (sweep_dir / "numpy_outputs" / f"summary_{key}.json").write_text("{}")
    grid = tmp_path / "g.json"
    grid.write_text(json.dumps({"script": "model_training.py", "fixed": TINY,
                                "grid": {"seed": [0]}}))
    proc = _sweep("create", "good", "--grid", grid, "--dir", sweep_dir)
    _one_line(proc, key, "not made by this sweep")
    assert not (sweep_dir / "optuna-journal.log").exists()


@pytest.fixture
def fake_gpus(tmp_path):
    path = tmp_path / "gpus.json"
    path.write_text(json.dumps({"0": 100000}))
    return {"SWEEP_FAKE_GPUS": str(path)}


def test_linked_gpu_slots_are_refused(tmp_path, fake_gpus):
    """.gpu_slots a link to another folder, then a slot lock that is a link: one line each, no
    lock file made in the other folder, the link's target untouched."""
    from utils.sweep.run.gpus import _host_folder
    sweep_dir, elsewhere = tmp_path / "sw", tmp_path / "elsewhere"
    elsewhere.mkdir()
    _create(tmp_path, "g", [0], sweep_dir)
    os.symlink(elsewhere, sweep_dir / ".gpu_slots")
    proc = _sweep("work", "g", "--dir", sweep_dir, "--gpus", "0", "--no-wait", env=fake_gpus)
    _one_line(proc, ".gpu_slots", "symbolic link")
    assert os.listdir(elsewhere) == []

    os.unlink(sweep_dir / ".gpu_slots")
    host = sweep_dir / ".gpu_slots" / _host_folder()
    host.mkdir(parents=True)
    target = tmp_path / "target.txt"
    target.write_bytes(NOTES)
    os.symlink(target, host / "gpu0.slot0.lock")
    proc = _sweep("work", "g", "--dir", sweep_dir, "--gpu-slot", "0", "--no-wait", env=fake_gpus)
    _one_line(proc, "gpu0.slot0.lock", "symbolic link")
    assert target.read_bytes() == NOTES
    _, trials = _trials(sweep_dir, "g")
    assert [t.state.name for t in trials] == ["WAITING"]  # no trial was claimed


def test_gpus_not_visible_or_too_many_workers_are_refused_up_front(tmp_path):
    """Without nvidia-smi (or SWEEP_FAKE_GPUS) --gpus is refused before any worker starts: no
    trial is claimed and failed; the number of workers is bounded."""
    sweep_dir = tmp_path / "sw"
    _create(tmp_path, "g2", [0, 1], sweep_dir)
    env = {"PATH": str(tmp_path / "no-bin")}  # no nvidia-smi on this PATH
    proc = _sweep("work", "g2", "--dir", sweep_dir, "--gpus", "0,1", "--per-gpu", "2", env=env)
    _one_line(proc, "no GPU can be seen")
    proc = _sweep("work", "g2", "--dir", sweep_dir, "--gpus",
                  ",".join(map(str, range(64))), "--per-gpu", "64", env=env)
    _one_line(proc, "4096 workers", "at most 256")
    _, trials = _trials(sweep_dir, "g2")
    assert [t.state.name for t in trials] == ["WAITING", "WAITING"]
    assert not (sweep_dir / ".gpu_slots").exists()


def test_report_refuses_another_studys_report_folder(tmp_path):
    """A report folder whose record says it holds study A's report is not written over by
    study B's report."""
    from skipkd.errors import UserError
    from utils.sweep.report.build import RECORD, _check_out_dir
    out = tmp_path / "report"
    out.mkdir()
    (out / RECORD).write_text(json.dumps({"study": "tune", "files": ["report.md"]}))
    (out / "report.md").write_text("the tune's report")
    with pytest.raises(UserError, match="holds the report of study 'tune'"):
        _check_out_dir(str(out), ["report.md"], "tune-search-skip")
    assert _check_out_dir(str(out), ["report.md"], "tune") == {"report.md"}
    link = tmp_path / "link"
    os.symlink(out, link)
    for given in (str(link), str(link) + os.sep):
        with pytest.raises(UserError, match="symbolic link"):
            _check_out_dir(given, ["report.md"], "tune")


@pytest.mark.parametrize("flags, needle", [
    (["--overwrite"], "--overwrite"), (["--overw"], "--overwrite"), (["--res=yes"], "--resume"),
    (["--do"], "--download"), (["--data-dir", "/elsewhere", "--download", "true"], "--download"),
    (["--data-dir"], "without a value"), (["--device"], "without a value"),
])
def test_a_stored_trial_never_gives_a_worker_only_option(flags, needle):
    """Also an abbreviation that argparse would take for one (the check itself never imports
    PyTorch: the run's own parser checks the rest)."""
    from skipkd.errors import UserError
    from utils.sweep.spec.stored import check_stored_trial
    attrs = {"key": "s_seed=0", "script": "model_training.py", "argv": ["--epochs", "1"]}
    check_stored_trial(attrs, "trial 0")  # a good one passes
    with pytest.raises(UserError, match=needle):
        check_stored_trial({**attrs, "argv": attrs["argv"] + flags}, "trial 0")


def test_the_light_tables_match_the_parsers():
    """spec/scripts.py is torch-free so that a worker stays light; its tables are the parsers'
    (every option string of the worker-only flags, the scripts and their result sections)."""
    from skipkd import cli
    from utils.sweep.spec.scripts import SCRIPTS, WORKER_ONLY_OPTIONS
    assert SCRIPTS == {s: section for s, (_, _, section) in cli.SCRIPTS.items()}
    for script, (build, _, _) in cli.SCRIPTS.items():
        dests = cli.option_dests(build())
        giving = {o for o, d in dests.items() if d in ("resume", "overwrite", "download")
                  and not o.startswith("--no-")}
        assert giving == set(WORKER_ONLY_OPTIONS), (script, giving)


def test_a_worker_imports_no_torch():
    code = ("import sys, utils.sweep.run.worker, utils.sweep.run.tune, utils.sweep.run.gpus\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out == "False"
