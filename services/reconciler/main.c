/* kscore-reconciler: watchers, the mirror and the controllers (DESIGN.md §4).
 * This file declares the service and wires its parts: one reflector per
 * watched resource (resources.c) feeding the mirror writer (mirror.c), which
 * writes only while this replica leads. */
#include <pthread.h>
#include <stdatomic.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "controller.h"
#include "leader.h"
#include "log.h"
#include "mirror.h"
#include "resources.h"
#include "service.h"

typedef struct {
    ks_service_common common;
    char *bucket;
    long long bucket_replicas;
    int leader_elect;
    long long bcrypt_cost;
    long long login_max_failures;
    long long login_window_ms;
    long long loginrecord_retention_ms;
    long long loginrecord_max_per_user;
    int controllers;
} reconciler_config;

static const ks_config_opt reconciler_options[] = {
    KS_SERVICE_COMMON_OPTIONS(reconciler_config, "127.0.0.1:9193"),
    {"mirror-bucket", KS_CFG_STRING, "KS_OBJECTS", 0, 0, NULL,
     offsetof(reconciler_config, bucket), "JetStream KV bucket of the mirror", 0},
    {"mirror-replicas", KS_CFG_INT, "1", 1, 5, NULL, offsetof(reconciler_config, bucket_replicas),
     "replicas of the mirror bucket when this replica creates it", 0},
    {"leader-elect", KS_CFG_BOOL, "true", 0, 0, NULL, offsetof(reconciler_config, leader_elect),
     "elect a leader through a Lease; false: this replica always writes", 0},
    {"bcrypt-cost", KS_CFG_INT, "10", 4, 16, NULL, offsetof(reconciler_config, bcrypt_cost),
     "bcrypt cost when the user controller hashes a plain-text password", 0},
    {"login-max-failures", KS_CFG_INT, "5", 1, 1000, NULL,
     offsetof(reconciler_config, login_max_failures),
     "failed logins within the window that make a user AuthLimitExceeded (as iam)", 0},
    {"login-window", KS_CFG_DURATION, "10m", 1000, 86400000LL, NULL,
     offsetof(reconciler_config, login_window_ms), "window of the failure count (as iam)", 0},
    {"loginrecord-retention", KS_CFG_DURATION, "168h", 60000, 86400000LL * 366, NULL,
     offsetof(reconciler_config, loginrecord_retention_ms), "login records older than this are deleted", 0},
    {"controllers", KS_CFG_BOOL, "true", 0, 0, NULL, offsetof(reconciler_config, controllers),
     "run the controllers while leading; false: mirror only (benchmarks)", 0},
    {"loginrecord-max-per-user", KS_CFG_INT, "100", 1, 100000, NULL,
     offsetof(reconciler_config, loginrecord_max_per_user), "login records kept per user, newest first", 0},
};

typedef struct {
    ks_service *svc;
    ks_kube_client *kube;
    rec_mirror *mirror;
    ks_leader *leader;          /* NULL with --leader-elect=false */
    _Atomic(rec_runtime *) controllers;
    atomic_int resync_wanted;   /* a new leader's first job: resync everything */
    /* Held while the reflectors start: their threads call on_synced as soon
     * as their first list is in, possibly before reflectors[] and
     * nreflectors say they exist. */
    pthread_mutex_t start_mu;
    ks_reflector *reflectors[32];
    size_t nreflectors;
    /* the repair thread */
    pthread_t repair_thread;
    int repair_running;
    pthread_mutex_t repair_mu;
    pthread_cond_t repair_cond;
    int stopping;
} reconciler;

static reconciler rec = {
    .start_mu = PTHREAD_MUTEX_INITIALIZER,
    .repair_mu = PTHREAD_MUTEX_INITIALIZER,
    .repair_cond = PTHREAD_COND_INITIALIZER,
};

static int reconciler_ready(void *arg, char *why, size_t whycap)
{
    reconciler *r = arg;
    int ready = 1;

    /* The admin listener runs while reconciler_start and reconciler_stop
     * change the reflectors: look at them under start_mu. */
    pthread_mutex_lock(&r->start_mu);
    if (r->mirror == NULL || r->nreflectors < rec_nresources) {
        snprintf(why, whycap, "starting");
        ready = 0;
    } else if (!rec_mirror_is_open(r->mirror)) {
        snprintf(why, whycap, "mirror bucket not open yet");
        ready = 0;
    }
    for (size_t i = 0; ready && i < r->nreflectors; i++) {
        if (!ks_reflector_has_synced(r->reflectors[i])) {
            snprintf(why, whycap, "%s not listed yet", rec_resources[i].resource);
            ready = 0;
        }
    }
    pthread_mutex_unlock(&r->start_mu);
    return ready;
}

