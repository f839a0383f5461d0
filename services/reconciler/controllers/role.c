/* role.c: role aggregation (issue Controllers, item 3) and role references.
 *
 * Aggregation: one controller per role kind (the runtime has one primary
 * resource per controller), sharing this code. A role with
 * aggregationRoleTemplates gets every rule of its templates that its rules do
 * not already cover (lib/rbacrule: exact coverage in lib/rbac's semantics).
 * Rules are only ever added. The templates are the RoleTemplates named in
 * templateNames or, when that list is empty, those roleSelector selects;
 * either way only templates whose iam.kubesphere.io/scope label is the role's
 * scope. A RoleTemplate change queues every role that names or selects it.
 *
 * Role references: one controller per binding kind reports, with a Warning
 * Event on the binding, a roleRef to a role that does not exist (retried
 * with the queue's growing backoff, and queued at once when the role
 * appears), to a role template, or to another workspace's role.
 * docs/controllers.md, "role aggregation". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../controller.h"
#include "ctlkit.h"
#include "labelsel.h"
#include "log.h"
#include "rbacrule.h"

#define IAM "iam.kubesphere.io"
#define SCOPE_LABEL "iam.kubesphere.io/scope"
#define TEMPLATE_LABEL "iam.kubesphere.io/role-template"
#define WORKSPACE_LABEL "kubesphere.io/workspace"
#define RES_TEMPLATES IAM "/roletemplates"

/* ---- the role kinds ---- */

typedef struct {
    const char *ctl;        /* the aggregation controller */
    const char *resource;   /* the role resource */
    const char *kind;
    const char *scope;      /* the iam.kubesphere.io/scope of its templates */
    int namespaced;
} role_kind;

enum { RK_GLOBAL, RK_WORKSPACE, RK_CLUSTER, RK_NAMESPACE, RK_COUNT };

#define RK_GLOBAL_CTL "aggregate-globalroles"
#define RK_GLOBAL_RES IAM "/globalroles"
#define RK_WORKSPACE_CTL "aggregate-workspaceroles"
#define RK_WORKSPACE_RES IAM "/workspaceroles"
#define RK_CLUSTER_CTL "aggregate-clusterroles"
#define RK_CLUSTER_RES IAM "/clusterroles"
#define RK_NAMESPACE_CTL "aggregate-roles"
#define RK_NAMESPACE_RES IAM "/roles"

static const role_kind role_kinds[RK_COUNT] = {
    {RK_GLOBAL_CTL, RK_GLOBAL_RES, "GlobalRole", "global", 0},
    {RK_WORKSPACE_CTL, RK_WORKSPACE_RES, "WorkspaceRole", "workspace", 0},
    {RK_CLUSTER_CTL, RK_CLUSTER_RES, "ClusterRole", "cluster", 0},
    {RK_NAMESPACE_CTL, RK_NAMESPACE_RES, "Role", "namespace", 1},
};

static const role_kind *role_kind_by_name(const char *kind)
{
    for (int i = 0; i < RK_COUNT; i++)
        if (strcmp(role_kinds[i].kind, kind) == 0)
            return &role_kinds[i];
    return NULL;
}

/* Every RoleTemplate, parsed once per change (ctlkit.h). */
static ck_cache templates_cache = CK_CACHE_INIT(RES_TEMPLATES, NULL);

/* A growing message: "a, b, c" (truncated with "..." past its size). */
typedef struct {
    char s[512];
    size_t n;
} namelist;

static void namelist_add(namelist *l, const char *name)
{
    int w;
    if (l->n >= sizeof(l->s) - 4)
        return;
    w = snprintf(l->s + l->n, sizeof(l->s) - l->n, "%s%s", l->n ? ", " : "", name);
    if (w < 0 || (size_t)w >= sizeof(l->s) - l->n) {
        memcpy(l->s + sizeof(l->s) - 4, "...", 4);
        l->n = sizeof(l->s) - 1;
    } else {
        l->n += (size_t)w;
    }
}

/* ---- aggregation ---- */

static bool template_in_scope(const json_t *t, const role_kind *k)
{
    const char *scope = ck_label(t, SCOPE_LABEL);
    return scope != NULL && strcmp(scope, k->scope) == 0;
}

