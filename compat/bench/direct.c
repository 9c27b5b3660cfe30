/* bench-direct: the throughput ceiling of a worker with no hand-offs inside
 * it, used by bench.py next to the real workers on the `add` workload.
 *
 *     bench-direct BROKER_URL BACKEND_URL PROCESSES PREFETCH_MULTIPLIER
 *
 * PROCESSES processes each fetch for themselves, on their own links, with
 * celeriac's own code (celeriac_core): the batch fetch (pop and reserve in
 * unacked in one atomic call, kombu's layout), at most PREFETCH_MULTIPLIER
 * messages per process, so the worker as a whole never holds more messages
 * not yet started than Celery's window (concurrency x multiplier). Each
 * message is decoded in full, the two ints of its args are added, and the
 * SUCCESS meta is encoded; the messages are acknowledged early (in the next
 * fetch call, as celeriac's main process does) and the batch's results are
 * stored with celeriac's store (never overwriting SUCCESS, PUBLISH for
 * waiters) in the same round trip as the next fetch. No main process, no
 * pool hand-off, no events, no remote control, no time limits: it is what
 * the layout, the window and the two Lua calls per batch allow on this
 * machine, not a worker. Anything but a well-formed add is logged and
 * dropped. SIGTERM stops it.
 *
 * With --bookkeeper the parent process keeps the books a worker's main
 * process would keep if its pool processes fetched for themselves: each
 * process tells it, in one write per fetch cycle, the envelopes it just took
 * and the ids of the tasks whose results it just stored; the parent decodes
 * every envelope's headers (as celeriac's main process does), holds the
 * message until its id comes back, and checks the order. It wakes whenever a
 * process writes. What that costs is the price of the main process's
 * bookkeeping in that design.
 */
#include "backend.h"
#include "broker.h"
#include "task_message.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

enum { MAX_WINDOW = 128, MAX_PROCS = 64 };

static volatile sig_atomic_t stopping;

static void on_term(int sig)
{
    (void)sig;
    stopping = 1;
}

/* Waits up to ms for fd to turn readable; 1 readable, 0 not yet, -1 error. */
static int wait_readable(int fd, int ms)
{
    struct pollfd p = {.fd = fd, .events = POLLIN};
    int n = poll(&p, 1, ms);
    if (n < 0 && errno == EINTR)
        return 0;
    return n < 0 ? -1 : n > 0;
}

/* One batch's results, stored while the next fetch is answered. */
struct results {
    size_t n;
    char *ids[MAX_WINDOW];
    char *docs[MAX_WINDOW];
    size_t lens[MAX_WINDOW];
};

static void results_clear(struct results *r)
{
    for (size_t i = 0; i < r->n; i++) {
        free(r->ids[i]);
        free(r->docs[i]);
    }
    r->n = 0;
}

/* Decodes one add, runs it and encodes its SUCCESS meta into r. */
static void run_one(const struct broker_delivery *d, struct results *r)
{
    struct task_message m = {0};
    char err[256];
    int rc = task_message_decode(d->body, d->len, &task_message_limits_default, &m, err,
                                 sizeof err);
    if (rc < 0 || !m.id || celeriac_value_len(m.args) != 2) {
        fprintf(stderr, "bench-direct: dropped a message that is not an add: %s\n",
                rc < 0 ? err : "bad args");
        task_message_clear(&m);
        return;
    }
    int64_t sum = celeriac_value_int(celeriac_value_at(m.args, 0)) +
                  celeriac_value_int(celeriac_value_at(m.args, 1));
    celeriac_value *v = celeriac_value_new_int(sum);
    struct result_meta meta = {.task_id = m.id, .status = "SUCCESS", .result = v, .ready = 1};
    size_t len = 0;
    char *doc = v ? backend_encode_meta(&meta, &len) : NULL;
    char *id = strdup(m.id);
    celeriac_value_free(v);
    task_message_clear(&m);
    if (!doc || !id) {
        fprintf(stderr, "bench-direct: out of memory\n");
        free(doc);
        free(id);
        return;
    }
    r->ids[r->n] = id;
    r->docs[r->n] = doc;
    r->lens[r->n] = len;
    r->n++;
}

