/* Integration tests of lib/reflector.c (list+watch with a local store).
 *
 * Part 1, a fake kube-apiserver in this process (libmicrohttpd on
 * 127.0.0.1, a kernel-chosen port, plain HTTP; one thread per connection so
 * a watch may block). It serves one collection of "Widget" objects with
 * paged lists (limit/continue) and watches that stream the events after the
 * requested resourceVersion until timeoutSeconds, and it replays "plans":
 * scripted answers (any code, Retry-After, body chunks with pauses between
 * them, an abort) that the next matching request consumes. Resource versions
 * and continue tokens hold '/', '+' and '=' so that they are only right when
 * the reflector treats them as opaque and escapes them. Checked: paging,
 * bookmarks, events split across chunks, malformed JSON, garbage between
 * events, a stream truncated inside an event (clean end and aborted
 * connection), an unknown event type, objects without metadata, an event
 * over the size cap, an ERROR event with a 410 Status, HTTP 410 on a watch,
 * 410 on a continue page, 429/503 with Retry-After (the gap is measured at
 * the server), empty streams that end at once (backoff, no tight loop). In
 * each case the reflector counts what was bad, relists when it must, reports
 * exactly the differences and converges to the server's objects.
 *
 * Part 2, the real kube-apiserver of scripts/controlplane.sh (KS_KUBECONFIG;
 * skipped only when unset): ADDED/MODIFIED/DELETED in order for Users; short
 * watches (timeoutSeconds=2) restart from the last version without a relist;
 * an expired resourceVersion. kube-apiserver serves watches from its watch
 * cache, which etcd compaction alone does not touch, so the test makes the
 * version expire the way it happens in a cluster: the reflector is cut off
 * by an in-process TCP proxy, objects change, the CRD's spec changes (which
 * rebuilds its storage and watch cache), etcd is compacted
 * (KS_ETCD_URL), and the reflector, back online, watches from its old
 * version, gets 410, relists and reports what it missed.
 *
 * Every wait is a poll with a deadline. State the reflector threads write to
 * is static and each test stops its reflector in its teardown, so a failed
 * assertion (cmocka longjmps) leaves no thread writing into a dead frame. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <jansson.h>
#include <microhttpd.h>
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
#include "log.h"
#include "metrics.h"
#include "reflector.h"

#define WAIT_MS 10000
#define FK_GROUP "test.kscore.io"

/* ---- time ---- */

static long now_ms(void)
{
    struct timespec t;

    clock_gettime(CLOCK_MONOTONIC, &t);
    return (long)t.tv_sec * 1000 + t.tv_nsec / 1000000;
}

static void sleep_ms(long ms)
{
    struct timespec t = {ms / 1000, (ms % 1000) * 1000000L};

    while (nanosleep(&t, &t) != 0 && errno == EINTR)
        ;
}

/* Poll expr until it holds or ms pass; fail the test naming expr if not. */
#define AWAIT_TRUE(expr, ms)                                                      \
    do {                                                                          \
        long end_ = now_ms() + (ms);                                              \
        int ok_;                                                                  \
        while (!(ok_ = !!(expr)) && now_ms() < end_)                              \
            sleep_ms(5);                                                          \
        if (!ok_)                                                                 \
            print_error("%s:%d: timed out after %ld ms: %s\n", __FILE__, __LINE__, \
                        (long)(ms), #expr);                                       \
        assert_true(ok_);                                                         \
    } while (0)

static const char *str_or(const char *s, const char *dflt)
{
    return s != NULL ? s : dflt;
}

/* ======================================================================
 * The fake kube-apiserver
 * ====================================================================== */

#define FK_MAX_OBJ 64
#define FK_MAX_EV 1024
#define FK_MAX_PLAN 16
#define FK_MAX_REQ 1024
#define FK_MAX_CHUNKS 8

enum { PLAN_LIST = 1, PLAN_CONTINUE, PLAN_WATCH };

typedef struct {
    int kind;
    int code;
    long retry_after;            /* -1: no header */
    char *chunks[FK_MAX_CHUNKS]; /* owned */
    int nchunks;
    int delay_ms;                /* between chunks */
    int abort_end;               /* end by dropping the connection */
} fk_plan;

typedef struct {
    char name[64];
    long rv;
    long gen;
    int present;
} fk_obj;

typedef struct {
    long rv;
    char *line;                  /* owned: a watch event line */
} fk_event;

typedef struct {
    long t_ms;
    int watch;
    int has_limit;
    char cont[128];
    int has_cont;
    char rv[64];
    int has_rv;
    int timeout_s;
    int bookmarks;
    int code;                    /* the answer, 200 for streams */
} fk_req;

static struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    struct MHD_Daemon *d;
    int port;
    int stopping;
    long rv;                     /* last version handed out */
    long expired_below;          /* watches from older versions get an ERROR 410 */
    fk_obj objs[FK_MAX_OBJ];
    int nobjs;
    fk_event evs[FK_MAX_EV];
    int nevs;
    fk_plan plans[FK_MAX_PLAN];
    int nplans;
    fk_req reqs[FK_MAX_REQ];
    int nreqs;
    unsigned kick;               /* bumping it ends every live watch */
} fk = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

/* Opaque-looking versions: "r<n>/+=" on the wire as "r<n>%2F%2B%3D". */
static void fk_rv_str(long rv, char *out, size_t cap)
{
    snprintf(out, cap, "r%ld/+=", rv);
}

static int fk_rv_parse(const char *s, long *out)
{
    char *end = NULL;
    long v;

    if (s == NULL || s[0] != 'r')
        return -1;
    errno = 0;
    v = strtol(s + 1, &end, 10);
    if (errno != 0 || end == s + 1 || strcmp(end, "/+=") != 0 || v < 0)
        return -1;
    *out = v;
    return 0;
}

static char *fk_status_json(int code, const char *reason, const char *message)
{
    json_t *st = json_pack("{s:s, s:s, s:{}, s:s, s:s, s:s, s:i}", "kind", "Status", "apiVersion",
                           "v1", "metadata", "status", "Failure", "message", message, "reason",
                           reason, "code", code);
    char *s = json_dumps(st, JSON_COMPACT);

    json_decref(st);
    return s;
}

/* The object as JSON; list items come without kind/apiVersion, as
 * kube-apiserver sends them for built-in kinds. Caller frees. */
static char *fk_obj_json(const fk_obj *o, int with_kind)
{
    char rv[64], uid[96];
    json_t *obj;
    char *s;

    fk_rv_str(o->rv, rv, sizeof(rv));
    snprintf(uid, sizeof(uid), "uid-%s", o->name);
    obj = json_pack("{s:{s:s, s:s, s:s}, s:{s:I}}", "metadata", "name", o->name, "uid", uid,
                    "resourceVersion", rv, "spec", "gen", (json_int_t)o->gen);
    if (with_kind) {
        json_object_set_new(obj, "apiVersion", json_string(FK_GROUP "/v1"));
        json_object_set_new(obj, "kind", json_string("Widget"));
    }
    s = json_dumps(obj, JSON_COMPACT | JSON_SORT_KEYS);
    json_decref(obj);
    return s;
}

/* "{"type":T,"object":O}\n". Caller frees. */
static char *fk_line(const char *type, const char *object)
{
    size_t n = strlen(type) + strlen(object) + 40;
    char *s = malloc(n);

    assert_non_null(s);
    snprintf(s, n, "{\"type\":\"%s\",\"object\":%s}\n", type, object);
    return s;
}

static fk_obj *fk_find_locked(const char *name)
{
    for (int i = 0; i < fk.nobjs; i++)
        if (strcmp(fk.objs[i].name, name) == 0)
            return &fk.objs[i];
    return NULL;
}

static void fk_add_event_locked(long rv, const char *type, const fk_obj *o)
{
    char *obj = fk_obj_json(o, 1);

    assert_true(fk.nevs < FK_MAX_EV);
    fk.evs[fk.nevs].rv = rv;
    fk.evs[fk.nevs].line = fk_line(type, obj);
    fk.nevs++;
    free(obj);
    pthread_cond_broadcast(&fk.cond);
}

/* Create or change an object. emit: also as a watch event; otherwise only a
 * list shows the change (as if the watch had missed it). Returns its new
 * version. */
static long fk_set(const char *name, int emit)
{
    fk_obj *o;
    int added;
    long rv;

    pthread_mutex_lock(&fk.mu);
    o = fk_find_locked(name);
    if (o == NULL) {
        assert_true(fk.nobjs < FK_MAX_OBJ);
        o = &fk.objs[fk.nobjs++];
        memset(o, 0, sizeof(*o));
        snprintf(o->name, sizeof(o->name), "%s", name);
    }
    added = !o->present;
    o->present = 1;
    o->gen++;
    o->rv = rv = ++fk.rv;
    if (emit)
        fk_add_event_locked(rv, added ? "ADDED" : "MODIFIED", o);
    pthread_mutex_unlock(&fk.mu);
    return rv;
}

static void fk_del(const char *name, int emit)
{
    fk_obj *o;

    pthread_mutex_lock(&fk.mu);
    o = fk_find_locked(name);
    assert_non_null(o);
    o->present = 0;
    o->rv = ++fk.rv;
    if (emit)
        fk_add_event_locked(o->rv, "DELETED", o);
    pthread_mutex_unlock(&fk.mu);
}

/* A version later than every object, with no event (as other resources'
 * writes advance etcd's revision). */
static long fk_bump(void)
{
    long rv;

    pthread_mutex_lock(&fk.mu);
    rv = ++fk.rv;
    pthread_mutex_unlock(&fk.mu);
    return rv;
}

/* The watch line of an object's current state. Caller frees. */
static char *fk_event_line(const char *type, const char *name)
{
    fk_obj *o;
    char *obj, *line;

    pthread_mutex_lock(&fk.mu);
    o = fk_find_locked(name);
    assert_non_null(o);
    obj = fk_obj_json(o, 1);
    pthread_mutex_unlock(&fk.mu);
    line = fk_line(type, obj);
    free(obj);
    return line;
}

