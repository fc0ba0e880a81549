/*
 * moe-eval: evaluate a checkpoint on a shard split (JSON on stdout) or
 * generate text from a prompt.  See moe-eval(1).
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <limits.h>
#include <unistd.h>

#include "core/core.h"
#include "data/data.h"
#include "model/model.h"
#include "tok/tok.h"
#include "train/train.h"

static void usage(FILE *fp)
{
	fprintf(fp,
		"Usage: %s CKPT --data DIR [--split val] [--batches N] [options]\n"
		"       %s generate CKPT -t TOKENIZER --prompt TEXT [options]\n"
		"Evaluate a checkpoint (ours or a Hugging Face OLMoE directory) on a shard\n"
		"split and print JSON, or continue a prompt.\n"
		"\n"
		"  -d, --data DIR        shard directory\n"
		"  -s, --split S         train or val [val]\n"
		"  -n, --batches N       batches to evaluate, 0 = the whole split [0]\n"
		"  -b, --micro-batch B   sequences per batch [8]\n"
		"  -T, --seq-len T       sequence length [the checkpoint's training length]\n"
		"      --selection-bias  route with the learned selection bias\n"
		"      --device D        auto, cpu or cuda [auto: cuda when present, else cpu]\n"
		"  -t, --tokenizer FILE  tokenizer.json (generate)\n"
		"  -p, --prompt TEXT     prompt (generate)\n"
		"  -m, --max-tokens N    new tokens at most [128]\n"
		"      --temperature X   0 = greedy [0]\n"
		"      --top-p P         nucleus sampling mass [1]\n"
		"      --seed S          sampling seed [1234]\n"
		"  -q, --quiet           fewer messages\n"
		"  -v, --verbose         more messages\n"
		"  -h, --help            show this help\n"
		"  -V, --version         show the version\n",
		moe_progname(), moe_progname());
}

enum { OPT_BIAS = 1000, OPT_DEVICE, OPT_TEMP, OPT_TOPP, OPT_SEED };

static const struct option longopts[] = {
	{ "data", required_argument, NULL, 'd' },
	{ "split", required_argument, NULL, 's' },
	{ "batches", required_argument, NULL, 'n' },
	{ "micro-batch", required_argument, NULL, 'b' },
	{ "seq-len", required_argument, NULL, 'T' },
	{ "selection-bias", no_argument, NULL, OPT_BIAS },
	{ "device", required_argument, NULL, OPT_DEVICE },
	{ "tokenizer", required_argument, NULL, 't' },
	{ "prompt", required_argument, NULL, 'p' },
	{ "max-tokens", required_argument, NULL, 'm' },
	{ "temperature", required_argument, NULL, OPT_TEMP },
	{ "top-p", required_argument, NULL, OPT_TOPP },
	{ "seed", required_argument, NULL, OPT_SEED },
	MOE_TOOL_LONGOPTS,
	{ NULL, 0, NULL, 0 },
};

static int64_t num(const char *s, int64_t min, int64_t max, const char *what)
{
	struct moe_error err = { 0 };
	int64_t v;
	if (moe_parse_i64(s, min, max, &v, what, &err))
		moe_usage_error("%s", err.msg);
	return v;
}

static double real(const char *s, double min, double max, const char *what)
{
	struct moe_error err = { 0 };
	double v;
	if (moe_parse_double(s, min, max, &v, what, &err))
		moe_usage_error("%s", err.msg);
	return v;
}

/* The checkpoint's training sequence length and step (trainer_state.json);
 * 0 when unknown (e.g. a Hugging Face checkpoint). */
static void ckpt_state(const char *dir, int64_t *T, int64_t *step)
{
	char *p = moe_path_join(dir, "trainer_state.json");
	*T = *step = 0;
	if (p && access(p, F_OK) == 0) {
		struct moe_error err = { 0 };
		json_t *j = moe_json_load_file(p, &err);
		if (!j)
			moe_die_error(&err);
		json_t *o = json_object_get(j, "options");
		if (o)
			moe_json_get_int(o, "seq_len", false, T, p, &err);
		moe_json_get_int(j, "step", false, step, p, &err);
		json_decref(j);
	}
	free(p);
}

