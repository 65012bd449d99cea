"""The client side of utils/preload/server.py: start a preloaded interpreter, start scripts as
its children and handle each like a subprocess.Popen (poll, wait, send_signal, kill,
terminate, communicate, returncode, pid, stdout/stderr pipes)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import weakref

from utils.preload.server import PRELOAD, READY, import_time_env

__all__ = ["PRELOAD", "Server", "start_server", "supported", "ServedProcess", "import_time_env"]

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")
CONNECT_TIMEOUT_S = 60.0  # a server that does not take a request by then is given up


class Server:
    """A running server: its socket, the import-time environment it was started with (a script
    whose environment differs there must run as a plain subprocess) and its process."""

    def __init__(self, proc, socket_path, env, folder=None):
        self.proc, self.socket, self.env = proc, socket_path, import_time_env(env)
        self.folder = folder  # the private folder start_server made for the socket, or None
        self._lock = threading.Lock()
        self._ready = None  # True once it said so, False when it failed to start

    def ready(self, timeout=None):
        """Whether it has started and serves: True, False (it failed to start, or was closed),
        None (still importing after timeout seconds)."""
        import select
        import time
        end = None if timeout is None else time.monotonic() + timeout
        while self._ready is None:  # a library's stray output line before it is skipped
            left = None if end is None else max(0.0, end - time.monotonic())
            if left is not None and not select.select([self.proc.stdout], [], [], left)[0]:
                return None
            line = self.proc.stdout.readline()
            if line.strip() == READY.encode():
                self._ready = True
            elif not line:  # it ended without saying so
                self.close()
        return self._ready

    def serves(self, env) -> bool:
        """Whether a script with environment env runs here as it would in a fresh interpreter."""
        return self._ready is True and self.proc.poll() is None \
            and import_time_env(env) == self.env

    def close(self):
        """Stop the server (the scripts it started go on, unless they asked to die with it) and
        remove its socket and the private folder start_server made for it (nothing else: the
        socket is unlinked, the folder removed only when empty)."""
        with self._lock:
            self._ready = False  # closed: no longer ready
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            if self.folder is not None:
                for remove, path in ((os.unlink, self.socket), (os.rmdir, self.folder)):
                    try:
                        remove(path)
                    except OSError:  # not there (closed before), or not ours to empty
                        pass
                self.folder = None


def supported() -> bool:
    """Whether a server can run here: Linux (elsewhere forking after these imports is not known
    to be safe), with file-descriptor passing."""
    return sys.platform.startswith("linux") and hasattr(socket, "send_fds")


def start_server(env, preload=PRELOAD, die_with_parent=False, wait=True, cwd=None):
    """Start a server with environment env and working folder cwd (default: this process's),
    importing the modules `preload` names -> Server, or None where it cannot run here
    (`supported`) or did not start.
    die_with_parent: the kernel ends it when this process ends. wait=False: return at once
    (Server.ready says when it has started). It runs in its own session (a Ctrl-C at the
    terminal reaches this process, not it) and is closed at this interpreter's exit."""
    if not supported():
        return None
    import atexit
    import tempfile
    try:
        folder = tempfile.mkdtemp(prefix="skipkd-preload-")
    except OSError:  # no writable temporary folder: no server
        return None
    sock = os.path.join(folder, "s")
    argv = [sys.executable, SERVER, sock, "--parent", str(os.getpid()),
            "--preload", ",".join(preload)]
    try:
        proc = subprocess.Popen(argv + (["--die-with-parent"] if die_with_parent else []),
                                cwd=cwd, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE, start_new_session=True,
                                bufsize=0)  # unbuffered: select() sees every line not yet read
    except OSError:
        os.rmdir(folder)
        return None
    srv = Server(proc, sock, env, folder)
    atexit.register(srv.close)
    return srv if not wait or srv.ready() else None


def _stream_fd(spec, default_fd, opened, stdout_fd=None):
    """The file descriptor a child gets for a Popen-style stdout/stderr argument, and the
    parent's end of a pipe (or None)."""
    if spec is None:
        return default_fd, None
    if spec == subprocess.STDOUT:
        return stdout_fd, None
    if spec == subprocess.DEVNULL:
        fd = os.open(os.devnull, os.O_WRONLY)
        opened.append(fd)
        return fd, None
    if spec == subprocess.PIPE:
        read, write = os.pipe()
        opened.append(write)
        return write, os.fdopen(read, "rb")
    return (spec if isinstance(spec, int) else spec.fileno()), None


class ServedProcess:
    """A script running as a child of the script server, handled like a subprocess.Popen."""

    def __init__(self, srv, args, env, cwd, stdout=None, stderr=None, text=False, umask=None,
                 start_new_session=False, die_with_server=False):
        """args: [python, script, arguments...] as for Popen (args[0] is not used: the server is
        the interpreter); start_new_session as Popen's; die_with_server: SIGTERM to the script
        when the server ends (Linux). OSError where the server cannot be reached or ended."""
        self.args, self.returncode, self._text = args, None, text
        self._polling = threading.Lock()
        self.stdout = self.stderr = None
        opened = []
        try:
            out_fd, self.stdout = _stream_fd(stdout, 1, opened)
            err_fd, self.stderr = _stream_fd(stderr, 2, opened, stdout_fd=out_fd)
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.settimeout(CONNECT_TIMEOUT_S)  # until the script has started
            self._conn.connect(srv.socket)
            ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a child inherits it
            request = json.dumps({"argv": args[1:], "env": env, "cwd": cwd, "umask": umask,
                                  "sigint_ignored": ignored, "session": start_new_session,
                                  "parent_death": die_with_server}) + "\n"
            socket.send_fds(self._conn, [request.encode()], [out_fd, err_fd])
        except BaseException:
            for f in (getattr(self, "_conn", None), self.stdout, self.stderr):
                if f is not None:
                    f.close()
            raise
        finally:
            for fd in opened:  # the child holds its own copies now
                os.close(fd)
        self._buffer = bytearray()
        self.lost = False  # the server went while the script ran: its status is not known
        try:
            reply = self._reply(starting=True)
        except OSError:
            self._conn.close()
            raise
        self._conn.settimeout(None)
        self.pid = reply["pid"]
        try:  # to see the script end where the server cannot say so (it is not our child)
            self._pidfd = os.pidfd_open(self.pid)
            self._close_pidfd = weakref.finalize(self, os.close, self._pidfd)
        except (AttributeError, OSError):
            self._pidfd = None

    def _reply(self, starting=False):
        while b"\n" not in self._buffer:
            try:
                chunk = self._conn.recv(4096)
            except (BlockingIOError, socket.timeout):
                raise
            except OSError:
                if starting:
                    raise
                chunk = b""
            if not chunk:
                if starting:
                    raise OSError("the preloaded interpreter ended before the script started")
                # the server (the script's parent) was killed while the script ran: the script
                # got SIGTERM from the kernel (die_with_server) or goes on alone; once it has
                # ended it counts as ended by SIGTERM, its own status being lost
                self.lost = True
                return {"returncode": None}
            self._buffer.extend(chunk)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return json.loads(line)

    def _gone(self, timeout):
        """Whether the script has ended, waiting at most timeout seconds (None: until it has);
        for when the server, its parent, was killed and cannot say so."""
        if self._pidfd is not None:
            import select
            return bool(select.select([self._pidfd], [], [], timeout)[0])
        import time
        end = None if timeout is None else time.monotonic() + timeout
        while True:
            try:
                os.kill(self.pid, 0)
            except ProcessLookupError:
                return True
            if end is not None and time.monotonic() >= end:
                return False
            time.sleep(0.1)

    def _ended(self, code):
        self.returncode = code
        self._conn.close()  # the server reaps the script now (its pid is free from here on)
        if self._pidfd is not None:
            self._close_pidfd()
            self._pidfd = None
        return code

    def _status(self, timeout):
        """The returncode once known (waiting at most timeout seconds; 0: not at all, None:
        until then), else None; the caller holds self._polling."""
        import time
        end = None if timeout is None else time.monotonic() + timeout
        if not self.lost:
            self._conn.setblocking(timeout is None or timeout > 0)
            if timeout:
                self._conn.settimeout(timeout)
            try:
                code = self._reply()["returncode"]
            except (BlockingIOError, socket.timeout):
                return None
            finally:
                self._conn.settimeout(None)
            if code is not None:
                return self._ended(code)
        left = None if end is None else max(0.0, end - time.monotonic())
        return self._ended(-signal.SIGTERM) if self._gone(left) else None

    def poll(self):
        # one reader of the connection at a time: a poll from a signal handler while the main
        # flow is in poll or wait reads nothing (the returncode is as yet unknown)
        if self.returncode is None and self._polling.acquire(blocking=False):
            try:
                if self.returncode is None:  # else a signal handler's poll got it meanwhile
                    self._status(0)
            finally:
                self._polling.release()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None:
            if timeout is not None and timeout <= 0:
                if self.poll() is None:
                    raise subprocess.TimeoutExpired(self.args, timeout)
                return self.returncode
            with self._polling:
                if self.returncode is None and self._status(timeout) is None:
                    raise subprocess.TimeoutExpired(self.args, timeout)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            try:  # through the pidfd where there is one: never to a process that reused the pid
                if self._pidfd is not None and hasattr(signal, "pidfd_send_signal"):
                    signal.pidfd_send_signal(self._pidfd, sig)
                else:
                    os.kill(self.pid, sig)
            except ProcessLookupError:  # it ended just now (as Popen.send_signal, no error)
                pass

    def terminate(self):
        self.send_signal(signal.SIGTERM)

    def kill(self):
        self.send_signal(signal.SIGKILL)

    def kill_group(self):
        """SIGKILL to the child and every process it started (its own process group)."""
        if self.poll() is None:
            try:
                os.killpg(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def communicate(self, timeout=None):
        """Read the pipes to their end, then wait; (stdout, stderr) as Popen returns them."""
        results = {}

        def drain(name, f):
            results[name] = f.read()
            f.close()

        threads = [threading.Thread(target=drain, args=(n, f), daemon=True)
                   for n, f in (("out", self.stdout), ("err", self.stderr)) if f is not None]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout)
            if t.is_alive():
                raise subprocess.TimeoutExpired(self.args, timeout)
        self.wait(timeout)

        def decode(data):
            return data.decode() if (self._text and data is not None) else data

        return decode(results.get("out")), decode(results.get("err"))
