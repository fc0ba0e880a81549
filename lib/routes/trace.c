/*
 * Routing traces: in-memory building, opening a trace directory, invariant
 * checks and row accessors.  Saving and the text views are in save.c.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "routes/routes.h"

static void *xrealloc_array(void *p, int64_t n, size_t size)
{
	if (n <= 0)
		n = 1;
	if ((uint64_t)n > SIZE_MAX / size)
		return NULL;
	return realloc(p, (size_t)n * size);
}

struct moe_trace *moe_trace_new(int L, int K, int E, bool with_logits, struct moe_error *err)
{
	struct moe_trace *tr;

	if (L < 1 || K < 1 || E < 2 || K > E || K > MOE_ROUTES_MAX_K || L > 4096 || E > 65536) {
		moe_error_set(err, MOE_EINVAL, "trace: bad shape L=%d K=%d E=%d", L, K, E);
		return NULL;
	}
	tr = calloc(1, sizeof *tr);
	if (!tr) {
		moe_error_set(err, MOE_ENOMEM, "trace: out of memory");
		return NULL;
	}
	tr->L = L;
	tr->K = K;
	tr->E = E;
	tr->experts_dtype = MOE_I32;
	tr->weights_dtype = MOE_F32;
	if (with_logits)
		tr->router_logits = malloc(sizeof(float)); /* marker, grown on append */
	tr->topk_margin = malloc(sizeof(float));
	tr->pred_id = malloc(sizeof(int32_t));
	tr->pred_prob = malloc(sizeof(float));
	tr->target_logprob = malloc(sizeof(float));
	if ((with_logits && !tr->router_logits) || !tr->topk_margin || !tr->pred_id ||
	    !tr->pred_prob || !tr->target_logprob) {
		moe_trace_free(tr);
		moe_error_set(err, MOE_ENOMEM, "trace: out of memory");
		return NULL;
	}
	return tr;
}

static int grow(struct moe_trace *tr, struct moe_error *err)
{
	int64_t cap = tr->cap_ ? tr->cap_ * 2 : 1024;
	int64_t lk = (int64_t)tr->L * tr->K;
	void *p;

#define GROW(field, per, type)                                                      \
	do {                                                                        \
		p = xrealloc_array((void *)tr->field, cap * (per), sizeof(type));   \
		if (!p)                                                             \
			goto out_nomem;                                             \
		tr->field = p;                                                      \
	} while (0)
	GROW(topk_experts, lk, int32_t);
	GROW(topk_weights, lk, float);
	GROW(topk_margin, tr->L, float);
	GROW(token_id, 1, int32_t);
	GROW(doc_index, 1, int32_t);
	GROW(position, 1, int32_t);
	GROW(pred_id, 1, int32_t);
	GROW(pred_prob, 1, float);
	GROW(target_logprob, 1, float);
	if (tr->router_logits)
		GROW(router_logits, (int64_t)tr->L * tr->E, float);
#undef GROW
	tr->cap_ = cap;
	return 0;
out_nomem:
	return moe_error_set(err, MOE_ENOMEM, "trace: out of memory at %lld rows", (long long)cap);
}

int moe_trace_append(struct moe_trace *tr, const struct moe_trace_row *row, struct moe_error *err)
{
	int64_t t = tr->T, lk = (int64_t)tr->L * tr->K;
	int rc;

	if (tr->st_ || tr->experts_dtype != MOE_I32 || tr->weights_dtype != MOE_F32)
		return moe_error_set(err, MOE_EINVAL, "trace: cannot append to a read-only trace");
	for (int64_t i = 0; i < lk; i++)
		if (row->experts[i] < 0 || row->experts[i] >= tr->E)
			return moe_error_set(err, MOE_EINVAL,
					     "trace: row %lld: expert id %d out of range [0, %d)",
					     (long long)t, row->experts[i], tr->E);
	if (row->token_id < 0 || row->doc_index < 0 || row->position < 0)
		return moe_error_set(err, MOE_EINVAL, "trace: row %lld: negative token, document or position",
				     (long long)t);
	if (tr->router_logits && !row->logits)
		return moe_error_set(err, MOE_EINVAL, "trace: row %lld: router logits missing",
				     (long long)t);
	if (t == tr->cap_ && (rc = grow(tr, err)) < 0)
		return rc;
	memcpy((int32_t *)tr->topk_experts + t * lk, row->experts, (size_t)lk * sizeof(int32_t));
	memcpy((float *)tr->topk_weights + t * lk, row->weights, (size_t)lk * sizeof(float));
	for (int l = 0; l < tr->L; l++)
		tr->topk_margin[t * tr->L + l] = row->margin ? row->margin[l] : NAN;
	tr->token_id[t] = row->token_id;
	tr->doc_index[t] = row->doc_index;
	tr->position[t] = row->position;
	tr->pred_id[t] = row->pred_id;
	tr->pred_prob[t] = row->pred_prob;
	tr->target_logprob[t] = row->target_logprob;
	if (tr->router_logits)
		memcpy(tr->router_logits + t * tr->L * tr->E, row->logits,
		       (size_t)tr->L * tr->E * sizeof(float));
	tr->T = t + 1;
	return 0;
}

