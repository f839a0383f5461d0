/* api.c: serves the REST routes every part registered, on
 * ks.api.iam_kubesphere_io.v1beta1 (queue group "iam"), with a few
 * subscriptions so a slow kube write does not hold up other requests. */
#include <stdio.h>
#include <string.h>

#include "iam.h"
#include "log.h"
#include "micro.h"
#include "subject.h"

#define IAM_API_MAX_ROUTES 128
#define IAM_API_WORKERS 4

static ks_api_route routes[IAM_API_MAX_ROUTES];
static size_t nroutes;

ks_status iam_api_add_routes(const ks_api_route *add, size_t n)
{
    if (nroutes + n > IAM_API_MAX_ROUTES)
        return KS_FAIL(KS_ERR_TOO_LARGE, "more than %d iam routes", IAM_API_MAX_ROUTES);
    memcpy(&routes[nroutes], add, n * sizeof(*add));
    nroutes += n;
    return KS_OK;
}

static int on_api(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    return ks_api_serve(bus, msg, routes, nroutes, arg, err, errcap);
}

ks_status iam_api_start(iam *s)
{
    char subject[256];
    ks_status st = ks_subject_api(IAM_GROUP, IAM_VERSION, subject, sizeof(subject));

    if (st)
        return st;
    /* Several subscriptions in one queue group: each has its own delivery
     * thread, so requests are served in parallel. */
    for (int i = 0; i < IAM_API_WORKERS; i++) {
        char name[32];
        snprintf(name, sizeof(name), "api-%d", i);
        st = ks_micro_add_endpoint(ks_service_micro(s->svc), name, subject, "iam", on_api, s);
        if (st)
            return st;
    }
    ks_info("serving %zu routes on %s", nroutes, subject);
    return KS_OK;
}
