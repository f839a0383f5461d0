/* roles.c: roles, bindings, members and subjectaccessreviews of
 * iam.kubesphere.io/v1beta1 (docs/iam-rbac.md).
 *
 *   {globalroles,globalrolebindings,clusterroles,clusterrolebindings}[/{name}]
 *   workspaces/{ws}/{workspaceroles,workspacerolebindings}[/{name}]
 *   namespaces/{ns}/{roles,rolebindings}[/{name}]
 *       GET (list, get), POST (create), PUT (update), PATCH (merge patch), DELETE
 *   clustermembers, workspaces/{ws}/workspacemembers, namespaces/{ns}/namespacemembers
 *       GET, POST [{"username","roleRef"}]; .../{member}: GET, PUT, DELETE
 *   subjectaccessreviews: POST
 *
 * Reads come from the mirror after a read barrier, or from kube-apiserver
 * when the barrier times out; writes go to kube-apiserver, then wait (within
 * read-wait) until the mirror shows them, so a read that follows, on any
 * replica, sees the write. Every input is checked before anything is
 * written; kube-apiserver's own refusals (AlreadyExists, Conflict, schema
 * errors, unknown fields with fieldValidation=Strict) come back as its
 * Status, with its code. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "authz.h"
#include "iam.h"
#include "log.h"
#include "strmap.h"

#define WS_LABEL "kubesphere.io/workspace"
#define USER_REF_LABEL "iam.kubesphere.io/user-ref"
#define IAM_API_VERSION IAM_GROUP "/" IAM_VERSION
#define STRICT "?fieldValidation=Strict"
#define PATH_MAX_LEN 1024
#define MAX_SELECTOR_TERMS 16
#define PATCH_RETRIES 3

/* ------------------------------------------------------------------------ */
/* The eight kinds.                                                          */

typedef enum { SC_CLUSTER = 0, SC_WORKSPACE, SC_NAMESPACE } scope_kind;

typedef struct {
    const char *plural;
    const char *kind;
    const char *resource;   /* mirror name */
    scope_kind scope;       /* where it sits in the REST path */
    const char *role_kind;  /* bindings: the roleRef kind they take; roles: NULL */
} rkind;

static const rkind kinds[] = {
    {"globalroles", "GlobalRole", IAM_GROUP "/globalroles", SC_CLUSTER, NULL},
    {"globalrolebindings", "GlobalRoleBinding", IAM_GROUP "/globalrolebindings", SC_CLUSTER,
     "GlobalRole"},
    {"clusterroles", "ClusterRole", IAM_GROUP "/clusterroles", SC_CLUSTER, NULL},
    {"clusterrolebindings", "ClusterRoleBinding", IAM_GROUP "/clusterrolebindings", SC_CLUSTER,
     "ClusterRole"},
    {"workspaceroles", "WorkspaceRole", IAM_GROUP "/workspaceroles", SC_WORKSPACE, NULL},
    {"workspacerolebindings", "WorkspaceRoleBinding", IAM_GROUP "/workspacerolebindings",
     SC_WORKSPACE, "WorkspaceRole"},
    {"roles", "Role", IAM_GROUP "/roles", SC_NAMESPACE, NULL},
    {"rolebindings", "RoleBinding", IAM_GROUP "/rolebindings", SC_NAMESPACE, "Role"},
};
#define NKINDS (sizeof(kinds) / sizeof(kinds[0]))

static const rkind *kind_by_plural(const char *plural)
{
    for (size_t i = 0; i < NKINDS; i++)
        if (strcmp(kinds[i].plural, plural) == 0)
            return &kinds[i];
    return NULL;
}

/* The member views: which bindings and roles make a member, and the
 * annotation KubeSphere puts the role in. */
typedef struct {
    const char *plural;       /* "clustermembers", ... */
    scope_kind scope;
    const rkind *binding;
    const rkind *role;
    const char *annotation;
    const char *scope_word;   /* for messages */
} mkind;

static const mkind members[] = {
    {"clustermembers", SC_CLUSTER, &kinds[3], &kinds[2], "iam.kubesphere.io/clusterrole",
     "the cluster"},
    {"workspacemembers", SC_WORKSPACE, &kinds[5], &kinds[4], "iam.kubesphere.io/workspacerole",
     "workspace"},
    {"namespacemembers", SC_NAMESPACE, &kinds[7], &kinds[6], "iam.kubesphere.io/role",
     "namespace"},
};

/* What a request names: the kind (or member view), the workspace or
 * namespace, and the object (or member). */
typedef struct {
    iam *s;
    const rkind *k;
    const mkind *m;
    const char *scope;   /* workspace or namespace; NULL at cluster scope */
    const char *name;    /* NULL for collections */
} target;

/* ------------------------------------------------------------------------ */
/* Small helpers.                                                            */

static const char *nz(const char *s)
{
    return s != NULL ? s : "";
}

static json_t *meta(const json_t *obj)
{
    return json_object_get(obj, "metadata");
}

static const char *meta_str(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(meta(obj), key));
}

static const char *label_of(const json_t *obj, const char *key)
{
    return json_string_value(json_object_get(json_object_get(meta(obj), "labels"), key));
}

static int is_alnum_lower(char c)
{
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* RFC 1123 label: 1-63 of [a-z0-9-], alphanumeric at both ends. */
static int dns1123_label(const char *s, size_t n)
{
    if (n == 0 || n > 63 || !is_alnum_lower(s[0]) || !is_alnum_lower(s[n - 1]))
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!is_alnum_lower(s[i]) && s[i] != '-')
            return 0;
    return 1;
}

/* RFC 1123 subdomain: at most 253, dot-separated labels. */
static int dns1123_subdomain(const char *s)
{
    size_t n = strlen(s);
    const char *p = s;

    if (n == 0 || n > 253)
        return 0;
    while (1) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        if (!dns1123_label(p, len))
            return 0;
        if (dot == NULL)
            return 1;
        p = dot + 1;
    }
}

/* Label values: at most 63 of [A-Za-z0-9._-], alphanumeric at both ends. */
static int label_value_ok(const char *s)
{
    size_t n = strlen(s);
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int an = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!an && c != '-' && c != '_' && c != '.')
            return 0;
        if ((i == 0 || i == n - 1) && !an)
            return 0;
    }
    return 1;
}

/* 1 when the media type of a Content-Type value (parameters after ';'
 * ignored) is type. */
static int media_is(const char *ct, const char *type)
{
    size_t n = strlen(type);
    if (strncasecmp(ct, type, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ' || *ct == '\t')
        ct++;
    return *ct == '\0' || *ct == ';';
}

/* ks_api_body_object with the media type matched exactly (the library
 * takes any type that starts with application/json). */
static json_t *body_object(ks_api_call *call, ks_api_response *resp)
{
    const char *ct = ks_api_header(call, "Content-Type");

    if (ct != NULL && !media_is(ct, "application/json")) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "the body must be application/json, not %.100s", ct);
        return NULL;
    }
    return ks_api_body_object(call, resp);
}

static int read_wait_ms(const iam *s)
{
    long long ms = s->cfg->read_wait_ms;
    return ms > 60000 ? 60000 : (int)ms;
}

/* "/apis/iam.kubesphere.io/v1beta1[/namespaces/<ns>]/<plural>[/<name>]<suffix>" */
static int kube_path(const rkind *k, const char *ns, const char *name, const char *suffix,
                     char *out, size_t cap)
{
    int n;
    if (k->scope == SC_NAMESPACE)
        n = snprintf(out, cap, "%s/namespaces/%s/%s%s%s%s", IAM_KUBE_PREFIX, ns, k->plural,
                     name ? "/" : "", nz(name), nz(suffix));
    else
        n = snprintf(out, cap, "%s/%s%s%s%s", IAM_KUBE_PREFIX, k->plural, name ? "/" : "",
                     nz(name), nz(suffix));
    return n > 0 && (size_t)n < cap;
}

