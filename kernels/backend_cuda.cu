/*
 * The CUDA backend of lib/model (struct moe_backend): one device, one stream,
 * bf16 activations, fp32 master weights, fp32 gradients and optimizer state,
 * a bf16 compute copy of the weights.  Every op enqueues kernels from kernels/
 * and never synchronises, except those whose results go to the host (xent,
 * zloss with a loss, sumsq, to_host) and grouped GEMMs whose row count was not
 * announced by route_group.  The first error is kept (sticky) and returned by
 * sync().
 *
 * Profiling: with MOE_CUDA_PROFILE=1 in the environment, each op is timed
 * with CUDA events; moe_cuda_profile_report() prints the totals.
 * Expert GEMMs (MOE_CUDA_GROUPED), measured in tests/bench/RESULTS-cuda.md:
 *   "tma" (default on sm_90, the fastest: tests/bench/RESULTS-tma.md): the
 *       Hopper kernels of grouped_tma.cu (TMA loads and stores, warp
 *       specialisation, persistent grid) for all three, no synchronisation;
 *       "tma-fd" for the forward and input gradient only;
 *   "wgmma": the Hopper kernels of grouped_wgmma.cu for all three;
 *   "cublas-grouped" (default elsewhere): cublasGemmGroupedBatchedEx for
 *       the forward and input-gradient GEMMs (offsets read back to the host
 *       once per routing: model.c reads that layer's statistics back anyway)
 *       and the device-driven kernel of grouped_gemm.cu for the weight
 *       gradients (fp32 +=, which cuBLAS's grouped GEMM does not offer;
 *       MOE_CUDA_WGRAD=cublas does them expert by expert instead; a padded
 *       strided-batched cuBLAS variant measured the same and was dropped);
 *   "kernel": the device-driven kernel for all three, no synchronisation;
 *   "cublas": a loop of per-expert cuBLAS GEMMs.
 * The attention block (MOE_CUDA_QKV, default packed): the model keeps q,
 * k, v in rows of 3 D and the attention_qknorm_fwd / _bwd ops read and
 * write them there (QK-norm at a row stride, v and dv at the attention's
 * ldv), so each way is one GEMM; the query's QK-norm backward reads fa3f's
 * fp32 dQ tiles instead of a converted dq (MOE_CUDA_DQ_FUSE, default 1).
 * Shared experts (MOE_CUDA_SHARED_MERGE, default 1): copy_rows gathers
 * their down weights side by side each step, so the model runs all of them
 * as one linear each way (session 11, H100, tests/bench/RESULTS-cuda.md:
 * the three together 158.1-159.4 ms a step against 162.0-162.4).
 * Router (router_merge_ok, MOE_CUDA_ROUTER_MERGE, default 1): its weights
 * lie just before the shared experts', so the model runs its linear and
 * their gate_up as one each way; its kernels read the logits and write
 * dlogits in place at that row stride (the router's ops take a row stride
 * in every backend), and its forward sums the z-loss's value.
 * Routed experts' backward (expert_combine_down_bwd, MOE_CUDA_YG, default
 * free): no expert outputs yg are kept; dout's rows are gathered unweighted
 * with the gate weights in expert order, and swiglu_bwd_rows applies the
 * weights and takes their gradient as dh . h; the model keeps each layer's
 * gathered rows xg instead (the same memory), so the gate_up backward does
 * not gather again (session 12, H100: both 156.0-157.0 ms a step against
 * 160.0, tests/bench/RESULTS-cuda.md).
 * Host round trips (session 13): the clip norms' sums of squares are
 * queued and launched together at the sync (MOE_CUDA_SUMSQ_BATCH, default
 * 1), the deferred results' slots are stored by their kernels (no
 * memsets), small uploads go through pinned buffers without waiting, and
 * to_host_later's read-backs (the routing statistics) share the forward's
 * one synchronisation.
 * Clip norms (sumsq, MOE_CUDA_SUMSQ_EPI, default 1): with "tma" and
 * gradients by overwrite the routed experts' weight gradients come with
 * their epilogues' per-tile sums of squares, and o_sumsq sums those instead
 * of reading the 90% of the gradients they cover (0 reads everything;
 * session 6, H100: 2.88 -> 0.81 ms a step, 169.4-169.8 against 171.4-171.5
 * ms; tests/bench/RESULTS-tma.md).
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cuda.h>
#include <cudaTypedefs.h>

#include "cuda_common.h"
#include "kernels.h"

extern "C" {
#include "model/model.h"
}

#define N_ROUTES 256
#define N_PROF 48
#define N_STALE 64
#define N_PACKED 128 /* packed master ranges (masters_pack) */
#define N_OSPAN 256  /* AdamW spans on the optimizer stream in one step */
#define N_CLEARED 512
#define N_STAGE 4                /* pinned upload buffers, used in turn */
#define N_LATER 16               /* read-backs waiting for the next sync */
#define STAGE_BYTES (1 << 20)    /* uploads of fp32 / int32 up to this go through them */

/* MOE_CUDA_GROUPED=wgmma: grouped_wgmma.cu's Hopper kernels for all three
 * expert GEMMs (no synchronisation); MOE_CUDA_WGRAD=wgmma: its weight
 * gradient beside cuBLAS grouped fwd/dgrad */
enum { GM_KERNEL, GM_CUBLAS_GROUPED, GM_CUBLAS_LOOP, GM_WGMMA };
enum { WG_KERNEL, WG_LOOP, WG_WGMMA };
/* scratch buffers, grown on demand */
enum { S_GROUP, S_STATS, S_DELTA, S_INV, S_SUMSQ, S_LOSS, S_DET, S_QKV, S_WG, N_SCRATCH };

struct prof_ent {
	const char *name;
	double ms;
	long calls;
};

#define N_PEND 1024
struct pending {
	double *d;   /* host: dres[2k] * mul */
	int64_t *i;  /* host: dres[2k + 1] */
	double mul;
};

struct alloc_ent {
	void *p;
	size_t bytes;
};

/* A gradient region [p, p + n) and the epilogue's sums of squares of its
 * stored values (part: cap doubles on the device, nparts of them written);
 * valid until the region changes otherwise. */
#define N_SSQ 256
struct ssq_rec {
	const float *p;
	size_t n;
	double *part;
	size_t cap, nparts;
	bool valid;
};

struct cuda_ctx {
	cudaStream_t s;
	struct moe_cuda_blas *blas;
	float *p32, *g32; /* (n) */
	/* p32 in chunks of mapped virtual memory (p32_alloc; NULL: one
	 * cudaMalloc): p32_h[i] the physical memory of chunk i, 0 once
	 * released (b_masters_pack: the upper halves of packed ranges) */
	unsigned long long *p32_h;
	size_t p32_chunk, p32_nch;
	bf16_t *p16;      /* (n) */
	size_t n;
	/* ranges of masters changed since the compute copy was refreshed
	 * (AdamW refreshes its own range; stale_all: everything) */
	size_t stale_lo[N_STALE], stale_hi[N_STALE];
	int n_stale, stale_all;
	/* packed masters (masters_pack): [pk_lo, pk_hi) kept as the compute
	 * copy and the masters' low halves, those in the first half of the
	 * range's own fp32 storage (moe_cuda_adamw_packed: 2 bytes a parameter
	 * less to move); MOE_CUDA_PACKED_MASTERS=0: none (comparisons) */
	size_t pk_lo[N_PACKED], pk_hi[N_PACKED];
	int n_packed, pack_off;
	/* the optimizer stream (MOE_CUDA_OPT_STREAM=0: none; none with
	 * MOE_CUDA_PROFILE): a step's AdamW spans run on so, at a lower
	 * priority, beside the next forward.  ev_span[k] marks span k done, its
	 * parameters elements [os_lo, os_hi); the main stream waits for spans up
	 * to k when the forward asks for a compute copy in span k (b_param), and
	 * for all of them (want_all, at the next op; at once for transfers and
	 * frees) after any other access to the parameters, gradients or state. */
	cudaStream_t so;
	cudaEvent_t ev_main, ev_span[N_OSPAN];
	size_t os_lo[N_OSPAN], os_hi[N_OSPAN];
	const float *os_m[N_OSPAN], *os_v[N_OSPAN];
	int n_ospan, n_owaited, want_all;
	int rc;                /* first error, sticky */
	struct moe_error err;
	void *scratch[N_SCRATCH];
	size_t scratch_size[N_SCRATCH];
	/* rope table */
	float *cosb, *sinb;
	int rope_T, rope_Dh;
	float rope_theta;
	/* offsets pointer -> rows, announced by route_group */
	const int32_t *route_off[N_ROUTES];
	int route_rows[N_ROUTES];
	int route_next;
	/* (perm, inv) pairs written by route_group (K, N*K slots): a gather
	 * through a known perm runs in token order through its inv; an entry
	 * goes when either buffer is freed */
	const int32_t *rg_perm[N_ROUTES], *rg_inv[N_ROUTES];
	int rg_k[N_ROUTES], rg_nk[N_ROUTES];
	int rg_next;
	/* cuBLAS expert paths: host copies of offsets, per offsets pointer */
	int grouped_mode;   /* GM_* */
	int grouped_tma;    /* GM_WGMMA: 1 fwd and dgrad, 2 all three through grouped_tma.cu */
	int qk_split;       /* MOE_CUDA_QKNORM_ROPE=split: rmsnorm and rope as two kernels */
	int dq_fuse;        /* MOE_CUDA_DQ_FUSE=0: attention's dq converted to bf16 before the query's
			       QK-norm backward reads it (attention_qknorm_bwd) */
	int qkv_split;      /* MOE_CUDA_QKV=split: no batched linears (linear_fwd_multi, _wgrad_multi) */
	int qkv_packed;     /* MOE_CUDA_QKV unset or packed: q, k, v in rows of 3 H Dh
			       (attention_qknorm_fwd / _bwd); batched or split: three buffers */
	int yg_keep;        /* MOE_CUDA_YG=keep: no expert_combine_down_bwd (the model keeps yg, not xg) */
	int res_copy;       /* MOE_CUDA_RESGEMM=0: residual linears as a copy and a GEMM adding in place */
	int det;            /* no fp32 atomics (norm weights, embedding); MOE_CUDA_DETERMINISTIC=0: atomics */
	/* gradient regions the model cleared for this backward (model.h,
	 * grad_cleared): ops add into them without clearing them first */
	struct { const float *lo, *hi; } clr[N_CLEARED];
	int n_clr;
	int clr_off; /* MOE_CUDA_GRAD_CLEAR=0: no grad_cleared (each op clears its own) */
	/* narrow linears (the router) through the wgmma kernel as one group:
	 * narrow_ok unless MOE_CUDA_NARROW=cublas or not sm_90; one_off holds
	 * the group's offsets {0, one_rows} (one_rows 0: not set yet) */
	int narrow_ok;
	int32_t *one_off;
	int one_rows;
	int wgrad_mode;     /* GM_CUBLAS_GROUPED: WG_* */
	int32_t *hoff[N_ROUTES];
	int hoff_n[N_ROUTES];
	/* cublasGemmGroupedBatchedEx arguments */
	void **gptr;      /* device (3 * E) */
	size_t gptr_cap;
	/* scalar results delivered at the next sync (xent, zloss, sumsq): call
	 * k reduces into dres[2k], dres[2k+1]; b_sync reads them back at once */
	double *dres, *hres;           /* device, pinned host (2 * N_PEND) */
	/* small uploads (a batch's tokens and targets): copied into a pinned
	 * buffer and sent without waiting; a buffer is reused once its copy
	 * has run (its event) */
	void *stage[N_STAGE];
	cudaEvent_t stage_ev[N_STAGE];
	int stage_next;
	/* read-backs delivered at the next sync (to_host_later): copied into
	 * the pinned buffer later_buf at their place in the stream */
	char *later_buf;
	size_t later_cap, later_used;
	struct {
		void *dst;
		size_t off, bytes;
	} later[N_LATER];
	int nlater;
	struct pending pend[N_PEND];
	int npend;
	/* memory accounting */
	struct alloc_ent *al;
	size_t nal, cal;
	size_t bytes, peak_bytes;
	/* profiling */
	int prof;
	struct prof_ent pe[N_PROF];
	int npe;
	int prof_open; /* an op's events are being recorded: ops it calls are timed as part of it */
	cudaEvent_t ev[2][4096];
	int ev_op[4096];
	int nev;
	/* sumsq from the weight-gradient epilogues (MOE_CUDA_SUMSQ_EPI, default
	 * on): the gradient regions a grouped_tma.cu weight gradient stored with
	 * its per-tile sums of squares since they last changed otherwise */
	int ssq_epi;
	/* sums of squares queued by o_sumsq (MOE_CUDA_SUMSQ_BATCH, default
	 * on) and launched together by sq_flush before anything else runs */
	int sq_batch;
	struct moe_cuda_sq_batch sq;
	/* dense weight gradients of more elements than this are stored under
	 * grad_overwrite, smaller ones added into cleared memory
	 * (MOE_CUDA_WGRAD_STORE_MIN, default 4M; measurements) */
	long wgrad_store_min;
	struct ssq_rec ssq[N_SSQ];
	int n_ssq;
	size_t ssq_from_epi, ssq_read; /* floats summed each way (moe_cuda_sumsq_counts) */
	size_t dq_tiles;               /* attention_qknorm_bwd calls that read fa3f's dQ tiles */
};

#define CTX(be) ((struct cuda_ctx *)(be)->ctx)
/* Run a launcher unless an error is already recorded. */
#define RUN(c, expr)                        \
	do {                                \
		if ((c)->rc == 0)           \
			(c)->rc = (expr);   \
	} while (0)

/* ---- profiling ------------------------------------------------------------ */

static void prof_flush(struct cuda_ctx *c)
{
	if (!c->nev)
		return;
	cudaStreamSynchronize(c->s);
	for (int i = 0; i < c->nev; i++) {
		float ms = 0.f;
		cudaEventElapsedTime(&ms, c->ev[0][i], c->ev[1][i]);
		c->pe[c->ev_op[i]].ms += ms;
		c->pe[c->ev_op[i]].calls++;
	}
	c->nev = 0;
}

static void sq_flush(struct cuda_ctx *c);

/* The main stream after the optimizer stream's spans up to k (all: k =
 * n_ospan - 1); when all are waited for, the next step's spans start over. */
static void opt_wait(struct cuda_ctx *c, int k)
{
	if (k >= c->n_owaited) {
		RUN(c, CUDA_OK(cudaStreamWaitEvent(c->s, c->ev_span[k], 0), &c->err));
		c->n_owaited = k + 1;
	}
	if (c->n_owaited == c->n_ospan)
		c->n_ospan = c->n_owaited = 0;
	c->want_all = 0;
}

static void opt_wait_all(struct cuda_ctx *c)
{
	if (c->n_ospan)
		opt_wait(c, c->n_ospan - 1);
	c->want_all = 0;
}

/* Whether [p, p + bytes) meets what the optimizer stream's pending spans
 * may touch: the parameters, gradients or compute copies, or their m, v. */
static bool opt_touches(const struct cuda_ctx *c, const void *p, size_t bytes)
{
	if (c->n_owaited == c->n_ospan)
		return false;
	const char *a = (const char *)p, *e = a + bytes;
	const struct {
		const void *b;
		size_t n;
	} r[3] = {{c->p32, c->n * 4}, {c->g32, c->n * 4}, {c->p16, c->n * 2}};
	for (int i = 0; i < 3; i++)
		if (a < (const char *)r[i].b + r[i].n && e > (const char *)r[i].b)
			return true;
	for (int k = c->n_owaited; k < c->n_ospan; k++) {
		size_t nb = (c->os_hi[k] - c->os_lo[k]) * 4;
		if ((a < (const char *)c->os_m[k] + nb && e > (const char *)c->os_m[k]) ||
		    (a < (const char *)c->os_v[k] + nb && e > (const char *)c->os_v[k]))
			return true;
	}
	return false;
}

