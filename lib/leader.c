#include "leader.h"

#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "log.h"
#include "metrics.h"

#define LE_NS_MAX 63        /* DNS-1123 label */
#define LE_NAME_MAX 253     /* DNS-1123 subdomain */
#define LE_LEASE_ID_MAX (LE_NS_MAX + 1 + LE_NAME_MAX + 1)
#define LE_PATH_MAX 512
/* Standbys wait retry_period * (1 + U[0, LE_JITTER_PCT%)). client-go jitters by
 * up to 120%; 20% still spreads candidates out but keeps a handover after a
 * release within about 1.2 retry periods. */
#define LE_JITTER_PCT 20
#define LE_ERR_MAX 256

struct ks_leader {
    ks_kube_client *kube;
    char ns[LE_NS_MAX + 1];
    char name[LE_NAME_MAX + 1];
    char lease_id[LE_LEASE_ID_MAX];   /* "ns/name", for logs and metrics */
    char identity[KS_LEADER_IDENTITY_MAX + 1];
    char coll_path[LE_PATH_MAX];
    char obj_path[LE_PATH_MAX];
    int64_t lease_ms, renew_ms, retry_ms;
    int32_t lease_s;
    int release_on_cancel;
    void (*on_started)(void *arg);
    void (*on_stopped)(void *arg);
    void (*on_new_leader)(const char *identity, void *arg);
    void *arg;

    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    int stopping;                      /* under mu */
    char current[KS_LEADER_IDENTITY_MAX + 1]; /* under mu */
    int have_current;                  /* under mu */
    atomic_int leading;

    /* the elector thread's own state */
    ks_leader_observation obs;         /* the record of last_lease */
    json_t *last_lease;                /* the Lease last read or written: base of writes */
    int64_t last_renew_ms;             /* when the last successful write was sent */
    char reported[KS_LEADER_IDENTITY_MAX + 1];
    int reported_any;
    char last_err[LE_ERR_MAX];         /* to log a repeated error once */
    uint64_t rng;

    ks_metric *m_leader, *m_to_leader, *m_to_standby, *m_errors;
};

typedef enum { LE_HELD, LE_OTHER, LE_ERROR } le_outcome;

/* ---- time ---- */

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* ---- the pure parts ---- */

const char *ks_leader_action_name(ks_leader_action a)
{
    switch (a) {
    case KS_LEADER_ACQUIRE: return "acquire";
    case KS_LEADER_RENEW: return "renew";
    default: return "wait";
    }
}

void ks_leader_config_init(ks_leader_config *cfg)
{
    if (cfg == NULL)
        return;
    memset(cfg, 0, sizeof(*cfg));
    cfg->release_on_cancel = 1;
}

ks_status ks_leader_microtime(int64_t unix_us, char *out, size_t cap)
{
    ks_status st = KS_ERR_INVALID;
    char buf[KS_LEADER_MICROTIME_LEN + 16];
    int64_t sec = unix_us / 1000000, us = unix_us % 1000000;
    time_t t;
    struct tm tm;
    int n;

    if (out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "microtime: out is NULL");
        goto out;
    }
    if (cap < KS_LEADER_MICROTIME_LEN + 1) {
        st = KS_FAIL(KS_ERR_TOO_LARGE, "microtime: buffer of %zu bytes is too small", cap);
        goto out;
    }
    if (us < 0) {   /* floor division for times before 1970 */
        us += 1000000;
        sec -= 1;
    }
    /* years 0000..9999: -62167219200 .. 253402300799 */
    if (sec < -62167219200LL || sec > 253402300799LL) {
        st = KS_FAIL(KS_ERR_INVALID, "microtime: %lld s is outside years 0000-9999",
                     (long long)sec);
        goto out;
    }
    t = (time_t)sec;
    if (gmtime_r(&t, &tm) == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "microtime: gmtime_r failed for %lld", (long long)sec);
        goto out;
    }
    n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06dZ", tm.tm_year + 1900,
                 tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, (int)us);
    if (n != KS_LEADER_MICROTIME_LEN) {
        st = KS_FAIL(KS_ERR_INTERNAL, "microtime: formatted %d bytes", n);
        goto out;
    }
    memcpy(out, buf, (size_t)n + 1);
    st = KS_OK;
out:
    return st;
}

/* Copy a string field (absent or null = "") into dst[cap]. */
static ks_status rec_str(const json_t *obj, const char *key, char *dst, size_t cap)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    size_t len;

    if (v == NULL || json_is_null(v)) {
        dst[0] = '\0';
        return KS_OK;
    }
    if (!json_is_string(v))
        return KS_FAIL(KS_ERR_PROTOCOL, "lease: %s is not a string", key);
    len = json_string_length(v);
    if (len >= cap || memchr(json_string_value(v), '\0', len) != NULL)
        return KS_FAIL(len >= cap ? KS_ERR_TOO_LARGE : KS_ERR_PROTOCOL,
                       "lease: %s of %zu bytes is too long or holds NUL", key, len);
    memcpy(dst, json_string_value(v), len + 1);
    return KS_OK;
}

