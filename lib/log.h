/* log.h: JSON-lines logging on stderr.
 *
 * One object per line: {"ts":"2026-11-27T14:00:00.123Z","level":"info",
 * "service":"iam","msg":"...","request_id":"..."}. The level is checked before
 * anything is formatted, so a disabled debug line costs one comparison.
 * Thread-safe: each line is written with a single write(2). */
#ifndef KS_LOG_H
#define KS_LOG_H

#include <stddef.h>

typedef enum { KS_LOG_DEBUG = 0, KS_LOG_INFO, KS_LOG_WARN, KS_LOG_ERROR } ks_log_level;

/* Set the service name and the minimum level. Call once, before threads start.
 * The service string must outlive logging (a literal is expected). */
void ks_log_init(const char *service, ks_log_level min_level);

/* Parse "debug", "info", "warn" or "error". Returns 0 on success, -1 otherwise. */
int ks_log_level_parse(const char *text, ks_log_level *out);

/* Redirect output to fd (default 2). For tests. */
void ks_log_set_fd(int fd);

/* The request id attached to lines logged from this thread; NULL clears it.
 * The string is copied (at most 63 bytes). */
void ks_log_set_request_id(const char *id);

/* 1 when a line at this level would be written. */
int ks_log_enabled(ks_log_level level);

void ks_log_write(ks_log_level level, const char *fmt, ...) __attribute__((format(printf, 2, 3)));

#define ks_log(level, ...) \
    do { if (ks_log_enabled(level)) ks_log_write((level), __VA_ARGS__); } while (0)
#define ks_debug(...) ks_log(KS_LOG_DEBUG, __VA_ARGS__)
#define ks_info(...)  ks_log(KS_LOG_INFO, __VA_ARGS__)
#define ks_warn(...)  ks_log(KS_LOG_WARN, __VA_ARGS__)
#define ks_error(...) ks_log(KS_LOG_ERROR, __VA_ARGS__)

/* Append s to out as the inside of a JSON string (quotes not included),
 * escaping as RFC 8259 requires; stops before overflowing. Returns the number
 * of bytes written, excluding the terminating NUL that is always written when
 * cap > 0. Shared with the metrics and admin code. */
size_t ks_json_escape(char *out, size_t cap, const char *s);

#endif
