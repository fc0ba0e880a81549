/* Every CUDA kernel against its CPU fp32 reference (lib/model/ops.h) on
 * fresh random inputs.  Inputs are rounded to bf16 first so that both sides
 * compute on identical values; tolerances are relative L2 errors:
 *   outputs stored in bf16:                          2e-2 (3e-2 for attention grads)
 *   fp32 results from bf16 inputs (stats, dw, probs): 1e-4 .. 1e-3
 * Outputs are poisoned with NaN before each launch, so an unwritten element
 * fails the check.  Skipped when there is no CUDA device. */
#include "gpu_util.h"
#include "model/ops.h"

static cudaStream_t S = 0;

Test(kernels, embedding)
{
	NEED_GPU();
	rng_seed(1);
	int N = 300, D = 136, V = 50;
	float *wte = rand_bf((size_t)V * D, 1.f), *dout = rand_bf((size_t)N * D, 1.f);
	int32_t *ids = malloc(N * 4);
	for (int n = 0; n < N; n++) /* id 7 a third of the rows: runs that cross the 32-row chunks */
		ids[n] = n % 3 == 1 ? 7 : (int32_t)(rng_u64() % V);
	float *ref = malloc((size_t)N * D * 4), *dref = calloc((size_t)V * D, 4);
	moe_embedding_fwd(ref, ids, wte, N, D);
	moe_embedding_bwd(dref, dout, ids, N, D, 3);
	bf16_t *dw = up_bf(wte, (size_t)V * D), *dd = up_bf(dout, (size_t)N * D), *dout_g = dmalloc((size_t)N * D * 2);
	int32_t *did = up(ids, N * 4);
	float *dg = dmalloc((size_t)V * D * 4);
	cudaMemset(dg, 0, (size_t)V * D * 4);
	LAUNCH_OK(moe_cuda_embedding_fwd(dout_g, did, dw, N, D, S, &gerr));
	LAUNCH_OK(moe_cuda_embedding_bwd(dg, dd, did, N, D, 3, S, &gerr));
	float *out = down_bf(dout_g, (size_t)N * D), *g = down(dg, (size_t)V * D * 4);
	CHECK_REL(out, ref, (size_t)N * D, 0.0, "embedding fwd");
	CHECK_REL(g, dref, (size_t)V * D, 1e-6, "embedding bwd");
	/* the deterministic backward (sorted by id, no atomics; about 4 rows an
	 * id here, and id 7's 100 rows over several chunks), added twice into an
	 * existing gradient: the same bits both times, the same bits as the
	 * host emulation of its threads, and the reference's sum */
	void *sc = dmalloc(moe_cuda_embedding_bwd_det_scratch(N, D));
	float *g2[2];
	for (int r = 0; r < 2; r++) {
		cr_assert_eq(cudaMemcpy(dg, dref, (size_t)V * D * 4, cudaMemcpyHostToDevice), cudaSuccess);
		LAUNCH_OK(moe_cuda_embedding_bwd_det(dg, dd, did, N, D, 3, sc, S, &gerr));
		g2[r] = down(dg, (size_t)V * D * 4);
	}
	int32_t *key = malloc(N * 4), *pos = malloc(N * 4);
	int at = 0; /* a stable counting sort by id, as the radix sort's */
	for (int v = 0; v < V; v++)
		for (int n = 0; n < N; n++)
			if (ids[n] == v)
				key[at] = v, pos[at++] = n;
	uint16_t *d16 = malloc((size_t)N * D * 2);
	for (size_t i = 0; i < (size_t)N * D; i++)
		d16[i] = moe_f32_to_bf16(dout[i]);
	float *emu = malloc((size_t)V * D * 4);
	memcpy(emu, dref, (size_t)V * D * 4);
	moe_cuda_embedding_bwd_chunks_host(emu, d16, key, pos, N, D, 3);
	for (size_t i = 0; i < (size_t)V * D; i++)
		dref[i] *= 2.f;
	CHECK_REL(g2[0], dref, (size_t)V * D, 1e-6, "embedding bwd (deterministic)");
	cr_expect(memcmp(g2[0], g2[1], (size_t)V * D * 4) == 0, "embedding bwd (deterministic): runs differ");
	cr_expect(memcmp(g2[0], emu, (size_t)V * D * 4) == 0,
		  "embedding bwd (deterministic): not the host emulation's bits");
	free(key), free(pos), free(d16), free(emu);
}

/* The deterministic embedding backward after its sort, run on the host
 * exactly as the kernels' threads run it (no GPU needed): ids from a small
 * vocabulary with one frequent id (about a fifth of the rows: runs over
 * many 32-row chunks) and pad rows, widths below, at and past the 1024
 * columns a block carries; the (id, position) pairs sorted stably on the
 * host.  From a zero gradient: an id whose rows lie in one chunk equals
 * ops.c's moe_embedding_bwd bit for bit (both add its rows in token
 * order); an id over several chunks, whose pieces are added in chunk
 * order, within 1e-6 of it relative to the row's size; the pad id's row
 * stays zero. */
Test(kernels, embedding_bwd_chunks_host)
{
	rng_seed(5);
	static const int widths[] = {8, 96, 256, 300, 768, 1032, 2100};
	int N = 1500, V = 97, pad = 4, hot = 9;
	int32_t *ids = malloc(N * 4), *key = malloc(N * 4), *pos = malloc(N * 4);
	for (int n = 0; n < N; n++)
		ids[n] = rng_u64() % 5 == 0 ? hot : (int32_t)(rng_u64() % V);
	int at = 0, first[97], last[97]; /* a stable counting sort by id */
	for (int v = 0; v < V; v++) {
		first[v] = at;
		for (int n = 0; n < N; n++)
			if (ids[n] == v) {
				key[at] = v;
				pos[at++] = n;
			}
		last[v] = at - 1;
	}
	cr_assert_eq(at, N);
	int crossing = 0;
	for (int v = 0; v < V; v++)
		crossing += last[v] >= first[v] && first[v] / 32 != last[v] / 32 && v != pad;
	cr_assert_gt(crossing, 10, "the ids should include runs across chunks");
	cr_assert_gt(last[hot] / 32 - first[hot] / 32, 5);
	for (size_t w = 0; w < sizeof widths / sizeof widths[0]; w++) {
		int D = widths[w];
		float *dout = rand_bf((size_t)N * D, 1.f), *ref = calloc((size_t)V * D, 4), *got = calloc((size_t)V * D, 4);
		uint16_t *d16 = malloc((size_t)N * D * 2);
		for (size_t i = 0; i < (size_t)N * D; i++)
			d16[i] = moe_f32_to_bf16(dout[i]);
		moe_embedding_bwd(ref, dout, ids, N, D, pad);
		moe_cuda_embedding_bwd_chunks_host(got, d16, key, pos, N, D, pad);
		size_t diff = 0, nz = 0;
		double worst = 0;
		for (int v = 0; v < V; v++) {
			bool one = last[v] < first[v] || first[v] / 32 == last[v] / 32;
			double row = 0, e = 0;
			for (int c = 0; c < D; c++) {
				size_t i = (size_t)v * D + c;
				row += (double)ref[i] * ref[i];
				e += ((double)got[i] - ref[i]) * ((double)got[i] - ref[i]);
				if (one)
					diff += memcmp(&got[i], &ref[i], 4) != 0;
				nz += got[i] != 0.f;
			}
			if (!one && row > 0)
				worst = fmax(worst, sqrt(e / row));
		}
		cr_expect_eq(diff, 0, "D %d: %zu elements of one-chunk ids differ from moe_embedding_bwd", D, diff);
		cr_expect_leq(worst, 1e-6, "D %d: an id over several chunks is %.3g off, relative", D, worst);
		for (int c = 0; c < D; c++)
			cr_expect_eq(got[(size_t)pad * D + c], 0.f, "D %d: the pad id's row was written", D);
		cr_expect_gt(nz, (size_t)(V - 10) * D, "D %d: the rows were summed", D);
		free(dout), free(ref), free(got), free(d16);
	}
	free(ids), free(key), free(pos);
}

/* D: the row kernels (1 to 8 column chunks of 256, partial chunks; olmoe's
 * 2048 is 8), the wide kernels (D > 2048: a block of 4 warps a row up to
 * 8192, 8 warps up to 16384), and the previous kernels under memk legacy
 * (the shared-memory path at D > 1024) */
static void rmsnorm_case(int N, int D);
Test(kernels, rmsnorm)
{
	NEED_GPU();
	rng_seed(2);
	rmsnorm_case(257, 768);
	rmsnorm_case(257, 96);
	rmsnorm_case(257, 1024);
	rmsnorm_case(257, 520);
	rmsnorm_case(257, 2048);
	/* the row kernels: 2, 1 and 4 column chunks, fewer rows than a block's
	 * warps, an odd row count; then the previous kernels (memk legacy) */
	rmsnorm_case(1000, 512);
	rmsnorm_case(33, 256);
	rmsnorm_case(5, 768);
	rmsnorm_case(77, 1016);
	rmsnorm_case(300, 1280);
	rmsnorm_case(129, 1544);
	rmsnorm_case(65, 2056);
	rmsnorm_case(300, 4096);
	rmsnorm_case(7, 6144);
	rmsnorm_case(301, 2304);  /* 3 chunks of 1024, the last a quarter full */
	rmsnorm_case(5000, 3072); /* more rows than resident blocks */
	rmsnorm_case(40, 8192);
	rmsnorm_case(33, 10240); /* 8 warps a row, 5 chunks of 2048 */
	rmsnorm_case(9, 16384);
	moe_cuda_memk_legacy(1);
	rmsnorm_case(257, 768);
	rmsnorm_case(257, 2048);
	rmsnorm_case(300, 4096);
	moe_cuda_memk_legacy(0);
}

static void rmsnorm_case(int N, int D)
{
	cr_log_info("rmsnorm N %d D %d", N, D);
	float *x = rand_bf((size_t)N * D, 2.f), *w = rand_bf(D, 1.f), *dout = rand_bf((size_t)N * D, 1.f);
	float *ref = malloc((size_t)N * D * 4), *rstd = malloc(N * 4), *dx = malloc((size_t)N * D * 4);
	float *dw = calloc(D, 4);
	moe_rmsnorm_fwd(ref, rstd, x, w, N, D, 1e-5f);
	moe_rmsnorm_bwd(dx, dw, dout, x, w, rstd, N, D);
	bf16_t *gx = up_bf(x, (size_t)N * D), *gout = dmalloc((size_t)N * D * 2), *gdo = up_bf(dout, (size_t)N * D);
	bf16_t *gdx = dmalloc((size_t)N * D * 2);
	float *gw = up(w, D * 4), *grs = dmalloc(N * 4), *gdw = dmalloc(D * 4);
	cudaMemset(gdw, 0, D * 4);
	LAUNCH_OK(moe_cuda_rmsnorm_fwd(gout, grs, gx, gw, N, D, 1e-5f, S, &gerr));
	LAUNCH_OK(moe_cuda_rmsnorm_bwd(gdx, gdw, NULL, gdo, gx, gw, grs, N, D, S, &gerr));
	CHECK_REL(down_bf(gout, (size_t)N * D), ref, (size_t)N * D, 2e-2, "rmsnorm out");
	CHECK_REL(down(grs, N * 4), rstd, N, 1e-5, "rmsnorm rstd");
	CHECK_REL(down_bf(gdx, (size_t)N * D), dx, (size_t)N * D, 2e-2, "rmsnorm dx");
	CHECK_REL(down(gdw, D * 4), dw, D, 1e-4, "rmsnorm dw");
	/* rmsnorm_bwd_add: dx += the input gradient, into a random residual
	 * gradient (dw accumulates a second time) */
	float *res = rand_bf((size_t)N * D, 1.f);
	bf16_t *gres = up_bf(res, (size_t)N * D);
	moe_rmsnorm_bwd_add(res, dw, dout, x, w, rstd, N, D);
	LAUNCH_OK(moe_cuda_rmsnorm_bwd_add(gres, gdw, NULL, gdo, gx, gw, grs, N, D, S, &gerr));
	CHECK_REL(down_bf(gres, (size_t)N * D), res, (size_t)N * D, 2e-2, "rmsnorm_bwd_add dx");
	CHECK_REL(down(gdw, D * 4), dw, D, 1e-4, "rmsnorm_bwd_add dw");
	/* the blocks' sums added in block order (part) instead of by atomics:
	 * both launchers into a zeroed dw, twice, the same bits */
	float *part = dmalloc((size_t)MOE_CUDA_NORM_PART_BLOCKS * D * 4), *d2[2];
	for (int r = 0; r < 2; r++) {
		cudaMemset(gdw, 0, D * 4);
		LAUNCH_OK(moe_cuda_rmsnorm_bwd(gdx, gdw, part, gdo, gx, gw, grs, N, D, S, &gerr));
		LAUNCH_OK(moe_cuda_rmsnorm_bwd_add(gres, gdw, part, gdo, gx, gw, grs, N, D, S, &gerr));
		d2[r] = down(gdw, D * 4);
	}
	CHECK_REL(d2[0], dw, D, 1e-4, "rmsnorm dw (block order)");
	cr_expect(memcmp(d2[0], d2[1], D * 4) == 0, "rmsnorm dw (block order): runs differ");
	cudaFree(part);
}

/* Fused QK-norm + RoPE against ops.c's rmsnorm then rope (and rope_bwd then
 * rmsnorm_bwd): seed-base's 8 x 96, one chunk per lane (4 x 32), a partial
 * chunk (5 x 16 = 80), six chunks (12 x 128 = 1536) and olmoe's 16 x 128. */
static void qknorm_rope_case(int B, int T, int H, int Dh)
{
	cr_log_info("qknorm_rope B %d T %d H %d Dh %d", B, T, H, Dh);
	cr_assert(moe_cuda_qknorm_rope_supported(H, Dh));
	int N = B * T, D = H * Dh;
	size_t n = (size_t)N * D;
	float *x = rand_bf(n, 2.f), *w = rand_bf(D, 1.f), *dout = rand_bf(n, 1.f);
	float *ref = malloc(n * 4), *rstd = malloc(N * 4), *g = malloc(n * 4), *dx = malloc(n * 4);
	float *dw = calloc(D, 4);
	moe_rmsnorm_fwd(ref, rstd, x, w, N, D, 1e-5f);
	moe_rope_fwd(ref, B, T, H, Dh, 10000.f);
	memcpy(g, dout, n * 4);
	moe_rope_bwd(g, B, T, H, Dh, 10000.f);
	moe_rmsnorm_bwd(dx, dw, g, x, w, rstd, N, D);
	float *cs = malloc((size_t)T * Dh / 2 * 4), *sn = malloc((size_t)T * Dh / 2 * 4);
	moe_cuda_rope_table(cs, sn, T, Dh, 10000.f);
	float *gc = up(cs, (size_t)T * Dh / 2 * 4), *gs = up(sn, (size_t)T * Dh / 2 * 4);
	bf16_t *gx = up_bf(x, n), *gdo = up_bf(dout, n), *gout = dmalloc(n * 2), *gdx = dmalloc(n * 2);
	float *gw = up(w, D * 4), *grs = dmalloc(N * 4), *gdw = dmalloc(D * 4);
	cudaMemset(gdw, 0, D * 4);
	LAUNCH_OK(moe_cuda_qknorm_rope_fwd(gout, grs, gx, gw, gc, gs, B, T, H, Dh, 1e-5f, S, &gerr));
	LAUNCH_OK(moe_cuda_qknorm_rope_bwd(gdx, gdw, NULL, gdo, gx, gw, grs, gc, gs, B, T, H, Dh, S, &gerr));
	CHECK_REL(down_bf(gout, n), ref, n, 2e-2, "qknorm_rope out");
	CHECK_REL(down(grs, N * 4), rstd, N, 1e-5, "qknorm_rope rstd");
	CHECK_REL(down_bf(gdx, n), dx, n, 2e-2, "qknorm_rope dx");
	CHECK_REL(down(gdw, D * 4), dw, D, 1e-4, "qknorm_rope dw");
	/* dw's block sums added in block order (part): twice, the same bits */
	float *part = dmalloc((size_t)MOE_CUDA_NORM_PART_BLOCKS * D * 4), *d2[2];
	for (int r = 0; r < 2; r++) {
		cudaMemset(gdw, 0, D * 4);
		LAUNCH_OK(moe_cuda_qknorm_rope_bwd(gdx, gdw, part, gdo, gx, gw, grs, gc, gs, B, T, H, Dh, S, &gerr));
		d2[r] = down(gdw, D * 4);
	}
	CHECK_REL(d2[0], dw, D, 1e-4, "qknorm_rope dw (block order)");
	cr_expect(memcmp(d2[0], d2[1], D * 4) == 0, "qknorm_rope dw (block order): runs differ");
	/* x as the k of q, k, v rows (row stride 3 D + 8, at column D), dx
	 * into such rows (the rest left alone): out, rstd, dx and dw the same
	 * bits as the contiguous launches' */
	int ld = 3 * D + 8;
	uint16_t *xs = malloc((size_t)N * ld * 2), *xb = down(gx, n * 2);
	memset(xs, 0x7f, (size_t)N * ld * 2);
	for (int r = 0; r < N; r++)
		memcpy(xs + (size_t)r * ld + D, xb + (size_t)r * D, (size_t)D * 2);
	bf16_t *gxs = up(xs, (size_t)N * ld * 2), *gdxs = dmalloc((size_t)N * ld * 2), *gout2 = dmalloc(n * 2);
	float *grs2 = dmalloc(N * 4);
	LAUNCH_OK(moe_cuda_qknorm_rope_fwd_ld(gout2, grs2, gxs + D, ld, gw, gc, gs, B, T, H, Dh, 1e-5f, S, &gerr));
	cudaMemset(gdw, 0, D * 4);
	LAUNCH_OK(moe_cuda_qknorm_rope_bwd_ld(gdxs + D, gdw, part, gdo, gxs + D, ld, gw, grs2, gc, gs, B, T, H, Dh, S,
					      &gerr));
	void *o1 = down(gout, n * 2), *o2 = down(gout2, n * 2), *r1 = down(grs, N * 4), *r2 = down(grs2, N * 4);
	void *dw2 = down(gdw, D * 4);
	uint16_t *dx1 = down(gdx, n * 2), *dxs = down(gdxs, (size_t)N * ld * 2);
	size_t rows_bad = 0, outside = 0;
	for (int r = 0; r < N; r++) {
		rows_bad += memcmp(dxs + (size_t)r * ld + D, dx1 + (size_t)r * D, (size_t)D * 2) != 0;
		for (int c = 0; c < ld; c++)
			outside += (c < D || c >= 2 * D) && dxs[(size_t)r * ld + c] != 0xffff;
	}
	cr_expect(memcmp(o1, o2, n * 2) == 0 && memcmp(r1, r2, N * 4) == 0,
		  "qknorm_rope fwd at row stride %d: not the contiguous launch's bits", ld);
	cr_expect(rows_bad == 0, "qknorm_rope bwd at row stride %d: %zu of %d dx rows differ", ld, rows_bad, N);
	cr_expect(outside == 0, "qknorm_rope bwd at row stride %d: %zu elements written outside dx", ld, outside);
	cr_expect(memcmp(dw2, d2[0], D * 4) == 0, "qknorm_rope bwd at row stride %d: dw differs", ld);
	cr_expect_eq(moe_cuda_qknorm_rope_fwd_ld(gout2, grs2, gxs, D - 8, gw, gc, gs, B, T, H, Dh, 1e-5f, S, &gerr),
		     MOE_EINVAL, "a row stride below the row refused");
	/* q (other values, other weights) at column 0 of those rows and k at
	 * D, both in one launch: each the same bits as its own launch */
	float *xq = rand_bf(n, 2.f), *wq = rand_bf(D, 1.f);
	bf16_t *gxq = up_bf(xq, n);
	uint16_t *xqb = down(gxq, n * 2);
	for (int r = 0; r < N; r++)
		memcpy(xs + (size_t)r * ld, xqb + (size_t)r * D, (size_t)D * 2);
	bf16_t *gxs2 = up(xs, (size_t)N * ld * 2), *goq = dmalloc(n * 2), *gok = dmalloc(n * 2);
	float *gwq = up(wq, D * 4), *grq = dmalloc(N * 4), *grk = dmalloc(N * 4);
	LAUNCH_OK(moe_cuda_qknorm_rope_fwd2_ld(goq, grq, gxs2, gwq, gok, grk, gxs2 + D, gw, ld, gc, gs, B, T, H, Dh, 1e-5f,
					       S, &gerr));
	void *oq2 = down(goq, n * 2), *ok2 = down(gok, n * 2), *rq2 = down(grq, N * 4), *rk2 = down(grk, N * 4);
	LAUNCH_OK(moe_cuda_qknorm_rope_fwd_ld(goq, grq, gxs2, ld, gwq, gc, gs, B, T, H, Dh, 1e-5f, S, &gerr));
	void *oq1 = down(goq, n * 2), *rq1 = down(grq, N * 4);
	cr_expect(memcmp(oq1, oq2, n * 2) == 0 && memcmp(rq1, rq2, N * 4) == 0,
		  "qknorm_rope fwd2: q not its own launch's bits");
	cr_expect(memcmp(o1, ok2, n * 2) == 0 && memcmp(r1, rk2, N * 4) == 0,
		  "qknorm_rope fwd2: k not its own launch's bits");
	free(xq), free(wq), free(xqb), free(oq2), free(ok2), free(rq2), free(rk2), free(oq1), free(rq1);
	cudaFree(gxq), cudaFree(gxs2), cudaFree(goq), cudaFree(gok), cudaFree(gwq), cudaFree(grq), cudaFree(grk);
	free(xs), free(xb), free(o1), free(o2), free(r1), free(r2), free(dw2), free(dx1), free(dxs);
	cudaFree(gxs), cudaFree(gdxs), cudaFree(gout2), cudaFree(grs2);
	cudaFree(part);
}