/* Queue a plan; chunks are copied, the list ends with NULL. */
static void fk_plan_add(int kind, int code, long retry_after, int delay_ms, int abort_end, ...)
{
    va_list ap;
    fk_plan *p;
    const char *c;

    pthread_mutex_lock(&fk.mu);
    assert_true(fk.nplans < FK_MAX_PLAN);
    p = &fk.plans[fk.nplans++];
    memset(p, 0, sizeof(*p));
    p->kind = kind;
    p->code = code;
    p->retry_after = retry_after;
    p->delay_ms = delay_ms;
    p->abort_end = abort_end;
    va_start(ap, abort_end);
    while ((c = va_arg(ap, const char *)) != NULL && p->nchunks < FK_MAX_CHUNKS)
        p->chunks[p->nchunks++] = strdup(c);
    va_end(ap);
    pthread_mutex_unlock(&fk.mu);
}

static int fk_plans_left(void)
{
    int n;

    pthread_mutex_lock(&fk.mu);
    n = fk.nplans;
    pthread_mutex_unlock(&fk.mu);
    return n;
}

/* End every live watch now (the reflector then watches again). */
static void fk_kick(void)
{
    pthread_mutex_lock(&fk.mu);
    fk.kick++;
    pthread_cond_broadcast(&fk.cond);
    pthread_mutex_unlock(&fk.mu);
}

static void fk_plan_free(fk_plan *p)
{
    for (int i = 0; i < p->nchunks; i++)
        free(p->chunks[i]);
    p->nchunks = 0;
}

static void fk_reset(void)
{
    pthread_mutex_lock(&fk.mu);
    for (int i = 0; i < fk.nevs; i++)
        free(fk.evs[i].line);
    for (int i = 0; i < fk.nplans; i++)
        fk_plan_free(&fk.plans[i]);
    fk.nevs = fk.nplans = fk.nobjs = fk.nreqs = 0;
    fk.expired_below = 0;
    fk.rv = 0;
    fk.kick++;
    pthread_cond_broadcast(&fk.cond);
    pthread_mutex_unlock(&fk.mu);
}

static int fk_nreqs(void)
{
    int n;

    pthread_mutex_lock(&fk.mu);
    n = fk.nreqs;
    pthread_mutex_unlock(&fk.mu);
    return n;
}

static fk_req fk_req_at(int i)
{
    fk_req r;

    pthread_mutex_lock(&fk.mu);
    assert_true(i >= 0 && i < fk.nreqs);
    r = fk.reqs[i];
    pthread_mutex_unlock(&fk.mu);
    return r;
}

/* Index of the first request at or after from that answered code, or -1. */
static int fk_find_req(int from, int watch, int code)
{
    int found = -1;

    pthread_mutex_lock(&fk.mu);
    for (int i = from < 0 ? 0 : from; i < fk.nreqs && found < 0; i++)
        if (fk.reqs[i].watch == watch && fk.reqs[i].code == code)
            found = i;
    pthread_mutex_unlock(&fk.mu);
    return found;
}

/* ---- streams ---- */

typedef struct {
    /* a plan's chunks, or a live watch */
    fk_plan plan;
    int is_plan;
    int next_chunk;
    long cursor;          /* live: last version sent */
    long deadline_ms;
    unsigned kick;
    char *pending;        /* bytes being sent */
    size_t pending_len, pending_off;
    int pending_owned;
} fk_stream;

static void fk_stream_free(void *cls)
{
    fk_stream *s = cls;

    if (s->pending_owned)
        free(s->pending);
    fk_plan_free(&s->plan);
    free(s);
}

static ssize_t fk_stream_read(void *cls, uint64_t pos, char *buf, size_t max)
{
    fk_stream *s = cls;

    (void)pos;
    for (;;) {
        if (s->pending != NULL && s->pending_off < s->pending_len) {
            size_t n = s->pending_len - s->pending_off;
            if (n > max)
                n = max;
            memcpy(buf, s->pending + s->pending_off, n);
            s->pending_off += n;
            return (ssize_t)n;
        }
        if (s->pending_owned)
            free(s->pending);
        s->pending = NULL;
        s->pending_owned = 0;
        if (s->is_plan) {
            if (s->next_chunk >= s->plan.nchunks)
                return s->plan.abort_end ? MHD_CONTENT_READER_END_WITH_ERROR
                                         : MHD_CONTENT_READER_END_OF_STREAM;
            if (s->next_chunk > 0 && s->plan.delay_ms > 0)
                sleep_ms(s->plan.delay_ms);
            s->pending = s->plan.chunks[s->next_chunk++];
            s->pending_len = strlen(s->pending);
            s->pending_off = 0;
            continue;
        }
        /* live: the next event after the cursor, or wait */
        pthread_mutex_lock(&fk.mu);
        for (;;) {
            int i;
            struct timespec ts;

            if (fk.stopping || fk.kick != s->kick || now_ms() >= s->deadline_ms) {
                pthread_mutex_unlock(&fk.mu);
                return MHD_CONTENT_READER_END_OF_STREAM;
            }
            for (i = 0; i < fk.nevs && fk.evs[i].rv <= s->cursor; i++)
                ;
            if (i < fk.nevs) {
                s->pending = strdup(fk.evs[i].line);
                s->pending_owned = 1;
                s->pending_len = strlen(s->pending);
                s->pending_off = 0;
                s->cursor = fk.evs[i].rv;
                break;
            }
            clock_gettime(CLOCK_REALTIME, &ts);
            ts.tv_nsec += 50 * 1000000L;
            if (ts.tv_nsec >= 1000000000L) {
                ts.tv_sec++;
                ts.tv_nsec -= 1000000000L;
            }
            pthread_cond_timedwait(&fk.cond, &fk.mu, &ts);
        }
        pthread_mutex_unlock(&fk.mu);
    }
}

static enum MHD_Result fk_queue_buffer(struct MHD_Connection *c, int code, long retry_after,
                                       const char *body)
{
    struct MHD_Response *resp = MHD_create_response_from_buffer(
        strlen(body), (void *)body, MHD_RESPMEM_MUST_COPY);
    enum MHD_Result ret;
    char ra[32];

    MHD_add_response_header(resp, "Content-Type", "application/json");
    if (retry_after >= 0) {
        snprintf(ra, sizeof(ra), "%ld", retry_after);
        MHD_add_response_header(resp, "Retry-After", ra);
    }
    ret = MHD_queue_response(c, (unsigned)code, resp);
    MHD_destroy_response(resp);
    return ret;
}

static enum MHD_Result fk_queue_stream(struct MHD_Connection *c, fk_stream *s)
{
    struct MHD_Response *resp =
        MHD_create_response_from_callback(MHD_SIZE_UNKNOWN, 4096, fk_stream_read, s, fk_stream_free);
    enum MHD_Result ret;

    MHD_add_response_header(resp, "Content-Type", "application/json");
    ret = MHD_queue_response(c, MHD_HTTP_OK, resp);
    MHD_destroy_response(resp);
    return ret;
}

/* A page of the list: items [offset, offset+limit) of the present objects in
 * name order (they are kept in creation order, names chosen sorted). */
static char *fk_list_locked(long limit, long offset, long snap_rv)
{
    json_t *items = json_array(), *list, *meta;
    char rv[64], cont[128];
    long idx = 0, sent = 0;
    int more = 0;
    char *s;

    for (int i = 0; i < fk.nobjs; i++) {
        char *o;
        if (!fk.objs[i].present)
            continue;
        if (idx++ < offset)
            continue;
        if (limit > 0 && sent == limit) {
            more = 1;
            break;
        }
        o = fk_obj_json(&fk.objs[i], 0);
        json_array_append_new(items, json_loads(o, 0, NULL));
        free(o);
        sent++;
    }
    fk_rv_str(snap_rv, rv, sizeof(rv));
    meta = json_pack("{s:s}", "resourceVersion", rv);
    if (more) {
        snprintf(cont, sizeof(cont), "c/%ld+%ld=", offset + sent, snap_rv);
        json_object_set_new(meta, "continue", json_string(cont));
    }
    list = json_pack("{s:s, s:s, s:o, s:o}", "kind", "WidgetList", "apiVersion", FK_GROUP "/v1",
                     "metadata", meta, "items", items);
    s = json_dumps(list, JSON_COMPACT);
    json_decref(list);
    return s;
}

