/* adamw_probe (session 18, call 133): how much AdamW (packed masters) a few
 * multiprocessors can do, and what that buys beside the routed gate_up
 * forward GEMM run on the others.  Two AdamW kernels, each held to k
 * multiprocessors (one block a multiprocessor, a grid of k):
 *   reg:  adamw.cu's adamw4_kernel as it is (16- and 8-byte loads to
 *         registers), 1,024 threads, the block padded with shared memory
 *         so that no second block fits;
 *   bulk: chunks of 2,048 elements moved by the copy engine (bulk copies
 *         into a ring of 6 stages of shared memory, completing on
 *         mbarriers; the results written back in place and stored by bulk
 *         copies), 256 threads, adamw.cu's arithmetic.
 * Alone at k = 8 .. 132, then beside the GEMM on 132 - k (its persistent
 * grid, moe_cuda_grouped_tma_config): the GEMM's time and the AdamW bytes
 * moved in its window.  The bulk kernel's results are checked against the
 * reg kernel's (the same bits).  A record of what ran, not part of the
 * build.  Built by hand against a CUDA build BLD:
 *   nvcc -O2 -std=c++17 -gencode arch=compute_90a,code=sm_90a -o ap adamw_probe.cu -I. -Ilib -Ikernels \
 *        -I$BLD $BLD/kernels/libmoekernels.a $BLD/lib/core/libmoecore.a -lcublasLt -lcublas -lcuda */
#include "kernels/adamw.cu"
#include "kernels/wgmma.cuh"
#include <stdio.h>

#define CK(x) do { if ((x)) { fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, err.msg); exit(1); } } while (0)
#define CC(x) do { cudaError_t e_ = (x); if (e_ != cudaSuccess) { fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, cudaGetErrorString(e_)); exit(1); } } while (0)

enum { BC = 2048, BS = 6, BT = 256, STG = 16 * BC };

#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
static __device__ __forceinline__ void bulk_load(uint32_t dst, const void *src, uint32_t bytes, uint32_t bar)
{
	asm volatile("cp.async.bulk.shared::cluster.global.mbarrier::complete_tx::bytes [%0], [%1], %2, [%3];\n" ::"r"(dst),
		     "l"(src), "r"(bytes), "r"(bar)
		     : "memory");
}
static __device__ __forceinline__ void bulk_store(void *dst, uint32_t src, uint32_t bytes)
{
	asm volatile("cp.async.bulk.global.shared::cta.bulk_group [%0], [%1], %2;\n" ::"l"(dst), "r"(src), "r"(bytes)
		     : "memory");
}

#endif