/* An int32 field (absent or null = 0, negative = 0). */
static ks_status rec_int(const json_t *obj, const char *key, int32_t *dst)
{
    const json_t *v = obj ? json_object_get(obj, key) : NULL;
    json_int_t n;

    if (v == NULL || json_is_null(v)) {
        *dst = 0;
        return KS_OK;
    }
    if (!json_is_integer(v))
        return KS_FAIL(KS_ERR_PROTOCOL, "lease: %s is not an integer", key);
    n = json_integer_value(v);
    if (n > INT32_MAX || n < INT32_MIN)
        return KS_FAIL(KS_ERR_PROTOCOL, "lease: %s out of int32 range", key);
    *dst = n < 0 ? 0 : (int32_t)n;
    return KS_OK;
}

ks_status ks_leader_record_from_lease(const json_t *lease, ks_leader_record *out)
{
    ks_status st = KS_ERR_PROTOCOL;
    ks_leader_record r;
    const json_t *meta, *spec;

    if (lease == NULL || out == NULL || !json_is_object(lease)) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "lease: not an object");
        goto out;
    }
    meta = json_object_get(lease, "metadata");
    spec = json_object_get(lease, "spec");
    if ((meta != NULL && !json_is_object(meta)) ||
        (spec != NULL && !json_is_object(spec) && !json_is_null(spec))) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "lease: metadata or spec is not an object");
        goto out;
    }
    if (spec != NULL && json_is_null(spec))
        spec = NULL;
    memset(&r, 0, sizeof(r));
    if ((st = rec_str(meta, "resourceVersion", r.resource_version, sizeof(r.resource_version))) ||
        (st = rec_str(spec, "holderIdentity", r.holder, sizeof(r.holder))) ||
        (st = rec_int(spec, "leaseDurationSeconds", &r.lease_duration_s)) ||
        (st = rec_str(spec, "acquireTime", r.acquire_time, sizeof(r.acquire_time))) ||
        (st = rec_str(spec, "renewTime", r.renew_time, sizeof(r.renew_time))) ||
        (st = rec_int(spec, "leaseTransitions", &r.transitions)))
        goto out;
    *out = r;
    st = KS_OK;
out:
    return st;
}

int ks_leader_record_equal(const ks_leader_record *a, const ks_leader_record *b)
{
    return a->lease_duration_s == b->lease_duration_s && a->transitions == b->transitions &&
           strcmp(a->holder, b->holder) == 0 && strcmp(a->acquire_time, b->acquire_time) == 0 &&
           strcmp(a->renew_time, b->renew_time) == 0 &&
           strcmp(a->resource_version, b->resource_version) == 0;
}

int ks_leader_observe(ks_leader_observation *o, const ks_leader_record *rec, int64_t now_ms)
{
    if (o->have && ks_leader_record_equal(&o->rec, rec))
        return 0;
    o->rec = *rec;
    o->observed_ms = now_ms;
    o->have = 1;
    return 1;
}

int ks_leader_expired(const ks_leader_observation *o, int64_t now_ms)
{
    if (o == NULL || !o->have)
        return 1;
    return o->observed_ms + (int64_t)o->rec.lease_duration_s * 1000 < now_ms;
}

ks_leader_action ks_leader_decide(const ks_leader_observation *o, const char *self,
                                  int64_t now_ms)
{
    if (o == NULL || !o->have)
        return KS_LEADER_ACQUIRE;
    if (self != NULL && self[0] != '\0' && strcmp(o->rec.holder, self) == 0)
        return KS_LEADER_RENEW;
    if (o->rec.holder[0] == '\0' || ks_leader_expired(o, now_ms))
        return KS_LEADER_ACQUIRE;
    return KS_LEADER_WAIT;
}

