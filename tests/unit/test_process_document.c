/* test_process_document.c - tests the process_document task end to end through its task function (and http.c against a loopback server forked here); not the worker that calls it. */
#include "test.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "codec.h"
#include "http.h"
#include "task_context.h"
#include "task_registry.h"
#include "tasks/builtin.h"

/* ---- running the task ------------------------------------------------------- */

#define MAX_STATES 64

struct run {
    celeriac_task t;
    int rc;
    celeriac_value *result; /* owned */
    int nstates;
    char *state[MAX_STATES];
    celeriac_value *meta[MAX_STATES];
};

static int record_state(void *ud, const celeriac_task *t, const char *state,
                        const celeriac_value *meta)
{
    struct run *r = ud;
    (void)t;
    if (r->nstates < MAX_STATES) {
        r->state[r->nstates] = strdup(state);
        r->meta[r->nstates] = celeriac_value_copy(meta);
        r->nstates++;
    }
    return 0;
}

static struct builtin_config test_config(void)
{
    struct builtin_config c;
    builtin_config_defaults(&c);
    return c;
}

/* Finds process_document the way the worker does: through the registry. */
static celeriac_task_fn task_fn(void)
{
    static struct builtin_config cfg;
    celeriac_registry *reg = task_registry_new();
    CHECK(reg != NULL);
    builtin_config_defaults(&cfg);
    CHECK_EQ_INT(tasks_builtin_register(reg, &cfg), 0);
    const struct task_def *def = task_registry_find(reg, "process_document");
    CHECK(def != NULL);
    celeriac_task_fn fn = def ? def->fn : NULL;
    task_registry_free(reg);
    return fn;
}

/* Runs process_document(*args, **kwargs); takes ownership of args and kwargs
 * (either may be NULL). Free with run_free(). */
static void run_task(struct run *r, celeriac_value *args, celeriac_value *kwargs,
                     const struct builtin_config *cfg)
{
    static struct task_sink sink;
    celeriac_task_fn fn = task_fn();
    memset(r, 0, sizeof *r);
    sink.store_state = record_state;
    sink.ud = r;
    task_context_init(&r->t, "test-id", "process_document", 0, args, kwargs, &sink);
    r->rc = fn ? fn(&r->t, (void *)cfg) : -1;
    r->result = task_context_take_result(&r->t);
    celeriac_value_free(args);
    celeriac_value_free(kwargs);
    r->t.args = r->t.kwargs = NULL;
}

static void run_free(struct run *r)
{
    task_context_clear(&r->t);
    celeriac_value_free(r->result);
    for (int i = 0; i < r->nstates; i++) {
        free(r->state[i]);
        celeriac_value_free(r->meta[i]);
    }
}

static celeriac_value *J(const char *json)
{
    celeriac_value *v = celeriac_value_from_json(json, strlen(json));
    CHECK(v != NULL);
    return v;
}

/* args = [source] with a string source. */
static celeriac_value *args1(celeriac_value *source)
{
    celeriac_value *a = celeriac_value_new_array();
    celeriac_value_append(a, source);
    return a;
}

static celeriac_value *text_source(const char *text, const char *filename)
{
    celeriac_value *d = celeriac_value_new_object();
    celeriac_value_set(d, "text", celeriac_value_new_string(text));
    if (filename)
        celeriac_value_set(d, "filename", celeriac_value_new_string(filename));
    return d;
}

static celeriac_value *b64_string(const void *p, size_t n)
{
    char *enc = codec_base64_encode(p, n, NULL);
    celeriac_value *v = celeriac_value_new_string(enc);
    free(enc);
    return v;
}

/* Runs with {"text": text, "filename": filename} and default options. */
static void run_text(struct run *r, const char *text, const char *filename)
{
    struct builtin_config cfg = test_config();
    run_task(r, args1(text_source(text, filename)), NULL, &cfg);
}

static const char *rstr(const struct run *r, const char *key)
{
    return celeriac_value_string(celeriac_value_get(r->result, key), NULL);
}

static int64_t rnum(const struct run *r, const char *key)
{
    return celeriac_value_int(celeriac_value_get(r->result, key));
}

static const char *preview(const struct run *r)
{
    const char *p = rstr(r, "text_preview");
    return p ? p : "";
}

static void check_ok(const struct run *r)
{
    if (r->rc < 0 && r->t.failed)
        fprintf(stderr, "  (task raised %s: %s)\n", r->t.exc_type,
                r->t.exc_message ? r->t.exc_message : "");
    CHECK_EQ_INT(r->rc, 0);
    CHECK_EQ_INT(r->t.failed, 0);
    CHECK_EQ_INT(celeriac_value_type(r->result), CELERIAC_OBJECT);
}

static void check_raised(const struct run *r, const char *exc_type, const char *text)
{
    CHECK_EQ_INT(r->rc, CELERIAC_ETASK);
    CHECK_EQ_INT(r->t.failed, 1);
    CHECK_STR(r->t.exc_type, exc_type);
    CHECK(r->result == NULL);
    if (!r->t.exc_message || !strstr(r->t.exc_message, text)) {
        fprintf(stderr, "  message \"%s\" lacks \"%s\"\n",
                r->t.exc_message ? r->t.exc_message : "(null)", text);
        CHECK(!"exception message");
    }
}

