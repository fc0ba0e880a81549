/*
 * lib/routes: trace building, saving/opening, invariants, statistics on a
 * trace small enough to count by hand, diff, and hostile token strings.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "routes/routes.h"
#include "routes/internal.h"

#define L_ 2
#define K_ 2
#define E_ 3

/* The hand-counted trace: doc 0 = tokens 5 7 5, doc 1 = token 9.
 *        layer 0          layer 1
 *  t0  [0 1] .6 .3     [0 2] .5  .4
 *  t1  [0 2] .7 .2     [1 0] .6  .1
 *  t2  [1 0] .5 .5     [1 2] .8  .1
 *  t3  [2 1] .4 .3     [2 0] .45 .44   */
static const int32_t EX[4][L_ * K_] = {{0, 1, 0, 2}, {0, 2, 1, 0}, {1, 0, 1, 2}, {2, 1, 2, 0}};
static const float WT[4][L_ * K_] = {{.6f, .3f, .5f, .4f}, {.7f, .2f, .6f, .1f},
				    {.5f, .5f, .8f, .1f}, {.4f, .3f, .45f, .44f}};
static const int32_t TOK[4] = {5, 7, 5, 9}, DOC[4] = {0, 0, 0, 1}, POS[4] = {0, 1, 2, 0};

static struct moe_trace *hand_trace(bool logits)
{
	struct moe_error err = {0};
	struct moe_trace *tr = moe_trace_new(L_, K_, E_, logits, &err);
	float lg[L_ * E_];

	cr_assert_not_null(tr, "%s", err.msg);
	for (int t = 0; t < 4; t++) {
		float margin[L_] = {0.5f, (float)t * 0.001f};
		struct moe_trace_row r = {.token_id = TOK[t], .doc_index = DOC[t], .position = POS[t],
					  .pred_id = 1, .pred_prob = 0.5f, .target_logprob = -1.0f,
					  .experts = EX[t], .weights = WT[t], .margin = margin,
					  .logits = logits ? lg : NULL};

		/* logits whose softmax is uniform: P_e = 1/3 everywhere */
		for (int i = 0; i < L_ * E_; i++)
			lg[i] = 0.25f;
		cr_assert_eq(moe_trace_append(tr, &r, &err), 0, "%s", err.msg);
	}
	tr->docs = json_pack("[{ss}{ss}]", "lang", "en", "lang", "fr");
	return tr;
}

static char *tmpdir(void)
{
	char *d = strdup("/tmp/moe-routes-test.XXXXXX");

	cr_assert_not_null(mkdtemp(d));
	return d;
}

static void rmrf(const char *d)
{
	struct moe_error err = {0};

	moe_rmtree(d, &err);
}

