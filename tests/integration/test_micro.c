/* Integration tests for lib/micro.c: the NATS micro protocol ($SRV.PING,
 * $SRV.INFO, $SRV.STATS) and micro endpoints, against a real nats-server.
 *
 * The server is the one in KS_NATS_URL (scripts/test.sh starts a control
 * plane and exports it); when unset, the group setup starts its own
 * nats-server (JetStream, temp folder, free 127.0.0.1 port) and stops it by
 * PID in the teardown. Service names carry this process's PID, so the tests
 * can share a server with other services and other runs.
 *
 * When the nats CLI is found (KS_NATS_CLI, else .deps/bin/nats under the
 * current folder), every reply is also checked with `nats schema validate`
 * against the io.nats.micro.v1 schemas natscli ships. */
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
#include <nats/nats.h>
#include <netinet/in.h>
#include <pthread.h>
#include <regex.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "bus.h"
#include "log.h"
#include "micro.h"

#define WAIT_MS 3000 /* bound of every wait for a reply */

static struct {
    char url[128];
    pid_t server_pid;       /* our own nats-server, 0 when KS_NATS_URL was given */
    char server_dir[256];
    ks_bus *client;         /* the requesting side */
    natsConnection *raw;    /* plain cnats, for publishes with a chosen reply subject */
    char cli[512];          /* nats CLI, "" when not found */
} g;

/* ---- helpers: time, ports, processes ---- */

static int64_t now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void sleep_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

