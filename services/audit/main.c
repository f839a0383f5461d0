/* kscore-audit: the audit store and its query API (DESIGN.md §7,
 * docs/audit.md). This file declares the service, starts its parts
 * (audit.h lists them) and runs `kscore-audit verify`. */
#include <limits.h>
#include <pthread.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "audit.h"
#include "log.h"

static const ks_config_opt audit_options[] = {
    KS_SERVICE_COMMON_OPTIONS(aud_config, "127.0.0.1:9192"),
    {"audit-db", KS_CFG_PATH, "audit.db", 0, 0, NULL, offsetof(aud_config, db_path),
     "SQLite file of this replica's audit store", 0},
    {"audit-consumer", KS_CFG_STRING, NULL, 0, 0, NULL, offsetof(aud_config, consumer),
     "this replica's durable consumer of KS_AUDIT; every replica needs its own (default "
     "audit-<host>-<hash of the store's absolute path>)", 0},
    {"audit-batch-size", KS_CFG_INT, "1000", 1, 10000, NULL, offsetof(aud_config, batch_size),
     "events stored per transaction, at most", 0},
    {"audit-batch-wait", KS_CFG_DURATION, "20ms", 1, 10000, NULL,
     offsetof(aud_config, batch_wait_ms), "longest wait for a batch to fill", 0},
    {"audit-max-age", KS_CFG_DURATION, "720h", 0, 100LL * 366 * 86400000LL, NULL,
     offsetof(aud_config, max_age_ms),
     "retention of the stream KS_AUDIT and of the store (0: unlimited)", 0},
    {"audit-max-bytes", KS_CFG_INT, "10737418240", 0, 1125899906842624LL, NULL, offsetof(aud_config, max_bytes),
     "size limit of the stream KS_AUDIT in bytes (0: unlimited)", 0},
    {"audit-stream-replicas", KS_CFG_INT, "1", 1, 5, NULL, offsetof(aud_config, stream_replicas),
     "replicas of the stream KS_AUDIT (3 in a 3-server NATS cluster)", 0},
    {"audit-ack-wait", KS_CFG_DURATION, "30s", 1000, 3600000, NULL,
     offsetof(aud_config, ack_wait_ms), "redelivery of a message that was not acknowledged", 0},
    {"audit-max-ack-pending", KS_CFG_INT, "20000", 1, 1000000, NULL,
     offsetof(aud_config, max_ack_pending), "messages delivered but not yet acknowledged, at most",
     0},
    {"audit-sync-full", KS_CFG_BOOL, "true", 0, 0, NULL, offsetof(aud_config, sync_full),
     "fsync every commit (SQLite synchronous=FULL); false: NORMAL, which survives a process "
     "crash but not a power loss", 0},
    {"audit-api-workers", KS_CFG_INT, "2", 1, 64, NULL, offsetof(aud_config, api_workers),
     "query endpoints per API subject, each with its own connection", 0},
    {"audit-query-timeout", KS_CFG_DURATION, "10s", 100, 600000, NULL,
     offsetof(aud_config, query_timeout_ms), "longest a query may run", 0},
    {"audit-scope-cache-ttl", KS_CFG_DURATION, "5s", 0, 600000, NULL,
     offsetof(aud_config, scope_cache_ttl_ms),
     "how long an authorization answer about who may see what is reused (0: never)", 0},
    {"audit-sweep-interval", KS_CFG_DURATION, "1m", 1000, 86400000, NULL,
     offsetof(aud_config, sweep_interval_ms), "time between retention passes", 0},
};
#define NOPTIONS (sizeof(audit_options) / sizeof(audit_options[0]))

static aud_config cfg;
static aud_service state;
/* The admin thread's ready probe reads the consumer while start and stop
 * set and free it. */
static pthread_mutex_t ready_mu = PTHREAD_MUTEX_INITIALIZER;
static aud_consumer *ready_consumer;

