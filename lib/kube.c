/* kube.c: Kubernetes REST client. Contract in kube.h, overview in
 * docs/kube-client.md. */
#include "kube.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "log.h"

#define POOL_MAX 16              /* idle easy handles kept (each keeps its connections) */
#define YAML_MAX_DEPTH 64
#define SERVER_MAX 2048
#define CONNECT_TIMEOUT_MS 10000L
#define DEFAULT_SA_DIR "/var/run/secrets/kubernetes.io/serviceaccount"

/* ======================================================================
 * small helpers
 * ==================================================================== */

static void wipe_free(void *p, size_t len)
{
    if (p == NULL)
        return;
    explicit_bzero(p, len);
    free(p);
}

static void wipe_free_str(char *s)
{
    if (s != NULL)
        wipe_free(s, strlen(s));
}

static char *dup_n(const char *s, size_t n)
{
    char *d = malloc(n + 1);

    if (d == NULL)
        return NULL;
    memcpy(d, s, n);
    d[n] = '\0';
    return d;
}

static char *dup_str(const char *s)
{
    return s ? dup_n(s, strlen(s)) : NULL;
}

/* Read a whole file, NUL-terminated, at most cap bytes. what names the file's
 * role in error messages. */
static ks_status read_file_capped(const char *what, const char *path, size_t cap, char **out,
                                  size_t *out_len)
{
    ks_status st = KS_ERR_IO;
    char *buf = NULL;
    size_t len = 0, size = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC);

    if (fd < 0) {
        st = KS_FAIL(KS_ERR_IO, "%s %s: %s", what, path, strerror(errno));
        goto out;
    }
    for (;;) {
        if (len == size) {
            size_t nsize = size ? size * 2 : 4096;
            char *nbuf;

            if (nsize > cap + 1)
                nsize = cap + 1;
            if (nsize <= len) {
                st = KS_FAIL(KS_ERR_TOO_LARGE, "%s %s: larger than %zu bytes", what, path, cap);
                goto out;
            }
            nbuf = realloc(buf, nsize + 1);
            if (nbuf == NULL) {
                st = KS_FAIL(KS_ERR_NOMEM, "%s %s: out of memory", what, path);
                goto out;
            }
            buf = nbuf;
            size = nsize;
        }
        ssize_t n = read(fd, buf + len, size - len);
        if (n < 0) {
            if (errno == EINTR)
                continue;
            st = KS_FAIL(KS_ERR_IO, "%s %s: %s", what, path, strerror(errno));
            goto out;
        }
        if (n == 0)
            break;
        len += (size_t)n;
        if (len > cap) {
            st = KS_FAIL(KS_ERR_TOO_LARGE, "%s %s: larger than %zu bytes", what, path, cap);
            goto out;
        }
    }
    if (buf == NULL && (buf = malloc(1)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "%s %s: out of memory", what, path);
        goto out;
    }
    buf[len] = '\0';
    *out = buf;
    *out_len = len;
    buf = NULL;
    st = KS_OK;
out:
    if (fd >= 0)
        close(fd);
    wipe_free(buf, size);
    return st;
}

/* Strict standard base64 (padding required, no whitespace). */
static int b64_value(unsigned char ch)
{
    if (ch >= 'A' && ch <= 'Z')
        return ch - 'A';
    if (ch >= 'a' && ch <= 'z')
        return ch - 'a' + 26;
    if (ch >= '0' && ch <= '9')
        return ch - '0' + 52;
    if (ch == '+')
        return 62;
    if (ch == '/')
        return 63;
    return -1;
}

/* Returns 0 and sets *out and *out_len, -1 on bad input, -2 on allocation failure. */
static int b64_decode(const char *in, size_t len, unsigned char **out, size_t *out_len)
{
    unsigned char *buf;
    size_t o = 0;

    if (len == 0 || len % 4 != 0)
        return -1;
    buf = malloc(len / 4 * 3 + 1);
    if (buf == NULL)
        return -2;
    for (size_t i = 0; i < len; i += 4) {
        int v[4];
        int pad = 0;

        for (int k = 0; k < 4; k++) {
            unsigned char ch = (unsigned char)in[i + k];

            if (ch == '=' && i + 4 == len && k >= 2) {
                v[k] = 0;
                pad++;
                continue;
            }
            if (pad > 0 || (v[k] = b64_value(ch)) < 0) {
                wipe_free(buf, len / 4 * 3 + 1);
                return -1;
            }
        }
        uint32_t triple = ((uint32_t)v[0] << 18) | ((uint32_t)v[1] << 12) |
                          ((uint32_t)v[2] << 6) | (uint32_t)v[3];
        buf[o++] = (unsigned char)(triple >> 16);
        if (pad < 2)
            buf[o++] = (unsigned char)(triple >> 8);
        if (pad < 1)
            buf[o++] = (unsigned char)triple;
    }
    buf[o] = '\0';
    *out = buf;
    *out_len = o;
    return 0;
}

/* An absolute version of path: relative paths are joined to base_dir (itself
 * made absolute against the current directory). */
static char *abs_path(const char *base_dir, const char *path)
{
    char cwd[PATH_MAX];
    char *res = NULL;
    size_t need;

    if (path[0] == '/')
        return dup_str(path);
    if (base_dir != NULL && base_dir[0] == '/') {
        need = strlen(base_dir) + 1 + strlen(path) + 1;
        res = malloc(need);
        if (res)
            snprintf(res, need, "%s/%s", base_dir, path);
        return res;
    }
    if (getcwd(cwd, sizeof(cwd)) == NULL)
        return NULL;
    if (base_dir != NULL && base_dir[0] != '\0' && strcmp(base_dir, ".") != 0) {
        need = strlen(cwd) + 1 + strlen(base_dir) + 1 + strlen(path) + 1;
        res = malloc(need);
        if (res)
            snprintf(res, need, "%s/%s/%s", cwd, base_dir, path);
    } else {
        need = strlen(cwd) + 1 + strlen(path) + 1;
        res = malloc(need);
        if (res)
            snprintf(res, need, "%s/%s", cwd, path);
    }
    return res;
}

/* Copy src into dst (cap bytes) without splitting a UTF-8 sequence. */
static void copy_utf8_trunc(char *dst, size_t cap, const char *src)
{
    size_t n = strlen(src);

    if (n >= cap) {
        n = cap - 1;
        while (n > 0 && ((unsigned char)src[n] & 0xC0) == 0x80)
            n--;
    }
    memcpy(dst, src, n);
    dst[n] = '\0';
}

/* Server URL: http(s)://host..., printable ASCII, trailing '/' removed. */
static int server_ok(const char *s)
{
    size_t n = strlen(s);
    const char *host;

    if (n == 0 || n > SERVER_MAX)
        return 0;
    if (strncmp(s, "https://", 8) == 0)
        host = s + 8;
    else if (strncmp(s, "http://", 7) == 0)
        host = s + 7;
    else
        return 0;
    if (*host == '\0' || *host == '/')
        return 0;
    for (const char *p = s; *p; p++)
        if ((unsigned char)*p <= 0x20 || (unsigned char)*p >= 0x7f)
            return 0;
    return 1;
}

static char *server_dup(const char *s)
{
    size_t n = strlen(s);

    while (n > 0 && s[n - 1] == '/')
        n--;
    return dup_n(s, n);
}

/* A token must be a single header-safe line. Trims trailing whitespace in place. */
static int token_clean(char *tok)
{
    size_t n = strlen(tok);

    while (n > 0 && (tok[n - 1] == '\n' || tok[n - 1] == '\r' || tok[n - 1] == ' ' ||
                     tok[n - 1] == '\t'))
        tok[--n] = '\0';
    if (n == 0)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)tok[i] < 0x21 || (unsigned char)tok[i] == 0x7f)
            return 0;
    return 1;
}

/* ======================================================================
 * strict YAML subset -> json_t
 * ==================================================================== */

typedef struct {
    int indent;
    char *text;      /* content after the indentation, trailing blanks trimmed */
    int lineno;
} yline;

typedef struct {
    yline *v;
    size_t n, pos;
    const char *origin;
} yparser;

