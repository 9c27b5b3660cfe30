/* control.c - Celery remote control (pidbox): request matching, the command
 * table and replies. What the commands change lives in worker.c. */
#include <fnmatch.h>
#include <regex.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/resource.h>
#include <unistd.h>

#include "envelope.h"
#include "log.h"
#include "task_registry.h"
#include "url.h"
#include "util.h"
#include "value.h"
#include "worker_internal.h"

#define REPLY_EXCHANGE "reply.celery.pidbox"

/* A handler returns the reply value (caller frees; NULL = JSON null) and may
 * set *no_reply (shutdown never replies). */
typedef celeriac_value *(*command_fn)(struct worker *w, const celeriac_value *args,
                                      int *no_reply);

static celeriac_value *ok(const char *text)
{
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value_set(v, "ok", celeriac_value_new_string(text));
    return v;
}

static celeriac_value *nok(const char *text)
{
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value_set(v, "error", celeriac_value_new_string(text));
    return v;
}

static celeriac_value *str_or_null(const char *s)
{
    return s ? celeriac_value_new_string(s) : celeriac_value_new_null();
}

/* ---- inspect ------------------------------------------------------------------ */

static celeriac_value *cmd_ping(struct worker *w, const celeriac_value *a, int *nr)
{
    return ok("pong");
}

static celeriac_value *cmd_clock(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value_set(v, "clock", celeriac_value_new_int((int64_t)w->clock));
    return v;
}

static celeriac_value *rusage_value(void)
{
    struct rusage ru;
    getrusage(RUSAGE_SELF, &ru);
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value_set(v, "utime", celeriac_value_new_double((double)ru.ru_utime.tv_sec +
                                                             ru.ru_utime.tv_usec / 1e6));
    celeriac_value_set(v, "stime", celeriac_value_new_double((double)ru.ru_stime.tv_sec +
                                                             ru.ru_stime.tv_usec / 1e6));
    const struct {
        const char *name;
        long value;
    } fields[] = {{"maxrss", ru.ru_maxrss},   {"ixrss", ru.ru_ixrss},     {"idrss", ru.ru_idrss},
                  {"isrss", ru.ru_isrss},     {"minflt", ru.ru_minflt},   {"majflt", ru.ru_majflt},
                  {"nswap", ru.ru_nswap},     {"inblock", ru.ru_inblock}, {"oublock", ru.ru_oublock},
                  {"msgsnd", ru.ru_msgsnd},   {"msgrcv", ru.ru_msgrcv},   {"nsignals", ru.ru_nsignals},
                  {"nvcsw", ru.ru_nvcsw},     {"nivcsw", ru.ru_nivcsw}};
    for (size_t i = 0; i < sizeof fields / sizeof fields[0]; i++)
        celeriac_value_set(v, fields[i].name, celeriac_value_new_int(fields[i].value));
    return v;
}

static celeriac_value *broker_value(struct worker *w)
{
    struct redis_url u;
    char err[256];
    celeriac_value *b = celeriac_value_new_object();
    int parsed = url_parse_redis(w->cfg->broker_url, &u, err, sizeof err) == 0;
    char vhost[16];
    snprintf(vhost, sizeof vhost, "%d", parsed ? u.db : 0);
    celeriac_value_set(b, "hostname", str_or_null(parsed ? (u.path[0] ? u.path : u.host) : NULL));
    celeriac_value_set(b, "userid", parsed && u.username[0] ? celeriac_value_new_string(u.username)
                                                           : celeriac_value_new_null());
    celeriac_value_set(b, "virtual_host", celeriac_value_new_string(vhost));
    celeriac_value_set(b, "port", celeriac_value_new_int(parsed ? u.port : 0));
    celeriac_value_set(b, "insist", celeriac_value_new_bool(0));
    celeriac_value_set(b, "ssl", celeriac_value_new_bool(0));
    celeriac_value_set(b, "transport", celeriac_value_new_string(w->broker->ops->name));
    celeriac_value_set(b, "connect_timeout", celeriac_value_new_int(10));
    celeriac_value *topts = celeriac_value_new_object();
    celeriac_value_set(topts, "visibility_timeout",
                       celeriac_value_new_double(w->cfg->visibility_timeout));
    celeriac_value_set(b, "transport_options", topts);
    celeriac_value_set(b, "login_method", celeriac_value_new_null());
    celeriac_value_set(b, "uri_prefix", celeriac_value_new_null());
    celeriac_value_set(b, "heartbeat", celeriac_value_new_double(0));
    celeriac_value_set(b, "failover_strategy", celeriac_value_new_string("round-robin"));
    celeriac_value_set(b, "alternates", celeriac_value_new_array());
    return b;
}

