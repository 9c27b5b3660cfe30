/* process_document.c - owns the built-in process_document task (load, detect, extract, analyse, chunk for text, markdown, csv, json and html); it deliberately does no PDF, OCR or office formats yet and leaves all network I/O to http.c. */
#include "tasks/builtin.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <threads.h>

#include <openssl/evp.h>

#include "codec.h"
#include "http.h"
#include "task_context.h"
#include "util.h"

#define PREVIEW_CHARS 200    /* text_preview length in characters */
#define MAX_CHUNK_ITEMS 1000 /* chunks listed in the result; count is always exact */
#define CHUNK_MIN 100
#define CHUNK_MAX 1000000
#define TOP_TERMS 10
#define TERM_MAX_BYTES 64     /* longer tokens are not counted as terms */
#define SNIFF_BYTES 65536     /* content sniffing looks at this prefix */
#define CSV_SNIFF_RECORDS 20  /* records compared when sniffing CSV */
#define CSV_HEADER_MAX 1000   /* header columns reported */
#define TITLE_MAX 1000        /* bytes of a title kept */
#define HEADER_FIELD_MAX 256  /* bytes of each CSV header field kept */
#define JSON_WALK_DEPTH 256   /* the JSON parser caps depth lower; this guards the walk */

enum doc_type {
    DOC_UNKNOWN = 0, /* not decided yet */
    DOC_TEXT,        /* plain UTF-8 text */
    DOC_MARKDOWN,
    DOC_CSV,         /* also TSV and ;-separated */
    DOC_JSON,
    DOC_HTML
};

static const char *const type_names[] = {"unknown", "text", "markdown", "csv", "json", "html"};

/* One call of the task: inputs, then what each stage leaves for the next. */
struct doc {
    celeriac_task *t;
    const struct builtin_config *cfg;
    /* Arguments, borrowed from the task. */
    const celeriac_value *source;
    const char *filename;       /* argument, or source["filename"]; NULL if none */
    const char *document_type;  /* as passed; "generic" by default */
    size_t chunk_size;          /* characters per chunk */
    int include_chunks;         /* put chunk text in the result */
    const char *source_kind;    /* "base64", "text", "bytes" or "url" */
    const char *payload;        /* the base64 text, text or URL; borrowed */
    size_t payload_len;
    char url_filename[256];     /* last path segment of a URL, when no filename */
    char content_type[128];     /* from the HTTP response; "" otherwise */
    /* load */
    unsigned char *data;        /* owned: the document bytes, NUL appended */
    size_t len;
    size_t bom;                 /* bytes of a UTF-8 BOM at the start (0 or 3) */
    /* detect */
    enum doc_type type;
    const char *detected_by;    /* "filename", "content-type" or "content" */
    char csv_delim;
    celeriac_value *json;       /* owned: the parsed document (json only) */
    /* extract */
    struct buf text;            /* owned: extracted UTF-8 text */
    char *title;                /* owned, or NULL */
    size_t csv_rows, csv_columns;
    celeriac_value *csv_header; /* owned ARRAY of strings */
    size_t json_strings;
    /* analyse */
    char sha256[65];
    size_t chars, lines, words;
    celeriac_value *top_terms;  /* owned ARRAY of [term, count] */
    /* chunk */
    size_t chunk_count;
    celeriac_value *chunk_items; /* owned ARRAY */
    /* bookkeeping */
    int percent;                /* of the running stage */
    celeriac_value *stages;     /* owned ARRAY of {name, ms} */
    int oom;                    /* a result builder ran out of memory */
};

/* ---- small helpers ---------------------------------------------------------- */

static const char *py_type(const celeriac_value *v)
{
    switch (celeriac_value_type(v)) {
    case CELERIAC_NULL: return "NoneType";
    case CELERIAC_BOOL: return "bool";
    case CELERIAC_INT: return "int";
    case CELERIAC_DOUBLE: return "float";
    case CELERIAC_STRING: return "str";
    case CELERIAC_BYTES: return "bytes";
    case CELERIAC_ARRAY: return "list";
    case CELERIAC_OBJECT: return "dict";
    }
    return "object";
}

static int is_none(const celeriac_value *v)
{
    return v == NULL || celeriac_value_type(v) == CELERIAC_NULL;
}

/* "512 bytes", "12.3 KB", "4.0 MB". */
static void human_size(size_t n, char *out, size_t outlen)
{
    if (n < 1024)
        snprintf(out, outlen, "%zu bytes", n);
    else if (n < 1024 * 1024)
        snprintf(out, outlen, "%.1f KB", (double)n / 1024.0);
    else
        snprintf(out, outlen, "%.1f MB", (double)n / (1024.0 * 1024.0));
}

/* 1234567 -> "1,234,567". */
static void thousands(size_t n, char *out, size_t outlen)
{
    char digits[32];
    char tmp[48];
    size_t nd = (size_t)snprintf(digits, sizeof digits, "%zu", n), j = 0;
    for (size_t i = 0; i < nd && j + 2 < sizeof tmp; i++) {
        if (i > 0 && (nd - i) % 3 == 0)
            tmp[j++] = ',';
        tmp[j++] = digits[i];
    }
    tmp[j] = '\0';
    snprintf(out, outlen, "%s", tmp);
}

