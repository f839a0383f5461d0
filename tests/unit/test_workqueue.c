/* Unit tests: lib/workqueue.c (client-go work queue semantics).
 *
 * Time-dependent tests use an injected clock and ks_workqueue_get_timeout(q,
 * 0, ...), so they do not depend on the machine's speed. Where threads must
 * reach a state, the test polls a condition with a deadline (poll_until);
 * no test sleeps a fixed time and hopes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <fcntl.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"
#include "workqueue.h"

#define MS 1000000LL /* ns */

/* ---- helpers ---- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static _Atomic int64_t fake_now;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return atomic_load(&fake_now);
}

static void fake_advance(int64_t ns)
{
    atomic_fetch_add(&fake_now, ns);
}

/* Call cond(arg) until it holds or deadline_ms passes; 1 if it held. Backs
 * off from yielding to 1 ms naps, so it does not spin a core. */
static int poll_until(int (*cond)(void *), void *arg, int64_t deadline_ms)
{
    int64_t end = mono_ns() + deadline_ms * MS;
    struct timespec nap = {0, 1000000};

    for (int i = 0;; i++) {
        if (cond(arg))
            return 1;
        if (mono_ns() > end)
            return 0;
        if (i < 100)
            sched_yield();
        else
            nanosleep(&nap, NULL);
    }
}

static ks_workqueue *make_queue(const char *name, int fake, int64_t base_ms, int64_t max_ms,
                                size_t max_keys)
{
    ks_workqueue *q = NULL;
    ks_workqueue_opts o = {.name = name,
                           .base_delay_ms = base_ms,
                           .max_delay_ms = max_ms,
                           .max_keys = max_keys,
                           .clock_ns = fake ? fake_clock : NULL};

    atomic_store(&fake_now, 1000 * MS);
    assert_int_equal(ks_workqueue_create(&o, &q), KS_OK);
    assert_non_null(q);
    return q;
}

/* get with timeout 0: the key handed out, or NULL when none is ready. */
static const char *try_get(ks_workqueue *q)
{
    const char *k = NULL;
    ks_status st = ks_workqueue_get_timeout(q, 0, &k);

    if (st == KS_ERR_TIMEOUT)
        return NULL;
    assert_int_equal(st, KS_OK);
    return k;
}

static ks_metric *counter(const char *name, const char *qname)
{
    char labels[128] = "";
    assert_int_equal(ks_metrics_label_append(labels, sizeof(labels), "name", qname), KS_OK);
    return ks_metrics_counter(name, NULL, labels);
}

static ks_metric *gauge(const char *name, const char *qname)
{
    char labels[128] = "";
    assert_int_equal(ks_metrics_label_append(labels, sizeof(labels), "name", qname), KS_OK);
    return ks_metrics_gauge(name, NULL, labels);
}

static ks_metric *histogram(const char *name, const char *qname)
{
    char labels[128] = "";
    assert_int_equal(ks_metrics_label_append(labels, sizeof(labels), "name", qname), KS_OK);
    return ks_metrics_histogram(name, NULL, labels, NULL, 0);
}

/* ---- create / arguments ---- */

