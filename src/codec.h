/* codec.h - byte-level decoders for message bodies: base64 and decompression
 * (zlib, bzip2). Pure functions, every output capped. */
#ifndef CELERIAC_CODEC_H
#define CELERIAC_CODEC_H

#include <stddef.h>

/* Decodes standard base64 (RFC 4648, '=' padding, whitespace/newlines
 * ignored, urlsafe alphabet accepted). *out: caller frees with free(), with a
 * NUL appended (not counted in *outlen). CELERIAC_EPARSE on bad input,
 * CELERIAC_ETOOBIG when the output would exceed max_out. */
int codec_base64_decode(const char *in, size_t len, size_t max_out, unsigned char **out,
                        size_t *outlen);
/* Encodes to standard base64 with padding; caller frees with free(). NULL on
 * out of memory. *outlen (may be NULL) excludes the NUL. */
char *codec_base64_encode(const void *in, size_t len, size_t *outlen);
/* Decompresses by kombu compression content type: "application/x-gzip" or
 * "zlib" (zlib stream), "application/x-bz2" or "bzip2". Output capped at
 * max_out (CELERIAC_ETOOBIG, so zip bombs stop early); CELERIAC_EUNSUPPORTED
 * for other types; CELERIAC_EPARSE for corrupt data. *out: caller frees with
 * free(), NUL appended. */
int codec_decompress(const char *type, const void *in, size_t len, size_t max_out,
                     unsigned char **out, size_t *outlen);

#endif
