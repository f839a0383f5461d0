/* bench_login: the cost of a login. bcrypt through ks_password_pool, and
 * HS256 tokens through ks_jwt. Needs no server.
 *
 *   build/default/bench/bench_login
 *
 * Runs:
 *   1. bcrypt $2b$ hash at cost KS_PASSWORD_DEFAULT_COST through the pool with
 *      1 and 2 workers, the queue kept full (each callback resubmits);
 *   2. bcrypt verify, the same;
 *   3. a whole login as iam does it: a verify on the pool, then an access
 *      and a refresh token signed (2 workers);
 *   4. HS256 sign (ks_jwt_sign_key), verify with a kept key
 *      (ks_jwt_verify_key, the gateway's path) and verify with the raw secret
 *      (ks_jwt_verify: a key set up per call), one thread, each op timed.
 * bcrypt runs last KS_BENCH_SECONDS (default 2) each, token runs half that;
 * the whole benchmark takes about 6.5 x KS_BENCH_SECONDS. Prints a Markdown
 * table on stdout (scripts/bench.sh puts it in bench/REPORT.md). Exits 1 if a
 * run could not be done. */
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "jwt.h"
#include "password.h"

#define MAX_SAMPLES 4000000
#define SECRET "bench-login-secret-0123456789abcdef-0123456789"
#define PLAIN "Bench-passw0rd"

typedef struct {
    const char *name;
    int threads;
    int cost;     /* 0: not bcrypt */
    long ops;
    double seconds;
    double p50_us, p99_us; /* < 0: not measured per op */
    long failures;
} result;