/* ---- formats ---------------------------------------------------------------- */

TEST(sha256_of_base64_hello)
{
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, args1(celeriac_value_new_string("aGVsbG8K")), NULL, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "sha256"),
              "5891b5b522d5df086d0ff0b110fbd9d21bb4fc7163af34d08286a2e846f6be03");
    CHECK_STR(rstr(&r, "source"), "base64");
    CHECK_STR(rstr(&r, "detected_type"), "text");
    CHECK_STR(rstr(&r, "document_type"), "generic");
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(r.result, "filename")), CELERIAC_NULL);
    CHECK_EQ_INT(rnum(&r, "bytes"), 6);
    CHECK_EQ_INT(rnum(&r, "characters"), 6);
    CHECK_EQ_INT(rnum(&r, "lines"), 1);
    CHECK_EQ_INT(rnum(&r, "words"), 1);
    CHECK_STR(preview(&r), "hello\n");
    run_free(&r);
}

TEST(plain_text_counts)
{
    struct run r;
    run_text(&r,
             "Zwölf Boxkämpfer jagen Viktor\nquer über den großen Sylter Deich.\n\n"
             "tabs\tand\u00a0nbsp count as spaces",
             "notes.txt");
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "text");
    CHECK_STR(rstr(&r, "detected_by"), "filename");
    CHECK_STR(rstr(&r, "filename"), "notes.txt");
    CHECK_STR(rstr(&r, "source"), "text");
    CHECK_EQ_INT(rnum(&r, "lines"), 4);
    CHECK_EQ_INT(rnum(&r, "words"), 16); /* as Python's str.split() counts */
    /* Characters are code points, bytes are bytes. */
    CHECK_EQ_INT(rnum(&r, "characters"), 95);
    CHECK_EQ_INT(rnum(&r, "bytes"), 100);
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(r.result, "title")), CELERIAC_NULL);
    CHECK(celeriac_value_get(r.result, "csv") == NULL);
    run_free(&r);
}

TEST(markdown_is_stripped_lightly)
{
    struct run r;
    run_text(&r,
             "# Release *notes*\n\nSome **bold**, _emphasis_ and `code` with a "
             "[link](https://example.com/x) and ![an image](i.png).\n\n"
             "- item one\n* item two\n1. first\n> quoted snake_case\n\n---\n"
             "```\ncode *stays*\n```\n| a | b |\n|---|---|\n| c | d |\n",
             NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "markdown");
    CHECK_STR(rstr(&r, "detected_by"), "content");
    CHECK_STR(rstr(&r, "title"), "Release notes");
    CHECK_STR(preview(&r), "Release notes\n\nSome bold, emphasis and code with a link and an "
                           "image.\n\nitem one\nitem two\nfirst\nquoted snake_case\n\n"
                           "code *stays*\na b\nc d\n");
    run_free(&r);
}

TEST(markdown_by_extension)
{
    struct run r;
    run_text(&r, "just words, nothing marked up", "README.MD");
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "markdown");
    CHECK_STR(rstr(&r, "detected_by"), "filename");
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(r.result, "title")), CELERIAC_NULL);
    run_free(&r);
}

TEST(csv_rows_columns_header)
{
    struct run r;
    run_text(&r, "name,age,city\r\nAnn,30,Paris\r\nBob,25,\"New York, \"\"NY\"\"\"\r\n\r\n", NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "csv");
    const celeriac_value *csv = celeriac_value_get(r.result, "csv");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(csv, "rows")), 2);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(csv, "columns")), 3);
    CHECK_STR(celeriac_value_string(celeriac_value_get(csv, "delimiter"), NULL), ",");
    const celeriac_value *h = celeriac_value_get(csv, "header");
    CHECK_EQ_INT(celeriac_value_len(h), 3);
    CHECK_STR(celeriac_value_string(celeriac_value_at(h, 0), NULL), "name");
    CHECK_STR(celeriac_value_string(celeriac_value_at(h, 2), NULL), "city");
    CHECK_STR(preview(&r), "name age city\nAnn 30 Paris\nBob 25 New York, \"NY\"\n");
    CHECK_EQ_INT(rnum(&r, "lines"), 3);
    run_free(&r);
}

TEST(csv_semicolon_and_tab)
{
    struct run r;
    run_text(&r, "a;b\n1;2\n3;4\n5;6\n", NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "csv");
    CHECK_STR(celeriac_value_string(
                  celeriac_value_get(celeriac_value_get(r.result, "csv"), "delimiter"), NULL),
              ";");
    run_free(&r);
    run_text(&r, "x\ty\tz\n1\t2\t3\n", "data.tsv");
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "csv");
    const celeriac_value *csv = celeriac_value_get(r.result, "csv");
    CHECK_STR(celeriac_value_string(celeriac_value_get(csv, "delimiter"), NULL), "\t");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(csv, "rows")), 1);
    run_free(&r);
    /* Prose with a comma per line is not CSV. */
    run_text(&r, "Hello, world.\nGoodbye, moon.\n", NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "text");
    run_free(&r);
}

