/*
 * CUDA kernels of the moe training backend: extern "C" launchers, one
 * operation per file in kernels/.  Every launcher enqueues work on stream s
 * and returns 0, or a negative MOE_E* code with err filled (a failed launch,
 * an unsupported shape); none synchronises unless it says so.
 *
 * Dtypes: activations are bf16 (moe_bf16, raw 16-bit storage), statistics,
 * router probabilities and gate weights fp32, parameter gradients fp32
 * (accumulated +=).  Shapes and meanings follow lib/model/ops.h, the CPU
 * fp32 reference each kernel is tested against (tests/kernels).
 */
#ifndef MOE_KERNELS_H
#define MOE_KERNELS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include <cuda_runtime_api.h>

#ifdef __cplusplus
extern "C" {
#endif

struct moe_error;
typedef uint16_t bf16_t; /* bfloat16 storage */

/* embedding.cu: out[n] = wte[ids[n]]; dwte[ids[n]] += dout[n] (not pad_id). */
int moe_cuda_embedding_fwd(bf16_t *out /* (N, D) */, const int32_t *ids /* (N) */,
			   const bf16_t *wte /* (V, D) */, int N, int D, cudaStream_t s,
			   struct moe_error *err);
int moe_cuda_embedding_bwd(float *dwte /* (V, D) */, const bf16_t *dout /* (N, D) */,
			   const int32_t *ids, int N, int D, int pad_id, cudaStream_t s,
			   struct moe_error *err);
/* The same without atomics, bit-reproducible: the (id, position) pairs
 * sorted by id (stable radix sort), then the sorted rows added in fixed
 * chunks of 32 in token order, the pieces of an id's run that crosses
 * chunks added in chunk order; scratch of
 * moe_cuda_embedding_bwd_det_scratch(N, D) bytes (ids below 2^24). */
size_t moe_cuda_embedding_bwd_det_scratch(int N, int D);
int moe_cuda_embedding_bwd_det(float *dwte, const bf16_t *dout, const int32_t *ids, int N, int D, int pad_id,
			       void *scratch, cudaStream_t s, struct moe_error *err);
/* The deterministic backward after the sort, on the host (tests without a
 * GPU, and the exact expectation for the kernels): the rows of the sorted
 * ids key (positions pos) added as the kernels' threads add them */
void moe_cuda_embedding_bwd_chunks_host(float *dwte, const bf16_t *dout, const int32_t *key, const int32_t *pos,
					int N, int D, int pad_id);

/* The memory-bound kernels of rmsnorm.cu, qknorm_rope.cu, permute.cu and
 * xent.cu: on != 0 selects their previous versions (same results within the
 * tests' tolerances), kept for same-run comparisons (bench_kernels -m;
 * MOE_CUDA_MEMK=legacy in the environment sets it from the start). */
void moe_cuda_memk_legacy(int on);

/* rmsnorm.cu: fp32 statistics and weights; dx overwritten, dw (may be NULL) +=.
 * The blocks' dw sums are added with fp32 atomics (last bits vary from run
 * to run) unless part is given: then each block stores its row of a
 * (blocks, D) buffer of MOE_CUDA_NORM_PART_BLOCKS * D floats, and
 * moe_cuda_colsum_add adds them into dw in block order (bit-reproducible;
 * one more launch). */
#define MOE_CUDA_NORM_PART_BLOCKS 2048
int moe_cuda_rmsnorm_fwd(bf16_t *out /* (N, D) */, float *rstd /* (N) */, const bf16_t *x,
			 const float *w /* (D) */, int N, int D, float eps, cudaStream_t s,
			 struct moe_error *err);
int moe_cuda_rmsnorm_bwd(bf16_t *dx /* (N, D) */, float *dw /* (D) */, float *part /* or NULL */,
			 const bf16_t *dout, const bf16_t *x, const float *w, const float *rstd, int N, int D,
			 cudaStream_t s, struct moe_error *err);
/* the same with dx += the input gradient (fp32 sum, one rounding) */
int moe_cuda_rmsnorm_bwd_add(bf16_t *dx /* (N, D) */, float *dw /* (D) */, float *part /* or NULL */,
			     const bf16_t *dout, const bf16_t *x, const float *w, const float *rstd, int N, int D,
			     cudaStream_t s, struct moe_error *err);
/* dw[i] += sum of part[b * D + i] over b < nb, in order of b */
int moe_cuda_colsum_add(float *dw, const float *part, int nb, int D, cudaStream_t s, struct moe_error *err);

/* qknorm_rope.cu: RMSNorm over rows of H heads of Dh (fp32 weights and rstd),
 * then rotate-half RoPE with the rope.cu table, in one pass; the backward
 * takes the gradient after RoPE (dx overwritten, dw += (H*Dh)).  Supported
 * when Dh % 16 == 0 and H * Dh <= 8192 (1536 under moe_cuda_memk_legacy);
 * otherwise the backend runs rmsnorm and rope. */
bool moe_cuda_qknorm_rope_supported(int H, int Dh);
int moe_cuda_qknorm_rope_fwd(bf16_t *out, float *rstd, const bf16_t *x, const float *w, const float *cosb,
			     const float *sinb, int B, int T, int H, int Dh, float eps, cudaStream_t s,
			     struct moe_error *err);
/* part: as rmsnorm's (NULL: atomics) */
int moe_cuda_qknorm_rope_bwd(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x,
			     const float *w, const float *rstd, const float *cosb, const float *sinb, int B, int T,
			     int H, int Dh, cudaStream_t s, struct moe_error *err);
/* The same with x (and the backward's dx) at row stride ldx (a multiple of
 * 8, at least H * Dh; out and dout keep H * Dh): q or k inside the q, k, v
 * projections' rows */
int moe_cuda_qknorm_rope_fwd_ld(bf16_t *out, float *rstd, const bf16_t *x, int ldx, const float *w,
				const float *cosb, const float *sinb, int B, int T, int H, int Dh, float eps,
				cudaStream_t s, struct moe_error *err);
/* The same for q and k in one launch (the attention block's two norms: rows
 * ldx apart in both, weights wq and wk); the same bits as two calls */
int moe_cuda_qknorm_rope_fwd2_ld(bf16_t *outq, float *rstdq, const bf16_t *xq, const float *wq, bf16_t *outk,
				 float *rstdk, const bf16_t *xk, const float *wk, int ldx, const float *cosb,
				 const float *sinb, int B, int T, int H, int Dh, float eps, cudaStream_t s,
				 struct moe_error *err);
int moe_cuda_qknorm_rope_bwd_ld(bf16_t *dx, float *dw, float *part, const bf16_t *dout, const bf16_t *x, int ldx,
				const float *w, const float *rstd, const float *cosb, const float *sinb, int B,
				int T, int H, int Dh, cudaStream_t s, struct moe_error *err);

/* The backward with dout in moe_cuda_attention_bwd_acc's fp32 tiles
 * (dqacc: (B H, cdiv(T, 64), 64, Dh), column c of a tile's row r at
 * c ^ 8 (r & 3)), each value rounded to bf16 first: the same bits as
 * converting the tiles to bf16 and running moe_cuda_qknorm_rope_bwd.
 * moe_cuda_qknorm_rope_acc_supported: where it runs (the pair kernels,
 * H * Dh <= 2048, Dh 96 or 128); elsewhere it returns MOE_EUNSUPPORTED.
 * x and dx at row stride ldx as moe_cuda_qknorm_rope_bwd_ld's. */
bool moe_cuda_qknorm_rope_acc_supported(int H, int Dh);
int moe_cuda_qknorm_rope_bwd_acc(bf16_t *dx, float *dw, float *part, const float *dqacc, const bf16_t *x,
				 int ldx, const float *w, const float *rstd, const float *cosb, const float *sinb,
				 int B, int T, int H, int Dh, cudaStream_t s, struct moe_error *err);

/* rope.cu: rotate-half RoPE in place on (B, T, H, Dh); cos/sin table (T, Dh/2)
 * from moe_cuda_rope_table (host, double precision).  inverse: the backward. */
void moe_cuda_rope_table(float *cosb /* (T, Dh/2) */, float *sinb, int T, int Dh, float theta);
int moe_cuda_rope(bf16_t *x, const float *cosb, const float *sinb, int B, int T, int H, int Dh,
		  int inverse, cudaStream_t s, struct moe_error *err);

/* attention_fwd.cu / attention_bwd.cu: causal flash attention, scale 1/sqrt(Dh),
 * on tensor cores for Dh in {16, 32, 64, 96, 128}, through the scalar
 * kernels of attention_small.cu for other Dh <= 256.  Element (b, t, h, d)
 * of q is at q[(b*T + t)*ldq + h*Dh + d] (ld = H*Dh for contiguous tensors).
 * lse (B, H, T) natural log.  bwd: scratch of moe_cuda_attention_bwd_scratch()
 * bytes; dq, dk, dv (strides of q, k, v) overwritten. */
size_t moe_cuda_attention_bwd_scratch(int B, int T, int H, int Dh);
int moe_cuda_attention_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k,
			   const bf16_t *v, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
			   int Dh, cudaStream_t s, struct moe_error *err);
