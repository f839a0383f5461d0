/* ttlcache.c: see ttlcache.h. Each shard is a chained hash table plus an
 * intrusive LRU list (head = most recently used), under one mutex. The hash
 * is SipHash-1-3 with a random key per cache: keys hold names that clients
 * choose, and a fixed hash would let them aim every key at one chain. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "ttlcache.h"

#define DEFAULT_SHARDS 16
#define DEFAULT_MAX_KEY 1024
#define DEFAULT_MAX_VALUE 256
#define RECLAIM_PER_PUT 2

typedef struct entry {
    struct entry *hnext;        /* hash chain */
    struct entry *prev, *next;  /* LRU list */
    uint64_t hash;
    uint64_t epoch;
    int64_t deadline_ms;
    uint32_t klen, vlen;
    unsigned char data[];       /* key, then value */
} entry;

typedef struct {
    pthread_mutex_t mu;
    entry **buckets;
    size_t mask;                /* nbuckets - 1 */
    entry *head, *tail;
    size_t count, cap;
} shard;

struct ks_ttlcache {
    shard *shards;
    size_t nshards;
    unsigned shard_shift;       /* hash >> shift picks the shard */
    size_t max_key, max_value;
    int64_t max_ttl_ms;
    ks_ttlcache_clock_fn clock;
    void *clock_arg;
    uint64_t k0, k1;            /* SipHash key */
    _Atomic uint64_t epoch;
    _Atomic uint64_t hits, misses, puts, stale_puts, evictions, expirations, clears;
};

/* ---- SipHash-1-3 (Aumasson, Bernstein), 64-bit output ---- */

#define ROTL(x, b) (uint64_t)(((x) << (b)) | ((x) >> (64 - (b))))
#define SIPROUND                                                                               \
    do {                                                                                       \
        v0 += v1; v1 = ROTL(v1, 13); v1 ^= v0; v0 = ROTL(v0, 32);                             \
        v2 += v3; v3 = ROTL(v3, 16); v3 ^= v2;                                                 \
        v0 += v3; v3 = ROTL(v3, 21); v3 ^= v0;                                                 \
        v2 += v1; v1 = ROTL(v1, 17); v1 ^= v2; v2 = ROTL(v2, 32);                             \
    } while (0)

static uint64_t load_le64(const unsigned char *p)
{
    return (uint64_t)p[0] | (uint64_t)p[1] << 8 | (uint64_t)p[2] << 16 | (uint64_t)p[3] << 24 |
           (uint64_t)p[4] << 32 | (uint64_t)p[5] << 40 | (uint64_t)p[6] << 48 |
           (uint64_t)p[7] << 56;
}

static uint64_t siphash13(uint64_t k0, uint64_t k1, const void *data, size_t len)
{
    const unsigned char *p = data;
    uint64_t v0 = k0 ^ 0x736f6d6570736575ULL, v1 = k1 ^ 0x646f72616e646f6dULL;
    uint64_t v2 = k0 ^ 0x6c7967656e657261ULL, v3 = k1 ^ 0x7465646279746573ULL;
    uint64_t b = (uint64_t)len << 56, m;
    size_t i, tail = len & 7;

    for (i = 0; i + 8 <= len; i += 8) {
        m = load_le64(p + i);
        v3 ^= m;
        SIPROUND;
        v0 ^= m;
    }
    for (size_t j = 0; j < tail; j++)
        b |= (uint64_t)p[i + j] << (8 * j);
    v3 ^= b;
    SIPROUND;
    v0 ^= b;
    v2 ^= 0xff;
    SIPROUND;
    SIPROUND;
    SIPROUND;
    return v0 ^ v1 ^ v2 ^ v3;
}

/* ---- helpers ---- */

