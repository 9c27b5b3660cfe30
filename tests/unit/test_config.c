/* test_config.c - flags, env, config file, precedence, errors (exit 64). */
#include <stdlib.h>
#include <unistd.h>

#include "test.h"
#include "config.h"

static void clear_env(void)
{
    unsetenv("CELERY_BROKER_URL");
    unsetenv("REDIS_URL");
    unsetenv("CELERY_RESULT_BACKEND");
    unsetenv("CELERY_TASK_ACKS_LATE");
    unsetenv("CELERY_VISIBILITY_TIMEOUT");
    unsetenv("CELERIAC_CONFIG");
}

TEST(config_defaults)
{
    clear_env();
    struct config c;
    char *argv[] = {"worker", NULL};
    CHECK_EQ_INT(config_load(&c, 1, argv), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://localhost:6379/0");
    CHECK(c.result_backend == NULL);
    CHECK_EQ_INT(c.queues.len, 1);
    CHECK_STR(c.queues.items[0], "celery");
    CHECK_EQ_INT(c.prefetch_multiplier, 4);
    CHECK_EQ_INT(c.task_acks_late, 0);
    CHECK(c.visibility_timeout == 3600);
    CHECK_EQ_INT(c.result_expires, 86400);
    CHECK(c.concurrency >= 1);
    CHECK(strncmp(c.hostname, "celeriac@", 9) == 0);
    config_free(&c);
}

TEST(config_flags)
{
    clear_env();
    struct config c;
    char *argv[] = {"worker", "-b", "redis://h:1/2", "--result-backend=redis://h:1/3", "-Qa,b",
                    "-c", "3", "-n", "w1@%h", "--task-acks-late", "--visibility-timeout", "5",
                    "--task-alias", "x.y=process_document", "--task-alias", "p.q=examples.add",
                    "-E", "--prefetch-multiplier", "1", "-l", "DEBUG", NULL};
    CHECK_EQ_INT(config_load(&c, 21, argv), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://h:1/2");
    CHECK_STR(c.result_backend, "redis://h:1/3");
    CHECK_EQ_INT(c.queues.len, 2);
    CHECK_STR(c.queues.items[1], "b");
    CHECK_EQ_INT(c.concurrency, 3);
    CHECK(strncmp(c.hostname, "w1@", 3) == 0 && strchr(c.hostname, '%') == NULL);
    CHECK_EQ_INT(c.task_acks_late, 1);
    CHECK(c.visibility_timeout == 5);
    CHECK_EQ_INT(c.task_aliases.len, 2);
    CHECK_STR(c.task_aliases.items[1], "p.q=examples.add");
    CHECK_EQ_INT(c.task_events, 1);
    CHECK_EQ_INT(c.prefetch_multiplier, 1);
    config_free(&c);
}

TEST(config_env_and_fallback)
{
    clear_env();
    setenv("REDIS_URL", "redis://fallback:1/0", 1);
    struct config c;
    char *argv[] = {"worker", NULL};
    CHECK_EQ_INT(config_load(&c, 1, argv), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://fallback:1/0");
    config_free(&c);
    setenv("CELERY_BROKER_URL", "redis://primary:1/0", 1);
    setenv("CELERY_RESULT_BACKEND", "redis://primary:1/1", 1);
    setenv("CELERY_TASK_ACKS_LATE", "yes", 1);
    CHECK_EQ_INT(config_load(&c, 1, argv), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://primary:1/0");
    CHECK_STR(c.result_backend, "redis://primary:1/1");
    CHECK_EQ_INT(c.task_acks_late, 1);
    config_free(&c);
    /* A flag beats the environment. */
    char *argv2[] = {"worker", "-b", "redis://flag:1/0", "--no-task-acks-late", NULL};
    CHECK_EQ_INT(config_load(&c, 4, argv2), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://flag:1/0");
    CHECK_EQ_INT(c.task_acks_late, 0);
    config_free(&c);
    clear_env();
}

TEST(config_file)
{
    clear_env();
    char path[] = "/tmp/celeriac-test-config-XXXXXX";
    int fd = mkstemp(path);
    CHECK(fd >= 0);
    const char text[] = "# comment\nbroker_url = \"redis://file:1/0\"\ntask_acks_late = true\n"
                        "queues = q1, q2\nvisibility-timeout: 7\ntask_alias = a.b=c\n";
    CHECK(write(fd, text, sizeof text - 1) == (ssize_t)(sizeof text - 1));
    close(fd);
    setenv("CELERY_VISIBILITY_TIMEOUT", "9", 1);
    struct config c;
    char *argv[] = {"worker", "--config", path, NULL};
    CHECK_EQ_INT(config_load(&c, 3, argv), CONFIG_RUN);
    CHECK_STR(c.broker_url, "redis://file:1/0");
    CHECK_EQ_INT(c.task_acks_late, 1);
    CHECK_EQ_INT(c.queues.len, 2);
    CHECK_STR(c.queues.items[1], "q2");
    CHECK(c.visibility_timeout == 9); /* env beats file */
    CHECK_EQ_INT(c.task_aliases.len, 1);
    config_free(&c);
    unlink(path);
    clear_env();
}

TEST(config_errors)
{
    clear_env();
    struct config c;
    char *bad_flag[] = {"worker", "--bogus", NULL};
    CHECK_EQ_INT(config_load(&c, 2, bad_flag), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *bad_num[] = {"worker", "-c", "lots", NULL};
    CHECK_EQ_INT(config_load(&c, 3, bad_num), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *range[] = {"worker", "-c", "0", NULL};
    CHECK_EQ_INT(config_load(&c, 3, range), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *missing[] = {"worker", "-b", NULL};
    CHECK_EQ_INT(config_load(&c, 2, missing), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *alias[] = {"worker", "--task-alias", "nonsense", NULL};
    CHECK_EQ_INT(config_load(&c, 3, alias), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *level[] = {"worker", "-l", "loud", NULL};
    CHECK_EQ_INT(config_load(&c, 3, level), CONFIG_EXIT_USAGE);
    config_free(&c);
    char *file[] = {"worker", "--config", "/nonexistent/celeriac.conf", NULL};
    CHECK_EQ_INT(config_load(&c, 3, file), CONFIG_EXIT_USAGE);
    config_free(&c);
}

TEST(config_hostname_expansion)
{
    char *h = config_expand_hostname("worker1");
    CHECK_STR(h, "celeriac@worker1");
    free(h);
    h = config_expand_hostname("a@%%");
    CHECK_STR(h, "a@%");
    free(h);
    CHECK(config_expand_hostname("a@%q") == NULL);
}
