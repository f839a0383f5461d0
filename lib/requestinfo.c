#include "requestinfo.h"

#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* Constant words the fields may point at. */
static const char W_EMPTY[] = "";

/* One path segment: where it is in the raw path and in the decoded store. */
typedef struct {
    uint16_t raw_off, raw_len;
    uint16_t dec_off, dec_len;
} ri_seg;

/* What phase 1 (validate and analyse) hands to phase 2 (write *out). Indexes
 * are segment numbers, -1 when absent. */
typedef struct {
    ri_seg seg[KS_REQUESTINFO_MAX_SEGMENTS];
    int nseg;
    bool trailing_slash;
    char dec[KS_REQUESTINFO_PATH_MAX + 1]; /* decoded segments, each NUL-terminated */
    size_t dec_used;

    int cluster_kw, cluster; /* "clusters" and its name */
    int prefix, group, version, verb_seg, workspace, namespace;
    int parts;               /* first segment of Parts */
    bool resource_request;
    const char *verb;        /* a constant word, or NULL: lower-case the method */
    const char *scope;

    /* from the query */
    bool has_watch, watch;
    const char *field_sel, *label_sel; /* raw (encoded) values, first occurrence */
    size_t field_sel_len, label_sel_len;
    char qname[KS_REQUESTINFO_NAME_MAX + 1];
    char qworkspace[KS_REQUESTINFO_WORKSPACE_MAX + 1];
    bool name_from_query, workspace_from_query;
} ri_parse;

/* Format the message into err and raise it where the error is found. */
#define RI_FAIL(st_, err_, errcap_, ...)                                  \
    (ri_format((err_), (errcap_), __VA_ARGS__),                           \
     KS_FAIL((st_), "request info: %s", (errcap_) ? (err_) : "rejected"))

__attribute__((format(printf, 3, 4))) static void ri_format(char *err, size_t errcap,
                                                            const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
}

