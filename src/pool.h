/* pool.h - the prefork pool: child processes, each running one task at a
 * time, talking to the parent over a socketpair with length-prefixed frames. */
#ifndef CELERIAC_POOL_H
#define CELERIAC_POOL_H

#include <stddef.h>
#include <stdint.h>
#include <sys/types.h>
#include <sys/uio.h>

#include "util.h"

/* Jobs a busy process may hold behind the one it runs (short tasks only;
 * see dispatch() in worker.c). */
#define POOL_QUEUE_MAX 16
/* Messages a pool process that fetches for itself (struct pool.fetching)
 * holds at most, taken but not started; the parent may queue RUN jobs
 * behind them up to POOL_QUEUE_MAX in all. */
#define POOL_FETCH_MAX 8

/* Frame types. */
enum pool_frame {
    POOL_RUN = 1,     /* parent -> child: flags, envelope */
    POOL_STARTED = 2, /* child -> parent: task began (pid known) */
    POOL_DONE = 3,    /* child -> parent: outcome (u8 status, f64 runtime,
                       * u32 detail length, detail, meta) */
    POOL_SKIPPED = 4, /* child -> parent: the job did not run (u8 enum pool_skip) */
    /* Pool processes that fetch for themselves (struct pool.fetching): */
    POOL_RECEIVED = 5, /* child -> parent: it took a message it will run (u32 sequence
                        * number, u8 tag length, tag, u8 queue length, queue, the
                        * packed message: task_message_pack_headers() then the
                        * envelope); it joins the child's run order */
    POOL_ACCEPTED = 6, /* child -> parent: a RUN job (u32 sequence number) joined the
                        * child's run order, behind what it took before */
    POOL_HANDOFF = 7,  /* child -> parent: a message it took and will not run (ETA,
                        * rate limit, anything unusual): the parent takes it over
                        * (payload as RECEIVED, with the envelope alone, sequence
                        * number unused) */
    POOL_ACKED = 8,    /* child -> parent: every ack it owed for jobs it reported
                        * (STARTED, or DONE with acks_late) is done */
    POOL_CONTROL = 9,  /* parent -> child: u8 enum pool_control, NUL-separated names */
    POOL_STORED = 10   /* child -> parent: u8 1 when the results of every DONE before it
                        * that said child_stores are stored, 0 when they could not be
                        * (the parent then stores its copies) */
};

enum pool_control {
    POOL_CTL_QUEUES = 1,  /* consume from these queues */
    POOL_CTL_HANDOFF = 2, /* hand off messages of these task names (rate limits) */
    POOL_CTL_REVOKE = 3,  /* these task ids are revoked: never run them */
    POOL_CTL_PAUSE = 4    /* "1": take no new messages (results cannot be stored); "0": go on */
};

/* Why a child skipped a job (the status of a SKIPPED outcome). */
enum pool_skip {
    POOL_SKIP_CANCELLED = 0, /* the parent cancelled it (pool_cancel) */
    POOL_SKIP_EXPIRED = 1,   /* its expiry time passed while it waited */
    POOL_SKIP_RETURNED = 2   /* a fetching child stopped before running a message it
                              * took: the parent returns it to its queue */
};

/* Every RUN frame carries a sequence number; its slot in memory shared with
 * the child (seq % POOL_SLOTS) says whether the job may still start. The
 * child claims it (QUEUED -> RUNNING) before it runs it; the parent cancels
 * a job still queued there (QUEUED -> CANCELLED). One atomic compare-and-swap
 * decides which came first. POOL_SLOTS exceeds the jobs a child can hold. */
#define POOL_SLOTS 32
/* Sequence numbers a fetching child gives the messages it takes carry this
 * bit; their slots are a second set of POOL_SLOTS, after the parent's. */
#define POOL_SEQ_CHILD 0x20000000u

/* Outcome of one task, as the child reports it. */
enum pool_status { POOL_SUCCESS = 0, POOL_FAILURE = 1, POOL_IGNORED = 2, POOL_RETRY = 3 };