Test(stats, hand_counted)
{
	struct moe_error err = {0};
	struct moe_trace *tr = hand_trace(true);
	struct moe_route_stats_opts o = {.window = 2, .min_count = 1, .label = "lang", .path_sample = -1};
	struct moe_route_stats *s;
	const struct moe_layer_summary *m0, *m1;

	cr_assert_eq(moe_trace_check(tr, &err), 0, "%s", err.msg);
	cr_assert_eq(moe_route_stats_compute(tr, &o, &s, &err), 0, "%s", err.msg);
	/* usage */
	const uint64_t top1[L_ * E_] = {2, 1, 1, 1, 2, 1}, topk[L_ * E_] = {3, 3, 2, 3, 2, 3};
	for (int i = 0; i < L_ * E_; i++) {
		cr_expect_eq(moe_route_stats_top1(s)[i], top1[i], "top1[%d]", i);
		cr_expect_eq(moe_route_stats_topk(s)[i], topk[i], "topk[%d]", i);
	}
	m0 = moe_route_stats_layer(s, 0);
	m1 = moe_route_stats_layer(s, 1);
	/* top-1 shares (1/2, 1/4, 1/4): 1.5 bits; KL = log2 3 - 1.5 */
	cr_expect_float_eq(m0->token_entropy, 1.5, 1e-12);
	cr_expect_float_eq(m1->token_entropy, 1.5, 1e-12);
	cr_expect_float_eq(m0->token_kl, log2(3) - 1.5, 1e-12);
	/* top-k shares (3, 3, 2)/8 */
	cr_expect_float_eq(m0->topk_entropy, -(0.75 * log2(0.375) + 0.25 * log2(0.25)), 1e-12);
	cr_expect_float_eq(m0->norm_entropy, m0->topk_entropy / log2(3), 1e-12);
	/* cv of (3,3,2): population sd sqrt(2/9) over mean 8/3 */
	cr_expect_float_eq(m0->cv_percent, 100 * sqrt(2.0 / 9) / (8.0 / 3), 1e-9);
	cr_expect_eq(m0->n_dead, 0);
	/* continuity: same top-1 for t0, t2, t3; every top-k pair meets */
	cr_expect_float_eq(m0->ec, 0.75, 1e-12);
	cr_expect_float_eq(m0->ec_any, 1.0, 1e-12);
	cr_expect(isnan(m1->ec));
	/* lb loss with uniform router probs: E * sum f_e / E = sum f_e = K */
	cr_expect_float_eq(m0->lb_loss, 2.0, 1e-6);
	/* with weights: f = (3,3,2)/4, W = (1.8, 1.1, 0.6)/4 */
	cr_expect_float_eq(m0->lb_loss_weights, 3 * (0.75 * 0.45 + 0.75 * 0.275 + 0.5 * 0.15), 1e-6);
	cr_expect_float_eq(m0->mean_top1_weight, (0.6 + 0.7 + 0.5 + 0.4) / 4, 1e-6);
	cr_expect_float_eq(m0->mean_topk_mass, (0.9 + 0.9 + 1.0 + 0.7) / 4, 1e-6);
	cr_expect_float_eq(m0->mean_margin, 0.5, 1e-6);
	cr_expect_float_eq(m1->mean_margin, 0.0015, 1e-6);
	/* every token id's top-1 is unanimous except id 5 at layer 0 (experts 0, 1)
	 * and at layer 1 (0, 1): (1 + 1 + 1) / 4 */
	cr_expect_float_eq(m0->token_spec, 0.75, 1e-12);
	cr_expect_float_eq(m1->token_spec, 0.75, 1e-12);
	/* transitions layer 0 -> 1: 0->0, 0->1, 1->1, 2->2 */
	const uint64_t *tr01 = moe_route_stats_transitions(s);
	cr_expect_eq(tr01[0 * 3 + 0], 1);
	cr_expect_eq(tr01[0 * 3 + 1], 1);
	cr_expect_eq(tr01[1 * 3 + 1], 1);
	cr_expect_eq(tr01[2 * 3 + 2], 1);
	cr_expect_eq(tr01[1 * 3 + 0] + tr01[0 * 3 + 2] + tr01[1 * 3 + 2] + tr01[2 * 3 + 0] + tr01[2 * 3 + 1], 0);
	/* co-activation at layer 0: {0,1} twice, {0,2} once, {1,2} once */
	cr_expect_eq(s->coact[(0 * 3 + 0) * 3 + 1], 2);
	cr_expect_eq(s->coact[(0 * 3 + 1) * 3 + 0], 2);
	cr_expect_eq(s->coact[(0 * 3 + 0) * 3 + 2], 1);
	cr_expect_eq(s->coact[(0 * 3 + 2) * 3 + 1], 1);
	cr_expect_eq(s->coact[(0 * 3 + 0) * 3 + 0], 0);
	/* s = 1 continuity over all top-k usage events: 4 of 8 stay */
	cr_expect_eq(s->ecall_den[1], 8);
	cr_expect_eq(s->ecall_num[1], 4);
	cr_expect_eq(s->ec1_num[1], 3);
	cr_expect_eq(s->ec1_den[1], 4);
	/* paths over the 2-layer window: 4 distinct routes, 1 token each */
	{
		size_t n = 0;
		uint64_t *v = moe_routes_paths_sorted(s, 0, &n);
		int route[2];

		cr_assert_eq(n, 4);
		for (size_t i = 0; i < n; i++)
			cr_expect_eq(v[2 * i + 1], 1);
		moe_routes_path_unpack(s, v[0], route); /* ties: smallest key first = (0, 0) */
		cr_expect_eq(route[0], 0);
		cr_expect_eq(route[1], 0);
		free(v);
	}
	/* top tokens of layer 1, expert 1: ids 5 and 7, once each, lower id first */
	{
		int32_t ids[4];
		uint64_t c[4];
		int n = moe_route_stats_expert_tokens(s, 1, 1, 4, ids, c);

		cr_expect_eq(n, 2);
		cr_expect_eq(ids[0], 5);
		cr_expect_eq(ids[1], 7);
		cr_expect_eq(c[0], 1);
	}
	/* labels: "en" = doc 0 (3 tokens), "fr" = doc 1 */
	cr_assert_eq(s->n_labels, 2);
	cr_expect_str_eq(s->labels[0], "en");
	cr_expect_eq(s->lab_n[0], 3);
	cr_expect_eq(s->lab_n[1], 1);
	{
		/* JS distance of "en" at layer 0, top-k counts (3,2,1) vs pooled (3,3,2) */
		double p[3] = {3 / 6.0, 2 / 6.0, 1 / 6.0}, q[3] = {3 / 8.0, 3 / 8.0, 2 / 8.0}, js = 0;

		for (int e = 0; e < 3; e++) {
			double mm = (p[e] + q[e]) / 2;
			js += 0.5 * p[e] * log2(p[e] / mm) + 0.5 * q[e] * log2(q[e] / mm);
		}
		cr_expect_float_eq(moe_routes_js_distance(s->lab_topk, s->topk, 3), sqrt(js), 1e-12);
	}
	/* the tables get written */
	{
		char *d = tmpdir();
		char *p = moe_path_join(d, "st");
		static const char *files[] = {"usage.csv", "layers.csv", "ec_steps.csv", "transitions.csv",
					      "coactivation.csv", "path_windows.csv", "paths.csv",
					      "expert_tokens.csv", "token_spec.csv", "label_spec.csv",
					      "label_js.csv", "stats.json"};

		cr_assert_eq(moe_route_stats_write(s, tr, p, &err), 0, "%s", err.msg);
		for (size_t i = 0; i < sizeof files / sizeof files[0]; i++) {
			char *f = moe_path_join(p, files[i]);
			cr_expect_eq(access(f, R_OK), 0, "%s missing", files[i]);
			free(f);
		}
		cr_assert_eq(moe_routes_plot(s, tr, p, -1, &err), 0, "%s", err.msg);
		free(p);
		rmrf(d);
		free(d);
	}
	moe_route_stats_free(s);
	moe_trace_free(tr);
}

