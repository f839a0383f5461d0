/* Integration tests of kscore-iam's roles, bindings, members,
 * subjectaccessreviews (services/iam/roles.c), its policy feed from the
 * mirror (policy.c) and ks.iam.authz (authz.c), against the real servers.
 *
 * Needs the control plane of scripts/test.sh (KS_NATS_URL, KS_KUBECONFIG;
 * skipped when unset). The group setup starts kscore-reconciler
 * (--leader-elect=false --controllers=false: the mirror's writer only, see
 * start_all) and two kscore-iam replicas from $KS_TEST_BUILD/bin
 * (build/default/bin when unset; KS_TEST_IAM_BIN overrides the iam binary)
 * on free 127.0.0.1 admin ports, with a random JWT secret in a mktemp -d
 * folder, and waits for their /readyz. Every request goes through NATS as the
 * gateway sends it: ApiRequest on ks.api.iam_kubesphere_io.v1beta1, and
 * AuthzRequest on ks.iam.authz. Writes "through kubectl" go straight to
 * kube-apiserver with the kube client (and once with kubectl itself when it
 * is found). The teardown stops every process by PID and deletes what the
 * tests created (names carry a per-run prefix).
 *
 * A change must reach the decisions, and each wait for that is a bounded
 * poll of up to DECISION_CAP_MS (10 s): the tests check what is decided, not
 * how fast. How long each change took is recorded; the group teardown prints
 * the distribution and a note names every change slower than the 1 s target
 * (DECISION_MS), which bench_mirror measures. The two iam replicas answer
 * ks.iam.authz in turn (a queue group) and each follows the mirror on its
 * own, so whatever follows from a change is awaited, never asked once: the
 * other replica may be a moment behind the one that answered the wait.
 * KS_TEST_FILTER selects tests, KS_TEST_KEEP keeps the
 * folder with the services' logs, KS_TEST_VERBOSE prints every error answer.
 *
 * Standalone: scripts/controlplane.sh start DIR && . DIR/env, then run
 * build/default/tests/integration/test_iam_rbac. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <ftw.h>
#include <jansson.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "codec.h"
#include "kscore/v1/api.pb-c.h"
#include "kscore/v1/iam.pb-c.h"
#include "kube.h"
#include "log.h"
#include "subject.h"

#define WAIT_MS 20000       /* a process start, a readiness */
#define DECISION_MS 1000    /* target: a change reaches the decisions (reported) */
#define DECISION_CAP_MS 10000 /* a wait for a decision fails after this */
#define REQUEST_MS 10000    /* one NATS request */
#define PREFIX "/kapis/iam.kubesphere.io/v1beta1"
#define KAPI "/apis/iam.kubesphere.io/v1beta1"
#define NIAM 2

extern char **environ;

/* ---- time ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(long ms)
{
    struct timespec ts = {ms / 1000, (ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

/* ---- how long changes took to reach the decisions ---- */

#define NLAT 512
static int64_t g_lat[NLAT];
static size_t g_nlat, g_nslow;

/* Record that a change reached the decisions after ms. */
static void note_latency(const char *what, const char *who, int64_t ms)
{
    if (g_nlat < NLAT)
        g_lat[g_nlat++] = ms;
    if (ms > DECISION_MS) {
        g_nslow++;
        print_message("note: %s for %s followed the change after %lld ms (target %d ms)\n",
                      what, who, (long long)ms, DECISION_MS);
    }
}

static int cmp_i64(const void *a, const void *b)
{
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

static void print_latencies(void)
{
    int64_t v[NLAT];

    if (g_nlat == 0)
        return;
    memcpy(v, g_lat, g_nlat * sizeof(v[0]));
    qsort(v, g_nlat, sizeof(v[0]), cmp_i64);
    print_message("change -> decision: %zu awaited, median %lld ms, p90 %lld ms, max %lld ms; "
                  "%zu over the %d ms target\n",
                  g_nlat, (long long)v[g_nlat / 2], (long long)v[g_nlat * 9 / 10],
                  (long long)v[g_nlat - 1], g_nslow, DECISION_MS);
}

/* ---- the group's state ---- */

static int g_enabled;
static char g_dir[256];
static char g_id[32];              /* per-run prefix of every name */
static pid_t g_rec;
static pid_t g_iam[NIAM];
static int g_iam_port[NIAM];
static int g_rec_port;
static ks_bus *g_bus;
static ks_kube_client *g_kube;
static char g_api_subject[128];

#define NEED_SERVERS()                                                         \
    do {                                                                       \
        if (!g_enabled) {                                                      \
            print_message("KS_NATS_URL or KS_KUBECONFIG unset: skipped\n");    \
            skip();                                                            \
        }                                                                      \
    } while (0)

/* ---- processes ---- */

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0), port = -1;

    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

/* Start bin with argv, the caller's environment less every KS_ variable,
 * plus vars (NULL-terminated "K=V"); output to log. */
static pid_t spawn(const char *bin, char *const argv[], const char *const *vars, const char *log)
{
    char *envp[512];
    size_t n = 0;
    pid_t parent = getpid(), pid;
    int fd;

    for (char **e = environ; *e != NULL && n < 400; e++)
        if (strncmp(*e, "KS_", 3) != 0)
            envp[n++] = *e;
    for (; *vars != NULL && n < 510; vars++)
        envp[n++] = (char *)*vars;
    envp[n] = NULL;
    fd = open(log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (fd < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fd, 1);
        dup2(fd, 2);
        execve(bin, argv, envp);
        _exit(127);
    }
    close(fd);
    return pid;
}

/* SIGTERM, then wait (SIGKILL after 10 s). Returns 0 when the process
 * exited with status 0: a sanitizer's report at exit makes it non-zero. */
static int stop_pid(pid_t *pid, const char *what)
{
    int64_t end;
    int status = 0, rc = -1;

    if (*pid <= 0)
        return 0;
    kill(*pid, SIGTERM);
    end = now_ms() + 10000;
    while (now_ms() < end) {
        pid_t r = waitpid(*pid, &status, WNOHANG);
        if (r == *pid) {
            rc = WIFEXITED(status) && WEXITSTATUS(status) == 0 ? 0 : -1;
            break;
        }
        if (r < 0 && errno != EINTR)
            break;
        nap_ms(5);
    }
    if (now_ms() >= end) {
        kill(*pid, SIGKILL);
        waitpid(*pid, &status, 0);
    }
    if (rc != 0)
        fprintf(stderr, "%s (pid %ld) did not exit cleanly on SIGTERM (status 0x%x); logs in %s\n",
                what, (long)*pid, status, g_dir);
    *pid = 0;
    return rc;
}

/* A GET on 127.0.0.1:port; the HTTP status, 0 when nothing answered. With
 * body, the answer's body (caller frees). */
static int http_get(int port, const char *path, char **body)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    struct timeval tv = {2, 0};
    char req[256], *buf = NULL, *sep;
    size_t len = 0, cap = 0;
    int fd, code = 0;

    if (body)
        *body = NULL;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if ((fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0)) < 0)
        return 0;
    setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof(tv));
    if (connect(fd, (struct sockaddr *)&sa, sizeof(sa)) != 0)
        goto out;
    snprintf(req, sizeof(req), "GET %s HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n", path);
    if (write(fd, req, strlen(req)) != (ssize_t)strlen(req))
        goto out;
    for (;;) {
        ssize_t r;
        if (len + 4096 + 1 > cap) {
            char *nb = realloc(buf, cap = cap ? cap * 2 : 8192);
            if (nb == NULL)
                goto out;
            buf = nb;
        }
        r = read(fd, buf + len, cap - len - 1);
        if (r <= 0)
            break;
        len += (size_t)r;
    }
    if (buf == NULL)
        goto out;
    buf[len] = '\0';
    if (sscanf(buf, "HTTP/%*s %d", &code) != 1)
        code = 0;
    if (body && (sep = strstr(buf, "\r\n\r\n")) != NULL)
        *body = strdup(sep + 4);
out:
    free(buf);
    close(fd);
    return code;
}

/* A metric's value summed over its series in /metrics of port. */
static double metric_sum(int port, const char *name)
{
    char *body = NULL, *line, *save = NULL;
    double sum = 0;
    size_t n = strlen(name);

    if (http_get(port, "/metrics", &body) != 200 || body == NULL) {
        free(body);
        return -1;
    }
    for (line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
        if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '{')) {
            const char *sp = strrchr(line, ' ');
            if (sp)
                sum += strtod(sp + 1, NULL);
        }
    }
    free(body);
    return sum;
}

static const char *build_dir(void)
{
    const char *b = getenv("KS_TEST_BUILD");
    return b && b[0] ? b : "build/default";
}

static int wait_ready(pid_t pid, int port, const char *what, const char *log)
{
    int64_t end = now_ms() + WAIT_MS;
    int status;

    while (now_ms() < end) {
        if (waitpid(pid, &status, WNOHANG) == pid) {
            fprintf(stderr, "%s exited at start; see %s\n", what, log);
            return -1;
        }
        if (http_get(port, "/readyz", NULL) == 200)
            return 0;
        nap_ms(20);
    }
    fprintf(stderr, "%s not ready within %d ms; see %s\n", what, WAIT_MS, log);
    return -1;
}