static ks_status yfail(const yparser *p, int lineno, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static ks_status yfail(const yparser *p, int lineno, const char *fmt, ...)
{
    char msg[256];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s:%d: %s", p->origin, lineno, msg);
}

static int is_seq_item(const char *t)
{
    return t[0] == '-' && (t[1] == '\0' || t[1] == ' ');
}

/* Split text (modified in place) into meaningful lines. */
static ks_status y_lines(yparser *p, char *text, size_t len)
{
    ks_status st = KS_ERR_INVALID;
    size_t cap = 1;
    int lineno = 0, started = 0, ended = 0;
    char *s = text, *end = text + len;

    if (memchr(text, '\0', len) != NULL) {
        st = yfail(p, 0, "NUL byte in file");
        goto out;
    }
    for (size_t i = 0; i < len; i++)
        cap += text[i] == '\n';
    p->v = calloc(cap, sizeof(*p->v));
    if (p->v == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
        goto out;
    }
    if (len >= 3 && memcmp(s, "\xEF\xBB\xBF", 3) == 0)
        s += 3;
    while (s < end) {
        char *nl = memchr(s, '\n', (size_t)(end - s));
        char *e = nl ? nl : end;
        char *c = s;
        int indent = 0;

        lineno++;
        *e = '\0';
        while (e > s && (e[-1] == '\r' || e[-1] == ' ' || e[-1] == '\t'))
            *--e = '\0';
        while (*c == ' ') {
            c++;
            indent++;
        }
        if (*c == '\t') {
            st = yfail(p, lineno, "tab character in indentation");
            goto out;
        }
        s = nl ? nl + 1 : end;
        if (*c == '\0' || *c == '#')
            continue;
        if (ended) {
            st = yfail(p, lineno, "content after the end of the document");
            goto out;
        }
        if (indent == 0 && strcmp(c, "---") == 0) {
            if (started) {
                st = yfail(p, lineno, "multiple YAML documents are not supported");
                goto out;
            }
            started = 1;
            continue;
        }
        if (indent == 0 && strcmp(c, "...") == 0) {
            ended = 1;
            continue;
        }
        if (indent == 0 && c[0] == '%') {
            st = yfail(p, lineno, "YAML directives are not supported");
            goto out;
        }
        started = 1;
        p->v[p->n].indent = indent;
        p->v[p->n].text = c;
        p->v[p->n].lineno = lineno;
        p->n++;
    }
    st = KS_OK;
out:
    return st;
}

static int hexval(char ch)
{
    if (ch >= '0' && ch <= '9')
        return ch - '0';
    if (ch >= 'a' && ch <= 'f')
        return ch - 'a' + 10;
    if (ch >= 'A' && ch <= 'F')
        return ch - 'A' + 10;
    return -1;
}

static size_t utf8_put(unsigned char *o, uint32_t cp)
{
    if (cp < 0x80) {
        o[0] = (unsigned char)cp;
        return 1;
    }
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | (cp >> 6));
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | (cp >> 12));
        o[1] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | (cp >> 18));
    o[1] = (unsigned char)(0x80 | ((cp >> 12) & 0x3F));
    o[2] = (unsigned char)(0x80 | ((cp >> 6) & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}

/* A single- or double-quoted scalar starting at s[0]; *end is set after the
 * closing quote. */
static ks_status y_quoted(const yparser *p, int lineno, const char *s, json_t **out,
                          const char **end)
{
    ks_status st = KS_ERR_INVALID;
    char q = s[0];
    size_t n = strlen(s);
    unsigned char *buf = malloc(n + 1);
    size_t o = 0;
    const char *c = s + 1;
    json_t *str;

    if (buf == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
        goto out;
    }
    for (;;) {
        if (*c == '\0') {
            st = yfail(p, lineno, "unterminated quoted string (multi-line scalars are not supported)");
            goto out;
        }
        if (q == '\'') {
            if (*c == '\'') {
                if (c[1] == '\'') {
                    buf[o++] = '\'';
                    c += 2;
                    continue;
                }
                c++;
                break;
            }
            buf[o++] = (unsigned char)*c++;
            continue;
        }
        if (*c == '"') {
            c++;
            break;
        }
        if (*c != '\\') {
            buf[o++] = (unsigned char)*c++;
            continue;
        }
        c++;
        int digits = 0;
        switch (*c) {
        case '\\': buf[o++] = '\\'; break;
        case '"': buf[o++] = '"'; break;
        case '/': buf[o++] = '/'; break;
        case ' ': buf[o++] = ' '; break;
        case 'n': buf[o++] = '\n'; break;
        case 't': case '\t': buf[o++] = '\t'; break;
        case 'r': buf[o++] = '\r'; break;
        case 'b': buf[o++] = '\b'; break;
        case 'f': buf[o++] = '\f'; break;
        case 'e': buf[o++] = 0x1b; break;
        case 'x': digits = 2; break;
        case 'u': digits = 4; break;
        case 'U': digits = 8; break;
        default:
            st = yfail(p, lineno, "unsupported escape in double-quoted string");
            goto out;
        }
        if (digits > 0) {
            uint32_t cp = 0;

            for (int k = 1; k <= digits; k++) {
                int h = hexval(c[k]);

                if (h < 0) {
                    st = yfail(p, lineno, "bad \\%c escape", *c);
                    goto out;
                }
                cp = cp * 16 + (uint32_t)h;
            }
            if (cp == 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) {
                st = yfail(p, lineno, "unsupported code point in escape");
                goto out;
            }
            o += utf8_put(buf + o, cp);
            c += digits;
        }
        c++;
    }
    str = json_stringn((const char *)buf, o);
    if (str == NULL) {
        st = yfail(p, lineno, "string is not valid UTF-8");
        goto out;
    }
    *out = str;
    *end = c;
    st = KS_OK;
out:
    free(buf);
    return st;
}

/* Only blanks or a comment may follow a closing quote or flow collection. */
static int rest_is_blank(const char *c)
{
    while (*c == ' ' || *c == '\t')
        c++;
    return *c == '\0' || (*c == '#' && (c[-1] == ' ' || c[-1] == '\t'));
}

static int flow_ws(const char **c)
{
    while (**c == ' ' || **c == '\t')
        (*c)++;
    return **c;
}

/* A flow collection on one line: {a: b, "c": [d, 'e']} (JSON is a special
 * case). Plain scalars end at , [ ] { } or ": ". Scalars become strings. */
static ks_status y_flow(const yparser *p, int lineno, const char **sp, int depth, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    const char *c = *sp;
    json_t *coll = NULL, *key = NULL, *val = NULL;
    char open = *c, close = open == '{' ? '}' : ']';

    if (depth > YAML_MAX_DEPTH) {
        st = yfail(p, lineno, "nesting deeper than %d", YAML_MAX_DEPTH);
        goto out;
    }
    coll = open == '{' ? json_object() : json_array();
    if (coll == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
        goto out;
    }
    c++;
    for (int first = 1;; first = 0) {
        if (flow_ws(&c) == close) {
            c++;
            break;
        }
        if (!first) {
            if (*c != ',') {
                st = yfail(p, lineno, "expected ',' or '%c' in a flow collection (multi-line flow is not supported)",
                           close);
                goto out;
            }
            c++;
            if (flow_ws(&c) == close) {   /* trailing comma */
                c++;
                break;
            }
        }
        for (int part = (open == '{') ? 0 : 1; part < 2; part++) {
            json_t *item = NULL;

            flow_ws(&c);
            if (*c == '{' || *c == '[') {
                if (part == 0) {
                    st = yfail(p, lineno, "unsupported mapping key");
                    goto out;
                }
                st = y_flow(p, lineno, &c, depth + 1, &item);
            } else if (*c == '"' || *c == '\'') {
                st = y_quoted(p, lineno, c, &item, &c);
            } else {
                const char *b = c;
                size_t n;

                if (strchr("&*!|>%@`?#", *c) != NULL || *c == '\0') {
                    st = yfail(p, lineno, "unsupported value in a flow collection");
                    goto out;
                }
                while (*c != '\0' && strchr(",[]{}", *c) == NULL &&
                       !(*c == ':' && (c[1] == ' ' || c[1] == '\0' || part == 0)))
                    c++;
                n = (size_t)(c - b);
                while (n > 0 && (b[n - 1] == ' ' || b[n - 1] == '\t'))
                    n--;
                item = json_stringn(b, n);
                st = item ? KS_OK : yfail(p, lineno, "value is not valid UTF-8");
            }
            if (st)
                goto out;
            if (part == 0) {
                key = item;
                if (flow_ws(&c) != ':') {
                    json_decref(item);
                    key = NULL;
                    st = yfail(p, lineno, "expected ':' after a key in a flow mapping");
                    goto out;
                }
                c++;
            } else {
                val = item;
            }
        }
        if (open == '{') {
            if (json_object_get(coll, json_string_value(key)) != NULL) {
                st = yfail(p, lineno, "duplicate key \"%s\"", json_string_value(key));
                goto out;
            }
            if (json_object_set_new(coll, json_string_value(key), val) != 0) {
                val = NULL;
                st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
                goto out;
            }
            json_decref(key);
            key = NULL;
        } else if (json_array_append_new(coll, val) != 0) {
            val = NULL;
            st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
            goto out;
        }
        val = NULL;
    }
    *out = coll;
    coll = NULL;
    *sp = c;
    st = KS_OK;
out:
    json_decref(coll);
    json_decref(key);
    json_decref(val);
    return st;
}

/* An inline value (after "key: " or "- "). Block scalars are handled by the caller. */
static ks_status y_scalar(const yparser *p, int lineno, const char *s, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    json_t *v = NULL;
    const char *end = NULL;

    if (s[0] == '"' || s[0] == '\'') {
        st = y_quoted(p, lineno, s, &v, &end);
        if (st)
            goto out;
        if (!rest_is_blank(end)) {
            st = yfail(p, lineno, "unexpected text after a quoted string");
            goto out;
        }
    } else if (s[0] == '{' || s[0] == '[') {
        end = s;
        st = y_flow(p, lineno, &end, 0, &v);
        if (st)
            goto out;
        if (!rest_is_blank(end)) {
            st = yfail(p, lineno, "unexpected text after a flow collection");
            goto out;
        }
    } else if (s[0] == '&' || s[0] == '*' || s[0] == '!') {
        st = yfail(p, lineno, "anchors, aliases and tags are not supported");
        goto out;
    } else if (s[0] == '%' || s[0] == '@' || s[0] == '`' || s[0] == '?' || s[0] == '|' ||
               s[0] == '>') {
        st = yfail(p, lineno, "unsupported YAML indicator '%c'", s[0]);
        goto out;
    } else {
        size_t n = 0;

        /* a plain scalar ends at " #" (comment); ": " inside it is an error */
        for (; s[n] != '\0'; n++) {
            if (s[n] == '#' && n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
                break;
            if (s[n] == ':' && (s[n + 1] == ' ' || s[n + 1] == '\0')) {
                st = yfail(p, lineno, "unexpected ':' in a plain value (quote it)");
                goto out;
            }
        }
        while (n > 0 && (s[n - 1] == ' ' || s[n - 1] == '\t'))
            n--;
        if (n == 0 || (n == 1 && s[0] == '~') ||
            (n == 4 && (memcmp(s, "null", 4) == 0 || memcmp(s, "Null", 4) == 0 ||
                        memcmp(s, "NULL", 4) == 0))) {
            v = json_null();
        } else {
            v = json_stringn(s, n);
            if (v == NULL) {
                st = yfail(p, lineno, "value is not valid UTF-8");
                goto out;
            }
        }
    }
    *out = v;
    v = NULL;
    st = KS_OK;
out:
    json_decref(v);
    return st;
}

static ks_status y_node(yparser *p, int depth, json_t **out);
static ks_status y_seq(yparser *p, int ind, int depth, json_t **out);

/* Position of the ':' that ends a mapping key, or -1. */
static long y_key_colon(const char *t)
{
    const char *c = t;

    if (*c == '"' || *c == '\'') {
        char q = *c++;

        while (*c != '\0') {
            if (q == '"' && *c == '\\' && c[1] != '\0') {
                c += 2;
                continue;
            }
            if (*c == q) {
                if (q == '\'' && c[1] == '\'') {
                    c += 2;
                    continue;
                }
                break;
            }
            c++;
        }
        if (*c == '\0')
            return -1;
        c++;
        while (*c == ' ')
            c++;
        return (*c == ':' && (c[1] == ' ' || c[1] == '\0')) ? (long)(c - t) : -1;
    }
    for (; *c != '\0'; c++) {
        if (*c == '#' && c > t && (c[-1] == ' ' || c[-1] == '\t'))
            return -1;
        if (*c == ':' && (c[1] == ' ' || c[1] == '\0'))
            return (long)(c - t);
    }
    return -1;
}

/* The value of "key:" with nothing after it: the more-indented lines below, a
 * sequence at the same indentation, or null. */
static ks_status y_child(yparser *p, int ind, int depth, json_t **out)
{
    if (p->pos < p->n) {
        yline *nx = &p->v[p->pos];

        if (nx->indent > ind)
            return y_node(p, depth + 1, out);
        if (nx->indent == ind && is_seq_item(nx->text))
            return y_seq(p, ind, depth + 1, out);
    }
    *out = json_null();
    return KS_OK;
}

/* A block scalar's content is skipped: the fields we read never use one. */
static ks_status y_block_scalar(yparser *p, yline *l, const char *v, json_t **out)
{
    const char *h = v + 1;

    while (*h == '-' || *h == '+' || (*h >= '1' && *h <= '9'))
        h++;
    if (!rest_is_blank(h))
        return yfail(p, l->lineno, "bad block scalar header");
    p->pos++;
    while (p->pos < p->n && p->v[p->pos].indent > l->indent)
        p->pos++;
    *out = json_null();
    return KS_OK;
}

static ks_status y_map(yparser *p, int ind, int depth, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    json_t *obj = json_object(), *key = NULL, *val = NULL;

    if (obj == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
        goto out;
    }
    while (p->pos < p->n) {
        yline *l = &p->v[p->pos];
        long colon;
        const char *v;

        if (l->indent < ind)
            break;
        if (l->indent > ind) {
            st = yfail(p, l->lineno, "bad indentation");
            goto out;
        }
        if (is_seq_item(l->text)) {
            st = yfail(p, l->lineno, "sequence item where a mapping key was expected");
            goto out;
        }
        colon = y_key_colon(l->text);
        if (colon < 0) {
            st = yfail(p, l->lineno, "expected 'key: value'");
            goto out;
        }
        if (l->text[0] == '"' || l->text[0] == '\'') {
            const char *kend;

            st = y_quoted(p, l->lineno, l->text, &key, &kend);
            if (st)
                goto out;
        } else {
            long n = colon;

            while (n > 0 && l->text[n - 1] == ' ')
                n--;
            if (n == 0 || strchr("?&*!|>%@`{[", l->text[0]) != NULL) {
                st = yfail(p, l->lineno, "unsupported mapping key");
                goto out;
            }
            key = json_stringn(l->text, (size_t)n);
            if (key == NULL) {
                st = yfail(p, l->lineno, "key is not valid UTF-8");
                goto out;
            }
        }
        if (json_object_get(obj, json_string_value(key)) != NULL) {
            st = yfail(p, l->lineno, "duplicate key \"%s\"", json_string_value(key));
            goto out;
        }
        v = l->text + colon + 1;
        while (*v == ' ')
            v++;
        if (*v == '\0' || (*v == '#' && v[-1] == ' ')) {
            p->pos++;
            st = y_child(p, ind, depth, &val);
        } else if (*v == '|' || *v == '>') {
            st = y_block_scalar(p, l, v, &val);
        } else {
            st = y_scalar(p, l->lineno, v, &val);
            p->pos++;
        }
        if (st)
            goto out;
        if (json_object_set_new(obj, json_string_value(key), val) != 0) {
            val = NULL;
            st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
            goto out;
        }
        val = NULL;
        json_decref(key);
        key = NULL;
    }
    *out = obj;
    obj = NULL;
    st = KS_OK;
out:
    json_decref(obj);
    json_decref(key);
    json_decref(val);
    return st;
}

static ks_status y_seq(yparser *p, int ind, int depth, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    json_t *arr = json_array(), *item = NULL;

    if (arr == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
        goto out;
    }
    if (depth > YAML_MAX_DEPTH) {
        st = yfail(p, p->v[p->pos].lineno, "nesting deeper than %d", YAML_MAX_DEPTH);
        goto out;
    }
    while (p->pos < p->n) {
        yline *l = &p->v[p->pos];
        char *rest;
        int k = 0;

        if (l->indent < ind)
            break;
        if (l->indent > ind) {
            st = yfail(p, l->lineno, "bad indentation");
            goto out;
        }
        if (!is_seq_item(l->text))
            break;
        rest = l->text + 1;
        while (rest[k] == ' ')
            k++;
        if (rest[k] == '\0' || (rest[k] == '#' && k > 0)) {
            p->pos++;
            if (p->pos < p->n && p->v[p->pos].indent > ind) {
                st = y_node(p, depth + 1, &item);
            } else {
                item = json_null();
                st = KS_OK;
            }
        } else if (is_seq_item(rest + k) || y_key_colon(rest + k) >= 0) {
            /* "- key: v" or "- - x": the item is a node that starts at this column */
            l->indent = ind + 1 + k;
            l->text = rest + k;
            st = y_node(p, depth + 1, &item);
        } else if (rest[k] == '|' || rest[k] == '>') {
            st = y_block_scalar(p, l, rest + k, &item);
        } else {
            st = y_scalar(p, l->lineno, rest + k, &item);
            p->pos++;
        }
        if (st)
            goto out;
        if (json_array_append_new(arr, item) != 0) {
            item = NULL;
            st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", p->origin);
            goto out;
        }
        item = NULL;
    }
    *out = arr;
    arr = NULL;
    st = KS_OK;
out:
    json_decref(arr);
    json_decref(item);
    return st;
}

static ks_status y_node(yparser *p, int depth, json_t **out)
{
    yline *l = &p->v[p->pos];

    if (depth > YAML_MAX_DEPTH)
        return yfail(p, l->lineno, "nesting deeper than %d", YAML_MAX_DEPTH);
    if (is_seq_item(l->text))
        return y_seq(p, l->indent, depth, out);
    if (y_key_colon(l->text) < 0) {
        /* a lone scalar where a block was expected: "key:\n  value" */
        return yfail(p, l->lineno, "expected 'key: value' or '- item' (multi-line scalars are not supported)");
    }
    return y_map(p, l->indent, depth, out);
}

/* Parse a kubeconfig document (YAML subset or JSON) into a json_t tree. */
static ks_status kc_parse_tree(const char *text, size_t len, const char *origin, json_t **out)
{
    ks_status st = KS_ERR_INVALID;
    yparser p = {.origin = origin};
    char *copy = NULL;
    json_t *root = NULL;
    size_t i = 0;

    if (len > KS_KUBE_MAX_KUBECONFIG) {
        st = KS_FAIL(KS_ERR_TOO_LARGE, "kubeconfig %s: larger than %u bytes", origin,
                     KS_KUBE_MAX_KUBECONFIG);
        goto out;
    }
    while (i < len && (text[i] == ' ' || text[i] == '\t' || text[i] == '\r' || text[i] == '\n'))
        i++;
    if (i < len && text[i] == '{') {
        json_error_t jerr;

        root = json_loadb(text, len, JSON_REJECT_DUPLICATES, &jerr);
        if (root == NULL) {
            st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s:%d: %s", origin, jerr.line, jerr.text);
            goto out;
        }
    } else {
        copy = dup_n(text, len);
        if (copy == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", origin);
            goto out;
        }
        st = y_lines(&p, copy, len);
        if (st)
            goto out;
        if (p.n == 0) {
            st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: empty", origin);
            goto out;
        }
        st = y_node(&p, 0, &root);
        if (st)
            goto out;
        if (p.pos < p.n) {
            st = yfail(&p, p.v[p.pos].lineno, "unexpected content (bad indentation?)");
            goto out;
        }
    }
    if (!json_is_object(root)) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: top level is not a mapping", origin);
        goto out;
    }
    *out = root;
    root = NULL;
    st = KS_OK;
out:
    json_decref(root);
    free(p.v);
    if (copy)
        wipe_free(copy, len + 1);
    return st;
}

/* ======================================================================
 * kubeconfig -> ks_kube_config
 * ==================================================================== */

typedef struct {
    const char *origin;
    const char *base_dir;
} kc_ctx;

/* obj[key] as a string: absent, null and "" give NULL. */
static ks_status kc_str(const kc_ctx *k, const json_t *obj, const char *where, const char *key,
                        const char **out)
{
    const json_t *v = json_object_get(obj, key);

    if (v == NULL || json_is_null(v)) {
        *out = NULL;
        return KS_OK;
    }
    if (!json_is_string(v))
        return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.%s: must be a string", k->origin,
                       where, key);
    *out = json_string_length(v) ? json_string_value(v) : NULL;
    return KS_OK;
}