static bool names_have(const json_t *names, size_t upto, const char *name)
{
    for (size_t i = 0; i < upto; i++) {
        const char *s = json_string_value(json_array_get(names, i));
        if (s != NULL && strcmp(s, name) == 0)
            return true;
    }
    return false;
}

/* What a reconcile found wrong, reported as one Warning (so a key that keeps
 * failing the same way reports once). */
typedef struct {
    namelist missing, scope, badrule;
    char selector[300];
} agg_problems;

/* The templates of role, in a fixed order (templateNames order, or by name
 * for a selector). KS_OK, or a read error to retry. */
static ks_status collect_templates(rec_runtime *rt, const role_kind *k, const json_t *agg,
                                   json_t *out, agg_problems *p)
{
    const json_t *names = json_object_get(agg, "templateNames");
    const json_t *sel;
    json_t *all;
    ks_status st;

    if (json_array_size(names) > 0) {
        for (size_t i = 0; i < json_array_size(names); i++) {
            const char *n = json_string_value(json_array_get(names, i));
            json_t *t = NULL;
            if (n == NULL || n[0] == '\0' || names_have(names, i, n))
                continue;
            st = ck_get(rt, RES_TEMPLATES, "", n, &t);
            if (st == KS_ERR_NOT_FOUND) {
                ks_status_clear();
                namelist_add(&p->missing, n);
                continue;
            }
            if (st != KS_OK)
                return st;
            if (template_in_scope(t, k))
                json_array_append(out, t);
            else
                namelist_add(&p->scope, n);
            json_decref(t);
        }
        return KS_OK;
    }
    sel = json_object_get(agg, "roleSelector");
    if (sel == NULL || json_is_null(sel))
        return KS_OK;
    all = ck_cache_get(&templates_cache, rt);
    for (size_t i = 0; i < json_array_size(all); i++) {
        const json_t *t = json_array_get(all, i);
        bool match = false;
        if (!template_in_scope(t, k))
            continue;
        if (ks_labelsel_match(sel, json_object_get(json_object_get(t, "metadata"), "labels"),
                              &match) != KS_OK) {
            snprintf(p->selector, sizeof(p->selector), "%s", ks_status_last());
            ks_status_clear();
            json_array_clear(out);
            break;
        }
        if (match)
            json_array_append(out, (json_t *)t);
    }
    json_decref(all);
    return KS_OK;
}

static void report(rec_runtime *rt, const role_kind *k, const char *key, const json_t *role,
                   const agg_problems *p)
{
    char msg[1600];
    const char *reason = NULL;
    size_t n = 0;

    msg[0] = '\0';
#define ADD(cond, r, ...)                                                                          \
    do {                                                                                           \
        if ((cond) && n < sizeof(msg)) {                                                           \
            if (reason == NULL)                                                                    \
                reason = (r);                                                                      \
            int w_ = snprintf(msg + n, sizeof(msg) - n, "%s", n ? "; " : "");                      \
            if (w_ > 0)                                                                            \
                n += (size_t)w_;                                                                   \
            if (n < sizeof(msg)) {                                                                 \
                w_ = snprintf(msg + n, sizeof(msg) - n, __VA_ARGS__);                              \
                if (w_ > 0)                                                                        \
                    n += (size_t)w_;                                                               \
            }                                                                                      \
        }                                                                                          \
    } while (0)
    ADD(p->missing.n, "TemplateNotFound", "role template(s) not found: %s", p->missing.s);
    ADD(p->scope.n, "TemplateScopeMismatch",
        "role template(s) without the label %s=%s, not aggregated into a %s: %s", SCOPE_LABEL,
        k->scope, k->kind, p->scope.s);
    ADD(p->selector[0], "InvalidRoleSelector", "roleSelector: %s", p->selector);
    ADD(p->badrule.n, "InvalidTemplateRule", "malformed template rules skipped: %s",
        p->badrule.s);
#undef ADD
    if (reason != NULL)
        ck_warn(rt, k->ctl, key, role, reason, "%s", msg);
    else
        ck_ok(k->ctl, key);
}