/* Every op starts here (PROF): queued sums of squares go first. */
static int prof_begin(struct cuda_ctx *c, const char *name)
{
	if (c->want_all)
		opt_wait_all(c);
	if (c->sq.nsum && strcmp(name, "sumsq"))
		sq_flush(c);
	if (!c->prof || c->prof_open)
		return -1;
	if (c->nev == 4096)
		prof_flush(c);
	int op = 0;
	while (op < c->npe && strcmp(c->pe[op].name, name))
		op++;
	if (op == c->npe) {
		if (c->npe == N_PROF)
			return -1;
		c->pe[c->npe++].name = name;
	}
	c->ev_op[c->nev] = op;
	cudaEventRecord(c->ev[0][c->nev], c->s);
	c->prof_open = 1;
	return c->nev;
}

static void prof_end(struct cuda_ctx *c, int slot)
{
	if (slot < 0)
		return;
	cudaEventRecord(c->ev[1][slot], c->s);
	c->nev++;
	c->prof_open = 0;
}

#define PROF(c, name) int prof_slot_ = prof_begin((c), (name))
#define PROF_END(c) prof_end((c), prof_slot_)

static void prof_print(struct cuda_ctx *c, FILE *fp)
{
	double total = 0;
	for (int i = 0; i < c->npe; i++)
		total += c->pe[i].ms;
	/* sorted by time, descending */
	int order[N_PROF];
	for (int i = 0; i < c->npe; i++)
		order[i] = i;
	for (int i = 1; i < c->npe; i++)
		for (int j = i; j > 0 && c->pe[order[j]].ms > c->pe[order[j - 1]].ms; j--) {
			int t = order[j];
			order[j] = order[j - 1];
			order[j - 1] = t;
		}
	fprintf(fp, "%-22s %10s %8s %7s\n", "op", "ms", "calls", "share");
	for (int k = 0; k < c->npe; k++) {
		struct prof_ent *e = &c->pe[order[k]];
		fprintf(fp, "%-22s %10.2f %8ld %6.1f%%\n", e->name, e->ms, e->calls,
			total > 0 ? 100.0 * e->ms / total : 0.0);
	}
	fprintf(fp, "%-22s %10.2f\n", "total (ops)", total);
}

extern "C" void moe_cuda_profile_report(struct moe_backend *be, FILE *fp, bool reset)
{
	struct cuda_ctx *c = CTX(be);
	prof_flush(c);
	if (fp)
		prof_print(c, fp);
	if (reset)
		for (int i = 0; i < c->npe; i++) {
			c->pe[i].ms = 0;
			c->pe[i].calls = 0;
		}
}

/* the backend's own allocations at their peak, plus the most scratch a
 * GEMM's tuning held at once (it is freed before the tuned call runs; added
 * as if it met the peak: an upper bound) */
extern "C" size_t moe_cuda_peak_bytes(struct moe_backend *be)
{
	struct cuda_ctx *c = CTX(be);
	return c->peak_bytes + (c->blas ? moe_cuda_gemm_tune_bytes(c->blas) : 0);
}

extern "C" void moe_cuda_gemm_plans(struct moe_backend *be, FILE *fp)
{
	if (CTX(be)->blas)
		moe_cuda_gemm_report(CTX(be)->blas, fp);
}

/* ---- memory ---------------------------------------------------------------- */

static size_t elt(enum moe_buf_kind k) { return k == MOE_BUF_ACT ? 2 : 4; }

/* Device allocations with a host-side table of sizes (for the peak). */
/* bytes more of device memory in use (the peak follows) */
static void bytes_taken(struct cuda_ctx *c, size_t bytes)
{
	c->bytes += bytes;
	if (c->bytes > c->peak_bytes)
		c->peak_bytes = c->bytes;
}

static void *dev_alloc(struct cuda_ctx *c, size_t bytes)
{
	void *p = NULL;
	if (bytes == 0)
		bytes = 16;
	if (c->nal == c->cal) {
		size_t cap = c->cal ? 2 * c->cal : 256;
		struct alloc_ent *t = (struct alloc_ent *)realloc(c->al, cap * sizeof(*t));
		if (!t)
			return NULL;
		c->al = t;
		c->cal = cap;
	}
	if (cudaMalloc(&p, bytes) != cudaSuccess) {
		cudaGetLastError();
		return NULL;
	}
	c->al[c->nal].p = p;
	c->al[c->nal].bytes = bytes;
	c->nal++;
	bytes_taken(c, bytes);
	return p;
}

static void dev_free(struct cuda_ctx *c, void *p)
{
	if (!p)
		return;
	for (int i = 0; i < N_ROUTES; i++) /* route_group's (perm, inv) pairs */
		if (c->rg_perm[i] == p || c->rg_inv[i] == p)
			c->rg_perm[i] = c->rg_inv[i] = NULL;
	for (size_t i = c->nal; i-- > 0;)
		if (c->al[i].p == p) {
			c->bytes -= c->al[i].bytes;
			c->al[i] = c->al[--c->nal];
			break;
		}
	cudaFree(p);
}

static void *scratch(struct cuda_ctx *c, int i, size_t bytes)
{
	if (c->scratch_size[i] >= bytes && c->scratch[i])
		return c->scratch[i];
	if (c->scratch[i]) { /* the stream may still read it */
		cudaStreamSynchronize(c->s);
		dev_free(c, c->scratch[i]);
	}
	c->scratch[i] = dev_alloc(c, bytes);
	c->scratch_size[i] = c->scratch[i] ? bytes : 0;
	if (!c->scratch[i] && c->rc == 0)
		c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of device memory (%zu bytes of scratch)",
				      bytes);
	return c->scratch[i];
}

/* ---- sums of squares from the weight-gradient epilogues ---------------------- */

/* The records whose region [p, p + bytes) overlaps are no longer valid
 * (the region changed other than by their epilogue) */
static void ssq_forget(struct cuda_ctx *c, const void *p, size_t bytes)
{
	const char *a = (const char *)p;
	for (int i = 0; i < c->n_ssq; i++) {
		struct ssq_rec *r = &c->ssq[i];
		const char *r0 = (const char *)r->p;
		if (r->valid && a < r0 + r->n * 4 && r0 < a + bytes)
			r->valid = false;
	}
}

static void ssq_forget_all(struct cuda_ctx *c)
{
	for (int i = 0; i < c->n_ssq; i++)
		c->ssq[i].valid = false;
}

/* The record of region [p, p + n) with room for cap partials (its buffer
 * kept from earlier steps, grown on demand), not yet valid; NULL when the
 * table is full or out of memory (the caller stores without partials). */
static struct ssq_rec *ssq_slot(struct cuda_ctx *c, const float *p, size_t n, size_t cap)
{
	struct ssq_rec *r = NULL;
	for (int i = 0; i < c->n_ssq && !r; i++)
		if (c->ssq[i].p == p)
			r = &c->ssq[i];
	if (!r) {
		if (c->n_ssq == N_SSQ)
			return NULL;
		r = &c->ssq[c->n_ssq++];
		memset(r, 0, sizeof *r);
		r->p = p;
	}
	r->valid = false;
	r->n = n;
	if (r->cap < cap) {
		if (r->part) { /* the stream may still read it */
			cudaStreamSynchronize(c->s);
			dev_free(c, r->part);
		}
		r->part = (double *)dev_alloc(c, cap * sizeof(double));
		r->cap = r->part ? cap : 0;
		if (!r->part)
			return NULL;
	}
	return r;
}

/* The first packed master range meeting elements [lo, hi), or -1. */
static int packed_meet(const struct cuda_ctx *c, size_t lo, size_t hi)
{
	int f = -1;
	for (int r = 0; r < c->n_packed; r++)
		if (c->pk_lo[r] < hi && lo < c->pk_hi[r] && (f < 0 || c->pk_lo[r] < c->pk_lo[f]))
			f = r;
	return f;
}

/* The element range of the masters that [p, p + bytes) meets: false when it
 * meets none. */
static bool master_elems(const struct cuda_ctx *c, const void *p, size_t bytes, size_t *lo, size_t *hi)
{
	const char *a = (const char *)p, *b0 = (const char *)c->p32, *b1 = (const char *)(c->p32 + c->n);
	if (!c->p32 || a >= b1 || a + bytes <= b0)
		return false;
	*lo = (size_t)((a < b0 ? b0 : a) - b0) / 4;
	*hi = (size_t)(((a + bytes > b1 ? b1 : a + bytes) - b0) + 3) / 4;
	return true;
}

/* The packed range [p, p + bytes) meets first, or -1; *lo, *hi (hi may be
 * NULL): the master elements [lo, hi) it covers. */
static int packed_hit(const struct cuda_ctx *c, const void *p, size_t bytes, size_t *lo, size_t *hi = NULL)
{
	size_t h;
	if (!master_elems(c, p, bytes, lo, &h))
		return -1;
	if (hi)
		*hi = h;
	return packed_meet(c, *lo, h);
}

/* The low halves of packed range r from element off on */
static uint16_t *packed_low(struct cuda_ctx *c, int r, size_t off)
{
	return (uint16_t *)(c->p32 + c->pk_lo[r]) + (off - c->pk_lo[r]);
}

/* An error for an access to packed masters that only adamw, to_host and
 * from_host may make. */
static void packed_misuse(struct cuda_ctx *c, const char *what, size_t off)
{
	if (c->rc == 0)
		c->rc = moe_error_set(&c->err, MOE_EINVAL, "cuda: %s packed masters (parameter offset %zu)", what, off);
}

static void mark_stale(struct cuda_ctx *c, const void *p, size_t bytes);

#define PACK_CHUNK ((size_t)8 << 20) /* elements a packing or unpacking goes through at once */

/* Packed range r's masters [off, e) from the fp32 values at src, on the host
 * or the device, through tmp (PACK_CHUNK floats) a chunk at a time.  src
 * may be the range's own fp32 storage from its start: chunk k's low halves
 * end at element (k + 1) C / 2 <= k C, among those already copied out. */
static void pack_chunks(struct cuda_ctx *c, int r, size_t off, size_t e, const float *src, float *tmp)
{
	for (size_t k = off; k < e && c->rc == 0; k += PACK_CHUNK) {
		size_t m = e - k < PACK_CHUNK ? e - k : PACK_CHUNK;
		RUN(c, CUDA_OK(cudaMemcpyAsync(tmp, src + (k - off), m * 4, cudaMemcpyDefault, c->s), &c->err));
		RUN(c, moe_cuda_masters_pack(c->p16 + k, packed_low(c, r, k), tmp, m, c->s, &c->err));
	}
}

/* Masters [off, off + n) to or from the host (to: dst, from: src), the
 * packed ranges through a temporary fp32 buffer; synchronous. */
static void masters_host(struct cuda_ctx *c, size_t off, size_t n, float *dst, const float *src)
{
	float *tmp = NULL;
	const size_t off0 = off, end = off + n;
	while (off < end && c->rc == 0) {
		int r = packed_meet(c, off, end);
		size_t stop = r < 0 ? end : c->pk_lo[r] > off ? c->pk_lo[r] : off;
		if (stop > off) { /* plain fp32 */
			if (dst)
				RUN(c, CUDA_OK(cudaMemcpyAsync(dst + (off - off0), c->p32 + off, (stop - off) * 4,
							       cudaMemcpyDeviceToHost, c->s), &c->err));
			else {
				mark_stale(c, c->p32 + off, (stop - off) * 4);
				RUN(c, CUDA_OK(cudaMemcpyAsync(c->p32 + off, src + (off - off0), (stop - off) * 4,
							       cudaMemcpyHostToDevice, c->s), &c->err));
			}
			off = stop;
			continue;
		}
		if (!tmp && !(tmp = (float *)dev_alloc(c, PACK_CHUNK * 4))) {
			c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of device memory (unpacking masters)");
			break;
		}
		size_t e = end < c->pk_hi[r] ? end : c->pk_hi[r];
		if (src)
			pack_chunks(c, r, off, e, src + (off - off0), tmp);
		for (size_t k = off; dst && k < e && c->rc == 0; k += PACK_CHUNK) {
			size_t m = e - k < PACK_CHUNK ? e - k : PACK_CHUNK;
			RUN(c, moe_cuda_masters_unpack(tmp, c->p16 + k, packed_low(c, r, k), m, c->s, &c->err));
			RUN(c, CUDA_OK(cudaMemcpyAsync(dst + (k - off0), tmp, m * 4, cudaMemcpyDeviceToHost, c->s), &c->err));
		}
		off = e;
	}
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	dev_free(c, tmp);
}

/* Note a write to device memory [p, p + bytes): if it hits the masters, the
 * compute copy of that range is stale; if it hits a gradient region with
 * epilogue sums of squares, they are. */
static void mark_stale(struct cuda_ctx *c, const void *p, size_t bytes)
{
	ssq_forget(c, p, bytes);
	size_t lo, hi;
	if (!master_elems(c, p, bytes, &lo, &hi))
		return;
	int r = packed_meet(c, lo, hi);
	if (r >= 0) {
		packed_misuse(c, "a write to", lo > c->pk_lo[r] ? lo : c->pk_lo[r]);
		return;
	}
	for (int i = 0; i < c->n_stale; i++)
		if (lo <= c->stale_hi[i] && hi >= c->stale_lo[i]) {
			c->stale_lo[i] = lo < c->stale_lo[i] ? lo : c->stale_lo[i];
			c->stale_hi[i] = hi > c->stale_hi[i] ? hi : c->stale_hi[i];
			return;
		}
	if (c->n_stale == N_STALE) {
		c->stale_all = 1;
		return;
	}
	c->stale_lo[c->n_stale] = lo;
	c->stale_hi[c->n_stale] = hi;
	c->n_stale++;
}

static void *b_alloc(struct moe_backend *be, size_t n, enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	void *p = dev_alloc(c, n * elt(kind));
	if (p && cudaMemsetAsync(p, 0, n * elt(kind), c->s) != cudaSuccess) {
		dev_free(c, p);
		return NULL;
	}
	return p;
}

/* ---- the masters' storage in chunks of virtual memory ------------------
 * p32 lies in a reserved address range mapped chunk by chunk through the
 * driver's virtual memory management, so that the chunks that packed
 * masters leave unused (the upper half of each packed range's fp32
 * storage) go back to the device (p32_release); where the driver offers
 * none of it, or with MOE_CUDA_VMM=0, one cudaMalloc as before (nothing
 * returned).  The driver's entry points through the runtime (no link
 * against libcuda), as wgmma.cuh's tensor-map encoder. */
struct vmm_api {
	PFN_cuMemGetAllocationGranularity_v10020 gran;
	PFN_cuMemAddressReserve_v10020 reserve;
	PFN_cuMemAddressFree_v10020 vfree;
	PFN_cuMemCreate_v10020 create;
	PFN_cuMemRelease_v10020 release;
	PFN_cuMemMap_v10020 map;
	PFN_cuMemUnmap_v10020 unmap;
	PFN_cuMemSetAccess_v10020 access;
};

