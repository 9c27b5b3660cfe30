/* config.h - every worker setting in one table: Celery's name, flag, env var,
 * config-file key, type, default, bounds and help. */
#ifndef CELERIAC_CONFIG_H
#define CELERIAC_CONFIG_H

#include <stddef.h>
#include "broker.h"
#include "celeriac.h"
#include "tasks/builtin.h"

/* A list setting (queues, aliases, plugins). */
struct strlist {
    char **items; /* owned */
    size_t len;
};

struct config {
    char *broker_url;             /* broker_url; -b */
    char *result_backend;         /* result_backend; empty = results disabled */
    struct strlist queues;        /* -Q; default "celery" */
    long concurrency;             /* -c; default: number of CPUs */
    char *hostname;               /* -n, expanded: "celeriac@host" */
    char *loglevel;               /* -l */
    long prefetch_multiplier;     /* worker_prefetch_multiplier */
    char *pidfile;
    char *logfile;
    int task_events;              /* -E (worker_send_task_events) */
    int task_acks_late;
    int task_reject_on_worker_lost;
    double visibility_timeout;    /* broker_transport_options.visibility_timeout */
    char *sep;                    /* broker_transport_options.sep; NULL = "\x06\x16" */
    char *global_keyprefix;       /* broker_transport_options.global_keyprefix; NULL = none */
    struct strlist priority_steps;/* broker_transport_options.priority_steps */
    char *queue_order_strategy;   /* round_robin, sorted or priority */
    double unacked_restore_interval; /* seconds between restore scans */
    long result_expires;          /* seconds; 0 = never */
    int task_track_started;
    int task_ignore_result;
    struct strlist task_aliases;  /* "python.name=celeriac_name" */
    struct strlist plugins;       /* paths of .so plugins */
    char *default_queue;          /* task_default_queue for messages celeriac publishes */
    long max_message_size;        /* cap on one broker message, bytes */
    long max_body_size;           /* cap on a decoded body, bytes */
    long max_nesting_depth;       /* cap on nesting in envelope and body */
    long max_items;               /* cap on values in one decoded document */
    double result_backend_retry_timeout; /* how long a result store retries */
    char *result_backend_global_keyprefix; /* result_backend_transport_options global_keyprefix */
    double broker_connection_max_backoff; /* reconnect backoff cap, seconds */
    struct builtin_config builtin;/* process_document settings */
    double time_limit;            /* hard limit per task, seconds; 0 = none */
    double soft_time_limit;       /* soft limit per task, seconds; 0 = none */
    struct strlist rate_limits;   /* "task.name=10/s" (task_annotations rate_limit) */
    int task_acks_on_failure_or_timeout; /* acks_late: ack failures and timeouts */
    long max_redeliveries;        /* deliveries of one message before it is failed */
    double soft_shutdown_timeout; /* cold shutdown waits this long for running tasks */
    long max_tasks_per_child;     /* replace a pool process after N tasks; 0 = never */
    long max_memory_per_child;    /* replace a pool process above N KiB resident; 0 = never */
    char *autoscale;              /* "MAX,MIN" or NULL */
    long autoscale_max, autoscale_min; /* parsed from autoscale; 0 = off */
    double progress_interval;     /* minimum seconds between stored progress updates */
    double pipeline_budget;       /* expected seconds queued in a busy process (0 = off) */
    int pool_sched_batch;         /* pool processes run under SCHED_BATCH */
    int pool_fetch;               /* pool processes fetch their own messages */
    double heartbeat_interval;    /* worker-heartbeat period, seconds */
    int without_heartbeat;        /* send no worker-heartbeat */
    char *statedb;                /* revoked ids persisted here (-S) */
    char *status_file;            /* liveness file for `celeriac status` */
    char *config_file;            /* --config */
};

enum config_result { CONFIG_RUN = 0, CONFIG_EXIT_OK = 1, CONFIG_EXIT_USAGE = 64 };

/* Fills c from defaults, the config file (--config or CELERIAC_CONFIG), the
 * environment and argv (after the "worker" word), in rising precedence. On a
 * bad flag, key or value writes one line to stderr and returns
 * CONFIG_EXIT_USAGE. --help prints the generated help and returns CONFIG_EXIT_OK. */
enum config_result config_load(struct config *c, int argc, char **argv);
void config_free(struct config *c);
/* Prints the option table (used by --help). */
void config_print_help(const char *prog);
/* Expands %h (hostname), %n (name part), %d (domain), %% in a node name and
 * adds the "celeriac@" prefix when there is no '@'. Caller frees with free(). */
char *config_expand_hostname(const char *pattern);
/* The broker's layout options from the settings (sep, priority_steps,
 * queue_order_strategy). out may be NULL to validate only. */
int config_broker_options(const struct config *c, struct broker_options *out);
/* Parses a Celery rate limit ("10/s", "100/m", "1000/h", "5"): tasks per
 * second, 0 for none, negative when malformed. */
double config_parse_rate(const char *text);
/* Iterates settings as (name, typed value): *out is caller frees with
 * celeriac_value_free() (null for unset). NULL past the end. */
const char *config_setting_value(const struct config *c, size_t i, struct celeriac_value **out);

#endif
