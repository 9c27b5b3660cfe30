/* config.c - the settings table and its three sources (file, env, flags); it
 * validates values but knows nothing of what the worker does with them. */
#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "celeriac.h"
#include "log.h"

enum opt_type { OPT_STR, OPT_BOOL, OPT_LONG, OPT_DOUBLE, OPT_SIZE, OPT_LIST };

struct option_def {
    const char *name;  /* Celery setting name = config-file key; env CELERY_<NAME> */
    const char *flag;  /* long flag without "--" */
    char shortf;       /* short flag or 0 */
    enum opt_type type;
    size_t off;        /* offset in struct config */
    const char *def;   /* default as text; NULL = unset */
    double min, max;   /* bounds for numbers */
    const char *env2;  /* a second env var of lower precedence, or NULL */
    const char *help;
};

#define F(field) offsetof(struct config, field)
static const struct option_def options[] = {
    {"broker_url", "broker", 'b', OPT_STR, F(broker_url), "redis://localhost:6379/0", 0, 0,
     "REDIS_URL", "Broker URL: redis://[:password@]host:port/db or redis+socket:///path"},
    {"result_backend", "result-backend", 0, OPT_STR, F(result_backend), NULL, 0, 0, NULL,
     "Result backend URL (redis://...); unset = results are not stored"},
    {"queues", "queues", 'Q', OPT_LIST, F(queues), "celery", 0, 0, NULL,
     "Comma-separated queues to consume from"},
    {"concurrency", "concurrency", 'c', OPT_LONG, F(concurrency), NULL, 1, 1024, NULL,
     "Number of pool processes (default: number of CPUs)"},
    {"hostname", "hostname", 'n', OPT_STR, F(hostname), "celeriac@%h", 0, 0, NULL,
     "Node name; %h host, %n name, %d domain"},
    {"loglevel", "loglevel", 'l', OPT_STR, F(loglevel), "info", 0, 0, NULL,
     "debug, info, warning, error or critical"},
    {"worker_prefetch_multiplier", "prefetch-multiplier", 0, OPT_LONG, F(prefetch_multiplier),
     "4", 1, 100000, NULL, "Messages reserved per process (prefetch = concurrency x this)"},
    {"pidfile", "pidfile", 0, OPT_STR, F(pidfile), NULL, 0, 0, NULL,
     "Write the main process id to this file"},
    {"logfile", "logfile", 'f', OPT_STR, F(logfile), NULL, 0, 0, NULL,
     "Append the log to this file instead of stderr"},
    {"worker_send_task_events", "task-events", 'E', OPT_BOOL, F(task_events), "false", 0, 0,
     NULL, "Send task events (worker events are always sent)"},
    {"task_acks_late", "task-acks-late", 0, OPT_BOOL, F(task_acks_late), "false", 0, 0, NULL,
     "Acknowledge messages after the task ran, not before"},
    {"task_reject_on_worker_lost", "task-reject-on-worker-lost", 0, OPT_BOOL,
     F(task_reject_on_worker_lost), "false", 0, 0, NULL,
     "With acks_late, requeue a task whose process died instead of failing it"},
    {"visibility_timeout", "visibility-timeout", 0, OPT_DOUBLE, F(visibility_timeout), "3600",
     1, 1e9, NULL, "Seconds before an unacknowledged message is restored to its queue"},
    {"sep", "sep", 0, OPT_STR, F(sep), NULL, 0, 0, NULL,
     "Redis key separator of priority queues (broker_transport_options sep; default \\x06\\x16)"},
    {"global_keyprefix", "global-keyprefix", 0, OPT_STR, F(global_keyprefix), NULL, 0, 0, NULL,
     "Prefix of every broker key and channel, as kombu's broker_transport_options "
     "global_keyprefix (all producers and workers must use the same)"},
    {"priority_steps", "priority-steps", 0, OPT_LIST, F(priority_steps), "0,3,6,9", 0, 0, NULL,
     "Redis priority sub-queues, ascending from 0 (broker_transport_options priority_steps)"},
    {"queue_order_strategy", "queue-order-strategy", 0, OPT_STR, F(queue_order_strategy),
     "round_robin", 0, 0, NULL, "round_robin, sorted or priority (order queues are consumed in)"},
    {"unacked_restore_interval", "unacked-restore-interval", 0, OPT_DOUBLE,
     F(unacked_restore_interval), "60", 0.1, 86400, NULL,
     "Seconds between scans for unacknowledged messages past the visibility timeout"},
    {"result_expires", "result-expires", 0, OPT_LONG, F(result_expires), "86400", 0, 1e9, NULL,
     "Seconds results are kept (0 = forever)"},
    {"task_track_started", "task-track-started", 0, OPT_BOOL, F(task_track_started), "false", 0,
     0, NULL, "Store the STARTED state when a task begins"},
    {"task_ignore_result", "task-ignore-result", 0, OPT_BOOL, F(task_ignore_result), "false", 0,
     0, NULL, "Store no results or errors (like Celery's task_ignore_result)"},
    {"task_alias", "task-alias", 0, OPT_LIST, F(task_aliases), NULL, 0, 0, NULL,
     "PYNAME=NAME: run celeriac task NAME for messages naming PYNAME (repeatable)"},
    {"plugin", "plugin", 0, OPT_LIST, F(plugins), NULL, 0, 0, NULL,
     "Load tasks from a plugin shared object (repeatable)"},
    {"task_default_queue", "default-queue", 0, OPT_STR, F(default_queue), "celery", 0, 0, NULL,
     "Queue for messages the worker itself publishes"},
    {"max_message_size", "max-message-size", 0, OPT_LONG, F(max_message_size), "134217728",
     1024, 4e9, NULL, "Largest broker message accepted, bytes"},
    {"max_body_size", "max-body-size", 0, OPT_LONG, F(max_body_size), "134217728", 1024, 4e9,
     NULL, "Largest decoded (decompressed) body accepted, bytes"},
    {"max_nesting_depth", "max-nesting-depth", 0, OPT_LONG, F(max_nesting_depth), "64", 4, 10000,
     NULL, "Deepest nesting of arrays/objects accepted"},
    {"max_items", "max-items", 0, OPT_LONG, F(max_items), "1000000", 16, 1e9, NULL,
     "Most values accepted in one decoded document"},
    {"result_backend_global_keyprefix", "result-backend-global-keyprefix", 0, OPT_STR,
     F(result_backend_global_keyprefix), NULL, 0, 0, NULL,
     "Prefix of the result keys, as Celery >= 5.3's result_backend_transport_options "
     "global_keyprefix ('_' is added unless it ends in : _ - or .)"},
    {"result_backend_retry_timeout", "result-backend-retry-timeout", 0, OPT_DOUBLE,
     F(result_backend_retry_timeout), "120", 0, 86400, NULL,
     "Seconds a result store keeps retrying while the backend is unreachable"},
    {"broker_connection_max_backoff", "broker-connection-max-backoff", 0, OPT_DOUBLE,
     F(broker_connection_max_backoff), "10", 0.1, 3600, NULL,
     "Longest wait between broker reconnect attempts, seconds"},
    {"task_time_limit", "time-limit", 0, OPT_DOUBLE, F(time_limit), "0", 0, 1e7, NULL,
     "Hard time limit per task, seconds: the process is killed (0 = none)"},
    {"task_soft_time_limit", "soft-time-limit", 0, OPT_DOUBLE, F(soft_time_limit), "0", 0, 1e7,
     NULL, "Soft time limit per task, seconds: the task is told (0 = none)"},
    {"task_rate_limit", "rate-limit", 0, OPT_LIST, F(rate_limits), NULL, 0, 0, NULL,
     "NAME=RATE, e.g. examples.add=10/s (also /m, /h), per worker (repeatable)"},
    {"task_acks_on_failure_or_timeout", "task-acks-on-failure-or-timeout", 0, OPT_BOOL,
     F(task_acks_on_failure_or_timeout), "true", 0, 0, NULL,
     "With acks_late, acknowledge failed and timed-out tasks (else reject/requeue)"},
    {"max_redeliveries", "max-redeliveries", 0, OPT_LONG, F(max_redeliveries), "10", 0, 1e6, NULL,
     "Fail a message redelivered more often than this after lost workers (0 = no cap)"},
    {"worker_soft_shutdown_timeout", "soft-shutdown-timeout", 0, OPT_DOUBLE,
     F(soft_shutdown_timeout), "0", 0, 86400, NULL,
     "Cold shutdown first lets running tasks finish for this many seconds"},
    {"worker_max_tasks_per_child", "max-tasks-per-child", 0, OPT_LONG, F(max_tasks_per_child),
     "0", 0, 1e9, NULL, "Replace a pool process after this many tasks (0 = never)"},
    {"worker_max_memory_per_child", "max-memory-per-child", 0, OPT_LONG,
     F(max_memory_per_child), "0", 0, 1e12, NULL,
     "Replace a pool process whose resident memory exceeds this many KiB (0 = never)"},
    {"worker_autoscale", "autoscale", 0, OPT_STR, F(autoscale), NULL, 0, 0, NULL,
     "MAX,MIN: grow the pool up to MAX processes under load, shrink to MIN when idle"},
    {"worker_pipeline_budget", "pipeline-budget", 0, OPT_DOUBLE, F(pipeline_budget), "0.004", 0,
     10, NULL,
     "Seconds of expected work a busy pool process may hold queued behind its current task "
     "(tasks averaging under half of it; 0 = only idle processes get tasks)"},
    {"worker_pool_sched_batch", "pool-sched-batch", 0, OPT_BOOL, F(pool_sched_batch), "true", 0,
     0, NULL,
     "Run pool processes under SCHED_BATCH, so that handing them work does not preempt the "
     "main process (false: the default policy)"},
    {"worker_pool_fetch", "pool-fetch", 0, OPT_BOOL, F(pool_fetch), "true", 0, 0, NULL,
     "Pool processes fetch their own messages (within the same prefetch window) and tell "
     "the main process (false, --no-pool-fetch: the main process fetches and hands each "
     "one over)"},
    {"progress_interval", "progress-interval", 0, OPT_DOUBLE, F(progress_interval), "0.05", 0,
     3600, NULL, "Minimum seconds between two stored PROCESSING updates of a task (first always)"},
    {"heartbeat_interval", "heartbeat-interval", 0, OPT_DOUBLE, F(heartbeat_interval), "2.0",
     0.1, 3600, NULL, "Seconds between worker-heartbeat events"},
    {"without_heartbeat", "without-heartbeat", 0, OPT_BOOL, F(without_heartbeat), "false", 0, 0,
     NULL, "Send no worker-heartbeat events"},
    {"statedb", "statedb", 'S', OPT_STR, F(statedb), NULL, 0, 0, NULL,
     "Keep revoked task ids in this file across restarts"},
    {"status_file", "status-file", 0, OPT_STR, F(status_file), NULL, 0, 0, NULL,
     "Liveness file read by `celeriac status` (default: <pidfile>.status)"},
    {"document_max_bytes", "document-max-bytes", 0, OPT_SIZE, F(builtin.document_max_bytes),
     "52428800", 1, 4e9, NULL, "process_document: largest document accepted or downloaded"},
    {"document_fetch_timeout", "document-fetch-timeout", 0, OPT_LONG,
     F(builtin.fetch_timeout_ms), "30000", 100, 3600000, NULL,
     "process_document: whole download timeout, ms"},
    {"document_connect_timeout", "document-connect-timeout", 0, OPT_LONG,
     F(builtin.fetch_connect_timeout_ms), "10000", 100, 3600000, NULL,
     "process_document: connect timeout, ms"},
    {"document_max_redirects", "document-max-redirects", 0, OPT_LONG,
     F(builtin.fetch_max_redirects), "5", 0, 50, NULL,
     "process_document: most HTTP redirects followed"},
    {"document_chunk_size", "document-chunk-size", 0, OPT_SIZE, F(builtin.default_chunk_size),
     "1000", 100, 1000000, NULL, "process_document: default characters per chunk"},
};
#undef F
#define NOPTIONS (sizeof options / sizeof options[0])

