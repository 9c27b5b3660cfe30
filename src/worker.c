/* worker.c - the main process: the poll loop, job bookkeeping, acks, restore,
 * reconnect and shutdown. Decoding is task_message.c, storage is backend_*.c,
 * running tasks is task_exec.c in pool processes. */
#include "worker.h"
#include "worker_internal.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/uio.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "backend.h"
#include "broker.h"
#include "log.h"
#include "pool.h"
#include "task_exec.h"
#include "task_message.h"
#include "task_registry.h"
#include "tasks/builtin.h"
#include "url.h"
#include "util.h"
#include "value.h"
#include "canvas.h"
#include "revoked.h"
#include "status.h"

#define MAX_SCHEDULED 10000        /* ETA jobs held in memory before fetching pauses */
#define WARM_FETCH_GRACE 3.0       /* seconds to wait for an outstanding fetch at stop */

static const char *const state_names[] = {"starting", "running", "reconnecting",
                                          "warm shutdown", "cold shutdown", "stopped"};

static int sigpipe_w = -1;

static void on_signal(int sig)
{
    int saved = errno;
    unsigned char c = (unsigned char)sig;
    if (sigpipe_w >= 0) {
        ssize_t n = write(sigpipe_w, &c, 1);
        (void)n;
    }
    errno = saved;
}

static void set_state(struct worker *w, enum worker_state s)
{
    if (w->state == s)
        return;
    log_info("worker: %s -> %s", state_names[w->state], state_names[s]);
    w->state = s;
}

/* ---- jobs ------------------------------------------------------------------ */

static void job_free(struct job *j)
{
    if (!j)
        return;
    task_message_clear(&j->msg);
    free(j->envelope);
    free(j);
}

/* Decodes a job's body when the main process needs args or the canvas embed
 * (inspect, events of protocol 1, failures it decides itself); normally only
 * the pool process reads bodies. Leaves them NULL if the body is malformed. */
static void job_body(struct worker *w, struct job *j)
{
    if (!j->msg.body_pending)
        return;
    struct task_message full = {0};
    struct task_message_limits lim = w->exec.limits;
    char err[256];
    j->msg.body_pending = 0;
    if (task_message_decode(j->envelope, j->len, &lim, &full, err, sizeof err) == 0) {
        j->msg.args = full.args;
        j->msg.kwargs = full.kwargs;
        j->msg.embed = full.embed;
        full.args = full.kwargs = full.embed = NULL;
    }
    task_message_clear(&full);
}

static void tag_push(struct tag_list *l, const char *tag)
{
    if (l->len == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 16;
        char **t = realloc(l->tags, cap * sizeof *t);
        if (!t)
            return;
        l->tags = t;
        l->cap = cap;
    }
    l->tags[l->len] = strdup(tag);
    if (l->tags[l->len])
        l->len++;
}

static void tags_move(struct tag_list *to, struct tag_list *from);

/* The outstanding batch fetch will not be answered (its link is gone): its
 * acks are sent again once the broker is back. */
static void fetch_forget(struct worker *w)
{
    if (!w->fetch.inflight)
        return;
    w->fetch.inflight = 0;
    tags_move(&w->pending_acks, &w->fetch.acks);
}

static void broker_lost(struct worker *w, const char *what)
{
    if (w->state == W_RECONNECTING || w->state == W_STOPPED)
        return;
    log_error("broker connection lost during %s: %s", what, w->broker->errstr);
    w->broker->ops->disconnect(w->broker);
    fetch_forget(w);
    if (w->state == W_RUNNING || w->state == W_STARTING) {
        set_state(w, W_RECONNECTING);
        w->backoff = 0.2;
        w->reconnect_at = util_monotonic() + w->backoff;
    }
}

static void job_ack_to(struct worker *w, struct job *j, struct tag_list *batch);

/* Acknowledges a job's message now, or later when the broker is back. */
static void job_ack(struct worker *w, struct job *j)
{
    job_ack_to(w, j, &w->ack_batch);
}

static void job_ack_to(struct worker *w, struct job *j, struct tag_list *batch)
{
    if (j->acked)
        return;
    j->acked = 1;
    if (j->own) {
        /* Its pool process sends this ack with its next fetch; kept until it
         * says ACKED, and sent from here if the process dies first. */
        struct pool_child *c = pool_find_pid(&w->pool, j->worker_pid);
        if (c)
            pool_owe(c, j->msg.delivery_tag);
        else
            tag_push(w->state == W_RECONNECTING ? &w->pending_acks : batch, j->msg.delivery_tag);
        return;
    }
    if (!j->reserved)
        return;
    if (w->unacked)
        w->unacked--;
    /* Sent with the other acks of this loop iteration (flush_acks). */
    tag_push(w->state == W_RECONNECTING ? &w->pending_acks : batch, j->msg.delivery_tag);
}

/* A job a fetching pool process took becomes the main process's own: it
 * acks, restores or requeues it from now on. */
static void job_take_over(struct worker *w, struct job *j)
{
    if (!j || !j->own)
        return;
    j->own = 0;
    if (j->reserved && !j->acked)
        w->unacked++;
}

/* Keeps a result a pool process sent back (EXEC_PARENT_STORES); takes doc. */
static int results_recv(struct worker *w);

static void result_push(struct worker *w, pid_t from, const char *task_id, char *doc,
                        size_t len)
{
    struct result_batch *b = &w->results; /* never the batch in flight */
    if (b->len == b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 16;
        char **ids = realloc(b->ids, cap * sizeof *ids);
        if (ids)
            b->ids = ids;
        char **docs = realloc(b->docs, cap * sizeof *docs);
        if (docs)
            b->docs = docs;
        size_t *lens = realloc(b->lens, cap * sizeof *lens);
        if (lens)
            b->lens = lens;
        pid_t *pids = realloc(b->pids, cap * sizeof *pids);
        if (pids)
            b->pids = pids;
        if (!ids || !docs || !lens || !pids) {
            /* Out of memory: store this one alone rather than lose it. */
            backend_store_many(w->backend, 1, &task_id, (const char *const *)&doc, &len);
            free(doc);
            return;
        }
        b->cap = cap;
    }
    b->ids[b->len] = strdup(task_id);
    if (!b->ids[b->len]) {
        backend_store_many(w->backend, 1, &task_id, (const char *const *)&doc, &len);
        free(doc);
        return;
    }
    b->docs[b->len] = doc;
    b->pids[b->len] = from;
    b->lens[b->len++] = len;
}

/* Results a fetching process kept to store itself, now stored from here:
 * it could not store them, or it died before it said so. */
static void unstored_take(struct worker *w, struct pool_child *c)
{
    struct pool_results *r = &c->unstored;
    for (size_t i = 0; i < r->n; i++) {
        result_push(w, -1, r->ids[i], r->docs[i], r->lens[i]); /* -1: nobody keeps a copy */
        free(r->ids[i]);
    }
    r->n = 0;
}

/* Tells each pool process how many of its results are stored now (or given
 * up on): it stops keeping its copies (see pool_results_stored()). */
static void results_settled(struct worker *w, const struct result_batch *b)
{
    for (size_t i = 0; i < b->len; i++)
        for (size_t k = 0; k < w->pool.n; k++)
            if (w->pool.children[k].pid == b->pids[i]) {
                pool_results_stored(&w->pool.children[k], 1);
                break;
            }
}

/* Fetching pool processes send two or three frames per task (RECEIVED,
 * STARTED, DONE) and run without the main process. While their frames come
 * at POOL_TICK_FRAMES or more per POOL_TICK seconds (some 6,000 tasks/s and
 * up), the loop stops polling their links and reads them all once per
 * POOL_TICK: two wake-ups per tick (the frames, the reply of the results
 * they carried) instead of one or more per frame, and a tick's results are
 * stored in one call. A result is then stored up to POOL_TICK later than it
 * could be; below that rate (a single task, the latency loop of the bench)
 * every frame is read as it comes. Anything else the loop waits for (signals,
 * remote control, the results' reply, timers) wakes it as before. */
#define POOL_TICK 0.0005
#define POOL_TICK_FRAMES 8

/* Results a batch may hold while the backend is down before fetching stops. */
#define RESULTS_PENDING_MAX 10000

/* Moves every tag of from to the end of to (kept in from if out of memory). */
static void tags_move(struct tag_list *to, struct tag_list *from)
{
    if (from->len == 0)
        return;
    if (to->len + from->len > to->cap) {
        size_t cap = to->len + from->len + 16;
        char **t = realloc(to->tags, cap * sizeof *t);
        if (!t)
            return;
        to->tags = t;
        to->cap = cap;
    }
    memcpy(to->tags + to->len, from->tags, from->len * sizeof *from->tags);
    to->len += from->len;
    from->len = 0;
}

/* Writes this iteration's results to the backend without waiting for the
 * reply, so the caller can overlap it with the fetch; results_recv() must
 * follow. Returns 1 when sent. Not while a failed batch waits its retry. */
static int results_send(struct worker *w)
{
    struct result_batch *b = &w->results_out;
    if (b->len == 0 && w->results.len > 0) {
        /* The collected results go out; new ones collect meanwhile. */
        struct result_batch t = *b;
        *b = w->results;
        w->results = t;
    }
    if (b->len == 0 || !w->backend || b->sent || b->retry_at > util_monotonic())
        return 0;
    int rc = backend_store_send(w->backend, b->len, (const char *const *)b->ids,
                                (const char *const *)b->docs, b->lens);
    b->sent = rc == 0 ? 1 : rc;
    b->sent_at = util_monotonic();
    return 1;
}

/* The outcome of results_send(). One attempt, so the loop (heartbeats,
 * remote control, time limits) keeps running while the backend is down: the
 * results are kept and retried every second, until
 * result_backend_retry_timeout has passed (then they are dropped with an
 * error, as a pool process gives up). Once stored, the acks_late acks that
 * follow them are released. 0 when nothing is left pending, CELERIAC_ECONN
 * while results wait (their late acks wait too). */
static int results_recv(struct worker *w)
{
    struct result_batch *b = &w->results_out;
    if (b->len == 0)
        return 0;
    double mono = util_monotonic();
    int rc = 0;
    if (w->backend) {
        if (!b->sent)
            return CELERIAC_ECONN; /* waiting for the retry time */
        rc = b->sent < 0 ? b->sent
                         : backend_store_recv(w->backend, b->len, (const char *const *)b->ids,
                                              (const char *const *)b->docs, b->lens);
        b->sent = 0;
    }
    if (rc == CELERIAC_ECONN || rc == CELERIAC_ETIMEDOUT) {
        if (b->failing_since == 0) {
            b->failing_since = mono;
            log_warning("result backend unavailable (%s); keeping %zu result(s) and retrying",
                        w->backend->errstr, b->len);
        }
        if (mono - b->failing_since < w->cfg->result_backend_retry_timeout) {
            b->retry_at = mono + 1.0;
            return CELERIAC_ECONN;
        }
        log_error("%zu result(s) not stored, e.g. %s: %s (gave up after %.0f s)", b->len,
                  b->ids[0], w->backend->errstr, w->cfg->result_backend_retry_timeout);
    } else if (b->failing_since != 0) {
        log_info("result backend reachable again: %zu kept result(s) stored", b->len);
    }
    b->failing_since = 0;
    b->retry_at = 0;
    results_settled(w, b);
    for (size_t i = 0; i < b->len; i++) {
        free(b->ids[i]);
        free(b->docs[i]);
    }
    b->len = 0;
    tags_move(&w->ack_batch, &b->late_acks);
    return 0;
}

/* Stores every collected result now (reading the reply of the batch in
 * flight first). CELERIAC_ECONN while results wait for the backend. */
static int flush_results(struct worker *w)
{
    for (int round = 0; round < 2; round++) {
        results_send(w);
        int rc = results_recv(w);
        if (rc < 0)
            return rc;
    }
    return 0;
}

static size_t results_held(const struct worker *w)
{
    return w->results.len + w->results_out.len;
}

/* Sends ack_batch (acks_late acks join it once their results are stored). */
static void flush_acks(struct worker *w)
{
    struct tag_list *b = &w->ack_batch;
    if (b->len == 0)
        return;
    int rc = w->state == W_RECONNECTING
                 ? CELERIAC_ECONN
                 : w->broker->ops->ack_many(w->broker, (const char **)b->tags, b->len);
    for (size_t i = 0; i < b->len; i++) {
        if (rc < 0)
            tag_push(&w->pending_acks, b->tags[i]);
        free(b->tags[i]);
    }
    b->len = 0;
    if (rc < 0)
        broker_lost(w, "ack");
}

/* Returns a reserved message to the head of its queue (shutdown). */
static void job_reserve(struct worker *w, struct job *j);

static void job_restore(struct worker *w, struct job *j)
{
    if (j->acked)
        return;
    if (!j->reserved)
        job_reserve(w, j); /* taken without a reservation: record it to hand it back */
    if (!j->reserved) {
        log_error("%s[%s] could not be returned to its queue (broker unreachable)",
                  task_message_display_name(&j->msg), j->msg.id ? j->msg.id : "?");
        return;
    }
    j->acked = 1;
    if (w->unacked)
        w->unacked--;
    if (w->state == W_RECONNECTING ||
        w->broker->ops->restore(w->broker, j->msg.delivery_tag) < 0)
        log_warning("could not return %s[%s] to its queue now; it stays unacknowledged and "
                    "comes back after visibility_timeout",
                    task_message_display_name(&j->msg), j->msg.id);
}

