/* Unit tests: lib/ttlcache.c, the gateway's authorization decision cache
 * (docs/gateway-auth.md): TTLs, the capacity bound with LRU eviction, O(1)
 * clears by epoch (and answers computed before a clear never stored), size
 * caps, and concurrent use. Time comes from an injected clock, so nothing
 * sleeps. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "ttlcache.h"

static _Atomic int64_t fake_now = 1000000;

static int64_t fake_clock(void *arg)
{
    (void)arg;
    return atomic_load(&fake_now);
}

static ks_ttlcache *make(size_t capacity, size_t shards, int64_t max_ttl)
{
    ks_ttlcache_opts o = {.capacity = capacity, .shards = shards, .max_key = 64,
                          .max_value = 16, .max_ttl_ms = max_ttl, .clock = fake_clock};
    ks_ttlcache *c = NULL;

    assert_int_equal(ks_ttlcache_create(&o, &c), KS_OK);
    assert_non_null(c);
    return c;
}

static int put_s(ks_ttlcache *c, const char *k, const char *v, int64_t ttl)
{
    return ks_ttlcache_put(c, k, strlen(k), v, strlen(v) + 1, ttl, ks_ttlcache_epoch(c));
}

/* 1 on a hit whose value is want (NULL: expect a miss). */
static void expect(ks_ttlcache *c, const char *k, const char *want)
{
    char buf[16] = {0};
    size_t n = 0;
    int hit = ks_ttlcache_get(c, k, strlen(k), buf, sizeof(buf), &n);

    if (want == NULL) {
        assert_int_equal(hit, 0);
        return;
    }
    assert_int_equal(hit, 1);
    assert_int_equal(n, strlen(want) + 1);
    assert_string_equal(buf, want);
}

static void test_put_get_replace(void **state)
{
    ks_ttlcache *c = make(100, 4, 0);
    ks_ttlcache_stats st;

    (void)state;
    expect(c, "alice|get|users", NULL);
    assert_int_equal(put_s(c, "alice|get|users", "allow", 5000), KS_OK);
    expect(c, "alice|get|users", "allow");
    expect(c, "alice|get|user", NULL); /* a prefix is another key */
    assert_int_equal(put_s(c, "alice|get|users", "deny", 5000), KS_OK);
    expect(c, "alice|get|users", "deny");
    assert_int_equal(ks_ttlcache_size(c), 1);
    assert_int_equal(ks_ttlcache_remove(c, "alice|get|users", 15), 1);
    expect(c, "alice|get|users", NULL);
    assert_int_equal(ks_ttlcache_remove(c, "alice|get|users", 15), 0);
    ks_ttlcache_get_stats(c, &st);
    assert_int_equal(st.hits, 2);
    assert_int_equal(st.misses, 3);
    assert_int_equal(st.puts, 2);
    ks_ttlcache_destroy(c);
}

static void test_binary_keys(void **state)
{
    ks_ttlcache *c = make(10, 1, 0);
    const char a[] = {'a', 0, 'b'}, b[] = {'a', 0, 'c'};
    char v = 0;

    (void)state;
    assert_int_equal(ks_ttlcache_put(c, a, 3, "1", 1, 1000, ks_ttlcache_epoch(c)), KS_OK);
    assert_int_equal(ks_ttlcache_get(c, b, 3, &v, 1, NULL), 0);
    assert_int_equal(ks_ttlcache_get(c, a, 3, &v, 1, NULL), 1);
    assert_int_equal(v, '1');
    ks_ttlcache_destroy(c);
}

