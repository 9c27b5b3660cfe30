/* test_task_publish.c - unit tests for task_publish.c and canvas.c: messages the worker sends (chain steps, callbacks, errbacks, retries) compared with what Celery 5.2's worker sent in the captures (protocol/fixtures), through a broker stand-in that records publishes. */
#include <stdlib.h>
#include <string.h>

#include "backend.h"
#include "canvas.h"
#include "task_message.h"
#include "task_publish.h"
#include "test.h"
#include "value.h"

/* ---- a broker that records what is published -------------------------------- */

#define MAX_SENT 16

struct fake_broker {
    struct broker base;
    char *bodies[MAX_SENT]; /* owned */
    char queues[MAX_SENT][64];
    int priorities[MAX_SENT];
    size_t n;
};

static int fake_connect(struct broker *b)
{
    (void)b;
    return 0;
}

static int fake_publish(struct broker *b, const char *queue, int priority, const char *body,
                        size_t len)
{
    struct fake_broker *f = (struct fake_broker *)b;
    if (f->n == MAX_SENT)
        return CELERIAC_ENOMEM;
    f->bodies[f->n] = strndup(body, len);
    snprintf(f->queues[f->n], sizeof f->queues[0], "%s", queue);
    f->priorities[f->n] = priority;
    f->n++;
    return 0;
}

static const struct broker_ops fake_ops = {
    .name = "fake", .connect_publisher = fake_connect, .publish = fake_publish};

static void fake_clear(struct fake_broker *f)
{
    for (size_t i = 0; i < f->n; i++)
        free(f->bodies[i]);
    f->n = 0;
}

static struct broker *fake_get(void *ud)
{
    return &((struct fake_broker *)ud)->base;
}

static struct canvas_env env_for(struct fake_broker *f, const char *hostname)
{
    f->base.ops = &fake_ops;
    struct canvas_env e = {fake_get, f, NULL, hostname, "03459948-fdbd-34eb-8e9e-a26f2c37f643"};
    return e;
}

/* ---- comparing envelopes ---------------------------------------------------------- */

static celeriac_value *parse(const char *text)
{
    celeriac_value *v = celeriac_value_from_json(text, strlen(text));
    CHECK(v != NULL);
    return v;
}

static celeriac_value *fixture_json(const char *name)
{
    size_t len;
    char *text = test_fixture(name, &len);
    celeriac_value *v = celeriac_value_from_json(text, len);
    free(text);
    CHECK(v != NULL);
    return v;
}

static void check_same(const celeriac_value *got, const celeriac_value *want)
{
    char *g = celeriac_value_to_json(got), *w = celeriac_value_to_json(want);
    CHECK_STR(g, w);
    free(g);
    free(w);
}

/* The sent envelope equals the captured one byte for byte in body, headers and
 * properties, apart from the delivery tag (random) and members named in skip
 * (headers) which are only checked for presence. */
static void check_envelope(const char *sent, const char *fixture, const char *const *skip)
{
    celeriac_value *got = parse(sent), *want = fixture_json(fixture);
    CHECK_STR(value_get_str(got, "body"), value_get_str(want, "body"));
    CHECK_STR(value_get_str(got, "content-type"), "application/json");
    CHECK_STR(value_get_str(got, "content-encoding"), "utf-8");
    celeriac_value *gh = value_take(got, "headers"), *wh = value_take(want, "headers");
    char *sent_id = strdup(value_get_str(gh, "id") ? value_get_str(gh, "id") : "");
    for (size_t i = 0; skip && skip[i]; i++) {
        CHECK(celeriac_value_get(gh, skip[i]) != NULL);
        celeriac_value_set(gh, skip[i], celeriac_value_new_null());
        celeriac_value_set(wh, skip[i], celeriac_value_new_null());
    }
    check_same(gh, wh);
    celeriac_value *gp = value_take(got, "properties"), *wp = value_take(want, "properties");
    CHECK(strlen(value_get_str(gp, "delivery_tag")) == 36);
    celeriac_value_free(value_take(gp, "delivery_tag"));
    celeriac_value_free(value_take(wp, "delivery_tag"));
    for (size_t i = 0; skip && skip[i]; i++)
        if (strcmp(skip[i], "id") == 0) { /* a random id: correlation_id follows it */
            CHECK_STR(value_get_str(gp, "correlation_id"), sent_id);
            celeriac_value_free(value_take(gp, "correlation_id"));
            celeriac_value_free(value_take(wp, "correlation_id"));
        }
    check_same(gp, wp);
    free(sent_id);
    celeriac_value_free(gh);
    celeriac_value_free(wh);
    celeriac_value_free(gp);
    celeriac_value_free(wp);
    celeriac_value_free(got);
    celeriac_value_free(want);
}