/* The parent publishes through its own broker link (none while reconnecting). */
static struct broker *parent_publisher(void *ud)
{
    struct worker *w = ud;
    return w->state == W_RECONNECTING ? NULL : w->broker;
}

static struct canvas_env parent_canvas(struct worker *w)
{
    struct canvas_env e = {.publisher = parent_publisher, .ud = w, .backend = w->backend,
                           .hostname = w->cfg->hostname, .reply_to = NULL};
    return e;
}

/* Stores a FAILURE decided by the main process (unknown task, lost or timed
 * out process, poison message) and, for a decoded task, does what Celery's
 * mark_as_failure does: fail the rest of its chain, join its chord, send its
 * errbacks. exc is borrowed. */
static void fail_task(struct worker *w, const struct task_message *m, const celeriac_value *exc,
                      const char *traceback, int decoded)
{
    int stored = 0;
    if (w->backend && m->id && !m->ignore_result) {
        struct result_meta rm = {.task_id = m->id, .status = "FAILURE", .result = exc,
                                 .traceback = traceback, .group_id = m->group,
                                 .parent_id = m->parent_id, .ready = 1};
        stored = backend_store_meta(w->backend, &rm) == 0;
    }
    if (decoded && m->id) {
        struct canvas_env e = parent_canvas(w);
        canvas_on_failure(&e, m, exc, traceback, stored);
    }
}

/* Rejects a job's message with requeue (to the tail, as kombu's reject);
 * when that cannot be done now it comes back after visibility_timeout. */
static void job_requeue(struct worker *w, struct job *j)
{
    if (j->acked)
        return;
    j->acked = 1;
    if (!j->reserved)
        return;
    if (w->unacked)
        w->unacked--;
    if (w->state == W_RECONNECTING ||
        w->broker->ops->reject(w->broker, j->msg.delivery_tag, 1) < 0)
        log_warning("requeue of %s failed; it returns after visibility_timeout", j->msg.id);
}

static void store_failure_ex(struct worker *w, const struct task_message *m, const char *module,
                             const char *type, const char *message, int decoded)
{
    celeriac_value *exc = backend_exception(module, type, message);
    char *tb = backend_traceback(module, type, message);
    if (exc)
        fail_task(w, m, exc, tb, decoded);
    free(tb);
    celeriac_value_free(exc);
}

static void store_failure(struct worker *w, const struct task_message *m, const char *module,
                          const char *type, const char *message)
{
    store_failure_ex(w, m, module, type, message, 1);
}

/* The fields of a task event, starting with its uuid; NULL when task events
 * are off (nothing to build). */
static celeriac_value *fields_uuid(const struct worker *w, const struct task_message *m)
{
    if (!events_task_enabled(&w->events))
        return NULL;
    celeriac_value *f = celeriac_value_new_object();
    if (f)
        celeriac_value_set(f, "uuid", celeriac_value_new_string(m->id ? m->id : ""));
    return f;
}

static void event_revoked(struct worker *w, const struct task_message *m, int terminated,
                          int signum, int expired)
{
    celeriac_value *f = fields_uuid(w, m);
    if (!f)
        return;
    celeriac_value_set(f, "terminated", celeriac_value_new_bool(terminated));
    celeriac_value_set(f, "signum", signum ? celeriac_value_new_int(signum)
                                           : celeriac_value_new_null());
    celeriac_value_set(f, "expired", celeriac_value_new_bool(expired));
    events_task(&w->events, "task-revoked", f);
}

static void event_failed(struct worker *w, const struct task_message *m, const char *exc_repr,
                         const char *traceback)
{
    celeriac_value *f = fields_uuid(w, m);
    if (!f)
        return;
    celeriac_value_set(f, "exception", celeriac_value_new_string(exc_repr ? exc_repr : ""));
    if (traceback)
        celeriac_value_set(f, "traceback", celeriac_value_new_string(traceback));
    events_task(&w->events, "task-failed", f);
}

/* Counts a finished task; runtime < 0 when it did not run to an outcome
 * (the process was lost), which then also ends its short-task estimate. */
static void count_task(struct worker *w, const char *name, double runtime)
{
    for (size_t i = 0; i < w->ntotals; i++)
        if (strcmp(w->totals[i].name, name) == 0) {
            struct task_total *t = &w->totals[i];
            t->count++;
            t->runtime = runtime < 0 ? 1e9 : t->count == 1 ? runtime
                                                        : 0.8 * t->runtime + 0.2 * runtime;
            return;
        }
    struct task_total *t = realloc(w->totals, (w->ntotals + 1) * sizeof *t);
    if (!t)
        return;
    w->totals = t;
    t[w->ntotals].name = strdup(name);
    if (t[w->ntotals].name) {
        t[w->ntotals].count = 1;
        t[w->ntotals].runtime = runtime < 0 ? 1e9 : runtime;
        w->ntotals++;
    }
}

static void store_revoked(struct worker *w, const struct task_message *m, const char *reason)
{
    if (!w->backend || !m->id || m->ignore_result)
        return;
    celeriac_value *exc = backend_exception("celery.exceptions", "TaskRevokedError", reason);
    struct result_meta rm = {.task_id = m->id, .status = "REVOKED", .result = exc,
                             .group_id = m->group, .parent_id = m->parent_id, .ready = 1};
    backend_store_meta(w->backend, &rm);
    /* A revoked chord member still counts towards the join (mark_as_revoked). */
    struct canvas_env e = parent_canvas(w);
    canvas_chord_part(&e, m, "REVOKED", exc);
    celeriac_value_free(exc);
}

/* A revoked or expired task that will not run: logged, REVOKED stored with
 * the reason, task-revoked sent. The caller acks (if due) and frees it. */
static void announce_discarded(struct worker *w, struct job *j, int expired)
{
    log_info("Discarding revoked task: %s[%s]%s", task_message_display_name(&j->msg), j->msg.id,
             expired ? " (expired)" : "");
    job_body(w, j);
    store_revoked(w, &j->msg, expired ? "expired" : "revoked");
    event_revoked(w, &j->msg, 0, 0, expired);
}

static void schedule_insert(struct worker *w, struct job *j)
{
    struct job **pp = &w->scheduled;
    while (*pp && (*pp)->msg.eta <= j->msg.eta)
        pp = &(*pp)->next;
    j->next = *pp;
    *pp = j;
    w->nscheduled++;
}

static void ready_push(struct worker *w, struct job *j)
{
    j->next = NULL;
    if (w->ready_tail)
        w->ready_tail->next = j;
    else
        w->ready_head = j;
    w->ready_tail = j;
    w->nready++;
}

/* Back at the head: a job a lost process had queued and never started. */
static void ready_push_front(struct worker *w, struct job *j)
{
    j->next = w->ready_head;
    w->ready_head = j;
    if (!w->ready_tail)
        w->ready_tail = j;
    w->nready++;
}

static struct job *ready_pop(struct worker *w)
{
    struct job *j = w->ready_head;
    if (!j)
        return NULL;
    w->ready_head = j->next;
    if (!w->ready_head)
        w->ready_tail = NULL;
    j->next = NULL;
    w->nready--;
    return j;
}

/* ---- receiving ---------------------------------------------------------------- */

/* A message that cannot become a job: log it clearly and, when its id is
 * known, store a FAILURE so the caller does not wait forever. */
static void reject_bad_message(struct worker *w, const struct broker_delivery *d,
                               const struct task_message *m, int rc, const char *err)
{
    const char *type = rc == CELERIAC_ECONTENT ? "ContentDisallowed" : "InvalidTaskError";
    const char *module = rc == CELERIAC_ECONTENT ? "kombu.exceptions" : "celery.exceptions";
    log_error("discarding message from queue %s (%zu bytes, id %s): %s", d->queue, d->len,
              m->id ? m->id : "unknown", err);
    store_failure_ex(w, m, module, type, err, 0);
}

/* Records a message as unacknowledged in the broker (kombu's QoS.append). */
static void job_reserve(struct worker *w, struct job *j)
{
    if (j->reserved || j->acked || !j->msg.delivery_tag)
        return;
    struct broker_reservation res = {
        .delivery_tag = j->msg.delivery_tag,
        .exchange = j->msg.exchange ? j->msg.exchange : "",
        .routing_key = j->msg.routing_key ? j->msg.routing_key : j->queue,
        .priority = j->msg.priority};
    if (w->state != W_RECONNECTING &&
        w->broker->ops->reserve(w->broker, &res, j->envelope, j->len) == 0) {
        j->reserved = 1;
        w->unacked++;
    } else {
        broker_lost(w, "reserve");
    }
}

/* task-received, when task events are on. */
static void announce_received(struct worker *w, struct job *j)
{
    const char *name = task_message_display_name(&j->msg);
    if (!w->events.task_events)
        return;
    if (!j->msg.argsrepr || !j->msg.kwargsrepr)
        job_body(w, j);
    celeriac_value *f = fields_uuid(w, &j->msg);
    char eta[40], expires[40];
    if (j->msg.eta > 0)
        util_iso8601_format_tz(j->msg.eta, eta, sizeof eta);
    if (j->msg.expires > 0)
        util_iso8601_format_tz(j->msg.expires, expires, sizeof expires);
    char *args = j->msg.argsrepr ? NULL : value_repr(j->msg.args, 1024);
    char *kwargs = j->msg.kwargsrepr ? NULL : value_repr(j->msg.kwargs, 1024);
    celeriac_value_set(f, "name", celeriac_value_new_string(name));
    celeriac_value_set(f, "args", celeriac_value_new_string(
                                      j->msg.argsrepr ? j->msg.argsrepr : args ? args : ""));
    celeriac_value_set(f, "kwargs",
                       celeriac_value_new_string(j->msg.kwargsrepr ? j->msg.kwargsrepr
                                                                   : kwargs ? kwargs : ""));
    celeriac_value_set(f, "root_id", j->msg.root_id ? celeriac_value_new_string(j->msg.root_id)
                                                    : celeriac_value_new_null());
    celeriac_value_set(f, "parent_id", j->msg.parent_id
                                           ? celeriac_value_new_string(j->msg.parent_id)
                                           : celeriac_value_new_null());
    celeriac_value_set(f, "retries", celeriac_value_new_int(j->msg.retries));
    celeriac_value_set(f, "eta", j->msg.eta > 0 ? celeriac_value_new_string(eta)
                                                : celeriac_value_new_null());
    celeriac_value_set(f, "expires", j->msg.expires > 0 ? celeriac_value_new_string(expires)
                                                        : celeriac_value_new_null());
    events_task(&w->events, "task-received", f);
    free(args);
    free(kwargs);
}

static void on_message(struct worker *w, struct broker_delivery *d)
{
    struct job *j = calloc(1, sizeof *j);
    char err[512] = "";
    if (!j) {
        log_error("out of memory receiving a message from %s; it is lost", d->queue);
        free(d->body);
        return;
    }
    j->envelope = d->body;
    j->len = d->len;
    d->body = NULL;
    snprintf(j->queue, sizeof j->queue, "%s", d->queue);
    j->received = util_now();
    int rc = task_message_decode(j->envelope, j->len, &w->limits, &j->msg, err, sizeof err);
    if (rc < 0) {
        reject_bad_message(w, d, &j->msg, rc, err);
        if (d->reserved) /* recorded in unacked by the batch fetch: dropped for good */
            tag_push(w->state == W_RECONNECTING ? &w->pending_acks : &w->ack_batch, d->tag);
        job_free(j);
        return;
    }
    /* Reserved by the batch fetch; the script read the tag with a pattern,
     * so make sure it is the message's own. A message discarded below is
     * acknowledged, so nothing is left in unacked to come back later. */
    int wrong_tag = 0;
    if (d->reserved) {
        if (j->msg.delivery_tag && strcmp(d->tag, j->msg.delivery_tag) == 0) {
            j->reserved = 1;
            w->unacked++;
        } else {
            const char *wrong = d->tag;
            w->broker->ops->ack_many(w->broker, &wrong, 1);
            wrong_tag = 1;
        }
    }
    const char *name = task_message_display_name(&j->msg);
    const struct task_def *def = task_registry_find(w->registry, j->msg.task);
    if (!def) {
        log_error("Received unregistered task of type '%s'. The message has been ignored and "
                  "discarded. (id %s; use --task-alias %s=NAME to map it onto a celeriac task)",
                  j->msg.task, j->msg.id, j->msg.task);
        char msg[600];
        snprintf(msg, sizeof msg, "%s", j->msg.task);
        job_body(w, j);
        store_failure(w, &j->msg, "celery.exceptions", "NotRegistered", msg);
        char *exc = task_exec_exc_repr("NotRegistered", j->msg.task);
        event_failed(w, &j->msg, exc, NULL);
        free(exc);
        job_ack(w, j);
        job_free(j);
        return;
    }
    if (revoked_contains(&w->revoked, j->msg.id, util_now())) {
        announce_discarded(w, j, 0);
        job_ack(w, j);
        job_free(j);
        return;
    }
    /* A message whose workers keep dying (a poison message) is redelivered
     * again and again: stop after max_redeliveries with a clear FAILURE. */
    int64_t deliveries = celeriac_value_int(celeriac_value_get(j->msg.headers,
                                                               "x-celeriac-redeliveries"));
    if (w->cfg->max_redeliveries > 0 && deliveries > w->cfg->max_redeliveries) {
        char msg[256];
        snprintf(msg, sizeof msg,
                 "message redelivered %lld times after lost workers (max_redeliveries=%ld); "
                 "giving up",
                 (long long)deliveries, w->cfg->max_redeliveries);
        log_error("Task %s[%s]: %s", name, j->msg.id, msg);
        job_body(w, j);
        store_failure(w, &j->msg, "celeriac.exceptions", "RedeliveryLimitExceeded", msg);
        char *exc = task_exec_exc_repr("RedeliveryLimitExceeded", msg);
        event_failed(w, &j->msg, exc, NULL);
        free(exc);
        job_ack(w, j);
        job_free(j);
        return;
    }
    if (j->msg.expires > 0 && j->msg.expires < util_now()) {
        announce_discarded(w, j, 1);
        job_ack(w, j);
        job_free(j);
        return;
    }
    j->acks_late = w->cfg->task_acks_late || (def->flags & CELERIAC_TASK_ACKS_LATE);
    j->flags = (w->cfg->task_track_started ? EXEC_TRACK_STARTED : 0) |
               (w->cfg->task_ignore_result ? EXEC_IGNORE_RESULT : 0) |
               (w->backend ? EXEC_PARENT_STORES : 0);
    if (wrong_tag || (!j->reserved && (j->acks_late || j->msg.eta > util_now())))
        job_reserve(w, j);
    /* Early-ack jobs that find an idle process right away are never written
     * to unacked (their ack would follow within microseconds, as kombu's
     * reserve+ack pair would); dispatch() reserves any that have to wait. */
    log_info("Task %s[%s] received", name, j->msg.id);
    announce_received(w, j);
    if (j->msg.eta > util_now())
        schedule_insert(w, j);
    else
        ready_push(w, j);
}

