/*
 * lib/model: the OLMoE-family model.  Configuration (HF OlmoeConfig names plus
 * our own keys), the parameter table (one allocation for all parameters, one
 * for all gradients, named tensors with HF OLMoE names), the backend
 * interface, forward with loss parts and routing capture, backward, the
 * loss-free-balancing bias update, and checkpoint I/O (safetensors, HF
 * sharded checkpoints).
 *
 * ---------------------------------------------------------------------------
 * Design: one graph, two backends.
 *
 * model.c walks the layers and decides WHAT is computed (which buffers, which
 * op, in which order, with which shapes).  A backend (struct moe_backend)
 * decides HOW: it owns all device memory and implements a table of ops that
 * mirror lib/model/ops.h.  The CPU backend (moe_backend_cpu()) is ops.h
 * itself on host memory in fp32.  The CUDA backend (kernels/) fills the same
 * table with launchers on one stream; it chooses its own activation dtype
 * (bf16) for buffers of kind MOE_BUF_ACT, while MOE_BUF_F32 and MOE_BUF_I32
 * buffers are always fp32 / int32.  Parameters: the backend keeps an fp32
 * master copy and fp32 gradients (one flat buffer each, laid out as the
 * parameter table says) and may keep a compute copy in its activation dtype;
 * ops receive parameters through be->param(), gradients through be->grad().
 *
 * Ops return nothing: a CPU op cannot fail; a CUDA op records the first error
 * (sticky) and be->sync() reports it.  The model calls sync() at the end of
 * forward and backward and whenever it reads results back.
 * ---------------------------------------------------------------------------
 *
 * Layer layout: model.layers.0 .. model.layers.(num_hidden_layers-1); the
 * first n_dense_layers are dense SwiGLU blocks, the rest are MoE blocks.  MoE
 * layer index lm = layer - n_dense_layers (0 .. n_moe_layers-1) indexes the
 * routing capture, the expert counts and the selection biases.
 *
 * Block (pre-norm, both kinds):
 *   a  = RMSNorm_in(x)
 *   q  = RoPE(RMSNorm_q(a Wq^T)), k = RoPE(RMSNorm_k(a Wk^T)), v = a Wv^T
 *        (QK-norm over the full width D, before the head split and RoPE)
 *   x += Attn(q, k, v) Wo^T                (causal, scale 1/sqrt(Dh))
 *   m  = RMSNorm_post(x)
 *   x += Dense(m) | MoE(m)
 * MoE(m) = sum_k w_k Expert_{i_k}(m) + sum_s Shared_s(m), router as in ops.h
 * (softmax over all E in fp32, top-k of logits + selection bias, weights from
 * the unbiased softmax, optional renormalisation).  Final: RMSNorm, untied
 * LM head, cross-entropy ignoring pad_token_id (mean over valid targets).
 *
 * Losses: total = ce + aux_coef * aux + router_z_loss_coef * z, where
 *   aux "switch"     (HF/seed, pooled over layers): E * sum_e f_e * Pbar_e with
 *                    f_e = (count of e over all MoE layers and top-k slots) / R,
 *                    Pbar_e = (sum of probs of e over all MoE layers) / R,
 *                    R = number of non-pad rows times n_moe_layers.  Equals K at
 *                    perfect balance.  (The seed computes Pbar from the
 *                    softmax of the BIASED logits when loss-free balancing is
 *                    on; we use the unbiased router probabilities.)
 *   aux "megablocks" (OLMoE): mean over MoE layers of
 *                    E/(T*K) * sum_e c_{l,e} * Pbar_{l,e}; 1 at perfect balance.
 *   z  = sum over MoE layers of mean over rows of logsumexp(router logits)^2.
 *   Rows whose INPUT token is pad_token_id are excluded from the aux statistics.
 */
#ifndef MOE_MODEL_H
#define MOE_MODEL_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "core/core.h"

/* ---- configuration -------------------------------------------------------- */

enum moe_aux_form {
	MOE_AUX_SWITCH = 0,     /* "switch": HF/Mixtral form pooled over layers (the seed's) */
	MOE_AUX_MEGABLOCKS = 1, /* "megablocks": per-layer, mean over layers (OLMoE's) */
};

/* Router kinds.  Adding one is a local change:
 *   1. an enum value here and its name in config.c (parser, moe_router_kind_name);
 *   2. its extra tensors, if any, in build_table() (model.c) with HF-style names;
 *   3. its forward/backward as ops: ops.h + ops.c (CPU), a slot in struct
 *      moe_backend, the CUDA launcher in kernels/;
 *   4. a branch at the router step of block_fwd()/block_bwd() (model.c) that
 *      produces topk_idx, topk_w and probs (and consumes their gradients)
 *      like softmax_topk does; grouping, experts and losses are unchanged;
 *   5. a finite-difference case in tests/model/test_grad.c and the parity
 *      equations in tests/bench/parity_hf.py. */