static int free_port(void)
{
    struct sockaddr_in sa = {.sin_family = AF_INET};
    socklen_t len = sizeof(sa);
    int fd = socket(AF_INET, SOCK_STREAM, 0), port = -1;

    if (fd < 0)
        return -1;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (bind(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0 &&
        getsockname(fd, (struct sockaddr *)&sa, &len) == 0)
        port = ntohs(sa.sin_port);
    close(fd);
    return port;
}

static int port_accepts(int port)
{
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    int fd = socket(AF_INET, SOCK_STREAM, 0), ok;

    if (fd < 0)
        return 0;
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ok = connect(fd, (struct sockaddr *)&sa, sizeof(sa)) == 0;
    close(fd);
    return ok;
}

static int rm_entry(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st;
    (void)flag;
    (void)ftw;
    remove(path);
    return 0;
}

static void stop_child(pid_t pid)
{
    int64_t end;
    int status;

    if (pid <= 0)
        return;
    kill(pid, SIGTERM);
    end = now_ms() + 5000;
    while (now_ms() < end) {
        if (waitpid(pid, &status, WNOHANG) == pid)
            return;
        sleep_ms(20);
    }
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
}

static int start_own_server(void)
{
    char port_s[16];
    int port = free_port();
    int64_t end;
    pid_t pid;

    if (port <= 0)
        return -1;
    snprintf(g.server_dir, sizeof(g.server_dir), "/tmp/kscore-test-micro.XXXXXX");
    if (mkdtemp(g.server_dir) == NULL)
        return -1;
    snprintf(port_s, sizeof(port_s), "%d", port);
    pid = fork();
    if (pid < 0)
        return -1;
    if (pid == 0) {
        int fd = open("/dev/null", O_RDWR);
        if (fd >= 0) {
            dup2(fd, 0);
            dup2(fd, 1);
            dup2(fd, 2);
        }
        execlp("nats-server", "nats-server", "-a", "127.0.0.1", "-p", port_s, "-js", "-sd",
               g.server_dir, (char *)NULL);
        _exit(127);
    }
    g.server_pid = pid;
    snprintf(g.url, sizeof(g.url), "nats://127.0.0.1:%d", port);
    end = now_ms() + 10000;
    while (now_ms() < end) {
        int status;
        if (waitpid(pid, &status, WNOHANG) == pid) {
            g.server_pid = 0;
            fprintf(stderr, "nats-server exited during start-up\n");
            return -1;
        }
        if (port_accepts(port))
            return 0;
        sleep_ms(20);
    }
    fprintf(stderr, "nats-server did not listen on %d within 10 s\n", port);
    return -1;
}

static void find_cli(void)
{
    const char *env = getenv("KS_NATS_CLI");
    char cwd[256];

    g.cli[0] = '\0';
    if (env != NULL && access(env, X_OK) == 0) {
        snprintf(g.cli, sizeof(g.cli), "%s", env);
        return;
    }
    if (getcwd(cwd, sizeof(cwd)) != NULL) {
        snprintf(g.cli, sizeof(g.cli), "%s/.deps/bin/nats", cwd);
        if (access(g.cli, X_OK) == 0)
            return;
    }
    g.cli[0] = '\0';
}

/* ---- group setup ---- */

static int group_setup(void **state)
{
    const char *url = getenv("KS_NATS_URL");
    ks_bus_opts bo = {0};
    natsOptions *no = NULL;

    (void)state;
    ks_log_init("test_micro", KS_LOG_WARN);
    if (url != NULL && url[0] != '\0') {
        snprintf(g.url, sizeof(g.url), "%s", url);
    } else if (start_own_server() != 0) {
        return -1;
    }
    bo.url = g.url;
    bo.name = "test_micro-client";
    bo.wait_connected = 1;
    if (ks_bus_connect(&bo, &g.client) != KS_OK) {
        fprintf(stderr, "cannot connect to %s: %s\n", g.url, ks_status_last());
        return -1;
    }
    if (natsOptions_Create(&no) != NATS_OK || natsOptions_SetURL(no, g.url) != NATS_OK ||
        natsOptions_SetSendAsap(no, true) != NATS_OK ||
        natsConnection_Connect(&g.raw, no) != NATS_OK) {
        natsOptions_Destroy(no);
        fprintf(stderr, "cannot connect (raw) to %s\n", g.url);
        return -1;
    }
    natsOptions_Destroy(no);
    find_cli();
    return 0;
}

static int group_teardown(void **state)
{
    (void)state;
    natsConnection_Destroy(g.raw);
    ks_bus_destroy(g.client);
    if (g.server_pid > 0) {
        stop_child(g.server_pid);
        g.server_pid = 0;
        nftw(g.server_dir, rm_entry, 16, FTW_DEPTH | FTW_PHYS);
    }
    nats_Close();
    return 0;
}

/* ---- a service instance under test ---- */

typedef struct {
    ks_bus *bus;
    ks_micro *micro;
    atomic_int handled;
} instance;

static void instance_start(instance *in, const char *name, const char *version)
{
    static const char *const keys[] = {"ks.api.groups", "owner"};
    static const char *const values[] = {"test.kubesphere.io/v1", "test_micro"};
    ks_bus_opts bo = {0};
    ks_micro_cfg mc = {0};

    memset(in, 0, sizeof(*in));
    bo.url = g.url;
    bo.name = name;
    bo.wait_connected = 1;
    assert_int_equal(ks_bus_connect(&bo, &in->bus), KS_OK);
    mc.name = name;
    mc.version = version;
    mc.description = "kscore micro test service";
    mc.meta_keys = keys;
    mc.meta_values = values;
    mc.nmeta = 2;
    assert_int_equal(ks_micro_create(in->bus, &mc, &in->micro), KS_OK);
    /* The server has the subscriptions once it answered our PING. */
    assert_int_equal(ks_bus_flush(in->bus, WAIT_MS), KS_OK);
}

static void instance_stop(instance *in)
{
    ks_micro_destroy(in->micro);
    ks_bus_destroy(in->bus);
    memset(in, 0, sizeof(*in));
}

/* Answers "ok:<data>"; data starting with "fail:" is an error whose text is
 * the rest. */
static int echo_handler(ks_bus *bus, ks_bus_msg *msg, void *arg, char *err, size_t errcap)
{
    instance *in = arg;
    const char *data = ks_bus_msg_data(msg);
    size_t len = ks_bus_msg_len(msg);
    char out[256];
    int n;

    atomic_fetch_add(&in->handled, 1);
    if (len >= 5 && memcmp(data, "fail:", 5) == 0) {
        snprintf(err, errcap, "%.*s", (int)(len - 5), data + 5);
        (void)ks_bus_respond(bus, msg, "error", 5);
        return 1;
    }
    n = snprintf(out, sizeof(out), "ok:%.*s", (int)(len > 200 ? 200 : len), data);
    (void)ks_bus_respond(bus, msg, out, (size_t)n);
    return 0;
}

static void unique_name(char *out, size_t cap, const char *what)
{
    snprintf(out, cap, "kstest-%s-%ld", what, (long)getpid());
}

/* Request subject and parse the JSON reply; fails the test if none. */
static json_t *request_json(const char *subject)
{
    ks_bus_msg *reply = NULL;
    json_error_t je;
    json_t *j;

    assert_int_equal(ks_bus_request(g.client, subject, "", 0, WAIT_MS, &reply), KS_OK);
    j = json_loadb(ks_bus_msg_data(reply), ks_bus_msg_len(reply), 0, &je);
    if (j == NULL)
        fail_msg("reply on %s is not JSON: %s", subject, je.text);
    ks_bus_msg_destroy(reply);
    return j;
}

static const char *jstr(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_string(v))
        fail_msg("\"%s\" is not a string", key);
    return json_string_value(v);
}