int moe_cuda_attention_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout,
			   const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *out,
			   const float *lse, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
			   int Dh, cudaStream_t s, struct moe_error *err);
/* The same, except that where the variant in use keeps dq as fp32 tiles
 * (fa3f at Dh 96 and 128) it skips their conversion: dq is not written and
 * *dqacc points at the tiles (in the scratch; valid until the scratch is
 * used again) for moe_cuda_qknorm_rope_bwd_acc.  Elsewhere, or with dqacc
 * NULL, dq is written (and *dqacc is NULL). */
int moe_cuda_attention_bwd_acc(bf16_t *dq, bf16_t *dk, bf16_t *dv, void *scratch, const bf16_t *dout,
			       const bf16_t *q, const bf16_t *k, const bf16_t *v, const bf16_t *out,
			       const float *lse, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
			       int Dh, const float **dqacc, cudaStream_t s, struct moe_error *err);
/* Kernel variants for Dh >= 64, process-wide (tests, benchmarks): v selects
 * variant v (1-based; see attention_fwd.cu / attention_bwd.cu), 0 restores
 * the default or the one named by MOE_CUDA_ATTENTION_FWD / _BWD (read once).
 * Returns the name of the variant now in use (the backward's at Dh 64 to
 * 128; below 64 it runs v1), NULL (nothing changed) when v is out of
 * range.  Every variant is deterministic (bit-identical results run to
 * run). */
