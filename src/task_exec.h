/* task_exec.h - what a pool process does with a job: decode it, run the task
 * function and store its states and result in the backend. */
#ifndef CELERIAC_TASK_EXEC_H
#define CELERIAC_TASK_EXEC_H

#include "backend.h"
#include "broker.h"
#include "celeriac.h"
#include "revoked.h"
#include "task_message.h"

/* Flags the parent sends with each job. */
#define EXEC_TRACK_STARTED 0x1u
#define EXEC_IGNORE_RESULT 0x2u
/* The parent stores a SUCCESS sent back in the DONE frame (pool_outcome.meta)
 * together with the other results of its loop iteration, in one call; the
 * child still stores everything else itself (STARTED, progress, RETRY,
 * FAILURE, and results of chord header parts, whose join follows the store). */
#define EXEC_PARENT_STORES 0x4u
/* Nobody reads the repr of a successful result (the log is above INFO and task
 * events are off): the child does not build it. */
#define EXEC_NO_REPR 0x8u
/* Sent to a busy process, behind its current job: the child checks expiry
 * when its turn comes (a job sent to an idle process was checked by the
 * parent just before). */
#define EXEC_QUEUED 0x10u
/* Sent to an idle process, which the parent counts as started and acked at
 * once, with task events off: nobody waits for its STARTED, so that frame
 * goes with the next one written instead of in a write of its own. */
#define EXEC_QUIET_START 0x20u
/* The payload is a packed message (task_message_pack()): the envelope comes
 * with what the parent decoded of it, and the child decodes only the body. */
#define EXEC_PACKED 0x40u
/* A fetching process's own job: it stores a SUCCESS itself, with its next
 * fetch; DONE says so (pool_outcome.child_stores) and carries a copy for the
 * main process to keep until STORED (see task_exec.c). */
#define EXEC_CHILD_STORES 0x80u
/* A fetching process's own short job, its start watched by nobody: its DONE
 * (with its STARTED) waits for the process's next fetch, kept where the main
 * process reads it if the process dies first (pool_child_keep()). Set by the
 * process itself. */
#define EXEC_DONE_LATER 0x100u

struct task_exec {
    const celeriac_registry *registry; /* borrowed */
    const char *backend_url;           /* borrowed; NULL/empty = results disabled */
    const char *backend_keyprefix;     /* borrowed; the backend's global_keyprefix, NULL = none */
    long result_expires;
    double backend_retry_timeout;
    const char *hostname;              /* borrowed: node name */
    struct task_message_limits limits;
    struct broker_options broker_opts; /* layout for messages the pool publishes */
    double progress_interval;          /* see task_context_set_progress_interval() */
    struct backend *backend;           /* owned by the child, opened after fork */
    const char *broker_url;            /* borrowed: where canvas and retry messages go */
    struct broker *publisher;          /* owned by the child, opened on first publish */
    char reply_to[37];                 /* this child's reply_to for signatures without one */
    /* worker_pool_fetch: the pool process takes its own messages (see
     * task_exec_fetch_main()). Read after fork; later changes come as
     * CONTROL frames. */
    int fetch;
    size_t window;                     /* messages held at most, taken and not started */
    double short_budget;               /* tasks averaging under half of it are short */
    int prompt_start;                  /* every STARTED goes out at once (task events) */
    int acks_late;                     /* task_acks_late */
    int track_started, ignore_result;  /* task_track_started, task_ignore_result */
    double time_limit, soft_time_limit;/* worker-wide limits: STARTED goes out at once */
    char *const *queues;               /* borrowed: the queues consumed at fork */
    size_t nqueues;
    char *const *handoff;              /* borrowed: task names the main process runs
                                        * (rate-limited) at fork */
    size_t nhandoff;
    int paused;                        /* take no messages at start (POOL_CTL_PAUSE) */
    struct revoked *revoked;           /* the worker's revoked ids: the copy forked
                                        * with the process, kept up to date by
                                        * CONTROL frames (never saved from here) */
};

/* pool_child_fn: serves jobs from fd until EOF. */
void task_exec_child_main(int fd, int index, void *ud);
/* Python-style repr of an exception: ValueError('message'). Caller frees. */
char *task_exec_exc_repr(const char *exc_type, const char *message);

#endif
