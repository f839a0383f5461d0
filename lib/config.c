#include "config.h"

#include <ctype.h>
#include <errno.h>
#include <limits.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "addr.h"

#define CFG_ENV_MAX (KS_CONFIG_NAME_MAX + 4)
#define CFG_WHY_MAX 256
#define CFG_ECHO "%.80s" /* how much of a bad value an error quotes */

typedef union {
    char *s;
    long long i;
    int b;
} cfg_val;

/* One line into err, whatever the values held: control bytes become '?', so
 * an environment value cannot forge a second log line. */
static void cfg_err(char *err, size_t errcap, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void cfg_err(char *err, size_t errcap, const char *fmt, ...)
{
    va_list ap;

    if (err == NULL || errcap == 0)
        return;
    va_start(ap, fmt);
    vsnprintf(err, errcap, fmt, ap);
    va_end(ap);
    for (char *p = err; *p; p++) {
        if ((unsigned char)*p < 0x20 || *p == 0x7f)
            *p = '?';
    }
}

static int cfg_is_pointer(ks_config_type t)
{
    return t == KS_CFG_STRING || t == KS_CFG_ADDR || t == KS_CFG_URL || t == KS_CFG_ENUM ||
           t == KS_CFG_PATH;
}

static char **cfg_str_field(const ks_config_opt *o, void *cfg)
{
    return (char **)(void *)((char *)cfg + o->offset);
}

static long long *cfg_ll_field(const ks_config_opt *o, void *cfg)
{
    return (long long *)(void *)((char *)cfg + o->offset);
}

static int *cfg_int_field(const ks_config_opt *o, void *cfg)
{
    return (int *)(void *)((char *)cfg + o->offset);
}

static const char *cfg_str_get(const ks_config_opt *o, const void *cfg)
{
    return *(char *const *)(const void *)((const char *)cfg + o->offset);
}

static long long cfg_ll_get(const ks_config_opt *o, const void *cfg)
{
    return *(const long long *)(const void *)((const char *)cfg + o->offset);
}

static int cfg_int_get(const ks_config_opt *o, const void *cfg)
{
    return *(const int *)(const void *)((const char *)cfg + o->offset);
}

ks_status ks_config_env_name(const char *name, char *out, size_t outcap)
{
    size_t len = strlen(name);

    if (outcap < len + 4)
        return KS_FAIL(KS_ERR_TOO_LARGE, "config: env name of '%.64s' does not fit", name);
    memcpy(out, "KS_", 3);
    for (size_t i = 0; i < len; i++) {
        char c = name[i];
        out[3 + i] = c == '-' ? '_' : (char)toupper((unsigned char)c);
    }
    out[3 + len] = '\0';
    return KS_OK;
}

/* A table is code, but a typo in it should fail the first run loudly, not
 * produce an option nobody can set. */
static ks_status cfg_check_table(const ks_config_opt *table, size_t n, char *err, size_t errcap)
{
    for (size_t i = 0; i < n; i++) {
        const ks_config_opt *o = &table[i];
        size_t len;

        if (o->name == NULL || o->name[0] == '\0') {
            cfg_err(err, errcap, "bad option table: entry %zu has no name", i);
            return KS_FAIL(KS_ERR_INVALID, "config: entry %zu has no name", i);
        }
        len = strlen(o->name);
        if (len > KS_CONFIG_NAME_MAX || o->name[0] == '-') {
            cfg_err(err, errcap, "bad option table: bad name '%.64s'", o->name);
            return KS_FAIL(KS_ERR_INVALID, "config: bad name");
        }
        for (size_t k = 0; k < len; k++) {
            char c = o->name[k];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-')) {
                cfg_err(err, errcap, "bad option table: bad name '%.64s'", o->name);
                return KS_FAIL(KS_ERR_INVALID, "config: bad name");
            }
        }
        if (strcmp(o->name, "help") == 0 || strcmp(o->name, "check-config") == 0) {
            cfg_err(err, errcap, "bad option table: '%s' is reserved", o->name);
            return KS_FAIL(KS_ERR_INVALID, "config: reserved name");
        }
        if ((unsigned)o->type > KS_CFG_PATH) {
            cfg_err(err, errcap, "bad option table: '%s' has an unknown type", o->name);
            return KS_FAIL(KS_ERR_INVALID, "config: unknown type");
        }
        if (o->type == KS_CFG_ENUM && (o->choices == NULL || o->choices[0] == '\0')) {
            cfg_err(err, errcap, "bad option table: enum '%s' has no choices", o->name);
            return KS_FAIL(KS_ERR_INVALID, "config: enum without choices");
        }
        if (o->min > o->max) {
            cfg_err(err, errcap, "bad option table: '%s' has min > max", o->name);
            return KS_FAIL(KS_ERR_INVALID, "config: min > max");
        }
        for (size_t j = 0; j < i; j++) {
            if (strcmp(table[j].name, o->name) == 0) {
                cfg_err(err, errcap, "bad option table: '%s' appears twice", o->name);
                return KS_FAIL(KS_ERR_INVALID, "config: duplicate name");
            }
        }
    }
    return KS_OK;
}