enum { LEVEL_DEFAULT, LEVEL_FILE, LEVEL_ENV, LEVEL_FLAG };

static void strlist_clear(struct strlist *l)
{
    for (size_t i = 0; i < l->len; i++)
        free(l->items[i]);
    free(l->items);
    l->items = NULL;
    l->len = 0;
}

static int strlist_add(struct strlist *l, const char *s, size_t n)
{
    char **items = realloc(l->items, (l->len + 1) * sizeof *items);
    if (!items)
        return CELERIAC_ENOMEM;
    l->items = items;
    l->items[l->len] = strndup(s, n);
    if (!l->items[l->len])
        return CELERIAC_ENOMEM;
    l->len++;
    return 0;
}

static int parse_bool(const char *v, int *out)
{
    static const char *const yes[] = {"1", "true", "yes", "on", "y"};
    static const char *const no[] = {"0", "false", "no", "off", "n", ""};
    for (size_t i = 0; i < sizeof yes / sizeof *yes; i++)
        if (strcasecmp(v, yes[i]) == 0)
            return *out = 1, 0;
    for (size_t i = 0; i < sizeof no / sizeof *no; i++)
        if (strcasecmp(v, no[i]) == 0)
            return *out = 0, 0;
    return -1;
}

/* Sets one option from text. level decides whether a list is replaced. */
static int set_option(struct config *c, const struct option_def *o, const char *v, int level,
                      int *levels, const char *source)
{
    char *base = (char *)c;
    int idx = (int)(o - options);
    char *end;
    switch (o->type) {
    case OPT_STR: {
        char *dup = strdup(v);
        if (!dup)
            return CELERIAC_ENOMEM;
        char **slot = (char **)(base + o->off);
        free(*slot);
        *slot = dup;
        break;
    }
    case OPT_BOOL: {
        int b;
        if (parse_bool(v, &b) < 0) {
            fprintf(stderr, "celeriac: %s: %s expects true/false, got '%s'\n", source, o->name, v);
            return CELERIAC_EINVAL;
        }
        *(int *)(base + o->off) = b;
        break;
    }
    case OPT_LONG:
    case OPT_SIZE:
    case OPT_DOUBLE: {
        errno = 0;
        double d = strtod(v, &end);
        while (end && isspace((unsigned char)*end))
            end++;
        if (errno || end == v || *end || d != d) {
            fprintf(stderr, "celeriac: %s: %s expects a number, got '%s'\n", source, o->name, v);
            return CELERIAC_EINVAL;
        }
        if (d < o->min || d > o->max) {
            fprintf(stderr, "celeriac: %s: %s must be between %g and %g, got '%s'\n", source,
                    o->name, o->min, o->max, v);
            return CELERIAC_EINVAL;
        }
        if (o->type != OPT_DOUBLE && d != (double)(long)d) {
            fprintf(stderr, "celeriac: %s: %s expects a whole number, got '%s'\n", source, o->name,
                    v);
            return CELERIAC_EINVAL;
        }
        if (o->type == OPT_LONG)
            *(long *)(base + o->off) = (long)d;
        else if (o->type == OPT_SIZE)
            *(size_t *)(base + o->off) = (size_t)d;
        else
            *(double *)(base + o->off) = d;
        break;
    }
    case OPT_LIST: {
        struct strlist *l = (struct strlist *)(base + o->off);
        if (levels[idx] != level)
            strlist_clear(l);
        const char *p = v;
        while (*p) {
            const char *comma = strchr(p, ',');
            size_t n = comma ? (size_t)(comma - p) : strlen(p);
            while (n && isspace((unsigned char)*p))
                p++, n--;
            while (n && isspace((unsigned char)p[n - 1]))
                n--;
            if (n && strlist_add(l, p, n) < 0)
                return CELERIAC_ENOMEM;
            if (!comma)
                break;
            p = comma + 1;
        }
        break;
    }
    }
    levels[idx] = level;
    return 0;
}