/* --bookkeeper: what a pool process that fetches for itself would tell a
 * main process keeping the worker's books, one write per fetch cycle: the
 * ids of the tasks it finished (after their results were stored) and the
 * envelopes of the messages it just took. */
struct tell {
    int fd;           /* -1: no bookkeeper */
    char *p;
    size_t len, cap;
};

static int tell_put(struct tell *t, char kind, const void *data, size_t len)
{
    if (t->fd < 0)
        return 0;
    if (t->len + 5 + len > t->cap) {
        size_t cap = (t->len + 5 + len) * 2;
        char *p = realloc(t->p, cap);
        if (!p)
            return -1;
        t->p = p;
        t->cap = cap;
    }
    uint32_t n = (uint32_t)len;
    t->p[t->len] = kind;
    memcpy(t->p + t->len + 1, &n, 4);
    memcpy(t->p + t->len + 5, data, len);
    t->len += 5 + len;
    return 0;
}

static void tell_flush(struct tell *t)
{
    size_t off = 0;
    while (t->fd >= 0 && off < t->len) {
        ssize_t w = write(t->fd, t->p + off, t->len - off);
        if (w < 0 && errno == EINTR && !stopping)
            continue;
        if (w < 0)
            break;
        off += (size_t)w;
    }
    t->len = 0;
}

static int serve(const char *broker_url, const char *backend_url, size_t window, int tell_fd)
{
    struct tell tell = {.fd = tell_fd};
    char err[256];
    struct broker *b = broker_new(broker_url, NULL, err, sizeof err);
    struct backend *be = backend_new(backend_url, 86400, -1, NULL, err, sizeof err);
    char *queue = strdup("celery");
    if (!b || !be || !queue || b->ops->set_queues(b, &queue, 1) < 0 || b->ops->connect(b) < 0) {
        fprintf(stderr, "bench-direct: cannot start: %s\n", b && b->errstr[0] ? b->errstr : err);
        return 1;
    }
    free(queue);
    struct results res = {0}, stored = {0};
    char *acks[MAX_WINDOW];
    size_t nacks = 0;
    struct broker_delivery d[MAX_WINDOW];
    int status = 0;
    while (!stopping) {
        if (b->ops->fetch_batch_send(b, (const char *const *)acks, nacks, window) < 0) {
            fprintf(stderr, "bench-direct: fetch: %s\n", b->errstr);
            status = 1;
            break;
        }
        for (size_t i = 0; i < nacks; i++)
            free(acks[i]);
        nacks = 0;
        /* The previous batch's results go out behind the fetch. */
        stored = res;
        res.n = 0;
        if (stored.n && backend_store_send(be, stored.n, (const char *const *)stored.ids,
                                           (const char *const *)stored.docs, stored.lens) < 0) {
            fprintf(stderr, "bench-direct: store: %s\n", be->errstr);
            status = 1;
            break;
        }
        size_t count = 0;
        int rc = 0;
        while (rc == 0 && !stopping) {
            int fd = b->ops->fetch_fd(b);
            if (fd < 0 || wait_readable(fd, 1000) < 0) {
                rc = -1;
                break;
            }
            rc = b->ops->fetch_batch_read(b, d, MAX_WINDOW, &count);
        }
        if (stored.n) {
            if (backend_store_recv(be, stored.n, (const char *const *)stored.ids,
                                   (const char *const *)stored.docs, stored.lens) < 0)
                fprintf(stderr, "bench-direct: store: %s\n", be->errstr);
            for (size_t i = 0; i < stored.n; i++)
                tell_put(&tell, 'D', stored.ids[i], strlen(stored.ids[i]));
            results_clear(&stored);
        }
        for (size_t i = 0; rc > 0 && i < count; i++)
            tell_put(&tell, 'R', d[i].body, d[i].len);
        tell_flush(&tell);
        if (rc < 0) {
            if (!stopping) {
                fprintf(stderr, "bench-direct: fetch: %s\n", b->errstr);
                status = 1;
            }
            break;
        }
        for (size_t i = 0; i < count; i++) {
            run_one(&d[i], &res); /* started: its early ack rides in the next fetch */
            if ((acks[nacks] = strdup(d[i].tag)) != NULL)
                nacks++;
            free(d[i].body);
        }
        if (count == 0 && !stopping) {
            /* Nothing waiting: sleep in BRPOP (1 s timeout) and put back
             * what it brings, so the next batch fetch serves it in order. */
            struct broker_delivery one = {0};
            if (b->ops->fetch_start(b) < 0)
                break;
            int got = 0;
            while (!got && !stopping) {
                int fd = b->ops->fetch_fd(b);
                if (fd < 0 || wait_readable(fd, 1000) < 0)
                    break;
                got = b->ops->fetch_read(b, &one);
                if (got == 0 && b->ops->fetch_fd(b) < 0 && b->ops->fetch_start(b) < 0)
                    break;
            }
            if (got == 1) {
                if (b->ops->reserve(b, &(struct broker_reservation){.delivery_tag = one.tag,
                                                                    .exchange = "",
                                                                    .routing_key = "celery"},
                                    one.body, one.len) == 0) {
                    run_one(&one, &res);
                    if ((acks[nacks] = strdup(one.tag)) != NULL)
                        nacks++;
                } else {
                    fprintf(stderr, "bench-direct: reserve: %s\n", b->errstr);
                }
                free(one.body);
            }
        }
    }
    if (res.n)
        backend_store_many(be, res.n, (const char *const *)res.ids, (const char *const *)res.docs,
                           res.lens);
    if (nacks)
        b->ops->ack_many(b, (const char **)acks, nacks);
    for (size_t i = 0; i < nacks; i++)
        free(acks[i]);
    results_clear(&res);
    free(tell.p);
    backend_free(be);
    broker_free(b);
    return status;
}

