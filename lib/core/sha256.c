/* SHA-256 (FIPS 180-4), written from the specification; the x86 SHA
 * extensions compress the blocks when the CPU has them. */
#include "core/core.h"

#include <string.h>

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4,
	0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe,
	0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f,
	0x4a7484aa, 0x5cb0a9dc, 0x76f988da, 0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7,
	0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc,
	0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
	0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070, 0x19a4c116,
	0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7,
	0xc67178f2};

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_CODE 1

/* Process n 64-byte blocks with the SHA-NI instructions. */
__attribute__((target("sha,sse4.1,ssse3")))
static void blocks_ni(uint32_t h[8], const uint8_t *p, size_t n)
{
	const __m128i bswap = _mm_set_epi64x(0x0c0d0e0f08090a0bULL, 0x0405060700010203ULL);
	__m128i t = _mm_loadu_si128((const __m128i *)&h[0]);  /* D C B A */
	__m128i s1 = _mm_loadu_si128((const __m128i *)&h[4]); /* H G F E */
	t = _mm_shuffle_epi32(t, 0xb1);                       /* C D A B */
	s1 = _mm_shuffle_epi32(s1, 0x1b);                     /* E F G H */
	__m128i s0 = _mm_alignr_epi8(t, s1, 8);               /* A B E F */
	s1 = _mm_blend_epi16(s1, t, 0xf0);                    /* C D G H */

	for (; n > 0; n--, p += 64) {
		__m128i save0 = s0, save1 = s1, w[4];
		for (int i = 0; i < 16; i++) {
			if (i < 4) {
				w[i] = _mm_shuffle_epi8(_mm_loadu_si128((const __m128i *)(p + 16 * i)), bswap);
			} else {
				/* W[t] = s1(W[t-2]) + W[t-7] + s0(W[t-15]) + W[t-16], four at a time */
				__m128i x = _mm_sha256msg1_epu32(w[i & 3], w[(i + 1) & 3]);
				x = _mm_add_epi32(x, _mm_alignr_epi8(w[(i + 3) & 3], w[(i + 2) & 3], 4));
				w[i & 3] = _mm_sha256msg2_epu32(x, w[(i + 3) & 3]);
			}
			__m128i m = _mm_add_epi32(w[i & 3], _mm_loadu_si128((const __m128i *)&K[4 * i]));
			s1 = _mm_sha256rnds2_epu32(s1, s0, m);
			m = _mm_shuffle_epi32(m, 0x0e);
			s0 = _mm_sha256rnds2_epu32(s0, s1, m);
		}
		s0 = _mm_add_epi32(s0, save0);
		s1 = _mm_add_epi32(s1, save1);
	}

	t = _mm_shuffle_epi32(s0, 0x1b);   /* F E B A */
	s1 = _mm_shuffle_epi32(s1, 0xb1);  /* D C H G */
	s0 = _mm_blend_epi16(t, s1, 0xf0); /* D C B A */
	s1 = _mm_alignr_epi8(s1, t, 8);    /* H G F E */
	_mm_storeu_si128((__m128i *)&h[0], s0);
	_mm_storeu_si128((__m128i *)&h[4], s1);
}

static bool have_sha_ni(void)
{
	unsigned a, b, c, d;
	if (!__get_cpuid(1, &a, &b, &c, &d) || !(c & (1u << 19)) || !(c & (1u << 9)))
		return false; /* SSE4.1, SSSE3 */
	if (!__get_cpuid_count(7, 0, &a, &b, &c, &d))
		return false;
	return (b >> 29) & 1; /* SHA */
}
#endif


#define ROR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void block(uint32_t h[8], const uint8_t *p)
{
	uint32_t w[64], a, b, c, d, e, f, g, hh;
	for (int i = 0; i < 16; i++)
		w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 |
		       (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
	for (int i = 16; i < 64; i++) {
		uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
		uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
		w[i] = w[i - 16] + s0 + w[i - 7] + s1;
	}
	a = h[0]; b = h[1]; c = h[2]; d = h[3]; e = h[4]; f = h[5]; g = h[6]; hh = h[7];
	for (int i = 0; i < 64; i++) {
		uint32_t S1 = ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25);
		uint32_t ch = (e & f) ^ (~e & g);
		uint32_t t1 = hh + S1 + ch + K[i] + w[i];
		uint32_t S0 = ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22);
		uint32_t mj = (a & b) ^ (a & c) ^ (b & c);
		uint32_t t2 = S0 + mj;
		hh = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
	}
	h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += hh;
}

