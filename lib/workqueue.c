#include "workqueue.h"

#include <limits.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

#define WQ_NOT_WAITING SIZE_MAX
#define WQ_MIN_BUCKETS 64
/* One timed wait sleeps at most this long; the caller loops. Keeps the
 * timespec arithmetic far from overflow. */
#define WQ_MAX_WAIT_NS (3600LL * 1000000000LL)

/* One entry per distinct key. The key is held (and counted against
 * max_keys) while any of dirty, processing, waiting or requeues is set. */
typedef struct wq_item {
    struct wq_item *hnext; /* hash chain */
    struct wq_item *qnext; /* FIFO link while queued */
    uint64_t hash;
    int64_t ready_ns;      /* while in the heap */
    uint64_t seq;          /* heap tie-break: add order among equal ready times */
    int64_t enqueued_ns;   /* pushed to the FIFO (queue-duration metric) */
    int64_t started_ns;    /* handed out by get (work-duration metric) */
    size_t heap_idx;       /* WQ_NOT_WAITING unless in the heap */
    unsigned requeues;
    /* dirty: must be processed (again). Queued <=> dirty && !processing. */
    unsigned char dirty, processing;
    size_t keylen;
    char key[];
} wq_item;

struct ks_workqueue {
    char name[KS_WORKQUEUE_NAME_MAX + 1];
    int64_t base_ms, max_ms;
    size_t max_keys;
    int64_t (*clock_ns)(void *arg);
    void *clock_arg;
    uint64_t sip_k0, sip_k1;

    pthread_mutex_t mu;
    pthread_cond_t cond;       /* getters: a key is ready, the heap head moved earlier, shutdown */
    pthread_cond_t drain_cond; /* drainers: processing reached 0 */

    wq_item **buckets;
    size_t nbuckets, nkeys;
    wq_item *qhead, *qtail;
    size_t nqueued;
    wq_item **heap;
    size_t nheap, capheap;
    uint64_t heap_seq;
    size_t nprocessing, ngetters;
    int shut_down;
    uint64_t rejected;

    /* worker pool; run and stop are serialized by pool_mu */
    pthread_mutex_t pool_mu;
    pthread_t *workers;
    unsigned nworkers;
    ks_workqueue_handler handler;
    void *handler_arg;

    ks_metric *m_depth, *m_adds, *m_retries, *m_rejected, *m_queue_dur, *m_work_dur;
};

/* ---- time ---- */

static int64_t mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static int64_t wq_now(const ks_workqueue *q)
{
    return q->clock_ns ? q->clock_ns(q->clock_arg) : mono_ns();
}

/* Wait on c for at most rel_ns of real time (< 0: no limit). Spurious and
 * early wake-ups are fine: every caller re-checks its condition. */
static void wq_wait(ks_workqueue *q, pthread_cond_t *c, int64_t rel_ns)
{
    struct timespec ts;
    int64_t nsec;

    if (rel_ns < 0) {
        pthread_cond_wait(c, &q->mu);
        return;
    }
    if (rel_ns > WQ_MAX_WAIT_NS)
        rel_ns = WQ_MAX_WAIT_NS;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    nsec = ts.tv_nsec + rel_ns % 1000000000LL;
    ts.tv_sec += (time_t)(rel_ns / 1000000000LL + nsec / 1000000000LL);
    ts.tv_nsec = (long)(nsec % 1000000000LL);
    pthread_cond_timedwait(c, &q->mu, &ts);
}

/* ---- hashing: SipHash-2-4 with a per-queue random key, because keys carry
 * user-chosen names and a predictable hash would let one flood a chain ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                                  \
    do {                                                                                          \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                                 \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                    \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                    \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                                 \
    } while (0)

static uint64_t wq_siphash(uint64_t k0, uint64_t k1, const unsigned char *in, size_t len)
{
    uint64_t v0 = 0x736f6d6570736575ULL ^ k0, v1 = 0x646f72616e646f6dULL ^ k1;
    uint64_t v2 = 0x6c7967656e657261ULL ^ k0, v3 = 0x7465646279746573ULL ^ k1;
    uint64_t b = (uint64_t)len << 56, m;
    size_t end = len & ~(size_t)7;

    for (size_t i = 0; i < end; i += 8) {
        m = 0;
        for (size_t j = 0; j < 8; j++)
            m |= (uint64_t)in[i + j] << (8 * j);
        v3 ^= m;
        SIPROUND;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; j < (len & 7); j++)
        b |= (uint64_t)in[end + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

static uint64_t wq_hash(const ks_workqueue *q, const char *key, size_t len)
{
    return wq_siphash(q->sip_k0, q->sip_k1, (const unsigned char *)key, len);
}

/* ---- the key table ---- */

