/* Integration tests for lib/mirror_cache.c: the mirror's read side against a
 * real nats-server with JetStream.
 *
 * Self-contained: the group setup starts its own nats-server (JetStream, file
 * store in a mktemp -d folder, a free 127.0.0.1 port found by binding port 0)
 * and the teardown stops it by PID and removes the folder. The server binary
 * is $NATS_SERVER, else nats-server on PATH, else /usr/sbin/nats-server.
 * Servers get PR_SET_PDEATHSIG, so a crashed test leaves nothing behind.
 *
 * The writer side is played by the test: ObjectEvents put with ks_bus_kv_put
 * under keys from ks_subject_object_key, as the reconciler's watchers do.
 * Each test uses its own bucket so tests are independent. Every wait is a
 * poll with a deadline; there are no fixed sleeps. Handler state is static,
 * so a failed assertion (cmocka longjmps) never leaves a watch thread writing
 * into a dead stack frame; each test destroys what it created in teardown. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "codec.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "metrics.h"
#include "mirror_cache.h"
#include "subject.h"

#define WAIT_MS 10000          /* bound of an ordinary wait */
#define SERVER_START_MS 15000  /* bound of a nats-server start */
#define USERS "iam.kubesphere.io/users"
#define RBS "iam.kubesphere.io/rolebindings"
#define NSS "/namespaces"
#define WS_LABEL "kubesphere.io/workspace"
#define USER_REF "iam.kubesphere.io/user-ref"

extern char **environ;

/* ---- time ---- */

