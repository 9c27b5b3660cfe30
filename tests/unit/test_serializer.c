/* test_serializer.c - unit tests for serializer_json.c, serializer_msgpack.c and serializer.c: decode/encode, caps, kombu __type__ objects, content types. */
#include <stdlib.h>
#include <string.h>

#include "serializer.h"
#include "test.h"
#include "util.h"
#include "value.h"

static celeriac_value *jdec(const char *s, int *rc)
{
    celeriac_value *v = NULL;
    char err[256] = "";
    *rc = serializer_json.decode(s, strlen(s), NULL, &v, err, sizeof err);
    if (*rc < 0)
        CHECK(err[0] != '\0' || *rc == CELERIAC_ENOMEM);
    return v;
}

static celeriac_value *mdec(const void *p, size_t n, const struct decode_limits *lim, int *rc)
{
    celeriac_value *v = NULL;
    char err[256] = "";
    *rc = serializer_msgpack.decode(p, n, lim, &v, err, sizeof err);
    if (*rc < 0) {
        CHECK(v == NULL);
        CHECK(err[0] != '\0');
    }
    return v;
}

static void check_repr(const celeriac_value *v, const char *want)
{
    char *r = value_repr(v, 0);
    CHECK_STR(r, want);
    free(r);
}

TEST(json_decode_basic)
{
    int rc;
    celeriac_value *v = jdec("[[\"doc-1\"], {\"pages\": 3, \"lang\": \"en\"}, {\"callbacks\": null}]", &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "[['doc-1'], {'pages': 3, 'lang': 'en'}, {'callbacks': None}]");
    celeriac_value_free(v);
    v = jdec("42", &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(celeriac_value_int(v), 42);
    celeriac_value_free(v);
    v = jdec("\"a\\u0000b\"", &rc);
    CHECK_EQ_INT(rc, 0);
    size_t len;
    CHECK(celeriac_value_string(v, &len) && len == 3);
    celeriac_value_free(v);
    /* Duplicate keys: last value wins, like Python. */
    v = jdec("{\"a\": 1, \"b\": 2, \"a\": 3}", &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "{'a': 3, 'b': 2}");
    celeriac_value_free(v);
    /* The same in an object past the inline search (checked when it closes). */
    struct buf big = {0};
    buf_puts(&big, "{\"dup\": 0");
    for (int i = 0; i < 100; i++)
        buf_printf(&big, ", \"k%d\": %d", i, i);
    buf_puts(&big, ", \"dup\": 7, \"k5\": 55}");
    v = jdec(big.p, &rc);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(celeriac_value_len(v), 101);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(v, "dup")), 7);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(v, "k5")), 55);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(v, "k99")), 99);
    CHECK(strcmp(((struct celeriac_value *)v)->u.o.keys[0], "dup") == 0);
    celeriac_value_free(v);
    buf_free(&big);
}

TEST(json_decode_rejects)
{
    int rc;
    const char *bad[] = {"", "{", "[1,]", "{\"a\" 1}", "[1] x", "NaN", "[Infinity]",
                         "99999999999999999999", "\"\xff\"", "{\"a\\u0000\": 1}", "'x'"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        celeriac_value *v = jdec(bad[i], &rc);
        CHECK(v == NULL);
        CHECK_EQ_INT(rc, CELERIAC_EPARSE);
    }
}

TEST(json_deep_nesting_is_edepth)
{
    size_t n = 100000;
    char *s = malloc(n + 1);
    memset(s, '[', n);
    s[n] = 0;
    int rc;
    celeriac_value *v = jdec(s, &rc);
    CHECK(v == NULL);
    CHECK_EQ_INT(rc, CELERIAC_EDEPTH);
    /* Exactly at the cap is fine, one more is not. */
    struct decode_limits lim = {1 << 20, 4, 1000};
    char err[128];
    CHECK_EQ_INT(serializer_json.decode("[[[[1]]]]", 9, &lim, &v, err, sizeof err), 0);
    celeriac_value_free(v);
    CHECK_EQ_INT(serializer_json.decode("[[[[[1]]]]]", 11, &lim, &v, err, sizeof err),
                 CELERIAC_EDEPTH);
    /* Brackets inside strings do not count. */
    CHECK_EQ_INT(serializer_json.decode("[\"[[[[[[[[\"]", 12, &lim, &v, err, sizeof err), 0);
    celeriac_value_free(v);
    free(s);
}

