/* main.c - celeriac's entry point: parse the command line, build the worker,
 * run it, exit with its status. Only this file calls exit(). */
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "http.h"
#include "log.h"
#include "status.h"
#include "worker.h"

static void usage(FILE *f)
{
    fprintf(f, "Usage: celeriac worker [options]   run a Celery-protocol worker\n"
               "       celeriac status (--pidfile F | --status-file F) [--max-age SECONDS]\n"
               "                                   exit 0 if that worker is alive and consuming\n"
               "       celeriac version            print the version\n"
               "       celeriac worker --help      list every option with its default\n");
}

/* Refuses to start over a live worker's pidfile, like Celery. */
static int write_pidfile(const char *path)
{
    FILE *f = fopen(path, "r");
    if (f) {
        long pid = 0;
        if (fscanf(f, "%ld", &pid) == 1 && pid > 0 && pid != getpid() &&
            (kill((pid_t)pid, 0) == 0 || errno == EPERM)) {
            fclose(f);
            fprintf(stderr, "celeriac: pidfile %s names a running process (%ld)\n", path, pid);
            return -1;
        }
        fclose(f);
    }
    f = fopen(path, "w");
    if (!f) {
        fprintf(stderr, "celeriac: cannot write pidfile %s: %s\n", path, strerror(errno));
        return -1;
    }
    fprintf(f, "%ld\n", (long)getpid());
    fclose(f);
    return 0;
}

int main(int argc, char **argv)
{
    if (argc < 2 || strcmp(argv[1], "-h") == 0 || strcmp(argv[1], "--help") == 0) {
        usage(argc < 2 ? stderr : stdout);
        exit(argc < 2 ? 64 : 0);
    }
    if (strcmp(argv[1], "version") == 0 || strcmp(argv[1], "--version") == 0) {
        printf("celeriac %s (Celery protocol 2/1, API %d)\n", CELERIAC_VERSION,
               CELERIAC_API_VERSION);
        exit(0);
    }
    if (strcmp(argv[1], "status") == 0)
        exit(status_main(argc, argv));
    if (strcmp(argv[1], "worker") != 0) {
        fprintf(stderr, "celeriac: unknown command '%s'\n", argv[1]);
        usage(stderr);
        exit(64);
    }

    struct config cfg;
    enum config_result cr = config_load(&cfg, argc - 1, argv + 1);
    if (cr != CONFIG_RUN) {
        config_free(&cfg);
        exit(cr == CONFIG_EXIT_OK ? 0 : 64);
    }
    log_set_level((enum log_level)log_level_parse(cfg.loglevel));
    if (log_open(cfg.logfile) < 0) {
        fprintf(stderr, "celeriac: cannot open log file %s: %s\n", cfg.logfile, strerror(errno));
        config_free(&cfg);
        exit(64);
    }
    if (cfg.pidfile && write_pidfile(cfg.pidfile) < 0) {
        config_free(&cfg);
        exit(64);
    }
    /* libcurl (and the TLS stack under it) initialises in a pool process on
     * its first http(s) fetch, not here: that keeps ~5 MiB of library pages
     * out of the main process. */
    int code = 70;
    struct worker *w = worker_new(&cfg);
    if (w) {
        code = worker_run(w);
        worker_free(w);
    } else {
        code = 64;
    }
    if (cfg.pidfile)
        unlink(cfg.pidfile);
    http_global_cleanup();
    config_free(&cfg);
    exit(code);
}
