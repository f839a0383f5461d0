/* audit_policy.c: the audit policy (audit_policy.h), compiled at load time
 * into plain arrays so that the per-request lookup walks them without
 * allocating or touching jansson. Matching follows Kubernetes'
 * staging/src/k8s.io/apiserver/pkg/audit/policy/checker.go. */
#include "audit_policy.h"

#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define POLICY_FILE_MAX (1024u * 1024u)
#define ERR_MAX 320
#define WHERE_MAX 64           /* "rules[N].nonResourceURLs" fits */

typedef struct {
    const char **v;
    size_t n;
} strset;

/* STAR is "*" in the comments below (a C comment cannot hold "/" "*"). */
typedef enum {
    SUB_NONE,    /* "pods": the resource itself, no subresource */
    SUB_EXACT,   /* "pods/log"; with resource NULL, "STAR/log" */
    SUB_ANY,     /* "pods/STAR"; with resource NULL, "STAR": with or without one */
} sub_mode;

typedef struct {
    const char *group;      /* NULL: any group */
    const char *resource;   /* NULL: any resource */
    const char *sub;        /* SUB_EXACT only */
    sub_mode mode;
} pol_res;

typedef struct {
    const char *s;          /* without the trailing '*' of a prefix */
    size_t n;
    int prefix;
} pol_url;

typedef struct {
    gw_audit_level level;
    strset users, groups, verbs, namespaces;
    pol_res *res;
    size_t nres;
    pol_url *urls;
    size_t nurls;
} pol_rule;

struct gw_audit_policy {
    gw_audit_level level;
    pol_rule *rules;
    size_t nrules;
    char *arena;            /* every string the rules point to */
    size_t arena_used, arena_cap;
};

static const char *const level_names[] = {
    [GW_AUDIT_NONE] = "None",
    [GW_AUDIT_METADATA] = "Metadata",
    [GW_AUDIT_REQUEST] = "Request",
    [GW_AUDIT_REQUEST_RESPONSE] = "RequestResponse",
};

const char *gw_audit_level_name(gw_audit_level l)
{
    if ((unsigned)l >= sizeof(level_names) / sizeof(level_names[0]))
        return "Unknown";
    return level_names[l];
}

/* ---- evaluation ---- */

static const char *str_or_empty(const char *s)
{
    return s ? s : "";
}

static int in_set(const strset *s, const char *v)
{
    for (size_t i = 0; i < s->n; i++)
        if (strcmp(s->v[i], v) == 0)
            return 1;
    return 0;
}

static int res_matches(const pol_res *r, const char *group, const char *res, const char *sub)
{
    if (r->group != NULL && strcmp(r->group, group) != 0)
        return 0;
    switch (r->mode) {
    case SUB_NONE:
        return sub[0] == '\0' && strcmp(r->resource, res) == 0;
    case SUB_EXACT:
        return sub[0] != '\0' && strcmp(r->sub, sub) == 0 &&
               (r->resource == NULL || strcmp(r->resource, res) == 0);
    case SUB_ANY:
        return r->resource == NULL || strcmp(r->resource, res) == 0;
    }
    return 0;
}

static int rule_matches(const pol_rule *r, const gw_audit_attrs *a)
{
    if (r->users.n > 0 && !in_set(&r->users, str_or_empty(a->user)))
        return 0;
    if (r->groups.n > 0) {
        int any = 0;
        for (size_t i = 0; i < a->ngroups && !any; i++)
            any = a->groups[i] != NULL && in_set(&r->groups, a->groups[i]);
        if (!any)
            return 0;
    }
    if (r->verbs.n > 0 && !in_set(&r->verbs, str_or_empty(a->verb)))
        return 0;
    if (r->namespaces.n > 0 || r->nres > 0) {
        const char *group = str_or_empty(a->api_group), *res = str_or_empty(a->resource);
        const char *sub = str_or_empty(a->subresource);
        int any = r->nres == 0;

        if (!a->is_resource_request)
            return 0;
        if (r->namespaces.n > 0 && !in_set(&r->namespaces, str_or_empty(a->namespace_)))
            return 0;
        for (size_t i = 0; i < r->nres && !any; i++)
            any = res_matches(&r->res[i], group, res, sub);
        return any;
    }
    if (r->nurls > 0) {
        const char *path = str_or_empty(a->path);

        if (a->is_resource_request)
            return 0;
        for (size_t i = 0; i < r->nurls; i++) {
            const pol_url *u = &r->urls[i];
            if (u->prefix ? strncmp(path, u->s, u->n) == 0 : strcmp(path, u->s) == 0)
                return 1;
        }
        return 0;
    }
    return 1;
}

