/*
 * Training-step benchmark of the CUDA backend (run on the GPU machine by
 * bench_train.sh): a model preset at batch B x T on random tokens, full
 * steps of forward, backward, clipping of the expert / non-expert gradient
 * groups and AdamW, through lib/train's optimizer (the code moe-train
 * runs: spans of adjacent tensors, all gradient norms read back in one
 * synchronisation).  Prints one JSON line in the shape of
 * shared/bench/torch_ref.py's (tokens/s and step ms from the wall time of
 * the timed steps, device idle to device idle; the median of the per-step
 * times, as the host sees them without a synchronisation at a step's end:
 * the forward's read-back waits for the last step's optimizer; model
 * TFLOP/s counted as torch_ref counts them, MFU, peak GiB),
 * then, with -p, the per-op time breakdown of one profiled step.
 *
 *   bench_cuda [-m PRESET.json] [-B 16] [-T 2048] [-n STEPS] [-w WARMUP] [-p] [-R] [-c CLIP] [-L ROWS] [-Z] [-G] [-S]
 * -R: full activation recompute (moe-train --recompute full); -c: the
 * clip norm of both groups (default 1.0 as torch_ref; a small one makes
 * every step clip); -L: rows of logits a chunk of the LM head and loss
 * (moe_model_set_logits_chunk; default the model's); -Z: tokens drawn with
 * Zipf frequencies (p(rank k) ~ 1/k, as words in text: the most frequent
 * id about 9% of a batch) instead of uniformly, for the ops whose cost
 * depends on repeated ids (the deterministic embedding backward); -G: the
 * dense GEMMs' cuBLASLt plans at the end (moe_cuda_gemm_report); -S: a
 * synchronisation at each step's end (the loop before session 13, for
 * comparisons).
 */
#include <cuda_runtime_api.h>
#include <getopt.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/core.h"
#include "kernels/kernels.h"
#include "model/model.h"
#include "train/train.h"


static double flops_per_token(const struct moe_config *c, int T)
{
	double D = c->hidden_size, I = c->intermediate_size, E = c->num_experts, K = c->num_experts_per_tok;
	double Is = c->shared_expert_intermediate_size ? c->shared_expert_intermediate_size : I;
	double L = moe_config_n_moe_layers(c), Ld = c->n_dense_layers, V = c->vocab_size;
	double attn = 4 * D * D;
	double moe = K * 3 * D * I + c->n_shared_experts * 3 * D * Is + D * E;
	double dense = 4 * D * D + 3 * D * c->dense_intermediate_size;
	double params = L * (attn + moe) + Ld * dense + D * V;
	double attn_sc = (L + Ld) * 2 * 2 * (double)T * D / 2;
	return 6 * params + 3 * attn_sc;
}

static int cmp_d(const void *a, const void *b)
{
	double x = *(const double *)a, y = *(const double *)b;
	return x < y ? -1 : x > y;
}