/* Make the bucket's keys of resource i equal to the API. */
static void resync_one(reconciler *r, size_t i)
{
    unsigned puts = 0, dels = 0;

    /* Before its first list the store is empty: a resync would empty the
     * bucket. */
    if (!ks_reflector_has_synced(r->reflectors[i]))
        return;
    if (rec_mirror_resync(r->mirror, r->reflectors[i], &rec_resources[i], &puts, &dels) != KS_OK)
        ks_warn("mirror: resync of %s failed: %s", rec_resources[i].resource, ks_status_last());
    else if (puts || dels)
        ks_info("mirror: resync of %s: %u written, %u deleted", rec_resources[i].resource, puts,
                dels);
}

/* After each (re)list, a leader makes the bucket equal to the list: this
 * repairs writes that failed and deletes keys left by an earlier leader. */
static void on_synced(void *arg, const ks_reflector_resource *res)
{
    reconciler *r = arg;
    size_t i, n;

    if (!rec_mirror_is_leader(r->mirror))
        return;
    pthread_mutex_lock(&r->start_mu);
    n = r->nreflectors;
    pthread_mutex_unlock(&r->start_mu);
    for (i = 0; i < n; i++) {
        if (strcmp(rec_resources[i].resource, res->resource) == 0 &&
            strcmp(rec_resources[i].group, res->group) == 0)
            resync_one(r, i);
    }
}

/* Once a second: while leading, open the bucket when it is not open yet and
 * resync everything after a failed write (NATS was away, a write timed out). */
static void *repair_loop(void *arg)
{
    reconciler *r = arg;
    struct timespec ts;

    pthread_mutex_lock(&r->repair_mu);
    while (!r->stopping) {
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&r->repair_cond, &r->repair_mu, &ts);
        if (r->stopping)
            break;
        pthread_mutex_unlock(&r->repair_mu);
        if (ks_bus_is_connected(ks_service_bus(r->svc))) {
            int was_open = rec_mirror_is_open(r->mirror);
            if (rec_mirror_open(r->mirror) == KS_OK && rec_mirror_is_leader(r->mirror) &&
                (!was_open || atomic_exchange(&r->resync_wanted, 0) |
                                  rec_mirror_take_dirty(r->mirror))) {
                for (size_t i = 0; i < r->nreflectors; i++)
                    resync_one(r, i);
            }
        }
        pthread_mutex_lock(&r->repair_mu);
    }
    pthread_mutex_unlock(&r->repair_mu);
    return NULL;
}

static void wake_repair(reconciler *r)
{
    pthread_mutex_lock(&r->repair_mu);
    pthread_cond_broadcast(&r->repair_cond);
    pthread_mutex_unlock(&r->repair_mu);
}

/* Leadership callbacks run on the elector's thread: they only flip flags,
 * the resync itself runs on the repair thread so renewals never wait. */
static void on_started_leading(void *arg)
{
    reconciler *r = arg;
    rec_mirror_set_leader(r->mirror, 1);
    atomic_store(&r->resync_wanted, 1);
    wake_repair(r);
    rec_runtime_start_leading(atomic_load(&r->controllers));
}

static void on_stopped_leading(void *arg)
{
    reconciler *r = arg;
    rec_mirror_set_leader(r->mirror, 0);
    rec_runtime_stop_leading(atomic_load(&r->controllers));
}

static void on_event(void *arg, const ks_reflector_resource *res, const ks_reflect_event *ev)
{
    reconciler *r = arg;
    rec_runtime *rt = atomic_load(&r->controllers);

    rec_mirror_on_event(r->mirror, res, ev);
    if (rt != NULL)
        rec_runtime_on_event(rt, res, ev);
}

