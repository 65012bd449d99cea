"""ImageNet-class images: files decoded batch by batch in loader worker processes, with the
standard pipeline (He et al., 2016; torchvision's reference recipe):

    train  RandomResizedCrop(S) (scale 0.08-1, ratio 3/4-4/3) + horizontal flip
    eval   resize the shorter side to round(S * 256 / 224) (256 at S = 224), centre crop S
    both   RGB (CMYK, grey, palette, 16-bit and transparent images converted as the folder
           reader does), ImageNet's mean and std (0.485, 0.456, 0.406) / (0.229, 0.224, 0.225)

The data stay files (`FileImages`: paths, labels, classes); `StreamLoader` has TensorLoader's
interface (labels, len, num_samples, iterate(epoch, start_step, with_index)) with the same
stateless randomness: the order of epoch e comes from (seed, e), and an image's crop and flip
from (seed, e, its index), so a run is the same whatever --workers is, resumes at an epoch
boundary, and under torchrun each rank decodes only its own share of every batch. A file that
cannot be decoded is skipped (its batch is one image smaller) and counted; one warning per
epoch names the first few.
"""
import os
from dataclasses import dataclass, field

import numpy as np
import torch

from ..errors import UserError
from .common import _warn
from .folder import IMAGE_EXTENSIONS, _scan_split, _to_rgb
from .loader import BatchOrder

__all__ = ["FileImages", "StreamLoader", "scan_files", "decode_eval", "IMAGENET_MEAN",
           "IMAGENET_STD", "eval_resize"]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def eval_resize(size: int) -> int:
    """The evaluation resize before the centre crop: 256 for 224 (the ratio 224/256 = 0.875)."""
    return int(round(size * 256 / 224))


@dataclass
class FileImages:
    """A split kept as files: paths (N) and labels (N,) int64 by class index."""
    paths: list
    labels: torch.Tensor
    classes: list = field(default_factory=list)
    info: dict = field(default_factory=dict)

    def __len__(self):
        return int(self.labels.shape[0])

    def subset(self, idx) -> "FileImages":
        idx = torch.as_tensor(idx, dtype=torch.long)
        return FileImages([self.paths[i] for i in idx.tolist()], self.labels[idx],
                          list(self.classes), dict(self.info))


def scan_files(data_dir: str, name: str, test_names=("val", "test"), test=True):
    """-> (train FileImages, test FileImages or None): data_dir/train/<class>/<image> and the
    first of data_dir/val/ or test/ with the same class folders (ImageNet's val/ sorted into
    class folders, as torchvision's ImageFolder reads it). Classes come from train/."""
    train_dir = os.path.join(data_dir, "train")
    test_dir = next((os.path.join(data_dir, s) for s in test_names
                     if os.path.isdir(os.path.join(data_dir, s))), None)
    if not os.path.isdir(train_dir) or (test and test_dir is None):
        raise UserError(f"{name}: expected {data_dir}/train/<class>/<image> and "
                        f"{data_dir}/{test_names[0]}/<class>/<image>")
    found, skipped, _ = _scan_split(train_dir)
    classes = [c for c, paths in found.items() if paths]
    if not classes:
        raise UserError(f"{name}: no images in {train_dir} (extensions "
                        f"{', '.join(IMAGE_EXTENSIONS)})")
    if skipped:
        _warn(f"{train_dir}: skipped {skipped} non-image file(s)")
    index = {c: i for i, c in enumerate(classes)}
    info = {"source": os.path.abspath(data_dir)}

    def files(found_split):
        pairs = [(p, index[c]) for c in found_split if c in index for p in found_split[c]]
        return FileImages([p for p, _ in pairs],
                          torch.tensor([y for _, y in pairs], dtype=torch.int64),
                          list(classes), dict(info))

    train = files(found)
    if not test:
        return train, None
    found_test, _, _ = _scan_split(test_dir)
    unknown = [c for c, paths in found_test.items() if paths and c not in index]
    if unknown:
        raise UserError(f"{name}: {test_dir} has class folder(s) {', '.join(unknown[:3])} that "
                        f"{train_dir} has no images of")
    held = files(found_test)
    if len(held) == 0:
        raise UserError(f"{name}: no images in {test_dir}")
    return train, held


