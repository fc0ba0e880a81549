/*
 * Finite-difference gradient checks of every op and of the whole model.
 *
 * The model sources are compiled here a second time with `float` defined as
 * `double` (and the float libm calls mapped to their double versions): the
 * same code, in double precision, so that central differences with a small
 * step are accurate and the tolerances can be tight (relative 1e-6 for ops,
 * 1e-5 for the whole model).  This binary does not link libmoemodel.a.
 *
 * Top-k ties: a finite difference is meaningless if the perturbation changes
 * which experts are chosen.  Every router check (1) asserts that, at the base
 * point, the margin between the K-th and (K+1)-th biased scores of every row
 * exceeds MARGIN (1e-4, a hundred times larger than any logit change a step
 * of 1e-6 can cause in these shapes) and (2) asserts that the selection after
 * each +-step is identical to the base selection.
 */
#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <jansson.h>
#ifdef _OPENMP
#include <omp.h>
#endif
#include <criterion/criterion.h>

#include "core/core.h"

#define float double
#define sqrtf sqrt
#define expf exp
#define logf log
#define powf pow
#define cosf cos
#define sinf sin
#include "model/ops.c"
#include "model/backend_cpu.c"
#include "model/config.c"
#include "model/model.c"

#define EPS 1e-6
#define MARGIN 1e-4

static uint64_t rng_state = 12345;
static double rnd(void) /* uniform in [-1, 1) */
{
	return (double)(splitmix64(&rng_state) >> 11) / 4503599627370496.0 - 1.0;
}
/* every test buffer is tracked and freed after the test (.fini) */
static void *tracked[512];
static int n_tracked;
static void *track(void *p)
{
	cr_assert(p && n_tracked < 512);
	tracked[n_tracked++] = p;
	return p;
}
static void release_all(void)
{
	while (n_tracked > 0)
		free(tracked[--n_tracked]);
}
static double *rvec(size_t n, double scale)
{
	double *x = track(malloc(n * sizeof(double)));
	for (size_t i = 0; i < n; i++)
		x[i] = scale * rnd();
	return x;
}
static double *zvec(size_t n)
{
	return track(calloc(n, sizeof(double)));
}
static double wsum(const double *r, const double *x, size_t n)
{
	double s = 0;
	for (size_t i = 0; i < n; i++)
		s += r[i] * x[i];
	return s;
}

typedef double (*lossfn)(void *ctx);

/* Compare analytic gradient g (n) of f w.r.t. x with central differences:
 * every coordinate when n <= 48, else 48 coordinates at a random stride. */
static void check(const char *what, lossfn f, void *ctx, double *x, const double *g, size_t n,
		  double tol)
{
	size_t step = n <= 48 ? 1 : n / 48;
	size_t start = step > 1 ? (size_t)(splitmix64(&rng_state) % step) : 0;
	for (size_t i = start; i < n; i += step) {
		double s = x[i];
		x[i] = s + EPS;
		double lp = f(ctx);
		x[i] = s - EPS;
		double lm = f(ctx);
		x[i] = s;
		double num = (lp - lm) / (2 * EPS);
		double e = fabs(num - g[i]);
		/* floor: the rounding of the two loss evaluations (a few ulps of
		 * the loss each) divided by the step; it matters only where the
		 * gradient itself is tiny */
		double floor_ = 1e-9 + 8 * DBL_EPSILON * (fabs(lp) + fabs(lm)) / (2 * EPS);
		cr_assert(e <= tol * (fabs(num) + fabs(g[i])) + floor_,
			  "%s[%zu]: analytic %.12g, numeric %.12g", what, i, g[i], num);
	}
}

/* ---- RMSNorm ------------------------------------------------------------------ */

struct c_rms {
	int N, D;
	double *x, *w, *r, *out, *rstd;
};
static double f_rms(void *p)
{
	struct c_rms *c = p;
	moe_rmsnorm_fwd(c->out, c->rstd, c->x, c->w, c->N, c->D, 1e-5);
	return wsum(c->r, c->out, (size_t)c->N * c->D);
}
Test(grad, rmsnorm, .fini = release_all)
{
	struct c_rms c = {.N = 5, .D = 12};
	size_t n = (size_t)c.N * c.D;
	c.x = rvec(n, 1), c.w = rvec(c.D, 1), c.r = rvec(n, 1), c.out = zvec(n), c.rstd = zvec(c.N);
	double *dx = zvec(n), *dw = zvec(c.D);
	f_rms(&c);
	moe_rmsnorm_bwd(dx, dw, c.r, c.x, c.w, c.rstd, c.N, c.D);
	check("rmsnorm dx", f_rms, &c, c.x, dx, n, 1e-6);
	check("rmsnorm dw", f_rms, &c, c.w, dw, c.D, 1e-6);
}

/* ---- linear ------------------------------------------------------------------- */

