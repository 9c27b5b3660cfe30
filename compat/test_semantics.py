"""Issue 4's worker semantics, driven by the real Celery 5.2 client.

ETA/countdown, expiry, soft/hard time limits (headers, worker flags, remote control),
rate limits (flag and remote control), late acks and lost pool processes, warm/cold/
soft shutdown, and the pool (max tasks per child, autoscale, pool_grow/pool_shrink).

Layout: a module redis with the module worker `main` (-c 2, --task-track-started,
--visibility-timeout 3 --unacked-restore-interval 1) for ETA, expiry and header time
limits; a module worker `ctl` on its own redis (-c 2, --rate-limit examples.echo=5/s)
for the rate limit flag and the time_limit/pool_grow commands; every test that
shuts a worker down, kills pool processes under late acks or checks the `unacked`
hash gets its own redis-server and worker (the ack-emulation keys are global to a
database, so no other worker may share it).

COMPAT_WORKER=python runs the file against the real Celery worker
(compat/reference/semantics_ref.py, whose examples.* tasks behave like the plugin's).
Tests marked celeriac_only cover behaviour Celery 5.2 does not have; the reason is
in each test's docstring.
"""
import gc
import os
import re
import signal
import time
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from billiard.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded, WorkerLostError
from celery.exceptions import TaskRevokedError

import conftest
from conftest import WORKER_KIND, Worker, _attach, _check_binary, _keep_logs, make_celery_app
from helpers import RedisServer, pid_alive, raw_meta, wait_exit, wait_for
from monitoring_support import nodename

RUNNING = ("STARTED", "PROCESSING")
CELERIAC_ONLY_FLAGS = ("--max-redeliveries", "--soft-shutdown-timeout")


# ------------------------------------------------------------------------- workers


class SemWorker(Worker):
    """conftest.Worker whose Python variant runs reference.semantics_ref and maps the
    extra celeriac flags these tests use onto Celery settings."""

    def _python_command(self):
        extra, keep, rates = self.extra, [], []
        it = iter(extra)
        for flag in it:
            if flag == "--task-reject-on-worker-lost":
                self.env["REF_REJECT_ON_WORKER_LOST"] = "1"
            elif flag == "--rate-limit":
                rates.append(next(it))
            elif flag == "--unacked-restore-interval":
                next(it)  # kombu 5.2.4 has no such option: it scans at start-up, then ~100 s
            elif flag in CELERIAC_ONLY_FLAGS:
                raise RuntimeError(f"{flag} is celeriac-only; mark the test celeriac_only")
            else:
                keep.append(flag)
        self.env["REF_RATE_LIMITS"] = ",".join(rates)
        self.extra = keep
        try:
            args = Worker._python_command(self)
        finally:
            self.extra = extra
        args[args.index("reference.refworker")] = "reference.semantics_ref"
        return args


def _new_worker(redis, basedir, prefix, **kwargs):
    if WORKER_KIND != "python":
        _check_binary()
    w = SemWorker(redis, basedir, name=f"{prefix}{uuid.uuid4().hex[:6]}", **kwargs)
    w.node = nodename(w)
    return w


def _close_app(app):
    gc.collect()
    getattr(conftest, "close_celery_app", lambda a: a.close())(app)


def _sanitizer_problems(workers):
    problems = []
    for w in workers:
        errors = w.sanitizer_errors()
        if errors:
            problems.append(f"{w.name}: sanitizer reports: {errors}\n{w.describe()}")
    return problems