gw_audit_level gw_audit_policy_level(const gw_audit_policy *p, const gw_audit_attrs *a)
{
    if (p == NULL)
        return GW_AUDIT_METADATA;
    for (size_t i = 0; i < p->nrules; i++)
        if (rule_matches(&p->rules[i], a))
            return p->rules[i].level;
    return p->level;
}

/* ---- parsing ---- */

void gw_audit_policy_free(gw_audit_policy *p)
{
    if (p == NULL)
        return;
    for (size_t i = 0; i < p->nrules; i++) {
        pol_rule *r = &p->rules[i];
        free(r->users.v);
        free(r->groups.v);
        free(r->verbs.v);
        free(r->namespaces.v);
        free(r->res);
        free(r->urls);
    }
    free(p->rules);
    free(p->arena);
    free(p);
}

static int bad(char *err, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static int bad(char *err, const char *fmt, ...)
{
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(err, ERR_MAX, fmt, ap);
    va_end(ap);
    return -1;
}

/* The first 64 bytes of untrusted text for a message, printable ASCII only. */
static const char *shown(const char *s, char buf[72])
{
    size_t i;

    for (i = 0; s[i] && i < 64; i++)
        buf[i] = s[i] >= 0x20 && s[i] < 0x7f && s[i] != '"' && s[i] != '\\' ? s[i] : '?';
    if (s[i])
        buf[i++] = '.', buf[i++] = '.', buf[i++] = '.';
    buf[i] = '\0';
    return buf;
}

/* A copy of s in the arena. The arena holds the whole JSON text, which
 * bounds every string decoded from it: a string's bytes plus its NUL never
 * exceed its encoded form with the quotes. */
static const char *keep(gw_audit_policy *p, const char *s, size_t n)
{
    char *d;

    if (p->arena_cap - p->arena_used < n + 1)
        return NULL;
    d = p->arena + p->arena_used;
    memcpy(d, s, n);
    d[n] = '\0';
    p->arena_used += n + 1;
    return d;
}

static int parse_level(const json_t *v, const char *where, gw_audit_level *out, char *err)
{
    const char *s = json_string_value(v);
    char b[72];

    if (s == NULL)
        return bad(err, "%s: not a string", where);
    for (size_t i = 0; i < sizeof(level_names) / sizeof(level_names[0]); i++)
        if (strcmp(s, level_names[i]) == 0) {
            *out = (gw_audit_level)i;
            return 0;
        }
    return bad(err, "%s: unknown level \"%s\" (None, Metadata, Request or RequestResponse)",
                where, shown(s, b));
}

/* The array at where, or -1. An empty array is the same as none. */
static int get_array(const json_t *v, const char *where, char *err)
{
    if (!json_is_array(v))
        return bad(err, "%s: not an array", where);
    return 0;
}

enum { STR_ANY = 0, STR_NONEMPTY = 1, STR_LOWER = 2 };

static int parse_strset(gw_audit_policy *p, const json_t *v, const char *where, int rules,
                        strset *out, char *err)
{
    size_t i, n;
    json_t *e;
    char b[72];

    if (get_array(v, where, err))
        return -1;
    if ((n = json_array_size(v)) == 0)
        return 0;
    if ((out->v = calloc(n, sizeof(*out->v))) == NULL)
        return bad(err, "out of memory");
    json_array_foreach(v, i, e) {
        const char *s = json_string_value(e);
        size_t len = json_string_length(e);

        if (s == NULL)
            return bad(err, "%s[%zu]: not a string", where, i);
        if ((rules & STR_NONEMPTY) && len == 0)
            return bad(err, "%s[%zu]: empty string", where, i);
        if (rules & STR_LOWER)
            for (size_t k = 0; k < len; k++)
                if (s[k] >= 'A' && s[k] <= 'Z')
                    return bad(err, "%s[%zu]: \"%s\" is not lower-case", where, i, shown(s, b));
        if ((out->v[out->n++] = keep(p, s, len)) == NULL)
            return bad(err, "%s[%zu]: internal error (arena)", where, i);
    }
    return 0;
}

/* One of "res", "res/sub", "*" (every resource and subresource), "res" +
 * "/" + "*" (res and its subresources), "*" + "/sub" (sub of any resource). */
static int parse_res_string(gw_audit_policy *p, const char *s, size_t len, const char *group,
                            const char *where, pol_res *out, char *err)
{
    const char *slash = memchr(s, '/', len);
    size_t rlen = slash ? (size_t)(slash - s) : len;
    size_t slen = slash ? len - rlen - 1 : 0;
    const char *sub = slash ? slash + 1 : NULL;
    int rstar = rlen == 1 && s[0] == '*', sstar = slen == 1 && sub[0] == '*';
    char b[72];

    if (len == 0)
        return bad(err, "%s: empty string", where);
    if (rlen == 0 || (slash && slen == 0))
        return bad(err, "%s: \"%s\": empty resource or subresource", where, shown(s, b));
    if (slash && memchr(sub, '/', slen))
        return bad(err, "%s: \"%s\": more than one \"/\"", where, shown(s, b));
    if ((!rstar && memchr(s, '*', rlen)) || (slash && !sstar && memchr(sub, '*', slen)))
        return bad(err,
                    "%s: \"%s\": \"*\" stands only for a whole resource or subresource "
                    "(\"*\", \"pods/*\", \"*/log\")",
                    where, shown(s, b));
    if (rstar && sstar)
        return bad(err, "%s: \"*/*\": write \"*\" for every resource and subresource", where);
    out->group = group;
    out->resource = NULL;
    out->sub = NULL;
    if (!rstar && (out->resource = keep(p, s, rlen)) == NULL)
        return bad(err, "%s: internal error (arena)", where);
    if (slash == NULL)
        out->mode = rstar ? SUB_ANY : SUB_NONE;
    else if (sstar)
        out->mode = SUB_ANY;
    else {
        out->mode = SUB_EXACT;
        if ((out->sub = keep(p, sub, slen)) == NULL)
            return bad(err, "%s: internal error (arena)", where);
    }
    return 0;
}

/* {"group": "...", "resources": [...]}: the group is "" (core) when absent,
 * as in Kubernetes; no resources means every resource of the group. */
static int count_res(const json_t *v, const char *where, size_t *n, char *err)
{
    size_t i;
    json_t *e;

    *n = 0;
    if (get_array(v, where, err))
        return -1;
    json_array_foreach(v, i, e) {
        size_t k = 1;
        if (json_is_object(e)) {
            json_t *rs = json_object_get(e, "resources");
            if (json_is_array(rs) && json_array_size(rs) > 0)
                k = json_array_size(rs);
        }
        *n += k;
    }
    return 0;
}

static int parse_resources(gw_audit_policy *p, const json_t *v, const char *where, pol_rule *r,
                           char *err)
{
    char w[WHERE_MAX + 32], w2[WHERE_MAX + 96], b[72];
    size_t i, n;
    json_t *e;

    if (count_res(v, where, &n, err))
        return -1;
    if (n == 0)
        return 0;
    if ((r->res = calloc(n, sizeof(*r->res))) == NULL)
        return bad(err, "out of memory");
    json_array_foreach(v, i, e) {
        snprintf(w, sizeof(w), "%s[%zu]", where, i);
        if (json_is_string(e)) {
            if (parse_res_string(p, json_string_value(e), json_string_length(e), NULL, w,
                                 &r->res[r->nres], err))
                return -1;
            r->nres++;
        } else if (json_is_object(e)) {
            const char *key, *group = "";
            json_t *val, *list = NULL;
            size_t k;

            json_object_foreach(e, key, val) {
                if (strcmp(key, "group") == 0) {
                    if (!json_is_string(val))
                        return bad(err, "%s.group: not a string", w);
                    if (strcmp(json_string_value(val), "*") == 0)
                        return bad(err,
                                    "%s.group: \"*\" is not a wildcard here; a string entry "
                                    "(\"users\") matches every group",
                                    w);
                    if ((group = keep(p, json_string_value(val), json_string_length(val))) ==
                        NULL)
                        return bad(err, "%s.group: internal error (arena)", w);
                } else if (strcmp(key, "resources") == 0) {
                    list = val;
                } else {
                    return bad(err, "%s: unknown key \"%s\" (group, resources)", w,
                                shown(key, b));
                }
            }
            if (list == NULL || (json_is_array(list) && json_array_size(list) == 0)) {
                r->res[r->nres++] = (pol_res){.group = group, .mode = SUB_ANY};
                continue;
            }
            snprintf(w2, sizeof(w2), "%s.resources", w);
            if (get_array(list, w2, err))
                return -1;
            json_array_foreach(list, k, val) {
                snprintf(w2, sizeof(w2), "%s.resources[%zu]", w, k);
                if (!json_is_string(val))
                    return bad(err, "%s: not a string", w2);
                if (parse_res_string(p, json_string_value(val), json_string_length(val), group,
                                     w2, &r->res[r->nres], err))
                    return -1;
                r->nres++;
            }
        } else {
            return bad(err, "%s: not a string or an object", w);
        }
    }
    return 0;
}

static int parse_urls(gw_audit_policy *p, const json_t *v, const char *where, pol_rule *r,
                      char *err)
{
    size_t i, n;
    json_t *e;
    char b[72];

    if (get_array(v, where, err))
        return -1;
    if ((n = json_array_size(v)) == 0)
        return 0;
    if ((r->urls = calloc(n, sizeof(*r->urls))) == NULL)
        return bad(err, "out of memory");
    json_array_foreach(v, i, e) {
        const char *s = json_string_value(e);
        size_t len = json_string_length(e);
        pol_url *u = &r->urls[r->nurls];

        if (s == NULL)
            return bad(err, "%s[%zu]: not a string", where, i);
        if (len == 0 || (s[0] != '/' && strcmp(s, "*") != 0))
            return bad(err, "%s[%zu]: \"%s\": a path beginning with \"/\", or \"*\"", where, i,
                        shown(s, b));
        u->prefix = s[len - 1] == '*';
        u->n = u->prefix ? len - 1 : len;
        if (memchr(s, '*', u->n))
            return bad(err, "%s[%zu]: \"%s\": \"*\" may only end a path", where, i, shown(s, b));
        if ((u->s = keep(p, s, u->n)) == NULL)
            return bad(err, "%s[%zu]: internal error (arena)", where, i);
        r->nurls++;
    }
    return 0;
}

static int parse_rule(gw_audit_policy *p, const json_t *v, size_t idx, pol_rule *r, char *err)
{
    char where[32], w[WHERE_MAX], b[72];
    const char *key;
    json_t *val;
    int has_level = 0;

    snprintf(where, sizeof(where), "rules[%zu]", idx);
    if (!json_is_object(v))
        return bad(err, "%s: not an object", where);
    json_object_foreach((json_t *)v, key, val) {
        snprintf(w, sizeof(w), "%s.%s", where, key);
        if (strcmp(key, "level") == 0) {
            if (parse_level(val, w, &r->level, err))
                return -1;
            has_level = 1;
        } else if (strcmp(key, "users") == 0) {
            if (parse_strset(p, val, w, STR_NONEMPTY, &r->users, err))
                return -1;
        } else if (strcmp(key, "userGroups") == 0) {
            if (parse_strset(p, val, w, STR_NONEMPTY, &r->groups, err))
                return -1;
        } else if (strcmp(key, "verbs") == 0) {
            if (parse_strset(p, val, w, STR_NONEMPTY | STR_LOWER, &r->verbs, err))
                return -1;
        } else if (strcmp(key, "namespaces") == 0) {
            if (parse_strset(p, val, w, STR_ANY, &r->namespaces, err))
                return -1;
        } else if (strcmp(key, "resources") == 0) {
            if (parse_resources(p, val, w, r, err))
                return -1;
        } else if (strcmp(key, "nonResourceURLs") == 0) {
            if (parse_urls(p, val, w, r, err))
                return -1;
        } else {
            return bad(err,
                        "%s: unknown key \"%s\" (level, users, userGroups, verbs, resources, "
                        "namespaces, nonResourceURLs)",
                        where, shown(key, b));
        }
    }
    if (!has_level)
        return bad(err, "%s: no \"level\"", where);
    if (r->nurls > 0 && (r->nres > 0 || r->namespaces.n > 0))
        return bad(err,
                    "%s: \"nonResourceURLs\" cannot be combined with \"resources\" or "
                    "\"namespaces\" (a request is one or the other)",
                    where);
    return 0;
}

static int parse_root(gw_audit_policy *p, const json_t *root, char *err)
{
    const char *key;
    json_t *val, *rules = NULL;
    char b[72];
    size_t i;

    if (!json_is_object(root))
        return bad(err, "the policy is not a JSON object");
    json_object_foreach((json_t *)root, key, val) {
        if (strcmp(key, "level") == 0) {
            if (parse_level(val, "level", &p->level, err))
                return -1;
        } else if (strcmp(key, "rules") == 0) {
            rules = val;
        } else if (strcmp(key, "apiVersion") == 0) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "audit.k8s.io/v1") != 0)
                return bad(err, "apiVersion: not \"audit.k8s.io/v1\"");
        } else if (strcmp(key, "kind") == 0) {
            if (!json_is_string(val) || strcmp(json_string_value(val), "Policy") != 0)
                return bad(err, "kind: not \"Policy\"");
        } else {
            return bad(err, "unknown key \"%s\" at the top (level, rules, apiVersion, kind)",
                        shown(key, b));
        }
    }
    if (rules == NULL)
        return 0;
    if (get_array(rules, "rules", err))
        return -1;
    if (json_array_size(rules) == 0)
        return 0;
    if ((p->rules = calloc(json_array_size(rules), sizeof(*p->rules))) == NULL)
        return bad(err, "out of memory");
    json_array_foreach(rules, i, val) {
        /* counted first, so that free() sees the lists of a half-parsed rule */
        p->nrules++;
        if (parse_rule(p, val, i, &p->rules[i], err))
            return -1;
    }
    return 0;
}