TEST(json_caps_count_and_size)
{
    struct decode_limits lim = {1 << 20, 64, 5};
    celeriac_value *v = NULL;
    char err[128];
    CHECK_EQ_INT(serializer_json.decode("[1, 2, 3, 4]", 12, &lim, &v, err, sizeof err), 0);
    celeriac_value_free(v);
    CHECK_EQ_INT(serializer_json.decode("[1, 2, 3, 4, 5]", 15, &lim, &v, err, sizeof err),
                 CELERIAC_ECOUNT);
    CHECK_EQ_INT(serializer_json.decode("[[[[[[]]]]]]", 12, &lim, &v, err, sizeof err),
                 CELERIAC_ECOUNT);
    /* Big count without commas in a small buffer of the default limits. */
    size_t n = 3000001;
    char *s = malloc(n + 2);
    s[0] = '[';
    for (size_t i = 1; i < n; i += 2) {
        s[i] = '0';
        s[i + 1] = ',';
    }
    s[n - 1] = '0';
    s[n] = ']';
    s[n + 1] = 0;
    CHECK_EQ_INT(serializer_json.decode(s, n + 1, NULL, &v, err, sizeof err), CELERIAC_ECOUNT);
    CHECK(v == NULL);
    struct decode_limits small = {10, 64, 100};
    CHECK_EQ_INT(serializer_json.decode(s, 11, &small, &v, err, sizeof err), CELERIAC_ETOOBIG);
    free(s);
}

TEST(json_kombu_type_unwrap)
{
    int rc;
    celeriac_value *v = jdec(
        "[{\"__type__\": \"datetime\", \"__value__\": \"2026-11-23T16:41:48.848268+00:00\"},"
        " {\"__type__\": \"decimal\", \"__value__\": \"1.10\"},"
        " {\"__type__\": \"uuid\", \"__value__\": {\"hex\": \"BF46231F4266403DBEF5695E13F7AA57\"}},"
        " {\"__type__\": \"bytes\", \"__value__\": \"text\"},"
        " {\"__type__\": \"base64\", \"__value__\": \"AP8=\"},"
        " {\"__type__\": \"other\", \"__value__\": 1},"
        " {\"__type__\": \"date\", \"__value__\": \"2026-11-23\", \"x\": 1}]",
        &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "['2026-11-23T16:41:48.848268+00:00', '1.10', "
                  "'bf46231f-4266-403d-bef5-695e13f7aa57', 'text', b'\\x00\\xff', "
                  "{'__type__': 'other', '__value__': 1}, "
                  "{'__type__': 'date', '__value__': '2026-11-23', 'x': 1}]");
    celeriac_value_free(v);
    v = jdec("{\"__type__\": \"base64\", \"__value__\": \"!!\"}", &rc);
    CHECK_EQ_INT(rc, CELERIAC_EPARSE);
    CHECK(v == NULL);
}

TEST(json_encode_python_style)
{
    int rc;
    const char *in = "{\"k\": [1, -2, 0.5, \"\\u00e9\", null, {\"x\": false}], \"e\": {}}";
    celeriac_value *v = jdec(in, &rc);
    char *out = NULL;
    size_t len = 0;
    CHECK_EQ_INT(serializer_json.encode(v, &out, &len), 0);
    CHECK_STR(out, in);
    CHECK_EQ_INT(len, strlen(in));
    free(out);
    celeriac_value_free(v);
}

TEST(msgpack_fixture_body)
{
    /* The body of protocol/fixtures/task-v2-msgpack.json, base64-decoded. */
    static const unsigned char b[] = {
        0x93, 0x91, 0xa5, 'd', 'o', 'c', '-', '2', 0x81, 0xa5, 'p', 'a', 'g', 'e', 's', 0x01,
        0x84, 0xa9, 'c', 'a', 'l', 'l', 'b', 'a', 'c', 'k', 's', 0xc0, 0xa8, 'e', 'r', 'r', 'b',
        'a', 'c', 'k', 's', 0xc0, 0xa5, 'c', 'h', 'a', 'i', 'n', 0xc0, 0xa5, 'c', 'h', 'o', 'r',
        'd', 0xc0};
    int rc;
    celeriac_value *v = mdec(b, sizeof b, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "[['doc-2'], {'pages': 1}, {'callbacks': None, 'errbacks': None, "
                  "'chain': None, 'chord': None}]");
    /* And back: msgpack-c packs the same bytes Python's msgpack did. */
    char *out = NULL;
    size_t len = 0;
    CHECK_EQ_INT(serializer_msgpack.encode(v, &out, &len), 0);
    CHECK_EQ_INT(len, sizeof b);
    CHECK(out && memcmp(out, b, sizeof b) == 0);
    free(out);
    celeriac_value_free(v);
}