static void answer_success(ks_api_response *resp, const rkind *k, const char *name,
                           const char *what)
{
    json_t *o = json_pack("{s:s, s:s, s:{}, s:s, s:s, s:{s:s, s:s, s:s}, s:i}", "kind", "Status",
                          "apiVersion", "v1", "metadata", "status", "Success", "message", what,
                          "details", "name", name, "group", IAM_GROUP, "kind", k->plural, "code",
                          200);
    ks_api_json(resp, 200, o);
    json_decref(o);
}

/* ------------------------------------------------------------------------ */
/* kube-apiserver.                                                           */

/* Turn a failed kube request into the client's answer. kube's 4xx Status
 * goes through as it is (AlreadyExists, Conflict, Invalid, NotFound,
 * BadRequest for unknown fields); its 401/403 are iam's own credentials,
 * not the client's, so they are a 500. */
static void answer_kube_error(ks_api_response *resp, ks_status st, const ks_kube_response *kr,
                              const char *method, const char *path)
{
    long code = kr->http_code;
    const char *reason = kr->status.reason[0] ? kr->status.reason : ks_kube_reason_for_code(code);
    const char *msg = kr->status.message[0] ? kr->status.message : ks_status_last();

    if (code == 401 || code == 403) {
        ks_error("roles: kube-apiserver refused iam's %s %s: %s", method, path, msg);
        ks_api_status(resp, 500, "InternalError", "iam may not %s %s in kube-apiserver: %s",
                      method, path, msg);
    } else if (code >= 400 && code < 500) {
        ks_api_status(resp, (int)code, reason[0] ? reason : "BadRequest", "%s", msg);
    } else if (st == KS_ERR_TIMEOUT) {
        ks_api_status(resp, 504, "Timeout", "kube-apiserver did not answer %s %s in time", method,
                      path);
    } else {
        ks_warn("roles: %s %s: %s", method, path, ks_status_last());
        ks_api_status(resp, 503, "ServiceUnavailable", "kube-apiserver: %s", msg);
    }
}

/* One request to kube-apiserver. On success *out (may be NULL) is the
 * answer's JSON (NULL when the body is empty) and 1 is returned; otherwise
 * resp holds the error and 0 is returned. *not_found (may be NULL) is set
 * on a 404 so that reads can tell it apart. */
static int kube_call(iam *s, const char *method, const char *path, const json_t *body,
                     json_t **out, ks_api_response *resp, int *not_found)
{
    ks_kube_response kr;
    char *text = NULL;
    int ok = 0;
    ks_status st;

    if (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        ks_api_status(resp, 500, "InternalError", "cannot serialize the object");
        return 0;
    }
    st = ks_kube_request(s->kube, method, path, text, NULL, 0, &kr);
    free(text);
    if (not_found != NULL)
        *not_found = kr.http_code == 404;
    if (st != KS_OK) {
        answer_kube_error(resp, st, &kr, method, path);
        goto out;
    }
    if (out != NULL) {
        *out = NULL;
        if (kr.body != NULL && kr.body_len > 0) {
            *out = json_loadb(kr.body, kr.body_len, 0, NULL);
            if (*out == NULL) {
                ks_api_status(resp, 502, "InternalError",
                              "kube-apiserver answered %s %s with something that is not JSON",
                              method, path);
                goto out;
            }
        }
    }
    ok = 1;
out:
    ks_kube_response_clear(&kr);
    return ok;
}

/* ------------------------------------------------------------------------ */
/* Reads: the mirror after a barrier, or kube-apiserver.                     */

static void reset_response(ks_api_response *resp)
{
    free(resp->body);
    memset(resp, 0, sizeof(*resp));
}

static int mirror_fresh(iam *s)
{
    ks_status st = ks_mirror_cache_barrier(s->mirror, read_wait_ms(s));
    if (st != KS_OK)
        ks_debug("roles: mirror barrier: %s; reading kube-apiserver", ks_status_last());
    return st == KS_OK;
}

/* Every object of kind k in scope (workspace or namespace; NULL at cluster
 * scope), as a new array whose items must not be modified. 0 with resp
 * filled on failure. */
static int read_list(iam *s, const rkind *k, const char *scope, json_t **items,
                     ks_api_response *resp)
{
    char path[PATH_MAX_LEN], suffix[128];
    json_t *list = NULL, *arr;
    ks_status st;

    if (!mirror_fresh(s)) {
        suffix[0] = '\0';
        if (k->scope == SC_WORKSPACE)
            snprintf(suffix, sizeof(suffix), "?labelSelector=kubesphere.io%%2Fworkspace%%3D%s",
                     scope);
        if (!kube_path(k, scope, NULL, suffix, path, sizeof(path))) {
            ks_api_status(resp, 400, "BadRequest", "the path is too long");
            return 0;
        }
        if (kube_call(s, "GET", path, NULL, &list, resp, NULL)) {
            arr = json_object_get(list, "items");
            if (!json_is_array(arr)) {
                json_decref(list);
                ks_api_status(resp, 502, "InternalError", "kube-apiserver listed %s without items",
                              k->plural);
                return 0;
            }
            *items = json_incref(arr);
            json_decref(list);
            return 1;
        }
        if (resp->code < 500)
            return 0;
        /* kube-apiserver is away too: the mirror, even if behind, rather
         * than no answer (DESIGN.md section 8). */
        reset_response(resp);
    }
    if (k->scope == SC_WORKSPACE)
        st = ks_mirror_cache_list_by_label(s->mirror, k->resource, WS_LABEL, scope, items);
    else
        st = ks_mirror_cache_list(s->mirror, k->resource, k->scope == SC_NAMESPACE ? scope : NULL,
                                  items);
    if (st == KS_OK)
        return 1;
    ks_api_from_status(resp, st);
    return 0;
}

/* The object of kind k named name in scope, as a new reference that must
 * not be modified; a workspace kind must carry the workspace's label. 0 with
 * resp filled (404 when absent). */
static int read_one(iam *s, const rkind *k, const char *scope, const char *name, json_t **obj,
                    ks_api_response *resp)
{
    const char *ns = k->scope == SC_NAMESPACE ? scope : "";
    json_t *o = NULL;
    int nf = 0, from_mirror = mirror_fresh(s);

    if (!from_mirror) {
        char path[PATH_MAX_LEN];
        if (!kube_path(k, scope, name, NULL, path, sizeof(path))) {
            ks_api_status(resp, 400, "BadRequest", "the path is too long");
            return 0;
        }
        if (!kube_call(s, "GET", path, NULL, &o, resp, &nf)) {
            if (!nf && resp->code < 500)
                return 0;
            /* 404, or kube-apiserver away: then the mirror, even if behind */
            from_mirror = !nf;
            reset_response(resp);
            o = NULL;
        }
    }
    if (from_mirror && ks_mirror_cache_get(s->mirror, k->resource, ns, name, &o, NULL) != KS_OK)
        o = NULL;
    if (o != NULL && k->scope == SC_WORKSPACE && strcmp(nz(label_of(o, WS_LABEL)), scope) != 0) {
        json_decref(o);
        o = NULL;
    }
    if (o == NULL) {
        if (k->scope == SC_CLUSTER)
            ks_api_status(resp, 404, "NotFound", "%s.%s \"%s\" not found", k->plural, IAM_GROUP,
                          name);
        else
            ks_api_status(resp, 404, "NotFound", "%s.%s \"%s\" not found in %s %s", k->plural,
                          IAM_GROUP, name, k->scope == SC_WORKSPACE ? "workspace" : "namespace",
                          scope);
        return 0;
    }
    *obj = o;
    return 1;
}

/* After a write: wait until the mirror shows it (rv NULL: the deletion). A
 * timeout is not an error (the write happened); reads then go to kube. */
static void await_mirror(iam *s, const rkind *k, const char *scope, const char *name,
                         const char *rv)
{
    if (iam_wait_visible(s, k->resource, k->scope == SC_NAMESPACE ? scope : "", name, rv) !=
        KS_OK)
        ks_warn("roles: %s", ks_status_last());
}

static const char *rv_of(const json_t *obj)
{
    return meta_str(obj, "resourceVersion");
}

