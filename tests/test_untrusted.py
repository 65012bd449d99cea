"""Nothing read from disk is trusted: crafted CIFAR pickles execute nothing, labels outside the
format's classes, tampered checkpoint metadata and teachers of another run shape are one-line
errors naming the file (and the field), never a traceback, a silently different model or code
run on the user's machine."""
import os
import pickle
import shutil
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import torch

from skipkd.io.checkpoint import load_checkpoint, model_from_checkpoint, save_checkpoint
from skipkd.data import load_dataset, make_synthetic, write_cifar10
from skipkd.errors import UserError

BASE, MID, EVAL = "model_training.py", "model_training_mid.py", "evaluate.py"


def _one_line_error(proc, *needles):
    """A non-zero exit, exactly one 'error:' line on stderr naming every needle, no traceback."""
    assert proc.returncode != 0, f"exit 0\n{proc.stdout}\n{proc.stderr}"
    err = proc.stderr.strip()
    assert "Traceback" not in proc.stderr and "Traceback" not in proc.stdout, proc.stderr
    assert len(err.splitlines()) == 1, f"not one line on stderr:\n{proc.stderr}"
    assert err.startswith("error:"), err
    for needle in needles:
        assert str(needle) in err, f"{needle!r} not in {err!r}"
    return err


def _raises_one_line(fn, *needles):
    with pytest.raises(UserError) as exc:
        fn()
    msg = str(exc.value)
    assert len(msg.splitlines()) == 1, msg
    for needle in needles:
        assert str(needle) in msg, f"{needle!r} not in {msg!r}"
    return msg


