/* ctlkit.h: what the tenant controllers (role aggregation, role references,
 * workspace, namespace) share: object accessors, reads that fall back to the
 * API when a reflector's store does not have an object yet, counted writes
 * that carry the resourceVersion, finalizers, deduplicated Warning Events
 * and cached filtered lists. docs/controllers.md.
 *
 * Every write goes through ck_create / ck_update / ck_delete, which count it
 * with rec_write_count (attempts, whatever the answer) so that idempotence is
 * measurable, and log it. */
#ifndef REC_CTLKIT_H
#define REC_CTLKIT_H

#include <jansson.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>

#include "../controller.h"

#define CK_NAME_MAX 254                 /* an object name, NUL included */
#define CK_WARN_REPEAT_MS (10 * 60 * 1000) /* the same Warning again after this long */
#define CK_MEMO_MAX 100000              /* keys with a pending warning, over all controllers */

/* ---- keys and accessors ---- */

/* Split a work queue key "<namespace>/<name>" ("" namespace: cluster-scoped).
 * KS_ERR_INVALID for no '/', an empty name or a part that does not fit. */
ks_status ck_key_split(const char *key, char *ns, size_t nscap, char *name, size_t namecap)
    __attribute__((warn_unused_result));

const char *ck_name(const json_t *obj);                       /* NULL if absent */
const char *ck_namespace(const json_t *obj);                  /* "" if absent */
const char *ck_label(const json_t *obj, const char *key);      /* NULL if absent */
const char *ck_annotation(const json_t *obj, const char *key); /* NULL if absent */
bool ck_deleting(const json_t *obj);                          /* deletionTimestamp set */
bool ck_has_finalizer(const json_t *obj, const char *finalizer);

/* A JSON object, or an empty one for NULL/null/non-objects (new reference). */
json_t *ck_object_or_empty(const json_t *v);
/* Equality that treats absent, null and an empty object or array alike. */
bool ck_json_same(const json_t *a, const json_t *b);

/* ---- reads ---- */

/* The object from the reflector's store; when the store does not have it
 * (not listed yet, or behind), from kube-apiserver. *out is a new reference,
 * set only on KS_OK. KS_ERR_NOT_FOUND when the API does not have it either. */
ks_status ck_get(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                 json_t **out) __attribute__((warn_unused_result));

/* The object from kube-apiserver only (to confirm what the store says before
 * reporting it). Errors as ck_get. */
ks_status ck_get_live(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                      json_t **out) __attribute__((warn_unused_result));

/* A list from kube-apiserver (not the store: for cascades that must not miss
 * an object a lagging store lacks). label_selector in the query form
 * ("k=v,k2"); NULL lists everything. ns NULL or "" for every namespace or a
 * cluster-scoped resource. *items is a new array of objects, each with kind
 * and apiVersion set. */
ks_status ck_list(rec_runtime *rt, const char *resource, const char *ns,
                  const char *label_selector, json_t **items) __attribute__((warn_unused_result));

/* ---- writes (each counts one write of controller ctl) ---- */

/* POST obj into resource (namespace from obj). *out (may be NULL) is the
 * created object. KS_ERR_CONFLICT when it already exists. */
ks_status ck_create(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                    json_t **out) __attribute__((warn_unused_result));

/* PUT obj, which carries metadata.resourceVersion: KS_ERR_CONFLICT when the
 * object changed meanwhile. *out (may be NULL) is the stored object. */
ks_status ck_update(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                    json_t **out) __attribute__((warn_unused_result));

/* DELETE obj with preconditions on its uid and resourceVersion. KS_OK also
 * when it is already gone; KS_ERR_CONFLICT when it changed meanwhile. */
ks_status ck_delete(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj)
    __attribute__((warn_unused_result));

/* Add (present) or remove a finalizer with ck_update; nothing is written when
 * obj already agrees. *out (may be NULL) is the object afterwards (a new
 * reference to obj itself when nothing was written). */
ks_status ck_set_finalizer(rec_runtime *rt, const char *ctl, const char *resource,
                           const json_t *obj, const char *finalizer, bool present, json_t **out)
    __attribute__((warn_unused_result));

/* How ck_ensure compares labels or annotations: CK_EXACT makes them equal to
 * the desired ones; CK_SUBSET sets the desired ones and keeps the others. */
