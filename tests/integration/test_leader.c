/* Integration tests of lib/leader.c against a real kube-apiserver.
 * KS_KUBECONFIG names an admin kubeconfig (scripts/controlplane.sh writes it);
 * the tests are skipped only when it is unset.
 *
 * Every test uses its own Lease in kubesphere-system (created if missing) with
 * short timings: lease 3 s, renew deadline 2 s, retry period 500 ms. Conditions
 * are awaited by polling with deadlines. "One leader at a time" is checked
 * exactly through the callbacks (a shared count of candidates between
 * on_started_leading and on_stopped_leading must never exceed one) and by
 * sampling ks_leader_is_leader. Unreachability of the API server is simulated
 * with a TCP proxy in this process that can drop every connection. */
#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "kube.h"
#include "leader.h"
#include "log.h"
#include "metrics.h"

#define NS "kubesphere-system"
#define LEASES "/apis/coordination.k8s.io/v1/namespaces/" NS "/leases"
#define LEASE_MS 3000
#define RENEW_MS 2000
#define RETRY_MS 500
#define JITTERED_RETRY_MS (RETRY_MS * 12 / 10)
/* slack for scheduling, sanitizers and the requests themselves */
#define SLACK_MS 1000

static ks_kube_client *client;
static ks_kube_config base_cfg;
static char prefix[64];

static int64_t now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (int64_t)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* Poll cond(arg) every 5 ms until it holds or timeout_ms passes. Returns the
 * ms it took, or -1 on timeout. */
static int64_t wait_until(int (*cond)(void *), void *arg, int64_t timeout_ms)
{
    int64_t t0 = now_ms();

    for (;;) {
        if (cond(arg))
            return now_ms() - t0;
        if (now_ms() - t0 > timeout_ms)
            return -1;
        nap_ms(5);
    }
}

#define NEED_CLIENT()                                        \
    do {                                                     \
        if (client == NULL) {                                \
            print_message("KS_KUBECONFIG is unset: skip\n"); \
            skip();                                          \
        }                                                    \
    } while (0)

/* ---- candidates: an elector plus what its callbacks saw ---- */

static atomic_int leaders_now;  /* candidates between started and stopped */
static atomic_int violations;   /* times leaders_now went above 1 */

typedef struct cand {
    ks_leader *l;
    atomic_int started, stopped;
    _Atomic int64_t started_at, stopped_at; /* ms, last time */
    pthread_mutex_t mu;
    char last_new_leader[KS_LEADER_IDENTITY_MAX + 1];
    int new_leader_calls;
} cand;

static void on_started(void *arg)
{
    cand *c = arg;

    atomic_store(&c->started_at, now_ms());
    atomic_fetch_add(&c->started, 1);
    if (atomic_fetch_add(&leaders_now, 1) != 0) {
        atomic_fetch_add(&violations, 1);
        fprintf(stderr, "VIOLATION: two candidates lead at once\n");
    }
}

static void on_stopped(void *arg)
{
    cand *c = arg;

    atomic_fetch_sub(&leaders_now, 1);
    atomic_store(&c->stopped_at, now_ms());
    atomic_fetch_add(&c->stopped, 1);
}

static void on_new_leader(const char *identity, void *arg)
{
    cand *c = arg;

    pthread_mutex_lock(&c->mu);
    snprintf(c->last_new_leader, sizeof(c->last_new_leader), "%s", identity);
    c->new_leader_calls++;
    pthread_mutex_unlock(&c->mu);
}

/* Candidates, the sampler, the proxy and its client live in static storage
 * and are registered here, so that the per-test teardown can stop whatever a
 * failed test left running (a failed assertion leaves the test function). */
#define MAX_LIVE 4
static cand *live_cands[MAX_LIVE];

/* Start c with the test timings, or the defaults when lease_ms is 0. */
static void cand_start_timed(cand *c, ks_kube_client *kube, const char *lease_ns,
                             const char *name, const char *identity, int release, int64_t lease_ms,
                             int64_t renew_ms, int64_t retry_ms)
{
    ks_leader_config cfg;

    memset(c, 0, sizeof(*c));
    pthread_mutex_init(&c->mu, NULL);
    ks_leader_config_init(&cfg);
    cfg.lease_namespace = lease_ns;
    cfg.name = name;
    cfg.identity = identity;
    cfg.lease_duration_ms = lease_ms;
    cfg.renew_deadline_ms = renew_ms;
    cfg.retry_period_ms = retry_ms;
    cfg.release_on_cancel = release;
    cfg.on_started_leading = on_started;
    cfg.on_stopped_leading = on_stopped;
    cfg.on_new_leader = on_new_leader;
    cfg.arg = c;
    if (ks_leader_start(kube, &cfg, &c->l) != KS_OK)
        fail_msg("ks_leader_start: %s", ks_status_last());
    for (int i = 0; i < MAX_LIVE; i++) {
        if (live_cands[i] == NULL) {
            live_cands[i] = c;
            return;
        }
    }
    fail_msg("more than %d live candidates", MAX_LIVE);
}

