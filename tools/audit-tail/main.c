/* kscore-audit-tail: follow the audit stream live, or replay it from a
 * time, printing one JSON object per event (KubeSphere's event shape, as
 * the query API returns it). docs/audit.md, "Subscribers".
 *
 *   kscore-audit-tail [--nats-url URL] [--since WHEN | --from-seq N]
 *                     [--user U] [--verb V] [--namespace N] [--workspace W]
 *                     [--resource R] [--count N]
 *
 * Live (default): a core NATS subscription on ks.audit.<ws>.<ns>.<res>.<verb>
 * (each given filter escaped into its token, '*' otherwise): what is
 * published from now on. --since/--from-seq: an ordered ephemeral JetStream
 * consumer of KS_AUDIT from that point, then on live. --user is checked on
 * each event (the user is not in the subject). Exit 0 on SIGINT/SIGTERM or
 * after --count events, 1 when NATS cannot be reached, 2 on bad usage. */
#include <errno.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "bus_replay.h"
#include "log.h"
#include "subject.h"

/* The same rendering as the query API (tools link libkscore only). */
#include "../../services/audit/event.c"

#define PROGRAM "kscore-audit-tail"

typedef struct {
    const char *nats_url;
    const char *since;
    const char *from_seq;
    const char *user, *verb, *ns, *ws, *resource;
    long long count;
} tail_opts;

static atomic_llong printed;
static long long limit;
static const char *user_filter;
static pthread_mutex_t out_mu = PTHREAD_MUTEX_INITIALIZER;

static void usage(FILE *f)
{
    fprintf(f,
            "usage: " PROGRAM " [options]\n"
            "Print audit events as JSON lines: those published from now on, or the stream's\n"
            "from a point in time on.\n\n"
            "  --nats-url URL     NATS server (env KS_NATS_URL; default nats://127.0.0.1:4222)\n"
            "  --since WHEN       replay from WHEN: Unix seconds, RFC 3339 (2024-05-01T12:00:00Z)\n"
            "                     or a duration ago (90s, 15m, 2h, 7d)\n"
            "  --from-seq N       replay from stream sequence N\n"
            "  --user NAME        only events of this user\n"
            "  --verb VERB        only this verb (get, list, create, update, patch, delete, ...)\n"
            "  --namespace NS     only this namespace (\"\" for events without one)\n"
            "  --workspace WS     only this workspace (\"\" for events without one)\n"
            "  --resource RES     only this resource (pods, users, ...)\n"
            "  --count N          exit after N events\n"
            "  --help             this text\n\n"
            "Exit status: 0 after SIGINT, SIGTERM or --count; 1 when NATS cannot be reached;\n"
            "2 on bad usage.\n");
}

/* The value of --name VALUE or --name=VALUE at argv[*i]; NULL if not this flag. */
static const char *flag(int argc, char **argv, int *i, const char *name, int *missing)
{
    size_t n = strlen(name);
    const char *a = argv[*i];

    if (strncmp(a, name, n) != 0)
        return NULL;
    if (a[n] == '=')
        return a + n + 1;
    if (a[n] != '\0')
        return NULL;
    if (*i + 1 >= argc) {
        *missing = 1;
        return NULL;
    }
    return argv[++*i];
}