/* ------------------------------------------------------------------------ */
/* List queries: name, labelSelector, sortBy, ascending, page, limit.       */

typedef struct {
    char key[128];
    char value[128];
    enum { SEL_EQ, SEL_NE, SEL_EXISTS, SEL_ABSENT } op;
} sel_term;

typedef struct {
    char name[256];
    sel_term terms[MAX_SELECTOR_TERMS];
    size_t nterms;
    int by_name;        /* sortBy=name; else creationTimestamp */
    int ascending;
    long long page;     /* from 1 */
    long long limit;    /* -1: all */
} list_query;

static void trim(const char **s, size_t *n)
{
    while (*n > 0 && (**s == ' ' || **s == '\t')) {
        (*s)++;
        (*n)--;
    }
    while (*n > 0 && ((*s)[*n - 1] == ' ' || (*s)[*n - 1] == '\t'))
        (*n)--;
}

static int copy_part(const char *s, size_t n, char *out, size_t cap)
{
    trim(&s, &n);
    if (n >= cap)
        return 0;
    memcpy(out, s, n);
    out[n] = '\0';
    return 1;
}

/* Equality-based selectors: k=v, k==v, k!=v, k, !k, comma-separated. */
static int parse_selector(const char *text, list_query *q)
{
    const char *p = text;

    while (*p != '\0') {
        const char *comma = strchr(p, ',');
        size_t n = comma ? (size_t)(comma - p) : strlen(p);
        const char *t = p, *op;
        sel_term *st;

        trim(&t, &n);
        if (n == 0 || q->nterms == MAX_SELECTOR_TERMS)
            return 0;
        st = &q->terms[q->nterms++];
        if ((op = memchr(t, '!', n)) != NULL && op != t) {
            if ((size_t)(op - t) + 1 >= n || op[1] != '=')
                return 0;
            st->op = SEL_NE;
            if (!copy_part(t, (size_t)(op - t), st->key, sizeof(st->key)) ||
                !copy_part(op + 2, n - (size_t)(op - t) - 2, st->value, sizeof(st->value)))
                return 0;
        } else if ((op = memchr(t, '=', n)) != NULL) {
            size_t skip = ((size_t)(op - t) + 1 < n && op[1] == '=') ? 2 : 1;
            st->op = SEL_EQ;
            if (!copy_part(t, (size_t)(op - t), st->key, sizeof(st->key)) ||
                !copy_part(op + skip, n - (size_t)(op - t) - skip, st->value,
                           sizeof(st->value)))
                return 0;
        } else if (t[0] == '!') {
            st->op = SEL_ABSENT;
            if (!copy_part(t + 1, n - 1, st->key, sizeof(st->key)))
                return 0;
        } else {
            st->op = SEL_EXISTS;
            if (!copy_part(t, n, st->key, sizeof(st->key)))
                return 0;
        }
        if (st->key[0] == '\0' || strpbrk(st->key, "=!() ") != NULL ||
            strpbrk(st->value, "=!(), ") != NULL)
            return 0;
        p = comma ? comma + 1 : p + strlen(p);
    }
    return 1;
}

static int parse_int(const char *s, long long min, long long max, long long *out)
{
    char *end;
    long long v;

    if (s[0] == '\0' || s[0] == '+' || s[0] == ' ')
        return 0;
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || *end != '\0' || v < min || v > max)
        return 0;
    *out = v;
    return 1;
}

static int parse_list_query(const ks_api_call *call, list_query *q, ks_api_response *resp)
{
    char buf[1024];

    memset(q, 0, sizeof(*q));
    q->page = 1;
    q->limit = -1;
    if (ks_api_query(call, "name", buf, sizeof(buf)) && !copy_part(buf, strlen(buf), q->name,
                                                                   sizeof(q->name))) {
        ks_api_status(resp, 400, "BadRequest", "the name filter is too long");
        return 0;
    }
    if (ks_api_query(call, "labelSelector", buf, sizeof(buf)) && buf[0] != '\0' &&
        !parse_selector(buf, q)) {
        ks_api_status(resp, 400, "BadRequest",
                      "labelSelector \"%.200s\" is not a list of k=v, k!=v, k or !k", buf);
        return 0;
    }
    if (ks_api_query(call, "sortBy", buf, sizeof(buf)) && buf[0] != '\0') {
        if (strcmp(buf, "name") == 0)
            q->by_name = 1;
        else if (strcmp(buf, "createTime") != 0 && strcmp(buf, "creationTimestamp") != 0) {
            ks_api_status(resp, 400, "BadRequest",
                          "sortBy must be name, createTime or creationTimestamp");
            return 0;
        }
    }
    if (ks_api_query(call, "ascending", buf, sizeof(buf)) && buf[0] != '\0') {
        if (strcmp(buf, "true") == 0)
            q->ascending = 1;
        else if (strcmp(buf, "false") != 0) {
            ks_api_status(resp, 400, "BadRequest", "ascending must be true or false");
            return 0;
        }
    }
    if (ks_api_query(call, "page", buf, sizeof(buf)) && !parse_int(buf, 1, 1000000000, &q->page)) {
        ks_api_status(resp, 400, "BadRequest", "page must be a number from 1");
        return 0;
    }
    if (ks_api_query(call, "limit", buf, sizeof(buf)) &&
        !parse_int(buf, -1, 1000000000, &q->limit)) {
        ks_api_status(resp, 400, "BadRequest", "limit must be a number (-1: all)");
        return 0;
    }
    if (q->limit == 0)
        q->limit = -1;
    return 1;
}

static int query_matches(const list_query *q, const json_t *obj)
{
    const json_t *labels = json_object_get(meta(obj), "labels");

    if (q->name[0] != '\0' && strstr(nz(meta_str(obj, "name")), q->name) == NULL)
        return 0;
    for (size_t i = 0; i < q->nterms; i++) {
        const sel_term *t = &q->terms[i];
        const char *v = json_string_value(json_object_get(labels, t->key));
        switch (t->op) {
        case SEL_EQ:
            if (v == NULL || strcmp(v, t->value) != 0)
                return 0;
            break;
        case SEL_NE:
            if (v != NULL && strcmp(v, t->value) == 0)
                return 0;
            break;
        case SEL_EXISTS:
            if (v == NULL)
                return 0;
            break;
        case SEL_ABSENT:
            if (v != NULL)
                return 0;
            break;
        }
    }
    return 1;
}

static int compare_items(const void *a, const void *b, void *arg)
{
    const list_query *q = arg;
    const json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
    int c = 0;

    if (!q->by_name)
        c = strcmp(nz(meta_str(x, "creationTimestamp")), nz(meta_str(y, "creationTimestamp")));
    if (c == 0)
        c = strcmp(nz(meta_str(x, "name")), nz(meta_str(y, "name")));
    if (c == 0)
        c = strcmp(nz(meta_str(x, "namespace")), nz(meta_str(y, "namespace")));
    return q->ascending ? c : -c;
}

/* Answer {"items":[...],"totalItems":N} for items after the call's query. */
static void answer_list(const ks_api_call *call, ks_api_response *resp, const json_t *items)
{
    list_query q;
    size_t n = json_array_size(items), m = 0, from, to;
    json_t **v, *page = NULL, *out = NULL;

    if (!parse_list_query(call, &q, resp))
        return;
    if ((v = malloc((n ? n : 1) * sizeof(*v))) == NULL || (page = json_array()) == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        goto out;
    }
    for (size_t i = 0; i < n; i++)
        if (query_matches(&q, json_array_get(items, i)))
            v[m++] = json_array_get(items, i);
    qsort_r(v, m, sizeof(*v), compare_items, &q);
    if (q.limit < 0) {
        from = 0;
        to = m;
    } else {
        unsigned long long f = (unsigned long long)(q.page - 1) * (unsigned long long)q.limit;
        from = f < m ? (size_t)f : m;
        to = (unsigned long long)(m - from) < (unsigned long long)q.limit ? m
                                                                          : from + (size_t)q.limit;
    }
    for (size_t i = from; i < to; i++)
        if (json_array_append(page, v[i]) != 0) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            goto out;
        }
    out = json_pack("{s:O, s:I}", "items", page, "totalItems", (json_int_t)m);
    if (out == NULL)
        ks_api_status(resp, 500, "InternalError", "out of memory");
    else
        ks_api_json(resp, 200, out);
