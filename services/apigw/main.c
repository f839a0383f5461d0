/* kscore-apigw: the HTTP front door (DESIGN.md §3).
 * This file declares the service; the filter chain lives beside it. */
#include <stddef.h>

#include "admin.h"
#include "service.h"

typedef struct {
    ks_service_common common;
    char *http_addr;
} apigw_config;

static const ks_config_opt apigw_options[] = {
    KS_SERVICE_COMMON_OPTIONS(apigw_config, "127.0.0.1:9190"),
    {"http-addr", KS_CFG_ADDR, "127.0.0.1:9090", 0, 0, NULL, offsetof(apigw_config, http_addr),
     "listen address of the gateway", 0},
};

/* Until the filter chain lands (the apigw issue), the front door answers
 * /healthz, /livez, /readyz and /metrics, and 404 for everything else. */
static ks_status apigw_start(ks_service *svc, void *cfgp, void **state)
{
    apigw_config *cfg = cfgp;
    ks_admin *front = NULL;
    ks_status st = ks_admin_start(cfg->http_addr, NULL, NULL, &front);

    if (st == KS_OK)
        *state = front;
    return st;
}

static void apigw_stop(void *state)
{
    ks_admin_stop(state);
}

int main(int argc, char **argv)
{
    static apigw_config cfg;
    const ks_service_def def = {
        .spec = {.name = "apigw", .description = "kscore API gateway"},
        .program = "kscore-apigw",
        .summary = "kscore API gateway: authentication, authorization, dispatch, audit",
        .options = apigw_options,
        .noptions = sizeof(apigw_options) / sizeof(apigw_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
        .start = apigw_start,
        .stop = apigw_stop,
    };
    return ks_service_main(&def, argc, argv);
}