static void test_create_rejects_bad_options(void **state)
{
    (void)state;
    ks_workqueue *q = (ks_workqueue *)0x1;
    ks_workqueue_opts o = {0};
    char longname[KS_WORKQUEUE_NAME_MAX + 2];

    assert_int_equal(ks_workqueue_create(NULL, &q), KS_ERR_INVALID);
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID); /* no name */
    o.name = "has space";
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID);
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    o.name = longname;
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID);
    o.name = "ok";
    o.base_delay_ms = 10;
    o.max_delay_ms = 5; /* max < base */
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID);
    o.base_delay_ms = -1;
    o.max_delay_ms = 0;
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID);
    o.base_delay_ms = 0;
    o.max_delay_ms = KS_WORKQUEUE_MAX_DELAY_MS + 1;
    assert_int_equal(ks_workqueue_create(&o, &q), KS_ERR_INVALID);
    assert_ptr_equal(q, (ks_workqueue *)0x1); /* outputs set only on success */

    ks_workqueue_destroy(NULL);
    ks_workqueue_stop(NULL);
    ks_workqueue_shutdown(NULL);

    q = make_queue("args", 0, 0, 0, 0);
    assert_int_equal(ks_workqueue_add(q, NULL), KS_ERR_INVALID);
    assert_int_equal(ks_workqueue_add(q, ""), KS_ERR_INVALID);
    {
        char big[KS_WORKQUEUE_KEY_MAX + 2];
        memset(big, 'k', sizeof(big) - 1);
        big[sizeof(big) - 1] = '\0';
        assert_int_equal(ks_workqueue_add(q, big), KS_ERR_TOO_LARGE);
        big[KS_WORKQUEUE_KEY_MAX] = '\0'; /* exactly the limit: fine */
        assert_int_equal(ks_workqueue_add(q, big), KS_OK);
    }
    assert_int_equal(ks_workqueue_add_after(q, "k", KS_WORKQUEUE_MAX_DELAY_MS + 1),
                     KS_ERR_INVALID);
    assert_int_equal(ks_workqueue_done(q, "never-got"), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_workqueue_num_requeues(q, "unknown"), 0);
    ks_workqueue_forget(q, "unknown");
    ks_workqueue_destroy(q); /* with a key still queued: freed */
}

/* ---- deduplication and the dirty set ---- */

static void test_dedup(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("dedup", 0, 0, 0, 0);
    ks_metric *adds = counter("ks_workqueue_adds_total", "dedup");
    ks_metric *depth = gauge("ks_workqueue_depth", "dedup");
    const char *k;

    for (int i = 0; i < 5; i++)
        assert_int_equal(ks_workqueue_add(q, "iam.kubesphere.io/users//alice"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "iam.kubesphere.io/users//bob"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "iam.kubesphere.io/users//alice"), KS_OK);
    assert_int_equal(ks_workqueue_len(q), 2);
    assert_true(ks_metric_value(adds) == 2.0);
    assert_true(ks_metric_value(depth) == 2.0);

    k = try_get(q); /* FIFO: alice first */
    assert_string_equal(k, "iam.kubesphere.io/users//alice");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "iam.kubesphere.io/users//bob");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_null(try_get(q)); /* processed once each */
    assert_true(ks_metric_value(depth) == 0.0);
    {
        ks_workqueue_stats s;
        ks_workqueue_stats_get(q, &s);
        assert_int_equal(s.keys, 0); /* nothing held after done */
    }
    ks_workqueue_destroy(q);
}

static void test_dirty_requeue_while_processing(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("dirty", 0, 0, 0, 0);
    ks_workqueue_stats s;
    const char *k;
    char copy[32];

    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "a");

    /* added twice while processing: not handed to anyone else meanwhile */
    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    assert_int_equal(ks_workqueue_len(q), 0);
    assert_null(try_get(q));
    ks_workqueue_stats_get(q, &s);
    assert_int_equal(s.processing, 1);
    assert_int_equal(s.keys, 1);

    /* done with a caller-owned copy of the key works as well as the pointer */
    snprintf(copy, sizeof(copy), "%s", k);
    assert_int_equal(ks_workqueue_done(q, copy), KS_OK);
    assert_int_equal(ks_workqueue_len(q), 1); /* re-queued once */
    k = try_get(q);
    assert_string_equal(k, "a");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_null(try_get(q));
    assert_int_equal(ks_workqueue_done(q, "a"), KS_ERR_NOT_FOUND); /* twice */
    ks_workqueue_destroy(q);
}

/* ---- many workers, many adds ---- */

#define NKEYS 32
#define NPRODUCERS 4
#define ADDS_PER_PRODUCER 20000
#define NWORKERS 8

typedef struct {
    ks_workqueue *q;
    _Atomic int in_progress[NKEYS];
    _Atomic long version[NKEYS]; /* bumped by a producer before each add */
    _Atomic long seen[NKEYS];    /* version a handler saw when it started */
    _Atomic long processed[NKEYS];
    _Atomic int overlaps;
    _Atomic int bad_keys;
} stress_ctx;

static int key_index(const char *key)
{
    int n = 0;

    if (strncmp(key, "key-", 4) != 0 || key[4] == '\0')
        return -1;
    for (const char *p = key + 4; *p; p++) {
        if (*p < '0' || *p > '9' || n > NKEYS)
            return -1;
        n = n * 10 + (*p - '0');
    }
    return n < NKEYS ? n : -1;
}

