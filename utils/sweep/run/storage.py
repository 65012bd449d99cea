"""Where a sweep's Optuna study lives.

- Default: Optuna's journal file `optuna-journal.log` in the sweep folder. It needs nothing
  installed and takes any number of workers on one machine (appends under a file lock, no
  "database is locked" as with SQLite), or on several machines that share the folder.
- `--storage URL`: any database URL Optuna (SQLAlchemy) accepts, e.g.
  postgresql://user:pass@host:5432/db for workers on many machines. A path without '://' is a
  journal file.

A sweep is two studies: STUDY (the trials the report is about) and, when the grid shares
teachers, STUDY:teachers (one trial per teacher run). The spec is kept in STUDY's user
attributes, so a worker needs only the study's name and storage.

Bad input is a one-line UserError and writes nothing: an unknown study or storage is looked up
without creating any file or table.
"""
import os
import socket
from datetime import datetime, timezone

from skipkd.errors import UserError

__all__ = ["JOURNAL_NAME", "TEACHERS_SUFFIX", "Store", "open_store", "default_dir",
           "check_journal_path",
           "load_sweep", "create_sweep"]

JOURNAL_NAME = "optuna-journal.log"
TEACHERS_SUFFIX = ":teachers"
SPEC_ATTR = "sweep:spec"
FORMAT_VERSION = 1


def default_dir(study: str) -> str:
    return os.path.join("sweeps", study)


def _quiet_optuna():
    import optuna
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    import warnings
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)
    return optuna


class Store:
    """An opened storage: `storage` (Optuna's), `label` (for messages: no password), `kind`
    ('journal' or 'rdb'), `path` (the journal file) or `url`."""

    def __init__(self, storage, label, kind, path=None, url=None):
        self.storage, self.label, self.kind, self.path, self.url = storage, label, kind, path, url

    def study_names(self):
        optuna = _quiet_optuna()
        return optuna.get_all_study_names(self.storage)


def _one_line(exc) -> str:
    """The first line of a driver's error (SQLAlchemy wraps it in several lines)."""
    inner = getattr(exc, "orig", None) or exc
    text = str(inner).strip().splitlines()
    return text[0].strip() if text else type(inner).__name__


def _engine_kwargs(url) -> dict:
    kwargs = {"pool_pre_ping": True}  # workers live for days; servers drop idle connections
    if url.get_backend_name() in ("postgresql", "mysql", "mariadb"):
        kwargs["connect_args"] = {"connect_timeout": 10}
    return kwargs


def open_store(storage_arg, sweep_dir: str, create: bool) -> Store:
    """Open the storage of a sweep. create=False (work, report): it must exist and nothing is
    written to it here; create=True: the journal's folder must be made by the caller first."""
    if storage_arg and "://" in storage_arg:
        return _open_rdb(storage_arg, create)
    path = storage_arg or os.path.join(sweep_dir, JOURNAL_NAME)
    check_journal_path(path, create)
    if not create and not os.path.isfile(path):
        raise UserError(f"no sweep storage at {path} (make the study first: python sweep.py "
                        f"create STUDY --grid FILE{'' if storage_arg else ' [--dir DIR]'})")
    if create and not os.path.isdir(os.path.dirname(os.path.abspath(path))):
        raise UserError(f"cannot create {path}: its folder does not exist")
    if create and os.path.exists(path) and not os.access(path, os.W_OK):
        raise UserError(f"journal {path} is not writable")
    _quiet_optuna()
    from optuna.storages import JournalStorage
    from optuna.storages.journal import JournalFileBackend
    try:
        storage = JournalStorage(JournalFileBackend(path))
    except (ValueError, KeyError, TypeError) as exc:
        raise UserError(f"journal {path} is not an Optuna journal file ({_one_line(exc)})") \
            from None
    except OSError as exc:
        raise UserError(f"cannot open journal {path}: {exc.strerror}") from None
    return Store(storage, path, "journal", path=path)


