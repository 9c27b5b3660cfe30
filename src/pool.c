/* pool.c - forks and feeds pool processes and frames their messages; it does
 * not know what a task is. */
#include "pool.h"

#include <dirent.h>
#include <poll.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <sched.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/mman.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <unistd.h>

#include "celeriac.h"
#include "log.h"

#define MAX_FRAME (512u * 1024 * 1024)
/* RUN frame: u32 length, u8 type, u32 flags, u32 sequence number. */
#define RUN_HEADER 13

/* A job slot (see POOL_SLOTS): the job's sequence number and its state. The
 * parent and a child change it only with atomic operations, so the shared
 * word must be lock-free (a lock would live in one process only). */
_Static_assert(ATOMIC_INT_LOCK_FREE == 2, "pool job slots need lock-free atomic ints");
typedef _Atomic unsigned int pool_slot;
enum { SLOT_QUEUED = 1, SLOT_RUNNING = 2, SLOT_CANCELLED = 3 };
#define SEQ_MASK 0x3fffffffu
/* A slot is reused POOL_SLOTS frames later: by then its job was answered. */
_Static_assert(POOL_SLOTS > POOL_QUEUE_MAX + 1, "a child holds up to 1 + POOL_QUEUE_MAX jobs");
/* After the slots, one more shared word: how many of the results the child
 * handed over (DONE with meta) the parent has stored (see
 * pool_results_stored()). */
#define STORED_WORD (2 * POOL_SLOTS)
/* And one the parent moves on after every write to the child: a child that
 * looks for frames without waiting (pool_child_next(), pool_child_pending())
 * reads its link only when it moved, instead of a read that finds nothing
 * after every task. */
#define MAIL_WORD (2 * POOL_SLOTS + 1)
#define SLOTS_SIZE ((2 * POOL_SLOTS + 2) * sizeof(pool_slot))
_Static_assert(POOL_FETCH_MAX < POOL_QUEUE_MAX, "a fetching child also takes RUN jobs");

/* The parent's sequence numbers use the slots [0, POOL_SLOTS), a fetching
 * child's own (POOL_SEQ_CHILD set) the next POOL_SLOTS. */
static size_t slot_index(uint32_t seq)
{
    return (seq & POOL_SEQ_CHILD ? POOL_SLOTS : 0) + seq % POOL_SLOTS;
}

static unsigned slot_word(uint32_t seq, unsigned state)
{
    return (seq & SEQ_MASK) << 2 | state;
}

/* In a child: its own slots (set by spawn() before the child function runs). */
static pool_slot *child_slots;

/* A fetching child's frames that wait in its link's out buffer, copied where
 * the parent reads them if the child dies first (pool_child_keep()). Offsets
 * count the bytes the child wrote to its link since it started (mod 2^32):
 * data[0, len) are the bytes from offset base on. The child appends whole
 * frames, then publishes len; after a write it sets len to 0 first, then
 * moves base past what it wrote, so a death between the two stores leaves
 * nothing to replay rather than bytes already read. */
#define JOURNAL_CAP (256u * 1024)
struct pool_journal {
    _Atomic unsigned base;
    _Atomic unsigned len;
    char data[JOURNAL_CAP];
};
static struct pool_journal *child_journal;

static int write_all(int fd, const void *p, size_t n, pool_slot *mail)
{
    const char *s = p;
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0) {
            if (errno == EINTR)
                continue;
            if (errno == EAGAIN) {
                /* Parent end is non-blocking: wait for room. */
                fd_set wf;
                FD_ZERO(&wf);
                FD_SET(fd, &wf);
                select(fd + 1, NULL, &wf, NULL, NULL);
                continue;
            }
            return CELERIAC_EIO;
        }
        s += w;
        n -= (size_t)w;
        if (mail)
            atomic_fetch_add_explicit(mail, 1u, memory_order_release);
    }
    return 0;
}

/* In a new child: closes every socket it inherited but keep. The parent's
 * Redis links are not the child's, and a link the parent closes must really
 * close: one left open here would keep, say, a BRPOP waiting on Redis's side,
 * to take a message that nobody reads. */
static void close_inherited_sockets(int keep)
{
    for (;;) {
        int fds[64];
        size_t n = 0;
        DIR *d = opendir("/proc/self/fd");
        if (!d)
            return;
        struct dirent *e;
        while ((e = readdir(d)) != NULL && n < sizeof fds / sizeof fds[0]) {
            char *end;
            long fd = strtol(e->d_name, &end, 10);
            struct stat st;
            if (*end != '\0' || end == e->d_name || fd <= 2 || fd > INT_MAX || fd == keep ||
                fd == dirfd(d))
                continue;
            if (fstat((int)fd, &st) == 0 && S_ISSOCK(st.st_mode))
                fds[n++] = (int)fd;
        }
        closedir(d);
        for (size_t i = 0; i < n; i++)
            close(fds[i]);
        if (n < sizeof fds / sizeof fds[0])
            return;
    }
}