/* Find list[i] with .name == name and return list[i][inner] (an object). */
static ks_status kc_named(const kc_ctx *k, const json_t *root, const char *list, const char *name,
                          const char *inner, const json_t **out)
{
    const json_t *arr = json_object_get(root, list);
    size_t i;
    const json_t *el;

    if (arr != NULL && !json_is_array(arr) && !json_is_null(arr))
        return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s: must be a list", k->origin, list);
    json_array_foreach(arr, i, el) {
        const json_t *n = json_object_get(el, "name");
        const json_t *in;

        if (!json_is_object(el) || !json_is_string(n))
            return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s[%zu]: needs a name", k->origin,
                           list, i);
        if (strcmp(json_string_value(n), name) != 0)
            continue;
        in = json_object_get(el, inner);
        if (!json_is_object(in))
            return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s[\"%s\"].%s: missing or not a mapping",
                           k->origin, list, name, inner);
        *out = in;
        return KS_OK;
    }
    return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s: no entry named \"%s\"", k->origin, list,
                   name);
}

/* A readable file field: resolves against the kubeconfig folder. */
static ks_status kc_file(const kc_ctx *k, const char *where, const char *key, const char *val,
                         char **out)
{
    char *path = abs_path(k->base_dir, val);

    if (path == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: %s.%s: cannot resolve path", k->origin, where,
                       key);
    if (access(path, R_OK) != 0) {
        ks_status st = KS_FAIL(KS_ERR_IO, "kubeconfig %s: %s.%s: %s: %s", k->origin, where, key,
                               path, strerror(errno));
        free(path);
        return st;
    }
    *out = path;
    return KS_OK;
}

/* A file-or-data pair: at most one may be set. */
static ks_status kc_pair(const kc_ctx *k, const json_t *obj, const char *where, const char *file_key,
                         const char *data_key, char **file_out, unsigned char **data_out,
                         size_t *len_out)
{
    ks_status st;
    const char *f, *d;
    int rc;

    if ((st = kc_str(k, obj, where, file_key, &f)) != KS_OK ||
        (st = kc_str(k, obj, where, data_key, &d)) != KS_OK)
        return st;
    if (f && d)
        return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s: both %s and %s are set", k->origin,
                       where, file_key, data_key);
    if (f)
        return kc_file(k, where, file_key, f, file_out);
    if (d == NULL)
        return KS_OK;
    rc = b64_decode(d, strlen(d), data_out, len_out);
    if (rc == -2)
        return KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: %s.%s: out of memory", k->origin, where,
                       data_key);
    if (rc != 0)
        return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.%s: invalid base64", k->origin, where,
                       data_key);
    return KS_OK;
}