static void progress(struct doc *d, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

static void progress(struct doc *d, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    /* A backend that cannot store a progress state does not fail the task. */
    (void)celeriac_task_progress(d->t, d->percent, "%s", msg);
}

static void put(struct doc *d, celeriac_value *obj, const char *key, celeriac_value *v)
{
    if (celeriac_value_set(obj, key, v) < 0)
        d->oom = 1;
}

static void add(struct doc *d, celeriac_value *arr, celeriac_value *v)
{
    if (celeriac_value_append(arr, v) < 0)
        d->oom = 1;
}

static int oom(struct doc *d)
{
    return celeriac_task_fail(d->t, "MemoryError", "out of memory processing the document");
}

/* ---- UTF-8 ------------------------------------------------------------------ */

/* Decodes the code point at s[i]; returns its length (>= 1). Invalid
 * sequences yield U+FFFD with length 1. */
static size_t utf8_next(const unsigned char *s, size_t len, size_t i, uint32_t *cp)
{
    unsigned c = s[i];
    size_t n;
    uint32_t v, min;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    if (c >= 0xC2 && c <= 0xDF) {
        n = 2, v = c & 0x1F, min = 0x80;
    } else if (c >= 0xE0 && c <= 0xEF) {
        n = 3, v = c & 0x0F, min = 0x800;
    } else if (c >= 0xF0 && c <= 0xF4) {
        n = 4, v = c & 0x07, min = 0x10000;
    } else {
        *cp = 0xFFFD;
        return 1;
    }
    if (len - i < n) {
        *cp = 0xFFFD;
        return 1;
    }
    for (size_t k = 1; k < n; k++) {
        if ((s[i + k] & 0xC0) != 0x80) {
            *cp = 0xFFFD;
            return 1;
        }
        v = (v << 6) | (s[i + k] & 0x3F);
    }
    if (v < min || v > 0x10FFFF || (v >= 0xD800 && v <= 0xDFFF)) {
        *cp = 0xFFFD;
        return 1;
    }
    *cp = v;
    return n;
}

/* 1 when s is valid UTF-8 without NUL bytes. */
static int utf8_text(const unsigned char *s, size_t len)
{
    size_t i = 0;
    while (i < len) {
        uint32_t cp;
        /* ASCII without NUL: eight bytes at a time. */
        while (i + 8 <= len) {
            uint64_t x;
            memcpy(&x, s + i, 8);
            if ((x & 0x8080808080808080ull) ||
                ((x - 0x0101010101010101ull) & ~x & 0x8080808080808080ull))
                break;
            i += 8;
        }
        if (i >= len)
            break;
        if (s[i] == 0)
            return 0;
        size_t n = utf8_next(s, len, i, &cp);
        if (cp == 0xFFFD && !(n == 3 && s[i] == 0xEF && s[i + 1] == 0xBF && s[i + 2] == 0xBD))
            return 0;
        i += n;
    }
    return 1;
}

static size_t utf8_put(uint32_t cp, char out[4])
{
    if (cp < 0x80) {
        out[0] = (char)cp;
        return 1;
    }
    if (cp < 0x800) {
        out[0] = (char)(0xC0 | (cp >> 6));
        out[1] = (char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        out[0] = (char)(0xE0 | (cp >> 12));
        out[1] = (char)(0x80 | ((cp >> 6) & 0x3F));
        out[2] = (char)(0x80 | (cp & 0x3F));
        return 3;
    }
    out[0] = (char)(0xF0 | (cp >> 18));
    out[1] = (char)(0x80 | ((cp >> 12) & 0x3F));
    out[2] = (char)(0x80 | ((cp >> 6) & 0x3F));
    out[3] = (char)(0x80 | (cp & 0x3F));
    return 4;
}

/* The longest prefix of s[0..n) of at most max bytes that ends on a
 * character boundary. */
static size_t utf8_cut(const char *s, size_t n, size_t max)
{
    if (n <= max)
        return n;
    while (max > 0 && ((unsigned char)s[max] & 0xC0) == 0x80)
        max--;
    return max;
}

/* Unicode White_Space. */
static inline int is_uspace(uint32_t cp)
{
    if (cp < 0x80)
        return cp == ' ' || cp - 0x09u <= 0x0Du - 0x09u;
    return cp == 0x85 || cp == 0xA0 ||
           cp == 0x1680 || (cp >= 0x2000 && cp <= 0x200A) || cp == 0x2028 || cp == 0x2029 ||
           cp == 0x202F || cp == 0x205F || cp == 0x3000;
}

/* Letters and digits for term counting: ASCII alnum and non-ASCII code points
 * outside the common punctuation and symbol blocks. */
static int is_word_cp(uint32_t cp)
{
    if (cp < 0x80) /* isalnum() in the C locale, without the table call */
        return (cp >= '0' && cp <= '9') || ((cp | 32) >= 'a' && (cp | 32) <= 'z');
    if (is_uspace(cp) || cp <= 0xBF || cp == 0xD7 || cp == 0xF7)
        return 0;
    if ((cp >= 0x2000 && cp <= 0x2BFF) || (cp >= 0x3000 && cp <= 0x303F) ||
        (cp >= 0xFE30 && cp <= 0xFE4F) || (cp >= 0xFF00 && cp <= 0xFF0F) || cp >= 0x1F000 ||
        cp == 0xFFFD)
        return 0;
    return 1;
}

/* Lowercase for ASCII, Latin-1, Greek and basic Cyrillic. */
static uint32_t lower_cp(uint32_t cp)
{
    if (cp >= 'A' && cp <= 'Z')
        return cp + 32;
    if ((cp >= 0xC0 && cp <= 0xDE && cp != 0xD7) || (cp >= 0x391 && cp <= 0x3A9 && cp != 0x3A2) ||
        (cp >= 0x410 && cp <= 0x42F))
        return cp + 32;
    if (cp >= 0x400 && cp <= 0x40F)
        return cp + 80;
    return cp;
}

/* ---- arguments -------------------------------------------------------------- */

static const char *const param_names[] = {"source", "filename", "document_type", "options"};

/* Python's checks on the call itself: positional count, unknown keywords,
 * a parameter given twice. */
static int check_signature(struct doc *d)
{
    const celeriac_value *args = celeriac_task_args(d->t);
    const celeriac_value *kwargs = celeriac_task_kwargs(d->t);
    size_t nargs = celeriac_value_len(args);
    if (nargs > 4)
        return celeriac_task_fail(d->t, "TypeError",
                                  "process_document() takes from 1 to 4 positional arguments "
                                  "but %zu were given",
                                  nargs);
    for (size_t i = 0; i < celeriac_value_len(kwargs); i++) {
        const char *k = celeriac_value_key_at(kwargs, i);
        size_t p = 0;
        while (p < 4 && strcmp(k, param_names[p]) != 0)
            p++;
        if (p == 4)
            return celeriac_task_fail(d->t, "TypeError",
                                      "process_document() got an unexpected keyword argument "
                                      "'%.100s'",
                                      k);
        if (p < nargs)
            return celeriac_task_fail(d->t, "TypeError",
                                      "process_document() got multiple values for argument "
                                      "'%s'",
                                      k);
    }
    return 0;
}

static int parse_options(struct doc *d, const celeriac_value *opts)
{
    d->chunk_size = d->cfg->default_chunk_size;
    if (d->chunk_size < CHUNK_MIN)
        d->chunk_size = CHUNK_MIN;
    if (d->chunk_size > CHUNK_MAX)
        d->chunk_size = CHUNK_MAX;
    if (is_none(opts))
        return 0;
    if (celeriac_value_type(opts) != CELERIAC_OBJECT)
        return celeriac_task_fail(d->t, "TypeError", "options must be a dict or None, not %s",
                                  py_type(opts));
    const celeriac_value *cs = celeriac_value_get(opts, "chunk_size");
    if (!is_none(cs)) {
        if (celeriac_value_type(cs) != CELERIAC_INT)
            return celeriac_task_fail(d->t, "TypeError",
                                      "options['chunk_size'] must be an int, not %s", py_type(cs));
        int64_t n = celeriac_value_int(cs);
        if (n < CHUNK_MIN || n > CHUNK_MAX)
            return celeriac_task_fail(d->t, "ValueError",
                                      "options['chunk_size'] must be between %d and %d, got %lld",
                                      CHUNK_MIN, CHUNK_MAX, (long long)n);
        d->chunk_size = (size_t)n;
    }
    const celeriac_value *ic = celeriac_value_get(opts, "include_chunks");
    if (!is_none(ic)) {
        if (celeriac_value_type(ic) == CELERIAC_BOOL)
            d->include_chunks = celeriac_value_bool(ic);
        else if (celeriac_value_type(ic) == CELERIAC_INT)
            d->include_chunks = celeriac_value_int(ic) != 0;
        else
            return celeriac_task_fail(d->t, "TypeError",
                                      "options['include_chunks'] must be a bool, not %s",
                                      py_type(ic));
    }
    return 0;
}

static int parse_source_dict(struct doc *d, const celeriac_value *src)
{
    static const char *const keys[] = {"content_b64", "text", "url"};
    static const char *const kinds[] = {"base64", "text", "url"};
    char found[64] = "";
    int nfound = 0, which = -1;
    for (int i = 0; i < 3; i++) {
        if (!celeriac_value_get(src, keys[i]))
            continue;
        nfound++;
        which = i;
        size_t used = strlen(found);
        snprintf(found + used, sizeof found - used, "%s'%s'", used ? ", " : "", keys[i]);
    }
    if (nfound != 1)
        return celeriac_task_fail(d->t, "ValueError",
                                  "source dict must have exactly one of 'content_b64', 'text', "
                                  "'url' (got %s)",
                                  nfound ? found : "none");
    const celeriac_value *v = celeriac_value_get(src, keys[which]);
    if (celeriac_value_type(v) != CELERIAC_STRING)
        return celeriac_task_fail(d->t, "TypeError", "source['%s'] must be a str, not %s",
                                  keys[which], py_type(v));
    d->payload = celeriac_value_string(v, &d->payload_len);
    d->source_kind = kinds[which];
    const celeriac_value *fn = celeriac_value_get(src, "filename");
    if (!is_none(fn)) {
        if (celeriac_value_type(fn) != CELERIAC_STRING)
            return celeriac_task_fail(d->t, "TypeError",
                                      "source['filename'] must be a str, not %s", py_type(fn));
        if (!d->filename)
            d->filename = celeriac_value_string(fn, NULL);
    }
    return 0;
}

static int has_prefix_ci(const char *s, size_t len, const char *prefix)
{
    size_t n = strlen(prefix);
    return len >= n && strncasecmp(s, prefix, n) == 0;
}

static int parse_args(struct doc *d)
{
    int rc = check_signature(d);
    if (rc < 0)
        return rc;
    const celeriac_value *src = celeriac_task_arg(d->t, 0, "source");
    const celeriac_value *fn = celeriac_task_arg(d->t, 1, "filename");
    const celeriac_value *dt = celeriac_task_arg(d->t, 2, "document_type");
    if (!src)
        return celeriac_task_fail(d->t, "TypeError",
                                  "process_document() missing 1 required positional argument: "
                                  "'source'");
    d->source = src;
    if (!is_none(fn)) {
        if (celeriac_value_type(fn) != CELERIAC_STRING)
            return celeriac_task_fail(d->t, "TypeError", "filename must be a str or None, not %s",
                                      py_type(fn));
        d->filename = celeriac_value_string(fn, NULL);
    }
    d->document_type = "generic";
    if (!is_none(dt)) {
        if (celeriac_value_type(dt) != CELERIAC_STRING)
            return celeriac_task_fail(d->t, "TypeError",
                                      "document_type must be a str or None, not %s", py_type(dt));
        d->document_type = celeriac_value_string(dt, NULL);
    }
    rc = parse_options(d, celeriac_task_arg(d->t, 3, "options"));
    if (rc < 0)
        return rc;
    switch (celeriac_value_type(src)) {
    case CELERIAC_STRING:
        d->payload = celeriac_value_string(src, &d->payload_len);
        if (has_prefix_ci(d->payload, d->payload_len, "http://") ||
            has_prefix_ci(d->payload, d->payload_len, "https://"))
            d->source_kind = "url";
        else
            d->source_kind = "base64";
        return 0;
    case CELERIAC_BYTES:
        d->payload = celeriac_value_string(src, &d->payload_len);
        d->source_kind = "bytes";
        return 0;
    case CELERIAC_OBJECT:
        return parse_source_dict(d, src);
    default:
        return celeriac_task_fail(d->t, "TypeError",
                                  "source must be a str (base64 or an http(s) URL), bytes or a "
                                  "dict, not %s",
                                  py_type(src));
    }
}

/* ---- stage: load ------------------------------------------------------------ */

/* Why base64 text failed to decode, in Python's words where they exist. */
static void base64_reason(const char *s, size_t len, char *out, size_t outlen)
{
    size_t data = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = (unsigned char)s[i];
        if (isalnum(c) || c == '+' || c == '/' || c == '-' || c == '_') {
            data++;
            continue;
        }
        if (c == '=' || c == ' ' || c == '\t' || c == '\r' || c == '\n')
            continue;
        if (isprint(c))
            snprintf(out, outlen, "invalid character '%c' at position %zu", c, i);
        else
            snprintf(out, outlen, "invalid byte 0x%02x at position %zu", c, i);
        return;
    }
    if (data % 4 == 1)
        snprintf(out, outlen,
                 "number of data characters (%zu) cannot be 1 more than a multiple of 4", data);
    else
        snprintf(out, outlen, "incorrect padding");
}

/* The last path segment of a URL, for type detection and the result. */
static void filename_from_url(const char *url, char *out, size_t outlen)
{
    const char *p = strstr(url, "://");
    p = p ? p + 3 : url;
    size_t path_end = strcspn(p, "?#");
    const char *slash = NULL;
    for (const char *q = p; q < p + path_end; q++)
        if (*q == '/')
            slash = q;
    out[0] = '\0';
    if (!slash)
        return;
    size_t n = (size_t)(p + path_end - slash - 1);
    if (n > 0 && n < outlen)
        snprintf(out, outlen, "%.*s", (int)n, slash + 1);
}

static int load_url(struct doc *d)
{
    char shown[300], err[512], url[4096];
    struct http_response resp;
    struct http_limits lim = {
        .max_bytes = d->cfg->document_max_bytes,
        .timeout_ms = d->cfg->fetch_timeout_ms,
        .connect_timeout_ms = d->cfg->fetch_connect_timeout_ms,
        .max_redirects = d->cfg->fetch_max_redirects,
    };
    if (d->payload_len >= sizeof url || memchr(d->payload, '\0', d->payload_len))
        return celeriac_task_fail(d->t, "ValueError", "source URL is too long or malformed");
    memcpy(url, d->payload, d->payload_len);
    url[d->payload_len] = '\0';
    http_url_shown(url, shown, sizeof shown);
    int pct = d->percent;
    d->percent = pct / 2;
    progress(d, "Downloading %s", shown);
    d->percent = pct;
    int rc = http_fetch(url, &lim, &resp, err, sizeof err);
    if (rc < 0) {
        http_response_free(&resp);
        switch (rc) {
        case CELERIAC_ETOOBIG:
        case CELERIAC_EINVAL:
            return celeriac_task_fail(d->t, "ValueError", "%s", err);
        case CELERIAC_ETIMEDOUT:
            return celeriac_task_fail(d->t, "TimeoutError", "%s", err);
        case CELERIAC_ENOMEM:
            return oom(d);
        default:
            return celeriac_task_fail(d->t, "ConnectionError", "%s", err);
        }
    }
    d->data = (unsigned char *)resp.body.p; /* takes ownership of the body */
    d->len = resp.body.len;
    snprintf(d->content_type, sizeof d->content_type, "%s", resp.content_type);
    if (!d->filename) {
        filename_from_url(resp.url[0] ? resp.url : url, d->url_filename, sizeof d->url_filename);
        if (d->url_filename[0])
            d->filename = d->url_filename;
    }
    return 0;
}

static int stage_load(struct doc *d)
{
    size_t max = d->cfg->document_max_bytes;
    char size[32];
    if (strcmp(d->source_kind, "url") == 0) {
        int rc = load_url(d);
        if (rc < 0)
            return rc;
    } else if (strcmp(d->source_kind, "base64") == 0) {
        int rc = codec_base64_decode(d->payload, d->payload_len, max, &d->data, &d->len);
        if (rc == CELERIAC_ETOOBIG)
            return celeriac_task_fail(d->t, "ValueError", "document exceeds %zu bytes", max);
        if (rc == CELERIAC_ENOMEM)
            return oom(d);
        if (rc < 0) {
            char why[128];
            base64_reason(d->payload, d->payload_len, why, sizeof why);
            return celeriac_task_fail(d->t, "ValueError",
                                      "source is not valid base64: %s (pass {\"text\": ...} for "
                                      "plain text, or an http(s) URL)",
                                      why);
        }
    } else { /* text or bytes: the payload is the document */
        if (d->payload_len > max)
            return celeriac_task_fail(d->t, "ValueError", "document exceeds %zu bytes", max);
        d->data = malloc(d->payload_len + 1);
        if (!d->data)
            return oom(d);
        memcpy(d->data, d->payload, d->payload_len);
        d->data[d->payload_len] = 0;
        d->len = d->payload_len;
    }
    if (d->len == 0)
        return celeriac_task_fail(d->t, "ValueError", "document is empty");
    if (d->len > max) /* belt and braces: every path above is capped already */
        return celeriac_task_fail(d->t, "ValueError", "document exceeds %zu bytes", max);
    human_size(d->len, size, sizeof size);
    if (strcmp(d->source_kind, "url") == 0)
        progress(d, "Downloaded %s", size);
    else if (strcmp(d->source_kind, "base64") == 0)
        progress(d, "Decoded %s from base64", size);
    else
        progress(d, "Received %s of %s", size, d->source_kind);
    return 0;
}

/* ---- stage: detect ---------------------------------------------------------- */

/* Names binary formats by their magic bytes, for the "unsupported" message. */
static const char *sniff_binary(const unsigned char *s, size_t n)
{
    static const struct {
        const char *magic;
        size_t len;
        const char *name;
    } magics[] = {
        {"%PDF-", 5, "pdf"},
        {"\x89PNG\r\n\x1a\n", 8, "png"},
        {"\xff\xd8\xff", 3, "jpeg"},
        {"GIF87a", 6, "gif"},
        {"GIF89a", 6, "gif"},
        {"PK\x03\x04", 4, "zip (docx, xlsx, odt, ...)"},
        {"\x1f\x8b", 2, "gzip"},
        {"II*\0", 4, "tiff"},
        {"MM\0*", 4, "tiff"},
        {"\xd0\xcf\x11\xe0\xa1\xb1\x1a\xe1", 8, "ms-office (doc, xls, ppt)"},
        {"{\\rtf", 5, "rtf"},
        {"\xff\xfe", 2, "utf-16 text"},
        {"\xfe\xff", 2, "utf-16 text"},
        {"7z\xbc\xaf\x27\x1c", 6, "7z"},
    };
    for (size_t i = 0; i < sizeof magics / sizeof magics[0]; i++)
        if (n >= magics[i].len && memcmp(s, magics[i].magic, magics[i].len) == 0)
            return magics[i].name;
    if (n >= 12 && memcmp(s, "RIFF", 4) == 0 && memcmp(s + 8, "WEBP", 4) == 0)
        return "webp";
    return NULL;
}

struct ext_map {
    const char *ext;
    enum doc_type type;   /* DOC_UNKNOWN: a format we name but do not extract */
    const char *name;
};

static const struct ext_map extensions[] = {
    {"txt", DOC_TEXT, "text"},      {"text", DOC_TEXT, "text"},     {"log", DOC_TEXT, "text"},
    {"md", DOC_MARKDOWN, "markdown"}, {"markdown", DOC_MARKDOWN, "markdown"},
    {"csv", DOC_CSV, "csv"},        {"tsv", DOC_CSV, "csv"},        {"json", DOC_JSON, "json"},
    {"html", DOC_HTML, "html"},     {"htm", DOC_HTML, "html"},      {"xhtml", DOC_HTML, "html"},
    {"pdf", DOC_UNKNOWN, "pdf"},    {"docx", DOC_UNKNOWN, "docx"},  {"doc", DOC_UNKNOWN, "doc"},
    {"xlsx", DOC_UNKNOWN, "xlsx"},  {"pptx", DOC_UNKNOWN, "pptx"},  {"odt", DOC_UNKNOWN, "odt"},
    {"png", DOC_UNKNOWN, "png"},    {"jpg", DOC_UNKNOWN, "jpeg"},   {"jpeg", DOC_UNKNOWN, "jpeg"},
    {"tif", DOC_UNKNOWN, "tiff"},   {"tiff", DOC_UNKNOWN, "tiff"},  {"gif", DOC_UNKNOWN, "gif"},
};

static const struct ext_map *by_extension(const char *filename)
{
    if (!filename)
        return NULL;
    const char *base = strrchr(filename, '/');
    base = base ? base + 1 : filename;
    const char *dot = strrchr(base, '.');
    if (!dot || dot == base)
        return NULL;
    for (size_t i = 0; i < sizeof extensions / sizeof extensions[0]; i++)
        if (strcasecmp(dot + 1, extensions[i].ext) == 0)
            return &extensions[i];
    return NULL;
}

static enum doc_type by_content_type(const char *ct)
{
    if (strcmp(ct, "text/html") == 0 || strcmp(ct, "application/xhtml+xml") == 0)
        return DOC_HTML;
    if (strcmp(ct, "application/json") == 0 || strcmp(ct, "text/json") == 0)
        return DOC_JSON;
    if (strcmp(ct, "text/csv") == 0 || strcmp(ct, "text/tab-separated-values") == 0)
        return DOC_CSV;
    if (strcmp(ct, "text/markdown") == 0 || strcmp(ct, "text/x-markdown") == 0)
        return DOC_MARKDOWN;
    return DOC_UNKNOWN; /* text/plain says little: sniff */
}

/* Case-insensitive search in s[0..n). */
static const char *find_ci(const char *s, size_t n, const char *needle)
{
    size_t m = strlen(needle);
    if (m == 0)
        return s;
    if (m > n)
        return NULL;
    /* Candidates by their first byte (memchr when it has no case), then the
     * rest compared: a sniff runs a dozen needles over 4 KB. */
    unsigned char lo = (unsigned char)tolower((unsigned char)needle[0]);
    unsigned char up = (unsigned char)toupper(lo);
    const char *end = s + n - m + 1; /* candidates start before end */
    for (const char *p = s; p < end; p++) {
        if (lo == up) {
            p = memchr(p, lo, (size_t)(end - p));
            if (!p)
                return NULL;
        } else if ((unsigned char)*p != lo && (unsigned char)*p != up) {
            continue;
        }
        if (strncasecmp(p + 1, needle + 1, m - 1) == 0)
            return p;
    }
    return NULL;
}

static int sniff_html(const char *s, size_t n)
{
    static const char *const strong[] = {"<!doctype html", "<html", "<body", "<head"};
    static const char *const weak[] = {"<title", "<div", "<p>", "<p ", "<br", "<table", "<h1",
                                       "<h2", "<span", "<a href", "<ul", "<meta"};
    size_t i = 0;
    if (n > 4096)
        n = 4096;
    for (size_t k = 0; k < sizeof strong / sizeof strong[0]; k++)
        if (find_ci(s, n, strong[k]))
            return 1;
    while (i < n && isspace((unsigned char)s[i]))
        i++;
    if (i == n || s[i] != '<')
        return 0;
    for (size_t k = 0; k < sizeof weak / sizeof weak[0]; k++)
        if (find_ci(s, n, weak[k]))
            return 1;
    return 0;
}

/* Scans one CSV record from s[*pos]; returns its field count (0 for a blank
 * line) and moves *pos past the record. *complete is 0 when the input ended
 * inside it. Quotes follow RFC 4180. */
static size_t csv_record(const char *s, size_t n, size_t *pos, char delim, int *complete)
{
    size_t i = *pos, fields = 1;
    int quoted = 0, any = 0;
    *complete = 0;
    while (i < n) {
        char c = s[i];
        if (quoted) {
            if (c == '"') {
                if (i + 1 < n && s[i + 1] == '"')
                    i++;
                else
                    quoted = 0;
            }
        } else if (c == '"') {
            quoted = 1;
            any = 1;
        } else if (c == delim) {
            fields++;
            any = 1;
        } else if (c == '\n') {
            i++;
            *complete = 1;
            break;
        } else if (c != '\r') {
            any = 1;
        }
        i++;
    }
    if (i >= n && !quoted)
        *complete = 1;
    *pos = i > n ? n : i;
    return any ? fields : 0;
}

/* CSV when the first records agree on a field count >= 2 for one delimiter:
 * at least 3 records, or 2 records of 3 or more fields. */
static int sniff_csv(const char *s, size_t n, char *delim_out)
{
    static const char delims[] = {',', ';', '\t'};
    size_t best = 0;
    int truncated = n > SNIFF_BYTES;
    if (truncated)
        n = SNIFF_BYTES;
    for (size_t k = 0; k < sizeof delims; k++) {
        size_t pos = 0, records = 0, fields = 0;
        int consistent = 1;
        if (!memchr(s, delims[k], n))
            continue; /* every record would have one field */
        while (pos < n && records < CSV_SNIFF_RECORDS) {
            int complete;
            size_t f = csv_record(s, n, &pos, delims[k], &complete);
            if (!complete && truncated)
                break;
            if (f == 0)
                continue;
            if (records == 0)
                fields = f;
            else if (f != fields) {
                consistent = 0;
                break;
            }
            records++;
        }
        if (consistent && fields >= 2 && (records >= 3 || (records == 2 && fields >= 3)) &&
            fields > best) {
            best = fields;
            *delim_out = delims[k];
        }
    }
    return best > 0;
}

static size_t line_indent(const char *s, size_t n)
{
    size_t i = 0;
    while (i < n && i < 4 && s[i] == ' ')
        i++;
    return i;
}

/* Markdown when it has a heading or a code fence, or two other signals
 * (list items, links, emphasis, block quotes). */
static int sniff_markdown(const char *s, size_t n)
{
    size_t pos = 0, lines = 0;
    int score = 0;
    if (n > SNIFF_BYTES)
        n = SNIFF_BYTES;
    while (pos < n && lines < 400) {
        const char *line = s + pos;
        const char *nl = memchr(line, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        pos += len + 1;
        lines++;
        size_t in = line_indent(line, len);
        const char *l = line + in;
        size_t ll = len - in;
        if (ll >= 2 && l[0] == '#') {
            size_t h = 0;
            while (h < ll && h < 7 && l[h] == '#')
                h++;
            if (h <= 6 && h < ll && l[h] == ' ')
                return 1;
        }
        if (ll >= 3 && (memcmp(l, "```", 3) == 0 || memcmp(l, "~~~", 3) == 0))
            return 1;
        if (ll >= 2 && (l[0] == '-' || l[0] == '*' || l[0] == '+' || l[0] == '>') && l[1] == ' ')
            score++;
        const char *lb = memchr(l, '[', ll);
        if (lb) {
            const char *rb = memchr(lb, ']', ll - (size_t)(lb - l));
            if (rb && rb + 1 < l + ll && rb[1] == '(')
                score++;
        }
        if (find_ci(l, ll, "**") || find_ci(l, ll, "__"))
            score++;
    }
    return score >= 2;
}

static int unsupported(struct doc *d, const char *what)
{
    char size[32];
    human_size(d->len, size, sizeof size);
    return celeriac_task_fail(d->t, "ValueError",
                              "unsupported document type: detected %s (%s); process_document "
                              "extracts text, markdown, csv, json and html for now - pdf, OCR "
                              "and office formats come in a later release",
                              what, size);
}

static int stage_detect(struct doc *d)
{
    const struct ext_map *ext = by_extension(d->filename);
    const char *magic = sniff_binary(d->data, d->len);
    char size[32];
    if (d->len >= 3 && memcmp(d->data, "\xef\xbb\xbf", 3) == 0)
        d->bom = 3;
    if (magic)
        return unsupported(d, magic);
    if (!utf8_text(d->data + d->bom, d->len - d->bom))
        return unsupported(d, ext && ext->type == DOC_UNKNOWN ? ext->name
                                                              : "binary data (not UTF-8 text)");
    const char *s = (const char *)d->data + d->bom;
    size_t n = d->len - d->bom;
    d->type = DOC_UNKNOWN;
    if (ext && ext->type != DOC_UNKNOWN) {
        d->type = ext->type;
        d->detected_by = "filename";
    } else if ((d->type = by_content_type(d->content_type)) != DOC_UNKNOWN) {
        d->detected_by = "content-type";
    } else {
        d->detected_by = "content";
        size_t i = 0;
        while (i < n && isspace((unsigned char)s[i]))
            i++;
        if (i < n && (s[i] == '{' || s[i] == '[') && (d->json = celeriac_value_from_json(s, n)))
            d->type = DOC_JSON;
        else if (sniff_html(s, n))
            d->type = DOC_HTML;
        else if (sniff_csv(s, n, &d->csv_delim))
            d->type = DOC_CSV;
        else if (sniff_markdown(s, n))
            d->type = DOC_MARKDOWN;
        else
            d->type = DOC_TEXT;
    }
    if (d->type == DOC_JSON && !d->json && !(d->json = celeriac_value_from_json(s, n)))
        return celeriac_task_fail(d->t, "ValueError",
                                  "document is not valid JSON (or nested too deeply)");
    if (d->type == DOC_CSV && !d->csv_delim) {
        const char *e = d->filename ? strrchr(d->filename, '.') : NULL;
        if (!sniff_csv(s, n, &d->csv_delim))
            d->csv_delim = e && strcasecmp(e, ".tsv") == 0 ? '\t' : ',';
    }
    human_size(d->len, size, sizeof size);
    progress(d, "Detected %s (%s)", type_names[d->type], size);
    return 0;
}

/* ---- stage: extract --------------------------------------------------------- */

static int extract_text(struct doc *d, const char *s, size_t n)
{
    return buf_append(&d->text, s, n) < 0 ? CELERIAC_ENOMEM : 0;
}

/* Inline markdown: drops emphasis and code marks, keeps link and image text. */
static int md_inline(const char *s, size_t n, struct buf *out)
{
    int rc = 0;
    for (size_t i = 0; i < n && rc == 0; i++) {
        char c = s[i];
        if (c == '\\' && i + 1 < n && ispunct((unsigned char)s[i + 1])) {
            rc = buf_append(out, &s[++i], 1);
        } else if (c == '[' || (c == '!' && i + 1 < n && s[i + 1] == '[')) {
            size_t open = c == '!' ? i + 1 : i;
            const char *rb = memchr(s + open, ']', n - open);
            const char *rp = NULL;
            if (rb && rb + 1 < s + n && rb[1] == '(')
                rp = memchr(rb + 2, ')', (size_t)(s + n - (rb + 2)));
            if (rp) {
                rc = md_inline(s + open + 1, (size_t)(rb - (s + open + 1)), out);
                i = (size_t)(rp - s);
            } else {
                rc = buf_append(out, &c, 1);
            }
        } else if (c == '*' || c == '`' || (c == '~' && i + 1 < n && s[i + 1] == '~')) {
            if (c == '~')
                i++;
        } else if (c == '_') {
            int inner = i > 0 && i + 1 < n && isalnum((unsigned char)s[i - 1]) &&
                        isalnum((unsigned char)s[i + 1]);
            if (inner) /* snake_case stays */
                rc = buf_append(out, &c, 1);
        } else {
            rc = buf_append(out, &c, 1);
        }
    }
    return rc < 0 ? CELERIAC_ENOMEM : 0;
}

static int is_rule(const char *l, size_t n)
{
    size_t marks = 0;
    char m = 0;
    for (size_t i = 0; i < n; i++) {
        if (l[i] == ' ' || l[i] == '\t')
            continue;
        if ((l[i] != '-' && l[i] != '*' && l[i] != '_' && l[i] != '=') || (m && l[i] != m))
            return 0;
        m = l[i];
        marks++;
    }
    return marks >= 3;
}

static int extract_markdown(struct doc *d, const char *s, size_t n)
{
    size_t pos = 0;
    int fence = 0, rc = 0;
    struct buf *out = &d->text;
    while (pos < n && rc == 0) {
        const char *line = s + pos;
        const char *nl = memchr(line, '\n', n - pos);
        size_t len = nl ? (size_t)(nl - line) : n - pos;
        pos += len + (nl ? 1 : 0);
        if (len > 0 && line[len - 1] == '\r')
            len--;
        size_t in = line_indent(line, len);
        const char *l = line + in;
        size_t ll = len - in;
        if (ll >= 3 && (memcmp(l, "```", 3) == 0 || memcmp(l, "~~~", 3) == 0)) {
            fence = !fence;
            continue;
        }
        if (fence) { /* code stays verbatim */
            if (buf_append(out, line, len) < 0 || buf_append(out, "\n", 1) < 0)
                rc = CELERIAC_ENOMEM;
            continue;
        }
        if (is_rule(l, ll))
            continue;
        while (ll > 0 && l[0] == '>') { /* block quotes */
            l++, ll--;
            if (ll > 0 && l[0] == ' ')
                l++, ll--;
        }
        int heading = 0;
        if (ll > 0 && l[0] == '#') {
            size_t h = 0;
            while (h < ll && l[h] == '#')
                h++;
            if (h <= 6 && (h == ll || l[h] == ' ')) {
                heading = 1;
                l += h, ll -= h;
                while (ll > 0 && l[0] == ' ')
                    l++, ll--;
                while (ll > 0 && (l[ll - 1] == '#' || l[ll - 1] == ' '))
                    ll--;
            }
        }
        if (ll >= 2 && (l[0] == '-' || l[0] == '*' || l[0] == '+') && l[1] == ' ') {
            l += 2, ll -= 2;
        } else {
            size_t k = 0;
            while (k < ll && k < 9 && isdigit((unsigned char)l[k]))
                k++;
            if (k > 0 && k + 1 < ll && (l[k] == '.' || l[k] == ')') && l[k + 1] == ' ')
                l += k + 2, ll -= k + 2;
        }
        if (ll >= 4 && l[0] == '[' && (l[1] == ' ' || l[1] == 'x' || l[1] == 'X') &&
            l[2] == ']' && l[3] == ' ')
            l += 4, ll -= 4;
        size_t before = out->len;
        if (ll > 0 && l[0] == '|') { /* table row: cells separated by spaces */
            int sep = 1;
            for (size_t k = 0; k < ll; k++)
                if (!strchr("|-: ", l[k]))
                    sep = 0;
            if (sep)
                continue;
            size_t k = 0, cells = 0;
            while (k < ll && rc == 0) {
                if (l[k] == '|') {
                    k++;
                    continue;
                }
                size_t cell = strcspn(l + k, "|");
                if (k + cell > ll)
                    cell = ll - k;
                size_t a = k, b = k + cell;
                while (a < b && l[a] == ' ')
                    a++;
                while (b > a && l[b - 1] == ' ')
                    b--;
                if (b > a) {
                    if (cells++ && buf_append(out, " ", 1) < 0)
                        rc = CELERIAC_ENOMEM;
                    if (rc == 0)
                        rc = md_inline(l + a, b - a, out);
                }
                k += cell;
            }
        } else {
            rc = md_inline(l, ll, out);
        }
        if (rc == 0 && heading && !d->title && out->len > before) {
            size_t tl = utf8_cut(out->p + before, out->len - before, TITLE_MAX);
            d->title = malloc(tl + 1);
            if (!d->title)
                rc = CELERIAC_ENOMEM;
            else {
                memcpy(d->title, out->p + before, tl);
                d->title[tl] = '\0';
            }
        }
        if (rc == 0 && buf_append(out, "\n", 1) < 0)
            rc = CELERIAC_ENOMEM;
    }
    return rc;
}

/* Appends one CSV field, unquoted. */
static int csv_field(struct buf *out, const char *f, size_t n)
{
    if (n >= 2 && f[0] == '"') {
        for (size_t i = 1; i < n; i++) {
            if (f[i] == '"') {
                if (i + 1 < n && f[i + 1] == '"')
                    i++;
                else
                    continue;
            }
            if (buf_append(out, &f[i], 1) < 0)
                return CELERIAC_ENOMEM;
        }
        return 0;
    }
    return buf_append(out, f, n) < 0 ? CELERIAC_ENOMEM : 0;
}

/* Rows become lines, fields are joined with spaces. The first row is the
 * header: rows counts the records after it, columns the widest record. */
static int extract_csv(struct doc *d, const char *s, size_t n)
{
    size_t pos = 0, records = 0, columns = 0;
    char delim = d->csv_delim;
    struct buf field = {0};
    int rc = 0;
    d->csv_header = celeriac_value_new_array();
    if (!d->csv_header)
        return CELERIAC_ENOMEM;
    while (pos < n && rc == 0) {
        size_t q = pos;
        while (q < n && s[q] == '\r')
            q++;
        if (q == n)
            break;
        if (s[q] == '\n') { /* blank lines are not records */
            pos = q + 1;
            continue;
        }
        size_t fields = 0, start = pos, i = pos;
        size_t line_start = d->text.len;
        int quoted = 0;
        for (;; i++) {
            int end = i >= n || (!quoted && s[i] == '\n');
            if (!end) {
                if (s[i] == '"') {
                    if (!quoted)
                        quoted = 1;
                    else if (i + 1 < n && s[i + 1] == '"')
                        i++; /* "" inside quotes */
                    else
                        quoted = 0;
                }
                if (quoted || s[i] != delim)
                    continue;
            }
            size_t flen = i - start;
            while (flen > 0 && s[start + flen - 1] == '\r')
                flen--;
            field.len = 0;
            if (csv_field(&field, s + start, flen) < 0) {
                rc = CELERIAC_ENOMEM;
                break;
            }
            if (field.len > 0) {
                if (d->text.len > line_start && buf_append(&d->text, " ", 1) < 0)
                    rc = CELERIAC_ENOMEM;
                if (rc == 0 && buf_append(&d->text, field.p, field.len) < 0)
                    rc = CELERIAC_ENOMEM;
            }
            if (rc == 0 && records == 0 && fields < CSV_HEADER_MAX &&
                celeriac_value_append(d->csv_header,
                                      celeriac_value_new_stringn(field.len ? field.p : "",
                                                                 utf8_cut(field.p, field.len,
                                                                          HEADER_FIELD_MAX))) < 0)
                rc = CELERIAC_ENOMEM;
            fields++;
            start = i + 1;
            if (end || rc < 0)
                break;
        }
        pos = i + 1;
        if (rc == 0 && buf_append(&d->text, "\n", 1) < 0)
            rc = CELERIAC_ENOMEM;
        if (fields > columns)
            columns = fields;
        records++;
    }
    buf_free(&field);
    d->csv_rows = records > 0 ? records - 1 : 0;
    d->csv_columns = columns;
    return rc;
}

static int json_walk(struct doc *d, const celeriac_value *v, int depth)
{
    if (depth > JSON_WALK_DEPTH)
        return 0;
    switch (celeriac_value_type(v)) {
    case CELERIAC_STRING: {
        size_t n;
        const char *s = celeriac_value_string(v, &n);
        d->json_strings++;
        if (n == 0)
            return 0;
        if (buf_append(&d->text, s, n) < 0 || buf_append(&d->text, "\n", 1) < 0)
            return CELERIAC_ENOMEM;
        return 0;
    }
    case CELERIAC_ARRAY:
    case CELERIAC_OBJECT:
        for (size_t i = 0; i < celeriac_value_len(v); i++) {
            int rc = json_walk(d, celeriac_value_at(v, i), depth + 1);
            if (rc < 0)
                return rc;
        }
        return 0;
    default:
        return 0;
    }
}

/* Decodes the entity at s[0] == '&' into out; returns bytes consumed, or 0
 * when it is not an entity we know (the '&' is then kept as text). */
static size_t html_entity(const char *s, size_t n, struct buf *out)
{
    static const struct {
        const char *name;
        uint32_t cp;
    } named[] = {
        {"amp", '&'},     {"lt", '<'},       {"gt", '>'},       {"quot", '"'},
        {"apos", '\''},   {"nbsp", ' '},     {"copy", 0xA9},    {"reg", 0xAE},
        {"trade", 0x2122}, {"hellip", 0x2026}, {"mdash", 0x2014}, {"ndash", 0x2013},
        {"lsquo", 0x2018}, {"rsquo", 0x2019}, {"ldquo", 0x201C}, {"rdquo", 0x201D},
        {"laquo", 0xAB},  {"raquo", 0xBB},   {"euro", 0x20AC},  {"pound", 0xA3},
        {"yen", 0xA5},    {"cent", 0xA2},    {"deg", 0xB0},     {"middot", 0xB7},
        {"bull", 0x2022}, {"times", 0xD7},   {"divide", 0xF7},  {"sect", 0xA7},
        {"para", 0xB6},
    };
    char enc[4];
    size_t semi = 1;
    while (semi < n && semi < 12 && s[semi] != ';')
        semi++;
    if (semi >= n || s[semi] != ';' || semi < 2)
        return 0;
    uint32_t cp = 0;
    if (s[1] == '#') {
        int hex = semi > 2 && (s[2] == 'x' || s[2] == 'X');
        size_t i = hex ? 3 : 2;
        if (i >= semi)
            return 0;
        for (; i < semi; i++) {
            int c = (unsigned char)s[i];
            int digit = hex ? (isdigit(c) ? c - '0' : isxdigit(c) ? (tolower(c) - 'a' + 10) : -1)
                            : (isdigit(c) ? c - '0' : -1);
            if (digit < 0)
                return 0;
            if (cp <= 0x10FFFF)
                cp = cp * (hex ? 16u : 10u) + (uint32_t)digit;
        }
        if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF))
            cp = 0xFFFD;
    } else {
        size_t k = 0, nn = sizeof named / sizeof named[0];
        for (; k < nn; k++)
            if (strlen(named[k].name) == semi - 1 && memcmp(s + 1, named[k].name, semi - 1) == 0)
                break;
        if (k == nn)
            return 0;
        cp = named[k].cp;
    }
    if (buf_append(out, enc, utf8_put(cp, enc)) < 0)
        return 0;
    return semi + 1;
}

