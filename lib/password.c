#include "password.h"

#include <crypt.h>
#include <errno.h>
#include <math.h>
#include <openssl/crypto.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "metrics.h"

/* ---- hash formats ---- */

enum { HASH_NONE = 0, HASH_BCRYPT, HASH_YESCRYPT };

/* The crypt alphabet "./0-9A-Za-z": value 0..63, or -1. */
static int crypt64(char c)
{
    if (c == '.')
        return 0;
    if (c == '/')
        return 1;
    if (c >= '0' && c <= '9')
        return c - '0' + 2;
    if (c >= 'A' && c <= 'Z')
        return c - 'A' + 12;
    if (c >= 'a' && c <= 'z')
        return c - 'a' + 38;
    return -1;
}

/* Length of the run of crypt64 characters at s. */
static size_t crypt64_run(const char *s)
{
    size_t n = 0;
    while (crypt64(s[n]) >= 0)
        n++;
    return n;
}

/* The CEL patterns of the User CRD, by hand (see password.h). */
static int hash_kind(const char *s)
{
    size_t n;

    if (s == NULL || s[0] != '$')
        return HASH_NONE;
    if (s[1] == '2' && (s[2] == 'a' || s[2] == 'b' || s[2] == 'y') && s[3] == '$' &&
        s[4] >= '0' && s[4] <= '9' && s[5] >= '0' && s[5] <= '9' && s[6] == '$' &&
        crypt64_run(s + 7) == 53 && s[60] == '\0')
        return HASH_BCRYPT;
    if (s[1] == 'y' && s[2] == '$') {
        s += 3;
        if ((n = crypt64_run(s)) == 0 || s[n] != '$') /* parameters */
            return HASH_NONE;
        s += n + 1;
        if ((n = crypt64_run(s)) < 1 || n > 86 || s[n] != '$') /* salt */
            return HASH_NONE;
        s += n + 1;
        if (crypt64_run(s) == 43 && s[43] == '\0')
            return HASH_YESCRYPT;
    }
    return HASH_NONE;
}

int ks_password_is_hash(const char *s)
{
    return hash_kind(s) != HASH_NONE;
}

/* One variable-length number of yescrypt's parameter string (the encoding of
 * libxcrypt's encode64_uint32: the first character picks a range that says
 * how many characters follow). Returns the position after it, or NULL. */
static const char *yescrypt_uint(const char *s, uint32_t min, uint64_t *out)
{
    uint32_t start = 0, end = 47, chars = 1, bits = 0;
    uint64_t v = min;
    int c = crypt64(*s++);

    if (c < 0)
        return NULL;
    while ((uint32_t)c > end) {
        v += (uint64_t)(end + 1 - start) << bits;
        start = end + 1;
        end = start + (62 - end) / 2;
        chars++;
        bits += 6;
    }
    v += (uint64_t)((uint32_t)c - start) << bits;
    while (--chars) {
        if ((c = crypt64(*s++)) < 0)
            return NULL;
        bits -= 6;
        v += (uint64_t)c << bits;
    }
    *out = v;
    return s;
}

/* 1 if a yescrypt hash's parameters stay within our limits: memory
 * 128 * r * N at most KS_PASSWORD_YESCRYPT_MAX_MEM, p <= 16, t <= 4, no ROM
 * and no hash upgrades. */
static int yescrypt_params_ok(const char *h)
{
    const char *s = h + 3;
    uint64_t flavor, nlog2, r, have = 0, p = 1, t = 0, g = 0;

    if ((s = yescrypt_uint(s, 0, &flavor)) == NULL || (s = yescrypt_uint(s, 1, &nlog2)) == NULL ||
        (s = yescrypt_uint(s, 1, &r)) == NULL)
        return 0;
    if (*s != '$') {
        if ((s = yescrypt_uint(s, 1, &have)) == NULL || have > 15)
            return 0;
        if ((have & 1) && (s = yescrypt_uint(s, 2, &p)) == NULL)
            return 0;
        if ((have & 2) && (s = yescrypt_uint(s, 1, &t)) == NULL)
            return 0;
        if ((have & 4) && (s = yescrypt_uint(s, 1, &g)) == NULL)
            return 0;
        if (have & 8)
            return 0; /* a ROM: never used by libxcrypt's crypt() */
    }
    if (*s != '$' || nlog2 < 1 || nlog2 > 30 || r < 1 || r > (1u << 20) || p > 16 || t > 4 ||
        g != 0)
        return 0;
    return (uint64_t)128 * r * ((uint64_t)1 << nlog2) <= KS_PASSWORD_YESCRYPT_MAX_MEM;
}

