"""celeriac's command line: Celery's flag names, env variables, config file, signals."""
import base64
import json
import re
import signal
import socket
import subprocess
import uuid

import pytest

from conftest import CELERIAC_BIN
import os

from helpers import child_pids, wait_for

def _run(*args, env=None, timeout=20):
    return subprocess.run([CELERIAC_BIN, *args], capture_output=True, text=True,
                          timeout=timeout, env=env, stdin=subprocess.DEVNULL)


@pytest.mark.celeriac_only
def test_help_lists_options(make_worker):
    p = _run("worker", "--help")
    assert p.returncode == 0, p.stderr
    for opt in ("--broker", "--result-backend", "--queues", "--concurrency", "--hostname",
                "--loglevel", "--prefetch-multiplier", "--pidfile", "--logfile",
                "--task-acks-late", "--visibility-timeout", "--result-expires",
                "--task-track-started", "--task-alias", "--plugin", "--config", "-E"):
        assert opt in p.stdout, f"{opt} missing from --help"


@pytest.mark.celeriac_only
@pytest.mark.parametrize("argv", [["worker", "--no-such-flag"], ["worker", "-c"],
                                  ["worker", "-c", "many"]])
def test_bad_flags_exit_64_with_one_line(make_worker, argv):
    p = _run(*argv)
    assert p.returncode == 64, (p.returncode, p.stdout, p.stderr)
    lines = [line for line in p.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected a one-line error, got: {p.stderr!r}"


@pytest.mark.celeriac_only
def test_unknown_command_exits_64(make_worker):
    p = _run("frobnicate")
    assert p.returncode == 64, (p.returncode, p.stderr)
    assert "frobnicate" in p.stderr


def _bare_env(**extra):
    import os

    env = {k: v for k, v in os.environ.items() if not k.startswith("CELERY_")
           and k not in ("REDIS_URL", "CELERIAC_CONFIG")}
    env.update(extra)
    return env


@pytest.mark.celeriac_only
def test_env_configuration(make_worker, redis_factory, app_factory):
    """No -b: CELERY_BROKER_URL / CELERY_RESULT_BACKEND / CELERY_<SETTING> from the env."""
    redis = redis_factory()
    app = app_factory(redis)
    make_worker(redis, broker_args=False,
                env={"CELERY_BROKER_URL": redis.url(0), "CELERY_RESULT_BACKEND": redis.url(1),
                     "CELERY_RESULT_EXPIRES": "77", "CELERY_TASK_TRACK_STARTED": "1"})
    r = app.send_task("examples.add", args=(1, 2))
    assert r.get(timeout=15) == 3
    ttl = redis.client(1).ttl(f"celery-task-meta-{r.id}")
    assert 0 < ttl <= 77, ttl


@pytest.mark.celeriac_only
def test_redis_url_is_broker_fallback(make_worker, redis_factory, app_factory):
    redis = redis_factory()
    app = app_factory(redis)
    make_worker(redis, broker_args=False,
                env={"REDIS_URL": redis.url(0), "CELERY_RESULT_BACKEND": redis.url(1)})
    assert app.send_task("examples.add", args=(2, 2)).get(timeout=15) == 4


@pytest.mark.celeriac_only
def test_config_file(make_worker, redis_factory, app_factory, tmp_path):
    redis = redis_factory()
    app = app_factory(redis)
    conf = tmp_path / "celeriac.conf"
    conf.write_text("# celeriac config\n"
                    f"broker_url = {redis.url(0)}\n"
                    f"result_backend = {redis.url(1)}\n"
                    "result_expires = 55\n"
                    "\n")
    make_worker(redis, broker_args=False, extra=["--config", str(conf)])
    r = app.send_task("examples.add", args=(3, 4))
    assert r.get(timeout=15) == 7
    assert 0 < redis.client(1).ttl(f"celery-task-meta-{r.id}") <= 55


@pytest.mark.celeriac_only
def test_flags_override_env(make_worker, redis_factory, app_factory):
    """-b wins over CELERY_BROKER_URL (which points at a port nobody listens on)."""
    redis = redis_factory()
    app = app_factory(redis)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    make_worker(redis, env={"CELERY_BROKER_URL": f"redis://127.0.0.1:{dead}/0"})
    assert app.send_task("examples.add", args=(5, 5)).get(timeout=15) == 10


def test_pidfile_hostname_and_sigterm(make_worker, redis_factory):
    redis = redis_factory()
    w = make_worker(redis, name="nodeA")
    assert int(w.pidfile.read_text().strip()) == w.pid
    text = w.logfile.read_text()
    assert re.search(r"nodeA@\S+ ready\.", text), text
    w.proc.send_signal(signal.SIGTERM)
    assert w.proc.wait(20) == 0


@pytest.mark.celeriac_only
@pytest.mark.parametrize("flag,policy", [(None, os.SCHED_BATCH),
                                         ("--pool-sched-batch=false", os.SCHED_OTHER)])
def test_pool_processes_scheduling_policy(make_worker, redis_factory, flag, policy):
    """Pool processes run under SCHED_BATCH by default (waking one to hand it work does not
    preempt the main process); worker_pool_sched_batch=false keeps the default policy. The
    main process keeps the default either way."""
    redis = redis_factory()
    w = make_worker(redis, concurrency=2, extra=[flag] if flag else [])
    kids = wait_for(lambda: child_pids(w.pid) if len(child_pids(w.pid)) == 2 else None, 10,
                    "two pool processes")
    assert [os.sched_getscheduler(k) for k in kids] == [policy, policy]
    assert os.sched_getscheduler(w.pid) == os.SCHED_OTHER


@pytest.mark.celeriac_only
def test_broker_unavailable_at_startup(make_worker, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = s.getsockname()[1]
    p = subprocess.Popen([CELERIAC_BIN, "worker", "-b", f"redis://127.0.0.1:{dead}/0",
                          "--logfile", str(tmp_path / "w.log")],
                         stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, env=_bare_env())
    try:
        # Either it retries (still running) or it gives up with a non-zero status;
        # it must not claim to be ready.
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            pass
        log = (tmp_path / "w.log").read_text() if (tmp_path / "w.log").exists() else ""
        assert "ready." not in log
        assert p.returncode in (None, 69), p.returncode
    finally:
        p.kill()
        p.wait(10)


def test_events_are_published_with_E(worker, shared_redis, celery_app):
    """-E: task events on /0.celeryev/task.* for Flower-style monitors."""
    pubsub = shared_redis.client(0).pubsub()
    pubsub.psubscribe("/0.celeryev/*")
    try:
        wait_for(lambda: pubsub.get_message(timeout=0.1), 5, "psubscribe confirmation")
        r = celery_app.send_task("examples.add", args=(1, 1))
        r.get(timeout=15)
        types = set()

        def got_succeeded():
            msg = pubsub.get_message(timeout=0.2)
            if msg and msg["type"] == "pmessage":
                env = json.loads(msg["data"])
                body = json.loads(base64.b64decode(env["body"]))
                for ev in body if isinstance(body, list) else [body]:
                    if ev.get("uuid") == r.id:
                        types.add(ev["type"])
            return "task-succeeded" in types

        wait_for(got_succeeded, 15, "task-succeeded event")
    finally:
        pubsub.close()


def test_inspect_ping(worker, celery_app):
    """Remote control: `celery inspect ping` reaches the worker's pidbox."""
    replies = celery_app.control.inspect(timeout=3).ping() or {}
    mine = {node: reply for node, reply in replies.items() if node.startswith("shared@")}
    assert mine, f"no ping reply from the shared worker: {replies}"
    assert list(mine.values()) == [{"ok": "pong"}]


def test_second_worker_same_queue_shares_load(make_worker, shared_redis, celery_app):
    q = f"share-{uuid.uuid4().hex[:6]}"
    one = make_worker(shared_redis, queues=[q], concurrency=1, name="one",
                      extra=["--prefetch-multiplier", "1"])
    two = make_worker(shared_redis, queues=[q], concurrency=1, name="two",
                      extra=["--prefetch-multiplier", "1"])
    results = [celery_app.send_task("examples.sleep", args=(0.5,), queue=q) for _ in range(6)]
    for r in results:
        r.get(timeout=30)
    for w in (one, two):
        assert "received" in w.logfile.read_text(), f"{w.name} got no task"
