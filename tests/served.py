"""The client side of tests/script_server.py: start a script as a child of this test process's
script server and handle it like a subprocess.Popen (poll, wait, send_signal, kill, terminate,
communicate, returncode, pid, stdout/stderr pipes)."""
import json
import os
import signal
import socket
import subprocess
import sys
import threading

HERE = os.path.dirname(os.path.abspath(__file__))
_SERVER = {}  # this process's server: {"pid", "proc", "socket", "env"}
_START = threading.Lock()


def server(env, import_time_env):
    """This process's script server, started on first use with the environment env; None where
    it cannot start. -> {"socket", "env": the import-time variables it was started with}"""
    with _START:  # test threads may ask for it at once: one server per process
        if _SERVER.get("pid") == os.getpid():
            return _SERVER
        if not hasattr(socket, "send_fds"):
            return None
        return _start(env, import_time_env)


def _start(env, import_time_env):
    import atexit
    import tempfile
    sock = os.path.join(tempfile.mkdtemp(prefix="skipkd-scripts-"), "s")
    proc = subprocess.Popen([sys.executable, os.path.join(HERE, "script_server.py"), sock],
                            cwd=os.path.dirname(HERE), env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE)
    if proc.stdout.readline().strip() != b"ready":
        proc.kill()
        return None
    import shutil
    atexit.register(lambda: (proc.kill(), proc.wait(), shutil.rmtree(os.path.dirname(sock), True)))
    _SERVER.clear()
    _SERVER.update(pid=os.getpid(), proc=proc, socket=sock, env=import_time_env(env))
    return _SERVER


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

    def __init__(self, srv, args, env, cwd, stdout=None, stderr=None, text=False, umask=None):
        self.args, self.returncode, self._text = args, None, text
        opened = []
        try:
            out_fd, self.stdout = _stream_fd(stdout, 1, opened)
            err_fd, self.stderr = _stream_fd(stderr, 2, opened, stdout_fd=out_fd)
            self._conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self._conn.connect(srv["socket"])
            ignored = signal.getsignal(signal.SIGINT) == signal.SIG_IGN  # a child inherits it
            request = json.dumps({"argv": args[1:], "env": env, "cwd": cwd, "umask": umask,
                                  "sigint_ignored": ignored}) + "\n"
            socket.send_fds(self._conn, [request.encode()], [out_fd, err_fd])
        finally:
            for fd in opened:  # the child holds its own copies now
                os.close(fd)
        self._buffer = bytearray()
        self.pid = self._reply()["pid"]

    def _reply(self):
        while b"\n" not in self._buffer:
            chunk = self._conn.recv(4096)
            if not chunk:
                raise RuntimeError("the script server closed the connection")
            self._buffer.extend(chunk)
        line, _, rest = bytes(self._buffer).partition(b"\n")
        self._buffer[:] = rest
        return json.loads(line)

    def _ended(self, code):
        self.returncode = code
        self._conn.close()
        return code

    def poll(self):
        if self.returncode is None:
            self._conn.setblocking(False)
            try:
                self._ended(self._reply()["returncode"])
            except (BlockingIOError, InterruptedError):
                pass
            finally:
                if self.returncode is None:
                    self._conn.setblocking(True)
        return self.returncode

    def wait(self, timeout=None):
        if self.returncode is None and timeout is not None and timeout <= 0:
            if self.poll() is None:
                raise subprocess.TimeoutExpired(self.args, timeout)
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
