"""Redis priorities: kombu's priority sub-queues, lower numbers served first."""
import socket
import uuid
from datetime import datetime

import pytest

from conftest import POOL_FETCH
from helpers import raw_meta, wait_for


def test_priority_order(make_worker, shared_redis, celery_app):
    """Fill the queue with priority 9 then priority 0 messages while no worker runs;
    a -c 1 --prefetch-multiplier 1 worker must run every 0 before any 9."""
    q = f"prio-{uuid.uuid4().hex[:8]}"
    low = [celery_app.send_task("examples.echo", args=["p9", i], queue=q, priority=9)
           for i in range(8)]
    mid = [celery_app.send_task("examples.echo", args=["p5", i], queue=q, priority=5)
           for i in range(4)]
    high = [celery_app.send_task("examples.echo", args=["p0", i], queue=q, priority=0)
            for i in range(8)]
    broker = shared_redis.client(0)
    assert broker.llen(q) == 8 and broker.llen(f"{q}\x06\x169") == 8
    assert broker.llen(f"{q}\x06\x163") == 4
    make_worker(shared_redis, queues=[q], concurrency=1,
                extra=["--prefetch-multiplier", "1"])
    for r in high + mid + low:
        r.get(timeout=30)

    def done(r):
        return datetime.fromisoformat(raw_meta(shared_redis, r.id)["date_done"].replace("Z", ""))

    order = sorted(high + mid + low, key=done)
    labels = [r.result["args"][0] for r in order]
    assert labels == ["p0"] * 8 + ["p5"] * 4 + ["p9"] * 8, labels
    # FIFO inside one priority level
    assert [r.result["args"][1] for r in order[:8]] == list(range(8))


def test_multiple_queues(make_worker, shared_redis, celery_app):
    """-Q a,b consumes both queues."""
    qa, qb = f"qa-{uuid.uuid4().hex[:6]}", f"qb-{uuid.uuid4().hex[:6]}"
    make_worker(shared_redis, queues=[qa, qb], concurrency=2)
    ra = celery_app.send_task("examples.add", args=(1, 2), queue=qa)
    rb = celery_app.send_task("examples.add", args=(3, 4), queue=qb, priority=6)
    assert ra.get(timeout=15) == 3 and rb.get(timeout=15) == 7


@pytest.mark.celeriac_only  # the Python worker takes these options from its app config
def test_transport_options_layout(make_worker, shared_redis):
    """The common production setting broker_transport_options={'priority_steps':
    list(range(10)), 'sep': ':', 'queue_order_strategy': 'priority'}: the real
    producer pushes to q, q:1 ... q:9; a worker started with the same options
    consumes them all, lower numbers first."""
    from conftest import close_celery_app, make_celery_app

    app = make_celery_app(shared_redis, broker_transport_options={
        "priority_steps": list(range(10)), "sep": ":", "queue_order_strategy": "priority"})
    q = f"layout-{uuid.uuid4().hex[:8]}"
    try:
        sent = [app.send_task("examples.echo", args=[f"p{p}", i], queue=q, priority=p)
                for p in (9, 4, 1, 0) for i in range(3)]
        broker = shared_redis.client(0)
        assert broker.llen(q) == 3
        assert all(broker.llen(f"{q}:{p}") == 3 for p in (1, 4, 9))
        make_worker(shared_redis, queues=[q], concurrency=1,
                    extra=["--prefetch-multiplier", "1", "--sep", ":",
                           "--priority-steps", "0,1,2,3,4,5,6,7,8,9",
                           "--queue-order-strategy", "priority"])
        for r in sent:
            r.get(timeout=30)

        def done(r):
            return datetime.fromisoformat(
                raw_meta(shared_redis, r.id)["date_done"].replace("Z", ""))

        labels = [r.result["args"][0] for r in sorted(sent, key=done)]
        assert labels == ["p0"] * 3 + ["p1"] * 3 + ["p4"] * 3 + ["p9"] * 3, labels
        assert all(broker.llen(f"{q}:{p}") == 0 for p in range(1, 10))
    finally:
        close_celery_app(app)