Test(kernels, qknorm_rope)
{
	NEED_GPU();
	rng_seed(13);
	qknorm_rope_case(2, 150, 8, 96);
	qknorm_rope_case(3, 70, 4, 32);
	qknorm_rope_case(1, 90, 5, 16);
	qknorm_rope_case(1, 40, 12, 128);
	/* the pair kernels' other shapes (pairs a lane 2 and 4; 3 with a
	 * partial lane group), an odd row count, fewer rows than a block's row
	 * groups; then the previous kernels (memk legacy) */
	qknorm_rope_case(1, 77, 4, 128);
	qknorm_rope_case(1, 65, 8, 128);
	qknorm_rope_case(3, 111, 11, 64);
	qknorm_rope_case(1, 333, 8, 96);
	qknorm_rope_case(1, 3, 8, 96);
	qknorm_rope_case(2, 130, 16, 128); /* olmoe's 2048: 32 lanes a row, 4 pairs a lane */
	qknorm_rope_case(1, 50, 14, 112);  /* 1568: 98 pairs, most lanes' fourth pair past the row */
	/* the wide kernels (a block of 128 threads a row): 4096 (2 pairs a
	 * thread), 2688 (168 pairs: most threads' second pair past the row),
	 * 8192 (4 pairs), more rows than resident blocks at 2304 */
	qknorm_rope_case(2, 33, 32, 128);
	qknorm_rope_case(1, 17, 24, 112);
	qknorm_rope_case(1, 9, 64, 128);
	qknorm_rope_case(4, 700, 18, 128);
	moe_cuda_memk_legacy(1);
	qknorm_rope_case(2, 150, 8, 96);
	cr_expect(!moe_cuda_qknorm_rope_supported(16, 128), "legacy: D 2048 takes the two kernels");
	moe_cuda_memk_legacy(0);
	cr_expect(!moe_cuda_qknorm_rope_supported(4, 8), "Dh 8 takes the two kernels");
	cr_expect(moe_cuda_qknorm_rope_supported(16, 128), "D 2048 (olmoe) takes the fused kernels");
	cr_expect(moe_cuda_qknorm_rope_supported(18, 128), "D 2304 takes the wide fused kernels");
	cr_expect(moe_cuda_qknorm_rope_supported(64, 128), "D 8192 takes the wide fused kernels");
	cr_expect(!moe_cuda_qknorm_rope_supported(65, 128), "D 8320 takes the two kernels");
}

/* Dh 32, 96, 128: eight pairs per thread; Dh 8: one pair per thread */
static void rope_case(int B, int T, int H, int Dh);
Test(kernels, rope)
{
	NEED_GPU();
	rng_seed(3);
	rope_case(2, 300, 3, 32);
	rope_case(2, 77, 8, 96);
	rope_case(1, 64, 2, 128);
	rope_case(2, 50, 3, 8);
}

static void rope_case(int B, int T, int H, int Dh)
{
	cr_log_info("rope B %d T %d H %d Dh %d", B, T, H, Dh);
	size_t n = (size_t)B * T * H * Dh;
	float *x = rand_bf(n, 1.f), *ref = malloc(n * 4), *refb = malloc(n * 4);
	memcpy(ref, x, n * 4);
	moe_rope_fwd(ref, B, T, H, Dh, 10000.f);
	memcpy(refb, x, n * 4);
	moe_rope_bwd(refb, B, T, H, Dh, 10000.f);
	float *cs = malloc((size_t)T * Dh / 2 * 4), *sn = malloc((size_t)T * Dh / 2 * 4);
	moe_cuda_rope_table(cs, sn, T, Dh, 10000.f);
	float *gc = up(cs, (size_t)T * Dh / 2 * 4), *gs = up(sn, (size_t)T * Dh / 2 * 4);
	bf16_t *g1 = up_bf(x, n), *g2 = up_bf(x, n);
	LAUNCH_OK(moe_cuda_rope(g1, gc, gs, B, T, H, Dh, 0, S, &gerr));
	LAUNCH_OK(moe_cuda_rope(g2, gc, gs, B, T, H, Dh, 1, S, &gerr));
	CHECK_REL(down_bf(g1, n), ref, n, 1e-2, "rope fwd");
	CHECK_REL(down_bf(g2, n), refb, n, 1e-2, "rope bwd");
}

/* One shape against the CPU reference, through every kernel variant
 * (moe_cuda_attention_*_config): each forward variant's out and lse, then
 * each backward variant's dq, dk, dv from the default forward's out and lse;
 * with the tensor-core head sizes every backward variant must also give
 * bit-identical gradients when run twice. */
static void attention_case(int B, int T, int H, int Dh)
{
	size_t n = (size_t)B * T * H * Dh, nl = (size_t)B * H * T;
	float *q = rand_bf(n, 2.f), *k = rand_bf(n, 2.f), *v = rand_bf(n, 1.f), *dout = rand_bf(n, 1.f);
	float *out = malloc(n * 4), *lse = malloc(nl * 4);
	float *dq = malloc(n * 4), *dk = malloc(n * 4), *dv = malloc(n * 4);
	moe_attention_fwd(out, lse, q, k, v, B, T, H, Dh);
	/* the backward sees the bf16 output, as on the GPU */
	float *out_bf = malloc(n * 4);
	for (size_t i = 0; i < n; i++)
		out_bf[i] = moe_bf16_to_f32(moe_f32_to_bf16(out[i]));
	moe_attention_bwd(dq, dk, dv, dout, q, k, v, out_bf, lse, B, T, H, Dh);
	bf16_t *gq = up_bf(q, n), *gk = up_bf(k, n), *gv = up_bf(v, n), *gdo = up_bf(dout, n);
	bf16_t *go = dmalloc(n * 2), *gdq = dmalloc(n * 2), *gdk = dmalloc(n * 2), *gdv = dmalloc(n * 2);
	float *gl = dmalloc(nl * 4);
	int ld = H * Dh;
	char what[96];
	const char *vn;
	for (int var = 1; (vn = moe_cuda_attention_fwd_config(var)) != NULL; var++) {
		cudaMemset(go, 0xff, n * 2);
		cudaMemset(gl, 0xff, nl * 4);
		LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gq, gk, gv, ld, ld, ld, ld, B, T, H, Dh, S, &gerr));
		float *o = down_bf(go, n), *l = down(gl, nl * 4);
		snprintf(what, sizeof(what), "attention fwd %s B=%d T=%d H=%d Dh=%d out", vn, B, T, H, Dh);
		CHECK_REL(o, out, n, 2e-2, what);
		snprintf(what, sizeof(what), "attention fwd %s B=%d T=%d H=%d Dh=%d lse", vn, B, T, H, Dh);
		CHECK_REL(l, lse, nl, 1e-3, what);
		free(o);
		free(l);
	}
	moe_cuda_attention_fwd_config(0);
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gq, gk, gv, ld, ld, ld, ld, B, T, H, Dh, S, &gerr));
	for (int var = 1; (vn = moe_cuda_attention_bwd_config(var)) != NULL; var++) {
		void *gdelta = dmalloc(moe_cuda_attention_bwd_scratch(B, T, H, Dh));
		uint16_t *first[3] = {NULL, NULL, NULL};
		bf16_t *gg[3] = {gdq, gdk, gdv};
		float *ref[3] = {dq, dk, dv};
		const char *nm[3] = {"dq", "dk", "dv"};
		/* the scalar fallback (other Dh) accumulates dk, dv with atomics */
		bool det = Dh == 16 || Dh == 32 || Dh == 64 || Dh == 96 || Dh == 128;
		for (int rep = 0; rep < (det ? 2 : 1); rep++) {
			for (int x = 0; x < 3; x++)
				cudaMemset(gg[x], 0xff, n * 2);
			LAUNCH_OK(moe_cuda_attention_bwd(gdq, gdk, gdv, gdelta, gdo, gq, gk, gv, go, gl, ld, ld, ld, ld,
							 B, T, H, Dh, S, &gerr));
			for (int x = 0; x < 3; x++) {
				if (rep == 0) {
					float *g = down_bf(gg[x], n);
					snprintf(what, sizeof(what), "attention bwd %s B=%d T=%d H=%d Dh=%d %s", vn, B, T,
						 H, Dh, nm[x]);
					CHECK_REL(g, ref[x], n, 3e-2, what);
					free(g);
					first[x] = down(gg[x], n * 2);
				} else {
					uint16_t *again = down(gg[x], n * 2);
					cr_expect(memcmp(first[x], again, n * 2) == 0,
						  "attention bwd %s B=%d T=%d H=%d Dh=%d: %s differs between two runs", vn,
						  B, T, H, Dh, nm[x]);
					free(again);
				}
			}
		}
		for (int x = 0; x < 3; x++)
			free(first[x]);
		cudaFree(gdelta);
	}
	moe_cuda_attention_bwd_config(0);
	cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(go), cudaFree(gdq), cudaFree(gdk);
	cudaFree(gdv), cudaFree(gl);
	free(q), free(k), free(v), free(dout), free(out), free(lse), free(dq), free(dk), free(dv), free(out_bf);
}

/* T: several 128-row blocks with a partial last one (200, 300, 130, 150,
 * 520), an exact multiple (256), one past it (129), below one tile (33), a
 * single token (1); Dh 64, 96, 128 run every variant, 16 and 32 the original
 * kernels, 8 and 24 the scalar fallback. */
Test(kernels, attention, .timeout = 240)
{
	NEED_GPU();
	rng_seed(4);
	attention_case(2, 200, 2, 64);
	attention_case(1, 130, 3, 96);
	attention_case(2, 300, 2, 96);
	attention_case(3, 33, 2, 96);
	attention_case(1, 129, 5, 96);
	attention_case(1, 1, 3, 96);
	attention_case(2, 256, 1, 128);
	attention_case(1, 150, 1, 128);
	attention_case(1, 520, 2, 128);
	attention_case(2, 1, 2, 64);
	attention_case(1, 77, 1, 64);
	attention_case(2, 64, 2, 16);
	attention_case(1, 77, 2, 32);
	attention_case(2, 40, 2, 8);  /* scalar fallback (attention_small.cu) */
	attention_case(1, 70, 3, 24);
}

/* A training-sized grid (far more blocks than run at once, so the fused
 * backward's ordered dQ sums wait across waves of blocks): every backward
 * variant against v1 (mma.sync, no ordering between blocks), each run twice
 * bit for bit.  Too large for the CPU reference, which attention_case()
 * covers on the same code paths. */
static void attention_large_case(int B, int T, int H, int Dh)
{
	size_t n = (size_t)B * T * H * Dh, nl = (size_t)B * H * T;
	float *q = rand_bf(n, 2.f), *k = rand_bf(n, 2.f), *v = rand_bf(n, 1.f), *dout = rand_bf(n, 1.f);
	bf16_t *gq = up_bf(q, n), *gk = up_bf(k, n), *gv = up_bf(v, n), *gdo = up_bf(dout, n);
	bf16_t *go = dmalloc(n * 2), *gg[3] = {dmalloc(n * 2), dmalloc(n * 2), dmalloc(n * 2)};
	float *gl = dmalloc(nl * 4), *ref[3] = {NULL, NULL, NULL};
	const char *nm[3] = {"dq", "dk", "dv"}, *vn;
	int ld = H * Dh;
	char what[96];
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gq, gk, gv, ld, ld, ld, ld, B, T, H, Dh, S, &gerr));
	for (int var = 1; (vn = moe_cuda_attention_bwd_config(var)) != NULL; var++) {
		void *gdelta = dmalloc(moe_cuda_attention_bwd_scratch(B, T, H, Dh));
		uint16_t *first[3];
		for (int rep = 0; rep < 2; rep++) {
			for (int x = 0; x < 3; x++)
				cudaMemset(gg[x], 0xff, n * 2);
			LAUNCH_OK(moe_cuda_attention_bwd(gg[0], gg[1], gg[2], gdelta, gdo, gq, gk, gv, go, gl, ld, ld, ld,
							 ld, B, T, H, Dh, S, &gerr));
			for (int x = 0; x < 3; x++) {
				if (rep == 1) {
					uint16_t *again = down(gg[x], n * 2);
					cr_expect(memcmp(first[x], again, n * 2) == 0,
						  "attention bwd %s B=%d T=%d H=%d Dh=%d: %s differs between two runs", vn,
						  B, T, H, Dh, nm[x]);
					free(again);
					free(first[x]);
					continue;
				}
				first[x] = down(gg[x], n * 2);
				float *g = down_bf(gg[x], n);
				if (var == 1) {
					ref[x] = g;
					continue;
				}
				snprintf(what, sizeof(what), "attention bwd %s vs v1 B=%d T=%d H=%d Dh=%d %s", vn, B, T, H,
					 Dh, nm[x]);
				CHECK_REL(g, ref[x], n, 2e-2, what);
				free(g);
			}
		}
		cudaFree(gdelta);
	}
	moe_cuda_attention_bwd_config(0);
	for (int x = 0; x < 3; x++)
		free(ref[x]), cudaFree(gg[x]);
	cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(go), cudaFree(gl);
	free(q), free(k), free(v), free(dout);
}

Test(kernels, attention_large, .timeout = 120)
{
	NEED_GPU();
	rng_seed(14);
	attention_large_case(4, 2048, 8, 96);
	attention_large_case(2, 2000, 8, 128);
}

/* The warp-specialised backward (fa3: TMA tensor maps over the row
 * strides) on q, k, v packed in one (B, T, 3, H, Dh) buffer as the model's
 * qkv projection writes them (row stride 3 H Dh) and dq, dk, dv written
 * into one such buffer: bit-identical to wgeg (the same products in the same
 * order), which attention_case() checks against the CPU reference, and
 * nothing written between the rows' q, k, v parts (the buffer is filled
 * with 0xff first). */
static void attention_fa3_case(int B, int T, int H, int Dh)
{
	int ld = 3 * H * Dh, ldo = H * Dh, ref = 0, nv = 0;
	size_t n = (size_t)B * T * ld, no = (size_t)B * T * ldo, nl = (size_t)B * H * T;
	float *qkv = rand_bf(n, 2.f), *dout = rand_bf(no, 1.f);
	bf16_t *gqkv = up_bf(qkv, n), *gdo = up_bf(dout, no), *go = dmalloc(no * 2), *gg = dmalloc(n * 2);
	bf16_t *q = gqkv, *k = gqkv + ldo, *v = gqkv + 2 * ldo;
	float *gl = dmalloc(nl * 4);
	uint16_t *want = NULL;
	const char *vn;
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, q, k, v, ld, ld, ld, ldo, B, T, H, Dh, S, &gerr));
	for (int pass = 0; pass < 2; pass++) /* wgeg first, then fa3 */
		for (int var = 1; (vn = moe_cuda_attention_bwd_config(var)) != NULL; var++) {
			bool is_ref = strcmp(vn, "wgeg") == 0, is_fa3 = strcmp(vn, "fa3") == 0;
			if (pass == 0 ? !is_ref : !is_fa3)
				continue;
			void *gdelta = dmalloc(moe_cuda_attention_bwd_scratch(B, T, H, Dh));
			cudaMemset(gg, 0xff, n * 2);
			LAUNCH_OK(moe_cuda_attention_bwd(gg, gg + ldo, gg + 2 * ldo, gdelta, gdo, q, k, v, go, gl, ld, ld,
							 ld, ldo, B, T, H, Dh, S, &gerr));
			uint16_t *got = down(gg, n * 2);
			if (pass == 0) {
				want = got;
				ref = var;
			} else {
				size_t bad = 0;
				for (size_t i = 0; i < n; i++)
					bad += got[i] != want[i];
				cr_expect(bad == 0, "attention bwd %s vs wgeg (packed qkv) B=%d T=%d H=%d Dh=%d: %zu of %zu differ",
					  vn, B, T, H, Dh, bad, n);
				nv++;
				free(got);
			}
			cudaFree(gdelta);
		}
	cr_expect(ref > 0 && nv == 1, "attention fa3 case: wgeg and fa3 ran (%d, %d)", ref, nv);
	moe_cuda_attention_bwd_config(0);
	free(want);
	cudaFree(gqkv), cudaFree(gdo), cudaFree(go), cudaFree(gg), cudaFree(gl);
	free(qkv), free(dout);
}

/* odd T with a partial last tile, T below one tile and one token, 64 to 128
 * head sizes, several B and H */
Test(kernels, attention_fa3, .timeout = 60)
{
	NEED_GPU();
	rng_seed(15);
	attention_fa3_case(3, 777, 5, 96);
	attention_fa3_case(2, 2049, 8, 96);
	attention_fa3_case(2, 1000, 3, 128);
	attention_fa3_case(1, 333, 2, 64);
	attention_fa3_case(4, 31, 3, 96);
	attention_fa3_case(2, 1, 2, 128);
}

/* The backward variant named vn, or 0 when the table has none. */
static int attention_bwd_index(const char *vn)
{
	const char *n;
	int found = 0;
	for (int var = 1; !found && (n = moe_cuda_attention_bwd_config(var)) != NULL; var++)
		if (strcmp(n, vn) == 0)
			found = var;
	moe_cuda_attention_bwd_config(0);
	return found;
}

/* The backward of variant var on q, k, v packed in one (B, T, 3, H, Dh)
 * buffer with 8 spare columns a row (row stride ld = 3 H Dh + 8), as the
 * model's qkv projection writes them, and dq, dk, dv into one such buffer,
 * filled with 0xff first: the spare columns must stay untouched.  dq, dk,
 * dv (B, T, H, Dh) back on the host, and their raw bits (3 B T H Dh). */
static void attention_bwd_packed(int var, const bf16_t *gqkv, const bf16_t *gdo, const bf16_t *go, const float *gl,
				 int B, int T, int H, int Dh, float *g[3], uint16_t *bits)
{
	int hd = H * Dh, ld = 3 * hd + 8;
	size_t rows = (size_t)B * T, n = rows * ld, bad = 0;
	bf16_t *gg = dmalloc(n * 2);
	const char *vn = moe_cuda_attention_bwd_config(var);
	void *scr = dmalloc(moe_cuda_attention_bwd_scratch(B, T, H, Dh));
	cudaMemset(gg, 0xff, n * 2);
	LAUNCH_OK(moe_cuda_attention_bwd(gg, gg + hd, gg + 2 * hd, scr, gdo, gqkv, gqkv + hd, gqkv + 2 * hd, go, gl, ld,
					 ld, ld, hd, B, T, H, Dh, S, &gerr));
	moe_cuda_attention_bwd_config(0);
	uint16_t *raw = down(gg, n * 2);
	for (size_t r = 0; r < rows; r++) {
		for (int x = 0; x < 3; x++)
			for (int c = 0; c < hd; c++) {
				uint16_t u = raw[r * ld + x * hd + c];
				g[x][r * hd + c] = moe_bf16_to_f32(u);
				bits[(x * rows + r) * hd + c] = u;
			}
		for (int c = 3 * hd; c < ld; c++)
			bad += raw[r * ld + c] != 0xffff;
	}
	cr_expect(bad == 0, "attention bwd %s B=%d T=%d H=%d Dh=%d: %zu elements written past the rows", vn, B, T, H,
		  Dh, bad);
	free(raw);
	cudaFree(gg), cudaFree(scr);
}

/* The one-kernel backward vn (fa3f: dK/dV per 128 keys, each query tile's
 * dQ contributions added in fp32 in a fixed order) on packed qkv
 * (attention_bwd_packed): with cpu, dq, dk, dv against
 * the CPU reference (lib/model/ops.c; attention_case()'s tolerance 3e-2);
 * always against fa3 (the two-kernel default): dk and dv bit-identical (the
 * same products in the same order), dq within 1e-2 relative over the whole
 * tensor and within 2e-2 in every (head, 64-query tile) block, so that a
 * lost or doubled contribution to one tile cannot hide in the total, and
 * not bit-identical over a large tensor (which would mean fa3 ran in its
 * place); run twice bit for bit. */
