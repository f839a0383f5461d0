/* Integration tests of kscore-audit and kscore-audit-tail (Audit issue items
 * 2-5; docs/audit.md) against a real nats-server: KS_NATS_URL from
 * scripts/test.sh, or one started here (JetStream in a mktemp -d folder, a
 * free 127.0.0.1 port) when it is unset.
 *
 * The test publishes AuditEvents into KS_AUDIT itself, as the gateway does
 * (subject ks.audit.<ws>.<ns>.<resource>.<verb>, Nats-Msg-Id = audit ID),
 * and reads the store file (SQLite, read-only) to check what was stored:
 *   - 20,000 events: exactly 20,000 rows, sequences 1..N, no gaps;
 *   - a duplicate publish is stored once, and so is a re-publish of the
 *     same audit ID under another Nats-Msg-Id;
 *   - SIGKILL of the service in the middle of 30,000 events, restart:
 *     exactly every event once, and `kscore-audit verify` passes;
 *   - the query API on both subjects, scoped per caller, and precise 400s;
 *   - tampering with one row makes `kscore-audit verify` fail naming it;
 *   - a message deleted from the stream before it was read is a gap, the
 *     rest is stored;
 *   - kscore-audit-tail prints what is published (live, with filters) and
 *     replays from a time.
 * Who may see what is decided by a stand-in for iam on ks.iam.authz (a
 * table: admin sees all, alice namespace ns-a and workspace ws-a) and the
 * namespaces and workspaces put into the mirror bucket as the reconciler
 * would; both are removed at the end, as is the stream.
 *
 * Every wait is a bounded poll; processes are stopped by PID (and get
 * PR_SET_PDEATHSIG); 127.0.0.1 only. KS_TEST_KEEP=1 keeps the folder. */
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
#include <pthread.h>
#include <signal.h>
#include <sqlite3.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "codec.h"
#include "kscore/v1/api.pb-c.h"
#include "kscore/v1/audit.pb-c.h"
#include "kscore/v1/iam.pb-c.h"
#include "kscore/v1/mirror.pb-c.h"
#include "log.h"
#include "subject.h"
#include "uuid.h"

#define SUBJ_TENANT "ks.api.tenant_kubesphere_io.v1alpha2.auditing"
#define SUBJ_AUDITING "ks.api.auditing_kubesphere_io.v1alpha1"
#define PATH_TENANT "/kapis/tenant.kubesphere.io/v1alpha2/auditing/events"
#define PATH_AUDITING "/kapis/auditing.kubesphere.io/v1alpha1/events"
#define N_BULK 20000
#define N_KILL 30000
#define WAIT_MS 60000

extern char **environ;

typedef struct {
    pid_t pid;
    int port;
    char log[320];
} proc;

static struct {
    char dir[256];
    char nats[256];
    char db[320];
    char durable[64];
    pid_t own_nats;
    proc audit;
    ks_bus *bus;
    ks_bus_sub *iam;
    ks_bus_kv *kv;
    atomic_long acked, ack_failed;
    int64_t t0_unix;
    uint64_t rows;        /* events the store must hold */
    uint64_t seqs;        /* stream sequences published so far */
    char qa_ids[6][KS_UUID_STR_SIZE];
} T;

/* ---- time, processes ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
    }
}

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

/* fork + execve with the caller's environment less KS_*, plus vars; stdout
 * to out, stderr to err (the same file when err is NULL). */
