"""Ctrl-C and SIGTERM stop training at a step boundary (the state is saved, --resume goes on)."""
import signal
import sys

from .distributed import broadcast_flag

__all__ = ["StopFlag"]


class StopFlag:
    """SIGINT/SIGTERM set a flag that the training loop checks at every step boundary; a second
    Ctrl-C interrupts at once."""

    def __init__(self, collective_every=0, device="cpu"):
        self.signum = None
        self._old = {}
        # distributed runs: ranks agree every `collective_every` steps (any rank's signal stops
        # all of them at the same step), so no host sync happens per step
        self.collective_every, self.device, self._calls = collective_every, device, 0

    def __enter__(self):
        for sig in (signal.SIGINT, signal.SIGTERM):
            try:
                self._old[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not in the main thread
                pass
        return self

    def _handle(self, signum, frame):
        if self.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.signum = signum
        print(f"\n{signal.Signals(signum).name} received: stopping after this step...",
              file=sys.stderr, flush=True)

    def __call__(self):
        if not self.collective_every:
            return self.signum is not None
        self._calls += 1
        if self._calls % self.collective_every:
            return False
        return broadcast_flag(self.signum is not None, self.device)

    def __exit__(self, *exc):
        for sig, old in self._old.items():
            signal.signal(sig, old)
