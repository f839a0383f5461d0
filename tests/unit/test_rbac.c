/* Unit tests: lib/rbac.c (KubeSphere's authorizer over the in-memory store).
 *
 * The core is a table of decisions: {fixture, user, groups, request,
 * expected allow, expected phase, expected reason substring}. Fixtures are
 * built from JSON strings shaped like the iam.kubesphere.io/v1beta1 CRDs and
 * the YAML of config/roles/ (written with ' for ", turned into JSON by jq()). Every
 * row is also decided by the naive scan (ks_rbac_decide_scan), which must
 * agree. The other tests cover changes (deletes, updates, labels, groups),
 * the generation counter, many bindings for one subject, bad input,
 * reference counting of interned strings, a randomised index-vs-scan check
 * and concurrent decisions during updates. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rbac.h"

/* ---- helpers ---- */

/* JSON from a string written with ' for ". */
static json_t *jq(const char *s)
{
    char *c = strdup(s);
    json_error_t err;
    json_t *j;

    assert_non_null(c);
    for (char *p = c; *p; p++)
        if (*p == '\'')
            *p = '"';
    j = json_loads(c, 0, &err);
    if (j == NULL)
        fail_msg("bad fixture JSON (%s): %s", err.text, c);
    free(c);
    return j;
}

static void apply_ok(ks_rbac *st, const char *kind, const char *json)
{
    json_t *j = jq(json);
    ks_status rc = ks_rbac_apply(st, kind, j);
    if (rc != KS_OK)
        fail_msg("apply %s failed: %s: %s", kind, ks_status_last(), json);
    json_decref(j);
}

static ks_status apply_rc(ks_rbac *st, const char *kind, const char *json)
{
    json_t *j = jq(json);
    ks_status rc = ks_rbac_apply(st, kind, j);
    json_decref(j);
    return rc;
}

typedef struct {
    const char *kind;
    const char *json;
} obj;

static void apply_all(ks_rbac *st, const obj *o, size_t n)
{
    for (size_t i = 0; i < n; i++)
        apply_ok(st, o[i].kind, o[i].json);
}

#define META(n) "'metadata':{'name':'" n "'}"
#define META_NS(ns, n) "'metadata':{'name':'" n "','namespace':'" ns "'}"
#define META_WS(ws, n) "'metadata':{'name':'" n "','labels':{'kubesphere.io/workspace':'" ws "'}}"
#define API "'apiVersion':'iam.kubesphere.io/v1beta1',"
#define REF(k, n) "'roleRef':{'apiGroup':'iam.kubesphere.io','kind':'" k "','name':'" n "'}"
#define USER(n) "{'apiGroup':'iam.kubesphere.io','kind':'User','name':'" n "'}"
#define GROUP(n) "{'apiGroup':'iam.kubesphere.io','kind':'Group','name':'" n "'}"

#define GR(n, rules) {"GlobalRole", "{" API "'kind':'GlobalRole'," META(n) ",'rules':" rules "}"}
#define CR(n, rules) {"ClusterRole", "{" API "'kind':'ClusterRole'," META(n) ",'rules':" rules "}"}
#define WR(ws, n, rules)                                                                          \
    {"WorkspaceRole", "{" API "'kind':'WorkspaceRole'," META_WS(ws, n) ",'rules':" rules "}"}
#define RO(ns, n, rules) {"Role", "{" API "'kind':'Role'," META_NS(ns, n) ",'rules':" rules "}"}
#define GRB(n, role, subj)                                                                        \
    {"GlobalRoleBinding",                                                                         \
     "{" API "'kind':'GlobalRoleBinding'," META(n) "," REF("GlobalRole", role) ",'subjects':[" subj \
     "]}"}
#define CRB(n, role, subj)                                                                        \
    {"ClusterRoleBinding", "{" API "'kind':'ClusterRoleBinding'," META(n) "," REF("ClusterRole",   \
                                                                                   role) ",'subjects':[" subj "]}"}
#define WRB(ws, n, role, subj)                                                                    \
    {"WorkspaceRoleBinding", "{" API "'kind':'WorkspaceRoleBinding'," META_WS(ws, n) ","          \
                             REF("WorkspaceRole", role) ",'subjects':[" subj "]}"}
#define RB(ns, n, rkind, role, subj)                                                              \
    {"RoleBinding", "{" API "'kind':'RoleBinding'," META_NS(ns, n) "," REF(rkind, role)           \
                    ",'subjects':[" subj "]}"}

#define ALL_RULE "{'apiGroups':['*'],'resources':['*'],'verbs':['*']}"
#define VIEW_RULE "{'apiGroups':['*'],'resources':['*'],'verbs':['get','list','watch']}"

/* ---- fixture 1: the built-in roles of config/roles/ ---- */

static const obj fx_builtin[] = {
    GR("anonymous", "[{'apiGroups':['config.kubesphere.io'],'resources':['configs'],"
                    "'verbs':['get','list']},"
                    "{'nonResourceURLs':['/static/images/*'],'verbs':['get']}]"),
    GR("authenticated",
       "[{'apiGroups':['config.kubesphere.io'],'resources':['configs'],'verbs':['get','list']},"
       "{'apiGroups':['iam.kubesphere.io'],'resources':['users','roletemplates','categories'],"
       "'verbs':['list']},"
       "{'apiGroups':['resources.kubesphere.io'],'resources':['registry','git'],"
       "'verbs':['get','create']},"
       "{'apiGroups':['resources.kubesphere.io'],'resources':['clusters'],'verbs':['get','list']},"
       "{'apiGroups':['*'],'resources':['storageclasses','storageclasscapabilities','nodes'],"
       "'verbs':['get','list']},"
       "{'apiGroups':['resources.kubesphere.io'],'resources':['namespaces','services'],"
       "'verbs':['list']},"
       "{'nonResourceURLs':['/api','/api/v1','/static/images/*'],'verbs':['get']}]"),
    GR("platform-admin", "[" ALL_RULE ",{'nonResourceURLs':['*'],'verbs':['*']}]"),
    {"GlobalRole", "{" API "'kind':'GlobalRole','metadata':{'name':'platform-regular',"
                   "'annotations':{'kubesphere.io/description':'{\\'en\\': \\'x\\'}'}},"
                   "'rules':[]}"},
    {"GlobalRole",
     "{" API "'kind':'GlobalRole'," META("platform-self-provisioner")
     ",'aggregationRoleTemplates':{'templateNames':['global-create-workspaces']},"
     "'rules':[{'apiGroups':['tenant.kubesphere.io'],'resources':['workspaces',"
     "'workspacetemplates'],'verbs':['create','watch']}]}"},
    GR("users-manager",
       "[{'apiGroups':['*'],'resources':['users','users/loginrecords','loginrecords'],"
       "'verbs':['get','list','watch']},"
       "{'apiGroups':['*'],'resources':['users','users/password','users/loginrecords',"
       "'loginrecords'],'verbs':['*']},"
       "{'apiGroups':['iam.kubesphere.io'],'resources':['globalroles'],"
       "'verbs':['get','list','watch']},"
       "{'apiGroups':['*'],'resources':['globalroles'],'verbs':['*']}]"),
    GRB("anonymous", "anonymous", GROUP("system:unauthenticated")),
    GRB("authenticated", "authenticated", GROUP("system:authenticated")),
    GRB("admin", "platform-admin", USER("admin")),
    GRB("alice-platform-regular", "platform-regular", USER("alice")),
    GRB("umgr-users-manager", "users-manager", USER("umgr")),
    GRB("sam-self-provisioner", "platform-self-provisioner", USER("sam")),
};

/* ---- fixture 2: every scope ---- */