static int rm_entry(const char *path, const struct stat *sb, int flag, struct FTW *ftw)
{
    (void)sb;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

/* ---- kube-apiserver, directly (what kubectl does) ---- */

/* One request; the HTTP code (0: no answer). *out (may be NULL) gets the body. */
static long kube(const char *method, const char *path, const char *body, json_t **out)
{
    ks_kube_response r;
    long code;

    if (out)
        *out = NULL;
    if (ks_kube_request(g_kube, method, path, body, NULL, 0, &r) != KS_OK && r.http_code == 0)
        fprintf(stderr, "%s %s: %s\n", method, path, ks_status_last());
    code = r.http_code;
    if (out && r.body)
        *out = json_loads(r.body, 0, NULL);
    ks_kube_response_clear(&r);
    return code;
}

static long kubef(const char *method, const char *path, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static long kubef(const char *method, const char *path, const char *fmt, ...)
{
    char body[8192];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(body, sizeof(body), fmt, ap);
    va_end(ap);
    return kube(method, path, body, NULL);
}

/* kubectl apply -f - with yaml, when kubectl is found: 1 applied, 0 failed,
 * -1 no kubectl. */
static int kubectl_apply(const char *yaml)
{
    const char *kc = getenv("KUBECTL");
    char bin[512], file[300], log[300];
    char *argv[7];
    const char *const novars[] = {NULL};
    int status;
    FILE *f;
    pid_t pid;

    if (kc == NULL || kc[0] == '\0') {
        kc = ".deps/bin/kubectl";
        if (access(kc, X_OK) != 0)
            return -1;
    }
    snprintf(bin, sizeof(bin), "%s", kc);
    snprintf(file, sizeof(file), "%s/apply.yaml", g_dir);
    snprintf(log, sizeof(log), "%s/kubectl.log", g_dir);
    if ((f = fopen(file, "w")) == NULL)
        return 0;
    fputs(yaml, f);
    fclose(f);
    argv[0] = bin;
    argv[1] = "--kubeconfig";
    argv[2] = (char *)getenv("KS_KUBECONFIG");
    argv[3] = "apply";
    argv[4] = "-f";
    argv[5] = file;
    argv[6] = NULL;
    if ((pid = spawn(bin, argv, novars, log)) <= 0)
        return 0;
    if (waitpid(pid, &status, 0) != pid)
        return 0;
    return WIFEXITED(status) && WEXITSTATUS(status) == 0;
}

/* ---- the API over NATS, as the gateway sends it ---- */

typedef struct {
    int code;
    json_t *body;   /* NULL when the body is not JSON */
    char *raw;
} api_res;

static void api_res_clear(api_res *r)
{
    json_decref(r->body);
    free(r->raw);
    memset(r, 0, sizeof(*r));
}

/* method PREFIX+path?query with body (content type ctype, NULL: JSON when
 * there is a body). */
static api_res api_ct(const char *method, const char *path, const char *query, const char *body,
                      size_t blen, const char *ctype)
{
    Kscore__V1__ApiRequest req = KSCORE__V1__API_REQUEST__INIT;
    Kscore__V1__UserInfo user = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__Header hdr = KSCORE__V1__HEADER__INIT, *hp[1] = {&hdr};
    Kscore__V1__ApiResponse *resp = NULL;
    char full[1024], *groups[1] = {"system:authenticated"}, *ctv[1];
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_bus_msg *reply = NULL;
    api_res out = {0};
    int64_t t0;

    snprintf(full, sizeof(full), "%s%s", PREFIX, path);
    user.username = "admin";
    user.groups = groups;
    user.n_groups = 1;
    req.request_id = "test-iam-rbac";
    req.method = (char *)method;
    req.path = full;
    req.raw_query = (char *)(query ? query : "");
    req.user = &user;
    if (body != NULL) {
        req.body.data = (uint8_t *)body;
        req.body.len = blen;
        hdr.name = "Content-Type";
        ctv[0] = (char *)(ctype ? ctype : "application/json");
        hdr.values = ctv;
        hdr.n_values = 1;
        req.headers = hp;
        req.n_headers = 1;
    }
    out.code = -1;
    if (ks_codec_pack(&req.base, &buf, &len) != KS_OK)
        return out;
    t0 = now_ms();
    if (ks_bus_request(g_bus, g_api_subject, buf, len, REQUEST_MS, &reply) != KS_OK) {
        fprintf(stderr, "no answer to %s %s: %s\n", method, path, ks_status_last());
        free(buf);
        return out;
    }
    free(buf);
    if (now_ms() - t0 > 500)
        fprintf(stderr, "slow: %s %s took %lld ms\n", method, path, (long long)(now_ms() - t0));
    if (KS_UNPACK(kscore__v1__api_response, ks_bus_msg_data(reply), ks_bus_msg_len(reply),
                  &resp) == KS_OK) {
        out.code = resp->code;
        out.raw = strndup((const char *)resp->body.data, resp->body.len);
        out.body = json_loadb((const char *)resp->body.data, resp->body.len, 0, NULL);
        ks_codec_free(&resp->base);
    }
    ks_bus_msg_destroy(reply);
    return out;
}

static api_res api(const char *method, const char *path, const char *body)
{
    return api_ct(method, path, NULL, body, body ? strlen(body) : 0, NULL);
}

/* The code of a request, its answer dropped. */
static int api_code(const char *method, const char *path, const char *body)
{
    api_res r = api(method, path, body);
    int code = r.code;
    if (code >= 300 && getenv("KS_TEST_VERBOSE") != NULL)
        fprintf(stderr, "%s %s -> %d %s\n", method, path, code, r.raw ? r.raw : "");
    api_res_clear(&r);
    return code;
}

static const char *jstr(const json_t *o, const char *path)
{
    /* "a.b.c": nested keys */
    char key[128];
    const char *p = path;
    const json_t *cur = o;

    while (cur != NULL && *p) {
        const char *dot = strchr(p, '.');
        size_t n = dot ? (size_t)(dot - p) : strlen(p);
        snprintf(key, sizeof(key), "%.*s", (int)n, p);
        cur = json_object_get(cur, key);
        p += n + (dot ? 1 : 0);
    }
    return json_string_value(cur);
}

static long long total_items(const char *path, const char *query)
{
    api_res r = api_ct("GET", path, query, NULL, 0, NULL);
    long long n = -1;
    if (r.code == 200)
        n = json_integer_value(json_object_get(r.body, "totalItems"));
    api_res_clear(&r);
    return n;
}

/* 1 when a list answer holds an item named name. */
static int list_has(const char *path, const char *name)
{
    api_res r = api("GET", path, NULL);
    size_t i;
    json_t *it;
    int found = 0;

    json_array_foreach(json_object_get(r.body, "items"), i, it) {
        if (strcmp(jstr(it, "metadata.name") ? jstr(it, "metadata.name") : "", name) == 0)
            found = 1;
    }
    api_res_clear(&r);
    return found;
}

/* ---- ks.iam.authz ---- */

typedef struct {
    const char *verb, *group, *resource, *sub, *name, *ns, *ws, *scope, *path;
    int nonres;
} areq;

typedef struct {
    int decision;          /* 1 allow, 2 deny, -1 no answer */
    char reason[600];
    long long ttl;
} adec;

static adec authz_raw(const void *data, size_t len)
{
    Kscore__V1__AuthzResponse *resp = NULL;
    ks_bus_msg *reply = NULL;
    adec d = {.decision = -1};

    if (ks_bus_request(g_bus, "ks.iam.authz", data, len, REQUEST_MS, &reply) != KS_OK)
        return d;
    if (KS_UNPACK(kscore__v1__authz_response, ks_bus_msg_data(reply), ks_bus_msg_len(reply),
                  &resp) == KS_OK) {
        d.decision = resp->decision;
        snprintf(d.reason, sizeof(d.reason), "%s", resp->reason);
        d.ttl = resp->cache_ttl_ms;
        ks_codec_free(&resp->base);
    }
    ks_bus_msg_destroy(reply);
    return d;
}

static adec authz_g(const char *user, char **groups, size_t ngroups, const areq *q)
{
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    Kscore__V1__UserInfo u = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__RequestInfo info = KSCORE__V1__REQUEST_INFO__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    adec d = {.decision = -1};

#define S(x) ((char *)((x) ? (x) : ""))
    u.username = S(user);
    u.groups = groups;
    u.n_groups = ngroups;
    info.is_resource_request = !q->nonres;
    info.verb = S(q->verb);
    info.api_group = S(q->group);
    info.resource = S(q->resource);
    info.subresource = S(q->sub);
    info.name = S(q->name);
    info.namespace_ = S(q->ns);
    info.workspace = S(q->ws);
    info.resource_scope = S(q->scope);
    info.path = S(q->path);
#undef S
    req.user = &u;
    req.info = &info;
    if (ks_codec_pack(&req.base, &buf, &len) != KS_OK)
        return d;
    d = authz_raw(buf, len);
    free(buf);
    return d;
}

static adec authz(const char *user, const areq *q)
{
    char *g[1] = {"system:authenticated"};
    return authz_g(user, g, 1, q);
}

static int allowed(const char *user, const areq *q)
{
    return authz(user, q).decision == 1;
}

static int denied(const char *user, const areq *q)
{
    return authz(user, q).decision == 2;
}

/* Wait for want (1 allowed, 0 denied), up to DECISION_CAP_MS; returns the
 * time it took (recorded), or -1. Each round asks once and judges that
 * answer: asking again could reach the other replica. The answer that
 * ended the wait goes to *out when out is not NULL. */
static int64_t await_decision_d(const char *user, const areq *q, int want, adec *out)
{
    int64_t t0 = now_ms(), took;
    adec d;

    for (;;) {
        d = authz(user, q);
        if (d.decision == (want ? 1 : 2))
            break;
        if (now_ms() - t0 >= DECISION_CAP_MS) {
            fprintf(stderr, "decision for %s after %d ms: %d (%s)\n", user, DECISION_CAP_MS,
                    d.decision, d.reason);
            return -1;
        }
        nap_ms(5);
    }
    took = now_ms() - t0;
    note_latency(want ? "allow" : "deny", user, took);
    if (out != NULL)
        *out = d;
    return took;
}

static int64_t await_decision(const char *user, const areq *q, int want)
{
    return await_decision_d(user, q, want, NULL);
}

/* ---- names ---- */

static char *nm(char *buf, size_t cap, const char *suffix)
{
    snprintf(buf, cap, "%s-%s", g_id, suffix);
    return buf;
}
#define NM(var, suffix) char var[96]; nm(var, sizeof(var), suffix)

/* ---- group setup and teardown ---- */

static int start_all(void)
{
    const char *nats = getenv("KS_NATS_URL"), *kc = getenv("KS_KUBECONFIG");
    char bin[512], log[300], secret[300], v_nats[300], v_kc[600], v_admin[64], v_secret[400];
    unsigned char raw[64];
    char text[65];
    ks_kube_config cfg = {0};
    ks_bus_opts o = {0};
    FILE *f;

    snprintf(g_dir, sizeof(g_dir), "/tmp/kscore-iam-rbac.XXXXXX");
    if (mkdtemp(g_dir) == NULL)
        return -1;
    snprintf(g_id, sizeof(g_id), "t%ld", (long)getpid() % 100000);
    /* 64 random bytes as printable text: the file must not end in a newline */
    if (getrandom(raw, sizeof(raw), 0) != (ssize_t)sizeof(raw))
        return -1;
    for (size_t i = 0; i < 64; i++)
        text[i] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"[raw[i] % 64];
    text[64] = '\0';
    snprintf(secret, sizeof(secret), "%s/jwt-secret", g_dir);
    if ((f = fopen(secret, "w")) == NULL)
        return -1;
    fputs(text, f);
    fclose(f);
    chmod(secret, 0600);
    snprintf(v_nats, sizeof(v_nats), "KS_NATS_URL=%s", nats);
    snprintf(v_kc, sizeof(v_kc), "KS_KUBECONFIG=%s", kc);
    snprintf(v_secret, sizeof(v_secret), "KS_JWT_SECRET_FILE=%s", secret);

    /* The reconciler as the mirror's writer only. Its controllers write to
     * the objects these tests make: the groupbinding controller takes a
     * group without a GroupBinding out of User.spec.groups (documented in
     * docs/controllers.md), so a User created with spec.groups granted only
     * until that write, some 10 ms, and test_groups failed whenever it
     * polled past that moment. The controllers have their own tests. */
    g_rec_port = free_port();
    snprintf(v_admin, sizeof(v_admin), "KS_ADMIN_ADDR=127.0.0.1:%d", g_rec_port);
    snprintf(bin, sizeof(bin), "%s/bin/kscore-reconciler", build_dir());
    snprintf(log, sizeof(log), "%s/reconciler.log", g_dir);
    {
        char *argv[] = {bin, "--leader-elect=false", "--controllers=false", NULL};
        const char *vars[] = {v_nats, v_kc, v_admin, NULL};
        if ((g_rec = spawn(bin, argv, vars, log)) <= 0 || wait_ready(g_rec, g_rec_port, bin, log))
            return -1;
    }
    for (int i = 0; i < NIAM; i++) {
        char v_admin_i[64];
        const char *over = getenv("KS_TEST_IAM_BIN");
        g_iam_port[i] = free_port();
        snprintf(v_admin_i, sizeof(v_admin_i), "KS_ADMIN_ADDR=127.0.0.1:%d", g_iam_port[i]);
        if (over && over[0])
            snprintf(bin, sizeof(bin), "%s", over);
        else
            snprintf(bin, sizeof(bin), "%s/bin/kscore-iam", build_dir());
        snprintf(log, sizeof(log), "%s/iam-%d.log", g_dir, i);
        {
            char *argv[] = {bin, NULL};
            const char *vars[] = {v_nats, v_kc, v_admin_i, v_secret, "KS_BCRYPT_COST=4", NULL};
            if ((g_iam[i] = spawn(bin, argv, vars, log)) <= 0)
                return -1;
        }
    }
    for (int i = 0; i < NIAM; i++) {
        snprintf(log, sizeof(log), "%s/iam-%d.log", g_dir, i);
        if (wait_ready(g_iam[i], g_iam_port[i], "kscore-iam", log))
            return -1;
    }
    o.url = nats;
    o.name = "test_iam_rbac";
    o.wait_connected = 1;
    if (ks_bus_connect(&o, &g_bus) != KS_OK)
        return -1;
    if (ks_kube_config_from_kubeconfig(kc, NULL, &cfg) != KS_OK)
        return -1;
    if (ks_kube_client_create(&cfg, &g_kube) != KS_OK) {
        ks_kube_config_clear(&cfg);
        return -1;
    }
    ks_kube_config_clear(&cfg);
    if (ks_subject_api("iam.kubesphere.io", "v1beta1", g_api_subject, sizeof(g_api_subject)))
        return -1;
    return 0;
}

static int group_setup(void **state)
{
    const char *nats = getenv("KS_NATS_URL"), *kc = getenv("KS_KUBECONFIG");

    (void)state;
    ks_log_init("test_iam_rbac", KS_LOG_WARN);
    if (nats == NULL || nats[0] == '\0' || kc == NULL || kc[0] == '\0')
        return 0;
    if (start_all() != 0) {
        fprintf(stderr, "setup failed: %s (logs in %s)\n", ks_status_last(), g_dir);
        return -1;
    }
    g_enabled = 1;
    return 0;
}

/* Delete every object of a kube collection whose name holds the run's id. */
static void delete_ours(const char *list_path, const char *item_prefix)
{
    json_t *list = NULL, *it;
    size_t i;

    if (kube("GET", list_path, NULL, &list) != 200)
        return;
    json_array_foreach(json_object_get(list, "items"), i, it) {
        const char *name = jstr(it, "metadata.name"), *ns = jstr(it, "metadata.namespace");
        char path[1024];
        if (name == NULL || strstr(name, g_id) == NULL)
            continue;
        if (ns != NULL && ns[0] != '\0')
            snprintf(path, sizeof(path), "%s/namespaces/%s/%s/%s", KAPI, ns, item_prefix, name);
        else
            snprintf(path, sizeof(path), "%s/%s/%s", strcmp(item_prefix, "namespaces") == 0
                     ? "/api/v1" : KAPI, item_prefix, name);
        kube("DELETE", path, NULL, NULL);
    }
    json_decref(list);
}

static int group_teardown(void **state)
{
    static const char *const kinds[] = {"globalroles", "globalrolebindings", "clusterroles",
                                        "clusterrolebindings", "workspaceroles",
                                        "workspacerolebindings", "roles", "rolebindings",
                                        "users", "groupbindings", NULL};
    int clean = 0;

    (void)state;
    print_latencies();
    if (g_kube != NULL && g_id[0] != '\0') {
        for (const char *const *k = kinds; *k; k++) {
            char path[256];
            snprintf(path, sizeof(path), "%s/%s", KAPI, *k);
            delete_ours(path, *k);
        }
        delete_ours("/api/v1/namespaces", "namespaces");
    }
    for (int i = 0; i < NIAM; i++)
        if (stop_pid(&g_iam[i], "kscore-iam") != 0)
            clean = -1;
    if (stop_pid(&g_rec, "kscore-reconciler") != 0)
        clean = -1;
    ks_bus_destroy(g_bus);
    g_bus = NULL;
    ks_kube_client_destroy(g_kube);
    g_kube = NULL;
    if (g_dir[0] != '\0' && getenv("KS_TEST_KEEP") == NULL && clean == 0)
        nftw(g_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return clean;
}

/* ---- object builders ---- */

#define WIDGETS "widgets.kscore.test"

/* A role body granting verbs (a JSON list) on widgets. */
static void role_json(char *out, size_t cap, const char *name, const char *verbs)
{
    snprintf(out, cap,
             "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"metadata\":{\"name\":\"%s\"},"
             "\"rules\":[{\"apiGroups\":[\"" WIDGETS "\"],\"resources\":[\"widgets\"],"
             "\"verbs\":%s}]}",
             name, verbs);
}

static void binding_json(char *out, size_t cap, const char *kind, const char *name,
                         const char *ns, const char *role_kind, const char *role,
                         const char *subj_kind, const char *subj)
{
    char nsf[128] = "";
    if (ns)
        snprintf(nsf, sizeof(nsf), ",\"namespace\":\"%s\"", ns);
    snprintf(out, cap,
             "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"%s\","
             "\"metadata\":{\"name\":\"%s\"%s},"
             "\"roleRef\":{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"%s\",\"name\":\"%s\"},"
             "\"subjects\":[{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"%s\",\"name\":\"%s\"}]}",
             kind, name, nsf, role_kind, role, subj_kind, subj);
}

static void make_namespace(const char *name, const char *ws)
{
    char body[512];
    if (ws)
        snprintf(body, sizeof(body),
                 "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"%s\","
                 "\"labels\":{\"kubesphere.io/workspace\":\"%s\"}}}",
                 name, ws);
    else
        snprintf(body, sizeof(body),
                 "{\"apiVersion\":\"v1\",\"kind\":\"Namespace\",\"metadata\":{\"name\":\"%s\"}}",
                 name);
    assert_int_equal(kube("POST", "/api/v1/namespaces", body, NULL), 201);
}

/* ======================================================================== */
/* ks.iam.authz                                                             */

static void test_authz_bad_messages(void **state)
{
    static const unsigned char garbage[] = {0xff, 0xff, 0xff, 0xff, 0x0f};
    Kscore__V1__AuthzRequest req = KSCORE__V1__AUTHZ_REQUEST__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    char *big, *groups[300];
    adec d;
    areq q = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Planet"};
    areq ok = {.nonres = 1, .verb = "get", .path = "/static/images/logo.png"};

    (void)state;
    NEED_SERVERS();
    d = authz_raw(garbage, sizeof(garbage));
    assert_int_equal(d.decision, 2);
    assert_non_null(strstr(d.reason, "not a valid AuthzRequest"));
    assert_int_equal(d.ttl, 0);

    assert_int_equal(ks_codec_pack(&req.base, &buf, &len), KS_OK);   /* no info */
    d = authz_raw(buf, len);
    free(buf);
    assert_int_equal(d.decision, 2);
    assert_non_null(strstr(d.reason, "no RequestInfo"));
    assert_int_equal(d.ttl, 0);

    d = authz("someone", &q);
    assert_int_equal(d.decision, 2);
    assert_non_null(strstr(d.reason, "unknown resource scope"));

    for (int i = 0; i < 300; i++)
        groups[i] = "g";
    d = authz_g("someone", groups, 300, &ok);
    assert_int_equal(d.decision, 2);
    assert_non_null(strstr(d.reason, "groups"));

    big = malloc(200 * 1024);
    assert_non_null(big);
    memset(big, 'x', 200 * 1024);
    d = authz_raw(big, 200 * 1024);
    free(big);
    assert_int_equal(d.decision, 2);
    assert_int_equal(d.ttl, 0);

    /* still serving, and the policy from config/roles is loaded: the
     * GlobalRole anonymous lets everybody read /static/images/ */
    d = authz_g("", NULL, 0, &ok);
    assert_int_equal(d.decision, 1);
    assert_true(d.ttl > 0);
    assert_non_null(strstr(d.reason, "anonymous"));
}

/* ======================================================================== */
/* Global scope: CRUD through the API, bindings through kube and the API.  */

static void test_global_roles(void **state)
{
    NM(user, "alice");
    NM(role, "gr");
    NM(grb, "grb");
    char body[4096], path[256];
    areq get = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Global"};
    api_res r;
    int64_t took;
    const char *rv;

    (void)state;
    NEED_SERVERS();
    assert_true(denied(user, &get));

    role_json(body, sizeof(body), role, "[\"get\",\"list\"]");
    r = api("POST", "/globalroles", body);
    assert_int_equal(r.code, 201);
    assert_string_equal(jstr(r.body, "kind"), "GlobalRole");
    api_res_clear(&r);
    /* read-your-writes: the GET right after the create sees it */
    snprintf(path, sizeof(path), "/globalroles/%s", role);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(jstr(r.body, "metadata.name"), role);
    api_res_clear(&r);
    {
        char q[128];
        snprintf(q, sizeof(q), "name=%s&limit=10", role);
        assert_int_equal(total_items("/globalroles", q), 1);
    }

    /* a binding written with kubectl (or straight to kube-apiserver) */
    {
        char yaml[1024];
        int k;
        snprintf(yaml, sizeof(yaml),
                 "apiVersion: iam.kubesphere.io/v1beta1\nkind: GlobalRoleBinding\n"
                 "metadata:\n  name: %s\nroleRef:\n  apiGroup: iam.kubesphere.io\n"
                 "  kind: GlobalRole\n  name: %s\nsubjects:\n- apiGroup: iam.kubesphere.io\n"
                 "  kind: User\n  name: %s\n",
                 grb, role, user);
        k = kubectl_apply(yaml);
        if (k < 0) {
            binding_json(body, sizeof(body), "GlobalRoleBinding", grb, NULL, "GlobalRole", role,
                         "User", user);
            assert_int_equal(kube("POST", KAPI "/globalrolebindings", body, NULL), 201);
        } else {
            assert_int_equal(k, 1);
        }
    }
    {
        adec d;
        took = await_decision_d(user, &get, 1, &d);
        assert_true(took >= 0);
        print_message("deny -> allow after a kubectl binding: %lld ms\n", (long long)took);
        assert_non_null(strstr(d.reason, grb));
        assert_int_equal(d.ttl, 5000);
    }

    /* update through the API: rules without get -> deny */
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    json_object_set_new(json_array_get(json_object_get(r.body, "rules"), 0), "verbs",
                        json_pack("[s]", "list"));
    {
        char *text = json_dumps(r.body, JSON_COMPACT);
        char stale[4096];
        api_res u = api("PUT", path, text);
        assert_int_equal(u.code, 200);
        assert_string_not_equal(jstr(u.body, "metadata.resourceVersion"),
                                jstr(r.body, "metadata.resourceVersion"));
        api_res_clear(&u);
        /* the same body again carries a stale resourceVersion: 409 */
        snprintf(stale, sizeof(stale), "%s", text);
        u = api("PUT", path, stale);
        assert_int_equal(u.code, 409);
        assert_string_equal(jstr(u.body, "reason"), "Conflict");
        api_res_clear(&u);
        free(text);
    }
    api_res_clear(&r);
    took = await_decision(user, &get, 0);
    assert_true(took >= 0);
    print_message("allow -> deny after a role update: %lld ms\n", (long long)took);

    /* merge patch back to get */
    r = api_ct("PATCH", path, NULL,
               "{\"rules\":[{\"apiGroups\":[\"" WIDGETS "\"],\"resources\":[\"widgets\"],"
               "\"verbs\":[\"get\"]}]}",
               strlen("{\"rules\":[{\"apiGroups\":[\"" WIDGETS "\"],\"resources\":[\"widgets\"],"
                      "\"verbs\":[\"get\"]}]}"),
               "application/merge-patch+json");
    assert_int_equal(r.code, 200);
    api_res_clear(&r);
    assert_true(await_decision(user, &get, 1) >= 0);

    /* the binding through the API: list, get, delete */
    snprintf(path, sizeof(path), "/globalrolebindings/%s", grb);
    assert_true(list_has("/globalrolebindings", grb));
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    rv = jstr(r.body, "roleRef.name");
    assert_non_null(rv);
    assert_string_equal(rv, role);
    api_res_clear(&r);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_int_equal(api_code("GET", path, NULL), 404);
    took = await_decision(user, &get, 0);
    assert_true(took >= 0);
    print_message("allow -> deny after an API delete: %lld ms\n", (long long)took);

    snprintf(path, sizeof(path), "/globalroles/%s", role);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_int_equal(api_code("GET", path, NULL), 404);
    assert_int_equal(api_code("DELETE", path, NULL), 404);
}

/* ======================================================================== */
/* Cluster scope and cluster members.                                       */

static void test_cluster_scope_and_members(void **state)
{
    NM(user, "bob");
    NM(member, "carol");
    NM(cr, "cr-view");
    NM(cr2, "cr-edit");
    NM(crb, "crb");
    char body[4096], path[256], name[200];
    areq cl = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Cluster"};
    areq gl = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Global"};
    areq del = {.verb = "delete", .group = WIDGETS, .resource = "widgets", .scope = "Cluster"};
    api_res r;

    (void)state;
    NEED_SERVERS();
    role_json(body, sizeof(body), cr, "[\"get\"]");
    assert_int_equal(api_code("POST", "/clusterroles", body), 201);
    role_json(body, sizeof(body), cr2, "[\"get\",\"delete\"]");
    assert_int_equal(api_code("POST", "/clusterroles", body), 201);
    binding_json(body, sizeof(body), "ClusterRoleBinding", crb, NULL, "ClusterRole", cr, "User",
                 user);
    assert_int_equal(api_code("POST", "/clusterrolebindings", body), 201);
    assert_true(await_decision(user, &cl, 1) >= 0);
    /* ClusterRoleBindings are not consulted at Global scope */
    assert_true(denied(user, &gl));
    {
        areq ns = {.verb = "get", .group = WIDGETS, .resource = "widgets", .ns = "default",
                   .scope = "Namespace"};
        assert_true(await_decision(user, &ns, 1) >= 0);
    }
    assert_true(list_has("/clusterroles", cr));
    assert_true(list_has("/clusterrolebindings", crb));

    /* members */
    assert_true(denied(member, &cl));
    snprintf(body, sizeof(body), "[{\"username\":\"%s\",\"roleRef\":\"%s\"}]", member, cr);
    r = api("POST", "/clustermembers", body);
    assert_int_equal(r.code, 200);
    api_res_clear(&r);
    snprintf(name, sizeof(name), "%s-%s", member, cr);
    snprintf(path, sizeof(path), "/clusterrolebindings/%s", name);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "labels"),
                            "iam.kubesphere.io/user-ref")),
                        member);
    api_res_clear(&r);
    assert_true(await_decision(member, &cl, 1) >= 0);
    assert_true(denied(member, &del));

    snprintf(path, sizeof(path), "/clustermembers/%s", member);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "annotations"),
                            "iam.kubesphere.io/clusterrole")),
                        cr);
    assert_null(json_object_get(json_object_get(r.body, "spec"), "password"));
    api_res_clear(&r);
    assert_true(list_has("/clustermembers", member));

    /* change the role: the old binding goes, the new one comes */
    snprintf(body, sizeof(body), "{\"username\":\"%s\",\"roleRef\":\"%s\"}", member, cr2);
    assert_int_equal(api_code("PUT", path, body), 200);
    snprintf(path, sizeof(path), "/clusterrolebindings/%s-%s", member, cr);
    assert_int_equal(api_code("GET", path, NULL), 404);
    snprintf(path, sizeof(path), "/clusterrolebindings/%s-%s", member, cr2);
    assert_int_equal(api_code("GET", path, NULL), 200);
    assert_true(await_decision(member, &del, 1) >= 0);

    /* remove */
    snprintf(path, sizeof(path), "/clustermembers/%s", member);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_int_equal(api_code("GET", path, NULL), 404);
    assert_int_equal(api_code("DELETE", path, NULL), 404);
    assert_false(list_has("/clustermembers", member));
    assert_true(await_decision(member, &cl, 0) >= 0);

    /* a delete straight to kube-apiserver (as kubectl delete) */
    snprintf(path, sizeof(path), KAPI "/clusterrolebindings/%s", crb);
    assert_int_equal(kube("DELETE", path, NULL, NULL), 200);
    assert_true(await_decision(user, &cl, 0) >= 0);
}

