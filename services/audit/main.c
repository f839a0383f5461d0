/* kscore-audit: the audit store and its query API (DESIGN.md §7).
 * This file declares the service; consumer, store and query live beside it. */
#include <stddef.h>

#include "service.h"

typedef struct {
    ks_service_common common;
    char *db_path;
} audit_config;

static const ks_config_opt audit_options[] = {
    KS_SERVICE_COMMON_OPTIONS(audit_config, "127.0.0.1:9192"),
    {"audit-db", KS_CFG_PATH, "audit.db", 0, 0, NULL, offsetof(audit_config, db_path),
     "SQLite file of this replica's audit store", 0},
};

int main(int argc, char **argv)
{
    /* What this service reads from the mirror; /readyz waits for it. */
    static const char *const mirror_resources[] = {
        "/namespaces", "tenant.kubesphere.io/workspaces", NULL};
    static const char *const meta_keys[] = {"ks.api.groups"};
    static const char *const meta_values[] = {"tenant.kubesphere.io/v1alpha2/auditing"};
    static audit_config cfg;
    const ks_service_def def = {
        .spec = {.name = "audit", .description = "kscore audit store and queries",
                 .meta_keys = meta_keys, .meta_values = meta_values, .nmeta = 1,
                 .mirror_resources = mirror_resources},
        .program = "kscore-audit",
        .summary = "kscore audit service: durable audit store and queries",
        .options = audit_options,
        .noptions = sizeof(audit_options) / sizeof(audit_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
    };
    return ks_service_main(&def, argc, argv);
}
