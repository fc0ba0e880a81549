/*
 * lib/model: configuration, parameter table, forward invariants, losses at
 * known points, checkpoint round trips (ours and HF-sharded bf16), the
 * selection-bias update and a short optimisation that must lower the loss.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include <criterion/criterion.h>

#include "core/core.h"
#include "model/model.h"
#include "model/ops.h"

static void small_config(struct moe_config *c)
{
	moe_config_defaults(c);
	c->vocab_size = 64;
	c->hidden_size = 32;
	c->num_attention_heads = 4;
	c->num_hidden_layers = 3;
	c->n_dense_layers = 1;
	c->dense_intermediate_size = 48;
	c->num_experts = 4;
	c->num_experts_per_tok = 2;
	c->intermediate_size = 16;
	c->n_shared_experts = 1;
	c->shared_expert_intermediate_size = 16;
	c->pad_token_id = 1;
	c->eos_token_id = 0;
	c->max_position_embeddings = 64;
}

static char *tmpdir(void)
{
	const char *base = getenv("TMPDIR");
	char *d = moe_path_join(base && *base ? base : "/tmp", "moe-model-test.XXXXXX");
	cr_assert(mkdtemp(d));
	return d;
}

static void rmrf(const char *d)
{
	struct moe_error err = {0};
	moe_rmtree(d, &err);
}

/* ---- configuration --------------------------------------------------------------- */

Test(config, presets_and_seed_parameter_counts)
{
	/* independent reference: the counts printed by the seed / derived from
	 * OLMoE's published shape (shared/reference/seed-spec.md 1.8) */
	struct moe_config c;
	struct moe_error err = {0};
	int64_t total, active;
	cr_assert_eq(moe_config_load(&c, "seed-base", &err), 0, "%s", err.msg);
	cr_assert_eq(c.hidden_size, 768);
	cr_assert_eq(moe_config_n_moe_layers(&c), 18);
	cr_assert_eq(moe_config_count_params(&c, &total, &active, &err), 0, "%s", err.msg);
	cr_assert_eq(total, 1883662080LL);
	cr_assert_eq(active, 291137280LL);
	cr_assert_eq(moe_config_load(&c, "olmoe-1b-7b", &err), 0, "%s", err.msg);
	cr_assert_eq(moe_config_count_params(&c, &total, &active, &err), 0, "%s", err.msg);
	cr_assert_eq(total, 6919161856LL);
	cr_assert_eq(active, 1282017280LL);
	cr_assert_eq(c.aux_loss_form, MOE_AUX_MEGABLOCKS);
	cr_assert_eq(moe_config_load(&c, "tiny", &err), 0, "%s", err.msg);
	cr_assert_eq(c.vocab_size, 8192);
	cr_assert_eq(c.pad_token_id, -1);
	cr_assert_eq(moe_config_load(&c, "no-such-preset", &err), MOE_ENOTFOUND);
	cr_assert(strstr(err.msg, "no-such-preset"));
}

static int parse(const char *text, struct moe_config *c, struct moe_error *err)
{
	json_error_t je;
	json_t *j = json_loads(text, 0, &je);
	cr_assert(j, "bad test JSON: %s", je.text);
	moe_config_defaults(c);
	int rc = moe_config_from_json(c, j, "t.json", err);
	json_decref(j);
	return rc;
}

Test(config, errors_name_the_key)
{
	struct moe_config c;
	struct moe_error err = {0};
	cr_assert_lt(parse("{\"hidden_size\": 64, \"bogus_key\": 1}", &c, &err), 0);
	cr_assert(strstr(err.msg, "bogus_key") && strstr(err.msg, "t.json"), "%s", err.msg);
	cr_assert_lt(parse("{\"hidden_size\": -5}", &c, &err), 0);
	cr_assert(strstr(err.msg, "hidden_size"), "%s", err.msg);
	cr_assert_lt(parse("{\"num_experts\": \"eight\"}", &c, &err), 0);
	cr_assert(strstr(err.msg, "num_experts"), "%s", err.msg);
	cr_assert_lt(parse("{\"num_experts\": 4, \"num_experts_per_tok\": 5}", &c, &err), 0);
	cr_assert(strstr(err.msg, "num_experts_per_tok"), "%s", err.msg);
	cr_assert_lt(parse("{\"aux_loss_form\": \"gshard\"}", &c, &err), 0);
	cr_assert(strstr(err.msg, "aux_loss_form"), "%s", err.msg);
	cr_assert_lt(parse("{\"tie_word_embeddings\": true}", &c, &err), 0);
	cr_assert(strstr(err.msg, "tie_word_embeddings"), "%s", err.msg);
	cr_assert_lt(parse("{\"num_key_value_heads\": 4}", &c, &err), 0);
	cr_assert(strstr(err.msg, "num_key_value_heads"), "%s", err.msg);
	cr_assert_lt(parse("{\"n_dense_layers\": 2}", &c, &err), 0);
	cr_assert(strstr(err.msg, "dense_intermediate_size"), "%s", err.msg);
	cr_assert_lt(parse("{\"hidden_size\": 100, \"num_attention_heads\": 3}", &c, &err), 0);
	cr_assert(strstr(err.msg, "hidden_size"), "%s", err.msg);
	/* keys transformers writes are accepted */
	cr_assert_eq(parse("{\"torch_dtype\": \"bfloat16\", \"transformers_version\": \"4.48.3\","
			   " \"use_cache\": true, \"architectures\": [\"OlmoeForCausalLM\"]}", &c, &err), 0,
		     "%s", err.msg);
}

Test(config, json_round_trip_and_aux_schedule)
{
	struct moe_config a, b;
	struct moe_error err = {0};
	small_config(&a);
	a.loss_free_balancing = true;
	a.aux_loss_form = MOE_AUX_MEGABLOCKS;
	a.router_aux_loss_coef = 0.005;
	a.router_aux_loss_coef_end = 0.0;
	a.router_aux_loss_decay_steps = 100;
	a.router_z_loss_coef = 0.001;
	a.pad_token_id = -1;
	json_t *j = moe_config_to_json(&a);
	cr_assert(j);
	cr_assert_str_eq(json_string_value(json_object_get(j, "model_type")), "olmoe");
	cr_assert(json_is_null(json_object_get(j, "pad_token_id")));
	moe_config_defaults(&b);
	cr_assert_eq(moe_config_from_json(&b, j, "rt", &err), 0, "%s", err.msg);
	json_decref(j);
	cr_assert_eq(b.hidden_size, a.hidden_size);
	cr_assert_eq(b.n_dense_layers, 1);
	cr_assert_eq(b.dense_intermediate_size, 48);
	cr_assert_eq(b.n_shared_experts, 1);
	cr_assert_eq(b.loss_free_balancing, true);
	cr_assert_eq(b.aux_loss_form, MOE_AUX_MEGABLOCKS);
	cr_assert_eq(b.pad_token_id, -1);
	cr_assert_float_eq(b.router_z_loss_coef, 0.001, 1e-15);
	cr_assert_float_eq(moe_config_aux_coef(&b, 0), 0.005, 1e-15);
	cr_assert_float_eq(moe_config_aux_coef(&b, 50), 0.0025, 1e-12);
	cr_assert_float_eq(moe_config_aux_coef(&b, 100), 0.0, 1e-15);
	cr_assert_float_eq(moe_config_aux_coef(&b, 5000), 0.0, 1e-15);
}