static enum MHD_Result fk_handler(void *cls, struct MHD_Connection *c, const char *url,
                                  const char *method, const char *version,
                                  const char *upload_data, size_t *upload_size, void **con_cls)
{
    const char *watch = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "watch");
    const char *limit = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "limit");
    const char *cont = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "continue");
    const char *rv = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "resourceVersion");
    const char *tos = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "timeoutSeconds");
    const char *bm = MHD_lookup_connection_value(c, MHD_GET_ARGUMENT_KIND, "allowWatchBookmarks");
    int is_watch = watch != NULL && (strcmp(watch, "1") == 0 || strcmp(watch, "true") == 0);
    fk_req *rq = NULL;
    fk_plan plan = {0};
    int have_plan = 0;
    fk_stream *s;
    enum MHD_Result ret;

    (void)cls;
    (void)version;
    (void)upload_data;
    (void)upload_size;
    (void)con_cls;
    if (strcmp(method, "GET") != 0 || strncmp(url, "/apis/" FK_GROUP "/v1/", sizeof("/apis/" FK_GROUP "/v1/") - 1) != 0) {
        char *body = fk_status_json(404, "NotFound", "no such path");
        ret = fk_queue_buffer(c, 404, -1, body);
        free(body);
        return ret;
    }
    pthread_mutex_lock(&fk.mu);
    if (fk.nreqs < FK_MAX_REQ) {
        rq = &fk.reqs[fk.nreqs++];
        memset(rq, 0, sizeof(*rq));
        rq->t_ms = now_ms();
        rq->watch = is_watch;
        rq->has_limit = limit != NULL;
        rq->has_cont = cont != NULL;
        snprintf(rq->cont, sizeof(rq->cont), "%s", cont ? cont : "");
        rq->has_rv = rv != NULL;
        snprintf(rq->rv, sizeof(rq->rv), "%s", rv ? rv : "");
        rq->timeout_s = tos ? (int)strtol(tos, NULL, 10) : -1;
        rq->bookmarks = bm != NULL && strcmp(bm, "true") == 0;
    }
    for (int i = 0; i < fk.nplans; i++) {
        int k = fk.plans[i].kind;
        if ((is_watch && k == PLAN_WATCH) || (!is_watch && k == PLAN_LIST) ||
            (!is_watch && cont != NULL && k == PLAN_CONTINUE)) {
            plan = fk.plans[i];
            memmove(&fk.plans[i], &fk.plans[i + 1], (size_t)(fk.nplans - i - 1) * sizeof(fk_plan));
            fk.nplans--;
            have_plan = 1;
            break;
        }
    }
    if (rq)
        rq->code = have_plan ? plan.code : 200;

    if (have_plan) {
        pthread_mutex_unlock(&fk.mu);
        if (plan.code != 200 || !is_watch) {
            char body[8192] = "";
            for (int i = 0; i < plan.nchunks; i++)
                strncat(body, plan.chunks[i], sizeof(body) - strlen(body) - 1);
            ret = fk_queue_buffer(c, plan.code, plan.retry_after, body);
            fk_plan_free(&plan);
            return ret;
        }
        s = calloc(1, sizeof(*s));
        s->plan = plan;
        s->is_plan = 1;
        return fk_queue_stream(c, s);
    }

    if (!is_watch) {
        long lim = limit ? strtol(limit, NULL, 10) : 0, off = 0, snap = fk.rv;
        char *body;
        if (cont != NULL && sscanf(cont, "c/%ld+%ld=", &off, &snap) != 2) {
            pthread_mutex_unlock(&fk.mu);
            body = fk_status_json(400, "BadRequest", "bad continue token");
            ret = fk_queue_buffer(c, 400, -1, body);
            free(body);
            return ret;
        }
        body = fk_list_locked(lim, off, snap);
        pthread_mutex_unlock(&fk.mu);
        ret = fk_queue_buffer(c, 200, -1, body);
        free(body);
        return ret;
    }

    /* a live watch */
    s = calloc(1, sizeof(*s));
    if (rv == NULL || fk_rv_parse(rv, &s->cursor) != 0) {
        pthread_mutex_unlock(&fk.mu);
        free(s);
        char *body = fk_status_json(400, "BadRequest", "bad resourceVersion");
        ret = fk_queue_buffer(c, 400, -1, body);
        free(body);
        return ret;
    }
    if (s->cursor < fk.expired_below) {
        char *st = fk_status_json(410, "Expired", "too old resource version");
        s->is_plan = 1;
        s->plan.chunks[0] = fk_line("ERROR", st);
        s->plan.nchunks = 1;
        free(st);
    }
    s->deadline_ms = now_ms() + (tos ? strtol(tos, NULL, 10) : 60) * 1000L;
    s->kick = fk.kick;
    pthread_mutex_unlock(&fk.mu);
    return fk_queue_stream(c, s);
}

static int fk_start(void)
{
    struct sockaddr_in sa;
    const union MHD_DaemonInfo *info;

    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_port = 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    /* (no MHD_USE_ERROR_LOG: clients that hang up are part of the tests) */
    fk.d = MHD_start_daemon(MHD_USE_THREAD_PER_CONNECTION | MHD_USE_INTERNAL_POLLING_THREAD, 0,
                            NULL, NULL, fk_handler, NULL, MHD_OPTION_SOCK_ADDR,
                            (struct sockaddr *)&sa, MHD_OPTION_CONNECTION_TIMEOUT, 0u,
                            MHD_OPTION_END);
    if (fk.d == NULL)
        return -1;
    info = MHD_get_daemon_info(fk.d, MHD_DAEMON_INFO_BIND_PORT);
    if (info == NULL || info->port == 0)
        return -1;
    fk.port = info->port;
    return 0;
}

static void fk_stop(void)
{
    pthread_mutex_lock(&fk.mu);
    fk.stopping = 1;
    pthread_cond_broadcast(&fk.cond);
    pthread_mutex_unlock(&fk.mu);
    if (fk.d)
        MHD_stop_daemon(fk.d);
    fk.d = NULL;
    fk_reset();
}

/* ======================================================================
 * What the reflector reports
 * ====================================================================== */

#define REC_MAX 4096

typedef struct {
    ks_reflect_type type;
    char ns[64];
    char name[128];
    char rv[64];
} rec_event;

static struct {
    pthread_mutex_t mu;
    rec_event ev[REC_MAX];
    int n;
    int synced_calls;
    int bad;                 /* events whose fields disagreed with their JSON */
    char why[256];
} rec = {.mu = PTHREAD_MUTEX_INITIALIZER};

static void rec_reset(void)
{
    pthread_mutex_lock(&rec.mu);
    rec.n = 0;
    rec.synced_calls = 0;
    rec.bad = 0;
    rec.why[0] = '\0';
    pthread_mutex_unlock(&rec.mu);
}

/* Checks that the event's fields agree with its object (asserting here
 * would longjmp on the reflector's thread), then records it. */
static void rec_on_event(void *arg, const ks_reflector_resource *res, const ks_reflect_event *ev)
{
    json_t *obj = NULL, *meta;
    const char *why = NULL;

    (void)arg;
    if (ev->object_json == NULL || strlen(ev->object_json) != ev->object_len)
        why = "object_json/object_len";
    else if ((obj = json_loadb(ev->object_json, ev->object_len, 0, NULL)) == NULL)
        why = "object is not JSON";
    else if (!json_is_object(meta = json_object_get(obj, "metadata")))
        why = "no metadata";
    else if (strcmp(str_or(json_string_value(json_object_get(meta, "name")), ""), ev->name) != 0)
        why = "name";
    else if (strcmp(str_or(json_string_value(json_object_get(meta, "namespace")), ""), ev->namespace_) != 0)
        why = "namespace";
    else if (strcmp(str_or(json_string_value(json_object_get(meta, "resourceVersion")), ""),
                    ev->resource_version) != 0)
        why = "resourceVersion";
    else if (strcmp(str_or(json_string_value(json_object_get(meta, "uid")), ""), ev->uid) != 0)
        why = "uid";
    else if (strcmp(str_or(json_string_value(json_object_get(obj, "kind")), ""), res->kind) != 0)
        why = "kind";
    json_decref(obj);

    pthread_mutex_lock(&rec.mu);
    if (why != NULL) {
        rec.bad++;
        snprintf(rec.why, sizeof(rec.why), "%s of %s", why, ev->name ? ev->name : "?");
    }
    if (rec.n < REC_MAX) {
        rec_event *e = &rec.ev[rec.n++];
        e->type = ev->type;
        snprintf(e->ns, sizeof(e->ns), "%s", ev->namespace_);
        snprintf(e->name, sizeof(e->name), "%s", ev->name);
        snprintf(e->rv, sizeof(e->rv), "%s", ev->resource_version);
    }
    pthread_mutex_unlock(&rec.mu);
}

static void rec_on_synced(void *arg, const ks_reflector_resource *res)
{
    (void)arg;
    (void)res;
    pthread_mutex_lock(&rec.mu);
    rec.synced_calls++;
    pthread_mutex_unlock(&rec.mu);
}

static int rec_n(void)
{
    int n;

    pthread_mutex_lock(&rec.mu);
    n = rec.n;
    pthread_mutex_unlock(&rec.mu);
    return n;
}

/* Events of type (0: any) for name from index `from` on. */
static int rec_count(int from, ks_reflect_type type, const char *name)
{
    int n = 0;

    pthread_mutex_lock(&rec.mu);
    for (int i = from; i < rec.n; i++)
        if ((type == 0 || rec.ev[i].type == type) && (name == NULL || strcmp(rec.ev[i].name, name) == 0))
            n++;
    pthread_mutex_unlock(&rec.mu);
    return n;
}

static rec_event rec_at(int i)
{
    rec_event e;

    pthread_mutex_lock(&rec.mu);
    assert_true(i < rec.n);
    e = rec.ev[i];
    pthread_mutex_unlock(&rec.mu);
    return e;
}

static void assert_rec_consistent(void)
{
    pthread_mutex_lock(&rec.mu);
    if (rec.bad)
        print_error("inconsistent event: %s\n", rec.why);
    pthread_mutex_unlock(&rec.mu);
    assert_int_equal(rec.bad, 0);
}

/* ---- the store ---- */

#define SNAP_MAX 512

typedef struct {
    char key[256];           /* "ns/name" */
    char rv[64];
} snap_item;

typedef struct {
    snap_item it[SNAP_MAX];
    int n;
    int overflow;
} snap;

static int snap_add(void *arg, const char *ns, const char *name, const char *uid, const char *rv,
                    const char *json, size_t len)
{
    snap *s = arg;

    (void)uid;
    (void)json;
    (void)len;
    if (s->n == SNAP_MAX) {
        s->overflow = 1;
        return 1;
    }
    snprintf(s->it[s->n].key, sizeof(s->it[s->n].key), "%s/%s", ns, name);
    snprintf(s->it[s->n].rv, sizeof(s->it[s->n].rv), "%s", rv);
    s->n++;
    return 0;
}

static const char *snap_get(const snap *s, const char *key)
{
    for (int i = 0; i < s->n; i++)
        if (strcmp(s->it[i].key, key) == 0)
            return s->it[i].rv;
    return NULL;
}

static snap *snap_store(ks_reflector *r)
{
    snap *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    ks_reflector_each(r, snap_add, s);
    return s;
}