int main(int argc, char **argv)
{
	const char *model = "share/models/seed-base.json";
	int B = 16, T = 2048, steps = 8, warm = 3, prof = 0, full = 0, lc = 0, zipf = 0, plans = 0, endsync = 0, c;
	double clip = 1.0;
	struct moe_error err = {0};
	while ((c = getopt(argc, argv, "m:B:T:n:w:pRc:L:ZGS")) != -1) {
		switch (c) {
		case 'm': model = optarg; break;
		case 'B': B = atoi(optarg); break;
		case 'T': T = atoi(optarg); break;
		case 'n': steps = atoi(optarg); break;
		case 'w': warm = atoi(optarg); break;
		case 'p': prof = 1; break;
		case 'R': full = 1; break;
		case 'c': clip = atof(optarg); break;
		case 'L': lc = atoi(optarg); break;
		case 'Z': zipf = 1; break;
		case 'G': plans = 1; break;
		case 'S': endsync = 1; break;
		default:
			fprintf(stderr, "usage: bench_cuda [-m MODEL] [-B N] [-T N] [-n STEPS] [-w WARMUP] [-p] [-R] [-c CLIP] "
					"[-L ROWS] [-Z] [-G] [-S]\n");
			return 2;
		}
	}
	if (prof)
		setenv("MOE_CUDA_PROFILE", "1", 1);
	struct moe_config cfg;
	if (moe_config_load(&cfg, model, &err) < 0) {
		fprintf(stderr, "bench_cuda: %s\n", err.msg);
		return 1;
	}
	struct moe_backend *be = moe_backend_cuda(&err);
	struct moe_model *m = be ? moe_model_new(&cfg, be, &err) : NULL;
	if (!m || moe_model_init(m, 1, &err) < 0) {
		fprintf(stderr, "bench_cuda: %s\n", err.msg);
		return 1;
	}
	if (full)
		moe_model_set_recompute(m, MOE_RECOMPUTE_FULL);
	if (lc > 0)
		moe_model_set_logits_chunk(m, lc);
	/* the seed's optimizer settings (torch_ref: AdamW lr 7.5e-4, clip 1.0) */
	struct moe_optim opt;
	struct moe_optim_opts oo = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
				    .decay = MOE_DECAY_ALL, .clip_groups = MOE_CLIP_EXPERT, .clip = clip,
				    .clip_expert = -1};
	if (moe_optim_init(&opt, m, &oo, &err) < 0) {
		fprintf(stderr, "bench_cuda: %s\n", err.msg);
		return 1;
	}
	fprintf(stderr, "%zu optimizer spans\n", opt.n_spans);
	int N = B * T;
	int32_t *x = malloc(sizeof(int32_t) * N), *y = malloc(sizeof(int32_t) * N);
	uint64_t r = 88172645463325252ull;
	int nv = cfg.vocab_size - 2;
	double *cdf = zipf ? malloc(sizeof(double) * nv) : NULL; /* p(rank k) ~ 1 / k */
	for (int k = 0; cdf && k < nv; k++)
		cdf[k] = (k ? cdf[k - 1] : 0.0) + 1.0 / (k + 1);
	for (int i = 0; i < N; i++) {
		r ^= r << 13, r ^= r >> 7, r ^= r << 17;
		if (!cdf) {
			x[i] = 2 + (int32_t)(r % (uint64_t)nv);
			continue;
		}
		double u = (double)(r >> 11) * (1.0 / 9007199254740992.0) * cdf[nv - 1];
		int lo = 0, hi = nv - 1; /* the first rank whose cumulative weight passes u */
		while (lo < hi) {
			int mid = (lo + hi) / 2;
			if (cdf[mid] < u)
				lo = mid + 1;
			else
				hi = mid;
		}
		x[i] = 2 + lo;
	}
	free(cdf);
	for (int i = 0; i < N; i++)
		y[i] = (i % T == T - 1) ? cfg.pad_token_id : x[i + 1];
	struct moe_forward_opts o = {0};
	o.train = true;
	int total = warm + steps + (prof ? 1 : 0);
	double *ms = malloc(sizeof(double) * total);
	struct moe_losses ls = {0};
	double tw0 = 0, tw1 = 0;
	for (int s = 0; s < total; s++) {
		if (prof && s == total - 1)
			moe_cuda_profile_report(be, NULL, true);
		if (s == warm || s == warm + steps) { /* the timed steps, whole: every stream drained */
			cudaDeviceSynchronize();
			*(s == warm ? &tw0 : &tw1) = moe_now();
		}
		if (be->status(be, &err) < 0)
			break;
		double t0 = moe_now();
		moe_model_zero_grad(m);
		if (moe_model_forward(m, x, y, B, T, &o, &ls, &err) < 0 || moe_model_backward(m, 1.0f, &err) < 0)
			break;
		struct moe_clip_stats cs;
		moe_optim_clip(&opt, &cs);
		moe_optim_step(&opt, 7.5e-4);
		/* no synchronisation, as moe-train: AdamW runs while the host
		 * starts the next step (its forward's read-back waits for it) */
		if ((prof && s == total - 1) || endsync) /* the profiled step's wall time: to its end */
			cudaDeviceSynchronize();
		if (be->status(be, &err) < 0)
			break;
		ms[s] = (moe_now() - t0) * 1e3;
		fprintf(stderr, "step %d: %.1f ms loss %.4f (ce %.4f aux %.4f) clip factors %.3g %.3g\n", s, ms[s],
			ls.total, ls.ce, ls.aux, cs.coef_other, cs.coef_expert);
	}
	if (err.code) {
		fprintf(stderr, "bench_cuda: %s\n", err.msg);
		return 1;
	}
	if (!prof) {
		cudaDeviceSynchronize();
		tw1 = moe_now();
	}
	/* step_ms: wall time of the timed steps over their number, from an idle
	 * device to an idle device (including the host's work between steps);
	 * median_ms: the median of the host's per-step times (from a step's
	 * start to its optimizer's launches; each includes the wait for the
	 * last step's optimizer at the forward's read-back) */
	double wall = (tw1 - tw0) * 1e3 / steps;
	qsort(ms + warm, steps, sizeof(double), cmp_d);
	double med = ms[warm + steps / 2];
	double tps = N / (wall / 1e3);
	double tf = tps * flops_per_token(&cfg, T) / 1e12;
	size_t fr = 0, tot = 0;
	cudaMemGetInfo(&fr, &tot);
	const char *gm = getenv("MOE_CUDA_GROUPED"), *wg = getenv("MOE_CUDA_WGRAD");
	printf("{\"name\": \"moe/cuda%s%s%s%s%s\", \"model\": \"%s\", \"B\": %d, \"T\": %d, \"step_ms\": %.2f, "
	       "\"median_ms\": %.2f, \"tok_per_s\": %.0f, \"tflops\": %.1f, \"mfu_h100_989\": %.3f, \"peak_gib\": %.2f, "
	       "\"device_used_gib\": %.2f, \"flops_per_token\": %.0f, \"loss\": %.4f}\n",
	       gm ? "/grouped=" : "", gm ? gm : "", wg ? "/wgrad=" : "", wg ? wg : "", full ? "/recompute=full" : "", model,
	       B, T, wall, med, tps, tf, tf / 989.0,
	       moe_cuda_peak_bytes(be) / 1073741824.0, (tot - fr) / 1073741824.0, flops_per_token(&cfg, T),
	       ls.total);
	if (prof) {
		printf("# per-op time of one step (CUDA events around each backend op; ms)\n");
		moe_cuda_profile_report(be, stdout, false);
		printf("# wall time of the profiled step: %.1f ms\n", ms[total - 1]);
	}
	if (plans)
		moe_cuda_gemm_plans(be, stdout);
	fflush(stdout);
	moe_optim_release(&opt);
	moe_model_free(m);
	return 0;
}
