/*
 * libmoetrain: the training loop of moe-train and the evaluation of moe-eval.
 *
 * Pieces, each usable alone (and tested alone):
 *   - options (struct moe_train_opts): defaults are the seed's recipe, a JSON
 *     training config, command-line overrides (same names);
 *   - schedules: learning rate (warmup from a start factor, then cosine,
 *     linear, constant or warmup-stable-decay) and the aux-loss coefficient;
 *   - the optimizer: AdamW over the model's named tensors with a configurable
 *     decayed set, global-norm clipping in one group or in the seed's two
 *     (expert and non-expert parameters);
 *   - the run directory: checkpoints RUN/ckpt/step-NNNNNNN/, a `latest` link,
 *     retention, metrics.jsonl (see moe-checkpoint(5));
 *   - the trainer: init or resume, one optimizer step (gradient
 *     accumulation, clipping, AdamW, balancing-bias update), validation,
 *     checkpointing.
 *
 * lib never prints: the trainer reports through return values and the
 * metrics it fills; cmd/moe-train.c prints.
 */
#ifndef MOE_TRAIN_H
#define MOE_TRAIN_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

/* ---- options ------------------------------------------------------------ */

#define MOE_TRAIN_STR_MAX 1024

/* Every training option.  JSON keys and long options share these names
 * (long options spell '_' as '-').  Negative values of aux_coef,
 * aux_coef_end and aux_decay_steps mean "take it from the model config". */
struct moe_train_opts {
	char model[MOE_TRAIN_STR_MAX];   /* model config path or preset name */
	char data[MOE_TRAIN_STR_MAX];    /* shard directory */
	char out[MOE_TRAIN_STR_MAX];     /* run directory */
	char device[16];                 /* auto, cpu, cuda */
	int64_t steps;                   /* optimizer steps (0: from tokens) */
	int64_t tokens;                  /* stop after this many tokens (0: from steps) */
	int64_t micro_batch;             /* sequences per micro-batch */
	int64_t grad_accum;              /* micro-batches per optimizer step */
	int64_t seq_len;                 /* 0: the model's context length */
	double lr, min_lr;
	int64_t warmup;                  /* warmup steps */
	double warmup_start;             /* lr factor at step 0 of warmup */
	char schedule[16];               /* cosine, linear, constant, wsd */
	int64_t decay_steps;             /* steps after warmup (0: steps - warmup) */
	double wsd_decay;                /* wsd: fraction of decay_steps that decays */
	double weight_decay;
	char decay[16];                  /* all (the seed) or matrices */
	double beta1, beta2, eps;
	double clip;                     /* max global norm (0: no clipping) */
	double clip_expert;              /* expert group's max norm (< 0: clip) */
	char clip_groups[16];            /* expert (two groups), global, none */
	double aux_coef, aux_coef_end;   /* aux-loss coefficient start and end */
	int64_t aux_decay_steps;         /* linear decay length */
	int64_t seed;
	int64_t eval_every, eval_batches;
	int64_t ckpt_every, keep;
	int64_t threads;                 /* CPU threads (0: OpenMP default) */
	char recompute[16];              /* cheap (the default) or full: see moe_model_set_recompute */
};

/* Fill o with the defaults. */
void moe_train_opts_default(struct moe_train_opts *o);
/* Set one option from a string (key with '-' or '_'); numbers are checked
 * against their range.  Returns 0 or MOE_EINVAL/MOE_ERANGE. */
int moe_train_opts_set(struct moe_train_opts *o, const char *key, const char *value,
		       struct moe_error *err);
/* Apply every key of a JSON object (unknown keys, wrong types and values out
 * of range are errors naming `where` and the key). */
int moe_train_opts_load_json(struct moe_train_opts *o, const json_t *obj, const char *where,
			     struct moe_error *err);
int moe_train_opts_load_file(struct moe_train_opts *o, const char *path, struct moe_error *err);
/* All options as a JSON object (caller json_decref()s); NULL on ENOMEM. */
json_t *moe_train_opts_to_json(const struct moe_train_opts *o);

