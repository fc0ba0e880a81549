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

Test(ratelimit, wait_from_the_header)
{
	cr_assert_float_eq(fetch_ratelimit_wait("\"api\";r=0;t=55"), 55.0, 1e-9);
	cr_assert_float_eq(fetch_ratelimit_wait("\"resolvers\";r=12;t=0.5"), 0.5, 1e-9);
	cr_assert_lt(fetch_ratelimit_wait("\"api\";r=0"), 0);
	cr_assert_lt(fetch_ratelimit_wait("t=x"), 0);
}