/* ---- messages fetching pool processes took -------------------------------- */

static void job_limits(struct worker *w, struct job *j);
static void return_reserved(struct worker *w);
static void child_protocol_error(struct worker *w, struct pool_child *c, const char *what);

/* The tags a fetching process reported, kept for return_unreported(). */
static void note_reported(struct pool_child *c, const char *tag, size_t len)
{
    if (!len || len >= sizeof c->reported[0])
        return;
    char *slot = c->reported[c->nreported++ % (sizeof c->reported / sizeof c->reported[0])];
    memcpy(slot, tag, len);
    slot[len] = '\0';
}

/* A fetching process died: what its last fetch took and it never reported
 * (a kill between the fetch call and its report) goes back to the queue now,
 * instead of after the visibility timeout. Read from the record the fetch
 * call keeps in Redis. */
static void return_unreported(struct worker *w, struct pool_child *c)
{
    if (w->state == W_RECONNECTING || !w->broker->ops->take_fetch_record)
        return;
    char name[300], **tags = NULL;
    size_t n = 0;
    snprintf(name, sizeof name, "celeriac.fetching.%s.%d", w->cfg->hostname, (int)c->pid);
    if (w->broker->ops->take_fetch_record(w->broker, name, &tags, &n) < 0) {
        log_warning("could not read what ForkPoolWorker-%d last took (%s); it comes back "
                    "after visibility_timeout", c->index, w->broker->errstr);
        n = 0;
    }
    size_t back = 0;
    for (size_t i = 0; i < n; i++) {
        int known = 0;
        size_t ring = sizeof c->reported / sizeof c->reported[0];
        for (size_t k = 0; k < ring && k < c->nreported && !known; k++)
            known = strcmp(c->reported[k], tags[i]) == 0;
        if (!known && w->broker->ops->restore(w->broker, tags[i]) == 0)
            back++;
        free(tags[i]);
    }
    free(tags);
    if (back)
        log_warning("%zu message(s) ForkPoolWorker-%d took and never reported went back to their "
                    "queue", back, c->index);
}

/* RECEIVED: a fetching pool process took a message and runs it. The main
 * process keeps its books as if it had sent the job there (the job joins the
 * process's run order); a revoked one is cancelled before it starts. */
static void on_received(struct worker *w, struct pool_child *c, const struct pool_outcome *o)
{
    const char *tag, *queue, *packed, *env;
    size_t tl, ql, pl, el;
    if (pool_delivery_parse(o->meta, o->meta_len, &tag, &tl, &queue, &ql, &packed, &pl) < 0 ||
        task_message_packed_envelope(packed, pl, &env, &el) < 0) {
        child_protocol_error(w, c, "malformed RECEIVED frame");
        return;
    }
    struct job *j = calloc(1, sizeof *j);
    if (!j || !(j->envelope = malloc(el + 1))) {
        free(j);
        child_protocol_error(w, c, "out of memory for a RECEIVED frame");
        return;
    }
    memcpy(j->envelope, env, el);
    j->envelope[el] = '\0';
    j->len = el;
    snprintf(j->queue, sizeof j->queue, "%.*s", (int)ql, queue);
    j->received = util_now();
    char err[512] = "";
    /* The header fields the process packed, or (an empty pack) the envelope. */
    if (task_message_unpack_headers(packed, pl, &j->msg) < 0 &&
        task_message_decode(j->envelope, j->len, &w->limits, &j->msg, err, sizeof err) < 0)
        log_error("a pool process took a message this process cannot decode: %s", err);
    const struct task_def *def = task_registry_find(w->registry, j->msg.task);
    j->reserved = 1;
    j->acks_late = w->cfg->task_acks_late || (def && (def->flags & CELERIAC_TASK_ACKS_LATE));
    /* The process acks early-ack jobs itself; acks_late ones are acked from
     * here once their result is stored. */
    j->own = !j->acks_late;
    if (!j->own)
        w->unacked++;
    j->worker_pid = c->pid;
    job_limits(w, j);
    note_reported(c, tag, tl);
    if (!j->msg.delivery_tag || (size_t)strlen(j->msg.delivery_tag) != tl ||
        memcmp(j->msg.delivery_tag, tag, tl) != 0 || pool_received(c, o->seq, j) < 0) {
        job_free(j);
        child_protocol_error(w, c, "RECEIVED frame out of step");
        return;
    }
    w->nactive++;
    log_info("Task %s[%s] received", task_message_display_name(&j->msg), j->msg.id);
    announce_received(w, j);
    if (j->msg.id && revoked_contains(&w->revoked, j->msg.id, util_now()) && pool_cancel(c, j))
        log_debug("Task %s cancelled in ForkPoolWorker-%d before it started", j->msg.id,
                  c->index);
}

/* HANDOFF: a message a fetching pool process took and leaves to the main
 * process (ETA, rate limit, anything unusual): as if fetched here. */
static void on_handoff(struct worker *w, struct pool_child *c, const struct pool_outcome *o)
{
    const char *tag, *queue, *env;
    size_t tl, ql, el;
    if (pool_delivery_parse(o->meta, o->meta_len, &tag, &tl, &queue, &ql, &env, &el) < 0 ||
        tl >= sizeof ((struct broker_delivery *)0)->tag) {
        child_protocol_error(w, c, "malformed HANDOFF frame");
        return;
    }
    note_reported(c, tag, tl);
    struct broker_delivery d = {0};
    if (!(d.body = malloc(el + 1))) {
        log_error("out of memory taking over a message from %.*s; it comes back after "
                  "visibility_timeout", (int)ql, queue);
        return;
    }
    memcpy(d.body, env, el);
    d.body[el] = '\0';
    d.len = el;
    snprintf(d.queue, sizeof d.queue, "%.*s", (int)ql, queue);
    memcpy(d.tag, tag, tl);
    d.reserved = tl > 0;
    on_message(w, &d);
    free(d.body);
    if (w->state != W_RUNNING)
        return_reserved(w); /* arrived while stopping: straight back */
}

/* ---- dispatch and completion ----------------------------------------------- */

struct task_policy *worker_policy(struct worker *w, const char *name)
{
    for (size_t i = 0; i < w->npolicies; i++)
        if (strcmp(w->policies[i].name, name) == 0)
            return &w->policies[i];
    struct task_policy *p = realloc(w->policies, (w->npolicies + 1) * sizeof *p);
    if (!p)
        return NULL;
    w->policies = p;
    p = &p[w->npolicies];
    memset(p, 0, sizeof *p);
    if (!(p->name = strdup(name)))
        return NULL;
    p->hard = p->soft = -1;
    p->tokens = 1;
    p->refilled = util_monotonic();
    w->npolicies++;
    return p;
}

static struct task_policy *find_policy(struct worker *w, const char *name)
{
    for (size_t i = 0; i < w->npolicies; i++)
        if (strcmp(w->policies[i].name, name) == 0)
            return &w->policies[i];
    return NULL;
}

/* Token bucket of capacity 1: takes a token if one is there; otherwise sets
 * *wait to the seconds until the next one. */
static int rate_take(struct task_policy *p, double mono, double *wait)
{
    if (!p || p->rate <= 0)
        return 1;
    p->tokens = fmin(1.0, p->tokens + (mono - p->refilled) * p->rate);
    p->refilled = mono;
    if (p->tokens >= 1.0) {
        p->tokens -= 1.0;
        return 1;
    }
    *wait = (1.0 - p->tokens) / p->rate;
    return 0;
}

/* Effective limits: message header, else the time_limit command's override,
 * else the worker settings (Celery's precedence). */
static void job_limits(struct worker *w, struct job *j)
{
    struct task_policy *p = find_policy(w, j->msg.task);
    j->hard_limit = j->msg.time_limit > 0 ? j->msg.time_limit
                    : p && p->hard >= 0   ? p->hard
                                          : w->cfg->time_limit;
    j->soft_limit = j->msg.soft_time_limit > 0 ? j->msg.soft_time_limit
                    : p && p->soft >= 0        ? p->soft
                                               : w->cfg->soft_time_limit;
}

/* Pipelining: a busy process may get further jobs queued behind its own
 * when their tasks are known to be short (moving average of their run
 * times), so it goes from one to the next without waiting for this process.
 * The budget (--pipeline-budget, default 4 ms) bounds the expected wait of
 * the last queued job; only tasks averaging under half of it are queued.
 * Unknown tasks, and tasks whose processes were lost or timed out, only go
 * to idle processes (Celery's fair scheduling). */

static double task_estimate(const struct worker *w, const struct job *j)
{
    const char *name = task_message_display_name(&j->msg);
    for (size_t i = 0; i < w->ntotals; i++)
        if (strcmp(w->totals[i].name, name) == 0)
            return w->totals[i].runtime;
    return 1e9;
}

/* A busy process that can take j behind its current work, or NULL. */
static struct pool_child *pipeline_slot(struct worker *w, struct job *j)
{
    if (w->state != W_RUNNING || j->msg.time_limit > 0 || j->msg.soft_time_limit > 0)
        return NULL;
    double budget = w->cfg->pipeline_budget;
    if (budget <= 0)
        return NULL;
    j->estimate = task_estimate(w, j);
    if (j->estimate > budget / 2)
        return NULL;
    struct pool_child *best = NULL;
    double best_load = budget;
    for (size_t i = 0; i < w->pool.n; i++) {
        struct pool_child *c = &w->pool.children[i];
        if (!c->pid || c->fd < 0 || c->retiring || !c->busy || !c->job ||
            c->nqueued >= POOL_QUEUE_MAX)
            continue;
        if (w->cfg->max_tasks_per_child > 0 &&
            c->tasks_run + c->nqueued + 2 >= (unsigned)w->cfg->max_tasks_per_child)
            continue;
        double load = task_estimate(w, c->job);
        for (size_t k = 0; k < c->nqueued; k++)
            load += ((const struct job *)c->queued[k])->estimate;
        if (load + j->estimate <= best_load) {
            best = c;
            best_load = load + j->estimate;
        }
    }
    return best;
}

/* Fetching pool processes: the one holding the least, with room for a job
 * beside its own window. The job joins its run order behind what it took. */
static struct pool_child *fetch_slot(struct worker *w)
{
    struct pool_child *best = NULL;
    size_t best_load = POOL_QUEUE_MAX + 1 - POOL_FETCH_MAX;
    for (size_t i = 0; i < w->pool.n; i++) {
        struct pool_child *c = &w->pool.children[i];
        if (!c->pid || c->fd < 0 || c->retiring)
            continue;
        size_t load = (size_t)c->busy + c->nqueued + c->nposted;
        if (load < best_load) {
            best = c;
            best_load = load;
        }
    }
    return best;
}

