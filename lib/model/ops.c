/*
 * CPU fp32 reference operators (see ops.h for the contract).  Written for
 * clarity first; OpenMP over rows or output features where the work is large
 * (linear layers, attention, cross-entropy).  Every parallel loop writes
 * disjoint outputs and reductions go through per-thread partials combined in
 * thread order, so results are deterministic for a fixed thread count.
 */
#include "model/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#ifdef _OPENMP
#include <omp.h>
#endif

static int max_threads(void)
{
#ifdef _OPENMP
	return omp_get_max_threads();
#else
	return 1;
#endif
}

static int thread_id(void)
{
#ifdef _OPENMP
	return omp_get_thread_num();
#else
	return 0;
#endif
}

/* ---- embedding ------------------------------------------------------------ */

void moe_embedding_fwd(float *out, const int32_t *ids, const float *wte, int N, int D)
{
#pragma omp parallel for schedule(static) if (N > 256)
	for (int n = 0; n < N; n++)
		memcpy(out + (size_t)n * D, wte + (size_t)ids[n] * D, sizeof(float) * (size_t)D);
}

void moe_embedding_bwd(float *dwte, const float *dout, const int32_t *ids, int N, int D, int pad_id)
{
	/* serial over rows: several rows may share a token */
	for (int n = 0; n < N; n++) {
		if (ids[n] == pad_id)
			continue;
		float *dst = dwte + (size_t)ids[n] * D;
		const float *src = dout + (size_t)n * D;
#pragma omp simd
		for (int d = 0; d < D; d++)
			dst[d] += src[d];
	}
}

/* ---- RMSNorm -------------------------------------------------------------- */

void moe_rmsnorm_fwd(float *out, float *rstd, const float *x, const float *w, int N, int D, float eps)
{
#pragma omp parallel for schedule(static) if (N * D > 65536)
	for (int n = 0; n < N; n++) {
		const float *xr = x + (size_t)n * D;
		float *o = out + (size_t)n * D;
		float ss = 0.0f;
#pragma omp simd reduction(+ : ss)
		for (int d = 0; d < D; d++)
			ss += xr[d] * xr[d];
		float r = 1.0f / sqrtf(ss / (float)D + eps);
		rstd[n] = r;
		for (int d = 0; d < D; d++)
			o[d] = xr[d] * r * w[d];
	}
}

static void rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
			const float *rstd, int N, int D, bool add)
{
	/* y = w * x * r;  dx = r * (w*dy) - x * r^3 * mean(w*dy*x) */
#pragma omp parallel for schedule(static) if (N * D > 65536)
	for (int n = 0; n < N; n++) {
		const float *xr = x + (size_t)n * D, *dy = dout + (size_t)n * D;
		float *dxr = dx + (size_t)n * D;
		float r = rstd[n], dot = 0.0f;
#pragma omp simd reduction(+ : dot)
		for (int d = 0; d < D; d++)
			dot += w[d] * dy[d] * xr[d];
		float c = r * r * r * dot / (float)D;
		for (int d = 0; d < D; d++) {
			float v = r * w[d] * dy[d] - xr[d] * c;
			dxr[d] = add ? dxr[d] + v : v;
		}
	}
	if (!dw)
		return;
#pragma omp parallel for schedule(static) if (N * D > 65536)
	for (int d = 0; d < D; d++) {
		float s = 0.0f;
		for (int n = 0; n < N; n++)
			s += dout[(size_t)n * D + d] * x[(size_t)n * D + d] * rstd[n];
		dw[d] += s;
	}
}

void moe_rmsnorm_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
		     const float *rstd, int N, int D)
{
	rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, D, false);
}

void moe_rmsnorm_bwd_add(float *dx, float *dw, const float *dout, const float *x, const float *w,
			 const float *rstd, int N, int D)
{
	rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, D, true);
}

/* ---- linear --------------------------------------------------------------- */

/*
 * Two register-tiled kernels with GCC vector extensions (8 floats; AVX2+FMA
 * clone chosen at run time on x86-64, plain SSE otherwise).  The order of the
 * additions depends only on the shapes, so results are deterministic.
 */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define MOE_CLONES __attribute__((target_clones("arch=x86-64-v3", "default")))
#else
#define MOE_CLONES
#endif

typedef float v8 __attribute__((vector_size(8 * sizeof(float))));

