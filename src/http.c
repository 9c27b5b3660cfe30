/* http.c - owns libcurl: one bounded http(s) GET (size, time, redirect and protocol caps); it deliberately does no retries, caching, auth or uploads. */
#include "http.h"

#include <ctype.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include <curl/curl.h>

#include "celeriac.h"

#ifndef CELERIAC_VERSION
#define CELERIAC_VERSION "0"
#endif

#define URL_SHOWN_MAX 200 /* URLs in error messages are cut to this many bytes */

static int global_done;

/* Per-transfer state shared by the callbacks. */
struct fetch {
    struct http_response *resp;
    size_t max_bytes;
    int too_big; /* set when the cap was hit, by either callback */
    int nomem;   /* set when the body could not grow */
};

int http_global_init(void)
{
    if (global_done)
        return 0;
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
        return CELERIAC_EIO;
    global_done = 1;
    return 0;
}

void http_global_cleanup(void)
{
    if (!global_done)
        return;
    curl_global_cleanup();
    global_done = 0;
}

void http_response_free(struct http_response *resp)
{
    if (resp)
        buf_free(&resp->body);
}

static int has_prefix_ci(const char *s, const char *prefix)
{
    return strncasecmp(s, prefix, strlen(prefix)) == 0;
}

/* The URL as shown in messages: credentials ("user:pass@") masked, and cut. */
void http_url_shown(const char *url, char *out, size_t outlen)
{
    struct buf b = {0};
    const char *scheme_end = strstr(url, "://");
    const char *host = scheme_end ? scheme_end + 3 : url;
    const char *at = memchr(host, '@', strcspn(host, "/?#"));
    if (outlen == 0)
        return;
    if (at) {
        buf_append(&b, url, (size_t)(host - url));
        buf_puts(&b, "***");
        buf_puts(&b, at);
    } else {
        buf_puts(&b, url);
    }
    if (b.len > URL_SHOWN_MAX)
        snprintf(out, outlen, "%.*s...", URL_SHOWN_MAX, b.p);
    else
        snprintf(out, outlen, "%s", b.p ? b.p : "");
    buf_free(&b);
}

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *ud)
{
    struct fetch *f = ud;
    size_t n = size * nmemb;
    if (n > f->max_bytes - f->resp->body.len) {
        f->too_big = 1;
        return 0; /* CURLE_WRITE_ERROR stops the transfer */
    }
    if (buf_append(&f->resp->body, ptr, n) < 0) {
        f->nomem = 1;
        return 0;
    }
    return n;
}

/* Stops early when the server announces a body over the cap. */
static int on_progress(void *ud, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    struct fetch *f = ud;
    (void)ultotal;
    (void)ulnow;
    if ((dltotal > 0 && (unsigned long long)dltotal > f->max_bytes) ||
        (dlnow > 0 && (unsigned long long)dlnow > f->max_bytes)) {
        f->too_big = 1;
        return 1; /* CURLE_ABORTED_BY_CALLBACK */
    }
    return 0;
}

