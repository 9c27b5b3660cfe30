/* events.c - formats Celery events and hands them to the broker's fanout; it
 * does not decide when tasks change state (worker.c does). */
#include "events.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>

#include "envelope.h"
#include "util.h"

#define EXCHANGE "celeryev"
#define MAX_BATCH 100

void events_init(struct events *e, struct broker *broker, const char *hostname,
                 unsigned long *clock, double freq, int task_events)
{
    memset(e, 0, sizeof *e);
    e->broker = broker;
    e->hostname = hostname;
    e->clock = clock;
    e->pid = (int)getpid();
    e->freq = freq;
    e->task_events = task_events;
    e->pending = celeriac_value_new_array();
}

void events_clear(struct events *e)
{
    celeriac_value_free(e->pending);
    e->pending = NULL;
}

int events_utcoffset(void)
{
    time_t now = time(NULL);
    struct tm tm;
    localtime_r(&now, &tm);
    long west = -tm.tm_gmtoff;
    return (int)floor((double)west / 3600.0);
}

/* The common head of every event: hostname, utcoffset, pid, clock. */
static celeriac_value *event_head(struct events *e)
{
    celeriac_value *ev = celeriac_value_new_object();
    if (!ev)
        return NULL;
    ++*e->clock;
    celeriac_value_set(ev, "hostname", celeriac_value_new_string(e->hostname));
    celeriac_value_set(ev, "utcoffset", celeriac_value_new_int(events_utcoffset()));
    celeriac_value_set(ev, "pid", celeriac_value_new_int(e->pid));
    celeriac_value_set(ev, "clock", celeriac_value_new_int((int64_t)*e->clock));
    return ev;
}

static void event_tail(celeriac_value *ev, const char *type)
{
    celeriac_value_set(ev, "timestamp", celeriac_value_new_double(util_now()));
    celeriac_value_set(ev, "type", celeriac_value_new_string(type));
}

static int send_one(struct events *e, const celeriac_value *body, const char *routing_key)
{
    celeriac_value *headers = celeriac_value_new_object();
    struct buf env = {0};
    int rc = CELERIAC_ENOMEM;
    if (headers && celeriac_value_set(headers, "hostname",
                                      celeriac_value_new_string(e->hostname)) == 0 &&
        envelope_encode(body, headers, NULL, 1, EXCHANGE, routing_key, &env) == 0)
        rc = e->broker->ops->fanout(e->broker, EXCHANGE, routing_key, env.p, env.len);
    celeriac_value_free(headers);
    buf_free(&env);
    return rc;
}

int events_task_enabled(const struct events *e)
{
    return e->task_events && e->pending;
}

int events_task(struct events *e, const char *type, celeriac_value *fields)
{
    if (!events_task_enabled(e)) {
        celeriac_value_free(fields);
        return 0;
    }
    celeriac_value *ev = event_head(e);
    if (!ev) {
        celeriac_value_free(fields);
        return CELERIAC_ENOMEM;
    }
    for (size_t i = 0; fields && i < celeriac_value_len(fields); i++)
        celeriac_value_set(ev, celeriac_value_key_at(fields, i),
                           celeriac_value_copy(celeriac_value_at(fields, i)));
    celeriac_value_free(fields);
    event_tail(ev, type);
    int rc = celeriac_value_append(e->pending, ev);
    if (rc == 0 && celeriac_value_len(e->pending) >= MAX_BATCH)
        rc = events_flush(e);
    return rc;
}

static void add_sw(celeriac_value *ev)
{
    struct utsname u;
    celeriac_value_set(ev, "sw_ident", celeriac_value_new_string("celeriac"));
    celeriac_value_set(ev, "sw_ver", celeriac_value_new_string(CELERIAC_VERSION));
    celeriac_value_set(ev, "sw_sys",
                       celeriac_value_new_string(uname(&u) == 0 ? u.sysname : "Linux"));
}

int events_worker(struct events *e, const char *type, size_t active, unsigned long processed)
{
    celeriac_value *ev = event_head(e);
    if (!ev)
        return CELERIAC_ENOMEM;
    celeriac_value_set(ev, "freq", celeriac_value_new_double(e->freq > 0 ? e->freq : 2.0));
    celeriac_value_set(ev, "active", celeriac_value_new_int((int64_t)active));
    celeriac_value_set(ev, "processed", celeriac_value_new_int((int64_t)processed));
    double load[3] = {0, 0, 0};
    celeriac_value *la = celeriac_value_new_array();
    if (getloadavg(load, 3) < 0)
        load[0] = load[1] = load[2] = 0;
    for (int i = 0; i < 3; i++)
        celeriac_value_append(la, celeriac_value_new_double(ceil(load[i] * 100) / 100));
    celeriac_value_set(ev, "loadavg", la);
    add_sw(ev);
    event_tail(ev, type);
    char rk[64];
    snprintf(rk, sizeof rk, "%s", type);
    for (char *p = rk; *p; p++)
        if (*p == '-')
            *p = '.';
    int rc = send_one(e, ev, rk);
    celeriac_value_free(ev);
    return rc;
}

int events_worker_wakeup(struct events *e)
{
    celeriac_value *ev = event_head(e);
    if (!ev)
        return CELERIAC_ENOMEM;
    celeriac_value_set(ev, "freq", celeriac_value_new_double(5.0));
    add_sw(ev);
    event_tail(ev, "worker-heartbeat");
    int rc = send_one(e, ev, "worker.heartbeat");
    celeriac_value_free(ev);
    return rc;
}

int events_flush(struct events *e)
{
    int rc = 0;
    if (e->pending && celeriac_value_len(e->pending) > 0) {
        rc = send_one(e, e->pending, "task.multi");
        celeriac_value_free(e->pending);
        e->pending = celeriac_value_new_array();
    }
    int frc = e->broker->ops->flush(e->broker);
    return rc < 0 ? rc : frc;
}
