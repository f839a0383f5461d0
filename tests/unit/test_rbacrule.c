/* Unit tests: lib/rbacrule.c (PolicyRule validity and "covers") and
 * lib/labelsel.c (LabelSelector evaluation).
 *
 * covers is checked two ways: a table of cases named after the semantics in
 * docs/rbac.md, and a randomised cross-check against lib/rbac itself. For a
 * random owner rule set and a random rule, covers must be true exactly when
 * lib/rbac, holding the owner rules, allows a representative request of every
 * atom of the rule (a wildcard atom is represented by a value no owner rule
 * names, so only a wildcard owner can allow it). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "labelsel.h"
#include "rbac.h"
#include "rbacrule.h"

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
    j = json_loads(c, JSON_DECODE_ANY, &err);
    if (j == NULL)
        fail_msg("bad fixture JSON (%s): %s", err.text, c);
    free(c);
    return j;
}

/* ---- table ---- */

typedef struct {
    const char *owner;   /* array of rules */
    const char *rule;
    bool covered;
    const char *why;
} cover_case;

static const cover_case cover_cases[] = {
    {"[]", "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}", false, "no owner rules"},
    {"[]", "{'verbs':[],'apiGroups':[''],'resources':['pods']}", true, "a rule without verbs grants nothing"},
    {"[]", "{'verbs':['get'],'resources':['pods']}", true, "resources without apiGroups grant nothing"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}", true, "equal rules"},
    {"[{'verbs':['*'],'apiGroups':['*'],'resources':['*']}]",
     "{'verbs':['get','delete'],'apiGroups':['apps',''],'resources':['deployments','pods/log'],'resourceNames':['x']}",
     true, "the all rule covers everything resource"},
    {"[{'verbs':['*'],'apiGroups':['*'],'resources':['*']}]", "{'verbs':['get'],'nonResourceURLs':['/x']}",
     false, "a resource rule grants no URL"},
    {"[{'verbs':['get','list'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['*'],'apiGroups':[''],'resources':['pods']}", false, "verb * needs owner *"},
    {"[{'verbs':['get'],'apiGroups':['','apps'],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':['*'],'resources':['pods']}", false, "group * needs owner *"},
    {"[{'verbs':['get'],'apiGroups':['*'],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':['','apps','x.io'],'resources':['pods']}", true, "owner group * covers any group"},
    {"[{'verbs':['get'],'apiGroups':['apps'],'resources':['pods']},{'verbs':['get'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':['','apps'],'resources':['pods']}", true, "two owner rules cover one rule's atoms"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods/log']}", false, "pods does not cover pods/log"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods/log']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}", false, "pods/log does not cover pods"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['*/log']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods/log','jobs/log']}", true, "*/log covers res/log"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods/log']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['*/log']}", false, "res/log does not cover */log"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['*/log']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['log']}", false, "*/log does not cover a resource named log"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['*']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['*/log','pods/exec','*']}", true, "* covers * and subresources"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['a']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}", false, "names do not cover every name"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['a','b']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['b']}", true, "names cover a subset"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['a']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['a','c']}", false, "names miss one"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'resourceNames':['a']}", true, "no names cover a name"},
    {"[{'verbs':['Get'],'apiGroups':[''],'resources':['pods']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}", false, "resource verbs are case-sensitive"},
    {"[{'verbs':['GET'],'nonResourceURLs':['/healthz']}]", "{'verbs':['get'],'nonResourceURLs':['/healthz']}",
     true, "URL verbs are case-insensitive"},
    {"[{'verbs':['get'],'nonResourceURLs':['/logs/*']}]",
     "{'verbs':['get'],'nonResourceURLs':['/logs/a/b','/logs/','/logs/x*']}", true, "a prefix covers paths and narrower prefixes"},
    {"[{'verbs':['get'],'nonResourceURLs':['/logs/*']}]", "{'verbs':['get'],'nonResourceURLs':['/logs']}",
     false, "/logs/* does not cover /logs"},
    {"[{'verbs':['get'],'nonResourceURLs':['/logs/*']}]", "{'verbs':['get'],'nonResourceURLs':['/log*']}",
     false, "a narrower prefix does not cover a wider one"},
    {"[{'verbs':['get'],'nonResourceURLs':['/api*']}]", "{'verbs':['get'],'nonResourceURLs':['/api','/apis/apps']}",
     true, "/api* covers /api and /apis/apps"},
    {"[{'verbs':['get'],'nonResourceURLs':['/a']}]", "{'verbs':['get'],'nonResourceURLs':['/a*']}", false,
     "an exact URL does not cover a prefix"},
    {"[{'verbs':['get'],'nonResourceURLs':['*']}]", "{'verbs':['get'],'nonResourceURLs':['*','/x/*']}", true,
     "* covers every URL"},
    {"[{'verbs':['get'],'nonResourceURLs':['/a/*']}]", "{'verbs':['get'],'nonResourceURLs':['*']}", false,
     "a prefix does not cover *"},
    {"[{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'nonResourceURLs':['/a']}]",
     "{'verbs':['get'],'apiGroups':[''],'resources':['pods'],'nonResourceURLs':['/a']}", true,
     "a mixed rule covers itself"},
    {"[{'verbs':'get','apiGroups':['*'],'resources':['*']}]", "{'verbs':['get'],'apiGroups':[''],'resources':['pods']}",
     false, "a malformed owner rule grants nothing"},
    {"[{'verbs':['*'],'apiGroups':['*'],'resources':['*']}]", "{'verbs':['get'],'apiGroups':[''],'resources':[7]}",
     false, "a malformed rule is never covered"},
};

