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
/* The seed's linear aux coefficient: start + (step/decay) * (end - start)
 * while step < decay_steps, then end (decay_steps <= 0: always start). */
double moe_aux_coef(double start, double end, int64_t decay_steps, int64_t step);

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