static int parse_args(int argc, char **argv, tail_opts *o)
{
    for (int i = 1; i < argc; i++) {
        const char *v;
        int missing = 0;
        char *end;

        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return 1;
#define TAKE(name, field)                                                  \
    if ((v = flag(argc, argv, &i, name, &missing)) != NULL) {              \
        o->field = v;                                                      \
        continue;                                                          \
    }                                                                      \
    if (missing) {                                                         \
        fprintf(stderr, PROGRAM ": %s needs a value\n", name);             \
        return -1;                                                         \
    }
        TAKE("--nats-url", nats_url)
        TAKE("--since", since)
        TAKE("--from-seq", from_seq)
        TAKE("--user", user)
        TAKE("--verb", verb)
        TAKE("--namespace", ns)
        TAKE("--workspace", ws)
        TAKE("--resource", resource)
#undef TAKE
        if ((v = flag(argc, argv, &i, "--count", &missing)) != NULL) {
            errno = 0;
            o->count = strtoll(v, &end, 10);
            if (errno != 0 || *end != '\0' || v[0] == '\0' || o->count < 1) {
                fprintf(stderr, PROGRAM ": --count must be a positive integer, not \"%s\"\n", v);
                return -1;
            }
            continue;
        }
        fprintf(stderr, PROGRAM ": unknown argument %s (see --help)\n", argv[i]);
        return -1;
    }
    if (o->since != NULL && o->from_seq != NULL) {
        fprintf(stderr, PROGRAM ": --since and --from-seq exclude each other\n");
        return -1;
    }
    return 0;
}

/* WHEN -> Unix ns: seconds, RFC 3339 UTC, or a duration ago. */
static int parse_since(const char *s, int64_t *out_ns)
{
    struct tm tm = {0};
    const char *rest;
    char *end;
    long long v;
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    if ((rest = strptime(s, "%Y-%m-%dT%H:%M:%S", &tm)) != NULL && (*rest == 'Z' || *rest == '\0')) {
        *out_ns = (int64_t)timegm(&tm) * 1000000000LL;
        return 0;
    }
    errno = 0;
    v = strtoll(s, &end, 10);
    if (errno != 0 || end == s || v < 0)
        return -1;
    if (*end == '\0') {
        *out_ns = (int64_t)v * 1000000000LL;
        return 0;
    }
    if (end[1] != '\0')
        return -1;
    switch (*end) {
    case 's': break;
    case 'm': v *= 60; break;
    case 'h': v *= 3600; break;
    case 'd': v *= 86400; break;
    default: return -1;
    }
    *out_ns = ((int64_t)now.tv_sec - v) * 1000000000LL;
    return *out_ns > 0 ? 0 : -1;
}

static void on_event(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__AuditEvent *ev = NULL;
    json_t *j;
    char *line;

    if (ks_codec_unpack(&kscore__v1__audit_event__descriptor, ks_bus_msg_data(msg),
                        ks_bus_msg_len(msg), AUD_EVENT_MAX_BYTES, (ProtobufCMessage **)&ev) != KS_OK) {
        fprintf(stderr, PROGRAM ": a message on %s is not an AuditEvent, skipped\n",
                ks_bus_msg_subject(msg));
        goto out;
    }
    if (user_filter != NULL &&
        strcmp(ev->user && ev->user->username ? ev->user->username : "", user_filter) != 0)
        goto out;
    if (limit > 0 && atomic_load(&printed) >= limit)
        goto out;
    j = aud_event_json(ev);
    line = j ? json_dumps(j, JSON_COMPACT) : NULL;
    json_decref(j);
    if (line != NULL) {
        pthread_mutex_lock(&out_mu);
        fputs(line, stdout);
        fputc('\n', stdout);
        fflush(stdout);
        pthread_mutex_unlock(&out_mu);
        free(line);
        if (atomic_fetch_add(&printed, 1) + 1 == limit && limit > 0)
            kill(getpid(), SIGTERM);
    }
out:
    ks_codec_free(ev ? &ev->base : NULL);
    ks_bus_msg_destroy(msg);
}

/* ks.audit.<ws>.<ns>.<res>.<verb>, '*' where no filter is given. */
static int build_subject(const tail_opts *o, char *out, size_t cap)
{
    const char *parts[4] = {o->ws, o->ns, o->resource, o->verb};
    size_t used;

    snprintf(out, cap, "ks.audit");
    used = strlen(out);
    for (int i = 0; i < 4; i++) {
        char tok[KS_SUBJECT_ESCAPED_MAX(256)];
        if (parts[i] == NULL)
            snprintf(tok, sizeof(tok), "*");
        else if (strlen(parts[i]) > 253 ||
                 ks_subject_escape_token(parts[i], tok, sizeof(tok)) != KS_OK)
            return -1;
        if (used + 1 + strlen(tok) + 1 > cap)
            return -1;
        out[used++] = '.';
        memcpy(out + used, tok, strlen(tok) + 1);
        used += strlen(tok);
    }
    return 0;
}

