/* libFuzzer target: lib/requestinfo.c (scripts/fuzz.sh builds and runs it;
 * tests/fuzz/README.md).
 *
 * Input: one byte choosing the size of the error buffer, then
 * "method\npath\nquery" (the query is everything after the second newline;
 * missing parts are empty). Besides the sanitizers, every run checks:
 *   - determinism: two parses agree on status, message and every field;
 *   - failure: only KS_ERR_INVALID or KS_ERR_TOO_LARGE, a terminated
 *     non-empty message within errcap, the output struct untouched; and an
 *     independent naive scan of the input agrees: whatever it finds wrong
 *     (dot or empty segment, bad escape, NUL, control, encoded "/", "\" or
 *     "%", invalid UTF-8, caps) must be refused, and what it finds clean may
 *     only fail for a grammar reason;
 *   - success: every string NUL-terminated within its cap; verb, prefix and
 *     scope from their fixed sets; every field taken from the path equal to
 *     one of the naively decoded segments (a name or workspace from the
 *     query found in the decoded query); path and raw_path equal to the
 *     input minus the cluster segments; parts consistent with
 *     resource/name/subresource; ks_requestinfo_copy and a protobuf
 *     pack/unpack round trip give the same fields. */
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "requestinfo.h"

#define CHECK(cond)                                                                       \
    do {                                                                                  \
        if (!(cond)) {                                                                    \
            fprintf(stderr, "fuzz_requestinfo: check failed at line %d: %s\n", __LINE__, \
                    #cond);                                                               \
            abort();                                                                      \
        }                                                                                 \
    } while (0)

/* The naive view of the path: segments decoded with no judgement. */
typedef struct {
    int nseg;
    char dec[KS_REQUESTINFO_PATH_MAX * 2 + 2]; /* decoded segments, NUL-separated */
    size_t off[KS_REQUESTINFO_PATH_MAX + 1];   /* of each decoded segment in dec */
    size_t raw_off[KS_REQUESTINFO_PATH_MAX + 1], raw_len[KS_REQUESTINFO_PATH_MAX + 1];
    bool trailing;                             /* the path ends in "/" (and is not "/") */
    bool bad;                                  /* something a strict parser must refuse */
} naive;

static int hexv(unsigned char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

static bool ctl(unsigned char c)
{
    return c < 0x20 || c == 0x7f;
}

/* A slow, obviously-correct UTF-8 check by code point. */
static bool utf8_ok(const unsigned char *s, size_t n)
{
    size_t i = 0;

    while (i < n) {
        uint32_t cp;
        size_t len;

        if (s[i] < 0x80) {
            i++;
            continue;
        } else if ((s[i] & 0xe0) == 0xc0) {
            len = 2;
            cp = s[i] & 0x1f;
        } else if ((s[i] & 0xf0) == 0xe0) {
            len = 3;
            cp = s[i] & 0x0f;
        } else if ((s[i] & 0xf8) == 0xf0) {
            len = 4;
            cp = s[i] & 0x07;
        } else {
            return false;
        }
        if (i + len > n)
            return false;
        for (size_t k = 1; k < len; k++) {
            if ((s[i + k] & 0xc0) != 0x80)
                return false;
            cp = cp << 6 | (s[i + k] & 0x3f);
        }
        if ((len == 2 && cp < 0x80) || (len == 3 && cp < 0x800) || (len == 4 && cp < 0x10000) ||
            cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff))
            return false;
        i += len;
    }
    return true;
}

static void naive_scan(naive *nv, const char *p, size_t n)
{
    size_t i = 1, o = 0;

    nv->nseg = 0;
    nv->trailing = false;
    nv->bad = n == 0 || p[0] != '/' || n > KS_REQUESTINFO_PATH_MAX;
    if (n == 0 || p[0] != '/' || n > KS_REQUESTINFO_PATH_MAX)
        return;
    while (i < n) {
        size_t start = o, rstart = i;

        while (i < n && p[i] != '/') {
            unsigned char c = (unsigned char)p[i];
            if (c == '%') {
                int h = i + 2 < n ? hexv((unsigned char)p[i + 1]) : -1;
                int l = h >= 0 ? hexv((unsigned char)p[i + 2]) : -1;
                if (h < 0 || l < 0) {
                    nv->bad = true;
                    return;
                }
                c = (unsigned char)(h * 16 + l);
                if (c == '/' || c == '\\' || c == '%' || c == 0 || ctl(c))
                    nv->bad = true;
                i += 3;
            } else {
                if (c == 0 || ctl(c) || c == ' ' || c == '\\' || c == '?' || c == '#')
                    nv->bad = true;
                i++;
            }
            nv->dec[o++] = (char)c;
        }
        nv->dec[o] = '\0';
        if (o == start || strcmp(nv->dec + start, ".") == 0 ||
            strcmp(nv->dec + start, "..") == 0 ||
            !utf8_ok((const unsigned char *)nv->dec + start, o - start))
            nv->bad = true;
        nv->raw_off[nv->nseg] = rstart;
        nv->raw_len[nv->nseg] = i - rstart;
        nv->off[nv->nseg++] = start;
        o++;
        if (i < n && ++i == n)
            nv->trailing = true; /* a final "/" is not a segment */
    }
    if (nv->nseg > KS_REQUESTINFO_MAX_SEGMENTS)
        nv->bad = true;
}

static bool naive_query_bad(const char *q, size_t n)
{
    if (n > KS_REQUESTINFO_QUERY_MAX)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)q[i];
        if (c == 0 || ctl(c) || c == ' ' || c == ';' || c == '#')
            return true;
        if (c == '%') {
            if (i + 2 >= n || hexv((unsigned char)q[i + 1]) < 0 ||
                hexv((unsigned char)q[i + 2]) < 0)
                return true;
            if (q[i + 1] == '0' && q[i + 2] == '0')
                return true;
        }
    }
    return false;
}