static int64_t now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static void sleep_us(int64_t us)
{
    struct timespec ts = {(time_t)(us / 1000000), (long)(us % 1000000) * 1000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* Poll cond every half millisecond until it holds or ms have passed; the
 * caller asserts cond afterwards. */
#define AWAIT(cond, ms)                                                     \
    do {                                                                    \
        int64_t await_end_ = now_us() + (int64_t)(ms) * 1000;               \
        while (!(cond) && now_us() < await_end_)                            \
            sleep_us(500);                                                  \
    } while (0)

/* ---- nats-server ---- */

typedef struct {
    pid_t pid;
    int port;
    char dir[256];
    char url[64];
} srv;

static srv g_srv;  /* the group's server */
static srv g_srv2; /* started late by test_start_before_server */

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int port_accepts(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), ok;

    if (fd < 0)
        return 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static const char *nats_server_bin(void)
{
    static char found[512];
    const char *env = getenv("NATS_SERVER"), *path = getenv("PATH");

    if (env != NULL && env[0] != '\0')
        return env;
    while (path != NULL && *path != '\0') {
        const char *colon = strchr(path, ':');
        size_t n = colon ? (size_t)(colon - path) : strlen(path);
        int w = snprintf(found, sizeof(found), "%.*s/nats-server", (int)n, path);
        if (w > 0 && (size_t)w < sizeof(found) && access(found, X_OK) == 0)
            return found;
        path = colon ? colon + 1 : NULL;
    }
    return "/usr/sbin/nats-server";
}

/* Reserve a folder and a port without starting anything. */
static int srv_prepare(srv *s)
{
    if (s->dir[0] == '\0') {
        snprintf(s->dir, sizeof(s->dir), "/tmp/kscore-mirror.XXXXXX");
        if (mkdtemp(s->dir) == NULL)
            return -1;
    }
    if (s->port == 0 && (s->port = free_port()) <= 0)
        return -1;
    snprintf(s->url, sizeof(s->url), "nats://127.0.0.1:%d", s->port);
    return 0;
}

/* fork + execve nats-server; only async-signal-safe calls between the two
 * (cnats threads exist). Then wait until the port accepts connections. */
static int srv_start(srv *s)
{
    char store[300], log[300], port[16];
    char *argv[9];
    pid_t parent = getpid();
    int64_t end;
    int fd;

    if (srv_prepare(s) != 0)
        return -1;
    snprintf(store, sizeof(store), "%s/store", s->dir);
    snprintf(log, sizeof(log), "%s/nats.log", s->dir);
    snprintf(port, sizeof(port), "%d", s->port);
    argv[0] = (char *)nats_server_bin();
    argv[1] = "-js";
    argv[2] = "-sd";
    argv[3] = store;
    argv[4] = "-a";
    argv[5] = "127.0.0.1";
    argv[6] = "-p";
    argv[7] = port;
    argv[8] = NULL;
    fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    s->pid = fork();
    if (s->pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        execve(argv[0], argv, environ);
        _exit(127);
    }
    close(fd);
    if (s->pid < 0)
        return -1;
    end = now_us() + (int64_t)SERVER_START_MS * 1000;
    while (now_us() < end) {
        int status;
        if (waitpid(s->pid, &status, WNOHANG) == s->pid) {
            fprintf(stderr, "nats-server exited at start, see %s\n", log);
            s->pid = 0;
            return -1;
        }
        if (port_accepts(s->port))
            return 0;
        sleep_us(5000);
    }
    fprintf(stderr, "nats-server did not listen on %d within %d ms\n", s->port, SERVER_START_MS);
    return -1;
}

static void srv_stop(srv *s)
{
    int64_t end;
    int status;

    if (s->pid <= 0)
        return;
    kill(s->pid, SIGTERM);
    end = now_us() + 10 * 1000000;
    while (now_us() < end) {
        pid_t r = waitpid(s->pid, &status, WNOHANG);
        if (r == s->pid || (r < 0 && errno != EINTR))
            break;
        sleep_us(1000);
    }
    if (now_us() >= end) {
        kill(s->pid, SIGKILL);
        waitpid(s->pid, &status, 0);
    }
    s->pid = 0;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void srv_cleanup(srv *s)
{
    srv_stop(s);
    if (s->dir[0] != '\0')
        nftw(s->dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    memset(s, 0, sizeof(*s));
}

/* ---- per-test resources (freed by the teardown, even after a failure) ---- */

static ks_bus *g_bus;                /* the group's connection (the writer) */
static ks_bus *t_bus;                /* a test's extra connection */
static ks_bus_kv *t_kv;              /* the writer's handle on the test's bucket */
static ks_mirror_cache *t_cache[3];

static ks_bus *connect_to(const char *url, int wait_connected)
{
    ks_bus_opts o = {.url = url, .name = "test-mirror", .connect_timeout_ms = 2000,
                     .wait_connected = wait_connected};
    ks_bus *b = NULL;
    ks_status st = ks_bus_connect(&o, &b);
    if (st != KS_OK)
        fail_msg("connect %s: %s", url, ks_status_last());
    return b;
}

static ks_bus_kv *open_bucket(const char *bucket)
{
    ks_bus_kv_cfg cfg = {.bucket = bucket, .history = 1};
    ks_bus_kv *kv = NULL;
    ks_status st = ks_bus_kv_open(g_bus, &cfg, 1, &kv);
    if (st != KS_OK)
        fail_msg("open %s: %s", bucket, ks_status_last());
    return kv;
}

static ks_mirror_cache *new_cache(int slot, ks_bus *bus, const char *bucket,
                                  const char *const *resources)
{
    ks_status st = ks_mirror_cache_create(bus, bucket, resources, &t_cache[slot]);
    if (st != KS_OK)
        fail_msg("mirror cache: %s", ks_status_last());
    return t_cache[slot];
}

/* ---- the writer ---- */

static void split(const char *resource, char *group, char *res, size_t cap)
{
    const char *slash = strchr(resource, '/');
    snprintf(group, cap, "%.*s", (int)(slash - resource), resource);
    snprintf(res, cap, "%s", slash + 1);
}

static void key_of(const char *resource, const char *ns, const char *name, char *key, size_t cap)
{
    char group[256], res[256];
    split(resource, group, res, sizeof(group));
    assert_int_equal(ks_subject_object_key(group, res, ns, name, key, cap), KS_OK);
}

static int64_t now_unix_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Put an ObjectEvent for the object ns/name with resourceVersion rv and one
 * optional label. */
static void write_obj(ks_bus_kv *kv, const char *resource, const char *ns, const char *name,
                      const char *rv, const char *label_key, const char *label_value)
{
    Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
    json_t *obj = json_pack("{s:s,s:{s:s,s:s,s:s}}", "kind", "Thing", "metadata", "name", name,
                            "resourceVersion", rv, "uid", "u-1");
    char key[1024], *js;
    uint8_t *buf = NULL;
    size_t len = 0;

    if (ns[0])
        json_object_set_new(json_object_get(obj, "metadata"), "namespace", json_string(ns));
    if (label_key)
        json_object_set_new(json_object_get(obj, "metadata"), "labels",
                            json_pack("{s:s}", label_key, label_value));
    js = json_dumps(obj, JSON_COMPACT);
    json_decref(obj);
    ev.type = KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_MODIFIED;
    ev.resource = (char *)resource;
    ev.namespace_ = (char *)ns;
    ev.name = (char *)name;
    ev.uid = "u-1";
    ev.resource_version = (char *)rv;
    ev.object.data = (uint8_t *)js;
    ev.object.len = strlen(js);
    ev.observed_unix_ms = now_unix_ms();
    assert_int_equal(ks_codec_pack(&ev.base, &buf, &len), KS_OK);
    key_of(resource, ns, name, key, sizeof(key));
    assert_int_equal(ks_bus_kv_put(kv, key, buf, len, NULL), KS_OK);
    free(buf);
    free(js);
}

static void delete_obj(ks_bus_kv *kv, const char *resource, const char *ns, const char *name)
{
    char key[1024];
    key_of(resource, ns, name, key, sizeof(key));
    assert_int_equal(ks_bus_kv_delete(kv, key), KS_OK);
}

/* ---- a recording change handler ---- */

#define REC_MAX 4096
typedef struct {
    pthread_mutex_t mu;
    int n;
    int added, modified, deleted;
    ks_mirror_change last_type;
    char last_name[128];
    char last_rv[32];
} rec;

static rec g_rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void rec_reset(rec *r)
{
    pthread_mutex_lock(&r->mu);
    r->n = r->added = r->modified = r->deleted = 0;
    r->last_type = 0;
    r->last_name[0] = r->last_rv[0] = '\0';
    pthread_mutex_unlock(&r->mu);
}

static void record(ks_mirror_change type, const char *resource, const char *ns, const char *name,
                   const json_t *old_obj, const json_t *new_obj, void *arg)
{
    rec *r = arg;
    const json_t *o = new_obj ? new_obj : old_obj;
    const char *rv =
        json_string_value(json_object_get(json_object_get(o, "metadata"), "resourceVersion"));
    pthread_mutex_lock(&r->mu);
    r->n++;
    r->added += type == KS_MIRROR_ADDED;
    r->modified += type == KS_MIRROR_MODIFIED;
    r->deleted += type == KS_MIRROR_DELETED;
    r->last_type = type;
    snprintf(r->last_name, sizeof(r->last_name), "%s", name);
    snprintf(r->last_rv, sizeof(r->last_rv), "%s", rv ? rv : "");
    pthread_mutex_unlock(&r->mu);
}

static int rec_get(rec *r, int which)
{
    int v;
    pthread_mutex_lock(&r->mu);
    v = which == 0 ? r->n : which == 1 ? r->added : which == 2 ? r->modified : r->deleted;
    pthread_mutex_unlock(&r->mu);
    return v;
}

/* ---- lookups made easy ---- */

static char *rv_of(ks_mirror_cache *c, const char *resource, const char *ns, const char *name,
                   char *out, size_t cap)
{
    json_t *o = NULL;
    if (ks_mirror_cache_get(c, resource, ns, name, &o, NULL) != KS_OK) {
        snprintf(out, cap, "-");
        return out;
    }
    snprintf(out, cap, "%s",
             json_string_value(json_object_get(json_object_get(o, "metadata"),
                                               "resourceVersion")));
    json_decref(o);
    return out;
}

static int rv_is(ks_mirror_cache *c, const char *resource, const char *ns, const char *name,
                 const char *want)
{
    char buf[64];
    return strcmp(rv_of(c, resource, ns, name, buf, sizeof(buf)), want) == 0;
}

/* Names of the objects with a label, comma-separated, sorted. */
static const char *by_label(ks_mirror_cache *c, const char *resource, const char *k,
                            const char *v, char *out, size_t cap)
{
    json_t *items = NULL, *it;
    size_t i;
    out[0] = '\0';
    if (ks_mirror_cache_list_by_label(c, resource, k, v, &items) != KS_OK)
        return "(error)";
    json_array_foreach(items, i, it) {
        size_t l = strlen(out);
        snprintf(out + l, cap - l, "%s%s", l ? "," : "",
                 json_string_value(json_object_get(json_object_get(it, "metadata"), "name")));
    }
    json_decref(items);
    return out;
}

static int label_is(ks_mirror_cache *c, const char *resource, const char *k, const char *v,
                    const char *want)
{
    char buf[4096];
    return strcmp(by_label(c, resource, k, v, buf, sizeof(buf)), want) == 0;
}

/* ---- fixtures ---- */

static void conc_join(void); /* test_concurrent_readers' threads */

static int group_setup(void **state)
{
    ks_log_init("test-mirror", KS_LOG_ERROR);
    if (srv_start(&g_srv) != 0)
        return -1;
    g_bus = connect_to(g_srv.url, 1);
    return g_bus ? 0 : -1;
}

static int group_teardown(void **state)
{
    ks_bus_destroy(g_bus);
    g_bus = NULL;
    srv_cleanup(&g_srv);
    srv_cleanup(&g_srv2);
    return 0;
}

static int test_setup(void **state)
{
    rec_reset(&g_rec);
    return 0;
}

static int test_teardown(void **state)
{
    conc_join(); /* before the cache they read goes */
    for (int i = 0; i < 3; i++) {
        ks_mirror_cache_destroy(t_cache[i]);
        t_cache[i] = NULL;
    }
    ks_bus_kv_close(t_kv);
    t_kv = NULL;
    ks_bus_destroy(t_bus);
    t_bus = NULL;
    srv_cleanup(&g_srv2);
    return 0;
}

/* ---- tests ---- */

/* 500 values (and a few deleted keys) are in the bucket before the cache
 * starts: synced() turns 1 only once all 500 are indexed, and a handler
 * registered at any moment during the load sees each object exactly once. */
static void test_initial_values_before_synced(void **state)
{
    ks_mirror_cache *c;
    char name[64], why[256];
    int64_t t0;

    t_kv = open_bucket(KS_MIRROR_BUCKET);
    for (int i = 0; i < 400; i++) {
        snprintf(name, sizeof(name), "user-%03d", i);
        write_obj(t_kv, USERS, "", name, "1", USER_REF, "x");
    }
    for (int i = 0; i < 100; i++) {
        snprintf(name, sizeof(name), "ns-%03d", i);
        write_obj(t_kv, NSS, "", name, "1", WS_LABEL, i % 2 ? "ws-odd" : "ws-even");
    }
    for (int i = 0; i < 10; i++) { /* gone before the cache starts: delete markers */
        snprintf(name, sizeof(name), "gone-%d", i);
        write_obj(t_kv, USERS, "", name, "1", NULL, NULL);
        delete_obj(t_kv, USERS, "", name);
    }

    t0 = now_us();
    c = new_cache(0, g_bus, NULL, NULL);
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &g_rec, NULL), KS_OK);
    /* Poll: the moment synced is seen, everything must already be there. */
    while (!ks_mirror_cache_synced(c) && now_us() - t0 < (int64_t)WAIT_MS * 1000) {
        assert_int_equal(ks_mirror_cache_ready(c, why, sizeof(why)), 0);
        sleep_us(200);
    }
    assert_int_equal(ks_mirror_cache_synced(c), 1);
    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 500);
    assert_int_equal(ks_mirror_cache_count(c, USERS, NULL), 400);
    assert_int_equal(ks_mirror_cache_count(c, NSS, ""), 100);
    assert_int_equal(rec_get(&g_rec, 1), 500); /* replay + live ADDED, no gap, no double */
    assert_int_equal(rec_get(&g_rec, 0), 500);
    assert_int_equal(ks_mirror_cache_ready(c, why, sizeof(why)), 1);
    assert_int_equal(ks_mirror_cache_wait_synced(c, 0), KS_OK);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 0);
    assert_true(rv_is(c, USERS, "", "user-399", "1"));
    assert_true(rv_is(c, USERS, "", "gone-3", "-"));
    {
        char buf[8192];
        by_label(c, NSS, WS_LABEL, "ws-odd", buf, sizeof(buf));
        assert_int_equal(strlen(buf), 50 * 6 + 49); /* 50 names "ns-NNN", comma-separated */
        assert_int_equal(strncmp(buf, "ns-001,ns-003,", 14), 0);
    }
    fprintf(stderr, "  loaded 500 values in %.1f ms\n", (double)(now_us() - t0) / 1000.0);
}