const char *moe_cuda_attention_fwd_config(int v);
const char *moe_cuda_attention_bwd_config(int v);
/* The name of the variant the forward / backward runs now at head size Dh
 * (where the device has no wgmma, the wgmma variants run v1). */
const char *moe_cuda_attention_fwd_name(int Dh);
const char *moe_cuda_attention_bwd_name(int Dh);
/* 0, or MOE_EINVAL where MOE_CUDA_ATTENTION_FWD / _BWD names no variant */
int moe_cuda_attention_fwd_env_check(struct moe_error *err);
int moe_cuda_attention_bwd_env_check(struct moe_error *err);
/* How many forward launches so far ran another kernel than the variant in
 * use (fa3pk128, fa3 or fa3k128 where the driver offers no tensor maps or a
 * pointer is not 16-byte aligned: fa3k128, then wg1 instead; no wgmma: v1;
 * a launch that falls back twice counts twice). */
int moe_cuda_attention_fwd_fallbacks(void);
/* attention_fa3p.cu: the persistent, ping-pong forward (variant fa3pk128 of
 * attention_fwd.cu) at Dh 64, 96, 128, the arguments of
 * moe_cuda_attention_fwd; returns 1 (nothing launched) where it cannot run
 * (no wgmma, no tensor maps, q, k or v not 16-byte aligned), else 0 or a
 * negative MOE_E* code.  One launch at a time a device (its work counter
 * is per device).  _grid: at most n blocks (0: one an SM), so that tests
 * run many items a block on small shapes. */
int moe_cuda_attention_fwd_fa3p(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v, int ldq,
				int ldk, int ldv, int ldo, int B, int T, int H, int Dh, cudaStream_t s,
				struct moe_error *err);
void moe_cuda_attention_fa3p_grid(int n);

/* attention_small.cu (called by the two above for other head sizes). */
int moe_cuda_attention_small_fwd(bf16_t *out, float *lse, const bf16_t *q, const bf16_t *k, const bf16_t *v,
				 int ldq, int ldk, int ldv, int ldo, int B, int T, int H, int Dh, cudaStream_t s,
				 struct moe_error *err);
int moe_cuda_attention_small_bwd(bf16_t *dq, bf16_t *dk, bf16_t *dv, const float *delta, float *dk32,
				 float *dv32, const bf16_t *dout, const bf16_t *q, const bf16_t *k,
				 const bf16_t *v, const float *lse, int ldq, int ldk, int ldv, int ldo, int B,
				 int T, int H, int Dh, cudaStream_t s, struct moe_error *err);

/* permute.cu: nb blocks of rows x n bf16, block b from src + b src_stride
 * (rows lds apart) to dst + b dst_stride (rows ldd apart) */
int moe_cuda_copy_rows(bf16_t *dst, int ldd, size_t dst_stride, const bf16_t *src, int lds, size_t src_stride,
		       int rows, int n, int nb, cudaStream_t s, struct moe_error *err);

/* swiglu.cu: h13 (M, 2I) = [g | u] per row; act (M, I) = silu(g) * u; I % 8 == 0. */
int moe_cuda_swiglu_fwd(bf16_t *act, const bf16_t *h13, size_t M, int I, cudaStream_t s,
			struct moe_error *err);
/* act (may be NULL): also the forward's output, bit-identical to swiglu_fwd's */
int moe_cuda_swiglu_bwd(bf16_t *dh13, bf16_t *act, const bf16_t *dact, const bf16_t *h13, size_t M, int I,
			cudaStream_t s, struct moe_error *err);
/* The same with h13's and dh13's rows in groups of G, ldg apart: row m at
 * (m / G) ldg + (m % G) 2I (ldg a multiple of 8; the pointers 16-byte
 * aligned); act and dact packed */
int moe_cuda_swiglu_fwd_ld(bf16_t *act, const bf16_t *h13, size_t M, int I, int G, int ldg, cudaStream_t s,
			   struct moe_error *err);
int moe_cuda_swiglu_bwd_ld(bf16_t *dh13, bf16_t *act, const bf16_t *dact, const bf16_t *h13, size_t M, int I, int G,
			   int ldg, cudaStream_t s, struct moe_error *err);
