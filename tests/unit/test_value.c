/* test_value.c - unit tests for value.c: builders, accessors, copy, Python repr, JSON round trip. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "test.h"
#include "value.h"

static void check_repr(const celeriac_value *v, size_t max, const char *want)
{
    char *r = value_repr(v, max);
    CHECK_STR(r, want);
    free(r);
}

static void check_double(double d, const char *want)
{
    celeriac_value *v = celeriac_value_new_double(d);
    check_repr(v, 0, want);
    celeriac_value_free(v);
}

static void check_str(const char *s, size_t len, const char *want)
{
    celeriac_value *v = celeriac_value_new_stringn(s, len);
    check_repr(v, 0, want);
    celeriac_value_free(v);
}

TEST(builders_and_accessors)
{
    celeriac_value *o = celeriac_value_new_object();
    CHECK(o);
    CHECK_EQ_INT(celeriac_value_set(o, "n", celeriac_value_new_int(-7)), 0);
    CHECK_EQ_INT(celeriac_value_set(o, "d", celeriac_value_new_double(2.75)), 0);
    CHECK_EQ_INT(celeriac_value_set(o, "b", celeriac_value_new_bool(5)), 0);
    CHECK_EQ_INT(celeriac_value_set(o, "s", celeriac_value_new_stringn("a\0b", 3)), 0);
    CHECK_EQ_INT(celeriac_value_set(o, "x", celeriac_value_new_bytes("\xff\x00", 2)), 0);
    CHECK_EQ_INT(celeriac_value_set(o, "z", celeriac_value_new_null()), 0);
    CHECK_EQ_INT(celeriac_value_len(o), 6);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(o, "n")), -7);
    CHECK_EQ_INT(celeriac_value_int(celeriac_value_get(o, "d")), 2);
    CHECK(celeriac_value_double(celeriac_value_get(o, "n")) == -7.0);
    CHECK(celeriac_value_double(celeriac_value_get(o, "d")) == 2.75);
    CHECK_EQ_INT(celeriac_value_bool(celeriac_value_get(o, "b")), 1);
    CHECK_EQ_INT(celeriac_value_bool(celeriac_value_get(o, "n")), 0);
    size_t len = 0;
    const char *s = celeriac_value_string(celeriac_value_get(o, "s"), &len);
    CHECK_EQ_INT(len, 3);
    CHECK(s && memcmp(s, "a\0b", 4) == 0);
    CHECK(celeriac_value_string(celeriac_value_get(o, "x"), &len) && len == 2);
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(o, "x")), CELERIAC_BYTES);
    CHECK_EQ_INT(celeriac_value_type(celeriac_value_get(o, "z")), CELERIAC_NULL);
    CHECK(celeriac_value_get(o, "missing") == NULL);
    CHECK_STR(celeriac_value_key_at(o, 3), "s");
    CHECK(celeriac_value_key_at(o, 6) == NULL);
    CHECK(celeriac_value_at(o, 0) == celeriac_value_get(o, "n"));
    CHECK(value_get_str(o, "s") != NULL);
    CHECK(value_get_str(o, "n") == NULL);
    /* Replacing keeps the position. */
    CHECK_EQ_INT(celeriac_value_set(o, "n", celeriac_value_new_string("new")), 0);
    CHECK_EQ_INT(celeriac_value_len(o), 6);
    CHECK_STR(celeriac_value_key_at(o, 0), "n");
    CHECK_STR(value_get_str(o, "n"), "new");
    celeriac_value *t = value_take(o, "b");
    CHECK_EQ_INT(celeriac_value_type(t), CELERIAC_BOOL);
    CHECK_EQ_INT(celeriac_value_len(o), 5);
    CHECK_STR(celeriac_value_key_at(o, 2), "s");
    CHECK(value_take(o, "b") == NULL);
    celeriac_value_free(t);
    celeriac_value_free(o);
}

TEST(null_accessors)
{
    CHECK_EQ_INT(celeriac_value_type(NULL), CELERIAC_NULL);
    CHECK_EQ_INT(celeriac_value_int(NULL), 0);
    CHECK(celeriac_value_double(NULL) == 0.0);
    CHECK(celeriac_value_string(NULL, NULL) == NULL);
    CHECK_EQ_INT(celeriac_value_len(NULL), 0);
    CHECK(celeriac_value_at(NULL, 0) == NULL);
    CHECK(celeriac_value_get(NULL, "k") == NULL);
    celeriac_value_free(NULL);
    celeriac_value *i = celeriac_value_new_int(1);
    CHECK_EQ_INT(celeriac_value_append(i, celeriac_value_new_int(2)), CELERIAC_EINVAL);
    CHECK_EQ_INT(celeriac_value_set(i, "k", celeriac_value_new_int(2)), CELERIAC_EINVAL);
    CHECK_EQ_INT(celeriac_value_append(NULL, NULL), CELERIAC_EINVAL);
    celeriac_value *nan = celeriac_value_new_double(NAN);
    CHECK_EQ_INT(celeriac_value_int(nan), 0);
    celeriac_value *big = celeriac_value_new_double(1e300);
    CHECK(celeriac_value_int(big) == INT64_MAX);
    celeriac_value_free(nan);
    celeriac_value_free(big);
    celeriac_value_free(i);
}