static int64_t mono_ms(void *arg)
{
    struct timespec ts;
    (void)arg;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static size_t pow2_at_least(size_t n)
{
    size_t p = 1;
    while (p < n)
        p <<= 1;
    return p;
}

static void bump(_Atomic uint64_t *c)
{
    atomic_fetch_add_explicit(c, 1, memory_order_relaxed);
}

static void lru_unlink(shard *s, entry *e)
{
    if (e->prev != NULL)
        e->prev->next = e->next;
    else
        s->head = e->next;
    if (e->next != NULL)
        e->next->prev = e->prev;
    else
        s->tail = e->prev;
    e->prev = e->next = NULL;
}

static void lru_push_front(shard *s, entry *e)
{
    e->prev = NULL;
    e->next = s->head;
    if (s->head != NULL)
        s->head->prev = e;
    s->head = e;
    if (s->tail == NULL)
        s->tail = e;
}

/* The chain slot that points at the entry with this key, or at the chain's
 * NULL end. */
static entry **find_slot(shard *s, uint64_t h, const void *key, size_t klen)
{
    entry **pp = &s->buckets[h & s->mask];

    for (; *pp != NULL; pp = &(*pp)->hnext) {
        entry *e = *pp;
        if (e->hash == h && e->klen == klen && memcmp(e->data, key, klen) == 0)
            break;
    }
    return pp;
}

/* Unlink e (found through slot pp, or looked up when pp is NULL) and free it. */
static void drop(shard *s, entry *e, entry **pp)
{
    if (pp == NULL) {
        pp = &s->buckets[e->hash & s->mask];
        while (*pp != e)
            pp = &(*pp)->hnext;
    }
    *pp = e->hnext;
    lru_unlink(s, e);
    s->count--;
    free(e);
}

static int entry_live(const ks_ttlcache *c, const entry *e, uint64_t epoch, int64_t now)
{
    (void)c;
    return e->epoch == epoch && now < e->deadline_ms;
}

static shard *shard_of(ks_ttlcache *c, uint64_t h)
{
    return &c->shards[c->nshards == 1 ? 0 : (size_t)(h >> c->shard_shift)];
}

/* ---- life cycle ---- */

ks_status ks_ttlcache_create(const ks_ttlcache_opts *opts, ks_ttlcache **out)
{
    ks_ttlcache *c = NULL;
    size_t nshards, per;
    ks_status st = KS_ERR_INTERNAL;
    uint64_t seed[2];

    if (opts == NULL || opts->capacity < 1 || opts->capacity > KS_TTLCACHE_MAX_CAPACITY ||
        opts->max_ttl_ms < 0 || opts->shards > KS_TTLCACHE_MAX_SHARDS)
        return KS_FAIL(KS_ERR_INVALID, "ttlcache: bad options");
    nshards = pow2_at_least(opts->shards ? opts->shards : DEFAULT_SHARDS);
    while (nshards > 1 && nshards > opts->capacity)
        nshards >>= 1;
    per = (opts->capacity + nshards - 1) / nshards;

    c = calloc(1, sizeof(*c));
    if (c == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "ttlcache");
    c->nshards = nshards;
    c->shard_shift = 64;
    for (size_t n = nshards; n > 1; n >>= 1)
        c->shard_shift--;
    c->max_key = opts->max_key ? opts->max_key : DEFAULT_MAX_KEY;
    c->max_value = opts->max_value ? opts->max_value : DEFAULT_MAX_VALUE;
    c->max_ttl_ms = opts->max_ttl_ms;
    c->clock = opts->clock ? opts->clock : mono_ms;
    c->clock_arg = opts->clock_arg;
    if (getrandom(seed, sizeof(seed), 0) != (ssize_t)sizeof(seed)) {
        /* Not fatal: the hash is still good, only guessable. */
        seed[0] = (uint64_t)mono_ms(NULL) * 0x9E3779B97F4A7C15ULL;
        seed[1] = (uint64_t)(uintptr_t)c * 0xBF58476D1CE4E5B9ULL;
    }
    c->k0 = seed[0];
    c->k1 = seed[1];
    c->shards = calloc(nshards, sizeof(*c->shards));
    if (c->shards == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "ttlcache: shards");
        goto out;
    }
    for (size_t i = 0; i < nshards; i++) {
        shard *s = &c->shards[i];
        size_t nb = pow2_at_least(per);
        pthread_mutex_init(&s->mu, NULL);
        s->cap = per;
        s->mask = nb - 1;
        s->buckets = calloc(nb, sizeof(*s->buckets));
        if (s->buckets == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "ttlcache: buckets");
            goto out;
        }
    }
    st = KS_OK;
    *out = c;
out:
    if (st)
        ks_ttlcache_destroy(c);
    return st;
}

void ks_ttlcache_destroy(ks_ttlcache *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; c->shards != NULL && i < c->nshards; i++) {
        shard *s = &c->shards[i];
        entry *e = s->head;
        while (e != NULL) {
            entry *next = e->next;
            free(e);
            e = next;
        }
        free(s->buckets);
        pthread_mutex_destroy(&s->mu);
    }
    free(c->shards);
    free(c);
}

uint64_t ks_ttlcache_epoch(const ks_ttlcache *c)
{
    return atomic_load_explicit(&((ks_ttlcache *)c)->epoch, memory_order_acquire);
}

void ks_ttlcache_clear(ks_ttlcache *c)
{
    atomic_fetch_add_explicit(&c->epoch, 1, memory_order_acq_rel);
    bump(&c->clears);
}

/* ---- operations ---- */