static ks_workqueue_result stress_handler(const char *key, void *arg)
{
    stress_ctx *c = arg;
    int i = key_index(key);

    if (i < 0) {
        atomic_fetch_add(&c->bad_keys, 1);
        return ks_workqueue_ok();
    }
    if (atomic_exchange(&c->in_progress[i], 1) != 0)
        atomic_fetch_add(&c->overlaps, 1); /* two workers on one key */
    atomic_store(&c->seen[i], atomic_load(&c->version[i]));
    sched_yield(); /* widen the window for an overlap */
    atomic_fetch_add(&c->processed[i], 1);
    atomic_store(&c->in_progress[i], 0);
    return ks_workqueue_ok();
}

static void *stress_producer(void *arg)
{
    stress_ctx *c = arg;
    char key[16];
    unsigned seed = (unsigned)(uintptr_t)pthread_self();

    for (int n = 0; n < ADDS_PER_PRODUCER; n++) {
        int i = (int)(rand_r(&seed) % NKEYS);
        snprintf(key, sizeof(key), "key-%d", i);
        atomic_fetch_add(&c->version[i], 1);
        if (ks_workqueue_add(c->q, key) != KS_OK)
            atomic_fetch_add(&c->bad_keys, 1);
        if (n % 4 == 0)
            sched_yield(); /* spread the adds over the workers' processing */
    }
    return NULL;
}

static int queue_idle(void *arg)
{
    ks_workqueue_stats s;
    ks_workqueue_stats_get(arg, &s);
    return s.queued == 0 && s.processing == 0 && s.waiting == 0;
}

static void test_never_two_workers_on_one_key(void **state)
{
    (void)state;
    stress_ctx *c = calloc(1, sizeof(*c));
    pthread_t prod[NPRODUCERS];
    long total = 0;

    assert_non_null(c);
    c->q = make_queue("stress", 0, 0, 0, 0);
    assert_int_equal(ks_workqueue_run(c->q, NWORKERS, stress_handler, c), KS_OK);
    assert_int_equal(ks_workqueue_run(c->q, 1, stress_handler, c), KS_ERR_CONFLICT);
    for (int i = 0; i < NPRODUCERS; i++)
        assert_int_equal(pthread_create(&prod[i], NULL, stress_producer, c), 0);
    for (int i = 0; i < NPRODUCERS; i++)
        pthread_join(prod[i], NULL);
    assert_true(poll_until(queue_idle, c->q, 30000));

    assert_int_equal(atomic_load(&c->overlaps), 0);
    assert_int_equal(atomic_load(&c->bad_keys), 0);
    for (int i = 0; i < NKEYS; i++) {
        /* no lost add: the last processing of every key started after its
         * last add, so it saw the final version */
        assert_int_equal(atomic_load(&c->seen[i]), atomic_load(&c->version[i]));
        assert_true(atomic_load(&c->processed[i]) >= 1);
        total += atomic_load(&c->processed[i]);
    }
    assert_true(total <= NPRODUCERS * ADDS_PER_PRODUCER);
    print_message("stress: %d adds, %ld processings (dedup)\n", NPRODUCERS * ADDS_PER_PRODUCER,
                  total);
    ks_workqueue_stop(c->q);
    ks_workqueue_destroy(c->q);
    free(c);
}

/* ---- rate limiting ---- */

/* Expect key to become ready exactly want_ms after now on the fake clock. */
static void expect_ready_after(ks_workqueue *q, const char *key, int64_t want_ms)
{
    const char *k;

    if (want_ms > 0) {
        fake_advance(want_ms * MS - 1);
        assert_null(try_get(q)); /* 1 ns early: not yet */
        fake_advance(1);
    }
    k = try_get(q);
    assert_non_null(k);
    assert_string_equal(k, key);
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
}