TEST(copy_is_deep)
{
    celeriac_value *a = celeriac_value_new_array();
    celeriac_value *o = celeriac_value_new_object();
    celeriac_value_set(o, "k", celeriac_value_new_string("v"));
    celeriac_value_append(a, o);
    celeriac_value_append(a, celeriac_value_new_bytes("ab", 2));
    celeriac_value *c = celeriac_value_copy(a);
    CHECK(c && c != a);
    CHECK(celeriac_value_at(c, 0) != celeriac_value_at(a, 0));
    CHECK_STR(value_get_str(celeriac_value_at(c, 0), "k"), "v");
    celeriac_value_free(a);
    char *r = value_repr(c, 0);
    CHECK_STR(r, "[{'k': 'v'}, b'ab']");
    free(r);
    celeriac_value_free(c);
    celeriac_value *n = celeriac_value_copy(NULL);
    CHECK_EQ_INT(celeriac_value_type(n), CELERIAC_NULL);
    celeriac_value_free(n);
}

TEST(repr_scalars)
{
    celeriac_value *v = celeriac_value_new_null();
    check_repr(v, 0, "None");
    celeriac_value_free(v);
    v = celeriac_value_new_bool(1);
    check_repr(v, 0, "True");
    celeriac_value_free(v);
    v = celeriac_value_new_bool(0);
    check_repr(v, 0, "False");
    celeriac_value_free(v);
    v = celeriac_value_new_int(INT64_MIN);
    check_repr(v, 0, "-9223372036854775808");
    celeriac_value_free(v);
}

TEST(repr_floats_like_python)
{
    check_double(1.5, "1.5");
    check_double(0.1, "0.1");
    check_double(1e20, "1e+20");
    check_double(1e16, "1e+16");
    check_double(1e15, "1000000000000000.0");
    check_double(123456789012345680.0, "1.2345678901234568e+17");
    check_double(1.0, "1.0");
    check_double(-2.0, "-2.0");
    check_double(0.0, "0.0");
    check_double(-0.0, "-0.0");
    check_double(1e-5, "1e-05");
    check_double(0.0001, "0.0001");
    check_double(1.5e-7, "1.5e-07");
    check_double(3.141592653589793, "3.141592653589793");
    check_double(0.30000000000000004, "0.30000000000000004");
    check_double(1e300 * 1e10, "inf");
    check_double(-1e300 * 1e10, "-inf");
    check_double(NAN, "nan");
    check_double(5e-324, "5e-324");
    check_double(1.7976931348623157e308, "1.7976931348623157e+308");
    check_double(100.0, "100.0");
    check_double(12345.678, "12345.678");
}

TEST(repr_strings_like_python)
{
    check_str("doc-1", 5, "'doc-1'");
    check_str("", 0, "''");
    check_str("it's", 4, "\"it's\"");
    check_str("a'b\"c", 5, "'a\\'b\"c'");
    check_str("say \"hi\"", 8, "'say \"hi\"'");
    check_str("a\nb\tc\rd\\e", 9, "'a\\nb\\tc\\rd\\\\e'");
    check_str("\x01\x1f\x7f", 3, "'\\x01\\x1f\\x7f'");
    check_str("a\0b", 3, "'a\\x00b'");
    check_str("h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80", 15, "'h\xc3\xa9llo \xe2\x82\xac \xf0\x9f\x98\x80'");
    check_str("\xc2\xa0\xc2\x85", 4, "'\\xa0\\x85'");
    check_str("\xe2\x80\xa8", 3, "'\\u2028'");
    check_str("bad\xff", 4, "'bad\\xff'");
    celeriac_value *b = celeriac_value_new_bytes("a'\x00\xff\n", 5);
    check_repr(b, 0, "b\"a'\\x00\\xff\\n\"");
    celeriac_value_free(b);
    b = celeriac_value_new_bytes("", 0);
    check_repr(b, 0, "b''");
    celeriac_value_free(b);
}