/* KS_OK if hash is a supported hash within the cost limits. */
static ks_status hash_supported(const char *hash)
{
    switch (hash_kind(hash)) {
    case HASH_BCRYPT: {
        int cost = (hash[4] - '0') * 10 + (hash[5] - '0');
        if (cost < KS_PASSWORD_MIN_COST || cost > KS_PASSWORD_MAX_COST)
            return KS_FAIL(KS_ERR_INVALID, "password: bcrypt cost %d outside %d..%d", cost,
                           KS_PASSWORD_MIN_COST, KS_PASSWORD_MAX_COST);
        return KS_OK;
    }
    case HASH_YESCRYPT:
        if (!yescrypt_params_ok(hash))
            return KS_FAIL(KS_ERR_INVALID, "password: yescrypt parameters over the limits");
        return KS_OK;
    default:
        return KS_FAIL(KS_ERR_INVALID, "password: not a bcrypt or yescrypt hash");
    }
}

/* ---- hashing ---- */

/* Hash plain into out (cap KS_PASSWORD_HASH_MAX + 1) using the work area cd.
 * cd is wiped before returning. */
static ks_status do_hash(struct crypt_data *cd, const char *plain, int cost, char *out)
{
    ks_status s = KS_ERR_INTERNAL;
    char setting[CRYPT_GENSALT_OUTPUT_SIZE];
    const char *h;

    /* rbytes NULL: libxcrypt takes the salt from the OS (getrandom) */
    if (crypt_gensalt_rn("$2b$", (unsigned long)cost, NULL, 0, setting, sizeof(setting)) == NULL) {
        s = KS_FAIL(KS_ERR_INTERNAL, "password: crypt_gensalt_rn failed: %s", strerror(errno));
        goto out;
    }
    h = crypt_r(plain, setting, cd);
    if (h == NULL || h[0] == '*' || hash_kind(h) != HASH_BCRYPT) {
        s = KS_FAIL(KS_ERR_INTERNAL, "password: crypt_r failed to hash");
        goto out;
    }
    memcpy(out, h, 61);
    s = KS_OK;
out:
    explicit_bzero(cd, sizeof(*cd));
    explicit_bzero(setting, sizeof(setting));
    return s;
}

/* Verify plain against a hash already checked by hash_supported. */
static ks_status do_verify(struct crypt_data *cd, const char *plain, const char *hash)
{
    ks_status s = KS_ERR_DENIED;
    size_t hl = strlen(hash);
    const char *h;

    if (strnlen(plain, KS_PASSWORD_PLAIN_MAX + 1) > KS_PASSWORD_PLAIN_MAX) {
        s = KS_FAIL(KS_ERR_DENIED, "password: does not match");
        goto out;
    }
    h = crypt_r(plain, hash, cd);
    if (h == NULL || h[0] == '*') {
        s = KS_FAIL(KS_ERR_INVALID, "password: libcrypt refused the stored hash");
        goto out;
    }
    if (strlen(h) != hl || CRYPTO_memcmp(h, hash, hl) != 0) {
        s = KS_FAIL(KS_ERR_DENIED, "password: does not match");
        goto out;
    }
    s = KS_OK;
out:
    explicit_bzero(cd, sizeof(*cd));
    return s;
}