static const struct option_def *find_by_name(const char *name)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        if (strcmp(options[i].name, name) == 0)
            return &options[i];
        /* Flag spelling (task-acks-late) works as a key too. */
        if (strcmp(options[i].flag, name) == 0)
            return &options[i];
    }
    /* A few aliases users know from Celery. */
    if (strcmp(name, "broker") == 0)
        return find_by_name("broker_url");
    if (strcmp(name, "prefetch_multiplier") == 0)
        return find_by_name("worker_prefetch_multiplier");
    if (strcmp(name, "task_events") == 0)
        return find_by_name("worker_send_task_events");
    if (strcmp(name, "worker_concurrency") == 0)
        return find_by_name("concurrency");
    return NULL;
}

static char *trim(char *s)
{
    while (isspace((unsigned char)*s))
        s++;
    char *e = s + strlen(s);
    while (e > s && isspace((unsigned char)e[-1]))
        *--e = 0;
    /* Python-style quoted values. */
    size_t n = strlen(s);
    if (n >= 2 && (s[0] == '"' || s[0] == '\'') && s[n - 1] == s[0]) {
        s[n - 1] = 0;
        s++;
    }
    return s;
}

static int load_file(struct config *c, const char *path, int *levels)
{
    FILE *f = fopen(path, "r");
    if (!f) {
        fprintf(stderr, "celeriac: cannot read config file %s: %s\n", path, strerror(errno));
        return CELERIAC_EIO;
    }
    char line[4096];
    int lineno = 0, rc = 0;
    while (fgets(line, sizeof line, f)) {
        lineno++;
        char *s = trim(line);
        if (!*s || *s == '#' || *s == ';' || *s == '[')
            continue;
        char *eq = strpbrk(s, "=:");
        if (!eq) {
            fprintf(stderr, "celeriac: %s:%d: expected 'key = value'\n", path, lineno);
            rc = CELERIAC_EINVAL;
            break;
        }
        *eq = 0;
        char *key = trim(s), *val = trim(eq + 1);
        const struct option_def *o = find_by_name(key);
        if (!o) {
            fprintf(stderr, "celeriac: %s:%d: unknown setting '%s'\n", path, lineno, key);
            rc = CELERIAC_EINVAL;
            break;
        }
        char src[600];
        snprintf(src, sizeof src, "%s:%d", path, lineno);
        if ((rc = set_option(c, o, val, LEVEL_FILE, levels, src)) < 0)
            break;
    }
    fclose(f);
    return rc;
}