static void attention_fa3f_case(int B, int T, int H, int Dh, bool cpu)
{
	const char *vn = "fa3f";
	int hd = H * Dh, ld = 3 * hd + 8;
	size_t n = (size_t)B * T * hd, nl = (size_t)B * H * T, rows = (size_t)B * T;
	float *qkv = rand_bf(rows * ld, 2.f), *dout = rand_bf(n, 1.f);
	int var = attention_bwd_index(vn), fvar = attention_bwd_index("fa3");
	cr_assert(var > 0 && fvar > 0, "backward variants %s and fa3 in the table", vn);
	bf16_t *gqkv = up_bf(qkv, rows * ld), *gdo = up_bf(dout, n), *go = dmalloc(n * 2);
	float *gl = dmalloc(nl * 4);
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gqkv, gqkv + hd, gqkv + 2 * hd, ld, ld, ld, hd, B, T, H, Dh, S,
					 &gerr));
	float *g[3], *f[3];
	const char *nm[3] = {"dq", "dk", "dv"};
	uint16_t *bits = malloc(3 * n * 2), *fbits = malloc(3 * n * 2), *again = malloc(3 * n * 2);
	for (int x = 0; x < 3; x++)
		g[x] = malloc(n * 4), f[x] = malloc(n * 4);
	char what[128];
	attention_bwd_packed(var, gqkv, gdo, go, gl, B, T, H, Dh, g, bits);
	attention_bwd_packed(fvar, gqkv, gdo, go, gl, B, T, H, Dh, f, fbits);
	if (cpu) {
		float *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4), *out = malloc(n * 4);
		float *lse = malloc(nl * 4), *ref[3] = {malloc(n * 4), malloc(n * 4), malloc(n * 4)};
		for (size_t r = 0; r < rows; r++) {
			memcpy(q + r * hd, qkv + r * ld, hd * 4);
			memcpy(k + r * hd, qkv + r * ld + hd, hd * 4);
			memcpy(v + r * hd, qkv + r * ld + 2 * hd, hd * 4);
		}
		moe_attention_fwd(out, lse, q, k, v, B, T, H, Dh);
		for (size_t i = 0; i < n; i++) /* the backward sees the bf16 output, as on the GPU */
			out[i] = moe_bf16_to_f32(moe_f32_to_bf16(out[i]));
		moe_attention_bwd(ref[0], ref[1], ref[2], dout, q, k, v, out, lse, B, T, H, Dh);
		for (int x = 0; x < 3; x++) {
			snprintf(what, sizeof(what), "attention bwd %s (packed qkv) B=%d T=%d H=%d Dh=%d %s", vn, B, T, H,
				 Dh, nm[x]);
			CHECK_REL(g[x], ref[x], n, 3e-2, what);
			free(ref[x]);
		}
		free(q), free(k), free(v), free(out), free(lse);
	}
	size_t dkv_bad = 0, dq_same = 0, bad_tiles = 0, ntiles = 0;
	for (size_t i = n; i < 3 * n; i++)
		dkv_bad += bits[i] != fbits[i];
	for (size_t i = 0; i < n; i++)
		dq_same += bits[i] == fbits[i];
	cr_expect(dkv_bad == 0, "attention bwd %s vs fa3 B=%d T=%d H=%d Dh=%d: %zu of %zu dk, dv elements differ", vn,
		  B, T, H, Dh, dkv_bad, 2 * n);
	snprintf(what, sizeof(what), "attention bwd %s vs fa3 (packed qkv) B=%d T=%d H=%d Dh=%d dq", vn, B, T, H, Dh);
	CHECK_REL(g[0], f[0], n, 1e-2, what);
	if (n >= 1000000)
		cr_expect(dq_same < n, "attention bwd %s B=%d T=%d H=%d Dh=%d: dq bit-identical to fa3's (did it run?)",
			  vn, B, T, H, Dh);
	/* every (b, h, 64-query tile) block of dq against fa3's */
	float *tg = malloc(64 * Dh * 4), *tf = malloc(64 * Dh * 4);
	for (int b = 0; b < B; b++)
		for (int h = 0; h < H; h++)
			for (int t0 = 0; t0 < T; t0 += 64) {
				int m = T - t0 < 64 ? T - t0 : 64;
				for (int r = 0; r < m; r++) {
					size_t o = ((size_t)b * T + t0 + r) * hd + (size_t)h * Dh;
					memcpy(tg + r * Dh, g[0] + o, Dh * 4);
					memcpy(tf + r * Dh, f[0] + o, Dh * 4);
				}
				bad_tiles += !(rel_err(tg, tf, (size_t)m * Dh) <= 2e-2);
				ntiles++;
			}
	cr_expect(bad_tiles == 0, "attention bwd %s vs fa3 B=%d T=%d H=%d Dh=%d: %zu of %zu dq tiles off", vn, B, T,
		  H, Dh, bad_tiles, ntiles);
	free(tg), free(tf);
	attention_bwd_packed(var, gqkv, gdo, go, gl, B, T, H, Dh, f, again);
	cr_expect(memcmp(bits, again, 3 * n * 2) == 0, "attention bwd %s B=%d T=%d H=%d Dh=%d: differs between two runs",
		  vn, B, T, H, Dh);
	for (int x = 0; x < 3; x++)
		free(g[x]), free(f[x]);
	free(bits), free(fbits), free(again), free(qkv), free(dout);
	cudaFree(gqkv), cudaFree(gdo), cudaFree(go), cudaFree(gl);
}

/* fa3f: odd T (one token, below a tile, a multiple of 64 but not of 128:
 * the last block's second warpgroup has no keys, partial last tiles),
 * several B and H, Dh 96 and 128 (64 runs fa3), against the CPU reference;
 * then the seed-base and olmoe-like grids (many waves of blocks, the
 * ordered adds waiting across them) against fa3 */
Test(kernels, attention_fa3f, .timeout = 60)
{
	NEED_GPU();
	rng_seed(19);
	static const struct {
		int B, T, H, Dh;
		bool cpu;
	} cs[] = {{2, 333, 2, 96, true},   {1, 777, 2, 96, true},    {1, 1000, 2, 128, true},
		  {1, 2049, 1, 96, true},  {4, 31, 3, 96, true},     {2, 1, 2, 128, true},
		  {2, 192, 3, 128, true},  {2, 64, 2, 96, true},     {1, 129, 3, 96, true},
		  {1, 200, 2, 64, true},   {16, 2048, 8, 96, false}, {2, 4096, 16, 128, false}};
	for (size_t i = 0; i < sizeof cs / sizeof cs[0]; i++)
		attention_fa3f_case(cs[i].B, cs[i].T, cs[i].H, cs[i].Dh, cs[i].cpu);
}

/* The query's QK-norm + RoPE backward straight from fa3f's fp32 dQ tiles
 * (moe_cuda_attention_bwd_acc, then moe_cuda_qknorm_rope_bwd_acc) against
 * the same variant writing dq in bf16 and moe_cuda_qknorm_rope_bwd from it:
 * for fa3f, which keeps the tiles, dq left unwritten (still the NaN
 * poison), dk, dv, the QK-norm's dx and dw (both in block order through
 * part) bit-identical; for fa3, which writes dq itself, no tiles and dq
 * bit-identical.  T not a multiple of the 64-row tiles, a
 * 2048-wide row (olmoe's 16 x 128) and the seed-base grid. */
static void qknorm_acc_case(const char *vn, int B, int T, int H, int Dh)
{
	int var = attention_bwd_index(vn), D = H * Dh, N = B * T;
	cr_assert(var > 0, "backward variant %s in the table", vn);
	bool keeps = strcmp(vn, "fa3f") == 0;
	size_t n = (size_t)N * D, nl = (size_t)B * H * T;
	float *q = rand_bf(n, 2.f), *k = rand_bf(n, 2.f), *v = rand_bf(n, 2.f), *dout = rand_bf(n, 1.f);
	float *x = rand_bf(n, 2.f), *w = rand_bf(D, 1.f);
	float *cs = malloc((size_t)T * Dh / 2 * 4), *sn = malloc((size_t)T * Dh / 2 * 4);
	moe_cuda_rope_table(cs, sn, T, Dh, 10000.f);
	float *gc = up(cs, (size_t)T * Dh / 2 * 4), *gs = up(sn, (size_t)T * Dh / 2 * 4);
	bf16_t *gq = up_bf(q, n), *gk = up_bf(k, n), *gv = up_bf(v, n), *gdo = up_bf(dout, n), *gx = up_bf(x, n);
	bf16_t *go = dmalloc(n * 2), *gy = dmalloc(n * 2), *dq[2], *dk[2], *dv[2], *dx[2];
	float *gl = dmalloc(nl * 4), *gw = up(w, D * 4), *grs = dmalloc(N * 4), *dw[2];
	float *part = dmalloc((size_t)MOE_CUDA_NORM_PART_BLOCKS * D * 4);
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gq, gk, gv, D, D, D, D, B, T, H, Dh, S, &gerr));
	LAUNCH_OK(moe_cuda_qknorm_rope_fwd(gy, grs, gx, gw, gc, gs, B, T, H, Dh, 1e-5f, S, &gerr));
	cr_assert_str_eq(moe_cuda_attention_bwd_config(var), vn);
	void *scr = dmalloc(moe_cuda_attention_bwd_scratch(B, T, H, Dh));
	const float *acc = (const float *)1;
	for (int r = 0; r < 2; r++) {
		dq[r] = dmalloc(n * 2), dk[r] = dmalloc(n * 2), dv[r] = dmalloc(n * 2), dx[r] = dmalloc(n * 2);
		dw[r] = dmalloc(D * 4);
		cudaMemset(dw[r], 0, D * 4);
	}
	LAUNCH_OK(moe_cuda_attention_bwd(dq[0], dk[0], dv[0], scr, gdo, gq, gk, gv, go, gl, D, D, D, D, B, T, H, Dh, S,
					 &gerr));
	LAUNCH_OK(moe_cuda_qknorm_rope_bwd(dx[0], dw[0], part, dq[0], gx, gw, grs, gc, gs, B, T, H, Dh, S, &gerr));
	LAUNCH_OK(moe_cuda_attention_bwd_acc(dq[1], dk[1], dv[1], scr, gdo, gq, gk, gv, go, gl, D, D, D, D, B, T, H, Dh,
					     &acc, S, &gerr));
	moe_cuda_attention_bwd_config(0);
	uint16_t *b0 = down(dq[0], n * 2), *b1 = down(dq[1], n * 2);
	size_t untouched = 0;
	for (size_t i = 0; i < n; i++)
		untouched += b1[i] == 0xffff;
	if (keeps) {
		cr_assert_not_null(acc, "%s B=%d T=%d H=%d Dh=%d: no fp32 dQ tiles kept", vn, B, T, H, Dh);
		cr_expect(untouched == n, "%s B=%d T=%d H=%d Dh=%d: %zu of %zu dq elements written", vn, B, T, H, Dh,
			  n - untouched, n);
		LAUNCH_OK(moe_cuda_qknorm_rope_bwd_acc(dx[1], dw[1], part, acc, gx, D, gw, grs, gc, gs, B, T, H, Dh, S,
						       &gerr));
	} else {
		cr_expect_null(acc, "%s writes dq itself: no tiles expected", vn);
		cr_expect(memcmp(b0, b1, n * 2) == 0, "%s B=%d T=%d H=%d Dh=%d: dq differs", vn, B, T, H, Dh);
		LAUNCH_OK(moe_cuda_qknorm_rope_bwd(dx[1], dw[1], part, dq[1], gx, gw, grs, gc, gs, B, T, H, Dh, S, &gerr));
	}
	struct {
		const char *name;
		const void *a, *b;
		size_t bytes;
	} cmp[] = {{"dk", dk[0], dk[1], n * 2}, {"dv", dv[0], dv[1], n * 2}, {"qknorm dx", dx[0], dx[1], n * 2},
		   {"qknorm dw", dw[0], dw[1], (size_t)D * 4}};
	for (size_t c = 0; c < sizeof cmp / sizeof cmp[0]; c++) {
		void *ha = down(cmp[c].a, cmp[c].bytes), *hb = down(cmp[c].b, cmp[c].bytes);
		cr_expect(memcmp(ha, hb, cmp[c].bytes) == 0, "%s B=%d T=%d H=%d Dh=%d: %s not bit-identical", vn, B, T,
			  H, Dh, cmp[c].name);
		free(ha), free(hb);
	}
	float *hdx = down_bf(dx[1], n);
	check_all_written(hdx, n, "qknorm dx from the dQ tiles");
	cr_log_info("qknorm from dQ tiles, %s B=%d T=%d H=%d Dh=%d: %s", vn, B, T, H, Dh,
		    keeps ? "tiles read, dq unwritten" : "dq written");
	free(hdx), free(b0), free(b1), free(q), free(k), free(v), free(dout), free(x), free(w), free(cs), free(sn);
	for (int r = 0; r < 2; r++)
		cudaFree(dq[r]), cudaFree(dk[r]), cudaFree(dv[r]), cudaFree(dx[r]), cudaFree(dw[r]);
	cudaFree(gc), cudaFree(gs), cudaFree(gq), cudaFree(gk), cudaFree(gv), cudaFree(gdo), cudaFree(gx);
	cudaFree(go), cudaFree(gy), cudaFree(gl), cudaFree(gw), cudaFree(grs), cudaFree(part), cudaFree(scr);
}

Test(kernels, qknorm_rope_from_dq_tiles, .timeout = 60)
{
	NEED_GPU();
	if (!moe_cuda_grouped_wgmma_supported())
		cr_skip_test("not an sm_90 device: no fa3f");
	rng_seed(29);
	static const char *const vns[] = {"fa3f", "fa3"};
	for (int i = 0; i < 2; i++) {
		qknorm_acc_case(vns[i], 2, 333, 4, 96);
		qknorm_acc_case(vns[i], 1, 200, 16, 128);
		qknorm_acc_case(vns[i], 3, 64, 2, 128);
		qknorm_acc_case(vns[i], 1, 1, 8, 96);
	}
	qknorm_acc_case("fa3f", 16, 2048, 8, 96);
	/* where the tiles cannot be read: a clear error, nothing launched */
	cr_expect(!moe_cuda_qknorm_rope_acc_supported(4, 64));
	cr_expect(!moe_cuda_qknorm_rope_acc_supported(24, 128)); /* 3072 columns: the wide kernels */
	float *dummy = dmalloc(64);
	cr_expect_eq(moe_cuda_qknorm_rope_bwd_acc(NULL, NULL, NULL, dummy, NULL, 256, NULL, NULL, NULL, NULL, 1, 1, 4, 64,
						  S, &gerr),
		     MOE_EUNSUPPORTED);
	cr_expect_eq(moe_cuda_qknorm_rope_bwd_acc(NULL, NULL, NULL, NULL, NULL, 768, NULL, NULL, NULL, NULL, 1, 1, 8, 96,
						  S, &gerr),
		     MOE_EINVAL, "no tiles: refused");
	cudaFree(dummy);
}

/* The forward variant named vn, or 0 when the table has none. */
static int attention_fwd_index(const char *vn)
{
	const char *n;
	int found = 0;
	for (int var = 1; !found && (n = moe_cuda_attention_fwd_config(var)) != NULL; var++)
		if (strcmp(n, vn) == 0)
			found = var;
	moe_cuda_attention_fwd_config(0);
	return found;
}

/* The forward of variant var on q, k, v packed in one (B, T, 3, H, Dh)
 * buffer (row stride 3 H Dh) as the model's qkv projection writes them,
 * out into rows of ldo = H Dh + 8 (the 8 columns past each row must stay
 * untouched: the buffer is filled with 0xff first); out (B, T, H, Dh) and
 * lse (B, H, T) back on the host.  With check, the variant must not have
 * fallen back to another kernel where the device runs TMA kernels. */
static void attention_fwd_packed(int var, const bf16_t *gqkv, int B, int T, int H, int Dh, float *out, float *lse,
				 bool check)
{
	int ld = 3 * H * Dh, ldo = H * Dh + 8, hd = H * Dh;
	size_t no = (size_t)B * T * ldo, nl = (size_t)B * H * T, bad = 0;
	bf16_t *go = dmalloc(no * 2);
	float *gl = dmalloc(nl * 4);
	int fb = moe_cuda_attention_fwd_fallbacks();
	const char *vn = moe_cuda_attention_fwd_config(var);
	LAUNCH_OK(moe_cuda_attention_fwd(go, gl, gqkv, gqkv + hd, gqkv + 2 * hd, ld, ld, ld, ldo, B, T, H, Dh, S,
					 &gerr));
	moe_cuda_attention_fwd_config(0);
	if (check)
		cr_expect(!moe_cuda_grouped_tma_supported() || moe_cuda_attention_fwd_fallbacks() == fb,
			  "attention fwd %s B=%d T=%d H=%d Dh=%d: fell back to another kernel", vn, B, T, H, Dh);
	uint16_t *raw = down(go, no * 2);
	for (size_t r = 0; r < (size_t)B * T; r++) {
		for (int c = 0; c < hd; c++)
			out[r * hd + c] = moe_bf16_to_f32(raw[r * ldo + c]);
		for (int c = hd; c < ldo; c++)
			bad += raw[r * ldo + c] != 0xffff;
	}
	cr_expect(bad == 0, "attention fwd %s B=%d T=%d H=%d Dh=%d: %zu elements written past the rows", vn, B, T, H,
		  Dh, bad);
	float *l = down(gl, nl * 4);
	memcpy(lse, l, nl * 4);
	free(l), free(raw);
	cudaFree(go), cudaFree(gl);
}

/* out, lse against ref, rl: the relative L2 error over the whole tensor
 * (attention_case()'s tolerances), and every (query, head) row's out within
 * 5 times that and its lse within 1e-2, so that one wrong row of many (a
 * block's last rows, a tile past T) cannot hide in the total */
static void attention_fwd_compare(const char *what, const float *out, const float *lse, const float *ref,
				  const float *rl, int B, int T, int H, int Dh)
{
	size_t n = (size_t)B * T * H * Dh, nl = (size_t)B * H * T, badrow = 0, badl = 0;
	char msg[128];
	snprintf(msg, sizeof(msg), "%s B=%d T=%d H=%d Dh=%d out", what, B, T, H, Dh);
	CHECK_REL(out, ref, n, 2e-2, msg);
	snprintf(msg, sizeof(msg), "%s B=%d T=%d H=%d Dh=%d lse", what, B, T, H, Dh);
	CHECK_REL(lse, rl, nl, 1e-3, msg);
	for (size_t r = 0; r < n / Dh; r++)
		badrow += !(rel_err(out + r * Dh, ref + r * Dh, Dh) <= 0.1);
	for (size_t i = 0; i < nl; i++)
		badl += !(fabsf(lse[i] - rl[i]) <= 1e-2f);
	cr_expect(badrow == 0 && badl == 0, "%s B=%d T=%d H=%d Dh=%d: %zu of %zu rows' out, %zu lse off", what, B, T,
		  H, Dh, badrow, n / Dh, badl);
}

/* the forward variant vn against the CPU reference (lib/model/ops.c) on
 * packed qkv, and run twice bit for bit */
static void attention_fa3_fwd_case(const char *vn, int B, int T, int H, int Dh)
{
	int hd = H * Dh;
	size_t n = (size_t)B * T * hd, nl = (size_t)B * H * T;
	float *qkv = rand_bf(3 * n, 2.f), *q = malloc(n * 4), *k = malloc(n * 4), *v = malloc(n * 4);
	for (size_t r = 0; r < (size_t)B * T; r++) {
		memcpy(q + r * hd, qkv + 3 * r * hd, hd * 4);
		memcpy(k + r * hd, qkv + (3 * r + 1) * hd, hd * 4);
		memcpy(v + r * hd, qkv + (3 * r + 2) * hd, hd * 4);
	}
	float *ref = malloc(n * 4), *rl = malloc(nl * 4), *out = malloc(n * 4), *lse = malloc(nl * 4);
	float *out2 = malloc(n * 4), *lse2 = malloc(nl * 4);
	char what[64];
	int var = attention_fwd_index(vn);
	cr_assert(var > 0, "forward variant %s in the table", vn);
	moe_attention_fwd(ref, rl, q, k, v, B, T, H, Dh);
	bf16_t *gqkv = up_bf(qkv, 3 * n);
	attention_fwd_packed(var, gqkv, B, T, H, Dh, out, lse, true);
	snprintf(what, sizeof(what), "attention fwd %s (packed qkv)", vn);
	attention_fwd_compare(what, out, lse, ref, rl, B, T, H, Dh);
	attention_fwd_packed(var, gqkv, B, T, H, Dh, out2, lse2, false);
	cr_expect(memcmp(out, out2, n * 4) == 0 && memcmp(lse, lse2, nl * 4) == 0,
		  "attention fwd %s B=%d T=%d H=%d Dh=%d: differs between two runs", vn, B, T, H, Dh);
	cudaFree(gqkv);
	free(qkv), free(q), free(k), free(v), free(ref), free(rl), free(out), free(lse), free(out2), free(lse2);
}

/* the forward variant vn against wg1 (the default at Dh 96) on a
 * training-sized grid (many waves of blocks), too large for the CPU
 * reference */
static void attention_fa3_fwd_large_case(const char *vn, int B, int T, int H, int Dh)
{
	size_t n = (size_t)B * T * H * Dh, nl = (size_t)B * H * T;
	float *qkv = rand_bf(3 * n, 2.f), *ref = malloc(n * 4), *rl = malloc(nl * 4);
	float *out = malloc(n * 4), *lse = malloc(nl * 4);
	char what[64];
	int var = attention_fwd_index(vn), ref_var = attention_fwd_index("wg1");
	cr_assert(var > 0 && ref_var > 0, "forward variants %s and wg1 in the table", vn);
	bf16_t *gqkv = up_bf(qkv, 3 * n);
	attention_fwd_packed(ref_var, gqkv, B, T, H, Dh, ref, rl, false);
	attention_fwd_packed(var, gqkv, B, T, H, Dh, out, lse, true);
	snprintf(what, sizeof(what), "attention fwd %s vs wg1", vn);
	attention_fwd_compare(what, out, lse, ref, rl, B, T, H, Dh);
	cudaFree(gqkv);
	free(qkv), free(ref), free(rl), free(out), free(lse);
}

/* odd T (one token, below a tile, partial last blocks), T a multiple of 64
 * but not of 128 (the last block's second warpgroup has no rows), several
 * B and H, Dh 64, 96, 128; then the seed-base and olmoe-like grids */
static void attention_fa3_fwd_cases(const char *vn)
{
	attention_fa3_fwd_case(vn, 3, 333, 5, 96);
	attention_fa3_fwd_case(vn, 2, 2049, 2, 96);
	attention_fa3_fwd_case(vn, 2, 1000, 3, 128);
	attention_fa3_fwd_case(vn, 1, 1000, 2, 64);
	attention_fa3_fwd_case(vn, 4, 31, 3, 96);
	attention_fa3_fwd_case(vn, 2, 1, 2, 128);
	attention_fa3_fwd_case(vn, 3, 1, 1, 64);
	attention_fa3_fwd_case(vn, 2, 192, 3, 128);
	attention_fa3_fwd_case(vn, 2, 64, 2, 96);
	attention_fa3_fwd_case(vn, 1, 129, 4, 64);
	attention_fa3_fwd_large_case(vn, 16, 2048, 8, 96);
	attention_fa3_fwd_large_case(vn, 2, 4096, 16, 128);
}

/* one test a variant, so that a hang (a wrong register split or barrier
 * phase waits for good) shows which */
Test(kernels, attention_fa3_fwd, .timeout = 60)
{
	NEED_GPU();
	rng_seed(16);
	attention_fa3_fwd_cases("fa3");
}

Test(kernels, attention_fa3k128_fwd, .timeout = 60)
{
	NEED_GPU();
	rng_seed(17);
	attention_fa3_fwd_cases("fa3k128");
}

/* The persistent forward vn (attention_fa3p.cu) against refn (fa3k128,
 * whose arithmetic it repeats in another schedule) on packed
 * qkv: within attention_fwd_compare()'s tolerances, and how many elements
 * differ in their bits reported (0 expected: the same products in the same
 * order; not asserted, the compiler may contract another way) */
