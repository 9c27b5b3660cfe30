/* test_pool.c - unit tests for pool.c: frames between the parent and a real
 * child process, and cancelling a job queued in a busy child. */
#include <poll.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "celeriac.h"
#include "pool.h"
#include "test.h"

static int gate[2]; /* the child holds "job1" until the parent writes a byte here */

/* Child: STARTED for each job it claims, then DONE with the envelope as detail. */
static void echo_child(int fd, int index, void *ud)
{
    (void)index;
    (void)ud;
    struct pool_link link = {.fd = fd};
    uint32_t flags;
    const char *env;
    size_t len;
    while (pool_child_read(&link, &flags, &env, &len) == 0) {
        char detail[32];
        snprintf(detail, sizeof detail, "%.*s", (int)len, env);
        pool_child_write(&link, POOL_STARTED, NULL);
        pool_child_flush(&link);
        if (strcmp(detail, "job1") == 0) {
            char b;
            while (read(gate[0], &b, 1) < 0) {
            }
        }
        struct pool_outcome out = {.status = POOL_SUCCESS, .detail = detail};
        pool_child_write(&link, POOL_DONE, &out);
        if (!pool_child_pending(&link))
            pool_child_flush(&link);
    }
    pool_child_flush(&link);
    pool_link_free(&link);
}

static int last_status; /* of the last frame next_frame() read */

/* The next frame from c within 10 s: its type, and the detail of a DONE. */
static int next_frame(struct pool_child *c, char *detail, size_t dlen)
{
    for (int tries = 0; tries < 100; tries++) {
        struct pool_outcome o = {0};
        int type = 0;
        int rc = pool_read(c, &type, &o);
        if (rc < 0)
            return rc;
        if (rc == 1) {
            snprintf(detail, dlen, "%s", o.detail ? o.detail : "");
            last_status = o.status;
            free(o.detail);
            free(o.meta);
            return type;
        }
        struct pollfd p = {.fd = c->fd, .events = POLLIN};
        poll(&p, 1, 100);
    }
    return -1;
}