static json_int_t jint(json_t *o, const char *key)
{
    json_t *v = json_object_get(o, key);
    if (!json_is_integer(v))
        fail_msg("\"%s\" is not an integer", key);
    return json_integer_value(v);
}

static int matches(const char *re, const char *s)
{
    regex_t r;
    int ok;

    assert_int_equal(regcomp(&r, re, REG_EXTENDED | REG_NOSUB), 0);
    ok = regexec(&r, s, 0, NULL, 0) == 0;
    regfree(&r);
    return ok;
}

#define SEMVER_RE "^(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)\\.(0|[1-9][0-9]*)(-[0-9A-Za-z.-]+)?(\\+[0-9A-Za-z.-]+)?$"
#define RFC3339_RE "^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]+)?(Z|[+-][0-9]{2}:[0-9]{2})$"

/* The fields every reply has: type, name, id, version, metadata. */
static void check_common(json_t *j, const char *type, const char *name, const char *id)
{
    json_t *meta;

    assert_string_equal(jstr(j, "type"), type);
    assert_string_equal(jstr(j, "name"), name);
    assert_int_equal(strlen(jstr(j, "id")), 22);
    assert_true(matches("^[A-Za-z0-9]{22}$", jstr(j, "id")));
    if (id != NULL)
        assert_string_equal(jstr(j, "id"), id);
    assert_true(matches(SEMVER_RE, jstr(j, "version")));
    meta = json_object_get(j, "metadata");
    assert_true(json_is_object(meta));
    assert_string_equal(jstr(meta, "ks.api.groups"), "test.kubesphere.io/v1");
    assert_string_equal(jstr(meta, "owner"), "test_micro");
}

/* natscli's own schema check of one reply (skipped without the CLI).
 * `nats schema validate` exits 0 even when the data does not validate; with
 * --json it prints the list of violations, so "[]" is the only pass. */
static void check_schema(const char *schema, json_t *j)
{
    char path[] = "/tmp/kscore-micro-json.XXXXXX";
    char *text = json_dumps(j, JSON_COMPACT);
    char out[4096];
    size_t n = 0;
    ssize_t r;
    pid_t pid;
    int fd, pfd[2], status = 0;

    if (g.cli[0] == '\0') {
        free(text);
        return;
    }
    assert_non_null(text);
    fd = mkstemp(path);
    assert_true(fd >= 0);
    assert_int_equal(write(fd, text, strlen(text)), (ssize_t)strlen(text));
    close(fd);
    assert_int_equal(pipe(pfd), 0);
    pid = fork();
    assert_true(pid >= 0);
    if (pid == 0) {
        dup2(pfd[1], 1);
        dup2(pfd[1], 2);
        close(pfd[0]);
        close(pfd[1]);
        execl(g.cli, g.cli, "schema", "validate", "--json", schema, path, (char *)NULL);
        _exit(127);
    }
    close(pfd[1]);
    while (n < sizeof(out) - 1 && (r = read(pfd[0], out + n, sizeof(out) - 1 - n)) > 0)
        n += (size_t)r;
    out[n] = '\0';
    close(pfd[0]);
    waitpid(pid, &status, 0);
    unlink(path);
    while (n > 0 && (out[n - 1] == '\n' || out[n - 1] == ' '))
        out[--n] = '\0';
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0 || strcmp(out, "[]") != 0)
        fail_msg("%s does not validate against %s: %s", text, schema, out);
    free(text);
}

