/* bench_rbac: the in-process authorizer (lib/rbac.c) on a KubeSphere-sized
 * data set, with the naive scan over every binding as the baseline.
 *
 *   build/default/bench/bench_rbac
 *
 * Standalone (no NATS, no kube; scripts/bench.sh's KS_NATS_URL is ignored).
 * The data set: 10,000 users, 500 workspaces with KubeSphere's four
 * WorkspaceRoles each, 2,500 namespaces (5 per workspace, labelled) with
 * three Roles each (admin, operator, viewer), the built-in GlobalRoles, two
 * ClusterRoles, and 50,000 bindings: one GlobalRoleBinding per user plus the
 * anonymous/authenticated group bindings, 20,000 WorkspaceRoleBindings (500
 * of them to department groups), 19,948 RoleBindings and 50
 * ClusterRoleBindings. 1,000 users have User.spec.groups. Every object is
 * built as JSON shaped like the CRDs and fed through ks_rbac_apply, as the
 * iam service will.
 *
 * Runs:
 *   1. load: objects/s, RSS before and after (VmRSS, after malloc_trim);
 *   2. indexed decisions, one thread, a realistic mix (own namespace,
 *      namespace via workspace, foreign namespace = deny, workspace scope,
 *      global, non-resource): decisions/s, and median / p99 per decision.
 *      Timed with clock_gettime around batches of 32 decisions (each batch
 *      one class, so a batch's mean is close to each decision's time), plus
 *      a cross-check timing every decision alone minus the clock's overhead;
 *   3. the naive scan (ks_rbac_decide_scan) on a sample of the same
 *      decisions, the answers compared, and the ratio;
 *   4. two decision threads, then two decision threads with a writer
 *      applying a binding every millisecond.
 * KS_BENCH_SECONDS (default 2) bounds each timed run. Prints Markdown on
 * stdout. Exits 1 if the load fails or the scan and the index disagree. */
#include <linux/perf_event.h>
#include <malloc.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "rbac.h"
#include "bus.h"
#include "codec.h"
#include "kscore/v1/iam.pb-c.h"

#define NUSERS 10000
#define NWS 500
#define NS_PER_WS 5
#define NNS (NWS * NS_PER_WS)
#define NDEPTS 50
#define NREQ 200000
#define BATCH 32
#define SCAN_SAMPLE 2000

/* ---- helpers ---- */

static int64_t now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

static long rss_kb(void)
{
    FILE *f = fopen("/proc/self/status", "r");
    char line[256];
    long kb = -1;

    if (f == NULL)
        return -1;
    while (fgets(line, sizeof(line), f))
        if (strncmp(line, "VmRSS:", 6) == 0) {
            kb = strtol(line + 6, NULL, 10);
            break;
        }
    fclose(f);
    return kb;
}

/* A user-space hardware counter of this thread (instructions, cycles), or
 * -1 where the kernel does not allow it (perf_event_paranoid > 2, no PMU in
 * a VM). Unlike wall time, instructions do not depend on what else runs. */
static int counter_open(uint64_t config)
{
    struct perf_event_attr a;

    memset(&a, 0, sizeof(a));
    a.type = PERF_TYPE_HARDWARE;
    a.size = sizeof(a);
    a.config = config;
    a.disabled = 1;
    a.exclude_kernel = 1;
    a.exclude_hv = 1;
    return (int)syscall(SYS_perf_event_open, &a, 0, -1, -1, 0);
}

static long long counter_read(int fd)
{
    long long v = -1;
    if (fd < 0 || read(fd, &v, sizeof(v)) != (ssize_t)sizeof(v))
        return -1;
    return v;
}

static uint64_t rng = 0x9E3779B97F4A7C15ULL;

static uint32_t rnd(uint32_t n)
{
    rng ^= rng << 13;
    rng ^= rng >> 7;
    rng ^= rng << 17;
    return (uint32_t)(rng % n);
}

