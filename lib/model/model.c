/*
 * The model graph: parameter table, activations, forward and backward.  This
 * file decides what is computed; every computation goes through the backend
 * op table (model.h), so the CPU and CUDA backends run the same graph.
 */
#include "model/model.h"
#include "model/model_int.h"
#include "model/ops.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#define NONE SIZE_MAX
/* rows of logits that exist at once (bf16 on CUDA: 4096 x 50304 = 412 MB) */
#define LOGITS_CHUNK 4096

/* ---- parameter table ---------------------------------------------------------- */

static int table_add(struct moe_model *m, size_t *cap, const char *name, enum moe_param_kind kind,
		     int ndim, int64_t s0, int64_t s1, int layer, bool trainable, size_t *off_out)
{
	if (m->n_params == *cap) {
		size_t nc = *cap ? *cap * 2 : 256;
		struct moe_param *np = realloc(m->params, nc * sizeof(*np));
		if (!np)
			return MOE_ENOMEM;
		m->params = np;
		*cap = nc;
	}
	struct moe_param *p = &m->params[m->n_params++];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	p->kind = kind;
	p->ndim = ndim;
	p->shape[0] = s0;
	p->shape[1] = ndim > 1 ? s1 : 0;
	p->numel = (size_t)s0 * (size_t)(ndim > 1 ? s1 : 1);
	p->layer = layer;
	p->is_expert = kind == MOE_P_EXPERT || kind == MOE_P_SHARED;
	p->trainable = trainable;
	p->decay = trainable;
	p->offset = m->n_floats;
	m->n_floats += p->numel;
	if (off_out)
		*off_out = p->offset;
	return 0;
}

/* Tensors of one expert block (gate/up interleaved per expert, then downs). */
static int table_add_experts(struct moe_model *m, size_t *cap, int layer, const char *group,
			     enum moe_param_kind kind, int n, int I, int D, size_t *gu_off,
			     size_t *down_off)
{
	char name[MOE_NAME_MAX];
	int rc;
	for (int x = 0; x < n; x++) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp.%s.%d.gate_proj.weight", layer, group, x);
		if ((rc = table_add(m, cap, name, kind, 2, I, D, layer, true, x == 0 ? gu_off : NULL)))
			return rc;
		snprintf(name, sizeof(name), "model.layers.%d.mlp.%s.%d.up_proj.weight", layer, group, x);
		if ((rc = table_add(m, cap, name, kind, 2, I, D, layer, true, NULL)))
			return rc;
	}
	for (int x = 0; x < n; x++) {
		snprintf(name, sizeof(name), "model.layers.%d.mlp.%s.%d.down_proj.weight", layer, group, x);
		if ((rc = table_add(m, cap, name, kind, 2, D, I, layer, true, x == 0 ? down_off : NULL)))
			return rc;
	}
	return 0;
}

static int build_table(struct moe_model *m)
{
	const struct moe_config *c = &m->cfg;
	int D = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
	size_t cap = 0;
	char name[MOE_NAME_MAX];
	int rc;
	m->layers = calloc((size_t)L, sizeof(*m->layers));
	if (!m->layers)
		return MOE_ENOMEM;
	if ((rc = table_add(m, &cap, "model.embed_tokens.weight", MOE_P_EMBED, 2, V, D, -1, true, &m->off_embed)))
		return rc;
	for (int l = 0; l < L; l++) {
		struct moe_layer_offsets *lo = &m->layers[l];
		lo->is_moe = l >= c->n_dense_layers;
		lo->dense_gate_up = lo->dense_down = lo->router = lo->expert_gate_up = NONE;
		lo->expert_down = lo->shared_gate_up = lo->shared_down = lo->bias = NONE;
#define ADD(suffix, kind, nd, a, b, offp)                                                     \
	do {                                                                                  \
		snprintf(name, sizeof(name), "model.layers.%d.%s", l, suffix);                \
		if ((rc = table_add(m, &cap, name, kind, nd, a, b, l, true, offp)))           \
			return rc;                                                            \
	} while (0)
		ADD("input_layernorm.weight", MOE_P_NORM, 1, D, 0, &lo->ln_in);
		ADD("self_attn.q_proj.weight", MOE_P_LINEAR, 2, D, D, &lo->q);
		ADD("self_attn.k_proj.weight", MOE_P_LINEAR, 2, D, D, &lo->k);
		ADD("self_attn.v_proj.weight", MOE_P_LINEAR, 2, D, D, &lo->v);
		ADD("self_attn.o_proj.weight", MOE_P_LINEAR, 2, D, D, &lo->o);
		ADD("self_attn.q_norm.weight", MOE_P_NORM, 1, D, 0, &lo->q_norm);
		ADD("self_attn.k_norm.weight", MOE_P_NORM, 1, D, 0, &lo->k_norm);
		ADD("post_attention_layernorm.weight", MOE_P_NORM, 1, D, 0, &lo->ln_post);
		if (!lo->is_moe) {
			int Id = c->dense_intermediate_size;
			ADD("mlp.gate_proj.weight", MOE_P_LINEAR, 2, Id, D, &lo->dense_gate_up);
			ADD("mlp.up_proj.weight", MOE_P_LINEAR, 2, Id, D, NULL);
			ADD("mlp.down_proj.weight", MOE_P_LINEAR, 2, D, Id, &lo->dense_down);
			continue;
		}
		/* the router just before the shared experts' gate_up weights (a
		 * backend may run both as one linear: router_merged), and the
		 * shared experts just before the routed ones (one run of expert
		 * tensors for the optimizer and the clip norms) */
		ADD("mlp.gate.weight", MOE_P_LINEAR, 2, c->num_experts, D, &lo->router);
#undef ADD
		if (c->n_shared_experts > 0 &&
		    (rc = table_add_experts(m, &cap, l, "shared_experts", MOE_P_SHARED, c->n_shared_experts,
					    m->Is, D, &lo->shared_gate_up, &lo->shared_down)))
			return rc;
		if ((rc = table_add_experts(m, &cap, l, "experts", MOE_P_EXPERT, c->num_experts,
					    c->intermediate_size, D, &lo->expert_gate_up, &lo->expert_down)))
			return rc;
		snprintf(name, sizeof(name), "model.layers.%d.mlp.selection_bias", l);
		if ((rc = table_add(m, &cap, name, MOE_P_BIAS, 1, c->num_experts, 0, l, false, &lo->bias)))
			return rc;
	}
	if ((rc = table_add(m, &cap, "model.norm.weight", MOE_P_NORM, 1, D, 0, -1, true, &m->off_norm)))
		return rc;
	if ((rc = table_add(m, &cap, "lm_head.weight", MOE_P_LINEAR, 2, V, D, -1, true, &m->off_head)))
		return rc;
	return 0;
}

