/*
 * Shard directories and the loader.  Token i of a split has the value
 * (i + offset) so that every window tells where it came from.
 */
#include <criterion/criterion.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"

#define VOCAB (1u << 22)

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static char tmpdir[64];

static void mk_tmp(void)
{
	strcpy(tmpdir, "/tmp/moe-test-data.XXXXXX");
	cr_assert_not_null(mkdtemp(tmpdir));
}

static void rm_tmp(void)
{
	moe_rmtree(tmpdir, NULL);
}

TestSuite(loader, .init = mk_tmp, .fini = rm_tmp);
TestSuite(shards, .init = mk_tmp, .fini = rm_tmp);

/* Documents of random lengths whose tokens count up from 0 within each
 * split: train token i == i, val token i == VOCAB/2 + i.  val_docs first
 * documents go to val.  Returns the path (static). */
static const char *make_dir(const char *name, uint64_t n_docs, uint64_t val_docs, int level,
			    uint64_t shard_tokens, uint32_t block, uint64_t *train_tokens,
			    uint64_t *val_tokens)
{
	static char path[128];
	snprintf(path, sizeof(path), "%s/%s", tmpdir, name);
	struct moe_shard_writer_opts o;
	moe_shard_writer_opts_init(&o);
	o.val_docs = val_docs;
	o.compress_level = level;
	o.shard_tokens = shard_tokens;
	o.block_tokens = block;
	struct moe_tokstream_info info = {.vocab_size = VOCAB, .eos_id = MOE_NO_EOS};
	struct moe_error err = {0};
	struct moe_shard_writer *w = moe_shard_writer_new(path, &o, &info, &err);
	cr_assert_not_null(w, "%s", err.msg);
	uint64_t s = n_docs * 31 + val_docs, next[2] = {0, VOCAB / 2};
	uint32_t buf[700];
	for (uint64_t d = 0; d < n_docs; d++) {
		size_t n = (size_t)(rng(&s) % 700);
		uint64_t *nx = &next[d < val_docs];
		for (size_t i = 0; i < n; i++)
			buf[i] = (uint32_t)(*nx)++;
		cr_assert_eq(moe_shard_writer_add(w, buf, n, &err), 0, "%s", err.msg);
	}
	cr_assert_eq(moe_shard_writer_commit(w, &err), 0, "%s", err.msg);
	moe_shard_writer_free(w);
	if (train_tokens)
		*train_tokens = next[0];
	if (val_tokens)
		*val_tokens = next[1] - VOCAB / 2;
	return path;
}

static struct moe_loader *mk_loader(const char *dir, int T, int B, uint64_t seed, int rank,
				    int world, bool shuffle, int prefetch)
{
	struct moe_loader_opts o;
	moe_loader_opts_init(&o);
	o.dir = dir;
	o.seq_len = T;
	o.batch = B;
	o.seed = seed;
	o.rank = rank;
	o.world_size = world;
	o.shuffle = shuffle;
	o.prefetch = prefetch;
	struct moe_error err = {0};
	struct moe_loader *l = moe_loader_new(&o, &err);
	cr_assert_not_null(l, "%s", err.msg);
	return l;
}

/* Read `count` windows one epoch's worth at a time; checks each row is
 * T+1 consecutive tokens starting at a multiple of T; returns their start
 * window indices. */
static uint64_t *take_windows(struct moe_loader *l, int T, int B, uint64_t count)
{
	uint64_t *out = malloc(count * sizeof(*out));
	int32_t *tok = malloc((size_t)B * (T + 1) * sizeof(int32_t));
	struct moe_error err = {0};
	uint64_t got = 0;
	while (got < count) {
		int rows = moe_loader_next(l, tok, &err);
		cr_assert_eq(rows, B, "%s", err.msg);
		for (int r = 0; r < rows && got < count; r++) {
			const int32_t *row = tok + (size_t)r * (T + 1);
			cr_assert_eq(row[0] % T, 0, "window starts at token %d", row[0]);
			for (int i = 1; i <= T; i++)
				cr_assert_eq(row[i], row[0] + i, "row not contiguous");
			out[got++] = (uint64_t)row[0] / (uint64_t)T;
		}
	}
	free(tok);
	return out;
}

