/* envelope.c - builds and opens kombu Redis envelopes for non-task messages;
 * task requests have their own decoder (task_message.c). */
#include "envelope.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "codec.h"
#include "value.h"

int envelope_encode(const celeriac_value *body, const celeriac_value *headers,
                    const celeriac_value *extra_properties, int delivery_mode,
                    const char *exchange, const char *routing_key, struct buf *out)
{
    char *json = NULL, *b64 = NULL, *env = NULL;
    size_t jlen = 0;
    int rc = CELERIAC_ENOMEM;
    celeriac_value *e = celeriac_value_new_object();
    celeriac_value *props = extra_properties ? celeriac_value_copy(extra_properties)
                                             : celeriac_value_new_object();
    celeriac_value *di = celeriac_value_new_object();
    if (!e || !props || !di || serializer_json.encode(body, &json, &jlen) < 0)
        goto out;
    b64 = codec_base64_encode(json, jlen, NULL);
    if (!b64)
        goto out;
    char tag[37];
    util_uuid4(tag);
    celeriac_value_set(di, "exchange", celeriac_value_new_string(exchange));
    celeriac_value_set(di, "routing_key", celeriac_value_new_string(routing_key));
    /* kombu's order: ..., delivery_mode, delivery_info, priority, body_encoding. */
    celeriac_value *priority = value_take(props, "priority");
    celeriac_value_set(props, "delivery_mode", celeriac_value_new_int(delivery_mode));
    celeriac_value_set(props, "delivery_info", di);
    di = NULL;
    celeriac_value_set(props, "priority", priority ? priority : celeriac_value_new_int(0));
    celeriac_value_set(props, "body_encoding", celeriac_value_new_string("base64"));
    celeriac_value_set(props, "delivery_tag", celeriac_value_new_string(tag));
    if (celeriac_value_set(e, "body", celeriac_value_new_string(b64)) < 0 ||
        celeriac_value_set(e, "content-encoding", celeriac_value_new_string("utf-8")) < 0 ||
        celeriac_value_set(e, "content-type", celeriac_value_new_string("application/json")) < 0 ||
        celeriac_value_set(e, "headers", headers ? celeriac_value_copy(headers)
                                                 : celeriac_value_new_object()) < 0 ||
        celeriac_value_set(e, "properties", props) < 0) {
        props = NULL;
        goto out;
    }
    props = NULL;
    env = celeriac_value_to_json(e);
    if (!env)
        goto out;
    rc = buf_puts(out, env);
out:
    free(json);
    free(b64);
    free(env);
    celeriac_value_free(e);
    celeriac_value_free(props);
    celeriac_value_free(di);
    return rc;
}

int envelope_decode(const char *text, size_t len, const struct decode_limits *lim,
                    celeriac_value **body, celeriac_value **headers, char *err, size_t errlen)
{
    celeriac_value *env = NULL;
    unsigned char *raw = NULL, *plain = NULL;
    size_t rawlen = 0, plainlen = 0;
    int rc;
    *body = NULL;
    *headers = NULL;
    if ((rc = serializer_json.decode(text, len, lim, &env, err, errlen)) < 0)
        return rc;
    rc = CELERIAC_EPARSE;
    if (celeriac_value_type(env) != CELERIAC_OBJECT) {
        snprintf(err, errlen, "envelope is not a JSON object");
        goto out;
    }
    const celeriac_value *h = celeriac_value_get(env, "headers");
    const celeriac_value *props = celeriac_value_get(env, "properties");
    size_t blen;
    const char *b = celeriac_value_string(celeriac_value_get(env, "body"), &blen);
    const char *ct = value_get_str(env, "content-type");
    const char *enc = value_get_str(props, "body_encoding");
    const char *comp = value_get_str(h, "compression");
    if (!b) {
        snprintf(err, errlen, "envelope has no string body");
        goto out;
    }
    if (enc && strcmp(enc, "base64") == 0) {
        if ((rc = codec_base64_decode(b, blen, lim->max_bytes, &raw, &rawlen)) < 0) {
            snprintf(err, errlen, "body is not valid base64");
            goto out;
        }
    } else {
        raw = malloc(blen + 1);
        if (!raw) {
            rc = CELERIAC_ENOMEM;
            goto out;
        }
        memcpy(raw, b, blen + 1);
        rawlen = blen;
    }
    if (comp) {
        if ((rc = codec_decompress(comp, raw, rawlen, lim->max_bytes, &plain, &plainlen)) < 0) {
            snprintf(err, errlen, "cannot decompress body (%s)", comp);
            goto out;
        }
        free(raw);
        raw = plain;
        rawlen = plainlen;
        plain = NULL;
    }
    const struct serializer *ser = NULL;
    if (serializer_for_content_type(ct ? ct : "application/json", &ser) != SERIALIZER_OK) {
        snprintf(err, errlen, "content type %s refused", ct ? ct : "(none)");
        rc = CELERIAC_ECONTENT;
        goto out;
    }
    if ((rc = ser->decode(raw, rawlen, lim, body, err, errlen)) < 0)
        goto out;
    *headers = h && celeriac_value_type(h) == CELERIAC_OBJECT ? celeriac_value_copy(h)
                                                              : celeriac_value_new_object();
    rc = *headers ? 0 : CELERIAC_ENOMEM;
out:
    if (rc < 0) {
        celeriac_value_free(*body);
        *body = NULL;
    }
    free(raw);
    free(plain);
    celeriac_value_free(env);
    return rc;
}