static const struct vmm_api *vmm_api(void)
{
	static struct vmm_api f;
	static int ok = -1;
	if (ok < 0) {
		const char *names[8] = {"cuMemGetAllocationGranularity", "cuMemAddressReserve", "cuMemAddressFree",
					"cuMemCreate", "cuMemRelease", "cuMemMap", "cuMemUnmap", "cuMemSetAccess"};
		void **slots[8] = {(void **)&f.gran, (void **)&f.reserve, (void **)&f.vfree, (void **)&f.create,
				   (void **)&f.release, (void **)&f.map, (void **)&f.unmap, (void **)&f.access};
		ok = 1;
		for (int i = 0; ok && i < 8; i++) {
			cudaDriverEntryPointQueryResult q;
			if (cudaGetDriverEntryPointByVersion(names[i], slots[i], 10020, cudaEnableDefault, &q) !=
				    cudaSuccess ||
			    q != cudaDriverEntryPointSuccess || !*slots[i]) {
				cudaGetLastError();
				ok = 0;
			}
		}
	}
	return ok ? &f : NULL;
}

/* Bytes a chunk: 32 MiB, or MOE_CUDA_VMM_CHUNK_MB (tests: smaller models);
 * a multiple of the driver's granularity g, else g */
static size_t p32_chunk_bytes(size_t g)
{
	long mb = 32;
	if (!env_long("MOE_CUDA_VMM_CHUNK_MB", 32, 1, 1 << 20, &mb))
		mb = 32;
	size_t b = (size_t)mb << 20;
	return b % g ? g : b;
}

/* Chunk i's mapping and memory gone (it must be live) */
static void p32_drop(struct cuda_ctx *c, const struct vmm_api *v, size_t i)
{
	v->unmap((CUdeviceptr)c->p32 + i * c->p32_chunk, c->p32_chunk);
	v->release((CUmemGenericAllocationHandle)c->p32_h[i]);
	c->p32_h[i] = 0;
	c->bytes -= c->p32_chunk;
}

static void p32_free(struct cuda_ctx *c)
{
	const struct vmm_api *v = vmm_api();
	if (!c->p32_h || !v) {
		dev_free(c, c->p32);
		c->p32 = NULL;
		return;
	}
	for (size_t i = 0; i < c->p32_nch; i++)
		if (c->p32_h[i])
			p32_drop(c, v, i);
	v->vfree((CUdeviceptr)c->p32, c->p32_nch * c->p32_chunk);
	free(c->p32_h);
	c->p32_h = NULL;
	c->p32 = NULL;
}

/* p32 for n masters, zeroed: mapped chunks where the driver can, else
 * b_alloc's; false when out of memory */
static bool p32_alloc(struct moe_backend *be, size_t n)
{
	struct cuda_ctx *c = CTX(be);
	const struct vmm_api *v = vmm_api();
	int dev = 0;
	size_t g = 0;
	CUmemAllocationProp prop = {};
	prop.type = CU_MEM_ALLOCATION_TYPE_PINNED;
	prop.location.type = CU_MEM_LOCATION_TYPE_DEVICE;
	if (v && !env_is("MOE_CUDA_VMM", "0") && cudaGetDevice(&dev) == cudaSuccess) {
		prop.location.id = dev;
		if (v->gran(&g, &prop, CU_MEM_ALLOC_GRANULARITY_MINIMUM) != CUDA_SUCCESS)
			g = 0;
	}
	if (!g)
		return (c->p32 = (float *)b_alloc(be, n, MOE_BUF_F32)) != NULL;
	const size_t bytes = n ? n * 4 : 16, ch = p32_chunk_bytes(g), nch = (bytes + ch - 1) / ch;
	CUdeviceptr va = 0;
	if (v->reserve(&va, nch * ch, 0, 0, 0) != CUDA_SUCCESS)
		return false;
	c->p32 = (float *)va;
	c->p32_chunk = ch;
	c->p32_nch = nch;
	if (!(c->p32_h = (unsigned long long *)calloc(nch, sizeof(*c->p32_h)))) {
		v->vfree(va, nch * ch);
		c->p32 = NULL;
		return false;
	}
	CUmemAccessDesc acc = {};
	acc.location = prop.location;
	acc.flags = CU_MEM_ACCESS_FLAGS_PROT_READWRITE;
	size_t i = 0;
	for (; i < nch; i++) { /* a chunk counts once mapped (p32_free unmaps it) */
		CUmemGenericAllocationHandle h = 0;
		CUdeviceptr at = va + i * ch;
		if (v->create(&h, ch, &prop, 0) != CUDA_SUCCESS)
			break;
		if (v->map(at, ch, 0, h, 0) != CUDA_SUCCESS) {
			v->release(h);
			break;
		}
		c->p32_h[i] = (unsigned long long)h;
		bytes_taken(c, ch);
		if (v->access(at, ch, &acc, 1) != CUDA_SUCCESS)
			break;
	}
	if (i < nch) {
		p32_free(c);
		return false;
	}
	return cudaMemsetAsync(c->p32, 0, bytes, c->s) == cudaSuccess;
}

/* The chunks wholly inside packed range r's unused upper half go back to
 * the device (no stream may still touch them) */
static void p32_release(struct cuda_ctx *c, int r)
{
	const struct vmm_api *v = vmm_api();
	if (!c->p32_h || !v)
		return;
	size_t a = c->pk_lo[r] * 4 + (c->pk_hi[r] - c->pk_lo[r]) * 2, b = c->pk_hi[r] * 4;
	for (size_t i = (a + c->p32_chunk - 1) / c->p32_chunk; (i + 1) * c->p32_chunk <= b; i++)
		if (c->p32_h[i])
			p32_drop(c, v, i);
}

static void b_free(struct moe_backend *be, void *p)
{
	struct cuda_ctx *c = CTX(be);
	if (p) {
		opt_wait_all(c);
		cudaStreamSynchronize(c->s);
	}
	dev_free(c, p);
}

static void b_zero(struct moe_backend *be, void *p, size_t n, enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	if (opt_touches(c, p, n * elt(kind)))
		opt_wait_all(c);
	mark_stale(c, p, n * elt(kind));
	PROF(c, "zero (memset)");
	RUN(c, CUDA_OK(cudaMemsetAsync(p, 0, n * elt(kind), c->s), &c->err));
	PROF_END(c);
}

static void b_copy(struct moe_backend *be, void *dst, const void *src, size_t n, enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	if (opt_touches(c, dst, n * elt(kind)) || opt_touches(c, src, n * elt(kind)))
		opt_wait_all(c);
	size_t lo;
	if (packed_hit(c, src, n * elt(kind), &lo) >= 0)
		packed_misuse(c, "a copy from", lo);
	mark_stale(c, dst, n * elt(kind));
	PROF(c, "copy (memcpy)");
	RUN(c, CUDA_OK(cudaMemcpyAsync(dst, src, n * elt(kind), cudaMemcpyDeviceToDevice, c->s), &c->err));
	PROF_END(c);
}

static float bf_to_f(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

static uint16_t f_to_bf(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40);
	u += 0x7fffu + ((u >> 16) & 1u);
	return (uint16_t)(u >> 16);
}

static void b_to_host(struct moe_backend *be, void *host_dst, const void *src, size_t n, enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	if (opt_touches(c, src, n * elt(kind)))
		opt_wait_all(c);
	sq_flush(c);
	if (c->rc)
		return;
	size_t lo;
	if (kind != MOE_BUF_ACT && packed_hit(c, src, n * 4, &lo) >= 0) {
		masters_host(c, (size_t)((const float *)src - c->p32), n, (float *)host_dst, NULL);
		return;
	}
	if (kind != MOE_BUF_ACT) {
		RUN(c, CUDA_OK(cudaMemcpyAsync(host_dst, src, n * 4, cudaMemcpyDeviceToHost, c->s), &c->err));
		RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
		return;
	}
	uint16_t *tmp = (uint16_t *)malloc(n * 2 + 2);
	if (!tmp) {
		c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of host memory");
		return;
	}
	RUN(c, CUDA_OK(cudaMemcpyAsync(tmp, src, n * 2, cudaMemcpyDeviceToHost, c->s), &c->err));
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	float *d = (float *)host_dst;
	for (size_t i = 0; i < n && c->rc == 0; i++)
		d[i] = bf_to_f(tmp[i]);
	free(tmp);
}

static void pend_flush(struct cuda_ctx *c);

/* n elements to host_dst at the next sync: copied now, in the stream's
 * order, into the pinned buffer (grown after a sync when too small); bf16
 * buffers (converted on the host) are read back at once instead */
static void b_to_host_later(struct moe_backend *be, void *host_dst, const void *src, size_t n,
			    enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	if (opt_touches(c, src, n * elt(kind)))
		opt_wait_all(c);
	size_t lo;
	if (kind == MOE_BUF_ACT || packed_hit(c, src, n * 4, &lo) >= 0) {
		b_to_host(be, host_dst, src, n, kind);
		return;
	}
	size_t bytes = n * elt(kind), off = (c->later_used + 15) & ~(size_t)15;
	if (c->nlater == N_LATER || off + bytes > c->later_cap) {
		pend_flush(c); /* the ones waiting first: the buffer is free after */
		off = 0;
		if (bytes > c->later_cap) {
			if (c->later_buf)
				cudaFreeHost(c->later_buf);
			size_t cap = bytes > ((size_t)1 << 16) ? bytes : ((size_t)1 << 16);
			if (cudaHostAlloc((void **)&c->later_buf, cap, cudaHostAllocDefault) != cudaSuccess) {
				cudaGetLastError();
				c->later_buf = NULL;
				c->later_cap = 0;
				b_to_host(be, host_dst, src, n, kind); /* now, then */
				return;
			}
			c->later_cap = cap;
		}
	}
	if (c->rc)
		return;
	RUN(c, CUDA_OK(cudaMemcpyAsync(c->later_buf + off, src, bytes, cudaMemcpyDeviceToHost, c->s), &c->err));
	c->later[c->nlater].dst = host_dst;
	c->later[c->nlater].off = off;
	c->later[c->nlater++].bytes = bytes;
	c->later_used = off + bytes;
}

/* An upload through the next pinned buffer, not waited for: the host's
 * bytes are copied there first, so the caller may reuse them at once, and
 * the device is not left idle while the host waits for the copy (at the
 * start of a step, behind the last one's optimizer).  false where no
 * pinned buffer could be had (the caller copies synchronously). */
static bool upload_staged(struct cuda_ctx *c, void *dst, const void *host_src, size_t bytes)
{
	int i = c->stage_next;
	if (!c->stage[i]) /* all of them at the first upload: no allocation in later steps */
		for (int k = 0; k < N_STAGE; k++) {
			if (c->stage[k])
				continue;
			if (cudaHostAlloc(&c->stage[k], STAGE_BYTES, cudaHostAllocDefault) != cudaSuccess) {
				c->stage[k] = NULL;
				cudaGetLastError();
				return false;
			}
			if (cudaEventCreateWithFlags(&c->stage_ev[k], cudaEventDisableTiming) != cudaSuccess) {
				cudaFreeHost(c->stage[k]);
				c->stage[k] = NULL;
				cudaGetLastError();
				return false;
			}
		}
	/* its last copy has run (an event never recorded returns at once) */
	RUN(c, CUDA_OK(cudaEventSynchronize(c->stage_ev[i]), &c->err));
	c->stage_next = (i + 1) % N_STAGE;
	memcpy(c->stage[i], host_src, bytes);
	RUN(c, CUDA_OK(cudaMemcpyAsync(dst, c->stage[i], bytes, cudaMemcpyHostToDevice, c->s), &c->err));
	RUN(c, CUDA_OK(cudaEventRecord(c->stage_ev[i], c->s), &c->err));
	return true;
}

static void b_from_host(struct moe_backend *be, void *dst, const void *host_src, size_t n,
			enum moe_buf_kind kind)
{
	struct cuda_ctx *c = CTX(be);
	if (opt_touches(c, dst, n * elt(kind)))
		opt_wait_all(c);
	sq_flush(c);
	if (c->rc)
		return;
	size_t lo;
	if (kind != MOE_BUF_ACT && packed_hit(c, dst, n * 4, &lo) >= 0) {
		masters_host(c, (size_t)((float *)dst - c->p32), n, NULL, (const float *)host_src);
		return;
	}
	if (kind != MOE_BUF_ACT) {
		mark_stale(c, dst, n * 4);
		if (n * 4 <= STAGE_BYTES && upload_staged(c, dst, host_src, n * 4))
			return;
		RUN(c, CUDA_OK(cudaMemcpyAsync(dst, host_src, n * 4, cudaMemcpyHostToDevice, c->s), &c->err));
		RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
		return;
	}
	uint16_t *tmp = (uint16_t *)malloc(n * 2 + 2);
	if (!tmp) {
		c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of host memory");
		return;
	}
	const float *s = (const float *)host_src;
	for (size_t i = 0; i < n; i++)
		tmp[i] = f_to_bf(s[i]);
	RUN(c, CUDA_OK(cudaMemcpyAsync(dst, tmp, n * 2, cudaMemcpyHostToDevice, c->s), &c->err));
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	free(tmp);
}

/* Wait for the queued work and deliver the pending results: the scalars
 * (one read-back for all of them) and to_host_later's copies. */
static void pend_flush(struct cuda_ctx *c)
{
	sq_flush(c);
	if (c->npend)
		RUN(c, CUDA_OK(cudaMemcpyAsync(c->hres, c->dres, sizeof(double) * 2 * c->npend,
					       cudaMemcpyDeviceToHost, c->s),
			       &c->err));
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	for (int k = 0; k < c->nlater; k++)
		if (c->rc == 0)
			memcpy(c->later[k].dst, c->later_buf + c->later[k].off, c->later[k].bytes);
	c->nlater = 0;
	c->later_used = 0;
	for (int k = 0; k < c->npend; k++) {
		const struct pending *p = &c->pend[k];
		if (p->d)
			*p->d = c->rc ? NAN : c->hres[2 * k] * p->mul;
		if (p->i)
			*p->i = c->rc ? 0 : (int64_t)c->hres[2 * k + 1];
	}
	c->npend = 0;
}

/* A slot pair for one deferred result, or NULL after an error.  Not
 * cleared: the kernels that reduce into a slot store their result (a
 * memset in the stream would cost a launch gap on each side of it). */
static double *pend_slot(struct cuda_ctx *c, double *d, int64_t *i, double mul)
{
	if (c->npend == N_PEND)
		pend_flush(c);
	if (c->rc)
		return NULL;
	double *acc = c->dres + 2 * c->npend;
	c->pend[c->npend++] = (struct pending){d, i, mul};
	return acc;
}

static int b_sync(struct moe_backend *be, struct moe_error *err)
{
	struct cuda_ctx *c = CTX(be);
	opt_wait_all(c);
	pend_flush(c);
	if (c->rc && err)
		*err = c->err;
	return c->rc;
}

static void b_destroy(struct moe_backend *be)
{
	if (!be)
		return;
	struct cuda_ctx *c = CTX(be);
	if (c) {
		cudaStreamSynchronize(c->s);
		if (c->so) {
			cudaStreamSynchronize(c->so);
			cudaStreamDestroy(c->so);
			cudaEventDestroy(c->ev_main);
			for (int i = 0; i < N_OSPAN; i++)
				if (c->ev_span[i])
					cudaEventDestroy(c->ev_span[i]);
		}
		p32_free(c);
		dev_free(c, c->g32);
		dev_free(c, c->p16);
		for (int i = 0; i < N_SCRATCH; i++)
			dev_free(c, c->scratch[i]);
		for (int i = 0; i < c->n_ssq; i++)
			dev_free(c, c->ssq[i].part);
		dev_free(c, c->cosb);
		dev_free(c, c->sinb);
		for (int i = 0; i < N_ROUTES; i++)
			free(c->hoff[i]);
		dev_free(c, c->gptr);
		if (c->one_off)
			cudaFree(c->one_off);
		if (c->dres)
			cudaFree(c->dres);
		if (c->hres)
			cudaFreeHost(c->hres);
		if (c->later_buf)
			cudaFreeHost(c->later_buf);
		for (int i = 0; i < N_STAGE; i++)
			if (c->stage[i]) {
				cudaFreeHost(c->stage[i]);
				cudaEventDestroy(c->stage_ev[i]);
			}
		moe_cuda_blas_free(c->blas);
		free(c->al);
		if (c->prof)
			for (int i = 0; i < 4096; i++) {
				cudaEventDestroy(c->ev[0][i]);
				cudaEventDestroy(c->ev[1][i]);
			}
		cudaStreamDestroy(c->s);
		free(c);
	}
	free(be);
}

