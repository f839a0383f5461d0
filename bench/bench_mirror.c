/* bench_mirror: the mirror benchmark of issue 3 (docs/benchmarks.md).
 *
 * Against a real kube-apiserver (KS_KUBECONFIG) and nats-server (KS_NATS_URL):
 *   1. create N User objects (iam.kubesphere.io/v1beta1, about 1.5 KB each)
 *      from 8 threads, and time it;
 *   2. open an empty KV bucket and watch it twice in this process: through
 *      ks_mirror_cache (the read side every service uses) and through a plain
 *      ks_bus_kv_watch;
 *   3. start build/<variant>/bin/kscore-reconciler (--leader-elect=false) and
 *      time, from its start, until each reader has seen all N user keys and
 *      until its /readyz answers 200; read its VmRSS and scrape its
 *      ks_mirror_lag_seconds histogram;
 *   4. the sync's baseline: the reflector's paged list (limit=500), timed in
 *      this process;
 *   5. M sequential merge PATCHes of distinct users: each write waits until
 *      the cache's change callback, the plain KV watch and this process's own
 *      kube-apiserver watch (the baseline) have all seen the resourceVersion
 *      the PATCH returned; latency is counted from just before the PATCH;
 *   6. VmRSS again, stop the reconciler by PID, print a Markdown table.
 *
 * Environment: KS_KUBECONFIG and KS_NATS_URL (without KS_KUBECONFIG the bench
 * prints "skipped" and exits 0); KS_BENCH_RECONCILER (default: the
 * kscore-reconciler of this binary's build folder); KS_BENCH_MIRROR_USERS
 * (10000), KS_BENCH_MIRROR_UPDATES (1000); KS_BENCH_MIRROR_CLEANUP (1: delete
 * the users at the end; scripts/bench.sh sets 0, it throws the control plane
 * away). Exits non-zero only when something could not be measured; missed
 * targets are reported in the table. */
#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <limits.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "codec.h"
#include "kscore/v1/mirror.pb-c.h"
#include "kube.h"
#include "log.h"
#include "mirror_cache.h"
#include "subject.h"

#define BUCKET "KS_BENCH_MIRROR"
#define GROUP "iam.kubesphere.io"
#define RESOURCE "users"
#define CACHE_RESOURCE GROUP "/" RESOURCE
#define USERS_PATH "/apis/" GROUP "/v1beta1/" RESOURCE
#define NAME_PREFIX "bench-user-"
#define BENCH_LABEL "kscore.io/bench"
#define CREATE_THREADS 8
#define WARMUP 20
#define SYNC_TIMEOUT_MS 60000
#define UPDATE_TIMEOUT_MS 5000
#define RV_MAX 64
#define NAME_MAX_ 64

/* Targets of issue 3. */
#define TARGET_SYNC_S 5.0
#define TARGET_P99_MS 50.0
#define TARGET_RSS_MB 100.0

extern char **environ;

/* The readers. The first NCOUNTED also count user keys during the sync. */
enum { OBS_CACHE, OBS_KV, OBS_WATCH, OBS_COUNT };
#define NCOUNTED 2
static const char *const obs_names[OBS_COUNT] = {"ks_mirror_cache callback", "plain KV watch",
                                                 "kube-apiserver watch (baseline)"};

/* What one reader saw of the update in flight. */
typedef struct {
    char rv[RV_MAX];
    int64_t t_ns;
} sighting;

typedef struct {
    int nusers;
    int nupdates;
    uint64_t run_id;             /* CLOCK_REALTIME at start: makes every PATCH a change */
    ks_kube_client *kube;        /* creates, patches */
    ks_kube_client *watch_kube;  /* the baseline watch only: shut down to end it */
    ks_bus *bus;

    pthread_mutex_t mu;
    pthread_cond_t cond;
    /* sync phase: which user keys each reader has seen */
    unsigned char *seen[NCOUNTED];   /* one byte per user */
    int nseen[NCOUNTED];
    int64_t t_first[NCOUNTED], t_all[NCOUNTED];
    /* update phase */
    char cur_name[NAME_MAX_];    /* "" when no update is in flight */
    sighting cur[OBS_COUNT];
    /* malformed or unexpected input seen by the readers */
    unsigned long reader_errors;

    /* creation */
    atomic_int next_create;
    atomic_int created, existed, create_failed;
    atomic_long object_bytes;    /* sum of the created objects' JSON sizes */
} bench;

static bench B = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
static volatile sig_atomic_t child_pid;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static double ms_since(int64_t t0, int64_t t1)
{
    return (double)(t1 - t0) / 1e6;
}

static long env_long(const char *name, long def, long lo, long hi)
{
    const char *v = getenv(name);
    char *end = NULL;
    long n;

    if (v == NULL || v[0] == '\0')
        return def;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno != 0 || end == v || *end != '\0' || n < lo || n > hi) {
        fprintf(stderr, "bench_mirror: %s=%s is not in [%ld, %ld]; using %ld\n", name, v, lo, hi,
                def);
        return def;
    }
    return n;
}

/* The user index of "bench-user-00042", or -1. */
static int user_index(const char *name)
{
    const size_t plen = sizeof(NAME_PREFIX) - 1;
    char *end = NULL;
    long n;

    if (strncmp(name, NAME_PREFIX, plen) != 0)
        return -1;
    errno = 0;
    n = strtol(name + plen, &end, 10);
    if (errno != 0 || end == name + plen || *end != '\0' || n < 0 || n >= B.nusers)
        return -1;
    return (int)n;
}

static void user_name(int i, char *out, size_t cap)
{
    snprintf(out, cap, NAME_PREFIX "%05d", i);
}

/* ---- what the readers report ---- */

/* A reader saw user `name` at resourceVersion rv. obs is OBS_CACHE or OBS_KV
 * for the sync count; every reader also feeds the update in flight. */
