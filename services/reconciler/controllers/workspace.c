/* workspace.c: the workspacetemplate controller (issue Controllers, item 4).
 *
 * For each WorkspaceTemplate <ws>:
 *   - the finalizer finalizers.tenant.kubesphere.io;
 *   - the Workspace <ws> in step with spec.template: spec and labels equal to
 *     the template's, the template's annotations set (others kept), created
 *     with an ownerReference to the template;
 *   - the built-in roles: for every WorkspaceRole labelled
 *     iam.kubesphere.io/role-template=true without kubesphere.io/workspace
 *     (admin, regular, self-provisioner, viewer), the WorkspaceRole
 *     <ws>-<name> with the template's labels minus the template label plus
 *     kubesphere.io/workspace=<ws>, and its annotations, rules and
 *     aggregationRoleTemplates;
 *   - the WorkspaceRoleBinding <ws>-admin of the User spec.template.spec.manager
 *     to <ws>-admin, once that User exists;
 *   - on delete: the workspace's WorkspaceRoleBindings, then its
 *     WorkspaceRoles, then the Workspace, then the finalizer. Bindings are
 *     deleted as bindings (KubeSphere's workspacerolebinding controller
 *     deletes roles there).
 * docs/controllers.md, "workspace". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../controller.h"
#include "ctlkit.h"
#include "log.h"

#define IAM "iam.kubesphere.io"
#define TENANT "tenant.kubesphere.io"
#define CTL "workspacetemplate"
#define RES_WST TENANT "/workspacetemplates"
#define RES_WS TENANT "/workspaces"
#define RES_WSR IAM "/workspaceroles"
#define RES_WSRB IAM "/workspacerolebindings"
#define RES_USERS IAM "/users"
#define FINALIZER "finalizers.tenant.kubesphere.io"
#define WORKSPACE_LABEL "kubesphere.io/workspace"
#define TEMPLATE_LABEL "iam.kubesphere.io/role-template"
#define USER_REF_LABEL "iam.kubesphere.io/user-ref"
#define ROLE_REF_LABEL "iam.kubesphere.io/role-ref"

static int is_role_template(const json_t *wsr)
{
    const char *t = ck_label(wsr, TEMPLATE_LABEL);
    return t != NULL && strcmp(t, "true") == 0 && ck_label(wsr, WORKSPACE_LABEL) == NULL;
}

static ck_cache role_templates = CK_CACHE_INIT(RES_WSR, is_role_template);

/* Every WorkspaceTemplate, for the map: a user event must not parse them all
 * (the initial list of 10,000 users would). */
static ck_cache workspace_templates = CK_CACHE_INIT(RES_WST, NULL);


static const json_t *template_md(const json_t *tpl)
{
    return json_object_get(json_object_get(json_object_get(tpl, "spec"), "template"), "metadata");
}

static const json_t *template_spec(const json_t *tpl)
{
    return json_object_get(json_object_get(json_object_get(tpl, "spec"), "template"), "spec");
}

/* ---- the Workspace ---- */

static ks_status sync_workspace(rec_runtime *rt, const json_t *tpl, const char *ws)
{
    static const char *const fields[] = {"spec", NULL};
    const json_t *md = template_md(tpl), *md_tpl = json_object_get(tpl, "metadata");
    json_t *desired;
    ks_status st;

    desired = json_pack("{s:s, s:s, s:{s:s, s:o, s:o, s:[{s:s, s:s, s:O?, s:O?, s:b}]}, s:o}",
                        "apiVersion", TENANT "/v1beta1", "kind", "Workspace", "metadata", "name",
                        ws, "labels", ck_object_or_empty(json_object_get(md, "labels")),
                        "annotations", ck_object_or_empty(json_object_get(md, "annotations")),
                        "ownerReferences", "apiVersion", TENANT "/v1beta1", "kind",
                        "WorkspaceTemplate", "name", json_object_get(md_tpl, "name"), "uid",
                        json_object_get(md_tpl, "uid"), "controller", 1, "spec",
                        ck_object_or_empty(template_spec(tpl)));
    if (desired == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "workspace %s", ws);
    st = ck_ensure(rt, CTL, RES_WS, desired, fields, CK_EXACT, CK_SUBSET, NULL);
    json_decref(desired);
    return st;
}

