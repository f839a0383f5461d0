/* Unit tests: lib/mirror_cache.c without a server.
 *
 * A cache from ks_mirror_cache_create_local is fed KV watch entries through
 * ks_mirror_cache_apply, the same code path the watch thread runs. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "mirror_cache.h"
#include "subject.h"

#define USERS "iam.kubesphere.io/users"
#define RBS "iam.kubesphere.io/rolebindings"
#define NSS "/namespaces"
#define WS_LABEL "kubesphere.io/workspace"

static uint64_t next_rev = 1;

/* Split "<group>/<resource>" into buffers. */
static void split(const char *resource, char *group, char *res)
{
    const char *slash = strchr(resource, '/');
    memcpy(group, resource, (size_t)(slash - resource));
    group[slash - resource] = '\0';
    snprintf(res, 256, "%s", slash + 1);
}

static void make_key(const char *resource, const char *ns, const char *name, char *key,
                     size_t cap)
{
    char group[256], res[256];
    split(resource, group, res);
    assert_int_equal(ks_subject_object_key(group, res, ns, name, key, cap), KS_OK);
}

/* Apply a raw value for a key. */
static void apply_raw(ks_mirror_cache *c, const char *key, const void *data, size_t len,
                      ks_bus_kv_op op)
{
    ks_bus_kv_entry e = {.key = key, .value = data, .len = len, .revision = next_rev++,
                         .created_unix_ns = 0, .op = op};
    ks_mirror_cache_apply(c, &e);
}

/* Pack an ObjectEvent for object_json and apply it as a put. */
static void apply_event(ks_mirror_cache *c, int type, const char *resource, const char *ns,
                        const char *name, const char *uid, const char *rv,
                        const char *object_json, int64_t observed_ms)
{
    Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
    char key[1024];
    uint8_t *buf = NULL;
    size_t len = 0;

    ev.type = type;
    ev.resource = (char *)resource;
    ev.namespace_ = (char *)ns;
    ev.name = (char *)name;
    ev.uid = (char *)uid;
    ev.resource_version = (char *)rv;
    ev.object.data = (uint8_t *)object_json;
    ev.object.len = object_json ? strlen(object_json) : 0;
    ev.observed_unix_ms = observed_ms;
    assert_int_equal(ks_codec_pack(&ev.base, &buf, &len), KS_OK);
    make_key(resource, ns, name, key, sizeof(key));
    apply_raw(c, key, buf, len, KS_BUS_KV_PUT);
    free(buf);
}

/* An object JSON with optional labels ("k=v,k2=v2" or NULL). */
static void obj_json(char *out, size_t cap, const char *ns, const char *name, const char *rv,
                     const char *labels)
{
    json_t *o = json_pack("{s:s,s:{s:s,s:s,s:s}}", "kind", "Thing", "metadata", "name", name,
                          "resourceVersion", rv, "uid", "uid-x");
    char *s;
    if (ns[0])
        json_object_set_new(json_object_get(o, "metadata"), "namespace", json_string(ns));
    if (labels) {
        json_t *l = json_object();
        char buf[512], *tok, *end;
        snprintf(buf, sizeof(buf), "%s", labels);
        for (tok = buf; tok; tok = end) {
            char *eq = strchr(tok, '=');
            end = strchr(tok, ',');
            if (end)
                *end++ = '\0';
            *eq = '\0';
            json_object_set_new(l, tok, json_string(eq + 1));
        }
        json_object_set_new(json_object_get(o, "metadata"), "labels", l);
    }
    s = json_dumps(o, JSON_COMPACT);
    snprintf(out, cap, "%s", s);
    free(s);
    json_decref(o);
}

static void put(ks_mirror_cache *c, const char *resource, const char *ns, const char *name,
                const char *rv, const char *labels)
{
    char js[2048];
    obj_json(js, sizeof(js), ns, name, rv, labels);
    apply_event(c, 1, resource, ns, name, "", rv, js, 0);
}