static void decode_fixture(const char *name, struct task_message *m)
{
    size_t len;
    char err[256];
    char *text = test_fixture(name, &len);
    CHECK_EQ_INT(task_message_decode(text, len, NULL, m, err, sizeof err), 0);
    free(text);
}

static void decode_sent(const char *text, struct task_message *m)
{
    char err[256];
    CHECK_EQ_INT(task_message_decode(text, strlen(text), NULL, m, err, sizeof err), 0);
}

/* ---- the encoder ------------------------------------------------------------------ */

TEST(encode_matches_worker_sent_chain_step)
{
    /* Rebuild task-v2-chain-step2-sent-by-worker from its own fields. */
    struct task_message m = {0};
    decode_fixture("task-v2-chain-step2-sent-by-worker.json", &m);
    struct task_publish p = {
        .id = m.id, .task = m.task, .args = m.args, .kwargs = m.kwargs,
        .chain = celeriac_value_get(m.embed, "chain"), .root_id = m.root_id,
        .parent_id = m.parent_id, .origin = m.origin, .reply_to = m.reply_to,
    };
    struct buf out = {0};
    CHECK_EQ_INT(task_publish_encode(&p, &out), 0);
    check_envelope(out.p, "task-v2-chain-step2-sent-by-worker.json", NULL);
    /* And it decodes to the same request. */
    struct task_message back = {0};
    decode_sent(out.p, &back);
    CHECK_STR(back.id, m.id);
    CHECK_STR(back.argsrepr, "(4, 4)");
    CHECK_STR(back.routing_key, "celery");
    CHECK_STR(task_publish_queue(&p), "celery");
    task_message_clear(&back);
    buf_free(&out);
    task_message_clear(&m);
}

TEST(encode_refuses_missing_fields)
{
    struct buf out = {0};
    struct task_publish p = {.task = "x"};
    CHECK_EQ_INT(task_publish_encode(&p, &out), CELERIAC_EINVAL);
    celeriac_value *notarray = celeriac_value_new_object();
    struct task_publish q = {.id = "i", .task = "x", .args = notarray};
    CHECK_EQ_INT(task_publish_encode(&q, &out), CELERIAC_EINVAL);
    celeriac_value_free(notarray);
    CHECK(out.p == NULL);
}

TEST(encode_limits_group_priority_queue)
{
    celeriac_value *hard = celeriac_value_new_int(60), *soft = celeriac_value_new_double(1.5);
    celeriac_value *index = celeriac_value_new_int(3);
    struct task_publish p = {.id = "abc", .task = "t", .time_limit = hard, .soft_time_limit = soft,
                             .group_id = "g1", .group_index = index, .priority = 6,
                             .queue = "documents", .eta = "2026-11-23T17:01:16.868129+00:00",
                             .retries = 2};
    struct buf out = {0};
    CHECK_EQ_INT(task_publish_encode(&p, &out), 0);
    CHECK(strstr(out.p, "\"timelimit\": [60, 1.5]") != NULL);
    CHECK(strstr(out.p, "\"group\": \"g1\", \"group_index\": 3, \"retries\": 2") != NULL);
    CHECK(strstr(out.p, "\"root_id\": \"abc\", \"parent_id\": null, \"argsrepr\": \"()\", "
                        "\"kwargsrepr\": \"{}\", \"origin\": null") != NULL);
    CHECK(strstr(out.p, "\"delivery_info\": {\"exchange\": \"\", \"routing_key\": \"documents\"}, "
                        "\"priority\": 6") != NULL);
    struct task_message m = {0};
    decode_sent(out.p, &m);
    CHECK_EQ_INT(m.priority, 6);
    CHECK_EQ_INT(m.retries, 2);
    CHECK(m.time_limit == 60 && m.soft_time_limit == 1.5);
    CHECK(m.eta > 1.7e9);
    task_message_clear(&m);
    buf_free(&out);
    celeriac_value_free(hard);
    celeriac_value_free(soft);
    celeriac_value_free(index);
}

/* ---- canvas: what a finished task sends ---------------------------------------- */