/* unaligned load/store of 8 floats (macros: no vector-typed calls) */
#define LD8(v, p) memcpy(&(v), (p), sizeof(v8))
#define ST8(p, v) memcpy((p), &(v), sizeof(v8))

static inline float hsum8(const v8 *v)
{
	return (((*v)[0] + (*v)[4]) + ((*v)[1] + (*v)[5])) + (((*v)[2] + (*v)[6]) + ((*v)[3] + (*v)[7]));
}

static inline float dotf(const float *a, const float *b, int n)
{
	float s = 0.0f;
#pragma omp simd reduction(+ : s)
	for (int i = 0; i < n; i++)
		s += a[i] * b[i];
	return s;
}

/* out[r][c] = dot(x[r], w[c]) for a 4x4 tile (rows r0.., cols c0..), n = In. */
MOE_CLONES static void dot_tile4x4(float *out, int ldo, const float *x, const float *w, int In)
{
	v8 acc[4][4];
	memset(acc, 0, sizeof(acc));
	int k = 0;
	for (; k + 8 <= In; k += 8) {
		v8 xa[4], wa[4];
		for (int r = 0; r < 4; r++)
			LD8(xa[r], x + (size_t)r * In + k);
		for (int c = 0; c < 4; c++)
			LD8(wa[c], w + (size_t)c * In + k);
		for (int r = 0; r < 4; r++)
			for (int c = 0; c < 4; c++)
				acc[r][c] += xa[r] * wa[c];
	}
	for (int r = 0; r < 4; r++)
		for (int c = 0; c < 4; c++) {
			float s = hsum8(&acc[r][c]);
			for (int kk = k; kk < In; kk++)
				s += x[(size_t)r * In + kk] * w[(size_t)c * In + kk];
			out[(size_t)r * ldo + c] = s;
		}
}

/* C[r][j] (+)= sum_k A(r,k) * B[k][j] for rows [r0, r1), all J columns;
 * A(r,k) = a[r*ars + k*aks], B row stride ldb, C row stride ldc. */
MOE_CLONES static void gemm_rows(float *C, size_t ldc, const float *a, size_t ars, size_t aks,
				 const float *b, size_t ldb, int r0, int r1, int J, int Kd, bool acc)
{
	for (int rb = r0; rb < r1; rb += 4) {
		int nr = r1 - rb < 4 ? r1 - rb : 4;
		int j0 = 0;
		for (; j0 + 32 <= J && nr == 4; j0 += 32) {
			v8 c[4][4];
			memset(c, 0, sizeof(c));
			for (int k = 0; k < Kd; k++) {
				const float *bk = b + (size_t)k * ldb + j0;
				v8 b0, b1, b2, b3;
				LD8(b0, bk);
				LD8(b1, bk + 8);
				LD8(b2, bk + 16);
				LD8(b3, bk + 24);
				for (int r = 0; r < 4; r++) {
					float ar = a[(size_t)(rb + r) * ars + (size_t)k * aks];
					c[r][0] += ar * b0;
					c[r][1] += ar * b1;
					c[r][2] += ar * b2;
					c[r][3] += ar * b3;
				}
			}
			for (int r = 0; r < 4; r++)
				for (int q = 0; q < 4; q++) {
					float *dst = C + (size_t)(rb + r) * ldc + j0 + 8 * q;
					v8 t = c[r][q];
					if (acc) {
						v8 old;
						LD8(old, dst);
						t += old;
					}
					ST8(dst, t);
				}
		}
		/* remaining columns (and short row blocks) */
		for (int r = rb; r < rb + nr; r++) {
			float *cr = C + (size_t)r * ldc;
			for (int j = j0; j < J; j++) {
				float s = 0.0f;
				for (int k = 0; k < Kd; k++)
					s += a[(size_t)r * ars + (size_t)k * aks] * b[(size_t)k * ldb + j];
				cr[j] = acc ? cr[j] + s : s;
			}
		}
	}
}

/* Cache-blocked C (R, J) (+)= A (R, Kd) @ B (Kd, J): OpenMP over tiles of
 * 64 rows x 256 columns, k in chunks of 256 (accumulated in order, so the
 * result does not depend on the thread count). */
