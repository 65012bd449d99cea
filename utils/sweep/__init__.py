"""Sweeps on Optuna (`sweep.py`): a grid or a search space over the training scripts' flags,
stored as an Optuna study, run by any number of workers, summarised in one report.

What a sweep runs (`sweep.py create`):
- spec_sources.py: a raw spec from a grid file (JSON or TOML) or from create's flags;
- spec.py: the spec's reference; its shape checked and its defaults filled in;
- keys.py: study names, run keys, and {flag: value} as a command line;
- scripts.py: the training scripts, the flags the sweep owns, and the scripts' own parsers;
- expand.py: the spec expanded into trials (one run key each) and shared teacher runs;
- plan_check.py: every trial's command line checked by its script's own parser;
- storage.py: where the study lives (a journal file in the sweep folder by default, or any
  database URL Optuna accepts).

Running it (`sweep.py work`):
- worker.py: the worker's loop and signals (Worker, which builds the parts below);
- claim.py: Claimer, the next trial (queued, or a new search trial), claimed;
- child.py: ChildRunner, the real script as a child process that dies with its worker;
- heartbeat.py: Heartbeats: heartbeats, re-queues of trials whose worker died, takeovers,
  how a trial ends, storage trouble;
- results.py: ResultRecorder, the run's metrics from its summary and the trial's end;
- progress.py: Progress (trial counts by run key) and Status (the status line).

Reporting it (`sweep.py report`):
- report.py: gathers the trials into one report and writes it;
- stats.py: mean +- std over seeds, paired deltas against the baseline;
- tables.py: report.md and the CSV files;
- figures.py: the plotly and matplotlib figures.
"""
