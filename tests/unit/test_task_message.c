/* test_task_message.c - unit tests for task_message.c: golden decodes of real Celery 5.2 captures (protocol/fixtures) and malformed envelopes. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "task_message.h"
#include "test.h"
#include "value.h"

static int decode_fixture(const char *name, struct task_message *m, char *err, size_t errlen)
{
    size_t len;
    char *text = test_fixture(name, &len);
    int rc = task_message_decode(text, len, NULL, m, err, errlen);
    free(text);
    return rc;
}

static int decode_str(const char *text, struct task_message *m, char *err, size_t errlen)
{
    return task_message_decode(text, strlen(text), NULL, m, err, errlen);
}

static void check_json(const celeriac_value *v, const char *want)
{
    char *j = celeriac_value_to_json(v);
    CHECK_STR(j, want);
    free(j);
}

/* Compares args, kwargs and embed with the "body" of
 * protocol/fixtures/decoded/<name> (Python's own decode of the capture). */
static void check_against_decoded(const char *name, const struct task_message *m)
{
    char path[256];
    snprintf(path, sizeof path, "decoded/%s", name);
    size_t len;
    char *text = test_fixture(path, &len);
    celeriac_value *d = celeriac_value_from_json(text, len);
    free(text);
    CHECK(d != NULL);
    const celeriac_value *body = celeriac_value_get(d, "body");
    const celeriac_value *args, *kwargs, *embed = NULL;
    if (celeriac_value_type(body) == CELERIAC_ARRAY) {
        args = celeriac_value_at(body, 0);
        kwargs = celeriac_value_at(body, 1);
        embed = celeriac_value_at(body, 2);
    } else {
        args = celeriac_value_get(body, "args");
        kwargs = celeriac_value_get(body, "kwargs");
    }
    char *want = celeriac_value_to_json(args), *got = celeriac_value_to_json(m->args);
    CHECK_STR(got, want);
    free(want);
    free(got);
    want = celeriac_value_to_json(kwargs);
    got = celeriac_value_to_json(m->kwargs);
    CHECK_STR(got, want);
    free(want);
    free(got);
    if (embed && celeriac_value_type(celeriac_value_get(embed, "callbacks")) != CELERIAC_NULL) {
        want = celeriac_value_to_json(celeriac_value_get(embed, "callbacks"));
        got = celeriac_value_to_json(celeriac_value_get(m->embed, "callbacks"));
        CHECK_STR(got, want);
        free(want);
        free(got);
    }
    static const char *const keys[] = {"callbacks", "errbacks", "chain", "chord"};
    for (size_t i = 0; embed && i < 4; i++) {
        want = celeriac_value_to_json(celeriac_value_get(embed, keys[i]));
        got = celeriac_value_to_json(celeriac_value_get(m->embed, keys[i]));
        CHECK_STR(got, want);
        free(want);
        free(got);
    }
    celeriac_value_free(d);
}

TEST(golden_v2_json_basic)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-json-basic.json", &m, err, sizeof err), 0);
    CHECK_EQ_INT(m.protocol, 2);
    CHECK_STR(m.id, "bf46231f-4266-403d-bef5-695e13f7aa57");
    CHECK_STR(m.task, "process_document");
    CHECK(m.shadow == NULL);
    CHECK_STR(m.root_id, "bf46231f-4266-403d-bef5-695e13f7aa57");
    CHECK(m.parent_id == NULL);
    CHECK(m.group == NULL);
    CHECK_EQ_INT(m.has_group_index, 0);
    CHECK_EQ_INT(m.retries, 0);
    CHECK(m.eta == 0 && m.expires == 0);
    CHECK(m.time_limit == 60.0);
    CHECK(m.soft_time_limit == 50.0);
    CHECK_EQ_INT(m.ignore_result, 0);
    CHECK_EQ_INT(m.redelivered, 0);
    CHECK_STR(m.origin, "gen24138@vm");
    CHECK_STR(m.argsrepr, "['doc-1']");
    CHECK_STR(m.kwargsrepr, "{'pages': 3, 'lang': 'en'}");
    CHECK_STR(m.content_type, "application/json");
    CHECK_STR(m.content_encoding, "utf-8");
    CHECK(m.compression == NULL);
    CHECK_STR(m.correlation_id, "bf46231f-4266-403d-bef5-695e13f7aa57");
    CHECK_STR(m.reply_to, "31a6952b-68fc-347f-9a7d-492f3ea0aefd");
    CHECK_STR(m.delivery_tag, "6ed911d7-b930-4c01-9c56-2f341c0e3a6c");
    CHECK_STR(m.exchange, "");
    CHECK_STR(m.routing_key, "celery");
    CHECK_EQ_INT(m.priority, 0);
    check_json(m.args, "[\"doc-1\"]");
    check_json(m.kwargs, "{\"pages\": 3, \"lang\": \"en\"}");
    check_json(m.embed, "{\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}");
    CHECK_STR(value_get_str(m.headers, "x-trace-id"), "abc123");
    CHECK_STR(value_get_str(m.headers, "lang"), "py");
    CHECK_STR(task_message_display_name(&m), "process_document");
    check_against_decoded("task-v2-json-basic.json", &m);
    task_message_clear(&m);
    CHECK(m.id == NULL && m.args == NULL);
    task_message_clear(&m);
}