/* Content-Type without parameters, lowercased. */
static void store_content_type(struct http_response *resp, const char *ct)
{
    size_t i = 0;
    if (!ct)
        return;
    for (; ct[i] && ct[i] != ';' && !isspace((unsigned char)ct[i]) &&
           i + 1 < sizeof resp->content_type;
         i++)
        resp->content_type[i] = (char)tolower((unsigned char)ct[i]);
    resp->content_type[i] = '\0';
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    if (err && errlen)
        vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

int http_fetch(const char *url, const struct http_limits *lim, struct http_response *resp,
               char *err, size_t errlen)
{
    int rc = 0;
    CURL *h = NULL;
    char shown[URL_SHOWN_MAX + 64];
    char curlerr[CURL_ERROR_SIZE] = "";
    char *ct = NULL, *eff = NULL;
    struct fetch f = {.resp = resp, .max_bytes = lim->max_bytes};

    memset(resp, 0, sizeof *resp);
    if (err && errlen)
        err[0] = '\0';
    if (!url || !(has_prefix_ci(url, "http://") || has_prefix_ci(url, "https://")))
        return fail(err, errlen, CELERIAC_EINVAL, "only http:// and https:// URLs are fetched");
    http_url_shown(url, shown, sizeof shown);
    if (http_global_init() < 0)
        return fail(err, errlen, CELERIAC_EIO, "cannot initialise libcurl");
    h = curl_easy_init();
    if (!h)
        return fail(err, errlen, CELERIAC_ENOMEM, "cannot create a curl handle");

    if (curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https") != CURLE_OK ||
        curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https") != CURLE_OK) {
        rc = fail(err, errlen, CELERIAC_EUNSUPPORTED, "libcurl cannot restrict protocols");
        goto out;
    }
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, curlerr);
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, lim->max_redirects > 0 ? 1L : 0L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, lim->max_redirects > 0 ? lim->max_redirects : 0L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, lim->timeout_ms > 0 ? lim->timeout_ms : 0L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS,
                     lim->connect_timeout_ms > 0 ? lim->connect_timeout_ms : 0L);
    curl_easy_setopt(h, CURLOPT_FAILONERROR, 1L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, "celeriac/" CELERIAC_VERSION);
    curl_easy_setopt(h, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)lim->max_bytes);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &f);
    curl_easy_setopt(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(h, CURLOPT_XFERINFODATA, &f);
    curl_easy_setopt(h, CURLOPT_NOPROGRESS, 0L);

    CURLcode cc = curl_easy_perform(h);
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &resp->status);
    if (f.too_big || cc == CURLE_FILESIZE_EXCEEDED) {
        rc = fail(err, errlen, CELERIAC_ETOOBIG, "download exceeds %zu bytes (%s)",
                  lim->max_bytes, shown);
        goto out;
    }
    if (f.nomem || cc == CURLE_OUT_OF_MEMORY) {
        rc = fail(err, errlen, CELERIAC_ENOMEM, "out of memory downloading %s", shown);
        goto out;
    }
    switch (cc) {
    case CURLE_OK:
        break;
    case CURLE_OPERATION_TIMEDOUT: {
        curl_off_t us = 0;
        curl_easy_getinfo(h, CURLINFO_TOTAL_TIME_T, &us);
        if (lim->connect_timeout_ms > 0 && us / 1000 < lim->timeout_ms - 100)
            rc = fail(err, errlen, CELERIAC_ETIMEDOUT, "connect timed out after %ld ms to %s",
                      lim->connect_timeout_ms, shown);
        else
            rc = fail(err, errlen, CELERIAC_ETIMEDOUT, "timed out after %ld ms fetching %s",
                      lim->timeout_ms, shown);
        goto out;
    }
    case CURLE_HTTP_RETURNED_ERROR:
        rc = fail(err, errlen, CELERIAC_EPROTO, "HTTP %ld from %s", resp->status, shown);
        goto out;
    case CURLE_TOO_MANY_REDIRECTS:
        rc = fail(err, errlen, CELERIAC_EPROTO, "too many redirects (more than %ld) from %s",
                  lim->max_redirects, shown);
        goto out;
    case CURLE_UNSUPPORTED_PROTOCOL:
        rc = fail(err, errlen, CELERIAC_EPROTO,
                  "refused a redirect to a non-http(s) URL from %s", shown);
        goto out;
    case CURLE_URL_MALFORMAT:
        rc = fail(err, errlen, CELERIAC_EINVAL, "malformed URL %s", shown);
        goto out;
    default:
        rc = fail(err, errlen, CELERIAC_ECONN, "cannot fetch %s: %s", shown,
                  curlerr[0] ? curlerr : curl_easy_strerror(cc));
        goto out;
    }
    if (resp->status >= 400) { /* FAILONERROR lets some auth statuses through */
        rc = fail(err, errlen, CELERIAC_EPROTO, "HTTP %ld from %s", resp->status, shown);
        goto out;
    }
    if (resp->status >= 300) { /* a redirect not followed (max_redirects 0) */
        rc = fail(err, errlen, CELERIAC_EPROTO, "HTTP %ld redirect not followed from %s",
                  resp->status, shown);
        goto out;
    }
    curl_easy_getinfo(h, CURLINFO_CONTENT_TYPE, &ct);
    store_content_type(resp, ct);
    curl_easy_getinfo(h, CURLINFO_EFFECTIVE_URL, &eff);
    snprintf(resp->url, sizeof resp->url, "%s", eff ? eff : url);
out:
    curl_easy_cleanup(h);
    return rc;
}