struct pool_outcome {
    int status;        /* enum pool_status */
    double runtime;    /* seconds the task function ran */
    char *detail;      /* owned: result repr (success) or exception repr (failure) */
    char *meta;        /* owned: the encoded result meta for the parent to store
                        * (batched with others, see task_exec.h); NULL when the
                        * child stored it or nothing is stored. RECEIVED and
                        * HANDOFF: the payload (see pool_delivery_parse()) */
    size_t meta_len;
    uint32_t seq;      /* RECEIVED, ACCEPTED: the job's sequence number */
    int child_stores;  /* DONE: a fetching child stores meta itself with its next
                        * fetch and says STORED; meta is the parent's copy in case
                        * it dies first (EXEC_CHILD_STORES) */
};

/* Results a fetching child stores itself, as the parent keeps them until the
 * child says STORED. */
struct pool_results {
    char **ids, **docs; /* owned */
    size_t *lens;
    size_t n, cap;
};

/* The function a child runs: reads frames from fd until EOF. It must return
 * only to end the child; the pool then ends the process with _exit(). */
typedef void (*pool_child_fn)(int fd, int index, void *ud);

struct pool_child {
    pid_t pid;         /* 0 when the slot is empty */
    int fd;            /* parent's end of the socketpair, -1 when empty */
    int index;         /* 1-based, as in ForkPoolWorker-<index> */
    int busy;          /* a job was sent and no DONE came back yet */
    int started;       /* the child said STARTED for the current job */
    void *job;         /* borrowed: the worker's job while busy (the head of
                        * the child's queue: running, or next to run) */
    void *queued[POOL_QUEUE_MAX]; /* borrowed: jobs sent after job, in order */
    size_t nqueued;
    struct buf in;     /* owned: bytes received; those before in_off are read */
    size_t in_off;
    struct buf out;    /* owned: RUN frames posted, not yet written */
    unsigned tasks_run;/* jobs completed by this process */
    int retiring;      /* exits after its current job */
    int replace;       /* with retiring: a fresh process takes the slot (recycling) */
    uint32_t seq_next; /* sequence number of the next RUN frame */
    uint32_t job_seq;  /* of job */
    uint32_t queued_seq[POOL_QUEUE_MAX]; /* of queued[] */
    void *slots;       /* owned: POOL_SLOTS words shared with the child (mmap) */
    /* A fetching child (struct pool.fetching): */
    int fetching;      /* copy of pool.fetching when it was spawned */
    void *posted[POOL_QUEUE_MAX]; /* borrowed: RUN jobs written, not yet ACCEPTED */
    uint32_t posted_seq[POOL_QUEUE_MAX];
    size_t nposted;
    char **owed;       /* owned: delivery tags whose ack the child owes (pool_owe()) */
    size_t nowed, owed_cap;
    char reported[32][128]; /* the last delivery tags it reported (RECEIVED, HANDOFF), a ring */
    unsigned nreported;
    struct pool_results unstored; /* DONE with child_stores, not yet STORED */
    void *journal;     /* owned: a fetching child's frames not yet written (mmap,
                        * see pool_child_keep()) */
    unsigned rx;       /* bytes read from fd since the process started (mod 2^32) */
};

struct pool {
    struct pool_child *children; /* owned array of cap slots */
    size_t n;                    /* slots in use (concurrency) */
    pool_child_fn fn;
    void *ud;                    /* borrowed until pool_free */
    int next_index;
    int sched_batch;             /* children run under SCHED_BATCH (set before pool_start) */
    int fetching;                /* children fetch for themselves: RUN jobs join a
                                  * child's run order when it says ACCEPTED */
    int err;
    char errstr[256];
};

/* Forks n children. Returns 0 or negative with errstr set. */
int pool_start(struct pool *p, size_t n, pool_child_fn fn, void *ud);
/* Replaces the process in slot i (after it died). */
int pool_respawn(struct pool *p, size_t i);
/* Adds n processes (reusing empty slots). Slot pointers may move. */
int pool_grow(struct pool *p, size_t n);
/* Retires up to n processes: idle ones exit now, busy ones after the jobs
 * already sent to them.
 * Returns how many were retired. */