/* stage layout: g (4 BC bytes), m, v, hi (2 BC), lo */
__global__ void __launch_bounds__(BT, 1)
	adamw_bulk_kernel(uint16_t *hi, uint16_t *lo, const float *g, float *m, float *v, size_t nch, adamw_hp h)
{
#if defined(__CUDA_ARCH_FEAT_SM90_ALL)
	extern __shared__ __align__(1024) unsigned char sm[];
	__shared__ __align__(8) uint64_t full[BS];
	const int tid = threadIdx.x;
	const uint32_t s0 = wg_smem_u32(sm), f0 = wg_smem_u32(full);
	const size_t G = gridDim.x, nmine = nch > blockIdx.x ? (nch - blockIdx.x + G - 1) / G : 0;
	if (tid == 0) {
		for (int s = 0; s < BS; s++)
			wg_bar_init(f0 + 8 * s, 1);
		asm volatile("fence.mbarrier_init.release.cluster;\n" ::: "memory");
	}
	__syncthreads();
	auto issue = [&](size_t j) {
		const int s = (int)(j % BS);
		const size_t e0 = (blockIdx.x + j * G) * BC;
		const uint32_t d = s0 + s * STG, bar = f0 + 8 * s;
		wg_arrive_tx(bar, STG);
		bulk_load(d, g + e0, 4 * BC, bar);
		bulk_load(d + 4 * BC, m + e0, 4 * BC, bar);
		bulk_load(d + 8 * BC, v + e0, 4 * BC, bar);
		bulk_load(d + 12 * BC, hi + e0, 2 * BC, bar);
		bulk_load(d + 14 * BC, lo + e0, 2 * BC, bar);
	};
	if (tid == 0)
		for (size_t j = 0; j < nmine && j < BS; j++)
			issue(j);
	for (size_t j = 0; j < nmine; j++) {
		const int s = (int)(j % BS);
		wg_bar_wait(f0 + 8 * s, (uint32_t)((j / BS) & 1));
		unsigned char *st = sm + s * STG;
		float4 *sg = (float4 *)st, *smm = (float4 *)(st + 4 * BC), *sv = (float4 *)(st + 8 * BC);
		uint2 *sh = (uint2 *)(st + 12 * BC), *sl = (uint2 *)(st + 14 * BC);
#pragma unroll
		for (int half = 0; half < 2; half++) {
			const int i = tid + half * BT; /* elements 4 i .. 4 i + 3 */
			float4 gi = sg[i], mi = smm[i], vi = sv[i];
			uint2 hw = sh[i], lw = sl[i];
			float4 pi = make_float4(unpack_master(hw.x & 0xffffu, lw.x & 0xffffu),
						unpack_master(hw.x >> 16, lw.x >> 16),
						unpack_master(hw.y & 0xffffu, lw.y & 0xffffu),
						unpack_master(hw.y >> 16, lw.y >> 16));
			pi.x = adamw_one(pi.x, gi.x, mi.x, vi.x, h);
			pi.y = adamw_one(pi.y, gi.y, mi.y, vi.y, h);
			pi.z = adamw_one(pi.z, gi.z, mi.z, vi.z, h);
			pi.w = adamw_one(pi.w, gi.w, mi.w, vi.w, h);
			uint32_t h0, l0, h1, l1, h2, l2, h3, l3;
			pack_master(pi.x, h0, l0);
			pack_master(pi.y, h1, l1);
			pack_master(pi.z, h2, l2);
			pack_master(pi.w, h3, l3);
			smm[i] = mi;
			sv[i] = vi;
			sh[i] = make_uint2(h0 | h1 << 16, h2 | h3 << 16);
			sl[i] = make_uint2(l0 | l1 << 16, l2 | l3 << 16);
		}
		wg_fence_proxy();
		__syncthreads();
		if (tid == 0) {
			const size_t e0 = (blockIdx.x + j * G) * BC;
			const uint32_t d = s0 + s * STG;
			bulk_store(m + e0, d + 4 * BC, 4 * BC);
			bulk_store(v + e0, d + 8 * BC, 4 * BC);
			bulk_store(hi + e0, d + 12 * BC, 2 * BC);
			bulk_store(lo + e0, d + 14 * BC, 2 * BC);
			asm volatile("cp.async.bulk.commit_group;\n" ::: "memory");
			/* the stores of chunk j - 1 have read their stage: refill it */
			asm volatile("cp.async.bulk.wait_group.read 1;\n" ::: "memory");
			if (j >= 1 && j - 1 + BS < nmine)
				issue(j - 1 + BS);
		}
	}
	if (tid == 0)
		asm volatile("cp.async.bulk.wait_group 0;\n" ::: "memory");
#endif
}