static ks_status kc_bool(const kc_ctx *k, const json_t *obj, const char *where, const char *key,
                         int *out)
{
    const json_t *v = json_object_get(obj, key);
    const char *s;

    if (v == NULL || json_is_null(v)) {
        *out = 0;
        return KS_OK;
    }
    if (json_is_boolean(v)) {
        *out = json_is_true(v);
        return KS_OK;
    }
    s = json_string_value(v);
    if (s && (!strcmp(s, "true") || !strcmp(s, "True") || !strcmp(s, "TRUE"))) {
        *out = 1;
        return KS_OK;
    }
    if (s && (!strcmp(s, "false") || !strcmp(s, "False") || !strcmp(s, "FALSE"))) {
        *out = 0;
        return KS_OK;
    }
    return KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.%s: must be true or false", k->origin, where,
                   key);
}

static ks_status kc_extract(const kc_ctx *k, const json_t *root, const char *context,
                            ks_kube_config *cfg)
{
    ks_status st = KS_ERR_INVALID;
    const json_t *ctx, *cluster, *user = NULL;
    const char *cluster_name, *user_name, *server, *token, *token_file;
    char where[256];

    if (context == NULL) {
        if ((st = kc_str(k, root, "(top)", "current-context", &context)) != KS_OK)
            goto out;
        if (context == NULL) {
            st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: current-context is not set", k->origin);
            goto out;
        }
    }
    if ((st = kc_named(k, root, "contexts", context, "context", &ctx)) != KS_OK)
        goto out;
    snprintf(where, sizeof(where), "contexts[\"%s\"].context", context);
    if ((st = kc_str(k, ctx, where, "cluster", &cluster_name)) != KS_OK ||
        (st = kc_str(k, ctx, where, "user", &user_name)) != KS_OK)
        goto out;
    if (cluster_name == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.cluster: missing", k->origin, where);
        goto out;
    }

    if ((st = kc_named(k, root, "clusters", cluster_name, "cluster", &cluster)) != KS_OK)
        goto out;
    snprintf(where, sizeof(where), "clusters[\"%s\"].cluster", cluster_name);
    if ((st = kc_str(k, cluster, where, "server", &server)) != KS_OK)
        goto out;
    if (server == NULL || !server_ok(server)) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.server: %s", k->origin, where,
                     server ? "must be an http:// or https:// URL" : "missing");
        goto out;
    }
    if ((cfg->server = server_dup(server)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", k->origin);
        goto out;
    }
    if ((st = kc_pair(k, cluster, where, "certificate-authority", "certificate-authority-data",
                      &cfg->ca_file, &cfg->ca_data, &cfg->ca_data_len)) != KS_OK ||
        (st = kc_bool(k, cluster, where, "insecure-skip-tls-verify", &cfg->insecure)) != KS_OK)
        goto out;

    if (user_name == NULL) {
        st = KS_OK;
        goto out;
    }
    if ((st = kc_named(k, root, "users", user_name, "user", &user)) != KS_OK)
        goto out;
    snprintf(where, sizeof(where), "users[\"%s\"].user", user_name);
    if ((st = kc_str(k, user, where, "token", &token)) != KS_OK ||
        (st = kc_str(k, user, where, "tokenFile", &token_file)) != KS_OK)
        goto out;
    if (token && token_file) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s: both token and tokenFile are set",
                     k->origin, where);
        goto out;
    }
    if (token) {
        if ((cfg->token = dup_str(token)) == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", k->origin);
            goto out;
        }
        if (!token_clean(cfg->token)) {
            st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.token: contains blanks or control characters",
                         k->origin, where);
            goto out;
        }
    }
    if (token_file && (st = kc_file(k, where, "tokenFile", token_file, &cfg->token_file)) != KS_OK)
        goto out;
    if ((st = kc_pair(k, user, where, "client-certificate", "client-certificate-data",
                      &cfg->cert_file, &cfg->cert_data, &cfg->cert_data_len)) != KS_OK ||
        (st = kc_pair(k, user, where, "client-key", "client-key-data", &cfg->key_file,
                      &cfg->key_data, &cfg->key_data_len)) != KS_OK)
        goto out;
    if ((cfg->cert_file || cfg->cert_data) != (cfg->key_file || cfg->key_data)) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s: client certificate and key must be set together",
                     k->origin, where);
        goto out;
    }
    if (!cfg->token && !cfg->token_file && !cfg->cert_file && !cfg->cert_data) {
        const char *unsupported[] = {"exec", "auth-provider", "username", "password"};

        for (size_t i = 0; i < sizeof(unsupported) / sizeof(unsupported[0]); i++) {
            if (json_object_get(user, unsupported[i]) != NULL) {
                st = KS_FAIL(KS_ERR_INVALID, "kubeconfig %s: %s.%s: not supported (use a token or client certificate)",
                             k->origin, where, unsupported[i]);
                goto out;
            }
        }
    }
    st = KS_OK;
out:
    return st;
}

ks_status ks_kube_config_parse_kubeconfig(const char *text, size_t len, const char *origin,
                                          const char *base_dir, const char *context,
                                          ks_kube_config *out)
{
    ks_status st = KS_ERR_INVALID;
    ks_kube_config cfg = {0};
    json_t *root = NULL;
    kc_ctx k = {.origin = origin ? origin : "(memory)", .base_dir = base_dir};

    if (text == NULL || out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig: no text");
        goto out;
    }
    if ((st = kc_parse_tree(text, len, k.origin, &root)) != KS_OK)
        goto out;
    if ((st = kc_extract(&k, root, context, &cfg)) != KS_OK)
        goto out;
    *out = cfg;
    memset(&cfg, 0, sizeof(cfg));
    st = KS_OK;
out:
    ks_kube_config_clear(&cfg);
    json_decref(root);
    return st;
}

