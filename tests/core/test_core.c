/* Tests of lib/core: parsing, checksums against published vectors, the
 * binary header, atomic files, safetensors round trips and rejections. */
#include <criterion/criterion.h>

#include <dirent.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"

static char tmpdir[] = "/tmp/moe-core-XXXXXX";

static void setup(void)
{
	strcpy(tmpdir, "/tmp/moe-core-XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static void teardown(void)
{
	moe_rmtree(tmpdir, NULL);
}

static int count_entries(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;
	while ((e = readdir(d)))
		if (strcmp(e->d_name, ".") && strcmp(e->d_name, ".."))
			n++;
	closedir(d);
	return n;
}

Test(parse, integers)
{
	struct moe_error err = {0};
	int64_t v;
	cr_assert_eq(moe_parse_i64("42", 0, 100, &v, "count", &err), 0);
	cr_assert_eq(v, 42);
	cr_assert_eq(moe_parse_i64("-7", -10, 10, &v, "count", &err), 0);
	cr_assert_eq(v, -7);
	cr_assert_eq(moe_parse_i64("101", 0, 100, &v, "count", &err), MOE_ERANGE);
	cr_assert(strstr(err.msg, "count '101' out of range"));
	cr_assert_eq(moe_parse_i64("12x", 0, 100, &v, "count", &err), MOE_EINVAL);
	cr_assert_eq(moe_parse_i64("", 0, 100, &v, "count", &err), MOE_EINVAL);
	cr_assert_eq(moe_parse_i64(" 5", 0, 100, &v, "count", &err), MOE_EINVAL);
	cr_assert_eq(moe_parse_i64("99999999999999999999", INT64_MIN, INT64_MAX, &v, "n", &err),
		     MOE_ERANGE);
}

Test(parse, unsigned_double_size)
{
	struct moe_error err = {0};
	uint64_t u;
	double d;
	cr_assert_eq(moe_parse_u64("-1", UINT64_MAX, &u, "n", &err), MOE_EINVAL);
	cr_assert_eq(moe_parse_u64("18446744073709551615", UINT64_MAX, &u, "n", &err), 0);
	cr_assert_eq(u, UINT64_MAX);
	cr_assert_eq(moe_parse_double("3e-4", 0, 1, &d, "lr", &err), 0);
	cr_assert_float_eq(d, 3e-4, 1e-15);
	cr_assert_eq(moe_parse_double("nan", 0, 1, &d, "lr", &err), MOE_EINVAL);
	cr_assert_eq(moe_parse_double("2", 0, 1, &d, "lr", &err), MOE_ERANGE);
	cr_assert_eq(moe_parse_size("100M", &u, "size", &err), 0);
	cr_assert_eq(u, 100ull << 20);
	cr_assert_eq(moe_parse_size("1.5k", &u, "size", &err), 0);
	cr_assert_eq(u, 1500);
	cr_assert_eq(moe_parse_size("10X", &u, "size", &err), MOE_EINVAL);
}

static void sha_hex(const char *msg, size_t len, char *hex)
{
	uint8_t d[32];
	moe_sha256_buf(msg, len, d);
	moe_hex(d, 32, hex);
}

Test(checksum, sha256_fips_vectors)
{
	char hex[65];
	sha_hex("abc", 3, hex);
	cr_assert_str_eq(hex, "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
	sha_hex("", 0, hex);
	cr_assert_str_eq(hex, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
	const char *m = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
	sha_hex(m, strlen(m), hex);
	cr_assert_str_eq(hex, "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
	/* one million 'a', fed in odd-sized pieces */
	struct moe_sha256 s;
	uint8_t d[32];
	char buf[997];
	memset(buf, 'a', sizeof buf);
	moe_sha256_init(&s);
	size_t left = 1000000;
	while (left) {
		size_t n = left < sizeof buf ? left : sizeof buf;
		moe_sha256_update(&s, buf, n);
		left -= n;
	}
	moe_sha256_final(&s, d);
	moe_hex(d, 32, hex);
	cr_assert_str_eq(hex, "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

static void hex_of(struct moe_sha256 *s, char hex[65])
{
	uint8_t d[32];
	moe_sha256_final(s, d);
	moe_hex(d, 32, hex);
}

Test(checksum, sha256_fips_vectors_both_paths)
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
			struct moe_sha256 s;
			char hex[65];
			moe_sha256_init_ex(&s, ni);
			moe_sha256_update(&s, v[i].in, strlen(v[i].in));
			hex_of(&s, hex);
			cr_assert_str_eq(hex, v[i].out, "vector %zu, accelerated %d", i, ni);
		}
	cr_log_info("SHA extensions %s", moe_sha256_accelerated() ? "used" : "not available");
}

Test(checksum, sha256_accelerated_matches_portable_on_random_chunked_input)
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
		struct moe_sha256 ref;
		moe_sha256_init_ex(&ref, false);
		moe_sha256_update(&ref, buf, len);
		moe_sha256_final(&ref, want);
		moe_hex(want, 32, wh);
		for (int ni = 0; ni < 2; ni++) {
			struct moe_sha256 s;
			moe_sha256_init_ex(&s, ni);
			for (size_t o = 0; o < len;) {
				size_t k = (size_t)rand() % 200;
				if (k > len - o)
					k = len - o;
				moe_sha256_update(&s, buf + o, k);
				o += k;
			}
			hex_of(&s, hex);
			cr_assert_str_eq(hex, wh, "length %zu, accelerated %d", len, ni);
		}
	}
	free(buf);
}

Test(checksum, hash64_streaming_equals_oneshot)
{
	uint8_t buf[10000];
	for (size_t i = 0; i < sizeof buf; i++)
		buf[i] = (uint8_t)(i * 131 + 7);
	struct moe_hash64_state *s = moe_hash64_new();
	moe_hash64_update(s, buf, 123);
	moe_hash64_update(s, buf + 123, sizeof buf - 123);
	cr_assert_eq(moe_hash64_digest(s), moe_hash64(buf, sizeof buf));
	moe_hash64_free(s);
	cr_assert_neq(moe_hash64(buf, 100), moe_hash64(buf, 101));
}

Test(header, roundtrip_and_rejections)
{
	struct moe_header h = {0}, g;
	struct moe_error err = {0};
	uint8_t buf[256];
	memcpy(h.magic, "MOETEST", 8);
	h.version = 2;
	h.payload_size = 1234;
	h.payload_hash = 0xdeadbeef;
	h.fields_len = 16;
	for (int i = 0; i < 16; i++)
		h.fields[i] = (uint8_t)i;
	int n = moe_header_encode(&h, buf, sizeof buf, &err);
	cr_assert_eq(n, 64);
	cr_assert_eq(moe_header_decode(&g, buf, (size_t)n, "MOETEST", 2, "x", &err), n);
	cr_assert_eq(g.payload_size, 1234);
	cr_assert_eq(g.fields_len, 16);
	cr_assert_eq(memcmp(g.fields, h.fields, 16), 0);
	/* newer version than we read */
	cr_assert_eq(moe_header_decode(&g, buf, (size_t)n, "MOETEST", 1, "x", &err), MOE_EVERSION);
	cr_assert(strstr(err.msg, "version 2"));
	/* wrong magic */
	cr_assert_eq(moe_header_decode(&g, buf, (size_t)n, "MOEOTHR", 2, "x", &err), MOE_EFORMAT);
	/* truncated */
	cr_assert_eq(moe_header_decode(&g, buf, 40, "MOETEST", 2, "x", &err), MOE_ETRUNC);
	/* every single-bit flip in the header is detected */
	for (int i = 0; i < n * 8; i++) {
		buf[i / 8] ^= (uint8_t)(1 << (i % 8));
		int rc = moe_header_decode(&g, buf, (size_t)n, "MOETEST", 2, "x", &err);
		cr_assert(rc < 0, "bit flip %d not detected", i);
		buf[i / 8] ^= (uint8_t)(1 << (i % 8));
	}
}

Test(atomic, commit_and_abort, .init = setup, .fini = teardown)
{
	struct moe_atomic a;
	struct moe_error err = {0};
	char *path = moe_path_join(tmpdir, "out.bin");
	cr_assert_eq(moe_atomic_open(&a, path, &err), 0);
	fputs("hello", a.fp);
	cr_assert_eq(access(path, F_OK), -1, "final file must not exist before commit");
	cr_assert_eq(moe_atomic_commit(&a, &err), 0);
	char *buf;
	size_t len;
	cr_assert_eq(moe_read_file(path, &buf, &len, &err), 0);
	cr_assert_eq(len, 5);
	cr_assert_str_eq(buf, "hello");
	free(buf);
	cr_assert_eq(count_entries(tmpdir), 1);
	/* abort leaves the old file and no temporary */
	cr_assert_eq(moe_atomic_open(&a, path, &err), 0);
	fputs("partial", a.fp);
	moe_atomic_abort(&a);
	cr_assert_eq(count_entries(tmpdir), 1);
	cr_assert_eq(moe_read_file(path, &buf, &len, &err), 0);
	cr_assert_str_eq(buf, "hello");
	free(buf);
	free(path);
}

Test(atomic, directory, .init = setup, .fini = teardown)
{
	struct moe_atomic_dir d;
	struct moe_error err = {0};
	char *path = moe_path_join(tmpdir, "ckpt");
	cr_assert_eq(moe_atomic_dir_open(&d, path, &err), 0);
	char *f = moe_path_join(d.tmp_path, "a.txt");
	cr_assert_eq(moe_atomic_write_file(f, "x", 1, &err), 0);
	free(f);
	cr_assert_eq(moe_atomic_dir_commit(&d, false, &err), 0);
	struct stat st;
	cr_assert_eq(stat(path, &st), 0);
	/* second without replace fails and cleans up */
	cr_assert_eq(moe_atomic_dir_open(&d, path, &err), 0);
	cr_assert_neq(moe_atomic_dir_commit(&d, false, &err), 0);
	cr_assert_eq(count_entries(tmpdir), 1);
	/* replace works */
	cr_assert_eq(moe_atomic_dir_open(&d, path, &err), 0);
	cr_assert_eq(moe_atomic_dir_commit(&d, true, &err), 0);
	cr_assert_eq(count_entries(tmpdir), 1);
	cr_assert_eq(count_entries(path), 0);
	free(path);
}

Test(safetensors, roundtrip, .init = setup, .fini = teardown)
{
	struct moe_error err = {0};
	char *path = moe_path_join(tmpdir, "t.safetensors");
	float a[6];
	int32_t b[3] = {7, -1, 1 << 30};
	for (int i = 0; i < 6; i++)
		a[i] = (float)rand() / RAND_MAX - 0.5f;
	struct moe_st_writer *w = moe_st_writer_new();
	int64_t sa[2] = {2, 3}, sb[1] = {3};
	cr_assert_eq(moe_st_writer_add(w, "a.weight", MOE_F32, 2, sa, a, &err), 0);
	cr_assert_eq(moe_st_writer_add(w, "b", MOE_I32, 1, sb, b, &err), 0);
	moe_st_writer_meta(w, "format", "pt");
	cr_assert_eq(moe_st_writer_commit(w, path, &err), 0, "%s", err.msg);
	moe_st_writer_free(w);

	struct moe_st_file *f = moe_st_open(path, &err);
	cr_assert_not_null(f, "%s", err.msg);
	cr_assert_eq(f->n_tensors, 2);
	const struct moe_st_tensor *t = moe_st_find(f, "a.weight");
	cr_assert_not_null(t);
	cr_assert_eq(t->ndim, 2);
	cr_assert_eq(t->shape[1], 3);
	cr_assert_eq(memcmp(t->data, a, sizeof a), 0);
	t = moe_st_find(f, "b");
	cr_assert_eq(memcmp(t->data, b, sizeof b), 0);
	cr_assert_str_eq(json_string_value(json_object_get(f->metadata, "format")), "pt");
	/* header is 8-byte aligned as HF writes it */
	cr_assert_eq(moe_get_u64(f->map) % 8, 0);
	moe_st_close(f);
	free(path);
}

static void write_raw(const char *path, const char *json, size_t data_len)
{
	FILE *fp = fopen(path, "wb");
	uint8_t lenb[8];
	moe_put_u64(lenb, strlen(json));
	fwrite(lenb, 1, 8, fp);
	fputs(json, fp);
	for (size_t i = 0; i < data_len; i++)
		fputc(0, fp);
	fclose(fp);
}

Test(safetensors, rejects_bad_files, .init = setup, .fini = teardown)
{
	struct moe_error err = {0};
	char *path = moe_path_join(tmpdir, "bad.safetensors");
	const char *cases[] = {
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,16]}}",  /* past end */
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,4]}}",   /* size mismatch */
		"{\"a\":{\"dtype\":\"Q4\",\"shape\":[1],\"data_offsets\":[0,1]}}",    /* bad dtype */
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[-1],\"data_offsets\":[0,4]}}",  /* bad shape */
		"{\"a\":{\"dtype\":\"F32\",\"shape\":[1],\"data_offsets\":[4,0]}}",   /* reversed */
		"{\"a\":",                                                          /* bad json */
	};
	for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
		write_raw(path, cases[i], 8);
		struct moe_st_file *f = moe_st_open(path, &err);
		cr_assert_null(f, "case %zu accepted", i);
		cr_assert(strstr(err.msg, "bad.safetensors"), "message must name the file: %s", err.msg);
	}
	/* header length larger than the file */
	FILE *fp = fopen(path, "wb");
	uint8_t lenb[8];
	moe_put_u64(lenb, 1000);
	fwrite(lenb, 1, 8, fp);
	fclose(fp);
	cr_assert_null(moe_st_open(path, &err));
	free(path);
}