out:
    json_decref(out);
    json_decref(page);
    free(v);
}

/* ------------------------------------------------------------------------ */
/* What the path names.                                                      */

/* Fill t from the call: the segment after the prefix names the collection
 * (or "workspaces"/"namespaces", then the third one does). 0 with resp
 * filled when a name in the path is not valid. */
static int parse_target(ks_api_call *call, void *arg, target *t, ks_api_response *resp)
{
    const char *rest = call->path + strlen(IAM_API_PREFIX), *seg, *slash;
    char word[64];
    size_t n;
    int scoped;

    memset(t, 0, sizeof(*t));
    t->s = arg;
    if (*rest == '/')
        rest++;
    scoped = strncmp(rest, "workspaces/", 11) == 0 || strncmp(rest, "namespaces/", 11) == 0;
    seg = rest;
    if (scoped) {
        seg = strchr(rest, '/');
        seg = seg ? strchr(seg + 1, '/') : NULL;
        seg = seg ? seg + 1 : "";
    }
    slash = strchr(seg, '/');
    n = slash ? (size_t)(slash - seg) : strlen(seg);
    if (n >= sizeof(word))
        n = sizeof(word) - 1;
    memcpy(word, seg, n);
    word[n] = '\0';
    t->k = kind_by_plural(word);
    for (size_t i = 0; t->k == NULL && i < sizeof(members) / sizeof(members[0]); i++)
        if (strcmp(members[i].plural, word) == 0)
            t->m = &members[i];
    if (t->k == NULL && t->m == NULL) {
        ks_api_status(resp, 404, "NotFound", "the server could not find the requested resource");
        return 0;
    }
    if (scoped) {
        t->scope = call->params[0];
        if (!dns1123_label(t->scope, strlen(t->scope))) {
            ks_api_status(resp, 400, "BadRequest", "\"%.100s\" is not a valid %s name", t->scope,
                          rest[0] == 'w' ? "workspace" : "namespace");
            return 0;
        }
        if (call->nparams > 1)
            t->name = call->params[1];
    } else if (call->nparams > 0) {
        t->name = call->params[0];
    }
    if (t->name != NULL && !dns1123_subdomain(t->name)) {
        ks_api_status(resp, 400, "BadRequest",
                      "\"%.100s\" is not a valid name (RFC 1123 subdomain: lower-case letters, "
                      "digits, '-' and '.')",
                      t->name);
        return 0;
    }
    return 1;
}

/* ------------------------------------------------------------------------ */
/* Checking an object before it is written.                                  */

/* Make obj a valid k in t's scope, named want (NULL on create: the body
 * names it): fill kind, apiVersion, namespace and the workspace label when
 * absent; refuse them when they contradict the path; check the name; and
 * compile the object as the policy would, so nothing is written that the
 * RBAC store refuses. 0 with resp filled on refusal. */
static int prepare_object(const target *t, json_t *obj, const char *want, ks_api_response *resp)
{
    const rkind *k = t->k;
    json_t *md = meta(obj), *v;
    const char *name;
    ks_rbac *probe = NULL;
    ks_status st;

    v = json_object_get(obj, "kind");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), k->kind) != 0)) {
        ks_api_status(resp, 400, "BadRequest", "the object's kind %s is not %s, which %s takes",
                      json_is_string(v) ? json_string_value(v) : "(not a string)", k->kind,
                      k->plural);
        return 0;
    }
    v = json_object_get(obj, "apiVersion");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), IAM_API_VERSION) != 0)) {
        ks_api_status(resp, 400, "BadRequest", "the object's apiVersion must be %s",
                      IAM_API_VERSION);
        return 0;
    }
    if (md != NULL && !json_is_object(md)) {
        ks_api_status(resp, 400, "BadRequest", "metadata must be an object");
        return 0;
    }
    if (md == NULL) {
        if (json_object_set_new(obj, "metadata", json_object()) != 0 || (md = meta(obj)) == NULL)
            goto nomem;
    }
    if (json_object_set_new(obj, "kind", json_string(k->kind)) != 0 ||
        json_object_set_new(obj, "apiVersion", json_string(IAM_API_VERSION)) != 0)
        goto nomem;
    v = json_object_get(md, "name");
    if (v != NULL && !json_is_string(v)) {
        ks_api_status(resp, 422, "Invalid", "metadata.name must be a string");
        return 0;
    }
    name = json_string_value(v);
    if (want != NULL) {
        if (name != NULL && strcmp(name, want) != 0) {
            ks_api_status(resp, 400, "BadRequest",
                          "the name of the object (%.100s) does not match the name on the URL "
                          "(%.100s)",
                          name, want);
            return 0;
        }
        if (json_object_set_new(md, "name", json_string(want)) != 0)
            goto nomem;
    } else if (name == NULL || name[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "%s.%s: metadata.name: Required value", k->plural,
                      IAM_GROUP);
        return 0;
    } else if (!dns1123_subdomain(name)) {
        ks_api_status(resp, 422, "Invalid",
                      "%s.%s \"%.100s\" is invalid: metadata.name: a lowercase RFC 1123 "
                      "subdomain must consist of lower case alphanumeric characters, '-' or '.', "
                      "and must start and end with an alphanumeric character",
                      k->plural, IAM_GROUP, name);
        return 0;
    }
    name = meta_str(obj, "name");
    v = json_object_get(md, "namespace");
    if (k->scope == SC_NAMESPACE) {
        if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), t->scope) != 0)) {
            ks_api_status(resp, 400, "BadRequest",
                          "the namespace of the object does not match the namespace on the URL "
                          "(%s)",
                          t->scope);
            return 0;
        }
        if (json_object_set_new(md, "namespace", json_string(t->scope)) != 0)
            goto nomem;
    } else if (v != NULL && !(json_is_string(v) && json_string_value(v)[0] == '\0')) {
        ks_api_status(resp, 400, "BadRequest", "%s are cluster-scoped: metadata.namespace must "
                      "not be set", k->plural);
        return 0;
    }
    if (k->scope == SC_WORKSPACE) {
        json_t *labels = json_object_get(md, "labels");
        const char *ws;
        if (labels != NULL && !json_is_object(labels)) {
            ks_api_status(resp, 422, "Invalid", "metadata.labels must be an object");
            return 0;
        }
        if (labels == NULL) {
            if (json_object_set_new(md, "labels", json_object()) != 0 ||
                (labels = json_object_get(md, "labels")) == NULL)
                goto nomem;
        }
        ws = json_string_value(json_object_get(labels, WS_LABEL));
        if (json_object_get(labels, WS_LABEL) != NULL &&
            (ws == NULL || strcmp(ws, t->scope) != 0)) {
            ks_api_status(resp, 400, "BadRequest",
                          "the object's label %s does not match the workspace on the URL (%s)",
                          WS_LABEL, t->scope);
            return 0;
        }
        if (json_object_set_new(labels, WS_LABEL, json_string(t->scope)) != 0)
            goto nomem;
    }
    if (k->role_kind != NULL) {
        const json_t *ref = json_object_get(obj, "roleRef");
        const char *rk = json_string_value(json_object_get(ref, "kind"));
        if (ref != NULL && !json_is_object(ref)) {
            ks_api_status(resp, 422, "Invalid", "roleRef must be an object");
            return 0;
        }
        if (rk != NULL && rk[0] != '\0' && strcmp(rk, k->role_kind) != 0 &&
            !(strcmp(k->kind, "RoleBinding") == 0 && strcmp(rk, "ClusterRole") == 0)) {
            ks_api_status(resp, 422, "Invalid", "roleRef.kind: a %s grants a %s%s, not a %.64s",
                          k->kind, k->role_kind,
                          strcmp(k->kind, "RoleBinding") == 0 ? " or a ClusterRole" : "", rk);
            return 0;
        }
    }
    /* What the policy would refuse is refused here, with its reason. */
    if (ks_rbac_create(&probe) != KS_OK)
        goto nomem;
    st = ks_rbac_apply(probe, k->kind, obj);
    ks_rbac_destroy(probe);
    if (st == KS_ERR_INVALID) {
        ks_api_status(resp, 422, "Invalid", "%s \"%.100s\" is invalid: %s", k->kind, nz(name),
                      ks_status_last());
        return 0;
    }
    if (st != KS_OK)
        goto nomem;
    return 1;