enum moe_router_kind {
	MOE_ROUTER_SOFTMAX_TOPK = 0, /* "softmax_topk" */
};

#define MOE_NAME_MAX 96

struct moe_config {
	/* HF OlmoeConfig keys */
	int vocab_size;              /* embedding / LM-head rows */
	int hidden_size;             /* D */
	int intermediate_size;       /* I: routed expert SwiGLU width */
	int num_hidden_layers;       /* all blocks: dense ones first, then MoE */
	int num_attention_heads;     /* H (num_key_value_heads must equal it) */
	int num_experts;             /* E */
	int num_experts_per_tok;     /* K */
	bool norm_topk_prob;         /* renormalise the top-k weights */
	double rms_norm_eps;         /* 1e-5 */
	double rope_theta;           /* 10000 */
	int max_position_embeddings; /* longest sequence the model is meant for */
	double router_aux_loss_coef; /* aux coefficient at step 0 */
	int pad_token_id;            /* ignored target, zero embedding row; -1 none */
	int eos_token_id;            /* -1 none */
	int bos_token_id;            /* -1 none (null in JSON) */
	double initializer_range;    /* init std, 0.02 */
	/* ours */
	int n_shared_experts;                /* always-on SwiGLU experts per MoE layer */
	int shared_expert_intermediate_size; /* their width (default intermediate_size) */
	int n_dense_layers;                  /* dense blocks before the MoE blocks */
	int dense_intermediate_size;         /* their SwiGLU width */
	bool loss_free_balancing;            /* selection bias on during training */
	double balance_update_rate;          /* u: b += u * sign(mean count - count) */
	double balance_bias_clamp;           /* |b| <= clamp after each update (5) */
	enum moe_aux_form aux_loss_form;     /* "switch" | "megablocks" */
	double router_aux_loss_coef_end;     /* coefficient after the decay */
	int64_t router_aux_loss_decay_steps; /* linear decay length; 0: constant */
	double router_z_loss_coef;           /* 0: off */
	enum moe_router_kind router_kind;
};

/* Fill cfg with the defaults (the OLMoE-1B-7B shape, aux "switch" 0.01,
 * no z-loss, no shared/dense, no balancing). */
void moe_config_defaults(struct moe_config *cfg);
/* Parse a JSON object over the defaults.  Unknown keys and bad values are
 * errors naming `where` and the key.  Keys that transformers writes into
 * config.json and that do not change the model (architectures, torch_dtype,
 * transformers_version, use_cache, output_router_logits, ...) are accepted;
 * those that would change it (tie_word_embeddings true, attention_bias true,
 * clip_qkv, num_key_value_heads != heads, hidden_act != silu) are errors. */
int moe_config_from_json(struct moe_config *cfg, const json_t *obj, const char *where,
			 struct moe_error *err);
/* Load a config file, a checkpoint directory (DIR/config.json) or a preset
 * name ("tiny", "seed-base", "olmoe-1b-7b": a name without '/' or ".json"
 * that is not an existing file is looked up as
 * $MOE_DATADIR/models/NAME.json, else the compiled-in datadir). */
int moe_config_load(struct moe_config *cfg, const char *path_or_name, struct moe_error *err);
/* Check consistency (divisibility, ranges); errors name the key. */
int moe_config_validate(const struct moe_config *cfg, const char *where, struct moe_error *err);
/* A new JSON object with every key: the HF OlmoeConfig keys (model_type
 * "olmoe", architectures, num_key_value_heads, tie_word_embeddings false, ...)
 * that transformers' OlmoeConfig accepts, plus ours.  NULL on ENOMEM. */
json_t *moe_config_to_json(const struct moe_config *cfg);
/* Write config.json atomically. */
int moe_config_save(const struct moe_config *cfg, const char *path, struct moe_error *err);
/* The seed's linear aux coefficient: start + (step/decay) * (end - start)
 * while step < decay_steps, then end (decay_steps <= 0: always start). */
double moe_aux_coef(double start, double end, int64_t decay_steps, int64_t step);
/* The same with the config's router_aux_loss_coef, router_aux_loss_coef_end
 * (NaN: no decay target, keep the start) and router_aux_loss_decay_steps. */
double moe_config_aux_coef(const struct moe_config *cfg, int64_t step);
const char *moe_aux_form_name(enum moe_aux_form f);
const char *moe_router_kind_name(enum moe_router_kind k);
static inline int moe_config_n_moe_layers(const struct moe_config *c)
{
	return c->num_hidden_layers - c->n_dense_layers;
}

/* ---- parameter table ------------------------------------------------------ */

enum moe_param_kind {
	MOE_P_EMBED,      /* model.embed_tokens.weight (V, D) */
	MOE_P_NORM,       /* RMSNorm weights (D): init 1 */
	MOE_P_LINEAR,     /* attention, router, dense MLP, LM head */
	MOE_P_EXPERT,     /* routed expert weights */
	MOE_P_SHARED,     /* shared expert weights */
	MOE_P_BIAS,       /* selection bias (E): fp32 buffer, not trained */
};