static void test_ttl_and_cap(void **state)
{
    ks_ttlcache *c = make(100, 4, 2000);
    ks_ttlcache_stats st;

    (void)state;
    assert_int_equal(put_s(c, "short", "x", 100), KS_OK);
    assert_int_equal(put_s(c, "long", "y", 60000), KS_OK); /* capped at 2000 */
    atomic_fetch_add(&fake_now, 99);
    expect(c, "short", "x");
    atomic_fetch_add(&fake_now, 1);
    expect(c, "short", NULL);                 /* deadline reached */
    expect(c, "long", "y");
    atomic_fetch_add(&fake_now, 1899);
    expect(c, "long", "y");
    atomic_fetch_add(&fake_now, 1);
    expect(c, "long", NULL);
    ks_ttlcache_get_stats(c, &st);
    assert_int_equal(st.expirations, 2);
    assert_int_equal(ks_ttlcache_size(c), 0);   /* expired entries were freed */
    assert_int_equal(put_s(c, "zero", "x", 0), KS_ERR_INVALID);
    assert_int_equal(put_s(c, "neg", "x", -5), KS_ERR_INVALID);
    ks_ttlcache_destroy(c);
}

static void test_clear_and_epochs(void **state)
{
    ks_ttlcache *c = make(100, 4, 0);
    uint64_t before;
    ks_ttlcache_stats st;

    (void)state;
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        assert_int_equal(put_s(c, k, "v", 10000), KS_OK);
    }
    /* An answer asked for before the clear, arriving after it. */
    before = ks_ttlcache_epoch(c);
    ks_ttlcache_clear(c);
    for (int i = 0; i < 20; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        expect(c, k, NULL);
    }
    assert_int_equal(ks_ttlcache_put(c, "late", 4, "v", 1, 10000, before), KS_ERR_CONFLICT);
    expect(c, "late", NULL);
    assert_int_equal(put_s(c, "fresh", "v", 10000), KS_OK);
    expect(c, "fresh", "v");
    ks_ttlcache_get_stats(c, &st);
    assert_int_equal(st.stale_puts, 1);
    assert_int_equal(st.clears, 1);
    assert_int_equal(st.expirations, 0); /* stale by epoch is not an expiry */
    ks_ttlcache_destroy(c);
}

static void test_lru_eviction(void **state)
{
    ks_ttlcache *c = make(3, 1, 0); /* one shard: a strict LRU of 3 */
    ks_ttlcache_stats st;

    (void)state;
    assert_int_equal(put_s(c, "a", "1", 10000), KS_OK);
    assert_int_equal(put_s(c, "b", "2", 10000), KS_OK);
    assert_int_equal(put_s(c, "c", "3", 10000), KS_OK);
    expect(c, "a", "1");                       /* a is now the most recent */
    assert_int_equal(put_s(c, "d", "4", 10000), KS_OK); /* evicts b */
    expect(c, "b", NULL);
    expect(c, "a", "1");
    expect(c, "c", "3");
    expect(c, "d", "4");
    assert_int_equal(ks_ttlcache_size(c), 3);
    ks_ttlcache_get_stats(c, &st);
    assert_int_equal(st.evictions, 1);
    ks_ttlcache_destroy(c);
}

static void test_bounded(void **state)
{
    ks_ttlcache *c = make(1000, 16, 0);

    (void)state;
    for (int i = 0; i < 20000; i++) {
        char k[32];
        snprintf(k, sizeof(k), "user-%d|get|pods", i);
        assert_int_equal(put_s(c, k, "v", 10000), KS_OK);
    }
    /* Each shard holds ceil(1000/16) = 63 at most. */
    assert_true(ks_ttlcache_size(c) <= 16 * 63);
    assert_true(ks_ttlcache_size(c) >= 900);
    /* The most recent survive. */
    expect(c, "user-19999|get|pods", "v");
    ks_ttlcache_destroy(c);
}

