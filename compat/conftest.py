"""Fixtures that run real Celery 5.2 clients against a real celeriac worker.

Owns: private redis-server processes on free 127.0.0.1 ports, celeriac worker
processes (started, waited for, logged, stopped), and Celery apps configured the
way users configure theirs. Deliberately does not mock anything: every test talks
to a real redis-server and a real worker.

Environment:
  CELERIAC_BIN        worker binary (default <repo>/build/celeriac)
  CELERIAC_EXAMPLES   examples plugin (default <repo>/build/examples.so)
  COMPAT_WORKER       "celeriac" (default) or "python": run the same tests against
                      the real Python Celery worker (compat/reference/) to check
                      that the tests expect what Celery really does.
  COMPAT_KEEP_LOGS    directory to copy every worker log into (CI artefacts).
  COMPAT_CELERIAC_ARGS  extra flags for every celeriac worker (e.g. "--no-pool-fetch":
                      the whole suite against the main process handing work over).
"""
import gc
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from pathlib import Path

COMPAT = Path(__file__).resolve().parent
if str(COMPAT) not in sys.path:
    sys.path.insert(0, str(COMPAT))

import pytest  # noqa: E402
from celery import Celery  # noqa: E402

from helpers import (  # noqa: E402
    LIVE_PROCESSES, RedisServer, tail, wait_exit, wait_for)

REPO = COMPAT.parent
PYTHON = "/usr/bin/python3"
CELERIAC_BIN = os.environ.get("CELERIAC_BIN", str(REPO / "build" / "celeriac"))
CELERIAC_EXAMPLES = os.environ.get("CELERIAC_EXAMPLES", str(REPO / "build" / "examples.so"))
WORKER_KIND = os.environ.get("COMPAT_WORKER", "celeriac")
# celeriac's pool processes fetch for themselves unless the worker is told otherwise.
POOL_FETCH = WORKER_KIND == "celeriac" and \
    "--no-pool-fetch" not in shlex.split(os.environ.get("COMPAT_CELERIAC_ARGS", ""))

# Celery reads these on every conf access and they would override every app's URL:
# the tests must only ever talk to their own redis-servers on 127.0.0.1.
for _var in ("CELERY_BROKER_URL", "CELERY_RESULT_BACKEND", "REDIS_URL", "CELERIAC_CONFIG"):
    os.environ.pop(_var, None)
DEFAULT_TEST_TIMEOUT = 240
READY_TIMEOUT = 20.0

# --------------------------------------------------------------------------- workers