TEST(chain_next_step_as_celery_sends_it)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "gen24144@vm");
    struct task_message m = {0};
    decode_fixture("task-v2-chain-step1.json", &m); /* add(2, 2) | add.s(4) | add.s(8) */
    celeriac_value *retval = celeriac_value_new_int(4), *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, children), 0);
    CHECK_EQ_INT(f.n, 1);
    check_envelope(f.bodies[0], "task-v2-chain-step2-sent-by-worker.json", NULL);
    CHECK_STR(f.queues[0], "celery");
    /* The stored meta's children, as in result-success-with-children. */
    char *json = celeriac_value_to_json(children);
    CHECK_STR(json, "[[[\"f1af2739-a2ac-4bb8-8bd0-bcdb154eee85\", null], null]]");
    free(json);
    struct result_meta rm = {.task_id = m.id, .status = "SUCCESS", .result = retval,
                             .ready = 1, .children = children};
    json = backend_encode_meta(&rm, NULL);
    CHECK(strstr(json, "\"result\": 4, \"traceback\": null, \"children\": [[[\"f1af2739-a2ac-"
                       "4bb8-8bd0-bcdb154eee85\", null], null]], \"date_done\": ") != NULL);
    free(json);
    /* The step after: the chain ends with [] (not null). */
    struct task_message step2 = {0};
    decode_sent(f.bodies[0], &step2);
    fake_clear(&f);
    celeriac_value_free(retval);
    retval = celeriac_value_new_int(8);
    CHECK_EQ_INT(canvas_on_success(&e, &step2, retval, NULL), 0);
    CHECK_EQ_INT(f.n, 1);
    check_envelope(f.bodies[0], "task-v2-chain-step3-sent-by-worker.json", NULL);
    fake_clear(&f);
    task_message_clear(&step2);
    celeriac_value_free(retval);
    celeriac_value_free(children);
    task_message_clear(&m);
}

TEST(link_callback_gets_retval_prepended)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "gen24144@vm");
    struct task_message m = {0};
    decode_fixture("task-v2-link-link_error.json", &m);
    const char *doc = "{\"doc_id\": \"doc-103\", \"pages\": 1, \"status\": \"done\"}";
    celeriac_value *retval = celeriac_value_from_json(doc, strlen(doc));
    celeriac_value *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, children), 0);
    CHECK_EQ_INT(f.n, 1);
    /* Same bytes as Celery's worker sent, but for the ids of this other run. */
    static const char *const ids[] = {"id", "root_id", "parent_id", NULL};
    check_envelope(f.bodies[0], "task-v2-link-callback-sent-by-worker.json", ids);
    struct task_message cb = {0};
    decode_sent(f.bodies[0], &cb);
    CHECK_STR(cb.parent_id, m.id);
    CHECK_STR(cb.root_id, m.id);
    CHECK_STR(cb.correlation_id, cb.id);
    CHECK_EQ_INT(celeriac_value_len(children), 1);
    task_message_clear(&cb);
    fake_clear(&f);
    celeriac_value_free(retval);
    celeriac_value_free(children);
    task_message_clear(&m);
}

TEST(errback_sent_as_group_with_failed_id)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "gen24144@vm");
    struct task_message m = {0};
    decode_fixture("task-v2-link-link_error.json", &m);
    celeriac_value *exc = backend_exception("builtins", "ValueError", "boom");
    canvas_on_failure(&e, &m, exc, "tb", 0);
    CHECK_EQ_INT(f.n, 1);
    struct task_message eb = {0}, want = {0};
    decode_sent(f.bodies[0], &eb);
    decode_fixture("task-v2-errback-sent-by-worker.json", &want);
    CHECK_STR(eb.task, want.task);
    CHECK(eb.group != NULL && strlen(eb.group) == 36);
    CHECK_EQ_INT(eb.has_group_index, 0);
    CHECK_STR(eb.parent_id, m.id);
    CHECK_STR(eb.root_id, m.id);
    CHECK_EQ_INT(celeriac_value_len(eb.args), 1);
    CHECK_STR(celeriac_value_string(celeriac_value_at(eb.args, 0), NULL), m.id);
    check_same(eb.embed, want.embed);
    check_same(eb.kwargs, want.kwargs);
    task_message_clear(&eb);
    task_message_clear(&want);
    fake_clear(&f);
    celeriac_value_free(exc);
    task_message_clear(&m);
}