nomem:
    ks_api_status(resp, 500, "InternalError", "out of memory");
    return 0;
}

/* ------------------------------------------------------------------------ */
/* Roles and bindings.                                                       */

static void h_list(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *items = NULL;

    if (!parse_target(call, arg, &t, resp) || !read_list(t.s, t.k, t.scope, &items, resp))
        return;
    answer_list(call, resp, items);
    json_decref(items);
}

static void h_get(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *obj = NULL;

    if (!parse_target(call, arg, &t, resp) || !read_one(t.s, t.k, t.scope, t.name, &obj, resp))
        return;
    ks_api_json(resp, 200, obj);
    json_decref(obj);
}

static void h_create(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *body = NULL, *made = NULL;
    char path[PATH_MAX_LEN];

    if (!parse_target(call, arg, &t, resp) || (body = body_object(call, resp)) == NULL)
        return;
    if (!prepare_object(&t, body, NULL, resp))
        goto out;
    if (!kube_path(t.k, t.scope, NULL, STRICT, path, sizeof(path))) {
        ks_api_status(resp, 400, "BadRequest", "the path is too long");
        goto out;
    }
    if (!kube_call(t.s, "POST", path, body, &made, resp, NULL))
        goto out;
    await_mirror(t.s, t.k, t.scope, meta_str(body, "name"), rv_of(made));
    ks_info("roles: %s created %s %s%s%s", call->username[0] ? call->username : "anonymous",
            t.k->kind, t.scope ? t.scope : "", t.scope ? "/" : "", meta_str(body, "name"));
    ks_api_json(resp, 201, made ? made : body);
out:
    json_decref(made);
    json_decref(body);
}

/* For a workspace kind, the object on the URL must be in the workspace
 * before it may be changed or deleted (its name alone does not say so). */
static int owned_by_scope(const target *t, ks_api_response *resp)
{
    json_t *cur = NULL;

    if (t->k->scope != SC_WORKSPACE)
        return 1;
    if (!read_one(t->s, t->k, t->scope, t->name, &cur, resp))
        return 0;
    json_decref(cur);
    return 1;
}

/* PUT obj (already prepared) to kube; answer 200 with the result. */
static void put_object(const target *t, const ks_api_call *call, json_t *obj,
                       ks_api_response *resp)
{
    char path[PATH_MAX_LEN];
    json_t *done = NULL;

    if (!kube_path(t->k, t->scope, t->name, STRICT, path, sizeof(path))) {
        ks_api_status(resp, 400, "BadRequest", "the path is too long");
        return;
    }
    if (!kube_call(t->s, "PUT", path, obj, &done, resp, NULL))
        return;
    await_mirror(t->s, t->k, t->scope, t->name, rv_of(done));
    ks_info("roles: %s updated %s %s%s%s", call->username[0] ? call->username : "anonymous",
            t->k->kind, t->scope ? t->scope : "", t->scope ? "/" : "", t->name);
    ks_api_json(resp, 200, done ? done : obj);
    json_decref(done);
}

static void h_update(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *body = NULL;

    if (!parse_target(call, arg, &t, resp) || (body = body_object(call, resp)) == NULL)
        return;
    if (prepare_object(&t, body, t.name, resp) && owned_by_scope(&t, resp))
        put_object(&t, call, body, resp);
    json_decref(body);
}

/* RFC 7386 JSON merge patch of target (stolen; NULL is fine) by patch. */
static json_t *merge_patch(json_t *target_, const json_t *patch)
{
    const char *key;
    json_t *val;

    if (!json_is_object(patch)) {
        json_decref(target_);
        return json_deep_copy(patch);
    }
    if (!json_is_object(target_)) {
        json_decref(target_);
        if ((target_ = json_object()) == NULL)
            return NULL;
    }
    json_object_foreach((json_t *)patch, key, val) {
        if (json_is_null(val)) {
            json_object_del(target_, key);
        } else {
            json_t *m = merge_patch(json_incref(json_object_get(target_, key)), val);
            if (m == NULL || json_object_set_new(target_, key, m) != 0) {
                json_decref(target_);
                return NULL;
            }
        }
    }
    return target_;
}

/* PATCH: application/merge-patch+json (or application/json) only. The
 * patch is merged here into the current object, which is then checked as a
 * PUT body and written with the current resourceVersion, so an invalid
 * result is never written. A patch that names no resourceVersion is retried
 * when another write slipped in between. */
static void h_patch(ks_api_call *call, ks_api_response *resp, void *arg)
{
    const char *ct = ks_api_header(call, "Content-Type");
    target t;
    json_t *patch = NULL, *cur = NULL, *next = NULL;
    char path[PATH_MAX_LEN];
    int pinned;

    if (!parse_target(call, arg, &t, resp))
        return;
    if (ct != NULL && !media_is(ct, "application/merge-patch+json") &&
        !media_is(ct, "application/json")) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "PATCH takes application/merge-patch+json, not %.100s", ct);
        return;
    }
    if ((patch = ks_api_body_object(call, resp)) == NULL)
        return;
    pinned = rv_of(patch) != NULL;
    if (!kube_path(t.k, t.scope, t.name, NULL, path, sizeof(path))) {
        ks_api_status(resp, 400, "BadRequest", "the path is too long");
        goto out;
    }
    for (int attempt = 0;; attempt++) {
        json_decref(cur);
        cur = NULL;
        if (!kube_call(t.s, "GET", path, NULL, &cur, resp, NULL))
            goto out;
        if (t.k->scope == SC_WORKSPACE && strcmp(nz(label_of(cur, WS_LABEL)), t.scope) != 0) {
            ks_api_status(resp, 404, "NotFound", "%s.%s \"%s\" not found in workspace %s",
                          t.k->plural, IAM_GROUP, t.name, t.scope);
            goto out;
        }
        json_decref(next);
        next = merge_patch(json_deep_copy(cur), patch);
        if (next == NULL) {
            ks_api_status(resp, 500, "InternalError", "out of memory");
            goto out;
        }
        if (!json_is_object(next) || !prepare_object(&t, next, t.name, resp)) {
            if (!json_is_object(next))
                ks_api_status(resp, 422, "Invalid", "the patched object is not an object");
            goto out;
        }
        put_object(&t, call, next, resp);
        if (pinned || resp->code != 409 || attempt + 1 >= PATCH_RETRIES)
            goto out;
        reset_response(resp);
    }
out:
    json_decref(next);
    json_decref(cur);
    json_decref(patch);
}

static void h_delete(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    char path[PATH_MAX_LEN], msg[512];

    if (!parse_target(call, arg, &t, resp) || !owned_by_scope(&t, resp))
        return;
    if (!kube_path(t.k, t.scope, t.name, NULL, path, sizeof(path))) {
        ks_api_status(resp, 400, "BadRequest", "the path is too long");
        return;
    }
    if (!kube_call(t.s, "DELETE", path, NULL, NULL, resp, NULL))
        return;
    await_mirror(t.s, t.k, t.scope, t.name, NULL);
    ks_info("roles: %s deleted %s %s%s%s", call->username[0] ? call->username : "anonymous",
            t.k->kind, t.scope ? t.scope : "", t.scope ? "/" : "", t.name);
    snprintf(msg, sizeof(msg), "%s \"%s\" deleted", t.k->kind, t.name);
    answer_success(resp, t.k, t.name, msg);
}

/* ------------------------------------------------------------------------ */
/* Members.                                                                  */