static int load_env(struct config *c, int *levels)
{
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option_def *o = &options[i];
        char name[128] = "CELERY_";
        size_t n = strlen(name);
        for (const char *p = o->name; *p && n + 1 < sizeof name; p++)
            name[n++] = (char)toupper((unsigned char)*p);
        name[n] = 0;
        const char *v = getenv(name);
        const char *used = name;
        if ((!v || !*v) && o->env2) {
            v = getenv(o->env2);
            used = o->env2;
        }
        if (v && *v) {
            int rc = set_option(c, o, v, LEVEL_ENV, levels, used);
            if (rc < 0)
                return rc;
        }
    }
    return 0;
}

void config_print_help(const char *prog)
{
    printf("Usage: %s worker [options]\n\n"
           "Runs a Celery-protocol worker. Every option is also a config-file key (--config "
           "FILE,\n`key = value` lines) and an environment variable CELERY_<KEY> (upper case).\n"
           "Precedence: flags > environment > config file > defaults.\n\n",
           prog);
    for (size_t i = 0; i < NOPTIONS; i++) {
        const struct option_def *o = &options[i];
        char flag[96];
        const char *arg = o->type == OPT_BOOL ? "" : o->type == OPT_STR || o->type == OPT_LIST
                                                         ? " TEXT"
                                                         : " N";
        if (o->shortf)
            snprintf(flag, sizeof flag, "-%c, --%s%s", o->shortf, o->flag, arg);
        else
            snprintf(flag, sizeof flag, "    --%s%s", o->flag, arg);
        printf("  %-40s %s\n", flag, o->help);
        printf("  %-40s   key %s, default: %s\n", "", o->name, o->def ? o->def : "(none)");
    }
    printf("  %-40s %s\n", "    --config FILE", "Read settings from FILE (also CELERIAC_CONFIG)");
    printf("  %-40s %s\n", "-h, --help", "Show this help and exit");
    printf("\nThe broker URL also comes from CELERY_BROKER_URL, then REDIS_URL; the result "
           "backend from CELERY_RESULT_BACKEND.\nExit codes: 0 clean shutdown, 64 usage error, "
           "69 broker unavailable at start-up, 70 internal error.\n");
}