TEST(retry_republishes_same_id)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "gen24144@vm");
    struct task_message m = {0};
    /* The republished message, taken as the one being retried (retries 1). */
    decode_fixture("task-v2-retry-republished.json", &m);
    celeriac_value *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_retry(&e, &m, 1.0, children), 0);
    CHECK_EQ_INT(f.n, 1);
    celeriac_value *got = parse(f.bodies[0]);
    celeriac_value *want = fixture_json("task-v2-retry-republished.json");
    CHECK_STR(value_get_str(got, "body"), value_get_str(want, "body"));
    struct task_message r = {0};
    decode_sent(f.bodies[0], &r);
    CHECK_STR(r.id, m.id);
    CHECK_EQ_INT(r.retries, 2);
    CHECK_STR(r.parent_id, m.parent_id);
    CHECK_STR(r.root_id, m.root_id);
    CHECK(r.eta > 0);
    const char *eta = value_get_str(r.headers, "eta");
    CHECK(eta && strlen(eta) == 32 && strcmp(eta + 26, "+00:00") == 0);
    const celeriac_value *props = celeriac_value_get(got, "properties");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(props, "replaced_task_nesting")), 0);
    CHECK_STR(value_get_str(props, "origin"), "gen24144@vm");
    CHECK_STR(value_get_str(props, "reply_to"), "31a6952b-68fc-347f-9a7d-492f3ea0aefd");
    char *json = celeriac_value_to_json(children);
    CHECK_STR(json, "[[[\"d08b54ab-7668-4a7a-bcd7-0022e8e5088a\", null], null]]");
    free(json);
    /* A first run (no parent) gets its own id as parent_id, as 5.2.6 does. */
    m.parent_id = NULL; /* in the message's strings block: task_message_clear() frees it */
    fake_clear(&f);
    CHECK_EQ_INT(canvas_retry(&e, &m, 0, NULL), 0);
    task_message_clear(&r);
    decode_sent(f.bodies[0], &r);
    CHECK_STR(r.parent_id, m.id);
    CHECK(r.eta == 0);
    task_message_clear(&r);
    fake_clear(&f);
    celeriac_value_free(got);
    celeriac_value_free(want);
    celeriac_value_free(children);
    task_message_clear(&m);
}

/* A message carrying the embed given as JSON, for canvas tests. */
static void message_with_embed(struct task_message *m, const char *embed)
{
    memset(m, 0, sizeof *m);
    m->id = strdup("11111111-1111-4111-8111-111111111111");
    m->task = strdup("examples.add");
    m->args = celeriac_value_from_json("[1, 2]", 6);
    m->kwargs = celeriac_value_new_object();
    m->embed = celeriac_value_from_json(embed, strlen(embed));
    m->headers = celeriac_value_new_object();
    CHECK(m->embed != NULL);
}

TEST(several_callbacks_form_one_group)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "node@host");
    struct task_message m;
    message_with_embed(&m, "{\"callbacks\": ["
                           "{\"task\": \"a\", \"args\": [], \"kwargs\": {}, \"options\": {}, "
                           "\"subtask_type\": null, \"immutable\": false},"
                           "{\"task\": \"b\", \"args\": [9], \"kwargs\": {}, \"options\": "
                           "{\"task_id\": \"bbbb\", \"queue\": \"q2\", \"priority\": 9}, "
                           "\"subtask_type\": null, \"immutable\": true}],"
                           "\"errbacks\": null, \"chain\": null, \"chord\": null}");
    celeriac_value *retval = celeriac_value_new_int(3), *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, children), 0);
    CHECK_EQ_INT(f.n, 2);
    struct task_message a = {0}, b = {0};
    decode_sent(f.bodies[0], &a);
    decode_sent(f.bodies[1], &b);
    CHECK(a.group && b.group && strcmp(a.group, b.group) == 0);
    CHECK_STR(a.argsrepr, "(3,)");
    CHECK_STR(b.argsrepr, "(9,)"); /* immutable: no retval */
    CHECK_STR(b.id, "bbbb");
    CHECK_STR(f.queues[1], "q2");
    CHECK_EQ_INT(f.priorities[1], 9);
    CHECK_STR(a.origin, "node@host");
    /* children: one group tuple [[gid, null], [[[a, null], null], [[b, null], null]]]. */
    CHECK_EQ_INT(celeriac_value_len(children), 1);
    const celeriac_value *g = celeriac_value_at(children, 0);
    CHECK_STR(celeriac_value_string(celeriac_value_at(celeriac_value_at(g, 0), 0), NULL), a.group);
    CHECK_EQ_INT(celeriac_value_len(celeriac_value_at(g, 1)), 2);
    task_message_clear(&a);
    task_message_clear(&b);
    fake_clear(&f);
    celeriac_value_free(retval);
    celeriac_value_free(children);
    task_message_clear(&m);
}