/*
 * One named tensor inside the flat parameter buffer (fp32, `offset` in
 * floats).  Names are the HF OLMoE names:
 *   model.embed_tokens.weight                               (V, D)
 *   model.layers.N.input_layernorm.weight                   (D)
 *   model.layers.N.self_attn.{q,k,v,o}_proj.weight          (D, D)   q,k,v,o contiguous
 *   model.layers.N.self_attn.{q,k}_norm.weight              (D)
 *   model.layers.N.post_attention_layernorm.weight          (D)
 *   dense layers:  model.layers.N.mlp.{gate,up}_proj.weight (Id, D)  gate then up: (2Id, D)
 *                  model.layers.N.mlp.down_proj.weight      (D, Id)
 *   MoE layers:    model.layers.N.mlp.gate.weight           (E, D)   router
 *                  model.layers.N.mlp.experts.X.{gate,up}_proj.weight (I, D)
 *                  model.layers.N.mlp.experts.X.down_proj.weight      (D, I)
 *                  model.layers.N.mlp.shared_experts.S.{gate,up,down}_proj.weight
 *                  model.layers.N.mlp.selection_bias        (E)      fp32 buffer
 *   model.norm.weight (D), lm_head.weight (V, D)
 * Expert layout (the grouped GEMM wants it): for one MoE layer, all experts'
 * gate/up weights form ONE contiguous (E, 2I, D) block, expert X at
 * X*2I*D with its gate rows (I, D) first and its up rows (I, D) next; all
 * down weights form one contiguous (E, D, I) block.  Shared experts use the
 * same scheme: (S, 2Is, D) then (S, D, Is).  A dense layer's gate and up are
 * one (2Id, D) block.  So a fused gate_up GEMM (Out = 2I) is one linear.
 */
struct moe_param {
	char name[MOE_NAME_MAX];
	enum moe_param_kind kind;
	int ndim;
	int64_t shape[2];
	size_t offset; /* in floats, into the flat buffer */
	size_t numel;
	int layer;     /* block index, -1 for embedding / final norm / head */
	bool is_expert; /* clip group "expert": routed and shared experts (seed: name contains "expert") */
	bool decay;     /* weight decay applies (all trained tensors by default, as the seed) */
	bool trainable; /* false for the selection bias */
};

/* Offsets (in floats) of one block's tensors, for the graph code and for
 * backends that want them.  Fields that do not apply are SIZE_MAX. */
struct moe_layer_offsets {
	bool is_moe;
	size_t ln_in, q, k, v, o, q_norm, k_norm, ln_post;
	size_t dense_gate_up, dense_down;          /* dense: (2Id, D), (D, Id) */
	size_t router, expert_gate_up, expert_down; /* MoE: (E, D), (E, 2I, D), (E, D, I) */
	size_t shared_gate_up, shared_down;        /* (S, 2Is, D), (S, D, Is) */
	size_t bias;                               /* (E) */
};

/* ---- backend interface ---------------------------------------------------- */

enum moe_buf_kind {
	MOE_BUF_ACT, /* activations and their gradients: backend's compute dtype */
	MOE_BUF_F32, /* fp32: rstd, lse, router probs/weights, statistics, optimizer state */
	MOE_BUF_I32, /* int32: token ids, top-k ids, counts, offsets, permutations */
};

/*
 * All pointers below are backend memory unless marked "host".  Shapes and the
 * meaning of each op are those of the ops.h function of the same name; ACT
 * pointers are void * because their dtype is the backend's.  `w` parameters
 * come from be->param(), `dw` from be->grad() (fp32, accumulated +=).
 */
struct moe_backend {
	const char *name; /* "cpu", "cuda" */
	void *ctx;        /* backend private */
	size_t act_size;  /* bytes per MOE_BUF_ACT element (4 on CPU, 2 for bf16) */
	/* Gradients by overwrite.  A backend that sets grad_overwrite_ok lets
	 * moe_model_zero_grad skip clearing the gradients; the model then sets
	 * grad_overwrite during the next backward, and every op that writes a
	 * parameter gradient (dw) must then store into all of its gradient
	 * region instead of adding (no read, no memset).  The model clears the
	 * regions no op stores whole (the embedding's: embedding_bwd adds rows;
	 * the LM head's, added by axpy; the selection bias's, never written). */
	bool grad_overwrite_ok, grad_overwrite;
	/* The router's linear merged with the shared experts' gate_up (the
	 * backend sets router_merge_ok; the model merges where it also runs
	 * the shared experts side by side and E % 8 == 0): the router's weights
	 * lie just before theirs, so one linear each way computes the logits
	 * and the shared experts' gate_up, E + S 2 Is columns, whose swiglu
	 * then reads its S rows a token at that row stride */
	bool router_merge_ok;
	/* Optional, with grad_overwrite_ok: under grad_overwrite the model
	 * clears the gradient runs that ops add into (every tensor's but the
	 * routed experts', the LM head's and the embedding's) with one memset a
	 * run and announces each here; an op may then add into such a region
	 * without clearing it first.  (NULL, 0) forgets them all (the model
	 * calls it when the backward ends). */
	void (*grad_cleared)(struct moe_backend *be, float *dw, size_t n);