ks_status ks_ttlcache_put(ks_ttlcache *c, const void *key, size_t klen, const void *value,
                          size_t vlen, int64_t ttl_ms, uint64_t epoch)
{
    uint64_t h;
    shard *s;
    entry *e, **pp;
    int64_t now;

    if (klen == 0 || ttl_ms <= 0)
        return KS_FAIL(KS_ERR_INVALID, "ttlcache: empty key or ttl %lld ms", (long long)ttl_ms);
    if (klen > c->max_key || vlen > c->max_value)
        return KS_FAIL(KS_ERR_TOO_LARGE, "ttlcache: key of %zu or value of %zu bytes", klen,
                       vlen);
    if (epoch != ks_ttlcache_epoch(c)) {
        bump(&c->stale_puts);
        return KS_ERR_CONFLICT;
    }
    if (c->max_ttl_ms > 0 && ttl_ms > c->max_ttl_ms)
        ttl_ms = c->max_ttl_ms;
    e = malloc(sizeof(*e) + klen + vlen);
    if (e == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "ttlcache: entry");
    h = siphash13(c->k0, c->k1, key, klen);
    now = c->clock(c->clock_arg);
    memset(e, 0, sizeof(*e));
    e->hash = h;
    /* The caller's epoch, not the current one: if a clear slipped in since
     * the check above, the entry is born invisible. */
    e->epoch = epoch;
    e->deadline_ms = now + ttl_ms;
    e->klen = (uint32_t)klen;
    e->vlen = (uint32_t)vlen;
    memcpy(e->data, key, klen);
    if (vlen > 0)
        memcpy(e->data + klen, value, vlen);

    s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    pp = find_slot(s, h, key, klen);
    if (*pp != NULL)
        drop(s, *pp, pp);
    {
        uint64_t cur = ks_ttlcache_epoch(c);
        for (int i = 0; i < RECLAIM_PER_PUT && s->tail != NULL; i++) {
            entry *t = s->tail;
            if (entry_live(c, t, cur, now))
                break;
            if (t->epoch == cur)
                bump(&c->expirations);
            drop(s, t, NULL);
        }
        if (s->count >= s->cap && s->tail != NULL) {
            entry *t = s->tail;
            if (entry_live(c, t, cur, now))
                bump(&c->evictions);
            drop(s, t, NULL);
        }
    }
    pp = &s->buckets[h & s->mask];
    e->hnext = *pp;
    *pp = e;
    lru_push_front(s, e);
    s->count++;
    pthread_mutex_unlock(&s->mu);
    bump(&c->puts);
    return KS_OK;
}

int ks_ttlcache_get(ks_ttlcache *c, const void *key, size_t klen, void *value, size_t cap,
                    size_t *vlen)
{
    uint64_t h;
    shard *s;
    entry **pp, *e;
    int hit = 0;

    if (klen == 0 || klen > c->max_key) {
        bump(&c->misses);
        return 0;
    }
    h = siphash13(c->k0, c->k1, key, klen);
    s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    pp = find_slot(s, h, key, klen);
    e = *pp;
    if (e != NULL) {
        uint64_t cur = ks_ttlcache_epoch(c);
        int64_t now = c->clock(c->clock_arg);
        if (entry_live(c, e, cur, now)) {
            hit = 1;
            if (s->head != e) {
                lru_unlink(s, e);
                lru_push_front(s, e);
            }
            if (value != NULL && cap > 0)
                memcpy(value, e->data + e->klen, e->vlen < cap ? e->vlen : cap);
            if (vlen != NULL)
                *vlen = e->vlen;
        } else {
            if (e->epoch == cur)
                bump(&c->expirations);
            drop(s, e, pp);
        }
    }
    pthread_mutex_unlock(&s->mu);
    bump(hit ? &c->hits : &c->misses);
    return hit;
}

int ks_ttlcache_remove(ks_ttlcache *c, const void *key, size_t klen)
{
    uint64_t h;
    shard *s;
    entry **pp;
    int removed = 0;

    if (klen == 0 || klen > c->max_key)
        return 0;
    h = siphash13(c->k0, c->k1, key, klen);
    s = shard_of(c, h);
    pthread_mutex_lock(&s->mu);
    pp = find_slot(s, h, key, klen);
    if (*pp != NULL) {
        removed = entry_live(c, *pp, ks_ttlcache_epoch(c), c->clock(c->clock_arg));
        drop(s, *pp, pp);
    }
    pthread_mutex_unlock(&s->mu);
    return removed;
}

size_t ks_ttlcache_size(ks_ttlcache *c)
{
    size_t n = 0;

    for (size_t i = 0; i < c->nshards; i++) {
        pthread_mutex_lock(&c->shards[i].mu);
        n += c->shards[i].count;
        pthread_mutex_unlock(&c->shards[i].mu);
    }
    return n;
}

void ks_ttlcache_get_stats(const ks_ttlcache *c, ks_ttlcache_stats *out)
{
    ks_ttlcache *m = (ks_ttlcache *)c;

    out->hits = atomic_load(&m->hits);
    out->misses = atomic_load(&m->misses);
    out->puts = atomic_load(&m->puts);
    out->stale_puts = atomic_load(&m->stale_puts);
    out->evictions = atomic_load(&m->evictions);
    out->expirations = atomic_load(&m->expirations);
    out->clears = atomic_load(&m->clears);
}
