/* group.c: the group and group binding controllers (docs/controllers.md
 * "group").
 *
 * "group" (primary Groups): the finalizer finalizers.kubesphere.io/groups;
 * on delete, the group's GroupBindings (groupRef.name = the group, or the
 * label iam.kubesphere.io/group-ref) and every binding (GlobalRoleBinding,
 * WorkspaceRoleBinding, ClusterRoleBinding, RoleBinding) labelled
 * iam.kubesphere.io/group-ref=<group> are deleted, then the finalizer goes.
 *
 * "groupbinding" (primary Users): User.spec.groups is kept equal to the set
 * of groups whose GroupBindings list the user in users[], counting only
 * groups that exist and are not being deleted. Groups the user keeps stay
 * in their order; new ones are appended in name order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iamctl.h"
#include "log.h"

#define CTL_GROUP "group"
#define CTL_GB "groupbinding"
#define FINALIZER "finalizers.kubesphere.io/groups"

/* ---- group ---- */

typedef struct {
    const char *group;
    int by_ref;        /* GroupBindings: groupRef.name counts too */
    char (*found)[2][IAMX_NAME_MAX + 64];
    size_t n, cap;
    int nomem;
} group_scan;

static int scan_group_owned(const json_t *obj, void *arg)
{
    group_scan *c = arg;
    const char *label = iamx_label(obj, IAMX_LABEL_GROUP_REF);
    const char *ref =
        json_string_value(json_object_get(json_object_get(obj, "groupRef"), "name"));
    int mine = (label != NULL && strcmp(label, c->group) == 0) ||
               (c->by_ref && ref != NULL && strcmp(ref, c->group) == 0);

    if (!mine)
        return 0;
    if (c->n == c->cap) {
        size_t cap = c->cap ? c->cap * 2 : 8;
        void *nf = realloc(c->found, cap * sizeof(*c->found));
        if (nf == NULL) {
            c->nomem = 1;
            return 1;
        }
        c->found = nf;
        c->cap = cap;
    }
    snprintf(c->found[c->n][0], sizeof(c->found[c->n][0]), "%s", iamx_meta(obj, "namespace"));
    snprintf(c->found[c->n][1], sizeof(c->found[c->n][1]), "%s", iamx_meta(obj, "name"));
    c->n++;
    return 0;
}

static ks_status group_cascade(rec_runtime *rt, const char *group)
{
    static const char *const owned[] = {IAMX_RES_GROUPBINDINGS, IAMX_RES_GLOBALROLEBINDINGS,
                                        IAMX_RES_WORKSPACEROLEBINDINGS,
                                        IAMX_RES_CLUSTERROLEBINDINGS, IAMX_RES_ROLEBINDINGS};
    ks_status st = KS_OK;

    for (size_t k = 0; k < sizeof(owned) / sizeof(owned[0]) && st == KS_OK; k++) {
        group_scan c = {.group = group, .by_ref = k == 0};
        rec_each(rt, owned[k], scan_group_owned, &c);
        if (c.nomem)
            st = KS_FAIL(KS_ERR_NOMEM, "bindings of the group %s", group);
        for (size_t i = 0; i < c.n && st == KS_OK; i++) {
            json_t *obj = NULL;
            ks_status g = rec_get(rt, owned[k], c.found[i][0], c.found[i][1], &obj);
            if (g == KS_ERR_NOT_FOUND)
                continue;
            if (g) {
                st = g;
                break;
            }
            st = iamx_delete(rt, CTL_GROUP, owned[k], c.found[i][0], c.found[i][1],
                             iamx_meta(obj, "uid"), iamx_meta(obj, "resourceVersion"));
            json_decref(obj);
        }
        free(c.found);
    }
    return st;
}

static ks_workqueue_result group_fail(rec_runtime *rt, const json_t *g, ks_status st,
                                      const char *what)
{
    if (st != KS_ERR_CONFLICT) {
        ks_warn("group %s: %s: %s", iamx_meta(g, "name"), what, ks_status_last());
        rec_event(rt, g, "Warning", "GroupSyncFailed", "%s: %s", what, ks_status_last());
    }
    return ks_workqueue_retry();
}