static void attention_fa3p_vs_case(const char *vn, const char *refn, int B, int T, int H, int Dh)
{
	size_t n = (size_t)B * T * H * Dh, nl = (size_t)B * H * T, dout = 0, dl = 0;
	float *qkv = rand_bf(3 * n, 2.f), *ref = malloc(n * 4), *rl = malloc(nl * 4);
	float *out = malloc(n * 4), *lse = malloc(nl * 4);
	char what[64];
	int var = attention_fwd_index(vn), ref_var = attention_fwd_index(refn);
	cr_assert(var > 0 && ref_var > 0, "forward variants %s and %s in the table", vn, refn);
	bf16_t *gqkv = up_bf(qkv, 3 * n);
	attention_fwd_packed(ref_var, gqkv, B, T, H, Dh, ref, rl, false);
	attention_fwd_packed(var, gqkv, B, T, H, Dh, out, lse, true);
	snprintf(what, sizeof(what), "attention fwd %s vs %s", vn, refn);
	attention_fwd_compare(what, out, lse, ref, rl, B, T, H, Dh);
	for (size_t i = 0; i < n; i++)
		dout += memcmp(out + i, ref + i, 4) != 0;
	for (size_t i = 0; i < nl; i++)
		dl += memcmp(lse + i, rl + i, 4) != 0;
	cr_log_info("%s B=%d T=%d H=%d Dh=%d: bits differ in %zu of %zu out, %zu of %zu lse elements", what, B, T, H,
		    Dh, dout, n, dl, nl);
	cudaFree(gqkv);
	free(qkv), free(ref), free(rl), free(out), free(lse);
}

/* fa3's ten shapes against the CPU reference on the full persistent grid
 * (mostly one item a block); then at most 3 blocks and 1 block, so that
 * every block runs many items (the stage, Q-buffer and turn parities
 * carried across items, the claim counter wrapping, partial last blocks
 * and empty second warpgroups among them); then the seed-base and
 * olmoe-like grids against refn (many items a block, the L2-grouped
 * order); then two small shapes again, which skip items (rows left as
 * the 0xff fill, NaN) unless every launch left the claim counter at 0. */
static void attention_fa3p_fwd_cases(const char *vn, const char *refn)
{
	attention_fa3_fwd_case(vn, 3, 333, 5, 96);
	attention_fa3_fwd_case(vn, 2, 2049, 2, 96);
	attention_fa3_fwd_case(vn, 2, 1000, 3, 128);
	attention_fa3_fwd_case(vn, 1, 1000, 2, 64);
	attention_fa3_fwd_case(vn, 4, 31, 3, 96);
	attention_fa3_fwd_case(vn, 2, 1, 2, 128);
	attention_fa3_fwd_case(vn, 3, 1, 1, 64);
	attention_fa3_fwd_case(vn, 2, 192, 3, 128);
	attention_fa3_fwd_case(vn, 2, 64, 2, 96);
	attention_fa3_fwd_case(vn, 1, 129, 4, 64);
	moe_cuda_attention_fa3p_grid(3);
	attention_fa3_fwd_case(vn, 3, 333, 5, 96);  /* 45 items on 3 blocks */
	attention_fa3_fwd_case(vn, 2, 1000, 3, 128); /* 48 */
	attention_fa3_fwd_case(vn, 5, 64, 7, 96);    /* 35 one-tile items, second warpgroups empty */
	moe_cuda_attention_fa3p_grid(1);
	attention_fa3_fwd_case(vn, 4, 31, 3, 96);   /* 12 items on one block */
	attention_fa3_fwd_case(vn, 1, 129, 4, 64);  /* 8 */
	attention_fa3_fwd_case(vn, 1, 700, 2, 128); /* 12 of 1 to 11 tiles */
	attention_fa3p_vs_case(vn, refn, 2, 555, 3, 96);
	moe_cuda_attention_fa3p_grid(0);
	attention_fa3p_vs_case(vn, refn, 16, 2048, 8, 96);
	attention_fa3p_vs_case(vn, refn, 2, 4096, 16, 128);
	attention_fa3p_vs_case(vn, refn, 1, 333, 5, 96);
	attention_fa3_fwd_case(vn, 2, 200, 3, 128);
}

Test(kernels, attention_fa3pk128_fwd, .timeout = 60)
{
	NEED_GPU();
	rng_seed(27);
	attention_fa3p_fwd_cases("fa3pk128", "fa3k128");
}

/* The persistent forward's claim counter is one a device: launches on two
 * streams, queued without waiting (a large one on the first, so that it
 * still runs when the second comes), must give each stream's output the
 * bits of the same launch alone.  Without afp_one_at_a_time (the second
 * stream's launch waits for the device) the two would take each other's
 * work items. */
Test(kernels, attention_fa3p_two_streams, .timeout = 60)
{
	NEED_GPU();
	if (!moe_cuda_grouped_tma_supported())
		cr_skip_test("not an sm_90 device, or no tensor maps");
	rng_seed(29);
	int var = attention_fwd_index("fa3pk128");
	cr_assert(var > 0, "fa3pk128 in the forward table");
	const int B[2] = {16, 2}, T[2] = {2048, 555}, H = 8, Dh = 96;
	bf16_t *q[2], *o[2][2];
	float *l[2][2];
	cudaStream_t st[2];
	for (int i = 0; i < 2; i++) {
		size_t n = (size_t)B[i] * T[i] * H * Dh, nl = (size_t)B[i] * H * T[i];
		float *h = rand_bf(3 * n, 2.f);
		q[i] = up_bf(h, 3 * n);
		free(h);
		for (int r = 0; r < 2; r++) {
			o[i][r] = dmalloc(n * 2);
			l[i][r] = dmalloc(nl * 4);
		}
		cr_assert_eq(cudaStreamCreateWithFlags(&st[i], cudaStreamNonBlocking), cudaSuccess);
	}
	moe_cuda_attention_fwd_config(var);
	/* round 0: each alone; round 1: both queued, then one wait */
	for (int r = 0; r < 2; r++)
		for (int i = 0; i < 2; i++) {
			int hd = H * Dh, ld = 3 * hd;
			LAUNCH_OK(moe_cuda_attention_fwd(o[i][r], l[i][r], q[i], q[i] + hd, q[i] + 2 * hd, ld, ld, ld, hd, B[i],
							 T[i], H, Dh, st[i], &gerr));
			if (r == 0)
				cr_assert_eq(cudaStreamSynchronize(st[i]), cudaSuccess);
		}
	cr_assert_eq(cudaDeviceSynchronize(), cudaSuccess);
	moe_cuda_attention_fwd_config(0);
	for (int i = 0; i < 2; i++) {
		size_t n = (size_t)B[i] * T[i] * H * Dh, nl = (size_t)B[i] * H * T[i];
		uint16_t *a = down(o[i][0], n * 2), *b = down(o[i][1], n * 2);
		float *la = down(l[i][0], nl * 4), *lb = down(l[i][1], nl * 4);
		cr_expect(memcmp(a, b, n * 2) == 0 && memcmp(la, lb, nl * 4) == 0,
			  "B=%d T=%d: the launch beside another stream's differs from the launch alone", B[i], T[i]);
		free(a), free(b), free(la), free(lb);
		for (int r = 0; r < 2; r++)
			cudaFree(o[i][r]), cudaFree(l[i][r]);
		cudaFree(q[i]);
		cudaStreamDestroy(st[i]);
	}
}

Test(kernels, swiglu)
{
	NEED_GPU();
	rng_seed(5);
	int M = 333, I = 72;
	float *gu = rand_bf((size_t)M * 2 * I, 3.f), *dh = rand_bf((size_t)M * I, 1.f);
	float *h = malloc((size_t)M * I * 4), *dgu = malloc((size_t)M * 2 * I * 4);
	moe_swiglu_gu_fwd(h, gu, M, I);
	moe_swiglu_gu_bwd(dgu, dh, gu, M, I);
	bf16_t *ggu = up_bf(gu, (size_t)M * 2 * I), *gdh = up_bf(dh, (size_t)M * I);
	bf16_t *gh = dmalloc((size_t)M * I * 2), *gdgu = dmalloc((size_t)M * 2 * I * 2);
	bf16_t *gh2 = dmalloc((size_t)M * I * 2), *gdgu2 = dmalloc((size_t)M * 2 * I * 2);
	LAUNCH_OK(moe_cuda_swiglu_fwd(gh, ggu, M, I, S, &gerr));
	LAUNCH_OK(moe_cuda_swiglu_bwd(gdgu, NULL, gdh, ggu, M, I, S, &gerr));
	LAUNCH_OK(moe_cuda_swiglu_bwd(gdgu2, gh2, gdh, ggu, M, I, S, &gerr));
	CHECK_REL(down_bf(gh, (size_t)M * I), h, (size_t)M * I, 1e-2, "swiglu fwd");
	CHECK_REL(down_bf(gdgu, (size_t)M * 2 * I), dgu, (size_t)M * 2 * I, 1e-2, "swiglu bwd");
	/* the backward's recomputed h is the forward's, bit for bit; dgu unchanged */
	CHECK_REL(down_bf(gh2, (size_t)M * I), down_bf(gh, (size_t)M * I), (size_t)M * I, 0.0, "swiglu bwd h");
	CHECK_REL(down_bf(gdgu2, (size_t)M * 2 * I), down_bf(gdgu, (size_t)M * 2 * I), (size_t)M * 2 * I, 0.0,
		  "swiglu bwd dgu with h");
	/* rows in groups of G = 3, ldg apart (the shared experts' gate_up
	 * beside the router's logits: S rows a token): the same bits as
	 * packed, nothing between the groups written */
	const int G = 3, NG = M / G, ldg = G * 2 * I + 24; /* M = 333: 111 groups */
	float *sgu = malloc((size_t)NG * ldg * 4);
	for (int q = 0; q < NG; q++)
		for (int i = 0; i < ldg; i++)
			sgu[(size_t)q * ldg + i] = i < G * 2 * I ? gu[(size_t)q * G * 2 * I + i] : 0.f;
	bf16_t *sggu = up_bf(sgu, (size_t)NG * ldg), *sgh = dmalloc((size_t)M * I * 2);
	bf16_t *sgh2 = dmalloc((size_t)M * I * 2);
	bf16_t *sgdgu = dmalloc((size_t)NG * ldg * 2);
	LAUNCH_OK(moe_cuda_swiglu_fwd_ld(sgh, sggu, M, I, G, ldg, S, &gerr));
	LAUNCH_OK(moe_cuda_swiglu_bwd_ld(sgdgu, sgh2, gdh, sggu, M, I, G, ldg, S, &gerr));
	uint16_t *ph = down(gh, (size_t)M * I * 2), *pdgu = down(gdgu, (size_t)M * 2 * I * 2);
	uint16_t *qh = down(sgh, (size_t)M * I * 2), *qh2 = down(sgh2, (size_t)M * I * 2);
	uint16_t *qdgu = down(sgdgu, (size_t)NG * ldg * 2);
	size_t bad = 0, stray = 0;
	for (size_t q = 0; q < (size_t)M * I; q++)
		bad += qh[q] != ph[q] || qh2[q] != ph[q];
	for (int q = 0; q < NG; q++)
		for (int i = 0; i < ldg; i++) {
			size_t o = (size_t)q * ldg + i;
			if (i < G * 2 * I)
				bad += qdgu[o] != pdgu[(size_t)q * G * 2 * I + i];
			else
				stray += qdgu[o] != 0xffff;
		}
	cr_expect(bad == 0 && stray == 0,
		  "swiglu in groups of %d rows %d apart: %zu values differ from packed, %zu stray", G, ldg, bad, stray);
	/* refused: a stride that breaks the 16-byte vectors, or too short for a group */
	cr_expect_lt(moe_cuda_swiglu_fwd_ld(sgh, sggu, M, I, G, ldg + 4, S, &gerr), 0);
	cr_expect_lt(moe_cuda_swiglu_fwd_ld(sgh, sggu, M, I, G, G * 2 * I - 8, S, &gerr), 0);
	free(sgu), free(ph), free(pdgu), free(qh), free(qh2), free(qdgu);
	cudaFree(sggu), cudaFree(sgh), cudaFree(sgh2), cudaFree(sgdgu);
}

/* moe_cuda_swiglu_bwd_rows (the routed experts' SwiGLU backward with the
 * gate weights, the backend's expert_combine_down_bwd) against the CPU ops:
 * rows in a random order perm, random weights (given in row order); dgu from dh = w du
 * (moe_swiglu_gu_bwd), hw = w h (moe_swiglu_gu_fwd), the weight's gradient
 * du . bf16(h) at perm[j].  Tolerances: 1e-2 relative for the bf16 outputs
 * (one rounding each), 5e-3 for the fp32 sums (h rounded to bf16 on both
 * sides may differ by one unit where the exponentials do).  Widths below
 * one lane step (72), the seed-base one (640), olmoe-1b-7b's (1024), past
 * four steps (1040), the widest of the 16-lanes-a-row kernel (2048) and
 * past it (2056).  The warp-a-row layout (moe_cuda_swiglu_rows_layout(1))
 * must give the same bits: the 16-lane kernel sums in its order. */
static void swiglu_rows_case(int M, int I)
{
	float *gu = rand_bf((size_t)M * 2 * I, 3.f), *du = rand_bf((size_t)M * I, 1.f), *w = malloc(M * 4);
	int32_t *perm = malloc(M * 4);
	for (int j = 0; j < M; j++) {
		perm[j] = j;
		w[j] = 0.05f + 0.9f * (float)(rng_u64() % 1000) / 1000.f;
	}
	for (int j = M - 1; j > 0; j--) {
		int r = (int)(rng_u64() % (uint64_t)(j + 1)), t = perm[j];
		perm[j] = perm[r], perm[r] = t;
	}
	float *dh = malloc((size_t)M * I * 4), *h = malloc((size_t)M * I * 4), *dgu = malloc((size_t)M * 2 * I * 4);
	float *hw = malloc((size_t)M * I * 4), *dw = malloc(M * 4);
	moe_swiglu_gu_fwd(h, gu, M, I);
	for (int j = 0; j < M; j++) {
		double dot = 0;
		for (int i = 0; i < I; i++) {
			size_t q = (size_t)j * I + i;
			dh[q] = w[perm[j]] * du[q];
			hw[q] = w[perm[j]] * h[q];
			dot += (double)du[q] * moe_bf16_to_f32(moe_f32_to_bf16(h[q]));
		}
		dw[perm[j]] = (float)dot;
	}
	moe_swiglu_gu_bwd(dgu, dh, gu, M, I);
	float *ws = malloc(M * 4); /* the weights in row order, as the kernel takes them */
	for (int j = 0; j < M; j++)
		ws[j] = w[perm[j]];
	bf16_t *ggu = up_bf(gu, (size_t)M * 2 * I), *gdu = up_bf(du, (size_t)M * I);
	bf16_t *gdgu = dmalloc((size_t)M * 2 * I * 2), *ghw = dmalloc((size_t)M * I * 2);
	float *gw = up(ws, M * 4), *gdw = dmalloc(M * 4);
	int32_t *gp = up(perm, M * 4);
	LAUNCH_OK(moe_cuda_swiglu_bwd_rows(gdgu, ghw, gdw, gdu, ggu, gw, gp, M, I, S, &gerr));
	float *odgu = down_bf(gdgu, (size_t)M * 2 * I), *ohw = down_bf(ghw, (size_t)M * I), *odw = down(gdw, M * 4);
	char what[64];
	snprintf(what, sizeof what, "swiglu_bwd_rows %d x %d dgu", M, I);
	check_all_written(odgu, (size_t)M * 2 * I, what);
	CHECK_REL(odgu, dgu, (size_t)M * 2 * I, 1e-2, what);
	snprintf(what, sizeof what, "swiglu_bwd_rows %d x %d w h", M, I);
	check_all_written(ohw, (size_t)M * I, what);
	CHECK_REL(ohw, hw, (size_t)M * I, 1e-2, what);
	snprintf(what, sizeof what, "swiglu_bwd_rows %d x %d dtopk_w", M, I);
	check_all_written(odw, M, what);
	CHECK_REL(odw, dw, M, 5e-3, what);
	/* the warp-a-row layout into the same buffers, refilled with 0xff:
	 * the same bytes */
	void *r[3] = {down(gdgu, (size_t)M * 2 * I * 2), down(ghw, (size_t)M * I * 2), down(gdw, M * 4)};
	cudaMemset(gdgu, 0xff, (size_t)M * 2 * I * 2);
	cudaMemset(ghw, 0xff, (size_t)M * I * 2);
	cudaMemset(gdw, 0xff, M * 4);
	moe_cuda_swiglu_rows_layout(1);
	LAUNCH_OK(moe_cuda_swiglu_bwd_rows(gdgu, ghw, gdw, gdu, ggu, gw, gp, M, I, S, &gerr));
	moe_cuda_swiglu_rows_layout(0);
	void *o[3] = {down(gdgu, (size_t)M * 2 * I * 2), down(ghw, (size_t)M * I * 2), down(gdw, M * 4)};
	const size_t nb[3] = {(size_t)M * 2 * I * 2, (size_t)M * I * 2, (size_t)M * 4};
	static const char *const nm[3] = {"dgu", "w h", "dtopk_w"};
	for (int k = 0; k < 3; k++) {
		cr_expect(memcmp(r[k], o[k], nb[k]) == 0, "swiglu_bwd_rows %d x %d: %s differs between the layouts", M,
			  I, nm[k]);
		free(r[k]), free(o[k]);
	}
	free(gu), free(du), free(w), free(ws), free(perm), free(dh), free(h), free(dgu), free(hw), free(dw);
	free(odgu), free(ohw), free(odw);
	cudaFree(ggu), cudaFree(gdu), cudaFree(gdgu), cudaFree(ghw), cudaFree(gw), cudaFree(gdw), cudaFree(gp);
}

Test(kernels, swiglu_bwd_rows)
{
	NEED_GPU();
	rng_seed(6);
	swiglu_rows_case(333, 72);
	swiglu_rows_case(517, 640);
	swiglu_rows_case(77, 1024);
	swiglu_rows_case(45, 1040);
	swiglu_rows_case(21, 2048);
	swiglu_rows_case(19, 2056);
	/* refused: a width that is not a multiple of 8 */
	cr_expect_lt(moe_cuda_swiglu_bwd_rows(NULL, NULL, NULL, NULL, NULL, NULL, NULL, 4, 12, S, &gerr), 0);
}

/* moe_cuda_copy_rows: nb blocks of rows x n between row strides, 16-byte
 * vectors (every address and stride a multiple of 8 elements) and single
 * elements (an odd width, an odd offset): the copied values exact, nothing
 * else in dst written (it keeps its NaN poison). */
static void copy_rows_case(int rows, int n, int nb, int lds, int ldd, size_t ss, size_t ds, int off)
{
	size_t ns = ss * (nb - 1) + (size_t)rows * lds + off, nd = ds * (nb - 1) + (size_t)rows * ldd + off;
	float *src = rand_bf(ns, 1.f);
	bf16_t *gs = up_bf(src, ns), *gd = dmalloc(nd * 2);
	LAUNCH_OK(moe_cuda_copy_rows(gd + off, ldd, ds, gs + off, lds, ss, rows, n, nb, S, &gerr));
	uint16_t *hs = down(gs, ns * 2), *hd = down(gd, nd * 2);
	size_t bad = 0, stray = 0, want = 0;
	char *mark = calloc(nd, 1);
	for (int b = 0; b < nb; b++)
		for (int r = 0; r < rows; r++)
			for (int c = 0; c < n; c++) {
				size_t i = off + b * ds + (size_t)r * ldd + c;
				bad += hd[i] != hs[off + b * ss + (size_t)r * lds + c];
				mark[i] = 1;
				want++;
			}
	for (size_t i = 0; i < nd; i++)
		stray += !mark[i] && hd[i] != 0xffff;
	cr_expect(bad == 0 && stray == 0, "copy_rows %dx%d x%d (lds %d, ldd %d, offset %d): %zu of %zu wrong, %zu stray",
		  rows, n, nb, lds, ldd, off, bad, want, stray);
	free(src), free(hs), free(hd), free(mark);
	cudaFree(gs), cudaFree(gd);
}

Test(kernels, copy_rows)
{
	NEED_GPU();
	rng_seed(7);
	copy_rows_case(768, 640, 2, 640, 1280, 768 * 640, 640, 0); /* seed-base's shared down weights */
	copy_rows_case(100, 96, 1, 2304, 768, 0, 0, 0);             /* a strided row block out */
	copy_rows_case(37, 13, 3, 20, 45, 20 * 37, 13, 1);          /* single elements */
	cr_expect_eq(moe_cuda_copy_rows(NULL, 8, 0, NULL, 8, 0, 0, 8, 1, S, &gerr), 0, "no rows: nothing to do");
}

/* The router's kernels with the logits' rows ld apart (the merged linear's
 * output, moe_cuda_router_fwd_ld and the others): the same bits as on the
 * contiguous rows (gl, and the results gi, gp, gtw, gdl of the contiguous
 * launches), the columns past E neither read into the results nor written;
 * the z-loss sum of the forward within 1e-12 of moe_cuda_zloss_sum's (the
 * same lse bits a row: where the router runs more lanes a row, for K, the
 * extra lanes add exact zeros to the same tree; another order of the
 * rows' sum), N beside it; zloss's
 * gradient at the stride the same bits as contiguous. */
/* rows of E at stride ld (d) against packed rows (ref): *bad the rows that
 * differ, *touched the elements between them not left at 0x4700 */
static void stride_rows_cmp(const uint16_t *d, const uint16_t *ref, int N, int E, int ld, size_t *bad, size_t *touched)
{
	*bad = *touched = 0;
	for (int r = 0; r < N; r++) {
		*bad += memcmp(d + (size_t)r * ld, ref + (size_t)r * E, (size_t)E * 2) != 0;
		for (int c = E; c < ld; c++)
			*touched += d[(size_t)r * ld + c] != 0x4700;
	}
}