/* Collapses whitespace in s into out: runs with a newline become one
 * newline (one space when one_line), others one space; leading and trailing
 * whitespace dropped. */
static int collapse_ws(const char *s, size_t n, int one_line, struct buf *out)
{
    size_t i = 0;
    int pending = 0; /* 0 none, 1 space, 2 newline */
    size_t start = out->len;
    while (i < n) {
        uint32_t cp;
        size_t k = utf8_next((const unsigned char *)s, n, i, &cp);
        if (is_uspace(cp)) {
            if (!one_line && (cp == '\n' || cp == 0x2028 || cp == 0x2029))
                pending = 2;
            else if (!pending)
                pending = 1;
        } else {
            if (pending && out->len > start &&
                buf_append(out, pending == 2 ? "\n" : " ", 1) < 0)
                return CELERIAC_ENOMEM;
            pending = 0;
            if (buf_append(out, s + i, k) < 0)
                return CELERIAC_ENOMEM;
        }
        i += k;
    }
    return 0;
}

static int html_is(const char *name, const char *const *list)
{
    for (; *list; list++)
        if (strcmp(name, *list) == 0)
            return 1;
    return 0;
}

/* Text of an element whose content is raw text (title): from after the
 * opening tag to "</name", entity-decoded. Returns where that ends. */
