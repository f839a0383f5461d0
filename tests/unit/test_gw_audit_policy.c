/* Unit tests of the gateway's audit policy (services/apigw/audit_policy.c):
 *
 *   - without a file, every request is at Metadata;
 *   - each matcher alone (users, userGroups, verbs, resources as strings,
 *     wildcards, subresources and group objects, namespaces with "" for
 *     cluster scope, nonResourceURLs exact and prefix), and together;
 *   - the first matching rule wins, the top-level level is the fallback;
 *   - a rule with resources or namespaces never matches a non-resource
 *     request, one with nonResourceURLs never a resource request;
 *   - every validation error is KS_ERR_INVALID with a message naming the
 *     element; a missing file is KS_ERR_IO naming the path. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "../../services/apigw/audit_policy.c"

#define NONE GW_AUDIT_NONE
#define META GW_AUDIT_METADATA
#define REQ GW_AUDIT_REQUEST
#define RR GW_AUDIT_REQUEST_RESPONSE

static const char *const g_devs[] = {"system:authenticated", "devs"};
static const char *const g_ops[] = {"ops"};

/* a resource request */
#define RES(u, v, grp, res, sub, ns)                                                             \
    {.user = (u), .verb = (v), .is_resource_request = 1, .api_group = (grp),                     \
     .resource = (res), .subresource = (sub), .namespace_ = (ns), .path = "/api/x"}
/* a non-resource request */
#define NONRES(u, v, p) {.user = (u), .verb = (v), .path = (p)}

static gw_audit_policy *parse_ok(const char *json)
{
    gw_audit_policy *p = NULL;
    ks_status st = gw_audit_policy_parse(json, strlen(json), &p);

    if (st != KS_OK)
        fail_msg("parse failed: %s\n  policy: %s", ks_status_last(), json);
    assert_non_null(p);
    return p;
}

static void test_default_policy(void **state)
{
    gw_audit_policy *p = NULL;
    gw_audit_attrs r = RES("alice", "get", "", "secrets", "", "default");
    gw_audit_attrs n = NONRES("alice", "get", "/healthz");
    gw_audit_attrs empty = {0};

    (void)state;
    assert_int_equal(gw_audit_policy_load(NULL, &p), KS_OK);
    assert_int_equal(gw_audit_policy_level(p, &r), META);
    assert_int_equal(gw_audit_policy_level(p, &n), META);
    assert_int_equal(gw_audit_policy_level(p, &empty), META);
    gw_audit_policy_free(p);
    p = NULL;
    assert_int_equal(gw_audit_policy_load("", &p), KS_OK);
    assert_int_equal(gw_audit_policy_level(p, &r), META);
    gw_audit_policy_free(p);
    assert_int_equal(gw_audit_policy_level(NULL, &r), META);
    gw_audit_policy_free(NULL);

    /* a file without rules: its level */
    p = parse_ok("{}");
    assert_int_equal(gw_audit_policy_level(p, &r), META);
    gw_audit_policy_free(p);
    p = parse_ok("{\"level\":\"None\",\"rules\":[]}");
    assert_int_equal(gw_audit_policy_level(p, &r), NONE);
    assert_int_equal(gw_audit_policy_level(p, &n), NONE);
    gw_audit_policy_free(p);

    assert_string_equal(gw_audit_level_name(NONE), "None");
    assert_string_equal(gw_audit_level_name(META), "Metadata");
    assert_string_equal(gw_audit_level_name(REQ), "Request");
    assert_string_equal(gw_audit_level_name(RR), "RequestResponse");
    assert_string_equal(gw_audit_level_name((gw_audit_level)42), "Unknown");
}

/* One policy per case, "{\"rules\":[" RULE "]}" with the default Metadata,
 * so a match gives the rule's level and a miss Metadata. */
typedef struct {
    const char *name;
    const char *rule;
    gw_audit_attrs a;
    const char *const *groups;
    size_t ngroups;
    gw_audit_level want;
} match_case;

