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
#include <sys/random.h>
#include <time.h>

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

/* Eight bytes at a time: names are short, and a decision hashes about six
 * of them. Seeded per store from getrandom, because users choose names
 * (namespaces, roles) and with a fixed hash could line them up in one probe
 * chain. Not a keyed PRF like SipHash, but nothing here is worth attacking
 * at that level: a collision costs probes, never a wrong answer (the bytes
 * are compared). */
static uint64_t hash_bytes(uint64_t seed, const char *s, size_t len)
{
    uint64_t h = seed ^ (uint64_t)len;
    uint64_t w;

    for (; len >= 8; s += 8, len -= 8) {
        memcpy(&w, s, 8);
        h = (h ^ w) * 0xff51afd7ed558ccdULL;
        h ^= h >> 31;
    }
    if (len > 0) {
        w = 0;
        memcpy(&w, s, len);
        h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL;
    }
    return mix64(h);
}

/* ---- interned strings ---- */

#define INLINE_STR 24 /* strings shorter than this live in the entry itself */

typedef struct ugroups ugroups;

/* One cache line: a decision's lookup of a user or namespace name finds
 * the string, the phases it has bindings in, its workspace and its
 * User.spec.groups without another miss. */
typedef struct {
    uint64_t hash;
    uint32_t len;
    uint32_t refs;     /* for a free entry: the next free id */
    uint32_t ws;       /* as a namespace: its workspace's id, NOID none */
    uint8_t phases[2]; /* as a subject (User, Group): bit p, index lists in phase p */
    uint8_t live;      /* 0: a free entry */
    uint8_t pad;
    ugroups *groups;   /* as a user: User.spec.groups (NULL: none) */
    char *heap;        /* the string, when it does not fit in inl */
    char inl[INLINE_STR];
} istr;

struct ugroups {
    uint32_t n;
    uint32_t ids[];
};

typedef struct {
    uint64_t seed;           /* of hash_bytes */
    istr *ent;
    uint32_t (*nbind)[2][4]; /* per id: index lists by subject kind and phase */
    uint32_t nent, capent;
    uint32_t free_head;   /* NOID: none */
    uint32_t *slot;       /* id + 1; 0 empty */
    uint32_t mask;
    uint32_t used;
} intern;

static const char *istr_s(const istr *e)
{
    return e->heap ? e->heap : e->inl;
}

static ks_status intern_init(intern *in)
{
    memset(in, 0, sizeof(*in));
    if (getrandom(&in->seed, sizeof(in->seed), GRND_NONBLOCK) != (ssize_t)sizeof(in->seed))
        in->seed = mix64((uint64_t)(uintptr_t)in ^ (uint64_t)time(NULL)); /* early boot */
    in->seed |= 1;
    in->free_head = NOID;
    in->mask = 255;
    in->slot = calloc(in->mask + 1, sizeof(*in->slot));
    return in->slot ? KS_OK : KS_FAIL(KS_ERR_NOMEM, "intern table");
}

static void intern_fini(intern *in)
{
    for (uint32_t i = 0; i < in->nent; i++)
        if (in->ent[i].live) {
            free(in->ent[i].heap);
            free(in->ent[i].groups);
        }
    free(in->ent);
    free(in->nbind);
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
        if (e->hash == h && e->len == len && memcmp(istr_s(e), s, len) == 0)
            return v - 1;
        i = (i + 1) & in->mask;
    }
}

static uint32_t intern_find(const intern *in, const char *s)
{
    size_t len = strlen(s);
    return intern_find_h(in, s, len, hash_bytes(in->seed, s, len));
}

/* The id of "a/b" (a resource and its subresource). Resource names are
 * DNS labels of at most 63 bytes; a pair that does not fit the buffer is
 * NOID, which only a "*" rule matches. */
