/* lib/parquet's snappy decoder against libsnappy (the oracle): streams
 * libsnappy wrote, hand-built streams (literal-only, long literals and
 * copies, overlapping copies at offsets 1..64 in all three copy forms), and
 * damaged streams (every truncation, bit flips, random bytes).  A valid
 * stream must decode to libsnappy's bytes; one libsnappy rejects must be
 * rejected.  Inputs and outputs end at a PROT_NONE page, so a read or write
 * out of bounds crashes the test even without ASan. */
#include <criterion/criterion.h>
#include <snappy-c.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "parquet/internal.h"

/* ---- guarded buffers --------------------------------------------------- */

struct guarded {
	uint8_t *map;
	size_t maplen;
	uint8_t *p; /* n usable bytes end exactly at the guard page */
};

static struct guarded guarded_new(size_t n)
{
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	size_t body = (n + pg - 1) / pg * pg;
	struct guarded g;
	g.maplen = body + pg;
	g.map = mmap(NULL, g.maplen, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert(g.map != MAP_FAILED);
	cr_assert_eq(mprotect(g.map + body, pg, PROT_NONE), 0);
	g.p = g.map + body - n;
	return g;
}

static void guarded_free(struct guarded *g)
{
	munmap(g->map, g->maplen);
}

/* ---- the comparison ---------------------------------------------------- */

static uint64_t rng = 88172645463325252ull;
static uint32_t rnd(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (uint32_t)(rng >> 32);
}

/* Decode s[0..n) with both decoders; returns 1 when both accept (outputs
 * equal), 0 when both reject, and fails the test when they disagree. */
static int check_stream(const uint8_t *s, size_t n, const char *what)
{
	size_t ul = 0, hdr;
	int hdr_ok = pq_snappy_length(s, n, &ul, &hdr) == 0;
	size_t lib_ul = 0;
	int lib_hdr_ok = snappy_uncompressed_length((const char *)s, n, &lib_ul) == SNAPPY_OK;
	cr_assert_eq(hdr_ok, lib_hdr_ok, "%s: length header accepted by one decoder only", what);
	if (!hdr_ok)
		return 0;
	cr_assert_eq(ul, lib_ul, "%s: uncompressed lengths differ", what);
	if (ul > (1u << 24))
		return 0; /* a flipped length byte: libsnappy would fail on the data anyway */
	char *ref = malloc(ul ? ul : 1);
	cr_assert(ref);
	size_t rl = ul;
	int lib_ok = snappy_uncompress((const char *)s, n, ref, &rl) == SNAPPY_OK;

	struct guarded in = guarded_new(n);
	memcpy(in.p, s, n);
	struct guarded out = guarded_new(ul);
	/* both builds of the decoder, where the CPU runs both */
	int ok = lib_ok;
	for (int b = 0; b < (pq_snappy_have_bmi2() ? 2 : 1); b++) {
		memset(out.p, 0xa5, ul);
		const char *why = pq_snappy_decompress_impl(b ? PQ_SNAPPY_BMI2 : PQ_SNAPPY_GENERIC,
							    in.p, n, out.p, ul);
		if (lib_ok && why && strstr(why, "overflows")) {
			/* libsnappy 1.1.9 wraps a literal length of 2^32 to 0 */
			ok = 0;
		} else if (lib_ok) {
			cr_assert_null(why, "%s (build %d): libsnappy decodes it, we say: %s", what, b,
				       why);
			cr_assert_eq(rl, ul);
			cr_assert(memcmp(out.p, ref, ul) == 0, "%s (build %d): output differs from libsnappy",
				  what, b);
		} else {
			cr_assert_not_null(why, "%s (build %d): libsnappy rejects it, we accepted it", what,
					   b);
			cr_assert(strstr(why, "snappy"), "%s: message '%s'", what, why);
		}
	}
	guarded_free(&in);
	guarded_free(&out);
	free(ref);
	return ok;
}

/* ---- a stream builder --------------------------------------------------- */

struct sb {
	uint8_t *p;
	size_t n, cap;
};

static void sb_put(struct sb *b, const void *d, size_t n)
{
	if (b->n + n > b->cap) {
		b->cap = (b->n + n) * 2 + 64;
		b->p = realloc(b->p, b->cap);
		cr_assert(b->p);
	}
	memcpy(b->p + b->n, d, n);
	b->n += n;
}

static void sb_byte(struct sb *b, unsigned v)
{
	uint8_t c = (uint8_t)v;
	sb_put(b, &c, 1);
}

static void sb_varint(struct sb *b, uint64_t v)
{
	while (v >= 0x80) {
		sb_byte(b, (unsigned)(v & 0x7f) | 0x80);
		v >>= 7;
	}
	sb_byte(b, (unsigned)v);
}

/* A literal; nb length bytes (0: in the tag when len <= 60). */
static void sb_literal(struct sb *b, const uint8_t *d, size_t len, int nb)
{
	if (nb == 0) {
		sb_byte(b, (unsigned)(len - 1) << 2);
	} else {
		sb_byte(b, (unsigned)(59 + nb) << 2);
		for (int i = 0; i < nb; i++)
			sb_byte(b, (unsigned)((len - 1) >> (8 * i)) & 0xff);
	}
	sb_put(b, d, len);
}

/* A copy in form kind (1, 2 or 4 offset bytes). */
static void sb_copy(struct sb *b, int kind, size_t off, size_t len)
{
	if (kind == 1) {
		sb_byte(b, 1 | (unsigned)(len - 4) << 2 | (unsigned)(off >> 8) << 5);
		sb_byte(b, off & 0xff);
	} else if (kind == 2) {
		sb_byte(b, 2 | (unsigned)(len - 1) << 2);
		sb_byte(b, off & 0xff);
		sb_byte(b, (off >> 8) & 0xff);
	} else {
		sb_byte(b, 3 | (unsigned)(len - 1) << 2);
		for (int i = 0; i < 4; i++)
			sb_byte(b, (unsigned)(off >> (8 * i)) & 0xff);
	}
}

/* Compress d with libsnappy into a fresh buffer. */
static uint8_t *lib_compress(const uint8_t *d, size_t n, size_t *out)
{
	size_t cap = snappy_max_compressed_length(n);
	uint8_t *c = malloc(cap);
	cr_assert(c);
	*out = cap;
	cr_assert_eq(snappy_compress((const char *)d, n, (char *)c, out), SNAPPY_OK);
	return c;
}

/* Text-like data: words from a small vocabulary, some runs and noise. */
static void fill_text(uint8_t *d, size_t n, int noise)
{
	static const char *words[] = {"the ", "union ", "of ", "state ", "and ", "congress ",
				      "people, ", "we ", "shall ", "America.\n", "  ", "\"free\" "};
	size_t i = 0;
	while (i < n) {
		uint32_t r = rnd();
		if ((int)(r % 100) < noise) {
			d[i++] = (uint8_t)(r >> 8);
		} else if (r % 97 == 0) {
			size_t run = 1 + (r >> 8) % 200;
			for (size_t k = 0; k < run && i < n; k++)
				d[i++] = '-';
		} else {
			const char *w = words[(r >> 8) % 12];
			for (size_t k = 0; w[k] && i < n; k++)
				d[i++] = (uint8_t)w[k];
		}
	}
}

/* ---- valid streams ------------------------------------------------------ */

Test(snappy, libsnappy_streams_of_many_sizes_and_kinds)
{
	static const size_t sizes[] = {0, 1, 2, 15, 16, 17, 63, 64, 65, 100, 1000, 4096, 65536,
				       65537, 200000};
	int noises[] = {0, 3, 30, 100};
	for (size_t si = 0; si < sizeof(sizes) / sizeof(*sizes); si++) {
		for (int ni = 0; ni < 4; ni++) {
			size_t n = sizes[si];
			uint8_t *d = malloc(n ? n : 1);
			fill_text(d, n, noises[ni]);
			size_t cl;
			uint8_t *c = lib_compress(d, n, &cl);
			char what[64];
			snprintf(what, sizeof(what), "%zu bytes, noise %d", n, noises[ni]);
			cr_assert_eq(check_stream(c, cl, what), 1, "%s", what);
			free(c);
			free(d);
		}
	}
}

Test(snappy, literal_only_streams_with_every_length_encoding)
{
	uint8_t d[70003];
	for (size_t i = 0; i < sizeof(d); i++)
		d[i] = (uint8_t)rnd();
	static const size_t lens[] = {1, 2, 15, 16, 17, 31, 32, 33, 59, 60, 61, 64, 100, 255, 256,
				      257, 65535, 65536, 65537, 69999};
	for (size_t li = 0; li < sizeof(lens) / sizeof(*lens); li++) {
		for (int nb = 0; nb <= 4; nb++) {
			size_t len = lens[li];
			if ((nb == 0 && len > 60) || (nb == 1 && len > 256) || (nb == 2 && len > 65536))
				continue;
			/* several literals in a row, then the one under test */
			struct sb b = {0};
			sb_varint(&b, 3 + len);
			sb_literal(&b, d, 3, 0);
			sb_literal(&b, d + 3, len, nb);
			char what[64];
			snprintf(what, sizeof(what), "literal of %zu, %d length bytes", len, nb);
			cr_assert_eq(check_stream(b.p, b.n, what), 1, "%s", what);
			free(b.p);
		}
	}
}

Test(snappy, streams_of_the_longest_short_elements)
{
	/* 6-byte literals (7 input bytes each) and 4-offset-byte copies (5
	 * input bytes each) as far as the end of the input: the fast loop
	 * must stop in time */
	uint8_t d[6000];
	for (size_t i = 0; i < sizeof(d); i++)
		d[i] = (uint8_t)rnd();
	for (size_t count = 1; count <= 1000; count += count < 40 ? 1 : 97) {
		for (int form = 0; form < 3; form++) {
			struct sb b = {0};
			size_t outlen = form == 0 ? 6 * count : 40 + 16 * count;
			sb_varint(&b, outlen);
			if (form == 0) {
				for (size_t k = 0; k < count; k++)
					sb_literal(&b, d + 6 * k, 6, 0);
			} else {
				sb_literal(&b, d, 40, 0);
				for (size_t k = 0; k < count; k++)
					sb_copy(&b, form == 1 ? 4 : 2, 20 + (k % 17), 16);
			}
			char what[64];
			snprintf(what, sizeof(what), "%zu elements of form %d", count, form);
			cr_assert_eq(check_stream(b.p, b.n, what), 1, "%s", what);
			free(b.p);
		}
	}
}

Test(snappy, overlapping_copies_at_offsets_1_to_64_in_every_form)
{
	uint8_t d[128];
	for (size_t i = 0; i < sizeof(d); i++)
		d[i] = (uint8_t)('a' + rnd() % 26);
	for (size_t off = 1; off <= 64; off++) {
		for (int kind = 1; kind <= 4; kind *= 2) {
			size_t lo = kind == 1 ? 4 : 1, hi = kind == 1 ? 11 : 64;
			for (size_t len = lo; len <= hi; len++) {
				/* the prefix is long enough for the offset, and one
				 * stream sits at the end of the input (slow path),
				 * another in front of a long tail (fast path) */
				for (int tail = 0; tail <= 1; tail++) {
					struct sb b = {0};
					size_t pre = off + (size_t)(rnd() % 20);
					sb_varint(&b, pre + len + (tail ? 2 * len + 100 : 0));
					sb_literal(&b, d, pre, pre > 60);
					sb_copy(&b, kind, off, len);
					if (tail) {
						sb_copy(&b, kind, off, len);
						sb_copy(&b, kind, 1 + (size_t)(rnd() % off), len);
						sb_literal(&b, d, 60, 0);
						sb_literal(&b, d + 60, 40, 0);
					}
					char what[80];
					snprintf(what, sizeof(what), "copy%d offset %zu length %zu tail %d",
						 kind, off, len, tail);
					cr_assert_eq(check_stream(b.p, b.n, what), 1, "%s", what);
					free(b.p);
				}
			}
		}
	}
}

Test(snappy, long_copies_and_chains_of_short_elements)
{
	/* random mixes of every element form with valid offsets */
	for (int iter = 0; iter < 3000; iter++) {
		struct sb body = {0};
		size_t outlen = 0;
		int nel = 1 + (int)(rnd() % 60);
		uint8_t lit[300];
		for (size_t i = 0; i < sizeof(lit); i++)
			lit[i] = (uint8_t)rnd();
		for (int e = 0; e < nel; e++) {
			uint32_t r = rnd();
			if (outlen == 0 || r % 4 == 0) {
				size_t len = 1 + (r >> 4) % (r % 3 == 0 ? 300 : 20);
				sb_literal(&body, lit, len,
					   len > 256 ? 2 : len > 60 ? 1 + (int)((r >> 12) % 2) : 0);
				outlen += len;
			} else {
				int kind = (int[]){1, 2, 4}[(r >> 2) % 3];
				size_t maxoff = kind == 1 && outlen > 2047 ? 2047 : outlen;
				size_t off = 1 + (r >> 8) % maxoff;
				if (r % 7 == 0)
					off = 1 + (r >> 8) % (maxoff < 20 ? maxoff : 20);
				size_t len = kind == 1 ? 4 + (r >> 20) % 8 : 1 + (r >> 20) % 64;
				sb_copy(&body, kind, off, len);
				outlen += len;
			}
		}
		struct sb b = {0};
		sb_varint(&b, outlen);
		sb_put(&b, body.p, body.n);
		cr_assert_eq(check_stream(b.p, b.n, "random elements"), 1, "iteration %d", iter);
		free(b.p);
		free(body.p);
	}
}

/* ---- damaged streams ---------------------------------------------------- */

Test(snappy, every_truncation_is_rejected)
{
	size_t n = 3000, cl;
	uint8_t *d = malloc(n);
	fill_text(d, n, 5);
	uint8_t *c = lib_compress(d, n, &cl);
	for (size_t k = 0; k < cl; k++) {
		char what[64];
		snprintf(what, sizeof(what), "first %zu of %zu bytes", k, cl);
		cr_assert_eq(check_stream(c, k, what), 0, "%s decodes", what);
	}
	cr_assert_eq(check_stream(c, cl, "whole"), 1);
	free(c);
	free(d);
}

Test(snappy, bit_flips_match_libsnappy_or_fail_cleanly)
{
	size_t n = 1500, cl;
	uint8_t *d = malloc(n);
	fill_text(d, n, 10);
	uint8_t *c = lib_compress(d, n, &cl);
	uint8_t *m = malloc(cl);
	int ok = 0, bad = 0;
	for (size_t i = 0; i < cl; i++) {
		for (int bit = 0; bit < 8; bit++) {
			memcpy(m, c, cl);
			m[i] ^= (uint8_t)(1u << bit);
			char what[64];
			snprintf(what, sizeof(what), "bit %d of byte %zu flipped", bit, i);
			if (check_stream(m, cl, what))
				ok++;
			else
				bad++;
		}
	}
	cr_log_info("%d flipped streams decode, %d are rejected", ok, bad);
	cr_assert_gt(bad, 0);
	free(m);
	free(c);
	free(d);
}

Test(snappy, hostile_elements_are_rejected)
{
	uint8_t d[100];
	memset(d, 'x', sizeof(d));
	struct {
		const char *what;
		int kind; /* copy form */
		size_t off, len, outlen;
	} cases[] = {
		{"offset 0", 2, 0, 4, 14},
		{"offset before the start", 2, 11, 4, 14},
		{"offset 2^32-1", 4, 0xffffffffu, 4, 14},
		{"copy past the declared size", 2, 5, 10, 14},
		{"copy-1 offset before the start", 1, 2047, 4, 14},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		for (int tail = 0; tail <= 1; tail++) {
			struct sb b = {0};
			sb_varint(&b, cases[i].outlen + (tail ? 90 : 0));
			sb_literal(&b, d, 10, 0);
			sb_copy(&b, cases[i].kind, cases[i].off, cases[i].len);
			if (tail)
				sb_literal(&b, d, 90, 1);
			cr_assert_eq(check_stream(b.p, b.n, cases[i].what), 0, "%s", cases[i].what);
			free(b.p);
		}
	}
	/* a literal whose length runs past the input or the output */
	struct sb b = {0};
	sb_varint(&b, 50);
	sb_literal(&b, d, 50, 0);
	b.n -= 1;
	cr_assert_eq(check_stream(b.p, b.n, "short literal"), 0);
	b.n = 0;
	sb_varint(&b, 40);
	sb_literal(&b, d, 50, 0);
	cr_assert_eq(check_stream(b.p, b.n, "literal past the size"), 0);
	b.n = 0;
	sb_varint(&b, 100);
	sb_byte(&b, 63 << 2); /* four length bytes: 4 GiB */
	for (int k = 0; k < 4; k++)
		sb_byte(&b, 0xff);
	sb_put(&b, d, 100);
	cr_assert_eq(check_stream(b.p, b.n, "4 GiB literal"), 0);
	/* the same length with nothing to copy (the fuzzer's find: libsnappy
	 * takes it as an empty literal) */
	static const uint8_t wrap[] = {0x00, 0xfc, 0xff, 0xff, 0xff, 0xff};
	uint8_t none[1];
	cr_assert_not_null(pq_snappy_decompress(wrap, sizeof(wrap), none, 0));
	cr_assert_eq(check_stream(wrap, sizeof(wrap), "2^32 literal"), 0);
	/* a length header that never ends, or exceeds 32 bits */
	b.n = 0;
	for (int k = 0; k < 6; k++)
		sb_byte(&b, 0xff);
	cr_assert_eq(check_stream(b.p, b.n, "endless varint"), 0);
	free(b.p);
}

Test(snappy, random_bytes_after_a_valid_header)
{
	uint8_t s[300];
	for (int iter = 0; iter < 20000; iter++) {
		size_t n = 1 + rnd() % sizeof(s);
		for (size_t i = 0; i < n; i++)
			s[i] = (uint8_t)rnd();
		s[0] = (uint8_t)(rnd() % 128); /* a small declared length */
		if (rnd() % 2 && n > 2) {
			s[0] = 0x80 | (uint8_t)rnd();
			s[1] = (uint8_t)(rnd() % 8);
		}
		check_stream(s, n, "random bytes");
	}
}
