/* test_backend.c - result meta documents in Celery's format (no server). */
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "backend.h"
#include "celeriac.h"

TEST(meta_success_shape)
{
    celeriac_value *r = celeriac_value_new_object();
    celeriac_value_set(r, "pages", celeriac_value_new_int(7));
    struct result_meta m = {.task_id = "abc", .status = "SUCCESS", .result = r, .ready = 1};
    size_t len;
    char *json = backend_encode_meta(&m, &len);
    CHECK(json != NULL);
    /* Key order as Celery 5.2 writes it; date_done naive ISO with microseconds. */
    CHECK(strncmp(json, "{\"status\": \"SUCCESS\", \"result\": {\"pages\": 7}, \"traceback\": null, "
                        "\"children\": [], \"date_done\": \"",
                  strlen("{\"status\": \"SUCCESS\", \"result\": {\"pages\": 7}, \"traceback\": "
                         "null, \"children\": [], \"date_done\": \"")) == 0);
    CHECK(strstr(json, "\", \"task_id\": \"abc\"}") != NULL);
    CHECK(strstr(json, "group_id") == NULL && strstr(json, "parent_id") == NULL);
    celeriac_value *back = celeriac_value_from_json(json, len);
    const char *date = celeriac_value_string(celeriac_value_get(back, "date_done"), NULL);
    CHECK(date && strlen(date) == 26 && date[10] == 'T');
    celeriac_value_free(back);
    free(json);
    celeriac_value_free(r);
}

TEST(meta_custom_state_not_ready)
{
    celeriac_value *meta = celeriac_value_new_object();
    celeriac_value_set(meta, "progress", celeriac_value_new_int(40));
    celeriac_value_set(meta, "message", celeriac_value_new_string("Extracting"));
    struct result_meta m = {.task_id = "t1", .status = "PROCESSING", .result = meta,
                            .parent_id = "p1", .group_id = "g1"};
    char *json = backend_encode_meta(&m, NULL);
    CHECK(strstr(json, "\"date_done\": null") != NULL);
    CHECK(strstr(json, "\"result\": {\"progress\": 40, \"message\": \"Extracting\"}") != NULL);
    CHECK(strstr(json, "\"group_id\": \"g1\", \"parent_id\": \"p1\", \"task_id\": \"t1\"}") != NULL);
    free(json);
    celeriac_value_free(meta);
}

TEST(exception_document)
{
    /* Same shape as the captured FAILURE (fixtures/result-failure.json). */
    celeriac_value *e = backend_exception("builtins", "ValueError", "cannot process doc-101");
    char *json = celeriac_value_to_json(e);
    CHECK_STR(json, "{\"exc_type\": \"ValueError\", \"exc_message\": [\"cannot process doc-101\"], "
                    "\"exc_module\": \"builtins\"}");
    size_t n;
    char *fixture = test_fixture("result-failure.json", &n);
    CHECK(strstr(fixture, json) != NULL);
    free(fixture);
    free(json);
    celeriac_value_free(e);
}

TEST(unsupported_backend_url)
{
    char err[256];
    CHECK(backend_new("db+postgresql://x/y", 10, 1, NULL, err, sizeof err) == NULL);
    CHECK(strstr(err, "not supported") != NULL);
    CHECK(backend_new("redis://h:notaport/0", 10, 1, NULL, err, sizeof err) == NULL);
    struct backend *b = backend_new("redis://127.0.0.1:1/0", 10, 1, NULL, err, sizeof err);
    CHECK(b != NULL); /* connects lazily */
    backend_free(b);
}

/* Celery's _add_global_keyprefix: '_' after the prefix unless it ends in : _ - . */
TEST(result_keyprefix_separator)
{
    char err[256];
    const char *cases[][2] = {{"pfx", "pfx_"}, {"pfx:", "pfx:"}, {"a_", "a_"}, {"a-", "a-"},
                              {"a.", "a."}, {"", ""}};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        struct backend *b = backend_new("redis://127.0.0.1:1/0", 10, 1, cases[i][0], err,
                                        sizeof err);
        CHECK(b != NULL);
        CHECK(strcmp(b->keyprefix, cases[i][1]) == 0);
        backend_free(b);
    }
    struct backend *b = backend_new("redis://127.0.0.1:1/0", 10, 1, NULL, err, sizeof err);
    CHECK(b != NULL && b->keyprefix[0] == 0);
    backend_free(b);
}