static uint32_t intern_find2(const intern *in, const char *a, const char *b)
{
    char buf[256];
    size_t alen = strlen(a), blen = strlen(b), len = alen + 1 + blen;

    if (len >= sizeof(buf))
        return NOID;
    memcpy(buf, a, alen);
    buf[alen] = '/';
    memcpy(buf + alen + 1, b, blen);
    return intern_find_h(in, buf, len, hash_bytes(in->seed, buf, len));
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
        if (in->ent[id].live)
            intern_slot_put(in, id);
    return 0;
}

/* Take a reference on the string s[0..len); NOID when out of memory. */
static uint32_t intern_ref_n(intern *in, const char *s, size_t len)
{
    uint64_t h = hash_bytes(in->seed, s, len);
    uint32_t id = intern_find_h(in, s, len, h);
    char *heap = NULL;

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
        uint32_t(*nb)[2][4];
        if (ncap > MAX_IDS)
            ncap = MAX_IDS;
        if (ncap <= in->capent)
            return NOID;
        ne = realloc(in->ent, (size_t)ncap * sizeof(*ne));
        if (ne == NULL)
            return NOID;
        in->ent = ne;
        nb = realloc(in->nbind, (size_t)ncap * sizeof(*nb));
        if (nb == NULL)
            return NOID; /* ent grew, capent did not: harmless, retried next time */
        in->nbind = nb;
        in->capent = ncap;
    }
    if (len >= INLINE_STR) {
        heap = malloc(len + 1);
        if (heap == NULL)
            return NOID;
        memcpy(heap, s, len);
        heap[len] = '\0';
    }
    if (in->free_head != NOID) {
        id = in->free_head;
        in->free_head = in->ent[id].refs;
    } else {
        id = in->nent++;
    }
    istr *e = &in->ent[id];
    memset(e, 0, sizeof(*e));
    e->hash = h;
    e->len = (uint32_t)len;
    e->refs = 1;
    e->ws = NOID;
    e->live = 1;
    e->heap = heap;
    if (heap == NULL) {
        memcpy(e->inl, s, len);
        e->inl[len] = '\0';
    }
    memset(in->nbind[id], 0, sizeof(in->nbind[id]));
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
    /* a label or a group list holds a reference, so neither is left here */
    free(in->ent[id].heap);
    in->ent[id].heap = NULL;
    in->ent[id].live = 0;
    in->ent[id].refs = in->free_head;
    in->free_head = id;
    in->used--;
}

/* Valid until the next change (the entry array may move): read-side only. */
static const char *intern_str(const intern *in, uint32_t id)
{
    return id == NOID ? "" : istr_s(&in->ent[id]);
}

/* ---- a map from 64-bit keys to pointers ---- */

#define U64_EMPTY UINT64_MAX

typedef struct {
    uint64_t key;
    void *val;
} u64ent;

/* Open addressing, linear probing, key and value side by side so that a
 * hit costs one cache miss. */
typedef struct {
    u64ent *e;
    uint32_t mask;
    uint32_t n;
} u64map;

static ks_status u64_init(u64map *m)
{
    m->mask = 63;
    m->n = 0;
    m->e = malloc((m->mask + 1) * sizeof(*m->e));
    if (m->e == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "index");
    for (uint32_t i = 0; i <= m->mask; i++)
        m->e[i] = (u64ent){U64_EMPTY, NULL};
    return KS_OK;
}

static void u64_fini(u64map *m)
{
    free(m->e);
}

static void *u64_get(const u64map *m, uint64_t k)
{
    uint32_t i = (uint32_t)mix64(k) & m->mask;

    for (;; i = (i + 1) & m->mask) {
        if (m->e[i].key == k)
            return m->e[i].val;
        if (m->e[i].key == U64_EMPTY)
            return NULL;
    }
}

