/* workqueue.h: client-go's rate-limited work queue, for controllers.
 *
 * Keys are strings, typically "<group>/<resource>/<namespace>/<name>". The
 * queue guarantees, like client-go's workqueue.Type (docs/workqueue.md):
 *   - deduplication: a key that is queued and not yet handed out is queued
 *     once, however often it is added meanwhile;
 *   - one worker per key: a key handed out by get() is never handed out again
 *     until done(key); an add() in between marks it "dirty" and it is queued
 *     again at done(), so no add is ever lost;
 *   - delays: add_after() parks a key in a min-heap of ready times;
 *     add_rate_limited() parks it for base * 2^n (n = its requeue count,
 *     capped at max_delay_ms); forget() resets n;
 *   - FIFO among ready keys; equal ready times leave the heap in add order.
 *
 * Differences from client-go, on purpose: after shutdown get() returns
 * KS_ERR_CLOSED at once, and keys that were queued or waiting are discarded
 * (controllers are level-triggered; whoever leads next resyncs), and the
 * number of distinct keys is capped (max_keys).
 *
 * Threads: every function is thread-safe. No timer thread: threads blocked in
 * get() sleep until the earliest ready time, and add_after() wakes them when
 * it moves that time earlier.
 *
 * Metrics (lib/metrics.h), each with the label name="<opts.name>":
 *   ks_workqueue_depth                    gauge: keys ready for a worker
 *   ks_workqueue_adds_total               counter: adds that queued a key (an
 *                                         add of an already queued key is not counted)
 *   ks_workqueue_retries_total            counter: add_rate_limited() calls
 *   ks_workqueue_rejected_total           counter: adds refused by the max_keys cap
 *   ks_workqueue_queue_duration_seconds   histogram: ready -> handed out by get()
 *   ks_workqueue_work_duration_seconds    histogram: get() -> done()
 * Two queues of one process should not share a name (their series would). */
#ifndef KS_WORKQUEUE_H
#define KS_WORKQUEUE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

typedef struct ks_workqueue ks_workqueue;

#define KS_WORKQUEUE_NAME_MAX 63              /* bytes of opts.name */
#define KS_WORKQUEUE_KEY_MAX 1024             /* bytes of a key, NUL excluded */
#define KS_WORKQUEUE_DEFAULT_BASE_MS 5
#define KS_WORKQUEUE_DEFAULT_MAX_MS 1000000   /* 1000 s */
#define KS_WORKQUEUE_DEFAULT_MAX_KEYS 1000000
#define KS_WORKQUEUE_MAX_DELAY_MS 31536000000LL /* one year: the longest delay accepted */
#define KS_WORKQUEUE_MAX_WORKERS 256

typedef struct {
    const char *name;        /* required: 1..KS_WORKQUEUE_NAME_MAX bytes of [A-Za-z0-9_.-];
                                the metrics label and the log context; copied */
    int64_t base_delay_ms;   /* first rate-limited delay; 0 = 5 ms */
    int64_t max_delay_ms;    /* rate-limited delays stop doubling here; 0 = 1000 s.
                                Both at most KS_WORKQUEUE_MAX_DELAY_MS, base <= max */
    size_t max_keys;         /* distinct keys held at once; 0 = 1,000,000. A key is
                                held while queued, processing, waiting in the delay
                                heap, or while its requeue count is not zero */
    /* Optional time source for ready times (tests): monotonic nanoseconds.
     * Blocking waits still sleep in real time for the interval it reports, so
     * a test that moves a fake clock forward polls with a timeout of 0. The
     * metrics' durations use it too. NULL = CLOCK_MONOTONIC. */
    int64_t (*clock_ns)(void *arg);
    void *clock_arg;
} ks_workqueue_opts;

/* Create a queue. KS_ERR_INVALID for a missing or bad name or bad delays,
 * KS_ERR_NOMEM. *out is set only on success. */
ks_status ks_workqueue_create(const ks_workqueue_opts *opts, ks_workqueue **out)
    __attribute__((warn_unused_result));

/* Stop the worker pool if one runs (ks_workqueue_stop), shut down, free
 * everything. No other thread may be using the queue: keys handed out by get()
 * must be done and no thread may be blocked in get(). NULL is a no-op. */
void ks_workqueue_destroy(ks_workqueue *q);

/* ---- adding ---- */

/* Queue key (copied) unless it is already queued. If the key is being
 * processed it is queued again when the worker calls done(). Errors:
 * KS_ERR_INVALID (NULL or empty key), KS_ERR_TOO_LARGE (key longer than
 * KS_WORKQUEUE_KEY_MAX, or a new key while max_keys keys are held: logged and
 * counted), KS_ERR_CLOSED (shut down), KS_ERR_NOMEM. */
ks_status ks_workqueue_add(ks_workqueue *q, const char *key);

/* Add key once delay_ms has passed; delay_ms <= 0 is ks_workqueue_add. If the
 * key already waits in the delay heap, the earlier of the two ready times
 * wins. A waiting key is independent of a queued one: a key both queued now
 * and waiting is processed now and again when its delay ends. Errors as
 * ks_workqueue_add, plus KS_ERR_INVALID for delay_ms > KS_WORKQUEUE_MAX_DELAY_MS. */
ks_status ks_workqueue_add_after(ks_workqueue *q, const char *key, int64_t delay_ms);

/* Add key after its backoff: base * 2^n ms, at most max_delay_ms, where n is
 * the number of rate-limited adds since the last forget(); then n grows by
 * one. Errors as ks_workqueue_add (n does not change on error). */