/* Updates and deletes arrive with callbacks; label lookups follow. */
static void test_updates_deletes_and_labels(void **state)
{
    const char *bucket = "MT_UPDATES";
    ks_metric *lag = ks_metrics_histogram("ks_mirror_lag_seconds", NULL,
                                          "bucket=\"MT_UPDATES\"", NULL, 0);
    ks_mirror_cache *c;
    uint64_t gen;
    char key[512];

    /* The bucket does not exist yet: the cache creates it. */
    c = new_cache(0, g_bus, bucket, NULL);
    assert_int_equal(ks_mirror_cache_wait_synced(c, WAIT_MS), KS_OK);
    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 0);
    t_kv = open_bucket(bucket); /* the writer opens what the cache created */
    assert_int_equal(ks_mirror_cache_add_handler(c, NULL, record, &g_rec, NULL), KS_OK);
    gen = ks_mirror_cache_generation(c);

    write_obj(t_kv, NSS, "", "dev", "1", WS_LABEL, "ws-a");
    AWAIT(rec_get(&g_rec, 1) == 1, WAIT_MS);
    assert_int_equal(rec_get(&g_rec, 1), 1);
    assert_true(rv_is(c, NSS, "", "dev", "1"));
    assert_true(label_is(c, NSS, WS_LABEL, "ws-a", "dev"));
    assert_true(ks_mirror_cache_generation(c) > gen);

    write_obj(t_kv, RBS, "dev", "alice-admin", "2", USER_REF, "alice");
    AWAIT(rec_get(&g_rec, 1) == 2, WAIT_MS);
    assert_true(label_is(c, RBS, USER_REF, "alice", "alice-admin"));
    assert_int_equal(ks_mirror_cache_count(c, RBS, "dev"), 1);

    /* The namespace moves to another workspace. */
    write_obj(t_kv, NSS, "", "dev", "3", WS_LABEL, "ws-b");
    AWAIT(rec_get(&g_rec, 2) == 1, WAIT_MS);
    assert_int_equal(rec_get(&g_rec, 2), 1);
    assert_true(rv_is(c, NSS, "", "dev", "3"));
    assert_true(label_is(c, NSS, WS_LABEL, "ws-a", ""));
    assert_true(label_is(c, NSS, WS_LABEL, "ws-b", "dev"));

    /* A delete removes the object and its label entries. */
    delete_obj(t_kv, RBS, "dev", "alice-admin");
    AWAIT(rec_get(&g_rec, 3) == 1, WAIT_MS);
    assert_int_equal(rec_get(&g_rec, 3), 1);
    assert_true(rv_is(c, RBS, "dev", "alice-admin", "-"));
    assert_true(label_is(c, RBS, USER_REF, "alice", ""));
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 0);

    /* An undecodable value is counted and skipped; the cache keeps serving. */
    key_of(NSS, "", "dev", key, sizeof(key));
    assert_int_equal(ks_bus_kv_put(t_kv, key, "garbage\xff", 8, NULL), KS_OK);
    AWAIT(ks_mirror_cache_decode_errors(c) == 1, WAIT_MS);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 1);
    assert_true(rv_is(c, NSS, "", "dev", "3"));
    write_obj(t_kv, NSS, "", "dev", "4", WS_LABEL, "ws-b");
    AWAIT(rv_is(c, NSS, "", "dev", "4"), WAIT_MS);
    assert_true(rv_is(c, NSS, "", "dev", "4"));
    assert_int_equal(rec_get(&g_rec, 0), 5); /* added 2, modified 2, deleted 1 */

    /* Live changes were observed by the lag histogram. */
    assert_true(ks_metric_value(lag) >= 4);
    assert_true(ks_metric_sum(lag) < 4 * 5.0);
}