static ks_status check_cost(int *cost)
{
    if (*cost == 0)
        *cost = KS_PASSWORD_DEFAULT_COST;
    if (*cost < KS_PASSWORD_MIN_COST || *cost > KS_PASSWORD_MAX_COST)
        return KS_FAIL(KS_ERR_INVALID, "password: bcrypt cost %d outside %d..%d", *cost,
                       KS_PASSWORD_MIN_COST, KS_PASSWORD_MAX_COST);
    return KS_OK;
}

ks_status ks_password_hash(const char *plain, int cost, char **hash_out)
{
    ks_status s = KS_ERR_INVALID;
    struct crypt_data *cd = NULL;
    char out[KS_PASSWORD_HASH_MAX + 1];
    char *copy;

    if (plain == NULL || hash_out == NULL) {
        s = KS_FAIL(KS_ERR_INVALID, "password: NULL argument");
        goto out;
    }
    if ((s = check_cost(&cost)) != KS_OK)
        goto out;
    if (strnlen(plain, KS_PASSWORD_PLAIN_MAX + 1) > KS_PASSWORD_PLAIN_MAX) {
        s = KS_FAIL(KS_ERR_TOO_LARGE, "password: longer than %d bytes", KS_PASSWORD_PLAIN_MAX);
        goto out;
    }
    cd = calloc(1, sizeof(*cd));
    if (cd == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "password: out of memory");
        goto out;
    }
    if ((s = do_hash(cd, plain, cost, out)) != KS_OK)
        goto out;
    copy = strdup(out);
    if (copy == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "password: out of memory");
        goto out;
    }
    *hash_out = copy;
    s = KS_OK;
out:
    free(cd); /* do_hash wiped it */
    explicit_bzero(out, sizeof(out));
    return s;
}

ks_status ks_password_verify(const char *plain, const char *hash)
{
    ks_status s = KS_ERR_INVALID;
    struct crypt_data *cd = NULL;

    if (plain == NULL || hash == NULL) {
        s = KS_FAIL(KS_ERR_INVALID, "password: NULL argument");
        goto out;
    }
    if ((s = hash_supported(hash)) != KS_OK)
        goto out;
    cd = calloc(1, sizeof(*cd));
    if (cd == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "password: out of memory");
        goto out;
    }
    s = do_verify(cd, plain, hash);
out:
    free(cd);
    return s;
}

/* ---- policy ---- */

/* Code points of a valid UTF-8 string (no overlongs, no surrogates, at most
 * U+10FFFF), or -1. Stops counting past limit (returns limit + 1). */
static long utf8_count(const unsigned char *s, long limit)
{
    long n = 0;

    while (*s) {
        unsigned char c = *s;
        uint32_t cp;
        int extra;

        if (c < 0x80) {
            s++;
        } else {
            if (c >= 0xc2 && c <= 0xdf) {
                extra = 1;
                cp = c & 0x1f;
            } else if (c >= 0xe0 && c <= 0xef) {
                extra = 2;
                cp = c & 0x0f;
            } else if (c >= 0xf0 && c <= 0xf4) {
                extra = 3;
                cp = c & 0x07;
            } else {
                return -1;
            }
            for (int i = 1; i <= extra; i++) {
                if ((s[i] & 0xc0) != 0x80)
                    return -1;
                cp = cp << 6 | (s[i] & 0x3f);
            }
            if ((extra == 2 && (cp < 0x800 || (cp >= 0xd800 && cp <= 0xdfff))) ||
                (extra == 3 && (cp < 0x10000 || cp > 0x10ffff)))
                return -1;
            s += extra + 1;
        }
        if (++n > limit)
            return limit + 1;
    }
    return n;
}