static celeriac_value *cmd_stats(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value *total = celeriac_value_new_object();
    for (size_t i = 0; i < w->ntotals; i++)
        celeriac_value_set(total, w->totals[i].name,
                           celeriac_value_new_int((int64_t)w->totals[i].count));
    celeriac_value_set(v, "total", total);
    celeriac_value_set(v, "pid", celeriac_value_new_int(getpid()));
    char clock[32];
    snprintf(clock, sizeof clock, "%lu", w->clock);
    celeriac_value_set(v, "clock", celeriac_value_new_string(clock));
    celeriac_value_set(v, "uptime", celeriac_value_new_int((int64_t)(util_now() - w->started_at)));
    celeriac_value *pool = celeriac_value_new_object();
    celeriac_value *procs = celeriac_value_new_array();
    for (size_t i = 0; i < w->pool.n; i++)
        if (w->pool.children[i].pid && !w->pool.children[i].retiring)
            celeriac_value_append(procs, celeriac_value_new_int(w->pool.children[i].pid));
    celeriac_value_set(pool, "max-concurrency",
                       celeriac_value_new_int((int64_t)pool_size(&w->pool)));
    celeriac_value_set(pool, "processes", procs);
    if (w->cfg->max_tasks_per_child > 0)
        celeriac_value_set(pool, "max-tasks-per-child",
                           celeriac_value_new_int(w->cfg->max_tasks_per_child));
    else
        celeriac_value_set(pool, "max-tasks-per-child", celeriac_value_new_string("N/A"));
    celeriac_value_set(pool, "put-guarded-by-semaphore", celeriac_value_new_bool(0));
    celeriac_value *timeouts = celeriac_value_new_array();
    celeriac_value_append(timeouts, celeriac_value_new_double(w->cfg->soft_time_limit));
    celeriac_value_append(timeouts, celeriac_value_new_double(w->cfg->time_limit));
    celeriac_value_set(pool, "timeouts", timeouts);
    celeriac_value *writes = celeriac_value_new_object();
    char raw[32];
    snprintf(raw, sizeof raw, "%lu", w->processed);
    celeriac_value_set(writes, "total", celeriac_value_new_int((int64_t)w->processed));
    celeriac_value_set(writes, "avg", celeriac_value_new_string("1.00"));
    celeriac_value_set(writes, "all", celeriac_value_new_string("1.00"));
    celeriac_value_set(writes, "raw", celeriac_value_new_string(raw));
    celeriac_value_set(writes, "strategy", celeriac_value_new_string("fair"));
    celeriac_value *inq = celeriac_value_new_object();
    celeriac_value_set(inq, "total", celeriac_value_new_int((int64_t)pool_size(&w->pool)));
    celeriac_value_set(inq, "active", celeriac_value_new_int((int64_t)w->nactive));
    celeriac_value_set(writes, "inqueues", inq);
    celeriac_value_set(pool, "writes", writes);
    celeriac_value_set(v, "pool", pool);
    celeriac_value_set(v, "broker", broker_value(w));
    celeriac_value_set(v, "prefetch_count", celeriac_value_new_int((int64_t)w->prefetch_limit));
    celeriac_value_set(v, "rusage", rusage_value());
    return v;
}

static int arg_bool(const celeriac_value *a, const char *key)
{
    const celeriac_value *v = celeriac_value_get(a, key);
    return celeriac_value_type(v) == CELERIAC_BOOL ? celeriac_value_bool(v)
                                                   : celeriac_value_int(v) != 0;
}

static celeriac_value *cmd_active(struct worker *w, const celeriac_value *a, int *nr)
{
    int safe = arg_bool(a, "safe");
    celeriac_value *list = celeriac_value_new_array();
    for (size_t i = 0; i < w->pool.n; i++) {
        struct job *j = w->pool.children[i].job;
        if (j && j->time_start) /* a job queued in a process is reserved until it starts */
            celeriac_value_append(list, worker_request_info(w, j, safe));
    }
    return list;
}

static celeriac_value *cmd_reserved(struct worker *w, const celeriac_value *a, int *nr)
{
    int safe = arg_bool(a, "safe");
    celeriac_value *list = celeriac_value_new_array();
    for (size_t i = 0; i < w->pool.n; i++) {
        const struct pool_child *c = &w->pool.children[i];
        if (c->job && !((struct job *)c->job)->time_start)
            celeriac_value_append(list, worker_request_info(w, c->job, safe));
        for (size_t k = 0; k < c->nqueued; k++)
            celeriac_value_append(list, worker_request_info(w, c->queued[k], safe));
        for (size_t k = 0; k < c->nposted; k++)
            celeriac_value_append(list, worker_request_info(w, pool_posted_at(c, k), safe));
    }
    for (struct job *j = w->ready_head; j; j = j->next)
        celeriac_value_append(list, worker_request_info(w, j, safe));
    return list;
}