/* ---- parameters --------------------------------------------------------------- */

static int b_params_alloc(struct moe_backend *be, size_t n, struct moe_error *err)
{
	struct cuda_ctx *c = CTX(be);
	opt_wait_all(c);
	cudaStreamSynchronize(c->s);
	p32_free(c);
	dev_free(c, c->g32);
	dev_free(c, c->p16);
	ssq_forget_all(c);
	bool p32_ok = p32_alloc(be, n);
	c->g32 = (float *)b_alloc(be, n, MOE_BUF_F32);
	c->p16 = (bf16_t *)b_alloc(be, n, MOE_BUF_ACT);
	c->n = n;
	c->stale_all = 1;
	c->n_packed = 0;
	if (!p32_ok || !c->g32 || !c->p16)
		return moe_error_set(err, MOE_ENOMEM, "cuda: out of device memory for %zu parameters "
				     "(%.1f GiB)", n, n * 10.0 / (1 << 30));
	return 0;
}

/* The optimizer stream's pending span holding parameter element off, or -1 */
static int pending_span(const struct cuda_ctx *c, size_t off)
{
	for (int k = c->n_owaited; k < c->n_ospan; k++)
		if (off >= c->os_lo[k] && off < c->os_hi[k])
			return k;
	return -1;
}

/* The accessors tell the optimizer stream's waits (cuda_ctx.so) what is used. */
static float *b_master(struct moe_backend *be, size_t off)
{
	struct cuda_ctx *c = CTX(be);
	if (pending_span(c, off) >= 0)
		c->want_all = 1;
	return c->p32 + off;
}

static float *b_grad(struct moe_backend *be, size_t off)
{
	struct cuda_ctx *c = CTX(be);
	if (c->n_ospan)
		c->want_all = 1;
	return c->g32 + off;
}

static const void *b_param(struct moe_backend *be, size_t off)
{
	struct cuda_ctx *c = CTX(be);
	int k = pending_span(c, off);
	if (k >= 0)
		opt_wait(c, k);
	return c->p16 + off;
}

/* Keep masters [off, off + n) packed from now on (model.h), packed in place
 * (pack_chunks). */
static bool b_masters_pack(struct moe_backend *be, size_t off, size_t n)
{
	struct cuda_ctx *c = CTX(be);
	if (c->pack_off || c->rc || n == 0 || off + n > c->n)
		return false;
	opt_wait_all(c);
	int r = packed_meet(c, off, off + n);
	if (r >= 0)
		return c->pk_lo[r] == off && c->pk_hi[r] == off + n;
	if (c->n_packed == N_PACKED)
		return false;
	float *tmp = (float *)dev_alloc(c, (n < PACK_CHUNK ? n : PACK_CHUNK) * 4);
	if (!tmp)
		return false;
	r = c->n_packed;
	c->pk_lo[r] = off;
	c->pk_hi[r] = off + n;
	pack_chunks(c, r, off, off + n, c->p32 + off, tmp);
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	dev_free(c, tmp);
	if (c->rc)
		return false;
	c->n_packed++;
	p32_release(c, r);
	return true;
}

static int b_status(struct moe_backend *be, struct moe_error *err)
{
	struct cuda_ctx *c = CTX(be);
	if (c->rc == 0) {
		cudaError_t e = cudaPeekAtLastError();
		if (e != cudaSuccess)
			c->rc = moe_error_set(&c->err, MOE_EIO, "cuda: %s", cudaGetErrorString(e));
	}
	if (c->rc && err)
		*err = c->err;
	return c->rc;
}

/* The compute copy of masters [lo, hi) from the fp32 ones, but for the
 * packed ranges (their compute copy is their high half). */
static void refresh_copy(struct cuda_ctx *c, size_t lo, size_t hi)
{
	while (lo < hi) {
		int r = packed_meet(c, lo, hi);
		size_t stop = r < 0 ? hi : c->pk_lo[r] > lo ? c->pk_lo[r] : lo;
		if (stop > lo)
			RUN(c, moe_cuda_masters_copy(c->p16 + lo, c->p32 + lo, stop - lo, c->s, &c->err));
		lo = r < 0 ? hi : c->pk_hi[r];
	}
}

/* Refresh the bf16 compute copy where the masters changed outside AdamW. */
static void b_params_updated(struct moe_backend *be)
{
	struct cuda_ctx *c = CTX(be);
	ssq_forget_all(c); /* an optimizer step: the next backward stores anew */
	if ((c->stale_all || c->n_stale) && c->n_ospan > c->n_owaited)
		c->want_all = 1; /* not beside AdamW's own copies */
	PROF(c, "params_to_bf16");
	if (c->stale_all)
		refresh_copy(c, 0, c->n);
	else
		for (int i = 0; i < c->n_stale; i++)
			refresh_copy(c, c->stale_lo[i], c->stale_hi[i]);
	PROF_END(c);
	c->stale_all = 0;
	c->n_stale = 0;
}

/* The fp32 master of a compute-copy pointer (norm weights are read in fp32). */
static const float *master_of(struct cuda_ctx *c, const void *w)
{
	const bf16_t *p = (const bf16_t *)w;
	if (p >= c->p16 && p < c->p16 + c->n) {
		size_t off = (size_t)(p - c->p16);
		if (packed_meet(c, off, off + 1) >= 0) {
			packed_misuse(c, "an fp32 read of", off);
			return NULL;
		}
		return c->p32 + off;
	}
	if (c->rc == 0)
		c->rc = moe_error_set(&c->err, MOE_EINVAL, "cuda: norm weight is not a parameter");
	return NULL;
}

/* ---- ops ------------------------------------------------------------------------- */

static void o_embedding_fwd(struct moe_backend *be, void *out, const int32_t *ids, const void *wte, int N, int D)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "embedding");
	RUN(c, moe_cuda_embedding_fwd((bf16_t *)out, ids, (const bf16_t *)wte, N, D, c->s, &c->err));
	PROF_END(c);
}

static void o_embedding_bwd(struct moe_backend *be, float *dwte, const void *dout, const int32_t *ids, int N, int D,
			    int pad_id)
{
	struct cuda_ctx *c = CTX(be);
	void *sc = c->det ? scratch(c, S_DET, moe_cuda_embedding_bwd_det_scratch(N, D)) : NULL;
	PROF(c, "embedding_bwd");
	if (sc)
		RUN(c, moe_cuda_embedding_bwd_det(dwte, (const bf16_t *)dout, ids, N, D, pad_id, sc, c->s, &c->err));
	else if (!c->det)
		RUN(c, moe_cuda_embedding_bwd(dwte, (const bf16_t *)dout, ids, N, D, pad_id, c->s, &c->err));
	PROF_END(c);
}

static void o_rmsnorm_fwd(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int N, int D,
			  float eps)
{
	struct cuda_ctx *c = CTX(be);
	const float *wf = master_of(c, w);
	PROF(c, "rmsnorm");
	RUN(c, moe_cuda_rmsnorm_fwd((bf16_t *)out, rstd, (const bf16_t *)x, wf, N, D, eps, c->s, &c->err));
	PROF_END(c);
}

/* Under MOE_CUDA_DETERMINISTIC, the (blocks, D) buffer of a norm's weight
 * gradient sums (added up in block order, not with atomics); else NULL. */
static float *norm_part(struct cuda_ctx *c, int D, const float *dw)
{
	if (!c->det || !dw)
		return NULL;
	return (float *)scratch(c, S_DET, (size_t)MOE_CUDA_NORM_PART_BLOCKS * D * sizeof(float));
}

static void b_grad_cleared(struct moe_backend *be, float *dw, size_t n)
{
	struct cuda_ctx *c = CTX(be);
	if (!dw) {
		c->n_clr = 0;
		return;
	}
	if (c->n_clr < N_CLEARED) { /* past the table the ops clear their own */
		c->clr[c->n_clr].lo = dw;
		c->clr[c->n_clr++].hi = dw + n;
	}
}

/* Does the gradient [dw, dw + n) need clearing before an op adds into it
 * under grad_overwrite (not inside a region the model cleared)? */
static bool grad_needs_clear(struct cuda_ctx *c, const float *dw, size_t n)
{
	for (int i = 0; i < c->n_clr; i++)
		if (dw >= c->clr[i].lo && dw + n <= c->clr[i].hi)
			return false;
	return true;
}

static void rmsnorm_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w,
			const float *rstd, int N, int D, bool add)
{
	struct cuda_ctx *c = CTX(be);
	const float *wf = master_of(c, w);
	if (dw && be->grad_overwrite && grad_needs_clear(c, dw, (size_t)D)) /* the kernel adds its blocks' sums */
		b_zero(be, dw, (size_t)D, MOE_BUF_F32);
	float *part = norm_part(c, D, dw);
	PROF(c, "rmsnorm_bwd");
	RUN(c, (add ? moe_cuda_rmsnorm_bwd_add : moe_cuda_rmsnorm_bwd)((bf16_t *)dx, dw, part, (const bf16_t *)dout,
								       (const bf16_t *)x, wf, rstd, N, D, c->s,
								       &c->err));
	PROF_END(c);
}

static void o_rmsnorm_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w,
			  const float *rstd, int N, int D)
{
	rmsnorm_bwd(be, dx, dw, dout, x, w, rstd, N, D, false);
}

static void o_rmsnorm_bwd_add(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x,
			      const void *w, const float *rstd, int N, int D)
{
	rmsnorm_bwd(be, dx, dw, dout, x, w, rstd, N, D, true);
}

__global__ void one_group_kernel(int32_t *off, int rows)
{
	MOE_PDL_ENTRY();
	off[0] = 0;
	off[1] = rows;
}

/* Offsets of one group of N rows for the wgmma kernel, or NULL when a
 * forward GEMM with at most 64 output columns (the router's 64 experts)
 * should not go that way.  cuBLAS ran such a (32768 x 768) x (768 x 64)
 * product in 0.082 ms on one H100 and 0.035 ms on another, the grouped
 * wgmma kernel in 0.031 ms on both (tests/bench/bench_gemm.c).  (Its input
 * gradient stays on cuBLAS: 0.035-0.075 ms there, 0.067 ms as one group.) */
static const int32_t *narrow_group(struct cuda_ctx *c, int N, int In, int narrow)
{
	if (!c->narrow_ok || narrow > 64 || N < 1024 || In % 8 || narrow % 8)
		return NULL;
	if (c->one_rows != N) {
		moe_launch(one_group_kernel, 1, 1, 0, c->s, c->one_off, N);
		RUN(c, CUDA_LAUNCHED(&c->err));
		c->one_rows = N;
	}
	return c->one_off;
}

/* beta 1: the GEMM adds into out / dx (bf16 C read once, fp32 sum) */
static void linear_fwd_beta(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out,
			    float beta)
{
	struct cuda_ctx *c = CTX(be);
	const int32_t *one = beta == 0.f ? narrow_group(c, N, In, Out) : NULL;
	PROF(c, "linear");
	if (one)
		RUN(c, moe_cuda_grouped_wgmma_fwd((bf16_t *)out, (const bf16_t *)x, (const bf16_t *)w, one, N, 1, In, Out,
						  c->s, &c->err));
	else
		RUN(c, moe_cuda_gemm(c->blas, 0, 1, N, Out, In, (const bf16_t *)x, In, (const bf16_t *)w, In, out, Out,
				     0, 1.f, beta, &c->err));
	PROF_END(c);
}

/* The beta of nb fp32 weight gradients of ne elements each (at dw + b *
 * stride) that a cuBLAS GEMM adds into (1) or, under grad_overwrite,
 * stores.  cuBLAS has added a small gradient over a long reduction twice as
 * fast as it stored one (on one H100, 768 x 768 over 32768 rows: 0.096 ms
 * with beta 1, 0.194 ms with beta 0; equal, 0.077 ms, on another:
 * tests/bench/bench_gemm.c), so up to 4M elements they are cleared here
 * (one memset when they are adjacent; none where the model cleared the run
 * they lie in, grad_cleared) and added into instead. */
static float wgrad_beta(struct moe_backend *be, float *dw, size_t ne, int nb, size_t stride, int N)
{
	if (!be->grad_overwrite)
		return 1.f;
	if (N > 0 && ne > (size_t)CTX(be)->wgrad_store_min)
		return 0.f;
	if (!grad_needs_clear(CTX(be), dw, (size_t)(nb - 1) * stride + ne))
		return 1.f;
	if (stride == ne)
		b_zero(be, dw, ne * nb, MOE_BUF_F32);
	else
		for (int b = 0; b < nb; b++)
			b_zero(be, dw + b * stride, ne, MOE_BUF_F32);
	return 1.f;
}

static void linear_bwd_beta(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x,
			    const void *w, int N, int In, int Out, float beta)
{
	struct cuda_ctx *c = CTX(be);
	float wbeta = dw ? wgrad_beta(be, dw, (size_t)Out * In, 1, (size_t)Out * In, N) : 1.f;
	PROF(c, "linear_bwd");
	if (dx)
		RUN(c, moe_cuda_gemm(c->blas, 0, 0, N, In, Out, (const bf16_t *)dout, Out, (const bf16_t *)w, In, dx,
				     In, 0, 1.f, beta, &c->err));
	if (dw)
		RUN(c, moe_cuda_gemm(c->blas, 1, 0, Out, In, N, (const bf16_t *)dout, Out, (const bf16_t *)x, In, dw,
				     In, 1, 1.f, wbeta, &c->err));
	PROF_END(c);
}

static void o_linear_fwd(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out)
{
	linear_fwd_beta(be, out, x, w, N, In, Out, 0.f);
}

static void o_linear_fwd_add(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out)
{
	linear_fwd_beta(be, out, x, w, N, In, Out, 1.f);
}

/* out = res + x w^T with out != res: cuBLASLt reads res as its C and writes
 * out as its D, so the residual is not copied into out first */
static void o_linear_fwd_res(struct moe_backend *be, void *out, const void *res, const void *x, const void *w, int N,
			     int In, int Out)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "linear");
	RUN(c, moe_cuda_gemm_res(c->blas, N, Out, In, (const bf16_t *)x, In, (const bf16_t *)w, In,
				 (const bf16_t *)res, (bf16_t *)out, Out, &c->err));
	PROF_END(c);
}

static void o_linear_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w,
			 int N, int In, int Out)
{
	linear_bwd_beta(be, dx, dw, dout, x, w, N, In, Out, 0.f);
}

static void o_linear_bwd_add(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x,
			     const void *w, int N, int In, int Out)
{
	linear_bwd_beta(be, dx, dw, dout, x, w, N, In, Out, 1.f);
}

static void o_linear_fwd_multi(struct moe_backend *be, void *out, size_t out_stride, const void *x, const void *w,
			       size_t w_stride, int nb, int N, int In, int Out)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "linear");
	RUN(c, moe_cuda_gemm_batched(c->blas, 0, 1, N, Out, In, (const bf16_t *)x, In, 0, (const bf16_t *)w, In,
				     (long long)w_stride, out, Out, (long long)out_stride, 0, 1.f, 0.f, nb, &c->err));
	PROF_END(c);
}