static void test_backoff_sequence(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("backoff", 1, 0, 0, 0); /* defaults: 5 ms .. 1000 s */
    ks_metric *retries = counter("ks_workqueue_retries_total", "backoff");
    int64_t want = 5;

    for (unsigned n = 0; n < 70; n++) {
        assert_int_equal(ks_workqueue_add_rate_limited(q, "users//alice"), KS_OK);
        assert_int_equal(ks_workqueue_num_requeues(q, "users//alice"), n + 1);
        assert_int_equal(ks_workqueue_len(q), 0); /* waiting, not queued */
        expect_ready_after(q, "users//alice", want);
        want = want * 2 > 1000000 ? 1000000 : want * 2;
    }
    assert_true(ks_metric_value(retries) == 70.0);

    /* the pure rule: 5 ms doubling, 1000 s cap, no overflow at any n */
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 0), 5);
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 1), 10);
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 17), 655360);
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 18), 1000000);
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 63), 1000000);
    assert_int_equal(ks_workqueue_backoff_ms(5, 1000000, 4000000000u), 1000000);
    assert_int_equal(ks_workqueue_backoff_ms(1, INT64_MAX, 62), INT64_MAX);
    assert_int_equal(ks_workqueue_backoff_ms(1, INT64_MAX, 61), 1LL << 61);
    ks_workqueue_destroy(q);
}

static void test_backoff_custom_and_forget(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("forget", 1, 2, 16, 0);
    static const int64_t want[] = {2, 4, 8, 16, 16, 16};

    for (size_t i = 0; i < sizeof(want) / sizeof(want[0]); i++) {
        assert_int_equal(ks_workqueue_add_rate_limited(q, "k"), KS_OK);
        expect_ready_after(q, "k", want[i]);
    }
    assert_int_equal(ks_workqueue_num_requeues(q, "k"), 6);
    /* other keys have their own count */
    assert_int_equal(ks_workqueue_num_requeues(q, "other"), 0);
    assert_int_equal(ks_workqueue_add_rate_limited(q, "other"), KS_OK);
    expect_ready_after(q, "other", 2);

    ks_workqueue_forget(q, "k");
    assert_int_equal(ks_workqueue_num_requeues(q, "k"), 0);
    assert_int_equal(ks_workqueue_add_rate_limited(q, "k"), KS_OK);
    expect_ready_after(q, "k", 2); /* base again */
    assert_int_equal(ks_workqueue_add_rate_limited(q, "k"), KS_OK);
    expect_ready_after(q, "k", 4);
    ks_workqueue_forget(q, "k");
    ks_workqueue_forget(q, "other");
    {
        ks_workqueue_stats s;
        ks_workqueue_stats_get(q, &s);
        assert_int_equal(s.keys, 0); /* forgotten idle keys are released */
    }
    ks_workqueue_destroy(q);
}

/* ---- delays ---- */

static void test_add_after_order(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("after", 1, 0, 0, 0);
    ks_workqueue_stats s;
    const char *k;

    assert_int_equal(ks_workqueue_add_after(q, "b", 20), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "a", 10), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "c", 10), KS_OK); /* tie with a: add order */
    assert_int_equal(ks_workqueue_add_after(q, "a", 30), KS_OK); /* later: keeps 10 */
    assert_int_equal(ks_workqueue_add_after(q, "d", 50), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "d", 5), KS_OK);  /* earlier: moves to 5 */
    ks_workqueue_stats_get(q, &s);
    assert_int_equal(s.waiting, 4);
    assert_int_equal(s.queued, 0);
    assert_null(try_get(q));

    fake_advance(5 * MS);
    k = try_get(q);
    assert_string_equal(k, "d");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    fake_advance(4 * MS); /* t = 9 */
    assert_null(try_get(q));
    fake_advance(11 * MS); /* t = 20: a, c and b are all ready; heap order */
    k = try_get(q);
    assert_string_equal(k, "a");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "c");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "b");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_null(try_get(q));

    /* delay <= 0 is a plain add; a queued key that also waits runs twice */
    assert_int_equal(ks_workqueue_add_after(q, "now", 0), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "now", -5), KS_OK);
    assert_int_equal(ks_workqueue_len(q), 1);
    assert_int_equal(ks_workqueue_add_after(q, "now", 1), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "now");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    fake_advance(MS);
    k = try_get(q);
    assert_string_equal(k, "now");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);

    /* a delayed add of a key being processed lands in the dirty set */
    assert_int_equal(ks_workqueue_add(q, "p"), KS_OK);
    k = try_get(q);
    assert_int_equal(ks_workqueue_add_after(q, "p", 1), KS_OK);
    fake_advance(MS);
    assert_null(try_get(q)); /* promoted, but p is still processing */
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "p");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    ks_workqueue_destroy(q);
}

