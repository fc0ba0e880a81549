/* One whole training step (forward, loss, backward) of the CUDA backend
 * against the CPU fp32 backend on a tiny config with every feature of the
 * seed's model (dense layer, shared expert, QK-norm, z-loss, aux loss):
 * same weights, same tokens.  Tolerances (bf16 activations and weights on
 * the GPU): loss parts within 1e-2 relative; per-tensor gradient cosine
 * similarity >= 0.99 for every tensor outside the routed experts, >= 0.95
 * for routed experts that both backends gave the same tokens, >= 0.5 for
 * those they did not (bf16 rounding flips a few near-tied top-k choices, and
 * a flipped token moves its whole contribution between two experts), mean
 * over all tensors >= 0.99; at least 97% of the top-k choices identical.
 * The table of cosines goes to stderr (the test's log).  Skipped when there
 * is no CUDA device. */
#include <stdio.h>

#include "gpu_util.h"
#include "model/model.h"
#include "train/train.h"

static void tiny_config(struct moe_config *c)
{
	moe_config_defaults(c);
	c->vocab_size = 512;
	c->hidden_size = 128;
	c->intermediate_size = 64;
	c->num_hidden_layers = 3;
	c->num_attention_heads = 4; /* Dh 32 */
	c->num_experts = 8;
	c->num_experts_per_tok = 2;
	c->norm_topk_prob = false;
	c->max_position_embeddings = 128;
	c->pad_token_id = 1;
	c->eos_token_id = 0;
	c->n_shared_experts = 1;
	c->shared_expert_intermediate_size = 64;
	c->n_dense_layers = 1;
	c->dense_intermediate_size = 256;
	c->router_aux_loss_coef = 0.01;
	c->router_aux_loss_coef_end = 0.01;
	c->router_z_loss_coef = 0.001;
}

/* max |x - ref| over n elements (NaN in x ignored, as fmax does); *ref_max:
 * max |ref| */
static double max_diff(const float *x, const float *ref, size_t n, double *ref_max)
{
	double d = 0, m = 0;
	for (size_t j = 0; j < n; j++) {
		m = fmax(m, fabs(ref[j]));
		d = fmax(d, fabs((double)x[j] - ref[j]));
	}
	if (ref_max)
		*ref_max = m;
	return d;
}

static double cosine(const float *a, const float *b, size_t n)
{
	double ab = 0, aa = 0, bb = 0;
	for (size_t i = 0; i < n; i++) {
		ab += (double)a[i] * b[i];
		aa += (double)a[i] * a[i];
		bb += (double)b[i] * b[i];
	}
	if (aa == 0 && bb == 0)
		return 1.0;
	return ab / sqrt(aa * bb + 1e-300);
}

/* One training step (forward, losses, backward) of config cfg on the CUDA
 * backend against the CPU backend from the same weights: losses within 1%,
 * 97% of the top-k choices identical, every trainable tensor's gradient
 * cosine at least 0.99 (0.95 for experts), their mean at least 0.99. */
/* Tokens that one capture routes to expert ex of MoE layer lm and the other
 * does not (top-k ids (Lm, N, K)). */
static int routed_set_diff(const int32_t *a, const int32_t *b, int lm, int ex, int N, int K)
{
	int d = 0;
	for (int n = 0; n < N; n++) {
		const int32_t *ra = a + ((size_t)lm * N + n) * K, *rb = b + ((size_t)lm * N + n) * K;
		bool ia = false, ib = false;
		for (int k = 0; k < K; k++) {
			ia |= ra[k] == ex;
			ib |= rb[k] == ex;
		}
		d += ia != ib;
	}
	return d;
}