def check_journal_path(path: str, create: bool):
    """A journal path that is a link, a folder, or an existing file that is not a journal of
    this tool is refused in one line before anything is written."""
    if os.path.islink(path):
        raise UserError(f"storage {path} is a symbolic link: a journal is never read or written "
                        f"through a link (give the file itself)")
    if os.path.isdir(path):
        raise UserError(f"storage {path} is a folder, not a journal file")
    if os.path.exists(path):
        check_journal(path, create)


def check_journal(path: str, create: bool):
    """Refuse (one line, nothing written) a file that is not an Optuna journal: every complete
    line must be a JSON object with an integer op_code and a worker_id. An unfinished last line
    is what a worker's append looks like mid-write (Optuna skips it); `create`, which appends,
    refuses it as a damaged journal. An empty file is accepted (nothing in it to lose)."""
    import json
    if not os.path.isfile(path):
        raise UserError(f"storage {path} is not a regular file")
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as exc:
        raise UserError(f"cannot read journal {path}: {exc.strerror}") from None
    lines = data.split(b"\n")
    tail = lines.pop()  # b"" when the file ends with a newline
    for number, line in enumerate(lines, 1):
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):
            record = None
        if not (isinstance(record, dict) and isinstance(record.get("op_code"), int)
                and "worker_id" in record):
            raise UserError(f"storage {path} is not an Optuna journal of this tool (line "
                            f"{number} is not a journal record); nothing was written to it")
    if tail and create:
        raise UserError(f"journal {path} ends in an unfinished record (truncated, or a worker "
                        f"is writing): not appended to")


def _open_rdb(url_text: str, create: bool) -> Store:
    _quiet_optuna()
    import sqlalchemy
    from sqlalchemy.engine import make_url
    try:
        url = make_url(url_text)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError and friends: a malformed URL
        raise UserError(f"bad storage URL: {_one_line(exc)}") from None
    label = url.render_as_string(hide_password=True)
    url = _with_installed_driver(url)
    url_text = url.render_as_string(hide_password=False)
    backend = url.get_backend_name()
    if backend == "sqlite":
        db = url.database
        if not db or db == ":memory:":
            raise UserError(f"storage {label}: an in-memory database holds nothing between "
                            f"workers; give a file")
        if not create and not os.path.isfile(db):
            raise UserError(f"no sweep storage at {label} ({db} does not exist)")
        if create and not os.path.isdir(os.path.dirname(os.path.abspath(db))):
            raise UserError(f"storage {label}: folder of {db} does not exist")
    kwargs = _engine_kwargs(url)
    try:
        engine = sqlalchemy.create_engine(url, **kwargs)
        with engine.connect():
            pass
        has_tables = sqlalchemy.inspect(engine).has_table("studies")
    except ImportError as exc:
        raise UserError(f"storage {label}: the database driver is not installed "
                        f"({_one_line(exc)}); for PostgreSQL: pip install psycopg2-binary") \
            from None
    except Exception as exc:  # OperationalError (unreachable, refused, bad password), ...
        raise UserError(f"cannot connect to {label}: {_one_line(exc)}") from None
    finally:
        if "engine" in locals():
            engine.dispose()
    if not create and not has_tables:
        raise UserError(f"no sweep storage at {label} (the database has no Optuna tables; make "
                        f"the study first: python sweep.py create STUDY --storage URL ...)")
    from optuna.storages import RDBStorage
    try:
        storage = RDBStorage(url_text, engine_kwargs=kwargs, skip_table_creation=not create)
    except Exception as exc:
        raise UserError(f"storage {label}: {_one_line(exc)}") from None
    return Store(storage, label, "rdb", url=url_text)


def _with_installed_driver(url):
    """postgresql:// means psycopg (3) to SQLAlchemy 2.1 and psycopg2 to 2.0: use whichever of
    the two is installed."""
    if url.drivername != "postgresql":
        return url
    import importlib.util
    for module, driver in (("psycopg", "postgresql+psycopg"), ("psycopg2", "postgresql+psycopg2")):
        if importlib.util.find_spec(module) is not None:
            return url.set(drivername=driver)
    return url