static void del(ks_mirror_cache *c, const char *resource, const char *ns, const char *name,
                ks_bus_kv_op op)
{
    char key[1024];
    make_key(resource, ns, name, key, sizeof(key));
    apply_raw(c, key, NULL, 0, op);
}

static const char *rv_of(const json_t *o)
{
    return json_string_value(json_object_get(json_object_get(o, "metadata"), "resourceVersion"));
}

static const char *name_of(const json_t *o)
{
    return json_string_value(json_object_get(json_object_get(o, "metadata"), "name"));
}

static int setup(void **state)
{
    ks_log_init("unit", KS_LOG_ERROR); /* the decode-error warnings are expected */
    ks_metrics_reset();
    return 0;
}

static ks_mirror_cache *new_cache(const char *const *resources)
{
    ks_mirror_cache *c = NULL;
    assert_int_equal(ks_mirror_cache_create_local(NULL, resources, &c), KS_OK);
    assert_non_null(c);
    return c;
}

/* ---- recording handler ---- */

typedef struct {
    int n;
    ks_mirror_change type[32];
    char resource[32][64], ns[32][64], name[32][64], old_rv[32][16], new_rv[32][16];
} rec;

static void record(ks_mirror_change type, const char *resource, const char *ns, const char *name,
                   const json_t *old_obj, const json_t *new_obj, void *arg)
{
    rec *r = arg;
    int i = r->n++;
    assert_true(i < 32);
    r->type[i] = type;
    snprintf(r->resource[i], 64, "%s", resource);
    snprintf(r->ns[i], 64, "%s", ns);
    snprintf(r->name[i], 64, "%s", name);
    snprintf(r->old_rv[i], 16, "%s", old_obj ? rv_of(old_obj) : "-");
    snprintf(r->new_rv[i], 16, "%s", new_obj ? rv_of(new_obj) : "-");
}

/* ---- tests ---- */

static void test_create_destroy(void **state)
{
    const char *bad1[] = {"users", NULL};
    const char *bad2[] = {"a/b/c", NULL};
    const char *empty[] = {NULL};
    ks_mirror_cache *c = NULL;

    ks_mirror_cache_destroy(NULL);
    assert_int_equal(ks_mirror_cache_create_local(NULL, bad1, &c), KS_ERR_INVALID);
    assert_int_equal(ks_mirror_cache_create_local(NULL, bad2, &c), KS_ERR_INVALID);
    assert_int_equal(ks_mirror_cache_create_local(NULL, empty, &c), KS_ERR_INVALID);
    assert_int_equal(ks_mirror_cache_create_local("bad.bucket", NULL, &c), KS_ERR_INVALID);
    assert_int_equal(ks_mirror_cache_create(NULL, NULL, NULL, &c), KS_ERR_INVALID);
    assert_null(c);
    c = new_cache(NULL);
    ks_mirror_cache_destroy(c);
}

static void test_synced_and_ready(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    char why[256] = "";

    assert_int_equal(ks_mirror_cache_synced(c), 0);
    assert_int_equal(ks_mirror_cache_ready(c, why, sizeof(why)), 0);
    assert_non_null(strstr(why, "KS_OBJECTS"));
    assert_int_equal(ks_mirror_cache_wait_synced(c, 20), KS_ERR_TIMEOUT);
    put(c, USERS, "", "admin", "1", NULL);
    assert_int_equal(ks_mirror_cache_synced(c), 0);
    ks_mirror_cache_apply(c, NULL);
    assert_int_equal(ks_mirror_cache_synced(c), 1);
    assert_int_equal(ks_mirror_cache_ready(c, why, sizeof(why)), 1);
    assert_int_equal(ks_mirror_cache_wait_synced(c, 0), KS_OK);
    assert_int_equal(ks_metric_value(ks_metrics_gauge("ks_mirror_synced", NULL,
                                                      "bucket=\"KS_OBJECTS\"")), 1);
    ks_mirror_cache_destroy(c);
}

