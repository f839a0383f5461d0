/* strmap.h: a hash map from NUL-terminated strings to pointers.
 *
 * Keys are copied; values are the caller's (the map never frees them, except
 * through the optional free function given at create). Not thread-safe:
 * callers lock. Iteration order is unspecified; the map must not be modified
 * during ks_strmap_each except by removing the visited key. */
#ifndef KS_STRMAP_H
#define KS_STRMAP_H

#include <stddef.h>

#include "status.h"

typedef struct ks_strmap ks_strmap;

/* free_value (may be NULL) is called on values that are replaced, removed
 * or still present at destroy. */
ks_strmap *ks_strmap_create(void (*free_value)(void *));
void ks_strmap_destroy(ks_strmap *m);                     /* NULL is a no-op */

/* Insert or replace. KS_ERR_NOMEM leaves the map unchanged. */
ks_status ks_strmap_put(ks_strmap *m, const char *key, void *value)
    __attribute__((warn_unused_result));
void *ks_strmap_get(const ks_strmap *m, const char *key);   /* NULL if absent */
/* Remove and return the value without freeing it (NULL if absent). */
void *ks_strmap_take(ks_strmap *m, const char *key);
/* Remove and free the value. Returns 1 if the key was present. */
int ks_strmap_remove(ks_strmap *m, const char *key);
size_t ks_strmap_size(const ks_strmap *m);

/* Call fn for every entry; stop early when fn returns non-zero. */
void ks_strmap_each(ks_strmap *m, int (*fn)(const char *key, void *value, void *arg), void *arg);

#endif
