/* kscore-reconciler: watchers, the mirror and the controllers (DESIGN.md §4).
 * This file declares the service; its parts live beside it. */
#include <stddef.h>

#include "service.h"

typedef struct {
    ks_service_common common;
} reconciler_config;

static const ks_config_opt reconciler_options[] = {
    KS_SERVICE_COMMON_OPTIONS(reconciler_config, "127.0.0.1:9193"),
};

int main(int argc, char **argv)
{
    static reconciler_config cfg;
    const ks_service_def def = {
        .spec = {.name = "reconciler", .description = "kscore watchers, mirror and controllers"},
        .program = "kscore-reconciler",
        .summary = "kscore reconciler: mirrors Kubernetes state onto NATS and runs controllers",
        .options = reconciler_options,
        .noptions = sizeof(reconciler_options) / sizeof(reconciler_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
    };
    return ks_service_main(&def, argc, argv);
}