static ks_workqueue_result agg_reconcile(const role_kind *k, rec_runtime *rt, const char *key)
{
    char ns[CK_NAME_MAX], name[CK_NAME_MAX];
    json_t *role = NULL, *templates = NULL, *rules = NULL, *updated = NULL;
    const json_t *agg, *have;
    agg_problems p;
    ks_workqueue_result res = ks_workqueue_ok();
    size_t added = 0;
    ks_status st;

    memset(&p, 0, sizeof(p));
    if (ck_key_split(key, ns, sizeof(ns), name, sizeof(name)) != KS_OK) {
        ks_warn("%s: dropping key: %s", k->ctl, ks_status_last());
        return ks_workqueue_ok();
    }
    st = rec_get(rt, k->resource, ns, name, &role);
    if (st != KS_OK) {
        if (st == KS_ERR_NOT_FOUND)
            ck_ok(k->ctl, key);
        else
            res = ks_workqueue_retry();
        goto out;
    }
    agg = json_object_get(role, "aggregationRoleTemplates");
    if (ck_deleting(role) || !json_is_object(agg)) {
        ck_ok(k->ctl, key);
        goto out;
    }
    have = json_object_get(role, "rules");
    if (have != NULL && !json_is_null(have) && !json_is_array(have)) {
        ck_warn(rt, k->ctl, key, role, "InvalidRules", "rules is not an array: not aggregated");
        goto out;
    }
    templates = json_array();
    rules = json_is_array(have) ? json_copy((json_t *)have) : json_array();
    if (templates == NULL || rules == NULL) {
        res = ks_workqueue_retry();
        goto out;
    }
    if ((st = collect_templates(rt, k, agg, templates, &p)) != KS_OK) {
        ks_warn("%s %s: cannot read its templates: %s", k->ctl, key, ks_status_last());
        res = ks_workqueue_retry();
        goto out;
    }
    for (size_t i = 0; i < json_array_size(templates); i++) {
        const json_t *t = json_array_get(templates, i);
        const json_t *trules = json_object_get(json_object_get(t, "spec"), "rules");
        for (size_t r = 0; r < json_array_size(trules); r++) {
            json_t *rule = json_array_get(trules, r);
            if (ks_rbacrule_check(rule) != KS_OK) {
                char where[CK_NAME_MAX + 32];
                snprintf(where, sizeof(where), "%s rules[%zu]", ck_name(t), r);
                namelist_add(&p.badrule, where);
                ks_status_clear();
                continue;
            }
            if (!ks_rbacrule_covers(rules, rule)) {
                json_array_append(rules, rule);
                added++;
            }
        }
    }
    if (added > 0) {
        updated = json_deep_copy(role);
        if (updated == NULL || json_object_set(updated, "rules", rules) != 0) {
            res = ks_workqueue_retry();
            goto out;
        }
        st = ck_update(rt, k->ctl, k->resource, updated, NULL);
        if (st != KS_OK) {
            if (st != KS_ERR_CONFLICT)
                ck_warn(rt, k->ctl, key, role, "UpdateFailed", "adding %zu template rules: %s",
                        added, ks_status_last());
            res = ck_result(st);
            goto out;
        }
        ks_info("%s %s: added %zu rules from its templates", k->ctl, key, added);
    }
    report(rt, k, key, role, &p);
    /* A missing template may be created later: look again with backoff
     * (its creation also queues this role through the map). Not right
     * after a write, though: the store would still show the old role; the
     * write's own event brings the key back. */
    if (p.missing.n && added == 0)
        res = ks_workqueue_retry();
out:
    json_decref(role);
    json_decref(templates);
    json_decref(rules);
    json_decref(updated);
    return res;
}

/* A RoleTemplate changed: queue the roles of kind k that name it, or whose
 * selector picks it. */
typedef struct {
    const role_kind *k;
    rec_runtime *rt;
    const json_t *tpl;
    const char *name;
    int in_scope;
} agg_scan;