static size_t html_raw_end(const char *s, size_t n, size_t from, const char *name)
{
    char close[24];
    snprintf(close, sizeof close, "</%s", name);
    const char *e = find_ci(s + from, n - from, close);
    return e ? (size_t)(e - s) : n;
}

static int extract_html(struct doc *d, const char *s, size_t n)
{
    static const char *const skip[] = {"script", "style", "template", "noscript", NULL};
    static const char *const block[] = {"p", "div", "br", "li", "ul", "ol", "h1", "h2", "h3",
                                        "h4", "h5", "h6", "tr", "table", "title", "section",
                                        "article", "header", "footer", "nav", "blockquote",
                                        "pre", "hr", "dt", "dd", "main", "aside", "form",
                                        "figure", "figcaption", "address", NULL};
    static const char *const cell[] = {"td", "th", NULL};
    struct buf raw = {0};
    int rc = 0;
    size_t i = 0;
    while (i < n && rc == 0) {
        if (s[i] == '&') {
            size_t used = html_entity(s + i, n - i, &raw);
            if (used) {
                i += used;
                continue;
            }
        }
        if (s[i] != '<') {
            /* Source line breaks are just spaces in HTML; block tags break lines. */
            char c = isspace((unsigned char)s[i]) ? ' ' : s[i];
            if (buf_append(&raw, &c, 1) < 0)
                rc = CELERIAC_ENOMEM;
            i++;
            continue;
        }
        if (n - i >= 4 && memcmp(s + i, "<!--", 4) == 0) {
            const char *e = find_ci(s + i + 4, n - i - 4, "-->");
            i = e ? (size_t)(e - s) + 3 : n;
            continue;
        }
        size_t j = i + 1;
        int closing = j < n && s[j] == '/';
        if (closing)
            j++;
        char name[16];
        size_t nl = 0;
        while (j < n && isalnum((unsigned char)s[j])) {
            if (nl + 1 < sizeof name)
                name[nl++] = (char)tolower((unsigned char)s[j]);
            j++;
        }
        name[nl] = '\0';
        if (nl == 0 && !(j < n && (s[j] == '!' || s[j] == '?'))) { /* "a < b" is text */
            if (buf_append(&raw, "<", 1) < 0)
                rc = CELERIAC_ENOMEM;
            i++;
            continue;
        }
        char quote = 0; /* find the tag's '>', skipping quoted attribute values */
        while (j < n && (quote || s[j] != '>')) {
            if (quote && s[j] == quote)
                quote = 0;
            else if (!quote && (s[j] == '"' || s[j] == '\''))
                quote = s[j];
            j++;
        }
        i = j < n ? j + 1 : n;
        if (closing || nl == 0) {
            if (nl && html_is(name, block) && buf_append(&raw, "\n", 1) < 0)
                rc = CELERIAC_ENOMEM;
            continue;
        }
        if (html_is(name, skip)) {
            size_t e = html_raw_end(s, n, i, name);
            const char *gt = e < n ? memchr(s + e, '>', n - e) : NULL;
            i = gt ? (size_t)(gt - s) + 1 : n;
            continue;
        }
        if (strcmp(name, "title") == 0 && !d->title) {
            struct buf t = {0}, c = {0};
            size_t e = html_raw_end(s, n, i, name);
            for (size_t k = i; k < e && rc == 0;) {
                size_t used = s[k] == '&' ? html_entity(s + k, e - k, &t) : 0;
                if (used)
                    k += used;
                else if (buf_append(&t, &s[k++], 1) < 0)
                    rc = CELERIAC_ENOMEM;
            }
            if (rc == 0 && t.len && collapse_ws(t.p, utf8_cut(t.p, t.len, TITLE_MAX), 1, &c) < 0)
                rc = CELERIAC_ENOMEM;
            if (rc == 0 && c.len) {
                d->title = c.p; /* takes ownership of c's bytes */
                c.p = NULL;
            }
            buf_free(&t);
            buf_free(&c);
        }
        if (html_is(name, block) && buf_append(&raw, "\n", 1) < 0)
            rc = CELERIAC_ENOMEM;
        else if (html_is(name, cell) && buf_append(&raw, " ", 1) < 0)
            rc = CELERIAC_ENOMEM;
    }
    if (rc == 0 && raw.len)
        rc = collapse_ws(raw.p, raw.len, 0, &d->text);
    buf_free(&raw);
    return rc;
}

