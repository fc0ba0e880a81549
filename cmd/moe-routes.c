/*
 * moe-routes: routing traces of MoE models and their statistics.
 * See moe-routes(1) and moe-routes(5).
 *
 *   moe-routes run CKPT (--docs FILE -t TOK | --data DIR [--split val]) -o OUT
 *   moe-routes stats OUT [-o DIR] [--label FIELD] [--window S]
 *   moe-routes plot OUT -o DIR [--layer N]
 *   moe-routes diff A B [-o FILE.csv] [--tol X]
 *   moe-routes check OUT
 *   moe-routes synth -o OUT --tokens N [--layers L --experts E --top-k K ...]
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "routes/routes.h"

static void usage(FILE *fp)
{
	const char *p = moe_progname();

	fprintf(fp,
		"Usage: %s run CKPT (--docs FILE.jsonl -t TOKENIZER | --data DIR [--split val]) -o OUT\n"
		"           [--max-tokens N] [--seq-len T] [--overlap N] [--batch B] [--logits] [--jsonl]\n"
		"           [--no-csv] [--device cpu|cuda]\n"
		"       %s stats OUT [-o DIR] [--label FIELD] [--window S] [--path-sample N]\n"
		"       %s plot OUT -o DIR [--layer N] [--window S]\n"
		"       %s diff A B [-o FILE.csv] [--tol X]\n"
		"       %s check OUT\n"
		"       %s synth -o OUT --tokens N [--layers L] [--experts E] [--top-k K] [--vocab V]\n"
		"           [--seed S] [--logits] [--no-csv] [--weights f32|bf16]\n"
		"Record which experts every token passes through, and analyse such traces.\n"
		"\n"
		"  -o, --output PATH        output directory (diff: CSV of disagreements)\n"
		"      --docs FILE          run: JSONL documents ('-': standard input)\n"
		"  -t, --tokenizer FILE     run: tokenizer.json\n"
		"      --text-field NAME    run: document text field [text]\n"
		"      --data DIR           run: shard directory (instead of --docs)\n"
		"      --split S            run: shard split [val]\n"
		"      --max-tokens N       run: stop after N tokens\n"
		"      --seq-len T          run: window length [model's max_position_embeddings]\n"
		"      --overlap N          run: context repeated between windows [seq-len/2]\n"
		"      --batch B            run: windows per forward pass [8]\n"
		"      --logits             run, synth: store the full router logits\n"
		"      --jsonl              run, synth: also write tokens.jsonl\n"
		"      --no-csv             run, synth: no CSV views\n"
		"      --device NAME        run: cpu or cuda [cpu]\n"
		"      --label FIELD        stats: per-label tables for a document field\n"
		"      --window S           stats, plot: path window / continuity steps [3]\n"
		"      --path-sample N      stats: tokens used for path counts, 0 = all [1000000]\n"
		"      --top-paths N        stats: paths listed per window [20]\n"
		"      --top-tokens N       stats: tokens listed per expert [10]\n"
		"      --min-count N        stats: occurrences for token tables [5]\n"
		"      --layer N            plot: MoE layer of the top-token figure [middle]\n"
		"      --tol X              diff: margin below which a disagreement is a near-tie [0.001]\n"
		"      --tokens N, --layers L, --experts E, --top-k K, --vocab V, --seed S,\n"
		"      --doc-len N, --stick P, --weights f32|bf16   synth: the synthetic trace\n"
		"  -f, --force              replace an existing output directory\n"
		"  -q, --quiet              no progress or summaries\n"
		"  -v, --verbose            more messages\n"
		"  -h, --help               show this help\n"
		"  -V, --version            show the version\n",
		p, p, p, p, p, p);
}

enum {
	OPT_DOCS = 1000, OPT_TEXT_FIELD, OPT_DATA, OPT_SPLIT, OPT_MAX_TOKENS, OPT_SEQ_LEN, OPT_LOGITS,
	OPT_JSONL, OPT_NO_CSV, OPT_DEVICE, OPT_LABEL, OPT_WINDOW, OPT_PATH_SAMPLE, OPT_TOP_PATHS,
	OPT_TOP_TOKENS, OPT_MIN_COUNT, OPT_LAYER, OPT_TOL, OPT_TOKENS, OPT_LAYERS, OPT_EXPERTS,
	OPT_TOPK, OPT_VOCAB, OPT_SEED, OPT_DOC_LEN, OPT_STICK, OPT_WEIGHTS, OPT_OVERLAP, OPT_BATCH,
};

static const struct option longopts[] = {
	{"output", required_argument, NULL, 'o'},
	{"tokenizer", required_argument, NULL, 't'},
	{"docs", required_argument, NULL, OPT_DOCS},
	{"text-field", required_argument, NULL, OPT_TEXT_FIELD},
	{"data", required_argument, NULL, OPT_DATA},
	{"split", required_argument, NULL, OPT_SPLIT},
	{"max-tokens", required_argument, NULL, OPT_MAX_TOKENS},
	{"seq-len", required_argument, NULL, OPT_SEQ_LEN},
	{"overlap", required_argument, NULL, OPT_OVERLAP},
	{"batch", required_argument, NULL, OPT_BATCH},
	{"logits", no_argument, NULL, OPT_LOGITS},
	{"jsonl", no_argument, NULL, OPT_JSONL},
	{"no-csv", no_argument, NULL, OPT_NO_CSV},
	{"device", required_argument, NULL, OPT_DEVICE},
	{"label", required_argument, NULL, OPT_LABEL},
	{"window", required_argument, NULL, OPT_WINDOW},
	{"path-sample", required_argument, NULL, OPT_PATH_SAMPLE},
	{"top-paths", required_argument, NULL, OPT_TOP_PATHS},
	{"top-tokens", required_argument, NULL, OPT_TOP_TOKENS},
	{"min-count", required_argument, NULL, OPT_MIN_COUNT},
	{"layer", required_argument, NULL, OPT_LAYER},
	{"tol", required_argument, NULL, OPT_TOL},
	{"tokens", required_argument, NULL, OPT_TOKENS},
	{"layers", required_argument, NULL, OPT_LAYERS},
	{"experts", required_argument, NULL, OPT_EXPERTS},
	{"top-k", required_argument, NULL, OPT_TOPK},
	{"vocab", required_argument, NULL, OPT_VOCAB},
	{"seed", required_argument, NULL, OPT_SEED},
	{"doc-len", required_argument, NULL, OPT_DOC_LEN},
	{"stick", required_argument, NULL, OPT_STICK},
	{"weights", required_argument, NULL, OPT_WEIGHTS},
	{"force", no_argument, NULL, 'f'},
	MOE_TOOL_LONGOPTS,
	{NULL, 0, NULL, 0},
};

struct args {
	const char *out, *tokenizer, *docs, *text_field, *data, *split, *device, *label;
	int64_t max_tokens, path_sample;
	int seq_len, overlap, batch, window, top_paths, top_tokens, min_count, layer;
	double tol;
	bool logits, jsonl, no_csv, force;
	struct moe_synth_opts synth;
	bool bf16;
	unsigned seen; /* which subcommand-specific options were given (for checks) */
};

