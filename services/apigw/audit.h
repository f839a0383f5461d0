/* audit.h: the gateway's audit producer (DESIGN.md §7, docs/audit.md).
 *
 * Every request that reaches the chain yields one AuditEvent, recorded when
 * its answer is handed to libmicrohttpd (or, for a client that went away,
 * when the chain ends). The level comes from the policy (audit_policy.h);
 * bodies and the URI are redacted (audit_redact.h); the event is published
 * to ks.audit.<workspace>.<namespace>.<resource>.<verb> with Nats-Msg-Id set
 * to its auditID, a UUIDv7 of the gateway's own (never the client's
 * X-Request-Id), also sent back as the Audit-ID response header.
 *
 * Modes (KS_AUDIT_MODE):
 *   async   (default) answers never wait for the audit; events that JetStream
 *           cannot take go to the spool (audit_publish.h);
 *   strict  an answer is held until its event is acknowledged and replaced by
 *           503 when it cannot be; while events are being spooled, requests
 *           are refused with 503 before they act (gw_stage_audit_gate);
 *   off     nothing is recorded. */
#ifndef GW_AUDIT_H
#define GW_AUDIT_H

#include <stddef.h>

#include "gw.h"
#include "status.h"

ks_status gw_audit_start(gw *g) __attribute__((warn_unused_result));
/* Publish what is queued (within a grace period) and spool the rest. */
void gw_audit_stop(gw *g);

/* 1 in strict mode. */
int gw_audit_is_strict(const gw *g);

/* Record r's event once (later calls do nothing); resp_body is the answer's
 * body (NULL for a stream). Call with r->mu not held. */
void gw_audit_record(gw_request *r, const char *resp_body, size_t resp_len);

/* Strict mode: record r's event and call done(r, acked) once JetStream
 * acknowledged it (1) or it could not be (0). done runs on another thread. */
void gw_audit_record_acked(gw_request *r, const char *resp_body, size_t resp_len,
                           void (*done)(gw_request *r, int acked));

/* Keep a redacted copy of r's request body for its event, before a stage
 * wipes the body (the token endpoint does: it held a password). */
void gw_audit_keep_body(gw_request *r);

/* The stage before dispatch: in strict mode, refuse with 503 while events
 * cannot reach JetStream. */
void gw_stage_audit_gate(gw_request *r);

#endif