static int spawn(struct pool *p, struct pool_child *c)
{
    if (!c->slots) {
        void *m = mmap(NULL, SLOTS_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(p->errstr, sizeof p->errstr, "mmap: %s", strerror(errno));
            return p->err = CELERIAC_ENOMEM;
        }
        c->slots = m;
    }
    for (size_t i = 0; i <= MAIL_WORD; i++) /* a fresh process: nothing sent yet */
        atomic_store(&((pool_slot *)c->slots)[i], 0u);
    c->seq_next = 0;
    if (p->fetching && !c->journal) {
        void *m = mmap(NULL, sizeof(struct pool_journal), PROT_READ | PROT_WRITE,
                       MAP_SHARED | MAP_ANONYMOUS, -1, 0);
        if (m == MAP_FAILED) {
            snprintf(p->errstr, sizeof p->errstr, "mmap: %s", strerror(errno));
            return p->err = CELERIAC_ENOMEM;
        }
        c->journal = m;
    }
    if (c->journal) {
        struct pool_journal *j = c->journal;
        atomic_store(&j->base, 0u);
        atomic_store(&j->len, 0u);
    }
    c->rx = 0;
    int sv[2];
    if (socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, sv) < 0) {
        snprintf(p->errstr, sizeof p->errstr, "socketpair: %s", strerror(errno));
        return p->err = CELERIAC_EIO;
    }
    int index = ++p->next_index;
    pid_t parent = getpid();
    pid_t pid = fork();
    if (pid < 0) {
        snprintf(p->errstr, sizeof p->errstr, "fork: %s", strerror(errno));
        close(sv[0]);
        close(sv[1]);
        return p->err = CELERIAC_EIO;
    }
    if (pid == 0) {
        /* Child: die with the parent; drop the parent's ends of all pipes. */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(1);
        signal(SIGTERM, SIG_DFL);
        signal(SIGINT, SIG_IGN); /* Ctrl-C goes to the parent, which stops us. */
        signal(SIGQUIT, SIG_DFL);
        signal(SIGCHLD, SIG_DFL);
        signal(SIGPIPE, SIG_IGN);
        sigset_t none;
        sigemptyset(&none);
        sigprocmask(SIG_SETMASK, &none, NULL);
        /* A woken SCHED_BATCH process does not preempt the one that woke it:
         * the main process finishes handing out work (and reading the
         * broker) before a pool process takes its CPU. */
        struct sched_param sp = {0};
        if (p->sched_batch && sched_setscheduler(0, SCHED_BATCH, &sp) < 0)
            log_msg(LOG_DEBUG, "SCHED_BATCH: %s", strerror(errno));
        for (size_t i = 0; i < p->n; i++)
            if (p->children[i].fd >= 0)
                close(p->children[i].fd);
        close(sv[0]);
        close_inherited_sockets(sv[1]);
        char name[32];
        snprintf(name, sizeof name, "ForkPoolWorker-%d", index);
        log_set_process(name);
        child_slots = c->slots;
        child_journal = p->fetching ? c->journal : NULL;
        p->fn(sv[1], index, p->ud);
        _exit(0);
    }
    close(sv[1]);
    fcntl(sv[0], F_SETFL, fcntl(sv[0], F_GETFL) | O_NONBLOCK);
    memset(&c->in, 0, sizeof c->in);
    c->in_off = 0;
    c->pid = pid;
    c->fd = sv[0];
    c->index = index;
    c->busy = 0;
    c->started = 0;
    c->job = NULL;
    c->tasks_run = 0;
    c->retiring = 0;
    c->replace = 0;
    c->nposted = 0;
    c->nreported = 0;
    c->fetching = p->fetching;
    pool_owed_clear(c);
    return 0;
}

int pool_start(struct pool *p, size_t n, pool_child_fn fn, void *ud)
{
    p->children = calloc(n, sizeof *p->children);
    if (!p->children)
        return CELERIAC_ENOMEM;
    p->fn = fn;
    p->ud = ud;
    p->n = n;
    for (size_t i = 0; i < n; i++)
        p->children[i].fd = -1;
    for (size_t i = 0; i < n; i++) {
        int rc = spawn(p, &p->children[i]);
        if (rc < 0)
            return rc;
    }
    return 0;
}