@pytest.fixture
def spawn(request, basedir, redis_factory):
    """spawn(extra=[...], concurrency=2, start=True) -> a worker on its own redis-server,
    with .node (full node name) and .app (a Celery client app for that redis)."""
    workers, apps = [], []

    def make(extra=(), concurrency=2, start=True, **kwargs):
        redis = redis_factory()
        w = _new_worker(redis, basedir, "s", concurrency=concurrency, extra=list(extra),
                        **kwargs)
        w.app = make_celery_app(redis)
        apps.append(w.app)
        workers.append(w)
        _attach(request, w)
        if start:
            w.start()
        return w

    yield make
    for w in workers:
        w.stop()
        _keep_logs(w)
    for app in apps:
        _close_app(app)
    problems = _sanitizer_problems(workers)
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class _ModuleWorker:
    """A module-scoped worker on its own redis, restarted if a test killed it."""

    def __init__(self, basedir, prefix, extra):
        self.redis = RedisServer(basedir).start()
        self.app = make_celery_app(self.redis)
        self.basedir, self.prefix, self.extra = basedir, prefix, extra
        self.worker = None
        self.all = []

    def ensure(self):
        if self.worker is None or not self.worker.alive:
            self.worker = _new_worker(self.redis, self.basedir, self.prefix, concurrency=2,
                                      extra=list(self.extra))
            self.worker.app = self.app
            self.all.append(self.worker)
            self.worker.start()
        return self.worker

    def close(self):
        for w in self.all:
            w.stop()
            _keep_logs(w)
        _close_app(self.app)
        self.redis.stop()


def _module_worker_fixture(request, holder):
    w = holder.ensure()
    _attach(request, w)
    yield w
    problems = _sanitizer_problems([w])
    assert w.alive, f"module worker {w.name} died during this test\n{w.describe()}"
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


@pytest.fixture(scope="module")
def _main_holder(basedir):
    holder = _ModuleWorker(basedir, "main", ["--task-track-started", "--visibility-timeout", "3",
                                              "--unacked-restore-interval", "1"])
    yield holder
    holder.close()


@pytest.fixture
def main(request, _main_holder):
    """Module worker: -c 2, --task-track-started, visibility timeout 3 s, restore scan 1 s."""
    yield from _module_worker_fixture(request, _main_holder)


@pytest.fixture(scope="module")
def _ctl_holder(basedir):
    holder = _ModuleWorker(basedir, "ctl", ["--rate-limit", "examples.echo=5/s"])
    yield holder
    holder.close()


@pytest.fixture
def ctl(request, _ctl_holder):
    """Module worker: -c 2, --rate-limit examples.echo=5/s; remote-control tests."""
    yield from _module_worker_fixture(request, _ctl_holder)


# ------------------------------------------------------------------------- helpers


def utcnow():
    return datetime.now(timezone.utc).replace(tzinfo=None)


def meta(w, task_id):
    return raw_meta(w.redis, task_id)


def status(w, task_id):
    m = meta(w, task_id)
    return m["status"] if m else "PENDING"


def done_at(w, task_id):
    """date_done of a ready task as a naive UTC datetime."""
    value = meta(w, task_id)["date_done"]
    parsed = datetime.fromisoformat(value.replace("Z", "+00:00"))
    if parsed.tzinfo is not None:
        parsed = parsed.astimezone(timezone.utc).replace(tzinfo=None)
    return parsed


def wait_running(w, ids, timeout=15):
    ids = list(ids)
    wait_for(lambda: all(status(w, i) in RUNNING for i in ids), timeout,
             f"tasks {ids} to run (STARTED/PROCESSING)")


def inspect(w, timeout=5.0):
    return w.app.control.inspect(destination=[w.node], timeout=timeout)


def ask(w, method, timeout=5.0, **kwargs):
    """One inspect call; the node's reply (fails if the node did not answer)."""
    reply = getattr(inspect(w, timeout), method)(**kwargs)
    assert reply and w.node in reply, f"no {method} reply from {w.node}: {reply!r}"
    return reply[w.node]


def control(w, method, *args, **kwargs):
    """One control call with reply=True; the node's reply."""
    replies = getattr(w.app.control, method)(*args, destination=[w.node], reply=True,
                                             timeout=5.0, **kwargs)
    merged = {k: v for r in replies or [] for k, v in r.items()}
    assert w.node in merged, f"no {method} reply from {w.node}: {replies!r}"
    return merged[w.node]


def pool_pids(w):
    return ask(w, "stats")["pool"]["processes"]