void aud_default_durable(const char *db_path, char *out, size_t cap)
{
    char host[256] = "localhost", abs[PATH_MAX + 256], cwd[PATH_MAX];
    uint32_t h = 2166136261u;
    size_t n;

    if (gethostname(host, sizeof(host) - 1) != 0)
        snprintf(host, sizeof(host), "localhost");
    host[sizeof(host) - 1] = '\0';
    if (db_path[0] == '/' || getcwd(cwd, sizeof(cwd)) == NULL)
        snprintf(abs, sizeof(abs), "%s", db_path);
    else
        snprintf(abs, sizeof(abs), "%s/%s", cwd, db_path);
    for (const char *p = abs; *p; p++)
        h = (h ^ (unsigned char)*p) * 16777619u;
    snprintf(out, cap, "audit-%.40s-%08x", host, h);
    n = strlen(out);
    for (size_t i = 0; i < n; i++) {
        char c = out[i];
        if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
              c == '-' || c == '_'))
            out[i] = '-';
    }
}

/* A durable name must be a single NATS token without wildcards. */
static int durable_ok(const char *s)
{
    if (s == NULL || s[0] == '\0' || strlen(s) > 100)
        return 0;
    for (; *s; s++)
        if (*s <= ' ' || *s == '.' || *s == '*' || *s == '>' || (unsigned char)*s >= 0x7f)
            return 0;
    return 1;
}

static int ready(void *arg, char *why, size_t whycap)
{
    int ok;

    (void)arg;
    pthread_mutex_lock(&ready_mu);
    ok = aud_consumer_ready(ready_consumer, why, whycap);
    pthread_mutex_unlock(&ready_mu);
    return ok;
}

/* While NATS is still up: queries answer 503 from now on, and the consumer
 * commits what it received, acks it and unsubscribes. */
static void audit_drain(void *arg)
{
    aud_service *a = arg;

    if (a == NULL)
        return;
    aud_api_stop(a->api);
    pthread_mutex_lock(&ready_mu);
    ready_consumer = NULL;
    pthread_mutex_unlock(&ready_mu);
    aud_consumer_stop(a->consumer);
    a->consumer = NULL;
}

/* After NATS closed (or after a failed start): what drain did not do, and
 * the store. */
static void audit_stop(void *arg)
{
    aud_service *a = arg;

    if (a == NULL)
        return;
    audit_drain(a);
    aud_sweeper_stop(a->sweeper);
    a->sweeper = NULL;
    aud_store_close(a->writer);
    a->writer = NULL;
    /* a->scope stays: API endpoints may still run until the micro service
     * stops (they answer 503 by now, but may be inside a query) */
}

static ks_status audit_start(ks_service *svc, void *cfgp, void **out)
{
    aud_service *a = &state;
    aud_store_opts so = {0};
    aud_consumer_cfg cc = {0};
    aud_sweeper_cfg wc = {0};
    ks_status st;

    a->cfg = cfgp;
    a->svc = svc;
    a->bus = ks_service_bus(svc);
    a->mirror = ks_service_mirror(svc);
    if (a->cfg->consumer != NULL) {
        if (!durable_ok(a->cfg->consumer)) {
            st = KS_FAIL(KS_ERR_INVALID,
                         "KS_AUDIT_CONSUMER (--audit-consumer) \"%.100s\" is not a valid consumer "
                         "name (no spaces, dots, * or >; at most 100 bytes)",
                         a->cfg->consumer);
            goto out;
        }
        snprintf(a->durable, sizeof(a->durable), "%s", a->cfg->consumer);
    } else {
        aud_default_durable(a->cfg->db_path, a->durable, sizeof(a->durable));
    }
    so.sync_full = a->cfg->sync_full;
    so.no_autocheckpoint = 1;     /* the sweeper thread checkpoints */
    if ((st = aud_store_open(a->cfg->db_path, AUD_STORE_WRITE, &so, &a->writer)))
        goto out;
    a->decider.bus = a->bus;
    a->decider.timeout_ms = (int)a->cfg->common.request_timeout_ms;
    if (a->scope == NULL &&
        (st = aud_scope_create(aud_decide_nats, &a->decider, a->cfg->scope_cache_ttl_ms, &a->scope)))
        goto out;
    wc.db_path = a->cfg->db_path;
    wc.store = so;
    wc.store.no_autocheckpoint = 0;
    wc.max_age_ms = a->cfg->max_age_ms;
    wc.interval_ms = a->cfg->sweep_interval_ms;
    if ((st = aud_sweeper_start(&wc, &a->sweeper)))
        goto out;
    if ((st = aud_api_start(a, &a->api)))
        goto out;
    cc.durable = a->durable;
    cc.max_age_ms = a->cfg->max_age_ms;
    cc.max_bytes = a->cfg->max_bytes;
    cc.replicas = (int)a->cfg->stream_replicas;
    cc.batch_max = (size_t)a->cfg->batch_size;
    cc.batch_wait_ms = (int)a->cfg->batch_wait_ms;
    cc.ack_wait_ms = a->cfg->ack_wait_ms;
    cc.max_ack_pending = a->cfg->max_ack_pending;
    if ((st = aud_consumer_start(a->bus, a->writer, &cc, &a->consumer)))
        goto out;
    pthread_mutex_lock(&ready_mu);
    ready_consumer = a->consumer;
    pthread_mutex_unlock(&ready_mu);
    ks_info("audit: store %s, durable consumer %s", a->cfg->db_path, a->durable);
    *out = a;
out:
    if (st)
        audit_stop(a);
    return st;
}

