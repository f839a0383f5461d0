/* policy.c: feeds the RBAC store (s->rbac) from the mirror (docs/iam-rbac.md).
 *
 * One mirror change handler per resource:
 *   the eight role and binding kinds  -> ks_rbac_apply / ks_rbac_remove
 *   namespaces (kubesphere.io/workspace label) -> ks_rbac_set_namespace_workspace
 *   users (spec.groups) and groupbindings (groupRef.name, users)
 *                                     -> ks_rbac_set_user_groups
 * A user's groups are the union of User.spec.groups and the groups of every
 * GroupBinding that lists the user: KubeSphere's GroupBinding controller
 * copies the second into the first, but a decision must not wait for a
 * controller (or depend on one being deployed) to see a membership.
 *
 * The handlers run one at a time on the mirror's watch thread (and, for the
 * replay of what is already indexed, in iam_policy_start); the mutex only
 * guards against a stop that races a late call. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "iam.h"
#include "log.h"
#include "metrics.h"
#include "strmap.h"

#define WS_LABEL "kubesphere.io/workspace"
#define RES_GROUPBINDINGS "iam.kubesphere.io/groupbindings"

typedef struct {
    const char *resource;
    const char *kind;
    int namespaced;
} policy_kind;

static const policy_kind role_kinds[] = {
    {"iam.kubesphere.io/globalroles", "GlobalRole", 0},
    {"iam.kubesphere.io/globalrolebindings", "GlobalRoleBinding", 0},
    {"iam.kubesphere.io/workspaceroles", "WorkspaceRole", 0},
    {"iam.kubesphere.io/workspacerolebindings", "WorkspaceRoleBinding", 0},
    {"iam.kubesphere.io/clusterroles", "ClusterRole", 0},
    {"iam.kubesphere.io/clusterrolebindings", "ClusterRoleBinding", 0},
    {"iam.kubesphere.io/roles", "Role", 1},
    {"iam.kubesphere.io/rolebindings", "RoleBinding", 1},
};
#define NKINDS (sizeof(role_kinds) / sizeof(role_kinds[0]))

/* A small owned list of strings. */
typedef struct {
    char **v;
    size_t n, cap;
} strlist;

/* One GroupBinding as last seen. */
typedef struct {
    char *group;
    strlist users;
} gb_entry;

static struct {
    pthread_mutex_t mu;
    iam *s;
    ks_strmap *spec_groups;  /* user -> strlist* (User.spec.groups) */
    ks_strmap *gbs;          /* GroupBinding name -> gb_entry* */
    ks_strmap *user_gbs;     /* user -> strlist* of GroupBinding names */
    int ids[NKINDS + 3];
    size_t nids;
    ks_metric *m_changes;
    ks_metric *m_invalid;
    ks_metric *m_groups_cut;
} P = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* ---- string lists ---- */

static void strlist_clear(strlist *l)
{
    for (size_t i = 0; i < l->n; i++)
        free(l->v[i]);
    free(l->v);
    memset(l, 0, sizeof(*l));
}

static void strlist_free(void *p)
{
    if (p != NULL) {
        strlist_clear(p);
        free(p);
    }
}

static int strlist_has(const strlist *l, const char *s)
{
    for (size_t i = 0; l != NULL && i < l->n; i++)
        if (strcmp(l->v[i], s) == 0)
            return 1;
    return 0;
}

static ks_status strlist_add(strlist *l, const char *s)
{
    char *copy;

    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 4;
        char **v = realloc(l->v, cap * sizeof(*v));
        if (v == NULL)
            return KS_FAIL(KS_ERR_NOMEM, "policy: string list");
        l->v = v;
        l->cap = cap;
    }
    if ((copy = strdup(s)) == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "policy: string list");
    l->v[l->n++] = copy;
    return KS_OK;
}

static void strlist_del(strlist *l, const char *s)
{
    for (size_t i = 0; i < l->n; i++) {
        if (strcmp(l->v[i], s) == 0) {
            free(l->v[i]);
            l->v[i] = l->v[--l->n];
            return;
        }
    }
}

/* The non-empty strings of a JSON array, without duplicates. Non-strings
 * are skipped (counted in *skipped). */
static ks_status strlist_from_json(const json_t *arr, strlist *out, size_t *skipped)
{
    size_t i;
    json_t *v;

    json_array_foreach(arr, i, v) {
        const char *str = json_string_value(v);
        if (str == NULL || str[0] == '\0') {
            (*skipped)++;
            continue;
        }
        if (!strlist_has(out, str) && strlist_add(out, str) != KS_OK)
            return KS_ERR_NOMEM;
    }
    return KS_OK;
}

