"""The original layout's `models` package: the networks now live in `skipkd.models`; this name is
kept so that `from models import create_model` (the original work's scripts and notebooks) still
works. New code imports `skipkd.models`."""
from skipkd.models import *  # noqa: F401,F403
from skipkd.models import __all__  # noqa: F401
