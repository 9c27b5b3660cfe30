/* url.h - pure parser for Redis URLs as kombu and Celery accept them. */
#ifndef CELERIAC_URL_H
#define CELERIAC_URL_H

#include <stddef.h>

struct redis_url {
    char host[256];     /* empty for a unix socket */
    int port;           /* 6379 by default */
    char path[256];     /* unix socket path, or empty */
    int db;             /* database number (kombu's virtual host) */
    char username[128]; /* ACL user, or empty */
    char password[256]; /* or empty (percent-decoded) */
};

/* Parses redis://[[user]:password@]host[:port][/db][?db=N],
 * redis+socket:///path[?virtual_host=N], unix:///path[?db=N] and
 * socket:///path[?db=N]. rediss:// (TLS) is refused with CELERIAC_EUNSUPPORTED.
 * Other malformed input: CELERIAC_EINVAL with a reason in err. */
int url_parse_redis(const char *url, struct redis_url *out, char *err, size_t errlen);
/* The URL with the password masked, as Celery prints it: "redis://:**@host:port/0". */
void url_redact(const char *url, char *buf, size_t len);

#endif
