"""A preloaded interpreter that runs Python scripts in fresh child processes.

Starting `python model_training.py ...` spends 3-4 s of CPU importing torch (and, through the
optimizer, torch._dynamo) before the script does anything. This server imports the heavy
third-party libraries once (never the project's own modules, which every run imports afresh),
then for each request forks a child that becomes the script: its own process group (or session),
the request's environment, working folder, argv and sys.path[0], stdin from /dev/null and
stdout/stderr into the files the client names, the script run as `__main__`, and the
interpreter's own exit (an uncaught exception prints its traceback and exits 1; sys.exit(code)
exits code). The client sees the exit status exactly as `subprocess.run` reports it.

Used by a sweep worker for its trials (utils/sweep/run/child.py) and by the test suite for the
scripts it runs (tests/conftest.py). Start it with the environment the scripts get, so that what
the libraries read from the environment at import (thread counts, CUDA visibility, the plotting
backend) is what a fresh interpreter would read: a request whose environment changes such a
variable must go to a plain subprocess instead (`import_time_env`). The server never
initialises CUDA (importing torch does not), so each child may.

    python utils/preload/server.py SOCKET_PATH [--parent PID] [--preload MOD,...]
                                   [--die-with-parent]

It serves until its parent process (PID) ends (--die-with-parent: the kernel also kills it at
once, Linux); SIGINT does not stop it. Protocol (utils/preload/client.py): one Unix-socket
connection per run; the client sends one JSON line {"argv": [script, args...], "env": {...},
"cwd": ..., "umask": null or a mode, "sigint_ignored": whether the client ignores SIGINT,
"session": a new session rather than a process group, "parent_death": SIGTERM to the script
when the server goes} with two file descriptors (the child's stdout and stderr); the server
answers {"pid": N} once the child exists, then {"returncode": R} when it has ended (R < 0:
killed by signal -R), and reaps the child once the client has closed the connection.
"""
import json
import os
import signal
import socket
import sys

READY = "skipkd-preload-server-ready"  # the line that says it serves (utils/preload/client)

# what a training script imports (torch._dynamo: through torch.optim's first optimizer)
PRELOAD = ("numpy", "torch", "torch._dynamo", "torchvision", "torch.utils.tensorboard", "tqdm")

# environment variables that libraries read when they are imported (thread pools, CUDA
# visibility, CPU kernels, the plotting backend, the interpreter's own)
IMPORT_TIME_ENV = ("ATEN_", "OMP_", "MKL_", "KMP_", "GOMP_", "OPENBLAS_", "CUDA_", "NVIDIA_",
                   "PYTORCH_", "TORCH_", "TORCHDYNAMO_", "TORCHINDUCTOR_", "PYTHON", "LD_",
                   "MPLBACKEND", "MALLOC_", "LANG", "LC_")


def import_time_env(env) -> dict:
    """The part of environment env that a server started with it has read at import."""
    return {k: v for k, v in env.items() if k.startswith(IMPORT_TIME_ENV)}


def die_with_parent(sig) -> bool:
    """Ask the kernel for signal sig when this process's parent ends (Linux; elsewhere nothing,
    False)."""
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(1, int(sig)) == 0  # PR_SET_PDEATHSIG
    except Exception:
        return False


def _preload(names):
    import importlib
    for name in names:
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
    except KeyboardInterrupt as e:
        _print_exception(e)
        _exit(1, interrupted=True)
    except BaseException as e:
        _print_exception(e)
        status = 1
    _exit(status)


def _print_exception(e):
    """The traceback of the script's uncaught exception as a fresh interpreter prints it: from
    the script's first frame (this file's exec frame left out)."""
    tb = e.__traceback__.tb_next if e.__traceback__ is not None else None
    sys.excepthook(type(e), e.with_traceback(tb), tb)


def _set_up(request, fds, listener, conn):
    """The process as a fresh `python script args` started by the client would be; -> script."""
    listener.close()
    conn.close()
    if request.get("session"):
        os.setsid()
    else:
        os.setpgid(0, 0)  # the client kills the whole group on a timeout (the handler sets it too)
    if request.get("parent_death"):  # SIGTERM when the handler goes (it dies with the server)
        die_with_parent(signal.SIGTERM)
        if os.getppid() != request["_handler"]:
            _exit(143)  # it went before the request took effect
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


def _handle(conn, listener, server):
    """In a forked handler: start the script's process, report its pid, then its status."""
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
    while not data.endswith(b"\n"):
        chunk = conn.recv(1 << 16)
        if not chunk:
            os._exit(1)
        data += chunk
    request = json.loads(data)
    if request.get("parent_death"):  # SIGKILL when the server goes (it dies with its parent)
        die_with_parent(signal.SIGKILL)
        if os.getppid() != server:
            os._exit(1)
    request["_handler"] = os.getpid()
    pid = os.fork()
    if pid == 0:
        _become_script(request, fds, listener, conn)  # never returns: the script's exit ends it
    if not request.get("session"):
        try:
            os.setpgid(pid, pid)  # here too, so that the group exists before the client kills it
        except OSError:  # the child has set it, or has already ended
            pass
    for fd in fds:
        os.close(fd)
    listener.close()
    try:
        _send(conn, {"pid": pid})
    except OSError:  # the client has given up: the script it would not know of ends here
        try:
            os.killpg(pid, signal.SIGKILL)
        except OSError:
            pass
        os.waitpid(pid, 0)
        os._exit(1)
    # the status, without reaping: the pid stays the script's (a zombie) until the client has
    # read it and closed the connection, so that a signal the client sends meanwhile can never
    # reach another process that got the pid
    info = os.waitid(os.P_PID, pid, os.WEXITED | os.WNOWAIT)
    code = info.si_status if info.si_code == os.CLD_EXITED else -info.si_status
    try:
        _send(conn, {"returncode": code})
        conn.recv(1)  # until the client closes it (or goes)
    except OSError:
        pass
    os.waitpid(pid, 0)
    conn.close()
    os._exit(0)


def main(argv):
    if not argv or argv[0].startswith("-"):
        sys.exit("usage: server.py SOCKET_PATH [--parent PID] [--preload MOD,...] "
                 "[--die-with-parent]")
    path, preload = argv[0], PRELOAD
    if "--preload" in argv:
        preload = tuple(n for n in argv[argv.index("--preload") + 1].split(",") if n)
    # the process that started it (it may have ended before this line: then so does this one)
    parent = int(argv[argv.index("--parent") + 1]) if "--parent" in argv else os.getppid()
    if "--die-with-parent" in argv:
        die_with_parent(signal.SIGKILL)
    if os.getppid() != parent:
        return
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a script sets its own (sigint_ignored)
    _preload(preload)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(path)
    listener.listen(16)
    listener.settimeout(1.0)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)  # handlers are reaped by the kernel
    import gc
    gc.freeze()  # the preloaded objects are never collected: a child's collections skip them
    print(READY, flush=True)
    while os.getppid() == parent:  # the process that started it is gone: so is the server
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        conn.settimeout(None)
        server = os.getpid()
        if os.fork() == 0:
            try:
                _handle(conn, listener, server)
            finally:  # never back into this loop, nor a normal exit of a forked copy
                os._exit(1)
        conn.close()


if __name__ == "__main__":
    main(sys.argv[1:])
