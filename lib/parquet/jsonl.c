/* Parquet rows -> JSONL documents, with a fast JSON string escaper. */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#ifdef __SSE2__
#include <emmintrin.h>
#endif
#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define HAVE_AVX2_PATH 1
#endif

#include "parquet/parquet.h"

#define OUT_CAP (1u << 20)

struct moe_jsonl_out {
	FILE *fp;
	char *buf;
	size_t n;
	bool failed;
	uint64_t text_bytes;
};

struct moe_jsonl_out *moe_jsonl_out_new(FILE *fp)
{
	struct moe_jsonl_out *o = calloc(1, sizeof(*o));
	if (!o)
		return NULL;
	o->buf = malloc(OUT_CAP);
	if (!o->buf) {
		free(o);
		return NULL;
	}
	o->fp = fp;
	return o;
}

static void out_drain(struct moe_jsonl_out *o)
{
	if (o->n && !o->failed && fwrite(o->buf, 1, o->n, o->fp) != o->n)
		o->failed = true;
	o->n = 0;
}

int moe_jsonl_out_flush(struct moe_jsonl_out *o, struct moe_error *err)
{
	out_drain(o);
	if (!o->failed && fflush(o->fp) != 0)
		o->failed = true;
	if (o->failed)
		return moe_error_errno(err, "write error");
	return 0;
}

void moe_jsonl_out_free(struct moe_jsonl_out *o)
{
	if (!o)
		return;
	out_drain(o);
	free(o->buf);
	free(o);
}

uint64_t moe_jsonl_out_text_bytes(const struct moe_jsonl_out *o)
{
	return o->text_bytes;
}

/* Make room for n more bytes (n <= OUT_CAP). */
static inline char *out_room(struct moe_jsonl_out *o, size_t n)
{
	if (OUT_CAP - o->n < n)
		out_drain(o);
	return o->buf + o->n;
}

static inline void out_put(struct moe_jsonl_out *o, const void *p, size_t n)
{
	if (n > OUT_CAP / 2) {
		out_drain(o);
		if (!o->failed && fwrite(p, 1, n, o->fp) != n)
			o->failed = true;
		return;
	}
	memcpy(out_room(o, n), p, n);
	o->n += n;
}

/* ---- JSON strings -------------------------------------------------------- */

/* Length of the valid UTF-8 sequence at s[0] (1..4), or -(bytes of the
 * maximal invalid subpart) (WHATWG decoder semantics). */
static inline int utf8_seq(const uint8_t *s, size_t n)
{
	uint8_t b = s[0];
	int len;
	uint8_t lo = 0x80, hi = 0xbf;
	if (b < 0x80)
		return 1;
	if (b >= 0xc2 && b <= 0xdf)
		len = 2;
	else if (b >= 0xe0 && b <= 0xef) {
		len = 3;
		if (b == 0xe0)
			lo = 0xa0;
		else if (b == 0xed)
			hi = 0x9f;
	} else if (b >= 0xf0 && b <= 0xf4) {
		len = 4;
		if (b == 0xf0)
			lo = 0x90;
		else if (b == 0xf4)
			hi = 0x8f;
	} else {
		return -1;
	}
	for (int k = 1; k < len; k++) {
		if ((size_t)k >= n)
			return -k;
		uint8_t c = s[k];
		if (c < lo || c > hi)
			return -k;
		lo = 0x80;
		hi = 0xbf;
	}
	return len;
}

static inline bool is_plain(uint8_t b)
{
	return b >= 0x20 && b < 0x80 && b != '"' && b != '\\';
}

/*
 * Plain-run copiers: copy s[0..len) to o while no byte is a control
 * character, '"', '\\' or non-ASCII, and return how many bytes were plain
 * (they stop at the first byte that is not, or when fewer than one block is
 * left).  They store whole blocks before testing them, so they may write up
 * to one block past the plain bytes: moe_jsonl_escape's buffer has room
 * for that (the output so far is at most 1 + 6 * i bytes, the buffer 6 * n
 * + 2, and a block is stored only when n - i is at least its size).
 */
