/* Pieces shared by the flash-attention forward and backward kernels
 * (FlashAttention-2 style): 64-row tiles of bf16 q/k/v/dO in shared memory
 * filled by cp.async, ldmatrix fragments, mma.sync m16n8k16 bf16 products
 * with fp32 accumulators kept in registers; score fragments are reused as
 * the A operand of the next product without leaving registers.
 * Layout: element (b, t, h, d) of q is at q[(b*T + t)*ld + h*DH + d]. */
#ifndef MOE_ATTENTION_COMMON_CUH
#define MOE_ATTENTION_COMMON_CUH

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "cuda_common.h"

#define ATT_BR 64     /* rows per tile of the original (64-row, 4-warp) variants */
#define ATT_WARPS 4   /* 16 rows per warp */
#define ATT_PAD 8     /* bf16 row padding: conflict-free ldmatrix */
#define LOG2E 1.4426950408889634f

/* A kernel variant (1-based into names): the one a test or benchmark
 * forced, else the one the environment variable env names (read once),
 * else dflt. */
struct att_choice {
	const char *env;
	const char *const *names;
	int n;
	int forced;   /* 0: none */
	int from_env; /* -1: not read yet; 0: none */
};

static inline int att_choose(struct att_choice *ch, int dflt)
{
	if (ch->forced)
		return ch->forced;
	if (ch->from_env < 0) {
		const char *e = getenv(ch->env);
		ch->from_env = 0;
		for (int i = 0; e && i < ch->n; i++)
			if (strcmp(e, ch->names[i]) == 0)
				ch->from_env = i + 1;
	}
	return ch->from_env ? ch->from_env : dflt;
}

/* 0 when the environment variable names one of the variants or is unset
 * or empty, else an error naming the variable, its value and the names
 * (an old script's removed variant must not measure the default). */
static inline int att_env_check(const struct att_choice *ch, struct moe_error *err)
{
	const char *e = getenv(ch->env);
	if (!e || !*e)
		return 0;
	for (int i = 0; i < ch->n; i++)
		if (strcmp(e, ch->names[i]) == 0)
			return 0;
	char list[160];
	size_t o = 0;
	for (int i = 0; i < ch->n; i++) {
		int w = snprintf(list + o, sizeof list - o, "%s%s", i ? ", " : "", ch->names[i]);
		if (w > 0 && (size_t)w < sizeof list - o)
			o += (size_t)w;
	}
	return moe_error_set(err, MOE_EINVAL, "%s='%s': not an attention variant here (expected one of %s)",
			     ch->env, e, list);
}

/* Copy rows [row0, row0+ROWS) of one (b, h) slice into dst (ROWS, DH+PAD)
 * with cp.async by NT threads; rows at or past T are zero-filled. */
template <int DH, int ROWS = ATT_BR, int NT = ATT_WARPS * 32>
static __device__ __forceinline__ void att_load_tile(bf16 *dst, const bf16 *src, int ld, int row0, int T)
{
	constexpr int VPR = DH / 8; /* 16-byte vectors per row */
	for (int i = threadIdx.x; i < ROWS * VPR; i += NT) {
		int r = i / VPR, c = (i % VPR) * 8;
		bool ok = row0 + r < T;
		const bf16 *g = ok ? src + (size_t)(row0 + r) * ld + c : src;
		unsigned s = (unsigned)__cvta_generic_to_shared(dst + r * (DH + ATT_PAD) + c);
		asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(s), "l"(g), "r"(ok ? 16 : 0));
	}
}

static __device__ __forceinline__ void att_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void att_wait()
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

static __device__ __forceinline__ void ldsm_x4(unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3,
					       const bf16 *p)
{
	unsigned s = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
		     : "r"(s));
}

static __device__ __forceinline__ void ldsm_x4_t(unsigned &r0, unsigned &r1, unsigned &r2, unsigned &r3,
						 const bf16 *p)
{
	unsigned s = (unsigned)__cvta_generic_to_shared(p);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(r0), "=r"(r1), "=r"(r2), "=r"(r3)
		     : "r"(s));
}