static int binds_user(const json_t *b, const char *user)
{
    size_t i;
    json_t *sub;

    json_array_foreach(json_object_get(b, "subjects"), i, sub) {
        if (strcmp(nz(json_string_value(json_object_get(sub, "kind"))), "User") == 0 &&
            strcmp(nz(json_string_value(json_object_get(sub, "name"))), user) == 0)
            return 1;
    }
    return 0;
}

static const char *role_of(const json_t *b)
{
    return json_string_value(json_object_get(json_object_get(b, "roleRef"), "name"));
}

/* The member as KubeSphere lists it: the User (no password, no
 * last-applied copy that could hold one), or a stub when no User object
 * exists, annotated with the role. New reference. */
static json_t *member_item(iam *s, const mkind *m, const char *user, const char *role)
{
    json_t *u = NULL, *md, *ann, *orig = NULL;

    if (ks_mirror_cache_get(s->mirror, IAM_RES_USERS, "", user, &orig, NULL) == KS_OK) {
        u = json_deep_copy(orig);
        json_decref(orig);
    }
    if (u == NULL)
        u = json_pack("{s:s, s:s, s:{s:s}}", "apiVersion", IAM_API_VERSION, "kind", "User",
                      "metadata", "name", user);
    if (u == NULL)
        return NULL;
    json_object_del(json_object_get(u, "spec"), "password");
    md = meta(u);
    if (!json_is_object(md)) {
        json_object_set_new(u, "metadata", json_pack("{s:s}", "name", user));
        md = meta(u);
    }
    json_object_del(md, "managedFields");
    ann = json_object_get(md, "annotations");
    if (!json_is_object(ann)) {
        json_object_set_new(md, "annotations", json_object());
        ann = json_object_get(md, "annotations");
    }
    json_object_del(ann, "kubectl.kubernetes.io/last-applied-configuration");
    if (ann == NULL || json_object_set_new(ann, m->annotation, json_string(role)) != 0) {
        json_decref(u);
        return NULL;
    }
    return u;
}

/* Members of the scope: user -> the role of their first binding (bindings
 * in name order). Fills *bindings (new array) and *roles (a map whose values
 * point into *bindings). */
static int read_members(const target *t, json_t **bindings, ks_strmap **roles,
                        ks_api_response *resp)
{
    size_t i, j;
    json_t *b, *sub;

    if (!read_list(t->s, t->m->binding, t->scope, bindings, resp))
        return 0;
    if ((*roles = ks_strmap_create(NULL)) == NULL) {
        json_decref(*bindings);
        ks_api_status(resp, 500, "InternalError", "out of memory");
        return 0;
    }
    json_array_foreach(*bindings, i, b) {
        const char *role = role_of(b);
        if (role == NULL)
            continue;
        json_array_foreach(json_object_get(b, "subjects"), j, sub) {
            const char *name = json_string_value(json_object_get(sub, "name"));
            if (strcmp(nz(json_string_value(json_object_get(sub, "kind"))), "User") != 0 ||
                name == NULL || ks_strmap_get(*roles, name) != NULL)
                continue;
            if (ks_strmap_put(*roles, name, (void *)role) != KS_OK) {
                ks_strmap_destroy(*roles);
                json_decref(*bindings);
                ks_api_status(resp, 500, "InternalError", "out of memory");
                return 0;
            }
        }
    }
    return 1;
}

typedef struct {
    iam *s;
    const mkind *m;
    json_t *items;
    int failed;
} member_collect;

static int collect_member(const char *user, void *value, void *arg)
{
    member_collect *c = arg;
    json_t *it = member_item(c->s, c->m, user, value);

    if (it == NULL || json_array_append_new(c->items, it) != 0) {
        c->failed = 1;
        return 1;
    }
    return 0;
}

static void h_members_list(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *bindings = NULL;
    ks_strmap *roles = NULL;
    member_collect c = {0};

    if (!parse_target(call, arg, &t, resp) || !read_members(&t, &bindings, &roles, resp))
        return;
    c.s = t.s;
    c.m = t.m;
    if ((c.items = json_array()) == NULL)
        c.failed = 1;
    else
        ks_strmap_each(roles, collect_member, &c);
    if (c.failed)
        ks_api_status(resp, 500, "InternalError", "out of memory");
    else
        answer_list(call, resp, c.items);
    json_decref(c.items);
    ks_strmap_destroy(roles);
    json_decref(bindings);
}

static void h_member_get(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *bindings = NULL, *it;
    ks_strmap *roles = NULL;
    const char *role;

    if (!parse_target(call, arg, &t, resp) || !read_members(&t, &bindings, &roles, resp))
        return;
    if ((role = ks_strmap_get(roles, t.name)) == NULL) {
        ks_api_status(resp, 404, "NotFound", "user \"%s\" is not a member of %s%s%s", t.name,
                      t.m->scope_word, t.scope ? " " : "", nz(t.scope));
    } else if ((it = member_item(t.s, t.m, t.name, role)) == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
    } else {
        ks_api_json(resp, 200, it);
        json_decref(it);
    }
    ks_strmap_destroy(roles);
    json_decref(bindings);
}

/* Take user out of binding b (read-only): delete b when user is its only
 * subject, else write it back without the user. */
static int unbind(const target *t, const json_t *b, const char *user, ks_api_response *resp)
{
    const rkind *bk = t->m->binding;
    const char *name = meta_str(b, "name");
    char path[PATH_MAX_LEN];
    json_t *copy = NULL, *subs, *sub, *done = NULL;
    size_t i;
    int ok = 0;

    if (name == NULL || !kube_path(bk, t->scope, name, NULL, path, sizeof(path))) {
        ks_api_status(resp, 500, "InternalError", "a %s without a usable name", bk->kind);
        return 0;
    }
    if ((copy = json_deep_copy(b)) == NULL)
        goto nomem;
    subs = json_object_get(copy, "subjects");
    for (i = json_array_size(subs); i-- > 0;) {
        sub = json_array_get(subs, i);
        if (strcmp(nz(json_string_value(json_object_get(sub, "kind"))), "User") == 0 &&
            strcmp(nz(json_string_value(json_object_get(sub, "name"))), user) == 0)
            json_array_remove(subs, i);
    }
    if (json_array_size(subs) == 0) {
        if (!kube_call(t->s, "DELETE", path, NULL, NULL, resp, NULL))
            goto out;
        await_mirror(t->s, bk, t->scope, name, NULL);
    } else {
        if (!kube_path(bk, t->scope, name, STRICT, path, sizeof(path)) ||
            !kube_call(t->s, "PUT", path, copy, &done, resp, NULL))
            goto out;
        await_mirror(t->s, bk, t->scope, name, rv_of(done));
    }
    ok = 1;
    goto out;
nomem:
    ks_api_status(resp, 500, "InternalError", "out of memory");
out:
    json_decref(done);
    json_decref(copy);
    return ok;
}

/* The binding name KubeSphere gives a member: "<user>-<role>". A workspace
 * role named freely (not "<ws>-...") gets the workspace in the name too,
 * since workspace bindings are cluster-scoped and names must not collide
 * between workspaces. */
static int member_binding_name(const target *t, const char *user, const char *role, char *out,
                               size_t cap)
{
    size_t wl = t->scope ? strlen(t->scope) : 0;
    int n;

    if (t->m->scope == SC_WORKSPACE && !(strncmp(role, t->scope, wl) == 0 && role[wl] == '-'))
        n = snprintf(out, cap, "%s-%s-%s", user, t->scope, role);
    else
        n = snprintf(out, cap, "%s-%s", user, role);
    return n > 0 && (size_t)n < cap && dns1123_subdomain(out);
}

/* Make role the user's only role in the scope: unbind the user from every
 * other binding, keep a binding to role that already names the user, else
 * create "<user>-<role>". */