static void reader_saw(int obs, const char *name, const char *rv, int count)
{
    int64_t t = now_ns();
    int idx = user_index(name);

    if (idx < 0)
        return;   /* not ours (or a user created by someone else) */
    pthread_mutex_lock(&B.mu);
    if (count && obs < NCOUNTED && !B.seen[obs][idx]) {
        B.seen[obs][idx] = 1;
        if (B.nseen[obs]++ == 0)
            B.t_first[obs] = t;
        if (B.nseen[obs] == B.nusers) {
            B.t_all[obs] = t;
            pthread_cond_broadcast(&B.cond);
        }
    }
    if (B.cur_name[0] != '\0' && strcmp(B.cur_name, name) == 0) {
        /* The latest sighting wins; the writer waits for the rv it got. */
        snprintf(B.cur[obs].rv, sizeof(B.cur[obs].rv), "%s", rv);
        B.cur[obs].t_ns = t;
        pthread_cond_broadcast(&B.cond);
    }
    pthread_mutex_unlock(&B.mu);
}

static void reader_error(void)
{
    pthread_mutex_lock(&B.mu);
    B.reader_errors++;
    pthread_mutex_unlock(&B.mu);
}

static const char *meta_str(const json_t *obj, const char *field)
{
    const char *s = json_string_value(json_object_get(json_object_get(obj, "metadata"), field));
    return s ? s : "";
}

/* The read side: ks_mirror_cache's change handler. */
static void on_cache_change(ks_mirror_change type, const char *resource, const char *ns,
                            const char *name, const json_t *old_obj, const json_t *new_obj,
                            void *arg)
{
    if (type == KS_MIRROR_DELETED || new_obj == NULL)
        return;
    reader_saw(OBS_CACHE, name, meta_str(new_obj, "resourceVersion"), 1);
}

/* A plain KV watch: decode the ObjectEvent, as a minimal reader would. */
static void on_kv_entry(const ks_bus_kv_entry *e, void *arg)
{
    Kscore__V1__ObjectEvent *ev = NULL;

    if (e == NULL) {
        pthread_mutex_lock(&B.mu);
        pthread_cond_broadcast(&B.cond);
        pthread_mutex_unlock(&B.mu);
        return;
    }
    if (e->op != KS_BUS_KV_PUT)
        return;
    if (KS_UNPACK(kscore__v1__object_event, e->value, e->len, &ev) != KS_OK) {
        reader_error();
        return;
    }
    reader_saw(OBS_KV, ev->name, ev->resource_version, 1);
    ks_codec_free(&ev->base);
}

/* ---- the baseline: this process's own watch on users ---- */

typedef struct {
    char rv[RV_MAX];
    ks_kube_splitter *sp;
    pthread_t thread;
    ks_status st;
} kube_watch;

static int on_watch_event(const char *event, size_t len, void *arg)
{
    ks_kube_event_type type;
    json_t *obj = NULL;

    if (ks_kube_event_parse(event, len, &type, &obj) != KS_OK) {
        reader_error();
        return 0;
    }
    if (type == KS_KUBE_EVENT_ADDED || type == KS_KUBE_EVENT_MODIFIED)
        reader_saw(OBS_WATCH, meta_str(obj, "name"), meta_str(obj, "resourceVersion"), 0);
    else if (type == KS_KUBE_EVENT_ERROR)
        reader_error();
    json_decref(obj);
    return 0;
}

static int on_watch_chunk(const char *chunk, size_t len, void *arg)
{
    kube_watch *w = arg;
    return ks_kube_splitter_feed(w->sp, chunk, len, on_watch_event, w) == KS_OK ? 0 : 1;
}

static void *kube_watch_thread(void *arg)
{
    kube_watch *w = arg;
    char path[256];

    snprintf(path, sizeof(path),
             USERS_PATH "?watch=1&resourceVersion=%s&allowWatchBookmarks=true&timeoutSeconds=600",
             w->rv);
    w->st = ks_kube_stream(B.watch_kube, path, 630000L, on_watch_chunk, w, NULL);
    return NULL;
}

/* ---- creating the users ---- */

static void fake_bcrypt(unsigned seed, char *out)
{
    static const char alphabet[] =
        "./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    uint32_t x = seed * 2654435761u + 12345u;

    memcpy(out, "$2a$10$", 7);
    for (int i = 0; i < 53; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        out[7 + i] = alphabet[x % 64];
    }
    out[60] = '\0';
}

/* A realistic user: spec.email, displayName, description, lang, a bcrypt
 * hash; a few labels and annotations. About 1.5 KB once kube-apiserver has
 * added uid, timestamps and managedFields. */
static json_t *user_object(int i)
{
    char name[NAME_MAX_], email[128], display[128], desc[640], hash[61], ws[32], ts[32];

    user_name(i, name, sizeof(name));
    snprintf(email, sizeof(email), "%s@example.kubesphere.io", name);
    snprintf(display, sizeof(display), "Bench User %05d", i);
    snprintf(desc, sizeof(desc),
             "Benchmark account %05d of the platform team, with a workspace role in ws-%02d; "
             "created by bench/bench_mirror.c to give the mirror realistic objects of about "
             "1.5 KB, with an email, "
             "a display name, this description, a password hash, labels and annotations.",
             i, i % 50);
    fake_bcrypt((unsigned)i, hash);
    snprintf(ws, sizeof(ws), "ws-%02d", i % 50);
    snprintf(ts, sizeof(ts), "2026-01-%02dT%02d:%02d:00Z", 1 + i % 28, i % 24, i % 60);
    return json_pack(
        "{s:s, s:s, s:{s:s, s:{s:s, s:s, s:s}, s:{s:s, s:s, s:s, s:s}},"
        " s:{s:s, s:s, s:s, s:s, s:s, s:[s, s]}}",
        "apiVersion", GROUP "/v1beta1", "kind", "User",
        "metadata",
            "name", name,
            "labels",
                BENCH_LABEL, "mirror",
                "kubesphere.io/workspace", ws,
                "iam.kubesphere.io/identity-provider", "ldap",
            "annotations",
                "kubesphere.io/creator", "admin",
                "kubesphere.io/alias-name", display,
                "iam.kubesphere.io/last-password-change-time", ts,
                "iam.kubesphere.io/uninitialized", "false",
        "spec",
            "email", email,
            "displayName", display,
            "description", desc,
            "lang", "en",
            "password", hash,
            "groups", "platform", ws);
}