	/* memory */
	void *(*alloc)(struct moe_backend *be, size_t n, enum moe_buf_kind kind); /* NULL on ENOMEM; zeroed */
	void (*free)(struct moe_backend *be, void *p);
	void (*zero)(struct moe_backend *be, void *p, size_t n, enum moe_buf_kind kind);
	void (*copy)(struct moe_backend *be, void *dst, const void *src, size_t n, enum moe_buf_kind kind);
	/* host <-> backend; ACT buffers are converted from/to fp32 on the host side */
	void (*to_host)(struct moe_backend *be, void *host_dst, const void *src, size_t n, enum moe_buf_kind kind);
	/* As to_host, but host_dst receives the values (as they are at this
	 * point of the queued work) by the next sync, and must stay valid until
	 * then: a backend with a queue (CUDA) shares that synchronisation
	 * instead of waiting for the read-back on its own */
	void (*to_host_later)(struct moe_backend *be, void *host_dst, const void *src, size_t n, enum moe_buf_kind kind);
	void (*from_host)(struct moe_backend *be, void *dst, const void *host_src, size_t n, enum moe_buf_kind kind);
	/* wait for queued work; return the first recorded error (0 if none) */
	int (*sync)(struct moe_backend *be, struct moe_error *err);
	void (*destroy)(struct moe_backend *be); /* frees everything incl. be */

	/* parameters: n floats of fp32 master + fp32 grads (zeroed), laid out by the table */
	int (*params_alloc)(struct moe_backend *be, size_t n, struct moe_error *err);
	float *(*master)(struct moe_backend *be, size_t offset); /* fp32 master (backend memory) */
	float *(*grad)(struct moe_backend *be, size_t offset);   /* fp32 grads (backend memory) */
	const void *(*param)(struct moe_backend *be, size_t offset); /* compute copy (ACT dtype) */
	/* after the masters changed (optimizer step, load, bias update): refresh the compute copy */
	void (*params_updated)(struct moe_backend *be);
	/* Optional: the first recorded error without waiting for queued work
	 * (0 if none); the backward returns it instead of synchronising. */
	int (*status)(struct moe_backend *be, struct moe_error *err);

