#include "addr.h"

#include <stdarg.h>
#include <stdio.h>
#include <string.h>

/* The reason goes both to the caller's buffer and to the thread's last error,
 * so a caller that only checks the status still gets a useful log line. */
static ks_status addr_fail(ks_status s, char *why, size_t whycap, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static ks_status addr_fail(ks_status s, char *why, size_t whycap, const char *fmt, ...)
{
    char msg[192];
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    if (why != NULL && whycap > 0)
        snprintf(why, whycap, "%s", msg);
    return KS_FAIL(s, "address: %s", msg);
}

static int addr_host_char_ok(unsigned char c, int bracketed)
{
    if (c <= 0x20 || c == 0x7f)
        return 0;
    if (c == '/' || c == '@' || c == '[' || c == ']')
        return 0;
    if (c == ':' && !bracketed)
        return 0;
    return 1;
}

ks_status ks_addr_parse_why(const char *text, char *host, size_t hostcap, int *port,
                            char *why, size_t whycap)
{
    ks_status s = KS_ERR_INVALID;
    const char *h, *hend, *p;
    size_t hlen;
    long value = 0;
    int bracketed = 0;

    if (why != NULL && whycap > 0)
        why[0] = '\0';
    if (text == NULL || host == NULL || port == NULL) {
        s = addr_fail(KS_ERR_INVALID, why, whycap, "missing argument");
        goto out;
    }
    if (text[0] == '[') {
        bracketed = 1;
        h = text + 1;
        hend = strchr(h, ']');
        if (hend == NULL) {
            s = addr_fail(KS_ERR_INVALID, why, whycap, "missing ']' after IPv6 host");
            goto out;
        }
        if (hend[1] != ':') {
            s = addr_fail(KS_ERR_INVALID, why, whycap, "missing port");
            goto out;
        }
        p = hend + 2;
    } else {
        h = text;
        hend = strrchr(text, ':');
        if (hend == NULL) {
            s = addr_fail(KS_ERR_INVALID, why, whycap, "missing port");
            goto out;
        }
        p = hend + 1;
    }
    hlen = (size_t)(hend - h);
    if (hlen == 0) {
        s = addr_fail(KS_ERR_INVALID, why, whycap, "missing host");
        goto out;
    }
    for (const char *c = h; c < hend; c++) {
        if (!addr_host_char_ok((unsigned char)*c, bracketed)) {
            s = addr_fail(KS_ERR_INVALID, why, whycap,
                          bracketed || *c != ':' ? "bad character in host"
                                                 : "an IPv6 host needs brackets: [host]:port");
            goto out;
        }
    }
    if (hlen > KS_ADDR_HOST_MAX) {
        s = addr_fail(KS_ERR_INVALID, why, whycap, "host longer than %d bytes", KS_ADDR_HOST_MAX);
        goto out;
    }
    if (*p == '\0') {
        s = addr_fail(KS_ERR_INVALID, why, whycap, "missing port");
        goto out;
    }
    /* Digits only: strtol would accept signs, spaces and "0x". Six digits at
     * most keeps the accumulator far from overflow. */
    for (const char *c = p; *c; c++) {
        if (*c < '0' || *c > '9') {
            s = addr_fail(KS_ERR_INVALID, why, whycap, "port is not a number: %.32s", p);
            goto out;
        }
        if (c - p >= 6) {
            s = addr_fail(KS_ERR_INVALID, why, whycap, "port out of range: %.32s", p);
            goto out;
        }
        value = value * 10 + (*c - '0');
    }
    if (value > 65535) {
        s = addr_fail(KS_ERR_INVALID, why, whycap, "port out of range: %ld", value);
        goto out;
    }
    if (hlen >= hostcap) {
        s = addr_fail(KS_ERR_TOO_LARGE, why, whycap, "host does not fit in %zu bytes", hostcap);
        goto out;
    }
    memcpy(host, h, hlen);
    host[hlen] = '\0';
    *port = (int)value;
    s = KS_OK;
out:
    return s;
}

ks_status ks_addr_parse(const char *text, char *host, size_t hostcap, int *port)
{
    return ks_addr_parse_why(text, host, hostcap, port, NULL, 0);
}

ks_status ks_addr_format(char *out, size_t outcap, const char *host, int port)
{
    int n;

    if (out == NULL || outcap == 0)
        return KS_FAIL(KS_ERR_INVALID, "address: no output buffer");
    out[0] = '\0';
    if (host == NULL || port < 0 || port > 65535)
        return KS_FAIL(KS_ERR_INVALID, "address: bad host or port");
    if (strchr(host, ':') != NULL)
        n = snprintf(out, outcap, "[%s]:%d", host, port);
    else
        n = snprintf(out, outcap, "%s:%d", host, port);
    if (n < 0 || (size_t)n >= outcap)
        return KS_FAIL(KS_ERR_TOO_LARGE, "address: %zu bytes are not enough", outcap);
    return KS_OK;
}