static int agg_uses(const json_t *role, void *arg)
{
    agg_scan *s = arg;
    const json_t *agg = json_object_get(role, "aggregationRoleTemplates");
    const json_t *names = json_object_get(agg, "templateNames");
    char key[2 * CK_NAME_MAX];
    bool use = false;

    if (!json_is_object(agg))
        return 0;
    if (json_array_size(names) > 0) {
        use = names_have(names, json_array_size(names), s->name);
    } else if (s->in_scope && s->tpl != NULL) {
        bool m = false;
        use = ks_labelsel_match(json_object_get(agg, "roleSelector"),
                                json_object_get(json_object_get(s->tpl, "metadata"), "labels"),
                                &m) == KS_OK && m;
        ks_status_clear();
    }
    if (use) {
        snprintf(key, sizeof(key), "%s/%s", ck_namespace(role), ck_name(role) ? ck_name(role) : "");
        rec_enqueue(s->rt, s->k->ctl, key);
    }
    return 0;
}

static void agg_map(const role_kind *k, rec_runtime *rt, const char *resource,
                    const ks_reflect_event *ev)
{
    agg_scan s = {.k = k, .rt = rt, .name = ev->name};
    json_t *tpl;

    ck_cache_bump(&templates_cache);
    tpl = json_loadb(ev->object_json, ev->object_len, 0, NULL);
    s.tpl = tpl;
    /* A deleted template removes no rules; a selector only cares about
     * templates that exist. */
    s.in_scope = ev->type != KS_REFLECT_DELETED && tpl != NULL && template_in_scope(tpl, k);
    rec_each(rt, k->resource, agg_uses, &s);
    json_decref(tpl);
}

/* ---- role references ---- */

typedef struct {
    const char *ctl;
    const char *resource;   /* the binding resource */
    const char *kind;       /* the binding kind */
    int own;                /* role_kinds index of a roleRef without kind */
} binding_kind;

enum { BK_GLOBAL, BK_WORKSPACE, BK_CLUSTER, BK_NAMESPACE, BK_COUNT };

#define BK_GLOBAL_CTL "rolerefs-globalrolebindings"
#define BK_GLOBAL_RES IAM "/globalrolebindings"
#define BK_WORKSPACE_CTL "rolerefs-workspacerolebindings"
#define BK_WORKSPACE_RES IAM "/workspacerolebindings"
#define BK_CLUSTER_CTL "rolerefs-clusterrolebindings"
#define BK_CLUSTER_RES IAM "/clusterrolebindings"
#define BK_NAMESPACE_CTL "rolerefs-rolebindings"
#define BK_NAMESPACE_RES IAM "/rolebindings"

static const binding_kind binding_kinds[BK_COUNT] = {
    {BK_GLOBAL_CTL, BK_GLOBAL_RES, "GlobalRoleBinding", RK_GLOBAL},
    {BK_WORKSPACE_CTL, BK_WORKSPACE_RES, "WorkspaceRoleBinding", RK_WORKSPACE},
    {BK_CLUSTER_CTL, BK_CLUSTER_RES, "ClusterRoleBinding", RK_CLUSTER},
    {BK_NAMESPACE_CTL, BK_NAMESPACE_RES, "RoleBinding", RK_NAMESPACE},
};

/* "<Kind>/<namespace>/<name>": what a dangling binding waits for. */
static void role_id(char *out, size_t cap, const char *kind, const char *ns, const char *name)
{
    snprintf(out, cap, "%s/%s/%s", kind, ns, name);
}