/* ---- parameter table ------------------------------------------------------------ */

Test(params, table_layout)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	cr_assert(m, "%s", err.msg);
	size_t n;
	const struct moe_param *t = moe_model_params(m, &n);
	size_t sum = 0;
	for (size_t i = 0; i < n; i++) {
		cr_assert_eq(t[i].offset, sum, "%s: tensors are contiguous in table order", t[i].name);
		sum += t[i].numel;
	}
	cr_assert_eq(sum, moe_model_num_params(m));
	cr_assert_str_eq(t[0].name, "model.embed_tokens.weight");
	cr_assert_str_eq(t[n - 1].name, "lm_head.weight");
	const struct moe_layer_offsets *lo = moe_model_layer(m, 1);
	cr_assert(lo->is_moe && !moe_model_layer(m, 0)->is_moe);
	/* experts of a layer: (E, 2I, D) gate/up then (E, D, I) down, contiguous */
	for (int e = 0; e < 4; e++) {
		char nm[96];
		snprintf(nm, sizeof(nm), "model.layers.1.mlp.experts.%d.gate_proj.weight", e);
		const struct moe_param *g = moe_model_param_find(m, nm);
		cr_assert(g && g->is_expert && g->decay);
		cr_assert_eq(g->offset, lo->expert_gate_up + (size_t)e * 2 * 16 * 32);
		snprintf(nm, sizeof(nm), "model.layers.1.mlp.experts.%d.up_proj.weight", e);
		cr_assert_eq(moe_model_param_find(m, nm)->offset, lo->expert_gate_up + (size_t)e * 2 * 16 * 32 + 16 * 32);
		snprintf(nm, sizeof(nm), "model.layers.1.mlp.experts.%d.down_proj.weight", e);
		cr_assert_eq(moe_model_param_find(m, nm)->offset, lo->expert_down + (size_t)e * 32 * 16);
	}
	const struct moe_param *b = moe_model_param_find(m, "model.layers.2.mlp.selection_bias");
	cr_assert(b && !b->trainable && !b->decay && b->kind == MOE_P_BIAS);
	cr_assert(moe_model_param_find(m, "model.layers.2.mlp.shared_experts.0.down_proj.weight")->is_expert);
	cr_assert(!moe_model_param_find(m, "model.layers.2.mlp.gate.weight")->is_expert);
	cr_assert(moe_model_param_find(m, "model.layers.0.mlp.gate_proj.weight"));
	cr_assert(moe_model_param_find(m, "model.layers.0.self_attn.q_norm.weight")->shape[0] == 32);
	cr_assert_null(moe_model_param_find(m, "model.layers.0.mlp.gate.weight"));
	moe_model_free(m);
}

Test(params, init_deterministic)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *a = moe_model_new(&c, NULL, &err), *b = moe_model_new(&c, NULL, &err);
	cr_assert(a && b);
	moe_model_init(a, 42, &err);
	moe_model_init(b, 42, &err);
	size_t n = moe_model_num_params(a);
	cr_assert(!memcmp(moe_model_params_host(a), moe_model_params_host(b), n * sizeof(float)));
	moe_model_init(b, 43, &err);
	cr_assert(memcmp(moe_model_params_host(a), moe_model_params_host(b), n * sizeof(float)));
	/* statistics of the head: N(0, 0.02) */
	const struct moe_param *h = moe_model_param_find(a, "lm_head.weight");
	const float *x = moe_model_params_host(a) + h->offset;
	double s = 0, s2 = 0;
	for (size_t i = 0; i < h->numel; i++)
		s += x[i], s2 += (double)x[i] * x[i];
	double mean = s / h->numel, sd = sqrt(s2 / h->numel - mean * mean);
	cr_assert(fabs(mean) < 0.003 && fabs(sd - 0.02) < 0.002, "mean %g sd %g", mean, sd);
	const float *emb = moe_model_params_host(a);
	for (int d = 0; d < 32; d++)
		cr_assert_eq(emb[32 + d], 0.0f, "pad row is zero");
	const float *qn = moe_model_params_host(a) + moe_model_layer(a, 0)->q_norm;
	cr_assert_eq(qn[5], 1.0f);
	moe_model_free(a);
	moe_model_free(b);
}

/* ---- forward -------------------------------------------------------------------------- */

static void tokens(int32_t *t, int n, int V, unsigned seed)
{
	for (int i = 0; i < n; i++) {
		seed = seed * 1103515245u + 12345u;
		t[i] = 2 + (int32_t)((seed >> 8) % (unsigned)(V - 2));
	}
}

Test(forward, init_loss_logits_modes_capture)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	cr_assert(m);
	moe_model_init(m, 1, &err);
	int B = 3, T = 7, N = 21, V = 64, K = 2, E = 4;
	int32_t tok[21], tgt[21];
	tokens(tok, N, V, 5);
	tokens(tgt, N, V, 6);
	float *all = malloc(sizeof(float) * N * V), *last = malloc(sizeof(float) * B * V);
	struct moe_token_stats ts[21];
	int32_t idx[2 * 21 * 2];
	float w[2 * 21 * 2];
	struct moe_routing_capture cap = {idx, w, NULL};
	struct moe_forward_opts o = {.logits_mode = MOE_LOGITS_ALL, .logits_out = all, .capture = &cap, .token_stats = ts};
	struct moe_losses L;
	cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &o, &L, &err), 0, "%s", err.msg);
	/* N(0, 0.02) init: the prediction is nearly uniform */
	cr_assert(fabs(L.ce - log(64.0)) < 0.05, "ce %g", L.ce);
	cr_assert_eq(L.n_valid, 21);
	/* last-position-only mode (no targets) gives the same rows */
	struct moe_forward_opts o2 = {.logits_mode = MOE_LOGITS_LAST, .logits_out = last};
	cr_assert_eq(moe_model_forward(m, tok, NULL, B, T, &o2, NULL, &err), 0, "%s", err.msg);
	for (int b = 0; b < B; b++)
		for (int v = 0; v < V; v++)
			cr_assert_float_eq(last[b * V + v], all[(b * T + T - 1) * V + v], 1e-5);
	/* token statistics agree with the logits; mean -logprob == ce */
	double nll = 0;
	for (int n = 0; n < N; n++) {
		int am = 0;
		for (int v = 1; v < V; v++)
			if (all[n * V + v] > all[n * V + am])
				am = v;
		cr_assert_eq(ts[n].argmax, am);
		cr_assert(ts[n].p_argmax > 0 && ts[n].p_argmax <= 1);
		nll -= ts[n].logprob_target;
	}
	cr_assert_float_eq(nll / N, L.ce, 1e-4);
	/* capture: counts of the last forward equal the histogram of the capture */
	cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &o, &L, &err), 0);
	const int64_t *cnt = moe_model_expert_counts(m);
	for (int lm = 0; lm < 2; lm++) {
		int64_t h[4] = {0};
		for (int j = 0; j < N * K; j++) {
			h[idx[lm * N * K + j]]++;
			if (j % K)
				cr_assert(w[lm * N * K + j] <= w[lm * N * K + j - 1], "weights descending");
		}
		for (int e = 0; e < E; e++)
			cr_assert_eq(h[e], cnt[lm * E + e]);
	}
	/* a batch of one row gives the same logits as that row inside the batch */
	float *one = malloc(sizeof(float) * T * V);
	struct moe_forward_opts o3 = {.logits_mode = MOE_LOGITS_ALL, .logits_out = one};
	cr_assert_eq(moe_model_forward(m, tok + T, NULL, 1, T, &o3, NULL, &err), 0);
	for (int i = 0; i < T * V; i++)
		cr_assert_float_eq(one[i], all[T * V + i], 1e-5);
	free(one);
	free(all);
	free(last);
	moe_model_free(m);
}

