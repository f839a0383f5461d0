/* reflector.h: list+watch of one Kubernetes resource, as client-go's
 * reflector does it, keeping a local store and reporting every change.
 *
 *   - paged list (limit/continue); a 410 on a continue page restarts with a
 *     full list;
 *   - watch from the list's resourceVersion with allowWatchBookmarks=true and
 *     a random timeoutSeconds in [watch_min_s, watch_max_s]; when the server
 *     ends the stream, watch again from the last version seen;
 *   - an ERROR event, a 410 Expired answer, or a malformed event triggers a
 *     relist; after a relist every object that vanished is reported deleted
 *     and an object is reported only when its resourceVersion changed;
 *   - exponential backoff with jitter (800 ms doubling to 30 s by default),
 *     at least Retry-After on 429 and 503;
 *   - resourceVersion is an opaque string; the chunked stream is split
 *     incrementally (chunk boundaries are not event boundaries);
 *   - TCP keepalive and a client deadline 30 s longer than timeoutSeconds.
 *
 * One thread per reflector. See docs/reflector.md. */
#ifndef KS_REFLECTOR_H
#define KS_REFLECTOR_H

#include <stddef.h>

#include "kube.h"
#include "status.h"

typedef struct {
    const char *group;      /* "" for the core group */
    const char *version;    /* "v1", "v1beta1" */
    const char *resource;   /* plural, lower case: "users" */
    const char *kind;       /* "User": set on list items that lack it */
    int namespaced;
} ks_reflector_resource;

typedef enum {
    KS_REFLECT_ADDED = 1,
    KS_REFLECT_MODIFIED,
    KS_REFLECT_DELETED,
} ks_reflect_type;

/* One change. Strings are valid during the callback only. For DELETED the
 * object is its last known state. */
typedef struct {
    ks_reflect_type type;
    const char *namespace_;        /* "" when cluster-scoped */
    const char *name;
    const char *uid;
    const char *resource_version;
    const char *object_json;       /* compact JSON, NUL-terminated */
    size_t object_len;
} ks_reflect_event;

/* Called on the reflector's thread, never with a lock held. */
typedef void (*ks_reflector_fn)(void *arg, const ks_reflector_resource *res,
                                const ks_reflect_event *ev);
/* Called after each successful (re)list has been reported. Optional. */
typedef void (*ks_reflector_synced_fn)(void *arg, const ks_reflector_resource *res);

typedef struct {
    int page_size;            /* 0 = 500 */
    int watch_min_s;          /* 0 = 300 */
    int watch_max_s;          /* 0 = 600 */
    long backoff_initial_ms;  /* 0 = 800 */
    long backoff_max_ms;      /* 0 = 30000 */
    size_t max_event_bytes;   /* 0 = 16 MiB */
} ks_reflector_opts;

typedef struct ks_reflector ks_reflector;

/* Start the thread. res is copied; kube must outlive the reflector. */
ks_status ks_reflector_start(ks_kube_client *kube, const ks_reflector_resource *res,
                             const ks_reflector_opts *opts, ks_reflector_fn fn,
                             ks_reflector_synced_fn synced, void *arg, ks_reflector **out)
    __attribute__((warn_unused_result));

/* Stop and join. A watch in progress ends at once only if the kube client
 * was shut down (ks_kube_client_shutdown); otherwise at its next event or
 * deadline. NULL is a no-op. */
void ks_reflector_stop(ks_reflector *r);

/* 1 once the first list has been reported. */
int ks_reflector_has_synced(ks_reflector *r);

/* Call fn for every object of the store, under the store's lock (fn must
 * not call back into the reflector). Stops when fn returns non-zero. */
void ks_reflector_each(ks_reflector *r,
                       int (*fn)(void *arg, const char *ns, const char *name, const char *uid,
                                 const char *rv, const char *json, size_t len),
                       void *arg);

/* A copy of one object of the store: *json (compact JSON) and, if rv is not
 * NULL, *rv are malloc'd; the caller frees them. KS_ERR_NOT_FOUND if the
 * store has no such object. ns is "" for cluster-scoped objects. */
ks_status ks_reflector_get(ks_reflector *r, const char *ns, const char *name, char **json,
                           char **rv) __attribute__((warn_unused_result));

/* Number of objects in the store. */
size_t ks_reflector_size(ks_reflector *r);

/* Relists so far, and watch streams started; for tests and metrics. */
unsigned long ks_reflector_relists(ks_reflector *r);
unsigned long ks_reflector_watches(ks_reflector *r);

/* The collection path: "/apis/<g>/<v>/<resource>" or "/api/v1/<resource>". */
ks_status ks_reflector_path(const ks_reflector_resource *res, char *out, size_t cap);

#endif