/* ---- tests ---- */

static void test_ping_contents(void **state)
{
    char name[64], subject[128];
    instance in;
    json_t *j;

    (void)state;
    unique_name(name, sizeof(name), "ping");
    instance_start(&in, name, "1.2.3-rc.1+build.5");
    snprintf(subject, sizeof(subject), "$SRV.PING.%s", name);
    j = request_json(subject);
    check_common(j, "io.nats.micro.v1.ping_response", name, ks_micro_id(in.micro));
    assert_string_equal(jstr(j, "version"), "1.2.3-rc.1+build.5");
    check_schema("io.nats.micro.v1.ping_response", j);
    json_decref(j);
    instance_stop(&in);
}

static void test_info_contents(void **state)
{
    char name[64], subject[128], ep1[128], ep2[128];
    instance in;
    json_t *j, *eps, *e;

    (void)state;
    unique_name(name, sizeof(name), "info");
    instance_start(&in, name, "0.1.0");
    snprintf(ep1, sizeof(ep1), "kstest.%ld.echo", (long)getpid());
    snprintf(ep2, sizeof(ep2), "kstest.%ld.other", (long)getpid());
    assert_int_equal(ks_micro_add_endpoint(in.micro, "echo", ep1, NULL, echo_handler, &in), KS_OK);
    assert_int_equal(ks_micro_add_endpoint(in.micro, "other", ep2, "kstest-q", echo_handler, &in),
                     KS_OK);
    /* bad endpoint names are refused and do not show up */
    assert_int_equal(ks_micro_add_endpoint(in.micro, "bad.name", ep2, NULL, echo_handler, &in),
                     KS_ERR_INVALID);
    assert_int_equal(ks_bus_flush(in.bus, WAIT_MS), KS_OK);

    snprintf(subject, sizeof(subject), "$SRV.INFO.%s", name);
    j = request_json(subject);
    check_common(j, "io.nats.micro.v1.info_response", name, ks_micro_id(in.micro));
    assert_string_equal(jstr(j, "description"), "kscore micro test service");
    eps = json_object_get(j, "endpoints");
    assert_true(json_is_array(eps));
    assert_int_equal(json_array_size(eps), 2);
    e = json_array_get(eps, 0);
    assert_string_equal(jstr(e, "name"), "echo");
    assert_string_equal(jstr(e, "subject"), ep1);
    assert_string_equal(jstr(e, "queue_group"), "q");
    e = json_array_get(eps, 1);
    assert_string_equal(jstr(e, "name"), "other");
    assert_string_equal(jstr(e, "subject"), ep2);
    assert_string_equal(jstr(e, "queue_group"), "kstest-q");
    check_schema("io.nats.micro.v1.info_response", j);
    json_decref(j);
    instance_stop(&in);
}

static void send_request(const char *subject, const char *data, const char *want)
{
    ks_bus_msg *reply = NULL;

    assert_int_equal(ks_bus_request(g.client, subject, data, strlen(data), WAIT_MS, &reply), KS_OK);
    assert_int_equal(ks_bus_msg_len(reply), strlen(want));
    assert_memory_equal(ks_bus_msg_data(reply), want, strlen(want));
    ks_bus_msg_destroy(reply);
}

static json_t *stats_endpoint(json_t *stats, const char *ep)
{
    json_t *eps = json_object_get(stats, "endpoints"), *e;
    size_t i;

    assert_true(json_is_array(eps));
    json_array_foreach(eps, i, e) {
        if (strcmp(jstr(e, "name"), ep) == 0)
            return e;
    }
    fail_msg("endpoint %s not in stats", ep);
    return NULL;
}