struct c_lin {
	int N, In, Out;
	double *x, *w, *b, *r, *out;
};
static double f_lin(void *p)
{
	struct c_lin *c = p;
	moe_linear_fwd(c->out, c->x, c->w, c->b, c->N, c->In, c->Out);
	return wsum(c->r, c->out, (size_t)c->N * c->Out);
}
Test(grad, linear, .fini = release_all)
{
	struct c_lin c = {.N = 7, .In = 9, .Out = 5};
	c.x = rvec(63, 1), c.w = rvec(45, 1), c.b = rvec(5, 1), c.r = rvec(35, 1), c.out = zvec(35);
	double *dx = zvec(63), *dw = rvec(45, 1), *db = rvec(5, 1);
	double *dw0 = track(malloc(45 * sizeof(double))), *db0 = track(malloc(5 * sizeof(double)));
	memcpy(dw0, dw, 45 * sizeof(double));
	memcpy(db0, db, 5 * sizeof(double));
	moe_linear_bwd(dx, dw, db, c.r, c.x, c.w, c.N, c.In, c.Out);
	/* dw, db accumulate: subtract the prior contents */
	for (int i = 0; i < 45; i++)
		dw[i] -= dw0[i];
	for (int i = 0; i < 5; i++)
		db[i] -= db0[i];
	check("linear dx", f_lin, &c, c.x, dx, 63, 1e-6);
	check("linear dw", f_lin, &c, c.w, dw, 45, 1e-6);
	check("linear db", f_lin, &c, c.b, db, 5, 1e-6);
}

/* ---- RoPE ---------------------------------------------------------------------- */

struct c_rope {
	int B, T, H, Dh;
	double *x, *y, *r;
};
static double f_rope(void *p)
{
	struct c_rope *c = p;
	size_t n = (size_t)c->B * c->T * c->H * c->Dh;
	memcpy(c->y, c->x, n * sizeof(double));
	moe_rope_fwd(c->y, c->B, c->T, c->H, c->Dh, 10000.0);
	return wsum(c->r, c->y, n);
}
Test(grad, rope, .fini = release_all)
{
	struct c_rope c = {.B = 2, .T = 5, .H = 2, .Dh = 8};
	size_t n = 160;
	c.x = rvec(n, 1), c.y = zvec(n), c.r = rvec(n, 1);
	double *dx = track(malloc(n * sizeof(double)));
	memcpy(dx, c.r, n * sizeof(double));
	moe_rope_bwd(dx, c.B, c.T, c.H, c.Dh, 10000.0);
	check("rope dx", f_rope, &c, c.x, dx, n, 1e-6);
	/* position 0 is the identity; rotation preserves norms */
	f_rope(&c);
	for (int i = 0; i < c.H * c.Dh; i++)
		cr_assert_float_eq(c.y[i], c.x[i], 1e-12);
	double a = 0, b = 0;
	for (size_t i = 0; i < n; i++)
		a += c.x[i] * c.x[i], b += c.y[i] * c.y[i];
	cr_assert_float_eq(a, b, 1e-9);
}

/* ---- attention ------------------------------------------------------------------ */

struct c_att {
	int B, T, H, Dh;
	double *q, *k, *v, *out, *lse, *r;
};
static double f_att(void *p)
{
	struct c_att *c = p;
	moe_attention_fwd(c->out, c->lse, c->q, c->k, c->v, c->B, c->T, c->H, c->Dh);
	return wsum(c->r, c->out, (size_t)c->B * c->T * c->H * c->Dh);
}
Test(grad, attention, .fini = release_all)
{
	struct c_att c = {.B = 2, .T = 6, .H = 2, .Dh = 4};
	size_t n = 96;
	c.q = rvec(n, 1), c.k = rvec(n, 1), c.v = rvec(n, 1), c.out = zvec(n), c.lse = zvec(24), c.r = rvec(n, 1);
	double *dq = zvec(n), *dk = zvec(n), *dv = zvec(n);
	f_att(&c);
	moe_attention_bwd(dq, dk, dv, c.r, c.q, c.k, c.v, c.out, c.lse, c.B, c.T, c.H, c.Dh);
	check("attention dq", f_att, &c, c.q, dq, n, 1e-6);
	check("attention dk", f_att, &c, c.k, dk, n, 1e-6);
	check("attention dv", f_att, &c, c.v, dv, n, 1e-6);
	/* causality: the first position's output is v at position 0 */
	f_att(&c);
	for (int d = 0; d < 8; d++)
		cr_assert_float_eq(c.out[d], c.v[d], 1e-12);
}

/* ---- SwiGLU ------------------------------------------------------------------------ */

struct c_sw {
	int M, I;
	double *gu, *h, *r;
};
static double f_sw(void *p)
{
	struct c_sw *c = p;
	moe_swiglu_gu_fwd(c->h, c->gu, c->M, c->I);
	return wsum(c->r, c->h, (size_t)c->M * c->I);
}
Test(grad, swiglu, .fini = release_all)
{
	struct c_sw c = {.M = 4, .I = 6};
	c.gu = rvec(48, 3), c.h = zvec(24), c.r = rvec(24, 1);
	double *dgu = zvec(48);
	moe_swiglu_gu_bwd(dgu, c.r, c.gu, c.M, c.I);
	check("swiglu dgu", f_sw, &c, c.gu, dgu, 48, 1e-6);
	/* the split form agrees with the fused form */
	double h2[6];
	moe_swiglu_fwd(h2, c.gu, c.gu + 6, 6);
	f_sw(&c);
	for (int i = 0; i < 6; i++)
		cr_assert_float_eq(h2[i], c.h[i], 1e-15);
}

