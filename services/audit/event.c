/* event.c: AuditEvent -> store columns, and -> KubeSphere's JSON. */
#include "event.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "codec.h"

static const char *nz(const char *s)
{
    return s != NULL ? s : "";
}

/* Join n strings with ','; malloc'd, "" for none. */
static char *join(char *const *v, size_t n)
{
    size_t total = 1;
    char *out, *p;

    for (size_t i = 0; i < n; i++)
        total += strlen(nz(v[i])) + 1;
    out = malloc(total);
    if (out == NULL)
        return NULL;
    p = out;
    for (size_t i = 0; i < n; i++) {
        size_t l = strlen(nz(v[i]));
        if (i > 0)
            *p++ = ',';
        memcpy(p, nz(v[i]), l);
        p += l;
    }
    *p = '\0';
    return out;
}

ks_status aud_row_decode(const void *blob, size_t len, aud_row *out)
{
    Kscore__V1__AuditEvent *ev = NULL;
    const Kscore__V1__ObjectReference *o;
    const Kscore__V1__Status *rs;
    aud_row r = {0};
    ks_status st;

    st = ks_codec_unpack(&kscore__v1__audit_event__descriptor, blob, len, AUD_EVENT_MAX_BYTES,
                         (ProtobufCMessage **)&ev);
    if (st)
        goto out;
    if (nz(ev->audit_id)[0] == '\0') {
        st = KS_FAIL(KS_ERR_INVALID, "audit event without an audit ID");
        goto out;
    }
    r.ev = ev;
    r.audit_id = ev->audit_id;
    r.level = nz(ev->level);
    r.stage = nz(ev->stage);
    r.verb = nz(ev->verb);
    r.username = ev->user ? nz(ev->user->username) : "";
    r.impersonated = ev->impersonated_user ? nz(ev->impersonated_user->username) : "";
    r.user_agent = nz(ev->user_agent);
    o = ev->object_ref;
    r.resource = o ? nz(o->resource) : "";
    r.subresource = o ? nz(o->subresource) : "";
    r.namespace_ = o ? nz(o->namespace_) : "";
    r.name = o ? nz(o->name) : "";
    r.api_group = o ? nz(o->api_group) : "";
    r.api_version = o ? nz(o->api_version) : "";
    r.workspace = nz(ev->workspace);
    r.cluster = nz(ev->cluster);
    rs = ev->response_status;
    r.status = rs ? nz(rs->status) : "";
    r.reason = rs ? nz(rs->reason) : "";
    r.code = rs ? rs->code : 0;
    r.request_uri = nz(ev->request_uri);
    r.stage_us = ev->stage_unix_us;
    r.ts_us = ev->request_received_unix_us > 0 ? ev->request_received_unix_us : ev->stage_unix_us;
    r.groups = ev->user ? join(ev->user->groups, ev->user->n_groups) : join(NULL, 0);
    r.source_ips = join(ev->source_ips, ev->n_source_ips);
    if (r.groups == NULL || r.source_ips == NULL) {
        st = KS_FAIL(KS_ERR_NOMEM, "audit row");
        goto out;
    }
    *out = r;
    ev = NULL;
    memset(&r, 0, sizeof(r));
    st = KS_OK;
out:
    free(r.groups);
    free(r.source_ips);
    ks_codec_free(ev ? &ev->base : NULL);
    return st;
}

void aud_row_clear(aud_row *r)
{
    if (r == NULL)
        return;
    free(r->groups);
    free(r->source_ips);
    ks_codec_free(r->ev ? &r->ev->base : NULL);
    memset(r, 0, sizeof(*r));
}

void aud_format_micro(int64_t us, char out[48])
{
    time_t sec;
    long frac;
    struct tm tm;

    if (us < 0)
        us = 0;
    sec = (time_t)(us / 1000000);
    frac = (long)(us % 1000000);
    if (gmtime_r(&sec, &tm) == NULL) {
        snprintf(out, 48, "1970-01-01T00:00:00.000000Z");
        return;
    }
    snprintf(out, 48, "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ", tm.tm_year + 1900, tm.tm_mon + 1,
             tm.tm_mday, tm.tm_hour, tm.tm_min, tm.tm_sec, frac);
}

/* A JSON string of s; bytes that are not UTF-8 (protobuf-c does not check
 * string fields) become '?', so one bad byte never hides a whole event. */
static json_t *jstr(const char *s)
{
    json_t *j;
    char *copy;
    size_t n;

    s = nz(s);
    j = json_string(s);
    if (j != NULL)
        return j;
    n = strlen(s);
    copy = malloc(n + 1);
    if (copy == NULL)
        return NULL;
    for (size_t i = 0; i <= n; i++)
        copy[i] = (s[i] & 0x80) ? '?' : s[i];
    j = json_string(copy);
    free(copy);
    return j;
}

/* o[key] = v, stealing v; 0 on success. */
static int put(json_t *o, const char *key, json_t *v)
{
    return v == NULL ? -1 : json_object_set_new(o, key, v);
}