TEST(json_string_values)
{
    struct run r;
    run_text(&r,
             "{\"title\": \"Quarterly report\", \"items\": [\"alpha\", {\"k\": \"beta\"}, 3, "
             "true, null], \"empty\": \"\"}",
             NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "json");
    CHECK_STR(preview(&r), "Quarterly report\nalpha\nbeta\n");
    const celeriac_value *j = celeriac_value_get(r.result, "json");
    CHECK_STR(celeriac_value_string(celeriac_value_get(j, "top_level"), NULL), "object");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(j, "length")), 3);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(j, "strings")), 4);
    run_free(&r);
    /* A .json file that is not JSON is an error, not text. */
    run_text(&r, "{not json", "x.json");
    check_raised(&r, "ValueError", "not valid JSON");
    run_free(&r);
}

TEST(html_text_title_entities)
{
    struct run r;
    run_text(&r,
             "<!DOCTYPE html>\n<html><head><title> My &amp; \n Page </title>"
             "<style>.x { color: red }</style>"
             "<script type=\"text/javascript\">var a = '<p>no</p>';</script></head>"
             "<body><h1>Head&shy;line</h1><p class=\"a>b\">Fish &amp; chips &lt;3 &quot;q&quot; "
             "&#39;s&#39; caf&#233; &#x263A;&nbsp;ok</p><!-- hidden <p>x</p> -->"
             "<ul><li>one</li><li>two</li></ul>a < b<br>end</body></html>",
             NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "html");
    CHECK_STR(rstr(&r, "title"), "My & Page");
    CHECK_STR(preview(&r), "My & Page\nHead&shy;line\nFish & chips <3 \"q\" 's' caf\xc3\xa9 "
                           "\xe2\x98\xba ok\none\ntwo\na < b\nend");
    run_free(&r);
}

TEST(html_fragment_and_content_type)
{
    struct run r;
    run_text(&r, "  <div><p>Short fragment</p></div>", NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "html");
    CHECK_STR(preview(&r), "Short fragment");
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(r.result, "title")), CELERIAC_NULL);
    run_free(&r);
}

TEST(source_forms_agree)
{
    static const char text[] = "The same bytes, three ways.\n";
    const char *sha = NULL;
    char first[65] = "";
    struct builtin_config cfg = test_config();
    struct run r;
    /* 1: base64 string. */
    run_task(&r, args1(b64_string(text, strlen(text))), NULL, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "source"), "base64");
    sha = rstr(&r, "sha256");
    snprintf(first, sizeof first, "%s", sha ? sha : "");
    run_free(&r);
    /* 2: {"content_b64": ..., "filename": ...}. */
    celeriac_value *d = celeriac_value_new_object();
    celeriac_value_set(d, "content_b64", b64_string(text, strlen(text)));
    celeriac_value_set(d, "filename", celeriac_value_new_string("three.txt"));
    run_task(&r, args1(d), NULL, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "source"), "base64");
    CHECK_STR(rstr(&r, "filename"), "three.txt");
    CHECK_STR(rstr(&r, "sha256"), first);
    run_free(&r);
    /* 3: {"text": ...} as a keyword argument, filename as keyword too. */
    celeriac_value *kw = celeriac_value_new_object();
    celeriac_value_set(kw, "source", text_source(text, "ignored.md"));
    celeriac_value_set(kw, "filename", celeriac_value_new_string("kw.txt"));
    celeriac_value_set(kw, "document_type", celeriac_value_new_string("invoice"));
    run_task(&r, NULL, kw, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "source"), "text");
    CHECK_STR(rstr(&r, "filename"), "kw.txt"); /* the argument wins over source["filename"] */
    CHECK_STR(rstr(&r, "document_type"), "invoice");
    CHECK_STR(rstr(&r, "sha256"), first);
    run_free(&r);
    /* 4: msgpack bytes. */
    run_task(&r, args1(celeriac_value_new_bytes(text, strlen(text))), NULL, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "source"), "bytes");
    CHECK_STR(rstr(&r, "sha256"), first);
    run_free(&r);
}

/* ---- analysis and chunks ---------------------------------------------------- */

TEST(top_terms_ranked_with_ties_alphabetical)
{
    struct run r;
    run_text(&r,
             "Apple banana APPLE cherry Banana apple the the the and and zebra zebra "
             "ox ox ox 2024 2024 2024 über Über",
             NULL);
    check_ok(&r);
    const celeriac_value *tt = celeriac_value_get(r.result, "top_terms");
    static const char *const want[] = {"apple", "banana", "zebra", "über", "cherry"};
    static const int counts[] = {3, 2, 2, 2, 1};
    CHECK_EQ_INT(celeriac_value_len(tt), 5);
    for (size_t i = 0; i < 5 && i < celeriac_value_len(tt); i++) {
        const celeriac_value *p = celeriac_value_at(tt, i);
        CHECK_STR(celeriac_value_string(celeriac_value_at(p, 0), NULL), want[i]);
        CHECK_EQ_INT(celeriac_value_int(celeriac_value_at(p, 1)), counts[i]);
    }
    run_free(&r);
}

TEST(top_terms_capped_at_ten)
{
    struct run r;
    struct buf b = {0};
    for (int i = 0; i < 30; i++)
        for (int k = 0; k <= i; k++)
            buf_printf(&b, "term%c%c ", 'a' + i % 26, 'a' + i / 26);
    run_text(&r, b.p, NULL);
    check_ok(&r);
    const celeriac_value *tt = celeriac_value_get(r.result, "top_terms");
    CHECK_EQ_INT(celeriac_value_len(tt), 10);
    CHECK_STR(celeriac_value_string(celeriac_value_at(celeriac_value_at(tt, 0), 0), NULL),
              "termdb");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_at(celeriac_value_at(tt, 0), 1)), 30);
    run_free(&r);
    buf_free(&b);
}

