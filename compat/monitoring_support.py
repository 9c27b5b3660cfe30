"""Helpers for compat/test_monitoring.py: the real monitoring tools, driven from tests.

* EventMonitor: celery.events.EventReceiver + celery.events.State in a thread, the
  engine of Flower, capturing every event on one redis-server.
* celery_cli(): the real `celery -A myapp inspect|control|status ...` command line,
  run as a subprocess against one redis-server.

Nothing here sleeps for synchronisation: waits are polled conditions with deadlines.
"""
import json
import os
import socket
import subprocess
import threading
import time
from pathlib import Path

from celery.utils.time import utcoffset

from helpers import wait_for

COMPAT = Path(__file__).resolve().parent
PYTHON = "/usr/bin/python3"
HOSTNAME = socket.gethostname()


def nodename(worker):
    """The full node name a worker started with `-n <name>@%h` must use."""
    return f"{worker.name}@{HOSTNAME}"


# ------------------------------------------------------------------------ celery CLI


def cli_env(redis):
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("CELERY_") and k != "REDIS_URL"}
    env.update(CELERY_BROKER_URL=redis.url(0), CELERY_RESULT_BACKEND=redis.url(1),
               PYTHONPATH=str(COMPAT), PYTHONWARNINGS="ignore")
    return env


def celery_cli(redis, *args, timeout=30):
    """Runs `python3 -m celery -A myapp <args>`; returns the CompletedProcess."""
    cmd = [PYTHON, "-m", "celery", "-A", "myapp", *map(str, args)]
    proc = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          env=cli_env(redis), cwd=str(COMPAT), timeout=timeout)
    proc.cmdline = " ".join(cmd)
    return proc


def _last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith(("{", "[")):
            return json.loads(line)
    return None


def cli_json(redis, group, action, *args, dest=None, timeout=5.0, expect_rc=0):
    """`celery -A myapp <inspect|control> <action> <args> --json -t T [-d dest]`.

    Returns the replies merged into {node: reply}. dest is a node name or a list.
    """
    argv = [group, action, *args, "--json", "--timeout", str(timeout)]
    if dest:
        argv += ["-d", ",".join([dest] if isinstance(dest, str) else dest)]
    proc = celery_cli(redis, *argv, timeout=timeout + 30)
    detail = (f"$ {proc.cmdline}\n--- exit status {proc.returncode}\n--- stdout\n"
              f"{proc.stdout}\n--- stderr\n{proc.stderr}")
    assert proc.returncode == expect_rc, detail
    if expect_rc != 0:
        return proc
    data = _last_json(proc.stdout)
    assert data is not None, f"no JSON in the output\n{detail}"
    if isinstance(data, list):  # control: [{node: reply}, ...]
        merged = {}
        for item in data:
            merged.update(item)
        data = merged
    return data


# ------------------------------------------------------------------- event monitor


class EventMonitor:
    """EventReceiver(handlers={'*': ...}) + State, capturing in a daemon thread.

    Every event (already localised by the receiver, with local_received) is kept in
    .events in arrival order; .state is the celery.events.State Flower would build.
    """

    SYNC_TYPE = "monitor-sync"

    def __init__(self, app):
        self.app = app
        self.state = app.events.State()
        self.events = []
        self.lock = threading.Lock()
        self.error = None
        self.conn = app.connection_for_read()
        self.recv = app.events.Receiver(self.conn, handlers={"*": self._on_event})
        self.thread = threading.Thread(target=self._run, name="event-monitor", daemon=True)

    def _on_event(self, event):
        with self.lock:
            self.events.append(dict(event))
            self.state.event(event)

    def _run(self):
        try:
            # wakeup=True: the receiver broadcasts a `heartbeat` cast like Flower does.
            self.recv.capture(limit=None, timeout=None, wakeup=True)
        except Exception as exc:  # noqa: BLE001 - reported by check()
            if not self.recv.should_stop:
                self.error = exc

    def start(self, timeout=15.0):
        """Starts capturing; returns once an event sent by this process comes back."""
        self.thread.start()
        token = f"sync-{time.monotonic_ns()}"
        with self.app.connection_for_write() as conn:
            dispatcher = self.app.events.Dispatcher(conn, hostname="monitor@test")

            def seen():
                self.check()
                dispatcher.send(self.SYNC_TYPE, token=token)
                return any(e.get("token") == token for e in self.snapshot())

            wait_for(seen, timeout, "the event receiver to subscribe", interval=0.2)
            dispatcher.close()
        return self

    def stop(self):
        dest = os.environ.get("COMPAT_KEEP_LOGS")
        if dest:  # CI artefact: every event the monitor saw, one JSON per line
            Path(dest).mkdir(parents=True, exist_ok=True)
            with open(Path(dest) / "monitor-events.jsonl", "a") as f:
                for ev in self.snapshot():
                    f.write(json.dumps(ev, default=repr) + "\n")
        self.recv.should_stop = True
        self.thread.join(10)
        try:
            self.conn.release()
        except Exception:  # noqa: BLE001
            pass

    def check(self):
        if self.error is not None:
            raise AssertionError(f"event receiver failed: {self.error!r}")
        assert self.thread.is_alive(), "event receiver thread exited"

    def snapshot(self):
        with self.lock:
            return list(self.events)

    def mark(self):
        """An index into the event list: pass as since= to only look at later events."""
        with self.lock:
            return len(self.events)

    def find(self, since=0, **match):
        """Events (after index since) whose fields equal every key=value in match."""
        with self.lock:
            evs = self.events[since:]
        return [e for e in evs if all(e.get(k) == v for k, v in match.items())]

    def wait(self, timeout, what, since=0, count=1, **match):
        """Waits for count events matching key=value pairs; returns them."""
        def cond():
            self.check()
            found = self.find(since, **match)
            return found if len(found) >= count else None
        return wait_for(cond, timeout, f"{what} (events matching {match})", interval=0.05)

    def task_types(self, uuid):
        return [e["type"] for e in self.find(uuid=uuid) if e["type"].startswith("task-")]

    def worker(self, hostname):
        with self.lock:
            return self.state.workers.get(hostname)

    def task(self, uuid):
        with self.lock:
            return self.state.tasks.get(uuid)

    def alive(self, hostname):
        with self.lock:
            w = self.state.workers.get(hostname)
            return bool(w is not None and w.alive)

    def heartbeat_sync(self, hostname, count=2, timeout=10.0):
        """Waits for `count` further heartbeats of hostname: by then any event the
        worker produced before this call has been published (a barrier)."""
        since = self.mark()
        self.wait(timeout, f"{count} heartbeats of {hostname}", since=since, count=count,
                  type="worker-heartbeat", hostname=hostname)


def raw_timestamp(event):
    """The sender's timestamp, undoing the receiver's utcoffset adjustment."""
    return event["timestamp"] + (event["utcoffset"] - utcoffset()) * 3600