ks_status ks_leader_next_record(const ks_leader_observation *o, ks_leader_action action,
                                const char *self, int32_t lease_s, int64_t now_us,
                                ks_leader_record *out)
{
    ks_status st = KS_ERR_INVALID;
    ks_leader_record r;
    size_t len = self ? strlen(self) : 0;
    int have = o != NULL && o->have;

    if (out == NULL || len == 0 || len > KS_LEADER_IDENTITY_MAX || lease_s < 1 ||
        (action != KS_LEADER_ACQUIRE && action != KS_LEADER_RENEW) ||
        (action == KS_LEADER_RENEW && !have)) {
        st = KS_FAIL(KS_ERR_INVALID, "leader record: bad arguments for %s",
                     ks_leader_action_name(action));
        goto out;
    }
    memset(&r, 0, sizeof(r));
    memcpy(r.holder, self, len + 1);
    r.lease_duration_s = lease_s;
    if ((st = ks_leader_microtime(now_us, r.renew_time, sizeof(r.renew_time))) != KS_OK)
        goto out;
    if (action == KS_LEADER_RENEW && o->rec.acquire_time[0] != '\0')
        memcpy(r.acquire_time, o->rec.acquire_time, sizeof(r.acquire_time));
    else
        memcpy(r.acquire_time, r.renew_time, sizeof(r.acquire_time));
    if (action == KS_LEADER_RENEW)
        r.transitions = o->rec.transitions;
    else if (have)
        r.transitions = o->rec.transitions < INT32_MAX ? o->rec.transitions + 1 : INT32_MAX;
    if (have)
        memcpy(r.resource_version, o->rec.resource_version, sizeof(r.resource_version));
    *out = r;
    st = KS_OK;
out:
    return st;
}

ks_status ks_leader_release_record(const ks_leader_record *last, int64_t now_us,
                                   ks_leader_record *out)
{
    ks_status st = KS_ERR_INVALID;
    ks_leader_record r;

    if (last == NULL || out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "leader release record: NULL argument");
        goto out;
    }
    memset(&r, 0, sizeof(r));
    r.lease_duration_s = 1;
    r.transitions = last->transitions;
    memcpy(r.resource_version, last->resource_version, sizeof(r.resource_version));
    if ((st = ks_leader_microtime(now_us, r.renew_time, sizeof(r.renew_time))) != KS_OK)
        goto out;
    memcpy(r.acquire_time, r.renew_time, sizeof(r.acquire_time));
    *out = r;
    st = KS_OK;
out:
    return st;
}

/* Set obj[key] = a new string, or delete the key when s is "". */
static int set_str_or_del(json_t *obj, const char *key, const char *s)
{
    if (s[0] == '\0') {
        json_object_del(obj, key);
        return 0;
    }
    return json_object_set_new(obj, key, json_string(s));
}

/* obj[key] as an object, created (or replacing a non-object) if needed. */
static json_t *child_object(json_t *obj, const char *key)
{
    json_t *c = json_object_get(obj, key);

    if (json_is_object(c))
        return c;
    if (json_object_set_new(obj, key, json_object()) != 0)
        return NULL;
    return json_object_get(obj, key);
}

ks_status ks_leader_lease_json(const json_t *base, const char *lease_namespace, const char *name,
                               const ks_leader_record *rec, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    json_t *obj = NULL, *meta, *spec;

    if (lease_namespace == NULL || name == NULL || rec == NULL || out == NULL ||
        (base != NULL && !json_is_object(base))) {
        st = KS_FAIL(KS_ERR_INVALID, "lease json: bad arguments");
        goto out;
    }
    st = KS_ERR_NOMEM;
    if (base != NULL)
        obj = json_deep_copy(base);
    else
        obj = json_pack("{s:s, s:s, s:{s:s, s:s}}", "apiVersion", "coordination.k8s.io/v1",
                        "kind", "Lease", "metadata", "name", name, "namespace", lease_namespace);
    if (obj == NULL || (meta = child_object(obj, "metadata")) == NULL ||
        (spec = child_object(obj, "spec")) == NULL)
        goto fail;
    if (set_str_or_del(meta, "resourceVersion", rec->resource_version) != 0 ||
        json_object_set_new(spec, "holderIdentity", json_string(rec->holder)) != 0 ||
        json_object_set_new(spec, "leaseDurationSeconds",
                            json_integer(rec->lease_duration_s)) != 0 ||
        set_str_or_del(spec, "acquireTime", rec->acquire_time) != 0 ||
        set_str_or_del(spec, "renewTime", rec->renew_time) != 0 ||
        json_object_set_new(spec, "leaseTransitions", json_integer(rec->transitions)) != 0)
        goto fail;
    *out = obj;
    obj = NULL;
    st = KS_OK;
    goto out;
fail:
    /* json_string() also fails for invalid UTF-8, which validation keeps out */
    st = KS_FAIL(KS_ERR_NOMEM, "lease json: out of memory or invalid UTF-8");
out:
    json_decref(obj);
    return st;
}

/* ---- configuration ---- */

static int dns_label_ok(const char *s, size_t max)
{
    size_t n = strlen(s);

    if (n == 0 || n > max)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        int alnum = (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        if (!alnum && !(c == '-' && i > 0 && i + 1 < n))
            return 0;
    }
    return 1;
}