/* 1 when two snapshots hold the same keys at the same versions. */
static int snap_equal(const snap *a, const snap *b)
{
    if (a->overflow || b->overflow || a->n != b->n)
        return 0;
    for (int i = 0; i < a->n; i++) {
        const char *rv = snap_get(b, a->it[i].key);
        if (rv == NULL || strcmp(rv, a->it[i].rv) != 0)
            return 0;
    }
    return 1;
}

static snap *snap_fake(void)
{
    snap *s = calloc(1, sizeof(*s));

    assert_non_null(s);
    pthread_mutex_lock(&fk.mu);
    for (int i = 0; i < fk.nobjs && s->n < SNAP_MAX; i++) {
        if (!fk.objs[i].present)
            continue;
        snprintf(s->it[s->n].key, sizeof(s->it[s->n].key), "/%s", fk.objs[i].name);
        fk_rv_str(fk.objs[i].rv, s->it[s->n].rv, sizeof(s->it[s->n].rv));
        s->n++;
    }
    pthread_mutex_unlock(&fk.mu);
    return s;
}

static int store_equals_fake(ks_reflector *r)
{
    snap *a = snap_store(r), *b = snap_fake();
    int eq = snap_equal(a, b);

    free(a);
    free(b);
    return eq;
}

static double metric_of(const char *name, const char *resource)
{
    char labels[256] = "";

    ks_metrics_label_append(labels, sizeof(labels), "resource", resource);
    return ks_metric_value(ks_metrics_counter(name, NULL, labels));
}

#define BAD(res) metric_of("ks_reflector_bad_events_total", (res))
#define RELISTS(res) metric_of("ks_reflector_relists_total", (res))
#define ERRORS(res) metric_of("ks_reflector_errors_total", (res))

/* ---- the reflector under test ---- */

static struct {
    ks_kube_client *kube;
    ks_reflector *r;
    char resource[64];
} cur;

static ks_kube_client *client_for(const char *url)
{
    ks_kube_config cfg = {0};
    ks_kube_client *c = NULL;

    assert_int_equal(ks_kube_config_explicit(url, NULL, NULL, &cfg), KS_OK);
    assert_int_equal(ks_kube_client_create(&cfg, &c), KS_OK);
    ks_kube_config_clear(&cfg);
    return c;
}

/* Start a reflector on the fake server's collection `resource`. */
static void start_fake(const char *resource, int page_size)
{
    char url[64];
    ks_reflector_resource res = {FK_GROUP, "v1", resource, "Widget", 0};
    ks_reflector_opts o = {
        .page_size = page_size,
        .watch_min_s = 30,
        .watch_max_s = 30,
        .backoff_initial_ms = 20,
        .backoff_max_ms = 200,
        .max_event_bytes = 64 * 1024,
    };

    snprintf(url, sizeof(url), "http://127.0.0.1:%d", fk.port);
    snprintf(cur.resource, sizeof(cur.resource), "%s", resource);
    rec_reset();
    cur.kube = client_for(url);
    assert_int_equal(ks_reflector_start(cur.kube, &res, &o, rec_on_event, rec_on_synced, NULL, &cur.r),
                     KS_OK);
}

static int teardown_cur(void **state)
{
    (void)state;
    if (cur.kube)
        ks_kube_client_shutdown(cur.kube);
    fk_kick();
    ks_reflector_stop(cur.r);
    ks_kube_client_destroy(cur.kube);
    cur.r = NULL;
    cur.kube = NULL;
    fk_reset();
    return 0;
}

/* Objects a..(a+n-1), then a synced reflector that holds them all. */
static void fake_with_objects(const char *resource, int n, int page_size)
{
    for (int i = 0; i < n; i++) {
        char name[8] = {(char)('a' + i), 0};
        fk_set(name, 1);
    }
    start_fake(resource, page_size);
    AWAIT_TRUE(ks_reflector_has_synced(cur.r), WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    /* and a live watch is open */
    AWAIT_TRUE(fk_find_req(0, 1, 200) >= 0, WAIT_MS);
}

/* Serve `chunks` (NULL-terminated) on the next watch, ending the live one. */
#define WATCH_PLAN(...)                                            \
    do {                                                           \
        fk_plan_add(PLAN_WATCH, 200, -1, 20, 0, __VA_ARGS__, NULL); \
        fk_kick();                                                 \
    } while (0)

/* ======================================================================
 * Part 1: the fake server
 * ====================================================================== */

/* Paged list with opaque continue tokens, list items without kind, then a
 * watch from the list's version with bookmarks and timeoutSeconds; live
 * events; a bookmark moves the version the next watch starts from. */
static void test_fake_paging_and_watch(void **state)
{
    const char *res = "w-paging";
    char want_rv[64];
    fk_req q;
    int w, i, mark;
    long bm;

    (void)state;
    fake_with_objects(res, 5, 2);
    /* three pages: limit=2, then the tokens the server gave, escaped */
    q = fk_req_at(0);
    assert_false(q.watch);
    assert_true(q.has_limit);
    assert_false(q.has_cont);
    q = fk_req_at(1);
    assert_string_equal(q.cont, "c/2+5=");
    q = fk_req_at(2);
    assert_string_equal(q.cont, "c/4+5=");
    q = fk_req_at(3);
    assert_true(q.watch);
    fk_rv_str(5, want_rv, sizeof(want_rv));
    assert_string_equal(q.rv, want_rv);
    assert_true(q.bookmarks);
    assert_int_equal(q.timeout_s, 30);
    assert_int_equal(ks_reflector_size(cur.r), 5);
    assert_int_equal(rec_count(0, KS_REFLECT_ADDED, NULL), 5);
    assert_int_equal(rec_count(0, 0, NULL), 5);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_int_equal(RELISTS(res), 1);
    assert_int_equal(rec.synced_calls, 1);

    /* live events */
    mark = rec_n();
    fk_set("f", 1);
    fk_set("a", 1);
    fk_del("b", 1);
    AWAIT_TRUE(rec_count(mark, 0, NULL) == 3, WAIT_MS);
    assert_int_equal(rec_at(mark).type, KS_REFLECT_ADDED);
    assert_string_equal(rec_at(mark).name, "f");
    assert_int_equal(rec_at(mark + 1).type, KS_REFLECT_MODIFIED);
    assert_string_equal(rec_at(mark + 1).name, "a");
    assert_int_equal(rec_at(mark + 2).type, KS_REFLECT_DELETED);
    assert_string_equal(rec_at(mark + 2).name, "b");
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);

    /* a bookmark: the next watch starts from its version */
    bm = fk_bump();
    {
        char rvs[64], obj[160], *line;
        fk_rv_str(bm, rvs, sizeof(rvs));
        snprintf(obj, sizeof(obj), "{\"kind\":\"Widget\",\"apiVersion\":\"" FK_GROUP
                                   "/v1\",\"metadata\":{\"resourceVersion\":\"%s\"}}", rvs);
        line = fk_line("BOOKMARK", obj);
        w = fk_nreqs();
        WATCH_PLAN(line);
        free(line);
        AWAIT_TRUE(fk_plans_left() == 0, WAIT_MS);
        /* the watch after the planned one */
        AWAIT_TRUE(fk_find_req(fk_find_req(w, 1, 200) + 1, 1, 200) >= 0, WAIT_MS);
        i = fk_find_req(fk_find_req(w, 1, 200) + 1, 1, 200);
        assert_string_equal(fk_req_at(i).rv, rvs);
    }
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_int_equal(BAD(res), 0);
    assert_int_equal(rec_count(mark, 0, NULL), 3);   /* a bookmark reports nothing */
    assert_rec_consistent();
}

/* Chunk boundaries are not event boundaries: events split in three pieces
 * with pauses between them are put together. */
static void test_fake_events_split_across_chunks(void **state)
{
    const char *res = "w-chunks";
    char *l1, *l2, p1[16], *p2, *p3;
    size_t n1;
    int mark;

    (void)state;
    fake_with_objects(res, 2, 0);
    mark = rec_n();
    fk_set("a", 0);
    fk_set("c", 0);
    l1 = fk_event_line("MODIFIED", "a");
    l2 = fk_event_line("ADDED", "c");
    n1 = strlen(l1);
    snprintf(p1, sizeof(p1), "%.7s", l1);                       /* {"type" */
    p2 = calloc(1, n1 + 16);
    snprintf(p2, n1 + 16, "%s%.5s", l1 + 7, l2);                /* rest of 1, start of 2 */
    p3 = strdup(l2 + 5);
    WATCH_PLAN(p1, p2, p3);
    free(l1);
    free(l2);
    free(p2);
    free(p3);
    AWAIT_TRUE(rec_count(mark, 0, NULL) == 2, WAIT_MS);
    assert_int_equal(rec_at(mark).type, KS_REFLECT_MODIFIED);
    assert_string_equal(rec_at(mark).name, "a");
    assert_int_equal(rec_at(mark + 1).type, KS_REFLECT_ADDED);
    assert_string_equal(rec_at(mark + 1).name, "c");
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    assert_int_equal(BAD(res), 0);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_rec_consistent();
}

/* One bad stream: counted, relisted, converged; a change that only a list
 * shows (hidden) proves the relist. Returns the event mark before it. */