static void cand_start(cand *c, ks_kube_client *kube, const char *lease_ns, const char *name,
                       const char *identity, int release)
{
    cand_start_timed(c, kube, lease_ns, name, identity, release, LEASE_MS, RENEW_MS, RETRY_MS);
}

/* Stop c (a no-op when it is not running). */
static void cand_stop(cand *c)
{
    int found = 0;

    for (int i = 0; i < MAX_LIVE; i++) {
        if (live_cands[i] == c) {
            live_cands[i] = NULL;
            found = 1;
        }
    }
    if (!found)
        return;
    ks_leader_stop(c->l);
    c->l = NULL;
    pthread_mutex_destroy(&c->mu);
}

/* Wait until c's on_started_leading has run n times (ks_leader_is_leader
 * turns 1 just before the callback runs). */
static int64_t wait_started(cand *c, int n, int64_t timeout_ms)
{
    int64_t t0 = now_ms();

    while (atomic_load(&c->started) < n) {
        if (now_ms() - t0 > timeout_ms)
            return -1;
        nap_ms(2);
    }
    return now_ms() - t0;
}

static int cand_leads(void *arg)
{
    return ks_leader_is_leader(((cand *)arg)->l);
}

static int cand_not_leading(void *arg)
{
    return !ks_leader_is_leader(((cand *)arg)->l);
}

static void cand_last_new_leader(cand *c, char *out, size_t cap)
{
    size_t n;

    pthread_mutex_lock(&c->mu);
    n = strnlen(c->last_new_leader, cap - 1);
    memcpy(out, c->last_new_leader, n);
    out[n] = '\0';
    pthread_mutex_unlock(&c->mu);
}

typedef struct {
    cand *a, *b;
} pair;

static int either_leads(void *arg)
{
    pair *p = arg;
    return ks_leader_is_leader(p->a->l) || ks_leader_is_leader(p->b->l);
}

static void reset_counts(void)
{
    atomic_store(&leaders_now, 0);
    atomic_store(&violations, 0);
}

/* ---- the Lease through the plain client ---- */

static void lease_path(char *out, size_t cap, const char *name)
{
    snprintf(out, cap, LEASES "/%s", name);
}

static json_t *lease_get(const char *name)
{
    char path[512];
    json_t *obj = NULL;

    lease_path(path, sizeof(path), name);
    if (ks_kube_get(client, path, &obj) != KS_OK)
        return NULL;
    return obj;
}

static const char *spec_str(const json_t *lease, const char *key)
{
    return json_string_value(json_object_get(json_object_get(lease, "spec"), key));
}

static long spec_int(const json_t *lease, const char *key)
{
    return (long)json_integer_value(json_object_get(json_object_get(lease, "spec"), key));
}

static void lease_delete(const char *name)
{
    char path[512];
    json_t *res = NULL;

    lease_path(path, sizeof(path), name);
    if (ks_kube_delete(client, path, &res) == KS_OK)
        json_decref(res);
}

static void unique_name(char *out, size_t cap, const char *what)
{
    snprintf(out, cap, "%s-%s", prefix, what);
    lease_delete(out); /* a leftover of an earlier run */
}

static int microtime_ok(const char *s)
{
    /* "2006-01-02T15:04:05.000000Z" */
    static const char shape[] = "dddd-dd-ddTdd:dd:dd.ddddddZ";

    if (s == NULL || strlen(s) != sizeof(shape) - 1)
        return 0;
    for (size_t i = 0; i < sizeof(shape) - 1; i++) {
        if (shape[i] == 'd' ? (s[i] < '0' || s[i] > '9') : s[i] != shape[i])
            return 0;
    }
    return 1;
}

static double gauge_value(const char *name)
{
    char labels[512];
    char lease[300];

    snprintf(lease, sizeof(lease), NS "/%s", name);
    labels[0] = '\0';
    assert_int_equal(ks_metrics_label_append(labels, sizeof(labels), "lease", lease), KS_OK);
    return ks_metric_value(ks_metrics_gauge("ks_leader_is_leader", NULL, labels));
}