static pid_t spawn(const char *bin, char *const argv[], const char *const *vars, const char *out,
                   const char *err)
{
    char *envp[512];
    size_t n = 0;
    pid_t parent = getpid(), pid;
    int fo, fe;

    for (char **e = environ; *e != NULL && n < 400; e++)
        if (strncmp(*e, "KS_", 3) != 0)
            envp[n++] = *e;
    for (; vars != NULL && *vars != NULL && n < 510; vars++)
        envp[n++] = (char *)*vars;
    envp[n] = NULL;
    fo = open(out, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    fe = err ? open(err, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644) : fo;
    if (fo < 0 || fe < 0)
        return -1;
    pid = fork();
    if (pid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        dup2(fo, 1);
        dup2(fe, 2);
        execve(bin, argv, envp);
        _exit(127);
    }
    close(fo);
    if (err)
        close(fe);
    return pid;
}

/* Wait for pid to end, at most ms; its exit status, or -1 (still running). */
static int wait_exit(pid_t pid, int ms)
{
    int64_t end = now_ms() + ms;
    int status;

    while (now_ms() < end) {
        pid_t r = waitpid(pid, &status, WNOHANG);
        if (r == pid)
            return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
        if (r < 0 && errno != EINTR)
            return -2;
        nap_ms(10);
    }
    return -1;
}

static void stop_pid(pid_t *pid, int sig)
{
    if (*pid <= 0)
        return;
    kill(*pid, sig);
    if (wait_exit(*pid, 10000) == -1) {
        kill(*pid, SIGKILL);
        waitpid(*pid, NULL, 0);
    }
    *pid = 0;
}

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

/* One sample of a metric (sum of its series) on the audit service. */
static double metric(const char *name)
{
    char *body = NULL, *line, *save = NULL;
    double sum = -1;
    size_t n = strlen(name);

    if (http_get(T.audit.port, "/metrics", &body) != 200 || body == NULL) {
        free(body);
        return -1;
    }
    for (line = strtok_r(body, "\n", &save); line; line = strtok_r(NULL, "\n", &save))
        if (strncmp(line, name, n) == 0 && (line[n] == ' ' || line[n] == '{')) {
            const char *sp = strrchr(line, ' ');
            sum = (sum < 0 ? 0 : sum) + (sp ? strtod(sp + 1, NULL) : 0);
        }
    free(body);
    return sum;
}

static const char *build_dir(void)
{
    const char *b = getenv("KS_TEST_BUILD");
    return b && b[0] ? b : "build/default";
}

static int start_audit(void)
{
    char bin[512], v_nats[300], v_admin[64], v_db[400], v_cons[128];
    char *argv[] = {bin, NULL};
    const char *vars[] = {v_nats, v_admin, v_db, v_cons, "KS_AUDIT_MAX_BYTES=1073741824",
                          "KS_AUDIT_SYNC_FULL=false", "KS_AUDIT_SCOPE_CACHE_TTL=0",
                          "KS_LOG_LEVEL=info", NULL};
    int64_t end;
    int status;

    snprintf(bin, sizeof(bin), "%s/bin/kscore-audit", build_dir());
    snprintf(v_nats, sizeof(v_nats), "KS_NATS_URL=%s", T.nats);
    snprintf(v_db, sizeof(v_db), "KS_AUDIT_DB=%s", T.db);
    snprintf(v_cons, sizeof(v_cons), "KS_AUDIT_CONSUMER=%s", T.durable);
    T.audit.port = free_port();
    snprintf(v_admin, sizeof(v_admin), "KS_ADMIN_ADDR=127.0.0.1:%d", T.audit.port);
    snprintf(T.audit.log, sizeof(T.audit.log), "%s/audit.log", T.dir);
    T.audit.pid = spawn(bin, argv, vars, T.audit.log, NULL);
    if (T.audit.pid <= 0)
        return -1;
    end = now_ms() + 30000;
    while (now_ms() < end) {
        if (http_get(T.audit.port, "/readyz", NULL) == 200)
            return 0;
        if (waitpid(T.audit.pid, &status, WNOHANG) == T.audit.pid) {
            fprintf(stderr, "kscore-audit exited during start-up; see %s\n", T.audit.log);
            T.audit.pid = 0;
            return -1;
        }
        nap_ms(20);
    }
    fprintf(stderr, "kscore-audit not ready in 30 s; see %s\n", T.audit.log);
    return -1;
}

/* ---- the store, read directly ---- */

static int64_t db_int(const char *sql)
{
    sqlite3 *db = NULL;
    sqlite3_stmt *q = NULL;
    int64_t v = -1;

    if (sqlite3_open_v2(T.db, &db, SQLITE_OPEN_READONLY, NULL) == SQLITE_OK &&
        sqlite3_busy_timeout(db, 2000) == SQLITE_OK &&
        sqlite3_prepare_v2(db, sql, -1, &q, NULL) == SQLITE_OK && sqlite3_step(q) == SQLITE_ROW)
        v = sqlite3_column_int64(q, 0);
    sqlite3_finalize(q);
    sqlite3_close(db);
    return v;
}

static int64_t db_rows(void)
{
    return db_int("SELECT count(*) FROM aud_events");
}

static int64_t db_position(void)
{
    return db_int("SELECT v FROM aud_meta WHERE k = 'last_seq'");
}

/* Poll until the store's position reaches seq. */
static void await_position(uint64_t seq)
{
    int64_t end = now_ms() + WAIT_MS, p = -1;

    while (now_ms() < end) {
        p = db_position();
        if (p >= (int64_t)seq)
            return;
        nap_ms(20);
    }
    fail_msg("the store reached sequence %lld, not %llu, in %d ms (see %s)", (long long)p,
             (unsigned long long)seq, WAIT_MS, T.audit.log);
}

/* ---- events ---- */

typedef struct {
    const char *user, *verb, *ws, *ns, *resource, *name;
    int code;
} ev_spec;

static void pack_event(const ev_spec *s, const char *id, int64_t ts_us, uint8_t **buf,
                       size_t *len, char *subject, size_t cap)
{
    Kscore__V1__AuditEvent ev = KSCORE__V1__AUDIT_EVENT__INIT;
    Kscore__V1__UserInfo u = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__ObjectReference o = KSCORE__V1__OBJECT_REFERENCE__INIT;
    Kscore__V1__Status rs = KSCORE__V1__STATUS__INIT;
    char *groups[] = {"system:authenticated"};
    char *ips[] = {"127.0.0.1"};

    ev.audit_id = (char *)id;
    ev.level = "Metadata";
    ev.stage = "ResponseComplete";
    ev.request_uri = "/kapis/x";
    ev.verb = (char *)s->verb;
    u.username = (char *)s->user;
    u.groups = groups;
    u.n_groups = 1;
    ev.user = &u;
    ev.source_ips = ips;
    ev.n_source_ips = 1;
    ev.user_agent = "test_audit";
    o.resource = (char *)s->resource;
    o.namespace_ = (char *)s->ns;
    o.name = (char *)s->name;
    o.api_version = "v1";
    ev.object_ref = &o;
    rs.code = s->code;
    rs.status = s->code < 400 ? "Success" : "Failure";
    ev.response_status = &rs;
    ev.request_received_unix_us = ts_us;
    ev.stage_unix_us = ts_us + 100;
    ev.workspace = (char *)s->ws;
    ev.cluster = "host";
    assert_int_equal(ks_codec_pack(&ev.base, buf, len), KS_OK);
    assert_int_equal(ks_subject_audit(s->ws, s->ns, s->resource, s->verb, subject, cap), KS_OK);
}

static int64_t wall_us(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000 + ts.tv_nsec / 1000;
}

/* Publish one event and wait for its ack; *dup: the stream dropped it. */
static void publish_sync(const ev_spec *s, const char *id, const char *msg_id, int *dup)
{
    uint8_t *buf = NULL;
    size_t len = 0;
    char subject[1024];
    uint64_t seq = 0;

    pack_event(s, id, wall_us(), &buf, &len, subject, sizeof(subject));
    assert_int_equal(ks_bus_js_publish(T.bus, subject, buf, len, msg_id, &seq, dup), KS_OK);
    free(buf);
}

static void on_ack(void *arg, const char *subject, const char *msg_id, ks_status st, uint64_t seq)
{
    if (st == KS_OK)
        atomic_fetch_add(&T.acked, 1);
    else
        atomic_fetch_add(&T.ack_failed, 1);
}

/* n bulk events, asynchronously, each with a fresh UUIDv7 as audit ID and
 * Nats-Msg-Id; returns when every publish is acked. */
static void publish_bulk(int n, const char *user)
{
    static const char *const verbs[] = {"get", "list", "create", "update", "delete"};
    static const char *const nss[] = {"ns-a", "ns-b", ""};
    static const char *const wss[] = {"ws-a", "ws-b", ""};
    long before = atomic_load(&T.acked);

    for (int i = 0; i < n; i++) {
        char id[KS_UUID_STR_SIZE], name[32], subject[1024];
        ev_spec s = {user, verbs[i % 5], wss[i % 3], nss[i % 3], i % 2 ? "pods" : "secrets", name,
                     i % 7 ? 200 : 403};
        uint8_t *buf = NULL;
        size_t len = 0;
        ks_status st;

        snprintf(name, sizeof(name), "obj-%d", i);
        assert_int_equal(ks_uuid_v7(id), KS_OK);
        pack_event(&s, id, wall_us(), &buf, &len, subject, sizeof(subject));
        /* the async window is bounded: on a full window, let acks come */
        while ((st = ks_bus_js_publish_async(T.bus, subject, buf, len, id)) != KS_OK)
            nap_ms(1);
        free(buf);
    }
    assert_int_equal(ks_bus_js_publish_async_complete(T.bus, 30000), KS_OK);
    assert_int_equal(atomic_load(&T.ack_failed), 0);
    assert_int_equal(atomic_load(&T.acked) - before, n);
}

/* ---- the stand-in for iam ---- */

static void on_authz(ks_bus *bus, ks_bus_msg *msg, void *arg)
{
    Kscore__V1__AuthzRequest *req = NULL;
    Kscore__V1__AuthzResponse resp = KSCORE__V1__AUTHZ_RESPONSE__INIT;
    uint8_t *buf = NULL;
    size_t len = 0;
    int allow = 0;

    if (KS_UNPACK(kscore__v1__authz_request, ks_bus_msg_data(msg), ks_bus_msg_len(msg), &req) ==
            KS_OK &&
        req->user && req->info) {
        const char *u = req->user->username, *scope = req->info->resource_scope;
        int events = strcmp(req->info->resource, "events") == 0 &&
                     strcmp(req->info->verb, "list") == 0;
        if (strcmp(u, "admin") == 0)
            allow = 1;
        else if (strcmp(u, "alice") == 0 && events)
            allow = (strcmp(scope, "Namespace") == 0 && strcmp(req->info->namespace_, "ns-a") == 0) ||
                    (strcmp(scope, "Workspace") == 0 && strcmp(req->info->workspace, "ws-a") == 0);
    }
    resp.decision = allow ? KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_ALLOW
                          : KSCORE__V1__AUTHZ_RESPONSE__DECISION__DECISION_NO_OPINION;
    resp.cache_ttl_ms = 1000;
    if (ks_codec_pack(&resp.base, &buf, &len) == KS_OK)
        (void)ks_bus_respond(bus, msg, buf, len);
    free(buf);
    ks_codec_free(req ? &req->base : NULL);
    ks_bus_msg_destroy(msg);
}

/* ---- the mirror: namespaces and workspaces, as the reconciler writes them ---- */

static const struct {
    const char *group, *resource, *name, *kind;
} mirror_objs[] = {
    {"", "namespaces", "ns-a", "Namespace"},
    {"", "namespaces", "ns-b", "Namespace"},
    {"tenant.kubesphere.io", "workspaces", "ws-a", "Workspace"},
    {"tenant.kubesphere.io", "workspaces", "ws-b", "Workspace"},
};

static void mirror_put(void)
{
    ks_bus_kv_cfg kc = {.bucket = "KS_OBJECTS"};

    assert_int_equal(ks_bus_kv_open(T.bus, &kc, 1, &T.kv), KS_OK);
    for (size_t i = 0; i < sizeof(mirror_objs) / sizeof(mirror_objs[0]); i++) {
        Kscore__V1__ObjectEvent oe = KSCORE__V1__OBJECT_EVENT__INIT;
        char key[512], res[128], json[512];
        uint8_t *buf = NULL;
        size_t len = 0;

        snprintf(res, sizeof(res), "%s/%s", mirror_objs[i].group, mirror_objs[i].resource);
        snprintf(json, sizeof(json),
                 "{\"apiVersion\":\"v1\",\"kind\":\"%s\",\"metadata\":{\"name\":\"%s\","
                 "\"uid\":\"uid-%zu\",\"resourceVersion\":\"1\","
                 "\"creationTimestamp\":\"2020-01-01T00:00:00Z\"}}",
                 mirror_objs[i].kind, mirror_objs[i].name, i);
        oe.type = KSCORE__V1__OBJECT_EVENT__TYPE__TYPE_ADDED;
        oe.resource = res;
        oe.name = (char *)mirror_objs[i].name;
        oe.uid = "uid";
        oe.resource_version = "1";
        oe.object.data = (uint8_t *)json;
        oe.object.len = strlen(json);
        oe.observed_unix_ms = wall_us() / 1000;
        assert_int_equal(ks_subject_object_key(mirror_objs[i].group, mirror_objs[i].resource, "",
                                               mirror_objs[i].name, key, sizeof(key)),
                         KS_OK);
        assert_int_equal(ks_codec_pack(&oe.base, &buf, &len), KS_OK);
        assert_int_equal(ks_bus_kv_put(T.kv, key, buf, len, NULL), KS_OK);
        free(buf);
    }
}

static void mirror_remove(void)
{
    for (size_t i = 0; T.kv != NULL && i < sizeof(mirror_objs) / sizeof(mirror_objs[0]); i++) {
        char key[512];
        if (ks_subject_object_key(mirror_objs[i].group, mirror_objs[i].resource, "",
                                  mirror_objs[i].name, key, sizeof(key)) == KS_OK)
            (void)ks_bus_kv_delete(T.kv, key);
    }
    ks_bus_kv_close(T.kv);
    T.kv = NULL;
}

/* ---- the API, as the gateway calls it ---- */

/* GET path?query as user on subject; the HTTP code, and the body as JSON. */
static int api_get(const char *subject, const char *path, const char *query, const char *user,
                   json_t **body)
{
    Kscore__V1__ApiRequest req = KSCORE__V1__API_REQUEST__INIT;
    Kscore__V1__UserInfo u = KSCORE__V1__USER_INFO__INIT;
    Kscore__V1__ApiResponse *resp = NULL;
    char *groups[] = {"system:authenticated"};
    ks_bus_msg *reply = NULL;
    uint8_t *buf = NULL;
    size_t len = 0;
    int code;

    req.request_id = "test";
    req.method = "GET";
    req.path = (char *)path;
    req.raw_query = (char *)query;
    u.username = (char *)user;
    u.groups = groups;
    u.n_groups = 1;
    req.user = &u;
    req.deadline_unix_ms = wall_us() / 1000 + 10000;
    assert_int_equal(ks_codec_pack(&req.base, &buf, &len), KS_OK);
    assert_int_equal(ks_bus_request(T.bus, subject, buf, len, 10000, &reply), KS_OK);
    free(buf);
    assert_int_equal(KS_UNPACK(kscore__v1__api_response, ks_bus_msg_data(reply),
                               ks_bus_msg_len(reply), &resp),
                     KS_OK);
    code = resp->code;
    *body = json_loadb((const char *)resp->body.data, resp->body.len, 0, NULL);
    if (*body == NULL)
        fail_msg("%s?%s: the answer is not JSON", path, query);
    ks_codec_free(&resp->base);
    ks_bus_msg_destroy(reply);
    return code;
}

static json_int_t query_total(const char *subject, const char *path, const char *query,
                              const char *user)
{
    json_t *b = NULL;
    int code = api_get(subject, path, query, user, &b);
    json_int_t total;

    if (code != 200)
        fail_msg("%s?%s as %s: %d %s", path, query, user, code,
                 json_string_value(json_object_get(b, "message")));
    total = json_integer_value(json_object_get(json_object_get(b, "query"), "total"));
    json_decref(b);
    return total;
}

/* ---- setup ---- */

static int rm_entry(const char *p, const struct stat *sb, int flag, struct FTW *ftw)
{
    return remove(p);
}

static int start_own_nats(void)
{
    char port[16], sd[300], log[320], bin[] = "/usr/sbin/nats-server";
    int p = free_port();
    char *argv[] = {bin, "-a", "127.0.0.1", "-p", port, "-js", "-sd", sd, NULL};
    int64_t end;

    snprintf(port, sizeof(port), "%d", p);
    snprintf(sd, sizeof(sd), "%s/js", T.dir);
    snprintf(log, sizeof(log), "%s/nats.log", T.dir);
    snprintf(T.nats, sizeof(T.nats), "nats://127.0.0.1:%d", p);
    T.own_nats = spawn(bin, argv, NULL, log, NULL);
    end = now_ms() + 10000;
    while (now_ms() < end) {
        ks_bus_opts o = {.url = T.nats, .wait_connected = 1, .connect_timeout_ms = 200};
        ks_bus *b = NULL;
        if (ks_bus_connect(&o, &b) == KS_OK) {
            ks_bus_destroy(b);
            return 0;
        }
        nap_ms(50);
    }
    return -1;
}

static int group_setup(void **state)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts o = {0};

    ks_log_init("test_audit", KS_LOG_WARN);
    signal(SIGPIPE, SIG_IGN);
    snprintf(T.dir, sizeof(T.dir), "/tmp/kscore-test-audit.XXXXXX");
    if (mkdtemp(T.dir) == NULL)
        return -1;
    snprintf(T.db, sizeof(T.db), "%s/audit.db", T.dir);
    snprintf(T.durable, sizeof(T.durable), "test-audit-%d", (int)getpid());
    T.t0_unix = wall_us() / 1000000 - 1;
    if (url != NULL && url[0] != '\0')
        snprintf(T.nats, sizeof(T.nats), "%s", url);
    else if (start_own_nats() != 0)
        return -1;
    o.url = T.nats;
    o.name = "test_audit";
    o.wait_connected = 1;
    o.on_ack = on_ack;
    if (ks_bus_connect(&o, &T.bus) != KS_OK)
        return -1;
    /* a clean stream: the suite counts sequences from 1 */
    (void)ks_bus_stream_delete(T.bus, "KS_AUDIT");
    if (ks_bus_subscribe(T.bus, "ks.iam.authz", "iam", on_authz, NULL, &T.iam) != KS_OK)
        return -1;
    mirror_put();
    return start_audit();
}

