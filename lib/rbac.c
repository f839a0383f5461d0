/* rbac.c: KubeSphere's authorizer over an in-memory, indexed policy store.
 *
 * Layout (docs/rbac.md has the picture):
 *   - every string a rule, binding or label uses is interned once: a
 *     refcounted id (uint32) in an open-addressing table. A request's strings
 *     are looked up, never inserted; a string nobody interned gets NOID and
 *     can then match only "*".
 *   - a role is compiled into rules of id arrays plus flags for "*".
 *   - roles sit in named slots ("role references"); a binding points at the
 *     slot of its roleRef, so a role that arrives, changes or leaves is seen
 *     by its bindings at once, and a missing one is a slot without a role.
 *   - the index maps (subject kind, phase, subject id, scope id) packed in 64
 *     bits to the list of bindings; a decision does one lookup per subject
 *     and phase.
 * Every change runs under the write lock; decisions under the read lock. */
#include "rbac.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "strmap.h"

#define NOID UINT32_MAX
#define MAX_IDS (1u << 29)      /* ids are packed in 29 bits of an index key */
#define LABEL_WORKSPACE "kubesphere.io/workspace"
#define ANONYMOUS "system:anonymous"
#define GROUP_AUTHENTICATED "system:authenticated"
#define GROUP_UNAUTHENTICATED "system:unauthenticated"
#define MAX_MISSING 4           /* bindings with a missing role named in a deny */
#define DEDUP_GROUPS 32         /* dedupe subject lists up to this length */

/* ---- hashing ---- */

static uint64_t mix64(uint64_t k)
{
    k ^= k >> 33;
    k *= 0xff51afd7ed558ccdULL;
    k ^= k >> 33;
    k *= 0xc4ceb9fe1a85ec53ULL;
    k ^= k >> 33;
    return k;
}

#define FNV_INIT 1469598103934665603ULL

static uint64_t fnv(uint64_t h, const char *s, size_t len)
{
    for (size_t i = 0; i < len; i++) {
        h ^= (unsigned char)s[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* ---- interned strings ---- */

typedef struct {
    char *s;       /* NULL: a free entry */
    uint32_t len;
    uint32_t refs; /* for a free entry: the next free id */
    uint64_t hash;
} istr;

typedef struct {
    istr *ent;
    uint32_t nent, capent;
    uint32_t free_head;   /* NOID: none */
    uint32_t *slot;       /* id + 1; 0 empty */
    uint32_t mask;
    uint32_t used;
} intern;

static ks_status intern_init(intern *in)
{
    memset(in, 0, sizeof(*in));
    in->free_head = NOID;
    in->mask = 255;
    in->slot = calloc(in->mask + 1, sizeof(*in->slot));
    return in->slot ? KS_OK : KS_FAIL(KS_ERR_NOMEM, "intern table");
}

static void intern_fini(intern *in)
{
    for (uint32_t i = 0; i < in->nent; i++)
        free(in->ent[i].s);
    free(in->ent);
    free(in->slot);
}

static uint32_t intern_find_h(const intern *in, const char *s, size_t len, uint64_t h)
{
    uint32_t i = (uint32_t)h & in->mask;

    for (;;) {
        uint32_t v = in->slot[i];
        if (v == 0)
            return NOID;
        const istr *e = &in->ent[v - 1];
        if (e->hash == h && e->len == len && memcmp(e->s, s, len) == 0)
            return v - 1;
        i = (i + 1) & in->mask;
    }
}

static uint32_t intern_find(const intern *in, const char *s)
{
    size_t len = strlen(s);
    return intern_find_h(in, s, len, mix64(fnv(FNV_INIT, s, len)));
}

/* The id of "a/b" without building it. */
static uint32_t intern_find2(const intern *in, const char *a, const char *b)
{
    size_t alen = strlen(a), blen = strlen(b), len = alen + 1 + blen;
    uint64_t h = mix64(fnv(fnv(fnv(FNV_INIT, a, alen), "/", 1), b, blen));
    uint32_t i = (uint32_t)h & in->mask;

    for (;;) {
        uint32_t v = in->slot[i];
        if (v == 0)
            return NOID;
        const istr *e = &in->ent[v - 1];
        if (e->hash == h && e->len == len && memcmp(e->s, a, alen) == 0 && e->s[alen] == '/' &&
            memcmp(e->s + alen + 1, b, blen) == 0)
            return v - 1;
        i = (i + 1) & in->mask;
    }
}

static void intern_slot_put(intern *in, uint32_t id)
{
    uint32_t i = (uint32_t)in->ent[id].hash & in->mask;
    while (in->slot[i] != 0)
        i = (i + 1) & in->mask;
    in->slot[i] = id + 1;
}

static int intern_grow(intern *in)
{
    uint32_t ncap = (in->mask + 1) * 2;
    uint32_t *ns = calloc(ncap, sizeof(*ns));

    if (ns == NULL)
        return -1;
    free(in->slot);
    in->slot = ns;
    in->mask = ncap - 1;
    for (uint32_t id = 0; id < in->nent; id++)
        if (in->ent[id].s != NULL)
            intern_slot_put(in, id);
    return 0;
}

/* Take a reference on the string s[0..len); NOID when out of memory. */
static uint32_t intern_ref_n(intern *in, const char *s, size_t len)
{
    uint64_t h = mix64(fnv(FNV_INIT, s, len));
    uint32_t id = intern_find_h(in, s, len, h);
    char *copy;

    if (id != NOID) {
        in->ent[id].refs++;
        return id;
    }
    if (len > UINT32_MAX - 1)
        return NOID;
    if ((uint64_t)(in->used + 1) * 10 > (uint64_t)(in->mask + 1) * 7 && intern_grow(in) != 0)
        return NOID;
    if (in->free_head == NOID && in->nent == in->capent) {
        uint32_t ncap = in->capent ? in->capent * 2 : 256;
        istr *ne;
        if (ncap > MAX_IDS)
            ncap = MAX_IDS;
        if (ncap <= in->capent)
            return NOID;
        ne = realloc(in->ent, (size_t)ncap * sizeof(*ne));
        if (ne == NULL)
            return NOID;
        in->ent = ne;
        in->capent = ncap;
    }
    copy = malloc(len + 1);
    if (copy == NULL)
        return NOID;
    memcpy(copy, s, len);
    copy[len] = '\0';
    if (in->free_head != NOID) {
        id = in->free_head;
        in->free_head = in->ent[id].refs;
    } else {
        id = in->nent++;
    }
    in->ent[id] = (istr){.s = copy, .len = (uint32_t)len, .refs = 1, .hash = h};
    intern_slot_put(in, id);
    in->used++;
    return id;
}

static uint32_t intern_ref(intern *in, const char *s)
{
    return intern_ref_n(in, s, strlen(s));
}

static void intern_unref(intern *in, uint32_t id)
{
    uint32_t i, j;

    if (id == NOID || --in->ent[id].refs > 0)
        return;
    i = (uint32_t)in->ent[id].hash & in->mask;
    while (in->slot[i] != id + 1)
        i = (i + 1) & in->mask;
    /* backward-shift deletion keeps every probe chain unbroken */
    for (j = i;;) {
        j = (j + 1) & in->mask;
        if (in->slot[j] == 0)
            break;
        uint32_t home = (uint32_t)in->ent[in->slot[j] - 1].hash & in->mask;
        if (((j - home) & in->mask) >= ((j - i) & in->mask)) {
            in->slot[i] = in->slot[j];
            i = j;
        }
    }
    in->slot[i] = 0;
    free(in->ent[id].s);
    in->ent[id].s = NULL;
    in->ent[id].refs = in->free_head;
    in->free_head = id;
    in->used--;
}

static const char *intern_str(const intern *in, uint32_t id)
{
    return id == NOID ? "" : in->ent[id].s;
}

/* ---- a map from 64-bit keys to pointers ---- */

#define U64_EMPTY UINT64_MAX

typedef struct {
    uint64_t *keys;
    void **vals;
    uint32_t mask;
    uint32_t n;
} u64map;

static ks_status u64_init(u64map *m)
{
    m->mask = 63;
    m->n = 0;
    m->keys = malloc((m->mask + 1) * sizeof(*m->keys));
    m->vals = calloc(m->mask + 1, sizeof(*m->vals));
    if (m->keys == NULL || m->vals == NULL) {
        free(m->keys);
        free(m->vals);
        return KS_FAIL(KS_ERR_NOMEM, "index");
    }
    for (uint32_t i = 0; i <= m->mask; i++)
        m->keys[i] = U64_EMPTY;
    return KS_OK;
}

static void u64_fini(u64map *m)
{
    free(m->keys);
    free(m->vals);
}

static void *u64_get(const u64map *m, uint64_t k)
{
    uint32_t i = (uint32_t)mix64(k) & m->mask;

    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k)
            return m->vals[i];
        if (m->keys[i] == U64_EMPTY)
            return NULL;
    }
}

/* Make room for extra more keys without a resize. */
static int u64_reserve(u64map *m, uint32_t extra)
{
    uint64_t cap = (uint64_t)m->mask + 1;

    while ((uint64_t)(m->n + extra) * 10 > cap * 7)
        cap *= 2;
    if (cap == (uint64_t)m->mask + 1)
        return 0;
    if (cap > (1ULL << 31))
        return -1;
    uint64_t *nk = malloc(cap * sizeof(*nk));
    void **nv = malloc(cap * sizeof(*nv));
    if (nk == NULL || nv == NULL) {
        free(nk);
        free(nv);
        return -1;
    }
    for (uint64_t i = 0; i < cap; i++)
        nk[i] = U64_EMPTY;
    for (uint32_t i = 0; i <= m->mask; i++) {
        if (m->keys[i] == U64_EMPTY)
            continue;
        uint32_t j = (uint32_t)mix64(m->keys[i]) & (uint32_t)(cap - 1);
        while (nk[j] != U64_EMPTY)
            j = (j + 1) & (uint32_t)(cap - 1);
        nk[j] = m->keys[i];
        nv[j] = m->vals[i];
    }
    free(m->keys);
    free(m->vals);
    m->keys = nk;
    m->vals = nv;
    m->mask = (uint32_t)(cap - 1);
    return 0;
}

/* Insert or replace; the caller reserved room (u64_reserve). */
static void u64_put(u64map *m, uint64_t k, void *v)
{
    uint32_t i = (uint32_t)mix64(k) & m->mask;

    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k) {
            m->vals[i] = v;
            return;
        }
        if (m->keys[i] == U64_EMPTY) {
            m->keys[i] = k;
            m->vals[i] = v;
            m->n++;
            return;
        }
    }
}