static int long_number_cpus(void)
{
    long n = sysconf(_SC_NPROCESSORS_ONLN);
    return n > 0 ? (int)n : 1;
}

enum config_result config_load(struct config *c, int argc, char **argv)
{
    int levels[NOPTIONS] = {0};
    memset(c, 0, sizeof *c);
    for (size_t i = 0; i < NOPTIONS; i++)
        if (options[i].def && set_option(c, &options[i], options[i].def, LEVEL_DEFAULT, levels,
                                         "default") < 0)
            return CONFIG_EXIT_USAGE;
    c->concurrency = long_number_cpus();

    /* The config file first: find --config in argv, else CELERIAC_CONFIG. */
    const char *file = getenv("CELERIAC_CONFIG");
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--config") == 0 && i + 1 < argc)
            file = argv[i + 1];
        else if (strncmp(argv[i], "--config=", 9) == 0)
            file = argv[i] + 9;
        else if (strcmp(argv[i], "--config") == 0) {
            fprintf(stderr, "celeriac: --config needs a file\n");
            return CONFIG_EXIT_USAGE;
        }
    }
    if (file && *file) {
        c->config_file = strdup(file);
        if (load_file(c, file, levels) < 0)
            return CONFIG_EXIT_USAGE;
    }
    if (load_env(c, levels) < 0)
        return CONFIG_EXIT_USAGE;

    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const struct option_def *o = NULL;
        const char *val = NULL;
        if (strcmp(a, "-h") == 0 || strcmp(a, "--help") == 0) {
            config_print_help("celeriac");
            return CONFIG_EXIT_OK;
        }
        if (strcmp(a, "--config") == 0) {
            i++;
            continue;
        }
        if (strncmp(a, "--config=", 9) == 0)
            continue;
        if (a[0] == '-' && a[1] == '-' && a[2]) {
            const char *eq = strchr(a + 2, '=');
            size_t n = eq ? (size_t)(eq - a - 2) : strlen(a + 2);
            for (size_t k = 0; k < NOPTIONS && !o; k++)
                if (strlen(options[k].flag) == n && memcmp(options[k].flag, a + 2, n) == 0)
                    o = &options[k];
            /* --no-task-acks-late style negation for booleans. */
            if (!o && n > 3 && memcmp(a + 2, "no-", 3) == 0 && !eq) {
                for (size_t k = 0; k < NOPTIONS && !o; k++)
                    if (options[k].type == OPT_BOOL && strlen(options[k].flag) == n - 3 &&
                        memcmp(options[k].flag, a + 5, n - 3) == 0)
                        o = &options[k];
                if (o)
                    val = "false";
            }
            if (o && eq)
                val = eq + 1;
        } else if (a[0] == '-' && a[1] && a[1] != '-') {
            for (size_t k = 0; k < NOPTIONS && !o; k++)
                if (options[k].shortf == a[1])
                    o = &options[k];
            if (o && a[2])
                val = a + 2; /* -Qcelery, -c4 */
        }
        if (!o) {
            fprintf(stderr, "celeriac: unknown option '%s' (see --help)\n", a);
            return CONFIG_EXIT_USAGE;
        }
        if (!val) {
            if (o->type == OPT_BOOL) {
                val = "true";
            } else if (i + 1 < argc) {
                val = argv[++i];
            } else {
                fprintf(stderr, "celeriac: option '%s' needs a value\n", a);
                return CONFIG_EXIT_USAGE;
            }
        }
        if (set_option(c, o, val, LEVEL_FLAG, levels, a) < 0)
            return CONFIG_EXIT_USAGE;
    }

    if (log_level_parse(c->loglevel) < 0) {
        fprintf(stderr, "celeriac: bad log level '%s' (debug, info, warning, error, critical)\n",
                c->loglevel);
        return CONFIG_EXIT_USAGE;
    }
    if (c->queues.len == 0) {
        fprintf(stderr, "celeriac: no queue to consume from\n");
        return CONFIG_EXIT_USAGE;
    }
    for (size_t i = 0; i < c->task_aliases.len; i++) {
        const char *eq = strchr(c->task_aliases.items[i], '=');
        if (!eq || eq == c->task_aliases.items[i] || !eq[1]) {
            fprintf(stderr, "celeriac: task alias '%s' is not PYNAME=NAME\n",
                    c->task_aliases.items[i]);
            return CONFIG_EXIT_USAGE;
        }
    }
    if (c->sep && (!*c->sep || strlen(c->sep) > 7)) {
        fprintf(stderr, "celeriac: sep must be 1 to 7 characters\n");
        return CONFIG_EXIT_USAGE;
    }
    if (c->global_keyprefix && strlen(c->global_keyprefix) > 64) {
        fprintf(stderr, "celeriac: global_keyprefix must be at most 64 characters\n");
        return CONFIG_EXIT_USAGE;
    }
    if (c->result_backend_global_keyprefix && strlen(c->result_backend_global_keyprefix) > 64) {
        fprintf(stderr, "celeriac: result_backend_global_keyprefix must be at most 64 characters\n");
        return CONFIG_EXIT_USAGE;
    }
    if (strcmp(c->queue_order_strategy, "round_robin") != 0 &&
        strcmp(c->queue_order_strategy, "sorted") != 0 &&
        strcmp(c->queue_order_strategy, "priority") != 0) {
        fprintf(stderr, "celeriac: queue_order_strategy must be round_robin, sorted or priority\n");
        return CONFIG_EXIT_USAGE;
    }
    if (config_broker_options(c, NULL) < 0) {
        fprintf(stderr, "celeriac: priority_steps must be 1 to 10 ascending numbers 0..9 "
                        "starting with 0 (e.g. 0,3,6,9)\n");
        return CONFIG_EXIT_USAGE;
    }
    for (size_t i = 0; i < c->rate_limits.len; i++) {
        const char *eq = strchr(c->rate_limits.items[i], '=');
        if (!eq || eq == c->rate_limits.items[i] || config_parse_rate(eq + 1) < 0) {
            fprintf(stderr, "celeriac: rate limit '%s' is not NAME=N/s|N/m|N/h\n",
                    c->rate_limits.items[i]);
            return CONFIG_EXIT_USAGE;
        }
    }
    if (c->autoscale && *c->autoscale) {
        char extra;
        if (sscanf(c->autoscale, "%ld,%ld%c", &c->autoscale_max, &c->autoscale_min, &extra) != 2 ||
            c->autoscale_max < 1 || c->autoscale_min < 0 || c->autoscale_min > c->autoscale_max ||
            c->autoscale_max > 1024) {
            fprintf(stderr, "celeriac: --autoscale expects MAX,MIN (e.g. 10,3), got '%s'\n",
                    c->autoscale);
            return CONFIG_EXIT_USAGE;
        }
        if (c->autoscale_min < 1)
            c->autoscale_min = 1;
    }
    if (!c->status_file && c->pidfile) {
        size_t n = strlen(c->pidfile) + 8;
        c->status_file = malloc(n);
        if (!c->status_file)
            return CONFIG_EXIT_USAGE;
        snprintf(c->status_file, n, "%s.status", c->pidfile);
    }
    char *host = config_expand_hostname(c->hostname);
    if (!host)
        return CONFIG_EXIT_USAGE;
    free(c->hostname);
    c->hostname = host;
    return CONFIG_RUN;
}