static struct moe_model *load(const char *arg, const char *device, char **dir_out)
{
	struct moe_error err = { 0 };
	char *link = moe_ckpt_resolve(arg, &err);
	if (!link)
		moe_die_error(&err);
	/* name the checkpoint itself (step-NNNNNNN rather than latest) */
	char *dir = realpath(link, NULL);
	if (!dir)
		moe_die("cannot resolve '%s': %s", link, strerror(errno));
	free(link);
	struct moe_backend *be;
	if (strcmp(device, "auto") == 0) {
		be = moe_train_backend("auto", NULL, 0, &err);
		if (!be) {
			moe_info(2, "%s; evaluating on the CPU", err.msg);
			be = moe_train_backend("cpu", NULL, 0, &err);
		}
	} else {
		be = moe_train_backend(device, NULL, 0, &err);
	}
	if (!be)
		moe_die_error(&err);
	struct moe_model *m = moe_model_load_dir(dir, be, &err);
	if (!m)
		moe_die_error(&err);
	*dir_out = dir;
	return m;
}

struct gen_out {
	const struct moe_tok *tok;
	struct moe_tok_bytes buf;
};

static int print_token(int32_t id, void *arg, struct moe_error *err)
{
	struct gen_out *g = arg;
	uint32_t u = (uint32_t)id;
	g->buf.n = 0;
	int rc = moe_tok_decode(g->tok, &u, 1, false, &g->buf, err);
	if (rc)
		return rc;
	fwrite(g->buf.data, 1, g->buf.n, stdout);
	fflush(stdout);
	return 0;
}