ks_status ks_config_parse_duration(const char *text, long long *ms)
{
    ks_status s = KS_ERR_INVALID;
    long long v, mult;
    char *end;

    if (text == NULL || !isdigit((unsigned char)text[0])) {
        s = KS_FAIL(KS_ERR_INVALID, "duration: expected digits");
        goto out;
    }
    errno = 0;
    v = strtoll(text, &end, 10);
    if (errno == ERANGE) {
        s = KS_FAIL(KS_ERR_INVALID, "duration: too large");
        goto out;
    }
    if (*end == '\0' || strcmp(end, "ms") == 0)
        mult = 1;
    else if (strcmp(end, "s") == 0)
        mult = 1000;
    else if (strcmp(end, "m") == 0)
        mult = 60 * 1000;
    else if (strcmp(end, "h") == 0)
        mult = 60 * 60 * 1000;
    else {
        s = KS_FAIL(KS_ERR_INVALID, "duration: unknown unit (want ms, s, m or h)");
        goto out;
    }
    if (v > LLONG_MAX / mult) {
        s = KS_FAIL(KS_ERR_INVALID, "duration: too large");
        goto out;
    }
    *ms = v * mult;
    s = KS_OK;
out:
    return s;
}

int ks_config_format_duration(long long ms, char *out, size_t outcap)
{
    /* The magnitude as unsigned, so LLONG_MIN does not overflow. */
    unsigned long long a = ms < 0 ? 0ULL - (unsigned long long)ms : (unsigned long long)ms;
    const char *sign = ms < 0 ? "-" : "";

    if (a != 0 && a % 3600000ULL == 0)
        return snprintf(out, outcap, "%s%lluh", sign, a / 3600000ULL);
    if (a != 0 && a % 60000ULL == 0)
        return snprintf(out, outcap, "%s%llum", sign, a / 60000ULL);
    if (a != 0 && a % 1000ULL == 0)
        return snprintf(out, outcap, "%s%llus", sign, a / 1000ULL);
    return snprintf(out, outcap, "%s%llums", sign, a);
}

static int cfg_bool_parse(const char *text, int *out)
{
    static const char *const yes[] = {"true", "1", "yes", "on"};
    static const char *const no[] = {"false", "0", "no", "off"};

    for (size_t i = 0; i < sizeof(yes) / sizeof(yes[0]); i++) {
        if (strcasecmp(text, yes[i]) == 0) {
            *out = 1;
            return 0;
        }
        if (strcasecmp(text, no[i]) == 0) {
            *out = 0;
            return 0;
        }
    }
    return -1;
}

static int cfg_enum_has(const char *choices, const char *text)
{
    size_t tlen = strlen(text);
    const char *p = choices;

    for (;;) {
        const char *bar = strchr(p, '|');
        size_t len = bar ? (size_t)(bar - p) : strlen(p);

        if (len == tlen && memcmp(p, text, len) == 0)
            return 1;
        if (bar == NULL)
            return 0;
        p = bar + 1;
    }
}