/* The routed experts' SwiGLU backward with their gate weights (M rows in
 * expert order, perm of route_group; wg (M): the weights in that order,
 * w_j = topk_w[perm[j]], e.g. from moe_cuda_gather_inv_w);
 * dh13 from dh = w_j du (du (M, I): the down projection's input gradient of
 * the unweighted output gradient); hw (M, I) = bf16(w_j h), h recomputed as
 * moe_cuda_swiglu_fwd computes it; dtopk_w[perm[j]] = du_j . h_j (bf16 h,
 * fp32 sum), the gate weight's gradient. */
int moe_cuda_swiglu_bwd_rows(bf16_t *dh13, bf16_t *hw, float *dtopk_w, const bf16_t *du, const bf16_t *h13,
			     const float *wg, const int32_t *perm, int M, int I, cudaStream_t s,
			     struct moe_error *err);
/* 1: moe_cuda_swiglu_bwd_rows in its warp-a-row layout at every width
 * (tests compare the two layouts' bits); 0: 16 lanes a row where I <= 2048
 * (the default) */
void moe_cuda_swiglu_rows_layout(int warp_rows);

/* router.cu: softmax over E (fp32), top K of logits + bias (bias may be NULL),
 * chosen experts listed by probability descending (ties: lower id), weights
 * renormalised when norm_topk.  E <= 256, K <= 32. */
int moe_cuda_router_fwd(int32_t *topk_idx /* (N, K) */, float *topk_w /* (N, K) */,
			float *probs /* (N, E) */, const bf16_t *logits /* (N, E) */,
			const float *bias /* (E) */, int N, int E, int K, int norm_topk,
			cudaStream_t s, struct moe_error *err);
/* dlogits overwritten; dtopk_w and dprobs (N, E) may be NULL. */
int moe_cuda_router_bwd(bf16_t *dlogits, const float *dtopk_w, const float *dprobs,
			const float *probs, const int32_t *topk_idx, const float *topk_w, int N, int E,
			int K, int norm_topk, cudaStream_t s, struct moe_error *err);
/* z-loss: rowz[n] = logsumexp(logits[n])^2; dlogits (may be NULL) +=
 * scale * 2 * lse / N * softmax. */
int moe_cuda_zloss(bf16_t *dlogits, float *rowz /* (N) */, const bf16_t *logits, int N, int E,
		   float scale, cudaStream_t s, struct moe_error *err);
/* The same summed in one launch: acc[0] = sum over rows of lse^2 (double,
 * fixed order: bit-reproducible), acc[1] = N, both stored (not added);
 * scratch of moe_cuda_zloss_scratch() bytes. */
size_t moe_cuda_zloss_scratch(int N, int E);
int moe_cuda_zloss_sum(double *acc /* (2) */, bf16_t *dlogits, const bf16_t *logits, int N, int E, float scale,
		       void *scratch, cudaStream_t s, struct moe_error *err);
/* The same three with the logits (dlogits) rows ld elements apart (ld >= E;
 * the router's columns of a wider linear's output: the current kernels
 * only); router_fwd_ld with zacc also stores zacc[0] = the sum over rows of
 * logsumexp^2 (the z-loss's, in a fixed order) and zacc[1] = N, through
 * zscratch of moe_cuda_router_z_scratch() bytes (then no moe_cuda_zloss_sum
 * is needed for the value). */
size_t moe_cuda_router_z_scratch(int N, int E, int K);
int moe_cuda_router_fwd_ld(int32_t *topk_idx, float *topk_w, float *probs, const bf16_t *logits, int ld,
			   const float *bias, int N, int E, int K, int norm_topk, double *zacc /* (2) */,
			   void *zscratch, cudaStream_t s, struct moe_error *err);
int moe_cuda_router_bwd_ld(bf16_t *dlogits, int ld, const float *dtopk_w, const float *dprobs,
			   const float *probs, const int32_t *topk_idx, const float *topk_w, int N, int E,
			   int K, int norm_topk, cudaStream_t s, struct moe_error *err);
int moe_cuda_zloss_ld(bf16_t *dlogits, float *rowz, const bf16_t *logits, int ld, int N, int E, float scale,
		      cudaStream_t s, struct moe_error *err);
/* 1: router.cu's and route_group.cu's previous kernels (comparisons; also
 * MOE_CUDA_ROUTE=legacy in the environment); 0: the current ones. */
void moe_cuda_route_legacy(int on);
int moe_cuda_route_legacy_on(void);
/* psum[e] = sum of probs over rows with ids[n] != pad_id (ids may be NULL),
 * cnt[e] = their (row, slot) pairs routed to e; both overwritten; scratch of
 * moe_cuda_router_stats_scratch() bytes. */
size_t moe_cuda_router_stats_scratch(int N, int E);
int moe_cuda_router_stats(float *psum, int32_t *cnt, const float *probs, const int32_t *topk_idx,
			  const int32_t *ids, int pad_id, int N, int E, int K, void *scratch,
			  cudaStream_t s, struct moe_error *err);
/* dprobs[n, e] = g[e] (host array, E <= 256) for valid rows, 0 otherwise. */
int moe_cuda_aux_dprobs(float *dprobs, const float *g_host, const int32_t *ids, int pad_id, int N,
			int E, cudaStream_t s, struct moe_error *err);