static void *u64_take(u64map *m, uint64_t k)
{
    uint32_t i = (uint32_t)mix64(k) & m->mask, j;
    void *v;

    for (;; i = (i + 1) & m->mask) {
        if (m->keys[i] == k)
            break;
        if (m->keys[i] == U64_EMPTY)
            return NULL;
    }
    v = m->vals[i];
    for (j = i;;) {
        j = (j + 1) & m->mask;
        if (m->keys[j] == U64_EMPTY)
            break;
        uint32_t home = (uint32_t)mix64(m->keys[j]) & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->keys[i] = m->keys[j];
            m->vals[i] = m->vals[j];
            i = j;
        }
    }
    m->keys[i] = U64_EMPTY;
    m->vals[i] = NULL;
    m->n--;
    return v;
}

/* ---- compiled roles ---- */

enum {
    RF_VERB_ALL = 1,
    RF_GROUP_ALL = 2,
    RF_RES_ALL = 4,
    RF_URL_ALL = 8,
};

typedef struct {
    const char *s;   /* in the role's string pool */
    uint32_t len;
    bool prefix;     /* the rule ended in '*': match s as a prefix */
} rurl;

typedef struct {
    const uint32_t *verbs, *nrverbs, *groups, *res, *starsub, *names;
    const rurl *urls;
    uint32_t nverbs, nnrverbs, ngroups, nres, nstarsub, nnames, nurls;
    uint32_t flags;
} rule;

typedef struct {
    uint32_t nrules;
    uint32_t nids;
    rule *rules;
    uint32_t *ids;   /* every id the rules use; one reference each */
    rurl *urls;
    char *pool;      /* the URL strings */
} role;

/* Kinds. The order of the binding kinds is the phase order's numbering. */
enum { K_GLOBAL = 0, K_WORKSPACE, K_NAMESPACE, K_CLUSTER, K_COUNT };

static const char *const role_kind_names[K_COUNT] = {"GlobalRole", "WorkspaceRole", "Role",
                                                     "ClusterRole"};
static const char *const binding_kind_names[K_COUNT] = {
    "GlobalRoleBinding", "WorkspaceRoleBinding", "RoleBinding", "ClusterRoleBinding"};

typedef struct {
    role *role;      /* NULL: referenced but missing */
    uint32_t refs;   /* bindings pointing here */
    uint8_t kind;
    char *key;       /* its key in ks_rbac.slots */
} role_slot;

enum { S_USER = 0, S_GROUP = 1 };

typedef struct {
    uint32_t id;
    uint32_t kind;   /* S_USER or S_GROUP */
} bsubj;

typedef struct binding {
    uint8_t kind;          /* K_* */
    uint32_t scope_id;     /* workspace (WRB) or namespace (RB) id; NOID none */
    role_slot *slot;
    char *desc;            /* Kind "name" of RoleKind "role" */
    struct binding *prev, *next; /* all bindings of the kind (the naive scan) */
    uint32_t nsub;
    bsubj sub[];
} binding;

typedef struct {
    uint32_t n, cap;
    binding *b[];
} bvec;

typedef struct {
    uint32_t n;
    uint32_t ids[];
} ugroups;

struct ks_rbac {
    pthread_rwlock_t lock;
    _Atomic uint64_t generation;
    intern in;
    ks_strmap *slots;      /* role key -> role_slot */
    ks_strmap *bindings;   /* binding key -> binding */
    u64map index;          /* subject key -> bvec */
    u64map ns_ws;          /* namespace id -> (uintptr_t) workspace id */
    u64map user_groups;    /* user id -> ugroups */
    binding *all[K_COUNT]; /* heads of the per-kind lists */
    size_t nroles, nrules;
};

static uint64_t index_key(uint32_t skind, uint32_t phase, uint32_t subj, uint32_t scope)
{
    uint64_t hi = ((uint64_t)(skind * 4 + phase) << 29) | subj;
    return (hi << 32) | scope;
}

/* ---- parsing helpers ---- */

static int kind_parse(const char *kind, bool *is_binding)
{
    for (int k = 0; k < K_COUNT; k++) {
        if (strcmp(kind, role_kind_names[k]) == 0) {
            *is_binding = false;
            return k;
        }
        if (strcmp(kind, binding_kind_names[k]) == 0) {
            *is_binding = true;
            return k;
        }
    }
    return -1;
}

/* obj[key] as an array of strings: absent or null is n 0. */
static ks_status str_array(const json_t *obj, const char *key, const json_t **arr, size_t *n)
{
    const json_t *a = json_object_get(obj, key);

    *arr = NULL;
    *n = 0;
    if (a == NULL || json_is_null(a))
        return KS_OK;
    if (!json_is_array(a))
        return KS_FAIL(KS_ERR_INVALID, "%s is not an array", key);
    for (size_t i = 0; i < json_array_size(a); i++)
        if (!json_is_string(json_array_get(a, i)))
            return KS_FAIL(KS_ERR_INVALID, "%s[%zu] is not a string", key, i);
    *arr = a;
    *n = json_array_size(a);
    return KS_OK;
}

static const char *arr_str(const json_t *a, size_t i)
{
    return json_string_value(json_array_get(a, i));
}

typedef struct {
    const char *name, *ns, *workspace;
} meta;