TEST(golden_v2_msgpack)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-msgpack.json", &m, err, sizeof err), 0);
    CHECK_STR(m.id, "d1db7f6d-22a5-43d5-b497-50e48bfc6823");
    CHECK_STR(m.content_type, "application/x-msgpack");
    CHECK_STR(m.content_encoding, "binary");
    CHECK(m.time_limit == 0 && m.soft_time_limit == 0);
    check_json(m.args, "[\"doc-2\"]");
    check_json(m.kwargs, "{\"pages\": 1}");
    check_against_decoded("task-v2-msgpack.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_zlib)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-zlib.json", &m, err, sizeof err), 0);
    CHECK_STR(m.id, "97af1005-f5ea-47a9-a4af-befc0a60b996");
    CHECK_STR(m.compression, "application/x-gzip");
    check_json(m.args, "[\"doc-11\"]");
    check_json(m.kwargs, "{}");
    check_against_decoded("task-v2-zlib.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_countdown_expires)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-countdown-expires.json", &m, err, sizeof err), 0);
    CHECK_STR(m.id, "77ebfde2-bf9d-4610-bd12-bf1ac4d1c503");
    /* 2026-11-23T17:01:16.590496+00:00 and 17:02:46.590496+00:00 */
    CHECK(fabs(m.eta - 1795453276.590496) < 1e-6);
    CHECK(fabs(m.expires - 1795453366.590496) < 1e-6);
    check_against_decoded("task-v2-countdown-expires.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_priority9)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-priority9.json", &m, err, sizeof err), 0);
    CHECK_STR(m.id, "761a381d-4fc6-4452-b2b6-60c6bbee7383");
    CHECK_EQ_INT(m.priority, 9);
    check_json(m.args, "[\"doc-4b\"]");
    task_message_clear(&m);
}

TEST(golden_v1_json_countdown)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v1-json-countdown.json", &m, err, sizeof err), 0);
    CHECK_EQ_INT(m.protocol, 1);
    CHECK_STR(m.id, "6f31ef36-9e75-49a1-b0c0-19632f140d6a");
    CHECK_STR(m.task, "process_document");
    CHECK(fabs(m.eta - 1795453257.107637) < 1e-6); /* 2026-11-23T17:00:57.107637+00:00 */
    CHECK(m.expires == 0);
    CHECK(m.group == NULL);
    CHECK(m.root_id == NULL && m.argsrepr == NULL);
    CHECK_STR(m.delivery_tag, "77c33c4a-7f71-4d8d-bf35-daf84bca973c");
    CHECK_STR(m.reply_to, "afa131ff-7752-3c8c-854a-daeb0ada89ab");
    check_json(m.args, "[\"doc-12\"]");
    check_json(m.kwargs, "{\"pages\": 2}");
    check_json(m.embed, "{\"callbacks\": null, \"errbacks\": null, \"chord\": null, \"chain\": null}");
    CHECK_EQ_INT(celeriac_value_len(m.headers), 0);
    check_against_decoded("task-v1-json-countdown.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_chain_first)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-chain-first.json", &m, err, sizeof err), 0);
    const celeriac_value *chain = celeriac_value_get(m.embed, "chain");
    CHECK_EQ_INT(celeriac_value_type(chain), CELERIAC_ARRAY);
    CHECK_EQ_INT(celeriac_value_len(chain), 2);
    CHECK_STR(value_get_str(celeriac_value_at(chain, 0), "task"), "add");
    CHECK_STR(value_get_str(celeriac_value_at(chain, 1), "task"), "log_result");
    const celeriac_value *opts = celeriac_value_get(celeriac_value_at(chain, 0), "options");
    CHECK_STR(value_get_str(opts, "task_id"), "1a0450ac-2687-46fa-b4c8-a6bc1acbd74a");
    CHECK_EQ_INT(celeriac_value_bool(celeriac_value_get(celeriac_value_at(chain, 0), "immutable")), 1);
    check_against_decoded("task-v2-chain-first.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_link_link_error)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-link-link_error.json", &m, err, sizeof err), 0);
    const celeriac_value *cb = celeriac_value_get(m.embed, "callbacks");
    const celeriac_value *eb = celeriac_value_get(m.embed, "errbacks");
    CHECK_EQ_INT(celeriac_value_len(cb), 1);
    CHECK_EQ_INT(celeriac_value_len(eb), 1);
    CHECK_STR(value_get_str(celeriac_value_at(cb, 0), "task"), "log_result");
    CHECK_STR(value_get_str(celeriac_value_at(eb, 0), "task"), "on_error");
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(m.embed, "chain")), CELERIAC_NULL);
    check_against_decoded("task-v2-link-link_error.json", &m);
    task_message_clear(&m);
}

TEST(golden_v2_restored_redelivered)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-restored-after-visibility-timeout.json", &m, err, sizeof err), 0);
    CHECK_STR(m.task, "late_sleepy");
    CHECK_EQ_INT(m.redelivered, 1);
    check_json(m.args, "[4]");
    task_message_clear(&m);
}

