/* loginrecord.c: the login record controller (docs/controllers.md
 * "loginrecord").
 *
 * Keys: the runtime queues "/<record>" for every LoginRecord; this
 * controller queues "user/<name>" for the per-user pass (LoginRecords are
 * cluster-scoped, so no record key has a namespace part). A record's
 * reconcile hands its user to the per-user pass; a record without the
 * label iam.kubesphere.io/user-ref only ages out.
 *
 * The per-user pass, level-triggered:
 *   - the user is gone (the store and then kube-apiserver say so): every
 *     record of the user is an orphan and is deleted;
 *   - records older than the retention period are deleted, and all but the
 *     newest N (by creationTimestamp, then name);
 *   - status.lastLoginTime becomes the time of the newest successful record
 *     when that is later (it never moves back: deleting old records does
 *     not forget the last login);
 *   - the key is requeued for the moment the oldest kept record expires. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iamctl.h"
#include "log.h"

#define CTL "loginrecord"
#define USER_KEY_PREFIX "user/"

static void queue_user_pass(rec_runtime *rt, const char *user)
{
    char key[IAMX_KEY_MAX];
    snprintf(key, sizeof(key), USER_KEY_PREFIX "%s", user);
    rec_enqueue(rt, CTL, key);
}

/* newest first; ties by name, the greater first */
static int newest_first(const void *a, const void *b)
{
    const iamx_item *x = a, *y = b;
    if (x->created != y->created)
        return x->created > y->created ? -1 : 1;
    return -strcmp(x->name, y->name);
}

/* The user as kube-apiserver has it, when the store does not: the store
 * of users may lag the store of records. KS_ERR_NOT_FOUND when it is gone. */
static ks_status user_from_api(rec_runtime *rt, const char *user, json_t **out)
{
    char path[1024];
    ks_status st = rec_path(rt, IAMX_RES_USERS, "", user, path, sizeof(path));
    return st ? st : ks_kube_get(rec_kube(rt), path, out);
}

static ks_workqueue_result warn_retry(rec_runtime *rt, const json_t *obj, ks_status st,
                                      const char *what)
{
    if (st != KS_ERR_CONFLICT) {
        ks_warn("loginrecord: %s: %s", what, ks_status_last());
        if (obj != NULL)
            rec_event(rt, obj, "Warning", "LoginRecordSyncFailed", "%s: %s", what,
                      ks_status_last());
    }
    return ks_workqueue_retry();
}

static ks_workqueue_result user_pass(rec_runtime *rt, const char *user)
{
    const rec_settings *cfg = rec_config(rt);
    int64_t now_s = iamx_now_ms() / 1000, retention_s = cfg->loginrecord_retention_ms / 1000;
    int64_t next_expiry = 0, last_login = 0, cur_login = 0;
    iamx_item *items = NULL;
    json_t *u = NULL;
    ks_status st;
    long n, kept = 0;
    int orphans = 0;
    ks_workqueue_result res = ks_workqueue_ok();

    st = rec_get(rt, IAMX_RES_USERS, "", user, &u);
    if (st == KS_ERR_NOT_FOUND) {
        st = user_from_api(rt, user, &u);
        if (st == KS_ERR_NOT_FOUND)
            orphans = 1;
        else if (st)
            return ks_workqueue_retry();
    } else if (st) {
        return ks_workqueue_retry();
    }
    if (u != NULL && iamx_deleting(u)) {
        json_decref(u);   /* the user controller removes them */
        return ks_workqueue_ok();
    }
    n = iamx_index_user(rt, IAMX_IDX_LR, user, &items);
    if (n < 0) {
        json_decref(u);
        return ks_workqueue_retry();
    }
    if (n > 1)
        qsort(items, (size_t)n, sizeof(*items), newest_first);
    for (long i = 0; i < n; i++) {
        const iamx_item *it = &items[i];
        int expired = it->created > 0 && it->created + retention_s <= now_s;
        int beyond = kept >= cfg->loginrecord_max_per_user;

        if (it->success && it->created > last_login)
            last_login = it->created;
        if (orphans || expired || beyond) {
            st = iamx_delete(rt, CTL, IAMX_RES_LOGINRECORDS, "", it->name, it->uid, it->rv);
            if (st) {
                res = warn_retry(rt, u, st, "cannot delete a login record");
                goto out;
            }
            ks_debug("loginrecord %s of %s deleted (%s)", it->name, user,
                     orphans ? "orphan" : expired ? "expired" : "over the limit");
            continue;
        }
        kept++;
        if (it->created > 0 && (next_expiry == 0 || it->created + retention_s < next_expiry))
            next_expiry = it->created + retention_s;
    }
    if (orphans) {
        if (n > 0)
            ks_info("loginrecord: deleted %ld records of the missing user %s", n, user);
        goto out;
    }
    {
        const char *ts = json_string_value(
            json_object_get(json_object_get(u, "status"), "lastLoginTime"));
        if (ts == NULL || iamx_time_parse(ts, &cur_login) != KS_OK)
            cur_login = 0;
    }
    if (last_login > cur_login) {
        json_t *obj = json_deep_copy(u), *status;
        char buf[32];

        if (obj == NULL) {
            res = ks_workqueue_retry();
            goto out;
        }
        status = json_object_get(obj, "status");
        if (!json_is_object(status)) {
            status = json_object();
            json_object_set_new(obj, "status", status);
        }
        iamx_time_format(last_login, buf, sizeof(buf));
        json_object_set_new(status, "lastLoginTime", json_string(buf));
        st = iamx_update(rt, CTL, IAMX_RES_USERS, obj, 1, NULL);
        json_decref(obj);
        if (st) {
            res = warn_retry(rt, u, st, "cannot update the user's lastLoginTime");
            goto out;
        }
    }
    if (next_expiry > 0)
        res = ks_workqueue_requeue_after((next_expiry - now_s) * 1000 + 1000);
out:
    free(items);
    json_decref(u);
    return res;
}