/* ---- schedules ---------------------------------------------------------- */

enum moe_sched_kind { MOE_SCHED_COSINE, MOE_SCHED_LINEAR, MOE_SCHED_CONSTANT, MOE_SCHED_WSD };

struct moe_schedule {
	enum moe_sched_kind kind;
	double lr, min_lr;       /* peak and floor */
	int64_t warmup_steps;    /* linear from warmup_start*lr to lr */
	double warmup_start;
	int64_t decay_steps;     /* length of the part after warmup */
	int64_t wsd_decay_steps; /* wsd: the last this many steps decay linearly */
};

/* Learning rate of the optimizer step that follows `step` completed steps
 * (step 0 is the first update):
 *   step < W:  lr * (s0 + (1 - s0) * step / W)
 *   cosine:    min + (lr - min) * (1 + cos(pi * (step - W) / N)) / 2
 *   linear:    lr + (min - lr) * (step - W) / N
 *   constant:  lr
 *   wsd:       lr until step - W = N - Dw, then linear to min over Dw steps
 * and min_lr once step - W >= N (not for constant). */
double moe_schedule_lr(const struct moe_schedule *s, int64_t step);
const char *moe_sched_name(enum moe_sched_kind k);
int moe_sched_parse(const char *s, enum moe_sched_kind *out);

/* ---- the optimizer --------------------------------------------------------- */

struct moe_model;
struct moe_param;

enum moe_decay_set {
	MOE_DECAY_ALL = 0,      /* every trained tensor (the seed: one param group) */
	MOE_DECAY_MATRICES = 1, /* no norms, no biases, no vectors */
};
enum moe_clip_groups {
	MOE_CLIP_EXPERT = 0, /* the seed: expert (routed + shared) and the rest, separately */
	MOE_CLIP_GLOBAL = 1, /* one global norm */
	MOE_CLIP_NONE = 2,
};

struct moe_optim_opts {
	double beta1, beta2, eps, weight_decay;
	enum moe_decay_set decay;
	enum moe_clip_groups clip_groups;
	double clip;        /* max norm (non-expert group, or global); <= 0: off */
	double clip_expert; /* max norm of the expert group; < 0: clip */
};

/* AdamW state: m and v are fp32 buffers on the model's backend with the
 * layout of the parameter table (offset i of a tensor is offset i here);
 * t is the number of updates done. */
/* A run of neighbouring trained tensors of one clip group and decay. */
struct moe_optim_span {
	size_t offset, n; /* floats, into the parameter buffer */
	bool expert, decay;
	bool packable; /* no norm weight in it: its masters may be packed (masters_pack) */
};
struct moe_optim {
	struct moe_model *model; /* not owned */
	struct moe_optim_opts opts;
	size_t n;                /* floats in m and v */
	float *m, *v;            /* backend memory */
	int64_t t;
	struct moe_optim_span *spans; /* owned */
	double *ss;                   /* (n_spans) sums of squares, scratch */
	size_t n_spans;
	float gscale[2];              /* clip factors of the other [0] and expert [1] groups
					 for the next step (set by moe_optim_clip) */
};

struct moe_clip_stats {
	double norm;        /* pre-clip global norm of all trained tensors */
	double norm_expert; /* pre-clip norm of the expert group */
	double norm_other;  /* pre-clip norm of the rest */
	double coef_expert, coef_other; /* factors applied (1 = none) */
};

/* true when weight decay applies to p under `set`. */
bool moe_optim_decays(const struct moe_param *p, enum moe_decay_set set);
/* Allocate zeroed m, v on the model's backend.  Release with
 * moe_optim_release() (before the model is freed). */
int moe_optim_init(struct moe_optim *o, struct moe_model *m, const struct moe_optim_opts *opts,
		   struct moe_error *err);