static void dispatch(struct worker *w)
{
    struct pool_child *c;
    struct job **pp = &w->ready_head, *prev = NULL;
    double mono = util_monotonic();
    w->next_wake = 0;
    while (*pp) {
        int queue = 0;
        if (w->pool.fetching) {
            c = fetch_slot(w);
            queue = 1;
        } else {
            c = pool_idle(&w->pool);
            if (!c && (c = pipeline_slot(w, *pp)) != NULL)
                queue = 1;
        }
        if (!c)
            break;
        /* Rate-limited tasks wait in place; the others go past them. */
        double wait = 0;
        if (!rate_take(find_policy(w, (*pp)->msg.task), mono, &wait)) {
            if (w->next_wake == 0 || mono + wait < w->next_wake)
                w->next_wake = mono + wait;
            prev = *pp;
            pp = &(*pp)->next;
            continue;
        }
        struct job *j = *pp;
        *pp = j->next;
        if (w->ready_tail == j)
            w->ready_tail = prev;
        j->next = NULL;
        w->nready--;
        if (j->msg.expires > 0 && j->msg.expires < util_now()) {
            announce_discarded(w, j, 1);
            job_ack(w, j);
            job_free(j);
            continue;
        }
        if (revoked_contains(&w->revoked, j->msg.id, util_now())) {
            announce_discarded(w, j, 0);
            job_ack(w, j);
            job_free(j);
            continue;
        }
        job_limits(w, j);
        /* A queued job waits in the process: it stays in unacked until the
         * process says STARTED (read_child() acks it then). */
        if (queue && !j->reserved)
            job_reserve(w, j);
        /* A lone task on a quiet worker stores its own result: one hop less
         * before a waiting client sees it. Batching in the main process only
         * pays when results keep coming. */
        uint32_t flags = j->flags;
        if (!queue && w->nactive == 0 && w->nready == 0 && !w->more)
            flags &= ~(uint32_t)EXEC_PARENT_STORES;
        if (log_get_level() > LOG_INFO && !w->events.task_events)
            flags |= EXEC_NO_REPR;
        if (queue)
            flags |= EXEC_QUEUED;
        else if (!w->events.task_events)
            flags |= EXEC_QUIET_START; /* its STARTED changes nothing here */
        /* What this process decoded travels with the envelope: the pool
         * process decodes only the body (see task_message_pack()). */
        struct iovec iov[2] = {{NULL, 0}, {j->envelope, j->len}};
        w->pack.len = 0;
        if (task_message_pack(&j->msg, &w->pack) == 0) {
            flags |= EXEC_PACKED;
            iov[0].iov_base = w->pack.p;
            iov[0].iov_len = w->pack.len;
        }
        if (pool_postv(c, flags, iov, 2, j) < 0) {
            /* The child is gone; keep the job for the next one. */
            log_warning("pool process %d did not take a job; replacing it", (int)c->pid);
            ready_push(w, j);
            kill(c->pid, SIGKILL);
            /* Nothing more goes to it; reap_children() handles its jobs. */
            if (!queue) {
                c->busy = 1;
                c->job = NULL;
            } else if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
            }
            continue;
        }
        w->nactive++;
        j->worker_pid = c->pid;
        if (queue) {
            if (log_get_level() == LOG_DEBUG)
                log_debug("Task %s[%s] queued in ForkPoolWorker-%d behind %zu job(s)",
                          task_message_display_name(&j->msg), j->msg.id, c->index, c->nqueued);
            continue;
        }
        j->posted = 1; /* accepted once its frame is written, below */
    }
    /* One write per process for everything posted to it above. */
    for (size_t i = 0; i < w->pool.n; i++) {
        c = &w->pool.children[i];
        int rc = pool_flush(c);
        struct job *j = c->job;
        if (rc == 0 && j && j->posted) {
            j->posted = 0;
            j->time_start = util_now();
            if (!j->acks_late)
                job_ack(w, j); /* Celery's default: acknowledged when the pool accepts it */
        } else if (rc < 0) {
            /* Gone before it read them: nothing it holds started, so
             * child_lost() gives every one of its jobs to another process. */
            log_warning("pool process %d did not take its jobs; replacing it", (int)c->pid);
            if (j)
                j->posted = 0;
            kill(c->pid, SIGKILL);
            if (c->fd >= 0) {
                close(c->fd);
                c->fd = -1;
            }
        }
    }
    /* Whatever has to wait for a process is recorded in unacked now. */
    for (struct job *j = w->ready_head; j; j = j->next)
        if (!j->reserved)
            job_reserve(w, j);
}

/* Resident memory of a process in KiB, from /proc; 0 when unknown. */
static long rss_kib(pid_t pid)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/%d/statm", (int)pid);
    FILE *f = fopen(path, "r");
    long pages = 0, rss = 0;
    if (!f)
        return 0;
    if (fscanf(f, "%ld %ld", &pages, &rss) != 2)
        rss = 0;
    fclose(f);
    return rss * (sysconf(_SC_PAGESIZE) / 1024);
}

/* worker_max_tasks_per_child / worker_max_memory_per_child: a process that
 * reached a limit leaves after its job and a fresh one takes its place. */
static void recycle_child(struct worker *w, struct pool_child *c)
{
    const char *why = NULL;
    long rss = 0;
    if (w->cfg->max_tasks_per_child > 0 && c->tasks_run >= (unsigned)w->cfg->max_tasks_per_child)
        why = "max-tasks-per-child";
    else if (w->cfg->max_memory_per_child > 0 &&
             (rss = rss_kib(c->pid)) > w->cfg->max_memory_per_child)
        why = "max-memory-per-child";
    if (!why || c->retiring || w->state >= W_WARM_STOP)
        return;
    log_info("Replacing ForkPoolWorker-%d (pid %d): %s reached (%u tasks, %ld KiB)", c->index,
             (int)c->pid, why, c->tasks_run, rss);
    /* It exits on EOF; child_lost() starts the replacement in the same slot
     * (growing the array here would move the child the caller holds). */
    c->retiring = 1;
    c->replace = 1;
    if (c->fd >= 0)
        shutdown(c->fd, SHUT_WR);
}

static void job_done(struct worker *w, struct pool_child *c, struct pool_outcome *o)
{
    struct job *j = pool_advance(c);
    c->tasks_run++;
    if (!j)
        return;
    int batched = 0; /* the result waits in the batch: an acks_late ack follows it */
    /* A result the fetching process stores itself: kept until it says STORED.
     * With task events on, stored from here at once too (its task-succeeded
     * follows the stored result; the process's store then changes nothing,
     * as a stored SUCCESS is never overwritten). */
    if (o->meta && o->child_stores && j->msg.id && !w->events.task_events &&
        pool_results_push(&c->unstored, j->msg.id, o->meta, o->meta_len) == 0)
        o->meta = NULL;
    if (o->meta && j->msg.id) {
        /* counted for the process only when it keeps a copy (not one it stores) */
        result_push(w, o->child_stores ? -1 : c->pid, j->msg.id, o->meta, o->meta_len);
        o->meta = NULL;
        batched = w->results.len > 0; /* 0: stored at once (out of memory) */
    }
    w->nactive--;
    w->processed++;
    const char *name = task_message_display_name(&j->msg);
    count_task(w, name, o->runtime);
    if (o->status == POOL_SUCCESS) {
        log_info("Task %s[%s] succeeded in %.6fs: %s", name, j->msg.id, o->runtime,
                 o->detail ? o->detail : "None");
        celeriac_value *f = fields_uuid(w, &j->msg);
        if (f) {
            /* No repr when events were off at dispatch (EXEC_NO_REPR): no result field. */
            if (o->detail)
                celeriac_value_set(f, "result", celeriac_value_new_string(o->detail));
            celeriac_value_set(f, "runtime", celeriac_value_new_double(o->runtime));
            events_task(&w->events, "task-succeeded", f);
        }
    } else if (o->status == POOL_RETRY) {
        /* The child republished the message and stored RETRY. */
        log_info("Task %s[%s] retry: %s", name, j->msg.id, o->detail ? o->detail : "");
        celeriac_value *f = fields_uuid(w, &j->msg);
        if (f) {
            struct buf tb = {0};
            buf_printf(&tb, "Traceback (most recent call last):\n  File \"celeriac\", in %s\n"
                            "celery.exceptions.Retry: %s\n",
                       name, o->detail ? o->detail : "");
            celeriac_value_set(f, "exception", celeriac_value_new_string(o->detail ? o->detail
                                                                                   : "Retry()"));
            celeriac_value_set(f, "traceback", celeriac_value_new_string(tb.p ? tb.p : ""));
            buf_free(&tb);
            events_task(&w->events, "task-retried", f);
        }
    } else {
        log_error("Task %s[%s] raised unexpected: %s", name, j->msg.id,
                  o->detail ? o->detail : "?");
        struct buf tb = {0};
        buf_printf(&tb, "Traceback (most recent call last):\n  File \"celeriac\", in %s\n%s\n",
                   name, o->detail ? o->detail : "");
        event_failed(w, &j->msg, o->detail, tb.p);
        buf_free(&tb);
    }
    if (j->acks_late) {
        /* task_acks_on_failure_or_timeout=False: a failure is rejected (on
         * Redis reject without requeue discards, exactly like an ack). */
        if (o->status == POOL_FAILURE && !w->cfg->task_acks_on_failure_or_timeout &&
            !j->acked && j->reserved && !j->own) {
            j->acked = 1;
            if (w->unacked)
                w->unacked--;
            if (w->state == W_RECONNECTING ||
                w->broker->ops->reject(w->broker, j->msg.delivery_tag, 0) < 0)
                tag_push(&w->pending_acks, j->msg.delivery_tag);
        } else {
            job_ack_to(w, j, batched ? &w->results.late_acks : &w->ack_batch);
        }
    }
    job_free(j);
    recycle_child(w, c);
}

static void describe_status(int status, char *buf, size_t len)
{
    if (WIFSIGNALED(status)) {
        const char *abbrev = sigabbrev_np(WTERMSIG(status));
        snprintf(buf, len, "signal %d (SIG%s)", WTERMSIG(status), abbrev ? abbrev : "?");
    } else {
        snprintf(buf, len, "exitcode %d", WEXITSTATUS(status));
    }
}

/* A pool process ended: fail or requeue its job, and replace it. */
static void child_lost(struct worker *w, struct pool_child *c, int status)
{
    char how[64];
    describe_status(status, how, sizeof how);
    if (c->fetching)
        return_unreported(w, c);
    /* Results it had not said STORED for: stored from here (a result it did
     * store stays as it is: a stored SUCCESS is never overwritten). */
    if (c->unstored.n)
        log_warning("ForkPoolWorker-%d: storing %zu result(s) it may not have stored",
                    c->index, c->unstored.n);
    unstored_take(w, c);
    /* A fetching process: what it took becomes this process's own, the acks
     * it still owed are sent from here, and jobs posted to it that it never
     * accepted go back too (behind the ones it had queued). */
    for (size_t k = c->nposted; k > 0; k--) {
        struct job *q = pool_posted_at(c, k - 1);
        q->worker_pid = 0;
        w->nactive--;
        ready_push_front(w, q);
    }
    size_t back = pool_posted_drop(c);
    job_take_over(w, c->job);
    for (size_t k = 0; k < c->nqueued; k++)
        job_take_over(w, c->queued[k]);
    for (size_t k = 0; k < c->nowed; k++)
        tag_push(w->state == W_RECONNECTING ? &w->pending_acks : &w->ack_batch, c->owed[k]);
    pool_owed_clear(c);
    /* Jobs it had queued and never started go back to the head of the ready
     * list, in order (still in unacked); so does a current job it never
     * said STARTED for. */
    back += c->nqueued;
    while (c->nqueued > 0) {
        struct job *q = c->queued[--c->nqueued];
        q->worker_pid = 0;
        w->nactive--;
        ready_push_front(w, q);
    }
    struct job *j = c->job;
    if (j && !j->time_start) {
        j->worker_pid = 0;
        w->nactive--;
        ready_push_front(w, j);
        c->job = NULL;
        j = NULL;
        back++;
    }
    if (back)
        log_warning("%zu job(s) queued in ForkPoolWorker-%d and not started go to another process",
                    back, c->index);
    if (j) {
        const char *name = task_message_display_name(&j->msg);
        log_error("Process 'ForkPoolWorker-%d' pid:%d exited with '%s' while running %s[%s]",
                  c->index, (int)c->pid, how, name, j->msg.id);
        w->nactive--;
        w->processed++;
        count_task(w, name, -1);
        if (j->terminated) {
            /* Revoked with terminate: REVOKED was stored when it was signalled. */
            job_ack(w, j);
        } else if (j->timed_out) {
            char limit[32];
            snprintf(limit, sizeof limit, "%g", j->hard_limit);
            log_error("Task %s[%s] raised unexpected: TimeLimitExceeded(%s,)", name, j->msg.id,
                      limit);
            celeriac_value *args = celeriac_value_new_array();
            celeriac_value_append(args, celeriac_value_new_double(j->hard_limit));
            celeriac_value *exc = backend_exception("billiard.exceptions", "TimeLimitExceeded",
                                                    limit);
            celeriac_value_set(exc, "exc_message", args);
            char *tb = backend_traceback("billiard.exceptions", "TimeLimitExceeded", limit);
            job_body(w, j);
            if (exc)
                fail_task(w, &j->msg, exc, tb, 1);
            free(tb);
            celeriac_value_free(exc);
            struct buf e = {0};
            buf_printf(&e, "TimeLimitExceeded(%s,)", limit);
            event_failed(w, &j->msg, e.p, NULL);
            buf_free(&e);
            if (j->acks_late && !w->cfg->task_acks_on_failure_or_timeout && !j->acked) {
                job_requeue(w, j); /* Celery requeues a hard timeout in this mode */
            } else {
                job_ack(w, j);
            }
        } else if (j->acks_late && w->cfg->task_reject_on_worker_lost && !j->acked) {
            log_warning("Task %s[%s] requeued (task_reject_on_worker_lost)", name, j->msg.id);
            job_requeue(w, j);
            celeriac_value *f = fields_uuid(w, &j->msg);
            if (f) {
                celeriac_value_set(f, "requeue", celeriac_value_new_bool(1));
                events_task(&w->events, "task-rejected", f);
            }
        } else {
            char msg[160];
            snprintf(msg, sizeof msg, "Worker exited prematurely: %s Job: %lu.", how,
                     w->processed);
            log_error("Task %s[%s] raised unexpected: WorkerLostError('%s')", name, j->msg.id,
                      msg);
            job_body(w, j);
            store_failure(w, &j->msg, "billiard.exceptions", "WorkerLostError", msg);
            char *exc = task_exec_exc_repr("WorkerLostError", msg);
            struct buf tb = {0};
            buf_printf(&tb, "Traceback (most recent call last):\n  File \"celeriac\", in pool\n"
                            "billiard.exceptions.WorkerLostError: %s\n", msg);
            event_failed(w, &j->msg, exc, tb.p);
            buf_free(&tb);
            free(exc);
            job_ack(w, j);
        }
        job_free(j);
        c->job = NULL;
    } else if (w->state < W_WARM_STOP && !c->retiring) {
        log_error("Process 'ForkPoolWorker-%d' pid:%d exited with '%s'", c->index, (int)c->pid,
                  how);
    }
    size_t slot = (size_t)(c - w->pool.children);
    int keep = !c->retiring || c->replace;
    pool_forget(c);
    if (keep && w->state < W_WARM_STOP && pool_respawn(&w->pool, slot) < 0)
        log_error("cannot replace pool process: %s", w->pool.errstr);
}

