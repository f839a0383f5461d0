/* audit_stream.h: the JetStream stream every audit event travels through
 * (DESIGN.md §7, docs/audit.md). The gateway publishes to it and creates it
 * when it is missing; the audit service creates it too and consumes it. */
#ifndef KS_AUDIT_STREAM_H
#define KS_AUDIT_STREAM_H

#define KS_AUDIT_STREAM "KS_AUDIT"
#define KS_AUDIT_STREAM_SUBJECTS "ks.audit.>"
/* A republished event (same Nats-Msg-Id, the auditID) within this window is
 * dropped by the server; later ones by the store's unique auditID. */
#define KS_AUDIT_DUPLICATE_WINDOW_MS 120000

#endif