@pytest.mark.celeriac_only  # how celeriac pops a batch (the Python worker BRPOPs one at a time)
def test_batch_fetch_takes_every_message_once(make_worker, shared_redis, app_factory):
    """A backlog across priority levels is consumed in batches (the fetch script pops
    across the priority keys, reserving what waits for a process): every task runs
    exactly once, the levels are served in priority order, and unacked is empty at the
    end."""
    app = app_factory(shared_redis)
    q = f"batch-{uuid.uuid4().hex[:8]}"
    broker = shared_redis.client(0)
    levels = {0: 150, 5: 100, 9: 150}
    sent = [(p, i, app.send_task("examples.echo", args=[p, i], priority=p, queue=q))
            for p in (9, 5, 0) for i in range(levels[p])]
    assert broker.llen(q) == levels[0] and broker.llen(f"{q}\x06\x169") == levels[9]
    w = make_worker(shared_redis, queues=[q], concurrency=2)
    for p, i, r in sent:
        assert r.get(timeout=60)["args"] == [p, i]
    node = f"{w.name}@{socket.gethostname()}"
    stats = app.control.inspect(destination=[node], timeout=5).stats()
    assert stats[node]["total"].get("examples.echo") == len(sent), stats[node]["total"]
    done = {r.id: datetime.fromisoformat(raw_meta(shared_redis, r.id)["date_done"].replace("Z", ""))
            for _, _, r in sent}
    assert len(done) == len(sent)
    last = {p: max(done[r.id] for q_, _, r in sent if q_ == p) for p in levels}
    first = {p: min(done[r.id] for q_, _, r in sent if q_ == p) for p in levels}
    # with -c 2 and a prefetch window of 8, at most a window's worth overlaps
    late0 = sum(1 for q_, _, r in sent if q_ == 0 and done[r.id] > first[9])
    assert last[0] <= last[5] <= last[9] and late0 <= 8, (late0, first, last)
    wait_for(lambda: not any(q in (v or b"").decode(errors="replace")
                             for v in broker.hvals("unacked")), 20, "unacked to empty")


@pytest.mark.celeriac_only  # the Python worker takes these options from its app config
def test_global_keyprefix(make_worker, redis_factory, app_factory):
    """broker_transport_options={'global_keyprefix': 'pfx:'} (kombu's GlobalKeyPrefixMixin):
    the real producer's keys, the worker's reservations, its remote control and its
    events all live under the prefix; an unprefixed producer's message is not taken;
    a killed worker's reserved messages are restored under the prefix."""
    import signal

    redis = redis_factory()
    app = app_factory(redis, broker_transport_options={"global_keyprefix": "pfx:"})
    plain = app_factory(redis)
    broker = redis.client(0)
    events = broker.pubsub()
    events.psubscribe("pfx:/0.celeryev/*")
    q = f"kp-{uuid.uuid4().hex[:8]}"
    extra = ["--global-keyprefix", "pfx:", "-E", "--task-acks-late",
             "--visibility-timeout", "3", "--prefetch-multiplier", "2"]
    w = make_worker(redis, queues=[q], concurrency=2, extra=extra)
    sums = [app.send_task("examples.add", args=(i, i), queue=q) for i in range(20)]
    assert [r.get(timeout=30) for r in sums] == [2 * i for i in range(20)]

    # Remote control: the broadcast comes on pfx:/0.celery.pidbox, the reply goes to
    # the prefixed reply queue.
    node = f"{w.name}@{socket.gethostname()}"
    replies = app.control.ping(destination=[node], timeout=5)
    assert replies == [{node: {"ok": "pong"}}], replies
    # Events on the prefixed channels.
    seen = []

    def heard():
        m = events.get_message(timeout=0.2)
        if m and m["type"] == "pmessage":
            seen.append(m["channel"].decode())
        return any(c.startswith("pfx:/0.celeryev/task.") for c in seen)

    wait_for(heard, 15, "a task event on pfx:/0.celeryev/...")
    events.close()

    def unprefixed():
        return sorted(k.decode(errors="replace") for k in broker.keys("*")
                      if not k.startswith(b"pfx:"))

    assert unprefixed() == []

    # A message sent without the prefix is not for this worker.
    stray = plain.send_task("examples.add", args=(1, 1), queue=q)
    after = app.send_task("examples.add", args=(2, 2), queue=q)
    assert after.get(timeout=30) == 4
    assert broker.llen(q) == 1 and stray.state == "PENDING"
    assert broker.lpop(q) is not None

    # Reserved messages live in pfx:unacked and come back after a kill -9.
    blockers = [app.send_task("examples.sleep", args=(2,), queue=q) for _ in range(6)]
    held = 2 if POOL_FETCH else 4  # --pool-fetch: one long task at a time per process
    wait_for(lambda: broker.hlen("pfx:unacked") == held and broker.llen(f"pfx:{q}") == 6 - held,
             20, f"{held} messages reserved in pfx:unacked, {6 - held} still queued")
    assert w.kill9(group=True) == -signal.SIGKILL
    now = broker.time()
    start = now[0] + now[1] / 1e6

    def past_visibility():
        t = broker.time()
        return t[0] + t[1] / 1e6 - start > 4

    wait_for(past_visibility, 15, "the visibility timeout to pass")
    w.start()
    wait_for(lambda: all(r.state == "SUCCESS" for r in blockers), 60,
             "every reserved task to run after the restart")
    wait_for(lambda: broker.hlen("pfx:unacked") == 0, 20, "pfx:unacked to empty")
    # Only the unprefixed producer's own declaration of q lives outside the prefix.
    assert unprefixed() == [f"_kombu.binding.{q}"]