static void test_namespaced_and_cluster_scoped(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    json_t *o = NULL, *items = NULL;
    uint64_t rev = 0;

    put(c, USERS, "", "admin", "10", NULL);
    put(c, USERS, "", "system:a.b_c", "11", NULL); /* escaped in the key, not here */
    put(c, RBS, "ns-b", "rb2", "12", NULL);
    put(c, RBS, "ns-a", "rb1", "13", NULL);
    put(c, RBS, "ns-a", "rb0", "14", NULL);
    put(c, NSS, "", "kube-system", "15", NULL);

    assert_int_equal(ks_mirror_cache_get(c, USERS, NULL, "admin", &o, &rev), KS_OK);
    assert_string_equal(rv_of(o), "10");
    assert_true(rev > 0);
    assert_true(o->refcount >= 2); /* the index's and ours */
    json_decref(o);
    assert_int_equal(ks_mirror_cache_get(c, USERS, "", "system:a.b_c", &o, NULL), KS_OK);
    json_decref(o);
    assert_int_equal(ks_mirror_cache_get(c, NSS, "", "kube-system", &o, NULL), KS_OK);
    json_decref(o);
    assert_int_equal(ks_mirror_cache_get(c, RBS, "ns-a", "rb1", &o, NULL), KS_OK);
    json_decref(o);
    o = NULL;
    assert_int_equal(ks_mirror_cache_get(c, RBS, "ns-b", "rb1", &o, NULL), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_mirror_cache_get(c, RBS, NULL, "rb1", &o, NULL), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_mirror_cache_get(c, "x/y", NULL, "rb1", &o, NULL), KS_ERR_NOT_FOUND);
    assert_null(o);

    assert_int_equal(ks_mirror_cache_list(c, RBS, NULL, &items), KS_OK);
    assert_int_equal(json_array_size(items), 3);
    assert_string_equal(name_of(json_array_get(items, 0)), "rb0"); /* ns-a/rb0 */
    assert_string_equal(name_of(json_array_get(items, 1)), "rb1"); /* ns-a/rb1 */
    assert_string_equal(name_of(json_array_get(items, 2)), "rb2"); /* ns-b/rb2 */
    json_decref(items);
    assert_int_equal(ks_mirror_cache_list(c, RBS, "ns-a", &items), KS_OK);
    assert_int_equal(json_array_size(items), 2);
    json_decref(items);
    assert_int_equal(ks_mirror_cache_list(c, RBS, "nope", &items), KS_OK);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);
    assert_int_equal(ks_mirror_cache_list(c, "no/such", NULL, &items), KS_OK);
    assert_int_equal(json_array_size(items), 0);
    json_decref(items);

    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 6);
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 3);
    assert_int_equal(ks_mirror_cache_count(c, RBS, "ns-a"), 2);
    assert_int_equal(ks_mirror_cache_count(c, USERS, ""), 2);
    assert_int_equal(ks_mirror_cache_count(c, NSS, NULL), 1);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 0);
    ks_mirror_cache_destroy(c);
}

static void test_get_reference_outlives_change(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    json_t *o = NULL;

    put(c, USERS, "", "admin", "1", NULL);
    assert_int_equal(ks_mirror_cache_get(c, USERS, "", "admin", &o, NULL), KS_OK);
    put(c, USERS, "", "admin", "2", NULL);
    del(c, USERS, "", "admin", KS_BUS_KV_DELETE);
    ks_mirror_cache_destroy(c);
    assert_string_equal(rv_of(o), "1"); /* still ours, valid after destroy */
    json_decref(o);
}