static int hexval(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool is_ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* Byte classes: an ordinary byte, an ordinary byte >= 0x80 (the segment
 * needs a UTF-8 check), "%", "/", a byte refused as it stands. The tables
 * spell them _ H P S X. */
enum { C_OK = 0, C_HIGH, C_PCT, C_SLASH, C_BAD };
#define _ C_OK
#define H C_HIGH
#define P C_PCT
#define S C_SLASH
#define X C_BAD

/* The raw path: NUL, controls, space, "\\", "?" and "#" are refused. */
static const unsigned char path_class[256] = {
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, _, _, X, _, P, _, _, _, _, _, _, _, _, _, S,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, X,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, X, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, X,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
    H, H, H, H, H, H, H, H, H, H, H, H, H, H, H, H,
};

/* The raw query: NUL, controls, space, ";" and "#" are refused. */
static const unsigned char query_class[256] = {
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, X, X, X, X, X, X, X, X, X, X, X, X, X, X, X,
    X, _, _, X, _, P, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, X, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, X,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
    _, _, _, _, _, _, _, _, _, _, _, _, _, _, _, _,
};
#undef _
#undef H
#undef P
#undef S
#undef X

/* RFC 9110 token character (a method is a token). */
static bool is_tchar(unsigned char c)
{
    if ((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9'))
        return true;
    return c != '\0' && strchr("!#$%&'*+-.^_`|~", c) != NULL;
}

/* Strict UTF-8 (RFC 3629): no overlong forms, no surrogates, <= U+10FFFF. */
static bool utf8_valid(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        unsigned char c = s[i];
        size_t need;
        unsigned char lo = 0x80, hi = 0xbf;

        if (c < 0x80) {
            i++;
            continue;
        }
        if (c >= 0xc2 && c <= 0xdf) {
            need = 1;
        } else if (c >= 0xe0 && c <= 0xef) {
            need = 2;
            if (c == 0xe0)
                lo = 0xa0;
            else if (c == 0xed)
                hi = 0x9f;
        } else if (c >= 0xf0 && c <= 0xf4) {
            need = 3;
            if (c == 0xf0)
                lo = 0x90;
            else if (c == 0xf4)
                hi = 0x8f;
        } else {
            return false;
        }
        if (n - i - 1 < need)
            return false;
        if (s[i + 1] < lo || s[i + 1] > hi)
            return false;
        for (size_t k = 2; k <= need; k++)
            if (s[i + k] < 0x80 || s[i + k] > 0xbf)
                return false;
        i += need + 1;
    }
    return true;
}

static const char *seg_str(const ri_parse *p, int i)
{
    return p->dec + p->seg[i].dec_off;
}

static bool seg_is(const ri_parse *p, int i, const char *word)
{
    return i >= 0 && i < p->nseg && strcmp(seg_str(p, i), word) == 0;
}

/* Split and decode the path into p->seg / p->dec, refusing every form that
 * could be read two ways. */
static ks_status split_path(ri_parse *p, const char *path, size_t plen, char *err,
                            size_t errcap)
{
    size_t i = 1;

    if (plen > KS_REQUESTINFO_PATH_MAX)
        return RI_FAIL(KS_ERR_TOO_LARGE, err, errcap, "path is %zu bytes, more than %d", plen,
                       KS_REQUESTINFO_PATH_MAX);
    if (plen == 0 || path[0] != '/')
        return RI_FAIL(KS_ERR_INVALID, err, errcap, "path does not begin with \"/\"");

    while (i < plen) {
        size_t start = i, dstart = p->dec_used, o = p->dec_used;
        int segno = p->nseg + 1;
        bool high = false;

        for (; i < plen; i++) {
            unsigned char c = (unsigned char)path[i], k = path_class[c];

            if (k == C_OK) {
                p->dec[o++] = (char)c; /* o < plen <= cap: decoding never grows */
                continue;
            }
            if (k == C_SLASH)
                break;
            if (k == C_HIGH) {
                high = true;
            } else if (k == C_PCT) {
                int hi = i + 2 < plen ? hexval((unsigned char)path[i + 1]) : -1;
                int lo = hi >= 0 ? hexval((unsigned char)path[i + 2]) : -1;

                if (hi < 0 || lo < 0)
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "bad percent escape at byte %zu of the path", i);
                c = (unsigned char)(hi << 4 | lo);
                if (c == '\0')
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "encoded NUL (%%00) at byte %zu of the path", i);
                if (c == '/')
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "encoded slash (%%2F) in path segment %d", segno);
                if (c == '\\')
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "encoded backslash (%%5C) in path segment %d", segno);
                if (c == '%')
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "encoded percent sign (%%25) in path segment %d: "
                                   "double encoding is not accepted",
                                   segno);
                if (is_ctl(c))
                    return RI_FAIL(KS_ERR_INVALID, err, errcap,
                                   "encoded control character at byte %zu of the path", i);
                if (c >= 0x80)
                    high = true;
                i += 2;
            } else if (c == '\0') {
                return RI_FAIL(KS_ERR_INVALID, err, errcap, "NUL byte at byte %zu of the path",
                               i);
            } else if (c == '\\') {
                return RI_FAIL(KS_ERR_INVALID, err, errcap, "backslash at byte %zu of the path",
                               i);
            } else if (c == '?' || c == '#') {
                return RI_FAIL(KS_ERR_INVALID, err, errcap,
                               "\"%c\" at byte %zu of the path (the query is passed apart)", c,
                               i);
            } else {
                return RI_FAIL(KS_ERR_INVALID, err, errcap,
                               "control character or space at byte %zu of the path", i);
            }
            p->dec[o++] = (char)c;
        }
        if (i == start)
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "empty path segment (\"//\") at byte %zu of the path", i);
        if (p->nseg == KS_REQUESTINFO_MAX_SEGMENTS)
            return RI_FAIL(KS_ERR_TOO_LARGE, err, errcap, "path has more than %d segments",
                           KS_REQUESTINFO_MAX_SEGMENTS);
        p->dec[o] = '\0';
        if ((o - dstart == 1 && p->dec[dstart] == '.') ||
            (o - dstart == 2 && p->dec[dstart] == '.' && p->dec[dstart + 1] == '.'))
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "dot segment (\".\" or \"..\", raw or encoded) as path segment %d",
                           segno);
        if (high && !utf8_valid((const unsigned char *)p->dec + dstart, o - dstart))
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "path segment %d is not valid UTF-8 once decoded", segno);
        p->seg[p->nseg] = (ri_seg){(uint16_t)start, (uint16_t)(i - start), (uint16_t)dstart,
                                   (uint16_t)(o - dstart)};
        p->nseg++;
        p->dec_used = o + 1;
        if (i < plen) {
            i++; /* the "/" */
            if (i == plen)
                p->trailing_slash = true;
        }
    }
    return KS_OK;
}

