"""Canvas and retries as a Celery 5.2 client sees them: chains, link / link_error,
groups, chords (Redis native join), retries, and a mixed fleet where a chain hops
between celeriac and a real Python worker.

With COMPAT_WORKER=python the same tests run against the real Celery worker
(compat/reference/canvas_ref.py registers the same task names), which is how the
expectations below were checked to be Celery's own behaviour.
"""
import json
import uuid
from datetime import datetime, timedelta, timezone

import pytest
from celery import chain, chord, group
from celery.exceptions import ChordError
from celery.result import AsyncResult

import conftest
from conftest import PYTHON, Worker, close_celery_app, make_celery_app
from helpers import RedisServer, poll_states, raw_meta, wait_for

TIMEOUT = 30


class CanvasWorker(Worker):
    """The worker under test; as a Python worker it also has mul/tsum/flaky."""

    def _python_command(self):
        return ["reference.canvas_ref" if a == "reference.refworker" else a
                for a in super()._python_command()]


class PyOnlyWorker(Worker):
    """A real Python Celery worker (solo pool) consuming only queue "py"."""

    def __init__(self, redis, logdir):
        super().__init__(redis, logdir, queues=("py",), concurrency=1, kind="python",
                         name=f"py{uuid.uuid4().hex[:6]}")

    def _python_command(self):
        return [PYTHON, "-m", "celery", "-A", "reference.canvas_ref",
                "-b", self.redis.url(0), "--result-backend", self.redis.url(1),
                "worker", "-P", "solo", "-Q", "py", "-c", "1",
                "--without-mingle", "--without-gossip", "-n", f"{self.name}@%h",
                "-l", "info", "--pidfile", str(self.pidfile), "--logfile", str(self.logfile)]


@pytest.fixture(scope="module")
def canvas_redis(basedir):
    server = RedisServer(basedir).start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def _canvas_worker(canvas_redis, basedir):
    conftest._check_binary()
    w = CanvasWorker(canvas_redis, basedir, queues=("celery", "c"), concurrency=2,
                     name="canvas").start()
    yield w
    w.stop()
    conftest._keep_logs(w)


@pytest.fixture
def cw(request, _canvas_worker):
    """The canvas worker; fails the test if it died or printed sanitizer reports."""
    conftest._attach(request, _canvas_worker)
    yield _canvas_worker
    if not _canvas_worker.alive:
        pytest.fail(f"the canvas worker died\n{_canvas_worker.describe()}", pytrace=False)
    errors = _canvas_worker.sanitizer_errors()
    if errors:
        pytest.fail(f"sanitizer reports from the canvas worker: {errors}", pytrace=False)


@pytest.fixture(scope="module")
def app(canvas_redis):
    a = make_celery_app(canvas_redis)
    yield a
    close_celery_app(a)


def outcome(app, task_id, state="SUCCESS"):
    """The result (or exception) of a task we did not send ourselves.

    Polled rather than AsyncResult.get(): Celery's client keeps one pending
    result per id, and the parent's children already registered one."""
    got, info = poll_states(AsyncResult(task_id, app=app), TIMEOUT)[-1]
    assert got == state, (got, info)
    return info


def sig(app, name, *args, **options):
    return app.signature(name, args=args, **({"options": options} if options else {}))


# ---------------------------------------------------------------------------- chains


def test_chain_of_three(cw, app, canvas_redis):
    c = chain(app.signature("examples.add", args=(1, 2)),
              app.signature("examples.add", args=(3,)),
              app.signature("examples.add", args=(4,)))
    r = c.apply_async()
    assert r.get(timeout=TIMEOUT) == 10
    assert r.parent.get(timeout=TIMEOUT) == 6
    first = r.parent.parent
    assert first.get(timeout=TIMEOUT) == 3
    # Each step lists the next one in children (sent before the result was stored).
    assert raw_meta(canvas_redis, first.id)["children"] == [[[r.parent.id, None], None]]
    assert raw_meta(canvas_redis, r.id)["children"] == []
    assert raw_meta(canvas_redis, r.id)["parent_id"] == r.parent.id


def test_chain_immutable_and_kwargs(cw, app):
    c = chain(sig(app, "examples.add", 1, 1),
              app.signature("examples.mul", args=(10, 10), immutable=True),
              app.signature("examples.add", kwargs={"y": 5}))
    assert c.apply_async().get(timeout=TIMEOUT) == 105


def test_chain_failing_middle_step(cw, app, canvas_redis):
    c = chain(sig(app, "examples.add", 1, 2),
              app.signature("examples.fail", args=("middle broke",), immutable=True),
              sig(app, "examples.add", 4))
    r = c.apply_async()
    with pytest.raises(ValueError, match="middle broke"):
        r.get(timeout=TIMEOUT)
    with pytest.raises(ValueError, match="middle broke"):
        r.parent.get(timeout=TIMEOUT)
    assert r.parent.parent.get(timeout=TIMEOUT) == 3
    # The last step's FAILURE is written right after the failing step's own
    # (get() follows parents, so it may return before that).
    meta = wait_for(lambda: raw_meta(canvas_redis, r.id), TIMEOUT, "the last step's meta")
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ValueError"


