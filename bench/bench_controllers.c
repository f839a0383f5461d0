/* bench_controllers: the user controller benchmark of issue 6
 * (docs/benchmarks.md, docs/controllers.md).
 *
 * Against a real kube-apiserver (KS_KUBECONFIG) and nats-server (KS_NATS_URL):
 *   1. the baseline: N bcrypt hashes (ks_password_hash: crypt_gensalt_rn +
 *      crypt_rn) at the bcrypt cost, spread over one thread per CPU, timed;
 *      and a short single-thread sample;
 *   2. start build/<variant>/bin/kscore-reconciler (--leader-elect=false,
 *      its own mirror bucket, --bcrypt-cost=<cost>) and wait for /readyz;
 *   3. watch the bench's users (this process's own kube-apiserver watch),
 *      create N users with plain-text passwords from 8 threads, and time
 *      from the first create until every user is hashed ($2b$<cost>$) and
 *      Active;
 *   4. read the controller's counters (reconciles, writes, errors), delete
 *      the users (the reconciler drops their finalizers), stop it;
 *   5. the baseline again (N/4 hashes), so a change of machine load during
 *      the run shows;
 *   6. print a Markdown table: users/s against the mean of the two
 *      baselines, as a ratio (target: at least 0.8).
 *
 * Environment: KS_KUBECONFIG and KS_NATS_URL (without KS_KUBECONFIG the bench
 * prints "skipped" and exits 0); KS_BENCH_RECONCILER (default: the
 * kscore-reconciler of this binary's build folder); KS_BENCH_CONTROLLERS_USERS
 * (1000); KS_BENCH_CONTROLLERS_COST (10). Exits non-zero only when something
 * could not be measured; a missed target is reported in the table. */
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

#include "kube.h"
#include "log.h"
#include "password.h"

#define USERS_PATH "/apis/iam.kubesphere.io/v1beta1/users"
#define RUN_LABEL "kscore.io/bench-controllers"
#define BUCKET "KS_BENCH_CONTROLLERS"
#define CREATE_THREADS 8
#define SINGLE_SAMPLE 40
#define TARGET_RATIO 0.8
#define NAME_MAX_ 64
#define RV_MAX 64

extern char **environ;

static struct {
    int nusers, cost;
    char run[24];                 /* names: bench-ctl-<run>-00042 */
    ks_kube_client *kube, *watch_kube;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    unsigned char *done;          /* per user: hashed and Active seen */
    int ndone;
    int64_t t_last;
    unsigned long watch_errors;
    ks_kube_splitter *sp;
    char rv[RV_MAX];
    atomic_int next_create, created, create_failed;
    atomic_int next_delete, delete_failed;
    atomic_int hash_next, hash_n;
} B = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

static volatile sig_atomic_t child_pid;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
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
        fprintf(stderr, "bench_controllers: %s=%s is not in [%ld, %ld]; using %ld\n", name, v, lo,
                hi, def);
        return def;
    }
    return n;
}

static void user_name(int i, char *out, size_t cap)
{
    snprintf(out, cap, "bench-ctl-%s-%05d", B.run, i);
}

static int user_index(const char *name)
{
    char prefix[NAME_MAX_];
    size_t plen;
    char *end = NULL;
    long n;

    snprintf(prefix, sizeof(prefix), "bench-ctl-%s-", B.run);
    plen = strlen(prefix);
    if (strncmp(name, prefix, plen) != 0)
        return -1;
    errno = 0;
    n = strtol(name + plen, &end, 10);
    if (errno != 0 || end == name + plen || *end != '\0' || n < 0 || n >= B.nusers)
        return -1;
    return (int)n;
}

/* ---- the baseline ---- */

static void *hash_thread(void *arg)
{
    for (;;) {
        char *h = NULL;
        if (atomic_fetch_add(&B.hash_next, 1) >= atomic_load(&B.hash_n))
            break;
        if (ks_password_hash("BenchPassw0rd1", B.cost, &h) != KS_OK)
            fprintf(stderr, "bench_controllers: hash: %s\n", ks_status_last());
        free(h);
    }
    return NULL;
}