static void *create_thread(void *arg)
{
    for (;;) {
        int i = atomic_fetch_add(&B.next_create, 1);
        json_t *obj, *out = NULL;
        ks_status st;

        if (i >= B.nusers)
            break;
        obj = user_object(i);
        if (obj == NULL) {
            atomic_fetch_add(&B.create_failed, 1);
            continue;
        }
        st = ks_kube_create(B.kube, USERS_PATH, obj, &out);
        if (st == KS_ERR_CONFLICT) {
            atomic_fetch_add(&B.existed, 1);   /* left by an earlier run */
        } else if (st != KS_OK) {
            if (atomic_fetch_add(&B.create_failed, 1) < 3)
                fprintf(stderr, "bench_mirror: create user %d: %s\n", i, ks_status_last());
        } else {
            char *s = json_dumps(out, JSON_COMPACT);
            if (s != NULL)
                atomic_fetch_add(&B.object_bytes, (long)strlen(s));
            free(s);
            atomic_fetch_add(&B.created, 1);
        }
        json_decref(out);
        json_decref(obj);
    }
    return NULL;
}

/* ---- the reconciler process ---- */

static void on_fatal_signal(int sig)
{
    pid_t p = child_pid;
    if (p > 0)
        kill(p, SIGKILL);
    signal(sig, SIG_DFL);
    raise(sig);
}

static int free_port(void)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t alen = sizeof(a);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    if (bind(fd, (struct sockaddr *)&a, sizeof(a)) == 0 &&
        getsockname(fd, (struct sockaddr *)&a, &alen) == 0)
        port = ntohs(a.sin_port);
    close(fd);
    return port;
}

/* Start the reconciler with its output in logpath. It dies with us
 * (PR_SET_PDEATHSIG) and stays in our process group, so `timeout` reaches it. */
static pid_t reconciler_spawn(const char *exe, int admin_port, const char *logpath)
{
    char admin[64], bucket[64] = "--mirror-bucket=" BUCKET;
    char *argv[] = {(char *)exe, "--leader-elect=false", "--controllers=false", bucket, admin,
                    "--log-level=warn", NULL};
    pid_t parent = getpid(), pid;
    int fd;

    snprintf(admin, sizeof(admin), "--admin-addr=127.0.0.1:%d", admin_port);
    fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        /* async-signal-safe calls only: other threads held locks at fork */
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        execve(exe, argv, environ);
        _exit(127);
    }
    close(fd);
    if (pid > 0)
        child_pid = pid;
    return pid;
}

/* Returns 1 while the child runs. */
static int reconciler_alive(pid_t pid)
{
    int status;
    return waitpid(pid, &status, WNOHANG) == 0;
}

static void reconciler_stop(pid_t pid)
{
    int status;

    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    for (int i = 0; i < 100; i++) {
        if (waitpid(pid, &status, WNOHANG) != 0) {
            child_pid = 0;
            return;
        }
        usleep(100000);
    }
    fprintf(stderr, "bench_mirror: reconciler %d ignored SIGTERM for 10 s; killing it\n", pid);
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    child_pid = 0;
}

/* VmRSS and VmHWM of pid, in MB (10^6 bytes; /proc counts KiB). */
static int proc_rss(pid_t pid, double *rss_mb, double *hwm_mb)
{
    char path[64], line[256];
    FILE *f;
    int got = 0;

    snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
    f = fopen(path, "r");
    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f) != NULL) {
        unsigned long kb;
        if (sscanf(line, "VmRSS: %lu kB", &kb) == 1) {
            *rss_mb = (double)kb * 1024.0 / 1e6;
            got |= 1;
        } else if (sscanf(line, "VmHWM: %lu kB", &kb) == 1) {
            *hwm_mb = (double)kb * 1024.0 / 1e6;
            got |= 2;
        }
    }
    fclose(f);
    return got == 3 ? 0 : -1;
}

static size_t discard_body(char *p, size_t sz, size_t n, void *arg)
{
    return sz * n;
}

/* 1 when GET url answers 200. */
static int http_ok(CURL *h, const char *url)
{
    long code = 0;

    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 1000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    if (curl_easy_perform(h) != CURLE_OK)
        return 0;
    curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    return code == 200;
}

static void print_log_tail(const char *logpath)
{
    char line[1024];
    long n = 0, skip;
    FILE *f = fopen(logpath, "r");

    if (f == NULL)
        return;
    while (fgets(line, sizeof(line), f) != NULL)
        n++;
    rewind(f);
    skip = n > 20 ? n - 20 : 0;
    fprintf(stderr, "bench_mirror: last lines of the reconciler's log:\n");
    for (long i = 0; fgets(line, sizeof(line), f) != NULL; i++)
        if (i >= skip)
            fprintf(stderr, "    %s", line);
    fclose(f);
}

/* GET url into a malloc'd NUL-terminated body (capped at 4 MiB). */
typedef struct {
    char *p;
    size_t len;
} http_body;

static size_t keep_body(char *p, size_t sz, size_t n, void *arg)
{
    http_body *b = arg;
    size_t add = sz * n;
    char *np;

    if (b->len + add > 4u * 1024u * 1024u)
        return 0;
    np = realloc(b->p, b->len + add + 1);
    if (np == NULL)
        return 0;
    memcpy(np + b->len, p, add);
    b->p = np;
    b->len += add;
    b->p[b->len] = '\0';
    return add;
}

