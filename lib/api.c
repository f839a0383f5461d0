#include "api.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "codec.h"
#include "log.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

ks_status ks_api_unescape(const char *src, size_t n, int plus_is_space, char *out, size_t cap)
{
    size_t o = 0;

    for (size_t i = 0; i < n; i++) {
        char c = src[i];
        if (c == '%') {
            int hi = i + 2 < n ? hexval(src[i + 1]) : -1;
            int lo = hi >= 0 ? hexval(src[i + 2]) : -1;
            if (hi < 0 || lo < 0)
                return KS_FAIL(KS_ERR_INVALID, "bad percent escape");
            c = (char)(hi << 4 | lo);
            if (c == '\0')
                return KS_FAIL(KS_ERR_INVALID, "encoded NUL");
            i += 2;
        } else if (c == '+' && plus_is_space) {
            c = ' ';
        }
        if (o + 1 >= cap)
            return KS_FAIL(KS_ERR_TOO_LARGE, "decoded value");
        out[o++] = c;
    }
    if (cap == 0)
        return KS_FAIL(KS_ERR_TOO_LARGE, "decoded value");
    out[o] = '\0';
    return KS_OK;
}

int ks_api_match(const char *pattern, const char *path, char params[][KS_API_PARAM_MAX],
                 size_t *nparams)
{
    size_t np = 0;
    const char *p = pattern, *s = path;

    while (*p && *s) {
        const char *pe, *se;
        size_t plen, slen;

        if (*p != '/' || *s != '/')
            return 0;
        p++;
        s++;
        pe = strchr(p, '/');
        se = strchr(s, '/');
        plen = pe ? (size_t)(pe - p) : strlen(p);
        slen = se ? (size_t)(se - s) : strlen(s);
        if (plen >= 2 && p[0] == '{' && p[plen - 1] == '}') {
            if (slen == 0 || np == KS_API_MAX_PARAMS ||
                ks_api_unescape(s, slen, 0, params[np], KS_API_PARAM_MAX) != KS_OK)
                return 0;
            np++;
        } else if (plen != slen || memcmp(p, s, plen) != 0) {
            return 0;
        }
        p += plen;
        s += slen;
    }
    if (*p != '\0' || (*s != '\0' && strcmp(s, "/") != 0))
        return 0;
    *nparams = np;
    return 1;
}

void ks_api_status(ks_api_response *resp, int code, const char *reason, const char *fmt, ...)
{
    char msg[1024];
    json_t *o;
    va_list ap;

    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    o = json_pack("{s:s, s:s, s:{}, s:s, s:s, s:s, s:i}", "kind", "Status", "apiVersion", "v1",
                  "metadata", "status", code < 400 ? "Success" : "Failure", "message", msg,
                  "reason", reason, "code", code);
    ks_api_json(resp, code, o);
    json_decref(o);
}

void ks_api_json(ks_api_response *resp, int code, const json_t *json)
{
    free(resp->body);
    resp->body = json ? json_dumps(json, JSON_COMPACT) : NULL;
    resp->len = resp->body ? strlen(resp->body) : 0;
    resp->code = resp->body || json == NULL ? code : 500;
    resp->content_type = NULL;
}

void ks_api_from_status(ks_api_response *resp, ks_status st)
{
    const char *msg = ks_status_last();

    switch (st) {
    case KS_OK:
        ks_api_status(resp, 200, "", "ok");
        break;
    case KS_ERR_NOT_FOUND:
        ks_api_status(resp, 404, "NotFound", "%s", msg);
        break;
    case KS_ERR_CONFLICT:
        ks_api_status(resp, 409, "Conflict", "%s", msg);
        break;
    case KS_ERR_INVALID:
        ks_api_status(resp, 422, "Invalid", "%s", msg);
        break;
    case KS_ERR_TOO_LARGE:
        ks_api_status(resp, 413, "RequestEntityTooLarge", "%s", msg);
        break;
    case KS_ERR_DENIED:
        ks_api_status(resp, 403, "Forbidden", "%s", msg);
        break;
    case KS_ERR_TIMEOUT:
        ks_api_status(resp, 504, "Timeout", "%s", msg);
        break;
    case KS_ERR_UNAVAILABLE:
    case KS_ERR_NO_RESPONDERS:
    case KS_ERR_CLOSED:
        ks_api_status(resp, 503, "ServiceUnavailable", "%s", msg);
        break;
    default:
        ks_api_status(resp, 500, "InternalError", "%s", msg);
        break;
    }
}