/* ---- router ---------------------------------------------------------------------------- */

struct c_rt {
	int N, E, K;
	bool norm;
	double *z, *bias, *p, *w, *rw, *rp;
	int32_t *idx, *idx0;
};
static double f_rt(void *ptr)
{
	struct c_rt *c = ptr;
	moe_router_fwd(c->idx, c->w, c->p, c->z, c->bias, c->N, c->E, c->K, c->norm);
	if (c->idx0)
		cr_assert(!memcmp(c->idx, c->idx0, sizeof(int32_t) * (size_t)c->N * c->K),
			  "top-k selection changed under perturbation");
	return wsum(c->rw, c->w, (size_t)c->N * c->K) + wsum(c->rp, c->p, (size_t)c->N * c->E);
}
/* minimum over rows of the gap between the K-th and (K+1)-th biased score */
static double topk_margin(const double *z, const double *bias, int N, int E, int K)
{
	double mn = INFINITY;
	for (int n = 0; n < N; n++) {
		double s[64];
		for (int e = 0; e < E; e++)
			s[e] = z[n * E + e] + (bias ? bias[e] : 0);
		for (int a = 0; a < E; a++) /* sort descending */
			for (int b = a + 1; b < E; b++)
				if (s[b] > s[a]) {
					double t = s[a];
					s[a] = s[b];
					s[b] = t;
				}
		if (K < E && s[K - 1] - s[K] < mn)
			mn = s[K - 1] - s[K];
	}
	return mn;
}
static void router_case(bool norm, bool with_bias)
{
	struct c_rt c = {.N = 6, .E = 8, .K = 3, .norm = norm};
	size_t NE = 48, NK = 18;
	c.z = rvec(NE, 2), c.bias = with_bias ? rvec(8, 0.5) : NULL;
	c.p = zvec(NE), c.w = zvec(NK), c.rw = rvec(NK, 1), c.rp = rvec(NE, 1);
	c.idx = track(calloc(NK, sizeof(int32_t)));
	cr_assert(topk_margin(c.z, c.bias, c.N, c.E, c.K) > MARGIN, "test input too close to a top-k tie");
	f_rt(&c);
	c.idx0 = track(malloc(NK * sizeof(int32_t)));
	memcpy(c.idx0, c.idx, NK * sizeof(int32_t));
	/* weights descending, probabilities sum to 1, weights from the unbiased softmax */
	for (int n = 0; n < c.N; n++) {
		double s = 0;
		for (int e = 0; e < c.E; e++)
			s += c.p[n * c.E + e];
		cr_assert_float_eq(s, 1.0, 1e-12);
		for (int k = 1; k < c.K; k++)
			cr_assert(c.w[n * c.K + k - 1] >= c.w[n * c.K + k]);
		if (!norm)
			for (int k = 0; k < c.K; k++)
				cr_assert_float_eq(c.w[n * c.K + k], c.p[n * c.E + c.idx[n * c.K + k]], 1e-15);
	}
	double *dz = zvec(NE);
	moe_router_bwd(dz, c.rw, c.rp, c.p, c.idx, c.w, c.N, c.E, c.K, c.norm);
	check("router dlogits", f_rt, &c, c.z, dz, NE, 1e-6);
}
Test(grad, router_plain, .fini = release_all) { router_case(false, false); }
Test(grad, router_norm_topk, .fini = release_all) { router_case(true, false); }
Test(grad, router_bias, .fini = release_all) { router_case(false, true); }
Test(grad, router_bias_norm, .fini = release_all) { router_case(true, true); }

Test(router, bias_changes_choice_not_weights, .fini = release_all)
{
	/* expert 0 has the largest logit; a bias pushes expert 3 into the top-1 */
	double z[4] = {2.0, 1.0, 0.5, 0.0}, b[4] = {0, 0, 0, 3.0}, p[4], w[1];
	int32_t idx[1];
	moe_router_fwd(idx, w, p, z, b, 1, 4, 1, false);
	cr_assert_eq(idx[0], 3);
	cr_assert_float_eq(w[0], p[3], 1e-15);
	double e0 = exp(2.0), s = exp(2.0) + exp(1.0) + exp(0.5) + 1.0;
	cr_assert_float_eq(p[0], e0 / s, 1e-12);
	moe_router_fwd(idx, w, p, z, NULL, 1, 4, 1, false);
	cr_assert_eq(idx[0], 0);
}

/* ---- grouping, dispatch, combine ------------------------------------------------------ */

Test(route, group_properties, .fini = release_all)
{
	int N = 9, K = 2, E = 4;
	int32_t idx[18], counts[4], off[5], perm[18], inv[18];
	for (int n = 0; n < N; n++) {
		idx[n * K] = (n * 3) % E;
		idx[n * K + 1] = (n * 3 + 1 + n % 3) % E;
	}
	moe_route_group(counts, off, perm, idx, N, K, E);
	moe_route_inverse(inv, perm, N * K);
	cr_assert_eq(off[0], 0);
	cr_assert_eq(off[E], N * K);
	for (int e = 0; e < E; e++) {
		cr_assert_eq(off[e + 1] - off[e], counts[e]);
		for (int j = off[e]; j < off[e + 1]; j++) {
			cr_assert_eq(idx[perm[j]], e);
			if (j > off[e])
				cr_assert(perm[j] > perm[j - 1], "stable order");
		}
	}
	for (int j = 0; j < N * K; j++)
		cr_assert_eq(perm[inv[j]], j);
}