static void test_stats_counting(void **state)
{
    char name[64], subject[128], ep[128];
    instance in;
    json_t *j, *e;
    json_int_t pt;

    (void)state;
    unique_name(name, sizeof(name), "stats");
    instance_start(&in, name, "0.1.0");
    snprintf(ep, sizeof(ep), "kstest.%ld.stats", (long)getpid());
    assert_int_equal(ks_micro_add_endpoint(in.micro, "work", ep, "kstest", echo_handler, &in),
                     KS_OK);
    assert_int_equal(ks_bus_flush(in.bus, WAIT_MS), KS_OK);
    snprintf(subject, sizeof(subject), "$SRV.STATS.%s", name);

    /* before any request */
    j = request_json(subject);
    check_common(j, "io.nats.micro.v1.stats_response", name, ks_micro_id(in.micro));
    assert_true(matches(RFC3339_RE, jstr(j, "started")));
    e = stats_endpoint(j, "work");
    assert_string_equal(jstr(e, "subject"), ep);
    assert_string_equal(jstr(e, "queue_group"), "kstest");
    assert_int_equal(jint(e, "num_requests"), 0);
    assert_int_equal(jint(e, "num_errors"), 0);
    assert_string_equal(jstr(e, "last_error"), "");
    assert_int_equal(jint(e, "processing_time"), 0);
    assert_int_equal(jint(e, "average_processing_time"), 0);
    check_schema("io.nats.micro.v1.stats_response", j);
    json_decref(j);

    /* three that succeed, two that fail: the last error is the later one */
    send_request(ep, "a", "ok:a");
    send_request(ep, "fail:first failure", "error");
    send_request(ep, "b", "ok:b");
    send_request(ep, "fail:bad input 2", "error");
    send_request(ep, "c", "ok:c");
    /* The handler counts after it responded: wait (bounded) for the books. */
    {
        int64_t end = now_ms() + WAIT_MS;
        for (;;) {
            j = request_json(subject);
            e = stats_endpoint(j, "work");
            if (jint(e, "num_requests") == 5 || now_ms() > end)
                break;
            json_decref(j);
            sleep_ms(5);
        }
    }
    assert_int_equal(jint(e, "num_requests"), 5);
    assert_int_equal(jint(e, "num_errors"), 2);
    assert_string_equal(jstr(e, "last_error"), "bad input 2");
    pt = jint(e, "processing_time");
    assert_true(pt > 0);
    assert_true(pt < 5LL * 1000000000LL); /* nanoseconds, not more than the test ran */
    assert_int_equal(jint(e, "average_processing_time"), pt / 5);
    check_schema("io.nats.micro.v1.stats_response", j);
    json_decref(j);

    /* the same books through ks_micro_stats_json */
    {
        char *s = ks_micro_stats_json(in.micro);
        json_t *local = json_loads(s, 0, NULL);
        assert_non_null(local);
        assert_int_equal(jint(stats_endpoint(local, "work"), "num_errors"), 2);
        json_decref(local);
        free(s);
    }
    assert_int_equal(atomic_load(&in.handled), 5);
    instance_stop(&in);
}

static void expect_no_answer(const char *subject)
{
    ks_bus_msg *reply = NULL;
    ks_status st = ks_bus_request(g.client, subject, "", 0, 500, &reply);

    ks_bus_msg_destroy(reply);
    if (st != KS_ERR_NO_RESPONDERS && st != KS_ERR_TIMEOUT)
        fail_msg("%s answered (status %s)", subject, ks_status_name(st));
}

static void test_addressed_subjects(void **state)
{
    static const char *const verbs[] = {"PING", "INFO", "STATS"};
    static const char *const types[] = {"io.nats.micro.v1.ping_response",
                                        "io.nats.micro.v1.info_response",
                                        "io.nats.micro.v1.stats_response"};
    char name[64], subject[192];
    instance in;

    (void)state;
    unique_name(name, sizeof(name), "addr");
    instance_start(&in, name, "0.1.0");
    for (int v = 0; v < 3; v++) {
        json_t *j;

        snprintf(subject, sizeof(subject), "$SRV.%s.%s", verbs[v], name);
        j = request_json(subject);
        check_common(j, types[v], name, ks_micro_id(in.micro));
        json_decref(j);
        snprintf(subject, sizeof(subject), "$SRV.%s.%s.%s", verbs[v], name, ks_micro_id(in.micro));
        j = request_json(subject);
        check_common(j, types[v], name, ks_micro_id(in.micro));
        json_decref(j);
    }
    /* another id, another name, an unknown verb: nobody answers */
    snprintf(subject, sizeof(subject), "$SRV.PING.%s.AAAAAAAAAAAAAAAAAAAAAA", name);
    expect_no_answer(subject);
    snprintf(subject, sizeof(subject), "$SRV.PING.%s-nobody", name);
    expect_no_answer(subject);
    snprintf(subject, sizeof(subject), "$SRV.PONG.%s", name);
    expect_no_answer(subject);
    instance_stop(&in);
}