/* The value of the first sample line of /metrics that starts with series
 * followed by a space or '{', or -1. */
static double metric_value(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *l = text; l != NULL && *l != '\0';) {
        const char *nl = strchr(l, '\n');
        if (strncmp(l, series, n) == 0 && (l[n] == ' ' || l[n] == '{')) {
            const char *sp = l + n;
            const char *end = nl ? nl : l + strlen(l);
            const char *last = NULL;
            for (const char *q = sp; q < end; q++)
                if (*q == ' ')
                    last = q;
            if (last != NULL)
                return strtod(last + 1, NULL);
        }
        l = nl ? nl + 1 : NULL;
    }
    return -1;
}

/* The reconciler's mirror writes so far, from its ks_mirror_lag_seconds
 * histogram (watch event to KV ack, including any wait for the writer's
 * lock): count, sum, and how many took at most 1 ms, 10 ms, 100 ms. */
typedef struct {
    double count, sum_s, le_1ms, le_10ms, le_100ms;
} put_stats;

static int scrape_puts(CURL *h, int port, put_stats *ps)
{
    char url[96];
    http_body b = {0};
    long code = 0;
    int rc = -1;

    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (curl_easy_perform(h) == CURLE_OK && b.p != NULL) {
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
        if (code == 200) {
            ps->count = metric_value(b.p, "ks_mirror_lag_seconds_count");
            ps->sum_s = metric_value(b.p, "ks_mirror_lag_seconds_sum");
            ps->le_1ms = metric_value(b.p, "ks_mirror_lag_seconds_bucket{le=\"0.001\"}");
            ps->le_10ms = metric_value(b.p, "ks_mirror_lag_seconds_bucket{le=\"0.01\"}");
            ps->le_100ms = metric_value(b.p, "ks_mirror_lag_seconds_bucket{le=\"0.1\"}");
            rc = ps->count >= 0 && ps->sum_s >= 0 ? 0 : -1;
        }
    }
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, discard_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, NULL);
    free(b.p);
    return rc;
}

/* The floor of any list+watch sync: a paged list of every user (500 a page,
 * as the reflector asks), each page parsed with jansson. Returns seconds, or
 * -1. */
static double timed_paged_list(int *nitems)
{
    char path[2048], cont[1024] = "", esc[3 * 1024];
    int64_t t0 = now_ns();
    int n = 0;

    for (;;) {
        json_t *page = NULL;
        const char *c;

        if (cont[0] == '\0')
            snprintf(path, sizeof(path), USERS_PATH "?limit=500");
        else if (ks_kube_query_escape(cont, esc, sizeof(esc)) != KS_OK ||
                 snprintf(path, sizeof(path), USERS_PATH "?limit=500&continue=%s", esc) >=
                     (int)sizeof(path))
            return -1;
        if (ks_kube_get(B.kube, path, &page) != KS_OK) {
            fprintf(stderr, "bench_mirror: list: %s\n", ks_status_last());
            return -1;
        }
        n += (int)json_array_size(json_object_get(page, "items"));
        c = json_string_value(json_object_get(json_object_get(page, "metadata"), "continue"));
        snprintf(cont, sizeof(cont), "%s", c ? c : "");
        json_decref(page);
        if (cont[0] == '\0')
            break;
    }
    *nitems = n;
    return ms_since(t0, now_ns()) / 1000;
}

/* ---- statistics ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

/* Nearest-rank percentile of n sorted values. */
static double pct(const double *v, int n, double p)
{
    int k;

    if (n <= 0)
        return -1;
    k = (int)(p * n + 0.999999) - 1;
    if (k < 0)
        k = 0;
    if (k >= n)
        k = n - 1;
    return v[k];
}

typedef struct {
    double p50, p99, max, mean;
} summary;

static summary summarize(double *v, int n)
{
    summary s = {-1, -1, -1, -1};
    double sum = 0;

    if (n <= 0)
        return s;
    qsort(v, (size_t)n, sizeof(*v), cmp_double);
    for (int i = 0; i < n; i++)
        sum += v[i];
    s.p50 = pct(v, n, 0.50);
    s.p99 = pct(v, n, 0.99);
    s.max = v[n - 1];
    s.mean = sum / n;
    return s;
}

/* ---- the run ---- */

typedef struct {
    double create_s;
    double sync_first_s[NCOUNTED], sync_all_s[NCOUNTED], ready_s;
    double object_bytes;            /* mean JSON size of a user as the API returns it */
    size_t cache_count;             /* users in the cache at the end */
    unsigned long reader_errors;
    double rss_sync, hwm_sync, rss_end, hwm_end;
    put_stats puts;                 /* the reconciler's, after the sync; count -1: unknown */
    double list_s;                  /* baseline: a paged list of every user */
    int list_items;
    int measured;           /* updates with every sighting */
    int lost;               /* updates some reader never saw in time */
    summary lat[OBS_COUNT]; /* from just before the PATCH */
    summary patch;          /* PATCH round trip */
    summary extra;          /* cache callback minus kube watch, per update */
} results;

static ks_status list_rv(char *rv, size_t cap)
{
    json_t *list = NULL;
    ks_status st = ks_kube_get(B.kube, USERS_PATH "?limit=1", &list);

    if (st == KS_OK) {
        const char *v = meta_str(list, "resourceVersion");
        if (v[0] == '\0' || strlen(v) >= cap)
            st = KS_FAIL(KS_ERR_PROTOCOL, "list of users without a resourceVersion");
        else
            snprintf(rv, cap, "%s", v);
    }
    json_decref(list);
    return st;
}

/* One update: PATCH user `idx`, wait until every reader has seen the new
 * resourceVersion. Returns 0 and the latencies (ms) when all did, 1 when one
 * did not within UPDATE_TIMEOUT_MS, -1 when the PATCH failed. */