/* route_group.cu: counts, offsets (E+1), stable perm and its inverse, all on
 * the device; scratch holds moe_cuda_route_group_scratch() bytes. */
size_t moe_cuda_route_group_scratch(int N, int K, int E);
int moe_cuda_route_group(int32_t *counts, int32_t *offsets, int32_t *perm, int32_t *inv,
			 void *scratch, const int32_t *topk_idx, int N, int K, int E, cudaStream_t s,
			 struct moe_error *err);
/* inv[perm[j]] = j */
int moe_cuda_route_inverse(int32_t *inv, const int32_t *perm, int NK, cudaStream_t s,
			   struct moe_error *err);

/* permute.cu */
/* xg[j] = x[perm[j] / K]; D % 8 == 0. */
int moe_cuda_gather(bf16_t *xg /* (N*K, D) */, const bf16_t *x /* (N, D) */, const int32_t *perm,
		    int NK, int K, int D, cudaStream_t s, struct moe_error *err);
/* The same through the inverse permutation, in token order (each row of x
 * read once): xg[inv[n*K+k]] = x[n]; D % 8 == 0. */
int moe_cuda_gather_inv(bf16_t *xg, const bf16_t *x, const int32_t *inv, int N, int K, int D, cudaStream_t s,
			struct moe_error *err);
/* ... and the gate weights w (N*K) in expert order: wg[inv[n*K+k]] = w[n*K+k] */
int moe_cuda_gather_inv_w(bf16_t *xg, const bf16_t *x, const int32_t *inv, int N, int K, int D, const float *w,
			  float *wg, cudaStream_t s, struct moe_error *err);
/* dx[n] += sum_k dxg[inv[n*K+k]] (the backward of gather, through inv); D % 8 == 0. */
int moe_cuda_scatter_add(bf16_t *dx /* (N, D) */, const bf16_t *dxg, const int32_t *inv, int N,
			 int K, int D, cudaStream_t s, struct moe_error *err);
/* out[n] = res[n] + sum_k w[n,k] * yg[inv[n*K+k]] (overwritten; res may be
 * NULL, or out itself; D % 8 == 0), fp32 sum rounded once. */
int moe_cuda_combine_fwd(bf16_t *out, const bf16_t *res, const bf16_t *yg, const float *w, const int32_t *inv,
			 int N, int K, int D, cudaStream_t s, struct moe_error *err);
/* dyg[inv[n*K+k]] = w[n,k] * dout[n]; dw[n,k] = <dout[n], yg[inv[n*K+k]]>; D % 8 == 0. */
int moe_cuda_combine_bwd(bf16_t *dyg, float *dw, const bf16_t *dout, const bf16_t *yg,
			 const float *w, const int32_t *inv, int N, int K, int D, cudaStream_t s,
			 struct moe_error *err);

/* xent.cu: per-row loss (0 for ignored rows) and dlogits = scale * (softmax -
 * onehot) (may be NULL; may equal logits); moe_cuda_sum_loss stores acc[0] =
 * sum of loss, acc[1] = number of valid rows (one block, fixed order). */
int moe_cuda_xent(bf16_t *dlogits, float *loss /* (N) */, const bf16_t *logits /* (N, V) */,
		  const int32_t *targets, int N, int V, int ignore_id, float scale, cudaStream_t s,
		  struct moe_error *err);
int moe_cuda_sum_loss(double *acc /* (2) */, const float *loss, const int32_t *targets, int N,
		      int ignore_id, cudaStream_t s, struct moe_error *err);

/* adamw.cu: AdamW as torch (p *= 1 - lr*wd; p -= lr/bc1 * m / (sqrt(v)/sqrt(bc2) + eps))
 * on the gradient g * gscale (the clip factor), p16 (may be NULL) receives
 * bf16(p) rounded to nearest with ties away from zero (moe_cuda_masters_copy); sum of squares into *acc (double, fixed order through per-block
 * partials, scratch of moe_cuda_sumsq_scratch() bytes); bf16 copies. */
int moe_cuda_adamw(float *p, bf16_t *p16, const float *g, float gscale, float *m, float *v, size_t n,
		   float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t, cudaStream_t s,
		   struct moe_error *err);
/* AdamW on packed masters (hi: the bf16 compute copy, rounded to nearest with
 * ties away from zero as moe_cuda_adamw writes it; lo: the low 16 bits;
 * together the fp32 master exactly): the same bits as moe_cuda_adamw */
int moe_cuda_adamw_packed(bf16_t *hi, uint16_t *lo, const float *g, float gscale, float *m, float *v, size_t n,
			  float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t, cudaStream_t s,
			  struct moe_error *err);
/* fp32 masters to the packed pair and back (exact; a NaN becomes a quiet NaN) */
int moe_cuda_masters_pack(bf16_t *hi, uint16_t *lo, const float *src, size_t n, cudaStream_t s, struct moe_error *err);
int moe_cuda_masters_unpack(float *dst, const bf16_t *hi, const uint16_t *lo, size_t n, cudaStream_t s,
			    struct moe_error *err);