/* The LM head and loss in chunks of rows (with the activations that
 * backward recomputes) give the same losses, logits, statistics and
 * gradients as one chunk over all rows. */
Test(forward, logits_chunks_change_nothing)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	cr_assert(m);
	moe_model_init(m, 3, &err);
	int B = 3, T = 7, N = 21, V = 64;
	int32_t tok[21], tgt[21];
	tokens(tok, N, V, 11);
	tokens(tgt, N, V, 12);
	tgt[4] = c.pad_token_id;
	size_t np = moe_model_num_params(m);
	float *g[2], *lg[2], *last[2];
	struct moe_token_stats ts[2][21];
	struct moe_losses L[2];
	const int chunk[2] = {N, 5}; /* one chunk; five chunks, the last short */
	for (int r = 0; r < 2; r++) {
		moe_model_set_logits_chunk(m, chunk[r]);
		g[r] = malloc(sizeof(float) * np);
		lg[r] = malloc(sizeof(float) * N * V);
		last[r] = malloc(sizeof(float) * B * V);
		struct moe_forward_opts o = {.train = true, .logits_mode = MOE_LOGITS_ALL, .logits_out = lg[r],
					     .token_stats = ts[r]};
		moe_model_zero_grad(m);
		cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &o, &L[r], &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(m, 0.5f, &err), 0, "%s", err.msg);
		moe_model_get_grads(m, g[r]);
		struct moe_forward_opts ol = {.logits_mode = MOE_LOGITS_LAST, .logits_out = last[r],
					      .token_stats = ts[r]};
		cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &ol, NULL, &err), 0, "%s", err.msg);
	}
	cr_assert_eq(L[0].n_valid, 20);
	cr_assert_eq(L[1].n_valid, 20);
	cr_assert_float_eq(L[0].ce, L[1].ce, 1e-6 * L[0].ce);
	cr_assert_float_eq(L[0].total, L[1].total, 1e-6 * L[0].total);
	for (int i = 0; i < N * V; i++)
		cr_assert_float_eq(lg[0][i], lg[1][i], 1e-6);
	for (int b = 0; b < B; b++)
		for (int v = 0; v < V; v++)
			cr_assert_float_eq(last[1][b * V + v], lg[0][(b * T + T - 1) * V + v], 1e-6);
	for (int n = 0; n < N; n++) {
		cr_assert_eq(ts[0][n].argmax, ts[1][n].argmax);
		cr_assert_float_eq(ts[0][n].p_argmax, ts[1][n].p_argmax, 1e-6);
	}
	/* last positions only (no targets), with more rows than a chunk holds */
	moe_model_set_logits_chunk(m, 2);
	struct moe_forward_opts olast = {.logits_mode = MOE_LOGITS_LAST, .logits_out = last[1]};
	cr_assert_eq(moe_model_forward(m, tok, NULL, B, T, &olast, NULL, &err), 0, "%s", err.msg);
	for (int b = 0; b < B; b++)
		for (int v = 0; v < V; v++)
			cr_assert_float_eq(last[1][b * V + v], lg[0][(b * T + T - 1) * V + v], 1e-6);
	double d = 0, s = 0;
	for (size_t i = 0; i < np; i++) {
		d += ((double)g[0][i] - g[1][i]) * ((double)g[0][i] - g[1][i]);
		s += (double)g[0][i] * g[0][i];
	}
	cr_assert(s > 0);
	cr_assert(sqrt(d / s) < 1e-6, "relative gradient difference %g", sqrt(d / s));
	/* backward's grad_scale scales every gradient, the LM head's included */
	struct moe_forward_opts ot = {.train = true};
	moe_model_zero_grad(m);
	cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &ot, NULL, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(m, 1.0f, &err), 0, "%s", err.msg);
	moe_model_get_grads(m, g[0]);
	d = 0;
	for (size_t i = 0; i < np; i++)
		d += ((double)g[0][i] - 2.0 * g[1][i]) * ((double)g[0][i] - 2.0 * g[1][i]);
	cr_assert(sqrt(d / (4 * s)) < 1e-6, "grad_scale 1 vs 0.5: relative difference %g", sqrt(d / (4 * s)));
	for (int r = 0; r < 2; r++) {
		free(g[r]);
		free(lg[r]);
		free(last[r]);
	}
	moe_model_free(m);
}

/* A smaller batch after a larger one reuses the larger one's buffers: the
 * losses and gradients must be those of a model that only ever saw the
 * smaller batch, in training and in evaluation (an evaluation's last batch
 * is often short).  The q, k, v projections lie side by side in those
 * buffers, at the allocation's stride. */