ks_status ks_password_policy_check(const char *plain, char *why, size_t cap)
{
    ks_status s = KS_ERR_INVALID;
    const char *msg = NULL;
    int lower = 0, upper = 0, digit = 0;
    long n;

    if (plain == NULL) {
        msg = "password is required";
        goto out;
    }
    n = utf8_count((const unsigned char *)plain, KS_PASSWORD_POLICY_MAX);
    if (n < 0) {
        msg = "password must be valid UTF-8";
        goto out;
    }
    if (n < KS_PASSWORD_POLICY_MIN) {
        msg = "password must be at least 8 characters long";
        goto out;
    }
    if (n > KS_PASSWORD_POLICY_MAX) {
        msg = "password must be at most 64 characters long";
        goto out;
    }
    for (const char *p = plain; *p; p++) {
        lower |= *p >= 'a' && *p <= 'z';
        upper |= *p >= 'A' && *p <= 'Z';
        digit |= *p >= '0' && *p <= '9';
    }
    if (!lower)
        msg = "password must contain at least one lower-case letter";
    else if (!upper)
        msg = "password must contain at least one upper-case letter";
    else if (!digit)
        msg = "password must contain at least one digit";
    else
        s = KS_OK;
out:
    if (why != NULL && cap > 0)
        snprintf(why, cap, "%s", msg ? msg : "");
    if (s != KS_OK)
        s = KS_FAIL(KS_ERR_INVALID, "%s", msg);
    return s;
}

/* ---- the pool ---- */

/* A synchronous caller waiting for its job. Shared by the caller and the
 * job; the last of the two to let go frees it. */
typedef struct {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    int refs;
    int done;
    _Atomic int abandoned; /* the caller timed out: skip the work */
    ks_status result;
    char hash[KS_PASSWORD_HASH_MAX + 1];
} waiter;

typedef struct {
    ks_password_op op;
    int cost;
    ks_password_done_fn done;
    void *arg;
    waiter *w; /* set by the *_wait functions */
    int too_long; /* VERIFY of a plain over KS_PASSWORD_PLAIN_MAX bytes */
    char plain[KS_PASSWORD_PLAIN_MAX + 1];
    char hash[KS_PASSWORD_HASH_MAX + 1];
} job;

struct ks_password_pool {
    pthread_mutex_t lock;
    pthread_cond_t cond;
    job *ring;
    size_t cap, head, count;
    int closing;
    pthread_t *threads;
    int nthreads, started;
    double mean_s; /* moving average of one job's duration */
    ks_metric *m_depth, *m_rejected, *m_cancelled, *m_hash_s, *m_verify_s;
};

static double mono_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void wipe_job(job *j)
{
    explicit_bzero(j, sizeof(*j));
}

/* Run one job on a worker with its crypt work area. */
static void run_job(ks_password_pool *p, job *j, struct crypt_data *cd)
{
    char out[KS_PASSWORD_HASH_MAX + 1];
    ks_status s;
    double t0, dt;

    if (j->w != NULL && atomic_load(&j->w->abandoned)) {
        ks_metric_inc(p->m_cancelled);
        j->done(KS_ERR_TIMEOUT, NULL, j->arg);
        return;
    }
    t0 = mono_s();
    if (j->too_long)
        s = KS_FAIL(KS_ERR_DENIED, "password: does not match");
    else if (j->op == KS_PASSWORD_OP_HASH)
        s = do_hash(cd, j->plain, j->cost, out);
    else
        s = do_verify(cd, j->plain, j->hash);
    dt = mono_s() - t0;
    explicit_bzero(j->plain, sizeof(j->plain));
    ks_metric_observe(j->op == KS_PASSWORD_OP_HASH ? p->m_hash_s : p->m_verify_s, dt);
    pthread_mutex_lock(&p->lock);
    p->mean_s = p->mean_s * 0.8 + dt * 0.2;
    pthread_mutex_unlock(&p->lock);
    j->done(s, s == KS_OK && j->op == KS_PASSWORD_OP_HASH ? out : NULL, j->arg);
    explicit_bzero(out, sizeof(out));
}

