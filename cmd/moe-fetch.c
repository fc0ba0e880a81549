/*
 * moe-fetch: FineWeb-edu (or any Hub dataset) from the Hugging Face Hub,
 * and Parquet files as JSONL documents.  See moe-fetch(1).
 *
 *   moe-fetch cat [options] FILE...
 *   moe-fetch info FILE...
 *   moe-fetch list [REPO] [options]
 *   moe-fetch get [REPO] -o DIR [options]
 */
#include "config.h"

#include <getopt.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "fetch/fetch.h"
#include "parquet/parquet.h"

static void usage(FILE *fp)
{
	fprintf(fp,
		"Usage: %s cat [-c COLS] [--min-score X] [--min-int-score N] [-n N] FILE...\n"
		"       %s info FILE...\n"
		"       %s list [REPO] [-r REV] [-I GLOB]... [-X GLOB]... [--json]\n"
		"       %s get [REPO] -o DIR [-r REV] [-I GLOB]... [-X GLOB]... [-j N] [--max-files N]\n"
		"                [--verify]\n"
		"Read Parquet files as JSONL documents; list and download Hugging Face Hub datasets.\n"
		"REPO defaults to %s with --include '%s'.\n"
		"\n"
		"cat:\n"
		"  -c, --columns LIST     comma-separated columns to print [all]\n"
		"      --min-score X      keep rows whose 'score' is at least X\n"
		"      --min-int-score N  keep rows whose 'int_score' is at least N\n"
		"  -n, --limit N          stop after N documents\n"
		"list and get:\n"
		"  -r, --revision REV     branch, tag or commit [main]\n"
		"  -I, --include GLOB     only paths matching GLOB (repeatable)\n"
		"  -X, --exclude GLOB     skip paths matching GLOB (repeatable)\n"
		"      --json             list: one JSON object per line\n"
		"  -o, --output DIR       get: destination directory\n"
		"  -j, --jobs N           get: parallel downloads [4]\n"
		"      --max-files N      get: at most N files (in path order)\n"
		"      --verify           get: check the sha256 of files already in place\n"
		"      --retries N        attempts after the first per request [5]\n"
		"common:\n"
		"  -q, --quiet            no progress or warnings\n"
		"  -v, --verbose          more messages\n"
		"  -h, --help             show this help\n"
		"  -V, --version          show the version\n",
		moe_progname(), moe_progname(), moe_progname(), moe_progname(), MOE_HUB_DEFAULT_REPO,
		MOE_HUB_DEFAULT_INCLUDE);
}

enum { OPT_MIN_SCORE = 1000, OPT_MIN_INT_SCORE, OPT_JSON, OPT_MAX_FILES, OPT_RETRIES, OPT_VERIFY };

static const struct option longopts[] = {
	{"columns", required_argument, NULL, 'c'},
	{"min-score", required_argument, NULL, OPT_MIN_SCORE},
	{"min-int-score", required_argument, NULL, OPT_MIN_INT_SCORE},
	{"limit", required_argument, NULL, 'n'},
	{"revision", required_argument, NULL, 'r'},
	{"include", required_argument, NULL, 'I'},
	{"exclude", required_argument, NULL, 'X'},
	{"json", no_argument, NULL, OPT_JSON},
	{"output", required_argument, NULL, 'o'},
	{"jobs", required_argument, NULL, 'j'},
	{"max-files", required_argument, NULL, OPT_MAX_FILES},
	{"retries", required_argument, NULL, OPT_RETRIES},
	{"verify", no_argument, NULL, OPT_VERIFY},
	MOE_TOOL_LONGOPTS,
	{NULL, 0, NULL, 0},
};

struct args {
	const char *cmd;
	/* cat */
	char **columns;
	int ncolumns;
	struct moe_pq_cat_opts cat;
	/* list/get */
	const char *revision;
	const char **include;
	int ninclude;
	const char **exclude;
	int nexclude;
	bool json;
	const char *outdir;
	int64_t jobs;
	int64_t max_files;
	int64_t retries;
	bool verify;
};

