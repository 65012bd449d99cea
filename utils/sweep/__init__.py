"""Sweeps on Optuna (`sweep.py`): a grid or a search space over the training scripts' flags,
stored as an Optuna study, run by any number of workers, summarised in one report.

Three layers, each importing only the ones below it (tests/test_imports.py checks it):

- report/  what a study came to: build.py (gathers the trials, writes report.md, CSV and
           figures), stats.py (mean +- std, paired deltas), tables.py, figures.py, document.py
           (a report's block in a markdown document), tune.py (a tune's report);
- run/     a study in its storage and the workers that run it: storage.py (journal or
           database), worker.py (the loop and signals), claim.py (the next trial), child.py (the
           training script as a child process), heartbeat.py (dead workers, retries, takeovers),
           results.py (a run's metrics from its summary), progress.py, gpus.py (slots per GPU),
           tune.py (a tune's searches and retrain);
- spec/    what a sweep runs, before anything is stored: sources.py (a grid file or create's
           flags), rules.py (limits, flag values, search ranges and settings), normalize.py (a
           spec's shape and defaults), tune.py (a tune file's shape), keys.py (run keys, command
           lines), scripts.py (the training scripts, torch-free), parsers.py (their parsers, from
           skipkd.cli: `create` only), expand.py (trials and shared teachers), check.py (every
           command line through the script's parser), stored.py (trials read back from
           storage), tune_plan.py (a tune's searches and retrain as plans).

A worker (run/) never imports PyTorch: it checks stored trials without the parsers, and a tune
gets them handed in by sweep.py for the one moment it makes its retrain grid.
"""