static celeriac_value *cmd_scheduled(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *list = celeriac_value_new_array();
    for (struct job *j = w->scheduled; j; j = j->next) {
        celeriac_value *e = celeriac_value_new_object();
        char eta[40];
        util_iso8601_format_tz(j->msg.eta, eta, sizeof eta);
        celeriac_value_set(e, "eta", celeriac_value_new_string(eta));
        celeriac_value_set(e, "priority", celeriac_value_new_int(j->msg.priority));
        celeriac_value_set(e, "request", worker_request_info(w, j, 0));
        celeriac_value_append(list, e);
    }
    return list;
}

static celeriac_value *cmd_revoked(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *list = celeriac_value_new_array();
    revoked_purge(&w->revoked, util_now());
    for (size_t i = 0; i < w->revoked.len; i++)
        celeriac_value_append(list, celeriac_value_new_string(w->revoked.items[i].id));
    return list;
}

static int cmp_str(const void *x, const void *y)
{
    return strcmp(*(const char *const *)x, *(const char *const *)y);
}

static celeriac_value *cmd_registered(struct worker *w, const celeriac_value *a, int *nr)
{
    const celeriac_value *items = celeriac_value_get(a, "taskinfoitems");
    size_t n = task_registry_count(w->registry);
    const char **names = calloc(n ? n : 1, sizeof *names);
    celeriac_value *list = celeriac_value_new_array();
    if (!names)
        return list;
    for (size_t i = 0; i < n; i++)
        names[i] = task_registry_at(w->registry, i)->name;
    qsort(names, n, sizeof *names, cmp_str);
    for (size_t i = 0; i < n; i++) {
        const struct task_def *d = task_registry_find(w->registry, names[i]);
        struct buf b = {0};
        buf_puts(&b, names[i]);
        size_t mark = b.len, shown = 0;
        if (celeriac_value_len(items) > 0) {
            buf_puts(&b, " [");
            for (size_t k = 0; k < celeriac_value_len(items); k++) {
                const char *attr = celeriac_value_string(celeriac_value_at(items, k), NULL);
                if (!attr)
                    continue;
                char val[64] = "";
                struct task_policy *pol = NULL;
                for (size_t q = 0; q < w->npolicies; q++)
                    if (strcmp(w->policies[q].name, names[i]) == 0)
                        pol = &w->policies[q];
                if (strcmp(attr, "acks_late") == 0)
                    snprintf(val, sizeof val, "%s",
                             (d->flags & CELERIAC_TASK_ACKS_LATE) || w->cfg->task_acks_late
                                 ? "True" : "False");
                else if (strcmp(attr, "ignore_result") == 0)
                    snprintf(val, sizeof val, "%s",
                             (d->flags & CELERIAC_TASK_IGNORE_RESULT) || w->cfg->task_ignore_result
                                 ? "True" : "False");
                else if (strcmp(attr, "track_started") == 0)
                    snprintf(val, sizeof val, "%s",
                             (d->flags & CELERIAC_TASK_TRACK_STARTED) || w->cfg->task_track_started
                                 ? "True" : "False");
                else if (strcmp(attr, "max_retries") == 0)
                    snprintf(val, sizeof val, "3"); /* Celery's Task.max_retries */
                else if (strcmp(attr, "rate_limit") == 0 && pol && pol->rate > 0)
                    snprintf(val, sizeof val, "%s", pol->rate_text);
                else if (strcmp(attr, "time_limit") == 0 && (pol && pol->hard > 0))
                    snprintf(val, sizeof val, "%g", pol->hard);
                else if (strcmp(attr, "time_limit") == 0 && w->cfg->time_limit > 0)
                    snprintf(val, sizeof val, "%g", w->cfg->time_limit);
                else if (strcmp(attr, "soft_time_limit") == 0 && (pol && pol->soft > 0))
                    snprintf(val, sizeof val, "%g", pol->soft);
                else if (strcmp(attr, "soft_time_limit") == 0 && w->cfg->soft_time_limit > 0)
                    snprintf(val, sizeof val, "%g", w->cfg->soft_time_limit);
                /* Celery leaves out attributes whose value is None. */
                if (val[0]) {
                    buf_printf(&b, "%s%s=%s", shown ? " " : "", attr, val);
                    shown++;
                }
            }
            buf_puts(&b, "]");
            if (!shown) { /* nothing to show: the bare name */
                b.len = mark;
                b.p[mark] = 0;
            }
        }
        celeriac_value_append(list, celeriac_value_new_string(b.p));
        buf_free(&b);
    }
    free(names);
    return list;
}