/* The bookkeeper's record of one message a process took. */
struct held {
    struct task_message msg;
    char *envelope;
    struct held *next;
};

struct kid {
    int fd;
    char *in;
    size_t len, cap;
    struct held *head, *tail;
    unsigned long done, bad;
};

/* Parses the complete records in k->in: 'R' decodes the headers (as a main
 * process does) and keeps the message; 'D' finds it and lets it go. */
static void books(struct kid *k)
{
    size_t off = 0;
    while (k->len - off >= 5) {
        uint32_t n;
        memcpy(&n, k->in + off + 1, 4);
        if (k->len - off - 5 < n)
            break;
        const char *data = k->in + off + 5;
        if (k->in[off] == 'R') {
            struct held *h = calloc(1, sizeof *h);
            struct task_message_limits lim = task_message_limits_default;
            lim.headers_only = 1;
            char err[256];
            if (h && (h->envelope = malloc(n + 1)) != NULL) {
                memcpy(h->envelope, data, n);
                h->envelope[n] = 0;
                task_message_decode(h->envelope, n, &lim, &h->msg, err, sizeof err);
                if (k->tail)
                    k->tail->next = h;
                else
                    k->head = h;
                k->tail = h;
            } else {
                free(h);
            }
        } else {
            struct held *h = k->head;
            if (h && h->msg.id && strlen(h->msg.id) == n && memcmp(h->msg.id, data, n) == 0) {
                k->head = h->next;
                if (!k->head)
                    k->tail = NULL;
                task_message_clear(&h->msg);
                free(h->envelope);
                free(h);
                k->done++;
            } else {
                k->bad++;
            }
        }
        off += 5 + n;
    }
    memmove(k->in, k->in + off, k->len - off);
    k->len -= off;
}