static gw_audit_policy *policy_new(size_t arena)
{
    gw_audit_policy *p = calloc(1, sizeof(*p));

    if (p == NULL)
        return NULL;
    p->level = GW_AUDIT_METADATA;
    if (arena > 0) {
        if ((p->arena = malloc(arena)) == NULL) {
            free(p);
            return NULL;
        }
        p->arena_cap = arena;
    }
    return p;
}

/* origin: "audit policy <path>" for a file, NULL for text. */
static ks_status parse_text(const char *origin, const char *json, size_t len,
                            gw_audit_policy **out)
{
    ks_status st = KS_ERR_INVALID;
    gw_audit_policy *p = NULL;
    json_t *root = NULL;
    json_error_t jerr;
    char err[ERR_MAX] = "";
    const char *pre = origin ? origin : "", *sep = origin ? ": " : "";

    if (json == NULL && len > 0) {
        st = KS_FAIL(KS_ERR_INVALID, "%s%sno text", pre, sep);
        goto out;
    }
    root = json_loadb(json ? json : "", len, JSON_REJECT_DUPLICATES, &jerr);
    if (root == NULL) {
        st = json_error_code(&jerr) == json_error_out_of_memory
                 ? KS_FAIL(KS_ERR_NOMEM, "%s%sout of memory", pre, sep)
                 : KS_FAIL(KS_ERR_INVALID, "%s%sline %d column %d: %s", pre, sep, jerr.line,
                           jerr.column, jerr.text);
        goto out;
    }
    if ((p = policy_new(len + 1)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "%s%sout of memory", pre, sep);
        goto out;
    }
    if (parse_root(p, root, err) != 0) {
        st = strcmp(err, "out of memory") == 0 ? KS_FAIL(KS_ERR_NOMEM, "%s%s%s", pre, sep, err)
                                               : KS_FAIL(KS_ERR_INVALID, "%s%s%s", pre, sep, err);
        goto out;
    }
    *out = p;
    p = NULL;
    st = KS_OK;
out:
    gw_audit_policy_free(p);
    json_decref(root);
    return st;
}

