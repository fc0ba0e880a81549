/*
 * The CPU backend: host memory, fp32 everywhere, the ops of ops.h.
 */
#include "model/model.h"
#include "model/ops.h"

#include <stdlib.h>
#include <string.h>

struct cpu_ctx {
	float *params; /* (n) */
	float *grads;  /* (n) */
	size_t n;
};

static size_t kind_size(struct moe_backend *be, enum moe_buf_kind kind)
{
	if (kind == MOE_BUF_ACT)
		return be->act_size;
	return kind == MOE_BUF_F32 ? sizeof(float) : sizeof(int32_t);
}

static void *cpu_alloc(struct moe_backend *be, size_t n, enum moe_buf_kind kind)
{
	size_t bytes = n * kind_size(be, kind);
	void *p = NULL;
	if (posix_memalign(&p, 64, bytes ? bytes : 64))
		return NULL;
	memset(p, 0, bytes);
	return p;
}

static void cpu_free(struct moe_backend *be, void *p)
{
	(void)be;
	free(p);
}

static void cpu_zero(struct moe_backend *be, void *p, size_t n, enum moe_buf_kind kind)
{
	memset(p, 0, n * kind_size(be, kind));
}

static void cpu_copy(struct moe_backend *be, void *dst, const void *src, size_t n, enum moe_buf_kind kind)
{
	memmove(dst, src, n * kind_size(be, kind));
}

static int cpu_sync(struct moe_backend *be, struct moe_error *err)
{
	(void)be;
	(void)err;
	return 0;
}

static void cpu_destroy(struct moe_backend *be)
{
	if (!be)
		return;
	struct cpu_ctx *c = be->ctx;
	if (c) {
		free(c->params);
		free(c->grads);
		free(c);
	}
	free(be);
}

static int cpu_params_alloc(struct moe_backend *be, size_t n, struct moe_error *err)
{
	struct cpu_ctx *c = be->ctx;
	free(c->params);
	free(c->grads);
	/* calloc: large blocks come as untouched zero pages, so a model used
	 * only for inference never makes its gradients resident */
	c->params = calloc(n ? n : 1, sizeof(float));
	c->grads = calloc(n ? n : 1, sizeof(float));
	c->n = n;
	if (!c->params || !c->grads)
		return moe_error_set(err, MOE_ENOMEM, "out of memory allocating %zu parameters", n);
	return 0;
}

static float *cpu_master(struct moe_backend *be, size_t off)
{
	return ((struct cpu_ctx *)be->ctx)->params + off;
}

static float *cpu_grad(struct moe_backend *be, size_t off)
{
	return ((struct cpu_ctx *)be->ctx)->grads + off;
}

static const void *cpu_param(struct moe_backend *be, size_t off)
{
	return ((struct cpu_ctx *)be->ctx)->params + off;
}

static void cpu_params_updated(struct moe_backend *be)
{
	(void)be;
}

/* ---- op wrappers ---------------------------------------------------------- */

#define F(p) ((float *)(p))
#define CF(p) ((const float *)(p))

static void c_embedding_fwd(struct moe_backend *be, void *out, const int32_t *ids, const void *wte, int N, int D)
{
	(void)be;
	moe_embedding_fwd(F(out), ids, CF(wte), N, D);
}
static void c_embedding_bwd(struct moe_backend *be, float *dwte, const void *dout, const int32_t *ids, int N, int D, int pad_id)
{
	(void)be;
	moe_embedding_bwd(dwte, CF(dout), ids, N, D, pad_id);
}
static void c_rmsnorm_fwd(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int N, int D, float eps)
{
	(void)be;
	moe_rmsnorm_fwd(F(out), rstd, CF(x), CF(w), N, D, eps);
}
static void c_rmsnorm_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd, int N, int D)
{
	(void)be;
	moe_rmsnorm_bwd(F(dx), dw, CF(dout), CF(x), CF(w), rstd, N, D);
}
static void c_rmsnorm_bwd_add(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd, int N, int D)
{
	(void)be;
	moe_rmsnorm_bwd_add(F(dx), dw, CF(dout), CF(x), CF(w), rstd, N, D);
}
static void c_linear_fwd(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out)
{
	(void)be;
	moe_linear_fwd(F(out), CF(x), CF(w), NULL, N, In, Out);
}
static void c_linear_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, int N, int In, int Out)
{
	(void)be;
	moe_linear_bwd(F(dx), dw, NULL, CF(dout), CF(x), CF(w), N, In, Out);
}
static void c_linear_fwd_add(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out)
{
	(void)be;
	moe_linear_fwd_add(F(out), CF(x), CF(w), N, In, Out);
}
static void c_linear_bwd_add(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, int N, int In, int Out)
{
	(void)be;
	if (dx)
		moe_linear_bwd_dx_add(F(dx), CF(dout), CF(w), N, In, Out);
	if (dw)
		moe_linear_bwd(NULL, dw, NULL, CF(dout), CF(x), CF(w), N, In, Out);
}
/* The batched forms (the q, k, v projections side by side): one linear per
 * matrix, so the model's strided path runs on this backend too. */