size_t moe_cuda_sumsq_scratch(size_t n);
int moe_cuda_sumsq(double *acc, void *scratch, const float *x, size_t n, cudaStream_t s,
		   struct moe_error *err);
/* The same sum in parts: moe_cuda_sumsq_partials writes x's per-block
 * partial sums (moe_cuda_sumsq_scratch(n) / 8 doubles, n > 0, in a fixed
 * order) to part; moe_cuda_sumsq_add_segs adds the sum of the segments'
 * doubles (partials, or grouped_tma.cu's per-tile sums of squares) to *acc
 * in one fixed order (one block), or stores it there with store set (the
 * first batch of a sum: no clearing of *acc before). */
#define MOE_CUDA_SSQ_SEGS 16
struct moe_cuda_ssq_segs {
	const double *p[MOE_CUDA_SSQ_SEGS];
	size_t n[MOE_CUDA_SSQ_SEGS];
	int count, store;
};
int moe_cuda_sumsq_partials(double *part, const float *x, size_t n, cudaStream_t s, struct moe_error *err);
int moe_cuda_sumsq_add_segs(double *acc, const struct moe_cuda_ssq_segs *segs, cudaStream_t s,
			    struct moe_error *err);
/* Several such sums in two launches (the clip norms of every span of a
 * step at once; each launch of the one-by-one path costs a few
 * microseconds the GPU mostly sits idle in): regions r < nr of fp32
 * elements rx[r][0, rn[r]) whose squares are summed in blocks (blk[r]
 * the first of region r's moe_cuda_sumsq_blocks(rn[r]) partials, blk[nr]
 * their total, written to part), then sum k < nsum stored to acc[k]: the
 * items first[k] .. first[k + 1] - 1 in order, item i region ireg[i]'s
 * partials or, where ireg[i] < 0, the doubles ip[i][0, in[i]).  A sum
 * whose items are one region's partials has the bits of moe_cuda_sumsq;
 * one of up to 16 items those of moe_cuda_sumsq_add_segs storing. */
#define MOE_CUDA_SQ_REGIONS 128
#define MOE_CUDA_SQ_ITEMS 384
#define MOE_CUDA_SQ_SUMS 64
struct moe_cuda_sq_batch {
	const float *rx[MOE_CUDA_SQ_REGIONS];
	size_t rn[MOE_CUDA_SQ_REGIONS];
	unsigned blk[MOE_CUDA_SQ_REGIONS + 1];
	const double *ip[MOE_CUDA_SQ_ITEMS];
	size_t in[MOE_CUDA_SQ_ITEMS];
	int ireg[MOE_CUDA_SQ_ITEMS];
	double *acc[MOE_CUDA_SQ_SUMS];
	int first[MOE_CUDA_SQ_SUMS + 1];
	int nr, nitems, nsum;
};
unsigned moe_cuda_sumsq_blocks(size_t n);
int moe_cuda_sumsq_batch(double *part, const struct moe_cuda_sq_batch *q, cudaStream_t s,
			 struct moe_error *err);
/* fp32 masters to their bf16 compute copy (rounded to nearest, ties away
 * from zero, as AdamW writes it and packed masters hold it) */
int moe_cuda_masters_copy(bf16_t *dst, const float *src, size_t n, cudaStream_t s, struct moe_error *err);
int moe_cuda_to_f32(float *dst, const bf16_t *src, size_t n, cudaStream_t s, struct moe_error *err);
/* y += a x (fp32); x *= a (bf16) */
int moe_cuda_axpy(float *y, const float *x, size_t n, float a, cudaStream_t s, struct moe_error *err);
int moe_cuda_scale_bf16(bf16_t *x, size_t n, float a, cudaStream_t s, struct moe_error *err);

/* balance.cu: one layer's loss-free-balancing step on the device (as
 * moe_balance_apply: b += dir * u clamped to +-clamp), b16 (may be NULL)
 * receives bf16(b); dir is host memory, passed in the launch (E at most
 * MOE_CUDA_BALANCE_MAX_E). */
#define MOE_CUDA_BALANCE_MAX_E 2048
int moe_cuda_balance_bias(float *b, bf16_t *b16, const int8_t *dir, int E, float u, float clamp,
			  cudaStream_t s, struct moe_error *err);

/* gemm.cu: row-major bf16 GEMMs on tensor cores with fp32 accumulation.
 * C (M, N) = alpha * op(A) op(B) + beta * C, op(A) (M, K) (A stored (K, M)
 * when ta), op(B) (K, N) (B stored (N, K) when tb); C bf16 or fp32 (c_f32).
 * Through cuBLASLt: a shape's first call runs its heuristic's first
 * candidate; at its second the candidates (at most 8) are run on the call's
 * operands into scratch, those whose output has the first candidate's bits
 * are timed, and the fastest is kept for the shape (the result never
 * depends on the timing: always the first candidate's bits).  At most 64
 * plans; the least called makes room.  MOE_CUDA_GEMM_TUNE=0: cublasGemmEx's
 * own choice instead (and the first candidate for moe_cuda_gemm_res). */