/* ======================================================================== */
/* Workspace scope, members, and the namespace label.                       */

static void test_workspace_scope_and_members(void **state)
{
    NM(ws, "ws");
    NM(ws2, "wsb");
    NM(user, "dave");
    NM(ns1, "ns1");
    NM(ns2, "ns2");
    char viewer[128], admin[128], other[128], body[4096], path[512], bname[256];
    areq wsq = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Workspace"};
    areq ns = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Namespace"};
    areq del = {.verb = "delete", .group = WIDGETS, .resource = "widgets", .scope = "Workspace"};
    api_res r;

    (void)state;
    NEED_SERVERS();
    wsq.ws = ws;
    del.ws = ws;
    snprintf(viewer, sizeof(viewer), "%s-viewer", ws);
    snprintf(admin, sizeof(admin), "%s-admin", ws);
    snprintf(other, sizeof(other), "%s-viewer", ws2);

    /* roles: the workspace label is set from the path */
    role_json(body, sizeof(body), viewer, "[\"get\"]");
    snprintf(path, sizeof(path), "/workspaces/%s/workspaceroles", ws);
    r = api("POST", path, body);
    assert_int_equal(r.code, 201);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "labels"),
                            "kubesphere.io/workspace")),
                        ws);
    api_res_clear(&r);
    role_json(body, sizeof(body), admin, "[\"*\"]");
    assert_int_equal(api_code("POST", path, body), 201);
    role_json(body, sizeof(body), other, "[\"get\"]");
    snprintf(path, sizeof(path), "/workspaces/%s/workspaceroles", ws2);
    assert_int_equal(api_code("POST", path, body), 201);
    /* a label contradicting the path */
    snprintf(body, sizeof(body),
             "{\"metadata\":{\"name\":\"%s-x\",\"labels\":{\"kubesphere.io/workspace\":\"%s\"}},"
             "\"rules\":[]}",
             ws, ws2);
    snprintf(path, sizeof(path), "/workspaces/%s/workspaceroles", ws);
    assert_int_equal(api_code("POST", path, body), 400);

    /* lists filter by the label */
    assert_int_equal(total_items(path, NULL), 2);
    assert_true(list_has(path, viewer));
    assert_false(list_has(path, other));
    {
        char q[160];
        snprintf(q, sizeof(q), "sortBy=name&ascending=true&limit=1&page=2");
        r = api_ct("GET", path, q, NULL, 0, NULL);
        assert_int_equal(r.code, 200);
        assert_int_equal(json_integer_value(json_object_get(r.body, "totalItems")), 2);
        assert_int_equal(json_array_size(json_object_get(r.body, "items")), 1);
        assert_string_equal(jstr(json_array_get(json_object_get(r.body, "items"), 0),
                                 "metadata.name"),
                            viewer);
        api_res_clear(&r);
    }
    /* another workspace's role is not found through this workspace */
    snprintf(path, sizeof(path), "/workspaces/%s/workspaceroles/%s", ws, other);
    assert_int_equal(api_code("GET", path, NULL), 404);
    assert_int_equal(api_code("DELETE", path, NULL), 404);

    make_namespace(ns1, ws);
    make_namespace(ns2, NULL);

    /* add a member */
    assert_true(denied(user, &wsq));
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers", ws);
    snprintf(body, sizeof(body), "[{\"username\":\"%s\",\"roleRef\":\"%s\"}]", user, viewer);
    assert_int_equal(api_code("POST", path, body), 200);
    snprintf(bname, sizeof(bname), "%s-%s", user, viewer);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacerolebindings/%s", ws, bname);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "labels"),
                            "kubesphere.io/workspace")),
                        ws);
    api_res_clear(&r);
    assert_true(await_decision(user, &wsq, 1) >= 0);
    ns.ns = ns1;
    assert_true(await_decision(user, &ns, 1) >= 0); /* through the namespace's label */
    ns.ns = ns2;
    assert_true(denied(user, &ns));           /* no label */
    wsq.ws = ws2;
    assert_true(denied(user, &wsq));          /* another workspace */
    wsq.ws = ws;

    /* the label follows the namespace */
    {
        char p[256];
        snprintf(p, sizeof(p), "/api/v1/namespaces/%s", ns2);
        snprintf(body, sizeof(body),
                 "{\"metadata\":{\"labels\":{\"kubesphere.io/workspace\":\"%s\"}}}", ws);
        assert_int_equal(kube("PATCH", p, body, NULL), 200);
        ns.ns = ns2;
        assert_true(await_decision(user, &ns, 1) >= 0);
        snprintf(p, sizeof(p), "/api/v1/namespaces/%s", ns1);
        assert_int_equal(
            kube("PATCH", p, "{\"metadata\":{\"labels\":{\"kubesphere.io/workspace\":null}}}",
                 NULL),
            200);
        ns.ns = ns1;
        assert_true(await_decision(user, &ns, 0) >= 0);
    }

    /* the member view */
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers", ws);
    assert_int_equal(total_items(path, NULL), 1);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers/%s", ws, user);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "annotations"),
                            "iam.kubesphere.io/workspacerole")),
                        viewer);
    api_res_clear(&r);

    /* change the role */
    assert_true(denied(user, &del));
    snprintf(body, sizeof(body), "{\"username\":\"%s\",\"roleRef\":\"%s\"}", user, admin);
    assert_int_equal(api_code("PUT", path, body), 200);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacerolebindings/%s-%s", ws, user, viewer);
    assert_int_equal(api_code("GET", path, NULL), 404);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacerolebindings/%s-%s", ws, user, admin);
    assert_int_equal(api_code("GET", path, NULL), 200);
    assert_true(await_decision(user, &del, 1) >= 0);

    /* a role of another workspace cannot be granted here; nothing is written */
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers", ws);
    snprintf(body, sizeof(body), "[{\"username\":\"%s\",\"roleRef\":\"%s\"}]", user, other);
    assert_int_equal(api_code("POST", path, body), 404);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacerolebindings/%s-%s", ws, user, other);
    assert_int_equal(api_code("GET", path, NULL), 404);

    /* remove */
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers/%s", ws, user);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_true(await_decision(user, &wsq, 0) >= 0);
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers", ws);
    assert_int_equal(total_items(path, NULL), 0);

    /* role delete through the API */
    snprintf(path, sizeof(path), "/workspaces/%s/workspaceroles/%s", ws, viewer);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_int_equal(api_code("GET", path, NULL), 404);
}