#ifdef __SSE2__
static inline int special16(__m128i v)
{
	const __m128i lim = _mm_set1_epi8(0x20), q = _mm_set1_epi8('"'), bs = _mm_set1_epi8('\\');
	/* signed compare: < 0x20 also catches bytes >= 0x80 */
	__m128i m = _mm_or_si128(_mm_cmplt_epi8(v, lim),
				 _mm_or_si128(_mm_cmpeq_epi8(v, q), _mm_cmpeq_epi8(v, bs)));
	return _mm_movemask_epi8(m);
}

static size_t plain_sse2(char *o, const uint8_t *s, size_t len)
{
	size_t i = 0;
	while (len - i >= 32) {
		__m128i a = _mm_loadu_si128((const __m128i *)(s + i));
		__m128i b = _mm_loadu_si128((const __m128i *)(s + i + 16));
		_mm_storeu_si128((__m128i *)(o + i), a);
		_mm_storeu_si128((__m128i *)(o + i + 16), b);
		unsigned bits = (unsigned)special16(a) | (unsigned)special16(b) << 16;
		if (bits)
			return i + (size_t)__builtin_ctz(bits);
		i += 32;
	}
	while (len - i >= 16) {
		__m128i a = _mm_loadu_si128((const __m128i *)(s + i));
		_mm_storeu_si128((__m128i *)(o + i), a);
		int bits = special16(a);
		if (bits)
			return i + (size_t)__builtin_ctz((unsigned)bits);
		i += 16;
	}
	return i;
}
#endif

#ifdef HAVE_AVX2_PATH
__attribute__((target("avx2"))) static size_t plain_avx2(char *o, const uint8_t *s, size_t len)
{
	const __m256i lim = _mm256_set1_epi8(0x20), q = _mm256_set1_epi8('"'),
		      bs = _mm256_set1_epi8('\\');
	size_t i = 0;
	while (len - i >= 64) {
		__m256i a = _mm256_loadu_si256((const __m256i *)(s + i));
		__m256i b = _mm256_loadu_si256((const __m256i *)(s + i + 32));
		_mm256_storeu_si256((__m256i *)(o + i), a);
		_mm256_storeu_si256((__m256i *)(o + i + 32), b);
		__m256i ma = _mm256_or_si256(_mm256_cmpgt_epi8(lim, a),
					     _mm256_or_si256(_mm256_cmpeq_epi8(a, q),
							     _mm256_cmpeq_epi8(a, bs)));
		__m256i mb = _mm256_or_si256(_mm256_cmpgt_epi8(lim, b),
					     _mm256_or_si256(_mm256_cmpeq_epi8(b, q),
							     _mm256_cmpeq_epi8(b, bs)));
		uint64_t bits = (uint32_t)_mm256_movemask_epi8(ma) |
				(uint64_t)(uint32_t)_mm256_movemask_epi8(mb) << 32;
		if (bits)
			return i + (size_t)__builtin_ctzll(bits);
		i += 64;
	}
	return i + plain_sse2(o + i, s + i, len - i);
}

static int use_avx2 = -1; /* -1: not decided yet */
#endif

static inline size_t plain_run(char *o, const uint8_t *s, size_t len)
{
#ifdef HAVE_AVX2_PATH
	int a = __atomic_load_n(&use_avx2, __ATOMIC_RELAXED);
	if (a < 0) {
		__builtin_cpu_init();
		a = __builtin_cpu_supports("avx2") ? 1 : 0;
		__atomic_store_n(&use_avx2, a, __ATOMIC_RELAXED);
	}
	if (a && len >= 64)
		return plain_avx2(o, s, len);
#endif
#ifdef __SSE2__
	return plain_sse2(o, s, len);
#else
	(void)o;
	(void)s;
	(void)len;
	return 0;
#endif
}