TEST(cancel_a_job_queued_behind_a_running_one)
{
    CHECK(pipe(gate) == 0);
    struct pool p = {0};
    CHECK_EQ_INT(pool_start(&p, 1, echo_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    int j1, j2, j3, other;
    CHECK_EQ_INT(pool_send(c, 0, "job1", 4, &j1), 0);
    CHECK_EQ_INT(pool_send(c, 0, "job2", 4, &j2), 0);
    CHECK_EQ_INT(pool_send(c, 0, "job3", 4, &j3), 0);
    CHECK_EQ_INT(c->nqueued, 2);
    char d[32];
    /* job1 claimed by the child: it can no longer be cancelled. */
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
    CHECK_EQ_INT(pool_cancel(c, &j1), 0);
    /* job2 waits behind it: cancelled (a second cancel says so again);
     * unknown jobs are not. */
    CHECK_EQ_INT(pool_cancel(c, &j2), 1);
    CHECK_EQ_INT(pool_cancel(c, &j2), 1);
    CHECK_EQ_INT(pool_cancel(c, &other), 0);
    CHECK(write(gate[1], "x", 1) == 1);

    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
    CHECK_STR(d, "job1");
    CHECK(pool_advance(c) == &j1);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_SKIPPED);
    CHECK_EQ_INT(last_status, POOL_SKIP_CANCELLED);
    CHECK(pool_advance(c) == &j2);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
    CHECK_EQ_INT(pool_cancel(c, &j3), 0); /* started: too late */
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
    CHECK_STR(d, "job3");
    CHECK(pool_advance(c) == &j3);
    CHECK(!c->busy);

    /* Sequence numbers keep going past POOL_SLOTS: slots are reused. */
    for (int i = 0; i < 2 * POOL_SLOTS; i++) {
        CHECK_EQ_INT(pool_send(c, 0, "jobN", 4, &other), 0);
        CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
        CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
        CHECK(pool_advance(c) == &other);
    }
    pid_t pid = c->pid;
    pool_close(&p);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pool_free(&p);
    close(gate[0]);
    close(gate[1]);
}

/* Nine jobs held at a time (the most a child holds), every third one
 * cancelled right after it is sent: each cancel that returned 1 is answered
 * SKIPPED, every other job STARTED then DONE, in order, across many trips
 * around the POOL_SLOTS slots. */
TEST(cancels_with_a_full_queue_answer_in_order)
{
    struct pool p = {0};
    CHECK_EQ_INT(pool_start(&p, 1, echo_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    enum { HELD = 1 + POOL_QUEUE_MAX, ROUNDS = 40 };
    int jobs[HELD];
    char d[32];
    size_t skipped = 0;
    for (int round = 0; round < ROUNDS; round++) {
        int cancelled[HELD];
        for (int i = 0; i < HELD; i++) {
            CHECK_EQ_INT(pool_send(c, 0, "jobN", 4, &jobs[i]), 0);
            cancelled[i] = i % 3 == 2 ? pool_cancel(c, &jobs[i]) : 0;
        }
        for (int i = 0; i < HELD; i++) {
            if (cancelled[i]) {
                CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_SKIPPED);
                skipped++;
            } else {
                CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
                CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
                CHECK_STR(d, "jobN");
            }
            CHECK(pool_advance(c) == &jobs[i]);
        }
        CHECK(!c->busy);
    }
    /* The child is slower to claim than the parent is to cancel: most of the
     * cancels came first (each one is checked above either way). */
    CHECK(skipped > 0);
    pid_t pid = c->pid;
    pool_close(&p);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    pool_free(&p);
}

/* pool_shrink of a busy process: it answers the jobs it holds, then exits. */
TEST(shrink_retires_a_busy_process_after_its_jobs)
{
    CHECK(pipe(gate) == 0);
    struct pool p = {0};
    CHECK_EQ_INT(pool_start(&p, 1, echo_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    int j1, j2;
    char d[32];
    CHECK_EQ_INT(pool_send(c, 0, "job1", 4, &j1), 0);
    CHECK_EQ_INT(pool_send(c, 0, "job2", 4, &j2), 0);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
    CHECK_EQ_INT(pool_shrink(&p, 1), 1);
    CHECK(write(gate[1], "x", 1) == 1);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
    CHECK(pool_advance(c) == &j1);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
    CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
    CHECK(pool_advance(c) == &j2);
    /* End of input: the process exits (EOF here), within the 10 s wait. */
    CHECK_EQ_INT(next_frame(c, d, sizeof d), CELERIAC_ECONN);
    pid_t pid = c->pid;
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    pool_free(&p);
    close(gate[0]);
    close(gate[1]);
}

/* Posted jobs wait in the parent until pool_flush(), then arrive in order. */
TEST(posted_jobs_go_out_on_flush_in_order)
{
    CHECK(pipe(gate) == 0);
    CHECK(write(gate[1], "x", 1) == 1); /* job1 does not wait here */
    struct pool p = {0};
    CHECK_EQ_INT(pool_start(&p, 1, echo_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    int j1, j2, j3;
    char d[32];
    CHECK_EQ_INT(pool_post(c, 0, "job1", 4, &j1), 0);
    CHECK_EQ_INT(pool_post(c, 0, "jobB", 4, &j2), 0);
    CHECK_EQ_INT(pool_post(c, 0, "jobC", 4, &j3), 0);
    CHECK(c->busy && c->job == &j1 && c->nqueued == 2);
    /* Nothing written yet: the child has nothing to answer. */
    struct pollfd pf = {.fd = c->fd, .events = POLLIN};
    CHECK_EQ_INT(poll(&pf, 1, 200), 0);
    CHECK_EQ_INT(pool_flush(c), 0);
    CHECK_EQ_INT(c->out.len, 0);
    const char *want[] = {"job1", "jobB", "jobC"};
    int *jobs[] = {&j1, &j2, &j3};
    for (int i = 0; i < 3; i++) {
        CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_STARTED);
        CHECK_EQ_INT(next_frame(c, d, sizeof d), POOL_DONE);
        CHECK_STR(d, want[i]);
        CHECK(pool_advance(c) == jobs[i]);
    }
    CHECK(!c->busy);
    pool_free(&p);
    close(gate[0]);
    close(gate[1]);
}

/* A flush to a process that is gone fails; its posted jobs stay recorded as
 * its own (the worker gives them to another process when it reaps it). */
TEST(flush_to_a_dead_process_fails_and_keeps_its_jobs)
{
    signal(SIGPIPE, SIG_IGN);
    CHECK(pipe(gate) == 0);
    struct pool p = {0};
    CHECK_EQ_INT(pool_start(&p, 1, echo_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    kill(c->pid, SIGKILL);
    int status = 0;
    CHECK(waitpid(c->pid, &status, 0) == c->pid);
    int j1, j2;
    CHECK_EQ_INT(pool_post(c, 0, "job1", 4, &j1), 0);
    CHECK_EQ_INT(pool_post(c, 0, "job2", 4, &j2), 0);
    CHECK_EQ_INT(pool_flush(c), CELERIAC_ECONN);
    CHECK(c->job == &j1 && c->nqueued == 1 && c->queued[0] == &j2);
    CHECK_EQ_INT(c->out.len, 0);
    pool_forget(c);
    CHECK_EQ_INT(pool_post(c, 0, "job3", 4, &j1), CELERIAC_ECONN); /* no link */
    pool_free(&p);
    close(gate[0]);
    close(gate[1]);
}

/* A fetching child: takes "own1" and "own2" itself (RECEIVED), hands "eta"
 * over (HANDOFF), accepts the parent's RUN job behind them (ACCEPTED), runs
 * in its run order (a cancelled own job answers SKIPPED), says ACKED, and
 * echoes CONTROL names back as a DONE detail. */
static void fetching_child(int fd, int index, void *ud)
{
    (void)index;
    (void)ud;
    struct pool_link l = {.fd = fd};
    const uint32_t s1 = POOL_SEQ_CHILD | 1, s2 = POOL_SEQ_CHILD | 2;
    pool_child_queue_own(s1);
    pool_child_queue_own(s2);
    pool_delivery_build(&l.out, POOL_RECEIVED, s1, "tag-1", "celery", "pk", 2, "own1", 4);
    pool_delivery_build(&l.out, POOL_RECEIVED, s2, "tag-2", "celery", NULL, 0, "own2", 4);
    pool_delivery_build(&l.out, POOL_HANDOFF, 0, "tag-3", "q2", NULL, 0, "eta", 3);
    pool_child_flush(&l);
    /* Wait for the parent's RUN job and a CONTROL frame. */
    uint32_t run_seq = 0, flags, seq;
    int type, got_run = 0, got_ctl = 0;
    char ctl[64] = "";
    const char *payload;
    size_t len;
    while (!got_run || !got_ctl) {
        if (pool_child_next(&l, 1, &type, &flags, &seq, &payload, &len) <= 0)
            return;
        if (type == POOL_RUN) {
            run_seq = seq;
            got_run = 1;
            struct pool_outcome acc = {.seq = seq};
            pool_child_write(&l, POOL_ACCEPTED, &acc);
            pool_child_flush(&l);
        } else if (type == POOL_CONTROL && flags == POOL_CTL_QUEUES) {
            snprintf(ctl, sizeof ctl, "%s+%s", payload, payload + strlen(payload) + 1);
            got_ctl = 1;
        }
    }
    /* Run order: own1, own2 (cancelled by the parent), the RUN job. */
    const uint32_t order[3] = {s1, s2, run_seq};
    const char *names[3] = {"own1", "own2", ctl};
    for (int i = 0; i < 3; i++) {
        if (!pool_child_claim(order[i])) {
            struct pool_outcome skip = {.status = POOL_SKIP_CANCELLED};
            pool_child_write(&l, POOL_SKIPPED, &skip);
            continue;
        }
        /* own1: a result the child stores itself (the parent gets a copy). */
        struct pool_outcome out = {.status = POOL_SUCCESS, .detail = (char *)names[i],
                                   .meta = i == 0 ? (char *)"M1" : NULL, .meta_len = i == 0 ? 2 : 0,
                                   .child_stores = i == 0};
        pool_child_write(&l, POOL_STARTED, NULL);
        pool_child_write(&l, POOL_DONE, &out);
    }
    struct pool_outcome stored = {.status = 1};
    pool_child_write(&l, POOL_STORED, &stored);
    pool_child_write(&l, POOL_ACKED, NULL);
    pool_child_flush(&l);
    while (pool_child_next(&l, 1, &type, &flags, &seq, &payload, &len) > 0) {
    }
    pool_link_free(&l);
}

/* The next frame with its outcome (caller frees o->detail and o->meta). */
static int next_full(struct pool_child *c, struct pool_outcome *o)
{
    for (int tries = 0; tries < 1000; tries++) {
        int type = 0;
        memset(o, 0, sizeof *o);
        int rc = pool_read(c, &type, o);
        if (rc < 0)
            return rc;
        if (rc == 1)
            return type;
        struct pollfd pf = {.fd = c->fd, .events = POLLIN};
        poll(&pf, 1, 10);
    }
    return 0;
}

TEST(a_fetching_child_reports_what_it_takes_and_runs_in_its_order)
{
    struct pool p = {.fetching = 1};
    CHECK_EQ_INT(pool_start(&p, 1, fetching_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    CHECK_EQ_INT(c->fetching, 1);
    int own1, own2, run, eta = 0;
    struct pool_outcome o;
    const char *tag, *queue, *env;
    size_t tl, ql, el;
    /* RECEIVED own1 and own2 join the run order in that order. */
    CHECK_EQ_INT(next_full(c, &o), POOL_RECEIVED);
    CHECK_EQ_INT(pool_delivery_parse(o.meta, o.meta_len, &tag, &tl, &queue, &ql, &env, &el), 0);
    CHECK(tl == 5 && memcmp(tag, "tag-1", 5) == 0 && ql == 6 && el == 6 &&
          memcmp(env, "pkown1", 6) == 0); /* the head, then the envelope */
    CHECK_EQ_INT(pool_received(c, o.seq, &own1), 0);
    free(o.meta);
    CHECK_EQ_INT(next_full(c, &o), POOL_RECEIVED);
    CHECK_EQ_INT(pool_received(c, o.seq, &own2), 0);
    free(o.meta);
    CHECK(c->job == &own1 && c->nqueued == 1 && c->queued[0] == &own2);
    /* The parent cancels own2 (a revoke) before the child runs it. */
    CHECK_EQ_INT(pool_cancel(c, &own2), 1);
    CHECK_EQ_INT(next_full(c, &o), POOL_HANDOFF);
    CHECK_EQ_INT(pool_delivery_parse(o.meta, o.meta_len, &tag, &tl, &queue, &ql, &env, &el), 0);
    CHECK(ql == 2 && memcmp(queue, "q2", 2) == 0 && el == 3 && memcmp(env, "eta", 3) == 0);
    eta = 1;
    free(o.meta);
    /* A RUN job waits in the posted list until ACCEPTED. */
    CHECK_EQ_INT(pool_post(c, 0, "run", 3, &run), 0);
    CHECK_EQ_INT(pool_control(c, POOL_CTL_QUEUES, "a\0b", 4), 0);
    CHECK_EQ_INT(c->nposted, 1);
    CHECK(pool_idle(&p) == NULL);
    CHECK_EQ_INT(next_full(c, &o), POOL_ACCEPTED);
    CHECK(pool_accepted(c, o.seq) == &run);
    CHECK(c->nposted == 0 && c->nqueued == 2 && c->queued[1] == &run);
    pool_owe(c, "tag-1");
    CHECK_EQ_INT(c->nowed, 1);
    char d[64];
    CHECK_EQ_INT(next_full(c, &o), POOL_STARTED);
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    snprintf(d, sizeof d, "%s", o.detail);
    free(o.detail);
    CHECK_STR(d, "own1");
    /* The child stores it: flagged apart from the status, the parent's copy kept. */
    CHECK(o.child_stores == 1 && o.status == POOL_SUCCESS && o.meta_len == 2 &&
          memcmp(o.meta, "M1", 2) == 0);
    CHECK_EQ_INT(pool_results_push(&c->unstored, "id-1", o.meta, o.meta_len), 0);
    CHECK(c->unstored.n == 1 && strcmp(c->unstored.ids[0], "id-1") == 0);
    CHECK(pool_advance(c) == &own1);
    CHECK_EQ_INT(next_full(c, &o), POOL_SKIPPED);
    CHECK_EQ_INT(o.status, POOL_SKIP_CANCELLED);
    CHECK(pool_advance(c) == &own2);
    CHECK_EQ_INT(next_full(c, &o), POOL_STARTED);
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    snprintf(d, sizeof d, "%s", o.detail);
    free(o.detail);
    CHECK_STR(d, "a+b"); /* the CONTROL names came through */
    CHECK(o.child_stores == 0 && o.meta == NULL);
    CHECK(pool_advance(c) == &run);
    CHECK_EQ_INT(next_full(c, &o), POOL_STORED);
    CHECK_EQ_INT(o.status, 1);
    pool_results_clear(&c->unstored);
    CHECK_EQ_INT(c->unstored.n, 0);
    CHECK_EQ_INT(next_full(c, &o), POOL_ACKED);
    pool_owed_clear(c);
    CHECK(!c->busy && c->nowed == 0 && eta);
    pid_t pid = c->pid;
    pool_close(&p);
    int status = 0;
    CHECK(waitpid(pid, &status, 0) == pid);
    pool_free(&p);
}

/* A fetching child that dies with frames it kept (pool_child_keep()) and
 * wrote only the first bytes of: the parent replays the rest from the
 * shared journal; a frame buffered and never kept is not replayed. */
static void dying_child(int fd, int index, void *ud)
{
    (void)index;
    (void)ud;
    struct pool_link l = {.fd = fd, .duplex = 1};
    struct pool_outcome o = {.status = POOL_SUCCESS, .detail = (char *)"written"};
    pool_child_write(&l, POOL_DONE, &o);
    pool_child_flush(&l);
    o.detail = (char *)"kept1";
    pool_child_write(&l, POOL_DONE, &o);
    if (!pool_child_keep(&l))
        _exit(3);
    o.detail = (char *)"kept2";
    o.meta = (char *)"M2";
    o.meta_len = 2;
    o.child_stores = 1;
    pool_child_write(&l, POOL_DONE, &o);
    if (!pool_child_keep(&l))
        _exit(3);
    /* A write cut short by the death: the first 7 bytes of what is kept. */
    if (write(fd, l.out.p, 7) != 7)
        _exit(3);
    o.detail = (char *)"lost";
    o.meta = NULL;
    o.meta_len = 0;
    pool_child_write(&l, POOL_DONE, &o); /* never kept, never written */
    _exit(0);
}

/* A plain (not fetching) child has no journal: nothing can wait unwritten. */
static void plain_keep_child(int fd, int index, void *ud)
{
    (void)index;
    (void)ud;
    struct pool_link l = {.fd = fd};
    pool_child_write(&l, POOL_STARTED, NULL);
    struct pool_outcome o = {.status = POOL_SUCCESS,
                             .detail = pool_child_keep(&l) ? (char *)"kept" : (char *)"not kept"};
    pool_child_write(&l, POOL_DONE, &o);
    pool_child_flush(&l);
    _exit(0);
}

TEST(frames_a_fetching_child_kept_are_replayed_after_it_died)
{
    struct pool p = {.fetching = 1};
    CHECK_EQ_INT(pool_start(&p, 1, dying_child, NULL), 0);
    struct pool_child *c = &p.children[0];
    struct pool_outcome o;
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    CHECK_STR(o.detail, "written");
    free(o.detail);
    free(o.meta);
    CHECK(next_full(c, &o) < 0); /* EOF after 7 bytes of the next frame */
    int status = 0;
    CHECK(waitpid(c->pid, &status, 0) == c->pid);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0);
    CHECK(pool_replay(c) > 0);
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    CHECK_STR(o.detail, "kept1");
    free(o.detail);
    free(o.meta);
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    CHECK_STR(o.detail, "kept2");
    CHECK(o.child_stores == 1 && o.meta_len == 2 && memcmp(o.meta, "M2", 2) == 0);
    free(o.detail);
    free(o.meta);
    CHECK(next_full(c, &o) < 0); /* "lost" was never kept */
    CHECK_EQ_INT(pool_replay(c), 0); /* replayed once */
    pool_forget(c);
    pool_free(&p);

    struct pool q = {0};
    CHECK_EQ_INT(pool_start(&q, 1, plain_keep_child, NULL), 0);
    c = &q.children[0];
    CHECK_EQ_INT(next_full(c, &o), POOL_STARTED);
    CHECK_EQ_INT(next_full(c, &o), POOL_DONE);
    CHECK_STR(o.detail, "not kept");
    free(o.detail);
    free(o.meta);
    CHECK(waitpid(c->pid, &status, 0) == c->pid);
    CHECK_EQ_INT(pool_replay(c), 0);
    pool_forget(c);
    pool_free(&q);
}

/* Malformed delivery payloads are refused, not read past their end. */
TEST(delivery_payload_parse_refuses_short_input)
{
    const char *tag, *queue, *env;
    size_t tl, ql, el;
    CHECK_EQ_INT(pool_delivery_parse("", 0, &tag, &tl, &queue, &ql, &env, &el), CELERIAC_EPROTO);
    CHECK_EQ_INT(pool_delivery_parse("\x05" "ab", 3, &tag, &tl, &queue, &ql, &env, &el),
                 CELERIAC_EPROTO);
    CHECK_EQ_INT(pool_delivery_parse("\x01" "a" "\x05" "q", 4, &tag, &tl, &queue, &ql, &env, &el),
                 CELERIAC_EPROTO);
    CHECK_EQ_INT(pool_delivery_parse("\x01" "a" "\x01" "q", 4, &tag, &tl, &queue, &ql, &env, &el),
                 0);
    CHECK(tl == 1 && ql == 1 && el == 0);
}