	/* ops (see ops.h) */
	void (*embedding_fwd)(struct moe_backend *be, void *out, const int32_t *ids, const void *wte, int N, int D);
	void (*embedding_bwd)(struct moe_backend *be, float *dwte, const void *dout, const int32_t *ids, int N, int D, int pad_id);
	void (*rmsnorm_fwd)(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int N, int D, float eps);
	void (*rmsnorm_bwd)(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd, int N, int D);
	/* the same adding the input gradient into dx (the residual stream's) */
	void (*rmsnorm_bwd_add)(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd, int N, int D);
	/* no bias; linear_bwd: dx (may be NULL) overwritten, dw (may be NULL) += */
	void (*linear_fwd)(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out);
	void (*linear_bwd)(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, int N, int In, int Out);
	/* the same adding into out / dx instead of overwriting (residual and gradient sums) */
	void (*linear_fwd_add)(struct moe_backend *be, void *out, const void *x, const void *w, int N, int In, int Out);
	void (*linear_bwd_add)(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, int N, int In, int Out);
	/* Optional (NULL: copy res to out, then linear_fwd_add): out = res +
	 * x w^T, out and res distinct buffers (the residual stream's sums) */
	void (*linear_fwd_res)(struct moe_backend *be, void *out, const void *res, const void *x, const void *w, int N, int In, int Out);
	/* Optional (NULL: the model loops over linear_fwd / linear_bwd): nb
	 * linears of one input x in one call.  fwd: out_b = x w_b^T, with w_b
	 * at w + b * w_stride and out_b at out + b * out_stride (elements);
	 * wgrad: dw_b (+)= dout_b^T x_b, dw_b at dw + b * dw_stride, dout_b at
	 * dout + b * dout_stride with rows ld_dout apart (Out: contiguous),
	 * x_b at x + b * x_stride with rows ld_x apart (In: contiguous). */
	void (*linear_fwd_multi)(struct moe_backend *be, void *out, size_t out_stride, const void *x, const void *w, size_t w_stride, int nb, int N, int In, int Out);
	void (*linear_wgrad_multi)(struct moe_backend *be, float *dw, size_t dw_stride, const void *dout, size_t dout_stride, int ld_dout, const void *x, size_t x_stride, int ld_x, int nb, int N, int In, int Out);
	/* QK-norm then RoPE (out = rope(rmsnorm(x) w)), and its backward from the
	 * gradient after RoPE (dx overwritten, dw +=, dout may be overwritten);
	 * D = H * Dh */
	void (*qknorm_rope_fwd)(struct moe_backend *be, void *out, float *rstd, const void *x, const void *w, int B, int T, int H, int Dh, float eps, float theta);
	void (*qknorm_rope_bwd)(struct moe_backend *be, void *dx, float *dw, const void *dout, const void *x, const void *w, const float *rstd, int B, int T, int H, int Dh, float theta);
	void (*attention_fwd)(struct moe_backend *be, void *out, float *lse, const void *q, const void *k, const void *v, int B, int T, int H, int Dh);
	void (*attention_bwd)(struct moe_backend *be, void *dq, void *dk, void *dv, const void *dout, const void *q, const void *k, const void *v, const void *out, const float *lse, int B, int T, int H, int Dh);
	/* Optional, both or neither (NULL: the q, k, v projections in three
	 * buffers and the ops above one by one): the attention block after
	 * its q, k, v projections, which the model then keeps side by side in
	 * rows of 3 H Dh (one linear each way).  fwd: q = qknorm_rope(qraw),
	 * k = qknorm_rope(kraw), out = attention(q, k, v); bwd: the gradients
	 * before the norms, dqx and dkx (+= dwq, dwk), and dv, from dout; dq
	 * and dk are scratch the backend may leave unwritten.  qraw, kraw, v,
	 * dqx, dkx and dv at row stride ld; the others H Dh. */
	void (*attention_qknorm_fwd)(struct moe_backend *be, void *out, float *lse, void *q, void *k, float *rstdq, float *rstdk, const void *qraw, const void *kraw, const void *v, int ld, const void *wq, const void *wk, int B, int T, int H, int Dh, float eps, float theta);
	void (*attention_qknorm_bwd)(struct moe_backend *be, void *dqx, void *dkx, void *dv, int ld, float *dwq, float *dwk, void *dq, void *dk, const void *dout, const void *q, const void *k, const void *v, const void *out, const float *lse, const void *qraw, const void *kraw, const void *wq, const void *wk, const float *rstdq, const float *rstdk, int B, int T, int H, int Dh, float theta);
	/* SwiGLU over M rows, h and dh (M, I); gu's (and dgu's) rows come in
	 * groups of G, ld_gu apart: row m at (m / G) ld_gu + (m % G) 2I
	 * (packed: G 1, ld_gu 2I) */
	void (*swiglu_gu_fwd)(struct moe_backend *be, void *h, const void *gu, int M, int I, int G, int ld_gu);
	/* h (may be NULL): also recompute the forward's output h (M, I) from gu */
	void (*swiglu_gu_bwd)(struct moe_backend *be, void *dgu, void *h, const void *dh, const void *gu, int M, int I, int G, int ld_gu);
	/* Optional (NULL: the model runs the shared experts one by one; it
	 * needs linear_wgrad_multi too): nb blocks of rows x n ACT elements,
	 * block b from src + b src_stride (rows lds apart) to dst + b
	 * dst_stride (rows ldd apart); the model then runs the shared experts
	 * side by side (one linear each way, the down projections' weights
	 * gathered into one matrix) */
	void (*copy_rows)(struct moe_backend *be, void *dst, int ldd, size_t dst_stride, const void *src, int lds, size_t src_stride, int rows, int n, int nb);
	/* The router over logits whose rows lie ld >= E apart (ld = E: packed;
	 * more: its columns of the merged linear's output, read in place);
	 * bias: fp32 master pointer or NULL; *zloss (NULL: not wanted)
	 * receives the z-loss's value, the mean over the rows of lse^2 (what
	 * zloss puts in *loss), at the next sync.  router_bwd overwrites the E
	 * columns of dlogits' rows, ld apart. */
	void (*router_fwd)(struct moe_backend *be, int32_t *topk_idx, float *topk_w, float *probs, const void *logits, int ld, const float *bias, int N, int E, int K, bool norm_topk, double *zloss);
	void (*router_bwd)(struct moe_backend *be, void *dlogits, int ld, const float *dtopk_w, const float *dprobs, const float *probs, const int32_t *topk_idx, const float *topk_w, int N, int E, int K, bool norm_topk);
	void (*route_group)(struct moe_backend *be, int32_t *counts, int32_t *offsets, int32_t *perm, int32_t *inv, const int32_t *topk_idx, int N, int K, int E);
	void (*gather_rows)(struct moe_backend *be, void *xg, const void *x, const int32_t *perm, int NK, int K, int D);
	void (*scatter_add_rows)(struct moe_backend *be, void *dx, const void *dxg, const int32_t *perm, int NK, int K, int D);
	void (*grouped_linear_fwd)(struct moe_backend *be, void *out, const void *x, const void *w, const int32_t *offsets, int E, int In, int Out);
	/* The routed experts' MLP in three ops, each equal to a sequence of
	 * gather_rows, grouped_linear_fwd, SwiGLU and the grouped linear's
	 * backward (dx = dy w overwritten, dw += dy^T x, per expert; a backend
	 * may fuse it; M = offsets[E] = NK rows in expert order, perm of
	 * route_group; xg (M, D) and dh (M, I) are scratch for backends that
	 * run the sequence):
	 *   expert_up_fwd:   xg = gather_rows(x (N, D), perm); gu (M, 2I) =
	 *                    grouped_linear_fwd(xg, w (E, 2I, D)); h (M, I) = swiglu_gu_fwd(gu)
	 *   expert_down_bwd: dh = the dx of dy (M, D), w (E, D, I);
	 *                    swiglu_gu_bwd(dgu (M, 2I), h (M, I) recomputed, dh, gu);
	 *                    then dw (E, D, I) += dy^T h
	 *   expert_up_bwd:   xg = gather_rows(x, perm) unless xg_ready (xg holds
	 *                    expert_up_fwd's gather already); dx (M, D)
	 *                    overwritten and dw (E, 2I, D) += from dgu, xg, w (E, 2I, D) */
	void (*expert_up_fwd)(struct moe_backend *be, void *gu, void *h, const void *x, const int32_t *perm, const void *w, const int32_t *offsets, void *xg, int NK, int K, int E, int D, int I);
	void (*expert_down_bwd)(struct moe_backend *be, void *dgu, void *h, float *dw, const void *dy, const void *gu, const void *w, const int32_t *offsets, void *dh, int NK, int E, int I, int D);
	void (*expert_up_bwd)(struct moe_backend *be, void *dx, float *dw, const void *dgu, const void *x, const int32_t *perm, const void *w, const int32_t *offsets, void *xg, bool xg_ready, int NK, int K, int E, int D, int I);
	/* Optional (NULL: combine_bwd, then expert_down_bwd): the two as one
	 * that needs no expert outputs yg, so the model keeps none; a backend
	 * that offers it writes xg in expert_up_fwd, which the model then keeps
	 * per layer for expert_up_bwd (xg_ready).  dy (M, D) and dh (M, I)
	 * are scratch.  Row j of the experts (token n, slot k: perm[j] = n K +
	 * k, expert e, weight w_j = topk_w[n K + k]): dy_j = dout_n
	 * (unweighted), dh_j = dy_j w[e]; dtopk_w[n K + k] = dh_j . h_j (=
	 * dout_n . yg_j); SwiGLU's backward of the output gradient w_j dh_j
	 * into dgu, h (M, I) written with row j = w_j h_j (h_j recomputed);
	 * dw (E, D, I) += dy^T h, which is combine_bwd's (w dout)^T h.  Equal
	 * to combine_bwd and expert_down_bwd up to roundings. */
	void (*expert_combine_down_bwd)(struct moe_backend *be, void *dgu, void *h, float *dw, float *dtopk_w, const void *dout, const void *gu, const float *topk_w, const int32_t *perm, const void *w, const int32_t *offsets, void *dy, void *dh, int N, int K, int E, int I, int D);
	/* out = res (NULL: none; not out) + the top-k weighted sum of the expert rows */
	void (*combine_fwd)(struct moe_backend *be, void *out, const void *res, const void *yg, const float *topk_w, const int32_t *inv, int N, int K, int D);
	void (*combine_bwd)(struct moe_backend *be, void *dyg, float *dtopk_w, const void *dout, const void *yg, const float *topk_w, const int32_t *inv, int N, int K, int D);
	/* Host results (*loss_sum, *loss, *out below) may be written
	 * late: they are valid after the next sync (the CUDA backend collects
	 * them all in one read-back there instead of synchronising per call). */
	void (*xent)(struct moe_backend *be, void *dlogits, const void *logits, const int32_t *targets, int N, int V, int ignore_id, float scale, double *loss_sum);
	/* The z-loss over logits (and dlogits) whose rows lie ld >= E apart:
	 * dlogits (NULL: none) += scale times its gradient; *loss (NULL: not
	 * wanted) its value */
	void (*zloss)(struct moe_backend *be, void *dlogits, const void *logits, int ld, int N, int E, float scale, double *loss);
	void (*router_stats)(struct moe_backend *be, float *psum, int32_t *cnt_valid, const float *probs, const int32_t *topk_idx, const int32_t *ids, int pad_id, int N, int E, int K);
	void (*aux_dprobs)(struct moe_backend *be, float *dprobs, const float *g_host, const int32_t *ids, int pad_id, int N, int E);
	/* flat fp32 helpers for the trainer (backend memory) */
	void (*sumsq)(struct moe_backend *be, const float *x, size_t n, double *out); /* *out = sum x^2 */
	void (*axpy)(struct moe_backend *be, float *y, const float *x, size_t n, float a); /* y += a x */
	void (*scale_act)(struct moe_backend *be, void *x, size_t n, float a);          /* ACT x *= a */
	/* AdamW on one span; the step uses the gradient g * gscale (the clip
	 * factor: g itself is not changed) */
	void (*adamw)(struct moe_backend *be, float *p, const float *g, float gscale, float *m, float *v, size_t n, float lr, float beta1, float beta2, float eps, float weight_decay, int64_t t);
	/* Optional: from now on the masters of [offset, offset + n) are read
	 * and written only through adamw (spans inside the range), to_host,
	 * to_host_later and from_host, and through the compute copy: no op
	 * reads them in fp32 (as the norm weights and the balancing bias are
	 * read).  The backend may keep them in another exact form (CUDA: the
	 * compute copy and the low 16 bits, 2 bytes a parameter less for AdamW
	 * to move; the compute copy then rounds ties away from zero).  false:
	 * kept as they were. */
	bool (*masters_pack)(struct moe_backend *be, size_t offset, size_t n);
	/* Optional: one layer's loss-free-balancing step on its fp32 master
	 * bias (E) and compute copy, as moe_balance_apply with the host
	 * directions dir (E), queued without a synchronisation; false when the
	 * backend does not take this E.  NULL or false: the model reads the
	 * bias back, updates it on the host and uploads it. */
	bool (*balance_bias)(struct moe_backend *be, float *bias, const int8_t *dir, int E, float u, float clamp);
};