/* Decode a (validated) query value into buf; false if it does not fit. */
static bool query_decode(const char *v, size_t vl, char *buf, size_t cap, size_t *outlen)
{
    size_t o = 0;

    for (size_t k = 0; k < vl; k++) {
        char c = v[k];
        if (c == '%') {
            c = (char)(hexval((unsigned char)v[k + 1]) << 4 | hexval((unsigned char)v[k + 2]));
            k += 2;
        } else if (c == '+') {
            c = ' ';
        }
        if (o + 1 >= cap)
            return false;
        buf[o++] = c;
    }
    buf[o] = '\0';
    *outlen = o;
    return true;
}

/* Go (apimachinery Convert_Slice_string_To_bool, what kube-apiserver
 * applies to ?watch=): true unless the value is "0" or EqualFold(v, "false").
 * "" is true. EqualFold folds ASCII case and U+017F (long s, C5 BF) to "s". */
static bool watch_true(const char *v, size_t vl)
{
    static const char want[] = "false";
    char buf[16];
    size_t n, a = 0, b = 0;

    if (!query_decode(v, vl, buf, sizeof(buf), &n))
        return true; /* too long to be "0" or "false" */
    if (strcmp(buf, "0") == 0)
        return false;
    while (a < n && b < sizeof(want) - 1) {
        unsigned char c = (unsigned char)buf[a];

        if (want[b] == 's' && c == 0xc5 && a + 1 < n && (unsigned char)buf[a + 1] == 0xbf)
            a += 2;
        else if ((c | 0x20) == (unsigned char)want[b])
            a++;
        else
            return true;
        b++;
    }
    return !(a == n && b == sizeof(want) - 1);
}

/* Validate the whole query the way Go's url.ParseQuery reads it (kube-apiserver
 * reads it so), refusing what Go would silently drop or read differently, and
 * note the first value of watch, fieldSelector and labelSelector. */
static ks_status scan_query(ri_parse *p, const char *q, size_t qlen, char *err, size_t errcap)
{
    size_t i = 0;

    if (qlen > KS_REQUESTINFO_QUERY_MAX)
        return RI_FAIL(KS_ERR_TOO_LARGE, err, errcap, "query is %zu bytes, more than %d", qlen,
                       KS_REQUESTINFO_QUERY_MAX);
    for (size_t k = 0; k < qlen; k++) {
        unsigned char c = (unsigned char)q[k];

        if (query_class[c] == C_OK)
            continue;
        if (c == '\0')
            return RI_FAIL(KS_ERR_INVALID, err, errcap, "NUL byte at byte %zu of the query", k);
        if (c == ';' || c == '#')
            return RI_FAIL(KS_ERR_INVALID, err, errcap, "\"%c\" at byte %zu of the query", c,
                           k);
        if (c != '%')
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "control character or space at byte %zu of the query", k);
        {
            int hi = k + 2 < qlen ? hexval((unsigned char)q[k + 1]) : -1;
            int lo = hi >= 0 ? hexval((unsigned char)q[k + 2]) : -1;

            if (hi < 0 || lo < 0)
                return RI_FAIL(KS_ERR_INVALID, err, errcap,
                               "bad percent escape at byte %zu of the query", k);
            if (hi == 0 && lo == 0)
                return RI_FAIL(KS_ERR_INVALID, err, errcap,
                               "encoded NUL (%%00) at byte %zu of the query", k);
            k += 2;
        }
    }

    while (i < qlen) {
        size_t start = i, eq, end;
        char key[16];
        size_t kl;
        const char *v;
        size_t vl;

        while (i < qlen && q[i] != '&')
            i++;
        end = i;
        if (i < qlen)
            i++;
        if (end == start)
            continue;
        for (eq = start; eq < end && q[eq] != '='; eq++)
            ;
        /* a key longer than ours cannot be one of them */
        if (!query_decode(q + start, eq - start, key, sizeof(key), &kl))
            continue;
        v = eq < end ? q + eq + 1 : q + end;
        vl = eq < end ? end - eq - 1 : 0;
        if (strcmp(key, "watch") == 0 && !p->has_watch) {
            p->has_watch = true;
            p->watch = watch_true(v, vl);
        } else if (strcmp(key, "fieldSelector") == 0 && p->field_sel == NULL) {
            p->field_sel = v;
            p->field_sel_len = vl;
        } else if (strcmp(key, "labelSelector") == 0 && p->label_sel == NULL) {
            p->label_sel = v;
            p->label_sel_len = vl;
        }
    }
    return KS_OK;
}