/* ---- the built-in roles ---- */

/* The copy of template T for workspace ws. */
static json_t *role_copy(const json_t *t, const char *ws, const char *name)
{
    json_t *labels = ck_object_or_empty(json_object_get(json_object_get(t, "metadata"), "labels"));
    json_t *o;

    if (labels == NULL)
        return NULL;
    json_object_del(labels, TEMPLATE_LABEL);
    json_object_set_new(labels, WORKSPACE_LABEL, json_string(ws));
    o = json_pack("{s:s, s:s, s:{s:s, s:o, s:o}}", "apiVersion", IAM "/v1beta1", "kind",
                  "WorkspaceRole", "metadata", "name", name, "labels", labels, "annotations",
                  ck_object_or_empty(
                      json_object_get(json_object_get(t, "metadata"), "annotations")));
    if (o == NULL)
        return NULL;
    if (json_object_get(t, "rules") != NULL)
        json_object_set(o, "rules", json_object_get(t, "rules"));
    if (json_object_get(t, "aggregationRoleTemplates") != NULL)
        json_object_set(o, "aggregationRoleTemplates", json_object_get(t, "aggregationRoleTemplates"));
    return o;
}

static ks_status sync_roles(rec_runtime *rt, const char *ws, ck_problem *p)
{
    static const char *const fields[] = {"rules", "aggregationRoleTemplates", NULL};
    json_t *templates = ck_cache_get(&role_templates, rt);
    ks_status st = KS_OK;

    for (size_t i = 0; i < json_array_size(templates) && st == KS_OK; i++) {
        const json_t *t = json_array_get(templates, i);
        char name[CK_NAME_MAX];
        json_t *copy;
        int n = snprintf(name, sizeof(name), "%s-%s", ws, ck_name(t));

        if (n < 0 || (size_t)n >= sizeof(name)) {
            ck_problem_add(p, "NameTooLong", 0, "WorkspaceRole %s-%s: the name is too long", ws,
                    ck_name(t));
            continue;
        }
        if ((copy = role_copy(t, ws, name)) == NULL)
            return KS_FAIL(KS_ERR_NOMEM, "workspace role %s", name);
        st = ck_ensure(rt, CTL, RES_WSR, copy, fields, CK_EXACT, CK_EXACT, NULL);
        json_decref(copy);
    }
    json_decref(templates);
    return st;
}

/* ---- the manager's binding ---- */

static ks_status sync_manager(rec_runtime *rt, const json_t *tpl, const char *ws, ck_problem *p)
{
    static const char *const fields[] = {"roleRef", "subjects", NULL};
    const char *manager = json_string_value(json_object_get(template_spec(tpl), "manager"));
    char role[CK_NAME_MAX];
    json_t *user = NULL, *r = NULL, *desired = NULL;
    ks_status st;
    int n;

    if (manager == NULL || manager[0] == '\0') {
        ck_problem_add(p, "NoManager", 0,
                "spec.template.spec.manager is empty: no WorkspaceRoleBinding %s-admin", ws);
        return KS_OK;
    }
    n = snprintf(role, sizeof(role), "%s-admin", ws);
    if (n < 0 || (size_t)n >= sizeof(role)) {
        ck_problem_add(p, "NameTooLong", 0, "%s-admin: the name is too long", ws);
        return KS_OK;
    }
    st = ck_get(rt, RES_USERS, "", manager, &user);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        ck_problem_add(p, "ManagerNotFound",
                0, "the manager User %s does not exist: %s-admin is bound once it does", manager,
                ws);
        return KS_OK;
    }
    if (st != KS_OK)
        return st;
    if (ck_deleting(user))
        goto out;              /* the user controller is removing its bindings */
    st = ck_get(rt, RES_WSR, "", role, &r);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        ck_problem_add(p, "RoleNotFound", 1,
                "WorkspaceRole %s does not exist (no role template admin): the manager %s is not "
                "bound",
                role, manager);
        st = KS_OK;
        goto out;
    }
    if (st != KS_OK)
        goto out;
    desired = json_pack("{s:s, s:s, s:{s:s, s:{s:s, s:s, s:s}}, s:{s:s, s:s, s:s}, "
                        "s:[{s:s, s:s, s:s}]}",
                        "apiVersion", IAM "/v1beta1", "kind", "WorkspaceRoleBinding", "metadata",
                        "name", role, "labels", WORKSPACE_LABEL, ws, USER_REF_LABEL, manager,
                        ROLE_REF_LABEL, role, "roleRef", "apiGroup", IAM, "kind", "WorkspaceRole",
                        "name", role, "subjects", "apiGroup", IAM, "kind", "User", "name", manager);
    if (desired == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "binding %s", role);
        goto out;
    }
    st = ck_ensure(rt, CTL, RES_WSRB, desired, fields, CK_SUBSET, CK_SUBSET, NULL);