static double errors_value(const char *lease_ns, const char *name)
{
    char labels[512];
    char lease[300];

    snprintf(lease, sizeof(lease), "%s/%s", lease_ns, name);
    labels[0] = '\0';
    assert_int_equal(ks_metrics_label_append(labels, sizeof(labels), "lease", lease), KS_OK);
    return ks_metric_value(ks_metrics_counter("ks_leader_errors_total", NULL, labels));
}

/* ---- a TCP proxy that can cut the API server off ---- */

typedef struct proxy {
    int lfd, port, up_port;
    pthread_t th;
    atomic_int cut, stop, live;
} proxy;

typedef struct {
    proxy *p;
    int a, b;
} proxy_conn;

static void *proxy_pump(void *arg)
{
    proxy_conn *pc = arg;
    char buf[16384];
    struct pollfd fds[2] = {{pc->a, POLLIN, 0}, {pc->b, POLLIN, 0}};

    while (!atomic_load(&pc->p->stop) && !atomic_load(&pc->p->cut)) {
        int n = poll(fds, 2, 20);
        if (n < 0 && errno != EINTR)
            break;
        if (n <= 0)
            continue;
        int done = 0;
        for (int i = 0; i < 2 && !done; i++) {
            if (!(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
                continue;
            ssize_t r = read(fds[i].fd, buf, sizeof(buf));
            if (r <= 0) {
                done = 1;
                break;
            }
            for (ssize_t off = 0; off < r;) {
                ssize_t w = write(fds[1 - i].fd, buf + off, (size_t)(r - off));
                if (w <= 0) {
                    done = 1;
                    break;
                }
                off += w;
            }
        }
        if (done)
            break;
    }
    close(pc->a);
    close(pc->b);
    atomic_fetch_sub(&pc->p->live, 1);
    free(pc);
    return NULL;
}

static void *proxy_accept(void *arg)
{
    proxy *p = arg;
    struct pollfd pfd = {p->lfd, POLLIN, 0};

    while (!atomic_load(&p->stop)) {
        if (poll(&pfd, 1, 20) <= 0)
            continue;
        int fd = accept(p->lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (atomic_load(&p->cut)) {
            close(fd); /* the API server is "down" */
            continue;
        }
        struct sockaddr_in up = {.sin_family = AF_INET, .sin_port = htons((uint16_t)p->up_port)};
        up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        int ufd = socket(AF_INET, SOCK_STREAM, 0);
        if (ufd < 0 || connect(ufd, (struct sockaddr *)&up, sizeof(up)) != 0) {
            if (ufd >= 0)
                close(ufd);
            close(fd);
            continue;
        }
        proxy_conn *pc = malloc(sizeof(*pc));
        pthread_t t;
        pc->p = p;
        pc->a = fd;
        pc->b = ufd;
        atomic_fetch_add(&p->live, 1);
        if (pthread_create(&t, NULL, proxy_pump, pc) != 0) {
            atomic_fetch_sub(&p->live, 1);
            close(fd);
            close(ufd);
            free(pc);
            continue;
        }
        pthread_detach(t);
    }
    return NULL;
}

static proxy *live_proxy;
static ks_kube_client *live_via;

static void proxy_start(proxy *p, int up_port)
{
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = 0};
    socklen_t len = sizeof(a);

    memset(p, 0, sizeof(*p));
    p->up_port = up_port;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    p->lfd = socket(AF_INET, SOCK_STREAM, 0);
    assert_true(p->lfd >= 0);
    assert_int_equal(bind(p->lfd, (struct sockaddr *)&a, sizeof(a)), 0);
    assert_int_equal(listen(p->lfd, 64), 0);
    assert_int_equal(getsockname(p->lfd, (struct sockaddr *)&a, &len), 0);
    p->port = ntohs(a.sin_port);
    assert_int_equal(pthread_create(&p->th, NULL, proxy_accept, p), 0);
    live_proxy = p;
}

static int proxy_idle(void *arg)
{
    return atomic_load(&((proxy *)arg)->live) == 0;
}

/* Stop accepting, end every connection, wait for the pumps. */
static void proxy_stop(proxy *p)
{
    if (p != live_proxy)
        return;
    live_proxy = NULL;
    atomic_store(&p->stop, 1);
    pthread_join(p->th, NULL);
    close(p->lfd);
    if (wait_until(proxy_idle, p, 5000) < 0)
        fprintf(stderr, "proxy: connections still open after 5 s\n");
}

/* A client for the same API server through the proxy. */
static ks_kube_client *client_via(const proxy *p)
{
    ks_kube_config cfg = {0};
    ks_kube_client *c = NULL;
    char url[64];

    assert_int_equal(ks_kube_config_copy(&base_cfg, &cfg), KS_OK);
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", p->port);
    free(cfg.server);
    cfg.server = strdup(url);
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_OK);
    ks_kube_config_clear(&cfg);
    return c;
}

static int server_port(const char *server)
{
    const char *colon = strrchr(server, ':');
    long port = 0;

    if (colon == NULL || strncmp(server, "https://127.0.0.1:", 18) != 0)
        return -1;
    for (const char *s = colon + 1; *s; s++) {
        if (*s < '0' || *s > '9' || port > 65535)
            return -1;
        port = port * 10 + (*s - '0');
    }
    return port > 0 && port <= 65535 ? (int)port : -1;
}

/* ---- setup ---- */

static int group_setup(void **state)
{
    const char *kc = getenv("KS_KUBECONFIG");
    json_t *ns = NULL, *res = NULL;

    (void)state;
    if (kc == NULL || kc[0] == '\0')
        return 0;
    if (ks_kube_config_from_kubeconfig(kc, NULL, &base_cfg) != KS_OK) {
        fprintf(stderr, "kubeconfig: %s\n", ks_status_last());
        return -1;
    }
    if (ks_kube_client_create(&base_cfg, &client) != KS_OK) {
        fprintf(stderr, "client: %s\n", ks_status_last());
        return -1;
    }
    /* the control plane creates kubesphere-system; make sure anyway */
    ns = json_pack("{s:s, s:s, s:{s:s}}", "apiVersion", "v1", "kind", "Namespace", "metadata",
                   "name", NS);
    ks_status st = ks_kube_create(client, "/api/v1/namespaces", ns, &res);
    json_decref(ns);
    json_decref(res);
    if (st != KS_OK && st != KS_ERR_CONFLICT) {
        fprintf(stderr, "namespace %s: %s\n", NS, ks_status_last());
        return -1;
    }
    snprintf(prefix, sizeof(prefix), "ks-leader-it-%ld-%ld", (long)getpid(),
             (long)time(NULL) % 100000);
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    ks_kube_client_destroy(client);
    client = NULL;
    ks_kube_config_clear(&base_cfg);
    return 0;
}

/* ---- tests ---- */

/* One candidate creates the Lease, leads, renews, and releases on stop. */
static void test_single_candidate(void **state)
{
    char name[128], id[128], buf[128];
    static cand a;
    json_t *lease, *again;
    int64_t took;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "single");
    snprintf(id, sizeof(id), "%s-a", prefix);
    cand_start(&a, client, NULL, name, id, 1); /* NULL: the default namespace, NS */
    took = wait_started(&a, 1, 5000);
    assert_true(took >= 0);
    print_message("single candidate led after %lld ms\n", (long long)took);
    assert_int_equal(atomic_load(&a.started), 1);
    assert_int_equal(ks_leader_current(a.l, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, id);
    assert_int_equal(ks_leader_current(a.l, buf, 3), KS_ERR_TOO_LARGE);
    cand_last_new_leader(&a, buf, sizeof(buf));
    assert_string_equal(buf, id);
    assert_true(gauge_value(name) == 1.0);

    /* the Lease as created */
    lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), id);
    assert_int_equal(spec_int(lease, "leaseDurationSeconds"), 3);
    assert_int_equal(spec_int(lease, "leaseTransitions"), 0);
    assert_true(microtime_ok(spec_str(lease, "renewTime")));
    assert_true(microtime_ok(spec_str(lease, "acquireTime")));

    /* it is renewed: renewTime moves, acquireTime does not */
    int64_t t0 = now_ms();
    for (;;) {
        again = lease_get(name);
        assert_non_null(again);
        if (strcmp(spec_str(again, "renewTime"), spec_str(lease, "renewTime")) != 0)
            break;
        json_decref(again);
        assert_true(now_ms() - t0 < RETRY_MS + SLACK_MS);
        nap_ms(20);
    }
    assert_string_equal(spec_str(again, "acquireTime"), spec_str(lease, "acquireTime"));
    assert_string_equal(spec_str(again, "holderIdentity"), id);
    assert_int_equal(spec_int(again, "leaseTransitions"), 0);
    json_decref(again);
    json_decref(lease);
    assert_true(ks_leader_is_leader(a.l));

    /* stop releases: holder "", duration 1 */
    cand_stop(&a);
    assert_int_equal(atomic_load(&a.stopped), 1);
    assert_int_equal(atomic_load(&violations), 0);
    assert_true(gauge_value(name) == 0.0);
    lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), "");
    assert_int_equal(spec_int(lease, "leaseDurationSeconds"), 1);
    assert_true(microtime_ok(spec_str(lease, "renewTime")));
    json_decref(lease);
    lease_delete(name);
}