static void test_changes_and_callbacks(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    rec r = {0};
    uint64_t g0, g;
    int id = -1;
    char key[512], js[1024];
    json_t *o = NULL;

    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &r, &id), KS_OK);
    g0 = ks_mirror_cache_generation(c);

    put(c, USERS, "", "alice", "1", NULL);
    assert_int_equal(r.n, 1);
    assert_int_equal(r.type[0], KS_MIRROR_ADDED);
    assert_string_equal(r.resource[0], USERS);
    assert_string_equal(r.ns[0], "");
    assert_string_equal(r.name[0], "alice");
    assert_string_equal(r.old_rv[0], "-");
    assert_string_equal(r.new_rv[0], "1");
    assert_int_equal(ks_mirror_cache_generation(c), g0 + 1);

    put(c, USERS, "", "alice", "2", NULL);
    assert_int_equal(r.n, 2);
    assert_int_equal(r.type[1], KS_MIRROR_MODIFIED);
    assert_string_equal(r.old_rv[1], "1");
    assert_string_equal(r.new_rv[1], "2");
    assert_int_equal(ks_mirror_cache_generation(c), g0 + 2);

    /* The same version again (a replay, a new leader): not a change. */
    g = ks_mirror_cache_generation(c);
    put(c, USERS, "", "alice", "2", NULL);
    assert_int_equal(r.n, 2);
    assert_int_equal(ks_mirror_cache_generation(c), g);

    /* A KV delete marker. */
    del(c, USERS, "", "alice", KS_BUS_KV_DELETE);
    assert_int_equal(r.n, 3);
    assert_int_equal(r.type[2], KS_MIRROR_DELETED);
    assert_string_equal(r.old_rv[2], "2");
    assert_string_equal(r.new_rv[2], "-");
    assert_int_equal(ks_mirror_cache_get(c, USERS, "", "alice", &o, NULL), KS_ERR_NOT_FOUND);
    assert_int_equal(ks_mirror_cache_generation(c), g + 1);

    /* Deleting what is not there changes nothing. */
    del(c, USERS, "", "alice", KS_BUS_KV_DELETE);
    del(c, USERS, "", "nobody", KS_BUS_KV_PURGE);
    assert_int_equal(r.n, 3);
    assert_int_equal(ks_mirror_cache_generation(c), g + 1);

    /* A purge marker, in a namespace. */
    put(c, RBS, "ns1", "rb", "5", NULL);
    del(c, RBS, "ns1", "rb", KS_BUS_KV_PURGE);
    assert_int_equal(r.n, 5);
    assert_int_equal(r.type[4], KS_MIRROR_DELETED);
    assert_string_equal(r.ns[4], "ns1");
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 0);

    /* An ObjectEvent of type DELETED put as a value also removes. */
    put(c, RBS, "ns1", "rb", "6", NULL);
    obj_json(js, sizeof(js), "ns1", "rb", "7", NULL);
    apply_event(c, KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_DELETED, RBS, "ns1", "rb", "", "7", js, 0);
    assert_int_equal(r.n, 7);
    assert_int_equal(r.type[6], KS_MIRROR_DELETED);
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 0);

    /* After removal, no more calls. */
    ks_mirror_cache_remove_handler(c, id);
    ks_mirror_cache_remove_handler(c, 999);
    ks_mirror_cache_remove_handler(c, -1);
    put(c, USERS, "", "bob", "1", NULL);
    assert_int_equal(r.n, 7);

    make_key(USERS, "", "bob", key, sizeof(key));
    assert_non_null(strstr(key, "iam_kubesphere_io.users._.bob"));
    ks_mirror_cache_destroy(c);
}

static void test_handler_resource_filter(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    rec users = {0}, all = {0};

    assert_int_equal(ks_mirror_cache_add_handler(c, USERS, record, &users, NULL), KS_OK);
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &all, NULL), KS_OK);
    put(c, USERS, "", "u1", "1", NULL);
    put(c, RBS, "n", "rb", "1", NULL);
    put(c, NSS, "", "n", "1", NULL);
    assert_int_equal(users.n, 1);
    assert_int_equal(all.n, 3);
    assert_string_equal(all.resource[2], NSS);
    ks_mirror_cache_destroy(c);
}

/* A handler that looks the object up (no deadlock: handlers run without the
 * index lock) and removes itself. */
typedef struct {
    ks_mirror_cache *c;
    int id;
    int calls;
    int found;
} reentrant_ctx;

static void reentrant(ks_mirror_change type, const char *resource, const char *ns,
                      const char *name, const json_t *old_obj, const json_t *new_obj, void *arg)
{
    reentrant_ctx *x = arg;
    json_t *o = NULL;
    x->calls++;
    if (ks_mirror_cache_get(x->c, resource, ns, name, &o, NULL) == KS_OK) {
        x->found = o == new_obj;
        json_decref(o);
    }
    ks_mirror_cache_remove_handler(x->c, x->id);
}