/* The CPU backend (fp32, OpenMP).  NULL on ENOMEM.  Free with be->destroy(be). */
struct moe_backend *moe_backend_cpu(void);
/* Backend by name: "cpu", or "cuda" when the CUDA backend is linked in;
 * NULL and err otherwise. */
struct moe_backend *moe_backend_new(const char *name, struct moe_error *err);
/* Implemented by kernels/ (CUDA builds only).  moe_backend_new refers to it
 * through a weak reference, so a program that wants "cuda" must link the
 * kernels library so that this symbol is pulled in (call it directly under
 * #ifdef HAVE_CUDA, or link the library with --whole-archive). */
struct moe_backend *moe_backend_cuda(struct moe_error *err);

/* ---- the model -------------------------------------------------------------- */

struct moe_model; /* opaque */

/* Build the parameter table and allocate parameters and gradients on `be`
 * (NULL: a new CPU backend).  The model owns be and destroys it in
 * moe_model_free.  Parameters are zero until init or load. */
struct moe_model *moe_model_new(const struct moe_config *cfg, struct moe_backend *be,
				struct moe_error *err);
void moe_model_free(struct moe_model *m);
const struct moe_config *moe_model_config(const struct moe_model *m);
struct moe_backend *moe_model_backend(struct moe_model *m);