static void check_epoch(const char *dir, uint64_t n_tokens, int T, int B, bool shuffle, int prefetch)
{
	struct moe_loader *l = mk_loader(dir, T, B, 42, 0, 1, shuffle, prefetch);
	uint64_t nw = moe_loader_n_windows(l);
	cr_assert_eq(moe_loader_n_tokens(l), n_tokens);
	/* an independent count: the largest k with k*T + 1 <= n_tokens */
	uint64_t k = 0;
	while ((k + 1) * T + 1 <= n_tokens)
		k++;
	cr_assert_eq(nw, k);
	cr_assert_eq(moe_loader_windows_per_epoch(l), nw);
	uint64_t *w = take_windows(l, T, B, nw);
	/* inputs of an epoch cover tokens [0, nw*T) exactly once */
	uint8_t *seen = calloc(nw * T, 1);
	bool in_order = true;
	for (uint64_t i = 0; i < nw; i++) {
		cr_assert_lt(w[i], nw);
		for (int t = 0; t < T; t++) {
			cr_assert_eq(seen[w[i] * T + t], 0, "token %llu seen twice",
				     (unsigned long long)(w[i] * T + t));
			seen[w[i] * T + t] = 1;
		}
		in_order &= w[i] == i;
	}
	for (uint64_t i = 0; i < nw * T; i++)
		cr_assert_eq(seen[i], 1);
	cr_assert(n_tokens - nw * T <= (uint64_t)T, "tail of %llu tokens left out",
		  (unsigned long long)(n_tokens - nw * T));
	cr_assert_eq(in_order, !shuffle, "shuffle %d but order %d", shuffle, in_order);
	free(seen);
	free(w);
	moe_loader_free(l);
}

Test(loader, epoch_visits_every_token_once)
{
	uint64_t nt;
	const char *d = make_dir("a", 300, 0, 0, 20000, 0, &nt, NULL);
	check_epoch(d, nt, 64, 7, true, 2);
	check_epoch(d, nt, 64, 7, false, 0);
	check_epoch(d, nt, 100, 1, true, 0);
	check_epoch(d, nt, 1, 16, true, 3);
}

Test(loader, epoch_compressed_small_blocks)
{
	uint64_t nt;
	const char *d = make_dir("z", 250, 0, 3, 15000, 333, &nt, NULL);
	check_epoch(d, nt, 50, 5, true, 2);
	check_epoch(d, nt, 1024, 2, false, 1);
}

Test(loader, ranks_are_disjoint)
{
	uint64_t nt;
	const char *d = make_dir("r", 200, 0, 0, 10000, 0, &nt, NULL);
	const int T = 32, W = 3;
	struct moe_loader *l0 = mk_loader(d, T, 4, 9, 0, W, true, 2);
	uint64_t nw = moe_loader_n_windows(l0), per = moe_loader_windows_per_epoch(l0);
	cr_assert_eq(per, nw / W);
	moe_loader_free(l0);
	uint8_t *owner = calloc(nw, 1);
	for (int r = 0; r < W; r++) {
		struct moe_loader *l = mk_loader(d, T, 4, 9, r, W, true, r % 2 ? 2 : 0);
		uint64_t *w = take_windows(l, T, 4, per);
		for (uint64_t i = 0; i < per; i++) {
			cr_assert_eq(owner[w[i]], 0, "window %llu seen by rank %d and rank %d",
				     (unsigned long long)w[i], owner[w[i]] - 1, r);
			owner[w[i]] = (uint8_t)(r + 1);
		}
		free(w);
		moe_loader_free(l);
	}
	uint64_t covered = 0;
	for (uint64_t i = 0; i < nw; i++)
		covered += owner[i] != 0;
	cr_assert_eq(covered, per * W);
	free(owner);
}

static int32_t *batches(struct moe_loader *l, int T, int B, int n)
{
	int32_t *out = malloc((size_t)n * B * (T + 1) * sizeof(int32_t));
	struct moe_error err = {0};
	for (int i = 0; i < n; i++)
		cr_assert_eq(moe_loader_next(l, out + (size_t)i * B * (T + 1), &err), B, "%s", err.msg);
	return out;
}

