"""Small helpers shared by the compat tests, demo.py and conftest.py.

Every wait in this directory goes through wait_for() or poll_states(): a condition
polled against a deadline, never a sleep used as synchronisation.
"""
import atexit
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import redis as redis_py

LOCALHOST = "127.0.0.1"
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
LIVE_PROCESSES = set()


@atexit.register
def _kill_leftovers():
    """Last resort if pytest dies mid-test: never leave servers or workers behind."""
    for proc in list(LIVE_PROCESSES):
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def free_port():
    """A loopback port nobody listens on right now (bound to 0, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what, interval=0.05):
    """Polls cond() until it returns something truthy; returns that value.

    Raises TimeoutError naming `what` when the deadline passes. This is the only way
    tests wait: never a bare sleep used as synchronisation.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def wait_exit(proc, timeout):
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        return None


def tail(path, lines=150):
    try:
        text = Path(path).read_text(errors="replace")
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    rows = text.splitlines()
    if len(rows) > lines:
        rows = [f"... ({len(rows) - lines} earlier lines omitted)"] + rows[-lines:]
    return "\n".join(rows)


def pid_alive(pid):
    """True if pid exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def child_pids(pid):
    """Direct children of pid, from /proc."""
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def poll_states(result, timeout, interval=0.05):
    """Polls an AsyncResult until ready; returns the [(state, info), ...] changes seen.

    State and info come from one backend read (reading .state then .info is two
    reads, and the task may finish in between).
    """
    seen = []
    deadline = time.monotonic() + timeout
    while True:
        meta = result.backend.get_task_meta(result.id)
        state, info = meta["status"], meta.get("result")
        if not seen or seen[-1] != (state, info):
            seen.append((state, info))
        if state in ("SUCCESS", "FAILURE", "REVOKED"):
            return seen
        if time.monotonic() >= deadline:
            raise TimeoutError(f"task {result.id} not ready after {timeout}s; states: {seen}")
        time.sleep(interval)


def raw_meta(redis, task_id):
    """The celery-task-meta-<id> document straight from the result db (or None)."""
    raw = redis.client(1).get(f"celery-task-meta-{task_id}")
    return json.loads(raw) if raw is not None else None


class RedisServer:
    """One private redis-server on 127.0.0.1:<free port>, data in its own directory.

    persistent=True turns on the append-only file with fsync on every write, so a
    restart() (SIGTERM, start again on the same port and directory) keeps all data.
    """

    def __init__(self, basedir, persistent=False):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=basedir))
        self.port = free_port()
        self.persistent = persistent
        self.proc = None

    def url(self, db=0):
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def client(self, db=0):
        return redis_py.Redis(host=LOCALHOST, port=self.port, db=db, socket_timeout=10)

    def start(self):
        args = [REDIS_SERVER, "--bind", LOCALHOST, "--port", str(self.port),
                "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log"),
                "--daemonize", "no", "--save", "", "--protected-mode", "yes",
                "--loglevel", "notice"]
        if self.persistent:
            args += ["--appendonly", "yes", "--appendfsync", "always"]
        else:
            args += ["--appendonly", "no"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        LIVE_PROCESSES.add(self.proc)
        probe = self.client()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server exited with {self.proc.returncode}:\n"
                                   + tail(self.dir / "redis.log", 30))
            try:
                return probe.ping()
            except redis_py.RedisError:
                return False

        wait_for(ready, 10, f"redis-server on port {self.port}")
        probe.close()
        return self

    def stop(self):
        if self.proc is None:
            return
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if wait_exit(self.proc, 10) is None:
                self.proc.kill()
                self.proc.wait(5)
        LIVE_PROCESSES.discard(self.proc)
        self.proc = None

    def restart(self):
        self.stop()
        return self.start()

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None


class SilentLinkProxy:
    """A loopback TCP proxy to a Redis port whose links can go silent: after
    silence(), Redis sees the connections open then closed, while the client's
    ends stay open and carry nothing (a server lost without the client hearing
    of it: a failover, a dead NAT entry); connections made later are forwarded
    normally."""

    def __init__(self, target_port):
        import threading
        self.target_port = target_port
        self.listener = socket.create_server((LOCALHOST, 0))
        self.port = self.listener.getsockname()[1]
        self.pairs = []            # [client, upstream, silent]
        self.lock = threading.Lock()
        self.stopping = False
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def url(self, db=0):
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def silence(self):
        """Every connection open now goes silent (and stays open)."""
        with self.lock:
            for pair in self.pairs:
                pair[2] = True  # the proxy thread closes the Redis side
            n = len(self.pairs)
        wait_for(lambda: all(p[1].fileno() < 0 for p in list(self.pairs) if p[2]), 5,
                 "the proxy to close the silenced links' Redis side")
        return n

    def _run(self):
        import select
        while not self.stopping:
            with self.lock:
                for p in self.pairs:
                    if p[2] and p[1].fileno() >= 0:
                        p[1].close()  # Redis drops the client: a BRPOP takes nothing
                live = [p for p in self.pairs if not p[2]]
            socks = [self.listener] + [s for p in live for s in p[:2]]
            ready, _, _ = select.select(socks, [], [], 0.05)
            for s in ready:
                if s is self.listener:
                    client, _ = self.listener.accept()
                    upstream = socket.create_connection((LOCALHOST, self.target_port))
                    with self.lock:
                        self.pairs.append([client, upstream, False])
                    continue
                pair = next((p for p in live if s in p[:2]), None)
                if pair is None:
                    continue
                with self.lock:
                    if pair[2]:
                        continue  # went silent meanwhile: the bytes are dropped
                try:
                    data = s.recv(65536)
                except OSError:
                    data = b""
                other = pair[1] if s is pair[0] else pair[0]
                if not data:
                    for x in pair[:2]:
                        x.close()
                    with self.lock:
                        self.pairs.remove(pair)
                    continue
                other.sendall(data)

    def close(self):
        self.stopping = True
        self.thread.join(5)
        self.listener.close()
        for pair in self.pairs:
            for x in pair[:2]:
                try:
                    x.close()
                except OSError:
                    pass


def tcp_ports(pid):
    """Local TCP ports of pid's sockets (IPv4 and IPv6), from /proc."""
    inodes = set()
    try:
        for fd in os.listdir(f"/proc/{pid}/fd"):
            try:
                link = os.readlink(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if link.startswith("socket:["):
                inodes.add(link[8:-1])
    except OSError:
        return set()
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f)
                for line in f:
                    cols = line.split()
                    if cols[9] in inodes:
                        ports.add(int(cols[1].rsplit(":", 1)[1], 16))
        except OSError:
            continue
    return ports