ks_status gw_audit_policy_parse(const char *json, size_t len, gw_audit_policy **out)
{
    return parse_text(NULL, json, len, out);
}

ks_status gw_audit_policy_load(const char *path, gw_audit_policy **out)
{
    ks_status st = KS_ERR_IO;
    char origin[4200];
    char *buf = NULL;
    size_t len = 0;
    int fd = -1;

    if (path == NULL || path[0] == '\0') {
        gw_audit_policy *p = policy_new(0);
        if (p == NULL)
            return KS_FAIL(KS_ERR_NOMEM, "audit policy: out of memory");
        *out = p;
        return KS_OK;
    }
    snprintf(origin, sizeof(origin), "audit policy %s", path);
    if ((fd = open(path, O_RDONLY | O_CLOEXEC)) < 0) {
        st = KS_FAIL(KS_ERR_IO, "%s: %s", origin, strerror(errno));
        goto out;
    }
    /* one byte more than the cap tells a file at the cap from a larger one */
    if ((buf = malloc(POLICY_FILE_MAX + 1)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "%s: out of memory", origin);
        goto out;
    }
    for (;;) {
        ssize_t n = read(fd, buf + len, POLICY_FILE_MAX + 1 - len);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0) {
            st = KS_FAIL(KS_ERR_IO, "%s: %s", origin, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > POLICY_FILE_MAX) {
            st = KS_FAIL(KS_ERR_TOO_LARGE, "%s: larger than %u bytes", origin, POLICY_FILE_MAX);
            goto out;
        }
    }
    st = parse_text(origin, buf, len, out);
out:
    if (fd >= 0)
        close(fd);
    free(buf);
    return st;
}