Test(loader, resume_reproduces_batches)
{
	uint64_t nt;
	const char *d = make_dir("s", 30, 0, 0, 3000, 0, &nt, NULL);
	const int T = 40, B = 6, N = 60; /* runs over several epochs */
	struct moe_loader *a = mk_loader(d, T, B, 1234, 1, 2, true, 3);
	cr_assert_lt(moe_loader_windows_per_epoch(a) * 2, (uint64_t)N * B, "test must cross epochs");
	int32_t *ref = batches(a, T, B, N);
	moe_loader_free(a);
	size_t bsz = (size_t)B * (T + 1);
	for (int cut = 0; cut < N; cut += 7) {
		for (int pf = 0; pf <= 2; pf += 2) {
			struct moe_loader *x = mk_loader(d, T, B, 1234, 1, 2, true, pf);
			int32_t *pre = batches(x, T, B, cut);
			cr_assert(cut == 0 || memcmp(pre, ref, cut * bsz * 4) == 0);
			free(pre);
			json_t *st = moe_loader_state(x);
			char *txt = json_dumps(st, 0);
			json_decref(st);
			moe_loader_free(x);
			/* a fresh loader, as after a restart */
			struct moe_loader *y = mk_loader(d, T, B, 1234, 1, 2, true, 2 - pf);
			json_t *back = json_loads(txt, 0, NULL);
			struct moe_error err = {0};
			cr_assert_eq(moe_loader_restore(y, back, &err), 0, "%s", err.msg);
			json_decref(back);
			free(txt);
			int32_t *rest = batches(y, T, B, N - cut);
			cr_assert(memcmp(rest, ref + cut * bsz, (N - cut) * bsz * 4) == 0,
				  "resume at batch %d differs", cut);
			free(rest);
			moe_loader_free(y);
		}
	}
	free(ref);
}

Test(loader, restore_refuses_other_options)
{
	const char *d = make_dir("o", 80, 0, 0, 8000, 0, NULL, NULL);
	struct moe_loader *a = mk_loader(d, 16, 2, 5, 0, 1, true, 0);
	json_t *st = moe_loader_state(a);
	struct moe_loader *b = mk_loader(d, 16, 2, 6, 0, 1, true, 0);
	struct moe_error err = {0};
	cr_assert_eq(moe_loader_restore(b, st, &err), MOE_EINVAL);
	cr_assert(strstr(err.msg, "seed") != NULL, "%s", err.msg);
	moe_loader_free(b);
	b = mk_loader(d, 17, 2, 5, 0, 1, true, 0);
	cr_assert_eq(moe_loader_restore(b, st, &err), MOE_EINVAL);
	moe_loader_free(b);
	json_decref(st);
	moe_loader_free(a);
}

Test(loader, seeds_and_epochs_change_the_order)
{
	const char *d = make_dir("p", 200, 0, 0, 100000, 0, NULL, NULL);
	struct moe_loader *a = mk_loader(d, 8, 1, 1, 0, 1, true, 0);
	struct moe_loader *b = mk_loader(d, 8, 1, 1, 0, 1, true, 2);
	struct moe_loader *c = mk_loader(d, 8, 1, 2, 0, 1, true, 0);
	uint64_t per = moe_loader_windows_per_epoch(a);
	uint64_t *wa = take_windows(a, 8, 1, 2 * per);
	uint64_t *wb = take_windows(b, 8, 1, 2 * per);
	uint64_t *wc = take_windows(c, 8, 1, per);
	cr_assert(memcmp(wa, wb, 2 * per * 8) == 0, "same seed, different order");
	cr_assert(memcmp(wa, wc, per * 8) != 0, "different seeds, same order");
	cr_assert(memcmp(wa, wa + per, per * 8) != 0, "epoch 2 repeats epoch 1");
	free(wa);
	free(wb);
	free(wc);
	moe_loader_free(a);
	moe_loader_free(b);
	moe_loader_free(c);
}

Test(loader, val_split_single_epoch)
{
	uint64_t nt, nv;
	const char *d = make_dir("v", 300, 25, 0, 5000, 0, &nt, &nv);
	struct moe_loader_opts o;
	moe_loader_opts_init(&o);
	o.dir = d;
	o.split = MOE_SPLIT_VAL;
	o.seq_len = 30;
	o.batch = 8;
	o.shuffle = false;
	o.single_epoch = true;
	for (int pass = 0; pass < 2; pass++) {
		o.prefetch = pass * 2;
		struct moe_error err = {0};
		struct moe_loader *l = moe_loader_new(&o, &err);
		cr_assert_not_null(l, "%s", err.msg);
		cr_assert_eq(moe_loader_n_tokens(l), nv);
		cr_assert_eq(moe_loader_info(l)->n_docs, 25);
		cr_assert_eq(moe_loader_info(l)->split_docs[MOE_SPLIT_TRAIN], 275);
		cr_assert_eq(moe_loader_info(l)->split_tokens[MOE_SPLIT_TRAIN], nt);
		for (int again = 0; again < 2; again++) {
			int32_t tok[8 * 31];
			uint64_t windows = 0;
			int rows;
			while ((rows = moe_loader_next(l, tok, &err)) > 0) {
				for (int r = 0; r < rows; r++) {
					cr_assert_eq(tok[r * 31], (int32_t)(VOCAB / 2 + windows * 30),
						     "val windows in order");
					windows++;
				}
			}
			cr_assert_eq(rows, 0, "%s", err.msg);
			cr_assert_eq(windows, (nv - 1) / 30);
			cr_assert_eq(moe_loader_next(l, tok, &err), 0);
			cr_assert_eq(moe_loader_rewind(l, &err), 0);
		}
		moe_loader_free(l);
	}
}