static int bad_stream_round(const char *res, const char *hidden, const char *bad1, const char *bad2)
{
    double bad0 = BAD(res);
    unsigned long relists0 = ks_reflector_relists(cur.r);
    int mark = rec_n();

    fk_set(hidden, 0);
    if (bad2)
        WATCH_PLAN(bad1, bad2);
    else
        WATCH_PLAN(bad1);
    AWAIT_TRUE(BAD(res) >= bad0 + 1, WAIT_MS);
    AWAIT_TRUE(ks_reflector_relists(cur.r) >= relists0 + 1, WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    assert_true(BAD(res) == bad0 + 1);
    assert_int_equal(ks_reflector_relists(cur.r), relists0 + 1);
    assert_int_equal(RELISTS(res), (double)(relists0 + 1));
    return mark;
}

static void test_fake_malformed_json(void **state)
{
    const char *res = "w-malformed";
    char *good, *rendered, want[160];
    int mark;

    (void)state;
    fake_with_objects(res, 2, 0);
    /* a good event, then an object that is not JSON (a trailing comma) */
    fk_set("a", 0);
    good = fk_event_line("MODIFIED", "a");
    mark = bad_stream_round(res, "c", good,
                            "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"name\":\"x\",}}}\n");
    free(good);
    /* the good event was applied once; the relist did not repeat it */
    assert_int_equal(rec_count(mark, KS_REFLECT_MODIFIED, "a"), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "c"), 1);
    assert_int_equal(rec_count(mark, 0, "x"), 0);
    assert_int_equal(rec_count(mark, 0, "b"), 0);
    /* text between events that is not an object at all */
    mark = bad_stream_round(res, "d", "hello, world\n", NULL);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "d"), 1);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    /* the counters are exported */
    rendered = ks_metrics_render(NULL);
    assert_non_null(rendered);
    snprintf(want, sizeof(want), "ks_reflector_bad_events_total{resource=\"%s\"} 2\n", res);
    assert_non_null(strstr(rendered, want));
    snprintf(want, sizeof(want), "ks_reflector_relists_total{resource=\"%s\"} 3\n", res);
    assert_non_null(strstr(rendered, want));
    free(rendered);
    assert_rec_consistent();
}

/* A stream that ends cleanly inside an event: counted, relisted. A stream
 * whose connection drops inside an event: the complete events before it
 * count, the watch resumes from the last version, no relist. */
static void test_fake_truncated(void **state)
{
    const char *res = "w-truncated";
    char *good, *partial, *l;
    int mark;
    unsigned long relists;
    double bad;

    (void)state;
    fake_with_objects(res, 2, 0);
    fk_set("a", 0);
    good = fk_event_line("MODIFIED", "a");
    l = fk_event_line("MODIFIED", "b");
    partial = strndup(l, strlen(l) / 2);
    free(l);
    mark = bad_stream_round(res, "c", good, partial);
    assert_int_equal(rec_count(mark, KS_REFLECT_MODIFIED, "a"), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "c"), 1);
    assert_int_equal(rec_count(mark, 0, "b"), 0);
    free(good);
    free(partial);

    /* dropped connection */
    relists = ks_reflector_relists(cur.r);
    bad = BAD(res);
    mark = rec_n();
    fk_set("b", 0);
    good = fk_event_line("MODIFIED", "b");
    partial = strdup("{\"type\":\"MODIFIED\",\"object\":{\"metad");
    fk_plan_add(PLAN_WATCH, 200, -1, 20, 1, good, partial, NULL);
    fk_kick();
    free(good);
    free(partial);
    AWAIT_TRUE(rec_count(mark, KS_REFLECT_MODIFIED, "b") == 1, WAIT_MS);
    AWAIT_TRUE(fk_plans_left() == 0, WAIT_MS);
    fk_set("e", 1);   /* a live event on the resumed watch */
    AWAIT_TRUE(rec_count(mark, KS_REFLECT_ADDED, "e") == 1, WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    assert_int_equal(ks_reflector_relists(cur.r), relists);
    assert_true(BAD(res) == bad);
    assert_true(ERRORS(res) >= 1);
    assert_rec_consistent();
}

static void test_fake_unknown_event_type(void **state)
{
    const char *res = "w-unknown";
    char *obj, *line;
    int mark;

    (void)state;
    fake_with_objects(res, 2, 0);
    obj = fk_event_line("MODIFIED", "a");
    /* the same event with a type Kubernetes does not have */
    line = malloc(strlen(obj) + 8);
    snprintf(line, strlen(obj) + 8, "{\"type\":\"SURPRISE\"%s", obj + strlen("{\"type\":\"MODIFIED\""));
    mark = bad_stream_round(res, "c", line, NULL);
    free(obj);
    free(line);
    assert_int_equal(rec_count(mark, 0, "a"), 0);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "c"), 1);
    assert_rec_consistent();
}

static void test_fake_object_without_metadata(void **state)
{
    const char *res = "w-nometa";
    int mark;

    (void)state;
    fake_with_objects(res, 2, 0);
    mark = bad_stream_round(res, "c", "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Widget\",\"spec\":{}}}\n",
                            NULL);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    /* metadata without a name, and without a resourceVersion */
    mark = bad_stream_round(
        res, "d", "{\"type\":\"ADDED\",\"object\":{\"metadata\":{\"resourceVersion\":\"r1/+=\"}}}\n", NULL);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    mark = bad_stream_round(res, "e", "{\"type\":\"MODIFIED\",\"object\":{\"metadata\":{\"name\":\"a\"}}}\n",
                            NULL);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "e"), 1);
    /* an event without an object */
    mark = bad_stream_round(res, "f", "{\"type\":\"ADDED\"}\n", NULL);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    assert_rec_consistent();
}

/* An event over max_event_bytes (64 KiB here) is dropped, counted, relisted. */
static void test_fake_huge_event(void **state)
{
    const char *res = "w-huge";
    size_t big = 200 * 1024;
    char *line = malloc(big + 200);
    int mark, n;

    (void)state;
    fake_with_objects(res, 2, 0);
    n = snprintf(line, big + 200,
                 "{\"type\":\"ADDED\",\"object\":{\"kind\":\"Widget\",\"metadata\":{\"name\":\"huge\","
                 "\"resourceVersion\":\"r999/+=\"},\"spec\":{\"blob\":\"");
    memset(line + n, 'x', big);
    snprintf(line + n + big, 200 - (size_t)n, "\"}}}\n");
    mark = bad_stream_round(res, "c", line, NULL);
    free(line);
    assert_int_equal(rec_count(mark, 0, "huge"), 0);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    assert_rec_consistent();
}

/* ERROR with a 410 Status: relist at once; the relist reports DELETED for
 * what vanished, MODIFIED/ADDED for what changed, nothing for the rest. */
static void test_fake_error_event_410(void **state)
{
    const char *res = "w-error410";
    char *st, *line;
    int mark;
    double errors0;

    (void)state;
    fake_with_objects(res, 4, 0);
    mark = rec_n();
    fk_del("b", 0);
    fk_set("c", 0);
    fk_set("e", 0);
    st = fk_status_json(410, "Expired", "too old resource version: 2 (9)");
    line = fk_line("ERROR", st);
    WATCH_PLAN(line);
    free(st);
    free(line);
    /* (the kick may end the live watch within 1 s with nothing in it, which
     * counts as an error; that happens before the plan is taken) */
    AWAIT_TRUE(fk_plans_left() == 0, WAIT_MS);
    errors0 = ERRORS(res);
    AWAIT_TRUE(ks_reflector_relists(cur.r) == 2, WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    AWAIT_TRUE(rec_count(mark, 0, NULL) == 3, WAIT_MS);
    assert_int_equal(rec_count(mark, KS_REFLECT_DELETED, "b"), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_MODIFIED, "c"), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, "e"), 1);
    assert_int_equal(rec_count(mark, 0, "a"), 0);
    assert_int_equal(rec_count(mark, 0, "d"), 0);
    /* the DELETED event carries the last known state */
    for (int i = mark; i < rec_n(); i++) {
        rec_event e = rec_at(i);
        if (e.type == KS_REFLECT_DELETED) {
            char rv[64];
            fk_rv_str(2, rv, sizeof(rv));
            assert_string_equal(e.rv, rv);
        }
    }
    /* an expiry is not a bad event, nor an error that backs off */
    assert_true(BAD(res) == 0);
    assert_true(ERRORS(res) == errors0);
    sleep_ms(100);
    assert_int_equal(rec_count(mark, 0, NULL), 3);
    assert_rec_consistent();
}

/* HTTP 410 on the watch request itself: relist. */
static void test_fake_http_410_on_watch(void **state)
{
    const char *res = "w-http410";
    char *st;
    int mark, w, after;

    (void)state;
    fake_with_objects(res, 2, 0);
    mark = rec_n();
    fk_del("a", 0);
    st = fk_status_json(410, "Expired", "too old resource version");
    w = fk_nreqs();
    fk_plan_add(PLAN_WATCH, 410, -1, 0, 0, st, NULL);
    fk_kick();
    free(st);
    AWAIT_TRUE(ks_reflector_relists(cur.r) == 2, WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    assert_int_equal(rec_count(mark, KS_REFLECT_DELETED, "a"), 1);
    assert_int_equal(rec_count(mark, 0, NULL), 1);
    /* the request after the 410 is a list */
    w = fk_find_req(w, 1, 410);
    assert_true(w >= 0);
    after = w + 1;
    AWAIT_TRUE(fk_nreqs() > after, WAIT_MS);
    assert_false(fk_req_at(after).watch);
    assert_true(BAD(res) == 0);
    assert_rec_consistent();
}

/* A watch from a version the server no longer has: the server's own ERROR
 * 410 (not a plan). */
static void test_fake_watch_from_expired_version(void **state)
{
    const char *res = "w-expired";
    int mark;

    (void)state;
    fake_with_objects(res, 3, 0);
    mark = rec_n();
    fk_set("a", 0);
    fk_del("c", 0);
    pthread_mutex_lock(&fk.mu);
    fk.expired_below = fk.rv;   /* the reflector's version is older */
    pthread_mutex_unlock(&fk.mu);
    fk_kick();
    AWAIT_TRUE(ks_reflector_relists(cur.r) == 2, WAIT_MS);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    assert_int_equal(rec_count(mark, KS_REFLECT_MODIFIED, "a"), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_DELETED, "c"), 1);
    assert_int_equal(rec_count(mark, 0, NULL), 2);
    assert_rec_consistent();
}

/* The gap at the server between the answer with Retry-After and the next
 * request. */
