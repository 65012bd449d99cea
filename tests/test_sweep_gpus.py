"""`sweep.py work --gpus --per-gpu`: the placement of trials on a machine's GPUs, on a fake device
list (SWEEP_FAKE_GPUS: the GPUs and their free memory), so the logic runs on the CPU: two such
commands share the per-GPU slots, a GPU without enough free memory starts no trial, and a trial
it refused is run later elsewhere, never lost."""
import json
import os
import subprocess

import pytest

from conftest import REPO_ROOT, run_script, start_script

pytestmark = pytest.mark.slow

SWEEP = os.path.join(REPO_ROOT, "sweep.py")
TINY = {"dataset": "synthetic", "synthetic-train-size": 60, "synthetic-test-size": 20,
        "width": 4, "epochs": 1, "batch-size": 20, "device": "cpu", "progress": False,
        "tensorboard": False, "teacher": "resnet8", "student": "resnet8", "precision": "fp32"}
GRID4 = {"description": "4 tiny trials", "fixed": TINY,
         "grid": {"kd": ["none"], "seed": [0, 1, 2, 3]}, "heartbeat": 1, "grace": 4}


def _create(tmp_path):
    import sweep
    grid = tmp_path / "grid.json"
    grid.write_text(json.dumps(GRID4))
    sweep_dir = str(tmp_path / "sw")
    assert sweep.main(["create", "gpus", "--grid", str(grid), "--dir", sweep_dir]) == 0
    return sweep_dir


def _work(sweep_dir, fake, log, *extra):
    return start_script(SWEEP, "work", "gpus", "--dir", sweep_dir, "--poll", "0.2", "--threads",
                        "1", "--gpus", "0,1", "--per-gpu", "2", "--min-free-mib", "1000", *extra,
                        stdout=open(log, "w"), stderr=subprocess.STDOUT,
                        env={"SWEEP_FAKE_GPUS": str(fake)})


def test_two_commands_share_the_slots_and_a_full_gpu_starts_nothing(tmp_path):
    sweep_dir = _create(tmp_path)
    fake = tmp_path / "gpus.json"
    fake.write_text(json.dumps({"0": 8000, "1": 10}))  # GPU 1: 10 MiB free, below 1000
    logs = [tmp_path / "a.log", tmp_path / "b.log"]
    procs = [_work(sweep_dir, fake, log) for log in logs]
    try:
        codes = [p.wait(400) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    text = "".join(log.read_text() for log in logs)
    assert codes == [0, 0], text
    assert "Traceback" not in text, text
    # 2 commands x 2 GPUs x 2 per GPU = 8 slot workers for 4 slots: 4 stop at once
    assert text.count("slot(s) are all taken by other workers") == 4, text

    from optuna.trial import TrialState
    from utils.sweep.run.heartbeat import END_ATTR
    from utils.sweep.run.storage import load_sweep, open_store
    study = load_sweep(open_store(None, sweep_dir, create=False), "gpus").study
    trials = study.get_trials(deepcopy=False)
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert sorted(t.user_attrs["key"] for t in done) == sorted({t.user_attrs["key"] for t in trials})
    assert len(done) == 4  # every run key once: nothing lost, nothing run twice
    # every trial that ran, ran on GPU 0, in one of its 2 slots
    assert {(t.user_attrs["worker"]["gpu"], t.user_attrs["worker"]["slot"] in (0, 1))
            for t in done} == {(0, True)}
    # never more than 2 at once on GPU 0
    events = sorted([(t.datetime_start, 1) for t in done] + [(t.datetime_complete, -1) for t in done])
    running, peak = 0, 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    assert 1 <= peak <= 2
    # GPU 1's workers claimed trials and gave them back: each such trial was run later
    refused = [t for t in trials if t.state == TrialState.FAIL
               and t.system_attrs.get(END_ATTR) == "memory"]
    assert refused, text
    assert "below --min-free-mib 1000; queued again" in text
    assert {t.user_attrs["key"] for t in refused} <= {t.user_attrs["key"] for t in done}


def test_gpus_are_checked_against_the_machine(tmp_path):
    sweep_dir = _create(tmp_path)
    fake = tmp_path / "gpus.json"
    fake.write_text(json.dumps({"0": 8000}))
    env = {"SWEEP_FAKE_GPUS": str(fake)}
    proc = run_script(SWEEP, "work", "gpus", "--dir", sweep_dir, "--gpus", "0,3", env=env,
                      timeout=120)
    assert proc.returncode == 2
    assert "no GPU 3 on this machine" in proc.stderr
    proc = run_script(SWEEP, "work", "gpus", "--dir", sweep_dir, "--gpus", "0,0", env=env,
                      timeout=120)
    assert proc.returncode == 2 and "distinct GPU indices" in proc.stderr