static ks_workqueue_result ref_reconcile(const binding_kind *b, rec_runtime *rt, const char *key)
{
    char ns[CK_NAME_MAX], name[CK_NAME_MAX], what[3 * CK_NAME_MAX];
    json_t *bind = NULL, *role = NULL;
    const json_t *ref;
    const role_kind *rk;
    const char *rname, *rkind, *rns, *ws, *rws;
    ks_workqueue_result res = ks_workqueue_ok();
    ks_status st;

    if (ck_key_split(key, ns, sizeof(ns), name, sizeof(name)) != KS_OK) {
        ks_warn("%s: dropping key: %s", b->ctl, ks_status_last());
        return res;
    }
    st = rec_get(rt, b->resource, ns, name, &bind);
    if (st != KS_OK) {
        if (st == KS_ERR_NOT_FOUND)
            ck_ok(b->ctl, key);
        else
            res = ks_workqueue_retry();
        goto out;
    }
    if (ck_deleting(bind)) {
        ck_ok(b->ctl, key);
        goto out;
    }
    ref = json_object_get(bind, "roleRef");
    rname = json_string_value(json_object_get(ref, "name"));
    rkind = json_string_value(json_object_get(ref, "kind"));
    if (rkind == NULL || rkind[0] == '\0')
        rkind = role_kinds[b->own].kind;
    if (rname == NULL || rname[0] == '\0') {
        ck_warn(rt, b->ctl, key, bind, "InvalidRoleRef", "roleRef has no name");
        goto out;
    }
    rk = role_kind_by_name(rkind);
    if (rk == NULL || (rk->namespaced && b->own != RK_NAMESPACE)) {
        ck_warn(rt, b->ctl, key, bind, "InvalidRoleRef", "a %s cannot refer to a %.64s", b->kind,
                rkind);
        goto out;
    }
    rns = rk->namespaced ? ns : "";
    st = ck_get(rt, rk->resource, rns, rname, &role);
    if (st == KS_ERR_NOT_FOUND) {
        json_t *live = NULL;
        ks_status_clear();
        /* The store may still hold a binding that was deleted together with
         * its role (a cascade deletes bindings first): ask the API. */
        st = ck_get_live(rt, b->resource, ns, name, &live);
        if (st != KS_OK || ck_deleting(live)) {
            json_decref(live);
            if (st == KS_ERR_NOT_FOUND || st == KS_OK) {
                ks_status_clear();
                ck_ok(b->ctl, key);
            } else {
                res = ks_workqueue_retry();
            }
            goto out;
        }
        json_decref(live);
        role_id(what, sizeof(what), rk->kind, rns, rname);
        /* Report before waiting: ck_warn keeps the memo that ck_wait uses. */
        ck_warn(rt, b->ctl, key, bind, "RoleNotFound",
                "%s %s%s%s not found: the binding grants nothing until it exists", rk->kind, rns,
                rns[0] ? "/" : "", rname);
        ck_wait(b->ctl, key, what);
        res = ks_workqueue_retry();
        goto out;
    }
    if (st != KS_OK) {
        res = ks_workqueue_retry();
        goto out;
    }
    ws = ck_label(bind, WORKSPACE_LABEL);
    rws = ck_label(role, WORKSPACE_LABEL);
    if (ck_label(role, TEMPLATE_LABEL) != NULL && strcmp(ck_label(role, TEMPLATE_LABEL), "true") == 0)
        ck_warn(rt, b->ctl, key, bind, "RoleIsTemplate",
                "%s %s is a role template (label %s): bind a copy, such as <workspace>-%s", rk->kind,
                rname, TEMPLATE_LABEL, rname);
    else if (b->own == RK_WORKSPACE && rk == &role_kinds[RK_WORKSPACE] && ws != NULL &&
             (rws == NULL || strcmp(ws, rws) != 0))
        ck_warn(rt, b->ctl, key, bind, "RoleOfOtherWorkspace",
                "WorkspaceRole %s belongs to workspace \"%s\", the binding to \"%s\"", rname,
                rws ? rws : "", ws);
    else
        ck_ok(b->ctl, key);
out:
    json_decref(bind);
    json_decref(role);
    return res;
}

/* A role appeared or went: wake the bindings waiting for it, and look at the
 * bindings that refer to a deleted one. */
typedef struct {
    const binding_kind *b;
    rec_runtime *rt;
    const role_kind *rk;
    const char *ns, *name;
} ref_scan;

