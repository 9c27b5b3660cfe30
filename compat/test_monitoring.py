"""Monitoring and remote control with the real tools: `celery inspect|control` CLI,
celery.app.control, celery.events.EventReceiver + State (Flower's engine).

One private redis-server for the module with one event receiver capturing from the
start; a module worker `mon` (-E, -c 2, queue `mon`) for the non-destructive tests;
tests that stop, restart or reconfigure a worker start their own on the same redis
with their own queues. Every inspect/control request is addressed with -d/destination
so workers of other tests never answer.

COMPAT_WORKER=python runs the same file against the real Celery worker
(compat/reference/refworker.py), which proves the assertions are Celery's behaviour.
"""
import gc
import os
import platform
import signal
import subprocess
import time
import uuid

import pytest
from celery.utils.time import utcoffset

import conftest
from conftest import (CELERIAC_BIN, WORKER_KIND, Worker, _attach, _check_binary,
                      _keep_logs, make_celery_app)
from helpers import RedisServer, pid_alive, raw_meta, wait_exit, wait_for
from monitoring_support import (HOSTNAME, EventMonitor, celery_cli, cli_json, nodename,
                                raw_timestamp)

CONCURRENCY = 2
TASK_TIMEOUT = 15.0


# ------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def mon_redis(basedir):
    server = RedisServer(basedir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def mon_app(mon_redis):
    app = make_celery_app(mon_redis)
    yield app
    gc.collect()  # AsyncResult.__del__ talks to redis: run it while redis is still up
    getattr(conftest, "close_celery_app", lambda a: a.close())(app)


@pytest.fixture(scope="module")
def monitor(mon_app):
    """Started before any worker, so worker-online events are never missed."""
    m = EventMonitor(mon_app).start()
    yield m
    m.stop()


class _Holder:
    worker = None


@pytest.fixture(scope="module")
def _mon_holder(mon_redis, basedir, monitor):
    holder = _Holder()
    yield holder
    if holder.worker is not None:
        holder.worker.stop()
        _keep_logs(holder.worker)


@pytest.fixture
def mw(request, _mon_holder, monitor, mon_redis, basedir):
    """The module worker `mon`: -E, concurrency 2, queue `mon`, default heartbeats."""
    _check_binary()
    w = _mon_holder.worker
    if w is None or not w.alive:
        w = _mon_holder.worker = Worker(mon_redis, basedir, queues=["mon"],
                                        concurrency=CONCURRENCY, extra=["-E"],
                                        name=f"mon{uuid.uuid4().hex[:6]}")
        w.node = nodename(w)
        w.start()
        monitor.wait(10, "worker-online of the module worker", type="worker-online",
                     hostname=w.node)
    _attach(request, w)
    yield w
    assert w.alive, f"the module worker died during this test\n{w.describe()}"


@pytest.fixture
def spawn(request, basedir, mon_redis, monitor):
    """Starts extra workers on the module redis: spawn(queues=[...], extra=[...], ...).

    Stopped after the test; each gets .node (full node name).
    """
    workers = []

    def make(start=True, kind=WORKER_KIND, **kwargs):
        if kind != "python":
            _check_binary()
        kwargs.setdefault("name", f"x{uuid.uuid4().hex[:6]}")
        kwargs.setdefault("queues", [f"q-{kwargs['name']}"])
        w = Worker(mon_redis, basedir, kind=kind, **kwargs)
        w.node = nodename(w)
        workers.append(w)
        _attach(request, w)
        if start:
            w.start()
        return w

    yield make
    for w in workers:
        w.stop()
        _keep_logs(w)


def send(app, name, *args, queue="mon", **opts):
    return app.send_task(name, args=args, queue=queue, **opts)


def wait_state(result, states, timeout=TASK_TIMEOUT):
    states = (states,) if isinstance(states, str) else states
    return wait_for(lambda: result.state in states and result.state, timeout,
                    f"task {result.id} to reach {states} (now {result.state})")


def wait_started(monitor, task_id, timeout=TASK_TIMEOUT):
    return monitor.wait(timeout, f"task-started of {task_id}", type="task-started",
                        uuid=task_id)[0]


def control(app, method, node, timeout=5.0, **arguments):
    """app.control.broadcast(..., reply=True) to one node; returns its reply."""
    replies = app.control.broadcast(method, arguments=arguments, destination=[node],
                                    reply=True, timeout=timeout)
    assert len(replies) == 1 and node in replies[0], f"{method}: replies {replies!r}"
    return replies[0][node]


def assert_ok_or_error(reply, what):
    assert isinstance(reply, dict) and (("ok" in reply) != ("error" in reply)), \
        f"{what}: reply must be {{'ok': ...}} or {{'error': ...}}, got {reply!r}"


# ---------------------------------------------------------------- inspect: read-only


def test_inspect_ping_cli(mw, mon_redis, mon_app):
    replies = cli_json(mon_redis, "inspect", "ping", dest=mw.node)
    assert replies == {mw.node: {"ok": "pong"}}
    # the API form (control.ping) and `celery status`
    assert mon_app.control.ping(destination=[mw.node], timeout=5) == \
        [{mw.node: {"ok": "pong"}}]
    st = celery_cli(mon_redis, "status", "-d", mw.node, "--timeout", "5")
    assert st.returncode == 0 and mw.node in st.stdout and "1 node online" in st.stdout, \
        st.stdout + st.stderr


def test_inspect_ping_unknown_destination_gets_no_reply(mw, mon_redis):
    proc = cli_json(mon_redis, "inspect", "ping", dest=f"nobody@{HOSTNAME}", timeout=1.0,
                    expect_rc=69)
    assert "No nodes replied within time constraint" in proc.stdout + proc.stderr


def test_inspect_pattern_matcher(mw, mon_app):
    """destination=None + pattern/matcher: glob (fnmatch) and pcre (anchored re.match)."""
    name = mw.name
    for pattern, matcher in ((f"{name}@*", "glob"), (f"{name[:4]}.*", "pcre")):
        got = mon_app.control.inspect(timeout=1.5, pattern=pattern, matcher=matcher).ping()
        assert got and got.get(mw.node) == {"ok": "pong"}, (pattern, matcher, got)
    for pattern, matcher in ((f"zz{name}@*", "glob"), (f".+zz{name}", "pcre"),
                             (name[2:], "pcre")):
        got = mon_app.control.inspect(timeout=1, pattern=pattern, matcher=matcher).ping()
        assert not got or mw.node not in got, (pattern, matcher, got)


def test_inspect_stats(mw, mon_redis, mon_app):
    rs = [send(mon_app, "examples.add", i, 1) for i in range(3)]
    assert [r.get(timeout=TASK_TIMEOUT) for r in rs] == [1, 2, 3]
    stats = cli_json(mon_redis, "inspect", "stats", dest=mw.node)[mw.node]
    assert stats["pid"] == mw.pid
    assert stats["total"].get("examples.add", 0) >= 3, stats["total"]
    assert isinstance(stats["clock"], str) and int(stats["clock"]) > 0
    assert isinstance(stats["uptime"], (int, float)) and 0 <= stats["uptime"] < 600
    pool = stats["pool"]
    assert pool["max-concurrency"] == CONCURRENCY
    assert len(pool["processes"]) == CONCURRENCY
    assert all(isinstance(p, int) and p != mw.pid and pid_alive(p) for p in pool["processes"])
    broker = stats["broker"]
    assert broker["hostname"] == "127.0.0.1" and broker["port"] == mon_redis.port
    assert broker["transport"] == "redis"
    assert stats["prefetch_count"] == CONCURRENCY * 4
    rusage = stats["rusage"]
    for key in ("utime", "stime", "maxrss"):
        assert isinstance(rusage[key], (int, float)), (key, rusage)
    assert rusage["maxrss"] > 0


def test_inspect_registered(mw, mon_redis):
    names = cli_json(mon_redis, "inspect", "registered", dest=mw.node)[mw.node]
    assert isinstance(names, list) and names == sorted(names)
    for task in ("examples.add", "examples.echo", "examples.sleep", "examples.fail",
                 "examples.progress"):
        assert task in names
    assert not any(n.startswith("celery.") for n in names)


def test_inspect_active_queues(mw, mon_redis):
    queues = cli_json(mon_redis, "inspect", "active_queues", dest=mw.node)[mw.node]
    assert [q["name"] for q in queues] == ["mon"]
    q = queues[0]
    assert q["routing_key"] == "mon"
    assert q["exchange"]["name"] == "mon" and q["exchange"]["type"] == "direct"
    for key in ("durable", "exclusive", "auto_delete", "no_ack", "queue_arguments",
                "binding_arguments", "consumer_arguments", "max_priority"):
        assert key in q, key


def test_inspect_conf_report_clock(mw, mon_redis):
    conf = cli_json(mon_redis, "inspect", "conf", dest=mw.node)[mw.node]
    assert isinstance(conf, dict) and conf
    report = cli_json(mon_redis, "inspect", "report", dest=mw.node)[mw.node]
    assert isinstance(report, dict) and isinstance(report.get("ok"), str) and report["ok"]
    c1 = cli_json(mon_redis, "inspect", "clock", dest=mw.node)[mw.node]
    c2 = cli_json(mon_redis, "inspect", "clock", dest=mw.node)[mw.node]
    assert isinstance(c1["clock"], int) and c2["clock"] > c1["clock"] > 0


def test_unknown_command_gets_keyerror_reply(mw, mon_app):
    replies = mon_app.control.broadcast("no_such_command", reply=True, timeout=5,
                                        destination=[mw.node])
    assert replies == [{mw.node: {"error": "KeyError('no_such_command')"}}]


# ---------------------------------------------------------------------- task events


def test_task_events_success(mw, monitor, mon_app):
    t0 = time.time()
    r = send(mon_app, "examples.add", 2, 3)
    assert r.get(timeout=TASK_TIMEOUT) == 5
    monitor.wait(10, "task-succeeded", type="task-succeeded", uuid=r.id)
    assert monitor.task_types(r.id) == ["task-received", "task-started", "task-succeeded"]
    received = monitor.find(uuid=r.id, type="task-received")[0]
    assert received["name"] == "examples.add"
    assert received["args"] == "(2, 3)" and received["kwargs"] == "{}"
    assert received["retries"] == 0 and received["eta"] is None
    assert received["root_id"] == r.id and received["parent_id"] is None
    assert "expires" in received
    for ev in monitor.find(uuid=r.id):
        assert ev["hostname"] == mw.node and ev["pid"] == mw.pid
        assert isinstance(ev["clock"], int)
        assert ev["utcoffset"] == utcoffset()
        assert t0 - 5 < ev["timestamp"] < time.time() + 5, ev
    ok = monitor.find(uuid=r.id, type="task-succeeded")[0]
    assert ok["result"] == "5"
    assert isinstance(ok["runtime"], float) and 0 < ok["runtime"] < 5
    task = monitor.task(r.id)
    assert task.state == "SUCCESS" and task.name == "examples.add"
    assert task.args == "(2, 3)" and task.result == "5" and task.runtime > 0
    assert task.worker.hostname == mw.node


def test_task_events_failure(mw, monitor, mon_app):
    r = send(mon_app, "examples.fail", "boom-42")
    with pytest.raises(ValueError):
        r.get(timeout=TASK_TIMEOUT)
    ev = monitor.wait(10, "task-failed", type="task-failed", uuid=r.id)[0]
    assert monitor.task_types(r.id) == ["task-received", "task-started", "task-failed"]
    assert ev["exception"] == "ValueError('boom-42')"
    assert isinstance(ev["traceback"], str)
    task = monitor.task(r.id)
    assert task.state == "FAILURE" and task.exception == "ValueError('boom-42')"
    assert task.args == "('boom-42',)"


def test_task_received_event_has_eta(mw, monitor, mon_app):
    r = send(mon_app, "examples.echo", "later", countdown=2)
    ev = monitor.wait(10, "task-received", type="task-received", uuid=r.id)[0]
    assert isinstance(ev["eta"], str) and ev["eta"][:4].isdigit(), ev
    assert r.get(timeout=TASK_TIMEOUT) == {"args": ["later"], "kwargs": {}}


# ------------------------------------------------------------------- worker events


def test_worker_online_and_heartbeats(mw, monitor):
    online = monitor.find(type="worker-online", hostname=mw.node)
    assert len(online) == 1
    since = monitor.mark()
    beats = monitor.wait(12, "3 heartbeats", since=since, count=3, type="worker-heartbeat",
                         hostname=mw.node)[:3]
    for ev in online + beats:
        assert ev["freq"] == 2.0
        assert ev["pid"] == mw.pid
        assert isinstance(ev["active"], int) and isinstance(ev["processed"], int)
        assert isinstance(ev["loadavg"], list) and len(ev["loadavg"]) == 3
        assert all(isinstance(x, (int, float)) for x in ev["loadavg"])
        assert isinstance(ev["sw_ident"], str) and ev["sw_ident"]
        assert isinstance(ev["sw_ver"], str) and ev["sw_ver"]
        assert ev["sw_sys"] == platform.system()
        assert ev["utcoffset"] == utcoffset()
        assert abs(ev["timestamp"] - ev["local_received"]) < 5, ev
    clocks = [ev["clock"] for ev in online + beats]
    assert clocks == sorted(clocks) and len(set(clocks)) == len(clocks), clocks
    gaps = [b["local_received"] - a["local_received"] for a, b in zip(beats, beats[1:])]
    assert all(1.0 < g < 3.5 for g in gaps), gaps
    assert monitor.alive(mw.node)
    w = monitor.worker(mw.node)
    assert w.freq == 2.0 and w.sw_sys == platform.system() and w.pid == mw.pid


def test_heartbeat_command(mw, monitor, mon_redis):
    since = monitor.mark()
    replies = cli_json(mon_redis, "control", "heartbeat", dest=mw.node)
    assert replies == {mw.node: None}
    ev = monitor.wait(5, "the heartbeat the command asked for", since=since,
                      type="worker-heartbeat", hostname=mw.node, freq=5)[0]
    assert ev["sw_sys"] == platform.system()


def test_heartbeats_while_pool_is_full(mw, monitor, mon_app):
    """Flower marks a worker offline after 2 x freq without a heartbeat: heartbeats
    (and pidbox replies) must keep coming while every pool process is busy."""
    since = monitor.mark()
    rs = [send(mon_app, "examples.sleep", 4.5) for _ in range(CONCURRENCY)]
    for r in rs:
        wait_started(monitor, r.id)
    assert mon_app.control.ping(destination=[mw.node], timeout=5) == \
        [{mw.node: {"ok": "pong"}}]
    busy = monitor.wait(6, "a heartbeat while the pool is full", since=monitor.mark(),
                        type="worker-heartbeat", hostname=mw.node, freq=2.0)[0]
    assert busy["active"] == CONCURRENCY, busy
    for r in rs:
        r.get(timeout=TASK_TIMEOUT)
    idle = monitor.wait(5, "a heartbeat after the tasks", since=monitor.mark(),
                        type="worker-heartbeat", hostname=mw.node, freq=2.0)[0]
    # Celery counts a task in `processed` when it starts (task_accepted)
    assert idle["active"] == 0 and idle["processed"] >= max(busy["processed"], CONCURRENCY)
    beats = [e["local_received"] for e in monitor.find(since, type="worker-heartbeat",
                                                         hostname=mw.node, freq=2.0)]
    gaps = [b - a for a, b in zip(beats, beats[1:])]
    assert gaps and max(gaps) < 3.5, gaps


def test_unknown_task_sends_task_failed(mw, monitor, mon_app):
    name = f"no.such.task_{uuid.uuid4().hex[:6]}"
    r = send(mon_app, name, 1)
    wait_state(r, "FAILURE")
    ev = monitor.wait(10, "task-failed", type="task-failed", uuid=r.id)[0]
    assert ev["exception"] == f"NotRegistered({name!r})"
    assert monitor.task(r.id).state == "FAILURE"


def test_expired_task_sends_task_revoked(mw, monitor, mon_app):
    r = send(mon_app, "examples.add", 1, 1, expires=-5)
    wait_state(r, "REVOKED")
    ev = monitor.wait(10, "task-revoked", type="task-revoked", uuid=r.id)[0]
    assert ev["expired"] is True and ev["terminated"] is False and ev["signum"] is None
    monitor.heartbeat_sync(mw.node)
    assert not monitor.find(uuid=r.id, type="task-started")


# --------------------------------------------------------- active / reserved / revoke


def test_active_query_task_and_terminate(mw, monitor, mon_redis, mon_app):
    r = send(mon_app, "examples.sleep", 30)
    wait_started(monitor, r.id)
    active = cli_json(mon_redis, "inspect", "active", dest=mw.node)[mw.node]
    mine = [a for a in active if a["id"] == r.id]
    assert len(mine) == 1, active
    info = mine[0]
    assert info["name"] == "examples.sleep" and info["args"] == [30] and info["kwargs"] == {}
    assert info["hostname"] == mw.node and info["acknowledged"] is True
    assert info["delivery_info"]["routing_key"] == "mon"
    assert isinstance(info["time_start"], float)
    child = info["worker_pid"]
    assert isinstance(child, int) and child != mw.pid and pid_alive(child)

    q = cli_json(mon_redis, "inspect", "query_task", r.id, dest=mw.node)[mw.node]
    assert list(q) == [r.id] and q[r.id][0] == "active" and q[r.id][1]["id"] == r.id

    reply = control(mon_app, "revoke", mw.node, task_id=r.id, terminate=True,
                    signal="SIGKILL")
    assert reply == {"ok": f"terminate: {r.id}"}
    wait_for(lambda: not pid_alive(child), 10, f"pool process {child} to be killed")
    wait_state(r, "REVOKED")
    ev = monitor.wait(10, "task-revoked", type="task-revoked", uuid=r.id)[0]
    assert ev["terminated"] is True and ev["signum"] == 9 and ev["expired"] is False
    assert not monitor.find(uuid=r.id, type="task-succeeded")
    assert monitor.task(r.id).state == "REVOKED"
    # the worker goes on: pool refilled, tasks run, still answers
    assert send(mon_app, "examples.add", 20, 22).get(timeout=TASK_TIMEOUT) == 42
    assert r.id in cli_json(mon_redis, "inspect", "revoked", dest=mw.node)[mw.node]


def test_terminate_cli_default_signal(mw, monitor, mon_redis, mon_app):
    r = send(mon_app, "examples.sleep", 30)
    wait_started(monitor, r.id)
    child = next(a["worker_pid"] for a in
                 cli_json(mon_redis, "inspect", "active", dest=mw.node)[mw.node]
                 if a["id"] == r.id)
    replies = cli_json(mon_redis, "control", "terminate", "SIGTERM", r.id, dest=mw.node)
    assert replies == {mw.node: {"ok": f"terminate: {r.id}"}}
    wait_for(lambda: not pid_alive(child), 10, f"pool process {child} to be terminated")
    wait_state(r, "REVOKED")
    ev = monitor.wait(10, "task-revoked", type="task-revoked", uuid=r.id)[0]
    assert ev["terminated"] is True and ev["signum"] == 15
    assert send(mon_app, "examples.add", 1, 1).get(timeout=TASK_TIMEOUT) == 2


def test_terminate_unknown_task(mw, mon_app):
    reply = control(mon_app, "revoke", mw.node, task_id=str(uuid.uuid4()), terminate=True)
    assert reply == {"ok": "terminate: tasks unknown"}


def test_scheduled_then_revoke_eta_task(mw, monitor, mon_redis, mon_app):
    soon_delay = 8  # > the two CLI round trips below, even on a loaded 2-core box
    far = send(mon_app, "examples.echo", "far", countdown=30)
    soon = send(mon_app, "examples.echo", "soon", countdown=soon_delay)
    soon_eta = time.time() + soon_delay
    for r in (far, soon):
        monitor.wait(10, "task-received", type="task-received", uuid=r.id)

    replies = cli_json(mon_redis, "control", "revoke", soon.id, dest=mw.node)
    if time.time() > soon_eta - 0.5:
        pytest.fail("test too slow: the revoke reply came after the task's ETA")
    ok = replies[mw.node]["ok"]
    assert ok.startswith("tasks ") and soon.id in ok and ok.endswith(" flagged as revoked")
    assert soon.id in cli_json(mon_redis, "inspect", "revoked", dest=mw.node)[mw.node]

    scheduled = cli_json(mon_redis, "inspect", "scheduled", dest=mw.node)[mw.node]
    by_id = {s["request"]["id"]: s for s in scheduled}
    assert far.id in by_id, scheduled
    entry = by_id[far.id]
    assert entry["request"]["name"] == "examples.echo" and entry["request"]["args"] == ["far"]
    assert isinstance(entry["eta"], str) and entry["eta"][:4].isdigit()
    assert isinstance(entry["priority"], int)

    wait_state(soon, "REVOKED", timeout=soon_delay + 10)
    meta = raw_meta(mon_redis, soon.id)
    assert meta["status"] == "REVOKED" and meta["result"]["exc_type"] == "TaskRevokedError"
    ev = monitor.wait(10, "task-revoked", type="task-revoked", uuid=soon.id)[0]
    assert ev["terminated"] is False and ev["expired"] is False and ev["signum"] is None
    monitor.heartbeat_sync(mw.node)
    assert not monitor.find(uuid=soon.id, type="task-started")
    assert soon.state == "REVOKED"
    # the far one: revoked by a cast (no reply wanted), like Flower's revoke button
    mon_app.control.revoke(far.id, destination=[mw.node])
    wait_for(lambda: far.id in cli_json(mon_redis, "inspect", "revoked", dest=mw.node)[mw.node],
             10, "the cast revoke to be applied")


@pytest.mark.handoff_pool  # with --pool-fetch a busy process takes no more messages
def test_revoke_queued_task(mw, monitor, mon_redis, mon_app):
    blockers = [send(mon_app, "examples.sleep", 5) for _ in range(CONCURRENCY)]
    for b in blockers:
        wait_started(monitor, b.id)
    free_at = time.time() + 5  # a pool slot frees up then; the revoke must come first
    victim = send(mon_app, "examples.add", 7, 7)
    monitor.wait(10, "task-received of the victim", type="task-received", uuid=victim.id)
    reserved = cli_json(mon_redis, "inspect", "reserved", dest=mw.node)[mw.node]
    assert victim.id in [x["id"] for x in reserved], reserved
    q = cli_json(mon_redis, "inspect", "query_task", victim.id, dest=mw.node)[mw.node]
    assert q[victim.id][0] == "reserved" and q[victim.id][1]["name"] == "examples.add", q
    reply = control(mon_app, "revoke", mw.node, task_id=victim.id)
    if time.time() > free_at - 0.5:
        pytest.fail("test too slow: the revoke reply came after a pool slot freed up")
    assert victim.id in reply["ok"]
    for b in blockers:
        assert b.get(timeout=TASK_TIMEOUT) == 5
    wait_state(victim, "REVOKED")
    monitor.wait(10, "task-revoked", type="task-revoked", uuid=victim.id)
    monitor.heartbeat_sync(mw.node)
    assert not monitor.find(uuid=victim.id, type="task-started")
    assert not monitor.find(uuid=victim.id, type="task-succeeded")


# ---------------------------------------------------------------- control: mutating


def test_add_and_cancel_consumer(mw, mon_redis, mon_app):
    newq = f"newq-{uuid.uuid4().hex[:6]}"
    replies = cli_json(mon_redis, "control", "add_consumer", newq, dest=mw.node)
    assert replies == {mw.node: {"ok": f"add consumer {newq}"}}
    r = send(mon_app, "examples.add", 4, 5, queue=newq)
    assert r.get(timeout=TASK_TIMEOUT) == 9
    names = [q["name"] for q in
             cli_json(mon_redis, "inspect", "active_queues", dest=mw.node)[mw.node]]
    assert sorted(names) == sorted(["mon", newq])

    replies = cli_json(mon_redis, "control", "cancel_consumer", newq, dest=mw.node)
    assert replies == {mw.node: {"ok": f"no longer consuming from {newq}"}}
    names = [q["name"] for q in
             cli_json(mon_redis, "inspect", "active_queues", dest=mw.node)[mw.node]]
    assert names == ["mon"]
    left = send(mon_app, "examples.add", 5, 6, queue=newq)
    # barrier: the worker still consumes its own queue
    assert send(mon_app, "examples.add", 1, 2).get(timeout=TASK_TIMEOUT) == 3
    broker = mon_redis.client(0)
    deadline = time.monotonic() + 2.5
    while time.monotonic() < deadline:  # must *stay* queued
        assert broker.llen(newq) == 1, "a task sent after cancel_consumer was consumed"
        time.sleep(0.1)
    assert left.state == "PENDING"
    broker.delete(newq)


def test_pool_grow_and_shrink(mw, mon_redis):
    def processes():
        return cli_json(mon_redis, "inspect", "stats", dest=mw.node)[mw.node]["pool"]["processes"]

    assert len(processes()) == CONCURRENCY
    assert cli_json(mon_redis, "control", "pool_grow", "1", dest=mw.node) == \
        {mw.node: {"ok": "pool will grow"}}
    wait_for(lambda: len(processes()) == CONCURRENCY + 1, 15, "the pool to grow by one")
    assert cli_json(mon_redis, "control", "pool_shrink", "1", dest=mw.node) == \
        {mw.node: {"ok": "pool will shrink"}}
    wait_for(lambda: len(processes()) == CONCURRENCY, 15, "the pool to shrink by one")


def test_rate_limit_and_time_limit_are_answered(mw, mon_redis):
    rl = cli_json(mon_redis, "control", "rate_limit", "examples.progress", "1000/s",
                  dest=mw.node)[mw.node]
    assert_ok_or_error(rl, "rate_limit")
    tl = cli_json(mon_redis, "control", "time_limit", "examples.progress", "100", "120",
                  dest=mw.node)[mw.node]
    assert_ok_or_error(tl, "time_limit")
    unknown = cli_json(mon_redis, "control", "rate_limit", "no.such.task", "1/s",
                       dest=mw.node)[mw.node]
    assert unknown == {"error": "unknown task"}


def test_rate_limit_is_enforced(spawn, mon_redis, mon_app):
    w = spawn(concurrency=2)
    assert cli_json(mon_redis, "control", "rate_limit", "examples.echo", "1/s",
                    dest=w.node) == {w.node: {"ok": "new rate limit set successfully"}}
    t0 = time.monotonic()
    rs = [send(mon_app, "examples.echo", i, queue=w.queues[0]) for i in range(4)]
    for r in rs:
        r.get(timeout=TASK_TIMEOUT)
    assert time.monotonic() - t0 >= 2.5, "4 tasks at 1/s finished too fast"


@pytest.mark.celeriac_only  # Celery 5.2.6 answers ok but never applies it (see below)
def test_time_limit_is_enforced(spawn, mon_redis, mon_app):
    """Celery's time_limit handler sets task.time_limit, but 5.2.6 requests read the
    limits captured when the strategy was built (worker/request.py create_request_cls),
    so the real worker ignores the change. celeriac applies it."""
    w = spawn(concurrency=1)
    assert cli_json(mon_redis, "control", "time_limit", "examples.sleep", "3", "1",
                    dest=w.node) == {w.node: {"ok": "time limits set successfully"}}
    r = send(mon_app, "examples.sleep", 8, queue=w.queues[0])
    wait_state(r, "FAILURE", timeout=6)
    assert type(r.info).__name__ in ("SoftTimeLimitExceeded", "TimeLimitExceeded"), r.info


def test_registered_with_taskinfoitems(mw, mon_redis):
    """`registered rate_limit`: attributes that are None are left out (plain name)."""
    rl = cli_json(mon_redis, "control", "rate_limit", "examples.echo", "500/m",
                  dest=mw.node)[mw.node]
    try:
        items = cli_json(mon_redis, "inspect", "registered", "rate_limit",
                         dest=mw.node)[mw.node]
        assert "examples.add" in items, items
        if "ok" in rl:
            assert "examples.echo [rate_limit=500/m]" in items, items
    finally:
        cli_json(mon_redis, "control", "rate_limit", "examples.echo", "", dest=mw.node)


def test_enable_disable_events_replies_on_E_worker(mw, mon_redis):
    """Celery quirk: a worker started with -E answers "already" to both."""
    for action in ("enable_events", "disable_events"):
        reply = cli_json(mon_redis, "control", action, dest=mw.node)[mw.node]
        assert isinstance(reply, dict) and "ok" in reply, (action, reply)


# ----------------------------------------------------- workers with their own config


@pytest.fixture
def quiet_worker(spawn):
    """No -E, heartbeats every second, TZ=Asia/Kolkata (UTC+5:30 -> utcoffset -6)."""
    w = spawn(extra=["--heartbeat-interval", "1"], env={"TZ": "Asia/Kolkata"})
    return w


def test_task_events_only_after_enable_events(quiet_worker, monitor, mon_redis, mon_app):
    w, q = quiet_worker, quiet_worker.queues[0]
    monitor.wait(10, "worker-online", type="worker-online", hostname=w.node)
    r1 = send(mon_app, "examples.add", 1, 2, queue=q)
    assert r1.get(timeout=TASK_TIMEOUT) == 3
    monitor.heartbeat_sync(w.node)
    assert monitor.task_types(r1.id) == []

    assert cli_json(mon_redis, "control", "enable_events", dest=w.node) == \
        {w.node: {"ok": "task events enabled"}}
    r2 = send(mon_app, "examples.add", 2, 2, queue=q)
    assert r2.get(timeout=TASK_TIMEOUT) == 4
    monitor.wait(10, "task-succeeded", type="task-succeeded", uuid=r2.id)
    assert monitor.task_types(r2.id) == ["task-received", "task-started", "task-succeeded"]
    assert cli_json(mon_redis, "control", "enable_events", dest=w.node) == \
        {w.node: {"ok": "task events already enabled"}}

    assert cli_json(mon_redis, "control", "disable_events", dest=w.node) == \
        {w.node: {"ok": "task events disabled"}}
    r3 = send(mon_app, "examples.add", 3, 3, queue=q)
    assert r3.get(timeout=TASK_TIMEOUT) == 6
    monitor.heartbeat_sync(w.node)
    assert monitor.task_types(r3.id) == []
    assert monitor.alive(w.node)  # worker events never stop


def test_heartbeat_interval_and_utcoffset(quiet_worker, monitor):
    w = quiet_worker
    online = monitor.wait(10, "worker-online", type="worker-online", hostname=w.node)[0]
    beats = monitor.wait(10, "4 heartbeats", count=4, type="worker-heartbeat",
                         hostname=w.node, freq=1.0)[:4]
    gaps = [b["local_received"] - a["local_received"] for a, b in zip(beats, beats[1:])]
    assert all(0.5 < g < 1.8 for g in gaps), gaps
    for ev in [online] + beats:
        assert ev["utcoffset"] == -6, ev  # time.timezone // 3600 in Asia/Kolkata
        assert abs(raw_timestamp(ev) - ev["local_received"]) < 5, ev
    assert monitor.alive(w.node) and monitor.worker(w.node).freq == 1.0


def test_without_heartbeat(spawn, monitor, mon_app):
    w = spawn(extra=["--without-heartbeat", "-E"])
    # barrier: a task's events prove the worker is running and publishing
    r = send(mon_app, "examples.add", 1, 1, queue=w.queues[0])
    assert r.get(timeout=TASK_TIMEOUT) == 2
    monitor.wait(10, "task-succeeded", type="task-succeeded", uuid=r.id)
    deadline = time.monotonic() + 4.5  # > 2 default heartbeat periods
    while time.monotonic() < deadline:
        assert not monitor.find(type="worker-heartbeat", hostname=w.node)
        time.sleep(0.1)


def test_sigterm_sends_worker_offline(spawn, monitor, mon_redis):
    w = spawn(extra=["-E"])
    monitor.wait(10, "worker-online", type="worker-online", hostname=w.node)
    wait_for(lambda: monitor.alive(w.node), 10, "the worker to be alive in State")
    assert w.stop() == 0
    ev = monitor.wait(5, "worker-offline", type="worker-offline", hostname=w.node)[0]
    assert ev["pid"] == w.pid and ev["sw_sys"] == platform.system()
    assert not monitor.alive(w.node)
    cli_json(mon_redis, "inspect", "ping", dest=w.node, timeout=1.0, expect_rc=69)


def test_shutdown_command(spawn, monitor, mon_redis):
    w = spawn()
    monitor.wait(10, "worker-online", type="worker-online", hostname=w.node)
    assert cli_json(mon_redis, "inspect", "ping", dest=w.node) == {w.node: {"ok": "pong"}}
    # shutdown never replies, so the CLI reports that no node replied
    proc = cli_json(mon_redis, "control", "shutdown", dest=w.node, timeout=1.0, expect_rc=69)
    assert "No nodes replied" in proc.stdout + proc.stderr
    assert wait_exit(w.proc, 20) == 0, w.describe()
    monitor.wait(5, "worker-offline", type="worker-offline", hostname=w.node)
    assert not monitor.alive(w.node)
    cli_json(mon_redis, "inspect", "ping", dest=w.node, timeout=1.0, expect_rc=69)


def test_shutdown_command_is_warm(spawn, monitor, mon_redis, mon_app):
    """`control shutdown` while a task runs: the task finishes, then the worker exits 0."""
    w = spawn(extra=["-E"])
    r = send(mon_app, "examples.sleep", 2, queue=w.queues[0])
    wait_started(monitor, r.id)
    mon_app.control.shutdown(destination=[w.node])  # a cast, like Flower's button
    assert wait_exit(w.proc, 20) == 0, w.describe()
    assert r.get(timeout=5) == 2
    assert monitor.task_types(r.id)[-1] == "task-succeeded"
    monitor.wait(5, "worker-offline", type="worker-offline", hostname=w.node)


def test_statedb_keeps_revoked_ids_across_restart(spawn, monitor, mon_redis, mon_app, tmp_path):
    statedb = tmp_path / "worker.state"
    w = spawn(extra=["--statedb", str(statedb), "-E"])
    tid = str(uuid.uuid4())
    reply = control(mon_app, "revoke", w.node, task_id=tid)
    assert tid in reply["ok"]
    assert w.stop() == 0
    w.start()
    assert tid in cli_json(mon_redis, "inspect", "revoked", dest=w.node)[w.node]
    r = mon_app.send_task("examples.echo", args=("must not run",), task_id=tid,
                          queue=w.queues[0])
    wait_state(r, "REVOKED")
    monitor.wait(10, "task-revoked", type="task-revoked", uuid=tid)
    monitor.heartbeat_sync(w.node)
    assert not monitor.find(uuid=tid, type="task-started")
    assert r.state == "REVOKED"


def test_mixed_fleet(spawn, monitor, mon_redis, mon_app):
    """Two celeriac workers and one real Python Celery worker side by side."""
    c1 = spawn(name=f"ca{uuid.uuid4().hex[:6]}", extra=["-E"], concurrency=1)
    c2 = spawn(name=f"cb{uuid.uuid4().hex[:6]}", extra=["-E"], concurrency=1)
    py = spawn(name=f"py{uuid.uuid4().hex[:6]}", kind="python", concurrency=1,
               extra=["-P", "solo", "-E"])
    nodes = [c1.node, c2.node, py.node]
    replies = cli_json(mon_redis, "inspect", "ping", dest=nodes)
    assert replies == {n: {"ok": "pong"} for n in nodes}
    wait_for(lambda: all(monitor.alive(n) for n in nodes), 10, "all three alive in State")
    for w in (c1, c2, py):
        r = send(mon_app, "examples.add", 20, 1, queue=w.queues[0])
        assert r.get(timeout=TASK_TIMEOUT) == 21
        monitor.wait(10, "task-succeeded", type="task-succeeded", uuid=r.id)
        assert monitor.task(r.id).worker.hostname == w.node
    got = mon_app.control.inspect(timeout=2, pattern=f"{c1.name[:2]}*",
                                  matcher="glob").ping()
    assert list(got or {}) == [c1.node]
    stats = cli_json(mon_redis, "inspect", "stats", dest=nodes)
    assert sorted(stats) == sorted(nodes)
    assert stats[py.node]["pid"] == py.pid and stats[c1.node]["pid"] == c1.pid


class _AuthRedis:
    """A RedisServer seen through URLs that carry a password."""

    def __init__(self, server, password):
        self.server, self.password, self.port = server, password, server.port

    def url(self, db=0):
        return f"redis://:{self.password}@127.0.0.1:{self.port}/{db}"


def test_broker_password_never_leaks(make_worker, redis_factory):
    """stats/conf/report replies and the worker log must not contain the password
    (Celery pops it from stats.broker and masks URLs in conf, report and logs)."""
    server = redis_factory()
    password = f"pw{uuid.uuid4().hex}"
    server.client().config_set("requirepass", password)
    auth = _AuthRedis(server, password)
    w = make_worker(auth, queues=["sec"], concurrency=1)
    node = nodename(w)
    assert cli_json(auth, "inspect", "ping", dest=node) == {node: {"ok": "pong"}}
    for action in ("stats", "conf", "report"):
        reply = cli_json(auth, "inspect", action, dest=node)[node]
        assert password not in str(reply), f"{action} reply leaks the broker password"
    stats = cli_json(auth, "inspect", "stats", dest=node)[node]
    assert "password" not in stats["broker"]
    w.stop()
    for path in (w.logfile, w.outfile):
        lines = [ln for ln in path.read_text(errors="replace").splitlines()
                 if not ln.startswith("=== start #")]  # the harness's own command line
        assert not [ln for ln in lines if password in ln], f"{path} has the password"


def test_broker_restart_pidbox_and_heartbeats_resume(make_worker, redis_factory):
    """After the broker restarts, the worker answers remote control and sends
    heartbeats again (it re-subscribes to the pidbox and re-publishes events)."""
    server = redis_factory()
    w = make_worker(server, queues=["br"], concurrency=1, extra=["-E"])
    node = nodename(w)
    app_ = make_celery_app(server)
    try:
        assert cli_json(server, "inspect", "ping", dest=node) == {node: {"ok": "pong"}}
        server.restart()

        def answers():
            got = app_.control.ping(destination=[node], timeout=1)
            return got == [{node: {"ok": "pong"}}]

        wait_for(answers, 40, "the worker to answer ping after the broker restart",
                 interval=0.5)
        mon = EventMonitor(app_).start()
        try:
            mon.wait(10, "heartbeats after the restart", count=2, type="worker-heartbeat",
                     hostname=node)
            r = send(app_, "examples.add", 3, 4, queue="br")
            assert r.get(timeout=TASK_TIMEOUT) == 7
            mon.wait(10, "task events after the restart", type="task-succeeded", uuid=r.id)
        finally:
            mon.stop()
        assert w.alive
    finally:
        gc.collect()
        getattr(conftest, "close_celery_app", lambda a: a.close())(app_)


# --------------------------------------------------------------------- celeriac status


def _status(pidfile, *extra):
    return subprocess.run([CELERIAC_BIN, "status", "--pidfile", str(pidfile), *extra],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=10)


@pytest.mark.celeriac_only
def test_celeriac_status(spawn):
    w = spawn()
    st = _status(w.pidfile)
    assert st.returncode == 0, st.stdout + st.stderr
    w.kill9()
    st = _status(w.pidfile)
    assert st.returncode != 0, "status says alive after kill -9\n" + st.stdout + st.stderr
    w.start()
    assert _status(w.pidfile).returncode == 0
    assert w.stop() == 0
    assert _status(w.pidfile).returncode != 0
    missing = _status(w.dir / "no-such.pid")
    assert missing.returncode != 0


@pytest.mark.celeriac_only
def test_celeriac_status_hung_worker(spawn):
    """A stopped (SIGSTOP) main process keeps its pid but stops refreshing the status
    file: the probe must fail once the file is older than --max-age."""
    w = spawn()
    assert _status(w.pidfile, "--max-age", "3").returncode == 0
    os.kill(w.pid, signal.SIGSTOP)
    try:
        wait_for(lambda: _status(w.pidfile, "--max-age", "3").returncode != 0, 10,
                 "status to report the hung worker", interval=0.3)
    finally:
        os.kill(w.pid, signal.SIGCONT)
    wait_for(lambda: _status(w.pidfile, "--max-age", "3").returncode == 0, 10,
             "status to recover after SIGCONT", interval=0.3)


@pytest.mark.celeriac_only
def test_celeriac_status_broker_down(make_worker, redis_factory):
    """Alive but not consuming (broker gone) is not healthy; healthy again after."""
    server = redis_factory()
    w = make_worker(server, queues=["st"], concurrency=1)
    assert _status(w.pidfile).returncode == 0
    server.stop()
    try:
        wait_for(lambda: _status(w.pidfile).returncode != 0, 15,
                 "status to report a worker that cannot consume", interval=0.3)
    finally:
        server.start()
    wait_for(lambda: _status(w.pidfile).returncode == 0, 40,
             "status to recover once the broker is back", interval=0.5)
