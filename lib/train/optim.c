/*
 * The optimizer over the model's parameter table: AdamW with a configurable
 * decayed set, global-norm clipping in one group or in the seed's two
 * groups (expert and non-expert tensors), on any backend (all arithmetic
 * goes through the backend's sumsq/adamw on its own memory).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "train/train.h"

bool moe_optim_decays(const struct moe_param *p, enum moe_decay_set set)
{
	if (!p->trainable)
		return false;
	if (set == MOE_DECAY_ALL)
		return true;
	return p->kind != MOE_P_NORM && p->kind != MOE_P_BIAS && p->ndim >= 2;
}

int moe_optim_init(struct moe_optim *o, struct moe_model *m, const struct moe_optim_opts *opts,
		   struct moe_error *err)
{
	memset(o, 0, sizeof *o);
	o->gscale[0] = o->gscale[1] = 1.0f;
	o->model = m;
	o->opts = *opts;
	o->n = moe_model_num_params(m);
	struct moe_backend *be = moe_model_backend(m);
	o->m = be->alloc(be, o->n, MOE_BUF_F32);
	o->v = be->alloc(be, o->n, MOE_BUF_F32);
	if (!o->m || !o->v) {
		moe_optim_release(o);
		return moe_error_set(err, MOE_ENOMEM, "cannot allocate the optimizer state (%zu floats)",
				     2 * o->n);
	}
	/* Merge neighbouring trained tensors with the same group and decay into
	 * spans, so that the backend sees a few large calls per layer instead
	 * of one per expert matrix (each sumsq is a device sync on CUDA). */
	size_t np;
	const struct moe_param *p = moe_model_params(m, &np);
	o->spans = calloc(np ? np : 1, sizeof *o->spans);
	o->ss = calloc(np ? np : 1, sizeof *o->ss);
	if (!o->spans || !o->ss) {
		moe_optim_release(o);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	for (size_t i = 0; i < np; i++) {
		if (!p[i].trainable)
			continue;
		bool dec = moe_optim_decays(&p[i], opts->decay);
		struct moe_optim_span *last = o->n_spans ? &o->spans[o->n_spans - 1] : NULL;
		bool pk = p[i].kind != MOE_P_NORM && p[i].kind != MOE_P_BIAS;
		if (last && last->offset + last->n == p[i].offset && last->expert == p[i].is_expert &&
		    last->decay == dec) {
			last->n += p[i].numel;
			last->packable = last->packable && pk;
			continue;
		}
		o->spans[o->n_spans++] = (struct moe_optim_span){
			.offset = p[i].offset, .n = p[i].numel, .expert = p[i].is_expert, .decay = dec, .packable = pk };
	}
	/* the masters only AdamW reads in fp32 may be kept in a form that is
	 * cheaper for it to move (the CUDA backend's packed masters) */
	if (be->masters_pack)
		for (size_t i = 0; i < o->n_spans; i++)
			if (o->spans[i].packable)
				be->masters_pack(be, o->spans[i].offset, o->spans[i].n);
	return 0;
}

void moe_optim_release(struct moe_optim *o)
{
	if (!o->model)
		return;
	struct moe_backend *be = moe_model_backend(o->model);
	if (o->m)
		be->free(be, o->m);
	if (o->v)
		be->free(be, o->v);
	o->m = o->v = NULL;
	free(o->spans);
	free(o->ss);
	o->spans = NULL;
	o->ss = NULL;
	o->n_spans = 0;
	o->model = NULL;
}

void moe_optim_grad_norms(struct moe_optim *o, double *expert, double *other)
{
	struct moe_backend *be = moe_model_backend(o->model);
	double se = 0, so = 0;
	moe_model_grads_ready(o->model);
	/* every span's sum of squares is queued first and read back in one
	 * synchronisation (a CUDA backend delivers them at the sync) */
	for (size_t i = 0; i < o->n_spans; i++) {
		const struct moe_optim_span *sp = &o->spans[i];
		be->sumsq(be, be->grad(be, sp->offset), sp->n, &o->ss[i]);
	}
	if (be->sync(be, NULL) < 0) {
		*expert = *other = NAN;
		return;
	}
	for (size_t i = 0; i < o->n_spans; i++) {
		if (o->spans[i].expert)
			se += o->ss[i];
		else
			so += o->ss[i];
	}
	*expert = sqrt(se);
	*other = sqrt(so);
}

/* torch.nn.utils.clip_grad_norm_: coef = max / (norm + 1e-6), capped at 1 */
static double clip_coef(double max_norm, double norm)
{
	if (max_norm <= 0)
		return 1.0;
	double c = max_norm / (norm + 1e-6);
	return c < 1.0 ? c : 1.0;
}

void moe_optim_clip(struct moe_optim *o, struct moe_clip_stats *cs)
{
	double ne, no;
	moe_optim_grad_norms(o, &ne, &no);
	memset(cs, 0, sizeof *cs);
	cs->norm_expert = ne;
	cs->norm_other = no;
	cs->norm = sqrt(ne * ne + no * no);
	cs->coef_expert = cs->coef_other = 1.0;
	double max_e = o->opts.clip_expert >= 0 ? o->opts.clip_expert : o->opts.clip;
	switch (o->opts.clip_groups) {
	case MOE_CLIP_NONE:
		break;
	case MOE_CLIP_GLOBAL:
		cs->coef_expert = cs->coef_other = clip_coef(o->opts.clip, cs->norm);
		break;
	case MOE_CLIP_EXPERT:
		cs->coef_other = clip_coef(o->opts.clip, no);
		cs->coef_expert = clip_coef(max_e, ne);
		break;
	}
	/* applied by the next step as AdamW reads each gradient: no pass over
	 * the gradients here (they keep their unclipped values) */
	o->gscale[0] = (float)cs->coef_other;
	o->gscale[1] = (float)cs->coef_expert;
}

void moe_optim_step(struct moe_optim *o, double lr)
{
	struct moe_backend *be = moe_model_backend(o->model);
	moe_model_grads_ready(o->model);
	o->t++;
	for (size_t i = 0; i < o->n_spans; i++) {
		const struct moe_optim_span *sp = &o->spans[i];
		float wd = sp->decay ? (float)o->opts.weight_decay : 0.0f;
		be->adamw(be, be->master(be, sp->offset), be->grad(be, sp->offset), o->gscale[sp->expert ? 1 : 0],
			  o->m + sp->offset, o->v + sp->offset, sp->n, (float)lr, (float)o->opts.beta1,
			  (float)o->opts.beta2, (float)o->opts.eps, wd, o->t);
	}
	o->gscale[0] = o->gscale[1] = 1.0f;
	moe_model_params_updated(o->model);
}