ks_status ks_kube_config_from_kubeconfig(const char *path, const char *context,
                                         ks_kube_config *out)
{
    ks_status st = KS_ERR_INVALID;
    char *text = NULL, *dir = NULL, *slash;
    size_t len = 0;

    if (path == NULL || out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kubeconfig: no path");
        goto out;
    }
    st = read_file_capped("kubeconfig", path, KS_KUBE_MAX_KUBECONFIG, &text, &len);
    if (st)
        goto out;
    if ((dir = dup_str(path)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kubeconfig %s: out of memory", path);
        goto out;
    }
    slash = strrchr(dir, '/');
    if (slash == NULL)
        dir[0] = '\0';
    else if (slash == dir)
        dir[1] = '\0';
    else
        *slash = '\0';
    st = ks_kube_config_parse_kubeconfig(text, len, path, dir, context, out);
out:
    if (text)
        wipe_free(text, len);
    free(dir);
    return st;
}

ks_status ks_kube_config_explicit(const char *server, const char *token_file, const char *ca_file,
                                  ks_kube_config *out)
{
    ks_status st = KS_ERR_INVALID;
    ks_kube_config cfg = {0};
    kc_ctx k = {.origin = "(explicit)", .base_dir = NULL};

    if (server == NULL || !server_ok(server) || out == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kube config: server must be an http:// or https:// URL");
        goto out;
    }
    if ((cfg.server = server_dup(server)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube config: out of memory");
        goto out;
    }
    if (token_file && (st = kc_file(&k, "kube", "token_file", token_file, &cfg.token_file)))
        goto out;
    if (ca_file && (st = kc_file(&k, "kube", "ca_file", ca_file, &cfg.ca_file)))
        goto out;
    *out = cfg;
    memset(&cfg, 0, sizeof(cfg));
    st = KS_OK;
out:
    ks_kube_config_clear(&cfg);
    return st;
}

ks_status ks_kube_config_in_cluster(const char *sa_dir, ks_kube_config *out)
{
    ks_status st = KS_ERR_INVALID;
    ks_kube_config cfg = {0};
    const char *host = getenv("KUBERNETES_SERVICE_HOST");
    const char *port = getenv("KUBERNETES_SERVICE_PORT");
    char url[320], tok[PATH_MAX], ca[PATH_MAX];
    char *end = NULL;
    long pnum;
    kc_ctx k = {.origin = "(in-cluster)", .base_dir = NULL};

    if (out == NULL)
        goto out;
    if (sa_dir == NULL)
        sa_dir = DEFAULT_SA_DIR;
    if (host == NULL || host[0] == '\0' || port == NULL || port[0] == '\0') {
        st = KS_FAIL(KS_ERR_INVALID, "in-cluster: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT must be set");
        goto out;
    }
    if (strlen(host) > 253 ||
        strspn(host, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.-:") !=
            strlen(host)) {
        st = KS_FAIL(KS_ERR_INVALID, "in-cluster: KUBERNETES_SERVICE_HOST is not a host name or address");
        goto out;
    }
    errno = 0;
    pnum = strtol(port, &end, 10);
    if (errno != 0 || end == port || *end != '\0' || pnum < 1 || pnum > 65535) {
        st = KS_FAIL(KS_ERR_INVALID, "in-cluster: KUBERNETES_SERVICE_PORT must be 1-65535");
        goto out;
    }
    if (strchr(host, ':') != NULL)   /* IPv6 */
        snprintf(url, sizeof(url), "https://[%s]:%ld", host, pnum);
    else
        snprintf(url, sizeof(url), "https://%s:%ld", host, pnum);
    if ((size_t)snprintf(tok, sizeof(tok), "%s/token", sa_dir) >= sizeof(tok) ||
        (size_t)snprintf(ca, sizeof(ca), "%s/ca.crt", sa_dir) >= sizeof(ca)) {
        st = KS_FAIL(KS_ERR_INVALID, "in-cluster: service account folder path too long");
        goto out;
    }
    if ((cfg.server = dup_str(url)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "in-cluster: out of memory");
        goto out;
    }
    if ((st = kc_file(&k, "serviceaccount", "token", tok, &cfg.token_file)) != KS_OK ||
        (st = kc_file(&k, "serviceaccount", "ca.crt", ca, &cfg.ca_file)) != KS_OK)
        goto out;
    *out = cfg;
    memset(&cfg, 0, sizeof(cfg));
    st = KS_OK;
out:
    ks_kube_config_clear(&cfg);
    return st;
}

static int blob_copy(const unsigned char *src, size_t len, unsigned char **dst)
{
    if (src == NULL)
        return 0;
    *dst = malloc(len + 1);
    if (*dst == NULL)
        return -1;
    memcpy(*dst, src, len);
    (*dst)[len] = '\0';
    return 0;
}

ks_status ks_kube_config_copy(const ks_kube_config *src, ks_kube_config *out)
{
    ks_status st = KS_ERR_NOMEM;
    ks_kube_config c = {0};

    c.insecure = src->insecure;
    c.timeout_ms = src->timeout_ms;
    c.ca_data_len = src->ca_data_len;
    c.cert_data_len = src->cert_data_len;
    c.key_data_len = src->key_data_len;
    if ((src->server && !(c.server = dup_str(src->server))) ||
        (src->token && !(c.token = dup_str(src->token))) ||
        (src->token_file && !(c.token_file = dup_str(src->token_file))) ||
        (src->ca_file && !(c.ca_file = dup_str(src->ca_file))) ||
        (src->cert_file && !(c.cert_file = dup_str(src->cert_file))) ||
        (src->key_file && !(c.key_file = dup_str(src->key_file))) ||
        blob_copy(src->ca_data, src->ca_data_len, &c.ca_data) ||
        blob_copy(src->cert_data, src->cert_data_len, &c.cert_data) ||
        blob_copy(src->key_data, src->key_data_len, &c.key_data)) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube config: out of memory");
        goto out;
    }
    *out = c;
    memset(&c, 0, sizeof(c));
    st = KS_OK;
out:
    ks_kube_config_clear(&c);
    return st;
}

void ks_kube_config_clear(ks_kube_config *cfg)
{
    if (cfg == NULL)
        return;
    free(cfg->server);
    wipe_free_str(cfg->token);
    free(cfg->token_file);
    free(cfg->ca_file);
    free(cfg->ca_data);
    free(cfg->cert_file);
    free(cfg->cert_data);
    free(cfg->key_file);
    if (cfg->key_data)
        wipe_free(cfg->key_data, cfg->key_data_len);
    memset(cfg, 0, sizeof(*cfg));
}

/* ======================================================================
 * metav1.Status and status mapping
 * ==================================================================== */

const char *ks_kube_reason_for_code(long code)
{
    switch (code) {
    case 400: return "BadRequest";
    case 401: return "Unauthorized";
    case 403: return "Forbidden";
    case 404: return "NotFound";
    case 405: return "MethodNotAllowed";
    case 406: return "NotAcceptable";
    case 408: return "Timeout";
    case 409: return "Conflict";
    case 410: return "Expired";
    case 413: return "RequestEntityTooLarge";
    case 415: return "UnsupportedMediaType";
    case 422: return "Invalid";
    case 429: return "TooManyRequests";
    case 500: return "InternalError";
    case 503: return "ServiceUnavailable";
    case 504: return "Timeout";
    default: return "";
    }
}

ks_status ks_kube_status_map(long code)
{
    if (code >= 200 && code <= 299)
        return KS_OK;
    switch (code) {
    case 401:
    case 403:
        return KS_ERR_DENIED;
    case 404:
        return KS_ERR_NOT_FOUND;
    case 408:
        return KS_ERR_TIMEOUT;
    case 409:
    case 410:
        return KS_ERR_CONFLICT;
    case 413:
        return KS_ERR_TOO_LARGE;
    case 429:
        return KS_ERR_UNAVAILABLE;
    default:
        break;
    }
    if (code >= 400 && code <= 499)
        return KS_ERR_INVALID;
    if (code >= 500 && code <= 599)
        return KS_ERR_UNAVAILABLE;
    return KS_ERR_PROTOCOL;
}

ks_status ks_kube_status_from_json(const json_t *obj, ks_kube_status *out)
{
    const char *kind = json_string_value(json_object_get(obj, "kind"));
    const json_t *code = json_object_get(obj, "code");
    const char *reason = json_string_value(json_object_get(obj, "reason"));
    const char *message = json_string_value(json_object_get(obj, "message"));
    ks_kube_status s;

    if (!json_is_object(obj) || kind == NULL || strcmp(kind, "Status") != 0)
        return KS_FAIL(KS_ERR_PROTOCOL, "not a metav1.Status");
    if (code != NULL && (!json_is_integer(code) || json_integer_value(code) < 0 ||
                         json_integer_value(code) > 999))
        return KS_FAIL(KS_ERR_PROTOCOL, "metav1.Status: bad code");
    s.code = code ? (long)json_integer_value(code) : 0;
    copy_utf8_trunc(s.reason, sizeof(s.reason), reason ? reason : "");
    copy_utf8_trunc(s.message, sizeof(s.message), message ? message : "");
    *out = s;
    return KS_OK;
}

ks_status ks_kube_status_parse(const char *body, size_t len, ks_kube_status *out)
{
    ks_status st;
    json_t *obj;

    if (body == NULL || len == 0)
        return KS_FAIL(KS_ERR_PROTOCOL, "metav1.Status: empty body");
    obj = json_loadb(body, len, 0, NULL);
    if (obj == NULL)
        return KS_FAIL(KS_ERR_PROTOCOL, "metav1.Status: not JSON");
    st = ks_kube_status_from_json(obj, out);
    json_decref(obj);
    return st;
}

int ks_kube_status_is_expired(const ks_kube_status *st)
{
    return st != NULL && (st->code == 410 || strcmp(st->reason, "Expired") == 0 ||
                          strcmp(st->reason, "Gone") == 0);
}

void ks_kube_response_clear(ks_kube_response *r)
{
    if (r == NULL)
        return;
    free(r->body);
    memset(r, 0, sizeof(*r));
    r->retry_after_s = -1;
}

int ks_kube_response_expired(const ks_kube_response *r)
{
    return r != NULL && (r->http_code == 410 || ks_kube_status_is_expired(&r->status));
}

/* ======================================================================
 * client
 * ==================================================================== */

struct ks_kube_client {
    ks_kube_config cfg;
    CURLSH *share;
    pthread_mutex_t share_locks[CURL_LOCK_DATA_LAST];
    pthread_mutex_t lock;               /* pool and token */
    CURL *pool[POOL_MAX];
    size_t npool;
    char *token;                        /* current bearer token, or NULL */
    struct timespec token_read_at;
    atomic_int shutdown;
};

static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static CURLcode curl_init_rc = CURLE_FAILED_INIT;

static void curl_init_once(void)
{
    curl_init_rc = curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void share_lock(CURL *h, curl_lock_data data, curl_lock_access access, void *userp)
{
    ks_kube_client *c = userp;

    (void)h;
    (void)access;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_lock(&c->share_locks[data]);
}

static void share_unlock(CURL *h, curl_lock_data data, void *userp)
{
    ks_kube_client *c = userp;

    (void)h;
    if ((unsigned)data < CURL_LOCK_DATA_LAST)
        pthread_mutex_unlock(&c->share_locks[data]);
}

static ks_status token_read(const char *path, char **out)
{
    ks_status st;
    char *buf = NULL;
    size_t len = 0;

    st = read_file_capped("token file", path, KS_KUBE_MAX_TOKEN, &buf, &len);
    if (st)
        return st;
    if (!token_clean(buf)) {
        wipe_free(buf, len);
        return KS_FAIL(KS_ERR_INVALID, "token file %s: empty or contains blanks or control characters",
                       path);
    }
    *out = buf;
    return KS_OK;
}

ks_status ks_kube_client_create(const ks_kube_config *cfg, ks_kube_client **out)
{
    ks_status st = KS_ERR_INVALID;
    ks_kube_client *c = NULL;
    int share_mutexes = 0, lock_ok = 0;

    if (cfg == NULL || out == NULL || cfg->server == NULL || !server_ok(cfg->server)) {
        st = KS_FAIL(KS_ERR_INVALID, "kube client: no valid server URL");
        goto out;
    }
    pthread_once(&curl_once, curl_init_once);
    if (curl_init_rc != CURLE_OK) {
        st = KS_FAIL(KS_ERR_INTERNAL, "kube client: curl_global_init: %s",
                     curl_easy_strerror(curl_init_rc));
        goto out;
    }
    c = calloc(1, sizeof(*c));
    if (c == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube client: out of memory");
        goto out;
    }
    if ((st = ks_kube_config_copy(cfg, &c->cfg)) != KS_OK)
        goto out;
    if (c->cfg.timeout_ms <= 0)
        c->cfg.timeout_ms = KS_KUBE_DEFAULT_TIMEOUT_MS;
    if (c->cfg.token) {
        if ((c->token = dup_str(c->cfg.token)) == NULL) {
            st = KS_FAIL(KS_ERR_NOMEM, "kube client: out of memory");
            goto out;
        }
    } else if (c->cfg.token_file) {
        if ((st = token_read(c->cfg.token_file, &c->token)) != KS_OK)
            goto out;
        clock_gettime(CLOCK_MONOTONIC, &c->token_read_at);
    }
    for (; share_mutexes < CURL_LOCK_DATA_LAST; share_mutexes++)
        pthread_mutex_init(&c->share_locks[share_mutexes], NULL);
    pthread_mutex_init(&c->lock, NULL);
    lock_ok = 1;
    atomic_init(&c->shutdown, 0);
    /* DNS and TLS sessions only: a shared connection cache is not thread-safe
     * in libcurl 7.88 (known bug 11.11). Each pooled easy handle keeps its own
     * connections alive instead. */
    c->share = curl_share_init();
    if (c->share == NULL ||
        curl_share_setopt(c->share, CURLSHOPT_LOCKFUNC, share_lock) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_UNLOCKFUNC, share_unlock) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_USERDATA, c) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_DNS) != CURLSHE_OK ||
        curl_share_setopt(c->share, CURLSHOPT_SHARE, CURL_LOCK_DATA_SSL_SESSION) != CURLSHE_OK) {
        st = KS_FAIL(KS_ERR_INTERNAL, "kube client: cannot set up the curl share");
        goto out;
    }
    *out = c;
    c = NULL;
    st = KS_OK;
out:
    if (c != NULL) {
        if (c->share)
            curl_share_cleanup(c->share);
        for (int i = 0; i < share_mutexes; i++)
            pthread_mutex_destroy(&c->share_locks[i]);
        if (lock_ok)
            pthread_mutex_destroy(&c->lock);
        wipe_free_str(c->token);
        ks_kube_config_clear(&c->cfg);
        free(c);
    }
    return st;
}