class _Decode(torch.utils.data.Dataset):
    """Item (epoch, index) -> (uint8 (3, S, S) or None when unreadable, index, why)."""

    def __init__(self, files: FileImages, train: bool, size: int, seed: int):
        import torchvision.transforms as T  # here: torchvision takes a second to import
        self.paths, self.seed = files.paths, int(seed)
        if train:
            self.transform = T.Compose([T.RandomResizedCrop(size), T.RandomHorizontalFlip()])
        else:
            self.transform = T.Compose([T.Resize(eval_resize(size)), T.CenterCrop(size)])
        self.train = train

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, key):
        from PIL import Image, ImageOps
        epoch, i = key
        path = self.paths[i]
        try:
            with Image.open(path) as img:
                img = _to_rgb(ImageOps.exif_transpose(img) or img)
                img.load()
        except Exception as exc:  # corrupt, truncated, not an image: skipped and counted
            return None, i, f"{os.path.basename(path)} ({type(exc).__name__})"
        if self.train:  # the image's own draws: the same in any worker, on any rank
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed((self.seed * 1_000_003 + epoch) * 10_000_019 + i)
                img = self.transform(img)
        else:
            img = self.transform(img)
        array = np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)
        return torch.from_numpy(np.ascontiguousarray(array)), i, None


def decode_eval(files: FileImages, size: int) -> tuple:
    """Every image of `files` through the evaluation pipeline, in this process: (uint8
    (N, 3, size, size), labels (N,), [why, for each file that could not be decoded])."""
    decode = _Decode(files, train=False, size=size, seed=0)
    items = [decode[(0, i)] for i in range(len(files))]
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [why for x, _, why in items if x is None]
    if not good:
        return torch.zeros(0, 3, size, size, dtype=torch.uint8), files.labels[:0], bad
    return (torch.stack([x for x, _ in good]), files.labels[torch.tensor([i for _, i in good])],
            bad)


def _collate(items):
    good = [(x, i) for x, i, _ in items if x is not None]
    bad = [why for x, _, why in items if x is None]
    if not good:
        return None, torch.zeros(0, dtype=torch.long), bad
    return (torch.stack([x for x, _ in good]), torch.tensor([i for _, i in good]), bad)


class StreamLoader(BatchOrder):
    """Batches (x float normalised (B, 3, S, S), y (B,)) decoded from files by `workers` loader
    processes (0: in this process). See the module docstring for the randomness."""

    def __init__(self, files: FileImages, batch_size: int, device="cpu", mean=IMAGENET_MEAN,
                 std=IMAGENET_STD, train=False, image_size=224, shuffle=False, seed=0,
                 workers=0, channels_last=False, rank=0, world_size=1, drop_last=False):
        super().__init__(len(files), batch_size, shuffle, seed, rank, world_size, drop_last)
        self.files = files
        self.device = torch.device(device)
        self.labels = files.labels.to(self.device)
        self.decoder = _Decode(files, train, image_size, seed)
        self.image_size = image_size
        self.workers = int(workers)
        self.channels_last = channels_last
        c = 3
        mean = torch.tensor(mean, dtype=torch.float32)
        std = torch.tensor(std, dtype=torch.float32)
        self.scale = (1.0 / (255.0 * std)).reshape(1, c, 1, 1).to(self.device)
        self.shift = (-mean / std).reshape(1, c, 1, 1).to(self.device)
        self.skipped = {}  # file -> why, over the loader's life

    def normalise(self, x_uint8: torch.Tensor) -> torch.Tensor:
        x = x_uint8.to(self.device, non_blocking=True).float() * self.scale + self.shift
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def iterate(self, epoch: int, start_step: int = 0, with_index: bool = False):
        order, g = self._order(epoch).tolist(), self._global_batch()  # the epoch's order, once
        batches = [[(epoch, i) for i in order[step * g:(step + 1) * g][self.rank::self.world_size]]
                   for step in range(start_step, len(self))]
        loader = torch.utils.data.DataLoader(
            self.decoder, batch_sampler=batches, num_workers=self.workers, collate_fn=_collate,
            pin_memory=self.device.type == "cuda", persistent_workers=False)
        new, yielded = [], 0
        for images, idx, bad in loader:
            new += bad
            if images is None:  # every image of the batch unreadable
                continue
            idx = idx.to(self.device)
            x, y = self.normalise(images), self.labels[idx]
            yielded += 1
            yield (x, y, idx) if with_index else (x, y)
        if batches and not yielded:
            raise UserError(f"none of the {sum(map(len, batches))} images could be decoded, "
                            f"e.g. {', '.join(new[:3])}")
        fresh = [why for why in new if why not in self.skipped]
        self.skipped.update(dict.fromkeys(new))
        if fresh:
            _warn(f"skipped {len(fresh)} image(s) that could not be decoded, e.g. "
                  f"{', '.join(fresh[:3])}; accuracies are over the images that decode")

    def preview(self, n: int):
        """(uint8 images, labels) of the first n readable images, as evaluation sees them."""
        images, labels, _ = decode_eval(self.files.subset(range(min(n, len(self.files)))),
                                        self.image_size)
        return images.to(self.device), labels.to(self.device)
