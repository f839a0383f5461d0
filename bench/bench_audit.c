/* bench_audit: the audit benchmark of issue 7 (docs/audit.md, docs/benchmarks.md).
 *
 * Ingestion, publish to committed, against two baselines measured in the
 * same run:
 *   1. raw: js_PublishAsync of N events into KS_AUDIT, until every ack
 *      (ks_bus_js_publish_async, no consumer running);
 *   2. raw: batched SQLite inserts (1,000 a transaction) of the same N rows,
 *      decoded beforehand, into the store's schema (same columns, indexes,
 *      trigram index and search terms; plain prepared statements: no
 *      decoding, no chain, no cache of known terms);
 *   3. the pipeline: the audit service's consumer and store upkeep
 *      (services/audit/consumer.c, store.c, sweeper.c, compiled in: the
 *      consumer's connection commits, the sweeper's checkpoints the WAL)
 *      bound to its durable consumer on a fresh stream and store; a second
 *      connection publishes the N events; the clock stops when the store's
 *      position reaches N (every event committed, in the store's own
 *      transactions).
 * Both store runs use the service's default synchronous=FULL; the same
 * three again with synchronous=NORMAL are reported too. Also reported: the
 * pipeline's store transactions (count, mean size, share of the run) and
 * the CPU per event of the raw loop, the writer thread, this process and
 * the bench's own nats-server (steadier than the rates on a shared machine).
 *
 * Queries: a store of M events (1,000,000) built with the store's own
 * append path, then five typical filtered queries, each Q times with
 * varying values, through the service's parse + run + JSON path (the total
 * count included, as the API answers it); p50, p99 and max. Plus
 * statistics, a histogram and a continue-token page, for information.
 *
 * Environment: KS_NATS_URL (scripts/bench.sh's server; without it the bench
 * starts its own nats-server on a free 127.0.0.1 port in a temporary
 * folder), KS_BENCH_AUDIT_EVENTS (N, 100000), KS_BENCH_AUDIT_ROWS (M,
 * 1000000), KS_BENCH_AUDIT_QUERIES (Q, 200), KS_BENCH_AUDIT_BATCH (the
 * pipeline's batch_max, 1000 like the service's default). The stream KS_AUDIT of that
 * server is deleted and recreated. Exits non-zero only when something
 * could not be measured; targets are judged in the output. */
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <netinet/in.h>
#include <arpa/inet.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../services/audit/consumer.c"
#include "../services/audit/event.c"
#include "../services/audit/query.c"
#include "../services/audit/store.c"
#include "../services/audit/sweeper.c"
#include "codec.h"
#include "subject.h"
#include "uuid.h"

#define DAY_US 86400000000LL

typedef struct {
    uint8_t *blob;
    size_t len;
    char subject[256];
    char id[KS_UUID_STR_SIZE];
} ev;

static char dir[128];
static char nats_url[256];
static pid_t own_nats;
static int64_t now_base_us;

