/* overlap_probe (session 17, calls 125-126): AdamW on packed masters (one
 * seed-base layer's routed experts, 94 M parameters; a "rep" is a quarter
 * of them, as call 126 ran it; call 125 ran whole layers) on a
 * low-priority stream beside the routed gate_up forward GEMM (64 experts x
 * 2,048 rows, 768 -> 1,280 columns) on a high-priority one: each alone,
 * then together, and how much AdamW work (in its alone-time) finished
 * inside the GEMMs' window.  A record of what ran, not part of the build:
 * the switches it was run with (MOE_CUDA_GT_LEAN, MOE_CUDA_ADAMW_TPB,
 * MOE_CUDA_ADAMW_CARVE, MOE_CUDA_CARVE) were experiment switches, since
 * removed.  Built by hand against a CUDA build BLD:
 *   gcc -O2 -o ov overlap_probe.c -I. -Ilib -I$BLD -I/usr/local/cuda/include \
 *       $BLD/kernels/libmoekernels.a $BLD/lib/core/libmoecore.a \
 *       -L/usr/local/cuda/lib64 -lcublasLt -lcublas -lcudart -lcuda -lstdc++ -lm -lpthread
 *   ./ov [GEMM calls, default 40] [the GEMM's persistent grid, default one
 *   block a multiprocessor: session 18, call 132, leaves the rest to AdamW] */
#include <cuda_runtime_api.h>
#include <stdio.h>
#include <stdlib.h>
#include "core/core.h"
#include "kernels/kernels.h"
#define CK(x) do { if ((x)) { fprintf(stderr, "%s:%d %s\n", __FILE__, __LINE__, err.msg); exit(1); } } while (0)
int main(int argc, char **argv)
{
	struct moe_error err = {0};
	int E = 64, D = 768, I = 640, per = 2048, rows = E * per, NG = argc > 1 ? atoi(argv[1]) : 40;
	size_t n = (size_t)E * 2 * I * D + (size_t)E * D * I; /* one layer's experts; a rep: a quarter */
	int cap = argc > 2 ? atoi(argv[2]) : 0, lo_pri, hi_pri;
	moe_cuda_grouped_tma_config(0, cap);
	cudaDeviceGetStreamPriorityRange(&lo_pri, &hi_pri);
	cudaStream_t sa, sb;
	cudaStreamCreateWithPriority(&sa, cudaStreamNonBlocking, hi_pri);
	cudaStreamCreateWithPriority(&sb, cudaStreamNonBlocking, lo_pri);
	void *x, *w, *out, *hi, *lo, *g, *m, *v;
	int32_t *off;
	cudaMalloc(&x, (size_t)rows * D * 2); cudaMalloc(&w, (size_t)E * 2 * I * D * 2);
	cudaMalloc(&out, (size_t)rows * 2 * I * 2); cudaMalloc((void **)&off, (E + 1) * 4);
	cudaMalloc(&hi, n * 2); cudaMalloc(&lo, n * 2); cudaMalloc(&g, n * 4); cudaMalloc(&m, n * 4); cudaMalloc(&v, n * 4);
	cudaMemset(x, 0, (size_t)rows * D * 2); cudaMemset(w, 0, (size_t)E * 2 * I * D * 2);
	cudaMemset(hi, 0, n * 2); cudaMemset(lo, 0, n * 2); cudaMemset(g, 0, n * 4); cudaMemset(m, 0, n * 4); cudaMemset(v, 0, n * 4);
	int32_t *ho = malloc((E + 1) * 4);
	for (int e = 0; e <= E; e++) ho[e] = e * per;
	cudaMemcpy(off, ho, (E + 1) * 4, cudaMemcpyHostToDevice);
	cudaEvent_t a0, a1, b0, bk[256];
	cudaEventCreate(&a0); cudaEventCreate(&a1); cudaEventCreate(&b0);
	for (int i = 0; i < 256; i++) cudaEventCreate(&bk[i]);
#define GEMM(s) CK(moe_cuda_grouped_tma_fwd(out, x, w, off, rows, E, D, 2 * I, s, &err))
#define ADAM(s) CK(moe_cuda_adamw_packed(hi, lo, g, 1.f, m, v, n / 4, 1e-3f, .9f, .95f, 1e-8f, .1f, 3, s, &err))
	for (int i = 0; i < 3; i++) { GEMM(sa); ADAM(sb); }
	cudaDeviceSynchronize();
	float ms;
	/* alone */
	cudaEventRecord(a0, sa); for (int i = 0; i < NG; i++) GEMM(sa); cudaEventRecord(a1, sa); cudaEventSynchronize(a1);
	cudaEventElapsedTime(&ms, a0, a1); float g_alone = ms / NG;
	cudaEventRecord(b0, sb); for (int i = 0; i < 8; i++) ADAM(sb); cudaEventRecord(bk[0], sb); cudaEventSynchronize(bk[0]);
	cudaEventElapsedTime(&ms, b0, bk[0]); float a_alone = ms / 8;
	/* together: AdamW reps queued first, GEMMs beside */
	int NA = 250;
	cudaEventRecord(b0, sb);
	for (int i = 0; i < NA; i++) { ADAM(sb); cudaEventRecord(bk[i], sb); }
	cudaEventRecord(a0, sa); for (int i = 0; i < NG; i++) GEMM(sa); cudaEventRecord(a1, sa);
	cudaDeviceSynchronize();
	float t_gemm_end, t_g0; cudaEventElapsedTime(&t_gemm_end, b0, a1); cudaEventElapsedTime(&t_g0, b0, a0);
	int done = 0; float tk = 0;
	for (int i = 0; i < NA; i++) { cudaEventElapsedTime(&tk, b0, bk[i]); if (tk <= t_gemm_end) done = i + 1; }
	cudaEventElapsedTime(&ms, a0, a1);
	float g_tog = ms / NG;
	double adam_during = done * a_alone; /* AdamW work done in the GEMM window, in alone-ms */
	printf("grid %d: gemm alone %.3f ms, adamw alone %.3f ms (%.2f TB/s); together: gemm %.3f ms (x%.3f), window %.2f ms "
	       "(gemm start %.2f), adamw reps done %d = %.2f ms of alone-work (%.0f%% of the window)\n",
	       cap, g_alone, a_alone, n / 4 * 28.0 / a_alone / 1e9, g_tog, g_tog / g_alone, t_gemm_end - t_g0, t_g0, done, adam_during,
	       100.0 * adam_during / (t_gemm_end - t_g0));
	return 0;
}