/* Kubernetes' field selector unescaping (fields.UnescapeValue): "\\", "\,"
 * and "\=" stand for themselves, any other "\" is an error, and a bare ","
 * or "=" in a value is an error. Only validity matters here. */
static bool selector_value_valid(const char *s, size_t n)
{
    bool in_slash = false;

    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (in_slash) {
            if (c != '\\' && c != ',' && c != '=')
                return false;
            in_slash = false;
        } else if (c == '\\') {
            in_slash = true;
        } else if (c == ',' || c == '=') {
            return false;
        }
    }
    return !in_slash;
}

/* A name we are willing to authorize as resourceNames: what Kubernetes'
 * path.IsValidPathSegmentName accepts (not "." or "..", no "/" or "%"), and
 * further non-empty, valid UTF-8, no control character, and nothing a field
 * selector would need to escape ("\", ",", "="). */
static bool selector_name_ok(const char *s, size_t n)
{
    if (n == 0 || n > KS_REQUESTINFO_NAME_MAX)
        return false;
    if ((n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return false;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (is_ctl(c) || c == '/' || c == '%' || c == '\\' || c == ',' || c == '=')
            return false;
    }
    return utf8_valid((const unsigned char *)s, n);
}

/* fieldSelector=metadata.name=X (or ==X) names the object of a list or
 * watch, as Kubernetes' RequiresExactMatch("metadata.name"). The whole
 * selector must parse as Kubernetes parses it (fields.ParseSelector: terms
 * split on unescaped ",", each "lhs op rhs" with op the first "!=", "==" or
 * "="); if several terms require metadata.name they must agree. */
static void selector_name(ri_parse *p)
{
    char sel[1024];
    size_t n, start = 0;
    const char *found = NULL;
    size_t found_len = 0;

    if (p->field_sel == NULL ||
        !query_decode(p->field_sel, p->field_sel_len, sel, sizeof(sel), &n))
        return;
    while (start <= n) {
        size_t end = start, op, rhs;
        bool in_slash = false;

        for (; end < n; end++) {
            if (in_slash)
                in_slash = false;
            else if (sel[end] == '\\')
                in_slash = true;
            else if (sel[end] == ',')
                break;
        }
        if (end > start) {
            bool eq_op = false;

            for (op = start; op < end; op++) {
                if (sel[op] == '=' || (sel[op] == '!' && op + 1 < end && sel[op + 1] == '='))
                    break;
            }
            if (op == end)
                return; /* a term without an operator: invalid selector */
            if (sel[op] == '!') {
                rhs = op + 2;
            } else if (op + 1 < end && sel[op + 1] == '=') {
                rhs = op + 2;
                eq_op = true;
            } else {
                rhs = op + 1;
                eq_op = true;
            }
            if (!selector_value_valid(sel + rhs, end - rhs))
                return;
            if (eq_op && op - start == 13 && memcmp(sel + start, "metadata.name", 13) == 0) {
                if (found != NULL &&
                    (found_len != end - rhs || memcmp(found, sel + rhs, found_len) != 0))
                    found_len = (size_t)-1; /* disagreeing terms: no name */
                else if (found == NULL) {
                    found = sel + rhs;
                    found_len = end - rhs;
                }
            }
        }
        start = end + 1;
    }
    if (found != NULL && found_len != (size_t)-1 && selector_name_ok(found, found_len)) {
        memcpy(p->qname, found, found_len);
        p->qname[found_len] = '\0';
        p->name_from_query = true;
    }
}

/* DNS-1123 label: what a workspace name is. */
static bool dns_label(const char *s, size_t n)
{
    if (n == 0 || n > KS_REQUESTINFO_WORKSPACE_MAX)
        return false;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && (c != '-' || i == 0 || i == n - 1))
            return false;
    }
    return true;
}

