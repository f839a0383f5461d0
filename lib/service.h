/* service.h: what every kscore service does the same way.
 *
 * A service's main() parses its config table (which embeds the common
 * settings below with KS_SERVICE_COMMON_OPTIONS), then calls
 * ks_service_start: JSON logging, the NATS connection (retried in the
 * background while the server is away), the $SRV.* micro responder and the
 * admin listener (/healthz, /readyz, /metrics). ks_service_wait blocks until
 * SIGTERM or SIGINT; ks_service_stop tears everything down in order. */
#ifndef KS_SERVICE_H
#define KS_SERVICE_H

#include <stddef.h>

#include "bus.h"
#include "config.h"
#include "kube.h"
#include "micro.h"
#include "mirror_cache.h"
#include "status.h"

#define KS_VERSION "0.1.0"

/* Settings every service has. Embed as a member named `common`. */
typedef struct {
    char *nats_url;
    char *admin_addr;
    char *log_level;
    char *kubeconfig;
    long long request_timeout_ms;
} ks_service_common;

/* Rows of a ks_config_opt table for the common settings of struct `type`
 * (which has a `ks_service_common common;` member); admin_default is the
 * service's default admin address. */
#define KS_SERVICE_COMMON_OPTIONS(type, admin_default)                                        \
    {"nats-url", KS_CFG_URL, "nats://127.0.0.1:4222", 0, 0, NULL,                           \
     offsetof(type, common.nats_url), "NATS server URLs, comma-separated", 0},               \
    {"admin-addr", KS_CFG_ADDR, admin_default, 0, 0, NULL, offsetof(type, common.admin_addr),  \
     "listen address of /healthz, /readyz and /metrics", 0},                                  \
    {"log-level", KS_CFG_ENUM, "info", 0, 0, "debug|info|warn|error",                         \
     offsetof(type, common.log_level), "minimum level of log lines", 0},                      \
    {"kubeconfig", KS_CFG_PATH, NULL, 0, 0, NULL, offsetof(type, common.kubeconfig),          \
     "kubeconfig of kube-apiserver (unset: in-cluster credentials when in a pod)", 0}, \
    {"request-timeout", KS_CFG_DURATION, "5s", 1, 600000, NULL,                               \
     offsetof(type, common.request_timeout_ms), "deadline of a NATS request", 0}

typedef struct ks_service ks_service;

/* Extra readiness of a service (e.g. "mirror loaded"): return 1 when ready,
 * else 0 with a reason. The bus connection is checked by the runtime. */
typedef int (*ks_service_ready_fn)(void *arg, char *why, size_t whycap);

typedef struct {
    const char *name;          /* "iam": log service, micro name, NATS connection name */
    const char *description;
    const char *const *meta_keys;   /* micro metadata, e.g. "ks.api.groups" */
    const char *const *meta_values;
    size_t nmeta;
    ks_service_ready_fn ready;      /* optional */
    void *ready_arg;
    /* The mirror resources this service reads ("<group>/<resource>", core
     * group empty: "/namespaces"), NULL-terminated; NULL = no mirror. With a
     * list, the runtime keeps a ks_mirror_cache of bucket KS_OBJECTS and
     * /readyz stays 503 until its initial values are loaded. */
    const char *const *mirror_resources;
    /* 1: a cache over every key of the bucket instead (one watch; its
     * ks_mirror_cache_barrier is exact). */
    int mirror_all;
} ks_service_spec;

/* Block SIGINT/SIGTERM (so ks_service_wait can take them) and ignore
 * SIGPIPE. Call first in main(), before any thread starts. */
void ks_service_init_signals(void);

ks_status ks_service_start(const ks_service_spec *spec, const ks_service_common *cfg,
                           ks_service **out) __attribute__((warn_unused_result));

ks_bus *ks_service_bus(ks_service *svc);
/* The service's mirror cache, or NULL when the spec asked for none. */
ks_mirror_cache *ks_service_mirror(ks_service *svc);
ks_micro *ks_service_micro(ks_service *svc);
int ks_service_admin_port(ks_service *svc);

/* Block until SIGINT or SIGTERM; returns the signal number. */
int ks_service_wait(ks_service *svc);

/* Stop the admin listener, the micro responder and the bus, and free.
 * NULL is a no-op. */
void ks_service_stop(ks_service *svc);

/* A Kubernetes client from the common settings: the kubeconfig when set,
 * else the in-cluster service account when running in a pod, else
 * KS_ERR_INVALID naming KS_KUBECONFIG. */
ks_status ks_service_kube_client(const ks_service_common *cfg, ks_kube_client **out)
    __attribute__((warn_unused_result));

/* A whole service: its config table and the hooks that start and stop its
 * own parts once the common runtime runs. */
typedef struct {
    ks_service_spec spec;
    const char *program;             /* "kscore-iam" */
    const char *summary;             /* one line for --help */
    const ks_config_opt *options;
    size_t noptions;
    void *cfg;                       /* the struct the table fills */
    ks_service_common *common;       /* its `common` member */
    /* Start the service's own parts; *state is passed to stop. Optional. */
    ks_status (*start)(ks_service *svc, void *cfg, void **state);
    /* Optional: stop taking new work and let work in flight finish, while
     * NATS is still up (the gateway's HTTP listener). Called first on
     * SIGINT/SIGTERM, before NATS closes. */
    void (*drain)(void *state);
    void (*stop)(void *state);       /* optional; called after NATS closed */
} ks_service_def;

/* The whole main(): signals, config (exit 2 on a bad setting, 0 after --help
 * or --check-config), start, wait for SIGINT/SIGTERM, stop. Returns the exit
 * code (0 after a signal, 1 when starting failed). */
int ks_service_main(const ks_service_def *def, int argc, char **argv);

#endif