void moe_optim_release(struct moe_optim *o);
/* Gradient norms of the two groups (no change to the gradients). */
void moe_optim_grad_norms(struct moe_optim *o, double *expert, double *other);
/* Clip as opts say (torch clip_grad_norm_: factor max / (norm + 1e-6) when
 * below 1) and report the norms and factors.  The factors are applied by the
 * next moe_optim_step as it reads each gradient: the gradient buffers keep
 * their unclipped values (no extra pass over them). */
void moe_optim_clip(struct moe_optim *o, struct moe_clip_stats *cs);
/* One AdamW update of every trained tensor with learning rate lr
 * (t += 1 first; bias correction uses t) on the gradients times the clip
 * factors of the last moe_optim_clip (then reset to 1), then refresh the
 * backend's compute copy of the parameters. */
void moe_optim_step(struct moe_optim *o, double lr);

/* ---- backends, FLOPs ----------------------------------------------------- */

struct moe_backend;
struct moe_config;
struct moe_loader;

/* The backend for a --device value: "cpu", "cuda", or "auto" (cuda when the
 * build has it and a device answers, else an error suggesting --device
 * cpu).  This is the seam where backends plug in (moe_backend_new()).
 * chosen (may be NULL) receives the backend's name. */
struct moe_backend *moe_train_backend(const char *device, char *chosen, size_t cap,
				      struct moe_error *err);
/* Model FLOPs per trained token as shared/bench/torch_ref.py counts them:
 * 6 x (active matmul parameters: attention, K routed + shared experts,
 * router, dense MLPs, LM head) + 3 x causal attention scores (2*2*T*D/2 per
 * layer).  T is the sequence length. */
double moe_model_flops_per_token(const struct moe_config *c, int T);
/* Peak FLOP/s used for MFU: $MOE_PEAK_TFLOPS when set, else 989.4e12 for
 * "cuda" (H100 SXM dense bf16), else 0 (unknown: MFU is reported as null). */
double moe_peak_flops(const char *backend);

/* ---- evaluation ------------------------------------------------------------ */

struct moe_eval_stats {
	double loss;     /* mean over batches of ce + aux_coef * aux + z_coef * z */
	double ce;       /* mean over all evaluated target tokens */
	double ppl;      /* exp(ce) */
	double aux, z;   /* means over batches, unscaled */
	double aux_coef;
	int64_t tokens;  /* target tokens evaluated */
	int64_t batches;
};

/* Rewind the loader (batches of B rows of T+1 tokens, one epoch) and
 * evaluate up to max_batches batches (<= 0: all).  Routing uses the
 * selection bias only when use_bias.  MOE_ERANGE when there is no data. */
int moe_evaluate(struct moe_model *m, struct moe_loader *l, int B, int T, int64_t max_batches,
		 bool use_bias, struct moe_eval_stats *st, struct moe_error *err);

/* ---- the trainer ------------------------------------------------------------ */

struct moe_trainer;

struct moe_step_stats {
	int64_t step;        /* optimizer steps done, including this one */
	int64_t tokens;      /* tokens trained so far */
	double loss, ce, aux, z; /* means over the step's micro-batches */
	double aux_coef, lr;
	double grad_norm, grad_norm_expert, grad_norm_other; /* before clipping */
	double step_s, tokens_per_s;
	double mfu;          /* < 0 when the peak is unknown */
};

/* Build a run from the options: model (preset, file, or on resume the
 * checkpoint RUN/ckpt/latest), backend, optimizer, loaders; create RUN,
 * RUN/ckpt, RUN/train.json (effective options), RUN/run.json (sizes,
 * FLOPs) and open RUN/metrics.jsonl.  resume without a checkpoint starts
 * fresh; without resume an existing run is an error.  NULL + err on failure. */
struct moe_trainer *moe_trainer_new(const struct moe_train_opts *o, bool resume,
				    struct moe_error *err);