/* Checks that chunks tile the text and respect the size. */
static void check_tiling(const struct run *r, size_t chunk_size, int with_text)
{
    const celeriac_value *chunks = celeriac_value_get(r->result, "chunks");
    const celeriac_value *items = celeriac_value_get(chunks, "items");
    int64_t next = 0;
    struct buf joined = {0};
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(chunks, "count")),
                 celeriac_value_len(items));
    for (size_t i = 0; i < celeriac_value_len(items); i++) {
        const celeriac_value *it = celeriac_value_at(items, i);
        CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(it, "index")), i);
        CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(it, "start")), next);
        int64_t len = celeriac_value_int(celeriac_value_get(it, "length"));
        CHECK(len > 0 && (size_t)len <= chunk_size);
        next += len;
        const celeriac_value *tx = celeriac_value_get(it, "text");
        CHECK(with_text ? tx != NULL : tx == NULL);
        size_t tl, cps = 0;
        const char *s = celeriac_value_string(tx, &tl);
        for (size_t k = 0; s && k < tl; k++)
            cps += ((unsigned char)s[k] & 0xC0) != 0x80;
        if (s)
            CHECK_EQ_INT(cps, len);
        if (s)
            buf_append(&joined, s, tl);
    }
    CHECK_EQ_INT(next, rnum(r, "characters"));
    if (with_text && rnum(r, "characters") > 0) /* the pieces give back the whole text */
        CHECK(strncmp(joined.p, preview(r), strlen(preview(r))) == 0);
    buf_free(&joined);
}

static celeriac_value *opts_chunk(long size, int include)
{
    celeriac_value *o = celeriac_value_new_object();
    celeriac_value_set(o, "chunk_size", celeriac_value_new_int(size));
    celeriac_value_set(o, "include_chunks", celeriac_value_new_bool(include));
    return o;
}

TEST(chunks_break_at_whitespace)
{
    struct run r;
    struct buf b = {0};
    struct builtin_config cfg = test_config();
    for (int i = 0; i < 300; i++)
        buf_puts(&b, i % 7 ? "word " : "longerword ");
    celeriac_value *args = args1(text_source(b.p, NULL));
    celeriac_value_append(args, celeriac_value_new_null());
    celeriac_value_append(args, celeriac_value_new_null());
    celeriac_value_append(args, opts_chunk(100, 1));
    run_task(&r, args, NULL, &cfg);
    check_ok(&r);
    CHECK_EQ_INT(rnum(&r, "chunk_size"), 100);
    check_tiling(&r, 100, 1);
    /* Every chunk but the last ends with the space after a word. */
    const celeriac_value *items =
        celeriac_value_get(celeriac_value_get(r.result, "chunks"), "items");
    for (size_t i = 0; i + 1 < celeriac_value_len(items); i++) {
        size_t tl;
        const char *s =
            celeriac_value_string(celeriac_value_get(celeriac_value_at(items, i), "text"), &tl);
        CHECK(s && tl > 0 && s[tl - 1] == ' ');
    }
    run_free(&r);
    buf_free(&b);
}

TEST(chunks_hard_cut_counts_characters)
{
    struct run r;
    struct buf b = {0};
    struct builtin_config cfg = test_config();
    for (int i = 0; i < 250; i++)
        buf_puts(&b, "\xc3\xa9"); /* é: 2 bytes, 1 character */
    celeriac_value *kw = celeriac_value_new_object();
    celeriac_value_set(kw, "options", opts_chunk(100, 0));
    run_task(&r, args1(text_source(b.p, NULL)), kw, &cfg);
    check_ok(&r);
    check_tiling(&r, 100, 0);
    const celeriac_value *items =
        celeriac_value_get(celeriac_value_get(r.result, "chunks"), "items");
    CHECK_EQ_INT(celeriac_value_len(items), 3);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(celeriac_value_at(items, 2), "length")), 50);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(celeriac_value_at(items, 2), "start")), 200);
    run_free(&r);
    buf_free(&b);
}

TEST(chunk_default_size_and_cap)
{
    struct run r;
    struct builtin_config cfg = test_config();
    char *big = malloc(150001);
    memset(big, 'x', 150000);
    big[150000] = '\0';
    cfg.default_chunk_size = 100;
    run_task(&r, args1(text_source(big, NULL)), NULL, &cfg);
    check_ok(&r);
    const celeriac_value *chunks = celeriac_value_get(r.result, "chunks");
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(chunks, "count")), 1500);
    CHECK_EQ_INT(celeriac_value_len(celeriac_value_get(chunks, "items")), 1000);
    CHECK_EQ_INT(celeriac_value_bool(celeriac_value_get(chunks, "truncated")), 1);
    CHECK_EQ_INT(strlen(preview(&r)), 200);
    run_free(&r);
    free(big);
}

