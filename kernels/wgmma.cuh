/* Hopper (sm_90a) primitives shared by the warpgroup-MMA kernels
 * (grouped_wgmma.cu, attention_wgmma.cu): 16-byte cp.async copies into
 * shared memory, the shared-memory matrix descriptor of the 128-byte
 * swizzle, and the fences, commits and waits around wgmma.  Only for code
 * compiled under __CUDA_ARCH_FEAT_SM90_ALL. */
#ifndef MOE_WGMMA_CUH
#define MOE_WGMMA_CUH

#include "cuda_common.h"

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
#endif

#endif
