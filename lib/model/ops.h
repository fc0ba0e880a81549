/*
 * CPU fp32 reference operators: the ground truth for the CUDA kernels in
 * kernels/ (each kernel is tested against the function here with fresh random
 * inputs and a stated tolerance) and the building blocks of the CPU backend.
 *
 * Conventions: row-major; shapes in comments use B, T, D, H, Dh, I, E, K, V,
 * N (= rows, usually B*T).  Forward functions overwrite their outputs.
 * Backward functions ACCUMULATE (+=) into parameter gradients (dw, db) and
 * OVERWRITE activation gradients (dx) unless the comment says otherwise.
 * No function allocates unless it says so.
 *
 * This header is a contract shared by lib/model (CPU) and kernels/ (CUDA):
 * extend it, do not change existing signatures without updating both.
 */
#ifndef MOE_OPS_H
#define MOE_OPS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* Embedding: out[n] = wte[ids[n]]. */
void moe_embedding_fwd(float *out /* (N, D) */, const int32_t *ids /* (N) */,
		       const float *wte /* (V, D) */, int N, int D);
/* dwte[ids[n]] += dout[n], except rows equal to pad_id (pad_id < 0: none). */
void moe_embedding_bwd(float *dwte /* (V, D) */, const float *dout /* (N, D) */,
		       const int32_t *ids /* (N) */, int N, int D, int pad_id);

/* RMSNorm with fp32 statistics: out = x * rstd * w, rstd = 1/sqrt(mean(x^2)+eps). */
void moe_rmsnorm_fwd(float *out /* (N, D) */, float *rstd /* (N) */, const float *x /* (N, D) */,
		     const float *w /* (D) */, int N, int D, float eps);
void moe_rmsnorm_bwd(float *dx /* (N, D) */, float *dw /* (D), += */, const float *dout /* (N, D) */,
		     const float *x /* (N, D) */, const float *w /* (D) */, const float *rstd /* (N) */,
		     int N, int D);
/* The same adding the input gradient into dx (a residual stream's gradient). */
void moe_rmsnorm_bwd_add(float *dx /* (N, D), += */, float *dw /* (D), += */, const float *dout,
			 const float *x, const float *w, const float *rstd, int N, int D);

/* Linear: out = x @ w^T (+ b).  w is (Out, In) as in PyTorch/HF.  The CPU
 * version may allocate a temporary transpose of w (freed before return). */
void moe_linear_fwd(float *out /* (N, Out) */, const float *x /* (N, In) */,
		    const float *w /* (Out, In) */, const float *b /* (Out) or NULL */,
		    int N, int In, int Out);
/* dx (may be NULL) overwritten; dw, db (may be NULL) accumulated. */
/* The same adding into out: out (N, Out) += x (N, In) @ w^T (Out, In). */
void moe_linear_fwd_add(float *out, const float *x, const float *w, int N, int In, int Out);
/* dx (N, In) += dout (N, Out) @ w (Out, In). */
void moe_linear_bwd_dx_add(float *dx, const float *dout, const float *w, int N, int In, int Out);
void moe_linear_bwd(float *dx /* (N, In) */, float *dw /* (Out, In) */, float *db /* (Out) */,
		    const float *dout /* (N, Out) */, const float *x /* (N, In) */,
		    const float *w /* (Out, In) */, int N, int In, int Out);

/* RoPE, rotate-half convention (HF Llama/OLMoE), in place on (B, T, H, Dh);
 * position of token t is t.  bwd applies the inverse rotation to the grad. */
void moe_rope_fwd(float *x /* (B, T, H, Dh) */, int B, int T, int H, int Dh, float theta);
void moe_rope_bwd(float *dx /* (B, T, H, Dh) */, int B, int T, int H, int Dh, float theta);

/* Causal scaled-dot-product attention, scale 1/sqrt(Dh).  q, k, v, out are
 * (B, T, H, Dh) (the natural layout after the QKV projection); lse (B, H, T)
 * is the log-sum-exp of each query's scaled scores, saved for backward. */