typedef struct {
    cand *a, *b;
    atomic_int stop;
    atomic_long samples, both;
} sampler;

static void *sample_loop(void *arg)
{
    sampler *s = arg;

    while (!atomic_load(&s->stop)) {
        int x = ks_leader_is_leader(s->a->l), y = ks_leader_is_leader(s->b->l);
        if (x && y)
            atomic_fetch_add(&s->both, 1);
        atomic_fetch_add(&s->samples, 1);
        nap_ms(1);
    }
    return NULL;
}

static sampler *live_sampler;
static pthread_t live_sampler_th;

static void sampler_start(sampler *s, cand *a, cand *b)
{
    memset(s, 0, sizeof(*s));
    s->a = a;
    s->b = b;
    assert_int_equal(pthread_create(&live_sampler_th, NULL, sample_loop, s), 0);
    live_sampler = s;
}

static void sampler_stop(void)
{
    if (live_sampler == NULL)
        return;
    atomic_store(&live_sampler->stop, 1);
    pthread_join(live_sampler_th, NULL);
    live_sampler = NULL;
}

/* Two candidates: exactly one leads; the other takes over within about a
 * retry period when the leader stops and releases. */
static void test_two_candidates_and_release_handover(void **state)
{
    char name[128], ida[128], idb[128], buf[128];
    static cand a, b;
    pair p = {&a, &b};
    static sampler s;
    cand *leader, *standby;
    int64_t took, t_stop;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "pair");
    snprintf(ida, sizeof(ida), "%s-a", prefix);
    snprintf(idb, sizeof(idb), "%s-b", prefix);
    cand_start(&a, client, NS, name, ida, 1);
    cand_start(&b, client, NS, name, idb, 1);
    sampler_start(&s, &a, &b);

    assert_true(wait_until(either_leads, &p, 5000) >= 0);
    leader = ks_leader_is_leader(a.l) ? &a : &b;
    standby = leader == &a ? &b : &a;

    /* several renewal rounds: the leader stays, the standby waits */
    int64_t t0 = now_ms();
    while (now_ms() - t0 < 2 * LEASE_MS) {
        assert_true(ks_leader_is_leader(leader->l));
        assert_false(ks_leader_is_leader(standby->l));
        nap_ms(10);
    }
    assert_int_equal(atomic_load(&leader->started), 1);
    assert_int_equal(atomic_load(&leader->stopped), 0);
    assert_int_equal(atomic_load(&standby->started), 0);
    assert_int_equal(ks_leader_current(standby->l, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, ks_leader_identity(leader->l));
    cand_last_new_leader(standby, buf, sizeof(buf));
    assert_string_equal(buf, ks_leader_identity(leader->l));

    /* the sampler reads both electors: stop it before one is freed; the
     * handover itself is checked through the callbacks (violations) */
    sampler_stop();
    print_message("%ld samples, %ld with two leaders\n", (long)atomic_load(&s.samples),
                  (long)atomic_load(&s.both));
    assert_true(atomic_load(&s.samples) > 100);
    assert_int_equal(atomic_load(&s.both), 0);

    /* clean stop of the leader: handover within about one retry period */
    t_stop = now_ms();
    cand_stop(leader);
    took = wait_started(standby, 1, JITTERED_RETRY_MS + SLACK_MS);
    print_message("handover after release: %lld ms from stop (%lld ms after it returned)\n",
                  (long long)(now_ms() - t_stop), (long long)took);
    assert_true(took >= 0);
    assert_true(atomic_load(&standby->started_at) >= atomic_load(&leader->stopped_at));
    assert_int_equal(ks_leader_current(standby->l, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, ks_leader_identity(standby->l));

    json_t *lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), ks_leader_identity(standby->l));
    /* created (0), released and taken (+1) */
    assert_int_equal(spec_int(lease, "leaseTransitions"), 1);
    json_decref(lease);

    cand_stop(standby);
    assert_int_equal(atomic_load(&violations), 0);
    lease_delete(name);
}