static void split_columns(struct args *a, const char *s)
{
	char *copy = strdup(s);
	if (!copy)
		moe_die("out of memory");
	for (char *tok = strtok(copy, ","); tok; tok = strtok(NULL, ",")) {
		a->columns = realloc(a->columns, (size_t)(a->ncolumns + 1) * sizeof(*a->columns));
		if (!a->columns)
			moe_die("out of memory");
		a->columns[a->ncolumns++] = tok;
	}
	if (a->ncolumns == 0)
		moe_usage_error("empty column list '%s'", s);
}

static void push(const char ***v, int *n, const char *s)
{
	*v = realloc(*v, (size_t)(*n + 1) * sizeof(**v));
	if (!*v)
		moe_die("out of memory");
	(*v)[(*n)++] = s;
}

/* ---- cat ----------------------------------------------------------------- */

static void cat_progress(void *ctx, uint64_t rows)
{
	moe_progress_update(ctx, rows);
}

static int cmd_cat(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	if (argc == 0)
		moe_usage_error("cat: no Parquet FILE given");
	a->cat.columns = (const char *const *)a->columns;
	a->cat.ncolumns = a->ncolumns;
	struct moe_jsonl_out *o = moe_jsonl_out_new(stdout);
	if (!o)
		moe_die("out of memory");
	uint64_t rows = 0;
	struct moe_progress *pg = moe_progress_new("cat", 0, "docs");
	a->cat.progress = cat_progress;
	a->cat.progress_ctx = pg;
	double t0 = moe_now();
	for (int i = 0; i < argc; i++) {
		if (a->cat.limit && rows >= a->cat.limit)
			break;
		if (moe_pq_cat(argv[i], &a->cat, o, &rows, &err) < 0) {
			moe_jsonl_out_flush(o, &(struct moe_error){0});
			moe_progress_free(pg);
			moe_die_error(&err);
		}
	}
	moe_progress_free(pg);
	if (moe_jsonl_out_flush(o, &err) < 0)
		moe_die("write error on standard output: %s", err.msg);
	double dt = moe_now() - t0;
	uint64_t tb = moe_jsonl_out_text_bytes(o);
	moe_info(2, "%llu documents, %.1f MB of strings in %.3f s (%.0f MB/s)",
		 (unsigned long long)rows, tb / 1e6, dt, dt > 0 ? tb / 1e6 / dt : 0.0);
	moe_jsonl_out_free(o);
	moe_close_stdout();
	return 0;
}

/* ---- info ---------------------------------------------------------------- */

static int cmd_info(struct args *a, int argc, char **argv)
{
	(void)a;
	if (argc == 0)
		moe_usage_error("info: no Parquet FILE given");
	for (int i = 0; i < argc; i++) {
		struct moe_error err = {0};
		struct moe_pq_file *f = moe_pq_open(argv[i], &err);
		if (!f)
			moe_die_error(&err);
		int ng = moe_pq_num_row_groups(f), nc = moe_pq_num_columns(f);
		printf("%s\n  %lld rows, %d row groups, %d columns%s%s\n", argv[i],
		       (long long)moe_pq_num_rows(f), ng, nc, moe_pq_created_by(f) ? ", written by " : "",
		       moe_pq_created_by(f) ? moe_pq_created_by(f) : "");
		printf("  %-20s %-22s %-8s %-12s %-34s %12s %12s\n", "column", "type", "nulls", "codec",
		       "encodings", "compressed", "uncompressed");
		for (int c = 0; c < nc; c++) {
			const struct moe_pq_column_info *ci = moe_pq_column(f, c);
			int64_t cs = 0, us = 0;
			uint32_t enc = 0;
			const char *codec = "-";
			for (int g = 0; g < ng; g++) {
				struct moe_pq_chunk_info k;
				moe_pq_chunk_info(f, g, c, &k);
				cs += k.compressed_size;
				us += k.uncompressed_size;
				enc |= k.encodings;
				if (g == 0)
					codec = k.codec;
				else if (strcmp(codec, k.codec) != 0)
					codec = "mixed";
			}
			char encs[128] = "", type[40];
			for (int e = 0; e < 32; e++)
				if (enc & (1u << e)) {
					size_t l = strlen(encs);
					snprintf(encs + l, sizeof(encs) - l, "%s%s", l ? "," : "",
						 moe_pq_encoding_name(e));
				}
			snprintf(type, sizeof(type), "%s%s", moe_pq_type_name(ci->type),
				 ci->is_string ? " string" : "");
			printf("  %-20s %-22s %-8s %-12s %-34s %12lld %12lld\n", ci->name, type,
			       ci->max_rep ? "repeated" : ci->max_def ? "optional" : "required", codec,
			       encs[0] ? encs : "-", (long long)cs, (long long)us);
		}
		moe_pq_close(f);
	}
	moe_close_stdout();
	return 0;
}

