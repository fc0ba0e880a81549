/* Unit tests of lib/parquet: the JSON string escaper, metadata accessors,
 * and replaying fuzzer crashers (tests/parquet/crashers/). */
#include <criterion/criterion.h>
#include <dirent.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

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

/* A plain reference: byte by byte, for ASCII and valid UTF-8 input. */
static size_t ref_escape(char *o, const uint8_t *s, size_t n)
{
	size_t w = 0;
	o[w++] = '"';
	for (size_t i = 0; i < n; i++) {
		uint8_t b = s[i];
		const char *e = b == '"' ? "\\\"" : b == '\\' ? "\\\\" : b == '\n' ? "\\n" : NULL;
		if (e) {
			memcpy(o + w, e, 2);
			w += 2;
		} else if (b < 0x20) {
			w += (size_t)sprintf(o + w, "\\u%04x", b);
		} else {
			o[w++] = (char)b;
		}
	}
	o[w++] = '"';
	return w;
}

Test(json_escape, block_copies_stay_inside_6n_plus_2_and_match_a_reference)
{
	/* the output buffer ends at a PROT_NONE page: the escaper's block
	 * stores must stay inside the 6 * n + 2 bytes it is promised */
	size_t pg = (size_t)sysconf(_SC_PAGESIZE);
	uint8_t *map = mmap(NULL, 4 * pg, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	cr_assert(map != MAP_FAILED);
	cr_assert_eq(mprotect(map + 3 * pg, pg, PROT_NONE), 0);
	srand(11);
	for (size_t n = 0; n <= 400; n++) {
		for (int rep = 0; rep < 8; rep++) {
			uint8_t s[400];
			int density = rep < 2 ? 0 : rand() % 64 + 1;
			for (size_t i = 0; i < n; i++) {
				s[i] = (uint8_t)('a' + rand() % 26);
				if (density && rand() % density == 0)
					s[i] = (uint8_t)"\"\\\n\x01\x1f"[rand() % 5];
				if (density && rand() % density == 0 && i + 1 < n) {
					s[i] = 0xc3; /* a valid two-byte sequence */
					s[++i] = 0xa9;
				}
			}
			char *out = (char *)map + 3 * pg - (6 * n + 2);
			char ref[6 * 400 + 2];
			size_t w = moe_jsonl_escape(out, s, n);
			size_t rw = ref_escape(ref, s, n);
			cr_assert_eq(w, rw, "n %zu rep %d", n, rep);
			cr_assert(memcmp(out, ref, w) == 0, "n %zu rep %d", n, rep);
		}
	}
	munmap(map, 4 * pg);
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