TEST(repr_containers_and_tuple)
{
    celeriac_value *v = celeriac_value_from_json(
        "[1, \"x\", null, true, 2.5, {\"pages\": 3, \"lang\": \"en\"}, [], {}]", 61);
    CHECK(v);
    check_repr(v, 0, "[1, 'x', None, True, 2.5, {'pages': 3, 'lang': 'en'}, [], {}]");
    char *t = value_repr_tuple(v, 0);
    CHECK_STR(t, "(1, 'x', None, True, 2.5, {'pages': 3, 'lang': 'en'}, [], {})");
    free(t);
    celeriac_value_free(v);
    v = celeriac_value_from_json("[4, 4]", 6);
    t = value_repr_tuple(v, 0);
    CHECK_STR(t, "(4, 4)");
    free(t);
    celeriac_value_free(v);
    v = celeriac_value_from_json("[\"x\"]", 5);
    t = value_repr_tuple(v, 0);
    CHECK_STR(t, "('x',)");
    free(t);
    celeriac_value_free(v);
    v = celeriac_value_new_array();
    t = value_repr_tuple(v, 0);
    CHECK_STR(t, "()");
    free(t);
    t = value_repr_tuple(NULL, 0);
    CHECK_STR(t, "()");
    free(t);
    celeriac_value_free(v);
}

TEST(repr_truncates)
{
    celeriac_value *v = celeriac_value_new_string("abcdefghij");
    check_repr(v, 5, "'abcd...");
    check_repr(v, 12, "'abcdefghij'");
    check_repr(v, 11, "'abcdefghij...");
    celeriac_value_free(v);
    /* Never cut inside a UTF-8 sequence: 'é' is two bytes at offsets 1-2. */
    v = celeriac_value_new_string("\xc3\xa9\xc3\xa9");
    check_repr(v, 2, "'...");
    check_repr(v, 3, "'\xc3\xa9...");
    celeriac_value_free(v);
    /* A huge array stops early instead of building the whole text. */
    celeriac_value *a = celeriac_value_new_array();
    for (int i = 0; i < 100000; i++)
        celeriac_value_append(a, celeriac_value_new_int(i));
    char *r = value_repr(a, 20);
    CHECK_STR(r, "[0, 1, 2, 3, 4, 5, 6...");
    free(r);
    celeriac_value_free(a);
}

TEST(json_round_trip)
{
    const char *text = "{\"a\": [1, 2.5, \"x\\u00e9\\n\", null, true, false], \"b\": {}, \"c\": []}";
    celeriac_value *v = celeriac_value_from_json(text, strlen(text));
    CHECK(v);
    char *j = celeriac_value_to_json(v);
    CHECK_STR(j, text);
    celeriac_value *w = celeriac_value_from_json(j, strlen(j));
    char *j2 = celeriac_value_to_json(w);
    CHECK_STR(j2, j);
    free(j);
    free(j2);
    celeriac_value_free(v);
    celeriac_value_free(w);
    CHECK(celeriac_value_from_json("{", 1) == NULL);
    CHECK(celeriac_value_from_json(NULL, 0) == NULL);
}

TEST(to_json_python_style)
{
    celeriac_value *o = celeriac_value_new_object();
    celeriac_value_set(o, "z", celeriac_value_new_double(0.1));
    celeriac_value_set(o, "a", celeriac_value_new_double(1e20));
    celeriac_value_set(o, "n", celeriac_value_new_double(NAN));
    celeriac_value_set(o, "s", celeriac_value_new_string("\xf0\x9f\x98\x80/\x7f\""));
    celeriac_value_set(o, "b", celeriac_value_new_bytes("\xff\xfe", 2));
    celeriac_value_set(o, "t", celeriac_value_new_bytes("hi", 2));
    celeriac_value_set(o, "f", celeriac_value_new_double(3.0));
    char *j = celeriac_value_to_json(o);
    CHECK_STR(j, "{\"z\": 0.1, \"a\": 1e+20, \"n\": null, \"s\": \"\\ud83d\\ude00/\\u007f\\\"\", "
                 "\"b\": \"//4=\", \"t\": \"hi\", \"f\": 3.0}");
    free(j);
    celeriac_value_free(o);
    j = celeriac_value_to_json(NULL);
    CHECK_STR(j, "null");
    free(j);
}

/* The shortest round-tripping precision, found by scanning every precision in
 * order: what value_double_repr() finds by bisection must be the same. */
static int shortest_by_scan(double d)
{
    char e[40];
    int prec = 0;
    for (; prec < 16; prec++) {
        snprintf(e, sizeof e, "%.*e", prec, d);
        if (strtod(e, NULL) == d)
            break;
    }
    return prec;
}

/* Significant digits of a number's text: no sign, point, exponent, or leading
 * and trailing zeros ("0.00120" and "1.2e-03" both give "12"). */
