/* mirror_cache.h: the read side of the mirror (DESIGN.md section 4).
 *
 * A shared-informer-like cache over the JetStream KV bucket KS_OBJECTS that
 * the reconciler's watchers write. It watches the bucket (all keys, or the key
 * prefix <group>.<resource>.> of each resource it was asked for), decodes each
 * value as a kscore.v1.ObjectEvent and keeps an in-memory index
 *     resource ("<group>/<resource>", core group "": "/namespaces")
 *       -> namespace ("" for cluster-scoped objects) -> name -> object
 * plus a secondary index by label (key=value -> set of objects), so label
 * lookups never scan. docs/mirror-read-side.md describes it on one page.
 *
 * Values: a KV delete or purge marker, or an ObjectEvent of type DELETED,
 * removes the object. A value that cannot be used (key not in the mirror
 * format, more than KS_MIRROR_MAX_VALUE bytes, not an ObjectEvent, object not
 * a JSON object, ObjectEvent fields contradicting the key) is logged, counted
 * (ks_mirror_decode_errors_total) and skipped: the index keeps what it had for
 * that key. A put whose uid and resourceVersion equal the indexed ones (a
 * replay, or a new leader re-putting the same version) only updates the KV
 * revision: it is not a change, no handler runs.
 *
 * Objects are jansson values parsed once and shared: every json_t this API
 * hands out (get, list, foreach, change handlers) is READ-ONLY. Never modify
 * one (json_deep_copy it first). Reading, including json_dumps, from several
 * threads at once is safe with jansson >= 2.13 (atomic reference counts, no
 * mutation while encoding).
 *
 * Threads: every function may be called from any thread. Lookups take a
 * readers-writer lock (writer-preferring, so a busy reader side cannot starve
 * the watch); the watch threads take it for writing to apply a change. Change
 * handlers run on a watch thread after the index has been updated and the
 * lock released, one handler call at a time across the whole cache, in the
 * order the changes were applied. */
#ifndef KS_MIRROR_CACHE_H
#define KS_MIRROR_CACHE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "bus.h"
#include "status.h"

#define KS_MIRROR_BUCKET "KS_OBJECTS"
/* Cap on one KV value (an ObjectEvent); larger values are decode errors. */
#define KS_MIRROR_MAX_VALUE (4u * 1024u * 1024u)
/* Change handlers registered at once on one cache. */
#define KS_MIRROR_MAX_HANDLERS 64

typedef struct ks_mirror_cache ks_mirror_cache;

typedef enum {
    KS_MIRROR_ADDED = 1,
    KS_MIRROR_MODIFIED = 2,
    KS_MIRROR_DELETED = 3,
} ks_mirror_change;

/* One indexed object, as seen by ks_mirror_cache_foreach*. Every pointer is
 * valid only during the visit call. */
typedef struct {
    const char *resource;          /* "<group>/<resource>" */
    const char *namespace_;        /* "" for cluster-scoped objects */
    const char *name;
    const char *uid;               /* "" if unknown */
    const char *resource_version;  /* opaque; "" if unknown */
    uint64_t revision;             /* KV revision of the value */
    int64_t observed_unix_ms;      /* ObjectEvent.observed_unix_ms */
    const json_t *object;          /* the object's JSON; read-only */
} ks_mirror_item;

/* ---- life cycle ---- */

/* Start a cache over `bucket` (NULL: KS_MIRROR_BUCKET) on bus. The bucket is
 * opened, and created when missing (history 1, file storage), so a service
 * may start before the reconciler. resources is a NULL-terminated list of
 * "<group>/<resource>" names to mirror (core group: "/namespaces"), or NULL
 * for every key of the bucket; each listed resource gets its own KV watch on
 * the key prefix "<escaped group>.<escaped resource>.>" (and its own thread).
 *
 * When the bus is not connected, create does not wait: it returns at once
 * and a background thread opens the bucket once NATS is up. When the bucket
 * cannot be opened or watched (JetStream not ready), create still succeeds
 * and the same thread retries (250 ms doubling to 5 s) until it works or the
 * cache is destroyed. ks_mirror_cache_synced() stays 0 meanwhile.
 * KS_ERR_INVALID for a bad bucket or resource name, KS_ERR_NOMEM. bus must
 * outlive the cache. *out is set only on success. */
