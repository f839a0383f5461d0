#include "micro.h"

#include <jansson.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"

#define MICRO_MAX_ENDPOINTS 32
#define MICRO_ID_LEN 22

typedef struct {
    ks_micro *owner;
    char *name;
    char *subject;
    char *queue;
    ks_micro_handler handler;
    void *arg;
    ks_bus_sub *sub;
    /* stats, under owner->mu */
    int64_t num_requests;
    int64_t num_errors;
    int64_t processing_ns;
    char last_error[256];
} micro_endpoint;

struct ks_micro {
    ks_bus *bus;
    char *name, *version, *description;
    char id[MICRO_ID_LEN + 1];
    char started[40];
    json_t *metadata;
    pthread_mutex_t mu;
    pthread_mutex_t add_mu;  /* serializes ks_micro_add_endpoint: a slot is
                                filled outside mu, before nendpoints counts it */
    micro_endpoint endpoints[MICRO_MAX_ENDPOINTS];
    size_t nendpoints;
    ks_bus_sub *srv_subs[3];
};

static int valid_name(const char *s)
{
    if (s == NULL || *s == '\0')
        return 0;
    for (; *s; s++) {
        char c = *s;
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '_' || c == '-'))
            return 0;
    }
    return 1;
}

static void make_id(char *out)
{
    static const char alphabet[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    unsigned char rnd[MICRO_ID_LEN];

    if (getrandom(rnd, sizeof(rnd), 0) != (ssize_t)sizeof(rnd)) {
        /* getrandom on Linux does not fail for 22 bytes; keep a fallback */
        uint64_t t = (uint64_t)time(NULL) ^ (uint64_t)(uintptr_t)out;
        for (size_t i = 0; i < sizeof(rnd); i++, t = t * 6364136223846793005ULL + 1)
            rnd[i] = (unsigned char)(t >> 33);
    }
    for (size_t i = 0; i < MICRO_ID_LEN; i++)
        out[i] = alphabet[rnd[i] % (sizeof(alphabet) - 1)];
    out[MICRO_ID_LEN] = '\0';
}

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static json_t *base_object(ks_micro *m, const char *type)
{
    json_t *o = json_object();
    if (o == NULL)
        return NULL;
    json_object_set_new(o, "type", json_string(type));
    json_object_set_new(o, "name", json_string(m->name));
    json_object_set_new(o, "id", json_string(m->id));
    json_object_set_new(o, "version", json_string(m->version));
    json_object_set(o, "metadata", m->metadata);
    return o;
}

static char *dump_and_free(json_t *o)
{
    char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;
    json_decref(o);
    return s;
}

char *ks_micro_ping_json(ks_micro *m)
{
    return dump_and_free(base_object(m, "io.nats.micro.v1.ping_response"));
}

char *ks_micro_info_json(ks_micro *m)
{
    json_t *o = base_object(m, "io.nats.micro.v1.info_response");
    json_t *eps = json_array();

    if (o == NULL || eps == NULL) {
        json_decref(o);
        json_decref(eps);
        return NULL;
    }
    json_object_set_new(o, "description", json_string(m->description));
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nendpoints; i++) {
        micro_endpoint *e = &m->endpoints[i];
        json_array_append_new(eps, json_pack("{s:s, s:s, s:s, s:o}", "name", e->name, "subject",
                                             e->subject, "queue_group", e->queue, "metadata",
                                             json_object()));
    }
    pthread_mutex_unlock(&m->mu);
    json_object_set_new(o, "endpoints", eps);
    return dump_and_free(o);
}

char *ks_micro_stats_json(ks_micro *m)
{
    json_t *o = base_object(m, "io.nats.micro.v1.stats_response");
    json_t *eps = json_array();

    if (o == NULL || eps == NULL) {
        json_decref(o);
        json_decref(eps);
        return NULL;
    }
    json_object_set_new(o, "started", json_string(m->started));
    pthread_mutex_lock(&m->mu);
    for (size_t i = 0; i < m->nendpoints; i++) {
        micro_endpoint *e = &m->endpoints[i];
        int64_t avg = e->num_requests > 0 ? e->processing_ns / e->num_requests : 0;
        json_array_append_new(eps, json_pack("{s:s, s:s, s:s, s:I, s:I, s:s, s:I, s:I}",
                                             "name", e->name, "subject", e->subject,
                                             "queue_group", e->queue,
                                             "num_requests", (json_int_t)e->num_requests,
                                             "num_errors", (json_int_t)e->num_errors,
                                             "last_error", e->last_error,
                                             "processing_time", (json_int_t)e->processing_ns,
                                             "average_processing_time", (json_int_t)avg));
    }
    pthread_mutex_unlock(&m->mu);
    json_object_set_new(o, "endpoints", eps);
    return dump_and_free(o);
}

/* $SRV.<VERB>[.<name>[.<id>]] */
static void on_srv(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    ks_micro *m = arg;
    const char *subject = ks_bus_msg_subject(msg);
    const char *verb = subject + strlen("$SRV.");
    char *reply = NULL;

    if (strncmp(verb, "PING", 4) == 0 && (verb[4] == '\0' || verb[4] == '.'))
        reply = ks_micro_ping_json(m);
    else if (strncmp(verb, "INFO", 4) == 0 && (verb[4] == '\0' || verb[4] == '.'))
        reply = ks_micro_info_json(m);
    else if (strncmp(verb, "STATS", 5) == 0 && (verb[5] == '\0' || verb[5] == '.'))
        reply = ks_micro_stats_json(m);
    if (reply != NULL && ks_bus_msg_reply(msg) != NULL) {
        if (ks_bus_respond(bus, msg, reply, strlen(reply)) != KS_OK)
            ks_warn("micro: cannot answer %s: %s", subject, ks_status_last());
    }
    free(reply);
    ks_bus_msg_destroy(msg);
}

