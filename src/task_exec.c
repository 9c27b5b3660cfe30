/* task_exec.c - runs one job inside a pool process and stores what it
 * produced; acks, events and scheduling belong to the parent (worker.c). */
#include "task_exec.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <time.h>
#include <unistd.h>

#include "canvas.h"
#include "log.h"
#include "pool.h"
#include "task_context.h"
#include "task_registry.h"
#include "util.h"
#include "value.h"

#define REPR_MAX 1024
/* Seconds a pool process whose main process died may still finish its task
 * (see on_parent_death()); also how long one that reads EOF waits for a live
 * main process to store the results it handed over (kept_settle()). */
#define PARENT_GONE_GRACE 3

/* Results this process handed to the main process to store (DONE with meta),
 * kept until the main process counts them stored (pool_results_stored()). A
 * kill -9 of the main process would otherwise lose the ones it held: this
 * process stores them itself when it finds the main process gone. Storing
 * one twice changes nothing (a SUCCESS is never overwritten). */
static struct kept_results {
    char **ids, **docs; /* owned, [head, len) */
    size_t *lens;
    size_t head, len, cap;
    unsigned dropped;   /* entries dropped as stored so far (wraps) */
} kept;
/* Entries ever kept (wraps); read by the signal handler. */
static _Atomic unsigned kept_total;
static pid_t kept_parent;
/* Set by on_parent_death(): queued jobs no longer start (never acknowledged,
 * they go back to the queue from unacked); jobs already acknowledged do. */
static volatile sig_atomic_t parent_gone;

static void kept_drop_one(void)
{
    free(kept.ids[kept.head]);
    free(kept.docs[kept.head]);
    kept.head++;
    kept.dropped++;
}

/* Drops what the main process has stored since the last look. */
static void kept_trim(void)
{
    unsigned stored = pool_child_results_stored();
    while (kept.head < kept.len && kept.dropped != stored)
        kept_drop_one();
    if (kept.head == kept.len)
        kept.head = kept.len = 0;
}

/* Keeps a copy of a result handed over; takes doc. Out of memory it is not
 * kept (as before this existed) but still counted, so the counts stay in step. */
static void kept_push(const char *task_id, char *doc, size_t len)
{
    kept_trim();
    if (kept.head > 0 && kept.len == kept.cap) {
        size_t n = kept.len - kept.head;
        memmove(kept.ids, kept.ids + kept.head, n * sizeof *kept.ids);
        memmove(kept.docs, kept.docs + kept.head, n * sizeof *kept.docs);
        memmove(kept.lens, kept.lens + kept.head, n * sizeof *kept.lens);
        kept.head = 0;
        kept.len = n;
    }
    if (kept.len == kept.cap) {
        size_t cap = kept.cap ? kept.cap * 2 : 16;
        char **ids = realloc(kept.ids, cap * sizeof *ids);
        if (ids)
            kept.ids = ids;
        char **docs = realloc(kept.docs, cap * sizeof *docs);
        if (docs)
            kept.docs = docs;
        size_t *lens = realloc(kept.lens, cap * sizeof *lens);
        if (lens)
            kept.lens = lens;
        if (ids && docs && lens)
            kept.cap = cap;
    }
    char *id = kept.len < kept.cap ? strdup(task_id) : NULL;
    if (!id) {
        free(doc);
        kept.dropped++; /* the main process will count it too */
    } else {
        kept.ids[kept.len] = id;
        kept.docs[kept.len] = doc;
        kept.lens[kept.len++] = len;
    }
    atomic_fetch_add(&kept_total, 1u);
}

/* The main process died: store what it had not stored yet. */
static void kept_rescue(struct task_exec *x)
{
    kept_trim();
    size_t n = kept.len - kept.head;
    if (n == 0)
        return;
    log_warning("main process gone: storing %zu result(s) it had not stored yet", n);
    if (!x->backend)
        return;
    int rc = backend_store_many(x->backend, n, (const char *const *)kept.ids + kept.head,
                                (const char *const *)kept.docs + kept.head, kept.lens + kept.head);
    if (rc < 0)
        log_error("%zu result(s) not stored, e.g. %s: %s", n, kept.ids[kept.head],
                  x->backend->errstr);
}

static void kept_free(void)
{
    while (kept.head < kept.len)
        kept_drop_one();
    free(kept.ids);
    free(kept.docs);
    free(kept.lens);
    memset(&kept, 0, sizeof kept);
}

/* PR_SET_PDEATHSIG: the main process died. The task running now may finish
 * for a few seconds (then SIGALRM ends this process: it must not outlive its
 * worker for long); the read loop then runs what was acknowledged, sees EOF
 * and stores the kept results. An idle process sees EOF at once. */
