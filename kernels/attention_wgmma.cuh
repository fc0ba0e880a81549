/* The Hopper pieces of the wgmma attention kernels (attention_wgmma.cu,
 * attention_fa3.cu): tile sizes, the wgmma products with a register or
 * shared-memory A operand, the tile loads into the 128-byte-swizzled layout
 * (rows of 64 elements, one column block after another), the A fragments of
 * such a tile, P's exponential, and the grouped grid order.  Device code
 * only for __CUDA_ARCH_FEAT_SM90_ALL. */
#ifndef MOE_ATTENTION_WGMMA_CUH
#define MOE_ATTENTION_WGMMA_CUH

#include "attention_common.cuh"
#include "wgmma.cuh"


#define AWG_BQ 128 /* queries per block: two warpgroups of 64 */
#define AWG_BK 64  /* keys per tile */
#define AWG_THREADS 256

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* d (64 x 64, 32 registers a thread) = A B (+ d when acc); A, B: K-major
 * descriptors */
static __device__ __forceinline__ void att_wg_ss_n64(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %34, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
		     "{" WG_S32 "}, %32, %33, p, 1, 1, 0, 0;\n}\n"
		     : WG_D32
		     : "l"(da), "l"(db), "r"(acc));
}

/* d (64 x 64, 32 registers a thread) += A B; A (64 x 16) in registers,
 * each warp's 16 rows in the mma.sync A-fragment layout; B: MN-major
 * descriptor */
static __device__ __forceinline__ void att_wg_rs_n64(float *d, const unsigned *a, uint64_t db)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
		     "{" WG_S32 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 1;\n}\n"
		     : WG_D32
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* d (64 x 96, 48 registers a thread) += A B; A (64 x 16) in registers,
 * each warp's 16 rows in the mma.sync A-fragment layout; B: MN-major
 * descriptor */
static __device__ __forceinline__ void att_wg_rs_n96(float *d, const unsigned *a, uint64_t db)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %53, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n96k16.f32.bf16.bf16 "
		     "{" WG_S48 "}, {%48, %49, %50, %51}, %52, p, 1, 1, 1;\n}\n"
		     : WG_D48
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* d (64 x 128, 64 registers a thread) += A B; A (64 x 16) in registers,
 * each warp's 16 rows in the mma.sync A-fragment layout; B: MN-major
 * descriptor */
static __device__ __forceinline__ void att_wg_rs_n128(float *d, const unsigned *a, uint64_t db)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %69, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
		     "{" WG_S64 "}, {%64, %65, %66, %67}, %68, p, 1, 1, 1;\n}\n"
		     : WG_D64
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(1));
}

/* d (64 x DH) += A (registers) B (MN-major) */
template <int DH>
static __device__ __forceinline__ void awg_pv(float *o, const unsigned *a, uint64_t db)
{
	if constexpr (DH == 64)
		att_wg_rs_n64(o, a, db);
	else if constexpr (DH == 96)
		att_wg_rs_n96(o, a, db);
	else
		att_wg_rs_n128(o, a, db);
}

/* The backward's S^T = K Q^T and dP^T = V dO^T for one 64-query tile (64
 * keys of the warpgroup wg x 64 queries): register 4jj + e is key kr +
 * 8 (e / 2), query q0 + 8jj + 2 t4 + e % 2; the warpgroup's K and V rows
 * at sk, sv (tiles of KR rows), the tile's Q and dO at qs, ds; issued as
 * two groups (S^T first), not waited for */
template <int DH, int KR>
static __device__ __forceinline__ void awg_st_dpt(float *sT, float *dpT, uint32_t sk, uint32_t sv, uint32_t qs,
						  uint32_t ds, int wg)
{
	wg_fence();
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++) {
		uint32_t own = (kk >> 2) * (KR * 128) + wg * 8192 + (kk & 3) * 32;
		uint32_t off = (kk >> 2) * 8192 + (kk & 3) * 32;
		att_wg_ss_n64(sT, wg_desc(sk + own, 16, 1024), wg_desc(qs + off, 16, 1024), kk > 0);
	}
	wg_commit();
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++) {
		uint32_t own = (kk >> 2) * (KR * 128) + wg * 8192 + (kk & 3) * 32;
		uint32_t off = (kk >> 2) * 8192 + (kk & 3) * 32;
		att_wg_ss_n64(dpT, wg_desc(sv + own, 16, 1024), wg_desc(ds + off, 16, 1024), kk > 0);
	}
	wg_commit();
}

