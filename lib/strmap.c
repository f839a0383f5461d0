#include "strmap.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

typedef struct strmap_entry {
    char *key;
    void *value;
    uint64_t hash;
    struct strmap_entry *next;
} strmap_entry;

struct ks_strmap {
    strmap_entry **buckets;
    size_t nbuckets;   /* a power of two */
    size_t size;
    void (*free_value)(void *);
};

/* FNV-1a: short keys, no adversarial input needs more (keys are object names
 * already validated by kube-apiserver). */
static uint64_t strmap_hash(const char *s)
{
    uint64_t h = 1469598103934665603ULL;
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ULL;
    }
    return h;
}

ks_strmap *ks_strmap_create(void (*free_value)(void *))
{
    ks_strmap *m = calloc(1, sizeof(*m));
    if (m == NULL)
        return NULL;
    m->nbuckets = 16;
    m->buckets = calloc(m->nbuckets, sizeof(*m->buckets));
    if (m->buckets == NULL) {
        free(m);
        return NULL;
    }
    m->free_value = free_value;
    return m;
}

void ks_strmap_destroy(ks_strmap *m)
{
    if (m == NULL)
        return;
    for (size_t i = 0; i < m->nbuckets; i++) {
        strmap_entry *e = m->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            if (m->free_value)
                m->free_value(e->value);
            free(e->key);
            free(e);
        }
    }
    free(m->buckets);
    free(m);
}

static strmap_entry **strmap_find(const ks_strmap *m, const char *key, uint64_t h)
{
    strmap_entry **pp = &m->buckets[h & (m->nbuckets - 1)];
    for (; *pp != NULL; pp = &(*pp)->next) {
        if ((*pp)->hash == h && strcmp((*pp)->key, key) == 0)
            break;
    }
    return pp;
}

static void strmap_grow(ks_strmap *m)
{
    size_t n = m->nbuckets * 2;
    strmap_entry **b = calloc(n, sizeof(*b));

    if (b == NULL)
        return; /* stay at the current size: slower, still correct */
    for (size_t i = 0; i < m->nbuckets; i++) {
        strmap_entry *e = m->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next;
            e->next = b[e->hash & (n - 1)];
            b[e->hash & (n - 1)] = e;
        }
    }
    free(m->buckets);
    m->buckets = b;
    m->nbuckets = n;
}

ks_status ks_strmap_put(ks_strmap *m, const char *key, void *value)
{
    uint64_t h = strmap_hash(key);
    strmap_entry **pp = strmap_find(m, key, h);
    strmap_entry *e;

    if (*pp != NULL) {
        if (m->free_value && (*pp)->value != value)
            m->free_value((*pp)->value);
        (*pp)->value = value;
        return KS_OK;
    }
    e = calloc(1, sizeof(*e));
    if (e == NULL || (e->key = strdup(key)) == NULL) {
        free(e);
        return KS_FAIL(KS_ERR_NOMEM, "map entry");
    }
    e->value = value;
    e->hash = h;
    *pp = e;
    m->size++;
    if (m->size > m->nbuckets)
        strmap_grow(m);
    return KS_OK;
}

void *ks_strmap_get(const ks_strmap *m, const char *key)
{
    strmap_entry **pp = strmap_find(m, key, strmap_hash(key));
    return *pp ? (*pp)->value : NULL;
}

void *ks_strmap_take(ks_strmap *m, const char *key)
{
    strmap_entry **pp = strmap_find(m, key, strmap_hash(key));
    strmap_entry *e = *pp;
    void *v;

    if (e == NULL)
        return NULL;
    *pp = e->next;
    v = e->value;
    free(e->key);
    free(e);
    m->size--;
    return v;
}

int ks_strmap_remove(ks_strmap *m, const char *key)
{
    strmap_entry **pp = strmap_find(m, key, strmap_hash(key));
    strmap_entry *e = *pp;

    if (e == NULL)
        return 0;
    *pp = e->next;
    if (m->free_value)
        m->free_value(e->value);
    free(e->key);
    free(e);
    m->size--;
    return 1;
}

size_t ks_strmap_size(const ks_strmap *m)
{
    return m->size;
}

void ks_strmap_each(ks_strmap *m, int (*fn)(const char *key, void *value, void *arg), void *arg)
{
    for (size_t i = 0; i < m->nbuckets; i++) {
        strmap_entry *e = m->buckets[i], *next;
        for (; e != NULL; e = next) {
            next = e->next; /* fn may remove the visited key */
            if (fn(e->key, e->value, arg))
                return;
        }
    }
}