void ks_kube_client_shutdown(ks_kube_client *c)
{
    if (c != NULL)
        atomic_store(&c->shutdown, 1);
}

void ks_kube_client_destroy(ks_kube_client *c)
{
    if (c == NULL)
        return;
    for (size_t i = 0; i < c->npool; i++)
        curl_easy_cleanup(c->pool[i]);
    if (c->share)
        curl_share_cleanup(c->share);
    for (int i = 0; i < CURL_LOCK_DATA_LAST; i++)
        pthread_mutex_destroy(&c->share_locks[i]);
    pthread_mutex_destroy(&c->lock);
    wipe_free_str(c->token);
    ks_kube_config_clear(&c->cfg);
    free(c);
}

static CURL *handle_get(ks_kube_client *c)
{
    CURL *h = NULL;

    pthread_mutex_lock(&c->lock);
    if (c->npool > 0)
        h = c->pool[--c->npool];
    pthread_mutex_unlock(&c->lock);
    return h ? h : curl_easy_init();
}

static void handle_put(ks_kube_client *c, CURL *h)
{
    if (h == NULL)
        return;
    /* reset drops every pointer into this call's buffers but keeps the live
     * connections, which is the point of the pool */
    curl_easy_reset(h);
    pthread_mutex_lock(&c->lock);
    if (c->npool < POOL_MAX) {
        c->pool[c->npool++] = h;
        h = NULL;
    }
    pthread_mutex_unlock(&c->lock);
    if (h)
        curl_easy_cleanup(h);
}

/* Append "Authorization: Bearer <token>" to *hdrs, re-reading the token file
 * when it is due. The header text is never logged. */
static ks_status auth_header(ks_kube_client *c, struct curl_slist **hdrs)
{
    ks_status st = KS_OK;
    char *line = NULL;
    size_t need = 0;
    struct curl_slist *n;

    pthread_mutex_lock(&c->lock);
    if (c->cfg.token_file != NULL) {
        struct timespec now;

        clock_gettime(CLOCK_MONOTONIC, &now);
        if (now.tv_sec - c->token_read_at.tv_sec >= KS_KUBE_TOKEN_REFRESH_S) {
            char *fresh = NULL;

            c->token_read_at = now;
            if (token_read(c->cfg.token_file, &fresh) == KS_OK) {
                wipe_free_str(c->token);
                c->token = fresh;
            } else {
                ks_warn("kube: cannot re-read token file %s, keeping the previous token: %s",
                        c->cfg.token_file, ks_status_last());
            }
        }
    }
    if (c->token != NULL) {
        need = strlen("Authorization: Bearer ") + strlen(c->token) + 1;
        line = malloc(need);
        if (line)
            snprintf(line, need, "Authorization: Bearer %s", c->token);
    }
    pthread_mutex_unlock(&c->lock);
    if (need == 0)
        goto out;
    if (line == NULL || (n = curl_slist_append(*hdrs, line)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube: out of memory");
        goto out;
    }
    *hdrs = n;
out:
    if (line)
        wipe_free(line, need);
    return st;
}

static ks_status headers_add(struct curl_slist **hdrs, const char *line)
{
    struct curl_slist *n = curl_slist_append(*hdrs, line);

    if (n == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "kube: out of memory");
    *hdrs = n;
    return KS_OK;
}

static void headers_free(struct curl_slist *hdrs)
{
    for (struct curl_slist *n = hdrs; n != NULL; n = n->next)
        if (strncasecmp(n->data, "Authorization:", 14) == 0)
            explicit_bzero(n->data, strlen(n->data));
    curl_slist_free_all(hdrs);
}

typedef struct {
    ks_kube_client *c;
    CURL *h;
    char *buf;
    size_t len, cap, max;
    int too_large;
    long retry_after;
    /* streams */
    ks_kube_chunk_cb cb;
    void *arg;
    int cb_stopped;
} xfer;

static int buf_append(xfer *x, const char *data, size_t n)
{
    if (n > x->max - x->len) {
        x->too_large = 1;
        return -1;
    }
    if (x->len + n + 1 > x->cap) {
        size_t ncap = x->cap ? x->cap : 16384;
        char *nb;

        while (ncap < x->len + n + 1)
            ncap *= 2;
        if (ncap > x->max + 1)
            ncap = x->max + 1;
        nb = realloc(x->buf, ncap);
        if (nb == NULL)
            return -1;
        x->buf = nb;
        x->cap = ncap;
    }
    memcpy(x->buf + x->len, data, n);
    x->len += n;
    x->buf[x->len] = '\0';
    return 0;
}

static size_t on_body(char *data, size_t size, size_t nmemb, void *userp)
{
    xfer *x = userp;
    size_t n = size * nmemb;

    return buf_append(x, data, n) == 0 ? n : 0;
}

static size_t on_stream_body(char *data, size_t size, size_t nmemb, void *userp)
{
    xfer *x = userp;
    size_t n = size * nmemb;
    long code = 0;

    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    if (code >= 200 && code <= 299) {
        if (x->cb(data, n, x->arg) != 0) {
            x->cb_stopped = 1;
            return 0;
        }
        return n;
    }
    return buf_append(x, data, n) == 0 ? n : 0;
}

static size_t on_header(char *data, size_t size, size_t nmemb, void *userp)
{
    xfer *x = userp;
    size_t n = size * nmemb;
    static const char name[] = "retry-after:";
    size_t nl = sizeof(name) - 1;

    if (n >= 5 && memcmp(data, "HTTP/", 5) == 0) {
        x->retry_after = -1;   /* a new response (after 100 Continue) */
    } else if (n > nl && strncasecmp(data, name, nl) == 0) {
        char num[16];
        size_t i = nl, k = 0;
        char *end = NULL;
        long v;

        while (i < n && (data[i] == ' ' || data[i] == '\t'))
            i++;
        while (i < n && k < sizeof(num) - 1 && data[i] >= '0' && data[i] <= '9')
            num[k++] = data[i++];
        num[k] = '\0';
        while (i < n && (data[i] == ' ' || data[i] == '\t' || data[i] == '\r' || data[i] == '\n'))
            i++;
        if (k > 0 && k <= 9 && i == n) {   /* delta-seconds; HTTP-dates are ignored */
            errno = 0;
            v = strtol(num, &end, 10);
            if (errno == 0 && *end == '\0')
                x->retry_after = v;
        }
    }
    return n;
}

static int on_progress(void *userp, curl_off_t dltotal, curl_off_t dlnow, curl_off_t ultotal,
                       curl_off_t ulnow)
{
    xfer *x = userp;

    (void)dltotal;
    (void)dlnow;
    (void)ultotal;
    (void)ulnow;
    return atomic_load(&x->c->shutdown) ? 1 : 0;
}

/* Methods, paths and content types go into the request line and headers:
 * printable ASCII only, no spaces, no fragments. */
static int path_ok(const char *path)
{
    size_t n;

    if (path == NULL || path[0] != '/')
        return 0;
    n = strlen(path);
    if (n > KS_KUBE_MAX_PATH)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)path[i] <= 0x20 || (unsigned char)path[i] >= 0x7f || path[i] == '#')
            return 0;
    return 1;
}

static int header_value_ok(const char *s)
{
    size_t n = strlen(s);

    if (n == 0 || n > 128)
        return 0;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)s[i] < 0x20 || (unsigned char)s[i] >= 0x7f)
            return 0;
    return 1;
}

#define SETOPT(h, opt, val)                                  \
    do {                                                     \
        if ((cc = curl_easy_setopt((h), (opt), (val))) != CURLE_OK) \
            goto out;                                        \
    } while (0)