static size_t count_words(const char *s, size_t n)
{
    size_t words = 0, i = 0;
    int in_word = 0;
    while (i < n) {
        uint32_t cp = (unsigned char)s[i];
        if (cp < 0x80)
            i++; /* ASCII: no decoding */
        else
            i += utf8_next((const unsigned char *)s, n, i, &cp);
        if (is_uspace(cp))
            in_word = 0;
        else if (!in_word) {
            in_word = 1;
            words++;
        }
    }
    return words;
}

static int stage_extract(struct doc *d)
{
    const char *s = (const char *)d->data + d->bom;
    size_t n = d->len - d->bom;
    int rc;
    char words[32];
    switch (d->type) {
    case DOC_MARKDOWN: rc = extract_markdown(d, s, n); break;
    case DOC_CSV: rc = extract_csv(d, s, n); break;
    case DOC_JSON: rc = json_walk(d, d->json, 0); break;
    case DOC_HTML: rc = extract_html(d, s, n); break;
    default: rc = extract_text(d, s, n); break;
    }
    if (rc < 0)
        return rc;
    if (!d->text.p && buf_append(&d->text, "", 0) < 0)
        return CELERIAC_ENOMEM;
    if (!d->text.p) { /* buf_append of nothing may allocate nothing */
        d->text.p = calloc(1, 1);
        if (!d->text.p)
            return CELERIAC_ENOMEM;
    }
    d->words = count_words(d->text.p, d->text.len);
    thousands(d->words, words, sizeof words);
    progress(d, "Extracted %s words", words);
    return 0;
}