/* DNS-1123 subdomain: dot-separated labels, at most 253 bytes in all. */
static int dns_subdomain_ok(const char *s)
{
    char part[LE_NAME_MAX + 1];
    size_t n = strlen(s), start = 0;

    if (n == 0 || n > LE_NAME_MAX)
        return 0;
    for (size_t i = 0; i <= n; i++) {
        if (s[i] != '.' && s[i] != '\0')
            continue;
        memcpy(part, s + start, i - start);
        part[i - start] = '\0';
        if (!dns_label_ok(part, LE_NAME_MAX))
            return 0;
        start = i + 1;
    }
    return 1;
}

static int identity_ok(const char *s)
{
    size_t n = strlen(s);
    json_t *probe;

    if (n == 0 || n > KS_LEADER_IDENTITY_MAX)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || s[i] == 0x7f)
            return 0;
    probe = json_string(s);   /* NULL for invalid UTF-8 */
    if (probe == NULL)
        return 0;
    json_decref(probe);
    return 1;
}

static uint64_t random_u64(void)
{
    uint64_t v = 0;

    if (getrandom(&v, sizeof(v), 0) != (ssize_t)sizeof(v)) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        v = ((uint64_t)ts.tv_sec * 1000000007ULL) ^ (uint64_t)ts.tv_nsec ^
            ((uint64_t)getpid() << 32);
    }
    return v ? v : 0x9e3779b97f4a7c15ULL;
}

static void default_identity(char *out, size_t cap)
{
    char host[256];

    if (gethostname(host, sizeof(host)) != 0 || host[0] == '\0')
        snprintf(host, sizeof(host), "kscore");
    host[sizeof(host) - 1] = '\0';
    snprintf(out, cap, "%s_%016llx", host, (unsigned long long)random_u64());
}

/* xorshift64*: jitter only, no need for more */
static uint64_t le_rand(ks_leader *l)
{
    l->rng ^= l->rng >> 12;
    l->rng ^= l->rng << 25;
    l->rng ^= l->rng >> 27;
    return l->rng * 2685821657736338717ULL;
}

static int64_t le_jittered(ks_leader *l)
{
    int64_t span = l->retry_ms * LE_JITTER_PCT / 100;
    return l->retry_ms + (span > 0 ? (int64_t)(le_rand(l) % (uint64_t)span) : 0);
}

/* ---- the elector's helpers (elector thread only) ---- */

static int le_stopping(ks_leader *l)
{
    int s;

    pthread_mutex_lock(&l->mu);
    s = l->stopping;
    pthread_mutex_unlock(&l->mu);
    return s;
}

/* Sleep ms of real time unless stop is requested. */
static void le_sleep(ks_leader *l, int64_t ms)
{
    struct timespec ts;
    int64_t ns;

    clock_gettime(CLOCK_MONOTONIC, &ts);
    ns = ts.tv_nsec + (ms % 1000) * 1000000;
    ts.tv_sec += (time_t)(ms / 1000 + ns / 1000000000);
    ts.tv_nsec = (long)(ns % 1000000000);
    pthread_mutex_lock(&l->mu);
    while (!l->stopping)
        if (pthread_cond_timedwait(&l->cv, &l->mu, &ts) == ETIMEDOUT)
            break;
    pthread_mutex_unlock(&l->mu);
}

/* Log a failed attempt: at warn the first time, at debug while it repeats. */
static void le_error(ks_leader *l, ks_status st, const char *what)
{
    char msg[LE_ERR_MAX];

    ks_metric_inc(l->m_errors);
    snprintf(msg, sizeof(msg), "%s: %s: %s", what, ks_status_name(st), ks_status_last());
    if (strcmp(msg, l->last_err) == 0) {
        ks_debug("leader election %s: %s (still failing)", l->lease_id, msg);
        return;
    }
    memcpy(l->last_err, msg, sizeof(msg));
    ks_warn("leader election %s: %s", l->lease_id, msg);
}

/* Record rec as read at now; report a new holder. */
static void le_observe(ks_leader *l, const ks_leader_record *rec, int64_t now)
{
    if (!ks_leader_observe(&l->obs, rec, now))
        return;
    pthread_mutex_lock(&l->mu);
    memcpy(l->current, rec->holder, sizeof(l->current));
    l->have_current = 1;
    pthread_mutex_unlock(&l->mu);
    if (l->reported_any && strcmp(l->reported, rec->holder) == 0)
        return;
    memcpy(l->reported, rec->holder, sizeof(l->reported));
    l->reported_any = 1;
    ks_info("leader election %s: holder is now \"%s\" (leaseTransitions %d)", l->lease_id,
            rec->holder, (int)rec->transitions);
    if (l->on_new_leader)
        l->on_new_leader(rec->holder, l->arg);
}

