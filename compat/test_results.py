"""Results, states and result-backend keys as a Celery 5.2 client sees them."""
import json
import socket
import uuid

import pytest
from celery.result import AsyncResult

from helpers import poll_states, raw_meta, wait_for


def test_add_returns_result(worker, celery_app):
    assert celery_app.send_task("examples.add", args=(2, 3)).get(timeout=15) == 5


def test_kwargs_and_large_integers(worker, celery_app):
    r = celery_app.send_task("examples.add", kwargs={"x": 2**40, "y": -7})
    assert r.get(timeout=15) == 2**40 - 7


def test_echo_round_trips_json_values(worker, celery_app):
    args = ["text", "ünïcødé ✓ 日本語", 1, -2, 3.5, True, False, None, [1, [2, [3]]], {"k": {"n": [None]}}]
    kwargs = {"empty": "", "list": [], "obj": {}, "quote": 'a "quoted" \\ line\n', "big": 2**53}
    result = celery_app.send_task("examples.echo", args=args, kwargs=kwargs).get(timeout=15)
    assert result == {"args": args, "kwargs": kwargs}


def test_many_tasks_all_complete(worker, celery_app):
    results = [celery_app.send_task("examples.add", args=(i, i)) for i in range(60)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(60)]


def test_result_document_in_backend(worker, celery_app, shared_redis):
    """The stored meta is what Celery's own backend writes (§4.2): same keys, TTL 1 day."""
    r = celery_app.send_task("examples.add", args=(20, 22))
    assert r.get(timeout=15) == 42
    meta = raw_meta(shared_redis, r.id)
    assert meta["status"] == "SUCCESS"
    assert meta["result"] == 42
    assert meta["task_id"] == r.id
    assert meta["traceback"] is None
    assert meta["children"] == []
    assert isinstance(meta["date_done"], str) and meta["date_done"][:2] == "20"
    assert r.date_done is not None  # Celery parses date_done
    ttl = shared_redis.client(1).ttl(f"celery-task-meta-{r.id}")
    assert 86000 < ttl <= 86400, f"default result_expires should be 1 day, TTL is {ttl}"


def test_custom_task_id_and_asyncresult_by_id(worker, celery_app):
    task_id = f"order-{uuid.uuid4()}"
    celery_app.send_task("examples.add", args=(1, 1), task_id=task_id)
    again = AsyncResult(task_id, app=celery_app)
    assert again.get(timeout=15) == 2
    assert again.successful()


def test_unknown_id_is_pending(worker, celery_app):
    assert AsyncResult(str(uuid.uuid4()), app=celery_app).state == "PENDING"


def test_task_track_started_shows_started(worker, celery_app):
    """The shared worker runs with --task-track-started: STARTED with pid/hostname."""
    r = celery_app.send_task("examples.sleep", args=(1.5,))
    seen = poll_states(r, timeout=20, interval=0.02)
    states = [s for s, _ in seen]
    assert "STARTED" in states, states
    started_info = dict(seen)["STARTED"]
    assert isinstance(started_info, dict) and "pid" in started_info and "hostname" in started_info
    assert started_info["hostname"].startswith("shared@")
    assert states[-1] == "SUCCESS"


def test_progress_states_are_visible(worker, celery_app):
    """examples.progress(steps, delay): AsyncResult.state/info polled like a dashboard."""
    r = celery_app.send_task("examples.progress", args=(8, 0.25))
    seen = poll_states(r, timeout=40, interval=0.02)
    progress = [info for state, info in seen if state == "PROCESSING"]
    assert progress, f"no PROCESSING state observed: {seen}"
    assert all(isinstance(i, dict) and "progress" in i for i in progress), progress
    values = [i["progress"] for i in progress]
    assert values == sorted(values), f"progress went backwards: {values}"
    assert len(progress) >= 3, f"only {len(progress)} of 8 steps observed: {seen}"
    assert seen[-1] == ("SUCCESS", "done")


def test_ignore_result_stores_nothing(make_worker, shared_redis, celery_app):
    """ignore_result=True (header, Celery >= 5.1): the task runs, nothing is stored."""
    q = f"ign-{uuid.uuid4().hex[:8]}"
    make_worker(shared_redis, queues=[q], concurrency=1)
    ignored = celery_app.send_task("examples.add", args=(1, 2), queue=q, ignore_result=True)
    marker = celery_app.send_task("examples.add", args=(3, 4), queue=q)
    assert marker.get(timeout=15) == 7  # -c 1 and FIFO: the ignored one ran before
    assert shared_redis.client(1).exists(f"celery-task-meta-{ignored.id}") == 0


def test_result_expires_sets_ttl(make_worker, shared_redis, celery_app):
    q = f"exp-{uuid.uuid4().hex[:8]}"
    make_worker(shared_redis, queues=[q], extra=["--result-expires", "120"])
    r = celery_app.send_task("examples.add", args=(1, 2), queue=q)
    assert r.get(timeout=15) == 3
    ttl = shared_redis.client(1).ttl(f"celery-task-meta-{r.id}")
    assert 0 < ttl <= 120, ttl


def test_task_alias_with_delay(worker, myapp):
    """Users call tasks by module path: myapp.tasks.add.delay() under --task-alias."""
    from myapp.tasks import add

    assert add.delay(40, 2).get(timeout=15) == 42
    assert add.apply_async((1, 2), countdown=0).get(timeout=15) == 3


def test_result_get_waits_via_pubsub(worker, celery_app):
    """AsyncResult.get() subscribes to celery-task-meta-<id>: the PUBLISH must happen."""
    r = celery_app.send_task("examples.sleep", args=(0.5,))
    r.get(timeout=15, interval=5)  # polling every 5 s would be slow; pubsub is not
    assert r.state == "SUCCESS"
    r2 = celery_app.send_task("examples.add", args=(1, 1))
    wait_for(lambda: r2.ready(), 15, "second result")