TEST(chunk_size_validated)
{
    struct run r;
    struct builtin_config cfg = test_config();
    celeriac_value *kw = celeriac_value_new_object();
    celeriac_value_set(kw, "options", opts_chunk(99, 0));
    run_task(&r, args1(text_source("abc", NULL)), kw, &cfg);
    check_raised(&r, "ValueError", "options['chunk_size'] must be between 100 and 1000000, got 99");
    run_free(&r);
    kw = celeriac_value_new_object();
    celeriac_value_set(kw, "options", opts_chunk(1000001, 0));
    run_task(&r, args1(text_source("abc", NULL)), kw, &cfg);
    check_raised(&r, "ValueError", "got 1000001");
    run_free(&r);
    run_task(&r, args1(text_source("abc", NULL)), J("{\"options\": {\"chunk_size\": \"big\"}}"),
             &cfg);
    check_raised(&r, "TypeError", "options['chunk_size'] must be an int, not str");
    run_free(&r);
    run_task(&r, args1(text_source("abc", NULL)), J("{\"options\": [1]}"), &cfg);
    check_raised(&r, "TypeError", "options must be a dict or None, not list");
    run_free(&r);
}

TEST(progress_published_in_order)
{
    task_context_set_progress_interval(0); /* store every stage's update */
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, args1(b64_string("one two three\n", 14)), NULL, &cfg);
    check_ok(&r);
    static const char *const prefixes[] = {"Decoded 14 bytes from base64",
                                           "Detected text (14 bytes)",
                                           "Extracted 3 words",
                                           "Analysed 1 line;",
                                           "Split into 1 chunk of up to 1,000 characters",
                                           "Done"};
    CHECK_EQ_INT(r.nstates, 6);
    int64_t last = -1;
    for (int i = 0; i < r.nstates && i < 6; i++) {
        CHECK_STR(r.state[i], "PROCESSING");
        int64_t p = celeriac_value_int(celeriac_value_get(r.meta[i], "progress"));
        const char *m = celeriac_value_string(celeriac_value_get(r.meta[i], "message"), NULL);
        CHECK(p > last);
        last = p;
        if (!m || strncmp(m, prefixes[i], strlen(prefixes[i])) != 0) {
            fprintf(stderr, "  state %d: \"%s\" does not start with \"%s\"\n", i, m ? m : "",
                    prefixes[i]);
            CHECK(!"progress message");
        }
    }
    CHECK_EQ_INT(last, 100);
    /* The result lists the stages with their times. */
    const celeriac_value *stages = celeriac_value_get(r.result, "stages");
    CHECK_EQ_INT(celeriac_value_len(stages), 5);
    CHECK_STR(celeriac_value_string(celeriac_value_get(celeriac_value_at(stages, 0), "name"), NULL),
              "load");
    CHECK_STR(celeriac_value_string(celeriac_value_get(celeriac_value_at(stages, 4), "name"), NULL),
              "chunk");
    CHECK(celeriac_value_double(celeriac_value_get(celeriac_value_at(stages, 0), "ms")) >= 0);
    run_free(&r);
}

/* ---- bad input -------------------------------------------------------------- */

TEST(missing_source_is_type_error)
{
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, NULL, NULL, &cfg);
    check_raised(&r, "TypeError",
                 "process_document() missing 1 required positional argument: 'source'");
    CHECK_STR(r.t.exc_module, "builtins");
    CHECK_EQ_INT(r.nstates, 0);
    run_free(&r);
    run_task(&r, NULL, J("{\"filename\": \"a.txt\"}"), &cfg);
    check_raised(&r, "TypeError", "missing 1 required positional argument: 'source'");
    run_free(&r);
    run_task(&r, J("[null]"), NULL, &cfg);
    check_raised(&r, "TypeError", "not NoneType");
    run_free(&r);
    run_task(&r, J("[42]"), NULL, &cfg);
    check_raised(&r, "TypeError", "not int");
    run_free(&r);
    run_task(&r, J("[\"aGk=\"]"), J("{\"colour\": 1}"), &cfg);
    check_raised(&r, "TypeError", "got an unexpected keyword argument 'colour'");
    run_free(&r);
    run_task(&r, J("[\"aGk=\", \"a.txt\"]"), J("{\"filename\": \"b.txt\"}"), &cfg);
    check_raised(&r, "TypeError", "got multiple values for argument 'filename'");
    run_free(&r);
    run_task(&r, J("[\"aGk=\", null, null, null, 5]"), NULL, &cfg);
    check_raised(&r, "TypeError", "takes from 1 to 4 positional arguments but 5 were given");
    run_free(&r);
    run_task(&r, J("[\"aGk=\", 7]"), NULL, &cfg);
    check_raised(&r, "TypeError", "filename must be a str or None, not int");
    run_free(&r);
}

TEST(bad_base64_is_value_error)
{
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, J("[\"not base64!!\"]"), NULL, &cfg);
    check_raised(&r, "ValueError",
                 "source is not valid base64: invalid character '!' at position 10");
    run_free(&r);
    run_task(&r, J("[\"abcde\"]"), NULL, &cfg);
    check_raised(&r, "ValueError", "source is not valid base64: number of data characters (5)");
    run_free(&r);
    run_task(&r, J("[{\"content_b64\": \"%%%\"}]"), NULL, &cfg);
    check_raised(&r, "ValueError", "source is not valid base64");
    run_free(&r);
}