size_t moe_jsonl_escape(char *buf, const uint8_t *s, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	char *o = buf;
	size_t i = 0;
	*o++ = '"';
	for (;;) {
		size_t k = plain_run(o, s + i, n - i);
		i += k;
		o += k;
		while (i < n && is_plain(s[i]))
			*o++ = (char)s[i++];
		if (i >= n)
			break;
		uint8_t b = s[i];
		if (b >= 0x80) {
			int l = utf8_seq(s + i, n - i);
			if (l > 0) {
				memcpy(o, s + i, (size_t)l);
				o += l;
				i += (size_t)l;
			} else {
				memcpy(o, "\xef\xbf\xbd", 3);
				o += 3;
				i += (size_t)-l;
			}
			continue;
		}
		*o++ = '\\';
		switch (b) {
		case '"': *o++ = '"'; break;
		case '\\': *o++ = '\\'; break;
		case '\n': *o++ = 'n'; break;
		case '\r': *o++ = 'r'; break;
		case '\t': *o++ = 't'; break;
		case '\b': *o++ = 'b'; break;
		case '\f': *o++ = 'f'; break;
		default:
			memcpy(o, "u00", 3);
			o[3] = hex[b >> 4];
			o[4] = hex[b & 15];
			o += 5;
		}
		i++;
	}
	*o++ = '"';
	return (size_t)(o - buf);
}

static void out_string(struct moe_jsonl_out *o, const uint8_t *s, size_t n)
{
	o->text_bytes += n;
	/* escape in slices that fit the buffer */
	const size_t slice = OUT_CAP / 8;
	if (n <= slice) {
		char *d = out_room(o, 6 * n + 2);
		o->n += moe_jsonl_escape(d, s, n);
		return;
	}
	out_put(o, "\"", 1);
	size_t i = 0;
	while (i < n) {
		size_t m = n - i < slice ? n - i : slice;
		/* do not split a UTF-8 sequence */
		if (i + m < n) {
			size_t k = 0;
			while (k < 3 && m > 1 && (s[i + m] & 0xc0) == 0x80) {
				m--;
				k++;
			}
		}
		char *d = out_room(o, 6 * m + 2);
		size_t w = moe_jsonl_escape(d, s + i, m);
		/* drop the quotes the escaper added */
		memmove(d, d + 1, w - 2);
		o->n += w - 2;
		i += m;
	}
	out_put(o, "\"", 1);
}

/* ---- numbers ------------------------------------------------------------- */

static void out_double(struct moe_jsonl_out *o, double v)
{
	char tmp[40];
	if (!isfinite(v)) {
		out_put(o, "null", 4);
		return;
	}
	int len = 0;
	for (int prec = 15; prec <= 17; prec++) {
		len = snprintf(tmp, sizeof(tmp), "%.*g", prec, v);
		if (strtod(tmp, NULL) == v)
			break;
	}
	out_put(o, tmp, (size_t)len);
}

static void out_i64(struct moe_jsonl_out *o, int64_t v)
{
	char tmp[24];
	int len = snprintf(tmp, sizeof(tmp), "%lld", (long long)v);
	out_put(o, tmp, (size_t)len);
}

static void out_u64(struct moe_jsonl_out *o, uint64_t v)
{
	char tmp[24];
	int len = snprintf(tmp, sizeof(tmp), "%llu", (unsigned long long)v);
	out_put(o, tmp, (size_t)len);
}

/* INT96 (Impala timestamps): nanoseconds of the day, then the Julian day;
 * printed as nanoseconds since the Unix epoch. */
static void out_int96(struct moe_jsonl_out *o, const uint8_t *p)
{
	int64_t nanos = (int64_t)moe_get_u64(p);
	int64_t day = (int32_t)moe_get_u32(p + 8);
	__int128 ns = (__int128)(day - 2440588) * 86400 * 1000000000 + nanos;
	if (ns > INT64_MAX || ns < INT64_MIN)
		out_put(o, "null", 4);
	else
		out_i64(o, (int64_t)ns);
}