static void gemm(float *C, size_t ldc, const float *a, size_t ars, size_t aks, const float *b,
		 size_t ldb, int R, int J, int Kd, bool acc, bool par)
{
	enum { RB = 64, JB = 256, KB = 256 };
	int nrt = (R + RB - 1) / RB, njt = (J + JB - 1) / JB;
#pragma omp parallel for collapse(2) schedule(static) if (par)
	for (int rt = 0; rt < nrt; rt++)
		for (int jt = 0; jt < njt; jt++) {
			int r0 = rt * RB, r1 = r0 + RB < R ? r0 + RB : R;
			int j0 = jt * JB, jn = J - j0 < JB ? J - j0 : JB;
			if (Kd == 0 && !acc)
				for (int r = r0; r < r1; r++)
					memset(C + (size_t)r * ldc + j0, 0, sizeof(float) * (size_t)jn);
			for (int k0 = 0; k0 < Kd; k0 += KB) {
				int kn = Kd - k0 < KB ? Kd - k0 : KB;
				gemm_rows(C + j0, ldc, a + (size_t)k0 * aks, ars, aks, b + (size_t)k0 * ldb + j0,
					  ldb, r0, r1, jn, kn, acc || k0 > 0);
			}
		}
}

void moe_linear_fwd(float *out, const float *x, const float *w, const float *b, int N, int In, int Out)
{
	/* enough rows: transpose w once and use the axpy-form kernel (faster
	 * than dot products); otherwise (or without memory) 4x4 dot tiles */
	float *wt = N >= 16 && Out >= 32 ? malloc(sizeof(float) * (size_t)In * Out) : NULL;
	if (wt) {
		bool par = (size_t)N * In * Out > 200000;
#pragma omp parallel for schedule(static) if (par)
		for (int i = 0; i < In; i++)
			for (int o = 0; o < Out; o++)
				wt[(size_t)i * Out + o] = w[(size_t)o * In + i];
		gemm(out, (size_t)Out, x, (size_t)In, 1, wt, (size_t)Out, N, Out, In, false, par);
		if (b)
			for (int r = 0; r < N; r++)
				for (int o = 0; o < Out; o++)
					out[(size_t)r * Out + o] += b[o];
		free(wt);
		return;
	}
	int nb = (N + 3) / 4, ob = (Out + 3) / 4;
#pragma omp parallel for collapse(2) schedule(static) if ((size_t)N * In * Out > 200000)
	for (int rb = 0; rb < nb; rb++)
		for (int cb = 0; cb < ob; cb++) {
			int r0 = rb * 4, c0 = cb * 4;
			if (r0 + 4 <= N && c0 + 4 <= Out) {
				dot_tile4x4(out + (size_t)r0 * Out + c0, Out, x + (size_t)r0 * In,
					    w + (size_t)c0 * In, In);
			} else {
				for (int r = r0; r < N && r < r0 + 4; r++)
					for (int c = c0; c < Out && c < c0 + 4; c++)
						out[(size_t)r * Out + c] =
							dotf(x + (size_t)r * In, w + (size_t)c * In, In);
			}
			if (b)
				for (int r = r0; r < N && r < r0 + 4; r++)
					for (int c = c0; c < Out && c < c0 + 4; c++)
						out[(size_t)r * Out + c] += b[c];
		}
}

void moe_linear_fwd_add(float *out, const float *x, const float *w, int N, int In, int Out)
{
	bool par = (size_t)N * In * Out > 200000;
	float *wt = N >= 16 && Out >= 32 ? malloc(sizeof(float) * (size_t)In * Out) : NULL;
	if (wt) {
#pragma omp parallel for schedule(static) if (par)
		for (int i = 0; i < In; i++)
			for (int o = 0; o < Out; o++)
				wt[(size_t)i * Out + o] = w[(size_t)o * In + i];
		gemm(out, (size_t)Out, x, (size_t)In, 1, wt, (size_t)Out, N, Out, In, true, par);
		free(wt);
		return;
	}
#pragma omp parallel for collapse(2) schedule(static) if (par)
	for (int r = 0; r < N; r++)
		for (int c = 0; c < Out; c++)
			out[(size_t)r * Out + c] += dotf(x + (size_t)r * In, w + (size_t)c * In, In);
}

void moe_linear_bwd_dx_add(float *dx, const float *dout, const float *w, int N, int In, int Out)
{
	bool par = (size_t)N * In * Out > 200000;
	gemm(dx, (size_t)In, dout, (size_t)Out, 1, w, (size_t)In, N, In, Out, true, par);
}