static void test_handler_reentry(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    reentrant_ctx x = {.c = c};

    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, reentrant, &x, &x.id), KS_OK);
    put(c, USERS, "", "u1", "1", NULL);
    put(c, USERS, "", "u2", "1", NULL);
    assert_int_equal(x.calls, 1);
    assert_int_equal(x.found, 1);
    ks_mirror_cache_destroy(c);
}

static void test_handler_table_full(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    rec r = {0};
    int id = -1;

    for (int i = 0; i < KS_MIRROR_MAX_HANDLERS; i++)
        assert_int_equal(ks_mirror_cache_add_handler(c, USERS, record, &r, &id), KS_OK);
    assert_int_equal(ks_mirror_cache_add_handler(c, USERS, record, &r, NULL), KS_ERR_TOO_LARGE);
    ks_mirror_cache_remove_handler(c, id);
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &r, &id), KS_OK);
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, NULL, &r, NULL), KS_ERR_INVALID);
    ks_mirror_cache_destroy(c);
}

static void test_handler_replays_existing(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    rec users = {0}, all = {0};

    put(c, USERS, "", "u1", "1", NULL);
    put(c, USERS, "", "u2", "1", NULL);
    put(c, RBS, "n", "rb", "1", NULL);
    del(c, USERS, "", "u2", KS_BUS_KV_DELETE);
    assert_int_equal(ks_mirror_cache_add_handler(c, USERS, record, &users, NULL), KS_OK);
    assert_int_equal(users.n, 1);
    assert_int_equal(users.type[0], KS_MIRROR_ADDED);
    assert_string_equal(users.name[0], "u1");
    assert_string_equal(users.old_rv[0], "-");
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &all, NULL), KS_OK);
    assert_int_equal(all.n, 2);
    put(c, USERS, "", "u1", "2", NULL);
    assert_int_equal(users.n, 2);
    assert_int_equal(users.type[1], KS_MIRROR_MODIFIED);
    assert_int_equal(all.n, 3);
    ks_mirror_cache_destroy(c);
}

/* A handler that registers another one while a change is dispatched: the new
 * one replays the state (including that change) and is not called again for
 * the change in flight. */
static ks_mirror_cache *nest_cache;
static rec nest_rec;
static int nest_added;

static void nester(ks_mirror_change type, const char *resource, const char *ns,
                   const char *name, const json_t *old_obj, const json_t *new_obj, void *arg)
{
    if (!nest_added) {
        nest_added = 1;
        assert_int_equal(ks_mirror_cache_add_handler(nest_cache, NULL, record, &nest_rec, NULL),
                         KS_OK);
    }
}

static void test_handler_added_during_dispatch(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);

    nest_cache = c;
    memset(&nest_rec, 0, sizeof(nest_rec));
    nest_added = 0;
    put(c, USERS, "", "u1", "1", NULL);
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, nester, NULL, NULL), KS_OK);
    assert_int_equal(nest_added, 1); /* during nester's own replay */
    assert_int_equal(nest_rec.n, 1);   /* u1 replayed to the nested handler */
    put(c, USERS, "", "u1", "2", NULL);
    assert_int_equal(nest_rec.n, 2);
    assert_int_equal(nest_rec.type[1], KS_MIRROR_MODIFIED);
    ks_mirror_cache_destroy(c);
}

static size_t names_by_label(ks_mirror_cache *c, const char *resource, const char *k,
                             const char *v, char *out, size_t cap)
{
    json_t *items = NULL, *it;
    size_t i, n;
    out[0] = '\0';
    assert_int_equal(ks_mirror_cache_list_by_label(c, resource, k, v, &items), KS_OK);
    json_array_foreach(items, i, it) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", l ? "," : "", name_of(it));
    }
    n = json_array_size(items);
    json_decref(items);
    return n;
}