static void terminate_job(struct worker *w, struct pool_child *c, struct job *j);

/* A job a pool process did not run: revoked while it waited there
 * (pool_cancel) or expired by the time its turn came. Discarded as Celery
 * discards a revoked or expired reserved task. */
static void job_skipped(struct worker *w, struct pool_child *c, int why)
{
    struct job *j = pool_advance(c);
    if (!j)
        return;
    w->nactive--;
    job_take_over(w, j); /* a fetching process acks only what it ran */
    if (why == POOL_SKIP_RETURNED) {
        job_restore(w, j); /* the process stopped before running it */
        job_free(j);
        return;
    }
    if (!j->terminated) /* else terminate_job() stored and announced it */
        announce_discarded(w, j, why == POOL_SKIP_EXPIRED);
    job_ack(w, j);
    job_free(j);
}

/* A pool process that breaks the frame protocol is replaced (child_lost()
 * then handles what it held). */
static void child_protocol_error(struct worker *w, struct pool_child *c, const char *what)
{
    (void)w;
    log_error("ForkPoolWorker-%d (pid %d): %s; replacing it", c->index, (int)c->pid, what);
    if (c->pid > 0)
        kill(c->pid, SIGKILL);
}

static size_t read_child(struct worker *w, struct pool_child *c)
{
    size_t frames = 0;
    for (;;) {
        int type = 0;
        struct pool_outcome o = {0};
        int rc = pool_read(c, &type, &o);
        if (rc <= 0) {
            if (rc < 0 && c->fd >= 0) {
                /* EOF: the process is exiting; reap_children() does the rest. */
                close(c->fd);
                c->fd = -1;
            }
            return frames;
        }
        frames++;
        if (type == POOL_STARTED) {
            c->started = 1;
            struct job *j = c->job;
            if (j && !j->time_start) {
                /* A job that waited in the process: accepted now. */
                j->time_start = util_now();
                if (!j->acks_late)
                    job_ack(w, j);
                if (j->terminate_pending)
                    terminate_job(w, c, j);
            }
            celeriac_value *f = j ? fields_uuid(w, &j->msg) : NULL;
            if (f)
                events_task(&w->events, "task-started", f);
        }
        else if (type == POOL_DONE)
            job_done(w, c, &o);
        else if (type == POOL_SKIPPED)
            job_skipped(w, c, o.status);
        else if (type == POOL_RECEIVED && c->fetching)
            on_received(w, c, &o);
        else if (type == POOL_HANDOFF && c->fetching)
            on_handoff(w, c, &o);
        else if (type == POOL_ACCEPTED && c->fetching) {
            if (!pool_accepted(c, o.seq))
                child_protocol_error(w, c, "ACCEPTED for a job not posted");
        } else if (type == POOL_ACKED && c->fetching)
            pool_owed_clear(c);
        else if (type == POOL_STORED && c->fetching) {
            if (o.status)
                pool_results_clear(&c->unstored);
            else
                unstored_take(w, c);
        }
        free(o.detail);
        free(o.meta);
    }
}

static void reap_children(struct worker *w)
{
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct pool_child *c = pool_find_pid(&w->pool, pid);
        if (!c)
            continue;
        if (c->fd >= 0)
            read_child(w, c); /* a DONE written just before exiting still counts */
        /* So do the frames a fetching process kept to write later. */
        size_t kept = pool_replay(c);
        if (kept > 0) {
            log_info("ForkPoolWorker-%d: read %zu byte(s) of reports it had not written yet",
                     c->index, kept);
            read_child(w, c);
        }
        child_lost(w, c, status);
    }
}

/* ---- broker link ---------------------------------------------------------- */

static int connect_broker(struct worker *w)
{
    int rc = w->broker->ops->connect(w->broker);
    if (rc < 0)
        return rc;
    /* Our mailbox: bound like kombu's pidbox Node so clients can count us. */
    if ((rc = w->broker->ops->bind(w->broker, "celery.pidbox", "", w->pidbox_queue)) < 0)
        return rc;
    for (size_t i = 0; i < w->pending_acks.len; i++) {
        if (w->broker->ops->ack(w->broker, w->pending_acks.tags[i]) < 0)
            return w->broker->err;
    }
    for (size_t i = 0; i < w->pending_acks.len; i++)
        free(w->pending_acks.tags[i]);
    w->pending_acks.len = 0;
    return 0;
}

/* Refreshes the unacked_index score of every message we hold, so restore
 * scans (any worker's) only take back messages of workers that died. Celery
 * does not do this, and runs prefetched or long tasks twice when they are held
 * longer than visibility_timeout; this is the safe difference. */
static void refresh_held(struct worker *w)
{
    size_t cap = w->nready + w->nscheduled + w->pool.n * (1 + POOL_QUEUE_MAX), n = 0;
    for (size_t i = 0; i < w->pool.n; i++)
        cap += w->pool.children[i].nowed + w->pool.children[i].nposted;
    const char **tags = calloc(cap ? cap : 1, sizeof *tags);
    if (!tags)
        return;
    for (struct job *j = w->ready_head; j && n < cap; j = j->next)
        if (j->reserved && !j->acked)
            tags[n++] = j->msg.delivery_tag;
    for (struct job *j = w->scheduled; j && n < cap; j = j->next)
        if (j->reserved && !j->acked)
            tags[n++] = j->msg.delivery_tag;
    for (size_t i = 0; i < w->pool.n && n < cap; i++) {
        const struct pool_child *c = &w->pool.children[i];
        for (size_t k = 0; k <= c->nqueued && n < cap; k++) {
            const struct job *j = k == 0 ? c->job : c->queued[k - 1];
            if (j && j->reserved && !j->acked)
                tags[n++] = j->msg.delivery_tag;
        }
        /* acks a fetching process owes: still in unacked until it sends them */
        for (size_t k = 0; k < c->nowed && n < cap; k++)
            tags[n++] = c->owed[k];
        for (size_t k = 0; k < c->nposted && n < cap; k++) {
            const struct job *j = pool_posted_at(c, k);
            if (j->reserved && !j->acked)
                tags[n++] = j->msg.delivery_tag;
        }
    }
    if (n && w->broker->ops->refresh(w->broker, tags, n) < 0)
        broker_lost(w, "refresh");
    free(tags);
    w->next_refresh = util_monotonic() + fmin(w->cfg->visibility_timeout / 4, 30);
}

static void restore_visible(struct worker *w)
{
    refresh_held(w);
    if (w->state != W_RUNNING)
        return;
    int n = w->broker->ops->restore_visible(w->broker, w->cfg->visibility_timeout);
    if (n < 0)
        broker_lost(w, "restore");
    else if (n > 0)
        log_warning("restored %d unacknowledged message(s) to their queues", n);
    w->next_restore = util_monotonic() + w->cfg->unacked_restore_interval;
}

/* ---- cron ------------------------------------------------------------------- */

static void return_reserved(struct worker *w);

/* worker_cron: the periodic duties, run every loop iteration (cheap checks):
 *  - enforce soft and hard time limits of running tasks;
 *  - autoscale the pool (--autoscale);
 *  - end a soft shutdown when its tasks are done or its time is up;
 *  - move due ETA jobs to the ready list;
 *  - refresh the unacked entries of messages we hold (every visibility_timeout/4);
 *  - scan for unacked messages past visibility_timeout every unacked_restore_interval;
 *  - send worker-heartbeat every heartbeat_interval;
 *  - rewrite the status file and the revoked-ids state file once a second;
 *  - reconnect to the broker with exponential backoff;
 *  - in a warm shutdown, return reserved messages once no fetch is outstanding. */
static void begin_cold_stop(struct worker *w, int force);

/* Soft limit: SIGUSR1 tells the task; hard limit: SIGKILL ends its process
 * (child_lost() then stores TimeLimitExceeded). */
static void enforce_time_limits(struct worker *w, double now)
{
    for (size_t i = 0; i < w->pool.n; i++) {
        struct pool_child *c = &w->pool.children[i];
        struct job *j = c->job;
        if (!j || !j->time_start || j->terminated || j->timed_out)
            continue;
        double ran = now - j->time_start;
        if (j->soft_limit > 0 && !j->soft_sent && ran >= j->soft_limit) {
            log_warning("Soft time limit (%gs) exceeded for %s[%s]", j->soft_limit,
                        task_message_display_name(&j->msg), j->msg.id);
            j->soft_sent = 1;
            kill(c->pid, SIGUSR1);
        }
        if (j->hard_limit > 0 && ran >= j->hard_limit) {
            log_error("Hard time limit (%gs) exceeded for %s[%s]", j->hard_limit,
                      task_message_display_name(&j->msg), j->msg.id);
            j->timed_out = 1;
            kill(c->pid, SIGKILL);
        }
    }
}

/* --autoscale MAX,MIN: grow while jobs wait, shrink one process at a time
 * after 30 s with idle processes. */
static void autoscale(struct worker *w, double mono)
{
    if (w->autoscale_max <= 0 || w->state != W_RUNNING)
        return;
    size_t size = pool_size(&w->pool);
    size_t max = (size_t)w->autoscale_max, min = (size_t)w->autoscale_min;
    /* Work waiting: jobs no process took yet. Fetching processes leave the
     * backlog in the broker: there, jobs held behind the running ones, or
     * every process busy for a second. */
    size_t waiting = w->nready;
    if (w->pool.fetching) {
        /* A process going from one task to the next is idle for a moment:
         * only an idle spell of 0.1 s ends "every process busy". */
        if (w->nactive < size) {
            if (w->some_idle_since == 0)
                w->some_idle_since = mono;
            else if (mono - w->some_idle_since >= 0.1)
                w->all_busy_since = 0;
        } else {
            if (w->some_idle_since > 0 && mono - w->some_idle_since >= 0.1)
                w->all_busy_since = 0;
            w->some_idle_since = 0;
            if (w->all_busy_since == 0)
                w->all_busy_since = mono;
        }
        waiting = w->nactive > size                                  ? w->nactive - size
                  : w->all_busy_since > 0 && mono - w->all_busy_since >= 1 ? 1
                                                                      : 0;
        if (waiting)
            w->all_busy_since = 0; /* another second before the next step */
    }
    if (waiting > 0 && size < max) {
        size_t add = waiting < max - size ? waiting : max - size;
        log_info("autoscale: growing pool by %zu (to %zu)", add, size + add);
        if (pool_grow(&w->pool, add) < 0)
            log_error("autoscale: %s", w->pool.errstr);
        w->last_scale = mono;
    } else if (waiting == 0 && size > min && size > w->nactive && mono - w->last_scale > 30) {
        log_info("autoscale: shrinking pool to %zu", size - 1);
        pool_shrink(&w->pool, 1);
        w->last_scale = mono;
    }
}

static void worker_cron(struct worker *w)
{
    double now = util_now(), mono = util_monotonic();
    enforce_time_limits(w, now);
    autoscale(w, mono);
    if (w->cold_deadline > 0 && (w->nactive == 0 || mono >= w->cold_deadline))
        begin_cold_stop(w, 1);
    while (w->scheduled && w->scheduled->msg.eta <= now) {
        struct job *j = w->scheduled;
        w->scheduled = j->next;
        w->nscheduled--;
        ready_push(w, j);
    }
    /* Warm stop: hand reserved jobs back once no fetch is outstanding, so our
     * own last BRPOP cannot take them again. */
    if (w->state == W_WARM_STOP && !w->returned &&
        (w->broker->ops->fetch_fd(w->broker) < 0 || mono > w->stop_deadline)) {
        return_reserved(w);
        w->returned = 1;
    }
    if (w->state == W_RUNNING && mono >= w->next_refresh)
        refresh_held(w);
    if (w->state == W_RUNNING && w->events.freq > 0 && mono >= w->events.next_heartbeat) {
        events_worker(&w->events, "worker-heartbeat", w->nactive, w->processed);
        w->events.next_heartbeat = mono + w->events.freq;
        if (w->pool.fetching && events_flush(&w->events) < 0) /* no fetch reply wakes the loop */
            broker_lost(w, "events");
    }
    if (mono >= w->next_status) {
        status_write(w->cfg->status_file, state_names[w->state], w->cfg->hostname, w->nactive,
                     w->processed);
        revoked_purge(&w->revoked, now);
        revoked_save(&w->revoked);
        w->next_status = mono + 1;
    }
    if (w->state == W_RUNNING && mono >= w->next_restore)
        restore_visible(w);
    if (w->state == W_RECONNECTING && mono >= w->reconnect_at) {
        if (connect_broker(w) == 0) {
            log_info("Connected to broker again");
            set_state(w, W_RUNNING);
            restore_visible(w);
        } else {
            w->broker->ops->disconnect(w->broker);
            w->backoff = fmin(w->backoff * 2, w->cfg->broker_connection_max_backoff);
            w->reconnect_at = mono + w->backoff;
            log_warning("broker unreachable (%s); next attempt in %.1f s", w->broker->errstr,
                        w->backoff);
        }
    }
}