class Sweep:
    """A loaded sweep: its name, spec, Optuna studies and storage."""

    def __init__(self, name, spec, study, teachers, store, search_teacher):
        self.name, self.spec, self.study, self.teachers = name, spec, study, teachers
        self.store, self.search_teacher = store, search_teacher

    @property
    def studies(self):
        """Teachers first: the students wait for them."""
        return [s for s in (self.teachers, self.study) if s is not None]


def load_sweep(store: Store, name: str) -> Sweep:
    optuna = _quiet_optuna()
    try:
        names = store.study_names()
    except Exception as exc:
        raise UserError(f"cannot read {store.label}: {_one_line(exc)}") from None
    if name not in names:
        shown = [n for n in names if not n.endswith(TEACHERS_SUFFIX)]
        raise UserError(f"unknown study {name!r} in {store.label}"
                        + (f" (studies there: {', '.join(shown[:10])})" if shown else
                           " (it holds no study)"))
    study = optuna.load_study(study_name=name, storage=store.storage)
    attrs = study.user_attrs
    spec = attrs.get(SPEC_ATTR)
    if not isinstance(spec, dict) or attrs.get("sweep:version") != FORMAT_VERSION:
        raise UserError(f"study {name!r} in {store.label} was not made by sweep.py create")
    tname = attrs.get("sweep:teachers")
    teachers = (optuna.load_study(study_name=tname, storage=store.storage)
                if tname and tname in names else None)
    return Sweep(name, spec, study, teachers, store, attrs.get("sweep:search_teacher"))


def trial_attrs(record: dict, attempt: int = 1) -> dict:
    """The user attributes that identify a trial (copied to its retries)."""
    return {"key": record["key"], "script": record["script"], "argv": record["argv"],
            "role": record.get("role", "student"), "axes": record.get("axes", {}),
            "config": record.get("config", ""), "seed": record.get("seed"),
            "teacher_key": record.get("teacher_key"), "attempt": attempt}


def create_sweep(store: Store, name: str, spec: dict, plan: dict, distributions: dict) -> Sweep:
    """Create STUDY (and STUDY:teachers) and queue every grid point and teacher run."""
    optuna = _quiet_optuna()
    from optuna.trial import TrialState, create_trial
    names = store.study_names()
    for n in (name, name + TEACHERS_SUFFIX):
        if n in names:
            raise UserError(f"study {n!r} already exists in {store.label}; choose another name "
                            f"(or give another --dir / --storage)")
    teachers = None
    if plan["teachers"]:
        teachers = optuna.create_study(storage=store.storage, study_name=name + TEACHERS_SUFFIX,
                                       direction="maximize")
        teachers.set_user_attr("sweep:teachers_of", name)
        for t in plan["teachers"]:
            teachers.add_trial(create_trial(state=TrialState.WAITING,
                                            user_attrs=trial_attrs(t)))
    study = optuna.create_study(storage=store.storage, study_name=name, direction="maximize")
    study.set_user_attr("sweep:version", FORMAT_VERSION)
    study.set_user_attr("sweep:teachers", teachers.study_name if teachers else None)
    study.set_user_attr("sweep:search_teacher", plan.get("teacher_key"))
    study.set_user_attr("sweep:created", {"at": datetime.now(timezone.utc).isoformat(
        timespec="seconds"), "host": socket.gethostname()})
    for t in plan["trials"]:
        study.add_trial(create_trial(state=TrialState.WAITING, params=t["params"],
                                     distributions={a: distributions[a] for a in t["params"]},
                                     user_attrs=trial_attrs(t)))
    # last: a study without its spec is refused by load_sweep, so a create that was
    # interrupted half-way is never worked on
    study.set_user_attr(SPEC_ATTR, spec)
    return Sweep(name, spec, study, teachers, store, plan.get("teacher_key"))