void moe_linear_bwd(float *dx, float *dw, float *db, const float *dout, const float *x,
		    const float *w, int N, int In, int Out)
{
	bool par = (size_t)N * In * Out > 200000;
	if (dx) /* dx (N, In) = dout (N, Out) @ w (Out, In) */
		gemm(dx, (size_t)In, dout, (size_t)Out, 1, w, (size_t)In, N, In, Out, false, par);
	if (dw) /* dw (Out, In) += dout^T (Out, N) @ x (N, In) */
		gemm(dw, (size_t)In, dout, 1, (size_t)Out, x, (size_t)In, Out, In, N, true, par);
	if (db) {
		for (int o = 0; o < Out; o++) {
			float sb = 0.0f;
			for (int n = 0; n < N; n++)
				sb += dout[(size_t)n * Out + o];
			db[o] += sb;
		}
	}
}

/* ---- RoPE ----------------------------------------------------------------- */

/* fp32 angles as in HF: inv_freq = 1 / theta^(2j/Dh), angle = t * inv_freq */
static void rope_apply(float *x, int B, int T, int H, int Dh, float theta, float sign)
{
	int half = Dh / 2;
#pragma omp parallel for schedule(static) if ((size_t)B * T * H * Dh > 65536)
	for (int t = 0; t < T; t++) {
		float cs[half], sn[half];
		for (int j = 0; j < half; j++) {
			float inv = 1.0f / powf(theta, (float)(2 * j) / (float)Dh);
			float a = (float)t * inv;
			cs[j] = cosf(a);
			sn[j] = sign * sinf(a);
		}
		for (int b = 0; b < B; b++)
			for (int h = 0; h < H; h++) {
				float *v = x + (((size_t)b * T + t) * H + h) * Dh;
				for (int j = 0; j < half; j++) {
					float x1 = v[j], x2 = v[j + half];
					v[j] = x1 * cs[j] - x2 * sn[j];
					v[j + half] = x2 * cs[j] + x1 * sn[j];
				}
			}
	}
}

void moe_rope_fwd(float *x, int B, int T, int H, int Dh, float theta)
{
	rope_apply(x, B, T, H, Dh, theta, 1.0f);
}

void moe_rope_bwd(float *dx, int B, int T, int H, int Dh, float theta)
{
	/* the transpose of a rotation is the rotation by the opposite angle */
	rope_apply(dx, B, T, H, Dh, theta, -1.0f);
}

/* ---- attention ------------------------------------------------------------ */

void moe_attention_fwd(float *out, float *lse, const float *q, const float *k, const float *v,
		       int B, int T, int H, int Dh)
{
	float scale = 1.0f / sqrtf((float)Dh);
	size_t rs = (size_t)H * Dh; /* row stride of (B, T, H, Dh) */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if ((size_t)B * H * T * T * Dh > 100000)
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++) {
			float sc[T];
			for (int t = 0; t < T; t++) {
				const float *qt = q + ((size_t)b * T + t) * rs + (size_t)h * Dh;
				float mx = -INFINITY;
				for (int s = 0; s <= t; s++) {
					sc[s] = scale * dotf(qt, k + ((size_t)b * T + s) * rs + (size_t)h * Dh, Dh);
					if (sc[s] > mx)
						mx = sc[s];
				}
				float sum = 0.0f;
				for (int s = 0; s <= t; s++) {
					sc[s] = expf(sc[s] - mx);
					sum += sc[s];
				}
				float inv = 1.0f / sum;
				float *ot = out + ((size_t)b * T + t) * rs + (size_t)h * Dh;
				memset(ot, 0, sizeof(float) * (size_t)Dh);
				for (int s = 0; s <= t; s++) {
					const float *vs = v + ((size_t)b * T + s) * rs + (size_t)h * Dh;
					float p = sc[s] * inv;
#pragma omp simd
					for (int d = 0; d < Dh; d++)
						ot[d] += p * vs[d];
				}
				lse[((size_t)b * H + h) * T + t] = mx + logf(sum);
			}
		}
}