def active_pid(w, task_id, timeout=10):
    """worker_pid of a running task, from `inspect active`."""
    def cond():
        for req in ask(w, "active"):
            if req["id"] == task_id and req.get("worker_pid"):
                return req["worker_pid"]
        return None

    return wait_for(cond, timeout, f"task {task_id} in inspect active with a worker_pid")


def succeeded_lines(w, name, task_id):
    text = w.logfile.read_text(errors="replace") if w.logfile.exists() else ""
    return text.count(f"Task {name}[{task_id}] succeeded")


def send(w, name, *args, **options):
    return w.app.send_task(name, args=args, **options)


def broker_counts(w, queue="celery"):
    b = w.redis.client(0)
    return b.llen(queue), b.hlen("unacked")


# ------------------------------------------------------------------- 1. ETA/countdown


@pytest.mark.timeout(60)
def test_countdown_runs_after_eta_without_blocking(main):
    """countdown=2: runs no earlier than 2 s after sending; an immediate task sent after
    it completes first (the held message does not block the pool)."""
    t0 = utcnow()
    later = send(main, "examples.echo", "later", countdown=2)
    now = send(main, "examples.echo", "now")
    assert now.get(timeout=10) == {"args": ["now"], "kwargs": {}}
    assert status(main, later.id) == "PENDING", "the countdown task ran before its ETA"
    assert later.get(timeout=15) == {"args": ["later"], "kwargs": {}}
    assert (done_at(main, later.id) - t0).total_seconds() >= 2.0
    assert done_at(main, now.id) < done_at(main, later.id)


@pytest.mark.timeout(60)
def test_countdown_beyond_visibility_timeout_runs_once(main):
    """countdown=8 with --visibility-timeout 3 and a 1 s restore scan: the message is
    listed by `inspect scheduled`, runs at its ETA, and runs exactly once (the held
    message must not be restored to the queue and run a second time)."""
    marker = uuid.uuid4().hex
    t0 = utcnow()
    r = send(main, "examples.echo", marker, countdown=8)

    def listed():
        return any(e["request"]["id"] == r.id for e in ask(main, "scheduled"))

    wait_for(listed, 6, f"{r.id} in inspect scheduled")
    entry = next(e for e in ask(main, "scheduled") if e["request"]["id"] == r.id)
    assert entry["eta"], entry
    assert r.get(timeout=20) == {"args": [marker], "kwargs": {}}
    assert (done_at(main, r.id) - t0).total_seconds() >= 8.0
    # A restored duplicate would carry the same ETA and run right after the original:
    # watch for 2 s (two restore scans past the visibility timeout) that it never does.
    deadline = time.monotonic() + 2.0
    while time.monotonic() < deadline:
        assert succeeded_lines(main, "examples.echo", r.id) <= 1, \
            f"examples.echo[{r.id}] ran more than once"
        time.sleep(0.1)
    assert succeeded_lines(main, "examples.echo", r.id) == 1
    assert broker_counts(main) == (0, 0), "message left in the queue or in unacked"


# ---------------------------------------------------------------------- 2. expiry


@pytest.mark.timeout(30)
def test_expires_in_the_past_is_revoked(main):
    r = send(main, "examples.add", 1, 2,
             expires=datetime.now(timezone.utc) - timedelta(seconds=30))
    with pytest.raises(TaskRevokedError):
        r.get(timeout=10)
    m = meta(main, r.id)
    assert m["status"] == "REVOKED"
    assert m["result"]["exc_type"] == "TaskRevokedError"
    assert m["result"]["exc_message"] == ["expired"]
    assert succeeded_lines(main, "examples.add", r.id) == 0


@pytest.mark.timeout(40)
def test_expires_while_queued_behind_running_tasks(main):
    """expires=1 s, received while both pool processes are busy for 2.5 s: when a
    process frees up the task has expired and must be REVOKED, not run."""
    sleeps = [send(main, "examples.sleep", 2.5) for _ in range(2)]
    wait_running(main, [s.id for s in sleeps])
    r = send(main, "examples.add", 2, 3, expires=1)
    with pytest.raises(TaskRevokedError):
        r.get(timeout=15)
    assert meta(main, r.id)["result"]["exc_message"] == ["expired"]
    assert succeeded_lines(main, "examples.add", r.id) == 0
    assert [s.get(timeout=15) for s in sleeps] == [2.5, 2.5]


