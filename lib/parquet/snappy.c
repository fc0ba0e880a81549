/*
 * Snappy decompression for Parquet pages.
 *
 * Written here (from the format description in Google's format_description.txt)
 * because libsnappy 1.1.9, the Debian version, calls memcpy through the PLT
 * for every literal and copy, which halves its speed on text.  This decoder
 * copies in 16-byte steps and may write up to PQ_SNAPPY_SLACK bytes past the
 * end of the output, which the caller must have allocated.  Every length
 * and offset is checked against the input and the output.
 */
#include <string.h>

#include "parquet/internal.h"

static inline void copy16(uint8_t *d, const uint8_t *s)
{
	memcpy(d, s, 16);
}

static inline uint32_t le(const uint8_t *p, int n)
{
	uint32_t v = 0;
	for (int i = 0; i < n; i++)
		v |= (uint32_t)p[i] << (8 * i);
	return v;
}

int pq_snappy_length(const uint8_t *src, size_t slen, size_t *dlen)
{
	uint64_t v = 0;
	for (int i = 0; i < 5; i++) {
		if ((size_t)i >= slen)
			return -1;
		v |= (uint64_t)(src[i] & 0x7f) << (7 * i);
		if (!(src[i] & 0x80)) {
			if (v > UINT32_MAX)
				return -1;
			*dlen = (size_t)v;
			return i + 1;
		}
	}
	return -1;
}

const char *pq_snappy_decompress(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
	size_t ulen;
	int hl = pq_snappy_length(src, slen, &ulen);
	if (hl < 0)
		return "corrupt snappy length";
	if (ulen != dlen)
		return "snappy length differs from the page size";
	const uint8_t *ip = src + hl, *ip_end = src + slen;
	uint8_t *op = dst, *op_end = dst + dlen;

	while (ip < ip_end) {
		uint8_t tag = *ip++;
		size_t len, off;
		if ((tag & 3) == 0) {
			len = (size_t)(tag >> 2) + 1;
			if (len <= 16 && ip_end - ip >= 16 && op_end - op >= 16) {
				/* the common short literal */
				copy16(op, ip);
				ip += len;
				op += len;
				continue;
			}
			if (len <= 60 && ip_end - ip >= 64 && (size_t)(op_end - op) >= len) {
				/* a literal of 17..60 bytes: four steps into the slack */
				copy16(op, ip);
				copy16(op + 16, ip + 16);
				copy16(op + 32, ip + 32);
				copy16(op + 48, ip + 48);
				ip += len;
				op += len;
				continue;
			}
			if (len > 60) {
				int nb = (int)len - 60;
				if (ip_end - ip < nb)
					return "truncated snappy literal length";
				len = (size_t)le(ip, nb) + 1;
				ip += nb;
			}
			if (len > (size_t)(ip_end - ip))
				return "snappy literal runs past the input";
			if (len > (size_t)(op_end - op))
				return "snappy literal runs past the page size";
			memcpy(op, ip, len);
			ip += len;
			op += len;
			continue;
		}
		if ((tag & 3) == 1) {
			if (ip >= ip_end)
				return "truncated snappy copy";
			len = 4 + ((tag >> 2) & 7);
			off = (size_t)(tag >> 5) << 8 | *ip++;
		} else if ((tag & 3) == 2) {
			if (ip_end - ip < 2)
				return "truncated snappy copy";
			len = (size_t)(tag >> 2) + 1;
			off = (size_t)ip[0] | (size_t)ip[1] << 8;
			ip += 2;
		} else {
			if (ip_end - ip < 4)
				return "truncated snappy copy";
			len = (size_t)(tag >> 2) + 1;
			off = le(ip, 4);
			ip += 4;
		}
		if (off - 1 >= (size_t)(op - dst))
			return "snappy copy offset out of range";
		if (len > (size_t)(op_end - op))
			return "snappy copy runs past the page size";
		const uint8_t *from = op - off;
		if (off >= 16) {
			/* len <= 64; each step reads only bytes already written */
			copy16(op, from);
			if (len > 16) {
				copy16(op + 16, from + 16);
				if (len > 32) {
					copy16(op + 32, from + 32);
					copy16(op + 48, from + 48);
				}
			}
		} else if (off >= 8) {
			for (size_t i = 0; i < len; i += 8)
				memcpy(op + i, from + i, 8);
		} else {
			for (size_t i = 0; i < len; i++)
				op[i] = from[i];
		}
		op += len;
	}
	if (op != op_end)
		return "snappy data decompresses to fewer bytes than the page size";
	return NULL;
}
