/* events.h - Celery events (worker-* and task-*) published on the celeryev
 * fanout exchange; task events are buffered and sent as one task.multi list
 * per loop iteration, as Celery's own worker does. */
#ifndef CELERIAC_EVENTS_H
#define CELERIAC_EVENTS_H

#include <stddef.h>
#include "broker.h"
#include "celeriac.h"

struct events {
    struct broker *broker;   /* borrowed */
    const char *hostname;    /* borrowed: node name */
    unsigned long *clock;    /* borrowed: the worker's Lamport clock */
    int pid;                 /* main process id */
    int task_events;         /* task-* events enabled (-E or enable_events) */
    double freq;             /* heartbeat interval, seconds; 0 = no heartbeats */
    double next_heartbeat;   /* monotonic */
    celeriac_value *pending; /* owned ARRAY of buffered task events */
};

void events_init(struct events *e, struct broker *broker, const char *hostname,
                 unsigned long *clock, double freq, int task_events);
void events_clear(struct events *e);
/* Python's utcoffset(): hours west of UTC, floor-divided (UTC+2 -> -2). */
int events_utcoffset(void);
/* Buffers a task event. Takes ownership of fields (the type-specific members,
 * e.g. uuid, name, args); the common fields are added around them. Dropped
 * when task events are off. */
int events_task(struct events *e, const char *type, celeriac_value *fields);
/* 1 when events_task() would send a task event (so its fields are worth
 * building), 0 when it would drop it. */
int events_task_enabled(const struct events *e);
/* Queues a worker-online / worker-heartbeat / worker-offline event. */
int events_worker(struct events *e, const char *type, size_t active, unsigned long processed);
/* The heartbeat the `heartbeat` control command asks for (freq 5, sw_* only). */
int events_worker_wakeup(struct events *e);
/* Publishes what is buffered and queued, in one round trip. */
int events_flush(struct events *e);

#endif
