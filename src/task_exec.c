/* task_exec.c - runs one job inside a pool process and stores what it
 * produced; acks, events and scheduling belong to the parent (worker.c). */
#include "task_exec.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "log.h"
#include "pool.h"
#include "task_context.h"
#include "task_registry.h"
#include "util.h"
#include "value.h"

#define REPR_MAX 1024

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

static void run_one(struct task_exec *x, int fd, const char *env, size_t len, uint32_t flags)
{
    struct task_message m = {0};
    struct pool_outcome out = {.status = POOL_FAILURE};
    char err[256];
    int rc = task_message_decode(env, len, &x->limits, &m, err, sizeof err);
    const struct task_def *def = rc == 0 ? task_registry_find(x->registry, m.task) : NULL;
    pool_child_write(fd, POOL_STARTED, NULL);
    if (!def) {
        /* The parent validated the message; this only happens on memory trouble. */
        out.detail = task_exec_exc_repr("InvalidTaskError", rc < 0 ? err : "task not registered");
        goto done;
    }
    int ignore = (flags & EXEC_IGNORE_RESULT) || m.ignore_result ||
                 (def->flags & CELERIAC_TASK_IGNORE_RESULT);
    if (x->backend && ((flags & EXEC_TRACK_STARTED) || (def->flags & CELERIAC_TASK_TRACK_STARTED)))
        store_started(x, &m);

    struct sink_ctx sctx = {x, &m};
    struct task_sink sink = {store_state, &sctx};
    celeriac_task t;
    task_context_init(&t, m.id, m.task, m.retries, m.args, m.kwargs, &sink);
    double t0 = util_monotonic();
    int r = def->fn(&t, def->userdata);
    out.runtime = util_monotonic() - t0;

    if (r == 0 && !t.failed) {
        celeriac_value *result = task_context_take_result(&t);
        out.status = POOL_SUCCESS;
        out.detail = value_repr(result, REPR_MAX);
        if (x->backend && !ignore) {
            struct result_meta rm = {.task_id = m.id, .status = "SUCCESS", .result = result,
                                     .group_id = m.group, .parent_id = m.parent_id, .ready = 1};
            backend_store_meta(x->backend, &rm);
        }
        celeriac_value_free(result);
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
        out.detail = task_exec_exc_repr(type, msg);
        if (x->backend && !ignore)
            backend_store_failure(x->backend, m.id, module, type, msg, m.parent_id, m.group);
    }
    task_context_clear(&t);
done:
    pool_child_write(fd, POOL_DONE, &out);
    free(out.detail);
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
    if (x->backend_url && *x->backend_url) {
        char err[256];
        x->backend = backend_new(x->backend_url, x->result_expires, x->backend_retry_timeout, err,
                                 sizeof err);
        if (!x->backend)
            log_error("result backend: %s", err);
    }
    struct buf env = {0};
    uint32_t flags;
    while (pool_child_read(fd, &flags, &env) == 0)
        run_one(x, fd, env.p, env.len, flags);
    buf_free(&env);
    backend_free(x->backend);
    x->backend = NULL;
}