static celeriac_value *queue_value(const char *name)
{
    celeriac_value *q = celeriac_value_new_object();
    celeriac_value *ex = celeriac_value_new_object();
    celeriac_value_set(ex, "name", celeriac_value_new_string(name));
    celeriac_value_set(ex, "type", celeriac_value_new_string("direct"));
    celeriac_value_set(ex, "arguments", celeriac_value_new_null());
    celeriac_value_set(ex, "durable", celeriac_value_new_bool(1));
    celeriac_value_set(ex, "passive", celeriac_value_new_bool(0));
    celeriac_value_set(ex, "auto_delete", celeriac_value_new_bool(0));
    celeriac_value_set(ex, "delivery_mode", celeriac_value_new_null());
    celeriac_value_set(ex, "no_declare", celeriac_value_new_bool(0));
    celeriac_value_set(q, "name", celeriac_value_new_string(name));
    celeriac_value_set(q, "exchange", ex);
    celeriac_value_set(q, "routing_key", celeriac_value_new_string(name));
    static const char *const nulls1[] = {"queue_arguments", "binding_arguments",
                                         "consumer_arguments"};
    for (size_t i = 0; i < 3; i++)
        celeriac_value_set(q, nulls1[i], celeriac_value_new_null());
    celeriac_value_set(q, "durable", celeriac_value_new_bool(1));
    celeriac_value_set(q, "exclusive", celeriac_value_new_bool(0));
    celeriac_value_set(q, "auto_delete", celeriac_value_new_bool(0));
    celeriac_value_set(q, "no_ack", celeriac_value_new_bool(0));
    celeriac_value_set(q, "alias", celeriac_value_new_null());
    celeriac_value_set(q, "bindings", celeriac_value_new_array());
    static const char *const nulls2[] = {"no_declare", "expires", "message_ttl", "max_length",
                                         "max_length_bytes", "max_priority"};
    for (size_t i = 0; i < 6; i++)
        celeriac_value_set(q, nulls2[i], celeriac_value_new_null());
    return q;
}

static celeriac_value *cmd_active_queues(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *list = celeriac_value_new_array();
    for (size_t i = 0; i < w->queues.len; i++)
        celeriac_value_append(list, queue_value(w->queues.items[i]));
    return list;
}

static celeriac_value *cmd_conf(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *v = celeriac_value_new_object();
    const char *name;
    celeriac_value *item;
    for (size_t i = 0; (name = config_setting_value(w->cfg, i, &item)); i++) {
        const char *text = celeriac_value_string(item, NULL);
        if (text && (strcmp(name, "broker_url") == 0 || strcmp(name, "result_backend") == 0)) {
            char red[4096];
            url_redact(text, red, sizeof red);
            celeriac_value_free(item);
            item = celeriac_value_new_string(red);
        }
        celeriac_value_set(v, name, item);
    }
    return v;
}

static const char *job_state(struct worker *w, const struct job *j)
{
    for (size_t i = 0; i < w->pool.n; i++)
        if (w->pool.children[i].job == j && j->time_start)
            return "active";
    return "reserved";
}

static celeriac_value *cmd_query_task(struct worker *w, const celeriac_value *a, int *nr)
{
    const celeriac_value *ids = celeriac_value_get(a, "ids");
    if (celeriac_value_type(ids) == CELERIAC_NULL)
        ids = celeriac_value_get(a, "id");
    celeriac_value *out = celeriac_value_new_object();
    struct job *all[3] = {w->ready_head, w->scheduled, NULL};
    size_t nids = celeriac_value_type(ids) == CELERIAC_ARRAY ? celeriac_value_len(ids) : 1;
    for (size_t k = 0; k < nids; k++) {
        const char *id = celeriac_value_type(ids) == CELERIAC_ARRAY
                             ? celeriac_value_string(celeriac_value_at(ids, k), NULL)
                             : celeriac_value_string(ids, NULL);
        if (!id)
            continue;
        struct job *found = NULL;
        for (size_t i = 0; i < w->pool.n && !found; i++) {
            const struct pool_child *c = &w->pool.children[i];
            for (size_t q = 0; c->busy && q <= c->nqueued && !found; q++) {
                struct job *j = q == 0 ? c->job : c->queued[q - 1];
                if (j && j->msg.id && strcmp(j->msg.id, id) == 0)
                    found = j;
            }
        }
        for (size_t l = 0; l < 2 && !found; l++)
            for (struct job *j = all[l]; j && !found; j = j->next)
                if (j->msg.id && strcmp(j->msg.id, id) == 0)
                    found = j;
        if (!found)
            continue;
        celeriac_value *pair = celeriac_value_new_array();
        celeriac_value_append(pair, celeriac_value_new_string(job_state(w, found)));
        celeriac_value_append(pair, worker_request_info(w, found, 0));
        celeriac_value_set(out, id, pair);
    }
    return out;
}