/* ---- list / get ---------------------------------------------------------- */

static pthread_mutex_t log_lock = PTHREAD_MUTEX_INITIALIZER;

static void log_cb(void *ctx, int level, const char *msg)
{
	(void)ctx;
	if (level <= 1)
		moe_warn("%s", msg);
	else
		moe_info(level, "%s", msg);
}

/* HF_TOKEN, HUGGING_FACE_HUB_TOKEN, then the file $HF_TOKEN_PATH (default
 * $HF_HOME/token, $HF_HOME defaulting to ~/.cache/huggingface), as
 * huggingface_hub does.  The result is never printed. */
static const char *hub_token(void)
{
	static char buf[512];
	const char *t = getenv("HF_TOKEN");
	if (!t || !*t)
		t = getenv("HUGGING_FACE_HUB_TOKEN");
	if (t && *t)
		return t;
	char path[4096];
	const char *tp = getenv("HF_TOKEN_PATH"), *home = getenv("HF_HOME");
	if (tp && *tp)
		snprintf(path, sizeof(path), "%s", tp);
	else if (home && *home)
		snprintf(path, sizeof(path), "%s/token", home);
	else if (getenv("HOME"))
		snprintf(path, sizeof(path), "%s/.cache/huggingface/token", getenv("HOME"));
	else
		return NULL;
	FILE *fp = fopen(path, "r");
	if (!fp)
		return NULL;
	size_t n = fread(buf, 1, sizeof(buf) - 1, fp);
	fclose(fp);
	buf[n] = 0;
	while (n > 0 && (buf[n - 1] == '\n' || buf[n - 1] == '\r' || buf[n - 1] == ' '))
		buf[--n] = 0;
	return n ? buf : NULL;
}

static struct moe_hub *hub_open(struct args *a, const char *repo)
{
	struct moe_error err = {0};
	struct moe_hub_opts ho = {
		.endpoint = NULL,
		.token = hub_token(),
		.repo = repo,
		.retries = (int)a->retries,
		.backoff = 1.0,
		.max_backoff = 60,
		.stall_timeout = 60,
		.log = log_cb,
	};
	const char *b = getenv("MOE_FETCH_BACKOFF");
	if (b && *b && moe_parse_double(b, 0, 3600, &ho.backoff, "MOE_FETCH_BACKOFF", &err) < 0)
		moe_die_error(&err);
	const char *st = getenv("MOE_FETCH_STALL_TIMEOUT");
	if (st && *st) {
		int64_t v;
		if (moe_parse_i64(st, 1, 86400, &v, "MOE_FETCH_STALL_TIMEOUT", &err) < 0)
			moe_die_error(&err);
		ho.stall_timeout = (long)v;
	}
	struct moe_hub *h = moe_hub_new(&ho, &err);
	if (!h)
		moe_die_error(&err);
	return h;
}