static void reconciler_stop(void *state)
{
    reconciler *r = state;
    rec_mirror *m;
    size_t n;

    if (r == NULL)
        return;
    /* First hand the Lease over (writes stop before it is released). */
    ks_leader_stop(r->leader);
    r->leader = NULL;
    rec_runtime_destroy(atomic_exchange(&r->controllers, NULL));
    if (r->repair_running) {
        pthread_mutex_lock(&r->repair_mu);
        r->stopping = 1;
        pthread_cond_broadcast(&r->repair_cond);
        pthread_mutex_unlock(&r->repair_mu);
        pthread_join(r->repair_thread, NULL);
        r->repair_running = 0;
    }
    pthread_mutex_lock(&r->start_mu);
    n = r->nreflectors;
    r->nreflectors = 0;
    pthread_mutex_unlock(&r->start_mu);
    ks_kube_client_shutdown(r->kube);
    for (size_t i = 0; i < n; i++)
        ks_reflector_stop(r->reflectors[i]);
    pthread_mutex_lock(&r->start_mu);
    m = r->mirror;
    r->mirror = NULL;
    pthread_mutex_unlock(&r->start_mu);
    rec_mirror_destroy(m);
    ks_kube_client_destroy(r->kube);
    r->kube = NULL;
}

static ks_status reconciler_start(ks_service *svc, void *cfgp, void **state)
{
    reconciler_config *cfg = cfgp;
    reconciler *r = &rec;
    rec_mirror *m = NULL;
    ks_status st;

    r->svc = svc;
    st = ks_service_kube_client(&cfg->common, &r->kube);
    if (st)
        goto out;
    st = rec_mirror_create(ks_service_bus(svc), cfg->bucket, (int)cfg->bucket_replicas, &m);
    if (st)
        goto out;
    if (!cfg->leader_elect)
        rec_mirror_set_leader(m, 1);
    pthread_mutex_lock(&r->start_mu);
    r->mirror = m;
    for (size_t i = 0; i < rec_nresources; i++) {
        if (r->nreflectors == sizeof(r->reflectors) / sizeof(r->reflectors[0])) {
            st = KS_FAIL(KS_ERR_TOO_LARGE, "more resources than reflector slots");
            break;
        }
        st = ks_reflector_start(r->kube, &rec_resources[i], NULL, on_event, on_synced, r,
                                &r->reflectors[i]);
        if (st)
            break;
        r->nreflectors++;
    }
    pthread_mutex_unlock(&r->start_mu);
    if (st)
        goto out;
    if (pthread_create(&r->repair_thread, NULL, repair_loop, r) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the repair thread");
        goto out;
    }
    r->repair_running = 1;
    {
        rec_settings rs = {
            .bcrypt_cost = (int)cfg->bcrypt_cost,
            .login_max_failures = (int)cfg->login_max_failures,
            .login_window_ms = cfg->login_window_ms,
            .loginrecord_retention_ms = cfg->loginrecord_retention_ms,
            .loginrecord_max_per_user = (int)cfg->loginrecord_max_per_user,
        };
        rec_runtime *rt = NULL;
        if (!cfg->controllers)
            goto no_controllers;
        st = rec_runtime_create(r->kube, ks_service_bus(svc), &rs, rec_resources, r->reflectors,
                                r->nreflectors, &rt);
        if (st)
            goto out;
        atomic_store(&r->controllers, rt);
    }
no_controllers:
    if (!cfg->leader_elect)
        rec_runtime_start_leading(atomic_load(&r->controllers));
    if (cfg->leader_elect) {
        ks_leader_config lc;
        ks_leader_config_init(&lc);
        lc.on_started_leading = on_started_leading;
        lc.on_stopped_leading = on_stopped_leading;
        lc.arg = r;
        st = ks_leader_start(r->kube, &lc, &r->leader);
        if (st)
            goto out;
    }
    *state = r;
    st = KS_OK;
out:
    if (st)
        reconciler_stop(r);
    return st;
}

int main(int argc, char **argv)
{
    static reconciler_config cfg;
    const ks_service_def def = {
        .spec = {.name = "reconciler", .description = "kscore watchers, mirror and controllers",
                 .ready = reconciler_ready, .ready_arg = &rec},
        .program = "kscore-reconciler",
        .summary = "kscore reconciler: mirrors Kubernetes state onto NATS and runs controllers",
        .options = reconciler_options,
        .noptions = sizeof(reconciler_options) / sizeof(reconciler_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
        .start = reconciler_start,
        .stop = reconciler_stop,
    };
    return ks_service_main(&def, argc, argv);
}