/* A second cache in the same process converges to the same state. */
static int same_state(ks_mirror_cache *a, ks_mirror_cache *b)
{
    const char *resources[] = {USERS, RBS, NSS};
    int same = 1;
    for (int i = 0; i < 3 && same; i++) {
        json_t *la = NULL, *lb = NULL;
        if (ks_mirror_cache_list(a, resources[i], NULL, &la) != KS_OK ||
            ks_mirror_cache_list(b, resources[i], NULL, &lb) != KS_OK)
            same = 0;
        else
            same = json_equal(la, lb);
        json_decref(la);
        json_decref(lb);
    }
    return same;
}

static void test_second_cache_same_state(void **state)
{
    const char *bucket = "MT_TWO";
    ks_mirror_cache *a, *b;
    char name[64];

    t_kv = open_bucket(bucket);
    for (int i = 0; i < 50; i++) {
        snprintf(name, sizeof(name), "rb-%02d", i);
        write_obj(t_kv, RBS, i % 3 ? "ns-a" : "ns-b", name, "1", USER_REF, i % 2 ? "bob" : "eve");
    }
    a = new_cache(0, g_bus, bucket, NULL);
    assert_int_equal(ks_mirror_cache_wait_synced(a, WAIT_MS), KS_OK);
    t_bus = connect_to(g_srv.url, 1); /* the second cache on its own connection */
    b = new_cache(1, t_bus, bucket, NULL);
    assert_int_equal(ks_mirror_cache_wait_synced(b, WAIT_MS), KS_OK);
    assert_int_equal(ks_mirror_cache_count(b, RBS, NULL), 50);
    assert_true(same_state(a, b));

    for (int i = 0; i < 50; i += 5) {
        snprintf(name, sizeof(name), "rb-%02d", i);
        write_obj(t_kv, RBS, i % 3 ? "ns-a" : "ns-b", name, "2", USER_REF, "carol");
    }
    delete_obj(t_kv, RBS, "ns-a", "rb-01");
    write_obj(t_kv, USERS, "", "carol", "7", NULL, NULL);
    AWAIT(rv_is(a, USERS, "", "carol", "7") && rv_is(b, USERS, "", "carol", "7"), WAIT_MS);
    AWAIT(same_state(a, b), WAIT_MS);
    assert_true(same_state(a, b));
    assert_int_equal(ks_mirror_cache_count(a, RBS, NULL), 49);
    {
        char la[4096], lb[4096];
        by_label(a, RBS, USER_REF, "carol", la, sizeof(la));
        by_label(b, RBS, USER_REF, "carol", lb, sizeof(lb));
        assert_string_equal(la, lb);
        /* ns-a: 5,10,20,25,35,40 (i % 3 != 0); ns-b: 0,15,30,45 */
        assert_string_equal(la, "rb-05,rb-10,rb-20,rb-25,rb-35,rb-40,rb-00,rb-15,rb-30,rb-45");
    }
    assert_int_equal(ks_mirror_cache_generation(a), ks_mirror_cache_generation(b));
}