static void out_value(struct moe_jsonl_out *o, const struct moe_pq_column_info *ci,
		      const struct moe_pq_chunk *ch, size_t row)
{
	if (ch->valid && !ch->valid[row]) {
		out_put(o, "null", 4);
		return;
	}
	const uint8_t *d = ch->data;
	switch (ch->type) {
	case MOE_PQ_BYTE_ARRAY:
	case MOE_PQ_FIXED_LEN_BYTE_ARRAY:
		out_string(o, ch->bytes[row].ptr, ch->bytes[row].len);
		break;
	case MOE_PQ_BOOLEAN:
		if (d[row])
			out_put(o, "true", 4);
		else
			out_put(o, "false", 5);
		break;
	case MOE_PQ_INT32: {
		int32_t v;
		memcpy(&v, d + row * 4, 4);
		if (ci->converted_type >= 11 && ci->converted_type <= 13)
			out_u64(o, (uint32_t)v);
		else
			out_i64(o, v);
		break;
	}
	case MOE_PQ_INT64: {
		int64_t v;
		memcpy(&v, d + row * 8, 8);
		if (ci->converted_type == 14)
			out_u64(o, (uint64_t)v);
		else
			out_i64(o, v);
		break;
	}
	case MOE_PQ_INT96:
		out_int96(o, d + row * 12);
		break;
	case MOE_PQ_FLOAT: {
		float v;
		memcpy(&v, d + row * 4, 4);
		out_double(o, (double)v);
		break;
	}
	case MOE_PQ_DOUBLE: {
		double v;
		memcpy(&v, d + row * 8, 8);
		out_double(o, v);
		break;
	}
	}
}

/* ---- cat ----------------------------------------------------------------- */

struct cat_col {
	int index;
	char *key; /* ,"name": */
	size_t key_len;
	struct moe_pq_reader *r;
	struct moe_pq_chunk ch;
};

static int numeric_at(const struct moe_pq_chunk *ch, size_t row, double *v)
{
	if (ch->valid && !ch->valid[row])
		return 0;
	const uint8_t *d = ch->data;
	if (ch->type == MOE_PQ_DOUBLE) {
		memcpy(v, d + row * 8, 8);
	} else if (ch->type == MOE_PQ_FLOAT) {
		float f;
		memcpy(&f, d + row * 4, 4);
		*v = f;
	} else if (ch->type == MOE_PQ_INT64) {
		int64_t i;
		memcpy(&i, d + row * 8, 8);
		*v = (double)i;
	} else if (ch->type == MOE_PQ_INT32) {
		int32_t i;
		memcpy(&i, d + row * 4, 4);
		*v = i;
	} else {
		return 0;
	}
	return 1;
}

static bool int_at(const struct moe_pq_chunk *ch, size_t row, int64_t *v)
{
	if (ch->valid && !ch->valid[row])
		return false;
	const uint8_t *d = ch->data;
	if (ch->type == MOE_PQ_INT64) {
		memcpy(v, d + row * 8, 8);
	} else if (ch->type == MOE_PQ_INT32) {
		int32_t i;
		memcpy(&i, d + row * 4, 4);
		*v = i;
	} else {
		double x;
		/* a fractional value compares by its ceiling: x >= N iff ceil(x) >= N */
		if (!numeric_at(ch, row, &x) || !(x >= -9.2e18 && x <= 9.2e18))
			return false;
		*v = (int64_t)ceil(x);
	}
	return true;
}

static int filter_col(struct moe_pq_file *f, const char *name, struct moe_error *err)
{
	int i = moe_pq_find_column(f, name);
	if (i < 0)
		return moe_error_set(err, MOE_ENOTFOUND, "%s: no column '%s' to filter on",
				     moe_pq_path(f), name);
	enum moe_pq_type t = moe_pq_column(f, i)->type;
	if (t != MOE_PQ_DOUBLE && t != MOE_PQ_FLOAT && t != MOE_PQ_INT32 && t != MOE_PQ_INT64)
		return moe_error_set(err, MOE_EFORMAT, "%s: column '%s' is %s, not a number",
				     moe_pq_path(f), name, moe_pq_type_name(t));
	return i;
}