static int cmp_dbl(const void *a, const void *b)
{
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double pct(double *v, size_t n, double p)
{
    size_t i;
    if (n == 0)
        return 0;
    qsort(v, n, sizeof(*v), cmp_dbl);
    i = (size_t)(p * (double)(n - 1) + 0.5);
    return v[i];
}

static long applied, apply_failed;

static void apply(ks_rbac *st, const char *kind, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

/* Build a JSON object from fmt (written with ' for ") and apply it. */
static void apply(ks_rbac *st, const char *kind, const char *fmt, ...)
{
    char buf[8192];
    va_list ap;
    json_error_t err;
    json_t *j;
    int n;

    va_start(ap, fmt);
    n = vsnprintf(buf, sizeof(buf), fmt, ap);
    va_end(ap);
    if (n < 0 || (size_t)n >= sizeof(buf)) {
        apply_failed++;
        return;
    }
    for (char *p = buf; *p; p++)
        if (*p == '\'')
            *p = '"';
    j = json_loads(buf, 0, &err);
    if (j == NULL || ks_rbac_apply(st, kind, j) != KS_OK) {
        if (apply_failed++ < 3)
            fprintf(stderr, "bench: apply %s failed: %s / %s\n", kind,
                    j ? ks_status_last() : err.text, buf);
    } else {
        applied++;
    }
    json_decref(j);
}

/* ---- the data set ---- */

#define API "'apiVersion':'iam.kubesphere.io/v1beta1'"
#define ALL "{'apiGroups':['*'],'resources':['*'],'verbs':['*']}"
#define VIEW3 "'verbs':['get','list','watch']"

/* KubeSphere's workspace templates, abridged but of the same size. */
#define WS_VIEW_RULES                                                                             \
    "{'apiGroups':['*'],'resources':['workspaces','workspacemembers','workspaceroles',"          \
    "'workspacerolebindings','groups','groupbindings','quotas','abnormalworkloads']," VIEW3 "},"   \
    "{'apiGroups':['*'],'resources':['namespaces','configmaps','endpoints','events',"            \
    "'limitranges','persistentvolumeclaims','podtemplates','replicationcontrollers',"            \
    "'resourcequotas','secrets','serviceaccounts','services','applications',"                   \
    "'controllerrevisions','deployments','replicasets','statefulsets','daemonsets','cronjobs',"  \
    "'jobs','ingresses','pods','pods/log','pods/containers','networkpolicies','rolebindings',"   \
    "'roles','namespacemembers','workloads']," VIEW3 "},"                                         \
    "{'apiGroups':['apps','extensions'],'resources':['deployments/scale','statefulsets/scale'],"  \
    VIEW3 "}"
#define WS_REGULAR_RULES                                                                          \
    "{'apiGroups':['*'],'resources':['workspaces','workspacemembers','workspaceroles'],"         \
    VIEW3 "}"
#define WS_SP_RULES                                                                               \
    WS_REGULAR_RULES ",{'apiGroups':['*'],'resources':['namespaces'],'verbs':['create','watch']}"
#define NS_VIEW_RULES                                                                             \
    "{'apiGroups':['','apps','batch','extensions','networking.k8s.io'],"                         \
    "'resources':['pods','pods/log','services','endpoints','configmaps','events',"               \
    "'persistentvolumeclaims','deployments','statefulsets','daemonsets','replicasets','jobs',"   \
    "'cronjobs','ingresses','networkpolicies','serviceaccounts']," VIEW3 "},"                     \
    "{'apiGroups':['iam.kubesphere.io'],'resources':['namespacemembers','roles',"                \
    "'rolebindings']," VIEW3 "}"
#define NS_OPERATOR_RULES                                                                         \
    NS_VIEW_RULES ",{'apiGroups':['','apps','batch','extensions'],'resources':['pods',"          \
    "'pods/exec','services','configmaps','secrets','deployments','deployments/scale',"           \
    "'statefulsets','statefulsets/scale','jobs','cronjobs']," "'verbs':['*']}"

static const char *const ws_roles[4] = {"admin", "regular", "self-provisioner", "viewer"};
static const char *const ns_roles[3] = {"admin", "operator", "viewer"};

typedef struct {
    uint16_t ws[2];   /* workspaces the user is a member of */
    uint16_t ns[2];   /* namespaces with a RoleBinding */
    uint8_t nws, nns;
    uint8_t dept;     /* 255: none */
} uinfo;

static uinfo *users;

static void user_name(char *out, size_t cap, int u)
{
    snprintf(out, cap, "user-%05d", u);
}

static void load(ks_rbac *st)
{
    char u[32];
    long bindings = 0;

    /* global roles and their bindings */
    apply(st, "GlobalRole", "{" API ",'kind':'GlobalRole','metadata':{'name':'platform-admin'},"
                            "'rules':[" ALL ",{'nonResourceURLs':['*'],'verbs':['*']}]}");
    apply(st, "GlobalRole", "{" API ",'kind':'GlobalRole','metadata':{'name':'platform-regular'},"
                            "'rules':[]}");
    apply(st, "GlobalRole",
          "{" API ",'kind':'GlobalRole','metadata':{'name':'platform-self-provisioner'},"
          "'rules':[{'apiGroups':['tenant.kubesphere.io'],'resources':['workspaces',"
          "'workspacetemplates'],'verbs':['create','watch']}]}");
    apply(st, "GlobalRole",
          "{" API ",'kind':'GlobalRole','metadata':{'name':'users-manager'},'rules':["
          "{'apiGroups':['*'],'resources':['users','users/loginrecords','loginrecords'],'verbs':["
          "'get','list','watch']},{'apiGroups':['*'],'resources':['users','users/password',"
          "'users/loginrecords','loginrecords'],'verbs':['*']},{'apiGroups':['iam.kubesphere.io'],"
          "'resources':['globalroles'],'verbs':['get','list','watch']},{'apiGroups':['*'],"
          "'resources':['globalroles'],'verbs':['*']}]}");
    apply(st, "GlobalRole",
          "{" API ",'kind':'GlobalRole','metadata':{'name':'anonymous'},'rules':[{'apiGroups':["
          "'config.kubesphere.io'],'resources':['configs'],'verbs':['get','list']},"
          "{'nonResourceURLs':['/static/images/*'],'verbs':['get']}]}");
    apply(st, "GlobalRole",
          "{" API ",'kind':'GlobalRole','metadata':{'name':'authenticated'},'rules':["
          "{'apiGroups':['config.kubesphere.io'],'resources':['configs'],'verbs':['get','list']},"
          "{'apiGroups':['iam.kubesphere.io'],'resources':['users','roletemplates','categories'],"
          "'verbs':['list']},{'apiGroups':['resources.kubesphere.io'],'resources':['registry',"
          "'git'],'verbs':['get','create']},{'apiGroups':['resources.kubesphere.io'],"
          "'resources':['clusters'],'verbs':['get','list']},{'apiGroups':['*'],'resources':["
          "'storageclasses','storageclasscapabilities','nodes'],'verbs':['get','list']},"
          "{'apiGroups':['resources.kubesphere.io'],'resources':['namespaces','services'],"
          "'verbs':['list']},{'nonResourceURLs':['/api','/api/v1','/static/images/*'],"
          "'verbs':['get']}]}");
    apply(st, "ClusterRole", "{" API ",'kind':'ClusterRole','metadata':{'name':'cluster-admin'},"
                             "'rules':[" ALL "]}");
    apply(st, "ClusterRole", "{" API ",'kind':'ClusterRole','metadata':{'name':'cluster-viewer'},"
                             "'rules':[{'apiGroups':['*'],'resources':['*']," VIEW3 "}]}");
    apply(st, "GlobalRoleBinding",
          "{" API ",'kind':'GlobalRoleBinding','metadata':{'name':'anonymous'},'roleRef':{"
          "'apiGroup':'iam.kubesphere.io','kind':'GlobalRole','name':'anonymous'},'subjects':[{"
          "'apiGroup':'iam.kubesphere.io','kind':'Group','name':'system:unauthenticated'}]}");
    apply(st, "GlobalRoleBinding",
          "{" API ",'kind':'GlobalRoleBinding','metadata':{'name':'authenticated'},'roleRef':{"
          "'apiGroup':'iam.kubesphere.io','kind':'GlobalRole','name':'authenticated'},'subjects':["
          "{'apiGroup':'iam.kubesphere.io','kind':'Group','name':'system:authenticated'}]}");
    bindings += 2;

    /* workspaces: four roles each; namespaces: three roles each */
    for (int w = 0; w < NWS; w++) {
        static const char *const rules[4] = {ALL, WS_REGULAR_RULES, WS_SP_RULES, WS_VIEW_RULES};
        for (int r = 0; r < 4; r++)
            apply(st, "WorkspaceRole",
                  "{" API ",'kind':'WorkspaceRole','metadata':{'name':'ws-%03d-%s','labels':{"
                  "'kubesphere.io/workspace':'ws-%03d'}},'rules':[%s]}",
                  w, ws_roles[r], w, rules[r]);
    }
    for (int n = 0; n < NNS; n++) {
        static const char *const rules[3] = {ALL, NS_OPERATOR_RULES, NS_VIEW_RULES};
        char ns[32], ws[32];
        snprintf(ns, sizeof(ns), "ns-%04d", n);
        snprintf(ws, sizeof(ws), "ws-%03d", n / NS_PER_WS);
        if (ks_rbac_set_namespace_workspace(st, ns, ws) != KS_OK)
            apply_failed++;
        for (int r = 0; r < 3; r++)
            apply(st, "Role",
                  "{" API ",'kind':'Role','metadata':{'name':'%s','namespace':'%s'},"
                  "'rules':[%s]}",
                  ns_roles[r], ns, rules[r]);
    }

    /* users: one GlobalRoleBinding each, two workspaces, two namespaces */
    for (int i = 0; i < NUSERS; i++) {
        uinfo *ui = &users[i];
        const char *grole = i < 20 ? "platform-admin" : i < 220 ? "users-manager"
                                                    : i < 1000  ? "platform-self-provisioner"
                                                                : "platform-regular";
        user_name(u, sizeof(u), i);
        apply(st, "GlobalRoleBinding",
              "{" API ",'kind':'GlobalRoleBinding','metadata':{'name':'%s-%s'},'roleRef':{"
              "'apiGroup':'iam.kubesphere.io','kind':'GlobalRole','name':'%s'},'subjects':[{"
              "'apiGroup':'iam.kubesphere.io','kind':'User','name':'%s'}]}",
              u, grole, grole, u);
        bindings++;
        ui->dept = 255;
        if (i % 10 == 0) {
            char dept[16];
            const char *g[1] = {dept};
            ui->dept = (uint8_t)rnd(NDEPTS);
            snprintf(dept, sizeof(dept), "dept-%02d", ui->dept);
            if (ks_rbac_set_user_groups(st, u, g, 1) != KS_OK)
                apply_failed++;
        }
        for (int k = 0; k < 2; k++) {
            uint32_t w = rnd(NWS);
            uint32_t r = rnd(10);
            const char *role = r == 0 ? "admin" : r < 4 ? "viewer" : r < 6 ? "self-provisioner"
                                                                              : "regular";
            if (k == 1 && w == ui->ws[0])
                w = (w + 1) % NWS;
            ui->ws[ui->nws++] = (uint16_t)w;
            apply(st, "WorkspaceRoleBinding",
                  "{" API ",'kind':'WorkspaceRoleBinding','metadata':{'name':'%s-ws-%03u-%s',"
                  "'labels':{'kubesphere.io/workspace':'ws-%03u'}},'roleRef':{'apiGroup':"
                  "'iam.kubesphere.io','kind':'WorkspaceRole','name':'ws-%03u-%s'},'subjects':[{"
                  "'apiGroup':'iam.kubesphere.io','kind':'User','name':'%s'}]}",
                  u, w, role, w, w, role, u);
            bindings++;
        }
    }
    /* 500 of the WorkspaceRoleBindings are to department groups: take them
     * from the last users' second membership, so the total stays 20,000 */
    for (int i = 0; i < 500; i++) {
        int uidx = NUSERS - 1 - i;
        uinfo *ui = &users[uidx];
        char name[96];
        user_name(u, sizeof(u), uidx);
        /* remove the user's second WorkspaceRoleBinding, whatever its role */
        for (int r = 0; r < 4; r++) {
            snprintf(name, sizeof(name), "%s-ws-%03u-%s", u, ui->ws[1], ws_roles[r]);
            if (ks_rbac_remove(st, "WorkspaceRoleBinding", NULL, name) == KS_OK)
                bindings--;
        }
        ui->nws = 1;
        apply(st, "WorkspaceRoleBinding",
              "{" API ",'kind':'WorkspaceRoleBinding','metadata':{'name':'dept-%02d-ws-%03d-viewer',"
              "'labels':{'kubesphere.io/workspace':'ws-%03d'}},'roleRef':{'apiGroup':"
              "'iam.kubesphere.io','kind':'WorkspaceRole','name':'ws-%03d-viewer'},'subjects':[{"
              "'apiGroup':'iam.kubesphere.io','kind':'Group','name':'dept-%02d'}]}",
              i % NDEPTS, i, i, i, i % NDEPTS);
        bindings++;
    }
    /* RoleBindings: fill up to 50,000 minus 50 ClusterRoleBindings */
    for (long i = 0; bindings < 50000 - 50; i++) {
        int uidx = (int)(i % NUSERS);
        uinfo *ui = &users[uidx];
        uint32_t n = rnd(NNS), r = rnd(3);
        if (ui->nns == 2)
            continue;
        user_name(u, sizeof(u), uidx);
        if (ui->nns == 1 && n == ui->ns[0])
            n = (n + 1) % NNS;
        ui->ns[ui->nns++] = (uint16_t)n;
        apply(st, "RoleBinding",
              "{" API ",'kind':'RoleBinding','metadata':{'name':'%s-%s','namespace':'ns-%04u'},"
              "'roleRef':{'apiGroup':'iam.kubesphere.io','kind':'Role','name':'%s'},'subjects':[{"
              "'apiGroup':'iam.kubesphere.io','kind':'User','name':'%s'}]}",
              u, ns_roles[r], n, ns_roles[r], u);
        bindings++;
    }
    for (int i = 0; i < 50; i++) {
        user_name(u, sizeof(u), 5000 + i);
        apply(st, "ClusterRoleBinding",
              "{" API ",'kind':'ClusterRoleBinding','metadata':{'name':'%s-cluster-viewer'},"
              "'roleRef':{'apiGroup':'iam.kubesphere.io','kind':'ClusterRole','name':"
              "'cluster-viewer'},'subjects':[{'apiGroup':'iam.kubesphere.io','kind':'User',"
              "'name':'%s'}]}",
              u, u);
    }
}

/* ---- the requests ---- */

enum { C_OWN_NS, C_WS_NS, C_FOREIGN_NS, C_WS, C_GLOBAL, C_URL, C_COUNT };

static const char *const class_names[C_COUNT] = {
    "namespace, own RoleBinding", "namespace, via its workspace",
    "namespace, not a member (deny)", "workspace scope", "global scope", "non-resource URL"};
static const int class_pct[C_COUNT] = {40, 20, 15, 10, 10, 5};

typedef struct {
    ks_rbac_user user;
    ks_rbac_request req;
    char name[16], ns[16], ws[16], group[16];
    const char *groups[1];
    int cls;
} breq;

static breq *reqs;
static int nreqs_class[C_COUNT];

static void make_request(breq *b, int cls)
{
    static const char *const verbs[] = {"get", "list", "watch", "create", "update", "delete"};
    static const char *const res[][2] = {{"", "pods"},        {"apps", "deployments"},
                                         {"", "configmaps"},  {"", "secrets"},
                                         {"", "services"},    {"batch", "jobs"}};
    int u = (int)rnd(NUSERS);
    const uinfo *ui = &users[u];
    int r = (int)rnd(6);

    while ((cls == C_OWN_NS && ui->nns == 0) || (cls == C_WS_NS && ui->nws == 0)) {
        u = (int)rnd(NUSERS);
        ui = &users[u];
    }
    memset(b, 0, sizeof(*b));
    b->cls = cls;
    user_name(b->name, sizeof(b->name), u);
    b->user.name = b->name;
    /* the token carries the user's department, as KubeSphere's JWT would */
    if (ui->dept != 255 && rnd(2)) {
        snprintf(b->group, sizeof(b->group), "dept-%02d", ui->dept);
        b->groups[0] = b->group;
        b->user.groups = b->groups;
        b->user.ngroups = 1;
    }
    b->req.is_resource_request = true;
    b->req.verb = verbs[rnd(6)];
    b->req.api_group = res[r][0];
    b->req.resource = res[r][1];
    b->req.name = (b->req.verb[0] == 'g' || b->req.verb[0] == 'u' || b->req.verb[0] == 'd')
                      ? "obj-1"
                      : NULL;
    switch (cls) {
    case C_OWN_NS:
        snprintf(b->ns, sizeof(b->ns), "ns-%04u", ui->ns[rnd(ui->nns)]);
        break;
    case C_WS_NS:
        snprintf(b->ns, sizeof(b->ns), "ns-%04u",
                 ui->ws[rnd(ui->nws)] * NS_PER_WS + rnd(NS_PER_WS));
        break;
    case C_FOREIGN_NS:
        snprintf(b->ns, sizeof(b->ns), "ns-%04u", rnd(NNS));
        break;
    case C_WS:
        snprintf(b->ws, sizeof(b->ws), "ws-%03u", ui->ws[0]);
        b->req.api_group = "iam.kubesphere.io";
        b->req.resource = "workspacemembers";
        break;
    case C_GLOBAL:
        b->req.api_group = "iam.kubesphere.io";
        b->req.resource = "users";
        b->req.verb = rnd(2) ? "list" : "get";
        b->req.name = b->req.verb[0] == 'g' ? "user-00001" : NULL;
        break;
    default:
        b->req.is_resource_request = false;
        b->req.verb = "get";
        b->req.path = rnd(2) ? "/api/v1" : "/apis/apps/v1";
    }
    b->req.namespace = b->ns[0] ? b->ns : NULL;
    b->req.workspace = b->ws[0] ? b->ws : NULL;
    b->req.scope = cls <= C_FOREIGN_NS ? KS_RBAC_SCOPE_NAMESPACE
                   : cls == C_WS       ? KS_RBAC_SCOPE_WORKSPACE
                                       : KS_RBAC_SCOPE_GLOBAL;
}

/* ---- timing ---- */

typedef struct {
    long decisions, allowed;
    double seconds;
    double p50_us, p99_us;
} result;

/* Batches of BATCH same-class decisions until `seconds` pass; one sample
 * per batch (its mean). order[] lists request indexes grouped by class. */
static result run_batches(ks_rbac *st, const int *order, int norder, double seconds, bool scan,
                          double *samples, size_t maxs)
{
    result r = {0};
    size_t ns = 0;
    int64_t start = now_ns(), end = start + (int64_t)(seconds * 1e9);
    int pos = 0;
    ks_rbac_decision d;

    while (now_ns() < end && ns < maxs) {
        int64_t t0 = now_ns();
        int k;
        for (k = 0; k < BATCH; k++) {
            const breq *b = &reqs[order[(pos + k) % norder]];
            if (scan ? ks_rbac_decide_scan(st, &b->user, &b->req, &d)
                     : ks_rbac_decide(st, &b->user, &b->req, &d))
                abort();
            r.allowed += d.allowed;
        }
        int64_t t1 = now_ns();
        samples[ns++] = (double)(t1 - t0) / BATCH / 1000.0;
        pos = (pos + BATCH) % norder;
        r.decisions += BATCH;
    }
    r.seconds = (double)(now_ns() - start) / 1e9;
    r.p50_us = pct(samples, ns, 0.50);
    r.p99_us = pct(samples, ns, 0.99);
    return r;
}

typedef struct {
    ks_rbac *st;
    atomic_int *stop;
    long decisions;
    int seed;
} thr;

static void *decider(void *arg)
{
    thr *t = arg;
    ks_rbac_decision d;
    int i = t->seed;

    while (!atomic_load(t->stop)) {
        for (int k = 0; k < 256; k++) {
            const breq *b = &reqs[i];
            i = (i + 1) % NREQ;
            if (ks_rbac_decide(t->st, &b->user, &b->req, &d))
                abort();
        }
        t->decisions += 256;
    }
    return NULL;
}

typedef struct {
    ks_rbac *st;
    atomic_int *stop;
    long writes;
} wthr;

static void *writer(void *arg)
{
    wthr *w = arg;
    struct timespec ms = {0, 1000000};

    while (!atomic_load(w->stop)) {
        char ns[16], u[32];
        snprintf(ns, sizeof(ns), "%04ld", w->writes % NNS);
        user_name(u, sizeof(u), (int)(w->writes % NUSERS));
        apply(w->st, "RoleBinding",
              "{" API ",'kind':'RoleBinding','metadata':{'name':'churn','namespace':'ns-%s'},"
              "'roleRef':{'apiGroup':'iam.kubesphere.io','kind':'Role','name':'viewer'},"
              "'subjects':[{'apiGroup':'iam.kubesphere.io','kind':'User','name':'%s'}]}",
              ns, u);
        w->writes++;
        nanosleep(&ms, NULL);
    }
    return NULL;
}

static double threaded(ks_rbac *st, int nthreads, bool with_writer, double seconds, long *writes)
{
    atomic_int stop = 0;
    pthread_t th[8], wt;
    thr t[8];
    wthr w = {.st = st, .stop = &stop};
    int64_t t0 = now_ns();
    long total = 0;

    for (int i = 0; i < nthreads; i++) {
        t[i] = (thr){.st = st, .stop = &stop, .seed = i * (NREQ / nthreads)};
        pthread_create(&th[i], NULL, decider, &t[i]);
    }
    if (with_writer)
        pthread_create(&wt, NULL, writer, &w);
    struct timespec dur = {(time_t)seconds, (long)((seconds - (double)(time_t)seconds) * 1e9)};
    nanosleep(&dur, NULL);
    atomic_store(&stop, 1);
    for (int i = 0; i < nthreads; i++) {
        pthread_join(th[i], NULL);
        total += t[i].decisions;
    }
    if (with_writer)
        pthread_join(wt, NULL);
    *writes = w.writes;
    return (double)total / ((double)(now_ns() - t0) / 1e9);
}

/* ---- over NATS ----
 * The same decisions as AuthzRequest/AuthzResponse round trips through
 * nats-server (KS_NATS_URL): a responder in this process unpacks the
 * request, decides on the same store and packs the answer, as iam's
 * ks.iam.authz handler does; the client keeps IN_FLIGHT requests in flight
 * with ks_bus_request_async. */
#define IN_FLIGHT 64
#define NATS_SUBJECT "bench.rbac.authz"

static ks_rbac *nats_store;

static void nats_responder(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__AuthzRequest *in = NULL;
    Kscore__V1__AuthzResponse out = KSCORE__V1__AUTHZ_RESPONSE__INIT;
    uint8_t buf[1024];
    size_t len;

    (void)arg;
    if (KS_UNPACK(kscore__v1__authz_request, ks_bus_msg_data(msg), ks_bus_msg_len(msg), &in) ==
            KS_OK &&
        in->user != NULL && in->info != NULL) {
        ks_rbac_user u = {.name = in->user->username,
                          .groups = (const char **)in->user->groups,
                          .ngroups = in->user->n_groups};
        ks_rbac_request r = {
            .is_resource_request = in->info->is_resource_request,
            .verb = in->info->verb,
            .api_group = in->info->api_group,
            .resource = in->info->resource,
            .subresource = in->info->subresource[0] ? in->info->subresource : NULL,
            .name = in->info->name[0] ? in->info->name : NULL,
            .namespace = in->info->namespace_[0] ? in->info->namespace_ : NULL,
            .workspace = in->info->workspace[0] ? in->info->workspace : NULL,
            .path = in->info->path[0] ? in->info->path : NULL,
        };
        ks_rbac_decision d;
        if (ks_rbac_scope_parse(in->info->resource_scope, &r.scope) == KS_OK &&
            ks_rbac_decide(nats_store, &u, &r, &d) == KS_OK)
            out.decision = d.allowed ? KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW
                                     : KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_DENY;
    }
    len = protobuf_c_message_get_packed_size(&out.base);
    if (len <= sizeof(buf) && protobuf_c_message_pack(&out.base, buf) == len)
        (void)ks_bus_respond(bus, msg, buf, len);
    ks_codec_free(in ? &in->base : NULL);
    ks_bus_msg_destroy(msg);
}

typedef struct {
    pthread_mutex_t mu;
    pthread_cond_t cond;
    int in_flight;
    long done, errors, allowed;
    double *lat_us;
    size_t nlat, cap;
} nats_tally;

typedef struct {
    nats_tally *t;
    int64_t t0;
} nats_req;

static void nats_on_reply(ks_status st, ks_bus_msg *reply, void *arg)
{
    nats_req *nr = arg;
    nats_tally *t = nr->t;
    double us = (double)(now_ns() - nr->t0) / 1000.0;
    Kscore__V1__AuthzResponse *resp = NULL;
    int allow = 0;

    if (st == KS_OK && KS_UNPACK(kscore__v1__authz_response, ks_bus_msg_data(reply),
                                 ks_bus_msg_len(reply), &resp) == KS_OK) {
        allow = resp->decision == KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW;
        ks_codec_free(&resp->base);
    }
    ks_bus_msg_destroy(reply);
    pthread_mutex_lock(&t->mu);
    if (st != KS_OK)
        t->errors++;
    t->allowed += allow;
    t->done++;
    if (t->nlat < t->cap)
        t->lat_us[t->nlat++] = us;
    t->in_flight--;
    pthread_cond_signal(&t->cond);
    pthread_mutex_unlock(&t->mu);
    free(nr);
}

static int pack_request(const breq *b, uint8_t **out, size_t *len)
{
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__RequestInfo info = KSCORE__V1__REQUEST_INFO__INIT;
    const char *scope = b->req.scope == KS_RBAC_SCOPE_NAMESPACE   ? "Namespace"
                        : b->req.scope == KS_RBAC_SCOPE_WORKSPACE ? "Workspace"
                                                                  : "Global";

    user.username = (char *)b->user.name;
    user.groups = (char **)b->user.groups;
    user.n_groups = b->user.ngroups;
    info.is_resource_request = b->req.is_resource_request;
    info.verb = (char *)b->req.verb;
    info.api_group = (char *)(b->req.api_group ? b->req.api_group : "");
    info.resource = (char *)(b->req.resource ? b->req.resource : "");
    info.name = (char *)(b->req.name ? b->req.name : "");
    info.namespace_ = (char *)(b->req.namespace ? b->req.namespace : "");
    info.workspace = (char *)(b->req.workspace ? b->req.workspace : "");
    info.path = (char *)(b->req.path ? b->req.path : "");
    info.resource_scope = (char *)scope;
    req.user = &user;
    req.info = &info;
    return ks_codec_pack(&req.base, out, len) == KS_OK ? 0 : -1;
}

static void over_nats(ks_rbac *st, double seconds)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts o = {.url = url, .name = "bench-rbac", .wait_connected = 1};
    ks_bus *client = NULL, *server = NULL;
    ks_bus_sub *subs[2] = {0};
    nats_tally t = {.mu = PTHREAD_MUTEX_INITIALIZER, .cond = PTHREAD_COND_INITIALIZER};
    int64_t t0, end;
    long sent = 0;

    if (url == NULL) {
        printf("\nOver NATS: skipped (KS_NATS_URL unset; `make bench` sets it).\n");
        return;
    }
    nats_store = st;
    if (ks_bus_connect(&o, &client) || ks_bus_connect(&o, &server)) {
        printf("\nOver NATS: cannot connect to %s\n", url);
        goto out;
    }
    /* two delivery threads, as iam runs ks.iam.authz */
    for (int i = 0; i < 2; i++)
        if (ks_bus_subscribe(server, NATS_SUBJECT, "authz", nats_responder, NULL, &subs[i]))
            goto out;
    if (ks_bus_flush(server, 2000))
        goto out;
    t.cap = 4000000;
    t.lat_us = malloc(t.cap * sizeof(double));
    if (t.lat_us == NULL)
        goto out;
    t0 = now_ns();
    end = t0 + (int64_t)(seconds * 1e9);
    while (now_ns() < end) {
        const breq *b = &reqs[sent % NREQ];
        uint8_t *buf;
        size_t len;
        nats_req *nr;

        pthread_mutex_lock(&t.mu);
        while (t.in_flight >= IN_FLIGHT)
            pthread_cond_wait(&t.cond, &t.mu);
        t.in_flight++;
        pthread_mutex_unlock(&t.mu);
        nr = malloc(sizeof(*nr));
        if (nr == NULL || pack_request(b, &buf, &len) != 0)
            goto out;
        nr->t = &t;
        nr->t0 = now_ns();
        if (ks_bus_request_async(client, NATS_SUBJECT, buf, len, 5000, nats_on_reply, nr) != KS_OK) {
            free(nr);
            pthread_mutex_lock(&t.mu);
            t.in_flight--;
            t.errors++;
            pthread_mutex_unlock(&t.mu);
        }
        free(buf);
        sent++;
    }
    pthread_mutex_lock(&t.mu);
    while (t.in_flight > 0)
        pthread_cond_wait(&t.cond, &t.mu);
    pthread_mutex_unlock(&t.mu);
    {
        double secs = (double)(now_ns() - t0) / 1e9;
        printf("\nOver NATS (%d in flight, responder unpacks, decides on the same store, packs): "
               "%ld decisions in %.2f s = %.0f decisions/s; round trip p50 %.0f us, p99 %.0f us; "
               "%ld errors, %.0f%% allowed.\n",
               IN_FLIGHT, t.done, secs, (double)t.done / secs, pct(t.lat_us, t.nlat, 0.50),
               pct(t.lat_us, t.nlat, 0.99), t.errors, t.done ? 100.0 * (double)t.allowed / (double)t.done : 0.0);
    }
out:
    for (int i = 0; i < 2; i++)
        ks_bus_unsubscribe(subs[i]);
    ks_bus_destroy(client);
    ks_bus_destroy(server);
    free(t.lat_us);
}

int main(void)
{
    double seconds = 2.0;
    const char *env = getenv("KS_BENCH_SECONDS");
    ks_rbac *st = NULL;
    ks_rbac_stats stats;
    long rss0, rss1;
    int64_t t0, t1;
    int *order = NULL, *cls_order[C_COUNT] = {0};
    double *samples = NULL;
    size_t maxs = 4000000;
    int rc = 1;

    if (env != NULL) {
        char *endp;
        double v = strtod(env, &endp);
        if (endp != env && *endp == '\0' && v > 0 && v <= 60)
            seconds = v;
    }
    users = calloc(NUSERS, sizeof(*users));
    reqs = calloc(NREQ, sizeof(*reqs));
    order = malloc(NREQ * sizeof(*order));
    samples = malloc(maxs * sizeof(*samples));
    if (users == NULL || reqs == NULL || order == NULL || samples == NULL)
        goto out;
    malloc_trim(0);
    rss0 = rss_kb();
    if (ks_rbac_create(&st) != KS_OK)
        goto out;
    t0 = now_ns();
    load(st);
    t1 = now_ns();
    malloc_trim(0);
    rss1 = rss_kb();
    ks_rbac_stats_get(st, &stats);
    if (apply_failed) {
        fprintf(stderr, "bench: %ld objects failed to load\n", apply_failed);
        goto out;
    }

    /* requests: the mix, then grouped by class for the batches */
    for (int i = 0, c = 0, filled = 0; i < NREQ; i++) {
        while (c < C_COUNT - 1 && i >= filled + NREQ * class_pct[c] / 100) {
            filled += NREQ * class_pct[c] / 100;
            c++;
        }
        make_request(&reqs[i], c);
        nreqs_class[c]++;
    }
    /* shuffle; order[] keeps classes together, in shuffled order */
    for (int i = NREQ - 1; i > 0; i--) {
        int j = (int)rnd((uint32_t)i + 1);
        breq tmp = reqs[i];
        reqs[i] = reqs[j];
        reqs[j] = tmp;
    }
    for (int i = 0; i < NREQ; i++) {
        const ks_rbac_user *u = &reqs[i].user;
        reqs[i].user.name = reqs[i].name;
        if (u->ngroups) {
            reqs[i].groups[0] = reqs[i].group;
            reqs[i].user.groups = reqs[i].groups;
        }
        reqs[i].req.namespace = reqs[i].ns[0] ? reqs[i].ns : NULL;
        reqs[i].req.workspace = reqs[i].ws[0] ? reqs[i].ws : NULL;
    }
    for (int c = 0, k = 0; c < C_COUNT; c++) {
        cls_order[c] = order + k;
        for (int i = 0; i < NREQ; i++)
            if (reqs[i].cls == c)
                order[k++] = i;
    }

    printf("bench_rbac: in-process KubeSphere authorizer (lib/rbac.c), %d users, %zu bindings, "
           "%zu roles (%zu rules), %d workspaces, %d namespaces; one decision = "
           "ks_rbac_decide.\n\n",
           NUSERS, stats.bindings, stats.roles, stats.rules, NWS, NNS);
    printf("- load: %ld objects in %.2f s (%.0f objects/s, JSON parse included)\n", applied,
           (double)(t1 - t0) / 1e9, (double)applied / ((double)(t1 - t0) / 1e9));
    printf("- RSS before %.1f MB, after %.1f MB: the data set takes %.1f MB (target <= 200 MB); "
           "%zu interned strings, %zu index keys\n",
           rss0 / 1024.0, rss1 / 1024.0, (rss1 - rss0) / 1024.0, stats.strings,
           stats.index_keys);

    /* warm up */
    {
        ks_rbac_decision d;
        for (int i = 0; i < NREQ; i++)
            if (ks_rbac_decide(st, &reqs[i].user, &reqs[i].req, &d))
                goto out;
    }

    printf("\n| run (1 thread, batches of %d) | decisions | allowed | decisions/s | p50 us | "
           "p99 us |\n|---|---:|---:|---:|---:|---:|\n",
           BATCH);
    result all = run_batches(st, order, NREQ, seconds, false, samples, maxs);
    /* the overall figures come from batches of one class each (order[]) */
    printf("| indexed, the whole mix | %ld | %.0f%% | %.0f | %.3f | %.3f |\n", all.decisions,
           100.0 * (double)all.allowed / (double)all.decisions,
           (double)all.decisions / all.seconds, all.p50_us, all.p99_us);
    for (int c = 0; c < C_COUNT; c++) {
        result r = run_batches(st, cls_order[c], nreqs_class[c], seconds / 4, false, samples,
                               maxs);
        printf("| indexed, %s (%d%%) | %ld | %.0f%% | %.0f | %.3f | %.3f |\n", class_names[c],
               class_pct[c], r.decisions, 100.0 * (double)r.allowed / (double)r.decisions,
               (double)r.decisions / r.seconds, r.p50_us, r.p99_us);
    }

    /* cross-check: every decision timed alone, minus the clock's own cost */
    {
        int64_t clk0 = now_ns(), clk;
        for (int i = 0; i < 100000; i++)
            (void)now_ns();
        clk = (now_ns() - clk0) / 100000;
        size_t n = 0;
        ks_rbac_decision d;
        for (int i = 0; i < NREQ && n < maxs; i++) {
            int64_t a = now_ns();
            if (ks_rbac_decide(st, &reqs[i].user, &reqs[i].req, &d))
                goto out;
            int64_t b = now_ns();
            samples[n++] = (double)(b - a - clk) / 1000.0;
        }
        printf("| indexed, each decision timed alone (clock %lld ns subtracted) | %zu | - | - | "
               "%.3f | %.3f |\n",
               (long long)clk, n, pct(samples, n, 0.5), pct(samples, n, 0.99));
    }

    /* the naive scan on a sample, and the answers compared */
    {
        int mism = 0;
        ks_rbac_decision a, b;
        int sample[SCAN_SAMPLE];
        for (int i = 0; i < SCAN_SAMPLE; i++) {
            sample[i] = order[(int64_t)i * NREQ / SCAN_SAMPLE];
            const breq *q = &reqs[sample[i]];
            if (ks_rbac_decide(st, &q->user, &q->req, &a) ||
                ks_rbac_decide_scan(st, &q->user, &q->req, &b))
                goto out;
            mism += a.allowed != b.allowed || a.phase != b.phase;
        }
        result idx = run_batches(st, sample, SCAN_SAMPLE, seconds / 2, false, samples, maxs);
        result naive = run_batches(st, sample, SCAN_SAMPLE, seconds, true, samples, maxs);
        printf("| indexed, the scan's sample | %ld | %.0f%% | %.0f | %.3f | %.3f |\n",
               idx.decisions, 100.0 * (double)idx.allowed / (double)idx.decisions,
               (double)idx.decisions / idx.seconds, idx.p50_us, idx.p99_us);
        printf("| naive scan of all bindings, same sample | %ld | %.0f%% | %.0f | %.3f | %.3f "
               "|\n",
               naive.decisions, 100.0 * (double)naive.allowed / (double)naive.decisions,
               (double)naive.decisions / naive.seconds, naive.p50_us, naive.p99_us);
        printf("\nIndex vs naive scan on the same %d decisions: p50 %.3f us vs %.3f us, "
               "%.0fx faster; %.0f vs %.0f decisions/s. Answers compared: %d mismatches.\n",
               SCAN_SAMPLE, idx.p50_us, naive.p50_us, naive.p50_us / idx.p50_us,
               (double)idx.decisions / idx.seconds, (double)naive.decisions / naive.seconds,
               mism);
        if (mism)
            goto out;
    }
    {
        long w1 = 0, w2 = 0;
        double one = threaded(st, 1, false, seconds / 2, &w1);
        double two = threaded(st, 2, false, seconds / 2, &w1);
        double twow = threaded(st, 2, true, seconds / 2, &w2);
        printf("\nThroughput, the whole mix: 1 thread %.0f decisions/s; 2 threads %.0f/s; "
               "2 threads while a writer applies a RoleBinding every ms %.0f/s (%ld writes).\n",
               one, two, twow, w2);
    }
    /* hardware counters over one pass of the mix */
    {
        int fi = counter_open(PERF_COUNT_HW_INSTRUCTIONS), fc = counter_open(PERF_COUNT_HW_CPU_CYCLES);
        ks_rbac_decision d;
        if (fi >= 0 && fc >= 0) {
            ioctl(fi, PERF_EVENT_IOC_ENABLE, 0);
            ioctl(fc, PERF_EVENT_IOC_ENABLE, 0);
            for (int i = 0; i < NREQ; i++)
                if (ks_rbac_decide(st, &reqs[i].user, &reqs[i].req, &d))
                    goto out;
            ioctl(fi, PERF_EVENT_IOC_DISABLE, 0);
            ioctl(fc, PERF_EVENT_IOC_DISABLE, 0);
            printf("\nHardware counters, one pass of the %d-decision mix (user space only): "
                   "%.0f instructions and %.0f cycles per decision.\n",
                   NREQ, (double)counter_read(fi) / NREQ, (double)counter_read(fc) / NREQ);
        } else {
            printf("\nHardware counters: not available here (perf_event_open refused).\n");
        }
        if (fi >= 0)
            close(fi);
        if (fc >= 0)
            close(fc);
    }

    over_nats(st, seconds);

    printf("\nTargets (IAM issue): median in-process decision <= 2 us: %s; data set <= 200 MB: "
           "%s.\n",
           all.p50_us <= 2.0 ? "met" : "MISSED", (rss1 - rss0) / 1024.0 <= 200 ? "met" : "MISSED");
    rc = 0;
out:
    ks_rbac_destroy(st);
    free(samples);
    free(order);
    free(reqs);
    free(users);
    return rc;
}