static wq_item *wq_find(const ks_workqueue *q, const char *key, size_t len, uint64_t h)
{
    for (wq_item *it = q->buckets[h & (q->nbuckets - 1)]; it; it = it->hnext)
        if (it->hash == h && it->keylen == len && memcmp(it->key, key, len) == 0)
            return it;
    return NULL;
}

/* Double the bucket array; on OOM keep the old one (chains just get longer). */
static void wq_grow(ks_workqueue *q)
{
    size_t n = q->nbuckets * 2;
    wq_item **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return;
    for (size_t i = 0; i < q->nbuckets; i++) {
        wq_item *it = q->buckets[i], *next;
        for (; it; it = next) {
            next = it->hnext;
            it->hnext = b[it->hash & (n - 1)];
            b[it->hash & (n - 1)] = it;
        }
    }
    free(q->buckets);
    q->buckets = b;
    q->nbuckets = n;
}

/* Find key or create its entry. *rejected is set when the max_keys cap
 * refused it (the caller logs outside the lock). */
static ks_status wq_lookup(ks_workqueue *q, const char *key, size_t len, wq_item **out,
                           uint64_t *rejected)
{
    ks_status st = KS_ERR_NOMEM;
    uint64_t h = wq_hash(q, key, len);
    wq_item *it = wq_find(q, key, len, h);

    if (it) {
        st = KS_OK;
        goto out;
    }
    if (q->nkeys >= q->max_keys) {
        q->rejected++;
        ks_metric_inc(q->m_rejected);
        *rejected = q->rejected;
        st = KS_FAIL(KS_ERR_TOO_LARGE, "workqueue %s holds max_keys=%zu keys", q->name,
                     q->max_keys);
        goto out;
    }
    it = calloc(1, sizeof(*it) + len + 1);
    if (it == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "workqueue %s: key entry", q->name);
        goto out;
    }
    memcpy(it->key, key, len);
    it->key[len] = '\0';
    it->keylen = len;
    it->hash = h;
    it->heap_idx = WQ_NOT_WAITING;
    if (q->nkeys + 1 > q->nbuckets)
        wq_grow(q);
    it->hnext = q->buckets[h & (q->nbuckets - 1)];
    q->buckets[h & (q->nbuckets - 1)] = it;
    q->nkeys++;
    st = KS_OK;
out:
    if (st == KS_OK)
        *out = it;
    return st;
}

/* Free the entry when nothing refers to it any more. */
static void wq_release(ks_workqueue *q, wq_item *it)
{
    wq_item **pp;

    if (it->dirty || it->processing || it->heap_idx != WQ_NOT_WAITING || it->requeues)
        return;
    for (pp = &q->buckets[it->hash & (q->nbuckets - 1)]; *pp != it; pp = &(*pp)->hnext) {
    }
    *pp = it->hnext;
    q->nkeys--;
    free(it);
}

/* ---- the FIFO of ready keys ---- */

static void wq_push(ks_workqueue *q, wq_item *it)
{
    it->qnext = NULL;
    if (q->qtail)
        q->qtail->qnext = it;
    else
        q->qhead = it;
    q->qtail = it;
    q->nqueued++;
    it->enqueued_ns = wq_now(q);
    ks_metric_inc(q->m_depth);
    pthread_cond_signal(&q->cond);
}

static wq_item *wq_pop(ks_workqueue *q)
{
    wq_item *it = q->qhead;

    q->qhead = it->qnext;
    if (q->qhead == NULL)
        q->qtail = NULL;
    it->qnext = NULL;
    q->nqueued--;
    ks_metric_dec(q->m_depth);
    return it;
}

