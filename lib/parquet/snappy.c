/*
 * A bounds-checked decoder of raw snappy blocks (the framing-free format
 * that Parquet's SNAPPY codec uses), written for short-tag text streams.
 *
 * A block is a varint holding the uncompressed length, then elements, each
 * starting with a tag byte whose low two bits give its kind:
 *   00 literal: length-1 in the upper six bits (60..63: that many minus 59
 *      little-endian length bytes follow), then the literal bytes;
 *   01 copy, length 4..11 in bits 2-4, offset bits 8-10 in bits 5-7 plus
 *      one offset byte;
 *   10 copy, length-1 in the upper six bits, two offset bytes;
 *   11 copy, length-1 in the upper six bits, four offset bytes.
 * A copy repeats `length` bytes from `offset` bytes back in the output; the
 * source may overlap the destination (offset < length repeats a pattern).
 *
 * The fast loop decodes one element per iteration with table loads and one
 * predictable branch on the offset.  The chain from one tag to the next is
 * kept short: when an element is at most 7 bytes long (every copy, literals
 * of up to 6 bytes) the next tag byte is shifted out of the 8 input bytes
 * already loaded, instead of being loaded once the advance is known.  The
 * loop copies 16 bytes unconditionally (16 or 48 more for the rare longer
 * elements), far enough from the ends of both buffers, and leaves
 * everything unusual to a careful one-element decoder: literals with length
 * bytes, offsets below 16 (overlapping copies), the first 16 and last 64
 * bytes of the output, the last 65 bytes of the input, and every error.
 * Every length and offset is checked before it is used: a corrupt stream
 * gives an error, never a read or write outside src[0..slen) and
 * dst[0..dlen).
 */
#include <string.h>

#include "parquet/internal.h"

/* What a tag byte t says, as constant expressions (the tables below are
 * built from them at compile time). */
#define T_KIND(t) ((t) & 3)
#define T_LEN(t)                                                                    \
	(T_KIND(t) == 0 ? ((t) >> 2) + 1 > 60 ? 255 : ((t) >> 2) + 1                   \
	 : T_KIND(t) == 1 ? (((t) >> 2) & 7) + 4                                        \
			  : ((t) >> 2) + 1)
#define T_ADV(t)                                                                    \
	(T_KIND(t) == 0 ? (T_LEN(t) == 255 ? 1 : 1 + T_LEN(t))                          \
	 : T_KIND(t) == 1 ? 2                                                           \
	 : T_KIND(t) == 2 ? 3                                                           \
			  : 5)
#define T_HI(t) (T_KIND(t) == 0 ? (T_LEN(t) == 255 ? 0 : 16) : T_KIND(t) == 1 ? ((t) >> 5) << 8 : 0)
#define T_MASK(t)                                                                   \
	(T_KIND(t) == 0 ? 0 : T_KIND(t) == 1 ? 0xffull : T_KIND(t) == 2 ? 0xffffull : 0xffffffffull)
#define T_ENTRY(t) ((uint64_t)T_LEN(t) | (uint64_t)T_ADV(t) << 8 | (uint64_t)T_HI(t) << 16 | T_MASK(t) << 32)
#define T_SHIFT(t) ((uint8_t)(T_ADV(t) < 8 && T_LEN(t) <= 16 ? 8 * T_ADV(t) : 255))
#define T_R4(m, t) m(t), m((t) + 1), m((t) + 2), m((t) + 3)
#define T_R16(m, t) T_R4(m, t), T_R4(m, (t) + 4), T_R4(m, (t) + 8), T_R4(m, (t) + 12)
#define T_R64(m, t) T_R16(m, t), T_R16(m, (t) + 16), T_R16(m, (t) + 32), T_R16(m, (t) + 48)
#define T_R256(m) T_R64(m, 0u), T_R64(m, 64u), T_R64(m, 128u), T_R64(m, 192u)

/* Per tag byte: bits 0-7 the element's length (255: a literal with length
 * bytes), bits 8-15 how far the input advances (tag, offset bytes and, for
 * a literal, its bytes), bits 16-26 the copy offset's high bits taken from
 * the tag (a literal: 16, an offset the fast loop accepts, or 0 when length
 * bytes follow, which sends it to the slow path), bits 32-63 the mask of
 * the offset bytes that follow the tag (0 for a literal). */