int pool_respawn(struct pool *p, size_t i)
{
    return spawn(p, &p->children[i]);
}

struct pool_child *pool_idle(struct pool *p)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->children[i].pid && !p->children[i].busy && !p->children[i].retiring &&
            p->children[i].nposted == 0)
            return &p->children[i];
    return NULL;
}

int pool_grow(struct pool *p, size_t n)
{
    while (n > 0) {
        size_t slot = p->n;
        for (size_t i = 0; i < p->n; i++)
            if (p->children[i].pid == 0 && p->children[i].fd < 0) {
                slot = i;
                break;
            }
        if (slot == p->n) {
            struct pool_child *c = realloc(p->children, (p->n + 1) * sizeof *c);
            if (!c)
                return CELERIAC_ENOMEM;
            p->children = c;
            memset(&c[p->n], 0, sizeof *c);
            c[p->n].fd = -1;
            p->n++;
        }
        int rc = spawn(p, &p->children[slot]);
        if (rc < 0)
            return rc;
        n--;
    }
    return 0;
}

size_t pool_shrink(struct pool *p, size_t n)
{
    size_t done = 0;
    /* Idle processes first, then busy ones: end of input now, so a busy one
     * reads the jobs already sent to it, answers them and exits. */
    for (int pass = 0; pass < 2 && done < n; pass++)
        for (size_t i = 0; i < p->n && done < n; i++) {
            struct pool_child *c = &p->children[i];
            if (!c->pid || c->retiring || (pass == 0 && c->busy))
                continue;
            c->retiring = 1;
            if (c->fd >= 0)
                shutdown(c->fd, SHUT_WR);
            done++;
        }
    return done;
}

size_t pool_size(const struct pool *p)
{
    size_t n = 0;
    for (size_t i = 0; i < p->n; i++)
        if (p->children[i].pid && !p->children[i].retiring)
            n++;
    return n;
}

int pool_post(struct pool_child *c, uint32_t flags, const char *envelope, size_t len, void *job)
{
    struct iovec iov = {(void *)envelope, len};
    return pool_postv(c, flags, &iov, 1, job);
}

int pool_postv(struct pool_child *c, uint32_t flags, const struct iovec *iov, size_t niov,
               void *job)
{
    size_t len = 0;
    for (size_t i = 0; i < niov; i++) {
        if (iov[i].iov_len > MAX_FRAME)
            return CELERIAC_ETOOBIG;
        len += iov[i].iov_len;
    }
    if (len > MAX_FRAME - RUN_HEADER)
        return CELERIAC_ETOOBIG;
    if (c->busy && c->nqueued >= POOL_QUEUE_MAX)
        return CELERIAC_EINVAL;
    if (c->fd < 0)
        return CELERIAC_ECONN;
    if (c->nposted >= POOL_QUEUE_MAX)
        return CELERIAC_EINVAL;
    uint32_t seq = c->seq_next & (POOL_SEQ_CHILD - 1);
    unsigned char hdr[RUN_HEADER];
    uint32_t total = (uint32_t)(len + RUN_HEADER - 4);
    memcpy(hdr, &total, 4);
    hdr[4] = POOL_RUN;
    memcpy(hdr + 5, &flags, 4);
    memcpy(hdr + 9, &seq, 4);
    size_t was = c->out.len;
    int rc = buf_append(&c->out, hdr, sizeof hdr);
    for (size_t i = 0; i < niov && rc == 0; i++)
        rc = buf_append(&c->out, iov[i].iov_base, iov[i].iov_len);
    if (rc < 0) {
        c->out.len = was;
        return CELERIAC_ENOMEM;
    }
    c->seq_next++;
    /* The child may claim the job the moment the frame is written. */
    atomic_store(&((pool_slot *)c->slots)[slot_index(seq)], slot_word(seq, SLOT_QUEUED));
    if (c->fetching) {
        /* It joins the run order when the child says ACCEPTED. */
        c->posted_seq[c->nposted] = seq;
        c->posted[c->nposted++] = job;
        return 0;
    }
    if (c->busy) {
        c->queued_seq[c->nqueued] = seq;
        c->queued[c->nqueued++] = job;
        return 0;
    }
    c->busy = 1;
    c->started = 0;
    c->job = job;
    c->job_seq = seq;
    return 0;
}

int pool_flush(struct pool_child *c)
{
    if (c->out.len == 0)
        return 0;
    int rc = c->fd >= 0 ? write_all(c->fd, c->out.p, c->out.len,
                                    c->slots ? &((pool_slot *)c->slots)[MAIL_WORD] : NULL)
                        : CELERIAC_EIO;
    c->out.len = 0;
    return rc < 0 ? CELERIAC_ECONN : 0;
}

