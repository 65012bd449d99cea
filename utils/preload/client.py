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

from utils.preload.server import PRELOAD, import_time_env

__all__ = ["Server", "start_server", "ServedProcess", "import_time_env"]

SERVER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "server.py")


class Server:
    """A running server: its socket, the import-time environment it was started with (a script
    whose environment differs there must run as a plain subprocess) and its process."""

    def __init__(self, proc, socket_path, env):
        self.proc, self.socket, self.env = proc, socket_path, import_time_env(env)
        self._lock = threading.Lock()
        self._ready = None  # True once it said so, False when it failed to start

    def ready(self, timeout=None):
        """Whether it has started and serves: True, False (it failed to start, or was closed),
        None (still importing after timeout seconds)."""
        if self._ready is None:
            import select
            if timeout is not None and not select.select([self.proc.stdout], [], [], timeout)[0]:
                return None
            self._ready = self.proc.stdout.readline().strip() == b"ready"
            if not self._ready:
                self.close()
        return self._ready

    def serves(self, env) -> bool:
        """Whether a script with environment env runs here as it would in a fresh interpreter."""
        return self._ready is True and self.proc.poll() is None \
            and import_time_env(env) == self.env

    def close(self):
        """Stop the server (the scripts it started go on, unless they asked to die with it) and
        remove the folder of its socket, which start_server made."""
        import shutil
        with self._lock:
            self._ready = False  # closed: no longer ready
            if self.proc.poll() is None:
                self.proc.kill()
            self.proc.wait()
            if self.proc.stdout is not None:
                self.proc.stdout.close()
            shutil.rmtree(os.path.dirname(self.socket), ignore_errors=True)


def start_server(env, preload=PRELOAD, die_with_parent=False, wait=True):
    """Start a server with environment env, importing the modules `preload` names -> Server, or
    None where it cannot run here (no fork or no file-descriptor passing: not Linux/macOS) or did
    not start. die_with_parent: the kernel ends it when this process ends (Linux). wait=False:
    return at once (Server.ready says when it has started). It is closed at this interpreter's
    exit."""
    if not hasattr(os, "fork") or not hasattr(socket, "send_fds"):
        return None
    import atexit
    import tempfile
    folder = tempfile.mkdtemp(prefix="skipkd-preload-")
    sock = os.path.join(folder, "s")
    argv = [sys.executable, SERVER, sock, "--preload", ",".join(preload)]
    try:
        proc = subprocess.Popen(argv + (["--die-with-parent"] if die_with_parent else []),
                                cwd=folder, env=env, stdin=subprocess.DEVNULL,
                                stdout=subprocess.PIPE)
    except OSError:
        os.rmdir(folder)
        return None
    srv = Server(proc, sock, env)
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
        opened = []
        try:
            out_fd, self.stdout = _stream_fd(stdout, 1, opened)
            err_fd, self.stderr = _stream_fd(stderr, 2, opened, stdout_fd=out_fd)
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.connect(srv.socket)
            ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a child inherits it
            request = json.dumps({"argv": args[1:], "env": env, "cwd": cwd, "umask": umask,
                                  "sigint_ignored": ignored, "session": start_new_session,
                                  "parent_death": die_with_server}) + "\n"
            socket.send_fds(self._conn, [request.encode()], [out_fd, err_fd])
        finally:
            for fd in opened:  # the child holds its own copies now
                os.close(fd)
        self._buffer = bytearray()
        reply = self._reply()
        if "pid" not in reply:  # the server was killed before the script started
            self._conn.close()
            raise OSError("the preloaded interpreter ended before the script started")
        self.pid = reply["pid"]

    def _reply(self):
        while b"\n" not in self._buffer:
            chunk = self._conn.recv(4096)
            if not chunk:  # the server (and the script's parent with it) was killed: so, in
                # effect, was the script, whose own status is lost
                return {"returncode": -signal.SIGKILL}
            self._buffer.extend(chunk)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return json.loads(line)

    def _ended(self, code):
        self.returncode = code
        self._conn.close()
        return code

    def poll(self):
        # one reader of the connection at a time: a poll from a signal handler while the main
        # flow is in poll or wait reads nothing (the returncode is as yet unknown)
        if self.returncode is None and self._polling.acquire(blocking=False):
            try:
                self._conn.setblocking(False)
                try:
                    self._ended(self._reply()["returncode"])
                except (BlockingIOError, InterruptedError):
                    self._conn.setblocking(True)
            finally:
                self._polling.release()
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None and timeout is not None and timeout <= 0:
            if self.poll() is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
        if self.returncode is None:
            with self._polling:
                if self.returncode is None:
                    self._conn.settimeout(timeout)
                    try:
                        code = self._reply()["returncode"]
                    except socket.timeout:
                        self._conn.settimeout(None)
                        raise subprocess.TimeoutExpired(self.args, timeout) from None
                    self._ended(code)
        return self.returncode

    def send_signal(self, sig):
        if self.poll() is None:
            try:
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
