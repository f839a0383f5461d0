/* status.h: the one status type of libkscore and the services.
 *
 * Every fallible function returns ks_status. KS_OK is zero, so `if (s)` reads
 * as "if it failed". Where an error is first raised, KS_FAIL records the file,
 * function, line and a message in a thread-local slot; ks_status_last() reads
 * it back for logs (nats.c keeps the same in err.h). */
#ifndef KS_STATUS_H
#define KS_STATUS_H

typedef enum {
    KS_OK = 0,
    KS_ERR_NOMEM,          /* an allocation failed */
    KS_ERR_INVALID,        /* bad argument or malformed input */
    KS_ERR_TOO_LARGE,      /* input exceeded its size cap */
    KS_ERR_NOT_FOUND,      /* the object, key or route does not exist */
    KS_ERR_CONFLICT,       /* a write lost a race (HTTP 409, KV revision) */
    KS_ERR_TIMEOUT,        /* no answer within the deadline */
    KS_ERR_NO_RESPONDERS,  /* nobody listens on the subject */
    KS_ERR_UNAVAILABLE,    /* the peer (NATS, kube-apiserver) cannot be reached */
    KS_ERR_IO,             /* a file or socket operation failed */
    KS_ERR_PROTOCOL,       /* the peer answered something we cannot understand */
    KS_ERR_DENIED,         /* the peer refused (HTTP 401/403) */
    KS_ERR_CLOSED,         /* the object is shutting down */
    KS_ERR_INTERNAL,       /* a bug or a library failure we cannot classify */
    KS_STATUS_COUNT
} ks_status;

/* Stable lower-case name of a status, e.g. "timeout". Never NULL. */
const char *ks_status_name(ks_status s);

/* Record where an error was raised (thread-local, overwrites the previous one)
 * and return s, so a caller writes `return KS_FAIL(KS_ERR_INVALID, "...")`. */
ks_status ks_status_raise(ks_status s, const char *file, const char *func, int line,
                          const char *fmt, ...) __attribute__((format(printf, 5, 6)));
#define KS_FAIL(s, ...) ks_status_raise((s), __FILE__, __func__, __LINE__, __VA_ARGS__)

/* The message of the last error raised on this thread ("" if none), of the form
 * "message (file.c:123 func)". Valid until the next raise on this thread. */
const char *ks_status_last(void);

/* Forget the last error of this thread. */
void ks_status_clear(void);

#endif