int pool_send(struct pool_child *c, uint32_t flags, const char *envelope, size_t len, void *job)
{
    int rc = pool_post(c, flags, envelope, len, job);
    return rc < 0 ? rc : pool_flush(c);
}

int pool_cancel(struct pool_child *c, const void *job)
{
    uint32_t seq;
    if (!job || !c->slots)
        return 0;
    if (c->job == job && !c->started) {
        seq = c->job_seq;
    } else {
        size_t k = 0, p = 0;
        while (k < c->nqueued && c->queued[k] != job)
            k++;
        while (p < c->nposted && c->posted[p] != job)
            p++;
        if (k < c->nqueued)
            seq = c->queued_seq[k];
        else if (p < c->nposted)
            seq = c->posted_seq[p];
        else
            return 0;
    }
    unsigned expect = slot_word(seq, SLOT_QUEUED);
    if (atomic_compare_exchange_strong(&((pool_slot *)c->slots)[slot_index(seq)], &expect,
                                       slot_word(seq, SLOT_CANCELLED)))
        return 1;
    return expect == slot_word(seq, SLOT_CANCELLED); /* cancelled before */
}

void *pool_advance(struct pool_child *c)
{
    void *j = c->job;
    c->started = 0;
    if (c->nqueued == 0) {
        c->job = NULL;
        c->busy = 0;
        return j;
    }
    c->job = c->queued[0];
    c->job_seq = c->queued_seq[0];
    memmove(c->queued, c->queued + 1, (c->nqueued - 1) * sizeof c->queued[0]);
    memmove(c->queued_seq, c->queued_seq + 1, (c->nqueued - 1) * sizeof c->queued_seq[0]);
    c->nqueued--;
    return j;
}

/* DONE payload: u8 status, f64 runtime, u32 detail length, detail, meta. */
int pool_read(struct pool_child *c, int *type, struct pool_outcome *out)
{
    int drained = 0; /* a read returned less than it asked: nothing more now */
    for (;;) {
        if (c->in.len - c->in_off >= 4) {
            uint32_t total;
            memcpy(&total, c->in.p + c->in_off, 4);
            if (total == 0 || total > MAX_FRAME)
                return CELERIAC_EPROTO;
            if (c->in.len - c->in_off >= 4 + (size_t)total) {
                const unsigned char *f = (const unsigned char *)c->in.p + c->in_off + 4;
                *type = f[0];
                if (*type == POOL_SKIPPED)
                    out->status = total >= 2 ? f[1] : POOL_SKIP_CANCELLED;
                if (*type == POOL_STORED)
                    out->status = total >= 2 ? f[1] : 0;
                if (*type == POOL_ACCEPTED) {
                    if (total < 5)
                        return CELERIAC_EPROTO;
                    memcpy(&out->seq, f + 1, 4);
                }
                if (*type == POOL_RECEIVED || *type == POOL_HANDOFF) {
                    if (total < 5)
                        return CELERIAC_EPROTO;
                    memcpy(&out->seq, f + 1, 4);
                    out->meta_len = total - 5;
                    out->meta = malloc(out->meta_len + 1);
                    if (!out->meta)
                        return CELERIAC_ENOMEM;
                    memcpy(out->meta, f + 5, out->meta_len);
                    out->meta[out->meta_len] = 0;
                }
                if (*type == POOL_DONE) {
                    uint32_t dlen;
                    if (total < 14)
                        return CELERIAC_EPROTO;
                    out->status = f[1] & 0x7f;
                    out->child_stores = f[1] >> 7;
                    memcpy(&out->runtime, f + 2, 8);
                    memcpy(&dlen, f + 10, 4);
                    if (dlen > total - 14)
                        return CELERIAC_EPROTO;
                    out->detail = strndup((const char *)f + 14, dlen);
                    out->meta_len = total - 14 - dlen;
                    out->meta = NULL;
                    if (out->meta_len) {
                        out->meta = malloc(out->meta_len + 1);
                        if (!out->meta)
                            return CELERIAC_ENOMEM;
                        memcpy(out->meta, f + 14 + dlen, out->meta_len);
                        out->meta[out->meta_len] = 0;
                    }
                }
                /* Consumed in place: what follows moves once, when all
                 * whole frames are read (a tick reads many at once). */
                c->in_off += 4 + (size_t)total;
                if (c->in_off == c->in.len)
                    c->in.len = c->in_off = 0;
                return 1;
            }
        }
        if (drained)
            return 0; /* poll() says when more comes */
        if (c->in_off > 0) {
            memmove(c->in.p, c->in.p + c->in_off, c->in.len - c->in_off);
            c->in.len -= c->in_off;
            c->in_off = 0;
        }
        char tmp[65536];
        ssize_t r = read(c->fd, tmp, sizeof tmp);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0 && errno == EAGAIN)
            return 0;
        if (r <= 0)
            return CELERIAC_ECONN;
        if (buf_append(&c->in, tmp, (size_t)r) < 0)
            return CELERIAC_ENOMEM;
        c->rx += (unsigned)r;
        drained = (size_t)r < sizeof tmp;
    }
}

