/* kscore-apigw: the HTTP front door (DESIGN.md §3).
 * This file declares the service; the filter chain lives beside it. */
#include <stddef.h>

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
    };
    return ks_service_main(&def, argc, argv);
}