static void test_covers_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(cover_cases) / sizeof(cover_cases[0]); i++) {
        const cover_case *c = &cover_cases[i];
        json_t *owner = jq(c->owner), *rule = jq(c->rule);
        bool got = ks_rbacrule_covers(owner, rule);
        if (got != c->covered)
            fail_msg("case %zu (%s): covers = %d, want %d", i, c->why, got, c->covered);
        json_decref(owner);
        json_decref(rule);
    }
}

static void test_check(void **state)
{
    json_t *ok = jq("{'verbs':['get'],'apiGroups':null,'resources':['pods']}");
    json_t *bad1 = jq("{'verbs':'get'}");
    json_t *bad2 = jq("{'verbs':['get'],'resourceNames':[1]}");
    json_t *bad3 = jq("['get']");

    (void)state;
    assert_int_equal(ks_rbacrule_check(ok), KS_OK);
    assert_int_equal(ks_rbacrule_check(bad1), KS_ERR_INVALID);
    assert_int_equal(ks_rbacrule_check(bad2), KS_ERR_INVALID);
    assert_int_equal(ks_rbacrule_check(bad3), KS_ERR_INVALID);
    assert_int_equal(ks_rbacrule_check(NULL), KS_ERR_INVALID);
    json_decref(ok);
    json_decref(bad1);
    json_decref(bad2);
    json_decref(bad3);
}

/* ---- cross-check against lib/rbac ---- */

static uint64_t rng = 0x9e3779b97f4a7c15ULL;

static unsigned rnd(unsigned n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (unsigned)(rng % n);
}

static const char *const verbs[] = {"get", "list", "GET", "*", "create"};
static const char *const groups[] = {"", "apps", "*"};
static const char *const resources[] = {"pods", "pods/log", "*/log", "*", "jobs", "pods/status", "*/status"};
static const char *const names[] = {"a", "b"};
static const char *const urls[] = {"/a", "/a/*", "/a*", "/b", "*", "/ab", "/a/b"};

#define N(a) (sizeof(a) / sizeof((a)[0]))

/* A random subset (possibly empty when allow_empty) of pool as a JSON array. */
static json_t *pick(const char *const *pool, size_t n, bool allow_empty)
{
    json_t *a = json_array();
    do {
        for (size_t i = 0; i < n; i++)
            if (rnd(3) == 0)
                json_array_append_new(a, json_string(pool[i]));
    } while (!allow_empty && json_array_size(a) == 0);
    return a;
}

static json_t *random_rule(void)
{
    json_t *r = json_object();
    json_object_set_new(r, "verbs", pick(verbs, N(verbs), false));
    if (rnd(4) != 0) {
        json_object_set_new(r, "apiGroups", pick(groups, N(groups), rnd(8) == 0));
        json_object_set_new(r, "resources", pick(resources, N(resources), false));
        if (rnd(3) == 0)
            json_object_set_new(r, "resourceNames", pick(names, N(names), false));
    }
    if (rnd(3) == 0 || json_object_get(r, "resources") == NULL)
        json_object_set_new(r, "nonResourceURLs", pick(urls, N(urls), false));
    return r;
}

static bool allowed(ks_rbac *st, ks_rbac_request *req)
{
    ks_rbac_user u = {.name = "u"};
    ks_rbac_decision d;
    assert_int_equal(ks_rbac_decide(st, &u, req, &d), KS_OK);
    return d.allowed;
}