static celeriac_value *cmd_report(struct worker *w, const celeriac_value *a, int *nr)
{
    struct buf b = {0};
    char broker[1024], backend[1024];
    url_redact(w->cfg->broker_url, broker, sizeof broker);
    url_redact(w->cfg->result_backend ? w->cfg->result_backend : "", backend, sizeof backend);
    buf_printf(&b, "\nsoftware -> celeriac:%s (C, Celery protocol 2/1)\nplatform -> pid:%ld\n"
                   "settings -> transport:%s results:%s\n\nbroker_url: '%s'\nresult_backend: '%s'\n",
               CELERIAC_VERSION, (long)getpid(), w->broker->ops->name,
               backend[0] ? backend : "disabled", broker, backend);
    celeriac_value *v = ok(b.p ? b.p : "");
    buf_free(&b);
    return v;
}

static celeriac_value *cmd_hello(struct worker *w, const celeriac_value *a, int *nr)
{
    const char *from = value_get_str(a, "from_node");
    if (from && strcmp(from, w->cfg->hostname) == 0)
        return NULL; /* our own mingle request */
    celeriac_value *v = celeriac_value_new_object();
    celeriac_value *rev = celeriac_value_new_object();
    double mono = util_monotonic();
    for (size_t i = 0; i < w->revoked.len; i++) {
        celeriac_value *pair = celeriac_value_new_array();
        celeriac_value_append(pair, celeriac_value_new_double(mono));
        celeriac_value_append(pair, celeriac_value_new_string(w->revoked.items[i].id));
        celeriac_value_set(rev, w->revoked.items[i].id, pair);
    }
    celeriac_value_set(v, "revoked", rev);
    celeriac_value_set(v, "clock", celeriac_value_new_int((int64_t)worker_clock_forward(w)));
    return v;
}

/* ---- control ------------------------------------------------------------------ */

static int parse_signal(const celeriac_value *v)
{
    if (celeriac_value_type(v) == CELERIAC_INT)
        return (int)celeriac_value_int(v);
    const char *s = celeriac_value_string(v, NULL);
    if (!s || !*s)
        return SIGTERM;
    if (strncasecmp(s, "SIG", 3) == 0)
        s += 3;
    for (int sig = 1; sig < 65; sig++) {
        const char *ab = sigabbrev_np(sig);
        if (ab && strcasecmp(ab, s) == 0)
            return sig;
    }
    char *end;
    long n = strtol(s, &end, 10);
    return *end == 0 && n > 0 && n < 65 ? (int)n : SIGTERM;
}

static celeriac_value *cmd_revoke(struct worker *w, const celeriac_value *a, int *nr)
{
    const celeriac_value *tid = celeriac_value_get(a, "task_id");
    size_t n = celeriac_value_type(tid) == CELERIAC_ARRAY ? celeriac_value_len(tid) : 1;
    const char **ids = calloc(n ? n : 1, sizeof *ids);
    const char **term = calloc(n ? n : 1, sizeof *term);
    size_t k = 0;
    for (size_t i = 0; ids && term && i < n; i++) {
        const char *id = celeriac_value_type(tid) == CELERIAC_ARRAY
                             ? celeriac_value_string(celeriac_value_at(tid, i), NULL)
                             : celeriac_value_string(tid, NULL);
        if (id)
            ids[k++] = id;
    }
    int terminate = arg_bool(a, "terminate");
    int sig = parse_signal(celeriac_value_get(a, "signal"));
    size_t nterm = ids && term ? worker_revoke(w, ids, k, terminate, sig, term, n) : 0;
    struct buf b = {0};
    if (terminate) {
        buf_puts(&b, "terminate: ");
        if (!nterm)
            buf_puts(&b, "tasks unknown");
        for (size_t i = 0; i < nterm && i < n; i++)
            buf_printf(&b, "%s%s", i ? ", " : "", term[i]);
    } else {
        buf_puts(&b, "tasks ");
        for (size_t i = 0; i < k; i++)
            buf_printf(&b, "%s%s", i ? ", " : "", ids[i]);
        buf_puts(&b, " flagged as revoked");
    }
    log_info("Tasks flagged as revoked: %s", b.p ? b.p : "");
    celeriac_value *v = ok(b.p ? b.p : "");
    buf_free(&b);
    free(ids);
    free(term);
    return v;
}