class Worker:
    """A `celeriac worker` child process (or the real Celery worker, COMPAT_WORKER=python).

    The worker gets its own process group so kill9(group=True) takes its pool
    children with it. Its --logfile and its stdout/stderr are kept in files that are
    attached to the report of any failing test.
    """

    def __init__(self, redis, logdir, queues=("celery",), concurrency=2, extra=(),
                 name=None, env=None, broker_args=True, plugins=True, kind=WORKER_KIND):
        self.redis = redis
        self.kind = kind
        self.name = name or f"w{uuid.uuid4().hex[:8]}"
        self.dir = Path(tempfile.mkdtemp(prefix=f"{self.name}-", dir=logdir))
        self.logfile = self.dir / "worker.log"
        self.outfile = self.dir / "worker.out"
        self.pidfile = self.dir / "worker.pid"
        self.queues = list(queues)
        self.concurrency = concurrency
        self.extra = list(extra)
        self.env = dict(env or {})
        self.broker_args = broker_args
        self.plugins = plugins
        self.proc = None
        self.expect_crash_reports = False
        self.starts = 0

    # The command line is the contract in the brief: Celery's flag names.
    def command(self):
        if self.kind == "python":
            return self._python_command()
        args = [CELERIAC_BIN, "worker"]
        if self.broker_args:
            args += ["-b", self.redis.url(0), "--result-backend", self.redis.url(1)]
        args += ["-Q", ",".join(self.queues), "-c", str(self.concurrency),
                 "-n", f"{self.name}@%h", "-l", "info",
                 "--pidfile", str(self.pidfile), "--logfile", str(self.logfile)]
        if self.plugins:
            args += ["--plugin", CELERIAC_EXAMPLES]
        return args + shlex.split(os.environ.get("COMPAT_CELERIAC_ARGS", "")) + self.extra

    def _python_command(self):
        args = [PYTHON, "-m", "celery", "-A", "reference.refworker"]
        if self.broker_args:  # global options in Celery 5: before the sub-command
            args += ["-b", self.redis.url(0), "--result-backend", self.redis.url(1)]
        args += ["worker", "-Q", ",".join(self.queues), "-c", str(self.concurrency),
                 "-n", f"{self.name}@%h", "-l", "info", "-P", "prefork",
                 "--without-mingle", "--without-gossip",
                 "--pidfile", str(self.pidfile), "--logfile", str(self.logfile)]
        env_flags = {"--task-acks-late": "REF_TASK_ACKS_LATE",
                     "--task-track-started": "REF_TASK_TRACK_STARTED"}
        env_values = {"--visibility-timeout": "REF_VISIBILITY_TIMEOUT",
                      "--result-expires": "REF_RESULT_EXPIRES"}
        aliases = []
        it = iter(self.extra)
        for flag in it:
            if flag in env_flags:
                self.env[env_flags[flag]] = "1"
            elif flag in env_values:
                self.env[env_values[flag]] = next(it)
            elif flag == "--task-alias":
                aliases.append(next(it))
            else:
                args.append(flag)
        self.env["REF_TASK_ALIASES"] = ",".join(aliases)
        return args

    def start(self, wait_ready=True):
        cmd = self.command()  # first: the python variant also fills self.env
        env = {k: v for k, v in os.environ.items()
               if not k.startswith("CELERY_") and k != "REDIS_URL"}
        env.update(self.env)
        if self.kind == "python":
            env["PYTHONPATH"] = str(COMPAT)
            if not self.broker_args and "CELERY_BROKER_URL" not in self.env \
                    and "REDIS_URL" in self.env:
                env["CELERY_BROKER_URL"] = self.env["REDIS_URL"]
        self.starts += 1
        with open(self.outfile, "ab") as out:
            out.write(f"\n=== start #{self.starts}: {' '.join(cmd)}\n".encode())
            out.flush()
            self.log_offset = self.logfile.stat().st_size if self.logfile.exists() else 0
            self.out_offset = self.outfile.stat().st_size
            self.proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                         env=env, cwd=str(self.dir), start_new_session=True)
        LIVE_PROCESSES.add(self.proc)
        if wait_ready:
            self.wait_ready()
        return self

    def _new_text(self):
        """Log and stdout/stderr written since the last start."""
        parts = []
        for path, offset in ((self.logfile, self.log_offset), (self.outfile, self.out_offset)):
            try:
                with open(path, "rb") as f:
                    f.seek(offset)
                    parts.append(f.read().decode(errors="replace"))
            except OSError:
                pass
        return "\n".join(parts)

    def wait_ready(self, timeout=READY_TIMEOUT):
        """Waits for Celery's "<name>@<host> ready." line in the worker's own output."""
        pattern = re.compile(r"@\S* ready\.")

        def ready():
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited with status {self.proc.returncode} before "
                                   f"it was ready\n{self.describe()}")
            return pattern.search(self._new_text())

        try:
            wait_for(ready, timeout, f"worker {self.name} to log 'ready.'", interval=0.05)
        except TimeoutError as exc:
            raise TimeoutError(f"{exc}\n{self.describe()}") from None
        return self

    @property
    def pid(self):
        return self.proc.pid

    @property
    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, timeout=20.0):
        """Warm shutdown: SIGTERM, then SIGKILL to the whole group after the deadline.

        Returns the exit status of the main process (negative = killed by signal).
        """
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            if wait_exit(self.proc, timeout) is None:
                self._killpg()
                self.proc.wait(10)
        self._killpg()  # pool children left behind by a crashed main process
        LIVE_PROCESSES.discard(self.proc)
        return self.proc.returncode

    def kill9(self, group=True):
        """kill -9 of the process group (or only the main pid); reaps the main pid."""
        if group:
            self._killpg()
        else:
            self.proc.kill()
        self.proc.wait(10)
        return self.proc.returncode

    def _killpg(self):
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass

    def sanitizer_errors(self):
        """ASan/LSan/UBSan reports in the worker's stderr (crash-test SEGVs excepted)."""
        try:
            text = self.outfile.read_text(errors="replace")
        except OSError:
            return []
        found = []
        for m in re.finditer(r"(ERROR: (Address|Leak|Memory|Thread)Sanitizer: [^\n]*"
                             r"|[^\n]*runtime error: [^\n]*)", text):
            line = m.group(0)
            if self.expect_crash_reports and re.search(r"SEGV|deadly signal", line):
                continue
            found.append(line.strip())
        return found

    def describe(self, lines=150):
        return (f"--- worker {self.name} command: {' '.join(map(str, self.command()))}\n"
                f"--- {self.logfile} (tail)\n{tail(self.logfile, lines)}\n"
                f"--- {self.outfile} (stdout+stderr, tail)\n{tail(self.outfile, lines)}")