/* `kscore-audit verify [--audit-db PATH]`: exit 0 when the chain and every
 * row check out, 1 naming the first broken row, 2 when the store cannot be
 * read or the arguments are wrong. */
static int verify_main(int argc, char **argv)
{
    typedef struct {
        char *db_path;
    } verify_cfg;
    static const ks_config_opt opts[] = {
        {"audit-db", KS_CFG_PATH, "audit.db", 0, 0, NULL, offsetof(verify_cfg, db_path),
         "SQLite file of the audit store to verify", 0},
    };
    verify_cfg vc = {0};
    ks_config_action action;
    aud_verify_result r;
    aud_store *s = NULL;
    char err[KS_CONFIG_ERR_MAX], head[65];
    int rc = 2;

    ks_log_init("audit", KS_LOG_WARN);
    if (ks_config_parse(opts, 1, &vc, argc, argv, &action, err, sizeof(err)) != KS_OK) {
        fprintf(stderr, "kscore-audit verify: %s (see --help)\n", err);
        return 2;
    }
    if (action == KS_CONFIG_HELP) {
        ks_config_print_help(stdout, "kscore-audit verify",
                             "recompute the audit store's hash chain and check every row "
                             "against its event; exit 0: intact, 1: broken (the first broken row "
                             "is named), 2: cannot read",
                             opts, 1);
        return 0;
    }
    if (aud_store_open(vc.db_path, AUD_STORE_VERIFY, NULL, &s) != KS_OK ||
        aud_store_verify(s, &r) != KS_OK) {
        fprintf(stderr, "kscore-audit verify: %s\n", ks_status_last());
        goto out;
    }
    aud_chain_hex(r.head, head);
    if (r.ok) {
        printf("ok: %llu events, sequences %llu..%llu, chain head %s\n",
               (unsigned long long)r.rows, (unsigned long long)r.first_seq,
               (unsigned long long)r.last_seq, head);
        rc = 0;
    } else if (r.bad_seq > 0) {
        printf("BROKEN at sequence %llu (audit ID %s): %s\n", (unsigned long long)r.bad_seq,
               r.bad_audit_id, r.reason);
        rc = 1;
    } else {
        printf("BROKEN: %s\n", r.reason);
        rc = 1;
    }
out:
    aud_store_close(s);
    ks_config_free(opts, 1, &vc);
    return rc;
}

int main(int argc, char **argv)
{
    /* What this service reads from the mirror; /readyz waits for it. */
    static const char *const mirror_resources[] = {
        "/namespaces", "tenant.kubesphere.io/workspaces", "tenant.kubesphere.io/workspacetemplates",
        NULL};
    static const char *const meta_keys[] = {"ks.api.groups"};
    static const char *const meta_values[] = {AUD_ANNOUNCE};
    const ks_service_def def = {
        .spec = {.name = "audit", .description = "kscore audit store and queries",
                 .meta_keys = meta_keys, .meta_values = meta_values, .nmeta = 1,
                 .mirror_resources = mirror_resources, .ready = ready, .ready_arg = &state},
        .program = "kscore-audit",
        .summary = "kscore audit service: durable audit store and queries "
                   "(`kscore-audit verify --help`: check a store's hash chain)",
        .options = audit_options,
        .noptions = NOPTIONS,
        .cfg = &cfg,
        .common = &cfg.common,
        .start = audit_start,
        .drain = audit_drain,
        .stop = audit_stop,
    };

    if (argc > 1 && strcmp(argv[1], "verify") == 0)
        return verify_main(argc - 1, argv + 1);
    return ks_service_main(&def, argc, argv);
}
