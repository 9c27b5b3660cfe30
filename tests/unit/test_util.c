/* test_util.c - unit tests for util.c: ISO-8601 parse/format, uuid4, struct buf. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"
#include "test.h"
#include "util.h"

static void check_parse(const char *s, double want)
{
    double t = -1;
    int rc = util_iso8601_parse(s, &t);
    if (rc != 0 || fabs(t - want) > 1e-6)
        fprintf(stderr, "  parse(%s) = %d, %.6f (want %.6f)\n", s, rc, t, want);
    CHECK_EQ_INT(rc, 0);
    CHECK(fabs(t - want) <= 1e-6);
}

TEST(iso8601_fixture_forms)
{
    /* 2026-11-23T16:41:48.848268+00:00 = 1795452108.848268 */
    check_parse("2026-11-23T16:41:48.848268+00:00", 1795452108.848268);
    check_parse("2026-11-23T16:41:48.848268Z", 1795452108.848268);
    check_parse("2026-11-23T16:41:48.848268", 1795452108.848268); /* naive = UTC */
    check_parse("2026-11-23 16:41:48.848268", 1795452108.848268);
    check_parse("2026-11-23T16:41:48+00:00", 1795452108.0);
    check_parse("2026-11-23T22:11:48.848268+05:30", 1795452108.848268);
    check_parse("2026-11-23T08:41:48.848268-08:00", 1795452108.848268);
    check_parse("2026-11-23T08:41:48.848268-0800", 1795452108.848268);
    check_parse("2026-11-23T16:41:48.8+00:00", 1795452108.8);
    check_parse("2026-11-23T16:41:48.848268123", 1795452108.848268123);
    check_parse("2026-11-23T16:41", 1795452060.0);
    check_parse("2026-11-23", 1795392000.0);
    check_parse("1970-01-01T00:00:00", 0.0);
    check_parse("2024-02-29T00:00:00Z", 1709164800.0);
    check_parse("1969-12-31T23:59:59", -1.0);
}

TEST(iso8601_rejects_garbage)
{
    const char *bad[] = {"", "now", "2026-11-23T", "2026-13-01T00:00:00", "2026-02-30",
                         "2025-02-29", "2026-11-23T24:00:00", "2026-11-23T16:61:00",
                         "2026-11-23T16:41:48.+00:00", "2026-11-23T16:41:48+0", "2026-11-23x",
                         "2026-11-23T16:41:48 junk", "26-11-23", "2026-1-23", "2026-11-23T16:41:48+25:00"};
    for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
        double t;
        int rc = util_iso8601_parse(bad[i], &t);
        if (rc != CELERIAC_EPARSE)
            fprintf(stderr, "  accepted: %s\n", bad[i]);
        CHECK_EQ_INT(rc, CELERIAC_EPARSE);
    }
    double t;
    CHECK_EQ_INT(util_iso8601_parse(NULL, &t), CELERIAC_EINVAL);
}

TEST(iso8601_format)
{
    char buf[40];
    util_iso8601_format(1795452089.553005, buf, sizeof buf);
    CHECK_STR(buf, "2026-11-23T16:41:29.553005");
    util_iso8601_format_tz(1795452108.848268, buf, sizeof buf);
    CHECK_STR(buf, "2026-11-23T16:41:48.848268+00:00");
    util_iso8601_format(0, buf, sizeof buf);
    CHECK_STR(buf, "1970-01-01T00:00:00.000000");
    util_iso8601_format(1709164799.9999996, buf, sizeof buf);
    CHECK_STR(buf, "2024-02-29T00:00:00.000000");
    util_iso8601_format(-1.5, buf, sizeof buf);
    CHECK_STR(buf, "1969-12-31T23:59:58.500000");
    util_iso8601_format(253402300800.25, buf, sizeof buf); /* year 10000: printf's form */
    CHECK_STR(buf, "10000-01-01T00:00:00.250000");
    util_iso8601_format_tz(1795452108.848268, buf, 11); /* cut as snprintf cuts */
    CHECK_STR(buf, "2026-11-23");
    /* Format then parse is the identity (to the microsecond). */
    double now = util_now(), back;
    util_iso8601_format_tz(now, buf, sizeof buf);
    CHECK_EQ_INT(util_iso8601_parse(buf, &back), 0);
    CHECK(fabs(back - now) < 1e-5);
}

TEST(clocks)
{
    CHECK(util_now() > 1.6e9);
    double a = util_monotonic(), b = util_monotonic();
    CHECK(b >= a);
}

TEST(uuid4_shape)
{
    char a[37], b[37];
    util_uuid4(a);
    util_uuid4(b);
    CHECK_EQ_INT(strlen(a), 36);
    CHECK(strcmp(a, b) != 0);
    CHECK(a[8] == '-' && a[13] == '-' && a[18] == '-' && a[23] == '-');
    CHECK(a[14] == '4');
    CHECK(strchr("89ab", a[19]) != NULL);
    CHECK(strspn(a, "0123456789abcdef-") == 36);
}

TEST(buf_helpers)
{
    struct buf b = {0};
    CHECK_EQ_INT(buf_puts(&b, "abc"), 0);
    CHECK_EQ_INT(buf_append(&b, "\0d", 2), 0);
    CHECK_EQ_INT(b.len, 5);
    CHECK(memcmp(b.p, "abc\0d", 6) == 0);
    for (int i = 0; i < 1000; i++)
        CHECK_EQ_INT(buf_printf(&b, "%d,", i), 0);
    CHECK(b.p[b.len] == '\0');
    CHECK(strstr(b.p + 5, "998,999,") != NULL);
    buf_free(&b);
    CHECK(b.p == NULL && b.len == 0);
    buf_free(&b);
    struct buf e = {0};
    CHECK_EQ_INT(buf_append(&e, "", 0), 0);
    CHECK_STR(e.p, "");
    buf_free(&e);
    CHECK_STR(celeriac_strerror(CELERIAC_EDEPTH), "input nested too deeply");
    CHECK_STR(celeriac_strerror(0), "success");
    CHECK_STR(celeriac_strerror(-9999), "unknown error");
}