int moe_pq_cat(const char *path, const struct moe_pq_cat_opts *opts, struct moe_jsonl_out *o,
	       uint64_t *rows, struct moe_error *err)
{
	struct moe_pq_file *f = moe_pq_open(path, err);
	if (!f)
		return err->code ? err->code : MOE_EIO;
	int rc = 0, ncols = opts->ncolumns > 0 ? opts->ncolumns : moe_pq_num_columns(f);
	struct cat_col *cols = calloc((size_t)ncols + 2, sizeof(*cols));
	struct moe_pq_reader *fr_score = NULL, *fr_int = NULL;
	uint8_t *pass = NULL;
	int score_col = -1, int_col = -1;
	if (!cols) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (int i = 0; i < ncols; i++) {
		const char *name;
		if (opts->ncolumns > 0) {
			name = opts->columns[i];
			cols[i].index = moe_pq_find_column(f, name);
			if (cols[i].index < 0) {
				rc = moe_error_set(err, MOE_ENOTFOUND, "%s: no column '%s'", path, name);
				goto out;
			}
		} else {
			cols[i].index = i;
			name = moe_pq_column(f, i)->name;
		}
		size_t nl = strlen(name);
		cols[i].key = malloc(6 * nl + 8);
		cols[i].r = moe_pq_reader_new();
		if (!cols[i].key || !cols[i].r) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
		cols[i].key[0] = i == 0 ? '{' : ',';
		size_t w = moe_jsonl_escape(cols[i].key + 1, (const uint8_t *)name, nl);
		cols[i].key[1 + w] = ':';
		cols[i].key_len = w + 2;
	}
	if (opts->use_min_score) {
		if ((rc = score_col = filter_col(f, "score", err)) < 0)
			goto out;
		rc = 0;
		if (!(fr_score = moe_pq_reader_new())) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
	}
	if (opts->use_min_int_score) {
		if ((rc = int_col = filter_col(f, "int_score", err)) < 0)
			goto out;
		rc = 0;
		if (!(fr_int = moe_pq_reader_new())) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
	}

	for (int g = 0; g < moe_pq_num_row_groups(f); g++) {
		if (opts->limit && *rows >= opts->limit)
			break;
		size_t n = (size_t)moe_pq_row_group_rows(f, g);
		if (n == 0)
			continue;
		size_t npass = n;
		free(pass);
		pass = NULL;
		if (score_col >= 0 || int_col >= 0) {
			struct moe_pq_chunk sc, ic;
			if (!(pass = malloc(n))) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			memset(pass, 1, n);
			if (score_col >= 0) {
				if ((rc = moe_pq_read_chunk(f, g, score_col, fr_score, &sc, err)))
					goto out;
				for (size_t i = 0; i < n; i++) {
					double v;
					if (!numeric_at(&sc, i, &v) || !(v >= opts->min_score))
						pass[i] = 0;
				}
			}
			if (int_col >= 0) {
				if ((rc = moe_pq_read_chunk(f, g, int_col, fr_int, &ic, err)))
					goto out;
				for (size_t i = 0; i < n; i++) {
					int64_t v;
					if (!int_at(&ic, i, &v) || v < opts->min_int_score)
						pass[i] = 0;
				}
			}
			npass = 0;
			for (size_t i = 0; i < n; i++)
				npass += pass[i];
			if (npass == 0)
				continue;
		}
		for (int c = 0; c < ncols; c++) {
			if ((rc = moe_pq_read_chunk(f, g, cols[c].index, cols[c].r, &cols[c].ch, err)))
				goto out;
			if (cols[c].ch.n != n) {
				rc = moe_error_set(err, MOE_EFORMAT,
						   "%s: row group %d, column '%s': %zu values for %zu rows",
						   path, g, moe_pq_column(f, cols[c].index)->name,
						   cols[c].ch.n, n);
				goto out;
			}
		}
		for (size_t i = 0; i < n; i++) {
			if (pass && !pass[i])
				continue;
			if (opts->limit && *rows >= opts->limit)
				break;
			if (ncols == 0)
				out_put(o, "{", 1);
			for (int c = 0; c < ncols; c++) {
				out_put(o, cols[c].key, cols[c].key_len);
				out_value(o, moe_pq_column(f, cols[c].index), &cols[c].ch, i);
			}
			out_put(o, "}\n", 2);
			++*rows;
		}
		if (o->failed) {
			rc = moe_error_errno(err, "write error");
			goto out;
		}
		if (opts->progress)
			opts->progress(opts->progress_ctx, *rows);
	}
out:
	if (cols) {
		for (int i = 0; i < ncols; i++) {
			free(cols[i].key);
			moe_pq_reader_free(cols[i].r);
		}
		free(cols);
	}
	moe_pq_reader_free(fr_score);
	moe_pq_reader_free(fr_int);
	free(pass);
	moe_pq_close(f);
	return rc;
}
