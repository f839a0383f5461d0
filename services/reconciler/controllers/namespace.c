/* namespace.c: the namespace controller (issue Controllers, item 5).
 *
 * For a namespace labelled kubesphere.io/workspace:
 *   - the finalizer kubesphere.io/cascading-deletion (metadata.finalizers);
 *   - the namespace roles: for every Role labelled
 *     iam.kubesphere.io/role-template=true in kscore-role-templates (admin,
 *     operator, viewer), the Role of the same name with its labels minus the
 *     template label, and its annotations, rules and aggregationRoleTemplates;
 *   - the RoleBinding <creator>-admin of the User named by the annotation
 *     kubesphere.io/creator to the Role admin.
 * When the label goes, or the namespace is being deleted, and the finalizer
 * is there: the RoleBindings that refer to those Roles, then the Roles, then
 * the finalizer. kscore-role-templates itself is never touched.
 * docs/controllers.md, "namespace". */
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "../controller.h"
#include "ctlkit.h"
#include "log.h"

#define IAM "iam.kubesphere.io"
#define CTL "namespace"
#define RES_NS "/namespaces"
#define RES_ROLES IAM "/roles"
#define RES_RB IAM "/rolebindings"
#define TEMPLATE_NS "kscore-role-templates"
#define FINALIZER "kubesphere.io/cascading-deletion"
#define CREATOR_ANNOTATION "kubesphere.io/creator"
#define WORKSPACE_LABEL "kubesphere.io/workspace"
#define TEMPLATE_LABEL "iam.kubesphere.io/role-template"
#define USER_REF_LABEL "iam.kubesphere.io/user-ref"
#define ROLE_REF_LABEL "iam.kubesphere.io/role-ref"

/* The shipped template names: cleaned up even when their templates are gone. */
static const char *const builtin_roles[] = {"admin", "operator", "viewer", NULL};

static int is_role_template(const json_t *role)
{
    const char *t = ck_label(role, TEMPLATE_LABEL);
    return strcmp(ck_namespace(role), TEMPLATE_NS) == 0 && t != NULL && strcmp(t, "true") == 0;
}

static ck_cache role_templates = CK_CACHE_INIT(RES_ROLES, is_role_template);


/* ---- the roles and the creator's binding ---- */

static json_t *role_copy(const json_t *t, const char *ns)
{
    const json_t *md = json_object_get(t, "metadata");
    json_t *labels = ck_object_or_empty(json_object_get(md, "labels"));
    json_t *o;

    if (labels == NULL)
        return NULL;
    json_object_del(labels, TEMPLATE_LABEL);
    o = json_pack("{s:s, s:s, s:{s:O?, s:s, s:o, s:o}}", "apiVersion", IAM "/v1beta1", "kind",
                  "Role", "metadata", "name", json_object_get(md, "name"), "namespace", ns,
                  "labels", labels, "annotations",
                  ck_object_or_empty(json_object_get(md, "annotations")));
    if (o == NULL)
        return NULL;
    if (json_object_get(t, "rules") != NULL)
        json_object_set(o, "rules", json_object_get(t, "rules"));
    if (json_object_get(t, "aggregationRoleTemplates") != NULL)
        json_object_set(o, "aggregationRoleTemplates", json_object_get(t, "aggregationRoleTemplates"));
    return o;
}

static ks_status sync_roles(rec_runtime *rt, const char *ns)
{
    static const char *const fields[] = {"rules", "aggregationRoleTemplates", NULL};
    json_t *templates = ck_cache_get(&role_templates, rt);
    ks_status st = KS_OK;

    for (size_t i = 0; i < json_array_size(templates) && st == KS_OK; i++) {
        json_t *copy = role_copy(json_array_get(templates, i), ns);
        if (copy == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "role copy in %s", ns);
            break;
        }
        st = ck_ensure(rt, CTL, RES_ROLES, copy, fields, CK_EXACT, CK_EXACT, NULL);
        json_decref(copy);
    }
    json_decref(templates);
    return st;
}

