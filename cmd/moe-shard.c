/*
 * moe-shard: token streams -> a shard directory with a train/val split; and
 * info, verify and cat on such a directory.  See moe-shard(1), moe-shard(5).
 *
 *   moe-shard -o DIR [options] [FILE...]
 *   moe-shard info [--json] DIR
 *   moe-shard verify DIR
 *   moe-shard cat [--split S] [--format F] DIR
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"

static void usage(FILE *fp)
{
	const char *p = moe_progname();
	fprintf(fp,
		"Usage: %s -o DIR [options] [FILE...]\n"
		"       %s info [--json] DIR|STREAM\n"
		"       %s verify DIR|STREAM\n"
		"       %s cat [--split train|val|all] [--format stream|ids] [-f] DIR\n"
		"Write token streams (FILE..., or standard input) as shards with a train/val split;\n"
		"describe, check or print a shard directory; describe or check a token stream.\n"
		"\n"
		"  -o, --output DIR         shard directory to create\n"
		"  -f, --force              replace a non-empty DIR; cat: binary to a terminal\n"
		"  -z, --compress[=LEVEL]   zstd-compressed blocks (level 1..22) [3]\n"
		"      --block-size N       tokens per compressed block [64K]\n"
		"      --shard-size N       target tokens per shard file [100M]\n"
		"      --val-docs N         the first N documents form the val split [0]\n"
		"      --val-fraction F     or: each document goes to val with probability F\n"
		"      --seed S             seed of --val-fraction [0]\n"
		"      --json               info: print index.json\n"
		"      --split S            cat: train, val or all (input order) [all]\n"
		"      --format F           cat: stream (moe-tokstream(5)) or ids (text) [stream]\n"
		"  -q, --quiet              no progress or warnings\n"
		"  -v, --verbose            more messages\n"
		"  -h, --help               show this help\n"
		"  -V, --version            show the version\n"
		"Sizes take K/M/G (x1024) or k/m/g (x1000) suffixes.\n",
		p, p, p, p);
}

enum {
	OPT_BLOCK = 1000,
	OPT_SHARD_SIZE,
	OPT_VAL_DOCS,
	OPT_VAL_FRACTION,
	OPT_SEED,
	OPT_JSON,
	OPT_SPLIT,
	OPT_FORMAT,
};

static const struct option longopts[] = {
	{"output", required_argument, NULL, 'o'},
	{"force", no_argument, NULL, 'f'},
	{"compress", optional_argument, NULL, 'z'},
	{"block-size", required_argument, NULL, OPT_BLOCK},
	{"shard-size", required_argument, NULL, OPT_SHARD_SIZE},
	{"val-docs", required_argument, NULL, OPT_VAL_DOCS},
	{"val-fraction", required_argument, NULL, OPT_VAL_FRACTION},
	{"seed", required_argument, NULL, OPT_SEED},
	{"json", no_argument, NULL, OPT_JSON},
	{"split", required_argument, NULL, OPT_SPLIT},
	{"format", required_argument, NULL, OPT_FORMAT},
	MOE_TOOL_LONGOPTS,
	{NULL, 0, NULL, 0},
};

struct args {
	const char *cmd; /* NULL: write shards */
	const char *out;
	struct moe_shard_writer_opts w;
	bool force, json, val_docs_set;
	const char *split; /* cat: NULL = all */
	bool ids;
};

static void parse_or_usage(int rc, const struct moe_error *err)
{
	if (rc < 0)
		moe_usage_error("%s", err->msg);
}

/* ---- write ------------------------------------------------------------- */

static bool same_info(const struct moe_tokstream_info *a, const struct moe_tokstream_info *b)
{
	return a->vocab_size == b->vocab_size && a->eos_id == b->eos_id &&
	       memcmp(a->tokenizer_sha256, b->tokenizer_sha256, 32) == 0;
}