static void gb_free(void *p)
{
    gb_entry *e = p;
    if (e != NULL) {
        free(e->group);
        strlist_clear(&e->users);
        free(e);
    }
}

/* ---- a user's groups ---- */

/* Give the store the union of the user's spec.groups and GroupBinding groups. */
static void user_groups_sync(const char *user)
{
    const char *groups[KS_RBAC_MAX_GROUPS];
    const strlist *spec = ks_strmap_get(P.spec_groups, user);
    const strlist *gbl = ks_strmap_get(P.user_gbs, user);
    size_t n = 0, dropped = 0;
    ks_status st;

#define ADD_GROUP(g)                                                        \
    do {                                                                    \
        const char *g_ = (g);                                               \
        int dup_ = 0;                                                       \
        for (size_t k_ = 0; k_ < n && !dup_; k_++)                          \
            dup_ = strcmp(groups[k_], g_) == 0;                             \
        if (dup_)                                                           \
            break;                                                          \
        if (n < KS_RBAC_MAX_GROUPS)                                         \
            groups[n++] = g_;                                               \
        else                                                                \
            dropped++;                                                      \
    } while (0)

    for (size_t i = 0; spec != NULL && i < spec->n; i++)
        ADD_GROUP(spec->v[i]);
    for (size_t i = 0; gbl != NULL && i < gbl->n; i++) {
        const gb_entry *e = ks_strmap_get(P.gbs, gbl->v[i]);
        if (e != NULL && e->group != NULL)
            ADD_GROUP(e->group);
    }
#undef ADD_GROUP
    if (dropped > 0) {
        /* Fewer groups grant less, never more: keep the first ones. */
        ks_warn("policy: user %s is in more than %d groups; %zu left out of decisions", user,
                KS_RBAC_MAX_GROUPS, dropped);
        ks_metric_inc(P.m_groups_cut);
    }
    st = ks_rbac_set_user_groups(P.s->rbac, user, n ? groups : NULL, n);
    if (st)
        ks_error("policy: cannot set the groups of user %s: %s", user, ks_status_last());
}

/* ---- handlers ---- */

/* Log and count an object the policy cannot use as it is; what is done
 * with it is part of why. */
static void invalid(const char *kind, const char *ns, const char *name, const char *why)
{
    ks_warn("policy: %s %s%s%s: %s", kind, ns && ns[0] ? ns : "", ns && ns[0] ? "/" : "", name,
            why);
    ks_metric_inc(P.m_invalid);
}

static void on_role(ks_mirror_change type, const char *resource, const char *ns,
                    const char *name, const json_t *old_obj, const json_t *new_obj, void *arg)
{
    const policy_kind *k = arg;
    ks_status st;

    (void)resource;
    (void)old_obj;
    pthread_mutex_lock(&P.mu);
    if (P.s == NULL)
        goto out;
    ks_metric_inc(P.m_changes);
    if (type == KS_MIRROR_DELETED) {
        st = ks_rbac_remove(P.s->rbac, k->kind, k->namespaced ? ns : NULL, name);
        if (st && st != KS_ERR_NOT_FOUND)
            ks_error("policy: cannot remove %s %s: %s", k->kind, name, ks_status_last());
        goto out;
    }
    st = ks_rbac_apply(P.s->rbac, k->kind, new_obj);
    if (st == KS_ERR_INVALID) {
        char why[600];
        snprintf(why, sizeof(why), "refused, and its previous version removed: %s",
                 ks_status_last());
        invalid(k->kind, ns, name, why);
        /* The previous version must not keep granting. */
        st = ks_rbac_remove(P.s->rbac, k->kind, k->namespaced ? ns : NULL, name);
        if (st && st != KS_ERR_NOT_FOUND)
            ks_error("policy: cannot remove %s %s: %s", k->kind, name, ks_status_last());
    } else if (st) {
        ks_error("policy: cannot apply %s %s: %s", k->kind, name, ks_status_last());
    }
out:
    pthread_mutex_unlock(&P.mu);
}