static ks_status meta_parse(const json_t *obj, const char *kind, bool namespaced, meta *m)
{
    const json_t *md, *v, *labels;

    if (!json_is_object(obj))
        return KS_FAIL(KS_ERR_INVALID, "%s: not a JSON object", kind);
    v = json_object_get(obj, "kind");
    if (v != NULL && (!json_is_string(v) || strcmp(json_string_value(v), kind) != 0))
        return KS_FAIL(KS_ERR_INVALID, "object kind is not %s", kind);
    md = json_object_get(obj, "metadata");
    if (!json_is_object(md))
        return KS_FAIL(KS_ERR_INVALID, "%s: no metadata", kind);
    m->name = json_string_value(json_object_get(md, "name"));
    if (m->name == NULL || m->name[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "%s: no metadata.name", kind);
    m->ns = NULL;
    if (namespaced) {
        m->ns = json_string_value(json_object_get(md, "namespace"));
        if (m->ns == NULL || m->ns[0] == '\0')
            return KS_FAIL(KS_ERR_INVALID, "%s %s: no metadata.namespace", kind, m->name);
    }
    m->workspace = NULL;
    labels = json_object_get(md, "labels");
    if (labels != NULL && !json_is_null(labels)) {
        if (!json_is_object(labels))
            return KS_FAIL(KS_ERR_INVALID, "%s %s: labels is not an object", kind, m->name);
        v = json_object_get(labels, LABEL_WORKSPACE);
        if (v != NULL && !json_is_string(v))
            return KS_FAIL(KS_ERR_INVALID, "%s %s: workspace label is not a string", kind,
                           m->name);
        m->workspace = json_string_value(v);
        if (m->workspace != NULL && m->workspace[0] == '\0')
            m->workspace = NULL;
    }
    return KS_OK;
}

/* "<tag>\x1f<ns>\x1f<name>", malloc'd. */
static char *make_key(char tag, const char *ns, const char *name)
{
    size_t nl = ns ? strlen(ns) : 0, ml = strlen(name);
    char *k = malloc(nl + ml + 4);

    if (k == NULL)
        return NULL;
    k[0] = tag;
    k[1] = '\x1f';
    if (nl)
        memcpy(k + 2, ns, nl);
    k[2 + nl] = '\x1f';
    memcpy(k + 3 + nl, name, ml + 1);
    return k;
}

static const char role_tags[K_COUNT] = {'G', 'W', 'R', 'C'};
static const char binding_tags[K_COUNT] = {'g', 'w', 'r', 'c'};

/* ---- role compilation ---- */

static void role_free(intern *in, role *r)
{
    if (r == NULL)
        return;
    for (uint32_t i = 0; i < r->nids; i++)
        intern_unref(in, r->ids[i]);
    free(r->rules);
    free(r->ids);
    free(r->urls);
    free(r->pool);
    free(r);
}

typedef struct {
    const json_t *verbs, *groups, *res, *names, *urls;
    size_t nverbs, ngroups, nres, nnames, nurls;
} rule_src;

static ks_status rule_src_parse(const json_t *j, size_t i, rule_src *s)
{
    ks_status rc;

    if (!json_is_object(j))
        return KS_FAIL(KS_ERR_INVALID, "rules[%zu] is not an object", i);
    if ((rc = str_array(j, "verbs", &s->verbs, &s->nverbs)) ||
        (rc = str_array(j, "apiGroups", &s->groups, &s->ngroups)) ||
        (rc = str_array(j, "resources", &s->res, &s->nres)) ||
        (rc = str_array(j, "resourceNames", &s->names, &s->nnames)) ||
        (rc = str_array(j, "nonResourceURLs", &s->urls, &s->nurls)))
        return rc;
    return KS_OK;
}

static bool is_star(const char *s)
{
    return s[0] == '*' && s[1] == '\0';
}

/* Intern a lower-cased copy of s (verbs of non-resource rules). */
static uint32_t intern_ref_lower(intern *in, const char *s)
{
    char buf[128];
    size_t len = strlen(s);
    char *p = len < sizeof(buf) ? buf : malloc(len + 1);
    uint32_t id;

    if (p == NULL)
        return NOID;
    for (size_t i = 0; i < len; i++)
        p[i] = (s[i] >= 'A' && s[i] <= 'Z') ? (char)(s[i] - 'A' + 'a') : s[i];
    id = intern_ref_n(in, p, len);
    if (p != buf)
        free(p);
    return id;
}

/* Compile obj's rules into *out (a new role holding references). */
static ks_status role_compile(intern *in, const json_t *obj, role **out)
{
    ks_status rc = KS_ERR_NOMEM;
    const json_t *rules = json_object_get(obj, "rules");
    size_t nrules = 0, nids = 0, nurls = 0, pool = 0;
    role *r = NULL;
    rule_src s;
    uint32_t *ids;
    rurl *urls;
    char *pp;

    if (rules != NULL && !json_is_null(rules) && !json_is_array(rules)) {
        rc = KS_FAIL(KS_ERR_INVALID, "rules is not an array");
        goto out;
    }
    nrules = rules ? json_array_size(rules) : 0;
    for (size_t i = 0; i < nrules; i++) {
        if ((rc = rule_src_parse(json_array_get(rules, i), i, &s)) != KS_OK)
            goto out;
        nids += s.nverbs + s.ngroups + s.nres + s.nnames + (s.nurls ? s.nverbs : 0);
        nurls += s.nurls;
        for (size_t u = 0; u < s.nurls; u++)
            pool += strlen(arr_str(s.urls, u)) + 1;
    }
    if (nids >= UINT32_MAX || nurls >= UINT32_MAX) {
        rc = KS_FAIL(KS_ERR_TOO_LARGE, "role too large");
        goto out;
    }
    r = calloc(1, sizeof(*r));
    if (r == NULL)
        goto nomem;
    r->rules = calloc(nrules ? nrules : 1, sizeof(*r->rules));
    r->ids = malloc((nids ? nids : 1) * sizeof(*r->ids));
    r->urls = malloc((nurls ? nurls : 1) * sizeof(*r->urls));
    r->pool = malloc(pool ? pool : 1);
    if (r->rules == NULL || r->ids == NULL || r->urls == NULL || r->pool == NULL)
        goto nomem;
    r->nrules = (uint32_t)nrules;
    ids = r->ids;
    urls = r->urls;
    pp = r->pool;

    /* r->nids counts the references taken, so role_free releases exactly
     * those if an intern fails half-way. */
#define TAKE(dst, n, expr)                                                                        \
    do {                                                                                          \
        uint32_t id_ = (expr);                                                                    \
        if (id_ == NOID)                                                                          \
            goto nomem;                                                                           \
        ids[r->nids++] = id_;                                                                     \
        (n)++;                                                                                    \
        (void)(dst);                                                                              \
    } while (0)

    for (size_t i = 0; i < nrules; i++) {
        rule *ru = &r->rules[i];
        (void)rule_src_parse(json_array_get(rules, i), i, &s); /* validated above */

        ru->verbs = ids + r->nids;
        for (size_t k = 0; k < s.nverbs; k++) {
            const char *v = arr_str(s.verbs, k);
            if (is_star(v))
                ru->flags |= RF_VERB_ALL;
            else
                TAKE(ru->verbs, ru->nverbs, intern_ref(in, v));
        }
        ru->nrverbs = ids + r->nids;
        if (s.nurls)
            for (size_t k = 0; k < s.nverbs; k++) {
                const char *v = arr_str(s.verbs, k);
                if (!is_star(v))
                    TAKE(ru->nrverbs, ru->nnrverbs, intern_ref_lower(in, v));
            }
        ru->groups = ids + r->nids;
        for (size_t k = 0; k < s.ngroups; k++) {
            const char *g = arr_str(s.groups, k);
            if (is_star(g))
                ru->flags |= RF_GROUP_ALL;
            else
                TAKE(ru->groups, ru->ngroups, intern_ref(in, g));
        }
        ru->res = ids + r->nids;
        for (size_t k = 0; k < s.nres; k++) {
            const char *v = arr_str(s.res, k);
            if (is_star(v))
                ru->flags |= RF_RES_ALL;
            else if (!(v[0] == '*' && v[1] == '/' && v[2] != '\0'))
                TAKE(ru->res, ru->nres, intern_ref(in, v));
        }
        /* "*\/sub" rules, kept apart: they match any resource's sub */
        ru->starsub = ids + r->nids;
        for (size_t k = 0; k < s.nres; k++) {
            const char *v = arr_str(s.res, k);
            if (v[0] == '*' && v[1] == '/' && v[2] != '\0')
                TAKE(ru->starsub, ru->nstarsub, intern_ref(in, v + 2));
        }
        ru->names = ids + r->nids;
        for (size_t k = 0; k < s.nnames; k++)
            TAKE(ru->names, ru->nnames, intern_ref(in, arr_str(s.names, k)));
        ru->urls = urls;
        for (size_t k = 0; k < s.nurls; k++) {
            const char *u = arr_str(s.urls, k);
            size_t len = strlen(u);
            if (is_star(u))
                ru->flags |= RF_URL_ALL;
            memcpy(pp, u, len + 1);
            /* upstream: strings.TrimRight(ruleURL, "*") as a prefix */
            bool prefix = len > 0 && u[len - 1] == '*';
            while (len > 0 && pp[len - 1] == '*')
                len--;
            *urls++ = (rurl){.s = pp, .len = (uint32_t)len, .prefix = prefix};
            ru->nurls++;
            pp += strlen(u) + 1;
        }
    }
#undef TAKE
    *out = r;
    r = NULL;
    rc = KS_OK;
    goto out;
nomem:
    rc = KS_FAIL(KS_ERR_NOMEM, "compiling a role");
out:
    role_free(in, r);
    return rc;
}

/* ---- slots ---- */

static void slot_release(ks_rbac *st, role_slot *sl)
{
    if (sl->refs > 0 || sl->role != NULL)
        return;
    (void)ks_strmap_take(st->slots, sl->key);
    free(sl->key);
    free(sl);
}

/* The slot of key, created empty if absent; NULL on OOM. */
static role_slot *slot_get(ks_rbac *st, int kind, const char *ns, const char *name)
{
    char *key = make_key(role_tags[kind], ns, name);
    role_slot *sl;

    if (key == NULL)
        return NULL;
    sl = ks_strmap_get(st->slots, key);
    if (sl != NULL) {
        free(key);
        return sl;
    }
    sl = calloc(1, sizeof(*sl));
    if (sl == NULL || ks_strmap_put(st->slots, key, sl) != KS_OK) {
        free(sl);
        free(key);
        return NULL;
    }
    sl->kind = (uint8_t)kind;
    sl->key = key;
    return sl;
}

/* ---- bindings ---- */

static void binding_free(ks_rbac *st, binding *b)
{
    if (b == NULL)
        return;
    for (uint32_t i = 0; i < b->nsub; i++)
        intern_unref(&st->in, b->sub[i].id);
    intern_unref(&st->in, b->scope_id);
    if (b->slot != NULL) {
        b->slot->refs--;
        slot_release(st, b->slot);
    }
    free(b->desc);
    free(b);
}

static bool binding_indexed(const binding *b)
{
    return (b->kind != K_WORKSPACE && b->kind != K_NAMESPACE) || b->scope_id != NOID;
}

static uint64_t binding_key(const binding *b, uint32_t i)
{
    uint32_t scope = (b->kind == K_WORKSPACE || b->kind == K_NAMESPACE) ? b->scope_id : 0;
    return index_key(b->sub[i].kind, b->kind, b->sub[i].id, scope);
}

/* Drop the empty lists that index_reserve may have left for b. */
static void index_prune(ks_rbac *st, const binding *b)
{
    for (uint32_t i = 0; i < b->nsub; i++) {
        uint64_t k = binding_key(b, i);
        bvec *v = u64_get(&st->index, k);
        if (v != NULL && v->n == 0)
            free(u64_take(&st->index, k));
    }
}

/* Make room so that index_add(b) cannot fail. */
static ks_status index_reserve(ks_rbac *st, const binding *b)
{
    if (!binding_indexed(b))
        return KS_OK;
    if (u64_reserve(&st->index, b->nsub) != 0)
        return KS_FAIL(KS_ERR_NOMEM, "binding index");
    for (uint32_t i = 0; i < b->nsub; i++) {
        uint64_t k = binding_key(b, i);
        bvec *v = u64_get(&st->index, k);
        if (v == NULL) {
            v = malloc(sizeof(*v) + 2 * sizeof(v->b[0]));
            if (v == NULL)
                goto nomem;
            v->n = 0;
            v->cap = 2;
            u64_put(&st->index, k, v);
        } else if (v->n == v->cap) {
            bvec *nv = realloc(v, sizeof(*v) + (size_t)v->cap * 2 * sizeof(v->b[0]));
            if (nv == NULL)
                goto nomem;
            nv->cap *= 2;
            u64_put(&st->index, k, nv);
        }
    }
    return KS_OK;
nomem:
    index_prune(st, b);
    return KS_FAIL(KS_ERR_NOMEM, "binding index");
}

static void index_add(ks_rbac *st, binding *b)
{
    if (binding_indexed(b))
        for (uint32_t i = 0; i < b->nsub; i++) {
            bvec *v = u64_get(&st->index, binding_key(b, i));
            v->b[v->n++] = b;
        }
    b->prev = NULL;
    b->next = st->all[b->kind];
    if (b->next)
        b->next->prev = b;
    st->all[b->kind] = b;
}

/* Unlink b. Lists left empty stay until index_prune, so that a replacement
 * reserved beforehand (apply_binding) still finds its room. */
static void index_del(ks_rbac *st, binding *b)
{
    if (binding_indexed(b))
        for (uint32_t i = 0; i < b->nsub; i++) {
            bvec *v = u64_get(&st->index, binding_key(b, i));
            if (v == NULL)
                continue;
            for (uint32_t j = 0; j < v->n; j++) {
                if (v->b[j] != b)
                    continue;
                /* keep the order of the others: first allow wins */
                memmove(&v->b[j], &v->b[j + 1], (v->n - j - 1) * sizeof(v->b[0]));
                v->n--;
                break;
            }
        }
    if (b->prev)
        b->prev->next = b->next;
    else
        st->all[b->kind] = b->next;
    if (b->next)
        b->next->prev = b->prev;
}

static int role_ref_kind(const char *s)
{
    for (int k = 0; k < K_COUNT; k++)
        if (strcmp(s, role_kind_names[k]) == 0)
            return k;
    return -1;
}

/* `Kind "ns/name" of RoleKind "role"`, malloc'd; NULL on OOM. */
static char *binding_desc(int kind, const meta *m, int rkind, const char *rname)
{
    const char *bk = binding_kind_names[kind], *rk = role_kind_names[rkind];
    size_t len = strlen(bk) + 2 + (m->ns ? strlen(m->ns) + 1 : 0) + strlen(m->name) + 6 +
                 strlen(rk) + 2 + strlen(rname) + 2;
    char *d = malloc(len + 1), *p = d;

#define PUT(str)                                                                                  \
    do {                                                                                          \
        size_t l_ = strlen(str);                                                                  \
        memcpy(p, str, l_);                                                                       \
        p += l_;                                                                                  \
    } while (0)
    if (d == NULL)
        return NULL;
    PUT(bk);
    PUT(" \"");
    if (m->ns) {
        PUT(m->ns);
        PUT("/");
    }
    PUT(m->name);
    PUT("\" of ");
    PUT(rk);
    PUT(" \"");
    PUT(rname);
    PUT("\"");
    *p = '\0';
#undef PUT
    return d;
}

/* Build a binding from obj (references taken, slot held); nothing indexed. */
static ks_status binding_build(ks_rbac *st, int kind, const json_t *obj, const meta *m,
                               binding **out)
{
    ks_status rc = KS_ERR_NOMEM;
    const json_t *ref, *subjects;
    const char *rname, *rkind_s;
    int rkind;
    size_t nsub = 0;
    binding *b = NULL;

    ref = json_object_get(obj, "roleRef");
    if (!json_is_object(ref)) {
        rc = KS_FAIL(KS_ERR_INVALID, "%s %s: no roleRef", binding_kind_names[kind], m->name);
        goto out;
    }
    rname = json_string_value(json_object_get(ref, "name"));
    if (rname == NULL || rname[0] == '\0') {
        rc = KS_FAIL(KS_ERR_INVALID, "%s %s: no roleRef.name", binding_kind_names[kind], m->name);
        goto out;
    }
    rkind = kind;
    rkind_s = json_string_value(json_object_get(ref, "kind"));
    if (rkind_s != NULL && rkind_s[0] != '\0' && (rkind = role_ref_kind(rkind_s)) < 0) {
        rc = KS_FAIL(KS_ERR_INVALID, "%s %s: roleRef.kind %s is not a role kind",
                     binding_kind_names[kind], m->name, rkind_s);
        goto out;
    }
    if (rkind == K_NAMESPACE && kind != K_NAMESPACE) {
        rc = KS_FAIL(KS_ERR_INVALID, "%s %s: only a RoleBinding may refer to a Role",
                     binding_kind_names[kind], m->name);
        goto out;
    }
    subjects = json_object_get(obj, "subjects");
    if (subjects != NULL && !json_is_null(subjects)) {
        if (!json_is_array(subjects)) {
            rc = KS_FAIL(KS_ERR_INVALID, "%s %s: subjects is not an array",
                         binding_kind_names[kind], m->name);
            goto out;
        }
        nsub = json_array_size(subjects);
        for (size_t i = 0; i < nsub; i++) {
            const json_t *s = json_array_get(subjects, i);
            if (!json_is_object(s) || !json_is_string(json_object_get(s, "kind")) ||
                !json_is_string(json_object_get(s, "name"))) {
                rc = KS_FAIL(KS_ERR_INVALID, "%s %s: subjects[%zu] needs kind and name",
                             binding_kind_names[kind], m->name, i);
                goto out;
            }
        }
    }
    b = calloc(1, sizeof(*b) + nsub * sizeof(b->sub[0]));
    if (b == NULL)
        goto nomem;
    b->kind = (uint8_t)kind;
    b->scope_id = NOID;
    if (kind == K_WORKSPACE && m->workspace != NULL &&
        (b->scope_id = intern_ref(&st->in, m->workspace)) == NOID)
        goto nomem;
    if (kind == K_NAMESPACE && (b->scope_id = intern_ref(&st->in, m->ns)) == NOID)
        goto nomem;
    for (size_t i = 0; i < nsub; i++) {
        const json_t *s = json_array_get(subjects, i);
        const char *sk = json_string_value(json_object_get(s, "kind"));
        const char *sn = json_string_value(json_object_get(s, "name"));
        uint32_t skind, id;
        bool dup = false;

        if (strcmp(sk, "User") == 0)
            skind = S_USER;
        else if (strcmp(sk, "Group") == 0)
            skind = S_GROUP;
        else
            continue; /* ServiceAccount: kscore has no service-account tokens */
        if (sn[0] == '\0')
            continue;
        if ((id = intern_ref(&st->in, sn)) == NOID)
            goto nomem;
        for (uint32_t j = 0; j < b->nsub; j++)
            dup |= b->sub[j].id == id && b->sub[j].kind == skind;
        if (dup) {
            intern_unref(&st->in, id);
            continue;
        }
        b->sub[b->nsub++] = (bsubj){.id = id, .kind = skind};
    }
    b->desc = binding_desc(kind, m, rkind, rname);
    if (b->desc == NULL)
        goto nomem;
    b->slot = slot_get(st, rkind, rkind == K_NAMESPACE ? m->ns : NULL, rname);
    if (b->slot == NULL)
        goto nomem;
    b->slot->refs++;
    *out = b;
    b = NULL;
    rc = KS_OK;
    goto out;
nomem:
    rc = KS_FAIL(KS_ERR_NOMEM, "%s %s", binding_kind_names[kind], m->name);
out:
    binding_free(st, b);
    return rc;
}

/* ---- public: lifecycle ---- */

ks_status ks_rbac_create(ks_rbac **out)
{
    ks_status rc = KS_ERR_NOMEM;
    pthread_rwlockattr_t attr;
    ks_rbac *st = NULL;
    bool lock = false;

    if (out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_create: out is NULL");
    st = calloc(1, sizeof(*st));
    if (st == NULL)
        goto nomem;
    if (pthread_rwlockattr_init(&attr) != 0) {
        rc = KS_FAIL(KS_ERR_INTERNAL, "rwlock attributes");
        goto out;
    }
    /* writer-preferring: the mirror's updates must not starve under load */
    pthread_rwlockattr_setkind_np(&attr, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
    lock = pthread_rwlock_init(&st->lock, &attr) == 0;
    pthread_rwlockattr_destroy(&attr);
    if (!lock) {
        rc = KS_FAIL(KS_ERR_INTERNAL, "rwlock");
        goto out;
    }
    if (intern_init(&st->in) != KS_OK)
        goto nomem;
    st->slots = ks_strmap_create(NULL);
    st->bindings = ks_strmap_create(NULL);
    if (st->slots == NULL || st->bindings == NULL)
        goto nomem;
    if (u64_init(&st->index) != KS_OK)
        goto nomem;
    if (u64_init(&st->ns_ws) != KS_OK)
        goto nomem;
    if (u64_init(&st->user_groups) != KS_OK)
        goto nomem;
    atomic_init(&st->generation, 0);
    *out = st;
    st = NULL;
    rc = KS_OK;
    goto out;
nomem:
    rc = KS_FAIL(KS_ERR_NOMEM, "rbac store");
out:
    if (st != NULL) {
        /* a partly built store: calloc'd fields are NULL or valid */
        ks_strmap_destroy(st->slots);
        ks_strmap_destroy(st->bindings);
        if (st->in.slot)
            intern_fini(&st->in);
        u64_fini(&st->index);
        u64_fini(&st->ns_ws);
        u64_fini(&st->user_groups);
        if (lock)
            pthread_rwlock_destroy(&st->lock);
        free(st);
    }
    return rc;
}

static int free_binding_cb(const char *key, void *value, void *arg)
{
    binding *b = value;
    (void)key;
    (void)arg;
    free(b->desc);
    free(b);
    return 0;
}

static int free_slot_cb(const char *key, void *value, void *arg)
{
    role_slot *sl = value;
    (void)key;
    role_free(arg, sl->role);
    free(sl->key);
    free(sl);
    return 0;
}

void ks_rbac_destroy(ks_rbac *st)
{
    if (st == NULL)
        return;
    /* the intern table goes last and whole, so nothing needs unref'ing */
    ks_strmap_each(st->bindings, free_binding_cb, NULL);
    ks_strmap_each(st->slots, free_slot_cb, &st->in);
    ks_strmap_destroy(st->bindings);
    ks_strmap_destroy(st->slots);
    for (uint32_t i = 0; i <= st->index.mask; i++)
        if (st->index.keys[i] != U64_EMPTY)
            free(st->index.vals[i]);
    for (uint32_t i = 0; i <= st->user_groups.mask; i++)
        if (st->user_groups.keys[i] != U64_EMPTY)
            free(st->user_groups.vals[i]);
    u64_fini(&st->index);
    u64_fini(&st->ns_ws);
    u64_fini(&st->user_groups);
    intern_fini(&st->in);
    pthread_rwlock_destroy(&st->lock);
    free(st);
}

/* ---- public: changes ---- */

static ks_status apply_role(ks_rbac *st, int kind, const json_t *obj, const meta *m)
{
    ks_status rc;
    role *r = NULL;
    role_slot *sl;

    if ((rc = role_compile(&st->in, obj, &r)) != KS_OK)
        goto out;
    sl = slot_get(st, kind, m->ns, m->name);
    if (sl == NULL) {
        rc = KS_FAIL(KS_ERR_NOMEM, "%s %s", role_kind_names[kind], m->name);
        goto out;
    }
    if (sl->role != NULL) {
        st->nroles--;
        st->nrules -= sl->role->nrules;
        role_free(&st->in, sl->role);
    }
    sl->role = r;
    st->nroles++;
    st->nrules += r->nrules;
    r = NULL;
out:
    role_free(&st->in, r);
    return rc;
}

static ks_status apply_binding(ks_rbac *st, int kind, const json_t *obj, const meta *m)
{
    ks_status rc;
    binding *b = NULL, *old;
    char *key = NULL;

    if ((rc = binding_build(st, kind, obj, m, &b)) != KS_OK)
        goto out;
    key = make_key(binding_tags[kind], m->ns, m->name);
    if (key == NULL) {
        rc = KS_FAIL(KS_ERR_NOMEM, "binding key");
        goto out;
    }
    if ((rc = index_reserve(st, b)) != KS_OK)
        goto out;
    old = ks_strmap_get(st->bindings, key);
    if ((rc = ks_strmap_put(st->bindings, key, b)) != KS_OK) {
        index_prune(st, b);
        goto out;
    }
    /* nothing can fail from here on */
    if (old != NULL)
        index_del(st, old);
    index_add(st, b);
    if (old != NULL) {
        index_prune(st, old);
        binding_free(st, old);
    }
    b = NULL;
out:
    free(key);
    binding_free(st, b);
    return rc;
}

ks_status ks_rbac_apply(ks_rbac *st, const char *kind, const json_t *obj)
{
    ks_status rc;
    bool is_binding = false;
    int k;
    meta m = {0};

    if (st == NULL || kind == NULL || obj == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_apply: NULL argument");
    if ((k = kind_parse(kind, &is_binding)) < 0)
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_apply: unknown kind %s", kind);
    if ((rc = meta_parse(obj, kind, k == K_NAMESPACE, &m)) != KS_OK)
        return rc;
    pthread_rwlock_wrlock(&st->lock);
    rc = is_binding ? apply_binding(st, k, obj, &m) : apply_role(st, k, obj, &m);
    if (rc == KS_OK)
        atomic_fetch_add(&st->generation, 1);
    pthread_rwlock_unlock(&st->lock);
    return rc;
}

ks_status ks_rbac_remove(ks_rbac *st, const char *kind, const char *ns, const char *name)
{
    ks_status rc = KS_OK;
    bool is_binding = false;
    char *key = NULL;
    int k;

    if (st == NULL || kind == NULL || name == NULL || name[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_remove: NULL argument or empty name");
    if ((k = kind_parse(kind, &is_binding)) < 0)
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_remove: unknown kind %s", kind);
    if (k == K_NAMESPACE && (ns == NULL || ns[0] == '\0'))
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_remove: %s %s needs a namespace", kind, name);
    if (k != K_NAMESPACE)
        ns = NULL;
    key = make_key(is_binding ? binding_tags[k] : role_tags[k], ns, name);
    if (key == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "key");
    pthread_rwlock_wrlock(&st->lock);
    if (is_binding) {
        binding *b = ks_strmap_take(st->bindings, key);
        if (b == NULL) {
            rc = KS_ERR_NOT_FOUND;
            goto out;
        }
        index_del(st, b);
        index_prune(st, b);
        binding_free(st, b);
    } else {
        role_slot *sl = ks_strmap_get(st->slots, key);
        if (sl == NULL || sl->role == NULL) {
            rc = KS_ERR_NOT_FOUND;
            goto out;
        }
        st->nroles--;
        st->nrules -= sl->role->nrules;
        role_free(&st->in, sl->role);
        sl->role = NULL;
        slot_release(st, sl);
    }
    atomic_fetch_add(&st->generation, 1);
out:
    pthread_rwlock_unlock(&st->lock);
    free(key);
    return rc;
}

ks_status ks_rbac_set_namespace_workspace(ks_rbac *st, const char *ns, const char *ws)
{
    ks_status rc = KS_OK;
    uint32_t nsid, wsid = NOID;

    if (st == NULL || ns == NULL || ns[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_set_namespace_workspace: no namespace");
    if (ws != NULL && ws[0] == '\0')
        ws = NULL;
    pthread_rwlock_wrlock(&st->lock);
    if (ws == NULL) {
        nsid = intern_find(&st->in, ns);
        if (nsid != NOID && u64_get(&st->ns_ws, nsid) != NULL) {
            uintptr_t old = (uintptr_t)u64_take(&st->ns_ws, nsid);
            intern_unref(&st->in, (uint32_t)(old - 1));
            intern_unref(&st->in, nsid);
        }
        goto done;
    }
    if ((nsid = intern_ref(&st->in, ns)) == NOID || (wsid = intern_ref(&st->in, ws)) == NOID ||
        u64_reserve(&st->ns_ws, 1) != 0) {
        intern_unref(&st->in, nsid);
        intern_unref(&st->in, wsid);
        rc = KS_FAIL(KS_ERR_NOMEM, "namespace %s", ns);
        goto out;
    }
    /* values are id + 1 so that NULL means "no label" */
    uintptr_t old = (uintptr_t)u64_get(&st->ns_ws, nsid);
    if (old != 0) {
        intern_unref(&st->in, (uint32_t)(old - 1));
        intern_unref(&st->in, nsid); /* the entry already holds one */
    }
    u64_put(&st->ns_ws, nsid, (void *)(uintptr_t)(wsid + 1));
done:
    atomic_fetch_add(&st->generation, 1);
out:
    pthread_rwlock_unlock(&st->lock);
    return rc;
}

static void ugroups_free(intern *in, ugroups *g)
{
    if (g == NULL)
        return;
    for (uint32_t i = 0; i < g->n; i++)
        intern_unref(in, g->ids[i]);
    free(g);
}

ks_status ks_rbac_set_user_groups(ks_rbac *st, const char *user, const char *const *groups,
                                  size_t n)
{
    ks_status rc = KS_OK;
    ugroups *g = NULL, *old;
    uint32_t uid = NOID;

    if (st == NULL || user == NULL || user[0] == '\0' || (n > 0 && groups == NULL))
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_set_user_groups: bad argument");
    if (n > KS_RBAC_MAX_GROUPS)
        return KS_FAIL(KS_ERR_TOO_LARGE, "user %s: %zu groups", user, n);
    for (size_t i = 0; i < n; i++)
        if (groups[i] == NULL || groups[i][0] == '\0')
            return KS_FAIL(KS_ERR_INVALID, "user %s: empty group name", user);
    pthread_rwlock_wrlock(&st->lock);
    if (n == 0) {
        uid = intern_find(&st->in, user);
        if (uid != NOID && (old = u64_take(&st->user_groups, uid)) != NULL) {
            ugroups_free(&st->in, old);
            intern_unref(&st->in, uid);
        }
        goto done;
    }
    g = malloc(sizeof(*g) + n * sizeof(g->ids[0]));
    if (g == NULL)
        goto nomem;
    g->n = 0;
    for (size_t i = 0; i < n; i++) {
        uint32_t id = intern_ref(&st->in, groups[i]);
        if (id == NOID)
            goto nomem;
        g->ids[g->n++] = id;
    }
    if ((uid = intern_ref(&st->in, user)) == NOID || u64_reserve(&st->user_groups, 1) != 0)
        goto nomem;
    old = u64_get(&st->user_groups, uid);
    if (old != NULL) {
        ugroups_free(&st->in, old);
        intern_unref(&st->in, uid);
    }
    u64_put(&st->user_groups, uid, g);
    g = NULL;
done:
    atomic_fetch_add(&st->generation, 1);
    goto out;
nomem:
    intern_unref(&st->in, uid);
    rc = KS_FAIL(KS_ERR_NOMEM, "user %s groups", user);
out:
    ugroups_free(&st->in, g);
    pthread_rwlock_unlock(&st->lock);
    return rc;
}

uint64_t ks_rbac_generation(ks_rbac *st)
{
    return st ? atomic_load(&st->generation) : 0;
}

static int count_missing_cb(const char *key, void *value, void *arg)
{
    (void)key;
    if (((role_slot *)value)->role == NULL)
        (*(size_t *)arg)++;
    return 0;
}

void ks_rbac_stats_get(ks_rbac *st, ks_rbac_stats *out)
{
    ks_rbac_stats s = {0};

    if (st == NULL || out == NULL)
        return;
    pthread_rwlock_rdlock(&st->lock);
    s.roles = st->nroles;
    s.rules = st->nrules;
    s.bindings = ks_strmap_size(st->bindings);
    ks_strmap_each(st->slots, count_missing_cb, &s.missing_roles);
    s.index_keys = st->index.n;
    s.strings = st->in.used;
    s.namespaces = st->ns_ws.n;
    s.users_with_groups = st->user_groups.n;
    pthread_rwlock_unlock(&st->lock);
    *out = s;
}

/* ---- decisions ---- */

typedef struct {
    bool resource;
    uint32_t verb, group, combined, sub, name; /* ids, NOID if never interned */
    bool has_sub;
    const char *path;
    size_t path_len;
} qids;

static bool has_id(const uint32_t *ids, uint32_t n, uint32_t id)
{
    for (uint32_t i = 0; i < n; i++)
        if (ids[i] == id)
            return true;
    return false;
}

static bool rule_allows(const rule *r, const qids *q)
{
    if (q->resource) {
        if (!(r->flags & RF_VERB_ALL) && !has_id(r->verbs, r->nverbs, q->verb))
            return false;
        if (!(r->flags & RF_GROUP_ALL) && !has_id(r->groups, r->ngroups, q->group))
            return false;
        if (!(r->flags & RF_RES_ALL) && !has_id(r->res, r->nres, q->combined) &&
            !(q->has_sub && has_id(r->starsub, r->nstarsub, q->sub)))
            return false;
        return r->nnames == 0 || has_id(r->names, r->nnames, q->name);
    }
    if (!(r->flags & RF_VERB_ALL) && !has_id(r->nrverbs, r->nnrverbs, q->verb))
        return false;
    if (r->flags & RF_URL_ALL)
        return true;
    for (uint32_t i = 0; i < r->nurls; i++) {
        const rurl *u = &r->urls[i];
        if (u->prefix ? (q->path_len >= u->len && memcmp(q->path, u->s, u->len) == 0)
                      : (q->path_len == u->len && memcmp(q->path, u->s, u->len) == 0))
            return true;
    }
    return false;
}

static bool role_allows(const role *r, const qids *q)
{
    for (uint32_t i = 0; i < r->nrules; i++)
        if (rule_allows(&r->rules[i], q))
            return true;
    return false;
}

/* A reason being written: never overflows, marks a cut. */
typedef struct {
    char *p;
    size_t n, cap;
    bool cut;
} rbuf;

static void rb_put(rbuf *b, const char *s, size_t len)
{
    size_t room = b->cap - 1 - b->n;
    if (len > room) {
        len = room;
        b->cut = true;
    }
    memcpy(b->p + b->n, s, len);
    b->n += len;
}

static void rb_s(rbuf *b, const char *s)
{
    rb_put(b, s, strlen(s));
}

/* "s" quoted; request strings come from the network, so quotes, backslashes
 * and control bytes are escaped or replaced. */
static void rb_q(rbuf *b, const char *s)
{
    rb_put(b, "\"", 1);
    for (const char *p = s;;) {
        const char *start = p;
        while (*p && *p != '"' && *p != '\\' && (unsigned char)*p >= 0x20 && *p != 0x7f)
            p++;
        rb_put(b, start, (size_t)(p - start));
        if (*p == '\0')
            break;
        if (*p == '"')
            rb_put(b, "\\\"", 2);
        else if (*p == '\\')
            rb_put(b, "\\\\", 2);
        else
            rb_put(b, "?", 1);
        p++;
    }
    rb_put(b, "\"", 1);
}

static void rb_end(rbuf *b)
{
    if (b->cut && b->cap >= 4)
        memcpy(b->p + b->cap - 4, "...", 3), b->n = b->cap - 1;
    b->p[b->n] = '\0';
}

#define S(x) ((x) ? (x) : "")

typedef struct {
    uint32_t id;
    uint32_t kind;
} qsubj;

typedef struct {
    qsubj subj[2 * KS_RBAC_MAX_GROUPS + 2];
    uint32_t nsubj;
    const binding *missing[MAX_MISSING];
    uint32_t nmissing;
    uint32_t nmissing_all;
} dctx;

static bool check_binding(dctx *c, const binding *b, const qids *q)
{
    if (b->slot->role == NULL) {
        if (c->nmissing < MAX_MISSING)
            c->missing[c->nmissing++] = b;
        c->nmissing_all++;
        return false;
    }
    return role_allows(b->slot->role, q);
}

/* The first binding of phase (scope) that allows q and the subject it
 * matched, by the index or by scanning. */
static const binding *phase_check(const ks_rbac *st, dctx *c, int phase, uint32_t scope,
                                  const qids *q, bool scan, uint32_t *which)
{
    if (!scan) {
        for (uint32_t s = 0; s < c->nsubj; s++) {
            const bvec *v =
                u64_get(&st->index, index_key(c->subj[s].kind, (uint32_t)phase, c->subj[s].id,
                                               scope));
            if (v == NULL)
                continue;
            for (uint32_t i = 0; i < v->n; i++)
                if (check_binding(c, v->b[i], q)) {
                    *which = s;
                    return v->b[i];
                }
        }
        return NULL;
    }
    for (const binding *b = st->all[phase]; b != NULL; b = b->next) {
        if ((phase == K_WORKSPACE || phase == K_NAMESPACE) && b->scope_id != scope)
            continue;
        for (uint32_t i = 0; i < b->nsub; i++) {
            uint32_t s;
            for (s = 0; s < c->nsubj; s++)
                if (c->subj[s].id == b->sub[i].id && c->subj[s].kind == b->sub[i].kind)
                    break;
            if (s == c->nsubj)
                continue;
            /* upstream's appliesTo: the first subject that applies */
            if (check_binding(c, b, q)) {
                *which = s;
                return b;
            }
            break;
        }
    }
    return NULL;
}

static void add_subject(dctx *c, uint32_t kind, uint32_t id)
{
    if (id == NOID)
        return; /* nobody bound a subject never interned */
    if (c->nsubj < DEDUP_GROUPS)
        for (uint32_t i = 0; i < c->nsubj; i++)
            if (c->subj[i].id == id && c->subj[i].kind == kind)
                return;
    c->subj[c->nsubj++] = (qsubj){.id = id, .kind = kind};
}

static void deny_reason(const ks_rbac *st, const dctx *c, const ks_rbac_user *user,
                        const ks_rbac_request *req, const ugroups *ug, bool anonymous,
                        const int *phases, int nphases, const uint32_t *scopes,
                        ks_rbac_decision *out)
{
    rbuf b = {.p = out->reason, .cap = sizeof(out->reason)};
    bool first = true;

    rb_s(&b, "RBAC: no rules authorize user ");
    rb_q(&b, anonymous ? ANONYMOUS : S(user->name));
    rb_s(&b, " with groups [");
    for (size_t i = 0; i < user->ngroups; i++) {
        rb_s(&b, first ? "" : " ");
        rb_q(&b, S(user->groups[i]));
        first = false;
    }
    for (uint32_t i = 0; ug != NULL && i < ug->n; i++) {
        rb_s(&b, first ? "" : " ");
        rb_q(&b, intern_str(&st->in, ug->ids[i]));
        first = false;
    }
    rb_s(&b, first ? "" : " ");
    rb_q(&b, anonymous ? GROUP_UNAUTHENTICATED : GROUP_AUTHENTICATED);
    rb_s(&b, "] to ");
    rb_q(&b, S(req->verb));
    if (req->is_resource_request) {
        /* upstream's form: "resource.group/subresource" */
        char res[256];
        rbuf r = {.p = res, .cap = sizeof(res)};
        rb_s(&r, S(req->resource));
        if (S(req->api_group)[0]) {
            rb_s(&r, ".");
            rb_s(&r, req->api_group);
        }
        if (S(req->subresource)[0]) {
            rb_s(&r, "/");
            rb_s(&r, req->subresource);
        }
        rb_end(&r);
        rb_s(&b, " resource ");
        rb_q(&b, res);
        if (S(req->name)[0]) {
            rb_s(&b, " named ");
            rb_q(&b, req->name);
        }
        switch (req->scope) {
        case KS_RBAC_SCOPE_NAMESPACE:
            rb_s(&b, " in namespace ");
            rb_q(&b, S(req->namespace));
            break;
        case KS_RBAC_SCOPE_WORKSPACE:
            rb_s(&b, " in workspace ");
            rb_q(&b, S(req->workspace));
            break;
        case KS_RBAC_SCOPE_CLUSTER:
            rb_s(&b, " cluster scope");
            break;
        default:
            rb_s(&b, " global-wide");
        }
    } else {
        rb_s(&b, " nonResourceURL ");
        rb_q(&b, S(req->path));
    }
    rb_s(&b, "; checked ");
    for (int i = 0; i < nphases; i++) {
        rb_s(&b, i ? ", " : "");
        switch (phases[i]) {
        case K_GLOBAL:
            rb_s(&b, "GlobalRoleBindings");
            break;
        case K_WORKSPACE:
            if (scopes[i] == NOID && req->scope == KS_RBAC_SCOPE_NAMESPACE) {
                rb_s(&b, "no WorkspaceRoleBindings (namespace ");
                rb_q(&b, S(req->namespace));
                rb_s(&b, " has no workspace)");
            } else {
                rb_s(&b, "WorkspaceRoleBindings of workspace ");
                rb_q(&b, scopes[i] == NOID ? S(req->workspace) : intern_str(&st->in, scopes[i]));
            }
            break;
        case K_NAMESPACE:
            rb_s(&b, "RoleBindings in namespace ");
            rb_q(&b, S(req->namespace));
            break;
        default:
            rb_s(&b, "ClusterRoleBindings");
        }
    }
    for (uint32_t i = 0; i < c->nmissing; i++) {
        rb_s(&b, i ? ", " : "; missing role: ");
        rb_s(&b, c->missing[i]->desc);
    }
    if (c->nmissing_all > c->nmissing)
        rb_s(&b, " and more");
    rb_end(&b);
}

static ks_status decide(ks_rbac *st, const ks_rbac_user *user, const ks_rbac_request *req,
                        ks_rbac_decision *out, bool scan)
{
    static const char *const subj_kinds[2] = {"User", "Group"};
    dctx c;
    qids q = {0};
    int phases[4], nphases = 0;
    uint32_t scopes[4];
    const ugroups *ug = NULL;
    bool anonymous;
    uint32_t uid;

    if (st == NULL || user == NULL || req == NULL || out == NULL ||
        (user->ngroups > 0 && user->groups == NULL) ||
        (req->is_resource_request && (unsigned)req->scope > KS_RBAC_SCOPE_NAMESPACE))
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_decide: bad argument");
    if (user->ngroups > KS_RBAC_MAX_GROUPS)
        return KS_FAIL(KS_ERR_TOO_LARGE, "ks_rbac_decide: %zu groups", user->ngroups);
    anonymous = S(user->name)[0] == '\0' || strcmp(user->name, ANONYMOUS) == 0;
    c.nsubj = c.nmissing = c.nmissing_all = 0;

    pthread_rwlock_rdlock(&st->lock);
    /* subjects: the user, the token's groups, User.spec.groups, the implicit group */
    uid = intern_find(&st->in, anonymous ? ANONYMOUS : user->name);
    add_subject(&c, S_USER, uid);
    for (size_t i = 0; i < user->ngroups; i++)
        if (user->groups[i] != NULL)
            add_subject(&c, S_GROUP, intern_find(&st->in, user->groups[i]));
    if (!anonymous && uid != NOID && (ug = u64_get(&st->user_groups, uid)) != NULL)
        for (uint32_t i = 0; i < ug->n; i++)
            add_subject(&c, S_GROUP, ug->ids[i]);
    add_subject(&c, S_GROUP,
                intern_find(&st->in, anonymous ? GROUP_UNAUTHENTICATED : GROUP_AUTHENTICATED));

    q.resource = req->is_resource_request;
    if (q.resource) {
        const char *sub = S(req->subresource);
        q.verb = intern_find(&st->in, S(req->verb));
        q.group = intern_find(&st->in, S(req->api_group));
        q.has_sub = sub[0] != '\0';
        q.combined = q.has_sub ? intern_find2(&st->in, S(req->resource), sub)
                               : intern_find(&st->in, S(req->resource));
        q.sub = q.has_sub ? intern_find(&st->in, sub) : NOID;
        q.name = intern_find(&st->in, S(req->name));
    } else {
        /* non-resource rules' verbs were lower-cased at compile time */
        char vb[32];
        const char *v = S(req->verb);
        size_t n = strlen(v);
        if (n < sizeof(vb)) {
            for (size_t i = 0; i <= n; i++)
                vb[i] = (v[i] >= 'A' && v[i] <= 'Z') ? (char)(v[i] - 'A' + 'a') : v[i];
            q.verb = intern_find(&st->in, vb);
        } else {
            q.verb = NOID; /* no verb that long was ever written in a rule */
        }
        q.path = S(req->path);
        q.path_len = strlen(q.path);
    }

    phases[nphases] = K_GLOBAL;
    scopes[nphases++] = 0;
    if (!q.resource) {
        phases[nphases] = K_CLUSTER;
        scopes[nphases++] = 0;
    } else if (req->scope != KS_RBAC_SCOPE_GLOBAL) {
        if (req->scope == KS_RBAC_SCOPE_WORKSPACE) {
            phases[nphases] = K_WORKSPACE;
            scopes[nphases++] = intern_find(&st->in, S(req->workspace));
        } else if (req->scope == KS_RBAC_SCOPE_NAMESPACE) {
            uint32_t ns = intern_find(&st->in, S(req->namespace));
            uintptr_t ws = ns == NOID ? 0 : (uintptr_t)u64_get(&st->ns_ws, ns);
            phases[nphases] = K_WORKSPACE;
            scopes[nphases++] = ws ? (uint32_t)(ws - 1) : NOID;
            phases[nphases] = K_NAMESPACE;
            scopes[nphases++] = ns;
        }
        phases[nphases] = K_CLUSTER;
        scopes[nphases++] = 0;
    }

    for (int i = 0; i < nphases; i++) {
        const binding *b;
        uint32_t which = 0;
        if (scopes[i] == NOID)
            continue;
        b = phase_check(st, &c, phases[i], scopes[i], &q, scan, &which);
        if (b == NULL)
            continue;
        rbuf r = {.p = out->reason, .cap = sizeof(out->reason)};
        rb_s(&r, "RBAC: allowed by ");
        rb_s(&r, b->desc);
        rb_s(&r, " to ");
        rb_s(&r, subj_kinds[c.subj[which].kind]);
        rb_s(&r, " ");
        rb_q(&r, intern_str(&st->in, c.subj[which].id));
        rb_end(&r);
        out->allowed = true;
        out->phase = (ks_rbac_phase)(phases[i] == K_GLOBAL      ? KS_RBAC_PHASE_GLOBAL
                                     : phases[i] == K_WORKSPACE ? KS_RBAC_PHASE_WORKSPACE
                                     : phases[i] == K_NAMESPACE ? KS_RBAC_PHASE_NAMESPACE
                                                                : KS_RBAC_PHASE_CLUSTER);
        goto out;
    }
    out->allowed = false;
    out->phase = KS_RBAC_PHASE_NONE;
    deny_reason(st, &c, user, req, anonymous ? NULL : ug, anonymous, phases, nphases, scopes,
                out);
out:
    pthread_rwlock_unlock(&st->lock);
    return KS_OK;
}

ks_status ks_rbac_decide(ks_rbac *st, const ks_rbac_user *user, const ks_rbac_request *req,
                         ks_rbac_decision *out)
{
    return decide(st, user, req, out, false);
}

ks_status ks_rbac_decide_scan(ks_rbac *st, const ks_rbac_user *user, const ks_rbac_request *req,
                              ks_rbac_decision *out)
{
    return decide(st, user, req, out, true);
}

/* ---- names ---- */

static const char *const scope_names[] = {"Global", "Cluster", "Workspace", "Namespace"};

ks_status ks_rbac_scope_parse(const char *s, ks_rbac_scope *out)
{
    if (s == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_scope_parse: NULL argument");
    for (int i = 0; i < 4; i++)
        if (strcmp(s, scope_names[i]) == 0) {
            *out = (ks_rbac_scope)i;
            return KS_OK;
        }
    return KS_FAIL(KS_ERR_INVALID, "unknown resource scope \"%.64s\"", s);
}

const char *ks_rbac_scope_name(ks_rbac_scope s)
{
    return (unsigned)s < 4 ? scope_names[s] : "unknown";
}

const char *ks_rbac_phase_name(ks_rbac_phase p)
{
    static const char *const names[] = {"none", "global", "workspace", "namespace", "cluster"};
    return (unsigned)p < 5 ? names[p] : "unknown";
}