void moe_trace_free(struct moe_trace *tr)
{
	if (!tr)
		return;
	if (tr->st_) {
		moe_st_close(tr->st_);
	} else {
		free(tr->topk_experts);
		free(tr->topk_weights);
		free(tr->topk_margin);
		free(tr->token_id);
		free(tr->doc_index);
		free(tr->position);
		free(tr->pred_id);
		free(tr->pred_prob);
		free(tr->target_logprob);
		free(tr->router_logits);
	}
	if (tr->meta)
		json_decref(tr->meta);
	if (tr->vocab)
		json_decref(tr->vocab);
	if (tr->docs)
		json_decref(tr->docs);
	free(tr);
}

void moe_trace_row_experts(const struct moe_trace *tr, int64_t t, int32_t *dst)
{
	size_t lk = (size_t)tr->L * tr->K, base = (size_t)t * lk;

	switch (tr->experts_dtype) {
	case MOE_U8: {
		const uint8_t *p = (const uint8_t *)tr->topk_experts + base;
		for (size_t i = 0; i < lk; i++)
			dst[i] = p[i];
		break;
	}
	case MOE_I16: {
		const int16_t *p = (const int16_t *)tr->topk_experts + base;
		for (size_t i = 0; i < lk; i++)
			dst[i] = p[i];
		break;
	}
	default:
		memcpy(dst, (const int32_t *)tr->topk_experts + base, lk * sizeof(int32_t));
		break;
	}
}

void moe_trace_row_weights(const struct moe_trace *tr, int64_t t, float *dst)
{
	size_t lk = (size_t)tr->L * tr->K, base = (size_t)t * lk;

	switch (tr->weights_dtype) {
	case MOE_BF16: {
		const uint16_t *p = (const uint16_t *)tr->topk_weights + base;
		for (size_t i = 0; i < lk; i++)
			dst[i] = moe_bf16_to_f32(p[i]);
		break;
	}
	case MOE_F16: {
		const uint16_t *p = (const uint16_t *)tr->topk_weights + base;
		for (size_t i = 0; i < lk; i++)
			dst[i] = moe_f16_to_f32(p[i]);
		break;
	}
	default:
		memcpy(dst, (const float *)tr->topk_weights + base, lk * sizeof(float));
		break;
	}
}

/* ---- opening ----------------------------------------------------------- */

static const struct moe_st_tensor *want(const struct moe_st_file *f, const char *name, bool required,
					int ndim, const int64_t *shape, const char *where,
					struct moe_error *err, int *rc)
{
	const struct moe_st_tensor *t = moe_st_find(f, name);

	if (!t) {
		if (required)
			*rc = moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s' missing", where, name);
		return NULL;
	}
	if (t->ndim != ndim)
		goto bad;
	for (int i = 0; i < ndim; i++)
		if (t->shape[i] != shape[i])
			goto bad;
	return t;
bad:
	*rc = moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s' has shape of rank %d, expected rank %d "
			    "(%lld, ...)", where, name, t->ndim, ndim, (long long)shape[0]);
	return NULL;
}

static int check_dtype(const struct moe_st_tensor *t, enum moe_dtype d, const char *where,
		       struct moe_error *err)
{
	if (t->dtype != d)
		return moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s' has dtype %s, expected %s",
				     where, t->name, moe_dtype_name(t->dtype), moe_dtype_name(d));
	return 0;
}