/* With the production timings (15 s / 10 s / 2 s) a clean shutdown hands
 * over within 3 s, as the Mirror issue asks. */
static void test_default_timings_handover_within_3s(void **state)
{
    char name[128], ida[128], idb[128], buf[128];
    static cand a, b;
    pair p = {&a, &b};
    cand *leader, *standby;
    int64_t t_stop, took;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "defaults");
    snprintf(ida, sizeof(ida), "%s-a", prefix);
    snprintf(idb, sizeof(idb), "%s-b", prefix);
    cand_start_timed(&a, client, NS, name, ida, 1, 0, 0, 0);
    assert_true(wait_until(either_leads, &p, 5000) >= 0);
    cand_start_timed(&b, client, NS, name, idb, 1, 0, 0, 0);
    leader = ks_leader_is_leader(a.l) ? &a : &b;
    standby = leader == &a ? &b : &a;
    assert_true(wait_started(leader, 1, 1000) >= 0);
    /* the standby has read the Lease and waits on the leader's claim */
    int64_t t0 = now_ms();
    while (ks_leader_current(standby->l, buf, sizeof(buf)) != KS_OK) {
        assert_true(now_ms() - t0 < 5000);
        nap_ms(5);
    }
    assert_false(ks_leader_is_leader(standby->l));

    t_stop = now_ms();
    cand_stop(leader);
    took = wait_started(standby, 1, 3000);
    print_message("default timings: handover %lld ms after stop\n",
                  (long long)(now_ms() - t_stop));
    assert_true(took >= 0);
    assert_true(now_ms() - t_stop <= 3000);
    cand_stop(standby);
    assert_int_equal(atomic_load(&violations), 0);
    lease_delete(name);
}