# ------------------------------------------------------------------ crafted pickles
class _Plant:
    """Unpickling this runs exec(...), which creates `marker`: what a crafted batch would do."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').close()",)


def write_cifar100(data_dir, train, test):
    """A tiny folder in the CIFAR-100 python format: cifar-100-python/{train,test,meta}, each a
    protocol-2 pickle dict (fine and coarse labels, uint8 rows of 3072)."""
    folder = os.path.join(data_dir, "cifar-100-python")
    os.makedirs(folder, exist_ok=True)
    for name, d in (("train", train), ("test", test)):
        fine = (d.labels.numpy() * 7 + 3) % 100  # spread the 10 synthetic classes over 0..99
        payload = {b"filenames": [f"{name}_{i}.png".encode() for i in range(len(d))],
                   b"batch_label": f"{name} batch".encode(),
                   b"fine_labels": [int(v) for v in fine],
                   b"coarse_labels": [int(v) // 5 for v in fine],
                   b"data": d.images.reshape(len(d), -1).numpy().astype(np.uint8)}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(payload, f, protocol=2)
    with open(os.path.join(folder, "meta"), "wb") as f:
        pickle.dump({b"fine_label_names": [f"fine{i}".encode() for i in range(100)],
                     b"coarse_label_names": [f"coarse{i}".encode() for i in range(20)]}, f,
                    protocol=2)
    return folder


@pytest.fixture(scope="module")
def small_sets():
    return make_synthetic(20, seed=3), make_synthetic(10, seed=4)


def _crafted(tmp_path, small_sets, dataset, victim):
    """A data folder of `dataset` whose file `victim` is a crafted pickle -> (data dir, path of
    the victim, marker path the payload would create)."""
    data_dir = tmp_path / "data"
    folder = (write_cifar10(str(data_dir), *small_sets) if dataset == "cifar10"
              else write_cifar100(str(data_dir), *small_sets))
    marker = tmp_path / "PWNED"
    path = os.path.join(folder, victim)
    with open(path, "wb") as f:
        pickle.dump({b"data": _Plant(marker), b"labels": [0], b"fine_labels": [0],
                     b"label_names": [_Plant(marker)]}, f, protocol=2)
    return str(data_dir), path, marker


@pytest.mark.parametrize("dataset, victim", [("cifar10", "data_batch_1"), ("cifar100", "train")])
def test_crafted_batch_runs_nothing_in_the_script(tmp_path, run, small_sets, digest, dataset,
                                                  victim):
    data_dir, path, marker = _crafted(tmp_path, small_sets, dataset, victim)
    out = tmp_path / "out"
    (out / "saved_pth_model").mkdir(parents=True)
    (out / "saved_pth_model" / "earlier_baseline.pth").write_bytes(b"an earlier result")
    before = digest(str(out))
    proc = run(BASE, "--dataset", dataset, "--data-dir", data_dir, "--output-dir", out,
               "--width", "4", "--epochs", "1", "--no-progress", "--device", "cpu",
               "--no-tensorboard")
    _one_line_error(proc, path, "refusing")
    assert not marker.exists(), "the crafted pickle's code ran"
    assert digest(str(out)) == before


@pytest.mark.parametrize("dataset, victim", [("cifar10", "data_batch_1"), ("cifar10", "test_batch"),
                                             ("cifar10", "batches.meta"), ("cifar100", "train"),
                                             ("cifar100", "meta")])
def test_crafted_batch_runs_nothing_in_the_reader(tmp_path, small_sets, dataset, victim):
    data_dir, path, marker = _crafted(tmp_path, small_sets, dataset, victim)
    msg = _raises_one_line(lambda: load_dataset(dataset, data_dir), path)
    assert "builtins.exec" in msg
    assert not marker.exists(), "the crafted pickle's code ran"


def test_garbage_pickles_are_one_line_errors(tmp_path, small_sets):
    folder = write_cifar10(str(tmp_path), *small_sets)
    path = os.path.join(folder, "data_batch_2")
    real = open(path, "rb").read()
    cases = {
        "truncated": real[: len(real) // 2],
        "unhashable key": b"}]K\x01s.",                        # {[]: 1}: a TypeError inside
        "bytes of an int size": b"\x80\x02c__builtin__\nbytes\nJ\x00\x00\x00\x01\x85R.",
        "other codec": b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00aX\x04\x00\x00\x00zlib\x86R.",
        "random bytes": os.urandom(64),
        "empty": b"",
    }
    for name, raw in cases.items():
        with open(path, "wb") as f:
            f.write(raw)
        _raises_one_line(lambda: load_dataset("cifar10", str(tmp_path)), path)


def _no_plain_pickle_load(monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("a dataset reader used the unrestricted pickle.load")
    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)


def test_real_cifar10_format_loads_through_the_restricted_reader(tmp_path, monkeypatch):
    train, test = make_synthetic(25, seed=5), make_synthetic(7, seed=6)
    folder = write_cifar10(str(tmp_path), train, test)
    # the published batches were pickled by numpy 1.x, which spells the module numpy.core
    p = os.path.join(folder, "data_batch_2")
    raw = open(p, "rb").read()
    if b"numpy._core.multiarray" in raw:
        open(p, "wb").write(raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray"))
    # and a protocol-5 batch (numpy's _frombuffer) with numpy-integer labels
    idx = np.array_split(np.arange(25), 5)[3]
    with open(os.path.join(folder, "data_batch_4"), "wb") as f:
        pickle.dump({b"data": train.images[idx].reshape(len(idx), -1).numpy(),
                     b"labels": list(train.labels[idx].numpy())}, f, protocol=5)
    _no_plain_pickle_load(monkeypatch)
    tr, te = load_dataset("cifar10", str(tmp_path))
    assert torch.equal(tr.images, train.images) and torch.equal(tr.labels, train.labels)
    assert torch.equal(te.images, test.images) and torch.equal(te.labels, test.labels)
    assert tr.classes == train.classes and len(tr.classes) == 10


def test_real_cifar100_format_loads_through_the_restricted_reader(tmp_path, monkeypatch,
                                                                   small_sets):
    train, test = small_sets
    write_cifar100(str(tmp_path), train, test)
    _no_plain_pickle_load(monkeypatch)
    tr, te = load_dataset("cifar100", str(tmp_path))
    assert torch.equal(tr.images, train.images) and torch.equal(te.images, test.images)
    assert tr.labels.tolist() == ((train.labels * 7 + 3) % 100).tolist()
    assert tr.classes == [f"fine{i}" for i in range(100)]


# ------------------------------------------------------------------ labels outside the classes
@pytest.mark.parametrize("label", [10, -1])
def test_cifar10_label_outside_0_9(tmp_path, small_sets, label):
    train, test = small_sets
    bad = make_synthetic(len(train), seed=3)
    bad.labels[1] = label  # the second image of data_batch_1
    folder = write_cifar10(str(tmp_path), bad, test)
    batch = os.path.join(folder, "data_batch_1")
    _raises_one_line(lambda: load_dataset("cifar10", str(tmp_path)), batch, "0..9",
                     f"found {label}")


def test_cifar10_label_outside_0_9_in_the_script(tmp_path, run, small_sets):
    train, test = small_sets
    bad = make_synthetic(len(test), seed=4)
    bad.labels[-1] = 10
    folder = write_cifar10(str(tmp_path), train, bad)
    proc = run(BASE, "--dataset", "cifar10", "--data-dir", tmp_path, "--output-dir",
               tmp_path / "out", "--width", "4", "--epochs", "1", "--no-progress", "--device",
               "cpu", "--no-tensorboard")
    _one_line_error(proc, os.path.join(folder, "test_batch"), "0..9")


def test_cifar_meta_with_another_class_count(tmp_path, small_sets):
    folder = write_cifar10(str(tmp_path), *small_sets)
    meta = os.path.join(folder, "batches.meta")
    with open(meta, "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(11)]}, f, protocol=2)
    _raises_one_line(lambda: load_dataset("cifar10", str(tmp_path)), meta, "11", "10 classes")


def test_cifar100_label_outside_0_99(tmp_path, small_sets):
    folder = write_cifar100(str(tmp_path), *small_sets)
    path = os.path.join(folder, "test")
    with open(path, "rb") as f:
        d = pickle.load(f, encoding="bytes")
    d[b"fine_labels"][0] = 100
    with open(path, "wb") as f:
        pickle.dump(d, f, protocol=2)
    _raises_one_line(lambda: load_dataset("cifar100", str(tmp_path)), path, "0..99")


@pytest.mark.parametrize("label", [0, 10.5])
def test_svhn_label_outside_1_10(tmp_path, label):
    sio = pytest.importorskip("scipy.io")
    for name, n in (("train_32x32.mat", 6), ("test_32x32.mat", 4)):
        x = np.zeros((32, 32, 3, n), np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.float64).reshape(n, 1)  # 1..10, as MATLAB stores
        if name.startswith("test"):
            y[2, 0] = label
        sio.savemat(str(tmp_path / name), {"X": x, "y": y})
    _raises_one_line(lambda: load_dataset("svhn", str(tmp_path)),
                     str(tmp_path / "test_32x32.mat"), "SVHN labels")


# ------------------------------------------------------------------ tampered checkpoints
@pytest.fixture(scope="module")
def tiny_ckpt(tmp_path_factory):
    """One real tiny checkpoint (resnet18, width 4, trained 1 epoch on the synthetic data)."""
    from utils.analysis.notebook import train_tiny_checkpoint
    path = str(tmp_path_factory.mktemp("tiny_ckpt") / "tiny.pth")
    return train_tiny_checkpoint(path, train_size=64, test_size=32, batch_size=32)


def _tamper(ckpt, section, key, value):
    ckpt = {**ckpt, section: {**ckpt[section]}}
    if value is _DELETE:
        del ckpt[section][key]
    else:
        ckpt[section][key] = value
    return ckpt


_DELETE = object()
# id: (section, key, value, field named in the message)
TAMPERED = {
    "unknown-arch": ("model", "arch", "resnet19", "model.arch"),
    "bad-placement": ("model", "placement", "everywhere", "model.placement"),
    "width-str": ("model", "base_width", "4", "model.base_width"),
    "width-zero": ("model", "base_width", 0, "model.base_width"),
    "width-bool": ("model", "base_width", True, "model.base_width"),
    "width-huge": ("model", "base_width", 1 << 20, "model.base_width"),
    "classes-negative": ("model", "num_classes", -3, "model.num_classes"),
    "eca-k-even": ("model", "eca_k", 4, "model.eca_k"),
    "channels-float": ("model", "in_channels", 3.0, "model.in_channels"),
    "image-size-zero": ("model", "image_size", 0, "model.image_size"),
    "std-zero": ("data", "std", [0.2, 0.0, 0.2], "data.std"),
    "std-wrong-length": ("data", "std", [0.2, 0.2], "data.std"),
    "mean-nan": ("data", "mean", [0.5, float("nan"), 0.5], "data.mean"),
    "mean-str": ("data", "mean", "0.5", "data.mean"),
}
IN_SCRIPT = ("unknown-arch", "bad-placement", "width-str", "width-zero", "std-zero", "std-wrong-length",
             "classes-negative")


@pytest.fixture(scope="module")
def tampered(tiny_ckpt, tmp_path_factory):
    """{case: path of a copy of tiny_ckpt with one field changed, each in a folder of its own}."""
    real = torch.load(tiny_ckpt, weights_only=True)
    root = tmp_path_factory.mktemp("tampered")
    paths = {}
    for case, (section, key, value, _) in TAMPERED.items():
        (root / case).mkdir()
        paths[case] = str(root / case / f"{case}.pth")
        torch.save(_tamper(real, section, key, value), paths[case])
    return paths


@pytest.mark.parametrize("case", list(TAMPERED))
def test_tampered_checkpoint_is_refused_on_load(tampered, case):
    field = TAMPERED[case][3]
    _raises_one_line(lambda: load_checkpoint(tampered[case]), field, tampered[case])
    ckpt = torch.load(tampered[case], weights_only=True)  # and if handed over already loaded
    _raises_one_line(lambda: model_from_checkpoint(ckpt, tampered[case]), field)


def test_tampered_checkpoint_in_evaluate(tampered, run, digest):
    """evaluate.py <ckpt>: one line naming the field and the file; nothing written next to it."""
    def one(case):
        folder = os.path.dirname(tampered[case])
        before = digest(folder)
        proc = run(EVAL, tampered[case], "--device", "cpu", "--no-tensorboard")
        return proc, before, digest(folder)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip(IN_SCRIPT, pool.map(one, IN_SCRIPT)))
    for case, (proc, before, after) in results.items():
        _one_line_error(proc, TAMPERED[case][3], tampered[case])
        assert after == before, f"{case}: evaluate.py wrote {sorted(set(after) - set(before))}"


def test_weights_of_another_shape_are_checked_before_building(tiny_ckpt, tmp_path):
    """A description that passes the bounds but does not fit the weights is refused from the
    meta-device layout, before a model of that size is allocated."""
    real = torch.load(tiny_ckpt, weights_only=True)
    path = str(tmp_path / "wide.pth")
    torch.save(_tamper(real, "model", "base_width", 4096), path)
    ckpt = load_checkpoint(path)
    _raises_one_line(lambda: model_from_checkpoint(ckpt, path), path, "do not match",
                     "of another shape")


# ------------------------------------------------------------------ teachers of another run
def _mid(tiny_cifar, out, teacher):
    return [MID, "--dataset", "cifar10", "--data-dir", tiny_cifar, "--width", "4", "--epochs", "1",
            "--batch-size", "50", "--eval-batch-size", "100", "--no-progress", "--device", "cpu",
            "--no-tensorboard", "--output-dir", out, "--teacher-checkpoint", teacher]


@pytest.mark.parametrize("field, value, needle", [("num_classes", 4, "4 classes (this run: 10)"),
                                                  ("image_size", 16, "16 px images (this run: 32)")])
def test_teacher_of_another_shape_is_refused(tiny_ckpt, tiny_cifar, tmp_path, run, field, value,
                                             needle):
    from skipkd.models import create_model
    real = torch.load(tiny_ckpt, weights_only=True)
    cfg = {k: v for k, v in real["model"].items() if k != "arch"}
    cfg[field] = value
    model = create_model("resnet18", num_classes=cfg["num_classes"], base_width=4,
                         placement="parallel")
    path = save_checkpoint(str(tmp_path / "teacher.pth"), model, arch="resnet18", role="teacher",
                           model_cfg=cfg, data_cfg={**real["data"], field: value})
    out = tmp_path / "out"
    proc = run(*_mid(tiny_cifar, out, path))
    _one_line_error(proc, path, needle)
    assert not out.exists() or not any(out.rglob("*.pth"))


def test_teacher_of_another_dataset_is_a_warning(tiny_ckpt, tiny_cifar, tmp_path, run):
    """The tiny teacher was trained on 'synthetic' (10 classes x 3 x 32 px): usable on CIFAR-10,
    with one warning line saying so."""
    proc = run(*_mid(tiny_cifar, tmp_path / "out", tiny_ckpt))
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    warnings = [line for line in proc.stderr.splitlines() if "synthetic" in line]
    assert len(warnings) == 1 and warnings[0].startswith("warning:"), proc.stderr
    assert "cifar10" in warnings[0] and tiny_ckpt in warnings[0]