static int64_t num(const char *s, int64_t min, int64_t max, const char *what)
{
	struct moe_error err = {0};
	uint64_t u;
	int64_t v;

	/* sizes with suffixes for token counts */
	if (!strcmp(what, "--max-tokens") || !strcmp(what, "--tokens") || !strcmp(what, "--path-sample")) {
		if (moe_parse_size(s, &u, what, &err) < 0 || u > (uint64_t)max || (int64_t)u < min)
			moe_usage_error("invalid %s '%s'", what, s);
		return (int64_t)u;
	}
	if (moe_parse_i64(s, min, max, &v, what, &err) < 0)
		moe_usage_error("%s", err.msg);
	return v;
}

static double dnum(const char *s, double min, double max, const char *what)
{
	struct moe_error err = {0};
	double v;

	if (moe_parse_double(s, min, max, &v, what, &err) < 0)
		moe_usage_error("%s", err.msg);
	return v;
}

static void progress_cb(void *ctx, int64_t tokens)
{
	moe_progress_update(ctx, (uint64_t)tokens);
}

static struct moe_trace *open_trace(const char *dir)
{
	struct moe_error err = {0};
	struct moe_trace *tr = moe_trace_open(dir, &err);

	if (!tr)
		moe_die("cannot open trace '%s': %s", dir, err.msg);
	return tr;
}

static unsigned views_of(const struct args *a)
{
	return (a->no_csv ? 0u : (unsigned)MOE_VIEW_CSV) | (a->jsonl ? (unsigned)MOE_VIEW_JSONL : 0u);
}