TEST(source_dict_needs_exactly_one_key)
{
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, J("[{\"filename\": \"a.txt\"}]"), NULL, &cfg);
    check_raised(&r, "ValueError", "exactly one of 'content_b64', 'text', 'url' (got none)");
    run_free(&r);
    run_task(&r, J("[{\"text\": \"a\", \"url\": \"http://127.0.0.1/\"}]"), NULL, &cfg);
    check_raised(&r, "ValueError", "(got 'text', 'url')");
    run_free(&r);
    run_task(&r, J("[{\"text\": 5}]"), NULL, &cfg);
    check_raised(&r, "TypeError", "source['text'] must be a str, not int");
    run_free(&r);
}

TEST(empty_and_too_large)
{
    struct run r;
    struct builtin_config cfg = test_config();
    run_task(&r, J("[{\"text\": \"\"}]"), NULL, &cfg);
    check_raised(&r, "ValueError", "document is empty");
    run_free(&r);
    run_task(&r, J("[\"\"]"), NULL, &cfg);
    check_raised(&r, "ValueError", "document is empty");
    run_free(&r);
    cfg.document_max_bytes = 1024;
    char *big = malloc(2001);
    memset(big, 'a', 2000);
    big[2000] = '\0';
    run_task(&r, args1(text_source(big, NULL)), NULL, &cfg);
    check_raised(&r, "ValueError", "document exceeds 1024 bytes");
    run_free(&r);
    run_task(&r, args1(b64_string(big, 2000)), NULL, &cfg);
    check_raised(&r, "ValueError", "document exceeds 1024 bytes");
    run_free(&r);
    run_task(&r, args1(b64_string(big, 1024)), NULL, &cfg); /* exactly at the cap */
    check_ok(&r);
    run_free(&r);
    free(big);
}

TEST(binary_is_unsupported)
{
    struct run r;
    struct builtin_config cfg = test_config();
    static const unsigned char bin[] = {'a', 'b', 0, 1, 2, 0xff, 0xfe, 'z'};
    run_task(&r, args1(b64_string(bin, sizeof bin)), NULL, &cfg);
    check_raised(&r, "ValueError", "unsupported document type: detected binary data");
    CHECK(strstr(r.t.exc_message, "later"));
    run_free(&r);
    static const char pdf[] = "%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n";
    run_task(&r, args1(b64_string(pdf, sizeof pdf - 1)), NULL, &cfg);
    check_raised(&r, "ValueError", "detected pdf");
    run_free(&r);
    static const unsigned char latin1[] = "caf\xe9 au lait";
    run_task(&r, args1(b64_string(latin1, sizeof latin1 - 1)), J("{\"filename\": \"a.docx\"}"),
             &cfg);
    check_raised(&r, "ValueError", "detected docx");
    run_free(&r);
}

/* Random markup never crashes the task (ASan/UBSan builds make this count). */
TEST(random_markup_never_crashes)
{
    static const char *const tokens[] = {
        "<",        ">",        "&",           "#",      ";",        "[",
        "]",        "(",        ")",           "*",      "_",        "`",
        "\"",       "'",        ",",           "\n",     "\t",       " ",
        " ",        "a",        "b",           "word",   "/",        "!",
        "-",        "=",        "|",           ":",      "{",        "}",
        "\\",       "x",        "0",           "1",      "\xc3\xa9", "\xe2\x98\xba",
        "&amp;",    "&#x41;",   "&#99999999;", "<p>",    "<title>",  "</title>",
        "<script>", "</script", "<!--",        "-->",    "# ",       "```",
        "[t](u)",   "\r\n",     "\"\"",        "\u00a0", "<html>",   "<a href='>'>",
    };
    static const char *const names[] = {NULL, "a.html", "a.md", "a.csv", "a.json", "a.txt"};
    struct builtin_config cfg = test_config();
    unsigned seed = 12345;
    int succeeded = 0;
    char doc[600];
    cfg.default_chunk_size = 100;
    for (int iter = 0; iter < 600; iter++) {
        size_t want = 1 + (size_t)(rand_r(&seed) % (sizeof doc - 32)), n = 0;
        while (n < want) {
            const char *tok = tokens[rand_r(&seed) % (sizeof tokens / sizeof tokens[0])];
            memcpy(doc + n, tok, strlen(tok));
            n += strlen(tok);
        }
        doc[n] = '\0';
        struct run r;
        celeriac_value *src = celeriac_value_new_object();
        celeriac_value_set(src, "content_b64", b64_string(doc, n));
        if (names[iter % 6])
            celeriac_value_set(src, "filename", celeriac_value_new_string(names[iter % 6]));
        celeriac_value *args = args1(src);
        celeriac_value_append(args, celeriac_value_new_null());
        celeriac_value_append(args, celeriac_value_new_null());
        celeriac_value_append(args, opts_chunk(100, 1));
        run_task(&r, args, NULL, &cfg);
        CHECK(r.rc == 0 || r.t.failed);
        if (r.rc == 0) {
            succeeded++;
            check_tiling(&r, 100, 1);
        }
        run_free(&r);
    }
    /* Most inputs get through to the chunk stage, so the parsers really ran. */
    CHECK(succeeded > 400);
}

/* ---- URLs against a loopback server ----------------------------------------- */