static ks_workqueue_result record_pass(rec_runtime *rt, const char *name)
{
    const rec_settings *cfg = rec_config(rt);
    json_t *lr = NULL;
    const char *user, *ts;
    int64_t created, expiry_ms;
    ks_status st = rec_get(rt, IAMX_RES_LOGINRECORDS, "", name, &lr);

    if (st == KS_ERR_NOT_FOUND)
        return ks_workqueue_ok();
    if (st)
        return ks_workqueue_retry();
    user = iamx_label(lr, IAMX_LABEL_USER_REF);
    if (user != NULL && user[0] != '\0') {
        queue_user_pass(rt, user);
        json_decref(lr);
        return ks_workqueue_ok();
    }
    /* Nobody's record: it only ages out. */
    ts = iamx_meta(lr, "creationTimestamp");
    if (iamx_time_parse(ts, &created) != KS_OK) {
        json_decref(lr);
        return ks_workqueue_ok();
    }
    expiry_ms = (created * 1000 + cfg->loginrecord_retention_ms) - iamx_now_ms();
    if (expiry_ms > 0) {
        json_decref(lr);
        return ks_workqueue_requeue_after(expiry_ms + 1000);
    }
    st = iamx_delete(rt, CTL, IAMX_RES_LOGINRECORDS, "", name, iamx_meta(lr, "uid"),
                     iamx_meta(lr, "resourceVersion"));
    if (st) {
        ks_workqueue_result r = warn_retry(rt, lr, st, "cannot delete an expired login record");
        json_decref(lr);
        return r;
    }
    json_decref(lr);
    return ks_workqueue_ok();
}

static ks_workqueue_result loginrecord_reconcile(rec_runtime *rt, const char *key)
{
    char ns[IAMX_NAME_MAX], name[IAMX_NAME_MAX];

    static const char *const reads[] = {IAMX_RES_USERS, IAMX_RES_LOGINRECORDS, NULL};

    iamx_reconcile_begin();
    if (iamx_split_key(key, ns, name) != KS_OK) {
        ks_warn("loginrecord controller: ignoring the key %.100s: %s", key, ks_status_last());
        return ks_workqueue_ok();
    }
    if (!iamx_synced(rt, reads))
        return ks_workqueue_retry();
    if (strcmp(ns, "user") == 0)
        return user_pass(rt, name);
    return record_pass(rt, name);
}

/* A user that appears or goes: its records' pass (orphans, lastLoginTime). */
static void loginrecord_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)
{
    if (strcmp(resource, IAMX_RES_USERS) == 0 && ev->type != KS_REFLECT_MODIFIED)
        queue_user_pass(rt, ev->name);
}

static const char *const loginrecord_also_watch[] = {IAMX_RES_USERS, NULL};

const rec_controller rec_controller_loginrecord = {
    .name = CTL,
    .primary = IAMX_RES_LOGINRECORDS,
    .also_watch = loginrecord_also_watch,
    .map = loginrecord_map,
    .reconcile = loginrecord_reconcile,
    .workers = 2,
};