/* A leader whose Lease is overwritten by someone else stops leading, and
 * takes the Lease back once the bogus holder's claim expires. */
static void test_overwritten_lease_stops_leader(void **state)
{
    char name[128], id[128], path[512], now_s[64], buf[128];
    static cand a;
    json_t *lease, *res = NULL;
    int64_t t_write, took;
    struct timespec rt;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "overwrite");
    snprintf(id, sizeof(id), "%s-a", prefix);
    cand_start(&a, client, NS, name, id, 1);
    assert_true(wait_until(cand_leads, &a, 5000) >= 0);

    /* a second writer takes the Lease with a bogus identity */
    lease_path(path, sizeof(path), name);
    for (;;) {
        lease = lease_get(name);
        assert_non_null(lease);
        clock_gettime(CLOCK_REALTIME, &rt);
        assert_int_equal(ks_leader_microtime((int64_t)rt.tv_sec * 1000000 + rt.tv_nsec / 1000,
                                             now_s, sizeof(now_s)), KS_OK);
        json_t *spec = json_object_get(lease, "spec");
        json_object_set_new(spec, "holderIdentity", json_string("bogus"));
        json_object_set_new(spec, "renewTime", json_string(now_s));
        json_object_set_new(spec, "leaseDurationSeconds", json_integer(LEASE_MS / 1000));
        ks_status st = ks_kube_update(client, path, lease, &res);
        json_decref(lease);
        if (st == KS_OK)
            break;
        assert_int_equal(st, KS_ERR_CONFLICT); /* raced a renewal: again */
    }
    json_decref(res);
    t_write = now_ms();

    took = wait_until(cand_not_leading, &a, RENEW_MS + SLACK_MS);
    print_message("leader stopped %lld ms after its Lease was overwritten\n", (long long)took);
    assert_true(took >= 0);
    assert_int_equal(atomic_load(&a.stopped), 1);
    assert_true(gauge_value(name) == 0.0);
    /* it saw the bogus holder */
    assert_int_equal(ks_leader_current(a.l, buf, sizeof(buf)), KS_OK);
    assert_string_equal(buf, "bogus");
    cand_last_new_leader(&a, buf, sizeof(buf));
    assert_string_equal(buf, "bogus");

    /* nobody renews "bogus": after its lease duration (from a's observation)
     * a takes over again, and never earlier */
    took = wait_started(&a, 2, LEASE_MS + 2 * JITTERED_RETRY_MS + SLACK_MS);
    int64_t since_write = now_ms() - t_write;
    print_message("re-acquired %lld ms after the overwrite\n", (long long)since_write);
    assert_true(took >= 0);
    assert_true(since_write >= LEASE_MS);
    assert_int_equal(atomic_load(&a.started), 2);
    lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), id);
    assert_int_equal(spec_int(lease, "leaseTransitions"), 1); /* bogus -> a */
    json_decref(lease);

    cand_stop(&a);
    assert_int_equal(atomic_load(&violations), 0);
    lease_delete(name);
}

/* The API server becomes unreachable for the leader: it stops leading within
 * the renew deadline, before a standby (which still reaches the server) can
 * take over; the standby takes over after the lease duration. */
