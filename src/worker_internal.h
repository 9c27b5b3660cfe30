/* worker_internal.h - the worker's state, shared by the files that make up
 * the main process (worker.c, control.c). Nothing outside src/ sees it. */
#ifndef CELERIAC_WORKER_INTERNAL_H
#define CELERIAC_WORKER_INTERNAL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>

#include "backend.h"
#include "broker.h"
#include "config.h"
#include "events.h"
#include "pool.h"
#include "revoked.h"
#include "task_exec.h"
#include "task_message.h"
#include "tasks/builtin.h"

/* Worker lifecycle; changed only through set_state(), which logs transitions. */
enum worker_state {
    W_STARTING,     /* connecting for the first time */
    W_RUNNING,      /* consuming */
    W_RECONNECTING, /* broker link lost; running jobs continue */
    W_WARM_STOP,    /* no new messages; finishing running jobs */
    W_COLD_STOP,    /* children killed; returning messages and exiting */
    W_STOPPED
};

/* One message the worker holds: reserved (waiting or scheduled) or active. */
struct job {
    struct task_message msg; /* owned, decoded */
    char *envelope;          /* owned raw envelope as received */
    size_t len;
    char queue[256];
    int acks_late;           /* ack after the task ran */
    int acked;               /* ack done (or handed to pending_acks) */
    int reserved;            /* recorded in the broker's unacked set */
    uint32_t flags;          /* EXEC_* sent to the child */
    double received;         /* wall clock */
    double time_start;       /* wall clock when a pool process took it, 0 before */
    pid_t worker_pid;        /* pool process running it, 0 before */
    int terminated;          /* revoked with terminate: report REVOKED, not a crash */
    int signum;              /* signal used to terminate */
    double hard_limit;       /* effective hard time limit, seconds (0 = none) */
    double soft_limit;       /* effective soft time limit, seconds (0 = none) */
    int soft_sent;           /* the soft limit signal was sent */
    int timed_out;           /* killed at the hard limit */
    int terminate_pending;   /* revoked with terminate while queued in a process */
    int posted;              /* posted to an idle process, its frame not written yet */
    double estimate;         /* expected run time (s) when queued behind another job */
    int own;                 /* taken by a fetching pool process, which acks it (the
                              * main process keeps the ack owed: pool_owe()) */
    struct job *next;        /* ready/scheduled list link */
};

struct tag_list {
    char **tags; /* owned */
    size_t len, cap;
};