struct pool_child *pool_find_pid(struct pool *p, pid_t pid)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->children[i].pid == pid)
            return &p->children[i];
    return NULL;
}

void pool_forget(struct pool_child *c)
{
    if (c->fd >= 0)
        close(c->fd);
    c->fd = -1;
    c->pid = 0;
    c->busy = 0;
    c->job = NULL;
    c->nqueued = 0;
    c->nposted = 0;
    buf_free(&c->in);
    c->in_off = 0;
    buf_free(&c->out);
}

void pool_close(struct pool *p)
{
    /* A fetching child stops taking messages at EOF, busy or not. */
    for (size_t i = 0; i < p->n; i++)
        if (p->children[i].fd >= 0 && (!p->children[i].busy || p->fetching))
            shutdown(p->children[i].fd, SHUT_WR);
}

int pool_received(struct pool_child *c, uint32_t seq, void *job)
{
    if (!c->busy) {
        c->busy = 1;
        c->started = 0;
        c->job = job;
        c->job_seq = seq;
        return 0;
    }
    if (c->nqueued >= POOL_QUEUE_MAX)
        return CELERIAC_EINVAL;
    c->queued_seq[c->nqueued] = seq;
    c->queued[c->nqueued++] = job;
    return 0;
}

void *pool_accepted(struct pool_child *c, uint32_t seq)
{
    size_t k = 0;
    while (k < c->nposted && c->posted_seq[k] != seq)
        k++;
    if (k == c->nposted)
        return NULL;
    void *job = c->posted[k];
    memmove(c->posted + k, c->posted + k + 1, (c->nposted - k - 1) * sizeof c->posted[0]);
    memmove(c->posted_seq + k, c->posted_seq + k + 1,
            (c->nposted - k - 1) * sizeof c->posted_seq[0]);
    c->nposted--;
    if (pool_received(c, seq, job) < 0)
        return NULL; /* the child holds more than it may: a protocol error */
    return job;
}

void *pool_posted_at(const struct pool_child *c, size_t k)
{
    return k < c->nposted ? c->posted[k] : NULL;
}

size_t pool_posted_drop(struct pool_child *c)
{
    size_t n = c->nposted;
    c->nposted = 0;
    return n;
}

void pool_owe(struct pool_child *c, const char *tag)
{
    if (c->nowed == c->owed_cap) {
        size_t cap = c->owed_cap ? c->owed_cap * 2 : 16;
        char **o = realloc(c->owed, cap * sizeof *o);
        if (!o)
            return;
        c->owed = o;
        c->owed_cap = cap;
    }
    if ((c->owed[c->nowed] = strdup(tag)) != NULL)
        c->nowed++;
}

void pool_owed_clear(struct pool_child *c)
{
    for (size_t i = 0; i < c->nowed; i++)
        free(c->owed[i]);
    c->nowed = 0;
}

int pool_results_push(struct pool_results *r, const char *id, char *doc, size_t len)
{
    if (r->n == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 16;
        char **ids = realloc(r->ids, cap * sizeof *ids);
        if (ids)
            r->ids = ids;
        char **docs = realloc(r->docs, cap * sizeof *docs);
        if (docs)
            r->docs = docs;
        size_t *lens = realloc(r->lens, cap * sizeof *lens);
        if (lens)
            r->lens = lens;
        if (!ids || !docs || !lens)
            return CELERIAC_ENOMEM;
        r->cap = cap;
    }
    if ((r->ids[r->n] = strdup(id)) == NULL)
        return CELERIAC_ENOMEM;
    r->docs[r->n] = doc;
    r->lens[r->n++] = len;
    return 0;
}

void pool_results_clear(struct pool_results *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->ids[i]);
        free(r->docs[i]);
    }
    r->n = 0;
}