static celeriac_value *cmd_terminate(struct worker *w, const celeriac_value *a, int *nr)
{
    celeriac_value *args = celeriac_value_copy(a);
    celeriac_value_set(args, "terminate", celeriac_value_new_bool(1));
    celeriac_value *v = cmd_revoke(w, args, nr);
    celeriac_value_free(args);
    return v;
}

static celeriac_value *cmd_enable_events(struct worker *w, const celeriac_value *a, int *nr)
{
    if (w->events.task_events)
        return ok("task events already enabled");
    w->events.task_events = 1;
    log_info("Events of group {task} enabled by remote.");
    return ok("task events enabled");
}

static celeriac_value *cmd_disable_events(struct worker *w, const celeriac_value *a, int *nr)
{
    if (!w->events.task_events)
        return ok("task events already disabled");
    w->events.task_events = 0;
    log_info("Events of group {task} disabled by remote.");
    return ok("task events disabled");
}

static celeriac_value *cmd_heartbeat(struct worker *w, const celeriac_value *a, int *nr)
{
    events_worker_wakeup(&w->events);
    return NULL;
}

static celeriac_value *cmd_rate_limit(struct worker *w, const celeriac_value *a, int *nr)
{
    const char *task = value_get_str(a, "task_name");
    if (!task || !task_registry_find(w->registry, task))
        return nok("unknown task");
    const celeriac_value *rv = celeriac_value_get(a, "rate_limit");
    double rate;
    char text[64] = "";
    if (celeriac_value_type(rv) == CELERIAC_INT || celeriac_value_type(rv) == CELERIAC_DOUBLE)
        rate = celeriac_value_double(rv);
    else
        rate = config_parse_rate(celeriac_value_string(rv, NULL) ? celeriac_value_string(rv, NULL)
                                                                   : "");
    if (rate < 0) {
        snprintf(text, sizeof text, "Invalid rate limit string: %s",
                 celeriac_value_string(rv, NULL) ? celeriac_value_string(rv, NULL) : "?");
        return nok(text);
    }
    struct task_policy *p = worker_policy(w, task);
    if (!p)
        return nok("out of memory");
    p->rate = rate;
    worker_policies_changed(w);
    p->tokens = 1;
    if (celeriac_value_string(rv, NULL))
        snprintf(p->rate_text, sizeof p->rate_text, "%s", celeriac_value_string(rv, NULL));
    else
        snprintf(p->rate_text, sizeof p->rate_text, "%g", rate);
    if (rate <= 0) {
        log_info("Rate limits disabled for tasks of type %s", task);
        return ok("rate limit disabled successfully");
    }
    log_info("New rate limit for tasks of type %s: %g/s.", task, rate);
    return ok("new rate limit set successfully");
}

static celeriac_value *cmd_time_limit(struct worker *w, const celeriac_value *a, int *nr)
{
    const char *task = value_get_str(a, "task_name");
    if (!task || !task_registry_find(w->registry, task))
        return nok("unknown task");
    struct task_policy *p = worker_policy(w, task);
    if (!p)
        return nok("out of memory");
    const celeriac_value *hard = celeriac_value_get(a, "hard");
    const celeriac_value *soft = celeriac_value_get(a, "soft");
    p->hard = celeriac_value_type(hard) == CELERIAC_NULL ? 0 : celeriac_value_double(hard);
    p->soft = celeriac_value_type(soft) == CELERIAC_NULL ? 0 : celeriac_value_double(soft);
    worker_policies_changed(w);
    log_info("New time limits for tasks of type %s: soft=%g hard=%g", task, p->soft, p->hard);
    return ok("time limits set successfully");
}

static celeriac_value *cmd_add_consumer(struct worker *w, const celeriac_value *a, int *nr)
{
    const char *q = value_get_str(a, "queue");
    if (!q || !*q)
        return nok("queue name missing");
    struct buf b = {0};
    buf_printf(&b, "add consumer %s", q);
    int rc = worker_set_queues(w, q, NULL);
    celeriac_value *v = rc < 0 ? nok(celeriac_strerror(rc)) : ok(b.p);
    if (rc == 0)
        log_info("Started consuming from %s", q);
    buf_free(&b);
    return v;
}