TEST(nested_chain_and_group_callbacks)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "node@host");
    struct task_message m;
    message_with_embed(
        &m, "{\"callbacks\": [{\"task\": \"celery.chain\", \"args\": [], \"kwargs\": {\"tasks\": ["
            "{\"task\": \"s1\", \"args\": [1], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
            "null, \"immutable\": false},"
            "{\"task\": \"s2\", \"args\": [], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
            "null, \"immutable\": false},"
            "{\"task\": \"s3\", \"args\": [], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
            "null, \"immutable\": false}]}, \"options\": {}, \"subtask_type\": \"chain\", "
            "\"immutable\": false}], \"errbacks\": null, \"chord\": null,"
            "\"chain\": [{\"task\": \"celery.group\", \"args\": [], \"kwargs\": {\"tasks\": ["
            "{\"task\": \"g1\", \"args\": [], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
            "null, \"immutable\": false},"
            "{\"task\": \"g2\", \"args\": [], \"kwargs\": {}, \"options\": {}, \"subtask_type\": "
            "null, \"immutable\": false}]}, \"options\": {\"task_id\": \"gggg\"}, "
            "\"subtask_type\": \"group\", \"immutable\": false}]}");
    celeriac_value *retval = celeriac_value_new_int(5), *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, children), 0);
    CHECK_EQ_INT(f.n, 3); /* s1 (chain head), g1, g2 */
    struct task_message s1 = {0}, g1 = {0}, g2 = {0};
    decode_sent(f.bodies[0], &s1);
    decode_sent(f.bodies[1], &g1);
    decode_sent(f.bodies[2], &g2);
    CHECK_STR(s1.task, "s1");
    CHECK_STR(s1.argsrepr, "(5, 1)");
    const celeriac_value *rest = celeriac_value_get(s1.embed, "chain");
    CHECK_EQ_INT(celeriac_value_len(rest), 2);
    CHECK_STR(value_get_str(celeriac_value_at(rest, 0), "task"), "s3"); /* reversed */
    CHECK(value_get_str(celeriac_value_get(celeriac_value_at(rest, 0), "options"), "task_id"));
    CHECK_STR(g1.group, "gggg");
    CHECK_STR(g2.group, "gggg");
    CHECK_STR(g1.argsrepr, "(5,)");
    CHECK_STR(g1.parent_id, m.id);
    CHECK_EQ_INT(celeriac_value_len(children), 2);
    task_message_clear(&s1);
    task_message_clear(&g1);
    task_message_clear(&g2);
    fake_clear(&f);
    celeriac_value_free(retval);
    celeriac_value_free(children);
    task_message_clear(&m);
}

TEST(unsupported_signature_is_not_sent)
{
    struct fake_broker f = {0};
    struct canvas_env e = env_for(&f, "node@host");
    struct task_message m;
    message_with_embed(&m, "{\"callbacks\": [{\"task\": \"x\", \"args\": [], \"kwargs\": {}, "
                           "\"options\": {\"task_id\": \"xx\"}, \"subtask_type\": \"weird\", "
                           "\"immutable\": false}], \"errbacks\": null, \"chain\": null, "
                           "\"chord\": null}");
    celeriac_value *retval = celeriac_value_new_null();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, NULL), CELERIAC_EUNSUPPORTED);
    CHECK_EQ_INT(f.n, 0);
    celeriac_value_free(retval);
    task_message_clear(&m);
}

TEST(exception_repr_as_python)
{
    celeriac_value *e = backend_exception("builtins", "ValueError", "it's bad");
    char *r = canvas_exception_repr(e);
    CHECK_STR(r, "ValueError(\"it's bad\")");
    free(r);
    celeriac_value_free(e);
    const char *doc = "{\"exc_type\": \"E\", \"exc_message\": [], \"exc_module\": \"m\"}";
    e = celeriac_value_from_json(doc, strlen(doc));
    r = canvas_exception_repr(e);
    CHECK_STR(r, "E()");
    free(r);
    celeriac_value_free(e);
}

/* ---- a backend that records chord sizes and stores ------------------------------- */

struct fake_backend {
    struct backend base;
    long chord_size;
    char gid[64];
    size_t stores;
};

static int fb_store(struct backend *b, const char *task_id, const char *json, size_t len)
{
    (void)task_id;
    (void)json;
    (void)len;
    ((struct fake_backend *)b)->stores++;
    return 0;
}

