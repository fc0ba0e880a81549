/*
 * Text generation for moe-eval generate: temperature and nucleus (top-p)
 * sampling from the last position's logits, recomputing the whole sequence
 * each step (no KV cache: the CPU reference favours simplicity).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "model/model.h"
#include "train/train.h"

/* splitmix64 */
static uint64_t next_u64(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

static double next_unit(uint64_t *s)
{
	return (double)(next_u64(s) >> 11) * 0x1.0p-53;
}

struct cand {
	float p;
	int id;
};

static int cmp_cand(const void *a, const void *b)
{
	const struct cand *x = a, *y = b;
	if (x->p != y->p)
		return x->p > y->p ? -1 : 1;
	return x->id - y->id;
}

int moe_sample_token(const float *logits, int V, double temperature, double top_p,
		     uint64_t *rng, void *scratch)
{
	int best = 0;
	for (int i = 1; i < V; i++)
		if (logits[i] > logits[best])
			best = i;
	if (temperature <= 0)
		return best;
	struct cand *c = scratch;
	double mx = logits[best], sum = 0;
	for (int i = 0; i < V; i++) {
		c[i].id = i;
		c[i].p = (float)exp((logits[i] - mx) / temperature);
		sum += c[i].p;
	}
	int n = V;
	if (top_p < 1.0) {
		qsort(c, (size_t)V, sizeof *c, cmp_cand);
		double acc = 0;
		for (n = 0; n < V; n++) {
			acc += c[n].p / sum;
			if (acc >= top_p) {
				n++;
				break;
			}
		}
		if (n > V)
			n = V;
		sum = 0;
		for (int i = 0; i < n; i++)
			sum += c[i].p;
	}
	double r = next_unit(rng) * sum, acc = 0;
	for (int i = 0; i < n; i++) {
		acc += c[i].p;
		if (r < acc)
			return c[i].id;
	}
	return c[n - 1].id;
}

size_t moe_sample_scratch_size(int V)
{
	return (size_t)V * sizeof(struct cand);
}

int moe_generate(struct moe_model *m, const int32_t *prompt, size_t n_prompt,
		 const struct moe_generate_opts *g, moe_generate_cb cb, void *arg,
		 struct moe_error *err)
{
	const struct moe_config *cfg = moe_model_config(m);
	int V = cfg->vocab_size;
	int ctx = cfg->max_position_embeddings > 0 ? cfg->max_position_embeddings : 1 << 20;
	size_t cap = n_prompt + (size_t)g->max_tokens + 1;
	int32_t *seq = malloc(cap * sizeof *seq);
	float *logits = malloc((size_t)V * sizeof *logits);
	void *scratch = malloc(moe_sample_scratch_size(V));
	uint64_t rng = g->seed;
	int rc = 0;
	if (!seq || !logits || !scratch) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	if (n_prompt == 0) {
		rc = moe_error_set(err, MOE_EINVAL, "empty prompt");
		goto out;
	}
	memcpy(seq, prompt, n_prompt * sizeof *seq);
	size_t n = n_prompt;
	for (int64_t i = 0; i < g->max_tokens; i++) {
		size_t start = n > (size_t)ctx ? n - (size_t)ctx : 0;
		struct moe_forward_opts fo = { .train = false, .eval_use_bias = g->use_bias,
					       .logits_mode = MOE_LOGITS_LAST, .logits_out = logits };
		rc = moe_model_forward(m, seq + start, NULL, 1, (int)(n - start), &fo, NULL, err);
		if (rc)
			goto out;
		int id = moe_sample_token(logits, V, g->temperature, g->top_p, &rng, scratch);
		seq[n++] = id;
		bool stop = g->eos_id >= 0 && id == g->eos_id;
		if (cb && (rc = cb(id, arg, err)))
			goto out;
		if (stop)
			break;
	}
out:
	free(seq);
	free(logits);
	free(scratch);
	return rc;
}
