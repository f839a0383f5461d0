/* ttlcache.h: a bounded, sharded cache of small byte values with a TTL per
 * entry and LRU eviction, emptied in O(1).
 *
 * Made for the gateway's authorization decisions (docs/gateway-auth.md) but
 * generic: keys and values are byte strings, copied in and out.
 *
 *   - Bounded: at most `capacity` entries (split evenly between the shards);
 *     a put into a full shard evicts that shard's least recently used entry.
 *     Keys and values have size caps, checked on every call.
 *   - TTL: every entry carries its own deadline, capped by max_ttl_ms; a get
 *     after the deadline is a miss and frees the entry.
 *   - Epochs: ks_ttlcache_clear() makes every entry invisible at once by
 *     moving the cache to a new epoch (one atomic add); the memory of old
 *     entries is reclaimed lazily (a get that meets one, and every put, which
 *     drops up to two stale or expired entries from its shard's LRU tail).
 *     A put names the epoch it was computed in (read with
 *     ks_ttlcache_epoch() BEFORE asking for the value): a value computed
 *     before a clear is refused, so an answer that was in flight while the
 *     world changed is never cached.
 *
 * Threads: every function may be called from any thread; each shard has its
 * own mutex (a get moves the entry to the front of the LRU list, so gets
 * lock too). A get or put costs one hash of the key, one lock and a memcpy. */
#ifndef KS_TTLCACHE_H
#define KS_TTLCACHE_H

#include <stddef.h>
#include <stdint.h>

#include "status.h"

#define KS_TTLCACHE_MAX_CAPACITY (64u * 1024u * 1024u)
#define KS_TTLCACHE_MAX_SHARDS 256

typedef struct ks_ttlcache ks_ttlcache;

/* Monotonic milliseconds; for tests. */
typedef int64_t (*ks_ttlcache_clock_fn)(void *arg);

typedef struct {
    size_t capacity;          /* entries at most, 1..KS_TTLCACHE_MAX_CAPACITY */
    size_t shards;            /* 0 = 16; rounded up to a power of two, at most
                                 KS_TTLCACHE_MAX_SHARDS and at most capacity */
    size_t max_key;           /* bytes of a key; 0 = 1024 */
    size_t max_value;         /* bytes of a value; 0 = 256 */
    int64_t max_ttl_ms;       /* cap on a put's ttl; 0 = no cap */
    ks_ttlcache_clock_fn clock; /* NULL: CLOCK_MONOTONIC */
    void *clock_arg;
} ks_ttlcache_opts;

/* Counters since create (each read atomically, not as a snapshot). */
typedef struct {
    uint64_t hits;
    uint64_t misses;          /* absent, expired or from an old epoch */
    uint64_t puts;            /* stored */
    uint64_t stale_puts;      /* refused: computed in an older epoch */
    uint64_t evictions;       /* live entries pushed out by the capacity */
    uint64_t expirations;     /* entries dropped after their deadline */
    uint64_t clears;
} ks_ttlcache_stats;

/* Create an empty cache. KS_ERR_INVALID for a capacity out of range,
 * KS_ERR_NOMEM. *out is set only on success. */
ks_status ks_ttlcache_create(const ks_ttlcache_opts *opts, ks_ttlcache **out)
    __attribute__((warn_unused_result));

/* Free the cache and every entry. NULL is a no-op. No other call may run
 * concurrently or follow. */
void ks_ttlcache_destroy(ks_ttlcache *c);

/* The current epoch: read it before computing a value, pass it to put. */
uint64_t ks_ttlcache_epoch(const ks_ttlcache *c);

/* Forget every entry now (they stop being visible before this returns) and
 * refuse puts of values computed before. O(1). */
void ks_ttlcache_clear(ks_ttlcache *c);

/* Store key -> value for ttl_ms (capped by max_ttl_ms), replacing an entry
 * with the same key. Returns KS_OK when stored; KS_ERR_CONFLICT (nothing
 * stored, not raised) when epoch is not the current epoch; KS_ERR_INVALID
 * for ttl_ms <= 0 or an empty key; KS_ERR_TOO_LARGE when the key or the
 * value exceeds its cap; KS_ERR_NOMEM. */
ks_status ks_ttlcache_put(ks_ttlcache *c, const void *key, size_t klen, const void *value,
                          size_t vlen, int64_t ttl_ms, uint64_t epoch);

/* Look key up. On a hit copies the value into value[0..cap) (at most cap
 * bytes), writes its full length to *vlen (may be NULL) and returns 1;
 * returns 0 on a miss (absent, expired, or from before a clear). */
int ks_ttlcache_get(ks_ttlcache *c, const void *key, size_t klen, void *value, size_t cap,
                    size_t *vlen);

/* Remove one key. Returns 1 if a visible entry was removed. */
int ks_ttlcache_remove(ks_ttlcache *c, const void *key, size_t klen);

/* Entries held, stale ones (from an old epoch or expired but not yet
 * reclaimed) included: a bound on the memory, not a count of hits to come. */
size_t ks_ttlcache_size(ks_ttlcache *c);

void ks_ttlcache_get_stats(const ks_ttlcache *c, ks_ttlcache_stats *out);

#endif
