/* test_codec.c - unit tests for codec.c: base64 vectors, zlib/gzip/bzip2 round trips and output caps. */
#include <bzlib.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "celeriac.h"
#include "codec.h"
#include "test.h"

static void check_b64(const char *in, const char *want, size_t wantlen)
{
    unsigned char *out = NULL;
    size_t n = 0;
    int rc = codec_base64_decode(in, strlen(in), 1 << 20, &out, &n);
    CHECK_EQ_INT(rc, 0);
    CHECK_EQ_INT(n, wantlen);
    CHECK(out && memcmp(out, want, wantlen) == 0 && out[n] == 0);
    free(out);
}

static void check_b64_bad(const char *in, int want)
{
    unsigned char *out = (unsigned char *)"x";
    size_t n = 7;
    CHECK_EQ_INT(codec_base64_decode(in, strlen(in), 1 << 20, &out, &n), want);
    CHECK(out == NULL);
}

TEST(base64_rfc4648_vectors)
{
    check_b64("", "", 0);
    check_b64("Zg==", "f", 1);
    check_b64("Zm8=", "fo", 2);
    check_b64("Zm9v", "foo", 3);
    check_b64("Zm9vYg==", "foob", 4);
    check_b64("Zm9vYmE=", "fooba", 5);
    check_b64("Zm9vYmFy", "foobar", 6);
}

TEST(base64_lenient_forms)
{
    check_b64("Zm9vYg", "foob", 4);            /* padding optional */
    check_b64("Zm9v\r\nYmFy\n", "foobar", 6); /* whitespace ignored */
    check_b64(" Zm 9v YmE = ", "fooba", 5);
    check_b64("-_8=", "\xfb\xff", 2); /* urlsafe */
    check_b64("+/8=", "\xfb\xff", 2); /* standard */
}

TEST(base64_rejects)
{
    check_b64_bad("Zm9v!", CELERIAC_EPARSE);
    check_b64_bad("Z", CELERIAC_EPARSE);
    check_b64_bad("Zm9vY", CELERIAC_EPARSE);
    check_b64_bad("Zg===", CELERIAC_EPARSE);
    check_b64_bad("Zg=x", CELERIAC_EPARSE);
    check_b64_bad("Zm=9v", CELERIAC_EPARSE);
    check_b64_bad("Zm8==", CELERIAC_EPARSE);
    check_b64_bad("\xc3\xa9", CELERIAC_EPARSE);
    unsigned char *out;
    size_t n;
    CHECK_EQ_INT(codec_base64_decode("Zm9vYmFy", 8, 5, &out, &n), CELERIAC_ETOOBIG);
    CHECK_EQ_INT(codec_base64_decode("Zm9vYmFy", 8, 6, &out, &n), 0);
    free(out);
}

/* The plain rules, one character at a time: what the decoder must agree
 * with on any input (it takes four data characters at a time). */
static int ref_b64(const unsigned char *s, size_t len, unsigned char *o, size_t *n)
{
    size_t data = 0, pad = 0, w = 0;
    uint32_t acc = 0;
    int bits = 0;
    for (size_t i = 0; i < len; i++) {
        unsigned char c = s[i];
        int k = c >= 'A' && c <= 'Z'   ? c - 'A'
                : c >= 'a' && c <= 'z' ? c - 'a' + 26
                : c >= '0' && c <= '9' ? c - '0' + 52
                : c == '+' || c == '-' ? 62
                : c == '/' || c == '_' ? 63
                : c == '='             ? 65
                : (c >= 9 && c <= 13) || c == ' ' ? 64
                                                  : -1;
        if (k < 0 || (k < 64 && pad))
            return CELERIAC_EPARSE;
        if (k == 64)
            continue;
        if (k == 65) {
            pad++;
            continue;
        }
        data++;
        acc = acc << 6 | (uint32_t)k;
        bits += 6;
        if (bits >= 8) {
            bits -= 8;
            o[w++] = (unsigned char)(acc >> bits);
            acc &= (1u << bits) - 1;
        }
    }
    if (data % 4 == 1 || pad > 2 || (pad && (data + pad) % 4 != 0))
        return CELERIAC_EPARSE;
    *n = w;
    return 0;
}