static const match_case match_cases[] = {
    /* users */
    {"users hit", "{\"level\":\"None\",\"users\":[\"bob\",\"alice\"]}",
     RES("alice", "get", "", "pods", "", "default"), NULL, 0, NONE},
    {"users miss", "{\"level\":\"None\",\"users\":[\"bob\",\"alice\"]}",
     RES("carol", "get", "", "pods", "", "default"), NULL, 0, META},
    {"users case-sensitive", "{\"level\":\"None\",\"users\":[\"alice\"]}",
     RES("Alice", "get", "", "pods", "", "default"), NULL, 0, META},
    {"users NULL user", "{\"level\":\"None\",\"users\":[\"alice\"]}",
     RES(NULL, "get", "", "pods", "", "default"), NULL, 0, META},
    {"users non-resource", "{\"level\":\"None\",\"users\":[\"alice\"]}",
     NONRES("alice", "post", "/oauth/token"), NULL, 0, NONE},
    {"users empty list is any", "{\"level\":\"None\",\"users\":[]}",
     RES("zed", "get", "", "pods", "", ""), NULL, 0, NONE},
    /* userGroups */
    {"userGroups hit", "{\"level\":\"Request\",\"userGroups\":[\"devs\"]}",
     RES("alice", "get", "", "pods", "", "default"), g_devs, 2, REQ},
    {"userGroups miss", "{\"level\":\"Request\",\"userGroups\":[\"devs\"]}",
     RES("alice", "get", "", "pods", "", "default"), g_ops, 1, META},
    {"userGroups no groups", "{\"level\":\"Request\",\"userGroups\":[\"devs\"]}",
     RES("alice", "get", "", "pods", "", "default"), NULL, 0, META},
    /* verbs */
    {"verbs hit", "{\"level\":\"None\",\"verbs\":[\"get\",\"list\",\"watch\"]}",
     RES("alice", "watch", "", "pods", "", "default"), NULL, 0, NONE},
    {"verbs miss", "{\"level\":\"None\",\"verbs\":[\"get\",\"list\",\"watch\"]}",
     RES("alice", "create", "", "pods", "", "default"), NULL, 0, META},
    {"verbs non-resource", "{\"level\":\"None\",\"verbs\":[\"get\"]}",
     NONRES("alice", "get", "/version"), NULL, 0, NONE},
    {"verbs NULL verb", "{\"level\":\"None\",\"verbs\":[\"get\"]}",
     RES("alice", NULL, "", "pods", "", "default"), NULL, 0, META},
    /* resources: strings match any group */
    {"resource string core", "{\"level\":\"RequestResponse\",\"resources\":[\"users\"]}",
     RES("a", "get", "", "users", "", ""), NULL, 0, RR},
    {"resource string other group", "{\"level\":\"RequestResponse\",\"resources\":[\"users\"]}",
     RES("a", "get", "iam.kubesphere.io", "users", "", ""), NULL, 0, RR},
    {"resource string not subresource", "{\"level\":\"RequestResponse\",\"resources\":[\"users\"]}",
     RES("a", "update", "iam.kubesphere.io", "users", "password", ""), NULL, 0, META},
    {"resource string other resource", "{\"level\":\"RequestResponse\",\"resources\":[\"users\"]}",
     RES("a", "get", "", "pods", "", ""), NULL, 0, META},
    {"resource/subresource hit", "{\"level\":\"None\",\"resources\":[\"users/password\"]}",
     RES("a", "update", "iam.kubesphere.io", "users", "password", ""), NULL, 0, NONE},
    {"resource/subresource not the resource", "{\"level\":\"None\",\"resources\":[\"users/password\"]}",
     RES("a", "update", "iam.kubesphere.io", "users", "", ""), NULL, 0, META},
    {"resource/subresource other sub", "{\"level\":\"None\",\"resources\":[\"users/password\"]}",
     RES("a", "update", "iam.kubesphere.io", "users", "status", ""), NULL, 0, META},
    {"star any resource", "{\"level\":\"None\",\"resources\":[\"*\"]}",
     RES("a", "get", "apps", "deployments", "", "ns"), NULL, 0, NONE},
    {"star any subresource", "{\"level\":\"None\",\"resources\":[\"*\"]}",
     RES("a", "get", "", "pods", "log", "ns"), NULL, 0, NONE},
    {"star not non-resource", "{\"level\":\"None\",\"resources\":[\"*\"]}",
     NONRES("a", "get", "/healthz"), NULL, 0, META},
    {"res/star the resource", "{\"level\":\"None\",\"resources\":[\"pods/*\"]}",
     RES("a", "get", "", "pods", "", "ns"), NULL, 0, NONE},
    {"res/star a subresource", "{\"level\":\"None\",\"resources\":[\"pods/*\"]}",
     RES("a", "create", "", "pods", "exec", "ns"), NULL, 0, NONE},
    {"res/star other resource", "{\"level\":\"None\",\"resources\":[\"pods/*\"]}",
     RES("a", "get", "", "services", "proxy", "ns"), NULL, 0, META},
    {"star/sub hit", "{\"level\":\"None\",\"resources\":[\"*/status\"]}",
     RES("a", "update", "apps", "deployments", "status", "ns"), NULL, 0, NONE},
    {"star/sub not the resource", "{\"level\":\"None\",\"resources\":[\"*/status\"]}",
     RES("a", "update", "apps", "deployments", "", "ns"), NULL, 0, META},
    {"star/sub other sub", "{\"level\":\"None\",\"resources\":[\"*/status\"]}",
     RES("a", "update", "apps", "deployments", "scale", "ns"), NULL, 0, META},
    {"several resources", "{\"level\":\"None\",\"resources\":[\"pods\",\"secrets\",\"configmaps\"]}",
     RES("a", "get", "", "secrets", "", "ns"), NULL, 0, NONE},
    /* resources: group objects */
    {"group object hit",
     "{\"level\":\"None\",\"resources\":[{\"group\":\"iam.kubesphere.io\",\"resources\":[\"users\"]}]}",
     RES("a", "get", "iam.kubesphere.io", "users", "", ""), NULL, 0, NONE},
    {"group object other group",
     "{\"level\":\"None\",\"resources\":[{\"group\":\"iam.kubesphere.io\",\"resources\":[\"users\"]}]}",
     RES("a", "get", "", "users", "", ""), NULL, 0, META},
    {"group object subresource",
     "{\"level\":\"None\",\"resources\":[{\"group\":\"iam.kubesphere.io\",\"resources\":[\"users\"]}]}",
     RES("a", "get", "iam.kubesphere.io", "users", "password", ""), NULL, 0, META},
    {"group object res/star",
     "{\"level\":\"None\",\"resources\":[{\"group\":\"iam.kubesphere.io\",\"resources\":[\"users/*\"]}]}",
     RES("a", "get", "iam.kubesphere.io", "users", "password", ""), NULL, 0, NONE},
    {"group object all of core", "{\"level\":\"None\",\"resources\":[{\"group\":\"\"}]}",
     RES("a", "get", "", "configmaps", "", "ns"), NULL, 0, NONE},
    {"group object all of core, empty list",
     "{\"level\":\"None\",\"resources\":[{\"group\":\"\",\"resources\":[]}]}",
     RES("a", "get", "", "pods", "log", "ns"), NULL, 0, NONE},
    {"group object all of core, not apps", "{\"level\":\"None\",\"resources\":[{\"group\":\"\"}]}",
     RES("a", "get", "apps", "deployments", "", "ns"), NULL, 0, META},
    {"group object without group is core",
     "{\"level\":\"None\",\"resources\":[{\"resources\":[\"secrets\"]}]}",
     RES("a", "get", "", "secrets", "", "ns"), NULL, 0, NONE},
    {"group object without group not another",
     "{\"level\":\"None\",\"resources\":[{\"resources\":[\"secrets\"]}]}",
     RES("a", "get", "example.io", "secrets", "", "ns"), NULL, 0, META},
    {"group object not non-resource", "{\"level\":\"None\",\"resources\":[{\"group\":\"\"}]}",
     NONRES("a", "get", "/api"), NULL, 0, META},
    {"mixed string and object",
     "{\"level\":\"None\",\"resources\":[\"pods\",{\"group\":\"apps\",\"resources\":[\"deployments\"]}]}",
     RES("a", "get", "apps", "deployments", "", "ns"), NULL, 0, NONE},
    {"NULL resource attrs", "{\"level\":\"None\",\"resources\":[\"pods\"]}",
     {.is_resource_request = 1}, NULL, 0, META},
    {"empty resources list is any", "{\"level\":\"None\",\"resources\":[]}",
     NONRES("a", "get", "/healthz"), NULL, 0, NONE},
    /* namespaces */
    {"namespaces hit", "{\"level\":\"None\",\"namespaces\":[\"kube-system\"]}",
     RES("a", "get", "", "pods", "", "kube-system"), NULL, 0, NONE},
    {"namespaces miss", "{\"level\":\"None\",\"namespaces\":[\"kube-system\"]}",
     RES("a", "get", "", "pods", "", "default"), NULL, 0, META},
    {"namespaces not cluster-scoped", "{\"level\":\"None\",\"namespaces\":[\"kube-system\"]}",
     RES("a", "get", "", "nodes", "", ""), NULL, 0, META},
    {"namespaces empty string is cluster scope", "{\"level\":\"None\",\"namespaces\":[\"\"]}",
     RES("a", "get", "", "nodes", "", ""), NULL, 0, NONE},
    {"namespaces empty string and NULL", "{\"level\":\"None\",\"namespaces\":[\"\"]}",
     RES("a", "get", "", "nodes", "", NULL), NULL, 0, NONE},
    {"namespaces empty string not namespaced", "{\"level\":\"None\",\"namespaces\":[\"\"]}",
     RES("a", "get", "", "pods", "", "default"), NULL, 0, META},
    {"namespaces not non-resource", "{\"level\":\"None\",\"namespaces\":[\"\"]}",
     NONRES("a", "get", "/healthz"), NULL, 0, META},
    {"namespaces and resources both", "{\"level\":\"None\",\"namespaces\":[\"ns\"],\"resources\":[\"pods\"]}",
     RES("a", "get", "", "pods", "", "ns"), NULL, 0, NONE},
    {"namespaces and resources, resource differs",
     "{\"level\":\"None\",\"namespaces\":[\"ns\"],\"resources\":[\"pods\"]}",
     RES("a", "get", "", "secrets", "", "ns"), NULL, 0, META},
    {"namespaces and resources, namespace differs",
     "{\"level\":\"None\",\"namespaces\":[\"ns\"],\"resources\":[\"pods\"]}",
     RES("a", "get", "", "pods", "", "other"), NULL, 0, META},
    /* nonResourceURLs */
    {"url exact hit", "{\"level\":\"None\",\"nonResourceURLs\":[\"/healthz\"]}",
     NONRES("a", "get", "/healthz"), NULL, 0, NONE},
    {"url exact no prefix", "{\"level\":\"None\",\"nonResourceURLs\":[\"/healthz\"]}",
     NONRES("a", "get", "/healthz/etcd"), NULL, 0, META},
    {"url exact shorter", "{\"level\":\"None\",\"nonResourceURLs\":[\"/healthz\"]}",
     NONRES("a", "get", "/health"), NULL, 0, META},
    {"url prefix hit", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/oauth/*\"]}",
     NONRES("a", "post", "/oauth/token"), NULL, 0, REQ},
    {"url prefix slash", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/oauth/*\"]}",
     NONRES("a", "post", "/oauth/"), NULL, 0, REQ},
    {"url prefix not without slash", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/oauth/*\"]}",
     NONRES("a", "post", "/oauth"), NULL, 0, META},
    {"url prefix deeper", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/oauth/*\"]}",
     NONRES("a", "get", "/oauth/callback/github"), NULL, 0, REQ},
    {"url star", "{\"level\":\"Request\",\"nonResourceURLs\":[\"*\"]}",
     NONRES("a", "get", "/anything"), NULL, 0, REQ},
    {"url never a resource request", "{\"level\":\"Request\",\"nonResourceURLs\":[\"*\"]}",
     RES("a", "get", "", "pods", "", "ns"), NULL, 0, META},
    {"url not resource request with that path", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/api/x\"]}",
     RES("a", "get", "", "pods", "", "ns"), NULL, 0, META},
    {"url NULL path", "{\"level\":\"Request\",\"nonResourceURLs\":[\"/healthz\"]}",
     NONRES("a", "get", NULL), NULL, 0, META},
    {"url NULL path and star", "{\"level\":\"Request\",\"nonResourceURLs\":[\"*\"]}",
     NONRES("a", "get", NULL), NULL, 0, REQ},
    /* combinations: every matcher must hold */
    {"all hold",
     "{\"level\":\"RequestResponse\",\"users\":[\"alice\"],\"userGroups\":[\"devs\"],"
     "\"verbs\":[\"update\"],\"resources\":[\"users/password\"],\"namespaces\":[\"\"]}",
     RES("alice", "update", "iam.kubesphere.io", "users", "password", ""), g_devs, 2, RR},
    {"one fails (verb)",
     "{\"level\":\"RequestResponse\",\"users\":[\"alice\"],\"userGroups\":[\"devs\"],"
     "\"verbs\":[\"update\"],\"resources\":[\"users/password\"],\"namespaces\":[\"\"]}",
     RES("alice", "patch", "iam.kubesphere.io", "users", "password", ""), g_devs, 2, META},
    {"one fails (group)",
     "{\"level\":\"RequestResponse\",\"users\":[\"alice\"],\"userGroups\":[\"devs\"],"
     "\"verbs\":[\"update\"],\"resources\":[\"users/password\"],\"namespaces\":[\"\"]}",
     RES("alice", "update", "iam.kubesphere.io", "users", "password", ""), g_ops, 1, META},
    {"users and urls", "{\"level\":\"None\",\"users\":[\"probe\"],\"nonResourceURLs\":[\"/livez\"]}",
     NONRES("probe", "get", "/livez"), NULL, 0, NONE},
    {"users and urls, other user", "{\"level\":\"None\",\"users\":[\"probe\"],\"nonResourceURLs\":[\"/livez\"]}",
     NONRES("alice", "get", "/livez"), NULL, 0, META},
    /* no matcher: everything */
    {"no matcher resource", "{\"level\":\"RequestResponse\"}",
     RES("a", "delete", "", "pods", "", "ns"), NULL, 0, RR},
    {"no matcher non-resource", "{\"level\":\"RequestResponse\"}",
     NONRES("a", "get", "/version"), NULL, 0, RR},
};

static void test_matchers(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(match_cases) / sizeof(match_cases[0]); i++) {
        const match_case *c = &match_cases[i];
        char json[1024];
        gw_audit_attrs a = c->a;
        gw_audit_policy *p;
        gw_audit_level got;

        snprintf(json, sizeof(json), "{\"rules\":[%s]}", c->rule);
        p = parse_ok(json);
        a.groups = c->groups;
        a.ngroups = c->ngroups;
        got = gw_audit_policy_level(p, &a);
        if (got != c->want)
            fail_msg("case \"%s\": got %s, want %s", c->name, gw_audit_level_name(got),
                     gw_audit_level_name(c->want));
        gw_audit_policy_free(p);
    }
}