TEST(golden_v2_pickle_refused_with_id)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-pickle.json", &m, err, sizeof err), CELERIAC_ECONTENT);
    CHECK(strstr(err, "application/x-python-serialize") != NULL);
    CHECK(strstr(err, "pickle") != NULL);
    CHECK_STR(m.id, "59c23221-ffc2-4ce6-81c1-71ff0aae2a24");
    CHECK_STR(m.task, "process_document");
    CHECK_STR(m.delivery_tag, "b3069794-da36-4e19-9669-94cebeb92cf6");
    CHECK_STR(m.reply_to, "31a6952b-68fc-347f-9a7d-492f3ea0aefd");
    CHECK(m.args == NULL);
    task_message_clear(&m);
}

TEST(golden_v2_yaml_refused_with_id)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-yaml.json", &m, err, sizeof err), CELERIAC_ECONTENT);
    CHECK(strstr(err, "yaml") != NULL);
    CHECK_STR(m.id, "de56c87c-d4e9-47da-afee-dc8d1b146d6f");
    CHECK_STR(m.delivery_tag, "d2f7d77b-4e86-4392-b470-c5b078534315");
    task_message_clear(&m);
}

TEST(golden_v2_unknown_task)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_fixture("task-v2-unknown-task.json", &m, err, sizeof err), 0);
    CHECK_STR(m.task, "no_such_task");
    CHECK_STR(m.id, "d7ef32f9-bcf3-4033-825a-b6816f87eb26");
    check_json(m.args, "[1]");
    task_message_clear(&m);
}

TEST(golden_every_task_fixture)
{
    /* Every task capture decodes and agrees with Python's decode, except the
     * refused serializers. */
    size_t len;
    char *text = test_fixture("index.json", &len);
    celeriac_value *index = celeriac_value_from_json(text, len);
    free(text);
    CHECK(index != NULL);
    int seen = 0;
    for (size_t i = 0; i < celeriac_value_len(index); i++) {
        const char *file = value_get_str(celeriac_value_at(index, i), "file");
        if (!file || strncmp(file, "task-", 5) != 0)
            continue;
        struct task_message m;
        char err[256] = "";
        int rc = decode_fixture(file, &m, err, sizeof err);
        int refused = strstr(file, "pickle") || strstr(file, "yaml");
        if (rc != (refused ? CELERIAC_ECONTENT : 0))
            fprintf(stderr, "  %s: %d %s\n", file, rc, err);
        CHECK_EQ_INT(rc, refused ? CELERIAC_ECONTENT : 0);
        CHECK(m.id != NULL && m.task != NULL && m.delivery_tag != NULL);
        if (rc == 0)
            check_against_decoded(file, &m);
        task_message_clear(&m);
        seen++;
    }
    CHECK(seen >= 20);
    celeriac_value_free(index);
}

/* A protocol 2 envelope around an arbitrary body text (base64-encoded here). */
static char *envelope(const char *body, const char *extra_headers, const char *content_type)
{
    char *b64 = codec_base64_encode(body, strlen(body), NULL);
    size_t n = strlen(b64) + 1024 + strlen(extra_headers);
    char *e = malloc(n);
    snprintf(e, n,
             "{\"body\": \"%s\", \"content-encoding\": \"utf-8\", \"content-type\": \"%s\", "
             "\"headers\": {\"task\": \"t\", \"id\": \"id-1\"%s}, \"properties\": "
             "{\"correlation_id\": \"id-1\", \"reply_to\": \"r\", \"delivery_info\": "
             "{\"exchange\": \"\", \"routing_key\": \"celery\"}, \"priority\": 0, "
             "\"body_encoding\": \"base64\", \"delivery_tag\": \"tag-1\"}}",
             b64, content_type, extra_headers);
    free(b64);
    return e;
}

static int decode_env(const char *body, const char *extra, const char *ct, struct task_message *m,
                      char *err, size_t errlen)
{
    char *e = envelope(body, extra, ct);
    int rc = decode_str(e, m, err, errlen);
    free(e);
    return rc;
}

TEST(malformed_envelopes)
{
    const char *bad[] = {
        "not json",
        "{\"body\": \"W1tdLCB7fSwge31d\", \"headers\": {\"task\": \"t\"",
        "[1, 2]",
        "{}",
        "{\"headers\": [], \"body\": \"\"}",
        "{\"headers\": {\"task\": 123}, \"body\": \"\"}",
        "{\"headers\": {}, \"properties\": 5}",
        "{\"headers\": {\"task\": \"t\", \"id\": \"x\"}, \"content-type\": \"application/json\"}",
        "",
    };
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        struct task_message m;
        char err[256] = "";
        int rc = decode_str(bad[i], &m, err, sizeof err);
        CHECK(rc < 0);
        CHECK(err[0] != '\0');
        task_message_clear(&m);
    }
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_str("{\"headers\": {\"task\": 123, \"id\": \"abc\"}}", &m, err, sizeof err),
                 CELERIAC_EPARSE);
    CHECK(strstr(err, "headers.task") != NULL);
    CHECK_STR(m.id, "abc");
    task_message_clear(&m);
    CHECK_EQ_INT(task_message_decode("x", 1, NULL, NULL, err, sizeof err), CELERIAC_EINVAL);
    /* Headers not an object: the id still comes from correlation_id. */
    CHECK_EQ_INT(decode_str("{\"headers\": \"h\", \"properties\": {\"correlation_id\": \"cid\", "
                            "\"delivery_tag\": \"dt\"}}",
                            &m, err, sizeof err),
                 CELERIAC_EPARSE);
    CHECK(strstr(err, "headers is not an object") != NULL);
    CHECK_STR(m.id, "cid");
    CHECK_STR(m.delivery_tag, "dt");
    task_message_clear(&m);
    /* A well-formed message without any id is refused. */
    CHECK_EQ_INT(decode_str("{\"body\": \"[[], {}, {}]\", \"content-type\": \"application/json\", "
                            "\"headers\": {\"task\": \"t\"}}",
                            &m, err, sizeof err),
                 CELERIAC_EPARSE);
    CHECK(strstr(err, "no task id") != NULL);
    task_message_clear(&m);
}