const char *ks_api_header(const ks_api_call *call, const char *name)
{
    for (size_t i = 0; i < call->req->n_headers; i++) {
        const Kscore__V1__Header *h = call->req->headers[i];
        if (h->name && strcasecmp(h->name, name) == 0 && h->n_values > 0)
            return h->values[0];
    }
    return NULL;
}

int ks_api_query(const ks_api_call *call, const char *key, char *out, size_t cap)
{
    const char *q = call->req->raw_query ? call->req->raw_query : "";
    size_t klen = strlen(key);

    while (*q) {
        const char *amp = strchr(q, '&');
        size_t len = amp ? (size_t)(amp - q) : strlen(q);
        const char *eq = memchr(q, '=', len);
        size_t nlen = eq ? (size_t)(eq - q) : len;

        if (nlen == klen && memcmp(q, key, klen) == 0) {
            if (eq == NULL) {
                if (cap > 0)
                    out[0] = '\0';
                return 1;
            }
            return ks_api_unescape(eq + 1, len - nlen - 1, 1, out, cap) == KS_OK;
        }
        q += len;
        if (*q == '&')
            q++;
    }
    return 0;
}

static int media_type_is(const char *ct, const char *want)
{
    size_t n = strlen(want);

    while (*ct == ' ')
        ct++;
    if (strncasecmp(ct, want, n) != 0)
        return 0;
    ct += n;
    while (*ct == ' ')
        ct++;
    return *ct == '\0' || *ct == ';';
}

json_t *ks_api_body_object(ks_api_call *call, ks_api_response *resp)
{
    const char *ct = ks_api_header(call, "Content-Type");
    json_error_t err;
    json_t *o;

    /* The media type must be exactly JSON or merge-patch JSON (parameters
     * such as "; charset=utf-8" may follow); json-patch+json is not JSON. */
    if (ct != NULL && !media_type_is(ct, "application/json") &&
        !media_type_is(ct, "application/merge-patch+json")) {
        ks_api_status(resp, 415, "UnsupportedMediaType",
                      "the body must be application/json, not %.100s", ct);
        return NULL;
    }
    if (call->req->body.len == 0) {
        ks_api_status(resp, 400, "BadRequest", "the request has no body");
        return NULL;
    }
    o = json_loadb((const char *)call->req->body.data, call->req->body.len, JSON_REJECT_DUPLICATES,
                   &err);
    if (o == NULL) {
        ks_api_status(resp, 400, "BadRequest", "malformed JSON at line %d column %d: %s",
                      err.line, err.column, err.text);
        return NULL;
    }
    if (!json_is_object(o)) {
        json_decref(o);
        ks_api_status(resp, 400, "BadRequest", "the body must be a JSON object");
        return NULL;
    }
    return o;
}