struct moe_model *moe_model_new(const struct moe_config *cfg, struct moe_backend *be,
				struct moe_error *err)
{
	if (moe_config_validate(cfg, "model config", err) < 0) {
		if (be)
			be->destroy(be);
		return NULL;
	}
	struct moe_model *m = calloc(1, sizeof(*m));
	if (!m) {
		if (be)
			be->destroy(be);
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	m->cfg = *cfg;
	if (isnan(m->cfg.router_aux_loss_coef_end))
		m->cfg.router_aux_loss_coef_end = m->cfg.router_aux_loss_coef;
	m->Is = cfg->shared_expert_intermediate_size > 0 ? cfg->shared_expert_intermediate_size
							  : cfg->intermediate_size;
	m->cfg.shared_expert_intermediate_size = m->Is;
	m->Lm = moe_config_n_moe_layers(cfg);
	m->aux_coef = cfg->router_aux_loss_coef;
	m->be = be ? be : moe_backend_cpu();
	if (!m->be) {
		free(m);
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	if (build_table(m) < 0) {
		moe_error_set(err, MOE_ENOMEM, "out of memory building the parameter table");
		moe_model_free(m);
		return NULL;
	}
	if (m->be->params_alloc(m->be, m->n_floats, err) < 0) {
		moe_model_free(m);
		return NULL;
	}
	m->counts = calloc((size_t)(m->Lm > 0 ? m->Lm : 1) * cfg->num_experts, sizeof(int64_t));
	m->psum = calloc((size_t)(m->Lm > 0 ? m->Lm : 1) * cfg->num_experts, sizeof(float));
	m->cntv = calloc((size_t)(m->Lm > 0 ? m->Lm : 1) * cfg->num_experts, sizeof(int32_t));
	m->zl = calloc((size_t)(m->Lm > 0 ? m->Lm : 1), sizeof(double));
	m->st_host = calloc(2 * (size_t)(m->Lm > 0 ? m->Lm : 1) * cfg->num_experts, sizeof(int32_t));
	if (!m->counts || !m->psum || !m->cntv || !m->zl || !m->st_host) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		moe_model_free(m);
		return NULL;
	}
	return m;
}

static void acts_free(struct moe_model *m);

int moe_config_count_params(const struct moe_config *cfg, int64_t *total, int64_t *active,
			    struct moe_error *err)
{
	int rc = moe_config_validate(cfg, "model config", err);
	if (rc < 0)
		return rc;
	struct moe_model *m = calloc(1, sizeof(*m));
	if (!m)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	m->cfg = *cfg;
	m->Is = cfg->shared_expert_intermediate_size > 0 ? cfg->shared_expert_intermediate_size
							  : cfg->intermediate_size;
	m->Lm = moe_config_n_moe_layers(cfg);
	if (build_table(m) < 0)
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory building the parameter table");
	else
		moe_model_count(m, total, active);
	free(m->params);
	free(m->layers);
	free(m);
	return rc;
}

void moe_model_free(struct moe_model *m)
{
	if (!m)
		return;
	acts_free(m);
	if (m->be)
		m->be->destroy(m->be);
	free(m->params);
	free(m->layers);
	free(m->counts);
	free(m->psum);
	free(m->zl);
	free(m->cntv);
	free(m->st_host);
	free(m);
}

const struct moe_config *moe_model_config(const struct moe_model *m)
{
	return &m->cfg;
}

struct moe_backend *moe_model_backend(struct moe_model *m)
{
	return m->be;
}

const struct moe_param *moe_model_params(const struct moe_model *m, size_t *n)
{
	if (n)
		*n = m->n_params;
	return m->params;
}

const struct moe_param *moe_model_param_find(const struct moe_model *m, const char *name)
{
	for (size_t i = 0; i < m->n_params; i++)
		if (!strcmp(m->params[i].name, name))
			return &m->params[i];
	return NULL;
}

size_t moe_model_num_params(const struct moe_model *m)
{
	return m->n_floats;
}

const struct moe_layer_offsets *moe_model_layer(const struct moe_model *m, int layer)
{
	if (layer < 0 || layer >= m->cfg.num_hidden_layers)
		return NULL;
	return &m->layers[layer];
}

void moe_model_count(const struct moe_model *m, int64_t *total, int64_t *active)
{
	int64_t t = 0, inactive = 0;
	const struct moe_config *c = &m->cfg;
	for (size_t i = 0; i < m->n_params; i++)
		if (m->params[i].trainable)
			t += (int64_t)m->params[i].numel;
	inactive = (int64_t)m->Lm * (c->num_experts - c->num_experts_per_tok) * 3 *
		   (int64_t)c->hidden_size * c->intermediate_size;
	if (total)
		*total = t;
	if (active)
		*active = t - inactive;
}

float *moe_model_params_host(struct moe_model *m)
{
	return strcmp(m->be->name, "cpu") ? NULL : m->be->master(m->be, 0);
}

float *moe_model_grads_host(struct moe_model *m)
{
	if (strcmp(m->be->name, "cpu"))
		return NULL;
	moe_model_grads_ready(m);
	return m->be->grad(m->be, 0);
}

void moe_model_get_params(struct moe_model *m, float *dst)
{
	m->be->to_host(m->be, dst, m->be->master(m->be, 0), m->n_floats, MOE_BUF_F32);
}

void moe_model_set_params(struct moe_model *m, const float *src)
{
	m->be->from_host(m->be, m->be->master(m->be, 0), src, m->n_floats, MOE_BUF_F32);
	m->be->params_updated(m->be);
}

void moe_model_get_grads(struct moe_model *m, float *dst)
{
	moe_model_grads_ready(m);
	m->be->to_host(m->be, dst, m->be->grad(m->be, 0), m->n_floats, MOE_BUF_F32);
}

void moe_model_params_updated(struct moe_model *m)
{
	m->be->params_updated(m->be);
}

void moe_model_zero_grad(struct moe_model *m)
{
	if (m->be->grad_overwrite_ok) { /* the next backward stores instead of adding */
		m->grad_fresh = true;
		return;
	}
	m->be->zero(m->be, m->be->grad(m->be, 0), m->n_floats, MOE_BUF_F32);
}

void moe_model_grads_ready(struct moe_model *m)
{
	if (!m->grad_fresh)
		return;
	if (m->head_in_grad && m->fwd_valid) { /* all but the head's, which that forward stored */
		size_t hi = m->off_head + (size_t)m->cfg.vocab_size * m->cfg.hidden_size;
		m->be->zero(m->be, m->be->grad(m->be, 0), m->off_head, MOE_BUF_F32);
		m->be->zero(m->be, m->be->grad(m->be, hi), m->n_floats - hi, MOE_BUF_F32);
	} else {
		m->be->zero(m->be, m->be->grad(m->be, 0), m->n_floats, MOE_BUF_F32);
		m->head_in_grad = false;
	}
	m->grad_fresh = false;
}

void moe_model_set_aux_coef(struct moe_model *m, double coef)
{
	m->aux_coef = coef;
}

const int64_t *moe_model_expert_counts(const struct moe_model *m)
{
	return m->counts;
}

/* ---- init ---------------------------------------------------------------------- */

static uint64_t splitmix64(uint64_t *s)
{
	uint64_t z = (*s += 0x9e3779b97f4a7c15ULL);
	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
	return z ^ (z >> 31);
}

/* uniform in (0, 1) */
static double unif(uint64_t *s)
{
	return ((double)(splitmix64(s) >> 11) + 0.5) * (1.0 / 9007199254740992.0);
}

int moe_model_init(struct moe_model *m, uint64_t seed, struct moe_error *err)
{
	float *host = malloc(m->n_floats * sizeof(float));
	if (!host)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	memset(host, 0, m->n_floats * sizeof(float));
	double std = m->cfg.initializer_range;
	/* every tensor has its own stream (seed ^ hash of its name), so the
	 * tensors fill in parallel with the same values for any thread count */
#pragma omp parallel for schedule(dynamic)
	for (size_t i = 0; i < m->n_params; i++) {
		const struct moe_param *p = &m->params[i];
		float *x = host + p->offset;
		switch (p->kind) {
		case MOE_P_NORM:
			for (size_t j = 0; j < p->numel; j++)
				x[j] = 1.0f;
			break;
		case MOE_P_BIAS:
			break;
		default: {
			uint64_t s = seed ^ moe_hash64(p->name, strlen(p->name));
			for (size_t j = 0; j < p->numel; j += 2) {
				/* Box-Muller: two normals per pair of uniforms */
				double u1 = unif(&s), u2 = unif(&s);
				double r = sqrt(-2.0 * log(u1));
				x[j] = (float)(std * r * cos(2.0 * M_PI * u2));
				if (j + 1 < p->numel)
					x[j + 1] = (float)(std * r * sin(2.0 * M_PI * u2));
			}
			if (p->kind == MOE_P_EMBED && m->cfg.pad_token_id >= 0)
				memset(x + (size_t)m->cfg.pad_token_id * m->cfg.hidden_size, 0,
				       sizeof(float) * (size_t)m->cfg.hidden_size);
		}
		}
	}
	moe_model_set_params(m, host);
	free(host);
	return 0;
}

/* ---- activations ------------------------------------------------------------------ */

/* ACT pointer arithmetic */
static inline void *act_at(const struct moe_model *m, const void *p, size_t elems)
{
	return (char *)p + elems * m->be->act_size;
}

static void *A(struct moe_model *m, size_t n, enum moe_buf_kind kind)
{
	if (m->n_bufs == MAX_BUFS || m->alloc_failed) {
		m->alloc_failed = true;
		return NULL;
	}
	void *p = m->be->alloc(m->be, n ? n : 1, kind);
	if (!p) {
		m->alloc_failed = true;
		return NULL;
	}
	m->bufs[m->n_bufs++] = p;
	return p;
}

static void acts_free(struct moe_model *m)
{
	for (int i = 0; i < m->n_bufs; i++)
		m->be->free(m->be, m->bufs[i]);
	m->n_bufs = 0;
	free(m->la);
	m->la = NULL;
	free(m->ce_part);
	m->ce_part = NULL;
	m->cap_N = 0;
	m->cap_sets = 0;
	m->alloc_failed = false;
	memset(&m->g, 0, sizeof(m->g));
}

void moe_model_set_logits_chunk(struct moe_model *m, int rows)
{
	if (m->lc_req == rows)
		return;
	m->lc_req = rows;
	m->fwd_valid = false;
	acts_free(m); /* reallocated at the next forward */
}

/* The shared experts side by side (the backend copies rows and runs
 * batched weight gradients): one gate_up linear of their adjacent weights
 * (gu_s (N, S, 2Is)), one SwiGLU over N S rows (h_s (N, S, Is)), one down
 * linear of K = S Is against their down weights gathered side by side
 * (wdn_s); else one by one */
static bool shared_merged(const struct moe_model *m)
{
	return m->cfg.n_shared_experts > 0 && m->be->copy_rows && m->be->linear_wgrad_multi;
}

/* The router's linear and the shared experts' gate_up as one (side by side,
 * with a backend that sets router_merge_ok; model.h): gu_s then holds
 * (N, E + S 2Is), the logits first (the router reads them there, rows
 * apart; rlogits then only takes a capture's copy), and the backward's dgu
 * the router's dlogits beside the shared experts' dgu */
static bool router_merged(const struct moe_model *m)
{
	return shared_merged(m) && m->be->router_merge_ok && m->cfg.num_experts % 8 == 0;
}

/* gu_s's row: the router's E logits first when merged */
static int gu_s_ld(const struct moe_model *m)
{
	int S = m->cfg.n_shared_experts;
	return S * 2 * m->Is + (router_merged(m) ? m->cfg.num_experts : 0);
}

void moe_model_set_recompute(struct moe_model *m, enum moe_recompute r)
{
	if (m->recompute == r)
		return;
	m->recompute = r;
	m->fwd_valid = false;
	acts_free(m); /* reallocated at the next forward */
}

/* Allocate activations for N rows: `sets` copies of the per-layer buffers
 * (L for training, 1 for inference, which reuses them layer after layer). */
static int acts_ensure(struct moe_model *m, int N, bool train, struct moe_error *err)
{
	const struct moe_config *c = &m->cfg;
	/* sets of per-layer buffers: one per layer in training, except with
	 * full recompute, where backward refills one set layer by layer */
	int L = c->num_hidden_layers, sets = train && m->recompute != MOE_RECOMPUTE_FULL ? L : 1;
	if (N <= m->cap_N && sets <= m->cap_sets && m->cap_train >= train)
		return 0;
	acts_free(m);
	int D = c->hidden_size, V = c->vocab_size, E = c->num_experts, K = c->num_experts_per_tok;
	int I = c->intermediate_size, Is = m->Is, S = c->n_shared_experts;
	int Id = c->dense_intermediate_size, H = c->num_attention_heads;
	size_t ND = (size_t)N * D, NK = (size_t)N * K;
	m->la = calloc((size_t)sets, sizeof(*m->la));
	if (!m->la)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	struct graph_bufs *g = &m->g;
	g->resid = A(m, ND * (size_t)(L + 1), MOE_BUF_ACT);
	g->ids = A(m, (size_t)N, MOE_BUF_I32);
	g->tgt = A(m, (size_t)N, MOE_BUF_I32);
	g->lnf = A(m, ND, MOE_BUF_ACT);
	g->rstdf = A(m, (size_t)N, MOE_BUF_F32);
	/* logits live one chunk of rows at a time (the LM head and the loss
	 * run chunk by chunk; a training forward also runs the head's
	 * backward on each chunk while it exists) */
	int lc = m->lc_req > 0 ? m->lc_req : LOGITS_CHUNK;
	m->lc = N < lc ? N : lc;
	size_t nch = ((size_t)N + m->lc - 1) / m->lc;
	m->ce_part = calloc(nch, sizeof(*m->ce_part));
	if (!m->ce_part)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	g->logits = A(m, (size_t)m->lc * V, MOE_BUF_ACT);
	g->last_rows = A(m, (size_t)N, MOE_BUF_I32);
	g->lnf_last = A(m, ND, MOE_BUF_ACT);
	bool any_dense = c->n_dense_layers > 0, any_moe = m->Lm > 0;
	/* recomputed in backward: one buffer for all layers */
	void *sh_ln = train ? NULL : A(m, ND, MOE_BUF_ACT);
	void *sh_h = any_dense ? A(m, (size_t)N * Id, MOE_BUF_ACT) : NULL;
	/* a backend with expert_combine_down_bwd needs no expert outputs yg in
	 * the backward: then yg is one buffer for all layers and the gathered
	 * rows xg are kept per layer instead (the same memory), so that the
	 * backward does not gather them again */
	m->yg_free = train && any_moe && m->be->expert_combine_down_bwd;
	void *sh_xg = any_moe && !m->yg_free ? A(m, NK * D, MOE_BUF_ACT) : NULL;
	void *sh_yg = m->yg_free ? A(m, NK * D, MOE_BUF_ACT) : NULL;
	void *sh_he = any_moe ? A(m, NK * I, MOE_BUF_ACT) : NULL;
	void *sh_hs = any_moe && S > 0 ? A(m, (size_t)S * N * Is, MOE_BUF_ACT) : NULL;
	/* the two counts side by side: one read-back for both */
	size_t nst = (size_t)m->Lm * E;
	m->st_psum = any_moe ? A(m, nst, MOE_BUF_F32) : NULL;
	m->st_cntv = any_moe ? A(m, 2 * nst, MOE_BUF_I32) : NULL;
	m->st_cnt = m->st_cntv ? m->st_cntv + nst : NULL;
	for (int s = 0; s < sets; s++) {
		struct layer_acts *a = &m->la[s];
		/* ln1 and ln2 are kept per layer in training (1.8 GiB for seed-base
		 * at 32k tokens, and about 2 ms of recompute saved per step) */
		a->ln1 = train ? A(m, ND, MOE_BUF_ACT) : sh_ln;
		a->rstd1 = A(m, (size_t)N, MOE_BUF_F32);
		/* the q, k, v projections side by side (one batched GEMM) */
		a->qraw = A(m, 3 * ND, MOE_BUF_ACT);
		a->kraw = a->qraw ? act_at(m, a->qraw, ND) : NULL;
		a->q = A(m, ND, MOE_BUF_ACT);
		a->k = A(m, ND, MOE_BUF_ACT);
		a->v = a->qraw ? act_at(m, a->qraw, 2 * ND) : NULL;
		a->rstdq = A(m, (size_t)N, MOE_BUF_F32);
		a->rstdk = A(m, (size_t)N, MOE_BUF_F32);
		a->att = A(m, ND, MOE_BUF_ACT);
		a->lse = A(m, (size_t)N * H, MOE_BUF_F32);
		a->xmid = A(m, ND, MOE_BUF_ACT);
		a->ln2 = train ? A(m, ND, MOE_BUF_ACT) : sh_ln;
		a->rstd2 = A(m, (size_t)N, MOE_BUF_F32);
		bool per_layer = sets == L && train;
		bool moe = per_layer ? m->layers[s].is_moe : any_moe;
		bool dense = per_layer ? !m->layers[s].is_moe : any_dense;
		if (dense) {
			a->gu = A(m, (size_t)N * 2 * Id, MOE_BUF_ACT);
			a->h = sh_h;
		}
		if (moe) {
			a->rlogits = A(m, (size_t)N * E, MOE_BUF_ACT);
			a->probs = A(m, (size_t)N * E, MOE_BUF_F32);
			a->topk_idx = A(m, NK, MOE_BUF_I32);
			a->topk_w = A(m, NK, MOE_BUF_F32);
			a->offsets = A(m, (size_t)E + 1, MOE_BUF_I32);
			a->perm = A(m, NK, MOE_BUF_I32);
			a->inv = A(m, NK, MOE_BUF_I32);
			a->xg = m->yg_free ? A(m, NK * D, MOE_BUF_ACT) : sh_xg;
			a->gu_e = A(m, NK * 2 * I, MOE_BUF_ACT);
			a->h_e = sh_he;
			a->yg = m->yg_free ? sh_yg : A(m, NK * D, MOE_BUF_ACT);
			if (S > 0) {
				a->gu_s = A(m, (size_t)N * gu_s_ld(m), MOE_BUF_ACT);
				a->h_s = sh_hs;
				a->wdn_s = shared_merged(m) ? A(m, (size_t)D * S * Is, MOE_BUF_ACT) : NULL;
			}
		}
	}
	if (train) {
		/* dgu, dh: a dense MLP's, or the shared experts' (all S of them
		 * when the backend merges them) */
		int ws = shared_merged(m) ? S * Is : Is, wmax = Id > ws ? Id : ws;
		g->hgrad = A(m, (size_t)V * D, MOE_BUF_F32);
		g->dx = A(m, ND, MOE_BUF_ACT);
		g->d1 = A(m, ND, MOE_BUF_ACT);
		g->d2 = A(m, ND, MOE_BUF_ACT);
		g->dq = A(m, ND, MOE_BUF_ACT);
		g->dk = A(m, ND, MOE_BUF_ACT);
		/* the q, k, v projections' output gradients side by side (dv
		 * from the attention's backward) for one batched weight gradient */
		g->dqkv = A(m, 3 * ND, MOE_BUF_ACT);
		g->dv = g->dqkv ? act_at(m, g->dqkv, 2 * ND) : NULL;
		int wdg = 2 * (wmax > 0 ? wmax : 1), lds = S > 0 ? gu_s_ld(m) : 0; /* dgu's row */
		g->dgu = A(m, (size_t)N * (wdg > lds ? wdg : lds), MOE_BUF_ACT);
		g->dh = A(m, (size_t)N * (wmax > 0 ? wmax : 1), MOE_BUF_ACT);
		if (any_moe) {
			g->dyg = A(m, NK * D, MOE_BUF_ACT);
			g->dh_e = A(m, NK * I, MOE_BUF_ACT);
			g->dgu_e = A(m, NK * 2 * I, MOE_BUF_ACT);
			g->dxg = A(m, NK * D, MOE_BUF_ACT);
			g->dtopk_w = A(m, NK, MOE_BUF_F32);
			g->dprobs = A(m, (size_t)N * E, MOE_BUF_F32);
			g->drl = A(m, (size_t)N * E, MOE_BUF_ACT);
		}
	}
	if (m->alloc_failed) {
		acts_free(m);
		return moe_error_set(err, MOE_ENOMEM, "out of memory allocating activations for %d rows", N);
	}
	m->cap_N = N;
	m->cap_sets = sets;
	m->cap_train = train;
	return 0;
}

/* ---- forward ---------------------------------------------------------------------- */

/* The q, k, v weights of a layer follow each other in the parameters
 * (the table's order), as their activations do: one batched linear. */
static bool qkv_adjacent(const struct moe_model *m, const struct moe_layer_offsets *lo)
{
	size_t DD = (size_t)m->cfg.hidden_size * m->cfg.hidden_size;
	return lo->k == lo->q + DD && lo->v == lo->k + DD;
}

/* The q, k, v projections of a layer in one buffer, rows of 3 D (one
 * linear each way), where the backend runs the attention block's ops on
 * them (attention_qknorm_fwd / _bwd); else in three (qkv_stride) */
static bool qkv_packed(const struct moe_model *m, const struct moe_layer_offsets *lo)
{
	return m->be->attention_qknorm_fwd && m->be->attention_qknorm_bwd && qkv_adjacent(m, lo);
}

/* Elements between q and k (and k and v) in the side-by-side projection
 * buffers qraw/kraw/v and dqkv/dv: set by the allocation (acts_ensure). */
static size_t qkv_stride(const struct moe_model *m)
{
	return (size_t)m->cap_N * m->cfg.hidden_size;
}

/* out = res + x w^T (out, res distinct; N rows of Out) */
static void linear_res(struct moe_backend *be, void *out, const void *res, const void *x, const void *w, int N,
		       int In, int Out)
{
	if (be->linear_fwd_res) {
		be->linear_fwd_res(be, out, res, x, w, N, In, Out);
		return;
	}
	be->copy(be, out, res, (size_t)N * Out, MOE_BUF_ACT);
	be->linear_fwd_add(be, out, x, w, N, In, Out);
}

/* One block's forward; z (may be NULL: a recompute) receives a MoE
 * layer's z-loss value at the next sync where the router sums it */
static void block_fwd(struct moe_model *m, int l, struct layer_acts *a, void *x_in, void *x_out,
		      int B, int T, bool use_bias, double *z)
{
	struct moe_backend *be = m->be;
	const struct moe_config *c = &m->cfg;
	const struct moe_layer_offsets *lo = &m->layers[l];
	int N = B * T, D = c->hidden_size, H = c->num_attention_heads, Dh = D / H;
	float eps = (float)c->rms_norm_eps, theta = (float)c->rope_theta;
#define P(off) be->param(be, off)
	/* attention */
	be->rmsnorm_fwd(be, a->ln1, a->rstd1, x_in, P(lo->ln_in), N, D, eps);
	if (qkv_packed(m, lo)) {
		be->linear_fwd(be, a->qraw, a->ln1, P(lo->q), N, D, 3 * D);
		be->attention_qknorm_fwd(be, a->att, a->lse, a->q, a->k, a->rstdq, a->rstdk, a->qraw,
					 act_at(m, a->qraw, D), act_at(m, a->qraw, 2 * D), 3 * D, P(lo->q_norm),
					 P(lo->k_norm), B, T, H, Dh, eps, theta);
	} else if (qkv_adjacent(m, lo) && be->linear_fwd_multi) {
		/* q, k and v lie qkv_stride() apart (the allocation's N, which a
		 * smaller batch, e.g. an evaluation's last one, does not change) */
		be->linear_fwd_multi(be, a->qraw, qkv_stride(m), a->ln1, P(lo->q), (size_t)D * D, 3, N, D, D);
	} else {
		be->linear_fwd(be, a->qraw, a->ln1, P(lo->q), N, D, D);
		be->linear_fwd(be, a->kraw, a->ln1, P(lo->k), N, D, D);
		be->linear_fwd(be, a->v, a->ln1, P(lo->v), N, D, D);
	}
	if (!qkv_packed(m, lo)) {
		be->qknorm_rope_fwd(be, a->q, a->rstdq, a->qraw, P(lo->q_norm), B, T, H, Dh, eps, theta);
		be->qknorm_rope_fwd(be, a->k, a->rstdk, a->kraw, P(lo->k_norm), B, T, H, Dh, eps, theta);
		be->attention_fwd(be, a->att, a->lse, a->q, a->k, a->v, B, T, H, Dh);
	}
	/* x_mid = x_in + attn; x_out = x_mid + mlp (the GEMMs add into them) */
	linear_res(be, a->xmid, x_in, a->att, P(lo->o), N, D, D);
	be->rmsnorm_fwd(be, a->ln2, a->rstd2, a->xmid, P(lo->ln_post), N, D, eps);
	if (!lo->is_moe) {
		int Id = c->dense_intermediate_size;
		be->linear_fwd(be, a->gu, a->ln2, P(lo->dense_gate_up), N, D, 2 * Id);
		be->swiglu_gu_fwd(be, a->h, a->gu, N, Id, 1, 2 * Id);
		linear_res(be, x_out, a->xmid, a->h, P(lo->dense_down), N, Id, D);
		return;
	}
	int E = c->num_experts, K = c->num_experts_per_tok, I = c->intermediate_size;
	int Is = m->Is, S = c->n_shared_experts, NK = N * K;
	int lds = gu_s_ld(m); /* gu_s's row */
	bool rm = router_merged(m);
	/* merged: the logits and the shared experts' gate_up in one linear,
	 * the logits gu_s's first E columns, where the router reads them */
	if (rm)
		be->linear_fwd(be, a->gu_s, a->ln2, P(lo->router), N, D, lds);
	else
		be->linear_fwd(be, a->rlogits, a->ln2, P(lo->router), N, D, E);
	const float *bias = use_bias ? be->master(be, lo->bias) : NULL;
	be->router_fwd(be, a->topk_idx, a->topk_w, a->probs, rm ? a->gu_s : a->rlogits, rm ? lds : E, bias, N, E, K,
		       c->norm_topk_prob, z);
	be->route_group(be, m->st_cnt + (size_t)(l - c->n_dense_layers) * E, a->offsets, a->perm, a->inv,
			a->topk_idx, N, K, E);
	/* gather, gate_up GEMM and SwiGLU (xg: scratch of the unfused path) */
	be->expert_up_fwd(be, a->gu_e, a->h_e, a->ln2, a->perm, P(lo->expert_gate_up), a->offsets, a->xg, NK, K, E,
			  D, I);
	be->grouped_linear_fwd(be, a->yg, a->h_e, P(lo->expert_down), a->offsets, E, I, D);
	/* x_out = x_mid + the routed experts' sum (the shared experts add next) */
	be->combine_fwd(be, x_out, a->xmid, a->yg, a->topk_w, a->inv, N, K, D);
	if (shared_merged(m)) { /* the shared experts side by side: S rows a token, lds apart */
		int o = rm ? E : 0; /* merged: their gate_up came with the logits, after them */
		if (!rm)
			be->linear_fwd(be, a->gu_s, a->ln2, P(lo->shared_gate_up), N, D, lds);
		be->swiglu_gu_fwd(be, a->h_s, act_at(m, a->gu_s, o), N * S, Is, S, lds);
		be->copy_rows(be, a->wdn_s, S * Is, Is, P(lo->shared_down), Is, (size_t)D * Is, D, Is, S);
		be->linear_fwd_add(be, x_out, a->h_s, a->wdn_s, N, S * Is, D);
	} else {
		for (int s = 0; s < S; s++) {
			void *gu = act_at(m, a->gu_s, (size_t)s * N * 2 * Is);
			void *h = act_at(m, a->h_s, (size_t)s * N * Is);
			be->linear_fwd(be, gu, a->ln2, P(lo->shared_gate_up + (size_t)s * 2 * Is * D), N, D, 2 * Is);
			be->swiglu_gu_fwd(be, h, gu, N, Is, 1, 2 * Is);
			be->linear_fwd_add(be, x_out, h, P(lo->shared_down + (size_t)s * D * Is), N, Is, D);
		}
	}
#undef P
}

/* Aux loss value and per-layer gradient row g (E) w.r.t. probs, for a unit
 * coefficient, from the per-layer statistics of the last forward. */
static double aux_value(const struct moe_model *m, int lm, float *g)
{
	const struct moe_config *c = &m->cfg;
	int E = c->num_experts, K = c->num_experts_per_tok, Lm = m->Lm;
	double T = (double)m->n_rows_valid;
	if (Lm == 0 || T <= 0) {
		if (g)
			for (int e = 0; e < E; e++)
				g[e] = 0.0f;
		return 0.0;
	}
	if (c->aux_loss_form == MOE_AUX_SWITCH) {
		double R = T * Lm, aux = 0.0;
		for (int e = 0; e < E; e++) {
			double C = 0.0, P = 0.0;
			for (int l = 0; l < Lm; l++) {
				C += m->cntv[(size_t)l * E + e];
				P += m->psum[(size_t)l * E + e];
			}
			aux += (double)E * (C / R) * (P / R);
			if (g)
				g[e] = (float)((double)E * (C / R) / R);
		}
		return aux;
	}
	double aux = 0.0;
	for (int l = 0; l < Lm; l++) {
		double lb = 0.0;
		for (int e = 0; e < E; e++) {
			double cnt = m->cntv[(size_t)l * E + e], P = m->psum[(size_t)l * E + e] / T;
			lb += cnt * P;
			if (g && l == lm)
				g[e] = (float)((double)E / (T * K) * cnt / T / Lm);
		}
		aux += (double)E / (T * K) * lb / Lm;
	}
	return aux;
}

/* Copy one MoE layer's routing to the capture's host arrays. */
static void capture_readback(struct moe_model *m, struct layer_acts *a, int lm, int N,
			     struct moe_routing_capture *cap)
{
	struct moe_backend *be = m->be;
	int E = m->cfg.num_experts, K = m->cfg.num_experts_per_tok;
	size_t o = (size_t)lm * N * K;
	if (cap->topk_idx)
		be->to_host(be, cap->topk_idx + o, a->topk_idx, (size_t)N * K, MOE_BUF_I32);
	if (cap->topk_w)
		be->to_host(be, cap->topk_w + o, a->topk_w, (size_t)N * K, MOE_BUF_F32);
	if (cap->router_logits) {
		if (router_merged(m)) /* they are in gu_s's first columns */
			be->copy_rows(be, a->rlogits, E, 0, a->gu_s, gu_s_ld(m), 0, N, E, 1);
		be->to_host(be, cap->router_logits + (size_t)lm * N * E, a->rlogits, (size_t)N * E,
			    MOE_BUF_ACT);
	}
}

/* The routing statistics of the forward (psum, and cntv and counts side by
 * side) asked for before the sync that ends the forward, which delivers
 * them (to_host_later); stats_unpack splits the counts after it. */
static void stats_request(struct moe_model *m)
{
	struct moe_backend *be = m->be;
	size_t n = (size_t)m->Lm * m->cfg.num_experts;
	be->to_host_later(be, m->psum, m->st_psum, n, MOE_BUF_F32);
	be->to_host_later(be, m->st_host, m->st_cntv, 2 * n, MOE_BUF_I32);
}

static void stats_unpack(struct moe_model *m)
{
	size_t n = (size_t)m->Lm * m->cfg.num_experts;
	const int32_t *cn = m->st_host;
	memcpy(m->cntv, cn, n * sizeof(int32_t));
	for (size_t i = 0; i < n; i++)
		m->counts[i] = cn[n + i];
}

/* Per-row next-token statistics of rows [r0, r0 + n) from the current
 * logits chunk. */
static int token_stats(struct moe_model *m, const struct moe_forward_opts *opts, const int32_t *targets, int r0,
		       int n, struct moe_error *err)
{
	struct moe_backend *be = m->be;
	int V = m->cfg.vocab_size;
	float *row = malloc(sizeof(float) * (size_t)V);
	if (!row)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	for (int i = 0; i < n; i++) {
		be->to_host(be, row, act_at(m, m->g.logits, (size_t)i * V), (size_t)V, MOE_BUF_ACT);
		int am = 0;
		for (int v = 1; v < V; v++)
			if (row[v] > row[am])
				am = v;
		double s = 0.0;
		for (int v = 0; v < V; v++)
			s += exp((double)row[v] - row[am]);
		double lse = row[am] + log(s);
		struct moe_token_stats *ts = &opts->token_stats[r0 + i];
		int t = targets ? targets[r0 + i] : -1;
		ts->argmax = am;
		ts->p_argmax = (float)exp(row[am] - lse);
		ts->logprob_target = targets && t != m->cfg.pad_token_id ? (float)(row[t] - lse) : NAN;
	}
	free(row);
	return 0;
}

int moe_model_forward(struct moe_model *m, const int32_t *tokens, const int32_t *targets, int B,
		      int T, const struct moe_forward_opts *opts, struct moe_losses *losses,
		      struct moe_error *err)
{
	static const struct moe_forward_opts none = {0};
	const struct moe_config *c = &m->cfg;
	struct moe_backend *be = m->be;
	if (!opts)
		opts = &none;
	m->fwd_valid = false;
	m->head_in_grad = false;
	if (B < 1 || T < 1 || (int64_t)B * T * (c->num_experts_per_tok > 1 ? c->num_experts_per_tok : 1) > INT32_MAX)
		return moe_error_set(err, MOE_EINVAL, "forward: bad batch shape %d x %d", B, T);
	int N = B * T, D = c->hidden_size, V = c->vocab_size, E = c->num_experts;
	int K = c->num_experts_per_tok, L = c->num_hidden_layers;
	int64_t rows_valid = 0, targets_valid = 0; /* rows whose token / target is not the pad id */
	for (int n = 0; n < N; n++) {
		if (tokens[n] < 0 || tokens[n] >= V)
			return moe_error_set(err, MOE_EINVAL, "forward: token %d at row %d out of range [0, %d)",
					     tokens[n], n, V);
		rows_valid += tokens[n] != c->pad_token_id;
		if (!targets)
			continue;
		if ((targets[n] < 0 || targets[n] >= V) && targets[n] != c->pad_token_id)
			return moe_error_set(err, MOE_EINVAL, "forward: target %d at row %d out of range [0, %d)",
					     targets[n], n, V);
		targets_valid += targets[n] != c->pad_token_id;
	}
	int rc = acts_ensure(m, N, opts->train, err);
	if (rc < 0)
		return rc;
	struct graph_bufs *g = &m->g;
	/* Training routes with the selection bias when loss-free balancing is on;
	 * evaluation only when asked to. */
	bool use_bias = opts->train ? c->loss_free_balancing : opts->eval_use_bias;
	m->fwd_use_bias = use_bias;
	be->from_host(be, g->ids, tokens, (size_t)N, MOE_BUF_I32);
	if (targets)
		be->from_host(be, g->tgt, targets, (size_t)N, MOE_BUF_I32);
	m->n_rows_valid = rows_valid;
	be->embedding_fwd(be, g->resid, g->ids, be->param(be, m->off_embed), N, D);
	bool defer = m->cap_sets == L;
	for (int l = 0; l < L; l++) {
		struct layer_acts *a = &m->la[defer ? l : 0];
		void *xin = act_at(m, g->resid, (size_t)l * N * D);
		void *xout = act_at(m, g->resid, (size_t)(l + 1) * N * D);
		bool moe = m->layers[l].is_moe;
		int lm = l - c->n_dense_layers;
		block_fwd(m, l, a, xin, xout, B, T, use_bias, moe ? &m->zl[lm] : NULL); /* z: at the sync */
		if (!moe)
			continue;
		be->router_stats(be, m->st_psum + (size_t)lm * E, m->st_cntv + (size_t)lm * E, a->probs, a->topk_idx,
				 g->ids, c->pad_token_id, N, E, K);
		if (!defer && opts->capture) /* the next layer reuses this set */
			capture_readback(m, a, lm, N, opts->capture);
	}
	if (defer && opts->capture) /* every layer kept its buffers: after all launches */
		for (int l = c->n_dense_layers; l < L; l++)
			capture_readback(m, &m->la[l], l - c->n_dense_layers, N, opts->capture);
	void *xL = act_at(m, g->resid, (size_t)L * N * D);
	bool last_only = opts->logits_mode == MOE_LOGITS_LAST && !targets && !opts->token_stats &&
			 !opts->train;
	be->rmsnorm_fwd(be, g->lnf, g->rstdf, xL, be->param(be, m->off_norm), N, D, (float)c->rms_norm_eps);
	if (last_only) {
		/* only the last position of each row goes through the LM head,
		 * m->lc rows at a time (the logits buffer's size) */
		int32_t *rows = malloc(sizeof(int32_t) * (size_t)B);
		if (!rows)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		for (int b = 0; b < B; b++)
			rows[b] = b * T + T - 1;
		be->from_host(be, g->last_rows, rows, (size_t)B, MOE_BUF_I32);
		free(rows);
		be->gather_rows(be, g->lnf_last, g->lnf, g->last_rows, B, 1, D);
		for (int b0 = 0; b0 < B; b0 += m->lc) {
			int nb = B - b0 < m->lc ? B - b0 : m->lc;
			be->linear_fwd(be, g->logits, act_at(m, g->lnf_last, (size_t)b0 * D), be->param(be, m->off_head),
				       nb, D, V);
			if (opts->logits_out)
				be->to_host(be, opts->logits_out + (size_t)b0 * V, g->logits, (size_t)nb * V,
					    MOE_BUF_ACT);
		}
	} else {
		/* LM head and loss, chunk by chunk of rows.  A training forward
		 * with targets also runs the head's backward here, while the
		 * chunk's logits exist: dlogits (for a unit loss scale) in place,
		 * d(lnf) into g->d1 and the head's weight gradient into g->hgrad;
		 * moe_model_backward scales both by its grad_scale.  When the
		 * next backward stores the gradients anew (grad_fresh), the
		 * head's goes straight into its slot instead, the first chunk's
		 * stored (under grad_overwrite), the others added: no clearing
		 * of hgrad, no copy of it in the backward. */
		bool fused = opts->train && targets;
		m->head_in_grad = fused && m->grad_fresh;
		float *hg = m->head_in_grad ? be->grad(be, m->off_head) : g->hgrad;
		if (fused && !m->head_in_grad)
			be->zero(be, g->hgrad, (size_t)V * D, MOE_BUF_F32);
		float hscale = targets_valid > 0 ? 1.0f / (float)targets_valid : 0.0f;
		for (int r0 = 0, ci = 0; r0 < N; r0 += m->lc, ci++) {
			int n = N - r0 < m->lc ? N - r0 : m->lc;
			be->linear_fwd(be, g->logits, act_at(m, g->lnf, (size_t)r0 * D), be->param(be, m->off_head),
				       n, D, V);
			if (opts->logits_out && opts->logits_mode == MOE_LOGITS_ALL)
				be->to_host(be, opts->logits_out + (size_t)r0 * V, g->logits, (size_t)n * V,
					    MOE_BUF_ACT);
			else if (opts->logits_out && opts->logits_mode == MOE_LOGITS_LAST)
				for (int b = r0 / T; b < B; b++) {
					int row = b * T + T - 1;
					if (row >= r0 + n)
						break;
					be->to_host(be, opts->logits_out + (size_t)b * V,
						    act_at(m, g->logits, (size_t)(row - r0) * V), (size_t)V,
						    MOE_BUF_ACT);
				}
			if (opts->token_stats && (rc = token_stats(m, opts, targets, r0, n, err)) < 0)
				return rc;
			if (fused) {
				const void *lnf = act_at(m, g->lnf, (size_t)r0 * D);
				be->xent(be, g->logits, g->logits, g->tgt + r0, n, V, c->pad_token_id, hscale,
					 &m->ce_part[ci]);
				be->grad_overwrite = m->head_in_grad && r0 == 0;
				be->linear_bwd(be, act_at(m, g->d1, (size_t)r0 * D), hg, g->logits, lnf,
					       be->param(be, m->off_head), n, D, V);
				be->grad_overwrite = false;
			} else if (targets) {
				be->xent(be, NULL, g->logits, g->tgt + r0, n, V, c->pad_token_id, 0.0f,
					 &m->ce_part[ci]);
			}
		}
	}
	/* the routing statistics read back after the LM head, not before it:
	 * nothing on the host needs them earlier, and a read-back there would
	 * stall the device between the last layer and the head */
	if (m->Lm > 0)
		stats_request(m);
	if ((rc = be->sync(be, err)) < 0)
		return rc;
	if (m->Lm > 0)
		stats_unpack(m);
	/* the deferred results are in place after the sync */
	double ce_sum = 0.0, zsum = 0.0;
	int64_t nv = targets ? targets_valid : 0; /* the rows xent counts */
	if (targets && !last_only)
		for (int r0 = 0, ci = 0; r0 < N; r0 += m->lc, ci++)
			ce_sum += m->ce_part[ci];
	for (int lm = 0; lm < m->Lm; lm++)
		zsum += m->zl[lm];
	m->n_valid = nv;
	m->ce = nv > 0 ? ce_sum / (double)nv : 0.0;
	m->aux = aux_value(m, -1, NULL);
	m->z = zsum;
	if (losses) {
		losses->ce = m->ce;
		losses->aux = m->aux;
		losses->z = m->z;
		losses->aux_coef = m->aux_coef;
		losses->n_valid = nv;
		losses->total = m->ce + m->aux_coef * m->aux + c->router_z_loss_coef * m->z;
	}
	m->B = B;
	m->T = T;
	m->fwd_valid = opts->train && targets;
	return 0;
}

/* ---- backward ------------------------------------------------------------------------ */

static void block_bwd(struct moe_model *m, int l, struct layer_acts *a, void *x_in, void *x_mid,
		      void *dx, int B, int T, float grad_scale)
{
	struct moe_backend *be = m->be;
	const struct moe_config *c = &m->cfg;
	const struct moe_layer_offsets *lo = &m->layers[l];
	struct graph_bufs *g = &m->g;
	int N = B * T, D = c->hidden_size, H = c->num_attention_heads, Dh = D / H;
	float theta = (float)c->rope_theta;
#define P(off) be->param(be, off)
#define G(off) be->grad(be, off)
	/* MLP: dx is the gradient w.r.t. the block output (and the MLP output).
	 * h, xg, h_e and h_s live in buffers shared by all layers: recompute
	 * them from what this layer kept (identical values). */
	void *dln2 = g->d1;
	if (!lo->is_moe) {
		int Id = c->dense_intermediate_size;
		/* dgrad, then SwiGLU's backward recomputing h, then the wgrad that needs h */
		be->linear_bwd(be, g->dh, NULL, dx, a->h, P(lo->dense_down), N, Id, D);
		be->swiglu_gu_bwd(be, g->dgu, a->h, g->dh, a->gu, N, Id, 1, 2 * Id);
		be->linear_bwd(be, NULL, G(lo->dense_down), dx, a->h, P(lo->dense_down), N, Id, D);
		be->linear_bwd(be, dln2, G(lo->dense_gate_up), g->dgu, a->ln2, P(lo->dense_gate_up), N, D, 2 * Id);
	} else {
		int E = c->num_experts, K = c->num_experts_per_tok, I = c->intermediate_size;
		int Is = m->Is, S = c->n_shared_experts, NK = N * K;
		int lm = l - c->n_dense_layers;
		/* routed experts */
		if (m->yg_free) { /* no yg: the gate weights' gradient from dh_e and h_e */
			be->expert_combine_down_bwd(be, g->dgu_e, a->h_e, G(lo->expert_down), g->dtopk_w, dx, a->gu_e,
						    a->topk_w, a->perm, P(lo->expert_down), a->offsets, g->dyg, g->dh_e,
						    N, K, E, I, D);
		} else {
			be->combine_bwd(be, g->dyg, g->dtopk_w, dx, a->yg, a->topk_w, a->inv, N, K, D);
			/* down dgrad with SwiGLU's backward (h_e recomputed), down wgrad */
			be->expert_down_bwd(be, g->dgu_e, a->h_e, G(lo->expert_down), g->dyg, a->gu_e,
					    P(lo->expert_down), a->offsets, g->dh_e, NK, E, I, D);
		}
		/* gate_up dgrad and wgrad on the gathered rows (xg: this layer's
		 * with yg_free, else scratch gathered again) */
		be->expert_up_bwd(be, g->dxg, G(lo->expert_gate_up), g->dgu_e, a->ln2, a->perm, P(lo->expert_gate_up),
				  a->offsets, a->xg, m->yg_free, NK, K, E, D, I);
		/* router: top-k weights, aux loss through probs, z-loss through logits */
		float gaux[E];
		aux_value(m, lm, gaux);
		for (int e = 0; e < E; e++)
			gaux[e] *= (float)(m->aux_coef * grad_scale);
		be->aux_dprobs(be, g->dprobs, gaux, g->ids, c->pad_token_id, N, E);
		bool rm = router_merged(m);
		float zs = (float)(c->router_z_loss_coef * grad_scale);
		/* merged: dlogits straight into dgu's first columns */
		int ld = rm ? gu_s_ld(m) : E;
		void *dl = rm ? g->dgu : g->drl;
		be->router_bwd(be, dl, ld, g->dtopk_w, g->dprobs, a->probs, a->topk_idx, a->topk_w, N, E, K,
			       c->norm_topk_prob);
		if (c->router_z_loss_coef != 0.0)
			be->zloss(be, dl, rm ? a->gu_s : a->rlogits, ld, N, E, zs, NULL);
		if (!rm) {
			be->linear_bwd(be, dln2, G(lo->router), g->drl, a->ln2, P(lo->router), N, D, E);
			be->scatter_add_rows(be, dln2, g->dxg, a->perm, NK, K, D);
		}
		if (shared_merged(m)) { /* as the forward ran them: side by side, rows of lds */
			int lds = gu_s_ld(m), o = rm ? E : 0;
			be->linear_bwd(be, g->dh, NULL, dx, a->h_s, a->wdn_s, N, S * Is, D);
			be->swiglu_gu_bwd(be, act_at(m, g->dgu, o), a->h_s, g->dh, act_at(m, a->gu_s, o), N * S, Is, S,
					  lds);
			be->linear_wgrad_multi(be, G(lo->shared_down), (size_t)D * Is, dx, 0, D, a->h_s, Is, S * Is, S,
					       N, Is, D);
			if (rm) {
				/* the router's dlogits beside the shared experts' dgu: one
				 * linear's backward for both; the routed experts' input
				 * gradient adds last */
				be->linear_bwd(be, dln2, G(lo->router), g->dgu, a->ln2, P(lo->router), N, D, lds);
				be->scatter_add_rows(be, dln2, g->dxg, a->perm, NK, K, D);
			} else {
				be->linear_bwd_add(be, dln2, G(lo->shared_gate_up), g->dgu, a->ln2,
						   P(lo->shared_gate_up), N, D, lds);
			}
		} else {
			for (int s = 0; s < S; s++) {
				void *gu = act_at(m, a->gu_s, (size_t)s * N * 2 * Is);
				void *h = act_at(m, a->h_s, (size_t)s * N * Is);
				size_t ogu = lo->shared_gate_up + (size_t)s * 2 * Is * D;
				size_t odn = lo->shared_down + (size_t)s * D * Is;
				be->linear_bwd(be, g->dh, NULL, dx, h, P(odn), N, Is, D);
				be->swiglu_gu_bwd(be, g->dgu, h, g->dh, gu, N, Is, 1, 2 * Is);
				be->linear_bwd(be, NULL, G(odn), dx, h, P(odn), N, Is, D);
				be->linear_bwd_add(be, dln2, G(ogu), g->dgu, a->ln2, P(ogu), N, D, 2 * Is);
			}
		}
	}
	/* dx: gradient w.r.t. x_mid (the residual's plus the norm's) */
	be->rmsnorm_bwd_add(be, dx, G(lo->ln_post), dln2, x_mid, P(lo->ln_post), a->rstd2, N, D);
	/* attention */
	be->linear_bwd(be, g->d1, G(lo->o), dx, a->att, P(lo->o), N, D, D);
	if (qkv_packed(m, lo)) { /* the projections' output gradients in rows of 3 D */
		be->attention_qknorm_bwd(be, g->dqkv, act_at(m, g->dqkv, D), act_at(m, g->dqkv, 2 * D), 3 * D,
					 G(lo->q_norm), G(lo->k_norm), g->dq, g->dk, g->d1, a->q, a->k,
					 act_at(m, a->qraw, 2 * D), a->att, a->lse, a->qraw, act_at(m, a->qraw, D),
					 P(lo->q_norm), P(lo->k_norm), a->rstdq, a->rstdk, B, T, H, Dh, theta);
		/* d2 = dln1 (one GEMM); the weight gradients as three batched
		 * (faster than one of 3 D rows among the algorithms the GEMM
		 * tuning may take: H100, session 11, call 65) */
		bool multi = be->linear_wgrad_multi != NULL;
		be->linear_bwd(be, g->d2, multi ? NULL : G(lo->q), g->dqkv, a->ln1, P(lo->q), N, D, 3 * D);
		if (multi)
			be->linear_wgrad_multi(be, G(lo->q), (size_t)D * D, g->dqkv, D, 3 * D, a->ln1, 0, D, 3, N, D, D);
	} else {
		be->attention_bwd(be, g->dq, g->dk, g->dv, g->d1, a->q, a->k, a->v, a->att, a->lse, B, T, H, Dh);
		/* the projections' output gradients, side by side with dv */
		void *dqr = g->dqkv, *dkr = act_at(m, g->dqkv, qkv_stride(m));
		be->qknorm_rope_bwd(be, dqr, G(lo->q_norm), g->dq, a->qraw, P(lo->q_norm), a->rstdq, B, T, H, Dh,
				    theta);
		be->qknorm_rope_bwd(be, dkr, G(lo->k_norm), g->dk, a->kraw, P(lo->k_norm), a->rstdk, B, T, H, Dh,
				    theta);
		bool multi = qkv_adjacent(m, lo) && be->linear_wgrad_multi;
		/* d2 = dln1 */
		be->linear_bwd(be, g->d2, multi ? NULL : G(lo->q), dqr, a->ln1, P(lo->q), N, D, D);
		be->linear_bwd_add(be, g->d2, multi ? NULL : G(lo->k), dkr, a->ln1, P(lo->k), N, D, D);
		be->linear_bwd_add(be, g->d2, multi ? NULL : G(lo->v), g->dv, a->ln1, P(lo->v), N, D, D);
		if (multi)
			be->linear_wgrad_multi(be, G(lo->q), (size_t)D * D, g->dqkv, qkv_stride(m), D, a->ln1, 0, D, 3, N,
					       D, D);
	}
	be->rmsnorm_bwd_add(be, dx, G(lo->ln_in), g->d2, x_in, P(lo->ln_in), a->rstd1, N, D);
#undef P
#undef G
}

/* Gradients by overwrite with a backend that takes cleared regions: every
 * run of adjacent tensors other than the routed experts', the LM head's and
 * the embedding's (norms, attention, router, shared experts, dense MLPs and
 * the never-written selection bias: per layer, the tensors around its routed
 * experts) cleared in one memset and announced (model.h, grad_cleared), so
 * the ops that add into them need not clear each tensor first. */
static void clear_added_grads(struct moe_model *m)
{
	struct moe_backend *be = m->be;
	size_t lo = 0, hi = 0; /* the open run [lo, hi); empty when equal */
	for (size_t i = 0; i <= m->n_params; i++) {
		const struct moe_param *p = i < m->n_params ? &m->params[i] : NULL;
		bool take = p && p->kind != MOE_P_EXPERT && p->offset != m->off_head && p->offset != m->off_embed;
		if (take && hi > lo && p->offset == hi) {
			hi += p->numel;
			continue;
		}
		if (hi > lo) {
			be->zero(be, be->grad(be, lo), hi - lo, MOE_BUF_F32);
			be->grad_cleared(be, be->grad(be, lo), hi - lo);
		}
		lo = hi = 0;
		if (take) {
			lo = p->offset;
			hi = p->offset + p->numel;
		}
	}
}

int moe_model_backward(struct moe_model *m, float grad_scale, struct moe_error *err)
{
	if (!m->fwd_valid)
		return moe_error_set(err, MOE_EINVAL,
				     "backward: needs a training forward with targets just before");
	struct moe_backend *be = m->be;
	const struct moe_config *c = &m->cfg;
	struct graph_bufs *g = &m->g;
	int B = m->B, T = m->T, N = B * T, D = c->hidden_size, V = c->vocab_size, L = c->num_hidden_layers;
	/* gradients by overwrite (moe_model_zero_grad left them): the ops store
	 * their parameter gradients; what no op writes is cleared here */
	be->grad_overwrite = m->grad_fresh;
	if (be->grad_overwrite && be->grad_cleared)
		clear_added_grads(m);
	else if (be->grad_overwrite) {
		for (size_t i = 0; i < m->n_params; i++)
			if (!m->params[i].trainable) /* the selection bias */
				be->zero(be, be->grad(be, m->params[i].offset), m->params[i].numel, MOE_BUF_F32);
	}
	/* the forward ran the LM head's backward for a unit scale: d(lnf) is in
	 * g->d1, the head's weight gradient in its slot (head_in_grad: scaled
	 * there) or in g->hgrad (copied when it is the whole gradient, else
	 * added, scaled) */
	if (m->head_in_grad) {
		float *hg = be->grad(be, m->off_head);
		if (grad_scale != 1.0f) /* hg += (s - 1) hg */
			be->axpy(be, hg, hg, (size_t)V * D, grad_scale - 1.0f);
	} else if (be->grad_overwrite && grad_scale == 1.0f) {
		be->copy(be, be->grad(be, m->off_head), g->hgrad, (size_t)V * D, MOE_BUF_F32);
	} else {
		if (be->grad_overwrite)
			be->zero(be, be->grad(be, m->off_head), (size_t)V * D, MOE_BUF_F32);
		be->axpy(be, be->grad(be, m->off_head), g->hgrad, (size_t)V * D, grad_scale);
	}
	if (grad_scale != 1.0f)
		be->scale_act(be, g->d1, (size_t)N * D, grad_scale);
	void *xL = act_at(m, g->resid, (size_t)L * N * D);
	be->rmsnorm_bwd(be, g->dx, be->grad(be, m->off_norm), g->d1, xL, be->param(be, m->off_norm),
			g->rstdf, N, D);
	bool full = m->cap_sets == 1 && L > 1;
	for (int l = L - 1; l >= 0; l--) {
		void *xin = act_at(m, g->resid, (size_t)l * N * D);
		struct layer_acts *a = &m->la[full ? 0 : l];
		if (full) /* refill the one set: the block's forward again (it rewrites
			   * its output in the residual stream with the same values) */
			block_fwd(m, l, a, xin, act_at(m, g->resid, (size_t)(l + 1) * N * D), B, T, m->fwd_use_bias,
				  NULL);
		block_bwd(m, l, a, xin, a->xmid, g->dx, B, T, grad_scale);
	}
	if (be->grad_overwrite) /* a scatter: adds into the rows of the batch's tokens */
		be->zero(be, be->grad(be, m->off_embed), (size_t)V * D, MOE_BUF_F32);
	be->embedding_bwd(be, be->grad(be, m->off_embed), g->dx, g->ids, N, D, c->pad_token_id);
	if (be->grad_overwrite && be->grad_cleared)
		be->grad_cleared(be, NULL, 0);
	be->grad_overwrite = m->grad_fresh = false;
	m->fwd_valid = false; /* the shared buffers were overwritten */
	/* no synchronisation: the optimizer's read-back waits once for both */
	return be->status ? be->status(be, err) : be->sync(be, err);
}

/* ---- loss-free balancing ------------------------------------------------------------ */

int moe_model_update_bias(struct moe_model *m, const int64_t *counts, float u, struct moe_error *err)
{
	const struct moe_config *c = &m->cfg;
	struct moe_backend *be = m->be;
	int E = c->num_experts;
	float clamp = (float)c->balance_bias_clamp;
	for (int l = 0; l < c->num_hidden_layers; l++) {
		const struct moe_layer_offsets *lo = &m->layers[l];
		if (!lo->is_moe)
			continue;
		int8_t dir[E];
		moe_balance_dir(dir, counts + (size_t)(l - c->n_dense_layers) * E, E);
		/* on the device, queued: no round trip */
		if (be->balance_bias && be->balance_bias(be, be->master(be, lo->bias), dir, E, u, clamp))
			continue;
		float b[E];
		be->to_host(be, b, be->master(be, lo->bias), (size_t)E, MOE_BUF_F32);
		moe_balance_apply(b, dir, E, u, clamp);
		be->from_host(be, be->master(be, lo->bias), b, (size_t)E, MOE_BUF_F32);
	}
	be->params_updated(be);
	return be->status ? be->status(be, err) : be->sync(be, err);
}