static int cmd_write(struct args *a, char **files, int nfiles)
{
	static char *stdin_only[] = {"-"};
	struct moe_error err = {0};
	struct moe_shard_writer *w = NULL;
	struct moe_tokstream_info first;
	const char *first_name = NULL;
	uint64_t tokens = 0;
	if (nfiles == 0) {
		files = stdin_only;
		nfiles = 1;
	}
	moe_cleanup_install();
	struct moe_progress *pr = moe_progress_new("shard", 0, "tok");
	for (int i = 0; i < nfiles; i++) {
		bool is_stdin = strcmp(files[i], "-") == 0;
		const char *name = is_stdin ? "<stdin>" : files[i];
		if (is_stdin && isatty(STDIN_FILENO))
			moe_usage_error("standard input is a terminal, not a token stream "
					"(name the input files or redirect)");
		FILE *fp = is_stdin ? stdin : fopen(files[i], "rb");
		if (!fp) {
			moe_error_errno(&err, "cannot open '%s'", files[i]);
			goto fail;
		}
		struct moe_tokstream_reader *r = moe_tokstream_reader_new(fp, name, &err);
		if (!r) {
			if (!is_stdin)
				fclose(fp);
			goto fail;
		}
		const struct moe_tokstream_info *in = moe_tokstream_reader_info(r);
		if (!w) {
			first = *in;
			first_name = name;
			w = moe_shard_writer_new(a->out, &a->w, in, &err);
			if (!w) {
				moe_tokstream_reader_free(r);
				if (!is_stdin)
					fclose(fp);
				goto fail;
			}
		} else if (!same_info(&first, in)) {
			moe_error_set(&err, MOE_EFORMAT,
				      "%s: vocab_size/eos_id/tokenizer_sha256 (%u/%d/...) differ from "
				      "'%s' (%u/%d/...)",
				      name, in->vocab_size, (int)in->eos_id, first_name, first.vocab_size,
				      (int)first.eos_id);
			moe_tokstream_reader_free(r);
			if (!is_stdin)
				fclose(fp);
			goto fail;
		}
		const uint32_t *ids;
		size_t n;
		int rc;
		while ((rc = moe_tokstream_read_doc(r, &ids, &n, &err)) > 0) {
			if (moe_shard_writer_add(w, ids, n, &err) < 0) {
				rc = -1;
				break;
			}
			tokens += n;
			moe_progress_update(pr, tokens);
		}
		moe_tokstream_reader_free(r);
		if (!is_stdin)
			fclose(fp);
		if (rc < 0)
			goto fail;
	}
	if (moe_shard_writer_commit(w, &err) < 0)
		goto fail;
	moe_progress_free(pr);
	uint64_t d[MOE_N_SPLITS], t[MOE_N_SPLITS];
	moe_shard_writer_counts(w, d, t);
	if (d[MOE_SPLIT_VAL] == 0)
		moe_warn("the val split of '%s' is empty (see --val-docs, --val-fraction)", a->out);
	if (d[MOE_SPLIT_TRAIN] == 0)
		moe_warn("the train split of '%s' is empty", a->out);
	moe_info(2, "wrote '%s': train %" PRIu64 " docs / %" PRIu64 " tokens, val %" PRIu64
		 " docs / %" PRIu64 " tokens",
		 a->out, d[MOE_SPLIT_TRAIN], t[MOE_SPLIT_TRAIN], d[MOE_SPLIT_VAL], t[MOE_SPLIT_VAL]);
	moe_shard_writer_free(w);
	return 0;
fail:
	moe_progress_free(pr);
	moe_shard_writer_free(w); /* removes the temporary directory */
	moe_die_error(&err);
}

/* ---- info and verify of a token stream --------------------------------- */

