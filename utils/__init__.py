"""The tools built on the `skipkd` library: studies (`utils.sweep`, behind sweep.py) and the
analysis scripts' shared code (`utils.analysis`). Nothing in skipkd imports them."""
