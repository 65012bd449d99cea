"""Data: the CIFAR-10 on-disk format, the synthetic set, batched augmentation, the loader, flags."""
import os
import pickle

import numpy as np
import pytest
import torch

from skipkd.cli import common_parser, finalize_args, str2bool
from skipkd.data import (CIFAR10_CLASSES, Augment, ImageData, TensorLoader, channel_stats,
                        load_dataset, make_synthetic, write_cifar10)
from skipkd.errors import UserError


# ------------------------------------------------------------------ CIFAR-10 on disk
def test_cifar10_round_trip(tmp_path):
    train, test = make_synthetic(23, seed=1), make_synthetic(7, seed=2)
    train.classes = list(CIFAR10_CLASSES)
    folder = write_cifar10(str(tmp_path), train, test)
    assert sorted(os.listdir(folder)) == sorted(
        [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"])
    tr, te = load_dataset("cifar10", str(tmp_path))
    assert tr.images.dtype == torch.uint8 and tr.images.shape == (23, 3, 32, 32)
    assert torch.equal(tr.images, train.images) and torch.equal(tr.labels, train.labels)
    assert torch.equal(te.images, test.images) and torch.equal(te.labels, test.labels)
    assert tr.labels.dtype == torch.int64
    assert tr.classes == te.classes == CIFAR10_CLASSES


def test_cifar10_files_use_the_real_layout(tmp_path):
    """Each batch is a pickle dict with b'data' (N, 3072) uint8 rows, R then G then B planes,
    row-major, and b'labels' a list of ints; batches.meta holds b'label_names'."""
    train, test = make_synthetic(10, seed=5), make_synthetic(4, seed=6)
    folder = write_cifar10(str(tmp_path), train, test)
    with open(os.path.join(folder, "data_batch_1"), "rb") as f:
        d = pickle.load(f, encoding="bytes")
    assert d[b"data"].dtype == np.uint8 and d[b"data"].shape == (2, 3072)
    assert isinstance(d[b"labels"], list) and d[b"labels"] == train.labels[:2].tolist()
    row = d[b"data"][1]
    img = train.images[1].numpy()
    assert np.array_equal(row[:1024], img[0].reshape(-1))      # red plane
    assert np.array_equal(row[1024:2048], img[1].reshape(-1))  # green plane
    assert np.array_equal(row[2048:], img[2].reshape(-1))      # blue plane
    assert row[33] == img[0, 1, 1]                               # row-major: (y=1, x=1)
    with open(os.path.join(folder, "batches.meta"), "rb") as f:
        meta = pickle.load(f, encoding="bytes")
    assert [c.decode() for c in meta[b"label_names"]] == train.classes


def test_cifar10_reads_a_hand_written_batch(tmp_path):
    """A file written here by hand in the published format (str keys, as some tools write it)
    loads, and a missing batches.meta falls back to the CIFAR-10 class names."""
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, size=(3, 3072), dtype=np.uint8)
    for name, n in [(f"data_batch_{i}", 3) for i in range(1, 6)] + [("test_batch", 3)]:
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data[:n], "labels": [4, 0, 9][:n]}, f, protocol=2)
    tr, te = load_dataset("cifar10", str(tmp_path))
    assert len(tr) == 15 and len(te) == 3
    assert torch.equal(te.images[2, 1], torch.from_numpy(data[2, 1024:2048].reshape(32, 32)))
    assert te.labels.tolist() == [4, 0, 9]
    assert tr.classes == CIFAR10_CLASSES


def test_cifar10_missing_gives_user_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        load_dataset("cifar10", str(tmp_path / "nope"))
    with pytest.raises(UserError, match="cifar-10-batches-py"):
        load_dataset("cifar10", str(tmp_path))
    (tmp_path / "cifar-10-batches-py").mkdir()
    (tmp_path / "cifar-10-batches-py" / "data_batch_1").write_bytes(b"\x00garbage")
    with pytest.raises(UserError, match="data_batch_1"):
        load_dataset("cifar10", str(tmp_path))
    with pytest.raises(UserError, match="cifar10"):
        load_dataset("imagenet", str(tmp_path))


