#include "subject.h"

#include <string.h>

static const char hex_digits[] = "0123456789ABCDEF";

static int is_plain(unsigned char c)
{
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '-';
}

static int hex_value(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* dot_as_underscore: the group rule. */
static ks_status escape(const char *in, char *out, size_t cap, int dot_as_underscore)
{
    size_t n = 0;

    if (in == NULL)
        in = "";
    if (in[0] == '\0') {
        if (cap < 2)
            return KS_FAIL(KS_ERR_TOO_LARGE, "escape buffer");
        memcpy(out, "_", 2);
        return KS_OK;
    }
    /* A lone "." of a group would become "_", which means empty. */
    if (dot_as_underscore && strcmp(in, ".") == 0) {
        if (cap < 4)
            return KS_FAIL(KS_ERR_TOO_LARGE, "escape buffer");
        memcpy(out, "=2E", 4);
        return KS_OK;
    }
    for (const unsigned char *p = (const unsigned char *)in; *p; p++) {
        if (is_plain(*p) || (dot_as_underscore && *p == '.')) {
            if (n + 1 >= cap)
                return KS_FAIL(KS_ERR_TOO_LARGE, "escape buffer");
            out[n++] = (*p == '.') ? '_' : (char)*p;
        } else {
            if (n + 3 >= cap)
                return KS_FAIL(KS_ERR_TOO_LARGE, "escape buffer");
            out[n++] = '=';
            out[n++] = hex_digits[*p >> 4];
            out[n++] = hex_digits[*p & 0xf];
        }
    }
    out[n] = '\0';
    return KS_OK;
}

static ks_status unescape(const char *in, char *out, size_t cap, int underscore_as_dot)
{
    size_t n = 0;

    if (strcmp(in, "_") == 0) {
        if (cap < 1)
            return KS_FAIL(KS_ERR_TOO_LARGE, "unescape buffer");
        out[0] = '\0';
        return KS_OK;
    }
    if (in[0] == '\0')
        return KS_FAIL(KS_ERR_INVALID, "empty escaped token");
    for (const char *p = in; *p; p++) {
        char c;
        if (*p == '=') {
            int hi = hex_value(p[1]), lo = hi < 0 ? -1 : hex_value(p[2]);
            if (hi < 0 || lo < 0)
                return KS_FAIL(KS_ERR_INVALID, "bad escape in \"%s\"", in);
            c = (char)(hi << 4 | lo);
            if (c == '\0')
                return KS_FAIL(KS_ERR_INVALID, "escaped NUL in \"%s\"", in);
            /* One escaped form per input: a byte escape never stands for a
             * plain byte, nor for a group's dot (except a lone "."). */
            if (is_plain((unsigned char)c) ||
                (underscore_as_dot && c == '.' && strcmp(in, "=2E") != 0))
                return KS_FAIL(KS_ERR_INVALID, "needless escape in \"%s\"", in);
            p += 2;
        } else if (*p == '_' && underscore_as_dot) {
            c = '.';
        } else if (is_plain((unsigned char)*p)) {
            c = *p;
        } else {
            return KS_FAIL(KS_ERR_INVALID, "byte 0x%02x cannot appear in an escaped token",
                           (unsigned char)*p);
        }
        if (n + 1 >= cap)
            return KS_FAIL(KS_ERR_TOO_LARGE, "unescape buffer");
        out[n++] = c;
    }
    out[n] = '\0';
    return KS_OK;
}

ks_status ks_subject_escape_token(const char *in, char *out, size_t cap)
{
    return escape(in, out, cap, 0);
}

ks_status ks_subject_unescape_token(const char *in, char *out, size_t cap)
{
    return unescape(in, out, cap, 0);
}

ks_status ks_subject_escape_group(const char *group, char *out, size_t cap)
{
    return escape(group, out, cap, 1);
}

ks_status ks_subject_unescape_group(const char *in, char *out, size_t cap)
{
    return unescape(in, out, cap, 1);
}

/* Join already escaped parts with dots after a prefix. */
static ks_status join(char *out, size_t cap, const char *prefix, const char *const *parts,
                      const int *is_group, size_t nparts)
{
    size_t n = strlen(prefix);
    ks_status st;

    if (n + 1 > cap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "subject buffer");
    memcpy(out, prefix, n + 1);
    for (size_t i = 0; i < nparts; i++) {
        if (n > 0) {
            if (n + 2 > cap)
                return KS_FAIL(KS_ERR_TOO_LARGE, "subject buffer");
            out[n++] = '.';
            out[n] = '\0';
        }
        st = is_group[i] ? ks_subject_escape_group(parts[i], out + n, cap - n)
                         : ks_subject_escape_token(parts[i], out + n, cap - n);
        if (st)
            return st;
        n += strlen(out + n);
    }
    return KS_OK;
}

ks_status ks_subject_api(const char *group, const char *version, char *out, size_t cap)
{
    const char *parts[] = {group, version};
    const int grp[] = {1, 0};
    return join(out, cap, "ks.api", parts, grp, 2);
}

ks_status ks_subject_audit(const char *workspace, const char *ns, const char *resource,
                           const char *verb, char *out, size_t cap)
{
    const char *parts[] = {workspace, ns, resource, verb};
    const int grp[] = {0, 0, 0, 0};
    return join(out, cap, "ks.audit", parts, grp, 4);
}

ks_status ks_subject_object_key(const char *group, const char *resource, const char *ns,
                                const char *name, char *out, size_t cap)
{
    const char *parts[] = {group, resource, ns, name};
    const int grp[] = {1, 0, 0, 0};
    return join(out, cap, "", parts, grp, 4);
}

ks_status ks_subject_object_key_parse(const char *key, char *group, char *resource, char *ns,
                                      char *name, size_t cap)
{
    char *outs[] = {group, resource, ns, name};
    const char *p = key;
    char token[1024];

    for (int i = 0; i < 4; i++) {
        const char *dot = strchr(p, '.');
        size_t len = dot ? (size_t)(dot - p) : strlen(p);
        ks_status st;

        if ((i < 3 && dot == NULL) || (i == 3 && dot != NULL))
            return KS_FAIL(KS_ERR_INVALID, "key \"%s\" does not have four tokens", key);
        if (len >= sizeof(token))
            return KS_FAIL(KS_ERR_TOO_LARGE, "key token");
        memcpy(token, p, len);
        token[len] = '\0';
        st = i == 0 ? ks_subject_unescape_group(token, outs[i], cap)
                    : ks_subject_unescape_token(token, outs[i], cap);
        if (st)
            return st;
        p = dot ? dot + 1 : p + len;
    }
    return KS_OK;
}