/* The table: n entries in buffer order.  Lookup returns NULL when absent. */
const struct moe_param *moe_model_params(const struct moe_model *m, size_t *n);
const struct moe_param *moe_model_param_find(const struct moe_model *m, const char *name);
size_t moe_model_num_params(const struct moe_model *m); /* floats in the flat buffer */
const struct moe_layer_offsets *moe_model_layer(const struct moe_model *m, int layer);
/* Counts of parameters: total trained (the selection biases excluded),
 * active per token (K of E routed experts; embedding and head included). */
void moe_model_count(const struct moe_model *m, int64_t *total, int64_t *active);
/* The same from a config alone, without allocating the parameters. */
int moe_config_count_params(const struct moe_config *cfg, int64_t *total, int64_t *active,
			    struct moe_error *err);

/* Host access to the flat fp32 buffers: direct pointers on host backends
 * (CPU), NULL otherwise; then use get/set, which copy the whole buffer. */
float *moe_model_params_host(struct moe_model *m);
float *moe_model_grads_host(struct moe_model *m);
void moe_model_get_params(struct moe_model *m, float *dst /* (n) host */);
void moe_model_set_params(struct moe_model *m, const float *src /* (n) host */);
void moe_model_get_grads(struct moe_model *m, float *dst /* (n) host */);
/* Call after changing parameters through a host pointer or backend op. */
void moe_model_params_updated(struct moe_model *m);

/* Deterministic init from a seed: every MOE_P_LINEAR/EXPERT/SHARED/EMBED
 * tensor ~ N(0, initializer_range^2) (not truncated), drawn from a stream
 * keyed by (seed, tensor name) so it does not depend on the table order;
 * the embedding row pad_token_id is zeroed; norms = 1; selection bias = 0. */
int moe_model_init(struct moe_model *m, uint64_t seed, struct moe_error *err);

/* ---- forward / backward ------------------------------------------------------ */

struct moe_losses {
	double total;     /* ce + aux_coef * aux + router_z_loss_coef * z */
	double ce;        /* mean over valid targets (0 when none / no targets) */
	double aux;       /* unscaled aux loss in the configured form */
	double z;         /* unscaled z-loss */
	double aux_coef;  /* coefficient used */
	int64_t n_valid;  /* targets != pad_token_id */
};

/* Per MoE layer lm, per row n = b*T + t (host arrays, caller allocated). */
struct moe_routing_capture {
	int32_t *topk_idx;     /* (Lm, N, K) expert ids, by weight descending */
	float *topk_w;         /* (Lm, N, K) gate weights (after renorm if any) */
	float *router_logits;  /* (Lm, N, E) unbiased router logits, or NULL */
};

