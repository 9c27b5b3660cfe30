/* codec.c - owns base64 and zlib/bzip2 decompression of message bodies, every output capped; it does not know about JSON, envelopes or content types other than compression names. */
#include "codec.h"

#include <bzlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "celeriac.h"

/* 0..63 for the standard and urlsafe alphabets, 64 for whitespace, 65 for '=',
 * 255 for anything else. */
static const unsigned char b64_class[256] = {
    255, 255, 255, 255, 255, 255, 255, 255, 255,  64,  64,  64,  64,  64, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
     64, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,  62, 255,  62, 255,  63,
     52,  53,  54,  55,  56,  57,  58,  59,  60,  61, 255, 255, 255,  65, 255, 255,
    255,   0,   1,   2,   3,   4,   5,   6,   7,   8,   9,  10,  11,  12,  13,  14,
     15,  16,  17,  18,  19,  20,  21,  22,  23,  24,  25, 255, 255, 255, 255,  63,
    255,  26,  27,  28,  29,  30,  31,  32,  33,  34,  35,  36,  37,  38,  39,  40,
     41,  42,  43,  44,  45,  46,  47,  48,  49,  50,  51, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
    255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255,
};

int codec_base64_decode(const char *in, size_t len, size_t max_out, unsigned char **out,
                        size_t *outlen)
{
    if (!out || !outlen || (!in && len))
        return CELERIAC_EINVAL;
    *out = NULL;
    *outlen = 0;
    const unsigned char *s = (const unsigned char *)in;
    /* Output is at most len / 4 * 3 + 2 bytes; only when that bound is over
     * the cap are the data characters counted first (whitespace may make the
     * real size smaller). */
    size_t bound = len / 4 * 3 + 2;
    if (bound > max_out) {
        size_t data = 0;
        for (size_t i = 0; i < len; i++)
            data += b64_class[s[i]] < 64;
        if (data / 4 * 3 + (data % 4 ? data % 4 - 1 : 0) > max_out)
            return CELERIAC_ETOOBIG;
    }
    unsigned char *o = malloc(bound + 1);
    if (!o)
        return CELERIAC_ENOMEM;
    /* One pass: four data characters at a time (checked together), anything
     * else one by one: whitespace skipped, '=' counted, the rest refused. */
    uint32_t acc = 0;
    int bits = 0;
    size_t w = 0, i = 0, data = 0, pad = 0;
    while (i < len) {
        if (bits == 0 && pad == 0) {
            while (i + 4 <= len) {
                unsigned a = b64_class[s[i]], b = b64_class[s[i + 1]], c = b64_class[s[i + 2]],
                         d = b64_class[s[i + 3]];
                if ((a | b | c | d) >= 64)
                    break;
                uint32_t v = (uint32_t)a << 18 | (uint32_t)b << 12 | (uint32_t)c << 6 | d;
                o[w] = (unsigned char)(v >> 16);
                o[w + 1] = (unsigned char)(v >> 8);
                o[w + 2] = (unsigned char)v;
                w += 3;
                i += 4;
                data += 4;
            }
            if (i >= len)
                break;
        }
        unsigned char k = b64_class[s[i++]];
        if (k == 64)
            continue;
        if (k == 65) {
            pad++;
            continue;
        }
        if (k == 255 || pad)
            goto bad; /* not base64, or data after padding */
        data++;
        acc = (acc << 6) | k;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[w++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (data % 4 == 1 || pad > 2 || (pad && (data + pad) % 4 != 0))
        goto bad;
    o[w] = 0;
    *out = o;
    *outlen = w;
    return 0;
bad:
    free(o);
    return CELERIAC_EPARSE;
}

char *codec_base64_encode(const void *in, size_t len, size_t *outlen)
{
    static const char tbl[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    const unsigned char *p = in;
    if (len > (SIZE_MAX - 1) / 4 * 3 - 3)
        return NULL;
    size_t n = (len + 2) / 3 * 4;
    char *o = malloc(n + 1);
    if (!o)
        return NULL;
    size_t w = 0, i = 0;
    for (; i + 2 < len; i += 3) {
        uint32_t v = (uint32_t)p[i] << 16 | (uint32_t)p[i + 1] << 8 | p[i + 2];
        o[w++] = tbl[v >> 18];
        o[w++] = tbl[(v >> 12) & 63];
        o[w++] = tbl[(v >> 6) & 63];
        o[w++] = tbl[v & 63];
    }
    if (i < len) {
        uint32_t v = (uint32_t)p[i] << 16 | (i + 1 < len ? (uint32_t)p[i + 1] << 8 : 0);
        o[w++] = tbl[v >> 18];
        o[w++] = tbl[(v >> 12) & 63];
        o[w++] = i + 1 < len ? tbl[(v >> 6) & 63] : '=';
        o[w++] = '=';
    }
    o[w] = 0;
    if (outlen)
        *outlen = w;
    return o;
}

/* Output buffer that grows up to max_out + 1 bytes (the extra byte detects
 * "more than allowed" without a second pass). */
struct capbuf {
    unsigned char *p;
    size_t len, cap, limit;
};

static int capbuf_grow(struct capbuf *b)
{
    if (b->cap >= b->limit)
        return CELERIAC_ETOOBIG;
    size_t cap = b->cap ? b->cap * 2 : 16384;
    if (cap > b->limit || cap < b->cap)
        cap = b->limit;
    unsigned char *np = realloc(b->p, cap + 1);
    if (!np)
        return CELERIAC_ENOMEM;
    b->p = np;
    b->cap = cap;
    return 0;
}

static int inflate_capped(const void *in, size_t len, size_t max_out, struct capbuf *b)
{
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    if (inflateInit2(&zs, 15 + 32) != Z_OK) /* zlib or gzip framing */
        return CELERIAC_ENOMEM;
    int rc = 0;
    const unsigned char *src = in;
    size_t left = len;
    for (;;) {
        if (zs.avail_in == 0 && left) {
            zs.next_in = (Bytef *)(uintptr_t)src;
            zs.avail_in = left > UINT32_MAX ? UINT32_MAX : (uInt)left;
            src += zs.avail_in;
            left -= zs.avail_in;
        }
        if (b->len == b->cap && (rc = capbuf_grow(b)) < 0)
            break;
        size_t room = b->cap - b->len;
        zs.next_out = b->p + b->len;
        zs.avail_out = room > UINT32_MAX ? UINT32_MAX : (uInt)room;
        uInt before = zs.avail_out;
        int zr = inflate(&zs, Z_NO_FLUSH);
        b->len += before - zs.avail_out;
        if (zr == Z_STREAM_END) {
            if (zs.avail_in || left)
                rc = CELERIAC_EPARSE; /* trailing garbage */
            break;
        }
        if (zr == Z_MEM_ERROR) {
            rc = CELERIAC_ENOMEM;
            break;
        }
        if (zr != Z_OK && zr != Z_BUF_ERROR) {
            rc = CELERIAC_EPARSE;
            break;
        }
        if (zr == Z_BUF_ERROR && zs.avail_in == 0 && left == 0 && zs.avail_out > 0) {
            rc = CELERIAC_EPARSE; /* truncated */
            break;
        }
    }
    inflateEnd(&zs);
    if (rc == 0 && b->len > max_out)
        rc = CELERIAC_ETOOBIG;
    return rc;
}

static int bunzip_capped(const void *in, size_t len, size_t max_out, struct capbuf *b)
{
    bz_stream bs;
    memset(&bs, 0, sizeof bs);
    if (BZ2_bzDecompressInit(&bs, 0, 0) != BZ_OK)
        return CELERIAC_ENOMEM;
    int rc = 0;
    const char *src = in;
    size_t left = len;
    for (;;) {
        if (bs.avail_in == 0 && left) {
            bs.next_in = (char *)(uintptr_t)src;
            bs.avail_in = left > UINT32_MAX ? UINT32_MAX : (unsigned)left;
            src += bs.avail_in;
            left -= bs.avail_in;
        }
        if (b->len == b->cap && (rc = capbuf_grow(b)) < 0)
            break;
        size_t room = b->cap - b->len;
        bs.next_out = (char *)b->p + b->len;
        bs.avail_out = room > UINT32_MAX ? UINT32_MAX : (unsigned)room;
        unsigned before = bs.avail_out;
        unsigned in_before = bs.avail_in;
        int br = BZ2_bzDecompress(&bs);
        b->len += before - bs.avail_out;
        if (br == BZ_STREAM_END) {
            if (bs.avail_in || left)
                rc = CELERIAC_EPARSE;
            break;
        }
        if (br == BZ_MEM_ERROR) {
            rc = CELERIAC_ENOMEM;
            break;
        }
        if (br != BZ_OK) {
            rc = CELERIAC_EPARSE;
            break;
        }
        if (bs.avail_in == 0 && left == 0 && bs.avail_out > 0 && in_before == 0 &&
            before == bs.avail_out) {
            rc = CELERIAC_EPARSE; /* truncated: no input left, no progress */
            break;
        }
    }
    BZ2_bzDecompressEnd(&bs);
    if (rc == 0 && b->len > max_out)
        rc = CELERIAC_ETOOBIG;
    return rc;
}

int codec_decompress(const char *type, const void *in, size_t len, size_t max_out,
                     unsigned char **out, size_t *outlen)
{
    if (!type || !out || !outlen || (!in && len))
        return CELERIAC_EINVAL;
    *out = NULL;
    *outlen = 0;
    int zlib = !strcasecmp(type, "application/x-gzip") || !strcasecmp(type, "zlib") ||
               !strcasecmp(type, "gzip");
    int bz2 = !strcasecmp(type, "application/x-bz2") || !strcasecmp(type, "bzip2") ||
              !strcasecmp(type, "bz2");
    if (!zlib && !bz2)
        return CELERIAC_EUNSUPPORTED;
    struct capbuf b = {NULL, 0, 0, max_out < SIZE_MAX - 1 ? max_out + 1 : SIZE_MAX - 1};
    int rc = zlib ? inflate_capped(in, len, max_out, &b) : bunzip_capped(in, len, max_out, &b);
    if (rc < 0) {
        free(b.p);
        return rc;
    }
    if (!b.p && (rc = capbuf_grow(&b)) < 0) {
        free(b.p);
        return rc;
    }
    b.p[b.len] = 0;
    *out = b.p;
    *outlen = b.len;
    return 0;
}
