/* rbacrule.c: PolicyRule validity and coverage. See rbacrule.h. */
#include "rbacrule.h"

#include <stddef.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* A parsed rule: each field an array of strings, or NULL when absent. */
typedef struct {
    const json_t *verbs, *groups, *res, *names, *urls;
} prule;

static const char *const rule_fields[] = {"verbs", "apiGroups", "resources", "resourceNames",
                                          "nonResourceURLs"};

static ks_status str_array(const json_t *rule, const char *key, const json_t **out)
{
    const json_t *a = json_object_get(rule, key);

    *out = NULL;
    if (a == NULL || json_is_null(a))
        return KS_OK;
    if (!json_is_array(a))
        return KS_FAIL(KS_ERR_INVALID, "%s is not an array", key);
    for (size_t i = 0; i < json_array_size(a); i++)
        if (!json_is_string(json_array_get(a, i)))
            return KS_FAIL(KS_ERR_INVALID, "%s[%zu] is not a string", key, i);
    *out = a;
    return KS_OK;
}

static ks_status prule_parse(const json_t *rule, prule *p)
{
    const json_t **slots[] = {&p->verbs, &p->groups, &p->res, &p->names, &p->urls};
    ks_status st;

    if (!json_is_object(rule))
        return KS_FAIL(KS_ERR_INVALID, "a rule is not an object");
    for (size_t i = 0; i < sizeof(slots) / sizeof(slots[0]); i++)
        if ((st = str_array(rule, rule_fields[i], slots[i])) != KS_OK)
            return st;
    return KS_OK;
}

ks_status ks_rbacrule_check(const json_t *rule)
{
    prule p;
    return prule_parse(rule, &p);
}

static const char *at(const json_t *a, size_t i)
{
    return json_string_value(json_array_get(a, i));
}

/* a holds s exactly (an absent array holds nothing). */
static bool has(const json_t *a, const char *s)
{
    for (size_t i = 0; i < json_array_size(a); i++)
        if (strcmp(at(a, i), s) == 0)
            return true;
    return false;
}

static bool has_nocase(const json_t *a, const char *s)
{
    for (size_t i = 0; i < json_array_size(a); i++)
        if (strcasecmp(at(a, i), s) == 0)
            return true;
    return false;
}

/* The owner's resources allow every request the atom resource r allows. */
static bool resource_covered(const json_t *owner_res, const char *r)
{
    const char *slash;
    char *star;
    size_t len;
    bool ok;

    if (has(owner_res, "*") || has(owner_res, r))
        return true;
    /* "res/sub" is also allowed by "*\/sub"; "*\/sub" itself only by the
     * exact string (checked above) or "*". A trailing '/' is no subresource:
     * lib/rbac treats "x/" and "*\/" as plain names. */
    slash = strchr(r, '/');
    if (slash == NULL || slash[1] == '\0' || (slash == r + 1 && r[0] == '*'))
        return false;
    len = strlen(slash);                 /* "/sub" */
    star = malloc(len + 2);
    if (star == NULL)
        return false;                    /* not covered: the caller adds the rule */
    star[0] = '*';
    memcpy(star + 1, slash, len + 1);
    ok = has(owner_res, star);
    free(star);
    return ok;
}

static bool name_covered(const json_t *owner_names, const char *name)
{
    if (json_array_size(owner_names) == 0)
        return true;
    return name != NULL && has(owner_names, name);
}

static bool resource_atom_covered(const prule *owners, size_t n, const char *verb,
                                  const char *group, const char *res, const char *name)
{
    for (size_t i = 0; i < n; i++) {
        const prule *o = &owners[i];
        if ((has(o->verbs, "*") || has(o->verbs, verb)) &&
            (has(o->groups, "*") || has(o->groups, group)) && resource_covered(o->res, res) &&
            name_covered(o->names, name))
            return true;
    }
    return false;
}

/* The owner URL p allows every path the atom URL u allows. */
static bool url_covered(const char *p, const char *u)
{
    size_t pl = strlen(p), ul = strlen(u);

    if (strcmp(p, u) == 0)
        return true;
    if (pl == 0 || p[pl - 1] != '*')
        return false;            /* an exact owner covers only the same string */
    while (pl > 0 && p[pl - 1] == '*')
        pl--;
    while (ul > 0 && u[ul - 1] == '*')
        ul--;                    /* a pattern atom: its text before the stars */
    return ul >= pl && memcmp(u, p, pl) == 0;
}

static bool url_atom_covered(const prule *owners, size_t n, const char *verb, const char *url)
{
    for (size_t i = 0; i < n; i++) {
        const prule *o = &owners[i];
        if (!(has(o->verbs, "*") || has_nocase(o->verbs, verb)))
            continue;
        for (size_t k = 0; k < json_array_size(o->urls); k++)
            if (url_covered(at(o->urls, k), url))
                return true;
    }
    return false;
}

bool ks_rbacrule_covers(const json_t *owner, const json_t *rule)
{
    prule s, *owners = NULL;
    size_t n = 0, cap = json_is_array(owner) ? json_array_size(owner) : 0;
    bool covered = false;

    if (prule_parse(rule, &s) != KS_OK) {
        ks_status_clear();
        return false;
    }
    if (cap > 0 && (owners = calloc(cap, sizeof(*owners))) == NULL)
        return false;
    for (size_t i = 0; i < cap; i++) {
        if (prule_parse(json_array_get(owner, i), &owners[n]) == KS_OK)
            n++;
        else
            ks_status_clear();
    }
    for (size_t v = 0; v < json_array_size(s.verbs); v++) {
        const char *verb = at(s.verbs, v);
        for (size_t g = 0; g < json_array_size(s.groups); g++)
            for (size_t r = 0; r < json_array_size(s.res); r++) {
                const char *group = at(s.groups, g), *res = at(s.res, r);
                if (json_array_size(s.names) == 0) {
                    if (!resource_atom_covered(owners, n, verb, group, res, NULL))
                        goto out;
                    continue;
                }
                for (size_t k = 0; k < json_array_size(s.names); k++)
                    if (!resource_atom_covered(owners, n, verb, group, res, at(s.names, k)))
                        goto out;
            }
        for (size_t u = 0; u < json_array_size(s.urls); u++)
            if (!url_atom_covered(owners, n, verb, at(s.urls, u)))
                goto out;
    }
    covered = true;
out:
    free(owners);
    return covered;
}