static void c_linear_fwd_multi(struct moe_backend *be, void *out, size_t out_stride, const void *x, const void *w,
			       size_t w_stride, int nb, int N, int In, int Out)
{
	(void)be;
	for (int i = 0; i < nb; i++)
		moe_linear_fwd(F(out) + i * out_stride, CF(x), CF(w) + i * w_stride, NULL, N, In, Out);
}
static void c_linear_wgrad_multi(struct moe_backend *be, float *dw, size_t dw_stride, const void *dout,
				 size_t dout_stride, int ld_dout, const void *x, size_t x_stride, int ld_x, int nb, int N,
				 int In, int Out)
{
	(void)be;
	for (int i = 0; i < nb; i++) {
		const float *d = CF(dout) + i * dout_stride, *xb = CF(x) + i * x_stride;
		if (ld_dout == Out && ld_x == In) {
			moe_linear_bwd(NULL, dw + i * dw_stride, NULL, d, xb, NULL, N, In, Out);
			continue;
		}
		for (int n = 0; n < N; n++) /* rows apart: one row at a time */
			moe_linear_bwd(NULL, dw + i * dw_stride, NULL, d + (size_t)n * ld_dout, xb + (size_t)n * ld_x, NULL, 1,
				       In, Out);
	}
}
static void c_qknorm_rope_fwd(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int B,
			      int T, int H, int Dh, float eps, float theta)
{
	(void)be;
	moe_rmsnorm_fwd(F(out), rstd, CF(x), CF(w), B * T, H * Dh, eps);
	moe_rope_fwd(F(out), B, T, H, Dh, theta);
}
static void c_qknorm_rope_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x,
			      const void *w, const float *rstd, int B, int T, int H, int Dh, float theta)
{
	(void)be;
	float *g = (float *)dout; /* the op may overwrite dout: RoPE back in place */
	moe_rope_bwd(g, B, T, H, Dh, theta);
	moe_rmsnorm_bwd(F(dx), dw, g, CF(x), CF(w), rstd, B * T, H * Dh);
}
static void c_attention_fwd(struct moe_backend *be, void *out, float *lse, const void *q, const void *k, const void *v, int B, int T, int H, int Dh)
{
	(void)be;
	moe_attention_fwd(F(out), lse, CF(q), CF(k), CF(v), B, T, H, Dh);
}
static void c_attention_bwd(struct moe_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k, const void *v, const void *out, const float *lse, int B, int T, int H, int Dh)
{
	(void)be;
	moe_attention_bwd(F(dq), F(dk), F(dv), CF(dout), CF(q), CF(k), CF(v), CF(out), lse, B, T, H, Dh);
}
/* gu's row m at (m / G) ld_gu + (m % G) 2I */
static size_t gu_row(int m, int I, int G, int ld_gu)
{
	return (size_t)(m / G) * ld_gu + (size_t)(m % G) * 2 * I;
}
static void c_swiglu_gu_fwd(struct moe_backend *be, void *h, const void *gu, int M, int I, int G, int ld_gu)
{
	(void)be;
	if (ld_gu == G * 2 * I) { /* packed */
		moe_swiglu_gu_fwd(F(h), CF(gu), M, I);
		return;
	}
	for (int m = 0; m < M; m++) /* rows apart: one at a time */
		moe_swiglu_gu_fwd(F(h) + (size_t)m * I, CF(gu) + gu_row(m, I, G, ld_gu), 1, I);
}
static void c_swiglu_gu_bwd(struct moe_backend *be, void *dgu, void *h, const void *dh, const void *gu, int M, int I,
			    int G, int ld_gu)
{
	if (h)
		c_swiglu_gu_fwd(be, h, gu, M, I, G, ld_gu);
	if (ld_gu == G * 2 * I) { /* packed */
		moe_swiglu_gu_bwd(F(dgu), CF(dh), CF(gu), M, I);
		return;
	}
	for (int m = 0; m < M; m++) {
		size_t r = gu_row(m, I, G, ld_gu);
		moe_swiglu_gu_bwd(F(dgu) + r, CF(dh) + (size_t)m * I, CF(gu) + r, 1, I);
	}
}
static void c_zloss(struct moe_backend *be, void *dlogits, const void *logits, int ld, int N, int E, float scale, double *loss);