@pytest.mark.celeriac_only  # Celery 5.2 writes a task to a pool process only when it is idle
@pytest.mark.timeout(60)
@pytest.mark.handoff_pool  # pipelining into a busy process
@pytest.mark.parametrize("terminate", [False, True], ids=["revoke", "revoke-terminate"])
def test_revoke_of_a_task_queued_in_a_busy_process(spawn, terminate):
    """celeriac queues short tasks in a busy pool process behind its running one
    (pipelining). Such a task revoked before it starts is discarded like a revoked
    reserved task: REVOKED stored ("revoked"), never run, acked; the task queued
    behind it still runs, and revoke --terminate kills no process for it (it never
    started). The examples.sleep(4) blocker is queued behind because its moving
    average, learnt from sleep(0.0002) runs, is short."""
    w = spawn(concurrency=1, extra=["-l", "debug"])
    warm = ([send(w, "examples.sleep", 0.0002) for _ in range(10)] +
            [send(w, "examples.add", i, i) for i in range(10)])
    for r in warm:
        r.get(timeout=15)
    pids = pool_pids(w)
    blocker = send(w, "examples.sleep", 4)
    active_pid(w, blocker.id)
    started = time.monotonic()
    victim = send(w, "examples.add", 7, 7)
    after = send(w, "examples.add", 1, 2)
    for r in (victim, after):
        _wait_for_log(w, rf"Task examples\.add\[{r.id}\] queued in ForkPoolWorker-\d+",
                      10, f"{r.id} queued in the busy process")
    reply = control(w, "revoke", victim.id, terminate=terminate)
    assert victim.id in reply["ok"], reply
    if time.monotonic() - started > 3:
        pytest.fail("test too slow: the revoke may have come after the blocker finished")
    with pytest.raises(TaskRevokedError):
        victim.get(timeout=15)
    assert after.get(timeout=15) == 3
    assert blocker.get(timeout=15) == 4
    m = meta(w, victim.id)
    assert m["status"] == "REVOKED" and m["result"]["exc_type"] == "TaskRevokedError", m
    assert m["result"]["exc_message"] == ["revoked"], m
    assert succeeded_lines(w, "examples.add", victim.id) == 0
    log = w.logfile.read_text(errors="replace")
    assert f"Discarding revoked task: examples.add[{victim.id}]" in log
    assert pool_pids(w) == pids, "a process was replaced for a task that never started"
    wait_for(lambda: broker_counts(w) == (0, 0), 10, "queue and unacked empty")


@pytest.mark.celeriac_only  # Celery 5.2 writes a task to a pool process only when it is idle
@pytest.mark.timeout(60)
@pytest.mark.handoff_pool  # pipelining into a busy process
def test_expiry_of_a_task_queued_in_a_busy_process(spawn):
    """A short task queued in a busy pool process (pipelining: the examples.sleep(5)
    blocker looks short from its sleep(0.0002) runs) whose expiry passes while it waits
    there is not run when its turn comes: REVOKED "expired", as Celery checks expiry
    just before running a task; the task queued behind it still runs."""
    w = spawn(concurrency=1, extra=["-l", "debug"])
    warm = ([send(w, "examples.sleep", 0.0002) for _ in range(10)] +
            [send(w, "examples.add", i, i) for i in range(10)])
    for r in warm:
        r.get(timeout=15)
    blocker = send(w, "examples.sleep", 5)
    active_pid(w, blocker.id)
    victim = send(w, "examples.add", 7, 7, expires=2.5)
    after = send(w, "examples.add", 1, 2)
    for r in (victim, after):
        _wait_for_log(w, rf"Task examples\.add\[{r.id}\] queued in ForkPoolWorker-\d+",
                      10, f"{r.id} queued in the busy process")
    with pytest.raises(TaskRevokedError):
        victim.get(timeout=20)
    assert after.get(timeout=15) == 3
    assert blocker.get(timeout=15) == 5
    m = meta(w, victim.id)
    assert m["status"] == "REVOKED" and m["result"]["exc_message"] == ["expired"], m
    assert succeeded_lines(w, "examples.add", victim.id) == 0
    log = w.logfile.read_text(errors="replace")
    assert f"Discarding revoked task: examples.add[{victim.id}] (expired)" in log
    wait_for(lambda: broker_counts(w) == (0, 0), 10, "queue and unacked empty")