/* client-go's Add on an existing entry: dedup, or mark dirty for done(). */
static void wq_mark(ks_workqueue *q, wq_item *it)
{
    if (it->dirty)
        return;
    it->dirty = 1;
    ks_metric_inc(q->m_adds);
    if (!it->processing)
        wq_push(q, it);
}

/* ---- the delay heap (min by ready_ns, then seq) ---- */

static int wq_before(const wq_item *a, const wq_item *b)
{
    return a->ready_ns < b->ready_ns || (a->ready_ns == b->ready_ns && a->seq < b->seq);
}

static void wq_heap_set(ks_workqueue *q, size_t i, wq_item *it)
{
    q->heap[i] = it;
    it->heap_idx = i;
}

static void wq_sift_up(ks_workqueue *q, size_t i)
{
    wq_item *it = q->heap[i];

    while (i > 0 && wq_before(it, q->heap[(i - 1) / 2])) {
        wq_heap_set(q, i, q->heap[(i - 1) / 2]);
        i = (i - 1) / 2;
    }
    wq_heap_set(q, i, it);
}

static void wq_sift_down(ks_workqueue *q, size_t i)
{
    wq_item *it = q->heap[i];

    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= q->nheap)
            break;
        if (c + 1 < q->nheap && wq_before(q->heap[c + 1], q->heap[c]))
            c++;
        if (!wq_before(q->heap[c], it))
            break;
        wq_heap_set(q, i, q->heap[c]);
        i = c;
    }
    wq_heap_set(q, i, it);
}

static wq_item *wq_heap_pop(ks_workqueue *q)
{
    wq_item *top = q->heap[0];

    q->nheap--;
    if (q->nheap > 0) {
        wq_heap_set(q, 0, q->heap[q->nheap]);
        wq_sift_down(q, 0);
    }
    top->heap_idx = WQ_NOT_WAITING;
    return top;
}

/* Park it until now + delay_ms, keeping an earlier ready time it already has.
 * Wakes every getter when the head moves earlier, so each recomputes its
 * deadline (without a timer thread, every getter sleeps until the head). */
static ks_status wq_schedule(ks_workqueue *q, wq_item *it, int64_t delay_ms)
{
    ks_status st = KS_ERR_NOMEM;
    int64_t ready = wq_now(q) + delay_ms * 1000000LL;

    if (it->heap_idx != WQ_NOT_WAITING) {
        if (ready < it->ready_ns) {
            it->ready_ns = ready;
            wq_sift_up(q, it->heap_idx);
        }
    } else {
        if (q->nheap == q->capheap) {
            size_t cap = q->capheap ? q->capheap * 2 : 64;
            wq_item **h = realloc(q->heap, cap * sizeof(*h));
            if (h == NULL) {
                st = KS_FAIL(KS_ERR_NOMEM, "workqueue %s: delay heap", q->name);
                goto out;
            }
            q->heap = h;
            q->capheap = cap;
        }
        it->ready_ns = ready;
        it->seq = q->heap_seq++;
        wq_heap_set(q, q->nheap, it);
        q->nheap++;
        wq_sift_up(q, q->nheap - 1);
    }
    if (it->heap_idx == 0)
        pthread_cond_broadcast(&q->cond);
    st = KS_OK;
out:
    return st;
}

/* Move every key whose ready time has come into the FIFO, in heap order. */
static void wq_promote(ks_workqueue *q, int64_t now)
{
    while (q->nheap > 0 && q->heap[0]->ready_ns <= now)
        wq_mark(q, wq_heap_pop(q));
}

/* ---- create / destroy ---- */

static int wq_name_ok(const char *s)
{
    size_t n = 0;

    if (s == NULL)
        return 0;
    for (; s[n]; n++) {
        char c = s[n];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '.' || c == '-'))
            return 0;
    }
    return n > 0 && n <= KS_WORKQUEUE_NAME_MAX;
}