static int cmd_run(struct args *a, int argc, char **argv)
{
	struct moe_routes_run_opts o = {0};
	struct moe_error err = {0};
	struct moe_progress *pg;
	int64_t n = 0;
	double t0 = moe_now();

	if (argc != 1)
		moe_usage_error("run: expected one checkpoint operand");
	if (!a->out)
		moe_usage_error("run: -o OUT is required");
	if (!!a->docs == !!a->data)
		moe_usage_error("run: give exactly one of --docs and --data");
	if (a->docs && !a->tokenizer)
		moe_usage_error("run: --docs needs -t TOKENIZER");
	if (!a->force && access(a->out, F_OK) == 0)
		moe_die("'%s' exists (use -f to replace it)", a->out);
	o.ckpt = argv[0];
	o.docs = a->docs;
	o.text_field = a->text_field;
	o.tokenizer = a->tokenizer;
	o.data_dir = a->data;
	o.split = a->split;
	o.out = a->out;
	o.device = a->device;
	o.max_tokens = a->max_tokens;
	o.seq_len = a->seq_len;
	o.overlap = a->overlap;
	o.batch = a->batch;
	o.logits = a->logits;
	o.replace = a->force;
	o.views = views_of(a);
	pg = moe_progress_new("tracing", a->max_tokens > 0 ? (uint64_t)a->max_tokens : 0, "tok");
	o.progress = progress_cb;
	o.progress_ctx = pg;
	moe_cleanup_install();
	if (moe_routes_run(&o, &n, &err) < 0) {
		moe_progress_free(pg);
		moe_die_error(&err);
	}
	moe_progress_free(pg);
	moe_info(1, "traced %lld tokens into '%s' (%.1f s)", (long long)n, a->out, moe_now() - t0);
	return 0;
}

static int cmd_synth(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_trace *tr;
	struct moe_trace_save_opts so = {0};

	(void)argv;
	if (argc != 0)
		moe_usage_error("synth: unexpected operand");
	if (!a->out)
		moe_usage_error("synth: -o OUT is required");
	if (a->synth.K >= a->synth.E)
		moe_usage_error("synth: --top-k must be less than --experts");
	a->synth.logits = a->logits;
	tr = moe_trace_synth(&a->synth, &err);
	if (!tr)
		moe_die_error(&err);
	so.views = views_of(a);
	so.weights_dtype = a->bf16 ? MOE_BF16 : MOE_F32;
	so.replace = a->force;
	moe_cleanup_install();
	if (!a->force && access(a->out, F_OK) == 0)
		moe_die("'%s' exists (use -f to replace it)", a->out);
	if (moe_trace_save(tr, a->out, &so, &err) < 0)
		moe_die_error(&err);
	moe_info(2, "wrote %lld synthetic tokens to '%s'", (long long)tr->T, a->out);
	moe_trace_free(tr);
	return 0;
}

static void print_layers(const struct moe_route_stats *s, int L)
{
	printf("%5s %8s %8s %8s %6s %6s %8s %8s %8s\n", "layer", "H_top1", "H_norm", "KL_top1",
	       "cv%", "dead", "lb_loss", "ec", "ec_any");
	for (int l = 0; l < L; l++) {
		const struct moe_layer_summary *m = moe_route_stats_layer(s, l);

		printf("%5d %8.3f %8.3f %8.3f %6.1f %6d %8.3f", l, m->token_entropy, m->norm_entropy,
		       m->token_kl, m->cv_percent, m->n_dead,
		       isnan(m->lb_loss) ? m->lb_loss_weights : m->lb_loss);
		/* Continuity needs a next layer: the last one prints "-". */
		if (isnan(m->ec))
			printf(" %8s %8s\n", "-", "-");
		else
			printf(" %8.3f %8.3f\n", m->ec, m->ec_any);
	}
}

static struct moe_route_stats *compute(const struct args *a, const struct moe_trace *tr)
{
	struct moe_route_stats_opts so = {0};
	struct moe_route_stats *s;
	struct moe_error err = {0};

	so.window = a->window;
	so.path_sample = a->path_sample;
	so.top_paths = a->top_paths;
	so.top_tokens = a->top_tokens;
	so.min_count = a->min_count;
	so.label = a->label;
	if (moe_route_stats_compute(tr, &so, &s, &err) < 0)
		moe_die_error(&err);
	return s;
}