/* The forward's epilogue for this thread's rows rq and rq + 8 of a
 * warpgroup's 64 queries of head h (bh = b H + h): out = O / l in bf16
 * (O's registers as awg_pv's, l the rows' sums over the quad), lse = (m +
 * log2 l) ln 2 (m the running max in log2 units); rows past T skipped. */
template <int DH>
static __device__ __forceinline__ void awg_fwd_store(bf16 *out, float *lse, const float *o, const float *l,
						     const float *m, int ldo, int T, int b, int h, int bh, int rq,
						     int t4)
{
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int qi = rq + 8 * r;
		if (qi >= T)
			continue;
		float inv = 1.f / l[r];
		bf16 *ob = out + ((size_t)b * T + qi) * ldo + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++)
			*(__nv_bfloat162 *)(ob + 8 * d) = __floats2bfloat162_rn(o[4 * d + 2 * r] * inv, o[4 * d + 2 * r + 1] * inv);
		if (t4 == 0)
			lse[(size_t)bh * T + qi] = (m[r] + log2f(l[r])) * 0.69314718055994531f;
	}
}

/* a warpgroup MMA's fp32 accumulator registers (64 rows x 16 NK columns,
 * as S's or S^T's) as bf16 A fragments, 16 columns each */
template <int NK>
static __device__ __forceinline__ void awg_pack(unsigned (&a)[NK][4], const float *v)
{
#pragma unroll
	for (int ks = 0; ks < NK; ks++)
#pragma unroll
		for (int x = 0; x < 4; x++)
			a[ks][x] = pack_bf16(v[8 * ks + 2 * x], v[8 * ks + 2 * x + 1]);
}

/* Rows [row0, row0 + ROWS) of one head (zero past T) into the swizzled
 * layout at dst: 16-byte chunk c of row r at column block c / 8,
 * dst + (c / 8) * ROWS * 128 + r * 128 + ((c % 8) ^ (r % 8)) * 16. */
template <int DH, int ROWS, int NT = AWG_THREADS>
static __device__ __forceinline__ void awg_load(uint32_t dst, const bf16 *src, int ld, int row0, int T)
{
	constexpr int VPR = DH / 8;
	for (int i = threadIdx.x; i < ROWS * VPR; i += NT) {
		int r = i / VPR, c = i % VPR;
		bool ok = row0 + r < T;
		const bf16 *g = ok ? src + (size_t)(row0 + r) * ld + c * 8 : src;
		uint32_t s = dst + (c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
		wg_cp16(s, g, ok);
	}
}
#endif

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
/* d (64 x 64, 32 registers a thread) = A B (+ d when acc); A (64 x 16) in
 * registers, each warp's 16 rows in the mma.sync A-fragment layout; B:
 * K-major descriptor */
static __device__ __forceinline__ void att_wg_rsk_n64(float *d, const unsigned *a, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %37, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n64k16.f32.bf16.bf16 "
		     "{" WG_S32 "}, {%32, %33, %34, %35}, %36, p, 1, 1, 0;\n}\n"
		     : WG_D32
		     : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "l"(db), "r"(acc));
}

/* 2^x by ex2.approx.ftz.f32 alone: exp2f's denormal fix-up (a compare and
 * two multiplies around the MUFU op) cost the backward 9% at Dh 96 and 128
 * (the forward, at its 128-register cap, spilled and lost 20%); results
 * below 2^-126 are flushed to zero. */
static __device__ __forceinline__ float awg_ex2(float x)
{
	float y;
	asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
	return y;
}

/* The A fragments (mma.sync layout) of rows r0..r0+15, columns 16kk.. of a
 * ROWS-row tile in the swizzled layout of awg_load. */
template <int ROWS>
static __device__ __forceinline__ void awg_frag_a(unsigned *a, uint32_t tile, int r0, int kk)
{
	int lane = threadIdx.x % 32, r = r0 + (lane % 8) + ((lane / 8) % 2) * 8, c = 2 * kk + lane / 16;
	uint32_t s = tile + (c >> 3) * (ROWS * 128) + r * 128 + (((c & 7) ^ (r & 7)) << 4);
	asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
		     : "=r"(a[0]), "=r"(a[1]), "=r"(a[2]), "=r"(a[3])
		     : "r"(s));
}

