"""What must survive: crashes, kill -9, redis restarts, garbage on the queue."""
import base64
import json
import os
import re
import signal
import socket
import time
import uuid

import pytest

from conftest import POOL_FETCH, WORKER_KIND
from helpers import SilentLinkProxy, child_pids, pid_alive, raw_meta, wait_for


def _statuses(redis, ids):
    raw = redis.client(1).mget([f"celery-task-meta-{i}" for i in ids])
    return [json.loads(v)["status"] if v else None for v in raw]


def test_kill9_with_acks_late_redelivers(make_worker, redis_factory, app_factory):
    """kill -9 of the worker group while acks_late sleeps run: after a restart every task
    completes, because the unacked messages are restored past the visibility timeout."""
    redis = redis_factory()
    app = app_factory(redis)
    extra = ["--task-acks-late", "--visibility-timeout", "3", "--prefetch-multiplier", "2"]
    w = make_worker(redis, concurrency=2, extra=extra)
    results = [app.send_task("examples.sleep", args=(2,)) for _ in range(6)]
    broker = redis.client(0)
    # Kill only once all 4 (= -c 2 x prefetch 2) are recorded as unacked: a kill between
    # BRPOP and the MULTI that records the message loses it, in Python too (§1.6 "Gap").
    # With --pool-fetch a process takes one task at a time while its tasks are not
    # known to be short: 2 reserved, 4 queued.
    held = 2 if POOL_FETCH else 4
    wait_for(lambda: broker.hlen("unacked") == held and broker.llen("celery") == 6 - held, 20,
             f"{held} messages reserved (unacked), {6 - held} still queued")
    assert w.kill9(group=True) == -signal.SIGKILL
    assert broker.hlen("unacked") == held
    ids = [r.id for r in results]

    def past_visibility():
        now = broker.time()
        now = now[0] + now[1] / 1e6
        scores = [s for _, s in broker.zrange("unacked_index", 0, -1, withscores=True)]
        return all(now - s > 3.5 for s in scores)

    wait_for(past_visibility, 15, "unacked messages older than the visibility timeout")
    w.start()
    wait_for(lambda: _statuses(redis, ids) == ["SUCCESS"] * len(ids), 60,
             "every task to succeed after the restart")
    wait_for(lambda: broker.hlen("unacked") == 0, 20, "unacked hash to empty")


def test_killing_main_pid_takes_pool_children(make_worker, redis_factory, app_factory):
    """kill -9 of only the main process: its pool processes must not live on."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2)
    app.send_task("examples.sleep", args=(30,))
    kids = wait_for(lambda: child_pids(w.pid), 10, "pool processes")
    w.kill9(group=False)
    wait_for(lambda: not any(pid_alive(k) for k in kids), 10,
             f"pool processes {kids} to exit after the main process died")


def test_killing_main_pid_loses_no_result(make_worker, redis_factory, app_factory):
    """kill -9 of only the main process in the middle of a flood of `add` (early ack):
    no task may be lost. Each one has a stored result, or its message is still in
    the queue or in unacked (restored after the visibility timeout). Results the
    main process held to store in its next batch are stored by the pool processes
    that produced them, which outlive it for that."""
    redis = redis_factory()
    app = app_factory(redis)
    n = 6000
    w = make_worker(redis, concurrency=2, start=False)
    with app.producer_or_acquire() as producer:
        ids = [app.send_task("examples.add", args=(i, i), producer=producer).id
               for i in range(n)]
    backend = redis.client(1)
    broker = redis.client(0)
    w.start()
    wait_for(lambda: backend.dbsize() >= 1500, 60, "1500 results stored")
    kids = child_pids(w.pid)
    w.kill9(group=False)
    wait_for(lambda: not any(pid_alive(k) for k in kids), 10,
             f"pool processes {kids} to exit after the main process died")
    stored = {i for i, v in zip(ids, backend.mget([f"celery-task-meta-{i}" for i in ids]))
              if v is not None}
    queued = {json.loads(m)["headers"]["id"] for m in broker.lrange("celery", 0, -1)}
    unacked = {json.loads(v)[0]["headers"]["id"] for v in broker.hvals("unacked")}
    lost = [i for i in ids if i not in stored and i not in queued and i not in unacked]
    assert len(stored) < n, "the kill came after the last task: nothing was tested"
    assert not lost, (f"{len(lost)} of {n} tasks lost (stored {len(stored)}, queued "
                      f"{len(queued)}, unacked {len(unacked)}), e.g. {lost[:3]}")
    assert all(json.loads(v)["status"] == "SUCCESS"
               for v in backend.mget([f"celery-task-meta-{i}" for i in stored]))


def test_warm_shutdown_finishes_running_task(make_worker, redis_factory, app_factory):
    """SIGTERM while a task runs: the task completes, then the worker exits 0."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=1, extra=["--task-track-started"])
    r = app.send_task("examples.sleep", args=(2,))
    wait_for(lambda: r.state == "STARTED", 15, "task STARTED")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert r.state == "SUCCESS"