void moe_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
		       const float *k, const float *v, const float *out, const float *lse,
		       int B, int T, int H, int Dh)
{
	float scale = 1.0f / sqrtf((float)Dh);
	size_t rs = (size_t)H * Dh;
	/* each (b, h) slice is owned by one thread: dk/dv accumulate over t */
#pragma omp parallel for collapse(2) schedule(dynamic, 1) if ((size_t)B * H * T * T * Dh > 100000)
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++) {
			for (int t = 0; t < T; t++) {
				size_t r = ((size_t)b * T + t) * rs + (size_t)h * Dh;
				memset(dk + r, 0, sizeof(float) * (size_t)Dh);
				memset(dv + r, 0, sizeof(float) * (size_t)Dh);
			}
			for (int t = 0; t < T; t++) {
				size_t rt = ((size_t)b * T + t) * rs + (size_t)h * Dh;
				const float *qt = q + rt, *dot_ = dout + rt;
				float *dqt = dq + rt;
				float L = lse[((size_t)b * H + h) * T + t];
				float Dt = dotf(dot_, out + rt, Dh);
				memset(dqt, 0, sizeof(float) * (size_t)Dh);
				for (int s = 0; s <= t; s++) {
					size_t rsx = ((size_t)b * T + s) * rs + (size_t)h * Dh;
					const float *ks = k + rsx, *vs = v + rsx;
					float p = expf(scale * dotf(qt, ks, Dh) - L);
					float dp = dotf(dot_, vs, Dh);
					float ds = p * (dp - Dt) * scale;
					float *dks = dk + rsx, *dvs = dv + rsx;
#pragma omp simd
					for (int d = 0; d < Dh; d++) {
						dqt[d] += ds * ks[d];
						dks[d] += ds * qt[d];
						dvs[d] += p * dot_[d];
					}
				}
			}
		}
}

/* ---- SwiGLU --------------------------------------------------------------- */

static inline float sigmoidf_(float x)
{
	return 1.0f / (1.0f + expf(-x));
}

void moe_swiglu_fwd(float *h, const float *g, const float *u, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++)
		h[i] = g[i] * sigmoidf_(g[i]) * u[i];
}

void moe_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n)
{
#pragma omp parallel for schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++) {
		float s = sigmoidf_(g[i]);
		float silu = g[i] * s;
		du[i] = dh[i] * silu;
		dg[i] = dh[i] * u[i] * s * (1.0f + g[i] * (1.0f - s));
	}
}

void moe_swiglu_gu_fwd(float *h, const float *gu, int M, int I)
{
#pragma omp parallel for schedule(static) if ((size_t)M * I > 65536)
	for (int m = 0; m < M; m++)
		moe_swiglu_fwd(h + (size_t)m * I, gu + (size_t)m * 2 * I, gu + (size_t)m * 2 * I + I,
			       (size_t)I);
}

void moe_swiglu_gu_bwd(float *dgu, const float *dh, const float *gu, int M, int I)
{
#pragma omp parallel for schedule(static) if ((size_t)M * I > 65536)
	for (int m = 0; m < M; m++) {
		const float *g = gu + (size_t)m * 2 * I;
		moe_swiglu_bwd(dgu + (size_t)m * 2 * I, dgu + (size_t)m * 2 * I + I, dh + (size_t)m * I,
			       g, g + I, (size_t)I);
	}
}

/* ---- router --------------------------------------------------------------- */

void moe_router_fwd(int32_t *topk_idx, float *topk_w, float *probs, const float *logits,
		    const float *bias, int N, int E, int K, bool norm_topk)
{
#pragma omp parallel for schedule(static) if ((size_t)N * E > 65536)
	for (int n = 0; n < N; n++) {
		const float *z = logits + (size_t)n * E;
		float *p = probs + (size_t)n * E;
		float mx = z[0];
		for (int e = 1; e < E; e++)
			if (z[e] > mx)
				mx = z[e];
		float sum = 0.0f;
		for (int e = 0; e < E; e++) {
			p[e] = expf(z[e] - mx);
			sum += p[e];
		}
		for (int e = 0; e < E; e++)
			p[e] /= sum;
		/* selection: top K of the (biased) scores; ties -> lower id */
		int32_t *idx = topk_idx + (size_t)n * K;
		float *w = topk_w + (size_t)n * K;
		char taken[E];
		memset(taken, 0, (size_t)E);
		for (int k = 0; k < K; k++) {
			int best = -1;
			float bs = 0.0f;
			for (int e = 0; e < E; e++) {
				if (taken[e])
					continue;
				float s = bias ? z[e] + bias[e] : p[e];
				if (best < 0 || s > bs) {
					best = e;
					bs = s;
				}
			}
			taken[best] = 1;
			idx[k] = best;
			w[k] = p[best];
		}
		/* list by weight descending (ties: lower id), stable insertion sort */
		for (int a = 1; a < K; a++) {
			int32_t ia = idx[a];
			float wa = w[a];
			int b = a - 1;
			while (b >= 0 && (w[b] < wa || (w[b] == wa && idx[b] > ia))) {
				idx[b + 1] = idx[b];
				w[b + 1] = w[b];
				b--;
			}
			idx[b + 1] = ia;
			w[b + 1] = wa;
		}
		if (norm_topk) {
			float s = 0.0f;
			for (int k = 0; k < K; k++)
				s += w[k];
			for (int k = 0; k < K; k++)
				w[k] /= s;
		}
	}
}

