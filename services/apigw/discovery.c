/* discovery.c: the group-to-subject table, built from what services announce
 * in their $SRV.INFO metadata (discovery.h has the rules). */
#include "discovery.h"

#include <jansson.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "metrics.h"
#include "subject.h"
#include "uuid.h"

#define DISC_MISSES_MAX 3     /* INFO scans an instance may miss before it is forgotten */
#define DISC_MAX_REPLIES 1024 /* replies gathered by one scan */

typedef struct {
    char group[254];
    char version[64];
    char prefix[GW_DISCOVERY_MAX_PREFIX][128];
    size_t nprefix;
    char subject[GW_DISCOVERY_SUBJECT_MAX];
} route;

typedef struct {
    char id[64];
    char name[64];
    char *value;
    int misses;
    int seen;       /* in the scan being processed */
} instance;

typedef struct {
    char *data;
    size_t len;
} disc_reply;

struct gw_discovery {
    ks_bus *bus;
    gw_discovery_opts opts;

    pthread_rwlock_t rw;        /* routes */
    route *routes;
    size_t nroutes;

    pthread_mutex_t mu;         /* instances, gather, flags */
    pthread_cond_t cond;
    instance *inst;
    size_t ninst;
    disc_reply *gather;
    size_t ngather;
    unsigned long seq;          /* the scan whose replies are gathered */
    unsigned long scans;
    int kick;
    int running;

    char inbox[64];
    ks_bus_sub *sub;
    pthread_t thread;
    int has_thread;

    ks_metric *m_routes;
    ks_metric *m_instances;
};

/* ---- parsing ---- */

static int seg_ok(const char *s, size_t n)
{
    if (n == 0 || n >= 128 || (n == 1 && s[0] == '.') || (n == 2 && s[0] == '.' && s[1] == '.'))
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '.' || c == '_' || c == '~' || c == '-'))
            return 0;
    }
    return 1;
}