static void fmt_size(char *buf, size_t cap, uint64_t n)
{
	static const char *u[] = {"B", "KB", "MB", "GB", "TB"};
	double v = (double)n;
	int i = 0;
	while (v >= 1000 && i < 4) {
		v /= 1000;
		i++;
	}
	if (i == 0)
		snprintf(buf, cap, "%llu B", (unsigned long long)n);
	else
		snprintf(buf, cap, "%.1f %s", v, u[i]);
}

static int list_files(struct args *a, int argc, char **argv, struct moe_hub **hp, char commit[65],
		      struct moe_hub_entry **ents, size_t *n)
{
	struct moe_error err = {0};
	const char *repo = MOE_HUB_DEFAULT_REPO;
	if (argc > 1)
		moe_usage_error("%s: too many operands", a->cmd);
	if (argc == 1) {
		repo = argv[0];
	} else if (a->ninclude == 0) {
		push(&a->include, &a->ninclude, MOE_HUB_DEFAULT_INCLUDE);
	}
	struct moe_hub *h = hub_open(a, repo);
	if (moe_hub_revision(h, a->revision, commit, &err) < 0)
		moe_die_error(&err);
	moe_info(2, "%s@%s is commit %s", repo, a->revision, commit);
	if (moe_hub_list(h, commit, a->include, a->ninclude, a->exclude, a->nexclude, ents, n, &err) < 0)
		moe_die_error(&err);
	if (*n == 0)
		moe_warn("no file of %s at %s matches the --include/--exclude patterns", repo, commit);
	*hp = h;
	return 0;
}

static int cmd_list(struct args *a, int argc, char **argv)
{
	struct moe_hub *h;
	struct moe_hub_entry *e;
	size_t n;
	char commit[65];
	list_files(a, argc, argv, &h, commit, &e, &n);
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		total += e[i].size;
		if (a->json) {
			json_t *o = json_pack("{s:s, s:I, s:s, s:s, s:s}", "path", e[i].path, "size",
					      (json_int_t)e[i].size, "sha256", e[i].sha256, "oid",
					      e[i].oid, "commit", commit);
			char *s = o ? json_dumps(o, JSON_COMPACT | JSON_ENSURE_ASCII) : NULL;
			if (!s)
				moe_die("out of memory");
			printf("%s\n", s);
			free(s);
			json_decref(o);
		} else {
			char sz[32];
			fmt_size(sz, sizeof(sz), e[i].size);
			printf("%-48s %14llu  %9s  %s\n", e[i].path, (unsigned long long)e[i].size, sz,
			       e[i].sha256[0] ? e[i].sha256 : "-");
		}
	}
	if (!a->json) {
		char sz[32];
		fmt_size(sz, sizeof(sz), total);
		printf("%zu files, %llu bytes (%s) at commit %s\n", n, (unsigned long long)total, sz,
		       commit);
	}
	moe_hub_entries_free(e, n);
	moe_hub_free(h);
	moe_close_stdout();
	return 0;
}

struct prog_ctx {
	struct moe_progress *p;
	bool total_set;
};

static void progress_cb(void *ctx, uint64_t done, uint64_t total)
{
	struct prog_ctx *pc = ctx;
	pthread_mutex_lock(&log_lock);
	if (!pc->total_set) {
		moe_progress_set_total(pc->p, total);
		pc->total_set = true;
	}
	moe_progress_update(pc->p, done);
	pthread_mutex_unlock(&log_lock);
}