/* KubeSphere: a watch with labelSelector=kubesphere.io/workspace=W is about
 * workspace W (the console watches the namespaces of a workspace so). We
 * take it only for namespaces, with no workspace or namespace in the path,
 * and W a DNS label (docs/requestinfo.md says why). */
static void selector_workspace(ri_parse *p, const char *resource)
{
    static const char pfx[] = "kubesphere.io/workspace=";
    char sel[128];
    size_t n;

    if (p->label_sel == NULL || strcmp(resource, "namespaces") != 0 || p->namespace >= 0 ||
        p->workspace >= 0 ||
        !query_decode(p->label_sel, p->label_sel_len, sel, sizeof(sel), &n))
        return;
    if (n <= sizeof(pfx) - 1 || memcmp(sel, pfx, sizeof(pfx) - 1) != 0 ||
        !dns_label(sel + sizeof(pfx) - 1, n - (sizeof(pfx) - 1)))
        return;
    memcpy(p->qworkspace, sel + sizeof(pfx) - 1, n - (sizeof(pfx) - 1) + 1);
    p->workspace_from_query = true;
}

/* KubeSphere's GlobalResources (ks-apiserver buildHandlerChain, v4). */
static bool global_resource(const char *group, const char *resource)
{
    static const struct {
        const char *group, *resource;
    } table[] = {
        {"iam.kubesphere.io", "users"},
        {"iam.kubesphere.io", "globalroles"},
        {"iam.kubesphere.io", "globalrolebindings"},
        {"tenant.kubesphere.io", "workspaces"},
        {"tenant.kubesphere.io", "clusters"},
        {"cluster.kubesphere.io", "clusters"},
        {"cluster.kubesphere.io", "labels"},
        {"resources.kubesphere.io", "clusters"},
        {"resources.kubesphere.io", "labels"},
    };

    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strcmp(table[i].group, group) == 0 && strcmp(table[i].resource, resource) == 0)
            return true;
    return false;
}

static const char *method_verb(const char *m, size_t mlen)
{
    static const struct {
        const char *method, *verb;
    } table[] = {
        {"GET", "get"}, {"HEAD", "get"}, {"POST", "create"}, {"PUT", "update"},
        {"PATCH", "patch"}, {"DELETE", "delete"},
    };

    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strlen(table[i].method) == mlen && memcmp(table[i].method, m, mlen) == 0)
            return table[i].verb;
    return W_EMPTY;
}

static const char *nonresource_verb(const char *m, size_t mlen)
{
    static const struct {
        const char *method, *verb;
    } table[] = {
        {"GET", "get"},         {"HEAD", "head"},       {"POST", "post"},
        {"PUT", "put"},         {"PATCH", "patch"},     {"DELETE", "delete"},
        {"OPTIONS", "options"}, {"CONNECT", "connect"}, {"TRACE", "trace"},
    };

    for (size_t i = 0; i < sizeof(table) / sizeof(table[0]); i++)
        if (strlen(table[i].method) == mlen && memcmp(table[i].method, m, mlen) == 0)
            return table[i].verb;
    return NULL; /* lower-case the method itself */
}

