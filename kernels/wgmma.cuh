/* Hopper (sm_90a) primitives shared by the warpgroup-MMA kernels
 * (grouped_wgmma.cu, grouped_tma.cu, attention_wgmma.cu, attention_fa3.cu):
 * 16-byte cp.async copies into shared memory, the mbarriers the TMA kernels
 * hand their stages over with, the shared-memory matrix descriptor of the
 * 128-byte swizzle, the fences, commits and waits around wgmma, and the
 * 64 x 128 / 64 x 256 products with both operands in shared memory (device
 * code only under __CUDA_ARCH_FEAT_SM90_ALL); on the host, the driver's
 * tensor-map encoder. */
#ifndef MOE_WGMMA_CUH
#define MOE_WGMMA_CUH

#include <cuda.h>
#include <cudaTypedefs.h>

#include "cuda_common.h"

/* cuTensorMapEncodeTiled through the runtime's driver entry point (no link
 * against libcuda); NULL when the driver does not offer it.  Asked once per
 * file that calls it. */
static inline PFN_cuTensorMapEncodeTiled_v12000 wg_tmap_encoder(void)
{
	static PFN_cuTensorMapEncodeTiled_v12000 fn;
	static bool tried;
	if (!tried) {
		void *p = NULL;
		cudaDriverEntryPointQueryResult q;
		if (cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &p, 12000, cudaEnableDefault, &q) ==
			    cudaSuccess &&
		    q == cudaDriverEntryPointSuccess)
			fn = (PFN_cuTensorMapEncodeTiled_v12000)p;
		else
			cudaGetLastError();
		tried = true;
	}
	return fn;
}

/* The accumulator operands of a wgmma, for the inline asm below and in
 * attention_wgmma.cu: WG_Sn, the text "%0, ..., %(n-1)"; WG_Dn, the
 * matching "+f" operands d[0] .. d[n-1] (n registers a thread). */
#define WG_S32 "%0, %1, %2, %3, %4, %5, %6, %7, %8, %9, %10, %11, %12, %13, %14, %15" \
	", %16, %17, %18, %19, %20, %21, %22, %23, %24, %25, %26, %27, %28, %29, %30, %31"
#define WG_S48 WG_S32 ", %32, %33, %34, %35, %36, %37, %38, %39, %40, %41, %42, %43, %44, %45, %46, %47"
#define WG_S64 WG_S48 ", %48, %49, %50, %51, %52, %53, %54, %55, %56, %57, %58, %59, %60, %61, %62, %63"
#define WG_S128 WG_S64 ", %64, %65, %66, %67, %68, %69, %70, %71, %72, %73, %74, %75, %76, %77, %78, %79" \
	", %80, %81, %82, %83, %84, %85, %86, %87, %88, %89, %90, %91, %92, %93, %94, %95" \
	", %96, %97, %98, %99, %100, %101, %102, %103, %104, %105, %106, %107, %108, %109, %110, %111" \
	", %112, %113, %114, %115, %116, %117, %118, %119, %120, %121, %122, %123, %124, %125, %126, %127"
#define WG_F8(i)                                                                                   \
	"+f"(d[i]), "+f"(d[i + 1]), "+f"(d[i + 2]), "+f"(d[i + 3]), "+f"(d[i + 4]), "+f"(d[i + 5]), \
		"+f"(d[i + 6]), "+f"(d[i + 7])
#define WG_D32 WG_F8(0), WG_F8(8), WG_F8(16), WG_F8(24)
#define WG_D48 WG_D32, WG_F8(32), WG_F8(40)
#define WG_D64 WG_D48, WG_F8(48), WG_F8(56)
#define WG_D128 WG_D64, WG_F8(64), WG_F8(72), WG_F8(80), WG_F8(88), WG_F8(96), WG_F8(104), WG_F8(112), \
		WG_F8(120)

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ uint32_t wg_smem_u32(const void *p)
{
	return (uint32_t)__cvta_generic_to_shared(p);
}

/* 16 bytes global -> shared, zero-filled when !pred (src must still be a
 * valid address) */
static __device__ __forceinline__ void wg_cp16(uint32_t dst, const void *src, bool pred)
{
	asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(src), "r"(pred ? 16 : 0));
}
static __device__ __forceinline__ void wg_cp_commit() { asm volatile("cp.async.commit_group;\n" ::); }
template <int N> static __device__ __forceinline__ void wg_cp_wait()
{
	asm volatile("cp.async.wait_group %0;\n" ::"n"(N));
}