TEST(malformed_bodies_keep_id)
{
    struct task_message m;
    char err[256];
    /* Body not valid base64. */
    const char *e = "{\"body\": \"!!!!\", \"content-type\": \"application/json\", \"headers\": "
                    "{\"task\": \"t\", \"id\": \"id-9\"}, \"properties\": {\"body_encoding\": "
                    "\"base64\", \"delivery_tag\": \"tag-9\"}}";
    CHECK_EQ_INT(decode_str(e, &m, err, sizeof err), CELERIAC_EPARSE);
    CHECK(strstr(err, "base64") != NULL);
    CHECK_STR(m.id, "id-9");
    CHECK_STR(m.delivery_tag, "tag-9");
    task_message_clear(&m);
    /* Body not an array / not JSON / wrong element types. */
    CHECK_EQ_INT(decode_env("{\"a\": 1}", "", "application/json", &m, err, sizeof err), 0);
    task_message_clear(&m); /* a dict body under v2 headers is the hybrid form */
    CHECK_EQ_INT(decode_env("\"str\"", "", "application/json", &m, err, sizeof err), CELERIAC_EPARSE);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[1, 2", "", "application/json", &m, err, sizeof err), CELERIAC_EPARSE);
    CHECK_STR(m.id, "id-1");
    CHECK_STR(m.task, "t");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[{}, {}, {}]", "", "application/json", &m, err, sizeof err), CELERIAC_EPARSE);
    CHECK(strstr(err, "args") != NULL);
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], [], {}]", "", "application/json", &m, err, sizeof err), CELERIAC_EPARSE);
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], {}, {}, 4]", "", "application/json", &m, err, sizeof err), CELERIAC_EPARSE);
    task_message_clear(&m);
    /* Unknown content type and compression. */
    CHECK_EQ_INT(decode_env("[[], {}, {}]", "", "text/plain", &m, err, sizeof err), CELERIAC_ECONTENT);
    CHECK(strstr(err, "text/plain") != NULL);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], {}, {}]", ", \"compression\": \"application/x-lzma\"",
                            "application/json", &m, err, sizeof err),
                 CELERIAC_EUNSUPPORTED);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], {}, {}]", ", \"compression\": \"application/x-gzip\"",
                            "application/json", &m, err, sizeof err),
                 CELERIAC_EPARSE);
    task_message_clear(&m);
    /* Headers of the wrong type and bad times. */
    CHECK_EQ_INT(decode_env("[[], {}, {}]", ", \"eta\": \"tomorrow\"", "application/json", &m, err, sizeof err),
                 CELERIAC_EPARSE);
    CHECK(strstr(err, "eta") != NULL);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], {}, {}]", ", \"retries\": \"1\"", "application/json", &m, err, sizeof err),
                 CELERIAC_EPARSE);
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], {}, {}]", ", \"timelimit\": [\"a\", 1]", "application/json", &m, err, sizeof err),
                 CELERIAC_EPARSE);
    task_message_clear(&m);
}

TEST(partial_bodies_and_defaults)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_env("[[1, 2]]", ", \"shadow\": \"nice\", \"group_index\": 3, "
                            "\"timelimit\": [null, 5.5], \"ignore_result\": true, \"retries\": 2",
                            "application/json", &m, err, sizeof err),
                 0);
    check_json(m.args, "[1, 2]");
    check_json(m.kwargs, "{}");
    check_json(m.embed, "{\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}");
    CHECK_STR(task_message_display_name(&m), "nice");
    CHECK_EQ_INT(m.has_group_index, 1);
    CHECK_EQ_INT(m.group_index, 3);
    CHECK(m.time_limit == 0 && m.soft_time_limit == 5.5);
    CHECK_EQ_INT(m.ignore_result, 1);
    CHECK_EQ_INT(m.retries, 2);
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[[], null, null]", "", "application/json; charset=utf-8", &m, err, sizeof err), 0);
    check_json(m.kwargs, "{}");
    task_message_clear(&m);
    CHECK_EQ_INT(decode_env("[]", "", "application/json", &m, err, sizeof err), 0);
    check_json(m.args, "[]");
    task_message_clear(&m);
}

TEST(hybrid_headers_win)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(decode_env("{\"task\": \"other\", \"id\": \"body-id\", \"args\": [1], \"kwargs\": "
                            "{\"k\": 2}, \"retries\": 4, \"eta\": \"2026-11-23T17:00:57+00:00\", "
                            "\"callbacks\": [{\"task\": \"cb\"}]}",
                            ", \"retries\": 1", "application/json", &m, err, sizeof err),
                 0);
    CHECK_EQ_INT(m.protocol, 2);
    CHECK_STR(m.task, "t");
    CHECK_STR(m.id, "id-1");
    CHECK_EQ_INT(m.retries, 1);
    CHECK(m.eta > 0);
    check_json(m.args, "[1]");
    check_json(m.kwargs, "{\"k\": 2}");
    CHECK_EQ_INT(celeriac_value_len(celeriac_value_get(m.embed, "callbacks")), 1);
    task_message_clear(&m);
}