size_t pool_shrink(struct pool *p, size_t n);
/* Processes running and not retiring. */
size_t pool_size(const struct pool *p);
/* An idle child, or NULL. */
struct pool_child *pool_idle(struct pool *p);
/* Posts a job: it becomes the child's current job when the child is idle,
 * otherwise it is queued behind (the caller checks nqueued < POOL_QUEUE_MAX).
 * The frame waits in c->out until pool_flush(), so the jobs of one dispatch
 * reach a child in one write (and wake it once). */
int pool_post(struct pool_child *c, uint32_t flags, const char *envelope, size_t len, void *job);
/* pool_post() of a payload in pieces (the frame carries them back to back). */
int pool_postv(struct pool_child *c, uint32_t flags, const struct iovec *iov, size_t niov,
               void *job);
/* Writes what pool_post() buffered. CELERIAC_ECONN when the child is gone
 * (its posted jobs stay recorded as its own: see child_lost in worker.c). */
int pool_flush(struct pool_child *c);
/* pool_post() and pool_flush(). */
int pool_send(struct pool_child *c, uint32_t flags, const char *envelope, size_t len, void *job);
/* Cancels job, sent to c and not started there: 1 when the child will skip
 * it (it answers SKIPPED in its turn instead of STARTED; also when it was
 * cancelled before), 0 when it started already or is not held by c. */
int pool_cancel(struct pool_child *c, const void *job);
/* After a DONE or SKIPPED: the next queued job (if any) becomes the current
 * one. Returns the job that was current. */
void *pool_advance(struct pool_child *c);
/* Fetching children: a RECEIVED job joins c's run order (0, or CELERIAC_EINVAL
 * when c holds too many); an ACCEPTED one moves there from the posted list
 * (returns it, or NULL when seq is not posted). */
int pool_received(struct pool_child *c, uint32_t seq, void *job);
void *pool_accepted(struct pool_child *c, uint32_t seq);
/* The posted (not yet ACCEPTED) job at position k, or NULL. */
void *pool_posted_at(const struct pool_child *c, size_t k);
/* Drops the posted list (the child is gone); returns how many there were
 * (they stay in posted[] for the caller to take back). */
size_t pool_posted_drop(struct pool_child *c);
/* The ack of tag is owed by the fetching child c: kept until pool_owed_clear()
 * (ACKED), so that the parent sends it if c dies first. */
void pool_owe(struct pool_child *c, const char *tag);
void pool_owed_clear(struct pool_child *c);
/* Appends a result (takes doc; copies id). Returns 0, or CELERIAC_ENOMEM
 * (doc is then still the caller's). pool_results_clear() frees them all. */
int pool_results_push(struct pool_results *r, const char *id, char *doc, size_t len);
void pool_results_clear(struct pool_results *r);
/* Sends a CONTROL frame (names NUL-separated, len bytes in all). */
int pool_control(struct pool_child *c, int kind, const char *names, size_t len);
/* RECEIVED / HANDOFF payload: builds one into out (head_len bytes of head,
 * then the envelope, as one: RECEIVED's head is the header pack of
 * task_message_pack_headers(), HANDOFF has none), or parses one (pointers
 * into payload; tag and queue not NUL-terminated, their lengths returned;
 * *envelope is head and envelope together). */
int pool_delivery_build(struct buf *out, int type, uint32_t seq, const char *tag,
                        const char *queue, const char *head, size_t head_len,
                        const char *envelope, size_t len);
int pool_delivery_parse(const char *payload, size_t len, const char **tag, size_t *tag_len,
                        const char **queue, size_t *queue_len, const char **envelope,
                        size_t *env_len);
/* Reads what is available from c->fd. Returns 1 with *type (and *out for DONE;
 * out->status alone for SKIPPED)
 * when a frame is complete, 0 when more bytes are needed, CELERIAC_ECONN on
 * EOF/error (the child is gone). Caller frees out->detail and out->meta. */