/* c (16x8 fp32) += a (16x16 bf16, row) * b (16x8 bf16, col) */
static __device__ __forceinline__ void mma16816(float *c, const unsigned *a, unsigned b0, unsigned b1)
{
	asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, "
		     "{%4, %5, %6, %7}, {%8, %9}, {%0, %1, %2, %3};\n"
		     : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

static __device__ __forceinline__ unsigned pack_bf16(float lo, float hi)
{
	__nv_bfloat162 v = __floats2bfloat162_rn(lo, hi);
	return *(unsigned *)&v;
}

/* A fragment (16 x 16) at rows r0.., cols c0.. of a row-major smem tile. */
template <int LD>
static __device__ __forceinline__ void att_frag_a(unsigned *a, const bf16 *tile, int r0, int c0)
{
	int lane = threadIdx.x % 32;
	const bf16 *p = tile + (r0 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + c0 + (lane / 16) * 8;
	ldsm_x4(a[0], a[1], a[2], a[3], p);
}

/* S (16 x 8*NJ) = A (16 x DH, fragments a[DH/16]) @ B^T where B is a
 * (8*NJ, DH) row-major smem tile: s[j][4] is the accumulator of columns
 * 8j..8j+7. */
template <int DH, int NJ = 8>
static __device__ __forceinline__ void att_mm_abt(float (*s)[4], const unsigned (*a)[4], const bf16 *Bt)
{
	constexpr int LD = DH + ATT_PAD;
	int lane = threadIdx.x % 32;
#pragma unroll
	for (int j = 0; j < NJ; j++)
		s[j][0] = s[j][1] = s[j][2] = s[j][3] = 0.f;
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++)
#pragma unroll
		for (int j = 0; j < NJ; j += 2) {
			unsigned b0, b1, b2, b3;
			const bf16 *p = Bt + (8 * j + (lane % 8) + (lane / 16) * 8) * LD + kk * 16 + ((lane / 8) % 2) * 8;
			ldsm_x4(b0, b1, b2, b3, p);
			mma16816(s[j], a[kk], b0, b1);
			mma16816(s[j + 1], a[kk], b2, b3);
		}
}

/* acc (16 x DH, acc[DH/8][4]) += P (16 x 16*KS, as A fragments from the
 * score accumulators p[2*KS][4]) @ V where V is a (16*KS, DH) row-major smem
 * tile. */
template <int DH, int KS = 4>
static __device__ __forceinline__ void att_mm_pv(float (*acc)[4], const float (*p)[4], const bf16 *V)
{
	constexpr int LD = DH + ATT_PAD;
	int lane = threadIdx.x % 32;
#pragma unroll
	for (int ks = 0; ks < KS; ks++) {
		unsigned a[4];
		a[0] = pack_bf16(p[2 * ks][0], p[2 * ks][1]);
		a[1] = pack_bf16(p[2 * ks][2], p[2 * ks][3]);
		a[2] = pack_bf16(p[2 * ks + 1][0], p[2 * ks + 1][1]);
		a[3] = pack_bf16(p[2 * ks + 1][2], p[2 * ks + 1][3]);
#pragma unroll
		for (int d = 0; d < DH / 8; d += 2) {
			unsigned b0, b1, b2, b3;
			const bf16 *q = V + (ks * 16 + (lane % 8) + ((lane / 8) % 2) * 8) * LD + d * 8 + (lane / 16) * 8;
			ldsm_x4_t(b0, b1, b2, b3, q);
			mma16816(acc[d], a, b0, b1);
			mma16816(acc[d + 1], a, b2, b3);
		}
	}
}

/* attention_wgmma.cu: the forward on wgmma for Dh 64, 96, 128 (ob: one
 * barrier a key tile); returns 1 (nothing launched) when the device or head
 * size cannot run it, else 0 or a negative MOE_E* code. */
int moe_att_fwd_wgmma(bf16 *out, float *lse, const bf16 *q, const bf16 *k, const bf16 *v, int ldq, int ldk, int ldv,
		      int ldo, int B, int T, int H, int Dh, int ob, cudaStream_t s, struct moe_error *err);
/* ... and the backward's dK/dV and dQ kernels in one launch (delta computed
 * by the caller), the same contract; with grouped their grid in groups of 8
 * heads. */
int moe_att_bwd_wgmma(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		      const float *lse, const float *delta, int grouped, int ldq, int ldk, int ldv, int ldo, int B, int T,
		      int H, int Dh, cudaStream_t s, struct moe_error *err);
/* attention_fa3.cu: the same two kernels warp-specialised (a TMA producer
 * warp, a ring of 4 stages on mbarriers, two consumer warpgroups), Dh 64,
 * 96, 128; the same contract (1: cannot run here). */
int moe_att_bwd_fa3(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		    const float *lse, const float *delta, int ldq, int ldk, int ldv, int ldo, int B, int T, int H,
		    int Dh, cudaStream_t s, struct moe_error *err);
/* ... and the one-kernel backward (fa3f) at Dh 96 and 128: dqacc (fp32,
 * B*H*cdiv(T, 64)*64*Dh) and cnt (B*H*cdiv(T, 64) ints, then the blocks'
 * ticket, all zero), dQ summed in a fixed order (deterministic); keep: no
 * conversion kernel, dq left unwritten and its fp32 values in dqacc for the
 * caller (moe_cuda_attention_bwd_acc).  The same contract (1: cannot run
 * here). */
int moe_att_bwd_fa3f(bf16 *dq, bf16 *dk, bf16 *dv, const bf16 *dout, const bf16 *q, const bf16 *k, const bf16 *v,
		     const float *lse, const float *delta, float *dqacc, int *cnt, bool keep, int ldq, int ldk, int ldv,
		     int ldo, int B, int T, int H, int Dh, cudaStream_t s, struct moe_error *err);

#endif