/* Every representative request of every atom of rule is allowed. */
static bool all_atoms_allowed(ks_rbac *st, const json_t *rule)
{
    const json_t *v = json_object_get(rule, "verbs"), *g = json_object_get(rule, "apiGroups"),
                 *r = json_object_get(rule, "resources"), *n = json_object_get(rule, "resourceNames"),
                 *u = json_object_get(rule, "nonResourceURLs");

    for (size_t iv = 0; iv < json_array_size(v); iv++) {
        const char *verb = json_string_value(json_array_get(v, iv));
        const char *rverb = strcmp(verb, "*") == 0 ? "zzverb" : verb;
        for (size_t ig = 0; ig < json_array_size(g); ig++) {
            const char *group = json_string_value(json_array_get(g, ig));
            for (size_t ir = 0; ir < json_array_size(r); ir++) {
                const char *res = json_string_value(json_array_get(r, ir));
                char rbuf[64], sub[64] = "";
                const char *slash = strchr(res, '/');
                ks_rbac_request req = {.is_resource_request = true, .verb = rverb,
                                       .scope = KS_RBAC_SCOPE_CLUSTER};
                req.api_group = strcmp(group, "*") == 0 ? "zzgroup" : group;
                if (strcmp(res, "*") == 0) {
                    snprintf(rbuf, sizeof(rbuf), "zzres");
                } else if (slash != NULL) {
                    snprintf(rbuf, sizeof(rbuf), "%.*s", (int)(slash - res), res);
                    snprintf(sub, sizeof(sub), "%s", slash + 1);
                    if (strcmp(rbuf, "*") == 0)
                        snprintf(rbuf, sizeof(rbuf), "zzres");
                } else {
                    snprintf(rbuf, sizeof(rbuf), "%s", res);
                }
                req.resource = rbuf;
                req.subresource = sub;
                if (json_array_size(n) == 0) {
                    req.name = "";
                    if (!allowed(st, &req))
                        return false;
                    req.name = "zzname";
                    if (!allowed(st, &req))
                        return false;
                } else {
                    for (size_t in = 0; in < json_array_size(n); in++) {
                        req.name = json_string_value(json_array_get(n, in));
                        if (!allowed(st, &req))
                            return false;
                    }
                }
            }
        }
        for (size_t iu = 0; iu < json_array_size(u); iu++) {
            const char *url = json_string_value(json_array_get(u, iu));
            size_t len = strlen(url);
            char path[64];
            ks_rbac_request req = {.is_resource_request = false, .verb = rverb,
                                   .scope = KS_RBAC_SCOPE_CLUSTER, .path = path};
            if (len > 0 && url[len - 1] == '*') {
                while (len > 0 && url[len - 1] == '*')
                    len--;
                snprintf(path, sizeof(path), "%.*s", (int)len, url);
                if (!allowed(st, &req))
                    return false;
                snprintf(path, sizeof(path), "%.*s~zz", (int)len, url);
            } else {
                snprintf(path, sizeof(path), "%s", url);
            }
            if (!allowed(st, &req))
                return false;
        }
    }
    return true;
}

static void test_covers_matches_rbac(void **state)
{
    int yes = 0, no = 0;

    (void)state;
    for (int iter = 0; iter < 20000; iter++) {
        ks_rbac *st = NULL;
        json_t *owner = json_array(), *rule = random_rule(), *role, *binding;
        unsigned nown = rnd(4);
        bool covers, allows;

        for (unsigned i = 0; i < nown; i++)
            json_array_append_new(owner, random_rule());
        assert_int_equal(ks_rbac_create(&st), KS_OK);
        role = json_pack("{s:s, s:{s:s}, s:O}", "kind", "GlobalRole", "metadata", "name", "owner",
                         "rules", owner);
        binding = jq("{'kind':'GlobalRoleBinding','metadata':{'name':'b'},'roleRef':"
                     "{'apiGroup':'iam.kubesphere.io','kind':'GlobalRole','name':'owner'},"
                     "'subjects':[{'kind':'User','name':'u'}]}");
        assert_int_equal(ks_rbac_apply(st, "GlobalRole", role), KS_OK);
        assert_int_equal(ks_rbac_apply(st, "GlobalRoleBinding", binding), KS_OK);
        covers = ks_rbacrule_covers(owner, rule);
        allows = all_atoms_allowed(st, rule);
        if (covers != allows) {
            char *o = json_dumps(owner, JSON_COMPACT), *r = json_dumps(rule, JSON_COMPACT);
            fail_msg("iteration %d: covers %d but lib/rbac allows every atom: %d\nowner %s\nrule %s",
                     iter, covers, allows, o, r);
        }
        if (covers)
            yes++;
        else
            no++;
        /* Adding the rule always makes it covered (what aggregation relies on). */
        json_array_append(owner, rule);
        assert_true(ks_rbacrule_covers(owner, rule));
        json_decref(role);
        json_decref(binding);
        json_decref(owner);
        json_decref(rule);
        ks_rbac_destroy(st);
    }
    /* Both answers must be common, or the cross-check proves little. */
    print_message("covered %d, not covered %d\n", yes, no);
    assert_true(yes > 2000 && no > 2000);
}