static void step_matches_cpu(struct moe_config cfg, const char *name, int B, int T)
{
	struct moe_error err = {0};
	cr_assert_eq(moe_config_validate(&cfg, name, &err), 0, "%s", err.msg);
	fprintf(stderr, "%s (head size %d, attention forward %s, backward %s), B=%d T=%d\n", name,
		cfg.hidden_size / cfg.num_attention_heads,
		moe_cuda_attention_fwd_name(cfg.hidden_size / cfg.num_attention_heads),
		moe_cuda_attention_bwd_name(cfg.hidden_size / cfg.num_attention_heads), B, T);
	struct moe_model *mc = moe_model_new(&cfg, moe_backend_cpu(), &err);
	cr_assert_not_null(mc, "%s", err.msg);
	struct moe_backend *gb = moe_backend_cuda(&err);
	cr_assert_not_null(gb, "%s", err.msg);
	struct moe_model *mg = moe_model_new(&cfg, gb, &err);
	cr_assert_not_null(mg, "%s", err.msg);
	cr_assert_eq(moe_model_init(mc, 1234, &err), 0, "%s", err.msg);
	size_t np = moe_model_num_params(mc);
	float *p = malloc(np * 4), *gcpu = malloc(np * 4), *ggpu = malloc(np * 4);
	moe_model_get_params(mc, p);
	moe_model_set_params(mg, p);

	int N = B * T;
	int32_t *tok = malloc((N + 1) * 4), *x = malloc(N * 4), *y = malloc(N * 4);
	rng_seed(99);
	for (int i = 0; i <= N; i++)
		tok[i] = 2 + (int32_t)(rng_u64() % (cfg.vocab_size - 2));
	for (int i = 0; i < N; i++) {
		x[i] = tok[i];
		y[i] = (i % 17 == 5) ? cfg.pad_token_id : tok[i + 1]; /* some ignored targets */
	}
	int Lm = moe_config_n_moe_layers(&cfg), K = cfg.num_experts_per_tok;
	size_t nsel = (size_t)Lm * N * K;
	struct moe_routing_capture capc = {malloc(nsel * 4), malloc(nsel * 4), NULL};
	struct moe_routing_capture capg = {malloc(nsel * 4), malloc(nsel * 4), NULL};
	struct moe_forward_opts o = {0}, og = {0};
	o.train = true;
	o.capture = &capc;
	og.train = true;
	og.capture = &capg;
	struct moe_losses lc, lg;
	moe_model_zero_grad(mc);
	moe_model_zero_grad(mg);
	cr_assert_eq(moe_model_forward(mc, x, y, B, T, &o, &lc, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(mc, 1.0f, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_forward(mg, x, y, B, T, &og, &lg, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(mg, 1.0f, &err), 0, "%s", err.msg);
	fprintf(stderr, "loss   cpu %.6f  cuda %.6f\nce     cpu %.6f  cuda %.6f\naux    cpu %.6f  cuda %.6f\n"
		"z      cpu %.6f  cuda %.6f\n", lc.total, lg.total, lc.ce, lg.ce, lc.aux, lg.aux, lc.z, lg.z);
	cr_expect(fabs(lg.ce - lc.ce) <= 1e-2 * fabs(lc.ce), "ce %.6f vs %.6f", lg.ce, lc.ce);
	cr_expect(fabs(lg.total - lc.total) <= 1e-2 * fabs(lc.total), "total %.6f vs %.6f", lg.total, lc.total);
	cr_expect(fabs(lg.aux - lc.aux) <= 1e-2 * fabs(lc.aux), "aux %.6f vs %.6f", lg.aux, lc.aux);
	cr_expect(fabs(lg.z - lc.z) <= 2e-2 * fabs(lc.z) + 1e-6, "z %.6f vs %.6f", lg.z, lc.z);
	cr_expect_eq(lg.n_valid, lc.n_valid);
	size_t same = 0;
	for (size_t i = 0; i < nsel; i++)
		same += capc.topk_idx[i] == capg.topk_idx[i];
	fprintf(stderr, "top-k choices identical: %zu of %zu (%.2f%%)\n", same, nsel, 100.0 * same / nsel);
	cr_expect(same >= 0.97 * nsel, "only %zu of %zu top-k choices identical", same, nsel);

	moe_model_get_grads(mc, gcpu);
	moe_model_get_grads(mg, ggpu);
	size_t nt = 0;
	const struct moe_param *tab = moe_model_params(mc, &nt);
	/* the mean over the tensors both backends computed from the same
	 * tokens (sum, counted) and, reported apart, over the routed experts
	 * that got a different set (fsum, flipped) */
	double sum = 0, mn = 2, fsum = 0;
	int counted = 0, flipped = 0;
	fprintf(stderr, "%-58s %10s %12s\n", "tensor", "cosine", "|g| cpu");
	for (size_t i = 0; i < nt; i++) {
		if (!tab[i].trainable)
			continue;
		double c = cosine(ggpu + tab[i].offset, gcpu + tab[i].offset, tab[i].numel);
		double g2 = 0;
		for (size_t j = 0; j < tab[i].numel; j++)
			g2 += (double)gcpu[tab[i].offset + j] * gcpu[tab[i].offset + j];
		/* a routed expert's gradient sums over the tokens routed to it: where
		 * the two backends routed a different set of tokens to it (a
		 * near-tied top-k choice rounded the other way), one token more or
		 * less moves it legitimately; such experts only have to keep
		 * pointing the same way, the others are held to 0.95 */
		double tol = tab[i].kind == MOE_P_EXPERT ? 0.95 : 0.99;
		int flips = 0, ex = -1;
		if (tab[i].kind == MOE_P_EXPERT && tab[i].layer >= cfg.n_dense_layers &&
		    sscanf(tab[i].name, "model.layers.%*d.mlp.experts.%d.", &ex) == 1) {
			flips = routed_set_diff(capc.topk_idx, capg.topk_idx, tab[i].layer - cfg.n_dense_layers, ex,
						N, K);
			if (flips > 0)
				tol = 0.5;
		}
		fprintf(stderr, "%-58s %10.6f %12.4g%s\n", tab[i].name, c, sqrt(g2),
			flips ? " (tokens routed differently)" : "");
		if (flips) {
			fsum += c;
			flipped++;
		} else {
			sum += c;
			counted++;
		}
		mn = c < mn ? c : mn;
		cr_expect(c >= tol, "%s: gradient cosine %.4f < %.2f (%d tokens routed to it by one backend only)",
			  tab[i].name, c, tol, flips);
	}
	fprintf(stderr, "gradient cosine over %d tensors: mean %.6f, min %.6f; the %d with the same tokens: mean %.6f\n",
		counted + flipped, (sum + fsum) / (counted + flipped), mn, counted, sum / counted);
	/* one near-tied top-k choice rounded the other way moves a lightly used
	 * expert's gradient a lot (a token of a few), and which choices flip
	 * changes with any rounding (session 14: the 128-key attention forward
	 * flipped one more of 1600 and took the mean over all tensors from
	 * 0.9958 to 0.9898 through two experts at 0.88, while the others kept
	 * 0.9999): the mean bound holds the tensors with the same tokens */
	cr_expect(sum / counted >= 0.999, "%s: mean gradient cosine %.5f < 0.999 over the %d tensors with the same tokens",
		  name, sum / counted, counted);
	free(p), free(gcpu), free(ggpu), free(tok), free(x), free(y);
	free(capc.topk_idx), free(capc.topk_w), free(capg.topk_idx), free(capg.topk_w);
	moe_model_free(mc);
	moe_model_free(mg);
}

Test(backend, train_step_matches_cpu, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	step_matches_cpu(cfg, "tiny", 2, 96);
}

/* The same at the head sizes of the presets, where the attention runs the
 * sm_90 kernels inside the model (fa3pk128 forward; fa3f backward at 96
 * and 128, fa3 at 64): q and k from the QK-norm's buffers, v in the
 * side-by-side projections; T not a multiple of the kernels' 64- and
 * 128-row tiles.  The tiny config at hidden size `hidden` in `heads`
 * heads. */
static void step_matches_cpu_heads(int hidden, int heads, const char *name)
{
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.hidden_size = hidden;
	cfg.num_attention_heads = heads;
	cfg.max_position_embeddings = 256;
	step_matches_cpu(cfg, name, 2, 200);
}

Test(backend, train_step_matches_cpu_dh96, .timeout = 120)
{
	NEED_GPU();
	step_matches_cpu_heads(384, 4, "tiny, hidden 384");
}

Test(backend, train_step_matches_cpu_dh128, .timeout = 120)
{
	NEED_GPU();
	step_matches_cpu_heads(256, 2, "tiny, hidden 256");
}

Test(backend, train_step_matches_cpu_dh64, .timeout = 120)
{
	NEED_GPU();
	cr_assert_str_eq(moe_cuda_attention_fwd_name(64), "fa3pk128");
	cr_assert_str_eq(moe_cuda_attention_bwd_name(64), "fa3");
	step_matches_cpu_heads(256, 4, "tiny, hidden 256, 4 heads");
}

/* Two shared experts, which the CUDA backend runs side by side (one linear
 * and one SwiGLU each way, the down weights gathered by copy_rows), against
 * the CPU backend, which runs them one by one. */
Test(backend, train_step_matches_cpu_shared2, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.n_shared_experts = 2;
	step_matches_cpu(cfg, "tiny, two shared experts", 2, 96);
}

/* The expert-GEMM paths of the backend (MOE_CUDA_GROUPED: the device-driven
 * kernel, cublasGemmGroupedBatchedEx, a per-expert cuBLAS loop, the wgmma
 * kernels on sm_90) and the default path with full activation recompute
 * compute the same step: losses within 1e-3 relative, gradient cosine >=
 * 0.999 per tensor against the kernel path. */
/* The tiny config's CPU model initialised from seed: its tensor table and,
 * in *p (malloc'ed), the parameters every GPU run of a test starts from. */
/* A CPU model of config cfg initialised from seed, its parameters in *p */
static struct moe_model *cpu_params_cfg(const struct moe_config *cfg, uint64_t seed, float **p)
{
	struct moe_error err = {0};
	struct moe_model *mc = moe_model_new(cfg, moe_backend_cpu(), &err);
	cr_assert_not_null(mc, "%s", err.msg);
	cr_assert_eq(moe_model_init(mc, seed, &err), 0, "%s", err.msg);
	*p = malloc(moe_model_num_params(mc) * 4);
	moe_model_get_params(mc, *p);
	return mc;
}

/* The same of the tiny config, which it writes into *cfg */
static struct moe_model *cpu_params(struct moe_config *cfg, uint64_t seed, float **p)
{
	tiny_config(cfg);
	return cpu_params_cfg(cfg, seed, p);
}

/* n random inputs and targets in [2, V); with pad_every > 0 the targets at
 * positions 3 mod pad_every are the pad id (ignored) instead. */
static void random_tokens(int32_t *x, int32_t *y, int n, const struct moe_config *cfg, int pad_every)
{
	for (int i = 0; i < n; i++) {
		x[i] = 2 + (int32_t)(rng_u64() % (cfg->vocab_size - 2));
		y[i] = pad_every > 0 && i % pad_every == 3 ? cfg->pad_token_id
							   : 2 + (int32_t)(rng_u64() % (cfg->vocab_size - 2));
	}
}

/* A model with parameters p on a CUDA backend whose expert GEMMs take the
 * path mode (MOE_CUDA_GROUPED). */
static struct moe_model *gpu_model(const struct moe_config *cfg, const float *p, const char *mode)
{
	struct moe_error err = {0};
	setenv("MOE_CUDA_GROUPED", mode, 1);
	struct moe_backend *gb = moe_backend_cuda(&err);
	unsetenv("MOE_CUDA_GROUPED");
	cr_assert_not_null(gb, "%s", err.msg);
	struct moe_model *mg = moe_model_new(cfg, gb, &err);
	cr_assert_not_null(mg, "%s", err.msg);
	moe_model_set_params(mg, p);
	return mg;
}

/* One training step (forward, backward) of a fresh such model, its
 * gradients into grads; var=val (var may be NULL) in the environment while
 * the backend is made; the model is the caller's to free */
static struct moe_model *gpu_step_keep(const struct moe_config *cfg, const float *p, const int32_t *x,
				       const int32_t *y, int B, int T, const char *mode, const char *var,
				       const char *val, struct moe_losses *l, float *grads, bool full)
{
	struct moe_error err = {0};
	if (var)
		setenv(var, val, 1);
	struct moe_model *mg = gpu_model(cfg, p, mode);
	if (var)
		unsetenv(var);
	if (full)
		moe_model_set_recompute(mg, MOE_RECOMPUTE_FULL);
	moe_model_zero_grad(mg);
	struct moe_forward_opts o = {0};
	o.train = true;
	cr_assert_eq(moe_model_forward(mg, x, y, B, T, &o, l, &err), 0, "%s: %s", mode, err.msg);
	cr_assert_eq(moe_model_backward(mg, 1.0f, &err), 0, "%s: %s", mode, err.msg);
	moe_model_get_grads(mg, grads);
	return mg;
}

static void gpu_step(const struct moe_config *cfg, const float *p, const int32_t *x, const int32_t *y, int B,
		     int T, const char *mode, struct moe_losses *l, float *grads, bool full)
{
	moe_model_free(gpu_step_keep(cfg, p, x, y, B, T, mode, NULL, NULL, l, grads, full));
}

/* Two steps' gradients (g1 against g0) that differ by bf16 roundings of an
 * activation gradient (a sum rounded once instead of after each term):
 * every routed expert's cosine >= 0.999 (they also follow any top-k choice a
 * rounding flips), every other trainable tensor's cosine >= 0.9999 and
 * within 2e-2 of its largest element; the worst relative difference and
 * the lowest cosine of the latter into *worst, *mincos */
static void expect_rounding_close(const char *what, const struct moe_param *tab, size_t nt, const float *g1,
				  const float *g0, double *worst, double *mincos)
{
	*worst = 0, *mincos = 1;
	for (size_t i = 0; i < nt; i++) {
		if (!tab[i].trainable)
			continue;
		double mx, d = max_diff(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel, &mx);
		double c = cosine(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel);
		if (tab[i].kind == MOE_P_EXPERT) {
			cr_expect(c >= 0.999, "%s: %s: gradient cosine %.6f", what, tab[i].name, c);
		} else {
			cr_expect(c >= 0.9999 && d <= 2e-2 * mx + 1e-30, "%s: %s: cosine %.7f, differ by %.3g (max %.3g)",
				  what, tab[i].name, c, d, mx);
			*worst = fmax(*worst, mx > 0 ? d / mx : d);
			*mincos = fmin(*mincos, c);
		}
	}
}

Test(backend, expert_gemm_paths_agree, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	float *p;
	struct moe_model *mc = cpu_params(&cfg, 77, &p);
	size_t np = moe_model_num_params(mc), nt = 0;
	float *g0 = malloc(np * 4), *g1 = malloc(np * 4);
	int B = 2, T = 80, N = B * T;
	int32_t *x = malloc(N * 4), *y = malloc(N * 4);
	rng_seed(5);
	random_tokens(x, y, N, &cfg, 0);
	struct moe_losses l0, l1;
	gpu_step(&cfg, p, x, y, B, T, "kernel", &l0, g0, false);
	const struct moe_param *tab = moe_model_params(mc, &nt);
	/* the last run: the default path with full activation recompute */
	bool wg = moe_cuda_grouped_wgmma_supported(); /* wgmma, tma: sm_90 only */
	const char *modes[5] = {"cublas-grouped", "cublas", "wgmma", "tma", wg ? "tma" : "cublas-grouped"};
	const char *names[5] = {"cublas-grouped", "cublas", "wgmma", "tma", "default + recompute full"};
	int nm = 5;
	if (!wg) {
		modes[2] = modes[4];
		names[2] = names[4];
		nm = 3;
	}
	for (int k = 0; k < nm; k++) {
		gpu_step(&cfg, p, x, y, B, T, modes[k], &l1, g1, k == nm - 1);
		cr_expect(fabs(l1.total - l0.total) <= 1e-3 * fabs(l0.total), "%s: loss %.6f vs %.6f", names[k],
			  l1.total, l0.total);
		double mn = 2;
		for (size_t i = 0; i < nt; i++) {
			if (!tab[i].trainable)
				continue;
			double c = cosine(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel);
			mn = c < mn ? c : mn;
			cr_expect(c >= 0.999, "%s: %s: gradient cosine %.5f", names[k], tab[i].name, c);
		}
		fprintf(stderr, "expert GEMMs '%s' vs 'kernel': loss %.6f vs %.6f, min gradient cosine %.6f\n", names[k],
			l1.total, l0.total, mn);
	}
	moe_model_free(mc);
}

/* The query's QK-norm + RoPE backward reading fa3f's fp32 dQ tiles
 * (attention_qknorm_bwd, the default) against dq converted to bf16 first
 * (MOE_CUDA_DQ_FUSE=0): one training step from the same weights and tokens
 * at Dh 96 and 128, T not a multiple of the 64-row tiles: the same loss and
 * every gradient bit for bit (the kernel rounds each value to bf16 as the
 * conversion does). */
static void dq_fuse_case(int hidden, int heads)
{
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.hidden_size = hidden;
	cfg.num_attention_heads = heads;
	cfg.max_position_embeddings = 256;
	float *p;
	struct moe_model *mc = cpu_params_cfg(&cfg, 57, &p);
	size_t np = moe_model_num_params(mc), nt = 0;
	const struct moe_param *tab = moe_model_params(mc, &nt);
	float *g0 = malloc(np * 4), *g1 = malloc(np * 4);
	int B = 2, T = 200, N = B * T;
	int32_t *x = malloc(N * 4), *y = malloc(N * 4);
	rng_seed(61);
	random_tokens(x, y, N, &cfg, 0);
	struct moe_losses l[2];
	const char *mode = moe_cuda_grouped_tma_supported() ? "tma" : "wgmma";
	for (int fuse = 0; fuse <= 1; fuse++) {
		struct moe_model *mg = gpu_step_keep(&cfg, p, x, y, B, T, mode, fuse ? NULL : "MOE_CUDA_DQ_FUSE", "0",
						     &l[fuse], fuse ? g1 : g0, false);
		/* every layer's attention backward took the path asked for */
		size_t reads = moe_cuda_dq_tile_reads(moe_model_backend(mg));
		cr_expect_eq(reads, fuse ? (size_t)cfg.num_hidden_layers : 0, "Dh %d, fuse %d: %zu dQ tile reads",
			     hidden / heads, fuse, reads);
		moe_model_free(mg);
	}
	struct moe_losses l0 = l[0], l1 = l[1];
	cr_expect(l1.total == l0.total, "Dh %d: loss %.9g fused vs %.9g", hidden / heads, l1.total, l0.total);
	int differ = 0, counted = 0;
	for (size_t i = 0; i < nt; i++) {
		if (!tab[i].trainable)
			continue;
		counted++;
		if (memcmp(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel * 4) != 0) {
			differ++;
			cr_expect(false, "Dh %d: %s: gradient differs (by up to %.3g)", hidden / heads, tab[i].name,
				  max_diff(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel, NULL));
		}
	}
	fprintf(stderr, "dq from fp32 tiles vs converted, Dh %d: loss %.8f vs %.8f, %d of %d tensors differ\n",
		hidden / heads, l1.total, l0.total, differ, counted);
	free(p), free(g0), free(g1), free(x), free(y);
	moe_model_free(mc);
}

Test(backend, dq_fusion_same_step, .timeout = 120)
{
	NEED_GPU();
	if (!moe_cuda_grouped_wgmma_supported())
		cr_skip_test("not an sm_90 device: no fa3f");
	const char *bwd = moe_cuda_attention_bwd_name(96);
	if (strcmp(bwd, "fa3f") != 0)
		cr_skip_test("the attention backward in use (%s) writes dq itself", bwd);
	dq_fuse_case(384, 4);
	dq_fuse_case(256, 2);
}

/* Gradients by overwrite (grad_overwrite_ok): after moe_model_zero_grad the
 * first backward stores its gradients instead of adding them.  With the
 * gradient memory filled with NaN beforehand, two micro-batches (the second
 * adds) must give the gradients of the same backend with a real memset:
 * any element an op fails to store stays NaN and fails the test.  Per
 * tensor, max |difference| <= 1e-5 max |g| (the norm weights' block sums
 * are added with atomics, in no fixed order).  Every expert-GEMM path, with
 * the model clearing the runs that ops add into (grad_cleared: an op that
 * adds into a region nobody cleared leaves NaN) and with each op clearing
 * its own. */
static void overwrite_steps(const struct moe_config *cfg, const float *p, const int32_t *x, const int32_t *y,
			    int B, int T, const char *mode, bool overwrite, bool cleared, float *grads)
{
	struct moe_error err = {0};
	struct moe_model *mg = gpu_model(cfg, p, mode);
	struct moe_backend *gb = moe_model_backend(mg);
	if (overwrite)
		cr_assert(gb->grad_overwrite_ok, "the CUDA backend stores gradients by overwrite");
	if (cleared)
		cr_assert_not_null(gb->grad_cleared, "the CUDA backend takes the model's cleared runs");
	gb->grad_overwrite_ok = overwrite;
	if (!cleared)
		gb->grad_cleared = NULL;
	size_t np = moe_model_num_params(mg);
	float *nan = malloc(np * 4);
	for (size_t i = 0; i < np; i++)
		nan[i] = NAN;
	gb->from_host(gb, gb->grad(gb, 0), nan, np, MOE_BUF_F32);
	free(nan);
	moe_model_zero_grad(mg);
	struct moe_forward_opts o = {0};
	o.train = true;
	struct moe_losses l;
	int N = B * T;
	for (int mb = 0; mb < 2; mb++) {
		cr_assert_eq(moe_model_forward(mg, x + mb * N, y + mb * N, B, T, &o, &l, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(mg, 0.5f, &err), 0, "%s", err.msg);
	}
	moe_model_get_grads(mg, grads);
	moe_model_free(mg);
}

Test(backend, grads_by_overwrite, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	float *p;
	struct moe_model *mc = cpu_params(&cfg, 17, &p);
	size_t np = moe_model_num_params(mc), nt = 0;
	const struct moe_param *tab = moe_model_params(mc, &nt);
	float *g0 = malloc(np * 4), *g1 = malloc(np * 4);
	int B = 2, T = 64, N = B * T;
	int32_t *x = malloc(2 * N * 4), *y = malloc(2 * N * 4);
	rng_seed(8);
	random_tokens(x, y, 2 * N, &cfg, 13);
	const char *modes[5] = {"kernel", "cublas-grouped", "cublas", "wgmma", "tma"};
	int nm = moe_cuda_grouped_wgmma_supported() ? 5 : 3;
	for (int k = 0; k < 2 * nm; k++) { /* then the ops clearing their own regions */
		overwrite_steps(&cfg, p, x, y, B, T, modes[k % nm], false, false, g0);
		overwrite_steps(&cfg, p, x, y, B, T, modes[k % nm], true, k < nm, g1);
		double worst = 0;
		for (size_t i = 0; i < nt; i++) {
			double mx, d = max_diff(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel, &mx);
			bool bad = false;
			for (size_t j = tab[i].offset; j < tab[i].offset + tab[i].numel; j++)
				bad |= !isfinite(g1[j]);
			cr_expect(!bad, "%s: %s: a gradient element was never stored (NaN left)", modes[k % nm],
				  tab[i].name);
			cr_expect(d <= 1e-5 * mx + 1e-30, "%s: %s: max difference %.3g of max %.3g", modes[k % nm],
				  tab[i].name, d, mx);
			worst = fmax(worst, mx > 0 ? d / mx : d);
		}
		fprintf(stderr, "gradients by overwrite (%s), expert GEMMs '%s': worst relative difference %.3g\n",
			k < nm ? "cleared runs" : "each op clears", modes[k % nm], worst);
	}
	free(p);
	free(g0);
	free(g1);
	free(x);
	free(y);
	moe_model_free(mc);
}

/* The small transfers that do not wait: uploads through the pinned
 * buffers (more of them than there are buffers, each source overwritten
 * right after its call, so a copy that read the caller's memory late
 * would show it), and read-backs delivered at the next sync
 * (to_host_later): the destination untouched before it, the values of
 * the buffer at the request's place in the stream after it (the buffer is
 * overwritten by a later upload in the same stream). */
Test(backend, transfers_without_waiting, .timeout = 60)
{
	NEED_GPU();
	struct moe_error err = {0};
	struct moe_backend *be = moe_backend_cuda(&err);
	cr_assert_not_null(be, "%s", err.msg);
	cr_assert_not_null(be->to_host_later);
	enum { NB = 7, N = 1000 };
	int32_t *d[NB], host[N], back[NB][N], later[NB][N];
	for (int b = 0; b < NB; b++)
		d[b] = be->alloc(be, N, MOE_BUF_I32);
	for (int b = 0; b < NB; b++) {
		for (int i = 0; i < N; i++)
			host[i] = b * 100000 + i;
		be->from_host(be, d[b], host, N, MOE_BUF_I32);
		memset(host, 0xee, sizeof host); /* the call has taken its own copy */
	}
	for (int b = 0; b < NB; b++) {
		memset(later[b], 0x5a, sizeof later[b]);
		be->to_host_later(be, later[b], d[b], N, MOE_BUF_I32);
		for (int i = 0; i < N; i++)
			host[i] = -1;
		be->from_host(be, d[b], host, N, MOE_BUF_I32); /* after the read-back, in the stream */
	}
	for (int b = 0; b < NB; b++)
		for (int i = 0; i < N; i++)
			cr_assert_eq(later[b][i], 0x5a5a5a5a, "buffer %d word %d delivered before the sync", b, i);
	cr_assert_eq(be->sync(be, &err), 0, "%s", err.msg);
	for (int b = 0; b < NB; b++) {
		be->to_host(be, back[b], d[b], N, MOE_BUF_I32);
		for (int i = 0; i < N; i++) {
			cr_assert_eq(later[b][i], b * 100000 + i, "buffer %d word %d: read back %d", b, i, later[b][i]);
			cr_assert_eq(back[b][i], -1, "buffer %d word %d: %d after the second upload", b, i, back[b][i]);
		}
	}
	/* more read-backs than wait at once (16), one larger than the pinned
	 * buffer's first size (64 KiB): those ahead are delivered early */
	int32_t *big = be->alloc(be, 40000, MOE_BUF_I32), *hb = malloc(40000 * 4), *lb = malloc(40000 * 4);
	for (int i = 0; i < 40000; i++)
		hb[i] = 7 * i + 1;
	be->from_host(be, big, hb, 40000, MOE_BUF_I32);
	int32_t many[20][N];
	for (int k = 0; k < 20; k++)
		be->to_host_later(be, many[k], d[k % NB], N, MOE_BUF_I32);
	be->to_host_later(be, lb, big, 40000, MOE_BUF_F32);
	cr_assert_eq(be->sync(be, &err), 0, "%s", err.msg);
	for (int k = 0; k < 20; k++)
		for (int i = 0; i < N; i++)
			cr_assert_eq(many[k][i], -1, "read-back %d word %d: %d", k, i, many[k][i]);
	cr_assert(memcmp(lb, hb, 40000 * 4) == 0, "the large read-back differs");
	free(hb);
	free(lb);
	be->free(be, big);
	for (int b = 0; b < NB; b++)
		be->free(be, d[b]);
	be->destroy(be);
}

/* The router's linears as the backend runs them on sm_90 (the forward
 * through the one-group wgmma kernel, MOE_CUDA_NARROW) against cuBLAS
 * (MOE_CUDA_NARROW=cublas) at 2048 rows x 768 -> 64: relative error <= 1e-2
 * (bf16 outputs, fp32 sums in different orders); the input gradient, on
 * cuBLAS both ways, as a check of the op. */
static void narrow_run(bool cublas, const float *x, const float *w, const float *dy, float *out, float *dx, int N,
		       int In, int Out)
{
	struct moe_error err = {0};
	if (cublas)
		setenv("MOE_CUDA_NARROW", "cublas", 1);
	struct moe_backend *be = moe_backend_cuda(&err);
	unsetenv("MOE_CUDA_NARROW");
	cr_assert_not_null(be, "%s", err.msg);
	void *gx = be->alloc(be, (size_t)N * In, MOE_BUF_ACT), *gw = be->alloc(be, (size_t)Out * In, MOE_BUF_ACT);
	void *gdy = be->alloc(be, (size_t)N * Out, MOE_BUF_ACT), *go = be->alloc(be, (size_t)N * Out, MOE_BUF_ACT);
	void *gdx = be->alloc(be, (size_t)N * In, MOE_BUF_ACT);
	be->from_host(be, gx, x, (size_t)N * In, MOE_BUF_ACT);
	be->from_host(be, gw, w, (size_t)Out * In, MOE_BUF_ACT);
	be->from_host(be, gdy, dy, (size_t)N * Out, MOE_BUF_ACT);
	be->linear_fwd(be, go, gx, gw, N, In, Out);
	be->linear_bwd(be, gdx, NULL, gdy, gx, gw, N, In, Out);
	cr_assert_eq(be->sync(be, &err), 0, "%s", err.msg);
	be->to_host(be, out, go, (size_t)N * Out, MOE_BUF_ACT);
	be->to_host(be, dx, gdx, (size_t)N * In, MOE_BUF_ACT);
	be->destroy(be);
}

Test(backend, narrow_linears_match_cublas, .timeout = 60)
{
	NEED_GPU();
	int N = 2048, In = 768, Out = 64;
	rng_seed(21);
	float *x = rand_bf((size_t)N * In, 1.f), *w = rand_bf((size_t)Out * In, 0.1f), *dy = rand_bf((size_t)N * Out, 1.f);
	float *o0 = malloc((size_t)N * Out * 4), *o1 = malloc((size_t)N * Out * 4);
	float *d0 = malloc((size_t)N * In * 4), *d1 = malloc((size_t)N * In * 4);
	narrow_run(true, x, w, dy, o0, d0, N, In, Out);
	narrow_run(false, x, w, dy, o1, d1, N, In, Out);
	CHECK_REL(o1, o0, (size_t)N * Out, 1e-2, "router forward, wgmma vs cuBLAS");
	CHECK_REL(d1, d0, (size_t)N * In, 1e-2, "router input gradient, wgmma vs cuBLAS");
	free(x);
	free(w);
	free(dy);
	free(o0);
	free(o1);
	free(d0);
	free(d1);
}

static int last_packed;   /* the last train_steps backend's packed master ranges */
static size_t last_returned; /* and the bytes of masters' storage it returned */
static bool last_ostream; /* and whether it ran AdamW on the optimizer stream */

/* The tests' optimizer: AdamW with every matrix decayed (on the CUDA
 * backend: every matrix span packed), two-group clipping */
static const struct moe_optim_opts test_optim = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
						 .decay = MOE_DECAY_MATRICES, .clip_groups = MOE_CLIP_EXPERT,
						 .clip = 1.0, .clip_expert = -1};

/* A model with parameters p on a CUDA backend (the default expert path)
 * and, in *o, its optimizer initialised (which packs the masters) */
static struct moe_model *gpu_model_optim(const struct moe_config *cfg, const float *p, struct moe_optim *o)
{
	struct moe_error err = {0};
	struct moe_model *mg = gpu_model(cfg, p, moe_cuda_grouped_wgmma_supported() ? "tma" : "kernel");
	cr_assert_eq(moe_optim_init(o, mg, &test_optim, &err), 0, "%s", err.msg);
	return mg;
}

/* steps training steps of cfg from weights p, B x T tokens a step from x, y,
 * with the optimizer as moe-train runs it: losses, masters and AdamW m out */
static void train_steps(const struct moe_config *cfg, const float *p, const int32_t *x, const int32_t *y, int B,
			int T, int steps, bool det, double *loss, float *params, float *mom)
{
	struct moe_error err = {0};
	struct moe_optim o;
	setenv("MOE_CUDA_DETERMINISTIC", det ? "1" : "0", 1);
	struct moe_model *mg = gpu_model_optim(cfg, p, &o);
	unsetenv("MOE_CUDA_DETERMINISTIC");
	struct moe_backend *gb = moe_model_backend(mg);
	int N = B * T;
	struct moe_forward_opts fo = {0};
	fo.train = true;
	for (int s = 0; s < steps; s++) {
		struct moe_losses l;
		struct moe_clip_stats cs;
		moe_model_zero_grad(mg);
		cr_assert_eq(moe_model_forward(mg, x + s * N, y + s * N, B, T, &fo, &l, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(mg, 1.0f, &err), 0, "%s", err.msg);
		moe_optim_clip(&o, &cs);
		moe_optim_step(&o, 1e-2);
		cr_assert_eq(moe_model_update_bias(mg, moe_model_expert_counts(mg), 1e-3f, &err), 0, "%s", err.msg);
		loss[s] = l.total;
	}
	moe_model_get_params(mg, params);
	gb->to_host(gb, mom, o.m, o.n, MOE_BUF_F32);
	cr_assert_eq(gb->sync(gb, &err), 0, "%s", err.msg);
	last_packed = moe_cuda_packed_ranges(gb);
	last_returned = moe_cuda_masters_returned(gb);
	last_ostream = moe_cuda_opt_stream(gb);
	moe_optim_release(&o);
	moe_model_free(mg);
}

/* Four training steps twice from a tiny model's weights (cpu_params of
 * pseed) and tokens (rng seed tseed): run 0 and run 1's losses, masters
 * and AdamW m. */
enum { STEPS = 4, CASE_B = 2, CASE_T = 64 }; /* steps, and B x T tokens a step */
struct steps_case {
	struct moe_config cfg;
	struct moe_model *mc;
	const struct moe_param *tab;
	size_t np, nt;
	float *p, *pr[2], *mr[2];
	double l[2][STEPS];
	int32_t *x, *y;
};

/* the case of config k->cfg (set by the caller) */
static void steps_case_init_cfg(struct steps_case *k, uint64_t pseed, uint64_t tseed)
{
	k->mc = cpu_params_cfg(&k->cfg, pseed, &k->p);
	k->np = moe_model_num_params(k->mc);
	k->tab = moe_model_params(k->mc, &k->nt);
	int N = STEPS * CASE_B * CASE_T;
	k->x = malloc(N * 4), k->y = malloc(N * 4);
	rng_seed(tseed);
	random_tokens(k->x, k->y, N, &k->cfg, 0);
	for (int d = 0; d < 2; d++)
		k->pr[d] = malloc(k->np * 4), k->mr[d] = malloc(k->np * 4);
}

/* the case of the tiny config */
static void steps_case_init(struct steps_case *k, uint64_t pseed, uint64_t tseed)
{
	tiny_config(&k->cfg);
	steps_case_init_cfg(k, pseed, tseed);
}

/* run d of the case, var=val (var may be NULL) in the
 * environment while the backend is made */
static void steps_case_run(struct steps_case *k, int d, bool det, const char *var, const char *val)
{
	if (var)
		setenv(var, val, 1);
	train_steps(&k->cfg, k->p, k->x, k->y, CASE_B, CASE_T, STEPS, det, k->l[d], k->pr[d], k->mr[d]);
	if (var)
		unsetenv(var);
}

/* Runs 0 and 1 of the case alike, bit for bit (what: run 1's name in the
 * messages): the losses, and every tensor's masters and AdamW m; how many
 * tensors are the same in both */
static size_t steps_case_same(const struct steps_case *k, const char *what)
{
	for (int s = 0; s < STEPS; s++)
		cr_expect(k->l[1][s] == k->l[0][s], "step %d: loss %.17g (%s) vs %.17g", s, k->l[1][s], what, k->l[0][s]);
	size_t same = 0;
	for (size_t i = 0; i < k->nt; i++) {
		size_t o = k->tab[i].offset, ne = k->tab[i].numel;
		const float *p0 = k->pr[0] + o, *p1 = k->pr[1] + o, *m0 = k->mr[0] + o, *m1 = k->mr[1] + o;
		bool sp = memcmp(p1, p0, ne * 4) == 0, sm = memcmp(m1, m0, ne * 4) == 0;
		cr_expect(sp, "%s, %s: masters differ by up to %.3g", what, k->tab[i].name, max_diff(p1, p0, ne, NULL));
		cr_expect(sm, "%s, %s: AdamW m differs by up to %.3g", what, k->tab[i].name, max_diff(m1, m0, ne, NULL));
		same += sp && sm;
	}
	return same;
}

static void steps_case_free(struct steps_case *k)
{
	for (int d = 0; d < 2; d++)
		free(k->pr[d]), free(k->mr[d]);
	free(k->p), free(k->x), free(k->y);
	moe_model_free(k->mc);
}

/* Training is repeatable on the device: four training steps (forward,
 * backward, two-group clipping, AdamW at lr 1e-2, the balancing-bias
 * update) from the same weights on new tokens each step, run twice.
 * In the deterministic mode (the default; the norm weights' and the
 * embedding's gradients summed in a fixed order instead of with fp32
 * atomics) the two runs must agree bit for bit: losses, every parameter,
 * every AdamW moment; and the parameters moved (so the steps ran).  The
 * atomics (MOE_CUDA_DETERMINISTIC=0) are run twice too and their largest
 * difference reported, not asserted: the atomics' order changes last bits,
 * and a last bit can flip a near-tied top-k choice in a later step, after
 * which the runs part visibly (on the H100 in session 6: parameters up to
 * 0.023 apart after four steps in three runs of five).  (Session 4's optimizer stream failed the earlier,
 * tolerance-based form of this test 3 times in 12; it was removed.) */
Test(backend, training_steps_repeatable, .timeout = 120)
{
	NEED_GPU();
	struct steps_case k;
	steps_case_init(&k, 23, 31);
	const struct moe_param *tab = k.tab;
	float *p = k.p, *p0 = k.pr[0], *p1 = k.pr[1], *m0 = k.mr[0], *m1 = k.mr[1];
	double *l0 = k.l[0], *l1 = k.l[1];
	/* deterministic mode: bit for bit */
	steps_case_run(&k, 0, true, NULL, NULL);
	steps_case_run(&k, 1, true, NULL, NULL);
	for (int s = 0; s < STEPS; s++)
		cr_expect(l1[s] == l0[s], "deterministic, step %d: loss %.17g (second run) vs %.17g", s, l1[s], l0[s]);
	double moved = 0;
	size_t pdiff = 0, mdiff = 0;
	for (size_t i = 0; i < k.nt; i++) {
		size_t o = tab[i].offset, ne = tab[i].numel;
		bool pd = memcmp(p1 + o, p0 + o, ne * 4) != 0, md = memcmp(m1 + o, m0 + o, ne * 4) != 0;
		pdiff += pd;
		mdiff += md;
		cr_expect(!pd, "deterministic: %s: parameters differ between the runs (by up to %.3g)", tab[i].name,
			  max_diff(p1 + o, p0 + o, ne, NULL));
		cr_expect(!md, "deterministic: %s: AdamW m differs between the runs", tab[i].name);
		moved = fmax(moved, max_diff(p0 + o, p + o, ne, NULL));
	}
	cr_expect(moved >= 1e-2, "the parameters moved by at most %.3g in %d steps", moved, STEPS);
	fprintf(stderr, "four steps twice, deterministic: losses %.6f..%.6f, %zu of %zu tensors differ in "
		"parameters, %zu in AdamW m (moved by up to %.3g)\n", l0[0], l0[STEPS - 1], pdiff, k.nt, mdiff, moved);
	/* fp32 atomics (MOE_CUDA_DETERMINISTIC=0): reported */
	steps_case_run(&k, 0, false, NULL, NULL);
	steps_case_run(&k, 1, false, NULL, NULL);
	double worst = 0;
	for (size_t i = 0; i < k.nt; i++)
		worst = fmax(worst, max_diff(p1 + tab[i].offset, p0 + tab[i].offset, tab[i].numel, NULL));
	fprintf(stderr, "four steps twice, MOE_CUDA_DETERMINISTIC=0 (atomics): losses %.6f..%.6f, parameters differ by at most %.3g\n",
		l0[0], l0[STEPS - 1], worst);
	steps_case_free(&k);
}

/* Packed masters (the default: the optimizer's spans without norm weights
 * kept as the compute copy and the low halves, moe_cuda_adamw_packed)
 * against plain fp32 masters (MOE_CUDA_PACKED_MASTERS=0), four steps from
 * the same weights and tokens: the same arithmetic and the same compute
 * copies, so the same losses, masters and AdamW m, bit for bit.  Then the
 * masters through the host and back: get_params gives what set_params
 * set, exactly, and a forward on them the plain model's loss. */
Test(backend, packed_masters_match_plain, .timeout = 120)
{
	NEED_GPU();
	struct steps_case k;
	steps_case_init(&k, 29, 37);
	float *p = k.p, *p0 = k.pr[0], *p1 = k.pr[1];
	double *l0 = k.l[0], *l1 = k.l[1];
	size_t np = k.np;
	steps_case_run(&k, 0, true, "MOE_CUDA_PACKED_MASTERS", "0");
	cr_expect_eq(last_packed, 0, "MOE_CUDA_PACKED_MASTERS=0: %d ranges packed", last_packed);
	steps_case_run(&k, 1, true, NULL, NULL);
	cr_expect_gt(last_packed, 0, "the default: no masters packed");
	size_t same = steps_case_same(&k, "packed");
	fprintf(stderr, "packed masters: %d ranges; four steps: losses %.6f..%.6f (plain %.6f..%.6f), %zu of %zu "
		"tensors' masters and m the same bits\n", last_packed, l1[0], l1[STEPS - 1], l0[0], l0[STEPS - 1], same,
		k.nt);
	/* the host round trip: set after packing, read back exactly */
	const int B = CASE_B, T = CASE_T;
	const char *mode = moe_cuda_grouped_wgmma_supported() ? "tma" : "kernel";
	struct moe_error err = {0};
	struct moe_optim o;
	struct moe_model *mg = gpu_model_optim(&k.cfg, p, &o);
	struct moe_backend *gb = moe_model_backend(mg);
	cr_expect_gt(moe_cuda_packed_ranges(gb), 0, "no masters packed");
	moe_model_get_params(mg, p0);
	cr_expect(memcmp(p0, p, np * 4) == 0, "packed masters: get_params after packing differs from what was set");
	moe_model_set_params(mg, p1); /* the packed run's masters (any low bits) */
	moe_model_get_params(mg, p0);
	cr_expect(memcmp(p0, p1, np * 4) == 0, "packed masters: get_params differs from set_params");
	struct moe_forward_opts fo = {0};
	struct moe_losses lp, lq;
	cr_assert_eq(moe_model_forward(mg, k.x, k.y, B, T, &fo, &lp, &err), 0, "%s", err.msg);
	cr_assert_eq(gb->sync(gb, &err), 0, "%s", err.msg);
	moe_optim_release(&o);
	moe_model_free(mg);
	setenv("MOE_CUDA_PACKED_MASTERS", "0", 1);
	mg = gpu_model(&k.cfg, p1, mode);
	unsetenv("MOE_CUDA_PACKED_MASTERS");
	cr_assert_eq(moe_model_forward(mg, k.x, k.y, B, T, &fo, &lq, &err), 0, "%s", err.msg);
	cr_expect(lp.total == lq.total, "forward on set masters: loss %.17g packed vs %.17g", lp.total, lq.total);
	moe_model_free(mg);
	steps_case_free(&k);
}

/* Packed masters give the unused upper halves of their fp32 storage back
 * to the device (the masters in chunks of mapped memory, 2 MiB here so
 * that a small model has whole chunks to return): a model with 3.1 M
 * parameters of routed experts a layer trains four steps that way and
 * with one cudaMalloc for the masters (MOE_CUDA_VMM=0, nothing returned):
 * the same losses, masters and AdamW m, bit for bit, memory returned only
 * by the first; then the masters through set / get_params exactly on a
 * backend that has returned memory. */
Test(backend, packed_masters_return_memory, .timeout = 120)
{
	NEED_GPU();
	struct steps_case k;
	tiny_config(&k.cfg);
	k.cfg.hidden_size = 256;
	k.cfg.intermediate_size = 512;
	k.cfg.num_attention_heads = 8; /* Dh 32 */
	steps_case_init_cfg(&k, 43, 47);
	steps_case_run(&k, 0, true, "MOE_CUDA_VMM", "0");
	cr_expect_eq(last_returned, 0, "one cudaMalloc: %zu bytes returned", last_returned);
	steps_case_run(&k, 1, true, "MOE_CUDA_VMM_CHUNK_MB", "2");
	cr_expect_gt(last_packed, 0, "no masters packed");
	size_t ret = last_returned;
	cr_expect_gt(ret, 0, "mapped chunks: no memory returned");
	size_t same = steps_case_same(&k, "memory returned");
	/* set / get on a backend that has returned memory */
	struct moe_error err = {0};
	struct moe_optim o;
	setenv("MOE_CUDA_VMM_CHUNK_MB", "2", 1);
	struct moe_model *mg = gpu_model_optim(&k.cfg, k.p, &o);
	unsetenv("MOE_CUDA_VMM_CHUNK_MB");
	struct moe_backend *gb = moe_model_backend(mg);
	cr_expect_gt(moe_cuda_masters_returned(gb), 0, "set / get: no memory returned");
	moe_model_set_params(mg, k.pr[1]);
	float *back = malloc(k.np * 4);
	moe_model_get_params(mg, back);
	cr_expect(memcmp(back, k.pr[1], k.np * 4) == 0, "get_params differs from set_params after the return");
	cr_assert_eq(gb->sync(gb, &err), 0, "%s", err.msg);
	fprintf(stderr, "packed masters, memory returned: %d ranges, %.1f MiB of %.1f returned; four steps: losses "
		"%.6f..%.6f (one cudaMalloc %.6f..%.6f), %zu of %zu tensors' masters and m the same bits\n",
		last_packed, ret / 1048576.0, k.np * 4 / 1048576.0, k.l[1][0], k.l[1][STEPS - 1], k.l[0][0],
		k.l[0][STEPS - 1], same, k.nt);
	free(back);
	moe_optim_release(&o);
	moe_model_free(mg);
	steps_case_free(&k);
}

/* The optimizer stream (the default: AdamW on a stream of its own beside
 * the next forward, which waits for each span's AdamW before it reads that
 * span's weights) against one stream (MOE_CUDA_OPT_STREAM=0), four steps
 * from the same weights and tokens: the same kernels on the same data in
 * another order, so the same losses, masters and AdamW m, bit for bit.
 * Three times: a missing wait shows only when the streams race. */
Test(backend, opt_stream_matches_one_stream, .timeout = 120)
{
	NEED_GPU();
	struct steps_case k;
	steps_case_init(&k, 41, 43);
	float *p0 = k.pr[0], *p1 = k.pr[1], *m0 = k.mr[0], *m1 = k.mr[1];
	double *l0 = k.l[0], *l1 = k.l[1];
	steps_case_run(&k, 0, true, "MOE_CUDA_OPT_STREAM", "0");
	cr_expect(!last_ostream, "MOE_CUDA_OPT_STREAM=0: AdamW ran on the optimizer stream");
	for (int r = 0; r < 3; r++) {
		steps_case_run(&k, 1, true, NULL, NULL);
		cr_expect(last_ostream, "the default: AdamW did not run on the optimizer stream");
		for (int s = 0; s < STEPS; s++)
			cr_expect(l1[s] == l0[s], "run %d, step %d: loss %.17g (optimizer stream) vs %.17g", r, s, l1[s],
				  l0[s]);
		size_t pd = 0, md = 0;
		for (size_t i = 0; i < k.nt; i++) {
			size_t o = k.tab[i].offset, ne = k.tab[i].numel;
			pd += memcmp(p1 + o, p0 + o, ne * 4) != 0;
			md += memcmp(m1 + o, m0 + o, ne * 4) != 0;
		}
		cr_expect(pd == 0 && md == 0, "run %d: %zu tensors' masters and %zu AdamW m differ with the optimizer stream",
			  r, pd, md);
		fprintf(stderr, "optimizer stream, run %d: losses %.6f..%.6f, %zu of %zu tensors differ (masters), %zu (m)\n",
			r, l1[0], l1[STEPS - 1], pd, k.nt, md);
	}
	steps_case_free(&k);
}

/* One training step of cfg twice from the same weights (cpu_params_cfg of
 * pseed) and tokens (rng seed tseed, 2 x T): run 0 with VAR=VAL, run 1
 * with the default; on(backend) says whether the run's backend took the
 * default path (asserted 0 for run 0, 1 for run 1).  Losses into l,
 * gradients into g; switch_pair_free releases them with the CPU model. */
struct switch_pair {
	struct moe_model *mc;
	const struct moe_param *tab;
	size_t nt;
	float *p, *g[2];
	struct moe_losses l[2];
};

static void switch_pair_run(struct switch_pair *r, const struct moe_config *cfg, uint64_t pseed, uint64_t tseed,
			    int T, const char *var, const char *val, bool (*on)(const struct moe_backend *))
{
	r->mc = cpu_params_cfg(cfg, pseed, &r->p);
	size_t np = moe_model_num_params(r->mc);
	r->tab = moe_model_params(r->mc, &r->nt);
	int B = 2, N = B * T;
	int32_t *x = malloc(N * 4), *y = malloc(N * 4);
	rng_seed(tseed);
	random_tokens(x, y, N, cfg, 11);
	const char *mode = moe_cuda_grouped_wgmma_supported() ? "tma" : "kernel";
	for (int d = 0; d <= 1; d++) {
		r->g[d] = malloc(np * 4);
		struct moe_model *m = gpu_step_keep(cfg, r->p, x, y, B, T, mode, d ? NULL : var, val, &r->l[d], r->g[d],
						    false);
		cr_assert_eq(on(moe_model_backend(m)), d, "%s=%s %s: the path", var, val, d ? "unset" : "set");
		moe_model_free(m);
	}
	free(x), free(y);
}

static void switch_pair_free(struct switch_pair *r)
{
	free(r->p), free(r->g[0]), free(r->g[1]);
	moe_model_free(r->mc);
}

static bool shared_merge_on(const struct moe_backend *be) { return be->copy_rows != NULL; }
static bool yg_free_on(const struct moe_backend *be) { return be->expert_combine_down_bwd != NULL; }
static bool router_merge_on(const struct moe_backend *be) { return be->router_merge_ok; }
static bool qkv_packed_on(const struct moe_backend *be) { return be->attention_qknorm_fwd != NULL; }

/* The shared experts merged (the default: one gate_up linear over their
 * adjacent weights, one SwiGLU each way, one down linear over their down
 * weights gathered side by side, the down weight gradients as one batched
 * GEMM; since session 12 with the router's linear merged into their gate_up
 * too) against one by one (MOE_CUDA_SHARED_MERGE=0, the router apart), two
 * shared experts, one step from the same weights and tokens.  The merged
 * input gradient of the norm before them adds both experts' shares in fp32
 * and rounds to bf16 once; one by one it is rounded to bf16 after each, so every gradient upstream of it moves by
 * bf16 roundings of that activation gradient (2^-8 relative an element;
 * likewise the forward's sum of the two down projections):
 * losses within 1e-4 relative, every non-routed tensor's gradient cosine
 * >= 0.9999 and within 2e-2 of its largest element (0.95% measured on an
 * H100, session 11, call 64), the routed experts' cosine >= 0.999 (they
 * also follow any top-k choice a rounding flips).  The losses differed by
 * 0.9e-5 relative in sessions 12-15 and by 1.6e-5 in session 16, once the
 * compute copies of the weights rounded ties away from zero (call 116; the
 * bound was 1e-5 until then). */
Test(backend, shared_experts_merged_match, .timeout = 60)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.n_shared_experts = 2;
	struct switch_pair r;
	switch_pair_run(&r, &cfg, 43, 47, 64, "MOE_CUDA_SHARED_MERGE", "0", shared_merge_on);
	cr_expect(fabs(r.l[1].total - r.l[0].total) <= 1e-4 * fabs(r.l[0].total), "loss %.8f (merged) vs %.8f",
		  r.l[1].total, r.l[0].total);
	double worst, mincos;
	expect_rounding_close("merged vs one by one", r.tab, r.nt, r.g[1], r.g[0], &worst, &mincos);
	int shared = 0;
	for (size_t i = 0; i < r.nt; i++)
		shared += r.tab[i].trainable && strstr(r.tab[i].name, "shared_experts") != NULL;
	cr_expect(shared >= 4 * (cfg.num_hidden_layers - cfg.n_dense_layers), "%d shared-expert tensors", shared);
	fprintf(stderr,
		"shared experts merged vs one by one: loss %.8f vs %.8f, non-routed gradients: worst difference %.3g of "
		"the tensor's largest, min cosine %.7f\n",
		r.l[1].total, r.l[0].total, worst, mincos);
	switch_pair_free(&r);
}

/* The routed experts' backward without their outputs yg (the default,
 * expert_combine_down_bwd: the gate weights' gradient as dh . h, the
 * weights applied in the SwiGLU backward, xg kept from the forward) against
 * combine_bwd and expert_down_bwd (MOE_CUDA_YG=keep), one step from the
 * same weights and tokens.  The two round differently (bf16(w dout) W
 * against w bf16(dout W), dout . bf16(h W^T) against bf16(dout W) . h), so
 * the gradients differ by bf16 roundings: the same loss (the forward is
 * unchanged), expect_rounding_close's bounds.  Top-2 of 8 with one shared
 * expert, and top-4 of 8 with normalised weights and none. */
static void yg_free_case(struct moe_config cfg, uint32_t seed)
{
	struct switch_pair r;
	switch_pair_run(&r, &cfg, seed, seed + 4, 64, "MOE_CUDA_YG", "keep", yg_free_on);
	cr_expect(r.l[1].total == r.l[0].total, "K %d: loss %.8f (yg free) vs %.8f", cfg.num_experts_per_tok,
		  r.l[1].total, r.l[0].total);
	char what[64];
	snprintf(what, sizeof what, "yg free vs kept, K %d", cfg.num_experts_per_tok);
	double worst, mincos, rmin = 1;
	expect_rounding_close(what, r.tab, r.nt, r.g[1], r.g[0], &worst, &mincos);
	for (size_t i = 0; i < r.nt; i++)
		if (r.tab[i].kind == MOE_P_EXPERT)
			rmin = fmin(rmin, cosine(r.g[1] + r.tab[i].offset, r.g[0] + r.tab[i].offset, r.tab[i].numel));
	fprintf(stderr,
		"yg free vs kept (K %d): loss %.8f vs %.8f, non-routed gradients: worst difference %.3g of the largest, "
		"min cosine %.7f; routed experts' min cosine %.7f\n",
		cfg.num_experts_per_tok, r.l[1].total, r.l[0].total, worst, mincos, rmin);
	switch_pair_free(&r);
}

Test(backend, yg_free_matches_keep, .timeout = 60)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	yg_free_case(cfg, 83);
	cfg.num_experts_per_tok = 4;
	cfg.norm_topk_prob = true;
	cfg.n_shared_experts = 0;
	yg_free_case(cfg, 89);
}

/* The router's linear merged with the shared experts' gate_up (the
 * default: one linear each way over the router's and their adjacent
 * weights, the router reading its logits and writing its dlogits in place
 * beside their columns, SwiGLU at that row stride) against apart
 * (MOE_CUDA_ROUTER_MERGE=0), two shared experts, z-loss on, one step from
 * the same weights and tokens.  The merged input gradient of the norm
 * before them adds the router's and the shared experts' shares in fp32 and
 * rounds once (apart: after each), and the logits come from another GEMM
 * kernel, so the results differ by bf16 roundings: losses within 1e-4
 * relative, expect_rounding_close's bounds. */
Test(backend, router_merge_matches, .timeout = 60)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.n_shared_experts = 2;
	struct switch_pair r;
	switch_pair_run(&r, &cfg, 97, 101, 64, "MOE_CUDA_ROUTER_MERGE", "0", router_merge_on);
	cr_expect(fabs(r.l[1].total - r.l[0].total) <= 1e-4 * fabs(r.l[0].total), "loss %.8f (merged) vs %.8f",
		  r.l[1].total, r.l[0].total);
	double worst, mincos;
	expect_rounding_close("router merged vs apart", r.tab, r.nt, r.g[1], r.g[0], &worst, &mincos);
	fprintf(stderr,
		"router merged vs apart: loss %.8f vs %.8f, non-routed gradients: worst difference %.3g of the largest, "
		"min cosine %.7f\n",
		r.l[1].total, r.l[0].total, worst, mincos);
	switch_pair_free(&r);
}

/* One training step of config cfg from the same weights and tokens with
 * MOE_CUDA_QKV=batched (the projections in three buffers, the
 * strided-batched linears: session 10's path) and with the default (q, k,
 * v in rows of 3 D: one linear each way, attention_qknorm_fwd / _bwd), an
 * extra variable set for both runs.  The packed input gradient of the
 * first norm adds q's, k's and v's shares in fp32 and rounds once; the
 * batched path rounds to bf16 after each, so everything upstream moves by
 * bf16 roundings of that activation gradient: losses within 1e-5 relative,
 * non-routed gradients with cosine >= 0.9999 and within 2e-2 of their
 * largest element, routed experts' cosine >= 0.999. */
static void qkv_packed_case(struct moe_config cfg, const char *var, const char *val, int T)
{
	int Dh = cfg.hidden_size / cfg.num_attention_heads;
	if (var) /* for both runs */
		setenv(var, val, 1);
	struct switch_pair r;
	switch_pair_run(&r, &cfg, 53, 59, T, "MOE_CUDA_QKV", "batched", qkv_packed_on);
	if (var)
		unsetenv(var);
	cr_expect(fabs(r.l[1].total - r.l[0].total) <= 1e-5 * fabs(r.l[0].total), "Dh %d %s: loss %.8f (packed) vs %.8f",
		  Dh, var ? var : "", r.l[1].total, r.l[0].total);
	char what[96];
	snprintf(what, sizeof what, "packed vs batched, Dh %d %s", Dh, var ? var : "");
	double worst, mincos;
	expect_rounding_close(what, r.tab, r.nt, r.g[1], r.g[0], &worst, &mincos);
	fprintf(stderr,
		"q, k, v packed vs batched, Dh %d%s%s%s: loss %.8f vs %.8f, non-routed gradients: worst difference %.3g "
		"of the largest, min cosine %.7f\n",
		Dh, var ? ", " : "", var ? var : "", var ? val : "", r.l[1].total, r.l[0].total, worst, mincos);
	switch_pair_free(&r);
}

Test(backend, qkv_packed_matches_batched, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg); /* Dh 32 */
	qkv_packed_case(cfg, NULL, NULL, 64);
	/* rmsnorm and rope as two kernels: on copies of the strided rows */
	qkv_packed_case(cfg, "MOE_CUDA_QKNORM_ROPE", "split", 64);
	cfg.hidden_size = 384;
	cfg.num_attention_heads = 4; /* Dh 96: fa3f, the query's norm from its fp32 tiles */
	cfg.max_position_embeddings = 256;
	qkv_packed_case(cfg, NULL, NULL, 200);
	cfg.hidden_size = 256;
	cfg.num_attention_heads = 2; /* Dh 128 */
	qkv_packed_case(cfg, NULL, NULL, 200);
}