# ---------------------------------------------------------------------- pytest hooks


@pytest.hookimpl(tryfirst=True)
def pytest_configure(config):
    config.addinivalue_line("markers", "celeriac_only: exercises celeriac's own CLI or "
                            "robustness promises; skipped with COMPAT_WORKER=python")
    config.addinivalue_line("markers", "handoff_pool: checks how the main process hands jobs "
                            "to its pool processes; run with --no-pool-fetch only")
    config.addinivalue_line("markers", "timeout(seconds): per-test deadline")
    if config.pluginmanager.hasplugin("timeout"):
        if config.getoption("timeout", None) is None and "PYTEST_TIMEOUT" not in os.environ:
            config.option.timeout = DEFAULT_TEST_TIMEOUT


def pytest_collection_modifyitems(config, items):
    if POOL_FETCH:
        skip = pytest.mark.skip(reason="the main process hands no jobs over (run with "
                                       "COMPAT_CELERIAC_ARGS=--no-pool-fetch)")
        for item in items:
            if "handoff_pool" in item.keywords:
                item.add_marker(skip)
    if WORKER_KIND == "python":
        skip = pytest.mark.skip(reason="celeriac-only behaviour (COMPAT_WORKER=python)")
        for item in items:
            if "celeriac_only" in item.keywords:
                item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    """Fallback per-test deadline (SIGALRM) when pytest-timeout is not installed."""
    if item.config.pluginmanager.hasplugin("timeout"):
        yield
        return
    marker = item.get_closest_marker("timeout")
    seconds = int(marker.args[0]) if marker and marker.args else DEFAULT_TEST_TIMEOUT

    def on_alarm(signum, frame):
        raise TimeoutError(f"test exceeded its {seconds}s deadline")

    old = signal.signal(signal.SIGALRM, on_alarm)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Attaches the log of every worker the test used to the report of a failure."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, "rep_" + rep.when, rep)
    if rep.failed:
        for worker in getattr(item, "_celeriac_workers", []):
            rep.sections.append((f"worker {worker.name} log", worker.describe()))


def _attach(request, worker):
    workers = getattr(request.node, "_celeriac_workers", None)
    if workers is None:
        workers = request.node._celeriac_workers = []
    if worker not in workers:
        workers.append(worker)


def _keep_logs(worker):
    dest = os.environ.get("COMPAT_KEEP_LOGS")
    if dest:
        Path(dest).mkdir(parents=True, exist_ok=True)
        for path in (worker.logfile, worker.outfile):
            if path.exists():
                shutil.copy(path, Path(dest) / f"{worker.name}-{path.name}")


# -------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="session")
def basedir():
    d = tempfile.mkdtemp(prefix="celeriac-compat-")
    yield Path(d)
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="session")
def shared_redis(basedir):
    """One redis-server for the tests that do not need their own."""
    server = RedisServer(basedir).start()
    yield server
    server.stop()


class users_env:
    """Sets CELERY_BROKER_URL/CELERY_RESULT_BACKEND the way a deployment does, while
    a users' module is imported, then restores the environment.

    Celery 5.2 reads these variables on every access to conf.broker_url, overriding
    the app's own setting, so leaving them set would redirect every other app here.
    """

    def __init__(self, redis):
        self.values = {"CELERY_BROKER_URL": redis.url(0), "CELERY_RESULT_BACKEND": redis.url(1)}

    def __enter__(self):
        self.saved = {k: os.environ.get(k) for k in self.values}
        os.environ.update(self.values)

    def __exit__(self, *exc):
        for k, v in self.saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


@pytest.fixture
def redis_factory(basedir):
    """Starts private redis-servers: redis_factory(persistent=False) -> RedisServer."""
    servers = []

    def make(persistent=False):
        server = RedisServer(basedir, persistent=persistent).start()
        servers.append(server)
        return server

    yield make
    for server in servers:
        server.stop()


