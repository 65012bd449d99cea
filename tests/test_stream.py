"""The streamed pipeline for ImageNet-class images (skipkd/data/stream.py): torchvision's
standard transforms, the same batches whatever the worker count, resumable mid-epoch, and
awkward files converted or skipped, never a crash."""
import json
import os

import numpy as np
import pytest
import torch
import torchvision.transforms as T
from PIL import Image

from conftest import run_script
from skipkd.data.stream import IMAGENET_MEAN, IMAGENET_STD, StreamLoader, scan_files


def _tree(root, size=(90, 70), train=6, val=3):
    rng = np.random.default_rng(0)
    for split, n in (("train", train), ("val", val)):
        for c, hue in (("n01", 0), ("n02", 1), ("n03", 2)):
            os.makedirs(root / split / c, exist_ok=True)
            for i in range(n):
                a = rng.integers(0, 120, (size[1], size[0], 3), dtype=np.uint8)
                a[..., hue] += 120
                Image.fromarray(a).save(root / split / c / f"{i}.JPEG", quality=90)
    return root


@pytest.fixture
def tree(tmp_path):
    return _tree(tmp_path / "data")


def test_evaluation_batches_are_torchvisions_transforms(tree):
    train, val = scan_files(str(tree), "imagenet")
    assert (len(train), len(val), train.classes) == (18, 9, ["n01", "n02", "n03"])
    loader = StreamLoader(val, 4, image_size=32)
    x, y = next(loader.iterate(0))
    # independently: resize the shorter side to 37 (32 * 256 / 224), centre crop 32, ImageNet
    # mean and std, as torchvision's reference evaluation does it
    ref = T.Compose([T.Resize(37), T.CenterCrop(32), T.ToTensor(),
                     T.Normalize(IMAGENET_MEAN, IMAGENET_STD)])
    expected = torch.stack([ref(Image.open(p).convert("RGB")) for p in val.paths[:4]])
    assert torch.allclose(x, expected, atol=1e-5)
    assert y.tolist() == val.labels[:4].tolist()


def test_training_batches_do_not_depend_on_the_workers_and_resume_mid_epoch(tree):
    train, _ = scan_files(str(tree), "imagenet")
    make = lambda workers: StreamLoader(train, 5, train=True, image_size=24, shuffle=True,
                                        seed=3, workers=workers)
    in_process = list(make(0).iterate(1, with_index=True))
    two_workers = list(make(2).iterate(1, with_index=True))
    assert len(in_process) == len(two_workers) == 4
    for (xa, ya, ia), (xb, yb, ib) in zip(in_process, two_workers):
        assert torch.equal(xa, xb) and torch.equal(ya, yb) and torch.equal(ia, ib)
    resumed = list(make(0).iterate(1, start_step=2))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(in_process[2:], resumed))
    other_epoch = next(make(0).iterate(2))[0]
    assert not torch.equal(other_epoch, in_process[0][0])  # a new order and new crops


def test_awkward_images_are_converted_or_skipped_and_counted(tree, tmp_path, capsys):
    Image.new("CMYK", (50, 60), (0, 255, 255, 0)).save(tree / "train/n01/cmyk.jpg", quality=95)
    Image.new("L", (40, 40), 128).save(tree / "train/n02/grey.png")
    Image.new("RGB", (5, 4), (255, 0, 0)).save(tree / "train/n03/tiny.png")
    (tree / "train/n03/broken.JPEG").write_bytes(b"\xff\xd8\xff not a jpeg")
    train, _ = scan_files(str(tree), "imagenet")
    loader = StreamLoader(train, 8, train=True, image_size=16, shuffle=True, workers=0)
    seen = sum(len(y) for _, y in loader.iterate(0))
    assert seen == len(train) - 1 == 21
    assert "skipped 1 image(s) that could not be decoded, e.g. broken.JPEG" in \
        capsys.readouterr().err
    list(loader.iterate(1))  # counted once, not again every epoch
    assert "skipped" not in capsys.readouterr().err