ks_status ks_workqueue_create(const ks_workqueue_opts *opts, ks_workqueue **out)
{
    static const double dur_bounds[] = {0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05,
                                        0.1,    0.5,    1,     5,     10,   60};
    ks_status st = KS_ERR_INVALID;
    ks_workqueue *q = NULL;
    pthread_condattr_t ca;
    int ca_ok = 0, mu_ok = 0, pool_ok = 0, cond_ok = 0, drain_ok = 0;
    char labels[128] = "";
    uint64_t seed[2];

    if (opts == NULL || out == NULL || !wq_name_ok(opts->name)) {
        st = KS_FAIL(KS_ERR_INVALID, "workqueue: a name of 1-%d bytes [A-Za-z0-9_.-] is required",
                     KS_WORKQUEUE_NAME_MAX);
        goto out;
    }
    q = calloc(1, sizeof(*q));
    if (q == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "workqueue %s", opts->name);
        goto out;
    }
    memcpy(q->name, opts->name, strlen(opts->name) + 1);
    q->base_ms = opts->base_delay_ms ? opts->base_delay_ms : KS_WORKQUEUE_DEFAULT_BASE_MS;
    q->max_ms = opts->max_delay_ms ? opts->max_delay_ms : KS_WORKQUEUE_DEFAULT_MAX_MS;
    q->max_keys = opts->max_keys ? opts->max_keys : KS_WORKQUEUE_DEFAULT_MAX_KEYS;
    if (q->base_ms < 1 || q->max_ms < q->base_ms || q->max_ms > KS_WORKQUEUE_MAX_DELAY_MS) {
        st = KS_FAIL(KS_ERR_INVALID,
                     "workqueue %s: delays need 1 <= base (%lld ms) <= max (%lld ms) <= %lld ms",
                     q->name, (long long)q->base_ms, (long long)q->max_ms,
                     KS_WORKQUEUE_MAX_DELAY_MS);
        goto out;
    }
    q->clock_ns = opts->clock_ns;
    q->clock_arg = opts->clock_arg;
    if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
        /* not expected for 16 bytes on Linux; a weaker seed still hashes */
        seed[0] = (uint64_t)mono_ns() ^ 0x9e3779b97f4a7c15ULL;
        seed[1] = (uint64_t)(uintptr_t)q * 0xbf58476d1ce4e5b9ULL;
    }
    q->sip_k0 = seed[0];
    q->sip_k1 = seed[1];

    q->nbuckets = WQ_MIN_BUCKETS;
    q->buckets = calloc(q->nbuckets, sizeof(*q->buckets));
    if (q->buckets == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "workqueue %s", q->name);
        goto out;
    }
    /* pthread init cannot fail on Linux with these arguments; checked anyway */
#define WQ_TRY(call, flag)                                                                  \
    do {                                                                                    \
        if ((call) != 0) {                                                                  \
            st = KS_FAIL(KS_ERR_INTERNAL, "workqueue %s: %s failed", q->name, #call);      \
            goto out;                                                                       \
        }                                                                                   \
        flag = 1;                                                                           \
    } while (0)
    WQ_TRY(pthread_condattr_init(&ca), ca_ok);
    WQ_TRY(pthread_condattr_setclock(&ca, CLOCK_MONOTONIC), ca_ok);
    WQ_TRY(pthread_mutex_init(&q->mu, NULL), mu_ok);
    WQ_TRY(pthread_mutex_init(&q->pool_mu, NULL), pool_ok);
    WQ_TRY(pthread_cond_init(&q->cond, &ca), cond_ok);
    WQ_TRY(pthread_cond_init(&q->drain_cond, &ca), drain_ok);
#undef WQ_TRY

    st = ks_metrics_label_append(labels, sizeof(labels), "name", q->name);
    if (st != KS_OK)
        goto out; /* cannot happen: the name is short and valid */
    q->m_depth = ks_metrics_gauge("ks_workqueue_depth", "Keys ready for a worker", labels);
    q->m_adds = ks_metrics_counter("ks_workqueue_adds_total",
                                   "Adds that queued a key (adds of an already queued key "
                                   "are not counted)", labels);
    q->m_retries = ks_metrics_counter("ks_workqueue_retries_total",
                                      "Rate-limited re-adds of a key", labels);
    q->m_rejected = ks_metrics_counter("ks_workqueue_rejected_total",
                                       "Adds refused because the queue held max_keys keys",
                                       labels);
    q->m_queue_dur = ks_metrics_histogram("ks_workqueue_queue_duration_seconds",
                                          "Time a key waited ready in the queue before a "
                                          "worker took it", labels, dur_bounds,
                                          sizeof(dur_bounds) / sizeof(dur_bounds[0]));
    q->m_work_dur = ks_metrics_histogram("ks_workqueue_work_duration_seconds",
                                         "Time from handing a key out to its done()", labels,
                                         dur_bounds, sizeof(dur_bounds) / sizeof(dur_bounds[0]));
    st = KS_OK;
out:
    if (ca_ok)
        pthread_condattr_destroy(&ca);
    if (st == KS_OK) {
        *out = q;
    } else if (q) {
        if (drain_ok)
            pthread_cond_destroy(&q->drain_cond);
        if (cond_ok)
            pthread_cond_destroy(&q->cond);
        if (pool_ok)
            pthread_mutex_destroy(&q->pool_mu);
        if (mu_ok)
            pthread_mutex_destroy(&q->mu);
        free(q->buckets);
        free(q);
    }
    return st;
}

