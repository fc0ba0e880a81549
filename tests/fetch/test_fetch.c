/* Unit tests of lib/fetch that need no network: path safety, client
 * options. */
#include <criterion/criterion.h>
#include <stdlib.h>

#include "fetch/fetch.h"
#include "fetch/internal.h"

Test(path, safe_and_unsafe_paths)
{
	const char *safe[] = {"a", "sample/10BT/000_00000.parquet", "README.md", ".gitattributes",
			      "a/.b/c", "x..y", "a/b..", "..a/b"};
	const char *unsafe[] = {"", "/etc/passwd", "..", "../x", "a/../b", "a/..", "./a", "a/./b",
				"a//b", "a/", "a\\b", "a/\x01b", "sample/10BT/../../../escape.bin"};
	for (size_t i = 0; i < sizeof(safe) / sizeof(*safe); i++)
		cr_assert(moe_hub_path_safe(safe[i]), "'%s' should be safe", safe[i]);
	for (size_t i = 0; i < sizeof(unsafe) / sizeof(*unsafe); i++)
		cr_assert(!moe_hub_path_safe(unsafe[i]), "'%s' should be refused", unsafe[i]);
	cr_assert(!moe_hub_path_safe(NULL));
}

Test(client, rejects_bad_repositories_and_endpoints)
{
	struct moe_error err = {0};
	const char *bad[] = {"noslash", "a/b/c", "/a", "a/", "../b", "a/b c", "a/b?x"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(*bad); i++) {
		struct moe_hub_opts o = {.endpoint = "http://127.0.0.1:1", .repo = bad[i]};
		cr_assert_null(moe_hub_new(&o, &err), "repo '%s' accepted", bad[i]);
		cr_assert_eq(err.code, MOE_EINVAL);
	}
	struct moe_hub_opts o = {.endpoint = "ftp://example.org", .repo = "a/b"};
	cr_assert_null(moe_hub_new(&o, &err));
	o.endpoint = "http://127.0.0.1:1/";
	o.token = "bad token";
	cr_assert_null(moe_hub_new(&o, &err));
	cr_assert(!strstr(err.msg, "bad token"), "the token appears in '%s'", err.msg);
	o.token = "hf_ok";
	struct moe_hub *h = moe_hub_new(&o, &err);
	cr_assert_not_null(h, "%s", err.msg);
	moe_hub_free(h);
}

Test(client, connection_refused_is_a_clear_error)
{
	struct moe_error err = {0};
	struct moe_hub_opts o = {.endpoint = "http://127.0.0.1:1", .repo = "a/b", .retries = 1,
				 .backoff = 0.01};
	struct moe_hub *h = moe_hub_new(&o, &err);
	cr_assert_not_null(h);
	char commit[65];
	cr_assert_eq(moe_hub_revision(h, "main", commit, &err), MOE_ENET);
	cr_assert(strstr(err.msg, "http://127.0.0.1:1/api/datasets/a/b/revision/main"), "%s", err.msg);
	moe_hub_free(h);
}

static void hex_of(struct fetch_sha256 *s, char hex[65])
{
	uint8_t d[32];
	fetch_sha256_final(s, d);
	moe_hex(d, 32, hex);
}

Test(sha256, fips_vectors_both_paths)
{
	/* FIPS 180-2 appendix B examples */
	struct { const char *in; const char *out; } v[] = {
		{"abc", "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"},
		{"", "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"},
		{"abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq",
		 "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1"},
	};
	for (int ni = 0; ni < 2; ni++)
		for (size_t i = 0; i < sizeof(v) / sizeof(*v); i++) {
			struct fetch_sha256 s;
			char hex[65];
			fetch_sha256_init(&s, ni);
			fetch_sha256_update(&s, v[i].in, strlen(v[i].in));
			hex_of(&s, hex);
			cr_assert_str_eq(hex, v[i].out, "vector %zu, accelerated %d", i, ni);
		}
	cr_log_info("SHA extensions %s", fetch_sha256_accelerated() ? "used" : "not available");
}

Test(sha256, matches_lib_core_on_random_chunked_input)
{
	size_t n = 300000;
	uint8_t *buf = malloc(n);
	srand(11);
	for (size_t i = 0; i < n; i++)
		buf[i] = (uint8_t)rand();
	size_t lens[] = {0, 1, 55, 56, 63, 64, 65, 119, 120, 127, 128, 1000, 4095, 65536, 300000};
	for (size_t li = 0; li < sizeof(lens) / sizeof(*lens); li++) {
		size_t len = lens[li];
		uint8_t want[32];
		char wh[65], hex[65];
		moe_sha256_buf(buf, len, want);
		moe_hex(want, 32, wh);
		for (int ni = 0; ni < 2; ni++) {
			struct fetch_sha256 s;
			fetch_sha256_init(&s, ni);
			for (size_t o = 0; o < len;) {
				size_t k = (size_t)rand() % 200;
				if (k > len - o)
					k = len - o;
				fetch_sha256_update(&s, buf + o, k);
				o += k;
			}
			hex_of(&s, hex);
			cr_assert_str_eq(hex, wh, "length %zu, accelerated %d", len, ni);
		}
	}
	free(buf);
}

Test(ratelimit, wait_from_the_header)
{
	cr_assert_float_eq(fetch_ratelimit_wait("\"api\";r=0;t=55"), 55.0, 1e-9);
	cr_assert_float_eq(fetch_ratelimit_wait("\"resolvers\";r=12;t=0.5"), 0.5, 1e-9);
	cr_assert_lt(fetch_ratelimit_wait("\"api\";r=0"), 0);
	cr_assert_lt(fetch_ratelimit_wait("t=x"), 0);
}
