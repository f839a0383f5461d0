/* kscore-apigw: the HTTP front door (DESIGN.md §3). This file declares the
 * service and starts the chain (gw.h; docs/gateway.md). */
#include <stddef.h>

#include "audit.h"
#include "gw.h"
#include "log.h"
#include "proxy.h"

static gw_config cfg;
static gw gateway;

static const ks_config_opt apigw_options[] = {
    KS_SERVICE_COMMON_OPTIONS(gw_config, "127.0.0.1:9190"),
    {"http-addr", KS_CFG_ADDR, "127.0.0.1:9090", 0, 0, NULL, offsetof(gw_config, http_addr),
     "listen address of the gateway", 0},
    {"jwt-secret-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(gw_config, jwt_secret_file),
     "file holding the HMAC secret that verifies tokens (the one iam signs with)", 0},
    {"max-body", KS_CFG_INT, "1048576", 0, 64LL * 1024 * 1024, NULL,
     offsetof(gw_config, max_body), "largest request body in bytes (413 beyond)", 0},
    {"max-connections", KS_CFG_INT, "4096", 16, 1000000, NULL,
     offsetof(gw_config, max_connections), "open connections at most (503 beyond)", 0},
    {"http-request-timeout", KS_CFG_DURATION, "30s", 1000, 3600000, NULL,
     offsetof(gw_config, request_timeout_ms), "deadline of a request, except watches (504)", 0},
    {"idle-timeout", KS_CFG_DURATION, "60s", 1000, 3600000, NULL,
     offsetof(gw_config, idle_timeout_ms),
     "an idle client is closed after this; a request not received within it gets 408", 0},
    {"workers", KS_CFG_INT, "2", 1, 64, NULL, offsetof(gw_config, workers),
     "HTTP worker threads", 0},
    {"tls-cert-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(gw_config, tls_cert_file),
     "PEM certificate (chain) of the gateway; with tls-key-file the gateway speaks HTTPS", 0},
    {"tls-key-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(gw_config, tls_key_file),
     "PEM private key matching tls-cert-file", 0},
    {"discovery-interval", KS_CFG_DURATION, "5s", 500, 600000, NULL,
     offsetof(gw_config, discovery_interval_ms),
     "period of the $SRV.INFO scan that finds the API groups services announce", 0},
    {"audit-mode", KS_CFG_ENUM, "async", 0, 0, "async|strict|off", offsetof(gw_config, audit_mode),
     "async: answers never wait for the audit (events JetStream cannot take are spooled); "
     "strict: an answer waits for its event's ack and is a 503 without it; off: no audit", 0},
    {"audit-policy-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(gw_config, audit_policy_file),
     "JSON audit policy (levels by user, verb, resource, namespace; docs/audit.md); without "
     "it every request is recorded at Metadata", 0},
    {"audit-spool-dir", KS_CFG_PATH, "audit-spool", 0, 0, NULL,
     offsetof(gw_config, audit_spool_dir),
     "directory of the on-disk spools for events JetStream cannot take; a gateway uses the "
     "subdirectory named after its http-addr (e.g. audit-spool/127.0.0.1_9090)",
     0},
    {"audit-spool-max-bytes", KS_CFG_INT, "1073741824", 0, 1125899906842624LL, NULL,
     offsetof(gw_config, audit_spool_max_bytes),
     "size cap of the spool (0: none); beyond it events are lost, counted and logged", 0},
    {"audit-queue", KS_CFG_INT, "10000", 1, 10000000, NULL, offsetof(gw_config, audit_queue),
     "audit events waiting for the publisher, at most", 0},
    {"audit-queue-wait", KS_CFG_DURATION, "30s", 1, 3600000, NULL,
     offsetof(gw_config, audit_queue_wait_ms),
     "a request waits this long for room in a full audit queue before its event is lost", 0},
    {"audit-body-max", KS_CFG_INT, "65536", 0, 64LL * 1024 * 1024, NULL,
     offsetof(gw_config, audit_body_max),
     "bodies recorded at the Request and RequestResponse levels, at most this many bytes "
     "(larger ones are left out, with an annotation)", 0},
    {"audit-ack-timeout", KS_CFG_DURATION, "2s", 100, 60000, NULL,
     offsetof(gw_config, audit_ack_timeout_ms),
     "wait for JetStream's ack of one publish of an audit event", 0},
    {"audit-retry", KS_CFG_DURATION, "5s", 0, 600000, NULL, offsetof(gw_config, audit_retry_ms),
     "events without an ack are published again for this long (a stream leader lost with its "
     "NATS node is replaced within seconds) before they go to the spool", 0},
    {"audit-max-age", KS_CFG_DURATION, "720h", 0, 100LL * 366 * 86400000LL, NULL,
     offsetof(gw_config, audit_max_age_ms),
     "retention of the stream KS_AUDIT if the gateway creates it (0: unlimited)", 0},
    {"audit-max-bytes", KS_CFG_INT, "10737418240", 0, 1125899906842624LL, NULL,
     offsetof(gw_config, audit_max_bytes),
     "size limit of the stream KS_AUDIT if the gateway creates it (0: unlimited)", 0},
    {"audit-stream-replicas", KS_CFG_INT, "1", 1, 5, NULL,
     offsetof(gw_config, audit_stream_replicas),
     "replicas of the stream KS_AUDIT if the gateway creates it", 0},
};

/* On SIGTERM, before NATS closes: requests in flight get up to a second to
 * finish, then a 503 (gw_server_stop drains). */
static void apigw_drain(void *arg)
{
    if (arg != NULL) {
        gw_proxy_drain(arg); /* first: it ends the streams libmicrohttpd cannot stop with */
        gw_server_stop(arg);
    }
}

static void apigw_stop(void *arg)
{
    gw *g = arg;

    if (g == NULL)
        return;
    gw_proxy_drain(g);
    gw_server_stop(g); /* a no-op after apigw_drain */
    gw_proxy_stop(g);
    gw_audit_stop(g); /* after the server: every answered request is queued by now */
    gw_dispatch_stop(g);
    gw_authz_stop(g);
    gw_authn_stop(g);
}

static ks_status apigw_start(ks_service *svc, void *cfgp, void **out)
{
    gw *g = &gateway;
    ks_status st;

    g->cfg = cfgp;
    g->svc = svc;
    g->bus = ks_service_bus(svc);
    if ((st = gw_audit_start(g)) || (st = gw_authn_start(g)) || (st = gw_authz_start(g)) ||
        (st = gw_dispatch_start(g)) || (st = gw_proxy_start(g)) || (st = gw_server_start(g))) {
        apigw_stop(g);
        return st;
    }
    *out = g;
    return KS_OK;
}

int main(int argc, char **argv)
{
    const ks_service_def def = {
        .spec = {.name = "apigw", .description = "kscore API gateway", .mirror_all = 1},
        .program = "kscore-apigw",
        .summary = "kscore API gateway: authentication, authorization, dispatch, audit",
        .options = apigw_options,
        .noptions = sizeof(apigw_options) / sizeof(apigw_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
        .start = apigw_start,
        .drain = apigw_drain,
        .stop = apigw_stop,
    };
    return ks_service_main(&def, argc, argv);
}
