/*
 * The optimizer and the trainer on the CPU backend: AdamW against a hand
 * computation (torch.optim.AdamW's update written out here in double),
 * the decayed set, clipping groups, and gradient accumulation equivalence.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "synth.h"
#include "train/train.h"

static char model_path[1024];

static struct moe_model *micro_model(void)
{
	const char *src = getenv("MOE_SRCDIR");
	snprintf(model_path, sizeof model_path, "%s/tests/train/data/micro.json", src ? src : ".");
	struct moe_config cfg;
	struct moe_error err = { 0 };
	cr_assert_eq(moe_config_load(&cfg, model_path, &err), 0, "%s", err.msg);
	struct moe_model *m = moe_model_new(&cfg, NULL, &err);
	cr_assert(m, "%s", err.msg);
	cr_assert_eq(moe_model_init(m, 42, &err), 0, "%s", err.msg);
	return m;
}

static uint64_t rng = 88172645463325252ull;
static double unif(void)
{
	rng ^= rng << 13;
	rng ^= rng >> 7;
	rng ^= rng << 17;
	return (double)(rng >> 11) * 0x1.0p-53 * 2 - 1;
}

static void check_adamw(enum moe_decay_set set)
{
	struct moe_model *m = micro_model();
	struct moe_error err = { 0 };
	size_t n = moe_model_num_params(m), np;
	const struct moe_param *tab = moe_model_params(m, &np);
	float *p = moe_model_params_host(m), *g = moe_model_grads_host(m);
	cr_assert(p && g);
	struct moe_optim_opts oo = { .beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8,
				     .weight_decay = 0.1, .decay = set };
	struct moe_optim o;
	cr_assert_eq(moe_optim_init(&o, m, &oo, &err), 0, "%s", err.msg);
	double *P = malloc(n * sizeof *P), *M = calloc(n, sizeof *M), *V = calloc(n, sizeof *V);
	for (size_t i = 0; i < n; i++)
		P[i] = p[i];
	const double lrs[2] = { 1e-2, 3e-3 };
	for (int t = 1; t <= 2; t++) {
		for (size_t i = 0; i < n; i++)
			g[i] = (float)(unif() * 0.1);
		double lr = lrs[t - 1];
		for (size_t k = 0; k < np; k++) {
			const struct moe_param *q = &tab[k];
			if (!q->trainable)
				continue;
			bool dec = set == MOE_DECAY_ALL || (q->kind != MOE_P_NORM && q->ndim == 2);
			for (size_t i = q->offset; i < q->offset + q->numel; i++) {
				/* torch.optim.AdamW: decoupled decay, then the Adam step */
				if (dec)
					P[i] *= 1 - lr * 0.1;
				M[i] = 0.9 * M[i] + 0.1 * g[i];
				V[i] = 0.95 * V[i] + 0.05 * (double)g[i] * g[i];
				double bc1 = 1 - pow(0.9, t), bc2 = 1 - pow(0.95, t);
				P[i] -= lr / bc1 * M[i] / (sqrt(V[i]) / sqrt(bc2) + 1e-8);
			}
		}
		moe_optim_step(&o, lr);
		cr_assert_eq(o.t, t);
		for (size_t k = 0; k < np; k++) {
			const struct moe_param *q = &tab[k];
			for (size_t i = q->offset; i < q->offset + q->numel; i++)
				cr_assert(fabs(p[i] - P[i]) <= 1e-6 + 1e-5 * fabs(P[i]),
					  "%s[%zu] step %d: %.9g vs %.9g", q->name, i - q->offset, t,
					  p[i], P[i]);
		}
	}
	free(P);
	free(M);
	free(V);
	moe_optim_release(&o);
	moe_model_free(m);
}

Test(optim, adamw_all_decayed)
{
	check_adamw(MOE_DECAY_ALL);
}

Test(optim, adamw_matrices_decayed)
{
	check_adamw(MOE_DECAY_MATRICES);
}

static void group_norms(struct moe_model *m, double *ne, double *no)
{
	size_t np;
	const struct moe_param *tab = moe_model_params(m, &np);
	const float *g = moe_model_grads_host(m);
	double se = 0, so = 0;
	for (size_t k = 0; k < np; k++) {
		if (!tab[k].trainable)
			continue;
		for (size_t i = tab[k].offset; i < tab[k].offset + tab[k].numel; i++)
			*(tab[k].is_expert ? &se : &so) += (double)g[i] * g[i];
	}
	*ne = sqrt(se);
	*no = sqrt(so);
}

