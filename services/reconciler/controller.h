/* controller.h: the controllers' runtime (issue Controllers; DESIGN.md §2).
 *
 * A controller reconciles the objects of one primary resource, keyed
 * "<namespace>/<name>" ("" namespace for cluster-scoped objects). The
 * runtime feeds it from the reflectors' events: a change of a primary object
 * queues its key; a change of another watched resource goes through the
 * controller's map function, which queues the primary keys it affects.
 * Controllers run only while this replica leads; a new leader queues every
 * primary object once (level-triggered: a reconcile that finds nothing to do
 * writes nothing). Each controller has its own work queue (lib/workqueue:
 * dedup, per-key backoff, never two workers on one key).
 *
 * Reads come from the reflectors' stores (rec_get/rec_each), writes go to
 * kube-apiserver with the object's resourceVersion (rec_kube); a 409 is a
 * retry. Every write a controller makes goes through rec_write_count() so
 * idempotence is measurable (ks_controller_writes_total). */
#ifndef REC_CONTROLLER_H
#define REC_CONTROLLER_H

#include <jansson.h>
#include <stdint.h>

#include "bus.h"
#include "kube.h"
#include "reflector.h"
#include "workqueue.h"

typedef struct rec_runtime rec_runtime;

/* Settings the controllers share (reconciler flags). */
typedef struct {
    int bcrypt_cost;                 /* user: hashing plain-text passwords */
    int login_max_failures;          /* user: AuthLimitExceeded after N failures ... */
    int64_t login_window_ms;         /* ... within this window */
    int64_t loginrecord_retention_ms;/* loginrecord: delete older records */
    int loginrecord_max_per_user;    /* loginrecord: keep the newest N */
} rec_settings;

typedef struct rec_controller {
    const char *name;                /* "user": queue name and metrics label */
    const char *primary;             /* "iam.kubesphere.io/users" */
    const char *const *also_watch;   /* other resources that map to primary keys, NULL-terminated */
    /* A change of an also_watch resource: queue affected primary keys with
     * rec_enqueue. Optional. */
    void (*map)(rec_runtime *rt, const char *resource, const ks_reflect_event *ev);
    /* Make the world agree with the primary object `key` (it may be gone:
     * rec_get answers KS_ERR_NOT_FOUND). Runs on a worker thread. */
    ks_workqueue_result (*reconcile)(rec_runtime *rt, const char *key);
    int workers;                     /* 0 = 2 */
} rec_controller;

/* ---- for controllers ---- */

/* An object of a watched resource ("<group>/<resource>", core: "/namespaces")
 * from the reflectors' stores. *obj is a new reference. KS_ERR_NOT_FOUND. */
ks_status rec_get(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                  json_t **obj) __attribute__((warn_unused_result));

/* Call fn for each object of a resource (a parsed copy); stop when fn
 * returns non-zero. Not under any lock: fn may call anything. */
void rec_each(rec_runtime *rt, const char *resource, int (*fn)(const json_t *obj, void *arg),
              void *arg);

/* 1 once the reflector of resource has completed its first list, so its
 * store holds every object (as of then; later changes follow); 0 before,
 * and for a resource that is not watched. A new leader queues its keys as
 * soon as it leads, possibly before every reflector has listed: a
 * controller that decides from another resource's store ("no binding names
 * this user", "the group does not exist") asks first and requeues. */
int rec_synced(rec_runtime *rt, const char *resource);

ks_kube_client *rec_kube(rec_runtime *rt);
ks_bus *rec_bus(rec_runtime *rt);
const rec_settings *rec_config(rec_runtime *rt);

/* Queue a primary key of controller `controller` (now, or after ms). */
void rec_enqueue(rec_runtime *rt, const char *controller, const char *key);
void rec_enqueue_after(rec_runtime *rt, const char *controller, const char *key, int64_t ms);

/* Count one write to kube-apiserver by controller (idempotence checks). */
void rec_write_count(rec_runtime *rt, const char *controller);

/* Record a core/v1 Event on the object involved (type "Normal" or
 * "Warning", a CamelCase reason, a message). Best effort: failures are
 * logged and counted, never fatal. */
void rec_event(rec_runtime *rt, const json_t *obj, const char *type, const char *reason,
               const char *fmt, ...) __attribute__((format(printf, 5, 6)));

/* The kube API path of an object of resource: "/apis/<g>/<v>/[namespaces/<ns>/]<res>[/<name>]"
 * (name NULL: the collection). */
ks_status rec_path(rec_runtime *rt, const char *resource, const char *ns, const char *name,
                   char *out, size_t cap) __attribute__((warn_unused_result));

/* ---- for the reconciler's main ---- */

/* Build the runtime over the started reflectors (resources[i] is the
 * reflector of reflectors[i]). */
ks_status rec_runtime_create(ks_kube_client *kube, ks_bus *bus, const rec_settings *settings,
                             const ks_reflector_resource *resources,
                             ks_reflector *const *reflectors, size_t n, rec_runtime **out)
    __attribute__((warn_unused_result));
void rec_runtime_destroy(rec_runtime *rt);   /* stops leading first; NULL is a no-op */

/* A reflector event (called for every event; ignored while not leading). */
void rec_runtime_on_event(rec_runtime *rt, const ks_reflector_resource *res,
                          const ks_reflect_event *ev);

/* Start the controllers (queue every primary object) / stop them (their
 * running reconciles finish first). Idempotent. */
void rec_runtime_start_leading(rec_runtime *rt);
void rec_runtime_stop_leading(rec_runtime *rt);

/* The registry (controllers.c): every controller, NULL-terminated. */
extern const rec_controller *const rec_controllers[];

#endif
