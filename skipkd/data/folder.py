"""An ImageFolder tree (train/<class>/*, test/<class>/*) decoded once into uint8."""
import os
import time

import numpy as np
import torch

from ..errors import UserError
from .common import ImageData, _warn


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp",
                    ".gif")
_SIXTEEN_BIT = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def _to_rgb(img):
    """Any PIL mode -> 'RGB'. 16/32-bit grayscale is scaled to 8 bits (PIL's own convert would
    clip it to white); transparency is composited onto black; P, L, 1, CMYK, YCbCr... via PIL."""
    from PIL import Image
    mode = img.mode
    if mode in _SIXTEEN_BIT or mode == "F":
        a = np.asarray(img, dtype=np.float64)
        if mode == "F":
            a = a * 255 if a.size and a.max() <= 1.0 else a
        elif mode.startswith("I;16") or (a.size and a.max() > 255):
            a = a / 257.0  # 0..65535 -> 0..255
        img = Image.fromarray(np.clip(np.rint(a), 0, 255).astype(np.uint8), "L")
        mode = "L"
    if mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in img.info:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (0, 0, 0, 255))
        return Image.alpha_composite(background, rgba).convert("RGB")
    return img if mode == "RGB" else img.convert("RGB")


def _decode_image(path, size):
    """-> (3, size, size) uint8: decoded, EXIF-rotated, converted to RGB, the shorter side
    resized to `size` and the centre cropped (bilinear, antialiased)."""
    from PIL import Image, ImageOps
    with Image.open(path) as img:
        img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale >= size (fast)
        img = ImageOps.exif_transpose(img) or img
        img = _to_rgb(img)
        if img.size != (size, size):
            img = ImageOps.fit(img, (size, size), method=Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.uint8).transpose(2, 0, 1)


def _scan_split(split_dir):
    """-> ({class folder name: [image paths]} for every class folder, non-image file count,
    stray top-level file count). Hidden files and folders are ignored; files are found
    recursively inside each class folder (like torchvision's ImageFolder), in sorted order."""
    classes, skipped, stray = {}, 0, 0
    seen = {os.path.realpath(split_dir)}  # a link back up the tree is not walked again
    for entry in sorted(os.scandir(split_dir), key=lambda e: e.name):
        if entry.name.startswith("."):
            continue
        if not entry.is_dir():
            stray += 1
            continue
        paths = []
        for root, dirs, files in os.walk(entry.path, followlinks=True):
            real = os.path.realpath(root)
            if real in seen:  # reached again through a link: a loop or a second way in
                dirs[:] = []
                _warn(f"{root}: a link to a folder already read ({real}); not read again")
                continue
            seen.add(real)
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(files):
                if name.startswith("."):
                    continue
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    paths.append(os.path.join(root, name))
                else:
                    skipped += 1
        classes[entry.name] = paths
    return classes, skipped, stray


def _decode_all(paths, size, what):
    """Decode `paths` into one (N, 3, size, size) uint8 array (threads: PIL releases the GIL);
    -> (array of the readable ones, boolean mask of readable)."""
    from concurrent.futures import ThreadPoolExecutor
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)
    ok = np.zeros(len(paths), dtype=bool)
    failed = []

    def work(i):
        try:
            out[i] = _decode_image(paths[i], size)
            ok[i] = True
        except Exception as exc:  # corrupt, truncated, unsupported: skip and count
            failed.append(f"{os.path.basename(paths[i])} ({type(exc).__name__})")

    workers = max(1, min(8, os.cpu_count() or 1))
    if len(paths) < 64 or workers == 1:
        for i in range(len(paths)):
            work(i)
    else:
        with ThreadPoolExecutor(workers) as pool:
            list(pool.map(work, range(len(paths))))
    if failed:
        _warn(f"{what}: skipped {len(failed)} file(s) that PIL could not decode, e.g. "
              f"{', '.join(sorted(failed)[:3])}")
    return out[ok] if not ok.all() else out, ok