/* The policy of Kubernetes' documentation, shortened; the first match wins. */
static const char first_match_policy[] =
    "{\"apiVersion\":\"audit.k8s.io/v1\",\"kind\":\"Policy\",\"level\":\"Request\",\"rules\":["
    "{\"level\":\"None\",\"users\":[\"system:kube-proxy\"],\"verbs\":[\"watch\"],"
    " \"resources\":[{\"group\":\"\",\"resources\":[\"endpoints\",\"services\"]}]},"
    "{\"level\":\"None\",\"userGroups\":[\"system:authenticated\"],"
    " \"nonResourceURLs\":[\"/api*\",\"/version\"]},"
    "{\"level\":\"Metadata\",\"resources\":[\"secrets\",\"configmaps\",\"users/password\"]},"
    "{\"level\":\"RequestResponse\",\"resources\":[\"*\"]},"
    "{\"level\":\"None\",\"resources\":[\"secrets\"]},"
    "{\"level\":\"Metadata\",\"nonResourceURLs\":[\"/oauth/*\"]}"
    "]}";

static void test_first_match_wins(void **state)
{
    static const struct {
        gw_audit_attrs a;
        const char *const *groups;
        size_t ngroups;
        gw_audit_level want;
    } cases[] = {
        {RES("system:kube-proxy", "watch", "", "endpoints", "", "ns"), NULL, 0, NONE},
        {RES("system:kube-proxy", "get", "", "endpoints", "", "ns"), NULL, 0, RR},
        {NONRES("alice", "get", "/apis/apps"), g_devs, 2, NONE},
        {NONRES("alice", "get", "/version"), g_devs, 2, NONE},
        {NONRES("alice", "get", "/version"), g_ops, 1, REQ},
        /* rule 3 before rule 4 ("*") and rule 5 (None) */
        {RES("alice", "get", "", "secrets", "", "ns"), NULL, 0, META},
        {RES("alice", "update", "iam.kubesphere.io", "users", "password", ""), NULL, 0, META},
        {RES("alice", "get", "iam.kubesphere.io", "users", "", ""), NULL, 0, RR},
        {RES("alice", "get", "", "pods", "log", "ns"), NULL, 0, RR},
        {NONRES("alice", "post", "/oauth/token"), NULL, 0, META},
        /* no rule: the top-level level */
        {NONRES("alice", "get", "/healthz"), NULL, 0, REQ},
    };
    gw_audit_policy *p = parse_ok(first_match_policy);

    (void)state;
    for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
        gw_audit_attrs a = cases[i].a;
        gw_audit_level got;

        a.groups = cases[i].groups;
        a.ngroups = cases[i].ngroups;
        got = gw_audit_policy_level(p, &a);
        if (got != cases[i].want)
            fail_msg("case %zu: got %s, want %s", i, gw_audit_level_name(got),
                     gw_audit_level_name(cases[i].want));
    }
    gw_audit_policy_free(p);
}

