/* status.c - the status file format: written by the worker, read by
 * `celeriac status`; it knows nothing else about the worker. */
#include "status.h"

#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "util.h"

void status_write(const char *path, const char *state, const char *node, size_t active,
                  unsigned long processed)
{
    if (!path)
        return;
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp", path);
    FILE *f = fopen(tmp, "w");
    if (!f)
        return;
    fprintf(f, "pid=%ld\nstate=%s\nupdated=%.3f\nnode=%s\nactive=%zu\nprocessed=%lu\n",
            (long)getpid(), state, util_now(), node, active, processed);
    if (fclose(f) == 0)
        rename(tmp, path);
}

/* `celeriac status`: a liveness probe that reads the status file the worker
 * rewrites every second; no broker round trip. 0 healthy, 1 not, 64 usage. */
int status_main(int argc, char **argv)
{
    const char *pidfile = NULL, *status = NULL;
    double max_age = 10;
    for (int i = 2; i < argc; i++) {
        if (strcmp(argv[i], "--pidfile") == 0 && i + 1 < argc)
            pidfile = argv[++i];
        else if (strcmp(argv[i], "--status-file") == 0 && i + 1 < argc)
            status = argv[++i];
        else if (strcmp(argv[i], "--max-age") == 0 && i + 1 < argc)
            max_age = strtod(argv[++i], NULL);
        else {
            fprintf(stderr, "celeriac status: unknown option '%s'\n", argv[i]);
            return 64;
        }
    }
    char path[4200];
    if (!status && pidfile) {
        snprintf(path, sizeof path, "%s.status", pidfile);
        status = path;
    }
    if (!status) {
        fprintf(stderr, "celeriac status: give --pidfile or --status-file\n");
        return 64;
    }
    FILE *f = fopen(status, "r");
    if (!f) {
        printf("not running: no status file %s\n", status);
        return 1;
    }
    char line[512], state[64] = "", node[256] = "";
    long pid = 0;
    double updated = 0;
    while (fgets(line, sizeof line, f)) {
        sscanf(line, "pid=%ld", &pid);
        sscanf(line, "state=%63[^\n]", state);
        sscanf(line, "updated=%lf", &updated);
        sscanf(line, "node=%255[^\n]", node);
    }
    fclose(f);
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    double age = (double)ts.tv_sec + ts.tv_nsec / 1e9 - updated;
    if (pid <= 0 || (kill((pid_t)pid, 0) < 0 && errno != EPERM)) {
        printf("not running: process %ld is gone\n", pid);
        return 1;
    }
    if (age > max_age) {
        printf("unhealthy: %s (pid %ld) last reported %.0f s ago\n", node, pid, age);
        return 1;
    }
    if (strcmp(state, "running") != 0) {
        printf("not consuming: %s (pid %ld) is %s\n", node, pid, state);
        return 1;
    }
    printf("ok: %s (pid %ld) running\n", node, pid);
    return 0;
}