void moe_router_bwd(float *dlogits, const float *dtopk_w, const float *dprobs, const float *probs,
		    const int32_t *topk_idx, const float *topk_w, int N, int E, int K, bool norm_topk)
{
#pragma omp parallel for schedule(static) if ((size_t)N * E > 65536)
	for (int n = 0; n < N; n++) {
		const float *p = probs + (size_t)n * E;
		const int32_t *idx = topk_idx + (size_t)n * K;
		const float *w = topk_w + (size_t)n * K;
		const float *dw = dtopk_w ? dtopk_w + (size_t)n * K : NULL;
		float dp[E];
		for (int e = 0; e < E; e++)
			dp[e] = dprobs ? dprobs[(size_t)n * E + e] : 0.0f;
		if (dw) {
			if (norm_topk) {
				/* w_k = p_k / S: dp_j += (dw_j - sum_k dw_k w_k) / S */
				float S = 0.0f, c = 0.0f;
				for (int k = 0; k < K; k++) {
					S += p[idx[k]];
					c += dw[k] * w[k];
				}
				for (int k = 0; k < K; k++)
					dp[idx[k]] += (dw[k] - c) / S;
			} else {
				for (int k = 0; k < K; k++)
					dp[idx[k]] += dw[k];
			}
		}
		float s = 0.0f;
		for (int e = 0; e < E; e++)
			s += p[e] * dp[e];
		float *dz = dlogits + (size_t)n * E;
		for (int e = 0; e < E; e++)
			dz[e] = p[e] * (dp[e] - s);
	}
}

void moe_route_group(int32_t *counts, int32_t *offsets, int32_t *perm, const int32_t *topk_idx,
		     int N, int K, int E)
{
	memset(counts, 0, sizeof(int32_t) * (size_t)E);
	for (int j = 0; j < N * K; j++)
		counts[topk_idx[j]]++;
	offsets[0] = 0;
	for (int e = 0; e < E; e++)
		offsets[e + 1] = offsets[e] + counts[e];
	int32_t cur[E];
	memcpy(cur, offsets, sizeof(int32_t) * (size_t)E);
	for (int j = 0; j < N * K; j++)
		perm[cur[topk_idx[j]]++] = j;
}

void moe_route_inverse(int32_t *inv, const int32_t *perm, int NK)
{
	for (int j = 0; j < NK; j++)
		inv[perm[j]] = j;
}

void moe_gather_rows(float *xg, const float *x, const int32_t *perm, int NK, int K, int D)
{
#pragma omp parallel for schedule(static) if ((size_t)NK * D > 65536)
	for (int j = 0; j < NK; j++)
		memcpy(xg + (size_t)j * D, x + (size_t)(perm[j] / K) * D, sizeof(float) * (size_t)D);
}

void moe_scatter_add_rows(float *dx, const float *dxg, const int32_t *perm, int NK, int K, int D)
{
	/* serial over slots (several slots share a token), vectorised over D */
	for (int j = 0; j < NK; j++) {
		float *dst = dx + (size_t)(perm[j] / K) * D;
		const float *src = dxg + (size_t)j * D;
#pragma omp simd
		for (int d = 0; d < D; d++)
			dst[d] += src[d];
	}
}