/* ======================================================================== */
/* Namespace scope, members, and a binding with several subjects.           */

static void test_namespace_scope_and_members(void **state)
{
    NM(ns, "ns3");
    NM(nsx, "ns4");
    NM(user, "erin");
    NM(member, "frank");
    NM(u3, "gina");
    NM(u4, "hank");
    NM(rb, "rb");
    NM(multi, "multi");
    char body[4096], path[512];
    areq q = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Namespace"};
    areq del = {.verb = "delete", .group = WIDGETS, .resource = "widgets", .scope = "Namespace"};
    api_res r;

    (void)state;
    NEED_SERVERS();
    q.ns = ns;
    del.ns = ns;
    make_namespace(ns, NULL);
    make_namespace(nsx, NULL);
    snprintf(path, sizeof(path), "/namespaces/%s/roles", ns);
    role_json(body, sizeof(body), "viewer", "[\"get\"]");
    assert_int_equal(api_code("POST", path, body), 201);
    role_json(body, sizeof(body), "operator", "[\"get\",\"delete\"]");
    assert_int_equal(api_code("POST", path, body), 201);
    /* the namespace in the body must be the path's */
    snprintf(body, sizeof(body),
             "{\"metadata\":{\"name\":\"x\",\"namespace\":\"%s\"},\"rules\":[]}", nsx);
    assert_int_equal(api_code("POST", path, body), 400);
    assert_true(list_has(path, "viewer"));
    assert_int_equal(total_items(path, NULL), 2);

    snprintf(path, sizeof(path), "/namespaces/%s/rolebindings", ns);
    binding_json(body, sizeof(body), "RoleBinding", rb, NULL, "Role", "viewer", "User", user);
    assert_int_equal(api_code("POST", path, body), 201);
    assert_true(await_decision(user, &q, 1) >= 0);
    {
        areq other = q;
        other.ns = nsx;
        assert_true(denied(user, &other));
    }

    /* namespace members */
    snprintf(path, sizeof(path), "/namespaces/%s/namespacemembers", ns);
    snprintf(body, sizeof(body), "[{\"username\":\"%s\",\"roleRef\":\"viewer\"}]", member);
    assert_int_equal(api_code("POST", path, body), 200);
    assert_true(list_has(path, member));
    assert_true(list_has(path, user));         /* the binding made above counts too */
    snprintf(path, sizeof(path), "/namespaces/%s/rolebindings/%s-viewer", ns, member);
    assert_int_equal(api_code("GET", path, NULL), 200);
    assert_true(await_decision(member, &q, 1) >= 0);
    snprintf(path, sizeof(path), "/namespaces/%s/namespacemembers/%s", ns, member);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_string_equal(json_string_value(json_object_get(
                            json_object_get(json_object_get(r.body, "metadata"), "annotations"),
                            "iam.kubesphere.io/role")),
                        "viewer");
    api_res_clear(&r);
    /* PUT without username takes the URL's */
    assert_int_equal(api_code("PUT", path, "{\"roleRef\":\"operator\"}"), 200);
    assert_true(await_decision(member, &del, 1) >= 0);
    snprintf(path, sizeof(path), "/namespaces/%s/rolebindings/%s-viewer", ns, member);
    assert_int_equal(api_code("GET", path, NULL), 404);
    snprintf(path, sizeof(path), "/namespaces/%s/namespacemembers/%s", ns, member);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_true(await_decision(member, &q, 0) >= 0);

    /* a binding of two users, written to kube: removing one keeps the other */
    snprintf(path, sizeof(path), KAPI "/namespaces/%s/rolebindings", ns);
    assert_int_equal(
        kubef("POST", path,
              "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"RoleBinding\","
              "\"metadata\":{\"name\":\"%s\",\"namespace\":\"%s\"},"
              "\"roleRef\":{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"Role\",\"name\":"
              "\"viewer\"},\"subjects\":[{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"User\","
              "\"name\":\"%s\"},{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"User\",\"name\":"
              "\"%s\"}]}",
              multi, ns, u3, u4),
        201);
    assert_true(await_decision(u3, &q, 1) >= 0);
    assert_true(await_decision(u4, &q, 1) >= 0);
    snprintf(path, sizeof(path), "/namespaces/%s/namespacemembers/%s", ns, u3);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    snprintf(path, sizeof(path), "/namespaces/%s/rolebindings/%s", ns, multi);
    r = api("GET", path, NULL);
    assert_int_equal(r.code, 200);
    assert_int_equal(json_array_size(json_object_get(r.body, "subjects")), 1);
    api_res_clear(&r);
    assert_true(await_decision(u3, &q, 0) >= 0);
    assert_true(allowed(u4, &q));

    /* deleting the binding through the API */
    snprintf(path, sizeof(path), "/namespaces/%s/rolebindings/%s", ns, rb);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_true(await_decision(user, &q, 0) >= 0);
    /* a role deleted: its bindings grant nothing */
    snprintf(path, sizeof(path), "/namespaces/%s/roles/viewer", ns);
    assert_int_equal(api_code("DELETE", path, NULL), 200);
    assert_true(await_decision(u4, &q, 0) >= 0);
}