static celeriac_value *cmd_cancel_consumer(struct worker *w, const celeriac_value *a, int *nr)
{
    const char *q = value_get_str(a, "queue");
    if (!q || !*q)
        return nok("queue name missing");
    struct buf b = {0};
    buf_printf(&b, "no longer consuming from %s", q);
    int rc = worker_set_queues(w, NULL, q);
    celeriac_value *v = rc < 0 ? nok(celeriac_strerror(rc)) : ok(b.p);
    if (rc == 0)
        log_info("Cancelled consuming from %s", q);
    buf_free(&b);
    return v;
}

static celeriac_value *pool_change(struct worker *w, const celeriac_value *a, int sign,
                                   const char *text)
{
    long n = (long)celeriac_value_int(celeriac_value_get(a, "n"));
    if (celeriac_value_type(celeriac_value_get(a, "n")) == CELERIAC_NULL)
        n = 1;
    if (n < 1 || n > 1024)
        return nok("n must be between 1 and 1024");
    if (worker_pool_resize(w, sign * n) < 0)
        return nok("pool could not be resized");
    return ok(text);
}

static celeriac_value *cmd_pool_grow(struct worker *w, const celeriac_value *a, int *nr)
{
    return pool_change(w, a, 1, "pool will grow");
}

static celeriac_value *cmd_pool_shrink(struct worker *w, const celeriac_value *a, int *nr)
{
    return pool_change(w, a, -1, "pool will shrink");
}

static celeriac_value *cmd_pool_restart(struct worker *w, const celeriac_value *a, int *nr)
{
    return nok("ValueError('Pool restarts not enabled')");
}

static celeriac_value *cmd_autoscale(struct worker *w, const celeriac_value *a, int *nr)
{
    if (w->autoscale_max <= 0)
        return nok("ValueError('Autoscale not enabled')");
    long max = (long)celeriac_value_int(celeriac_value_get(a, "max"));
    long min = (long)celeriac_value_int(celeriac_value_get(a, "min"));
    if (max < 1 || min < 1 || min > max || max > 1024)
        return nok("autoscale expects 1 <= min <= max <= 1024");
    w->autoscale_max = max;
    w->autoscale_min = min;
    w->prefetch_limit = (size_t)(max * w->cfg->prefetch_multiplier);
    char text[96];
    snprintf(text, sizeof text, "autoscale now max=%ld min=%ld", max, min);
    return ok(text);
}

static celeriac_value *cmd_shutdown(struct worker *w, const celeriac_value *a, int *nr)
{
    *nr = 1; /* Celery's worker never replies to shutdown */
    worker_begin_warm_stop(w, "Got shutdown from remote");
    return NULL;
}

static celeriac_value *cmd_election(struct worker *w, const celeriac_value *a, int *nr)
{
    return NULL; /* gossip elections: celeriac takes no part */
}

static const struct command {
    const char *name;
    command_fn fn;
} commands[] = {
    {"ping", cmd_ping},
    {"stats", cmd_stats},
    {"active", cmd_active},
    {"dump_active", cmd_active},
    {"reserved", cmd_reserved},
    {"dump_reserved", cmd_reserved},
    {"scheduled", cmd_scheduled},
    {"dump_schedule", cmd_scheduled},
    {"revoked", cmd_revoked},
    {"dump_revoked", cmd_revoked},
    {"registered", cmd_registered},
    {"dump_tasks", cmd_registered},
    {"active_queues", cmd_active_queues},
    {"conf", cmd_conf},
    {"dump_conf", cmd_conf},
    {"query_task", cmd_query_task},
    {"report", cmd_report},
    {"clock", cmd_clock},
    {"hello", cmd_hello},
    {"revoke", cmd_revoke},
    {"terminate", cmd_terminate},
    {"enable_events", cmd_enable_events},
    {"disable_events", cmd_disable_events},
    {"heartbeat", cmd_heartbeat},
    {"rate_limit", cmd_rate_limit},
    {"time_limit", cmd_time_limit},
    {"add_consumer", cmd_add_consumer},
    {"cancel_consumer", cmd_cancel_consumer},
    {"pool_grow", cmd_pool_grow},
    {"pool_shrink", cmd_pool_shrink},
    {"pool_restart", cmd_pool_restart},
    {"autoscale", cmd_autoscale},
    {"shutdown", cmd_shutdown},
    {"election", cmd_election},
};

/* ---- requests and replies ---------------------------------------------------- */