TEST(msgpack_types)
{
    static const unsigned char b[] = {
        0x9c,                                           /* array of 12 */
        0xc0, 0xc2, 0xc3,                               /* nil false true */
        0xff,                                           /* -1 */
        0xd0, 0x80,                                     /* int8 -128 */
        0xd1, 0x80, 0x00,                               /* int16 -32768 */
        0xcf, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, /* uint64 max -> double */
        0xd3, 0x80, 0, 0, 0, 0, 0, 0, 0,                /* int64 min */
        0xca, 0x3f, 0xc0, 0x00, 0x00,                   /* float32 1.5 */
        0xcb, 0x3f, 0xb9, 0x99, 0x99, 0x99, 0x99, 0x99, 0x9a, /* float64 0.1 */
        0xc4, 0x02, 0x00, 0xff,                         /* bin */
        0xd9, 0x02, 0xc3, 0xa9,                         /* str8 "é" */
    };
    int rc;
    celeriac_value *v = mdec(b, sizeof b, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "[None, False, True, -1, -128, -32768, 1.8446744073709552e+19, "
                  "-9223372036854775808, 1.5, 0.1, b'\\x00\\xff', '\xc3\xa9']");
    celeriac_value_free(v);
}

TEST(msgpack_rejects)
{
    struct {
        const char *b;
        size_t n;
        int rc;
    } cases[] = {
        {"\xc1", 1, CELERIAC_EPARSE},                 /* never used */
        {"\xd4\x01\x00", 3, CELERIAC_EPARSE},         /* fixext */
        {"\xc7\x01\x05\x00", 4, CELERIAC_EPARSE},     /* ext8 */
        {"\x81\x01\x02", 3, CELERIAC_EPARSE},         /* int key */
        {"\x81\xa2k\x00\x01", 5, CELERIAC_EPARSE},    /* NUL in key */
        {"\xa2\xff\xfe", 3, CELERIAC_EPARSE},         /* str not UTF-8 */
        {"\x92\x01", 2, CELERIAC_EPARSE},             /* truncated */
        {"\xdb\xff\xff\xff\xff", 5, CELERIAC_EPARSE}, /* str32 longer than input */
        {"\x01\x02", 2, CELERIAC_EPARSE},             /* trailing */
        {"", 0, CELERIAC_EPARSE},
    };
    for (size_t i = 0; i < sizeof cases / sizeof *cases; i++) {
        int rc;
        celeriac_value *v = mdec(cases[i].b, cases[i].n, NULL, &rc);
        CHECK(v == NULL);
        CHECK_EQ_INT(rc, cases[i].rc);
    }
}

TEST(msgpack_huge_declared_count)
{
    /* 2^32-1 elements declared in 5 bytes: refused before any allocation. */
    int rc;
    celeriac_value *v = mdec("\xdd\xff\xff\xff\xff", 5, NULL, &rc);
    CHECK(v == NULL);
    CHECK_EQ_INT(rc, CELERIAC_EPARSE);
    v = mdec("\xdf\xff\xff\xff\xff", 5, NULL, &rc);
    CHECK(v == NULL);
    CHECK_EQ_INT(rc, CELERIAC_EPARSE);
    /* Enough bytes, but more elements than max_items. */
    struct decode_limits lim = {1 << 20, 64, 10};
    unsigned char b[3 + 20];
    b[0] = 0xdc;
    b[1] = 0;
    b[2] = 20;
    memset(b + 3, 0x01, 20);
    v = mdec(b, sizeof b, &lim, &rc);
    CHECK_EQ_INT(rc, CELERIAC_ECOUNT);
    struct decode_limits tiny = {4, 64, 10};
    v = mdec(b, sizeof b, &tiny, &rc);
    CHECK_EQ_INT(rc, CELERIAC_ETOOBIG);
}