static void sig_digits(const char *s, char *out, size_t len)
{
    size_t n = 0;
    for (const char *p = s; *p && *p != 'e' && n + 1 < len; p++)
        if ((*p >= '1' && *p <= '9') || (*p == '0' && n > 0))
            out[n++] = *p;
    while (n > 0 && out[n - 1] == '0')
        n--;
    out[n] = '\0';
}

TEST(double_repr_is_the_shortest_round_trip)
{
    uint64_t x = 0x9e3779b97f4a7c15ULL; /* xorshift: the same doubles every run */
    char buf[32], e[40], got[32], want[32];
    for (int i = 0; i < 60000; i++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        double d;
        if (i % 4 == 1)
            d = (double)(x % 1000000) / 1000.0;
        else if (i % 4 == 2)
            d = ldexp(1.0, (int)(x % 2100) - 1075) * (x & 1 ? -1 : 1); /* powers of two */
        else
            memcpy(&d, &x, sizeof d);
        if (isnan(d) || isinf(d) || d == 0.0)
            continue;
        size_t n = value_double_repr(d, buf);
        buf[n] = '\0';
        snprintf(e, sizeof e, "%.*e", shortest_by_scan(d), d);
        sig_digits(buf, got, sizeof got);
        sig_digits(e, want, sizeof want);
        if (strtod(buf, NULL) != d || strcmp(got, want) != 0) {
            fprintf(stderr, "double %.17g: repr %s, shortest %s\n", d, buf, e);
            CHECK(strtod(buf, NULL) == d);
            CHECK_STR(got, want);
            break;
        }
    }
}

TEST(json_ints_at_the_edges)
{
    celeriac_value *a = celeriac_value_new_array();
    celeriac_value_append(a, celeriac_value_new_int(0));
    celeriac_value_append(a, celeriac_value_new_int(-1));
    celeriac_value_append(a, celeriac_value_new_int(INT64_MAX));
    celeriac_value_append(a, celeriac_value_new_int(INT64_MIN));
    celeriac_value_append(a, celeriac_value_new_int(1000000007));
    char *j = celeriac_value_to_json(a);
    CHECK_STR(j, "[0, -1, 9223372036854775807, -9223372036854775808, 1000000007]");
    free(j);
    celeriac_value_free(a);
}

/* Object keys with Celery's common names point into a shared table; any
 * other key is a copy. Both kinds live in objects side by side, survive
 * copy, take and replacement, and decoders produce both (ASan checks that
 * a table key is never freed and a copy is freed exactly once). */
TEST(shared_and_copied_keys)
{
    CHECK(value_key_table_check() == 0);
    char *a = value_key_dup("delivery_info", 13), *b = value_key_dup("delivery_info", 13);
    CHECK(a && a == b); /* from the table */
    CHECK_STR(a, "delivery_info");
    char *c = value_key_dup("delivery_infos", 14), *d = value_key_dup("delivery_infox", 13);
    CHECK(c && d && c != a && d == a); /* a copy; only the first 13 bytes count */
    CHECK_STR(c, "delivery_infos");
    char *e = value_key_dup("x", 1), *f = value_key_dup("", 0);
    CHECK(e && f && strcmp(e, "x") == 0 && f[0] == '\0');
    value_key_free(a);
    value_key_free(b);
    value_key_free(c);
    value_key_free(d);
    value_key_free(e);
    value_key_free(f);

    const char *text = "{\"id\": 1, \"custom\": {\"task\": [2], \"idx\": 3}, \"headers\": {}, "
                       "\"id\": 4, \"x-celeriac-redeliveries\": 5}";
    celeriac_value *o = celeriac_value_from_json(text, strlen(text));
    CHECK(o != NULL);
    CHECK(celeriac_value_int(celeriac_value_get(o, "id")) == 4);
    celeriac_value *copy = celeriac_value_copy(o);
    celeriac_value *custom = value_take(copy, "custom");
    CHECK(celeriac_value_int(celeriac_value_get(custom, "idx")) == 3);
    CHECK(celeriac_value_set(custom, "task", celeriac_value_new_int(6)) == 0);
    CHECK(celeriac_value_set(custom, "mine", celeriac_value_new_int(7)) == 0);
    CHECK(celeriac_value_int(celeriac_value_get(custom, "task")) == 6);
    CHECK(celeriac_value_int(celeriac_value_get(copy, "x-celeriac-redeliveries")) == 5);
    char *j = celeriac_value_to_json(custom);
    CHECK_STR(j, "{\"task\": 6, \"idx\": 3, \"mine\": 7}");
    free(j);
    celeriac_value_free(custom);
    celeriac_value_free(copy);
    celeriac_value_free(o);
}