static long retry_gap(int from, int watch, int code)
{
    int i = fk_find_req(from, watch, code);

    assert_true(i >= 0);
    AWAIT_TRUE(fk_nreqs() > i + 1, 5000);
    return fk_req_at(i + 1).t_ms - fk_req_at(i).t_ms;
}

/* 429 and 503 with Retry-After: 1 make the reflector wait at least 1 s
 * (its own backoff here is 20 ms); without the header it retries sooner. */
static void test_fake_retry_after(void **state)
{
    const char *res = "w-retry";
    char *st = fk_status_json(429, "TooManyRequests", "slow down");
    char *st5 = fk_status_json(503, "ServiceUnavailable", "later");
    long gap;
    int w;

    (void)state;
    /* the first list answers 429 */
    fk_plan_add(PLAN_LIST, 429, 1, 0, 0, st, NULL);
    fake_with_objects(res, 2, 0);
    gap = retry_gap(0, 0, 429);
    print_message("list retried %ld ms after 429 with Retry-After: 1\n", gap);
    assert_true(gap >= 950);

    /* a watch answers 429, then 503 */
    w = fk_nreqs();
    fk_plan_add(PLAN_WATCH, 429, 1, 0, 0, st, NULL);
    fk_kick();
    AWAIT_TRUE(fk_find_req(w, 1, 429) >= 0, WAIT_MS);
    gap = retry_gap(w, 1, 429);
    print_message("watch retried %ld ms after 429 with Retry-After: 1\n", gap);
    assert_true(gap >= 950);

    w = fk_nreqs();
    fk_plan_add(PLAN_WATCH, 503, 1, 0, 0, st5, NULL);
    fk_kick();
    AWAIT_TRUE(fk_find_req(w, 1, 503) >= 0, WAIT_MS);
    gap = retry_gap(w, 1, 503);
    print_message("watch retried %ld ms after 503 with Retry-After: 1\n", gap);
    assert_true(gap >= 950);

    /* the control: 500 without Retry-After is retried after the backoff */
    w = fk_nreqs();
    fk_plan_add(PLAN_WATCH, 500, -1, 0, 0, st5, NULL);
    fk_kick();
    AWAIT_TRUE(fk_find_req(w, 1, 500) >= 0, WAIT_MS);
    gap = retry_gap(w, 1, 500);
    print_message("watch retried %ld ms after 500 without Retry-After\n", gap);
    assert_true(gap < 900);

    /* a failed watch is retried as a watch, with no relist */
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    AWAIT_TRUE(store_equals_fake(cur.r), WAIT_MS);
    free(st);
    free(st5);
    assert_rec_consistent();
}

/* 410 on a continue page: the list starts over without paging; the first
 * page's objects are not reported twice. */
static void test_fake_410_on_continue(void **state)
{
    const char *res = "w-continue410";
    char *st = fk_status_json(410, "Expired", "continue token expired");
    fk_req q;

    (void)state;
    fk_plan_add(PLAN_CONTINUE, 410, -1, 0, 0, st, NULL);
    free(st);
    fake_with_objects(res, 5, 2);
    q = fk_req_at(0);
    assert_true(q.has_limit && !q.has_cont && q.code == 200);
    q = fk_req_at(1);
    assert_true(q.has_cont && q.code == 410);
    q = fk_req_at(2);
    assert_false(q.watch);
    assert_false(q.has_limit);
    assert_false(q.has_cont);
    assert_int_equal(q.code, 200);
    assert_true(fk_req_at(3).watch);
    assert_int_equal(ks_reflector_size(cur.r), 5);
    assert_int_equal(rec_count(0, KS_REFLECT_ADDED, NULL), 5);
    assert_int_equal(rec_count(0, 0, NULL), 5);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_rec_consistent();
}

/* Streams that end at once with nothing in them are failures that back off
 * (20, 40, 80, 160 ms at least here), not a tight loop. */
static void test_fake_empty_streams_back_off(void **state)
{
    const char *res = "w-empty";
    int w, first, last;
    long span;

    (void)state;
    fake_with_objects(res, 1, 0);
    w = fk_nreqs();
    for (int i = 0; i < 5; i++)
        fk_plan_add(PLAN_WATCH, 200, -1, 0, 0, NULL);
    fk_kick();
    AWAIT_TRUE(fk_plans_left() == 0, WAIT_MS);
    /* the five planned watches are the first five watches after w that the
     * plans answered; find the first and the fifth */
    first = fk_find_req(w, 1, 200);
    assert_true(first >= 0);
    last = first;
    for (int i = 0; i < 4; i++) {
        last = fk_find_req(last + 1, 1, 200);
        assert_true(last >= 0);
    }
    span = fk_req_at(last).t_ms - fk_req_at(first).t_ms;
    print_message("5 empty streams took %ld ms\n", span);
    assert_true(span >= 250);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_true(ERRORS(res) >= 4);
    /* and it recovers */
    fk_set("z", 1);
    AWAIT_TRUE(rec_count(0, KS_REFLECT_ADDED, "z") == 1, WAIT_MS);
    assert_rec_consistent();
}

/* ======================================================================
 * Part 2: the real kube-apiserver
 * ====================================================================== */

static ks_kube_client *real;     /* direct to kube-apiserver */
static char run_id[32];

#define NEED_REAL()                                          \
    do {                                                     \
        if (real == NULL) {                                  \
            print_message("KS_KUBECONFIG is unset: skip\n"); \
            skip();                                          \
        }                                                    \
    } while (0)

static int load_kubeconfig(ks_kube_config *cfg)
{
    const char *kc = getenv("KS_KUBECONFIG");

    if (kc == NULL || kc[0] == '\0')
        return 0;
    if (ks_kube_config_from_kubeconfig(kc, NULL, cfg) != KS_OK) {
        fprintf(stderr, "kubeconfig: %s\n", ks_status_last());
        return -1;
    }
    return 1;
}

static ks_reflector_resource users_res = {"iam.kubesphere.io", "v1beta1", "users", "User", 0};

static void start_real(ks_kube_client *kube, const ks_reflector_resource *res, int watch_s)
{
    ks_reflector_opts o = {
        .watch_min_s = watch_s,
        .watch_max_s = watch_s,
        .backoff_initial_ms = 50,
        .backoff_max_ms = 500,
    };

    rec_reset();
    assert_int_equal(ks_reflector_start(kube, res, &o, rec_on_event, rec_on_synced, NULL, &cur.r), KS_OK);
    AWAIT_TRUE(ks_reflector_has_synced(cur.r), 20000);
}

static json_t *user_obj(const char *name, const char *display)
{
    return json_pack("{s:s, s:s, s:{s:s}, s:{s:s, s:s}}", "apiVersion", "iam.kubesphere.io/v1beta1",
                     "kind", "User", "metadata", "name", name, "spec", "email", "t@example.com",
                     "displayName", display);
}

static void delete_quietly(const char *path)
{
    json_t *out = NULL;

    if (ks_kube_delete(real, path, &out) == KS_OK)
        json_decref(out);
}

static const char *rv_of(const json_t *obj)
{
    return json_string_value(json_object_get(json_object_get(obj, "metadata"), "resourceVersion"));
}

/* The API's objects of a collection as a snapshot. */
static snap *snap_api(const char *path)
{
    snap *s = calloc(1, sizeof(*s));
    json_t *list = NULL, *item;
    size_t i;

    assert_non_null(s);
    if (ks_kube_get(real, path, &list) != KS_OK) {
        s->overflow = 1;   /* never equal */
        return s;
    }
    json_array_foreach(json_object_get(list, "items"), i, item) {
        json_t *meta = json_object_get(item, "metadata");
        const char *ns = json_string_value(json_object_get(meta, "namespace"));
        if (s->n == SNAP_MAX) {
            s->overflow = 1;
            break;
        }
        snprintf(s->it[s->n].key, sizeof(s->it[s->n].key), "%s/%s", ns ? ns : "",
                 json_string_value(json_object_get(meta, "name")));
        snprintf(s->it[s->n].rv, sizeof(s->it[s->n].rv), "%s", rv_of(item));
        s->n++;
    }
    json_decref(list);
    return s;
}

static int store_equals_api(ks_reflector *r, const char *path)
{
    snap *a = snap_store(r), *b = snap_api(path);
    int eq = snap_equal(a, b);

    free(a);
    free(b);
    return eq;
}

static int teardown_real(void **state)
{
    (void)state;
    if (cur.kube)
        ks_kube_client_shutdown(cur.kube);   /* ends the watch at once */
    ks_reflector_stop(cur.r);
    cur.r = NULL;
    if (cur.kube) {
        ks_kube_client_destroy(cur.kube);
        cur.kube = NULL;
    }
    return 0;
}

/* Users: create, update, delete arrive as ADDED, MODIFIED, DELETED in that
 * order, with the versions the API returned. */
