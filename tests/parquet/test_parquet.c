/* Unit tests of lib/parquet: the JSON string escaper, metadata accessors,
 * and replaying fuzzer crashers (tests/parquet/crashers/). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>

#include <snappy-c.h>

#include "parquet/internal.h"
#include "parquet/parquet.h"

static char *escape(const char *s, size_t n)
{
	char *buf = malloc(6 * n + 3);
	size_t w = moe_jsonl_escape(buf, (const uint8_t *)s, n);
	buf[w] = 0;
	return buf;
}

Test(json_escape, round_trips_valid_utf8_through_jansson)
{
	srand(7);
	static const char *pieces[] = {"a", "\"", "\\", "\n", "\r", "\t", "\b", "\f", "\x01", "\x1f",
				       "\x7f", "\xc3\xa9", "\xe4\xb8\xad", "\xf0\x9f\x98\x80", "/",
				       "\xe2\x80\xa8", "abcdefghijklmnopqrstuvwxyz0123456789", "\0"};
	for (int iter = 0; iter < 2000; iter++) {
		char s[600];
		size_t n = 0;
		int k = rand() % 40;
		for (int i = 0; i < k; i++) {
			int p = rand() % (int)(sizeof(pieces) / sizeof(*pieces));
			size_t l = p == 17 ? 1 : strlen(pieces[p]);
			memcpy(s + n, pieces[p], l);
			n += l;
		}
		char *e = escape(s, n);
		json_error_t je;
		json_t *j = json_loads(e, JSON_DECODE_ANY | JSON_ALLOW_NUL, &je);
		cr_assert(j, "jansson rejects %s: %s", e, je.text);
		cr_assert(json_is_string(j));
		cr_assert_eq(json_string_length(j), n);
		cr_assert(memcmp(json_string_value(j), s, n) == 0, "round trip of %s", e);
		json_decref(j);
		free(e);
	}
}

Test(json_escape, replaces_invalid_utf8_like_the_whatwg_decoder)
{
	/* expected values from the WHATWG Encoding Standard's UTF-8 decoder
	 * (one U+FFFD per maximal subpart) */
	struct { const char *in; const char *out; } cases[] = {
		{"\xc3\x28", "\"\xef\xbf\xbd(\""},
		{"\xed\xa0\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""},
		{"\xf0\x9f\x98", "\"\xef\xbf\xbd\""},
		{"\xf0\x9f\x98x", "\"\xef\xbf\xbdx\""},
		{"\xff", "\"\xef\xbf\xbd\""},
		{"\xc0\xaf", "\"\xef\xbf\xbd\xef\xbf\xbd\""},
		{"\xe0\x80\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""},
		{"\xf4\x90\x80\x80", "\"\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\xef\xbf\xbd\""},
		{"ok\xe2\x82", "\"ok\xef\xbf\xbd\""},
	};
	for (size_t i = 0; i < sizeof(cases) / sizeof(*cases); i++) {
		char *e = escape(cases[i].in, strlen(cases[i].in));
		cr_assert_str_eq(e, cases[i].out, "case %zu", i);
		free(e);
	}
}

Test(json_escape, long_ascii_runs_cross_the_simd_blocks)
{
	char s[100];
	for (int q = 0; q < 100; q++) {
		memset(s, 'x', sizeof(s));
		s[q] = '"';
		char *e = escape(s, sizeof(s));
		cr_assert_eq(strlen(e), sizeof(s) + 3);
		cr_assert_eq(e[1 + q], '\\');
		cr_assert_eq(e[2 + q], '"');
		free(e);
	}
}

static const char *shared(void)
{
	const char *s = getenv("MOE_SHARED");
	return s && *s ? s : NULL;
}

Test(metadata, fineweb_shaped_file)
{
	if (!shared())
		cr_skip_test("MOE_SHARED not set");
	char path[4096];
	snprintf(path, sizeof(path), "%s/data/parquet/fineweb-shaped/sotu-snappy-v1.parquet", shared());
	struct moe_error err = {0};
	struct moe_pq_file *f = moe_pq_open(path, &err);
	if (!f)
		cr_skip_test("%s", err.msg);
	cr_assert_eq(moe_pq_num_rows(f), 233);
	cr_assert_eq(moe_pq_num_row_groups(f), 3);
	cr_assert_eq(moe_pq_num_columns(f), 10);
	int t = moe_pq_find_column(f, "text");
	cr_assert_eq(t, 0);
	const struct moe_pq_column_info *ci = moe_pq_column(f, t);
	cr_assert_eq(ci->type, MOE_PQ_BYTE_ARRAY);
	cr_assert(ci->is_string);
	cr_assert_eq(ci->max_def, 1);
	cr_assert_eq(moe_pq_column(f, moe_pq_find_column(f, "score"))->type, MOE_PQ_DOUBLE);
	cr_assert_eq(moe_pq_column(f, moe_pq_find_column(f, "int_score"))->type, MOE_PQ_INT64);
	cr_assert_eq(moe_pq_find_column(f, "nope"), -1);

	struct moe_pq_reader *r = moe_pq_reader_new();
	struct moe_pq_chunk ch;
	int64_t rows = 0;
	for (int g = 0; g < moe_pq_num_row_groups(f); g++) {
		cr_assert_eq(moe_pq_read_chunk(f, g, t, r, &ch, &err), 0, "%s", err.msg);
		cr_assert_eq((int64_t)ch.n, moe_pq_row_group_rows(f, g));
		rows += (int64_t)ch.n;
	}
	cr_assert_eq(rows, 233);
	cr_assert_eq(moe_pq_read_chunk(f, 3, t, r, &ch, &err), MOE_EINVAL);
	moe_pq_reader_free(r);
	moe_pq_close(f);
}

Test(metadata, not_parquet)
{
	struct moe_error err = {0};
	static const uint8_t junk[] = "PAR1 this is not a parquet file PAR1";
	cr_assert_lt(moe_pq_check_buffer(junk, sizeof(junk) - 1, &err), 0);
	cr_assert(strstr(err.msg, "<memory>"), "%s", err.msg);
}

/* Every fuzzer crasher found so far must now fail cleanly. */
Test(fuzz, crashers_fail_cleanly)
{
	const char *src = getenv("MOE_SRCDIR");
	char dir[4096];
	snprintf(dir, sizeof(dir), "%s/tests/parquet/crashers", src ? src : ".");
	DIR *d = opendir(dir);
	if (!d)
		cr_skip_test("no %s", dir);
	struct dirent *de;
	int n = 0;
	while ((de = readdir(d))) {
		if (de->d_name[0] == '.')
			continue;
		char path[8192];
		snprintf(path, sizeof(path), "%s/%s", dir, de->d_name);
		char *buf;
		size_t len;
		struct moe_error err = {0};
		if (moe_read_file(path, &buf, &len, &err) < 0)
			continue;
		err = (struct moe_error){0};
		moe_pq_check_buffer((const uint8_t *)buf, len, &err);
		free(buf);
		n++;
	}
	closedir(d);
	cr_log_info("%d crashers replayed", n);
}

/* lib/parquet's own snappy decoder against libsnappy's compressor. */
static void fill(uint8_t *b, size_t n, int kind, unsigned seed)
{
	srand(seed);
	for (size_t i = 0; i < n; i++) {
		switch (kind) {
		case 0: b[i] = (uint8_t)rand(); break;                       /* incompressible */
		case 1: b[i] = (uint8_t)"abcab"[i % 5]; break;              /* short-offset copies */
		case 2: b[i] = (uint8_t)(rand() % 4 ? b[i ? i - 1 : 0] : rand()); break; /* runs */
		default: { /* words: text-like */
			static const char *w[] = {"the ", "of ", "and ", "Congress ", "United States ",
						  "\n", "government, ", "people. ", "a", "1790 "};
			const char *x = w[rand() % 10];
			for (size_t k = 0; x[k] && i < n; k++)
				b[i++] = (uint8_t)x[k];
			i--;
		}
		}
	}
}

Test(snappy, decodes_what_libsnappy_encodes)
{
	size_t sizes[] = {0, 1, 15, 16, 17, 63, 64, 65, 100, 4096, 65536, 65537, 300000, 1 << 20};
	for (size_t si = 0; si < sizeof(sizes) / sizeof(*sizes); si++) {
		for (int kind = 0; kind < 4; kind++) {
			size_t n = sizes[si];
			uint8_t *in = malloc(n + 1);
			fill(in, n, kind, (unsigned)(si * 7 + (size_t)kind));
			size_t cl = snappy_max_compressed_length(n);
			char *c = malloc(cl);
			cr_assert_eq(snappy_compress((const char *)in, n, c, &cl), SNAPPY_OK);
			uint8_t *out = malloc(n + PQ_SNAPPY_SLACK);
			const char *why = pq_snappy_decompress((const uint8_t *)c, cl, out, n);
			cr_assert_null(why, "size %zu kind %d: %s", n, kind, why);
			cr_assert(n == 0 || memcmp(in, out, n) == 0, "size %zu kind %d differs", n, kind);
			/* a wrong expected size is an error */
			cr_assert_not_null(pq_snappy_decompress((const uint8_t *)c, cl, out, n + 1));
			free(in);
			free(c);
			free(out);
		}
	}
}

Test(snappy, damaged_input_fails_cleanly)
{
	size_t n = 20000;
	uint8_t *in = malloc(n);
	fill(in, n, 3, 99);
	size_t cl = snappy_max_compressed_length(n);
	char *c = malloc(cl);
	cr_assert_eq(snappy_compress((const char *)in, n, c, &cl), SNAPPY_OK);
	uint8_t *out = malloc(n + PQ_SNAPPY_SLACK);
	srand(5);
	int bad = 0;
	for (int iter = 0; iter < 3000; iter++) {
		uint8_t *d = malloc(cl);
		memcpy(d, c, cl);
		for (int k = 0; k < 1 + iter % 4; k++)
			d[rand() % cl] ^= (uint8_t)(1 + rand() % 255);
		size_t len = iter % 3 == 0 ? (size_t)rand() % cl : cl;
		if (pq_snappy_decompress(d, len, out, n))
			bad++;
		free(d);
	}
	cr_assert_gt(bad, 1000, "only %d of 3000 damaged inputs were refused", bad);
	free(in);
	free(c);
	free(out);
}
