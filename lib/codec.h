/* codec.h: protobuf-c pack/unpack with the checks every caller needs.
 *
 * pack = size, allocate, pack, check the sizes match.
 * unpack = check the size cap, unpack; the caller copies what it needs and
 * frees at once with ks_codec_free. */
#ifndef KS_CODEC_H
#define KS_CODEC_H

#include <protobuf-c/protobuf-c.h>
#include <stddef.h>
#include <stdint.h>

#include "status.h"

/* Default cap on a message read from the bus (8 MiB). */
#define KS_CODEC_MAX_MESSAGE (8u * 1024u * 1024u)

/* Serialize msg into a malloc'd buffer (*out, caller frees; never NULL on
 * success, even for an empty message). */
ks_status ks_codec_pack(const ProtobufCMessage *msg, uint8_t **out, size_t *len)
    __attribute__((warn_unused_result));

/* Parse len bytes as desc. KS_ERR_TOO_LARGE above cap, KS_ERR_PROTOCOL when
 * the bytes are not a valid message. *out is freed with ks_codec_free. */
ks_status ks_codec_unpack(const ProtobufCMessageDescriptor *desc, const void *data, size_t len,
                          size_t cap, ProtobufCMessage **out) __attribute__((warn_unused_result));

void ks_codec_free(ProtobufCMessage *msg);  /* NULL is a no-op */

/* Convenience for generated types: KS_UNPACK(kscore__v1__status, data, len, &p) */
#define KS_UNPACK(prefix, data, len, outp) \
    ks_codec_unpack(&prefix##__descriptor, (data), (len), KS_CODEC_MAX_MESSAGE, \
                    (ProtobufCMessage **)(outp))

#endif
