#!/usr/bin/python3
"""Side-by-side benchmark: Python Celery 5.2 (prefork, threads) vs celeriac.

    /usr/bin/python3 compat/bench/bench.py [--tasks N] [--documents N]
        [--latency-samples N] [--repeat K] [--json out.json] [--smoke] [--workers a,b,c]

One private redis-server on 127.0.0.1 (free port, temp dir, no persistence) serves
as broker (db 0) and result backend (db 1) for every worker. The same Python
producer (Celery 5.2 / kombu) sends the same workloads to each worker in turn;
Redis is FLUSHALL'ed before every workload and every worker is stopped (SIGTERM,
SIGKILL after a deadline) even when something fails.

Worker configurations: python-prefork and python-threads (-c 2), celeriac (-c 2,
as it comes: its pool processes take their own messages), and celeriac-handoff
(the same with --no-pool-fetch: the main process fetches and hands each message
to a pool process). Ratios are printed for both celeriac configurations.

Per worker configuration (each phase starts a fresh worker process):

  phase 1  start the worker on an empty queue; start-up = process spawn until it
           answers a remote-control ping (kombu's pidbox message, sent with
           redis-py every ~20 ms: app.control.ping() would leave a 1 s BRPOP
           pending and round start-up up to ~1 s); idle RSS/PSS; warm shutdown
           time; then latency: sequential send_task("examples.add") +
           AsyncResult.get() on the idle worker (warm-up samples discarded). The
           JSON also has send -> date_done (the worker's own timestamp), which
           leaves out the producer's result-fetching overhead.
  floor    once per bench, before the workers: the same latency loop against
           bench-responder (compat/bench/responder.c, built next to celeriac):
           BRPOP -> SET + PUBLISH of the result in one round trip, no work, no
           ack bookkeeping, no events. What the producer measures against it is
           its own cost (send_task, result subscription, get()) plus Redis round
           trips: a floor no worker can go below. The report prints each
           worker's p50 above it. Every latency loop also records how long
           send_task() alone takes (the producer's part before any consumer can
           see the message).
  phase 2  examples.add with results: N messages are queued while no worker
           runs (a backend-less producer, so no SUBSCRIBE per task), INFO
           commandstats is snapshotted, the worker is started, the bench waits
           (pubsub on the result channels, EXISTS fallback every second) for the
           result of the first and the last task, then until all N results exist
           (MGET). Throughput = (N-1) / (last - first date_done the worker
           stamped on the results): steady state, start-up excluded (start-up is
           its own row). The JSON also has the bench-side observation
           (N-1) / (t_all_results - t_first_result) and N / (t_all_results -
           t_spawn) as "throughput_incl_startup_per_s". All N
           results are checked (SUCCESS, x+y). Redis commands per task =
           commandstats delta / N minus the bench's own commands; it includes the
           worker's start-up commands and, for celeriac, its worker-heartbeat
           events. Commands run inside EVAL/EVALSHA scripts count too (Redis
           counts them and they cost Redis CPU). Worker and Redis CPU per task are
           utime+stime deltas (/proc, 10 ms ticks) between first and last result.
  phase 3  examples.add with ignore_result=True (message field, honoured by both
           Celery 5.2.6 and celeriac): a head task with a result, N ignore-result
           tasks, a tail task with a result; throughput = (N+1) / (date_done of
           the tail - date_done of the head). With -c 2 and prefetch the tail can finish while a few earlier
           tasks still run (<= prefetch; negligible at N=10000); the queue is then
           checked empty.
  phase 4  process_document on ~10 KB plain-text documents ({"text": ...}); both
           implementations store 6 PROCESSING states + the result per document.
           Throughput as in phase 2; every result's sha256, size, chunk count and
           top terms are checked, and document 0's result is compared across
           workers (they are identical apart from the stage timings).

  direct   after the workers, phase 2 (add with results, --repeat runs) against
           bench-direct (compat/bench/direct.c, built next to celeriac): two
           processes that each fetch for themselves with celeriac's own code (the
           batch fetch that pops and reserves atomically, early acks in the next
           fetch, the results stored with the next fetch), each holding at most
           --prefetch-multiplier messages, so the window is Celery's. Nothing is
           handed between processes. It shows what the layout, the window and the
           Lua calls allow on this machine without a worker's internal hand-offs;
           it is a reference for celeriac's add row, not a worker. Then the same
           with --bookkeeper: a parent process that keeps a main process's books
           (each process writes it the envelopes it took and the ids whose
           results it stored, once per fetch cycle; it decodes every envelope's
           headers and matches the ids), the cost of that bookkeeping in a
           worker whose pool processes fetch for themselves.

Python -P threads runs with the celery/celery#6941 workaround from
python_tasks.py (a 5 ms no-op timer): without it the 5.2 threads pool stalls
for seconds whenever its prefetched messages are done (seen here: 50 documents
took 30 s). BENCH_THREADS_WAKEUP=0 turns it off.

Memory = sum over the worker's process tree (main process + all descendants, from
/proc/<pid>/task/*/children) of Rss and Pss from /proc/<pid>/smaps_rollup.

Redis ceiling: redis-benchmark SET/LPUSH/RPOP (50 clients, harmonic mean) with
-P 1 (round-trip bound; on a loaded 2-core box redis-benchmark's own CPU caps it)
and -P 16 (commands Redis can execute), each divided by celeriac's commands per
add+result task. redis-benchmark competes with Redis for the same cores, as the
workers do.

Phases 2-4 run --repeat times (default 3, each with a fresh fill and a fresh
worker); the table shows the median run of each worker (its throughput and
every figure measured with it) and the report lists every run's throughput:
this VM shares its host, and a burst of hypervisor steal in one short run
would otherwise decide a ratio.

Exit status: 0 when every configuration ran and every result was present and
correct; 1 otherwise. Timing is never asserted.
"""
import argparse
import gc
import base64
import collections
import contextlib
import datetime
import hashlib
import json
import os
import platform
import random
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
LOCALHOST = "127.0.0.1"
PYTHON = sys.executable
REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_BENCHMARK = shutil.which("redis-benchmark") or "/usr/bin/redis-benchmark"

import redis as redis_py  # noqa: E402

LIVE = []  # every Popen we started; killed by process group on the way out


# ---- small utilities -------------------------------------------------------------

def log(msg):
    print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOCALHOST, 0))
        return s.getsockname()[1]


def wait_for(cond, timeout, what, interval=0.02):
    """Polls cond() until truthy and returns its value; TimeoutError at the deadline."""
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() >= deadline:
            raise TimeoutError(f"timed out after {timeout:.1f}s waiting for {what}")
        time.sleep(interval)


def stop_process(proc, timeout, group=True):
    """SIGTERM, wait up to timeout, then SIGKILL the process group. Returns seconds
    the process took to exit after SIGTERM, or None if it had to be killed."""
    if proc is None:
        return None
    took = None
    if proc.poll() is None:
        t0 = time.perf_counter()
        try:
            proc.send_signal(signal.SIGTERM)
        except ProcessLookupError:
            pass
        try:
            proc.wait(timeout=timeout)
            took = time.perf_counter() - t0
        except subprocess.TimeoutExpired:
            log(f"pid {proc.pid} ignored SIGTERM for {timeout}s; SIGKILL")
    if group:
        # Stragglers (pool children) in the session we created for it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    if proc in LIVE:
        LIVE.remove(proc)
    return took


def tail(path, lines=40):
    try:
        rows = Path(path).read_text(errors="replace").splitlines()
    except OSError as exc:
        return f"<cannot read {path}: {exc}>"
    return "\n".join(rows[-lines:])


def parse_date_done(meta):
    """date_done of a stored result (UTC, ISO 8601) as epoch seconds, or None."""
    try:
        done = datetime.datetime.fromisoformat(meta["date_done"].rstrip("Z"))
    except (TypeError, ValueError, KeyError, AttributeError):
        return None
    if done.tzinfo is None:
        done = done.replace(tzinfo=datetime.timezone.utc)
    return done.timestamp()