/* ---- counting replies with a wildcard inbox ---- */

typedef struct {
    pthread_mutex_t mu;
    const char *name;       /* count only replies of this service */
    int count;
    char ids[8][23];
} reply_counter;

static void on_reply(natsConnection *nc, natsSubscription *sub, natsMsg *msg, void *closure)
{
    reply_counter *rc = closure;
    json_t *j = json_loadb(natsMsg_GetData(msg), (size_t)natsMsg_GetDataLength(msg), 0, NULL);
    json_t *name = j ? json_object_get(j, "name") : NULL;
    json_t *id = j ? json_object_get(j, "id") : NULL;

    (void)nc;
    (void)sub;
    if (json_is_string(name) && json_is_string(id) &&
        strcmp(json_string_value(name), rc->name) == 0) {
        pthread_mutex_lock(&rc->mu);
        if (rc->count < 8)
            snprintf(rc->ids[rc->count], sizeof(rc->ids[0]), "%s", json_string_value(id));
        rc->count++;
        pthread_mutex_unlock(&rc->mu);
    }
    json_decref(j);
    natsMsg_Destroy(msg);
}

/* Publish on subject with a reply in a fresh wildcard inbox; wait (bounded)
 * for `want` replies of service `name`; returns how many came. */
static int count_replies(const char *subject, const char *name, int want, reply_counter *rc)
{
    char inbox[128], reply[160];
    natsSubscription *sub = NULL;
    int64_t end;
    int n;

    memset(rc, 0, sizeof(*rc));
    pthread_mutex_init(&rc->mu, NULL);
    rc->name = name;
    snprintf(inbox, sizeof(inbox), "_INBOX.kstest%ld.%lld", (long)getpid(), (long long)now_ms());
    snprintf(reply, sizeof(reply), "%s.1", inbox);
    {
        char wild[140];
        snprintf(wild, sizeof(wild), "%s.*", inbox);
        assert_int_equal(natsConnection_Subscribe(&sub, g.raw, wild, on_reply, rc), NATS_OK);
    }
    assert_int_equal(natsConnection_Flush(g.raw), NATS_OK);
    assert_int_equal(natsConnection_PublishRequest(g.raw, subject, reply, "", 0), NATS_OK);
    end = now_ms() + WAIT_MS;
    for (;;) {
        pthread_mutex_lock(&rc->mu);
        n = rc->count;
        pthread_mutex_unlock(&rc->mu);
        if (n >= want || now_ms() > end)
            break;
        sleep_ms(2);
    }
    natsSubscription_Unsubscribe(sub);
    natsSubscription_Destroy(sub);
    pthread_mutex_lock(&rc->mu);
    n = rc->count;
    pthread_mutex_unlock(&rc->mu);
    return n;
}

static int has_id(const reply_counter *rc, const char *id)
{
    for (int i = 0; i < rc->count && i < 8; i++)
        if (strcmp(rc->ids[i], id) == 0)
            return 1;
    return 0;
}