struct c_moe {
	int N, K, E, D, I;
	double *x, *w, *tw, *r, *xg, *gu, *out;
	int32_t *perm, *inv, *off;
};
/* gather -> grouped linear -> combine: a one-matrix "expert" layer */
static double f_moe(void *p)
{
	struct c_moe *c = p;
	int NK = c->N * c->K;
	moe_gather_rows(c->xg, c->x, c->perm, NK, c->K, c->D);
	moe_grouped_linear_fwd(c->gu, c->xg, c->w, c->off, c->E, c->D, c->I);
	moe_combine_fwd(c->out, NULL, c->gu, c->tw, c->inv, c->N, c->K, c->I);
	return wsum(c->r, c->out, (size_t)c->N * c->I);
}
Test(grad, dispatch_grouped_combine, .fini = release_all)
{
	struct c_moe c = {.N = 7, .K = 2, .E = 4, .D = 5, .I = 3};
	int NK = 14;
	int32_t idx[14], counts[4];
	for (int n = 0; n < c.N; n++) {
		idx[n * 2] = n % 4;
		idx[n * 2 + 1] = (n + 1 + (n & 1)) % 4;
	}
	c.perm = track(malloc(NK * 4)), c.inv = track(malloc(NK * 4)), c.off = track(malloc(5 * 4));
	moe_route_group(counts, c.off, c.perm, idx, c.N, c.K, c.E);
	moe_route_inverse(c.inv, c.perm, NK);
	c.x = rvec(35, 1), c.w = rvec(60, 1), c.tw = rvec(14, 1), c.r = rvec(21, 1);
	c.xg = zvec(70), c.gu = zvec(42), c.out = zvec(21);
	f_moe(&c);
	double *dgu = zvec(42), *dtw = zvec(14), *dxg = zvec(70), *dw = zvec(60), *dx = zvec(35);
	moe_combine_bwd(dgu, dtw, c.r, c.gu, c.tw, c.inv, c.N, c.K, c.I);
	moe_grouped_linear_bwd(dxg, dw, dgu, c.xg, c.w, c.off, c.E, c.D, c.I);
	moe_scatter_add_rows(dx, dxg, c.perm, NK, c.K, c.D);
	check("combine dtopk_w", f_moe, &c, c.tw, dtw, 14, 1e-6);
	check("grouped dw", f_moe, &c, c.w, dw, 60, 1e-6);
	check("gather dx", f_moe, &c, c.x, dx, 35, 1e-6);
	/* against a direct per-token computation */
	f_moe(&c);
	for (int n = 0; n < c.N; n++)
		for (int i = 0; i < c.I; i++) {
			double s = 0;
			for (int k = 0; k < 2; k++) {
				int e = idx[n * 2 + k];
				double y = 0;
				for (int d = 0; d < c.D; d++)
					y += c.w[(e * c.I + i) * c.D + d] * c.x[n * c.D + d];
				s += c.tw[n * 2 + k] * y;
			}
			cr_assert_float_eq(c.out[n * c.I + i], s, 1e-12);
		}
}

/* ---- embedding, losses ------------------------------------------------------------------ */

Test(grad, embedding_pad_row, .fini = release_all)
{
	int V = 6, D = 3, N = 5, pad = 1;
	int32_t ids[5] = {0, 1, 2, 2, 5};
	double *wte = rvec(18, 1), *out = zvec(15), *dout = rvec(15, 1), *dw = zvec(18);
	moe_embedding_fwd(out, ids, wte, N, D);
	for (int d = 0; d < D; d++)
		cr_assert_float_eq(out[3 * D + d], wte[2 * D + d], 0);
	moe_embedding_bwd(dw, dout, ids, N, D, pad);
	for (int d = 0; d < D; d++) {
		cr_assert_float_eq(dw[1 * D + d], 0.0, 0, "pad row gets no gradient");
		cr_assert_float_eq(dw[2 * D + d], dout[2 * D + d] + dout[3 * D + d], 1e-15);
		cr_assert_float_eq(dw[3 * D + d], 0.0, 0);
	}
	(void)V;
}