/* ---- small helpers ---- */

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static double cpu_s(clockid_t id)
{
    struct timespec ts;
    if (clock_gettime(id, &ts) != 0)
        return 0;
    return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

static long env_long(const char *name, long def, long min, long max)
{
    const char *v = getenv(name);
    char *end;
    long n;

    if (v == NULL || v[0] == '\0')
        return def;
    errno = 0;
    n = strtol(v, &end, 10);
    if (errno != 0 || *end != '\0' || n < min || n > max) {
        fprintf(stderr, "bench_audit: %s must be an integer in [%ld, %ld]\n", name, min, max);
        exit(2);
    }
    return n;
}

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;

static uint64_t rnd(void)
{
    uint64_t x = rng_state;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    return rng_state = x;
}

static int pick(const int *weights, int n)
{
    int total = 0, r;
    for (int i = 0; i < n; i++)
        total += weights[i];
    r = (int)(rnd() % (uint64_t)total);
    for (int i = 0; i < n; i++) {
        if (r < weights[i])
            return i;
        r -= weights[i];
    }
    return n - 1;
}

/* ---- realistic events ---- */

#define NUSERS 200
#define NWS 20
#define NNS 200
#define NNAMES 50000

static char users[NUSERS][64];
static char wss[NWS][24];
static char nss[NNS][32];
static char names[NNAMES][48];
static const char *const verbs[] = {"get", "list", "watch", "create", "update", "patch", "delete"};
static const int verb_w[] = {40, 30, 5, 8, 7, 5, 5};
static const char *const resources[] = {
    "pods", "deployments", "services", "configmaps", "secrets", "namespaces", "users",
    "workspaces", "roles", "rolebindings", "statefulsets", "daemonsets", "jobs", "cronjobs",
    "ingresses", "persistentvolumeclaims", "events", "nodes", "globalroles", "clusterroles"};
static const int res_w[] = {30, 12, 8, 8, 5, 4, 3, 3, 3, 3, 3, 3, 2, 2, 2, 2, 2, 2, 1, 2};
static const int codes[] = {200, 201, 404, 403, 409, 500};
static const int code_w[] = {85, 5, 5, 3, 1, 1};
static const char *const words[] = {
    "web", "api", "frontend", "backend", "redis", "mysql", "kafka", "nginx", "auth", "billing",
    "search", "cache", "worker", "gateway", "ingest", "report", "metrics", "logs", "queue",
    "scheduler", "payments", "orders", "catalog", "profile", "notify", "media", "stream",
    "export", "import", "sync"};

static void gen_vocab(void)
{
    for (int i = 0; i < NUSERS; i++) {
        if (i < 20)
            snprintf(users[i], sizeof(users[i]), "system:serviceaccount:kubesphere-system:sa-%d", i);
        else
            snprintf(users[i], sizeof(users[i]), "user%03d@example.com", i);
    }
    for (int i = 0; i < NWS; i++)
        snprintf(wss[i], sizeof(wss[i]), "workspace-%02d", i);
    for (int i = 0; i < NNS; i++)
        snprintf(nss[i], sizeof(nss[i]), "project-%03d", i);
    for (int i = 0; i < NNAMES; i++)
        snprintf(names[i], sizeof(names[i]), "%s-%s-%05x", words[rnd() % 30], words[rnd() % 30],
                 (unsigned)(rnd() & 0xfffff));
}

/* Event i of a store spread over the last 30 days (ts_us), packed. */
static void gen_event(ev *e, int64_t ts_us)
{
    Kscore__V1__AuditEvent m = KSCORE__V1__AUDIT_EVENT__INIT;
    Kscore__V1__UserInfo u = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__ObjectReference o = KSCORE__V1__OBJECT_REFERENCE__INIT;
    Kscore__V1__Status rs = KSCORE__V1__STATUS__INIT;
    char *groups[] = {"system:authenticated"};
    char ip[24], uri[256], *ips[] = {ip};
    /* 80% of the traffic from the 20 service accounts */
    int ui = rnd() % 10 < 8 ? (int)(rnd() % 20) : 20 + (int)(rnd() % (NUSERS - 20));
    int cluster = rnd() % 10 == 0;
    int nsi = (int)(rnd() % NNS);
    const char *ns = cluster ? "" : nss[nsi];
    const char *ws = cluster ? "" : wss[nsi % NWS];
    const char *res = resources[pick(res_w, 20)];
    const char *verb = verbs[pick(verb_w, 7)];
    const char *name = verb[0] == 'l' || verb[0] == 'w' ? "" : names[rnd() % NNAMES];
    int code = codes[pick(code_w, 6)];
    int lvl = (int)(rnd() % 20);

    if (ks_uuid_v7(e->id) != KS_OK) {
        fprintf(stderr, "bench_audit: no random bytes for a UUID\n");
        exit(1);
    }
    snprintf(ip, sizeof(ip), "10.%d.%d.%d", (int)(rnd() % 4), (int)(rnd() % 8), (int)(rnd() % 50));
    snprintf(uri, sizeof(uri), "/api/v1/namespaces/%s/%s/%s", ns, res, name);
    m.audit_id = e->id;
    m.level = lvl < 16 ? "Metadata" : lvl < 19 ? "Request" : "RequestResponse";
    m.stage = "ResponseComplete";
    m.request_uri = uri;
    m.verb = (char *)verb;
    u.username = users[ui];
    u.groups = groups;
    u.n_groups = 1;
    m.user = &u;
    m.source_ips = ips;
    m.n_source_ips = 1;
    m.user_agent = ui < 20 ? "kubesphere/v4.1.0" : "Mozilla/5.0 (X11; Linux x86_64) ks-console";
    o.resource = (char *)res;
    o.namespace_ = (char *)ns;
    o.name = (char *)name;
    o.api_version = "v1";
    m.object_ref = &o;
    rs.code = code;
    rs.status = code < 400 ? "Success" : "Failure";
    rs.reason = code == 403 ? "Forbidden" : code == 404 ? "NotFound" : "";
    m.response_status = &rs;
    m.request_received_unix_us = ts_us;
    m.stage_unix_us = ts_us + 2000 + (int64_t)(rnd() % 50000);
    m.workspace = (char *)ws;
    m.cluster = "host";
    if (ks_codec_pack(&m.base, &e->blob, &e->len) != KS_OK ||
        ks_subject_audit(ws, ns, res, verb, e->subject, sizeof(e->subject)) != KS_OK) {
        fprintf(stderr, "bench_audit: cannot build an event\n");
        exit(1);
    }
}

static ev *gen_events(size_t n)
{
    ev *v = calloc(n, sizeof(*v));
    int64_t t = wall_us() - 60000000LL;

    if (v == NULL)
        exit(1);
    for (size_t i = 0; i < n; i++)
        gen_event(&v[i], t + (int64_t)i * 50);
    return v;
}

static void free_events(ev *v, size_t n)
{
    for (size_t i = 0; v != NULL && i < n; i++)
        free(v[i].blob);
    free(v);
}

/* ---- nats-server ---- */

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int start_nats(void)
{
    char port[16], sd[200], logf[200];
    const char *bin = "/usr/sbin/nats-server";
    int p = free_port();
    pid_t parent = getpid();

    snprintf(port, sizeof(port), "%d", p);
    snprintf(sd, sizeof(sd), "%s/js", dir);
    snprintf(logf, sizeof(logf), "%s/nats.log", dir);
    snprintf(nats_url, sizeof(nats_url), "nats://127.0.0.1:%d", p);
    own_nats = fork();
    if (own_nats == 0) {
        int fd = open(logf, O_WRONLY | O_CREAT | O_TRUNC, 0644);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (fd >= 0) {
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execl(bin, bin, "-a", "127.0.0.1", "-p", port, "-js", "-sd", sd, (char *)NULL);
        _exit(127);
    }
    for (int i = 0; i < 200; i++) {
        ks_bus_opts o = {.url = nats_url, .wait_connected = 1, .connect_timeout_ms = 200};
        ks_bus *b = NULL;
        if (ks_bus_connect(&o, &b) == KS_OK) {
            ks_bus_destroy(b);
            return 0;
        }
        usleep(50000);
    }
    return -1;
}

static void stop_nats(void)
{
    if (own_nats > 0) {
        kill(own_nats, SIGTERM);
        waitpid(own_nats, NULL, 0);
        own_nats = 0;
    }
}

/* ---- ingestion ---- */

static atomic_long acks, ack_errors;

static void on_ack(void *arg, const char *subject, const char *msg_id, ks_status st, uint64_t seq)
{
    if (st == KS_OK)
        atomic_fetch_add(&acks, 1);
    else
        atomic_fetch_add(&ack_errors, 1);
}

static ks_bus *connect_bus(const char *name, int with_acks)
{
    ks_bus_opts o = {.url = nats_url, .name = name, .wait_connected = 1,
                     .js_max_wait_ms = 30000};
    ks_bus *b = NULL;

    if (with_acks)
        o.on_ack = on_ack;
    if (ks_bus_connect(&o, &b) != KS_OK) {
        fprintf(stderr, "bench_audit: cannot connect to %s: %s\n", nats_url, ks_status_last());
        exit(1);
    }
    return b;
}

static void fresh_stream(ks_bus *b)
{
    const char *subjects[] = {AUD_STREAM_SUBJECTS};
    ks_bus_stream_cfg sc = {.name = AUD_STREAM, .subjects = subjects, .nsubjects = 1,
                            .max_age_ms = 30LL * 86400000, .max_bytes = 8LL << 30,
                            .duplicate_window_ms = 120000, .replicas = 1};

    (void)ks_bus_stream_delete(b, AUD_STREAM);
    if (ks_bus_stream_ensure(b, &sc) != KS_OK) {
        fprintf(stderr, "bench_audit: stream: %s\n", ks_status_last());
        exit(1);
    }
}

/* Publish every event asynchronously; returns when all are acked. */
static void publish_all(ks_bus *b, const ev *v, size_t n)
{
    long before = atomic_load(&acks);

    for (size_t i = 0; i < n; i++)
        while (ks_bus_js_publish_async(b, v[i].subject, v[i].blob, v[i].len, v[i].id) != KS_OK)
            usleep(200);
    if (ks_bus_js_publish_async_complete(b, 60000) != KS_OK || atomic_load(&ack_errors) != 0 ||
        atomic_load(&acks) - before != (long)n) {
        fprintf(stderr, "bench_audit: publishes failed: %ld acked, %ld errors\n",
                atomic_load(&acks) - before, atomic_load(&ack_errors));
        exit(1);
    }
}

static double run_publish_baseline(const ev *v, size_t n)
{
    ks_bus *b = connect_bus("bench-audit-pub", 1);
    double t0, t1;

    fresh_stream(b);
    t0 = now_s();
    publish_all(b, v, n);
    t1 = now_s();
    (void)ks_bus_stream_delete(b, AUD_STREAM);
    ks_bus_destroy(b);
    return (double)n / (t1 - t0);
}

static void rm_db(const char *path)
{
    char p[300];
    unlink(path);
    snprintf(p, sizeof(p), "%s-wal", path);
    unlink(p);
    snprintf(p, sizeof(p), "%s-shm", path);
    unlink(p);
}

static double raw_cpu_us[2];   /* CPU per row of the raw SQLite baseline: NORMAL, FULL */

/* The same rows, plain batched INSERTs into the store's schema. */
static double run_sqlite_baseline(const ev *v, size_t n, int sync_full)
{
    char path[200];
    aud_store_opts so = {.sync_full = sync_full};
    aud_store *s = NULL;
    aud_row *rows = calloc(n, sizeof(*rows));
    sqlite3_stmt *ins = NULL, *fts = NULL, *term = NULL;
    sqlite3 *db;
    uint8_t chain[32] = {0};
    double t0, t1, c0;

    snprintf(path, sizeof(path), "%s/raw.db", dir);
    rm_db(path);
    if (rows == NULL || aud_store_open(path, AUD_STORE_WRITE, &so, &s) != KS_OK) {
        fprintf(stderr, "bench_audit: raw store: %s\n", ks_status_last());
        exit(1);
    }
    for (size_t i = 0; i < n; i++)
        if (aud_row_decode(v[i].blob, v[i].len, &rows[i]) != KS_OK) {
            fprintf(stderr, "bench_audit: decode: %s\n", ks_status_last());
            exit(1);
        }
    db = aud_store_db(s);
    if (sqlite3_prepare_v2(db,
                           "INSERT OR IGNORE INTO aud_events(" EVENT_COLUMNS ") VALUES (?1, ?2, ?3,"
                           " ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18,"
                           " ?19, ?20, ?21, ?22, ?23, ?24, ?25, ?26)",
                           -1, &ins, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT INTO aud_fts(rowid, name, source_ips) VALUES (?, ?, ?)", -1,
                           &fts, NULL) != SQLITE_OK ||
        sqlite3_prepare_v2(db, "INSERT OR IGNORE INTO aud_terms(field, value) VALUES (?, ?)", -1,
                           &term, NULL) != SQLITE_OK) {
        fprintf(stderr, "bench_audit: prepare: %s\n", sqlite3_errmsg(db));
        exit(1);
    }
    c0 = cpu_s(CLOCK_THREAD_CPUTIME_ID);
    t0 = now_s();
    for (size_t i = 0; i < n; i++) {
        const aud_row *r = &rows[i];
        if (i % 1000 == 0)
            sqlite3_exec(db, "BEGIN", NULL, NULL, NULL);
        sqlite3_reset(ins);
        sqlite3_bind_int64(ins, 1, (sqlite3_int64)i + 1);
        bind_text(ins, 2, r->audit_id);
        sqlite3_bind_int64(ins, 3, r->ts_us);
        sqlite3_bind_int64(ins, 4, r->stage_us);
        bind_text(ins, 5, r->level);
        bind_text(ins, 6, r->stage);
        bind_text(ins, 7, r->verb);
        bind_text(ins, 8, r->username);
        bind_text(ins, 9, r->groups);
        bind_text(ins, 10, r->impersonated);
        bind_text(ins, 11, r->source_ips);
        bind_text(ins, 12, r->user_agent);
        bind_text(ins, 13, r->resource);
        bind_text(ins, 14, r->subresource);
        bind_text(ins, 15, r->namespace_);
        bind_text(ins, 16, r->name);
        bind_text(ins, 17, r->api_group);
        bind_text(ins, 18, r->api_version);
        bind_text(ins, 19, r->workspace);
        bind_text(ins, 20, r->cluster);
        sqlite3_bind_int(ins, 21, r->code);
        bind_text(ins, 22, r->status);
        bind_text(ins, 23, r->reason);
        bind_text(ins, 24, r->request_uri);
        sqlite3_bind_blob(ins, 25, v[i].blob, (int)v[i].len, SQLITE_STATIC);
        sqlite3_bind_blob(ins, 26, chain, 32, SQLITE_STATIC);
        if (sqlite3_step(ins) != SQLITE_DONE)
            exit(1);
        sqlite3_reset(fts);
        sqlite3_bind_int64(fts, 1, (sqlite3_int64)i + 1);
        bind_text(fts, 2, r->name);
        bind_text(fts, 3, r->source_ips);
        if (sqlite3_step(fts) != SQLITE_DONE)
            exit(1);
        {
            const char *const f[3] = {"workspace", "namespace", "username"};
            const char *const val[3] = {r->workspace, r->namespace_, r->username};
            for (int k = 0; k < 3; k++) {
                if (val[k][0] == '\0')
                    continue;
                sqlite3_reset(term);
                bind_text(term, 1, f[k]);
                bind_text(term, 2, val[k]);
                if (sqlite3_step(term) != SQLITE_DONE)
                    exit(1);
            }
        }
        if (i % 1000 == 999 || i + 1 == n)
            sqlite3_exec(db, "COMMIT", NULL, NULL, NULL);
    }
    t1 = now_s();
    raw_cpu_us[sync_full ? 1 : 0] = (cpu_s(CLOCK_THREAD_CPUTIME_ID) - c0) * 1e6 / (double)n;
    sqlite3_finalize(ins);
    sqlite3_finalize(fts);
    sqlite3_finalize(term);
    for (size_t i = 0; i < n; i++)
        aud_row_clear(&rows[i]);
    free(rows);
    aud_store_close(s);
    rm_db(path);
    return (double)n / (t1 - t0);
}

typedef struct {
    double rate;           /* events/s, first publish to last commit */
    double publish_rate;   /* of the publisher during the same run */
    double commits;        /* store transactions */
    double commit_s;       /* time in them, BEGIN to COMMIT */
    double seconds;        /* first publish to last commit */
    double writer_us;      /* CPU of the consumer's writer thread per event */
    double process_us;     /* CPU of this process (publisher, consumer, sweeper) per event */
    double nats_us;        /* CPU of the bench's own nats-server per event (0: not ours) */
} ingest_result;


/* utime + stime of our nats-server, in seconds (0 when it is not ours). */
static double nats_cpu_s(void)
{
    char p[64], buf[1024], *c;
    unsigned long ut = 0, st = 0;
    FILE *f;
    size_t n;

    if (own_nats <= 0)
        return 0;
    snprintf(p, sizeof(p), "/proc/%d/stat", (int)own_nats);
    if ((f = fopen(p, "r")) == NULL)
        return 0;
    n = fread(buf, 1, sizeof(buf) - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* fields after the command's closing parenthesis: 14 and 15 are utime, stime */
    if ((c = strrchr(buf, ')')) == NULL ||
        sscanf(c + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu", &ut, &st) != 2)
        return 0;
    return (double)(ut + st) / (double)sysconf(_SC_CLK_TCK);
}

static size_t pipeline_batch;

static ingest_result run_ingestion(const ev *v, size_t n, int sync_full)
{
    char path[200];
    aud_store_opts so = {.sync_full = sync_full, .no_autocheckpoint = 1};
    aud_sweeper_cfg wc = {.store = {.sync_full = sync_full}, .interval_ms = 3600000};
    aud_sweeper *sw = NULL;
    aud_consumer_cfg cc = {.durable = "bench-audit", .max_age_ms = 30LL * 86400000,
                           .max_bytes = 8LL << 30, .replicas = 1, .batch_max = pipeline_batch,
                           .batch_wait_ms = 20, .ack_wait_ms = 30000, .max_ack_pending = 20000};
    ks_bus *cbus = connect_bus("bench-audit-consumer", 0), *pbus = connect_bus("bench-audit-pub", 1);
    aud_store *s = NULL;
    aud_consumer *c = NULL;
    ingest_result r;
    double t0, tp, t1, commits0, commit_s0, proc0, nats0;
    clockid_t wclock;
    char why[256];

    snprintf(path, sizeof(path), "%s/ingest.db", dir);
    rm_db(path);
    (void)ks_bus_stream_delete(pbus, AUD_STREAM);
    wc.db_path = path;
    if (aud_store_open(path, AUD_STORE_WRITE, &so, &s) != KS_OK ||
        aud_sweeper_start(&wc, &sw) != KS_OK ||
        aud_consumer_start(cbus, s, &cc, &c) != KS_OK) {
        fprintf(stderr, "bench_audit: consumer: %s\n", ks_status_last());
        exit(1);
    }
    for (int i = 0; i < 500 && !aud_consumer_ready(c, why, sizeof(why)); i++)
        usleep(10000);
    if (!aud_consumer_ready(c, why, sizeof(why))) {
        fprintf(stderr, "bench_audit: consumer not bound: %s\n", why);
        exit(1);
    }
    commits0 = ks_metric_value(m_commit);
    commit_s0 = ks_metric_sum(m_commit);
    proc0 = cpu_s(CLOCK_PROCESS_CPUTIME_ID);
    nats0 = nats_cpu_s();
    t0 = now_s();
    publish_all(pbus, v, n);
    tp = now_s();
    while (aud_consumer_position(c) < n) {
        if (now_s() - t0 > 120) {
            fprintf(stderr, "bench_audit: only %llu of %zu stored after 120 s\n",
                    (unsigned long long)aud_consumer_position(c), n);
            exit(1);
        }
        usleep(500);
    }
    t1 = now_s();
    r.rate = (double)n / (t1 - t0);
    r.publish_rate = (double)n / (tp - t0);
    r.seconds = t1 - t0;
    r.process_us = (cpu_s(CLOCK_PROCESS_CPUTIME_ID) - proc0) * 1e6 / (double)n;
    r.nats_us = (nats_cpu_s() - nats0) * 1e6 / (double)n;
    r.writer_us = pthread_getcpuclockid(c->thread, &wclock) == 0
                      ? cpu_s(wclock) * 1e6 / (double)n : 0;
    r.commits = ks_metric_value(m_commit) - commits0;
    r.commit_s = ks_metric_sum(m_commit) - commit_s0;
    aud_consumer_stop(c);
    aud_sweeper_stop(sw);
    aud_store_close(s);
    (void)ks_bus_stream_delete(pbus, AUD_STREAM);
    ks_bus_destroy(pbus);
    ks_bus_destroy(cbus);
    rm_db(path);
    return r;
}

/* ---- queries ---- */

static int cmp_double(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return x < y ? -1 : x > y;
}

typedef struct {
    const char *name;
    double p50, p99, max;
    double avg_total;
} qresult;

typedef void (*qgen)(char *raw, size_t cap, aud_visibility *vis, int i);

static aud_scope_entry tenant_ns[3], tenant_ws[1];

static void q_user(char *raw, size_t cap, aud_visibility *vis, int i)
{
    snprintf(raw, cap, "user_filter=%s&start_time=%lld&end_time=%lld", users[rnd() % NUSERS],
             (long long)((now_base_us - 7 * DAY_US) / 1000000), (long long)(now_base_us / 1000000));
}

static void q_ws_ns_verb(char *raw, size_t cap, aud_visibility *vis, int i)
{
    int ns = (int)(rnd() % NNS);
    snprintf(raw, cap,
             "workspace_filter=%s&objectref_namespace_filter=%s&verb_filter=create,delete"
             "&start_time=%lld",
             wss[ns % NWS], nss[ns], (long long)((now_base_us - DAY_US) / 1000000));
}

static void q_failed(char *raw, size_t cap, aud_visibility *vis, int i)
{
    snprintf(raw, cap, "response_code_filter=403,500&size=50&start_time=%lld",
             (long long)((now_base_us - (1 + (int64_t)(rnd() % 7)) * DAY_US) / 1000000));
}

static void q_name_search(char *raw, size_t cap, aud_visibility *vis, int i)
{
    const char *n = names[rnd() % NNAMES];
    size_t len = strlen(n);
    /* the hex tail: a term of five characters, a few matches each */
    snprintf(raw, cap, "objectref_name_search=%s", n + len - 5);
}

static void q_tenant(char *raw, size_t cap, aud_visibility *vis, int i)
{
    int base = (int)(rnd() % (NNS - 3));
    for (int k = 0; k < 3; k++)
        tenant_ns[k] = (aud_scope_entry){nss[base + k], 0};
    tenant_ws[0] = (aud_scope_entry){wss[base % NWS], 0};
    vis->all = 0;
    vis->ns = tenant_ns;
    vis->nns = 3;
    vis->ws = tenant_ws;
    vis->nws = 1;
    snprintf(raw, cap, "start_time=%lld&verb_filter=create,update,patch,delete",
             (long long)((now_base_us - 7 * DAY_US) / 1000000));
}

static void q_stats(char *raw, size_t cap, aud_visibility *vis, int i)
{
    snprintf(raw, cap, "operation=statistics&user_filter=%s", users[20 + rnd() % (NUSERS - 20)]);
}

static void q_histogram(char *raw, size_t cap, aud_visibility *vis, int i)
{
    snprintf(raw, cap, "operation=histogram&interval=1h&workspace_filter=%s&start_time=%lld",
             wss[rnd() % NWS], (long long)((now_base_us - 7 * DAY_US) / 1000000));
}

static qresult run_queries(sqlite3 *db, const char *name, qgen gen, int iterations)
{
    double *lat = calloc((size_t)iterations, sizeof(*lat));
    qresult r = {.name = name};
    double total = 0;
    char raw[1024], err[512];

    if (lat == NULL)
        exit(1);
    for (int i = -iterations / 10; i < iterations; i++) {
        aud_visibility vis = {.all = 1};
        aud_query q;
        json_t *out = NULL;
        char *text;
        double t0, t1;

        gen(raw, sizeof(raw), &vis, i);
        t0 = now_s();
        if (aud_query_parse(raw, &q, err, sizeof(err)) != KS_OK ||
            aud_query_run(db, &q, &vis, 0, &out, err, sizeof(err)) != KS_OK) {
            fprintf(stderr, "bench_audit: %s: %s %s\n", raw, err, ks_status_last());
            exit(1);
        }
        text = json_dumps(out, JSON_COMPACT);
        t1 = now_s();
        if (i >= 0) {
            json_t *inner = json_object_get(out, q.op == AUD_OP_QUERY ? "query"
                                                  : q.op == AUD_OP_STATISTICS ? "statistics"
                                                                               : "histogram");
            lat[i] = (t1 - t0) * 1000;
            total += (double)json_integer_value(
                json_object_get(inner, q.op == AUD_OP_STATISTICS ? "events" : "total"));
        }
        free(text);
        json_decref(out);
        aud_query_clear(&q);
    }
    qsort(lat, (size_t)iterations, sizeof(*lat), cmp_double);
    r.p50 = lat[iterations / 2];
    r.p99 = lat[(iterations * 99) / 100 < iterations ? (iterations * 99) / 100 : iterations - 1];
    r.max = lat[iterations - 1];
    r.avg_total = total / iterations;
    free(lat);
    return r;
}

/* Deep paging: page 100 of 50 events with `continue` vs with from. */
static void run_paging(sqlite3 *db, double *cont_ms, double *from_ms)
{
    char raw[1024], err[512], *tok = NULL;
    aud_visibility vis = {.all = 1};
    double t0;

    for (int page = 0; page < 100; page++) {
        aud_query q;
        json_t *out = NULL;
        const char *c;
        if (tok)
            snprintf(raw, sizeof(raw), "size=50&verb_filter=delete&continue=%s", tok);
        else
            snprintf(raw, sizeof(raw), "size=50&verb_filter=delete");
        t0 = now_s();
        if (aud_query_parse(raw, &q, err, sizeof(err)) != KS_OK ||
            aud_query_run(db, &q, &vis, 0, &out, err, sizeof(err)) != KS_OK)
            exit(1);
        *cont_ms = (now_s() - t0) * 1000;
        c = json_string_value(json_object_get(json_object_get(out, "query"), "continue"));
        free(tok);
        tok = c ? strdup(c) : NULL;
        json_decref(out);
        aud_query_clear(&q);
    }
    free(tok);
    {
        aud_query q;
        json_t *out = NULL;
        snprintf(raw, sizeof(raw), "size=50&verb_filter=delete&from=4950");
        t0 = now_s();
        if (aud_query_parse(raw, &q, err, sizeof(err)) != KS_OK ||
            aud_query_run(db, &q, &vis, 0, &out, err, sizeof(err)) != KS_OK)
            exit(1);
        *from_ms = (now_s() - t0) * 1000;
        json_decref(out);
        aud_query_clear(&q);
    }
}

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static void cleanup(void)
{
    stop_nats();
    if (dir[0])
        nftw(dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
}

int main(void)
{
    size_t n_ing = (size_t)env_long("KS_BENCH_AUDIT_EVENTS", 100000, 1000, 10000000);
    size_t n_db = (size_t)env_long("KS_BENCH_AUDIT_ROWS", 1000000, 1000, 100000000);
    int nq = (int)env_long("KS_BENCH_AUDIT_QUERIES", 200, 10, 100000);
    /* the service's default KS_AUDIT_BATCH_SIZE */
    pipeline_batch = (size_t)env_long("KS_BENCH_AUDIT_BATCH", 1000, 1, 10000);
    const char *url = getenv("KS_NATS_URL");
    double pub_rate, raw_full, raw_normal, build_rate, t0, cont_ms = 0, from_ms = 0;
    ingest_result ing_full, ing_normal;
    ev *v;
    char path[200];
    aud_store *s = NULL;
    aud_store_opts so = {.sync_full = 0};
    qresult qr[7];
    int nqr = 0;
    uint64_t rows = 0;

    ks_log_init("bench_audit", KS_LOG_ERROR);
    signal(SIGPIPE, SIG_IGN);
    snprintf(dir, sizeof(dir), "/tmp/kscore-bench-audit.XXXXXX");
    if (mkdtemp(dir) == NULL)
        return 1;
    atexit(cleanup);
    if (url != NULL && url[0] != '\0')
        snprintf(nats_url, sizeof(nats_url), "%s", url);
    else if (start_nats() != 0) {
        fprintf(stderr, "bench_audit: no KS_NATS_URL and nats-server did not start\n");
        return 1;
    }
    gen_vocab();

    /* ---- ingestion ---- */
    v = gen_events(n_ing);
    pub_rate = run_publish_baseline(v, n_ing);
    free_events(v, n_ing);
    v = gen_events(n_ing);
    raw_full = run_sqlite_baseline(v, n_ing, 1);
    ing_full = run_ingestion(v, n_ing, 1);
    free_events(v, n_ing);
    v = gen_events(n_ing);
    raw_normal = run_sqlite_baseline(v, n_ing, 0);
    ing_normal = run_ingestion(v, n_ing, 0);
    free_events(v, n_ing);

    /* ---- the query store ---- */
    snprintf(path, sizeof(path), "%s/query.db", dir);
    if (aud_store_open(path, AUD_STORE_WRITE, &so, &s) != KS_OK) {
        fprintf(stderr, "bench_audit: %s\n", ks_status_last());
        return 1;
    }
    now_base_us = wall_us();
    t0 = now_s();
    for (size_t done = 0; done < n_db; done += 1000) {
        size_t k = n_db - done < 1000 ? n_db - done : 1000;
        ev batch[1000];
        aud_item items[1000];
        for (size_t i = 0; i < k; i++) {
            /* 30 days, oldest first */
            int64_t ts = now_base_us - 30 * DAY_US + (int64_t)((double)(done + i) / (double)n_db *
                                                               (double)(30 * DAY_US));
            memset(&batch[i], 0, sizeof(batch[i]));
            gen_event(&batch[i], ts);
            items[i] = (aud_item){.seq = done + i + 1, .blob = batch[i].blob, .len = batch[i].len};
        }
        if (aud_store_append(s, items, k, NULL) != KS_OK) {
            fprintf(stderr, "bench_audit: building the store: %s\n", ks_status_last());
            return 1;
        }
        for (size_t i = 0; i < k; i++)
            free(batch[i].blob);
    }
    build_rate = (double)n_db / (now_s() - t0);
    if (aud_store_count(s, &rows) != KS_OK || rows != n_db)
        return 1;
    aud_store_close(s);
    s = NULL;
    if (aud_store_open(path, AUD_STORE_READ, NULL, &s) != KS_OK)
        return 1;
    qr[nqr++] = run_queries(aud_store_db(s), "user_filter, last 7 days", q_user, nq);
    qr[nqr++] = run_queries(aud_store_db(s), "workspace + namespace + 2 verbs, last 24 h",
                            q_ws_ns_verb, nq);
    qr[nqr++] = run_queries(aud_store_db(s), "response_code_filter=403,500, size 50, 1-7 days",
                            q_failed, nq);
    qr[nqr++] = run_queries(aud_store_db(s), "objectref_name_search (FTS trigram), all time",
                            q_name_search, nq);
    qr[nqr++] = run_queries(aud_store_db(s), "tenant scope (3 ns + 1 ws), 4 verbs, 7 days",
                            q_tenant, nq);
    qr[nqr++] = run_queries(aud_store_db(s), "statistics, one user (info)", q_stats, nq / 4);
    qr[nqr++] = run_queries(aud_store_db(s), "histogram 1h, one workspace, 7 days (info)",
                            q_histogram, nq / 4);
    run_paging(aud_store_db(s), &cont_ms, &from_ms);
    aud_store_close(s);

    /* ---- report ---- */
    printf("bench_audit: %zu events ingested per run; queries over %zu stored events "
           "(%d runs each, after %d warm-up)\n\n",
           n_ing, n_db, nq, nq / 10);
    printf("| ingestion | events/s | vs raw SQLite |\n|---|---:|---:|\n");
    printf("| raw js_PublishAsync into KS_AUDIT (baseline) | %.0f | |\n", pub_rate);
    printf("| raw batched SQLite inserts, same rows and indexes, synchronous=FULL (baseline) | %.0f | |\n",
           raw_full);
    printf("| **publish -> committed, consumer + store, synchronous=FULL (default)** | **%.0f** | **%.2f** |\n",
           ing_full.rate, ing_full.rate / raw_full);
    printf("| raw batched SQLite inserts, synchronous=NORMAL (baseline) | %.0f | |\n", raw_normal);
    printf("| publish -> committed, synchronous=NORMAL | %.0f | %.2f |\n", ing_normal.rate,
           ing_normal.rate / raw_normal);
    printf("\nPublisher rate during the pipeline runs: %.0f/s (FULL), %.0f/s (NORMAL). "
           "The store's own append path (decode, chain, insert) built the %zu-event store at %.0f "
           "events/s (synchronous=NORMAL).\n",
           ing_full.publish_rate, ing_normal.publish_rate, n_db, build_rate);
    printf("Store transactions in the pipeline runs: %.0f of %.0f events on average, %.0f%% of "
           "the run spent in them (FULL); %.0f of %.0f, %.0f%% (NORMAL).\n",
           ing_full.commits, (double)n_ing / (ing_full.commits > 0 ? ing_full.commits : 1),
           100 * ing_full.commit_s / ing_full.seconds, ing_normal.commits,
           (double)n_ing / (ing_normal.commits > 0 ? ing_normal.commits : 1),
           100 * ing_normal.commit_s / ing_normal.seconds);
    printf("CPU per event: raw SQLite %.1f us (FULL), %.1f us (NORMAL); in the pipeline runs, "
           "the writer thread %.1f us, this process (publisher, consumer, sweeper) %.1f us, "
           "nats-server %.1f us (FULL); %.1f, %.1f, %.1f us (NORMAL).\n\n",
           raw_cpu_us[1], raw_cpu_us[0], ing_full.writer_us, ing_full.process_us, ing_full.nats_us,
           ing_normal.writer_us, ing_normal.process_us, ing_normal.nats_us);
    printf("| query over %zu events | p50 ms | p99 ms | max ms | mean total |\n|---|---:|---:|---:|---:|\n",
           n_db);
    for (int i = 0; i < nqr; i++)
        printf("| %s | %.2f | %.2f | %.2f | %.0f |\n", qr[i].name, qr[i].p50, qr[i].p99, qr[i].max,
               qr[i].avg_total);
    printf("\nPage 100 of 50 (verb_filter=delete): with continue %.2f ms, with from=4950 %.2f ms.\n",
           cont_ms, from_ms);
    {
        int ing_ok = ing_full.rate >= 20000 && ing_full.rate >= 0.6 * raw_full;
        int q_ok = 1;
        for (int i = 0; i < 5; i++)
            q_ok &= qr[i].p99 <= 100;
        printf("\nTargets: ingestion >= 20,000 events/s and >= 0.6 of raw SQLite: %s (%.0f/s, %.2f); "
               "filtered query p99 <= 100 ms: %s.\n",
               ing_ok ? "met" : "MISSED", ing_full.rate, ing_full.rate / raw_full,
               q_ok ? "met" : "MISSED");
    }
    return 0;
}