# ------------------------------------------------------------------ 3. time limits


@pytest.mark.timeout(30)
def test_soft_time_limit_header(main):
    t0 = utcnow()
    r = send(main, "examples.sleep", 5, soft_time_limit=1)
    with pytest.raises(SoftTimeLimitExceeded):
        r.get(timeout=15)
    m = meta(main, r.id)
    assert m["status"] == "FAILURE"
    assert (m["result"]["exc_type"], m["result"]["exc_module"]) == \
        ("SoftTimeLimitExceeded", "billiard.exceptions")
    assert (done_at(main, r.id) - t0).total_seconds() < 4.0


@pytest.mark.timeout(40)
def test_hard_time_limit_header_replaces_process(main):
    before = pool_pids(main)
    t0 = utcnow()
    r = send(main, "examples.sleep", 10, time_limit=2)
    pid = active_pid(main, r.id)
    assert pid in before
    with pytest.raises(TimeLimitExceeded):
        r.get(timeout=15)
    m = meta(main, r.id)
    assert (m["result"]["exc_type"], m["result"]["exc_module"]) == \
        ("TimeLimitExceeded", "billiard.exceptions")
    assert (done_at(main, r.id) - t0).total_seconds() < 6.0
    wait_for(lambda: not pid_alive(pid), 10, f"pool process {pid} killed")
    wait_for(lambda: (lambda p: len(p) == 2 and pid not in p)(pool_pids(main)), 10,
             "the killed process replaced in stats pool.processes")
    assert send(main, "examples.add", 2, 2).get(timeout=10) == 4
    assert [send(main, "examples.sleep", 0.2).get(timeout=10) for _ in range(2)] == [0.2, 0.2]


@pytest.mark.timeout(40)
def test_worker_time_limit_flags_apply_without_headers(spawn):
    """--soft-time-limit 1 --time-limit 2: examples.sleep stops at the soft limit,
    examples.progress (which ignores the soft limit) is killed at the hard one."""
    w = spawn(extra=["--soft-time-limit", "1", "--time-limit", "2"])
    t0 = utcnow()
    soft = send(w, "examples.sleep", 5)
    hard = send(w, "examples.progress", 20, 0.25)
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=15)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=15)
    assert (done_at(w, soft.id) - t0).total_seconds() < 4.0
    assert (done_at(w, hard.id) - t0).total_seconds() < 5.0
    assert send(w, "examples.add", 1, 1).get(timeout=10) == 2


@pytest.mark.timeout(30)
def test_time_limit_control_command_reply(ctl):
    """app.control.time_limit answers like Celery (on a task nothing else here uses)."""
    assert control(ctl, "time_limit", "examples.fail", soft=30, hard=60) == \
        {"ok": "time limits set successfully"}
    assert control(ctl, "time_limit", "no.such.task", soft=1, hard=2) == \
        {"error": "unknown task"}