struct c_xe {
	int N, V;
	int32_t *t;
	double *z;
};
static double f_xe(void *p)
{
	struct c_xe *c = p;
	int64_t nv;
	return moe_xent_fwd_bwd(NULL, c->z, c->t, c->N, c->V, 1, 1.0, &nv);
}
static double f_zl(void *p)
{
	struct c_xe *c = p;
	return moe_zloss_fwd_bwd(NULL, c->z, c->N, c->V, 0);
}
Test(grad, xent_and_zloss, .fini = release_all)
{
	struct c_xe c = {.N = 5, .V = 7};
	int32_t t[5] = {0, 1, 6, 3, 1}; /* id 1 is ignored */
	c.t = t;
	c.z = rvec(35, 3);
	double *dz = zvec(35);
	int64_t nv = 0;
	double l = moe_xent_fwd_bwd(dz, c.z, t, c.N, c.V, 1, 1.0, &nv);
	cr_assert_eq(nv, 3);
	for (int v = 0; v < 7; v++)
		cr_assert_float_eq(dz[7 + v], 0.0, 0, "ignored row has zero gradient");
	check("xent dlogits", f_xe, &c, c.z, dz, 35, 1e-6);
	/* in place gives the same */
	double *zz = track(malloc(35 * sizeof(double)));
	memcpy(zz, c.z, 35 * sizeof(double));
	double l2 = moe_xent_fwd_bwd(zz, zz, t, c.N, c.V, 1, 1.0, &nv);
	cr_assert_float_eq(l, l2, 1e-12);
	for (int i = 0; i < 35; i++)
		cr_assert_float_eq(zz[i], dz[i], 1e-15);
	/* independent value: -log softmax at the target */
	double s = 0, ref = 0;
	for (int n = 0; n < 5; n++) {
		if (t[n] == 1)
			continue;
		s = 0;
		for (int v = 0; v < 7; v++)
			s += exp(c.z[n * 7 + v]);
		ref += log(s) - c.z[n * 7 + t[n]];
	}
	cr_assert_float_eq(l, ref, 1e-10);
	double *dzl = zvec(35);
	moe_zloss_fwd_bwd(dzl, c.z, c.N, c.V, 1.0);
	check("zloss dlogits", f_zl, &c, c.z, dzl, 35, 1e-6);
}

/* ---- the whole model ------------------------------------------------------------------------ */

struct c_model {
	struct moe_model *m;
	int32_t *tok, *tgt;
	int B, T, Lm, K;
	int32_t *idx0, *idx;
};
static double f_model(void *p)
{
	struct c_model *c = p;
	struct moe_forward_opts o = {.train = true};
	struct moe_routing_capture cap = {.topk_idx = c->idx};
	o.capture = &cap;
	struct moe_losses L;
	struct moe_error err = {0};
	cr_assert_eq(moe_model_forward(c->m, c->tok, c->tgt, c->B, c->T, &o, &L, &err), 0, "%s", err.msg);
	if (c->idx0)
		cr_assert(!memcmp(c->idx, c->idx0, sizeof(int32_t) * (size_t)c->Lm * c->B * c->T * c->K),
			  "top-k selection changed under perturbation");
	return L.total;
}

static void model_case(enum moe_aux_form form, bool norm, bool lflb)
{
	struct moe_config cfg;
	moe_config_defaults(&cfg);
	cfg.vocab_size = 32;
	cfg.hidden_size = 16;
	cfg.num_attention_heads = 2;
	cfg.num_hidden_layers = 3;
	cfg.n_dense_layers = 1;
	cfg.dense_intermediate_size = 12;
	cfg.num_experts = 4;
	cfg.num_experts_per_tok = 2;
	cfg.intermediate_size = 8;
	cfg.n_shared_experts = 1;
	cfg.shared_expert_intermediate_size = 6;
	cfg.norm_topk_prob = norm;
	cfg.loss_free_balancing = lflb;
	cfg.aux_loss_form = form;
	cfg.router_aux_loss_coef = 0.3;
	cfg.router_z_loss_coef = 0.05;
	cfg.pad_token_id = 1;
	cfg.eos_token_id = 0;
	cfg.initializer_range = 0.3;
	struct moe_error err = {0};
	struct moe_model *m = moe_model_new(&cfg, NULL, &err);
	cr_assert(m, "%s", err.msg);
	cr_assert_eq(moe_model_init(m, 7, &err), 0);
	double *P = moe_model_params_host(m), *G = moe_model_grads_host(m);
	/* random selection biases */
	for (int l = 1; l < 3; l++)
		for (int e = 0; e < 4; e++)
			P[moe_model_layer(m, l)->bias + e] = 0.3 * rnd();
	struct c_model c = {.m = m, .B = 2, .T = 5, .Lm = 2, .K = 2};
	int32_t tok[10] = {3, 1, 7, 9, 30, 2, 5, 1, 8, 4};  /* two pads (id 1) */
	int32_t tgt[10] = {1, 7, 9, 30, 2, 5, 1, 8, 4, 11}; /* two ignored targets */
	c.tok = tok, c.tgt = tgt;
	c.idx = track(calloc(40, sizeof(int32_t)));
	/* margin of the base point, on the biased (if lflb) router logits */
	double rl[2 * 10 * 4];
	struct moe_forward_opts o = {.train = true};
	struct moe_routing_capture cap = {.topk_idx = c.idx, .router_logits = rl};
	o.capture = &cap;
	struct moe_losses L;
	cr_assert_eq(moe_model_forward(m, tok, tgt, 2, 5, &o, &L, &err), 0, "%s", err.msg);
	for (int lm = 0; lm < 2; lm++) {
		const double *b = lflb ? P + moe_model_layer(m, lm + 1)->bias : NULL;
		cr_assert(topk_margin(rl + lm * 40, b, 10, 4, 2) > MARGIN, "base point too close to a top-k tie");
	}
	cr_assert(L.aux > 0 && L.z > 0 && L.ce > 0);
	cr_assert_eq(L.n_valid, 8);
	moe_model_zero_grad(m);
	cr_assert_eq(moe_model_backward(m, 1.0, &err), 0, "%s", err.msg);
	c.idx0 = track(malloc(40 * sizeof(int32_t)));
	memcpy(c.idx0, c.idx, 40 * sizeof(int32_t));
	size_t np;
	const struct moe_param *tab = moe_model_params(m, &np);
	double *g = track(malloc(moe_model_num_params(m) * sizeof(double)));
	memcpy(g, G, moe_model_num_params(m) * sizeof(double));
	for (size_t i = 0; i < np; i++) {
		const struct moe_param *p = &tab[i];
		if (p->kind == MOE_P_BIAS) {
			for (size_t j = 0; j < p->numel; j++)
				cr_assert_float_eq(g[p->offset + j], 0.0, 0, "selection bias has no gradient");
			continue;
		}
		if (p->kind == MOE_P_EMBED) {
			/* the pad row (1) is excluded: by design it gets no gradient
			 * (nn.Embedding padding_idx), although the loss depends on it */
			check(p->name, f_model, &c, P + p->offset, g + p->offset, 16, 1e-5);
			check(p->name, f_model, &c, P + p->offset + 32, g + p->offset + 32, p->numel - 32, 1e-5);
			continue;
		}
		check(p->name, f_model, &c, P + p->offset, g + p->offset, p->numel, 1e-5);
	}
	/* the pad row of the embedding gets no gradient */
	for (int d = 0; d < 16; d++)
		cr_assert_float_eq(g[d + 16], 0.0, 0);
	moe_model_free(m);
}
Test(model_grad, switch_aux, .fini = release_all) { model_case(MOE_AUX_SWITCH, false, false); }
Test(model_grad, megablocks_aux_norm_topk, .fini = release_all) { model_case(MOE_AUX_MEGABLOCKS, true, false); }
Test(model_grad, switch_aux_selection_bias, .fini = release_all) { model_case(MOE_AUX_SWITCH, false, true); }