static void *worker_main(void *arg)
{
    ks_password_pool *p = arg;
    struct crypt_data *cd = calloc(1, sizeof(*cd));
    job j;

    for (;;) {
        pthread_mutex_lock(&p->lock);
        while (!p->closing && p->count == 0)
            pthread_cond_wait(&p->cond, &p->lock);
        if (p->closing) {
            pthread_mutex_unlock(&p->lock);
            break;
        }
        j = p->ring[p->head];
        wipe_job(&p->ring[p->head]);
        p->head = (p->head + 1) % p->cap;
        p->count--;
        ks_metric_dec(p->m_depth);
        pthread_mutex_unlock(&p->lock);

        if (cd == NULL) /* no work area: fail the job rather than the process */
            j.done(KS_FAIL(KS_ERR_NOMEM, "password: out of memory"), NULL, j.arg);
        else
            run_job(p, &j, cd);
        wipe_job(&j);
    }
    free(cd);
    return NULL;
}

ks_status ks_password_pool_create(int nthreads, size_t queue_cap, ks_password_pool **out)
{
    ks_status s = KS_ERR_INVALID;
    ks_password_pool *p = NULL;

    if (out == NULL || nthreads < 1 || nthreads > 64 || queue_cap < 1 || queue_cap > 65536) {
        s = KS_FAIL(KS_ERR_INVALID, "password pool: want 1..64 threads and a queue of 1..65536");
        goto out;
    }
    p = calloc(1, sizeof(*p));
    if (p == NULL || (p->ring = calloc(queue_cap, sizeof(job))) == NULL ||
        (p->threads = calloc((size_t)nthreads, sizeof(pthread_t))) == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "password pool: out of memory");
        goto out;
    }
    pthread_mutex_init(&p->lock, NULL);
    pthread_cond_init(&p->cond, NULL);
    p->cap = queue_cap;
    p->nthreads = nthreads;
    p->mean_s = 0.051; /* bcrypt cost 10 here, until measured */
    p->m_depth = ks_metrics_gauge("ks_password_queue_depth",
                                  "password hashing jobs waiting for a worker", NULL);
    p->m_rejected = ks_metrics_counter("ks_password_rejected_total",
                                       "password jobs refused because the queue was full", NULL);
    p->m_cancelled = ks_metrics_counter("ks_password_cancelled_total",
                                        "password jobs dropped by shutdown or a wait timeout",
                                        NULL);
    p->m_hash_s = ks_metrics_histogram("ks_password_hash_seconds",
                                       "duration of one password hash or verification",
                                       "op=\"hash\"", NULL, 0);
    p->m_verify_s = ks_metrics_histogram("ks_password_hash_seconds",
                                         "duration of one password hash or verification",
                                         "op=\"verify\"", NULL, 0);
    for (; p->started < nthreads; p->started++) {
        int e = pthread_create(&p->threads[p->started], NULL, worker_main, p);
        if (e != 0) {
            s = KS_FAIL(KS_ERR_INTERNAL, "password pool: pthread_create: %s", strerror(e));
            goto out;
        }
    }
    *out = p;
    p = NULL;
    s = KS_OK;
out:
    if (p != NULL) {
        if (p->threads != NULL && p->ring != NULL)
            ks_password_pool_destroy(p); /* joins the workers that started */
        else {
            free(p->ring);
            free(p);
        }
    }
    return s;
}