def _check_binary():
    if WORKER_KIND == "python":
        return
    if not os.access(CELERIAC_BIN, os.X_OK):
        pytest.fail(f"celeriac binary not found at {CELERIAC_BIN} (build it, or set CELERIAC_BIN)")
    if not os.path.exists(CELERIAC_EXAMPLES):
        pytest.fail(f"examples plugin not found at {CELERIAC_EXAMPLES} (set CELERIAC_EXAMPLES)")


@pytest.fixture
def make_worker(request, basedir):
    """Starts workers for one test: make_worker(redis, queues=..., extra=[...], ...).

    Workers are stopped after the test; a worker that died on its own, or printed a
    sanitizer report, fails the test.
    """
    _check_binary()
    workers = []

    def make(redis, start=True, **kwargs):
        worker = Worker(redis, basedir, **kwargs)
        workers.append(worker)
        _attach(request, worker)
        if start:
            worker.start()
        return worker

    yield make
    problems = []
    for worker in workers:
        worker.stop()
        _keep_logs(worker)
        errors = worker.sanitizer_errors()
        if errors:
            problems.append(f"{worker.name}: sanitizer reports: {errors}\n{worker.describe()}")
    if problems:
        pytest.fail("\n".join(problems), pytrace=False)


class _SharedWorker:
    """The session's default worker: queue "celery", examples plugin, aliases, -E."""

    EXTRA = ["--prefetch-multiplier", "4", "-E", "--task-track-started",
             "--task-alias", "myapp.tasks.process_document=process_document",
             "--task-alias", "myapp.tasks.add=examples.add"]

    def __init__(self, redis, basedir):
        self.redis = redis
        self.basedir = basedir
        self.worker = None
        self.deaths = []

    def ensure(self):
        if self.worker is None or not self.worker.alive:
            if self.worker is not None:
                self.deaths.append(self.worker)
            self.worker = Worker(self.redis, self.basedir, queues=["celery"], concurrency=2,
                                 extra=self.EXTRA, name="shared").start()
        return self.worker


@pytest.fixture(scope="session")
def _shared_worker_holder(shared_redis, basedir):
    holder = _SharedWorker(shared_redis, basedir)
    yield holder
    if holder.worker is not None:
        holder.worker.stop()
        _keep_logs(holder.worker)


@pytest.fixture
def worker(request, _shared_worker_holder):
    """The shared worker, (re)started if needed; a test that kills it fails."""
    _check_binary()
    w = _shared_worker_holder.ensure()
    _attach(request, w)
    yield w
    if not w.alive:
        pytest.fail(f"the shared worker died during this test (status {w.proc.returncode})\n"
                    + w.describe(), pytrace=False)
    errors = w.sanitizer_errors()
    if errors:
        pytest.fail(f"sanitizer reports from the shared worker: {errors}", pytrace=False)


def make_celery_app(redis, **conf):
    """A Celery app configured like users do: broker db 0, result backend db 1."""
    app = Celery("myapp", broker=redis.url(0), backend=redis.url(1), set_as_current=False)
    app.conf.update(
        task_serializer="json",
        result_serializer="json",
        accept_content=["json"],
        result_expires=3600,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=10,
        redis_socket_timeout=15,
    )
    app.conf.update(conf)
    return app


def close_celery_app(app):
    """Closes a producer app so that AsyncResult.__del__ at exit finds nothing to do."""
    gc.collect()
    consumer = getattr(app.backend, "result_consumer", None)
    if consumer is not None and getattr(consumer, "_pubsub", None) is not None:
        consumer._pubsub.close()
        consumer._pubsub = None
    app.close()


@pytest.fixture
def app_factory():
    """make(redis, **conf) -> Celery app; apps are closed after the test."""
    apps = []

    def make(redis, **conf):
        app = make_celery_app(redis, **conf)
        apps.append(app)
        return app

    yield make
    for app in apps:
        close_celery_app(app)


@pytest.fixture(scope="session")
def celery_app(shared_redis):
    """The session producer app, bound to the shared redis."""
    app = make_celery_app(shared_redis)
    yield app
    close_celery_app(app)


@pytest.fixture(scope="session")
def myapp(shared_redis):
    """The users' package (compat/myapp), imported with the env pointing at shared redis."""
    import importlib

    with users_env(shared_redis):
        pkg = importlib.import_module("myapp")
        importlib.import_module("myapp.tasks")
    pkg.app.conf.broker_url = shared_redis.url(0)
    pkg.app.conf.result_backend = shared_redis.url(1)
    yield pkg
    close_celery_app(pkg.app)