/* ---- an independent naive forward (per token, every expert, no grouping) --------------- */

static const double *prm(struct moe_model *m, const char *fmt, int a, int b)
{
	char name[MOE_NAME_MAX];
	snprintf(name, sizeof(name), fmt, a, b);
	const struct moe_param *p = moe_model_param_find(m, name);
	cr_assert(p, "no tensor %s", name);
	return moe_model_params_host(m) + p->offset;
}

/* y (Out) = W (Out, In) x (In) */
static void mv(double *y, const double *W, const double *x, int Out, int In)
{
	for (int o = 0; o < Out; o++) {
		y[o] = 0;
		for (int i = 0; i < In; i++)
			y[o] += W[(size_t)o * In + i] * x[i];
	}
}

static void nrms(double *y, const double *x, const double *w, int D, double eps)
{
	double s = 0;
	for (int d = 0; d < D; d++)
		s += x[d] * x[d];
	double r = 1.0 / sqrt(s / D + eps);
	for (int d = 0; d < D; d++)
		y[d] = x[d] * r * w[d];
}

/* adds SwiGLU(x) with gate/up (W, D) and down (D, W) to y, times scale */
static void nswiglu(double *y, const double *x, const double *g, const double *u, const double *dn, int D,
		    int W, double scale)
{
	double h[256], a[256], b[256];
	mv(a, g, x, W, D);
	mv(b, u, x, W, D);
	for (int i = 0; i < W; i++)
		h[i] = a[i] / (1 + exp(-a[i])) * b[i];
	for (int d = 0; d < D; d++) {
		double s = 0;
		for (int i = 0; i < W; i++)
			s += dn[(size_t)d * W + i] * h[i];
		y[d] += scale * s;
	}
}