Test(bf16, conversion)
{
	cr_assert_eq(moe_f32_to_bf16(1.0f), 0x3f80);
	cr_assert_float_eq(moe_bf16_to_f32(moe_f32_to_bf16(3.140625f)), 3.140625f, 0);
	/* round to nearest even: 1 + 2^-8 is halfway between 1 and 1+2^-7 -> 1 */
	cr_assert_eq(moe_f32_to_bf16(1.00390625f), 0x3f80);
	cr_assert(isnan(moe_bf16_to_f32(moe_f32_to_bf16(NAN))));
	cr_assert_float_eq(moe_f16_to_f32(0x3c00), 1.0f, 0);
	cr_assert_float_eq(moe_f16_to_f32(0xc000), -2.0f, 0);
	cr_assert_float_eq(moe_f16_to_f32(0x0001), 5.960464477539063e-08f, 1e-20);
}

Test(json, getters_name_the_key)
{
	struct moe_error err = {0};
	json_t *o = json_pack("{s:i, s:s, s:b, s:f}", "n", 3, "s", "x", "b", 1, "f", 0.5);
	int64_t n;
	double d;
	const char *s;
	bool b;
	cr_assert_eq(moe_json_get_int(o, "n", true, &n, "cfg.json", &err), 0);
	cr_assert_eq(n, 3);
	cr_assert_eq(moe_json_get_string(o, "n", true, &s, "cfg.json", &err), MOE_EFORMAT);
	cr_assert(strstr(err.msg, "cfg.json") && strstr(err.msg, "'n'"));
	cr_assert_eq(moe_json_get_double(o, "missing", false, &d, "cfg.json", &err), MOE_ENOTFOUND);
	cr_assert_eq(moe_json_get_double(o, "missing", true, &d, "cfg.json", &err), MOE_ENOTFOUND);
	cr_assert(strstr(err.msg, "missing key 'missing'"));
	cr_assert_eq(moe_json_get_bool(o, "b", true, &b, "c", &err), 0);
	cr_assert(b);
	cr_assert_eq(moe_json_get_int(o, "f", true, &n, "c", &err), MOE_EFORMAT);
	json_decref(o);
}

Test(json, load_error_has_position, .init = setup, .fini = teardown)
{
	struct moe_error err = {0};
	char *path = moe_path_join(tmpdir, "bad.json");
	cr_assert_eq(moe_atomic_write_file(path, "{\n  \"a\": 1,\n  oops\n}", 20, &err), 0);
	cr_assert_null(moe_json_load_file(path, &err));
	cr_assert(strstr(err.msg, "bad.json:3:"), "%s", err.msg);
	free(path);
}