/* The router's ops at a row stride ld: ops.c's on packed rows, or row by
 * row (every row is independent) where ld > E.  The z-loss's value is
 * c_zloss's. */
static void c_router_fwd(struct moe_backend *be, int32_t *topk_idx, float *topk_w, float *probs, const void *logits, int ld, const float *bias, int N, int E, int K, bool norm_topk, double *zloss)
{
	(void)be;
	if (ld == E) {
		moe_router_fwd(topk_idx, topk_w, probs, CF(logits), bias, N, E, K, norm_topk);
	} else {
		for (int n = 0; n < N; n++)
			moe_router_fwd(topk_idx + (size_t)n * K, topk_w + (size_t)n * K, probs + (size_t)n * E,
				       CF(logits) + (size_t)n * ld, bias, 1, E, K, norm_topk);
	}
	if (zloss)
		c_zloss(be, NULL, logits, ld, N, E, 0.0f, zloss);
}
static void c_router_bwd(struct moe_backend *be, void *dlogits, int ld, const float *dtopk_w, const float *dprobs, const float *probs, const int32_t *topk_idx, const float *topk_w, int N, int E, int K, bool norm_topk)
{
	(void)be;
	if (ld == E) {
		moe_router_bwd(F(dlogits), dtopk_w, dprobs, probs, topk_idx, topk_w, N, E, K, norm_topk);
		return;
	}
	for (int n = 0; n < N; n++)
		moe_router_bwd(F(dlogits) + (size_t)n * ld, dtopk_w + (size_t)n * K, dprobs ? dprobs + (size_t)n * E : NULL,
			       probs + (size_t)n * E, topk_idx + (size_t)n * K, topk_w + (size_t)n * K, 1, E, K, norm_topk);
}
static void c_route_group(struct moe_backend *be, int32_t *counts, int32_t *offsets, int32_t *perm, int32_t *inv, const int32_t *topk_idx, int N, int K, int E)
{
	(void)be;
	moe_route_group(counts, offsets, perm, topk_idx, N, K, E);
	moe_route_inverse(inv, perm, N * K);
}
static void c_gather_rows(struct moe_backend *be, void *xg, const void *x, const int32_t *perm, int NK, int K, int D)
{
	(void)be;
	moe_gather_rows(F(xg), CF(x), perm, NK, K, D);
}
static void c_scatter_add_rows(struct moe_backend *be, void *dx, const void *dxg, const int32_t *perm, int NK, int K, int D)
{
	(void)be;
	moe_scatter_add_rows(F(dx), CF(dxg), perm, NK, K, D);
}
static void c_grouped_linear_fwd(struct moe_backend *be, void *out, const void *x, const void *w, const int32_t *offsets, int E, int In, int Out)
{
	(void)be;
	moe_grouped_linear_fwd(F(out), CF(x), CF(w), offsets, E, In, Out);
}
static void c_expert_up_fwd(struct moe_backend *be, void *gu, void *h, const void *x, const int32_t *perm, const void *w, const int32_t *offsets, void *xg, int NK, int K, int E, int D, int I)
{
	(void)be;
	moe_gather_rows(F(xg), CF(x), perm, NK, K, D);
	moe_grouped_linear_fwd(F(gu), CF(xg), CF(w), offsets, E, D, 2 * I);
	moe_swiglu_gu_fwd(F(h), CF(gu), NK, I);
}
static void c_expert_down_bwd(struct moe_backend *be, void *dgu, void *h, float *dw, const void *dy, const void *gu, const void *w, const int32_t *offsets, void *dh, int NK, int E, int I, int D)
{
	(void)be;
	moe_grouped_linear_bwd(F(dh), NULL, CF(dy), CF(h), CF(w), offsets, E, I, D); /* x unread */
	moe_swiglu_gu_fwd(F(h), CF(gu), NK, I);
	moe_swiglu_gu_bwd(F(dgu), CF(dh), CF(gu), NK, I);
	moe_grouped_linear_bwd(NULL, dw, CF(dy), CF(h), CF(w), offsets, E, I, D);
}
static void c_expert_up_bwd(struct moe_backend *be, void *dx, float *dw, const void *dgu, const void *x, const int32_t *perm, const void *w, const int32_t *offsets, void *xg, bool xg_ready, int NK, int K, int E, int D, int I)
{
	(void)be;
	if (!xg_ready)
		moe_gather_rows(F(xg), CF(x), perm, NK, K, D);
	moe_grouped_linear_bwd(F(dx), dw, CF(dgu), CF(xg), CF(w), offsets, E, D, 2 * I);
}
static void c_combine_fwd(struct moe_backend *be, void *out, const void *res, const void *yg, const float *topk_w, const int32_t *inv, int N, int K, int D)
{
	(void)be;
	moe_combine_fwd(F(out), CF(res), CF(yg), topk_w, inv, N, K, D);
}
static void c_combine_bwd(struct moe_backend *be, void *dyg, float *dtopk_w, const void *dout, const void *yg, const float *topk_w, const int32_t *inv, int N, int K, int D)
{
	(void)be;
	moe_combine_bwd(F(dyg), dtopk_w, CF(dout), CF(yg), topk_w, inv, N, K, D);
}
static void c_xent(struct moe_backend *be, void *dlogits, const void *logits, const int32_t *targets, int N, int V, int ignore_id, float scale, double *loss_sum)
{
	(void)be;
	double l = moe_xent_fwd_bwd(F(dlogits), CF(logits), targets, N, V, ignore_id, scale, NULL);
	if (loss_sum)
		*loss_sum = l;
}
static void c_zloss(struct moe_backend *be, void *dlogits, const void *logits, int ld, int N, int E, float scale, double *loss)
{
	(void)be;
	double z = 0.0;
	if (ld == E) {
		z = moe_zloss_fwd_bwd(F(dlogits), CF(logits), N, E, scale);
	} else if (N > 0) {
		/* row by row: the gradient's 1/N moves into the scale */
		float sr = (float)((double)scale / N);
		for (int n = 0; n < N; n++)
			z += moe_zloss_fwd_bwd(dlogits ? F(dlogits) + (size_t)n * ld : NULL, CF(logits) + (size_t)n * ld, 1,
					       E, sr);
		z /= N;
	}
	if (loss)
		*loss = z;
}
static void c_router_stats(struct moe_backend *be, float *psum, int32_t *cnt_valid, const float *probs, const int32_t *topk_idx, const int32_t *ids, int pad_id, int N, int E, int K)
{
	(void)be;
	moe_router_stats(psum, cnt_valid, probs, topk_idx, ids, pad_id, N, E, K);
}
static void c_aux_dprobs(struct moe_backend *be, float *dprobs, const float *g_host, const int32_t *ids, int pad_id, int N, int E)
{
	(void)be;
	moe_aux_dprobs(dprobs, g_host, ids, pad_id, N, E);
}
static void c_sumsq(struct moe_backend *be, const float *x, size_t n, double *out)
{
	(void)be;
	*out = moe_sumsq(x, n);
}
static void c_axpy(struct moe_backend *be, float *y, const float *x, size_t n, float a)
{
	(void)be;
	for (size_t i = 0; i < n; i++)
		y[i] += a * x[i];
}
static void c_scale_act(struct moe_backend *be, void *x, size_t n, float a)
{
	(void)be;
	float *f = F(x);
	for (size_t i = 0; i < n; i++)
		f[i] *= a;
}
static void c_adamw(struct moe_backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t)
{
	(void)be;
	moe_adamw_step(p, g, gscale, m, v, n, lr, beta1, beta2, eps, weight_decay, t);
}