/* ======================================================================== */
/* Groups: GroupBindings, User.spec.groups, token groups.                   */

static void test_groups(void **state)
{
    NM(group, "devs");
    NM(group2, "ops");
    NM(role, "gr-groups");
    NM(grb, "grb-devs");
    NM(grb2, "grb-ops");
    NM(gb, "gb");
    NM(u5, "ivy");
    NM(u6, "jack");
    NM(u7, "kim");
    char body[4096], path[512];
    areq q = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Global"};

    (void)state;
    NEED_SERVERS();
    role_json(body, sizeof(body), role, "[\"get\"]");
    assert_int_equal(api_code("POST", "/globalroles", body), 201);
    binding_json(body, sizeof(body), "GlobalRoleBinding", grb, NULL, "GlobalRole", role, "Group",
                 group);
    assert_int_equal(api_code("POST", "/globalrolebindings", body), 201);
    binding_json(body, sizeof(body), "GlobalRoleBinding", grb2, NULL, "GlobalRole", role, "Group",
                 group2);
    assert_int_equal(api_code("POST", "/globalrolebindings", body), 201);
    assert_true(denied(u5, &q));

    /* GroupBinding {groupRef, users} */
    assert_int_equal(kubef("POST", KAPI "/groupbindings",
                           "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":"
                           "\"GroupBinding\",\"metadata\":{\"name\":\"%s\"},\"groupRef\":{"
                           "\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"Group\",\"name\":"
                           "\"%s\"},\"users\":[\"%s\"]}",
                           gb, group, u5),
                     201);
    assert_true(await_decision(u5, &q, 1) >= 0);
    snprintf(path, sizeof(path), KAPI "/groupbindings/%s", gb);
    assert_int_equal(kube("PATCH", path, "{\"users\":[]}", NULL), 200);
    assert_true(await_decision(u5, &q, 0) >= 0);
    assert_int_equal(kube("PATCH", path, "{\"users\":[\"x\",\"" "\"]}", NULL) / 100, 2);
    snprintf(body, sizeof(body), "{\"users\":[\"%s\"]}", u5);
    assert_int_equal(kube("PATCH", path, body, NULL), 200);
    assert_true(await_decision(u5, &q, 1) >= 0);
    assert_int_equal(kube("DELETE", path, NULL, NULL), 200);
    assert_true(await_decision(u5, &q, 0) >= 0);

    /* User.spec.groups */
    assert_int_equal(kubef("POST", KAPI "/users",
                           "{\"apiVersion\":\"iam.kubesphere.io/v1beta1\",\"kind\":\"User\","
                           "\"metadata\":{\"name\":\"%s\"},\"spec\":{\"email\":\"%s@example.com\","
                           "\"groups\":[\"%s\"]}}",
                           u6, u6, group2),
                     201);
    assert_true(await_decision(u6, &q, 1) >= 0);
    snprintf(path, sizeof(path), KAPI "/users/%s", u6);
    assert_int_equal(kube("PATCH", path, "{\"spec\":{\"groups\":null}}", NULL), 200);
    assert_true(await_decision(u6, &q, 0) >= 0);

    /* groups carried by the request (the token's) */
    {
        char *g[2] = {"system:authenticated", group};
        assert_int_equal(authz_g(u7, g, 2, &q).decision, 1);
        assert_int_equal(authz_g(u7, g, 1, &q).decision, 2);
    }
}