/* A batch smaller than the one the activations were allocated for (an
 * evaluation's last, short batch), on the CUDA backend: after three rows of
 * training and evaluation, two rows give the same evaluation loss,
 * training loss and gradients (relative 1e-6) as a model that only saw the
 * two (session 4's q, k, v stride bug showed here; the packed q, k, v
 * layout, the shared experts' side-by-side buffers and fa3f's dQ tiles all
 * size their buffers by the allocation).  Dh 32 and 96. */
static void smaller_batch_case(struct moe_config cfg, int T)
{
	struct moe_error err = {0};
	float *p;
	struct moe_model *mc = cpu_params_cfg(&cfg, 67, &p);
	size_t np = moe_model_num_params(mc);
	float *g[2] = {malloc(np * 4), malloc(np * 4)};
	int32_t *x = malloc(3 * T * 4), *y = malloc(3 * T * 4);
	rng_seed(71);
	random_tokens(x, y, 3 * T, &cfg, 0);
	const char *mode = moe_cuda_grouped_wgmma_supported() ? "tma" : "kernel";
	struct moe_model *m[2] = {gpu_model(&cfg, p, mode), gpu_model(&cfg, p, mode)};
	struct moe_losses L[2], E[2], big;
	struct moe_forward_opts ot = {.train = true}, oe = {.train = false};
	moe_model_zero_grad(m[0]);
	cr_assert_eq(moe_model_forward(m[0], x, y, 3, T, &ot, &big, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(m[0], 1.0f, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_forward(m[0], x, y, 3, T, &oe, &big, &err), 0, "%s", err.msg);
	for (int r = 0; r < 2; r++) {
		cr_assert_eq(moe_model_forward(m[r], x + T, y + T, 2, T, &oe, &E[r], &err), 0, "%s", err.msg);
		moe_model_zero_grad(m[r]);
		cr_assert_eq(moe_model_forward(m[r], x + T, y + T, 2, T, &ot, &L[r], &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(m[r], 1.0f, &err), 0, "%s", err.msg);
		moe_model_get_grads(m[r], g[r]);
	}
	cr_expect(fabs(E[0].total - E[1].total) <= 1e-6 * fabs(E[1].total),
		  "evaluation: %.9g after a larger batch, %.9g alone", E[0].total, E[1].total);
	cr_expect(fabs(L[0].total - L[1].total) <= 1e-6 * fabs(L[1].total), "training: %.9g after, %.9g alone",
		  L[0].total, L[1].total);
	double d = 0, s2 = 0;
	for (size_t i = 0; i < np; i++) {
		d += ((double)g[0][i] - g[1][i]) * ((double)g[0][i] - g[1][i]);
		s2 += (double)g[1][i] * g[1][i];
	}
	cr_expect(s2 > 0 && sqrt(d / s2) < 1e-6, "relative gradient difference %g", sqrt(d / (s2 + 1e-300)));
	fprintf(stderr, "smaller batch after a larger one (Dh %d): evaluation %.8f vs %.8f, training %.8f vs %.8f\n",
		cfg.hidden_size / cfg.num_attention_heads, E[0].total, E[1].total, L[0].total, L[1].total);
	for (int r = 0; r < 2; r++)
		moe_model_free(m[r]), free(g[r]);
	free(p), free(x), free(y);
	moe_model_free(mc);
}

Test(backend, smaller_batch_after_larger, .timeout = 120)
{
	NEED_GPU();
	struct moe_config cfg;
	tiny_config(&cfg);
	cfg.n_shared_experts = 2;
	smaller_batch_case(cfg, 64);
	cfg.hidden_size = 384;
	cfg.num_attention_heads = 4; /* Dh 96: fa3f */
	cfg.max_position_embeddings = 256;
	smaller_batch_case(cfg, 200);
}

/* The q, k, v projections in three buffers as one strided-batched GEMM
 * (linear_fwd_multi, linear_wgrad_multi: MOE_CUDA_QKV=batched, the default
 * until session 11) against three GEMMs (MOE_CUDA_QKV=split),
 * one training step from the same weights and tokens: losses within 1e-5
 * relative, every gradient tensor within 1e-3 of its largest element (the
 * two cuBLAS calls may order their fp32 sums differently; the routed
 * experts' also follow any top-k choice a rounding difference flips, so
 * their check is a cosine >= 0.999). */
Test(backend, qkv_batched_matches_split, .timeout = 60)
{
	NEED_GPU();
	struct moe_config cfg;
	float *p;
	struct moe_model *mc = cpu_params(&cfg, 29, &p);
	size_t np = moe_model_num_params(mc), nt = 0;
	const struct moe_param *tab = moe_model_params(mc, &nt);
	int B = 2, T = 64, N = B * T;
	int32_t *x = malloc(N * 4), *y = malloc(N * 4);
	rng_seed(37);
	random_tokens(x, y, N, &cfg, 11);
	float *g0 = malloc(np * 4), *g1 = malloc(np * 4);
	struct moe_losses l0, l1;
	const char *mode = moe_cuda_grouped_wgmma_supported() ? "tma" : "kernel";
	/* split also runs the shared experts one by one, and then the router
	 * apart from them: the router apart for both (router_merge_matches
	 * compares merged and apart) */
	setenv("MOE_CUDA_ROUTER_MERGE", "0", 1);
	setenv("MOE_CUDA_QKV", "split", 1);
	gpu_step(&cfg, p, x, y, B, T, mode, &l0, g0, false);
	setenv("MOE_CUDA_QKV", "batched", 1);
	gpu_step(&cfg, p, x, y, B, T, mode, &l1, g1, false);
	unsetenv("MOE_CUDA_QKV");
	unsetenv("MOE_CUDA_ROUTER_MERGE");
	cr_expect(fabs(l1.total - l0.total) <= 1e-5 * fabs(l0.total), "loss %.8f (batched) vs %.8f (split)", l1.total,
		  l0.total);
	double worst = 0;
	for (size_t i = 0; i < nt; i++) {
		if (!tab[i].trainable)
			continue;
		double mx, d = max_diff(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel, &mx);
		if (tab[i].kind == MOE_P_EXPERT) {
			double c = cosine(g1 + tab[i].offset, g0 + tab[i].offset, tab[i].numel);
			cr_expect(c >= 0.999, "%s: gradient cosine batched vs split %.6f", tab[i].name, c);
		} else {
			cr_expect(d <= 1e-3 * mx + 1e-30, "%s: batched vs split differ by %.3g (max %.3g)", tab[i].name,
				  d, mx);
			worst = fmax(worst, mx > 0 ? d / mx : d);
		}
	}
	fprintf(stderr, "q, k, v batched vs split: loss %.8f vs %.8f, worst relative gradient difference %.3g\n",
		l1.total, l0.total, worst);
	free(p);
	free(g0);
	free(g1);
	free(x);
	free(y);
	moe_model_free(mc);
}

/* The loss-free-balancing step on the device (be->balance_bias: no host round
 * trip) against the CPU backend's host path (moe_balance_apply after a
 * read-back): random biases near the clamp, random counts with a layer of
 * exact ties, six steps.  Every bias bit-identical, every other parameter
 * untouched, and the bf16 compute copy equal to the master rounded. */
Test(backend, balance_bias_matches_cpu, .timeout = 60)
{
	NEED_GPU();
	struct moe_config cfg;
	struct moe_error err = {0};
	float *p;
	struct moe_model *mc = cpu_params(&cfg, 41, &p);
	size_t np = moe_model_num_params(mc);
	cfg.balance_bias_clamp = 0.0035;
	moe_model_free(mc);
	mc = moe_model_new(&cfg, moe_backend_cpu(), &err);
	cr_assert_not_null(mc, "%s", err.msg);
	int E = cfg.num_experts, Lm = cfg.num_hidden_layers - cfg.n_dense_layers;
	rng_seed(43);
	for (int l = cfg.n_dense_layers; l < cfg.num_hidden_layers; l++)
		for (int e = 0; e < E; e++)
			p[moe_model_layer(mc, l)->bias + e] = (float)(rng_u64() % 7001) * 1e-6f - 0.0035f;
	moe_model_set_params(mc, p);
	struct moe_model *mg = gpu_model(&cfg, p, "kernel");
	struct moe_backend *gb = moe_model_backend(mg);
	cr_assert_not_null(gb->balance_bias, "the CUDA backend updates the bias on the device");
	cr_assert_null(moe_model_backend(mc)->balance_bias, "the CPU backend runs the host path");
	int64_t *cnt = malloc(sizeof *cnt * (size_t)(Lm * E));
	for (int s = 0; s < 6; s++) {
		for (int i = 0; i < Lm * E; i++)
			cnt[i] = i < E ? 5 : (int64_t)(rng_u64() % 9); /* the first MoE layer: all at the mean */
		cr_assert_eq(moe_model_update_bias(mc, cnt, 1e-3f, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_update_bias(mg, cnt, 1e-3f, &err), 0, "%s", err.msg);
	}
	float *pc = malloc(np * 4), *pg = malloc(np * 4), *b16 = malloc((size_t)E * 4);
	moe_model_get_params(mc, pc);
	moe_model_get_params(mg, pg);
	int moved = 0, clamped = 0;
	for (size_t i = 0; i < np; i++)
		cr_assert(memcmp(&pc[i], &pg[i], 4) == 0, "parameter %zu: cpu %.9g cuda %.9g", i, pc[i], pg[i]);
	for (int l = cfg.n_dense_layers; l < cfg.num_hidden_layers; l++) {
		size_t o = moe_model_layer(mc, l)->bias;
		gb->to_host(gb, b16, gb->param(gb, o), (size_t)E, MOE_BUF_ACT);
		cr_assert_eq(gb->sync(gb, &err), 0, "%s", err.msg);
		for (int e = 0; e < E; e++) {
			moved += pc[o + e] != p[o + e];
			clamped += fabsf(pc[o + e]) == 0.0035f;
			uint32_t u; /* the master rounded to bf16, to nearest even */
			memcpy(&u, &pg[o + e], 4);
			u = (u + 0x7fffu + ((u >> 16) & 1u)) & 0xffff0000u;
			float r;
			memcpy(&r, &u, 4);
			cr_assert_eq(b16[e], r, "layer %d expert %d: compute copy %.9g master %.9g", l, e, b16[e],
				     pg[o + e]);
		}
		if (l == cfg.n_dense_layers)
			for (int e = 0; e < E; e++)
				cr_assert_eq(pc[o + e], p[o + e], "ties at the mean leave the bias");
	}
	/* the first MoE layer's counts all sit at the mean: only the others move */
	cr_assert_geq(moved, (Lm - 1) * E / 2, "the steps moved the biases (%d of %d)", moved, (Lm - 1) * E);
	cr_assert_gt(clamped, 0, "some biases reached the clamp");
	free(cnt);
	free(pc);
	free(pg);
	free(b16);
	free(p);
	moe_model_free(mg);
	moe_model_free(mc);
}

/* The clip norms' sums of squares from the expert weight-gradient epilogues
 * (MOE_CUDA_SUMSQ_EPI, on by default with "tma"): one training step's
 * moe_optim_grad_norms with them against the same step with
 * MOE_CUDA_SUMSQ_EPI=0 (every span read), and each against the gradients
 * read back and summed on the host in long double: the expert norm within
 * relative 1e-6 (the epilogue sums 16 squares a thread in fp32: relative
 * error <= 16 * 2^-24 on the sum of squares, half that on the norm), the
 * other norm within 1e-9 (read on both paths).  moe_cuda_sumsq_counts
 * shows the path taken: exactly the routed experts' floats from the
 * epilogues (0 with the switch off).  The records must go when the
 * gradients change otherwise: after an optimizer step (params_updated),
 * after a second micro-batch's backward (it adds), after zero_grad and the
 * memset of moe_model_grads_ready; each time the norms match the host's
 * and nothing comes from the epilogues.  The sums go out in one batch of
 * launches (MOE_CUDA_SUMSQ_BATCH, default) or one by one (=0, run first):
 * the same items in the same order, so the same bits. */
static void norms_host(const struct moe_param *tab, size_t nt, const float *g, double *ne, double *no)
{
	long double se = 0, so = 0;
	for (size_t i = 0; i < nt; i++) {
		if (!tab[i].trainable)
			continue;
		long double s = 0;
		for (size_t j = tab[i].offset; j < tab[i].offset + tab[i].numel; j++)
			s += (long double)g[j] * g[j];
		if (tab[i].is_expert)
			se += s;
		else
			so += s;
	}
	*ne = sqrt((double)se);
	*no = sqrt((double)so);
}

static void check_norms(const char *what, struct moe_model *mg, struct moe_optim *o, const struct moe_param *tab,
			size_t nt, float *g, double tol_e, double *ne_out)
{
	double ne, no, he, ho;
	moe_optim_grad_norms(o, &ne, &no);
	moe_model_get_grads(mg, g);
	norms_host(tab, nt, g, &he, &ho);
	cr_expect(fabs(ne - he) <= tol_e * he + 1e-30, "%s: expert norm %.17g vs host %.17g", what, ne, he);
	cr_expect(fabs(no - ho) <= 1e-9 * ho + 1e-30, "%s: other norm %.17g vs host %.17g", what, no, ho);
	fprintf(stderr, "%s: norms expert %.12g (host %.12g, relative %.3g), other %.12g (host %.12g)\n", what, ne, he,
		he > 0 ? fabs(ne - he) / he : 0.0, no, ho);
	if (ne_out)
		*ne_out = ne;
}

Test(backend, sumsq_from_wgrad_epilogue, .timeout = 120)
{
	NEED_GPU();
	if (!moe_cuda_grouped_tma_supported())
		cr_skip_test("not an sm_90 device, or no tensor maps");
	struct moe_error err = {0};
	struct moe_config cfg;
	float *p;
	struct moe_model *mc = cpu_params(&cfg, 41, &p);
	size_t np = moe_model_num_params(mc), nt = 0;
	const struct moe_param *tab = moe_model_params(mc, &nt);
	float *g = malloc(np * 4);
	int B = 2, T = 96, N = B * T;
	int32_t *x = malloc(2 * N * 4), *y = malloc(2 * N * 4);
	rng_seed(12);
	random_tokens(x, y, 2 * N, &cfg, 11);
	const size_t routed = (size_t)moe_config_n_moe_layers(&cfg) * cfg.num_experts * 3 * cfg.intermediate_size *
			      cfg.hidden_size;
	size_t trainable = 0;
	for (size_t i = 0; i < nt; i++)
		trainable += tab[i].trainable ? tab[i].numel : 0;
	struct moe_optim_opts oo = {.beta1 = 0.9, .beta2 = 0.95, .eps = 1e-8, .weight_decay = 0.1,
				    .decay = MOE_DECAY_MATRICES, .clip_groups = MOE_CLIP_EXPERT, .clip = 1.0,
				    .clip_expert = -1};
	struct moe_forward_opts fo = {0};
	fo.train = true;
	double norm[3];
	for (int mode = 2; mode >= 0; mode--) {
		char what[96];
		int on = mode > 0; /* mode 2: epilogue sums, one by one */
		if (!on)
			setenv("MOE_CUDA_SUMSQ_EPI", "0", 1);
		if (mode == 2)
			setenv("MOE_CUDA_SUMSQ_BATCH", "0", 1);
		struct moe_model *mg = gpu_model(&cfg, p, "tma");
		unsetenv("MOE_CUDA_SUMSQ_EPI");
		unsetenv("MOE_CUDA_SUMSQ_BATCH");
		struct moe_backend *gb = moe_model_backend(mg);
		struct moe_optim o;
		struct moe_losses l;
		size_t epi0, rd0, epi, rd;
		cr_assert_eq(moe_optim_init(&o, mg, &oo, &err), 0, "%s", err.msg);
		/* one step, as the trainer runs it */
		moe_model_zero_grad(mg);
		cr_assert_eq(moe_model_forward(mg, x, y, B, T, &fo, &l, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(mg, 1.0f, &err), 0, "%s", err.msg);
		moe_cuda_sumsq_counts(gb, &epi0, &rd0);
		snprintf(what, sizeof what, "epilogue sums %s%s, one step", on ? "on" : "off",
			 mode == 2 ? " one by one" : "");
		check_norms(what, mg, &o, tab, nt, g, 1e-6, &norm[mode]);
		moe_cuda_sumsq_counts(gb, &epi, &rd);
		cr_expect(epi - epi0 == (on ? routed : 0), "%s: %zu floats from the epilogues, expected %zu", what,
			  epi - epi0, on ? routed : (size_t)0);
		cr_expect(epi - epi0 + rd - rd0 == trainable, "%s: %zu floats summed of %zu trainable", what,
			  epi - epi0 + rd - rd0, trainable);
		/* the optimizer step: the records go (params_updated) */
		moe_optim_step(&o, 1e-3);
		snprintf(what, sizeof what, "epilogue sums %s, after the optimizer step", on ? "on" : "off");
		moe_cuda_sumsq_counts(gb, &epi0, &rd0);
		check_norms(what, mg, &o, tab, nt, g, 1e-9, NULL);
		moe_cuda_sumsq_counts(gb, &epi, &rd);
		cr_expect(epi == epi0, "%s: %zu floats from stale epilogue sums", what, epi - epi0);
		/* two micro-batches: the second backward adds */
		moe_model_zero_grad(mg);
		for (int mb = 0; mb < 2; mb++) {
			cr_assert_eq(moe_model_forward(mg, x + mb * N, y + mb * N, B, T, &fo, &l, &err), 0, "%s", err.msg);
			cr_assert_eq(moe_model_backward(mg, 0.5f, &err), 0, "%s", err.msg);
		}
		snprintf(what, sizeof what, "epilogue sums %s, two micro-batches", on ? "on" : "off");
		moe_cuda_sumsq_counts(gb, &epi0, &rd0);
		check_norms(what, mg, &o, tab, nt, g, 1e-9, NULL);
		moe_cuda_sumsq_counts(gb, &epi, &rd);
		cr_expect(epi == epi0, "%s: %zu floats from stale epilogue sums", what, epi - epi0);
		/* a fresh backward again, then zero_grad: the norms read zeros */
		moe_model_zero_grad(mg);
		cr_assert_eq(moe_model_forward(mg, x, y, B, T, &fo, &l, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(mg, 1.0f, &err), 0, "%s", err.msg);
		moe_model_zero_grad(mg);
		double ne, no;
		moe_cuda_sumsq_counts(gb, &epi0, &rd0);
		moe_optim_grad_norms(&o, &ne, &no);
		moe_cuda_sumsq_counts(gb, &epi, &rd);
		cr_expect(ne == 0 && no == 0, "epilogue sums %s, after zero_grad: norms %g, %g", on ? "on" : "off", ne,
			  no);
		cr_expect(epi == epi0, "after zero_grad: %zu floats from stale epilogue sums", epi - epi0);
		moe_optim_release(&o);
		moe_model_free(mg);
	}
	cr_expect(fabs(norm[1] - norm[0]) <= 1e-6 * norm[0], "expert norm with the epilogue sums %.17g, without %.17g",
		  norm[1], norm[0]);
	cr_expect(norm[2] == norm[1], "expert norm: sums batched %.17g, one by one %.17g", norm[1], norm[2]);
	fprintf(stderr, "expert clip norm: epilogue sums %.15g, read %.15g (relative %.3g); %zu routed floats\n",
		norm[1], norm[0], fabs(norm[1] - norm[0]) / norm[0], routed);
	free(p);
	free(g);
	free(x);
	free(y);
	moe_model_free(mc);
}

/* With var=val in the environment the CUDA backend is not made; why in err */
static void backend_refused(const char *var, const char *val, struct moe_error *err)
{
	setenv(var, val, 1);
	struct moe_backend *be = moe_backend_cuda(err);
	unsetenv(var);
	cr_assert_null(be, "%s=%s accepted", var, val);
}

/* A variant name the attention does not have (here one removed in session
 * 19) stops the backend with the variable, the value and the names, where
 * it used to run the default silently; a name it has is taken. */
Test(backend, attention_variant_names_checked, .timeout = 30)
{
	NEED_GPU();
	struct moe_error err = {0};
	backend_refused("MOE_CUDA_ATTENTION_BWD", "fa3fc", &err);
	cr_assert(strstr(err.msg, "MOE_CUDA_ATTENTION_BWD='fa3fc'") && strstr(err.msg, "fa3f") &&
			  strstr(err.msg, "wgeg"),
		  "%s", err.msg);
	struct moe_error err2 = {0};
	setenv("MOE_CUDA_ATTENTION_FWD", "fa3k128", 1);
	struct moe_backend *be = moe_backend_cuda(&err2);
	cr_assert_not_null(be, "%s", err2.msg);
	cr_assert_str_eq(moe_cuda_attention_fwd_name(96), "fa3k128"); /* the variable is read at first use */
	unsetenv("MOE_CUDA_ATTENTION_FWD");
	be->destroy(be);
}

/* The grouped GEMMs' variables removed in sessions 19 and 20 stop the
 * backend too; the value that asked for the default is taken. */
Test(backend, removed_grouped_variables_refused, .timeout = 30)
{
	NEED_GPU();
	struct moe_error err = {0}, err2 = {0}, err3 = {0};
	backend_refused("MOE_CUDA_TMA_FUSE", "1", &err);
	cr_assert(strstr(err.msg, "MOE_CUDA_TMA_FUSE='1'") && strstr(err.msg, "removed in session 19"), "%s",
		  err.msg);
	backend_refused("MOE_CUDA_EXPERT_FUSE", "5", &err2);
	cr_assert(strstr(err2.msg, "MOE_CUDA_EXPERT_FUSE='5'") && strstr(err2.msg, "removed in session 20"), "%s",
		  err2.msg);
	backend_refused("MOE_CUDA_TMA_TAILSKIP", "0", &err3);
	cr_assert(strstr(err3.msg, "MOE_CUDA_TMA_TAILSKIP='0'"), "%s", err3.msg);
	setenv("MOE_CUDA_EXPERT_FUSE", "0", 1);
	struct moe_error err4 = {0};
	struct moe_backend *be = moe_backend_cuda(&err4);
	unsetenv("MOE_CUDA_EXPERT_FUSE");
	cr_assert_not_null(be, "MOE_CUDA_EXPERT_FUSE=0 (the default) refused: %s", err4.msg);
	be->destroy(be);
}
