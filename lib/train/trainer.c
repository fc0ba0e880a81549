/*
 * The training loop: init or resume, one optimizer step (gradient
 * accumulation, clipping, AdamW, balancing-bias update), validation,
 * checkpoints and metrics.jsonl.  Layout of a run: moe-checkpoint(5).
 */
#include "config.h"

#include <errno.h>
#include <stdarg.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <unistd.h>

#ifdef HAVE_CUDA
#include <cuda_runtime_api.h>
#endif

#include "data/data.h"
#include "model/model.h"
#include "train/train.h"

struct moe_trainer {
	struct moe_train_opts o;
	struct moe_config cfg;
	struct moe_model *model;
	struct moe_optim opt;
	bool opt_ok;
	struct moe_schedule sched;
	struct moe_loader *train, *val;
	char val_note[MOE_ERRMSG_MAX + 32];
	int B, T, accum;
	int64_t step, total_steps, tokens;
	int32_t *rows;   /* (B, T+1) */
	int32_t *in;     /* (B, T) */
	int32_t *tgt;    /* (B, T) */
	int64_t *counts; /* (Lm, E) summed over a step's micro-batches */
	int Lm, E;
	FILE *metrics;
	char *ckpt_root, *metrics_path;
	double flops_per_token, peak_flops;
};

/* ---- small helpers --------------------------------------------------------- */

static char *join(const char *a, const char *b)
{
	return moe_path_join(a, b);
}

static bool exists(const char *p)
{
	struct stat st;
	return lstat(p, &st) == 0;
}

double moe_model_flops_per_token(const struct moe_config *c, int T)
{
	/* as /work/shared/bench/torch_ref.py counts them: 6 x active matmul
	 * parameters (LM head included, embedding excluded) + causal
	 * attention forward and backward */
	double D = c->hidden_size, I = c->intermediate_size, E = c->num_experts;
	double K = c->num_experts_per_tok, V = c->vocab_size;
	double Is = c->shared_expert_intermediate_size > 0 ? c->shared_expert_intermediate_size : I;
	double Id = c->dense_intermediate_size, nd = c->n_dense_layers;
	double Lm = moe_config_n_moe_layers(c);
	double attn = 4 * D * D;
	double moe = K * 3 * D * I + c->n_shared_experts * 3 * D * Is + D * E;
	double dense = 4 * D * D + 3 * D * Id;
	double per_tok = Lm * (attn + moe) + nd * dense + D * V;
	double attn_sc = (Lm + nd) * 2 * 2 * (double)T * D / 2;
	return 6 * per_tok + 3 * attn_sc;
}

double moe_peak_flops(const char *backend)
{
	const char *env = getenv("MOE_PEAK_TFLOPS");
	if (env && *env) {
		char *end;
		double v = strtod(env, &end);
		if (end != env && *end == 0 && v > 0)
			return v * 1e12;
	}
	if (strcmp(backend, "cuda") == 0)
		return 989.4e12; /* H100 SXM dense bf16 */
	return 0;
}

struct moe_backend *moe_train_backend(const char *device, char *chosen, size_t cap,
				      struct moe_error *err)
{
	struct moe_backend *be = NULL;
	if (strcmp(device, "cpu") == 0 || strcmp(device, "cuda") == 0) {
		be = moe_backend_new(device, err);
	} else if (strcmp(device, "auto") == 0) {
#ifdef HAVE_CUDA
		struct moe_error e2 = { 0 };
		be = moe_backend_new("cuda", &e2);
		if (!be)
			moe_error_set(err, MOE_EUNSUPPORTED,
				      "no usable CUDA device (%s); use --device cpu to run on the CPU",
				      e2.msg);
#else
		moe_error_set(err, MOE_EUNSUPPORTED,
			      "this build has no CUDA backend; use --device cpu to run on the CPU");
#endif
	} else {
		moe_error_set(err, MOE_EINVAL, "unknown device '%s' (auto, cpu or cuda)", device);
	}
	if (be && chosen)
		snprintf(chosen, cap, "%s", be->name);
	return be;
}

/* Device memory in use (total - free) on the CUDA backend, else -1. */
static int64_t device_mem_bytes(struct moe_model *m)
{
#ifdef HAVE_CUDA
	size_t free_b, total_b;
	if (strcmp(moe_model_backend(m)->name, "cuda") == 0 &&
	    cudaMemGetInfo(&free_b, &total_b) == cudaSuccess)
		return (int64_t)(total_b - free_b);
#else
	(void)m;
#endif
	return -1;
}