/* KubeSphere's grammar over the decoded segments. */
static ks_status analyse(ri_parse *p, const char *method, size_t mlen, char *err, size_t errcap)
{
    int k = 0, n = p->nseg;
    bool grouped;

    if (n >= 3 && seg_is(p, 0, "clusters")) {
        p->cluster_kw = 0;
        p->cluster = 1;
        k = 2;
    }
    if (!(seg_is(p, k, "api") || seg_is(p, k, "apis") || seg_is(p, k, "kapis") ||
          seg_is(p, k, "kapi")))
        return KS_OK; /* non-resource */
    p->prefix = k++;
    /* legacy /(api|apis|kapis|kapi)/clusters/{c}/... */
    if (seg_is(p, k, "clusters") && k + 1 < n) {
        if (p->cluster >= 0)
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "the cluster is named twice (/clusters/{c}/%s/clusters/{c})",
                           seg_str(p, p->prefix));
        p->cluster_kw = k;
        p->cluster = k + 1;
        k += 2;
    }
    grouped = seg_is(p, p->prefix, "apis") || seg_is(p, p->prefix, "kapis");
    if (n - k < (grouped ? 3 : 2))
        return KS_OK; /* discovery: /apis, /apis/{g}, /apis/{g}/{v}, /api/{v} */

    p->resource_request = true;
    if (grouped)
        p->group = k++;
    p->version = k++;
    if (seg_is(p, k, "watch") || seg_is(p, k, "proxy")) {
        if (n - k < 2)
            return RI_FAIL(KS_ERR_INVALID, err, errcap,
                           "nothing after the verb \"%s\": cannot tell the resource",
                           seg_str(p, k));
        p->verb_seg = k;
        p->verb = seg_is(p, k, "watch") ? "watch" : "proxy";
        k++;
    } else {
        p->verb = method_verb(method, mlen);
    }
    if (seg_is(p, k, "workspaces") || seg_is(p, k, "workspacetemplates")) {
        /* /workspaces/{ws} alone stays resource "workspaces", name ws (and
         * Workspace scope): KubeSphere moves past it only with more after */
        if (n - k > 1)
            p->workspace = k + 1;
        if (n - k > 2)
            k += 2;
    }
    if (seg_is(p, k, "namespaces") && n - k > 1) {
        p->namespace = k + 1;
        if (n - k > 2 && !seg_is(p, k + 2, "status") && !seg_is(p, k + 2, "finalize"))
            k += 2;
    }
    p->parts = k;
    return KS_OK;
}

/* Join the segments but the cluster ones into buf: "/" before each, and
 * after the last if the path ended so ("/" alone for no segment). Decoded
 * from p->dec, or raw from the path. */
static size_t join(const ri_parse *p, const char *src, bool raw, char *buf)
{
    size_t o = 0;

    for (int i = 0; i < p->nseg; i++) {
        const ri_seg *s = &p->seg[i];
        if (i == p->cluster_kw || i == p->cluster)
            continue;
        buf[o++] = '/';
        memcpy(buf + o, raw ? src + s->raw_off : src + s->dec_off,
               raw ? s->raw_len : s->dec_len);
        o += raw ? s->raw_len : s->dec_len;
    }
    if (o == 0 || p->trailing_slash)
        buf[o++] = '/';
    buf[o] = '\0';
    return o;
}