/* A cache asked for some resources watches only their key prefixes. */
static void test_resource_filter(void **state)
{
    const char *bucket = "MT_FILTER";
    const char *only[] = {USERS, NSS, NULL};
    ks_mirror_cache *c;

    t_kv = open_bucket(bucket);
    write_obj(t_kv, USERS, "", "u1", "1", NULL, NULL);
    write_obj(t_kv, NSS, "", "n1", "1", NULL, NULL);
    write_obj(t_kv, RBS, "n1", "rb1", "1", NULL, NULL);
    write_obj(t_kv, "tenant.kubesphere.io/workspaces", "", "w", "1", NULL, NULL);
    c = new_cache(0, g_bus, bucket, only);
    assert_int_equal(ks_mirror_cache_wait_synced(c, WAIT_MS), KS_OK);
    assert_int_equal(ks_mirror_cache_count(c, NULL, NULL), 2);
    write_obj(t_kv, RBS, "n1", "rb2", "1", NULL, NULL);
    write_obj(t_kv, USERS, "", "u2", "1", NULL, NULL);
    AWAIT(ks_mirror_cache_count(c, USERS, NULL) == 2, WAIT_MS);
    assert_int_equal(ks_mirror_cache_count(c, USERS, NULL), 2);
    assert_int_equal(ks_mirror_cache_count(c, RBS, NULL), 0);
    assert_int_equal(ks_mirror_cache_decode_errors(c), 0);
}