Test(forward, smaller_batch_after_larger)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m[2];
	for (int r = 0; r < 2; r++) {
		m[r] = moe_model_new(&c, NULL, &err);
		cr_assert(m[r]);
		moe_model_init(m[r], 9, &err);
	}
	int T = 6, V = 64;
	int32_t tok[18], tgt[18];
	tokens(tok, 18, V, 31);
	tokens(tgt, 18, V, 32);
	size_t np = moe_model_num_params(m[0]);
	float *g[2] = {malloc(sizeof(float) * np), malloc(sizeof(float) * np)};
	struct moe_losses L[2], E[2];
	struct moe_forward_opts ot = {.train = true}, oe = {.train = false};
	/* m[0]: three rows first (training and evaluation), then two */
	moe_model_zero_grad(m[0]);
	cr_assert_eq(moe_model_forward(m[0], tok, tgt, 3, T, &ot, &L[0], &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(m[0], 1.0f, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_forward(m[0], tok, tgt, 3, T, &oe, &E[0], &err), 0, "%s", err.msg);
	for (int r = 0; r < 2; r++) {
		cr_assert_eq(moe_model_forward(m[r], tok + T, tgt + T, 2, T, &oe, &E[r], &err), 0, "%s", err.msg);
		moe_model_zero_grad(m[r]);
		cr_assert_eq(moe_model_forward(m[r], tok + T, tgt + T, 2, T, &ot, &L[r], &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(m[r], 1.0f, &err), 0, "%s", err.msg);
		moe_model_get_grads(m[r], g[r]);
	}
	cr_assert_float_eq(E[0].ce, E[1].ce, 1e-6 * E[1].ce, "evaluation: %.9g after a larger batch, %.9g alone",
			   E[0].ce, E[1].ce);
	cr_assert_float_eq(E[0].total, E[1].total, 1e-6 * fabs(E[1].total));
	cr_assert_float_eq(L[0].total, L[1].total, 1e-6 * fabs(L[1].total), "training: %.9g after, %.9g alone",
			   L[0].total, L[1].total);
	double d = 0, s = 0;
	for (size_t i = 0; i < np; i++) {
		d += ((double)g[0][i] - g[1][i]) * ((double)g[0][i] - g[1][i]);
		s += (double)g[1][i] * g[1][i];
	}
	cr_assert(s > 0);
	cr_assert(sqrt(d / s) < 1e-6, "relative gradient difference %g", sqrt(d / s));
	for (int r = 0; r < 2; r++) {
		free(g[r]);
		moe_model_free(m[r]);
	}
}

/* Full recompute (only block inputs kept; each block's forward rerun in
 * backward) gives the same losses and gradients as the default, with the
 * selection bias in use and a z-loss. */
Test(train, full_recompute_same_gradients)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.loss_free_balancing = true;
	c.router_z_loss_coef = 0.01;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	cr_assert(m);
	moe_model_init(m, 5, &err);
	int B = 2, T = 9, N = 18, V = 64;
	int32_t tok[18], tgt[18];
	tokens(tok, N, V, 21);
	tokens(tgt, N, V, 22);
	size_t np = moe_model_num_params(m);
	float *g[2];
	struct moe_losses L[2];
	struct moe_forward_opts o = {.train = true};
	for (int r = 0; r < 2; r++) {
		moe_model_set_recompute(m, r ? MOE_RECOMPUTE_FULL : MOE_RECOMPUTE_CHEAP);
		g[r] = malloc(sizeof(float) * np);
		moe_model_zero_grad(m);
		cr_assert_eq(moe_model_forward(m, tok, tgt, B, T, &o, &L[r], &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(m, 1.0f, &err), 0, "%s", err.msg);
		moe_model_get_grads(m, g[r]);
	}
	cr_assert_float_eq(L[0].total, L[1].total, 1e-6 * fabs(L[0].total));
	cr_assert(L[0].z > 0);
	double d = 0, s = 0;
	for (size_t i = 0; i < np; i++) {
		d += ((double)g[0][i] - g[1][i]) * ((double)g[0][i] - g[1][i]);
		s += (double)g[0][i] * g[0][i];
	}
	cr_assert(s > 0);
	cr_assert(sqrt(d / s) < 1e-6, "full vs cheap recompute: relative gradient difference %g", sqrt(d / s));
	free(g[0]);
	free(g[1]);
	moe_model_free(m);
}

Test(forward, aux_and_z_at_a_uniform_router)
{
	/* with zero router weights the probabilities are uniform, so whatever the
	 * routing: switch aux = K, megablocks aux = 1, z = Lm * log(E)^2 */
	for (int form = 0; form < 2; form++) {
		struct moe_config c;
		struct moe_error err = {0};
		small_config(&c);
		c.aux_loss_form = form;
		c.router_z_loss_coef = 0.01;
		c.router_aux_loss_coef = 0.1;
		struct moe_model *m = moe_model_new(&c, NULL, &err);
		moe_model_init(m, 3, &err);
		float *P = moe_model_params_host(m);
		for (int l = 1; l < 3; l++)
			memset(P + moe_model_layer(m, l)->router, 0, sizeof(float) * 4 * 32);
		int32_t tok[16], tgt[16];
		tokens(tok, 16, 64, 9);
		tokens(tgt, 16, 64, 10);
		struct moe_losses L;
		cr_assert_eq(moe_model_forward(m, tok, tgt, 2, 8, NULL, &L, &err), 0);
		cr_assert_float_eq(L.aux, form == MOE_AUX_SWITCH ? 2.0 : 1.0, 1e-5, "form %d aux %g", form, L.aux);
		cr_assert_float_eq(L.z, 2 * log(4.0) * log(4.0), 1e-5);
		cr_assert_float_eq(L.total, L.ce + 0.1 * L.aux + 0.01 * L.z, 1e-9);
		moe_model_free(m);
	}
}

Test(forward, bad_input)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	int32_t tok[4] = {2, 3, 64, 5};
	cr_assert_eq(moe_model_forward(m, tok, NULL, 1, 4, NULL, NULL, &err), MOE_EINVAL);
	cr_assert(strstr(err.msg, "64"));
	cr_assert_eq(moe_model_backward(m, 1.0f, &err), MOE_EINVAL);
	moe_model_free(m);
}

/* ---- selection bias --------------------------------------------------------------------- */

Test(balance, sign_update_and_clamp)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.balance_bias_clamp = 0.0025;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	int64_t counts[8] = {10, 2, 4, 4, /* layer 2: */ 1, 1, 1, 1};
	cr_assert_eq(moe_model_update_bias(m, counts, 0.001f, &err), 0);
	const float *P = moe_model_params_host(m);
	const float *b1 = P + moe_model_layer(m, 1)->bias, *b2 = P + moe_model_layer(m, 2)->bias;
	/* mean 5: over-used experts go down, under-used go up; equal: unchanged */
	cr_assert_float_eq(b1[0], -0.001f, 1e-9);
	cr_assert_float_eq(b1[1], 0.001f, 1e-9);
	cr_assert_float_eq(b1[2], 0.001f, 1e-9);
	for (int e = 0; e < 4; e++)
		cr_assert_eq(b2[e], 0.0f);
	for (int i = 0; i < 5; i++)
		moe_model_update_bias(m, counts, 0.001f, &err);
	cr_assert_float_eq(b1[0], -0.0025f, 1e-9, "clamped");
	cr_assert_float_eq(b1[1], 0.0025f, 1e-9);
	moe_model_free(m);
}

Test(balance, bias_used_in_training_not_eval)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.loss_free_balancing = true;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	moe_model_init(m, 4, &err);
	float *P = moe_model_params_host(m);
	P[moe_model_layer(m, 1)->bias + 3] = 100.0f; /* expert 3 always chosen in layer 1 */
	int32_t tok[8], idx[2 * 8 * 2];
	tokens(tok, 8, 64, 11);
	struct moe_routing_capture cap = {idx, NULL, NULL};
	struct moe_forward_opts o = {.train = true, .capture = &cap};
	cr_assert_eq(moe_model_forward(m, tok, tok, 1, 8, &o, NULL, &err), 0);
	for (int n = 0; n < 8; n++)
		cr_assert(idx[n * 2] == 3 || idx[n * 2 + 1] == 3);
	cr_assert_eq(moe_model_expert_counts(m)[3], 8);
	struct moe_forward_opts e = {.capture = &cap};
	cr_assert_eq(moe_model_forward(m, tok, NULL, 1, 8, &e, NULL, &err), 0);
	cr_assert_lt(moe_model_expert_counts(m)[3], 8, "eval routing ignores the bias");
	e.eval_use_bias = true;
	cr_assert_eq(moe_model_forward(m, tok, NULL, 1, 8, &e, NULL, &err), 0);
	cr_assert_eq(moe_model_expert_counts(m)[3], 8);
	moe_model_free(m);
}

/* ---- checkpoints --------------------------------------------------------------------------- */