@pytest.mark.celeriac_only
@pytest.mark.timeout(40)
def test_time_limit_control_command_takes_effect(ctl):
    """celeriac-only: Celery 5.2.6 answers ok and logs "New time limits ..." but the
    limits never apply, because create_request_cls() (celery/worker/request.py)
    captured task.time_limit/soft_time_limit when the worker started (verified: with
    COMPAT_WORKER=python both tasks below run to completion). Issue 4 asks for the
    limits to take effect for messages that carry none."""
    assert control(ctl, "time_limit", "examples.sleep", soft=1, hard=2) == \
        {"ok": "time limits set successfully"}
    assert control(ctl, "time_limit", "examples.progress", hard=1) == \
        {"ok": "time limits set successfully"}
    t0 = utcnow()
    soft = send(ctl, "examples.sleep", 5)
    hard = send(ctl, "examples.progress", 20, 0.25)
    with pytest.raises(SoftTimeLimitExceeded):
        soft.get(timeout=15)
    with pytest.raises(TimeLimitExceeded):
        hard.get(timeout=15)
    assert (done_at(ctl, soft.id) - t0).total_seconds() < 4.0
    assert (done_at(ctl, hard.id) - t0).total_seconds() < 4.0


# ------------------------------------------------------------------ 4. rate limits


@pytest.mark.timeout(40)
def test_rate_limit_flag_does_not_block_other_tasks(ctl):
    """--rate-limit examples.echo=5/s: 10 echoes take >= 1.6 s; 10 adds sent right
    after them are not held behind them."""
    t0 = utcnow()
    echoes = [send(ctl, "examples.echo", i) for i in range(10)]
    adds = [send(ctl, "examples.add", i, i) for i in range(10)]
    assert [a.get(timeout=15) for a in adds] == [2 * i for i in range(10)]
    assert [e.get(timeout=15)["args"] for e in echoes] == [[i] for i in range(10)]
    last_echo = max(done_at(ctl, e.id) for e in echoes)
    last_add = max(done_at(ctl, a.id) for a in adds)
    timing = (f"last echo {(last_echo - t0).total_seconds():.2f} s, "
              f"last add {(last_add - t0).total_seconds():.2f} s after sending")
    print(timing)
    assert (last_echo - t0).total_seconds() >= 1.6, timing
    assert (last_echo - last_add).total_seconds() >= 0.6, \
        f"adds were held behind the rate-limited echoes: {timing}"


@pytest.mark.timeout(40)
def test_rate_limit_control_command(spawn):
    w = spawn()
    assert control(w, "rate_limit", "examples.add", "2/s") == \
        {"ok": "new rate limit set successfully"}
    t0 = utcnow()
    adds = [send(w, "examples.add", i, 1) for i in range(6)]
    assert [a.get(timeout=20) for a in adds] == [i + 1 for i in range(6)]
    last = max(done_at(w, a.id) for a in adds)
    assert (last - t0).total_seconds() >= 2.0, "6 tasks at 2/s finished in under 2 s"
    assert send(w, "examples.echo", "free").get(timeout=5) == {"args": ["free"], "kwargs": {}}


# ------------------------------------------------------------------------ 5. acks


@pytest.mark.timeout(60)
def test_acks_late_lost_child_is_worker_lost_error(spawn):
    """--task-acks-late without reject_on_worker_lost: a task whose pool process dies
    (SIGSEGV, or SIGKILL found via `inspect active`) is FAILURE WorkerLostError, and
    the message is gone (not requeued)."""
    w = spawn(extra=["--task-acks-late"])
    w.expect_crash_reports = True
    crash = send(w, "examples.crash")
    with pytest.raises(WorkerLostError):
        crash.get(timeout=20)
    r = send(w, "examples.sleep", 10)
    pid = active_pid(w, r.id)
    os.kill(pid, signal.SIGKILL)
    with pytest.raises(WorkerLostError):
        r.get(timeout=20)
    for task_id in (crash.id, r.id):
        m = meta(w, task_id)
        assert (m["status"], m["result"]["exc_type"]) == ("FAILURE", "WorkerLostError")
    wait_for(lambda: broker_counts(w) == (0, 0), 10, "no message requeued or left unacked")
    assert send(w, "examples.add", 3, 4).get(timeout=10) == 7
    assert w.alive