int pool_control(struct pool_child *c, int kind, const char *names, size_t len)
{
    if (c->fd < 0)
        return CELERIAC_ECONN;
    if (len > MAX_FRAME - 8)
        return CELERIAC_ETOOBIG;
    unsigned char hdr[6];
    uint32_t total = (uint32_t)(len + 2);
    memcpy(hdr, &total, 4);
    hdr[4] = POOL_CONTROL;
    hdr[5] = (unsigned char)kind;
    if (buf_append(&c->out, hdr, sizeof hdr) < 0 || (len && buf_append(&c->out, names, len) < 0))
        return CELERIAC_ENOMEM;
    return pool_flush(c);
}

/* RECEIVED / HANDOFF: u32 length, u8 type, u32 seq, u8 tag length, tag,
 * u8 queue length, queue, head, envelope. */
int pool_delivery_build(struct buf *out, int type, uint32_t seq, const char *tag,
                        const char *queue, const char *head, size_t head_len,
                        const char *envelope, size_t len)
{
    size_t tl = strlen(tag), ql = strlen(queue);
    if (tl > 255 || ql > 255 || len > MAX_FRAME - 16 - tl - ql ||
        head_len > MAX_FRAME - 16 - tl - ql - len)
        return CELERIAC_ETOOBIG;
    uint32_t total = (uint32_t)(1 + 4 + 1 + tl + 1 + ql + head_len + len);
    unsigned char t = (unsigned char)type, l8;
    if (buf_append(out, &total, 4) < 0 || buf_append(out, &t, 1) < 0 ||
        buf_append(out, &seq, 4) < 0)
        return CELERIAC_ENOMEM;
    l8 = (unsigned char)tl;
    if (buf_append(out, &l8, 1) < 0 || buf_append(out, tag, tl) < 0)
        return CELERIAC_ENOMEM;
    l8 = (unsigned char)ql;
    if (buf_append(out, &l8, 1) < 0 || buf_append(out, queue, ql) < 0 ||
        (head_len && buf_append(out, head, head_len) < 0) || buf_append(out, envelope, len) < 0)
        return CELERIAC_ENOMEM;
    return 0;
}

int pool_delivery_parse(const char *payload, size_t len, const char **tag, size_t *tag_len,
                        const char **queue, size_t *queue_len, const char **envelope,
                        size_t *env_len)
{
    const unsigned char *p = (const unsigned char *)payload;
    if (len < 2 || (size_t)p[0] + 2 > len)
        return CELERIAC_EPROTO;
    *tag = payload + 1;
    *tag_len = p[0];
    size_t off = 1 + p[0];
    if ((size_t)p[off] + off + 1 > len)
        return CELERIAC_EPROTO;
    *queue = payload + off + 1;
    *queue_len = p[off];
    off += 1 + p[off];
    *envelope = payload + off;
    *env_len = len - off;
    return 0;
}

void pool_kill(struct pool *p, int sig)
{
    for (size_t i = 0; i < p->n; i++)
        if (p->children[i].pid > 0)
            kill(p->children[i].pid, sig);
}

void pool_free(struct pool *p)
{
    for (size_t i = 0; i < p->n; i++) {
        pool_forget(&p->children[i]);
        if (p->children[i].slots)
            munmap(p->children[i].slots, SLOTS_SIZE);
        if (p->children[i].journal)
            munmap(p->children[i].journal, sizeof(struct pool_journal));
        pool_owed_clear(&p->children[i]);
        free(p->children[i].owed);
        struct pool_results *r = &p->children[i].unstored;
        pool_results_clear(r);
        free(r->ids);
        free(r->docs);
        free(r->lens);
    }
    free(p->children);
    p->children = NULL;
    p->n = 0;
}

/* Appends what one read() returns; 0 at EOF or error. */
static ssize_t link_fill(struct pool_link *l, int flags)
{
    if (l->in_off > 0 && l->in_off == l->in.len) {
        l->in.len = 0;
        l->in_off = 0;
    } else if (l->in_off > 65536) {
        memmove(l->in.p, l->in.p + l->in_off, l->in.len - l->in_off);
        l->in.len -= l->in_off;
        l->in_off = 0;
    }
    char tmp[65536];
    ssize_t r;
    do
        r = recv(l->fd, tmp, sizeof tmp, flags);
    while (r < 0 && errno == EINTR);
    l->readable = r == (ssize_t)sizeof tmp; /* more may wait behind it */
    if (r > 0 && buf_append(&l->in, tmp, (size_t)r) < 0)
        return -1;
    return r;
}

/* The parent wrote to this child since the last call (see MAIL_WORD), or
 * the link is known to hold more (l->readable). A child without the shared
 * word reads every time. */