static void test_label_index(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    char names[512];
    char js[1024];

    put(c, NSS, "", "ns1", "1", WS_LABEL "=ws-a");
    put(c, NSS, "", "ns2", "1", WS_LABEL "=ws-a,team=x");
    put(c, NSS, "", "ns3", "1", WS_LABEL "=ws-b");
    put(c, NSS, "", "ns4", "1", NULL);
    put(c, RBS, "ns1", "rb", "1", WS_LABEL "=ws-a"); /* another resource */
    put(c, "iam.kubesphere.io/globalrolebindings", "", "alice-admin", "1",
        "iam.kubesphere.io/user-ref=alice");

    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-a", names, sizeof(names)), 2);
    assert_string_equal(names, "ns1,ns2");
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-b", names, sizeof(names)), 1);
    assert_string_equal(names, "ns3");
    assert_int_equal(names_by_label(c, NSS, "team", "x", names, sizeof(names)), 1);
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-c", names, sizeof(names)), 0);
    assert_int_equal(names_by_label(c, RBS, WS_LABEL, "ws-a", names, sizeof(names)), 1);
    assert_int_equal(names_by_label(c, "iam.kubesphere.io/globalrolebindings",
                                    "iam.kubesphere.io/user-ref", "alice", names,
                                    sizeof(names)), 1);
    assert_string_equal(names, "alice-admin");

    /* ns1 moves to ws-b */
    put(c, NSS, "", "ns1", "2", WS_LABEL "=ws-b");
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-a", names, sizeof(names)), 1);
    assert_string_equal(names, "ns2");
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-b", names, sizeof(names)), 2);
    assert_string_equal(names, "ns1,ns3");

    /* ns2 loses its labels; ns4 gains one */
    put(c, NSS, "", "ns2", "2", NULL);
    put(c, NSS, "", "ns4", "2", WS_LABEL "=ws-a");
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-a", names, sizeof(names)), 1);
    assert_string_equal(names, "ns4");
    assert_int_equal(names_by_label(c, NSS, "team", "x", names, sizeof(names)), 0);

    /* delete removes from the index */
    del(c, NSS, "", "ns3", KS_BUS_KV_DELETE);
    assert_int_equal(names_by_label(c, NSS, WS_LABEL, "ws-b", names, sizeof(names)), 1);
    assert_string_equal(names, "ns1");

    /* key/value boundaries are exact: "a=b"+"c" is not "a"+"b=c";
     * non-string label values are not indexed */
    obj_json(js, sizeof(js), "", "odd", "1", NULL);
    {
        json_t *o = json_loads(js, 0, NULL);
        json_t *l = json_pack("{s:s,s:i}", "a", "b=c", "num", 5);
        char *s;
        json_object_set_new(json_object_get(o, "metadata"), "labels", l);
        s = json_dumps(o, JSON_COMPACT);
        apply_event(c, 1, NSS, "", "odd", "", "1", s, 0);
        free(s);
        json_decref(o);
    }
    assert_int_equal(names_by_label(c, NSS, "a", "b=c", names, sizeof(names)), 1);
    assert_int_equal(names_by_label(c, NSS, "a=b", "c", names, sizeof(names)), 0);
    assert_int_equal(names_by_label(c, NSS, "num", "5", names, sizeof(names)), 0);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 0);
    ks_mirror_cache_destroy(c);
}

static int count_visit(const ks_mirror_item *it, void *arg)
{
    int *n = arg;
    assert_non_null(it->object);
    assert_string_equal(it->uid, "uid-x");
    assert_true(it->revision > 0);
    assert_string_equal(it->resource, NSS);
    return ++*n >= 2; /* stop after two */
}

static int check_item(const ks_mirror_item *it, void *arg)
{
    assert_string_equal(it->resource, RBS);
    assert_string_equal(it->namespace_, "ns-a");
    assert_string_equal(it->name, "rb");
    assert_string_equal(it->uid, "u-123");         /* from the ObjectEvent */
    assert_string_equal(it->resource_version, "9"); /* from the ObjectEvent */
    assert_int_equal(it->observed_unix_ms, 1234);
    (*(int *)arg)++;
    return 0;
}

