/* url.c - parses Redis broker/backend URLs into parts; it opens no connection. */
#include "url.h"

#include <ctype.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "celeriac.h"

static int parse_int(const char *s, size_t n, long lo, long hi, long *out)
{
    char tmp[32];
    if (n == 0 || n >= sizeof tmp)
        return -1;
    memcpy(tmp, s, n);
    tmp[n] = 0;
    char *end;
    errno = 0;
    long v = strtol(tmp, &end, 10);
    if (errno || *end || v < lo || v > hi)
        return -1;
    *out = v;
    return 0;
}

/* Copies n bytes of s into dst (size cap), percent-decoding. */
static int copy_decoded(char *dst, size_t cap, const char *s, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '%' && i + 2 < n && isxdigit((unsigned char)s[i + 1]) &&
            isxdigit((unsigned char)s[i + 2])) {
            char hex[3] = {s[i + 1], s[i + 2], 0};
            c = (char)strtol(hex, NULL, 16);
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        dst[o++] = c;
    }
    dst[o] = 0;
    return 0;
}

/* Reads db=N or virtual_host=N from a query string. */
static int parse_query(const char *q, struct redis_url *out)
{
    while (q && *q) {
        const char *amp = strchr(q, '&');
        size_t n = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', n);
        if (eq) {
            size_t kn = (size_t)(eq - q);
            long v;
            if ((kn == 2 && memcmp(q, "db", 2) == 0) ||
                (kn == 12 && memcmp(q, "virtual_host", 12) == 0)) {
                if (parse_int(eq + 1, n - kn - 1, 0, 1L << 20, &v) < 0)
                    return -1;
                out->db = (int)v;
            }
        }
        q = amp ? amp + 1 : NULL;
    }
    return 0;
}

int url_parse_redis(const char *url, struct redis_url *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof *out);
    out->port = 6379;
    if (!url || !*url) {
        snprintf(err, errlen, "empty URL");
        return CELERIAC_EINVAL;
    }
    const char *p = strstr(url, "://");
    if (!p) {
        snprintf(err, errlen, "'%s' is not a URL (expected redis://host:port/db)", url);
        return CELERIAC_EINVAL;
    }
    size_t sn = (size_t)(p - url);
    p += 3;
    const char *query = strchr(p, '?');
    size_t rest = query ? (size_t)(query - p) : strlen(p);
    if (sn == 6 && memcmp(url, "rediss", 6) == 0) {
        snprintf(err, errlen, "rediss:// (TLS) is not supported by this build; use redis://");
        return CELERIAC_EUNSUPPORTED;
    }
    int is_socket = (sn == 12 && memcmp(url, "redis+socket", 12) == 0) ||
                    (sn == 4 && memcmp(url, "unix", 4) == 0) ||
                    (sn == 6 && memcmp(url, "socket", 6) == 0);
    if (!is_socket && !(sn == 5 && memcmp(url, "redis", 5) == 0)) {
        snprintf(err, errlen, "unsupported URL scheme '%.*s' (expected redis, redis+socket, unix)",
                 (int)sn, url);
        return sn == 4 && memcmp(url, "amqp", 4) == 0 ? CELERIAC_EUNSUPPORTED : CELERIAC_EINVAL;
    }
    /* userinfo */
    const char *at = NULL;
    for (size_t i = 0; i < rest; i++)
        if (p[i] == '@')
            at = p + i;
    if (at) {
        const char *colon = memchr(p, ':', (size_t)(at - p));
        if (colon) {
            if (copy_decoded(out->username, sizeof out->username, p, (size_t)(colon - p)) < 0 ||
                copy_decoded(out->password, sizeof out->password, colon + 1,
                             (size_t)(at - colon - 1)) < 0)
                goto toolong;
        } else if (copy_decoded(out->password, sizeof out->password, p, (size_t)(at - p)) < 0) {
            /* redis://password@host is how redis-py reads a lone userinfo. */
            goto toolong;
        }
        rest -= (size_t)(at + 1 - p);
        p = at + 1;
    }
    if (is_socket) {
        if (rest == 0 || p[0] != '/') {
            snprintf(err, errlen, "socket URL needs an absolute path: %s", url);
            return CELERIAC_EINVAL;
        }
        if (rest >= sizeof out->path)
            goto toolong;
        memcpy(out->path, p, rest);
        out->path[rest] = 0;
        out->port = 0;
    } else {
        const char *slash = memchr(p, '/', rest);
        size_t hn = slash ? (size_t)(slash - p) : rest;
        const char *hp = p;
        const char *portp = NULL;
        size_t hostlen = hn;
        if (hn && hp[0] == '[') {
            const char *close = memchr(hp, ']', hn);
            if (!close) {
                snprintf(err, errlen, "unterminated IPv6 address in %s", url);
                return CELERIAC_EINVAL;
            }
            hp++;
            hostlen = (size_t)(close - hp);
            if (close + 1 < p + hn && close[1] == ':')
                portp = close + 2;
        } else {
            const char *colon = memchr(hp, ':', hn);
            if (colon) {
                hostlen = (size_t)(colon - hp);
                portp = colon + 1;
            }
        }
        if (hostlen >= sizeof out->host)
            goto toolong;
        memcpy(out->host, hp, hostlen);
        out->host[hostlen] = 0;
        if (!out->host[0])
            snprintf(out->host, sizeof out->host, "localhost");
        if (portp) {
            long v;
            if (parse_int(portp, (size_t)(p + hn - portp), 1, 65535, &v) < 0) {
                snprintf(err, errlen, "bad port in %s", url);
                return CELERIAC_EINVAL;
            }
            out->port = (int)v;
        }
        if (slash) {
            size_t dn = rest - hn - 1;
            long v;
            if (dn > 0 && parse_int(slash + 1, dn, 0, 1L << 20, &v) < 0) {
                snprintf(err, errlen, "bad database number in %s (expected /0../15)", url);
                return CELERIAC_EINVAL;
            }
            if (dn > 0)
                out->db = (int)v;
        }
    }
    if (query && parse_query(query + 1, out) < 0) {
        snprintf(err, errlen, "bad database number in query of %s", url);
        return CELERIAC_EINVAL;
    }
    return 0;
toolong:
    snprintf(err, errlen, "URL part too long in %s", url);
    return CELERIAC_EINVAL;
}

void url_redact(const char *url, char *buf, size_t len)
{
    const char *p = url ? strstr(url, "://") : NULL;
    const char *at = p ? strchr(p + 3, '@') : NULL;
    if (!at) {
        snprintf(buf, len, "%s", url ? url : "");
        return;
    }
    const char *colon = memchr(p + 3, ':', (size_t)(at - p - 3));
    if (colon)
        snprintf(buf, len, "%.*s:**%s", (int)(colon - url), url, at);
    else
        snprintf(buf, len, "%.*s**%s", (int)(p + 3 - url), url, at);
}