static int group_ok(const char *s, size_t n)
{
    size_t label = 0;

    if (n == 0 || n > 253)
        return 0;
    for (size_t i = 0; i < n; i++) {
        char c = s[i];
        if (c == '.') {
            if (label == 0)
                return 0;
            label = 0;
        } else if ((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-') {
            label++;
        } else {
            return 0;
        }
    }
    return label > 0;
}

static int version_ok(const char *s, size_t n)
{
    if (n == 0 || n > 63)
        return 0;
    for (size_t i = 0; i < n; i++)
        if (!((s[i] >= 'a' && s[i] <= 'z') || (s[i] >= '0' && s[i] <= '9')))
            return 0;
    return 1;
}

ks_status gw_discovery_parse_entry(const char *text, size_t len, char group[254],
                                   char version[64], char prefix[][128], size_t *nprefix)
{
    const char *segs[GW_DISCOVERY_MAX_PREFIX + 2];
    size_t lens[GW_DISCOVERY_MAX_PREFIX + 2];
    size_t n = 0, start = 0;

    for (size_t i = 0; i <= len; i++) {
        if (i < len && text[i] != '/')
            continue;
        if (n == GW_DISCOVERY_MAX_PREFIX + 2)
            return KS_FAIL(KS_ERR_INVALID, "more than %d prefix segments",
                           GW_DISCOVERY_MAX_PREFIX);
        segs[n] = text + start;
        lens[n] = i - start;
        n++;
        start = i + 1;
    }
    if (n < 2 || !group_ok(segs[0], lens[0]))
        return KS_FAIL(KS_ERR_INVALID, "not <group>/<version>[/<prefix>]: bad group");
    if (!version_ok(segs[1], lens[1]))
        return KS_FAIL(KS_ERR_INVALID, "not <group>/<version>[/<prefix>]: bad version");
    for (size_t i = 2; i < n; i++)
        if (!seg_ok(segs[i], lens[i]))
            return KS_FAIL(KS_ERR_INVALID, "bad prefix segment %zu", i - 1);
    memcpy(group, segs[0], lens[0]);
    group[lens[0]] = '\0';
    memcpy(version, segs[1], lens[1]);
    version[lens[1]] = '\0';
    for (size_t i = 2; i < n; i++) {
        memcpy(prefix[i - 2], segs[i], lens[i]);
        prefix[i - 2][lens[i]] = '\0';
    }
    *nprefix = n - 2;
    return KS_OK;
}

/* ks.api.<group>.<version>[.<seg>...] */
static ks_status route_subject(const char *group, const char *version, char prefix[][128],
                               size_t nprefix, char *out, size_t cap)
{
    size_t used;
    ks_status st = ks_subject_api(group, version, out, cap);

    if (st)
        return st;
    used = strlen(out);
    for (size_t i = 0; i < nprefix; i++) {
        char tok[KS_SUBJECT_ESCAPED_MAX(128)];
        if ((st = ks_subject_escape_token(prefix[i], tok, sizeof(tok))))
            return st;
        if (used + 1 + strlen(tok) + 1 > cap)
            return KS_FAIL(KS_ERR_TOO_LARGE, "subject");
        out[used++] = '.';
        memcpy(out + used, tok, strlen(tok) + 1);
        used += strlen(tok);
    }
    return KS_OK;
}

/* ---- the table ---- */

static int same_route(const route *a, const route *b)
{
    return strcmp(a->subject, b->subject) == 0;
}

/* Rebuild the routes from the instances; the caller holds d->mu. */
static void rebuild_locked(gw_discovery *d)
{
    route *nr = NULL;
    size_t n = 0, cap = 0;
    route *old;

    for (size_t i = 0; i < d->ninst; i++) {
        const char *v = d->inst[i].value;
        size_t vlen = v ? strlen(v) : 0, start = 0;

        for (size_t j = 0; j <= vlen; j++) {
            route r;
            int dup = 0;

            if (j < vlen && v[j] != ',')
                continue;
            if (j == start) {
                start = j + 1;
                continue;
            }
            memset(&r, 0, sizeof(r));
            if (gw_discovery_parse_entry(v + start, j - start, r.group, r.version, r.prefix,
                                         &r.nprefix) != KS_OK ||
                route_subject(r.group, r.version, r.prefix, r.nprefix, r.subject,
                              sizeof(r.subject)) != KS_OK) {
                ks_warn("discovery: %s (%s) announces an entry that does not parse (%.*s): %s",
                        d->inst[i].name, d->inst[i].id, (int)(j - start < 200 ? j - start : 200),
                        v + start, ks_status_last());
                start = j + 1;
                continue;
            }
            start = j + 1;
            for (size_t k = 0; k < n && !dup; k++)
                dup = same_route(&nr[k], &r);
            if (dup)
                continue;
            if (n == GW_DISCOVERY_MAX_ROUTES) {
                ks_warn("discovery: more than %d routes; ignoring the rest",
                        GW_DISCOVERY_MAX_ROUTES);
                break;
            }
            if (n == cap) {
                size_t ncap = cap ? cap * 2 : 8;
                route *g = realloc(nr, ncap * sizeof(*nr));
                if (g == NULL) {
                    ks_error("discovery: out of memory; the table keeps %zu routes", n);
                    break;
                }
                nr = g;
                cap = ncap;
            }
            nr[n++] = r;
        }
    }
    pthread_rwlock_wrlock(&d->rw);
    old = d->routes;
    d->routes = nr;
    d->nroutes = n;
    pthread_rwlock_unlock(&d->rw);
    free(old);
    ks_metric_set(d->m_routes, (double)n);
    ks_metric_set(d->m_instances, (double)d->ninst);
}

static instance *find_instance(gw_discovery *d, const char *id)
{
    for (size_t i = 0; i < d->ninst; i++)
        if (strcmp(d->inst[i].id, id) == 0)
            return &d->inst[i];
    return NULL;
}

/* Record one announcement; returns 1 if the table must be rebuilt. Caller
 * holds d->mu. */
static int announce_locked(gw_discovery *d, const char *id, const char *name, const char *value)
{
    instance *in = find_instance(d, id);
    const char *v = value ? value : "";

    if (in != NULL) {
        in->seen = 1;
        in->misses = 0;
        if (strcmp(in->value ? in->value : "", v) == 0)
            return 0;
        ks_info("discovery: %s (%s) now announces \"%s\"", in->name, id, v);
        free(in->value);
        in->value = strdup(v);
        return 1;
    }
    if (d->ninst == GW_DISCOVERY_MAX_INSTANCES) {
        ks_warn("discovery: more than %d service instances; ignoring %s (%s)",
                GW_DISCOVERY_MAX_INSTANCES, name, id);
        return 0;
    }
    in = &d->inst[d->ninst];
    memset(in, 0, sizeof(*in));
    snprintf(in->id, sizeof(in->id), "%s", id);
    snprintf(in->name, sizeof(in->name), "%s", name ? name : "");
    in->value = strdup(v);
    in->seen = 1;
    d->ninst++;
    if (v[0] != '\0')
        ks_info("discovery: %s (%s) announces \"%s\"", in->name, id, v);
    return v[0] != '\0';
}

static int forget_locked(gw_discovery *d, size_t i)
{
    int had = d->inst[i].value && d->inst[i].value[0];

    if (had)
        ks_info("discovery: %s (%s) is gone", d->inst[i].name, d->inst[i].id);
    free(d->inst[i].value);
    d->inst[i] = d->inst[d->ninst - 1];
    d->ninst--;
    return had;
}

void gw_discovery_announce(gw_discovery *d, const char *id, const char *name, const char *value)
{
    pthread_mutex_lock(&d->mu);
    if (announce_locked(d, id, name, value))
        rebuild_locked(d);
    pthread_mutex_unlock(&d->mu);
}

void gw_discovery_forget(gw_discovery *d, const char *id)
{
    pthread_mutex_lock(&d->mu);
    for (size_t i = 0; i < d->ninst; i++)
        if (strcmp(d->inst[i].id, id) == 0) {
            forget_locked(d, i);
            rebuild_locked(d);
            break;
        }
    pthread_mutex_unlock(&d->mu);
}

ks_status gw_discovery_resolve(gw_discovery *d, const char *group, const char *version,
                               const char *const *rest, size_t nrest, char *subject, size_t cap,
                               int *announced)
{
    const route *best = NULL;
    ks_status st = KS_OK;

    if (version == NULL || version[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "no API version");
    pthread_rwlock_rdlock(&d->rw);
    for (size_t i = 0; i < d->nroutes; i++) {
        const route *r = &d->routes[i];
        size_t k;
        if (r->nprefix > nrest || strcmp(r->group, group) != 0 ||
            strcmp(r->version, version) != 0)
            continue;
        for (k = 0; k < r->nprefix && strcmp(r->prefix[k], rest[k]) == 0; k++)
            ;
        if (k == r->nprefix && (best == NULL || r->nprefix > best->nprefix))
            best = r;
    }
    if (best != NULL) {
        if (strlen(best->subject) >= cap)
            st = KS_FAIL(KS_ERR_TOO_LARGE, "subject");
        else
            memcpy(subject, best->subject, strlen(best->subject) + 1);
    }
    pthread_rwlock_unlock(&d->rw);
    if (best == NULL && st == KS_OK)
        st = ks_subject_api(group, version, subject, cap);
    if (st == KS_OK && announced != NULL)
        *announced = best != NULL;
    return st;
}

size_t gw_discovery_routes(gw_discovery *d)
{
    size_t n;

    pthread_rwlock_rdlock(&d->rw);
    n = d->nroutes;
    pthread_rwlock_unlock(&d->rw);
    return n;
}

unsigned long gw_discovery_scans(gw_discovery *d)
{
    unsigned long n;

    pthread_mutex_lock(&d->mu);
    n = d->scans;
    pthread_mutex_unlock(&d->mu);
    return n;
}

void gw_discovery_kick(gw_discovery *d)
{
    pthread_mutex_lock(&d->mu);
    d->kick = 1;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
}

/* ---- scans ---- */

static void on_reply(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    gw_discovery *d = arg;
    const char *subject = ks_bus_msg_subject(msg);
    const char *tok = strrchr(subject, '.');
    size_t len = ks_bus_msg_len(msg);
    char *end;
    unsigned long seq;

    if (tok == NULL || len == 0 || len > GW_DISCOVERY_REPLY_MAX)
        goto out;
    seq = strtoul(tok + 1, &end, 10);
    if (*end != '\0')
        goto out;
    pthread_mutex_lock(&d->mu);
    if (seq == d->seq && d->ngather < DISC_MAX_REPLIES) {
        char *copy = malloc(len);
        if (copy != NULL) {
            memcpy(copy, ks_bus_msg_data(msg), len);
            d->gather[d->ngather].data = copy;
            d->gather[d->ngather].len = len;
            d->ngather++;
        }
    }
    pthread_mutex_unlock(&d->mu);
out:
    ks_bus_msg_destroy(msg);
}

static int64_t mono_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* Wait on d->cond (d->mu held) until the monotonic instant `until`, a kick
 * (when wake_on_kick) or the stop. */
static void wait_until(gw_discovery *d, int64_t until, int wake_on_kick)
{
    while (d->running && !(wake_on_kick && d->kick)) {
        int64_t left = until - mono_ms();
        struct timespec ts;
        if (left <= 0)
            break;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += left / 1000;
        ts.tv_nsec += (left % 1000) * 1000000L;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_cond_timedwait(&d->cond, &d->mu, &ts);
    }
}

/* Send one $SRV.<verb> request and gather the replies for the window.
 * Caller holds d->mu; returns with it held, the replies in d->gather. */
static ks_status scan_locked(gw_discovery *d, const char *verb)
{
    char subject[32], reply_to[96];
    ks_status st;

    for (size_t i = 0; i < d->ngather; i++)
        free(d->gather[i].data);
    d->ngather = 0;
    d->seq++;
    snprintf(subject, sizeof(subject), "$SRV.%s", verb);
    snprintf(reply_to, sizeof(reply_to), "%s.%lu", d->inbox, d->seq);
    pthread_mutex_unlock(&d->mu);
    st = ks_bus_publish_reply(d->bus, subject, reply_to, "", 0);
    if (st == KS_OK)
        st = ks_bus_flush(d->bus, d->opts.window_ms);
    pthread_mutex_lock(&d->mu);
    if (st == KS_OK)
        wait_until(d, mono_ms() + d->opts.window_ms, 0);
    d->seq++; /* late replies are dropped */
    return st;
}

/* id, name and "ks.api.groups" of one reply; 0 if it is not a micro reply. */
static int reply_fields(const disc_reply *rp, char id[64], char name[64], char **value)
{
    json_error_t err;
    json_t *o = json_loadb(rp->data, rp->len, 0, &err);
    const char *i, *n, *v;
    int ok = 0;

    if (o == NULL)
        return 0;
    i = json_string_value(json_object_get(o, "id"));
    n = json_string_value(json_object_get(o, "name"));
    v = json_string_value(json_object_get(json_object_get(o, "metadata"), GW_DISCOVERY_KEY));
    if (i != NULL && i[0] != '\0' && strlen(i) < 64) {
        snprintf(id, 64, "%s", i);
        snprintf(name, 64, "%s", n ? n : "");
        *value = v && strlen(v) <= GW_DISCOVERY_VALUE_MAX ? strdup(v) : NULL;
        if (v && strlen(v) > GW_DISCOVERY_VALUE_MAX)
            ks_warn("discovery: %s (%s) announces more than %d bytes; ignored", name, id,
                    GW_DISCOVERY_VALUE_MAX);
        ok = 1;
    }
    json_decref(o);
    return ok;
}

/* A full INFO scan: the instances that answered, and forget those that
 * missed too many scans. Caller holds d->mu. */
static void info_scan_locked(gw_discovery *d)
{
    int changed = 0;

    if (scan_locked(d, "INFO") != KS_OK)
        return;
    for (size_t i = 0; i < d->ninst; i++)
        d->inst[i].seen = 0;
    for (size_t i = 0; i < d->ngather; i++) {
        char id[64], name[64], *value = NULL;
        if (reply_fields(&d->gather[i], id, name, &value))
            changed |= announce_locked(d, id, name, value);
        free(value);
    }
    for (size_t i = 0; i < d->ninst;) {
        if (!d->inst[i].seen && ++d->inst[i].misses >= DISC_MISSES_MAX) {
            changed |= forget_locked(d, i);
            continue;
        }
        i++;
    }
    if (changed)
        rebuild_locked(d);
    else
        ks_metric_set(d->m_instances, (double)d->ninst);
    d->scans++;
}

/* A PING scan: 1 when an instance answered that the table does not know. */
static int ping_finds_new_locked(gw_discovery *d)
{
    int found = 0;

    if (scan_locked(d, "PING") != KS_OK)
        return 0;
    for (size_t i = 0; i < d->ngather && !found; i++) {
        char id[64], name[64], *value = NULL;
        if (reply_fields(&d->gather[i], id, name, &value))
            found = find_instance(d, id) == NULL;
        free(value);
    }
    return found;
}

static void *discovery_main(void *arg)
{
    gw_discovery *d = arg;
    int64_t next_info = 0, next_ping = 0;
    int was_connected = 0;

    pthread_mutex_lock(&d->mu);
    while (d->running) {
        int64_t now;

        wait_until(d, next_info < next_ping ? next_info : next_ping, 1);
        if (!d->running)
            break;
        now = mono_ms();
        if (!ks_bus_is_connected(d->bus)) {
            was_connected = 0;
            next_ping = now + 250;
            next_info = next_ping;
            continue;
        }
        if (!was_connected || d->kick || now >= next_info) {
            was_connected = 1;
            d->kick = 0;
            info_scan_locked(d);
            now = mono_ms();
            next_info = now + d->opts.interval_ms;
            next_ping = now + d->opts.ping_ms;
        } else if (now >= next_ping) {
            if (ping_finds_new_locked(d)) {
                info_scan_locked(d);
                next_info = mono_ms() + d->opts.interval_ms;
            }
            next_ping = mono_ms() + d->opts.ping_ms;
        }
    }
    pthread_mutex_unlock(&d->mu);
    return NULL;
}

ks_status gw_discovery_create(ks_bus *bus, const gw_discovery_opts *opts, gw_discovery **out)
{
    gw_discovery *d = calloc(1, sizeof(*d));
    uint8_t id[16];
    char sub[96];
    ks_status st;

    if (d == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "discovery");
    d->bus = bus;
    d->opts.interval_ms = opts && opts->interval_ms > 0 ? opts->interval_ms : 5000;
    d->opts.ping_ms = opts && opts->ping_ms > 0 ? opts->ping_ms : 1000;
    d->opts.window_ms = opts && opts->window_ms > 0 ? opts->window_ms : 200;
    pthread_rwlock_init(&d->rw, NULL);
    pthread_mutex_init(&d->mu, NULL);
    pthread_cond_init(&d->cond, NULL);
    d->m_routes = ks_metrics_gauge("ks_gateway_discovery_routes",
                                   "API entries announced by services (ks.api.groups)", NULL);
    d->m_instances = ks_metrics_gauge("ks_gateway_discovery_instances",
                                      "service instances that answered $SRV.INFO", NULL);
    d->inst = calloc(GW_DISCOVERY_MAX_INSTANCES, sizeof(*d->inst));
    d->gather = calloc(DISC_MAX_REPLIES, sizeof(*d->gather));
    if (d->inst == NULL || d->gather == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "discovery");
        goto fail;
    }
    d->running = 1;
    if (bus == NULL) {
        *out = d;
        return KS_OK;
    }
    if ((st = ks_uuid_v4_bytes(id)))
        goto fail;
    snprintf(d->inbox, sizeof(d->inbox), "_INBOX.");
    for (int i = 0; i < 16; i++)
        snprintf(d->inbox + strlen(d->inbox), 3, "%02x", id[i]);
    snprintf(sub, sizeof(sub), "%s.*", d->inbox);
    if ((st = ks_bus_subscribe(bus, sub, NULL, on_reply, d, &d->sub)))
        goto fail;
    if (pthread_create(&d->thread, NULL, discovery_main, d) != 0) {
        st = KS_FAIL(KS_ERR_INTERNAL, "cannot start the discovery thread");
        goto fail;
    }
    d->has_thread = 1;
    *out = d;
    return KS_OK;
fail:
    d->running = 0;
    gw_discovery_destroy(d);
    return st;
}

void gw_discovery_destroy(gw_discovery *d)
{
    if (d == NULL)
        return;
    pthread_mutex_lock(&d->mu);
    d->running = 0;
    pthread_cond_broadcast(&d->cond);
    pthread_mutex_unlock(&d->mu);
    if (d->has_thread)
        pthread_join(d->thread, NULL);
    ks_bus_unsubscribe(d->sub);
    for (size_t i = 0; d->gather && i < d->ngather; i++)
        free(d->gather[i].data);
    for (size_t i = 0; d->inst && i < d->ninst; i++)
        free(d->inst[i].value);
    free(d->gather);
    free(d->inst);
    free(d->routes);
    pthread_cond_destroy(&d->cond);
    pthread_mutex_destroy(&d->mu);
    pthread_rwlock_destroy(&d->rw);
    free(d);
}