/* Take lease (owned) as the last known Lease and observe its record. */
static ks_status le_adopt(ks_leader *l, json_t *lease)
{
    ks_leader_record rec;
    ks_status st = ks_leader_record_from_lease(lease, &rec);

    if (st != KS_OK) {
        json_decref(lease);
        return st;
    }
    json_decref(l->last_lease);
    l->last_lease = lease;
    le_observe(l, &rec, mono_ms());
    return KS_OK;
}

/* One request; *obj gets the parsed 2xx body. timeout_ms >= 1. */
static ks_status le_call(ks_leader *l, const char *method, const char *path, const json_t *body,
                         int64_t timeout_ms, json_t **obj, ks_kube_response *resp)
{
    ks_status st = KS_ERR_NOMEM;
    char *text = NULL;
    json_t *res = NULL;

    if (body != NULL && (text = json_dumps(body, JSON_COMPACT)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "leader: cannot serialize the Lease");
        memset(resp, 0, sizeof(*resp));
        goto out;
    }
    st = ks_kube_request(l->kube, method, path, text, NULL, timeout_ms < 1 ? 1 : (long)timeout_ms,
                         resp);
    if (st != KS_OK)
        goto out;
    res = json_loadb(resp->body ? resp->body : "", resp->body_len, 0, NULL);
    if (res == NULL) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "leader: %s %s: answer is not JSON", method, path);
        goto out;
    }
    *obj = res;
    st = KS_OK;
out:
    free(text);
    return st;
}

static int64_t left_ms(int64_t deadline)
{
    return deadline - mono_ms();
}

/* Write rec with PUT (base: the Lease it was derived from) or POST (base
 * NULL). On success the answer becomes the last known Lease. */
static ks_status le_write(ks_leader *l, const json_t *base, const ks_leader_record *rec,
                          int64_t deadline, ks_kube_response *resp)
{
    ks_status st;
    json_t *obj = NULL, *written = NULL;

    memset(resp, 0, sizeof(*resp));
    if ((st = ks_leader_lease_json(base, l->ns, l->name, rec, &obj)) != KS_OK)
        goto out;
    if (left_ms(deadline) < 1) {
        st = KS_FAIL(KS_ERR_TIMEOUT, "leader: no time left to write the Lease");
        goto out;
    }
    st = le_call(l, base ? "PUT" : "POST", base ? l->obj_path : l->coll_path, obj,
                 left_ms(deadline), &written, resp);
    if (st != KS_OK)
        goto out;
    st = le_adopt(l, written);
out:
    json_decref(obj);
    return st;
}

/* GET the Lease and observe it. KS_ERR_NOT_FOUND when it does not exist. */
static ks_status le_read(ks_leader *l, int64_t deadline)
{
    ks_status st;
    ks_kube_response resp;
    json_t *lease = NULL;

    if (left_ms(deadline) < 1)
        return KS_FAIL(KS_ERR_TIMEOUT, "leader: no time left to read the Lease");
    st = le_call(l, "GET", l->obj_path, NULL, left_ms(deadline), &lease, &resp);
    ks_kube_response_clear(&resp);
    if (st != KS_OK)
        return st;
    return le_adopt(l, lease);
}

static le_outcome le_create(ks_leader *l, int64_t deadline)
{
    ks_leader_observation none = {0};
    ks_leader_record rec;
    ks_kube_response resp;
    ks_status st;

    if ((st = ks_leader_next_record(&none, KS_LEADER_ACQUIRE, l->identity, l->lease_s, wall_us(),
                                    &rec)) != KS_OK) {
        le_error(l, st, "building the Lease");
        return LE_ERROR;
    }
    st = le_write(l, NULL, &rec, deadline, &resp);
    if (st == KS_OK) {
        ks_info("leader election %s: created the Lease", l->lease_id);
        ks_kube_response_clear(&resp);
        return LE_HELD;
    }
    if (st == KS_ERR_CONFLICT) {
        /* AlreadyExists: another candidate created it first */
        ks_kube_response_clear(&resp);
        ks_info("leader election %s: another candidate created the Lease first", l->lease_id);
        return LE_OTHER;
    }
    if (st == KS_ERR_NOT_FOUND) {
        char msg[LE_ERR_MAX];
        snprintf(msg, sizeof(msg), "namespace \"%s\" does not exist", l->ns);
        ks_kube_response_clear(&resp);
        ks_metric_inc(l->m_errors);
        if (strcmp(msg, l->last_err) != 0) {
            memcpy(l->last_err, msg, sizeof(msg));
            ks_error("leader election %s: cannot create the Lease: %s (the control plane creates "
                     "it); retrying every %lld ms",
                     l->lease_id, msg, (long long)l->retry_ms);
        }
        return LE_ERROR;
    }
    ks_kube_response_clear(&resp);
    le_error(l, st, "creating the Lease");
    return LE_ERROR;
}