static long rss_bytes(void)
{
	struct rusage ru;
	if (getrusage(RUSAGE_SELF, &ru) != 0)
		return 0;
	return ru.ru_maxrss * 1024L;
}

/* ---- evaluation ------------------------------------------------------------- */

int moe_evaluate(struct moe_model *m, struct moe_loader *l, int B, int T, int64_t max_batches,
		 bool use_bias, struct moe_eval_stats *st, struct moe_error *err)
{
	int rc = moe_loader_rewind(l, err);
	if (rc)
		return rc;
	memset(st, 0, sizeof *st);
	size_t n = (size_t)B * (size_t)T;
	int32_t *rows = malloc((n + (size_t)B) * sizeof *rows);
	int32_t *in = malloc(n * sizeof *in), *tgt = malloc(n * sizeof *tgt);
	if (!rows || !in || !tgt) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	double ce_sum = 0, aux_sum = 0, z_sum = 0, tot_sum = 0;
	int64_t batches = 0;
	while (max_batches <= 0 || batches < max_batches) {
		int got = moe_loader_next(l, rows, err);
		if (got < 0) {
			rc = got;
			goto out;
		}
		if (got == 0)
			break;
		for (int b = 0; b < got; b++) {
			memcpy(in + (size_t)b * T, rows + (size_t)b * (T + 1), (size_t)T * sizeof *in);
			memcpy(tgt + (size_t)b * T, rows + (size_t)b * (T + 1) + 1, (size_t)T * sizeof *tgt);
		}
		struct moe_forward_opts fo = { .train = false, .eval_use_bias = use_bias };
		struct moe_losses ls;
		rc = moe_model_forward(m, in, tgt, got, T, &fo, &ls, err);
		if (rc)
			goto out;
		ce_sum += ls.ce * (double)ls.n_valid;
		st->tokens += ls.n_valid;
		aux_sum += ls.aux;
		z_sum += ls.z;
		tot_sum += ls.total;
		st->aux_coef = ls.aux_coef;
		batches++;
	}
	st->batches = batches;
	if (batches == 0 || st->tokens == 0) {
		rc = moe_error_set(err, MOE_ERANGE, "no evaluation data (the split has no %d-token windows)", T);
		goto out;
	}
	st->ce = ce_sum / (double)st->tokens;
	st->aux = aux_sum / (double)batches;
	st->z = z_sum / (double)batches;
	st->loss = tot_sum / (double)batches;
	st->ppl = exp(st->ce);
out:
	free(rows);
	free(in);
	free(tgt);
	return rc;
}

/* ---- metrics.jsonl ------------------------------------------------------------ */

/* One metrics record built as text so that each number gets its own
 * precision: losses with 17 significant digits (exact round trip, which
 * the resume test compares), rates and timings with a few. */
struct rec {
	char *buf;
	size_t n, cap;
	bool oom;
};

