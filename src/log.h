/* log.h - the worker's log: Celery-like lines to stderr or --logfile. */
#ifndef CELERIAC_LOG_H
#define CELERIAC_LOG_H

#include <stdarg.h>

enum log_level { LOG_DEBUG = 0, LOG_INFO, LOG_WARNING, LOG_ERROR, LOG_CRITICAL };

/* Parses "debug|info|warning|error|critical" (any case). -1 if unknown. */
int log_level_parse(const char *s);
void log_set_level(enum log_level l);
enum log_level log_get_level(void);
/* Opens path for appending (NULL = stderr). CELERIAC_EIO on failure. */
int log_open(const char *path);
/* Name of this process in log lines: "MainProcess", "ForkPoolWorker-3". */
void log_set_process(const char *name);
/* Reopens the log file (after fork the fd is shared, which is fine). */
void log_msg(enum log_level l, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
void log_vmsg(enum log_level l, const char *fmt, va_list ap);

#define log_debug(...) log_msg(LOG_DEBUG, __VA_ARGS__)
#define log_info(...) log_msg(LOG_INFO, __VA_ARGS__)
#define log_warning(...) log_msg(LOG_WARNING, __VA_ARGS__)
#define log_error(...) log_msg(LOG_ERROR, __VA_ARGS__)

#endif
