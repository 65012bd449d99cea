"""The other datasets: Fashion-MNIST IDX files, SVHN .mat files and ImageFolder trees, each
written here in its real on-disk format and read by the real loaders; the held-out validation
split; and tiny end-to-end runs that report the protocol and the test accuracies."""
import gzip
import json
import os
import struct

import numpy as np
import pytest
import torch

from skipkd.cli import common_parser, finalize_args
from skipkd.data import (FASHION_MNIST_CLASSES, DATASETS, load_dataset, read_idx, split_indices)
from skipkd.errors import UserError
from skipkd.train.setup import make_loaders, prepare_data


# ------------------------------------------------------------------ Fashion-MNIST (IDX)
def write_idx(path, array):
    """The IDX format written by hand: 0x00 0x00, type byte 0x08 (unsigned byte), the number of
    dimensions, each size as a big-endian uint32, then the bytes in row-major order."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    blob = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape) \
        + array.tobytes()
    with (gzip.open if str(path).endswith(".gz") else open)(path, "wb") as f:
        f.write(blob)


def write_fashion_mnist(folder, n_train=40, n_test=20, gz=False, seed=0):
    """Four IDX files with random 28x28 images; -> (train images, train labels, test ...)."""
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    ext = ".gz" if gz else ""
    out = []
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = (np.arange(n) % 10).astype(np.uint8)
        rng.shuffle(labels)
        write_idx(os.path.join(folder, f"{prefix}-images-idx3-ubyte{ext}"), images)
        write_idx(os.path.join(folder, f"{prefix}-labels-idx1-ubyte{ext}"), labels)
        out += [images, labels]
    return out


@pytest.mark.parametrize("gz", [False, True])
@pytest.mark.parametrize("sub", ["", "fashion-mnist", os.path.join("FashionMNIST", "raw")])
def test_fashion_mnist_reads_idx_files(tmp_path, gz, sub):
    tr_img, tr_lab, te_img, te_lab = write_fashion_mnist(tmp_path / sub, 30, 12, gz=gz)
    train, test = load_dataset("fashion-mnist", str(tmp_path))
    assert train.images.shape == (30, 1, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (12, 1, 32, 32)
    assert train.labels.dtype == torch.int64
    assert train.labels.tolist() == tr_lab.tolist() and test.labels.tolist() == te_lab.tolist()
    # 2 px of zero padding on every side; the 28x28 image in the middle, unchanged
    assert torch.equal(train.images[:, 0, 2:30, 2:30], torch.from_numpy(tr_img))
    assert torch.equal(test.images[:, 0, 2:30, 2:30], torch.from_numpy(te_img))
    border = train.images.clone()
    border[:, :, 2:30, 2:30] = 0
    assert int(border.max()) == 0
    assert train.classes == FASHION_MNIST_CLASSES == test.classes
    assert train.info["preprocessing"] == "28x28 zero-padded to 32x32"


def test_fashion_mnist_unpadded_and_header(tmp_path):
    tr_img, _, _, _ = write_fashion_mnist(tmp_path, 5, 3)
    train, _ = load_dataset("fashion-mnist", str(tmp_path), pad_to=0)
    assert train.images.shape == (5, 1, 28, 28)
    assert torch.equal(train.images[:, 0], torch.from_numpy(tr_img))
    arr = read_idx(str(tmp_path / "train-images-idx3-ubyte"))
    assert arr.shape == (5, 28, 28) and arr.dtype == np.uint8
    with open(tmp_path / "train-images-idx3-ubyte", "rb") as f:
        assert f.read(8) == b"\x00\x00\x08\x03\x00\x00\x00\x05"  # magic 2051, then N = 5


@pytest.mark.parametrize("damage, match", [
    (lambda p: p.write_bytes(b"\x00\x00\x08"), "not an IDX file"),                # short
    (lambda p: p.write_bytes(b"PK\x03\x04" + bytes(100)), "not an IDX file"),     # a zip
    (lambda p: p.write_bytes(p.read_bytes()[:-10]), "bytes follow"),              # truncated
])
def test_fashion_mnist_damaged_files(tmp_path, damage, match):
    write_fashion_mnist(tmp_path, 5, 3)
    path = tmp_path / "t10k-images-idx3-ubyte"
    damage(path)
    with pytest.raises(UserError, match=match) as exc:
        load_dataset("fashion-mnist", str(tmp_path))
    assert "t10k-images-idx3-ubyte" in str(exc.value)


def test_fashion_mnist_missing_and_mismatched(tmp_path):
    with pytest.raises(UserError, match="Fashion-MNIST not found.*--download"):
        load_dataset("fashion-mnist", str(tmp_path))
    write_fashion_mnist(tmp_path, 5, 3, gz=True)
    os.remove(tmp_path / "t10k-labels-idx1-ubyte.gz")
    with pytest.raises(UserError, match="incomplete: missing t10k-labels-idx1-ubyte"):
        load_dataset("fashion-mnist", str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.zeros(4, np.uint8))  # 3 images, 4 labels
    with pytest.raises(UserError, match="3 images but .* 4 labels"):
        load_dataset("fashion-mnist", str(tmp_path))
    write_idx(tmp_path / "t10k-labels-idx1-ubyte.gz", np.array([0, 1, 12], np.uint8))
    with pytest.raises(UserError, match="labels must be 0..9"):
        load_dataset("fashion-mnist", str(tmp_path))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(b"not gzip at all")
    with pytest.raises(UserError, match="cannot read IDX file"):
        load_dataset("fashion-mnist", str(tmp_path))


# ------------------------------------------------------------------ SVHN (.mat)
def write_svhn(folder, n_train=12, n_test=6, seed=0):
    """SVHN's layout: X (32, 32, 3, N) uint8 (row, column, channel, image), y (N, 1) in 1..10."""
    sio = pytest.importorskip("scipy.io")
    os.makedirs(folder, exist_ok=True)
    rng = np.random.default_rng(seed)
    out = []
    for name, n in (("train_32x32.mat", n_train), ("test_32x32.mat", n_test)):
        x = rng.integers(0, 256, size=(32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(np.uint8).reshape(n, 1)  # 1..10, 10 = digit 0
        sio.savemat(os.path.join(folder, name), {"X": x, "y": y})
        out += [x, y]
    return out


@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn_reads_mat_files(tmp_path, sub):
    x, y, xt, yt = write_svhn(tmp_path / sub, 12, 6)
    train, test = load_dataset("svhn", str(tmp_path))
    assert train.images.shape == (12, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (6, 3, 32, 32)
    assert train.images.is_contiguous()
    # image n, channel c, row r, column w == X[r, w, c, n]
    assert int(train.images[5, 2, 7, 19]) == int(x[7, 19, 2, 5])
    assert torch.equal(train.images[3], torch.from_numpy(x[:, :, :, 3].transpose(2, 0, 1).copy()))
    expected = [int(v) % 10 for v in y.reshape(-1)]  # 10 -> 0
    assert train.labels.tolist() == expected and 0 in expected and 10 not in train.labels.tolist()
    assert test.labels.dtype == torch.int64 and int(test.labels.max()) <= 9
    assert train.classes == [str(i) for i in range(10)]


def test_svhn_errors(tmp_path):
    sio = pytest.importorskip("scipy.io")
    with pytest.raises(UserError, match="train_32x32.mat and test_32x32.mat"):
        load_dataset("svhn", str(tmp_path))
    write_svhn(tmp_path)
    (tmp_path / "test_32x32.mat").write_bytes(b"garbage" * 20)
    with pytest.raises(UserError, match="test_32x32.mat"):
        load_dataset("svhn", str(tmp_path))
    sio.savemat(str(tmp_path / "test_32x32.mat"), {"images": np.zeros((2, 2))})
    with pytest.raises(UserError, match="not an SVHN file"):
        load_dataset("svhn", str(tmp_path))


# ------------------------------------------------------------------ ImageFolder trees
def _save(path, img, **kw):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img.save(path, **kw)


def make_folder_tree(root):
    """train/{cat, dog, empty}/ and test/{cat, dog}/ with PNG/JPEG/GIF/TIFF files of mixed
    sizes and modes, a non-image file, a stray file, a corrupt image and a hidden file."""
    from PIL import Image
    rng = np.random.default_rng(0)
    rgb = lambda w, h: Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")
    # cat: RGB PNG 40x30, grayscale JPEG 64x64, 16-bit grayscale PNG (mid-grey), RGBA (transparent)
    _save(f"{root}/train/cat/a.png", rgb(40, 30))
    _save(f"{root}/train/cat/b.JPG", Image.new("L", (64, 64), 200), format="JPEG", quality=95)
    _save(f"{root}/train/cat/c16.png", Image.fromarray(np.full((20, 20), 128 * 257, np.uint16)))
    _save(f"{root}/train/cat/d.png", Image.new("RGBA", (32, 32), (255, 0, 0, 0)))
    # dog: palette PNG, CMYK JPEG, a GIF, a bilevel TIFF in a nested folder, broken and non-image files
    _save(f"{root}/train/dog/e.png", rgb(50, 50).convert("P"))
    _save(f"{root}/train/dog/f.jpg", Image.new("CMYK", (33, 47), (0, 255, 255, 0)), quality=95)
    _save(f"{root}/train/dog/g.gif", rgb(16, 16).convert("P"))
    _save(f"{root}/train/dog/sub/h.tif", Image.new("1", (24, 24), 1))
    (root / "train/dog/notes.txt").write_text("not an image")
    (root / "train/dog/broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    (root / "train/dog/.hidden.png").write_bytes(b"ignored")
    (root / "train/README.md").write_text("stray")
    (root / "train/empty").mkdir()
    # test: both classes, another size
    _save(f"{root}/test/cat/t1.png", rgb(100, 80))
    _save(f"{root}/test/dog/t2.jpeg", rgb(20, 60), quality=90)
    _save(f"{root}/test/dog/t3.png", Image.new("LA", (10, 10), (90, 255)))


@pytest.fixture
def folder_tree(tmp_path):
    make_folder_tree(tmp_path)
    return tmp_path


def test_folder_dataset(folder_tree, capsys):
    train, test = load_dataset("folder", str(folder_tree))
    err = capsys.readouterr().err
    assert train.classes == ["cat", "dog"] == test.classes          # 'empty' skipped
    assert train.images.shape == (4 + 4, 3, 32, 32) and train.images.dtype == torch.uint8
    assert train.labels.tolist() == [0, 0, 0, 0, 1, 1, 1, 1]
    assert test.images.shape == (3, 3, 32, 32) and test.labels.tolist() == [0, 1, 1]
    assert "empty" in err and "skipped 1 non-image file" in err
    assert "could not decode" in err and "broken.png" in err
    assert "outside the class folders" in err
    # modes: grey JPEG -> equal channels ~200; 16-bit mid-grey -> 128, not clipped to 255;
    # fully transparent red -> black; CMYK (0, 255, 255, 0) -> red; bilevel white -> 255
    b, c16, d = train.images[1], train.images[2], train.images[3]
    assert torch.equal(b[0], b[1]) and abs(float(b.float().mean()) - 200) < 3
    assert int(c16.min()) == int(c16.max()) == 128
    assert int(d.max()) == 0
    f = train.images[5].float().mean(dim=(1, 2))
    assert f[0] > 200 and f[1] < 40 and f[2] < 40
    assert int(train.images[7].min()) == 255
    la = test.images[2]
    assert int(la.min()) == int(la.max()) == 90


def test_folder_image_size_and_kwargs_filter(folder_tree):
    train, test = load_dataset("folder", str(folder_tree), image_size=16)
    assert train.images.shape[1:] == (3, 16, 16) and test.images.shape[1:] == (3, 16, 16)
    # options a reader does not take are ignored (callers may pass image_size to any reader)
    assert len(load_dataset("synthetic", image_size=16, train_size=4, test_size=2)[0]) == 4


def test_folder_class_indices_follow_train(tmp_path):
    """train/{a, b (empty), c}: classes [a, c]; test/c images get label 1; an empty test/b is
    fine; a test/d with images is an error."""
    from PIL import Image
    for split, cls in (("train", "a"), ("train", "c"), ("test", "c"), ("test", "a")):
        _save(f"{tmp_path}/{split}/{cls}/x.png", Image.new("RGB", (8, 8), (10, 20, 30)))
    (tmp_path / "train/b").mkdir()
    (tmp_path / "test/b").mkdir()
    train, test = load_dataset("folder", str(tmp_path))
    assert train.classes == ["a", "c"] and test.labels.tolist() == [0, 1]
    _save(f"{tmp_path}/test/d/y.png", Image.new("RGB", (8, 8)))
    with pytest.raises(UserError, match="test has class folder.* d .*no images of them"):
        load_dataset("folder", str(tmp_path))


def test_folder_without_images_is_one_user_error(tmp_path):
    with pytest.raises(UserError, match="train not found"):
        load_dataset("folder", str(tmp_path))
    (tmp_path / "train/cat").mkdir(parents=True)
    (tmp_path / "test/cat").mkdir(parents=True)
    (tmp_path / "train/cat/readme.txt").write_text("x")
    with pytest.raises(UserError, match="no images in") as exc:
        load_dataset("folder", str(tmp_path))
    assert "\n" not in str(exc.value)
    with pytest.raises(UserError, match="--download"):
        load_dataset("folder", str(tmp_path), download=True)


# ------------------------------------------------------------------ held-out validation split
def test_split_indices_disjoint_stratified_deterministic():
    order = torch.randperm(100, generator=torch.Generator().manual_seed(0))
    labels = torch.tensor([0] * 50 + [1] * 30 + [2] * 20)[order]
    tr, va = split_indices(labels, 0.2, seed=3)
    assert len(va) == 20 and len(tr) == 80
    assert set(tr.tolist()).isdisjoint(va.tolist())
    assert sorted(tr.tolist() + va.tolist()) == list(range(100))
    assert torch.bincount(labels[va], minlength=3).tolist() == [10, 6, 4]  # stratified
    tr2, va2 = split_indices(labels, 0.2, seed=3)
    assert torch.equal(va, va2) and torch.equal(tr, tr2)
    assert not torch.equal(va, split_indices(labels, 0.2, seed=4)[1])
    # a total that does not divide evenly: exactly round(f * N) held out
    _, va = split_indices(labels[:37], 0.3, seed=0)
    assert len(va) == 11


def _args(argv):
    p = common_parser("test")
    return finalize_args(p, p.parse_args(argv), default_placement="none")


def test_prepare_data_and_make_loaders_with_val_split(tmp_path):
    write_fashion_mnist(tmp_path, 50, 20)
    args = _args(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--val-split", "0.2",
                  "--batch-size", "8", "--eval-batch-size", "16"])
    train, test, cfg = prepare_data(args)
    assert cfg.protocol.startswith("held-out-val (20%") and cfg.val_split == 0.2
    assert (cfg.train_size, cfg.val_size, cfg.test_size) == (40, 10, 20)
    assert cfg.in_channels == 1 and cfg.image_size == 32 and len(cfg.mean) == 1
    tl, vl, rl = make_loaders(train, test, cfg, args, "cpu")
    assert (len(tl.labels), len(vl.labels), len(rl.labels)) == (40, 10, 20)
    # normalisation statistics are those of the 40 training images only
    from skipkd.data import channel_stats
    assert cfg.mean == pytest.approx(channel_stats(tl.images)[0])
    # the held-out images are training images, none of them in the train loader
    flat = lambda t: {bytes(x.numpy().tobytes()) for x in t}
    assert flat(vl.images) <= flat(train.images) and not flat(vl.images) & flat(tl.images)
    # the same split again from the same split seed; another seed gives another split
    _, _, cfg2 = prepare_data(args)
    assert cfg2.val_indices_sha1 == cfg.val_indices_sha1
    args.split_seed = 1
    assert prepare_data(args)[2].val_indices_sha1 != cfg.val_indices_sha1
    # --val-split 0 (the original preset's protocol): the test set is the validation set,
    # no report loader
    args0 = _args(["--dataset", "fashion-mnist", "--data-dir", str(tmp_path), "--val-split", "0"])
    train, test, cfg0 = prepare_data(args0)
    assert cfg0.protocol == "test-as-val" and cfg0.train_size == 50
    tl, vl, rl = make_loaders(train, test, cfg0, args0, "cpu")
    assert rl is None and len(vl.labels) == 20


def test_val_split_flag_validation(capsys):
    assert _args([]).val_split == 0.1  # the default preset holds out 10%
    assert _args(["--preset", "original"]).val_split == 0.0
    assert _args(["--val-split", "0"]).val_split == 0.0
    for bad in ("1", "1.5", "-0.1", "abc"):
        with pytest.raises(SystemExit) as exc:
            _args(["--val-split", bad])
        assert exc.value.code == 2
    assert "--val-split" in capsys.readouterr().err
    assert {"fashion-mnist", "svhn", "folder"} <= set(DATASETS)


# ------------------------------------------------------------------ end to end
def _summary(out):
    folder = os.path.join(out, "numpy_outputs")
    [name] = [n for n in os.listdir(folder) if n.startswith("summary_")]
    with open(os.path.join(folder, name)) as f:
        return json.load(f)


RUN_FLAGS = ("--width", "4", "--epochs", "1", "--batch-size", "20", "--eval-batch-size", "50",
             "--no-progress", "--no-tensorboard", "--device", "cpu")


def test_end_to_end_fashion_mnist_held_out(tmp_path, run):
    data = tmp_path / "data"
    write_fashion_mnist(data / "fashion-mnist", 100, 30, gz=True)
    out = tmp_path / "out"
    proc = run("model_training_mid.py", *RUN_FLAGS, "--dataset", "fashion-mnist",
               "--data-dir", data, "--val-split", "0.2", "--output-dir", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    s = _summary(str(out))
    assert s["dataset"]["protocol"].startswith("held-out-val (20%")
    assert (s["dataset"]["train_size"], s["dataset"]["val_size"], s["dataset"]["test_size"]) \
        == (80, 20, 30)
    assert s["dataset"]["in_channels"] == 1
    for role in ("teacher", "student"):
        r = s[role]
        assert r["protocol"] == s["dataset"]["protocol"]
        assert 0 <= r["test_acc_best"] <= 100 and 0 <= r["test_acc_last"] <= 100
        assert r["test_size"] == 30
    # one epoch: the best checkpoint is the last weights
    assert s["student"]["test_acc_best"] == s["student"]["test_acc_last"]
    assert "best-epoch checkpoint" in proc.stdout


def test_end_to_end_folder_test_as_val(tmp_path, run, folder_tree):
    out = tmp_path / "out"
    proc = run("model_training.py", *RUN_FLAGS, "--dataset", "folder", "--data-dir", folder_tree,
               "--image-size", "16", "--output-dir", out, "--val-split", "0")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    s = _summary(str(out))
    r = s["baseline"]
    assert s["dataset"]["protocol"] == r["protocol"] == "test-as-val"
    assert s["dataset"]["classes"] == ["cat", "dog"] and s["dataset"]["image_size"] == 16
    assert r["test_acc_best"] == r["best_val_acc"] and r["test_acc_last"] == r["final_val_acc"]
    ckpt = torch.load(r["checkpoint"], map_location="cpu", weights_only=True)
    assert ckpt["data"]["classes"] == ["cat", "dog"]


def test_folder_no_images_cli_error(tmp_path, run):
    (tmp_path / "train/a").mkdir(parents=True)
    (tmp_path / "test/a").mkdir(parents=True)
    proc = run("model_training.py", *RUN_FLAGS, "--dataset", "folder", "--data-dir", tmp_path,
               "--output-dir", tmp_path / "out")
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("error: folder dataset: no images in")
    assert len(proc.stderr.strip().splitlines()) == 1


# ------------------------------------------------------------------ test=False: the test split unread
def test_every_reader_leaves_the_test_split_unread(tmp_path, folder_tree):
    """load_dataset(..., test=False) returns (train, None) with the test files gone from disk:
    no reader opens, or even looks for, them (what --no-report-test relies on)."""
    import shutil
    from skipkd.data import write_cifar10
    from skipkd.data.synthetic import make_synthetic
    fm = tmp_path / "fm"
    write_fashion_mnist(str(fm))
    for name in os.listdir(fm):
        if name.startswith("t10k"):
            os.remove(fm / name)
    cifar = tmp_path / "cifar"
    write_cifar10(str(cifar), make_synthetic(20, seed=1), make_synthetic(10, seed=2))
    os.remove(cifar / "cifar-10-batches-py" / "test_batch")
    svhn = tmp_path / "svhn"
    write_svhn(str(svhn))
    os.remove(svhn / "test_32x32.mat")
    shutil.rmtree(folder_tree / "test")
    for name, root in (("fashion-mnist", fm), ("cifar10", cifar), ("svhn", svhn),
                       ("folder", folder_tree)):
        train, test = load_dataset(name, str(root), test=False)
        assert test is None and len(train) > 0, name
        with pytest.raises(UserError):  # the same folder with the test split asked for
            load_dataset(name, str(root))
    train, test = load_dataset("synthetic", str(tmp_path), test=False, train_size=8)
    assert test is None and len(train) == 8