static void on_endpoint(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    micro_endpoint *e = arg;
    char err[256] = "";
    int64_t t0 = now_ns();
    int rc = e->handler(bus, msg, e->arg, err, sizeof(err));
    int64_t dt = now_ns() - t0;

    ks_bus_msg_destroy(msg);
    pthread_mutex_lock(&e->owner->mu);
    e->num_requests++;
    e->processing_ns += dt;
    if (rc != 0) {
        e->num_errors++;
        snprintf(e->last_error, sizeof(e->last_error), "%s", err);
    }
    pthread_mutex_unlock(&e->owner->mu);
}

ks_status ks_micro_create(ks_bus *bus, const ks_micro_cfg *cfg, ks_micro **out)
{
    ks_status st = KS_ERR_NOMEM;
    ks_micro *m;
    struct tm tm;
    time_t now = time(NULL);

    if (!valid_name(cfg->name))
        return KS_FAIL(KS_ERR_INVALID, "micro service name \"%s\" must match [A-Za-z0-9_-]+",
                       cfg->name ? cfg->name : "");
    m = calloc(1, sizeof(*m));
    if (m == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "micro");
    pthread_mutex_init(&m->mu, NULL);
    pthread_mutex_init(&m->add_mu, NULL);
    m->bus = bus;
    m->name = strdup(cfg->name);
    m->version = strdup(cfg->version ? cfg->version : "0.0.0");
    m->description = strdup(cfg->description ? cfg->description : "");
    m->metadata = json_object();
    if (!m->name || !m->version || !m->description || !m->metadata) {
        st = KS_FAIL(KS_ERR_NOMEM, "micro");
        goto out;
    }
    for (size_t i = 0; i < cfg->nmeta; i++)
        json_object_set_new(m->metadata, cfg->meta_keys[i], json_string(cfg->meta_values[i]));
    make_id(m->id);
    gmtime_r(&now, &tm);
    strftime(m->started, sizeof(m->started), "%Y-%m-%dT%H:%M:%SZ", &tm);

    /* $SRV.<VERB>, $SRV.<VERB>.<name>, $SRV.<VERB>.<name>.<id> */
    for (int i = 0; i < 3; i++) {
        char subject[256];
        if (i == 0)
            snprintf(subject, sizeof(subject), "$SRV.*");
        else if (i == 1)
            snprintf(subject, sizeof(subject), "$SRV.*.%s", m->name);
        else
            snprintf(subject, sizeof(subject), "$SRV.*.%s.%s", m->name, m->id);
        st = ks_bus_subscribe(bus, subject, NULL, on_srv, m, &m->srv_subs[i]);
        if (st)
            goto out;
    }
    *out = m;
    m = NULL;
    st = KS_OK;
out:
    ks_micro_destroy(m);
    return st;
}

ks_status ks_micro_add_endpoint(ks_micro *m, const char *name, const char *subject,
                                const char *queue, ks_micro_handler handler, void *arg)
{
    micro_endpoint *e;
    ks_status st;

    if (!valid_name(name))
        return KS_FAIL(KS_ERR_INVALID, "endpoint name \"%s\" must match [A-Za-z0-9_-]+", name);
    pthread_mutex_lock(&m->add_mu);
    pthread_mutex_lock(&m->mu);
    if (m->nendpoints == MICRO_MAX_ENDPOINTS) {
        pthread_mutex_unlock(&m->mu);
        pthread_mutex_unlock(&m->add_mu);
        return KS_FAIL(KS_ERR_TOO_LARGE, "more than %d endpoints", MICRO_MAX_ENDPOINTS);
    }
    e = &m->endpoints[m->nendpoints];
    memset(e, 0, sizeof(*e));
    e->owner = m;
    e->name = strdup(name);
    e->subject = strdup(subject);
    e->queue = strdup(queue ? queue : "q");
    e->handler = handler;
    e->arg = arg;
    pthread_mutex_unlock(&m->mu);
    if (!e->name || !e->subject || !e->queue) {
        st = KS_FAIL(KS_ERR_NOMEM, "endpoint");
        goto fail;
    }
    st = ks_bus_subscribe(m->bus, e->subject, e->queue, on_endpoint, e, &e->sub);
    if (st)
        goto fail;
    pthread_mutex_lock(&m->mu);
    m->nendpoints++;
    pthread_mutex_unlock(&m->mu);
    pthread_mutex_unlock(&m->add_mu);
    return KS_OK;
fail:
    free(e->name);
    free(e->subject);
    free(e->queue);
    memset(e, 0, sizeof(*e));
    pthread_mutex_unlock(&m->add_mu);
    return st;
}

const char *ks_micro_id(const ks_micro *m)
{
    return m->id;
}

void ks_micro_destroy(ks_micro *m)
{
    if (m == NULL)
        return;
    for (int i = 0; i < 3; i++)
        ks_bus_unsubscribe(m->srv_subs[i]);
    for (size_t i = 0; i < m->nendpoints; i++) {
        ks_bus_unsubscribe(m->endpoints[i].sub);
    }
    for (size_t i = 0; i < m->nendpoints; i++) {
        free(m->endpoints[i].name);
        free(m->endpoints[i].subject);
        free(m->endpoints[i].queue);
    }
    json_decref(m->metadata);
    free(m->name);
    free(m->version);
    free(m->description);
    pthread_mutex_destroy(&m->add_mu);
    pthread_mutex_destroy(&m->mu);
    free(m);
}