/* A service that starts before NATS: create succeeds, /readyz says why it is
 * not ready, and the cache loads once the server comes up. */
static void test_start_before_server(void **state)
{
    ks_mirror_cache *c;
    ks_bus_kv *kv = NULL;
    ks_bus_kv_cfg cfg = {.bucket = KS_MIRROR_BUCKET, .history = 1};
    ks_bus *w;
    char why[256] = "";

    assert_int_equal(srv_prepare(&g_srv2), 0);
    t_bus = connect_to(g_srv2.url, 0); /* nothing listens yet */
    c = new_cache(0, t_bus, NULL, NULL);
    assert_int_equal(ks_mirror_cache_synced(c), 0);
    assert_int_equal(ks_mirror_cache_ready(c, why, sizeof(why)), 0);
    assert_non_null(strstr(why, "not open"));

    assert_int_equal(srv_start(&g_srv2), 0);
    AWAIT(ks_mirror_cache_synced(c), 30000);
    assert_int_equal(ks_mirror_cache_synced(c), 1);

    w = connect_to(g_srv2.url, 1);
    if (ks_bus_kv_open(w, &cfg, 0, &kv) != KS_OK) {
        ks_bus_destroy(w);
        fail_msg("the cache did not create the bucket");
    }
    {
        Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
        const char *js = "{\"metadata\":{\"name\":\"late\",\"resourceVersion\":\"9\"}}";
        uint8_t *buf = NULL;
        size_t len = 0;
        char key[256];
        ev.object.data = (uint8_t *)js;
        ev.object.len = strlen(js);
        assert_int_equal(ks_codec_pack(&ev.base, &buf, &len), KS_OK);
        key_of(USERS, "", "late", key, sizeof(key));
        assert_int_equal(ks_bus_kv_put(kv, key, buf, len, NULL), KS_OK);
        free(buf);
    }
    AWAIT(rv_is(c, USERS, "", "late", "9"), WAIT_MS);
    assert_true(rv_is(c, USERS, "", "late", "9"));
    ks_bus_kv_close(kv);
    ks_bus_destroy(w);
}