static int load_docs(struct moe_trace *tr, const char *path, struct moe_error *err)
{
	char *buf = NULL, *p, *nl;
	size_t len;
	int rc;
	long line = 0;
	json_t *arr;

	if ((rc = moe_read_file(path, &buf, &len, err)) < 0)
		return rc;
	arr = json_array();
	if (!arr) {
		free(buf);
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
	}
	for (p = buf; p < buf + len; p = nl + 1) {
		json_error_t je;
		json_t *o;

		nl = memchr(p, '\n', (size_t)(buf + len - p));
		if (!nl)
			nl = buf + len;
		line++;
		if (nl == p)
			continue;
		o = json_loadb(p, (size_t)(nl - p), 0, &je);
		if (!o || !json_is_object(o)) {
			json_decref(o);
			json_decref(arr);
			free(buf);
			return moe_error_set(err, MOE_EFORMAT, "%s:%ld: not a JSON object", path, line);
		}
		json_array_append_new(arr, o);
	}
	free(buf);
	tr->docs = arr;
	return 0;
}

struct moe_trace *moe_trace_open(const char *dir, struct moe_error *err)
{
	struct moe_trace *tr = calloc(1, sizeof *tr);
	char *path = NULL;
	const struct moe_st_tensor *te, *tw, *t;
	int rc = 0;
	int64_t T, shape[3];

	if (!tr) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	path = moe_path_join(dir, "meta.json");
	if (!path)
		goto out_nomem;
	tr->meta = moe_json_load_file(path, err);
	if (!tr->meta)
		goto out_fail;
	free(path);
	path = moe_path_join(dir, "routes.safetensors");
	if (!path)
		goto out_nomem;
	tr->st_ = moe_st_open(path, err);
	if (!tr->st_)
		goto out_fail;
	te = moe_st_find(tr->st_, "topk_experts");
	if (!te || te->ndim != 3) {
		moe_error_set(err, MOE_EFORMAT, "%s: tensor 'topk_experts' missing or not of rank 3",
			      path);
		goto out_fail;
	}
	if (te->dtype != MOE_U8 && te->dtype != MOE_I16 && te->dtype != MOE_I32) {
		moe_error_set(err, MOE_EFORMAT, "%s: 'topk_experts' has dtype %s (U8, I16 or I32 expected)",
			      path, moe_dtype_name(te->dtype));
		goto out_fail;
	}
	T = te->shape[0];
	tr->T = T;
	if (te->shape[1] < 1 || te->shape[1] > 4096 || te->shape[2] < 1 ||
	    te->shape[2] > MOE_ROUTES_MAX_K) {
		moe_error_set(err, MOE_EFORMAT, "%s: 'topk_experts' has a bad shape", path);
		goto out_fail;
	}
	tr->L = (int)te->shape[1];
	tr->K = (int)te->shape[2];
	tr->experts_dtype = te->dtype;
	tr->topk_experts = (void *)te->data;
	{
		int64_t e;
		const json_t *counts = json_object_get(tr->meta, "counts");

		if (moe_json_get_int(counts, "n_experts", true, &e, "meta.json counts", err) < 0)
			goto out_fail;
		if (e < 2 || e > 65536 || e < tr->K) {
			moe_error_set(err, MOE_EFORMAT, "meta.json: counts.n_experts %lld out of range",
				      (long long)e);
			goto out_fail;
		}
		tr->E = (int)e;
	}
	shape[0] = T;
	shape[1] = tr->L;
	shape[2] = tr->K;
	tw = want(tr->st_, "topk_weights", true, 3, shape, path, err, &rc);
	if (!tw)
		goto out_fail;
	if (tw->dtype != MOE_F32 && tw->dtype != MOE_BF16 && tw->dtype != MOE_F16) {
		moe_error_set(err, MOE_EFORMAT, "%s: 'topk_weights' has dtype %s (F32, BF16 or F16 expected)",
			      path, moe_dtype_name(tw->dtype));
		goto out_fail;
	}
	tr->weights_dtype = tw->dtype;
	tr->topk_weights = (void *)tw->data;
	t = want(tr->st_, "topk_margin", false, 2, shape, path, err, &rc);
	if (rc < 0 || (t && check_dtype(t, MOE_F32, path, err) < 0))
		goto out_fail;
	tr->topk_margin = t ? (float *)t->data : NULL;
	{
		static const char *i32[] = {"token_id", "doc_index", "position", "pred_id"};
		static const char *f32[] = {"pred_prob", "target_logprob"};
		int32_t **ip[] = {&tr->token_id, &tr->doc_index, &tr->position, &tr->pred_id};
		float **fp[] = {&tr->pred_prob, &tr->target_logprob};

		for (int i = 0; i < 4; i++) {
			t = want(tr->st_, i32[i], i < 3, 1, shape, path, err, &rc);
			if (rc < 0 || (t && check_dtype(t, MOE_I32, path, err) < 0))
				goto out_fail;
			*ip[i] = t ? (int32_t *)t->data : NULL;
		}
		for (int i = 0; i < 2; i++) {
			t = want(tr->st_, f32[i], false, 1, shape, path, err, &rc);
			if (rc < 0 || (t && check_dtype(t, MOE_F32, path, err) < 0))
				goto out_fail;
			*fp[i] = t ? (float *)t->data : NULL;
		}
	}
	shape[2] = tr->E;
	t = want(tr->st_, "router_logits", false, 3, shape, path, err, &rc);
	if (rc < 0 || (t && check_dtype(t, MOE_F32, path, err) < 0))
		goto out_fail;
	tr->router_logits = t ? (float *)t->data : NULL;
	free(path);
	path = moe_path_join(dir, "vocab.json");
	if (!path)
		goto out_nomem;
	if (access(path, F_OK) == 0) {
		tr->vocab = moe_json_load_file(path, err);
		if (!tr->vocab)
			goto out_fail;
		if (!json_is_object(tr->vocab)) {
			moe_error_set(err, MOE_EFORMAT, "%s: not a JSON object", path);
			goto out_fail;
		}
	}
	free(path);
	path = moe_path_join(dir, "docs.jsonl");
	if (!path)
		goto out_nomem;
	if (access(path, F_OK) == 0 && load_docs(tr, path, err) < 0)
		goto out_fail;
	free(path);
	return tr;
out_nomem:
	moe_error_set(err, MOE_ENOMEM, "out of memory");
out_fail:
	free(path);
	moe_trace_free(tr);
	return NULL;
}