static void router_ld_case(const bf16_t *gl, const float *gb, const float *gdtw, const float *gdp, const int32_t *gi,
			   const float *gp, const float *gtw, const bf16_t *gdl, int N, int E, int K, bool use_bias,
			   bool norm)
{
	int ld = E % 8 ? E + 3 : E + 40;
	size_t n = (size_t)N * ld;
	/* the rows at the stride, the gaps between them filled with large values */
	uint16_t *h = malloc(n * 2), *row = down(gl, (size_t)N * E * 2);
	for (size_t i = 0; i < n; i++)
		h[i] = 0x4700; /* 32768 */
	for (int r = 0; r < N; r++)
		memcpy(h + (size_t)r * ld, row + (size_t)r * E, (size_t)E * 2);
	bf16_t *gls = up(h, n * 2), *gds = up(h, n * 2);
	int32_t *gi3 = dmalloc((size_t)N * K * 4);
	float *gtw3 = dmalloc((size_t)N * K * 4), *gp3 = dmalloc((size_t)N * E * 4);
	double *zacc = dmalloc(16), *zref = dmalloc(16);
	void *zs = dmalloc(moe_cuda_router_z_scratch(N, E, K)), *zs2 = dmalloc(moe_cuda_zloss_scratch(N, E));
	cudaMemset(zacc, 0xff, 16);
	LAUNCH_OK(moe_cuda_router_fwd_ld(gi3, gtw3, gp3, gls, ld, use_bias ? gb : NULL, N, E, K, norm, zacc, zs, S,
					 &gerr));
	LAUNCH_OK(moe_cuda_zloss_sum(zref, NULL, gl, N, E, 0.f, zs2, S, &gerr));
	LAUNCH_OK(moe_cuda_router_bwd_ld(gds, ld, gdtw, gdp, gp3, gi3, gtw3, N, E, K, norm, S, &gerr));
	cr_expect(memcmp(down(gi3, (size_t)N * K * 4), down(gi, (size_t)N * K * 4), (size_t)N * K * 4) == 0,
		  "router at a stride of %d (E %d): ids differ", ld, E);
	cr_expect(memcmp(down(gp3, (size_t)N * E * 4), down(gp, (size_t)N * E * 4), (size_t)N * E * 4) == 0,
		  "router at a stride of %d (E %d): probs differ", ld, E);
	cr_expect(memcmp(down(gtw3, (size_t)N * K * 4), down(gtw, (size_t)N * K * 4), (size_t)N * K * 4) == 0,
		  "router at a stride of %d (E %d): topk_w differ", ld, E);
	double *z = down(zacc, 16), *zr = down(zref, 16);
	cr_expect(fabs(z[0] - zr[0]) <= 1e-12 * zr[0] && z[1] == (double)N,
		  "router's z-loss sum %.17g (rows %g) vs zloss_sum's %.17g", z[0], z[1], zr[0]);
	uint16_t *d = down(gds, n * 2), *dref = down(gdl, (size_t)N * E * 2);
	size_t bad, touched;
	stride_rows_cmp(d, dref, N, E, ld, &bad, &touched);
	cr_expect(bad == 0, "router_bwd at a stride of %d: %zu of %d rows of dlogits differ", ld, bad, N);
	cr_expect(touched == 0, "router_bwd at a stride of %d: %zu elements between the rows written", ld, touched);
	/* zloss's gradient at the stride against contiguous, over those dlogits */
	bf16_t *gdc = dmalloc((size_t)N * E * 2);
	cudaMemcpy(gdc, gdl, (size_t)N * E * 2, cudaMemcpyDeviceToDevice);
	LAUNCH_OK(moe_cuda_zloss_ld(gds, NULL, gls, ld, N, E, 0.5f, S, &gerr));
	LAUNCH_OK(moe_cuda_zloss(gdc, NULL, gl, N, E, 0.5f, S, &gerr));
	uint16_t *d2 = down(gds, n * 2), *dc = down(gdc, (size_t)N * E * 2);
	stride_rows_cmp(d2, dc, N, E, ld, &bad, &touched);
	cr_expect(bad == 0 && touched == 0, "zloss at a stride of %d: %zu rows differ, %zu between them written", ld,
		  bad, touched);
	free(h), free(row), free(z), free(zr), free(d), free(dref), free(d2), free(dc);
	cudaFree(gls), cudaFree(gds), cudaFree(gi3), cudaFree(gtw3), cudaFree(gp3), cudaFree(zacc), cudaFree(zref);
	cudaFree(zs), cudaFree(zs2), cudaFree(gdc);
}

/* The router's forward and backward against the CPU reference: top-k ids
 * equal, probabilities and weights within 1e-5, dlogits (bf16) within 1e-2;
 * levels > 0: logits (and the bias) on a coarse grid, so that many keys and
 * probabilities tie (ties go to the lower id both ways); a second launch
 * gives the same bits. */
static void router_case(int N, int E, int K, bool use_bias, bool norm, int levels, bool with_dprobs)
{
	float *logits = rand_bf((size_t)N * E, 4.f), *bias = rand_bf(E, 0.5f);
	if (levels > 0) {
		for (size_t i = 0; i < (size_t)N * E; i++)
			logits[i] = (float)(int)(rng_u64() % (2 * levels + 1)) - levels;
		for (int e = 0; e < E; e++)
			bias[e] = 0.5f * (float)(int)(rng_u64() % 3);
	}
	float *dtw = rand_bf((size_t)N * K, 1.f), *dprobs = rand_bf((size_t)N * E, 0.1f);
	int32_t *idx = malloc((size_t)N * K * 4);
	float *tw = malloc((size_t)N * K * 4), *probs = malloc((size_t)N * E * 4), *dl = malloc((size_t)N * E * 4);
	moe_router_fwd(idx, tw, probs, logits, use_bias ? bias : NULL, N, E, K, norm);
	moe_router_bwd(dl, dtw, with_dprobs ? dprobs : NULL, probs, idx, tw, N, E, K, norm);
	bf16_t *gl = up_bf(logits, (size_t)N * E), *gdl = dmalloc((size_t)N * E * 2), *gdl2 = dmalloc((size_t)N * E * 2);
	float *gb = up(bias, E * 4), *gtw = dmalloc((size_t)N * K * 4), *gp = dmalloc((size_t)N * E * 4);
	float *gtw2 = dmalloc((size_t)N * K * 4), *gp2 = dmalloc((size_t)N * E * 4);
	float *gdtw = up(dtw, (size_t)N * K * 4), *gdp = with_dprobs ? up(dprobs, (size_t)N * E * 4) : NULL;
	int32_t *gi = dmalloc((size_t)N * K * 4), *gi2 = dmalloc((size_t)N * K * 4);
	LAUNCH_OK(moe_cuda_router_fwd(gi, gtw, gp, gl, use_bias ? gb : NULL, N, E, K, norm, S, &gerr));
	LAUNCH_OK(moe_cuda_router_bwd(gdl, gdtw, gdp, gp, gi, gtw, N, E, K, norm, S, &gerr));
	LAUNCH_OK(moe_cuda_router_fwd(gi2, gtw2, gp2, gl, use_bias ? gb : NULL, N, E, K, norm, S, &gerr));
	LAUNCH_OK(moe_cuda_router_bwd(gdl2, gdtw, gdp, gp2, gi2, gtw2, N, E, K, norm, S, &gerr));
	int32_t *hi = down(gi, (size_t)N * K * 4);
	size_t same = 0;
	for (size_t i = 0; i < (size_t)N * K; i++)
		same += hi[i] == idx[i];
	cr_log_info("router N=%d E=%d K=%d bias=%d norm=%d levels=%d dprobs=%d: %zu/%zu top-k ids equal", N, E, K,
		    use_bias, norm, levels, with_dprobs, same, (size_t)N * K);
	cr_expect_eq(same, (size_t)N * K, "router N=%d E=%d K=%d: %zu of %zu top-k ids differ", N, E, K,
		     (size_t)N * K - same, (size_t)N * K);
	CHECK_REL(down(gp, (size_t)N * E * 4), probs, (size_t)N * E, 1e-5, "router probs");
	CHECK_REL(down(gtw, (size_t)N * K * 4), tw, (size_t)N * K, 1e-5, "router topk_w");
	CHECK_REL(down_bf(gdl, (size_t)N * E), dl, (size_t)N * E, 1e-2, "router dlogits");
	cr_expect_eq(memcmp(down(gi2, (size_t)N * K * 4), hi, (size_t)N * K * 4), 0, "router ids not reproducible");
	cr_expect_eq(memcmp(down(gp2, (size_t)N * E * 4), down(gp, (size_t)N * E * 4), (size_t)N * E * 4), 0,
		     "router probs not reproducible");
	cr_expect_eq(memcmp(down(gtw2, (size_t)N * K * 4), down(gtw, (size_t)N * K * 4), (size_t)N * K * 4), 0,
		     "router topk_w not reproducible");
	cr_expect_eq(memcmp(down(gdl2, (size_t)N * E * 2), down(gdl, (size_t)N * E * 2), (size_t)N * E * 2), 0,
		     "router dlogits not reproducible");
	if (!moe_cuda_route_legacy_on())
		router_ld_case(gl, gb, gdtw, gdp, gi, gp, gtw, gdl, N, E, K, use_bias, norm);
	cudaFree(gl), cudaFree(gdl), cudaFree(gdl2), cudaFree(gb), cudaFree(gtw), cudaFree(gp), cudaFree(gtw2);
	cudaFree(gp2), cudaFree(gdtw), cudaFree(gdp), cudaFree(gi), cudaFree(gi2);
	free(logits), free(bias), free(dtw), free(dprobs), free(idx), free(tw), free(probs), free(dl), free(hi);
}

/* E % 8 != 0 (scalar loads), E = 8 and K = 2 (two lanes a row), E = 200 and
 * 256 (32 lanes), N = 1, N not a multiple of a block's rows, ties */
static void router_cases(void)
{
	router_case(500, 64, 4, true, false, 0, true);
	router_case(300, 64, 8, false, true, 0, true);
	router_case(200, 8, 2, true, true, 0, true);
	router_case(100, 200, 6, false, false, 0, true);
	router_case(1, 64, 4, true, true, 0, true);
	router_case(333, 60, 3, true, false, 0, true);
	router_case(77, 256, 32, false, true, 0, true);
	router_case(1000, 64, 4, true, true, 2, true);
	router_case(1000, 64, 4, false, false, 1, false);
	router_case(513, 36, 5, false, true, 3, true);
}

Test(kernels, router)
{
	NEED_GPU();
	rng_seed(6);
	router_cases();
	/* the previous kernels (MOE_CUDA_ROUTE=legacy) too */
	moe_cuda_route_legacy(1);
	router_cases();
	moe_cuda_route_legacy(0);
}

/* zloss (per row, and summed in one launch), router_stats and aux_dprobs
 * against the CPU: z within 1e-5 relative, dlogits 1e-2, psum 1e-6 (double
 * sums in another order), counts and dprobs exact, each launch twice with the
 * same bits.  pads: 0 no ids, 1 some pad rows, 2 all rows pad; one_expert:
 * every row's K slots on the same K experts (others empty). */
static void zloss_stats_case(int N, int E, int K, int pads, bool one_expert)
{
	int pad = 5;
	float *logits = rand_bf((size_t)N * E, 4.f), *probs = malloc((size_t)N * E * 4 + 4);
	float *d = calloc((size_t)N * E + 1, 4), *tw = malloc((size_t)N * K * 4 + 4);
	int32_t *idx = malloc((size_t)N * K * 4 + 4), *ids = malloc((size_t)N * 4 + 4);
	for (int n = 0; n < N; n++)
		ids[n] = pads == 2 ? pad : (int32_t)(rng_u64() % 16);
	double z = moe_zloss_fwd_bwd(d, logits, N, E, 0.5f);
	moe_router_fwd(idx, tw, probs, logits, NULL, N, E, K, false);
	if (one_expert)
		for (int n = 0; n < N; n++)
			for (int k = 0; k < K; k++)
				idx[(size_t)n * K + k] = (E - 1 - 3 * k) % E;
	float *psum = malloc(E * 4), *g = malloc(E * 4), *dp = malloc((size_t)N * E * 4 + 4);
	int32_t *cnt = malloc(E * 4);
	const int32_t *idsp = pads ? ids : NULL;
	moe_router_stats(psum, cnt, probs, idx, idsp, pad, N, E, K);
	for (int e = 0; e < E; e++)
		g[e] = rng_bf(1.f);
	moe_aux_dprobs(dp, g, idsp, pad, N, E);
	bf16_t *gl = up_bf(logits, (size_t)N * E), *gd = dmalloc((size_t)N * E * 2), *gd2 = dmalloc((size_t)N * E * 2);
	cudaMemset(gd, 0, (size_t)N * E * 2);
	cudaMemset(gd2, 0, (size_t)N * E * 2);
	float *rowz = dmalloc((size_t)N * 4), *gp = up(probs, (size_t)N * E * 4), *gps = dmalloc(E * 4);
	float *gps2 = dmalloc(E * 4), *gdp = dmalloc((size_t)N * E * 4);
	int32_t *gi = up(idx, (size_t)N * K * 4), *gids = pads ? up(ids, (size_t)N * 4) : NULL;
	int32_t *gc = dmalloc(E * 4), *gc2 = dmalloc(E * 4);
	double *acc = dmalloc(4 * sizeof(double));
	void *sc = dmalloc(moe_cuda_router_stats_scratch(N, E)), *zsc = dmalloc(moe_cuda_zloss_scratch(N, E));
	LAUNCH_OK(moe_cuda_zloss(gd, rowz, gl, N, E, 0.5f, S, &gerr));
	LAUNCH_OK(moe_cuda_zloss_sum(acc, gd2, gl, N, E, 0.5f, zsc, S, &gerr));
	LAUNCH_OK(moe_cuda_zloss_sum(acc + 2, NULL, gl, N, E, 0.f, zsc, S, &gerr));
	LAUNCH_OK(moe_cuda_router_stats(gps, gc, gp, gi, gids, pad, N, E, K, sc, S, &gerr));
	LAUNCH_OK(moe_cuda_router_stats(gps2, gc2, gp, gi, gids, pad, N, E, K, sc, S, &gerr));
	if (E <= 256) /* its limit */
		LAUNCH_OK(moe_cuda_aux_dprobs(gdp, g, gids, pad, N, E, S, &gerr));
	float *hz = down(rowz, (size_t)N * 4);
	double zs = 0, *ha = down(acc, 4 * sizeof(double));
	for (int n = 0; n < N; n++)
		zs += hz[n];
	zs /= N;
	cr_log_info("zloss N=%d E=%d: %.9g (rows), %.9g (one launch), CPU %.9g", N, E, zs, ha[0] / N, z);
	cr_expect(fabs(zs - z) <= 1e-5 * fabs(z), "zloss N=%d E=%d: %.9g vs %.9g", N, E, zs, z);
	cr_expect(fabs(ha[0] / N - z) <= 1e-5 * fabs(z), "zloss_sum N=%d E=%d: %.9g vs %.9g", N, E, ha[0] / N, z);
	cr_expect(ha[1] == N && ha[3] == N, "zloss_sum rows %g %g, not %d", ha[1], ha[3], N);
	cr_expect(memcmp(&ha[0], &ha[2], sizeof(double)) == 0, "zloss_sum not reproducible: %.17g vs %.17g", ha[0],
		  ha[2]);
	CHECK_REL(down_bf(gd, (size_t)N * E), d, (size_t)N * E, 1e-2, "zloss dlogits");
	CHECK_REL(down_bf(gd2, (size_t)N * E), d, (size_t)N * E, 1e-2, "zloss_sum dlogits");
	CHECK_REL(down(gps, E * 4), psum, E, 1e-6, "router_stats psum");
	int32_t *hc = down(gc, E * 4);
	cr_expect_eq(memcmp(hc, cnt, E * 4), 0, "router_stats counts differ (N=%d E=%d pads %d)", N, E, pads);
	cr_expect_eq(memcmp(down(gps2, E * 4), down(gps, E * 4), E * 4), 0, "router_stats psum not reproducible");
	cr_expect_eq(memcmp(down(gc2, E * 4), hc, E * 4), 0, "router_stats counts not reproducible");
	if (E <= 256)
		CHECK_REL(down(gdp, (size_t)N * E * 4), dp, (size_t)N * E, 0.0, "aux_dprobs");
	cudaFree(gl), cudaFree(gd), cudaFree(gd2), cudaFree(rowz), cudaFree(gp), cudaFree(gps), cudaFree(gps2);
	cudaFree(gdp), cudaFree(gi), cudaFree(gids), cudaFree(gc), cudaFree(gc2), cudaFree(acc), cudaFree(sc);
	cudaFree(zsc);
	free(logits), free(probs), free(d), free(tw), free(idx), free(ids), free(psum), free(g), free(dp), free(cnt);
	free(hz), free(ha), free(hc);
}

static void zloss_stats_cases(void)
{
	zloss_stats_case(400, 64, 4, 1, false);
	zloss_stats_case(1, 64, 4, 0, false);
	zloss_stats_case(777, 64, 4, 1, true);
	zloss_stats_case(300, 64, 4, 2, false);
	zloss_stats_case(32768, 64, 4, 1, false); /* seed-base: 128 blocks of statistics */
	zloss_stats_case(513, 60, 3, 0, false);
	zloss_stats_case(200, 300, 8, 1, false); /* E > 256: zloss rows in two passes */
	zloss_stats_case(100, 8, 2, 1, false);
	zloss_stats_case(250, 30, 3, 1, false); /* E % 4 != 0: the one-float statistics kernel */
}

Test(kernels, zloss_and_stats)
{
	NEED_GPU();
	rng_seed(7);
	zloss_stats_cases();
	moe_cuda_route_legacy(1);
	zloss_stats_cases();
	moe_cuda_route_legacy(0);
}

/* route_group: counts, offsets, perm and inv exactly the CPU reference's
 * (perm stable: slots increasing within an expert), the same bits from a
 * second launch, at sizes with one or many 256-slot tiles a chunk, N = 0
 * and 1, empty experts, every slot on one expert (K = 1) or every row on
 * the same K experts.  gen: 0 skewed towards low ids, 1 uniform, 2 one
 * expert set for all rows. */
static void route_group_case(int N, int K, int E, int gen)
{
	size_t NK = (size_t)N * K;
	int32_t *idx = malloc(NK * 4 + 4);
	for (int n = 0; n < N; n++)
		for (int k = 0; k < K; k++) {
			int e;
			bool dup;
			do {
				if (gen == 2) {
					e = (E / 2 + 7 * k) % E;
				} else {
					e = (int)(rng_u64() % (gen == 0 ? E - 3 : E));
					if (gen == 0)
						e = (e * e) / (E - 3);
				}
				dup = false;
				for (int j = 0; j < k; j++)
					dup |= idx[n * K + j] == e;
			} while (dup);
			idx[n * K + k] = e;
		}
	int32_t *counts = malloc(E * 4), *offsets = malloc((E + 1) * 4), *perm = malloc(NK * 4 + 4);
	int32_t *inv = malloc(NK * 4 + 4);
	moe_route_group(counts, offsets, perm, idx, N, K, E);
	moe_route_inverse(inv, perm, (int)NK);
	int32_t *gidx = up(idx, NK * 4), *gc = dmalloc(E * 4), *go = dmalloc((E + 1) * 4);
	int32_t *gp = dmalloc(NK * 4), *gi = dmalloc(NK * 4), *gp2 = dmalloc(NK * 4), *gi2 = dmalloc(NK * 4);
	void *sc = dmalloc(moe_cuda_route_group_scratch(N, K, E));
	LAUNCH_OK(moe_cuda_route_group(gc, go, gp, gi, sc, gidx, N, K, E, S, &gerr));
	int32_t *hc = down(gc, E * 4), *ho = down(go, (E + 1) * 4), *hp = down(gp, NK * 4), *hi = down(gi, NK * 4);
	LAUNCH_OK(moe_cuda_route_group(gc, go, gp2, gi2, sc, gidx, N, K, E, S, &gerr));
	cr_log_info("route_group N=%d K=%d E=%d gen %d", N, K, E, gen);
	cr_expect_eq(memcmp(hc, counts, E * 4), 0, "route_group N=%d K=%d E=%d: counts differ", N, K, E);
	cr_expect_eq(memcmp(ho, offsets, (E + 1) * 4), 0, "route_group N=%d K=%d E=%d: offsets differ", N, K, E);
	cr_expect_eq(memcmp(hp, perm, NK * 4), 0, "route_group N=%d K=%d E=%d: perm differs", N, K, E);
	cr_expect_eq(memcmp(hi, inv, NK * 4), 0, "route_group N=%d K=%d E=%d: inv differs", N, K, E);
	cr_expect_eq(memcmp(down(gp2, NK * 4), hp, NK * 4), 0, "route_group perm not reproducible");
	cr_expect_eq(memcmp(down(gi2, NK * 4), hi, NK * 4), 0, "route_group inv not reproducible");
	/* the token-order gather through inv: the CPU's gather through perm exactly
	 * (D 776: 97 16-byte columns, a partial last round of a warp's loads) */
	for (int D = 96; D <= 776; D += 680) {
		if (NK * D > ((size_t)1 << 24) || N == 0)
			continue;
		float *x = rand_bf((size_t)N * D, 1.f), *xg = malloc(NK * D * 4);
		moe_gather_rows(xg, x, perm, (int)NK, K, D);
		bf16_t *gx = up_bf(x, (size_t)N * D), *gxg = dmalloc(NK * D * 2);
		LAUNCH_OK(moe_cuda_gather_inv(gxg, gx, gi, N, K, D, S, &gerr));
		char what[64];
		snprintf(what, sizeof(what), "gather_inv N=%d K=%d D=%d", N, K, D);
		CHECK_REL(down_bf(gxg, NK * D), xg, NK * D, 0.0, what);
		/* with the gate weights: the same rows, and wg[j] = w[perm[j]] exactly */
		float *w = malloc(NK * 4 + 4), *wg = malloc(NK * 4 + 4);
		for (size_t j = 0; j < NK; j++)
			w[j] = (float)(rng_u64() % 4096) / 4096.f;
		for (size_t j = 0; j < NK; j++)
			wg[j] = w[perm[j]];
		float *gw = up(w, NK * 4), *gwg = dmalloc(NK * 4);
		bf16_t *gxg2 = dmalloc(NK * D * 2);
		LAUNCH_OK(moe_cuda_gather_inv_w(gxg2, gx, gi, N, K, D, gw, gwg, S, &gerr));
		snprintf(what, sizeof(what), "gather_inv_w N=%d K=%d D=%d", N, K, D);
		CHECK_REL(down_bf(gxg2, NK * D), xg, NK * D, 0.0, what);
		float *hwg = down(gwg, NK * 4);
		cr_expect_eq(memcmp(hwg, wg, NK * 4), 0, "%s: the weights in expert order", what);
		cudaFree(gx), cudaFree(gxg), cudaFree(gw), cudaFree(gwg), cudaFree(gxg2);
		free(x), free(xg), free(w), free(wg), free(hwg);
	}
	cudaFree(gidx), cudaFree(gc), cudaFree(go), cudaFree(gp), cudaFree(gi), cudaFree(gp2), cudaFree(gi2);
	cudaFree(sc);
	free(idx), free(counts), free(offsets), free(perm), free(inv), free(hc), free(ho), free(hp), free(hi);
}