void moe_attention_fwd(float *out, float *lse /* (B, H, T) */, const float *q, const float *k,
		       const float *v, int B, int T, int H, int Dh);
void moe_attention_bwd(float *dq, float *dk, float *dv, const float *dout, const float *q,
		       const float *k, const float *v, const float *out, const float *lse,
		       int B, int T, int H, int Dh);

/* SwiGLU: h = silu(g) * u, elementwise over n values. */
void moe_swiglu_fwd(float *h, const float *g, const float *u, size_t n);
void moe_swiglu_bwd(float *dg, float *du, const float *dh, const float *g, const float *u, size_t n);

/* Router: probs = softmax(logits) over all E in fp32; choose the top K of
 * (logits + bias) (bias (E) may be NULL: loss-free balancing uses it for the
 * choice only); topk_w = probs at the chosen experts, divided by their sum
 * when norm_topk.  Experts are listed by weight descending; ties broken by
 * the lower expert id. */
void moe_router_fwd(int32_t *topk_idx /* (N, K) */, float *topk_w /* (N, K) */,
		    float *probs /* (N, E) */, const float *logits /* (N, E) */,
		    const float *bias /* (E) or NULL */, int N, int E, int K, bool norm_topk);
/* dlogits (overwritten) from the gradient of topk_w and, optionally, an extra
 * gradient on probs (dprobs (N, E) or NULL, e.g. from the aux loss). */
void moe_router_bwd(float *dlogits /* (N, E) */, const float *dtopk_w /* (N, K) */,
		    const float *dprobs /* (N, E) or NULL */, const float *probs /* (N, E) */,
		    const int32_t *topk_idx /* (N, K) */, const float *topk_w /* (N, K) */,
		    int N, int E, int K, bool norm_topk);

/* Dropless grouping: counts[e] = number of (token, slot) pairs routed to e;
 * offsets[e] = exclusive prefix sum (offsets[E] = N*K); perm[j] for j in
 * [offsets[e], offsets[e+1]) lists the flat slot ids n*K+k routed to e in
 * increasing order (stable). */
void moe_route_group(int32_t *counts /* (E) */, int32_t *offsets /* (E+1) */,
		     int32_t *perm /* (N*K) */, const int32_t *topk_idx /* (N, K) */,
		     int N, int K, int E);

/* Cross-entropy with ignore: returns the sum of -log p(target) over rows with
 * target != ignore_id and writes their count to *n_valid.  dlogits (may be
 * NULL) receives scale * (softmax - onehot) for valid rows and 0 for ignored
 * rows (scale is typically 1/n_valid_global).  dlogits may equal logits
 * (computed in place). */
double moe_xent_fwd_bwd(float *dlogits /* (N, V) */, const float *logits /* (N, V) */,
			const int32_t *targets /* (N) */, int N, int V, int ignore_id, float scale,
			int64_t *n_valid);

/* Router z-loss: mean over N of logsumexp(logits)^2; dlogits (may be NULL)
 * += scale * d/dlogits. */
double moe_zloss_fwd_bwd(float *dlogits /* (N, E) */, const float *logits /* (N, E) */, int N,
			 int E, float scale);

/* AdamW (decoupled weight decay), fp32 state, one tensor, on the gradient
 * g * gscale (a clip factor; g is not changed). t is the 1-based step. */
void moe_adamw_step(float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr,
		    float beta1, float beta2, float eps, float weight_decay, int64_t t);

/* Sum of squares (double accumulation). */
double moe_sumsq(const float *x, size_t n);

/* Loss-free balancing, one MoE layer: the direction of each expert's
 * selection-bias step from the step's counts (+1: used less than the mean,
 * raise; -1: more, lower; 0: exactly the mean), then the step itself:
 * b += dir * u, clamped to [-clamp, clamp] (fp32, as every backend does it). */
void moe_balance_dir(int8_t *dir /* (E) */, const int64_t *counts /* (E) */, int E);
void moe_balance_apply(float *b /* (E) */, const int8_t *dir /* (E) */, int E, float u, float clamp);