static void test_renew_deadline_when_unreachable(void **state)
{
    char name[128], ida[128], idb[128];
    static cand a, b;
    static proxy px;
    ks_kube_client *via;
    int port;
    int64_t t_cut, took;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    port = server_port(base_cfg.server);
    if (port < 0) {
        print_message("server %s is not https://127.0.0.1:PORT: skip\n", base_cfg.server);
        skip();
    }
    unique_name(name, sizeof(name), "deadline");
    snprintf(ida, sizeof(ida), "%s-a", prefix);
    snprintf(idb, sizeof(idb), "%s-b", prefix);
    proxy_start(&px, port);
    via = client_via(&px);
    live_via = via;
    cand_start(&a, via, NS, name, ida, 1);
    assert_true(wait_until(cand_leads, &a, 5000) >= 0);
    cand_start(&b, client, NS, name, idb, 1);
    /* b must have read the Lease before the cut, so it waits on a's claim */
    char buf[128];
    int64_t t0 = now_ms();
    while (ks_leader_current(b.l, buf, sizeof(buf)) != KS_OK) {
        assert_true(now_ms() - t0 < 5000);
        nap_ms(5);
    }
    assert_string_equal(buf, ida);

    atomic_store(&px.cut, 1);
    t_cut = now_ms();
    took = wait_until(cand_not_leading, &a, RENEW_MS + SLACK_MS);
    print_message("leader cut off: stopped leading after %lld ms (renew deadline %d ms)\n",
                  (long long)took, RENEW_MS);
    assert_true(took >= 0);
    /* the deadline counts from the last renewal, at most one retry period
     * (plus a request) before the cut */
    assert_true(took >= RENEW_MS - RETRY_MS - 200);
    assert_false(ks_leader_is_leader(b.l));

    took = wait_started(&b, 1, LEASE_MS + 2 * JITTERED_RETRY_MS + SLACK_MS);
    print_message("standby took over %lld ms after the cut\n", (long long)(now_ms() - t_cut));
    assert_true(took >= 0);
    assert_true(atomic_load(&b.started_at) > atomic_load(&a.stopped_at));
    assert_int_equal(atomic_load(&violations), 0);

    /* the server comes back: a sees b's claim and stays a standby */
    atomic_store(&px.cut, 0);
    t0 = now_ms();
    while (ks_leader_current(a.l, buf, sizeof(buf)) != KS_OK || strcmp(buf, idb) != 0) {
        assert_true(now_ms() - t0 < RENEW_MS + SLACK_MS);
        nap_ms(5);
    }
    assert_false(ks_leader_is_leader(a.l));
    assert_true(ks_leader_is_leader(b.l));

    cand_stop(&a);
    cand_stop(&b);
    ks_kube_client_destroy(via);
    live_via = NULL;
    proxy_stop(&px);
    assert_int_equal(atomic_load(&violations), 0);
    lease_delete(name);
}

/* A leader that goes away without releasing (a crash, from the Lease's point
 * of view) is replaced once its lease duration has passed. */
static void test_crashed_leader_replaced_after_lease_duration(void **state)
{
    char name[128], ida[128], idb[128];
    static cand a, b;
    int64_t t_stop, took, delay;
    json_t *lease;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "crash");
    snprintf(ida, sizeof(ida), "%s-a", prefix);
    snprintf(idb, sizeof(idb), "%s-b", prefix);
    cand_start(&a, client, NS, name, ida, 0); /* release_on_cancel = 0 */
    assert_true(wait_until(cand_leads, &a, 5000) >= 0);
    cand_start(&b, client, NS, name, idb, 1);
    /* let b observe a few renewals */
    char buf[128];
    int64_t t0 = now_ms();
    while (ks_leader_current(b.l, buf, sizeof(buf)) != KS_OK) {
        assert_true(now_ms() - t0 < 5000);
        nap_ms(5);
    }

    t_stop = now_ms();
    cand_stop(&a);
    /* not released: the Lease still names a */
    lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), ida);
    assert_int_equal(spec_int(lease, "leaseDurationSeconds"), 3);
    json_decref(lease);

    took = wait_until(cand_leads, &b, LEASE_MS + 2 * JITTERED_RETRY_MS + SLACK_MS);
    delay = now_ms() - t_stop;
    print_message("crashed leader replaced %lld ms after it stopped (lease %d ms)\n",
                  (long long)delay, LEASE_MS);
    assert_true(took >= 0);
    /* a renewed at most one retry period (and a request) before it stopped */
    assert_true(delay >= LEASE_MS - RETRY_MS - 200);
    lease = lease_get(name);
    assert_non_null(lease);
    assert_string_equal(spec_str(lease, "holderIdentity"), idb);
    assert_int_equal(spec_int(lease, "leaseTransitions"), 1);
    json_decref(lease);
    cand_stop(&b);
    assert_int_equal(atomic_load(&violations), 0);
    lease_delete(name);
}