static void route_group_cases(void)
{
	route_group_case(1000, 4, 64, 0);
	route_group_case(1, 4, 64, 1);
	route_group_case(0, 4, 64, 1);
	route_group_case(32768, 4, 64, 1); /* seed-base: 128 chunks of 4 tiles */
	route_group_case(5000, 1, 64, 2);  /* every slot on one expert */
	route_group_case(3001, 4, 64, 2);  /* every row on the same 4 experts */
	route_group_case(777, 3, 200, 1);
	route_group_case(2000, 2, 1024, 1);
	route_group_case(100000, 8, 256, 0); /* 125 chunks of 25 tiles */
	route_group_case(33, 8, 8, 1);        /* every row on all 8 experts */
}

Test(kernels, route_group_cases, .timeout = 60)
{
	NEED_GPU();
	rng_seed(9);
	route_group_cases();
	moe_cuda_route_legacy(1);
	route_group_cases();
	moe_cuda_route_legacy(0);
}

Test(kernels, route_group_and_permute)
{
	NEED_GPU();
	rng_seed(8);
	int N = 1000, K = 4, E = 64, D = 96;
	int32_t *idx = malloc((size_t)N * K * 4);
	for (int n = 0; n < N; n++)
		for (int k = 0; k < K; k++) {
			int e;
			bool dup;
			do { /* distinct experts per token, skewed towards low ids, some empty */
				e = (int)(rng_u64() % (E - 3));
				e = (e * e) / (E - 3);
				dup = false;
				for (int j = 0; j < k; j++)
					dup |= idx[n * K + j] == e;
			} while (dup);
			idx[n * K + k] = e;
		}
	int32_t *counts = malloc(E * 4), *offsets = malloc((E + 1) * 4), *perm = malloc((size_t)N * K * 4);
	int32_t *inv = malloc((size_t)N * K * 4);
	moe_route_group(counts, offsets, perm, idx, N, K, E);
	moe_route_inverse(inv, perm, N * K);
	int32_t *gidx = up(idx, (size_t)N * K * 4), *gc = dmalloc(E * 4), *go = dmalloc((E + 1) * 4);
	int32_t *gp = dmalloc((size_t)N * K * 4), *gi = dmalloc((size_t)N * K * 4), *gi2 = dmalloc((size_t)N * K * 4);
	void *sc = dmalloc(moe_cuda_route_group_scratch(N, K, E));
	LAUNCH_OK(moe_cuda_route_group(gc, go, gp, gi, sc, gidx, N, K, E, S, &gerr));
	LAUNCH_OK(moe_cuda_route_inverse(gi2, gp, N * K, S, &gerr));
	cr_expect_eq(memcmp(down(gc, E * 4), counts, E * 4), 0, "counts differ");
	cr_expect_eq(memcmp(down(go, (E + 1) * 4), offsets, (E + 1) * 4), 0, "offsets differ");
	cr_expect_eq(memcmp(down(gp, (size_t)N * K * 4), perm, (size_t)N * K * 4), 0, "perm differs");
	cr_expect_eq(memcmp(down(gi, (size_t)N * K * 4), inv, (size_t)N * K * 4), 0, "inv differs");
	cr_expect_eq(memcmp(down(gi2, (size_t)N * K * 4), inv, (size_t)N * K * 4), 0, "route_inverse differs");

	/* gather, scatter-add, combine fwd/bwd */
	size_t NK = (size_t)N * K;
	float *x = rand_bf((size_t)N * D, 1.f), *yg = rand_bf(NK * D, 1.f), *dxg = rand_bf(NK * D, 1.f);
	float *dout = rand_bf((size_t)N * D, 1.f), *w = rand_bf(NK, 1.f), *dx0 = rand_bf((size_t)N * D, 1.f);
	float *xg = malloc(NK * D * 4), *dx = malloc((size_t)N * D * 4), *out = malloc((size_t)N * D * 4);
	float *dyg = malloc(NK * D * 4), *dw = malloc(NK * 4);
	moe_gather_rows(xg, x, perm, (int)NK, K, D);
	memcpy(dx, dx0, (size_t)N * D * 4);
	moe_scatter_add_rows(dx, dxg, perm, (int)NK, K, D);
	moe_combine_fwd(out, NULL, yg, w, inv, N, K, D);
	float *res = rand_bf((size_t)N * D, 1.f), *outr = malloc((size_t)N * D * 4);
	moe_combine_fwd(outr, res, yg, w, inv, N, K, D);
	moe_combine_bwd(dyg, dw, dout, yg, w, inv, N, K, D);
	bf16_t *gx = up_bf(x, (size_t)N * D), *gxg = dmalloc(NK * D * 2), *gdx = up_bf(dx0, (size_t)N * D);
	bf16_t *gdxg = up_bf(dxg, NK * D), *gyg = up_bf(yg, NK * D), *gout = dmalloc((size_t)N * D * 2);
	bf16_t *gdo = up_bf(dout, (size_t)N * D), *gdyg = dmalloc(NK * D * 2);
	float *gw = up(w, NK * 4), *gdw = dmalloc(NK * 4);
	LAUNCH_OK(moe_cuda_gather(gxg, gx, gp, (int)NK, K, D, S, &gerr));
	LAUNCH_OK(moe_cuda_scatter_add(gdx, gdxg, gi, N, K, D, S, &gerr));
	LAUNCH_OK(moe_cuda_combine_fwd(gout, NULL, gyg, gw, gi, N, K, D, S, &gerr));
	bf16_t *gres = up_bf(res, (size_t)N * D), *goutr = dmalloc((size_t)N * D * 2);
	LAUNCH_OK(moe_cuda_combine_fwd(goutr, gres, gyg, gw, gi, N, K, D, S, &gerr));
	CHECK_REL(down_bf(goutr, (size_t)N * D), outr, (size_t)N * D, 1e-2, "combine fwd + residual");
	LAUNCH_OK(moe_cuda_combine_fwd(gres, gres, gyg, gw, gi, N, K, D, S, &gerr)); /* in place */
	CHECK_REL(down_bf(gres, (size_t)N * D), outr, (size_t)N * D, 1e-2, "combine fwd + residual in place");
	LAUNCH_OK(moe_cuda_combine_bwd(gdyg, gdw, gdo, gyg, gw, gi, N, K, D, S, &gerr));
	CHECK_REL(down_bf(gxg, NK * D), xg, NK * D, 0.0, "gather");
	CHECK_REL(down_bf(gdx, (size_t)N * D), dx, (size_t)N * D, 1e-2, "scatter_add");
	CHECK_REL(down_bf(gout, (size_t)N * D), out, (size_t)N * D, 1e-2, "combine fwd");
	CHECK_REL(down_bf(gdyg, NK * D), dyg, NK * D, 1e-2, "combine bwd dyg");
	CHECK_REL(down(gdw, NK * 4), dw, NK, 1e-5, "combine bwd dw");
}

/* gather, scatter_add and combine fwd/bwd on a random permutation of the
 * N*K expert rows: the row kernels (K <= 4, D <= 1024: 1-4 column chunks,
 * partial chunks, an odd N), the previous kernels for K 8 or D 2048, and
 * the seed-base shape through the previous kernels (memk legacy). */
static void permute_case(int N, int K, int D)
{
	cr_log_info("permute N %d K %d D %d", N, K, D);
	size_t NK = (size_t)N * K;
	int32_t *perm = malloc(NK * 4), *inv = malloc(NK * 4);
	for (size_t i = 0; i < NK; i++)
		perm[i] = (int32_t)i;
	for (size_t i = NK - 1; i > 0; i--) {
		size_t j = rng_u64() % (i + 1);
		int32_t t = perm[i];
		perm[i] = perm[j], perm[j] = t;
	}
	moe_route_inverse(inv, perm, (int)NK);
	float *x = rand_bf((size_t)N * D, 1.f), *yg = rand_bf(NK * D, 1.f), *dout = rand_bf((size_t)N * D, 1.f);
	float *w = rand_bf(NK, 1.f), *res = rand_bf((size_t)N * D, 1.f), *dx = rand_bf((size_t)N * D, 1.f);
	float *xg = malloc(NK * D * 4), *out = malloc((size_t)N * D * 4), *dyg = malloc(NK * D * 4), *dw = malloc(NK * 4);
	bf16_t *gx = up_bf(x, (size_t)N * D), *gyg = up_bf(yg, NK * D), *gdo = up_bf(dout, (size_t)N * D);
	bf16_t *gres = up_bf(res, (size_t)N * D), *gdx = up_bf(dx, (size_t)N * D);
	bf16_t *gxg = dmalloc(NK * D * 2), *gout = dmalloc((size_t)N * D * 2), *gdyg = dmalloc(NK * D * 2);
	float *gw = up(w, NK * 4), *gdw = dmalloc(NK * 4);
	int32_t *gp = up(perm, NK * 4), *gi = up(inv, NK * 4);
	moe_gather_rows(xg, x, perm, (int)NK, K, D);
	moe_combine_fwd(out, res, yg, w, inv, N, K, D);
	moe_combine_bwd(dyg, dw, dout, yg, w, inv, N, K, D);
	moe_scatter_add_rows(dx, yg, perm, (int)NK, K, D);
	LAUNCH_OK(moe_cuda_gather(gxg, gx, gp, (int)NK, K, D, S, &gerr));
	LAUNCH_OK(moe_cuda_combine_fwd(gout, gres, gyg, gw, gi, N, K, D, S, &gerr));
	LAUNCH_OK(moe_cuda_combine_bwd(gdyg, gdw, gdo, gyg, gw, gi, N, K, D, S, &gerr));
	LAUNCH_OK(moe_cuda_scatter_add(gdx, gyg, gi, N, K, D, S, &gerr));
	CHECK_REL(down_bf(gxg, NK * D), xg, NK * D, 0.0, "gather");
	CHECK_REL(down_bf(gout, (size_t)N * D), out, (size_t)N * D, 1e-2, "combine fwd + residual");
	CHECK_REL(down_bf(gdyg, NK * D), dyg, NK * D, 1e-2, "combine bwd dyg");
	CHECK_REL(down(gdw, NK * 4), dw, NK, 1e-5, "combine bwd dw");
	CHECK_REL(down_bf(gdx, (size_t)N * D), dx, (size_t)N * D, 1e-2, "scatter_add");
	LAUNCH_OK(moe_cuda_combine_fwd(gres, gres, gyg, gw, gi, N, K, D, S, &gerr)); /* in place */
	CHECK_REL(down_bf(gres, (size_t)N * D), out, (size_t)N * D, 1e-2, "combine fwd + residual in place");
	moe_combine_fwd(out, NULL, yg, w, inv, N, K, D);
	LAUNCH_OK(moe_cuda_combine_fwd(gout, NULL, gyg, gw, gi, N, K, D, S, &gerr));
	CHECK_REL(down_bf(gout, (size_t)N * D), out, (size_t)N * D, 1e-2, "combine fwd");
}

Test(kernels, permute_rows)
{
	NEED_GPU();
	rng_seed(14);
	permute_case(333, 4, 768);
	permute_case(100, 2, 520);
	permute_case(64, 3, 1024);
	permute_case(41, 1, 256);
	permute_case(50, 8, 256);
	permute_case(70, 4, 2048);
	moe_cuda_memk_legacy(1);
	permute_case(333, 4, 768);
	moe_cuda_memk_legacy(0);
}

/* V % 8 == 0 takes the vectorised kernel, other V the scalar one */
static void xent_case(int N, int V, int ign);
Test(kernels, xent)
{
	NEED_GPU();
	rng_seed(9);
	xent_case(70, 5000, 7);
	xent_case(70, 5003, 7);
	xent_case(9, 50304, 1);
	/* a row too wide for shared memory (the vector kernel), then the
	 * previous kernels (memk legacy) */
	xent_case(3, 120000, 1);
	moe_cuda_memk_legacy(1);
	xent_case(9, 50304, 1);
	moe_cuda_memk_legacy(0);
}

static void xent_case(int N, int V, int ign)
{
	cr_log_info("xent N %d V %d", N, V);
	float *logits = rand_bf((size_t)N * V, 6.f), *d = malloc((size_t)N * V * 4);
	int32_t *t = malloc(N * 4);
	for (int n = 0; n < N; n++)
		t[n] = n % 9 == 0 ? ign : (int32_t)(rng_u64() % V);
	int64_t nv = 0;
	double ref = moe_xent_fwd_bwd(d, logits, t, N, V, ign, 0.25f, &nv);
	bf16_t *gl = up_bf(logits, (size_t)N * V);
	int32_t *gt = up(t, N * 4);
	float *rows = dmalloc(N * 4);
	double *acc = dmalloc(16);
	cudaMemset(acc, 0xff, 16); /* the sums are stored, whatever was there */
	LAUNCH_OK(moe_cuda_xent(gl, rows, gl, gt, N, V, ign, 0.25f, S, &gerr)); /* in place */
	LAUNCH_OK(moe_cuda_sum_loss(acc, rows, gt, N, ign, S, &gerr));
	double *h = down(acc, 16);
	cr_expect(fabs(h[0] - ref) <= 1e-4 * fabs(ref), "xent loss %.6f vs %.6f", h[0], ref);
	cr_expect_eq((int64_t)h[1], nv);
	CHECK_REL(down_bf(gl, (size_t)N * V), d, (size_t)N * V, 1e-2, "xent dlogits (in place)");
}

/* AdamW with a clip factor on n elements starting `off` floats into
 * 16-byte-aligned buffers (off % 4 != 0 exercises the scalar head and
 * tail around the vector body), with and without the bf16 copy. */
static void adamw_case(size_t n, size_t off, float gscale, bool with16)
{
	float *p = rand_bf(n, 1.f), *g = rand_bf(n, 1.f), *m = rand_bf(n, 0.1f), *v = rand_bf(n, 0.1f);
	for (size_t i = 0; i < n; i++)
		v[i] = fabsf(v[i]);
	float *gp = dmalloc((n + off) * 4), *gg = dmalloc((n + off) * 4), *gm = dmalloc((n + off) * 4),
	      *gv = dmalloc((n + off) * 4);
	bf16_t *g16 = dmalloc((n + off) * 2);
	cudaMemcpy(gp + off, p, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gg + off, g, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gm + off, m, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gv + off, v, n * 4, cudaMemcpyHostToDevice);
	moe_adamw_step(p, g, gscale, m, v, n, 1e-3f, 0.9f, 0.95f, 1e-8f, 0.1f, 7);
	LAUNCH_OK(moe_cuda_adamw(gp + off, with16 ? g16 + off : NULL, gg + off, gscale, gm + off, gv + off, n, 1e-3f,
				 0.9f, 0.95f, 1e-8f, 0.1f, 7, S, &gerr));
	char what[80];
	/* each operation rounded on its own in the reference's order: the same
	 * bits (the reference's build has no fused multiply-add on x86-64) */
	snprintf(what, sizeof what, "adamw n=%zu off=%zu gscale=%g p", n, off, gscale);
	CHECK_REL(down(gp + off, n * 4), p, n, 0, what);
	snprintf(what, sizeof what, "adamw n=%zu off=%zu m", n, off);
	CHECK_REL(down(gm + off, n * 4), m, n, 0, what);
	snprintf(what, sizeof what, "adamw n=%zu off=%zu v", n, off);
	CHECK_REL(down(gv + off, n * 4), v, n, 0, what);
	/* the gradient itself is not scaled */
	CHECK_REL(down(gg + off, n * 4), g, n, 0, "adamw g unchanged");
	if (with16) {
		snprintf(what, sizeof what, "adamw n=%zu off=%zu bf16 copy", n, off);
		CHECK_REL(down_bf(g16 + off, n), p, n, 5e-3, what);
	}
}

Test(kernels, adamw_sumsq)
{
	NEED_GPU();
	rng_seed(10);
	adamw_case(300001, 0, 1.0f, true);
	adamw_case(300001, 1, 0.37f, true);
	adamw_case(1027, 3, 0.5f, false);
	adamw_case(3, 2, 1.0f, true);   /* shorter than the head: scalar only */
	adamw_case(9, 2, 0.9f, true);   /* a head of 2, one vector, a tail of 3 */
	/* sums of squares: aligned, and from 1..3 floats past a 16-byte
	 * boundary (scalar heads), over several 65536-element blocks */
	size_t n = 300001;
	float *g = rand_bf(n, 1.f), *gg = up(g, n * 4);
	double *acc = dmalloc(8);
	void *sc = dmalloc(moe_cuda_sumsq_scratch(n));
	for (size_t off = 0; off < 4; off++) {
		double ss = moe_sumsq(g + off, n - off - off * 7);
		cudaMemset(acc, 0xff, 8); /* the sum is stored, whatever was there */
		LAUNCH_OK(moe_cuda_sumsq(acc, sc, gg + off, n - off - off * 7, S, &gerr));
		double *h = down(acc, 8);
		cr_expect(fabs(*h - ss) <= 1e-9 * ss, "sumsq (offset %zu) %.10g vs %.10g", off, *h, ss);
	}
	cudaMemset(acc, 0xff, 8);
	LAUNCH_OK(moe_cuda_sumsq(acc, sc, gg, 0, S, &gerr));
	double *h0 = down(acc, 8);
	cr_expect(*h0 == 0.0, "sumsq of nothing %g", *h0);
}

/* The bf16 compute copy of a packed master (ties away from zero) */
static uint16_t rna_bits(uint32_t u) { return (uint16_t)((u + 0x8000u) >> 16); }

/* A random fp32 master of any low bits: |x| in [2^-9, 2^2), random sign;
 * one in 8 has the low half 0x8000 (a tie of the two roundings), one in 8
 * 0x7fff or 0xffff (a carry or none), one in 16 is a power of two. */
static float any_master(void)
{
	uint64_t r = rng_u64();
	uint32_t u = (uint32_t)(r & 0x807fffffu) | (uint32_t)(118 + (r >> 32) % 11) << 23;
	switch ((r >> 40) & 15) {
	case 0: case 1: u = (u & 0xffff0000u) | 0x8000u; break;
	case 2: u |= 0xffffu; break;
	case 3: u = (u & 0xffff0000u) | 0x7fffu; break;
	case 4: u &= 0xff800000u; break;
	}
	float f;
	memcpy(&f, &u, 4);
	return f;
}

/* Packed masters (moe_cuda_adamw_packed): three AdamW steps on masters
 * kept as (compute copy, low halves) against moe_cuda_adamw on the same
 * fp32 masters, n elements `off` floats into aligned buffers: the
 * unpacked masters, m, v and the compute copy the same bits, the copy
 * rounded to nearest with ties away from zero (any_master makes ties
 * common at the start; after the steps they are as rare as in training).
 * And the packing alone: every value back exactly, NaN a NaN in the copy. */
static void adamw_packed_case(size_t n, size_t off)
{
	float *p = malloc(n * 4), *g = rand_bf(n, 1.f), *m = rand_bf(n, 0.1f), *v = rand_bf(n, 0.1f);
	for (size_t i = 0; i < n; i++) {
		p[i] = any_master();
		v[i] = fabsf(v[i]);
	}
	float *gp = dmalloc((n + off) * 4), *gg = dmalloc((n + off) * 4), *gm = dmalloc((n + off) * 4),
	      *gv = dmalloc((n + off) * 4), *gm2 = dmalloc((n + off) * 4), *gv2 = dmalloc((n + off) * 4),
	      *un = dmalloc((n + off) * 4);
	bf16_t *g16 = dmalloc((n + off) * 2), *hi = dmalloc((n + off) * 2);
	uint16_t *lo = dmalloc((n + off) * 2);
	cudaMemcpy(gp + off, p, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gg + off, g, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gm + off, m, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gv + off, v, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gm2 + off, m, n * 4, cudaMemcpyHostToDevice);
	cudaMemcpy(gv2 + off, v, n * 4, cudaMemcpyHostToDevice);
	LAUNCH_OK(moe_cuda_masters_pack(hi + off, lo + off, gp + off, n, S, &gerr));
	LAUNCH_OK(moe_cuda_masters_unpack(un + off, hi + off, lo + off, n, S, &gerr));
	uint32_t *u0 = down(un + off, n * 4);
	uint16_t *h0 = down(hi + off, n * 2);
	cr_expect(memcmp(u0, p, n * 4) == 0, "packed n=%zu off=%zu: masters back exactly", n, off);
	size_t bad0 = 0;
	for (size_t i = 0; i < n; i++)
		bad0 += h0[i] != rna_bits(u0[i]);
	cr_expect(bad0 == 0, "packed n=%zu off=%zu: %zu packed compute copies not rounded ties away", n, off, bad0);
	free(h0);
	for (int t = 1; t <= 3; t++) {
		float gs = t == 2 ? 0.37f : 1.f;
		LAUNCH_OK(moe_cuda_adamw(gp + off, g16 + off, gg + off, gs, gm + off, gv + off, n, 1e-3f, 0.9f, 0.95f,
					 1e-8f, 0.1f, t, S, &gerr));
		LAUNCH_OK(moe_cuda_adamw_packed(hi + off, lo + off, gg + off, gs, gm2 + off, gv2 + off, n, 1e-3f, 0.9f,
						0.95f, 1e-8f, 0.1f, t, S, &gerr));
	}
	LAUNCH_OK(moe_cuda_masters_unpack(un + off, hi + off, lo + off, n, S, &gerr));
	uint32_t *pr = down(gp + off, n * 4), *pu = down(un + off, n * 4);
	uint16_t *c16 = down(g16 + off, n * 2), *h16 = down(hi + off, n * 2);
	size_t pdiff = 0, ties = 0, bad16 = 0;
	for (size_t i = 0; i < n; i++) {
		pdiff += pr[i] != pu[i];
		ties += (pr[i] & 0xffffu) == 0x8000u;
		bad16 += h16[i] != rna_bits(pr[i]) || h16[i] != c16[i];
	}
	cr_expect(pdiff == 0, "packed n=%zu off=%zu: %zu masters differ from the plain kernel's", n, off, pdiff);
	cr_expect(memcmp(down(gm + off, n * 4), down(gm2 + off, n * 4), n * 4) == 0, "packed n=%zu off=%zu: m", n, off);
	cr_expect(memcmp(down(gv + off, n * 4), down(gv2 + off, n * 4), n * 4) == 0, "packed n=%zu off=%zu: v", n, off);
	cr_expect(bad16 == 0, "packed n=%zu off=%zu: %zu compute copies differ or are not the masters' rounding (%zu ties)",
		  n, off, bad16, ties);
	cudaFree(gp), cudaFree(gg), cudaFree(gm), cudaFree(gv), cudaFree(gm2), cudaFree(gv2), cudaFree(un);
	cudaFree(g16), cudaFree(hi), cudaFree(lo);
	free(p), free(g), free(m), free(v), free(u0), free(pr), free(pu), free(c16), free(h16);
}

