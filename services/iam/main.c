/* kscore-iam: users, passwords, OAuth2 tokens, RBAC decisions (DESIGN.md §5).
 * This file declares the service; its handlers live beside it. */
#include <stddef.h>

#include "service.h"

typedef struct {
    ks_service_common common;
    char *jwt_secret_file;
} iam_config;

static const ks_config_opt iam_options[] = {
    KS_SERVICE_COMMON_OPTIONS(iam_config, "127.0.0.1:9191"),
    {"jwt-secret-file", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(iam_config, jwt_secret_file),
     "file holding the HMAC secret that signs tokens", 0},
};

int main(int argc, char **argv)
{
    static const char *const meta_keys[] = {"ks.api.groups"};
    static const char *const meta_values[] = {"iam.kubesphere.io/v1beta1"};
    static iam_config cfg;
    const ks_service_def def = {
        .spec = {.name = "iam", .description = "kscore identity and access management",
                 .meta_keys = meta_keys, .meta_values = meta_values, .nmeta = 1,
                 .mirror_all = 1},
        .program = "kscore-iam",
        .summary = "kscore identity and access management: users, tokens, RBAC decisions",
        .options = iam_options,
        .noptions = sizeof(iam_options) / sizeof(iam_options[0]),
        .cfg = &cfg,
        .common = &cfg.common,
    };
    return ks_service_main(&def, argc, argv);
}