/* Real time, blocking get: the earlier ready time comes out first and no key
 * comes out before its delay (lower bounds only: robust on a slow machine). */
static void test_add_after_real_time(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("after-rt", 0, 0, 0, 0);
    int64_t t0 = mono_ns();
    const char *k;

    assert_int_equal(ks_workqueue_add_after(q, "late", 120), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "early", 30), KS_OK);
    assert_int_equal(ks_workqueue_get(q, &k), KS_OK);
    assert_string_equal(k, "early");
    assert_true(mono_ns() - t0 >= 30 * MS);
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_int_equal(ks_workqueue_get(q, &k), KS_OK);
    assert_string_equal(k, "late");
    assert_true(mono_ns() - t0 >= 120 * MS);
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);

    /* a timed get on an empty queue times out, not before its deadline */
    t0 = mono_ns();
    assert_int_equal(ks_workqueue_get_timeout(q, 20, &k), KS_ERR_TIMEOUT);
    assert_true(mono_ns() - t0 >= 20 * MS);
    ks_workqueue_destroy(q);
}

/* A getter asleep until a far-away ready time wakes when add_after puts an
 * earlier one in front, and when a plain add arrives. */
typedef struct {
    ks_workqueue *q;
    char got[32];
    _Atomic int done;
} getter_ctx;

static void *one_get(void *arg)
{
    getter_ctx *g = arg;
    const char *k;

    if (ks_workqueue_get(g->q, &k) == KS_OK) {
        snprintf(g->got, sizeof(g->got), "%s", k);
        (void)ks_workqueue_done(g->q, k);
    } else {
        snprintf(g->got, sizeof(g->got), "<closed>");
    }
    atomic_store(&g->done, 1);
    return NULL;
}

static int getter_done(void *arg)
{
    return atomic_load(&((getter_ctx *)arg)->done);
}

static int one_getter_blocked(void *arg)
{
    ks_workqueue_stats s;
    ks_workqueue_stats_get(arg, &s);
    return s.getters == 1;
}

static void test_earlier_delay_wakes_sleeping_getter(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("wake", 0, 0, 0, 0);
    getter_ctx g = {.q = q};
    pthread_t t;

    assert_int_equal(ks_workqueue_add_after(q, "hour", 3600 * 1000), KS_OK);
    assert_int_equal(pthread_create(&t, NULL, one_get, &g), 0);
    assert_true(poll_until(one_getter_blocked, q, 5000));
    assert_int_equal(ks_workqueue_add_after(q, "soon", 10), KS_OK);
    assert_true(poll_until(getter_done, &g, 5000));
    pthread_join(t, NULL);
    assert_string_equal(g.got, "soon");
    ks_workqueue_destroy(q); /* "hour" is discarded */
}

/* ---- shutdown ---- */

#define NGETTERS 4

static int all_getters_blocked(void *arg)
{
    ks_workqueue_stats s;
    ks_workqueue_stats_get(arg, &s);
    return s.getters == NGETTERS;
}

static int all_getters_done(void *arg)
{
    getter_ctx *g = arg;
    for (int i = 0; i < NGETTERS; i++)
        if (!atomic_load(&g[i].done))
            return 0;
    return 1;
}