static void naive_forward(struct moe_model *m, const int32_t *tok, const int32_t *tgt, int B, int T,
			  bool use_bias, double *logits, double *ce, double *aux, double *z)
{
	const struct moe_config *c = moe_model_config(m);
	int D = c->hidden_size, H = c->num_attention_heads, Dh = D / H, V = c->vocab_size;
	int E = c->num_experts, K = c->num_experts_per_tok, L = c->num_hidden_layers, N = B * T;
	int Lm = L - c->n_dense_layers;
	double eps = c->rms_norm_eps;
	double *x = calloc((size_t)N * D, 8), *a = calloc((size_t)N * D, 8), *q = calloc((size_t)N * D, 8);
	double *k = calloc((size_t)N * D, 8), *v = calloc((size_t)N * D, 8), *t1 = calloc(D, 8), *t2 = calloc(D, 8);
	double cnt[8][64] = {{0}}, psum[8][64] = {{0}}, nvalid = 0;
	const double *emb = prm(m, "model.embed_tokens.weight", 0, 0);
	for (int n = 0; n < N; n++)
		for (int d = 0; d < D; d++)
			x[n * D + d] = emb[(size_t)tok[n] * D + d];
	for (int n = 0; n < N; n++)
		nvalid += tok[n] != c->pad_token_id;
	*z = 0;
	for (int l = 0; l < L; l++) {
		for (int n = 0; n < N; n++) {
			nrms(a + n * D, x + n * D, prm(m, "model.layers.%d.input_layernorm.weight", l, 0), D, eps);
			mv(t1, prm(m, "model.layers.%d.self_attn.q_proj.weight", l, 0), a + n * D, D, D);
			nrms(q + n * D, t1, prm(m, "model.layers.%d.self_attn.q_norm.weight", l, 0), D, eps);
			mv(t1, prm(m, "model.layers.%d.self_attn.k_proj.weight", l, 0), a + n * D, D, D);
			nrms(k + n * D, t1, prm(m, "model.layers.%d.self_attn.k_norm.weight", l, 0), D, eps);
			mv(v + n * D, prm(m, "model.layers.%d.self_attn.v_proj.weight", l, 0), a + n * D, D, D);
			int pos = n % T;
			for (int h = 0; h < H; h++)
				for (int j = 0; j < Dh / 2; j++) {
					double ang = pos * pow(c->rope_theta, -2.0 * j / Dh);
					for (double *r = q; r; r = r == q ? k : NULL) {
						double *p = r + n * D + h * Dh;
						double x1 = p[j], x2 = p[j + Dh / 2];
						p[j] = x1 * cos(ang) - x2 * sin(ang);
						p[j + Dh / 2] = x2 * cos(ang) + x1 * sin(ang);
					}
				}
		}
		for (int n = 0; n < N; n++) {
			int b = n / T, t = n % T;
			double o[256] = {0};
			for (int h = 0; h < H; h++) {
				double w[64], mx = -1e300, s = 0;
				for (int u = 0; u <= t; u++) {
					int nu = b * T + u;
					w[u] = 0;
					for (int d = 0; d < Dh; d++)
						w[u] += q[n * D + h * Dh + d] * k[nu * D + h * Dh + d];
					w[u] /= sqrt(Dh);
					mx = fmax(mx, w[u]);
				}
				for (int u = 0; u <= t; u++)
					s += (w[u] = exp(w[u] - mx));
				for (int u = 0; u <= t; u++)
					for (int d = 0; d < Dh; d++)
						o[h * Dh + d] += w[u] / s * v[(b * T + u) * D + h * Dh + d];
			}
			mv(t1, prm(m, "model.layers.%d.self_attn.o_proj.weight", l, 0), o, D, D);
			for (int d = 0; d < D; d++)
				a[n * D + d] = x[n * D + d] + t1[d]; /* a: residual after attention */
		}
		for (int n = 0; n < N; n++) {
			double *xm = a + n * D, *y = x + n * D;
			nrms(t2, xm, prm(m, "model.layers.%d.post_attention_layernorm.weight", l, 0), D, eps);
			memcpy(y, xm, sizeof(double) * D);
			if (l < c->n_dense_layers) {
				nswiglu(y, t2, prm(m, "model.layers.%d.mlp.gate_proj.weight", l, 0),
					prm(m, "model.layers.%d.mlp.up_proj.weight", l, 0),
					prm(m, "model.layers.%d.mlp.down_proj.weight", l, 0), D, c->dense_intermediate_size, 1);
				continue;
			}
			int lm = l - c->n_dense_layers;
			double zl[64], p[64], sc[64], mx = -1e300, s = 0;
			mv(zl, prm(m, "model.layers.%d.mlp.gate.weight", l, 0), t2, E, D);
			const double *bias = prm(m, "model.layers.%d.mlp.selection_bias", l, 0);
			for (int e = 0; e < E; e++)
				mx = fmax(mx, zl[e]);
			for (int e = 0; e < E; e++)
				s += exp(zl[e] - mx);
			*z += pow(mx + log(s), 2) / N;
			for (int e = 0; e < E; e++) {
				p[e] = exp(zl[e] - mx) / s;
				sc[e] = use_bias ? zl[e] + bias[e] : zl[e];
			}
			bool chosen[64] = {false};
			double wsum = 0;
			for (int kk = 0; kk < K; kk++) { /* K times: the best remaining score */
				int best = -1;
				for (int e = 0; e < E; e++)
					if (!chosen[e] && (best < 0 || sc[e] > sc[best]))
						best = e;
				chosen[best] = true;
				wsum += p[best];
			}
			bool valid = tok[n] != c->pad_token_id;
			for (int e = 0; e < E; e++) {
				if (valid) {
					psum[lm][e] += p[e];
					cnt[lm][e] += chosen[e];
				}
				if (!chosen[e])
					continue;
				double g = c->norm_topk_prob ? p[e] / wsum : p[e];
				nswiglu(y, t2, prm(m, "model.layers.%d.mlp.experts.%d.gate_proj.weight", l, e),
					prm(m, "model.layers.%d.mlp.experts.%d.up_proj.weight", l, e),
					prm(m, "model.layers.%d.mlp.experts.%d.down_proj.weight", l, e), D,
					c->intermediate_size, g);
			}
			for (int sx = 0; sx < c->n_shared_experts; sx++)
				nswiglu(y, t2, prm(m, "model.layers.%d.mlp.shared_experts.%d.gate_proj.weight", l, sx),
					prm(m, "model.layers.%d.mlp.shared_experts.%d.up_proj.weight", l, sx),
					prm(m, "model.layers.%d.mlp.shared_experts.%d.down_proj.weight", l, sx), D,
					c->shared_expert_intermediate_size, 1);
		}
	}
	*ce = 0;
	int nv = 0;
	for (int n = 0; n < N; n++) {
		nrms(t1, x + n * D, prm(m, "model.norm.weight", 0, 0), D, eps);
		mv(logits + (size_t)n * V, prm(m, "lm_head.weight", 0, 0), t1, V, D);
		if (tgt[n] == c->pad_token_id)
			continue;
		double mx = -1e300, s = 0;
		for (int u = 0; u < V; u++)
			mx = fmax(mx, logits[(size_t)n * V + u]);
		for (int u = 0; u < V; u++)
			s += exp(logits[(size_t)n * V + u] - mx);
		*ce += mx + log(s) - logits[(size_t)n * V + tgt[n]];
		nv++;
	}
	*ce /= nv;
	*aux = 0;
	if (c->aux_loss_form == MOE_AUX_SWITCH) {
		double R = nvalid * Lm;
		for (int e = 0; e < E; e++) {
			double C = 0, P = 0;
			for (int lm = 0; lm < Lm; lm++)
				C += cnt[lm][e], P += psum[lm][e];
			*aux += E * (C / R) * (P / R);
		}
	} else {
		for (int lm = 0; lm < Lm; lm++)
			for (int e = 0; e < E; e++)
				*aux += E / (nvalid * K) * cnt[lm][e] * (psum[lm][e] / nvalid) / Lm;
	}
	free(x), free(a), free(q), free(k), free(v), free(t1), free(t2);
}