Test(kernels, adamw_packed)
{
	NEED_GPU();
	rng_seed(12);
	adamw_packed_case(300001, 0);
	adamw_packed_case(300001, 1);  /* a scalar head and tail */
	adamw_packed_case(1027, 3);
	adamw_packed_case(3, 2);       /* scalar only */
	/* the edges of the packing: zeros, infinities, the largest finite
	 * values (their copy rounds to infinity), denormals, NaNs (one whose
	 * top half plus the carry wraps), and where the carry crosses into the
	 * exponent */
	const uint32_t e[] = {0x00000000u, 0x80000000u, 0x7f800000u, 0xff800000u, 0x7f7fffffu, 0xff7fffffu,
			      0x00000001u, 0x80008000u, 0x007fffffu, 0x3f7fffffu, 0x3f7f8000u, 0x3fff8000u,
			      0x7fffffffu, 0xffffffffu, 0x7fc00000u, 0xffff8001u};
	enum { NE = sizeof e / sizeof e[0] };
	float *ge = up(e, sizeof e), *gu = dmalloc(sizeof e);
	bf16_t *eh = dmalloc(NE * 2);
	uint16_t *el = dmalloc(NE * 2);
	LAUNCH_OK(moe_cuda_masters_pack(eh, el, ge, NE, S, &gerr));
	LAUNCH_OK(moe_cuda_masters_unpack(gu, eh, el, NE, S, &gerr));
	uint32_t *b = down(gu, sizeof e);
	uint16_t *h = down(eh, NE * 2);
	for (int i = 0; i < NE; i++) {
		bool nan = (e[i] & 0x7fffffffu) > 0x7f800000u;
		if (nan) {
			cr_expect((b[i] & 0x7fffffffu) > 0x7f800000u, "packed NaN %08x came back as %08x", e[i], b[i]);
			cr_expect((h[i] & 0x7fffu) > 0x7f80u, "packed NaN %08x: compute copy %04x, not a NaN", e[i], h[i]);
		} else {
			cr_expect(b[i] == e[i], "packed %08x came back as %08x", e[i], b[i]);
			cr_expect(h[i] == rna_bits(e[i]), "packed %08x: compute copy %04x, not %04x", e[i], h[i],
				  rna_bits(e[i]));
		}
	}
	cudaFree(ge), cudaFree(gu), cudaFree(eh), cudaFree(el);
	free(b), free(h);
}

/* Several sums of squares in one batch (moe_cuda_sumsq_batch, the clip
 * norms' path): regions from 0..3 floats past a 16-byte boundary, arrays of
 * doubles as the epilogues leave them, a sum of nothing; each sum stored
 * over garbage, with the bits of the one-by-one kernels on the same items
 * (moe_cuda_sumsq for one region, moe_cuda_sumsq_add_segs storing over the
 * regions' moe_cuda_sumsq_partials otherwise) and within 1e-9 of the host's
 * long double sum. */
Test(kernels, sumsq_batch)
{
	NEED_GPU();
	rng_seed(14);
	size_t n = 400003;
	float *g = rand_bf(n, 1.f), *gg = up(g, n * 4);
	double hp[3][700];
	const double *dp[3];
	size_t pn[3] = {700, 1, 333};
	for (int k = 0; k < 3; k++) {
		for (size_t i = 0; i < pn[k]; i++)
			hp[k][i] = (double)(rng_u64() % 1000003) * 1e-3;
		dp[k] = up(hp[k], pn[k] * 8);
	}
	/* the regions: [off, off + len) of gg */
	static const size_t roff[] = {1, 70000, 131075, 333333, 0};
	static const size_t rlen[] = {65535, 61001, 131073, 66670, 5};
	struct moe_cuda_sq_batch *q = calloc(1, sizeof *q);
	/* sum 0: region 0; sum 1: region 1, parts 0, region 2, parts 1;
	 * sum 2: nothing; sum 3: parts 2, region 3, region 4 */
	static const int items[4][4] = {{0}, {1, -1, 2, -2}, {0}, {-3, 3, 4}};
	static const int nitems[4] = {1, 4, 0, 3};
	for (int r = 0; r < 5; r++) {
		q->rx[r] = gg + roff[r];
		q->rn[r] = rlen[r];
		q->blk[r + 1] = q->blk[r] + moe_cuda_sumsq_blocks(rlen[r]);
	}
	q->nr = 5;
	double *acc = dmalloc(4 * 8), *part = dmalloc(q->blk[5] * 8);
	for (int k = 0; k < 4; k++) {
		q->first[k] = q->nitems;
		for (int i = 0; i < nitems[k]; i++) {
			int it = items[k][i];
			q->ireg[q->nitems] = it >= 0 ? it : -1;
			q->ip[q->nitems] = it >= 0 ? NULL : dp[-it - 1];
			q->in[q->nitems++] = it >= 0 ? 0 : pn[-it - 1];
		}
		q->acc[k] = acc + k;
	}
	q->first[4] = q->nitems;
	q->nsum = 4;
	cudaMemset(acc, 0xff, 4 * 8);
	LAUNCH_OK(moe_cuda_sumsq_batch(part, q, S, &gerr));
	double *got = down(acc, 4 * 8);
	/* one by one */
	double *acc1 = dmalloc(8), *part1 = dmalloc(q->blk[5] * 8);
	for (int k = 0; k < 4; k++) {
		long double hs = 0;
		struct moe_cuda_ssq_segs sg = {.store = 1};
		for (int i = 0; i < nitems[k]; i++) {
			int it = items[k][i];
			if (it >= 0) {
				for (size_t j = roff[it]; j < roff[it] + rlen[it]; j++)
					hs += (long double)g[j] * g[j];
				LAUNCH_OK(moe_cuda_sumsq_partials(part1 + q->blk[it], gg + roff[it], rlen[it], S,
								  &gerr));
				sg.p[sg.count] = part1 + q->blk[it];
				sg.n[sg.count++] = q->blk[it + 1] - q->blk[it];
			} else {
				for (size_t j = 0; j < pn[-it - 1]; j++)
					hs += hp[-it - 1][j];
				sg.p[sg.count] = dp[-it - 1];
				sg.n[sg.count++] = pn[-it - 1];
			}
		}
		cudaMemset(acc1, 0xff, 8);
		if (k == 0)
			LAUNCH_OK(moe_cuda_sumsq(acc1, part1, gg + roff[0], rlen[0], S, &gerr));
		else if (sg.count)
			LAUNCH_OK(moe_cuda_sumsq_add_segs(acc1, &sg, S, &gerr));
		else
			cudaMemset(acc1, 0, 8);
		double *one = down(acc1, 8);
		cr_expect(got[k] == *one, "sum %d: batched %.17g, one by one %.17g", k, got[k], *one);
		cr_expect(fabs(got[k] - (double)hs) <= 1e-9 * (double)hs, "sum %d: %.17g vs host %.17Lg", k, got[k],
			  hs);
		free(one);
	}
	cr_expect(got[2] == 0.0, "a sum of nothing is %g", got[2]);
	free(got);
	free(q);
}

Test(kernels, gemm)
{
	NEED_GPU();
	rng_seed(11);
	int N = 200, In = 136, Out = 72;
	float *x = rand_bf((size_t)N * In, 1.f), *w = rand_bf((size_t)Out * In, 1.f), *dout = rand_bf((size_t)N * Out, 1.f);
	float *dw0 = rand_bf((size_t)Out * In, 1.f);
	float *out = malloc((size_t)N * Out * 4), *dx = malloc((size_t)N * In * 4), *dw = malloc((size_t)Out * In * 4);
	memcpy(dw, dw0, (size_t)Out * In * 4);
	moe_linear_fwd(out, x, w, NULL, N, In, Out);
	moe_linear_bwd(dx, dw, NULL, dout, x, w, N, In, Out);
	struct moe_cuda_blas *b = moe_cuda_blas_new(S, &gerr);
	cr_assert_not_null(b, "%s", gerr.msg);
	bf16_t *gx = up_bf(x, (size_t)N * In), *gw = up_bf(w, (size_t)Out * In), *gdo = up_bf(dout, (size_t)N * Out);
	bf16_t *go = dmalloc((size_t)N * Out * 2), *gdx = dmalloc((size_t)N * In * 2);
	float *gdw = up(dw0, (size_t)Out * In * 4);
	LAUNCH_OK(moe_cuda_gemm(b, 0, 1, N, Out, In, gx, In, gw, In, go, Out, 0, 1.f, 0.f, &gerr));
	LAUNCH_OK(moe_cuda_gemm(b, 0, 0, N, In, Out, gdo, Out, gw, In, gdx, In, 0, 1.f, 0.f, &gerr));
	LAUNCH_OK(moe_cuda_gemm(b, 1, 0, Out, In, N, gdo, Out, gx, In, gdw, In, 1, 1.f, 1.f, &gerr));
	CHECK_REL(down_bf(go, (size_t)N * Out), out, (size_t)N * Out, 1e-2, "gemm fwd");
	CHECK_REL(down_bf(gdx, (size_t)N * In), dx, (size_t)N * In, 1e-2, "gemm dgrad");
	CHECK_REL(down(gdw, (size_t)Out * In * 4), dw, (size_t)Out * In, 1e-4, "gemm wgrad (fp32 +=)");
	moe_cuda_blas_free(b);
}

/* The tuned GEMM plans (gemm.cu: the fastest of cuBLASLt's candidates whose
 * output has the first candidate's bits) against the first candidate
 * untimed, at the model's shapes and a few odd ones: the forward (bf16),
 * the input gradient, the fp32 weight gradient added into an existing one
 * (beta 1: the timing runs must not add into it), the batched q/k/v
 * forward and weight gradient, and the residual GEMM, each called twice
 * (a plan is tuned at its shape's second call).  Bit-identical outputs,
 * the weight gradient (added twice) correct against the fp32 reference,
 * and the tuned handle's plans timed. */
Test(kernels, gemm_tuned_same_bits, .timeout = 120)
{
	NEED_GPU();
	rng_seed(13);
	struct moe_cuda_blas *bt = moe_cuda_blas_new(S, &gerr), *bf = moe_cuda_blas_new(S, &gerr);
	cr_assert(bt && bf, "%s", gerr.msg);
	moe_cuda_gemm_set_tune(bt, 1);
	moe_cuda_gemm_set_tune(bf, 2);
	static const int shapes[][3] = {{8192, 768, 768}, {8192, 768, 1280}, {8192, 640, 768}, {4096, 768, 2048},
					{333, 136, 72}};
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++) {
		int N = shapes[i][0], In = shapes[i][1], Out = shapes[i][2];
		size_t nx = (size_t)N * In, no = (size_t)N * Out, nw = (size_t)Out * In;
		float *x = rand_bf(nx, 1.f), *w = rand_bf(3 * nw, 0.1f), *dy = rand_bf(3 * no, 1.f), *dw0 = rand_bf(3 * nw, 1.f);
		bf16_t *gx = up_bf(x, nx), *gw = up_bf(w, 3 * nw), *gdy = up_bf(dy, 3 * no);
		bf16_t *o[2], *dx[2], *ob[2], *orr[2];
		float *dw[2], *dwb[2];
		for (int k = 0; k < 2; k++) {
			struct moe_cuda_blas *b = k ? bf : bt;
			o[k] = dmalloc(no * 2), dx[k] = dmalloc(nx * 2), ob[k] = dmalloc(3 * no * 2), orr[k] = dmalloc(no * 2);
			dw[k] = up(dw0, nw * 4), dwb[k] = up(dw0, 3 * nw * 4);
			for (int rep = 0; rep < 2; rep++) {
				LAUNCH_OK(moe_cuda_gemm(b, 0, 1, N, Out, In, gx, In, gw, In, o[k], Out, 0, 1.f, 0.f, &gerr));
				LAUNCH_OK(moe_cuda_gemm(b, 0, 0, N, In, Out, gdy, Out, gw, In, dx[k], In, 0, 1.f, 0.f, &gerr));
				LAUNCH_OK(moe_cuda_gemm(b, 1, 0, Out, In, N, gdy, Out, gx, In, dw[k], In, 1, 1.f, 1.f, &gerr));
				LAUNCH_OK(moe_cuda_gemm_batched(b, 0, 1, N, Out, In, gx, In, 0, gw, In, (long long)nw, ob[k],
								Out, (long long)no, 0, 1.f, 0.f, 3, &gerr));
				LAUNCH_OK(moe_cuda_gemm_batched(b, 1, 0, Out, In, N, gdy, Out, (long long)no, gx, In, 0,
								dwb[k], In, (long long)nw, 1, 1.f, 1.f, 3, &gerr));
				LAUNCH_OK(moe_cuda_gemm_res(b, N, Out, In, gx, In, gw, In, gdy, orr[k], Out, &gerr));
			}
		}
		char what[96];
		snprintf(what, sizeof what, "N %d In %d Out %d", N, In, Out);
		struct {
			const char *name;
			void *p[2];
			size_t bytes;
		} cmp[] = {{"fwd", {o[0], o[1]}, no * 2},         {"dgrad", {dx[0], dx[1]}, nx * 2},
			   {"wgrad +=", {dw[0], dw[1]}, nw * 4},   {"batched fwd", {ob[0], ob[1]}, 3 * no * 2},
			   {"batched wgrad +=", {dwb[0], dwb[1]}, 3 * nw * 4}, {"residual", {orr[0], orr[1]}, no * 2}};
		for (size_t c = 0; c < sizeof cmp / sizeof cmp[0]; c++) {
			void *h0 = malloc(cmp[c].bytes), *h1 = malloc(cmp[c].bytes);
			cr_assert_eq(cudaMemcpy(h0, cmp[c].p[0], cmp[c].bytes, cudaMemcpyDeviceToHost), cudaSuccess);
			cr_assert_eq(cudaMemcpy(h1, cmp[c].p[1], cmp[c].bytes, cudaMemcpyDeviceToHost), cudaSuccess);
			cr_expect(memcmp(h0, h1, cmp[c].bytes) == 0, "%s %s: the tuned plan's bits differ", what, cmp[c].name);
			free(h0), free(h1);
		}
		if (N <= 4096) { /* the weight gradient added twice, against the reference */
			float *ref = malloc(nw * 4);
			memcpy(ref, dw0, nw * 4);
			moe_linear_bwd(NULL, ref, NULL, dy, x, w, N, In, Out);
			moe_linear_bwd(NULL, ref, NULL, dy, x, w, N, In, Out);
			snprintf(what, sizeof what, "N %d In %d Out %d wgrad += (tuned)", N, In, Out);
			CHECK_REL(down(dw[0], nw * 4), ref, nw, 1e-4, what);
			free(ref);
		}
		free(x), free(w), free(dy), free(dw0);
	}
	/* a batched output with gaps between its batches: the tuning must not
	 * write into the gaps (they keep their bytes), and the batches match
	 * the first candidate's */
	{
		int N = 1024, In = 256, Out = 384;
		size_t nx = (size_t)N * In, no = (size_t)N * Out, nw = (size_t)Out * In, sc = no + 640;
		float *x = rand_bf(nx, 1.f), *w = rand_bf(3 * nw, 0.1f);
		bf16_t *gx = up_bf(x, nx), *gw = up_bf(w, 3 * nw), *ob[2];
		uint16_t *h[2];
		for (int k = 0; k < 2; k++) {
			ob[k] = dmalloc(3 * sc * 2);
			cr_assert_eq(cudaMemset(ob[k], 0x5a, 3 * sc * 2), cudaSuccess);
			for (int rep = 0; rep < 2; rep++)
				LAUNCH_OK(moe_cuda_gemm_batched(k ? bf : bt, 0, 1, N, Out, In, gx, In, 0, gw, In, (long long)nw,
								ob[k], Out, (long long)sc, 0, 1.f, 0.f, 3, &gerr));
			h[k] = malloc(3 * sc * 2);
			cr_assert_eq(cudaMemcpy(h[k], ob[k], 3 * sc * 2, cudaMemcpyDeviceToHost), cudaSuccess);
		}
		size_t gap_bad = 0;
		for (int bb = 0; bb < 3; bb++)
			for (size_t i = no; i < sc; i++)
				gap_bad += h[0][bb * sc + i] != 0x5a5a;
		cr_expect_eq(gap_bad, 0, "batched output with gaps: %zu gap elements written", gap_bad);
		cr_expect(memcmp(h[0], h[1], 3 * sc * 2) == 0, "batched output with gaps: the tuned plan's bits differ");
		free(x), free(w), free(h[0]), free(h[1]);
	}
	moe_cuda_gemm_report(bt, stdout);
	cr_expect_gt(moe_cuda_gemm_timed(bt), 20, "the tuned handle timed %d plans", moe_cuda_gemm_timed(bt));
	cr_expect_eq(moe_cuda_gemm_timed(bf), 0);
	moe_cuda_blas_free(bt);
	moe_cuda_blas_free(bf);
}

/* The residual GEMM (cuBLASLt, out = res + x w^T into a buffer other than
 * res) against the fp32 reference (relative 1e-2: bf16 output) and against
 * the copy-then-add-in-place cuBLAS path it replaces (no less accurate;
 * every element correctly rounded, see below); res unchanged; a second call
 * of a planned shape bit-identical. */
static void gemm_res_case(struct moe_cuda_blas *b, int N, int In, int Out)
{
	size_t no = (size_t)N * Out;
	float *x = rand_bf((size_t)N * In, 1.f), *w = rand_bf((size_t)Out * In, 0.1f), *r = rand_bf(no, 2.f);
	float *ref = malloc(no * 4);
	moe_linear_fwd(ref, x, w, NULL, N, In, Out);
	for (size_t i = 0; i < no; i++)
		ref[i] += r[i];
	bf16_t *gx = up_bf(x, (size_t)N * In), *gw = up_bf(w, (size_t)Out * In), *gr = up_bf(r, no);
	bf16_t *go = dmalloc(no * 2), *gc = dmalloc(no * 2);
	LAUNCH_OK(moe_cuda_gemm_res(b, N, Out, In, gx, In, gw, In, gr, go, Out, &gerr));
	cr_assert_eq(cudaMemcpy(gc, gr, no * 2, cudaMemcpyDeviceToDevice), cudaSuccess);
	LAUNCH_OK(moe_cuda_gemm(b, 0, 1, N, Out, In, gx, In, gw, In, gc, Out, 0, 1.f, 1.f, &gerr));
	float *o = down_bf(go, no), *oc = down_bf(gc, no), *rr = down_bf(gr, no);
	char what[64];
	snprintf(what, sizeof what, "gemm_res N %d In %d Out %d", N, In, Out);
	CHECK_REL(o, ref, no, 1e-2, what);
	/* no less accurate than the in-place path against the fp32 reference
	 * (cuBLAS's in-place bf16 sum measured less accurate on the H100:
	 * 0.0021-0.0023 against 0.00166 at the model's shapes), and every
	 * element correctly rounded: within 2^-8 of the reference relative
	 * (half a bf16 unit at worst) plus 2^-14 of the output's rms for the
	 * last bits of an fp32 sum that cancels to near zero (a product or
	 * partial sum rounded to bf16 before the add would be ~2^-9 of the
	 * terms: far beyond it) */
	double eo = rel_err(o, ref, no), ec = rel_err(oc, ref, no), rms = 0;
	for (size_t i = 0; i < no; i++)
		rms += (double)ref[i] * ref[i];
	rms = sqrt(rms / (double)no);
	cr_log_info("%s: relative error %.4g, in-place path %.4g", what, eo, ec);
	cr_expect(eo <= 1.25 * ec + 1e-7, "%s: relative error %.4g against the in-place path's %.4g", what, eo, ec);
	size_t far = 0, farc = 0;
	for (size_t i = 0; i < no; i++) {
		float tol = fabsf(ref[i]) * (1.f / 256) + (float)rms * (1.f / 16384);
		far += fabsf(o[i] - ref[i]) > tol;
		farc += fabsf(oc[i] - ref[i]) > tol;
	}
	cr_log_info("%s: elements not correctly rounded: %zu (in-place path %zu) of %zu", what, far, farc, no);
	cr_expect_eq(far, 0, "%s: %zu elements not correctly rounded", what, far);
	cr_expect(memcmp(rr, r, no * 4) == 0, "%s: the residual was changed", what);
	LAUNCH_OK(moe_cuda_gemm_res(b, N, Out, In, gx, In, gw, In, gr, gc, Out, &gerr));
	float *o2 = down_bf(gc, no);
	cr_expect(memcmp(o2, o, no * 4) == 0, "%s: a second call differs", what);
	cudaFree(gx), cudaFree(gw), cudaFree(gr), cudaFree(go), cudaFree(gc);
	free(x), free(w), free(r), free(ref), free(o), free(oc), free(rr), free(o2);
}