static void on_parent_death(int sig)
{
    (void)sig;
    parent_gone = 1;
    signal(SIGALRM, SIG_DFL);
    alarm(PARENT_GONE_GRACE);
}

/* At EOF: the results handed over are stored by a live main process (wait
 * for its count), or by this process when the main process is gone. EOF can
 * come before the parent-death signal, hence the wait for either. */
static void kept_settle(struct task_exec *x)
{
    double deadline = util_monotonic() + PARENT_GONE_GRACE;
    for (;;) {
        kept_trim();
        if (kept.head == kept.len)
            return;
        if (parent_gone || getppid() != kept_parent) {
            kept_rescue(x);
            return;
        }
        if (util_monotonic() > deadline)
            return; /* a live main process keeps them (its backend is down) */
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
}

char *task_exec_exc_repr(const char *exc_type, const char *message)
{
    celeriac_value *s = celeriac_value_new_string(message ? message : "");
    char *r = s ? value_repr(s, REPR_MAX) : NULL;
    celeriac_value_free(s);
    struct buf b = {0};
    buf_printf(&b, "%s(%s)", exc_type, r ? r : "''");
    free(r);
    return b.p;
}

struct sink_ctx {
    struct task_exec *x;
    const struct task_message *m;
};

static int store_state(void *ud, const celeriac_task *t, const char *state,
                       const celeriac_value *meta)
{
    struct sink_ctx *s = ud;
    if (!s->x->backend)
        return 0;
    struct result_meta rm = {.task_id = t->id, .status = state, .result = meta,
                             .group_id = s->m->group, .parent_id = s->m->parent_id};
    return backend_store_meta(s->x->backend, &rm);
}

static int post_state(void *ud, const celeriac_task *t, const char *state,
                      const celeriac_value *meta)
{
    struct sink_ctx *s = ud;
    if (!s->x->backend)
        return 0;
    struct result_meta rm = {.task_id = t->id, .status = state, .result = meta,
                             .group_id = s->m->group, .parent_id = s->m->parent_id};
    return backend_post_meta(s->x->backend, &rm);
}

static void store_started(struct task_exec *x, const struct task_message *m)
{
    celeriac_value *meta = celeriac_value_new_object();
    if (!meta)
        return;
    celeriac_value_set(meta, "pid", celeriac_value_new_int(getpid()));
    celeriac_value_set(meta, "hostname", celeriac_value_new_string(x->hostname));
    struct result_meta rm = {.task_id = m->id, .status = "STARTED", .result = meta,
                             .group_id = m->group, .parent_id = m->parent_id};
    backend_store_meta(x->backend, &rm);
    celeriac_value_free(meta);
}

/* canvas_env.publisher: the child's publishing link, opened on first use. */
static struct broker *publisher(void *ud)
{
    struct task_exec *x = ud;
    if (x->publisher || !x->broker_url || !*x->broker_url)
        return x->publisher;
    char err[256];
    x->publisher = broker_new(x->broker_url, &x->broker_opts, err, sizeof err);
    if (!x->publisher)
        log_error("broker (publishing): %s", err);
    else if (x->publisher->ops->connect_publisher(x->publisher) < 0)
        log_warning("broker (publishing): %s; retrying on send", x->publisher->errstr);
    return x->publisher;
}

/* Python's str() of a countdown in "Retry in 1s" / "Retry in 0.5s". */
static void format_seconds(double s, char *buf, size_t len)
{
    if (s == (double)(long long)s && s < 1e15 && s > -1e15)
        snprintf(buf, len, "%lld", (long long)s);
    else
        snprintf(buf, len, "%g", s);
}

static void run_success(struct task_exec *x, const struct canvas_env *ce,
                        const struct task_message *m, celeriac_task *t, int ignore,
                        uint32_t flags, struct pool_outcome *out)
{
    celeriac_value *result = task_context_take_result(t);
    celeriac_value *children = celeriac_value_new_array();
    out->status = POOL_SUCCESS;
    out->detail = flags & EXEC_NO_REPR ? NULL : value_repr(result, REPR_MAX);
    /* Callbacks and the next chain step go out before the result is stored,
     * so the stored meta lists them in children (as Celery's tracer does). */
    canvas_on_success(ce, m, result, children);
    if (x->backend && !ignore) {
        struct result_meta rm = {.task_id = m->id, .status = "SUCCESS", .result = result,
                                 .group_id = m->group, .parent_id = m->parent_id, .ready = 1,
                                 .children = children};
        if ((flags & EXEC_PARENT_STORES) && !canvas_in_chord(m))
            out->meta = backend_encode_meta(&rm, &out->meta_len);
        if (!out->meta)
            backend_store_meta(x->backend, &rm);
    }
    canvas_chord_part(ce, m, "SUCCESS", result);
    celeriac_value_free(children);
    celeriac_value_free(result);
}

static void run_failure(struct task_exec *x, const struct canvas_env *ce,
                        const struct task_message *m, const char *module, const char *type,
                        const char *msg, int ignore, struct pool_outcome *out)
{
    celeriac_value *exc = backend_exception(module, type, msg);
    char *tb = backend_traceback(module, type, msg);
    int stored = x->backend && !ignore;
    out->status = POOL_FAILURE;
    out->detail = task_exec_exc_repr(type, msg);
    if (stored) {
        struct result_meta rm = {.task_id = m->id, .status = "FAILURE", .result = exc,
                                 .traceback = tb, .group_id = m->group,
                                 .parent_id = m->parent_id, .ready = 1};
        backend_store_meta(x->backend, &rm);
    }
    canvas_on_failure(ce, m, exc, tb, stored);
    celeriac_value_free(exc);
    free(tb);
}

/* celeriac_task_retry() under max_retries: the message goes out again and
 * RETRY is stored. Returns 0, or negative when it could not be republished
 * (the caller then fails the task with the exception). */
static int run_retry(struct task_exec *x, const struct canvas_env *ce,
                     const struct task_message *m, const celeriac_task *t, const char *msg,
                     struct pool_outcome *out)
{
    /* A negative countdown means Celery's default_retry_delay. */
    double countdown = t->retry_countdown < 0 ? 180.0 : t->retry_countdown;
    celeriac_value *children = celeriac_value_new_array();
    if (!children)
        return CELERIAC_ENOMEM;
    int rc = canvas_retry(ce, m, countdown, children);
    if (rc < 0) {
        celeriac_value_free(children);
        return rc;
    }
    char *repr = task_exec_exc_repr(t->exc_type, msg);
    if (x->backend) {
        char secs[40];
        format_seconds(countdown, secs, sizeof secs);
        celeriac_value *exc = backend_exception(t->exc_module, t->exc_type, msg);
        struct buf tb = {0};
        buf_printf(&tb, "Traceback (most recent call last):\n  File \"celeriac\", in worker\n"
                        "celery.exceptions.Retry: Retry in %ss: %s\n", secs, repr ? repr : "");
        struct result_meta rm = {.task_id = m->id, .status = "RETRY", .result = exc,
                                 .traceback = tb.p, .group_id = m->group,
                                 .parent_id = m->parent_id, .children = children};
        backend_store_meta(x->backend, &rm);
        celeriac_value_free(exc);
        buf_free(&tb);
    }
    out->status = POOL_RETRY;
    out->detail = repr;
    celeriac_value_free(children);
    return 0;
}

static void run_one(struct task_exec *x, struct pool_link *l, const char *env, size_t len,
                    uint32_t flags)
{
    struct task_message m = {0};
    struct pool_outcome out = {.status = POOL_FAILURE};
    char err[256];
    int rc = (flags & EXEC_PACKED)
                 ? task_message_decode_packed(env, len, &x->limits, &m, err, sizeof err)
                 : task_message_decode(env, len, &x->limits, &m, err, sizeof err);
    const struct task_def *def = rc == 0 ? task_registry_find(x->registry, m.task) : NULL;
    /* Expired while it waited in this process behind other jobs (the main
     * process checked before sending it): not run, as Celery checks expiry
     * just before running a task. The parent stores REVOKED "expired". */
    if ((flags & EXEC_QUEUED) && rc == 0 && m.expires > 0 && m.expires < util_now()) {
        out.status = POOL_SKIP_EXPIRED;
        pool_child_write(l, POOL_SKIPPED, &out);
        if (!pool_child_pending(l))
            pool_child_flush(l);
        task_message_clear(&m);
        return;
    }
    /* STARTED goes out now (with the DONE of the previous job, if that one
     * waited): the parent acks, times limits, lists active and sends
     * task-started from it. Not for a job the parent counted as started when
     * it sent it (EXEC_QUIET_START): then it rides with the next frame. */
    pool_child_write(l, POOL_STARTED, NULL);
    if (!(flags & EXEC_QUIET_START))
        pool_child_flush(l);
    if (!def) {
        /* The main process read only the headers: a malformed body shows up
         * here. Store it as Celery would fail an invalid task, so the caller
         * does not wait forever. */
        const char *type = rc == CELERIAC_ECONTENT ? "ContentDisallowed" : "InvalidTaskError";
        const char *module = rc == CELERIAC_ECONTENT ? "kombu.exceptions" : "celery.exceptions";
        const char *why = rc < 0 ? err : "task not registered";
        log_error("discarding task %s: %s", m.id ? m.id : "(no id)", why);
        if (x->backend && m.id)
            backend_store_failure(x->backend, m.id, module, type, why, m.parent_id, m.group);
        out.detail = task_exec_exc_repr(type, why);
        goto done;
    }
    int ignore = (flags & EXEC_IGNORE_RESULT) || m.ignore_result ||
                 (def->flags & CELERIAC_TASK_IGNORE_RESULT);
    if (x->backend && ((flags & EXEC_TRACK_STARTED) || (def->flags & CELERIAC_TASK_TRACK_STARTED)))
        store_started(x, &m);
    if (!x->reply_to[0])
        util_uuid4(x->reply_to);
    struct canvas_env ce = {publisher, x, x->backend, x->hostname, x->reply_to};

    struct sink_ctx sctx = {x, &m};
    struct task_sink sink = {store_state, &sctx, post_state};
    celeriac_task t;
    task_context_init(&t, m.id, m.task, m.retries, m.args, m.kwargs, &sink);
    double t0 = util_monotonic();
    int r = def->fn(&t, def->userdata);
    out.runtime = util_monotonic() - t0;
    /* Progress posted by the task is in Redis before its outcome is stored
     * anywhere (here, or by the main process after DONE). */
    backend_settle(x->backend);

    if (r == 0 && !t.failed) {
        run_success(x, &ce, &m, &t, ignore, flags, &out);
    } else {
        char fallback[160];
        const char *type = t.failed ? t.exc_type : "RuntimeError";
        const char *module = t.failed ? t.exc_module : "builtins";
        const char *msg = t.failed && t.exc_message ? t.exc_message : NULL;
        if (!msg) {
            snprintf(fallback, sizeof fallback, "task returned error %d (%s)", r,
                     celeriac_strerror(r));
            msg = fallback;
        }
        /* Retry below max_retries (Celery's default 3); past it, the exception stands. */
        int max_retries = t.retry_max < 0 ? 3 : t.retry_max;
        /* A retry re-sends headers the packed hand-off left out. */
        const char *envelope;
        size_t envelope_len;
        if (t.failed && t.retry && !m.headers && (flags & EXEC_PACKED) &&
            task_message_packed_envelope(env, len, &envelope, &envelope_len) == 0)
            task_message_load_headers(&m, envelope, envelope_len, &x->limits);
        if (!(t.failed && t.retry && m.retries < max_retries &&
              run_retry(x, &ce, &m, &t, msg, &out) == 0))
            run_failure(x, &ce, &m, module, type, msg, ignore, &out);
    }
    task_context_clear(&t);
done:
    pool_child_write(l, POOL_DONE, &out);
    if (out.meta && m.id) {
        kept_push(m.id, out.meta, out.meta_len); /* until the main process stores it */
        out.meta = NULL;
    }
    /* With the next job already here the DONE rides with its STARTED. */
    if (!pool_child_pending(l))
        pool_child_flush(l);
    free(out.detail);
    free(out.meta);
    task_message_clear(&m);
}

void task_exec_child_main(int fd, int index, void *ud)
{
    struct task_exec *x = ud;
    (void)index;
    struct sigaction sa = {0};
    sa.sa_handler = task_context_soft_limit_signal; /* soft time limit */
    sigemptyset(&sa.sa_mask);
    sigaction(SIGUSR1, &sa, NULL);
    task_context_set_progress_interval(x->progress_interval);
    if (x->backend_url && *x->backend_url) {
        char err[256];
        x->backend = backend_new(x->backend_url, x->result_expires, x->backend_retry_timeout,
                                 x->backend_keyprefix, err, sizeof err);
        if (!x->backend)
            log_error("result backend: %s", err);
    }
    /* Outlive the main process long enough to store what it held (the pool
     * set SIGKILL as the parent-death signal; until the handler is in place
     * that still applies, so the parent seen here is alive). */
    kept_parent = getppid();
    struct sigaction pd = {0};
    pd.sa_handler = on_parent_death;
    pd.sa_flags = SA_RESTART;
    sigemptyset(&pd.sa_mask);
    sigaction(SIGUSR2, &pd, NULL);
    prctl(PR_SET_PDEATHSIG, SIGUSR2);
    if (getppid() != kept_parent)
        _exit(0);
    struct pool_link link = {.fd = fd};
    struct buf env = {0};
    uint32_t flags;
    const char *frame;
    size_t len;
    while (pool_child_read(&link, &flags, &frame, &len) == 0) {
        if ((flags & EXEC_QUEUED) && (parent_gone || getppid() != kept_parent))
            continue; /* never acknowledged: it waits in unacked */
        /* A private copy: the link's buffer moves when more frames arrive. */
        env.len = 0;
        if (buf_append(&env, frame, len) < 0 || buf_append(&env, "", 1) < 0)
            break;
        run_one(x, &link, env.p, len, flags);
    }
    pool_child_flush(&link);
    kept_settle(x);
    kept_free();
    pool_link_free(&link);
    buf_free(&env);
    backend_free(x->backend);
    x->backend = NULL;
    broker_free(x->publisher);
    x->publisher = NULL;
}