/* ---- stage: analyse --------------------------------------------------------- */

static const char *const stopwords[] = {
    "about", "above", "after", "again", "against", "all", "also", "and", "any", "are",
    "aren", "because", "been", "before", "being", "below", "between", "both", "but", "can",
    "could", "couldn", "did", "didn", "does", "doesn", "doing", "don", "down", "during",
    "each", "few", "for", "from", "further", "had", "hadn", "has", "hasn", "have", "haven",
    "having", "her", "here", "hers", "herself", "him", "himself", "his", "how", "into",
    "isn", "its", "itself", "just", "let", "may", "more", "most", "must", "myself", "nor",
    "not", "now", "off", "once", "only", "other", "our", "ours", "ourselves", "out", "over",
    "own", "same", "shan", "she", "should", "shouldn", "some", "such", "than", "that", "the",
    "their", "theirs", "them", "themselves", "then", "there", "these", "they", "this",
    "those", "through", "too", "under", "until", "very", "was", "wasn", "were", "weren",
    "what", "when", "where", "which", "while", "who", "whom", "why", "will", "with", "won",
    "would", "wouldn", "you", "your", "yours", "yourself", "yourselves",
};

#define STOPWORD_MAX 10    /* bytes of the longest stopword */
#define STOPWORD_SLOTS 512 /* open addressing, a quarter full */