void moe_grouped_linear_fwd(float *out, const float *x, const float *w, const int32_t *offsets,
			    int E, int In, int Out)
{
	for (int e = 0; e < E; e++) {
		int r0 = offsets[e], n = offsets[e + 1] - offsets[e];
		if (n > 0)
			moe_linear_fwd(out + (size_t)r0 * Out, x + (size_t)r0 * In,
				       w + (size_t)e * Out * In, NULL, n, In, Out);
	}
}

void moe_grouped_linear_bwd(float *dx, float *dw, const float *dout, const float *x, const float *w,
			    const int32_t *offsets, int E, int In, int Out)
{
	for (int e = 0; e < E; e++) {
		int r0 = offsets[e], n = offsets[e + 1] - offsets[e];
		if (n > 0)
			moe_linear_bwd(dx ? dx + (size_t)r0 * In : NULL,
				       dw ? dw + (size_t)e * Out * In : NULL, NULL,
				       dout + (size_t)r0 * Out, x + (size_t)r0 * In,
				       w + (size_t)e * Out * In, n, In, Out);
	}
}

void moe_combine_fwd(float *out, const float *res, const float *yg, const float *topk_w, const int32_t *inv,
		     int N, int K, int D)
{
#pragma omp parallel for schedule(static) if ((size_t)N * K * D > 65536)
	for (int n = 0; n < N; n++) {
		float *o = out + (size_t)n * D;
		memset(o, 0, sizeof(float) * (size_t)D);
		for (int k = 0; k < K; k++) {
			float wk = topk_w[(size_t)n * K + k];
			const float *y = yg + (size_t)inv[(size_t)n * K + k] * D;
#pragma omp simd
			for (int d = 0; d < D; d++)
				o[d] += wk * y[d];
		}
		if (res) {
			const float *r = res + (size_t)n * D;
#pragma omp simd
			for (int d = 0; d < D; d++)
				o[d] = r[d] + o[d];
		}
	}
}

void moe_combine_bwd(float *dyg, float *dtopk_w, const float *dout, const float *yg,
		     const float *topk_w, const int32_t *inv, int N, int K, int D)
{
#pragma omp parallel for schedule(static) if ((size_t)N * K * D > 65536)
	for (int n = 0; n < N; n++) {
		const float *dy = dout + (size_t)n * D;
		for (int k = 0; k < K; k++) {
			size_t j = (size_t)inv[(size_t)n * K + k];
			float wk = topk_w[(size_t)n * K + k];
			dtopk_w[(size_t)n * K + k] = dotf(dy, yg + j * D, D);
			float *d = dyg + j * D;
#pragma omp simd
			for (int i = 0; i < D; i++)
				d[i] = wk * dy[i];
		}
	}
}

void moe_router_stats(float *psum, int32_t *cnt, const float *probs, const int32_t *topk_idx,
		      const int32_t *ids, int pad_id, int N, int E, int K)
{
	memset(psum, 0, sizeof(float) * (size_t)E);
	memset(cnt, 0, sizeof(int32_t) * (size_t)E);
	/* double accumulation: N can be large */
	double acc[E];
	memset(acc, 0, sizeof(acc));
	for (int n = 0; n < N; n++) {
		if (ids && ids[n] == pad_id)
			continue;
		for (int e = 0; e < E; e++)
			acc[e] += probs[(size_t)n * E + e];
		for (int k = 0; k < K; k++)
			cnt[topk_idx[(size_t)n * K + k]]++;
	}
	for (int e = 0; e < E; e++)
		psum[e] = (float)acc[e];
}

void moe_aux_dprobs(float *dprobs, const float *g, const int32_t *ids, int pad_id, int N, int E)
{
	for (int n = 0; n < N; n++) {
		float *d = dprobs + (size_t)n * E;
		if (ids && ids[n] == pad_id)
			memset(d, 0, sizeof(float) * (size_t)E);
		else
			memcpy(d, g, sizeof(float) * (size_t)E);
	}
}

/* ---- losses --------------------------------------------------------------- */