void moe_trainer_free(struct moe_trainer *t);
int64_t moe_trainer_step_index(const struct moe_trainer *t); /* steps done */
int64_t moe_trainer_total_steps(const struct moe_trainer *t);
int moe_trainer_seq_len(const struct moe_trainer *t);
const char *moe_trainer_backend_name(struct moe_trainer *t);
/* A note for the user (e.g. why validation is off), or NULL. */
const char *moe_trainer_note(const struct moe_trainer *t);
struct moe_model *moe_trainer_model(struct moe_trainer *t);
/* One optimizer step: grad_accum micro-batches (forward, backward with
 * scale 1/grad_accum), clipping, AdamW at the scheduled learning rate,
 * the balancing-bias update; appends a record to metrics.jsonl. */
int moe_trainer_step(struct moe_trainer *t, struct moe_step_stats *st, struct moe_error *err);
/* Validation on the val split (eval_batches batches, no selection bias);
 * appends a record.  Does nothing (ev zeroed) when validation is off. */
int moe_trainer_eval(struct moe_trainer *t, struct moe_eval_stats *ev, struct moe_error *err);
/* Wait for the last step's work on the device (a step does not: its
 * optimizer runs while the host goes on); its first error, if any. */
int moe_trainer_wait(struct moe_trainer *t, struct moe_error *err);
/* Write RUN/ckpt/step-NNNNNNN atomically (model.safetensors, config.json,
 * optimizer.safetensors, trainer_state.json), point `latest` at it and
 * keep the last K. */
int moe_trainer_save(struct moe_trainer *t, struct moe_error *err);

/* ---- generation ---------------------------------------------------------------- */

struct moe_generate_opts {
	int64_t max_tokens;  /* new tokens at most */
	double temperature;  /* <= 0: greedy (the seed's qualitative test) */
	double top_p;        /* nucleus mass, 1 = off */
	uint64_t seed;       /* sampling RNG seed */
	int eos_id;          /* stop after this id; -1 none */
	bool use_bias;       /* route with the selection bias */
};
/* Called with each new token id; a non-zero return stops generation and is
 * returned by moe_generate(). */
typedef int (*moe_generate_cb)(int32_t id, void *arg, struct moe_error *err);

/* Sample the next token from logits (V): greedy when temperature <= 0, else
 * softmax(logits / temperature) restricted to the smallest set of most
 * likely tokens whose mass reaches top_p.  rng is the caller's state;
 * scratch holds moe_sample_scratch_size(V) bytes. */
int moe_sample_token(const float *logits, int V, double temperature, double top_p,
		     uint64_t *rng, void *scratch);
size_t moe_sample_scratch_size(int V);
/* Continue prompt (n_prompt >= 1 ids) by up to g->max_tokens tokens,
 * calling cb for each (the context is cut to the model's
 * max_position_embeddings). */
int moe_generate(struct moe_model *m, const int32_t *prompt, size_t n_prompt,
		 const struct moe_generate_opts *g, moe_generate_cb cb, void *arg,
		 struct moe_error *err);

/* ---- the run directory ------------------------------------------------- */

/* "step-NNNNNNN" (7 digits, more when needed). */
void moe_ckpt_name(int64_t step, char *buf, size_t cap);
/* Point ckpt_root/latest at `name` atomically (symlink to a temporary name,
 * then rename over the old link). */
int moe_ckpt_link_latest(const char *ckpt_root, const char *name, struct moe_error *err);
/* The steps of the step-* directories under ckpt_root in increasing order
 * (*steps malloc'd, caller frees; none when the directory is missing). */
int moe_ckpt_list(const char *ckpt_root, int64_t **steps, size_t *n, struct moe_error *err);
/* Remove temporaries of interrupted writers and all but the newest `keep`
 * step directories (keep <= 0: keep all). */
int moe_ckpt_prune(const char *ckpt_root, int64_t keep, struct moe_error *err);
/* Resolve a checkpoint argument: a checkpoint directory (ours or a Hugging
 * Face one), a run directory (RUN/ckpt/latest) or a ckpt directory
 * (ckpt/latest).  Returns a malloc'd path or NULL with err filled. */
char *moe_ckpt_resolve(const char *path, struct moe_error *err);

#endif