static uint64_t hash_bytes(const char *s, size_t n);

/* Indexes + 1 into stopwords, by hash; built once per process. */
static unsigned short stop_slots[STOPWORD_SLOTS];
static once_flag stop_once = ONCE_FLAG_INIT;

static void stop_build(void)
{
    for (size_t i = 0; i < sizeof stopwords / sizeof stopwords[0]; i++) {
        size_t j = hash_bytes(stopwords[i], strlen(stopwords[i])) & (STOPWORD_SLOTS - 1);
        while (stop_slots[j])
            j = (j + 1) & (STOPWORD_SLOTS - 1);
        stop_slots[j] = (unsigned short)(i + 1);
    }
}

/* h: hash_bytes(w, len). */
static int is_stopword(const char *w, size_t len, uint64_t h)
{
    if (len > STOPWORD_MAX)
        return 0;
    call_once(&stop_once, stop_build);
    size_t j = h & (STOPWORD_SLOTS - 1);
    for (; stop_slots[j]; j = (j + 1) & (STOPWORD_SLOTS - 1)) {
        const char *s = stopwords[stop_slots[j] - 1];
        if (strncmp(s, w, len) == 0 && s[len] == '\0')
            return 1;
    }
    return 0;
}

/* Term counts: open addressing over terms kept NUL-separated in one arena. */
struct term {
    size_t off;    /* into the arena */
    size_t count;  /* 0 = empty slot */
    uint64_t hash; /* hash_bytes() of the term */
};

struct terms {
    struct term *slots;
    size_t cap, used;
    struct buf arena;
};

#define FNV_OFFSET 1469598103934665603ULL
#define FNV_PRIME 1099511628211ULL

static uint64_t hash_bytes(const char *s, size_t n)
{
    uint64_t h = FNV_OFFSET; /* FNV-1a */
    for (size_t i = 0; i < n; i++) {
        h ^= (unsigned char)s[i];
        h *= FNV_PRIME;
    }
    return h;
}

static int terms_grow(struct terms *tt)
{
    size_t cap = tt->cap ? tt->cap * 2 : 1024;
    struct term *slots = calloc(cap, sizeof *slots);
    if (!slots)
        return CELERIAC_ENOMEM;
    for (size_t i = 0; i < tt->cap; i++) {
        if (!tt->slots[i].count)
            continue;
        size_t j = tt->slots[i].hash & (cap - 1);
        while (slots[j].count)
            j = (j + 1) & (cap - 1);
        slots[j] = tt->slots[i];
    }
    free(tt->slots);
    tt->slots = slots;
    tt->cap = cap;
    return 0;
}

/* h: hash_bytes(w, n). */
static int terms_add(struct terms *tt, const char *w, size_t n, uint64_t h)
{
    if ((tt->used + 1) * 2 > tt->cap && terms_grow(tt) < 0)
        return CELERIAC_ENOMEM;
    size_t j = h & (tt->cap - 1);
    while (tt->slots[j].count) {
        const char *have = tt->arena.p + tt->slots[j].off;
        if (tt->slots[j].hash == h && memcmp(have, w, n) == 0 && have[n] == '\0') {
            tt->slots[j].count++;
            return 0;
        }
        j = (j + 1) & (tt->cap - 1);
    }
    size_t off = tt->arena.len;
    if (buf_append(&tt->arena, w, n) < 0 || buf_append(&tt->arena, "", 1) < 0)
        return CELERIAC_ENOMEM;
    tt->slots[j].off = off;
    tt->slots[j].count = 1;
    tt->slots[j].hash = h;
    tt->used++;
    return 0;
}

static const char *sort_arena; /* the arena cmp_terms() reads terms from */

static int cmp_terms(const void *a, const void *b)
{
    const struct term *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(sort_arena + x->off, sort_arena + y->off);
}

/* Counts lowercase words of 3+ letters that are not stopwords, and keeps the
 * TOP_TERMS most frequent, ties broken alphabetically. */
static int top_terms(struct doc *d)
{
    struct terms tt = {0};
    char word[TERM_MAX_BYTES + 4];
    size_t wl = 0, letters = 0, i = 0;
    int rc = 0, too_long = 0;
    uint64_t h = FNV_OFFSET; /* hash_bytes(word, wl), kept as the word grows */
    const char *s = d->text.p;
    size_t n = d->text.len;
    while (rc == 0 && i <= n) {
        uint32_t cp = ' ';
        size_t k = 1;
        if (i < n) {
            unsigned char c = (unsigned char)s[i];
            if (c < 0x80) {
                /* ASCII: no decoding; letters and digits go straight in. */
                unsigned char lc = c >= 'A' && c <= 'Z' ? (unsigned char)(c + 32) : c;
                if ((lc >= 'a' && lc <= 'z') || (c >= '0' && c <= '9')) {
                    if (wl + 1 > TERM_MAX_BYTES) {
                        too_long = 1;
                    } else {
                        word[wl++] = (char)lc;
                        h = (h ^ lc) * FNV_PRIME;
                    }
                    letters += lc >= 'a';
                    i++;
                    continue;
                }
                cp = c;
            } else {
                k = utf8_next((const unsigned char *)s, n, i, &cp);
            }
        }
        if (i < n && is_word_cp(cp)) {
            char enc[4];
            size_t el = utf8_put(lower_cp(cp), enc); /* not ASCII here */
            if (wl + el > TERM_MAX_BYTES)
                too_long = 1;
            else {
                for (size_t b = 0; b < el; b++) {
                    word[wl++] = enc[b];
                    h = (h ^ (unsigned char)enc[b]) * FNV_PRIME;
                }
            }
            letters++;
        } else if (wl > 0 || too_long) {
            word[wl] = '\0';
            if (!too_long && letters >= 3 && !is_stopword(word, wl, h))
                rc = terms_add(&tt, word, wl, h);
            wl = letters = 0;
            too_long = 0;
            h = FNV_OFFSET;
        }
        i += k;
    }
    /* The TOP_TERMS first in (count desc, term asc) order, by insertion into
     * a short sorted list: most terms occur once or twice and are rejected by
     * their count alone, where sorting them all compared their text. */
    struct term list[TOP_TERMS];
    size_t nlist = 0;
    sort_arena = tt.arena.p;
    for (size_t j = 0; rc == 0 && j < tt.cap; j++) {
        if (!tt.slots[j].count)
            continue;
        const struct term *t = &tt.slots[j];
        if (nlist == TOP_TERMS && cmp_terms(t, &list[TOP_TERMS - 1]) >= 0)
            continue;
        size_t at = nlist < TOP_TERMS ? nlist++ : TOP_TERMS - 1;
        while (at > 0 && cmp_terms(t, &list[at - 1]) < 0) {
            list[at] = list[at - 1];
            at--;
        }
        list[at] = *t;
    }
    if (rc == 0) {
        d->top_terms = celeriac_value_new_array();
        if (!d->top_terms)
            rc = CELERIAC_ENOMEM;
        for (size_t j = 0; rc == 0 && j < nlist && j < TOP_TERMS; j++) {
            celeriac_value *pair = celeriac_value_new_array();
            add(d, pair, celeriac_value_new_string(tt.arena.p + list[j].off));
            add(d, pair, celeriac_value_new_int((int64_t)list[j].count));
            add(d, d->top_terms, pair);
        }
    }
    free(tt.slots);
    buf_free(&tt.arena);
    return rc;
}

static int stage_analyse(struct doc *d)
{
    unsigned char md[EVP_MAX_MD_SIZE];
    unsigned int mdlen = 0;
    char lines[32];
    if (!EVP_Digest(d->data, d->len, md, &mdlen, EVP_sha256(), NULL) || mdlen != 32)
        return celeriac_task_fail(d->t, "RuntimeError", "sha256 failed");
    for (unsigned i = 0; i < mdlen; i++)
        snprintf(d->sha256 + 2 * i, 3, "%02x", md[i]);
    const char *s = d->text.p;
    size_t n = d->text.len;
    for (size_t i = 0; i < n;) {
        uint32_t cp = (unsigned char)s[i];
        if (cp < 0x80)
            i++; /* ASCII: no decoding */
        else
            i += utf8_next((const unsigned char *)s, n, i, &cp);
        d->chars++;
        if (cp == '\n')
            d->lines++;
    }
    if (n > 0 && s[n - 1] != '\n')
        d->lines++;
    int rc = top_terms(d);
    if (rc < 0)
        return rc;
    thousands(d->lines, lines, sizeof lines);
    if (celeriac_value_len(d->top_terms) > 0)
        progress(d, "Analysed %s line%s; top term '%s'", lines, d->lines == 1 ? "" : "s",
                 celeriac_value_string(celeriac_value_at(celeriac_value_at(d->top_terms, 0), 0),
                                       NULL));
    else
        progress(d, "Analysed %s line%s", lines, d->lines == 1 ? "" : "s");
    return 0;
}