/* A 1-D grid of BH heads x NY blocks in groups of G heads, each group's
 * blocks together, y slowest within a group (as the 2-D grid (BH, NY)
 * orders all heads): (head, y) of block l.  So that the blocks of a head
 * run at the same time and the tiles they all stream stay in L2. */
static __device__ __forceinline__ void awg_group(int l, int BH, int NY, int G, int &bh, int &y)
{
	int grp = l / (G * NY), g = min(G, BH - grp * G), r = l - grp * G * NY;
	bh = grp * G + r % g;
	y = r / g;
}

/* The block's place in the order of a grid whose blocks wait for blocks
 * before them (fa3f's dQ order, attention_fa3.cu): a ticket from a
 * counter zeroed before the launch, not blockIdx.  A block waits only for
 * blocks with lower tickets, which took theirs before it did and so are
 * resident or done, whatever order the hardware dispatches blocks in:
 * forward progress without assuming launch-order dispatch, which CUDA
 * does not promise.  Every thread of the block gets the ticket.  The
 * counter is the int after the grid's (BH, nq) dQ-tile counters cnt
 * (attention_bwd.cu's att_ncnt). */
static __device__ __forceinline__ int awg_ticket(int *cnt, int BH, int nq)
{
	__shared__ int t;
	if (threadIdx.x == 0)
		t = atomicAdd(cnt + (size_t)BH * nq, 1);
	__syncthreads();
	return t;
}

/* The causal and length mask of a score tile whose rows are queries and
 * columns keys (register 4jj + e: query rq + 8 (e / 2), key k0 + 8jj +
 * 2 t4 + e % 2): the keys after a row's query or past T set to v.  Call
 * it as a block of its own under the caller's warp-uniform test that the
 * tile touches the diagonal or T: written as one condition an element
 * (edge && ...), the compiler evaluated every element's predicate on
 * every tile, edge or not (session 22: 130-200 instructions a tile in the
 * SASS samples). */
template <int NR>
static __device__ __forceinline__ void awg_mask_qk(float (&s)[NR], int k0, int rq, int T, int t4, float v)
{
#pragma unroll
	for (int jj = 0; jj < NR / 4; jj++)
#pragma unroll
		for (int e = 0; e < 4; e++) {
			int r = e / 2, kj = k0 + 8 * jj + 2 * t4 + (e & 1);
			if (kj > rq + 8 * r || kj >= T)
				s[4 * jj + e] = v;
		}
}

/* This thread's query rows rq, rq + 8 of head bh: their lse times log2 e
 * (infinite past T, so that P is 0 there) and delta (0 past T) */
static __device__ __forceinline__ void awg_rows_lse_delta(float (&L)[2], float (&dl)[2], const float *lse,
							  const float *delta, int bh, int T, int rq)
{
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int qi = rq + 8 * r;
		L[r] = qi < T ? lse[(size_t)bh * T + qi] * LOG2E : INFINITY;
		dl[r] = qi < T ? delta[(size_t)bh * T + qi] : 0.f;
	}
}

/* A dQ block's rows rq, rq + 8 to global memory in bf16 (register 4d + e:
 * row rq + 8 (e / 2), column 8d + 2 t4 + e % 2), none past T */
template <int DH>
static __device__ __forceinline__ void awg_store_dq(bf16 *dq, int ldq, const float *dQ, int b, int h, int T, int rq,
						    int t4)
{
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int qi = rq + 8 * r;
		if (qi >= T)
			continue;
		bf16 *o = dq + ((size_t)b * T + qi) * ldq + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++)
			*(__nv_bfloat162 *)(o + 8 * d) = __floats2bfloat162_rn(dQ[4 * d + 2 * r], dQ[4 * d + 2 * r + 1]);
	}
}

/* One key tile of a dQ block (fa3's and wge's dQ kernels): for this
 * warpgroup's 64 queries (rows rq, rq + 8 of this thread) against keys
 * [k0, k0 + 64), K and V at kst, vst in shared memory, S = Q K^T and dP =
 * dO V^T (Q, dO from registers when QREG, else from sq, sd), P =
 * exp2(S scale log2 e - lse) masked on the diagonal and past T, then
 * dQ += dS K with dS = P (dP - delta) scale.  L, dl: the rows' lse (times
 * log2 e) and delta.  The caller tests that the tile is on or below the
 * diagonal (warpgroup-uniform). */