Test(trace, save_open_roundtrip)
{
	struct moe_error err = {0};
	struct moe_trace *tr = hand_trace(true), *rd;
	char *d = tmpdir(), *p = moe_path_join(d, "tr");
	struct moe_trace_save_opts so = {.views = MOE_VIEW_CSV | MOE_VIEW_JSONL};
	int32_t ex[L_ * K_];
	float w[L_ * K_];

	tr->vocab = json_pack("{ssssss}", "5", " a", "7", "\"b\",\n", "9", "c");
	cr_assert_eq(moe_trace_save(tr, p, &so, &err), 0, "%s", err.msg);
	/* saving again without replace fails and keeps the first */
	cr_expect_lt(moe_trace_save(tr, p, &so, &err), 0);
	rd = moe_trace_open(p, &err);
	cr_assert_not_null(rd, "%s", err.msg);
	cr_expect_eq(rd->T, 4);
	cr_expect_eq(rd->L, L_);
	cr_expect_eq(rd->K, K_);
	cr_expect_eq(rd->E, E_);
	cr_expect_eq(rd->experts_dtype, MOE_U8);
	cr_expect_not_null(rd->router_logits);
	for (int t = 0; t < 4; t++) {
		moe_trace_row_experts(rd, t, ex);
		moe_trace_row_weights(rd, t, w);
		for (int i = 0; i < L_ * K_; i++) {
			cr_expect_eq(ex[i], EX[t][i]);
			cr_expect_eq(w[i], WT[t][i]);
		}
		cr_expect_eq(rd->token_id[t], TOK[t]);
		cr_expect_eq(rd->doc_index[t], DOC[t]);
		cr_expect_eq(rd->position[t], POS[t]);
	}
	cr_expect_eq(moe_trace_check(rd, &err), 0, "%s", err.msg);
	cr_assert_not_null(rd->docs);
	cr_expect_eq(json_array_size(rd->docs), 2);
	cr_expect_str_eq(json_string_value(json_object_get(rd->vocab, "7")), "\"b\",\n");
	/* bf16 weights */
	{
		char *p2 = moe_path_join(d, "tr16");
		struct moe_trace *r2;

		so.weights_dtype = MOE_BF16;
		so.views = 0;
		cr_assert_eq(moe_trace_save(tr, p2, &so, &err), 0, "%s", err.msg);
		r2 = moe_trace_open(p2, &err);
		cr_assert_not_null(r2, "%s", err.msg);
		cr_expect_eq(r2->weights_dtype, MOE_BF16);
		moe_trace_row_weights(r2, 1, w);
		cr_expect_float_eq(w[0], 0.7f, 0.004f);
		moe_trace_free(r2);
		free(p2);
	}
	moe_trace_free(rd);
	moe_trace_free(tr);
	free(p);
	rmrf(d);
	free(d);
}