/* ---- invariants -------------------------------------------------------- */

int moe_trace_check(const struct moe_trace *tr, struct moe_error *err)
{
	int L = tr->L, K = tr->K;
	int32_t *ex = malloc((size_t)L * K * sizeof *ex);
	float *w = malloc((size_t)L * K * sizeof *w);
	int rc = 0;

	if (!ex || !w) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (int64_t t = 0; t < tr->T; t++) {
		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_weights(tr, t, w);
		for (int l = 0; l < L; l++) {
			const int32_t *e = ex + (size_t)l * K;
			const float *wl = w + (size_t)l * K;

			for (int k = 0; k < K; k++) {
				if (e[k] < 0 || e[k] >= tr->E) {
					rc = moe_error_set(err, MOE_EFORMAT,
							   "row %lld layer %d rank %d: expert %d out of range [0, %d)",
							   (long long)t, l, k + 1, e[k], tr->E);
					goto out;
				}
				for (int j = 0; j < k; j++)
					if (e[j] == e[k]) {
						rc = moe_error_set(err, MOE_EFORMAT,
								   "row %lld layer %d: expert %d appears twice",
								   (long long)t, l, e[k]);
						goto out;
					}
				if (!isfinite(wl[k]) || wl[k] < 0) {
					rc = moe_error_set(err, MOE_EFORMAT,
							   "row %lld layer %d rank %d: bad weight %g",
							   (long long)t, l, k + 1, (double)wl[k]);
					goto out;
				}
				if (k > 0 && wl[k] > wl[k - 1]) {
					rc = moe_error_set(err, MOE_EFORMAT,
							   "row %lld layer %d: weights not descending at rank %d",
							   (long long)t, l, k + 1);
					goto out;
				}
			}
		}
		if (tr->token_id[t] < 0) {
			rc = moe_error_set(err, MOE_EFORMAT, "row %lld: negative token id", (long long)t);
			goto out;
		}
		if (t == 0 || tr->doc_index[t] != tr->doc_index[t - 1]) {
			if (t > 0 && tr->doc_index[t] < tr->doc_index[t - 1]) {
				rc = moe_error_set(err, MOE_EFORMAT, "row %lld: document index decreases",
						   (long long)t);
				goto out;
			}
			if (tr->position[t] != 0) {
				rc = moe_error_set(err, MOE_EFORMAT,
						   "row %lld: document %d starts at position %d, not 0",
						   (long long)t, tr->doc_index[t], tr->position[t]);
				goto out;
			}
		} else if (tr->position[t] != tr->position[t - 1] + 1) {
			rc = moe_error_set(err, MOE_EFORMAT, "row %lld: position %d does not follow %d",
					   (long long)t, tr->position[t], tr->position[t - 1]);
			goto out;
		}
	}
out:
	free(ex);
	free(w);
	return rc;
}