static void test_two_instances_answer_ping(void **state)
{
    char name[64], subject[128];
    instance a, b;
    reply_counter rc;

    (void)state;
    unique_name(name, sizeof(name), "twice");
    instance_start(&a, name, "0.1.0");
    instance_start(&b, name, "0.1.0");
    assert_string_not_equal(ks_micro_id(a.micro), ks_micro_id(b.micro));

    /* $SRV.PING: every service on the server answers; two of them are ours */
    assert_int_equal(count_replies("$SRV.PING", name, 2, &rc), 2);
    assert_true(has_id(&rc, ks_micro_id(a.micro)));
    assert_true(has_id(&rc, ks_micro_id(b.micro)));
    pthread_mutex_destroy(&rc.mu);

    /* $SRV.PING.<name>, $SRV.INFO.<name>: both again */
    snprintf(subject, sizeof(subject), "$SRV.PING.%s", name);
    assert_int_equal(count_replies(subject, name, 2, &rc), 2);
    assert_true(has_id(&rc, ks_micro_id(a.micro)));
    assert_true(has_id(&rc, ks_micro_id(b.micro)));
    pthread_mutex_destroy(&rc.mu);
    snprintf(subject, sizeof(subject), "$SRV.INFO.%s", name);
    assert_int_equal(count_replies(subject, name, 2, &rc), 2);
    pthread_mutex_destroy(&rc.mu);

    /* $SRV.PING.<name>.<id>: only that one */
    snprintf(subject, sizeof(subject), "$SRV.PING.%s.%s", name, ks_micro_id(b.micro));
    assert_int_equal(count_replies(subject, name, 1, &rc), 1);
    assert_string_equal(rc.ids[0], ks_micro_id(b.micro));
    /* a second reply from a would have come by the time b's PONG is back */
    assert_int_equal(ks_bus_flush(a.bus, WAIT_MS), KS_OK);
    assert_int_equal(natsConnection_Flush(g.raw), NATS_OK);
    assert_int_equal(rc.count, 1);
    pthread_mutex_destroy(&rc.mu);

    instance_stop(&b);
    instance_stop(&a);
}

static void test_queue_group_splits(void **state)
{
    enum { N = 200 };
    char name[64], ep[128], subject[128];
    instance a, b;
    json_int_t ra, rb;

    (void)state;
    unique_name(name, sizeof(name), "queue");
    instance_start(&a, name, "0.1.0");
    instance_start(&b, name, "0.1.0");
    snprintf(ep, sizeof(ep), "kstest.%ld.queue", (long)getpid());
    assert_int_equal(ks_micro_add_endpoint(a.micro, "work", ep, "kstest", echo_handler, &a), KS_OK);
    assert_int_equal(ks_micro_add_endpoint(b.micro, "work", ep, "kstest", echo_handler, &b), KS_OK);
    assert_int_equal(ks_bus_flush(a.bus, WAIT_MS), KS_OK);
    assert_int_equal(ks_bus_flush(b.bus, WAIT_MS), KS_OK);

    for (int i = 0; i < N; i++)
        send_request(ep, "x", "ok:x");
    /* each request went to exactly one instance, and both got some */
    {
        int64_t end = now_ms() + WAIT_MS;
        while (atomic_load(&a.handled) + atomic_load(&b.handled) < N && now_ms() < end)
            sleep_ms(2);
    }
    assert_int_equal(atomic_load(&a.handled) + atomic_load(&b.handled), N);
    assert_true(atomic_load(&a.handled) > 0);
    assert_true(atomic_load(&b.handled) > 0);

    /* and each instance's $SRV.STATS counts its own share */
    snprintf(subject, sizeof(subject), "$SRV.STATS.%s.%s", name, ks_micro_id(a.micro));
    {
        json_t *j = request_json(subject);
        ra = jint(stats_endpoint(j, "work"), "num_requests");
        json_decref(j);
    }
    snprintf(subject, sizeof(subject), "$SRV.STATS.%s.%s", name, ks_micro_id(b.micro));
    {
        json_t *j = request_json(subject);
        rb = jint(stats_endpoint(j, "work"), "num_requests");
        json_decref(j);
    }
    assert_int_equal(ra, atomic_load(&a.handled));
    assert_int_equal(rb, atomic_load(&b.handled));
    assert_int_equal(ra + rb, N);
    instance_stop(&b);
    instance_stop(&a);
}

static void test_destroy_stops_answering(void **state)
{
    char name[64], subject[192], ep[128], id[23];
    instance in;

    (void)state;
    unique_name(name, sizeof(name), "gone");
    instance_start(&in, name, "0.1.0");
    snprintf(ep, sizeof(ep), "kstest.%ld.gone", (long)getpid());
    assert_int_equal(ks_micro_add_endpoint(in.micro, "work", ep, NULL, echo_handler, &in), KS_OK);
    assert_int_equal(ks_bus_flush(in.bus, WAIT_MS), KS_OK);
    snprintf(id, sizeof(id), "%s", ks_micro_id(in.micro));
    snprintf(subject, sizeof(subject), "$SRV.PING.%s.%s", name, id);
    json_decref(request_json(subject));
    send_request(ep, "y", "ok:y");

    ks_micro_destroy(in.micro);
    in.micro = NULL;
    /* the UNSUBs have reached the server once it answered this PING */
    assert_int_equal(ks_bus_flush(in.bus, WAIT_MS), KS_OK);
    expect_no_answer(subject);
    snprintf(subject, sizeof(subject), "$SRV.PING.%s", name);
    expect_no_answer(subject);
    snprintf(subject, sizeof(subject), "$SRV.INFO.%s", name);
    expect_no_answer(subject);
    expect_no_answer(ep);
    instance_stop(&in);
}