/* The server restarts (same store): the watch resumes and later changes
 * still reach the cache. */
static void test_server_restart(void **state)
{
    ks_mirror_cache *c;
    ks_bus_kv *kv = NULL;
    ks_bus_kv_cfg cfg = {.bucket = KS_MIRROR_BUCKET, .history = 1};
    ks_bus *w;

    assert_int_equal(srv_start(&g_srv2), 0);
    t_bus = connect_to(g_srv2.url, 1);
    c = new_cache(0, t_bus, NULL, NULL);
    assert_int_equal(ks_mirror_cache_wait_synced(c, WAIT_MS), KS_OK);
    w = connect_to(g_srv2.url, 1);
    if (ks_bus_kv_open(w, &cfg, 0, &kv) != KS_OK) {
        ks_bus_destroy(w);
        fail_msg("bucket");
    }
    write_obj(kv, USERS, "", "before", "1", NULL, NULL);
    AWAIT(rv_is(c, USERS, "", "before", "1"), WAIT_MS);
    assert_true(rv_is(c, USERS, "", "before", "1"));

    srv_stop(&g_srv2);
    assert_int_equal(srv_start(&g_srv2), 0);
    AWAIT(ks_bus_is_connected(t_bus) && ks_bus_is_connected(w), WAIT_MS);
    {
        /* the writer's put may need a retry while JetStream comes back */
        Kscore__V1__ObjectEvent ev = KSCORE__V1__OBJECT_EVENT__INIT;
        const char *js = "{\"metadata\":{\"name\":\"after\",\"resourceVersion\":\"2\"}}";
        uint8_t *buf = NULL;
        size_t len = 0;
        char key[256];
        int64_t end = now_us() + (int64_t)WAIT_MS * 1000;
        ev.object.data = (uint8_t *)js;
        ev.object.len = strlen(js);
        assert_int_equal(ks_codec_pack(&ev.base, &buf, &len), KS_OK);
        key_of(USERS, "", "after", key, sizeof(key));
        while (ks_bus_kv_put(kv, key, buf, len, NULL) != KS_OK && now_us() < end)
            sleep_us(50000);
        free(buf);
    }
    AWAIT(rv_is(c, USERS, "", "after", "2"), 20000);
    ks_bus_kv_close(kv);
    ks_bus_destroy(w);
    assert_true(rv_is(c, USERS, "", "after", "2"));
}

/* Readers hammer the lookups while the watch thread applies changes. The
 * threads are static so that the teardown stops them even when an assertion
 * ended the test early. */
#define CONC_READERS 3
static ks_mirror_cache *conc_cache;
static atomic_int conc_stop;
static atomic_long conc_reads;
static pthread_t conc_threads[CONC_READERS];
static int conc_running;

static void conc_join(void)
{
    atomic_store(&conc_stop, 1);
    for (int i = 0; i < conc_running; i++)
        pthread_join(conc_threads[i], NULL);
    conc_running = 0;
}