Test(checkpoint, save_load_identical_logits)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.loss_free_balancing = true;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	moe_model_init(m, 8, &err);
	float *P = moe_model_params_host(m);
	P[moe_model_layer(m, 2)->bias + 1] = 0.25f;
	char *d = tmpdir();
	cr_assert_eq(moe_model_save_dir(m, d, &err), 0, "%s", err.msg);
	struct moe_model *r = moe_model_load_dir(d, NULL, &err);
	cr_assert(r, "%s", err.msg);
	cr_assert_eq(moe_model_num_params(r), moe_model_num_params(m));
	cr_assert(!memcmp(moe_model_params_host(r), P, moe_model_num_params(m) * sizeof(float)));
	int32_t tok[12];
	tokens(tok, 12, 64, 2);
	float *a = malloc(sizeof(float) * 12 * 64), *b = malloc(sizeof(float) * 12 * 64);
	struct moe_forward_opts oa = {.train = true, .logits_mode = MOE_LOGITS_ALL, .logits_out = a};
	struct moe_forward_opts ob = oa;
	ob.logits_out = b;
	cr_assert_eq(moe_model_forward(m, tok, NULL, 2, 6, &oa, NULL, &err), 0);
	cr_assert_eq(moe_model_forward(r, tok, NULL, 2, 6, &ob, NULL, &err), 0);
	cr_assert(!memcmp(a, b, sizeof(float) * 12 * 64), "identical logits");
	/* the written safetensors carries HF names */
	char *st = moe_path_join(d, "model.safetensors");
	struct moe_st_file *f = moe_st_open(st, &err);
	cr_assert(f, "%s", err.msg);
	cr_assert(moe_st_find(f, "model.layers.1.mlp.experts.3.down_proj.weight"));
	cr_assert(moe_st_find(f, "model.layers.1.self_attn.q_norm.weight"));
	moe_st_close(f);
	free(st);
	free(a);
	free(b);
	moe_model_free(r);
	moe_model_free(m);
	rmrf(d);
	free(d);
}

/* Write the model's tensors as bf16 into two shards with an index, the HF way. */
static void write_hf_sharded(struct moe_model *m, const char *dir, const char *extra, const char *skip)
{
	struct moe_error err = {0};
	size_t n;
	const struct moe_param *t = moe_model_params(m, &n);
	const float *P = moe_model_params_host(m);
	uint16_t *bf = malloc(sizeof(uint16_t) * moe_model_num_params(m));
	for (size_t i = 0; i < moe_model_num_params(m); i++)
		bf[i] = moe_f32_to_bf16(P[i]);
	struct moe_st_writer *w[2] = {moe_st_writer_new(), moe_st_writer_new()};
	json_t *idx = json_object(), *wm = json_object();
	for (size_t i = 0; i < n; i++) {
		if (t[i].kind == MOE_P_BIAS || (skip && !strcmp(t[i].name, skip)))
			continue; /* HF OLMoE has no selection bias */
		int s = i < n / 2 ? 0 : 1;
		cr_assert_eq(moe_st_writer_add(w[s], t[i].name, MOE_BF16, t[i].ndim, t[i].shape, bf + t[i].offset, &err), 0);
		json_object_set_new(wm, t[i].name, json_string(s ? "model-00002-of-00002.safetensors" : "model-00001-of-00002.safetensors"));
	}
	if (extra) {
		static const float x[3] = {1, 2, 3};
		int64_t sh[1] = {3};
		moe_st_writer_add(w[1], extra, MOE_F32, 1, sh, x, &err);
		json_object_set_new(wm, extra, json_string("model-00002-of-00002.safetensors"));
	}
	json_object_set_new(idx, "weight_map", wm);
	char *p0 = moe_path_join(dir, "model-00001-of-00002.safetensors");
	char *p1 = moe_path_join(dir, "model-00002-of-00002.safetensors");
	char *pi = moe_path_join(dir, "model.safetensors.index.json");
	char *pc = moe_path_join(dir, "config.json");
	cr_assert_eq(moe_st_writer_commit(w[0], p0, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_st_writer_commit(w[1], p1, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_json_save_file(idx, pi, &err), 0);
	cr_assert_eq(moe_config_save(moe_model_config(m), pc, &err), 0);
	moe_st_writer_free(w[0]);
	moe_st_writer_free(w[1]);
	json_decref(idx);
	free(p0), free(p1), free(pi), free(pc), free(bf);
}

Test(checkpoint, hf_sharded_bf16)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.n_dense_layers = 0;
	c.n_shared_experts = 0;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	moe_model_init(m, 9, &err);
	char *d = tmpdir();
	write_hf_sharded(m, d, "model.layers.0.self_attn.rotary_emb.inv_freq", NULL);
	struct moe_model *r = moe_model_load_dir(d, NULL, &err);
	cr_assert(r, "%s", err.msg);
	const float *a = moe_model_params_host(m), *b = moe_model_params_host(r);
	for (size_t i = 0; i < moe_model_num_params(m); i++)
		cr_assert_eq(b[i], moe_bf16_to_f32(moe_f32_to_bf16(a[i])), "param %zu", i);
	moe_model_free(r);
	rmrf(d);
	free(d);
	/* an unexpected tensor and a missing tensor are errors naming them */
	d = tmpdir();
	write_hf_sharded(m, d, "model.layers.0.mlp.unknown.weight", NULL);
	cr_assert_null(moe_model_load_dir(d, NULL, &err));
	cr_assert(strstr(err.msg, "model.layers.0.mlp.unknown.weight"), "%s", err.msg);
	rmrf(d);
	free(d);
	d = tmpdir();
	write_hf_sharded(m, d, NULL, "model.layers.1.mlp.experts.2.up_proj.weight");
	cr_assert_null(moe_model_load_dir(d, NULL, &err));
	cr_assert(strstr(err.msg, "missing tensor 'model.layers.1.mlp.experts.2.up_proj.weight'"), "%s", err.msg);
	rmrf(d);
	free(d);
	moe_model_free(m);
}

Test(checkpoint, shape_mismatch)
{
	struct moe_config c, c2;
	struct moe_error err = {0};
	small_config(&c);
	c2 = c;
	c2.intermediate_size = 8;
	struct moe_model *m = moe_model_new(&c, NULL, &err), *m2 = moe_model_new(&c2, NULL, &err);
	char *d = tmpdir();
	char *st = moe_path_join(d, "x.safetensors");
	cr_assert_eq(moe_model_save_safetensors(m, st, &err), 0);
	cr_assert_lt(moe_model_load_weights(m2, st, &err), 0);
	cr_assert(strstr(err.msg, "shape"), "%s", err.msg);
	free(st);
	rmrf(d);
	free(d);
	moe_model_free(m);
	moe_model_free(m2);
}

/* ---- a short optimisation ------------------------------------------------------------------ */

Test(train, adamw_lowers_the_loss)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	c.loss_free_balancing = true;
	c.router_z_loss_coef = 0.001;
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	moe_model_init(m, 10, &err);
	size_t n = moe_model_num_params(m);
	float *mo = calloc(n, sizeof(float)), *vo = calloc(n, sizeof(float));
	int32_t tok[2 * 17];
	tokens(tok, 34, 64, 77);
	struct moe_forward_opts o = {.train = true};
	struct moe_losses L;
	double first = 0, last = 0;
	int64_t counts[8];
	for (int step = 1; step <= 40; step++) {
		moe_model_zero_grad(m);
		cr_assert_eq(moe_model_forward(m, tok, tok + 1, 1, 33, &o, &L, &err), 0, "%s", err.msg);
		cr_assert_eq(moe_model_backward(m, 1.0f, &err), 0, "%s", err.msg);
		moe_adamw_step(moe_model_params_host(m), moe_model_grads_host(m), 1.0f, mo, vo, n, 3e-3f, 0.9f,
			       0.999f, 1e-8f, 0.0f, step);
		memcpy(counts, moe_model_expert_counts(m), sizeof(counts));
		moe_model_update_bias(m, counts, 0.001f, &err);
		if (step == 1)
			first = L.ce;
		last = L.ce;
	}
	cr_assert(last < 0.5 * first, "ce %g -> %g", first, last);
	free(mo);
	free(vo);
	moe_model_free(m);
}