static ks_workqueue_result group_reconcile(rec_runtime *rt, const char *key)
{
    char ns[IAMX_NAME_MAX], name[IAMX_NAME_MAX];
    json_t *g = NULL, *obj = NULL;
    ks_workqueue_result res = ks_workqueue_ok();
    ks_status st;

    static const char *const reads[] = {
        IAMX_RES_GROUPS, IAMX_RES_GROUPBINDINGS, IAMX_RES_GLOBALROLEBINDINGS,
        IAMX_RES_WORKSPACEROLEBINDINGS, IAMX_RES_CLUSTERROLEBINDINGS, IAMX_RES_ROLEBINDINGS, NULL};

    iamx_reconcile_begin();
    if (iamx_split_key(key, ns, name) != KS_OK)
        return ks_workqueue_ok();
    if (!iamx_synced(rt, reads))
        return ks_workqueue_retry();
    st = rec_get(rt, IAMX_RES_GROUPS, "", name, &g);
    if (st == KS_ERR_NOT_FOUND)
        return ks_workqueue_ok();
    if (st)
        return ks_workqueue_retry();
    if (!iamx_deleting(g)) {
        if (!iamx_has_finalizer(g, FINALIZER)) {
            obj = json_deep_copy(g);
            if (obj == NULL || iamx_add_finalizer(obj, FINALIZER) < 0) {
                res = ks_workqueue_retry();
            } else if ((st = iamx_update(rt, CTL_GROUP, IAMX_RES_GROUPS, obj, 0, NULL)) != KS_OK) {
                res = group_fail(rt, g, st, "cannot add the finalizer");
            }
        }
        goto out;
    }
    if (!iamx_has_finalizer(g, FINALIZER))
        goto out;
    st = group_cascade(rt, name);
    if (st) {
        res = group_fail(rt, g, st, "cannot delete the group's bindings");
        goto out;
    }
    obj = json_deep_copy(g);
    if (obj == NULL) {
        res = ks_workqueue_retry();
        goto out;
    }
    iamx_remove_finalizer(obj, FINALIZER);
    st = iamx_update(rt, CTL_GROUP, IAMX_RES_GROUPS, obj, 0, NULL);
    if (st)
        res = group_fail(rt, g, st, "cannot remove the finalizer");
    else
        ks_info("group %s: deleted with its bindings", name);
out:
    json_decref(obj);
    json_decref(g);
    return res;
}

const rec_controller rec_controller_group = {
    .name = CTL_GROUP,
    .primary = IAMX_RES_GROUPS,
    .reconcile = group_reconcile,
    .workers = 1,
};

/* ---- groupbinding: User.spec.groups ---- */

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

static int group_live(rec_runtime *rt, const char *group)
{
    json_t *g = NULL;
    int live;

    if (rec_get(rt, IAMX_RES_GROUPS, "", group, &g) != KS_OK)
        return 0;
    live = !iamx_deleting(g);
    json_decref(g);
    return live;
}

static int in_list(const char *const *list, size_t n, const char *s)
{
    for (size_t i = 0; i < n; i++)
        if (strcmp(list[i], s) == 0)
            return 1;
    return 0;
}