TEST(unencoded_body_and_kombu_types)
{
    struct task_message m;
    char err[256];
    const char *e = "{\"body\": \"[[{\\\"__type__\\\": \\\"uuid\\\", \\\"__value__\\\": {\\\"hex\\\": "
                    "\\\"bf46231f4266403dbef5695e13f7aa57\\\"}}], {\\\"when\\\": {\\\"__type__\\\": "
                    "\\\"datetime\\\", \\\"__value__\\\": \\\"2026-11-23T16:41:48\\\"}}, null]\", "
                    "\"content-type\": \"application/json\", \"headers\": {\"task\": \"t\"}, "
                    "\"properties\": {\"correlation_id\": \"cid\", \"priority\": 300}}";
    CHECK_EQ_INT(decode_str(e, &m, err, sizeof err), 0);
    CHECK_STR(m.id, "cid");
    CHECK_EQ_INT(m.priority, 255);
    check_json(m.args, "[\"bf46231f-4266-403d-bef5-695e13f7aa57\"]");
    check_json(m.kwargs, "{\"when\": \"2026-11-23T16:41:48\"}");
    task_message_clear(&m);
}

TEST(caps)
{
    struct task_message m;
    char err[256];
    /* A 10 MB string with a 1 MB message cap. */
    size_t big = 10u << 20;
    char *s = malloc(big + 64);
    memcpy(s, "{\"body\": \"", 10);
    memset(s + 10, 'A', big);
    memcpy(s + 10 + big, "\"}", 3);
    struct task_message_limits lim = {1 << 20, 1 << 20, 64, 1000, 0};
    CHECK_EQ_INT(task_message_decode(s, strlen(s), &lim, &m, err, sizeof err), CELERIAC_ETOOBIG);
    task_message_clear(&m);
    free(s);
    /* Body over its cap after base64, and after decompression. */
    struct task_message_limits small = {1 << 20, 8, 64, 1000, 0};
    CHECK_EQ_INT(decode_env("[[\"0123456789\"], {}, {}]", "", "application/json", &m, err, sizeof err), 0);
    task_message_clear(&m);
    char *env = envelope("[[\"0123456789\"], {}, {}]", "", "application/json");
    CHECK_EQ_INT(task_message_decode(env, strlen(env), &small, &m, err, sizeof err), CELERIAC_ETOOBIG);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
    free(env);
    /* Deep body. */
    char deep[300];
    memset(deep, '[', 200);
    memset(deep + 200, ']', 99);
    deep[299] = 0;
    CHECK_EQ_INT(decode_env(deep, "", "application/json", &m, err, sizeof err), CELERIAC_EDEPTH);
    CHECK_STR(m.id, "id-1");
    task_message_clear(&m);
}

TEST(headers_only_leaves_body_for_the_pool)
{
    size_t len;
    char *env = test_fixture("task-v2-json-basic.json", &len);
    struct task_message m = {0};
    char err[256];
    struct task_message_limits lim = task_message_limits_default;
    lim.headers_only = 1;
    CHECK_EQ_INT(task_message_decode(env, len, &lim, &m, err, sizeof err), 0);
    CHECK_STR(m.id, "bf46231f-4266-403d-bef5-695e13f7aa57");
    CHECK_STR(m.task, "process_document");
    CHECK_EQ_INT(m.body_pending, 1);
    CHECK(m.args == NULL && m.kwargs == NULL && m.embed == NULL);
    CHECK(m.time_limit == 60 && m.soft_time_limit == 50);
    task_message_clear(&m);
    /* Refused content types are still refused without the body. */
    char *pickle = test_fixture("task-v2-pickle.json", &len);
    CHECK_EQ_INT(task_message_decode(pickle, len, &lim, &m, err, sizeof err), CELERIAC_ECONTENT);
    CHECK(m.id != NULL);
    task_message_clear(&m);
    free(pickle);
    free(env);
}

/* ---- The packed hand-off (main process -> pool process) -------------------- */

static int handoff_fast; /* packed decodes that did not fall back */
static int handoff_packed;
static int headers_packed; /* full decodes a headers pack was checked for */

static void check_same_str(const char *what, const char *a, const char *b)
{
    if ((a == NULL) != (b == NULL) || (a && strcmp(a, b) != 0)) {
        fprintf(stderr, "  %s: packed '%s', full '%s'\n", what, a ? a : "(null)",
                b ? b : "(null)");
        CHECK(0);
    }
}

static void check_same_value(const char *what, const celeriac_value *a, const celeriac_value *b)
{
    char *ja = a ? celeriac_value_to_json(a) : NULL, *jb = b ? celeriac_value_to_json(b) : NULL;
    check_same_str(what, ja, jb);
    free(ja);
    free(jb);
}

/* What the pool process gets from a packed hand-off must be what it got from
 * decoding the envelope itself: code, error text, every field, the body's
 * values, and (loaded on demand) the headers. */