static double run_seconds = 2.0;
static int64_t *samples;
static ks_jwt_key *key;

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static void sleep_s(double s)
{
    struct timespec ts = {(time_t)s, (long)((s - (double)(time_t)s) * 1e9)};
    while (nanosleep(&ts, &ts) != 0)
        ;
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void percentiles(result *r, long n)
{
    if (n <= 0) {
        r->p50_us = r->p99_us = -1;
        return;
    }
    qsort(samples, (size_t)n, sizeof(int64_t), cmp_i64);
    r->p50_us = (double)samples[n / 2] / 1e3;
    r->p99_us = (double)samples[(n * 99) / 100] / 1e3;
}

/* ---- bcrypt through the pool ---- */

typedef struct {
    ks_password_pool *pool;
    ks_password_op op;
    const char *hash;
    int cost;
    int login; /* sign two tokens after a successful verify */
    _Atomic long done, failures;
    _Atomic int stop;
    pthread_mutex_t lock;
    pthread_cond_t idle;
    long inflight;
} pool_run;

static int sign_pair(void)
{
    char jti[KS_JWT_JTI_SIZE];
    const char *groups[] = {"platform-regular"};
    int64_t t = (int64_t)time(NULL);
    ks_jwt_claims c = {.iss = "kubesphere", .sub = "bench", .username = "bench",
                       .token_type = KS_JWT_ACCESS_TOKEN, .jti = jti, .groups = groups,
                       .ngroups = 1, .iat = t, .exp = t + 7200};
    char *a = NULL, *r = NULL;
    int ok = ks_jwt_new_jti(jti) == KS_OK && ks_jwt_sign_key(key, &c, &a) == KS_OK;

    c.token_type = KS_JWT_REFRESH_TOKEN;
    c.exp = t + 14400;
    ok = ok && ks_jwt_new_jti(jti) == KS_OK && ks_jwt_sign_key(key, &c, &r) == KS_OK;
    free(a);
    free(r);
    return ok;
}

static void pool_cb(ks_status s, const char *hash, void *arg)
{
    pool_run *pr = arg;
    int again;

    if (s != KS_OK || (pr->login && !sign_pair()))
        atomic_fetch_add(&pr->failures, 1);
    else
        atomic_fetch_add(&pr->done, 1);
    again = !atomic_load(&pr->stop) &&
            ks_password_pool_submit(pr->pool, pr->op, PLAIN, pr->hash, pr->cost, pool_cb, pr) ==
                KS_OK;
    if (!again) {
        pthread_mutex_lock(&pr->lock);
        if (--pr->inflight == 0)
            pthread_cond_signal(&pr->idle);
        pthread_mutex_unlock(&pr->lock);
    }
}

static int run_pool(result *r, const char *name, int threads, ks_password_op op,
                    const char *hash, int login)
{
    pool_run pr = {.op = op, .hash = hash, .cost = KS_PASSWORD_DEFAULT_COST, .login = login};
    int64_t t0;
    int rc = -1;

    memset(r, 0, sizeof(*r));
    r->name = name;
    r->threads = threads;
    r->cost = KS_PASSWORD_DEFAULT_COST;
    r->p50_us = r->p99_us = -1;
    pthread_mutex_init(&pr.lock, NULL);
    pthread_cond_init(&pr.idle, NULL);
    if (ks_password_pool_create(threads, (size_t)threads * 2, &pr.pool) != KS_OK) {
        fprintf(stderr, "bench: pool: %s\n", ks_status_last());
        goto out;
    }
    t0 = now_ns();
    /* Two per worker keeps every worker busy without a long queue. */
    for (int i = 0; i < threads * 2; i++) {
        pthread_mutex_lock(&pr.lock);
        pr.inflight++;
        pthread_mutex_unlock(&pr.lock);
        if (ks_password_pool_submit(pr.pool, op, PLAIN, hash, pr.cost, pool_cb, &pr) != KS_OK) {
            fprintf(stderr, "bench: submit: %s\n", ks_status_last());
            pthread_mutex_lock(&pr.lock);
            pr.inflight--;
            pthread_mutex_unlock(&pr.lock);
        }
    }
    sleep_s(run_seconds);
    r->ops = atomic_load(&pr.done);
    r->seconds = (double)(now_ns() - t0) / 1e9;
    atomic_store(&pr.stop, 1);
    pthread_mutex_lock(&pr.lock);
    while (pr.inflight > 0)
        pthread_cond_wait(&pr.idle, &pr.lock);
    pthread_mutex_unlock(&pr.lock);
    r->failures = atomic_load(&pr.failures);
    rc = r->ops > 0 && r->failures == 0 ? 0 : -1;
out:
    ks_password_pool_destroy(pr.pool);
    pthread_mutex_destroy(&pr.lock);
    pthread_cond_destroy(&pr.idle);
    return rc;
}

/* ---- HS256 ---- */

enum { TOK_SIGN, TOK_VERIFY_KEY, TOK_VERIFY_SECRET };

static int run_tokens(result *r, const char *name, int mode)
{
    const char *groups[] = {"platform-regular", "workspace-dev", "team-a"};
    int64_t t = (int64_t)time(NULL);
    ks_jwt_claims c = {.iss = "kubesphere", .sub = "alice", .username = "alice",
                       .token_type = KS_JWT_ACCESS_TOKEN, .jti = "Ue3mJrV0o1Uo2Gk0nRrX5w",
                       .groups = groups, .ngroups = 3, .iat = t, .exp = t + 7200};
    char *tok = NULL;
    size_t tlen;
    int64_t t0, end;
    long n = 0;

    memset(r, 0, sizeof(*r));
    r->name = name;
    r->threads = 1;
    if (ks_jwt_sign_key(key, &c, &tok) != KS_OK) {
        fprintf(stderr, "bench: sign: %s\n", ks_status_last());
        return -1;
    }
    tlen = strlen(tok);
    t0 = now_ns();
    end = t0 + (int64_t)(run_seconds / 2 * 1e9);
    for (;;) {
        int64_t a = now_ns(), b;
        int ok;
        if (a >= end || n >= MAX_SAMPLES)
            break;
        if (mode == TOK_SIGN) {
            char *s = NULL;
            ok = ks_jwt_sign_key(key, &c, &s) == KS_OK;
            free(s);
        } else if (mode == TOK_VERIFY_KEY) {
            ks_jwt_claims out = {0};
            ok = ks_jwt_verify_key(key, tok, tlen, t, KS_JWT_DEFAULT_SKEW_S, &out, NULL) == KS_OK;
            ks_jwt_claims_clear(&out);
        } else {
            ks_jwt_claims out = {0};
            ok = ks_jwt_verify(SECRET, sizeof(SECRET) - 1, tok, tlen, t, KS_JWT_DEFAULT_SKEW_S,
                               &out, NULL) == KS_OK;
            ks_jwt_claims_clear(&out);
        }
        b = now_ns();
        samples[n++] = b - a;
        if (!ok)
            r->failures++;
    }
    r->seconds = (double)(now_ns() - t0) / 1e9;
    r->ops = n - r->failures;
    percentiles(r, n);
    free(tok);
    return r->failures == 0 && n > 0 ? 0 : -1;
}

static void print_row(const result *r)
{
    char cost[16] = "-", p50[32] = "-", p99[32] = "-";

    if (r->cost > 0)
        snprintf(cost, sizeof(cost), "%d", r->cost);
    if (r->p50_us >= 0) {
        snprintf(p50, sizeof(p50), "%.2f", r->p50_us);
        snprintf(p99, sizeof(p99), "%.2f", r->p99_us);
    }
    printf("| %-50s | %7d | %4s | %8ld | %6.2f | %10.1f | %9.2f | %8s | %8s | %8ld |\n", r->name,
           r->threads, cost, r->ops, r->seconds, r->seconds > 0 ? (double)r->ops / r->seconds : 0,
           r->ops > 0 ? r->seconds * 1e3 * r->threads / (double)r->ops : 0, p50, p99,
           r->failures);
}

int main(void)
{
    const char *env = getenv("KS_BENCH_SECONDS");
    char *hash = NULL;
    result res[8];
    int nres = 0, failed = 0;

    if (env != NULL && *env) {
        char *end = NULL;
        double v = strtod(env, &end);
        if (end == env || *end != '\0' || !(v >= 0.2 && v <= 600)) {
            fprintf(stderr, "bench: KS_BENCH_SECONDS must be a number of seconds in 0.2..600\n");
            return 1;
        }
        run_seconds = v;
    }
    samples = malloc(sizeof(int64_t) * MAX_SAMPLES);
    if (samples == NULL || ks_jwt_key_create(SECRET, sizeof(SECRET) - 1, &key) != KS_OK ||
        ks_password_hash(PLAIN, KS_PASSWORD_DEFAULT_COST, &hash) != KS_OK) {
        fprintf(stderr, "bench: set-up failed: %s\n", ks_status_last());
        return 1;
    }

    failed |= run_pool(&res[nres++], "bcrypt hash $2b$ (pool)", 1, KS_PASSWORD_OP_HASH, NULL, 0);
    failed |= run_pool(&res[nres++], "bcrypt hash $2b$ (pool)", 2, KS_PASSWORD_OP_HASH, NULL, 0);
    failed |= run_pool(&res[nres++], "bcrypt verify (pool)", 1, KS_PASSWORD_OP_VERIFY, hash, 0);
    failed |= run_pool(&res[nres++], "bcrypt verify (pool)", 2, KS_PASSWORD_OP_VERIFY, hash, 0);
    failed |= run_pool(&res[nres++], "login: verify + sign access and refresh (pool)", 2,
                       KS_PASSWORD_OP_VERIFY, hash, 1);
    failed |= run_tokens(&res[nres++], "HS256 sign (ks_jwt_sign_key)", TOK_SIGN);
    failed |= run_tokens(&res[nres++], "HS256 verify, kept key (ks_jwt_verify_key)", TOK_VERIFY_KEY);
    failed |= run_tokens(&res[nres++], "HS256 verify, raw secret (ks_jwt_verify)",
                         TOK_VERIFY_SECRET);

    printf("bench_login: bcrypt cost factor %d ($2b$) through ks_password_pool, queue kept full;\n"
           "HS256 tokens with 3 groups, one thread. %.1f s per bcrypt run, %.1f s per token run.\n"
           "ms/op is wall time per operation per worker (threads x seconds / ops).\n\n",
           KS_PASSWORD_DEFAULT_COST, run_seconds, run_seconds / 2);
    printf("| %-50s | %7s | %4s | %8s | %6s | %10s | %9s | %8s | %8s | %8s |\n", "run", "threads",
           "cost", "ops", "s", "ops/s", "ms/op", "p50 us", "p99 us", "failures");
    printf("|%s|--------:|-----:|---------:|-------:|-----------:|----------:|---------:|---------:|"
           "---------:|\n",
           "----------------------------------------------------");
    for (int i = 0; i < nres; i++)
        print_row(&res[i]);
    if (res[4].seconds > 0 && res[3].seconds > 0)
        printf("\nLogins are bcrypt-bound: %.1f logins/s on 2 workers at cost %d "
               "(bare verify %.1f/s); an HS256 verify costs %.2f us at the median, "
               "%.0fx less than one bcrypt verify.\n",
               (double)res[4].ops / res[4].seconds, KS_PASSWORD_DEFAULT_COST,
               (double)res[3].ops / res[3].seconds, res[6].p50_us,
               res[6].p50_us > 0 && res[2].ops > 0
                   ? (res[2].seconds * 1e6 / (double)res[2].ops) / res[6].p50_us
                   : 0);
    free(hash);
    free(samples);
    ks_jwt_key_destroy(key);
    return failed ? 1 : 0;
}