struct server {
    pid_t pid;
    int port;
};

static void send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

static void respond(int fd, const char *status, const char *headers, const char *body)
{
    char head[512];
    int n = snprintf(head, sizeof head,
                     "HTTP/1.1 %s\r\n%sContent-Length: %zu\r\nConnection: close\r\n\r\n", status,
                     headers, strlen(body));
    send_all(fd, head, (size_t)n);
    send_all(fd, body, strlen(body));
}

/* One request per connection, served in turn. */
static void serve(int lfd)
{
    char req[4096];
    for (;;) {
        int fd = accept(lfd, NULL, NULL);
        if (fd < 0)
            continue;
        size_t got = 0;
        while (got < sizeof req - 1) {
            ssize_t k = recv(fd, req + got, sizeof req - 1 - got, 0);
            if (k <= 0)
                break;
            got += (size_t)k;
            req[got] = '\0';
            if (strstr(req, "\r\n\r\n"))
                break;
        }
        req[got] = '\0';
        char path[256] = "";
        if (sscanf(req, "GET %255s", path) != 1) {
            close(fd);
            continue;
        }
        int hops;
        if (strcmp(path, "/files/report.md") == 0) {
            respond(fd, "200 OK", "Content-Type: text/plain\r\n",
                    "# Remote report\n\nFetched over *HTTP*.\n");
        } else if (strcmp(path, "/page") == 0) {
            respond(fd, "200 OK", "Content-Type: text/html; charset=utf-8\r\n",
                    "<title>Remote page</title><b>Hi</b> there");
        } else if (sscanf(path, "/redirect/%d", &hops) == 1) {
            char loc[128];
            if (hops > 0)
                snprintf(loc, sizeof loc, "Location: /redirect/%d\r\n", hops - 1);
            else
                snprintf(loc, sizeof loc, "Location: /files/report.md\r\n");
            respond(fd, "302 Found", loc, "");
        } else if (strcmp(path, "/to-ftp") == 0) {
            respond(fd, "302 Found", "Location: ftp://127.0.0.1/x\r\n", "");
        } else if (strcmp(path, "/big") == 0 || strcmp(path, "/big-unannounced") == 0) {
            static char chunk[65536];
            memset(chunk, 'w', sizeof chunk);
            const char *head =
                strcmp(path, "/big") == 0
                    ? "HTTP/1.1 200 OK\r\nContent-Length: 2097152\r\nConnection: close\r\n\r\n"
                    : "HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n";
            send_all(fd, head, strlen(head));
            for (int i = 0; i < 32; i++)
                send_all(fd, chunk, sizeof chunk);
        } else if (strcmp(path, "/slow") == 0) {
            sleep(3);
            respond(fd, "200 OK", "", "late");
        } else {
            respond(fd, "404 Not Found", "Content-Type: text/plain\r\n", "nope");
        }
        close(fd);
    }
}

static struct server server_start(void)
{
    struct server s = {-1, 0};
    struct sockaddr_in a;
    socklen_t alen = sizeof a;
    int lfd = socket(AF_INET, SOCK_STREAM, 0);
    CHECK(lfd >= 0);
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    a.sin_port = 0; /* a free port */
    CHECK(bind(lfd, (struct sockaddr *)&a, sizeof a) == 0);
    CHECK(listen(lfd, 16) == 0);
    CHECK(getsockname(lfd, (struct sockaddr *)&a, &alen) == 0);
    s.port = ntohs(a.sin_port);
    fflush(NULL);
    s.pid = fork();
    CHECK(s.pid >= 0);
    if (s.pid == 0) {
        signal(SIGPIPE, SIG_IGN);
        alarm(30); /* the server never outlives a stuck test by much */
        serve(lfd);
        _exit(0);
    }
    close(lfd);
    return s;
}

static void server_stop(struct server *s)
{
    if (s->pid > 0) {
        kill(s->pid, SIGTERM);
        waitpid(s->pid, NULL, 0);
        s->pid = -1;
    }
}

static void run_url(struct run *r, const struct server *s, const char *path,
                    const struct builtin_config *cfg)
{
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", s->port, path);
    run_task(r, args1(celeriac_value_new_string(url)), NULL, cfg);
}

TEST(url_fetch_and_detect)
{
    struct server s = server_start();
    struct builtin_config cfg = test_config();
    struct run r;
    run_url(&r, &s, "/files/report.md", &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "source"), "url");
    CHECK_STR(rstr(&r, "filename"), "report.md");
    CHECK_STR(rstr(&r, "detected_type"), "markdown");
    CHECK_STR(rstr(&r, "title"), "Remote report");
    CHECK_STR(rstr(&r, "content_type"), "text/plain");
    CHECK(r.nstates >= 1 &&
          strncmp(celeriac_value_string(celeriac_value_get(r.meta[0], "message"), NULL),
                  "Downloading http://127.0.0.1:", 29) == 0);
    run_free(&r);
    /* No extension: the Content-Type decides. */
    run_url(&r, &s, "/page", &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "html");
    CHECK_STR(rstr(&r, "detected_by"), "content-type");
    CHECK_STR(rstr(&r, "title"), "Remote page");
    run_free(&r);
    /* The dict form, too. */
    char url[128];
    snprintf(url, sizeof url, "{\"url\": \"http://127.0.0.1:%d/page\", \"filename\": \"p.txt\"}",
             s.port);
    run_task(&r, args1(J(url)), NULL, &cfg);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "text");
    run_free(&r);
    server_stop(&s);
}