TEST(base64_agrees_with_the_plain_rules)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/-_";
    unsigned seed = 12345;
    unsigned char in[96], want[96];
    for (int iter = 0; iter < 200000; iter++) {
        seed = seed * 1103515245u + 12345u;
        size_t len = (seed >> 16) % 40;
        int noise = (int)((seed >> 8) % 4); /* 0: clean data, else a few odd bytes */
        for (size_t i = 0; i < len; i++) {
            seed = seed * 1103515245u + 12345u;
            unsigned r = seed >> 16;
            in[i] = (unsigned char)alphabet[r % 66];
            if (noise && r % 97 < (unsigned)noise * 3)
                in[i] = (unsigned char)"= \n=\t!\xc3\r"[r % 8];
        }
        size_t wn = 0, n = 0;
        unsigned char *out = NULL;
        int wrc = ref_b64(in, len, want, &wn);
        int rc = codec_base64_decode((const char *)in, len, 1 << 20, &out, &n);
        CHECK_EQ_INT(rc, wrc);
        if (rc == 0 && wrc == 0) {
            CHECK_EQ_INT(n, wn);
            CHECK(memcmp(out, want, n) == 0 && out[n] == 0);
        }
        free(out);
        if (rc != wrc)
            break;
    }
}

TEST(base64_encode_round_trip)
{
    size_t n;
    char *e = codec_base64_encode("foobar", 6, &n);
    CHECK_STR(e, "Zm9vYmFy");
    CHECK_EQ_INT(n, 8);
    free(e);
    e = codec_base64_encode("fo", 2, NULL);
    CHECK_STR(e, "Zm8=");
    free(e);
    e = codec_base64_encode("", 0, &n);
    CHECK_STR(e, "");
    free(e);
    unsigned char all[256];
    for (int i = 0; i < 256; i++)
        all[i] = (unsigned char)i;
    e = codec_base64_encode(all, sizeof all, &n);
    unsigned char *d;
    size_t dn;
    CHECK_EQ_INT(codec_base64_decode(e, n, 1000, &d, &dn), 0);
    CHECK(dn == 256 && memcmp(d, all, 256) == 0);
    free(d);
    free(e);
}

static unsigned char *zcompress(const void *in, size_t len, size_t *outlen)
{
    uLongf n = compressBound((uLong)len);
    unsigned char *out = malloc(n);
    CHECK(compress(out, &n, in, (uLong)len) == Z_OK);
    *outlen = n;
    return out;
}

TEST(zlib_round_trip)
{
    const char *text = "[[\"doc-11\"], {}, {\"callbacks\": null}]";
    size_t zn;
    unsigned char *z = zcompress(text, strlen(text), &zn);
    unsigned char *out;
    size_t n;
    CHECK_EQ_INT(codec_decompress("application/x-gzip", z, zn, 1 << 20, &out, &n), 0);
    CHECK_EQ_INT(n, strlen(text));
    CHECK_STR((char *)out, text);
    free(out);
    CHECK_EQ_INT(codec_decompress("zlib", z, zn, 1 << 20, &out, &n), 0);
    free(out);
    /* Exactly at the cap passes, one byte less fails. */
    CHECK_EQ_INT(codec_decompress("zlib", z, zn, strlen(text), &out, &n), 0);
    free(out);
    CHECK_EQ_INT(codec_decompress("zlib", z, zn, strlen(text) - 1, &out, &n), CELERIAC_ETOOBIG);
    /* Truncated and corrupt streams. */
    CHECK_EQ_INT(codec_decompress("zlib", z, zn - 3, 1 << 20, &out, &n), CELERIAC_EPARSE);
    z[zn / 2] ^= 0x55;
    int rc = codec_decompress("zlib", z, zn, 1 << 20, &out, &n);
    CHECK(rc == CELERIAC_EPARSE);
    CHECK_EQ_INT(codec_decompress("zlib", "garbage", 7, 1 << 20, &out, &n), CELERIAC_EPARSE);
    CHECK_EQ_INT(codec_decompress("zlib", "", 0, 1 << 20, &out, &n), CELERIAC_EPARSE);
    free(z);
}

