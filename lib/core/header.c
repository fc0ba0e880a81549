/* The common binary header shared by every moe format (see core.h). */
#include "core/core.h"

#include <string.h>

int moe_header_encode(struct moe_header *h, uint8_t *buf, size_t cap, struct moe_error *err)
{
	uint32_t size = MOE_HEADER_COMMON + h->fields_len + 8;
	if (h->fields_len > sizeof h->fields || size % 8)
		return moe_error_set(err, MOE_EINVAL,
				     "header fields must be a multiple of 8 bytes and at most %zu",
				     sizeof h->fields);
	if (cap < size)
		return moe_error_set(err, MOE_EINVAL, "header buffer too small");
	h->header_size = size;
	memcpy(buf, h->magic, 8);
	moe_put_u32(buf + 8, h->version);
	moe_put_u32(buf + 12, size);
	moe_put_u64(buf + 16, h->payload_size);
	moe_put_u64(buf + 24, h->payload_hash);
	moe_put_u64(buf + 32, h->flags);
	memcpy(buf + MOE_HEADER_COMMON, h->fields, h->fields_len);
	moe_put_u64(buf + size - 8, moe_hash64(buf, size - 8));
	return (int)size;
}

int moe_header_decode(struct moe_header *h, const uint8_t *buf, size_t len, const char magic[8],
		      uint32_t max_version, const char *where, struct moe_error *err)
{
	uint32_t size;

	h->header_size = 0;
	if (len < 16)
		return moe_error_set(err, MOE_ETRUNC, "%s: truncated header (%zu bytes)", where, len);
	if (memcmp(buf, magic, 8) != 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: bad magic at offset 0 (not a %.7s file)",
				     where, magic);
	memcpy(h->magic, buf, 8);
	h->version = moe_get_u32(buf + 8);
	if (h->version < 1 || h->version > max_version)
		return moe_error_set(err, MOE_EVERSION,
				     "%s: unsupported version %u at offset 8 (this build reads up to %u)",
				     where, h->version, max_version);
	size = moe_get_u32(buf + 12);
	if (size < MOE_HEADER_COMMON + 8 || size > MOE_HEADER_MAX || size % 8)
		return moe_error_set(err, MOE_EFORMAT, "%s: bad header size %u at offset 12", where,
				     size);
	h->header_size = size;
	if (len < size)
		return MOE_ETRUNC;
	if (moe_get_u64(buf + size - 8) != moe_hash64(buf, size - 8))
		return moe_error_set(err, MOE_ECHECKSUM, "%s: header checksum mismatch at offset %u",
				     where, size - 8);
	h->payload_size = moe_get_u64(buf + 16);
	h->payload_hash = moe_get_u64(buf + 24);
	h->flags = moe_get_u64(buf + 32);
	h->fields_len = size - MOE_HEADER_COMMON - 8;
	memcpy(h->fields, buf + MOE_HEADER_COMMON, h->fields_len);
	return (int)size;
}

int moe_header_read(struct moe_header *h, FILE *fp, const char magic[8], uint32_t max_version,
		    const char *where, struct moe_error *err)
{
	uint8_t buf[MOE_HEADER_MAX];
	size_t have = fread(buf, 1, 16, fp);
	int rc;

	if (have < 16) {
		if (ferror(fp))
			return moe_error_errno(err, "cannot read '%s'", where);
		return moe_error_set(err, MOE_ETRUNC, "%s: truncated header (%zu bytes)", where,
				     have);
	}
	rc = moe_header_decode(h, buf, have, magic, max_version, where, err);
	if (rc != MOE_ETRUNC)
		return rc;
	if (h->header_size == 0)
		return rc;
	have += fread(buf + have, 1, h->header_size - have, fp);
	if (have < h->header_size) {
		if (ferror(fp))
			return moe_error_errno(err, "cannot read '%s'", where);
		return moe_error_set(err, MOE_ETRUNC, "%s: truncated header (%zu of %u bytes)", where,
				     have, h->header_size);
	}
	return moe_header_decode(h, buf, have, magic, max_version, where, err);
}