def test_warm_shutdown_acks_late_tasks_it_finished(make_worker, redis_factory, app_factory):
    """acks_late, SIGTERM while tasks run: they complete, their results are stored and
    their messages acked before the worker exits (nothing left to be run again)."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2, extra=["--task-acks-late", "--task-track-started"])
    rs = [app.send_task("examples.sleep", args=(1,)) for _ in range(2)]
    wait_for(lambda: all(r.state == "STARTED" for r in rs), 15, "both tasks STARTED")
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(30) == 0
    assert [r.state for r in rs] == ["SUCCESS", "SUCCESS"]
    broker = redis.client(0)
    assert (broker.llen("celery"), broker.hlen("unacked")) == (0, 0), broker.hkeys("unacked")


def test_redis_restart_mid_run_loses_nothing(make_worker, redis_factory, app_factory):
    """Persistent redis restarted while tasks run: every result still arrives."""
    redis = redis_factory(persistent=True)
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2, extra=["--visibility-timeout", "10"])
    n = 30
    results = [app.send_task("examples.sleep", args=(0.3,)) for _ in range(n)]
    ids = [r.id for r in results]
    wait_for(lambda: _statuses(redis, ids).count("SUCCESS") >= 3, 30, "first results")
    redis.restart()
    wait_for(lambda: _statuses(redis, ids) == ["SUCCESS"] * n, 120,
             "all results after the redis restart")
    assert w.alive
    # and the worker is consuming again (new work after the restart)
    assert app.send_task("examples.add", args=(1, 1)).get(timeout=30) == 2


def test_script_flush_mid_run_loses_nothing(make_worker, redis_factory, app_factory):
    """SCRIPT FLUSH (or a failover to a server that never saw our scripts) while tasks
    run: fetches, batched results and progress states fall back to sending the script
    itself, and every task still ends in SUCCESS, its progress published before it."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2)
    client = redis.client(0)
    pubsub = redis.client(1).pubsub()
    doc_ids = [str(uuid.uuid4()) for _ in range(3)]
    pubsub.subscribe(*[f"celery-task-meta-{i}" for i in doc_ids])
    try:
        for rnd in range(3):
            # A document alone first: its progress is the first store after the flush.
            client.script_flush()
            doc = base64.b64encode(f"# Round {rnd}\n\nSome words for round {rnd}.".encode())
            app.send_task("process_document", args=[doc.decode()], task_id=doc_ids[rnd])
            wait_for(lambda: _statuses(redis, [doc_ids[rnd]]) == ["SUCCESS"], 60,
                     f"the document of round {rnd} after SCRIPT FLUSH")
            client.script_flush()
            ids = [app.send_task("examples.add", args=(i, rnd)).id for i in range(40)]
            wait_for(lambda: _statuses(redis, ids) == ["SUCCESS"] * 40, 60,
                     f"every add of round {rnd} after SCRIPT FLUSH")
            assert [raw_meta(redis, i)["result"] for i in ids] == [i + rnd for i in range(40)]
        published = {}
        while True:
            msg = pubsub.get_message(timeout=1.0)
            if msg is None:
                break
            if msg["type"] == "message":
                meta = json.loads(msg["data"])
                published.setdefault(meta["task_id"], []).append(meta["status"])
    finally:
        pubsub.close()
    for i in doc_ids:
        states = published.get(i, [])
        assert states and states[0] == "PROCESSING" and states[-1] == "SUCCESS", (i, states)
    assert w.alive


