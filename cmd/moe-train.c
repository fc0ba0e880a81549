/*
 * moe-train: train a Mixture-of-Experts language model on a shard directory.
 * Options come from the defaults (the seed's recipe), then a JSON training
 * config (--config), then the command line; see moe-train(1).
 */
#include "config.h"

#include <getopt.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#ifdef _OPENMP
#include <omp.h>
#endif

#include "core/core.h"
#include "model/model.h"
#include "train/train.h"

static void usage(FILE *fp)
{
	fprintf(fp,
		"Usage: %s --model M.json|PRESET --data DIR --out RUN [options]\n"
		"Train a Mixture-of-Experts model on the shards in DIR; checkpoints and\n"
		"metrics.jsonl go to RUN.\n"
		"\n"
		"  -m, --model M         model config file or preset (tiny, seed-base, olmoe-1b-7b)\n"
		"  -d, --data DIR        shard directory (moe-shard output)\n"
		"  -o, --out RUN         run directory\n"
		"      --device D        auto, cpu or cuda [auto: cuda when present]\n"
		"      --steps N         optimizer steps\n"
		"      --tokens N        or: train on N tokens (suffixes k M G)\n"
		"      --micro-batch B   sequences per micro-batch [16]\n"
		"      --grad-accum N    micro-batches per step [1]\n"
		"      --seq-len T       sequence length [the model's context]\n"
		"      --lr X            peak learning rate [7.5e-4]\n"
		"      --min-lr X        final learning rate [5e-5]\n"
		"      --warmup N        warmup steps [200]\n"
		"      --warmup-start F  learning-rate factor at step 0 [0.2]\n"
		"      --schedule S      cosine, linear, constant or wsd [cosine]\n"
		"      --decay-steps N   length of the decay after warmup [steps - warmup]\n"
		"      --wsd-decay F     wsd: decaying fraction of the decay span [0.2]\n"
		"      --weight-decay X  AdamW decoupled weight decay [0.01]\n"
		"      --decay SET       decayed tensors: all or matrices [all]\n"
		"      --beta1 X, --beta2 X, --eps X   AdamW [0.9, 0.999, 1e-8]\n"
		"      --clip X          max gradient norm, 0 = off [1.0]\n"
		"      --clip-expert X   max norm of the expert group [--clip]\n"
		"      --clip-groups G   expert (two groups), global or none [expert]\n"
		"      --aux-coef X, --aux-coef-end X, --aux-decay-steps N\n"
		"                        aux-loss coefficient schedule [the model config's]\n"
		"      --seed N          initialisation and shuffle seed [1234]\n"
		"      --eval-every N    validate every N steps, 0 = never [200]\n"
		"      --eval-batches N  validation batches [8]\n"
		"      --ckpt-every N    checkpoint every N steps, 0 = only at the end,\n"
		"                        -1 = never (benchmarks) [1000]\n"
		"      --keep K          keep the last K checkpoints, 0 = all [3]\n"
		"      --threads N       CPU threads [all]\n"
		"      --recompute R     cheap or full: full keeps only each block's input\n"
		"                        and reruns its forward in backward [cheap]\n"
		"  -c, --config FILE     JSON training config (the command line wins)\n"
		"  -r, --resume          continue from RUN/ckpt/latest (fresh start if none)\n"
		"  -q, --quiet           no progress line or summary\n"
		"  -v, --verbose         more messages\n"
		"  -h, --help            show this help\n"
		"  -V, --version         show the version\n",
		moe_progname());
}

/* Options that map to struct moe_train_opts keys have flag values >= 1000. */
enum { OPT_KEY = 1000 };