/* n hashes on nthreads threads: hashes per second, or -1. */
static double hash_rate(int n, int nthreads)
{
    pthread_t th[64];
    int started = 0;
    int64_t t0;

    if (nthreads > 64)
        nthreads = 64;
    atomic_store(&B.hash_next, 0);
    atomic_store(&B.hash_n, n);
    t0 = now_ns();
    for (int i = 0; i < nthreads; i++)
        if (pthread_create(&th[i], NULL, hash_thread, NULL) == 0)
            started++;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    if (started == 0)
        return -1;
    return (double)n / ((double)(now_ns() - t0) / 1e9);
}

/* ---- the watch ---- */

static int user_done(const json_t *obj)
{
    const char *pw = json_string_value(json_object_get(json_object_get(obj, "spec"), "password"));
    const char *state =
        json_string_value(json_object_get(json_object_get(obj, "status"), "state"));
    char prefix[16];

    snprintf(prefix, sizeof(prefix), "$2b$%02d$", B.cost);
    return pw != NULL && strncmp(pw, prefix, strlen(prefix)) == 0 &&
           ks_password_is_hash(pw) && state != NULL && strcmp(state, "Active") == 0;
}

static int on_watch_event(const char *event, size_t len, void *arg)
{
    ks_kube_event_type type;
    json_t *obj = NULL;
    int stop = 0;

    if (ks_kube_event_parse(event, len, &type, &obj) != KS_OK) {
        B.watch_errors++;
        return 0;
    }
    if (type == KS_KUBE_EVENT_ADDED || type == KS_KUBE_EVENT_MODIFIED) {
        const char *name =
            json_string_value(json_object_get(json_object_get(obj, "metadata"), "name"));
        int idx = name ? user_index(name) : -1;
        if (idx >= 0 && user_done(obj)) {
            pthread_mutex_lock(&B.mu);
            if (!B.done[idx]) {
                B.done[idx] = 1;
                B.ndone++;
                B.t_last = now_ns();
                if (B.ndone == B.nusers)
                    pthread_cond_broadcast(&B.cond);
            }
            stop = B.ndone == B.nusers;
            pthread_mutex_unlock(&B.mu);
        }
    } else if (type == KS_KUBE_EVENT_ERROR) {
        B.watch_errors++;
    }
    json_decref(obj);
    return stop;
}

static int on_watch_chunk(const char *chunk, size_t len, void *arg)
{
    return ks_kube_splitter_feed(B.sp, chunk, len, on_watch_event, NULL) == KS_OK ? 0 : 1;
}

static void *watch_thread(void *arg)
{
    char path[512];

    snprintf(path, sizeof(path),
             USERS_PATH "?watch=1&labelSelector=" RUN_LABEL "%%3D%s&resourceVersion=%s"
                        "&timeoutSeconds=900",
             B.run, B.rv);
    ks_status st = ks_kube_stream(B.watch_kube, path, 930000L, on_watch_chunk, NULL, NULL);
    pthread_mutex_lock(&B.mu);
    if (st != KS_OK && st != KS_ERR_CLOSED && B.ndone < B.nusers)
        fprintf(stderr, "bench_controllers: the watch ended: %s\n", ks_status_last());
    pthread_cond_broadcast(&B.cond);
    pthread_mutex_unlock(&B.mu);
    return NULL;
}

/* ---- creating and deleting ---- */

static void *create_thread(void *arg)
{
    for (;;) {
        int i = atomic_fetch_add(&B.next_create, 1);
        char name[NAME_MAX_], email[NAME_MAX_ + 16], pw[32];
        json_t *obj;
        ks_status st;

        if (i >= B.nusers)
            break;
        user_name(i, name, sizeof(name));
        snprintf(email, sizeof(email), "%s@example.com", name);
        snprintf(pw, sizeof(pw), "BenchPassw0rd%05d", i);
        obj = json_pack("{s:s, s:s, s:{s:s, s:{s:s}}, s:{s:s, s:s}}", "apiVersion",
                        "iam.kubesphere.io/v1beta1", "kind", "User", "metadata", "name", name,
                        "labels", RUN_LABEL, B.run, "spec", "email", email, "password", pw);
        st = obj ? ks_kube_create(B.kube, USERS_PATH, obj, NULL) : KS_ERR_NOMEM;
        json_decref(obj);
        if (st == KS_OK)
            atomic_fetch_add(&B.created, 1);
        else if (atomic_fetch_add(&B.create_failed, 1) < 3)
            fprintf(stderr, "bench_controllers: create %s: %s\n", name, ks_status_last());
    }
    return NULL;
}