static bool naive_method_bad(const char *m, size_t n)
{
    if (n == 0 || n > KS_REQUESTINFO_METHOD_MAX)
        return true;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)m[i];
        bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        if (!alnum && (c == 0 || strchr("!#$%&'*+-.^_`|~", c) == NULL))
            return true;
    }
    return false;
}

static bool is_naive_segment(const naive *nv, const char *s)
{
    for (int i = 0; i < nv->nseg; i++)
        if (strcmp(nv->dec + nv->off[i], s) == 0)
            return true;
    return false;
}

static bool one_of(const char *s, const char *const *set)
{
    for (; *set; set++)
        if (strcmp(s, *set) == 0)
            return true;
    return false;
}

/* NUL-terminated within cap bytes. */
static size_t bounded(const char *s, size_t cap)
{
    size_t n;

    CHECK(s != NULL);
    n = strnlen(s, cap + 1);
    CHECK(n <= cap);
    return n;
}

/* A field cut from the path: a whole decoded segment, so never "/" inside,
 * never "." or "..", valid UTF-8, no control character. */
static void check_segment_field(const naive *nv, const char *s, bool may_be_empty)
{
    size_t n = bounded(s, KS_REQUESTINFO_PATH_MAX);

    if (n == 0) {
        CHECK(may_be_empty);
        return;
    }
    CHECK(is_naive_segment(nv, s));
    CHECK(strchr(s, '/') == NULL);
    CHECK(strcmp(s, ".") != 0 && strcmp(s, "..") != 0);
    CHECK(utf8_ok((const unsigned char *)s, n));
    for (size_t i = 0; i < n; i++)
        CHECK(!ctl((unsigned char)s[i]));
}

/* Percent-decode a query naively ('+' is a space), for substring checks. */
static size_t decode_query(const char *q, size_t n, char *out)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        if (q[i] == '%' && i + 2 < n && hexv((unsigned char)q[i + 1]) >= 0 &&
            hexv((unsigned char)q[i + 2]) >= 0) {
            out[o++] = (char)(hexv((unsigned char)q[i + 1]) * 16 + hexv((unsigned char)q[i + 2]));
            i += 2;
        } else {
            out[o++] = q[i] == '+' ? ' ' : q[i];
        }
    }
    out[o] = '\0';
    return o;
}