def test_redis_restart_while_idle(make_worker, redis_factory, app_factory):
    """Redis restarted while the worker idles: the worker reconnects by itself."""
    redis = redis_factory(persistent=True)
    app = app_factory(redis)
    w = make_worker(redis, concurrency=1)
    redis.restart()
    assert app.send_task("examples.add", args=(2, 2)).get(timeout=60) == 4
    assert w.alive


def _envelope(body, headers, content_type="application/json", encoding="utf-8",
              body_encoding="base64", queue="celery"):
    tag = str(uuid.uuid4())
    props = {"correlation_id": headers.get("id") if isinstance(headers, dict) else None,
             "reply_to": str(uuid.uuid4()), "delivery_mode": 2,
             "delivery_info": {"exchange": "", "routing_key": queue}, "priority": 0,
             "delivery_tag": tag}
    if body_encoding:
        props["body_encoding"] = body_encoding
    return json.dumps({"body": body, "content-encoding": encoding, "content-type": content_type,
                       "headers": headers, "properties": props})


def _headers(task, task_id, **extra):
    h = {"lang": "py", "task": task, "id": task_id, "shadow": None, "eta": None, "expires": None,
         "group": None, "group_index": None, "retries": 0, "timelimit": [None, None],
         "root_id": task_id, "parent_id": None, "argsrepr": "()", "kwargsrepr": "{}",
         "origin": "gen1@test", "ignore_result": False}
    h.update(extra)
    return h


def _b64(obj):
    raw = obj if isinstance(obj, bytes) else json.dumps(obj).encode()
    return base64.b64encode(raw).decode()