@pytest.mark.parametrize("payload", [
    {b"data": np.zeros((2, 100), np.uint8), b"labels": [0, 1]},   # rows of the wrong length
    {b"labels": [0, 1]},                                           # no image data
    [1, 2, 3],                                                     # not a dict
    {b"data": np.zeros((2, 3072), np.uint8), b"labels": [0]},      # labels do not match
])
def test_cifar10_malformed_batch_is_a_user_error(tmp_path, payload):
    folder = write_cifar10(str(tmp_path), make_synthetic(10, seed=0), make_synthetic(5, seed=1))
    with open(os.path.join(folder, "data_batch_2"), "wb") as f:
        pickle.dump(payload, f, protocol=2)
    with pytest.raises(UserError, match="data_batch_2"):
        load_dataset("cifar10", str(tmp_path))


# ------------------------------------------------------------------ synthetic
def test_synthetic_deterministic_and_seed_dependent():
    a, b, c = make_synthetic(64, seed=3), make_synthetic(64, seed=3), make_synthetic(64, seed=4)
    assert a.images.shape == (64, 3, 32, 32) and a.images.dtype == torch.uint8
    assert a.labels.shape == (64,) and a.labels.dtype == torch.int64
    assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert not torch.equal(a.images, c.images)
    assert not torch.equal(a.labels, c.labels)
    assert len(a.classes) == 10


def test_synthetic_classes_balanced_and_images_varied():
    d = make_synthetic(2000, seed=0)
    counts = torch.bincount(d.labels, minlength=10)
    assert counts.numel() == 10 and int(d.labels.min()) >= 0 and int(d.labels.max()) <= 9
    assert counts.min() >= 150 and counts.max() <= 250, counts.tolist()
    # not constant and not saturated
    assert d.images.float().std() > 20
    assert 50 < d.images.float().mean() < 200
    # images of one class differ from each other (random phase, blob and noise)
    same = d.images[d.labels == 0][:2]
    assert not torch.equal(same[0], same[1])


def test_synthetic_other_sizes():
    d = make_synthetic(30, seed=0, image_size=16, num_classes=4)
    assert d.images.shape == (30, 3, 16, 16) and int(d.labels.max()) < 4 and len(d.classes) == 4


def test_channel_stats():
    d = make_synthetic(50, seed=0)
    mean, std = channel_stats(d.images)
    x = d.images.numpy().astype(np.float64) / 255
    # float64 on both sides, sums of 50 * 32 * 32 non-negative terms in another order:
    # <= 51200 * 1.1e-16 = 6e-12 relative
    np.testing.assert_allclose(mean, x.mean(axis=(0, 2, 3)), rtol=1e-9)
    np.testing.assert_allclose(std, x.std(axis=(0, 2, 3), ddof=1), rtol=1e-9)


# ------------------------------------------------------------------ augmentation
def _numbered_images(b=6, c=2, h=8, w=8):
    base = torch.arange(1, h * w + 1, dtype=torch.uint8).reshape(1, 1, h, w)
    return (base + torch.arange(c, dtype=torch.uint8).reshape(1, c, 1, 1) * 64
            + torch.zeros(b, 1, 1, 1, dtype=torch.uint8)).contiguous()


@pytest.mark.parametrize("aug", [Augment(), Augment(crop_padding=0), Augment(hflip=False),
                                 Augment(crop_padding=2, vflip=True)])