/* Does the decoded query hold prefix immediately followed by value? */
static bool query_has(const char *dq, const char *prefix, const char *value)
{
    size_t pl = strlen(prefix), vl = strlen(value);

    for (const char *s = strstr(dq, prefix); s; s = strstr(s + 1, prefix))
        if (strncmp(s + pl, value, vl) == 0)
            return true;
    return false;
}

static void same_fields(const ks_requestinfo *a, const ks_requestinfo *b)
{
    CHECK(a->is_resource_request == b->is_resource_request);
    CHECK(a->is_kube_request == b->is_kube_request);
    CHECK(strcmp(a->path, b->path) == 0);
    CHECK(strcmp(a->raw_path, b->raw_path) == 0);
    CHECK(strcmp(a->verb, b->verb) == 0);
    CHECK(strcmp(a->api_prefix, b->api_prefix) == 0);
    CHECK(strcmp(a->api_group, b->api_group) == 0);
    CHECK(strcmp(a->api_version, b->api_version) == 0);
    CHECK(strcmp(a->namespace, b->namespace) == 0);
    CHECK(strcmp(a->resource, b->resource) == 0);
    CHECK(strcmp(a->subresource, b->subresource) == 0);
    CHECK(strcmp(a->name, b->name) == 0);
    CHECK(strcmp(a->workspace, b->workspace) == 0);
    CHECK(strcmp(a->cluster, b->cluster) == 0);
    CHECK(strcmp(a->devops, b->devops) == 0);
    CHECK(strcmp(a->resource_scope, b->resource_scope) == 0);
    CHECK(a->nparts == b->nparts);
    for (size_t i = 0; i < a->nparts; i++)
        CHECK(strcmp(a->parts[i], b->parts[i]) == 0);
}

static bool points_into(const void *p, const ks_requestinfo *ri)
{
    uintptr_t x = (uintptr_t)p, a = (uintptr_t)(const void *)ri;

    return x >= a && x < a + sizeof(*ri);
}

/* out (a.path or a.raw_path) must be the input's segments, decoded or raw,
 * minus "clusters/{cluster}" either first or right after the prefix, with
 * the same trailing "/" ("/" alone when no segment is left). */