static ks_workqueue_result gb_reconcile(rec_runtime *rt, const char *key)
{
    char ns[IAMX_NAME_MAX], name[IAMX_NAME_MAX];
    json_t *u = NULL, *obj = NULL, *groups = NULL, *cur;
    iamx_item *items = NULL;
    const char **want = NULL;
    size_t nwant = 0, i;
    long n;
    int same = 1;
    json_t *g;
    ks_workqueue_result res = ks_workqueue_ok();
    ks_status st;

    static const char *const reads[] = {IAMX_RES_USERS, IAMX_RES_GROUPBINDINGS, IAMX_RES_GROUPS,
                                        NULL};

    iamx_reconcile_begin();
    if (iamx_split_key(key, ns, name) != KS_OK)
        return ks_workqueue_ok();
    if (!iamx_synced(rt, reads))
        return ks_workqueue_retry();
    st = rec_get(rt, IAMX_RES_USERS, "", name, &u);
    if (st == KS_ERR_NOT_FOUND)
        return ks_workqueue_ok();
    if (st)
        return ks_workqueue_retry();
    if (iamx_deleting(u))
        goto out;
    n = iamx_index_user(rt, IAMX_IDX_GB, name, &items);
    if (n < 0 || (n > 0 && (want = calloc((size_t)n, sizeof(*want))) == NULL)) {
        res = ks_workqueue_retry();
        goto out;
    }
    for (long k = 0; k < n; k++) {
        if (items[k].listed && items[k].ref[0] != '\0' &&
            !in_list(want, nwant, items[k].ref) && group_live(rt, items[k].ref))
            want[nwant++] = items[k].ref;
    }
    /* Compare as sets (a duplicate in spec.groups is a difference too). */
    cur = json_object_get(json_object_get(u, "spec"), "groups");
    {
        size_t ncur = 0;
        json_array_foreach(cur, i, g) {
            const char *s = json_string_value(g);
            int dup = 0;
            for (size_t j = 0; j < i && !dup; j++)
                dup = json_equal(json_array_get(cur, j), g);
            if (s == NULL || dup || !in_list(want, nwant, s))
                same = 0;
            ncur++;
        }
        if (ncur != nwant)
            same = 0;
    }
    if (same)
        goto out;
    groups = json_array();
    obj = json_deep_copy(u);
    if (groups == NULL || obj == NULL || !json_is_object(json_object_get(obj, "spec"))) {
        res = ks_workqueue_retry();
        goto out;
    }
    /* keep the order of the groups that stay, then the new ones by name */
    json_array_foreach(cur, i, g) {
        const char *s = json_string_value(g);
        int dup = 0;
        for (size_t j = 0; j < json_array_size(groups) && !dup; j++)
            dup = json_equal(json_array_get(groups, j), g);
        if (s != NULL && !dup && in_list(want, nwant, s))
            json_array_append(groups, g);
    }
    if (nwant > 1)
        qsort(want, nwant, sizeof(*want), cmp_str);
    for (size_t k = 0; k < nwant; k++) {
        int have = 0;
        json_array_foreach(groups, i, g) have |= strcmp(json_string_value(g), want[k]) == 0;
        if (!have)
            json_array_append_new(groups, json_string(want[k]));
    }
    json_object_set(json_object_get(obj, "spec"), "groups", groups);
    st = iamx_update(rt, CTL_GB, IAMX_RES_USERS, obj, 0, NULL);
    if (st) {
        if (st != KS_ERR_CONFLICT) {
            ks_warn("user %s: cannot update spec.groups: %s", name, ks_status_last());
            rec_event(rt, u, "Warning", "GroupSyncFailed", "cannot update spec.groups: %s",
                      ks_status_last());
        }
        res = ks_workqueue_retry();
    } else {
        ks_info("user %s: spec.groups now has %zu groups", name, json_array_size(groups));
    }
out:
    free(want);
    free(items);
    json_decref(groups);
    json_decref(obj);
    json_decref(u);
    return res;
}

static void queue_member(rec_runtime *rt, const char *user, const iamx_item *now, void *arg)
{
    char key[IAMX_KEY_MAX];
    snprintf(key, sizeof(key), "/%s", user);
    rec_enqueue(rt, CTL_GB, key);
}

static void gb_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)
{
    if (strcmp(resource, IAMX_RES_GROUPBINDINGS) == 0)
        iamx_index_event(rt, IAMX_IDX_GB, ev, queue_member, NULL);
    else if (strcmp(resource, IAMX_RES_GROUPS) == 0)
        /* a group appears, goes, or starts being deleted: its members */
        iamx_index_ref_users(rt, IAMX_IDX_GB, ev->name, queue_member, NULL);
}

static const char *const gb_also_watch[] = {IAMX_RES_GROUPBINDINGS, IAMX_RES_GROUPS, NULL};

const rec_controller rec_controller_groupbinding = {
    .name = CTL_GB,
    .primary = IAMX_RES_USERS,
    .also_watch = gb_also_watch,
    .map = gb_map,
    .reconcile = gb_reconcile,
    .workers = 2,
};