TEST(msgpack_depth)
{
    unsigned char b[200];
    memset(b, 0x91, sizeof b - 1);
    b[sizeof b - 1] = 0x01;
    int rc;
    celeriac_value *v = mdec(b, sizeof b, NULL, &rc);
    CHECK(v == NULL);
    CHECK_EQ_INT(rc, CELERIAC_EDEPTH);
    /* 64 levels is the default cap, and deeper than msgpack-c's own 32. */
    v = mdec(b + sizeof b - 65, 65, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    celeriac_value_free(v);
    v = mdec(b + sizeof b - 66, 66, NULL, &rc);
    CHECK_EQ_INT(rc, CELERIAC_EDEPTH);
}

TEST(msgpack_duplicate_keys_last_wins)
{
    /* {"a": 1, "b": 2, "a": 3} as map16 and a large map with many duplicates. */
    int rc;
    celeriac_value *v = mdec("\x83\xa1" "a\x01\xa1" "b\x02\xa1" "a\x03", 10, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "{'a': 3, 'b': 2}");
    celeriac_value_free(v);
    unsigned char big[3 + 40 * 3];
    big[0] = 0xde;
    big[1] = 0;
    big[2] = 40;
    for (int i = 0; i < 40; i++) {
        big[3 + i * 3] = 0xa1;
        big[4 + i * 3] = (unsigned char)('a' + i % 5);
        big[5 + i * 3] = (unsigned char)i;
    }
    v = mdec(big, sizeof big, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(v, "{'a': 35, 'b': 36, 'c': 37, 'd': 38, 'e': 39}");
    celeriac_value_free(v);
}

TEST(msgpack_encode_types)
{
    celeriac_value *a = celeriac_value_new_array();
    celeriac_value_append(a, celeriac_value_new_bytes("\x00\x01", 2));
    celeriac_value_append(a, celeriac_value_new_string("hi"));
    celeriac_value_append(a, celeriac_value_new_int(-1000000));
    celeriac_value_append(a, celeriac_value_new_double(0.25));
    celeriac_value_append(a, celeriac_value_new_bool(1));
    celeriac_value_append(a, celeriac_value_new_null());
    celeriac_value *o = celeriac_value_new_object();
    celeriac_value_set(o, "k", celeriac_value_new_int(300));
    celeriac_value_append(a, o);
    char *out = NULL;
    size_t len = 0;
    CHECK_EQ_INT(serializer_msgpack.encode(a, &out, &len), 0);
    CHECK((unsigned char)out[0] == 0x97);
    CHECK((unsigned char)out[1] == 0xc4); /* bin, not str */
    int rc;
    celeriac_value *back = mdec(out, len, NULL, &rc);
    CHECK_EQ_INT(rc, 0);
    check_repr(back, "[b'\\x00\\x01', 'hi', -1000000, 0.25, True, None, {'k': 300}]");
    free(out);
    celeriac_value_free(back);
    celeriac_value_free(a);
}

TEST(content_types)
{
    const struct serializer *s = NULL;
    CHECK_EQ_INT(serializer_for_content_type("application/json", &s), SERIALIZER_OK);
    CHECK(s == &serializer_json);
    CHECK_EQ_INT(serializer_for_content_type("Application/JSON; charset=utf-8", &s), SERIALIZER_OK);
    CHECK(s == &serializer_json);
    CHECK_EQ_INT(serializer_for_content_type("json", &s), SERIALIZER_OK);
    CHECK_EQ_INT(serializer_for_content_type("application/x-msgpack", &s), SERIALIZER_OK);
    CHECK(s == &serializer_msgpack);
    CHECK_EQ_INT(serializer_for_content_type("msgpack", &s), SERIALIZER_OK);
    CHECK(s == &serializer_msgpack);
    CHECK_EQ_INT(serializer_for_content_type("application/x-python-serialize", &s),
                 SERIALIZER_REFUSED);
    CHECK(s == NULL);
    CHECK_EQ_INT(serializer_for_content_type("pickle", &s), SERIALIZER_REFUSED);
    CHECK_EQ_INT(serializer_for_content_type("application/x-yaml", &s), SERIALIZER_REFUSED);
    CHECK_EQ_INT(serializer_for_content_type("application/yaml", &s), SERIALIZER_REFUSED);
    CHECK_EQ_INT(serializer_for_content_type("yaml", &s), SERIALIZER_REFUSED);
    CHECK_EQ_INT(serializer_for_content_type("text/plain", &s), SERIALIZER_UNKNOWN);
    CHECK_EQ_INT(serializer_for_content_type("application/jsonx", &s), SERIALIZER_UNKNOWN);
    CHECK_EQ_INT(serializer_for_content_type("", &s), SERIALIZER_UNKNOWN);
    CHECK_EQ_INT(serializer_for_content_type(NULL, &s), SERIALIZER_UNKNOWN);
    CHECK_STR(serializer_json.content_type, "application/json");
    CHECK_STR(serializer_msgpack.name, "msgpack");
    CHECK_EQ_INT(decode_limits_default.max_bytes, 64 * 1024 * 1024);
    CHECK_EQ_INT(decode_limits_default.max_depth, 64);
    CHECK_EQ_INT(decode_limits_default.max_items, 1000000);
}

static int lifted_in_place; /* cases same_as_plain() saw lifted with where */

/* json_decode_lifting() must be indistinguishable from the plain decode:
 * same code, same error text, same value (compared as encoded JSON). */
static void same_as_plain(const char *s, size_t n, const struct decode_limits *lim)
{
    celeriac_value *a = NULL, *b = NULL;
    char ea[256] = "", eb[256] = "";
    int ra = serializer_json.decode(s, n, lim, &a, ea, sizeof ea);
    int rb = json_decode_lifting(s, n, "body", lim, &b, eb, sizeof eb, NULL);
    CHECK_EQ_INT(rb, ra);
    CHECK_STR(eb, ea);
    char *ja = a ? celeriac_value_to_json(a) : NULL, *jb = b ? celeriac_value_to_json(b) : NULL;
    CHECK((ja == NULL) == (jb == NULL));
    if (ja && jb)
        CHECK_STR(jb, ja);
    if (ra != rb || (ja && jb && strcmp(ja, jb) != 0))
        fprintf(stderr, "  input (%zu bytes): %.300s\n", n, s);
    free(ja);
    free(jb);
    /* Left in place (where): the member is "" and its text is where says. */
    celeriac_value *c = NULL;
    char ec[256] = "";
    struct json_lifted at = {0};
    int rc = json_decode_lifting(s, n, "body", lim, &c, ec, sizeof ec, &at);
    CHECK_EQ_INT(rc, ra);
    CHECK_STR(ec, ea);
    if (rc == 0 && at.found) {
        const celeriac_value *pb = celeriac_value_get(a, "body");
        CHECK(celeriac_value_type(pb) == CELERIAC_STRING && at.len == pb->u.s.len &&
              at.off + at.len <= n && memcmp(s + at.off, pb->u.s.p, at.len) == 0);
        celeriac_value *empty = celeriac_value_new_string("");
        CHECK_EQ_INT(celeriac_value_set(a, "body", empty), 0);
        lifted_in_place++;
    }
    ja = a ? celeriac_value_to_json(a) : NULL;
    jb = c ? celeriac_value_to_json(c) : NULL;
    CHECK((ja == NULL) == (jb == NULL));
    if (ja && jb)
        CHECK_STR(jb, ja);
    free(ja);
    free(jb);
    celeriac_value_free(c);
    celeriac_value_free(a);
    celeriac_value_free(b);
}

static char long_b64[600];

static const char *lift_case(struct buf *b, const char *fmt)
{
    b->len = 0;
    for (const char *p = fmt; *p; p++) {
        if (*p == '@')
            buf_puts(b, long_b64);
        else
            buf_append(b, p, 1);
    }
    return b->p;
}

TEST(json_lifting_agrees_with_the_plain_decode)
{
    for (size_t i = 0; i < sizeof long_b64 - 1; i++)
        long_b64[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"[i * 7 % 64];
    static const char *const cases[] = {
        "{\"body\": \"@\", \"headers\": {\"id\": \"x\"}, \"properties\": {}}",
        "  {\"headers\": {\"body\": \"@\"}, \"body\": \"@\"}  ",
        "{\"headers\": {\"a\": [1, {\"body\": 2}, \"]}\"]}, \"n\": -1.5e3, \"t\": true, \"body\": \"@\"}",
        "{\"body\":\"@\",\"body\":\"@x\"}",         /* twice: plain decode decides */
        "{\"bo\\u0064y\": \"@\", \"body\": \"@\"}", /* escaped key */
        "{\"body\": \"@\\n@\"}",                    /* escapes in the value */
        "{\"body\": \"@\xc3\xa9@\"}",               /* non-ASCII */
        "{\"body\": \"@\x01\"}",                    /* control character */
        "{\"body\": \"short\"}",
        "{\"body\": \"a plain value of 40 bytes, not lifted\"}",
        "{\"body\": \"@\", \"n\": 1}",
        "{\"body\": [\"@\"]}",
        "{\"body\": \"@\"",                         /* unterminated object */
        "{\"body\": \"@",                           /* unterminated string */
        "{\"body\": \"@\" \"x\": 1}",               /* missing comma */
        "{\"body\": \"@\", }",
        "{\"body\": \"@\"} trailing",
        "[\"body\", \"@\"]",
        "{\"__type__\": \"bytes\", \"__value__\": \"x\", \"body\": \"@\"}",
        "{\"x\": 1 \"body\": \"@\"}",
        "{\"x\": }, \"body\": \"@\"}",
        "{\"a\": [}, \"body\": \"@\"}",
        "{\"body\": \"@\", \"deep\": [[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]}",
    };
    /* Where the long value is lifted from (offset of its last '@' in the
     * case, which is the body's), or 0 where the plain decode must run. */
    static const int lifted[] = {1, 1, 1, 0, 0, 0, 0, 0, 0, 0, 1, 0, 1, 0, 1, 1, 1, 0, 1, 0, 0, 1, 1};
    struct buf b = {0};
    for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
        const char *s = lift_case(&b, cases[i]);
        same_as_plain(s, strlen(s), NULL);
        size_t off = 0, vlen = 0, want = 0;
        int found = json_find_plain_member(s, strlen(s), "body", &off, &vlen);
        CHECK_EQ_INT(found, lifted[i]);
        const char *at = strrchr(cases[i], '@');
        want = (size_t)(at - cases[i]);
        for (const char *p = cases[i]; p < at; p++)
            want += *p == '@' ? strlen(long_b64) - 1 : 0;
        if (found && lifted[i]) {
            CHECK_EQ_INT(off, want);
            CHECK_EQ_INT(vlen, strlen(long_b64));
        }
        if (found != lifted[i])
            fprintf(stderr, "  case %zu: %s\n", i, cases[i]);
    }
    /* Caps apply to the whole text and to the values alike. */
    const char *s = lift_case(&b, cases[2]);
    struct decode_limits small = {strlen(s) - 1, 64, 1000};
    same_as_plain(s, strlen(s), &small);
    struct decode_limits shallow = {1 << 20, 2, 1000}, few = {1 << 20, 64, 3};
    same_as_plain(s, strlen(s), &shallow);
    same_as_plain(s, strlen(s), &few);
    s = lift_case(&b, cases[22]);
    same_as_plain(s, strlen(s), &shallow);

    /* Random damage to a real envelope with a long body. */
    size_t n = 0;
    char *fx = test_fixture("task-v2-json-basic.json", &n);
    CHECK(fx && strncmp(fx, "{\"body\": \"", 10) == 0);
    const char *rest = fx ? strstr(fx, "\", \"") : NULL;
    CHECK(rest != NULL);
    if (!rest) {
        free(fx);
        buf_free(&b);
        return;
    }
    lift_case(&b, "{\"body\": \"@");
    buf_puts(&b, rest); /* the captured envelope with a long body */
    char *env = strdup(b.p);
    n = b.len;
    free(fx);
    same_as_plain(env, n, NULL);
    char *m = malloc(n + 8);
    unsigned seed = 99;
    for (int iter = 0; iter < 3000 && m; iter++) {
        memcpy(m, env, n);
        size_t mn = n;
        for (int k = 0; k < 1 + iter % 3; k++) {
            seed = seed * 1103515245u + 12345u;
            size_t at = (seed >> 8) % mn;
            static const char bytes[] = "\"\\{}[],: x\x01\xc3";
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
        same_as_plain(m, mn, NULL);
    }
    CHECK(lifted_in_place >= 1000);
    free(m);
    free(env);
    buf_free(&b);
}
