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
 */
#include "backend.h"
#include "broker.h"
#include "task_message.h"

#include <errno.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
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

static int serve(const char *broker_url, const char *backend_url, size_t window)
{
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
            results_clear(&stored);
        }
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
    backend_free(be);
    broker_free(b);
    return status;
}

int main(int argc, char **argv)
{
    if (argc != 5) {
        fprintf(stderr, "usage: bench-direct BROKER_URL BACKEND_URL PROCESSES "
                        "PREFETCH_MULTIPLIER\n");
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
    for (long i = 0; i < procs; i++) {
        kids[i] = fork();
        if (kids[i] == 0)
            _exit(serve(argv[1], argv[2], (size_t)window));
        if (kids[i] < 0) {
            perror("bench-direct: fork");
            procs = i;
            stopping = 1;
            break;
        }
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