int main(int argc, char **argv)
{
	const char *data = NULL, *split_s = "val", *device = "auto", *tokp = NULL, *prompt = NULL;
	int64_t batches = 0, B = 8, T = 0, max_tokens = 128, seed = 1234;
	double temperature = 0, top_p = 1;
	bool use_bias = false, gen = false;
	struct moe_error err = { 0 };
	int c;

	moe_diag_init(argv[0]);
	if (argc > 1 && strcmp(argv[1], "generate") == 0) {
		gen = true;
		argv[1] = argv[0];
		argv++;
		argc--;
	}
	while ((c = getopt_long(argc, argv, "d:s:n:b:T:t:p:m:qvhV", longopts, NULL)) != -1) {
		switch (c) {
		case 'd': data = optarg; break;
		case 's': split_s = optarg; break;
		case 'n': batches = num(optarg, 0, INT64_MAX, "batches"); break;
		case 'b': B = num(optarg, 1, 1 << 20, "micro-batch"); break;
		case 'T': T = num(optarg, 1, 1 << 24, "seq-len"); break;
		case OPT_BIAS: use_bias = true; break;
		case OPT_DEVICE:
			if (strcmp(optarg, "auto") && strcmp(optarg, "cpu") && strcmp(optarg, "cuda"))
				moe_usage_error("invalid device '%s' (auto, cpu or cuda)", optarg);
			device = optarg;
			break;
		case 't': tokp = optarg; break;
		case 'p': prompt = optarg; break;
		case 'm': max_tokens = num(optarg, 0, 1 << 24, "max-tokens"); break;
		case OPT_TEMP: temperature = real(optarg, 0, 100, "temperature"); break;
		case OPT_TOPP: top_p = real(optarg, 0, 1, "top-p"); break;
		case OPT_SEED: seed = num(optarg, 0, INT64_MAX, "seed"); break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (optind >= argc)
		moe_usage_error("no checkpoint given");
	if (optind + 1 < argc)
		moe_usage_error("unexpected operand '%s'", argv[optind + 1]);
	const char *ckpt = argv[optind];

	if (gen) {
		if (!tokp)
			moe_usage_error("generate needs a tokenizer (-t)");
		if (!prompt)
			moe_usage_error("generate needs a prompt (--prompt)");
		struct moe_tok *tok = moe_tok_load(tokp, &err);
		if (!tok)
			moe_die_error(&err);
		struct moe_tok_ids ids = { 0 };
		if (moe_tok_encode(tok, NULL, prompt, strlen(prompt), MOE_TOK_LOSSY, &ids, &err))
			moe_die_error(&err);
		if (ids.n == 0)
			moe_usage_error("the prompt encodes to no tokens");
		char *dir;
		struct moe_model *m = load(ckpt, device, &dir);
		const struct moe_config *cfg = moe_model_config(m);
		int32_t *p = malloc(ids.n * sizeof *p);
		if (!p)
			moe_die("out of memory");
		for (size_t i = 0; i < ids.n; i++) {
			if (ids.ids[i] >= (uint32_t)cfg->vocab_size)
				moe_die("prompt token %u is outside the model's vocabulary (%d); wrong tokenizer?",
					ids.ids[i], cfg->vocab_size);
			p[i] = (int32_t)ids.ids[i];
		}
		uint32_t eos = moe_tok_eos_id(tok);
		struct moe_generate_opts g = {
			.max_tokens = max_tokens, .temperature = temperature, .top_p = top_p,
			.seed = (uint64_t)seed, .use_bias = use_bias,
			.eos_id = eos != MOE_TOK_NONE ? (int)eos : cfg->eos_token_id,
		};
		struct gen_out go = { .tok = tok };
		fputs(prompt, stdout);
		if (moe_generate(m, p, ids.n, &g, print_token, &go, &err))
			moe_die_error(&err);
		fputc('\n', stdout);
		moe_tok_bytes_release(&go.buf);
		moe_tok_ids_release(&ids);
		free(p);
		free(dir);
		moe_model_free(m);
		moe_tok_free(tok);
		moe_close_stdout();
		return 0;
	}

	if (!data)
		moe_usage_error("no data directory given (--data)");
	enum moe_split split;
	if (moe_split_parse(split_s, &split, &err))
		moe_usage_error("%s", err.msg);
	char *dir;
	struct moe_model *m = load(ckpt, device, &dir);
	const struct moe_config *cfg = moe_model_config(m);
	int64_t ckT, step;
	ckpt_state(dir, &ckT, &step);
	if (T == 0)
		T = ckT;
	if (T == 0)
		T = cfg->max_position_embeddings;
	/* the aux coefficient the run used at this step (the seed's validation) */
	moe_model_set_aux_coef(m, moe_config_aux_coef(cfg, step));
	struct moe_loader_opts lo;
	moe_loader_opts_init(&lo);
	lo.dir = data;
	lo.split = split;
	lo.seq_len = (int)T;
	lo.batch = (int)B;
	lo.shuffle = false;
	lo.single_epoch = true;
	lo.prefetch = 0;
	struct moe_loader *l = moe_loader_new(&lo, &err);
	if (!l)
		moe_die_error(&err);
	if (moe_loader_info(l)->vocab_size > (uint32_t)cfg->vocab_size)
		moe_die("'%s': vocabulary of %u ids does not fit the model's vocab_size %d", data,
			moe_loader_info(l)->vocab_size, cfg->vocab_size);
	struct moe_eval_stats st;
	double t0 = moe_now();
	if (moe_evaluate(m, l, (int)B, (int)T, batches, use_bias, &st, &err))
		moe_die_error(&err);
	double dt = moe_now() - t0;
	json_t *j = json_object();
	json_object_set_new(j, "checkpoint", json_string(dir));
	json_object_set_new(j, "split", json_string(split_s));
	json_object_set_new(j, "loss", json_real(st.loss));
	json_object_set_new(j, "ppl", json_real(st.ppl));
	json_object_set_new(j, "ce", json_real(st.ce));
	json_object_set_new(j, "aux", json_real(st.aux));
	json_object_set_new(j, "z", json_real(st.z));
	json_object_set_new(j, "aux_coef", json_real(st.aux_coef));
	json_object_set_new(j, "tokens", json_integer(st.tokens));
	json_object_set_new(j, "batches", json_integer(st.batches));
	json_object_set_new(j, "seq_len", json_integer(T));
	json_object_set_new(j, "selection_bias", json_boolean(use_bias));
	json_object_set_new(j, "backend", json_string(moe_model_backend(m)->name));
	json_object_set_new(j, "seconds", json_real(round(dt * 1000) / 1000));
	char *s = json_dumps(j, JSON_INDENT(2) | JSON_PRESERVE_ORDER | JSON_REAL_PRECISION(10));
	if (!s)
		moe_die("out of memory");
	printf("%s\n", s);
	free(s);
	json_decref(j);
	moe_loader_free(l);
	moe_model_free(m);
	free(dir);
	moe_close_stdout();
	return 0;
}