static int mail_moved(struct pool_link *l)
{
    if (!child_slots || l->readable)
        return 1;
    unsigned m = atomic_load_explicit(&child_slots[MAIL_WORD], memory_order_acquire);
    if (m == l->mail_seen)
        return 0;
    l->mail_seen = m;
    return 1;
}

/* Length of the whole frame at the read position, 0 if not all there yet. */
static size_t link_frame(const struct pool_link *l, int *bad)
{
    size_t have = l->in.len - l->in_off;
    *bad = 0;
    if (have < 4)
        return 0;
    uint32_t total;
    memcpy(&total, l->in.p + l->in_off, 4);
    if (total < 5 || total > MAX_FRAME) {
        *bad = 1;
        return 0;
    }
    return have >= 4 + (size_t)total ? 4 + (size_t)total : 0;
}

int pool_child_read(struct pool_link *l, uint32_t *flags, const char **envelope, size_t *len)
{
    for (;;) {
        int bad;
        size_t n;
        while ((n = link_frame(l, &bad)) == 0) {
            if (bad)
                return CELERIAC_EPROTO;
            if (pool_child_flush(l) < 0 || link_fill(l, 0) <= 0)
                return CELERIAC_ECONN;
        }
        const char *f = l->in.p + l->in_off;
        if ((unsigned char)f[4] != POOL_RUN || n < RUN_HEADER)
            return CELERIAC_EPROTO;
        uint32_t seq;
        memcpy(flags, f + 5, 4);
        memcpy(&seq, f + 9, 4);
        *envelope = f + RUN_HEADER;
        *len = n - RUN_HEADER;
        l->in_off += n;
        unsigned expect = slot_word(seq, SLOT_QUEUED);
        if (!child_slots ||
            atomic_compare_exchange_strong(&child_slots[slot_index(seq)], &expect,
                                           slot_word(seq, SLOT_RUNNING)))
            return 0;
        /* Cancelled by the parent while it waited here: answered in order. */
        struct pool_outcome skip = {.status = POOL_SKIP_CANCELLED};
        if (pool_child_write(l, POOL_SKIPPED, &skip) < 0)
            return CELERIAC_ENOMEM;
    }
}

int pool_child_next(struct pool_link *l, int block, int *type, uint32_t *flags, uint32_t *seq,
                    const char **payload, size_t *len)
{
    int bad;
    size_t n;
    while ((n = link_frame(l, &bad)) == 0) {
        if (bad)
            return CELERIAC_EPROTO;
        if (!block) {
            if (!mail_moved(l))
                return 0;
            ssize_t r = link_fill(l, MSG_DONTWAIT);
            if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
                return 0;
            if (r <= 0)
                return CELERIAC_ECONN;
            continue;
        }
        if (pool_child_flush(l) < 0 || link_fill(l, 0) <= 0)
            return CELERIAC_ECONN;
    }
    const char *f = l->in.p + l->in_off;
    *type = (unsigned char)f[4];
    if (*type == POOL_RUN) {
        if (n < RUN_HEADER)
            return CELERIAC_EPROTO;
        memcpy(flags, f + 5, 4);
        memcpy(seq, f + 9, 4);
        *payload = f + RUN_HEADER;
        *len = n - RUN_HEADER;
    } else if (*type == POOL_CONTROL) {
        if (n < 6)
            return CELERIAC_EPROTO;
        *flags = (unsigned char)f[5];
        *seq = 0;
        *payload = f + 6;
        *len = n - 6;
    } else {
        return CELERIAC_EPROTO;
    }
    l->in_off += n;
    return 1;
}

void pool_child_queue_own(uint32_t seq)
{
    if (child_slots)
        atomic_store(&child_slots[slot_index(seq)], slot_word(seq, SLOT_QUEUED));
}

int pool_child_claim(uint32_t seq)
{
    unsigned expect = slot_word(seq, SLOT_QUEUED);
    return !child_slots || atomic_compare_exchange_strong(&child_slots[slot_index(seq)], &expect,
                                                          slot_word(seq, SLOT_RUNNING));
}

void pool_results_stored(struct pool_child *c, unsigned n)
{
    if (c->slots)
        atomic_fetch_add(&((pool_slot *)c->slots)[STORED_WORD], n);
}

unsigned pool_child_results_stored(void)
{
    return child_slots ? atomic_load(&child_slots[STORED_WORD]) : 0;
}

int pool_child_pending(struct pool_link *l)
{
    int bad;
    if (link_frame(l, &bad) || bad)
        return 1;
    if (!mail_moved(l) || link_fill(l, MSG_DONTWAIT) <= 0)
        return 0;
    return link_frame(l, &bad) > 0 || bad;
}