static void test_shutdown_wakes_waiters(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("shutdown", 0, 0, 0, 0);
    getter_ctx g[NGETTERS];
    pthread_t t[NGETTERS];
    const char *k;

    /* one waiter sleeps on a far delay, the others with no deadline at all */
    assert_int_equal(ks_workqueue_add_after(q, "far", 3600 * 1000), KS_OK);
    memset(g, 0, sizeof(g));
    for (int i = 0; i < NGETTERS; i++) {
        g[i].q = q;
        assert_int_equal(pthread_create(&t[i], NULL, one_get, &g[i]), 0);
    }
    assert_true(poll_until(all_getters_blocked, q, 5000));
    ks_workqueue_shutdown(q);
    assert_true(poll_until(all_getters_done, g, 5000));
    for (int i = 0; i < NGETTERS; i++) {
        pthread_join(t[i], NULL);
        assert_string_equal(g[i].got, "<closed>");
    }
    assert_int_equal(ks_workqueue_add(q, "x"), KS_ERR_CLOSED);
    assert_int_equal(ks_workqueue_add_after(q, "x", 5), KS_ERR_CLOSED);
    assert_int_equal(ks_workqueue_add_rate_limited(q, "x"), KS_ERR_CLOSED);
    assert_int_equal(ks_workqueue_get(q, &k), KS_ERR_CLOSED);
    assert_int_equal(ks_workqueue_run(q, 1, NULL, NULL), KS_ERR_INVALID);
    ks_workqueue_shutdown(q); /* idempotent */
    ks_workqueue_destroy(q);
}

static void test_shutdown_discards_queued(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("discard", 0, 0, 0, 0);
    ks_metric *depth = gauge("ks_workqueue_depth", "discard");
    ks_workqueue_stats s;
    const char *k;

    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "b"), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "c", 1000), KS_OK);
    assert_true(ks_metric_value(depth) == 2.0);
    ks_workqueue_shutdown(q);
    assert_int_equal(ks_workqueue_get_timeout(q, 0, &k), KS_ERR_CLOSED);
    ks_workqueue_stats_get(q, &s);
    assert_int_equal(s.queued, 0);
    assert_int_equal(s.waiting, 0);
    assert_int_equal(s.keys, 0);
    assert_int_equal(s.shut_down, 1);
    assert_true(ks_metric_value(depth) == 0.0);
    ks_workqueue_destroy(q);
}

typedef struct {
    ks_workqueue *q;
    int64_t timeout_ms;
    ks_status st;
    _Atomic int returned;
} drain_ctx;

static void *drainer(void *arg)
{
    drain_ctx *d = arg;
    d->st = ks_workqueue_shutdown_with_drain(d->q, d->timeout_ms);
    atomic_store(&d->returned, 1);
    return NULL;
}

static int is_shut_down(void *arg)
{
    ks_workqueue_stats s;
    ks_workqueue_stats_get(arg, &s);
    return s.shut_down;
}

static int drain_returned(void *arg)
{
    return atomic_load(&((drain_ctx *)arg)->returned);
}

static void test_drain_waits_for_in_flight(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("drain", 0, 0, 0, 0);
    drain_ctx d = {.q = q, .timeout_ms = -1};
    pthread_t t;
    const char *k1, *k2;

    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "b"), KS_OK);
    assert_int_equal(ks_workqueue_get(q, &k1), KS_OK);
    assert_int_equal(ks_workqueue_get(q, &k2), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK); /* dirty: discarded by shutdown */

    assert_int_equal(pthread_create(&t, NULL, drainer, &d), 0);
    assert_true(poll_until(is_shut_down, q, 5000));
    /* two keys in flight: the drain cannot have returned */
    assert_int_equal(atomic_load(&d.returned), 0);
    assert_int_equal(ks_workqueue_done(q, k1), KS_OK);
    assert_int_equal(atomic_load(&d.returned), 0); /* still one */
    assert_int_equal(ks_workqueue_len(q), 0);     /* "a" was not re-queued */
    assert_int_equal(ks_workqueue_done(q, k2), KS_OK);
    assert_true(poll_until(drain_returned, &d, 5000));
    pthread_join(t, NULL);
    assert_int_equal(d.st, KS_OK);
    ks_workqueue_destroy(q);
}

static void test_drain_timeout(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("drain-timeout", 0, 0, 0, 0);
    const char *k;
    int64_t t0;

    assert_int_equal(ks_workqueue_add(q, "stuck"), KS_OK);
    assert_int_equal(ks_workqueue_get(q, &k), KS_OK);
    t0 = mono_ns();
    assert_int_equal(ks_workqueue_shutdown_with_drain(q, 30), KS_ERR_TIMEOUT);
    assert_true(mono_ns() - t0 >= 30 * MS);
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_int_equal(ks_workqueue_shutdown_with_drain(q, 0), KS_OK);
    ks_workqueue_destroy(q);
}