void ks_workqueue_destroy(ks_workqueue *q)
{
    if (q == NULL)
        return;
    ks_workqueue_stop(q); /* shuts down: the FIFO and the heap are empty now */
    for (size_t i = 0; i < q->nbuckets; i++) {
        wq_item *it = q->buckets[i], *next;
        for (; it; it = next) {
            next = it->hnext;
            free(it);
        }
    }
    free(q->buckets);
    free(q->heap);
    pthread_cond_destroy(&q->drain_cond);
    pthread_cond_destroy(&q->cond);
    pthread_mutex_destroy(&q->pool_mu);
    pthread_mutex_destroy(&q->mu);
    free(q);
}

/* ---- adding ---- */

static ks_status wq_check_key(const ks_workqueue *q, const char *key, size_t *len)
{
    size_t n;

    if (q == NULL || key == NULL || key[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "workqueue: NULL queue or empty key");
    n = strnlen(key, KS_WORKQUEUE_KEY_MAX + 1);
    if (n > KS_WORKQUEUE_KEY_MAX)
        return KS_FAIL(KS_ERR_TOO_LARGE, "workqueue %s: key longer than %d bytes", q->name,
                       KS_WORKQUEUE_KEY_MAX);
    *len = n;
    return KS_OK;
}

static void wq_log_rejected(const ks_workqueue *q, const char *key, uint64_t rejected)
{
    /* 1st, 2nd, 4th, 8th, ... refusal: visible without flooding the log */
    if (rejected && (rejected & (rejected - 1)) == 0)
        ks_warn("workqueue %s: refused key '%.200s': %zu distinct keys held (max_keys); "
                "%llu refusals so far", q->name, key, q->max_keys, (unsigned long long)rejected);
}

typedef enum { WQ_NOW, WQ_AFTER, WQ_RATE_LIMITED } wq_add_kind;

static ks_status wq_add(ks_workqueue *q, const char *key, wq_add_kind kind, int64_t delay_ms)
{
    ks_status st;
    size_t len = 0;
    uint64_t rejected = 0;
    wq_item *it = NULL;

    st = wq_check_key(q, key, &len);
    if (st != KS_OK)
        return st;
    if (kind == WQ_AFTER && delay_ms > KS_WORKQUEUE_MAX_DELAY_MS)
        return KS_FAIL(KS_ERR_INVALID, "workqueue %s: delay %lld ms above %lld", q->name,
                       (long long)delay_ms, KS_WORKQUEUE_MAX_DELAY_MS);
    if (kind == WQ_AFTER && delay_ms <= 0)
        kind = WQ_NOW;

    pthread_mutex_lock(&q->mu);
    if (q->shut_down) {
        st = KS_ERR_CLOSED;
        goto out;
    }
    st = wq_lookup(q, key, len, &it, &rejected);
    if (st != KS_OK)
        goto out;
    switch (kind) {
    case WQ_NOW:
        wq_mark(q, it);
        break;
    case WQ_AFTER:
        st = wq_schedule(q, it, delay_ms);
        break;
    case WQ_RATE_LIMITED:
        st = wq_schedule(q, it, ks_workqueue_backoff_ms(q->base_ms, q->max_ms, it->requeues));
        if (st == KS_OK) {
            if (it->requeues < UINT_MAX)
                it->requeues++;
            ks_metric_inc(q->m_retries);
        }
        break;
    }
    if (st != KS_OK)
        wq_release(q, it); /* a fresh entry that nothing refers to */
out:
    pthread_mutex_unlock(&q->mu);
    if (rejected)
        wq_log_rejected(q, key, rejected);
    return st;
}

ks_status ks_workqueue_add(ks_workqueue *q, const char *key)
{
    return wq_add(q, key, WQ_NOW, 0);
}

ks_status ks_workqueue_add_after(ks_workqueue *q, const char *key, int64_t delay_ms)
{
    return wq_add(q, key, WQ_AFTER, delay_ms);
}

ks_status ks_workqueue_add_rate_limited(ks_workqueue *q, const char *key)
{
    return wq_add(q, key, WQ_RATE_LIMITED, 0);
}

int64_t ks_workqueue_backoff_ms(int64_t base_ms, int64_t max_ms, unsigned n)
{
    if (base_ms <= 0 || max_ms <= 0)
        return 0;
    if (base_ms >= max_ms)
        return max_ms;
    if (n >= 62 || base_ms > (max_ms >> n))
        return max_ms;
    return base_ms << n;
}

void ks_workqueue_forget(ks_workqueue *q, const char *key)
{
    size_t len = 0;
    wq_item *it;

    if (wq_check_key(q, key, &len) != KS_OK)
        return;
    pthread_mutex_lock(&q->mu);
    it = wq_find(q, key, len, wq_hash(q, key, len));
    if (it) {
        it->requeues = 0;
        wq_release(q, it);
    }
    pthread_mutex_unlock(&q->mu);
}

unsigned ks_workqueue_num_requeues(ks_workqueue *q, const char *key)
{
    size_t len = 0;
    unsigned n = 0;
    wq_item *it;

    if (wq_check_key(q, key, &len) != KS_OK)
        return 0;
    pthread_mutex_lock(&q->mu);
    it = wq_find(q, key, len, wq_hash(q, key, len));
    if (it)
        n = it->requeues;
    pthread_mutex_unlock(&q->mu);
    return n;
}

/* ---- processing ---- */

ks_status ks_workqueue_get_timeout(ks_workqueue *q, int64_t timeout_ms, const char **key)
{
    ks_status st = KS_ERR_INVALID;
    wq_item *it = NULL;
    int64_t deadline = 0, now = 0, waited_ns = 0;

    if (q == NULL || key == NULL)
        return KS_FAIL(KS_ERR_INVALID, "workqueue: NULL argument to get");
    if (timeout_ms > 0)
        deadline = mono_ns() + (timeout_ms > KS_WORKQUEUE_MAX_DELAY_MS ? KS_WORKQUEUE_MAX_DELAY_MS
                                                                       : timeout_ms) *
                                   1000000LL;
    pthread_mutex_lock(&q->mu);
    for (;;) {
        int64_t rel = -1;

        if (q->shut_down) {
            st = KS_ERR_CLOSED;
            goto out;
        }
        now = wq_now(q);
        wq_promote(q, now);
        if (q->qhead)
            break;
        if (timeout_ms == 0) {
            st = KS_ERR_TIMEOUT;
            goto out;
        }
        if (timeout_ms > 0) {
            rel = deadline - mono_ns();
            if (rel <= 0) {
                st = KS_ERR_TIMEOUT;
                goto out;
            }
        }
        if (q->nheap > 0 && (rel < 0 || q->heap[0]->ready_ns - now < rel))
            rel = q->heap[0]->ready_ns - now; /* > 0: wq_promote took the ready ones */
        q->ngetters++;
        wq_wait(q, &q->cond, rel);
        q->ngetters--;
    }
    it = wq_pop(q);
    it->dirty = 0;
    it->processing = 1;
    it->started_ns = now;
    q->nprocessing++;
    waited_ns = now - it->enqueued_ns;
    if (q->qhead)
        pthread_cond_signal(&q->cond); /* more ready keys (e.g. several promoted at once) */
    *key = it->key;
    st = KS_OK;
out:
    pthread_mutex_unlock(&q->mu);
    if (st == KS_OK)
        ks_metric_observe(q->m_queue_dur, waited_ns > 0 ? (double)waited_ns / 1e9 : 0.0);
    return st;
}

ks_status ks_workqueue_get(ks_workqueue *q, const char **key)
{
    return ks_workqueue_get_timeout(q, -1, key);
}

ks_status ks_workqueue_done(ks_workqueue *q, const char *key)
{
    ks_status st = KS_ERR_NOT_FOUND;
    size_t len = 0;
    int64_t took = 0;
    wq_item *it;

    st = wq_check_key(q, key, &len);
    if (st != KS_OK)
        return st;
    pthread_mutex_lock(&q->mu);
    it = wq_find(q, key, len, wq_hash(q, key, len));
    if (it == NULL || !it->processing) {
        st = KS_FAIL(KS_ERR_NOT_FOUND, "workqueue %s: done for '%.200s', which is not processing",
                     q->name, key);
        goto out;
    }
    took = wq_now(q) - it->started_ns;
    it->processing = 0;
    q->nprocessing--;
    if (it->dirty) {
        if (q->shut_down)
            it->dirty = 0; /* discarded, as shutdown discards queued keys */
        else
            wq_push(q, it);
    }
    if (q->nprocessing == 0 && q->shut_down)
        pthread_cond_broadcast(&q->drain_cond);
    wq_release(q, it); /* key may point into it: not used below */
    st = KS_OK;
out:
    pthread_mutex_unlock(&q->mu);
    if (st == KS_OK)
        ks_metric_observe(q->m_work_dur, took > 0 ? (double)took / 1e9 : 0.0);
    return st;
}

/* ---- shutting down ---- */

void ks_workqueue_shutdown(ks_workqueue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->mu);
    if (!q->shut_down) {
        q->shut_down = 1;
        if (q->nqueued)
            ks_metric_add(q->m_depth, -(double)q->nqueued);
        q->qhead = q->qtail = NULL;
        q->nqueued = 0;
        q->nheap = 0;
        for (size_t i = 0; i < q->nbuckets; i++) {
            wq_item *it = q->buckets[i], *next;
            for (; it; it = next) {
                next = it->hnext;
                it->dirty = 0;
                it->qnext = NULL;
                it->heap_idx = WQ_NOT_WAITING;
                wq_release(q, it);
            }
        }
        pthread_cond_broadcast(&q->cond);
        pthread_cond_broadcast(&q->drain_cond);
    }
    pthread_mutex_unlock(&q->mu);
}