/* Pack resp as an ApiResponse and answer msg. */
static ks_status send_response(ks_bus *bus, ks_bus_msg *msg, const ks_api_response *resp)
{
    Kscore__V1__ApiResponse out = KSCORE__V1__API_RESPONSE__INIT;
    Kscore__V1__Header hdrs[2], *hp[2];
    char *loc_values[1], *ra_values[1];
    size_t nh = 0;
    uint8_t *buf = NULL;
    size_t len = 0;
    ks_status st;

    out.code = resp->code;
    out.body.data = (uint8_t *)resp->body;
    out.body.len = resp->len;
    out.content_type = (char *)(resp->content_type ? resp->content_type : "application/json");
    if (resp->location[0]) {
        kscore__v1__header__init(&hdrs[nh]);
        hdrs[nh].name = "Location";
        loc_values[0] = (char *)resp->location;
        hdrs[nh].values = loc_values;
        hdrs[nh].n_values = 1;
        hp[nh] = &hdrs[nh];
        nh++;
    }
    if (resp->retry_after[0]) {
        kscore__v1__header__init(&hdrs[nh]);
        hdrs[nh].name = "Retry-After";
        ra_values[0] = (char *)resp->retry_after;
        hdrs[nh].values = ra_values;
        hdrs[nh].n_values = 1;
        hp[nh] = &hdrs[nh];
        nh++;
    }
    out.headers = hp;
    out.n_headers = nh;
    st = ks_codec_pack(&out.base, &buf, &len);
    if (st)
        return st;
    st = ks_bus_respond(bus, msg, buf, len);
    free(buf);
    return st;
}

int ks_api_serve(ks_bus *bus, ks_bus_msg *msg, const ks_api_route *routes, size_t nroutes,
                 void *arg, char *err, size_t errcap)
{
    Kscore__V1__ApiRequest *req = NULL;
    ks_api_response resp = {0};
    ks_api_call call = {0};
    int method_mismatch = 0;
    int rc = 0;
    ks_status st;

    /* The ApiRequest carries the body: cap the whole message first. */
    st = ks_codec_unpack(&kscore__v1__api_request__descriptor, ks_bus_msg_data(msg),
                         ks_bus_msg_len(msg), KS_API_MAX_BODY + 64u * 1024u,
                         (ProtobufCMessage **)&req);
    if (st == KS_ERR_TOO_LARGE) {
        ks_api_status(&resp, 413, "RequestEntityTooLarge", "the request body exceeds %u bytes",
                      KS_API_MAX_BODY);
        goto reply;
    }
    if (st) {
        ks_api_status(&resp, 400, "BadRequest", "not a valid ApiRequest");
        goto reply;
    }
    if (req->body.len > KS_API_MAX_BODY) {
        ks_api_status(&resp, 413, "RequestEntityTooLarge", "the request body exceeds %u bytes",
                      KS_API_MAX_BODY);
        goto reply;
    }
    call.req = req;
    call.method = req->method ? req->method : "";
    call.path = req->path ? req->path : "";
    call.username = (req->user && req->user->username) ? req->user->username : "";
    ks_log_set_request_id(req->request_id && req->request_id[0] ? req->request_id : NULL);
    for (size_t i = 0; i < nroutes; i++) {
        if (!ks_api_match(routes[i].pattern, call.path, call.params, &call.nparams))
            continue;
        if (strcmp(routes[i].method, "*") != 0 && strcmp(routes[i].method, call.method) != 0) {
            method_mismatch = 1;
            continue;
        }
        routes[i].handler(&call, &resp, arg);
        goto reply;
    }
    if (method_mismatch)
        ks_api_status(&resp, 405, "MethodNotAllowed", "%s is not allowed on %s", call.method,
                      call.path);
    else
        ks_api_status(&resp, 404, "NotFound", "the server could not find the requested resource");
reply:
    if (resp.code == 0)
        ks_api_status(&resp, 500, "InternalError", "the handler gave no answer");
    if (resp.code >= 500) {
        snprintf(err, errcap, "%d on %s %s", resp.code, call.method ? call.method : "",
                 call.path ? call.path : "");
        rc = 1;
    }
    if (ks_bus_msg_reply(msg) != NULL && send_response(bus, msg, &resp) != KS_OK) {
        snprintf(err, errcap, "cannot answer: %s", ks_status_last());
        rc = 1;
    }
    ks_log_set_request_id(NULL);
    free(resp.body);
    ks_codec_free(req ? &req->base : NULL);
    return rc;
}