@pytest.mark.timeout(60)
def test_reject_on_worker_lost_requeues_and_completes(spawn):
    """--task-acks-late --task-reject-on-worker-lost: a pool process SIGKILLed mid-task
    puts the message back; the task runs again and succeeds."""
    w = spawn(extra=["--task-acks-late", "--task-reject-on-worker-lost"])
    r = send(w, "examples.sleep", 2)
    pid = active_pid(w, r.id)
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not pid_alive(pid), 10, f"pool process {pid} killed")
    assert r.get(timeout=30) == 2
    assert meta(w, r.id)["status"] == "SUCCESS"
    # As in Celery, a pool process may store the result before the line is logged.
    wait_for(lambda: succeeded_lines(w, "examples.sleep", r.id) >= 1, 10, "the succeeded line")
    assert succeeded_lines(w, "examples.sleep", r.id) == 1
    wait_for(lambda: broker_counts(w) == (0, 0), 10, "queue and unacked empty")
    assert w.alive


@pytest.mark.celeriac_only
@pytest.mark.timeout(60)
def test_poison_message_stops_after_max_redeliveries(spawn):
    """celeriac-only: Celery 5.2 has no redelivery cap (with reject_on_worker_lost a
    crashing task is requeued forever). --max-redeliveries 2 ends it as FAILURE
    RedeliveryLimitExceeded and the worker keeps working."""
    w = spawn(extra=["--task-acks-late", "--task-reject-on-worker-lost",
                     "--max-redeliveries", "2"])
    w.expect_crash_reports = True
    r = send(w, "examples.crash")
    with pytest.raises(Exception) as info:
        r.get(timeout=40)
    assert type(info.value).__name__ == "RedeliveryLimitExceeded", repr(info.value)
    assert meta(w, r.id)["status"] == "FAILURE"
    wait_for(lambda: broker_counts(w) == (0, 0), 10, "the poison message gone for good")
    assert w.alive
    assert send(w, "examples.add", 5, 5).get(timeout=10) == 10


# ---------------------------------------------------------------------- 6. shutdown


def _wait_for_log(w, pattern, timeout, what):
    rx = re.compile(pattern)
    wait_for(lambda: rx.search(w._new_text()), timeout, what)


@pytest.mark.timeout(60)
def test_warm_shutdown_finishes_running_and_keeps_queued(spawn):
    """SIGTERM while examples.sleep(2) runs (-c 1, 3 more tasks queued): the running
    task succeeds, the other 3 stay in the queue (none left in unacked), exit 0."""
    w = spawn(concurrency=1, extra=["--task-track-started"])
    running = send(w, "examples.sleep", 2)
    queued = [send(w, "examples.add", i, 0) for i in range(3)]
    wait_running(w, [running.id])
    w.proc.send_signal(signal.SIGTERM)
    assert wait_exit(w.proc, 20) == 0, "warm shutdown did not exit 0 within 20 s"
    assert status(w, running.id) == "SUCCESS"
    assert [status(w, q.id) for q in queued] == ["PENDING"] * 3
    assert broker_counts(w) == (3, 0), "(LLEN celery, HLEN unacked) after warm shutdown"
    w.start()
    assert [q.get(timeout=15) for q in queued] == [0, 1, 2]


@pytest.mark.timeout(60)
@pytest.mark.parametrize("signals", [
    pytest.param(("SIGTERM", "SIGTERM"), marks=pytest.mark.celeriac_only, id="TERM-TERM"),
    pytest.param(("SIGQUIT",), id="QUIT"),
])
def test_cold_shutdown_returns_acks_late_task(spawn, signals):
    """Cold shutdown (SIGQUIT, or -- issue 4 -- a SIGTERM during the warm shutdown)
    stops a running acks_late task and returns it to the queue (nothing left in
    unacked); the next worker completes it.

    SIGQUIT is Celery 5.2's own behaviour (verified with COMPAT_WORKER=python). The
    second SIGTERM is celeriac-only: Celery 5.2 installs the same warm-shutdown
    handler for every SIGTERM and the outcome depends on where the main process is
    when it lands (observed with COMPAT_WORKER=python: usually the task is interrupted
    and requeued, exit 0 after ~2 s; sometimes it simply finishes, SUCCESS)."""
    w = spawn(concurrency=1, extra=["--task-acks-late", "--task-track-started"])
    r = send(w, "examples.sleep", 4)
    wait_running(w, [r.id])
    for i, name in enumerate(signals):
        if i:
            _wait_for_log(w, r"(?i)warm shutdown", 5, "the warm shutdown to begin")
        w.proc.send_signal(getattr(signal, name))
    assert wait_exit(w.proc, 15) is not None, "cold shutdown did not exit within 15 s"
    assert status(w, r.id) != "SUCCESS", "the task was not interrupted"
    assert broker_counts(w) == (1, 0), \
        f"(LLEN celery, HLEN unacked) after cold shutdown; task meta: {meta(w, r.id)}"
    w.start()
    assert r.get(timeout=20) == 4


