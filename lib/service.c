#include "service.h"

#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "admin.h"
#include "log.h"

struct ks_service {
    const ks_service_spec *spec;
    ks_bus *bus;
    ks_micro *micro;
    ks_mirror_cache *mirror;
    ks_admin *admin;
    /* Set once bus and micro exist. The admin thread's ready probe reads them
     * only after seeing it, so their writes in ks_service_start do not race
     * with the probe (the listener starts first, to answer while NATS is away). */
    atomic_int up;
};

void ks_service_init_signals(void)
{
    sigset_t set;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    signal(SIGPIPE, SIG_IGN);
}

static int service_ready(void *arg, char *why, size_t whycap)
{
    ks_service *svc = arg;

    if (!atomic_load(&svc->up)) {
        snprintf(why, whycap, "starting");
        return 0;
    }
    if (!ks_bus_is_connected(svc->bus)) {
        snprintf(why, whycap, "not connected to NATS");
        return 0;
    }
    if (svc->mirror != NULL && !ks_mirror_cache_ready(svc->mirror, why, whycap))
        return 0;
    if (svc->spec->ready != NULL)
        return svc->spec->ready(svc->spec->ready_arg, why, whycap);
    return 1;
}

ks_status ks_service_start(const ks_service_spec *spec, const ks_service_common *cfg,
                           ks_service **out)
{
    ks_status st = KS_ERR_NOMEM;
    ks_service *svc;
    ks_log_level level = KS_LOG_INFO;
    ks_bus_opts bo = {0};
    ks_micro_cfg mc = {0};

    if (cfg->log_level != NULL && ks_log_level_parse(cfg->log_level, &level) != 0)
        return KS_FAIL(KS_ERR_INVALID, "log level \"%s\"", cfg->log_level);
    ks_log_init(spec->name, level);

    svc = calloc(1, sizeof(*svc));
    if (svc == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "service");
    svc->spec = spec;

    /* The admin listener comes first so /healthz answers while NATS is away. */
    st = ks_admin_start(cfg->admin_addr, service_ready, svc, &svc->admin);
    if (st)
        goto out;

    bo.url = cfg->nats_url;
    bo.name = spec->name;
    bo.js_max_wait_ms = (int)cfg->request_timeout_ms;
    st = ks_bus_connect(&bo, &svc->bus);
    if (st)
        goto out;

    mc.name = spec->name;
    mc.version = KS_VERSION;
    mc.description = spec->description;
    mc.meta_keys = spec->meta_keys;
    mc.meta_values = spec->meta_values;
    mc.nmeta = spec->nmeta;
    st = ks_micro_create(svc->bus, &mc, &svc->micro);
    if (st)
        goto out;
    if (spec->mirror_resources != NULL || spec->mirror_all) {
        /* Returns at once while NATS is away; loads when it comes. */
        st = ks_mirror_cache_create(svc->bus, NULL,
                                    spec->mirror_all ? NULL : spec->mirror_resources,
                                    &svc->mirror);
        if (st)
            goto out;
    }
    atomic_store(&svc->up, 1);

    ks_info("started: version %s, admin on port %d, NATS %s", KS_VERSION,
            ks_admin_port(svc->admin), cfg->nats_url);
    *out = svc;
    svc = NULL;
    st = KS_OK;
out:
    ks_service_stop(svc);
    return st;
}

ks_bus *ks_service_bus(ks_service *svc)
{
    return svc->bus;
}

ks_micro *ks_service_micro(ks_service *svc)
{
    return svc->micro;
}

ks_mirror_cache *ks_service_mirror(ks_service *svc)
{
    return svc->mirror;
}

int ks_service_admin_port(ks_service *svc)
{
    return ks_admin_port(svc->admin);
}

int ks_service_wait(ks_service *svc)
{
    sigset_t set;
    int sig = 0;

    sigemptyset(&set);
    sigaddset(&set, SIGINT);
    sigaddset(&set, SIGTERM);
    while (sigwait(&set, &sig) != 0)
        ;
    ks_info("received %s, stopping", sig == SIGINT ? "SIGINT" : "SIGTERM");
    return sig;
}

void ks_service_stop(ks_service *svc)
{
    if (svc == NULL)
        return;
    ks_admin_stop(svc->admin);
    /* Close NATS first: what follows must not wait for a server that is
     * away (deleting a KV watch's consumer would). */
    ks_bus_close(svc->bus);
    ks_mirror_cache_destroy(svc->mirror);
    ks_micro_destroy(svc->micro);
    ks_bus_destroy(svc->bus);
    free(svc);
}

ks_status ks_service_kube_client(const ks_service_common *cfg, ks_kube_client **out)
{
    ks_kube_config kc = {0};
    ks_status st;

    if (cfg->kubeconfig != NULL)
        st = ks_kube_config_from_kubeconfig(cfg->kubeconfig, NULL, &kc);
    else if (getenv("KUBERNETES_SERVICE_HOST") != NULL)
        st = ks_kube_config_in_cluster(NULL, &kc);
    else
        st = KS_FAIL(KS_ERR_INVALID,
                     "no Kubernetes configured: set KS_KUBECONFIG (--kubeconfig) or run in a pod");
    if (st == KS_OK)
        st = ks_kube_client_create(&kc, out);
    ks_kube_config_clear(&kc);
    return st;
}

int ks_service_main(const ks_service_def *def, int argc, char **argv)
{
    ks_service *svc = NULL;
    void *state = NULL;
    int started = 0;
    int rc = 1;

    ks_service_init_signals();
    ks_config_load_or_exit(def->options, def->noptions, def->cfg, argc, argv, def->program,
                           def->summary);
    if (ks_service_start(&def->spec, def->common, &svc) != KS_OK) {
        ks_error("cannot start: %s", ks_status_last());
        goto out;
    }
    if (def->start != NULL && def->start(svc, def->cfg, &state) != KS_OK) {
        ks_error("cannot start: %s", ks_status_last());
        goto out;
    }
    started = 1;
    ks_service_wait(svc);
    rc = 0;
    if (def->drain != NULL)
        def->drain(state);
    /* Stop serving first: closing NATS ends every subscription once its
     * handler in flight has returned, so the service's own parts are torn
     * down with no request still using them. */
    ks_bus_close(svc->bus);
out:
    if (started && def->stop != NULL)
        def->stop(state);
    ks_service_stop(svc);
    ks_config_free(def->options, def->noptions, def->cfg);
    if (rc == 0)
        ks_info("stopped");
    return rc;
}