/* Hands every message not yet running back to the broker. */
static void return_reserved(struct worker *w)
{
    struct job *j;
    while ((j = ready_pop(w))) {
        job_restore(w, j);
        job_free(j);
    }
    while ((j = w->scheduled)) {
        w->scheduled = j->next;
        w->nscheduled--;
        job_restore(w, j);
        job_free(j);
    }
}

static void begin_warm_stop(struct worker *w)
{
    if (w->state >= W_WARM_STOP)
        return;
    log_info("worker: Warm shutdown (%zu running task(s) will finish)", w->nactive);
    if (w->state == W_RECONNECTING)
        w->broker->ops->disconnect(w->broker);
    set_state(w, W_WARM_STOP);
    w->stop_deadline = util_monotonic() + WARM_FETCH_GRACE;
    w->broker->ops->fetch_cancel(w->broker); /* its reply is still read: nothing is lost */
    pool_close(&w->pool);
}

static void begin_cold_stop(struct worker *w, int force)
{
    if (w->state == W_COLD_STOP || w->state == W_STOPPED)
        return;
    if (!force && w->cfg->soft_shutdown_timeout > 0 && w->nactive > 0 && w->cold_deadline == 0) {
        /* Celery 5.5's soft shutdown: running tasks get a last chance. */
        log_warning("worker: Soft shutdown: %zu running task(s) have %.1f s to finish",
                    w->nactive, w->cfg->soft_shutdown_timeout);
        begin_warm_stop(w);
        w->cold_deadline = util_monotonic() + w->cfg->soft_shutdown_timeout;
        return;
    }
    log_warning("worker: Cold shutdown (terminating %zu running task(s))", w->nactive);
    set_state(w, W_COLD_STOP);
    /* Messages handed back below can be taken by our own outstanding BRPOP:
     * stop_finished() waits for it, and loop_once() returns what it brings. */
    w->stop_deadline = util_monotonic() + WARM_FETCH_GRACE;
    w->broker->ops->fetch_cancel(w->broker);
    return_reserved(w);
    pool_kill(&w->pool, SIGKILL);
    /* acks_late messages of killed tasks go back to the queue; early-acked ones
     * are gone, as with Celery. */
    for (size_t i = 0; i < w->pool.n; i++) {
        struct pool_child *c = &w->pool.children[i];
        while (c->busy) {
            struct job *j = pool_advance(c);
            if (!j)
                break;
            job_take_over(w, j); /* started early-ack ones are acked (owed) */
            job_restore(w, j);
            job_free(j);
            w->nactive--;
        }
        for (size_t k = 0; k < c->nposted; k++) {
            struct job *j = pool_posted_at(c, k);
            job_restore(w, j);
            job_free(j);
            w->nactive--;
        }
        pool_posted_drop(c);
    }
}

static void handle_signals(struct worker *w)
{
    unsigned char sigs[64];
    ssize_t n;
    while ((n = read(w->sigpipe[0], sigs, sizeof sigs)) > 0) {
        for (ssize_t i = 0; i < n; i++) {
            int sig = sigs[i];
            if (sig == SIGCHLD)
                continue; /* reaped below */
            if (sig == SIGQUIT || w->state == W_WARM_STOP)
                begin_cold_stop(w, w->cold_deadline > 0);
            else
                begin_warm_stop(w);
        }
    }
    reap_children(w);
}

/* ---- the loop --------------------------------------------------------------- */

static size_t prefetch_room(const struct worker *w);

static int can_fetch(const struct worker *w)
{
    if (w->state != W_RUNNING || w->pool.fetching)
        return 0; /* fetching pool processes take the messages */
    if (w->nscheduled >= MAX_SCHEDULED)
        return 0;
    if (results_held(w) >= RESULTS_PENDING_MAX)
        return 0; /* the result backend is down: stop taking work */
    /* Refill the window in batches: wait until half of it is free unless the
     * processes would otherwise run out of work. */
    size_t room = prefetch_room(w);
    if (room > 0 && room < (w->prefetch_limit + 1) / 2 && w->nready >= pool_size(&w->pool))
        return 0;
    /* Prefetch window: messages held and not yet acknowledged, as kombu's QoS
     * counts them (ETA jobs are held outside the window, capped above). */
    return prefetch_room(w) > 0;
}

/* Messages we may still take under the prefetch window. */
static size_t prefetch_room(const struct worker *w)
{
    size_t held = w->unacked > w->nscheduled ? w->unacked - w->nscheduled : 0;
    if (held < w->nready)
        held = w->nready;
    return held < w->prefetch_limit ? w->prefetch_limit - held : 0;
}

#define FETCH_BATCH_MAX 128
/* Seconds without a reply before an outstanding fetch counts as a lost link:
 * BRPOP's own 1 s timeout plus the 10 s every other broker command gets. */
#define FETCH_REPLY_TIMEOUT 11.0
/* Seconds before the loop waits on a results reply (with the link's timeout). */
#define STORE_REPLY_TIMEOUT 10.0

/* Asks the broker for the messages the window has room for, without waiting:
 * the reply is read in loop_once() when the broker link is readable (the
 * loop meanwhile reads the pool and stores results). The acks of this
 * iteration ride along; they never depend on results not yet stored
 * (acks_late acks of batched results wait with those results). */
static void fetch_send(struct worker *w)
{
    /* Every message is recorded in unacked with its pop, also one an idle
     * process takes at once: a kill -9 before it reaches the process must
     * not lose it (its early ack follows in the next round trip). */
    size_t n = prefetch_room(w);
    if (n > FETCH_BATCH_MAX)
        n = FETCH_BATCH_MAX;
    tags_move(&w->fetch.acks, &w->ack_batch);
    int rc = w->broker->ops->fetch_batch_send(w->broker, (const char *const *)w->fetch.acks.tags,
                                              w->fetch.acks.len, n);
    w->fetch.inflight = 1;
    w->fetch.asked = n;
    if (rc < 0)
        broker_lost(w, "fetch"); /* forgets the batch: its acks wait for the broker */
}

/* Reads the reply of fetch_send(); returns how many messages came. */
static size_t fetch_recv(struct worker *w)
{
    struct broker_delivery d[FETCH_BATCH_MAX];
    size_t count = 0;
    int rc = w->broker->ops->fetch_batch_read(w->broker, d, FETCH_BATCH_MAX, &count);
    if (rc == 0)
        return 0; /* not all there yet */
    w->fetch.inflight = 0;
    if (rc < 0 && count == 0) {
        tags_move(&w->pending_acks, &w->fetch.acks);
        broker_lost(w, "fetch");
        return 0;
    }
    for (size_t i = 0; i < w->fetch.acks.len; i++)
        free(w->fetch.acks.tags[i]);
    w->fetch.acks.len = 0;
    for (size_t i = 0; i < count; i++)
        on_message(w, &d[i]);
    if (w->state != W_RUNNING)
        return_reserved(w); /* arrived while stopping: straight back */
    w->more = count > 0 && count == w->fetch.asked;
    w->fetch.queues_empty = count == 0;
    return count;
}

static int stop_finished(struct worker *w);

/* Fetching pool processes take no new messages while the results they send
 * back cannot be stored (the main process's batch is full). */
static void pause_fetching(struct worker *w, int pause)
{
    if (pause == w->exec.paused)
        return;
    w->exec.paused = pause; /* processes forked from now on start so */
    if (pause)
        log_warning("result backend not keeping up: pool processes take no new messages");
    for (size_t i = 0; i < w->pool.n; i++)
        if (w->pool.children[i].pid && w->pool.children[i].fd >= 0 &&
            pool_control(&w->pool.children[i], POOL_CTL_PAUSE, pause ? "1" : "0", 2) < 0)
            log_warning("ForkPoolWorker-%d did not take the pause", w->pool.children[i].index);
}

static int loop_once(struct worker *w)
{
    worker_cron(w);
    if (stop_finished(w))
        return 0; /* nothing left to wait for */
    if (w->state == W_RUNNING || w->state == W_RECONNECTING)
        dispatch(w);
    int bfd = w->broker->ops->fetch_fd(w->broker);
    double mono = util_monotonic();
    if (bfd < 0)
        w->fetch.since = 0;
    /* A batch while the queues have messages; once one comes back empty, a
     * BRPOP waits for the next message (and the next batch follows it). */
    if (can_fetch(w) && bfd < 0) {
        w->fetch.since = mono;
        if (!w->fetch.queues_empty)
            fetch_send(w);
        else if (w->broker->ops->fetch_start(w->broker) < 0)
            broker_lost(w, "fetch");
    } else if (bfd >= 0 && w->fetch.since > 0 && mono - w->fetch.since > FETCH_REPLY_TIMEOUT) {
        /* A broker that stopped answering without closing the link. */
        snprintf(w->broker->errstr, sizeof w->broker->errstr, "no reply in %.0f s",
                 FETCH_REPLY_TIMEOUT);
        broker_lost(w, "fetch"); /* forgets the batch: its acks wait for the broker */
    }
    bfd = w->broker->ops->fetch_fd(w->broker);
    if (w->pool.fetching)
        pause_fetching(w, results_held(w) >= RESULTS_PENDING_MAX);
    /* The results collected since the last store go out after the fetch, so
     * Redis answers the fetch first: the next messages are on the critical
     * path, the store's reply is not. */
    results_send(w);

    struct pollfd fds[2 + 1024];
    size_t nfds = 0;
    fds[nfds++] = (struct pollfd){.fd = w->sigpipe[0], .events = POLLIN};
    size_t broker_slot = (size_t)-1;
    if (bfd >= 0) {
        broker_slot = nfds;
        fds[nfds++] = (struct pollfd){.fd = bfd, .events = POLLIN};
    }
    int sfd = w->broker->ops->sub_fd(w->broker);
    size_t sub_slot = (size_t)-1;
    if (sfd >= 0) {
        sub_slot = nfds;
        fds[nfds++] = (struct pollfd){.fd = sfd, .events = POLLIN};
    }
    /* The reply of the results in flight is read when it arrives; results
     * waiting for their retry time are sent then. */
    int rfd = w->results_out.sent == 1 ? backend_store_fd(w->backend) : -1;
    size_t results_slot = (size_t)-1;
    if (rfd >= 0 && mono - w->results_out.sent_at > STORE_REPLY_TIMEOUT) {
        results_recv(w); /* a backend that went silent: wait out the link's timeout */
    } else if (rfd >= 0) {
        results_slot = nfds;
        fds[nfds++] = (struct pollfd){.fd = rfd, .events = POLLIN};
    } else if (results_held(w)) {
        flush_results(w);
    }
    /* Busy fetching pool processes: their frames are read together once per
     * tick instead of waking this loop for each one (see POOL_TICK). */
    int ticking = w->pool.fetching && w->tick_at > 0 && w->state == W_RUNNING;
    size_t child_base = nfds;
    for (size_t i = 0; !ticking && i < w->pool.n && nfds < sizeof fds / sizeof fds[0]; i++)
        fds[nfds++] = (struct pollfd){.fd = w->pool.children[i].fd, .events = POLLIN};

    int timeout = 1000;
    if (w->results_out.len && w->results_out.retry_at > 0) {
        double dt = (w->results_out.retry_at - util_monotonic()) * 1000;
        if (dt < timeout)
            timeout = dt < 0 ? 0 : (int)dt + 1;
    }
    if (w->scheduled) {
        double dt = (w->scheduled->msg.eta - util_now()) * 1000;
        if (dt < timeout)
            timeout = dt < 0 ? 0 : (int)dt + 1;
    }
    /* Wake up for the nearest soft or hard time limit of a running task. */
    double now_wall = util_now();
    for (size_t i = 0; i < w->pool.n; i++) {
        const struct job *j = w->pool.children[i].job;
        if (!j || !j->time_start || j->timed_out || j->terminated)
            continue;
        double due = 0;
        if (j->soft_limit > 0 && !j->soft_sent)
            due = j->time_start + j->soft_limit;
        if (j->hard_limit > 0 && (due == 0 || j->time_start + j->hard_limit < due))
            due = j->time_start + j->hard_limit;
        if (due > 0) {
            double dt = (due - now_wall) * 1000;
            if (dt < timeout)
                timeout = dt < 0 ? 0 : (int)dt + 1;
        }
    }
    /* Periodic duties (heartbeat, status, refresh, restore scan): nothing
     * else wakes the loop on time when pool processes fetch for themselves. */
    if (w->pool.fetching) {
        double mono_now = util_monotonic();
        double due[4] = {w->events.freq > 0 ? w->events.next_heartbeat : 0, w->next_status,
                         w->next_refresh, w->next_restore};
        for (size_t i = 0; i < 4; i++)
            if (due[i] > 0) {
                double dt = (due[i] - mono_now) * 1000;
                if (dt < timeout)
                    timeout = dt < 0 ? 0 : (int)dt + 1;
            }
    }
    if (w->next_wake > 0) {
        double dt = (w->next_wake - util_monotonic()) * 1000;
        if (dt < timeout)
            timeout = dt < 0 ? 0 : (int)dt + 1;
    }
    if (w->state == W_RECONNECTING) {
        double dt = (w->reconnect_at - util_monotonic()) * 1000;
        if (dt < timeout)
            timeout = dt < 0 ? 0 : (int)dt + 1;
    }
    struct timespec ts = {timeout / 1000, (long)(timeout % 1000) * 1000000L};
    if (ticking) {
        double dt = w->tick_at - util_monotonic();
        if (dt < 0)
            dt = 0;
        if (dt * 1000 < timeout) {
            ts.tv_sec = 0;
            ts.tv_nsec = (long)(dt * 1e9);
        }
    }
    int n = ppoll(fds, nfds, &ts, NULL);
    if (n < 0 && errno != EINTR) {
        log_error("poll: %s", strerror(errno));
        return CELERIAC_EIO;
    }
    if (ticking && util_monotonic() >= w->tick_at) {
        size_t frames = 0;
        for (size_t k = 0; k < w->pool.n; k++)
            if (w->pool.children[k].fd >= 0)
                frames += read_child(w, &w->pool.children[k]);
        w->tick_at = frames >= POOL_TICK_FRAMES ? util_monotonic() + POOL_TICK : 0;
    }
    if (n <= 0)
        goto flush;
    if (fds[0].revents)
        handle_signals(w);
    if (sub_slot != (size_t)-1 && fds[sub_slot].revents) {
        struct broker_delivery d = {0};
        int rc;
        while ((rc = w->broker->ops->sub_read(w->broker, &d)) == 1) {
            if (strcmp(d.queue, "celery.pidbox") == 0 && w->state < W_WARM_STOP)
                control_handle(w, d.body, d.len);
            free(d.body);
            d.body = NULL;
        }
        if (rc < 0 && w->state < W_WARM_STOP)
            broker_lost(w, "remote control");
    }
    if (results_slot != (size_t)-1 && fds[results_slot].revents)
        results_recv(w);
    if (broker_slot != (size_t)-1 && fds[broker_slot].revents && w->fetch.inflight) {
        if (fetch_recv(w) > 0 && w->state == W_RUNNING)
            dispatch(w);
    } else if (broker_slot != (size_t)-1 && fds[broker_slot].revents) {
        struct broker_delivery d = {0};
        int rc = w->broker->ops->fetch_read(w->broker, &d);
        if (rc == 1) {
            w->fetch.queues_empty = 0;
            if (w->state == W_RUNNING) {
                on_message(w, &d);
                dispatch(w);
            } else {
                /* Arrived while stopping: record it and put it straight back. */
                on_message(w, &d);
                return_reserved(w);
            }
        } else if (rc < 0) {
            free(d.body);
            if (w->state >= W_WARM_STOP)
                w->broker->ops->disconnect(w->broker);
            else
                broker_lost(w, "consume");
        }
    }
    size_t frames = 0;
    for (size_t i = child_base; i < nfds; i++) {
        if (!fds[i].revents || fds[i].fd < 0)
            continue;
        for (size_t k = 0; k < w->pool.n; k++)
            if (w->pool.children[k].fd == fds[i].fd) {
                frames += read_child(w, &w->pool.children[k]);
                break;
            }
    }
    if (frames && w->pool.fetching && w->state == W_RUNNING) {
        double now_mono = util_monotonic();
        if (now_mono - w->frames_since > POOL_TICK) {
            w->frames_since = now_mono;
            w->frames = 0;
        }
        w->frames += (unsigned)frames;
        if (w->frames >= POOL_TICK_FRAMES)
            w->tick_at = now_mono + POOL_TICK;
    }
flush:
    /* This iteration's results are written at the top of the next one, after
     * its fetch, and their reply read when it arrives (the loop polls for
     * it). With more messages waiting the next
     * batch fetch carries the acks; otherwise they go now. With task events
     * buffered, the results are stored first, as a task's events follow its
     * stored result. */
    if (w->state >= W_WARM_STOP && results_held(w))
        flush_results(w); /* stopping: the acks_late acks of these go out now too */
    if (!(w->more && (can_fetch(w) || w->fetch.inflight)))
        flush_acks(w);
    if (w->events.pending && celeriac_value_len(w->events.pending) > 0 && results_held(w))
        flush_results(w);
    if (w->state != W_RECONNECTING && w->events.broker &&
        events_flush(&w->events) < 0 && w->state < W_WARM_STOP)
        broker_lost(w, "events");
    return 0;
}