static void test_real_events_in_order(void **state)
{
    char name[96], path[256];
    json_t *obj, *created = NULL, *patched = NULL, *patch, *deleted = NULL;
    const char *users = "/apis/iam.kubesphere.io/v1beta1/users";
    int mark, seen = 0;
    rec_event e[3];

    (void)state;
    NEED_REAL();
    /* a client of its own, so the teardown's shutdown leaves `real` alone */
    {
        ks_kube_config cfg = {0};
        assert_int_equal(load_kubeconfig(&cfg), 1);
        assert_int_equal(ks_kube_client_create(&cfg, &cur.kube), KS_OK);
        ks_kube_config_clear(&cfg);
    }
    start_real(cur.kube, &users_res, 300);
    snprintf(name, sizeof(name), "ks-refl-%s-order", run_id);
    snprintf(path, sizeof(path), "%s/%s", users, name);
    mark = rec_n();
    obj = user_obj(name, "one");
    assert_int_equal(ks_kube_create(real, users, obj, &created), KS_OK);
    json_decref(obj);
    patch = json_pack("{s:{s:s}}", "spec", "displayName", "two");
    assert_int_equal(ks_kube_patch(real, path, patch, NULL, &patched), KS_OK);
    json_decref(patch);
    assert_int_equal(ks_kube_delete(real, path, &deleted), KS_OK);
    AWAIT_TRUE(rec_count(mark, KS_REFLECT_DELETED, name) == 1, WAIT_MS);
    for (int i = mark; i < rec_n(); i++) {
        rec_event x = rec_at(i);
        if (strcmp(x.name, name) == 0) {
            assert_true(seen < 3);
            e[seen++] = x;
        }
    }
    assert_int_equal(seen, 3);
    assert_int_equal(e[0].type, KS_REFLECT_ADDED);
    assert_string_equal(e[0].rv, rv_of(created));
    assert_int_equal(e[1].type, KS_REFLECT_MODIFIED);
    assert_string_equal(e[1].rv, rv_of(patched));
    assert_int_equal(e[2].type, KS_REFLECT_DELETED);
    assert_string_equal(e[0].ns, "");
    json_decref(created);
    json_decref(patched);
    json_decref(deleted);
    AWAIT_TRUE(store_equals_api(cur.r, users), WAIT_MS);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    assert_true(BAD("users") == 0);
    assert_rec_consistent();
}

/* timeoutSeconds=2: the server ends each stream; the reflector watches
 * again from the last version, without relisting, missing nothing and
 * repeating nothing. */
static void test_real_short_watches(void **state)
{
    char n1[96], n2[96], path[256];
    const char *users = "/apis/iam.kubesphere.io/v1beta1/users";
    json_t *obj;
    unsigned long w0;
    int mark;

    (void)state;
    NEED_REAL();
    {
        ks_kube_config cfg = {0};
        assert_int_equal(load_kubeconfig(&cfg), 1);
        assert_int_equal(ks_kube_client_create(&cfg, &cur.kube), KS_OK);
        ks_kube_config_clear(&cfg);
    }
    start_real(cur.kube, &users_res, 2);
    mark = rec_n();
    w0 = ks_reflector_watches(cur.r);
    snprintf(n1, sizeof(n1), "ks-refl-%s-short1", run_id);
    snprintf(n2, sizeof(n2), "ks-refl-%s-short2", run_id);
    obj = user_obj(n1, "one");
    assert_int_equal(ks_kube_create(real, users, obj, NULL), KS_OK);
    json_decref(obj);
    AWAIT_TRUE(rec_count(mark, KS_REFLECT_ADDED, n1) == 1, WAIT_MS);
    AWAIT_TRUE(ks_reflector_watches(cur.r) >= w0 + 3, 15000);
    obj = user_obj(n2, "two");
    assert_int_equal(ks_kube_create(real, users, obj, NULL), KS_OK);
    json_decref(obj);
    AWAIT_TRUE(rec_count(mark, KS_REFLECT_ADDED, n2) == 1, WAIT_MS);
    AWAIT_TRUE(ks_reflector_watches(cur.r) >= w0 + 4, 15000);
    AWAIT_TRUE(store_equals_api(cur.r, users), WAIT_MS);
    assert_int_equal(rec_count(mark, 0, n1), 1);
    assert_int_equal(rec_count(mark, 0, n2), 1);
    assert_int_equal(ks_reflector_relists(cur.r), 1);
    print_message("%lu watches, 1 list\n", ks_reflector_watches(cur.r));
    snprintf(path, sizeof(path), "%s/%s", users, n1);
    delete_quietly(path);
    snprintf(path, sizeof(path), "%s/%s", users, n2);
    delete_quietly(path);
    assert_rec_consistent();
}

/* ---- a TCP proxy that can cut the reflector off ---- */

#define PX_MAX 256

static struct {
    int lfd;
    int port;
    int upstream_port;
    pthread_t accept_th;
    int started;
    atomic_int stop;
    atomic_int paused;
    atomic_uint gen;
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int live;                 /* forwarding threads running */
    pthread_t th[PX_MAX];
    int nth;
} px = {.lfd = -1, .mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};

typedef struct {
    int a, b;
    unsigned gen;
} px_conn;

static int px_send_all(int fd, const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= (size_t)w;
    }
    return 0;
}

static void *px_forward(void *arg)
{
    px_conn *c = arg;
    char buf[16384];

    while (!atomic_load(&px.stop) && atomic_load(&px.gen) == c->gen) {
        struct pollfd p[2] = {{c->a, POLLIN, 0}, {c->b, POLLIN, 0}};
        int n = poll(p, 2, 50), done = 0;

        if (n < 0 && errno != EINTR)
            break;
        for (int i = 0; i < 2 && n > 0; i++) {
            if (p[i].revents & (POLLIN | POLLHUP | POLLERR)) {
                ssize_t r = recv(i ? c->b : c->a, buf, sizeof(buf), 0);
                if (r <= 0 || px_send_all(i ? c->a : c->b, buf, (size_t)r) != 0)
                    done = 1;
            }
        }
        if (done)
            break;
    }
    close(c->a);
    close(c->b);
    free(c);
    pthread_mutex_lock(&px.mu);
    px.live--;
    pthread_cond_broadcast(&px.cond);
    pthread_mutex_unlock(&px.mu);
    return NULL;
}

static void *px_accept(void *arg)
{
    (void)arg;
    while (!atomic_load(&px.stop)) {
        struct pollfd p = {px.lfd, POLLIN, 0};
        struct sockaddr_in up;
        px_conn *c;
        int fd, ufd;

        if (poll(&p, 1, 50) <= 0)
            continue;
        fd = accept(px.lfd, NULL, NULL);
        if (fd < 0)
            continue;
        if (atomic_load(&px.paused)) {
            close(fd);          /* cut off: the connection fails at once */
            continue;
        }
        ufd = socket(AF_INET, SOCK_STREAM, 0);
        memset(&up, 0, sizeof(up));
        up.sin_family = AF_INET;
        up.sin_port = htons((uint16_t)px.upstream_port);
        up.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        if (ufd < 0 || connect(ufd, (struct sockaddr *)&up, sizeof(up)) != 0) {
            if (ufd >= 0)
                close(ufd);
            close(fd);
            continue;
        }
        c = malloc(sizeof(*c));
        c->a = fd;
        c->b = ufd;
        c->gen = atomic_load(&px.gen);
        pthread_mutex_lock(&px.mu);
        if (px.nth == PX_MAX || pthread_create(&px.th[px.nth], NULL, px_forward, c) != 0) {
            pthread_mutex_unlock(&px.mu);
            close(fd);
            close(ufd);
            free(c);
            continue;
        }
        px.nth++;
        px.live++;
        pthread_mutex_unlock(&px.mu);
    }
    return NULL;
}

