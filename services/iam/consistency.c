/* consistency.c: read-your-writes over the mirror (see iam.h). */
#include <string.h>
#include <time.h>

#include "iam.h"

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* 1 when the mirror shows the object at rv (or, rv NULL, no object). */
static int visible(iam *s, const char *resource, const char *ns, const char *name, const char *rv)
{
    json_t *obj = NULL;
    const char *have;
    int ok;

    if (ks_mirror_cache_get(s->mirror, resource, ns, name, &obj, NULL) != KS_OK)
        return rv == NULL;
    if (rv == NULL) {
        json_decref(obj);
        return 0;
    }
    have = json_string_value(json_object_get(json_object_get(obj, "metadata"), "resourceVersion"));
    ok = have != NULL && strcmp(have, rv) == 0;
    json_decref(obj);
    return ok;
}

ks_status iam_wait_visible(iam *s, const char *resource, const char *ns, const char *name,
                           const char *rv)
{
    int64_t deadline = mono_ms() + s->cfg->read_wait_ms;
    struct timespec pause = {0, 2 * 1000 * 1000};

    /* The mirror usually follows within a millisecond (DESIGN.md §11):
     * poll briefly rather than wire a wakeup through the cache. */
    while (!visible(s, resource, ns, name, rv)) {
        if (mono_ms() >= deadline)
            return KS_FAIL(KS_ERR_TIMEOUT, "the mirror did not show %s %s/%s in %lld ms",
                           resource, ns, name, s->cfg->read_wait_ms);
        nanosleep(&pause, NULL);
    }
    return KS_OK;
}