static int group_teardown(void **state)
{
    const char *keep = getenv("KS_TEST_KEEP");

    stop_pid(&T.audit.pid, SIGTERM);
    if (T.bus != NULL) {
        (void)ks_bus_stream_delete(T.bus, "KS_AUDIT");
        mirror_remove();
        ks_bus_unsubscribe(T.iam);
        ks_bus_destroy(T.bus);
    }
    stop_pid(&T.own_nats, SIGTERM);
    if (keep != NULL && strcmp(keep, "1") == 0)
        fprintf(stderr, "kept %s\n", T.dir);
    else
        nftw(T.dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    return 0;
}

/* ---- the tests ---- */

static void test_ingest_exact(void **state)
{
    publish_bulk(N_BULK, "bulk");
    T.seqs += N_BULK;
    T.rows += N_BULK;
    await_position(T.seqs);
    assert_int_equal(db_rows(), N_BULK);
    assert_int_equal(db_int("SELECT count(DISTINCT audit_id) FROM aud_events"), N_BULK);
    assert_int_equal(db_int("SELECT min(seq) FROM aud_events"), 1);
    assert_int_equal(db_int("SELECT max(seq) FROM aud_events"), N_BULK);
    assert_int_equal(db_int("SELECT count(*) FROM aud_gaps"), 0);
    /* a row per sequence, none missing: the chain holds */
    assert_int_equal(metric("ks_audit_events_stored_total"), N_BULK);
    {
        int64_t end = now_ms() + 10000;
        while (metric("ks_audit_consumer_lag") != 0 && now_ms() < end)
            nap_ms(100);
        assert_int_equal(metric("ks_audit_consumer_lag"), 0);
    }
}

static void test_duplicate_stored_once(void **state)
{
    ev_spec s = {"dup-user", "create", "ws-a", "ns-a", "pods", "dup", 201};
    char id[KS_UUID_STR_SIZE], other[64], sql[256];
    int dup = -1;

    assert_int_equal(ks_uuid_v7(id), KS_OK);
    publish_sync(&s, id, id, &dup);
    assert_int_equal(dup, 0);
    /* the same Nats-Msg-Id within the window: the stream drops it */
    publish_sync(&s, id, id, &dup);
    assert_int_equal(dup, 1);
    /* the same audit ID under another message id (a re-publish after the
     * window): a new stream sequence, but the store keeps one row */
    snprintf(other, sizeof(other), "%s-again", id);
    publish_sync(&s, id, other, &dup);
    assert_int_equal(dup, 0);
    T.seqs += 2;
    T.rows += 1;
    await_position(T.seqs);
    snprintf(sql, sizeof(sql), "SELECT count(*) FROM aud_events WHERE audit_id = '%s'", id);
    assert_int_equal(db_int(sql), 1);
    assert_int_equal(db_rows(), (int64_t)T.rows);
    assert_int_equal(db_int("SELECT count(*) FROM aud_gaps WHERE reason LIKE 'duplicate audit ID%'"), 1);
    assert_int_equal(metric("ks_audit_duplicates_total"), 1);
}

static void *publisher(void *arg)
{
    publish_bulk(N_KILL, "kill");
    return NULL;
}

static int run_verify(char *out, size_t cap)
{
    char bin[512], outf[400], db[400];
    char *argv[] = {bin, "verify", "--audit-db", db, NULL};
    pid_t pid;
    int rc;
    FILE *f;
    size_t n;

    snprintf(bin, sizeof(bin), "%s/bin/kscore-audit", build_dir());
    snprintf(db, sizeof(db), "%s", T.db);
    snprintf(outf, sizeof(outf), "%s/verify.out", T.dir);
    unlink(outf);
    pid = spawn(bin, argv, NULL, outf, NULL);
    rc = wait_exit(pid, 60000);
    f = fopen(outf, "r");
    n = f ? fread(out, 1, cap - 1, f) : 0;
    out[n] = '\0';
    if (f)
        fclose(f);
    return rc;
}

static void test_sigkill_mid_stream(void **state)
{
    pthread_t th;
    char out[2048];
    int64_t end;
    uint64_t base = T.rows;

    assert_int_equal(pthread_create(&th, NULL, publisher, NULL), 0);
    /* kill it while it stores */
    end = now_ms() + WAIT_MS;
    while (db_rows() < (int64_t)base + 3000 && now_ms() < end)
        nap_ms(2);
    assert_true(db_rows() < (int64_t)base + N_KILL);
    kill(T.audit.pid, SIGKILL);
    assert_int_equal(wait_exit(T.audit.pid, 10000), 128 + SIGKILL);
    T.audit.pid = 0;
    fprintf(stderr, "killed kscore-audit with %lld of %d events stored\n",
            (long long)(db_rows() - (int64_t)base), N_KILL);
    pthread_join(th, NULL);
    T.seqs += N_KILL;
    T.rows += N_KILL;
    assert_int_equal(start_audit(), 0);
    await_position(T.seqs);
    assert_int_equal(db_rows(), (int64_t)T.rows);
    assert_int_equal(db_int("SELECT count(DISTINCT audit_id) FROM aud_events"), (int64_t)T.rows);
    assert_int_equal(db_int("SELECT count(*) FROM aud_events WHERE username = 'kill'"), N_KILL);
    /* nothing skipped: the only gap is the duplicate of the test before */
    assert_int_equal(db_int("SELECT count(*) FROM aud_gaps"), 1);
    assert_int_equal(run_verify(out, sizeof(out)), 0);
    assert_non_null(strstr(out, "ok:"));
}

static void test_queries_and_scope(void **state)
{
    const ev_spec qa[6] = {
        {"qa-user", "create", "ws-a", "ns-a", "pods", "pod-1", 201},
        {"qa-user", "update", "ws-a", "", "workspaces", "ws-a", 200},
        {"qa-user", "delete", "ws-b", "ns-b", "pods", "pod-2", 403},
        {"qa-user", "create", "", "", "users", "bob", 201},
        {"qa-user", "get", "ws-b", "", "workspaces", "ws-b", 200},
        {"qa-user2", "get", "ws-a", "ns-a", "pods", "pod-3", 404},
    };
    json_t *b = NULL, *recs;
    int dup;

    for (int i = 0; i < 6; i++) {
        assert_int_equal(ks_uuid_v7(T.qa_ids[i]), KS_OK);
        publish_sync(&qa[i], T.qa_ids[i], T.qa_ids[i], &dup);
    }
    T.seqs += 6;
    T.rows += 6;
    await_position(T.seqs);

    /* admin sees everything, newest first */
    assert_int_equal(api_get(SUBJ_TENANT, PATH_TENANT, "user_filter=qa-user", "admin", &b), 200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "query"), "total")), 5);
    recs = json_object_get(json_object_get(b, "query"), "records");
    assert_int_equal(json_array_size(recs), 5);
    assert_string_equal(json_string_value(json_object_get(json_array_get(recs, 0), "AuditID")),
                        T.qa_ids[4]);
    assert_string_equal(json_string_value(json_object_get(json_object_get(json_array_get(recs, 4),
                                                                           "ObjectRef"),
                                                           "Name")),
                        "pod-1");
    json_decref(b);
    /* the same API under auditing.kubesphere.io */
    assert_int_equal(query_total(SUBJ_AUDITING, PATH_AUDITING, "user_filter=qa-user", "admin"), 5);
    /* alice: her namespace ns-a and her workspace ws-a only */
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "user_filter=qa-user", "alice"), 2);
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "user_search=qa-user", "alice"), 3);
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "user_search=qa-user&workspace_filter=ws-b",
                                 "alice"),
                     0);
    /* eve: nothing */
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "", "eve"), 0);
    /* search and filters together */
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "user_search=qa-user&objectref_name_search=pod",
                                 "admin"),
                     3);
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT,
                                 "user_search=qa-user&response_code_filter=403,404", "admin"),
                     2);
    /* statistics and histogram */
    assert_int_equal(api_get(SUBJ_TENANT, PATH_TENANT, "operation=statistics&user_filter=qa-user",
                             "admin", &b),
                     200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "statistics"), "events")), 5);
    json_decref(b);
    assert_int_equal(api_get(SUBJ_TENANT, PATH_TENANT,
                             "operation=histogram&user_filter=qa-user&interval=1h", "alice", &b),
                     200);
    assert_int_equal(json_integer_value(json_object_get(json_object_get(b, "histogram"), "total")), 2);
    json_decref(b);
}