TEST(gzip_framing_accepted)
{
    const char *text = "hello gzip";
    unsigned char gz[256];
    z_stream zs;
    memset(&zs, 0, sizeof zs);
    CHECK(deflateInit2(&zs, 6, Z_DEFLATED, 15 + 16, 8, Z_DEFAULT_STRATEGY) == Z_OK);
    zs.next_in = (Bytef *)(uintptr_t)text;
    zs.avail_in = (uInt)strlen(text);
    zs.next_out = gz;
    zs.avail_out = sizeof gz;
    CHECK(deflate(&zs, Z_FINISH) == Z_STREAM_END);
    size_t gzn = sizeof gz - zs.avail_out;
    deflateEnd(&zs);
    unsigned char *out;
    size_t n;
    CHECK_EQ_INT(codec_decompress("application/x-gzip", gz, gzn, 100, &out, &n), 0);
    CHECK_STR((char *)out, text);
    free(out);
}

TEST(zip_bomb_capped)
{
    size_t big = 64u << 20; /* 64 MiB of zeros compresses to ~64 KiB */
    unsigned char *zeros = calloc(1, big);
    size_t zn;
    unsigned char *z = zcompress(zeros, big, &zn);
    free(zeros);
    CHECK(zn < 200000);
    unsigned char *out = NULL;
    size_t n;
    CHECK_EQ_INT(codec_decompress("application/x-gzip", z, zn, 1 << 20, &out, &n),
                 CELERIAC_ETOOBIG);
    CHECK(out == NULL);
    free(z);
}

TEST(bzip2_round_trip_and_cap)
{
    char text[4096];
    for (size_t i = 0; i < sizeof text; i++)
        text[i] = (char)('a' + i % 7);
    char bz[8192];
    unsigned bzn = sizeof bz;
    CHECK(BZ2_bzBuffToBuffCompress(bz, &bzn, text, sizeof text, 9, 0, 0) == BZ_OK);
    unsigned char *out;
    size_t n;
    CHECK_EQ_INT(codec_decompress("application/x-bz2", bz, bzn, 1 << 20, &out, &n), 0);
    CHECK(n == sizeof text && memcmp(out, text, n) == 0);
    free(out);
    CHECK_EQ_INT(codec_decompress("bzip2", bz, bzn, sizeof text, &out, &n), 0);
    free(out);
    CHECK_EQ_INT(codec_decompress("bzip2", bz, bzn, 100, &out, &n), CELERIAC_ETOOBIG);
    CHECK_EQ_INT(codec_decompress("bzip2", bz, bzn / 2, 1 << 20, &out, &n), CELERIAC_EPARSE);
    CHECK_EQ_INT(codec_decompress("bzip2", "BZh9junk", 8, 1 << 20, &out, &n), CELERIAC_EPARSE);
    CHECK_EQ_INT(codec_decompress("bzip2", "", 0, 1 << 20, &out, &n), CELERIAC_EPARSE);
}

TEST(unknown_compression)
{
    unsigned char *out;
    size_t n;
    CHECK_EQ_INT(codec_decompress("application/x-lzma", "x", 1, 10, &out, &n),
                 CELERIAC_EUNSUPPORTED);
    CHECK_EQ_INT(codec_decompress("application/zstd", "x", 1, 10, &out, &n),
                 CELERIAC_EUNSUPPORTED);
    CHECK_EQ_INT(codec_decompress("application/x-brotli", "x", 1, 10, &out, &n),
                 CELERIAC_EUNSUPPORTED);
}