typedef struct {
    const char *json;
    const char *fragment;
} invalid_case;

static const invalid_case invalid_cases[] = {
    {"", "line 1"},
    {"{\"level\":", "line 1 column"},
    {"[]", "not a JSON object"},
    {"\"Metadata\"", "line 1"},
    {"{\"level\":\"Full\"}", "level: unknown level \"Full\""},
    {"{\"level\":\"metadata\"}", "level: unknown level \"metadata\""},
    {"{\"level\":1}", "level: not a string"},
    {"{\"level\":\"None\",\"level\":\"None\"}", "duplicate object key"},
    {"{\"rule\":[]}", "unknown key \"rule\""},
    {"{\"omitStages\":[\"RequestReceived\"]}", "unknown key \"omitStages\""},
    {"{\"apiVersion\":\"audit.k8s.io/v1beta1\"}", "apiVersion: not \"audit.k8s.io/v1\""},
    {"{\"kind\":\"Policies\"}", "kind: not \"Policy\""},
    {"{\"rules\":{}}", "rules: not an array"},
    {"{\"rules\":[1]}", "rules[0]: not an object"},
    {"{\"rules\":[{\"level\":\"None\"},{\"level\":\"None\",\"verb\":[\"get\"]}]}",
     "rules[1]: unknown key \"verb\""},
    {"{\"rules\":[{\"level\":\"None\",\"omitStages\":[]}]}", "rules[0]: unknown key \"omitStages\""},
    {"{\"rules\":[{\"level\":\"None\"},{\"level\":\"None\"},"
     "{\"level\":\"None\",\"verbs\":[1]}]}",
     "rules[2].verbs[0]: not a string"},
    {"{\"rules\":[{\"level\":\"Full\"}]}", "rules[0].level: unknown level \"Full\""},
    {"{\"rules\":[{\"level\":null}]}", "rules[0].level: not a string"},
    {"{\"rules\":[{\"users\":[\"a\"]}]}", "rules[0]: no \"level\""},
    {"{\"rules\":[{\"level\":\"None\",\"users\":\"alice\"}]}", "rules[0].users: not an array"},
    {"{\"rules\":[{\"level\":\"None\",\"users\":[\"\"]}]}", "rules[0].users[0]: empty string"},
    {"{\"rules\":[{\"level\":\"None\",\"userGroups\":[\"a\",{}]}]}",
     "rules[0].userGroups[1]: not a string"},
    {"{\"rules\":[{\"level\":\"None\",\"verbs\":[\"get\",\"LIST\"]}]}",
     "rules[0].verbs[1]: \"LIST\" is not lower-case"},
    {"{\"rules\":[{\"level\":\"None\",\"verbs\":[\"\"]}]}", "rules[0].verbs[0]: empty string"},
    {"{\"rules\":[{\"level\":\"None\",\"namespaces\":[null]}]}",
     "rules[0].namespaces[0]: not a string"},
    {"{\"rules\":[{\"level\":\"None\",\"namespaces\":{}}]}", "rules[0].namespaces: not an array"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":\"pods\"}]}", "rules[0].resources: not an array"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"pods\",7]}]}",
     "rules[0].resources[1]: not a string or an object"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"\"]}]}", "rules[0].resources[0]: empty string"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"po*\"]}]}",
     "rules[0].resources[0]: \"po*\": \"*\" stands only for a whole"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"pods/l*\"]}]}",
     "rules[0].resources[0]: \"pods/l*\": \"*\" stands only"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"*/*\"]}]}", "rules[0].resources[0]: \"*/*\""},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"a/b/c\"]}]}",
     "rules[0].resources[0]: \"a/b/c\": more than one \"/\""},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"pods/\"]}]}",
     "rules[0].resources[0]: \"pods/\": empty resource or subresource"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"/log\"]}]}",
     "rules[0].resources[0]: \"/log\": empty resource or subresource"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[\"pods\",{\"group\":\"\",\"resourceNames\":[\"x\"]}]}]}",
     "rules[0].resources[1]: unknown key \"resourceNames\""},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[{\"group\":1}]}]}",
     "rules[0].resources[0].group: not a string"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[{\"group\":\"*\"}]}]}",
     "rules[0].resources[0].group: \"*\" is not a wildcard here"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[{\"group\":\"\",\"resources\":\"pods\"}]}]}",
     "rules[0].resources[0].resources: not an array"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[{\"group\":\"\",\"resources\":[\"pods\",false]}]}]}",
     "rules[0].resources[0].resources[1]: not a string"},
    {"{\"rules\":[{\"level\":\"None\",\"resources\":[{\"group\":\"\",\"resources\":[\"p*\"]}]}]}",
     "rules[0].resources[0].resources[0]: \"p*\""},
    {"{\"rules\":[{\"level\":\"None\",\"nonResourceURLs\":[\"healthz\"]}]}",
     "rules[0].nonResourceURLs[0]: \"healthz\": a path beginning with \"/\""},
    {"{\"rules\":[{\"level\":\"None\",\"nonResourceURLs\":[\"\"]}]}",
     "rules[0].nonResourceURLs[0]: \"\": a path beginning"},
    {"{\"rules\":[{\"level\":\"None\",\"nonResourceURLs\":[\"/a*b\"]}]}",
     "rules[0].nonResourceURLs[0]: \"/a*b\": \"*\" may only end a path"},
    {"{\"rules\":[{\"level\":\"None\",\"nonResourceURLs\":[1]}]}",
     "rules[0].nonResourceURLs[0]: not a string"},
    {"{\"rules\":[{\"level\":\"None\",\"nonResourceURLs\":[\"/x\"],\"resources\":[\"pods\"]}]}",
     "rules[0]: \"nonResourceURLs\" cannot be combined"},
    {"{\"rules\":[{\"level\":\"None\"},{\"level\":\"None\",\"namespaces\":[\"\"],"
     "\"nonResourceURLs\":[\"/x\"]}]}",
     "rules[1]: \"nonResourceURLs\" cannot be combined"},
    /* a hostile key is shown, shortened and without quotes or control bytes */
    {"{\"rules\":[{\"level\":\"None\",\"a\\\"b\\u0001c\":1}]}", "rules[0]: unknown key \"a?b?c\""},
};

static void test_invalid(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(invalid_cases) / sizeof(invalid_cases[0]); i++) {
        const invalid_case *c = &invalid_cases[i];
        gw_audit_policy *p = (gw_audit_policy *)(uintptr_t)0x1;
        ks_status st;

        ks_status_clear();
        st = gw_audit_policy_parse(c->json, strlen(c->json), &p);
        if (st != KS_ERR_INVALID)
            fail_msg("case %zu (%s): status %s, want invalid", i, c->json, ks_status_name(st));
        if (p != (gw_audit_policy *)(uintptr_t)0x1)
            fail_msg("case %zu: *out changed on failure", i);
        if (strstr(ks_status_last(), c->fragment) == NULL)
            fail_msg("case %zu (%s):\n  message: %s\n  wanted: %s", i, c->json, ks_status_last(),
                     c->fragment);
    }
}

static void test_long_key_shortened(void **state)
{
    char json[600];
    gw_audit_policy *p = NULL;

    (void)state;
    snprintf(json, sizeof(json), "{\"rules\":[{\"level\":\"None\",\"%0300d\":1}]}", 0);
    assert_int_equal(gw_audit_policy_parse(json, strlen(json), &p), KS_ERR_INVALID);
    assert_null(p);
    assert_non_null(strstr(ks_status_last(), "unknown key \"0000"));
    assert_non_null(strstr(ks_status_last(), "...\""));
    assert_true(strlen(ks_status_last()) < 384);
}

static char tmpdir[64];

#define write_tmp_s(name, text) write_tmp((name), (text), strlen(text))

static char *write_tmp(const char *name, const char *text, size_t len)
{
    static char path[160];
    FILE *f;

    snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
    assert_non_null(f = fopen(path, "wb"));
    assert_int_equal(fwrite(text, 1, len, f), len);
    assert_int_equal(fclose(f), 0);
    return path;
}

static void test_load(void **state)
{
    gw_audit_policy *p = NULL;
    gw_audit_attrs n = NONRES("alice", "post", "/oauth/token");
    gw_audit_attrs r = RES("alice", "get", "", "secrets", "", "ns");
    char missing[160], *path, *big;
    size_t bigsz = POLICY_FILE_MAX + 1;

    (void)state;
    snprintf(tmpdir, sizeof(tmpdir), "/tmp/ks-audit-policy-XXXXXX");
    assert_non_null(mkdtemp(tmpdir));

    /* missing */
    snprintf(missing, sizeof(missing), "%s/no-such-policy.json", tmpdir);
    assert_int_equal(gw_audit_policy_load(missing, &p), KS_ERR_IO);
    assert_null(p);
    assert_non_null(strstr(ks_status_last(), missing));
    assert_non_null(strstr(ks_status_last(), "No such file"));

    /* a directory cannot be read */
    assert_int_equal(gw_audit_policy_load(tmpdir, &p), KS_ERR_IO);
    assert_non_null(strstr(ks_status_last(), tmpdir));

    /* a good file */
    path = write_tmp_s("good.json", first_match_policy);
    assert_int_equal(gw_audit_policy_load(path, &p), KS_OK);
    assert_int_equal(gw_audit_policy_level(p, &n), META);
    assert_int_equal(gw_audit_policy_level(p, &r), META);
    gw_audit_policy_free(p);
    p = NULL;
    unlink(path);

    /* a bad one: the path and the element */
    path = write_tmp_s("bad.json", "{\"rules\":[{\"level\":\"Full\"}]}");
    assert_int_equal(gw_audit_policy_load(path, &p), KS_ERR_INVALID);
    assert_null(p);
    assert_non_null(strstr(ks_status_last(), path));
    assert_non_null(strstr(ks_status_last(), "rules[0].level: unknown level \"Full\""));
    unlink(path);

    /* syntax error: the path, the line */
    path = write_tmp_s("syntax.json", "{\n  \"level\": Metadata\n}\n");
    assert_int_equal(gw_audit_policy_load(path, &p), KS_ERR_INVALID);
    assert_non_null(strstr(ks_status_last(), path));
    assert_non_null(strstr(ks_status_last(), "line 2"));
    unlink(path);

    /* larger than 1 MiB; exactly 1 MiB of valid JSON loads */
    assert_non_null(big = malloc(bigsz));
    memset(big, ' ', bigsz);
    memcpy(big, "{\"level\":\"None\"}", 16);
    path = write_tmp("big.json", big, bigsz);
    assert_int_equal(gw_audit_policy_load(path, &p), KS_ERR_TOO_LARGE);
    assert_null(p);
    assert_non_null(strstr(ks_status_last(), path));
    unlink(path);
    path = write_tmp("big.json", big, bigsz - 1);
    assert_int_equal(gw_audit_policy_load(path, &p), KS_OK);
    assert_int_equal(gw_audit_policy_level(p, &r), NONE);
    gw_audit_policy_free(p);
    unlink(path);
    free(big);

    assert_int_equal(rmdir(tmpdir), 0);
}

/* Many rules, long lists: the arena holds them all, lookups stay right. */
static void test_many_rules(void **state)
{
    size_t cap = 512 * 1024, len = 0;
    char *json = malloc(cap);
    gw_audit_policy *p;
    char res[32];
    gw_audit_attrs a = RES("alice", "get", "", res, "", "ns");

    (void)state;
    assert_non_null(json);
    len += (size_t)snprintf(json + len, cap - len, "{\"level\":\"None\",\"rules\":[");
    for (int i = 0; i < 2000; i++)
        len += (size_t)snprintf(json + len, cap - len,
                                "%s{\"level\":\"%s\",\"resources\":[\"r%d\",\"r%d/s\","
                                "{\"group\":\"g%d\",\"resources\":[\"x\"]}],"
                                "\"users\":[\"alice\",\"u%d\"]}",
                                i ? "," : "", i % 2 ? "Request" : "RequestResponse", i, i, i, i);
    len += (size_t)snprintf(json + len, cap - len, "]}");
    assert_true(len < cap);
    assert_int_equal(gw_audit_policy_parse(json, len, &p), KS_OK);
    for (int i = 0; i < 2000; i += 7) {
        snprintf(res, sizeof(res), "r%d", i);
        assert_int_equal(gw_audit_policy_level(p, &a), i % 2 ? REQ : RR);
    }
    snprintf(res, sizeof(res), "r2000");
    assert_int_equal(gw_audit_policy_level(p, &a), NONE);
    gw_audit_policy_free(p);
    free(json);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_default_policy),
        cmocka_unit_test(test_matchers),
        cmocka_unit_test(test_first_match_wins),
        cmocka_unit_test(test_invalid),
        cmocka_unit_test(test_long_key_shortened),
        cmocka_unit_test(test_load),
        cmocka_unit_test(test_many_rules),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