static void check_handoff(const char *env, size_t n, const struct task_message_limits *lim)
{
    struct task_message_limits full_lim = *lim, head_lim = *lim;
    full_lim.headers_only = 0;
    head_lim.headers_only = 1;
    struct task_message f, h, p;
    char ef[256] = "", eh[256] = "", ep[256] = "";
    int rf = task_message_decode(env, n, &full_lim, &f, ef, sizeof ef);
    int rh = task_message_decode(env, n, &head_lim, &h, eh, sizeof eh);
    struct buf b = {0};
    if (rh == 0 && task_message_pack(&h, &b) == 0) {
        handoff_packed++;
        CHECK_EQ_INT(buf_append(&b, env, n), 0);
        int rp = task_message_decode_packed(b.p, b.len, &full_lim, &p, ep, sizeof ep);
        if (rp == 0 && !p.headers)
            handoff_fast++;
        CHECK_EQ_INT(rp, rf);
        check_same_str("error", ep, ef);
        if (rp != rf || strcmp(ep, ef) != 0)
            fprintf(stderr, "  input (%zu bytes): %.300s\n", n, env);
        const char *names[] = {"id", "task", "shadow", "root_id", "parent_id", "group",
                               "origin", "argsrepr", "kwargsrepr", "content_type",
                               "content_encoding", "compression", "correlation_id", "reply_to",
                               "delivery_tag", "exchange", "routing_key", "body_encoding"};
        const char *pf[] = {p.id, p.task, p.shadow, p.root_id, p.parent_id, p.group, p.origin,
                            p.argsrepr, p.kwargsrepr, p.content_type, p.content_encoding,
                            p.compression, p.correlation_id, p.reply_to, p.delivery_tag,
                            p.exchange, p.routing_key, p.body_encoding};
        const char *ff[] = {f.id, f.task, f.shadow, f.root_id, f.parent_id, f.group, f.origin,
                            f.argsrepr, f.kwargsrepr, f.content_type, f.content_encoding,
                            f.compression, f.correlation_id, f.reply_to, f.delivery_tag,
                            f.exchange, f.routing_key, f.body_encoding};
        for (size_t i = 0; i < sizeof names / sizeof names[0]; i++)
            check_same_str(names[i], pf[i], ff[i]);
        CHECK_EQ_INT(p.protocol, f.protocol);
        CHECK_EQ_INT(p.retries, f.retries);
        CHECK_EQ_INT(p.has_group_index, f.has_group_index);
        CHECK_EQ_INT(p.group_index, f.group_index);
        CHECK_EQ_INT(p.ignore_result, f.ignore_result);
        CHECK_EQ_INT(p.redelivered, f.redelivered);
        CHECK_EQ_INT(p.priority, f.priority);
        CHECK_EQ_INT(p.body_pending, f.body_pending);
        CHECK(p.eta == f.eta && p.expires == f.expires && p.time_limit == f.time_limit &&
              p.soft_time_limit == f.soft_time_limit);
        check_same_value("args", p.args, f.args);
        check_same_value("kwargs", p.kwargs, f.kwargs);
        check_same_value("embed", p.embed, f.embed);
        const char *e = NULL;
        size_t en = 0;
        CHECK_EQ_INT(task_message_packed_envelope(b.p, b.len, &e, &en), 0);
        CHECK(en == n && memcmp(e, env, n) == 0);
        if (rp == 0) {
            CHECK_EQ_INT(task_message_load_headers(&p, e, en, &full_lim), 0);
            check_same_value("headers", p.headers, f.headers);
        }
        task_message_clear(&p);
    }
    buf_free(&b);
    /* A pool process that fetched the message itself hands the main process
     * the header fields of its full decode: the same fields, the body left
     * in the envelope; the pool's own decoder never takes that pack for a
     * body (it falls back to the envelope). */
    struct buf hb = {0};
    if (rf == 0 && task_message_pack_headers(&f, &hb) == 0) {
        CHECK_EQ_INT(buf_append(&hb, env, n), 0);
        headers_packed++;
        struct task_message u;
        CHECK_EQ_INT(task_message_unpack_headers(hb.p, hb.len, &u), 0);
        const char *uf[] = {u.id, u.task, u.shadow, u.root_id, u.parent_id, u.group, u.origin,
                            u.argsrepr, u.kwargsrepr, u.content_type, u.correlation_id,
                            u.reply_to, u.delivery_tag, u.exchange, u.routing_key};
        const char *ff[] = {f.id, f.task, f.shadow, f.root_id, f.parent_id, f.group, f.origin,
                            f.argsrepr, f.kwargsrepr, f.content_type, f.correlation_id,
                            f.reply_to, f.delivery_tag, f.exchange, f.routing_key};
        for (size_t i = 0; i < sizeof uf / sizeof uf[0]; i++)
            check_same_str("unpacked header field", uf[i], ff[i]);
        CHECK_EQ_INT(u.protocol, f.protocol);
        CHECK_EQ_INT(u.retries, f.retries);
        CHECK_EQ_INT(u.group_index, f.group_index);
        CHECK_EQ_INT(u.ignore_result, f.ignore_result);
        CHECK_EQ_INT(u.redelivered, f.redelivered);
        CHECK_EQ_INT(u.priority, f.priority);
        CHECK(u.eta == f.eta && u.expires == f.expires && u.time_limit == f.time_limit &&
              u.soft_time_limit == f.soft_time_limit);
        CHECK(u.body_pending && !u.args && !u.kwargs && !u.embed && !u.headers);
        task_message_clear(&u);
        struct task_message q;
        char eq[256] = "";
        CHECK_EQ_INT(task_message_decode_packed(hb.p, hb.len, &full_lim, &q, eq, sizeof eq), 0);
        check_same_str("id from a headers pack", q.id, f.id);
        check_same_value("args from a headers pack", q.args, f.args);
        CHECK(q.headers != NULL); /* the full decode of the envelope */
        task_message_clear(&q);
        /* Every truncation is refused, never read past. */
        const char *pe;
        size_t pen;
        CHECK_EQ_INT(task_message_packed_envelope(hb.p, hb.len, &pe, &pen), 0);
        for (size_t cut = 0; cut < (size_t)(pe - hb.p); cut++) {
            uint32_t k = (uint32_t)(cut > 4 ? cut - 4 : 0);
            struct buf t = {0};
            buf_append(&t, &k, sizeof k);
            if (cut > 4)
                buf_append(&t, hb.p + 4, cut - 4);
            buf_append(&t, pe, pen);
            CHECK_EQ_INT(task_message_unpack_headers(t.p, t.len, &u), CELERIAC_EPARSE);
            CHECK(!u.id && !u.task);
            buf_free(&t);
        }
    }
    buf_free(&hb);
    task_message_clear(&f);
    task_message_clear(&h);
}