static int one_update(int seq, int idx, double lat[OBS_COUNT], double *patch_ms)
{
    char name[NAME_MAX_], path[256], desc[96], seqs[16], rv[RV_MAX];
    json_t *patch, *out = NULL;
    struct timespec deadline;
    int64_t t0, t1;
    int done = 0, rc;
    ks_status st;

    user_name(idx, name, sizeof(name));
    snprintf(path, sizeof(path), USERS_PATH "/%s", name);
    /* The run's nonce keeps a rerun's PATCH from being a no-op (no new
     * resourceVersion, no event). */
    snprintf(desc, sizeof(desc), "updated by bench_mirror run %llx, update %d",
             (unsigned long long)B.run_id, seq);
    snprintf(seqs, sizeof(seqs), "%d", seq);
    patch = json_pack("{s:{s:{s:s}}, s:{s:s}}", "metadata", "annotations", "kscore.io/bench-seq",
                      seqs, "spec", "description", desc);
    if (patch == NULL)
        return -1;

    pthread_mutex_lock(&B.mu);
    snprintf(B.cur_name, sizeof(B.cur_name), "%s", name);
    memset(B.cur, 0, sizeof(B.cur));
    pthread_mutex_unlock(&B.mu);

    t0 = now_ns();
    st = ks_kube_patch(B.kube, path, patch, NULL, &out);
    t1 = now_ns();
    json_decref(patch);
    if (st != KS_OK) {
        fprintf(stderr, "bench_mirror: patch %s: %s\n", name, ks_status_last());
        rc = -1;
        goto out;
    }
    snprintf(rv, sizeof(rv), "%s", meta_str(out, "resourceVersion"));
    *patch_ms = ms_since(t0, t1);

    clock_gettime(CLOCK_REALTIME, &deadline);
    deadline.tv_sec += UPDATE_TIMEOUT_MS / 1000;
    pthread_mutex_lock(&B.mu);
    for (;;) {
        done = 1;
        for (int o = 0; o < OBS_COUNT; o++)
            if (strcmp(B.cur[o].rv, rv) != 0)
                done = 0;
        if (done || pthread_cond_timedwait(&B.cond, &B.mu, &deadline) == ETIMEDOUT)
            break;
    }
    for (int o = 0; o < OBS_COUNT; o++)
        lat[o] = strcmp(B.cur[o].rv, rv) == 0 ? ms_since(t0, B.cur[o].t_ns) : -1;
    B.cur_name[0] = '\0';
    pthread_mutex_unlock(&B.mu);
    if (!done) {
        fprintf(stderr, "bench_mirror: update %d of %s (rv %s): not seen by every reader in %d ms "
                        "(cache %s, kv %s, watch %s)\n", seq, name, rv, UPDATE_TIMEOUT_MS,
                lat[OBS_CACHE] >= 0 ? "yes" : "no", lat[OBS_KV] >= 0 ? "yes" : "no",
                lat[OBS_WATCH] >= 0 ? "yes" : "no");
    }
    rc = done ? 0 : 1;
out:
    json_decref(out);
    return rc;
}

static const char *verdict(double v, double target)
{
    return v < 0 ? "not measured" : v <= target ? "met" : "**missed**";
}

static void fmt_ms(char *out, size_t cap, double v)
{
    if (v < 0)
        snprintf(out, cap, "-");
    else
        snprintf(out, cap, "%.2f ms", v);
}