/* mbarriers in shared memory (bar: its shared-window address) */
static __device__ __forceinline__ void wg_bar_init(uint32_t bar, int count)
{
	asm volatile("mbarrier.init.shared::cta.b64 [%0], %1;\n" ::"r"(bar), "r"(count) : "memory");
}
static __device__ __forceinline__ void wg_arrive(uint32_t bar)
{
	asm volatile("mbarrier.arrive.shared::cta.b64 _, [%0];\n" ::"r"(bar) : "memory");
}
static __device__ __forceinline__ void wg_arrive_tx(uint32_t bar, uint32_t bytes)
{
	asm volatile("mbarrier.arrive.expect_tx.shared::cta.b64 _, [%0], %1;\n" ::"r"(bar), "r"(bytes) : "memory");
}
/* until the phase of parity ph has completed */
static __device__ __forceinline__ void wg_bar_wait(uint32_t bar, uint32_t ph)
{
	uint32_t ok;
	do {
		asm volatile("{\n.reg .pred p;\nmbarrier.try_wait.parity.shared::cta.b64 p, [%1], %2;\n"
			     "selp.u32 %0, 1, 0, p;\n}\n"
			     : "=r"(ok)
			     : "r"(bar), "r"(ph)
			     : "memory");
	} while (!ok);
}

/* Shared-memory matrix descriptor, 128-byte swizzle: start address, leading
 * and stride byte offsets (16-byte units).  K-major: the stride offset steps
 * from one 8-row group of 128-byte rows to the next (the leading one is
 * unused); MN-major: the leading offset steps from one 64-element column block
 * to the next, the stride offset from one group of 8 k-rows to the next. */
static __device__ __forceinline__ uint64_t wg_desc(uint32_t addr, uint32_t lbo, uint32_t sbo)
{
	return (uint64_t)((addr & 0x3ffff) >> 4) | ((uint64_t)(lbo >> 4) << 16) | ((uint64_t)(sbo >> 4) << 32) |
	       (1ull << 62);
}

/* shared memory written by ordinary stores (or cp.async) made visible to
 * the tensor cores (each writing thread, before the barrier) */
static __device__ __forceinline__ void wg_fence_proxy() { asm volatile("fence.proxy.async.shared::cta;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_fence() { asm volatile("wgmma.fence.sync.aligned;\n" ::: "memory"); }
static __device__ __forceinline__ void wg_commit() { asm volatile("wgmma.commit_group.sync.aligned;\n" ::: "memory"); }
/* wait until at most N of this warpgroup's committed groups are pending (all
 * older ones complete) */
template <int N> static __device__ __forceinline__ void wg_wait()
{
	asm volatile("wgmma.wait_group.sync.aligned %0;\n" ::"n"(N) : "memory");
}
/* keeps the compiler from touching N accumulators before the wait above */
template <int N> static __device__ __forceinline__ void wg_fence_regs(float *r)
{
#pragma unroll
	for (int i = 0; i < N; i++)
		asm volatile("" : "+f"(r[i])::"memory");
}

/* D (64 x 128, fp32, 64 registers a thread) = A B (+ D when acc) on the
 * descriptors da, db; TA, TB: A, B MN-major */
template <int TA, int TB>
static __device__ __forceinline__ void wg_mma_n128(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %66, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n128k16.f32.bf16.bf16 "
		     "{" WG_S64 "}, %64, %65, p, 1, 1, %67, %68;\n}\n"
		     : WG_D64
		     : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
}

/* the same with D 64 x 256 (128 registers a thread) */
template <int TA, int TB>
static __device__ __forceinline__ void wg_mma_n256(float *d, uint64_t da, uint64_t db, int acc)
{
	asm volatile("{\n.reg .pred p;\nsetp.ne.b32 p, %130, 0;\n"
		     "wgmma.mma_async.sync.aligned.m64n256k16.f32.bf16.bf16 "
		     "{" WG_S128 "}, %128, %129, p, 1, 1, %131, %132;\n}\n"
		     : WG_D128
		     : "l"(da), "l"(db), "r"(acc), "n"(TA), "n"(TB));
}

/* D (64 x BN) for BN 128 or 256 */
template <int BN, int TA, int TB>
static __device__ __forceinline__ void wg_mma(float *d, uint64_t da, uint64_t db, int acc)
{
	if (BN == 128)
		wg_mma_n128<TA, TB>(d, da, db, acc);
	else
		wg_mma_n256<TA, TB>(d, da, db, acc);
}
#endif

#endif