/* One URL of a list: scheme://[user[:pass]@]host[:port][/path][?q][#f]. */
static int cfg_url_one(const char *u, size_t len, char *why, size_t whycap)
{
    static const char *const schemes[] = {"nats", "tls", "http", "https"};
    const char *sep = NULL, *auth, *auth_end, *at, *end = u + len;
    char hostport[KS_ADDR_HOST_MAX + 16];
    char host[KS_ADDR_HOST_MAX + 1];
    size_t slen, alen;
    int known = 0, port;

    for (const char *p = u; p + 3 <= end; p++) {
        if (memcmp(p, "://", 3) == 0) {
            sep = p;
            break;
        }
    }
    if (sep == NULL || sep == u) {
        snprintf(why, whycap, "not a URL (want scheme://host[:port]): " CFG_ECHO, u);
        return -1;
    }
    slen = (size_t)(sep - u);
    for (size_t i = 0; i < sizeof(schemes) / sizeof(schemes[0]); i++) {
        if (strlen(schemes[i]) == slen && strncasecmp(u, schemes[i], slen) == 0)
            known = 1;
    }
    if (!known) {
        snprintf(why, whycap, "unsupported scheme '%.*s' (want nats, tls, http or https)",
                 (int)(slen > 32 ? 32 : slen), u);
        return -1;
    }
    auth = sep + 3;
    auth_end = auth;
    while (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#')
        auth_end++;
    at = NULL;
    for (const char *p = auth; p < auth_end; p++) {
        if (*p == '@')
            at = p;
    }
    if (at != NULL)
        auth = at + 1;
    alen = (size_t)(auth_end - auth);
    if (alen == 0) {
        snprintf(why, whycap, "URL has no host: " CFG_ECHO, u);
        return -1;
    }
    for (const char *p = u; p < end; p++) {
        if ((unsigned char)*p <= 0x20 || *p == 0x7f) {
            snprintf(why, whycap, "URL contains a space or control character");
            return -1;
        }
    }
    if (alen >= sizeof(hostport)) {
        snprintf(why, whycap, "URL host too long");
        return -1;
    }
    memcpy(hostport, auth, alen);
    hostport[alen] = '\0';
    /* With a port, the authority is exactly an address; without one, a bare
     * host or a bracketed v6 literal. */
    if ((hostport[0] == '[' && strstr(hostport, "]:") != NULL) ||
        (hostport[0] != '[' && strchr(hostport, ':') != NULL)) {
        char awhy[128];
        if (ks_addr_parse_why(hostport, host, sizeof(host), &port, awhy, sizeof(awhy)) != KS_OK) {
            snprintf(why, whycap, "%s", awhy);
            return -1;
        }
        if (port == 0) {
            snprintf(why, whycap, "port out of range: 0");
            return -1;
        }
    } else if (hostport[0] == '[') {
        if (hostport[alen - 1] != ']' || alen < 3) {
            snprintf(why, whycap, "bad IPv6 host in URL: " CFG_ECHO, u);
            return -1;
        }
    }
    return 0;
}

static int cfg_url_check(const char *text, char *why, size_t whycap)
{
    const char *p = text;

    for (;;) {
        const char *comma = strchr(p, ',');
        size_t len = comma ? (size_t)(comma - p) : strlen(p);

        if (len == 0) {
            snprintf(why, whycap, "empty URL");
            return -1;
        }
        if (cfg_url_one(p, len, why, whycap) != 0)
            return -1;
        if (comma == NULL)
            return 0;
        p = comma + 1;
    }
}

/* Convert one winning text into its typed value. On failure why holds the
 * reason (without the value when the option is secret). */
static ks_status cfg_convert(const ks_config_opt *o, const char *text, cfg_val *v, char *why,
                             size_t whycap)
{
    ks_status s = KS_ERR_INVALID;
    const char *echo = o->secret ? "(secret)" : text;
    char lo[32], hi[32];

    switch (o->type) {
    case KS_CFG_STRING:
        break;
    case KS_CFG_PATH:
        if (text[0] == '\0') {
            snprintf(why, whycap, "must not be empty");
            goto out;
        }
        break;
    case KS_CFG_ENUM:
        if (!cfg_enum_has(o->choices, text)) {
            snprintf(why, whycap, "must be one of %s: " CFG_ECHO, o->choices, echo);
            goto out;
        }
        break;
    case KS_CFG_ADDR: {
        char host[KS_ADDR_HOST_MAX + 1];
        char awhy[128];
        int port;
        if (ks_addr_parse_why(text, host, sizeof(host), &port, awhy, sizeof(awhy)) != KS_OK) {
            if (o->secret)
                snprintf(why, whycap, "not a host:port address");
            else
                snprintf(why, whycap, "%s", awhy);
            goto out;
        }
        break;
    }
    case KS_CFG_URL:
        if (cfg_url_check(text, why, whycap) != 0) {
            if (o->secret)
                snprintf(why, whycap, "not a valid URL");
            goto out;
        }
        break;
    case KS_CFG_INT: {
        char *end;
        long long x;
        if (!(isdigit((unsigned char)text[0]) ||
              ((text[0] == '-' || text[0] == '+') && isdigit((unsigned char)text[1])))) {
            snprintf(why, whycap, "not an integer: " CFG_ECHO, echo);
            goto out;
        }
        errno = 0;
        x = strtoll(text, &end, 10);
        if (*end != '\0') {
            snprintf(why, whycap, "not an integer: " CFG_ECHO, echo);
            goto out;
        }
        if (errno == ERANGE || (!(o->min == 0 && o->max == 0) && (x < o->min || x > o->max))) {
            snprintf(why, whycap, "out of range [%lld, %lld]: " CFG_ECHO,
                     o->min == 0 && o->max == 0 ? LLONG_MIN : o->min,
                     o->min == 0 && o->max == 0 ? LLONG_MAX : o->max, echo);
            goto out;
        }
        v->i = x;
        s = KS_OK;
        goto out;
    }
    case KS_CFG_BOOL:
        if (cfg_bool_parse(text, &v->b) != 0) {
            snprintf(why, whycap, "not a boolean (true/false/1/0/yes/no/on/off): " CFG_ECHO, echo);
            goto out;
        }
        s = KS_OK;
        goto out;
    case KS_CFG_DURATION: {
        long long x;
        if (ks_config_parse_duration(text, &x) != KS_OK) {
            snprintf(why, whycap, "not a duration (like 250ms, 2s, 5m, 1h): " CFG_ECHO, echo);
            goto out;
        }
        if (!(o->min == 0 && o->max == 0) && (x < o->min || x > o->max)) {
            ks_config_format_duration(o->min, lo, sizeof(lo));
            ks_config_format_duration(o->max, hi, sizeof(hi));
            snprintf(why, whycap, "out of range [%s, %s]: " CFG_ECHO, lo, hi, echo);
            goto out;
        }
        v->i = x;
        s = KS_OK;
        goto out;
    }
    }
    /* The pointer types: an empty STRING is unset; the others keep a copy. */
    if (o->type == KS_CFG_STRING && text[0] == '\0') {
        v->s = NULL;
        s = KS_OK;
        goto out;
    }
    v->s = strdup(text);
    if (v->s == NULL) {
        snprintf(why, whycap, "out of memory");
        s = KS_FAIL(KS_ERR_NOMEM, "config: strdup");
        goto out;
    }
    s = KS_OK;
out:
    return s;
}

static const ks_config_opt *cfg_find(const ks_config_opt *table, size_t n, const char *name,
                                     size_t len)
{
    for (size_t i = 0; i < n; i++) {
        if (strlen(table[i].name) == len && memcmp(table[i].name, name, len) == 0)
            return &table[i];
    }
    return NULL;
}

ks_status ks_config_parse(const ks_config_opt *table, size_t n, void *cfg, int argc, char **argv,
                          ks_config_action *action, char *err, size_t errcap)
{
    ks_status s = KS_ERR_INVALID;
    const char **text = NULL;
    cfg_val *vals = NULL;
    size_t converted = 0;
    int help = 0, check = 0, bad_args = 0;
    char first_err[KS_CONFIG_ERR_MAX] = "";

    if (err != NULL && errcap > 0)
        err[0] = '\0';
    if ((table == NULL && n > 0) || cfg == NULL || action == NULL || (argc > 0 && argv == NULL)) {
        cfg_err(err, errcap, "bad arguments to ks_config_parse");
        s = KS_FAIL(KS_ERR_INVALID, "config: bad arguments");
        goto out;
    }
    s = cfg_check_table(table, n, err, errcap);
    if (s != KS_OK)
        goto out;
    text = calloc(n ? n : 1, sizeof(*text));
    vals = calloc(n ? n : 1, sizeof(*vals));
    if (text == NULL || vals == NULL) {
        cfg_err(err, errcap, "out of memory");
        s = KS_FAIL(KS_ERR_NOMEM, "config: calloc");
        goto out;
    }

    /* Lowest precedence first: each later source overwrites the text. */
    for (size_t i = 0; i < n; i++) {
        char env[CFG_ENV_MAX];
        const char *e;

        text[i] = table[i].def;
        if (ks_config_env_name(table[i].name, env, sizeof(env)) == KS_OK &&
            (e = getenv(env)) != NULL)
            text[i] = e;
    }

    /* Flags. A bad argument is remembered, not returned, so that --help
     * later on the line still wins. */
    for (int a = 1; a < argc; a++) {
        const char *arg = argv[a];
        const char *name, *eq, *value = NULL;
        const ks_config_opt *o;
        size_t len;

        if (arg == NULL)
            continue;
        if (strcmp(arg, "--help") == 0 || strcmp(arg, "-h") == 0) {
            help = 1;
            continue;
        }
        if (strcmp(arg, "--check-config") == 0) {
            check = 1;
            continue;
        }
        if (strncmp(arg, "--", 2) != 0 || arg[2] == '\0') {
            if (!bad_args)
                cfg_err(first_err, sizeof(first_err), "unexpected argument '%.80s'", arg);
            bad_args = 1;
            continue;
        }
        name = arg + 2;
        eq = strchr(name, '=');
        len = eq ? (size_t)(eq - name) : strlen(name);
        o = cfg_find(table, n, name, len);
        if (o == NULL) {
            if (!bad_args)
                cfg_err(first_err, sizeof(first_err), "unknown flag --%.*s",
                        (int)(len > 80 ? 80 : len), name);
            bad_args = 1;
            continue;
        }
        if (eq != NULL) {
            value = eq + 1;
        } else if (o->type == KS_CFG_BOOL) {
            value = "true";
            if (a + 1 < argc && argv[a + 1] != NULL && strncmp(argv[a + 1], "--", 2) != 0)
                value = argv[++a];
        } else if (a + 1 < argc && argv[a + 1] != NULL) {
            value = argv[++a];
        } else {
            if (!bad_args)
                cfg_err(first_err, sizeof(first_err), "missing value for --%s", o->name);
            bad_args = 1;
            continue;
        }
        text[o - table] = value;
    }
    if (help) {
        *action = KS_CONFIG_HELP;
        s = KS_OK;
        goto out;
    }
    if (bad_args) {
        cfg_err(err, errcap, "%s", first_err);
        s = KS_FAIL(KS_ERR_INVALID, "config: %s", first_err);
        goto out;
    }

    for (converted = 0; converted < n; converted++) {
        const ks_config_opt *o = &table[converted];
        char why[CFG_WHY_MAX];
        char env[CFG_ENV_MAX];

        if (text[converted] == NULL)
            continue; /* unset: zero / NULL, as calloc left it */
        s = cfg_convert(o, text[converted], &vals[converted], why, sizeof(why));
        if (s != KS_OK) {
            if (ks_config_env_name(o->name, env, sizeof(env)) != KS_OK)
                env[0] = '\0';
            cfg_err(err, errcap, "invalid %s (--%s): %s", env, o->name, why);
            if (s == KS_ERR_INVALID)
                KS_FAIL(KS_ERR_INVALID, "config: invalid %s", env);
            goto out;
        }
    }

    /* Commit: nothing below can fail. */
    for (size_t i = 0; i < n; i++) {
        const ks_config_opt *o = &table[i];

        if (cfg_is_pointer(o->type))
            *cfg_str_field(o, cfg) = vals[i].s;
        else if (o->type == KS_CFG_BOOL)
            *cfg_int_field(o, cfg) = vals[i].b;
        else
            *cfg_ll_field(o, cfg) = vals[i].i;
    }
    converted = 0; /* ownership moved to cfg */
    *action = check ? KS_CONFIG_CHECK : KS_CONFIG_RUN;
    s = KS_OK;
out:
    if (vals != NULL) {
        for (size_t i = 0; i < converted && i < n; i++) {
            if (cfg_is_pointer(table[i].type))
                free(vals[i].s);
        }
    }
    free(vals);
    free(text);
    return s;
}

void ks_config_free(const ks_config_opt *table, size_t n, void *cfg)
{
    if (cfg == NULL || table == NULL)
        return;
    for (size_t i = 0; i < n; i++) {
        if (cfg_is_pointer(table[i].type)) {
            char **f = cfg_str_field(&table[i], cfg);
            free(*f);
            *f = NULL;
        }
    }
}

static const char *cfg_placeholder(const ks_config_opt *o)
{
    switch (o->type) {
    case KS_CFG_STRING: return "TEXT";
    case KS_CFG_INT: return "N";
    case KS_CFG_BOOL: return "[BOOL]";
    case KS_CFG_DURATION: return "DURATION";
    case KS_CFG_ADDR: return "HOST:PORT";
    case KS_CFG_URL: return "URL";
    case KS_CFG_ENUM: return o->choices;
    case KS_CFG_PATH: return "PATH";
    }
    return "VALUE";
}

static void cfg_print_type(FILE *f, const ks_config_opt *o)
{
    char lo[32], hi[32];
    int bounded = !(o->min == 0 && o->max == 0);

    switch (o->type) {
    case KS_CFG_STRING: fputs("string", f); break;
    case KS_CFG_INT:
        if (bounded)
            fprintf(f, "integer in [%lld, %lld]", o->min, o->max);
        else
            fputs("integer", f);
        break;
    case KS_CFG_BOOL: fputs("bool", f); break;
    case KS_CFG_DURATION:
        if (bounded) {
            ks_config_format_duration(o->min, lo, sizeof(lo));
            ks_config_format_duration(o->max, hi, sizeof(hi));
            fprintf(f, "duration in [%s, %s]", lo, hi);
        } else {
            fputs("duration", f);
        }
        break;
    case KS_CFG_ADDR: fputs("address host:port", f); break;
    case KS_CFG_URL: fputs("URL", f); break;
    case KS_CFG_ENUM: fprintf(f, "one of %s", o->choices); break;
    case KS_CFG_PATH: fputs("path", f); break;
    }
}

/* Print text with control bytes replaced, so values from the environment
 * cannot break the line structure of the output. */
static void cfg_put_clean(FILE *f, const char *s)
{
    for (; *s; s++)
        fputc((unsigned char)*s < 0x20 || *s == 0x7f ? '?' : *s, f);
}

void ks_config_print_help(FILE *f, const char *program, const char *summary,
                          const ks_config_opt *table, size_t n)
{
    fprintf(f, "Usage: %s [--option=value | --option value]...\n", program);
    if (summary != NULL && summary[0] != '\0')
        fprintf(f, "\n%s\n", summary);
    fputs("\nOptions:\n", f);
    for (size_t i = 0; table != NULL && i < n; i++) {
        const ks_config_opt *o = &table[i];
        char env[CFG_ENV_MAX];

        if (ks_config_env_name(o->name, env, sizeof(env)) != KS_OK)
            env[0] = '\0';
        fprintf(f, "  --%s %s\n", o->name, cfg_placeholder(o));
        if (o->help != NULL && o->help[0] != '\0')
            fprintf(f, "      %s\n", o->help);
        fprintf(f, "      env %s; ", env);
        cfg_print_type(f, o);
        if (o->def == NULL || o->def[0] == '\0')
            fputs("; no default", f);
        else if (o->secret)
            fputs("; default (secret)", f);
        else
            fprintf(f, "; default %s", o->def);
        if (o->secret)
            fputs("; secret", f);
        fputc('\n', f);
    }
    fputs("  --help\n"
          "      Print this help and exit.\n"
          "  --check-config\n"
          "      Validate the configuration, print the effective values and exit.\n"
          "\nPrecedence: default < environment KS_* < --flag. An invalid setting exits with\n"
          "status 2 and names the setting.\n",
          f);
}

/* Mask credentials in every URL of a list: the password of user:pw@ becomes
 * "***" (the user stays), a bare token@ becomes "***@". */
static void cfg_put_url_masked(FILE *f, const char *u)
{
    while (*u) {
        const char *comma = strchr(u, ',');
        const char *end = comma ? comma : u + strlen(u);
        const char *sep = strstr(u, "://");
        const char *auth, *auth_end, *at = NULL, *colon = NULL;

        if (sep == NULL || sep > end) {
            fprintf(f, "%.*s", (int)(end - u), u);
        } else {
            auth = sep + 3;
            auth_end = auth;
            while (auth_end < end && *auth_end != '/' && *auth_end != '?' && *auth_end != '#')
                auth_end++;
            for (const char *p = auth; p < auth_end; p++) {
                if (*p == '@')
                    at = p;
            }
            if (at != NULL)
                colon = memchr(auth, ':', (size_t)(at - auth));
            if (colon != NULL) /* user:password@: keep the user */
                fprintf(f, "%.*s:***%.*s", (int)(colon - u), u, (int)(end - at), at);
            else if (at != NULL) /* token@: NATS token authentication */
                fprintf(f, "%.*s***%.*s", (int)(auth - u), u, (int)(end - at), at);
            else
                fprintf(f, "%.*s", (int)(end - u), u);
        }
        if (comma == NULL)
            break;
        fputc(',', f);
        u = comma + 1;
    }
}

void ks_config_print_values(FILE *f, const char *program, const ks_config_opt *table, size_t n,
                            const void *cfg)
{
    fprintf(f, "%s: configuration ok\n", program);
    for (size_t i = 0; table != NULL && cfg != NULL && i < n; i++) {
        const ks_config_opt *o = &table[i];
        char d[32];

        fprintf(f, "  %s = ", o->name);
        if (cfg_is_pointer(o->type)) {
            const char *v = cfg_str_get(o, cfg);
            if (v == NULL) {
                fputs("(unset)", f);
            } else if (o->secret) {
                fputs("(secret)", f);
            } else if (o->type == KS_CFG_URL) {
                /* A value that passed validation has no control bytes. */
                cfg_put_url_masked(f, v);
            } else {
                cfg_put_clean(f, v);
            }
        } else if (o->secret) {
            fputs("(secret)", f);
        } else if (o->type == KS_CFG_BOOL) {
            fputs(cfg_int_get(o, cfg) ? "true" : "false", f);
        } else if (o->type == KS_CFG_DURATION) {
            ks_config_format_duration(cfg_ll_get(o, cfg), d, sizeof(d));
            fputs(d, f);
        } else {
            fprintf(f, "%lld", cfg_ll_get(o, cfg));
        }
        fputc('\n', f);
    }
}

void ks_config_load_or_exit(const ks_config_opt *table, size_t n, void *cfg, int argc, char **argv,
                            const char *program, const char *summary)
{
    char err[KS_CONFIG_ERR_MAX];
    ks_config_action action = KS_CONFIG_RUN;

    if (ks_config_parse(table, n, cfg, argc, argv, &action, err, sizeof(err)) != KS_OK) {
        /* Exactly one line, naming the setting (the issue's contract). */
        fprintf(stderr, "%s: %s (see --help)\n", program, err);
        exit(2);
    }
    switch (action) {
    case KS_CONFIG_HELP:
        ks_config_print_help(stdout, program, summary, table, n);
        fflush(stdout);
        exit(0);
    case KS_CONFIG_CHECK:
        ks_config_print_values(stdout, program, table, n, cfg);
        fflush(stdout);
        ks_config_free(table, n, cfg);
        exit(0);
    case KS_CONFIG_RUN:
        break;
    }
}
