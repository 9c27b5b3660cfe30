/* task_exec.c - runs one job inside a pool process and stores what it
 * produced; acks, events and scheduling belong to the parent (worker.c). */
#include "task_exec.h"

#include <errno.h>
#include <poll.h>
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

static void fetch_estimate(const char *name, double runtime);
static int stores_push(const char *task_id, const char *doc, size_t len);

/* Runs a decoded job (rc and err: the decode's outcome) and reports it; m is
 * cleared. A fetching process keeps a SUCCESS to store it with its next
 * fetch, and its frames wait in l->out until that store is done. */
static void run_message(struct task_exec *x, struct pool_link *l, const char *env, size_t len,
                        uint32_t flags, struct task_message *mp, int rc, const char *err)
{
    struct task_message m = *mp; /* taken */
    memset(mp, 0, sizeof *mp);
    struct pool_outcome out = {.status = POOL_FAILURE};
    const struct task_def *def = rc == 0 ? task_registry_find(x->registry, m.task) : NULL;
    /* Expired while it waited in this process behind other jobs (the main
     * process checked before sending it): not run, as Celery checks expiry
     * just before running a task. The parent stores REVOKED "expired". */
    if ((flags & EXEC_QUEUED) && rc == 0 && m.expires > 0 && m.expires < util_now()) {
        out.status = POOL_SKIP_EXPIRED;
        pool_child_write(l, POOL_SKIPPED, &out);
        if (!x->fetch && !pool_child_pending(l))
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
    else if ((flags & EXEC_DONE_LATER) && !pool_child_keep(l))
        pool_child_flush(l); /* a crash in the task must not make it look never started */
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
    if (x->fetch && m.task)
        fetch_estimate(m.task, out.runtime);
done:
    /* A fetching process's own SUCCESS is stored from here with the next
     * fetch (in the same round trip); the main process keeps the copy in
     * DONE until STORED says so, and stores it if this process dies first. */
    out.child_stores = out.meta && m.id && (flags & EXEC_CHILD_STORES) &&
                       stores_push(m.id, out.meta, out.meta_len) == 0;
    pool_child_write(l, POOL_DONE, &out);
    if (out.child_stores) {
        free(out.meta);
        out.meta = NULL;
    } else if (out.meta && m.id) {
        kept_push(m.id, out.meta, out.meta_len); /* until the main process stores it */
        out.meta = NULL;
    }
    /* With the next job already here the DONE rides with its STARTED. A
     * fetching process's short task (its STARTED rode along quietly) writes
     * it with the next fetch: it is kept where the main process reads it if
     * this process dies first (pool_child_keep()). */
    if (x->fetch ? !((flags & EXEC_DONE_LATER) && pool_child_keep(l)) : !pool_child_pending(l))
        pool_child_flush(l);
    free(out.detail);
    free(out.meta);
    task_message_clear(&m);
}

static void run_one(struct task_exec *x, struct pool_link *l, const char *env, size_t len,
                    uint32_t flags)
{
    struct task_message m = {0};
    char err[256] = "";
    int rc = (flags & EXEC_PACKED)
                 ? task_message_decode_packed(env, len, &x->limits, &m, err, sizeof err)
                 : task_message_decode(env, len, &x->limits, &m, err, sizeof err);
    run_message(x, l, env, len, flags, &m, rc, err);
}

/* ---- a pool process that fetches for itself (worker_pool_fetch) ----------
 *
 * The process takes its own messages with the broker's batch fetch (pop and
 * reserve in unacked, atomically), at most x->window of them not started
 * while its tasks are known to be short and one at a time otherwise, and
 * tells the main process about each one (RECEIVED, with the envelope) before
 * running it. The main process keeps its books as if it had handed the job
 * over (inspect, revoke, time limits, events, a lost process's messages); it
 * is just not on the way between the broker and the task. The SUCCESS result
 * of a message it took (no acks_late, task events off at start) this process
 * stores itself, in the round trip of its next fetch (or before a task not
 * known to be short), and says STORED; DONE carries a copy, which the main
 * process keeps until then and stores if the process dies first or could
 * not store it. Every other result goes back in DONE for the main process
 * to store, as for any job. Messages this process will not run
 * itself (an ETA, a rate-limited name, a revoked id, anything it cannot
 * decode or does not know, an expired one) go to the main process (HANDOFF),
 * which takes them over as if it had fetched them. RUN jobs from the main
 * process join the run order behind what it holds (ACCEPTED).
 *
 * Early acks ride in the next fetch call, or go at once before a task that is
 * not known to be short (Celery acks before the task runs); ACKED then tells
 * the main process, which keeps every ack the process owes until then and
 * sends them itself if the process dies first. acks_late messages are acked
 * by the main process once their result is stored. */

#define FETCH_HELD_MAX (POOL_QUEUE_MAX + 1)

struct fetch_job {
    uint32_t seq;
    int own;                 /* taken by this process (else a RUN job) */
    uint32_t flags;          /* EXEC_* */
    char *env;               /* owned, NUL-terminated */
    size_t len;
    struct task_message m;   /* own: decoded in full when taken */
    char tag[128];
    int acks_late;
};

struct tags {
    char **v;
    size_t n, cap;
};

static struct fetcher {
    struct broker *b;
    int connected;
    double retry_at;             /* monotonic: next reconnect attempt */
    double backoff;
    struct fetch_job held[FETCH_HELD_MAX];
    size_t nheld;
    uint32_t next_seq;
    struct tags acks;            /* owed early acks, sent with the next fetch */
    struct { char *name; double runtime; } est[32];
    size_t nest, evict;
    char **handoff;              /* owned */
    size_t nhandoff;
    int eof;                     /* the main process closed our link: stop taking */
    int paused;                  /* the main process cannot store results now */
    int short_run;               /* the last task run here is known to be short */
    int handed;                  /* this fetch handed a message to the main process */
    struct buf pack;             /* the header pack of a RECEIVED frame being built */
    struct pool_results stores;  /* SUCCESS results of own jobs, stored with the next
                                  * fetch (EXEC_CHILD_STORES) */
    int stores_sent;             /* backend_store_send() wrote them; reply not read */
    double stores_off_until;     /* monotonic: after a failed store, the main process
                                  * stores every result until then */
} F;

/* Seconds a process leaves its results to the main process after a store
 * of its own failed: the main process keeps them and retries without
 * holding up the tasks (a process would block on every store). */
#define STORES_OFF 5.0

/* A SUCCESS this process stores itself with its next fetch; the main
 * process got a copy in DONE. Out of memory it is left to the main process
 * (returns negative: the DONE then goes without child_stores). */
static int stores_push(const char *task_id, const char *doc, size_t len)
{
    if (F.stores_off_until > 0 && util_monotonic() < F.stores_off_until)
        return CELERIAC_ESTATE;
    char *copy = malloc(len + 1);
    if (!copy)
        return CELERIAC_ENOMEM;
    memcpy(copy, doc, len);
    copy[len] = '\0';
    if (pool_results_push(&F.stores, task_id, copy, len) < 0) {
        free(copy);
        return CELERIAC_ENOMEM;
    }
    return 0;
}

/* Writes the kept results to the backend without waiting (they go out right
 * behind the fetch, and their reply is read with its reply). */
static void stores_send(struct task_exec *x)
{
    if (F.stores.n && !F.stores_sent && x->backend)
        F.stores_sent = backend_store_send(x->backend, F.stores.n,
                                           (const char *const *)F.stores.ids,
                                           (const char *const *)F.stores.docs,
                                           F.stores.lens) == 0;
}

/* Reads the reply of stores_send() (sending them first if they were not
 * sent) and tells the main process (STORED): stored, or left to it, which
 * stores its copies then (retrying while the backend is down, as for any
 * result). */
static void stores_finish(struct task_exec *x, struct pool_link *l)
{
    if (!F.stores.n)
        return;
    stores_send(x);
    int ok = F.stores_sent &&
             backend_store_recv(x->backend, F.stores.n, (const char *const *)F.stores.ids,
                                (const char *const *)F.stores.docs, F.stores.lens) == 0;
    if (!ok) {
        log_warning("%zu result(s) not stored here (%s); the main process stores them, "
                    "and all results for the next %.0f s",
                    F.stores.n, x->backend ? x->backend->errstr : "no backend", STORES_OFF);
        F.stores_off_until = util_monotonic() + STORES_OFF;
    }
    pool_results_clear(&F.stores);
    F.stores_sent = 0;
    struct pool_outcome st = {.status = ok};
    pool_child_write(l, POOL_STORED, &st);
}

static void tags_push(struct tags *t, const char *tag)
{
    if (t->n == t->cap) {
        size_t cap = t->cap ? t->cap * 2 : 16;
        char **v = realloc(t->v, cap * sizeof *v);
        if (!v)
            return;
        t->v = v;
        t->cap = cap;
    }
    if ((t->v[t->n] = strdup(tag)) != NULL)
        t->n++;
}

static void tags_clear(struct tags *t)
{
    for (size_t i = 0; i < t->n; i++)
        free(t->v[i]);
    t->n = 0;
}

static void fetch_estimate(const char *name, double runtime)
{
    for (size_t i = 0; i < F.nest; i++)
        if (strcmp(F.est[i].name, name) == 0) {
            F.est[i].runtime = 0.8 * F.est[i].runtime + 0.2 * runtime;
            return;
        }
    char *copy = strdup(name);
    if (!copy)
        return;
    size_t n = sizeof F.est / sizeof F.est[0], i;
    if (F.nest < n) {
        i = F.nest++;
    } else {
        i = F.evict++ % n; /* a worker with more task names than that forgets some */
        free(F.est[i].name);
    }
    F.est[i].name = copy;
    F.est[i].runtime = runtime;
}

/* A task known to take under half of the budget (tasks run before). */
static int fetch_short(const struct task_exec *x, const char *name)
{
    for (size_t i = 0; i < F.nest; i++)
        if (strcmp(F.est[i].name, name) == 0)
            return F.est[i].runtime < x->short_budget / 2;
    return 0;
}

static void fetch_disconnect(const char *what)
{
    if (!F.connected)
        return;
    log_error("broker connection lost during %s: %s", what, F.b->errstr);
    F.b->ops->disconnect(F.b);
    F.connected = 0;
    F.backoff = F.backoff > 0 ? F.backoff * 2 : 0.2;
    if (F.backoff > 5)
        F.backoff = 5;
    F.retry_at = util_monotonic() + F.backoff;
}

/* Sends the owed acks now (they otherwise ride with the next fetch). */
static void acks_now(struct pool_link *l)
{
    if (!F.acks.n || !F.connected)
        return;
    if (F.b->ops->ack_many(F.b, (const char **)F.acks.v, F.acks.n) < 0) {
        fetch_disconnect("ack");
        return;
    }
    tags_clear(&F.acks);
    pool_child_write(l, POOL_ACKED, NULL);
}

static int handoff_name(const char *name)
{
    for (size_t i = 0; i < F.nhandoff; i++)
        if (strcmp(F.handoff[i], name) == 0)
            return 1;
    return 0;
}

static void set_names(char ***list, size_t *n, const char *names, size_t len)
{
    for (size_t i = 0; i < *n; i++)
        free((*list)[i]);
    free(*list);
    *list = NULL;
    *n = 0;
    size_t count = 0;
    for (size_t i = 0; i < len; i++)
        count += names[i] == '\0';
    if (len && names[len - 1] != '\0')
        count++;
    if (!count)
        return;
    char **v = calloc(count, sizeof *v);
    if (!v)
        return;
    size_t k = 0;
    for (size_t i = 0; i < len && k < count;) {
        size_t e = i;
        while (e < len && names[e])
            e++;
        if (e > i && (v[k] = strndup(names + i, e - i)) != NULL)
            k++;
        i = e + 1;
    }
    *list = v;
    *n = k;
}

/* A message taken from the broker: run it here (RECEIVED) or hand it to the
 * main process (HANDOFF). d->body is taken. */
static void fetch_take(struct task_exec *x, struct pool_link *l, struct broker_delivery *d)
{
    struct fetch_job job = {0}, *j = &job;
    char err[256] = "";
    int rc = task_message_decode(d->body, d->len, &x->limits, &j->m, err, sizeof err);
    double now = util_now();
    const struct task_def *def = rc == 0 ? task_registry_find(x->registry, j->m.task) : NULL;
    int mine = def && j->m.id && !(x->revoked && revoked_contains(x->revoked, j->m.id, now)) &&
               !(j->m.eta > now) && !(j->m.expires > 0 && j->m.expires < now) &&
               !handoff_name(j->m.task) && j->m.delivery_tag &&
               strlen(j->m.delivery_tag) < sizeof d->tag &&
               (!d->reserved || strcmp(j->m.delivery_tag, d->tag) == 0) &&
               F.nheld < FETCH_HELD_MAX &&
               !celeriac_value_get(j->m.headers, "x-celeriac-redeliveries");
    int acks_late = def && (x->acks_late || (def->flags & CELERIAC_TASK_ACKS_LATE));
    if (mine && !d->reserved) {
        /* BRPOP brought it: recorded in unacked before anything else (as
         * kombu's QoS does), so that a kill of this process before it
         * reports the message leaves it for the visibility timeout. */
        struct broker_reservation r = {.delivery_tag = j->m.delivery_tag,
                                       .exchange = j->m.exchange ? j->m.exchange : "",
                                       .routing_key = j->m.routing_key ? j->m.routing_key
                                                                       : d->queue,
                                       .priority = j->m.priority};
        if (!F.connected || F.b->ops->reserve(F.b, &r, d->body, d->len) < 0)
            mine = 0; /* the main process reserves it */
        else
            snprintf(d->tag, sizeof d->tag, "%s", j->m.delivery_tag);
    }
    if (!mine) {
        F.handed = 1;
        task_message_clear(&j->m);
        if (pool_delivery_build(&l->out, POOL_HANDOFF, 0, d->reserved ? d->tag : "", d->queue,
                                NULL, 0, d->body, d->len) < 0)
            log_error("cannot hand a message from %s to the main process; it stays in unacked "
                      "and comes back after visibility_timeout", d->queue);
        free(d->body);
        d->body = NULL;
        return;
    }
    j->seq = POOL_SEQ_CHILD | (F.next_seq++ & (POOL_SEQ_CHILD - 1));
    j->own = 1;
    j->env = d->body;
    j->len = d->len;
    d->body = NULL;
    snprintf(j->tag, sizeof j->tag, "%s", d->tag);
    j->acks_late = acks_late;
    /* Every result goes back to the main process, which stores it (and
     * retries while the backend is down) without holding up this process. */
    j->flags = EXEC_QUEUED | (x->track_started ? EXEC_TRACK_STARTED : 0) |
               (x->ignore_result ? EXEC_IGNORE_RESULT : 0) |
               (x->backend ? EXEC_PARENT_STORES : 0) |
               (x->backend && !acks_late && !x->prompt_start ? EXEC_CHILD_STORES : 0);
    pool_child_queue_own(j->seq);
    /* The main process reads the header fields from the pack instead of
     * decoding the envelope again (from the envelope when the pack is empty). */
    F.pack.len = 0;
    if (task_message_pack_headers(&j->m, &F.pack) < 0) {
        uint32_t empty = 0;
        F.pack.len = 0;
        buf_append(&F.pack, &empty, sizeof empty);
    }
    if (F.pack.len < sizeof(uint32_t) ||
        pool_delivery_build(&l->out, POOL_RECEIVED, j->seq, d->tag, d->queue, F.pack.p,
                            F.pack.len, j->env, j->len) < 0) {
        /* The main process cannot know it: it stays in unacked for the
         * visibility timeout to bring back. */
        log_error("cannot report a message from %s to the main process; left in unacked",
                  d->queue);
        task_message_clear(&j->m);
        free(j->env);
        return;
    }
    F.held[F.nheld++] = job;
}

/* Reads the main process's frames without blocking: RUN jobs join the run
 * order, CONTROL frames change queues, hand-off names, revoked ids and the
 * pause. Returns negative at EOF. */
static int read_parent(struct task_exec *x, struct pool_link *l)
{
    for (;;) {
        int type;
        uint32_t flags, seq;
        const char *payload;
        size_t len;
        int rc = pool_child_next(l, 0, &type, &flags, &seq, &payload, &len);
        if (rc <= 0)
            return rc;
        if (type == POOL_CONTROL) {
            char **names = NULL;
            size_t n = 0;
            if (flags == POOL_CTL_HANDOFF) {
                set_names(&F.handoff, &F.nhandoff, payload, len);
                continue;
            }
            set_names(&names, &n, payload, len);
            if (flags == POOL_CTL_QUEUES && n && F.b->ops->set_queues(F.b, names, n) < 0)
                log_error("cannot change queues: %s", F.b->errstr);
            for (size_t i = 0; flags == POOL_CTL_REVOKE && x->revoked && i < n; i++)
                revoked_add(x->revoked, names[i], util_now());
            if (flags == POOL_CTL_PAUSE)
                F.paused = n > 0 && strcmp(names[0], "1") == 0;
            set_names(&names, &n, "", 0);
            continue;
        }
        if (F.nheld >= FETCH_HELD_MAX) {
            log_error("the main process sent more jobs than a process holds");
            return CELERIAC_EPROTO;
        }
        struct fetch_job *j = &F.held[F.nheld];
        memset(j, 0, sizeof *j);
        j->env = malloc(len + 1);
        if (!j->env)
            return CELERIAC_ENOMEM;
        memcpy(j->env, payload, len);
        j->env[len] = '\0';
        j->len = len;
        j->seq = seq;
        j->flags = flags;
        F.nheld++;
        struct pool_outcome acc = {.seq = seq};
        pool_child_write(l, POOL_ACCEPTED, &acc);
    }
}

/* Runs (or skips) the first job in the run order. */
static void run_next(struct task_exec *x, struct pool_link *l)
{
    struct fetch_job j = F.held[0];
    memmove(F.held, F.held + 1, (F.nheld - 1) * sizeof F.held[0]);
    F.nheld--;
    struct pool_outcome skip = {.status = POOL_SKIP_CANCELLED};
    if (!pool_child_claim(j.seq) ||
        (j.own && x->revoked && revoked_contains(x->revoked, j.m.id, util_now()))) {
        pool_child_write(l, POOL_SKIPPED, &skip); /* cancelled: the main process acks */
        pool_child_flush(l);
    } else if (j.own && (F.eof || parent_gone)) {
        /* Stopping before it started: back to its queue. */
        if (parent_gone) {
            if (!F.connected || F.b->ops->restore(F.b, j.tag) < 0)
                log_warning("could not return %s to its queue; it comes back after "
                            "visibility_timeout", j.m.id);
        } else {
            skip.status = POOL_SKIP_RETURNED;
            pool_child_write(l, POOL_SKIPPED, &skip);
            pool_child_flush(l);
        }
    } else if (!j.own && (j.flags & EXEC_QUEUED) && parent_gone) {
        /* never acknowledged: it waits in unacked */
    } else {
        const char *name = j.own ? j.m.task : NULL;
        /* A task not known to be short is acknowledged before it runs and
         * says STARTED at once; so does every task whose start someone
         * watches (task events, time limits). */
        int longer = !j.own || !name || !fetch_short(x, name) || j.m.time_limit > 0 ||
                     j.m.soft_time_limit > 0;
        int prompt = longer || x->prompt_start || x->time_limit > 0 || x->soft_time_limit > 0;
        uint32_t flags = j.flags;
        if (j.own) {
            if (!prompt)
                flags |= EXEC_QUIET_START | EXEC_DONE_LATER; /* reported with the next fetch */
            if (log_get_level() > LOG_INFO && !x->prompt_start)
                flags |= EXEC_NO_REPR;
            if (!j.acks_late)
                tags_push(&F.acks, j.tag); /* early ack: rides in the next fetch */
        }
        if (longer) {
            stores_finish(x, l); /* results of the short tasks before it do not wait for it */
            acks_now(l);         /* acknowledged before it runs, as Celery does */
        }
        if (j.own) {
            char *name_copy = strdup(j.m.task);
            run_message(x, l, j.env, j.len, flags, &j.m, 0, "");
            F.short_run = name_copy && fetch_short(x, name_copy);
            free(name_copy);
        } else {
            run_one(x, l, j.env, j.len, flags);
            F.short_run = 0;
        }
    }
    task_message_clear(&j.m);
    free(j.env);
}

/* Waits up to ms for the broker reply or a frame from the main process. */
static int fetch_wait(struct pool_link *l, int ms)
{
    struct pollfd p[2] = {{.fd = F.connected ? F.b->ops->fetch_fd(F.b) : -1, .events = POLLIN},
                          {.fd = l->fd, .events = POLLIN}};
    int n = poll(p, 2, ms);
    if (n > 0 && (p[1].revents & (POLLIN | POLLHUP | POLLERR)))
        l->readable = 1;
    return n;
}

/* Returns a message taken while stopping to the head of its queue (recorded
 * in unacked first when BRPOP brought it), as the main process does. */
static void fetch_give_back(struct task_exec *x, struct broker_delivery *d)
{
    struct task_message peek = {0};
    char err[64];
    struct task_message_limits lim = x->limits;
    lim.headers_only = 1;
    task_message_decode(d->body, d->len, &lim, &peek, err, sizeof err);
    const char *tag = d->reserved ? d->tag : peek.delivery_tag;
    struct broker_reservation r = {.delivery_tag = tag ? tag : "",
                                   .exchange = peek.exchange ? peek.exchange : "",
                                   .routing_key = peek.routing_key ? peek.routing_key : d->queue,
                                   .priority = peek.priority};
    if (!tag || (!d->reserved && F.b->ops->reserve(F.b, &r, d->body, d->len) < 0) ||
        F.b->ops->restore(F.b, tag) < 0)
        log_warning("a message from %s taken while stopping could not be returned%s", d->queue,
                    d->reserved ? "; it comes back after visibility_timeout" : "");
    task_message_clear(&peek);
    free(d->body);
    d->body = NULL;
}

/* Seconds without a reply before an outstanding fetch counts as a lost link:
 * BRPOP's own 1 s timeout plus the 10 s every other broker command gets (as
 * in the main process). */
#define FETCH_REPLY_TIMEOUT 11.0

/* A broker that stopped answering without closing the link. */
static int fetch_silent(double since)
{
    if (util_monotonic() - since <= FETCH_REPLY_TIMEOUT)
        return 0;
    snprintf(F.b->errstr, sizeof F.b->errstr, "no reply in %.0f s", FETCH_REPLY_TIMEOUT);
    fetch_disconnect("fetch");
    return 1;
}

/* One round trip: the owed acks and up to window new messages; then BRPOP
 * while the queues are empty. */
static void fetch_cycle(struct task_exec *x, struct pool_link *l)
{
    double mono = util_monotonic();
    if (!F.connected) {
        stores_finish(x, l); /* the result backend may be reachable still */
        pool_child_flush(l);
        if (mono < F.retry_at) {
            fetch_wait(l, (int)((F.retry_at - mono) * 1000) + 1);
            if (read_parent(x, l) < 0)
                F.eof = 1;
            return;
        }
        if (F.b->ops->connect(F.b) < 0) {
            F.connected = 1; /* for fetch_disconnect()'s backoff */
            fetch_disconnect("connect");
            return;
        }
        log_info("Connected to broker again");
        F.connected = 1;
        F.backoff = 0;
    }
    /* The whole window only while tasks are known to be short: a message
     * taken here waits for this process alone, so with longer tasks (or
     * none run yet) one at a time, and an idle process takes the next. */
    size_t n = F.short_run ? x->window : 1;
    if (F.b->ops->fetch_batch_send(F.b, (const char *const *)F.acks.v, F.acks.n, n) < 0) {
        fetch_disconnect("fetch");
        stores_finish(x, l);
        return;
    }
    stores_send(x);
    pool_child_flush(l); /* the reports of the tasks run since the last fetch */
    struct broker_delivery d[POOL_FETCH_MAX];
    size_t count = 0;
    int rc = 0;
    double sent_at = util_monotonic();
    while (rc == 0) {
        if (fetch_wait(l, 1000) < 0 && errno != EINTR) {
            rc = -1;
            break;
        }
        if (read_parent(x, l) < 0)
            F.eof = 1;
        rc = F.b->ops->fetch_batch_read(F.b, d, POOL_FETCH_MAX, &count);
        if (rc == 0 && fetch_silent(sent_at)) {
            stores_finish(x, l);
            return;
        }
    }
    stores_finish(x, l);
    if (rc < 0 && count == 0) {
        fetch_disconnect("fetch"); /* the acks are sent again once it is back */
        pool_child_flush(l);
        return;
    }
    if (F.acks.n) {
        tags_clear(&F.acks);
        pool_child_write(l, POOL_ACKED, NULL);
    }
    F.handed = 0;
    for (size_t i = 0; i < count; i++) {
        if (F.eof || parent_gone)
            fetch_give_back(x, &d[i]);
        else
            fetch_take(x, l, &d[i]);
    }
    /* A batch of short tasks, all run here, nobody watching them start: its
     * reports (RECEIVED, the acks done, the results stored) go with the
     * tasks' own in the next write, kept meanwhile where the main process
     * reads them if this process dies first. Otherwise they go now. */
    if (!(F.nheld && F.short_run && !F.handed && !x->prompt_start && pool_child_keep(l)))
        pool_child_flush(l);
    if (count > 0 || F.eof || parent_gone || F.nheld || F.paused)
        return;
    /* Nothing waiting: BRPOP (1 s) until a message or the main process comes. */
    if (F.b->ops->fetch_start(F.b) < 0) {
        fetch_disconnect("fetch");
        return;
    }
    double since = util_monotonic();
    for (;;) {
        struct broker_delivery one = {0};
        if (fetch_silent(since))
            return;
        fetch_wait(l, 1000);
        if (read_parent(x, l) < 0)
            F.eof = 1;
        if ((F.eof || F.nheld || parent_gone || F.paused) && F.b->ops->fetch_fd(F.b) >= 0)
            F.b->ops->fetch_cancel(F.b);
        if (F.b->ops->fetch_fd(F.b) < 0)
            return; /* cancelled and answered */
        int got = F.b->ops->fetch_read(F.b, &one);
        if (got < 0) {
            free(one.body);
            fetch_disconnect("fetch");
            return;
        }
        if (got == 0) {
            if (F.b->ops->fetch_fd(F.b) < 0) {
                /* BRPOP timed out with nothing: ask again. */
                if (F.eof || F.nheld || parent_gone || F.paused)
                    return;
                if (F.b->ops->fetch_start(F.b) < 0) {
                    fetch_disconnect("fetch");
                    return;
                }
                since = util_monotonic();
            }
            continue;
        }
        if (F.eof || parent_gone || F.paused)
            fetch_give_back(x, &one);
        else
            fetch_take(x, l, &one);
        pool_child_flush(l);
        return;
    }
}

static void fetch_main(struct task_exec *x, struct pool_link *l)
{
    char err[256];
    F.b = broker_new(x->broker_url, &x->broker_opts, err, sizeof err);
    if (!F.b) {
        log_error("broker (fetching): %s", err);
        return;
    }
    if (F.b->ops->set_queues(F.b, (char **)x->queues, x->nqueues) < 0)
        log_error("broker (fetching): %s", F.b->errstr);
    /* What each fetch takes is also recorded in Redis, so that the main
     * process can return it if this process dies before reporting it. */
    char record[300];
    snprintf(record, sizeof record, "celeriac.fetching.%s.%d", x->hostname, (int)getpid());
    F.b->ops->set_fetch_record(F.b, record);
    for (size_t i = 0; i < x->nhandoff; i++) {
        char **v = realloc(F.handoff, (F.nhandoff + 1) * sizeof *v);
        if (!v)
            break;
        F.handoff = v;
        if ((v[F.nhandoff] = strdup(x->handoff[i])) != NULL)
            F.nhandoff++;
    }
    F.paused = x->paused;
    F.connected = 1;
    if (F.b->ops->connect(F.b) < 0)
        fetch_disconnect("connect");
    if (x->window > POOL_FETCH_MAX)
        x->window = POOL_FETCH_MAX;
    if (x->window < 1)
        x->window = 1;
    for (;;) {
        if (read_parent(x, l) < 0)
            F.eof = 1;
        if (F.nheld) {
            run_next(x, l);
            continue;
        }
        if (F.eof || parent_gone)
            break;
        if (F.paused) {
            /* The main process cannot store results now: take nothing new. */
            stores_finish(x, l);
            acks_now(l);
            pool_child_flush(l);
            struct pollfd p = {.fd = l->fd, .events = POLLIN};
            if (poll(&p, 1, 1000) > 0)
                l->readable = 1;
            continue;
        }
        fetch_cycle(x, l);
    }
    stores_finish(x, l);
    acks_now(l);
    if (F.acks.n)
        log_warning("%zu acknowledgement(s) could not be sent; the main process sends them",
                    F.acks.n);
    tags_clear(&F.acks);
    pool_child_flush(l);
    broker_free(F.b);
    F.b = NULL;
    set_names(&F.handoff, &F.nhandoff, "", 0);
    buf_free(&F.pack);
    free(F.acks.v);
    for (size_t i = 0; i < F.nest; i++)
        free(F.est[i].name);
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
    if (x->fetch) {
        link.duplex = 1;
        fetch_main(x, &link);
        kept_settle(x); /* results the main process had not stored yet */
        kept_free();
        pool_link_free(&link);
        backend_free(x->backend);
        x->backend = NULL;
        broker_free(x->publisher);
        x->publisher = NULL;
        return;
    }
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