/* ---- label selectors ---- */

typedef struct {
    const char *selector;   /* NULL: no selector */
    const char *labels;
    ks_status st;
    bool match;
} sel_case;

static const sel_case sel_cases[] = {
    {NULL, "{'a':'1'}", KS_OK, false},
    {"null", "{'a':'1'}", KS_OK, false},
    {"{}", "{}", KS_OK, true},
    {"{}", "null", KS_OK, true},
    {"{'matchLabels':{'a':'1'}}", "{'a':'1','b':'2'}", KS_OK, true},
    {"{'matchLabels':{'a':'1'}}", "{'a':'2'}", KS_OK, false},
    {"{'matchLabels':{'a':''}}", "{'a':''}", KS_OK, true},
    {"{'matchLabels':{'a':''}}", "{}", KS_OK, false},
    {"{'matchLabels':{'a':'1','b':'2'}}", "{'a':'1'}", KS_OK, false},
    {"{'matchExpressions':[{'key':'a','operator':'In','values':['1','2']}]}", "{'a':'2'}", KS_OK, true},
    {"{'matchExpressions':[{'key':'a','operator':'In','values':['1']}]}", "{}", KS_OK, false},
    {"{'matchExpressions':[{'key':'a','operator':'NotIn','values':['1']}]}", "{}", KS_OK, true},
    {"{'matchExpressions':[{'key':'a','operator':'NotIn','values':['1']}]}", "{'a':'1'}", KS_OK, false},
    {"{'matchExpressions':[{'key':'a','operator':'Exists'}]}", "{'a':''}", KS_OK, true},
    {"{'matchExpressions':[{'key':'a','operator':'DoesNotExist','values':[]}]}", "{'a':'x'}", KS_OK, false},
    {"{'matchExpressions':[{'key':'a','operator':'DoesNotExist'}]}", "{'b':'x'}", KS_OK, true},
    {"{'matchLabels':{'s':'ns'},'matchExpressions':[{'key':'a','operator':'Exists'}]}", "{'s':'ns'}", KS_OK, false},
    {"{'matchLabels':{'a':1}}", "{}", KS_ERR_INVALID, false},
    {"{'matchLabels':[]}", "{}", KS_ERR_INVALID, false},
    {"{'matchExpressions':{}}", "{}", KS_ERR_INVALID, false},
    {"{'matchExpressions':[{'key':'a','operator':'Equals','values':['1']}]}", "{}", KS_ERR_INVALID, false},
    {"{'matchExpressions':[{'key':'a','operator':'In'}]}", "{}", KS_ERR_INVALID, false},
    {"{'matchExpressions':[{'key':'a','operator':'Exists','values':['1']}]}", "{}", KS_ERR_INVALID, false},
    {"{'matchExpressions':[{'operator':'Exists'}]}", "{}", KS_ERR_INVALID, false},
    /* a malformed requirement is an error even when an earlier one fails */
    {"{'matchLabels':{'x':'y'},'matchExpressions':[{'key':'a','operator':'Bad'}]}", "{}", KS_ERR_INVALID, false},
    {"'text'", "{}", KS_ERR_INVALID, false},
    {"{'matchLabels':{'a':'1'}}", "{'a':1}", KS_OK, false},
};

static void test_labelsel(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(sel_cases) / sizeof(sel_cases[0]); i++) {
        const sel_case *c = &sel_cases[i];
        json_t *sel = c->selector ? jq(c->selector) : NULL, *labels = jq(c->labels);
        bool match = !c->match;
        ks_status st = ks_labelsel_match(sel, labels, &match);
        if (st != c->st)
            fail_msg("case %zu: status %s, want %s", i, ks_status_name(st), ks_status_name(c->st));
        if (st == KS_OK && match != c->match)
            fail_msg("case %zu: match %d, want %d", i, match, c->match);
        json_decref(sel);
        json_decref(labels);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_covers_table),
        cmocka_unit_test(test_check),
        cmocka_unit_test(test_covers_matches_rbac),
        cmocka_unit_test(test_labelsel),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