/* Gradients by overwrite, the model's side: on a backend that allows it,
 * moe_model_zero_grad leaves the memory alone (the next backward stores),
 * and whoever reads the gradients before that backward sees zeros
 * (moe_model_get_grads, moe_model_grads_host, the optimizer through
 * moe_model_grads_ready).  The CPU backend adds its gradients, so it never
 * allows it; the test sets the flag only around the reads. */
Test(train, pending_gradients_read_as_zero)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	cr_assert_not_null(m, "%s", err.msg);
	cr_assert_eq(moe_model_init(m, 3, &err), 0, "%s", err.msg);
	struct moe_backend *be = moe_model_backend(m);
	cr_assert(!be->grad_overwrite_ok, "the CPU backend adds into its gradients");
	size_t n = moe_model_num_params(m);
	int32_t tok[2 * 17];
	tokens(tok, 34, 64, 5);
	struct moe_forward_opts o = {.train = true};
	struct moe_losses L;
	moe_model_zero_grad(m);
	cr_assert_eq(moe_model_forward(m, tok, tok + 1, 1, 33, &o, &L, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_backward(m, 1.0f, &err), 0, "%s", err.msg);
	const float *raw = be->grad(be, 0);
	size_t nz = 0;
	for (size_t i = 0; i < n; i++)
		nz += raw[i] != 0.0f;
	cr_assert(nz > n / 2, "a backward writes most gradients (%zu of %zu)", nz, n);

	be->grad_overwrite_ok = true;
	moe_model_zero_grad(m);
	nz = 0;
	for (size_t i = 0; i < n; i++)
		nz += raw[i] != 0.0f;
	cr_assert(nz > n / 2, "zero_grad by overwrite leaves the memory to the next backward");
	float *g = malloc(n * sizeof *g);
	moe_model_get_grads(m, g);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(g[i], 0.0f, "gradient %zu read as %g while pending", i, g[i]);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(raw[i], 0.0f, "reading the gradients cleared them (%zu)", i);
	/* pending again: moe_model_grads_host clears them too */
	cr_assert_eq(moe_model_forward(m, tok, tok + 1, 1, 33, &o, &L, &err), 0, "%s", err.msg);
	be->grad_overwrite_ok = false; /* the CPU backward adds: from the zeros above */
	cr_assert_eq(moe_model_backward(m, 1.0f, &err), 0, "%s", err.msg);
	be->grad_overwrite_ok = true;
	moe_model_zero_grad(m);
	const float *h = moe_model_grads_host(m);
	for (size_t i = 0; i < n; i++)
		cr_assert_eq(h[i], 0.0f, "moe_model_grads_host: gradient %zu is %g while pending", i, h[i]);
	be->grad_overwrite_ok = false;
	free(g);
	moe_model_free(m);
}

/* ---- the tiled linear kernels against a naive double-precision product ---------------- */

static void naive_check(int N, int In, int Out)
{
	float *x = malloc(sizeof(float) * N * In), *w = malloc(sizeof(float) * Out * In);
	float *dy = malloc(sizeof(float) * N * Out), *y = malloc(sizeof(float) * N * Out);
	float *dx = malloc(sizeof(float) * N * In), *dw = malloc(sizeof(float) * Out * In);
	unsigned s = (unsigned)(N * 131 + In * 7 + Out);
	for (int i = 0; i < N * In; i++)
		x[i] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
	for (int i = 0; i < Out * In; i++)
		w[i] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
	for (int i = 0; i < N * Out; i++)
		dy[i] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
	for (int i = 0; i < Out * In; i++)
		dw[i] = 0.5f; /* dw accumulates */
	moe_linear_fwd(y, x, w, NULL, N, In, Out);
	moe_linear_bwd(dx, dw, NULL, dy, x, w, N, In, Out);
	double tol = 1e-5 * (In > Out ? (In > N ? In : N) : (Out > N ? Out : N));
	for (int n = 0; n < N; n++)
		for (int o = 0; o < Out; o++) {
			double r = 0;
			for (int i = 0; i < In; i++)
				r += (double)x[n * In + i] * w[o * In + i];
			cr_assert(fabs(r - y[n * Out + o]) < tol, "fwd %dx%dx%d [%d,%d]: %g vs %g", N, In, Out, n, o, y[n * Out + o], r);
		}
	for (int n = 0; n < N; n++)
		for (int i = 0; i < In; i++) {
			double r = 0;
			for (int o = 0; o < Out; o++)
				r += (double)dy[n * Out + o] * w[o * In + i];
			cr_assert(fabs(r - dx[n * In + i]) < tol, "dx %dx%dx%d [%d,%d]", N, In, Out, n, i);
		}
	for (int o = 0; o < Out; o++)
		for (int i = 0; i < In; i++) {
			double r = 0.5;
			for (int n = 0; n < N; n++)
				r += (double)dy[n * Out + o] * x[n * In + i];
			cr_assert(fabs(r - dw[o * In + i]) < tol, "dw %dx%dx%d [%d,%d]", N, In, Out, o, i);
		}
	free(x), free(w), free(dy), free(y), free(dx), free(dw);
}

Test(ops, linear_tiles_and_remainders)
{
	/* full 4x4 / 4x32 tiles, remainders in every dimension, and sizes above
	 * the OpenMP threshold */
	naive_check(1, 1, 1);
	naive_check(3, 5, 7);
	naive_check(8, 64, 32);
	naive_check(9, 70, 67);
	naive_check(13, 33, 101);
	naive_check(64, 128, 96);
	naive_check(300, 40, 290); /* several row, column and k blocks */
}

Test(checkpoint, transformers_v5_fused_experts)
{
	struct moe_config c;
	struct moe_error err = {0};
	small_config(&c);
	struct moe_model *m = moe_model_new(&c, NULL, &err);
	moe_model_init(m, 12, &err);
	const float *P = moe_model_params_host(m);
	size_t n;
	const struct moe_param *t = moe_model_params(m, &n);
	struct moe_st_writer *w = moe_st_writer_new();
	for (size_t i = 0; i < n; i++)
		if (t[i].kind != MOE_P_EXPERT)
			cr_assert_eq(moe_st_writer_add(w, t[i].name, MOE_F32, t[i].ndim, t[i].shape, P + t[i].offset, &err), 0);
	char names[4][96];
	for (int l = 1; l < 3; l++) {
		const struct moe_layer_offsets *lo = moe_model_layer(m, l);
		int64_t gu[3] = {4, 32, 32}, dn[3] = {4, 32, 16};
		snprintf(names[2 * (l - 1)], 96, "model.layers.%d.mlp.experts.gate_up_proj", l);
		snprintf(names[2 * (l - 1) + 1], 96, "model.layers.%d.mlp.experts.down_proj", l);
		cr_assert_eq(moe_st_writer_add(w, names[2 * (l - 1)], MOE_F32, 3, gu, P + lo->expert_gate_up, &err), 0);
		cr_assert_eq(moe_st_writer_add(w, names[2 * (l - 1) + 1], MOE_F32, 3, dn, P + lo->expert_down, &err), 0);
	}
	char *d = tmpdir();
	char *st = moe_path_join(d, "model.safetensors");
	cr_assert_eq(moe_st_writer_commit(w, st, &err), 0, "%s", err.msg);
	moe_st_writer_free(w);
	struct moe_model *r = moe_model_new(&c, NULL, &err);
	cr_assert_eq(moe_model_load_weights(r, d, &err), 0, "%s", err.msg);
	cr_assert(!memcmp(moe_model_params_host(r), P, moe_model_num_params(m) * sizeof(float)));
	free(st);
	rmrf(d);
	free(d);
	moe_model_free(r);
	moe_model_free(m);
}