def percentile(values, p):
    s = sorted(values)
    if not s:
        return None
    k = (len(s) - 1) * p / 100.0
    lo, hi = int(k), min(int(k) + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (k - lo)


# ---- /proc memory ------------------------------------------------------------------

def process_tree(pid):
    """pid and all its descendants, from /proc/<pid>/task/*/children."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        try:
            tasks = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tasks:
            try:
                with open(f"/proc/{p}/task/{t}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return out


CLK_TCK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pids):
    """utime + stime of the given processes (their exited threads included)."""
    total = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
        except (OSError, IndexError, ValueError):
            pass
    return total / CLK_TCK


def blocking_waits(pids):
    """Voluntary context switches of the given processes (threads included):
    how many times they went to sleep waiting for something. Each such wait
    costs a wake-up later, which on a VM is far from free."""
    total = 0
    for p in pids:
        try:
            tids = os.listdir(f"/proc/{p}/task")
        except OSError:
            continue
        for t in tids:
            try:
                with open(f"/proc/{p}/task/{t}/status") as f:
                    for line in f:
                        if line.startswith("voluntary_ctxt_switches:"):
                            total += int(line.split()[1])
            except (OSError, ValueError):
                pass
    return total


def tree_memory(pid):
    """{'rss_mib', 'pss_mib', 'processes'} summed over the process tree."""
    rss = pss = 0
    pids = process_tree(pid)
    counted = 0
    for p in pids:
        try:
            with open(f"/proc/{p}/smaps_rollup") as f:
                for line in f:
                    if line.startswith("Rss:"):
                        rss += int(line.split()[1])
                    elif line.startswith("Pss:"):
                        pss += int(line.split()[1])
            counted += 1
        except OSError:
            pass
    return {"rss_mib": rss / 1024.0, "pss_mib": pss / 1024.0, "processes": counted}


# ---- Redis ---------------------------------------------------------------------------

class Redis:
    def __init__(self, workdir):
        self.dir = Path(tempfile.mkdtemp(prefix="redis-", dir=workdir))
        self.port = free_port()
        self.proc = None

    def url(self, db):
        return f"redis://{LOCALHOST}:{self.port}/{db}"

    def client(self, db=0):
        return redis_py.Redis(host=LOCALHOST, port=self.port, db=db, socket_timeout=30)

    def start(self):
        args = [REDIS_SERVER, "--bind", LOCALHOST, "--port", str(self.port), "--dir", str(self.dir),
                "--logfile", str(self.dir / "redis.log"), "--daemonize", "no", "--save", "",
                "--appendonly", "no", "--protected-mode", "yes"]
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, start_new_session=True)
        LIVE.append(self.proc)
        probe = self.client()

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError("redis-server exited:\n" + tail(self.dir / "redis.log"))
            try:
                return probe.ping()
            except redis_py.RedisError:
                return False

        wait_for(ready, 15, f"redis-server on port {self.port}", 0.05)
        probe.close()
        return self

    def stop(self):
        stop_process(self.proc, 10)
        self.proc = None


def redis_benchmark(port, requests, pipeline):
    """ops/s of redis-benchmark (50 clients, -P pipeline) for SET, LPUSH, RPOP."""
    cmd = [REDIS_BENCHMARK, "-h", LOCALHOST, "-p", str(port), "-q", "--csv", "-n", str(requests),
           "-P", str(pipeline), "-t", "set,lpush,rpop"]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True).stdout
    rates = {}
    for line in out.splitlines():
        cells = [c.strip('"') for c in line.split(",")]
        if len(cells) >= 2 and cells[0] in ("SET", "LPUSH", "RPOP"):
            rates[cells[0]] = float(cells[1])
    if len(rates) != 3:
        raise RuntimeError(f"cannot parse redis-benchmark output:\n{out}")
    hmean = len(rates) / sum(1.0 / r for r in rates.values())
    return {"command": " ".join(cmd[1:]), "per_command": rates, "ops_per_s": hmean}


def round_trip_cost(port, redis_pid, requests):
    """Redis CPU per round trip when a single client pings it and waits for
    each answer (redis-benchmark -c 1 -P 1 PING): Redis sleeps between two
    requests, so this is the price of one wake-up of the server on this host,
    with next to no command work in it."""
    cmd = [REDIS_BENCHMARK, "-h", LOCALHOST, "-p", str(port), "-q", "--csv", "-n", str(requests),
           "-c", "1", "-P", "1", "-t", "ping_mbulk"]
    c0, w0 = cpu_seconds([redis_pid]), blocking_waits([redis_pid])
    t0 = time.perf_counter()
    subprocess.run(cmd, capture_output=True, text=True, timeout=300, check=True)
    wall = time.perf_counter() - t0
    c1, w1 = cpu_seconds([redis_pid]), blocking_waits([redis_pid])
    return {"command": " ".join(cmd[1:]), "requests": requests,
            "redis_cpu_us_per_round_trip": 1e6 * (c1 - c0) / requests,
            "redis_waits_per_round_trip": (w1 - w0) / requests,
            "round_trips_per_s": requests / wall}


def host_cpu_ticks():
    """(steal, total) jiffies of the whole machine from /proc/stat; (0, 0) if unreadable.
    Steal is time the hypervisor ran something else while this VM wanted the CPU."""
    try:
        with open("/proc/stat") as f:
            fields = [int(x) for x in f.readline().split()[1:]]
    except (OSError, ValueError):
        return (0, 0)
    return (fields[7] if len(fields) > 7 else 0, sum(fields[:8]))


def commandstats(client):
    return {k[len("cmdstat_"):]: v["calls"] for k, v in client.info("commandstats").items()}


def command_delta(before, after, own):
    delta = collections.Counter()
    for name, calls in after.items():
        d = calls - before.get(name, 0) - own.get(name, 0)
        if d > 0:
            delta[name] = d
    return delta


# ---- workloads: documents --------------------------------------------------------------

def make_documents(count, size, seed=20240601):
    """count plain-text documents of ~size bytes: Zipf-distributed pseudo-words,
    sentences and lines, deterministic."""
    rng = random.Random(seed)
    syl = ["ka", "lo", "mi", "ren", "to", "sa", "vel", "dor", "an", "qui", "pe", "ist", "or",
           "mar", "ne", "lu", "ber", "ch", "ta", "fi"]
    vocab = sorted({"".join(rng.choice(syl) for _ in range(rng.randint(1, 4))) for _ in range(4000)})
    rng.shuffle(vocab)
    vocab += ["the", "and", "with", "for", "that", "this", "from", "into", "2024", "42"]
    weights = [1.0 / (i + 1) for i in range(len(vocab))]
    docs = []
    for _ in range(count):
        words = rng.choices(vocab, weights, k=size // 5)
        parts, line_len, out_len = [], 0, 0
        for i, w in enumerate(words):
            if i % 11 == 0:
                w = w.capitalize()
            if i % 11 == 10:
                w += "."
            parts.append(w)
            line_len += len(w) + 1
            out_len += len(w) + 1
            if line_len > 72:
                parts.append("\n")
                line_len = 0
            else:
                parts.append(" ")
            if out_len >= size:
                break
        docs.append("".join(parts).rstrip() + "\n")
    return docs


# ---- the benchmark ------------------------------------------------------------------------

class ClientStates:
    """Watches what Celery's Redis result consumer (the producer's get()) does
    with the result states it sees: whether get() found the result with its
    first read of the result key (then the PUBLISH for that task stays unread
    on the client's subscription), and how many results of earlier tasks a
    get() had to read off the subscription before its own (Celery's consumer
    reads one pubsub message per wait: celery/celery#6963). Observation only:
    the wrapped method is called unchanged."""

    def __init__(self):
        from celery.backends.redis import ResultConsumer
        self.cls, self.orig = ResultConsumer, ResultConsumer.on_state_change
        self.current, self.rows = None, []

    @contextlib.contextmanager
    def watch(self, task_id, keep):
        row = {"by_read": False, "stale": 0}
        orig = self.orig

        def on_state_change(consumer, meta, message):
            if meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                if meta.get("task_id") != task_id:
                    row["stale"] += 1
                elif message is None:
                    row["by_read"] = True
            return orig(consumer, meta, message)

        self.cls.on_state_change = on_state_change
        try:
            yield
        finally:
            self.cls.on_state_change = orig
            if keep:
                self.rows.append(row)

    def summary(self, lat):
        slow = sorted(range(len(lat)), key=lambda k: -lat[k])[:max(1, len(lat) // 100)]
        return {"answered_by_first_read": sum(r["by_read"] for r in self.rows),
                "stale_results_read": sum(r["stale"] for r in self.rows),
                "slowest_1pct_stale": [self.rows[k]["stale"] for k in slow]}


class Functional(Exception):
    """A functional failure: a missing or wrong result, a dead worker."""


class Bench:
    def __init__(self, args, workdir):
        self.args = args
        self.workdir = Path(workdir)
        self.redis = Redis(self.workdir).start()
        self.r0 = self.redis.client(0)
        self.r1 = self.redis.client(1)
        os.environ["BENCH_BROKER_URL"] = self.redis.url(0)
        os.environ["BENCH_RESULT_BACKEND"] = self.redis.url(1)
        sys.path.insert(0, str(HERE))
        from celery import Celery
        import python_tasks
        self.app = python_tasks.app  # producer with the result backend (latency test)
        # Backend-less producer for the bulk fills: no result SUBSCRIBE per task.
        self.fill_app = Celery("bench-fill", broker=self.redis.url(0))
        self.fill_app.conf.update(task_serializer="json", accept_content=["json"])
        self.host = socket.gethostname()
        self.worker_logs = {}

    # -- workers
    def worker_command(self, name):
        node = f"{name}@{self.host}"
        if name.startswith("python-"):
            pool = name.split("-", 1)[1]
            return node, [PYTHON, "-m", "celery", "-A", "python_tasks", "-b", self.redis.url(0),
                          "--result-backend", self.redis.url(1), "worker", "-P", pool, "-c", "2",
                          "-n", node, "-l", os.environ.get("BENCH_PY_LOGLEVEL", "warning"),
                          "--without-mingle", "--without-gossip", "--without-heartbeat",
                          "--prefetch-multiplier", str(self.args.prefetch_multiplier)]
        if name in ("bench-direct", "bench-direct-books"):
            return node, [self.args.direct, self.redis.url(0), self.redis.url(1), "2",
                          str(self.args.prefetch_multiplier)] + (
                              ["--bookkeeper"] if name == "bench-direct-books" else [])
        return node, [self.args.celeriac, "worker", "-b", self.redis.url(0), "--result-backend",
                      self.redis.url(1), "-c", "2", "-n", node, "-l", "warning",
                      "--plugin", self.args.plugin, "--prefetch-multiplier",
                      str(self.args.prefetch_multiplier)] + (
                          ["--no-pool-fetch"] if name == "celeriac-handoff" else [])

    def start_worker(self, name, phase):
        node, cmd = self.worker_command(name)
        logpath = self.workdir / f"{name}-{phase}.log"
        self.worker_logs.setdefault(name, []).append(str(logpath))
        env = dict(os.environ, PYTHONPATH=str(HERE), PYTHONDONTWRITEBYTECODE="1",
                   C_FORCE_ROOT="1")
        logf = open(logpath, "wb")
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=HERE, env=env, stdin=subprocess.DEVNULL, stdout=logf,
                                stderr=subprocess.STDOUT, start_new_session=True)
        logf.close()
        LIVE.append(proc)
        proc.node, proc.logpath, proc.t_spawn = node, logpath, t0
        return proc

    def check_alive(self, proc):
        if proc.poll() is not None:
            raise Functional(f"worker {proc.node} exited with {proc.returncode}:\n{tail(proc.logpath)}")

    def wait_ping(self, proc, timeout=60):
        """Seconds from spawn until the worker answers a remote-control ping.

        The ping is sent the way kombu's Mailbox sends it (PUBLISH on the pidbox
        fanout channel, reply queue bound in _kombu.binding.reply.celery.pidbox)
        but with redis-py directly: app.control.ping() leaves a 1 s BRPOP pending
        on its connection after a short timeout, so polling with it would round
        start-up times up to about a second."""
        oid = str(uuid.uuid4())
        reply_q = f"{oid}.reply.celery.pidbox"
        self.r0.sadd("_kombu.binding.reply.celery.pidbox", f"{oid}\x06\x16\x06\x16{reply_q}")
        tickets = set()
        clock = 0
        deadline = time.monotonic() + timeout
        try:
            while True:
                self.check_alive(proc)
                ticket, clock = str(uuid.uuid4()), clock + 1
                tickets.add(ticket)
                body = {"method": "ping", "arguments": {}, "destination": [proc.node],
                        "pattern": None, "matcher": None, "ticket": ticket,
                        "reply_to": {"exchange": "reply.celery.pidbox", "routing_key": oid}}
                envelope = {
                    "body": base64.b64encode(json.dumps(body).encode()).decode(),
                    "content-encoding": "utf-8", "content-type": "application/json",
                    "headers": {"clock": clock, "expires": time.time() + 10},
                    "properties": {"delivery_mode": 2, "priority": 0, "body_encoding": "base64",
                                   "delivery_info": {"exchange": "celery.pidbox",
                                                     "routing_key": ""},
                                   "delivery_tag": str(uuid.uuid4())}}
                self.r0.publish("/0.celery.pidbox", json.dumps(envelope))
                got = self.r0.brpop([reply_q], timeout=0.02)
                if got:
                    msg = json.loads(got[1])
                    reply = json.loads(base64.b64decode(msg["body"]))
                    if msg.get("headers", {}).get("ticket") in tickets and proc.node in reply:
                        return time.perf_counter() - proc.t_spawn
                if time.monotonic() >= deadline:
                    raise TimeoutError(f"{proc.node} did not answer ping within {timeout}s")
        finally:
            self.r0.srem("_kombu.binding.reply.celery.pidbox", f"{oid}\x06\x16\x06\x16{reply_q}")
            self.r0.delete(reply_q)

    def stop_worker(self, proc):
        took = stop_process(proc, 30)
        if took is None:
            log(f"{proc.node}: did not exit within 30s of SIGTERM (killed)")
        return took

    # -- producer side
    def fill(self, name, arglist, ignore=None):
        """Queues one message per args tuple (kwargs optional) while no worker runs."""
        ids = [str(uuid.uuid4()) for _ in arglist]
        ignore = ignore or set()
        with self.fill_app.producer_or_acquire() as producer:
            for i, (tid, a) in enumerate(zip(ids, arglist)):
                args, kwargs = a if isinstance(a, tuple) and len(a) == 2 and isinstance(a[1], dict) \
                    else (a, {})
                self.fill_app.send_task(name, args=args, kwargs=kwargs, task_id=tid,
                                        producer=producer, ignore_result=i in ignore)
        return ids

    def cpu_sample(self, proc):
        tree = process_tree(proc.pid)
        return (cpu_seconds(tree), cpu_seconds([self.redis.proc.pid]), host_cpu_ticks(),
                blocking_waits(tree), blocking_waits([self.redis.proc.pid]))

    def wait_results(self, proc, ids, timeout, own):
        """Waits for the READY result of ids[0] and ids[-1] (pubsub, EXISTS fallback).
        Returns (t_first, t_last) as perf_counter times. The pubsub must have been
        subscribed by the caller before the commandstats snapshot."""
        first, last = ids[0], ids[-1]
        key = "celery-task-meta-"
        seen = {}
        deadline = time.monotonic() + timeout
        next_fallback = time.monotonic() + 1.0
        while len(seen) < 2:
            msg = self.pubsub.get_message(timeout=0.05)
            now = time.perf_counter()
            if msg and msg["type"] == "message":
                tid = msg["channel"].decode()[len(key):]
                try:
                    status = json.loads(msg["data"]).get("status")
                except ValueError:
                    status = None
                if status in ("SUCCESS", "FAILURE", "REVOKED") and tid not in seen:
                    seen[tid] = now
                    if tid == first:
                        self.cpu_at_first = self.cpu_sample(proc)
            if time.monotonic() >= next_fallback:
                next_fallback = time.monotonic() + 1.0
                self.check_alive(proc)
                for tid in (first, last):
                    if tid not in seen:
                        own["get"] += 1
                        raw = self.r1.get(key + tid)
                        if raw and json.loads(raw).get("status") in ("SUCCESS", "FAILURE"):
                            seen[tid] = time.perf_counter()
                            if tid == first:
                                self.cpu_at_first = self.cpu_sample(proc)
                            log(f"result {tid} found by polling, not pubsub")
            if time.monotonic() >= deadline:
                raise Functional(f"{proc.node}: results not ready after {timeout:.0f}s "
                                 f"(seen {len(seen)}/2; queue length {self.r0.llen('celery')})")
        return seen[first], seen[last]

    def collect(self, proc, ids, timeout, own):
        """Waits until every id has a READY result; returns ({id: meta}, t_all)."""
        key = "celery-task-meta-"
        metas, missing = {}, list(ids)
        deadline = time.monotonic() + timeout
        while True:
            t_pass = time.perf_counter()  # all results existed by the start of a clean pass
            still = []
            for i in range(0, len(missing), 1000):
                batch = missing[i:i + 1000]
                own["mget"] += 1
                for tid, raw in zip(batch, self.r1.mget([key + t for t in batch])):
                    meta = json.loads(raw) if raw else None
                    if meta and meta.get("status") in ("SUCCESS", "FAILURE", "REVOKED"):
                        metas[tid] = meta
                    else:
                        still.append(tid)
            missing = still
            if not missing:
                return metas, t_pass
            self.check_alive(proc)
            if time.monotonic() >= deadline:
                raise Functional(f"{proc.node}: {len(missing)} of {len(ids)} results missing "
                                 f"after {timeout:.0f}s (e.g. {missing[:3]})")
            time.sleep(0.01)

    def queue_workload(self, name, task, arglist, ignore=None, verify=None):
        """Fill while stopped, start the worker, time first..last result, verify."""
        n = len(arglist)
        self.r0.flushall()
        t0 = time.perf_counter()
        ids = self.fill(task, arglist, ignore)
        fill_s = time.perf_counter() - t0
        waited = [i for i, tid in enumerate(ids) if not ignore or i not in ignore]
        self.pubsub = self.r1.pubsub(ignore_subscribe_messages=True)
        self.pubsub.subscribe(*(f"celery-task-meta-{ids[i]}" for i in (waited[0], waited[-1])))
        own = collections.Counter()
        before = commandstats(self.r0)
        proc = self.start_worker(name, task.replace(".", "_") + ("_ignore" if ignore else ""))
        timeout = 120 + n * (0.2 if task == "process_document" else 0.05)
        try:
            t_first, t_last = self.wait_results(proc, [ids[waited[0]], ids[waited[-1]]], timeout, own)
            metas, t_all = self.collect(proc, [ids[i] for i in waited], 60, own)
            t_all = max(t_all, t_last)
            cpu_end = self.cpu_sample(proc)
            own["info"] += 1
            after = commandstats(self.r0)
            if ignore:
                wait_for(lambda: own.update(llen=1) or self.r0.llen("celery") == 0, 30,
                         "queue to drain")
                own["hlen"] += 1
                if self.r0.hlen("unacked"):
                    wait_for(lambda: own.update(hlen=1) or self.r0.hlen("unacked") == 0, 30,
                             "unacked to drain")
                after = commandstats(self.r0)
                own["info"] += 1
            mem = tree_memory(proc.pid)
        finally:
            self.pubsub.close()
            stop_s = self.stop_worker(proc)
        errors = [(tid, m) for tid, m in metas.items() if m.get("status") != "SUCCESS"]
        if errors:
            raise Functional(f"{name}: {len(errors)} {task} tasks did not succeed, e.g. {errors[0]}")
        if verify:
            bad = [i for i in waited if not verify(i, metas[ids[i]]["result"])]
            if bad:
                raise Functional(f"{name}: {len(bad)} wrong {task} results, e.g. #{bad[0]} -> "
                                 f"{json.dumps(metas[ids[bad[0]]]['result'])[:300]}")
        delta = command_delta(before, after, own)
        total = sum(delta.values())
        # The span comes from the date_done stamps the worker wrote (first and last
        # finished result), so it does not depend on when this process got to
        # see the pubsub messages; the bench-side observation is kept as a check.
        stamps = [d for d in (parse_date_done(m) for m in metas.values()) if d is not None]
        span = max(stamps) - min(stamps) if len(stamps) == len(metas) else None
        observed = t_all - t_first  # t_all: every result exists (>= the last task's result)
        done_between = n - 1  # tasks that finished after the first result
        res = {
            "tasks": n,
            "fill_s": fill_s,
            "t_first_result_s": t_first - proc.t_spawn,
            "t_last_result_s": t_last - proc.t_spawn,
            "t_all_results_s": t_all - proc.t_spawn,
            "throughput_per_s": done_between / span if span else None,
            "observed_throughput_per_s": done_between / observed if observed > 0 else None,
            "throughput_incl_startup_per_s": n / (t_all - proc.t_spawn),
            "redis_commands_total": total,
            "redis_commands_per_task": total / n,
            "redis_top_commands_per_task": {k: v / n for k, v in delta.most_common(8)},
            "bench_own_commands_subtracted": dict(own),
            "memory_after": mem,
            # CPU from the first to the last result, per task finished in between
            "worker_cpu_ms_per_task": 1000.0 * (cpu_end[0] - self.cpu_at_first[0]) / (n - 1),
            "redis_cpu_ms_per_task": 1000.0 * (cpu_end[1] - self.cpu_at_first[1]) / (n - 1),
            # times the processes blocked (voluntary context switches), same span
            "worker_waits_per_task": (cpu_end[3] - self.cpu_at_first[3]) / (n - 1),
            "redis_waits_per_task": (cpu_end[4] - self.cpu_at_first[4]) / (n - 1),
            # share of the machine's CPU time the hypervisor took in the same span
            "host_steal_pct": (100.0 * (cpu_end[2][0] - self.cpu_at_first[2][0])
                               / max(1, cpu_end[2][1] - self.cpu_at_first[2][1])),
            "shutdown_s": stop_s,
        }
        sample = json.loads(json.dumps(metas[ids[waited[0]]]["result"]))
        if isinstance(sample, dict) and isinstance(sample.get("chunks"), dict):
            sample["chunks"]["items"] = sample["chunks"].get("items", [])[:2]
        res["sample_result"] = sample
        stages = collections.defaultdict(list)
        for m in metas.values():
            r = m.get("result")
            for st in (r.get("stages") or []) if isinstance(r, dict) else []:
                stages[st["name"]].append(st["ms"])
        if stages:  # as the task itself timed them (each includes one progress write)
            res["stage_ms_median"] = {k: statistics.median(v) for k, v in stages.items()}
        return res

    def repeated(self, what, fn):
        """Runs a throughput workload --repeat times and keeps the median run
        (by throughput) whole; every run's throughput and host steal are kept
        beside it, so the spread is in the JSON and the report."""
        runs = []
        for k in range(self.args.repeat):
            runs.append(fn())
            if self.args.repeat > 1:
                log(f"{what} run {k + 1}/{self.args.repeat}: "
                    f"{runs[-1]['throughput_per_s'] or 0:.0f}/s, "
                    f"host steal {runs[-1]['host_steal_pct']:.1f}%")
        order = sorted(range(len(runs)), key=lambda i: runs[i]["throughput_per_s"] or 0)
        med = dict(runs[order[len(runs) // 2]])
        med["runs"] = [{"throughput_per_s": r["throughput_per_s"],
                        "host_steal_pct": r["host_steal_pct"]} for r in runs]
        return med

    def latency_loop(self, name):
        """Sequential send_task("examples.add") + AsyncResult.get() against whatever
        consumes the queue; warm-up samples discarded. Also the time send_task
        alone takes (the producer's own cost before anything can consume the
        message) and send -> date_done (the consumer's timestamp)."""
        a = self.args
        lat, sends, stored = [], [], []
        seen = ClientStates()
        for i in range(a.latency_samples + a.latency_warmup):
            wall0 = time.time()
            t0 = time.perf_counter()
            r = self.app.send_task("examples.add", args=(i, 1))
            t1 = time.perf_counter()
            with seen.watch(r.id, i >= a.latency_warmup):
                v = r.get(timeout=30)
            dt = time.perf_counter() - t0
            if v != i + 1:
                raise Functional(f"{name}: examples.add({i}, 1) returned {v!r}")
            if i >= a.latency_warmup:
                lat.append(dt * 1000.0)
                sends.append((t1 - t0) * 1000.0)
                # send -> date_done the worker wrote: the part of the round trip
                # before the producer's result machinery sees the result
                done = parse_date_done(json.loads(self.r1.get(f"celery-task-meta-{r.id}")))
                if done is not None:
                    stored.append((done - wall0) * 1000.0)
        out = {"samples": len(lat), "warmup_discarded": a.latency_warmup,
               "p50": percentile(lat, 50), "p90": percentile(lat, 90),
               "p99": percentile(lat, 99), "min": min(lat), "max": max(lat),
               "mean": statistics.fmean(lat),
               "send_task_p50": percentile(sends, 50),
               "samples_ms": [round(x, 3) for x in lat]}
        out["client"] = seen.summary(lat)
        if stored:
            out["send_to_date_done_p50"] = percentile(stored, 50)
            out["send_to_date_done_p99"] = percentile(stored, 99)
        # AsyncResult keeps a reference cycle with its promise: collect them while
        # Redis runs, so that their __del__ does not unsubscribe from a dead server
        # at exit
        r = None
        gc.collect()
        return out

    def run_floor(self):
        """The latency loop against bench-responder (BRPOP -> SET + PUBLISH, no
        work, no bookkeeping): what the Python producer measures when the
        consumer costs next to nothing. No worker can go below it."""
        self.r0.flushall()
        logpath = self.workdir / "bench-responder.log"
        with open(logpath, "wb") as logf:
            proc = subprocess.Popen([self.args.responder, LOCALHOST, str(self.redis.port)],
                                    stdin=subprocess.DEVNULL, stdout=logf,
                                    stderr=subprocess.STDOUT, start_new_session=True)
        LIVE.append(proc)
        try:
            # ready once it waits in BRPOP (nothing else is connected to block)
            wait_for(lambda: proc.poll() is not None or
                     self.r0.info("clients")["blocked_clients"] >= 1, 10,
                     "bench-responder's BRPOP", 0.01)
            if proc.poll() is not None:
                raise Functional(f"bench-responder exited with {proc.returncode}:\n"
                                 f"{tail(logpath)}")
            out = {"command": f"{self.args.responder} {LOCALHOST} {self.redis.port}",
                   "latency_ms": self.latency_loop("bench-responder")}
        finally:
            stop_process(proc, 10)
        log(f"latency floor (bench-responder): p50 {out['latency_ms']['p50']:.2f} ms, "
            f"send_task alone {out['latency_ms']['send_task_p50']:.2f} ms")
        return out

    def run_direct(self):
        """The add workload against bench-direct: two processes that each fetch
        for themselves with celeriac's own broker and backend code, within
        Celery's prefetch window, with nothing handed between processes. What
        the window, the layout and the Lua calls allow on this machine once a
        worker's internal hand-offs are gone: a reference for celeriac's add
        row, not a worker (no events, remote control or time limits)."""
        n = self.args.tasks
        out = {"command": " ".join(self.worker_command("bench-direct")[1])}
        out["add"] = self.repeated("bench-direct: add", lambda: self.queue_workload(
            "bench-direct", "examples.add", [(i, i) for i in range(n)],
            verify=lambda i, v: v == 2 * i))
        log(f"bench-direct: add {out['add']['throughput_per_s']:.0f}/s")
        # The same with a parent keeping a main process's books (see direct.c).
        out["books_command"] = " ".join(self.worker_command("bench-direct-books")[1])
        out["add_books"] = self.repeated("bench-direct --bookkeeper: add", lambda: self.queue_workload(
            "bench-direct-books", "examples.add", [(i, i) for i in range(n)],
            verify=lambda i, v: v == 2 * i))
        log(f"bench-direct --bookkeeper: add {out['add_books']['throughput_per_s']:.0f}/s")
        return out

    # -- phases
    def run_config(self, name, docs):
        a = self.args
        out = {"command": " ".join(self.worker_command(name)[1])}
        # phase 1: start-up, idle memory, latency
        self.r0.flushall()
        proc = self.start_worker(name, "latency")
        try:
            out["startup_s"] = self.wait_ping(proc)
            out["memory_idle"] = tree_memory(proc.pid)
            out["latency_ms"] = self.latency_loop(name)
            out["memory_after_latency"] = tree_memory(proc.pid)
        finally:
            out["shutdown_idle_s"] = self.stop_worker(proc)
        log(f"{name}: start-up {out['startup_s']:.3f}s, latency p50 "
            f"{out['latency_ms']['p50']:.2f} ms p99 {out['latency_ms']['p99']:.2f} ms")

        # phase 2: add with results
        n = a.tasks
        out["add"] = self.repeated(f"{name}: add", lambda: self.queue_workload(
            name, "examples.add", [(i, i) for i in range(n)], verify=lambda i, v: v == 2 * i))
        log(f"{name}: add {out['add']['throughput_per_s']:.0f}/s, "
            f"{out['add']['redis_commands_per_task']:.2f} redis cmds/task")

        # phase 3: add, ignore_result (head and tail tasks keep their result)
        out["add_ignore_result"] = self.repeated(f"{name}: add ignore_result", lambda: self.queue_workload(
            name, "examples.add", [(i, i) for i in range(n + 2)], ignore=set(range(1, n + 1)),
            verify=lambda i, v: v == 2 * i))
        out["add_ignore_result"]["tasks"] = n + 2
        log(f"{name}: add ignore_result {out['add_ignore_result']['throughput_per_s']:.0f}/s")

        # phase 4: documents
        digests = [hashlib.sha256(d.encode()).hexdigest() for d in docs]
        sizes = [len(d.encode()) for d in docs]
        out["process_document"] = self.repeated(f"{name}: process_document", lambda: self.queue_workload(
            name, "process_document",
            [(({"text": d},), {"filename": f"doc-{i}.txt", "document_type": "generic"})
             for i, d in enumerate(docs)],
            verify=lambda i, v: v.get("sha256") == digests[i] and v.get("bytes") == sizes[i]
            and v.get("chunks", {}).get("count", 0) >= 1 and len(v.get("top_terms", [])) == 10))
        log(f"{name}: process_document {out['process_document']['throughput_per_s']:.0f}/s")
        return out


# ---- report -------------------------------------------------------------------------------

ROWS = [
    # label, path into a config's results, higher_is_better, format
    ("start-up to ping (s)", ("startup_s",), False, "{:.3f}"),
    ("warm shutdown when idle (s)", ("shutdown_idle_s",), False, "{:.2f}"),
    ("idle RSS, all processes (MiB)", ("memory_idle", "rss_mib"), False, "{:.1f}"),
    ("idle PSS, all processes (MiB)", ("memory_idle", "pss_mib"), False, "{:.1f}"),
    ("latency p50 (ms)", ("latency_ms", "p50"), False, "{:.2f}"),
    ("latency p99 (ms)", ("latency_ms", "p99"), False, "{:.2f}"),
    # the producer's own part: no worker can shorten it
    ("  send_task() returns p50 (ms)", ("latency_ms", "send_task_p50"), None, "{:.2f}"),
    ("  send -> date_done p50 (ms)", ("latency_ms", "send_to_date_done_p50"), False, "{:.2f}"),
    # the worker's share of the tail: p99 above it is the client's (publish, get())
    ("  send -> date_done p99 (ms)", ("latency_ms", "send_to_date_done_p99"), False, "{:.2f}"),
    ("add, results stored (tasks/s)", ("add", "throughput_per_s"), True, "{:.0f}"),
    ("add, ignore_result (tasks/s)", ("add_ignore_result", "throughput_per_s"), True, "{:.0f}"),
    ("process_document 10 KB (docs/s)", ("process_document", "throughput_per_s"), True, "{:.0f}"),
    # not a property of the worker (no ratio): how noisy the VM was during the run
    ("host CPU stolen, add run (%)", ("add", "host_steal_pct"), None, "{:.1f}"),
    ("host CPU stolen, documents (%)", ("process_document", "host_steal_pct"), None, "{:.1f}"),
    ("worker CPU ms/task, add+result", ("add", "worker_cpu_ms_per_task"), False, "{:.3f}"),
    ("Redis CPU ms/task, add+result", ("add", "redis_cpu_ms_per_task"), False, "{:.3f}"),
    # voluntary context switches: each is a sleep, and a wake-up to pay for later
    ("worker blocking waits/task, add", ("add", "worker_waits_per_task"), False, "{:.2f}"),
    ("Redis blocking waits/task, add", ("add", "redis_waits_per_task"), False, "{:.2f}"),
    ("worker CPU ms/doc", ("process_document", "worker_cpu_ms_per_task"), False, "{:.3f}"),
    ("Redis CPU ms/doc", ("process_document", "redis_cpu_ms_per_task"), False, "{:.3f}"),
    ("RSS after add run (MiB)", ("add", "memory_after", "rss_mib"), False, "{:.1f}"),
    ("PSS after add run (MiB)", ("add", "memory_after", "pss_mib"), False, "{:.1f}"),
    ("RSS after documents (MiB)", ("process_document", "memory_after", "rss_mib"), False, "{:.1f}"),
    ("PSS after documents (MiB)", ("process_document", "memory_after", "pss_mib"), False, "{:.1f}"),
    ("Redis cmds/task, add+result", ("add", "redis_commands_per_task"), False, "{:.2f}"),
    ("Redis cmds/task, ignore_result", ("add_ignore_result", "redis_commands_per_task"), False,
     "{:.2f}"),
    ("Redis cmds/doc, process_document", ("process_document", "redis_commands_per_task"), False,
     "{:.2f}"),
]
CONFIGS = ["python-prefork", "python-threads", "celeriac", "celeriac-handoff"]
# celeriac-handoff: the same binary with --no-pool-fetch (the main process
# fetches and hands messages over; see the README's "Operating it").


def lat_samples(results, worker):
    return dig(results["workers"][worker], ("latency_ms", "samples_ms")) or []


def dig(d, path):
    for p in path:
        if not isinstance(d, dict) or d.get(p) is None:
            return None
        d = d[p]
    return d


def render(results):
    cols = [c for c in CONFIGS if c in results["workers"]]
    subjects = [c for c in ("celeriac", "celeriac-handoff") if c in cols]
    ratio_cols = [(sub, c) for sub in subjects for c in ("python-prefork", "python-threads")
                  if c in cols]
    header = ["metric"] + cols + [
        f"{'handoff' if sub != 'celeriac' else 'celeriac'}/{c.split('-')[1]}"
        for sub, c in ratio_cols]
    rows = []
    for label, path, higher, fmt in ROWS:
        vals = [dig(results["workers"][c], path) for c in cols]
        row = [label] + [fmt.format(v) if v is not None else "-" for v in vals]
        for sub, c in ratio_cols:
            cel = dig(results["workers"].get(sub, {}), path)
            base = dig(results["workers"][c], path)
            if cel is None or not base or higher is None:
                row.append("-")
            elif higher:
                row.append(f"{cel / base:.1f}×")
            else:
                row.append(f"{cel / base:.3f}")
        rows.append(row)
    widths = [max(len(r[i]) for r in rows + [header]) for i in range(len(header))]
    line = lambda r: "  ".join(  # noqa: E731
        (r[i].ljust(widths[i]) if i == 0 else r[i].rjust(widths[i])) for i in range(len(r)))
    out = [line(header), "  ".join("-" * w for w in widths)] + [line(r) for r in rows]
    pm = dig(results, ("params", "prefetch_multiplier"))
    if pm is not None and pm != 4:
        out.insert(0, f"NOTE: every worker ran with --prefetch-multiplier {pm}, not Celery's "
                      f"default 4 that the targets are stated at")
    floor = dig(results, ("latency_floor", "latency_ms"))
    if floor:
        out.append("")
        out.append(f"Latency floor (bench-responder: BRPOP -> SET + PUBLISH, no work): p50 "
                   f"{floor['p50']:.2f} ms, p99 {floor['p99']:.2f} ms; send_task() alone p50 "
                   f"{floor['send_task_p50']:.2f} ms")
        above = {c: dig(results["workers"][c], ("latency_ms", "p50")) for c in cols}
        above = {c: v - floor["p50"] for c, v in above.items() if v is not None}
        if above:
            line = "  p50 above the floor (the worker's share): " + ", ".join(
                f"{c} {v:.2f} ms" for c, v in above.items())
            if above.get("python-prefork", 0) > 0 and above.get("celeriac", 0) > 0:
                line += f"; celeriac/prefork {above['celeriac'] / above['python-prefork']:.3f}"
            out.append(line)
            below = [c for c, v in above.items() if v <= 0]
            if below:
                out.append(f"  {', '.join(below)} measured at or below the floor, which was "
                           f"measured once, before the workers: on this host that difference "
                           f"is noise, and the worker's share is not measurable in this run")
    client = {c: dig(results["workers"][c], ("latency_ms", "client")) for c in cols}
    client = {c: v for c, v in client.items() if v}
    if client:
        out.append("  the producer's get() (Celery's Redis result consumer): calls answered by "
                   "its first read of the result key; earlier tasks' results it read off its "
                   "subscription (of which in the slowest 1% of calls)")
        for c, v in client.items():
            out.append(f"    {c}: {v['answered_by_first_read']}/{len(lat_samples(results, c))}; "
                       f"{v['stale_results_read']} ({sum(v['slowest_1pct_stale'])})")
        out.append("  (a result found by that read leaves its PUBLISH unread; a later get() reads "
                   "such leftovers one per wait before its own: celery/celery#6963)")
    rb = results.get("redis_benchmark")
    cel = results["workers"].get("celeriac", {})
    cpt = dig(cel, ("add", "redis_commands_per_task"))
    thr = dig(cel, ("add", "throughput_per_s"))
    if rb:
        out.append("")
        for key, what in (("P1", "round trips, -P 1"), ("P16", "commands, -P 16")):
            b = rb[key]
            per = ", ".join(f"{k} {v:,.0f}" for k, v in b["per_command"].items())
            line = (f"Redis ({what}, 50 clients): {b['ops_per_s']:,.0f} ops/s "
                    f"(harmonic mean of {per})")
            if cpt and thr:
                ceiling = b["ops_per_s"] / cpt
                results.setdefault("redis_ceiling", {})[key] = {
                    "tasks_per_s": ceiling, "celeriac_pct": 100.0 * thr / ceiling}
                line += (f"\n  ÷ celeriac {cpt:.2f} cmds/task = {ceiling:,.0f} add+result tasks/s "
                         f"Redis-bound ceiling; celeriac reached {thr:,.0f}/s = "
                         f"{100.0 * thr / ceiling:.0f}% of it")
            out.append(line)
    # What the CPUs allow: the worker and Redis share this machine's CPUs, so
    # no worker can run add+result faster than CPUs / (its CPU + Redis's CPU per
    # task), and that only with every CPU busy all the time (kernel time spent
    # outside the two processes, such as loopback softirqs, is not counted).
    ncpu = os.cpu_count() or 1
    cpu_lines = []
    for c in cols:
        wc = dig(results["workers"][c], ("add", "worker_cpu_ms_per_task"))
        rc = dig(results["workers"][c], ("add", "redis_cpu_ms_per_task"))
        got = dig(results["workers"][c], ("add", "throughput_per_s"))
        if wc and rc and got:
            ceiling = ncpu * 1000.0 / (wc + rc)
            results.setdefault("cpu_ceiling", {})[c] = {
                "cpu_ms_per_task": wc + rc, "tasks_per_s": ceiling, "reached_pct": 100.0 * got / ceiling}
            cpu_lines.append(f"  {c}: {wc:.3f} + {rc:.3f} ms = {ceiling:,.0f} tasks/s at most; "
                             f"reached {got:,.0f}/s = {100.0 * got / ceiling:.0f}%")
    if cpu_lines:
        out.append("")
        out.append(f"CPU-bound ceiling of add+result on this machine ({ncpu} CPUs ÷ (worker + "
                   f"Redis CPU per task)):")
        out.extend(cpu_lines)
        base = dig(results["workers"].get("python-prefork", {}), ("add", "throughput_per_s"))
        if base:
            need = 30 * base
            out.append(f"  30x python-prefork ({need:,.0f} tasks/s) leaves at most "
                       f"{ncpu * 1000.0 / need:.3f} ms of worker + Redis CPU per task")
    direct = dig(results, ("direct_fetch", "add"))
    if direct and direct.get("throughput_per_s"):
        d = direct["throughput_per_s"]
        out.append("")
        out.append(f"add without hand-offs (bench-direct: 2 processes each fetching for "
                   f"themselves with celeriac's broker and backend code, the same window): "
                   f"{d:,.0f} tasks/s; worker + Redis CPU "
                   f"{direct['worker_cpu_ms_per_task']:.3f} + {direct['redis_cpu_ms_per_task']:.3f}"
                   f" ms/task; blocking waits {direct['worker_waits_per_task']:.2f} + "
                   f"{direct['redis_waits_per_task']:.2f} per task")
        runs = direct.get("runs") or []
        if len(runs) > 1:
            out.append("  per run: " + " / ".join(f"{r['throughput_per_s'] or 0:,.0f}"
                                                   for r in runs))
        parts = []
        thr = dig(results["workers"].get("celeriac", {}), ("add", "throughput_per_s"))
        base = dig(results["workers"].get("python-prefork", {}), ("add", "throughput_per_s"))
        if thr:
            parts.append(f"celeriac reached {100.0 * thr / d:.0f}% of it")
        if base:
            parts.append(f"it is {d / base:.1f}x python-prefork")
        if parts:
            out.append("  " + "; ".join(parts) + " (a reference for the add row, not a worker: "
                       "no events, remote control or time limits)")
        books = dig(results, ("direct_fetch", "add_books"))
        if books and books.get("throughput_per_s"):
            k = books["throughput_per_s"]
            line = (f"  with a bookkeeping parent (--bookkeeper): {k:,.0f} tasks/s; worker + Redis "
                    f"CPU {books['worker_cpu_ms_per_task']:.3f} + "
                    f"{books['redis_cpu_ms_per_task']:.3f} ms/task; blocking waits "
                    f"{books['worker_waits_per_task']:.2f} + {books['redis_waits_per_task']:.2f}")
            if base:
                line += f"; {k / base:.1f}x python-prefork"
            if thr:
                line += f"; celeriac reached {100.0 * thr / k:.0f}% of it"
            out.append(line)
            runs = books.get("runs") or []
            if len(runs) > 1:
                out.append("    per run: " + " / ".join(f"{r['throughput_per_s'] or 0:,.0f}"
                                                       for r in runs))
    rt = results.get("round_trip_cost")
    if rt:
        out.append("")
        out.append(f"Cost of a wake-up on this host: one client pinging Redis and waiting for each "
                   f"answer ({rt['round_trips_per_s']:,.0f} round trips/s) costs Redis "
                   f"{rt['redis_cpu_us_per_round_trip']:.1f} µs of CPU per round trip "
                   f"({rt['redis_waits_per_round_trip']:.2f} blocking waits each)")
        rw = {c: dig(results["workers"][c], ("add", "redis_waits_per_task")) for c in cols}
        ww = {c: dig(results["workers"][c], ("add", "worker_waits_per_task")) for c in cols}
        parts = [f"{c} {ww[c]:.2f} + {rw[c]:.2f}" for c in cols
                 if ww.get(c) is not None and rw.get(c) is not None]
        if parts:
            out.append("  blocking waits per add task, worker + Redis: " + ", ".join(parts))
    idle = results.get("machine", {}).get("cpuidle") or {}
    if idle:
        out.append(f"  CPU idle: driver {idle.get('driver', '?')}, guest_halt_poll_ns "
                   f"{idle.get('guest_halt_poll_ns', '-')} (0: an idle vCPU halts at once, and "
                   f"waking a process on it goes through the hypervisor)")
    samples = {c: dig(results["workers"][c], ("process_document", "sample_result")) for c in cols}
    samples = {c: {k: v for k, v in r.items() if k not in ("stages", "text_preview")}
               for c, r in samples.items() if isinstance(r, dict)}
    if len(samples) > 1:
        ref = next(iter(samples.values()))
        same = all(r == ref for r in samples.values())
        results["document_results_identical"] = same
        out.append("process_document result of document 0 (without timings): "
                   + ("identical in all workers" if same else "DIFFERS between workers: "
                      + ", ".join(f"{c}: {sorted(k for k in r if r.get(k) != ref.get(k))}"
                                  for c, r in samples.items())))
    for phase, what in (("add", "add"), ("add_ignore_result", "ignore_result"),
                        ("process_document", "documents")):
        spread = []
        for c in cols:
            runs = dig(results["workers"][c], (phase, "runs"))
            if runs and len(runs) > 1:
                spread.append(f"{c} " + " / ".join(f"{r['throughput_per_s'] or 0:,.0f}"
                                                   for r in runs))
        if spread:
            out.append(f"{what} per run (the median one is in the table): " + "; ".join(spread))
    for c in cols:
        st = dig(results["workers"][c], ("process_document", "stage_ms_median"))
        if st:
            out.append(f"process_document median stage ms, {c}: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in st.items()))
    for c in cols:
        top = dig(results["workers"][c], ("add", "redis_top_commands_per_task"))
        if top:
            out.append(f"top Redis commands/task, add+result, {c}: "
                       + ", ".join(f"{k} {v:.2f}" for k, v in top.items()))
    return "\n".join(out)


def loadavg():
    try:
        return [float(x) for x in open("/proc/loadavg").read().split()[:3]]
    except OSError:
        return None


def cpuidle():
    """The guest's CPU idle setup: on a VM with halt polling off
    (guest_halt_poll_ns 0) every wake of an idle vCPU goes through the
    hypervisor, and that latency bounds a worker whose processes hand work to
    each other many times per task (README, "What bounds it now")."""
    out = {}
    for name, path in (("driver", "/sys/devices/system/cpu/cpuidle/current_driver"),
                       ("guest_halt_poll_ns", "/sys/module/haltpoll/parameters/guest_halt_poll_ns")):
        try:
            out[name] = Path(path).read_text().strip()
        except OSError:
            pass
    return out


def find_celeriac():
    cands = [os.environ.get("CELERIAC_BIN"), REPO / "build" / "celeriac",
             "/tmp/build-bench/celeriac"]
    for c in cands:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return str(c)
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--tasks", type=int, default=10000, help="examples.add tasks per run")
    ap.add_argument("--documents", type=int, default=2000, help="process_document tasks")
    ap.add_argument("--document-bytes", type=int, default=10240)
    ap.add_argument("--latency-samples", type=int, default=500)
    ap.add_argument("--latency-warmup", type=int, default=10)
    ap.add_argument("--redis-requests", type=int, default=200000)
    ap.add_argument("--repeat", type=int, default=None,
                    help="runs of each throughput workload per worker; the median run is "
                         "reported (default 3; 1 with --smoke)")
    ap.add_argument("--json", default=str(HERE / "results.json"))
    ap.add_argument("--smoke", action="store_true",
                    help="tiny sizes (200 tasks, 50 documents, 20 latency samples)")
    ap.add_argument("--workers", default=",".join(CONFIGS),
                    help="comma-separated subset of " + ",".join(CONFIGS))
    ap.add_argument("--celeriac", default=find_celeriac(),
                    help="celeriac binary (default $CELERIAC_BIN, build/, /tmp/build-bench/)")
    ap.add_argument("--plugin", default=None, help="examples.so (default: next to --celeriac)")
    ap.add_argument("--responder", default=None,
                    help="bench-responder binary for the latency floor (default: next to "
                         "--celeriac; the floor is skipped when there is none)")
    ap.add_argument("--direct", default=None,
                    help="bench-direct binary for the add reference without hand-offs "
                         "(default: next to --celeriac; skipped when there is none)")
    ap.add_argument("--keep-logs", action="store_true")
    ap.add_argument("--prefetch-multiplier", type=int, default=4,
                    help="for every worker (default 4, Celery's default; the targets are "
                         "stated at it)")
    a = ap.parse_args()
    if a.smoke:
        a.tasks, a.documents, a.latency_samples = 200, 50, 20
        a.latency_warmup, a.redis_requests = 3, 20000
    if a.repeat is None:
        a.repeat = 1 if a.smoke else 3
    workers = [w.strip() for w in a.workers.split(",") if w.strip()]
    for w in workers:
        if w not in CONFIGS:
            ap.error(f"unknown worker {w!r}")
    if any(w.startswith("celeriac") for w in workers):
        if not a.celeriac:
            ap.error("celeriac binary not found: build it (cmake -S . -B build && cmake --build "
                     "build) or pass --celeriac / set CELERIAC_BIN")
        a.plugin = a.plugin or str(Path(a.celeriac).parent / "examples.so")
        if not Path(a.plugin).is_file():
            ap.error(f"plugin {a.plugin} not found")
    if a.responder is None and a.celeriac:
        cand = Path(a.celeriac).parent / "bench-responder"
        a.responder = str(cand) if cand.is_file() else None
    if a.direct is None and a.celeriac:
        cand = Path(a.celeriac).parent / "bench-direct"
        a.direct = str(cand) if cand.is_file() else None
    if a.tasks < 2 or a.documents < 2 or a.latency_samples < 1 or a.repeat < 1 \
            or a.prefetch_multiplier < 1:
        ap.error("need --tasks >= 2, --documents >= 2, --latency-samples >= 1, --repeat >= 1, "
                 "--prefetch-multiplier >= 1")

    import celery
    import kombu
    workdir = tempfile.mkdtemp(prefix="celeriac-bench-")
    results = {
        "when": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "params": {"tasks": a.tasks, "documents": a.documents, "document_bytes": a.document_bytes,
                   "latency_samples": a.latency_samples, "latency_warmup": a.latency_warmup,
                   "concurrency": 2, "prefetch_multiplier": a.prefetch_multiplier, "smoke": a.smoke,
                   "repeat": a.repeat},
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "celery": celery.__version__,
                    "kombu": kombu.__version__, "redis_py": redis_py.__version__,
                    "loadavg_start": loadavg(), "cpuidle": cpuidle()},
        "celeriac_binary": a.celeriac,
        "python_threads_wakeup_s": float(os.environ.get("BENCH_THREADS_WAKEUP", "0.005")),
        "workers": {},
        "errors": {},
    }
    ok = True
    bench = None
    try:
        bench = Bench(a, workdir)
        results["redis_server"] = bench.r0.info("server").get("redis_version")
        log(f"redis-server on port {bench.redis.port}; redis-benchmark -n {a.redis_requests}")
        results["redis_benchmark"] = {
            "P1": redis_benchmark(bench.redis.port, a.redis_requests, 1),
            "P16": redis_benchmark(bench.redis.port, a.redis_requests * 5, 16)}
        results["round_trip_cost"] = round_trip_cost(bench.redis.port, bench.redis.proc.pid,
                                                     max(2000, a.redis_requests // 10))
        bench.r0.flushall()
        bench.r0.config_resetstat()
        docs = make_documents(a.documents, a.document_bytes)
        if a.responder:
            try:
                results["latency_floor"] = bench.run_floor()
            except Exception as exc:
                ok = False
                results["errors"]["bench-responder"] = f"{type(exc).__name__}: {exc}"
                log(f"bench-responder FAILED: {type(exc).__name__}: {exc}")
        else:
            log("no bench-responder binary: latency floor skipped")
        for w in workers:
            log(f"=== {w}")
            try:
                results["workers"][w] = bench.run_config(w, docs)
            except Exception as exc:  # keep going with the other configurations
                ok = False
                results["errors"][w] = f"{type(exc).__name__}: {exc}"
                log(f"{w} FAILED: {type(exc).__name__}: {exc}")
                if not isinstance(exc, (Functional, TimeoutError)):
                    traceback.print_exc()
            # warnings and errors each worker logged
            lines = []
            for p in bench.worker_logs.get(w, []):
                for row in Path(p).read_text(errors="replace").splitlines():
                    if any(t in row for t in ("ERROR", "CRITICAL", "Traceback", "error:",
                                              "WARNING", "warning:")):
                        lines.append(f"{Path(p).name}: {row}")
            results.setdefault("worker_log_findings", {})[w] = lines[:50]
        if a.direct and "celeriac" in workers:
            log("=== bench-direct (add without hand-offs, same window)")
            try:
                results["direct_fetch"] = bench.run_direct()
            except Exception as exc:
                ok = False
                results["errors"]["bench-direct"] = f"{type(exc).__name__}: {exc}"
                log(f"bench-direct FAILED: {type(exc).__name__}: {exc}")
        elif "celeriac" in workers:
            log("no bench-direct binary: the add reference without hand-offs is skipped")
    except Exception as exc:
        ok = False
        results["errors"]["bench"] = f"{type(exc).__name__}: {exc}"
        traceback.print_exc()
    finally:
        for proc in list(LIVE):
            if bench is None or proc is not bench.redis.proc:
                stop_process(proc, 30)
        if bench is not None:
            bench.redis.stop()
    results["machine"]["loadavg_end"] = loadavg()
    table = render(results)
    print(table)
    for w, lines in results.get("worker_log_findings", {}).items():
        if lines:
            print(f"\n{w} logged {len(lines)} warning/error line(s), first:")
            for row in lines[:5]:
                print("  " + row[:200])
    for w, err in results["errors"].items():
        print(f"\nFAILED {w}: {err}")
    results["table"] = table
    if a.json:
        Path(a.json).write_text(json.dumps(results, indent=2, sort_keys=False) + "\n")
        print(f"\nJSON: {a.json}")
    if ok and not a.keep_logs:
        shutil.rmtree(workdir, ignore_errors=True)
    else:
        print(f"logs: {workdir}")
    return 0 if ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main())
    finally:
        for p in list(LIVE):
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except (ProcessLookupError, PermissionError):
                pass