out:
    json_decref(user);
    json_decref(r);
    json_decref(desired);
    return st;
}

/* ---- delete ---- */

/* Delete every object of resource labelled with the workspace. */
static ks_status delete_labelled(rec_runtime *rt, const char *resource, const char *ws)
{
    char sel[CK_NAME_MAX + 32];
    json_t *items = NULL;
    ks_status st;

    snprintf(sel, sizeof(sel), "%s=%s", WORKSPACE_LABEL, ws);
    st = ck_list(rt, resource, NULL, sel, &items);
    if (st == KS_ERR_INVALID) {
        /* Not a valid label value: nothing can carry it. */
        ks_status_clear();
        return KS_OK;
    }
    for (size_t i = 0; st == KS_OK && i < json_array_size(items); i++)
        st = ck_delete(rt, CTL, resource, json_array_get(items, i));
    json_decref(items);
    return st;
}

static ks_status cascade(rec_runtime *rt, const char *ws)
{
    json_t *w = NULL;
    ks_status st;

    /* Bindings first: access goes before the roles it names. */
    if ((st = delete_labelled(rt, RES_WSRB, ws)) != KS_OK ||
        (st = delete_labelled(rt, RES_WSR, ws)) != KS_OK)
        return st;
    st = ck_get(rt, RES_WS, "", ws, &w);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        return KS_OK;
    }
    if (st == KS_OK && !ck_deleting(w))
        st = ck_delete(rt, CTL, RES_WS, w);
    json_decref(w);
    return st;
}

/* ---- reconcile ---- */

static ks_workqueue_result fail(rec_runtime *rt, const char *key, const json_t *tpl,
                                const char *what, ks_status st)
{
    if (st != KS_ERR_CONFLICT)
        ck_warn(rt, CTL, key, tpl, "SyncFailed", "%s: %s", what, ks_status_last());
    return ck_result(st);
}