/* Per-row next-token statistics from the output logits (host, caller allocated). */
struct moe_token_stats {
	int32_t argmax;      /* most likely next token */
	float p_argmax;      /* its probability */
	float logprob_target;/* log p(target), NaN when no targets / ignored */
};

enum moe_logits_mode {
	MOE_LOGITS_NONE = 0, /* do not copy logits out */
	MOE_LOGITS_ALL,      /* logits_out (B, T, V) */
	MOE_LOGITS_LAST,     /* logits_out (B, V): position T-1 of each row */
};

struct moe_forward_opts {
	bool train;          /* keep activations for backward; selection bias when loss_free_balancing */
	bool eval_use_bias;  /* not training: route with the selection bias anyway (default off, as the seed) */
	enum moe_logits_mode logits_mode;
	float *logits_out;                    /* host, see logits_mode */
	struct moe_routing_capture *capture;  /* NULL: none */
	struct moe_token_stats *token_stats;  /* (B*T) host or NULL */
};

/* Forward over tokens (B, T) (host int32, values < vocab_size); targets (B, T)
 * host or NULL (then ce = 0 and backward is not allowed).  Fills losses (may
 * be NULL).  opts may be NULL (= eval, nothing copied out).  T may be any
 * length >= 1 (RoPE positions 0..T-1 of each row).  Buffers grow as needed. */
int moe_model_forward(struct moe_model *m, const int32_t *tokens, const int32_t *targets, int B,
		      int T, const struct moe_forward_opts *opts, struct moe_losses *losses,
		      struct moe_error *err);
/* Backward of the last forward (which must have had train and targets):
 * grads += d(grad_scale * total)/d(params).  The selection bias gets none. */
int moe_model_backward(struct moe_model *m, float grad_scale, struct moe_error *err);
/* Gradients to zero before the first backward of a step.  On a backend with
 * grad_overwrite_ok this costs nothing: that backward stores its gradients
 * instead of adding them.  Code that reads the gradient memory directly
 * (be->grad) without a backward in between calls moe_model_grads_ready()
 * first, which clears them if they are still pending. */
void moe_model_zero_grad(struct moe_model *m);
void moe_model_grads_ready(struct moe_model *m);
/* Rows of output logits that exist at once (the LM head and the loss run
 * over chunks of this many rows; a training forward also runs the head's
 * backward chunk by chunk).  0: the default, 4096.  Results do not depend
 * on it. */
void moe_model_set_logits_chunk(struct moe_model *m, int rows);
/* What training keeps for backward.  CHEAP (the default): every layer's
 * activations except those recomputed cheaply (gathered expert inputs,
 * SwiGLU outputs).  FULL: only each block's input; backward runs each
 * block's forward again just before its backward (about a third more work
 * for a fraction of the activation memory).  Results do not depend on it. */
enum moe_recompute { MOE_RECOMPUTE_CHEAP = 0, MOE_RECOMPUTE_FULL = 1 };
void moe_model_set_recompute(struct moe_model *m, enum moe_recompute r);
/* The aux coefficient used by later forwards (default router_aux_loss_coef);
 * the trainer sets moe_config_aux_coef(cfg, step) before each step. */
void moe_model_set_aux_coef(struct moe_model *m, double coef);

/* Expert counts of the last forward: (Lm, E) host, (token, slot) pairs over
 * ALL rows (pads included, as the seed); valid until the next forward. */
const int64_t *moe_model_expert_counts(const struct moe_model *m);
/* Loss-free balancing: for each MoE layer, b_e += u * sign(mean_e c - c_e),
 * clamped to +-balance_bias_clamp, in fp32 (counts (Lm, E) host, e.g. summed
 * over the micro-batches of a step). */
int moe_model_update_bias(struct moe_model *m, const int64_t *counts, float u,
			  struct moe_error *err);

/* ---- checkpoints ---------------------------------------------------------------- */

/* Write every tensor (fp32, HF names, selection biases included) to a
 * safetensors file atomically, with metadata {"format": "pt"}. */
int moe_model_save_safetensors(struct moe_model *m, const char *path, struct moe_error *err);
/* Load tensors into the table from: a .safetensors file, or a directory with
 * model.safetensors.index.json (sharded) or model.safetensors.  F32, BF16 and
 * F16 are converted.  Every trained tensor must be present with its exact
 * shape; a missing selection bias is zero; unexpected tensors are errors
 * naming them (rotary inv_freq buffers are ignored).  On error the
 * parameters may be partly overwritten. */
int moe_model_load_weights(struct moe_model *m, const char *path, struct moe_error *err);
/* Write DIR/config.json and DIR/model.safetensors (DIR must exist). */
int moe_model_save_dir(struct moe_model *m, const char *dir, struct moe_error *err);
/* New model from DIR/config.json and its weights (HF or ours) on be. */
struct moe_model *moe_model_load_dir(const char *dir, struct moe_backend *be,
				     struct moe_error *err);

#endif
