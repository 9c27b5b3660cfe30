/* util.h - small helpers with no I/O beyond the clock: time, ISO-8601, uuid4,
 * growable buffers. */
#ifndef CELERIAC_UTIL_H
#define CELERIAC_UTIL_H

#include <stddef.h>
#include <stdint.h>

/* Wall clock, seconds since the epoch (like Python time.time()). */
double util_now(void);
/* Monotonic seconds. */
double util_monotonic(void);
/* Parses ISO-8601 as Python's isoformat writes it: "2026-11-23T16:41:48.848268+00:00",
 * with 'Z', an offset, or naive (taken as UTC); 'T' or ' ' separator; fraction
 * optional. Stores Unix seconds. CELERIAC_EPARSE when malformed. */
int util_iso8601_parse(const char *s, double *out);
/* Naive UTC isoformat with microseconds, as Celery 5.2 writes date_done:
 * "2026-11-23T16:41:29.553005". buf needs 32 bytes. */
void util_iso8601_format(double t, char *buf, size_t len);
/* Same with "+00:00" appended (timezone-aware, as eta headers are written). */
void util_iso8601_format_tz(double t, char *buf, size_t len);
/* Random version-4 UUID text (36 chars + NUL) into buf[37]. */
void util_uuid4(char buf[37]);

/* Growable byte buffer. */
struct buf {
    char *p;    /* owned, always NUL-terminated when non-NULL */
    size_t len;
    size_t cap;
};
int buf_append(struct buf *b, const void *p, size_t n);
int buf_puts(struct buf *b, const char *s);
int buf_printf(struct buf *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void buf_free(struct buf *b);

#endif