static const struct option longopts[] = {
	{ "model", required_argument, NULL, 'm' },
	{ "data", required_argument, NULL, 'd' },
	{ "out", required_argument, NULL, 'o' },
	{ "config", required_argument, NULL, 'c' },
	{ "resume", no_argument, NULL, 'r' },
	MOE_TOOL_LONGOPTS,
	{ "device", required_argument, NULL, OPT_KEY },
	{ "steps", required_argument, NULL, OPT_KEY },
	{ "tokens", required_argument, NULL, OPT_KEY },
	{ "micro-batch", required_argument, NULL, OPT_KEY },
	{ "grad-accum", required_argument, NULL, OPT_KEY },
	{ "seq-len", required_argument, NULL, OPT_KEY },
	{ "lr", required_argument, NULL, OPT_KEY },
	{ "min-lr", required_argument, NULL, OPT_KEY },
	{ "warmup", required_argument, NULL, OPT_KEY },
	{ "warmup-start", required_argument, NULL, OPT_KEY },
	{ "schedule", required_argument, NULL, OPT_KEY },
	{ "decay-steps", required_argument, NULL, OPT_KEY },
	{ "wsd-decay", required_argument, NULL, OPT_KEY },
	{ "weight-decay", required_argument, NULL, OPT_KEY },
	{ "decay", required_argument, NULL, OPT_KEY },
	{ "beta1", required_argument, NULL, OPT_KEY },
	{ "beta2", required_argument, NULL, OPT_KEY },
	{ "eps", required_argument, NULL, OPT_KEY },
	{ "clip", required_argument, NULL, OPT_KEY },
	{ "clip-expert", required_argument, NULL, OPT_KEY },
	{ "clip-groups", required_argument, NULL, OPT_KEY },
	{ "aux-coef", required_argument, NULL, OPT_KEY },
	{ "aux-coef-end", required_argument, NULL, OPT_KEY },
	{ "aux-decay-steps", required_argument, NULL, OPT_KEY },
	{ "seed", required_argument, NULL, OPT_KEY },
	{ "eval-every", required_argument, NULL, OPT_KEY },
	{ "eval-batches", required_argument, NULL, OPT_KEY },
	{ "ckpt-every", required_argument, NULL, OPT_KEY },
	{ "keep", required_argument, NULL, OPT_KEY },
	{ "threads", required_argument, NULL, OPT_KEY },
	{ "recompute", required_argument, NULL, OPT_KEY },
	{ NULL, 0, NULL, 0 },
};

struct kv {
	const char *key, *value;
};
/* Command-line settings, applied after the config file (global so that
 * exiting on an error does not leak it). */
static struct kv *cli;

/* A progress line on a terminal: step, loss, lr, rate, ETA. */
struct line {
	bool on;
	double last, t0;
	int64_t step0;
};

static void line_draw(struct line *ln, const struct moe_step_stats *st, int64_t total, bool force)
{
	if (!ln->on)
		return;
	double now = moe_now();
	if (!force && now - ln->last < 0.25)
		return;
	ln->last = now;
	double done = (double)(st->step - ln->step0);
	double eta = done > 0 ? (now - ln->t0) / done * (double)(total - st->step) : 0;
	fprintf(stderr, "\r\033[Kstep %lld/%lld  loss %.4f  lr %.3g  |g| %.3g  %.0f tok/s  ETA %02d:%02d:%02d",
		(long long)st->step, (long long)total, st->loss, st->lr, st->grad_norm,
		st->tokens_per_s, (int)(eta / 3600), (int)fmod(eta / 60, 60), (int)fmod(eta, 60));
	fflush(stderr);
}

static void line_clear(struct line *ln)
{
	if (ln->on)
		fprintf(stderr, "\r\033[K");
}