static void fill_groups(struct moe_model *m, float ge, float go)
{
	size_t np;
	const struct moe_param *tab = moe_model_params(m, &np);
	float *g = moe_model_grads_host(m);
	for (size_t k = 0; k < np; k++)
		for (size_t i = tab[k].offset; i < tab[k].offset + tab[k].numel; i++)
			g[i] = tab[k].is_expert ? ge : go;
}

/* The update moe_optim_step makes from the current gradients, as
 * parameter deltas (the parameters are restored afterwards). */
static void step_delta(struct moe_model *m, struct moe_optim *o, double *d)
{
	size_t n = moe_model_num_params(m);
	float *p = moe_model_params_host(m);
	float *p0 = malloc(n * sizeof *p0);
	memcpy(p0, p, n * sizeof *p0);
	moe_optim_step(o, 1e-2);
	for (size_t i = 0; i < n; i++) {
		d[i] = (double)p[i] - p0[i];
		p[i] = p0[i];
	}
	moe_model_params_updated(m);
	free(p0);
}

Test(optim, clip_groups)
{
	struct moe_model *m = micro_model();
	struct moe_error err = { 0 };
	struct moe_optim o, ref;
	/* eps comparable to the gradients, so that the first Adam step depends on
	 * their scale (with a tiny eps it is lr * sign(g) whatever the clip) */
	struct moe_optim_opts oo = { .beta1 = 0.9, .beta2 = 0.999, .eps = 0.1, .clip = 1.0,
				     .clip_expert = 0.5, .clip_groups = MOE_CLIP_EXPERT };
	cr_assert_eq(moe_optim_init(&o, m, &oo, &err), 0, "%s", err.msg);
	/* the reference: no clipping, applied to gradients scaled by hand */
	struct moe_optim_opts on = oo;
	on.clip_groups = MOE_CLIP_NONE;
	cr_assert_eq(moe_optim_init(&ref, m, &on, &err), 0, "%s", err.msg);
	/* names containing "expert" form the expert group (routed and shared) */
	size_t np, n = moe_model_num_params(m);
	const struct moe_param *tab = moe_model_params(m, &np);
	for (size_t k = 0; k < np; k++)
		cr_assert_eq(tab[k].is_expert, strstr(tab[k].name, "expert") != NULL, "%s", tab[k].name);
	double *d = malloc(n * sizeof *d), *dref = malloc(n * sizeof *dref);

	fill_groups(m, 0.3f, 0.01f);
	double ne0, no0, ne, no;
	group_norms(m, &ne0, &no0);
	struct moe_clip_stats cs;
	moe_optim_clip(&o, &cs);
	cr_assert(fabs(cs.norm_expert - ne0) < 1e-6 * ne0);
	cr_assert(fabs(cs.norm_other - no0) < 1e-6 * no0);
	cr_assert(fabs(cs.norm - hypot(ne0, no0)) < 1e-6 * cs.norm);
	/* each group separately: expert to 0.5 (it was larger), the rest as is if below 1 */
	double want_e = ne0 > 0.5 ? 0.5 / (ne0 + 1e-6) : 1.0;
	double want_o = no0 > 1.0 ? 1.0 / (no0 + 1e-6) : 1.0;
	cr_assert(ne0 > 0.5 && no0 < 1.0, "the fill makes only the expert group clip (%g, %g)", ne0, no0);
	cr_assert(fabs(cs.coef_expert - want_e) < 1e-6 * want_e, "expert factor %g want %g", cs.coef_expert, want_e);
	cr_assert(fabs(cs.coef_other - want_o) < 1e-6 * want_o, "other factor %g want %g", cs.coef_other, want_o);
	/* the gradients are left as they were: the step applies the factors */
	group_norms(m, &ne, &no);
	cr_assert(ne == ne0 && no == no0);
	step_delta(m, &o, d);
	fill_groups(m, (float)(0.3f * (float)cs.coef_expert), (float)(0.01f * (float)cs.coef_other));
	step_delta(m, &ref, dref);
	for (size_t i = 0; i < n; i++)
		cr_assert(fabs(d[i] - dref[i]) <= 1e-9 + 1e-5 * fabs(dref[i]), "delta[%zu] %.9g vs %.9g", i, d[i],
			  dref[i]);
	/* the factors hold for one step only */
	cr_assert(o.gscale[0] == 1.0f && o.gscale[1] == 1.0f);

	/* one global group: both scaled by the same factor */
	o.opts.clip_groups = MOE_CLIP_GLOBAL;
	fill_groups(m, 0.3f, 0.2f);
	group_norms(m, &ne0, &no0);
	moe_optim_clip(&o, &cs);
	double tot = hypot(ne0, no0), c = tot > 1.0 ? 1.0 / (tot + 1e-6) : 1.0;
	cr_assert(tot > 1.0);
	cr_assert(fabs(cs.coef_expert - c) < 1e-6 * c && fabs(cs.coef_other - c) < 1e-6 * c, "%g %g want %g",
		  cs.coef_expert, cs.coef_other, c);
	cr_assert(fabs(hypot(c * ne0, c * no0) - 1.0) < 1e-5);

	/* none: factors 1 */
	o.opts.clip_groups = MOE_CLIP_NONE;
	fill_groups(m, 3.0f, 2.0f);
	moe_optim_clip(&o, &cs);
	cr_assert(cs.coef_expert == 1.0 && cs.coef_other == 1.0);
	cr_assert(o.gscale[0] == 1.0f && o.gscale[1] == 1.0f);
	free(d);
	free(dref);
	moe_optim_release(&ref);
	moe_optim_release(&o);
	moe_model_free(m);
}