int pool_child_write(struct pool_link *l, int type, const struct pool_outcome *out)
{
    size_t dlen = out && out->detail ? strlen(out->detail) : 0;
    size_t mlen = out && out->meta ? out->meta_len : 0;
    size_t total = type == POOL_DONE      ? 14 + dlen + mlen
                   : type == POOL_SKIPPED || type == POOL_STORED ? 2
                   : type == POOL_ACCEPTED ? 5
                                            : 1;
    if (total > MAX_FRAME)
        return CELERIAC_ETOOBIG;
    unsigned char hdr[18];
    uint32_t t32 = (uint32_t)total, d32 = (uint32_t)dlen;
    memcpy(hdr, &t32, 4);
    hdr[4] = (unsigned char)type;
    size_t hlen = 5;
    if (type == POOL_DONE) {
        hdr[5] = (unsigned char)(out->status | (out->child_stores ? 0x80 : 0));
        memcpy(hdr + 6, &out->runtime, 8);
        memcpy(hdr + 14, &d32, 4);
        hlen = 18;
    } else if (type == POOL_SKIPPED || type == POOL_STORED) {
        hdr[5] = (unsigned char)(out ? out->status : 0);
        hlen = 6;
    } else if (type == POOL_ACCEPTED) {
        uint32_t seq = out ? out->seq : 0;
        memcpy(hdr + 5, &seq, 4);
        hlen = 9;
    }
    if (buf_append(&l->out, hdr, hlen) < 0 || (dlen && buf_append(&l->out, out->detail, dlen) < 0) ||
        (mlen && buf_append(&l->out, out->meta, mlen) < 0))
        return CELERIAC_ENOMEM;
    return 0;
}

/* write_all() for a duplex link: never blocks on a full socket while the
 * parent may be blocked writing to this child. */
static int write_duplex(struct pool_link *l)
{
    size_t off = 0;
    int reading = 1;
    while (off < l->out.len) {
        ssize_t w = send(l->fd, l->out.p + off, l->out.len - off, MSG_DONTWAIT | MSG_NOSIGNAL);
        if (w > 0) {
            off += (size_t)w;
            continue;
        }
        if (w < 0 && errno == EINTR)
            continue;
        if (w < 0 && errno != EAGAIN && errno != EWOULDBLOCK)
            return CELERIAC_EIO;
        struct pollfd p = {.fd = l->fd, .events = POLLOUT | (reading ? POLLIN : 0)};
        if (poll(&p, 1, -1) < 0 && errno != EINTR)
            return CELERIAC_EIO;
        if (reading && (p.revents & (POLLIN | POLLHUP))) {
            ssize_t r = link_fill(l, MSG_DONTWAIT);
            if (r == 0 || (r < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR))
                reading = 0; /* EOF (or an error the next read reports) */
        }
    }
    return 0;
}

int pool_child_flush(struct pool_link *l)
{
    int rc = !l->out.len  ? 0
             : l->duplex ? write_duplex(l)
                         : write_all(l->fd, l->out.p, l->out.len, NULL);
    if (child_journal && l->out.len) {
        atomic_store_explicit(&child_journal->len, 0u, memory_order_release);
        unsigned base = atomic_load_explicit(&child_journal->base, memory_order_relaxed);
        atomic_store_explicit(&child_journal->base, base + (unsigned)l->out.len,
                              memory_order_release);
    }
    l->out.len = 0;
    return rc < 0 ? CELERIAC_EIO : 0;
}

int pool_child_keep(struct pool_link *l)
{
    struct pool_journal *j = child_journal;
    if (!j || l->out.len > JOURNAL_CAP)
        return 0;
    unsigned have = atomic_load_explicit(&j->len, memory_order_relaxed);
    if (have > l->out.len)
        return 0;
    memcpy(j->data + have, l->out.p + have, l->out.len - have);
    atomic_store_explicit(&j->len, (unsigned)l->out.len, memory_order_release);
    return 1;
}

size_t pool_replay(struct pool_child *c)
{
    struct pool_journal *j = c->journal;
    if (!j)
        return 0;
    unsigned base = atomic_load_explicit(&j->base, memory_order_acquire);
    unsigned len = atomic_load_explicit(&j->len, memory_order_acquire);
    unsigned off = c->rx - base; /* what the socket already brought */
    if (len > JOURNAL_CAP || off >= len)
        return 0;
    if (buf_append(&c->in, j->data + off, len - off) < 0)
        return 0;
    c->rx += len - off;
    return len - off;
}

void pool_link_free(struct pool_link *l)
{
    buf_free(&l->in);
    buf_free(&l->out);
    l->in_off = 0;
}