TEST(packed_handoff_is_the_full_decode)
{
    const struct task_message_limits *lim = &task_message_limits_default;
    /* Every capture of real Celery. */
    size_t len;
    char *text = test_fixture("index.json", &len);
    celeriac_value *index = celeriac_value_from_json(text, len);
    free(text);
    int fixtures = 0;
    for (size_t i = 0; i < celeriac_value_len(index); i++) {
        const char *file = value_get_str(celeriac_value_at(index, i), "file");
        if (!file || strncmp(file, "task-", 5) != 0)
            continue;
        char *env = test_fixture(file, &len);
        int before = handoff_fast;
        check_handoff(env, len, lim);
        /* Protocol 2 captures in an allowed content type take the fast path. */
        if (strstr(file, "-v2-") && !strstr(file, "pickle") && !strstr(file, "yaml") &&
            handoff_fast == before)
            fprintf(stderr, "  %s: not packed\n", file);
        fixtures += handoff_fast > before;
        free(env);
    }
    celeriac_value_free(index);
    CHECK(fixtures >= 10);

    /* Bodies of every kind inside one envelope. */
    char big[2000];
    memset(big, 'a', sizeof big - 1);
    big[sizeof big - 1] = '\0';
    struct buf longargs = {0};
    buf_printf(&longargs, "[[\"%s\"], {}, {}]", big);
    const char *bodies[] = {
        "[[1, 2], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, \"chord\": null}]",
        "[[], {\"x\": [1, 2.5, \"\\u00e9\"]}]", "[[1]]", "[]", longargs.p,
        "{\"args\": [1], \"kwargs\": {}, \"retries\": 2}", /* hybrid: headers win */
        "[[1], {}, {}, 4]", "[\"x\", {}, {}]", "[[1], [], {}]", "[[1], {}, 3]", "not json",
        "[[1], {}, {}] trailing", "\"a string\"", "null", "",
    };
    int fast_before = handoff_fast;
    for (size_t i = 0; i < sizeof bodies / sizeof bodies[0]; i++) {
        for (int ct = 0; ct < 2; ct++) {
            char *e = envelope(bodies[i], ct ? ", \"retries\": 1, \"timelimit\": [10, null]" : "",
                               "application/json");
            check_handoff(e, strlen(e), lim);
            free(e);
        }
    }
    CHECK(handoff_fast - fast_before >= 10);
    buf_free(&longargs);

    /* Envelopes whose body the main process cannot hand over as it is. */
    const char *raw[] = {
        /* body_encoding absent: the body text is the JSON itself */
        "{\"body\": \"[[1], {}, {}]\", \"content-type\": \"application/json\", \"headers\": "
        "{\"task\": \"t\", \"id\": \"i\"}, \"properties\": {\"delivery_tag\": \"d\"}}",
        /* escapes in the body: not lifted, the parsed text travels */
        "{\"body\": \"[[\\\"a\\\\nb\\\"], {}, {}]\", \"content-type\": \"application/json\", "
        "\"headers\": {\"task\": \"t\", \"id\": \"i\"}, \"properties\": {\"body_encoding\": "
        "\"utf-8\"}}",
        /* body_encoding of the wrong type, unknown, or bad base64 */
        "{\"body\": \"W1tdXQ==\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
        "\"t\", \"id\": \"i\"}, \"properties\": {\"body_encoding\": 5}}",
        "{\"body\": \"W1tdXQ==\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
        "\"t\", \"id\": \"i\"}, \"properties\": {\"body_encoding\": \"rot13\"}}",
        "{\"body\": \"W1t!XQ==\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
        "\"t\", \"id\": \"i\"}, \"properties\": {\"body_encoding\": \"base64\"}}",
        /* a body that is not a string */
        "{\"body\": [[1], {}, {}], \"content-type\": \"application/json\", \"headers\": "
        "{\"task\": \"t\", \"id\": \"i\"}, \"properties\": {}}",
        /* compression it cannot undo */
        "{\"body\": \"W1tdXQ==\", \"content-type\": \"application/json\", \"headers\": {\"task\": "
        "\"t\", \"id\": \"i\", \"compression\": \"application/x-lzma\"}, \"properties\": "
        "{\"body_encoding\": \"base64\"}}",
    };
    for (size_t i = 0; i < sizeof raw / sizeof raw[0]; i++)
        check_handoff(raw[i], strlen(raw[i]), lim);

    /* Caps: the same limits on both sides give the same outcome. */
    char *e = envelope("[[[[[[1]]]]], {\"a\": [1, 2, 3, 4, 5, 6]}, {}]", "", "application/json");
    struct task_message_limits small = *lim;
    small.max_depth = 4;
    check_handoff(e, strlen(e), &small);
    small = *lim;
    small.max_items = 8;
    check_handoff(e, strlen(e), &small);
    small = *lim;
    small.max_body_bytes = 10;
    check_handoff(e, strlen(e), &small);
    free(e);

    /* Random damage to two real envelopes, a short body and a long one. */
    char *bases[2];
    bases[0] = envelope("[[2, 3], {}, {\"callbacks\": null, \"errbacks\": null, \"chain\": null, "
                        "\"chord\": null}]",
                        ", \"retries\": 0, \"eta\": null, \"expires\": null, \"group\": null, "
                        "\"timelimit\": [null, null], \"root_id\": \"r\", \"argsrepr\": \"(2, 3)\"",
                        "application/json");
    struct buf lb = {0};
    buf_printf(&lb, "[[\"%.600s\"], {}, {}]", big);
    bases[1] = envelope(lb.p, "", "application/json");
    buf_free(&lb);
    unsigned seed = 7;
    int packed_before = handoff_packed;
    for (int k = 0; k < 2; k++) {
        size_t bn = strlen(bases[k]);
        char *m = malloc(bn + 8);
        for (int iter = 0; iter < 1500 && m; iter++) {
            memcpy(m, bases[k], bn);
            size_t mn = bn;
            for (int d = 0; d < 1 + iter % 3; d++) {
                seed = seed * 1103515245u + 12345u;
                size_t at = (seed >> 8) % mn;
                static const char bytes[] = "\"\\{}[],: x1\x01\xc3";
                char c = bytes[(seed >> 4) % (sizeof bytes - 1)];
                if (seed % 3 == 0)
                    m[at] = c;
                else if (seed % 3 == 1 && mn > 1)
                    memmove(m + at, m + at + 1, mn-- - at - 1);
                else {
                    memmove(m + at + 1, m + at, mn++ - at);
                    m[at] = c;
                }
            }
            check_handoff(m, mn, lim);
        }
        free(m);
        free(bases[k]);
    }
    CHECK(handoff_packed - packed_before >= 300);
    CHECK(headers_packed >= 300);
}