/* client-go's tryAcquireOrRenew: one attempt, all requests done by deadline. */
static le_outcome le_try(ks_leader *l, int64_t deadline)
{
    ks_status st;
    ks_leader_record rec;
    ks_leader_action act;
    ks_kube_response resp = {.retry_after_s = -1};

    /* Fast path: a leader writes over the Lease it wrote last, without a read.
     * A 409 means the Lease changed: read it and decide. */
    if (atomic_load(&l->leading) && l->last_lease != NULL && l->obs.have &&
        strcmp(l->obs.rec.holder, l->identity) == 0) {
        st = ks_leader_next_record(&l->obs, KS_LEADER_RENEW, l->identity, l->lease_s, wall_us(),
                                   &rec);
        if (st == KS_OK)
            st = le_write(l, l->last_lease, &rec, deadline, &resp);
        ks_kube_response_clear(&resp);
        if (st == KS_OK) {
            l->last_err[0] = '\0';
            return LE_HELD;
        }
        if (st != KS_ERR_CONFLICT && st != KS_ERR_NOT_FOUND) {
            le_error(l, st, "renewing the Lease");
            return LE_ERROR;
        }
        ks_info("leader election %s: the Lease %s since our last renewal; reading it",
                l->lease_id, st == KS_ERR_CONFLICT ? "changed" : "was deleted");
    }

    st = le_read(l, deadline);
    if (st == KS_ERR_NOT_FOUND)
        return le_create(l, deadline);
    if (st != KS_OK) {
        le_error(l, st, "reading the Lease");
        return LE_ERROR;
    }
    act = ks_leader_decide(&l->obs, l->identity, mono_ms());
    if (act == KS_LEADER_WAIT) {
        l->last_err[0] = '\0';
        return LE_OTHER;
    }
    if ((st = ks_leader_next_record(&l->obs, act, l->identity, l->lease_s, wall_us(), &rec)) !=
        KS_OK) {
        le_error(l, st, "building the Lease");
        return LE_ERROR;
    }
    st = le_write(l, l->last_lease, &rec, deadline, &resp);
    ks_kube_response_clear(&resp);
    if (st == KS_OK) {
        l->last_err[0] = '\0';
        return LE_HELD;
    }
    if (st == KS_ERR_CONFLICT) {
        /* someone else wrote first: re-read so the new holder is observed */
        ks_info("leader election %s: lost a race to %s the Lease (409)", l->lease_id,
                ks_leader_action_name(act));
        if ((st = le_read(l, deadline)) != KS_OK) {
            le_error(l, st, "re-reading the Lease");
            return LE_ERROR;
        }
        return strcmp(l->obs.rec.holder, l->identity) == 0 ? LE_ERROR : LE_OTHER;
    }
    le_error(l, st, act == KS_LEADER_RENEW ? "renewing the Lease" : "acquiring the Lease");
    return LE_ERROR;
}

static void le_start_leading(ks_leader *l)
{
    atomic_store(&l->leading, 1);
    ks_metric_inc(l->m_leader);
    ks_metric_inc(l->m_to_leader);
    ks_info("leader election %s: %s started leading", l->lease_id, l->identity);
    if (l->on_started)
        l->on_started(l->arg);
}

static void le_stop_leading(ks_leader *l, const char *reason)
{
    atomic_store(&l->leading, 0);
    ks_metric_dec(l->m_leader);
    ks_metric_inc(l->m_to_standby);
    ks_info("leader election %s: %s stopped leading: %s", l->lease_id, l->identity, reason);
    if (l->on_stopped)
        l->on_stopped(l->arg);
}

/* Write holder "" with leaseDurationSeconds 1 over the Lease we wrote last. */
static void le_release(ks_leader *l)
{
    ks_leader_record rec;
    ks_kube_response resp;
    ks_status st;

    if (l->last_lease == NULL || !l->obs.have || strcmp(l->obs.rec.holder, l->identity) != 0)
        return;
    if ((st = ks_leader_release_record(&l->obs.rec, wall_us(), &rec)) != KS_OK) {
        le_error(l, st, "building the release");
        return;
    }
    st = le_write(l, l->last_lease, &rec, mono_ms() + l->renew_ms, &resp);
    ks_kube_response_clear(&resp);
    if (st == KS_OK)
        ks_info("leader election %s: released the Lease", l->lease_id);
    else if (st == KS_ERR_CONFLICT)
        ks_info("leader election %s: not released: the Lease changed meanwhile", l->lease_id);
    else
        le_error(l, st, "releasing the Lease");
}