/* Read a whole token stream (checking everything) and describe it. */
static int stream_info(struct args *a, const char *path, bool verify_only)
{
	struct moe_error err = {0};
	bool is_stdin = strcmp(path, "-") == 0;
	const char *name = is_stdin ? "<stdin>" : path;
	FILE *fp = is_stdin ? stdin : fopen(path, "rb");
	if (!fp)
		moe_die("cannot open '%s': %s", path, strerror(errno));
	struct moe_tokstream_reader *r = moe_tokstream_reader_new(fp, name, &err);
	if (!r)
		moe_die_error(&err);
	const struct moe_tokstream_info in = *moe_tokstream_reader_info(r);
	uint64_t docs = 0, tokens = 0, longest = 0;
	const uint32_t *ids;
	size_t n;
	int rc;
	while ((rc = moe_tokstream_read_doc(r, &ids, &n, &err)) > 0) {
		docs++;
		tokens += n;
		if (n > longest)
			longest = n;
	}
	if (rc < 0)
		moe_die_error(&err);
	moe_tokstream_reader_free(r);
	if (!is_stdin)
		fclose(fp);
	char sha[65];
	bool has_sha = false;
	for (int i = 0; i < 32; i++)
		has_sha |= in.tokenizer_sha256[i] != 0;
	moe_hex(in.tokenizer_sha256, 32, sha);
	if (verify_only) {
		if (moe_verbosity >= 1)
			printf("%s: OK\n", name);
	} else if (a->json) {
		json_t *o = json_pack("{s:s, s:i, s:I, s:i, s:o, s:o, s:I, s:I, s:I}", "format",
				      "moe-tokstream", "version", MOE_TOKSTREAM_VERSION, "vocab_size",
				      (json_int_t)in.vocab_size, "token_width", (int)in.token_width,
				      "eos_id", in.eos_id == MOE_NO_EOS ? json_null() : json_integer(in.eos_id),
				      "tokenizer_sha256", has_sha ? json_string(sha) : json_null(),
				      "documents", (json_int_t)docs, "tokens", (json_int_t)tokens,
				      "longest_document", (json_int_t)longest);
		if (!o || json_dumpf(o, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
			moe_die("write error");
		putchar('\n');
		json_decref(o);
	} else {
		printf("stream:       %s\n", name);
		printf("format:       moe-tokstream version %d\n", MOE_TOKSTREAM_VERSION);
		printf("vocab_size:   %" PRIu32 " (uint%d tokens)\n", in.vocab_size, (int)(8 * in.token_width));
		if (in.eos_id == MOE_NO_EOS)
			printf("eos_id:       none\n");
		else
			printf("eos_id:       %" PRIu32 "\n", in.eos_id);
		printf("tokenizer:    %s\n", has_sha ? sha : "unknown");
		printf("documents:    %" PRIu64 " (longest %" PRIu64 " tokens)\n", docs, longest);
		printf("tokens:       %" PRIu64 "\n", tokens);
	}
	return 0;
}

static bool is_dir(const char *path)
{
	struct stat st;
	return stat(path, &st) == 0 && S_ISDIR(st.st_mode);
}

/* ---- info -------------------------------------------------------------- */

static int64_t iget(const json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static int cmd_info(struct args *a, const char *dir)
{
	struct moe_error err = {0};
	json_t *root = moe_shard_index_load(dir, &err);
	if (!root)
		moe_die_error(&err);
	if (a->json) {
		if (json_dumpf(root, stdout, JSON_INDENT(2) | JSON_PRESERVE_ORDER) < 0)
			moe_die("write error");
		putchar('\n');
		json_decref(root);
		return 0;
	}
	const json_t *eos = json_object_get(root, "eos_id");
	const json_t *sha = json_object_get(root, "tokenizer_sha256");
	const json_t *split = json_object_get(root, "split");
	const char *comp = json_string_value(json_object_get(root, "compression"));
	const char *method = json_string_value(json_object_get(split, "method"));
	printf("directory:    %s\n", dir);
	printf("format:       moe-shards version %" PRId64 "\n", iget(root, "version"));
	printf("vocab_size:   %" PRId64 " (uint%d tokens)\n", iget(root, "vocab_size"),
	       (int)(8 * iget(root, "token_width")));
	if (json_is_integer(eos))
		printf("eos_id:       %" PRId64 "\n", (int64_t)json_integer_value(eos));
	else
		printf("eos_id:       none\n");
	printf("tokenizer:    %s\n", json_is_string(sha) ? json_string_value(sha) : "unknown");
	if (comp && strcmp(comp, "zstd") == 0)
		printf("compression:  zstd level %" PRId64 ", %" PRId64 "-token blocks\n",
		       iget(root, "compression_level"), iget(root, "block_tokens"));
	else
		printf("compression:  none\n");
	if (method && strcmp(method, "val-fraction") == 0)
		printf("val split:    fraction %g, seed %" PRId64 "\n",
		       json_real_value(json_object_get(split, "val_fraction")), iget(split, "seed"));
	else
		printf("val split:    first %" PRId64 " documents\n", iget(split, "val_docs"));
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		const char *name = moe_split_name((enum moe_split)s);
		const json_t *sp = json_object_get(root, name);
		const json_t *shards = json_object_get(sp, "shards");
		int64_t bytes = 0;
		for (size_t i = 0; i < json_array_size(shards); i++)
			bytes += iget(json_array_get(shards, i), "bytes");
		printf("%-5s         %" PRId64 " documents, %" PRId64 " tokens, %zu shard(s), %" PRId64
		       " bytes\n",
		       name, iget(sp, "docs"), iget(sp, "tokens"), json_array_size(shards), bytes);
		if (moe_verbosity >= 2)
			for (size_t i = 0; i < json_array_size(shards); i++) {
				const json_t *e = json_array_get(shards, i);
				printf("  %s  %" PRId64 " docs  %" PRId64 " tokens  sha256 %s\n",
				       json_string_value(json_object_get(e, "file")), iget(e, "docs"),
				       iget(e, "tokens"), json_string_value(json_object_get(e, "sha256")));
			}
	}
	json_decref(root);
	return 0;
}

/* ---- verify ------------------------------------------------------------ */

static void verify_progress(uint64_t bytes, void *arg)
{
	moe_progress_update(arg, bytes);
}

static int cmd_verify(struct args *a, const char *dir)
{
	struct moe_error err = {0};
	struct moe_progress *pr = moe_progress_new("verify", 0, "B");
	int rc = moe_shard_verify(dir, verify_progress, pr, &err);
	moe_progress_free(pr);
	if (rc < 0)
		moe_die_error(&err);
	if (moe_verbosity >= 1)
		printf("%s: OK\n", dir);
	return 0;
}

/* ---- cat --------------------------------------------------------------- */

struct out {
	struct moe_tokstream_writer *tw; /* NULL: ids as text */
};

static int emit(struct out *o, const uint32_t *ids, size_t n, struct moe_error *err)
{
	if (o->tw)
		return moe_tokstream_write_doc(o->tw, ids, n, err);
	for (size_t i = 0; i < n; i++)
		printf(i ? " %" PRIu32 : "%" PRIu32, ids[i]);
	putchar('\n');
	if (ferror(stdout))
		return moe_error_errno(err, "write error");
	return 0;
}

static int cmd_cat(struct args *a, const char *dir)
{
	struct moe_error err = {0};
	struct moe_dataset *ds[MOE_N_SPLITS] = {NULL, NULL};
	uint64_t next[MOE_N_SPLITS] = {0, 0};
	uint32_t *buf = NULL;
	size_t cap = 0;
	struct out o = {NULL};
	bool want[MOE_N_SPLITS] = {true, true};
	if (a->split) {
		enum moe_split s;
		if (moe_split_parse(a->split, &s, &err) < 0)
			moe_usage_error("%s", err.msg);
		want[s] = true;
		want[1 - s] = false;
	}
	for (int s = 0; s < MOE_N_SPLITS; s++)
		if (want[s] && !(ds[s] = moe_dataset_open(dir, (enum moe_split)s, &err)))
			goto fail;
	const struct moe_dataset_info *info = moe_dataset_info(ds[want[0] ? 0 : 1]);
	if (!a->ids) {
		moe_refuse_binary_tty(stdout, a->force);
		struct moe_tokstream_info ti = {
			.vocab_size = info->vocab_size,
			.token_width = info->token_width,
			.eos_id = info->eos_id,
		};
		memcpy(ti.tokenizer_sha256, info->tokenizer_sha256, 32);
		o.tw = moe_tokstream_writer_new(stdout, &ti, "<stdout>", &err);
		if (!o.tw)
			goto fail;
	}
	for (;;) {
		/* the split whose next document came first in the input */
		int pick = -1;
		uint64_t best = 0;
		for (int s = 0; s < MOE_N_SPLITS; s++) {
			uint64_t ord;
			if (!ds[s] || next[s] >= moe_dataset_n_docs(ds[s]))
				continue;
			if (moe_dataset_doc_ordinal(ds[s], next[s], &ord, &err) < 0)
				goto fail;
			if (pick < 0 || ord < best) {
				pick = s;
				best = ord;
			}
		}
		if (pick < 0)
			break;
		size_t n;
		int rc = moe_dataset_read_doc(ds[pick], next[pick], buf, cap, &n, &err);
		if (rc == MOE_ERANGE && n > cap) {
			free(buf);
			cap = n + n / 2 + 16;
			buf = malloc(cap * sizeof(*buf));
			if (!buf) {
				moe_error_set(&err, MOE_ENOMEM, "out of memory");
				goto fail;
			}
			rc = moe_dataset_read_doc(ds[pick], next[pick], buf, cap, &n, &err);
		}
		if (rc < 0 || emit(&o, buf, n, &err) < 0)
			goto fail;
		next[pick]++;
	}
	if (o.tw && moe_tokstream_writer_finish(o.tw, &err) < 0)
		goto fail;
	moe_tokstream_writer_free(o.tw);
	free(buf);
	for (int s = 0; s < MOE_N_SPLITS; s++)
		moe_dataset_free(ds[s]);
	moe_close_stdout();
	return 0;
fail:
	moe_die_error(&err);
}

int main(int argc, char **argv)
{
	struct args a;
	struct moe_error err = {0};
	memset(&a, 0, sizeof(a));
	moe_diag_init(argv[0]);
	moe_shard_writer_opts_init(&a.w);
	int c;
	uint64_t u;
	while ((c = getopt_long(argc, argv, "o:fz::qvhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'o':
			a.out = optarg;
			break;
		case 'f':
			a.force = true;
			break;
		case 'z':
			a.w.compress_level = 3;
			if (optarg) {
				int64_t lv;
				parse_or_usage(moe_parse_i64(optarg, 1, 22, &lv, "compression level", &err),
					       &err);
				a.w.compress_level = (int)lv;
			}
			break;
		case OPT_BLOCK:
			parse_or_usage(moe_parse_size(optarg, &u, "block size", &err), &err);
			if (u == 0 || u > MOE_SHARD_MAX_BLOCK)
				moe_usage_error("block size '%s' out of range", optarg);
			a.w.block_tokens = (uint32_t)u;
			break;
		case OPT_SHARD_SIZE:
			parse_or_usage(moe_parse_size(optarg, &u, "shard size", &err), &err);
			if (u == 0)
				moe_usage_error("shard size '%s' out of range", optarg);
			a.w.shard_tokens = u;
			break;
		case OPT_VAL_DOCS:
			parse_or_usage(moe_parse_u64(optarg, UINT64_MAX, &a.w.val_docs, "val docs", &err),
				       &err);
			a.val_docs_set = true;
			break;
		case OPT_VAL_FRACTION:
			parse_or_usage(moe_parse_double(optarg, 0, 1, &a.w.val_fraction, "val fraction",
							&err),
				       &err);
			break;
		case OPT_SEED:
			parse_or_usage(moe_parse_u64(optarg, INT64_MAX, &a.w.seed, "seed", &err), &err);
			break;
		case OPT_JSON:
			a.json = true;
			break;
		case OPT_SPLIT:
			a.split = strcmp(optarg, "all") == 0 ? NULL : optarg;
			if (a.split && strcmp(a.split, "train") != 0 && strcmp(a.split, "val") != 0)
				moe_usage_error("invalid split '%s' (train, val or all)", optarg);
			break;
		case OPT_FORMAT:
			if (strcmp(optarg, "ids") == 0)
				a.ids = true;
			else if (strcmp(optarg, "stream") == 0)
				a.ids = false;
			else
				moe_usage_error("invalid format '%s' (stream or ids)", optarg);
			break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (a.val_docs_set && a.w.val_fraction > 0)
		moe_usage_error("--val-docs and --val-fraction exclude each other");
	a.w.force = a.force;
	/* with -o the operands are inputs; without, the first is a subcommand */
	if (a.out)
		return cmd_write(&a, argv + optind, argc - optind);
	if (optind < argc && (strcmp(argv[optind], "info") == 0 ||
			      strcmp(argv[optind], "verify") == 0 ||
			      strcmp(argv[optind], "cat") == 0))
		a.cmd = argv[optind++];
	if (!a.cmd)
		moe_usage_error("no output directory (-o DIR)");
	if (argc - optind != 1)
		moe_usage_error("%s takes one shard directory", a.cmd);
	const char *dir = argv[optind];
	bool stream = strcmp(a.cmd, "cat") != 0 && !is_dir(dir);
	if (stream)
		stream_info(&a, dir, strcmp(a.cmd, "verify") == 0);
	else if (strcmp(a.cmd, "info") == 0)
		cmd_info(&a, dir);
	else if (strcmp(a.cmd, "verify") == 0)
		cmd_verify(&a, dir);
	else
		cmd_cat(&a, dir);
	moe_close_stdout();
	return 0;
}