/* ======================================================================== */
/* A binding the policy refuses stops granting at once.                     */

static void test_invalid_binding_revokes(void **state)
{
    NM(user, "leo");
    NM(role, "gr-inv");
    NM(grb, "grb-inv");
    char body[4096], path[256];
    areq q = {.verb = "get", .group = WIDGETS, .resource = "widgets", .scope = "Global"};
    double before[NIAM];

    (void)state;
    NEED_SERVERS();
    for (int i = 0; i < NIAM; i++)
        before[i] = metric_sum(g_iam_port[i], "ks_iam_policy_invalid_total");
    role_json(body, sizeof(body), role, "[\"get\"]");
    assert_int_equal(api_code("POST", "/globalroles", body), 201);
    binding_json(body, sizeof(body), "GlobalRoleBinding", grb, NULL, "GlobalRole", role, "User",
                 user);
    assert_int_equal(kube("POST", KAPI "/globalrolebindings", body, NULL), 201);
    assert_true(await_decision(user, &q, 1) >= 0);
    /* kube-apiserver takes a GlobalRoleBinding of a Role; the RBAC store does
     * not: the old version must stop granting */
    snprintf(path, sizeof(path), KAPI "/globalrolebindings/%s", grb);
    assert_int_equal(kube("PATCH", path,
                          "{\"roleRef\":{\"apiGroup\":\"iam.kubesphere.io\",\"kind\":\"Role\","
                          "\"name\":\"whatever\"}}",
                          NULL),
                     200);
    assert_true(await_decision(user, &q, 0) >= 0);
    /* Each replica counts it when its own mirror applies the change; the
     * wait above may have been answered by the other one. */
    for (int i = 0; i < NIAM; i++) {
        int64_t end = now_ms() + DECISION_CAP_MS;
        while (metric_sum(g_iam_port[i], "ks_iam_policy_invalid_total") <= before[i] &&
               now_ms() < end)
            nap_ms(5);
        assert_true(metric_sum(g_iam_port[i], "ks_iam_policy_invalid_total") > before[i]);
    }
    /* the API refuses to write such a binding in the first place */
    {
        NM(grb2, "grb-inv2");
        binding_json(body, sizeof(body), "GlobalRoleBinding", grb2, NULL, "Role", role, "User",
                     user);
        assert_int_equal(api_code("POST", "/globalrolebindings", body), 422);
        snprintf(path, sizeof(path), "/globalrolebindings/%s", grb2);
        assert_int_equal(api_code("GET", path, NULL), 404);
    }
}