static void rec_put(struct rec *r, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void rec_put(struct rec *r, const char *fmt, ...)
{
	va_list ap;
	for (;;) {
		va_start(ap, fmt);
		int k = vsnprintf(r->buf ? r->buf + r->n : NULL, r->buf ? r->cap - r->n : 0, fmt, ap);
		va_end(ap);
		if (k < 0) {
			r->oom = true;
			return;
		}
		if (r->buf && r->n + (size_t)k < r->cap) {
			r->n += (size_t)k;
			return;
		}
		size_t cap = (r->cap + (size_t)k + 256) * 2;
		char *nb = realloc(r->buf, cap);
		if (!nb) {
			r->oom = true;
			return;
		}
		r->buf = nb;
		r->cap = cap;
	}
}

static void rec_key(struct rec *r, const char *k)
{
	rec_put(r, "%s\"%s\":", r->n > 1 ? "," : "", k);
}

static void rec_int(struct rec *r, const char *k, int64_t v)
{
	rec_key(r, k);
	rec_put(r, "%lld", (long long)v);
}

static void rec_num(struct rec *r, const char *k, double v, int prec)
{
	rec_key(r, k);
	if (isfinite(v))
		rec_put(r, "%.*g", prec, v);
	else
		rec_put(r, "null");
}

static void rec_str(struct rec *r, const char *k, const char *v)
{
	rec_key(r, k);
	rec_put(r, "\"%s\"", v);
}

static int metrics_write(struct moe_trainer *t, struct rec *r, struct moe_error *err)
{
	rec_put(r, "}\n");
	int rc = 0;
	if (r->oom)
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
	else if (fwrite(r->buf, 1, r->n, t->metrics) != r->n || fflush(t->metrics) != 0)
		rc = moe_error_errno(err, "cannot write '%s'", t->metrics_path);
	free(r->buf);
	return rc;
}

/* Keep the records of steps <= step (drops what a killed run wrote after
 * its last checkpoint and a torn last line). */
static int metrics_truncate(const char *path, int64_t step, struct moe_error *err)
{
	char *buf;
	size_t len;
	if (!exists(path))
		return 0;
	int rc = moe_read_file(path, &buf, &len, err);
	if (rc)
		return rc;
	char *outb = malloc(len + 1);
	size_t on = 0;
	if (!outb) {
		free(buf);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	char *p = buf;
	while (p < buf + len) {
		char *nl = memchr(p, '\n', (size_t)(buf + len - p));
		if (!nl)
			break; /* torn last line */
		json_t *j = json_loadb(p, (size_t)(nl - p), 0, NULL);
		json_int_t s = -1;
		if (j && json_is_integer(json_object_get(j, "step")))
			s = json_integer_value(json_object_get(j, "step"));
		json_decref(j);
		if (s >= 0 && s <= step) {
			memcpy(outb + on, p, (size_t)(nl - p) + 1);
			on += (size_t)(nl - p) + 1;
		}
		p = nl + 1;
	}
	rc = moe_atomic_write_file(path, outb, on, err);
	free(buf);
	free(outb);
	return rc;
}

/* ---- checkpoints ------------------------------------------------------------ */

static int save_optimizer(struct moe_trainer *t, const char *path, struct moe_error *err)
{
	struct moe_backend *be = moe_model_backend(t->model);
	size_t np;
	const struct moe_param *p = moe_model_params(t->model, &np);
	float *hm = malloc(t->opt.n * sizeof *hm), *hv = malloc(t->opt.n * sizeof *hv);
	struct moe_st_writer *w = moe_st_writer_new();
	char (*names)[MOE_NAME_MAX + 16] = calloc(2 * np, sizeof *names);
	int64_t step = t->opt.t;
	int rc = 0;
	if (!hm || !hv || !w || !names) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	be->to_host(be, hm, t->opt.m, t->opt.n, MOE_BUF_F32);
	be->to_host(be, hv, t->opt.v, t->opt.n, MOE_BUF_F32);
	rc = be->sync(be, err);
	if (rc)
		goto out;
	for (size_t i = 0; i < np && !rc; i++) {
		if (!p[i].trainable)
			continue;
		snprintf(names[2 * i], sizeof names[0], "%s.exp_avg", p[i].name);
		snprintf(names[2 * i + 1], sizeof names[0], "%s.exp_avg_sq", p[i].name);
		rc = moe_st_writer_add(w, names[2 * i], MOE_F32, p[i].ndim, p[i].shape, hm + p[i].offset, err);
		if (!rc)
			rc = moe_st_writer_add(w, names[2 * i + 1], MOE_F32, p[i].ndim, p[i].shape,
					       hv + p[i].offset, err);
	}
	if (rc)
		goto out;
	int64_t one = 1;
	rc = moe_st_writer_add(w, "step", MOE_I64, 1, &one, &step, err);
	if (rc)
		goto out;
	char sbuf[32];
	snprintf(sbuf, sizeof sbuf, "%lld", (long long)step);
	moe_st_writer_meta(w, "format", "moe-adamw");
	moe_st_writer_meta(w, "step", sbuf);
	rc = moe_st_writer_commit(w, path, err);
out:
	moe_st_writer_free(w);
	free(names);
	free(hm);
	free(hv);
	return rc;
}

static int load_optimizer(struct moe_trainer *t, const char *path, struct moe_error *err)
{
	struct moe_backend *be = moe_model_backend(t->model);
	struct moe_st_file *f = moe_st_open(path, err);
	if (!f)
		return err && err->code ? err->code : MOE_EFORMAT;
	size_t np;
	const struct moe_param *p = moe_model_params(t->model, &np);
	int rc = 0;
	char name[MOE_NAME_MAX + 16];
	for (size_t i = 0; i < np && !rc; i++) {
		if (!p[i].trainable)
			continue;
		for (int k = 0; k < 2 && !rc; k++) {
			snprintf(name, sizeof name, "%s.%s", p[i].name, k ? "exp_avg_sq" : "exp_avg");
			const struct moe_st_tensor *x = moe_st_find(f, name);
			if (!x)
				rc = moe_error_set(err, MOE_EFORMAT, "%s: missing tensor '%s'", path, name);
			else if (x->dtype != MOE_F32 || x->nbytes != p[i].numel * sizeof(float))
				rc = moe_error_set(err, MOE_EFORMAT,
						   "%s: tensor '%s' has the wrong dtype or size", path, name);
			else
				be->from_host(be, (k ? t->opt.v : t->opt.m) + p[i].offset, x->data,
					      p[i].numel, MOE_BUF_F32);
		}
	}
	if (!rc) {
		const struct moe_st_tensor *x = moe_st_find(f, "step");
		if (!x || x->dtype != MOE_I64 || x->nbytes != 8)
			rc = moe_error_set(err, MOE_EFORMAT, "%s: missing or bad tensor 'step'", path);
		else
			memcpy(&t->opt.t, x->data, 8);
	}
	moe_st_close(f);
	if (!rc)
		rc = be->sync(be, err);
	return rc;
}

static json_t *schedule_json(const struct moe_trainer *t)
{
	const struct moe_schedule *s = &t->sched;
	return json_pack("{s:s, s:f, s:f, s:I, s:f, s:I, s:I, s:f, s:f}", "kind",
			 moe_sched_name(s->kind), "lr", s->lr, "min_lr", s->min_lr, "warmup_steps",
			 (json_int_t)s->warmup_steps, "warmup_start", s->warmup_start, "decay_steps",
			 (json_int_t)s->decay_steps, "wsd_decay_steps", (json_int_t)s->wsd_decay_steps,
			 "next_lr", moe_schedule_lr(s, t->step), "next_aux_coef",
			 moe_config_aux_coef(&t->cfg, t->step));
}

int moe_trainer_wait(struct moe_trainer *t, struct moe_error *err)
{
	struct moe_backend *be = moe_model_backend(t->model);
	return be->sync(be, err);
}

int moe_trainer_save(struct moe_trainer *t, struct moe_error *err)
{
	char name[32];
	moe_ckpt_name(t->step, name, sizeof name);
	char *path = join(t->ckpt_root, name);
	struct moe_atomic_dir d = { 0 };
	json_t *state = NULL;
	char *p = NULL;
	int rc;
	if (!path)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	rc = moe_atomic_dir_open(&d, path, err);
	if (rc)
		goto out;
	rc = moe_model_save_dir(t->model, d.tmp_path, err);
	if (rc)
		goto out_abort;
	p = join(d.tmp_path, "optimizer.safetensors");
	rc = p ? save_optimizer(t, p, err) : moe_error_set(err, MOE_ENOMEM, "out of memory");
	free(p);
	if (rc)
		goto out_abort;
	json_t *loader = moe_loader_state(t->train);
	json_t *opts = moe_train_opts_to_json(&t->o);
	json_t *sched = schedule_json(t);
	const json_t *sha = loader ? json_object_get(loader, "index_sha256") : NULL;
	state = json_pack("{s:i, s:I, s:I, s:I, s:s, s:{s:s, s:O?}, s:{s:I, s:I}, s:o?, s:o?, s:o?}",
			  "version", 1, "step", (json_int_t)t->step, "total_steps",
			  (json_int_t)t->total_steps, "tokens", (json_int_t)t->tokens, "backend",
			  moe_model_backend(t->model)->name, "data", "dir", t->o.data, "index_sha256",
			  sha, "rng", "init_seed", (json_int_t)t->o.seed, "shuffle_seed",
			  (json_int_t)t->o.seed, "loader", loader, "schedule", sched, "options", opts);
	if (!state) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_abort;
	}
	p = join(d.tmp_path, "trainer_state.json");
	rc = p ? moe_json_save_file(state, p, err) : moe_error_set(err, MOE_ENOMEM, "out of memory");
	free(p);
	if (rc)
		goto out_abort;
	rc = moe_atomic_dir_commit(&d, true, err);
	if (rc)
		goto out;
	rc = moe_ckpt_link_latest(t->ckpt_root, name, err);
	if (!rc)
		rc = moe_ckpt_prune(t->ckpt_root, t->o.keep, err);
	goto out;
out_abort:
	moe_atomic_dir_abort(&d);
out:
	json_decref(state);
	free(path);
	return rc;
}

/* Resume: optimizer state and trainer_state.json of checkpoint dir. */
static int resume_from(struct moe_trainer *t, const char *dir, struct moe_error *err)
{
	char *p = join(dir, "optimizer.safetensors");
	int rc = p ? load_optimizer(t, p, err) : moe_error_set(err, MOE_ENOMEM, "out of memory");
	free(p);
	if (rc)
		return rc;
	p = join(dir, "trainer_state.json");
	json_t *st = p ? moe_json_load_file(p, err) : NULL;
	if (!st) {
		free(p);
		return err && err->code ? err->code : MOE_ENOMEM;
	}
	int64_t v = 0;
	json_t *loader;
	if ((rc = moe_json_get_int(st, "version", true, &v, p, err)))
		goto out;
	if (v != 1) {
		rc = moe_error_set(err, MOE_EVERSION, "%s: unsupported version %lld", p, (long long)v);
		goto out;
	}
	if ((rc = moe_json_get_int(st, "step", true, &t->step, p, err)) ||
	    (rc = moe_json_get_int(st, "tokens", true, &t->tokens, p, err)))
		goto out;
	if (t->step < 0 || t->step != t->opt.t) {
		rc = moe_error_set(err, MOE_EFORMAT,
				   "%s: step %lld does not match the optimizer's step %lld", p,
				   (long long)t->step, (long long)t->opt.t);
		goto out;
	}
	loader = json_object_get(st, "loader");
	if (!json_is_object(loader)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: missing key 'loader'", p);
		goto out;
	}
	rc = moe_loader_restore(t->train, loader, err);
	if (rc)
		moe_error_prefix(err, "%s", p);
out:
	json_decref(st);
	free(p);
	return rc;
}

/* ---- construction ------------------------------------------------------------ */

static int parse_enums(const struct moe_train_opts *o, struct moe_optim_opts *oo,
		       enum moe_sched_kind *sk, struct moe_error *err)
{
	memset(oo, 0, sizeof *oo);
	oo->beta1 = o->beta1;
	oo->beta2 = o->beta2;
	oo->eps = o->eps;
	oo->weight_decay = o->weight_decay;
	oo->clip = o->clip;
	oo->clip_expert = o->clip_expert;
	oo->decay = strcmp(o->decay, "matrices") == 0 ? MOE_DECAY_MATRICES : MOE_DECAY_ALL;
	if (strcmp(o->clip_groups, "global") == 0)
		oo->clip_groups = MOE_CLIP_GLOBAL;
	else if (strcmp(o->clip_groups, "none") == 0)
		oo->clip_groups = MOE_CLIP_NONE;
	else
		oo->clip_groups = MOE_CLIP_EXPERT;
	if (moe_sched_parse(o->schedule, sk))
		return moe_error_set(err, MOE_EINVAL, "unknown schedule '%s'", o->schedule);
	return 0;
}

static int write_run_info(struct moe_trainer *t, struct moe_error *err)
{
	int64_t total = 0, active = 0;
	moe_model_count(t->model, &total, &active);
	json_t *j = json_pack("{s:s, s:I, s:I, s:f, s:o, s:i, s:i, s:i, s:I, s:o}", "backend",
			      moe_model_backend(t->model)->name, "params_total", (json_int_t)total,
			      "params_active", (json_int_t)active, "flops_per_token",
			      t->flops_per_token, "peak_flops",
			      t->peak_flops > 0 ? json_real(t->peak_flops) : json_null(), "micro_batch",
			      t->B, "seq_len", t->T, "grad_accum", t->accum, "total_steps",
			      (json_int_t)t->total_steps, "model", moe_config_to_json(&t->cfg));
	if (!j)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	char *p = join(t->o.out, "run.json");
	int rc = p ? moe_json_save_file(j, p, err) : moe_error_set(err, MOE_ENOMEM, "out of memory");
	free(p);
	json_decref(j);
	if (rc)
		return rc;
	j = moe_train_opts_to_json(&t->o);
	p = join(t->o.out, "train.json");
	rc = (j && p) ? moe_json_save_file(j, p, err) : moe_error_set(err, MOE_ENOMEM, "out of memory");
	free(p);
	json_decref(j);
	return rc;
}

struct moe_trainer *moe_trainer_new(const struct moe_train_opts *o, bool resume,
				    struct moe_error *err)
{
	struct moe_trainer *t = calloc(1, sizeof *t);
	char *latest = NULL, *resume_dir = NULL;
	struct moe_optim_opts oo;
	enum moe_sched_kind sk;
	if (!t) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	t->o = *o;
	if (parse_enums(o, &oo, &sk, err))
		goto fail;
	t->ckpt_root = join(o->out, "ckpt");
	t->metrics_path = join(o->out, "metrics.jsonl");
	if (!t->ckpt_root || !t->metrics_path) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto fail;
	}
	latest = join(t->ckpt_root, "latest");
	if (resume && latest && exists(latest)) {
		resume_dir = realpath(latest, NULL);
		if (!resume_dir) {
			moe_error_errno(err, "cannot resolve '%s'", latest);
			goto fail;
		}
	} else if (!resume && exists(t->metrics_path)) {
		moe_error_set(err, MOE_EINVAL,
			      "'%s' already holds a run (use --resume to continue it, or another --out)",
			      o->out);
		goto fail;
	}

	struct moe_backend *be = moe_train_backend(o->device, NULL, 0, err);
	if (!be)
		goto fail;
	if (resume_dir) {
		t->model = moe_model_load_dir(resume_dir, be, err);
		if (!t->model)
			goto fail;
		t->cfg = *moe_model_config(t->model);
	} else {
		if (moe_config_load(&t->cfg, o->model, err))
			goto fail;
		if (o->aux_coef >= 0)
			t->cfg.router_aux_loss_coef = o->aux_coef;
		if (o->aux_coef_end >= 0)
			t->cfg.router_aux_loss_coef_end = o->aux_coef_end;
		else if (o->aux_coef >= 0)
			t->cfg.router_aux_loss_coef_end = o->aux_coef;
		if (o->aux_decay_steps >= 0)
			t->cfg.router_aux_loss_decay_steps = o->aux_decay_steps;
		if (moe_config_validate(&t->cfg, o->model, err))
			goto fail;
		t->model = moe_model_new(&t->cfg, be, err);
		if (!t->model)
			goto fail;
		if (moe_model_init(t->model, (uint64_t)o->seed, err))
			goto fail;
	}
	moe_model_set_recompute(t->model, strcmp(o->recompute, "full") == 0 ? MOE_RECOMPUTE_FULL
									   : MOE_RECOMPUTE_CHEAP);
	t->B = (int)o->micro_batch;
	t->accum = (int)o->grad_accum;
	t->T = o->seq_len > 0 ? (int)o->seq_len : t->cfg.max_position_embeddings;
	if (t->T <= 0) {
		moe_error_set(err, MOE_EINVAL, "no sequence length (--seq-len)");
		goto fail;
	}
	int64_t per_step = (int64_t)t->B * t->T * t->accum;
	if (o->steps > 0)
		t->total_steps = o->steps;
	else if (o->tokens > 0)
		t->total_steps = (o->tokens + per_step - 1) / per_step;
	else {
		moe_error_set(err, MOE_EINVAL, "no training length: give --steps or --tokens");
		goto fail;
	}
	t->sched = (struct moe_schedule){
		.kind = sk, .lr = o->lr, .min_lr = o->min_lr, .warmup_steps = o->warmup,
		.warmup_start = o->warmup_start,
		.decay_steps = o->decay_steps > 0 ? o->decay_steps
						  : (t->total_steps > o->warmup ? t->total_steps - o->warmup : 0),
	};
	t->sched.wsd_decay_steps = (int64_t)llround(o->wsd_decay * (double)t->sched.decay_steps);
	if (moe_optim_init(&t->opt, t->model, &oo, err))
		goto fail;
	t->opt_ok = true;

	struct moe_loader_opts lo;
	moe_loader_opts_init(&lo);
	lo.dir = o->data;
	lo.split = MOE_SPLIT_TRAIN;
	lo.seq_len = t->T;
	lo.batch = t->B;
	lo.seed = (uint64_t)o->seed;
	t->train = moe_loader_new(&lo, err);
	if (!t->train)
		goto fail;
	const struct moe_dataset_info *di = moe_loader_info(t->train);
	if (di->vocab_size > (uint32_t)t->cfg.vocab_size) {
		moe_error_set(err, MOE_EINVAL,
			      "'%s': vocabulary of %u ids does not fit the model's vocab_size %d",
			      o->data, di->vocab_size, t->cfg.vocab_size);
		goto fail;
	}
	if (o->eval_every > 0) {
		struct moe_error e2 = { 0 };
		lo.split = MOE_SPLIT_VAL;
		lo.shuffle = false;
		lo.single_epoch = true;
		lo.prefetch = 0;
		t->val = moe_loader_new(&lo, &e2);
		if (!t->val)
			snprintf(t->val_note, sizeof t->val_note, "validation is off: %s", e2.msg);
	}
	size_t n = (size_t)t->B * (size_t)t->T;
	t->rows = malloc((n + (size_t)t->B) * sizeof *t->rows);
	t->in = malloc(n * sizeof *t->in);
	t->tgt = malloc(n * sizeof *t->tgt);
	t->Lm = moe_config_n_moe_layers(&t->cfg);
	t->E = t->cfg.num_experts;
	t->counts = calloc((size_t)(t->Lm > 0 ? t->Lm : 1) * (size_t)t->E, sizeof *t->counts);
	if (!t->rows || !t->in || !t->tgt || !t->counts) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto fail;
	}
	t->flops_per_token = moe_model_flops_per_token(&t->cfg, t->T);
	t->peak_flops = moe_peak_flops(moe_model_backend(t->model)->name);

	if (resume_dir && resume_from(t, resume_dir, err))
		goto fail;
	/* on resume, drop what was written after the checkpoint (everything
	 * when a run is restarted before its first checkpoint) */
	if (resume && metrics_truncate(t->metrics_path, t->step, err))
		goto fail;
	if (moe_mkdirs(t->ckpt_root, err))
		goto fail;
	if (write_run_info(t, err))
		goto fail;
	/* a killed writer may have left temporaries */
	if (moe_ckpt_prune(t->ckpt_root, 0, err))
		goto fail;
	t->metrics = fopen(t->metrics_path, "a");
	if (!t->metrics) {
		moe_error_errno(err, "cannot open '%s'", t->metrics_path);
		goto fail;
	}
	free(latest);
	free(resume_dir);
	return t;