static void o_linear_wgrad_multi(struct moe_backend *be, float *dw, size_t dw_stride, const void *dout,
				 size_t dout_stride, int ld_dout, const void *x, size_t x_stride, int ld_x, int nb, int N,
				 int In, int Out)
{
	struct cuda_ctx *c = CTX(be);
	float wbeta = wgrad_beta(be, dw, (size_t)Out * In, nb, dw_stride, N);
	PROF(c, "linear_bwd");
	RUN(c, moe_cuda_gemm_batched(c->blas, 1, 0, Out, In, N, (const bf16_t *)dout, ld_dout, (long long)dout_stride,
				     (const bf16_t *)x, ld_x, (long long)x_stride, dw, In, (long long)dw_stride, 1, 1.f,
				     wbeta, nb, &c->err));
	PROF_END(c);
}

static void rope_table(struct cuda_ctx *c, int T, int Dh, float theta)
{
	if (c->cosb && c->rope_T >= T && c->rope_Dh == Dh && c->rope_theta == theta)
		return;
	size_t n = (size_t)T * (Dh / 2);
	float *hc = (float *)malloc(n * 4), *hs = (float *)malloc(n * 4);
	if (!hc || !hs) {
		free(hc);
		free(hs);
		if (c->rc == 0)
			c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of host memory");
		return;
	}
	moe_cuda_rope_table(hc, hs, T, Dh, theta);
	cudaStreamSynchronize(c->s);
	dev_free(c, c->cosb);
	dev_free(c, c->sinb);
	c->cosb = (float *)dev_alloc(c, n * 4);
	c->sinb = (float *)dev_alloc(c, n * 4);
	if (!c->cosb || !c->sinb) {
		if (c->rc == 0)
			c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of device memory (rope table)");
	} else {
		/* on the stream the rope kernels run on, waited for: a cudaMemcpy
		 * from pageable memory may return before its DMA lands, and the
		 * non-blocking stream is not ordered after the legacy stream */
		RUN(c, CUDA_OK(cudaMemcpyAsync(c->cosb, hc, n * 4, cudaMemcpyHostToDevice, c->s), &c->err));
		RUN(c, CUDA_OK(cudaMemcpyAsync(c->sinb, hs, n * 4, cudaMemcpyHostToDevice, c->s), &c->err));
		RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	}
	c->rope_T = T;
	c->rope_Dh = Dh;
	c->rope_theta = theta;
	free(hc);
	free(hs);
}

static void o_rope(struct moe_backend *be, void *x, int B, int T, int H, int Dh, float theta, int inverse)
{
	struct cuda_ctx *c = CTX(be);
	rope_table(c, T, Dh, theta);
	PROF(c, inverse ? "rope_bwd" : "rope");
	RUN(c, moe_cuda_rope((bf16_t *)x, c->cosb, c->sinb, B, T, H, Dh, inverse, c->s, &c->err));
	PROF_END(c);
}

/* rows of n columns between buffers of row strides lds, ldd (bf16) */
static void copy_rows(struct cuda_ctx *c, void *dst, int ldd, const void *src, int lds, int rows, int n)
{
	RUN(c, moe_cuda_copy_rows((bf16_t *)dst, ldd, 0, (const bf16_t *)src, lds, 0, rows, n, 1, c->s, &c->err));
}

static void o_copy_rows(struct moe_backend *be, void *dst, int ldd, size_t dst_stride, const void *src, int lds,
			size_t src_stride, int rows, int n, int nb)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "copy_rows");
	RUN(c, moe_cuda_copy_rows((bf16_t *)dst, ldd, dst_stride, (const bf16_t *)src, lds, src_stride, rows, n, nb,
				  c->s, &c->err));
	PROF_END(c);
}

/* x (N rows of D at row stride ldx) where the two kernels of
 * MOE_CUDA_QKNORM_ROPE=split can read it: x itself, or a copy in the first
 * half of the S_QKV scratch (its second half takes their dx); NULL when the
 * scratch cannot be had (the error is recorded) */
static const void *qk_contig(struct cuda_ctx *c, const void *x, int ldx, int N, int D)
{
	if (ldx == D)
		return x;
	void *xc = scratch(c, S_QKV, (size_t)2 * N * D * 2);
	if (xc)
		copy_rows(c, xc, D, x, ldx, N, D);
	return xc;
}

/* QK-norm then RoPE of x at row stride ldx (q or k in the q, k, v rows),
 * and of a second tensor x2 (k beside q) where x2 is not NULL: the fused
 * kernels, both tensors in one launch, or (MOE_CUDA_QKNORM_ROPE=split,
 * shapes they do not take) rmsnorm and rope for each, on a contiguous copy
 * of x where ldx is not H Dh */
static void qk_fwd(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, void *out2,
		   float *rstd2, const void *x2, const void *w2, int ldx, int B, int T, int H, int Dh, float eps,
		   float theta)
{
	struct cuda_ctx *c = CTX(be);
	int N = B * T, D = H * Dh;
	if (c->qk_split || !moe_cuda_qknorm_rope_supported(H, Dh)) { /* the two kernels, a tensor at a time */
		if (x2) {
			qk_fwd(be, out, rstd, x, w, NULL, NULL, NULL, NULL, ldx, B, T, H, Dh, eps, theta);
			if (c->rc == 0)
				qk_fwd(be, out2, rstd2, x2, w2, NULL, NULL, NULL, NULL, ldx, B, T, H, Dh, eps, theta);
			return;
		}
		if (!(x = qk_contig(c, x, ldx, N, D)))
			return;
		o_rmsnorm_fwd(be, out, rstd, x, w, N, D, eps);
		o_rope(be, out, B, T, H, Dh, theta, 0);
		return;
	}
	const float *wf = master_of(c, w), *wf2 = x2 ? master_of(c, w2) : NULL;
	rope_table(c, T, Dh, theta);
	PROF(c, "qknorm_rope");
	if (x2) /* one launch (at seed-base 0.18 ms a step less than two, H200, call 148) */
		RUN(c, moe_cuda_qknorm_rope_fwd2_ld((bf16_t *)out, rstd, (const bf16_t *)x, wf, (bf16_t *)out2, rstd2,
						    (const bf16_t *)x2, wf2, ldx, c->cosb, c->sinb, B, T, H, Dh, eps,
						    c->s, &c->err));
	else
		RUN(c, moe_cuda_qknorm_rope_fwd_ld((bf16_t *)out, rstd, (const bf16_t *)x, ldx, wf, c->cosb, c->sinb, B,
						   T, H, Dh, eps, c->s, &c->err));
	PROF_END(c);
}

static void o_qknorm_rope_fwd(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int B,
			      int T, int H, int Dh, float eps, float theta)
{
	qk_fwd(be, out, rstd, x, w, NULL, NULL, NULL, NULL, H * Dh, B, T, H, Dh, eps, theta);
}

/* The backward, x and dx at row stride ldx; dout (H Dh) may be overwritten;
 * from fa3f's fp32 dQ tiles instead where acc (then dout unused) */
static void qk_bwd(struct moe_backend *be, void *dx, int ldx, float *dw, const void *dout, const float *acc,
		   const void *x, const void *w, const float *rstd, int B, int T, int H, int Dh, float theta)
{
	struct cuda_ctx *c = CTX(be);
	int N = B * T, D = H * Dh;
	if (!acc && (c->qk_split || !moe_cuda_qknorm_rope_supported(H, Dh))) { /* two kernels; RoPE back in place on dout */
		const void *xc = qk_contig(c, x, ldx, N, D);
		if (!xc)
			return;
		void *dxc = xc == x ? dx : (char *)xc + (size_t)N * D * 2;
		x = xc;
		o_rope(be, (void *)dout, B, T, H, Dh, theta, 1);
		o_rmsnorm_bwd(be, dxc, dw, dout, x, w, rstd, N, D);
		if (dxc != dx)
			copy_rows(c, dx, ldx, dxc, D, N, D);
		return;
	}
	const float *wf = master_of(c, w);
	rope_table(c, T, Dh, theta);
	if (dw && be->grad_overwrite && grad_needs_clear(c, dw, (size_t)D)) /* the kernel adds its blocks' sums */
		b_zero(be, dw, (size_t)D, MOE_BUF_F32);
	float *part = norm_part(c, D, dw);
	PROF(c, "qknorm_rope_bwd");
	if (acc)
		RUN(c, moe_cuda_qknorm_rope_bwd_acc((bf16_t *)dx, dw, part, acc, (const bf16_t *)x, ldx, wf, rstd, c->cosb,
						    c->sinb, B, T, H, Dh, c->s, &c->err));
	else
		RUN(c, moe_cuda_qknorm_rope_bwd_ld((bf16_t *)dx, dw, part, (const bf16_t *)dout, (const bf16_t *)x, ldx, wf,
						   rstd, c->cosb, c->sinb, B, T, H, Dh, c->s, &c->err));
	PROF_END(c);
}

static void o_qknorm_rope_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x,
			      const void *w, const float *rstd, int B, int T, int H, int Dh, float theta)
{
	qk_bwd(be, dx, H * Dh, dw, dout, NULL, x, w, rstd, B, T, H, Dh, theta);
}

static void o_attention_fwd(struct moe_backend *be, void *out, float *lse, const void *q, const void *k, const void *v,
			    int B, int T, int H, int Dh)
{
	struct cuda_ctx *c = CTX(be);
	int ld = H * Dh;
	PROF(c, "attention");
	RUN(c, moe_cuda_attention_fwd((bf16_t *)out, lse, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, ld,
				      ld, ld, ld, B, T, H, Dh, c->s, &c->err));
	PROF_END(c);
}

static void o_attention_bwd(struct moe_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q,
			    const void *k, const void *v, const void *out, const float *lse, int B, int T, int H,
			    int Dh)
{
	struct cuda_ctx *c = CTX(be);
	int ld = H * Dh;
	void *delta = scratch(c, S_DELTA, moe_cuda_attention_bwd_scratch(B, T, H, Dh));
	PROF(c, "attention_bwd");
	RUN(c, moe_cuda_attention_bwd((bf16_t *)dq, (bf16_t *)dk, (bf16_t *)dv, delta, (const bf16_t *)dout,
				      (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, (const bf16_t *)out,
				      lse, ld, ld, ld, ld, B, T, H, Dh, c->s, &c->err));
	PROF_END(c);
}

/* The attention block's QK-norm + RoPE and attention (model.h,
 * attention_qknorm_fwd / _bwd): q, k, v projections, dq and dk of the norms'
 * inputs and dv at row stride ld (3 H Dh: one buffer; H Dh: three). The
 * backward's query norm reads fa3f's fp32 dQ tiles where it keeps them (the
 * same bits as converting them to dq first, one kernel less;
 * MOE_CUDA_DQ_FUSE=0: the conversion). */
static void o_attention_qknorm_fwd(struct moe_backend *be, void *att, float *lse, void *q, void *k, float *rstdq,
				   float *rstdk, const void *qraw, const void *kraw, const void *v, int ld,
				   const void *wq, const void *wk, int B, int T, int H, int Dh, float eps, float theta)
{
	struct cuda_ctx *c = CTX(be);
	int D = H * Dh;
	qk_fwd(be, q, rstdq, qraw, wq, k, rstdk, kraw, wk, ld, B, T, H, Dh, eps, theta);
	PROF(c, "attention");
	RUN(c, moe_cuda_attention_fwd((bf16_t *)att, lse, (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v, D, D,
				      ld, D, B, T, H, Dh, c->s, &c->err));
	PROF_END(c);
}

static void o_attention_qknorm_bwd(struct moe_backend *be, void *dqx, void *dkx, void *dv, int ld, float *dwq,
				   float *dwk, void *dq, void *dk, const void *dout, const void *q, const void *k,
				   const void *v, const void *out, const float *lse, const void *qraw,
				   const void *kraw, const void *wq, const void *wk, const float *rstdq,
				   const float *rstdk, int B, int T, int H, int Dh, float theta)
{
	struct cuda_ctx *c = CTX(be);
	int D = H * Dh;
	bool tiles = c->dq_fuse && !c->qk_split && moe_cuda_qknorm_rope_acc_supported(H, Dh);
	const float *acc = NULL;
	void *delta = scratch(c, S_DELTA, moe_cuda_attention_bwd_scratch(B, T, H, Dh));
	{
		PROF(c, "attention_bwd");
		RUN(c, moe_cuda_attention_bwd_acc((bf16_t *)dq, (bf16_t *)dk, (bf16_t *)dv, delta, (const bf16_t *)dout,
						  (const bf16_t *)q, (const bf16_t *)k, (const bf16_t *)v,
						  (const bf16_t *)out, lse, D, D, ld, D, B, T, H, Dh, tiles ? &acc : NULL,
						  c->s, &c->err));
		PROF_END(c);
	}
	c->dq_tiles += acc != NULL;
	/* acc NULL: dq written (another variant), or an error recorded */
	qk_bwd(be, dqx, ld, dwq, dq, acc, qraw, wq, rstdq, B, T, H, Dh, theta);
	qk_bwd(be, dkx, ld, dwk, dk, NULL, kraw, wk, rstdk, B, T, H, Dh, theta);
}

static void o_swiglu_fwd(struct moe_backend *be, void *h, const void *gu, int M, int I, int G, int ld_gu)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "swiglu");
	RUN(c, moe_cuda_swiglu_fwd_ld((bf16_t *)h, (const bf16_t *)gu, (size_t)M, I, G, ld_gu, c->s, &c->err));
	PROF_END(c);
}

static void o_swiglu_bwd(struct moe_backend *be, void *dgu, void *h, const void *dh, const void *gu, int M, int I,
			 int G, int ld_gu)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "swiglu_bwd");
	RUN(c, moe_cuda_swiglu_bwd_ld((bf16_t *)dgu, (bf16_t *)h, (const bf16_t *)dh, (const bf16_t *)gu, (size_t)M, I,
				      G, ld_gu, c->s, &c->err));
	PROF_END(c);
}

static void o_zloss(struct moe_backend *be, void *dlogits, const void *logits, int ld, int N, int E, float scale,
		    double *loss);

/* The router's ops with the logits' rows ld apart (model.h): read and
 * written in place in the merged linear's output; the forward also sums
 * the z-loss's value (delivered at the sync, as o_zloss's).  The legacy
 * routing kernels (MOE_CUDA_ROUTE=legacy, comparisons) read packed rows
 * only (the router is then never merged) and sum no z-loss: a zloss
 * launch gives the value. */
static void o_router_fwd(struct moe_backend *be, int32_t *topk_idx, float *topk_w, float *probs, const void *logits,
			 int ld, const float *bias, int N, int E, int K, bool norm_topk, double *zloss)
{
	struct cuda_ctx *c = CTX(be);
	const bool legacy = moe_cuda_route_legacy_on();
	PROF(c, "router");
	double *acc = zloss && !legacy ? pend_slot(c, zloss, NULL, N > 0 ? 1.0 / N : 0.0) : NULL;
	void *zs = acc ? scratch(c, S_LOSS, moe_cuda_router_z_scratch(N, E, K)) : NULL;
	if (!acc || zs)
		RUN(c, moe_cuda_router_fwd_ld(topk_idx, topk_w, probs, (const bf16_t *)logits, ld, bias, N, E, K,
					      norm_topk, acc, zs, c->s, &c->err));
	PROF_END(c);
	if (zloss && legacy)
		o_zloss(be, NULL, logits, ld, N, E, 0.0f, zloss);
}