ks_status ks_workqueue_shutdown_with_drain(ks_workqueue *q, int64_t timeout_ms)
{
    ks_status st = KS_OK;
    int64_t deadline = 0;

    if (q == NULL)
        return KS_FAIL(KS_ERR_INVALID, "workqueue: NULL queue");
    ks_workqueue_shutdown(q);
    if (timeout_ms >= 0)
        deadline = mono_ns() + (timeout_ms > KS_WORKQUEUE_MAX_DELAY_MS ? KS_WORKQUEUE_MAX_DELAY_MS
                                                                       : timeout_ms) *
                                   1000000LL;
    pthread_mutex_lock(&q->mu);
    while (q->nprocessing > 0) {
        int64_t rel = -1;
        if (timeout_ms >= 0) {
            rel = deadline - mono_ns();
            if (rel <= 0) {
                st = KS_FAIL(KS_ERR_TIMEOUT, "workqueue %s: %zu keys still processing", q->name,
                             q->nprocessing);
                goto out;
            }
        }
        wq_wait(q, &q->drain_cond, rel);
    }
out:
    pthread_mutex_unlock(&q->mu);
    return st;
}

/* ---- worker pool ---- */

static void *wq_worker(void *arg)
{
    ks_workqueue *q = arg;
    const char *key;

    while (ks_workqueue_get(q, &key) == KS_OK) {
        ks_workqueue_result r = q->handler(key, q->handler_arg);
        switch (r.action) {
        case KS_WORKQUEUE_OK:
            ks_workqueue_forget(q, key);
            break;
        case KS_WORKQUEUE_REQUEUE_AFTER:
            ks_workqueue_forget(q, key);
            if (ks_workqueue_add_after(q, key, r.after_ms) == KS_ERR_INVALID)
                ks_error("workqueue %s: key '%.200s': requeue after %lld ms refused: %s", q->name,
                         key, (long long)r.after_ms, ks_status_last());
            break;
        case KS_WORKQUEUE_RETRY:
        default:
            if (r.action != KS_WORKQUEUE_RETRY)
                ks_error("workqueue %s: handler returned unknown action %d for '%.200s'; retrying",
                         q->name, (int)r.action, key);
            /* only KS_ERR_CLOSED can fail here: the key exists, so no cap */
            (void)ks_workqueue_add_rate_limited(q, key);
            break;
        }
        (void)ks_workqueue_done(q, key);
    }
    return NULL;
}