Test(trace, check_rejects)
{
	struct moe_error err = {0};
	struct moe_trace *tr = hand_trace(false);
	int32_t *e = tr->topk_experts;
	float *w = tr->topk_weights;

	cr_assert_eq(moe_trace_check(tr, &err), 0, "%s", err.msg);
	e[1] = e[0]; /* duplicate id at row 0 layer 0 */
	cr_expect_lt(moe_trace_check(tr, &err), 0);
	cr_expect(strstr(err.msg, "row 0 layer 0") != NULL, "%s", err.msg);
	e[1] = 1;
	w[4 + 1] = 0.9f; /* row 1 layer 0 ascending */
	cr_expect_lt(moe_trace_check(tr, &err), 0);
	cr_expect(strstr(err.msg, "descending") != NULL, "%s", err.msg);
	w[4 + 1] = 0.2f;
	tr->position[3] = 3; /* doc 1 does not start at 0 */
	cr_expect_lt(moe_trace_check(tr, &err), 0);
	tr->position[3] = 0;
	tr->position[2] = 5; /* gap */
	cr_expect_lt(moe_trace_check(tr, &err), 0);
	tr->position[2] = 2;
	cr_expect_eq(moe_trace_check(tr, &err), 0, "%s", err.msg);
	{
		int32_t bad[L_ * K_] = {0, 3, 0, 1};
		struct moe_trace_row r = {.experts = bad, .weights = WT[0]};

		cr_expect_lt(moe_trace_append(tr, &r, &err), 0); /* id 3 >= E */
	}
	moe_trace_free(tr);
}

Test(trace, open_rejects_bad_files)
{
	struct moe_error err = {0};
	char *d = tmpdir(), *p = moe_path_join(d, "x"), *f;
	struct moe_trace *tr = hand_trace(false);

	cr_assert_eq(moe_trace_save(tr, p, NULL, &err), 0, "%s", err.msg);
	/* truncate the safetensors file */
	f = moe_path_join(p, "routes.safetensors");
	cr_assert_eq(truncate(f, 40), 0);
	cr_expect_null(moe_trace_open(p, &err));
	cr_expect(strlen(err.msg) > 0);
	free(f);
	/* missing meta.json */
	f = moe_path_join(p, "meta.json");
	unlink(f);
	cr_expect_null(moe_trace_open(p, &err));
	cr_expect(strstr(err.msg, "meta.json") != NULL, "%s", err.msg);
	free(f);
	cr_expect_null(moe_trace_open("/nonexistent/trace", &err));
	moe_trace_free(tr);
	free(p);
	rmrf(d);
	free(d);
}

Test(diff, known_disagreements)
{
	struct moe_error err = {0};
	struct moe_trace *a = hand_trace(false), *b = hand_trace(false);
	struct moe_trace_diff_layer d[L_];
	int32_t *eb = b->topk_experts;
	float *wb = b->topk_weights;

	/* row 1 layer 1: B picks [1 2] instead of [1 0] (margin A 0.001, B set below) */
	eb[1 * 4 + 2 + 1] = 2;
	b->topk_margin[1 * 2 + 1] = 0.0004f;
	/* row 2 layer 0: same set, swapped order; weight differs by 0.1 */
	eb[2 * 4 + 0] = 0;
	eb[2 * 4 + 1] = 1;
	wb[2 * 4 + 0] = 0.5f;
	wb[2 * 4 + 1] = 0.4f;
	cr_assert_eq(moe_trace_diff(a, b, 1e-3, d, NULL, &err), 0, "%s", err.msg);
	cr_expect_float_eq(d[0].topk_overlap, 1.0, 1e-12);
	cr_expect_float_eq(d[0].set_agree, 1.0, 1e-12);
	cr_expect_float_eq(d[0].top1_agree, 0.75, 1e-12);
	cr_expect_float_eq(d[0].order_agree, 0.75, 1e-12);
	cr_expect_float_eq(d[0].max_weight_diff, 0.1, 1e-6);
	cr_expect_eq(d[0].n_disagree, 0);
	cr_expect_float_eq(d[1].topk_overlap, (3 + 0.5) / 4, 1e-12);
	cr_expect_eq(d[1].n_disagree, 1);
	cr_expect_eq(d[1].n_near_tie, 1);                   /* min(0.001, 0.0004) <= 1e-3 */
	cr_expect_float_eq(d[1].max_margin, 0.0004, 1e-7);
	cr_expect_eq(moe_trace_diff(a, b, 1e-4, d, NULL, &err), 0);
	cr_expect_eq(d[1].n_near_tie, 0);
	b->token_id[2] = 8;
	cr_expect_lt(moe_trace_diff(a, b, 1e-3, d, NULL, &err), 0);
	cr_expect(strstr(err.msg, "row 2") != NULL, "%s", err.msg);
	moe_trace_free(a);
	moe_trace_free(b);
}