struct moe_cuda_blas;
struct moe_cuda_blas *moe_cuda_blas_new(cudaStream_t s, struct moe_error *err);
void moe_cuda_blas_free(struct moe_cuda_blas *b);
int moe_cuda_gemm(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A,
		  int lda, const bf16_t *B, int ldb, void *C, int ldc, int c_f32, float alpha,
		  float beta, struct moe_error *err);
/* D (M, N) = R (M, N) + A (M, K) B^T, B stored (N, K), bf16, D != R
 * (cuBLASLt with separate C and D: a residual add without copying R to D
 * first), through the plans above. */
int moe_cuda_gemm_res(struct moe_cuda_blas *b, int M, int N, int K, const bf16_t *A, int lda,
		      const bf16_t *B, int ldb, const bf16_t *R, bf16_t *D, int ldc, struct moe_error *err);
/* The plans so far (shape, cuBLASLt's candidates, how many gave the first
 * candidate's bits, the one kept and its time against the first's), and
 * the most scratch device memory a tuning held at once (bytes). */
void moe_cuda_gemm_report(struct moe_cuda_blas *b, FILE *f);
size_t moe_cuda_gemm_tune_bytes(struct moe_cuda_blas *b);
/* From now on: 1 tuned plans (the default), 0 cublasGemmEx, 2 cuBLASLt's
 * first candidate, never tuned (tests: the tuned choice must give its bits). */
void moe_cuda_gemm_set_tune(struct moe_cuda_blas *b, int mode);
/* plans whose candidates were timed */
int moe_cuda_gemm_timed(struct moe_cuda_blas *b);
/* Benchmarks: every cuBLASLt candidate for moe_cuda_gemm's operation
 * (alpha 1), each run once and then timed (median of 5) into C itself,
 * whatever its bits; the first candidate's ms, the best ms and the number
 * of candidates. */
int moe_cuda_gemm_survey(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A, int lda,
			 const bf16_t *B, int ldb, void *C, int ldc, int c_f32, float beta, float *ms_first,
			 float *ms_best, int *n_algos, struct moe_error *err);
/* batch GEMMs of one shape in one cuBLAS call, operand b at A + b * sA,
 * B + b * sB, C + b * sC (elements; a stride 0 shares the operand) */
int moe_cuda_gemm_batched(struct moe_cuda_blas *b, int ta, int tb, int M, int N, int K, const bf16_t *A,
			  int lda, long long sA, const bf16_t *B, int ldb, long long sB, void *C, int ldc,
			  long long sC, int c_f32, float alpha, float beta, int batch, struct moe_error *err);

/* grouped_gemm.cu: expert GEMMs driven by device offsets (E+1), no host
 * synchronisation.  Rows [offsets[e], offsets[e+1]) of x use w[e]:
 *   fwd:   out (M, Out) bf16 = x (M, In) @ w[e]^T,  w (E, Out, In) bf16
 *   dgrad: dx (M, In) bf16   = dout (M, Out) @ w[e]
 *   wgrad: dw[e] (Out, In) fp32 += dout[rows e]^T @ x[rows e]
 * max_rows bounds offsets[E] (sizes the grid); In, Out multiples of 8. */
int moe_cuda_grouped_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
			 int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
			   int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_wgrad(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
			   int E, int In, int Out, cudaStream_t s, struct moe_error *err);

/* grouped_wgmma.cu: the three grouped GEMMs above, same arguments and
 * contracts, on Hopper's warpgroup MMA (wgmma, sm_90a): MOE_EUNSUPPORTED on
 * any other device.  In, Out multiples of 8. */
int moe_cuda_grouped_wgmma_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
			       int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_wgmma_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
				 int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_wgmma_wgrad(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets, int E,
				 int In, int Out, cudaStream_t s, struct moe_error *err);
/* the weight gradient stored (store: no read of dw; experts without rows get
 * zeros: gradients by overwrite) or added (store false: as above) */
int moe_cuda_grouped_wgmma_wgrad_store(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
				       int E, int In, int Out, bool store, cudaStream_t s, struct moe_error *err);
/* Whether the current device runs them (sm_90). */
bool moe_cuda_grouped_wgmma_supported(void);

/* grouped_tma.cu: the forward, input gradient and weight gradient (stored
 * or added) of grouped_wgmma.cu, same arguments and contracts, through TMA
 * loads and stores, a warp-specialised pipeline and a persistent grid
 * (sm_90a).  Where the tensor maps cannot be made (pointers not 16-byte
 * aligned, no driver entry point) or E is too large for its shared-memory
 * tables (E > 127), they run grouped_wgmma.cu's kernels. */