ks_status ks_mirror_cache_create(ks_bus *bus, const char *bucket, const char *const *resources,
                                 ks_mirror_cache **out) __attribute__((warn_unused_result));

/* A cache without a bus, fed only through ks_mirror_cache_apply: for unit
 * tests and tools. bucket (NULL: KS_MIRROR_BUCKET) only labels the metrics;
 * resources filters what apply accepts, as for create. */
ks_status ks_mirror_cache_create_local(const char *bucket, const char *const *resources,
                                       ks_mirror_cache **out) __attribute__((warn_unused_result));

/* Stop the retry thread and the KV watches (joining their threads, so no
 * handler runs after this returns), close the bucket, free everything. JSON
 * references handed out earlier stay valid (they are the caller's). NULL is a
 * no-op. Must not be called from a change handler. */
void ks_mirror_cache_destroy(ks_mirror_cache *cache);

/* Apply one KV watch entry exactly as the watch thread does (the same code
 * path): entry NULL is the end-of-initial-values marker and makes the cache
 * synced. Entries of resources outside the cache's filter are ignored. Meant
 * for caches from ks_mirror_cache_create_local. */
void ks_mirror_cache_apply(ks_mirror_cache *cache, const ks_bus_kv_entry *entry);

/* ---- readiness ---- */

/* 1 once the initial values of every watch have been loaded (the watch's
 * end-of-initial-values marker arrived after all of them were indexed);
 * never goes back to 0. */
int ks_mirror_cache_synced(ks_mirror_cache *cache);

/* Block until synced, at most timeout_ms. KS_ERR_TIMEOUT if not synced by
 * then, KS_ERR_CLOSED if the cache is being destroyed. */
ks_status ks_mirror_cache_wait_synced(ks_mirror_cache *cache, int timeout_ms);

/* A ks_service_ready_fn / ks_admin_ready_fn: arg is the ks_mirror_cache.
 * Returns 1 when synced, else 0 with the reason in why. Never blocks. */
int ks_mirror_cache_ready(void *arg, char *why, size_t whycap);

/* Read barrier: wait (at most timeout_ms) until the cache has applied every
 * change the bucket held when the call started, so a read that follows sees
 * every write acknowledged before it (read-your-writes across replicas).
 * Exact for a cache over all keys (resources NULL); with a resource filter
 * it may wait for changes it never receives and time out. KS_OK,
 * KS_ERR_TIMEOUT, KS_ERR_UNAVAILABLE (bucket not open or NATS away). */
ks_status ks_mirror_cache_barrier(ks_mirror_cache *cache, int timeout_ms)
    __attribute__((warn_unused_result));

/* The highest KV revision applied so far. */
uint64_t ks_mirror_cache_revision(ks_mirror_cache *cache);

/* ---- lookups ---- */

/* The object resource/namespace/name (namespace "" or NULL for a
 * cluster-scoped object). On success *object is a NEW REFERENCE to the shared,
 * read-only value: the caller json_decref()s it. *revision (may be NULL) is
 * its KV revision. KS_ERR_NOT_FOUND when absent. */
ks_status ks_mirror_cache_get(ks_mirror_cache *cache, const char *resource, const char *ns,
                              const char *name, json_t **object, uint64_t *revision)
    __attribute__((warn_unused_result));

/* Objects of resource in namespace ns (NULL: every namespace), as a new JSON
 * array the caller owns (json_decref it), sorted by namespace then name. Its
 * items are the shared read-only values. An unknown resource gives an empty
 * array. KS_ERR_NOMEM. */