@pytest.mark.celeriac_only
def test_malformed_messages_do_not_kill_worker(make_worker, redis_factory, app_factory):
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2)
    broker = redis.client(0)
    weird_id = str(uuid.uuid4())
    notlist_id = str(uuid.uuid4())
    nested_id = str(uuid.uuid4())
    garbage = [
        b"not json at all",
        b"",
        b"null",
        b"[1, 2, 3]",
        b'"just a string"',
        b"{\"body\": ",  # truncated
        json.dumps({"foo": 1}).encode(),  # JSON without headers/body
        json.dumps({"body": "x", "headers": "not a dict", "properties": []}).encode(),
        _envelope("!!!not base64!!!", _headers("examples.add", str(uuid.uuid4()))).encode(),
        _envelope(_b64(b"\xff\xfe not utf-8 \x80"), _headers("examples.add",
                                                            str(uuid.uuid4()))).encode(),
        _envelope(_b64([[1, 2], {}, {}]), _headers(12345, str(uuid.uuid4()))).encode(),
        _envelope(_b64([[1, 2], {}, {}]), {"task": "examples.add"}).encode(),  # no id
        _envelope(_b64({"x": 1}), _headers("examples.add", notlist_id)).encode(),
        _envelope(_b64(b"[" * 200000 + b"]" * 200000), _headers("examples.echo",
                                                                 nested_id)).encode(),
        b"[" * 500000,
        os.urandom(5 * 1024 * 1024),
        _envelope(_b64([[1, 2], {}, {}]), _headers("examples.add", weird_id),
                  content_type="application/x-weird").encode(),
        _envelope(_b64([[1, 2], {}, {}]), _headers("examples.add", str(uuid.uuid4())),
                  body_encoding="rot13").encode(),
        _envelope(_b64([[1, 2], {}, {}]), _headers("examples.add", str(uuid.uuid4()),
                                                   compression="application/x-gzip")).encode(),
        _envelope(_b64([[1, 2], {}, {}]), _headers("examples.add", str(uuid.uuid4()),
                                                   timelimit="soon", eta="not a date")).encode(),
    ]
    for item in garbage:
        broker.lpush("celery", item)
    ok = app.send_task("examples.add", args=(20, 22))
    assert ok.get(timeout=60) == 42
    assert w.alive, "worker died on malformed input"
    # A message whose id is known but whose content type is unknown: FAILURE stored.
    wait_for(lambda: raw_meta(redis, weird_id), 20, "FAILURE for the unknown content type")
    meta = raw_meta(redis, weird_id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ContentDisallowed", meta
    wait_for(lambda: broker.llen("celery") == 0, 20, "queue drained")
    # Still healthy after all that.
    assert app.send_task("examples.echo", args=["still here"]).get(timeout=30) == \
        {"args": ["still here"], "kwargs": {}}
    assert w.alive


@pytest.mark.parametrize("budget", [None, "0"], ids=["pipelined", "pipeline-budget-0"])
def test_pool_process_killed_during_a_flood_loses_nothing(make_worker, redis_factory,
                                                           app_factory, budget):
    """Short tasks are queued in a busy pool process behind its current one (pipelining).
    kill -9 of pool processes in the middle of a flood: the task each was running fails
    with WorkerLostError, the ones queued behind it run in the replacement, none is lost.
    The tasks sleep 0.2 ms: short enough to be queued (several fit the 4 ms budget), long
    enough that a process usually holds a queued one when it is killed (the log says so:
    "... queued in ForkPoolWorker-N and not started go to another process"). With
    --pipeline-budget 0 nothing is queued in a process, so that never happens."""
    if budget is not None and WORKER_KIND == "python":
        pytest.skip("--pipeline-budget is celeriac's")
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2,
                    extra=["--pipeline-budget", budget] if budget is not None else [])
    warm = [app.send_task("examples.sleep", args=(0.0002,)) for i in range(20)]
    assert [r.get(timeout=30) for r in warm] == [0.0002] * 20
    # A backlog, so that jobs queue in the processes: consuming pauses while it is sent.
    node = f"{w.name}@{socket.gethostname()}"
    assert app.control.cancel_consumer("celery", destination=[node], reply=True, timeout=10)
    n, kills = 2000, 4
    results = [app.send_task("examples.sleep", args=(0.0002,)) for i in range(n)]
    assert app.control.add_consumer("celery", destination=[node], reply=True, timeout=10)
    ids = [r.id for r in results]
    meta = redis.client(1)
    killed = 0
    for k in range(kills):
        # Each kill once more of the flood has finished, so they land mid-run.
        wait_for(lambda: meta.exists(f"celery-task-meta-{ids[(k + 1) * n // (kills + 2)]}"),
                 60, "the flood to progress")
        kids = child_pids(w.pid)
        if kids:
            os.kill(kids[k % len(kids)], signal.SIGKILL)
            killed += 1
    wait_for(lambda: None not in _statuses(redis, ids), 120, "a result for every task")
    metas = [raw_meta(redis, i) for i in ids]
    lost = [m for m in metas if m["status"] != "SUCCESS"]
    assert all(m["status"] == "FAILURE" and m["result"]["exc_type"] == "WorkerLostError"
               for m in lost), lost[:3]
    assert len(lost) <= killed
    wait_for(lambda: redis.client(0).hlen("unacked") == 0, 20, "unacked to empty")
    assert w.alive
    if budget == "0" and not POOL_FETCH:  # a fetching process holds what it took, not started
        # Nothing was queued behind a running task. The one exception: a kill
        # that lands while the main process writes a job to that process
        # ("did not take its jobs"), whose job then goes to another process.
        lines = w.logfile.read_text(errors="replace").splitlines()
        back = [x for x in lines if "not started go to another process" in x]
        untaken = [x for x in lines if "did not take its jobs" in x]
        assert all("] 1 job(s) queued" in x for x in back) and len(back) <= len(untaken), \
            (back, untaken)