static void test_foreach(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    char js[1024];
    int n = 0;

    put(c, NSS, "", "a", "1", "x=1");
    put(c, NSS, "", "b", "1", "x=1");
    put(c, NSS, "", "c", "1", "x=1");
    assert_int_equal(ks_mirror_cache_foreach(c, NSS, NULL, count_visit, &n), 2);
    n = 0;
    assert_int_equal(ks_mirror_cache_foreach_by_label(c, NSS, "x", "1", count_visit, &n), 2);
    n = 0;
    assert_int_equal(ks_mirror_cache_foreach(c, "none/x", NULL, count_visit, &n), 0);
    assert_int_equal(ks_mirror_cache_foreach_by_label(c, NSS, "x", "2", count_visit, &n), 0);

    obj_json(js, sizeof(js), "ns-a", "rb", "9", NULL);
    apply_event(c, 2, RBS, "ns-a", "rb", "u-123", "9", js, 1234);
    n = 0;
    assert_int_equal(ks_mirror_cache_foreach(c, RBS, "ns-a", check_item, &n), 1);
    assert_int_equal(ks_mirror_cache_foreach(c, RBS, NULL, check_item, &n), 1);
    assert_int_equal(ks_mirror_cache_foreach(c, RBS, "ns-b", check_item, &n), 0);
    assert_int_equal(n, 2);
    ks_mirror_cache_destroy(c);
}

static void test_undecodable_values(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    ks_metric *m = ks_metrics_counter("ks_mirror_decode_errors_total", NULL,
                                      "bucket=\"KS_OBJECTS\"");
    rec r = {0};
    char key[512], js[1024];
    const char garbage[] = "\xff\xff\xff\xff\x0f not protobuf";
    json_t *o = NULL;
    uint8_t *big;

    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &r, NULL), KS_OK);
    put(c, USERS, "", "alice", "1", NULL);
    assert_int_equal(r.n, 1);
    make_key(USERS, "", "alice", key, sizeof(key));

    apply_raw(c, key, garbage, sizeof(garbage) - 1, KS_BUS_KV_PUT);          /* not protobuf */
    apply_event(c, 2, USERS, "", "alice", "", "2", "{not json", 0);           /* bad JSON */
    apply_event(c, 2, USERS, "", "alice", "", "2", "[1,2]", 0);               /* not an object */
    apply_event(c, 2, USERS, "", "alice", "", "2", NULL, 0);                  /* no object */
    obj_json(js, sizeof(js), "", "alice", "2", NULL);
    {
        /* the ObjectEvent names another object than its key */
        Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
        uint8_t *buf = NULL;
        size_t len = 0;
        ev.type = 2;
        ev.resource = USERS;
        ev.name = "mallory";
        ev.object.data = (uint8_t *)js;
        ev.object.len = strlen(js);
        assert_int_equal(ks_codec_pack(&ev.base, &buf, &len), KS_OK);
        apply_raw(c, key, buf, len, KS_BUS_KV_PUT);
        free(buf);
    }
    big = calloc(1, KS_MIRROR_MAX_VALUE + 1);
    assert_non_null(big);
    apply_raw(c, key, big, KS_MIRROR_MAX_VALUE + 1, KS_BUS_KV_PUT);           /* over the cap */
    free(big);
    apply_raw(c, "not-a-mirror-key", js, strlen(js), KS_BUS_KV_PUT);          /* bad keys */
    apply_raw(c, "a.b.c.d.e", js, strlen(js), KS_BUS_KV_PUT);
    apply_raw(c, "a.b.c.=zz", js, strlen(js), KS_BUS_KV_PUT);
    apply_raw(c, "a.b.c.", js, strlen(js), KS_BUS_KV_PUT);

    assert_int_equal(ks_mirror_cache_decode_errors(c), 10);
    assert_int_equal(ks_metric_value(m), 10);
    assert_int_equal(r.n, 1); /* no change was reported */
    /* the last good version is kept */
    assert_int_equal(ks_mirror_cache_get(c, USERS, "", "alice", &o, NULL), KS_OK);
    assert_string_equal(rv_of(o), "1");
    json_decref(o);
    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 1);

    /* and a good value afterwards still applies */
    put(c, USERS, "", "alice", "3", NULL);
    assert_int_equal(r.n, 2);
    assert_int_equal(ks_mirror_cache_get(c, USERS, "", "alice", &o, NULL), KS_OK);
    assert_string_equal(rv_of(o), "3");
    json_decref(o);
    ks_mirror_cache_destroy(c);
}