def test_augment_preserves_shape_and_dtype(aug):
    x = make_synthetic(8, seed=0).images
    out = aug(x, torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.dtype == torch.uint8


def test_crop_is_a_shift_of_the_padded_image():
    p = 2
    x = _numbered_images(b=40)
    _, _, h, w = x.shape
    out = Augment(crop_padding=p, hflip=False)(x, torch.Generator().manual_seed(7))
    # the same generator draws give the crop offsets
    g = torch.Generator().manual_seed(7)
    dy = torch.randint(0, 2 * p + 1, (40,), generator=g)
    dx = torch.randint(0, 2 * p + 1, (40,), generator=g)
    padded = torch.nn.functional.pad(x, (p, p, p, p))
    shifts = set()
    for i in range(40):
        assert torch.equal(out[i], padded[i, :, dy[i]:dy[i] + h, dx[i]:dx[i] + w])
        shifts.add((int(dy[i]), int(dx[i])))
    assert len(shifts) > 5  # offsets vary per image


def test_crop_known_shift():
    """Offsets (0, 0) move the content down-right by p with zeros on the top/left border;
    offsets (p, p) give the image back unchanged."""
    p = 3
    x = _numbered_images(b=1, c=1, h=6, w=6)
    aug = Augment(crop_padding=p, hflip=False)
    found = {}
    for seed in range(300):
        g = torch.Generator().manual_seed(seed)
        dy = int(torch.randint(0, 2 * p + 1, (1,), generator=g))
        dx = int(torch.randint(0, 2 * p + 1, (1,), generator=g))
        if (dy, dx) in ((0, 0), (p, p)) and (dy, dx) not in found:
            found[(dy, dx)] = aug(x, torch.Generator().manual_seed(seed))
    assert set(found) == {(0, 0), (p, p)}
    assert torch.equal(found[(p, p)], x)
    shifted = found[(0, 0)][0, 0]
    assert (shifted[:p] == 0).all() and (shifted[:, :p] == 0).all()
    assert torch.equal(shifted[p:, p:], x[0, 0, :6 - p, :6 - p])


def test_flips_are_per_image_and_exact():
    x = _numbered_images(b=64)
    out = Augment(crop_padding=0, hflip=True)(x, torch.Generator().manual_seed(1))
    flipped = [torch.equal(out[i], x[i].flip(2)) for i in range(64)]
    kept = [torch.equal(out[i], x[i]) for i in range(64)]
    assert all(f != k for f, k in zip(flipped, kept))  # each image is one or the other
    assert 10 < sum(flipped) < 54
    out = Augment(crop_padding=0, hflip=False, vflip=True)(x, torch.Generator().manual_seed(2))
    vflipped = [torch.equal(out[i], x[i].flip(1)) for i in range(64)]
    assert all(v or torch.equal(out[i], x[i]) for i, v in enumerate(vflipped))
    assert 10 < sum(vflipped) < 54
    assert torch.equal(Augment(crop_padding=0, hflip=False)(x), x)


# ------------------------------------------------------------------ loader
def _indexed_data(n=103):
    imgs = torch.arange(n, dtype=torch.uint8).reshape(n, 1, 1, 1).expand(n, 3, 4, 4).contiguous()
    return ImageData(imgs, torch.arange(n), ["c"])


def test_loader_covers_every_sample_once_per_epoch():
    data = _indexed_data(103)
    loader = TensorLoader(data, batch_size=10, shuffle=True, seed=0)
    assert len(loader) == 11 and loader.num_samples == 103
    orders = []
    for _ in range(2):
        ys, xs = [], []
        for xb, yb in loader:
            assert xb.dtype == torch.float32 and xb.shape[1:] == (3, 4, 4)
            ys.append(yb)
            xs.append(xb[:, 0, 0, 0])
        ys = torch.cat(ys)
        assert sorted(ys.tolist()) == list(range(103))
        # images stay paired with their labels
        assert torch.equal((torch.cat(xs) * 255).round().long(), ys)
        orders.append(ys.tolist())
    assert orders[0] != orders[1] and orders[0] != list(range(103))
    # without shuffle: the stored order; drop_last drops the ragged tail
    plain = torch.cat([y for _, y in TensorLoader(data, 10)])
    assert plain.tolist() == list(range(103))
    dl = TensorLoader(data, 10, shuffle=True, drop_last=True)
    assert len(dl) == 10 and dl.num_samples == 100
    assert sum(len(y) for _, y in dl) == 100
    # the same seed gives the same order
    again = torch.cat([y for _, y in TensorLoader(data, 10, shuffle=True, seed=0)])
    assert again.tolist() == orders[0]


def test_loader_epochs_are_reproducible_and_resumable():
    """Each epoch's order and augmentation depend only on (seed, epoch, step): iterating an
    epoch again, or from a middle step, gives the same batches."""
    data = make_synthetic(50, seed=0)
    loader = TensorLoader(data, 8, shuffle=True, augment=Augment(), seed=5)
    full = list(loader.iterate(2))
    again = list(loader.iterate(2))
    tail = list(loader.iterate(2, start_step=3))
    assert len(full) == 7 and len(tail) == 4
    for (xa, ya), (xb, yb) in zip(full, again):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    for (xa, ya), (xb, yb) in zip(full[3:], tail):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other = torch.cat([y for _, y in loader.iterate(3)])
    assert other.tolist() != torch.cat([y for _, y in full]).tolist()


def test_loader_normalisation():
    data = make_synthetic(20, seed=0)
    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    loader = TensorLoader(data, batch_size=20, mean=mean, std=std)
    xb, _ = next(iter(loader))
    m = torch.tensor(mean).reshape(1, 3, 1, 1)
    s = torch.tensor(std).reshape(1, 3, 1, 1)
    # float32, folded (x * scale + shift) against the formula: each side rounds ~4 times
    # values up to 1 / min(std) = 5 in size
    eps32 = torch.finfo(torch.float32).eps
    torch.testing.assert_close(xb, (data.images.float() / 255 - m) / s, rtol=0,
                               atol=16 * eps32 / min(std))
    # defaults: plain /255 (x * fl(1/255) against x / 255: at most 1.5 EPS32 apart, for x <= 1)
    xb, _ = next(iter(TensorLoader(data, batch_size=20)))
    torch.testing.assert_close(xb, data.images.float() / 255, rtol=0, atol=4 * eps32)
    cl, _ = next(iter(TensorLoader(data, batch_size=4, channels_last=True)))
    assert cl.is_contiguous(memory_format=torch.channels_last)
    with pytest.raises(ValueError):
        TensorLoader(data, batch_size=0)


def test_loader_augments_training_batches():
    data = make_synthetic(16, seed=0)
    loader = TensorLoader(data, 16, augment=Augment(crop_padding=4, hflip=True), seed=3)
    xb, yb = next(iter(loader))
    assert xb.shape == (16, 3, 32, 32)
    assert torch.equal(yb, data.labels)
    assert not torch.allclose(xb, data.images.float() / 255)


# ------------------------------------------------------------------ boolean flags
@pytest.mark.parametrize("text, value", [("yes", True), ("no", False), ("True", True),
                                         ("False", False), ("1", True), ("0", False),
                                         ("ON", True), ("off", False), (" y ", True)])
def test_str2bool(text, value):
    assert str2bool(text) is value


@pytest.mark.parametrize("text", ["maybe", "", "2", "yess"])
def test_str2bool_rejects(text):
    import argparse
    with pytest.raises(argparse.ArgumentTypeError):
        str2bool(text)


def _parse(argv):
    p = common_parser("test")
    return finalize_args(p, p.parse_args(argv), default_placement="none")


def test_bool_flags_via_cli(capsys):
    assert _parse([]).shuffle is True
    assert _parse(["--shuffle", "False"]).shuffle is False  # the original's type=bool bug
    assert _parse(["--shuffle", "no"]).shuffle is False
    assert _parse(["--shuffle"]).shuffle is True
    assert _parse(["--no-shuffle"]).shuffle is False
    assert _parse(["--tensorboard", "0"]).tensorboard is False
    args = _parse(["--ECA", "no"])
    assert args.placement == "none"
    assert _parse(["--ECA", "yes"]).placement == "parallel"
    assert _parse(["--ECA", "yes", "--ECA_block", "last"]).placement == "last"
    with pytest.raises(SystemExit) as exc:
        _parse(["--shuffle", "maybe"])
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    assert "maybe" in err and len(err.splitlines()) == 1


def test_presets_fill_unset_values():
    a = _parse([])
    assert (a.epochs, a.batch_size, a.lr, a.normalize) == (100, 128, 0.1, True)
    o = _parse(["--preset", "original", "--epochs", "3"])
    assert (o.epochs, o.batch_size, o.lr, o.vflip, o.normalize) == (3, 32, 0.001, True, False)