/* ======================================================================== */
/* SubjectAccessReview.                                                      */

static api_res sar(const char *spec)
{
    char body[4096];
    snprintf(body, sizeof(body),
             "{\"apiVersion\":\"authorization.k8s.io/v1\",\"kind\":\"SubjectAccessReview\","
             "\"spec\":%s}",
             spec);
    return api("POST", "/subjectaccessreviews", body);
}

static int sar_allowed_r(const api_res *r)
{
    int a = -1;
    if (r->code == 201) {
        json_t *st = json_object_get(r->body, "status");
        a = json_is_true(json_object_get(st, "allowed"));
        assert_non_null(json_string_value(json_object_get(st, "reason")));
        assert_string_equal(jstr(r->body, "kind"), "SubjectAccessReview");
    }
    return a;
}

static int sar_allowed(const char *spec)
{
    api_res r = sar(spec);
    int a = sar_allowed_r(&r);
    api_res_clear(&r);
    return a;
}

/* await_decision for a review: up to DECISION_CAP_MS for status.allowed to
 * be want; the time it took (recorded), or -1. The answer that ended the
 * wait goes to *out (the caller clears it) when out is not NULL. */
static int64_t await_sar(const char *spec, int want, api_res *out)
{
    int64_t t0 = now_ms(), took;
    api_res r;

    for (;;) {
        r = sar(spec);
        if (sar_allowed_r(&r) == want)
            break;
        if (now_ms() - t0 >= DECISION_CAP_MS) {
            const char *why = jstr(r.body, "status.reason");
            fprintf(stderr, "review %s after %d ms: HTTP %d, %s\n", spec, DECISION_CAP_MS,
                    r.code, why ? why : "-");
            api_res_clear(&r);
            return -1;
        }
        api_res_clear(&r);
        nap_ms(5);
    }
    took = now_ms() - t0;
    note_latency(want ? "review allow" : "review deny", "a review", took);
    if (out != NULL)
        *out = r;
    else
        api_res_clear(&r);
    return took;
}

static void test_subjectaccessreviews(void **state)
{
    NM(user, "mia");
    NM(role, "gr-sar");
    NM(grb, "grb-sar");
    NM(ns, "ns5");
    char body[4096], spec[2048];
    api_res r;

    (void)state;
    NEED_SERVERS();
    snprintf(body, sizeof(body),
             "{\"metadata\":{\"name\":\"%s\"},\"rules\":[{\"apiGroups\":[\"" WIDGETS "\"],"
             "\"resources\":[\"widgets\"],\"verbs\":[\"get\"]},{\"nonResourceURLs\":[\"/%s/*\"],"
             "\"verbs\":[\"get\"]}]}",
             role, g_id);
    assert_int_equal(api_code("POST", "/globalroles", body), 201);
    snprintf(spec, sizeof(spec),
             "{\"user\":\"%s\",\"resourceAttributes\":{\"namespace\":\"%s\",\"verb\":\"get\","
             "\"group\":\"" WIDGETS "\",\"resource\":\"widgets\"}}",
             user, ns);
    assert_int_equal(sar_allowed(spec), 0);
    binding_json(body, sizeof(body), "GlobalRoleBinding", grb, NULL, "GlobalRole", role, "User",
                 user);
    assert_int_equal(api_code("POST", "/globalrolebindings", body), 201);
    assert_true(await_sar(spec, 1, &r) >= 0);
    assert_non_null(strstr(jstr(r.body, "status.reason"), grb));
    assert_string_equal(jstr(r.body, "spec.user"), user);
    api_res_clear(&r);
    /* non-resource */
    snprintf(spec, sizeof(spec),
             "{\"user\":\"%s\",\"nonResourceAttributes\":{\"path\":\"/%s/x\",\"verb\":\"get\"}}",
             user, g_id);
    assert_true(await_sar(spec, 1, NULL) >= 0); /* the same binding, maybe the other replica */
    snprintf(spec, sizeof(spec),
             "{\"user\":\"%s\",\"nonResourceAttributes\":{\"path\":\"/%s-other\",\"verb\":"
             "\"get\"}}",
             user, g_id);
    assert_int_equal(sar_allowed(spec), 0);
    /* groups in the spec */
    snprintf(spec, sizeof(spec),
             "{\"user\":\"nobody-%s\",\"groups\":[\"%s-g\"],\"resourceAttributes\":{\"verb\":"
             "\"get\",\"group\":\"" WIDGETS "\",\"resource\":\"widgets\"}}",
             g_id, g_id);
    assert_int_equal(sar_allowed(spec), 0);
    /* kscore's built-in rule: a user reads their own User */
    snprintf(spec, sizeof(spec),
             "{\"user\":\"%s\",\"resourceAttributes\":{\"verb\":\"get\",\"group\":"
             "\"iam.kubesphere.io\",\"resource\":\"users\",\"name\":\"%s\",\"scope\":\"Global\"}}",
             user, user);
    assert_int_equal(sar_allowed(spec), 1);
    snprintf(spec, sizeof(spec),
             "{\"user\":\"%s\",\"resourceAttributes\":{\"verb\":\"delete\",\"group\":"
             "\"iam.kubesphere.io\",\"resource\":\"users\",\"name\":\"%s\",\"scope\":\"Global\"}}",
             user, user);
    assert_int_equal(sar_allowed(spec), 0);

    /* bad reviews */
    assert_int_equal(
        api_code("POST", "/subjectaccessreviews", "{\"kind\":\"SubjectAccessReview\"}"), 422);
    assert_int_equal(api_code("POST", "/subjectaccessreviews",
                              "{\"kind\":\"Pod\",\"spec\":{\"user\":\"a\"}}"),
                     400);
    r = sar("{\"user\":\"a\",\"resourceAttributes\":{\"verb\":\"get\"},"
            "\"nonResourceAttributes\":{\"path\":\"/\",\"verb\":\"get\"}}");
    assert_int_equal(r.code, 422);
    api_res_clear(&r);
    r = sar("{\"resourceAttributes\":{\"verb\":\"get\"}}");
    assert_int_equal(r.code, 422);
    api_res_clear(&r);
    r = sar("{\"user\":\"a\",\"resourceAttributes\":{\"resource\":\"pods\"}}");
    assert_int_equal(r.code, 422);
    api_res_clear(&r);
    r = sar("{\"user\":\"a\",\"resourceAttributes\":{\"verb\":\"get\",\"scope\":\"Moon\"}}");
    assert_int_equal(r.code, 422);
    api_res_clear(&r);
    assert_int_equal(api_code("POST", "/subjectaccessreviews", "{\"spec\":"), 400);
    r = api_ct("POST", "/subjectaccessreviews", NULL, "{}", 2, "text/plain");
    assert_int_equal(r.code, 415);
    api_res_clear(&r);
}

