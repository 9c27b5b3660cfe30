/* util.c - owns the clock, ISO-8601 parsing/formatting, uuid4 and struct buf; it does no other I/O than the clock and the random source. */
#include "util.h"

#include <errno.h>
#include <fcntl.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "celeriac.h"

double util_now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

double util_monotonic(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil); pure, no time zone or locale involved. */
static long long days_from_civil(long long y, unsigned m, unsigned d)
{
    y -= m <= 2;
    long long era = (y >= 0 ? y : y - 399) / 400;
    unsigned yoe = (unsigned)(y - era * 400);
    unsigned doy = (153 * (m > 2 ? m - 3 : m + 9) + 2) / 5 + d - 1;
    unsigned doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + (long long)doe - 719468;
}

static void civil_from_days(long long z, int *y, unsigned *m, unsigned *d)
{
    z += 719468;
    long long era = (z >= 0 ? z : z - 146096) / 146097;
    unsigned doe = (unsigned)(z - era * 146097);
    unsigned yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
    long long yy = (long long)yoe + era * 400;
    unsigned doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    unsigned mp = (5 * doy + 2) / 153;
    *d = doy - (153 * mp + 2) / 5 + 1;
    *m = mp < 10 ? mp + 3 : mp - 9;
    *y = (int)(yy + (*m <= 2));
}

static int is_leap(int y)
{
    return (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
}

static int days_in_month(int y, int m)
{
    static const int dim[12] = {31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31};
    return m == 2 && is_leap(y) ? 29 : dim[m - 1];
}

/* Reads exactly n decimal digits at *p; advances *p. -1 if not digits. */
static int digits(const char **p, int n)
{
    int v = 0;
    for (int i = 0; i < n; i++) {
        char c = (*p)[i];
        if (c < '0' || c > '9')
            return -1;
        v = v * 10 + (c - '0');
    }
    *p += n;
    return v;
}

int util_iso8601_parse(const char *s, double *out)
{
    if (!s || !out)
        return CELERIAC_EINVAL;
    const char *p = s;
    int year, mon, day, hour = 0, min = 0, sec = 0;
    double frac = 0.0;
    long offset = 0; /* seconds east of UTC */

    if ((year = digits(&p, 4)) < 1 || *p++ != '-' || (mon = digits(&p, 2)) < 1 || mon > 12 ||
        *p++ != '-' || (day = digits(&p, 2)) < 1 || day > days_in_month(year, mon))
        return CELERIAC_EPARSE;
    if (*p == 'T' || *p == 't' || *p == ' ') {
        p++;
        if ((hour = digits(&p, 2)) < 0 || hour > 23 || *p++ != ':' || (min = digits(&p, 2)) < 0 ||
            min > 59)
            return CELERIAC_EPARSE;
        if (*p == ':') {
            p++;
            if ((sec = digits(&p, 2)) < 0 || sec > 59)
                return CELERIAC_EPARSE;
            if (*p == '.' || *p == ',') {
                p++;
                double scale = 0.1;
                int n = 0;
                while (*p >= '0' && *p <= '9') {
                    if (n < 9)
                        frac += (*p - '0') * scale;
                    scale /= 10;
                    p++;
                    n++;
                }
                if (n == 0)
                    return CELERIAC_EPARSE;
            }
        }
        if (*p == 'Z' || *p == 'z') {
            p++;
        } else if (*p == '+' || *p == '-') {
            int sign = *p++ == '-' ? -1 : 1;
            int oh, om = 0;
            if ((oh = digits(&p, 2)) < 0 || oh > 23)
                return CELERIAC_EPARSE;
            if (*p == ':')
                p++;
            if (*p >= '0' && *p <= '9') {
                if ((om = digits(&p, 2)) < 0 || om > 59)
                    return CELERIAC_EPARSE;
            }
            offset = sign * (oh * 3600L + om * 60L);
        }
    }
    if (*p != '\0')
        return CELERIAC_EPARSE;
    long long days = days_from_civil(year, (unsigned)mon, (unsigned)day);
    long long secs = days * 86400LL + hour * 3600LL + min * 60LL + sec - offset;
    *out = (double)secs + frac;
    return 0;
}

static void format_iso(double t, char *buf, size_t len, const char *suffix)
{
    if (!buf || len == 0)
        return;
    if (!isfinite(t))
        t = 0.0;
    double whole = floor(t);
    long long us = llround((t - whole) * 1e6);
    long long secs = (long long)whole;
    if (us >= 1000000) {
        secs++;
        us -= 1000000;
    }
    long long days = secs >= 0 ? secs / 86400 : -((-secs + 86399) / 86400);
    long long rem = secs - days * 86400;
    int y;
    unsigned m, d;
    civil_from_days(days, &y, &m, &d);
    if (y < 0 || y > 9999) {
        snprintf(buf, len, "%04d-%02u-%02uT%02d:%02d:%02d.%06lld%s", y, m, d, (int)(rem / 3600),
                 (int)(rem / 60 % 60), (int)(rem % 60), us, suffix);
        return;
    }
    /* The same text without printf (once per result stored). */
    char out[40];
    const long long parts[7] = {y, m, d, rem / 3600, rem / 60 % 60, rem % 60, us};
    const int width[7] = {4, 2, 2, 2, 2, 2, 6};
    const char sep[7] = {'-', '-', 'T', ':', ':', '.', 0};
    size_t k = 0;
    for (int i = 0; i < 7; i++) {
        long long v = parts[i];
        for (int w = width[i] - 1; w >= 0; w--, v /= 10)
            out[k + (size_t)w] = (char)('0' + v % 10);
        k += (size_t)width[i];
        if (sep[i])
            out[k++] = sep[i];
    }
    size_t slen = strlen(suffix);
    memcpy(out + k, suffix, slen + 1);
    k += slen;
    size_t n = k < len ? k : len - 1;
    memcpy(buf, out, n);
    buf[n] = '\0';
}

void util_iso8601_format(double t, char *buf, size_t len)
{
    format_iso(t, buf, len, "");
}

void util_iso8601_format_tz(double t, char *buf, size_t len)
{
    format_iso(t, buf, len, "+00:00");
}

/* Fills p with n random bytes: getrandom(), then /dev/urandom, then (only if
 * both fail) a clock-seeded generator, so a uuid is always produced. */
static void random_bytes(unsigned char *p, size_t n)
{
    size_t got = 0;
    while (got < n) {
        ssize_t r = getrandom(p + got, n - got, 0);
        if (r < 0) {
            if (errno == EINTR)
                continue;
            break;
        }
        got += (size_t)r;
    }
    if (got == n)
        return;
    int fd = open("/dev/urandom", O_RDONLY | O_CLOEXEC);
    if (fd >= 0) {
        while (got < n) {
            ssize_t r = read(fd, p + got, n - got);
            if (r <= 0) {
                if (r < 0 && errno == EINTR)
                    continue;
                break;
            }
            got += (size_t)r;
        }
        close(fd);
    }
    if (got == n)
        return;
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    uint64_t x = (uint64_t)ts.tv_nsec ^ ((uint64_t)ts.tv_sec << 20) ^ (uint64_t)getpid() ^
                 (uint64_t)(uintptr_t)p;
    for (; got < n; got++) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        p[got] = (unsigned char)(x >> 24);
    }
}