bool moe_sha256_accelerated(void)
{
#ifdef HAVE_SHA_NI_CODE
	static int cached = -1;
	if (cached < 0)
		cached = have_sha_ni();
	return cached;
#else
	return false;
#endif
}

/* Compress n whole 64-byte blocks. */
static void compress(struct moe_sha256 *s, const uint8_t *p, size_t n)
{
#ifdef HAVE_SHA_NI_CODE
	if (s->accel) {
		blocks_ni(s->h, p, n);
		return;
	}
#endif
	for (; n > 0; n--, p += 64)
		block(s->h, p);
}

void moe_sha256_init_ex(struct moe_sha256 *s, bool allow_accel)
{
	static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memcpy(s->h, iv, sizeof iv);
	s->len = 0;
	s->nbuf = 0;
	s->accel = allow_accel && moe_sha256_accelerated();
}

void moe_sha256_init(struct moe_sha256 *s)
{
	moe_sha256_init_ex(s, true);
}

void moe_sha256_update(struct moe_sha256 *s, const void *data, size_t len)
{
	const uint8_t *p = data;
	s->len += len;
	if (s->nbuf) {
		size_t take = 64 - s->nbuf < len ? 64 - s->nbuf : len;
		memcpy(s->buf + s->nbuf, p, take);
		s->nbuf += take;
		p += take;
		len -= take;
		if (s->nbuf < 64)
			return;
		compress(s, s->buf, 1);
		s->nbuf = 0;
	}
	if (len >= 64) {
		compress(s, p, len / 64);
		p += len / 64 * 64;
		len %= 64;
	}
	if (len) {
		memcpy(s->buf, p, len);
		s->nbuf = len;
	}
}

void moe_sha256_final(struct moe_sha256 *s, uint8_t out[32])
{
	uint64_t bits = s->len * 8;
	uint8_t pad[72] = {0x80};
	size_t padlen = (s->nbuf < 56 ? 56 : 120) - s->nbuf;
	uint8_t lenb[8];
	for (int i = 0; i < 8; i++)
		lenb[i] = (uint8_t)(bits >> (56 - 8 * i));
	moe_sha256_update(s, pad, padlen);
	moe_sha256_update(s, lenb, 8);
	for (int i = 0; i < 8; i++) {
		out[4 * i] = (uint8_t)(s->h[i] >> 24);
		out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
		out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
		out[4 * i + 3] = (uint8_t)s->h[i];
	}
}

void moe_hex(const uint8_t *bytes, size_t n, char *hex)
{
	static const char d[] = "0123456789abcdef";
	for (size_t i = 0; i < n; i++) {
		hex[2 * i] = d[bytes[i] >> 4];
		hex[2 * i + 1] = d[bytes[i] & 15];
	}
	hex[2 * n] = 0;
}

static int hexval(char c)
{
	if (c >= '0' && c <= '9') return c - '0';
	if (c >= 'a' && c <= 'f') return c - 'a' + 10;
	if (c >= 'A' && c <= 'F') return c - 'A' + 10;
	return -1;
}

int moe_unhex(const char *hex, uint8_t *bytes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int hi = hexval(hex[2 * i]), lo = hi < 0 ? -1 : hexval(hex[2 * i + 1]);
		if (hi < 0 || lo < 0)
			return MOE_EFORMAT;
		bytes[i] = (uint8_t)(hi << 4 | lo);
	}
	return hex[2 * n] == 0 ? 0 : MOE_EFORMAT;
}

void moe_sha256_buf(const void *data, size_t len, uint8_t out[32])
{
	struct moe_sha256 s;
	moe_sha256_init(&s);
	moe_sha256_update(&s, data, len);
	moe_sha256_final(&s, out);
}

int moe_sha256_file(const char *path, uint8_t out[32], struct moe_error *err)
{
	FILE *fp = fopen(path, "rb");
	struct moe_sha256 s;
	static __thread uint8_t buf[1 << 16];
	size_t n;

	if (!fp)
		return moe_error_errno(err, "cannot open '%s'", path);
	moe_sha256_init(&s);
	while ((n = fread(buf, 1, sizeof buf, fp)) > 0)
		moe_sha256_update(&s, buf, n);
	if (ferror(fp)) {
		fclose(fp);
		return moe_error_errno(err, "cannot read '%s'", path);
	}
	fclose(fp);
	moe_sha256_final(&s, out);
	return 0;
}