static int fb_set_size(struct backend *b, const char *gid, long size)
{
    struct fake_backend *f = (struct fake_backend *)b;
    f->chord_size = size;
    snprintf(f->gid, sizeof f->gid, "%s", gid);
    return 0;
}

static const struct backend_ops fb_ops = {
    .scheme = "fake", .store = fb_store, .chord_set_size = fb_set_size};

TEST(chain_step_that_is_a_chord)
{
    /* chain(add, group(add.s(1), add.s(2)), tsum.s()) as Celery's producer sends
     * it: the second step is a chord signature; the worker applies it. */
    struct fake_broker f = {0};
    struct fake_backend fb = {.base = {.ops = &fb_ops}};
    struct canvas_env e = env_for(&f, "node@host");
    e.backend = &fb.base;
    struct task_message m;
    message_with_embed(
        &m, "{\"callbacks\": null, \"errbacks\": null, \"chord\": null, \"chain\": [{\"task\": "
            "\"celery.chord\", \"args\": [], \"kwargs\": {\"kwargs\": {}, \"header\": {\"task\": "
            "\"celery.group\", \"args\": [], \"kwargs\": {\"tasks\": ["
            "{\"task\": \"examples.add\", \"args\": [1], \"kwargs\": {}, \"options\": "
            "{\"task_id\": \"h0\"}, \"subtask_type\": null, \"immutable\": false},"
            "{\"task\": \"examples.add\", \"args\": [2], \"kwargs\": {}, \"options\": "
            "{\"task_id\": \"h1\"}, \"subtask_type\": null, \"immutable\": false}]}, "
            "\"options\": {\"task_id\": \"gid\"}, \"subtask_type\": \"group\", \"immutable\": "
            "false}, \"body\": {\"task\": \"examples.tsum\", \"args\": [], \"kwargs\": {}, "
            "\"options\": {\"task_id\": \"body\"}, \"subtask_type\": null, \"immutable\": false}}, "
            "\"options\": {\"task_id\": \"gid\"}, \"subtask_type\": \"chord\", "
            "\"immutable\": false}]}");
    celeriac_value *retval = celeriac_value_new_int(2), *children = celeriac_value_new_array();
    CHECK_EQ_INT(canvas_on_success(&e, &m, retval, children), 0);
    CHECK_EQ_INT(fb.chord_size, 2);
    CHECK_STR(fb.gid, "gid");
    CHECK_EQ_INT(f.n, 2);
    for (size_t i = 0; i < 2; i++) {
        struct task_message h = {0};
        decode_sent(f.bodies[i], &h);
        CHECK_STR(h.id, i ? "h1" : "h0");
        CHECK_STR(h.group, "gid");
        CHECK_EQ_INT(h.has_group_index, 1);
        CHECK_EQ_INT(h.group_index, (long)i);
        CHECK_STR(h.argsrepr, i ? "(2, 2)" : "(2, 1)");
        CHECK_STR(value_get_str(celeriac_value_get(h.embed, "chord"), "task"), "examples.tsum");
        CHECK_STR(value_get_str(celeriac_value_get(celeriac_value_get(h.embed, "chord"),
                                                   "options"), "task_id"), "body");
        CHECK(celeriac_value_type(celeriac_value_get(h.embed, "chain")) == CELERIAC_NULL);
        CHECK_STR(h.parent_id, m.id);
        task_message_clear(&h);
    }
    char *json = celeriac_value_to_json(children);
    CHECK_STR(json, "[[[\"gid\", null], [[[\"h0\", null], null], [[\"h1\", null], null]]]]");
    free(json);
    fake_clear(&f);
    celeriac_value_free(retval);
    celeriac_value_free(children);
    task_message_clear(&m);
}

TEST(failed_chain_marks_remaining_steps)
{
    struct fake_broker f = {0};
    struct fake_backend fb = {.base = {.ops = &fb_ops}};
    struct canvas_env e = env_for(&f, "node@host");
    e.backend = &fb.base;
    struct task_message m = {0};
    decode_fixture("task-v2-chain-step1.json", &m); /* two steps remain */
    celeriac_value *exc = backend_exception("builtins", "ValueError", "x");
    canvas_on_failure(&e, &m, exc, "tb", 1);
    CHECK_EQ_INT(fb.stores, 2);
    CHECK_EQ_INT(f.n, 0); /* no errbacks */
    fb.stores = 0;
    canvas_on_failure(&e, &m, exc, "tb", 0); /* the task's own result was not stored */
    CHECK_EQ_INT(fb.stores, 0);
    celeriac_value_free(exc);
    task_message_clear(&m);
}