static void o_router_bwd(struct moe_backend *be, void *dlogits, int ld, const float *dtopk_w, const float *dprobs,
			 const float *probs, const int32_t *topk_idx, const float *topk_w, int N, int E, int K,
			 bool norm_topk)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "router_bwd");
	RUN(c, moe_cuda_router_bwd_ld((bf16_t *)dlogits, ld, dtopk_w, dprobs, probs, topk_idx, topk_w, N, E, K,
				      norm_topk, c->s, &c->err));
	PROF_END(c);
}

/* Remember the row count of an offsets buffer; its host copy is stale. */
static int announce_rows(struct cuda_ctx *c, const int32_t *offsets, int rows)
{
	int i;
	for (i = 0; i < N_ROUTES; i++)
		if (c->route_off[i] == offsets)
			break;
	if (i == N_ROUTES) {
		i = c->route_next;
		c->route_next = (c->route_next + 1) % N_ROUTES;
		c->route_off[i] = offsets;
	}
	c->route_rows[i] = rows;
	c->hoff_n[i] = 0;
	return i;
}

static void o_route_group(struct moe_backend *be, int32_t *counts, int32_t *offsets, int32_t *perm, int32_t *inv,
			  const int32_t *topk_idx, int N, int K, int E)
{
	struct cuda_ctx *c = CTX(be);
	void *sc = scratch(c, S_GROUP, moe_cuda_route_group_scratch(N, K, E));
	PROF(c, "route_group");
	RUN(c, moe_cuda_route_group(counts, offsets, perm, inv, sc, topk_idx, N, K, E, c->s, &c->err));
	PROF_END(c);
	announce_rows(c, offsets, N * K);
	int i;
	for (i = 0; i < N_ROUTES && c->rg_perm[i] != perm; i++)
		;
	if (i == N_ROUTES) {
		i = c->rg_next;
		c->rg_next = (c->rg_next + 1) % N_ROUTES;
	}
	c->rg_perm[i] = perm;
	c->rg_inv[i] = inv;
	c->rg_k[i] = K;
	c->rg_nk[i] = N * K;
}

/* The inverse route_group wrote beside perm (same K and slots), or NULL. */
static const int32_t *route_inv_of(struct cuda_ctx *c, const int32_t *perm, int NK, int K)
{
	if (moe_cuda_route_legacy_on())
		return NULL;
	for (int i = 0; i < N_ROUTES; i++)
		if (c->rg_perm[i] == perm)
			return c->rg_k[i] == K && c->rg_nk[i] == NK ? c->rg_inv[i] : NULL;
	return NULL;
}

/* perm's inverse: route_group's (no inverse pass), else computed into
 * scratch (S_INV) on the stream */
static const int32_t *route_inv(struct cuda_ctx *c, const int32_t *perm, int NK, int K)
{
	const int32_t *inv = route_inv_of(c, perm, NK, K);
	if (inv)
		return inv;
	int32_t *own = (int32_t *)scratch(c, S_INV, (size_t)NK * sizeof(int32_t));
	if (own)
		RUN(c, moe_cuda_route_inverse(own, perm, NK, c->s, &c->err));
	return own;
}

static void o_gather_rows(struct moe_backend *be, void *xg, const void *x, const int32_t *perm, int NK, int K, int D)
{
	struct cuda_ctx *c = CTX(be);
	const int32_t *inv = route_inv_of(c, perm, NK, K);
	PROF(c, "gather");
	if (inv) /* token order: each row of x read once */
		RUN(c, moe_cuda_gather_inv((bf16_t *)xg, (const bf16_t *)x, inv, NK / K, K, D, c->s, &c->err));
	else
		RUN(c, moe_cuda_gather((bf16_t *)xg, (const bf16_t *)x, perm, NK, K, D, c->s, &c->err));
	PROF_END(c);
}

static void o_scatter_add_rows(struct moe_backend *be, void *dx, const void *dxg, const int32_t *perm, int NK, int K,
			       int D)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "scatter_add");
	const int32_t *inv = route_inv(c, perm, NK, K);
	RUN(c, moe_cuda_scatter_add((bf16_t *)dx, (const bf16_t *)dxg, inv, NK / K, K, D, c->s, &c->err));
	PROF_END(c);
}

/* Rows of a grouped op: announced by route_group, else read back (syncs). */
static int grouped_rows(struct cuda_ctx *c, const int32_t *offsets, int E)
{
	for (int i = 0; i < N_ROUTES; i++)
		if (c->route_off[i] == offsets)
			return c->route_rows[i];
	int32_t rows = 0;
	RUN(c, CUDA_OK(cudaMemcpyAsync(&rows, offsets + E, sizeof(rows), cudaMemcpyDeviceToHost, c->s), &c->err));
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	announce_rows(c, offsets, rows);
	return rows;
}

/* cuBLAS paths: host offsets (one read-back per routing and offsets buffer). */
static const int32_t *host_offsets(struct cuda_ctx *c, const int32_t *offsets, int E)
{
	int i;
	for (i = 0; i < N_ROUTES; i++)
		if (c->route_off[i] == offsets)
			break;
	if (i == N_ROUTES)
		i = announce_rows(c, offsets, -1);
	if (c->hoff_n[i] == E)
		return c->hoff[i];
	free(c->hoff[i]);
	c->hoff[i] = (int32_t *)malloc(sizeof(int32_t) * (E + 1));
	if (!c->hoff[i]) {
		if (c->rc == 0)
			c->rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of host memory");
		return NULL;
	}
	RUN(c, CUDA_OK(cudaMemcpyAsync(c->hoff[i], offsets, sizeof(int32_t) * (E + 1), cudaMemcpyDeviceToHost, c->s),
		       &c->err));
	RUN(c, CUDA_OK(cudaStreamSynchronize(c->s), &c->err));
	if (c->rc)
		return NULL;
	c->hoff_n[i] = E;
	c->route_rows[i] = c->hoff[i][E];
	return c->hoff[i];
}

/* One cublasGemmGroupedBatchedEx call over the experts that have rows: per
 * expert the row-major C_e (m_e, n) = A_e (m_e, k) op(B_e), A_e and C_e at
 * the expert's first row (ld lda, ldc), B_e = b + e * b_exp, stored (n, k)
 * when tb else (k, n); bf16 output. */
static int grouped_cublas(struct cuda_ctx *c, const int32_t *h, int E, int tb, int n, int k, const bf16_t *a,
			  int lda, const bf16_t *b, size_t b_exp, int ldb, bf16_t *cc, int ldc)
{
	int g = 0, rc = 0;
	int *m_ = (int *)malloc(sizeof(int) * 7 * E), *n_ = m_ + E, *k_ = n_ + E, *la = k_ + E, *lb = la + E,
	    *lc = lb + E, *gs = lc + E;
	cublasOperation_t *oa = (cublasOperation_t *)malloc(sizeof(cublasOperation_t) * 2 * E), *ob = oa + E;
	float *al = (float *)malloc(sizeof(float) * 2 * E), *be_ = al + E;
	void **hp = (void **)malloc(sizeof(void *) * 3 * E);
	if (!m_ || !oa || !al || !hp) {
		rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of host memory");
		goto out;
	}
	if (c->gptr_cap < (size_t)3 * E) {
		cudaStreamSynchronize(c->s);
		dev_free(c, c->gptr);
		c->gptr = (void **)dev_alloc(c, sizeof(void *) * 3 * E);
		c->gptr_cap = c->gptr ? (size_t)3 * E : 0;
		if (!c->gptr) {
			rc = moe_error_set(&c->err, MOE_ENOMEM, "cuda: out of device memory");
			goto out;
		}
	}
	for (int e = 0; e < E; e++) {
		int m = h[e + 1] - h[e];
		if (m <= 0)
			continue;
		/* row-major C = A op(B)  ==  column-major C^T = op(B)^T A^T */
		m_[g] = n;
		n_[g] = m;
		k_[g] = k;
		oa[g] = tb ? CUBLAS_OP_T : CUBLAS_OP_N;
		ob[g] = CUBLAS_OP_N;
		la[g] = ldb;
		lb[g] = lda;
		lc[g] = ldc;
		al[g] = 1.f;
		be_[g] = 0.f;
		gs[g] = 1;
		hp[g] = (void *)(b + (size_t)e * b_exp);
		hp[E + g] = (void *)(a + (size_t)h[e] * lda);
		hp[2 * E + g] = (void *)(cc + (size_t)h[e] * ldc);
		g++;
	}
	if (g == 0)
		goto out;
	/* device pointer arrays: B, A, C blocks of E entries (pageable source:
	 * the copy is staged before cudaMemcpyAsync returns) */
	if ((rc = CUDA_OK(cudaMemcpyAsync(c->gptr, hp, sizeof(void *) * 3 * E, cudaMemcpyHostToDevice, c->s),
			  &c->err)) != 0)
		goto out;
	rc = CUBLAS_OK(cublasGemmGroupedBatchedEx(moe_cuda_blas_handle(c->blas), oa, ob, m_, n_, k_, al,
						  (const void *const *)c->gptr, CUDA_R_16BF, la,
						  (const void *const *)(c->gptr + E), CUDA_R_16BF, lb, be_,
						  c->gptr + 2 * E, CUDA_R_16BF, lc, g, gs, CUBLAS_COMPUTE_32F),
		       &c->err);
out:
	free(m_);
	free(oa);
	free(al);
	free(hp);
	return rc;
}

static void o_grouped_fwd(struct moe_backend *be, void *out, const void *x, const void *w, const int32_t *offsets,
			  int E, int In, int Out)
{
	struct cuda_ctx *c = CTX(be);
	if (c->grouped_mode == GM_CUBLAS_GROUPED) {
		const int32_t *h = host_offsets(c, offsets, E);
		PROF(c, "grouped_fwd");
		if (h)
			RUN(c, grouped_cublas(c, h, E, 1, Out, In, (const bf16_t *)x, In, (const bf16_t *)w,
					      (size_t)Out * In, In, (bf16_t *)out, Out));
		PROF_END(c);
		return;
	}
	if (c->grouped_mode == GM_CUBLAS_LOOP) {
		const int32_t *h = host_offsets(c, offsets, E);
		PROF(c, "grouped_fwd");
		for (int e = 0; h && e < E; e++) {
			int m = h[e + 1] - h[e];
			if (m > 0)
				RUN(c, moe_cuda_gemm(c->blas, 0, 1, m, Out, In, (const bf16_t *)x + (size_t)h[e] * In, In,
						     (const bf16_t *)w + (size_t)e * Out * In, In,
						     (bf16_t *)out + (size_t)h[e] * Out, Out, 0, 1.f, 0.f, &c->err));
		}
		PROF_END(c);
		return;
	}
	int rows = grouped_rows(c, offsets, E);
	PROF(c, "grouped_fwd");
	if (c->grouped_mode == GM_WGMMA)
		RUN(c, (c->grouped_tma ? moe_cuda_grouped_tma_fwd : moe_cuda_grouped_wgmma_fwd)(
			       (bf16_t *)out, (const bf16_t *)x, (const bf16_t *)w, offsets, rows, E, In, Out, c->s, &c->err));
	else
		RUN(c, moe_cuda_grouped_fwd((bf16_t *)out, (const bf16_t *)x, (const bf16_t *)w, offsets, rows, E, In,
					    Out, c->s, &c->err));
	PROF_END(c);
}

/* The TMA weight gradient stored with its epilogue's sums of squares,
 * recorded for o_sumsq (a plain store where the table is full). */
static void wgrad_ssq(struct cuda_ctx *c, float *dw, const void *dout, const void *x, const int32_t *offsets, int E,
		      int In, int Out)
{
	size_t nparts = 0;
	struct ssq_rec *r = ssq_slot(c, dw, (size_t)E * Out * In, moe_cuda_grouped_tma_ssq_cap(E, In, Out));
	if (!r) {
		RUN(c, moe_cuda_grouped_tma_wgrad_store(dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E, In, Out,
							true, c->s, &c->err));
		return;
	}
	RUN(c, moe_cuda_grouped_tma_wgrad_ssq(dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E, In, Out, r->part,
					      &nparts, c->s, &c->err));
	r->nparts = nparts;
	r->valid = c->rc == 0 && nparts > 0;
}

static void o_grouped_bwd(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w,
			  const int32_t *offsets, int E, int In, int Out)
{
	struct cuda_ctx *c = CTX(be);
	/* gradients by overwrite: the wgmma weight gradient stores its tiles
	 * (zeros for experts without rows); the other paths add into zeros */
	bool store = dw && be->grad_overwrite;
	if (dw) /* the region changes: sums of squares recorded for it go */
		ssq_forget(c, dw, (size_t)E * Out * In * 4);
	if (store && !(c->grouped_mode == GM_WGMMA ||
		       (c->grouped_mode == GM_CUBLAS_GROUPED && c->wgrad_mode == WG_WGMMA)))
		b_zero(be, dw, (size_t)E * Out * In, MOE_BUF_F32);
	if (c->grouped_mode == GM_CUBLAS_GROUPED) {
		const int32_t *h = host_offsets(c, offsets, E);
		PROF(c, "grouped_bwd");
		if (h && dx)
			RUN(c, grouped_cublas(c, h, E, 0, In, Out, (const bf16_t *)dout, Out, (const bf16_t *)w,
					      (size_t)Out * In, In, (bf16_t *)dx, In));
		/* dW_e (Out, In) += dY_e^T X_e in fp32 */
		int wm = c->wgrad_mode;
		if (h && dw && wm == WG_KERNEL)
			RUN(c, moe_cuda_grouped_wgrad(dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E, In, Out,
						      c->s, &c->err));
		if (h && dw && wm == WG_WGMMA)
			RUN(c, moe_cuda_grouped_wgmma_wgrad_store(dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E,
								  In, Out, store, c->s, &c->err));
		for (int e = 0; h && dw && wm == WG_LOOP && e < E; e++)
			if (h[e + 1] > h[e])
				RUN(c, moe_cuda_gemm(c->blas, 1, 0, Out, In, h[e + 1] - h[e],
						     (const bf16_t *)dout + (size_t)h[e] * Out, Out,
						     (const bf16_t *)x + (size_t)h[e] * In, In, dw + (size_t)e * Out * In,
						     In, 1, 1.f, 1.f, &c->err));
		PROF_END(c);
		return;
	}
	if (c->grouped_mode == GM_CUBLAS_LOOP) {
		const int32_t *h = host_offsets(c, offsets, E);
		PROF(c, "grouped_bwd");
		for (int e = 0; h && e < E; e++) {
			int m = h[e + 1] - h[e];
			if (m <= 0)
				continue;
			const bf16_t *dy = (const bf16_t *)dout + (size_t)h[e] * Out;
			if (dx)
				RUN(c, moe_cuda_gemm(c->blas, 0, 0, m, In, Out, dy, Out,
						     (const bf16_t *)w + (size_t)e * Out * In, In,
						     (bf16_t *)dx + (size_t)h[e] * In, In, 0, 1.f, 0.f, &c->err));
			if (dw)
				RUN(c, moe_cuda_gemm(c->blas, 1, 0, Out, In, m, dy, Out,
						     (const bf16_t *)x + (size_t)h[e] * In, In, dw + (size_t)e * Out * In,
						     In, 1, 1.f, 1.f, &c->err));
		}
		PROF_END(c);
		return;
	}
	int rows = grouped_rows(c, offsets, E);
	PROF(c, "grouped_bwd");
	if (c->grouped_mode == GM_WGMMA) {
		if (dx)
			RUN(c, (c->grouped_tma ? moe_cuda_grouped_tma_dgrad : moe_cuda_grouped_wgmma_dgrad)(
				       (bf16_t *)dx, (const bf16_t *)dout, (const bf16_t *)w, offsets, rows, E, In, Out, c->s,
				       &c->err));
		if (dw && store && c->grouped_tma > 1 && c->ssq_epi)
			wgrad_ssq(c, dw, dout, x, offsets, E, In, Out);
		else if (dw)
			RUN(c, (c->grouped_tma > 1 ? moe_cuda_grouped_tma_wgrad_store : moe_cuda_grouped_wgmma_wgrad_store)(
				       dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E, In, Out, store, c->s, &c->err));
		PROF_END(c);
		return;
	}
	if (dx)
		RUN(c, moe_cuda_grouped_dgrad((bf16_t *)dx, (const bf16_t *)dout, (const bf16_t *)w, offsets, rows, E,
					      In, Out, c->s, &c->err));
	if (dw)
		RUN(c, moe_cuda_grouped_wgrad(dw, (const bf16_t *)dout, (const bf16_t *)x, offsets, E, In, Out, c->s,
					      &c->err));
	PROF_END(c);
}

