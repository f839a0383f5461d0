#include "status.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

static const char *const status_names[KS_STATUS_COUNT] = {
    [KS_OK] = "ok",
    [KS_ERR_NOMEM] = "out of memory",
    [KS_ERR_INVALID] = "invalid",
    [KS_ERR_TOO_LARGE] = "too large",
    [KS_ERR_NOT_FOUND] = "not found",
    [KS_ERR_CONFLICT] = "conflict",
    [KS_ERR_TIMEOUT] = "timeout",
    [KS_ERR_NO_RESPONDERS] = "no responders",
    [KS_ERR_UNAVAILABLE] = "unavailable",
    [KS_ERR_IO] = "i/o error",
    [KS_ERR_PROTOCOL] = "protocol error",
    [KS_ERR_DENIED] = "denied",
    [KS_ERR_CLOSED] = "closed",
    [KS_ERR_INTERNAL] = "internal error",
};

static _Thread_local char last_error[512];

const char *ks_status_name(ks_status s)
{
    if ((unsigned)s >= KS_STATUS_COUNT)
        return "unknown status";
    return status_names[s];
}

ks_status ks_status_raise(ks_status s, const char *file, const char *func, int line,
                          const char *fmt, ...)
{
    char msg[384];
    va_list ap;
    const char *base = strrchr(file, '/');

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(last_error, sizeof(last_error), "%s: %s (%s:%d %s)", ks_status_name(s), msg,
             base ? base + 1 : file, line, func);
    return s;
}

const char *ks_status_last(void)
{
    return last_error;
}

void ks_status_clear(void)
{
    last_error[0] = '\0';
}