double moe_xent_fwd_bwd(float *dlogits, const float *logits, const int32_t *targets, int N, int V,
			int ignore_id, float scale, int64_t *n_valid)
{
	int nt = max_threads();
	double part[nt];
	int64_t cnt[nt];
	for (int i = 0; i < nt; i++) {
		part[i] = 0.0;
		cnt[i] = 0;
	}
#pragma omp parallel if ((size_t)N * V > 65536)
	{
		int tid = thread_id();
#pragma omp for schedule(static)
		for (int n = 0; n < N; n++) {
			const float *z = logits + (size_t)n * V;
			float *dz = dlogits ? dlogits + (size_t)n * V : NULL;
			int tgt = targets[n];
			if (tgt == ignore_id) {
				if (dz)
					memset(dz, 0, sizeof(float) * (size_t)V);
				continue;
			}
			float mx = z[0];
			for (int v = 1; v < V; v++)
				if (z[v] > mx)
					mx = z[v];
			double sum = 0.0;
			for (int v = 0; v < V; v++)
				sum += (double)expf(z[v] - mx);
			double lse = (double)mx + log(sum);
			double zt = z[tgt];
			part[tid] += lse - zt;
			cnt[tid]++;
			if (dz) {
				float ls = (float)(log(sum)), st = scale;
				for (int v = 0; v < V; v++)
					dz[v] = st * expf(z[v] - mx - ls);
				dz[tgt] -= scale;
			}
		}
	}
	double s = 0.0;
	int64_t c = 0;
	for (int i = 0; i < nt; i++) {
		s += part[i];
		c += cnt[i];
	}
	if (n_valid)
		*n_valid = c;
	return s;
}

double moe_zloss_fwd_bwd(float *dlogits, const float *logits, int N, int E, float scale)
{
	double s = 0.0;
	for (int n = 0; n < N; n++) {
		const float *z = logits + (size_t)n * E;
		float mx = z[0];
		for (int e = 1; e < E; e++)
			if (z[e] > mx)
				mx = z[e];
		double sum = 0.0;
		for (int e = 0; e < E; e++)
			sum += exp((double)(z[e] - mx));
		double lse = (double)mx + log(sum);
		s += lse * lse;
		if (dlogits) {
			float *dz = dlogits + (size_t)n * E;
			double c = 2.0 * lse / (double)N * (double)scale;
			for (int e = 0; e < E; e++)
				dz[e] += (float)(c * exp((double)z[e] - lse));
		}
	}
	return N > 0 ? s / (double)N : 0.0;
}

/* ---- optimizer helpers ------------------------------------------------------ */

void moe_adamw_step(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr,
		    float beta1, float beta2, float eps, float weight_decay, int64_t t)
{
	/* torch.optim.AdamW: p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps) */
	double bc1 = 1.0 - pow((double)beta1, (double)t);
	double bc2 = 1.0 - pow((double)beta2, (double)t);
	float step = (float)((double)lr / bc1);
	float sbc2 = (float)sqrt(bc2);
	float decay = 1.0f - lr * weight_decay;
#pragma omp parallel for simd schedule(static) if (n > 65536)
	for (size_t i = 0; i < n; i++) {
		float gi = g[i] * gscale;
		m[i] = beta1 * m[i] + (1.0f - beta1) * gi;
		v[i] = beta2 * v[i] + (1.0f - beta2) * gi * gi;
		p[i] = p[i] * decay - step * m[i] / (sqrtf(v[i]) / sbc2 + eps);
	}
}

void moe_balance_dir(int8_t *dir, const int64_t *counts, int E)
{
	double mean = 0.0;
	for (int e = 0; e < E; e++)
		mean += (double)counts[e];
	mean /= E;
	for (int e = 0; e < E; e++) {
		double d = mean - (double)counts[e];
		dir[e] = (int8_t)(d > 0 ? 1 : d < 0 ? -1 : 0);
	}
}

void moe_balance_apply(float *b, const int8_t *dir, int E, float u, float clamp)
{
	for (int e = 0; e < E; e++) {
		float x = b[e];
		if (dir[e] > 0)
			x += u;
		else if (dir[e] < 0)
			x -= u;
		if (x > clamp)
			x = clamp;
		if (x < -clamp)
			x = -clamp;
		b[e] = x;
	}
}

double moe_sumsq(const float *x, size_t n)
{
	int nt = max_threads();
	double part[nt];
	for (int i = 0; i < nt; i++)
		part[i] = 0.0;
#pragma omp parallel if (n > 65536)
	{
		int tid = thread_id();
		double s = 0.0;
#pragma omp for schedule(static)
		for (size_t i = 0; i < n; i++)
			s += (double)x[i] * x[i];
		part[tid] = s;
	}
	double s = 0.0;
	for (int i = 0; i < nt; i++)
		s += part[i];
	return s;
}