static int set_member_role(const target *t, const char *user, const char *role,
                           ks_api_response *resp)
{
    const rkind *bk = t->m->binding;
    json_t *bindings = NULL, *b, *obj = NULL, *done = NULL;
    char name[256], path[PATH_MAX_LEN];
    size_t i;
    int have = 0, ok = 0;

    if (!member_binding_name(t, user, role, name, sizeof(name))) {
        ks_api_status(resp, 422, "Invalid",
                      "the binding of user %.100s to role %.100s would need a name over 253 "
                      "characters",
                      user, role);
        return 0;
    }
    if (!read_list(t->s, bk, t->scope, &bindings, resp))
        return 0;
    json_array_foreach(bindings, i, b) {
        const char *rk = json_string_value(json_object_get(json_object_get(b, "roleRef"), "kind"));
        if (!binds_user(b, user))
            continue;
        if (strcmp(nz(role_of(b)), role) == 0 &&
            (rk == NULL || rk[0] == '\0' || strcmp(rk, t->m->role->kind) == 0)) {
            have = 1;
            continue;
        }
        if (!unbind(t, b, user, resp))
            goto out;
    }
    if (have) {
        ok = 1;
        goto out;
    }
    obj = json_pack("{s:s, s:s, s:{s:s, s:{}}, s:{s:s, s:s, s:s}, s:[{s:s, s:s, s:s}]}",
                    "apiVersion", IAM_API_VERSION, "kind", bk->kind, "metadata", "name", name,
                    "labels", "roleRef", "apiGroup", IAM_GROUP, "kind", t->m->role->kind, "name",
                    role, "subjects", "apiGroup", IAM_GROUP, "kind", "User", "name", user);
    if (obj == NULL) {
        ks_api_status(resp, 500, "InternalError", "out of memory");
        goto out;
    }
    {
        json_t *md = meta(obj), *labels = json_object_get(md, "labels");
        if (label_value_ok(user))
            json_object_set_new(labels, USER_REF_LABEL, json_string(user));
        if (t->m->scope == SC_WORKSPACE)
            json_object_set_new(labels, WS_LABEL, json_string(t->scope));
        if (t->m->scope == SC_NAMESPACE)
            json_object_set_new(md, "namespace", json_string(t->scope));
    }
    if (!kube_path(bk, t->scope, NULL, STRICT, path, sizeof(path))) {
        ks_api_status(resp, 400, "BadRequest", "the path is too long");
        goto out;
    }
    if (!kube_call(t->s, "POST", path, obj, &done, resp, NULL)) {
        if (resp->code == 409)
            ks_api_status(resp, 409, "AlreadyExists",
                          "%s \"%s\" already exists and does not bind user %s to %s %s", bk->kind,
                          name, user, t->m->role->kind, role);
        goto out;
    }
    await_mirror(t->s, bk, t->scope, name, rv_of(done));
    ok = 1;
out:
    json_decref(done);
    json_decref(obj);
    json_decref(bindings);
    return ok;
}

/* A member entry of a POST or PUT body: {"username": ..., "roleRef": ...}.
 * want: the member named on the URL (PUT), else NULL. */
static int check_member(const target *t, const json_t *e, const char *want, const char **user,
                        const char **role, ks_api_response *resp)
{
    json_t *r = NULL;
    const char *key;
    json_t *v;

    if (!json_is_object(e)) {
        ks_api_status(resp, 400, "BadRequest", "a member must be an object "
                      "{\"username\": ..., \"roleRef\": ...}");
        return 0;
    }
    json_object_foreach((json_t *)e, key, v) {
        if (strcmp(key, "username") != 0 && strcmp(key, "roleRef") != 0) {
            ks_api_status(resp, 400, "BadRequest", "unknown field \"%.64s\" in a member", key);
            return 0;
        }
    }
    *user = json_string_value(json_object_get(e, "username"));
    *role = json_string_value(json_object_get(e, "roleRef"));
    if (want != NULL && *user == NULL && json_object_get(e, "username") == NULL)
        *user = want;
    if (*user == NULL || !dns1123_subdomain(*user)) {
        ks_api_status(resp, 422, "Invalid", "username: %s", *user == NULL
                      ? "Required value" : "not a valid user name (RFC 1123 subdomain)");
        return 0;
    }
    if (want != NULL && strcmp(*user, want) != 0) {
        ks_api_status(resp, 400, "BadRequest",
                      "the username (%.100s) does not match the member on the URL (%.100s)", *user,
                      want);
        return 0;
    }
    if (*role == NULL || !dns1123_subdomain(*role)) {
        ks_api_status(resp, 422, "Invalid", "roleRef: %s", *role == NULL
                      ? "Required value" : "not a valid role name (RFC 1123 subdomain)");
        return 0;
    }
    if (!read_one(t->s, t->m->role, t->scope, *role, &r, resp))
        return 0;
    json_decref(r);
    return 1;
}

/* The body of POST .../members: a JSON array. */
static json_t *body_array(ks_api_call *call, ks_api_response *resp)
{
    const char *ct = ks_api_header(call, "Content-Type");
    json_error_t err;
    json_t *a;

    if (ct != NULL && !media_is(ct, "application/json")) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "the body must be application/json, not %.100s", ct);
        return NULL;
    }
    if (call->req->body.len == 0) {
        ks_api_status(resp, 400, "BadRequest", "the request has no body");
        return NULL;
    }
    a = json_loadb((const char *)call->req->body.data, call->req->body.len,
                   JSON_REJECT_DUPLICATES, &err);
    if (a == NULL) {
        ks_api_status(resp, 400, "BadRequest", "malformed JSON at line %d column %d: %s",
                      err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_array(a) || json_array_size(a) == 0) {
        json_decref(a);
        ks_api_status(resp, 400, "BadRequest",
                      "the body must be a non-empty array of {\"username\", \"roleRef\"}");
        return NULL;
    }
    return a;
}

static void h_members_add(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *body, *e;
    const char *user, *role;
    size_t i;

    if (!parse_target(call, arg, &t, resp) || (body = body_array(call, resp)) == NULL)
        return;
    /* Everything is checked before the first write. */
    json_array_foreach(body, i, e) {
        if (!check_member(&t, e, NULL, &user, &role, resp))
            goto out;
    }
    json_array_foreach(body, i, e) {
        user = json_string_value(json_object_get(e, "username"));
        role = json_string_value(json_object_get(e, "roleRef"));
        if (!set_member_role(&t, user, role, resp))
            goto out;
        ks_info("roles: %s made %s a member of %s%s%s as %s",
                call->username[0] ? call->username : "anonymous", user, t.m->scope_word,
                t.scope ? " " : "", nz(t.scope), role);
    }
    ks_api_json(resp, 200, body);
out:
    json_decref(body);
}

static void h_member_update(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *body;
    const char *user, *role;

    if (!parse_target(call, arg, &t, resp) || (body = body_object(call, resp)) == NULL)
        return;
    if (check_member(&t, body, t.name, &user, &role, resp) &&
        set_member_role(&t, user, role, resp)) {
        json_t *out = json_pack("{s:s, s:s}", "username", user, "roleRef", role);
        ks_info("roles: %s changed the role of %s in %s%s%s to %s",
                call->username[0] ? call->username : "anonymous", user, t.m->scope_word,
                t.scope ? " " : "", nz(t.scope), role);
        ks_api_json(resp, 200, out);
        json_decref(out);
    }
    json_decref(body);
}

static void h_member_delete(ks_api_call *call, ks_api_response *resp, void *arg)
{
    target t;
    json_t *bindings = NULL, *b;
    size_t i, n = 0;
    char msg[512];

    if (!parse_target(call, arg, &t, resp) ||
        !read_list(t.s, t.m->binding, t.scope, &bindings, resp))
        return;
    json_array_foreach(bindings, i, b) {
        if (!binds_user(b, t.name))
            continue;
        if (!unbind(&t, b, t.name, resp))
            goto out;
        n++;
    }
    if (n == 0) {
        ks_api_status(resp, 404, "NotFound", "user \"%s\" is not a member of %s%s%s", t.name,
                      t.m->scope_word, t.scope ? " " : "", nz(t.scope));
        goto out;
    }
    ks_info("roles: %s removed %s from %s%s%s", call->username[0] ? call->username : "anonymous",
            t.name, t.m->scope_word, t.scope ? " " : "", nz(t.scope));
    snprintf(msg, sizeof(msg), "user \"%s\" removed from %s%s%s (%zu binding%s)", t.name,
             t.m->scope_word, t.scope ? " " : "", nz(t.scope), n, n == 1 ? "" : "s");
    answer_success(resp, t.m->binding, t.name, msg);
out:
    json_decref(bindings);
}