static void check_path(const naive *nv, const char *in, bool raw, const char *out,
                       const ks_requestinfo *ri)
{
    int skip = -1, k = 0;
    const char *s = out;

    if (ri->cluster[0] != '\0') {
        for (int r = 0; r <= 1 && skip < 0; r++)
            if (r + 1 < nv->nseg && strcmp(nv->dec + nv->off[r], "clusters") == 0 &&
                strcmp(nv->dec + nv->off[r + 1], ri->cluster) == 0 &&
                (r == 0 || strcmp(nv->dec + nv->off[0], ri->api_prefix) == 0))
                skip = r;
        CHECK(skip >= 0);
        /* both forms may fit ("/clusters/c/clusters/c/..." cannot: refused
         * or non-resource with the first pair taken); prefer the first as
         * the parser does */
    }
    CHECK(s[0] == '/');
    for (int i = 0; i < nv->nseg; i++) {
        const char *want = raw ? in + nv->raw_off[i] : nv->dec + nv->off[i];
        size_t wl = raw ? nv->raw_len[i] : strlen(want);

        if (skip >= 0 && (i == skip || i == skip + 1))
            continue;
        CHECK(*s == '/');
        s++;
        CHECK(strncmp(s, want, wl) == 0 && (s[wl] == '/' || s[wl] == '\0'));
        s += wl;
        k++;
    }
    if (k == 0 || nv->trailing)
        CHECK(strcmp(s, "/") == 0);
    else
        CHECK(*s == '\0');
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    static ks_requestinfo a, b, c, pristine;
    static naive nv;
    static char dq[KS_REQUESTINFO_QUERY_MAX + 1];
    static const char *const resource_verbs[] = {
        "", "get", "list", "watch", "create", "update", "patch", "delete", "deletecollection",
        "proxy", NULL};
    static const char *const prefixes[] = {"", "api", "apis", "kapis", "kapi", NULL};
    static const char *const scopes[] = {"Global", "Cluster", "Workspace", "Namespace", NULL};
    static bool init;
    const char *s, *m, *p, *q, *nl;
    size_t n, ml, pl, ql, errcap;
    char err1[80], err2[80];
    ks_status st1, st2;

    if (!init) {
        memset(&pristine, 0x5a, sizeof(pristine));
        init = true;
    }
    if (size < 1)
        return 0;
    errcap = data[0] % sizeof(err1);
    s = (const char *)data + 1;
    n = size - 1;
    m = s;
    nl = memchr(s, '\n', n);
    ml = nl ? (size_t)(nl - s) : n;
    p = nl ? nl + 1 : s + n;
    n -= nl ? ml + 1 : ml;
    nl = memchr(p, '\n', n);
    pl = nl ? (size_t)(nl - p) : n;
    q = nl ? nl + 1 : p + n;
    ql = nl ? n - pl - 1 : 0;

    memcpy(&a, &pristine, sizeof(a));
    memset(err1, 0x5a, sizeof(err1));
    memset(err2, 0x5a, sizeof(err2));
    st1 = ks_requestinfo_parse_n(m, ml, p, pl, q, ql, &a, err1, errcap);
    st2 = ks_requestinfo_parse_n(m, ml, p, pl, q, ql, &b, err2, errcap);
    CHECK(st1 == st2);
    naive_scan(&nv, p, pl);

    if (st1 != KS_OK) {
        CHECK(st1 == KS_ERR_INVALID || st1 == KS_ERR_TOO_LARGE);
        CHECK(memcmp(&a, &pristine, sizeof(a)) == 0);
        if (errcap > 0) {
            size_t el = strnlen(err1, errcap);
            CHECK(el < errcap);
            CHECK(el > 0 || errcap == 1);
            CHECK(strcmp(err1, err2) == 0);
            /* what the naive scan finds clean fails only on the grammar */
            if (!nv.bad && !naive_query_bad(q, ql) && !naive_method_bad(m, ml) && errcap > 40)
                CHECK(strstr(err1, "verb") != NULL || strstr(err1, "cluster") != NULL);
        }
        return 0;
    }

    /* accepted: the naive scans must agree that nothing was wrong */
    CHECK(!nv.bad);
    CHECK(!naive_query_bad(q, ql));
    CHECK(!naive_method_bad(m, ml));
    same_fields(&a, &b);

    /* shapes and fixed words */
    CHECK(bounded(a.path, KS_REQUESTINFO_PATH_MAX + 1) > 0 && a.path[0] == '/');
    CHECK(bounded(a.raw_path, KS_REQUESTINFO_PATH_MAX + 1) > 0 && a.raw_path[0] == '/');
    CHECK(one_of(a.api_prefix, prefixes));
    CHECK(a.is_kube_request ==
          (strcmp(a.api_prefix, "api") == 0 || strcmp(a.api_prefix, "apis") == 0));
    CHECK(strcmp(a.devops, "") == 0);
    check_segment_field(&nv, a.api_prefix, true);
    check_segment_field(&nv, a.cluster, true);
    check_path(&nv, p, true, a.raw_path, &a);
    check_path(&nv, p, false, a.path, &a);

    if (!a.is_resource_request) {
        size_t vl = bounded(a.verb, KS_REQUESTINFO_METHOD_MAX);
        CHECK(vl == ml);
        for (size_t i = 0; i < ml; i++) {
            char want = m[i] >= 'A' && m[i] <= 'Z' ? (char)(m[i] + 32) : m[i];
            CHECK(a.verb[i] == want);
        }
        CHECK(a.api_group[0] == '\0' && a.api_version[0] == '\0' && a.namespace[0] == '\0');
        CHECK(a.resource[0] == '\0' && a.subresource[0] == '\0' && a.name[0] == '\0');
        CHECK(a.workspace[0] == '\0' && a.resource_scope[0] == '\0' && a.nparts == 0);
    } else {
        bool grouped = strcmp(a.api_prefix, "apis") == 0 || strcmp(a.api_prefix, "kapis") == 0;

        CHECK(one_of(a.verb, resource_verbs));
        CHECK(one_of(a.resource_scope, scopes));
        CHECK(a.api_prefix[0] != '\0');
        CHECK((a.api_group[0] != '\0') == grouped);
        check_segment_field(&nv, a.api_group, !grouped);
        check_segment_field(&nv, a.api_version, false);
        check_segment_field(&nv, a.namespace, true);
        check_segment_field(&nv, a.resource, false);
        check_segment_field(&nv, a.subresource, true);
        CHECK(a.nparts >= 1 && a.nparts <= KS_REQUESTINFO_MAX_SEGMENTS);
        for (size_t i = 0; i < a.nparts; i++)
            check_segment_field(&nv, a.parts[i], false);
        CHECK(strcmp(a.parts[0], a.resource) == 0);
        if (a.nparts >= 2)
            CHECK(strcmp(a.parts[1], a.name) == 0);
        if (a.nparts >= 3 && strcmp(a.verb, "proxy") != 0)
            CHECK(strcmp(a.parts[2], a.subresource) == 0);
        else
            CHECK(a.subresource[0] == '\0');
        if (a.name[0] != '\0' && (a.nparts < 2 || strcmp(a.parts[1], a.name) != 0)) {
            /* from fieldSelector, only for list and watch */
            CHECK(a.nparts == 1);
            CHECK(strcmp(a.verb, "list") == 0 || strcmp(a.verb, "watch") == 0);
            bounded(a.name, KS_REQUESTINFO_NAME_MAX);
            decode_query(q, ql, dq);
            CHECK(query_has(dq, "metadata.name=", a.name) ||
                  query_has(dq, "metadata.name==", a.name));
        }
        /* a get or delete without a name became list, watch or deletecollection */
        if (strcmp(a.verb, "get") == 0 || strcmp(a.verb, "delete") == 0)
            CHECK(a.nparts >= 2);
        if (a.workspace[0] != '\0' && !is_naive_segment(&nv, a.workspace)) {
            CHECK(strcmp(a.verb, "watch") == 0 && strcmp(a.resource, "namespaces") == 0);
            CHECK(strcmp(a.resource_scope, "Workspace") == 0);
            bounded(a.workspace, KS_REQUESTINFO_WORKSPACE_MAX);
            decode_query(q, ql, dq);
            CHECK(query_has(dq, "kubesphere.io/workspace=", a.workspace));
        }
        if (a.namespace[0] != '\0' && strcmp(a.resource_scope, "Global") != 0)
            CHECK(strcmp(a.resource_scope, "Namespace") == 0);
        if (strcmp(a.resource_scope, "Workspace") == 0)
            CHECK(a.workspace[0] != '\0');
    }

    /* a copy is independent of the original */
    ks_requestinfo_copy(&c, &a);
    same_fields(&a, &c);
    CHECK(!points_into(c.path, &a) && !points_into(c.verb, &a) && !points_into(c.name, &a));
    for (size_t i = 0; i < c.nparts; i++)
        CHECK(!points_into(c.parts[i], &a));

    /* the protobuf form carries every field */
    {
        static uint8_t buf[4 * KS_REQUESTINFO_PATH_MAX + 4096];
        Kscore__V1__RequestInfo pb, *back;
        size_t len;

        ks_requestinfo_to_proto(&a, &pb);
        len = kscore__v1__request_info__get_packed_size(&pb);
        CHECK(len <= sizeof(buf));
        CHECK(kscore__v1__request_info__pack(&pb, buf) == len);
        back = kscore__v1__request_info__unpack(NULL, len, buf);
        CHECK(back != NULL);
        CHECK(strcmp(back->path, a.path) == 0 && strcmp(back->verb, a.verb) == 0);
        CHECK(strcmp(back->namespace_, a.namespace) == 0 && strcmp(back->name, a.name) == 0);
        CHECK(strcmp(back->resource_scope, a.resource_scope) == 0);
        CHECK(strcmp(back->cluster, a.cluster) == 0 && strcmp(back->workspace, a.workspace) == 0);
        CHECK(back->n_parts == a.nparts);
        for (size_t i = 0; i < a.nparts; i++)
            CHECK(strcmp(back->parts[i], a.parts[i]) == 0);
        CHECK(back->is_resource_request == a.is_resource_request);
        CHECK(back->is_kube_request == a.is_kube_request);
        kscore__v1__request_info__free_unpacked(back, NULL);
    }
    return 0;
}