template <int DH, int QR, bool QREG>
static __device__ __forceinline__ void awg_dq_tile(float (&dQ)[DH / 2], const unsigned (&qa)[QREG ? DH / 16 : 1][4],
						   const unsigned (&da)[QREG ? DH / 16 : 1][4], uint32_t sq, uint32_t sd,
						   uint32_t kst, uint32_t vst, int wg, const float (&L)[2],
						   const float (&dl)[2], int k0, int wq0, int rq, int T, int t4,
						   float sl2, float scale)
{
	/* S, dP (64 queries x 64 keys): register 4jj + e is query
	 * rq + 8 (e / 2), key k0 + 8jj + 2 t4 + e % 2 */
	float s[32], dp[32];
	wg_fence();
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++) {
		uint32_t own = (kk >> 2) * (QR * 128) + wg * 8192 + (kk & 3) * 32;
		uint64_t kd = wg_desc(kst + (kk >> 2) * 8192 + (kk & 3) * 32, 16, 1024);
		if (QREG)
			att_wg_rsk_n64(s, qa[QREG ? kk : 0], kd, kk > 0);
		else
			att_wg_ss_n64(s, wg_desc(sq + own, 16, 1024), kd, kk > 0);
	}
	wg_commit();
#pragma unroll
	for (int kk = 0; kk < DH / 16; kk++) {
		uint32_t own = (kk >> 2) * (QR * 128) + wg * 8192 + (kk & 3) * 32;
		uint64_t vd = wg_desc(vst + (kk >> 2) * 8192 + (kk & 3) * 32, 16, 1024);
		if (QREG)
			att_wg_rsk_n64(dp, da[QREG ? kk : 0], vd, kk > 0);
		else
			att_wg_ss_n64(dp, wg_desc(sd + own, 16, 1024), vd, kk > 0);
	}
	wg_commit();
	wg_wait<1>(); /* S done, dP may still run */
	wg_fence_regs<32>(s);
#pragma unroll
	for (int i = 0; i < 32; i++)
		s[i] = awg_ex2(s[i] * sl2 - L[(i & 3) / 2]);
	if (k0 + 64 > wq0 || k0 + 64 > T)
		awg_mask_qk(s, k0, rq, T, t4, 0.f);
	wg_wait<0>();
	wg_fence_regs<32>(dp);
	unsigned a[4][4]; /* dS as A fragments (16 keys each) */
#pragma unroll
	for (int ks = 0; ks < 4; ks++)
#pragma unroll
		for (int x = 0; x < 4; x++) {
			int i0 = 8 * ks + 2 * x, r = x & 1;
			a[ks][x] = pack_bf16(s[i0] * (dp[i0] - dl[r]) * scale,
					     s[i0 + 1] * (dp[i0 + 1] - dl[r]) * scale);
		}
	wg_fence();
#pragma unroll
	for (int ks = 0; ks < 4; ks++)
		awg_pv<DH>(dQ, a[ks], wg_desc(kst + ks * 2048, 8192, 1024)); /* dQ += dS K */
	wg_commit();
	wg_wait<0>();
	wg_fence_regs<DH / 2>(dQ);
}

/* After awg_st_dpt, for a tile on or below the diagonal: P^T = exp2(S^T
 * scale log2 e - lse) into sT (zero above the diagonal and past T in an
 * edge tile), dV += P^T dO issued (its group left running), then dS^T = P^T
 * (dP^T - delta) scale into dpT.  Register 4jj + e is key kr + 8 (e / 2),
 * query q0 + 8jj + 2 t4 + e % 2; L, DL the tile's lse (times log2 e) and
 * delta by query; ds the tile's dO in shared memory. */