int config_broker_options(const struct config *c, struct broker_options *out)
{
    struct broker_options o;
    broker_options_default(&o);
    if (c->sep)
        snprintf(o.sep, sizeof o.sep, "%s", c->sep);
    if (c->global_keyprefix)
        snprintf(o.keyprefix, sizeof o.keyprefix, "%s", c->global_keyprefix);
    if (c->priority_steps.len < 1 || c->priority_steps.len > 10)
        return CELERIAC_EINVAL;
    for (size_t i = 0; i < c->priority_steps.len; i++) {
        char *end;
        long v = strtol(c->priority_steps.items[i], &end, 10);
        if (*end || v < 0 || v > 9 || (i == 0 && v != 0) || (i > 0 && v <= o.steps[i - 1]))
            return CELERIAC_EINVAL;
        o.steps[i] = (int)v;
    }
    o.nsteps = c->priority_steps.len;
    o.order = strcmp(c->queue_order_strategy, "sorted") == 0     ? QUEUE_ORDER_SORTED
              : strcmp(c->queue_order_strategy, "priority") == 0 ? QUEUE_ORDER_PRIORITY
                                                                 : QUEUE_ORDER_ROUND_ROBIN;
    if (out)
        *out = o;
    return 0;
}

double config_parse_rate(const char *text)
{
    /* Celery's rate strings: "10/s", "100/m", "1000/h", a bare number (per
     * second), or empty / "0" for no limit. */
    if (!text)
        return -1;
    while (isspace((unsigned char)*text))
        text++;
    if (!*text)
        return 0;
    char *end;
    errno = 0;
    double n = strtod(text, &end);
    if (errno || end == text || n < 0 || n != n)
        return -1;
    if (!*end)
        return n;
    if (*end != '/' || !end[1] || end[2])
        return -1;
    switch (end[1]) {
    case 's':
        return n;
    case 'm':
        return n / 60;
    case 'h':
        return n / 3600;
    default:
        return -1;
    }
}

