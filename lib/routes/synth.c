/*
 * Synthetic routing traces for tests and benchmarks.  Routes have structure
 * (token preferences, sticky layer-to-layer plans) so that every statistic
 * has something to find; the weights are softmax probabilities of scores
 * consistent with the chosen order, and topk_margin is the score gap between
 * the K-th chosen and the best unchosen expert.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"

static inline uint64_t rng_next(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);

	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static inline double rng_unif(uint64_t *s)
{
	return (double)(rng_next(s) >> 11) * (1.0 / 9007199254740992.0);
}

static inline uint32_t mix32(uint32_t a, uint32_t b)
{
	uint64_t z = ((uint64_t)a << 32 | b) * 0x9E3779B97F4A7C15ull;

	return (uint32_t)(z >> 29);
}

struct moe_trace *moe_trace_synth(const struct moe_synth_opts *o, struct moe_error *err)
{
	struct moe_trace *tr;
	int L = o->L, K = o->K, E = o->E;
	int64_t T = o->T, lk = (int64_t)L * K;
	uint64_t rng = o->seed * 0x2545F4914F6CDD1Dull + 1;
	int32_t doc = 0, pos = 0, doc_left;
	int V = o->V > 1 ? o->V : 2;
	int mean_len = o->doc_len > 0 ? o->doc_len : 100;
	int32_t *chosen = NULL;
	float *score = NULL;
	enum moe_dtype edt = E <= 256 ? MOE_U8 : E <= 32767 ? MOE_I16 : MOE_I32;

	if (T < 0 || L < 1 || K < 1 || E < 2 || K >= E || K > MOE_ROUTES_MAX_K) {
		moe_error_set(err, MOE_EINVAL, "synth: bad shape T=%lld L=%d K=%d E=%d", (long long)T, L, K,
			      E);
		return NULL;
	}
	tr = calloc(1, sizeof *tr);
	if (!tr)
		goto out_nomem;
	tr->T = T;
	tr->L = L;
	tr->K = K;
	tr->E = E;
	tr->experts_dtype = edt;
	tr->weights_dtype = MOE_F32;
	tr->topk_experts = malloc((size_t)(T ? T : 1) * lk * moe_dtype_size(edt));
	tr->topk_weights = malloc((size_t)(T ? T : 1) * lk * sizeof(float));
	tr->topk_margin = malloc((size_t)(T ? T : 1) * L * sizeof(float));
	tr->token_id = malloc((size_t)(T ? T : 1) * sizeof(int32_t));
	tr->doc_index = malloc((size_t)(T ? T : 1) * sizeof(int32_t));
	tr->position = malloc((size_t)(T ? T : 1) * sizeof(int32_t));
	tr->pred_id = malloc((size_t)(T ? T : 1) * sizeof(int32_t));
	tr->pred_prob = malloc((size_t)(T ? T : 1) * sizeof(float));
	tr->target_logprob = malloc((size_t)(T ? T : 1) * sizeof(float));
	if (o->logits)
		tr->router_logits = malloc((size_t)(T ? T : 1) * L * E * sizeof(float));
	chosen = malloc((size_t)E * sizeof *chosen);
	score = malloc((size_t)E * sizeof *score);
	if (!tr->topk_experts || !tr->topk_weights || !tr->topk_margin || !tr->token_id ||
	    !tr->doc_index || !tr->position || !tr->pred_id || !tr->pred_prob || !tr->target_logprob ||
	    (o->logits && !tr->router_logits) || !chosen || !score)
		goto out_nomem;
	doc_left = 1 + (int32_t)(rng_unif(&rng) * (2 * mean_len - 1));
	for (int64_t t = 0; t < T; t++) {
		double u = rng_unif(&rng);
		int32_t x = (int32_t)(V * u * u * u); /* Zipf-like: small ids are frequent */
		int prev = -1;

		if (x >= V)
			x = V - 1;
		if (doc_left == 0) {
			doc++;
			pos = 0;
			doc_left = 1 + (int32_t)(rng_unif(&rng) * (2 * mean_len - 1));
		}
		tr->token_id[t] = x;
		tr->doc_index[t] = doc;
		tr->position[t] = pos++;
		doc_left--;
		tr->pred_id[t] = (int32_t)((x * 7 + 1) % V);
		tr->pred_prob[t] = (float)(0.05 + 0.9 * rng_unif(&rng));
		tr->target_logprob[t] = doc_left == 0 ? NAN : (float)log(0.01 + 0.98 * rng_unif(&rng));
		for (int l = 0; l < L; l++) {
			double r = rng_unif(&rng), s, z;
			int top1, n = 0;

			if (prev >= 0 && r < o->stick)
				top1 = (prev * 5 + l + 1) % E;
			else if (r < o->stick + (1 - o->stick) * 0.5)
				top1 = (int)(mix32((uint32_t)x, (uint32_t)l) % (uint32_t)E);
			else
				top1 = (int)(rng_next(&rng) % (uint64_t)E);
			chosen[n++] = top1;
			while (n < K) {
				int e = (int)(rng_next(&rng) % (uint64_t)E), dup = 0;

				for (int j = 0; j < n; j++)
					dup |= chosen[j] == e;
				if (!dup)
					chosen[n++] = e;
			}
			/* descending scores for the chosen; the rest below by a margin */
			s = 2.0 + rng_unif(&rng);
			for (int k = 0; k < K; k++) {
				score[k] = (float)s;
				s -= 0.05 + 0.6 * rng_unif(&rng);
			}
			{
				double margin = 0.001 + 0.5 * rng_unif(&rng) * rng_unif(&rng);
				double rest = score[K - 1] - margin;

				tr->topk_margin[t * L + l] = (float)margin;
				if (tr->router_logits) {
					float *lg = tr->router_logits + ((size_t)t * L + l) * E;
					double mx;

					for (int e = 0; e < E; e++)
						lg[e] = NAN;
					for (int k = 0; k < K; k++)
						lg[chosen[k]] = score[k];
					for (int e = 0, first = 1; e < E; e++)
						if (isnan(lg[e])) {
							lg[e] = (float)(first ? rest : rest - 3.0 * rng_unif(&rng) - 1e-3);
							first = 0;
						}
					/* the stored margin is exactly s_K - max(rest) in float */
					mx = -INFINITY;
					for (int e = 0; e < E; e++) {
						int in = 0;
						for (int k = 0; k < K; k++)
							in |= chosen[k] == e;
						if (!in && lg[e] > mx)
							mx = lg[e];
					}
					tr->topk_margin[t * L + l] = (float)(score[K - 1] - mx);
					z = 0;
					for (int e = 0; e < E; e++)
						z += exp(lg[e]);
				} else {
					z = (E - K) * exp(rest - 1.0);
					for (int k = 0; k < K; k++)
						z += exp(score[k]);
				}
				for (int k = 0; k < K; k++) {
					size_t i = (size_t)t * lk + (size_t)l * K + k;

					((float *)tr->topk_weights)[i] = (float)(exp(score[k]) / z);
					if (edt == MOE_U8)
						((uint8_t *)tr->topk_experts)[i] = (uint8_t)chosen[k];
					else if (edt == MOE_I16)
						((int16_t *)tr->topk_experts)[i] = (int16_t)chosen[k];
					else
						((int32_t *)tr->topk_experts)[i] = chosen[k];
				}
			}
			prev = top1;
		}
	}
	/* token strings: a readable name, with hostile variants for CSV tests */
	tr->vocab = json_object();
	if (tr->vocab) {
		static const char *hostile[] = {" the", "\"quoted\"", "a,b", "line\nbreak", "\r\n",
						"  two spaces", "tab\there", "\xC3\xBC" "ber", "'single'",
						"trailing ", "\\back", "", "NA", "#", "=1+2", "\xE2\x80\x94"};
		int nh = (int)(sizeof hostile / sizeof hostile[0]);
		char *seen = calloc((size_t)V, 1), key[16], name[32];

		if (!seen)
			goto out_nomem;
		for (int64_t t = 0; t < T; t++)
			seen[tr->token_id[t]] = 1;
		for (int x = 0; x < V; x++) {
			if (!seen[x])
				continue;
			snprintf(key, sizeof key, "%d", x);
			if (x < nh) {
				json_object_set_new(tr->vocab, key, json_string(hostile[x]));
			} else {
				snprintf(name, sizeof name, " tok%d", x);
				json_object_set_new(tr->vocab, key, json_string(name));
			}
		}
		free(seen);
	}
	tr->meta = json_pack("{s{sssisisisisbs{sssbsbss}}s{ss}}", "model", "name", "synthetic",
			     "n_moe_layers", L, "n_experts", E, "top_k", K, "n_shared_experts", 0,
			     "synthetic", 1, "router", "weights", "softmax_all_then_topk",
			     "norm_topk_prob", 0, "selection_bias", 0, "topk_order", "weight_desc",
			     "data", "source", "moe-routes synth");
	free(chosen);
	free(score);
	return tr;
out_nomem:
	moe_error_set(err, MOE_ENOMEM, "synth: out of memory for %lld tokens", (long long)T);
	free(chosen);
	free(score);
	moe_trace_free(tr);
	return NULL;
}