TEST(packed_handoff_rejects_malformed_packs)
{
    struct task_message m;
    char err[256];
    CHECK_EQ_INT(task_message_decode_packed("", 0, NULL, &m, err, sizeof err), CELERIAC_EPARSE);
    task_message_clear(&m);
    CHECK_EQ_INT(task_message_decode_packed("\xff\xff\xff\x7f{}", 6, NULL, &m, err, sizeof err),
                 CELERIAC_EPARSE);
    CHECK(strstr(err, "malformed packed message") != NULL);
    task_message_clear(&m);
    /* A pack the envelope can be found behind, but garbage itself: the
     * envelope decides. */
    char *e = envelope("[[1], {}, {}]", "", "application/json");
    struct buf b = {0};
    uint32_t n = 3;
    buf_append(&b, &n, sizeof n);
    buf_append(&b, "\x01zz", 3);
    buf_puts(&b, e);
    CHECK_EQ_INT(task_message_decode_packed(b.p, b.len, NULL, &m, err, sizeof err), 0);
    CHECK_STR(m.id, "id-1");
    CHECK(m.headers != NULL); /* came from the full decode */
    check_json(m.args, "[1]");
    task_message_clear(&m);
    /* Not packable: a full decode, or headers only of protocol 1. */
    struct task_message_limits lim = task_message_limits_default;
    CHECK_EQ_INT(task_message_decode(e, strlen(e), &lim, &m, err, sizeof err), 0);
    b.len = 0;
    CHECK_EQ_INT(task_message_pack(&m, &b), CELERIAC_EINVAL);
    CHECK_EQ_INT(b.len, 0);
    task_message_clear(&m);
    /* A pool process's headers pack: only that kind is read as one. */
    struct task_message u;
    n = 0;
    buf_append(&b, &n, sizeof n);
    buf_puts(&b, e);
    CHECK_EQ_INT(task_message_unpack_headers(b.p, b.len, &u), CELERIAC_EPARSE); /* empty pack */
    CHECK_EQ_INT(task_message_unpack_headers("", 0, &u), CELERIAC_EPARSE);
    lim.headers_only = 1;
    CHECK_EQ_INT(task_message_decode(e, strlen(e), &lim, &m, err, sizeof err), 0);
    b.len = 0;
    CHECK_EQ_INT(task_message_pack(&m, &b), 0);
    buf_puts(&b, e);
    CHECK_EQ_INT(task_message_unpack_headers(b.p, b.len, &u), CELERIAC_EPARSE); /* a body pack */
    task_message_clear(&m);
    CHECK_EQ_INT(task_message_pack_headers(&m, &b), CELERIAC_EINVAL); /* no id, no task */
    buf_free(&b);
    free(e);
}
