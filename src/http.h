/* http.h - bounded HTTP(S) GET for built-in tasks (documents by URL). The only
 * place libcurl is used. One blocking fetch at a time, in a pool child. */
#ifndef CELERIAC_HTTP_H
#define CELERIAC_HTTP_H

#include <stddef.h>

#include "util.h"

struct http_limits {
    size_t max_bytes;        /* body cap, checked against Content-Length and while receiving */
    long timeout_ms;         /* whole transfer, redirects included */
    long connect_timeout_ms; /* connect phase of each connection */
    long max_redirects;      /* redirects followed; 0 = none */
};

struct http_response {
    struct buf body;        /* owned; NUL-terminated when non-empty */
    long status;            /* final HTTP status */
    char content_type[128]; /* final Content-Type without parameters, lowercased; "" if none */
    char url[2048];         /* final URL after redirects (cut when longer) */
};

/* Initialises libcurl once per process. main() calls it before forking the
 * pool (libcurl's global init is not thread-safe and should precede fork);
 * http_fetch() also calls it lazily. Returns 0 or CELERIAC_EIO. */
int http_global_init(void);
void http_global_cleanup(void);

/* GETs an http:// or https:// URL into resp (zeroed here first; free its body
 * with http_response_free() also on failure). Redirects are followed up to
 * lim->max_redirects and only to http/https. Returns 0, or on failure writes a
 * one-line reason to err and returns:
 *   CELERIAC_EINVAL     not an http(s) URL
 *   CELERIAC_ETOOBIG    "download exceeds N bytes"
 *   CELERIAC_ETIMEDOUT  "timed out after N ms fetching URL"
 *   CELERIAC_EPROTO     "HTTP 404 from URL", "too many redirects ..."
 *   CELERIAC_ECONN      resolve/connect/TLS/transfer errors
 *   CELERIAC_ENOMEM     out of memory */
int http_fetch(const char *url, const struct http_limits *lim, struct http_response *resp,
               char *err, size_t errlen);
void http_response_free(struct http_response *resp);
/* The URL as error and progress messages show it: "user:pass@" masked as
 * "***@", cut at 200 bytes with "..." appended. out needs 264 bytes. */
void http_url_shown(const char *url, char *out, size_t outlen);

#endif