fail:
	free(latest);
	free(resume_dir);
	moe_trainer_free(t);
	return NULL;
}

void moe_trainer_free(struct moe_trainer *t)
{
	if (!t)
		return;
	if (t->metrics)
		fclose(t->metrics);
	moe_loader_free(t->train);
	moe_loader_free(t->val);
	if (t->opt_ok)
		moe_optim_release(&t->opt);
	moe_model_free(t->model);
	free(t->rows);
	free(t->in);
	free(t->tgt);
	free(t->counts);
	free(t->ckpt_root);
	free(t->metrics_path);
	free(t);
}

int64_t moe_trainer_step_index(const struct moe_trainer *t)
{
	return t->step;
}

int64_t moe_trainer_total_steps(const struct moe_trainer *t)
{
	return t->total_steps;
}

int moe_trainer_seq_len(const struct moe_trainer *t)
{
	return t->T;
}

const char *moe_trainer_backend_name(struct moe_trainer *t)
{
	return moe_model_backend(t->model)->name;
}

const char *moe_trainer_note(const struct moe_trainer *t)
{
	return t->val_note[0] ? t->val_note : NULL;
}

struct moe_model *moe_trainer_model(struct moe_trainer *t)
{
	return t->model;
}

/* ---- one step ------------------------------------------------------------------ */