class MonitorLog:
    """Redis MONITOR on a raw socket, read by a background thread: .commands is a
    list of (client port, [arguments]) in the order Redis ran them (port 0 for
    commands a script ran). Arguments are MONITOR's quoted text, unescaped only
    for \\" and \\\\ (enough for keys and counts)."""

    LINE = re.compile(r'^\+\S+ \[\d+ ([^\]]*)\] (.*)$')
    ARG = re.compile(r'"((?:[^"\\]|\\.)*)"')

    def __init__(self, server):
        import threading
        self.commands = []
        self._sock = socket.create_connection((LOCALHOST, server.port), timeout=10)
        self._sock.sendall(b"MONITOR\r\n")
        self._file = self._sock.makefile("rb")
        if self._file.readline().strip() != b"+OK":
            raise RuntimeError("MONITOR was refused")
        self._sock.settimeout(None)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            for raw in self._file:
                m = self.LINE.match(raw.decode("utf-8", "replace").rstrip("\r\n"))
                if not m:
                    continue
                client, rest = m.groups()
                port = int(client.rsplit(":", 1)[1]) if ":" in client else 0
                args = [a.replace('\\"', '"').replace("\\\\", "\\")
                        for a in self.ARG.findall(rest)]
                self.commands.append((port, args))
        except (OSError, ValueError):  # the socket is closed by stop()
            pass

    def stop(self):
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=10)
        self._file.close()
        self._sock.close()