static const obj fx_base[] = {
    GR("platform-admin", "[" ALL_RULE ",{'nonResourceURLs':['*'],'verbs':['*']}]"),
    GR("platform-regular", "[]"),
    GR("authenticated", "[{'apiGroups':['iam.kubesphere.io'],'resources':['users'],"
                        "'verbs':['list']}]"),
    GRB("admin-binding", "platform-admin", USER("admin")),
    GRB("platform-admins-group", "platform-admin", GROUP("platform-admins")),
    GRB("alice-regular", "platform-regular", USER("alice")),
    GRB("authenticated", "authenticated", GROUP("system:authenticated")),

    WR("ws1", "ws1-admin", "[" ALL_RULE "]"),
    WR("ws1", "ws1-viewer", "[" VIEW_RULE "]"),
    WR("ws2", "ws2-admin", "[" ALL_RULE "]"),
    WRB("ws1", "alice-ws1-admin", "ws1-admin", USER("alice")),
    WRB("ws1", "bob-ws1-viewer", "ws1-viewer", USER("bob")),
    WRB("ws2", "dev-ws2-admin", "ws2-admin", GROUP("dev")),
    WRB("ws1", "carol-ws1-ghost", "ws1-ghost", USER("carol")),
    {"WorkspaceRoleBinding", "{" API "'kind':'WorkspaceRoleBinding'," META("nolabel-binding")
                             "," REF("WorkspaceRole", "ws1-admin") ",'subjects':[" USER("nolan")
                             "]}"},

    RO("ns3", "admin", "[" ALL_RULE "]"),
    RO("ns3", "viewer", "[{'apiGroups':[''],'resources':['pods','pods/log','configmaps'],"
                        "'verbs':['get','list','watch']}]"),
    RO("ns1", "operator",
       "[{'apiGroups':['apps'],'resources':['deployments','deployments/scale'],"
       "'verbs':['get','list','update','patch']},"
       "{'apiGroups':[''],'resources':['configmaps'],'resourceNames':['cm1'],"
       "'verbs':['get','update']},"
       "{'apiGroups':['*'],'resources':['*/status'],'verbs':['get']}]"),
    RB("ns3", "dave-admin", "Role", "admin", USER("dave")),
    RB("ns3", "erin-viewer", "Role", "viewer", USER("erin")),
    RB("ns3", "qa-viewer", "Role", "viewer", GROUP("qa")),
    RB("ns1", "frank-operator", "Role", "operator", USER("frank")),
    RB("ns3", "gina-ghost", "Role", "ghost", USER("gina")),
    RB("ns3", "heidi-cv", "ClusterRole", "cluster-viewer", USER("heidi")),

    CR("cluster-admin", "[" ALL_RULE "]"),
    CR("cluster-viewer", "[" VIEW_RULE "]"),
    CR("node-reader", "[{'apiGroups':[''],'resources':['nodes'],'verbs':['get','list']}]"),
    CR("metrics-reader", "[{'nonResourceURLs':['/metrics','/kapis/*'],'verbs':['GET']}]"),
    CRB("ivan-admin", "cluster-admin", USER("ivan")),
    CRB("judy-viewer", "cluster-viewer", USER("judy")),
    CRB("ops-nodes", "node-reader", GROUP("ops")),
    CRB("mallory-metrics", "metrics-reader", USER("mallory")),
    CRB("pat-ghost", "ghost-cr", USER("pat")),
};

static void base_extra(ks_rbac *st)
{
    static const char *const kate[] = {"dev"}, *const leo[] = {"platform-admins"},
                             *const quinn[] = {"qa"};
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns1", "ws1"), KS_OK);
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns2", "ws2"), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "kate", kate, 1), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "leo", leo, 1), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "quinn", quinn, 1), KS_OK);
}

/* ---- fixture 3: rule matching, one ClusterRole bound to user m ---- */

static const obj fx_match[] = {
    CR("rules",
       "[{'apiGroups':[''],'resources':['pods'],'verbs':['get','list']},"
       "{'apiGroups':['apps'],'resources':['deployments/scale'],'verbs':['update']},"
       "{'apiGroups':['*'],'resources':['*/status'],'verbs':['get']},"
       "{'apiGroups':['batch'],'resources':['jobs'],'resourceNames':['job-a','job-b'],"
       "'verbs':['get','delete']},"
       "{'apiGroups':['storage.k8s.io'],'resources':['*'],'verbs':['list']},"
       "{'apiGroups':['x.io'],'resources':['widgets'],'verbs':['*']},"
       "{'nonResourceURLs':['/healthz','/logs/*','/api*'],'verbs':['get']},"
       "{'nonResourceURLs':['/POSTme'],'verbs':['POST']},"
       "{'apiGroups':['Case.io'],'resources':['Things'],'verbs':['Get']},"
       "{'apiGroups':['','apps'],'resources':['configmaps','secrets'],'verbs':['watch']},"
       "{'apiGroups':['y.io'],'resources':['gadgets'],'verbs':[]},"
       "{'apiGroups':['z.io'],'verbs':['*']}]"),
    CRB("m-rules", "rules", USER("m")),
};

enum { FX_BUILTIN, FX_BASE, FX_MATCH, FX_COUNT };

static ks_rbac *fixture(int fx)
{
    ks_rbac *st = NULL;

    assert_int_equal(ks_rbac_create(&st), KS_OK);
    switch (fx) {
    case FX_BUILTIN:
        apply_all(st, fx_builtin, sizeof(fx_builtin) / sizeof(fx_builtin[0]));
        break;
    case FX_BASE:
        apply_all(st, fx_base, sizeof(fx_base) / sizeof(fx_base[0]));
        base_extra(st);
        break;
    default:
        apply_all(st, fx_match, sizeof(fx_match) / sizeof(fx_match[0]));
    }
    return st;
}

/* ---- the decision table ---- */

#define RES(sc, v, g, r, s, n, ns_, ws_)                                                          \
    {.is_resource_request = true, .verb = v, .api_group = g, .resource = r, .subresource = s,     \
     .name = n, .namespace = ns_, .workspace = ws_, .scope = sc}
#define GLB(v, g, r, s, n) RES(KS_RBAC_SCOPE_GLOBAL, v, g, r, s, n, NULL, NULL)
#define CLU(v, g, r, s, n) RES(KS_RBAC_SCOPE_CLUSTER, v, g, r, s, n, NULL, NULL)
#define WSP(ws, v, g, r, s, n) RES(KS_RBAC_SCOPE_WORKSPACE, v, g, r, s, n, NULL, ws)
#define NSP(ns, v, g, r, s, n) RES(KS_RBAC_SCOPE_NAMESPACE, v, g, r, s, n, ns, NULL)
#define URL(v, p) {.is_resource_request = false, .verb = v, .path = p}

#define G KS_RBAC_PHASE_GLOBAL
#define W KS_RBAC_PHASE_WORKSPACE
#define N KS_RBAC_PHASE_NAMESPACE
#define C KS_RBAC_PHASE_CLUSTER
#define NONE KS_RBAC_PHASE_NONE

typedef struct {
    int fx;
    const char *user;
    const char *groups[4]; /* NULL-terminated */
    ks_rbac_request req;
    bool allow;
    ks_rbac_phase phase;
    const char *reason; /* substring of the reason, or NULL */
} dcase;