static int stop_finished(struct worker *w)
{
    if (w->state == W_COLD_STOP)
        return w->broker->ops->fetch_fd(w->broker) < 0 || util_monotonic() >= w->stop_deadline;
    if (w->state != W_WARM_STOP || w->nactive > 0 || !w->returned)
        return 0;
    if (w->broker->ops->fetch_fd(w->broker) >= 0 && util_monotonic() < w->stop_deadline)
        return 0; /* wait for the outstanding fetch so no popped message is lost */
    return 1;
}

static void wait_children(struct worker *w, double seconds)
{
    double deadline = util_monotonic() + seconds;
    for (;;) {
        int alive = 0;
        for (size_t i = 0; i < w->pool.n; i++)
            if (w->pool.children[i].pid > 0)
                alive++;
        if (!alive)
            return;
        if (util_monotonic() > deadline) {
            pool_kill(&w->pool, SIGKILL);
            deadline = util_monotonic() + 5;
        }
        int status;
        pid_t pid = waitpid(-1, &status, WNOHANG);
        if (pid > 0) {
            struct pool_child *c = pool_find_pid(&w->pool, pid);
            if (c)
                pool_forget(c);
            continue;
        }
        if (pid < 0 && errno == ECHILD)
            return;
        struct timespec ts = {0, 20 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
}

static void print_banner(struct worker *w)
{
    char broker[512], backend[512];
    url_redact(w->cfg->broker_url, broker, sizeof broker);
    url_redact(w->cfg->result_backend ? w->cfg->result_backend : "disabled://", backend,
               sizeof backend);
    log_info("celeriac %s worker %s: broker %s, results %s, concurrency %ld (prefork), "
             "prefetch %zu, acks %s",
             CELERIAC_VERSION, w->cfg->hostname, broker, backend, w->cfg->concurrency,
             w->prefetch_limit, w->cfg->task_acks_late ? "late" : "early");
    for (size_t i = 0; i < w->cfg->queues.len; i++)
        log_info("queue: %s", w->cfg->queues.items[i]);
    for (size_t i = 0; i < task_registry_count(w->registry); i++)
        log_info("task: %s", task_registry_at(w->registry, i)->name);
}

int worker_run(struct worker *w)
{
    if (pipe2(w->sigpipe, O_NONBLOCK | O_CLOEXEC) < 0)
        return 70;
    sigpipe_w = w->sigpipe[1];
    struct sigaction sa = {0};
    sa.sa_handler = on_signal;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    sigaction(SIGQUIT, &sa, NULL);
    sigaction(SIGCHLD, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);

    print_banner(w);
    set_state(w, W_STARTING);
    w->started_at = util_now();
    w->broker->ops->subscribe(w->broker, "celery.pidbox", "");
    double deadline = util_monotonic() + 10;
    while (connect_broker(w) < 0) {
        log_error("Cannot connect to %s: %s", "broker", w->broker->errstr);
        if (util_monotonic() > deadline) {
            log_error("broker unreachable at start-up; giving up");
            return 69;
        }
        struct timespec ts = {0, 500 * 1000 * 1000};
        nanosleep(&ts, NULL);
    }
    log_info("Connected to %s", w->broker->ops->name);

    size_t procs = (size_t)(w->cfg->autoscale_max > 0 ? w->cfg->autoscale_min : w->cfg->concurrency);
    w->pool.sched_batch = w->cfg->pool_sched_batch;
    if (pool_start(&w->pool, procs, task_exec_child_main, &w->exec) < 0) {
        log_error("cannot start the pool: %s", w->pool.errstr);
        pool_kill(&w->pool, SIGKILL);
        wait_children(w, 1);
        return 70;
    }
    set_state(w, W_RUNNING);
    restore_visible(w);
    log_info("%s ready.", w->cfg->hostname);
    events_worker(&w->events, "worker-online", 0, 0);
    w->events.next_heartbeat = util_monotonic() + w->events.freq;
    status_write(w->cfg->status_file, state_names[w->state], w->cfg->hostname, w->nactive,
                     w->processed);

    while (w->state != W_STOPPED) {
        if (loop_once(w) < 0) {
            w->exit_code = 70;
            begin_cold_stop(w, 1);
        }
        if (stop_finished(w)) {
            if (w->state == W_WARM_STOP && w->broker->ops->fetch_fd(w->broker) < 0 &&
                w->pending_acks.len && connect_broker(w) < 0)
                log_warning("%zu acknowledgement(s) could not be sent", w->pending_acks.len);
            set_state(w, W_STOPPED);
        }
    }
    pool_close(&w->pool);
    for (size_t i = 0; i < w->pool.n; i++)
        if (w->pool.children[i].fd >= 0)
            shutdown(w->pool.children[i].fd, SHUT_WR);
    wait_children(w, 10);
    /* Results that came in while waiting, and the acks that follow them. */
    flush_results(w);
    flush_acks(w);
    /* Best effort: with the broker gone these fail quietly. */
    events_worker(&w->events, "worker-offline", 0, w->processed);
    events_flush(&w->events);
    w->broker->ops->unbind(w->broker, "celery.pidbox", "", w->pidbox_queue);
    revoked_save(&w->revoked);
    if (w->cfg->status_file)
        unlink(w->cfg->status_file);
    w->broker->ops->disconnect(w->broker);
    log_info("%s stopped (processed %lu task(s))", w->cfg->hostname, w->processed);
    return w->exit_code;
}

/* ---- services for remote control ----------------------------------------- */

void worker_begin_warm_stop(struct worker *w, const char *why)
{
    log_warning("%s", why);
    begin_warm_stop(w);
}

unsigned long worker_clock_forward(struct worker *w)
{
    return ++w->clock;
}

void worker_clock_adjust(struct worker *w, unsigned long other)
{
    w->clock = (other > w->clock ? other : w->clock) + 1;
}

/* Revoke with terminate of a running job: REVOKED now, the signal to its
 * process (child_lost() then acks it without a WorkerLostError). */
static void terminate_job(struct worker *w, struct pool_child *c, struct job *j)
{
    log_info("Terminating %s (%s)", j->msg.id,
             sigabbrev_np(j->signum) ? sigabbrev_np(j->signum) : "?");
    j->terminated = 1;
    j->terminate_pending = 0;
    job_body(w, j);
    store_revoked(w, &j->msg, "terminated");
    event_revoked(w, &j->msg, 1, j->signum, 0);
    kill(c->pid, j->signum);
}

size_t worker_revoke(struct worker *w, const char *const *ids, size_t n, int terminate,
                     int signum, const char **terminated, size_t max)
{
    double now = util_now();
    size_t nterm = 0;
    for (size_t i = 0; i < n; i++) {
        revoked_add(&w->revoked, ids[i], now);
        for (size_t k = 0; k < w->pool.n; k++) {
            struct pool_child *c = &w->pool.children[k];
            for (size_t q = 0; c->busy && q <= c->nqueued; q++) {
                struct job *j = q == 0 ? c->job : c->queued[q - 1];
                if (!j || !j->msg.id || strcmp(j->msg.id, ids[i]) != 0 || j->terminated)
                    continue;
                /* Waiting in the process, not started: it never will be (the
                 * process answers SKIPPED, job_skipped() discards it). */
                int cancelled = !j->time_start && pool_cancel(c, j);
                if (cancelled)
                    log_debug("Task %s cancelled in ForkPoolWorker-%d before it started",
                              j->msg.id, c->index);
                if (!terminate)
                    continue;
                if (cancelled) {
                    if (nterm < max)
                        terminated[nterm] = j->msg.id;
                    nterm++;
                    continue;
                }
                j->signum = signum;
                if (q == 0 && j->time_start)
                    terminate_job(w, c, j);
                else
                    j->terminate_pending = 1; /* queued: when its process starts it */
                if (nterm < max)
                    terminated[nterm] = j->msg.id;
                nterm++;
            }
            /* Posted to a fetching process and not yet in its run order. */
            for (size_t q = 0; q < c->nposted; q++) {
                struct job *j = pool_posted_at(c, q);
                if (!j->msg.id || strcmp(j->msg.id, ids[i]) != 0 || !pool_cancel(c, j))
                    continue;
                if (terminate && nterm < max)
                    terminated[nterm] = j->msg.id;
                nterm += terminate != 0;
            }
        }
    }
    revoked_save(&w->revoked);
    if (w->pool.fetching) {
        /* Fetching processes check their own copy before they run a task. */
        struct buf names = {0};
        for (size_t i = 0; i < n; i++)
            buf_append(&names, ids[i], strlen(ids[i]) + 1);
        for (size_t k = 0; k < w->pool.n; k++)
            if (w->pool.children[k].pid && w->pool.children[k].fd >= 0 &&
                pool_control(&w->pool.children[k], POOL_CTL_REVOKE, names.p ? names.p : "",
                             names.len) < 0)
                log_warning("ForkPoolWorker-%d did not take the revoked ids",
                            w->pool.children[k].index);
        buf_free(&names);
    }
    return nterm;
}

int worker_set_queues(struct worker *w, const char *add, const char *remove)
{
    struct strlist *q = &w->queues;
    if (add) {
        for (size_t i = 0; i < q->len; i++)
            if (strcmp(q->items[i], add) == 0)
                return 0;
        char **items = realloc(q->items, (q->len + 1) * sizeof *items);
        if (!items)
            return CELERIAC_ENOMEM;
        q->items = items;
        if (!(items[q->len] = strdup(add)))
            return CELERIAC_ENOMEM;
        q->len++;
    }
    if (remove) {
        for (size_t i = 0; i < q->len; i++)
            if (strcmp(q->items[i], remove) == 0) {
                free(q->items[i]);
                memmove(&q->items[i], &q->items[i + 1], (q->len - i - 1) * sizeof *q->items);
                q->len--;
                break;
            }
    }
    w->exec.queues = q->items; /* what pool processes forked from now on consume */
    w->exec.nqueues = q->len;
    if (w->pool.fetching) {
        struct buf names = {0};
        for (size_t i = 0; i < q->len; i++)
            if (buf_append(&names, q->items[i], strlen(q->items[i]) + 1) < 0)
                return CELERIAC_ENOMEM;
        for (size_t i = 0; i < w->pool.n; i++)
            if (w->pool.children[i].pid && w->pool.children[i].fd >= 0 &&
                pool_control(&w->pool.children[i], POOL_CTL_QUEUES, names.p, names.len) < 0)
                log_warning("ForkPoolWorker-%d did not take the new queue list",
                            w->pool.children[i].index);
        buf_free(&names);
    }
    return w->broker->ops->set_queues(w->broker, q->items, q->len);
}

/* Fetching pool processes hand over the tasks with a rate limit (the main
 * process keeps the token bucket) or a time limit set by the time_limit
 * command (the main process starts its clock at once). */
void worker_policies_changed(struct worker *w)
{
    for (size_t i = 0; i < w->handoff.len; i++)
        free(w->handoff.items[i]);
    w->handoff.len = 0;
    char **items = realloc(w->handoff.items, (w->npolicies + 1) * sizeof *items);
    if (!items)
        return;
    w->handoff.items = items;
    struct buf names = {0};
    for (size_t i = 0; i < w->npolicies; i++)
        if ((w->policies[i].rate > 0 || w->policies[i].hard > 0 || w->policies[i].soft > 0) &&
            (items[w->handoff.len] = strdup(w->policies[i].name))) {
            buf_append(&names, items[w->handoff.len], strlen(items[w->handoff.len]) + 1);
            w->handoff.len++;
        }
    w->exec.handoff = w->handoff.items;
    w->exec.nhandoff = w->handoff.len;
    for (size_t i = 0; w->pool.fetching && i < w->pool.n; i++)
        if (w->pool.children[i].pid && w->pool.children[i].fd >= 0 &&
            pool_control(&w->pool.children[i], POOL_CTL_HANDOFF, names.p ? names.p : "",
                         names.len) < 0)
            log_warning("ForkPoolWorker-%d did not take the new rate limits",
                        w->pool.children[i].index);
    buf_free(&names);
}

int worker_pool_resize(struct worker *w, long delta)
{
    if (delta > 0) {
        int rc = pool_grow(&w->pool, (size_t)delta);
        if (rc == 0 && w->autoscale_max <= 0)
            w->prefetch_limit = pool_size(&w->pool) * (size_t)w->cfg->prefetch_multiplier;
        return rc;
    }
    size_t size = pool_size(&w->pool);
    size_t n = (size_t)-delta;
    if (n >= size)
        n = size - 1; /* never below one process */
    pool_shrink(&w->pool, n);
    if (w->autoscale_max <= 0)
        w->prefetch_limit = pool_size(&w->pool) * (size_t)w->cfg->prefetch_multiplier;
    return 0;
}

celeriac_value *worker_request_info(struct worker *w, struct job *j, int safe)
{
    job_body(w, j);
    const struct task_message *m = &j->msg;
    celeriac_value *r = celeriac_value_new_object();
    celeriac_value *di = celeriac_value_new_object();
    if (!r || !di) {
        celeriac_value_free(r);
        celeriac_value_free(di);
        return NULL;
    }
    const char *name = task_message_display_name(m);
    celeriac_value_set(r, "id", celeriac_value_new_string(m->id));
    celeriac_value_set(r, "name", celeriac_value_new_string(name));
    if (safe) {
        char *a = m->argsrepr ? NULL : value_repr(m->args, 1024);
        char *k = m->kwargsrepr ? NULL : value_repr(m->kwargs, 1024);
        celeriac_value_set(r, "args", celeriac_value_new_string(m->argsrepr ? m->argsrepr
                                                                            : a ? a : ""));
        celeriac_value_set(r, "kwargs", celeriac_value_new_string(m->kwargsrepr ? m->kwargsrepr
                                                                                : k ? k : ""));
        free(a);
        free(k);
    } else {
        celeriac_value_set(r, "args", celeriac_value_copy(m->args));
        celeriac_value_set(r, "kwargs", celeriac_value_copy(m->kwargs));
    }
    celeriac_value_set(r, "type", celeriac_value_new_string(m->task));
    celeriac_value_set(r, "hostname", celeriac_value_new_string(w->cfg->hostname));
    celeriac_value_set(r, "time_start", j->time_start > 0 ? celeriac_value_new_double(j->time_start)
                                                          : celeriac_value_new_null());
    celeriac_value_set(r, "acknowledged", celeriac_value_new_bool(j->acked));
    celeriac_value_set(di, "exchange", celeriac_value_new_string(m->exchange ? m->exchange : ""));
    celeriac_value_set(di, "routing_key",
                       celeriac_value_new_string(m->routing_key ? m->routing_key : j->queue));
    celeriac_value_set(di, "priority", celeriac_value_new_int(m->priority));
    celeriac_value_set(di, "redelivered", m->redelivered ? celeriac_value_new_bool(1)
                                                         : celeriac_value_new_null());
    celeriac_value_set(r, "delivery_info", di);
    celeriac_value_set(r, "worker_pid", j->worker_pid ? celeriac_value_new_int(j->worker_pid)
                                                      : celeriac_value_new_null());
    return r;
}

struct worker *worker_new(const struct config *cfg)
{
    struct worker *w = calloc(1, sizeof *w);
    char err[512];
    if (!w)
        return NULL;
    w->cfg = cfg;
    w->sigpipe[0] = w->sigpipe[1] = -1;
    w->limits = task_message_limits_default;
    w->limits.max_message_bytes = (size_t)cfg->max_message_size;
    w->limits.max_body_bytes = (size_t)cfg->max_body_size;
    w->limits.max_depth = (unsigned)cfg->max_nesting_depth;
    w->limits.max_items = (size_t)cfg->max_items;
    w->prefetch_limit = (size_t)((cfg->autoscale_max > 0 ? cfg->autoscale_max : cfg->concurrency) *
                                 cfg->prefetch_multiplier);
    w->builtin = cfg->builtin;
    w->registry = task_registry_new();
    if (!w->registry || tasks_builtin_register(w->registry, &w->builtin) < 0) {
        log_error("cannot register built-in tasks");
        goto fail;
    }
    for (size_t i = 0; i < cfg->plugins.len; i++)
        if (task_registry_load_plugin(w->registry, cfg->plugins.items[i], err, sizeof err) < 0) {
            log_error("%s", err);
            goto fail;
        }
    for (size_t i = 0; i < cfg->task_aliases.len; i++) {
        char *a = strdup(cfg->task_aliases.items[i]);
        char *eq = a ? strchr(a, '=') : NULL;
        if (!eq) {
            free(a);
            goto fail;
        }
        *eq = 0;
        int rc = task_registry_alias(w->registry, a, eq + 1);
        if (rc == 0 && !task_registry_find(w->registry, a))
            log_warning("task alias %s=%s: no task named %s is registered", a, eq + 1, eq + 1);
        free(a);
        if (rc < 0)
            goto fail;
    }
    struct broker_options bopts;
    config_broker_options(cfg, &bopts); /* validated by config_load */
    w->exec.broker_opts = bopts;
    w->broker = broker_new(cfg->broker_url, &bopts, err, sizeof err);
    if (!w->broker) {
        log_error("broker: %s", err);
        goto fail;
    }
    if (cfg->result_backend && *cfg->result_backend) {
        w->backend = backend_new(cfg->result_backend, cfg->result_expires,
                                 cfg->result_backend_retry_timeout,
                                 cfg->result_backend_global_keyprefix, err, sizeof err);
        if (!w->backend) {
            log_error("result backend: %s", err);
            goto fail;
        }
    } else {
        log_warning("no result backend configured (--result-backend): results are not stored");
    }
    w->exec.registry = w->registry;
    w->exec.backend_url = cfg->result_backend;
    w->exec.backend_keyprefix = cfg->result_backend_global_keyprefix;
    w->exec.broker_url = cfg->broker_url;
    w->exec.result_expires = cfg->result_expires;
    w->exec.backend_retry_timeout = cfg->result_backend_retry_timeout;
    w->exec.hostname = cfg->hostname;
    w->exec.limits = w->limits;
    w->limits.headers_only = 1; /* the pool process decodes bodies */
    w->exec.progress_interval = cfg->progress_interval;
    events_init(&w->events, w->broker, cfg->hostname, &w->clock,
                cfg->without_heartbeat ? 0 : cfg->heartbeat_interval, cfg->task_events);
    revoked_init(&w->revoked, cfg->statedb);
    w->autoscale_max = cfg->autoscale_max;
    w->autoscale_min = cfg->autoscale_min;
    for (size_t i = 0; i < cfg->rate_limits.len; i++) {
        char *name = strdup(cfg->rate_limits.items[i]);
        char *eq = name ? strchr(name, '=') : NULL;
        if (eq) {
            *eq = 0;
            struct task_policy *p = worker_policy(w, name);
            if (p) {
                p->rate = config_parse_rate(eq + 1);
                snprintf(p->rate_text, sizeof p->rate_text, "%s", eq + 1);
            }
        }
        free(name);
    }
    worker_policies_changed(w);
    w->pool.fetching = cfg->pool_fetch;
    w->exec.revoked = &w->revoked;
    w->exec.fetch = cfg->pool_fetch;
    w->exec.window = cfg->prefetch_multiplier > 0 ? (size_t)cfg->prefetch_multiplier
                                                  : POOL_FETCH_MAX;
    w->exec.short_budget = cfg->pipeline_budget;
    w->exec.prompt_start = cfg->task_events;
    w->exec.acks_late = cfg->task_acks_late;
    w->exec.track_started = cfg->task_track_started;
    w->exec.ignore_result = cfg->task_ignore_result;
    w->exec.time_limit = cfg->time_limit;
    w->exec.soft_time_limit = cfg->soft_time_limit;
    snprintf(w->pidbox_queue, sizeof w->pidbox_queue, "%s.celery.pidbox", cfg->hostname);
    for (size_t i = 0; i < cfg->queues.len; i++)
        if (worker_set_queues(w, cfg->queues.items[i], NULL) < 0)
            goto fail;
    return w;
fail:
    worker_free(w);
    return NULL;
}

void worker_free(struct worker *w)
{
    if (!w)
        return;
    struct job *j;
    while ((j = ready_pop(w)))
        job_free(j);
    while ((j = w->scheduled)) {
        w->scheduled = j->next;
        job_free(j);
    }
    for (size_t i = 0; i < w->pool.n; i++) {
        struct pool_child *c = &w->pool.children[i];
        job_free(c->job);
        for (size_t k = 0; k < c->nqueued; k++)
            job_free(c->queued[k]);
        c->nqueued = 0;
        for (size_t k = 0; k < c->nposted; k++)
            job_free(pool_posted_at(c, k));
        pool_posted_drop(c);
    }
    pool_free(&w->pool);
    buf_free(&w->pack);
    for (size_t i = 0; i < w->pending_acks.len; i++)
        free(w->pending_acks.tags[i]);
    free(w->pending_acks.tags);
    flush_results(w);
    for (size_t i = 0; i < w->ack_batch.len; i++)
        free(w->ack_batch.tags[i]);
    free(w->ack_batch.tags);
    for (size_t i = 0; i < w->fetch.acks.len; i++)
        free(w->fetch.acks.tags[i]);
    free(w->fetch.acks.tags);
    struct result_batch *batches[2] = {&w->results, &w->results_out};
    for (int k = 0; k < 2; k++) {
        struct result_batch *b = batches[k];
        for (size_t i = 0; i < b->len; i++) {
            free(b->ids[i]);
            free(b->docs[i]);
        }
        for (size_t i = 0; i < b->late_acks.len; i++)
            free(b->late_acks.tags[i]);
        free(b->late_acks.tags);
        free(b->ids);
        free(b->docs);
        free(b->lens);
        free(b->pids);
    }
    events_clear(&w->events);
    revoked_free(&w->revoked);
    for (size_t i = 0; i < w->queues.len; i++)
        free(w->queues.items[i]);
    free(w->queues.items);
    for (size_t i = 0; i < w->npolicies; i++)
        free(w->policies[i].name);
    free(w->policies);
    for (size_t i = 0; i < w->handoff.len; i++)
        free(w->handoff.items[i]);
    free(w->handoff.items);
    for (size_t i = 0; i < w->ntotals; i++)
        free(w->totals[i].name);
    free(w->totals);
    broker_free(w->broker);
    backend_free(w->backend);
    task_registry_free(w->registry);
    if (w->sigpipe[0] >= 0) {
        close(w->sigpipe[0]);
        close(w->sigpipe[1]);
    }
    sigpipe_w = -1;
    free(w);
}