/* The routed experts' MLP as its ops: the rows gathered in expert order, the
 * gate_up GEMM, SwiGLU (session 20 removed MOE_CUDA_EXPERT_FUSE's variants,
 * which ran the gather and SwiGLU inside grouped_wgmma.cu's GEMMs: 4-10 ms a
 * seed-base step slower, tests/bench/RESULTS-cuda.md, session 11) */
static void o_expert_up_fwd(struct moe_backend *be, void *gu, void *h, const void *x, const int32_t *perm,
			    const void *w, const int32_t *offsets, void *xg, int NK, int K, int E, int D, int I)
{
	o_gather_rows(be, xg, x, perm, NK, K, D);
	o_grouped_fwd(be, gu, xg, w, offsets, E, D, 2 * I);
	o_swiglu_fwd(be, h, gu, NK, I, 1, 2 * I);
}

static void o_expert_down_bwd(struct moe_backend *be, void *dgu, void *h, float *dw, const void *dy, const void *gu,
			      const void *w, const int32_t *offsets, void *dh, int NK, int E, int I, int D)
{
	o_grouped_bwd(be, dh, NULL, dy, h, w, offsets, E, I, D);
	o_swiglu_bwd(be, dgu, h, dh, gu, NK, I, 1, 2 * I);
	o_grouped_bwd(be, NULL, dw, dy, h, w, offsets, E, I, D);
}

static void o_expert_up_bwd(struct moe_backend *be, void *dx, float *dw, const void *dgu, const void *x,
			    const int32_t *perm, const void *w, const int32_t *offsets, void *xg, bool xg_ready, int NK,
			    int K, int E, int D, int I)
{
	if (!xg_ready)
		o_gather_rows(be, xg, x, perm, NK, K, D);
	o_grouped_bwd(be, dx, dw, dgu, xg, w, offsets, E, D, 2 * I);
}

/* combine_bwd and expert_down_bwd as one, without the expert outputs (model.h):
 * dout's rows gathered unweighted, the down projection's input gradient, the
 * SwiGLU backward that applies the gate weights and takes their gradient
 * (swiglu.cu), and the weight gradient from the weighted h it wrote. */
static void o_expert_combine_down_bwd(struct moe_backend *be, void *dgu, void *h, float *dw, float *dtopk_w,
				      const void *dout, const void *gu, const float *topk_w, const int32_t *perm,
				      const void *w, const int32_t *offsets, void *dy, void *dh, int N, int K, int E,
				      int I, int D)
{
	struct cuda_ctx *c = CTX(be);
	const int NK = N * K;
	/* dout's rows and the gate weights in expert order, in one pass
	 * through route_group's inverse (or one computed here) */
	float *wg = (float *)scratch(c, S_WG, (size_t)NK * sizeof(float));
	{
		PROF(c, "gather");
		const int32_t *inv = route_inv(c, perm, NK, K);
		RUN(c, moe_cuda_gather_inv_w((bf16_t *)dy, (const bf16_t *)dout, inv, N, K, D, topk_w, wg, c->s,
					     &c->err));
		PROF_END(c);
	}
	o_grouped_bwd(be, dh, NULL, dy, NULL, w, offsets, E, I, D);
	{
		PROF(c, "swiglu_bwd_rows");
		RUN(c, moe_cuda_swiglu_bwd_rows((bf16_t *)dgu, (bf16_t *)h, dtopk_w, (const bf16_t *)dh, (const bf16_t *)gu,
						wg, perm, NK, I, c->s, &c->err));
		PROF_END(c);
	}
	o_grouped_bwd(be, NULL, dw, dy, h, w, offsets, E, I, D);
}

static void o_combine_fwd(struct moe_backend *be, void *out, const void *res, const void *yg, const float *topk_w,
			  const int32_t *inv, int N, int K, int D)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "combine");
	RUN(c, moe_cuda_combine_fwd((bf16_t *)out, (const bf16_t *)res, (const bf16_t *)yg, topk_w, inv, N, K, D, c->s,
				    &c->err));
	PROF_END(c);
}

static void o_combine_bwd(struct moe_backend *be, void *dyg, float *dtopk_w, const void *dout, const void *yg,
			  const float *topk_w, const int32_t *inv, int N, int K, int D)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "combine_bwd");
	RUN(c, moe_cuda_combine_bwd((bf16_t *)dyg, dtopk_w, (const bf16_t *)dout, (const bf16_t *)yg, topk_w, inv, N,
				    K, D, c->s, &c->err));
	PROF_END(c);
}

static void o_xent(struct moe_backend *be, void *dlogits, const void *logits, const int32_t *targets, int N, int V,
		   int ignore_id, float scale, double *loss_sum)
{
	struct cuda_ctx *c = CTX(be);
	float *rows = (float *)scratch(c, S_LOSS, (size_t)(N > 0 ? N : 1) * sizeof(float));
	PROF(c, "xent");
	RUN(c, moe_cuda_xent((bf16_t *)dlogits, rows, (const bf16_t *)logits, targets, N, V, ignore_id, scale, c->s,
			     &c->err));
	if (loss_sum) {
		double *acc = pend_slot(c, loss_sum, NULL, 1.0);
		if (acc)
			RUN(c, moe_cuda_sum_loss(acc, rows, targets, N, ignore_id, c->s, &c->err));
	}
	PROF_END(c);
}

static void o_zloss(struct moe_backend *be, void *dlogits, const void *logits, int ld, int N, int E, float scale,
		    double *loss)
{
	struct cuda_ctx *c = CTX(be);
	/* the model asks for the gradient only (router_fwd sums the value;
	 * the legacy kernels' value comes here, by rows) */
	float *rows = loss ? (float *)scratch(c, S_LOSS, (size_t)(N > 0 ? N : 1) * sizeof(float)) : NULL;
	PROF(c, "zloss");
	RUN(c, moe_cuda_zloss_ld((bf16_t *)dlogits, rows, (const bf16_t *)logits, ld, N, E, scale, c->s, &c->err));
	if (loss) {
		double *acc = pend_slot(c, loss, NULL, N > 0 ? 1.0 / N : 0.0);
		if (acc)
			RUN(c, moe_cuda_sum_loss(acc, rows, NULL, N, 0, c->s, &c->err));
	}
	PROF_END(c);
}

static void o_router_stats(struct moe_backend *be, float *psum, int32_t *cnt_valid, const float *probs,
			   const int32_t *topk_idx, const int32_t *ids, int pad_id, int N, int E, int K)
{
	struct cuda_ctx *c = CTX(be);
	void *sc = scratch(c, S_STATS, moe_cuda_router_stats_scratch(N, E));
	PROF(c, "router_stats");
	RUN(c, moe_cuda_router_stats(psum, cnt_valid, probs, topk_idx, ids, pad_id, N, E, K, sc, c->s, &c->err));
	PROF_END(c);
}

static void o_aux_dprobs(struct moe_backend *be, float *dprobs, const float *g_host, const int32_t *ids, int pad_id,
			 int N, int E)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "aux_dprobs");
	RUN(c, moe_cuda_aux_dprobs(dprobs, g_host, ids, pad_id, N, E, c->s, &c->err));
	PROF_END(c);
}

/* The epilogue records inside [x, x + n), valid, in address order (their
 * indices into use); their number. */
static int ssq_inside(struct cuda_ctx *c, const float *x, size_t n, int *use)
{
	int nu = 0;
	for (int i = 0; i < c->n_ssq; i++) {
		const struct ssq_rec *r = &c->ssq[i];
		if (!r->valid || r->p < x || r->p + r->n > x + n)
			continue;
		int j = nu++;
		for (; j > 0 && c->ssq[use[j - 1]].p > r->p; j--)
			use[j] = use[j - 1];
		use[j] = i;
	}
	return nu;
}

/* o_sumsq queued (MOE_CUDA_SUMSQ_BATCH): the sum's items in address
 * order, the gaps between the epilogue records as regions to read and
 * the records' per-tile sums as they are; sq_flush launches every queued
 * sum in two kernels (the optimizer queues a sum per span, then
 * synchronises: one pair of launches for all of them). */
static void sq_queue(struct cuda_ctx *c, const float *x, size_t n, double *out)
{
	struct moe_cuda_sq_batch *q = &c->sq;
	int use[N_SSQ];
	int nu = ssq_inside(c, x, n, use);
	if (q->nsum == MOE_CUDA_SQ_SUMS || q->nr + nu + 1 > MOE_CUDA_SQ_REGIONS ||
	    q->nitems + 2 * nu + 1 > MOE_CUDA_SQ_ITEMS)
		sq_flush(c);
	double *acc = pend_slot(c, out, NULL, 1.0);
	if (!acc)
		return;
	int k = q->nsum++;
	q->acc[k] = acc;
	q->first[k] = q->nitems;
	const float *at = x;
	for (int j = 0; j <= nu; j++) {
		const float *end = j < nu ? c->ssq[use[j]].p : x + n;
		if (end > at) { /* a gap to read (an empty span has no item: its sum is 0) */
			q->rx[q->nr] = at;
			q->rn[q->nr] = (size_t)(end - at);
			q->blk[q->nr + 1] = q->blk[q->nr] + moe_cuda_sumsq_blocks((size_t)(end - at));
			q->ireg[q->nitems++] = q->nr++;
			c->ssq_read += (size_t)(end - at);
		}
		if (j < nu) {
			const struct ssq_rec *r = &c->ssq[use[j]];
			q->ireg[q->nitems] = -1;
			q->ip[q->nitems] = r->part;
			q->in[q->nitems++] = r->nparts;
			at = r->p + r->n;
			c->ssq_from_epi += r->n;
		}
	}
	q->first[k + 1] = q->nitems;
}

static void sq_flush(struct cuda_ctx *c)
{
	struct moe_cuda_sq_batch *q = &c->sq;
	if (!q->nsum)
		return;
	PROF(c, "sumsq");
	unsigned nb = q->blk[q->nr];
	double *part = nb ? (double *)scratch(c, S_SUMSQ, (size_t)nb * sizeof(double)) : NULL;
	if (!nb || part)
		RUN(c, moe_cuda_sumsq_batch(part, q, c->s, &c->err));
	PROF_END(c);
	q->nsum = q->nr = q->nitems = 0;
	q->blk[0] = 0;
}

/* One more segment of o_sumsq's sum (the segments go out 16 at a time). */
static void ssq_seg(struct cuda_ctx *c, double *acc, struct moe_cuda_ssq_segs *sg, const double *p, size_t n)
{
	if (sg->count == MOE_CUDA_SSQ_SEGS) {
		RUN(c, moe_cuda_sumsq_add_segs(acc, sg, c->s, &c->err));
		sg->count = 0;
		sg->store = 0; /* the next batches add */
	}
	sg->p[sg->count] = p;
	sg->n[sg->count++] = n;
}

/* The sum of squares of x[0, n): where weight-gradient epilogues stored
 * regions inside it with their sums of squares (and nothing changed them
 * since), those regions' per-tile partials; the gaps between them read
 * into per-block partials; all of them summed in address order (fixed for
 * a given table: deterministic).  Without such regions, one read of x. */
static void o_sumsq(struct moe_backend *be, const float *x, size_t n, double *out)
{
	struct cuda_ctx *c = CTX(be);
	if (c->sq_batch) {
		sq_queue(c, x, n, out);
		return;
	}
	int use[N_SSQ];
	int nu = ssq_inside(c, x, n, use);
	if (nu == 0) {
		void *sc = scratch(c, S_SUMSQ, moe_cuda_sumsq_scratch(n));
		PROF(c, "sumsq");
		double *acc = pend_slot(c, out, NULL, 1.0);
		if (acc)
			RUN(c, moe_cuda_sumsq(acc, sc, x, n, c->s, &c->err));
		PROF_END(c);
		c->ssq_read += n;
		return;
	}
	size_t need = 0, off = 0;
	const float *at = x;
	for (int k = 0; k <= nu; k++) {
		const float *end = k < nu ? c->ssq[use[k]].p : x + n;
		if (end > at)
			need += moe_cuda_sumsq_scratch((size_t)(end - at)) / sizeof(double);
		if (k < nu)
			at = c->ssq[use[k]].p + c->ssq[use[k]].n;
	}
	double *sc = need ? (double *)scratch(c, S_SUMSQ, need * sizeof(double)) : NULL;
	PROF(c, "sumsq");
	double *acc = pend_slot(c, out, NULL, 1.0);
	struct moe_cuda_ssq_segs sg;
	sg.count = 0;
	sg.store = 1; /* the slot is not cleared: the first batch stores */
	at = x;
	for (int k = 0; acc && (sc || !need) && k <= nu; k++) {
		const float *end = k < nu ? c->ssq[use[k]].p : x + n;
		if (end > at) {
			size_t m = (size_t)(end - at), np = moe_cuda_sumsq_scratch(m) / sizeof(double);
			RUN(c, moe_cuda_sumsq_partials(sc + off, at, m, c->s, &c->err));
			ssq_seg(c, acc, &sg, sc + off, np);
			off += np;
			c->ssq_read += m;
		}
		if (k < nu) {
			const struct ssq_rec *r = &c->ssq[use[k]];
			ssq_seg(c, acc, &sg, r->part, r->nparts);
			at = r->p + r->n;
			c->ssq_from_epi += r->n;
		}
	}
	if (acc && sg.count)
		RUN(c, moe_cuda_sumsq_add_segs(acc, &sg, c->s, &c->err));
	PROF_END(c);
}

extern "C" void moe_cuda_sumsq_counts(struct moe_backend *be, size_t *from_epilogue, size_t *read)
{
	*from_epilogue = CTX(be)->ssq_from_epi;
	*read = CTX(be)->ssq_read;
}

extern "C" size_t moe_cuda_dq_tile_reads(struct moe_backend *be)
{
	return CTX(be)->dq_tiles;
}

static void o_axpy(struct moe_backend *be, float *y, const float *x, size_t n, float a)
{
	struct cuda_ctx *c = CTX(be);
	mark_stale(c, y, n * 4);
	PROF(c, "axpy");
	RUN(c, moe_cuda_axpy(y, x, n, a, c->s, &c->err));
	PROF_END(c);
}

static void o_scale_act(struct moe_backend *be, void *x, size_t n, float a)
{
	struct cuda_ctx *c = CTX(be);
	PROF(c, "scale_act");
	RUN(c, moe_cuda_scale_bf16((bf16_t *)x, n, a, c->s, &c->err));
	PROF_END(c);
}