static int cmd_stats(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_trace *tr;
	struct moe_route_stats *s;
	char *dir;
	double t0 = moe_now(), t1;

	if (argc != 1)
		moe_usage_error("stats: expected one trace directory");
	tr = open_trace(argv[0]);
	s = compute(a, tr);
	t1 = moe_now();
	dir = a->out ? strdup(a->out) : moe_path_join(argv[0], "stats");
	if (!dir)
		moe_die("out of memory");
	moe_cleanup_install();
	if (moe_route_stats_write(s, tr, dir, &err) < 0)
		moe_die("%s: %s", dir, err.msg);
	if (moe_verbosity >= 1) {
		print_layers(s, tr->L);
		printf("stats of %lld tokens x %d layers in %.2f s (+%.2f s writing) -> %s\n",
		       (long long)tr->T, tr->L, t1 - t0, moe_now() - t1, dir);
	}
	free(dir);
	moe_route_stats_free(s);
	moe_trace_free(tr);
	return 0;
}

static int cmd_plot(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_trace *tr;
	struct moe_route_stats *s;

	if (argc != 1)
		moe_usage_error("plot: expected one trace directory");
	if (!a->out)
		moe_usage_error("plot: -o DIR is required");
	tr = open_trace(argv[0]);
	if (a->layer >= tr->L)
		moe_usage_error("plot: --layer %d out of range (the trace has %d MoE layers)", a->layer,
				tr->L);
	s = compute(a, tr);
	moe_cleanup_install();
	if (moe_routes_plot(s, tr, a->out, a->layer, &err) < 0)
		moe_die("%s: %s", a->out, err.msg);
	moe_info(2, "figures written to '%s'", a->out);
	moe_route_stats_free(s);
	moe_trace_free(tr);
	return 0;
}

static int cmd_diff(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_trace *ta, *tb;
	struct moe_trace_diff_layer *d;
	struct moe_atomic at = {0};
	FILE *fp = NULL;
	int rc;
	int64_t tot = 0, ties = 0;

	if (argc != 2)
		moe_usage_error("diff: expected two trace directories");
	ta = open_trace(argv[0]);
	tb = open_trace(argv[1]);
	d = calloc((size_t)ta->L, sizeof *d);
	if (!d)
		moe_die("out of memory");
	moe_cleanup_install();
	if (a->out) {
		if (moe_atomic_open(&at, a->out, &err) < 0)
			moe_die_error(&err);
		fp = at.fp;
	}
	rc = moe_trace_diff(ta, tb, a->tol, d, fp, &err);
	if (rc < 0) {
		if (fp)
			moe_atomic_abort(&at);
		moe_die_error(&err);
	}
	if (fp && moe_atomic_commit(&at, &err) < 0)
		moe_die_error(&err);
	printf("layer_ix,n_tokens,topk_overlap,top1_agree,set_agree,order_agree,max_weight_diff,"
	       "mean_weight_diff,n_disagree,n_near_tie,max_margin_at_disagreement\n");
	for (int l = 0; l < ta->L; l++) {
		printf("%d,%lld,%.6f,%.6f,%.6f,%.6f,%.3g,%.3g,%lld,%lld,", l, (long long)d[l].n,
		       d[l].topk_overlap, d[l].top1_agree, d[l].set_agree, d[l].order_agree,
		       d[l].max_weight_diff, d[l].mean_weight_diff, (long long)d[l].n_disagree,
		       (long long)d[l].n_near_tie);
		if (!isnan(d[l].max_margin))
			printf("%.3g", d[l].max_margin);
		putchar('\n');
		tot += d[l].n_disagree;
		ties += d[l].n_near_tie;
	}
	moe_info(1, "%lld disagreements over %lld token-layers, %lld at near-ties (margin <= %g)",
		 (long long)tot, (long long)(ta->T * ta->L), (long long)ties, a->tol);
	free(d);
	moe_trace_free(ta);
	moe_trace_free(tb);
	return 0;
}

static int cmd_check(struct args *a, int argc, char **argv)
{
	struct moe_error err = {0};
	struct moe_trace *tr;

	(void)a;
	if (argc != 1)
		moe_usage_error("check: expected one trace directory");
	tr = open_trace(argv[0]);
	if (moe_trace_check(tr, &err) < 0)
		moe_die("%s: %s", argv[0], err.msg);
	moe_info(1, "%s: %lld tokens, %d layers, top-%d of %d experts: ok", argv[0], (long long)tr->T,
		 tr->L, tr->K, tr->E);
	moe_trace_free(tr);
	return 0;
}