def test_chain_with_group_becomes_chord(cw, app):
    """chain(task, group, task): Celery turns group + task into a chord, which the
    worker that finishes the first step applies."""
    c = chain(sig(app, "examples.add", 1, 1),
              group(sig(app, "examples.add", 1), sig(app, "examples.add", 2)),
              app.signature("examples.tsum"))
    assert c.apply_async().get(timeout=TIMEOUT) == 7


# ----------------------------------------------------------------------- link / link_error


def test_link_callback(cw, app, canvas_redis):
    cb_id = str(uuid.uuid4())
    s = sig(app, "examples.add", 2, 2).set(link=app.signature("examples.echo").set(task_id=cb_id))
    r = s.apply_async()
    assert r.get(timeout=TIMEOUT) == 4
    assert outcome(app, cb_id) == {"args": [4], "kwargs": {}}
    assert raw_meta(canvas_redis, r.id)["children"] == [[[cb_id, None], None]]
    cb_meta = raw_meta(canvas_redis, cb_id)
    assert cb_meta["parent_id"] == r.id
    assert "group_id" not in cb_meta


def test_two_link_callbacks_form_a_group(cw, app, canvas_redis):
    ids = [str(uuid.uuid4()), str(uuid.uuid4())]
    r = sig(app, "examples.add", 3, 4).apply_async(link=[
        app.signature("examples.echo", args=("a",)).set(task_id=ids[0]),
        app.signature("examples.mul", args=(10,)).set(task_id=ids[1])])
    assert r.get(timeout=TIMEOUT) == 7
    assert outcome(app, ids[0]) == {"args": [7, "a"], "kwargs": {}}
    assert outcome(app, ids[1]) == 70
    gids = {raw_meta(canvas_redis, i)["group_id"] for i in ids}
    assert len(gids) == 1
    children = raw_meta(canvas_redis, r.id)["children"]
    assert len(children) == 1 and children[0][0][0] == gids.pop()
    assert sorted(c[0][0] for c in children[0][1]) == sorted(ids)


def test_link_error_errback_gets_failed_task_id(cw, app, canvas_redis):
    """An errback taking one argument is sent as a task with (failed task id,).
    (A Python worker would call a registered errback with more parameters
    in-process instead; celeriac always sends it.)"""
    eb_id = str(uuid.uuid4())
    r = sig(app, "examples.fail", "bad input").apply_async(
        link_error=app.signature("examples.log_error").set(task_id=eb_id),
        link=app.signature("examples.echo"))
    with pytest.raises(ValueError, match="bad input"):
        r.get(timeout=TIMEOUT)
    assert outcome(app, eb_id) == f"logged failure of {r.id}"
    eb_meta = raw_meta(canvas_redis, eb_id)
    assert eb_meta["parent_id"] == r.id
    assert "group_id" in eb_meta  # old-style errbacks are sent as a group
    assert raw_meta(canvas_redis, r.id)["children"] == []  # the link did not run


# ------------------------------------------------------------------------- groups, chords


def test_group(cw, app):
    g = group(sig(app, "examples.add", i, i) for i in range(5))
    assert g.apply_async().get(timeout=TIMEOUT) == [0, 2, 4, 6, 8]


def test_chord(cw, app, canvas_redis):
    c = chord([sig(app, "examples.add", i, i) for i in range(1, 6)],
              app.signature("examples.tsum"))
    r = c.apply_async()
    assert r.get(timeout=TIMEOUT) == 30
    gid = r.parent.id
    db = canvas_redis.client(1)
    keys = [f"celery-taskset-meta-{gid}{suffix}" for suffix in (".j", ".t", ".s")]
    # Deleted right after the body is sent (the body may finish first).
    wait_for(lambda: not db.exists(*keys), TIMEOUT, "the chord join keys to be deleted")
    body_meta = raw_meta(canvas_redis, r.id)
    assert body_meta["status"] == "SUCCESS"
    assert body_meta["parent_id"] in [res.id for res in r.parent.results]


def test_chord_body_extra_args_and_order(cw, app):
    """Results reach the body in header order; body args follow the result list."""
    c = chord([sig(app, "examples.echo", i) for i in range(6)],
              app.signature("examples.echo", args=("tail",)))
    out = c.apply_async().get(timeout=TIMEOUT)
    assert out["args"][0] == [{"args": [i], "kwargs": {}} for i in range(6)]
    assert out["args"][1:] == ["tail"]