int main(int argc, char **argv)
{
	struct moe_error err = {0};
	int E = 64, D = 768, I = 640, per = 2048, rows = E * per, NG = 100;
	size_t n = (size_t)E * 3 * I * D; /* one layer's routed experts, 94 M */
	n -= n % ((size_t)BC * 132);
	int sms = moe_cuda_sms(), lo_pri, hi_pri;
	cudaDeviceGetStreamPriorityRange(&lo_pri, &hi_pri);
	cudaStream_t sa, sb;
	cudaStreamCreateWithPriority(&sa, cudaStreamNonBlocking, hi_pri);
	cudaStreamCreateWithPriority(&sb, cudaStreamNonBlocking, lo_pri);
	void *x, *w, *out;
	uint16_t *hi, *lo, *hi2, *lo2;
	float *g, *m, *v, *m2, *v2;
	int32_t *off;
	CC(cudaMalloc(&x, (size_t)rows * D * 2)); CC(cudaMalloc(&w, (size_t)E * 2 * I * D * 2));
	CC(cudaMalloc(&out, (size_t)rows * 2 * I * 2)); CC(cudaMalloc((void **)&off, (E + 1) * 4));
	CC(cudaMalloc(&hi, n * 2)); CC(cudaMalloc(&lo, n * 2)); CC(cudaMalloc(&g, n * 4)); CC(cudaMalloc(&m, n * 4));
	CC(cudaMalloc(&v, n * 4)); CC(cudaMalloc(&hi2, n * 2)); CC(cudaMalloc(&lo2, n * 2)); CC(cudaMalloc(&m2, n * 4));
	CC(cudaMalloc(&v2, n * 4));
	cudaMemset(x, 0, (size_t)rows * D * 2); cudaMemset(w, 0, (size_t)E * 2 * I * D * 2);
	/* random state for the check */
	{
		float *hb = (float *)malloc(n * 4);
		uint16_t *h16 = (uint16_t *)malloc(n * 2);
		uint32_t st = 12345;
		auto rnd = [&]() { st = st * 1664525u + 1013904223u; return ((st >> 8) & 0xffffff) / 16777216.f - 0.5f; };
		for (size_t i = 0; i < n; i++) hb[i] = rnd() * 1e-2f;
		CC(cudaMemcpy(g, hb, n * 4, cudaMemcpyHostToDevice));
		for (size_t i = 0; i < n; i++) hb[i] = rnd() * 1e-3f;
		CC(cudaMemcpy(m, hb, n * 4, cudaMemcpyHostToDevice));
		for (size_t i = 0; i < n; i++) hb[i] = (rnd() + 0.5f) * 1e-5f;
		CC(cudaMemcpy(v, hb, n * 4, cudaMemcpyHostToDevice));
		for (size_t i = 0; i < n; i++) h16[i] = (uint16_t)(st = st * 1664525u + 1013904223u);
		CC(cudaMemcpy(lo, h16, n * 2, cudaMemcpyHostToDevice));
		for (size_t i = 0; i < n; i++) h16[i] = (uint16_t)(0x3c00u + ((st = st * 1664525u + 1013904223u) >> 24));
		CC(cudaMemcpy(hi, h16, n * 2, cudaMemcpyHostToDevice));
		free(hb); free(h16);
	}
	CC(cudaMemcpy(hi2, hi, n * 2, cudaMemcpyDeviceToDevice)); CC(cudaMemcpy(lo2, lo, n * 2, cudaMemcpyDeviceToDevice));
	CC(cudaMemcpy(m2, m, n * 4, cudaMemcpyDeviceToDevice)); CC(cudaMemcpy(v2, v, n * 4, cudaMemcpyDeviceToDevice));
	int32_t *ho = (int32_t *)malloc((E + 1) * 4);
	for (int e = 0; e <= E; e++) ho[e] = e * per;
	cudaMemcpy(off, ho, (E + 1) * 4, cudaMemcpyHostToDevice);
	adamw_hp hp = adamw_params(1.f, 1e-3f, .9f, .95f, 1e-8f, .1f, 3);
	const int PAD = 120 * 1024, BSM = BS * STG;
	CC(cudaFuncSetAttribute(adamw4_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, PAD));
	CC(cudaFuncSetAttribute(adamw_bulk_kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, BSM));
	adamw_masters wm = {nullptr, (bf16 *)hi, lo};
	/* reg on k multiprocessors (kind 0) or bulk (kind 1), n elements */
	auto adam = [&](int kind, int k, cudaStream_t s, size_t ne) {
		if (kind == 0)
			adamw4_kernel<true><<<k, 1024, PAD, s>>>(wm, (const float4 *)g, (float4 *)m, (float4 *)v, ne / 4, hp);
		else
			adamw_bulk_kernel<<<k, BT, BSM, s>>>(hi2, lo2, g, m2, v2, ne / BC, hp);
	};
	/* check: one step each from the same state, the same bits */
	adam(0, sms, sa, n); adam(1, sms, sa, n);
	CC(cudaDeviceSynchronize());
	{
		uint16_t *a = (uint16_t *)malloc(n * 2), *b = (uint16_t *)malloc(n * 2);
		float *fa = (float *)malloc(n * 4), *fb = (float *)malloc(n * 4);
		size_t bad = 0;
		cudaMemcpy(a, hi, n * 2, cudaMemcpyDeviceToHost); cudaMemcpy(b, hi2, n * 2, cudaMemcpyDeviceToHost);
		bad += memcmp(a, b, n * 2) != 0;
		cudaMemcpy(a, lo, n * 2, cudaMemcpyDeviceToHost); cudaMemcpy(b, lo2, n * 2, cudaMemcpyDeviceToHost);
		bad += memcmp(a, b, n * 2) != 0;
		cudaMemcpy(fa, m, n * 4, cudaMemcpyDeviceToHost); cudaMemcpy(fb, m2, n * 4, cudaMemcpyDeviceToHost);
		bad += memcmp(fa, fb, n * 4) != 0;
		cudaMemcpy(fa, v, n * 4, cudaMemcpyDeviceToHost); cudaMemcpy(fb, v2, n * 4, cudaMemcpyDeviceToHost);
		bad += memcmp(fa, fb, n * 4) != 0;
		printf("check: bulk against reg, %zu elements: %s\n", n, bad ? "DIFFERENT" : "the same bits (hi, lo, m, v)");
	}
	cudaEvent_t e0, e1, f0, f1;
	cudaEventCreate(&e0); cudaEventCreate(&e1); cudaEventCreate(&f0); cudaEventCreate(&f1);
	float ms;
	const double bytes = 28.0 * n;
#define GEMM(s) CK(moe_cuda_grouped_tma_fwd((bf16_t *)out, (const bf16_t *)x, (const bf16_t *)w, off, rows, E, D, 2 * I, s, &err))
	const char *kn[2] = {"reg", "bulk"};
	int ks[] = {8, 16, 24, 32, 48, 66, 132};
	printf("alone (one layer's experts, %.2f GB a pass):\n", bytes / 1e9);
	for (int kind = 0; kind < 2; kind++)
		for (int k : ks) {
			adam(kind, k, sb, n);
			cudaEventRecord(e0, sb);
			for (int i = 0; i < 3; i++) adam(kind, k, sb, n);
			cudaEventRecord(e1, sb);
			CC(cudaEventSynchronize(e1));
			cudaEventElapsedTime(&ms, e0, e1);
			printf("  %-4s k %3d: %.3f ms a pass, %.2f TB/s, %.1f GB/s a multiprocessor\n", kn[kind], k, ms / 3,
			       bytes * 3 / ms / 1e9, bytes * 3 / ms / 1e6 / k);
		}
	moe_cuda_grouped_tma_config(0, 0);
	for (int i = 0; i < 3; i++) GEMM(sa);
	cudaEventRecord(f0, sa); for (int i = 0; i < NG; i++) GEMM(sa); cudaEventRecord(f1, sa);
	CC(cudaEventSynchronize(f1));
	cudaEventElapsedTime(&ms, f0, f1);
	printf("gemm alone, grid %d: %.3f ms\n", sms, ms / NG);
	printf("together (AdamW passes of a quarter layer on k multiprocessors queued first, %d GEMMs on the other "
	       "multiprocessors):\n", NG);
	for (int kind = 0; kind < 2; kind++)
		for (int k : {8, 16, 24, 32}) {
			const size_t nq = n / 4 - (n / 4) % BC;
			const double qb = 28.0 * nq;
			adam(kind, k, sb, nq);
			cudaEventRecord(e0, sb);
			for (int i = 0; i < 4; i++) adam(kind, k, sb, nq);
			cudaEventRecord(e1, sb);
			CC(cudaEventSynchronize(e1));
			float pass;
			cudaEventElapsedTime(&pass, e0, e1);
			pass /= 4;
			moe_cuda_grouped_tma_config(0, sms - k);
			for (int i = 0; i < 2; i++) GEMM(sa);
			cudaEventRecord(f0, sa); for (int i = 0; i < NG; i++) GEMM(sa); cudaEventRecord(f1, sa);
			CC(cudaEventSynchronize(f1));
			float galone;
			cudaEventElapsedTime(&galone, f0, f1);
			int NA = (int)((galone * 1.5f + 3.f) / pass) + 8;
			if (NA > 1024) NA = 1024;
			cudaEvent_t *done = (cudaEvent_t *)malloc(NA * sizeof(cudaEvent_t)), b0;
			for (int i = 0; i < NA; i++) cudaEventCreate(&done[i]);
			cudaEventCreate(&b0);
			cudaEventRecord(b0, sb);
			for (int i = 0; i < NA; i++) { adam(kind, k, sb, nq); cudaEventRecord(done[i], sb); }
			cudaEventRecord(f0, sa); for (int i = 0; i < NG; i++) GEMM(sa); cudaEventRecord(f1, sa);
			CC(cudaDeviceSynchronize());
			float tg, t0, t1;
			cudaEventElapsedTime(&tg, f0, f1); cudaEventElapsedTime(&t0, b0, f0); cudaEventElapsedTime(&t1, b0, f1);
			int nd = 0, nd0 = 0;
			for (int i = 0; i < NA; i++) {
				float t;
				cudaEventElapsedTime(&t, b0, done[i]);
				if (t <= t1) nd = i + 1;
				if (t <= t0) nd0 = i + 1;
			}
			double win = t1 - t0;
			printf("  %-4s k %2d: alone %.2f TB/s; gemm on %d: alone %.3f ms, beside %.3f ms (x%.3f); AdamW %d passes in "
			       "the %.2f ms window%s: %.2f TB/s, %.0f%% of its alone rate\n",
			       kn[kind], k, qb / pass / 1e9, sms - k, galone / NG, tg / NG, tg / galone, nd - nd0, win,
			       nd == NA ? " (ran out)" : "", (nd - nd0) * qb / win / 1e9, 100.0 * (nd - nd0) * pass / win);
			for (int i = 0; i < NA; i++) cudaEventDestroy(done[i]);
			cudaEventDestroy(b0);
			free(done);
		}
	return 0;
}