/* Queue a job; w is NULL except for the *_wait functions. */
static ks_status pool_submit(ks_password_pool *p, ks_password_op op, const char *plain,
                             const char *hash, int cost, ks_password_done_fn done, void *arg,
                             waiter *w)
{
    ks_status s = KS_ERR_INVALID;
    size_t plen, hlen = 0;
    job *j;

    if (p == NULL || plain == NULL || done == NULL ||
        (op != KS_PASSWORD_OP_HASH && op != KS_PASSWORD_OP_VERIFY)) {
        s = KS_FAIL(KS_ERR_INVALID, "password pool: bad submission");
        goto out;
    }
    plen = strnlen(plain, KS_PASSWORD_PLAIN_MAX + 1);
    if (op == KS_PASSWORD_OP_HASH) {
        if ((s = check_cost(&cost)) != KS_OK)
            goto out;
        if (plen > KS_PASSWORD_PLAIN_MAX) {
            s = KS_FAIL(KS_ERR_TOO_LARGE, "password: longer than %d bytes",
                        KS_PASSWORD_PLAIN_MAX);
            goto out;
        }
    } else {
        if (hash == NULL) {
            s = KS_FAIL(KS_ERR_INVALID, "password pool: verify without a hash");
            goto out;
        }
        if ((s = hash_supported(hash)) != KS_OK)
            goto out;
        hlen = strlen(hash);
        if (hlen > KS_PASSWORD_HASH_MAX) {
            s = KS_FAIL(KS_ERR_INVALID, "password: hash longer than %d bytes",
                        KS_PASSWORD_HASH_MAX);
            goto out;
        }
    }

    pthread_mutex_lock(&p->lock);
    if (p->closing) {
        pthread_mutex_unlock(&p->lock);
        s = KS_FAIL(KS_ERR_CLOSED, "password pool: shutting down");
        goto out;
    }
    if (p->count == p->cap) {
        pthread_mutex_unlock(&p->lock);
        ks_metric_inc(p->m_rejected);
        s = KS_FAIL(KS_ERR_UNAVAILABLE, "password pool: queue full (%zu waiting)", p->cap);
        goto out;
    }
    j = &p->ring[(p->head + p->count) % p->cap];
    j->op = op;
    j->cost = cost;
    j->done = done;
    j->arg = arg;
    j->w = w;
    /* A plain over the cap (VERIFY only) is not copied; it cannot match. */
    j->too_long = plen > KS_PASSWORD_PLAIN_MAX;
    if (!j->too_long)
        memcpy(j->plain, plain, plen + 1);
    if (op == KS_PASSWORD_OP_VERIFY)
        memcpy(j->hash, hash, hlen + 1);
    p->count++;
    ks_metric_inc(p->m_depth);
    pthread_cond_signal(&p->cond);
    pthread_mutex_unlock(&p->lock);
    s = KS_OK;
out:
    return s;
}

ks_status ks_password_pool_submit(ks_password_pool *pool, ks_password_op op, const char *plain,
                                  const char *hash, int cost, ks_password_done_fn done, void *arg)
{
    return pool_submit(pool, op, plain, hash, cost, done, arg, NULL);
}

static void waiter_release(waiter *w)
{
    /* called with w->lock held; unlocks */
    int last = --w->refs == 0;
    pthread_mutex_unlock(&w->lock);
    if (last) {
        pthread_mutex_destroy(&w->lock);
        pthread_cond_destroy(&w->cond);
        explicit_bzero(w, sizeof(*w));
        free(w);
    }
}

static void waiter_done(ks_status result, const char *hash, void *arg)
{
    waiter *w = arg;

    pthread_mutex_lock(&w->lock);
    w->result = result;
    if (hash != NULL)
        snprintf(w->hash, sizeof(w->hash), "%s", hash);
    w->done = 1;
    pthread_cond_signal(&w->cond);
    waiter_release(w);
}