static void *le_main(void *arg)
{
    ks_leader *l = arg;
    le_outcome o;
    int64_t t0, wait_ms;

    while (!le_stopping(l)) {
        t0 = mono_ms();
        if (!atomic_load(&l->leading)) {
            o = le_try(l, t0 + l->renew_ms);
            if (o == LE_HELD) {
                l->last_renew_ms = t0;
                le_start_leading(l);
                wait_ms = l->retry_ms;
            } else {
                wait_ms = le_jittered(l);
            }
        } else {
            /* t0 is taken before the renewal is sent: the deadline counts from a
             * moment no standby can have observed the renewal before */
            int64_t deadline = l->last_renew_ms + l->renew_ms;
            o = deadline > t0 ? le_try(l, deadline) : LE_ERROR;
            if (o == LE_HELD) {
                l->last_renew_ms = t0;
                wait_ms = l->retry_ms;
            } else if (o == LE_OTHER) {
                char why[KS_LEADER_IDENTITY_MAX + 64];
                snprintf(why, sizeof(why), "the Lease is held by \"%s\"", l->obs.rec.holder);
                le_stop_leading(l, why);
                wait_ms = le_jittered(l);
            } else if (mono_ms() >= deadline) {
                le_stop_leading(l, "no successful renewal within the renew deadline");
                wait_ms = le_jittered(l);
            } else {
                wait_ms = deadline - mono_ms();
                if (wait_ms > l->retry_ms)
                    wait_ms = l->retry_ms;
            }
        }
        le_sleep(l, wait_ms);
    }
    if (atomic_load(&l->leading)) {
        /* the caller's work stops first; only then may a standby take over */
        le_stop_leading(l, "stopping");
        if (l->release_on_cancel)
            le_release(l);
    }
    return NULL;
}

/* ---- lifecycle ---- */

static void le_free(ks_leader *l)
{
    if (l == NULL)
        return;
    json_decref(l->last_lease);
    pthread_cond_destroy(&l->cv);
    pthread_mutex_destroy(&l->mu);
    free(l);
}