static void o_adamw(struct moe_backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n,
		    float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t)
{
	struct cuda_ctx *c = CTX(be);
	bf16_t *p16 = (p >= c->p32 && p < c->p32 + c->n) ? c->p16 + (p - c->p32) : NULL;
	size_t lo, hi;
	int r = packed_hit(c, p, n * 4, &lo, &hi);
	if (r >= 0 && (lo < c->pk_lo[r] || hi > c->pk_hi[r])) {
		packed_misuse(c, "an AdamW span across the edge of", lo);
		return;
	}
	/* on the optimizer stream: after the main stream's work so far (its
	 * first span of a step), and the main stream waits for it as above */
	cudaStream_t s = c->s;
	if (c->so && p16) {
		c->want_all = 0; /* the optimizer's own accessor calls */
		if (c->n_ospan == N_OSPAN)
			opt_wait_all(c);
		if (c->n_ospan == c->n_owaited) { /* a new step's first span */
			opt_wait_all(c);
			RUN(c, CUDA_OK(cudaEventRecord(c->ev_main, c->s), &c->err));
			RUN(c, CUDA_OK(cudaStreamWaitEvent(c->so, c->ev_main, 0), &c->err));
		}
		s = c->so;
	}
	PROF(c, "adamw");
	if (r >= 0)
		RUN(c, moe_cuda_adamw_packed(p16, packed_low(c, r, lo), g, gscale, m, v, n, lr, beta1, beta2, eps,
					     weight_decay, t, s, &c->err));
	else
		RUN(c, moe_cuda_adamw(p, p16, g, gscale, m, v, n, lr, beta1, beta2, eps, weight_decay, t, s, &c->err));
	PROF_END(c);
	if (s == c->so) {
		int k = c->n_ospan++;
		c->os_lo[k] = lo;
		c->os_hi[k] = hi;
		c->os_m[k] = m;
		c->os_v[k] = v;
		RUN(c, CUDA_OK(cudaEventRecord(c->ev_span[k], c->so), &c->err));
	}
}

/* One layer's selection-bias step queued on the stream (the directions go
 * in the launch); more experts than a launch carries: the model's host
 * path. */
static bool o_balance_bias(struct moe_backend *be, float *bias, const int8_t *dir, int E, float u, float clamp)
{
	struct cuda_ctx *c = CTX(be);
	if (E > MOE_CUDA_BALANCE_MAX_E)
		return false;
	bf16_t *b16 = (bias >= c->p32 && bias < c->p32 + c->n) ? c->p16 + (bias - c->p32) : NULL;
	size_t lo;
	if (packed_hit(c, bias, (size_t)E * 4, &lo) >= 0) {
		packed_misuse(c, "a balancing step on", lo);
		return true;
	}
	PROF(c, "balance_bias");
	RUN(c, moe_cuda_balance_bias(bias, b16, dir, E, u, clamp, c->s, &c->err));
	PROF_END(c);
	return true;
}

/* How many master ranges a CUDA backend keeps packed (tests). */
extern "C" int moe_cuda_packed_ranges(const struct moe_backend *be) { return CTX(be)->n_packed; }

extern "C" size_t moe_cuda_masters_returned(const struct moe_backend *be)
{
	const struct cuda_ctx *c = CTX(be);
	size_t n = 0;
	for (size_t i = 0; c->p32_h && i < c->p32_nch; i++)
		n += c->p32_h[i] == 0;
	return n * c->p32_chunk;
}

/* Whether a CUDA backend runs AdamW on the optimizer stream (tests). */
extern "C" bool moe_cuda_opt_stream(const struct moe_backend *be) { return CTX(be)->so != NULL; }

extern "C" struct moe_backend *moe_backend_cuda(struct moe_error *err)
{
	int ndev = 0;
	cudaError_t e = cudaGetDeviceCount(&ndev);
	if (e != cudaSuccess || ndev == 0) {
		cudaGetLastError();
		moe_error_set(err, MOE_EUNSUPPORTED, "backend 'cuda': no CUDA device (%s)",
			      e != cudaSuccess ? cudaGetErrorString(e) : "none found");
		return NULL;
	}
	struct moe_backend *be = (struct moe_backend *)calloc(1, sizeof(*be));
	struct cuda_ctx *c = (struct cuda_ctx *)calloc(1, sizeof(*c));
	if (!be || !c) {
		free(be);
		free(c);
		moe_error_set(err, MOE_ENOMEM, "backend 'cuda': out of memory");
		return NULL;
	}
	be->ctx = c;
	{
		/* the optimizer stream (not with MOE_CUDA_PROFILE; MOE_CUDA_OPT_STREAM=0:
		 * none) at the lowest priority, the main stream at the highest (its
		 * blocks go first; at one priority, steps were 1-2 ms slower) */
		const char *pe = getenv("MOE_CUDA_PROFILE");
		bool os = !env_is("MOE_CUDA_OPT_STREAM", "0") && !(pe && *pe && strcmp(pe, "0"));
		int lo_pri = 0, hi_pri = 0;
		if (os && CUDA_OK(cudaDeviceGetStreamPriorityRange(&lo_pri, &hi_pri), err))
			goto fail;
		if (os && (CUDA_OK(cudaStreamCreateWithPriority(&c->so, cudaStreamNonBlocking, lo_pri), err) ||
			   CUDA_OK(cudaEventCreateWithFlags(&c->ev_main, cudaEventDisableTiming), err)))
			goto fail;
		for (int i = 0; os && i < N_OSPAN; i++)
			if (CUDA_OK(cudaEventCreateWithFlags(&c->ev_span[i], cudaEventDisableTiming), err))
				goto fail;
		if (os ? CUDA_OK(cudaStreamCreateWithPriority(&c->s, cudaStreamNonBlocking, hi_pri), err)
		       : CUDA_OK(cudaStreamCreateWithFlags(&c->s, cudaStreamNonBlocking), err))
			goto fail;
	}
	if (!(c->blas = moe_cuda_blas_new(c->s, err)))
		goto fail;
	if (CUDA_OK(cudaMalloc((void **)&c->dres, sizeof(double) * 2 * N_PEND), err) ||
	    CUDA_OK(cudaMalloc((void **)&c->one_off, 2 * sizeof(int32_t)), err) ||
	    CUDA_OK(cudaMallocHost((void **)&c->hres, sizeof(double) * 2 * N_PEND), err))
		goto fail;
	{
		const char *pv = getenv("MOE_CUDA_PROFILE");
		c->qk_split = env_is("MOE_CUDA_QKNORM_ROPE", "split");
		c->dq_fuse = !env_is("MOE_CUDA_DQ_FUSE", "0");
		const char *gv = getenv("MOE_CUDA_GROUPED");
		c->prof = pv && *pv && strcmp(pv, "0") != 0;
		const char *wv = getenv("MOE_CUDA_WGRAD");
		c->wgrad_mode = !wv || !strcmp(wv, "kernel") ? WG_KERNEL
				: !strcmp(wv, "cublas")   ? WG_LOOP
				: !strcmp(wv, "wgmma")    ? WG_WGMMA
							  : -1;
		if (c->wgrad_mode < 0) {
			moe_error_set(err, MOE_EINVAL, "MOE_CUDA_WGRAD='%s': expected kernel, cublas or wgmma", wv);
			goto fail;
		}
		if (!gv)
			gv = moe_cuda_grouped_tma_supported()     ? "tma"
			     : moe_cuda_grouped_wgmma_supported() ? "wgmma"
								  : "cublas-grouped";
		/* "tma": the wgmma path with grouped_tma.cu's kernels for all
		 * three; "tma-fd": for the forward and input gradient only */
		c->grouped_tma = !strcmp(gv, "tma") ? 2 : !strcmp(gv, "tma-fd") ? 1 : 0;
		if (c->grouped_tma)
			gv = "wgmma";
		c->grouped_mode = !strcmp(gv, "cublas-grouped") ? GM_CUBLAS_GROUPED
				  : !strcmp(gv, "kernel")  ? GM_KERNEL
				  : !strcmp(gv, "cublas")          ? GM_CUBLAS_LOOP
				  : !strcmp(gv, "wgmma")           ? GM_WGMMA
								   : -1;
		if (c->grouped_mode < 0) {
			moe_error_set(err, MOE_EINVAL,
				      "MOE_CUDA_GROUPED='%s': expected kernel, cublas-grouped, cublas, wgmma, tma or tma-fd", gv);
			goto fail;
		}
		/* gradients by overwrite (model.h); MOE_CUDA_GRAD_OVERWRITE=0 clears
		 * them with a memset each step instead (comparisons) */
		be->grad_overwrite_ok = !env_is("MOE_CUDA_GRAD_OVERWRITE", "0");
		/* the router's linear merged with the shared experts' gate_up
		 * (model.h); MOE_CUDA_ROUTER_MERGE=0: apart (comparisons) */
		be->router_merge_ok = !env_is("MOE_CUDA_ROUTER_MERGE", "0") && !moe_cuda_route_legacy_on();
		if (moe_cuda_attention_fwd_env_check(err) || moe_cuda_attention_bwd_env_check(err))
			goto fail;
		/* variants removed after they lost (sessions 19-20): a script that
		 * still asks for one would measure the default without knowing.
		 * The value that asked for the default is taken. */
		static const struct {
			const char *name, *dflt, *record;
			int session;
		} gone[] = {{"MOE_CUDA_TMA_FUSE", "0", "RESULTS-tma.md", 19},
			    {"MOE_CUDA_TMA_FUSE_DG", "0", "RESULTS-tma.md", 19},
			    {"MOE_CUDA_TMA_FUSE_CFG", "0", "RESULTS-tma.md", 19},
			    {"MOE_CUDA_GROUPED_TMA_CFG", "0", "RESULTS-tma.md", 19},
			    {"MOE_CUDA_EXPERT_FUSE", "0", "RESULTS-cuda.md", 20},
			    {"MOE_CUDA_TMA_TAILSKIP", "1", "RESULTS-tma.md", 20}};
		for (size_t i = 0; i < sizeof gone / sizeof gone[0]; i++) {
			const char *v = getenv(gone[i].name);
			if (v && *v && strcmp(v, gone[i].dflt)) {
				moe_error_set(err, MOE_EINVAL,
					      "%s='%s': that variant was removed in session %d (it lost; "
					      "tests/bench/%s); unset it",
					      gone[i].name, v, gone[i].session, gone[i].record);
				goto fail;
			}
		}
		c->ssq_epi = !env_is("MOE_CUDA_SUMSQ_EPI", "0");
		c->sq_batch = !env_is("MOE_CUDA_SUMSQ_BATCH", "0");
		if (!env_long("MOE_CUDA_WGRAD_STORE_MIN", (long)4 << 20, 0, LONG_MAX, &c->wgrad_store_min)) {
			moe_error_set(err, MOE_EINVAL, "MOE_CUDA_WGRAD_STORE_MIN='%s': expected a number of elements",
				      getenv("MOE_CUDA_WGRAD_STORE_MIN"));
			goto fail;
		}
		static const char *const qkv_names[] = {"packed", "batched", "split"}, *const yg_names[] = {"free", "keep"};
		int qkv, yg;
		if (!env_choice("MOE_CUDA_QKV", qkv_names, 3, &qkv)) {
			moe_error_set(err, MOE_EINVAL, "MOE_CUDA_QKV='%s': expected packed, batched or split",
				      getenv("MOE_CUDA_QKV"));
			goto fail;
		}
		if (!env_choice("MOE_CUDA_YG", yg_names, 2, &yg)) {
			moe_error_set(err, MOE_EINVAL, "MOE_CUDA_YG='%s': expected free or keep", getenv("MOE_CUDA_YG"));
			goto fail;
		}
		c->qkv_packed = qkv == 0;
		c->qkv_split = qkv == 2;
		c->yg_keep = yg == 1;
		c->narrow_ok = moe_cuda_grouped_wgmma_supported() && !env_is("MOE_CUDA_NARROW", "cublas");
		c->det = !env_is("MOE_CUDA_DETERMINISTIC", "0"); /* the default: bit-reproducible steps */
		c->clr_off = env_is("MOE_CUDA_GRAD_CLEAR", "0");
		c->res_copy = env_is("MOE_CUDA_RESGEMM", "0");
		c->pack_off = env_is("MOE_CUDA_PACKED_MASTERS", "0");
	}
	if (c->prof)
		for (int i = 0; i < 4096; i++)
			if (CUDA_OK(cudaEventCreate(&c->ev[0][i]), err) || CUDA_OK(cudaEventCreate(&c->ev[1][i]), err))
				goto fail;
	be->name = "cuda";
	be->act_size = 2;
	be->alloc = b_alloc;
	be->free = b_free;
	be->zero = b_zero;
	be->copy = b_copy;
	be->to_host_later = b_to_host_later;
	be->to_host = b_to_host;
	be->from_host = b_from_host;
	be->sync = b_sync;
	be->destroy = b_destroy;
	be->params_alloc = b_params_alloc;
	be->master = b_master;
	be->grad = b_grad;
	be->param = b_param;
	be->params_updated = b_params_updated;
	be->embedding_fwd = o_embedding_fwd;
	be->embedding_bwd = o_embedding_bwd;
	be->rmsnorm_fwd = o_rmsnorm_fwd;
	be->rmsnorm_bwd = o_rmsnorm_bwd;
	be->rmsnorm_bwd_add = o_rmsnorm_bwd_add;
	be->linear_fwd = o_linear_fwd;
	be->linear_bwd = o_linear_bwd;
	be->linear_fwd_add = o_linear_fwd_add;
	be->linear_bwd_add = o_linear_bwd_add;
	be->qknorm_rope_fwd = o_qknorm_rope_fwd;
	be->qknorm_rope_bwd = o_qknorm_rope_bwd;
	be->attention_fwd = o_attention_fwd;
	be->attention_bwd = o_attention_bwd;
	if (c->qkv_packed) {
		be->attention_qknorm_fwd = o_attention_qknorm_fwd;
		be->attention_qknorm_bwd = o_attention_qknorm_bwd;
	}
	/* MOE_CUDA_SHARED_MERGE=0: the shared experts one by one (comparisons) */
	if (!env_is("MOE_CUDA_SHARED_MERGE", "0"))
		be->copy_rows = o_copy_rows;
	be->swiglu_gu_fwd = o_swiglu_fwd;
	be->swiglu_gu_bwd = o_swiglu_bwd;
	be->router_fwd = o_router_fwd;
	be->router_bwd = o_router_bwd;
	be->route_group = o_route_group;
	be->gather_rows = o_gather_rows;
	be->scatter_add_rows = o_scatter_add_rows;
	be->grouped_linear_fwd = o_grouped_fwd;
	be->expert_up_fwd = o_expert_up_fwd;
	be->expert_down_bwd = o_expert_down_bwd;
	be->expert_up_bwd = o_expert_up_bwd;
	be->combine_fwd = o_combine_fwd;
	be->combine_bwd = o_combine_bwd;
	/* without the experts' outputs (model.h); MOE_CUDA_YG=keep: combine_bwd
	 * and expert_down_bwd (comparisons) */
	if (!c->yg_keep)
		be->expert_combine_down_bwd = o_expert_combine_down_bwd;
	be->xent = o_xent;
	be->zloss = o_zloss;
	be->router_stats = o_router_stats;
	be->aux_dprobs = o_aux_dprobs;
	be->sumsq = o_sumsq;
	be->axpy = o_axpy;
	be->scale_act = o_scale_act;
	be->adamw = o_adamw;
	be->masters_pack = b_masters_pack;
	be->balance_bias = o_balance_bias;
	if (!c->res_copy)
		be->linear_fwd_res = o_linear_fwd_res;
	if (!c->clr_off)
		be->grad_cleared = b_grad_cleared;
	if (!c->qkv_split) { /* MOE_CUDA_QKV=split: the model's three linears */
		be->linear_fwd_multi = o_linear_fwd_multi;
		be->linear_wgrad_multi = o_linear_wgrad_multi;
	}
	be->status = b_status;
	return be;
fail:
	b_destroy(be);
	return NULL;
}