static void print_results(const results *r)
{
    char a[32], b[32];
    double sync_s = r->sync_all_s[OBS_CACHE];

    printf("bench_mirror: %d User objects (about %.0f bytes of JSON each as kube-apiserver "
           "returns them), one kscore-reconciler (--leader-elect=false), and in the bench "
           "process the read side (lib/mirror_cache.h) with a plain KV watch beside it. "
           "Latencies count from just before the PATCH is sent.\n\n",
           B.nusers, r->object_bytes);
    printf("| figure | measured | target | baseline: kube-apiserver watch | ratio to baseline | verdict |\n");
    printf("|---|---:|---:|---:|---:|---|\n");
    printf("| initial sync: reconciler start to all %d keys in ks_mirror_cache | %.2f s | <= %.0f s | %.2f s (paged list) | %.2fx | %s |\n",
           B.nusers, sync_s, TARGET_SYNC_S, r->list_s, r->list_s > 0 ? sync_s / r->list_s : 0,
           verdict(sync_s, TARGET_SYNC_S));
    printf("| initial sync: reconciler start to /readyz 200 | %.2f s | <= %.0f s | - | - | %s |\n",
           r->ready_s, TARGET_SYNC_S, verdict(r->ready_s, TARGET_SYNC_S));
    fmt_ms(a, sizeof(a), r->lat[OBS_CACHE].p50);
    fmt_ms(b, sizeof(b), r->lat[OBS_WATCH].p50);
    printf("| mirror latency p50: PATCH sent to cache callback (%d updates) | %s | - | %s | %.2fx | - |\n",
           r->measured, a, b, r->lat[OBS_WATCH].p50 > 0 ? r->lat[OBS_CACHE].p50 / r->lat[OBS_WATCH].p50 : 0);
    fmt_ms(a, sizeof(a), r->lat[OBS_CACHE].p99);
    fmt_ms(b, sizeof(b), r->lat[OBS_WATCH].p99);
    printf("| mirror latency p99 | %s | <= %.0f ms | %s | %.2fx | %s |\n", a, TARGET_P99_MS, b,
           r->lat[OBS_WATCH].p99 > 0 ? r->lat[OBS_CACHE].p99 / r->lat[OBS_WATCH].p99 : 0,
           verdict(r->lat[OBS_CACHE].p99, TARGET_P99_MS));
    printf("| reconciler VmRSS after the sync | %.1f MB | <= %.0f MB | - | - | %s |\n", r->rss_sync,
           TARGET_RSS_MB, verdict(r->rss_sync, TARGET_RSS_MB));
    printf("| reconciler VmRSS after the updates | %.1f MB | <= %.0f MB | - | - | %s |\n",
           r->rss_end, TARGET_RSS_MB, verdict(r->rss_end, TARGET_RSS_MB));

    printf("\nDetails:\n\n");
    printf("- creating the %d users through kube-apiserver (%d threads, before the reconciler "
           "starts): %.1f s, %.0f/s (%d created, %d already there, %d failed)\n",
           B.nusers, CREATE_THREADS, r->create_s,
           r->create_s > 0 ? (atomic_load(&B.created) + atomic_load(&B.existed)) / r->create_s : 0,
           atomic_load(&B.created), atomic_load(&B.existed), atomic_load(&B.create_failed));
    printf("- reconciler start to the first user key / all keys: ks_mirror_cache %.2f s / %.2f s, "
           "plain KV watch %.2f s / %.2f s (%.0f keys/s after the first)\n",
           r->sync_first_s[OBS_CACHE], r->sync_all_s[OBS_CACHE], r->sync_first_s[OBS_KV],
           r->sync_all_s[OBS_KV],
           r->sync_all_s[OBS_KV] > r->sync_first_s[OBS_KV]
               ? (B.nusers - 1) / (r->sync_all_s[OBS_KV] - r->sync_first_s[OBS_KV])
               : 0);
    printf("- sync baseline: a paged list of all users (500 a page, each page parsed with "
           "jansson) from the bench process after the sync took %.2f s (%d items)\n",
           r->list_s, r->list_items);
    if (r->puts.count > 0)
        printf("- the reconciler's mirror writes during the sync (its ks_mirror_lag_seconds "
               "histogram, every resource; event to KV ack, lock wait included): %.0f writes, "
               "%.2f s in total, %.3f ms on average; %.1f%% within 1 ms, %.1f%% within 10 ms, "
               "%.0f over 100 ms\n", r->puts.count, r->puts.sum_s,
               r->puts.sum_s * 1000 / r->puts.count, 100 * r->puts.le_1ms / r->puts.count,
               100 * r->puts.le_10ms / r->puts.count, r->puts.count - r->puts.le_100ms);
    printf("- reconciler VmHWM (peak RSS): %.1f MB after the sync, %.1f MB at the end\n",
           r->hwm_sync, r->hwm_end);
    printf("- latency from just before the PATCH, over %d sequential updates of distinct users "
           "(%d warm-up updates not counted; %d not seen by every reader within %d ms):\n\n",
           r->measured, WARMUP, r->lost, UPDATE_TIMEOUT_MS);
    printf("| reader | p50 ms | p99 ms | max ms | mean ms |\n|---|---:|---:|---:|---:|\n");
    for (int o = 0; o < OBS_COUNT; o++)
        printf("| %s | %.2f | %.2f | %.2f | %.2f |\n", obs_names[o], r->lat[o].p50, r->lat[o].p99,
               r->lat[o].max, r->lat[o].mean);
    printf("| PATCH round trip (response received) | %.2f | %.2f | %.2f | %.2f |\n", r->patch.p50,
           r->patch.p99, r->patch.max, r->patch.mean);
    printf("| added by the mirror: cache callback minus kube watch, per update | %.2f | %.2f | %.2f | %.2f |\n",
           r->extra.p50, r->extra.p99, r->extra.max, r->extra.mean);
    printf("\nAt the end the cache held %zu users (expected %d); the readers saw %lu malformed or "
           "error events.\n\n", r->cache_count, B.nusers, r->reader_errors);
}