static void on_namespace(ks_mirror_change type, const char *resource, const char *ns,
                         const char *name, const json_t *old_obj, const json_t *new_obj,
                         void *arg)
{
    const char *ws = NULL;
    ks_status st;

    (void)resource;
    (void)ns;
    (void)old_obj;
    (void)arg;
    if (type != KS_MIRROR_DELETED) {
        const json_t *labels = json_object_get(json_object_get(new_obj, "metadata"), "labels");
        ws = json_string_value(json_object_get(labels, WS_LABEL));
    }
    pthread_mutex_lock(&P.mu);
    if (P.s != NULL) {
        ks_metric_inc(P.m_changes);
        st = ks_rbac_set_namespace_workspace(P.s->rbac, name, ws);
        if (st)
            ks_error("policy: cannot record the workspace of namespace %s: %s", name,
                     ks_status_last());
    }
    pthread_mutex_unlock(&P.mu);
}

static void on_user(ks_mirror_change type, const char *resource, const char *ns,
                    const char *name, const json_t *old_obj, const json_t *new_obj, void *arg)
{
    strlist *groups = NULL;
    size_t skipped = 0;

    (void)resource;
    (void)ns;
    (void)old_obj;
    (void)arg;
    pthread_mutex_lock(&P.mu);
    if (P.s == NULL)
        goto out;
    ks_metric_inc(P.m_changes);
    if (type != KS_MIRROR_DELETED) {
        const json_t *arr = json_object_get(json_object_get(new_obj, "spec"), "groups");
        if (arr != NULL && !json_is_array(arr)) {
            invalid("User", NULL, name,
                    "spec.groups is not an array; the user gets no groups from it");
        } else if (json_array_size(arr) > 0) {
            if ((groups = calloc(1, sizeof(*groups))) == NULL ||
                strlist_from_json(arr, groups, &skipped) != KS_OK) {
                ks_error("policy: out of memory reading the groups of user %s", name);
                strlist_free(groups);
                groups = NULL;
            } else if (skipped > 0) {
                invalid("User", NULL, name,
                        "spec.groups holds empty or non-string entries (skipped)");
            }
        }
    }
    if (groups != NULL && groups->n > 0) {
        if (ks_strmap_put(P.spec_groups, name, groups) != KS_OK) {
            strlist_free(groups);
            ks_strmap_remove(P.spec_groups, name);
        }
    } else {
        strlist_free(groups);
        ks_strmap_remove(P.spec_groups, name);
    }
    user_groups_sync(name);
out:
    pthread_mutex_unlock(&P.mu);
}

static void on_groupbinding(ks_mirror_change type, const char *resource, const char *ns,
                            const char *name, const json_t *old_obj, const json_t *new_obj,
                            void *arg)
{
    gb_entry *e = NULL, *old;
    strlist affected = {0};
    size_t skipped = 0;

    (void)resource;
    (void)ns;
    (void)old_obj;
    (void)arg;
    pthread_mutex_lock(&P.mu);
    if (P.s == NULL)
        goto out;
    ks_metric_inc(P.m_changes);
    if (type != KS_MIRROR_DELETED) {
        const json_t *ref = json_object_get(new_obj, "groupRef");
        const char *group = json_string_value(json_object_get(ref, "name"));
        const char *kind = json_string_value(json_object_get(ref, "kind"));
        const json_t *users = json_object_get(new_obj, "users");

        if (group == NULL || group[0] == '\0')
            invalid("GroupBinding", NULL, name,
                    "groupRef.name is missing; it puts nobody in a group");
        else if (kind != NULL && kind[0] != '\0' && strcmp(kind, "Group") != 0)
            invalid("GroupBinding", NULL, name,
                    "groupRef.kind is not Group; it puts nobody in a group");
        else if (users != NULL && !json_is_array(users))
            invalid("GroupBinding", NULL, name,
                    "users is not an array; it puts nobody in a group");
        else if ((e = calloc(1, sizeof(*e))) == NULL || (e->group = strdup(group)) == NULL ||
                 strlist_from_json(users, &e->users, &skipped) != KS_OK) {
            ks_error("policy: out of memory reading GroupBinding %s", name);
            gb_free(e);
            e = NULL;
        } else if (skipped > 0) {
            invalid("GroupBinding", NULL, name,
                    "users holds empty or non-string entries (skipped)");
        }
    }
    /* Unlink the old version from its users, link the new one. */
    old = ks_strmap_take(P.gbs, name);
    for (size_t i = 0; old != NULL && i < old->users.n; i++) {
        strlist *l = ks_strmap_get(P.user_gbs, old->users.v[i]);
        if (l != NULL) {
            strlist_del(l, name);
            if (l->n == 0)
                ks_strmap_remove(P.user_gbs, old->users.v[i]);
        }
        if (!strlist_has(&affected, old->users.v[i]))
            (void)strlist_add(&affected, old->users.v[i]);
    }
    gb_free(old);
    if (e != NULL && ks_strmap_put(P.gbs, name, e) != KS_OK) {
        ks_error("policy: out of memory storing GroupBinding %s", name);
        gb_free(e);
        e = NULL;
    }
    for (size_t i = 0; e != NULL && i < e->users.n; i++) {
        const char *u = e->users.v[i];
        strlist *l = ks_strmap_get(P.user_gbs, u);
        if (l == NULL) {
            if ((l = calloc(1, sizeof(*l))) == NULL || ks_strmap_put(P.user_gbs, u, l) != KS_OK) {
                free(l);
                ks_error("policy: out of memory linking user %s to GroupBinding %s", u, name);
                continue;
            }
        }
        if (!strlist_has(l, name))
            (void)strlist_add(l, name);
        if (!strlist_has(&affected, u))
            (void)strlist_add(&affected, u);
    }
    for (size_t i = 0; i < affected.n; i++)
        user_groups_sync(affected.v[i]);
    strlist_clear(&affected);
out:
    pthread_mutex_unlock(&P.mu);
}