struct worker {
    const struct config *cfg;  /* borrowed */
    celeriac_registry *registry;
    struct broker *broker;     /* owned */
    struct backend *backend;   /* owned; NULL = results disabled */
    struct pool pool;
    struct task_exec exec;
    struct builtin_config builtin;
    struct task_message_limits limits;
    enum worker_state state;
    struct job *ready_head, *ready_tail; /* FIFO waiting for a pool process */
    struct job *scheduled;               /* sorted by eta */
    size_t nready, nscheduled, nactive, unacked; /* unacked: reserved and not acked */
    size_t prefetch_limit;
    struct tag_list pending_acks;        /* acks to send once the broker is back */
    struct tag_list ack_batch;           /* acks of this loop iteration, sent together */
    struct result_batch {                /* results the pool sent back to store, sent together */
        char **ids, **docs;              /* owned */
        size_t *lens;
        pid_t *pids;                     /* the pool process each came from: told
                                          * once stored (pool_results_stored()) */
        size_t len, cap;
        struct tag_list late_acks;       /* acks_late acks of these results: they join
                                          * ack_batch once the results are stored */
        double retry_at;                 /* monotonic: next attempt while the backend is down */
        double failing_since;            /* monotonic: first failed attempt, 0 = none */
        int sent;                        /* 1: results_send() wrote them, reply not read yet;
                                          * negative: the send failed with that code */
        double sent_at;                  /* monotonic, when sent == 1 */
    } results, results_out;              /* collecting; written (or waiting to be retried) */
    int more;                            /* the last batch fetch was full: fetch again soon */
    struct fetch_state {                 /* the batch fetch outstanding on the broker */
        int inflight;                    /* its reply is not read yet */
        size_t asked;                    /* messages it asked for */
        struct tag_list acks;            /* the acks riding with it (owned) */
        int queues_empty;                /* the last batch brought nothing: BRPOP next */
        double since;                    /* monotonic: when the outstanding fetch (batch or
                                          * BRPOP) was sent, 0 = none */
    } fetch;
    int sigpipe[2];
    double next_restore;                 /* monotonic */
    double next_refresh;                 /* monotonic: keep our unacked entries fresh */
    double reconnect_at;                 /* monotonic */
    double backoff;
    double stop_deadline;                /* monotonic; fetch grace in warm stop */
    int returned;                        /* warm stop: reserved jobs handed back */
    unsigned long processed;
    int exit_code;
    unsigned long clock;                 /* Lamport clock (events, pidbox) */
    double started_at;                   /* wall clock at start-up */
    struct events events;
    struct revoked revoked;
    struct strlist queues;               /* queues consumed now (add/cancel_consumer) */
    struct task_total *totals;           /* owned: tasks run per name */
    size_t ntotals;
    char pidbox_queue[300];              /* "<node>.celery.pidbox" */
    double next_status;                  /* monotonic: next status-file write */
    struct task_policy *policies;        /* owned: rate and time limits per task */
    size_t npolicies;
    double next_wake;                    /* monotonic: earliest rate-limit refill needed */
    double cold_deadline;                /* monotonic: soft shutdown ends, 0 = not in one */
    double last_scale;                   /* monotonic: last autoscale change */
    double all_busy_since;               /* monotonic: every pool process busy since (fetching
                                          * processes, autoscale), 0 = not now */
    double some_idle_since;              /* monotonic: a pool process idle since, 0 = none */
    double tick_at;                      /* monotonic: busy fetching pool processes, their
                                          * frames are read together then; 0 = as they come */
    double frames_since;                 /* monotonic: start of the frame count's window */
    unsigned frames;                     /* frames read from pool processes in that window */
    long autoscale_max, autoscale_min;   /* from --autoscale or the autoscale command; 0 = off */
    struct buf pack;                     /* owned: scratch for task_message_pack() in dispatch */
    struct strlist handoff;              /* owned: task names fetching pool processes hand
                                          * to the main process (rate-limited) */
};


/* Per task name: rate limit (token bucket, capacity 1, as Celery's) and
 * time-limit overrides set by the time_limit control command. */
struct task_policy {
    char *name;          /* owned */
    double rate;         /* tasks per second; 0 = unlimited */
    char rate_text[32];  /* as given ("500/m"), for inspect registered */
    double tokens;       /* available, at most 1 */
    double refilled;     /* monotonic time of the last refill */
    double hard, soft;   /* overrides; < 0 = not set */
};

/* Tasks run per name, for `inspect stats`. */
struct task_total {
    char *name;          /* owned */
    unsigned long count;
    double runtime;      /* moving average of the run time reported by the pool, s */
};

/* Handles one pidbox request envelope (control.c). */
void control_handle(struct worker *w, const char *envelope, size_t len);

/* Called by control.c. */
void worker_begin_warm_stop(struct worker *w, const char *why);
/* Revokes ids; with terminate, signals the processes running them. Fills
 * terminated[] with the ids that were running (up to max). */
size_t worker_revoke(struct worker *w, const char *const *ids, size_t n, int terminate,
                     int signum, const char **terminated, size_t max);
int worker_set_queues(struct worker *w, const char *add, const char *remove);
int worker_pool_resize(struct worker *w, long delta);
/* Finds or creates the policy of a task name (NULL when out of memory). */
struct task_policy *worker_policy(struct worker *w, const char *name);
/* The rate limits changed: fetching pool processes learn which task names to
 * hand over. */
void worker_policies_changed(struct worker *w);
/* Lamport clock: on sending, and on receiving a clock value. */
unsigned long worker_clock_forward(struct worker *w);
void worker_clock_adjust(struct worker *w, unsigned long other);
/* The request description used by inspect active/reserved/scheduled. */
celeriac_value *worker_request_info(struct worker *w, struct job *j, int safe);

#endif