static void test_bad_name_refused(void **state)
{
    ks_micro_cfg mc = {.name = "bad.name", .version = "0.1.0"};
    ks_micro *m = NULL;

    (void)state;
    assert_int_equal(ks_micro_create(g.client, &mc, &m), KS_ERR_INVALID);
    assert_null(m);
    mc.name = "";
    assert_int_equal(ks_micro_create(g.client, &mc, &m), KS_ERR_INVALID);
    ks_micro_destroy(NULL);
}

/* ks_micro_add_endpoint from several threads at once: every endpoint gets a
 * slot of its own, all of them serve, and the 33rd is refused. */
typedef struct {
    instance *in;
    int thread;
    int failures;
} adder;

static void *add_endpoints(void *arg)
{
    adder *a = arg;

    for (int i = 0; i < 8; i++) {
        char name[32], subject[128];
        snprintf(name, sizeof(name), "ep-%d-%d", a->thread, i);
        snprintf(subject, sizeof(subject), "kstest.%ld.conc.%d.%d", (long)getpid(), a->thread, i);
        if (ks_micro_add_endpoint(a->in->micro, name, subject, NULL, echo_handler, a->in) != KS_OK)
            a->failures++;
    }
    return NULL;
}

static void test_concurrent_add_endpoints(void **state)
{
    char name[64], subject[128];
    pthread_t threads[4];
    adder adders[4];
    instance in;
    json_t *j, *eps, *e;
    size_t i;

    (void)state;
    unique_name(name, sizeof(name), "conc");
    instance_start(&in, name, "0.1.0");
    for (int t = 0; t < 4; t++) {
        adders[t] = (adder){.in = &in, .thread = t};
        assert_int_equal(pthread_create(&threads[t], NULL, add_endpoints, &adders[t]), 0);
    }
    for (int t = 0; t < 4; t++) {
        pthread_join(threads[t], NULL);
        assert_int_equal(adders[t].failures, 0);
    }
    assert_int_equal(ks_micro_add_endpoint(in.micro, "one-too-many", "kstest.x", NULL,
                                           echo_handler, &in),
                     KS_ERR_TOO_LARGE);
    assert_int_equal(ks_bus_flush(in.bus, WAIT_MS), KS_OK);

    snprintf(subject, sizeof(subject), "$SRV.INFO.%s", name);
    j = request_json(subject);
    eps = json_object_get(j, "endpoints");
    assert_int_equal(json_array_size(eps), 32);
    json_array_foreach(eps, i, e) {
        char want[128];
        int t, k;
        /* each name once, with its own subject, and it answers */
        assert_int_equal(sscanf(jstr(e, "name"), "ep-%d-%d", &t, &k), 2);
        snprintf(want, sizeof(want), "kstest.%ld.conc.%d.%d", (long)getpid(), t, k);
        assert_string_equal(jstr(e, "subject"), want);
        for (size_t o = 0; o < i; o++)
            assert_string_not_equal(jstr(json_array_get(eps, o), "name"), jstr(e, "name"));
        send_request(want, "z", "ok:z");
    }
    json_decref(j);
    instance_stop(&in);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_ping_contents),
        cmocka_unit_test(test_info_contents),
        cmocka_unit_test(test_stats_counting),
        cmocka_unit_test(test_addressed_subjects),
        cmocka_unit_test(test_two_instances_answer_ping),
        cmocka_unit_test(test_queue_group_splits),
        cmocka_unit_test(test_destroy_stops_answering),
        cmocka_unit_test(test_concurrent_add_endpoints),
        cmocka_unit_test(test_bad_name_refused),
    };
    return cmocka_run_group_tests(tests, group_setup, group_teardown);
}