static float *one_step(const char *dir, const char *data, int mb, int accum, struct moe_step_stats *st,
		       size_t *n)
{
	struct moe_train_opts o;
	struct moe_error err = { 0 };
	moe_train_opts_default(&o);
	snprintf(o.model, sizeof o.model, "%s", model_path);
	snprintf(o.data, sizeof o.data, "%s", data);
	snprintf(o.out, sizeof o.out, "%s", dir);
	strcpy(o.device, "cpu");
	o.micro_batch = mb;
	o.grad_accum = accum;
	o.seq_len = 16;
	o.steps = 1;
	o.eval_every = 0;
	o.aux_coef = 0; /* the pooled aux loss is not additive over micro-batches */
	o.clip = 0;
	struct moe_trainer *t = moe_trainer_new(&o, false, &err);
	cr_assert(t, "%s", err.msg);
	cr_assert_eq(moe_trainer_step(t, st, &err), 0, "%s", err.msg);
	struct moe_model *m = moe_trainer_model(t);
	*n = moe_model_num_params(m);
	float *g = malloc(*n * sizeof *g);
	memcpy(g, moe_model_grads_host(m), *n * sizeof *g);
	moe_trainer_free(t);
	return g;
}

Test(trainer, accumulation_equivalence)
{
	char root[] = "/tmp/moe-test-accumXXXXXX";
	cr_assert(mkdtemp(root));
	char data[300], a[300], b[300];
	snprintf(data, sizeof data, "%s/data", root);
	snprintf(a, sizeof a, "%s/a", root);
	snprintf(b, sizeof b, "%s/b", root);
	struct moe_error err = { 0 };
	cr_assert_eq(synth_shards(data, 200, 7, &err), 0, "%s", err.msg);
	struct moe_model *m = micro_model(); /* sets model_path */
	moe_model_free(m);
	struct moe_step_stats s1, s2;
	size_t n1, n2;
	float *g1 = one_step(a, data, 4, 1, &s1, &n1);
	float *g2 = one_step(b, data, 2, 2, &s2, &n2);
	cr_assert_eq(n1, n2);
	cr_assert(fabs(s1.ce - s2.ce) < 1e-5 * s1.ce, "ce %g vs %g", s1.ce, s2.ce);
	cr_assert(fabs(s1.grad_norm - s2.grad_norm) < 1e-4 * s1.grad_norm, "norm %g vs %g",
		  s1.grad_norm, s2.grad_norm);
	float mx = 0;
	for (size_t i = 0; i < n1; i++)
		mx = fmaxf(mx, fabsf(g1[i]));
	for (size_t i = 0; i < n1; i++)
		cr_assert(fabsf(g1[i] - g2[i]) <= 1e-5f * mx, "grad %zu: %g vs %g", i, g1[i], g2[i]);
	free(g1);
	free(g2);
	moe_rmtree(root, &err);
}

Test(trainer, flops_per_token_matches_torch_ref)
{
	/* shared/bench/torch_ref.py, preset "seed" (T 2048): 6 * 252,444,672
	 * active matmul parameters + 3 * 59,768,832 attention = 1,693,974,528
	 * (worked out by hand from its flops_per_token()) */
	struct moe_config cfg;
	struct moe_error err = { 0 };
	if (moe_config_load(&cfg, "seed-base", &err) != 0)
		cr_skip_test("no seed-base preset: %s", err.msg);
	cr_assert_eq(moe_model_flops_per_token(&cfg, 2048), 1693974528.0);
}