int main(int argc, char **argv)
{
    tail_opts o = {0};
    ks_bus_opts bo = {0};
    ks_bus *bus = NULL;
    ks_bus_sub *sub = NULL;
    ks_bus_replay *rep = NULL;
    char subject[4096];
    sigset_t set;
    int sig = 0, rc = 1, r;
    int64_t since_ns = 0;
    unsigned long long from_seq = 0;

    ks_log_init("audit-tail", KS_LOG_WARN);
    r = parse_args(argc, argv, &o);
    if (r != 0) {
        if (r > 0)
            usage(stdout);
        return r > 0 ? 0 : 2;
    }
    if (o.nats_url == NULL)
        o.nats_url = getenv("KS_NATS_URL") && getenv("KS_NATS_URL")[0] ? getenv("KS_NATS_URL")
                                                                        : "nats://127.0.0.1:4222";
    if (o.since != NULL && parse_since(o.since, &since_ns) != 0) {
        fprintf(stderr,
                PROGRAM ": --since \"%s\": Unix seconds, RFC 3339 (2024-05-01T12:00:00Z) or a "
                        "duration ago (15m, 2h, 7d)\n",
                o.since);
        return 2;
    }
    if (o.from_seq != NULL) {
        char *end;
        errno = 0;
        from_seq = strtoull(o.from_seq, &end, 10);
        if (errno != 0 || *end != '\0' || o.from_seq[0] == '\0' || o.from_seq[0] == '-' ||
            from_seq == 0) {
            fprintf(stderr, PROGRAM ": --from-seq must be a positive integer\n");
            return 2;
        }
    }
    if (build_subject(&o, subject, sizeof(subject)) != 0) {
        fprintf(stderr, PROGRAM ": a filter value is too long\n");
        return 2;
    }
    limit = o.count;
    user_filter = o.user;

    /* every thread cnats starts inherits the mask: signals come to sigwait */
    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);

    bo.url = o.nats_url;
    bo.name = PROGRAM;
    bo.wait_connected = 1;
    if (ks_bus_connect(&bo, &bus) != KS_OK) {
        fprintf(stderr, PROGRAM ": cannot connect to %s: %s\n", o.nats_url, ks_status_last());
        goto out;
    }
    if (since_ns > 0 || from_seq > 0) {
        ks_bus_replay_cfg rc_ = {.stream = "KS_AUDIT", .filter_subject = subject,
                                 .start_unix_ns = since_ns, .start_seq = from_seq};
        if (ks_bus_replay_start(bus, &rc_, on_event, NULL, &rep) != KS_OK) {
            fprintf(stderr, PROGRAM ": cannot replay KS_AUDIT: %s\n", ks_status_last());
            goto out;
        }
        fprintf(stderr, PROGRAM ": replaying %s from %s\n", subject,
                o.since ? o.since : o.from_seq);
    } else {
        if (ks_bus_subscribe(bus, subject, NULL, on_event, NULL, &sub) != KS_OK ||
            ks_bus_flush(bus, 5000) != KS_OK) {
            fprintf(stderr, PROGRAM ": cannot subscribe to %s: %s\n", subject, ks_status_last());
            goto out;
        }
        fprintf(stderr, PROGRAM ": following %s\n", subject);
    }
    while (sigwait(&set, &sig) != 0)
        ;
    rc = 0;
out:
    ks_bus_replay_stop(rep);
    ks_bus_unsubscribe(sub);
    ks_bus_destroy(bus);
    return rc;
}