static int px_start(int upstream_port)
{
    struct sockaddr_in sa;
    socklen_t len = sizeof(sa);

    px.upstream_port = upstream_port;
    px.lfd = socket(AF_INET, SOCK_STREAM, 0);
    memset(&sa, 0, sizeof(sa));
    sa.sin_family = AF_INET;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (px.lfd < 0 || bind(px.lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
        listen(px.lfd, 64) != 0 || getsockname(px.lfd, (struct sockaddr *)&sa, &len) != 0)
        return -1;
    px.port = ntohs(sa.sin_port);
    atomic_store(&px.stop, 0);
    atomic_store(&px.paused, 0);
    if (pthread_create(&px.accept_th, NULL, px_accept, NULL) != 0)
        return -1;
    px.started = 1;
    return 0;
}

/* Cut every connection and refuse new ones; returns once all are closed. */
static void px_pause(void)
{
    atomic_store(&px.paused, 1);
    atomic_fetch_add(&px.gen, 1);
    pthread_mutex_lock(&px.mu);
    while (px.live > 0)
        pthread_cond_wait(&px.cond, &px.mu);
    pthread_mutex_unlock(&px.mu);
}

static void px_resume(void)
{
    atomic_store(&px.paused, 0);
}

static void px_stop(void)
{
    if (!px.started)
        return;
    atomic_store(&px.stop, 1);
    pthread_join(px.accept_th, NULL);
    for (int i = 0; i < px.nth; i++)
        pthread_join(px.th[i], NULL);
    close(px.lfd);
    px.lfd = -1;
    px.nth = 0;
    px.live = 0;
    px.started = 0;
}

/* ---- etcd's HTTP gateway ---- */

/* Compact etcd at its current revision. Returns the revision, 0 when
 * KS_ETCD_URL is unset. */
static long etcd_compact(void)
{
    const char *url = getenv("KS_ETCD_URL");
    ks_kube_client *etcd;
    ks_kube_response resp;
    json_t *body;
    char req[128];
    long rev;

    if (url == NULL || url[0] == '\0')
        return 0;
    etcd = client_for(url);
    assert_int_equal(ks_kube_request(etcd, "POST", "/v3/kv/range", "{\"key\":\"AA==\"}", NULL, 0, &resp),
                     KS_OK);
    body = json_loadb(resp.body, resp.body_len, 0, NULL);
    ks_kube_response_clear(&resp);
    assert_non_null(body);
    /* the gateway writes int64 as strings */
    rev = strtol(str_or(json_string_value(json_object_get(json_object_get(body, "header"), "revision")), "0"),
                 NULL, 10);
    json_decref(body);
    assert_true(rev > 0);
    snprintf(req, sizeof(req), "{\"revision\":%ld,\"physical\":true}", rev);
    assert_int_equal(ks_kube_request(etcd, "POST", "/v3/kv/compaction", req, NULL, 0, &resp), KS_OK);
    ks_kube_response_clear(&resp);
    ks_kube_client_destroy(etcd);
    return rev;
}

/* ---- the expired resourceVersion ---- */

static char crd_group[96], crd_name[128], crd_path[256], crd_items[256];

static int kube_ok(const char *path)
{
    ks_kube_response resp;
    ks_status st = ks_kube_request(real, "GET", path, NULL, NULL, 0, &resp);

    ks_kube_response_clear(&resp);
    return st == KS_OK;
}

static int crd_established(void)
{
    json_t *crd = NULL, *c;
    size_t i;
    int ok = 0;

    if (ks_kube_get(real, crd_path, &crd) != KS_OK)
        return 0;
    json_array_foreach(json_object_get(json_object_get(crd, "status"), "conditions"), i, c) {
        if (strcmp(str_or(json_string_value(json_object_get(c, "type")), ""), "Established") == 0 &&
            strcmp(str_or(json_string_value(json_object_get(c, "status")), ""), "True") == 0)
            ok = 1;
    }
    json_decref(crd);
    return ok;
}

typedef struct {
    char buf[2048];
    size_t n;
} first_bytes;

static int grab_first(const char *chunk, size_t len, void *arg)
{
    first_bytes *f = arg;
    size_t room = sizeof(f->buf) - 1 - f->n;

    if (len > room)
        len = room;
    memcpy(f->buf + f->n, chunk, len);
    f->n += len;
    f->buf[f->n] = '\0';
    return 1;   /* the first chunk is enough */
}

/* 1 when a watch from rv gets an ERROR 410: the watch cache that serves the
 * collection began after rv. */
static int watch_from_is_expired(const char *rv)
{
    char esc[256], path[1024];
    first_bytes f = {.n = 0};
    ks_kube_response resp;
    ks_status st;

    assert_int_equal(ks_kube_query_escape(rv, esc, sizeof(esc)), KS_OK);
    snprintf(path, sizeof(path), "%s?watch=1&resourceVersion=%s&timeoutSeconds=1", crd_items, esc);
    st = ks_kube_stream(real, path, 5000, grab_first, &f, &resp);
    ks_kube_response_clear(&resp);
    return st == KS_OK && strstr(f.buf, "\"code\":410") != NULL;
}

static void rtest_create(const char *name, int data)
{
    json_t *o = json_pack("{s:s, s:s, s:{s:s}, s:i}", "apiVersion", "", "kind", "RTest", "metadata",
                          "name", name, "data", data);
    char api[160];

    snprintf(api, sizeof(api), "%s/v1", crd_group);
    json_object_set_new(o, "apiVersion", json_string(api));
    assert_int_equal(ks_kube_create(real, crd_items, o, NULL), KS_OK);
    json_decref(o);
}

static int teardown_expired(void **state)
{
    teardown_real(state);
    px_stop();
    if (crd_path[0] && real)
        delete_quietly(crd_path);
    crd_path[0] = '\0';
    return 0;
}

static void test_real_expired_version_relists(void **state)
{
    ks_reflector_resource res = {crd_group, "v1", "rtests", "RTest", 0};
    ks_kube_config cfg = {0};
    char o[4][96], path[384], url[64], cat[64], a0[64];
    const char *port;
    json_t *crd, *patch;
    int mark;
    long rev;

    (void)state;
    NEED_REAL();
    /* a CRD of this run's own */
    snprintf(crd_group, sizeof(crd_group), "r%s.reflector-test.kscore.io", run_id);
    snprintf(crd_name, sizeof(crd_name), "rtests.%s", crd_group);
    snprintf(crd_path, sizeof(crd_path), "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/%s",
             crd_name);
    snprintf(crd_items, sizeof(crd_items), "/apis/%s/v1/rtests", crd_group);
    crd = json_pack(
        "{s:s, s:s, s:{s:s}, s:{s:s, s:s, s:{s:s, s:s, s:s, s:s}, s:[{s:s, s:b, s:b, s:{s:{s:s, s:b}}}]}}",
        "apiVersion", "apiextensions.k8s.io/v1", "kind", "CustomResourceDefinition", "metadata",
        "name", crd_name, "spec", "group", crd_group, "scope", "Cluster", "names", "plural", "rtests",
        "singular", "rtest", "kind", "RTest", "listKind", "RTestList", "versions", "name", "v1",
        "served", 1, "storage", 1, "schema", "openAPIV3Schema", "type", "object",
        "x-kubernetes-preserve-unknown-fields", 1);
    assert_non_null(crd);
    assert_int_equal(ks_kube_create(real, "/apis/apiextensions.k8s.io/v1/customresourcedefinitions",
                                    crd, NULL),
                     KS_OK);
    json_decref(crd);
    AWAIT_TRUE(crd_established(), 30000);
    AWAIT_TRUE(kube_ok(crd_items), 30000);
    for (int i = 0; i < 4; i++)
        snprintf(o[i], sizeof(o[i]), "o%d", i + 1);
    rtest_create(o[0], 1);
    rtest_create(o[1], 1);
    rtest_create(o[2], 1);

    /* the reflector reaches kube-apiserver through the proxy */
    assert_int_equal(load_kubeconfig(&cfg), 1);
    port = strrchr(cfg.server, ':');
    assert_non_null(port);
    assert_int_equal(px_start((int)strtol(port + 1, NULL, 10)), 0);
    free(cfg.server);
    snprintf(url, sizeof(url), "https://127.0.0.1:%d", px.port);
    cfg.server = strdup(url);
    assert_int_equal(ks_kube_client_create(&cfg, &cur.kube), KS_OK);
    ks_kube_config_clear(&cfg);
    start_real(cur.kube, &res, 300);
    AWAIT_TRUE(store_equals_api(cur.r, crd_items), WAIT_MS);
    assert_int_equal(ks_reflector_size(cur.r), 3);

    /* cut off; meanwhile: changes, a new watch cache, compaction */
    px_pause();
    mark = rec_n();
    /* the reflector's version is at most the collection's version now */
    {
        json_t *list = NULL;
        assert_int_equal(ks_kube_get(real, crd_items, &list), KS_OK);
        snprintf(a0, sizeof(a0), "%s", rv_of(list));
        json_decref(list);
    }
    snprintf(path, sizeof(path), "%s/%s", crd_items, o[0]);
    delete_quietly(path);
    snprintf(path, sizeof(path), "%s/%s", crd_items, o[1]);
    patch = json_pack("{s:i}", "data", 2);
    assert_int_equal(ks_kube_patch(real, path, patch, NULL, NULL), KS_OK);
    json_decref(patch);
    rtest_create(o[3], 1);
    snprintf(cat, sizeof(cat), "kscore-test-%s", run_id);
    patch = json_pack("{s:{s:{s:[s]}}}", "spec", "names", "categories", cat);
    assert_int_equal(ks_kube_patch(real, crd_path, patch, NULL, NULL), KS_OK);
    json_decref(patch);
    /* the CRD's storage, and so its watch cache, is rebuilt: it begins
     * after every version the reflector can hold */
    AWAIT_TRUE(watch_from_is_expired(a0), 30000);
    rev = etcd_compact();
    print_message("etcd compacted at revision %ld\n", rev);
    assert_int_equal(rec_n(), mark);
    px_resume();

    AWAIT_TRUE(ks_reflector_relists(cur.r) >= 2, 20000);
    AWAIT_TRUE(store_equals_api(cur.r, crd_items), WAIT_MS);
    AWAIT_TRUE(rec_count(mark, 0, NULL) == 3, WAIT_MS);
    assert_int_equal(rec_count(mark, KS_REFLECT_DELETED, o[0]), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_MODIFIED, o[1]), 1);
    assert_int_equal(rec_count(mark, KS_REFLECT_ADDED, o[3]), 1);
    assert_int_equal(rec_count(mark, 0, o[2]), 0);
    assert_int_equal(ks_reflector_size(cur.r), 3);
    print_message("%lu lists, %lu watches\n", ks_reflector_relists(cur.r), ks_reflector_watches(cur.r));
    assert_rec_consistent();
}

/* ---- main ---- */

static int group_setup(void **state)
{
    ks_kube_config cfg = {0};
    int rc;

    (void)state;
    ks_log_init("test_reflector", KS_LOG_WARN);
    snprintf(run_id, sizeof(run_id), "%ld-%ld", (long)getpid(), (long)time(NULL) % 100000);
    if (fk_start() != 0) {
        fprintf(stderr, "cannot start the fake kube-apiserver\n");
        return -1;
    }
    rc = load_kubeconfig(&cfg);
    if (rc < 0)
        return -1;
    if (rc > 0) {
        if (ks_kube_client_create(&cfg, &real) != KS_OK) {
            fprintf(stderr, "client: %s\n", ks_status_last());
            ks_kube_config_clear(&cfg);
            return -1;
        }
        ks_kube_config_clear(&cfg);
    }
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    fk_stop();
    ks_kube_client_destroy(real);
    real = NULL;
    return 0;
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_teardown(test_fake_paging_and_watch, teardown_cur),
        cmocka_unit_test_teardown(test_fake_events_split_across_chunks, teardown_cur),
        cmocka_unit_test_teardown(test_fake_malformed_json, teardown_cur),
        cmocka_unit_test_teardown(test_fake_truncated, teardown_cur),
        cmocka_unit_test_teardown(test_fake_unknown_event_type, teardown_cur),
        cmocka_unit_test_teardown(test_fake_object_without_metadata, teardown_cur),
        cmocka_unit_test_teardown(test_fake_huge_event, teardown_cur),
        cmocka_unit_test_teardown(test_fake_error_event_410, teardown_cur),
        cmocka_unit_test_teardown(test_fake_http_410_on_watch, teardown_cur),
        cmocka_unit_test_teardown(test_fake_watch_from_expired_version, teardown_cur),
        cmocka_unit_test_teardown(test_fake_retry_after, teardown_cur),
        cmocka_unit_test_teardown(test_fake_410_on_continue, teardown_cur),
        cmocka_unit_test_teardown(test_fake_empty_streams_back_off, teardown_cur),
        cmocka_unit_test_teardown(test_real_events_in_order, teardown_real),
        cmocka_unit_test_teardown(test_real_short_watches, teardown_real),
        cmocka_unit_test_teardown(test_real_expired_version_relists, teardown_expired),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