TEST(url_redirects_capped)
{
    struct server s = server_start();
    struct builtin_config cfg = test_config(); /* 5 redirects */
    struct run r;
    run_url(&r, &s, "/redirect/4", &cfg); /* 5 hops */
    check_ok(&r);
    CHECK_STR(rstr(&r, "filename"), "report.md");
    run_free(&r);
    run_url(&r, &s, "/redirect/5", &cfg); /* 6 hops */
    check_raised(&r, "ConnectionError", "too many redirects (more than 5)");
    run_free(&r);
    cfg.fetch_max_redirects = 0;
    run_url(&r, &s, "/redirect/0", &cfg);
    check_raised(&r, "ConnectionError", "HTTP 302");
    run_free(&r);
    cfg.fetch_max_redirects = 5;
    run_url(&r, &s, "/to-ftp", &cfg);
    check_raised(&r, "ConnectionError", "");
    run_free(&r);
    server_stop(&s);
}

TEST(url_http_errors_and_caps)
{
    struct server s = server_start();
    struct builtin_config cfg = test_config();
    struct run r;
    char want[128];
    run_url(&r, &s, "/missing", &cfg);
    snprintf(want, sizeof want, "HTTP 404 from http://127.0.0.1:%d/missing", s.port);
    check_raised(&r, "ConnectionError", want);
    run_free(&r);
    cfg.document_max_bytes = 1024 * 1024;
    run_url(&r, &s, "/big", &cfg);
    check_raised(&r, "ValueError", "download exceeds 1048576 bytes");
    run_free(&r);
    run_url(&r, &s, "/big-unannounced", &cfg);
    check_raised(&r, "ValueError", "download exceeds 1048576 bytes");
    run_free(&r);
    cfg.fetch_timeout_ms = 500;
    run_url(&r, &s, "/slow", &cfg);
    check_raised(&r, "TimeoutError", "timed out after 500 ms");
    run_free(&r);
    server_stop(&s);
}

TEST(url_connection_refused)
{
    struct server s = server_start(); /* take a free port, then close it */
    struct builtin_config cfg = test_config();
    struct run r;
    server_stop(&s);
    run_url(&r, &s, "/x", &cfg);
    check_raised(&r, "ConnectionError", "cannot fetch http://127.0.0.1:");
    run_free(&r);
}

TEST(http_fetch_direct)
{
    struct server s = server_start();
    struct http_limits lim = {
        .max_bytes = 4096, .timeout_ms = 5000, .connect_timeout_ms = 2000, .max_redirects = 2};
    struct http_response resp;
    char url[128], err[256];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/redirect/1", s.port);
    CHECK_EQ_INT(http_fetch(url, &lim, &resp, err, sizeof err), 0);
    CHECK_EQ_INT(resp.status, 200);
    CHECK_STR(resp.content_type, "text/plain");
    CHECK(strstr(resp.url, "/files/report.md") != NULL);
    CHECK_STR(resp.body.p, "# Remote report\n\nFetched over *HTTP*.\n");
    http_response_free(&resp);
    CHECK_EQ_INT(http_fetch("ftp://127.0.0.1/x", &lim, &resp, err, sizeof err), CELERIAC_EINVAL);
    http_response_free(&resp);
    CHECK_EQ_INT(http_fetch("file:///etc/passwd", &lim, &resp, err, sizeof err), CELERIAC_EINVAL);
    http_response_free(&resp);
    snprintf(url, sizeof url, "http://127.0.0.1:%d/nothing", s.port);
    CHECK_EQ_INT(http_fetch(url, &lim, &resp, err, sizeof err), CELERIAC_EPROTO);
    http_response_free(&resp);
    server_stop(&s);
    char shown[300];
    http_url_shown("https://user:secret@host.example/a?b", shown, sizeof shown);
    CHECK_STR(shown, "https://***@host.example/a?b");
}

TEST(long_titles_and_headers_are_cut_on_characters)
{
    struct run r;
    struct buf b = {0};
    buf_puts(&b, "<html><title>");
    for (int i = 0; i < 3000; i++)
        buf_puts(&b, "\xc3\xa9");
    buf_puts(&b, "</title><p>x</p></html>");
    run_text(&r, b.p, NULL);
    check_ok(&r);
    const char *title = rstr(&r, "title");
    CHECK(title && strlen(title) == 1000);
    run_free(&r);
    b.len = 0;
    buf_puts(&b, "a");
    for (int i = 0; i < 3000; i++)
        buf_puts(&b, "\xc3\xa9");
    buf_puts(&b, ",b\n1,2\n3,4\n");
    run_text(&r, b.p, NULL);
    check_ok(&r);
    CHECK_STR(rstr(&r, "detected_type"), "csv");
    const celeriac_value *h = celeriac_value_get(celeriac_value_get(r.result, "csv"), "header");
    size_t len = 0;
    celeriac_value_string(celeriac_value_at(h, 0), &len);
    CHECK_EQ_INT(len, 255); /* "a" + 127 two-byte characters */
    run_free(&r);
    buf_free(&b);
}