int pool_read(struct pool_child *c, int *type, struct pool_outcome *out);
/* After a fetching child died and everything it wrote was read: appends to
 * c->in the frames it kept (pool_child_keep()) and never wrote, for
 * pool_read() to return. Returns how many bytes (0: none). */
size_t pool_replay(struct pool_child *c);
/* Finds the slot of a pid; NULL if none. */
struct pool_child *pool_find_pid(struct pool *p, pid_t pid);
/* Marks a slot empty after its process died (closes fd). */
void pool_forget(struct pool_child *c);
/* Closes all parent ends so children see EOF and exit (warm stop). */
void pool_close(struct pool *p);
/* Sends sig to every child. */
void pool_kill(struct pool *p, int sig);
void pool_free(struct pool *p);

/* Child side: frames are read through a buffer (several jobs may arrive in
 * one read) and written through another (a DONE can wait for the next
 * STARTED, so one write carries both). */
struct pool_link {
    int fd;
    struct buf in;  /* owned: bytes read, not yet consumed */
    size_t in_off;  /* consumed prefix of in */
    struct buf out; /* owned: frames not yet written */
    int duplex;     /* a fetching child: while a write waits for room, what the
                     * parent sends is read into in (the parent may be waiting
                     * to write to us too, with a large RUN frame) */
    unsigned mail_seen; /* the parent's count of writes when last read (pool.c) */
    int readable;       /* poll() said the link has bytes: the next look for frames
                         * reads it whatever the parent's count says */
};
/* A fetching child: the next frame from the parent (RUN or CONTROL) without
 * claiming it. block: wait for one. Returns 1 with *type set (RUN: flags,
 * seq, payload; CONTROL: flags = enum pool_control, payload = names), 0 when
 * none is buffered (block 0), negative at EOF/error. payload points into
 * l->in and stays valid until the next call. */
int pool_child_next(struct pool_link *l, int block, int *type, uint32_t *flags, uint32_t *seq,
                    const char **payload, size_t *len);
/* A fetching child: marks a job it took as waiting (before its RECEIVED is
 * written), and claims a job before running it: 1 when it may run, 0 when
 * the parent cancelled it. */
void pool_child_queue_own(uint32_t seq);
int pool_child_claim(uint32_t seq);
/* Blocks for the next RUN frame the parent did not cancel, and claims it
 * (a cancelled one is answered with SKIPPED). envelope points into link->in
 * and stays valid until the next call. Returns 0, or negative at EOF/error. */
int pool_child_read(struct pool_link *l, uint32_t *flags, const char **envelope, size_t *len);
/* 1 when a whole frame is already buffered or readable without blocking. */
int pool_child_pending(struct pool_link *l);
/* Results a child hands over in DONE (meta) are stored by the parent; the
 * child keeps its copy until the parent counts them stored here, so a child
 * that outlives the parent stores what the parent had not (in DONE order:
 * the parent counts them in the order it received them). Parent side: */
void pool_results_stored(struct pool_child *c, unsigned n);
/* Child side: the count so far (wraps at 2^32); async-signal-safe. */
unsigned pool_child_results_stored(void);
/* Buffers a frame (out: the outcome of DONE, the enum pool_skip status of
 * SKIPPED, the seq of ACCEPTED, NULL otherwise); flush writes everything
 * buffered. RECEIVED and HANDOFF frames: pool_delivery_build() into l->out. */
int pool_child_write(struct pool_link *l, int type, const struct pool_outcome *out);
int pool_child_flush(struct pool_link *l);
/* A fetching child: copies the frames buffered in l->out to memory its parent
 * reads if this process dies before it writes them (pool_replay()). Returns 1
 * when all of them are there, so they may wait for a later flush; 0 when
 * they do not fit (or this is not a fetching child): flush them now. */
int pool_child_keep(struct pool_link *l);
void pool_link_free(struct pool_link *l);

#endif