ks_status ks_leader_start(ks_kube_client *kube, const ks_leader_config *cfg, ks_leader **out)
{
    ks_status st = KS_ERR_INVALID;
    ks_leader *l = NULL;
    pthread_condattr_t ca;
    int sync_ok = 0;
    const char *ns, *name;
    char labels[KS_METRICS_LABELS_MAX], tlabels[KS_METRICS_LABELS_MAX];

    if (kube == NULL || cfg == NULL || out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "leader: NULL argument");
        goto out;
    }
    ns = cfg->lease_namespace ? cfg->lease_namespace : KS_LEADER_DEFAULT_NAMESPACE;
    name = cfg->name ? cfg->name : KS_LEADER_DEFAULT_NAME;
    if (!dns_label_ok(ns, LE_NS_MAX)) {
        st = KS_FAIL(KS_ERR_INVALID, "leader: namespace is not a DNS-1123 label");
        goto out;
    }
    if (!dns_subdomain_ok(name)) {
        st = KS_FAIL(KS_ERR_INVALID, "leader: Lease name is not a DNS-1123 subdomain");
        goto out;
    }
    if (cfg->identity != NULL && !identity_ok(cfg->identity)) {
        st = KS_FAIL(KS_ERR_INVALID, "leader: identity must be 1..%d bytes of UTF-8 without "
                                     "control characters", KS_LEADER_IDENTITY_MAX);
        goto out;
    }
    if ((l = calloc(1, sizeof(*l))) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "leader: out of memory");
        goto out;
    }
    l->lease_ms = cfg->lease_duration_ms ? cfg->lease_duration_ms : KS_LEADER_DEFAULT_LEASE_MS;
    l->renew_ms = cfg->renew_deadline_ms ? cfg->renew_deadline_ms : KS_LEADER_DEFAULT_RENEW_MS;
    l->retry_ms = cfg->retry_period_ms ? cfg->retry_period_ms : KS_LEADER_DEFAULT_RETRY_MS;
    if (l->retry_ms <= 0 || l->renew_ms <= l->retry_ms || l->lease_ms <= l->renew_ms ||
        l->lease_ms > KS_LEADER_MAX_DURATION_MS) {
        st = KS_FAIL(KS_ERR_INVALID,
                     "leader: timings must satisfy lease duration (%lld ms) > renew deadline "
                     "(%lld ms) > retry period (%lld ms) > 0, lease at most %lld ms",
                     (long long)l->lease_ms, (long long)l->renew_ms, (long long)l->retry_ms,
                     (long long)KS_LEADER_MAX_DURATION_MS);
        goto out;
    }
    l->lease_s = (int32_t)((l->lease_ms + 999) / 1000);
    l->kube = kube;
    memcpy(l->ns, ns, strlen(ns) + 1);
    memcpy(l->name, name, strlen(name) + 1);
    snprintf(l->lease_id, sizeof(l->lease_id), "%s/%s", ns, name);
    snprintf(l->coll_path, sizeof(l->coll_path),
             "/apis/coordination.k8s.io/v1/namespaces/%s/leases", ns);
    snprintf(l->obj_path, sizeof(l->obj_path),
             "/apis/coordination.k8s.io/v1/namespaces/%s/leases/%s", ns, name);
    if (cfg->identity != NULL)
        memcpy(l->identity, cfg->identity, strlen(cfg->identity) + 1);
    else
        default_identity(l->identity, sizeof(l->identity));
    l->release_on_cancel = cfg->release_on_cancel;
    l->on_started = cfg->on_started_leading;
    l->on_stopped = cfg->on_stopped_leading;
    l->on_new_leader = cfg->on_new_leader;
    l->arg = cfg->arg;
    l->rng = random_u64();
    atomic_init(&l->leading, 0);

    labels[0] = '\0';
    if ((st = ks_metrics_label_append(labels, sizeof(labels), "lease", l->lease_id)) != KS_OK)
        goto out;
    l->m_leader = ks_metrics_gauge("ks_leader_is_leader",
                                   "Electors of this process that lead the Lease", labels);
    l->m_errors = ks_metrics_counter("ks_leader_errors_total",
                                     "Failed reads and writes of the Lease", labels);
    memcpy(tlabels, labels, sizeof(labels));
    if ((st = ks_metrics_label_append(tlabels, sizeof(tlabels), "to", "leader")) != KS_OK)
        goto out;
    l->m_to_leader = ks_metrics_counter("ks_leader_transitions_total",
                                        "Electors of this process starting or stopping to lead",
                                        tlabels);
    memcpy(tlabels, labels, sizeof(labels));
    if ((st = ks_metrics_label_append(tlabels, sizeof(tlabels), "to", "standby")) != KS_OK)
        goto out;
    l->m_to_standby = ks_metrics_counter("ks_leader_transitions_total", NULL, tlabels);

    st = KS_ERR_INTERNAL;
    if (pthread_condattr_init(&ca) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "leader: pthread_condattr_init failed");
        goto out;
    }
    if (pthread_condattr_setclock(&ca, CLOCK_MONOTONIC) == 0 &&
        pthread_cond_init(&l->cv, &ca) == 0) {
        if (pthread_mutex_init(&l->mu, NULL) == 0)
            sync_ok = 1;
        else
            pthread_cond_destroy(&l->cv);
    }
    pthread_condattr_destroy(&ca);
    if (!sync_ok) {
        st = KS_FAIL(KS_ERR_INTERNAL, "leader: cannot initialize the mutex or condition");
        goto out;
    }
    if (pthread_create(&l->thread, NULL, le_main, l) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "leader: cannot start the elector thread");
        goto out;
    }
    ks_info("leader election %s: %s standing by (lease %lld ms, renew deadline %lld ms, retry "
            "%lld ms)",
            l->lease_id, l->identity, (long long)l->lease_ms, (long long)l->renew_ms,
            (long long)l->retry_ms);
    *out = l;
    l = NULL;
    st = KS_OK;
out:
    if (l != NULL) {
        if (sync_ok)
            le_free(l);
        else
            free(l);
    }
    return st;
}

int ks_leader_is_leader(const ks_leader *l)
{
    return l != NULL && atomic_load(&((ks_leader *)l)->leading);
}

const char *ks_leader_identity(const ks_leader *l)
{
    return l ? l->identity : NULL;
}

ks_status ks_leader_current(ks_leader *l, char *buf, size_t cap)
{
    ks_status st = KS_ERR_INVALID;
    size_t len;

    if (l == NULL || buf == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "leader current: NULL argument");
        goto out;
    }
    pthread_mutex_lock(&l->mu);
    if (!l->have_current || l->current[0] == '\0') {
        st = KS_ERR_NOT_FOUND;
    } else if ((len = strlen(l->current)) >= cap) {
        st = KS_ERR_TOO_LARGE;
    } else {
        memcpy(buf, l->current, len + 1);
        st = KS_OK;
    }
    pthread_mutex_unlock(&l->mu);
out:
    return st;
}

void ks_leader_stop(ks_leader *l)
{
    if (l == NULL)
        return;
    pthread_mutex_lock(&l->mu);
    l->stopping = 1;
    pthread_cond_broadcast(&l->cv);
    pthread_mutex_unlock(&l->mu);
    pthread_join(l->thread, NULL);
    ks_info("leader election %s: %s stopped", l->lease_id, l->identity);
    le_free(l);
}