# Long on purpose: the reader walks the format top to bottom (classes, files, decode, checks);
# each step is a few lines with its own error message.
def load_folder(data_dir, download=False, image_size=32, test=True):
    """An ImageFolder tree: data_dir/train/<class>/<images> and data_dir/test/<class>/<images>
    (val/ is accepted when there is no test/). The class list and indices come from train/
    (sorted folder names, as torchvision's ImageFolder); a class folder without images is
    skipped with a warning; a test/ class that train/ lacks is an error. Files whose extension
    is not an image's are skipped and counted. Every image becomes RGB (see _to_rgb) of
    image_size x image_size (shorter side resized, centre crop). test=False: test/ is neither
    looked for nor read (the second value is None)."""
    if download:
        raise UserError("--download is not available for --dataset folder (point --data-dir at "
                        "a folder with train/ and test/ class folders)")
    train_dir = os.path.join(data_dir, "train")
    test_dir = next((os.path.join(data_dir, s) for s in ("test", "val")
                     if os.path.isdir(os.path.join(data_dir, s))), os.path.join(data_dir, "test"))
    for d in (train_dir, test_dir) if test else (train_dir,):
        if not os.path.isdir(d):
            raise UserError(f"folder dataset: {d} not found (expected {data_dir}/train/<class>/"
                            f"<image> and {data_dir}/test/<class>/<image>)")
    t0 = time.perf_counter()
    splits = {"test": {}}
    for split, split_dir in (("train", train_dir),) + ((("test", test_dir),) if test else ()):
        found, skipped, stray = _scan_split(split_dir)
        if skipped:
            _warn(f"{split_dir}: skipped {skipped} non-image file(s) (images are "
                  f"{', '.join(IMAGE_EXTENSIONS)})")
        if stray:
            _warn(f"{split_dir}: ignored {stray} file(s) outside the class folders")
        splits[split] = found
    train_found, test_found = splits["train"], splits["test"]
    if not any(train_found.values()):
        raise UserError(f"folder dataset: no images in {train_dir} (expected "
                        f"train/<class>/<image> with one of {', '.join(IMAGE_EXTENSIONS)})")

    def decode(found, split_dir):
        paths = [p for c in found for p in found[c]]
        names = [c for c in found for _ in found[c]]
        images, ok = _decode_all(paths, image_size, split_dir)
        return images, [n for n, k in zip(names, ok) if k]

    train_images, train_names = decode(train_found, train_dir)
    present = set(train_names)
    classes = [c for c in train_found if c in present]
    empty = [c for c in train_found if c not in present]
    if empty:
        _warn(f"{train_dir}: class folder(s) without readable images skipped: {', '.join(empty)} "
              f"(the classes are the other {len(classes)})")
    if not classes:
        raise UserError(f"folder dataset: none of the images in {train_dir} could be decoded")
    unknown = [c for c, paths in test_found.items() if paths and c not in classes]
    if unknown:
        raise UserError(f"folder dataset: {test_dir} has class folder(s) {', '.join(unknown)} with "
                        f"images but {train_dir} has no images of them (the classes come from "
                        f"train/: {', '.join(classes)})")
    index = {c: i for i, c in enumerate(classes)}
    info = {"source": os.path.abspath(data_dir),
            "preprocessing": f"RGB, shorter side resized to {image_size} + centre crop, "
                             f"transparency on black"}
    train = ImageData(torch.from_numpy(train_images),
                      torch.tensor([index[n] for n in train_names], dtype=torch.int64),
                      list(classes), dict(info))
    if not test:
        print(f"folder dataset: {len(train_names)} train images (test/ not read), "
              f"{len(classes)} classes, decoded in {time.perf_counter() - t0:.1f}s", flush=True)
        return train, None
    empty_test = [c for c, paths in test_found.items() if not paths]
    if empty_test:
        _warn(f"{test_dir}: empty class folder(s) skipped: {', '.join(empty_test)}")
    test_images, test_names = decode({c: p for c, p in test_found.items() if p}, test_dir)
    if len(test_names) == 0:
        raise UserError(f"folder dataset: no readable images in {test_dir}")
    print(f"folder dataset: {len(train_names)} train / {len(test_names)} test images, "
          f"{len(classes)} classes, decoded in {time.perf_counter() - t0:.1f}s", flush=True)
    return (train,
            ImageData(torch.from_numpy(test_images),
                      torch.tensor([index[n] for n in test_names], dtype=torch.int64),
                      list(classes), dict(info)))
