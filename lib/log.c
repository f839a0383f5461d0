#include "log.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define LOG_LINE_MAX 4096

static const char *log_service = "kscore";
static ks_log_level log_min = KS_LOG_INFO;
static int log_fd = 2;
static _Thread_local char log_request_id[64];

static const char *const level_names[] = {"debug", "info", "warn", "error"};

void ks_log_init(const char *service, ks_log_level min_level)
{
    log_service = service;
    log_min = min_level;
}

int ks_log_level_parse(const char *text, ks_log_level *out)
{
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++) {
        if (strcmp(text, level_names[i]) == 0) {
            *out = (ks_log_level)i;
            return 0;
        }
    }
    return -1;
}

void ks_log_set_fd(int fd)
{
    log_fd = fd;
}

void ks_log_set_request_id(const char *id)
{
    if (id == NULL) {
        log_request_id[0] = '\0';
        return;
    }
    snprintf(log_request_id, sizeof(log_request_id), "%s", id);
}

int ks_log_enabled(ks_log_level level)
{
    return level >= log_min;
}

size_t ks_json_escape(char *out, size_t cap, const char *s)
{
    size_t n = 0;

    if (cap == 0)
        return 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        char esc[8];
        size_t len;

        if (c == '"' || c == '\\') {
            esc[0] = '\\'; esc[1] = (char)c; len = 2;
        } else if (c == '\n') {
            memcpy(esc, "\\n", 2); len = 2;
        } else if (c == '\r') {
            memcpy(esc, "\\r", 2); len = 2;
        } else if (c == '\t') {
            memcpy(esc, "\\t", 2); len = 2;
        } else if (c < 0x20 || c == 0x7f) {
            len = (size_t)snprintf(esc, sizeof(esc), "\\u%04x", c);
        } else {
            esc[0] = (char)c; len = 1;
        }
        if (n + len >= cap)
            break;
        memcpy(out + n, esc, len);
        n += len;
    }
    out[n] = '\0';
    return n;
}

void ks_log_write(ks_log_level level, const char *fmt, ...)
{
    char msg[LOG_LINE_MAX / 2];
    char esc[LOG_LINE_MAX / 2];
    char line[LOG_LINE_MAX];
    char ts[32];
    struct timeval tv;
    struct tm tm;
    va_list ap;
    int n;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    ks_json_escape(esc, sizeof(esc), msg);

    gettimeofday(&tv, NULL);
    gmtime_r(&tv.tv_sec, &tm);
    strftime(ts, sizeof(ts), "%Y-%m-%dT%H:%M:%S", &tm);

    if ((unsigned)level > KS_LOG_ERROR)
        level = KS_LOG_ERROR;
    n = snprintf(line, sizeof(line) - 1,
                 "{\"ts\":\"%s.%03ldZ\",\"level\":\"%s\",\"service\":\"%s\",\"msg\":\"%s\"",
                 ts, (long)(tv.tv_usec / 1000), level_names[level], log_service, esc);
    if (n < 0)
        return;
    if ((size_t)n >= sizeof(line) - 1)
        n = (int)sizeof(line) - 2;
    if (log_request_id[0] && (size_t)n < sizeof(line) - 1) {
        char rid[160];
        ks_json_escape(rid, sizeof(rid), log_request_id);
        n += snprintf(line + n, sizeof(line) - 1 - (size_t)n, ",\"request_id\":\"%s\"", rid);
        if ((size_t)n >= sizeof(line) - 1)
            n = (int)sizeof(line) - 2;
    }
    /* Keep the line valid JSON even when truncated: close it. */
    if ((size_t)n > sizeof(line) - 3)
        n = (int)sizeof(line) - 3;
    line[n++] = '}';
    line[n++] = '\n';
    if (write(log_fd, line, (size_t)n) < 0) {
        /* Nowhere left to report a failed log write. */
    }
}