static void test_reclaim_after_clear(void **state)
{
    ks_ttlcache *c = make(64, 1, 0);

    (void)state;
    for (int i = 0; i < 64; i++) {
        char k[16];
        snprintf(k, sizeof(k), "k%d", i);
        assert_int_equal(put_s(c, k, "v", 10000), KS_OK);
    }
    ks_ttlcache_clear(c);
    /* Each put frees up to two stale entries from the tail, so memory held
     * by the old epoch drains as new answers arrive. */
    for (int i = 0; i < 32; i++) {
        char k[16];
        snprintf(k, sizeof(k), "n%d", i);
        assert_int_equal(put_s(c, k, "v", 10000), KS_OK);
    }
    assert_int_equal(ks_ttlcache_size(c), 32);
    ks_ttlcache_destroy(c);
}

static void test_limits_and_bad_options(void **state)
{
    ks_ttlcache *c = make(10, 1, 0);
    char big[100];
    ks_ttlcache_opts bad = {.capacity = 0};
    ks_ttlcache *none = NULL;

    (void)state;
    memset(big, 'x', sizeof(big));
    assert_int_equal(ks_ttlcache_put(c, big, 65, "v", 1, 100, ks_ttlcache_epoch(c)),
                     KS_ERR_TOO_LARGE);
    assert_int_equal(ks_ttlcache_put(c, "k", 1, big, 17, 100, ks_ttlcache_epoch(c)),
                     KS_ERR_TOO_LARGE);
    assert_int_equal(ks_ttlcache_put(c, "", 0, "v", 1, 100, ks_ttlcache_epoch(c)),
                     KS_ERR_INVALID);
    assert_int_equal(ks_ttlcache_get(c, big, 65, NULL, 0, NULL), 0);
    assert_int_equal(ks_ttlcache_create(&bad, &none), KS_ERR_INVALID);
    assert_null(none);
    bad.capacity = 10;
    bad.shards = 100000;
    assert_int_equal(ks_ttlcache_create(&bad, &none), KS_ERR_INVALID);
    assert_int_equal(ks_ttlcache_create(NULL, &none), KS_ERR_INVALID);
    ks_ttlcache_destroy(NULL);
    ks_ttlcache_destroy(c);
}

/* ---- concurrency: readers, writers and clears at once ---- */

typedef struct {
    ks_ttlcache *c;
    int id;
} worker_arg;

static void *worker(void *p)
{
    worker_arg *w = p;
    char k[32], v[16];

    for (int i = 0; i < 20000; i++) {
        snprintf(k, sizeof(k), "u%d|%d", w->id, i % 500);
        if (i % 3 == 0) {
            (void)ks_ttlcache_put(w->c, k, strlen(k), "allow", 6, 1000,
                                  ks_ttlcache_epoch(w->c));
        } else if (ks_ttlcache_get(w->c, k, strlen(k), v, sizeof(v), NULL)) {
            if (strcmp(v, "allow") != 0)
                return (void *)1;
        }
        if (w->id == 0 && i % 1000 == 0)
            ks_ttlcache_clear(w->c);
    }
    return NULL;
}

static void test_concurrent(void **state)
{
    ks_ttlcache_opts o = {.capacity = 800, .shards = 4};
    ks_ttlcache *c = NULL;
    pthread_t t[4];
    worker_arg a[4];

    (void)state;
    assert_int_equal(ks_ttlcache_create(&o, &c), KS_OK);
    for (int i = 0; i < 4; i++) {
        a[i].c = c;
        a[i].id = i;
        assert_int_equal(pthread_create(&t[i], NULL, worker, &a[i]), 0);
    }
    for (int i = 0; i < 4; i++) {
        void *rv = (void *)1;
        pthread_join(t[i], &rv);
        assert_null(rv);
    }
    assert_true(ks_ttlcache_size(c) <= 800);
    ks_ttlcache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_put_get_replace),
        cmocka_unit_test(test_binary_keys),
        cmocka_unit_test(test_ttl_and_cap),
        cmocka_unit_test(test_clear_and_epochs),
        cmocka_unit_test(test_lru_eviction),
        cmocka_unit_test(test_bounded),
        cmocka_unit_test(test_reclaim_after_clear),
        cmocka_unit_test(test_limits_and_bad_options),
        cmocka_unit_test(test_concurrent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