static const dcase cases[] = {
    /* built-in roles: anonymous and authenticated */
    {FX_BUILTIN, NULL, {NULL}, GLB("list", "config.kubesphere.io", "configs", NULL, NULL), true, G,
     "GlobalRoleBinding \"anonymous\" of GlobalRole \"anonymous\" to Group "
     "\"system:unauthenticated\""},
    {FX_BUILTIN, "system:anonymous", {NULL}, URL("get", "/static/images/logo.png"), true, G,
     "anonymous"},
    {FX_BUILTIN, "", {NULL}, GLB("list", "iam.kubesphere.io", "users", NULL, NULL), false, NONE,
     "user \"system:anonymous\" with groups [\"system:unauthenticated\"]"},
    {FX_BUILTIN, NULL, {NULL}, URL("get", "/api"), false, NONE, "nonResourceURL \"/api\""},
    {FX_BUILTIN, "alice", {NULL}, GLB("list", "iam.kubesphere.io", "users", NULL, NULL), true, G,
     "GlobalRoleBinding \"authenticated\" of GlobalRole \"authenticated\" to Group "
     "\"system:authenticated\""},
    {FX_BUILTIN, "alice", {NULL}, GLB("get", "iam.kubesphere.io", "users", NULL, "alice"), false,
     NONE, "\"get\" resource \"users.iam.kubesphere.io\" named \"alice\" global-wide"},
    {FX_BUILTIN, "alice", {NULL}, URL("get", "/api"), true, G, "authenticated"},
    {FX_BUILTIN, "alice", {NULL}, URL("get", "/api/v1"), true, G, NULL},
    {FX_BUILTIN, "alice", {NULL}, URL("get", "/api/v1/namespaces"), false, NONE,
     "checked GlobalRoleBindings, ClusterRoleBindings"},
    {FX_BUILTIN, "alice", {NULL}, CLU("list", "", "nodes", NULL, NULL), true, G, NULL},
    {FX_BUILTIN, "alice", {NULL}, CLU("delete", "", "nodes", NULL, "n1"), false, NONE,
     "cluster scope"},
    {FX_BUILTIN, "alice", {NULL}, GLB("create", "tenant.kubesphere.io", "workspaces", NULL, NULL),
     false, NONE, NULL},
    {FX_BUILTIN, "admin", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "bob"), true,
     G, "GlobalRoleBinding \"admin\" of GlobalRole \"platform-admin\" to User \"admin\""},
    {FX_BUILTIN, "admin", {NULL}, URL("post", "/anything/at/all"), true, G, "platform-admin"},
    {FX_BUILTIN, "umgr", {NULL}, GLB("update", "iam.kubesphere.io", "users", "password", "bob"),
     true, G, "users-manager"},
    {FX_BUILTIN, "umgr", {NULL}, GLB("delete", "iam.kubesphere.io", "globalroles", NULL, "x"),
     true, G, NULL},
    {FX_BUILTIN, "umgr", {NULL}, GLB("delete", "tenant.kubesphere.io", "workspaces", NULL, "w"),
     false, NONE, NULL},
    {FX_BUILTIN, "sam", {NULL}, GLB("create", "tenant.kubesphere.io", "workspaces", NULL, NULL),
     true, G, "platform-self-provisioner"},
    {FX_BUILTIN, "sam", {NULL}, GLB("delete", "tenant.kubesphere.io", "workspaces", NULL, "w"),
     false, NONE, NULL},
    {FX_BUILTIN, "nobody", {NULL}, GLB("get", "config.kubesphere.io", "configs", NULL, "c"), true,
     G, "authenticated"},

    /* global bindings come first, whatever the scope */
    {FX_BASE, "admin", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), true, G,
     "GlobalRoleBinding \"admin-binding\""},
    {FX_BASE, "admin", {NULL}, WSP("ws1", "delete", "tenant.kubesphere.io", "workspaces", NULL,
                                   "ws1"),
     true, G, "admin-binding"},
    {FX_BASE, "admin", {NULL}, NSP("ns1", "delete", "", "pods", NULL, "p"), true, G, NULL},
    {FX_BASE, "admin", {NULL}, CLU("list", "", "nodes", NULL, NULL), true, G, NULL},
    {FX_BASE, "admin", {NULL}, URL("post", "/foo"), true, G, NULL},
    {FX_BASE, "leo", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), true, G,
     "to Group \"platform-admins\""},
    {FX_BASE, "zed", {"platform-admins", NULL}, GLB("delete", "", "users", NULL, "x"), true, G,
     "platform-admins-group"},
    {FX_BASE, "alice", {NULL}, GLB("list", "iam.kubesphere.io", "users", NULL, NULL), true, G,
     "GlobalRoleBinding \"authenticated\""},
    {FX_BASE, "alice", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), false, NONE,
     "global-wide; checked GlobalRoleBindings"},
    {FX_BASE, "alice", {NULL}, GLB("get", "tenant.kubesphere.io", "workspaces", NULL, "ws1"),
     false, NONE, NULL},

    /* workspace scope: the request's workspace */
    {FX_BASE, "alice", {NULL}, WSP("ws1", "delete", "iam.kubesphere.io", "workspacemembers", NULL,
                                   "bob"),
     true, W,
     "WorkspaceRoleBinding \"alice-ws1-admin\" of WorkspaceRole \"ws1-admin\" to User \"alice\""},
    {FX_BASE, "alice", {NULL}, WSP("ws2", "get", "tenant.kubesphere.io", "workspaces", NULL, "ws2"),
     false, NONE,
     "checked GlobalRoleBindings, WorkspaceRoleBindings of workspace \"ws2\", "
     "ClusterRoleBindings"},
    {FX_BASE, "bob", {NULL}, WSP("ws1", "list", "iam.kubesphere.io", "workspacemembers", NULL,
                                 NULL),
     true, W, "bob-ws1-viewer"},
    {FX_BASE, "bob", {NULL}, WSP("ws1", "delete", "iam.kubesphere.io", "workspacemembers", NULL,
                                 "x"),
     false, NONE, "in workspace \"ws1\""},
    {FX_BASE, "kate", {NULL}, WSP("ws2", "create", "", "namespaces", NULL, NULL), true, W,
     "WorkspaceRoleBinding \"dev-ws2-admin\" of WorkspaceRole \"ws2-admin\" to Group \"dev\""},
    {FX_BASE, "zed", {"dev", NULL}, WSP("ws2", "create", "", "namespaces", NULL, NULL), true, W,
     "to Group \"dev\""},
    {FX_BASE, "zed", {NULL}, WSP("ws2", "create", "", "namespaces", NULL, NULL), false, NONE,
     "user \"zed\" with groups [\"system:authenticated\"]"},
    /* the reason lists each group once: a token carrying the implicit group
     * (as the gateway's do), or User.spec.groups again, adds no duplicate */
    {FX_BASE, "zed", {"system:authenticated", NULL},
     WSP("ws2", "create", "", "namespaces", NULL, NULL), false, NONE,
     "user \"zed\" with groups [\"system:authenticated\"] to"},
    {FX_BASE, "kate", {"system:authenticated", "dev", "dev", NULL},
     GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), false, NONE,
     "user \"kate\" with groups [\"system:authenticated\" \"dev\"] to"},
    {FX_BASE, "quinn", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), false,
     NONE, "user \"quinn\" with groups [\"qa\" \"system:authenticated\"] to"},
    {FX_BASE, "carol", {NULL}, WSP("ws1", "get", "", "namespaces", NULL, NULL), false, NONE,
     "missing role: WorkspaceRoleBinding \"carol-ws1-ghost\" of WorkspaceRole \"ws1-ghost\""},
    {FX_BASE, "nolan", {NULL}, WSP("ws1", "get", "", "namespaces", NULL, NULL), false, NONE,
     NULL},
    {FX_BASE, "alice", {NULL}, WSP("ws-unknown", "get", "", "namespaces", NULL, NULL), false,
     NONE, "WorkspaceRoleBindings of workspace \"ws-unknown\""},

    /* namespace scope: the workspace from the namespace's label */
    {FX_BASE, "alice", {NULL}, NSP("ns1", "delete", "", "pods", NULL, "p"), true, W,
     "alice-ws1-admin"},
    {FX_BASE, "bob", {NULL}, NSP("ns1", "get", "", "pods", NULL, "p"), true, W, "bob-ws1-viewer"},
    {FX_BASE, "bob", {NULL}, NSP("ns1", "delete", "", "pods", NULL, "p"), false, NONE,
     "WorkspaceRoleBindings of workspace \"ws1\", RoleBindings in namespace \"ns1\""},
    {FX_BASE, "kate", {NULL}, NSP("ns2", "delete", "apps", "deployments", NULL, "d"), true, W,
     "dev-ws2-admin"},
    {FX_BASE, "alice", {NULL}, NSP("ns2", "get", "", "pods", NULL, "p"), false, NONE,
     "in namespace \"ns2\""},
    {FX_BASE, "alice", {NULL}, NSP("ns3", "get", "", "pods", NULL, "p"), false, NONE,
     "no WorkspaceRoleBindings (namespace \"ns3\" has no workspace)"},
    {FX_BASE, "alice", {NULL}, NSP("ns-unknown", "get", "", "pods", NULL, "p"), false, NONE,
     NULL},

    /* namespace scope: RoleBindings */
    {FX_BASE, "dave", {NULL}, NSP("ns3", "delete", "", "pods", NULL, "p"), true, N,
     "RoleBinding \"ns3/dave-admin\" of Role \"admin\" to User \"dave\""},
    {FX_BASE, "dave", {NULL}, NSP("ns1", "get", "", "pods", NULL, "p"), false, NONE, NULL},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "get", "", "pods", NULL, "p"), true, N, "erin-viewer"},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "get", "", "pods", "log", "p"), true, N, NULL},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "get", "", "pods", "exec", "p"), false, NONE,
     "resource \"pods/exec\" named \"p\""},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "delete", "", "pods", NULL, "p"), false, NONE, NULL},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "get", "", "secrets", NULL, "s"), false, NONE, NULL},
    {FX_BASE, "erin", {NULL}, NSP("ns3", "get", "apps", "pods", NULL, "p"), false, NONE,
     "resource \"pods.apps\""},
    {FX_BASE, "quinn", {NULL}, NSP("ns3", "list", "", "configmaps", NULL, NULL), true, N,
     "RoleBinding \"ns3/qa-viewer\" of Role \"viewer\" to Group \"qa\""},
    {FX_BASE, "yara", {"qa", NULL}, NSP("ns3", "list", "", "configmaps", NULL, NULL), true, N,
     "qa-viewer"},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "update", "apps", "deployments", "scale", "d"), true, N,
     "frank-operator"},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "update", "apps", "deployments", NULL, "d"), true, N,
     NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "delete", "apps", "deployments", NULL, "d"), false, NONE,
     NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "get", "", "configmaps", NULL, "cm1"), true, N, NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "get", "", "configmaps", NULL, "cm2"), false, NONE,
     NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "list", "", "configmaps", NULL, NULL), false, NONE,
     NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "get", "", "pods", "status", "p"), true, N, NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "get", "apps", "deployments", "status", "d"), true, N,
     NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns1", "update", "", "pods", "status", "p"), false, NONE, NULL},
    {FX_BASE, "frank", {NULL}, NSP("ns3", "get", "apps", "deployments", NULL, "d"), false, NONE,
     NULL},
    {FX_BASE, "gina", {NULL}, NSP("ns3", "get", "", "pods", NULL, "p"), false, NONE,
     "missing role: RoleBinding \"ns3/gina-ghost\" of Role \"ghost\""},
    {FX_BASE, "heidi", {NULL}, NSP("ns3", "list", "", "secrets", NULL, NULL), true, N,
     "RoleBinding \"ns3/heidi-cv\" of ClusterRole \"cluster-viewer\""},
    {FX_BASE, "heidi", {NULL}, NSP("ns1", "list", "", "secrets", NULL, NULL), false, NONE, NULL},
    {FX_BASE, "heidi", {NULL}, CLU("list", "", "secrets", NULL, NULL), false, NONE, NULL},

    /* cluster bindings: every scope but Global */
    {FX_BASE, "ivan", {NULL}, CLU("delete", "", "nodes", NULL, "n"), true, C,
     "ClusterRoleBinding \"ivan-admin\" of ClusterRole \"cluster-admin\" to User \"ivan\""},
    {FX_BASE, "ivan", {NULL}, NSP("ns3", "delete", "", "pods", NULL, "p"), true, C, "ivan-admin"},
    {FX_BASE, "ivan", {NULL}, WSP("ws1", "delete", "iam.kubesphere.io", "workspacemembers", NULL,
                                  "x"),
     true, C, "ivan-admin"},
    {FX_BASE, "ivan", {NULL}, GLB("delete", "iam.kubesphere.io", "users", NULL, "x"), false, NONE,
     "global-wide; checked GlobalRoleBindings"},
    {FX_BASE, "judy", {NULL}, CLU("list", "", "nodes", NULL, NULL), true, C, "judy-viewer"},
    {FX_BASE, "judy", {NULL}, CLU("delete", "", "nodes", NULL, "n"), false, NONE,
     "checked GlobalRoleBindings, ClusterRoleBindings"},
    {FX_BASE, "judy", {NULL}, NSP("ns1", "watch", "", "pods", NULL, NULL), true, C, NULL},
    {FX_BASE, "olga", {"ops", NULL}, CLU("get", "", "nodes", NULL, "n"), true, C,
     "to Group \"ops\""},
    {FX_BASE, "olga", {"ops", NULL}, CLU("delete", "", "nodes", NULL, "n"), false, NONE, NULL},
    {FX_BASE, "pat", {NULL}, CLU("get", "", "nodes", NULL, "n"), false, NONE,
     "missing role: ClusterRoleBinding \"pat-ghost\" of ClusterRole \"ghost-cr\""},

    /* non-resource requests: global and cluster bindings */
    {FX_BASE, "mallory", {NULL}, URL("get", "/metrics"), true, C, "mallory-metrics"},
    {FX_BASE, "mallory", {NULL}, URL("GET", "/metrics"), true, C, NULL},
    {FX_BASE, "mallory", {NULL}, URL("get", "/kapis/foo/bar"), true, C, NULL},
    {FX_BASE, "mallory", {NULL}, URL("get", "/kapis"), false, NONE, NULL},
    {FX_BASE, "mallory", {NULL}, URL("post", "/metrics"), false, NONE,
     "\"post\" nonResourceURL \"/metrics\""},
    {FX_BASE, "mallory", {NULL}, URL("get", "/metrics/extra"), false, NONE, NULL},
    {FX_BASE, "judy", {NULL}, URL("get", "/metrics"), false, NONE, NULL},
    {FX_BASE, "alice", {NULL}, URL("get", "/healthz"), false, NONE, NULL},
    {FX_BASE, "ivan", {NULL}, URL("get", "/anything"), false, NONE, NULL},
    {FX_BASE, "admin", {NULL}, URL("delete", "/x"), true, G, "admin-binding"},
    {FX_BASE, NULL, {NULL}, GLB("list", "iam.kubesphere.io", "users", NULL, NULL), false, NONE,
     "system:unauthenticated"},
    {FX_BASE, "system:anonymous", {"platform-admins", NULL}, GLB("list", "", "users", NULL, NULL),
     true, G, "platform-admins-group"},

    /* rule matching */
    {FX_MATCH, "m", {NULL}, CLU("get", "", "pods", NULL, "p"), true, C,
     "ClusterRoleBinding \"m-rules\" of ClusterRole \"rules\" to User \"m\""},
    {FX_MATCH, "m", {NULL}, CLU("list", "", "pods", NULL, NULL), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("delete", "", "pods", NULL, "p"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "apps", "pods", NULL, "p"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "", "pods", "log", "p"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("update", "apps", "deployments", "scale", "d"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("update", "apps", "deployments", NULL, "d"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("update", "extensions", "deployments", "scale", "d"), false, NONE,
     NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "", "pods", "status", "p"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "", "nodes", "status", "n"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "", "status", NULL, "s"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("update", "", "pods", "status", "p"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "batch", "jobs", NULL, "job-a"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("delete", "batch", "jobs", NULL, "job-b"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "batch", "jobs", NULL, "job-c"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("list", "batch", "jobs", NULL, NULL), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "batch", "jobs", NULL, ""), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("list", "storage.k8s.io", "storageclasses", NULL, NULL), true, C,
     NULL},
    {FX_MATCH, "m", {NULL}, CLU("list", "storage.k8s.io", "volumeattachments", "status", NULL),
     true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "storage.k8s.io", "storageclasses", NULL, "s"), false, NONE,
     NULL},
    {FX_MATCH, "m", {NULL}, CLU("escalate", "x.io", "widgets", NULL, "w"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("delete", "x.io", "widgets", NULL, "w"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("delete", "x.io", "widgets", "sub", "w"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("Get", "Case.io", "Things", NULL, "t"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "Case.io", "Things", NULL, "t"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("Get", "Case.io", "things", NULL, "t"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("watch", "", "configmaps", NULL, NULL), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("watch", "apps", "secrets", NULL, NULL), true, C, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "y.io", "gadgets", NULL, "g"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("get", "z.io", "anything", NULL, "a"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, CLU("frobnicate", "never.interned", "things", "sub", "n"), false, NONE,
     "\"frobnicate\" resource \"things.never.interned/sub\" named \"n\""},
    {FX_MATCH, "m", {NULL}, URL("get", "/healthz"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/healthz/"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/logs/a/b"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/logs"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/logs/"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/api"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("get", "/apis/apps/v1"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("post", "/POSTme"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("POST", "/POSTme"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, URL("post", "/postme"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, URL("put", "/healthz"), false, NONE, NULL},
    {FX_MATCH, "m", {NULL}, NSP("any-ns", "get", "", "pods", NULL, "p"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, WSP("any-ws", "get", "", "pods", NULL, "p"), true, C, NULL},
    {FX_MATCH, "m", {NULL}, GLB("get", "", "pods", NULL, "p"), false, NONE, NULL},
    {FX_MATCH, "other", {NULL}, CLU("get", "", "pods", NULL, "p"), false, NONE,
     "user \"other\""},
};

#define NCASES (sizeof(cases) / sizeof(cases[0]))

static void user_of(const dcase *c, ks_rbac_user *u)
{
    size_t n = 0;
    while (n < 4 && c->groups[n] != NULL)
        n++;
    *u = (ks_rbac_user){.name = c->user, .groups = c->groups, .ngroups = n};
}

static void test_table(void **state)
{
    ks_rbac *st[FX_COUNT];
    int failures = 0;

    (void)state;
    assert_true(NCASES >= 100);
    for (int i = 0; i < FX_COUNT; i++)
        st[i] = fixture(i);
    for (size_t i = 0; i < NCASES; i++) {
        const dcase *c = &cases[i];
        ks_rbac_user u;
        ks_rbac_decision d, s;

        user_of(c, &u);
        assert_int_equal(ks_rbac_decide(st[c->fx], &u, &c->req, &d), KS_OK);
        assert_int_equal(ks_rbac_decide_scan(st[c->fx], &u, &c->req, &s), KS_OK);
        if (d.allowed != c->allow || d.phase != c->phase ||
            (c->reason != NULL && strstr(d.reason, c->reason) == NULL)) {
            print_error("case %zu (user %s): got %s/%s: %s\n", i, c->user ? c->user : "-",
                        d.allowed ? "allow" : "deny", ks_rbac_phase_name(d.phase), d.reason);
            failures++;
        }
        if (s.allowed != d.allowed || s.phase != d.phase) {
            print_error("case %zu: the scan says %d/%s\n", i, s.allowed,
                        ks_rbac_phase_name(s.phase));
            failures++;
        }
    }
    for (int i = 0; i < FX_COUNT; i++)
        ks_rbac_destroy(st[i]);
    assert_int_equal(failures, 0);
}

/* ---- changes ---- */

static bool allowed(ks_rbac *st, const char *user, const ks_rbac_request *req,
                    ks_rbac_decision *d)
{
    ks_rbac_user u = {.name = user};
    ks_rbac_decision tmp;

    if (d == NULL)
        d = &tmp;
    assert_int_equal(ks_rbac_decide(st, &u, req, d), KS_OK);
    return d->allowed;
}

static const ks_rbac_request get_pod_ns3 = NSP("ns3", "get", "", "pods", NULL, "p");
static const ks_rbac_request del_pod_ns3 = NSP("ns3", "delete", "", "pods", NULL, "p");

static void test_delete_binding(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    ks_rbac_decision d;
    uint64_t g;

    (void)state;
    assert_true(allowed(st, "dave", &del_pod_ns3, NULL));
    g = ks_rbac_generation(st);
    assert_int_equal(ks_rbac_remove(st, "RoleBinding", "ns3", "dave-admin"), KS_OK);
    assert_true(ks_rbac_generation(st) > g);
    assert_false(allowed(st, "dave", &del_pod_ns3, &d));
    assert_non_null(strstr(d.reason, "RoleBindings in namespace \"ns3\""));
    /* again: not found, generation unchanged */
    g = ks_rbac_generation(st);
    assert_int_equal(ks_rbac_remove(st, "RoleBinding", "ns3", "dave-admin"), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_rbac_generation(st), g);
    /* a namespaced kind in another namespace is another object */
    assert_int_equal(ks_rbac_remove(st, "RoleBinding", "ns1", "erin-viewer"), KS_ERR_NOT_FOUND);
    assert_true(allowed(st, "erin", &get_pod_ns3, NULL));

    /* global, workspace and cluster bindings */
    const ks_rbac_request wsreq = WSP("ws1", "get", "", "namespaces", NULL, NULL);
    const ks_rbac_request clreq = CLU("get", "", "nodes", NULL, "n");
    assert_true(allowed(st, "alice", &wsreq, NULL));
    assert_int_equal(ks_rbac_remove(st, "WorkspaceRoleBinding", NULL, "alice-ws1-admin"), KS_OK);
    assert_false(allowed(st, "alice", &wsreq, NULL));
    assert_true(allowed(st, "ivan", &clreq, NULL));
    assert_int_equal(ks_rbac_remove(st, "ClusterRoleBinding", "ignored", "ivan-admin"), KS_OK);
    assert_false(allowed(st, "ivan", &clreq, NULL));
    assert_true(allowed(st, "admin", &clreq, NULL));
    assert_int_equal(ks_rbac_remove(st, "GlobalRoleBinding", NULL, "admin-binding"), KS_OK);
    assert_false(allowed(st, "admin", &clreq, NULL));
    ks_rbac_destroy(st);
}

/* A WorkspaceRole labelled as a template (config/roles/workspaceroles.yaml)
 * never grants, even when a binding names it. */
static void test_role_template_grants_nothing(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    const ks_rbac_request wsreq = WSP("ws1", "delete", "", "namespaces", NULL, "x");
    json_t *tpl = json_loads(
        "{\"kind\":\"WorkspaceRole\",\"metadata\":{\"name\":\"admin\",\"labels\":"
        "{\"iam.kubesphere.io/role-template\":\"true\"}},\"rules\":[{\"verbs\":[\"*\"],"
        "\"apiGroups\":[\"*\"],\"resources\":[\"*\"]}]}", 0, NULL);
    json_t *bind = json_loads(
        "{\"kind\":\"WorkspaceRoleBinding\",\"metadata\":{\"name\":\"mallory-admin\","
        "\"labels\":{\"kubesphere.io/workspace\":\"ws1\"}},\"subjects\":[{\"kind\":\"User\","
        "\"apiGroup\":\"rbac.authorization.k8s.io\",\"name\":\"mallory\"}],\"roleRef\":"
        "{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"WorkspaceRole\",\"name\":\"admin\"}}",
        0, NULL);

    (void)state;
    assert_non_null(tpl);
    assert_non_null(bind);
    assert_int_equal(ks_rbac_apply(st, "WorkspaceRole", tpl), KS_OK);
    assert_int_equal(ks_rbac_apply(st, "WorkspaceRoleBinding", bind), KS_OK);
    assert_false(allowed(st, "mallory", &wsreq, NULL));
    json_decref(tpl);
    json_decref(bind);
    ks_rbac_destroy(st);
}

static void test_delete_role(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    ks_rbac_decision d;

    (void)state;
    assert_true(allowed(st, "erin", &get_pod_ns3, NULL));
    assert_int_equal(ks_rbac_remove(st, "Role", "ns3", "viewer"), KS_OK);
    assert_false(allowed(st, "erin", &get_pod_ns3, &d));
    assert_non_null(strstr(d.reason, "missing role: RoleBinding \"ns3/erin-viewer\" of Role "
                                     "\"viewer\""));
    assert_int_equal(ks_rbac_remove(st, "Role", "ns3", "viewer"), KS_ERR_NOT_FOUND);
    /* the role comes back: the binding sees it */
    apply_ok(st, "Role",
             "{" API "'kind':'Role'," META_NS("ns3", "viewer") ",'rules':[" VIEW_RULE "]}");
    assert_true(allowed(st, "erin", &get_pod_ns3, NULL));
    /* a missing role arrives: carol's binding starts to grant */
    const ks_rbac_request wsreq = WSP("ws1", "get", "", "namespaces", NULL, NULL);
    assert_false(allowed(st, "carol", &wsreq, NULL));
    apply_ok(st, "WorkspaceRole",
             "{" API "'kind':'WorkspaceRole'," META_WS("ws1", "ws1-ghost") ",'rules':[" VIEW_RULE
             "]}");
    assert_true(allowed(st, "carol", &wsreq, &d));
    assert_non_null(strstr(d.reason, "carol-ws1-ghost"));
    ks_rbac_destroy(st);
}

static void test_role_update(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    const ks_rbac_request secrets = NSP("ns3", "get", "", "secrets", NULL, "s");

    (void)state;
    assert_true(allowed(st, "erin", &get_pod_ns3, NULL));
    assert_false(allowed(st, "erin", &secrets, NULL));
    apply_ok(st, "Role",
             "{" API "'kind':'Role'," META_NS("ns3", "viewer")
             ",'rules':[{'apiGroups':[''],'resources':['secrets'],'verbs':['get']}]}");
    assert_false(allowed(st, "erin", &get_pod_ns3, NULL));
    assert_true(allowed(st, "erin", &secrets, NULL));
    /* no rules at all */
    apply_ok(st, "Role", "{" API "'kind':'Role'," META_NS("ns3", "viewer") "}");
    assert_false(allowed(st, "erin", &secrets, NULL));

    /* a binding update: another role, then other subjects */
    apply_ok(st, "RoleBinding",
             "{" API "'kind':'RoleBinding'," META_NS("ns3", "erin-viewer") "," REF("Role", "admin")
             ",'subjects':[" USER("erin") "]}");
    assert_true(allowed(st, "erin", &del_pod_ns3, NULL));
    apply_ok(st, "RoleBinding",
             "{" API "'kind':'RoleBinding'," META_NS("ns3", "erin-viewer") "," REF("Role", "admin")
             ",'subjects':[" USER("fred") "," GROUP("grp") "]}");
    assert_false(allowed(st, "erin", &del_pod_ns3, NULL));
    assert_true(allowed(st, "fred", &del_pod_ns3, NULL));
    ks_rbac_user u = {.name = "x", .groups = (const char *const[]){"grp"}, .ngroups = 1};
    ks_rbac_decision d;
    assert_int_equal(ks_rbac_decide(st, &u, &del_pod_ns3, &d), KS_OK);
    assert_true(d.allowed);
    ks_rbac_destroy(st);
}

static void test_labels_and_groups(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    const ks_rbac_request ns3 = NSP("ns3", "delete", "", "pods", NULL, "p");
    const ks_rbac_request ws1 = WSP("ws1", "get", "", "namespaces", NULL, NULL);
    const char *grp[] = {"dev"};

    (void)state;
    /* ns3 joins ws1: alice (ws1 admin) may act in it; leaves: she may not */
    assert_false(allowed(st, "alice", &ns3, NULL));
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns3", "ws1"), KS_OK);
    assert_true(allowed(st, "alice", &ns3, NULL));
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns3", "ws2"), KS_OK);
    assert_false(allowed(st, "alice", &ns3, NULL));
    assert_true(allowed(st, "kate", &ns3, NULL));
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns3", NULL), KS_OK);
    assert_false(allowed(st, "kate", &ns3, NULL));
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "never-seen", NULL), KS_OK);
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "", "ws1"), KS_ERR_INVALID);

    /* a WorkspaceRoleBinding moves to another workspace with its label */
    apply_ok(st, "WorkspaceRoleBinding",
             "{" API "'kind':'WorkspaceRoleBinding'," META_WS("ws2", "alice-ws1-admin") ","
             REF("WorkspaceRole", "ws1-admin") ",'subjects':[" USER("alice") "]}");
    assert_false(allowed(st, "alice", &ws1, NULL));
    const ks_rbac_request ws2 = WSP("ws2", "get", "", "namespaces", NULL, NULL);
    assert_true(allowed(st, "alice", &ws2, NULL));

    /* User.spec.groups change */
    const ks_rbac_request ws2c = WSP("ws2", "create", "", "namespaces", NULL, NULL);
    assert_false(allowed(st, "zoe", &ws2c, NULL));
    assert_int_equal(ks_rbac_set_user_groups(st, "zoe", grp, 1), KS_OK);
    assert_true(allowed(st, "zoe", &ws2c, NULL));
    assert_int_equal(ks_rbac_set_user_groups(st, "zoe", NULL, 0), KS_OK);
    assert_false(allowed(st, "zoe", &ws2c, NULL));
    /* the anonymous user never gets a User's groups */
    assert_int_equal(ks_rbac_set_user_groups(st, "system:anonymous", grp, 1), KS_OK);
    assert_false(allowed(st, "system:anonymous", &ws2c, NULL));
    assert_int_equal(ks_rbac_set_user_groups(st, "kate", (const char *const[]){""}, 1),
                     KS_ERR_INVALID);
    assert_true(allowed(st, "kate", &ws2c, NULL)); /* unchanged */
    ks_rbac_destroy(st);
}

static void test_generation(void **state)
{
    ks_rbac *st = NULL;
    uint64_t g;
    const char *grp[] = {"a"};

    (void)state;
    assert_int_equal(ks_rbac_create(&st), KS_OK);
    assert_int_equal(ks_rbac_generation(st), 0);
    apply_ok(st, "GlobalRole", "{" API "'kind':'GlobalRole'," META("r") ",'rules':[]}");
    assert_int_equal(ks_rbac_generation(st), 1);
    apply_ok(st, "GlobalRoleBinding",
             "{" API "'kind':'GlobalRoleBinding'," META("b") "," REF("GlobalRole", "r")
             ",'subjects':[" USER("u") "]}");
    assert_int_equal(ks_rbac_generation(st), 2);
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns", "ws"), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "u", grp, 1), KS_OK);
    assert_int_equal(ks_rbac_remove(st, "GlobalRoleBinding", NULL, "b"), KS_OK);
    assert_int_equal(ks_rbac_remove(st, "GlobalRole", NULL, "r"), KS_OK);
    g = ks_rbac_generation(st);
    assert_int_equal(g, 6);
    /* failures change nothing */
    assert_int_equal(apply_rc(st, "GlobalRole", "{'metadata':{}}"), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_remove(st, "GlobalRole", NULL, "r"), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_rbac_generation(st), g);
    /* decisions do not count */
    ks_rbac_decision d;
    assert_false(allowed(st, "u", &get_pod_ns3, &d));
    assert_int_equal(ks_rbac_generation(st), g);
    assert_int_equal(ks_rbac_generation(NULL), 0);
    ks_rbac_destroy(st);
}

/* One user with 2,000 RoleBindings in 2,000 namespaces, one group with 1,000
 * WorkspaceRoleBindings, and 300 bindings of one user in one namespace of
 * which only the last has a role. */
static void test_many_bindings(void **state)
{
    ks_rbac *st = NULL;
    char buf[512], ns[32];
    ks_rbac_decision d;

    (void)state;
    assert_int_equal(ks_rbac_create(&st), KS_OK);
    for (int i = 0; i < 2000; i++) {
        snprintf(ns, sizeof(ns), "ns-%d", i);
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'Role','metadata':{'name':'viewer','namespace':'%s'},"
                 "'rules':[" VIEW_RULE "]}",
                 ns);
        apply_ok(st, "Role", buf);
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'RoleBinding','metadata':{'name':'many-viewer','namespace':'%s'},"
                 REF("Role", "viewer") ",'subjects':[" USER("many") "]}",
                 ns);
        apply_ok(st, "RoleBinding", buf);
    }
    for (int i = 0; i < 1000; i++) {
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'WorkspaceRole','metadata':{'name':'w%d-viewer','labels':"
                 "{'kubesphere.io/workspace':'w%d'}},'rules':[" VIEW_RULE "]}",
                 i, i);
        apply_ok(st, "WorkspaceRole", buf);
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'WorkspaceRoleBinding','metadata':{'name':'crowd-w%d','labels':"
                 "{'kubesphere.io/workspace':'w%d'}}," REF("WorkspaceRole", "w%d-viewer")
                 ",'subjects':[" GROUP("crowd") "]}",
                 i, i, i);
        apply_ok(st, "WorkspaceRoleBinding", buf);
    }
    for (int i = 0; i < 300; i++) {
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'RoleBinding','metadata':{'name':'b%03d','namespace':'one'},"
                 REF("Role", "%s") ",'subjects':[" USER("busy") "]}",
                 i, i == 299 ? "real" : "ghost");
        apply_ok(st, "RoleBinding", buf);
    }
    apply_ok(st, "Role", "{" API "'kind':'Role'," META_NS("one", "real") ",'rules':[" VIEW_RULE
                         "]}");

    ks_rbac_stats s;
    ks_rbac_stats_get(st, &s);
    assert_int_equal(s.bindings, 3300);
    assert_int_equal(s.roles, 3001);
    assert_int_equal(s.missing_roles, 1);

    const ks_rbac_request r1999 = NSP("ns-1999", "get", "", "pods", NULL, "p");
    const ks_rbac_request r0 = NSP("ns-0", "list", "", "pods", NULL, NULL);
    const ks_rbac_request nsx = NSP("ns-x", "get", "", "pods", NULL, "p");
    assert_true(allowed(st, "many", &r1999, &d));
    assert_non_null(strstr(d.reason, "RoleBinding \"ns-1999/many-viewer\""));
    assert_true(allowed(st, "many", &r0, NULL));
    assert_false(allowed(st, "many", &nsx, NULL));
    ks_rbac_user crowd = {.name = "c", .groups = (const char *const[]){"crowd"}, .ngroups = 1};
    const ks_rbac_request w999 = WSP("w999", "list", "", "namespaces", NULL, NULL);
    assert_int_equal(ks_rbac_decide(st, &crowd, &w999, &d), KS_OK);
    assert_true(d.allowed);
    assert_non_null(strstr(d.reason, "crowd-w999"));
    const ks_rbac_request one = NSP("one", "get", "", "pods", NULL, "p");
    assert_true(allowed(st, "busy", &one, &d));
    assert_non_null(strstr(d.reason, "RoleBinding \"one/b299\""));
    const ks_rbac_request onedel = NSP("one", "delete", "", "pods", NULL, "p");
    assert_false(allowed(st, "busy", &onedel, &d));
    assert_non_null(strstr(d.reason, "missing role: RoleBinding \"one/b000\" of Role \"ghost\""));
    assert_non_null(strstr(d.reason, " and more"));

    /* the index answers without looking at the others: compare with the scan */
    ks_rbac_user many = {.name = "many"};
    ks_rbac_decision ds;
    assert_int_equal(ks_rbac_decide_scan(st, &many, &r1999, &ds), KS_OK);
    assert_true(ds.allowed);
    ks_rbac_destroy(st);
}

/* ---- bad input ---- */

static void test_bad_input(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    ks_rbac_decision d;
    ks_rbac_stats before, after;
    uint64_t g = ks_rbac_generation(st);

    (void)state;
    ks_rbac_stats_get(st, &before);
    assert_int_equal(apply_rc(st, "Pod", "{" META("x") "}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "[]"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{'kind':'ClusterRole'," META("x") "}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{'metadata':{'name':''}}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "Role", "{" META("x") ",'rules':[]}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{" META("x") ",'rules':{}}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{" META("x") ",'rules':[1]}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{" META("x") ",'rules':[{'verbs':'get'}]}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRole", "{" META("x") ",'rules':[{'verbs':['get',2]}]}"),
                     KS_ERR_INVALID);
    assert_int_equal(
        apply_rc(st, "GlobalRole",
                 "{'metadata':{'name':'x','labels':'no'},'rules':[]}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRoleBinding", "{" META("x") "}"), KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRoleBinding", "{" META("x") ",'roleRef':{'kind':"
                                                       "'GlobalRole'}}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRoleBinding",
                              "{" META("x") "," REF("Secret", "r") ",'subjects':[]}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "ClusterRoleBinding",
                              "{" META("x") "," REF("Role", "r") ",'subjects':[]}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRoleBinding",
                              "{" META("x") "," REF("GlobalRole", "r") ",'subjects':{}}"),
                     KS_ERR_INVALID);
    assert_int_equal(apply_rc(st, "GlobalRoleBinding",
                              "{" META("x") "," REF("GlobalRole", "r") ",'subjects':[{'kind':"
                                            "'User'}]}"),
                     KS_ERR_INVALID);
    /* an invalid update leaves the previous version in place */
    assert_int_equal(apply_rc(st, "RoleBinding",
                              "{" META_NS("ns3", "dave-admin") ",'roleRef':'admin'}"),
                     KS_ERR_INVALID);
    assert_true(allowed(st, "dave", &del_pod_ns3, NULL));
    ks_rbac_stats_get(st, &after);
    assert_memory_equal(&before, &after, sizeof(before));
    assert_int_equal(ks_rbac_generation(st), g);

    assert_int_equal(ks_rbac_apply(st, "GlobalRole", NULL), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_apply(st, NULL, NULL), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_remove(st, "Nope", NULL, "x"), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_remove(st, "Role", NULL, "x"), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_remove(st, "GlobalRole", NULL, ""), KS_ERR_INVALID);

    /* decide: bad arguments leave *out alone */
    ks_rbac_user u = {.name = "alice"};
    ks_rbac_request bad = get_pod_ns3;
    memset(&d, 0x5a, sizeof(d));
    bad.scope = (ks_rbac_scope)7;
    assert_int_equal(ks_rbac_decide(st, &u, &bad, &d), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_decide(st, NULL, &bad, &d), KS_ERR_INVALID);
    assert_int_equal(ks_rbac_decide(st, &u, &get_pod_ns3, NULL), KS_ERR_INVALID);
    ks_rbac_user nog = {.name = "alice", .groups = NULL, .ngroups = 2};
    assert_int_equal(ks_rbac_decide(st, &nog, &get_pod_ns3, &d), KS_ERR_INVALID);
    static const char *many[KS_RBAC_MAX_GROUPS + 1];
    for (size_t i = 0; i <= KS_RBAC_MAX_GROUPS; i++)
        many[i] = "g";
    ks_rbac_user big = {.name = "alice", .groups = many, .ngroups = KS_RBAC_MAX_GROUPS + 1};
    assert_int_equal(ks_rbac_decide(st, &big, &get_pod_ns3, &d), KS_ERR_TOO_LARGE);
    assert_int_equal(((unsigned char *)&d)[0], 0x5a);
    big.ngroups = KS_RBAC_MAX_GROUPS;
    assert_int_equal(ks_rbac_decide(st, &big, &get_pod_ns3, &d), KS_OK);
    /* a non-resource request's scope is not read */
    ks_rbac_request url = {.verb = "get", .path = "/metrics", .scope = (ks_rbac_scope)9};
    assert_true(allowed(st, "mallory", &url, NULL));
    /* all-NULL strings read as "" */
    ks_rbac_request empty = {.is_resource_request = true, .scope = KS_RBAC_SCOPE_NAMESPACE};
    assert_false(allowed(st, "alice", &empty, NULL));
    assert_true(allowed(st, "admin", &empty, NULL));

    /* hostile strings in the reason are escaped, long ones cut */
    char longname[2000];
    memset(longname, 'a', sizeof(longname) - 1);
    longname[sizeof(longname) - 1] = '\0';
    ks_rbac_request evil = NSP("ns\"\n\\", "get", "", "pods", NULL, longname);
    assert_false(allowed(st, "alice", &evil, &d));
    assert_non_null(strstr(d.reason, "named \"aaaa"));
    assert_int_equal(strlen(d.reason), KS_RBAC_REASON_MAX - 1);
    assert_string_equal(d.reason + KS_RBAC_REASON_MAX - 4, "...");
    ks_rbac_request evil2 = NSP("ns\"\n\\", "get", "", "pods", NULL, "p");
    assert_false(allowed(st, "alice", &evil2, &d));
    assert_non_null(strstr(d.reason, "in namespace \"ns\\\"?\\\\\""));

    /* the quoting's eight-byte fast path against a byte-by-byte reference */
    static const char *const odd[] = {
        "abcdefgh\"ijklmnop\\qrstuvwx\x01yz", "0123456789abcdef", "\x7f" "1234567\"",
        "caf\xc3\xa9-caf\xc3\xa9-caf\xc3\xa9", "        \t", "\"\"\"\"\"\"\"\"\""};
    for (size_t i = 0; i < sizeof(odd) / sizeof(odd[0]); i++) {
        char want[128], *w = want;
        ks_rbac_request r = NSP("ns1", "get", "", "pods", NULL, odd[i]);
        *w++ = '"';
        for (const char *p = odd[i]; *p; p++) {
            unsigned char ch = (unsigned char)*p;
            if (ch == '"' || ch == '\\')
                *w++ = '\\';
            *w++ = (ch < 0x20 || ch == 0x7f) ? '?' : (char)ch;
        }
        *w++ = '"';
        *w = '\0';
        assert_false(allowed(st, "alice-nobody", &r, &d));
        if (strstr(d.reason, want) == NULL)
            fail_msg("quoting %zu: %s lacks %s", i, d.reason, want);
    }

    /* names */
    ks_rbac_scope sc;
    assert_int_equal(ks_rbac_scope_parse("Namespace", &sc), KS_OK);
    assert_int_equal(sc, KS_RBAC_SCOPE_NAMESPACE);
    assert_int_equal(ks_rbac_scope_parse("namespace", &sc), KS_ERR_INVALID);
    assert_string_equal(ks_rbac_scope_name(KS_RBAC_SCOPE_WORKSPACE), "Workspace");
    assert_string_equal(ks_rbac_phase_name(KS_RBAC_PHASE_CLUSTER), "cluster");
    assert_string_equal(ks_rbac_phase_name((ks_rbac_phase)42), "unknown");
    ks_rbac_destroy(st);
    ks_rbac_destroy(NULL);
}

/* Apply and remove everything: every interned string must be released. */
static void test_refcounts(void **state)
{
    ks_rbac *st = fixture(FX_BASE);
    ks_rbac_stats s;

    (void)state;
    ks_rbac_stats_get(st, &s);
    assert_true(s.strings > 0);
    for (size_t i = 0; i < sizeof(fx_base) / sizeof(fx_base[0]); i++) {
        json_t *j = jq(fx_base[i].json);
        const json_t *md = json_object_get(j, "metadata");
        const char *ns = json_string_value(json_object_get(md, "namespace"));
        const char *name = json_string_value(json_object_get(md, "name"));
        assert_int_equal(ks_rbac_remove(st, fx_base[i].kind, ns, name), KS_OK);
        json_decref(j);
    }
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns1", NULL), KS_OK);
    assert_int_equal(ks_rbac_set_namespace_workspace(st, "ns2", ""), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "kate", NULL, 0), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "leo", NULL, 0), KS_OK);
    assert_int_equal(ks_rbac_set_user_groups(st, "quinn", NULL, 0), KS_OK);
    ks_rbac_stats_get(st, &s);
    assert_int_equal(s.roles, 0);
    assert_int_equal(s.rules, 0);
    assert_int_equal(s.bindings, 0);
    assert_int_equal(s.missing_roles, 0);
    assert_int_equal(s.index_keys, 0);
    assert_int_equal(s.strings, 0);
    assert_int_equal(s.namespaces, 0);
    assert_int_equal(s.users_with_groups, 0);
    /* and it still works afterwards */
    apply_all(st, fx_base, sizeof(fx_base) / sizeof(fx_base[0]));
    assert_true(allowed(st, "dave", &del_pod_ns3, NULL));
    ks_rbac_destroy(st);
}

/* ---- randomised: the index and the scan agree ---- */

static uint64_t rng_state = 88172645463325252ULL;

static uint32_t rnd(uint32_t n)
{
    rng_state ^= rng_state << 13;
    rng_state ^= rng_state >> 7;
    rng_state ^= rng_state << 17;
    return (uint32_t)(rng_state % n);
}

static const char *const r_verbs[] = {"get", "list", "watch", "create", "delete", "*"};
static const char *const r_groups[] = {"", "apps", "iam.kubesphere.io", "*"};
static const char *const r_res[] = {"pods", "pods/log", "deployments", "*/status", "secrets", "*"};

static void random_rule(char *buf, size_t cap)
{
    snprintf(buf, cap,
             "{'apiGroups':['%s','%s'],'resources':['%s','%s'],'verbs':['%s','%s']%s}",
             r_groups[rnd(4)], r_groups[rnd(3)], r_res[rnd(6)], r_res[rnd(5)], r_verbs[rnd(6)],
             r_verbs[rnd(5)], rnd(4) == 0 ? ",'resourceNames':['n1']" : "");
}

static void test_random_crosscheck(void **state)
{
    static const char *const kinds[] = {"GlobalRoleBinding", "WorkspaceRoleBinding",
                                        "RoleBinding", "ClusterRoleBinding"};
    static const char *const rkinds[] = {"GlobalRole", "WorkspaceRole", "Role", "ClusterRole"};
    ks_rbac *st = NULL;
    char buf[1024], rule[256];
    int mism = 0, allows = 0;

    (void)state;
    assert_int_equal(ks_rbac_create(&st), KS_OK);
    for (int i = 0; i < 20; i++) {
        char ns[16], ws[16];
        snprintf(ns, sizeof(ns), "n%d", i);
        snprintf(ws, sizeof(ws), "w%d", i % 5);
        if (i % 4 != 3)
            assert_int_equal(ks_rbac_set_namespace_workspace(st, ns, ws), KS_OK);
    }
    for (int round = 0; round < 3; round++) {
        /* roles: 5 of each kind (Roles in 5 namespaces), some left missing */
        for (int k = 0; k < 4; k++)
            for (int i = 0; i < 5; i++) {
                if (rnd(6) == 0)
                    continue;
                random_rule(rule, sizeof(rule));
                if (k == 2)
                    snprintf(buf, sizeof(buf),
                             "{'metadata':{'name':'r%d','namespace':'n%d'},'rules':[%s]}", i,
                             rnd(20), rule);
                else
                    snprintf(buf, sizeof(buf),
                             "{'metadata':{'name':'r%d','labels':{'kubesphere.io/workspace':"
                             "'w%d'}},'rules':[%s]}",
                             i, i, rule);
                apply_ok(st, rkinds[k], buf);
            }
        for (int b = 0; b < 400; b++) {
            int k = (int)rnd(4);
            char subj[128];
            snprintf(subj, sizeof(subj), "{'kind':'%s','name':'%s%d'}",
                     rnd(3) ? "User" : "Group", rnd(2) ? "u" : "g", rnd(12));
            if (k == 2)
                snprintf(buf, sizeof(buf),
                         "{'metadata':{'name':'b%d','namespace':'n%d'},'roleRef':{'kind':'%s',"
                         "'name':'r%d'},'subjects':[%s]}",
                         b, rnd(20), rnd(2) ? "Role" : "ClusterRole", rnd(6), subj);
            else
                snprintf(buf, sizeof(buf),
                         "{'metadata':{'name':'b%d','labels':{'kubesphere.io/workspace':'w%d'}},"
                         "'roleRef':{'kind':'%s','name':'r%d'},'subjects':[%s]}",
                         b, rnd(5), rkinds[k], rnd(6), subj);
            apply_ok(st, kinds[k], buf);
        }
        for (int b = 0; b < 100; b++) {
            char ns[16], nm[16];
            int k = (int)rnd(4);
            snprintf(ns, sizeof(ns), "n%d", rnd(20));
            snprintf(nm, sizeof(nm), "b%d", rnd(400));
            ks_status rc = ks_rbac_remove(st, kinds[k], ns, nm);
            assert_true(rc == KS_OK || rc == KS_ERR_NOT_FOUND);
        }
        for (int q = 0; q < 4000; q++) {
            static const char *const qres[] = {"pods", "deployments", "secrets", "nodes"};
            static const char *const qsub[] = {NULL, "log", "status", "exec"};
            static const char *const qverb[] = {"get", "list", "watch", "create", "delete",
                                                "patch"};
            char user[16], g1[16], ns[16], ws[16];
            const char *groups[1] = {g1};
            snprintf(user, sizeof(user), "u%d", rnd(12));
            snprintf(g1, sizeof(g1), "g%d", rnd(12));
            snprintf(ns, sizeof(ns), "n%d", rnd(22));
            snprintf(ws, sizeof(ws), "w%d", rnd(6));
            ks_rbac_user u = {.name = user, .groups = groups, .ngroups = rnd(2)};
            ks_rbac_request r = {.is_resource_request = true,
                                 .verb = qverb[rnd(6)],
                                 .api_group = r_groups[rnd(3)],
                                 .resource = qres[rnd(4)],
                                 .subresource = qsub[rnd(4)],
                                 .name = rnd(2) ? "n1" : "n2",
                                 .namespace = ns,
                                 .workspace = ws,
                                 .scope = (ks_rbac_scope)rnd(4)};
            ks_rbac_decision a, b;
            assert_int_equal(ks_rbac_decide(st, &u, &r, &a), KS_OK);
            assert_int_equal(ks_rbac_decide_scan(st, &u, &r, &b), KS_OK);
            allows += a.allowed;
            if (a.allowed != b.allowed || a.phase != b.phase) {
                if (mism++ < 5)
                    print_error("mismatch: %s | %s\n", a.reason, b.reason);
            }
        }
    }
    assert_int_equal(mism, 0);
    /* the mix must exercise both outcomes */
    assert_true(allows > 500 && allows < 11500);
    ks_rbac_destroy(st);
}

/* ---- concurrency: decisions while the store changes ---- */

typedef struct {
    ks_rbac *st;
    atomic_int stop;
    atomic_long decisions;
    atomic_int wrong;
} conc;

static void *reader(void *arg)
{
    conc *c = arg;
    ks_rbac_user stable = {.name = "dave"}, flap = {.name = "flapper"};
    ks_rbac_decision d;

    while (!atomic_load(&c->stop)) {
        if (ks_rbac_decide(c->st, &stable, &del_pod_ns3, &d) != KS_OK || !d.allowed)
            atomic_fetch_add(&c->wrong, 1);
        if (ks_rbac_decide(c->st, &flap, &del_pod_ns3, &d) != KS_OK)
            atomic_fetch_add(&c->wrong, 1);
        atomic_fetch_add(&c->decisions, 2);
    }
    return NULL;
}

static void test_concurrency(void **state)
{
    conc c = {.st = fixture(FX_BASE)};
    pthread_t th[2];
    char buf[512];

    (void)state;
    for (int i = 0; i < 2; i++)
        assert_int_equal(pthread_create(&th[i], NULL, reader, &c), 0);
    for (int i = 0; i < 2000; i++) {
        snprintf(buf, sizeof(buf),
                 "{" API "'kind':'RoleBinding','metadata':{'name':'flap-%d','namespace':'ns3'},"
                 REF("Role", "admin") ",'subjects':[" USER("flapper") "]}",
                 i % 7);
        apply_ok(c.st, "RoleBinding", buf);
        if (i % 3 == 0)
            apply_ok(c.st, "Role", "{" API "'kind':'Role'," META_NS("ns3", "admin")
                                   ",'rules':[" ALL_RULE "]}");
        if (i % 2 == 0) {
            snprintf(buf, sizeof(buf), "flap-%d", (i + 3) % 7);
            ks_status rc = ks_rbac_remove(c.st, "RoleBinding", "ns3", buf);
            assert_true(rc == KS_OK || rc == KS_ERR_NOT_FOUND);
        }
    }
    atomic_store(&c.stop, 1);
    for (int i = 0; i < 2; i++)
        pthread_join(th[i], NULL);
    assert_int_equal(atomic_load(&c.wrong), 0);
    assert_true(atomic_load(&c.decisions) > 0);
    ks_rbac_destroy(c.st);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_delete_binding),
        cmocka_unit_test(test_delete_role),
        cmocka_unit_test(test_role_template_grants_nothing),
        cmocka_unit_test(test_role_update),
        cmocka_unit_test(test_labels_and_groups),
        cmocka_unit_test(test_generation),
        cmocka_unit_test(test_many_bindings),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_refcounts),
        cmocka_unit_test(test_random_crosscheck),
        cmocka_unit_test(test_concurrency),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