int main(int argc, char **argv)
{
	struct moe_train_opts o;
	struct moe_error err = { 0 };
	cli = calloc((size_t)argc + 1, sizeof *cli);
	size_t n_cli = 0;
	const char *config = NULL;
	bool resume = false;
	int c, idx;

	moe_diag_init(argv[0]);
	if (!cli)
		moe_die("out of memory");
	while ((c = getopt_long(argc, argv, "m:d:o:c:rqvhV", longopts, &idx)) != -1) {
		switch (c) {
		case 'm': cli[n_cli++] = (struct kv){ "model", optarg }; break;
		case 'd': cli[n_cli++] = (struct kv){ "data", optarg }; break;
		case 'o': cli[n_cli++] = (struct kv){ "out", optarg }; break;
		case 'c': config = optarg; break;
		case 'r': resume = true; break;
		case OPT_KEY: cli[n_cli++] = (struct kv){ longopts[idx].name, optarg }; break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (optind < argc)
		moe_usage_error("unexpected operand '%s'", argv[optind]);

	/* defaults, then (on resume) the run's saved options, then --config,
	 * then the command line */
	moe_train_opts_default(&o);
	const char *out = NULL;
	for (size_t i = 0; i < n_cli; i++)
		if (strcmp(cli[i].key, "out") == 0)
			out = cli[i].value;
	if (resume && out) {
		char *saved = moe_path_join(out, "train.json");
		if (saved && access(saved, F_OK) == 0 && moe_train_opts_load_file(&o, saved, &err))
			moe_die_error(&err);
		free(saved);
	}
	if (config && moe_train_opts_load_file(&o, config, &err))
		moe_die_error(&err);
	for (size_t i = 0; i < n_cli; i++) {
		if (moe_train_opts_set(&o, cli[i].key, cli[i].value, &err))
			moe_usage_error("%s", err.msg);
	}
	free(cli);
	cli = NULL;
	if (!o.model[0])
		moe_usage_error("no model given (--model)");
	if (!o.data[0])
		moe_usage_error("no data directory given (--data)");
	if (!o.out[0])
		moe_usage_error("no run directory given (--out)");

#ifdef _OPENMP
	if (o.threads > 0)
		omp_set_num_threads((int)o.threads);
#endif
	moe_interrupt_install();
	struct moe_trainer *t = moe_trainer_new(&o, resume, &err);
	if (!t)
		moe_die_error(&err);
	if (moe_trainer_note(t))
		moe_warn("%s", moe_trainer_note(t));
	int64_t total = moe_trainer_total_steps(t);
	int64_t start = moe_trainer_step_index(t);
	if (resume)
		moe_info(1, "%s at step %lld of %lld (%s backend)",
			 start > 0 ? "resuming" : "starting", (long long)start, (long long)total,
			 moe_trainer_backend_name(t));
	else
		moe_info(2, "training %lld steps on the %s backend", (long long)total,
			 moe_trainer_backend_name(t));
	if (moe_verbosity >= 2) {
		int64_t n_total = 0, n_active = 0;
		moe_model_count(moe_trainer_model(t), &n_total, &n_active);
		moe_info(2, "%lld parameters, %lld active per token; %lld tokens per step",
			 (long long)n_total, (long long)n_active,
			 (long long)(o.micro_batch * o.grad_accum * moe_trainer_seq_len(t)));
	}

	struct line ln = { .on = moe_verbosity >= 1 && isatty(2), .t0 = moe_now(), .step0 = start };
	struct moe_step_stats st = { 0 };
	double t0 = moe_now();
	bool saved = false, evaluated = false, stopped = false;
	int rc = 0;
	while (moe_trainer_step_index(t) < total) {
		if (moe_interrupted()) {
			stopped = true;
			break;
		}
		rc = moe_trainer_step(t, &st, &err);
		if (rc)
			break;
		saved = evaluated = false;
		line_draw(&ln, &st, total, false);
		if (!isfinite(st.loss)) {
			rc = moe_error_set(&err, MOE_ERANGE, "loss is %g at step %lld", st.loss,
					   (long long)st.step);
			break;
		}
		if (o.eval_every > 0 && st.step % o.eval_every == 0) {
			struct moe_eval_stats ev;
			rc = moe_trainer_eval(t, &ev, &err);
			if (rc)
				break;
			evaluated = true;
			if (moe_verbosity >= 2) {
				line_clear(&ln);
				moe_info(2, "step %lld: val loss %.4f ppl %.2f", (long long)st.step,
					 ev.loss, ev.ppl);
			}
		}
		if (o.ckpt_every > 0 && st.step % o.ckpt_every == 0) {
			rc = moe_trainer_save(t, &err);
			if (rc)
				break;
			saved = true;
		}
	}
	line_clear(&ln);
	if (rc == 0) /* the last step's optimizer: its time and its errors */
		rc = moe_trainer_wait(t, &err);
	if (rc == 0 && !stopped && !evaluated && o.eval_every > 0 &&
	    moe_trainer_step_index(t) > start) {
		struct moe_eval_stats ev;
		rc = moe_trainer_eval(t, &ev, &err);
	}
	if (rc == 0 && !saved && o.ckpt_every >= 0)
		rc = moe_trainer_save(t, &err);
	if (rc) {
		moe_trainer_free(t);
		moe_die_error(&err);
	}
	int64_t end = moe_trainer_step_index(t);
	double dt = moe_now() - t0;
	if (stopped)
		moe_info(1, "interrupted at step %lld%s", (long long)end,
			 o.ckpt_every >= 0 ? ": checkpoint written" : "");
	else if (moe_verbosity >= 1 && end > start)
		moe_info(1, "%lld steps in %.1f s, final loss %.4f%s%s%s",
			 (long long)(end - start), dt, st.loss,
			 o.ckpt_every >= 0 ? ", checkpoint " : "", o.ckpt_every >= 0 ? o.out : "",
			 o.ckpt_every >= 0 ? "/ckpt/latest" : "");
	moe_trainer_free(t);
	moe_close_stdout();
	return 0;
}