ks_status ks_mirror_cache_list(ks_mirror_cache *cache, const char *resource, const char *ns,
                               json_t **items) __attribute__((warn_unused_result));

/* Objects of resource (every namespace) whose metadata.labels[key] is the
 * string value, from the label index; same ownership and order as list. */
ks_status ks_mirror_cache_list_by_label(ks_mirror_cache *cache, const char *resource,
                                        const char *key, const char *value, json_t **items)
    __attribute__((warn_unused_result));

/* Visitor: return 0 to go on, non-zero to stop. It runs with the cache's read
 * lock held: it must be quick, must not keep any pointer of item past its
 * return (json_incref item->object to keep it), and must not call any
 * function of this cache (a queued writer would deadlock it). */
typedef int (*ks_mirror_visit_fn)(const ks_mirror_item *item, void *arg);

/* Visit the objects of resource in ns (NULL: every namespace), in no
 * particular order. Returns the number of objects visited. */
size_t ks_mirror_cache_foreach(ks_mirror_cache *cache, const char *resource, const char *ns,
                               ks_mirror_visit_fn fn, void *arg);

/* Visit the objects of resource whose metadata.labels[key] == value. */
size_t ks_mirror_cache_foreach_by_label(ks_mirror_cache *cache, const char *resource,
                                        const char *key, const char *value,
                                        ks_mirror_visit_fn fn, void *arg);

/* Number of objects of resource in ns (NULL: all namespaces); resource NULL
 * counts every resource. */
size_t ks_mirror_cache_count(ks_mirror_cache *cache, const char *resource, const char *ns);

/* A counter that increases on every change of the index (add, modify,
 * delete), incremented under the write lock: a value read before a set of
 * lookups that is still current afterwards proves nothing changed between. */
uint64_t ks_mirror_cache_generation(ks_mirror_cache *cache);

/* Values this cache skipped as undecodable (its share of
 * ks_mirror_decode_errors_total). */
uint64_t ks_mirror_cache_decode_errors(ks_mirror_cache *cache);

/* ---- change handlers ---- */

/* Called after the index changed: ADDED (old_obj NULL), MODIFIED (both set),
 * DELETED (new_obj NULL). Also called for each object of the initial values
 * (ADDED), before the cache is synced. Runs on a watch thread (or, for the
 * replay, in ks_mirror_cache_add_handler), without the index lock, one call
 * at a time per cache: it may call the lookups and add or remove handlers,
 * must not destroy the cache, and should be quick (it delays every later
 * change). resource, ns, name and the objects are valid only during the
 * call; the objects are read-only (json_incref one to keep it). */
typedef void (*ks_mirror_change_fn)(ks_mirror_change type, const char *resource, const char *ns,
                                    const char *name, const json_t *old_obj,
                                    const json_t *new_obj, void *arg);

/* Register fn for changes of resource (NULL: every resource). Like
 * client-go's AddEventHandler, fn is first called, on the calling thread and
 * before this returns, with ADDED for every object already indexed; no change
 * can slip in between that replay and the registration, so a handler sees
 * every object exactly once as ADDED, whenever it registers. *id (may be NULL)
 * receives a handle for ks_mirror_cache_remove_handler. arg must stay valid
 * until the handler is removed or the cache destroyed. KS_ERR_TOO_LARGE beyond
 * KS_MIRROR_MAX_HANDLERS, KS_ERR_NOMEM. */
ks_status ks_mirror_cache_add_handler(ks_mirror_cache *cache, const char *resource,
                                      ks_mirror_change_fn fn, void *arg, int *id)
    __attribute__((warn_unused_result));

/* Unregister; when it returns, fn is not running and will not be called
 * again (called from a handler, the current call is of course still on the
 * stack). Unknown ids are ignored. */
void ks_mirror_cache_remove_handler(ks_mirror_cache *cache, int id);

#endif