@pytest.mark.slow
def test_a_run_on_an_imagenet_layout_streams_and_records_the_pipeline(tree, tmp_path):
    out = tmp_path / "out"
    proc = run_script("model_training_mid.py", "--dataset", "imagenet", "--data-dir", tree,
                      "--image-size", "32", "--teacher", "resnet18_imagenet", "--student",
                      "resnet18_imagenet", "--width", "8", "--epochs", "1", "--batch-size", "6",
                      "--workers", "2", "--kd", "skip", "--no-progress", "--no-tensorboard",
                      "--device", "cpu", "--output-dir", out, "--run-name", "s")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "numpy_outputs" / "summary_s.json").read_text())
    data = summary["dataset"]
    assert data["dataset"] == "imagenet" and data["image_size"] == 32
    assert data["mean"] == list(IMAGENET_MEAN) and "RandomResizedCrop(32)" in data["preprocessing"]
    assert (data["train_size"], data["val_size"], data["test_size"]) == (16, 2, 9)


def test_a_folder_dataset_streams_from_128_pixels(tree, tmp_path):
    from skipkd.cli import parse_baseline_args
    from skipkd.train.setup import prepare_data
    os.rename(tree / "val", tree / "test")
    args = parse_baseline_args(["--dataset", "folder", "--data-dir", str(tree), "--image-size",
                                "128", "--model", "resnet18_imagenet"])
    train, test, data = prepare_data(args)
    assert type(train).__name__ == "FileImages" and data.preprocessing.startswith("streamed")
    args = parse_baseline_args(["--dataset", "folder", "--data-dir", str(tree), "--image-size",
                                "128", "--pipeline", "memory"])
    assert type(prepare_data(args)[0]).__name__ == "ImageData"


def test_under_torchrun_each_rank_decodes_only_its_share(tree):
    """Two ranks together see exactly the images of one process's batches, each once."""
    train, _ = scan_files(str(tree), "imagenet")
    make = lambda rank, world: StreamLoader(train, 6 // world, train=True, image_size=16,
                                            shuffle=True, seed=5, rank=rank, world_size=world)
    alone = [set(i.tolist()) for _, _, i in make(0, 1).iterate(0, with_index=True)]
    ranks = [[set(i.tolist()) for _, _, i in make(r, 2).iterate(0, with_index=True)]
             for r in (0, 1)]
    assert len(alone) == len(ranks[0]) == len(ranks[1]) == 3
    for whole, a, b in zip(alone, *ranks):
        assert a | b == whole and not a & b
    # and each rank decoded only its share: the decoder was asked for those indices alone
    class Recording(torch.utils.data.Dataset):
        def __init__(self, inner):
            self.inner, self.seen = inner, []

        def __len__(self):
            return len(self.inner)

        def __getitem__(self, key):
            self.seen.append(key[1])
            return self.inner[key]

    loader = make(1, 2)
    loader.decoder = Recording(loader.decoder)
    list(loader.iterate(0))
    assert sorted(loader.decoder.seen) == sorted(i for batch in ranks[1] for i in batch)


@pytest.mark.slow
def test_evaluate_reads_a_streamed_run_as_the_run_evaluated_it(tree, tmp_path):
    """evaluate.py on a streamed run's checkpoint: the run's own evaluation pipeline, so the
    same test accuracy as the run reported."""
    out = tmp_path / "out"
    proc = run_script("model_training.py", "--dataset", "imagenet", "--data-dir", tree,
                      "--image-size", "32", "--model", "resnet18_imagenet", "--width", "8",
                      "--epochs", "1", "--batch-size", "6", "--workers", "0", "--no-progress",
                      "--no-tensorboard", "--device", "cpu", "--val-split", "0",
                      "--output-dir", out, "--run-name", "e")
    assert proc.returncode == 0, proc.stderr
    summary = json.loads((out / "numpy_outputs" / "summary_e.json").read_text())
    ckpt = out / "saved_pth_model" / "e_baseline.pth"
    proc = run_script("evaluate.py", ckpt, "--device", "cpu", "--tensorboard", "false")
    assert proc.returncode == 0, proc.stderr
    report = json.loads((out / "saved_pth_model" / "e_baseline_eval.json").read_text())
    assert report["accuracy"] == pytest.approx(summary["baseline"]["test_acc_best"], abs=1e-6)
    assert report["num_images"] == 9