/* ---- stage: chunk ----------------------------------------------------------- */

/* Chunks tile the text: each holds at most chunk_size characters and ends
 * after a whitespace character when one lies in its second half, so words
 * are not split; start and length count characters. */
static int stage_chunk(struct doc *d)
{
    const unsigned char *s = (const unsigned char *)d->text.p;
    size_t n = d->text.len, pos = 0, start_chars = 0;
    char count[32], size[32];
    d->chunk_items = celeriac_value_new_array();
    if (!d->chunk_items)
        return CELERIAC_ENOMEM;
    while (pos < n) {
        size_t end = pos, chars = 0, ws_end = 0, ws_chars = 0;
        while (end < n && chars < d->chunk_size) {
            uint32_t cp = s[end];
            if (cp < 0x80)
                end++; /* ASCII: no decoding */
            else
                end += utf8_next(s, n, end, &cp);
            chars++;
            if (is_uspace(cp)) {
                ws_end = end;
                ws_chars = chars;
            }
        }
        if (end < n && ws_end && ws_chars >= d->chunk_size / 2) {
            uint32_t next;
            utf8_next(s, n, end, &next);
            if (!is_uspace(next)) { /* the hard cut would split a word */
                end = ws_end;
                chars = ws_chars;
            }
        }
        if (d->chunk_count < MAX_CHUNK_ITEMS) {
            celeriac_value *item = celeriac_value_new_object();
            put(d, item, "index", celeriac_value_new_int((int64_t)d->chunk_count));
            put(d, item, "start", celeriac_value_new_int((int64_t)start_chars));
            put(d, item, "length", celeriac_value_new_int((int64_t)chars));
            if (d->include_chunks)
                put(d, item, "text", celeriac_value_new_stringn((const char *)s + pos, end - pos));
            add(d, d->chunk_items, item);
            if (d->oom)
                return CELERIAC_ENOMEM;
        }
        d->chunk_count++;
        start_chars += chars;
        pos = end;
    }
    thousands(d->chunk_count, count, sizeof count);
    thousands(d->chunk_size, size, sizeof size);
    progress(d, "Split into %s chunk%s of up to %s characters", count,
             d->chunk_count == 1 ? "" : "s", size);
    return 0;
}

/* ---- pipeline and result ---------------------------------------------------- */

struct stage {
    const char *name;
    int (*fn)(struct doc *d); /* 0, or a negative code (task failed or ENOMEM) */
    int percent;              /* progress published by the stage */
};

/* In order; later formats (PDF, OCR) add stages here. */
static const struct stage pipeline[] = {
    {"load", stage_load, 10},
    {"detect", stage_detect, 20},
    {"extract", stage_extract, 45},
    {"analyse", stage_analyse, 70},
    {"chunk", stage_chunk, 90},
};

static celeriac_value *str_or_null(const char *s)
{
    return s ? celeriac_value_new_string(s) : celeriac_value_new_null();
}

static celeriac_value *build_result(struct doc *d)
{
    celeriac_value *r = celeriac_value_new_object();
    put(d, r, "filename", str_or_null(d->filename));
    put(d, r, "document_type", celeriac_value_new_string(d->document_type));
    put(d, r, "detected_type", celeriac_value_new_string(type_names[d->type]));
    put(d, r, "detected_by", celeriac_value_new_string(d->detected_by));
    put(d, r, "source", celeriac_value_new_string(d->source_kind));
    if (d->content_type[0])
        put(d, r, "content_type", celeriac_value_new_string(d->content_type));
    put(d, r, "bytes", celeriac_value_new_int((int64_t)d->len));
    put(d, r, "sha256", celeriac_value_new_string(d->sha256));
    put(d, r, "characters", celeriac_value_new_int((int64_t)d->chars));
    put(d, r, "lines", celeriac_value_new_int((int64_t)d->lines));
    put(d, r, "words", celeriac_value_new_int((int64_t)d->words));
    put(d, r, "top_terms", d->top_terms);
    d->top_terms = NULL;
    put(d, r, "title", str_or_null(d->title));
    put(d, r, "chunk_size", celeriac_value_new_int((int64_t)d->chunk_size));
    celeriac_value *chunks = celeriac_value_new_object();
    put(d, chunks, "count", celeriac_value_new_int((int64_t)d->chunk_count));
    put(d, chunks, "truncated", celeriac_value_new_bool(d->chunk_count > MAX_CHUNK_ITEMS));
    put(d, chunks, "items", d->chunk_items);
    d->chunk_items = NULL;
    put(d, r, "chunks", chunks);
    size_t pb = 0, pc = 0;
    while (pb < d->text.len && pc < PREVIEW_CHARS) {
        uint32_t cp;
        pb += utf8_next((const unsigned char *)d->text.p, d->text.len, pb, &cp);
        pc++;
    }
    put(d, r, "text_preview", celeriac_value_new_stringn(d->text.p ? d->text.p : "", pb));
    if (d->type == DOC_CSV) {
        char delim[2] = {d->csv_delim, 0};
        celeriac_value *csv = celeriac_value_new_object();
        put(d, csv, "rows", celeriac_value_new_int((int64_t)d->csv_rows));
        put(d, csv, "columns", celeriac_value_new_int((int64_t)d->csv_columns));
        put(d, csv, "header", d->csv_header);
        d->csv_header = NULL;
        put(d, csv, "delimiter", celeriac_value_new_string(delim));
        put(d, r, "csv", csv);
    }
    if (d->type == DOC_JSON) {
        static const char *const json_types[] = {"null",   "boolean", "number", "number",
                                                 "string", "string",  "array",  "object"};
        celeriac_value *json = celeriac_value_new_object();
        const char *top = json_types[celeriac_value_type(d->json)];
        put(d, json, "top_level", celeriac_value_new_string(top));
        put(d, json, "length", celeriac_value_new_int((int64_t)celeriac_value_len(d->json)));
        put(d, json, "strings", celeriac_value_new_int((int64_t)d->json_strings));
        put(d, r, "json", json);
    }
    put(d, r, "stages", d->stages);
    d->stages = NULL;
    if (d->oom || !r) {
        celeriac_value_free(r);
        return NULL;
    }
    return r;
}

static void doc_free(struct doc *d)
{
    free(d->data);
    celeriac_value_free(d->json);
    buf_free(&d->text);
    free(d->title);
    celeriac_value_free(d->csv_header);
    celeriac_value_free(d->top_terms);
    celeriac_value_free(d->chunk_items);
    celeriac_value_free(d->stages);
}

static int process_document(celeriac_task *t, void *userdata)
{
    struct builtin_config defaults;
    const struct builtin_config *cfg = userdata;
    struct doc d = {.t = t};
    int rc;
    if (!cfg) {
        builtin_config_defaults(&defaults);
        cfg = &defaults;
    }
    d.cfg = cfg;
    rc = parse_args(&d);
    if (rc < 0)
        goto out;
    d.stages = celeriac_value_new_array();
    if (!d.stages) {
        rc = oom(&d);
        goto out;
    }
    for (size_t i = 0; i < sizeof pipeline / sizeof pipeline[0]; i++) {
        double t0 = util_monotonic();
        d.percent = pipeline[i].percent;
        rc = pipeline[i].fn(&d);
        if (rc < 0) {
            if (!t->failed)
                rc = rc == CELERIAC_ENOMEM ? oom(&d)
                                           : celeriac_task_fail(t, "RuntimeError",
                                                                "process_document: %s stage: %s",
                                                                pipeline[i].name,
                                                                celeriac_strerror(rc));
            goto out;
        }
        double ms = (util_monotonic() - t0) * 1000.0;
        celeriac_value *st = celeriac_value_new_object();
        put(&d, st, "name", celeriac_value_new_string(pipeline[i].name));
        put(&d, st, "ms", celeriac_value_new_double((double)(int64_t)(ms * 1000.0) / 1000.0));
        add(&d, d.stages, st);
    }
    celeriac_value *result = build_result(&d);
    if (!result) {
        rc = oom(&d);
        goto out;
    }
    rc = celeriac_task_set_result(t, result);
    if (rc < 0) {
        rc = oom(&d);
        goto out;
    }
    d.percent = 100;
    progress(&d, "Done");
out:
    doc_free(&d);
    return rc;
}

/* ---- registration ----------------------------------------------------------- */

void builtin_config_defaults(struct builtin_config *c)
{
    c->document_max_bytes = 50u * 1024u * 1024u;
    c->fetch_timeout_ms = 30000;
    c->fetch_connect_timeout_ms = 10000;
    c->fetch_max_redirects = 5;
    c->default_chunk_size = 1000;
}

int tasks_builtin_register(celeriac_registry *r, const struct builtin_config *cfg)
{
    /* The registry keeps userdata as void *; the task only reads it. */
    return celeriac_register(r, "process_document", process_document, (void *)cfg, 0);
}
