/* log.c - formats and writes log lines; it owns no policy about what is logged. */
#include "log.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "celeriac.h"

static enum log_level level = LOG_INFO;
static FILE *out;
static char process_name[64] = "MainProcess";

static const char *const level_names[] = {"DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"};

int log_level_parse(const char *s)
{
    for (int i = 0; i <= LOG_CRITICAL; i++)
        if (s && strcasecmp(s, level_names[i]) == 0)
            return i;
    if (s && strcasecmp(s, "warn") == 0)
        return LOG_WARNING;
    if (s && strcasecmp(s, "fatal") == 0)
        return LOG_CRITICAL;
    return -1;
}

void log_set_level(enum log_level l) { level = l; }
enum log_level log_get_level(void) { return level; }

int log_open(const char *path)
{
    if (!path || !*path)
        return 0;
    FILE *f = fopen(path, "a");
    if (!f)
        return CELERIAC_EIO;
    setvbuf(f, NULL, _IOLBF, 0);
    if (out && out != stderr)
        fclose(out);
    out = f;
    return 0;
}

void log_set_process(const char *name)
{
    snprintf(process_name, sizeof process_name, "%s", name);
}

void log_vmsg(enum log_level l, const char *fmt, va_list ap)
{
    if (l < level)
        return;
    FILE *f = out ? out : stderr;
    struct timeval tv;
    gettimeofday(&tv, NULL);
    struct tm tm;
    localtime_r(&tv.tv_sec, &tm);
    char when[32];
    strftime(when, sizeof when, "%Y-%m-%d %H:%M:%S", &tm);
    char line[8192];
    int n = snprintf(line, sizeof line, "[%s,%03d: %s/%s] ", when, (int)(tv.tv_usec / 1000),
                     level_names[l], process_name);
    if (n < 0)
        return;
    if ((size_t)n < sizeof line)
        vsnprintf(line + n, sizeof line - (size_t)n, fmt, ap);
    /* One write per line so lines from pool children do not interleave. */
    size_t len = strnlen(line, sizeof line - 2);
    line[len++] = '\n';
    int saved = errno;
    fflush(f);
    ssize_t w = write(fileno(f), line, len);
    (void)w;
    errno = saved;
}

void log_msg(enum log_level l, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    log_vmsg(l, fmt, ap);
    va_end(ap);
}