static void test_bad_input_400(void **state)
{
    static const struct {
        const char *query, *says;
    } bad[] = {
        {"start_time=yesterday", "start_time must be Unix seconds"},
        {"end_time=12.5", "end_time must be Unix seconds"},
        {"start_time=200&end_time=100", "after end_time"},
        {"size=-1", "size must not be negative"},
        {"from=-1", "from must not be negative"},
        {"size=1001", "size must be at most 1000"},
        {"operation=drop", "unknown operation"},
        {"sort=sideways", "sort must be asc or desc"},
        {"interval=5parsecs", "interval must be"},
        {"response_code_filter=teapot", "not an HTTP status code"},
        {"continue=nonsense", "continue"},
    };
    json_t *b = NULL;

    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        int code = api_get(SUBJ_TENANT, PATH_TENANT, bad[i].query, "admin", &b);
        const char *msg = json_string_value(json_object_get(b, "message"));
        if (code != 400 || msg == NULL || strstr(msg, bad[i].says) == NULL ||
            strcmp(json_string_value(json_object_get(b, "kind")), "Status") != 0 ||
            strcmp(json_string_value(json_object_get(b, "reason")), "BadRequest") != 0)
            fail_msg("%s: %d %s", bad[i].query, code, msg ? msg : "(no message)");
        json_decref(b);
    }
    assert_int_equal(api_get(SUBJ_TENANT, "/kapis/tenant.kubesphere.io/v1alpha2/auditing/nothing",
                             "", "admin", &b),
                     404);
    json_decref(b);
    /* still serving */
    assert_int_equal(query_total(SUBJ_TENANT, PATH_TENANT, "user_filter=qa-user", "admin"), 5);
}