/* ---- the cap on distinct keys ---- */

static void test_cap(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("cap", 1, 0, 0, 3);
    ks_metric *rejected = counter("ks_workqueue_rejected_total", "cap");
    int fds[2];
    char buf[4096];
    ssize_t n;
    const char *k;

    assert_int_equal(pipe(fds), 0);
    assert_int_equal(fcntl(fds[0], F_SETFL, O_NONBLOCK), 0);
    ks_log_init("unit", KS_LOG_INFO);
    ks_log_set_fd(fds[1]);

    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "b"), KS_OK);
    assert_int_equal(ks_workqueue_add_after(q, "c", 10), KS_OK); /* waiting keys count */
    assert_int_equal(ks_workqueue_add(q, "d"), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_workqueue_add_after(q, "d", 10), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_workqueue_add_rate_limited(q, "d"), KS_ERR_TOO_LARGE);
    assert_int_equal(ks_workqueue_num_requeues(q, "d"), 0);
    assert_int_equal(ks_workqueue_add(q, "a"), KS_OK); /* known keys still dedup */
    assert_true(ks_metric_value(rejected) == 3.0);

    ks_log_set_fd(2);
    n = read(fds[0], buf, sizeof(buf) - 1);
    assert_true(n > 0);
    buf[n] = '\0';
    assert_non_null(strstr(buf, "\"level\":\"warn\""));
    assert_non_null(strstr(buf, "workqueue cap: refused key 'd'"));
    close(fds[0]);
    close(fds[1]);

    /* a key processed and done is released, which makes room */
    k = try_get(q);
    assert_string_equal(k, "a");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    assert_int_equal(ks_workqueue_add(q, "d"), KS_OK);

    /* a key with a requeue count is held until forgotten */
    k = try_get(q);
    assert_string_equal(k, "b");
    assert_int_equal(ks_workqueue_add_rate_limited(q, "b"), KS_OK);
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    fake_advance(10 * MS); /* FIFO: d (queued), then b (5 ms) and c (10 ms) from the heap */
    k = try_get(q);
    assert_string_equal(k, "d");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "b");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    k = try_get(q);
    assert_string_equal(k, "c");
    assert_int_equal(ks_workqueue_done(q, k), KS_OK);
    {
        ks_workqueue_stats s;
        ks_workqueue_stats_get(q, &s);
        assert_int_equal(s.keys, 1); /* b: requeues = 1 */
    }
    ks_workqueue_forget(q, "b");
    {
        ks_workqueue_stats s;
        ks_workqueue_stats_get(q, &s);
        assert_int_equal(s.keys, 0);
    }
    ks_workqueue_destroy(q);
}

/* ---- the worker pool ---- */

typedef struct {
    ks_workqueue *q;
    _Atomic int retry_calls, after_calls, ok_calls;
    _Atomic unsigned requeues_seen_at_ok;
} pool_ctx;

static ks_workqueue_result pool_handler(const char *key, void *arg)
{
    pool_ctx *c = arg;

    if (strcmp(key, "retry") == 0) {
        if (atomic_fetch_add(&c->retry_calls, 1) < 2)
            return ks_workqueue_retry();
        atomic_store(&c->requeues_seen_at_ok, ks_workqueue_num_requeues(c->q, key));
        return ks_workqueue_ok();
    }
    if (strcmp(key, "after") == 0) {
        if (atomic_fetch_add(&c->after_calls, 1) == 0)
            return ks_workqueue_requeue_after(5);
        return ks_workqueue_ok();
    }
    atomic_fetch_add(&c->ok_calls, 1);
    return ks_workqueue_ok();
}

static int pool_finished(void *arg)
{
    pool_ctx *c = arg;
    return atomic_load(&c->retry_calls) == 3 && atomic_load(&c->after_calls) == 2 &&
           atomic_load(&c->ok_calls) == 1 && queue_idle(c->q);
}