int main(int argc, char **argv)
{
	static const struct {
		const char *name;
		int (*fn)(struct args *, int, char **);
	} cmds[] = {{"run", cmd_run},   {"stats", cmd_stats}, {"plot", cmd_plot},
		    {"diff", cmd_diff}, {"check", cmd_check}, {"synth", cmd_synth}};
	struct args a = {0};
	int c, which = -1;

	moe_diag_init(argv[0]);
	a.tol = 1e-3;
	a.layer = -1;
	a.synth = (struct moe_synth_opts){.T = 0, .L = 18, .K = 4, .E = 64, .V = 50304,
					  .doc_len = 200, .stick = 0.3, .seed = 1};
	/* the command: the first operand, possibly after global flags (-q, -v) */
	for (int i = 1; i < argc && which < 0; i++) {
		if (argv[i][0] == '-' && argv[i][1])
			continue;
		for (size_t j = 0; j < sizeof cmds / sizeof cmds[0]; j++)
			if (!strcmp(argv[i], cmds[j].name))
				which = (int)j;
		if (which < 0)
			break;
		memmove(argv + i, argv + i + 1, (size_t)(argc - i) * sizeof *argv);
		argc--;
	}
	while ((c = getopt_long(argc, argv, "o:t:fqvhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'o': a.out = optarg; break;
		case 't': a.tokenizer = optarg; break;
		case 'f': a.force = true; break;
		case OPT_DOCS: a.docs = optarg; break;
		case OPT_TEXT_FIELD: a.text_field = optarg; break;
		case OPT_DATA: a.data = optarg; break;
		case OPT_SPLIT: a.split = optarg; break;
		case OPT_MAX_TOKENS: a.max_tokens = num(optarg, 1, INT32_MAX, "--max-tokens"); break;
		case OPT_SEQ_LEN: a.seq_len = (int)num(optarg, 2, 1 << 20, "--seq-len"); break;
		case OPT_OVERLAP:
			a.overlap = (int)num(optarg, 0, 1 << 20, "--overlap");
			if (a.overlap == 0)
				a.overlap = -1; /* disjoint windows */
			break;
		case OPT_BATCH: a.batch = (int)num(optarg, 1, 4096, "--batch"); break;
		case OPT_LOGITS: a.logits = true; break;
		case OPT_JSONL: a.jsonl = true; break;
		case OPT_NO_CSV: a.no_csv = true; break;
		case OPT_DEVICE: a.device = optarg; break;
		case OPT_LABEL: a.label = optarg; break;
		case OPT_WINDOW: a.window = (int)num(optarg, 1, 64, "--window"); break;
		case OPT_PATH_SAMPLE:
			a.path_sample = num(optarg, 0, INT64_MAX, "--path-sample");
			if (a.path_sample == 0)
				a.path_sample = -1; /* all */
			break;
		case OPT_TOP_PATHS: a.top_paths = (int)num(optarg, 1, 1000000, "--top-paths"); break;
		case OPT_TOP_TOKENS: a.top_tokens = (int)num(optarg, 1, 100000, "--top-tokens"); break;
		case OPT_MIN_COUNT: a.min_count = (int)num(optarg, 1, INT32_MAX, "--min-count"); break;
		case OPT_LAYER: a.layer = (int)num(optarg, 0, 4095, "--layer"); break;
		case OPT_TOL: a.tol = dnum(optarg, 0, 1e30, "--tol"); break;
		case OPT_TOKENS: a.synth.T = num(optarg, 0, (int64_t)1 << 40, "--tokens"); break;
		case OPT_LAYERS: a.synth.L = (int)num(optarg, 1, 4096, "--layers"); break;
		case OPT_EXPERTS: a.synth.E = (int)num(optarg, 2, 65536, "--experts"); break;
		case OPT_TOPK: a.synth.K = (int)num(optarg, 1, MOE_ROUTES_MAX_K, "--top-k"); break;
		case OPT_VOCAB: a.synth.V = (int)num(optarg, 2, INT32_MAX, "--vocab"); break;
		case OPT_SEED: a.synth.seed = (uint64_t)num(optarg, 0, INT64_MAX, "--seed"); break;
		case OPT_DOC_LEN: a.synth.doc_len = (int)num(optarg, 1, 1 << 24, "--doc-len"); break;
		case OPT_STICK: a.synth.stick = dnum(optarg, 0, 1, "--stick"); break;
		case OPT_WEIGHTS:
			if (!strcmp(optarg, "bf16"))
				a.bf16 = true;
			else if (strcmp(optarg, "f32"))
				moe_usage_error("--weights must be f32 or bf16");
			break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (which < 0) {
		if (optind < argc)
			moe_usage_error("unknown command '%s'", argv[optind]);
		moe_usage_error("missing command (run, stats, plot, diff, check or synth)");
	}
	cmds[which].fn(&a, argc - optind, argv + optind);
	moe_close_stdout();
	return 0;
}
