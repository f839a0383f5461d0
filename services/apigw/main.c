/* kscore-apigw: the HTTP front door (DESIGN.md §3). This file declares the
 * service and starts the chain (gw.h; docs/gateway.md). */
#include <stddef.h>

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
    if ((st = gw_authn_start(g)) || (st = gw_authz_start(g)) || (st = gw_dispatch_start(g)) ||
        (st = gw_proxy_start(g)) || (st = gw_server_start(g))) {
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