template <int DH>
static __device__ __forceinline__ void awg_pt_dv_dst(float *sT, float *dpT, float *dV, const float *L, const float *DL,
						     uint32_t ds, int q0, int wk0, int kr, int T, int t4, float sl2,
						     float scale)
{
	/* this thread's 16 lse and delta values into registers: lse before
	 * the wait, delta while the exponentials run (loaded after the wait,
	 * each was a shared-memory round trip on the tile's critical path:
	 * session 22's SASS samples) */
	float2 lr[8], dr[8];
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
		lr[jj] = *(const float2 *)(L + 8 * jj + 2 * t4);
	wg_wait<1>(); /* S^T done, dP^T may still run */
	wg_fence_regs<32>(sT);
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
		dr[jj] = *(const float2 *)(DL + 8 * jj + 2 * t4);
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			sT[4 * jj + e] = awg_ex2(sT[4 * jj + e] * sl2 - (e & 1 ? lr[jj].y : lr[jj].x));
	/* the mask under its own warpgroup-uniform branch, as awg_mask_qk's
	 * (here rows are keys, columns queries) */
	if (q0 < wk0 + 64 || q0 + 64 > T)
#pragma unroll
		for (int jj = 0; jj < 8; jj++)
#pragma unroll
			for (int e = 0; e < 4; e++) {
				int qi = q0 + 8 * jj + 2 * t4 + (e & 1);
				if (qi < kr + 8 * (e / 2) || qi >= T)
					sT[4 * jj + e] = 0.f;
			}
	unsigned pa[4][4]; /* P^T as A fragments (16 queries each) */
	awg_pack(pa, sT);
	wg_fence();
#pragma unroll
	for (int ks = 0; ks < 4; ks++)
		awg_pv<DH>(dV, pa[ks], wg_desc(ds + ks * 2048, 8192, 1024)); /* dV += P^T dO */
	wg_commit();
	wg_wait<1>(); /* dP^T done, dV may still run */
	wg_fence_regs<32>(dpT);
#pragma unroll
	for (int jj = 0; jj < 8; jj++)
#pragma unroll
		for (int e = 0; e < 4; e++)
			dpT[4 * jj + e] = sT[4 * jj + e] * (dpT[4 * jj + e] - (e & 1 ? dr[jj].y : dr[jj].x)) * scale;
}

/* dS^T fragments sa (16 queries each, awg_pack's layout) into shared
 * memory at sds in the 128-byte swizzle: row 64 wg + 16 w + g + 8 (x & 1) a
 * key, queries 16 ks + 8 (x / 2) + 2 t4 + {0, 1} */
static __device__ __forceinline__ void awg_st_dst(const unsigned (&sa)[4][4], uint32_t sds, int wg, int w, int g,
						  int t4)
{
#pragma unroll
	for (int ks = 0; ks < 4; ks++)
#pragma unroll
		for (int x = 0; x < 4; x++) {
			int r = 64 * wg + 16 * w + g + 8 * (x & 1), ch = 2 * ks + (x >> 1);
			uint32_t a = sds + r * 128 + ((ch ^ (r & 7)) << 4) + 4 * t4;
			asm volatile("st.shared.b32 [%0], %1;\n" ::"r"(a), "r"(sa[ks][x]) : "memory");
		}
}

/* dK += dS^T Q issued (the caller fences before and commits after): sa,
 * dS^T as A fragments (awg_pack, 16 queries each); qs the tile's Q in
 * shared memory */
template <int DH>
static __device__ __forceinline__ void awg_dk_add(float *dK, const unsigned (&sa)[4][4], uint32_t qs)
{
#pragma unroll
	for (int ks = 0; ks < 4; ks++)
		awg_pv<DH>(dK, sa[ks], wg_desc(qs + ks * 2048, 8192, 1024));
}

/* The dK, dV rows of a warpgroup to global memory in bf16: register
 * 4d + 2r + e is key kr + 8r, column 8d + 2 t4 + e (keys past T skipped) */
template <int DH>
static __device__ __forceinline__ void awg_store_dkdv(bf16 *dk, bf16 *dv, int ldk, int ldv, const float *dK,
						      const float *dV, int b, int h, int T, int kr, int t4)
{
#pragma unroll
	for (int r = 0; r < 2; r++) {
		int t = kr + 8 * r;
		if (t >= T)
			continue;
		bf16 *okp = dk + ((size_t)b * T + t) * ldk + h * DH + 2 * t4;
		bf16 *ovp = dv + ((size_t)b * T + t) * ldv + h * DH + 2 * t4;
#pragma unroll
		for (int d = 0; d < DH / 8; d++) {
			*(__nv_bfloat162 *)(okp + 8 * d) = __floats2bfloat162_rn(dK[4 * d + 2 * r], dK[4 * d + 2 * r + 1]);
			*(__nv_bfloat162 *)(ovp + 8 * d) = __floats2bfloat162_rn(dV[4 * d + 2 * r], dV[4 * d + 2 * r + 1]);
		}
	}
}
#endif

#endif