/* ======================================================================== */
/* Bad input: a precise Status, nothing written.                            */

static void expect_status(api_res r, int code, const char *reason)
{
    if (r.code != code)
        fprintf(stderr, "want %d %s, got %d %s\n", code, reason, r.code, r.raw ? r.raw : "");
    assert_int_equal(r.code, code);
    assert_string_equal(jstr(r.body, "kind"), "Status");
    assert_string_equal(jstr(r.body, "status"), "Failure");
    assert_string_equal(jstr(r.body, "reason"), reason);
    assert_int_equal(json_integer_value(json_object_get(r.body, "code")), code);
    api_res_clear(&r);
}

static void test_bad_input(void **state)
{
    NM(role, "gr-bad");
    NM(ws, "ws-bad");
    char body[4096], path[256];

    (void)state;
    NEED_SERVERS();
    snprintf(path, sizeof(path), "/globalroles/%s", role);

    expect_status(api("POST", "/globalroles", "{\"metadata\":"), 400, "BadRequest");
    expect_status(api_ct("POST", "/globalroles", NULL, "{}", 2, "application/yaml"), 415,
                  "UnsupportedMediaType");
    snprintf(body, sizeof(body), "{\"kind\":\"ClusterRole\",\"metadata\":{\"name\":\"%s\"}}",
             role);
    expect_status(api("POST", "/globalroles", body), 400, "BadRequest");
    snprintf(body, sizeof(body), "{\"apiVersion\":\"v1\",\"metadata\":{\"name\":\"%s\"}}", role);
    expect_status(api("POST", "/globalroles", body), 400, "BadRequest");
    expect_status(api("POST", "/globalroles", "{\"metadata\":{\"name\":\"Bad_Name\"}}"), 422,
                  "Invalid");
    expect_status(api("POST", "/globalroles", "{\"rules\":[]}"), 422, "Invalid");
    expect_status(api("POST", "/globalroles", "[1,2]"), 400, "BadRequest");
    /* unknown fields: kube-apiserver's strict field validation */
    snprintf(body, sizeof(body), "{\"metadata\":{\"name\":\"%s\"},\"rules\":[],\"bogus\":1}",
             role);
    expect_status(api("POST", "/globalroles", body), 400, "BadRequest");
    /* a rule of the wrong shape: the policy compiler's verdict */
    snprintf(body, sizeof(body), "{\"metadata\":{\"name\":\"%s\"},\"rules\":[{\"verbs\":\"get\"}]}",
             role);
    expect_status(api("POST", "/globalroles", body), 422, "Invalid");
    /* a namespace on a cluster-scoped kind */
    snprintf(body, sizeof(body), "{\"metadata\":{\"name\":\"%s\",\"namespace\":\"default\"}}",
             role);
    expect_status(api("POST", "/globalroles", body), 400, "BadRequest");
    /* a binding of the wrong role kind */
    binding_json(body, sizeof(body), "ClusterRoleBinding", role, NULL, "GlobalRole", "x", "User",
                 "u");
    expect_status(api("POST", "/clusterrolebindings", body), 422, "Invalid");
    /* none of that was written */
    assert_int_equal(api_code("GET", path, NULL), 404);
    {
        char p2[256];
        snprintf(p2, sizeof(p2), "/clusterrolebindings/%s", role);
        assert_int_equal(api_code("GET", p2, NULL), 404);
    }

    /* AlreadyExists */
    role_json(body, sizeof(body), role, "[\"get\"]");
    assert_int_equal(api_code("POST", "/globalroles", body), 201);
    expect_status(api("POST", "/globalroles", body), 409, "AlreadyExists");
    /* the name on the URL rules */
    snprintf(body, sizeof(body), "{\"metadata\":{\"name\":\"%s-other\"},\"rules\":[]}", role);
    expect_status(api("PUT", path, body), 400, "BadRequest");
    /* PUT of something that is not there */
    {
        char p2[256];
        snprintf(p2, sizeof(p2), "/globalroles/%s-nothere", role);
        snprintf(body, sizeof(body), "{\"rules\":[]}");
        expect_status(api("PUT", p2, body), 404, "NotFound");
    }
    expect_status(api_ct("PATCH", path, NULL, "[]", 2, "application/json-patch+json"), 415,
                  "UnsupportedMediaType");
    expect_status(api_ct("PATCH", path, NULL, "{\"kind\":\"Role\"}", strlen("{\"kind\":\"Role\"}"),
                         "application/merge-patch+json"),
                  400, "BadRequest");
    expect_status(api_ct("PATCH", path, NULL, "{\"rules\":[{\"verbs\":7}]}",
                         strlen("{\"rules\":[{\"verbs\":7}]}"), "application/merge-patch+json"),
                  422, "Invalid");
    /* names in the path */
    expect_status(api("GET", "/globalroles/UPPER", NULL), 400, "BadRequest");
    expect_status(api("GET", "/workspaces/Bad_WS/workspaceroles", NULL), 400, "BadRequest");
    expect_status(api("DELETE", "/globalroles", NULL), 405, "MethodNotAllowed");
    expect_status(api_ct("GET", "/globalroles", "page=0", NULL, 0, NULL), 400, "BadRequest");
    expect_status(api_ct("GET", "/globalroles", "labelSelector=a%20in%20(b)", NULL, 0, NULL), 400,
                  "BadRequest");
    expect_status(api_ct("GET", "/globalroles", "sortBy=size", NULL, 0, NULL), 400,
                  "BadRequest");

    /* members */
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers", ws);
    expect_status(api("POST", path, "{\"username\":\"a\"}"), 400, "BadRequest");
    expect_status(api("POST", path, "[]"), 400, "BadRequest");
    expect_status(api("POST", path, "[{\"username\":\"A B\",\"roleRef\":\"r\"}]"), 422,
                  "Invalid");
    expect_status(api("POST", path, "[{\"username\":\"a\",\"roleRef\":\"r\",\"x\":1}]"), 400,
                  "BadRequest");
    expect_status(api("POST", path, "[{\"username\":\"a\",\"roleRef\":\"no-such-role\"}]"), 404,
                  "NotFound");
    expect_status(api("POST", path, "[{\"username\":\"a\"}]"), 422, "Invalid");
    snprintf(path, sizeof(path), "/workspaces/%s/workspacemembers/a", ws);
    expect_status(api("PUT", path, "{\"username\":\"b\",\"roleRef\":\"r\"}"), 400, "BadRequest");
    expect_status(api("DELETE", path, NULL), 404, "NotFound");
    snprintf(path, sizeof(path), "/workspaces/%s/workspacerolebindings", ws);
    assert_int_equal(total_items(path, NULL), 0);

    /* and the service still serves */
    assert_int_equal(total_items("/globalroles", "name=" "platform-admin"), 1);
}

/* ======================================================================== */
/* Read your writes through both replicas.                                  */

static void test_read_your_writes(void **state)
{
    char body[1024], path[256], name[96];
    int64_t t0;

    (void)state;
    NEED_SERVERS();
    for (int i = 0; i < 20; i++) {
        snprintf(name, sizeof(name), "%s-ryw-%d", g_id, i);
        role_json(body, sizeof(body), name, "[\"get\"]");
        assert_int_equal(api_code("POST", "/clusterroles", body), 201);
        snprintf(path, sizeof(path), "/clusterroles/%s", name);
        t0 = now_ms();
        assert_int_equal(api_code("GET", path, NULL), 200);
        /* from the mirror after its read barrier: a barrier that timed out
         * (read-wait is 2 s) and fell back to kube-apiserver shows here */
        assert_true(now_ms() - t0 < 1500);
        assert_true(list_has("/clusterroles", name));
        assert_int_equal(api_code("DELETE", path, NULL), 200);
        assert_int_equal(api_code("GET", path, NULL), 404);
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_authz_bad_messages),
        cmocka_unit_test(test_global_roles),
        cmocka_unit_test(test_cluster_scope_and_members),
        cmocka_unit_test(test_workspace_scope_and_members),
        cmocka_unit_test(test_namespace_scope_and_members),
        cmocka_unit_test(test_groups),
        cmocka_unit_test(test_invalid_binding_revokes),
        cmocka_unit_test(test_subjectaccessreviews),
        cmocka_unit_test(test_bad_input),
        cmocka_unit_test(test_read_your_writes),
    };
    const char *filter = getenv("KS_TEST_FILTER");

    if (filter != NULL && filter[0] != '\0')
        cmocka_set_test_filter(filter);
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
