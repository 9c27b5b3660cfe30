/* test_url.c - Redis URL forms kombu and Celery accept. */
#include "test.h"
#include "celeriac.h"
#include "url.h"

TEST(url_basic)
{
    struct redis_url u;
    char err[256];
    CHECK_EQ_INT(url_parse_redis("redis://127.0.0.1:6380/2", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "127.0.0.1");
    CHECK_EQ_INT(u.port, 6380);
    CHECK_EQ_INT(u.db, 2);
    CHECK_STR(u.password, "");
}

TEST(url_defaults)
{
    struct redis_url u;
    char err[256];
    CHECK_EQ_INT(url_parse_redis("redis://", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "localhost");
    CHECK_EQ_INT(u.port, 6379);
    CHECK_EQ_INT(u.db, 0);
    CHECK_EQ_INT(url_parse_redis("redis://example/", &u, err, sizeof err), 0);
    CHECK_EQ_INT(u.db, 0);
}

TEST(url_password_forms)
{
    struct redis_url u;
    char err[256];
    CHECK_EQ_INT(url_parse_redis("redis://:s%40cret@h:1/0", &u, err, sizeof err), 0);
    CHECK_STR(u.password, "s@cret");
    CHECK_STR(u.username, "");
    CHECK_STR(u.host, "h");
    CHECK_EQ_INT(url_parse_redis("redis://alice:pw@h/3", &u, err, sizeof err), 0);
    CHECK_STR(u.username, "alice");
    CHECK_STR(u.password, "pw");
    CHECK_EQ_INT(u.db, 3);
}

TEST(url_socket_forms)
{
    struct redis_url u;
    char err[256];
    CHECK_EQ_INT(url_parse_redis("redis+socket:///tmp/r.sock?virtual_host=4", &u, err, sizeof err),
                 0);
    CHECK_STR(u.path, "/tmp/r.sock");
    CHECK_EQ_INT(u.db, 4);
    CHECK_EQ_INT(url_parse_redis("unix:///run/redis.sock?db=1", &u, err, sizeof err), 0);
    CHECK_STR(u.path, "/run/redis.sock");
    CHECK_EQ_INT(u.db, 1);
    CHECK_EQ_INT(url_parse_redis("socket:///x.sock", &u, err, sizeof err), 0);
    CHECK_STR(u.path, "/x.sock");
}

TEST(url_ipv6)
{
    struct redis_url u;
    char err[256];
    CHECK_EQ_INT(url_parse_redis("redis://[::1]:7000/5", &u, err, sizeof err), 0);
    CHECK_STR(u.host, "::1");
    CHECK_EQ_INT(u.port, 7000);
    CHECK_EQ_INT(u.db, 5);
}

TEST(url_errors)
{
    struct redis_url u;
    char err[256];
    CHECK(url_parse_redis("rediss://h/0", &u, err, sizeof err) == CELERIAC_EUNSUPPORTED);
    CHECK(url_parse_redis("amqp://guest@h//", &u, err, sizeof err) == CELERIAC_EUNSUPPORTED);
    CHECK(url_parse_redis("redis://h:99999/0", &u, err, sizeof err) == CELERIAC_EINVAL);
    CHECK(url_parse_redis("redis://h:1/abc", &u, err, sizeof err) == CELERIAC_EINVAL);
    CHECK(url_parse_redis("localhost:6379", &u, err, sizeof err) == CELERIAC_EINVAL);
    CHECK(url_parse_redis("", &u, err, sizeof err) == CELERIAC_EINVAL);
    CHECK(url_parse_redis("redis+socket://relative", &u, err, sizeof err) == CELERIAC_EINVAL);
    CHECK(url_parse_redis("redis://[::1/0", &u, err, sizeof err) == CELERIAC_EINVAL);
}

TEST(url_redact)
{
    char buf[256];
    url_redact("redis://:secret@h:1/0", buf, sizeof buf);
    CHECK_STR(buf, "redis://:**@h:1/0");
    url_redact("redis://user:secret@h:1/0", buf, sizeof buf);
    CHECK_STR(buf, "redis://user:**@h:1/0");
    url_redact("redis://h:1/0", buf, sizeof buf);
    CHECK_STR(buf, "redis://h:1/0");
}
