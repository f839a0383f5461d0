/* iamctl.h: what the IAM controllers (user.c, loginrecord.c, group.c)
 * share: resource names, object helpers, counted writes, and indexes of the
 * reflectors' stores by user. docs/controllers.md.
 *
 * Indexes. rec_each parses every object of a resource, so "the login records
 * of alice" or "the GlobalRoleBindings naming alice" would cost a scan of the
 * whole store per reconcile. Three indexes answer them by user instead:
 *   IAMX_IDX_LR   LoginRecords, by their label iam.kubesphere.io/user-ref;
 *   IAMX_IDX_GRB  GlobalRoleBindings, by User subjects and the user-ref label;
 *   IAMX_IDX_GB   GroupBindings, by users[] and the user-ref label.
 * An index follows the store through reflector events that a controller's
 * map function hands to iamx_index_event. The runtime calls map functions
 * only while this replica leads, so after a pause in leadership an index may
 * miss changes: it is rebuilt from the store (one rec_each) on its first use
 * after any reconcile ran on a new worker thread (iamx_reconcile_begin). The
 * runtime starts new workers for every leadership term, so every term starts
 * from a rebuilt index. Each index is fed by exactly one controller's map:
 * LR and GRB by "user", GB by "groupbinding".
 *
 * Thread-safety: every function may be called from any thread. */
#ifndef REC_IAMCTL_H
#define REC_IAMCTL_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "../controller.h"

#define IAMX_RES_USERS "iam.kubesphere.io/users"
#define IAMX_RES_LOGINRECORDS "iam.kubesphere.io/loginrecords"
#define IAMX_RES_GLOBALROLEBINDINGS "iam.kubesphere.io/globalrolebindings"
#define IAMX_RES_WORKSPACEROLEBINDINGS "iam.kubesphere.io/workspacerolebindings"
#define IAMX_RES_CLUSTERROLEBINDINGS "iam.kubesphere.io/clusterrolebindings"
#define IAMX_RES_ROLEBINDINGS "iam.kubesphere.io/rolebindings"
#define IAMX_RES_GROUPS "iam.kubesphere.io/groups"
#define IAMX_RES_GROUPBINDINGS "iam.kubesphere.io/groupbindings"

#define IAMX_LABEL_USER_REF "iam.kubesphere.io/user-ref"
#define IAMX_LABEL_GROUP_REF "iam.kubesphere.io/group-ref"

#define IAMX_NAME_MAX 254   /* bytes of an object name (DNS subdomain: 253) */
#define IAMX_KEY_MAX 512    /* "<ns>/<name>" */

/* The controllers (registry.c lists them). */
extern const rec_controller rec_controller_user;          /* user.c */
extern const rec_controller rec_controller_loginrecord;   /* loginrecord.c */
extern const rec_controller rec_controller_group;         /* group.c */
extern const rec_controller rec_controller_groupbinding;  /* group.c */

/* ---- time ---- */

int64_t iamx_now_ms(void);   /* CLOCK_REALTIME in milliseconds */

/* RFC 3339 ("2024-05-01T10:00:00Z", fractions and offsets accepted) to Unix
 * seconds. KS_ERR_INVALID for anything else; *out set only on success. */
ks_status iamx_time_parse(const char *s, int64_t *out) __attribute__((warn_unused_result));

/* Unix seconds to "YYYY-MM-DDTHH:MM:SSZ" (out holds at least 32 bytes). */
void iamx_time_format(int64_t unix_s, char *out, size_t cap);

/* ---- objects ---- */

/* metadata.<field> as a string, "" when absent. */
const char *iamx_meta(const json_t *obj, const char *field);
/* metadata.labels[key] / metadata.annotations[key], NULL when absent. */
const char *iamx_label(const json_t *obj, const char *key);
const char *iamx_annotation(const json_t *obj, const char *key);
/* 1 when metadata.deletionTimestamp is set. */
int iamx_deleting(const json_t *obj);
int iamx_has_finalizer(const json_t *obj, const char *finalizer);
/* Add / remove a finalizer in obj; 1 when obj changed, 0 when it was
 * already so, -1 when out of memory. */
