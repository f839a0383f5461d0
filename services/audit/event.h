/* event.h: one AuditEvent as the audit store sees it.
 *
 * aud_row_decode unpacks the protobuf bytes of a stream message (the blob the
 * store keeps and the hash chain covers) and derives the column values of
 * the store; aud_event_json renders an event the way KubeSphere's auditing
 * API returns it (pkg/apiserver/auditing/v1alpha1.Event: Go field names,
 * "User" as authentication/v1 UserInfo, "ResponseStatus" as metav1.Status,
 * MicroTime timestamps). */
#ifndef AUD_EVENT_H
#define AUD_EVENT_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "kscore/v1/audit.pb-c.h"
#include "status.h"

/* Cap on one stored event (the blob): far above what a gateway produces,
 * which bounds request and response bodies itself. */
#define AUD_EVENT_MAX_BYTES (4u * 1024u * 1024u)

/* The column values of one event. Every string is non-NULL (empty when the
 * event lacks it) and points into ev, except groups and source_ips (owned,
 * comma-joined). */
typedef struct {
    Kscore__V1__AuditEvent *ev;   /* owned */
    const char *audit_id, *level, *stage, *verb, *username, *impersonated, *user_agent;
    const char *resource, *subresource, *namespace_, *name, *api_group, *api_version;
    const char *workspace, *cluster, *status, *reason, *request_uri;
    char *groups;
    char *source_ips;
    int64_t ts_us;        /* request_received_unix_us (stage time if absent) */
    int64_t stage_us;
    int code;             /* response code, 0 if none */
} aud_row;

/* Decode blob (len bytes) into *out. KS_ERR_TOO_LARGE above
 * AUD_EVENT_MAX_BYTES, KS_ERR_PROTOCOL when it is not an AuditEvent,
 * KS_ERR_INVALID when it has no audit_id, KS_ERR_NOMEM. *out is set only on
 * success; release it with aud_row_clear. */
ks_status aud_row_decode(const void *blob, size_t len, aud_row *out)
    __attribute__((warn_unused_result));

/* Free what a decoded row owns and zero it. Safe on a zeroed row. */
void aud_row_clear(aud_row *r);

/* The event as KubeSphere's API shows it: a new JSON object the caller owns,
 * or NULL on OOM. */
json_t *aud_event_json(const Kscore__V1__AuditEvent *ev);

/* Decode blob and render it: *out is a new JSON object. The decoding errors
 * of aud_row_decode. */
ks_status aud_event_json_from_blob(const void *blob, size_t len, json_t **out)
    __attribute__((warn_unused_result));

/* Format a Unix time in microseconds as RFC 3339 with six decimals in UTC
 * ("2024-05-01T12:00:00.123456Z"); out needs 48 bytes. */
void aud_format_micro(int64_t us, char out[48]);

#endif