def test_chord_with_failing_member(cw, app, canvas_redis):
    c = chord([sig(app, "examples.add", 1, 1), sig(app, "examples.fail", "part failed")],
              app.signature("examples.tsum"))
    r = c.apply_async()
    # get() follows parents first (Celery's client), so the header's own
    # exception is raised; the body itself failed with ChordError.
    with pytest.raises(ValueError, match="part failed"):
        r.get(timeout=TIMEOUT)
    bad = r.parent.results[1].id
    exc = outcome(app, r.id, state="FAILURE")
    assert isinstance(exc, ChordError)
    assert str(exc) == f"Dependency {bad} raised ValueError('part failed')"
    with pytest.raises(ChordError):
        AsyncResult(r.id, app=app).get(timeout=TIMEOUT, follow_parents=False)
    meta = raw_meta(canvas_redis, r.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "ChordError"
    assert meta["result"]["exc_module"] == "celery.exceptions"


# ------------------------------------------------------------------------------ retries


def test_retry_until_success(cw, app, canvas_redis):
    r = app.send_task("examples.flaky", args=(2,))
    retry_meta = wait_for(lambda: (m := raw_meta(canvas_redis, r.id)) and m["status"] == "RETRY"
                          and m, TIMEOUT, "the RETRY state", interval=0.02)
    assert retry_meta["result"] == {"exc_type": "RuntimeError",
                                    "exc_message": ["transient failure"],
                                    "exc_module": "builtins"}
    assert retry_meta["children"] == [[[r.id, None], None]]
    assert retry_meta["date_done"] is None
    assert "Retry in" in retry_meta["traceback"]
    states = poll_states(r, TIMEOUT)
    assert states[-1][0] == "SUCCESS"
    assert r.get(timeout=TIMEOUT) == "ok after 2 retries"


def test_retry_resends_time_limits_and_expiry(cw, app, canvas_redis):
    """The retried message carries the original timelimit and expires headers
    (Celery's Task.retry() copies them from the request). The pool process
    reads them from the envelope only when a task retries, so this is the
    check that it does.

    Celery 5.2.6 itself cannot retry a task that has expires: its retry
    passes the request's ISO string to send_task(), which compares it with 0
    and fails with TypeError (seen with COMPAT_WORKER=python). So against
    Python only the time limits are checked; celeriac re-sends expires as it
    came."""
    python = conftest.WORKER_KIND == "python"
    expires = (datetime.now(timezone.utc) + timedelta(minutes=10)).replace(microsecond=123456)
    r = app.send_task("examples.flaky", args=(1,), time_limit=30, soft_time_limit=20,
                      expires=None if python else expires)
    db = canvas_redis.client(0)

    def retried():
        # The retry waits out its countdown (0.5 s) reserved in unacked.
        for raw in db.hvals("unacked"):
            message = json.loads(raw)[0]
            headers = message["headers"]
            if headers.get("id") == r.id and headers.get("retries") == 1:
                return headers
        return None

    headers = wait_for(retried, TIMEOUT, "the retried message in unacked", interval=0.01)
    assert headers["timelimit"] == [30, 20]
    assert headers["expires"] == (None if python else expires.isoformat())
    assert r.get(timeout=TIMEOUT) == "ok after 1 retries"


def test_retry_keeps_chain_going(cw, app):
    c = chain(app.signature("examples.flaky", args=(1,)), app.signature("examples.echo"))
    assert c.apply_async().get(timeout=TIMEOUT) == {"args": ["ok after 1 retries"], "kwargs": {}}


def test_retry_exhausted_fails_with_original_exception(cw, app, canvas_redis):
    r = app.send_task("examples.flaky", args=(5,), kwargs={"max_retries": 1})
    with pytest.raises(RuntimeError, match="transient failure"):
        r.get(timeout=TIMEOUT)
    meta = raw_meta(canvas_redis, r.id)
    assert meta["status"] == "FAILURE"
    assert meta["result"]["exc_type"] == "RuntimeError"


def test_retry_default_max_retries_is_three(cw, app):
    r = app.send_task("examples.flaky", args=(4,))
    with pytest.raises(RuntimeError):
        r.get(timeout=TIMEOUT)
    assert app.send_task("examples.flaky", args=(3,)).get(timeout=TIMEOUT) == "ok after 3 retries"


# --------------------------------------------------------------------------- mixed fleet


def test_mixed_fleet_chain(cw, app, canvas_redis, basedir, request):
    """Steps alternate between queue "c" (the worker under test) and queue "py"
    (a real Python worker with a Python-only task)."""
    py = PyOnlyWorker(canvas_redis, basedir)
    conftest._attach(request, py)
    py.start()
    try:
        c = chain(app.signature("examples.add", args=(1, 2), queue="c"),
                  app.signature("pyonly.double", queue="py"),
                  app.signature("examples.add", args=(10,), queue="c"),
                  app.signature("pyonly.double", queue="py"),
                  app.signature("examples.mul", args=(3,), queue="c"))
        r = c.apply_async()
        assert r.get(timeout=60) == 96
        assert r.parent.get(timeout=TIMEOUT) == 32
    finally:
        py.stop()
        conftest._keep_logs(py)