static const uint64_t tag_table[256] = {T_R256(T_ENTRY)};
/* Per tag byte: 8 * the input advance when it is below 8 and the element
 * is at most 16 bytes long (most copies, literals of up to 6 bytes), else
 * 255. */
static const uint8_t tag_shift[256] = {T_R256(T_SHIFT)};

/* 8 bytes, the first in the low bits */
static inline uint64_t load64(const uint8_t *p)
{
	uint64_t v;
	memcpy(&v, p, 8);
#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
	v = __builtin_bswap64(v);
#endif
	return v;
}

static inline void copy16(uint8_t *d, const uint8_t *s)
{
	uint8_t t[16];
	memcpy(t, s, 16);
	memcpy(d, t, 16);
}

int pq_snappy_length(const uint8_t *src, size_t slen, size_t *dlen, size_t *hdr)
{
	uint64_t v = 0;
	for (size_t i = 0; i < 5; i++) {
		if (i >= slen)
			return -1;
		v |= (uint64_t)(src[i] & 0x7f) << (7 * i);
		if (!(src[i] & 0x80)) {
			if (v > UINT32_MAX)
				return -1;
			*dlen = (size_t)v;
			*hdr = i + 1;
			return 0;
		}
	}
	return -1;
}

struct pos {
	const uint8_t *ip;
	uint8_t *op; /* NULL: corrupt data */
};

/* Decode one element at ip exactly (no byte outside the element's input or
 * output range is touched).  Returns the positions after it, or op NULL
 * with *why set. */
static struct pos slow_element(const uint8_t *ip, const uint8_t *ie, uint8_t *op, uint8_t *out,
			       uint8_t *oe, const char **why)
{
#define FAIL(msg) do { *why = (msg); return (struct pos){ip, NULL}; } while (0)
	uint32_t t = *ip++;
	size_t len, off;
	if ((t & 3) == 0) {
		len = (t >> 2) + 1;
		if (len > 60) {
			size_t nb = len - 60;
			if ((size_t)(ie - ip) < nb)
				FAIL("snappy literal length runs past the end of the data");
			len = 0;
			for (size_t i = 0; i < nb; i++)
				len |= (size_t)ip[i] << (8 * i);
			ip += nb;
			if (len >= UINT32_MAX)
				FAIL("snappy literal length overflows");
			len++;
		}
		if ((size_t)(ie - ip) < len)
			FAIL("snappy literal runs past the end of the data");
		if ((size_t)(oe - op) < len)
			FAIL("snappy literal runs past the uncompressed size");
		memcpy(op, ip, len);
		return (struct pos){ip + len, op + len};
	}
	size_t nb = (t & 3) == 1 ? 1 : (t & 3) == 2 ? 2 : 4;
	if ((size_t)(ie - ip) < nb)
		FAIL("snappy copy runs past the end of the data");
	if ((t & 3) == 1) {
		len = ((t >> 2) & 7) + 4;
		off = (size_t)(t >> 5) << 8 | ip[0];
	} else {
		len = (t >> 2) + 1;
		off = 0;
		for (size_t i = 0; i < nb; i++)
			off |= (size_t)ip[i] << (8 * i);
	}
	ip += nb;
	if (off == 0)
		FAIL("snappy copy with offset 0");
	if (off > (size_t)(op - out))
		FAIL("snappy copy reaches before the start of the output");
	if ((size_t)(oe - op) < len)
		FAIL("snappy copy runs past the uncompressed size");
	/* [src, op) repeats with period off, and op - src stays a multiple of
	 * off: each step copies bytes that are already final */
	const uint8_t *src = op - off;
	while (len) {
		size_t n = (size_t)(op - src);
		if (n > len)
			n = len;
		memcpy(op, src, n);
		op += n;
		len -= n;
	}
	return (struct pos){ip, op};
#undef FAIL
}

/* The decoder; built twice below, for any x86-64 (the default) and with
 * BMI2 (shifts by a register in one micro-op on Intel CPUs; one is on the
 * chain from tag to tag).  On the GPU host's Xeon the generic build measured
 * 1159-1179 MB/s of text against 966-1057 for the BMI2 build (and equal in
 * another call and on an AMD EPYC), so BMI2 is only used when asked for. */