static void test_resource_filter(void **state)
{
    const char *only[] = {USERS, NSS, USERS, NULL};
    ks_mirror_cache *c = new_cache(only);

    put(c, USERS, "", "u", "1", NULL);
    put(c, NSS, "", "n", "1", NULL);
    put(c, RBS, "n", "rb", "1", NULL);
    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 2);
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 0);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 0);
    ks_mirror_cache_destroy(c);
}

static void test_metrics(void **state)
{
    ks_mirror_cache *c = new_cache(NULL);
    const char *lab = "bucket=\"KS_OBJECTS\",resource=\"iam.kubesphere.io/users\"";
    ks_metric *objects = ks_metrics_gauge("ks_mirror_objects", NULL, lab);
    ks_metric *updates = ks_metrics_counter("ks_mirror_updates_total", NULL, lab);
    ks_metric *lag = ks_metrics_histogram("ks_mirror_lag_seconds", NULL, "bucket=\"KS_OBJECTS\"",
                                          NULL, 0);
    struct timespec ts;
    int64_t now_ms;
    char js[1024];
    char *text;

    put(c, USERS, "", "a", "1", NULL);
    put(c, USERS, "", "b", "1", NULL);
    put(c, USERS, "", "a", "2", NULL);
    assert_int_equal(ks_metric_value(objects), 2);
    assert_int_equal(ks_metric_value(updates), 3);
    assert_int_equal(ks_metric_value(lag), 0); /* not observed before synced */
    ks_mirror_cache_apply(c, NULL);
    clock_gettime(CLOCK_REALTIME, &ts);
    now_ms = (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    obj_json(js, sizeof(js), "", "c", "1", NULL);
    apply_event(c, 1, USERS, "", "c", "", "1", js, now_ms - 2000);
    assert_int_equal(ks_metric_value(lag), 1);
    assert_true(ks_metric_sum(lag) >= 2.0 && ks_metric_sum(lag) < 3.0);
    del(c, USERS, "", "b", KS_BUS_KV_DELETE);
    assert_int_equal(ks_metric_value(objects), 2);
    assert_int_equal(ks_metric_value(updates), 5);
    text = ks_metrics_render(NULL);
    assert_non_null(strstr(text, "ks_mirror_objects{bucket=\"KS_OBJECTS\",resource="
                                 "\"iam.kubesphere.io/users\"} 2"));
    free(text);
    ks_mirror_cache_destroy(c);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup(test_create_destroy, setup),
        cmocka_unit_test_setup(test_synced_and_ready, setup),
        cmocka_unit_test_setup(test_namespaced_and_cluster_scoped, setup),
        cmocka_unit_test_setup(test_get_reference_outlives_change, setup),
        cmocka_unit_test_setup(test_changes_and_callbacks, setup),
        cmocka_unit_test_setup(test_handler_resource_filter, setup),
        cmocka_unit_test_setup(test_handler_reentry, setup),
        cmocka_unit_test_setup(test_handler_table_full, setup),
        cmocka_unit_test_setup(test_handler_replays_existing, setup),
        cmocka_unit_test_setup(test_handler_added_during_dispatch, setup),
        cmocka_unit_test_setup(test_label_index, setup),
        cmocka_unit_test_setup(test_foreach, setup),
        cmocka_unit_test_setup(test_undecodable_values, setup),
        cmocka_unit_test_setup(test_resource_filter, setup),
        cmocka_unit_test_setup(test_metrics, setup),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