Test(shards, documents_and_ordinals)
{
	const char *d = make_dir("d", 150, 10, 4, 3000, 100, NULL, NULL);
	struct moe_error err = {0};
	struct moe_dataset *v = moe_dataset_open(d, MOE_SPLIT_VAL, &err);
	struct moe_dataset *t = moe_dataset_open(d, MOE_SPLIT_TRAIN, &err);
	cr_assert(v && t, "%s", err.msg);
	cr_assert_eq(moe_dataset_n_docs(v), 10);
	cr_assert_eq(moe_dataset_n_docs(t), 140);
	cr_assert(moe_dataset_info(t)->compressed);
	cr_assert_gt(moe_dataset_info(t)->n_shards, 3);
	uint64_t expect = 0;
	uint32_t buf[700];
	for (uint64_t i = 0; i < 140; i++) {
		uint64_t start, len, ord;
		size_t n;
		cr_assert_eq(moe_dataset_doc(t, i, &start, &len, &err), 0);
		cr_assert_eq(start, expect);
		cr_assert_eq(moe_dataset_read_doc(t, i, buf, 700, &n, &err), 0, "%s", err.msg);
		cr_assert_eq(n, len);
		for (size_t k = 0; k < n; k++)
			cr_assert_eq(buf[k], start + k);
		cr_assert_eq(moe_dataset_doc_ordinal(t, i, &ord, &err), 0);
		cr_assert_eq(ord, 10 + i);
		expect += len;
	}
	cr_assert_eq(expect, moe_dataset_n_tokens(t));
	uint64_t s, l;
	cr_assert_eq(moe_dataset_doc(t, 140, &s, &l, &err), MOE_ERANGE);
	moe_dataset_free(v);
	moe_dataset_free(t);
	cr_assert_eq(moe_shard_verify(d, NULL, NULL, &err), 0, "%s", err.msg);
}

Test(shards, refuses_non_empty_dir_and_cleans_up)
{
	char path[128];
	snprintf(path, sizeof(path), "%s/full", tmpdir);
	cr_assert_eq(mkdir(path, 0755), 0);
	char f[160];
	snprintf(f, sizeof(f), "%s/keep", path);
	FILE *fp = fopen(f, "w");
	fclose(fp);
	struct moe_shard_writer_opts o;
	moe_shard_writer_opts_init(&o);
	struct moe_tokstream_info info = {.vocab_size = 100, .eos_id = MOE_NO_EOS};
	struct moe_error err = {0};
	cr_assert_null(moe_shard_writer_new(path, &o, &info, &err));
	cr_assert(strstr(err.msg, "not empty") != NULL, "%s", err.msg);
	/* --force, but the writer is dropped before commit: old content stays */
	o.force = true;
	struct moe_shard_writer *w = moe_shard_writer_new(path, &o, &info, &err);
	cr_assert_not_null(w, "%s", err.msg);
	uint32_t ids[] = {1, 2, 3};
	cr_assert_eq(moe_shard_writer_add(w, ids, 3, &err), 0);
	moe_shard_writer_free(w);
	cr_assert_eq(access(f, F_OK), 0);
	/* only "full" remains in tmpdir: no temporary left behind */
	char cmd[256];
	snprintf(cmd, sizeof(cmd), "test $(ls -A %s | wc -l) -eq 1", tmpdir);
	cr_assert_eq(system(cmd), 0, "temporary left in %s", tmpdir);
}

static void flip(const char *path, long off)
{
	FILE *fp = fopen(path, "r+b");
	cr_assert_not_null(fp);
	fseek(fp, off, off < 0 ? SEEK_END : SEEK_SET);
	int c = fgetc(fp);
	fseek(fp, -1, SEEK_CUR);
	fputc(c ^ 0x10, fp);
	fclose(fp);
}