/* ------------------------------------------------------------------------ */
/* SubjectAccessReview.                                                      */

static int attr_str(const json_t *attrs, const char *key, const char **out,
                    ks_api_response *resp)
{
    const json_t *v = json_object_get(attrs, key);
    if (v != NULL && !json_is_string(v)) {
        ks_api_status(resp, 422, "Invalid", "spec.%s.%s must be a string",
                      json_object_get(attrs, "path") ? "nonResourceAttributes"
                                                     : "resourceAttributes",
                      key);
        return 0;
    }
    *out = v ? json_string_value(v) : "";
    return 1;
}

static void h_sar(ks_api_call *call, ks_api_response *resp, void *arg)
{
    iam *s = arg;
    json_t *body, *spec, *ra, *nra, *gv, *g, *out = NULL;
    const char *kind, *groups[KS_RBAC_MAX_GROUPS];
    ks_rbac_user user = {0};
    ks_rbac_request r = {0};
    ks_rbac_decision d;
    size_t i;

    if ((body = body_object(call, resp)) == NULL)
        return;
    kind = json_string_value(json_object_get(body, "kind"));
    if (json_object_get(body, "kind") != NULL &&
        (kind == NULL || strcmp(kind, "SubjectAccessReview") != 0)) {
        ks_api_status(resp, 400, "BadRequest", "the object's kind must be SubjectAccessReview");
        goto out;
    }
    spec = json_object_get(body, "spec");
    if (!json_is_object(spec)) {
        ks_api_status(resp, 422, "Invalid", "spec: Required value");
        goto out;
    }
    user.name = json_string_value(json_object_get(spec, "user"));
    if (user.name == NULL || user.name[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "spec.user: Required value");
        goto out;
    }
    gv = json_object_get(spec, "groups");
    if (gv != NULL && !json_is_array(gv)) {
        ks_api_status(resp, 422, "Invalid", "spec.groups must be an array of strings");
        goto out;
    }
    if (json_array_size(gv) > KS_RBAC_MAX_GROUPS) {
        ks_api_status(resp, 422, "Invalid", "spec.groups: more than %d groups",
                      KS_RBAC_MAX_GROUPS);
        goto out;
    }
    json_array_foreach(gv, i, g) {
        if (!json_is_string(g)) {
            ks_api_status(resp, 422, "Invalid", "spec.groups must be an array of strings");
            goto out;
        }
        groups[user.ngroups++] = json_string_value(g);
    }
    user.groups = groups;
    ra = json_object_get(spec, "resourceAttributes");
    nra = json_object_get(spec, "nonResourceAttributes");
    if ((ra != NULL) == (nra != NULL) || (ra && !json_is_object(ra)) ||
        (nra && !json_is_object(nra))) {
        ks_api_status(resp, 422, "Invalid",
                      "exactly one of spec.resourceAttributes and spec.nonResourceAttributes "
                      "must be an object");
        goto out;
    }
    if (ra != NULL) {
        const char *scope = "";
        r.is_resource_request = true;
        if (!attr_str(ra, "namespace", &r.namespace, resp) ||
            !attr_str(ra, "verb", &r.verb, resp) || !attr_str(ra, "group", &r.api_group, resp) ||
            !attr_str(ra, "resource", &r.resource, resp) ||
            !attr_str(ra, "subresource", &r.subresource, resp) ||
            !attr_str(ra, "name", &r.name, resp) ||
            !attr_str(ra, "workspace", &r.workspace, resp) ||
            !attr_str(ra, "scope", &scope, resp))
            goto out;
        if (scope[0] != '\0') {
            if (ks_rbac_scope_parse(scope, &r.scope) != KS_OK) {
                ks_api_status(resp, 422, "Invalid",
                              "spec.resourceAttributes.scope must be Global, Cluster, Workspace "
                              "or Namespace");
                goto out;
            }
        } else if (r.namespace[0] != '\0') {
            r.scope = KS_RBAC_SCOPE_NAMESPACE;
        } else if (r.workspace[0] != '\0') {
            r.scope = KS_RBAC_SCOPE_WORKSPACE;
        } else {
            r.scope = KS_RBAC_SCOPE_CLUSTER;
        }
    } else {
        if (!attr_str(nra, "path", &r.path, resp) || !attr_str(nra, "verb", &r.verb, resp))
            goto out;
        if (r.path[0] == '\0') {
            ks_api_status(resp, 422, "Invalid", "spec.nonResourceAttributes.path: Required value");
            goto out;
        }
    }
    if (r.verb[0] == '\0') {
        ks_api_status(resp, 422, "Invalid", "spec.%s.verb: Required value",
                      ra ? "resourceAttributes" : "nonResourceAttributes");
        goto out;
    }
    if (!ks_mirror_cache_synced(s->mirror) &&
        ks_mirror_cache_wait_synced(s->mirror, 1000) != KS_OK) {
        ks_api_status(resp, 503, "ServiceUnavailable", "iam is not ready: the policy is loading");
        goto out;
    }
    if (iam_authz_decide(s, &user, &r, &d) != KS_OK) {
        ks_api_status(resp, 422, "Invalid", "%s", ks_status_last());
        goto out;
    }
    out = json_pack("{s:s, s:s, s:{s:n}, s:O, s:{s:b, s:s}}", "apiVersion",
                    json_string_value(json_object_get(body, "apiVersion"))
                        ? json_string_value(json_object_get(body, "apiVersion"))
                        : "authorization.k8s.io/v1",
                    "kind", "SubjectAccessReview", "metadata", "creationTimestamp", "spec", spec,
                    "status", "allowed", d.allowed, "reason", d.reason);
    if (out == NULL)
        ks_api_status(resp, 500, "InternalError", "out of memory");
    else
        ks_api_json(resp, 201, out);
out:
    json_decref(out);
    json_decref(body);
}

/* ------------------------------------------------------------------------ */
/* Routes.                                                                   */

#define P IAM_API_PREFIX
#define KIND_ROUTES(base)                                                                  \
    {"GET", base, h_list}, {"POST", base, h_create}, {"GET", base "/{name}", h_get},       \
        {"PUT", base "/{name}", h_update}, {"PATCH", base "/{name}", h_patch},             \
        {"DELETE", base "/{name}", h_delete}
#define MEMBER_ROUTES(base)                                                                \
    {"GET", base, h_members_list}, {"POST", base, h_members_add},                          \
        {"GET", base "/{member}", h_member_get}, {"PUT", base "/{member}", h_member_update}, \
        {"DELETE", base "/{member}", h_member_delete}

static const ks_api_route routes[] = {
    KIND_ROUTES(P "/globalroles"),
    KIND_ROUTES(P "/globalrolebindings"),
    KIND_ROUTES(P "/clusterroles"),
    KIND_ROUTES(P "/clusterrolebindings"),
    KIND_ROUTES(P "/workspaces/{workspace}/workspaceroles"),
    KIND_ROUTES(P "/workspaces/{workspace}/workspacerolebindings"),
    KIND_ROUTES(P "/namespaces/{namespace}/roles"),
    KIND_ROUTES(P "/namespaces/{namespace}/rolebindings"),
    MEMBER_ROUTES(P "/clustermembers"),
    MEMBER_ROUTES(P "/workspaces/{workspace}/workspacemembers"),
    MEMBER_ROUTES(P "/namespaces/{namespace}/namespacemembers"),
    {"POST", P "/subjectaccessreviews", h_sar},
};

ks_status iam_roles_start(iam *s)
{
    static int added;

    (void)s;
    if (added)
        return KS_OK;
    added = 1;
    return iam_api_add_routes(routes, sizeof(routes) / sizeof(routes[0]));
}