static void bookkeeper(struct kid *kids, long n)
{
    while (!stopping) {
        struct pollfd p[MAX_PROCS];
        for (long i = 0; i < n; i++)
            p[i] = (struct pollfd){.fd = kids[i].fd, .events = POLLIN};
        if (poll(p, (nfds_t)n, 1000) < 0 && errno != EINTR)
            return;
        for (long i = 0; i < n; i++) {
            struct kid *k = &kids[i];
            if (!(p[i].revents & (POLLIN | POLLHUP)))
                continue;
            if (k->cap - k->len < 65536) {
                char *q = realloc(k->in, k->cap * 2 + 65536);
                if (!q)
                    return;
                k->in = q;
                k->cap = k->cap * 2 + 65536;
            }
            ssize_t r = read(k->fd, k->in + k->len, k->cap - k->len);
            if (r <= 0)
                continue;
            k->len += (size_t)r;
            books(k);
        }
    }
    for (long i = 0; i < n; i++) {
        if (kids[i].bad)
            fprintf(stderr, "bench-direct: bookkeeper: %lu records out of order\n", kids[i].bad);
        while (kids[i].head) {
            struct held *h = kids[i].head;
            kids[i].head = h->next;
            task_message_clear(&h->msg);
            free(h->envelope);
            free(h);
        }
        free(kids[i].in);
    }
}

int main(int argc, char **argv)
{
    int keep_books = argc == 6 && strcmp(argv[5], "--bookkeeper") == 0;
    if (argc != 5 && !keep_books) {
        fprintf(stderr, "usage: bench-direct BROKER_URL BACKEND_URL PROCESSES "
                        "PREFETCH_MULTIPLIER [--bookkeeper]\n");
        return 64;
    }
    long procs = strtol(argv[3], NULL, 10), window = strtol(argv[4], NULL, 10);
    if (procs < 1 || procs > MAX_PROCS || window < 1 || window > MAX_WINDOW) {
        fprintf(stderr, "bench-direct: PROCESSES 1-%d, PREFETCH_MULTIPLIER 1-%d\n", MAX_PROCS,
                MAX_WINDOW);
        return 64;
    }
    struct sigaction sa = {.sa_handler = on_term};
    sigemptyset(&sa.sa_mask);
    sigaction(SIGTERM, &sa, NULL);
    sigaction(SIGINT, &sa, NULL);
    signal(SIGPIPE, SIG_IGN);
    pid_t kids[MAX_PROCS];
    struct kid books_of[MAX_PROCS] = {{0}};
    for (long i = 0; i < procs; i++) {
        int sv[2] = {-1, -1};
        if (keep_books && socketpair(AF_UNIX, SOCK_STREAM, 0, sv) < 0) {
            perror("bench-direct: socketpair");
            return 1;
        }
        kids[i] = fork();
        if (kids[i] == 0) {
            if (sv[0] >= 0)
                close(sv[0]);
            _exit(serve(argv[1], argv[2], (size_t)window, sv[1]));
        }
        if (sv[1] >= 0)
            close(sv[1]);
        books_of[i].fd = sv[0];
        if (kids[i] < 0) {
            perror("bench-direct: fork");
            procs = i;
            stopping = 1;
            break;
        }
    }
    if (keep_books) {
        bookkeeper(books_of, procs);
        for (long k = 0; k < procs; k++)
            kill(kids[k], SIGTERM); /* forward the stop */
    }
    int status = 0;
    for (long i = 0; i < procs; i++) {
        int st = 0;
        while (waitpid(kids[i], &st, 0) < 0) {
            if (errno != EINTR)
                break;
            for (long k = 0; k < procs; k++)
                kill(kids[k], SIGTERM); /* forward the stop */
        }
        if (!WIFEXITED(st) || WEXITSTATUS(st) != 0)
            status = 1;
    }
    return status;
}