static ks_status pool_wait(ks_password_pool *p, ks_password_op op, const char *plain,
                           const char *hash, int cost, int timeout_ms, char **hash_out)
{
    ks_status s = KS_ERR_INVALID;
    waiter *w = NULL;
    pthread_condattr_t ca;
    struct timespec dl;
    char *copy = NULL;

    if (timeout_ms <= 0) {
        s = KS_FAIL(KS_ERR_INVALID, "password pool: timeout must be positive");
        goto out;
    }
    w = calloc(1, sizeof(*w));
    if (w == NULL) {
        s = KS_FAIL(KS_ERR_NOMEM, "password pool: out of memory");
        goto out;
    }
    pthread_mutex_init(&w->lock, NULL);
    pthread_condattr_init(&ca);
    pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
    pthread_cond_init(&w->cond, &ca);
    pthread_condattr_destroy(&ca);
    w->refs = 2;
    s = pool_submit(p, op, plain, hash, cost, waiter_done, w, w);
    if (s != KS_OK) {
        w->refs = 1;
        pthread_mutex_lock(&w->lock);
        waiter_release(w);
        goto out;
    }
    clock_gettime(CLOCK_MONOTONIC, &dl);
    dl.tv_sec += timeout_ms / 1000;
    dl.tv_nsec += (long)(timeout_ms % 1000) * 1000000L;
    if (dl.tv_nsec >= 1000000000L) {
        dl.tv_sec++;
        dl.tv_nsec -= 1000000000L;
    }
    pthread_mutex_lock(&w->lock);
    while (!w->done)
        if (pthread_cond_timedwait(&w->cond, &w->lock, &dl) == ETIMEDOUT)
            break;
    if (!w->done) {
        atomic_store(&w->abandoned, 1);
        s = KS_FAIL(KS_ERR_TIMEOUT, "password pool: no result within %d ms", timeout_ms);
    } else {
        s = w->result;
        if (s == KS_OK && op == KS_PASSWORD_OP_HASH) {
            copy = strdup(w->hash);
            if (copy == NULL)
                s = KS_FAIL(KS_ERR_NOMEM, "password pool: out of memory");
        }
    }
    waiter_release(w);
    if (s == KS_OK && hash_out != NULL) {
        *hash_out = copy;
        copy = NULL;
    }
out:
    free(copy);
    return s;
}

ks_status ks_password_pool_verify_wait(ks_password_pool *pool, const char *plain,
                                       const char *hash, int timeout_ms)
{
    return pool_wait(pool, KS_PASSWORD_OP_VERIFY, plain, hash, 0, timeout_ms, NULL);
}

ks_status ks_password_pool_hash_wait(ks_password_pool *pool, const char *plain, int cost,
                                     int timeout_ms, char **hash_out)
{
    if (hash_out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "password pool: NULL hash_out");
    return pool_wait(pool, KS_PASSWORD_OP_HASH, plain, NULL, cost, timeout_ms, hash_out);
}

unsigned ks_password_pool_retry_after_s(ks_password_pool *pool)
{
    double secs;

    if (pool == NULL)
        return 1;
    pthread_mutex_lock(&pool->lock);
    secs = ceil((double)(pool->count + (size_t)pool->nthreads) * pool->mean_s /
                (double)pool->nthreads);
    pthread_mutex_unlock(&pool->lock);
    if (!(secs >= 1))
        return 1;
    return secs > 60 ? 60 : (unsigned)secs;
}

size_t ks_password_pool_queued(ks_password_pool *pool)
{
    size_t n;

    if (pool == NULL)
        return 0;
    pthread_mutex_lock(&pool->lock);
    n = pool->count;
    pthread_mutex_unlock(&pool->lock);
    return n;
}

void ks_password_pool_destroy(ks_password_pool *p)
{
    job j;

    if (p == NULL)
        return;
    pthread_mutex_lock(&p->lock);
    p->closing = 1;
    pthread_cond_broadcast(&p->cond);
    /* Workers take nothing once closing is set; cancel what waits. */
    while (p->count > 0) {
        j = p->ring[p->head];
        wipe_job(&p->ring[p->head]);
        p->head = (p->head + 1) % p->cap;
        p->count--;
        ks_metric_dec(p->m_depth);
        ks_metric_inc(p->m_cancelled);
        pthread_mutex_unlock(&p->lock);
        j.done(KS_ERR_CLOSED, NULL, j.arg);
        wipe_job(&j);
        pthread_mutex_lock(&p->lock);
    }
    pthread_mutex_unlock(&p->lock);
    for (int i = 0; i < p->started; i++)
        pthread_join(p->threads[i], NULL);
    pthread_mutex_destroy(&p->lock);
    pthread_cond_destroy(&p->cond);
    explicit_bzero(p->ring, p->cap * sizeof(job));
    free(p->ring);
    free(p->threads);
    free(p);
}