static ks_status sync_creator(rec_runtime *rt, const json_t *nsobj, const char *ns, ck_problem *p)
{
    static const char *const fields[] = {"roleRef", "subjects", NULL};
    const char *creator = ck_annotation(nsobj, CREATOR_ANNOTATION);
    char name[CK_NAME_MAX];
    json_t *admin = NULL, *desired = NULL;
    ks_status st;
    int n;

    if (creator == NULL || creator[0] == '\0')
        return KS_OK;
    n = snprintf(name, sizeof(name), "%s-admin", creator);
    if (n < 0 || (size_t)n >= sizeof(name)) {
        ck_problem_add(p, "NameTooLong", 0, "RoleBinding %s-admin: the name is too long", creator);
        return KS_OK;
    }
    st = ck_get(rt, RES_ROLES, ns, "admin", &admin);
    if (st == KS_ERR_NOT_FOUND) {
        ks_status_clear();
        ck_problem_add(p, "RoleNotFound", 1,
                "Role %s/admin does not exist (no role template admin in %s): the creator %s is "
                "not bound",
                ns, TEMPLATE_NS, creator);
        return KS_OK;
    }
    if (st != KS_OK)
        return st;
    json_decref(admin);
    desired = json_pack("{s:s, s:s, s:{s:s, s:s, s:{s:s, s:s}}, s:{s:s, s:s, s:s}, "
                        "s:[{s:s, s:s, s:s}]}",
                        "apiVersion", IAM "/v1beta1", "kind", "RoleBinding", "metadata", "name",
                        name, "namespace", ns, "labels", USER_REF_LABEL, creator, ROLE_REF_LABEL,
                        "admin", "roleRef", "apiGroup", IAM, "kind", "Role", "name", "admin",
                        "subjects", "apiGroup", IAM, "kind", "User", "name", creator);
    if (desired == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "binding %s/%s", ns, name);
    st = ck_ensure(rt, CTL, RES_RB, desired, fields, CK_SUBSET, CK_SUBSET, NULL);
    json_decref(desired);
    return st;
}

/* ---- clean-up ---- */

static bool names_have(const json_t *names, const char *s)
{
    for (size_t i = 0; i < json_array_size(names); i++)
        if (strcmp(json_string_value(json_array_get(names, i)), s) == 0)
            return true;
    return false;
}

/* The names of the namespace roles: the templates' (from the API, so that a
 * store that has not listed yet cannot make the clean-up miss one) and the
 * shipped ones. */
static ks_status role_names(rec_runtime *rt, json_t **out)
{
    json_t *names = json_array(), *items = NULL;
    ks_status st;

    if (names == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "role names");
    st = ck_list(rt, RES_ROLES, TEMPLATE_NS, TEMPLATE_LABEL "=true", &items);
    if (st != KS_OK) {
        json_decref(names);
        return st;
    }
    for (const char *const *b = builtin_roles; *b; b++)
        json_array_append_new(names, json_string(*b));
    for (size_t i = 0; i < json_array_size(items); i++) {
        const char *n = ck_name(json_array_get(items, i));
        if (n != NULL && !names_have(names, n))
            json_array_append_new(names, json_string(n));
    }
    json_decref(items);
    *out = names;
    return KS_OK;
}

static ks_status cleanup(rec_runtime *rt, const char *ns)
{
    json_t *names = NULL, *bindings = NULL;
    ks_status st;

    if ((st = role_names(rt, &names)) != KS_OK)
        return st;
    /* Bindings first: access goes before the roles it names. */
    st = ck_list(rt, RES_RB, ns, NULL, &bindings);
    for (size_t i = 0; st == KS_OK && i < json_array_size(bindings); i++) {
        const json_t *b = json_array_get(bindings, i);
        const json_t *ref = json_object_get(b, "roleRef");
        const char *kind = json_string_value(json_object_get(ref, "kind"));
        const char *rname = json_string_value(json_object_get(ref, "name"));
        if (rname != NULL && (kind == NULL || kind[0] == '\0' || strcmp(kind, "Role") == 0) &&
            names_have(names, rname))
            st = ck_delete(rt, CTL, RES_RB, b);
    }
    for (size_t i = 0; st == KS_OK && i < json_array_size(names); i++) {
        json_t *r = NULL;
        st = ck_get(rt, RES_ROLES, ns, json_string_value(json_array_get(names, i)), &r);
        if (st == KS_ERR_NOT_FOUND) {
            ks_status_clear();
            st = KS_OK;
            continue;
        }
        if (st == KS_OK && !ck_deleting(r))
            st = ck_delete(rt, CTL, RES_ROLES, r);
        json_decref(r);
    }
    json_decref(names);
    json_decref(bindings);
    return st;
}

