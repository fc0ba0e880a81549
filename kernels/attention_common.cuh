/* Pieces shared by the flash-attention forward and backward kernels:
 * 64-row tiles of bf16 q/k/v in shared memory, WMMA 16x16x16 bf16 products
 * with fp32 accumulation.  Layout: element (b, t, h, d) of q is at
 * q[(b*T + t)*ld + h*DH + d]. */
#ifndef MOE_ATTENTION_COMMON_CUH
#define MOE_ATTENTION_COMMON_CUH

#include <mma.h>

#include "cuda_common.h"

using namespace nvcuda;

#define ATT_BR 64 /* rows per tile (queries or keys) */
#define ATT_WARPS 4
#define ATT_PAD 8 /* bf16 row padding against bank conflicts */
#define ATT_SLD (ATT_BR + 4) /* ld of the per-warp fp32 score tiles */
#define ATT_PLD (ATT_BR + 8) /* ld of the per-warp bf16 probability tiles */

typedef wmma::fragment<wmma::matrix_a, 16, 16, 16, __nv_bfloat16, wmma::row_major> att_fa;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::row_major> att_fb_row;
typedef wmma::fragment<wmma::matrix_b, 16, 16, 16, __nv_bfloat16, wmma::col_major> att_fb_col;
typedef wmma::fragment<wmma::accumulator, 16, 16, 16, float> att_fc;

/* Copy rows [row0, row0+64) of one (b, h) slice into dst (64, DH+PAD);
 * rows at or past T are zero. */
template <int DH>
static __device__ __forceinline__ void att_load_tile(bf16 *dst, const bf16 *src, int ld, int row0, int T)
{
	constexpr int VPR = DH / 8; /* 16-byte vectors per row */
	for (int i = threadIdx.x; i < ATT_BR * VPR; i += ATT_WARPS * 32) {
		int r = i / VPR, c = (i % VPR) * 8;
		uint4 v = make_uint4(0, 0, 0, 0);
		if (row0 + r < T)
			v = *(const uint4 *)(src + (size_t)(row0 + r) * ld + c);
		*(uint4 *)(dst + r * (DH + ATT_PAD) + c) = v;
	}
}

/* out (16, 64) fp32 = A (16, DH) @ B^T where B is (64, DH) row-major in smem. */
template <int DH>
static __device__ __forceinline__ void att_mm_abt(float *out, const bf16 *A, const bf16 *B)
{
	constexpr int LD = DH + ATT_PAD;
#pragma unroll
	for (int nf = 0; nf < ATT_BR / 16; nf++) {
		att_fc c;
		wmma::fill_fragment(c, 0.f);
#pragma unroll
		for (int kk = 0; kk < DH / 16; kk++) {
			att_fa a;
			att_fb_col b;
			wmma::load_matrix_sync(a, A + kk * 16, LD);
			wmma::load_matrix_sync(b, B + nf * 16 * LD + kk * 16, LD);
			wmma::mma_sync(c, a, b, c);
		}
		wmma::store_matrix_sync(out + nf * 16, c, ATT_SLD, wmma::mem_row_major);
	}
}

#endif