/* authentication/v1 UserInfo (its JSON tags), or null. */
static json_t *user_json(const Kscore__V1__UserInfo *u)
{
    json_t *o, *groups = NULL, *extra = NULL;

    if (u == NULL)
        return json_null();
    o = json_object();
    if (o == NULL || put(o, "username", jstr(u->username)) != 0 ||
        (nz(u->uid)[0] && put(o, "uid", jstr(u->uid)) != 0))
        goto fail;
    if (u->n_groups > 0) {
        if (put(o, "groups", groups = json_array()) != 0)
            goto fail;
        for (size_t i = 0; i < u->n_groups; i++)
            if (json_array_append_new(groups, jstr(u->groups[i])) != 0)
                goto fail;
    }
    if (u->n_extra > 0) {
        if (put(o, "extra", extra = json_object()) != 0)
            goto fail;
        for (size_t i = 0; i < u->n_extra; i++) {
            /* Kubernetes' extra is map[string][]string */
            json_t *vals = json_array();
            if (put(extra, nz(u->extra[i]->key), vals) != 0 ||
                json_array_append_new(vals, jstr(u->extra[i]->value)) != 0)
                goto fail;
        }
    }
    return o;
fail:
    json_decref(o);
    return NULL;
}

/* A request or response body: its JSON, or the text when it is not JSON. */
static json_t *body_json(const ProtobufCBinaryData *b)
{
    json_t *v;

    if (b->len == 0 || b->data == NULL)
        return json_null();
    v = json_loadb((const char *)b->data, b->len, JSON_DECODE_ANY, NULL);
    if (v != NULL)
        return v;
    v = json_stringn((const char *)b->data, b->len);
    return v != NULL ? v : json_null();
}

static json_t *ref_json(const Kscore__V1__ObjectReference *r)
{
    json_t *o;

    if (r == NULL)
        return json_null();
    o = json_object();
    if (o == NULL || put(o, "Resource", jstr(r->resource)) || put(o, "Namespace", jstr(r->namespace_)) ||
        put(o, "Name", jstr(r->name)) || put(o, "UID", jstr(r->uid)) ||
        put(o, "APIGroup", jstr(r->api_group)) || put(o, "APIVersion", jstr(r->api_version)) ||
        put(o, "ResourceVersion", jstr(r->resource_version)) ||
        put(o, "Subresource", jstr(r->subresource))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

/* metav1.Status (its JSON tags), or null. */
static json_t *status_json(const Kscore__V1__Status *s)
{
    json_t *o;

    if (s == NULL)
        return json_null();
    o = json_object();
    if (o == NULL || put(o, "metadata", json_object()) || put(o, "status", jstr(s->status)) ||
        put(o, "message", jstr(s->message)) || put(o, "reason", jstr(s->reason)) ||
        put(o, "code", json_integer(s->code))) {
        json_decref(o);
        return NULL;
    }
    return o;
}

json_t *aud_event_json(const Kscore__V1__AuditEvent *ev)
{
    char rts[48], sts[48];
    json_t *o, *ips = NULL, *ann = NULL;

    aud_format_micro(ev->request_received_unix_us, rts);
    aud_format_micro(ev->stage_unix_us, sts);
    o = json_object();
    if (o == NULL || put(o, "Devops", json_string("")) ||
        put(o, "Workspace", jstr(ev->workspace)) || put(o, "Cluster", jstr(ev->cluster)) ||
        put(o, "Message", json_string("")) || put(o, "Level", jstr(ev->level)) ||
        put(o, "AuditID", jstr(ev->audit_id)) || put(o, "Stage", jstr(ev->stage)) ||
        put(o, "RequestURI", jstr(ev->request_uri)) || put(o, "Verb", jstr(ev->verb)) ||
        put(o, "User", user_json(ev->user)) ||
        put(o, "ImpersonatedUser", user_json(ev->impersonated_user)) ||
        put(o, "SourceIPs", ips = json_array()) || put(o, "UserAgent", jstr(ev->user_agent)) ||
        put(o, "ObjectRef", ref_json(ev->object_ref)) ||
        put(o, "ResponseStatus", status_json(ev->response_status)) ||
        put(o, "RequestObject", body_json(&ev->request_object)) ||
        put(o, "ResponseObject", body_json(&ev->response_object)) ||
        put(o, "RequestReceivedTimestamp", json_string(rts)) ||
        put(o, "StageTimestamp", json_string(sts)) ||
        put(o, "Annotations", ann = ev->n_annotations > 0 ? json_object() : json_null()))
        goto fail;
    for (size_t i = 0; i < ev->n_source_ips; i++)
        if (json_array_append_new(ips, jstr(ev->source_ips[i])) != 0)
            goto fail;
    for (size_t i = 0; i < ev->n_annotations; i++)
        if (put(ann, nz(ev->annotations[i]->key), jstr(ev->annotations[i]->value)) != 0)
            goto fail;
    return o;
fail:
    json_decref(o);
    return NULL;
}

ks_status aud_event_json_from_blob(const void *blob, size_t len, json_t **out)
{
    Kscore__V1__AuditEvent *ev = NULL;
    json_t *j;
    ks_status st;

    st = ks_codec_unpack(&kscore__v1__audit_event__descriptor, blob, len, AUD_EVENT_MAX_BYTES,
                         (ProtobufCMessage **)&ev);
    if (st)
        return st;
    j = aud_event_json(ev);
    ks_codec_free(&ev->base);
    if (j == NULL)
        return KS_FAIL(KS_ERR_NOMEM, "event JSON");
    *out = j;
    return KS_OK;
}