/* ---- start and stop ---- */

static ks_status add_handler(iam *s, const char *resource, ks_mirror_change_fn fn, void *arg)
{
    int id;
    ks_status st = ks_mirror_cache_add_handler(s->mirror, resource, fn, arg, &id);

    if (st == KS_OK)
        P.ids[P.nids++] = id;
    return st;
}

ks_status iam_policy_start(iam *s)
{
    ks_status st = KS_OK;

    if (s->mirror == NULL || s->rbac == NULL)
        return KS_FAIL(KS_ERR_INVALID, "policy: iam has no mirror or no RBAC store");
    pthread_mutex_lock(&P.mu);
    P.spec_groups = ks_strmap_create(strlist_free);
    P.gbs = ks_strmap_create(gb_free);
    P.user_gbs = ks_strmap_create(strlist_free);
    P.m_changes = ks_metrics_counter("ks_iam_policy_changes_total",
                                     "mirror changes applied to the RBAC store", NULL);
    P.m_invalid = ks_metrics_counter(
        "ks_iam_policy_invalid_total",
        "roles, bindings, users or group bindings the RBAC store refused (their old version "
        "was removed)",
        NULL);
    P.m_groups_cut = ks_metrics_counter(
        "ks_iam_policy_groups_truncated_total",
        "users with more groups than a decision takes (the rest were left out)", NULL);
    if (P.spec_groups == NULL || P.gbs == NULL || P.user_gbs == NULL)
        st = KS_FAIL(KS_ERR_NOMEM, "policy maps");
    else
        P.s = s;
    pthread_mutex_unlock(&P.mu);
    if (st)
        goto out;
    /* Namespaces and memberships first: the replay of bindings then finds
     * them in place (the order does not matter for correctness). */
    if ((st = add_handler(s, IAM_RES_NAMESPACES, on_namespace, NULL)) ||
        (st = add_handler(s, IAM_RES_USERS, on_user, NULL)) ||
        (st = add_handler(s, RES_GROUPBINDINGS, on_groupbinding, NULL)))
        goto out;
    for (size_t i = 0; i < NKINDS; i++)
        if ((st = add_handler(s, role_kinds[i].resource, on_role, (void *)&role_kinds[i])))
            goto out;
    ks_info("policy: following %zu mirror resources into the RBAC store", P.nids);
out:
    if (st)
        iam_policy_stop(s);
    return st;
}

void iam_policy_stop(iam *s)
{
    if (s == NULL || s->mirror == NULL)
        return;
    /* After remove_handler returns, no handler runs again. */
    for (size_t i = 0; i < P.nids; i++)
        ks_mirror_cache_remove_handler(s->mirror, P.ids[i]);
    P.nids = 0;
    pthread_mutex_lock(&P.mu);
    P.s = NULL;
    ks_strmap_destroy(P.spec_groups);
    ks_strmap_destroy(P.gbs);
    ks_strmap_destroy(P.user_gbs);
    P.spec_groups = P.gbs = P.user_gbs = NULL;
    pthread_mutex_unlock(&P.mu);
}