static inline __attribute__((always_inline)) const char *
decode(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
	size_t ul, hdr;
	if (pq_snappy_length(src, slen, &ul, &hdr) < 0)
		return "corrupt snappy length header";
	if (ul != dlen)
		return "snappy data decompresses to a size other than the page header's";
	const uint8_t *ip = src + hdr, *ie = src + slen;
	uint8_t *op = dst, *oe = dst + dlen;
	/* the fast loop reads at most 65 bytes from ip and writes at most 64
	 * from op */
	const uint8_t *ifast = slen - hdr > 65 ? ie - 65 : ip;
	uint8_t *ofast = dlen > 64 ? oe - 64 : dst;
	uint8_t *dst16 = dst + 16;
	const char *why;
	struct pos q;
	/* the first 16 bytes: from here on op - dst >= 16 */
	while (ip < ie && op - dst < 16) {
		if (!(q = slow_element(ip, ie, op, dst, oe, &why)).op)
			return why;
		ip = q.ip;
		op = q.op;
	}
	while (ip < ifast && op < ofast) {
		/* how many elements can be decoded before ip or op needs a
		 * check: each advances ip by at most 7 and op by at most 64, or
		 * leaves the inner loop */
		size_t n = (size_t)(ifast - ip - 1) / 8 + 1, no = (size_t)(ofast - op - 1) / 64 + 1;
		if (no < n)
			n = no;
		uint64_t w = load64(ip); /* the element's first 8 bytes */
		uint32_t t = w & 0xff;
		for (;;) {
			uint64_t e = tag_table[t];
			size_t sh = tag_shift[t];
			size_t len = e & 0xff;
			size_t off = ((uint32_t)(w >> 8) & (uint32_t)(e >> 32)) | ((uint32_t)e >> 16);
			/* one test for: an offset of 16 or more that stays inside
			 * the output so far (literals pass as offset 16 unless
			 * they have length bytes) */
			if (__builtin_expect(off - 16 > (size_t)(op - dst16), 0))
				goto slow;
			/* len <= 64; a copy's source ends 16 or more bytes before
			 * each 16-byte store, so the stores see final bytes */
			const uint8_t *from = (e >> 32) == 0 ? ip + 1 : op - off;
			copy16(op, from);
			op += len;
			if (__builtin_expect(sh == 255, 0)) {
				uint8_t *o = op - len;
				if (len > 16) {
					copy16(o + 16, from + 16);
					if (len > 32) {
						copy16(o + 32, from + 32);
						copy16(o + 48, from + 48);
					}
				}
				ip += (e >> 8) & 0xff;
				break; /* reload w */
			}
			ip += sh >> 3;
			t = (uint32_t)(w >> sh) & 0xff;
			w = load64(ip);
			if (--n == 0)
				break;
		}
		continue;
slow:
		if (!(q = slow_element(ip, ie, op, dst, oe, &why)).op)
			return why;
		ip = q.ip;
		op = q.op;
	}
	while (ip < ie) {
		if (!(q = slow_element(ip, ie, op, dst, oe, &why)).op)
			return why;
		ip = q.ip;
		op = q.op;
	}
	if (op != oe)
		return "snappy data decompresses to fewer bytes than its header says";
	return NULL;
}

static const char *decode_generic(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
	return decode(src, slen, dst, dlen);
}

#if defined(__x86_64__) && defined(__GNUC__)
#define HAVE_BMI2_BUILD 1
__attribute__((target("bmi2"))) static const char *decode_bmi2(const uint8_t *src, size_t slen,
								uint8_t *dst, size_t dlen)
{
	return decode(src, slen, dst, dlen);
}
#endif

bool pq_snappy_have_bmi2(void)
{
#ifdef HAVE_BMI2_BUILD
	static int have = -1;
	int h = __atomic_load_n(&have, __ATOMIC_RELAXED);
	if (h < 0) {
		__builtin_cpu_init();
		h = __builtin_cpu_supports("bmi2") ? 1 : 0;
		__atomic_store_n(&have, h, __ATOMIC_RELAXED);
	}
	return h;
#else
	return false;
#endif
}

const char *pq_snappy_decompress_impl(enum pq_snappy_impl impl, const uint8_t *src, size_t slen,
				      uint8_t *dst, size_t dlen)
{
#ifdef HAVE_BMI2_BUILD
	if (impl == PQ_SNAPPY_BMI2 && pq_snappy_have_bmi2())
		return decode_bmi2(src, slen, dst, dlen);
#else
	(void)impl;
#endif
	return decode_generic(src, slen, dst, dlen);
}

const char *pq_snappy_decompress(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
	return pq_snappy_decompress_impl(PQ_SNAPPY_AUTO, src, slen, dst, dlen);
}