static ks_workqueue_result ws_reconcile(rec_runtime *rt, const char *key)
{
    char ns[CK_NAME_MAX], ws[CK_NAME_MAX];
    json_t *tpl = NULL, *cur = NULL;
    ck_problem p;
    ks_workqueue_result res = ks_workqueue_ok();
    ks_status st;

    memset(&p, 0, sizeof(p));
    if (ck_key_split(key, ns, sizeof(ns), ws, sizeof(ws)) != KS_OK || ns[0] != '\0') {
        ks_warn("%s: dropping key %s", CTL, key);
        return res;
    }
    st = rec_get(rt, RES_WST, "", ws, &tpl);
    if (st != KS_OK) {
        if (st == KS_ERR_NOT_FOUND)
            ck_ok(CTL, key);
        else
            res = ks_workqueue_retry();
        goto out;
    }
    if (ck_deleting(tpl)) {
        if (!ck_has_finalizer(tpl, FINALIZER))
            goto out;
        if ((st = cascade(rt, ws)) != KS_OK) {
            res = fail(rt, key, tpl, "deleting the workspace's bindings, roles and Workspace", st);
            goto out;
        }
        if ((st = ck_set_finalizer(rt, CTL, RES_WST, tpl, FINALIZER, false, NULL)) != KS_OK)
            res = fail(rt, key, tpl, "removing the finalizer", st);
        else
            ck_ok(CTL, key);
        goto out;
    }
    if ((st = ck_set_finalizer(rt, CTL, RES_WST, tpl, FINALIZER, true, &cur)) != KS_OK) {
        res = fail(rt, key, tpl, "adding the finalizer", st);
        goto out;
    }
    json_decref(tpl);
    tpl = cur;
    cur = NULL;
    if ((st = sync_workspace(rt, tpl, ws)) != KS_OK) {
        res = fail(rt, key, tpl, "the Workspace", st);
        goto out;
    }
    if ((st = sync_roles(rt, ws, &p)) != KS_OK) {
        res = fail(rt, key, tpl, "the workspace roles", st);
        goto out;
    }
    if ((st = sync_manager(rt, tpl, ws, &p)) != KS_OK) {
        res = fail(rt, key, tpl, "the manager's WorkspaceRoleBinding", st);
        goto out;
    }
    if (p.reason != NULL) {
        ck_warn(rt, CTL, key, tpl, p.reason, "%s", p.msg);
        if (p.retry)
            res = ks_workqueue_retry();
    } else {
        ck_ok(CTL, key);
    }
out:
    json_decref(tpl);
    json_decref(cur);
    return res;
}

/* ---- map ---- */

/* Queue the templates whose manager is `manager` (NULL: every template). */
static void enqueue_templates(rec_runtime *rt, const char *manager)
{
    json_t *all = ck_cache_get(&workspace_templates, rt);
    char key[CK_NAME_MAX + 2];

    for (size_t i = 0; i < json_array_size(all); i++) {
        const json_t *tpl = json_array_get(all, i);
        const char *m = json_string_value(json_object_get(template_spec(tpl), "manager"));
        if (manager != NULL && (m == NULL || strcmp(m, manager) != 0))
            continue;
        snprintf(key, sizeof(key), "/%s", ck_name(tpl) ? ck_name(tpl) : "");
        rec_enqueue(rt, CTL, key);
    }
    json_decref(all);
}

static void enqueue_ws(rec_runtime *rt, const char *ws)
{
    char key[CK_NAME_MAX + 2];
    if (ws == NULL || ws[0] == '\0')
        return;
    snprintf(key, sizeof(key), "/%s", ws);
    rec_enqueue(rt, CTL, key);
}

static void ws_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)
{
    json_t *o;

    if (strcmp(resource, RES_WST) == 0) {
        /* The primary: the runtime queues it; only the map's list changes. */
        ck_cache_bump(&workspace_templates);
        return;
    }
    if (strcmp(resource, RES_WS) == 0) {
        enqueue_ws(rt, ev->name);
        return;
    }
    if (strcmp(resource, RES_USERS) == 0) {
        /* A manager appears or goes; later changes of a user do not matter. */
        if (ev->type != KS_REFLECT_MODIFIED)
            enqueue_templates(rt, ev->name);
        return;
    }
    o = json_loadb(ev->object_json, ev->object_len, 0, NULL);
    if (o == NULL)
        return;
    if (strcmp(resource, RES_WSR) == 0 && ck_label(o, WORKSPACE_LABEL) == NULL) {
        /* A template (or what was one): every workspace copies it. */
        ck_cache_bump(&role_templates);
        enqueue_templates(rt, NULL);
    } else {
        enqueue_ws(rt, ck_label(o, WORKSPACE_LABEL));
    }
    json_decref(o);
}

static const char *const ws_watch[] = {RES_WST, RES_WS, RES_WSR, RES_WSRB, RES_USERS, NULL};

const rec_controller rec_ctl_workspacetemplate = {
    .name = CTL,
    .primary = RES_WST,
    .also_watch = ws_watch,
    .map = ws_map,
    .reconcile = ws_reconcile,
    .workers = 2,
};