Test(text, clean_utf8_and_csv_quoting)
{
	char *s;
	char buf[256];
	FILE *fp;

	s = moe_routes_clean_utf8("ok \xC3\xBC", 5);
	cr_expect_str_eq(s, "ok \xC3\xBC");
	free(s);
	s = moe_routes_clean_utf8("a\xC3", 2); /* truncated sequence */
	cr_expect_str_eq(s, "a\xEF\xBF\xBD");
	free(s);
	s = moe_routes_clean_utf8("\x00x\xFF", 3); /* NUL and an invalid byte */
	cr_expect_str_eq(s, "\xEF\xBF\xBDx\xEF\xBF\xBD");
	free(s);
	s = moe_routes_clean_utf8("\xED\xA0\x80", 3); /* surrogate */
	cr_expect_eq(strstr(s, "\xED") == NULL, true);
	free(s);
	fp = fmemopen(buf, sizeof buf, "w");
	moe_csv_quoted(fp, " a \"q\",\nb");
	fclose(fp);
	cr_expect_str_eq(buf, "\" a \"\"q\"\",\nb\"");
}

Test(synth, invariants_and_sums)
{
	struct moe_error err = {0};
	struct moe_synth_opts o = {.T = 5000, .L = 5, .K = 3, .E = 12, .V = 300, .doc_len = 40,
				   .stick = 0.4, .seed = 7, .logits = true};
	struct moe_trace *tr = moe_trace_synth(&o, &err);
	struct moe_route_stats *s;
	int32_t ex[5 * 3];
	float w[5 * 3];

	cr_assert_not_null(tr, "%s", err.msg);
	cr_expect_eq(moe_trace_check(tr, &err), 0, "%s", err.msg);
	/* weights are the softmax of the logits at the chosen experts, the chosen
	 * are the top-K logits, and the margin is s_K - max(rest) */
	for (int64_t t = 0; t < tr->T; t += 97) {
		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_weights(tr, t, w);
		for (int l = 0; l < 5; l++) {
			const float *lg = tr->router_logits + ((size_t)t * 5 + l) * 12;
			double z = 0, rest = -INFINITY;

			for (int e = 0; e < 12; e++) {
				bool in = false;
				z += exp(lg[e]);
				for (int k = 0; k < 3; k++)
					in |= ex[l * 3 + k] == e;
				if (!in && lg[e] > rest)
					rest = lg[e];
			}
			for (int k = 0; k < 3; k++)
				cr_expect_float_eq(w[l * 3 + k], exp(lg[ex[l * 3 + k]]) / z, 1e-5);
			cr_expect_float_eq(tr->topk_margin[t * 5 + l], lg[ex[l * 3 + 2]] - rest, 1e-5);
			cr_expect_gt(tr->topk_margin[t * 5 + l], 0);
		}
	}
	cr_assert_eq(moe_route_stats_compute(tr, NULL, &s, &err), 0, "%s", err.msg);
	for (int l = 0; l < 5; l++) {
		uint64_t a = 0, b = 0, c = 0;

		for (int e = 0; e < 12; e++) {
			a += moe_route_stats_top1(s)[l * 12 + e];
			b += moe_route_stats_topk(s)[l * 12 + e];
			if (l < 4)
				for (int f = 0; f < 12; f++)
					c += moe_route_stats_transitions(s)[((size_t)l * 12 + e) * 12 + f];
		}
		cr_expect_eq(a, 5000);
		cr_expect_eq(b, 3 * 5000);
		if (l < 4)
			cr_expect_eq(c, 5000);
	}
	moe_route_stats_free(s);
	moe_trace_free(tr);
}

Test(stats, rejects_corrupt_ids)
{
	struct moe_error err = {0};
	struct moe_trace *tr = hand_trace(false);
	struct moe_route_stats *s = NULL;

	((int32_t *)tr->topk_experts)[2 * 4 + 3] = 7; /* row 2, layer 1, rank 2: id >= E = 3 */
	cr_expect_lt(moe_route_stats_compute(tr, NULL, &s, &err), 0);
	cr_expect_null(s);
	cr_expect(strstr(err.msg, "row 2") != NULL, "%s", err.msg);
	((int32_t *)tr->topk_experts)[2 * 4 + 3] = 2;
	tr->doc_index[3] = -1;
	{
		struct moe_route_stats_opts o = {.label = "lang"};

		cr_expect_lt(moe_route_stats_compute(tr, &o, &s, &err), 0);
	}
	moe_trace_free(tr);
}
