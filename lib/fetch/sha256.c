/*
 * SHA-256 for verifying downloads: the x86 SHA extensions when the CPU has
 * them (about 5x lib/core's portable code, which hashes at ~300 MB/s and
 * would otherwise pace a download, since hashing runs in the transfer's
 * write callback), lib/core's moe_sha256 otherwise.
 */
#include <string.h>

#include "fetch/internal.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <cpuid.h>
#include <immintrin.h>
#define HAVE_SHA_NI_CODE 1

static const uint32_t K[64] = {
	0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
	0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
	0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
	0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
	0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
	0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
	0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
	0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

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

bool fetch_sha256_accelerated(void)
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

void fetch_sha256_init(struct fetch_sha256 *s, bool allow_ni)
{
	static const uint32_t iv[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
				       0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
	memset(s, 0, sizeof(*s));
	s->ni = allow_ni && fetch_sha256_accelerated();
	if (s->ni)
		memcpy(s->h, iv, sizeof(iv));
	else
		moe_sha256_init(&s->core);
}

void fetch_sha256_update(struct fetch_sha256 *s, const void *data, size_t len)
{
#ifdef HAVE_SHA_NI_CODE
	if (s->ni) {
		const uint8_t *p = data;
		s->len += len;
		if (s->n) {
			size_t k = 64 - s->n < len ? 64 - s->n : len;
			memcpy(s->buf + s->n, p, k);
			s->n += k;
			p += k;
			len -= k;
			if (s->n < 64)
				return;
			blocks_ni(s->h, s->buf, 1);
			s->n = 0;
		}
		if (len >= 64) {
			blocks_ni(s->h, p, len / 64);
			p += len / 64 * 64;
			len %= 64;
		}
		memcpy(s->buf, p, len);
		s->n = len;
		return;
	}
#endif
	moe_sha256_update(&s->core, data, len);
}

void fetch_sha256_final(struct fetch_sha256 *s, uint8_t out[32])
{
#ifdef HAVE_SHA_NI_CODE
	if (s->ni) {
		uint64_t bits = s->len * 8;
		uint8_t pad[72] = {0x80};
		size_t padlen = (s->n < 56 ? 56 : 120) - s->n;
		for (int i = 0; i < 8; i++)
			pad[padlen + (size_t)i] = (uint8_t)(bits >> (56 - 8 * i));
		uint64_t keep = s->len;
		fetch_sha256_update(s, pad, padlen + 8);
		s->len = keep;
		for (int i = 0; i < 8; i++) {
			out[4 * i] = (uint8_t)(s->h[i] >> 24);
			out[4 * i + 1] = (uint8_t)(s->h[i] >> 16);
			out[4 * i + 2] = (uint8_t)(s->h[i] >> 8);
			out[4 * i + 3] = (uint8_t)s->h[i];
		}
		return;
	}
#endif
	moe_sha256_final(&s->core, out);
}