ks_status ks_workqueue_add_rate_limited(ks_workqueue *q, const char *key);

/* Reset the requeue count of key (its backoff starts at base again). Call it
 * when the key was processed successfully. Unknown keys are ignored. */
void ks_workqueue_forget(ks_workqueue *q, const char *key);

/* Rate-limited adds of key since its last forget(); 0 for unknown keys. */
unsigned ks_workqueue_num_requeues(ks_workqueue *q, const char *key);

/* The backoff rule, pure: base_ms * 2^n capped at max_ms (no overflow for any
 * n). Exposed for tests and for logs. */
int64_t ks_workqueue_backoff_ms(int64_t base_ms, int64_t max_ms, unsigned n);

/* ---- processing ---- */

/* Block until a key is ready, then hand it out: *key points into the queue
 * and stays valid until ks_workqueue_done(q, *key) returns; call forget() and
 * the add functions for it before done(). KS_OK, or KS_ERR_CLOSED once the
 * queue is shut down (even if keys were queued: they are discarded). */
ks_status ks_workqueue_get(ks_workqueue *q, const char **key)
    __attribute__((warn_unused_result));

/* ks_workqueue_get with a deadline: timeout_ms 0 only looks (and moves keys
 * whose delay has passed into the queue), < 0 waits forever. KS_ERR_TIMEOUT
 * when nothing was ready in time. */
ks_status ks_workqueue_get_timeout(ks_workqueue *q, int64_t timeout_ms, const char **key)
    __attribute__((warn_unused_result));

/* Finish processing key. If it was added meanwhile (and the queue is not shut
 * down) it is queued again. KS_ERR_NOT_FOUND if key is not being processed.
 * key may be the pointer get() returned; it is invalid afterwards. */
ks_status ks_workqueue_done(ks_workqueue *q, const char *key);

/* ---- shutting down ---- */

/* Refuse further adds (KS_ERR_CLOSED), discard queued and waiting keys, wake
 * every thread blocked in get() (they return KS_ERR_CLOSED). Keys being
 * processed stay so until done(). Idempotent; the queue cannot restart. */
void ks_workqueue_shutdown(ks_workqueue *q);

/* ks_workqueue_shutdown, then wait until every key handed out has been done:
 * timeout_ms < 0 waits forever. KS_OK, or KS_ERR_TIMEOUT if keys were still
 * in flight at the deadline. Must not be called by a thread that holds a key. */
ks_status ks_workqueue_shutdown_with_drain(ks_workqueue *q, int64_t timeout_ms);

/* ---- worker pool ---- */

typedef enum {
    KS_WORKQUEUE_OK = 0,        /* done: forget(key) */
    KS_WORKQUEUE_RETRY,         /* failed: add_rate_limited(key) */
    KS_WORKQUEUE_REQUEUE_AFTER, /* done for now, look again later: forget(key),
                                   add_after(key, after_ms) */
} ks_workqueue_action;

typedef struct {
    ks_workqueue_action action;
    int64_t after_ms; /* KS_WORKQUEUE_REQUEUE_AFTER only */
} ks_workqueue_result;

static inline ks_workqueue_result ks_workqueue_ok(void)
{
    return (ks_workqueue_result){KS_WORKQUEUE_OK, 0};
}
static inline ks_workqueue_result ks_workqueue_retry(void)
{
    return (ks_workqueue_result){KS_WORKQUEUE_RETRY, 0};
}
static inline ks_workqueue_result ks_workqueue_requeue_after(int64_t ms)
{
    return (ks_workqueue_result){KS_WORKQUEUE_REQUEUE_AFTER, ms};
}

/* Process one key. key is valid during the call only. Runs on a pool thread,
 * never concurrently for one key; must not call ks_workqueue_done (the pool
 * does) nor ks_workqueue_stop. An unknown action is logged and retried. */
typedef ks_workqueue_result (*ks_workqueue_handler)(const char *key, void *arg);

/* Start nworkers (1..KS_WORKQUEUE_MAX_WORKERS) threads, each looping get,
 * handler, act on the result, done. arg must stay valid until
 * ks_workqueue_stop returns. KS_ERR_INVALID for bad arguments,
 * KS_ERR_CONFLICT if a pool already runs, KS_ERR_CLOSED if the queue is shut
 * down, KS_ERR_NOMEM, KS_ERR_INTERNAL if a thread could not start (the queue
 * is then shut down and the threads already started are joined). One pool
 * per queue. */
ks_status ks_workqueue_run(ks_workqueue *q, unsigned nworkers, ks_workqueue_handler handler,
                           void *arg) __attribute__((warn_unused_result));

/* Shut the queue down, wait for running handlers to return, join the pool's
 * threads. Without a pool it only shuts down. Idempotent; NULL is a no-op.
 * Must not be called from a handler. */
void ks_workqueue_stop(ks_workqueue *q);

/* ---- inspection ---- */

typedef struct {
    size_t queued;     /* keys ready for a worker (the depth) */
    size_t processing; /* keys handed out and not yet done */
    size_t waiting;    /* keys in the delay heap */
    size_t keys;       /* distinct keys held, counted against max_keys */
    size_t getters;    /* threads blocked in get */
    int shut_down;     /* 1 after shutdown */
} ks_workqueue_stats;

/* A consistent snapshot. q and out must not be NULL. */
void ks_workqueue_stats_get(ks_workqueue *q, ks_workqueue_stats *out);

/* Keys ready for a worker (stats.queued). */
size_t ks_workqueue_len(ks_workqueue *q);

#endif