static void naive_case(enum moe_aux_form form, bool norm, bool lflb)
{
	struct moe_config cfg;
	moe_config_defaults(&cfg);
	cfg.vocab_size = 40;
	cfg.hidden_size = 24;
	cfg.num_attention_heads = 3;
	cfg.num_hidden_layers = 3;
	cfg.n_dense_layers = 1;
	cfg.dense_intermediate_size = 20;
	cfg.num_experts = 6;
	cfg.num_experts_per_tok = 2;
	cfg.intermediate_size = 12;
	cfg.n_shared_experts = 2;
	cfg.shared_expert_intermediate_size = 10;
	cfg.norm_topk_prob = norm;
	cfg.loss_free_balancing = lflb;
	cfg.aux_loss_form = form;
	cfg.pad_token_id = 1;
	cfg.initializer_range = 0.3;
	cfg.rope_theta = 500.0;
	cfg.eos_token_id = 0;
	struct moe_error err = {0};
	struct moe_model *m = moe_model_new(&cfg, NULL, &err);
	cr_assert(m, "%s", err.msg);
	moe_model_init(m, 21, &err);
	double *P = moe_model_params_host(m);
	for (int l = 1; l < 3; l++)
		for (int e = 0; e < 6; e++)
			P[moe_model_layer(m, l)->bias + e] = 0.4 * rnd();
	int B = 2, T = 9, N = 18;
	int32_t tok[18], tgt[18];
	for (int n = 0; n < N; n++) {
		tok[n] = 2 + (int32_t)(splitmix64(&rng_state) % 38);
		tgt[n] = 2 + (int32_t)(splitmix64(&rng_state) % 38);
	}
	tok[11] = 1; /* a pad input and an ignored target */
	tgt[4] = 1;
	double *lg = track(malloc(sizeof(double) * N * 40)), *ref = track(malloc(sizeof(double) * N * 40));
	struct moe_forward_opts o = {.train = true, .logits_mode = MOE_LOGITS_ALL, .logits_out = lg};
	struct moe_losses L;
	cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &o, &L, &err), 0, "%s", err.msg);
	double ce, aux, z;
	naive_forward(m, tok, tgt, B, T, lflb, ref, &ce, &aux, &z);
	for (int i = 0; i < N * 40; i++)
		cr_assert(fabs(lg[i] - ref[i]) < 1e-10 * (1 + fabs(ref[i])), "logit %d: %.15g vs %.15g", i, lg[i], ref[i]);
	cr_assert(fabs(L.ce - ce) < 1e-10, "ce %.15g vs %.15g", L.ce, ce);
	cr_assert(fabs(L.aux - aux) < 1e-10, "aux %.15g vs %.15g", L.aux, aux);
	cr_assert(fabs(L.z - z) < 1e-10, "z %.15g vs %.15g", L.z, z);
	moe_model_free(m);
}

/* The graph (grouped experts, fused gate/up, backend ops) against a direct
 * per-token evaluation of the equations in double precision. */
Test(naive, switch_plain, .fini = release_all) { naive_case(MOE_AUX_SWITCH, false, false); }
Test(naive, megablocks_norm_bias, .fini = release_all) { naive_case(MOE_AUX_MEGABLOCKS, true, true); }
Test(naive, switch_bias, .fini = release_all) { naive_case(MOE_AUX_SWITCH, false, true); }