@pytest.mark.celeriac_only
@pytest.mark.timeout(40)
def test_soft_shutdown_timeout_lets_running_task_finish(spawn):
    """celeriac-only (Celery 5.2 has no --soft-shutdown-timeout): SIGQUIT during
    examples.sleep(1) with --soft-shutdown-timeout 3 still completes the task."""
    w = spawn(concurrency=1, extra=["--soft-shutdown-timeout", "3", "--task-track-started"])
    r = send(w, "examples.sleep", 1)
    wait_running(w, [r.id])
    w.proc.send_signal(signal.SIGQUIT)
    assert wait_exit(w.proc, 15) is not None, "worker did not exit within 15 s"
    assert status(w, r.id) == "SUCCESS"
    assert r.get(timeout=5) == 1


# -------------------------------------------------------------------------- 7. pool


@pytest.mark.timeout(60)
def test_max_tasks_per_child_replaces_processes(spawn):
    w = spawn(extra=["--max-tasks-per-child", "2"])
    stats = ask(w, "stats")
    assert stats["pool"]["max-tasks-per-child"] == 2
    before = set(stats["pool"]["processes"])
    assert len(before) == 2
    rs = [send(w, "examples.sleep", 0.5) for _ in range(6)]
    assert [r.get(timeout=20) for r in rs] == [0.5] * 6

    def replaced():
        pids = set(pool_pids(w))
        return len(pids) == 2 and not (pids & before)

    wait_for(replaced, 10, f"both original pool processes {sorted(before)} replaced")


@pytest.mark.timeout(60)
def test_autoscale_grows_under_load(spawn):
    w = spawn(extra=["--autoscale", "3,1"])
    wait_for(lambda: len(pool_pids(w)) == 1, 10, "an idle autoscaled pool of 1 process")
    rs = [send(w, "examples.sleep", 1) for _ in range(6)]
    wait_for(lambda: len(pool_pids(w)) >= 2, 15, "the pool to grow to >= 2 processes")
    assert len(pool_pids(w)) <= 3
    assert [r.get(timeout=30) for r in rs] == [1] * 6


@pytest.mark.timeout(40)
def test_pool_grow_and_shrink_commands(ctl):
    """pool_grow/pool_shrink answer ok and change the pool. Celery 5.2 leaves stats'
    max-concurrency at its start value (BasePool.limit), so that part is celeriac's own."""
    start = ask(ctl, "stats")["pool"]
    n = len(start["processes"])
    assert control(ctl, "pool_grow", 1) == {"ok": "pool will grow"}
    grown = wait_for(lambda: (lambda p: p if len(p["processes"]) == n + 1 else None)(
        ask(ctl, "stats")["pool"]), 10, "one more pool process")
    assert control(ctl, "pool_shrink", 1) == {"ok": "pool will shrink"}
    shrunk = wait_for(lambda: (lambda p: p if len(p["processes"]) == n else None)(
        ask(ctl, "stats")["pool"]), 10, "back to the original number of processes")
    if WORKER_KIND != "python":
        assert (start["max-concurrency"], grown["max-concurrency"],
                shrunk["max-concurrency"]) == (n, n + 1, n)