static int conc_visit(const ks_mirror_item *it, void *arg)
{
    long *n = arg;
    *n += json_object_size(it->object) > 0;
    return 0;
}

static void *conc_reader(void *arg)
{
    long local = 0;
    char name[32];
    for (unsigned i = 0; !atomic_load(&conc_stop); i++) {
        json_t *o = NULL, *items = NULL;
        snprintf(name, sizeof(name), "u-%02u", i % 40);
        if (ks_mirror_cache_get(conc_cache, USERS, NULL, name, &o, NULL) == KS_OK) {
            char *dump = json_dumps(o, JSON_COMPACT); /* concurrent encoding of a shared value */
            free(dump);
            json_decref(o);
        }
        if (ks_mirror_cache_list_by_label(conc_cache, USERS, USER_REF, i % 2 ? "a" : "b",
                                          &items) == KS_OK)
            json_decref(items);
        if (ks_mirror_cache_list(conc_cache, USERS, NULL, &items) == KS_OK)
            json_decref(items);
        ks_mirror_cache_foreach(conc_cache, USERS, NULL, conc_visit, &local);
        (void)ks_mirror_cache_generation(conc_cache);
        local++;
        if (i % 64 == 63)
            sleep_us(100); /* leave the writer some CPU (valgrind runs one thread at a time) */
    }
    atomic_fetch_add(&conc_reads, local);
    return NULL;
}

static void test_concurrent_readers(void **state)
{
    const char *bucket = "MT_CONC";
    char name[32], rv[16];

    t_kv = open_bucket(bucket);
    conc_cache = new_cache(0, g_bus, bucket, NULL);
    assert_int_equal(ks_mirror_cache_wait_synced(conc_cache, WAIT_MS), KS_OK);
    atomic_store(&conc_stop, 0);
    atomic_store(&conc_reads, 0);
    for (int i = 0; i < CONC_READERS; i++) {
        assert_int_equal(pthread_create(&conc_threads[i], NULL, conc_reader, NULL), 0);
        conc_running++;
    }
    for (int i = 0; i < 600; i++) {
        snprintf(name, sizeof(name), "u-%02d", i % 40);
        snprintf(rv, sizeof(rv), "%d", i + 1);
        if (i % 7 == 6)
            delete_obj(t_kv, USERS, "", name);
        else
            write_obj(t_kv, USERS, "", name, rv, USER_REF, i % 3 ? "a" : "b");
    }
    write_obj(t_kv, USERS, "", "last", "1", NULL, NULL);
    AWAIT(rv_is(conc_cache, USERS, "", "last", "1"), WAIT_MS);
    conc_join();
    assert_true(rv_is(conc_cache, USERS, "", "last", "1"));
    assert_true(atomic_load(&conc_reads) > 0);
    /* i = 599 (599 % 7 == 4, 599 % 3 == 2): u-39 put with rv 600, label a */
    assert_true(rv_is(conc_cache, USERS, "", "u-39", "600"));
    /* i = 594 (594 % 7 == 6): u-34 deleted last */
    assert_true(rv_is(conc_cache, USERS, "", "u-34", "-"));
    fprintf(stderr, "  %ld reader lookups and visits during 600 changes\n",
            (long)atomic_load(&conc_reads));
}

/* Destroy while the initial values are still streaming in. */
static void test_destroy_while_loading(void **state)
{
    for (int i = 0; i < 5; i++) {
        ks_mirror_cache *c = new_cache(0, g_bus, NULL, NULL); /* 500 values from test 1 */
        ks_mirror_cache_destroy(c);
        t_cache[0] = NULL;
    }
    ks_mirror_cache_destroy(NULL);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_initial_values_before_synced, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_updates_deletes_and_labels, test_setup,
                                        test_teardown),
        cmocka_unit_test_setup_teardown(test_second_cache_same_state, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_resource_filter, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_start_before_server, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_concurrent_readers, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_server_restart, test_setup, test_teardown),
        cmocka_unit_test_setup_teardown(test_destroy_while_loading, test_setup, test_teardown),
    };
    const char *filter = getenv("KS_TEST_FILTER"); /* e.g. "test_resource_*" */
    const char *skip = getenv("KS_TEST_SKIP");

    if (filter != NULL && filter[0] != '\0')
        cmocka_set_test_filter(filter);
    if (skip != NULL && skip[0] != '\0')
        cmocka_set_skip_filter(skip);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