static void *delete_thread(void *arg)
{
    for (;;) {
        int i = atomic_fetch_add(&B.next_delete, 1);
        char name[NAME_MAX_], path[256];
        ks_status st;

        if (i >= B.nusers)
            break;
        user_name(i, name, sizeof(name));
        snprintf(path, sizeof(path), USERS_PATH "/%s", name);
        st = ks_kube_delete(B.kube, path, NULL);
        if (st != KS_OK && st != KS_ERR_NOT_FOUND && atomic_fetch_add(&B.delete_failed, 1) < 3)
            fprintf(stderr, "bench_controllers: delete %s: %s\n", name, ks_status_last());
    }
    return NULL;
}

static int run_threads(void *(*fn)(void *))
{
    pthread_t th[CREATE_THREADS];
    int started = 0;

    for (int i = 0; i < CREATE_THREADS; i++)
        if (pthread_create(&th[i], NULL, fn, NULL) == 0)
            started++;
    for (int i = 0; i < started; i++)
        pthread_join(th[i], NULL);
    return started > 0 ? 0 : -1;
}

/* Users of this run still in the API (a list with limit 1 and the count
 * kube-apiserver gives), or -1. */
static long users_left(void)
{
    char path[256];
    json_t *list = NULL;
    long n = -1;

    snprintf(path, sizeof(path), USERS_PATH "?labelSelector=" RUN_LABEL "%%3D%s", B.run);
    if (ks_kube_get(B.kube, path, &list) == KS_OK)
        n = (long)json_array_size(json_object_get(list, "items"));
    json_decref(list);
    return n;
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

static pid_t reconciler_spawn(const char *exe, int admin_port, const char *logpath)
{
    char admin[64], cost[32], bucket[64] = "--mirror-bucket=" BUCKET;
    char *argv[] = {(char *)exe, "--leader-elect=false", bucket, admin, cost,
                    "--log-level=warn", NULL};
    pid_t parent = getpid(), pid;
    int fd;

    snprintf(admin, sizeof(admin), "--admin-addr=127.0.0.1:%d", admin_port);
    snprintf(cost, sizeof(cost), "--bcrypt-cost=%d", B.cost);
    fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
    if (fd < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
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
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    child_pid = 0;
}

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

/* GET url: 200 and, when body is not NULL, the body (caller frees). */
static int http_get(const char *url, char **body)
{
    CURL *h = curl_easy_init();
    http_body b = {0};
    long code = 0;

    if (h == NULL)
        return 0;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 2000L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, keep_body);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &code);
    curl_easy_cleanup(h);
    if (code == 200 && body != NULL)
        *body = b.p;
    else
        free(b.p);
    return code == 200;
}

static double metric_value(const char *text, const char *series)
{
    size_t n = strlen(series);

    for (const char *l = text; l != NULL && *l != '\0';) {
        const char *nl = strchr(l, '\n');
        if (strncmp(l, series, n) == 0 && l[n] == ' ')
            return strtod(l + n + 1, NULL);
        l = nl ? nl + 1 : NULL;
    }
    return -1;
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
    fprintf(stderr, "bench_controllers: last lines of the reconciler's log:\n");
    for (long i = 0; fgets(line, sizeof(line), f) != NULL; i++)
        if (i >= skip)
            fprintf(stderr, "    %s", line);
    fclose(f);
}

static int locate_reconciler(char *exe, size_t cap)
{
    ssize_t n;
    char *slash;

    if (getenv("KS_BENCH_RECONCILER") != NULL) {
        snprintf(exe, cap, "%s", getenv("KS_BENCH_RECONCILER"));
        return access(exe, X_OK);
    }
    /* <build>/bench/bench_controllers -> <build>/bin/kscore-reconciler */
    n = readlink("/proc/self/exe", exe, cap - 1);
    if (n <= 0)
        return -1;
    exe[n] = '\0';
    if ((slash = strrchr(exe, '/')) != NULL)
        *slash = '\0';
    slash = strrchr(exe, '/');
    if (slash == NULL || (size_t)(slash - exe) + sizeof("/bin/kscore-reconciler") > cap)
        return -1;
    memcpy(slash, "/bin/kscore-reconciler", sizeof("/bin/kscore-reconciler"));
    return access(exe, X_OK);
}