@pytest.mark.celeriac_only  # --pool-fetch
def test_fetching_process_killed_before_reporting_gives_back_what_it_took(
        make_worker, redis_factory, app_factory):
    """--pool-fetch: each batch fetch (and each reservation of a message BRPOP brought)
    leaves what it reserved in a record with an expiry (so a worker killed whole leaves
    nothing behind for good). A pool process killed
    after a fetch and before it reported the messages: the main process reads the record
    and returns them to the queue at once, not after visibility_timeout (an hour here).
    The state of that moment is made by hand: two messages reserved in unacked, and the
    record of the process naming them."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=1, extra=["--pool-fetch"])
    broker = redis.client(0)
    assert app.send_task("examples.add", args=(1, 2)).get(timeout=30) == 3
    kids = child_pids(w.pid)
    assert len(kids) == 1
    record = f"celeriac.fetching.{w.name}@{socket.gethostname()}.{kids[0]}"
    # While a flood runs, the process's last batch is in its record, with an expiry (an
    # empty fetch deletes it).
    flood = [app.send_task("examples.sleep", args=(0.001,)) for _ in range(1000)]
    wait_for(lambda: 0 < broker.pttl(record) <= 3600 * 1000, 30,
             f"{record} to hold a batch, with an expiry")
    assert len(broker.get(record).split(b"\n")) <= 4  # the window: --prefetch-multiplier
    assert [r.get(timeout=60) for r in flood] == [0.001] * len(flood)
    # Idle (its last fetch found nothing and cleared the record), the process waits in
    # BRPOP; a message BRPOP brings it is named in the record when it is reserved.
    wait_for(lambda: not broker.exists(record), 10, "the record to clear once the queue is empty")
    one = app.send_task("examples.sleep", args=(0.5,), queue="parking")
    env = broker.rpop("parking")
    broker.lpush("celery", env)
    tag = json.loads(env)["properties"]["delivery_tag"]
    wait_for(lambda: broker.get(record) == tag.encode(), 10, "the BRPOP delivery in the record")
    assert one.get(timeout=30) == 0.5
    # Two messages as the batch fetch leaves them: popped, and reserved in unacked.
    taken = [app.send_task("examples.add", args=(i, 10), queue="parking") for i in range(2)]
    tags = []
    for _ in taken:
        env = broker.rpop("parking")
        tag = json.loads(env)["properties"]["delivery_tag"]
        broker.hset("unacked", tag, b'[' + env + b', "", "celery"]')
        broker.zadd("unacked_index", {tag: time.time()})
        tags.append(tag)
    broker.set(record, "\n".join(tags), px=3600 * 1000)
    os.kill(kids[0], signal.SIGKILL)
    assert [r.get(timeout=30) for r in taken] == [10, 11]
    wait_for(lambda: broker.hlen("unacked") == 0, 20, "unacked to empty")
    assert "2 message(s) ForkPoolWorker-1 took and never reported went back to their queue" \
        in w.logfile.read_text(errors="replace")
    assert w.alive


@pytest.mark.celeriac_only  # --pool-fetch
def test_fetching_process_killed_before_storing_its_results_loses_none(
        make_worker, redis_factory, app_factory):
    """--pool-fetch: a pool process stores the results of its short tasks itself, in the
    round trip of its next fetch, and the main process keeps a copy of each (sent in
    DONE) until the process says they are stored. A process that dies in between (here:
    the last task of its batch crashes it) leaves them to the main process, which stores
    them: the tasks before the crash have their results, the crash its WorkerLostError.
    The process had not even written those tasks' reports (a short task's DONE waits for
    the next fetch too): the main process reads them from the memory it shares with the
    process, so no task is run a second time: neither add, nor the crash (its STARTED
    was kept there too, so it counts as lost while running, as Celery counts it)."""
    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=1, extra=["--pool-fetch"])
    broker = redis.client(0)
    # Known as short tasks in this process (a short task's result waits for the next fetch).
    assert app.send_task("examples.add", args=(1, 2)).get(timeout=30) == 3
    assert app.send_task("examples.crash", args=(False,)).get(timeout=30) is None
    # add, add, crash arrive together: BRPOP brings the first, the batch fetch the rest.
    batch = [app.send_task("examples.add", args=(i, 100), queue="parking") for i in range(2)]
    crash = app.send_task("examples.crash", args=(True,), queue="parking")
    envs = [broker.rpop("parking") for _ in range(3)]
    broker.lpush("celery", *envs)
    assert [r.get(timeout=30) for r in batch] == [100, 101]
    with pytest.raises(Exception) as exc:
        crash.get(timeout=30)
    assert type(exc.value).__name__ == "WorkerLostError"
    log = w.logfile.read_text(errors="replace")
    assert re.search(r"ForkPoolWorker-1: storing [12] result\(s\) it may not have stored", log), \
        "no result was left to the main process"
    assert re.search(r"ForkPoolWorker-1: read \d+ byte\(s\) of reports it had not written", log)
    assert "not started go to another process" not in log
    assert log.count(f"examples.crash[{crash.id}]: crashing on purpose") == 1
    wait_for(lambda: broker.hlen("unacked") == 0, 20, "unacked to empty")
    assert w.alive


@pytest.mark.celeriac_only  # the harness's Python worker takes its backend from its app module
def test_result_backend_down_keeps_the_worker_answering(make_worker, redis_factory,
                                                         app_factory):
    """Result backend on its own Redis, stopped for a while: the worker keeps consuming and
    answering remote control (finished results wait in the main process, retried once a
    second, not in a blocking call), and every result is stored once the backend is back."""
    broker = redis_factory()
    backend = redis_factory(persistent=True)
    app = app_factory(broker)  # sends and pings over the broker; results are read below
    w = make_worker(broker, concurrency=2, extra=["--result-backend", backend.url(1)])
    first = app.send_task("examples.add", args=(1, 1)).id
    wait_for(lambda: raw_meta(backend, first), 30, "a result in the separate backend")
    backend.stop()
    ids = [app.send_task("examples.add", args=(i, i)).id for i in range(20)]
    wait_for(lambda: broker.client(0).llen("celery") == 0, 30, "the queue to drain")
    node = f"{w.name}@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=5)
    assert replies and node in replies[0], f"no ping reply while the backend is down: {replies}"
    backend.start()
    wait_for(lambda: all((raw_meta(backend, i) or {}).get("status") == "SUCCESS" for i in ids),
             60, "every result once the backend is back")
    assert [raw_meta(backend, i)["result"] for i in ids] == [2 * i for i in range(20)]
    assert w.alive


@pytest.mark.celeriac_only
def test_acks_late_ack_waits_for_its_stored_result(make_worker, redis_factory, app_factory):
    """acks_late: a message is acknowledged only after its result is stored. With the
    result backend down the finished tasks' messages stay in unacked (the main process
    holds the results and retries), and are acked once the results are in."""
    broker = redis_factory()
    backend = redis_factory(persistent=True)
    app = app_factory(broker)
    w = make_worker(broker, concurrency=2,
                    extra=["--result-backend", backend.url(1), "--task-acks-late"])
    first = app.send_task("examples.add", args=(1, 1)).id
    wait_for(lambda: raw_meta(backend, first), 30, "a result in the separate backend")
    client = broker.client(0)
    wait_for(lambda: client.hlen("unacked") == 0, 10, "the first message acked")
    backend.stop()
    ids = [app.send_task("examples.add", args=(i, i)).id for i in range(6)]
    wait_for(lambda: client.llen("celery") == 0, 30, "the queue to drain")
    wait_for(lambda: "result backend unavailable" in w._new_text(), 30,
             "the worker to notice the backend is down")
    # Finished, results held: their messages are still unacked (a message delivered
    # by BRPOP enters unacked just after leaving the queue, so wait for all six),
    # and stay there while the results cannot be stored.
    wait_for(lambda: client.hlen("unacked") == 6, 10, "six messages in unacked")
    deadline = time.monotonic() + 1.0
    while time.monotonic() < deadline:
        assert client.hlen("unacked") == 6, client.hkeys("unacked")
        time.sleep(0.05)
    backend.start()
    wait_for(lambda: all((raw_meta(backend, i) or {}).get("status") == "SUCCESS" for i in ids),
             60, "every result once the backend is back")
    wait_for(lambda: client.hlen("unacked") == 0, 20, "the acks after the stored results")
    assert w.alive


@pytest.mark.celeriac_only
def test_broker_link_gone_silent_is_replaced(make_worker, redis_factory, app_factory):
    """The broker stops answering on the worker's links without closing them (a dead
    NAT entry, a partition): the outstanding fetch gets no reply and no error. The worker
    gives the link up after BRPOP's timeout plus the command timeout (11 s), reconnects
    and consumes again. Heartbeats are off so that only the fetch can notice."""
    redis = redis_factory()
    proxy = SilentLinkProxy(redis.port)
    try:
        app = app_factory(redis)  # the producer talks to Redis directly
        w = make_worker(redis, broker_args=False,
                        extra=["-b", proxy.url(0), "--result-backend", redis.url(1),
                               "--without-heartbeat"])
        assert app.send_task("examples.add", args=(1, 1)).get(timeout=30) == 2
        assert proxy.silence() >= 2
        t0 = time.monotonic()
        r = app.send_task("examples.add", args=(2, 2))
        assert r.get(timeout=40) == 4
        took = time.monotonic() - t0
        assert took < 30, f"the task waited {took:.1f} s behind a silent broker link"
        assert w.alive
        log = w.logfile.read_text()
        if POOL_FETCH:  # the pool processes' BRPOP links: the read timeout ends them
            assert re.search(r"ForkPoolWorker-\d+\] broker connection lost during fetch", log), \
                log[-3000:]
        else:
            assert "no reply in 11 s" in log, log[-3000:]
    finally:
        proxy.close()


@pytest.mark.celeriac_only  # celeriac's pool processes and their sockets
def test_pool_processes_hold_none_of_the_main_process_links(make_worker, redis_factory,
                                                            app_factory):
    """A pool process opens its own Redis links; it must not keep the main process's
    (forked with it) open: when the main process drops a link, say one that went silent,
    Redis has to see it closed, or a BRPOP left waiting on it takes a message nobody
    reads. Checked on the first processes and on a replacement after kill -9."""
    from helpers import tcp_ports

    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2)
    assert [app.send_task("examples.add", args=(i, i)).get(timeout=30) for i in range(4)] \
        == [0, 2, 4, 6]

    def shared():
        main = tcp_ports(w.pid)
        assert main, "the main process has no TCP links?"
        return {kid: tcp_ports(kid) & main for kid in child_pids(w.pid)}

    assert all(not ports for ports in shared().values()), shared()
    kids = child_pids(w.pid)
    os.kill(kids[0], signal.SIGKILL)
    wait_for(lambda: len(child_pids(w.pid)) == 2 and kids[0] not in child_pids(w.pid), 20,
             "a replacement pool process")
    assert app.send_task("examples.add", args=(5, 5)).get(timeout=30) == 10
    assert all(not ports for ports in shared().values()), shared()