static int cmd_get(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_hub *h;
	struct moe_hub_entry *e;
	size_t n;
	char commit[65];
	if (!a->outdir)
		moe_usage_error("get: no output directory (-o DIR)");
	list_files(a, argc, argv, &h, commit, &e, &n);
	size_t use = n;
	if (a->max_files >= 0 && (uint64_t)a->max_files < use)
		use = (size_t)a->max_files;
	uint64_t total = 0;
	for (size_t i = 0; i < use; i++)
		total += e[i].size;
	moe_info(2, "%zu files, %llu bytes", use, (unsigned long long)total);
	struct prog_ctx pc = {.p = moe_progress_new("get", total, "B")};
	struct moe_fetch_opts fo = {
		.dir = a->outdir,
		.jobs = (int)a->jobs,
		.verify = a->verify,
		.progress = progress_cb,
		.progress_ctx = &pc,
	};
	struct moe_fetch_result res = {0};
	moe_interrupt_install();
	int rc = moe_hub_download(h, commit, e, use, &fo, &res, &err);
	moe_progress_free(pc.p);
	moe_info(1 + (rc == 0 && res.fetched == 0), "%zu fetched, %zu already present, %zu failed (%llu bytes transferred)",
		 res.fetched, res.skipped, res.failed, (unsigned long long)res.bytes);
	moe_hub_entries_free(e, n);
	moe_hub_free(h);
	if (rc < 0)
		moe_die_error(&err);
	moe_close_stdout();
	return 0;
}

int main(int argc, char **argv)
{
	struct moe_error err = {0};
	/* static: the option vectors live until exit */
	static struct args a = {.revision = "main", .jobs = 4, .max_files = -1, .retries = 5};
	int c;

	moe_diag_init(argv[0]);
	if (argc >= 2 && argv[1][0] != '-')
		a.cmd = argv[1];
	int first = a.cmd ? 2 : 1;
	/* getopt over the arguments after the subcommand */
	char **av = argv + first - 1;
	int ac = argc - first + 1;
	av[0] = argv[0];
	while ((c = getopt_long(ac, av, "c:n:r:I:X:o:j:qvhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'c':
			split_columns(&a, optarg);
			break;
		case OPT_MIN_SCORE:
			if (moe_parse_double(optarg, -1e308, 1e308, &a.cat.min_score, "score", &err) < 0)
				moe_usage_error("%s", err.msg);
			a.cat.use_min_score = true;
			break;
		case OPT_MIN_INT_SCORE:
			if (moe_parse_i64(optarg, INT64_MIN, INT64_MAX, &a.cat.min_int_score, "int score",
					  &err) < 0)
				moe_usage_error("%s", err.msg);
			a.cat.use_min_int_score = true;
			break;
		case 'n':
			if (moe_parse_u64(optarg, UINT64_MAX, &a.cat.limit, "limit", &err) < 0)
				moe_usage_error("%s", err.msg);
			break;
		case 'r':
			a.revision = optarg;
			break;
		case 'I':
			push(&a.include, &a.ninclude, optarg);
			break;
		case 'X':
			push(&a.exclude, &a.nexclude, optarg);
			break;
		case OPT_JSON:
			a.json = true;
			break;
		case 'o':
			a.outdir = optarg;
			break;
		case 'j':
			if (moe_parse_i64(optarg, 1, 64, &a.jobs, "job count", &err) < 0)
				moe_usage_error("%s", err.msg);
			break;
		case OPT_MAX_FILES:
			if (moe_parse_i64(optarg, 0, INT64_MAX, &a.max_files, "file count", &err) < 0)
				moe_usage_error("%s", err.msg);
			break;
		case OPT_VERIFY:
			a.verify = true;
			break;
		case OPT_RETRIES:
			if (moe_parse_i64(optarg, 0, 100, &a.retries, "retry count", &err) < 0)
				moe_usage_error("%s", err.msg);
			break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (!a.cmd)
		moe_usage_error("no command given (cat, info, list or get)");
	argc = ac - optind;
	argv = av + optind;
	if (strcmp(a.cmd, "cat") == 0)
		return cmd_cat(&a, argc, argv);
	if (strcmp(a.cmd, "list") == 0)
		return cmd_list(&a, argc, argv);
	if (strcmp(a.cmd, "get") == 0)
		return cmd_get(&a, argc, argv);
	if (strcmp(a.cmd, "info") == 0)
		return cmd_info(&a, argc, argv);
	moe_usage_error("unknown command '%s' (cat, info, list or get)", a.cmd);
}