ks_status ks_workqueue_run(ks_workqueue *q, unsigned nworkers, ks_workqueue_handler handler,
                           void *arg)
{
    ks_status st = KS_ERR_INVALID;
    int locked = 0, shut = 0;
    char tname[16];

    if (q == NULL || handler == NULL || nworkers == 0 || nworkers > KS_WORKQUEUE_MAX_WORKERS) {
        st = KS_FAIL(KS_ERR_INVALID, "workqueue: run needs a queue, a handler and 1-%d workers",
                     KS_WORKQUEUE_MAX_WORKERS);
        goto out;
    }
    pthread_mutex_lock(&q->pool_mu);
    locked = 1;
    if (q->workers) {
        st = KS_FAIL(KS_ERR_CONFLICT, "workqueue %s: a worker pool already runs", q->name);
        goto out;
    }
    pthread_mutex_lock(&q->mu);
    shut = q->shut_down;
    pthread_mutex_unlock(&q->mu);
    if (shut) {
        st = KS_FAIL(KS_ERR_CLOSED, "workqueue %s is shut down", q->name);
        goto out;
    }
    q->workers = calloc(nworkers, sizeof(*q->workers));
    if (q->workers == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "workqueue %s: workers", q->name);
        goto out;
    }
    q->handler = handler;
    q->handler_arg = arg;
    /* thread names hold 15 bytes: "wq-" and the start of the queue name */
    snprintf(tname, sizeof(tname), "wq-%.12s", q->name);
    for (q->nworkers = 0; q->nworkers < nworkers; q->nworkers++) {
        int rc = pthread_create(&q->workers[q->nworkers], NULL, wq_worker, q);
        if (rc != 0) {
            st = KS_FAIL(KS_ERR_INTERNAL, "workqueue %s: pthread_create: %s", q->name,
                         strerror(rc));
            ks_error("%s", ks_status_last());
            ks_workqueue_shutdown(q);
            for (unsigned i = 0; i < q->nworkers; i++)
                pthread_join(q->workers[i], NULL);
            free(q->workers);
            q->workers = NULL;
            q->nworkers = 0;
            goto out;
        }
        pthread_setname_np(q->workers[q->nworkers], tname);
    }
    st = KS_OK;
out:
    if (locked)
        pthread_mutex_unlock(&q->pool_mu);
    return st;
}

void ks_workqueue_stop(ks_workqueue *q)
{
    if (q == NULL)
        return;
    pthread_mutex_lock(&q->pool_mu);
    ks_workqueue_shutdown(q);
    for (unsigned i = 0; i < q->nworkers; i++)
        pthread_join(q->workers[i], NULL);
    free(q->workers);
    q->workers = NULL;
    q->nworkers = 0;
    pthread_mutex_unlock(&q->pool_mu);
}

/* ---- inspection ---- */

void ks_workqueue_stats_get(ks_workqueue *q, ks_workqueue_stats *out)
{
    pthread_mutex_lock(&q->mu);
    out->queued = q->nqueued;
    out->processing = q->nprocessing;
    out->waiting = q->nheap;
    out->keys = q->nkeys;
    out->getters = q->ngetters;
    out->shut_down = q->shut_down;
    pthread_mutex_unlock(&q->mu);
}

size_t ks_workqueue_len(ks_workqueue *q)
{
    size_t n;

    pthread_mutex_lock(&q->mu);
    n = q->nqueued;
    pthread_mutex_unlock(&q->mu);
    return n;
}
