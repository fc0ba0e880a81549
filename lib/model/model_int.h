/*
 * lib/model internals shared by model.c and checkpoint.c (not installed).
 */
#ifndef MOE_MODEL_INT_H
#define MOE_MODEL_INT_H

#include "model/model.h"

/* One block's activations (backend memory).  In training every layer keeps
 * its own copy of what backward needs, except xg, h, h_e and h_s: those
 * point at one buffer shared by all layers and are recomputed in backward
 * from what is kept (a gather, or inside SwiGLU's backward), which saves
 * about a quarter of the activation memory.  Inference shares ln1/ln2 too. */
struct layer_acts {
	void *ln1;            /* (N, D) */
	float *rstd1;         /* (N) */
	void *qraw, *kraw;    /* (N, D) projections before QK-norm, v after them (3
				 buffers); packed (qkv_packed): qraw (N, 3D) holds all
				 three side by side, kraw and v unused */
	void *q, *k, *v;      /* (N, D) = (B, T, H, Dh): q, k normed and rotated */
	float *rstdq, *rstdk; /* (N) */
	void *att;            /* (N, D) attention output before o_proj */
	float *lse;           /* (B, H, T) */
	void *xmid;           /* (N, D) residual after attention */
	void *ln2;            /* (N, D) */
	float *rstd2;         /* (N) */
	void *gu, *h;         /* dense: (N, 2Id), (N, Id) */
	void *rlogits;        /* (N, E) router logits */
	float *probs;         /* (N, E) */
	int32_t *topk_idx;    /* (N, K) */
	float *topk_w;        /* (N, K) */
	int32_t *offsets;     /* (E+1) */
	int32_t *perm, *inv;  /* (N*K) */
	void *xg;             /* (N*K, D) tokens grouped by expert (per layer with yg_free) */
	void *gu_e, *h_e;     /* (N*K, 2I), (N*K, I) */
	void *yg;             /* (N*K, D) the experts' outputs (one buffer for all layers with
				 yg_free) */
	void *gu_s, *h_s;     /* shared: (S, N, 2Is), (S, N, Is); merged (shared_merged):
				 (N, S, 2Is), (N, S, Is) */
	void *wdn_s;          /* merged: the S down projections side by side, (D, S Is) */
};

struct graph_bufs {
	void *resid;          /* (L+1, N, D) residual stream at each block input and the end */
	int32_t *ids, *tgt;   /* (N) */
	void *lnf;            /* (N, D) */
	float *rstdf;         /* (N) */
	void *logits;         /* (lc, V): one chunk of rows (dlogits in a training forward) */
	int32_t *last_rows;   /* (B) */
	void *lnf_last;       /* (B, D) */
	float *hgrad;         /* (V, D) LM head weight gradient of the last training forward */
	/* backward scratch */
	void *dx, *d1, *d2, *dq, *dk, *dv; /* (N, D) */
	void *dqkv;                        /* (3, N, D): q, k, v projections' output gradients (dv inside) */
	void *dgu, *dh;       /* (N, 2W), (N, W), W = max(Id, Is) */
	void *dyg, *dxg;      /* (N*K, D) */
	void *dh_e, *dgu_e;   /* (N*K, I), (N*K, 2I) */
	float *dtopk_w;       /* (N, K) */
	float *dprobs;        /* (N, E) */
	void *drl;            /* (N, E) */
};

#define MAX_BUFS 4096

struct moe_model {
	struct moe_config cfg;
	struct moe_backend *be;
	int Lm, Is;
	/* parameter table */
	struct moe_param *params;
	size_t n_params, n_floats;
	struct moe_layer_offsets *layers;
	size_t off_embed, off_norm, off_head;
	/* activations */
	void *bufs[MAX_BUFS];
	int n_bufs;
	bool alloc_failed;
	struct layer_acts *la;
	struct graph_bufs g;
	int cap_N, cap_sets;
	bool cap_train;
	bool yg_free;         /* training with expert_combine_down_bwd: xg kept per layer, not yg */
	int lc;               /* rows of one logits chunk */
	int lc_req;           /* moe_model_set_logits_chunk (0: LOGITS_CHUNK) */
	enum moe_recompute recompute;
	bool fwd_use_bias;    /* the last forward routed with the selection bias */
	double *ce_part;      /* (chunks) host: deferred xent results */
	double *zl;           /* (Lm) host: deferred z-loss of each MoE layer */
	/* last forward */
	int B, T;
	bool fwd_valid;
	bool grad_fresh; /* gradients are zero by contract, not in memory (grad_overwrite_ok) */
	bool head_in_grad; /* the last training forward stored the LM head's weight gradient in its
			      slot of the gradients (grad_fresh), not in g.hgrad */
	int64_t n_valid, n_rows_valid;
	double ce, aux, z, aux_coef;
	int64_t *counts; /* (Lm, E) host */
	int32_t *st_host; /* (2 Lm E) host: st_cntv as read back */
	float *psum;     /* (Lm, E) host */
	int32_t *cntv;   /* (Lm, E) host */
	/* the same statistics in backend memory, (Lm, E) each, whatever the
	 * activation sets: a forward reads them back in three transfers */
	float *st_psum;
	int32_t *st_cntv, *st_cnt;
};

#endif