char *config_expand_hostname(const char *pattern)
{
    char host[256] = "localhost";
    gethostname(host, sizeof host - 1);
    host[sizeof host - 1] = 0;
    char *dot = strchr(host, '.');
    size_t namelen = dot ? (size_t)(dot - host) : strlen(host);
    const char *domain = dot ? dot + 1 : "";
    char out[1024];
    size_t o = 0;
    int has_at = strchr(pattern, '@') != NULL;
    if (!has_at)
        o = (size_t)snprintf(out, sizeof out, "celeriac@");
    for (const char *p = pattern; *p && o + 1 < sizeof out; p++) {
        const char *ins = NULL;
        size_t n = 0;
        char one = *p;
        if (*p == '%' && p[1]) {
            p++;
            if (*p == 'h')
                ins = host, n = strlen(host);
            else if (*p == 'n')
                ins = host, n = namelen;
            else if (*p == 'd')
                ins = domain, n = strlen(domain);
            else if (*p == '%')
                ins = "%", n = 1;
            else {
                fprintf(stderr, "celeriac: unknown %%%c in hostname '%s'\n", *p, pattern);
                return NULL;
            }
        } else {
            ins = &one;
            n = 1;
        }
        if (o + n >= sizeof out)
            break;
        memcpy(out + o, ins, n);
        o += n;
    }
    out[o] = 0;
    return strdup(out);
}