ks_status ks_requestinfo_parse_n(const char *method, size_t mlen, const char *path, size_t plen,
                                 const char *raw_query, size_t qlen, ks_requestinfo *out,
                                 char *err, size_t errcap)
{
    ri_parse p;
    ks_status st = KS_ERR_INVALID;
    const char *resource = W_EMPTY, *name = W_EMPTY, *verb;

    if (method == NULL || path == NULL || out == NULL || (raw_query == NULL && qlen > 0)) {
        st = RI_FAIL(KS_ERR_INVALID, err, errcap, "NULL argument");
        goto out;
    }
    if (mlen == 0 || mlen > KS_REQUESTINFO_METHOD_MAX) {
        st = RI_FAIL(KS_ERR_INVALID, err, errcap, "method is empty or longer than %d bytes",
                     KS_REQUESTINFO_METHOD_MAX);
        goto out;
    }
    for (size_t i = 0; i < mlen; i++) {
        if (!is_tchar((unsigned char)method[i])) {
            st = RI_FAIL(KS_ERR_INVALID, err, errcap, "method is not an HTTP token");
            goto out;
        }
    }

    p.nseg = 0;
    p.trailing_slash = false;
    p.dec_used = 0;
    p.cluster_kw = p.cluster = p.prefix = p.group = p.version = p.verb_seg = -1;
    p.workspace = p.namespace = -1;
    p.parts = -1;
    p.resource_request = false;
    p.verb = NULL;
    p.scope = W_EMPTY;
    p.has_watch = p.watch = false;
    p.field_sel = p.label_sel = NULL;
    p.field_sel_len = p.label_sel_len = 0;
    p.name_from_query = p.workspace_from_query = false;

    if ((st = split_path(&p, path, plen, err, errcap)) != KS_OK)
        goto out;
    if ((st = scan_query(&p, raw_query, qlen, err, errcap)) != KS_OK)
        goto out;
    if ((st = analyse(&p, method, mlen, err, errcap)) != KS_OK)
        goto out;

    if (p.resource_request) {
        int np = p.nseg - p.parts;

        /* parts: resource/name/subresource/...; proxy takes no subresource */
        resource = seg_str(&p, p.parts);
        if (np >= 2)
            name = seg_str(&p, p.parts + 1);
        if (strcmp(p.verb, "get") == 0 && name[0] == '\0') {
            p.verb = p.has_watch && p.watch ? "watch" : "list";
            selector_name(&p);
        } else if (strcmp(p.verb, "delete") == 0 && name[0] == '\0') {
            p.verb = "deletecollection";
        }
        if (strcmp(p.verb, "watch") == 0)
            selector_workspace(&p, resource);

        if (p.workspace_from_query)
            p.scope = "Workspace";
        else if (global_resource(p.group >= 0 ? seg_str(&p, p.group) : W_EMPTY, resource))
            p.scope = p.workspace >= 0 ? "Workspace" : "Global";
        else if (p.namespace >= 0)
            p.scope = "Namespace";
        else if (p.workspace >= 0)
            p.scope = "Workspace";
        else
            p.scope = "Cluster";
    }

    /* Phase 2: nothing can fail from here on. */
    memcpy(out->seg_buf_, p.dec, p.dec_used);
    out->seg_used_ = p.dec_used;
#define SEG(i) ((i) >= 0 ? out->seg_buf_ + p.seg[(i)].dec_off : W_EMPTY)
    join(&p, p.dec, false, out->path_buf_);
    join(&p, path, true, out->raw_buf_);
    out->path = out->path_buf_;
    out->raw_path = out->raw_buf_;
    out->is_resource_request = p.resource_request;
    out->api_prefix = SEG(p.prefix);
    out->is_kube_request = p.prefix >= 0 && (strcmp(out->api_prefix, "api") == 0 ||
                                             strcmp(out->api_prefix, "apis") == 0);
    out->cluster = SEG(p.cluster);
    out->api_group = SEG(p.group);
    out->api_version = SEG(p.version);
    out->devops = W_EMPTY;
    out->resource_scope = p.scope;
    out->nparts = 0;
    out->verb_buf_[0] = out->name_buf_[0] = out->ws_buf_[0] = '\0';
    if (p.resource_request) {
        int np = p.nseg - p.parts;

        for (int i = 0; i < np; i++)
            out->parts[i] = SEG(p.parts + i);
        out->nparts = (size_t)np;
        out->resource = out->parts[0];
        out->name = np >= 2 ? out->parts[1] : W_EMPTY;
        out->subresource = np >= 3 && strcmp(p.verb, "proxy") != 0 ? out->parts[2] : W_EMPTY;
        out->namespace = SEG(p.namespace);
        out->workspace = SEG(p.workspace);
        if (p.name_from_query) {
            memcpy(out->name_buf_, p.qname, strlen(p.qname) + 1);
            out->name = out->name_buf_;
        }
        if (p.workspace_from_query) {
            memcpy(out->ws_buf_, p.qworkspace, strlen(p.qworkspace) + 1);
            out->workspace = out->ws_buf_;
        }
        out->verb = p.verb;
    } else {
        out->resource = out->name = out->subresource = W_EMPTY;
        out->namespace = out->workspace = W_EMPTY;
        verb = nonresource_verb(method, mlen);
        if (verb == NULL) {
            for (size_t i = 0; i < mlen; i++) {
                char c = method[i];
                out->verb_buf_[i] = c >= 'A' && c <= 'Z' ? (char)(c + ('a' - 'A')) : c;
            }
            out->verb_buf_[mlen] = '\0';
            verb = out->verb_buf_;
        }
        out->verb = verb;
    }
#undef SEG
    st = KS_OK;
out:
    return st;
}