int main(void)
{
    const char *kubeconfig = getenv("KS_KUBECONFIG");
    const char *nats_url = getenv("KS_NATS_URL");
    char exe[PATH_MAX], logpath[] = "/tmp/bench_mirror-reconciler.XXXXXX", url[96];
    const char *const resources[] = {CACHE_RESOURCE, NULL};
    ks_kube_config kcfg = {0};
    ks_bus_opts bo = {0};
    ks_bus_kv_cfg kvc = {.bucket = BUCKET, .history = 1};
    ks_bus_kv *kv = NULL;
    ks_bus_kv_watcher *kvw = NULL;
    ks_mirror_cache *cache = NULL;
    kube_watch kw = {0};
    int kw_running = 0, logfd = -1, rc = 1, port, cleanup;
    pthread_t threads[CREATE_THREADS];
    double *lat[OBS_COUNT] = {0}, *patch_ms = NULL, *extra = NULL;
    results r;
    pid_t pid = -1;
    CURL *http = NULL;
    int64_t t0, t_ready = 0, deadline;
    ks_status st;

    memset(&r, 0, sizeof(r));
    {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        B.run_id = (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
    }
    ks_log_init("bench", KS_LOG_WARN);
    if (kubeconfig == NULL || kubeconfig[0] == '\0') {
        printf("bench_mirror: skipped: KS_KUBECONFIG is not set (scripts/bench.sh sets it when it "
               "can start a control plane with scripts/controlplane.sh).\n");
        return 0;
    }
    if (nats_url == NULL || nats_url[0] == '\0')
        nats_url = "nats://127.0.0.1:4222";
    B.nusers = (int)env_long("KS_BENCH_MIRROR_USERS", 10000, 10, 100000);
    B.nupdates = (int)env_long("KS_BENCH_MIRROR_UPDATES", 1000, 10, 100000);
    if (B.nupdates + WARMUP > B.nusers)
        B.nupdates = B.nusers - WARMUP;   /* each update touches a distinct user */
    cleanup = (int)env_long("KS_BENCH_MIRROR_CLEANUP", 1, 0, 1);
    if (getenv("KS_BENCH_RECONCILER") != NULL) {
        snprintf(exe, sizeof(exe), "%s", getenv("KS_BENCH_RECONCILER"));
    } else {
        /* <build>/bench/bench_mirror -> <build>/bin/kscore-reconciler */
        ssize_t n = readlink("/proc/self/exe", exe, sizeof(exe) - 1);
        char *slash;
        if (n <= 0) {
            fprintf(stderr, "bench_mirror: cannot read /proc/self/exe\n");
            return 1;
        }
        exe[n] = '\0';
        slash = strrchr(exe, '/');
        if (slash != NULL)
            *slash = '\0';
        slash = strrchr(exe, '/');
        if (slash == NULL || (size_t)(slash - exe) + sizeof("/bin/kscore-reconciler") > sizeof(exe)) {
            fprintf(stderr, "bench_mirror: cannot locate kscore-reconciler\n");
            return 1;
        }
        memcpy(slash, "/bin/kscore-reconciler", sizeof("/bin/kscore-reconciler"));
    }
    if (access(exe, X_OK) != 0) {
        fprintf(stderr, "bench_mirror: %s is not executable (run make)\n", exe);
        return 1;
    }
    signal(SIGTERM, on_fatal_signal);
    signal(SIGINT, on_fatal_signal);
    curl_global_init(CURL_GLOBAL_DEFAULT);

    for (int o = 0; o < NCOUNTED; o++) {
        B.seen[o] = calloc((size_t)B.nusers, 1);
        if (B.seen[o] == NULL)
            goto out;
    }
    for (int o = 0; o < OBS_COUNT; o++)
        if ((lat[o] = calloc((size_t)B.nupdates, sizeof(double))) == NULL)
            goto out;
    patch_ms = calloc((size_t)B.nupdates, sizeof(double));
    extra = calloc((size_t)B.nupdates, sizeof(double));
    if (patch_ms == NULL || extra == NULL)
        goto out;

    /* ---- clients ---- */
    st = ks_kube_config_from_kubeconfig(kubeconfig, NULL, &kcfg);
    if (st == KS_OK)
        st = ks_kube_client_create(&kcfg, &B.kube);
    if (st == KS_OK)
        st = ks_kube_client_create(&kcfg, &B.watch_kube);
    ks_kube_config_clear(&kcfg);
    if (st != KS_OK) {
        fprintf(stderr, "bench_mirror: kube client: %s\n", ks_status_last());
        goto out;
    }
    bo.url = nats_url;
    bo.name = "bench_mirror";
    bo.wait_connected = 1;
    if (ks_bus_connect(&bo, &B.bus) != KS_OK) {
        fprintf(stderr, "bench_mirror: NATS %s: %s\n", nats_url, ks_status_last());
        goto out;
    }

    /* ---- 1. the users ---- */
    fprintf(stderr, "bench_mirror: creating %d users with %d threads\n", B.nusers, CREATE_THREADS);
    t0 = now_ns();
    for (int i = 0; i < CREATE_THREADS; i++)
        if (pthread_create(&threads[i], NULL, create_thread, NULL) != 0) {
            fprintf(stderr, "bench_mirror: cannot start a create thread\n");
            atomic_store(&B.next_create, INT_MAX / 2);
            for (int j = 0; j < i; j++)
                pthread_join(threads[j], NULL);
            goto out;
        }
    for (int i = 0; i < CREATE_THREADS; i++)
        pthread_join(threads[i], NULL);
    r.create_s = ms_since(t0, now_ns()) / 1000;
    if (atomic_load(&B.create_failed) > 0) {
        fprintf(stderr, "bench_mirror: %d creates failed\n", atomic_load(&B.create_failed));
        goto out;
    }
    if (atomic_load(&B.created) > 0) {
        r.object_bytes = (double)atomic_load(&B.object_bytes) / atomic_load(&B.created);
    } else {
        json_t *u = NULL;
        char *txt = NULL;
        if (ks_kube_get(B.kube, USERS_PATH "/" NAME_PREFIX "00000", &u) == KS_OK &&
            (txt = json_dumps(u, JSON_COMPACT)) != NULL)
            r.object_bytes = (double)strlen(txt);
        free(txt);
        json_decref(u);
    }

    /* ---- 2. an empty bucket and two readers ---- */
    (void)ks_bus_stream_delete(B.bus, "KV_" BUCKET);   /* left by an earlier run, if any */
    if (ks_bus_kv_open(B.bus, &kvc, 1, &kv) != KS_OK ||
        ks_bus_kv_watch(kv, ">", on_kv_entry, NULL, &kvw) != KS_OK) {
        fprintf(stderr, "bench_mirror: bucket %s: %s\n", BUCKET, ks_status_last());
        goto out;
    }
    if (ks_mirror_cache_create(B.bus, BUCKET, resources, &cache) != KS_OK ||
        ks_mirror_cache_add_handler(cache, CACHE_RESOURCE, on_cache_change, NULL, NULL) != KS_OK ||
        ks_mirror_cache_wait_synced(cache, 10000) != KS_OK) {
        fprintf(stderr, "bench_mirror: mirror cache: %s\n", ks_status_last());
        goto out;
    }

    /* ---- 3. the reconciler: initial sync ---- */
    port = free_port();
    logfd = mkstemp(logpath);
    if (port <= 0 || logfd < 0) {
        fprintf(stderr, "bench_mirror: no free port or no log file\n");
        goto out;
    }
    close(logfd);
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
    http = curl_easy_init();
    if (http == NULL)
        goto out;
    fprintf(stderr, "bench_mirror: starting %s (admin 127.0.0.1:%d, log %s)\n", exe, port, logpath);
    t0 = now_ns();
    pid = reconciler_spawn(exe, port, logpath);
    if (pid < 0) {
        fprintf(stderr, "bench_mirror: cannot start %s: %s\n", exe, strerror(errno));
        goto out;
    }
    deadline = t0 + (int64_t)SYNC_TIMEOUT_MS * 1000000;
    for (;;) {
        int synced;
        struct timespec ts;

        if (t_ready == 0 && http_ok(http, url))
            t_ready = now_ns();
        pthread_mutex_lock(&B.mu);
        synced = B.nseen[OBS_CACHE] == B.nusers && B.nseen[OBS_KV] == B.nusers;
        if (!synced) {
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 5000000;   /* /readyz is polled every 5 ms */
            if (ts.tv_nsec >= 1000000000) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000;
            }
            pthread_cond_timedwait(&B.cond, &B.mu, &ts);
        }
        pthread_mutex_unlock(&B.mu);
        if (synced && t_ready != 0)
            break;
        if (!reconciler_alive(pid)) {
            fprintf(stderr, "bench_mirror: the reconciler exited during the sync\n");
            child_pid = 0;
            pid = -1;
            print_log_tail(logpath);
            goto out;
        }
        if (now_ns() > deadline) {
            fprintf(stderr, "bench_mirror: no complete sync within %d s (cache %d, kv %d of %d "
                            "keys, ready %s)\n", SYNC_TIMEOUT_MS / 1000, B.nseen[OBS_CACHE],
                    B.nseen[OBS_KV], B.nusers, t_ready ? "yes" : "no");
            print_log_tail(logpath);
            goto out;
        }
    }
    for (int o = 0; o < NCOUNTED; o++) {
        r.sync_first_s[o] = ms_since(t0, B.t_first[o]) / 1000;
        r.sync_all_s[o] = ms_since(t0, B.t_all[o]) / 1000;
    }
    r.ready_s = ms_since(t0, t_ready) / 1000;
    if (proc_rss(pid, &r.rss_sync, &r.hwm_sync) != 0)
        r.rss_sync = r.hwm_sync = -1;
    fprintf(stderr, "bench_mirror: synced in %.2f s, ready in %.2f s, RSS %.1f MB\n",
            r.sync_all_s[OBS_CACHE], r.ready_s, r.rss_sync);
    if (scrape_puts(http, port, &r.puts) != 0)
        r.puts.count = -1;
    /* Let the reconciler's post-list resync (a scan of the bucket) finish, so
     * neither the list below nor the first updates wait behind it. */
    usleep(1000000);
    r.list_s = timed_paged_list(&r.list_items);

    /* ---- 4. updates ---- */
    if (list_rv(kw.rv, sizeof(kw.rv)) != KS_OK ||
        ks_kube_splitter_create(0, &kw.sp) != KS_OK ||
        pthread_create(&kw.thread, NULL, kube_watch_thread, &kw) != 0) {
        fprintf(stderr, "bench_mirror: baseline watch: %s\n", ks_status_last());
        goto out;
    }
    kw_running = 1;
    fprintf(stderr, "bench_mirror: %d warm-up and %d measured updates\n", WARMUP, B.nupdates);
    for (int i = 0; i < WARMUP + B.nupdates; i++) {
        /* 7 and 10,000 are coprime: every update touches another user */
        int idx = (int)(((long)i * 7) % B.nusers), res;
        double l[OBS_COUNT], pm = 0;

        if (!reconciler_alive(pid)) {
            fprintf(stderr, "bench_mirror: the reconciler exited during the updates\n");
            child_pid = 0;
            pid = -1;
            print_log_tail(logpath);
            goto out;
        }
        res = one_update(i, idx, l, &pm);
        if (res < 0)
            goto out;
        if (i < WARMUP)
            continue;
        if (res > 0) {
            if (++r.lost > 20) {
                fprintf(stderr, "bench_mirror: more than 20 updates lost; giving up\n");
                print_log_tail(logpath);
                goto out;
            }
            continue;
        }
        for (int o = 0; o < OBS_COUNT; o++)
            lat[o][r.measured] = l[o];
        patch_ms[r.measured] = pm;
        extra[r.measured] = l[OBS_CACHE] - l[OBS_WATCH];
        r.measured++;
    }
    if (proc_rss(pid, &r.rss_end, &r.hwm_end) != 0)
        r.rss_end = r.hwm_end = -1;
    for (int o = 0; o < OBS_COUNT; o++)
        r.lat[o] = summarize(lat[o], r.measured);
    r.patch = summarize(patch_ms, r.measured);
    r.extra = summarize(extra, r.measured);
    r.cache_count = ks_mirror_cache_count(cache, CACHE_RESOURCE, NULL);
    pthread_mutex_lock(&B.mu);
    r.reader_errors = B.reader_errors;
    pthread_mutex_unlock(&B.mu);
    print_results(&r);
    rc = r.measured > 0 ? 0 : 1;
out:
    fflush(stdout);
    if (pid > 0)
        reconciler_stop(pid);
    if (kw_running) {
        ks_kube_client_shutdown(B.watch_kube);
        pthread_join(kw.thread, NULL);
    }
    ks_kube_splitter_destroy(kw.sp);
    ks_mirror_cache_destroy(cache);
    ks_bus_kv_watch_stop(kvw);
    ks_bus_kv_close(kv);
    if (B.bus != NULL)
        (void)ks_bus_stream_delete(B.bus, "KV_" BUCKET);
    if (cleanup && B.kube != NULL && atomic_load(&B.next_create) > 0) {
        ks_kube_response resp;
        int64_t tc = now_ns();
        st = ks_kube_request(B.kube, "DELETE", USERS_PATH "?labelSelector=" BENCH_LABEL "%3Dmirror",
                             NULL, NULL, 120000, &resp);
        fprintf(stderr, "bench_mirror: deleted the users in %.1f s: %s\n",
                ms_since(tc, now_ns()) / 1000, st == KS_OK ? "ok" : ks_status_last());
        ks_kube_response_clear(&resp);
    }
    if (rc == 0)
        unlink(logpath);
    if (http != NULL)
        curl_easy_cleanup(http);
    ks_bus_destroy(B.bus);
    ks_kube_client_destroy(B.watch_kube);
    ks_kube_client_destroy(B.kube);
    for (int o = 0; o < OBS_COUNT; o++)
        free(lat[o]);
    free(patch_ms);
    free(extra);
    for (int o = 0; o < NCOUNTED; o++)
        free(B.seen[o]);
    return rc;
}