const char *config_setting_value(const struct config *c, size_t i, struct celeriac_value **out)
{
    if (i >= NOPTIONS)
        return NULL;
    const struct option_def *o = &options[i];
    const char *base = (const char *)c;
    switch (o->type) {
    case OPT_STR: {
        const char *s = *(char *const *)(base + o->off);
        *out = s ? celeriac_value_new_string(s) : celeriac_value_new_null();
        break;
    }
    case OPT_BOOL:
        *out = celeriac_value_new_bool(*(const int *)(base + o->off));
        break;
    case OPT_LONG:
        *out = celeriac_value_new_int(*(const long *)(base + o->off));
        break;
    case OPT_SIZE:
        *out = celeriac_value_new_int((int64_t)*(const size_t *)(base + o->off));
        break;
    case OPT_DOUBLE:
        *out = celeriac_value_new_double(*(const double *)(base + o->off));
        break;
    case OPT_LIST: {
        const struct strlist *l = (const struct strlist *)(base + o->off);
        *out = celeriac_value_new_array();
        for (size_t k = 0; k < l->len; k++)
            celeriac_value_append(*out, celeriac_value_new_string(l->items[k]));
        break;
    }
    }
    return o->name;
}

void config_free(struct config *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < NOPTIONS; i++) {
        char *slot = (char *)c + options[i].off;
        if (options[i].type == OPT_STR) {
            free(*(char **)slot);
            *(char **)slot = NULL;
        } else if (options[i].type == OPT_LIST) {
            strlist_clear((struct strlist *)slot);
        }
    }
    free(c->config_file);
    c->config_file = NULL;
}