Test(shards, verify_and_open_catch_corruption)
{
	for (int level = 0; level <= 1; level++) {
		char name[8];
		snprintf(name, sizeof(name), "c%d", level);
		const char *d = make_dir(name, 60, 0, level, 1u << 30, 500, NULL, NULL);
		char shard[200];
		snprintf(shard, sizeof(shard), "%s/train-00000.shard", d);
		struct moe_error err = {0};
		cr_assert_eq(moe_shard_verify(d, NULL, NULL, &err), 0, "%s", err.msg);
		/* a byte in the tokens: verify names the file */
		flip(shard, 200);
		cr_assert_lt(moe_shard_verify(d, NULL, NULL, &err), 0);
		cr_assert(strstr(err.msg, "train-00000.shard") != NULL, "%s", err.msg);
		flip(shard, 200);
		/* a byte of the header: open fails too */
		flip(shard, 60);
		cr_assert_null(moe_dataset_open(d, MOE_SPLIT_TRAIN, &err));
		cr_assert(strstr(err.msg, "checksum") != NULL, "%s", err.msg);
		flip(shard, 60);
		/* truncated */
		struct stat st;
		stat(shard, &st);
		cr_assert_eq(truncate(shard, st.st_size - 8), 0);
		cr_assert_null(moe_dataset_open(d, MOE_SPLIT_TRAIN, &err));
		cr_assert_lt(moe_shard_verify(d, NULL, NULL, &err), 0);
	}
}

Test(shards, loader_rejects_ids_outside_vocab)
{
	/* uncompressed uint32 shard: overwrite one token with 0xFFFFFFFF; the
	 * loader reports it instead of passing it on */
	const char *d = make_dir("b", 40, 0, 0, 1u << 30, 0, NULL, NULL);
	char shard[200];
	snprintf(shard, sizeof(shard), "%s/train-00000.shard", d);
	FILE *fp = fopen(shard, "r+b");
	fseek(fp, 192 + 4 * 10, SEEK_SET);
	uint8_t ff[4] = {0xff, 0xff, 0xff, 0xff};
	fwrite(ff, 1, 4, fp);
	fclose(fp);
	struct moe_loader *l = mk_loader(d, 16, 2, 0, 0, 1, false, 2);
	int32_t tok[2 * 17];
	struct moe_error err = {0};
	int rc = moe_loader_next(l, tok, &err);
	cr_assert_lt(rc, 0);
	cr_assert(strstr(err.msg, "vocab_size") != NULL, "%s", err.msg);
	cr_assert_lt(moe_loader_next(l, tok, &err), 0, "error is sticky");
	moe_loader_free(l);
}

Test(shards, wrong_versions_are_refused)
{
	const char *d = make_dir("w", 20, 0, 0, 1u << 30, 0, NULL, NULL);
	char shard[200], index[200];
	snprintf(shard, sizeof(shard), "%s/train-00000.shard", d);
	snprintf(index, sizeof(index), "%s/index.json", d);
	/* shard header version 2 with a valid header checksum */
	FILE *fp = fopen(shard, "r+b");
	uint8_t h[192];
	cr_assert_eq(fread(h, 1, 192, fp), 192);
	moe_put_u32(h + 8, 2);
	moe_put_u64(h + 184, moe_hash64(h, 184));
	rewind(fp);
	fwrite(h, 1, 192, fp);
	fclose(fp);
	struct moe_error err = {0};
	cr_assert_null(moe_dataset_open(d, MOE_SPLIT_TRAIN, &err));
	cr_assert_eq(err.code, MOE_EVERSION, "%s", err.msg);
	cr_assert(strstr(err.msg, "train-00000.shard") && strstr(err.msg, "version"), "%s", err.msg);
	/* index.json version 2 */
	char *buf;
	size_t len;
	cr_assert_eq(moe_read_file(index, &buf, &len, &err), 0);
	char *v = strstr(buf, "\"version\": 1");
	cr_assert_not_null(v);
	v[11] = '2';
	fp = fopen(index, "w");
	fwrite(buf, 1, len, fp);
	fclose(fp);
	free(buf);
	cr_assert_null(moe_dataset_open(d, MOE_SPLIT_TRAIN, &err));
	cr_assert_eq(err.code, MOE_EVERSION, "%s", err.msg);
	cr_assert_lt(moe_shard_verify(d, NULL, NULL, &err), 0);
}