Test(config, directory_or_preset)
{
	struct moe_config c;
	struct moe_error err = {0};
	char *d = tmpdir();
	cr_assert_eq(chdir(d), 0);
	/* ./tiny without a config.json does not hide the preset */
	cr_assert_eq(mkdir("tiny", 0777), 0);
	cr_assert_eq(moe_config_load(&c, "tiny", &err), 0, "%s", err.msg);
	cr_assert_eq(c.hidden_size, 128);
	/* a checkpoint directory stands for its config.json */
	small_config(&c);
	c.hidden_size = 48;
	cr_assert_eq(mkdir("ck", 0777), 0);
	cr_assert_eq(moe_config_save(&c, "ck/config.json", &err), 0);
	struct moe_config r;
	cr_assert_eq(moe_config_load(&r, "ck", &err), 0, "%s", err.msg);
	cr_assert_eq(r.hidden_size, 48);
	cr_assert_eq(moe_config_load(&r, "./ck", &err), 0, "%s", err.msg);
	cr_assert_lt(moe_config_load(&r, "./tiny", &err), 0, "a path is never a preset");
	rmrf(d);
	free(d);
}

/* The CPU backend's routed-expert ops (expert_up_fwd, expert_down_bwd,
 * expert_up_bwd) are the ops.h sequences they stand for, to the bit: random
 * inputs, K = 2 of E = 5 experts, one of them empty. */
Test(ops, expert_ops_equal_sequence)
{
	enum { N = 37, K = 2, E = 5, D = 24, I = 16, NK = N * K };
	struct moe_backend *be = moe_backend_cpu();
	cr_assert_not_null(be);
	unsigned s = 4242;
#define RND(p, n)                                                                                     \
	do {                                                                                          \
		for (size_t i_ = 0; i_ < (size_t)(n); i_++)                                           \
			(p)[i_] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;   \
	} while (0)
	int32_t idx[NK], cnt[E], off[E + 1], perm[NK];
	for (int n = 0; n < N; n++) {
		idx[n * K] = n % 4;                 /* expert 4 stays empty */
		idx[n * K + 1] = (n % 4 + 1 + n % 3) % 4; /* another one */
	}
	moe_route_group(cnt, off, perm, idx, N, K, E);
	cr_assert_eq(cnt[4], 0);
	static float x[N * D], wgu[E * 2 * I * D], wdn[E * D * I], dy[NK * D];
	static float gu[NK * 2 * I], h[NK * I], xg[NK * D], dgu[NK * 2 * I], dh[NK * I], dx[NK * D];
	static float dwd[E * D * I], dwu[E * 2 * I * D];
	static float rgu[NK * 2 * I], rh[NK * I], rxg[NK * D], rdgu[NK * 2 * I], rdh[NK * I], rdx[NK * D];
	static float rdwd[E * D * I], rdwu[E * 2 * I * D];
	RND(x, N * D);
	RND(wgu, E * 2 * I * D);
	RND(wdn, E * D * I);
	RND(dy, NK * D);
	RND(dwd, E * D * I);
	RND(dwu, E * 2 * I * D);
	memcpy(rdwd, dwd, sizeof(dwd));
	memcpy(rdwu, dwu, sizeof(dwu));
#undef RND
	/* the sequences model.c ran before these ops existed */
	moe_gather_rows(rxg, x, perm, NK, K, D);
	moe_grouped_linear_fwd(rgu, rxg, wgu, off, E, D, 2 * I);
	moe_swiglu_gu_fwd(rh, rgu, NK, I);
	moe_grouped_linear_bwd(rdh, NULL, dy, rh, wdn, off, E, I, D);
	moe_swiglu_gu_bwd(rdgu, rdh, rgu, NK, I);
	moe_grouped_linear_bwd(NULL, rdwd, dy, rh, wdn, off, E, I, D);
	moe_grouped_linear_bwd(rdx, rdwu, rdgu, rxg, wgu, off, E, D, 2 * I);

	be->expert_up_fwd(be, gu, h, x, perm, wgu, off, xg, NK, K, E, D, I);
	cr_expect_eq(memcmp(gu, rgu, sizeof(gu)), 0, "expert_up_fwd gu");
	cr_expect_eq(memcmp(h, rh, sizeof(h)), 0, "expert_up_fwd h");
	memset(h, 0, sizeof(h)); /* the backward recomputes it */
	be->expert_down_bwd(be, dgu, h, dwd, dy, gu, wdn, off, dh, NK, E, I, D);
	cr_expect_eq(memcmp(dgu, rdgu, sizeof(dgu)), 0, "expert_down_bwd dgu");
	cr_expect_eq(memcmp(h, rh, sizeof(h)), 0, "expert_down_bwd h");
	cr_expect_eq(memcmp(dwd, rdwd, sizeof(dwd)), 0, "expert_down_bwd dw");
	memset(xg, 0, sizeof(xg));
	be->expert_up_bwd(be, dx, dwu, dgu, x, perm, wgu, off, xg, false, NK, K, E, D, I);
	cr_expect_eq(memcmp(dx, rdx, sizeof(dx)), 0, "expert_up_bwd dx");
	cr_expect_eq(memcmp(dwu, rdwu, sizeof(dwu)), 0, "expert_up_bwd dw");
	/* xg_ready: xg (left gathered by the call above) used as it is, x
	 * not read; the weight gradient adds a second time */
	static float dx2[NK * D], dwu2[E * 2 * I * D];
	memcpy(dwu2, dwu, sizeof(dwu));
	moe_grouped_linear_bwd(NULL, rdwu, rdgu, rxg, wgu, off, E, D, 2 * I);
	be->expert_up_bwd(be, dx2, dwu2, dgu, NULL, perm, wgu, off, xg, true, NK, K, E, D, I);
	cr_expect_eq(memcmp(dx2, rdx, sizeof(dx2)), 0, "expert_up_bwd dx, xg ready");
	cr_expect_eq(memcmp(dwu2, rdwu, sizeof(dwu2)), 0, "expert_up_bwd dw, xg ready");
	be->destroy(be);
}

/* The CPU backend's SwiGLU with gu's rows in groups of G, LG apart (the
 * CUDA backend runs the shared experts' S rows a token beside the router's
 * logits): the same values as packed rows, nothing between the groups
 * written. */