typedef enum { CK_EXACT, CK_SUBSET } ck_match;

/* Make the object desired names (metadata.name and .namespace) exist with
 * desired's labels, annotations and top-level fields (NULL-terminated, e.g.
 * "rules", "aggregationRoleTemplates"; a field absent from desired is
 * removed): create it from desired as is (so desired may carry more metadata,
 * such as ownerReferences), or update the current object, with its
 * resourceVersion, when something differs. Absent, null and empty compare
 * equal. An object being deleted is left alone. *wrote (may be NULL) says
 * whether a write happened. Errors of ck_get, ck_create, ck_update. */
ks_status ck_ensure(rec_runtime *rt, const char *ctl, const char *resource, const json_t *desired,
                    const char *const *fields, ck_match labels, ck_match annotations, bool *wrote)
    __attribute__((warn_unused_result));

/* The queue's verdict on a failed write or read: KS_OK is done; everything
 * else retries with the queue's growing backoff, except KS_ERR_INVALID (the
 * API refused the object: retrying cannot help, the Warning said why). */
ks_workqueue_result ck_result(ks_status st);

/* ---- warnings ---- */

/* A Warning Event on obj, unless the same controller already reported the
 * same reason and message for the same key within CK_WARN_REPEAT_MS: a key
 * retried with backoff reports once, not at every retry. Also logged. */
void ck_warn(rec_runtime *rt, const char *ctl, const char *key, const json_t *obj,
             const char *reason, const char *fmt, ...) __attribute__((format(printf, 6, 7)));

/* The key reconciled cleanly: forget its warning (the next one is reported
 * at once) and anything it waited for. */
void ck_ok(const char *ctl, const char *key);

/* Note that key of ctl waits for `what` (an opaque string such as
 * "WorkspaceRole//ws1-admin"), and queue every key of ctl that waits for
 * `what` (when it appears). Waits are forgotten by ck_ok. */
void ck_wait(const char *ctl, const char *key, const char *what);
void ck_wake(rec_runtime *rt, const char *ctl, const char *what);

/* ---- cached lists ---- */

/* The objects of one resource that pass keep(), parsed once and kept until
 * the next ck_cache_bump (the controller's map calls it when one of them may
 * have changed) and at most CK_CACHE_TTL_MS: map functions run only while
 * this replica leads, so a cache built in an earlier term must not outlive
 * the events it missed. */
#define CK_CACHE_TTL_MS 1000

typedef struct {
    const char *resource;
    int (*keep)(const json_t *obj);
    pthread_mutex_t mu;
    json_t *items;          /* array, or NULL before the first build */
    uint64_t gen, built_gen;
    int64_t built_ms;
} ck_cache;

#define CK_CACHE_INIT(res, keepfn) {(res), (keepfn), PTHREAD_MUTEX_INITIALIZER, NULL, 1, 0, 0}

/* A new reference to the array (never NULL: an empty array when nothing
 * passes or memory is short). Sorted by namespace, then name. */
json_t *ck_cache_get(ck_cache *c, rec_runtime *rt);
void ck_cache_bump(ck_cache *c);

/* Monotonic milliseconds. */
int64_t ck_now_ms(void);

/* ---- the controllers built on this kit (registry.c lists them) ---- */

extern const rec_controller rec_ctl_aggregate_globalroles;      /* role.c */
extern const rec_controller rec_ctl_aggregate_workspaceroles;
extern const rec_controller rec_ctl_aggregate_clusterroles;
extern const rec_controller rec_ctl_aggregate_roles;
extern const rec_controller rec_ctl_rolerefs_globalrolebindings;
extern const rec_controller rec_ctl_rolerefs_workspacerolebindings;
extern const rec_controller rec_ctl_rolerefs_clusterrolebindings;
extern const rec_controller rec_ctl_rolerefs_rolebindings;
extern const rec_controller rec_ctl_workspacetemplate;          /* workspace.c */
extern const rec_controller rec_ctl_namespace;                  /* namespace.c */

/* What went wrong in one reconcile, reported as one Warning Event: the
 * first reason, every message joined with "; " (truncated at the buffer),
 * and whether to look again with backoff. Zero-initialize before use. */
typedef struct {
    const char *reason;
    char msg[768];
    int retry;
} ck_problem;

void ck_problem_add(ck_problem *p, const char *reason, int retry, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