Test(kernels, gemm_res, .timeout = 60)
{
	NEED_GPU();
	rng_seed(12);
	struct moe_cuda_blas *b = moe_cuda_blas_new(S, &gerr);
	cr_assert_not_null(b, "%s", gerr.msg);
	static const int shapes[][3] = {{200, 136, 72}, {1, 8, 8}, {333, 64, 128}, {4096, 768, 768}, {2048, 3840, 768}};
	for (size_t i = 0; i < sizeof shapes / sizeof shapes[0]; i++)
		gemm_res_case(b, shapes[i][0], shapes[i][1], shapes[i][2]);
	gemm_res_case(b, 200, 136, 72); /* a planned shape again, on fresh inputs */
	moe_cuda_blas_free(b);
}

/* One family of grouped GEMM launchers: grouped_gemm.cu's mma.sync kernel
 * or grouped_wgmma.cu's Hopper kernels (same arguments). */
typedef int (*grouped_mm_fn)(bf16_t *, const bf16_t *, const bf16_t *, const int32_t *, int, int, int, int,
			     cudaStream_t, struct moe_error *);
typedef int (*grouped_wgrad_fn)(float *, const bf16_t *, const bf16_t *, const int32_t *, int, int, int,
				cudaStream_t, struct moe_error *);
struct grouped_impl {
	const char *name;
	grouped_mm_fn fwd, dgrad;
	grouped_wgrad_fn wgrad;
	int extra_rows; /* max_rows above the true count, as the backend may pass */
};
static const struct grouped_impl grouped_mma = {"grouped", moe_cuda_grouped_fwd, moe_cuda_grouped_dgrad,
						 moe_cuda_grouped_wgrad, 0};
static const struct grouped_impl grouped_wgmma = {"wgmma", moe_cuda_grouped_wgmma_fwd,
						  moe_cuda_grouped_wgmma_dgrad, moe_cuda_grouped_wgmma_wgrad, 77};

/* The three ops of k on groups of cnt[e] rows against the CPU reference;
 * cfg (wgmma: the tile configuration in use, 0 otherwise) labels the checks. */
static void grouped_case(const struct grouped_impl *k, int cfg, int E, int In, int Out, const int *cnt)
{
	int32_t *off = malloc((E + 1) * 4);
	off[0] = 0;
	for (int e = 0; e < E; e++)
		off[e + 1] = off[e] + cnt[e];
	int M = off[E];
	float *x = rand_bf((size_t)M * In, 1.f), *w = rand_bf((size_t)E * Out * In, 1.f);
	float *dout = rand_bf((size_t)M * Out, 1.f), *dw0 = rand_bf((size_t)E * Out * In, 1.f);
	float *out = malloc((size_t)M * Out * 4 + 4), *dx = malloc((size_t)M * In * 4 + 4);
	float *dw = malloc((size_t)E * Out * In * 4);
	memcpy(dw, dw0, (size_t)E * Out * In * 4);
	moe_grouped_linear_fwd(out, x, w, off, E, In, Out);
	moe_grouped_linear_bwd(dx, dw, dout, x, w, off, E, In, Out);
	bf16_t *gx = up_bf(x, (size_t)M * In), *gw = up_bf(w, (size_t)E * Out * In), *gdo = up_bf(dout, (size_t)M * Out);
	bf16_t *go = dmalloc((size_t)M * Out * 2), *gdx = dmalloc((size_t)M * In * 2);
	float *gdw = up(dw0, (size_t)E * Out * In * 4);
	int32_t *goff = up(off, (E + 1) * 4);
	LAUNCH_OK(k->fwd(go, gx, gw, goff, M + k->extra_rows, E, In, Out, S, &gerr));
	LAUNCH_OK(k->dgrad(gdx, gdo, gw, goff, M + k->extra_rows, E, In, Out, S, &gerr));
	LAUNCH_OK(k->wgrad(gdw, gdo, gx, goff, E, In, Out, S, &gerr));
	char what[96];
	snprintf(what, sizeof(what), "%s fwd E=%d In=%d Out=%d config %d", k->name, E, In, Out, cfg);
	CHECK_REL(down_bf(go, (size_t)M * Out), out, (size_t)M * Out, 1e-2, what);
	snprintf(what, sizeof(what), "%s dgrad E=%d In=%d Out=%d config %d", k->name, E, In, Out, cfg);
	CHECK_REL(down_bf(gdx, (size_t)M * In), dx, (size_t)M * In, 1e-2, what);
	snprintf(what, sizeof(what), "%s wgrad E=%d In=%d Out=%d config %d", k->name, E, In, Out, cfg);
	CHECK_REL(down(gdw, (size_t)E * Out * In * 4), dw, (size_t)E * Out * In, 1e-4, what);
	if (k == &grouped_wgmma) {
		/* the stored weight gradient (gradients by overwrite) into NaN:
		 * every element written, experts without rows as zeros */
		size_t nw = (size_t)E * Out * In;
		float *dwz = calloc(nw, 4);
		moe_grouped_linear_bwd(NULL, dwz, dout, x, w, off, E, In, Out);
		cudaMemset(gdw, 0xff, nw * 4);
		LAUNCH_OK(moe_cuda_grouped_wgmma_wgrad_store(gdw, gdo, gx, goff, E, In, Out, true, S, &gerr));
		float *got = down(gdw, nw * 4);
		snprintf(what, sizeof(what), "%s wgrad store E=%d In=%d Out=%d config %d", k->name, E, In, Out, cfg);
		check_all_written(got, nw, what);
		CHECK_REL(got, dwz, nw, 1e-4, what);
		free(dwz);
	}
	cudaFree(gx);
	cudaFree(gw);
	cudaFree(gdo);
	cudaFree(go);
	cudaFree(gdx);
	cudaFree(gdw);
	cudaFree(goff);
	free(off);
	free(x);
	free(w);
	free(dout);
	free(dw0);
	free(out);
	free(dx);
	free(dw);
}

Test(kernels, grouped_gemm, .timeout = 120)
{
	NEED_GPU();
	rng_seed(12);
	int c1[6] = {0, 1, 130, 257, 0, 64};
	grouped_case(&grouped_mma, 0, 6, 128, 256, c1);
	int c2[5] = {3, 200, 17, 0, 129};
	grouped_case(&grouped_mma, 0, 5, 72, 40, c2); /* partial tiles in every dimension */
	int c3[8];
	for (int e = 0; e < 8; e++)
		c3[e] = (int)(rng_u64() % 300);
	grouped_case(&grouped_mma, 0, 8, 768, 1280, c3);
}

/* grouped_wgmma.cu (Hopper wgmma) against the CPU reference, in each tile
 * configuration: empty experts, one-row experts, row tails, column tiles
 * that end inside a 64-column block, and reductions (In, Out, a group's rows)
 * that are not multiples of the 64-deep k-slice.  Tolerances as for the
 * mma.sync kernel: 1e-2 for bf16 outputs, 1e-4 for the fp32 weight gradients
 * accumulated onto random values.  Skipped unless the device is sm_90. */
Test(kernels, grouped_wgmma, .timeout = 120)
{
	NEED_GPU();
	if (!moe_cuda_grouped_wgmma_supported())
		cr_skip_test("not an sm_90 device");
	rng_seed(13);
	for (int cfg = 1; cfg <= 4; cfg++) {
		moe_cuda_grouped_wgmma_config(cfg);
		int c1[6] = {0, 1, 130, 257, 0, 64};
		grouped_case(&grouped_wgmma, cfg, 6, 128, 256, c1);
		int c2[5] = {3, 200, 17, 0, 129};
		grouped_case(&grouped_wgmma, cfg, 5, 72, 40, c2); /* partial tiles in every dimension */
		int c3[4] = {70, 0, 191, 64};
		grouped_case(&grouped_wgmma, cfg, 4, 200, 328, c3); /* columns end inside a 64-wide block */
		int c4[8];
		for (int e = 0; e < 8; e++)
			c4[e] = e == 2 ? 0 : e == 5 ? 900 : (int)(rng_u64() % 400);
		grouped_case(&grouped_wgmma, cfg, 8, 768, 1280, c4); /* seed-base gate_up, imbalanced */
		grouped_case(&grouped_wgmma, cfg, 8, 640, 768, c4);  /* seed-base down */
	}
	moe_cuda_grouped_wgmma_config(0);
	/* one group: the backend's narrow linears (the router, 768 -> 64, and its
	 * input gradient) */
	int c5[1] = {2500};
	grouped_case(&grouped_wgmma, 0, 1, 768, 64, c5);
	int c6[1] = {1031};
	grouped_case(&grouped_wgmma, 0, 1, 96, 8, c6);
}

/* grouped_tma.cu's three GEMMs on groups of cnt[e] rows against the CPU
 * reference (computed once), in both configurations (1 and 3), on the full
 * grid and on grids of 3 and 7 blocks (each block then walks many tiles:
 * stage phases wrap within and across tiles, the weight gradient's snake
 * turns);
 * max_rows is extra rows above the true count (the last row tile's A rows
 * then come through the cp.async path).  Outputs poisoned with NaN;
 * tolerances as for the other grouped kernels: 1e-2 for the bf16 outputs,
 * 1e-4 for the fp32 weight gradient, added onto random values and stored
 * (into NaN: every element written, zeros for experts without rows). */
static void grouped_tma_case(int E, int In, int Out, const int *cnt, int extra)
{
	int32_t *off = malloc((E + 1) * 4);
	off[0] = 0;
	for (int e = 0; e < E; e++)
		off[e + 1] = off[e] + cnt[e];
	int M = off[E];
	float *x = rand_bf((size_t)M * In, 1.f), *w = rand_bf((size_t)E * Out * In, 1.f);
	float *dout = rand_bf((size_t)M * Out, 1.f);
	float *out = malloc((size_t)M * Out * 4 + 4), *dx = malloc((size_t)M * In * 4 + 4);
	size_t nw = (size_t)E * Out * In;
	float *dw0 = rand_bf(nw, 1.f), *dwa = malloc(nw * 4), *dws = calloc(nw, 4);
	memcpy(dwa, dw0, nw * 4);
	moe_grouped_linear_fwd(out, x, w, off, E, In, Out);
	moe_grouped_linear_bwd(dx, dwa, dout, x, w, off, E, In, Out);
	moe_grouped_linear_bwd(NULL, dws, dout, x, w, off, E, In, Out);
	bf16_t *gx = up_bf(x, (size_t)M * In), *gw = up_bf(w, (size_t)E * Out * In), *gdo = up_bf(dout, (size_t)M * Out);
	bf16_t *go = dmalloc((size_t)M * Out * 2 + 2), *gdx = dmalloc((size_t)M * In * 2 + 2);
	float *gdw = dmalloc(nw * 4);
	int32_t *goff = up(off, (E + 1) * 4);
	for (int cfg = 1; cfg <= 3; cfg += 2)
		for (int grid = 0; grid <= 7; grid += grid ? 4 : 3) {
			moe_cuda_grouped_tma_config(cfg, grid);
			cudaMemset(go, 0xff, (size_t)M * Out * 2 + 2);
			cudaMemset(gdx, 0xff, (size_t)M * In * 2 + 2);
			LAUNCH_OK(moe_cuda_grouped_tma_fwd(go, gx, gw, goff, M + extra, E, In, Out, S, &gerr));
			LAUNCH_OK(moe_cuda_grouped_tma_dgrad(gdx, gdo, gw, goff, M + extra, E, In, Out, S, &gerr));
			char what[96];
			snprintf(what, sizeof(what), "tma fwd E=%d In=%d Out=%d config %d grid %d", E, In, Out, cfg, grid);
			CHECK_REL(down_bf(go, (size_t)M * Out), out, (size_t)M * Out, 1e-2, what);
			snprintf(what, sizeof(what), "tma dgrad E=%d In=%d Out=%d config %d grid %d", E, In, Out, cfg,
				 grid);
			CHECK_REL(down_bf(gdx, (size_t)M * In), dx, (size_t)M * In, 1e-2, what);
			cudaMemcpy(gdw, dw0, nw * 4, cudaMemcpyHostToDevice);
			LAUNCH_OK(moe_cuda_grouped_tma_wgrad_store(gdw, gdo, gx, goff, E, In, Out, false, S, &gerr));
			snprintf(what, sizeof(what), "tma wgrad += E=%d In=%d Out=%d config %d grid %d", E, In, Out, cfg,
				 grid);
			CHECK_REL(down(gdw, nw * 4), dwa, nw, 1e-4, what);
			cudaMemset(gdw, 0xff, nw * 4);
			LAUNCH_OK(moe_cuda_grouped_tma_wgrad_store(gdw, gdo, gx, goff, E, In, Out, true, S, &gerr));
			float *got = down(gdw, nw * 4);
			snprintf(what, sizeof(what), "tma wgrad store E=%d In=%d Out=%d config %d grid %d", E, In, Out,
				 cfg, grid);
			check_all_written(got, nw, what);
			CHECK_REL(got, dws, nw, 1e-4, what);
			free(got);
		}
	moe_cuda_grouped_tma_config(0, 0);
	cudaFree(gdw);
	free(dw0);
	free(dwa);
	free(dws);
	cudaFree(gx);
	cudaFree(gw);
	cudaFree(gdo);
	cudaFree(go);
	cudaFree(gdx);
	cudaFree(goff);
	free(off);
	free(x);
	free(w);
	free(dout);
	free(out);
	free(dx);
}

/* Empty experts (first and last too), one-row experts, row tails, column
 * tiles ending inside a 64-wide block, reductions not a multiple of 64 (In,
 * Out multiples of 8 only), the seed-base shapes imbalanced. */
Test(kernels, grouped_tma, .timeout = 120)
{
	NEED_GPU();
	if (!moe_cuda_grouped_tma_supported())
		cr_skip_test("not an sm_90 device, or no tensor maps");
	rng_seed(14);
	int c1[6] = {0, 1, 130, 257, 0, 64};
	grouped_tma_case(6, 128, 256, c1, 77);
	int c2[5] = {3, 200, 17, 0, 129};
	grouped_tma_case(5, 72, 40, c2, 0); /* partial tiles in every dimension */
	int c3[5] = {70, 0, 191, 64, 0};
	grouped_tma_case(5, 200, 328, c3, 300); /* columns end inside a 64-wide block */
	int c4[8];
	for (int e = 0; e < 8; e++)
		c4[e] = e == 2 ? 0 : e == 5 ? 900 : (int)(rng_u64() % 400);
	grouped_tma_case(8, 768, 1280, c4, 77); /* seed-base gate_up, imbalanced */
	grouped_tma_case(8, 640, 768, c4, 0);   /* seed-base down */
	int c5[3] = {1, 2, 5};
	grouped_tma_case(3, 24, 16, c5, 1000); /* everything inside one tile, past offsets[E] */
	int c6[4] = {128, 256, 0, 384};
	grouped_tma_case(4, 136, 264, c6, 0); /* full row tiles only, up to offsets[E] */
	/* many experts, equal counts (ties in the weight gradient's order),
	 * empty ones, 64-row blocks inside and across 128- and 256-row tiles */
	int c7[37];
	const int pick[8] = {0, 1, 63, 64, 65, 192, 256, 300};
	for (int e = 0; e < 37; e++)
		c7[e] = pick[rng_u64() % 8];
	grouped_tma_case(37, 136, 264, c7, 5);
	int fb = moe_cuda_grouped_tma_config(0, 0);
	cr_expect(fb == 0, "%d launches fell back to the wgmma kernels", fb);
}

/* The weight gradient stored with its epilogue's sums of squares
 * (moe_cuda_grouped_tma_wgrad_ssq, the clip norm's input on CUDA): for
 * both configurations on the full grid and on 3 blocks, dw bit-identical
 * to moe_cuda_grouped_tma_wgrad_store's; the slots' total (summed on the
 * device in double by moe_cuda_sumsq_add_segs) against the read-back dw's
 * sum of squares on the host in long double, and against the read path
 * (moe_cuda_sumsq), both within relative 1e-6: the epilogue sums 16 squares
 * a thread in fp32 before going to double, which bounds its relative error
 * by 16 * 2^-24 = 9.5e-7 (the double parts add ~1e-16).  The slots are
 * poisoned with NaN first (each must be written, experts without rows
 * too) and must be bit-identical on a second launch (no atomics). */
static void tma_ssq_case(int E, int In, int Out, const int *cnt)
{
	int32_t *off = malloc((E + 1) * 4);
	off[0] = 0;
	for (int e = 0; e < E; e++)
		off[e + 1] = off[e] + cnt[e];
	int M = off[E];
	size_t nw = (size_t)E * Out * In, cap = moe_cuda_grouped_tma_ssq_cap(E, In, Out);
	float *x = rand_bf((size_t)M * In + 1, 1.f), *dout = rand_bf((size_t)M * Out + 1, 1.f);
	bf16_t *gx = up_bf(x, (size_t)M * In + 1), *gdo = up_bf(dout, (size_t)M * Out + 1);
	int32_t *goff = up(off, (E + 1) * 4);
	float *gdw = dmalloc(nw * 4), *gref = dmalloc(nw * 4);
	double *gss = dmalloc(cap * 8), *acc = dmalloc(8);
	void *sc = dmalloc(moe_cuda_sumsq_scratch(nw));
	double worst = 0, worst_read = 0;
	for (int cfg = 1; cfg <= 3; cfg += 2)
		for (int grid = 0; grid <= 3; grid += 3) {
			char what[96];
			snprintf(what, sizeof what, "tma wgrad ssq E=%d In=%d Out=%d config %d grid %d", E, In, Out, cfg,
				 grid);
			moe_cuda_grouped_tma_config(cfg, grid);
			LAUNCH_OK(moe_cuda_grouped_tma_wgrad_store(gref, gdo, gx, goff, E, In, Out, true, S, &gerr));
			double *first = NULL;
			for (int rep = 0; rep < 2; rep++) {
				size_t ns = 0;
				cudaMemset(gdw, 0xff, nw * 4);
				cudaMemset(gss, 0xff, cap * 8);
				LAUNCH_OK(moe_cuda_grouped_tma_wgrad_ssq(gdw, gdo, gx, goff, E, In, Out, gss, &ns, S, &gerr));
				cr_assert(ns > 0 && ns <= cap, "%s: %zu slots written (room for %zu)", what, ns, cap);
				float *got = down(gdw, nw * 4), *ref = down(gref, nw * 4);
				cr_expect(memcmp(got, ref, nw * 4) == 0, "%s: dw differs from the plain store", what);
				long double hs = 0;
				for (size_t i = 0; i < nw; i++)
					hs += (long double)got[i] * got[i];
				/* stored over garbage (store), then added to it */
				struct moe_cuda_ssq_segs sg = {.p = {gss}, .n = {ns}, .count = 1, .store = 1};
				cudaMemset(acc, 0xff, 8);
				LAUNCH_OK(moe_cuda_sumsq_add_segs(acc, &sg, S, &gerr));
				sg.store = 0;
				LAUNCH_OK(moe_cuda_sumsq_add_segs(acc, &sg, S, &gerr));
				double *d2 = down(acc, 8), twice = *d2;
				free(d2);
				cudaMemset(acc, 0xff, 8);
				sg.store = 1;
				LAUNCH_OK(moe_cuda_sumsq_add_segs(acc, &sg, S, &gerr));
				double *d = down(acc, 8), epi = *d;
				free(d);
				LAUNCH_OK(moe_cuda_sumsq(acc, sc, gdw, nw, S, &gerr));
				d = down(acc, 8);
				double rd = *d, rel = fabs(epi - (double)hs) / (double)hs, relr = fabs(epi - rd) / rd;
				free(d);
				cr_expect(rel <= 1e-6, "%s: epilogue sum %.17g vs host %.17Lg (relative %.3g)", what, epi, hs,
					  rel);
				cr_expect(relr <= 1e-6, "%s: epilogue sum %.17g vs moe_cuda_sumsq %.17g", what, epi, rd);
				cr_expect(twice == 2 * epi, "%s: a batch added to its stored sum %.17g, not twice "
					  "%.17g", what, twice, epi);
				worst = fmax(worst, rel);
				worst_read = fmax(worst_read, fabs(rd - (double)hs) / (double)hs);
				double *slots = down(gss, ns * 8);
				if (!first)
					first = slots;
				else {
					cr_expect(memcmp(first, slots, ns * 8) == 0, "%s: slots differ between two launches",
						  what);
					free(slots);
				}
				free(got);
				free(ref);
			}
			free(first);
		}
	cr_log_info("tma wgrad ssq E=%d In=%d Out=%d: epilogue sums within %.3g of the host's (read path %.3g)", E,
		    In, Out, worst, worst_read);
	fprintf(stderr, "tma wgrad ssq E=%d In=%d Out=%d rows %d: epilogue sum relative error %.3g (read path %.3g)\n",
		E, In, Out, M, worst, worst_read);
	moe_cuda_grouped_tma_config(0, 0);
	cudaFree(gdw);
	cudaFree(gref);
	cudaFree(gss);
	cudaFree(acc);
	cudaFree(sc);
	cudaFree(gx);
	cudaFree(gdo);
	cudaFree(goff);
	free(off);
	free(x);
	free(dout);
}

/* Fresh random routing: empty experts (first and last among them), uneven
 * counts, one-row experts, partial tiles in both of W's dimensions (the
 * clipped part must not count), the seed-base shapes. */
Test(kernels, grouped_tma_wgrad_ssq, .timeout = 120)
{
	NEED_GPU();
	if (!moe_cuda_grouped_tma_supported())
		cr_skip_test("not an sm_90 device, or no tensor maps");
	rng_seed(61);
	int c1[6] = {0, 1, 130, 257, 0, 64};
	tma_ssq_case(6, 128, 256, c1);
	int c2[5] = {3, 200, 17, 0, 129};
	tma_ssq_case(5, 72, 40, c2);
	int c3[7];
	for (int e = 0; e < 7; e++)
		c3[e] = e == 6 ? 0 : (int)(rng_u64() % 300);
	tma_ssq_case(7, 200, 328, c3);
	int c4[16];
	for (int e = 0; e < 16; e++)
		c4[e] = e % 5 == 2 ? 0 : e == 7 ? 1 : (int)(rng_u64() % 700);
	tma_ssq_case(16, 768, 1280, c4); /* seed-base gate_up */
	tma_ssq_case(16, 640, 768, c4);  /* seed-base down */
	int fb = moe_cuda_grouped_tma_config(0, 0);
	cr_expect(fb == 0, "%d launches fell back to the wgmma kernels", fb);
}