/* ---- reconcile ---- */

static ks_workqueue_result fail(rec_runtime *rt, const char *key, const json_t *obj,
                                const char *what, ks_status st)
{
    if (st != KS_ERR_CONFLICT)
        ck_warn(rt, CTL, key, obj, "SyncFailed", "%s: %s", what, ks_status_last());
    return ck_result(st);
}

static ks_workqueue_result ns_reconcile(rec_runtime *rt, const char *key)
{
    char empty[2], ns[CK_NAME_MAX];
    json_t *obj = NULL, *cur = NULL;
    const char *ws;
    ck_problem p;
    ks_workqueue_result res = ks_workqueue_ok();
    ks_status st;

    memset(&p, 0, sizeof(p));
    if (ck_key_split(key, empty, sizeof(empty), ns, sizeof(ns)) != KS_OK || empty[0] != '\0') {
        ks_warn("%s: dropping key %s", CTL, key);
        return res;
    }
    if (strcmp(ns, TEMPLATE_NS) == 0)
        return res;
    st = rec_get(rt, RES_NS, "", ns, &obj);
    if (st != KS_OK) {
        if (st == KS_ERR_NOT_FOUND)
            ck_ok(CTL, key);
        else
            res = ks_workqueue_retry();
        goto out;
    }
    ws = ck_label(obj, WORKSPACE_LABEL);
    if (ck_deleting(obj) || ws == NULL || ws[0] == '\0') {
        if (!ck_has_finalizer(obj, FINALIZER)) {
            ck_ok(CTL, key);
            goto out;
        }
        if ((st = cleanup(rt, ns)) != KS_OK) {
            res = fail(rt, key, obj, "deleting the namespace roles and their bindings", st);
            goto out;
        }
        if ((st = ck_set_finalizer(rt, CTL, RES_NS, obj, FINALIZER, false, NULL)) != KS_OK)
            res = fail(rt, key, obj, "removing the finalizer", st);
        else
            ck_ok(CTL, key);
        goto out;
    }
    if ((st = ck_set_finalizer(rt, CTL, RES_NS, obj, FINALIZER, true, &cur)) != KS_OK) {
        res = fail(rt, key, obj, "adding the finalizer", st);
        goto out;
    }
    json_decref(obj);
    obj = cur;
    cur = NULL;
    if ((st = sync_roles(rt, ns)) != KS_OK) {
        res = fail(rt, key, obj, "the namespace roles", st);
        goto out;
    }
    if ((st = sync_creator(rt, obj, ns, &p)) != KS_OK) {
        res = fail(rt, key, obj, "the creator's RoleBinding", st);
        goto out;
    }
    if (p.reason != NULL) {
        ck_warn(rt, CTL, key, obj, p.reason, "%s", p.msg);
        if (p.retry)
            res = ks_workqueue_retry();
    } else {
        ck_ok(CTL, key);
    }
out:
    json_decref(obj);
    json_decref(cur);
    return res;
}

/* ---- map ---- */

static int enqueue_member(const json_t *nsobj, void *arg)
{
    rec_runtime *rt = arg;
    char key[CK_NAME_MAX + 2];

    if (ck_label(nsobj, WORKSPACE_LABEL) == NULL && !ck_has_finalizer(nsobj, FINALIZER))
        return 0;
    snprintf(key, sizeof(key), "/%s", ck_name(nsobj) ? ck_name(nsobj) : "");
    rec_enqueue(rt, CTL, key);
    return 0;
}

static void ns_map(rec_runtime *rt, const char *resource, const ks_reflect_event *ev)
{
    char key[CK_NAME_MAX + 2];

    if (strcmp(ev->namespace_, TEMPLATE_NS) == 0) {
        if (strcmp(resource, RES_ROLES) == 0) {
            ck_cache_bump(&role_templates);
            rec_each(rt, RES_NS, enqueue_member, rt);
        }
        return;
    }
    snprintf(key, sizeof(key), "/%s", ev->namespace_);
    rec_enqueue(rt, CTL, key);
}

static const char *const ns_watch[] = {RES_ROLES, RES_RB, NULL};

const rec_controller rec_ctl_namespace = {
    .name = CTL,
    .primary = RES_NS,
    .also_watch = ns_watch,
    .map = ns_map,
    .reconcile = ns_reconcile,
    .workers = 2,
};