/* Make room for extra more keys without a resize. */
static int u64_reserve(u64map *m, uint32_t extra)
{
    uint64_t cap = (uint64_t)m->mask + 1;
    u64ent *ne;

    while ((uint64_t)(m->n + extra) * 10 > cap * 7)
        cap *= 2;
    if (cap == (uint64_t)m->mask + 1)
        return 0;
    if (cap > (1ULL << 31))
        return -1;
    ne = malloc(cap * sizeof(*ne));
    if (ne == NULL)
        return -1;
    for (uint64_t i = 0; i < cap; i++)
        ne[i] = (u64ent){U64_EMPTY, NULL};
    for (uint32_t i = 0; i <= m->mask; i++) {
        if (m->e[i].key == U64_EMPTY)
            continue;
        uint32_t j = (uint32_t)mix64(m->e[i].key) & (uint32_t)(cap - 1);
        while (ne[j].key != U64_EMPTY)
            j = (j + 1) & (uint32_t)(cap - 1);
        ne[j] = m->e[i];
    }
    free(m->e);
    m->e = ne;
    m->mask = (uint32_t)(cap - 1);
    return 0;
}

/* Insert or replace; the caller reserved room (u64_reserve). */
static void u64_put(u64map *m, uint64_t k, void *v)
{
    uint32_t i = (uint32_t)mix64(k) & m->mask;

    for (;; i = (i + 1) & m->mask) {
        if (m->e[i].key == k) {
            m->e[i].val = v;
            return;
        }
        if (m->e[i].key == U64_EMPTY) {
            m->e[i] = (u64ent){k, v};
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
        if (m->e[i].key == k)
            break;
        if (m->e[i].key == U64_EMPTY)
            return NULL;
    }
    v = m->e[i].val;
    for (j = i;;) {
        j = (j + 1) & m->mask;
        if (m->e[j].key == U64_EMPTY)
            break;
        uint32_t home = (uint32_t)mix64(m->e[j].key) & m->mask;
        if (((j - home) & m->mask) >= ((j - i) & m->mask)) {
            m->e[i] = m->e[j];
            i = j;
        }
    }
    m->e[i] = (u64ent){U64_EMPTY, NULL};
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
    /* one allocation: this header, rules, ids, urls, pool, in that order, so
     * that a decision walks one stretch of memory */
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

/* An index list: the slot beside the binding, so that a binding whose role
 * does not allow costs no visit to the binding itself. */
typedef struct {
    binding *b;
    role_slot *slot;
} bref;

typedef struct {
    uint32_t n, cap;
    bref b[];
} bvec;

/* A reader takes one shard, a writer all of them (a "big reader" lock):
 * decisions on different threads then touch different cache lines instead of
 * bouncing one rwlock's counter between cores. 128-byte strides keep two
 * shards off a common cache line whatever the allocation's alignment. */
#define LOCK_SHARDS 8

typedef struct {
    pthread_rwlock_t l;
    char pad[128 - sizeof(pthread_rwlock_t)];
} lock_shard;

struct ks_rbac {
    lock_shard locks[LOCK_SHARDS];
    int nlocks;            /* initialised shards (for a failed create) */
    _Atomic uint64_t generation;
    intern in;
    ks_strmap *slots;      /* role key -> role_slot */
    ks_strmap *bindings;   /* binding key -> binding */
    u64map index;          /* subject key -> bvec */
    size_t nnamespaces;    /* namespaces with a workspace (istr.ws) */
    size_t nusergroups;    /* users with User.spec.groups (istr.groups) */
    binding *all[K_COUNT]; /* heads of the per-kind lists */
    size_t nroles, nrules;
};

static _Thread_local unsigned tl_shard = UINT32_MAX;
static atomic_uint next_shard;

static pthread_rwlock_t *rd_lock(ks_rbac *st)
{
    pthread_rwlock_t *l;

    if (tl_shard == UINT32_MAX)
        tl_shard = atomic_fetch_add(&next_shard, 1) % LOCK_SHARDS;
    l = &st->locks[tl_shard].l;
    pthread_rwlock_rdlock(l);
    return l;
}

static void wr_lock(ks_rbac *st)
{
    for (int i = 0; i < LOCK_SHARDS; i++)
        pthread_rwlock_wrlock(&st->locks[i].l);
}

static void wr_unlock(ks_rbac *st)
{
    for (int i = LOCK_SHARDS - 1; i >= 0; i--)
        pthread_rwlock_unlock(&st->locks[i].l);
}

/* (kind, phase) in 3 bits, the subject id in 29, the scope id in 32. Never
 * U64_EMPTY: the scope of the last phase (cluster) is always 0. */
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
    char buf[128] = {0};
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
    {
        /* every part aligned to 8; sizes are bounded by the JSON's size */
        size_t o_rules = (sizeof(role) + 7) & ~(size_t)7;
        size_t o_ids = o_rules + nrules * sizeof(rule);
        size_t o_urls = (o_ids + nids * sizeof(uint32_t) + 7) & ~(size_t)7;
        size_t o_pool = o_urls + nurls * sizeof(rurl);
        char *blk = calloc(1, o_pool + pool + 1);
        if (blk == NULL)
            goto nomem;
        r = (role *)(void *)blk;
        r->rules = (rule *)(void *)(blk + o_rules);
        r->ids = (uint32_t *)(void *)(blk + o_ids);
        r->urls = (rurl *)(void *)(blk + o_urls);
        r->pool = blk + o_pool;
    }
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
            v->b[v->n++] = (bref){b, b->slot};
            if (st->in.nbind[b->sub[i].id][b->sub[i].kind][b->kind]++ == 0)
                st->in.ent[b->sub[i].id].phases[b->sub[i].kind] |= (uint8_t)(1u << b->kind);
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
                if (v->b[j].b != b)
                    continue;
                /* keep the order of the others: first allow wins */
                memmove(&v->b[j], &v->b[j + 1], (v->n - j - 1) * sizeof(v->b[0]));
                v->n--;
                if (--st->in.nbind[b->sub[i].id][b->sub[i].kind][b->kind] == 0)
                    st->in.ent[b->sub[i].id].phases[b->sub[i].kind] &=
                        (uint8_t) ~(1u << b->kind);
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
    while (st->nlocks < LOCK_SHARDS && pthread_rwlock_init(&st->locks[st->nlocks].l, &attr) == 0)
        st->nlocks++;
    pthread_rwlockattr_destroy(&attr);
    if (st->nlocks < LOCK_SHARDS) {
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
        for (int i = 0; i < st->nlocks; i++)
            pthread_rwlock_destroy(&st->locks[i].l);
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
        if (st->index.e[i].key != U64_EMPTY)
            free(st->index.e[i].val);
    u64_fini(&st->index);
    intern_fini(&st->in);
    for (int i = 0; i < LOCK_SHARDS; i++)
        pthread_rwlock_destroy(&st->locks[i].l);
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
    if (!is_binding) {
        /* A role template (label iam.kubesphere.io/role-template: "true",
         * config/roles/) is copied into workspaces and namespaces by the
         * controllers; the template itself never grants anything. */
        const char *tpl = json_string_value(json_object_get(
            json_object_get(json_object_get(obj, "metadata"), "labels"),
            "iam.kubesphere.io/role-template"));
        if (tpl != NULL && strcmp(tpl, "true") == 0) {
            rc = ks_rbac_remove(st, kind, m.ns, m.name);
            return rc == KS_ERR_NOT_FOUND ? KS_OK : rc;
        }
    }
    wr_lock(st);
    rc = is_binding ? apply_binding(st, k, obj, &m) : apply_role(st, k, obj, &m);
    if (rc == KS_OK)
        atomic_fetch_add(&st->generation, 1);
    wr_unlock(st);
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
    wr_lock(st);
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
    wr_unlock(st);
    free(key);
    return rc;
}

ks_status ks_rbac_set_namespace_workspace(ks_rbac *st, const char *ns, const char *ws)
{
    ks_status rc = KS_OK;
    uint32_t nsid = NOID, wsid = NOID;

    if (st == NULL || ns == NULL || ns[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "ks_rbac_set_namespace_workspace: no namespace");
    if (ws != NULL && ws[0] == '\0')
        ws = NULL;
    wr_lock(st);
    /* a label holds one reference on the namespace and one on the workspace */
    if (ws == NULL) {
        nsid = intern_find(&st->in, ns);
        if (nsid != NOID && st->in.ent[nsid].ws != NOID) {
            intern_unref(&st->in, st->in.ent[nsid].ws);
            st->in.ent[nsid].ws = NOID;
            st->nnamespaces--;
            intern_unref(&st->in, nsid);
        }
        goto done;
    }
    if ((nsid = intern_ref(&st->in, ns)) == NOID || (wsid = intern_ref(&st->in, ws)) == NOID) {
        intern_unref(&st->in, nsid);
        rc = KS_FAIL(KS_ERR_NOMEM, "namespace %s", ns);
        goto out;
    }
    if (st->in.ent[nsid].ws != NOID) {
        intern_unref(&st->in, st->in.ent[nsid].ws);
        intern_unref(&st->in, nsid); /* the label already holds one */
    } else {
        st->nnamespaces++;
    }
    st->in.ent[nsid].ws = wsid;
done:
    atomic_fetch_add(&st->generation, 1);
out:
    wr_unlock(st);
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
    wr_lock(st);
    /* a group list holds one reference on the user and one on each group */
    if (n == 0) {
        uid = intern_find(&st->in, user);
        if (uid != NOID && (old = st->in.ent[uid].groups) != NULL) {
            st->in.ent[uid].groups = NULL;
            st->nusergroups--;
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
    if ((uid = intern_ref(&st->in, user)) == NOID)
        goto nomem;
    old = st->in.ent[uid].groups;
    if (old != NULL) {
        ugroups_free(&st->in, old);
        intern_unref(&st->in, uid);
    } else {
        st->nusergroups++;
    }
    st->in.ent[uid].groups = g;
    g = NULL;
done:
    atomic_fetch_add(&st->generation, 1);
    goto out;
nomem:
    rc = KS_FAIL(KS_ERR_NOMEM, "user %s groups", user);
out:
    ugroups_free(&st->in, g);
    wr_unlock(st);
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
    pthread_rwlock_t *l = rd_lock(st);
    s.roles = st->nroles;
    s.rules = st->nrules;
    s.bindings = ks_strmap_size(st->bindings);
    ks_strmap_each(st->slots, count_missing_cb, &s.missing_roles);
    s.index_keys = st->index.n;
    s.strings = st->in.used;
    s.namespaces = st->nnamespaces;
    s.users_with_groups = st->nusergroups;
    pthread_rwlock_unlock(l);
    *out = s;
}

/* ---- decisions ---- */

typedef struct {
    bool resource;
    uint32_t verb, group, combined, sub; /* ids, NOID if never interned */
    bool has_sub;
    bool name_done;     /* name is looked up when a rule has resourceNames */
    uint32_t name;
    const char *name_s;
    const intern *in;
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

static bool rule_allows(const rule *r, qids *q)
{
    if (q->resource) {
        if (!(r->flags & RF_VERB_ALL) && !has_id(r->verbs, r->nverbs, q->verb))
            return false;
        if (!(r->flags & RF_GROUP_ALL) && !has_id(r->groups, r->ngroups, q->group))
            return false;
        if (!(r->flags & RF_RES_ALL) && !has_id(r->res, r->nres, q->combined) &&
            !(q->has_sub && has_id(r->starsub, r->nstarsub, q->sub)))
            return false;
        if (r->nnames == 0)
            return true;
        if (!q->name_done) {
            q->name = intern_find(q->in, q->name_s);
            q->name_done = true;
        }
        return has_id(r->names, r->nnames, q->name);
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

static bool role_allows(const role *r, qids *q)
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

/* Inlined so that the constant pieces of a reason are copied by a few moves
 * rather than a call to memcpy each. */
static inline __attribute__((always_inline)) void rb_put(rbuf *b, const char *s, size_t len)
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

#define rb_lit(b, lit) rb_put((b), (lit), sizeof(lit) - 1)

#define ONES 0x0101010101010101ULL
#define HIGHS 0x8080808080808080ULL

/* Whether any byte of w is < 0x20, '"', '\\' or 0x7f. Each term is the
 * classic "has a byte less than n" test, exact for "any". */
static inline bool swar_special(uint64_t w)
{
    uint64_t q = w ^ (ONES * '"'), bs = w ^ (ONES * '\\'), del = w ^ (ONES * 0x7f);
    uint64_t m = ((w - ONES * 0x20) & ~w) | ((q - ONES) & ~q) | ((bs - ONES) & ~bs) |
                 ((del - ONES) & ~del);
    return (m & HIGHS) != 0;
}

/* "s" quoted; request strings come from the network, so quotes and
 * backslashes are escaped and control bytes replaced by '?'. When the rest
 * of the buffer holds even the worst case (every byte escaped) the bytes
 * are written without a check each, clean runs of eight at once; otherwise
 * one at a time, checked. */
static void rb_q(rbuf *b, const char *s)
{
    size_t len = strlen(s);
    char *o = b->p + b->n;

    if (!b->cut && b->cap - 1 - b->n >= 2 * len + 2) {
        size_t i = 0;
        *o++ = '"';
        for (uint64_t w; i + 8 <= len; i += 8) {
            memcpy(&w, s + i, 8);
            if (swar_special(w))
                break;
            memcpy(o, &w, 8);
            o += 8;
        }
        for (; i < len; i++) {
            unsigned char ch = (unsigned char)s[i];
            if (ch == '"' || ch == '\\')
                *o++ = '\\';
            else if (ch < 0x20 || ch == 0x7f)
                ch = '?';
            *o++ = (char)ch;
        }
        *o++ = '"';
        b->n = (size_t)(o - b->p);
        return;
    }
    rb_lit(b, "\"");
    for (size_t i = 0; i < len && !b->cut; i++) {
        unsigned char ch = (unsigned char)s[i];
        if (ch == '"' || ch == '\\') {
            if (b->cap - 1 - b->n < 2) {
                b->cut = true;
                break;
            }
            rb_lit(b, "\\");
        } else if (ch < 0x20 || ch == 0x7f) {
            ch = '?';
        }
        rb_put(b, (const char *)&ch, 1);
    }
    rb_lit(b, "\"");
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
    uint16_t kind;
    uint16_t phases; /* bit p: the index has lists for (subject, phase p) */
} qsubj;

typedef struct {
    qsubj subj[2 * KS_RBAC_MAX_GROUPS + 2];
    uint32_t nsubj;
    const binding *missing[MAX_MISSING];
    uint32_t nmissing;
    uint32_t nmissing_all;
    bool scan;
} dctx;

static bool check_binding(dctx *c, const binding *b, const role_slot *slot, qids *q)
{
    if (slot->role == NULL) {
        if (c->nmissing < MAX_MISSING)
            c->missing[c->nmissing++] = b;
        c->nmissing_all++;
        return false;
    }
    return role_allows(slot->role, q);
}

/* The first binding of phase (scope) that allows q and the subject it
 * matched, by the index or by scanning. */
static const binding *phase_check(const ks_rbac *st, dctx *c, int phase, uint32_t scope,
                                  qids *q, bool scan, uint32_t *which)
{
    if (!scan) {
        for (uint32_t s = 0; s < c->nsubj; s++) {
            if (!(c->subj[s].phases & (1u << phase)))
                continue;
            const bvec *v =
                u64_get(&st->index, index_key(c->subj[s].kind, (uint32_t)phase, c->subj[s].id,
                                               scope));
            if (v == NULL)
                continue;
            for (uint32_t i = 0; i < v->n; i++)
                if (check_binding(c, v->b[i].b, v->b[i].slot, q)) {
                    *which = s;
                    return v->b[i].b;
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
            if (check_binding(c, b, b->slot, q)) {
                *which = s;
                return b;
            }
            break;
        }
    }
    return NULL;
}

static void add_subject(const ks_rbac *st, dctx *c, uint32_t kind, uint32_t id)
{
    uint16_t phases;

    if (id == NOID)
        return; /* nobody bound a subject never interned */
    phases = st->in.ent[id].phases[kind];
    /* the scan must see every subject; the index only those with lists */
    if (phases == 0 && !c->scan)
        return;
    if (c->nsubj < DEDUP_GROUPS)
        for (uint32_t i = 0; i < c->nsubj; i++)
            if (c->subj[i].id == id && c->subj[i].kind == kind)
                return;
    c->subj[c->nsubj++] = (qsubj){.id = id, .kind = (uint16_t)kind, .phases = phases};
}

/* Whether group g is among the first nt token groups or the first nu of
 * User.spec.groups (ug): a group the reason has listed already. */
static bool group_listed(const ks_rbac *st, const ks_rbac_user *user, size_t nt,
                         const ugroups *ug, uint32_t nu, const char *g)
{
    for (size_t i = 0; i < nt; i++)
        if (strcmp(S(user->groups[i]), g) == 0)
            return true;
    for (uint32_t i = 0; i < nu; i++)
        if (strcmp(intern_str(&st->in, ug->ids[i]), g) == 0)
            return true;
    return false;
}

static void deny_reason(const ks_rbac *st, const dctx *c, const ks_rbac_user *user,
                        const ks_rbac_request *req, const ugroups *ug, bool anonymous,
                        const int *phases, int nphases, const uint32_t *scopes,
                        ks_rbac_decision *out)
{
    rbuf b = {.p = out->reason, .cap = sizeof(out->reason)};
    const char *implicit = anonymous ? GROUP_UNAUTHENTICATED : GROUP_AUTHENTICATED;
    bool first = true;

    /* Every group the decision considered, once each: the token's, then
     * User.spec.groups and GroupBinding memberships (ug), then the implicit
     * group, which a token usually carries already. The list stops where
     * the reason is cut, which also bounds the duplicate checks. */
    rb_lit(&b, "RBAC: no rules authorize user ");
    rb_q(&b, anonymous ? ANONYMOUS : S(user->name));
    rb_lit(&b, " with groups [");
    for (size_t i = 0; i < user->ngroups && !b.cut; i++) {
        if (group_listed(st, user, i, NULL, 0, S(user->groups[i])))
            continue;
        rb_s(&b, first ? "" : " ");
        rb_q(&b, S(user->groups[i]));
        first = false;
    }
    for (uint32_t i = 0; ug != NULL && i < ug->n && !b.cut; i++) {
        const char *g = intern_str(&st->in, ug->ids[i]);
        if (group_listed(st, user, user->ngroups, ug, i, g))
            continue;
        rb_s(&b, first ? "" : " ");
        rb_q(&b, g);
        first = false;
    }
    if (!b.cut && !group_listed(st, user, user->ngroups, ug, ug ? ug->n : 0, implicit)) {
        rb_s(&b, first ? "" : " ");
        rb_q(&b, implicit);
    }
    rb_lit(&b, "] to ");
    rb_q(&b, S(req->verb));
    if (req->is_resource_request) {
        /* upstream's form: "resource.group/subresource" */
        char res[256];
        rbuf r = {.p = res, .cap = sizeof(res)};
        rb_s(&r, S(req->resource));
        if (S(req->api_group)[0]) {
            rb_lit(&r, ".");
            rb_s(&r, req->api_group);
        }
        if (S(req->subresource)[0]) {
            rb_lit(&r, "/");
            rb_s(&r, req->subresource);
        }
        rb_end(&r);
        rb_lit(&b, " resource ");
        rb_q(&b, res);
        if (S(req->name)[0]) {
            rb_lit(&b, " named ");
            rb_q(&b, req->name);
        }
        switch (req->scope) {
        case KS_RBAC_SCOPE_NAMESPACE:
            rb_lit(&b, " in namespace ");
            rb_q(&b, S(req->namespace));
            break;
        case KS_RBAC_SCOPE_WORKSPACE:
            rb_lit(&b, " in workspace ");
            rb_q(&b, S(req->workspace));
            break;
        case KS_RBAC_SCOPE_CLUSTER:
            rb_lit(&b, " cluster scope");
            break;
        default:
            rb_lit(&b, " global-wide");
        }
    } else {
        rb_lit(&b, " nonResourceURL ");
        rb_q(&b, S(req->path));
    }
    rb_lit(&b, "; checked ");
    for (int i = 0; i < nphases; i++) {
        rb_s(&b, i ? ", " : "");
        switch (phases[i]) {
        case K_GLOBAL:
            rb_lit(&b, "GlobalRoleBindings");
            break;
        case K_WORKSPACE:
            if (scopes[i] == NOID && req->scope == KS_RBAC_SCOPE_NAMESPACE) {
                rb_lit(&b, "no WorkspaceRoleBindings (namespace ");
                rb_q(&b, S(req->namespace));
                rb_lit(&b, " has no workspace)");
            } else {
                rb_lit(&b, "WorkspaceRoleBindings of workspace ");
                rb_q(&b, scopes[i] == NOID ? S(req->workspace) : intern_str(&st->in, scopes[i]));
            }
            break;
        case K_NAMESPACE:
            rb_lit(&b, "RoleBindings in namespace ");
            rb_q(&b, S(req->namespace));
            break;
        default:
            rb_lit(&b, "ClusterRoleBindings");
        }
    }
    for (uint32_t i = 0; i < c->nmissing; i++) {
        rb_s(&b, i ? ", " : "; missing role: ");
        rb_s(&b, c->missing[i]->desc);
    }
    if (c->nmissing_all > c->nmissing)
        rb_lit(&b, " and more");
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
    c.scan = scan;

    pthread_rwlock_t *lock = rd_lock(st);
    /* subjects: the user, the token's groups, User.spec.groups, the implicit group */
    uid = intern_find(&st->in, anonymous ? ANONYMOUS : user->name);
    add_subject(st, &c, S_USER, uid);
    for (size_t i = 0; i < user->ngroups; i++)
        if (user->groups[i] != NULL)
            add_subject(st, &c, S_GROUP, intern_find(&st->in, user->groups[i]));
    if (!anonymous && uid != NOID && (ug = st->in.ent[uid].groups) != NULL)
        for (uint32_t i = 0; i < ug->n; i++)
            add_subject(st, &c, S_GROUP, ug->ids[i]);
    add_subject(st, &c, S_GROUP,
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
        q.name_s = S(req->name);
        q.in = &st->in;
    } else {
        /* non-resource rules' verbs were lower-cased at compile time */
        char vb[64];
        const char *v = S(req->verb);
        size_t n = 0;
        bool upper = false;
        for (; v[n]; n++)
            upper |= v[n] >= 'A' && v[n] <= 'Z';
        if (!upper) {
            q.verb = intern_find(&st->in, v);
        } else if (n < sizeof(vb)) {
            for (size_t i = 0; i <= n; i++)
                vb[i] = (v[i] >= 'A' && v[i] <= 'Z') ? (char)(v[i] - 'A' + 'a') : v[i];
            q.verb = intern_find(&st->in, vb);
        } else {
            q.verb = NOID; /* an upper-case "verb" of 64 bytes or more: no method */
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
            phases[nphases] = K_WORKSPACE;
            scopes[nphases++] = ns == NOID ? NOID : st->in.ent[ns].ws;
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
        rb_lit(&r, "RBAC: allowed by ");
        rb_s(&r, b->desc);
        rb_lit(&r, " to ");
        rb_s(&r, subj_kinds[c.subj[which].kind]);
        rb_lit(&r, " ");
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
    pthread_rwlock_unlock(lock);
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