int main(void)
{
    const char *kubeconfig = getenv("KS_KUBECONFIG");
    char exe[PATH_MAX], logpath[] = "/tmp/bench_controllers-reconciler.XXXXXX", url[128];
    ks_kube_config kcfg = {0};
    pthread_t wt;
    int wt_running = 0, rc = 1, port, logfd, ncpu = (int)sysconf(_SC_NPROCESSORS_ONLN);
    double base1 = -1, base2 = -1, single = -1, elapsed_s = -1, create_s = -1;
    double m_reconciles = -1, m_writes = -1, m_errors = -1;
    int64_t t0, deadline;
    pid_t pid = -1;
    char *metrics = NULL;

    ks_log_init("bench", KS_LOG_WARN);
    if (kubeconfig == NULL || kubeconfig[0] == '\0') {
        printf("bench_controllers: skipped: KS_KUBECONFIG is not set (scripts/bench.sh sets it "
               "when it can start a control plane with scripts/controlplane.sh).\n");
        return 0;
    }
    B.nusers = (int)env_long("KS_BENCH_CONTROLLERS_USERS", 1000, 10, 100000);
    B.cost = (int)env_long("KS_BENCH_CONTROLLERS_COST", 10, KS_PASSWORD_MIN_COST,
                           KS_PASSWORD_MAX_COST);
    if (ncpu < 1)
        ncpu = 1;
    snprintf(B.run, sizeof(B.run), "%lx", (unsigned long)time(NULL));
    if (locate_reconciler(exe, sizeof(exe)) != 0) {
        fprintf(stderr, "bench_controllers: no executable kscore-reconciler (run make)\n");
        return 1;
    }
    signal(SIGTERM, on_fatal_signal);
    signal(SIGINT, on_fatal_signal);
    curl_global_init(CURL_GLOBAL_DEFAULT);
    B.done = calloc((size_t)B.nusers, 1);
    if (B.done == NULL)
        goto out;

    /* ---- 1. the baseline ---- */
    fprintf(stderr, "bench_controllers: baseline: %d hashes at cost %d on %d threads\n", B.nusers,
            B.cost, ncpu);
    base1 = hash_rate(B.nusers, ncpu);
    single = hash_rate(SINGLE_SAMPLE, 1);

    /* ---- 2. clients, the reconciler ---- */
    if (ks_kube_config_from_kubeconfig(kubeconfig, NULL, &kcfg) != KS_OK ||
        ks_kube_client_create(&kcfg, &B.kube) != KS_OK ||
        ks_kube_client_create(&kcfg, &B.watch_kube) != KS_OK ||
        ks_kube_splitter_create(0, &B.sp) != KS_OK) {
        fprintf(stderr, "bench_controllers: kube client: %s\n", ks_status_last());
        goto out;
    }
    port = free_port();
    logfd = mkstemp(logpath);
    if (port <= 0 || logfd < 0)
        goto out;
    close(logfd);
    pid = reconciler_spawn(exe, port, logpath);
    if (pid < 0)
        goto out;
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/readyz", port);
    deadline = now_ns() + 60 * 1000000000LL;
    while (!http_get(url, NULL)) {
        if (!reconciler_alive(pid) || now_ns() > deadline) {
            fprintf(stderr, "bench_controllers: the reconciler is not ready\n");
            print_log_tail(logpath);
            goto out;
        }
        usleep(50000);
    }

    /* ---- 3. create and wait ---- */
    {
        json_t *list = NULL;
        char path[256];
        snprintf(path, sizeof(path), USERS_PATH "?labelSelector=" RUN_LABEL "%%3D%s&limit=1",
                 B.run);
        if (ks_kube_get(B.kube, path, &list) != KS_OK) {
            fprintf(stderr, "bench_controllers: list: %s\n", ks_status_last());
            goto out;
        }
        const char *rv = json_string_value(
            json_object_get(json_object_get(list, "metadata"), "resourceVersion"));
        snprintf(B.rv, sizeof(B.rv), "%s", rv ? rv : "0");
        json_decref(list);
    }
    if (pthread_create(&wt, NULL, watch_thread, NULL) != 0)
        goto out;
    wt_running = 1;
    fprintf(stderr, "bench_controllers: creating %d users (run %s)\n", B.nusers, B.run);
    t0 = now_ns();
    if (run_threads(create_thread) != 0 || atomic_load(&B.create_failed) > 0) {
        fprintf(stderr, "bench_controllers: %d creates failed\n", atomic_load(&B.create_failed));
        goto out;
    }
    create_s = (double)(now_ns() - t0) / 1e9;
    deadline = t0 + (int64_t)(60 + 2 * B.nusers / (base1 > 0 ? base1 : 1)) * 1000000000LL;
    pthread_mutex_lock(&B.mu);
    while (B.ndone < B.nusers && now_ns() < deadline) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&B.cond, &B.mu, &ts);
        if (!reconciler_alive(pid))
            break;
    }
    if (B.ndone == B.nusers)
        elapsed_s = (double)(B.t_last - t0) / 1e9;
    pthread_mutex_unlock(&B.mu);
    if (elapsed_s < 0) {
        fprintf(stderr, "bench_controllers: only %d of %d users hashed and Active in time\n",
                B.ndone, B.nusers);
        print_log_tail(logpath);
        goto out;
    }
    fprintf(stderr, "bench_controllers: all hashed and Active after %.2f s\n", elapsed_s);

    /* ---- 4. counters, clean up ---- */
    snprintf(url, sizeof(url), "http://127.0.0.1:%d/metrics", port);
    if (http_get(url, &metrics)) {
        m_reconciles = metric_value(metrics, "ks_controller_reconciles_total{controller=\"user\"}");
        m_writes = metric_value(metrics, "ks_controller_writes_total{controller=\"user\"}");
        m_errors = metric_value(metrics, "ks_controller_errors_total{controller=\"user\"}");
    }
    run_threads(delete_thread);
    deadline = now_ns() + 120 * 1000000000LL;
    while (users_left() != 0 && now_ns() < deadline && reconciler_alive(pid))
        usleep(250000);
    if (users_left() != 0)
        fprintf(stderr, "bench_controllers: warning: users of run %s are left\n", B.run);
    ks_kube_client_shutdown(B.watch_kube);
    pthread_join(wt, NULL);
    wt_running = 0;
    reconciler_stop(pid);
    pid = -1;

    /* ---- 5. the baseline again (a quarter: it only shows drift) ---- */
    base2 = hash_rate(B.nusers / 4 > ncpu ? B.nusers / 4 : ncpu, ncpu);

    /* ---- 6. report ---- */
    {
        double base = (base1 + base2) / 2, rate = B.nusers / elapsed_s;
        double ratio = rate / base;
        printf("User controller: %d users created with plain-text passwords (8 threads, %.1f s "
               "to create), bcrypt cost %d, %d CPUs. Time from the first create until every "
               "user is hashed and Active, seen by a kube-apiserver watch.\n\n",
               B.nusers, create_s, B.cost, ncpu);
        printf("| measure | value |\n|---|---|\n");
        printf("| all hashed and Active | %.2f s |\n", elapsed_s);
        printf("| users/s | %.1f |\n", rate);
        printf("| baseline: crypt on %d threads, %d before / %d after | %.1f / %.1f hashes/s |\n",
               ncpu, B.nusers, B.nusers / 4 > ncpu ? B.nusers / 4 : ncpu, base1, base2);
        printf("| baseline: crypt on 1 thread (%d hashes) | %.1f hashes/s (%.1f ms a hash) |\n",
               SINGLE_SAMPLE, single, 1000.0 / single);
        printf("| **ratio users/s : baseline (mean)** | **%.2f** (target >= %.1f: %s) |\n", ratio,
               TARGET_RATIO, ratio >= TARGET_RATIO ? "met" : "**missed**");
        printf("| user controller: reconciles, writes, retries | %.0f, %.0f (%.2f a user), %.0f |\n",
               m_reconciles, m_writes, m_writes / B.nusers, m_errors);
        printf("| watch errors | %lu |\n", B.watch_errors);
    }
    rc = 0;
out:
    if (wt_running) {
        ks_kube_client_shutdown(B.watch_kube);
        pthread_join(wt, NULL);
    }
    if (pid > 0)
        reconciler_stop(pid);
    unlink(logpath);
    free(metrics);
    ks_kube_splitter_destroy(B.sp);
    ks_kube_client_destroy(B.watch_kube);
    ks_kube_client_destroy(B.kube);
    ks_kube_config_clear(&kcfg);
    free(B.done);
    curl_global_cleanup();
    return rc;
}