int iamx_add_finalizer(json_t *obj, const char *finalizer);
int iamx_remove_finalizer(json_t *obj, const char *finalizer);
/* Set metadata.annotations[key] = value (creating the map); -1 on NOMEM. */
int iamx_set_annotation(json_t *obj, const char *key, const char *value);

/* Split a work-queue key "<ns>/<name>" (ns may be empty). KS_ERR_INVALID
 * when there is no '/' or a part is too long. */
ks_status iamx_split_key(const char *key, char ns[IAMX_NAME_MAX], char name[IAMX_NAME_MAX])
    __attribute__((warn_unused_result));

/* 1 when the reflector of every resource in the NULL-terminated list has
 * listed (rec_synced). A reconcile that would decide from an incomplete
 * store returns ks_workqueue_retry() instead: the queue's growing backoff,
 * so a resource that never lists cannot make a hot loop. */
int iamx_synced(rec_runtime *rt, const char *const *resources);

/* ---- writes (each counts one write of controller ctl) ---- */

/* PUT obj, which carries the metadata.resourceVersion it was read at, to
 * its path (status != 0: its /status subresource). KS_OK and, when out is
 * not NULL, *out = the object kube-apiserver returned (new reference);
 * KS_ERR_CONFLICT on 409 (requeue); otherwise the kube client's status. */
ks_status iamx_update(rec_runtime *rt, const char *ctl, const char *resource, const json_t *obj,
                      int status, json_t **out) __attribute__((warn_unused_result));

/* DELETE an object with preconditions on its uid and resourceVersion (the
 * version it was read at; either may be NULL or "" to leave it out). KS_OK
 * when it is deleted or already gone (404); KS_ERR_CONFLICT when it changed
 * since it was read, or the name now holds another object (409: requeue and
 * look again); otherwise the kube client's status. */
ks_status iamx_delete(rec_runtime *rt, const char *ctl, const char *resource, const char *ns,
                      const char *name, const char *uid, const char *rv)
    __attribute__((warn_unused_result));

/* ---- indexes ---- */

typedef enum { IAMX_IDX_LR = 0, IAMX_IDX_GRB, IAMX_IDX_GB, IAMX_IDX_N } iamx_idx;

/* One indexed object, as seen by the user it was looked up for. */
typedef struct {
    char ns[IAMX_NAME_MAX];     /* "" (all three kinds are cluster-scoped) */
    char name[IAMX_NAME_MAX];
    char uid[64];
    char rv[64];                /* resourceVersion as indexed */
    char ref[IAMX_NAME_MAX];    /* GRB: roleRef.name; GB: groupRef.name; LR: "" */
    int64_t created;            /* metadata.creationTimestamp, Unix seconds (0: unknown) */
    int success;                /* LR: spec.success */
    int listed;                 /* GRB: a User subject names the user; GB: users[] does */
    int labelled;               /* the user-ref label names the user */
} iamx_item;

/* Call first in every reconcile: marks the indexes for a rebuild when this
 * worker thread has not reconciled before (see the header comment). */
void iamx_reconcile_begin(void);

/* Called by iamx_index_event for each user the object named before or
 * after the change; now is the object after it (NULL when the user is no
 * longer named, or the object was deleted). Runs without the index lock. */
typedef void (*iamx_user_fn)(rec_runtime *rt, const char *user, const iamx_item *now, void *arg);

/* Apply a reflector event of the index's resource, then call fn (may be
 * NULL) for each affected user. */
void iamx_index_event(rec_runtime *rt, iamx_idx idx, const ks_reflect_event *ev, iamx_user_fn fn,
                      void *arg);

/* The objects of the index that name user, rebuilding the index first when
 * it is marked. *items is malloc'd (caller frees; NULL when none), sorted
 * by name. Returns how many, or -1 when out of memory. */
long iamx_index_user(rec_runtime *rt, iamx_idx idx, const char *user, iamx_item **items);

/* Call fn for each user named by an object whose ref equals ref (GB: the
 * users of a group's bindings). */
void iamx_index_ref_users(rec_runtime *rt, iamx_idx idx, const char *ref, iamx_user_fn fn,
                          void *arg);

#endif
