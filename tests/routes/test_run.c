/*
 * moe-routes run end to end on a random-init tiny model made through the
 * model API and a BPE tokenizer trained here: the trace's ids and weights
 * must follow from its router logits, windows of long documents must give
 * the same routing as one long window where the context is the same, and
 * stats --label must see the document fields.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "routes/routes.h"
#include "routes/internal.h"
#include "model/model.h"
#include "tok/tok.h"
#include "data/data.h"

static const char *DOCS[] = {
	"The quick brown fox jumps over the lazy dog. The dog sleeps in the sun all day long, "
	"and the fox runs back into the forest before the farmer wakes up.",
	"Routing traces show which experts each token visits.",
	"A \"quoted\", comma-separated line\nwith a newline and   spaces.",
};
static const char *LANG[] = {"en", "en", "xx"};

struct fixture {
	char dir[64];
	char *tok, *ckpt, *docs;
	size_t n_tokens;
};

static void setup_fixture(struct fixture *f)
{
	struct moe_error err = {0};
	struct moe_tok_trainer *trn = moe_tok_trainer_new();
	struct moe_tok_train_opts to = {.vocab_size = 300, .min_frequency = 1};
	struct moe_config cfg;
	struct moe_model *m;
	struct moe_tok *tok;
	json_t *tj;
	FILE *fp;

	strcpy(f->dir, "/tmp/moe-routes-run.XXXXXX");
	cr_assert_not_null(mkdtemp(f->dir));
	f->tok = moe_path_join(f->dir, "tok.json");
	f->ckpt = moe_path_join(f->dir, "ckpt");
	f->docs = moe_path_join(f->dir, "docs.jsonl");
	for (int i = 0; i < 3; i++)
		cr_assert_eq(moe_tok_trainer_feed(trn, DOCS[i], strlen(DOCS[i]), &err), 0, "%s", err.msg);
	tj = moe_tok_trainer_finish(trn, &to, &err);
	cr_assert_not_null(tj, "%s", err.msg);
	cr_assert_eq(moe_json_save_file(tj, f->tok, &err), 0, "%s", err.msg);
	json_decref(tj);
	moe_tok_trainer_free(trn);

	moe_config_defaults(&cfg);
	cfg.vocab_size = 320;
	cfg.hidden_size = 32;
	cfg.intermediate_size = 16;
	cfg.num_hidden_layers = 4;
	cfg.n_dense_layers = 1;
	cfg.dense_intermediate_size = 32;
	cfg.num_attention_heads = 2;
	cfg.num_experts = 8;
	cfg.num_experts_per_tok = 2;
	cfg.n_shared_experts = 1;
	cfg.shared_expert_intermediate_size = 16;
	cfg.max_position_embeddings = 64;
	cfg.pad_token_id = -1;
	cfg.eos_token_id = -1;
	cfg.initializer_range = 0.5; /* large weights: routing depends on the token */
	cr_assert_eq(moe_config_validate(&cfg, "test", &err), 0, "%s", err.msg);
	m = moe_model_new(&cfg, NULL, &err);
	cr_assert_not_null(m, "%s", err.msg);
	cr_assert_eq(moe_model_init(m, 42, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_mkdirs(f->ckpt, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_model_save_dir(m, f->ckpt, &err), 0, "%s", err.msg);
	moe_model_free(m);

	tok = moe_tok_load(f->tok, &err);
	cr_assert_not_null(tok, "%s", err.msg);
	fp = fopen(f->docs, "w");
	cr_assert_not_null(fp);
	f->n_tokens = 0;
	for (int i = 0; i < 3; i++) {
		struct moe_tok_ids ids = {0};
		json_t *o = json_pack("{ssss}", "text", DOCS[i], "lang", LANG[i]);
		char *s = json_dumps(o, JSON_COMPACT);

		cr_assert_eq(moe_tok_encode(tok, NULL, DOCS[i], strlen(DOCS[i]), 0, &ids, &err), 0);
		f->n_tokens += ids.n;
		fprintf(fp, "%s\n", s);
		free(s);
		json_decref(o);
		moe_tok_ids_release(&ids);
	}
	fclose(fp);
	moe_tok_free(tok);
}

static void teardown_fixture(struct fixture *f)
{
	struct moe_error err = {0};

	moe_rmtree(f->dir, &err);
	free(f->tok);
	free(f->ckpt);
	free(f->docs);
}

static struct moe_trace *run_b(struct fixture *f, const char *name, int seq_len, int batch)
{
	struct moe_error err = {0};
	char *out = moe_path_join(f->dir, name);
	struct moe_routes_run_opts o = {.ckpt = f->ckpt, .docs = f->docs, .tokenizer = f->tok,
					.out = out, .seq_len = seq_len, .logits = true,
					.views = MOE_VIEW_CSV, .batch = batch};
	int64_t n = 0;
	struct moe_trace *tr;

	cr_assert_eq(moe_routes_run(&o, &n, &err), 0, "%s", err.msg);
	cr_expect_eq(n, (int64_t)f->n_tokens);
	tr = moe_trace_open(out, &err);
	cr_assert_not_null(tr, "%s", err.msg);
	free(out);
	return tr;
}

static struct moe_trace *run(struct fixture *f, const char *name, int seq_len)
{
	return run_b(f, name, seq_len, 0);
}

Test(run, tiny_model_end_to_end)
{
	struct fixture f;
	struct moe_error err = {0};
	struct moe_trace *tr, *tr2;
	int32_t ex[3 * 2];
	float w[3 * 2];
	int64_t first_long = 0;

	setup_fixture(&f);
	cr_assert_gt(f.n_tokens, 40, "the first document must need several windows of 16");
	tr = run(&f, "w16", 16);
	cr_expect_eq(tr->L, 3);
	cr_expect_eq(tr->K, 2);
	cr_expect_eq(tr->E, 8);
	cr_expect_eq(moe_trace_check(tr, &err), 0, "%s", err.msg);
	cr_assert_not_null(tr->router_logits);
	for (int64_t t = 0; t < tr->T; t++) {
		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_weights(tr, t, w);
		for (int l = 0; l < 3; l++) {
			const float *lg = tr->router_logits + ((size_t)t * 3 + l) * 8;
			double z = 0, mx = lg[0], rest = -INFINITY;

			for (int e = 1; e < 8; e++)
				mx = fmax(mx, lg[e]);
			for (int e = 0; e < 8; e++) {
				z += exp(lg[e] - mx);
				if (e != ex[l * 2] && e != ex[l * 2 + 1])
					rest = fmax(rest, lg[e]);
			}
			/* softmax over all E, then top-k, not renormalised */
			for (int k = 0; k < 2; k++)
				cr_expect_float_eq(w[l * 2 + k], exp(lg[ex[l * 2 + k]] - mx) / z, 1e-5,
						   "row %lld layer %d", (long long)t, l);
			cr_expect_float_eq(tr->topk_margin[t * 3 + l],
					   fmin(lg[ex[l * 2]], lg[ex[l * 2 + 1]]) - rest, 1e-6);
			cr_expect_geq(tr->topk_margin[t * 3 + l], 0);
		}
		cr_expect(tr->pred_prob[t] > 0 && tr->pred_prob[t] <= 1);
		cr_expect(tr->pred_id[t] >= 0 && tr->pred_id[t] < 320);
		if (t + 1 == tr->T || tr->doc_index[t + 1] != tr->doc_index[t])
			cr_expect(isnan(tr->target_logprob[t]));
		else
			cr_expect(tr->target_logprob[t] <= 0 && tr->target_logprob[t] >= logf((float)tr->pred_prob[t]) - 50);
	}
	/* the same trace with one window per document: tokens in the first window
	 * have the same context, hence the same routing */
	tr2 = run(&f, "w64", 64);
	cr_assert_eq(tr2->T, tr->T);
	for (int64_t t = 0; t < tr->T; t++) {
		int32_t ex2[6];

		if (tr->position[t] >= 16)
			continue;
		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_experts(tr2, t, ex2);
		for (int i = 0; i < 6; i++)
			cr_expect_eq(ex[i], ex2[i], "row %lld", (long long)t);
		cr_expect_float_eq(tr->pred_prob[t], tr2->pred_prob[t], 1e-5);
	}
	for (int64_t t = 0; t < tr->T; t++)
		if (tr->position[t] >= 16)
			first_long++;
	cr_expect_gt(first_long, 0);
	/* windows batched (right-padded) or one at a time: the same routes,
	 * except at near-ties of the router */
	{
		struct moe_trace *t1 = run_b(&f, "b1", 16, 1), *t5 = run_b(&f, "b5", 16, 5);
		struct moe_trace_diff_layer d[3];

		cr_assert_eq(moe_trace_diff(t1, t5, 1e-4, d, NULL, &err), 0, "%s", err.msg);
		for (int l = 0; l < 3; l++) {
			cr_expect_eq(d[l].n_disagree, d[l].n_near_tie, "layer %d", l);
			cr_expect_lt(d[l].max_weight_diff, 1e-4);
		}
		cr_assert_eq(moe_trace_diff(tr, t5, 1e-4, d, NULL, &err), 0, "%s", err.msg);
		for (int l = 0; l < 3; l++)
			cr_expect_eq(d[l].n_disagree, d[l].n_near_tie, "layer %d", l);
		cr_expect_eq(json_integer_value(json_object_get(json_object_get(t5->meta, "data"),
								"window_overlap")), 8);
		moe_trace_free(t1);
		moe_trace_free(t5);
	}
	/* meta.json records the model and the router semantics */
	{
		json_t *model = json_object_get(tr->meta, "model");
		json_t *router = json_object_get(model, "router");

		cr_expect_eq(json_integer_value(json_object_get(model, "n_moe_layers")), 3);
		cr_expect_eq(json_array_size(json_object_get(model, "dense_block_indices")), 1);
		cr_expect(json_is_false(json_object_get(router, "norm_topk_prob")));
		cr_expect_str_eq(json_string_value(json_object_get(json_object_get(tr->meta, "tokenizer"),
								   "name")), "tok.json");
		cr_expect_eq(json_array_size(tr->docs), 3);
	}
	/* stats by document label */
	{
		struct moe_route_stats_opts so = {.label = "lang"};
		struct moe_route_stats *s;

		cr_assert_eq(moe_route_stats_compute(tr, &so, &s, &err), 0, "%s", err.msg);
		cr_expect_eq(s->n_labels, 2);
		cr_expect_eq(s->lab_n[0] + s->lab_n[1], (uint64_t)tr->T);
		moe_route_stats_free(s);
	}
	moe_trace_free(tr);
	moe_trace_free(tr2);
	teardown_fixture(&f);
}

/* --data: the val split of a shard directory holding the same documents
 * gives the same routing as --docs. */
Test(run, shards_match_docs)
{
	struct fixture f;
	struct moe_error err = {0};
	struct moe_shard_writer_opts so;
	struct moe_tokstream_info info = {.vocab_size = 320, .eos_id = MOE_NO_EOS};
	struct moe_shard_writer *w;
	struct moe_tok *tok;
	struct moe_trace *a, *b;
	char *shards, *out;
	struct moe_routes_run_opts o = {0};
	struct moe_trace_diff_layer d[3];

	setup_fixture(&f);
	tok = moe_tok_load(f.tok, &err);
	cr_assert_not_null(tok, "%s", err.msg);
	shards = moe_path_join(f.dir, "shards");
	moe_shard_writer_opts_init(&so);
	so.val_docs = 3;
	w = moe_shard_writer_new(shards, &so, &info, &err);
	cr_assert_not_null(w, "%s", err.msg);
	for (int i = 0; i < 3; i++) {
		struct moe_tok_ids ids = {0};

		cr_assert_eq(moe_tok_encode(tok, NULL, DOCS[i], strlen(DOCS[i]), 0, &ids, &err), 0);
		cr_assert_eq(moe_shard_writer_add(w, ids.ids, ids.n, &err), 0, "%s", err.msg);
		moe_tok_ids_release(&ids);
	}
	cr_assert_eq(moe_shard_writer_commit(w, &err), 0, "%s", err.msg);
	moe_shard_writer_free(w);
	moe_tok_free(tok);

	a = run(&f, "docs", 16);
	out = moe_path_join(f.dir, "shards-trace");
	o.ckpt = f.ckpt;
	o.data_dir = shards;
	o.split = "val";
	o.tokenizer = f.tok;
	o.out = out;
	o.seq_len = 16;
	cr_assert_eq(moe_routes_run(&o, NULL, &err), 0, "%s", err.msg);
	b = moe_trace_open(out, &err);
	cr_assert_not_null(b, "%s", err.msg);
	cr_assert_eq(b->T, a->T);
	cr_assert_eq(moe_trace_diff(a, b, 0, d, NULL, &err), 0, "%s", err.msg);
	for (int l = 0; l < 3; l++)
		cr_expect_float_eq(d[l].order_agree, 1.0, 1e-12, "layer %d", l);
	cr_expect_not_null(b->vocab, "token strings from -t with --data");
	cr_expect_str_eq(json_string_value(json_object_get(json_object_get(b->meta, "data"), "kind")),
			 "shards");
	moe_trace_free(a);
	moe_trace_free(b);
	free(shards);
	free(out);
	teardown_fixture(&f);
}
