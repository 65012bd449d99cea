"""What a run writes and what the tools read back: checkpoints (checkpoint.py), the per-epoch
history (history.py), the summary (summary.py), the run's files and their record (outputs.py),
atomic writes (files.py), the run lock (runlock.py) and the end-of-run table (report.py)."""