ks_status ks_requestinfo_parse(const char *method, const char *path, const char *raw_query,
                               ks_requestinfo *out, char *err, size_t errcap)
{
    /* strnlen with cap + 1: an overlong input is seen as such without
     * scanning all of it */
    size_t mlen = method ? strnlen(method, KS_REQUESTINFO_METHOD_MAX + 1) : 0;
    size_t plen = path ? strnlen(path, KS_REQUESTINFO_PATH_MAX + 1) : 0;
    size_t qlen = raw_query ? strnlen(raw_query, KS_REQUESTINFO_QUERY_MAX + 1) : 0;

    return ks_requestinfo_parse_n(method, mlen, path, plen, raw_query, qlen, out, err, errcap);
}

/* Rebase a field of src onto dst if it points into src. */
static const char *rebase(const ks_requestinfo *dst, const ks_requestinfo *src, const char *s)
{
    uintptr_t a = (uintptr_t)(const void *)src, b = a + sizeof(*src), x = (uintptr_t)s;

    if (x >= a && x < b)
        return (const char *)dst + (x - a);
    return s;
}

void ks_requestinfo_copy(ks_requestinfo *dst, const ks_requestinfo *src)
{
    dst->is_resource_request = src->is_resource_request;
    dst->is_kube_request = src->is_kube_request;
    dst->seg_used_ = src->seg_used_;
    memcpy(dst->seg_buf_, src->seg_buf_, src->seg_used_);
    memcpy(dst->path_buf_, src->path_buf_, strlen(src->path_buf_) + 1);
    memcpy(dst->raw_buf_, src->raw_buf_, strlen(src->raw_buf_) + 1);
    memcpy(dst->verb_buf_, src->verb_buf_, strlen(src->verb_buf_) + 1);
    memcpy(dst->name_buf_, src->name_buf_, strlen(src->name_buf_) + 1);
    memcpy(dst->ws_buf_, src->ws_buf_, strlen(src->ws_buf_) + 1);
    dst->path = rebase(dst, src, src->path);
    dst->raw_path = rebase(dst, src, src->raw_path);
    dst->verb = rebase(dst, src, src->verb);
    dst->api_prefix = rebase(dst, src, src->api_prefix);
    dst->api_group = rebase(dst, src, src->api_group);
    dst->api_version = rebase(dst, src, src->api_version);
    dst->namespace = rebase(dst, src, src->namespace);
    dst->resource = rebase(dst, src, src->resource);
    dst->subresource = rebase(dst, src, src->subresource);
    dst->name = rebase(dst, src, src->name);
    dst->workspace = rebase(dst, src, src->workspace);
    dst->cluster = rebase(dst, src, src->cluster);
    dst->devops = rebase(dst, src, src->devops);
    dst->resource_scope = rebase(dst, src, src->resource_scope);
    dst->nparts = src->nparts;
    for (size_t i = 0; i < src->nparts; i++)
        dst->parts[i] = rebase(dst, src, src->parts[i]);
}

void ks_requestinfo_to_proto(const ks_requestinfo *ri, Kscore__V1__RequestInfo *pb)
{
    kscore__v1__request_info__init(pb);
    /* protobuf-c's fields are char * but packing never writes through them */
    pb->is_resource_request = ri->is_resource_request;
    pb->path = (char *)ri->path;
    pb->verb = (char *)ri->verb;
    pb->api_prefix = (char *)ri->api_prefix;
    pb->api_group = (char *)ri->api_group;
    pb->api_version = (char *)ri->api_version;
    pb->namespace_ = (char *)ri->namespace;
    pb->resource = (char *)ri->resource;
    pb->subresource = (char *)ri->subresource;
    pb->name = (char *)ri->name;
    pb->n_parts = ri->nparts;
    pb->parts = ri->nparts ? (char **)ri->parts : NULL;
    pb->workspace = (char *)ri->workspace;
    pb->cluster = (char *)ri->cluster;
    pb->devops = (char *)ri->devops;
    pb->resource_scope = (char *)ri->resource_scope;
    pb->is_kube_request = ri->is_kube_request;
}

int ks_requestinfo_http_code(ks_status st)
{
    switch (st) {
    case KS_OK:
        return 200;
    case KS_ERR_INVALID:
        return 400;
    case KS_ERR_TOO_LARGE:
        return 414;
    default:
        return 500;
    }
}
