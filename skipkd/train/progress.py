"""A tqdm bar on a terminal; plain periodic lines when stderr is not a terminal (CI, logs)."""
import sys
import time

from tqdm import tqdm

__all__ = ["progress"]


class _PlainProgress:
    """Same interface as the parts of tqdm we use; prints at most ~`lines` lines per loop."""

    def __init__(self, iterable, total, desc, lines=4):
        self.iterable, self.total, self.desc = iterable, total, desc
        self.every = max(1, total // lines) if total else 1

    def __iter__(self):
        start = time.perf_counter()
        for i, item in enumerate(self.iterable, start=1):
            yield item
            if i % self.every == 0 or i == self.total:
                el = time.perf_counter() - start
                print(f"{self.desc}: {i}/{self.total} [{el:.1f}s]",
                      file=sys.stderr, flush=True)

    def close(self):
        pass


def progress(iterable, total=None, desc="", enabled=True):
    if total is None and hasattr(iterable, "__len__"):
        total = len(iterable)
    if not enabled:
        return _Silent(iterable)
    if sys.stderr.isatty():
        return tqdm(iterable, total=total, desc=desc, leave=False, dynamic_ncols=True)
    return _PlainProgress(iterable, total, desc)


class _Silent:
    def __init__(self, iterable):
        self.iterable = iterable

    def __iter__(self):
        return iter(self.iterable)

    def close(self):
        pass
