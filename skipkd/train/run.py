"""One training run from start to end, shared by both training scripts:

    run = Run(args, "model_training_mid.py")      set-up: torchrun, device, seed, data
    if run.open(key, roles, trained, check):      the run's files: lock the key, refuse conflicts,
        ...                                       build the loaders, check the networks on the meta
        run.results["student"] = train_stage(...) device first; False when --resume finds the run
    run.close(...)                                complete. The stages. Then the summary JSON, the
                                                  results table and where everything went.

What is trained (the stages) is the caller's: skipkd.train.distill (teacher, then student) and
skipkd.train.baseline (one model, cross-entropy only).
"""
import sys
import time

from ..io.outputs import RunOutputs
from ..io.report import results_table
from ..io.summary import RunSummary
from .distributed import barrier, init_distributed, is_main
from .resume import finished_stages
from .optim import OptimRecipe
from .setup import describe_machine, environment, make_loaders, prepare_data, resolve_device, seed_everything
from .stage import RunContext

__all__ = ["Run"]


class Run:
    """The lifecycle of one run; `results` maps each trained role to its train_stage result."""

    def __init__(self, args, script: str):
        init_distributed(args.device)
        self.args, self.script = args, script
        self.device = resolve_device(args.device)
        seed_everything(args.seed)
        self.train, self.test, self.data = prepare_data(args)
        self.key = self.outputs = self.context = None
        self.results = {}
        self.start = None

    def open(self, key: str, roles: tuple, trained: tuple, check=None, warnings=()) -> bool:
        """Claim the run key `key` for the files of `roles` and build the loaders. `check(context)`
        runs first (it builds the networks on the meta device, so a run that cannot be built is
        refused before any file is touched); `warnings` are printed once the run is accepted.
        False: --resume found the stages `trained` complete (nothing is written)."""
        args = self.args
        self.key = key
        self.outputs = RunOutputs(args.output_dir, key)
        loaders = make_loaders(self.train, self.test, self.data, args, self.device)
        self.context = RunContext(args, self.device, loaders, self.data, self.outputs,
                                  OptimRecipe.from_args(args))
        if check is not None:
            check(self.context)
        self.outputs.prepare(args.overwrite, args.resume, roles=roles, write=is_main(),
                             tensorboard=args.tensorboard)
        for msg in (warnings if is_main() else ()):
            print(f"warning: {msg}", file=sys.stderr, flush=True)
        if args.resume and finished_stages(self.outputs, trained, args):
            print(f"run '{key}' is complete: nothing to resume (its outputs are unchanged)")
            return False
        barrier()
        self.start = time.perf_counter()
        return True

    def describe_data(self) -> str:
        """'{dataset} [{n} train / {m} test, {protocol}]' for the run's first line."""
        return f"{self.data.dataset} [{self.data.sizes()}, {self.data.protocol}]"

    def close(self, checkpoint_role: str, label: str) -> dict:
        """Write the summary (every role's result, the command line, the data, the machine),
        print the results table and where the outputs went; -> the summary."""
        args = self.args
        summary = RunSummary(
            run_key=self.key, script=self.script, dataset=self.data.to_json(), args=vars(args),
            environment=environment(self.device), roles=dict(self.results),
            wall_time_s=round(time.perf_counter() - self.start, 2)).to_json()
        if is_main():
            self.outputs.write_summary(summary)
        print()
        print(results_table(list(self.results.items())))
        rows = [(label, self.results[checkpoint_role]["checkpoint"]),
                ("summary:", self.outputs.summary),
                ("ran on:", f"{self.data.dataset} ({self.data.sizes()}), "
                            f"{describe_machine(self.device, args.precision)}"),
                ("wall time:", f"{summary['wall_time_s']:.1f}s")]
        width = max(len(name) for name, _ in rows) + 1
        print("\n" + "\n".join(f"{name:<{width}}{value}" for name, value in rows))
        return summary