struct moe_backend *moe_backend_cpu(void)
{
	struct moe_backend *be = calloc(1, sizeof(*be));
	struct cpu_ctx *c = calloc(1, sizeof(*c));
	if (!be || !c) {
		free(be);
		free(c);
		return NULL;
	}
	be->name = "cpu";
	be->ctx = c;
	be->act_size = sizeof(float);
	be->alloc = cpu_alloc;
	be->free = cpu_free;
	be->zero = cpu_zero;
	be->copy = cpu_copy;
	be->to_host = cpu_copy;
	be->to_host_later = cpu_copy; /* nothing is queued: now is as good */
	be->from_host = cpu_copy;
	be->sync = cpu_sync;
	be->destroy = cpu_destroy;
	be->params_alloc = cpu_params_alloc;
	be->master = cpu_master;
	be->grad = cpu_grad;
	be->param = cpu_param;
	be->params_updated = cpu_params_updated;
	be->embedding_fwd = c_embedding_fwd;
	be->embedding_bwd = c_embedding_bwd;
	be->rmsnorm_fwd = c_rmsnorm_fwd;
	be->rmsnorm_bwd = c_rmsnorm_bwd;
	be->rmsnorm_bwd_add = c_rmsnorm_bwd_add;
	be->linear_fwd = c_linear_fwd;
	be->linear_bwd = c_linear_bwd;
	be->linear_fwd_add = c_linear_fwd_add;
	be->qknorm_rope_fwd = c_qknorm_rope_fwd;
	be->qknorm_rope_bwd = c_qknorm_rope_bwd;
	be->linear_bwd_add = c_linear_bwd_add;
	be->linear_fwd_multi = c_linear_fwd_multi;
	be->linear_wgrad_multi = c_linear_wgrad_multi;
	be->attention_fwd = c_attention_fwd;
	be->attention_bwd = c_attention_bwd;
	be->swiglu_gu_fwd = c_swiglu_gu_fwd;
	be->swiglu_gu_bwd = c_swiglu_gu_bwd;
	be->router_fwd = c_router_fwd;
	be->router_bwd = c_router_bwd;
	be->route_group = c_route_group;
	be->gather_rows = c_gather_rows;
	be->scatter_add_rows = c_scatter_add_rows;
	be->grouped_linear_fwd = c_grouped_linear_fwd;
	be->expert_up_fwd = c_expert_up_fwd;
	be->expert_down_bwd = c_expert_down_bwd;
	be->expert_up_bwd = c_expert_up_bwd;
	be->combine_fwd = c_combine_fwd;
	be->combine_bwd = c_combine_bwd;
	be->xent = c_xent;
	be->zloss = c_zloss;
	be->router_stats = c_router_stats;
	be->aux_dprobs = c_aux_dprobs;
	be->sumsq = c_sumsq;
	be->axpy = c_axpy;
	be->scale_act = c_scale_act;
	be->adamw = c_adamw;
	return be;
}

/* Weak: resolved only when the CUDA backend (kernels/) is linked in. */
extern struct moe_backend *moe_backend_cuda(struct moe_error *err) __attribute__((weak));

struct moe_backend *moe_backend_new(const char *name, struct moe_error *err)
{
	if (!strcmp(name, "cpu")) {
		struct moe_backend *be = moe_backend_cpu();
		if (!be)
			moe_error_set(err, MOE_ENOMEM, "out of memory");
		return be;
	}
	if (!strcmp(name, "cuda") && moe_backend_cuda)
		return moe_backend_cuda(err);
	if (!strcmp(name, "cuda"))
		moe_error_set(err, MOE_EUNSUPPORTED, "backend 'cuda': this build has no CUDA support");
	else
		moe_error_set(err, MOE_EINVAL, "unknown backend '%s' (expected cpu or cuda)", name);
	return NULL;
}