@pytest.mark.parametrize("n", [3])
def test_concurrency_runs_tasks_in_parallel(make_worker, shared_redis, celery_app, n):
    """-c 3: three 2 s sleeps finish together, well before 6 s."""
    import time

    q = f"par-{uuid.uuid4().hex[:8]}"
    make_worker(shared_redis, queues=[q], concurrency=n)
    t0 = time.monotonic()
    results = [celery_app.send_task("examples.sleep", args=(2,), queue=q) for _ in range(n)]
    for r in results:
        r.get(timeout=20)
    assert time.monotonic() - t0 < 2 * n - 1


@pytest.mark.celeriac_only  # which celeriac process writes a result
@pytest.mark.handoff_pool
def test_lone_result_stored_by_its_process_and_floods_batched_by_the_main_one(
        make_worker, redis_factory, app_factory):
    """A lone task on a quiet worker stores its own result (one hop less before the
    waiting client sees it); under a backlog the main process stores the results its pool
    processes send back, several per script call. Seen in Redis's MONITOR: which
    connection ran the store script, and with how many keys."""
    from helpers import MonitorLog, child_pids, tcp_ports

    redis = redis_factory()
    app = app_factory(redis)
    w = make_worker(redis, concurrency=2)
    warm = [app.send_task("examples.add", args=(i, i)) for i in range(4)]
    assert [r.get(timeout=30) for r in warm] == [0, 2, 4, 6]
    mon = MonitorLog(redis)
    try:
        lone = app.send_task("examples.add", args=(20, 22))
        assert lone.get(timeout=30) == 42
        key = f"celery-task-meta-{lone.id}"
        wait_for(lambda: any(c[1][:1] == ["EVALSHA"] and key in c[1] for c in mon.commands),
                 10, "the lone task's store in MONITOR")
        node = f"{w.name}@{socket.gethostname()}"
        assert app.control.cancel_consumer("celery", destination=[node], reply=True, timeout=10)
        flood = [app.send_task("examples.add", args=(i, 1)) for i in range(300)]
        assert app.control.add_consumer("celery", destination=[node], reply=True, timeout=10)
        assert [r.get(timeout=60) for r in flood] == [i + 1 for i in range(300)]
        flood_keys = {f"celery-task-meta-{r.id}" for r in flood}

        def store_calls():
            return [(port, words) for port, words in list(mon.commands)
                    if words[:1] == ["EVALSHA"]
                    and any(x.startswith("celery-task-meta-") for x in words)]

        def seen():
            got = set()
            for _, words in store_calls():
                got |= flood_keys.intersection(words)
            return got
        # MONITOR output arrives behind the commands: wait until it shows every store
        wait_for(lambda: seen() == flood_keys, 30, "every flood store in MONITOR")
        main_ports, kid_ports = tcp_ports(w.pid), set()
        for kid in child_pids(w.pid):
            kid_ports |= tcp_ports(kid)
    finally:
        mon.stop()
    # pool processes are forked with the main process's broker links open: the
    # main process's own ports are the ones no pool process has
    main_only = main_ports - kid_ports
    stores = store_calls()
    lone_store = [port for port, words in stores if key in words]
    assert lone_store and lone_store[0] in kid_ports - main_ports, (lone_store, kid_ports,
                                                                     main_ports)
    by_main = [words for port, words in stores
               if port in main_only and flood_keys.intersection(words)]
    assert by_main, ("no flood result stored by the main process",
                     sorted({port for port, _ in stores}), main_ports, kid_ports)
    assert max(int(words[2]) for words in by_main) > 1, "never two results in one call"


@pytest.mark.celeriac_only  # Celery 5.2's own worker has no result-backend key prefix
def test_result_backend_global_keyprefix(make_worker, redis_factory, app_factory):
    """Celery >= 5.3's result_backend_transport_options={'global_keyprefix': 'res'}:
    every result key becomes 'res_celery-task-meta-<id>' (Celery adds '_' unless the
    prefix ends in ':_-.'). The oracle here is Celery 5.2, so the client gets the
    prefixes that 5.3's _add_global_keyprefix would give it, on its backend object;
    AsyncResult.get() then subscribes to and reads the prefixed keys, and a chord's
    join keys live under the group prefix."""
    from celery import chord

    redis = redis_factory()
    app = app_factory(redis)
    app.backend.task_keyprefix = b"res_celery-task-meta-"
    app.backend.group_keyprefix = b"res_celery-taskset-meta-"
    app.backend.chord_keyprefix = b"res_chord-unlock-"
    make_worker(redis, extra=["--result-backend-global-keyprefix", "res"])
    results = [app.send_task("examples.add", args=(i, i)) for i in range(10)]
    assert [r.get(timeout=30) for r in results] == [2 * i for i in range(10)]
    lone = app.send_task("examples.add", args=(20, 22))  # stored by its pool process
    assert lone.get(timeout=30) == 42
    failed = app.send_task("examples.fail", args=("boom",))
    with pytest.raises(Exception, match="boom"):
        failed.get(timeout=30)
    c = chord([app.signature("examples.add", args=(i, i)) for i in range(1, 6)],
              app.signature("examples.tsum"))
    assert c.apply_async().get(timeout=30) == 30
    db = redis.client(1)
    keys = [k.decode() for k in db.keys("*")]
    assert keys and all(k.startswith("res_celery-task") for k in keys), keys
    assert db.get(f"celery-task-meta-{results[0].id}") is None
    meta = json.loads(db.get(f"res_celery-task-meta-{results[0].id}"))
    assert meta["status"] == "SUCCESS" and meta["result"] == 0