/* Options common to requests and streams. */
static ks_status xfer_setup(ks_kube_client *c, xfer *x, const char *path, struct curl_slist *hdrs,
                            long timeout_ms, char *errbuf)
{
    ks_status st = KS_ERR_INTERNAL;
    CURLcode cc = CURLE_OK;
    CURL *h = x->h;
    char *url = NULL;
    size_t need = strlen(c->cfg.server) + strlen(path) + 1;
    struct curl_blob blob;

    url = malloc(need);
    if (url == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube: out of memory");
        goto out;
    }
    snprintf(url, need, "%s%s", c->cfg.server, path);
    SETOPT(h, CURLOPT_URL, url);   /* curl copies it */
    SETOPT(h, CURLOPT_PROTOCOLS_STR, "http,https");
    SETOPT(h, CURLOPT_FOLLOWLOCATION, 0L);
    SETOPT(h, CURLOPT_NOSIGNAL, 1L);
    SETOPT(h, CURLOPT_SHARE, c->share);
    SETOPT(h, CURLOPT_HTTPHEADER, hdrs);
    SETOPT(h, CURLOPT_USERAGENT, "kscore/1");
    SETOPT(h, CURLOPT_HTTP_VERSION, (long)CURL_HTTP_VERSION_1_1);
    SETOPT(h, CURLOPT_TIMEOUT_MS, timeout_ms);
    SETOPT(h, CURLOPT_CONNECTTIMEOUT_MS,
           timeout_ms < CONNECT_TIMEOUT_MS ? timeout_ms : CONNECT_TIMEOUT_MS);
    SETOPT(h, CURLOPT_TCP_KEEPALIVE, 1L);
    SETOPT(h, CURLOPT_TCP_KEEPIDLE, 30L);
    SETOPT(h, CURLOPT_TCP_KEEPINTVL, 10L);
    SETOPT(h, CURLOPT_HEADERFUNCTION, on_header);
    SETOPT(h, CURLOPT_HEADERDATA, x);
    SETOPT(h, CURLOPT_NOPROGRESS, 0L);
    SETOPT(h, CURLOPT_XFERINFOFUNCTION, on_progress);
    SETOPT(h, CURLOPT_XFERINFODATA, x);
    SETOPT(h, CURLOPT_ERRORBUFFER, errbuf);
    if (c->cfg.insecure) {
        SETOPT(h, CURLOPT_SSL_VERIFYPEER, 0L);
        SETOPT(h, CURLOPT_SSL_VERIFYHOST, 0L);
    }
    if (c->cfg.ca_file || c->cfg.ca_data) {
        /* trust the cluster CA only, not the system store as well */
        SETOPT(h, CURLOPT_CAPATH, (char *)NULL);
        if (c->cfg.ca_file) {
            SETOPT(h, CURLOPT_CAINFO, c->cfg.ca_file);
        } else {
            blob = (struct curl_blob){c->cfg.ca_data, c->cfg.ca_data_len, CURL_BLOB_COPY};
            SETOPT(h, CURLOPT_CAINFO_BLOB, &blob);
        }
    }
    if (c->cfg.cert_file) {
        SETOPT(h, CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(h, CURLOPT_SSLCERT, c->cfg.cert_file);
    } else if (c->cfg.cert_data) {
        blob = (struct curl_blob){c->cfg.cert_data, c->cfg.cert_data_len, CURL_BLOB_COPY};
        SETOPT(h, CURLOPT_SSLCERTTYPE, "PEM");
        SETOPT(h, CURLOPT_SSLCERT_BLOB, &blob);
    }
    if (c->cfg.key_file) {
        SETOPT(h, CURLOPT_SSLKEYTYPE, "PEM");
        SETOPT(h, CURLOPT_SSLKEY, c->cfg.key_file);
    } else if (c->cfg.key_data) {
        blob = (struct curl_blob){c->cfg.key_data, c->cfg.key_data_len, CURL_BLOB_COPY};
        SETOPT(h, CURLOPT_SSLKEYTYPE, "PEM");
        SETOPT(h, CURLOPT_SSLKEY_BLOB, &blob);
    }
    st = KS_OK;
out:
    if (cc != CURLE_OK)
        st = KS_FAIL(KS_ERR_INTERNAL, "kube: curl option: %s", curl_easy_strerror(cc));
    free(url);
    return st;
}

static ks_status curl_status(CURLcode cc)
{
    switch (cc) {
    case CURLE_OPERATION_TIMEDOUT:
        return KS_ERR_TIMEOUT;
    case CURLE_OUT_OF_MEMORY:
        return KS_ERR_NOMEM;
    case CURLE_SSL_CERTPROBLEM:
    case CURLE_SSL_CACERT_BADFILE:
    case CURLE_READ_ERROR:
    case CURLE_FILE_COULDNT_READ_FILE:
        return KS_ERR_IO;
    case CURLE_URL_MALFORMAT:
    case CURLE_UNSUPPORTED_PROTOCOL:
        return KS_ERR_INVALID;
    default:
        return KS_ERR_UNAVAILABLE;
    }
}

/* Fill the Status of a non-2xx answer: the body's Status when it is one,
 * otherwise the code and the reason Kubernetes uses for it. */
static void response_status(ks_kube_response *r)
{
    ks_kube_status s;

    if (r->body == NULL || ks_kube_status_parse(r->body, r->body_len, &s) != KS_OK) {
        memset(&s, 0, sizeof(s));
        ks_status_clear();
    }
    if (s.code == 0)
        s.code = r->http_code;
    if (s.reason[0] == '\0')
        copy_utf8_trunc(s.reason, sizeof(s.reason), ks_kube_reason_for_code(r->http_code));
    r->status = s;
}

static long elapsed_ms(const struct timespec *t0)
{
    struct timespec t1;

    clock_gettime(CLOCK_MONOTONIC, &t1);
    return (long)(t1.tv_sec - t0->tv_sec) * 1000 + (t1.tv_nsec - t0->tv_nsec) / 1000000;
}

/* Perform x (set up), classify the outcome and fill *resp. */
static ks_status xfer_run(ks_kube_client *c, xfer *x, const char *method, const char *path,
                          const char *errbuf, ks_kube_response *resp)
{
    ks_status st;
    CURLcode cc;
    long code = 0;
    struct timespec t0;

    clock_gettime(CLOCK_MONOTONIC, &t0);
    cc = curl_easy_perform(x->h);
    curl_easy_getinfo(x->h, CURLINFO_RESPONSE_CODE, &code);
    ks_debug("kube %s %s -> %ld (%s, %ld ms)", method, path, code, curl_easy_strerror(cc),
             elapsed_ms(&t0));
    if (resp != NULL) {
        resp->http_code = code;
        resp->retry_after_s = code ? x->retry_after : -1;
    }
    if (cc == CURLE_ABORTED_BY_CALLBACK && atomic_load(&c->shutdown))
        return KS_FAIL(KS_ERR_CLOSED, "kube %s %s: client shut down", method, path);
    if (x->too_large && (code < 200 || code > 299) && code != 0 && x->cb != NULL) {
        /* a stream's error body over its cap: the code still tells what happened */
        if (resp)
            response_status(resp);
        return KS_FAIL(ks_kube_status_map(code), "kube %s %s: HTTP %ld (body over %zu bytes)",
                       method, path, code, x->max);
    }
    if (x->too_large)
        return KS_FAIL(KS_ERR_TOO_LARGE, "kube %s %s: response body over %zu bytes", method, path,
                       x->max);
    if (cc == CURLE_WRITE_ERROR && x->cb_stopped)
        return KS_OK;
    if (cc != CURLE_OK) {
        st = curl_status(cc);
        return KS_FAIL(st, "kube %s %s: %s", method, path,
                       errbuf[0] ? errbuf : curl_easy_strerror(cc));
    }
    if (resp != NULL && x->buf != NULL) {
        resp->body = x->buf;
        resp->body_len = x->len;
        x->buf = NULL;
    }
    st = ks_kube_status_map(code);
    if (st == KS_OK)
        return KS_OK;
    if (resp != NULL) {
        response_status(resp);
        return KS_FAIL(st, "kube %s %s: HTTP %ld %s: %s", method, path, code, resp->status.reason,
                       resp->status.message);
    }
    return KS_FAIL(st, "kube %s %s: HTTP %ld", method, path, code);
}

static int method_ok(const char *m)
{
    return m && (!strcmp(m, "GET") || !strcmp(m, "POST") || !strcmp(m, "PUT") ||
                 !strcmp(m, "PATCH") || !strcmp(m, "DELETE"));
}

ks_status ks_kube_request(ks_kube_client *c, const char *method, const char *path,
                          const char *body_json, const char *content_type, long timeout_ms,
                          ks_kube_response *out)
{
    ks_status st = KS_ERR_INVALID;
    CURLcode cc = CURLE_OK;
    xfer x = {.c = c, .max = KS_KUBE_MAX_BODY, .retry_after = -1};
    struct curl_slist *hdrs = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    char ct[160];
    ks_kube_response r = {.retry_after_s = -1};
    size_t body_len = body_json ? strlen(body_json) : 0;

    if (out != NULL)
        *out = r;   /* overwritten, not freed: the caller may pass an uninitialized struct */
    if (c == NULL || out == NULL || !method_ok(method) || !path_ok(path)) {
        st = KS_FAIL(KS_ERR_INVALID, "kube %s %s: bad method or path", method ? method : "(null)",
                     path_ok(path) ? path : "(bad path)");
        goto out;
    }
    if (atomic_load(&c->shutdown)) {
        st = KS_FAIL(KS_ERR_CLOSED, "kube %s %s: client shut down", method, path);
        goto out;
    }
    if (body_json == NULL && (!strcmp(method, "POST") || !strcmp(method, "PUT") ||
                              !strcmp(method, "PATCH"))) {
        st = KS_FAIL(KS_ERR_INVALID, "kube %s %s: a body is required", method, path);
        goto out;
    }
    if (body_json != NULL && !strcmp(method, "GET")) {
        st = KS_FAIL(KS_ERR_INVALID, "kube GET %s: GET has no body", path);
        goto out;
    }
    if (body_len > KS_KUBE_MAX_BODY) {
        st = KS_FAIL(KS_ERR_TOO_LARGE, "kube %s %s: request body over %u bytes", method, path,
                     KS_KUBE_MAX_BODY);
        goto out;
    }
    if (content_type == NULL)
        content_type = strcmp(method, "PATCH") == 0 ? "application/merge-patch+json"
                                                    : "application/json";
    if (!header_value_ok(content_type)) {
        st = KS_FAIL(KS_ERR_INVALID, "kube %s %s: bad content type", method, path);
        goto out;
    }
    snprintf(ct, sizeof(ct), "Content-Type: %s", content_type);
    /* "Expect:" turns off 100-continue round trips for large bodies */
    if ((st = headers_add(&hdrs, "Accept: application/json")) != KS_OK ||
        (st = headers_add(&hdrs, "Expect:")) != KS_OK ||
        (body_json != NULL && (st = headers_add(&hdrs, ct)) != KS_OK))
        goto out;
    if ((st = auth_header(c, &hdrs)) != KS_OK)
        goto out;
    if ((x.h = handle_get(c)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube: curl_easy_init failed");
        goto out;
    }
    if (timeout_ms <= 0)
        timeout_ms = c->cfg.timeout_ms;
    if ((st = xfer_setup(c, &x, path, hdrs, timeout_ms, errbuf)) != KS_OK)
        goto out;
    st = KS_ERR_INTERNAL;
    SETOPT(x.h, CURLOPT_WRITEFUNCTION, on_body);
    SETOPT(x.h, CURLOPT_WRITEDATA, &x);
    SETOPT(x.h, CURLOPT_ACCEPT_ENCODING, "");   /* the cap applies after decoding */
    if (strcmp(method, "GET") == 0) {
        SETOPT(x.h, CURLOPT_HTTPGET, 1L);
    } else {
        if (strcmp(method, "POST") != 0)
            SETOPT(x.h, CURLOPT_CUSTOMREQUEST, method);
        if (body_json != NULL) {
            SETOPT(x.h, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)body_len);
            SETOPT(x.h, CURLOPT_POSTFIELDS, body_json);
        }
    }
    st = xfer_run(c, &x, method, path, errbuf, &r);
    *out = r;
    memset(&r, 0, sizeof(r));
out:
    if (cc != CURLE_OK)
        st = KS_FAIL(KS_ERR_INTERNAL, "kube %s %s: curl option: %s", method, path,
                     curl_easy_strerror(cc));
    ks_kube_response_clear(&r);
    handle_put(c, x.h);
    headers_free(hdrs);
    free(x.buf);
    return st;
}

/* Parse a 2xx body into *out (out may be NULL). */
static ks_status wrap(ks_kube_client *c, const char *method, const char *path, const json_t *obj,
                      const char *content_type, json_t **out)
{
    ks_status st;
    char *body = NULL;
    json_t *res = NULL;
    ks_kube_response r = {.retry_after_s = -1};

    if (obj != NULL && (body = json_dumps(obj, JSON_COMPACT)) == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kube %s %s: cannot serialize the object", method, path);
        goto out;
    }
    st = ks_kube_request(c, method, path, body, content_type, 0, &r);
    if (st != KS_OK || out == NULL)
        goto out;
    res = json_loadb(r.body ? r.body : "", r.body_len, 0, NULL);
    if (res == NULL) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "kube %s %s: answer is not JSON", method, path);
        goto out;
    }
    *out = res;
    res = NULL;
