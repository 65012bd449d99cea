"""A preloaded interpreter that runs the project's scripts in fresh child processes.

Starting `python model_training.py ...` spends about 2 s importing torch and torchvision before
the script does anything; the suite starts a few hundred scripts, most of which train for a
second or refuse their input at once. This server imports the heavy third-party libraries once
(never the project's own modules, which every run imports afresh), then for each request forks
a child that becomes the script: its own process and process group, the request's environment,
working folder, argv and sys.path[0], stdin from /dev/null and stdout/stderr into the files the
test names, the script run as `__main__`, and the interpreter's own exit (an uncaught exception
prints its traceback and exits 1; sys.exit(code) exits code). The test sees the exit status
exactly as `subprocess.run` reports it.

Run as `python tests/script_server.py SOCKET_PATH` by tests/conftest.py (run_script), with the
environment the scripts get (conftest.script_env), so that what the libraries read from the
environment at import (thread counts, CUDA visibility, the plotting backend) is what a fresh
interpreter would read. A request whose environment changes such a variable runs as a plain
subprocess instead (conftest.IMPORT_TIME_ENV).

Protocol (tests/served.py): one Unix-socket connection per run; the client sends one JSON line
{"argv": [script, args...], "env": {...}, "cwd": ..., "umask": null or a mode,
"sigint_ignored": whether the client ignores SIGINT} with two file descriptors (the child's
stdout and stderr); the server answers {"pid": N} once the child exists, then
{"returncode": R} when it has ended (R < 0: killed by signal -R).
"""
import json
import os
import signal
import socket
import sys

PRELOAD = ("numpy", "torch", "torchvision", "torchvision.models", "torchvision.transforms",
           "torch.utils.tensorboard", "optuna",
           "matplotlib", "PIL.Image", "yaml", "tqdm")


def _preload():
    import importlib
    for name in PRELOAD:
        try:
            importlib.import_module(name)
        except ImportError:  # optional for some scripts: the child imports (or lacks) it itself
            pass


def _send(conn, obj):
    conn.sendall((json.dumps(obj) + "\n").encode())


def _become_script(request, fds, listener, conn):
    """In the forked child: set the process up as `python script args` would be, run it."""
    try:
        script = _set_up(request, fds, listener, conn)
        with open(script, "rb") as f:
            code = compile(f.read(), script, "exec")
    except OSError as e:  # as the interpreter says it: a script it cannot open is exit 2
        print(f"{sys.executable}: can't open file {request['argv'][0]!r}: "
              f"[Errno {e.errno}] {e.strerror}", file=sys.stderr)
        _exit(2)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        _exit(1)
    # the script's module stays __main__ until the end, as in a fresh interpreter (its atexit
    # functions and threads may still look it up)
    import types
    main = types.ModuleType("__main__")
    main.__dict__.update(__file__=script, __builtins__=__builtins__, __cached__=None,
                         __spec__=None, __loader__=None, __package__=None)
    sys.modules["__main__"] = main
    try:
        exec(code, main.__dict__)
        status = 0
    except SystemExit as e:  # as the interpreter reads it: None -> 0, a number, else printed -> 1
        status = e.code
        if status is None:
            status = 0
        elif not isinstance(status, int):
            print(status, file=sys.stderr)
            status = 1
    except KeyboardInterrupt:
        sys.excepthook(*sys.exc_info())
        _exit(1, interrupted=True)
    except BaseException:
        sys.excepthook(*sys.exc_info())
        status = 1
    _exit(status)


def _set_up(request, fds, listener, conn):
    """The process as a fresh `python script args` started by the client would be; -> script."""
    listener.close()
    conn.close()
    os.setpgid(0, 0)  # the client kills the whole group on a timeout (the handler sets it too)
    for sig in (signal.SIGCHLD, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_DFL)
    # as a fresh interpreter: SIGINT raises KeyboardInterrupt, unless the process that started it
    # ignores SIGINT (pytest-xdist's workers do), which a child inherits
    signal.signal(signal.SIGINT, signal.SIG_IGN if request.get("sigint_ignored")
                  else signal.default_int_handler)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    for target, fd in zip((1, 2), fds):
        os.dup2(fd, target)
    for fd in set(fds) - {1, 2}:
        os.close(fd)
    if request.get("umask") is not None:
        os.umask(request["umask"])
    os.chdir(request["cwd"])
    os.environ.clear()
    os.environ.update(request["env"])
    script = os.path.abspath(request["argv"][0])
    sys.argv = list(request["argv"])
    sys.path[0] = os.path.dirname(script)
    import numpy
    numpy.random.seed()  # a fresh interpreter's numpy draws differ from run to run; so do these
    return script


def _exit(code, interrupted=False):
    """The interpreter's exit, less the teardown of every module: wait for the script's
    non-daemon threads, run its atexit functions, flush stdio, then end the process. (Tearing
    down the preloaded libraries' objects in a forked child copies most of their memory and
    costs about a second a run; a real exit would then have nothing left to write, except the
    buffers of files a script left open at module level, which a script should not rely on.)"""
    import atexit
    import threading
    try:
        threading._shutdown()
        atexit._run_exitfuncs()
        import gc
        gc.collect()  # the finalizers of the script's garbage (the preloaded objects are frozen)
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:
                pass
        if interrupted:  # an uncaught KeyboardInterrupt ends the interpreter by SIGINT
            signal.signal(signal.SIGINT, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGINT)
        os._exit(code & 0xFF)


def _handle(conn, listener):
    """In a forked handler: start the script's process, report its pid, then its status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            os._exit(1)
        data += chunk
    request = json.loads(data)
    pid = os.fork()
    if pid == 0:
        _become_script(request, fds, listener, conn)  # never returns: the script's exit ends it
    try:
        os.setpgid(pid, pid)  # here too, so that the group exists before the client may kill it
    except OSError:  # the child has set it, or has already ended
        pass
    for fd in fds:
        os.close(fd)
    listener.close()
    _send(conn, {"pid": pid})
    _, status = os.waitpid(pid, 0)
    _send(conn, {"returncode": os.waitstatus_to_exitcode(status)})
    conn.close()
    os._exit(0)


def main(path):
    parent = os.getppid()
    _preload()
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    import gc
    gc.freeze()  # the preloaded objects are never collected: a child's collections skip them
    print("ready", flush=True)
    while os.getppid() == parent:  # the test process is gone: so is the server
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        if os.fork() == 0:
            _handle(conn, listener)
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1])
