/* sweeper.c: retention passes over the audit store (sweeper.h). */
#include "sweeper.h"

#include <errno.h>
#include <pthread.h>
#include <stdlib.h>
#include <time.h>

#include "log.h"
#include "metrics.h"

struct aud_sweeper {
    aud_sweeper_cfg cfg;
    aud_store *store;
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int stop;
};

static ks_metric *m_sw_deleted, *m_sw_rows, *m_sw_errors;

static int64_t sweep_now_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

ks_status aud_sweep_all(aud_store *st, int64_t cutoff_us, size_t max_rows, uint64_t *deleted)
{
    uint64_t total = 0;
    size_t n;
    ks_status s;

    do {
        n = 0;
        if ((s = aud_store_sweep(st, cutoff_us, max_rows ? max_rows : 500, &n)))
            return s;
        total += n;
    } while (n > 0);
    *deleted = total;
    return KS_OK;
}

/* Wait up to ms unless stopped; 1 when stopping. */
static int sweep_wait(aud_sweeper *s, int64_t ms)
{
    struct timespec dl;
    int stop;

    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += (time_t)(ms / 1000);
    dl.tv_nsec += (long)(ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&s->mu);
    while (!s->stop && pthread_cond_timedwait(&s->cond, &s->mu, &dl) != ETIMEDOUT)
        ;
    stop = s->stop;
    pthread_mutex_unlock(&s->mu);
    return stop;
}

static void sweep_pass(aud_sweeper *s)
{
    uint64_t total = 0, rows = 0;
    size_t n;

    if (s->cfg.max_age_ms > 0) {
        int64_t cutoff = sweep_now_us() - s->cfg.max_age_ms * 1000;
        do {
            n = 0;
            if (aud_store_sweep(s->store, cutoff, s->cfg.sweep_rows, &n) != KS_OK) {
                ks_metric_inc(m_sw_errors);
                ks_warn("audit: retention pass failed (retried next pass): %s", ks_status_last());
                break;
            }
            total += n;
            /* let the consumer's commit in between */
        } while (n > 0 && !sweep_wait(s, 2));
        if (total > 0) {
            ks_metric_add(m_sw_deleted, (double)total);
            ks_info("audit: retention removed %llu events older than %lld ms",
                    (unsigned long long)total, (long long)s->cfg.max_age_ms);
        }
    }
    if (aud_store_count(s->store, &rows) == KS_OK)
        ks_metric_set(m_sw_rows, (double)rows);
    (void)sqlite3_exec(aud_store_db(s->store), "PRAGMA optimize", NULL, NULL, NULL);
}

static int64_t mono_ms_(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void *sweep_run(void *arg)
{
    aud_sweeper *s = arg;
    int64_t interval = s->cfg.interval_ms > 0 ? s->cfg.interval_ms : 60000;
    int64_t every = s->cfg.checkpoint_ms > 0 ? s->cfg.checkpoint_ms : 500;
    int64_t next_pass = 0;

    do {
        int log = 0, done = 0;
        /* PASSIVE: copies what no reader still needs, never waits */
        if (sqlite3_wal_checkpoint_v2(aud_store_db(s->store), NULL, SQLITE_CHECKPOINT_PASSIVE, &log,
                                      &done) != SQLITE_OK)
            ks_debug("audit: WAL checkpoint: %s", sqlite3_errmsg(aud_store_db(s->store)));
        if (mono_ms_() >= next_pass) {
            sweep_pass(s);
            next_pass = mono_ms_() + interval;
        }
    } while (!sweep_wait(s, every));
    return NULL;
}

ks_status aud_sweeper_start(const aud_sweeper_cfg *cfg, aud_sweeper **out)
{
    aud_sweeper *s;
    ks_status st;

    if (cfg == NULL || cfg->db_path == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "aud_sweeper_start: NULL argument");
    m_sw_deleted = ks_metrics_counter("ks_audit_retention_deleted_total",
                                   "events removed from the store by retention", NULL);
    m_sw_rows = ks_metrics_gauge("ks_audit_rows", "events in the store (at the last retention pass)",
                              NULL);
    m_sw_errors = ks_metrics_counter("ks_audit_retention_errors_total", "failed retention passes",
                                  NULL);
    s = calloc(1, sizeof(*s));
    if (s == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "sweeper");
    s->cfg = *cfg;
    if (s->cfg.sweep_rows == 0)
        s->cfg.sweep_rows = 500;
    if ((st = aud_store_open(cfg->db_path, AUD_STORE_WRITE, &cfg->store, &s->store))) {
        free(s);
        return st;
    }
    pthread_mutex_init(&s->mu, NULL);
    pthread_cond_init(&s->cond, NULL);
    if (pthread_create(&s->thread, NULL, sweep_run, s) != 0) {
        aud_store_close(s->store);
        pthread_mutex_destroy(&s->mu);
        pthread_cond_destroy(&s->cond);
        free(s);
        return KS_FAIL(KS_ERR_INTERNAL, "cannot start the retention thread");
    }
    *out = s;
    return KS_OK;
}

void aud_sweeper_stop(aud_sweeper *s)
{
    if (s == NULL)
        return;
    pthread_mutex_lock(&s->mu);
    s->stop = 1;
    pthread_cond_broadcast(&s->cond);
    pthread_mutex_unlock(&s->mu);
    pthread_join(s->thread, NULL);
    aud_store_close(s->store);
    pthread_mutex_destroy(&s->mu);
    pthread_cond_destroy(&s->cond);
    free(s);
}