/* kombu's Node.handle_message targeting rules. */
static int addressed_to_us(struct worker *w, const celeriac_value *body)
{
    const celeriac_value *dest = celeriac_value_get(body, "destination");
    if (celeriac_value_type(dest) == CELERIAC_ARRAY && celeriac_value_len(dest) > 0) {
        for (size_t i = 0; i < celeriac_value_len(dest); i++) {
            const char *d = celeriac_value_string(celeriac_value_at(dest, i), NULL);
            if (d && strcmp(d, w->cfg->hostname) == 0)
                return 1;
        }
        return 0;
    }
    const char *pattern = value_get_str(body, "pattern");
    const char *matcher = value_get_str(body, "matcher");
    if (pattern && matcher) {
        if (strcmp(matcher, "glob") == 0)
            return fnmatch(pattern, w->cfg->hostname, 0) == 0;
        if (strcmp(matcher, "pcre") == 0) {
            /* Python re.match: anchored at the start only. */
            struct buf anchored = {0};
            buf_printf(&anchored, "^(%s)", pattern);
            regex_t re;
            int match = 0;
            if (anchored.p && regcomp(&re, anchored.p, REG_EXTENDED | REG_NOSUB) == 0) {
                match = regexec(&re, w->cfg->hostname, 0, NULL, 0) == 0;
                regfree(&re);
            }
            buf_free(&anchored);
            return match;
        }
        return 0; /* unknown matcher: kombu raises, nobody answers */
    }
    return 1;
}

static void send_reply(struct worker *w, const celeriac_value *body, celeriac_value *value)
{
    const celeriac_value *reply_to = celeriac_value_get(body, "reply_to");
    const char *ticket = value_get_str(body, "ticket");
    const char *rk = value_get_str(reply_to, "routing_key");
    const char *exchange = value_get_str(reply_to, "exchange");
    if (!ticket || !rk) {
        celeriac_value_free(value);
        return; /* a cast */
    }
    celeriac_value *reply = celeriac_value_new_object();
    celeriac_value *headers = celeriac_value_new_object();
    struct buf env = {0};
    celeriac_value_set(reply, w->cfg->hostname, value ? value : celeriac_value_new_null());
    celeriac_value_set(headers, "ticket", celeriac_value_new_string(ticket));
    celeriac_value_set(headers, "clock", celeriac_value_new_int((int64_t)worker_clock_forward(w)));
    if (envelope_encode(reply, headers, NULL, 1, exchange ? exchange : REPLY_EXCHANGE, rk, &env) ==
            0 &&
        w->broker->ops->publish_direct(w->broker, exchange ? exchange : REPLY_EXCHANGE, rk, env.p,
                                       env.len) < 0)
        log_warning("remote control reply not sent: %s", w->broker->errstr);
    buf_free(&env);
    celeriac_value_free(reply);
    celeriac_value_free(headers);
}

void control_handle(struct worker *w, const char *envelope, size_t len)
{
    static const struct decode_limits lim = {16 * 1024 * 1024, 32, 100000};
    celeriac_value *body = NULL, *headers = NULL;
    char err[256];
    if (envelope_decode(envelope, len, &lim, &body, &headers, err, sizeof err) < 0) {
        log_warning("discarding malformed remote control message: %s", err);
        return;
    }
    const celeriac_value *clock = celeriac_value_get(headers, "clock");
    if (celeriac_value_type(clock) == CELERIAC_INT)
        worker_clock_adjust(w, (unsigned long)celeriac_value_int(clock));
    else
        worker_clock_forward(w);
    double expires = celeriac_value_double(celeriac_value_get(headers, "expires"));
    const char *method = value_get_str(body, "method");
    if (celeriac_value_type(body) != CELERIAC_OBJECT || !method) {
        log_warning("discarding remote control message without a method");
        goto out;
    }
    if (!addressed_to_us(w, body))
        goto out;
    if (expires > 0 && expires < util_now()) {
        log_info("remote control request %s expired; ignored", method);
        goto out;
    }
    const celeriac_value *args = celeriac_value_get(body, "arguments");
    celeriac_value *empty = NULL;
    if (celeriac_value_type(args) != CELERIAC_OBJECT)
        args = empty = celeriac_value_new_object();
    command_fn fn = NULL;
    for (size_t i = 0; i < sizeof commands / sizeof commands[0]; i++)
        if (strcmp(commands[i].name, method) == 0)
            fn = commands[i].fn;
    log_debug("pidbox received method %s", method);
    int no_reply = 0;
    celeriac_value *value;
    if (fn) {
        value = fn(w, args, &no_reply);
    } else {
        log_error("No such control command: %s", method);
        struct buf b = {0};
        buf_printf(&b, "KeyError('%s')", method);
        value = nok(b.p ? b.p : "KeyError");
        buf_free(&b);
    }
    celeriac_value_free(empty);
    if (no_reply)
        celeriac_value_free(value);
    else
        send_reply(w, body, value);
out:
    celeriac_value_free(body);
    celeriac_value_free(headers);
}