/* ---- additions for the MoE graph (lib/model) ------------------------------ */

/* SwiGLU on a fused gate/up row: gu (M, 2I) holds [g | u] per row (the fused
 * gate_up GEMM output); h (M, I) = silu(g) * u.  bwd overwrites dgu. */
void moe_swiglu_gu_fwd(float *h /* (M, I) */, const float *gu /* (M, 2I) */, int M, int I);
void moe_swiglu_gu_bwd(float *dgu /* (M, 2I) */, const float *dh /* (M, I) */,
		       const float *gu /* (M, 2I) */, int M, int I);

/* Inverse of the grouping permutation: inv[perm[j]] = j (NK = N*K). */
void moe_route_inverse(int32_t *inv /* (N*K) */, const int32_t *perm /* (N*K) */, int NK);

/* Dispatch: xg[j] = x[perm[j] / K] (the token of slot perm[j]). */
void moe_gather_rows(float *xg /* (N*K, D) */, const float *x /* (N, D) */,
		     const int32_t *perm /* (N*K) */, int NK, int K, int D);
/* Its backward: dx[perm[j] / K] += dxg[j]  (dx accumulated). */
void moe_scatter_add_rows(float *dx /* (N, D) */, const float *dxg /* (N*K, D) */,
			  const int32_t *perm /* (N*K) */, int NK, int K, int D);

/* Grouped linear over experts: rows [offsets[e], offsets[e+1]) of x use
 * w[e] (Out, In): out[r] = x[r] @ w[e]^T.  M = offsets[E] rows. */
void moe_grouped_linear_fwd(float *out /* (M, Out) */, const float *x /* (M, In) */,
			    const float *w /* (E, Out, In) */, const int32_t *offsets /* (E+1) */,
			    int E, int In, int Out);
/* dx (may be NULL) overwritten; dw (E, Out, In) accumulated. */
void moe_grouped_linear_bwd(float *dx /* (M, In) */, float *dw /* (E, Out, In) */,
			    const float *dout /* (M, Out) */, const float *x /* (M, In) */,
			    const float *w /* (E, Out, In) */, const int32_t *offsets /* (E+1) */,
			    int E, int In, int Out);

/* Combine: out[n] = res[n] + sum_k topk_w[n,k] * yg[inv[n*K+k]] (out
 * overwritten; res (N, D) may be NULL for none, and must not be out). */
void moe_combine_fwd(float *out /* (N, D) */, const float *res, const float *yg /* (N*K, D) */,
		     const float *topk_w /* (N, K) */, const int32_t *inv /* (N*K) */,
		     int N, int K, int D);
/* dyg[inv[n*K+k]] = topk_w[n,k] * dout[n] (overwritten);
 * dtopk_w[n,k] = dot(dout[n], yg[inv[n*K+k]]) (overwritten). */
void moe_combine_bwd(float *dyg /* (N*K, D) */, float *dtopk_w /* (N, K) */,
		     const float *dout /* (N, D) */, const float *yg /* (N*K, D) */,
		     const float *topk_w /* (N, K) */, const int32_t *inv /* (N*K) */,
		     int N, int K, int D);

/* Aux-loss statistics over rows whose input id != pad_id (ids may be NULL:
 * all rows): psum[e] = sum_n probs[n,e]; cnt[e] = number of (row, slot)
 * pairs routed to e (both overwritten). */
void moe_router_stats(float *psum /* (E) */, int32_t *cnt /* (E) */, const float *probs /* (N, E) */,
		      const int32_t *topk_idx /* (N, K) */, const int32_t *ids /* (N) or NULL */,
		      int pad_id, int N, int E, int K);
/* Gradient of an aux loss that is linear in the per-layer probability sums:
 * dprobs[n,e] = g[e] for valid rows (ids[n] != pad_id), 0 otherwise. */
void moe_aux_dprobs(float *dprobs /* (N, E) */, const float *g /* (E) */,
		    const int32_t *ids /* (N) or NULL */, int pad_id, int N, int E);


#endif