static void test_pool_results(void **state)
{
    (void)state;
    pool_ctx c = {0};
    ks_metric *retries = counter("ks_workqueue_retries_total", "pool");
    ks_metric *adds = counter("ks_workqueue_adds_total", "pool");
    ks_metric *work = histogram("ks_workqueue_work_duration_seconds", "pool");
    ks_metric *waited = histogram("ks_workqueue_queue_duration_seconds", "pool");
    char *text;

    c.q = make_queue("pool", 0, 1, 10, 0);
    assert_int_equal(ks_workqueue_run(c.q, 0, pool_handler, &c), KS_ERR_INVALID);
    assert_int_equal(ks_workqueue_run(c.q, KS_WORKQUEUE_MAX_WORKERS + 1, pool_handler, &c),
                     KS_ERR_INVALID);
    assert_int_equal(ks_workqueue_run(c.q, 3, pool_handler, &c), KS_OK);
    assert_int_equal(ks_workqueue_add(c.q, "retry"), KS_OK);
    assert_int_equal(ks_workqueue_add(c.q, "after"), KS_OK);
    assert_int_equal(ks_workqueue_add(c.q, "plain"), KS_OK);
    assert_true(poll_until(pool_finished, &c, 10000));

    assert_int_equal(atomic_load(&c.requeues_seen_at_ok), 2); /* two retries before OK */
    assert_int_equal(ks_workqueue_num_requeues(c.q, "retry"), 0); /* OK forgot it */
    assert_int_equal(ks_workqueue_num_requeues(c.q, "after"), 0);
    assert_true(ks_metric_value(retries) == 2.0);
    assert_true(ks_metric_value(adds) == 6.0); /* 3 adds, 2 retries, 1 requeue-after */
    assert_true(ks_metric_value(work) == 6.0); /* six processings */
    assert_true(ks_metric_value(waited) == 6.0);

    text = ks_metrics_render(NULL);
    assert_non_null(text);
    assert_non_null(strstr(text, "ks_workqueue_depth{name=\"pool\"} 0"));
    assert_non_null(strstr(text, "ks_workqueue_retries_total{name=\"pool\"} 2"));
    assert_non_null(strstr(text, "ks_workqueue_work_duration_seconds_count{name=\"pool\"} 6"));
    free(text);

    ks_workqueue_stop(c.q);
    ks_workqueue_stop(c.q); /* idempotent */
    assert_int_equal(ks_workqueue_run(c.q, 1, pool_handler, &c), KS_ERR_CLOSED);
    ks_workqueue_destroy(c.q);
}

/* A pool blocked on an empty queue stops promptly; destroy stops a pool. */
static ks_workqueue_result never_called(const char *key, void *arg)
{
    (void)arg;
    fail_msg("handler called for %s", key);
    return ks_workqueue_ok();
}

static int getters_are(void *arg)
{
    ks_workqueue_stats s;
    ks_workqueue_stats_get(arg, &s);
    return s.getters == 4;
}

static void test_pool_stop_and_destroy(void **state)
{
    (void)state;
    ks_workqueue *q = make_queue("pool-stop", 0, 0, 0, 0);

    assert_int_equal(ks_workqueue_run(q, 4, never_called, NULL), KS_OK);
    assert_true(poll_until(getters_are, q, 5000));
    ks_workqueue_destroy(q); /* stops and joins */
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_create_rejects_bad_options),
        cmocka_unit_test(test_dedup),
        cmocka_unit_test(test_dirty_requeue_while_processing),
        cmocka_unit_test(test_never_two_workers_on_one_key),
        cmocka_unit_test(test_backoff_sequence),
        cmocka_unit_test(test_backoff_custom_and_forget),
        cmocka_unit_test(test_add_after_order),
        cmocka_unit_test(test_add_after_real_time),
        cmocka_unit_test(test_earlier_delay_wakes_sleeping_getter),
        cmocka_unit_test(test_shutdown_wakes_waiters),
        cmocka_unit_test(test_shutdown_discards_queued),
        cmocka_unit_test(test_drain_waits_for_in_flight),
        cmocka_unit_test(test_drain_timeout),
        cmocka_unit_test(test_cap),
        cmocka_unit_test(test_pool_results),
        cmocka_unit_test(test_pool_stop_and_destroy),
    };

    ks_log_init("unit", KS_LOG_WARN);
    return cmocka_run_group_tests(tests, NULL, NULL);
}