Test(ops, swiglu_strided)
{
	enum { M = 6, I = 5, G = 2, NG = M / G, LG = G * 2 * I + 3 };
	struct moe_backend *be = moe_backend_cpu();
	cr_assert_not_null(be);
	float gu[M * 2 * I], dh[M * I], h[M * I], dgu[M * 2 * I], h2[M * I];
	float sgu[NG * LG], sh[M * I], sdgu[NG * LG], sh2[M * I];
	for (int i = 0; i < M * 2 * I; i++)
		gu[i] = (float)((i * 37) % 23) / 7.f - 1.5f;
	for (int i = 0; i < M * I; i++)
		dh[i] = (float)((i * 11) % 17) / 9.f - 0.9f;
	for (int i = 0; i < NG * LG; i++)
		sgu[i] = sdgu[i] = -7.f;
	for (int q = 0; q < NG; q++)
		memcpy(sgu + q * LG, gu + q * G * 2 * I, sizeof(float) * G * 2 * I);
	be->swiglu_gu_fwd(be, h, gu, M, I, 1, 2 * I);
	be->swiglu_gu_bwd(be, dgu, h2, dh, gu, M, I, 1, 2 * I);
	be->swiglu_gu_fwd(be, sh, sgu, M, I, G, LG);
	be->swiglu_gu_bwd(be, sdgu, sh2, dh, sgu, M, I, G, LG);
	cr_expect_eq(memcmp(sh, h, sizeof(h)), 0, "h");
	cr_expect_eq(memcmp(sh2, h2, sizeof(h2)), 0, "recomputed h");
	for (int q = 0; q < NG; q++)
		for (int i = 0; i < LG; i++)
			cr_expect_eq(sdgu[q * LG + i], i < G * 2 * I ? dgu[q * G * 2 * I + i] : -7.f, "dgu group %d col %d",
				     q, i);
	be->destroy(be);
}

/* The CPU backend's router ops at a row stride (the CUDA backend's merged
 * router reads its logits in the shared experts' gate_up rows; the CPU runs
 * row by row there) against packed rows: the same top-k, weights,
 * probabilities and dlogits (rows are independent), the same z-loss value,
 * the z-loss's gradient within 1e-6 (its 1/N moves into the scale row by
 * row), nothing between the rows written. */
Test(ops, router_strided)
{
	enum { N = 7, E = 6, K = 2, LD = E + 3 };
	struct moe_backend *be = moe_backend_cpu();
	cr_assert_not_null(be);
	float lg[N * E], slg[N * LD], probs[N * E], sprobs[N * E], w[N * K], sw[N * K];
	float dtw[N * K], dpr[N * E], dl[N * E], sdl[N * LD];
	int32_t idx[N * K], sidx[N * K];
	for (int i = 0; i < N * E; i++) {
		lg[i] = (float)((i * 29) % 31) / 6.f - 2.5f;
		dpr[i] = (float)((i * 13) % 19) / 40.f - 0.2f;
	}
	for (int i = 0; i < N * K; i++)
		dtw[i] = (float)((i * 7) % 11) / 10.f - 0.5f;
	for (int i = 0; i < N * LD; i++)
		slg[i] = sdl[i] = -7.f;
	for (int n = 0; n < N; n++)
		memcpy(slg + n * LD, lg + n * E, sizeof(float) * E);
	double z = -1, sz = -2;
	be->router_fwd(be, idx, w, probs, lg, E, NULL, N, E, K, false, &z);
	be->router_fwd(be, sidx, sw, sprobs, slg, LD, NULL, N, E, K, false, &sz);
	cr_expect_eq(memcmp(idx, sidx, sizeof(idx)), 0, "top-k");
	cr_expect_eq(memcmp(w, sw, sizeof(w)), 0, "top-k weights");
	cr_expect_eq(memcmp(probs, sprobs, sizeof(probs)), 0, "probabilities");
	cr_expect(fabs(sz - z) <= 1e-12 * fabs(z) && z > 0, "z %.17g strided vs %.17g packed", sz, z);
	be->router_bwd(be, dl, E, dtw, dpr, probs, idx, w, N, E, K, false);
	be->router_bwd(be, sdl, LD, dtw, dpr, probs, idx, w, N, E, K, false);
	for (int n = 0; n < N; n++)
		for (int e = 0; e < LD; e++)
			cr_expect_eq(sdl[n * LD + e], e < E ? dl[n * E + e] : -7.f, "dlogits row %d col %d", n, e);
	double zl = -1, szl = -2;
	be->zloss(be, dl, lg, E, N, E, 0.3f, &zl);
	be->zloss(be, sdl, slg, LD, N, E, 0.3f, &szl);
	cr_expect(fabs(szl - zl) <= 1e-12 * fabs(zl) && fabs(zl - z) <= 1e-12 * z, "z-loss %.17g strided vs %.17g", szl,
		  zl);
	for (int n = 0; n < N; n++)
		for (int e = 0; e < LD; e++) {
			float v = sdl[n * LD + e];
			if (e < E)
				cr_expect(fabsf(v - dl[n * E + e]) <= 1e-6f * (1.f + fabsf(dl[n * E + e])),
					  "z-loss gradient row %d col %d: %g vs %g", n, e, v, dl[n * E + e]);
			else
				cr_expect_eq(v, -7.f, "row %d col %d written", n, e);
		}
	be->destroy(be);
}

/* The CPU backend's batched weight gradient with operands whose rows lie
 * apart (linear_wgrad_multi's ld_dout, x_stride, ld_x: the CUDA backend's
 * packed q, k, v and merged shared experts use them; the CPU runs them for
 * completeness) against each batch's rows copied out and moe_linear_bwd:
 * within 1e-5 of the largest element (row at a time sums in another
 * order), every element written. */
Test(ops, wgrad_multi_strided)
{
	enum { N = 21, In = 6, Out = 5, NB = 3, LDD = 3 * Out + 2, LDX = NB * In + 1 };
	struct moe_backend *be = moe_backend_cpu();
	cr_assert_not_null(be);
	static float dout[N * LDD], x[N * LDX], dw[NB * Out * In], ref[NB * Out * In], d1[N * Out], x1[N * In];
	unsigned s = 99;
	for (int i = 0; i < N * LDD; i++)
		dout[i] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
	for (int i = 0; i < N * LDX; i++)
		x[i] = (float)((s = s * 1103515245u + 12345u) >> 9) / 8388608.0f - 1.0f;
	for (int i = 0; i < NB * Out * In; i++)
		dw[i] = ref[i] = 0.5f;
	for (int b = 0; b < NB; b++) {
		for (int n = 0; n < N; n++) {
			memcpy(d1 + n * Out, dout + n * LDD + b * Out, sizeof(float) * Out);
			memcpy(x1 + n * In, x + n * LDX + b * In, sizeof(float) * In);
		}
		moe_linear_bwd(NULL, ref + b * Out * In, NULL, d1, x1, NULL, N, In, Out);
	}
	be->linear_wgrad_multi(be, dw, Out * In, dout, Out, LDD, x, In, LDX, NB, N, In, Out);
	double worst = 0, mx = 0;
	for (int i = 0; i < NB * Out * In; i++) {
		worst = fmax(worst, fabs((double)dw[i] - ref[i]));
		mx = fmax(mx, fabs(ref[i]));
	}
	cr_expect(worst <= 1e-5 * mx, "strided batched wgrad: differs by %.3g (largest %.3g)", worst, mx);
	/* contiguous operands: the same bits as moe_linear_bwd */
	for (int i = 0; i < NB * Out * In; i++)
		dw[i] = 0.5f;
	be->linear_wgrad_multi(be, dw, Out * In, d1, 0, Out, x1, 0, In, 1, N, In, Out);
	cr_expect_eq(memcmp(dw, ref + (NB - 1) * Out * In, sizeof(float) * Out * In), 0,
		     "contiguous batched wgrad: not moe_linear_bwd's bits");
	be->destroy(be);
}