/* Per MoE layer: the most (max) or least loaded expert's count over the mean. */
static void rec_load(struct rec *r, const char *k, const int64_t *counts, int Lm, int E, bool max)
{
	rec_key(r, k);
	rec_put(r, "[");
	for (int l = 0; l < Lm; l++) {
		const int64_t *c = counts + (size_t)l * E;
		int64_t sum = 0, mx = c[0], mn = c[0];
		for (int e = 0; e < E; e++) {
			sum += c[e];
			mx = c[e] > mx ? c[e] : mx;
			mn = c[e] < mn ? c[e] : mn;
		}
		double mean = (double)sum / E;
		double v = mean > 0 ? (double)(max ? mx : mn) / mean : 0;
		rec_put(r, "%s%.4g", l ? "," : "", v);
	}
	rec_put(r, "]");
}

int moe_trainer_step(struct moe_trainer *t, struct moe_step_stats *st, struct moe_error *err)
{
	double t0 = moe_now();
	double lr = moe_schedule_lr(&t->sched, t->step);
	double coef = moe_config_aux_coef(&t->cfg, t->step);
	size_t nc = (size_t)t->Lm * (size_t)t->E;
	int rc;

	moe_model_set_aux_coef(t->model, coef);
	moe_model_zero_grad(t->model);
	memset(t->counts, 0, nc * sizeof *t->counts);
	memset(st, 0, sizeof *st);
	for (int a = 0; a < t->accum; a++) {
		rc = moe_loader_next(t->train, t->rows, err);
		if (rc < 0)
			return rc;
		if (rc != t->B)
			return moe_error_set(err, MOE_ETRUNC, "'%s': short training batch", t->o.data);
		for (int b = 0; b < t->B; b++) {
			const int32_t *r = t->rows + (size_t)b * (t->T + 1);
			memcpy(t->in + (size_t)b * t->T, r, (size_t)t->T * sizeof *t->in);
			memcpy(t->tgt + (size_t)b * t->T, r + 1, (size_t)t->T * sizeof *t->tgt);
		}
		struct moe_forward_opts fo = { .train = true };
		struct moe_losses ls;
		rc = moe_model_forward(t->model, t->in, t->tgt, t->B, t->T, &fo, &ls, err);
		if (rc)
			return rc;
		/* the seed: the gradient is the mean of the micro-batch means */
		rc = moe_model_backward(t->model, 1.0f / (float)t->accum, err);
		if (rc)
			return rc;
		const int64_t *c = moe_model_expert_counts(t->model);
		for (size_t i = 0; c && i < nc; i++)
			t->counts[i] += c[i];
		st->loss += ls.total / t->accum;
		st->ce += ls.ce / t->accum;
		st->aux += ls.aux / t->accum;
		st->z += ls.z / t->accum;
	}
	struct moe_clip_stats cs;
	moe_optim_clip(&t->opt, &cs);
	moe_optim_step(&t->opt, lr);
	if (t->cfg.loss_free_balancing && t->Lm > 0) {
		rc = moe_model_update_bias(t->model, t->counts, (float)t->cfg.balance_update_rate, err);
		if (rc)
			return rc;
	}
	/* no synchronisation here: the optimizer's kernels run while the host
	 * logs this step and loads the next batch (the next forward's read-back
	 * waits for them); an error so far is reported now, a later one at
	 * that read-back */
	struct moe_backend *be = moe_model_backend(t->model);
	rc = be->status ? be->status(be, err) : be->sync(be, err);
	if (rc)
		return rc;
	t->step++;
	int64_t ntok = (int64_t)t->B * t->T * t->accum;
	t->tokens += ntok;

	double dt = moe_now() - t0;
	st->step = t->step;
	st->tokens = t->tokens;
	st->lr = lr;
	st->aux_coef = coef;
	st->grad_norm = cs.norm;
	st->grad_norm_expert = cs.norm_expert;
	st->grad_norm_other = cs.norm_other;
	st->step_s = dt;
	st->tokens_per_s = dt > 0 ? (double)ntok / dt : 0;
	st->mfu = t->peak_flops > 0 ? st->tokens_per_s * t->flops_per_token / t->peak_flops : -1;

	struct rec r = { 0 };
	rec_put(&r, "{");
	rec_int(&r, "step", st->step);
	rec_str(&r, "split", "train");
	rec_int(&r, "tokens", st->tokens);
	rec_num(&r, "loss", st->loss, 17);
	rec_num(&r, "ce", st->ce, 17);
	rec_num(&r, "aux", st->aux, 17);
	rec_num(&r, "z", st->z, 17);
	rec_num(&r, "aux_coef", coef, 9);
	rec_num(&r, "lr", lr, 9);
	rec_num(&r, "grad_norm", cs.norm, 9);
	rec_num(&r, "grad_norm_expert", cs.norm_expert, 9);
	rec_num(&r, "grad_norm_other", cs.norm_other, 9);
	rec_num(&r, "clip_coef", cs.coef_other < cs.coef_expert ? cs.coef_other : cs.coef_expert, 6);
	rec_num(&r, "step_ms", dt * 1e3, 5);
	rec_num(&r, "tokens_per_s", st->tokens_per_s, 6);
	rec_num(&r, "mfu", st->mfu >= 0 ? st->mfu : NAN, 4);
	rec_int(&r, "rss_bytes", rss_bytes());
	int64_t dm = device_mem_bytes(t->model);
	if (dm >= 0)
		rec_int(&r, "device_mem_bytes", dm);
	else
		rec_num(&r, "device_mem_bytes", NAN, 1);
	if (t->Lm > 0) {
		rec_load(&r, "load_max", t->counts, t->Lm, t->E, true);
		rec_load(&r, "load_min", t->counts, t->Lm, t->E, false);
	}
	return metrics_write(t, &r, err);
}

int moe_trainer_eval(struct moe_trainer *t, struct moe_eval_stats *ev, struct moe_error *err)
{
	memset(ev, 0, sizeof *ev);
	if (!t->val)
		return 0;
	int rc = moe_evaluate(t->model, t->val, t->B, t->T, t->o.eval_batches, false, ev, err);
	if (rc)
		return rc;
	struct rec r = { 0 };
	rec_put(&r, "{");
	rec_int(&r, "step", t->step);
	rec_str(&r, "split", "val");
	rec_int(&r, "tokens", t->tokens);
	rec_num(&r, "loss", ev->loss, 17);
	rec_num(&r, "ce", ev->ce, 17);
	rec_num(&r, "aux", ev->aux, 17);
	rec_num(&r, "z", ev->z, 17);
	rec_num(&r, "ppl", ev->ppl, 9);
	rec_int(&r, "eval_tokens", ev->tokens);
	return metrics_write(t, &r, err);
}