/* The Lease is deleted under a leader: it recreates it and keeps leading. */
static void test_deleted_lease_is_recreated(void **state)
{
    char name[128], id[128];
    static cand a;
    json_t *lease = NULL;
    int64_t t0;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    unique_name(name, sizeof(name), "deleted");
    snprintf(id, sizeof(id), "%s-a", prefix);
    cand_start(&a, client, NS, name, id, 1);
    assert_true(wait_until(cand_leads, &a, 5000) >= 0);
    lease = lease_get(name);
    assert_non_null(lease);
    const char *uid0 = json_string_value(json_object_get(json_object_get(lease, "metadata"), "uid"));
    char uid[128];
    snprintf(uid, sizeof(uid), "%s", uid0 ? uid0 : "");
    json_decref(lease);

    lease_delete(name);
    t0 = now_ms();
    for (;;) {
        lease = lease_get(name);
        if (lease != NULL) {
            const char *u = json_string_value(json_object_get(json_object_get(lease, "metadata"), "uid"));
            if (u != NULL && strcmp(u, uid) != 0)
                break;
            json_decref(lease);
        }
        assert_true(now_ms() - t0 < RENEW_MS + SLACK_MS);
        nap_ms(10);
    }
    assert_string_equal(spec_str(lease, "holderIdentity"), id);
    json_decref(lease);
    assert_true(ks_leader_is_leader(a.l));
    assert_int_equal(atomic_load(&a.started), 1);
    assert_int_equal(atomic_load(&a.stopped), 0);
    cand_stop(&a);
    lease_delete(name);
}

static int errors_at_least_two(void *arg)
{
    const char **nsn = arg;
    return errors_value(nsn[0], nsn[1]) >= 2;
}

/* A missing namespace is reported and retried; once it exists the candidate
 * creates the Lease and leads. */
static void test_missing_namespace_retried(void **state)
{
    char ns[128], name[128], id[128], path[512];
    const char *nsn[2];
    static cand a;
    json_t *obj, *res = NULL;
    int64_t took;

    (void)state;
    NEED_CLIENT();
    reset_counts();
    snprintf(ns, sizeof(ns), "%s-ns", prefix);
    snprintf(name, sizeof(name), "%s-nsl", prefix);
    snprintf(id, sizeof(id), "%s-a", prefix);
    nsn[0] = ns;
    nsn[1] = name;
    cand_start(&a, client, ns, name, id, 1);
    /* two failed rounds, and no leadership meanwhile */
    assert_true(wait_until(errors_at_least_two, nsn, 3 * JITTERED_RETRY_MS + SLACK_MS) >= 0);
    assert_false(ks_leader_is_leader(a.l));
    assert_int_equal(atomic_load(&a.started), 0);

    obj = json_pack("{s:s, s:s, s:{s:s}}", "apiVersion", "v1", "kind", "Namespace", "metadata",
                    "name", ns);
    assert_int_equal(ks_kube_create(client, "/api/v1/namespaces", obj, &res), KS_OK);
    json_decref(obj);
    json_decref(res);
    took = wait_until(cand_leads, &a, JITTERED_RETRY_MS + SLACK_MS);
    print_message("led %lld ms after the namespace was created\n", (long long)took);
    assert_true(took >= 0);
    cand_stop(&a);

    snprintf(path, sizeof(path), "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s", ns, name);
    res = NULL;
    if (ks_kube_delete(client, path, &res) == KS_OK)
        json_decref(res);
    snprintf(path, sizeof(path), "/api/v1/namespaces/%s", ns);
    res = NULL;
    if (ks_kube_delete(client, path, &res) == KS_OK)
        json_decref(res);
}

/* After every test, also a failed one: stop what it left running. */
static int test_teardown(void **state)
{
    (void)state;
    sampler_stop();
    for (int i = 0; i < MAX_LIVE; i++)
        if (live_cands[i] != NULL)
            cand_stop(live_cands[i]);
    ks_kube_client_destroy(live_via);
    live_via = NULL;
    if (live_proxy != NULL)
        proxy_stop(live_proxy);
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_single_candidate, test_teardown),
        cmocka_unit_test_teardown(test_two_candidates_and_release_handover, test_teardown),
        cmocka_unit_test_teardown(test_default_timings_handover_within_3s, test_teardown),
        cmocka_unit_test_teardown(test_overwritten_lease_stops_leader, test_teardown),
        cmocka_unit_test_teardown(test_renew_deadline_when_unreachable, test_teardown),
        cmocka_unit_test_teardown(test_crashed_leader_replaced_after_lease_duration, test_teardown),
        cmocka_unit_test_teardown(test_deleted_lease_is_recreated, test_teardown),
        cmocka_unit_test_teardown(test_missing_namespace_retried, test_teardown),
    };

    ks_log_init("test_leader", KS_LOG_INFO);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
