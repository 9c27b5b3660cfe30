"""Failures as a Celery 5.2 client sees them: exception types re-raised by .get()."""
import uuid

import pytest
from celery.exceptions import NotRegistered
from kombu.exceptions import ContentDisallowed

from helpers import raw_meta, wait_for


def test_value_error_is_reraised(worker, celery_app, shared_redis):
    r = celery_app.send_task("examples.fail", args=("cannot process doc-101",))
    with pytest.raises(ValueError, match="cannot process doc-101") as ei:
        r.get(timeout=15)
    assert type(ei.value) is ValueError  # builtins.ValueError, not a synthetic class
    assert r.state == "FAILURE"
    assert r.failed()
    meta = raw_meta(shared_redis, r.id)
    assert meta["result"] == {"exc_type": "ValueError", "exc_message": ["cannot process doc-101"],
                              "exc_module": "builtins"}
    assert meta["date_done"]


def test_failure_with_propagate_false(worker, celery_app):
    r = celery_app.send_task("examples.fail", args=("soft",))
    exc = r.get(timeout=15, propagate=False)
    assert isinstance(exc, ValueError) and exc.args == ("soft",)


def test_unknown_task_is_not_registered(worker, celery_app, shared_redis):
    name = f"no.such.task_{uuid.uuid4().hex[:6]}"
    r = celery_app.send_task(name, args=(1,))
    with pytest.raises(NotRegistered) as ei:
        r.get(timeout=15)
    assert name in str(ei.value)
    assert raw_meta(shared_redis, r.id)["result"]["exc_module"] == "celery.exceptions"
    # The message is dropped, not requeued.
    wait_for(lambda: shared_redis.client(0).llen("celery") == 0, 10, "queue 'celery' to drain")


def _insecure_app(app_factory, redis, serializer):
    return app_factory(redis, accept_content=["json", serializer])


@pytest.mark.celeriac_only
def test_pickle_is_refused_with_content_disallowed(worker, app_factory, shared_redis):
    """Producer allows pickle, the worker must not: FAILURE ContentDisallowed, dropped.

    celeriac-only: the Python 5.2 worker logs "Received invalid task message: Refusing
    to deserialize untrusted content of type pickle" and stores nothing, so its
    clients wait forever (checked with COMPAT_WORKER=python). celeriac stores the
    FAILURE because the id is in the headers."""
    app = _insecure_app(app_factory, shared_redis, "pickle")
    r = app.send_task("examples.add", args=(1, 2), serializer="pickle")
    with pytest.raises(ContentDisallowed):
        r.get(timeout=15)
    wait_for(lambda: shared_redis.client(0).llen("celery") == 0, 10, "queue 'celery' to drain")
    # the worker still works
    assert app.send_task("examples.add", args=(1, 2)).get(timeout=15) == 3


@pytest.mark.celeriac_only
def test_yaml_is_refused_with_content_disallowed(worker, app_factory, shared_redis):
    pytest.importorskip("yaml")
    app = _insecure_app(app_factory, shared_redis, "yaml")
    r = app.send_task("examples.add", args=(1, 2), serializer="yaml")
    with pytest.raises(ContentDisallowed):
        r.get(timeout=15)


def test_worker_lost_error_and_worker_survives(make_worker, shared_redis, celery_app):
    """A segfault in a pool process: FAILURE WorkerLostError; the worker carries on."""
    q = f"crash-{uuid.uuid4().hex[:8]}"
    w = make_worker(shared_redis, queues=[q], concurrency=2)
    w.expect_crash_reports = True  # ASan prints a report for the intended SEGV
    r = celery_app.send_task("examples.crash", queue=q)
    with pytest.raises(Exception) as ei:
        r.get(timeout=30)
    assert type(ei.value).__name__ == "WorkerLostError", repr(ei.value)
    assert r.state == "FAILURE"
    assert w.alive
    # The pool replaced the dead process: both slots still run tasks.
    results = [celery_app.send_task("examples.add", args=(i, 1), queue=q) for i in range(6)]
    assert [x.get(timeout=20) for x in results] == [i + 1 for i in range(6)]
    r2 = celery_app.send_task("examples.crash", queue=q)
    with pytest.raises(Exception):
        r2.get(timeout=30)
    assert celery_app.send_task("examples.add", args=(2, 2), queue=q).get(timeout=20) == 4
    assert w.alive


def test_task_error_does_not_stop_next_task(worker, celery_app):
    failures = [celery_app.send_task("examples.fail", args=(f"boom {i}",)) for i in range(5)]
    ok = celery_app.send_task("examples.add", args=(5, 5))
    for i, r in enumerate(failures):
        with pytest.raises(ValueError, match=f"boom {i}"):
            r.get(timeout=15)
    assert ok.get(timeout=15) == 10


def test_wrong_arguments_fail_without_killing_worker(worker, celery_app):
    """examples.add with a missing argument: a FAILURE of some TypeError-like kind."""
    r = celery_app.send_task("examples.add", args=(1,))
    r.get(timeout=15, propagate=False)
    assert r.state == "FAILURE"
    assert celery_app.send_task("examples.add", args=(1, 1)).get(timeout=15) == 2


@pytest.mark.celeriac_only
def test_discarded_messages_leave_nothing_in_unacked(make_worker, shared_redis, app_factory):
    """Messages the worker discards (unknown task, refused content, expired) while
    it takes them in batches (a queue that already holds work) are acknowledged:
    nothing stays in kombu's unacked hash to be redelivered after the visibility
    timeout. celeriac-only: the Python 5.2 worker stores no result for refused
    content (see test_pickle_is_refused_with_content_disallowed), so the gets
    below would wait forever."""
    q = f"discard-{uuid.uuid4().hex[:8]}"
    app = app_factory(shared_redis, accept_content=["json", "pickle"])
    sent = []
    for i in range(40):
        sent.append(("add", app.send_task("examples.add", args=(i, 1), queue=q)))
        if i % 10 == 5:
            sent.append(("unknown", app.send_task(f"no.such.task_{i}", queue=q)))
            sent.append(("pickle", app.send_task("examples.add", args=(1, 2), queue=q,
                                                 serializer="pickle")))
            sent.append(("expired", app.send_task("examples.add", args=(1, 2), queue=q,
                                                  expires=0.001)))
    broker = shared_redis.client(0)
    assert broker.llen(q) == len(sent)  # all waiting before the worker starts
    make_worker(shared_redis, queues=[q], concurrency=2)
    for kind, r in sent:
        if kind == "add":
            r.get(timeout=30)
        else:
            with pytest.raises(Exception):
                r.get(timeout=30)
    wait_for(lambda: broker.llen(q) == 0 and broker.hlen("unacked") == 0, 20,
             "queue and unacked hash to empty")