int moe_cuda_grouped_tma_fwd(bf16_t *out, const bf16_t *x, const bf16_t *w, const int32_t *offsets,
			     int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_tma_dgrad(bf16_t *dx, const bf16_t *dout, const bf16_t *w, const int32_t *offsets,
			       int max_rows, int E, int In, int Out, cudaStream_t s, struct moe_error *err);
int moe_cuda_grouped_tma_wgrad_store(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
				     int E, int In, int Out, bool store, cudaStream_t s, struct moe_error *err);
/* The weight gradient stored (as moe_cuda_grouped_tma_wgrad_store with
 * store) and, in each tile's epilogue, the sum of squares of the fp32
 * values it stores into its own slots of ssq (fp32 over 16 values a
 * thread, then double: relative error <= 16 * 2^-24); *ssq_n: the slots
 * written, whose sum (moe_cuda_sumsq_add_segs) is the sum of squares of
 * dw, or 0 where the wgmma kernel stored dw instead.  ssq holds
 * moe_cuda_grouped_tma_ssq_cap(E, In, Out) doubles. */
size_t moe_cuda_grouped_tma_ssq_cap(int E, int In, int Out);
int moe_cuda_grouped_tma_wgrad_ssq(float *dw, const bf16_t *dout, const bf16_t *x, const int32_t *offsets,
				   int E, int In, int Out, double *ssq, size_t *ssq_n, cudaStream_t s,
				   struct moe_error *err);
/* Whether the current device and driver run them (sm_90, tensor maps). */
bool moe_cuda_grouped_tma_supported(void);
/* Tile configuration and grid, process-wide (tests, benchmarks): cfg 1
 * (128 x 256, 4 stages), 3 (256 x 128, 4 stages), anything else the
 * default (1 or 3 by the width, see grouped_tma.cu); grid > 0 caps the
 * persistent grid (0: one block per multiprocessor).
 * Returns how many launches so far could not use the TMA kernels (fell back
 * to grouped_wgmma.cu's) though the device supports them. */
int moe_cuda_grouped_tma_config(int cfg, int grid);

/* Tile configuration of the three, process-wide (tests, benchmarks): 1
 * (128 x 128, 6 stages), 2 (128 x 256, 4 stages), 3 and 4 (128 x 128, 3
 * stages, two blocks per multiprocessor; 3 waits for each k-slice's MMAs, 4
 * keeps one group in flight); 0 restores the default, 3. */
void moe_cuda_grouped_wgmma_config(int cfg);

/* backend_cuda.cu (lib/model's backend table; see model.h for
 * moe_backend_cuda).  With MOE_CUDA_PROFILE=1 each op is timed with events;
 * the report prints per-op totals to fp (NULL: none; reset: start over).  Peak bytes of
 * device memory the backend allocated. */
struct moe_backend;
int moe_cuda_packed_ranges(const struct moe_backend *be); /* packed master ranges (tests) */
/* bytes of the masters' storage returned to the device: the unused upper
 * halves of packed ranges, in whole chunks of mapped memory (tests) */
size_t moe_cuda_masters_returned(const struct moe_backend *be);
bool moe_cuda_opt_stream(const struct moe_backend *be);   /* AdamW on the optimizer stream (tests) */
void moe_cuda_profile_report(struct moe_backend *be, FILE *fp, bool reset);
size_t moe_cuda_peak_bytes(struct moe_backend *be);
/* moe_cuda_gemm_report of the backend's cuBLAS(Lt) handle */
void moe_cuda_gemm_plans(struct moe_backend *be, FILE *fp);
/* The clip norms' sums of squares (be->sumsq) so far: gradient floats whose
 * sum came from the weight-gradient epilogues' per-tile partials
 * (MOE_CUDA_SUMSQ_EPI, default 1) and floats read from memory. */
void moe_cuda_sumsq_counts(struct moe_backend *be, size_t *from_epilogue, size_t *read);
/* How many attention backwards so far handed fa3f's fp32 dQ tiles straight
 * to the query's QK-norm backward (attention_qknorm_bwd; MOE_CUDA_DQ_FUSE=0:
 * none, dq converted first). */
size_t moe_cuda_dq_tile_reads(struct moe_backend *be);

#ifdef __cplusplus
}
#endif

#ifdef __CUDACC__
/* SwiGLU's float arithmetic on the widened bf16 inputs g, u (and d = dh),
 * shared by swiglu.cu and the fused forward epilogue of grouped_wgmma.cu so
 * that both round to the same bf16 results.  h = (g sg) u with sg = 1 / (1 +
 * e^-g), one reciprocal and no division (until session 12, g / (1 + e^-g)
 * u: a second, dearer IEEE division in the backward). */
static __device__ __forceinline__ float moe_swiglu_h(float g, float u)
{
	float sg = 1.f / (1.f + __expf(-g));
	return g * sg * u;
}
static __device__ __forceinline__ void moe_swiglu_grads(float g, float u, float d, float *dg, float *du, float *h)
{
	float e = __expf(-g);
	float sg = 1.f / (1.f + e);
	float silu = g * sg;
	*du = d * silu;
	*dg = d * u * sg * (1.f + g * (1.f - sg));
	*h = silu * u;
}
#endif

#endif