out:
    json_decref(res);
    ks_kube_response_clear(&r);
    free(body);
    return st;
}

ks_status ks_kube_get(ks_kube_client *c, const char *path, json_t **out)
{
    if (out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube GET: out is NULL");
    return wrap(c, "GET", path, NULL, NULL, out);
}

ks_status ks_kube_create(ks_kube_client *c, const char *path, const json_t *obj, json_t **out)
{
    if (obj == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube POST: no object");
    return wrap(c, "POST", path, obj, NULL, out);
}

ks_status ks_kube_update(ks_kube_client *c, const char *path, const json_t *obj, json_t **out)
{
    if (obj == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube PUT: no object");
    return wrap(c, "PUT", path, obj, NULL, out);
}

ks_status ks_kube_patch(ks_kube_client *c, const char *path, const json_t *patch,
                        const char *content_type, json_t **out)
{
    if (patch == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube PATCH: no patch");
    return wrap(c, "PATCH", path, patch, content_type, out);
}

ks_status ks_kube_delete(ks_kube_client *c, const char *path, json_t **out)
{
    return wrap(c, "DELETE", path, NULL, NULL, out);
}

ks_status ks_kube_stream(ks_kube_client *c, const char *path, long timeout_ms,
                         ks_kube_chunk_cb cb, void *arg, ks_kube_response *resp)
{
    ks_status st = KS_ERR_INVALID;
    CURLcode cc = CURLE_OK;
    xfer x = {.c = c, .max = KS_KUBE_MAX_ERROR_BODY, .retry_after = -1, .cb = cb, .arg = arg};
    struct curl_slist *hdrs = NULL;
    char errbuf[CURL_ERROR_SIZE] = "";
    ks_kube_response r = {.retry_after_s = -1};

    if (resp != NULL)
        *resp = r;
    if (c == NULL || cb == NULL || timeout_ms <= 0 || !path_ok(path)) {
        st = KS_FAIL(KS_ERR_INVALID, "kube stream %s: bad arguments",
                     path_ok(path) ? path : "(bad path)");
        goto out;
    }
    if (atomic_load(&c->shutdown)) {
        st = KS_FAIL(KS_ERR_CLOSED, "kube stream %s: client shut down", path);
        goto out;
    }
    if ((st = headers_add(&hdrs, "Accept: application/json")) != KS_OK)
        goto out;
    if ((st = auth_header(c, &hdrs)) != KS_OK)
        goto out;
    if ((x.h = handle_get(c)) == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "kube: curl_easy_init failed");
        goto out;
    }
    if ((st = xfer_setup(c, &x, path, hdrs, timeout_ms, errbuf)) != KS_OK)
        goto out;
    st = KS_ERR_INTERNAL;
    SETOPT(x.h, CURLOPT_HTTPGET, 1L);
    SETOPT(x.h, CURLOPT_WRITEFUNCTION, on_stream_body);
    SETOPT(x.h, CURLOPT_WRITEDATA, &x);
    st = xfer_run(c, &x, "GET", path, errbuf, &r);
    if (resp != NULL) {
        *resp = r;
        memset(&r, 0, sizeof(r));
    }
out:
    if (cc != CURLE_OK)
        st = KS_FAIL(KS_ERR_INTERNAL, "kube stream %s: curl option: %s", path,
                     curl_easy_strerror(cc));
    ks_kube_response_clear(&r);
    if (c != NULL)
        handle_put(c, x.h);
    headers_free(hdrs);
    free(x.buf);
    return st;
}

static int unreserved(unsigned char ch)
{
    return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9') ||
           ch == '-' || ch == '.' || ch == '_' || ch == '~';
}

ks_status ks_kube_query_escape(const char *s, char *out, size_t cap)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t need = 1, o = 0;

    if (s == NULL || out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube query escape: NULL argument");
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        need += unreserved(*p) ? 1 : 3;
    if (need > cap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "kube query escape: needs %zu bytes", need);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (unreserved(*p)) {
            out[o++] = (char)*p;
        } else {
            out[o++] = '%';
            out[o++] = hex[*p >> 4];
            out[o++] = hex[*p & 15];
        }
    }
    out[o] = '\0';
    return KS_OK;
}

/* ======================================================================
 * watch stream splitting
 * ==================================================================== */

struct ks_kube_splitter {
    char *buf;
    size_t len, cap, max;
    int in_obj, in_str, esc;
    long depth;
    ks_status err;
};

ks_status ks_kube_splitter_create(size_t max_event, ks_kube_splitter **out)
{
    ks_kube_splitter *sp;

    if (out == NULL)
        return KS_FAIL(KS_ERR_INVALID, "kube splitter: out is NULL");
    sp = calloc(1, sizeof(*sp));
    if (sp == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "kube splitter: out of memory");
    sp->max = max_event ? max_event : KS_KUBE_MAX_BODY;
    *out = sp;
    return KS_OK;
}

void ks_kube_splitter_destroy(ks_kube_splitter *sp)
{
    if (sp == NULL)
        return;
    free(sp->buf);
    free(sp);
}

void ks_kube_splitter_reset(ks_kube_splitter *sp)
{
    sp->len = 0;
    sp->in_obj = sp->in_str = sp->esc = 0;
    sp->depth = 0;
    sp->err = KS_OK;
}

size_t ks_kube_splitter_pending(const ks_kube_splitter *sp)
{
    return sp->len;
}

static ks_status sp_append(ks_kube_splitter *sp, const char *data, size_t n)
{
    if (n > sp->max - sp->len)
        return sp->err = KS_FAIL(KS_ERR_TOO_LARGE, "kube watch: event over %zu bytes", sp->max);
    if (sp->len + n + 1 > sp->cap) {
        size_t ncap = sp->cap ? sp->cap : 4096;
        char *nb;

        while (ncap < sp->len + n + 1)
            ncap *= 2;
        if (ncap > sp->max + 1)
            ncap = sp->max + 1;
        nb = realloc(sp->buf, ncap);
        if (nb == NULL)
            return sp->err = KS_FAIL(KS_ERR_NOMEM, "kube watch: out of memory");
        sp->buf = nb;
        sp->cap = ncap;
    }
    memcpy(sp->buf + sp->len, data, n);
    sp->len += n;
    sp->buf[sp->len] = '\0';
    return KS_OK;
}

ks_status ks_kube_splitter_feed(ks_kube_splitter *sp, const char *data, size_t len,
                                ks_kube_event_cb cb, void *arg)
{
    size_t seg = 0;   /* start of the current object's bytes within data */

    if (sp->err)
        return sp->err;
    for (size_t i = 0; i < len; i++) {
        char ch = data[i];

        if (!sp->in_obj) {
            if (ch == ' ' || ch == '\n' || ch == '\r' || ch == '\t')
                continue;
            if (ch != '{')
                return sp->err = KS_FAIL(KS_ERR_PROTOCOL,
                                         "kube watch: unexpected byte 0x%02x between events",
                                         (unsigned char)ch);
            sp->in_obj = 1;
            sp->depth = 0;
            seg = i;
        }
        if (sp->in_str) {
            if (sp->esc)
                sp->esc = 0;
            else if (ch == '\\')
                sp->esc = 1;
            else if (ch == '"')
                sp->in_str = 0;
            continue;
        }
        if (ch == '"') {
            sp->in_str = 1;
        } else if (ch == '{' || ch == '[') {
            sp->depth++;
        } else if ((ch == '}' || ch == ']') && --sp->depth == 0) {
            if (sp_append(sp, data + seg, i + 1 - seg) != KS_OK)
                return sp->err;
            sp->in_obj = 0;
            if (cb(sp->buf, sp->len, arg) != 0) {
                sp->len = 0;
                return sp->err = KS_ERR_CLOSED;
            }
            sp->len = 0;
        }
    }
    if (sp->in_obj && sp_append(sp, data + seg, len - seg) != KS_OK)
        return sp->err;
    return KS_OK;
}

ks_status ks_kube_splitter_finish(const ks_kube_splitter *sp)
{
    if (sp->err)
        return sp->err;
    if (sp->in_obj)
        return KS_FAIL(KS_ERR_PROTOCOL, "kube watch: stream ended inside an event (%zu bytes)",
                       sp->len);
    return KS_OK;
}

static const char *const event_names[] = {
    [KS_KUBE_EVENT_ADDED] = "ADDED",       [KS_KUBE_EVENT_MODIFIED] = "MODIFIED",
    [KS_KUBE_EVENT_DELETED] = "DELETED",   [KS_KUBE_EVENT_BOOKMARK] = "BOOKMARK",
    [KS_KUBE_EVENT_ERROR] = "ERROR",
};

const char *ks_kube_event_name(ks_kube_event_type t)
{
    if (t < KS_KUBE_EVENT_ADDED || t > KS_KUBE_EVENT_ERROR)
        return "UNKNOWN";
    return event_names[t];
}

ks_status ks_kube_event_parse(const char *event, size_t len, ks_kube_event_type *type,
                              json_t **object)
{
    ks_status st = KS_ERR_PROTOCOL;
    json_t *root = NULL, *obj;
    const char *t;
    int found = 0;

    if (event == NULL || type == NULL || object == NULL) {
        st = KS_FAIL(KS_ERR_INVALID, "kube watch event: NULL argument");
        goto out;
    }
    root = json_loadb(event, len, 0, NULL);
    if (!json_is_object(root)) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "kube watch event: not a JSON object");
        goto out;
    }
    t = json_string_value(json_object_get(root, "type"));
    obj = json_object_get(root, "object");
    if (t == NULL || !json_is_object(obj)) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "kube watch event: type or object missing");
        goto out;
    }
    for (int i = KS_KUBE_EVENT_ADDED; i <= KS_KUBE_EVENT_ERROR; i++) {
        if (strcmp(t, event_names[i]) == 0) {
            *type = (ks_kube_event_type)i;
            found = 1;
            break;
        }
    }
    if (!found) {
        st = KS_FAIL(KS_ERR_PROTOCOL, "kube watch event: unknown type");
        goto out;
    }
    *object = json_incref(obj);
    st = KS_OK;
out:
    json_decref(root);
    return st;
}