static void test_verify_names_tampered_row(void **state)
{
    sqlite3 *db = NULL;
    char out[2048], want[128], id[64] = "";
    sqlite3_stmt *q = NULL;

    assert_int_equal(run_verify(out, sizeof(out)), 0);
    assert_int_equal(sqlite3_open_v2(T.db, &db, SQLITE_OPEN_READWRITE, NULL), SQLITE_OK);
    sqlite3_busy_timeout(db, 5000);
    assert_int_equal(sqlite3_prepare_v2(db, "SELECT audit_id FROM aud_events WHERE seq = 10", -1,
                                        &q, NULL),
                     SQLITE_OK);
    assert_int_equal(sqlite3_step(q), SQLITE_ROW);
    snprintf(id, sizeof(id), "%s", (const char *)sqlite3_column_text(q, 0));
    sqlite3_finalize(q);
    assert_int_equal(sqlite3_exec(db, "UPDATE aud_events SET username = 'mallory' WHERE seq = 10",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    assert_int_equal(run_verify(out, sizeof(out)), 1);
    snprintf(want, sizeof(want), "BROKEN at sequence 10 (audit ID %s)", id);
    if (strstr(out, want) == NULL)
        fail_msg("verify said: %s", out);
    assert_non_null(strstr(out, "column username"));
    assert_int_equal(sqlite3_exec(db, "UPDATE aud_events SET username = 'bulk' WHERE seq = 10",
                                  NULL, NULL, NULL),
                     SQLITE_OK);
    sqlite3_close(db);
    assert_int_equal(run_verify(out, sizeof(out)), 0);
}


/* A message deleted from the stream before the service read it: the store
 * records that sequence as a gap, stores the rest, and the chain holds. */
static void test_deleted_message_is_a_gap(void **state)
{
    ev_spec s = {"gap-user", "create", "ws-a", "ns-a", "pods", "gap", 201};
    ks_bus_msg *reply = NULL;
    char body[64], sql[128], out[2048];
    uint64_t victim;
    int dup;
    double gaps_before = metric("ks_audit_gap_sequences_total");

    stop_pid(&T.audit.pid, SIGTERM);
    for (int i = 0; i < 10; i++) {
        char id[KS_UUID_STR_SIZE];
        assert_int_equal(ks_uuid_v7(id), KS_OK);
        publish_sync(&s, id, id, &dup);
    }
    victim = T.seqs + 5;
    T.seqs += 10;
    T.rows += 9;
    snprintf(body, sizeof(body), "{\"seq\":%llu}", (unsigned long long)victim);
    assert_int_equal(ks_bus_request(T.bus, "$JS.API.STREAM.MSG.DELETE.KS_AUDIT", body,
                                    strlen(body), 5000, &reply),
                     KS_OK);
    if (strstr((const char *)ks_bus_msg_data(reply), "\"success\":true") == NULL)
        fail_msg("delete: %.*s", (int)ks_bus_msg_len(reply), (const char *)ks_bus_msg_data(reply));
    ks_bus_msg_destroy(reply);
    assert_int_equal(start_audit(), 0);
    await_position(T.seqs);
    assert_int_equal(db_rows(), (int64_t)T.rows);
    assert_int_equal(db_int("SELECT count(*) FROM aud_events WHERE username = 'gap-user'"), 9);
    snprintf(sql, sizeof(sql),
             "SELECT count(*) FROM aud_gaps WHERE first_seq = %llu AND last_seq = %llu",
             (unsigned long long)victim, (unsigned long long)victim);
    assert_int_equal(db_int(sql), 1);
    assert_true(metric("ks_audit_gap_sequences_total") >= 1);
    (void)gaps_before;
    assert_int_equal(run_verify(out, sizeof(out)), 0);
}

/* kscore-audit-tail ARGS...; out and err files; the PID. */
static pid_t start_tail(const char *const *args, const char *out, const char *err)
{
    char bin[512], v_nats[300];
    char *argv[16] = {bin};
    const char *vars[] = {v_nats, NULL};
    size_t n = 1;

    snprintf(bin, sizeof(bin), "%s/bin/kscore-audit-tail", build_dir());
    snprintf(v_nats, sizeof(v_nats), "KS_NATS_URL=%s", T.nats);
    for (; *args != NULL && n < 15; args++)
        argv[n++] = (char *)*args;
    argv[n] = NULL;
    unlink(out);
    unlink(err);
    return spawn(bin, argv, vars, out, err);
}

static int file_has(const char *path, const char *text)
{
    char buf[65536];
    FILE *f = fopen(path, "r");
    size_t n = f ? fread(buf, 1, sizeof(buf) - 1, f) : 0;

    if (f)
        fclose(f);
    buf[n] = '\0';
    return strstr(buf, text) != NULL;
}

/* The AuditIDs of the JSON lines in path. */
static size_t read_ids(const char *path, char ids[][KS_UUID_STR_SIZE], size_t cap)
{
    char line[65536];
    size_t n = 0;
    FILE *f = fopen(path, "r");

    while (f != NULL && fgets(line, sizeof(line), f) != NULL) {
        json_t *j = json_loads(line, 0, NULL);
        const char *id = json_string_value(json_object_get(j, "AuditID"));
        if (id == NULL)
            fail_msg("%s: not an event line: %s", path, line);
        if (n < cap)
            snprintf(ids[n], KS_UUID_STR_SIZE, "%s", id);
        n++;
        json_decref(j);
    }
    if (f)
        fclose(f);
    return n;
}

static void test_tail_live(void **state)
{
    const char *args[] = {"--verb", "create", "--namespace", "tail-ns", NULL};
    char out[400], err[400], ids[8][KS_UUID_STR_SIZE], got[16][KS_UUID_STR_SIZE];
    ev_spec yes = {"tail-user", "create", "ws-a", "tail-ns", "configmaps", "cm", 201};
    ev_spec no1 = {"tail-user", "delete", "ws-a", "tail-ns", "configmaps", "cm", 200};
    ev_spec no2 = {"tail-user", "create", "ws-a", "other-ns", "configmaps", "cm", 201};
    int64_t end;
    pid_t pid;
    int dup;
    size_t n = 0;

    snprintf(out, sizeof(out), "%s/tail.out", T.dir);
    snprintf(err, sizeof(err), "%s/tail.err", T.dir);
    pid = start_tail(args, out, err);
    assert_true(pid > 0);
    end = now_ms() + 10000;
    while (!file_has(err, "following") && now_ms() < end)
        nap_ms(20);
    assert_true(file_has(err, "following ks.audit.*.tail-ns.*.create"));
    /* the others first: when the last match is printed, they were seen */
    for (int i = 0; i < 4; i++) {
        char id[KS_UUID_STR_SIZE];
        assert_int_equal(ks_uuid_v7(id), KS_OK);
        publish_sync(i % 2 ? &no1 : &no2, id, id, &dup);
    }
    for (int i = 0; i < 5; i++) {
        assert_int_equal(ks_uuid_v7(ids[i]), KS_OK);
        publish_sync(&yes, ids[i], ids[i], &dup);
    }
    T.seqs += 9;
    T.rows += 9;
    end = now_ms() + 10000;
    while ((n = read_ids(out, got, 16)) < 5 && now_ms() < end)
        nap_ms(20);
    assert_int_equal(n, 5);
    for (int i = 0; i < 5; i++)
        assert_string_equal(got[i], ids[i]);
    kill(pid, SIGINT);
    assert_int_equal(wait_exit(pid, 5000), 0);
    await_position(T.seqs);
}

static void test_tail_replay(void **state)
{
    char since[32], out[400], err[400], got[16][KS_UUID_STR_SIZE];
    const char *args[] = {"--since", since, "--user", "qa-user", NULL};
    const char *args_count[] = {"--since", since, "--user", "qa-user", "--count", "2", NULL};
    int64_t end;
    pid_t pid;
    size_t n = 0;

    snprintf(since, sizeof(since), "%lld", (long long)T.t0_unix);
    snprintf(out, sizeof(out), "%s/replay.out", T.dir);
    snprintf(err, sizeof(err), "%s/replay.err", T.dir);
    pid = start_tail(args, out, err);
    assert_true(pid > 0);
    end = now_ms() + 20000;
    while ((n = read_ids(out, got, 16)) < 5 && now_ms() < end)
        nap_ms(20);
    assert_int_equal(n, 5);
    /* in stream order: qa events 0..4 (5 is qa-user2) */
    for (int i = 0; i < 5; i++)
        assert_string_equal(got[i], T.qa_ids[i]);
    kill(pid, SIGINT);
    assert_int_equal(wait_exit(pid, 5000), 0);
    assert_int_equal(read_ids(out, got, 16), 5);

    /* --count: exits by itself */
    pid = start_tail(args_count, out, err);
    assert_int_equal(wait_exit(pid, 20000), 0);
    assert_int_equal(read_ids(out, got, 16), 2);
    assert_string_equal(got[1], T.qa_ids[1]);

    /* bad usage */
    {
        const char *bad[] = {"--since", "last tuesday", NULL};
        pid = start_tail(bad, out, err);
        assert_int_equal(wait_exit(pid, 5000), 2);
        assert_true(file_has(err, "--since"));
    }
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ingest_exact),
        cmocka_unit_test(test_duplicate_stored_once),
        cmocka_unit_test(test_sigkill_mid_stream),
        cmocka_unit_test(test_queries_and_scope),
        cmocka_unit_test(test_bad_input_400),
        cmocka_unit_test(test_verify_names_tampered_row),
        cmocka_unit_test(test_deleted_message_is_a_gap),
        cmocka_unit_test(test_tail_live),
        cmocka_unit_test(test_tail_replay),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