void util_uuid4(char buf[37])
{
    static const char hex[] = "0123456789abcdef";
    unsigned char r[16];
    random_bytes(r, sizeof r);
    r[6] = (unsigned char)((r[6] & 0x0f) | 0x40);
    r[8] = (unsigned char)((r[8] & 0x3f) | 0x80);
    size_t o = 0;
    for (int i = 0; i < 16; i++) {
        if (i == 4 || i == 6 || i == 8 || i == 10)
            buf[o++] = '-';
        buf[o++] = hex[r[i] >> 4];
        buf[o++] = hex[r[i] & 15];
    }
    buf[o] = '\0';
}

static int buf_reserve(struct buf *b, size_t extra)
{
    if (extra > SIZE_MAX - b->len - 1)
        return CELERIAC_ENOMEM;
    size_t need = b->len + extra + 1;
    if (b->p && need <= b->cap)
        return 0;
    size_t cap = b->cap ? b->cap : 64;
    while (cap < need)
        cap = cap > SIZE_MAX / 2 ? need : cap * 2;
    char *np = realloc(b->p, cap);
    if (!np)
        return CELERIAC_ENOMEM;
    b->p = np;
    b->cap = cap;
    return 0;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
    if (!b)
        return CELERIAC_EINVAL;
    int rc = buf_reserve(b, n);
    if (rc < 0)
        return rc;
    if (n)
        memcpy(b->p + b->len, p, n);
    b->len += n;
    b->p[b->len] = '\0';
    return 0;
}

int buf_puts(struct buf *b, const char *s)
{
    return buf_append(b, s, s ? strlen(s) : 0);
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
    if (!b || !fmt)
        return CELERIAC_EINVAL;
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(NULL, 0, fmt, ap);
    va_end(ap);
    if (n < 0)
        return CELERIAC_EINVAL;
    int rc = buf_reserve(b, (size_t)n);
    if (rc < 0)
        return rc;
    va_start(ap, fmt);
    vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
    va_end(ap);
    b->len += (size_t)n;
    return 0;
}

void buf_free(struct buf *b)
{
    if (!b)
        return;
    free(b->p);
    b->p = NULL;
    b->len = b->cap = 0;
}