static int ref_uses(const json_t *bind, void *arg)
{
    ref_scan *s = arg;
    const json_t *ref = json_object_get(bind, "roleRef");
    const char *rname = json_string_value(json_object_get(ref, "name"));
    const char *rkind = json_string_value(json_object_get(ref, "kind"));
    char key[2 * CK_NAME_MAX];

    if (rkind == NULL || rkind[0] == '\0')
        rkind = role_kinds[s->b->own].kind;
    if (rname == NULL || strcmp(rname, s->name) != 0 || strcmp(rkind, s->rk->kind) != 0)
        return 0;
    if (s->rk->namespaced && strcmp(ck_namespace(bind), s->ns) != 0)
        return 0;
    snprintf(key, sizeof(key), "%s/%s", ck_namespace(bind), ck_name(bind) ? ck_name(bind) : "");
    rec_enqueue(s->rt, s->b->ctl, key);
    return 0;
}

static void ref_map(const binding_kind *b, rec_runtime *rt, const char *resource,
                    const ks_reflect_event *ev)
{
    char what[3 * CK_NAME_MAX];
    const role_kind *rk = NULL;

    for (int i = 0; i < RK_COUNT; i++)
        if (strcmp(role_kinds[i].resource, resource) == 0)
            rk = &role_kinds[i];
    if (rk == NULL || (rk->namespaced && b->own != RK_NAMESPACE))
        return;
    if (ev->type == KS_REFLECT_ADDED) {
        role_id(what, sizeof(what), rk->kind, rk->namespaced ? ev->namespace_ : "", ev->name);
        ck_wake(rt, b->ctl, what);
    } else if (ev->type == KS_REFLECT_DELETED) {
        ref_scan s = {.b = b, .rt = rt, .rk = rk, .ns = ev->namespace_, .name = ev->name};
        rec_each(rt, b->resource, ref_uses, &s);
    }
}

/* ---- the controllers ---- */

static const char *const agg_watch[] = {RES_TEMPLATES, NULL};
static const char *const ref_watch[] = {IAM "/globalroles", IAM "/workspaceroles",
                                        IAM "/clusterroles", IAM "/roles", NULL};

#define AGG_CONTROLLER(var, idx)                                                                   \
    static ks_workqueue_result var##_reconcile(rec_runtime *rt, const char *key)                   \
    {                                                                                              \
        return agg_reconcile(&role_kinds[idx], rt, key);                                           \
    }                                                                                              \
    static void var##_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)       \
    {                                                                                              \
        agg_map(&role_kinds[idx], rt, resource, ev);                                               \
    }                                                                                              \
    const rec_controller var = {                                                                   \
        .name = idx##_CTL,                                                                         \
        .primary = idx##_RES,                                                                      \
        .also_watch = agg_watch,                                                                   \
        .map = var##_map,                                                                          \
        .reconcile = var##_reconcile,                                                              \
        .workers = 2,                                                                              \
    };

#define REF_CONTROLLER(var, idx)                                                                   \
    static ks_workqueue_result var##_reconcile(rec_runtime *rt, const char *key)                   \
    {                                                                                              \
        return ref_reconcile(&binding_kinds[idx], rt, key);                                        \
    }                                                                                              \
    static void var##_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)       \
    {                                                                                              \
        ref_map(&binding_kinds[idx], rt, resource, ev);                                            \
    }                                                                                              \
    const rec_controller var = {                                                                   \
        .name = idx##_CTL,                                                                         \
        .primary = idx##_RES,                                                                      \
        .also_watch = ref_watch,                                                                   \
        .map = var##_map,                                                                          \
        .reconcile = var##_reconcile,                                                              \
        .workers = 1,                                                                              \
    };

AGG_CONTROLLER(rec_ctl_aggregate_globalroles, RK_GLOBAL)
AGG_CONTROLLER(rec_ctl_aggregate_workspaceroles, RK_WORKSPACE)
AGG_CONTROLLER(rec_ctl_aggregate_clusterroles, RK_CLUSTER)
AGG_CONTROLLER(rec_ctl_aggregate_roles, RK_NAMESPACE)
REF_CONTROLLER(rec_ctl_rolerefs_globalrolebindings, BK_GLOBAL)
REF_CONTROLLER(rec_ctl_rolerefs_workspacerolebindings, BK_WORKSPACE)
REF_CONTROLLER(rec_ctl_rolerefs_clusterrolebindings, BK_CLUSTER)
REF_CONTROLLER(rec_ctl_rolerefs_rolebindings, BK_NAMESPACE)
