/*
 * moe-routes stats: one pass over a trace with integer counters, then the
 * derived tables.  Definitions are in moe-routes(5).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"
#include "routes/internal.h"

#ifdef _OPENMP
#include <omp.h>
#endif

/* ---- path windows: radix sort of packed routes ---------------------- */

/* Sort n keys of `bits` significant bits (LSD radix, 8-bit digits); tmp has
 * room for n keys.  Returns the array holding the result (keys or tmp). */
static uint64_t *radix_sort(uint64_t *keys, uint64_t *tmp, size_t n, int bits)
{
	size_t cnt[256];

	for (int shift = 0; shift < bits; shift += 8) {
		uint64_t *t;

		memset(cnt, 0, sizeof cnt);
		for (size_t i = 0; i < n; i++)
			cnt[(keys[i] >> shift) & 255]++;
		for (size_t i = 0, sum = 0; i < 256; i++) {
			size_t c = cnt[i];
			cnt[i] = sum;
			sum += c;
		}
		for (size_t i = 0; i < n; i++)
			tmp[cnt[(keys[i] >> shift) & 255]++] = keys[i];
		t = keys;
		keys = tmp;
		tmp = t;
	}
	return keys;
}

static int cmp_path(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;

	if (x[1] != y[1])
		return x[1] < y[1] ? 1 : -1;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

/* Count the distinct routes of every window from the sampled top-1 routes
 * (path_n, L). */
static int count_paths(struct moe_route_stats *s, const uint16_t *routes)
{
	size_t n = (size_t)s->path_n;
	uint64_t *keys = malloc((n ? n : 1) * sizeof *keys), *tmp = malloc((n ? n : 1) * sizeof *tmp);
	uint64_t *pairs = malloc((n ? n : 1) * 2 * sizeof *pairs);
	int rc = 0;

	if (!keys || !tmp || !pairs) {
		rc = -1;
		goto out;
	}
	for (int w = 0; w < s->n_windows; w++) {
		struct pwin *p = &s->pw[w];
		uint64_t *sorted;
		size_t nd = 0;
		double tot = (double)n, cum = 0;

		for (size_t i = 0; i < n; i++) {
			uint64_t key = 0;

			for (int j = 0; j < s->S; j++)
				key = key << s->bpe | routes[i * s->L + w + j];
			keys[i] = key;
		}
		sorted = radix_sort(keys, tmp, n, s->S * s->bpe);
		for (size_t i = 0; i < n; i++) {
			if (nd && pairs[2 * (nd - 1)] == sorted[i]) {
				pairs[2 * (nd - 1) + 1]++;
			} else {
				pairs[2 * nd] = sorted[i];
				pairs[2 * nd + 1] = 1;
				nd++;
			}
		}
		qsort(pairs, nd, 2 * sizeof *pairs, cmp_path);
		p->n_distinct = nd;
		p->entropy = 0;
		for (size_t i = 0; i < nd; i++) {
			double q = (double)pairs[2 * i + 1] / tot;

			p->entropy -= q * log2(q);
			cum += q;
			if (i == 0)
				p->top1 = cum;
			if (i < 10)
				p->top10 = cum;
			if (i < 100)
				p->top100 = cum;
			if (!p->cover50 && cum >= 0.5 - 1e-12)
				p->cover50 = i + 1;
			if (!p->cover80 && cum >= 0.8 - 1e-12)
				p->cover80 = i + 1;
			if (!p->cover95 && cum >= 0.95 - 1e-12)
				p->cover95 = i + 1;
		}
		p->n_top = nd < (size_t)s->top_paths ? nd : (size_t)s->top_paths;
		p->top = malloc((p->n_top ? p->n_top : 1) * 2 * sizeof *p->top);
		if (!p->top) {
			rc = -1;
			goto out;
		}
		memcpy(p->top, pairs, p->n_top * 2 * sizeof *pairs);
	}
out:
	free(keys);
	free(tmp);
	free(pairs);
	return rc;
}

/* ---- token tables: rows grouped by token id (counting sort) --------- */

static int token_tables(struct moe_route_stats *s, const struct moe_trace *tr)
{
	int L = s->L, E = s->E, K = s->K, N = s->top_tokens;
	size_t V = (size_t)s->V;
	int64_t *off = calloc(V + 1, sizeof *off);
	int64_t *perm = malloc((size_t)(tr->T ? tr->T : 1) * sizeof *perm);
	uint32_t *h = calloc((size_t)L * E, sizeof *h);
	int32_t *ex = malloc((size_t)L * K * sizeof *ex);
	int rc = 0;

	s->tokn = calloc(V + 1, sizeof *s->tokn);
	s->et_ids = malloc((size_t)L * E * N * sizeof *s->et_ids);
	s->et_cnt = malloc((size_t)L * E * N * sizeof *s->et_cnt);
	s->et_n = calloc((size_t)L * E, sizeof *s->et_n);
	s->ts_top = malloc((V ? V : 1) * L * sizeof *s->ts_top);
	s->ts_cnt = calloc((V ? V : 1) * L, sizeof *s->ts_cnt);
	s->ts_ent = calloc((V ? V : 1) * L, sizeof *s->ts_ent);
	if (!off || !perm || !h || !ex || !s->tokn || !s->et_ids || !s->et_cnt || !s->et_n ||
	    !s->ts_top || !s->ts_cnt || !s->ts_ent) {
		rc = -1;
		goto out;
	}
	for (int64_t t = 0; t < tr->T; t++)
		s->tokn[tr->token_id[t]]++;
	for (size_t x = 0; x < V; x++)
		off[x + 1] = off[x] + (int64_t)s->tokn[x];
	for (int64_t t = 0; t < tr->T; t++)
		perm[off[tr->token_id[t]]++] = t;
	for (size_t x = V; x > 0; x--)
		off[x] = off[x - 1];
	off[0] = 0;
	for (size_t x = 0; x < V; x++) {
		uint64_t nx = s->tokn[x];

		for (int l = 0; l < L; l++)
			s->ts_top[x * L + l] = -1;
		if (!nx)
			continue;
		for (int64_t i = off[x]; i < off[x + 1]; i++) {
			moe_trace_row_experts(tr, perm[i], ex);
			for (int l = 0; l < L; l++)
				h[(size_t)l * E + ex[l * K]]++;
		}
		for (int l = 0; l < L; l++) {
			uint32_t *hl = h + (size_t)l * E;
			int best = 0;
			double ent = 0;

			for (int e = 0; e < E; e++) {
				uint32_t c = hl[e];

				if (!c)
					continue;
				if (c > hl[best])
					best = e;
				ent -= (c / (double)nx) * log2(c / (double)nx);
				/* the expert's top-N list (ids arrive in increasing order,
				 * so ties keep the lower id first) */
				if (c >= (uint32_t)s->min_count) {
					size_t b = ((size_t)l * E + e) * N;
					int n = s->et_n[(size_t)l * E + e], i;

					if (n < N || c > s->et_cnt[b + N - 1]) {
						i = n < N ? n++ : N - 1;
						while (i > 0 && s->et_cnt[b + i - 1] < c) {
							s->et_cnt[b + i] = s->et_cnt[b + i - 1];
							s->et_ids[b + i] = s->et_ids[b + i - 1];
							i--;
						}
						s->et_cnt[b + i] = c;
						s->et_ids[b + i] = (int32_t)x;
						s->et_n[(size_t)l * E + e] = n;
					}
				}
			}
			if (nx >= (uint64_t)s->min_count) {
				s->ts_top[x * L + l] = best;
				s->ts_cnt[x * L + l] = hl[best];
				s->ts_ent[x * L + l] = (float)ent;
			}
			memset(hl, 0, (size_t)E * sizeof *hl);
		}
	}
out:
	free(off);
	free(perm);
	free(h);
	free(ex);
	return rc;
}

/* ---- helpers ----------------------------------------------------------- */

double moe_routes_entropy_u64(const uint64_t *c, int n)
{
	double tot = 0, h = 0;

	for (int i = 0; i < n; i++)
		tot += (double)c[i];
	if (tot <= 0)
		return NAN;
	for (int i = 0; i < n; i++)
		if (c[i]) {
			double p = (double)c[i] / tot;
			h -= p * log2(p);
		}
	return h;
}

double moe_routes_entropy_f64(const double *c, int n)
{
	double tot = 0, h = 0;

	for (int i = 0; i < n; i++)
		tot += c[i];
	if (tot <= 0)
		return NAN;
	for (int i = 0; i < n; i++)
		if (c[i] > 0) {
			double p = c[i] / tot;
			h -= p * log2(p);
		}
	return h;
}

/* Base-2 Jensen-Shannon distance between two count vectors (normalised). */
double moe_routes_js_distance(const uint64_t *a, const uint64_t *b, int n)
{
	double ta = 0, tb = 0, js = 0;

	for (int i = 0; i < n; i++) {
		ta += (double)a[i];
		tb += (double)b[i];
	}
	if (ta <= 0 || tb <= 0)
		return NAN;
	for (int i = 0; i < n; i++) {
		double p = (double)a[i] / ta, q = (double)b[i] / tb, m = 0.5 * (p + q);

		if (p > 0)
			js += 0.5 * p * log2(p / m);
		if (q > 0)
			js += 0.5 * q * log2(q / m);
	}
	return sqrt(js > 0 ? js : 0);
}

static int bits_for(int E)
{
	int b = 1;

	while ((1 << b) < E)
		b++;
	return b;
}

static const char *doc_label_string(const json_t *doc, const char *field, char *buf, size_t cap)
{
	const json_t *v = doc ? json_object_get(doc, field) : NULL;

	if (!v || json_is_null(v))
		return "";
	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_integer(v)) {
		snprintf(buf, cap, "%lld", (long long)json_integer_value(v));
		return buf;
	}
	if (json_is_real(v)) {
		snprintf(buf, cap, "%.17g", json_real_value(v));
		return buf;
	}
	if (json_is_true(v))
		return "true";
	if (json_is_false(v))
		return "false";
	return "";
}

static int setup_labels(struct moe_route_stats *s, const struct moe_trace *tr, const char *field,
			struct moe_error *err)
{
	size_t nd;
	int32_t max_doc = -1;

	if (!tr->docs)
		return moe_error_set(err, MOE_ENOTFOUND,
				     "--label %s: the trace has no docs.jsonl (document fields)", field);
	for (int64_t t = 0; t < tr->T; t++) {
		if (tr->doc_index[t] < 0)
			return moe_error_set(err, MOE_EFORMAT, "row %lld: negative document index",
					     (long long)t);
		if (tr->doc_index[t] > max_doc)
			max_doc = tr->doc_index[t];
	}
	nd = json_array_size(tr->docs);
	if ((int64_t)max_doc >= (int64_t)nd)
		return moe_error_set(err, MOE_EFORMAT, "docs.jsonl has %zu documents, trace refers to %d",
				     nd, max_doc + 1);
	s->doc_label = malloc((nd ? nd : 1) * sizeof *s->doc_label);
	if (!s->doc_label)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	for (size_t d = 0; d < nd; d++) {
		char buf[64];
		const char *lab = doc_label_string(json_array_get(tr->docs, d), field, buf, sizeof buf);
		int i;

		for (i = 0; i < s->n_labels; i++)
			if (!strcmp(s->labels[i], lab))
				break;
		if (i == s->n_labels) {
			char **nl;

			if (s->n_labels >= 10000)
				return moe_error_set(err, MOE_ERANGE,
						     "--label %s: more than 10000 distinct values", field);
			nl = realloc(s->labels, (size_t)(s->n_labels + 1) * sizeof *nl);
			if (!nl)
				return moe_error_set(err, MOE_ENOMEM, "out of memory");
			s->labels = nl;
			s->labels[i] = strdup(lab);
			if (!s->labels[i])
				return moe_error_set(err, MOE_ENOMEM, "out of memory");
			s->n_labels++;
		}
		s->doc_label[d] = i;
	}
	return 0;
}

void moe_route_stats_free(struct moe_route_stats *s)
{
	if (!s)
		return;
	free(s->top1);
	free(s->topk);
	free(s->w1);
	free(s->wk);
	free(s->prob);
	free(s->trans);
	free(s->coact);
	free(s->ec_same);
	free(s->ec_any);
	free(s->ec1_num);
	free(s->ec1_den);
	free(s->ecall_num);
	free(s->ecall_den);
	free(s->margin_sum);
	free(s->margin_n);
	free(s->top1w_sum);
	free(s->mass_sum);
	free(s->sum);
	if (s->pw)
		for (int i = 0; i < s->n_windows; i++)
			free(s->pw[i].top);
	free(s->pw);
	free(s->tokn);
	free(s->et_ids);
	free(s->et_cnt);
	free(s->et_n);
	free(s->ts_top);
	free(s->ts_cnt);
	free(s->ts_ent);
	for (int i = 0; i < s->n_labels; i++)
		free(s->labels[i]);
	free(s->labels);
	free(s->doc_label);
	free(s->lab_top1);
	free(s->lab_topk);
	free(s->lab_n);
	free(s->label_field);
	free(s);
}

/* ---- the pass ---------------------------------------------------------- */

/* The counters of the pass, in s (the result) or in a per-thread part. */
static int alloc_counters(struct moe_route_stats *c, int L, int K, int E, int S, bool prob,
			  int n_labels)
{
	size_t LE = (size_t)L * E;

	(void)K;
	c->top1 = calloc(LE, sizeof *c->top1);
	c->topk = calloc(LE, sizeof *c->topk);
	c->w1 = calloc(LE, sizeof *c->w1);
	c->wk = calloc(LE, sizeof *c->wk);
	c->trans = calloc((size_t)(L > 1 ? L - 1 : 1) * E * E, sizeof *c->trans);
	c->coact = calloc(LE * E, sizeof *c->coact);
	c->ec_same = calloc((size_t)L, sizeof(uint64_t));
	c->ec_any = calloc((size_t)L, sizeof(uint64_t));
	c->ec1_num = calloc((size_t)S + 1, sizeof(uint64_t));
	c->ec1_den = calloc((size_t)S + 1, sizeof(uint64_t));
	c->ecall_num = calloc((size_t)S + 1, sizeof(uint64_t));
	c->ecall_den = calloc((size_t)S + 1, sizeof(uint64_t));
	c->margin_sum = calloc((size_t)L, sizeof(double));
	c->margin_n = calloc((size_t)L, sizeof(uint64_t));
	c->top1w_sum = calloc((size_t)L, sizeof(double));
	c->mass_sum = calloc((size_t)L, sizeof(double));
	c->prob = prob ? calloc(LE, sizeof *c->prob) : NULL;
	if (n_labels) {
		c->lab_top1 = calloc((size_t)n_labels * LE, sizeof(uint64_t));
		c->lab_topk = calloc((size_t)n_labels * LE, sizeof(uint64_t));
		c->lab_n = calloc((size_t)n_labels, sizeof(uint64_t));
	}
	if (!c->top1 || !c->topk || !c->w1 || !c->wk || !c->trans || !c->coact || !c->ec_same ||
	    !c->ec_any || !c->ec1_num || !c->ec1_den || !c->ecall_num || !c->ecall_den ||
	    !c->margin_sum || !c->margin_n || !c->top1w_sum || !c->mass_sum || (prob && !c->prob) ||
	    (n_labels && (!c->lab_top1 || !c->lab_topk || !c->lab_n)))
		return -1;
	return 0;
}

static void add_u64(uint64_t *d, const uint64_t *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] += s[i];
}

static void add_f64(double *d, const double *s, size_t n)
{
	for (size_t i = 0; i < n; i++)
		d[i] += s[i];
}

static void merge_counters(struct moe_route_stats *d, const struct moe_route_stats *p, int n_labels)
{
	int L = d->L, E = d->E, S = d->S;
	size_t LE = (size_t)L * E;

	add_u64(d->top1, p->top1, LE);
	add_u64(d->topk, p->topk, LE);
	add_f64(d->w1, p->w1, LE);
	add_f64(d->wk, p->wk, LE);
	add_u64(d->trans, p->trans, (size_t)(L > 1 ? L - 1 : 1) * E * E);
	add_u64(d->coact, p->coact, LE * E);
	add_u64(d->ec_same, p->ec_same, (size_t)L);
	add_u64(d->ec_any, p->ec_any, (size_t)L);
	add_u64(d->ec1_num, p->ec1_num, (size_t)S + 1);
	add_u64(d->ecall_num, p->ecall_num, (size_t)S + 1);
	add_f64(d->margin_sum, p->margin_sum, (size_t)L);
	add_u64(d->margin_n, p->margin_n, (size_t)L);
	add_f64(d->top1w_sum, p->top1w_sum, (size_t)L);
	add_f64(d->mass_sum, p->mass_sum, (size_t)L);
	if (d->prob)
		add_f64(d->prob, p->prob, LE);
	if (n_labels) {
		add_u64(d->lab_top1, p->lab_top1, (size_t)n_labels * LE);
		add_u64(d->lab_topk, p->lab_topk, (size_t)n_labels * LE);
		add_u64(d->lab_n, p->lab_n, (size_t)n_labels);
	}
}

/* Rows [t0, t1) into the counters of c; cfg holds the settings (S, labels,
 * path stride); sampled top-1 routes go to routes[t / stride]. */
static int pass(struct moe_route_stats *c, const struct moe_route_stats *cfg,
		const struct moe_trace *tr, int64_t t0, int64_t t1, uint16_t *routes, int64_t *bad_row)
{
	int L = cfg->L, K = cfg->K, E = cfg->E, S = cfg->S, W = (E + 63) / 64;
	int64_t stride = cfg->path_stride;
	int32_t *ex = malloc((size_t)L * K * sizeof *ex);
	float *w = malloc((size_t)L * K * sizeof *w);
	uint64_t *bits = calloc((size_t)L * W, sizeof *bits);
	int *run = malloc((size_t)L * sizeof *run);
	double *pr = malloc((size_t)E * sizeof *pr);
	/* transitions and co-activations are random increments over (L, E, E):
	 * 16-bit counters keep them in cache; each cell grows by at most one per
	 * token, so flushing every 65535 tokens cannot overflow */
	size_t ntr = (size_t)(L > 1 ? L - 1 : 1) * E * E, nco = (size_t)L * E * E;
	uint16_t *tr16 = calloc(ntr, sizeof *tr16), *co16 = calloc(nco, sizeof *co16);
	int rc = 0;

	if (!ex || !w || !bits || !run || !pr || !tr16 || !co16) {
		rc = -1;
		goto out;
	}
	for (int64_t t = t0; t < t1; t++) {
		int lab = cfg->doc_label ? cfg->doc_label[tr->doc_index[t]] : -1;

		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_weights(tr, t, w);
		for (int i = 0; i < L * K; i++)
			if ((uint32_t)ex[i] >= (uint32_t)E) {
				rc = -2; /* a hostile or corrupt trace: never index with it */
				*bad_row = t;
				goto out;
			}
		for (int l = 0; l < L; l++) {
			const int32_t *el = ex + l * K;
			const float *wl = w + l * K;
			size_t base = (size_t)l * E;
			double mass = 0;

			c->top1[base + el[0]]++;
			c->w1[base + el[0]] += wl[0];
			c->top1w_sum[l] += wl[0];
			for (int k = 0; k < K; k++) {
				c->topk[base + el[k]]++;
				c->wk[base + el[k]] += wl[k];
				mass += wl[k];
				bits[(size_t)l * W + (el[k] >> 6)] |= 1ull << (el[k] & 63);
				/* unordered pairs once: (min, max) */
				for (int j = k + 1; j < K; j++) {
					int a = el[k] < el[j] ? el[k] : el[j], b = el[k] ^ el[j] ^ a;
					co16[(base + a) * E + b]++;
				}
			}
			c->mass_sum[l] += mass;
			if (tr->topk_margin) {
				float m = tr->topk_margin[t * L + l];

				if (!isnan(m)) {
					c->margin_sum[l] += m;
					c->margin_n[l]++;
				}
			}
			if (c->prob) {
				const float *lg = tr->router_logits + ((size_t)t * L + l) * E;
				double mx = lg[0], z = 0;

				for (int e = 1; e < E; e++)
					if (lg[e] > mx)
						mx = lg[e];
				for (int e = 0; e < E; e++)
					z += pr[e] = exp(lg[e] - mx);
				for (int e = 0; e < E; e++)
					c->prob[base + e] += pr[e] / z;
			}
			if (lab >= 0) {
				size_t lb = ((size_t)lab * L + l) * E;

				c->lab_top1[lb + el[0]]++;
				for (int k = 0; k < K; k++)
					c->lab_topk[lb + el[k]]++;
			}
		}
		if (lab >= 0)
			c->lab_n[lab]++;
		/* continuity: next layer, and s-step runs of the same top-1 */
		run[L - 1] = 0;
		for (int l = L - 2; l >= 0; l--) {
			int e1 = ex[l * K], e2 = ex[(l + 1) * K];
			const uint64_t *nb = bits + (size_t)(l + 1) * W;
			bool any = false;

			tr16[((size_t)l * E + e1) * E + e2]++;
			run[l] = e1 == e2 ? run[l + 1] + 1 : 0;
			c->ec_same[l] += e1 == e2;
			for (int k = 0; k < K && !any; k++)
				any = nb[ex[l * K + k] >> 6] >> (ex[l * K + k] & 63) & 1;
			c->ec_any[l] += any;
		}
		for (int l = 0; l < L - 1; l++) {
			for (int st = 1; st <= S && l + st < L; st++)
				c->ec1_num[st] += run[l] >= st;
			/* every top-k usage event (l, e): does e stay in the top-k? */
			for (int k = 0; k < K; k++) {
				int e = ex[l * K + k], alive = 0;

				while (alive < S && l + alive + 1 < L &&
				       (bits[(size_t)(l + alive + 1) * W + (e >> 6)] >> (e & 63) & 1))
					alive++;
				for (int st = 1; st <= alive; st++)
					c->ecall_num[st]++;
			}
		}
		for (int l = 0; l < L; l++)
			for (int k = 0; k < K; k++)
				bits[(size_t)l * W + (ex[l * K + k] >> 6)] = 0;
		if (t % stride == 0)
			for (int l = 0; l < L; l++)
				routes[(size_t)(t / stride) * L + l] = (uint16_t)ex[l * K];
		if ((t - t0) % 65535 == 65534 || t + 1 == t1) {
			for (size_t i = 0; i < ntr; i++)
				c->trans[i] += tr16[i];
			for (size_t i = 0; i < nco; i++)
				c->coact[i] += co16[i];
			memset(tr16, 0, ntr * sizeof *tr16);
			memset(co16, 0, nco * sizeof *co16);
		}
	}
out:
	free(tr16);
	free(co16);
	free(ex);
	free(w);
	free(bits);
	free(run);
	free(pr);
	return rc;
}

static void free_counters(struct moe_route_stats *c)
{
	free(c->top1);
	free(c->topk);
	free(c->w1);
	free(c->wk);
	free(c->prob);
	free(c->trans);
	free(c->coact);
	free(c->ec_same);
	free(c->ec_any);
	free(c->ec1_num);
	free(c->ec1_den);
	free(c->ecall_num);
	free(c->ecall_den);
	free(c->margin_sum);
	free(c->margin_n);
	free(c->top1w_sum);
	free(c->mass_sum);
	free(c->lab_top1);
	free(c->lab_topk);
	free(c->lab_n);
}

int moe_route_stats_compute(const struct moe_trace *tr, const struct moe_route_stats_opts *o,
			    struct moe_route_stats **out, struct moe_error *err)
{
	static const struct moe_route_stats_opts defaults = {0};
	struct moe_route_stats *s = calloc(1, sizeof *s), *parts = NULL;
	int L = tr->L, K = tr->K, E = tr->E, S, nth = 1, failed = 0;
	int64_t bad_row = -1;
	uint16_t *routes = NULL;
	int rc = 0, bpe = bits_for(E);
	int64_t stride;

	*out = NULL;
	if (!o)
		o = &defaults;
	if (!s)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	S = o->window > 0 ? o->window : 3;
	if (S > L)
		S = L;
	s->T = tr->T;
	s->L = L;
	s->K = K;
	s->E = E;
	s->S = S;
	s->bpe = bpe;
	s->top_paths = o->top_paths > 0 ? o->top_paths : 20;
	s->top_tokens = o->top_tokens > 0 ? o->top_tokens : 10;
	s->min_count = o->min_count > 0 ? o->min_count : 5;
	if (S * bpe > 64) {
		rc = moe_error_set(err, MOE_ERANGE, "--window %d too long for %d experts (at most %d layers)",
				   S, E, 64 / bpe);
		goto out;
	}
	{
		int32_t vmax = -1;

		for (int64_t t = 0; t < tr->T; t++) {
			if (tr->token_id[t] < 0) {
				rc = moe_error_set(err, MOE_EFORMAT, "row %lld: negative token id",
						   (long long)t);
				goto out;
			}
			if (tr->token_id[t] > vmax)
				vmax = tr->token_id[t];
		}
		s->V = vmax + 1;
	}
	if (o->label) {
		s->label_field = strdup(o->label);
		if (!s->label_field)
			goto out_nomem;
		if ((rc = setup_labels(s, tr, o->label, err)) < 0)
			goto out;
	}
	s->sum = calloc((size_t)L, sizeof *s->sum);
	s->n_windows = L - S + 1;
	s->pw = calloc((size_t)s->n_windows, sizeof *s->pw);
	if (!s->sum || !s->pw || alloc_counters(s, L, K, E, S, tr->router_logits != NULL, s->n_labels) < 0)
		goto out_nomem;
	s->path_sample = o->path_sample == 0 ? 1000000 : o->path_sample;
	stride = s->path_sample < 0 || s->path_sample >= tr->T ? 1
		 : (tr->T + s->path_sample - 1) / s->path_sample;
	s->path_stride = stride;
	s->path_n = (tr->T + stride - 1) / stride;
	routes = malloc((size_t)(s->path_n + 1) * L * sizeof *routes);
	if (!routes)
		goto out_nomem;
#ifdef _OPENMP
	if (tr->T >= 100000)
		nth = omp_get_max_threads();
#endif
	if (nth > 1) {
		parts = calloc((size_t)nth, sizeof *parts);
		if (!parts)
			goto out_nomem;
	}
#ifdef _OPENMP
#pragma omp parallel for num_threads(nth) schedule(static, 1) reduction(| : failed)
#endif
	for (int i = 0; i < nth; i++) {
		int64_t t0 = tr->T * i / nth, t1 = tr->T * (i + 1) / nth;
		struct moe_route_stats *c = s;

		if (i > 0) {
			c = &parts[i];
			c->L = L;
			c->K = K;
			c->E = E;
			c->S = S;
			if (alloc_counters(c, L, K, E, S, tr->router_logits != NULL, s->n_labels) < 0) {
				failed |= 1;
				continue;
			}
		}
		{
			int64_t br = -1;
			int prc = pass(c, s, tr, t0, t1, routes, &br);

			if (prc == -2) {
#ifdef _OPENMP
#pragma omp critical
#endif
				if (bad_row < 0 || br < bad_row)
					bad_row = br;
			} else if (prc < 0) {
				failed |= 1;
			}
		}
	}
	for (int i = 1; i < nth; i++) {
		if (!failed)
			merge_counters(s, &parts[i], s->n_labels);
		free_counters(&parts[i]);
	}
	if (failed)
		goto out_nomem;
	if (bad_row >= 0) {
		rc = moe_error_set(err, MOE_EFORMAT, "row %lld: expert id out of range [0, %d)",
				   (long long)bad_row, E);
		goto out;
	}
	for (int st = 1; st <= S; st++) {
		s->ec1_den[st] = st < L ? (uint64_t)tr->T * (uint64_t)(L - st) : 0;
		s->ecall_den[st] = s->ec1_den[st] * (uint64_t)K;
	}
	/* co-activation counted once per unordered pair: mirror it */
	for (int l = 0; l < L; l++)
		for (int a = 0; a < E; a++)
			for (int b = a + 1; b < E; b++)
				s->coact[((size_t)l * E + b) * E + a] = s->coact[((size_t)l * E + a) * E + b];
	if (count_paths(s, routes) < 0 || token_tables(s, tr) < 0)
		goto out_nomem;
	moe_routes_stats_finish(s);
	*out = s;
	s = NULL;
	goto out;
out_nomem:
	rc = moe_error_set(err, MOE_ENOMEM, "stats: out of memory");
out:
	moe_route_stats_free(s);
	free(parts);
	free(routes);
	return rc;
}

/* Derived per-layer summaries. */
void moe_routes_stats_finish(struct moe_route_stats *s)
{
	int L = s->L, E = s->E, K = s->K;
	double T = (double)s->T;

	for (int l = 0; l < L; l++) {
		struct moe_layer_summary *m = &s->sum[l];
		const uint64_t *c1 = s->top1 + (size_t)l * E, *ck = s->topk + (size_t)l * E;
		const double *wk = s->wk + (size_t)l * E;
		double mean = T * K / E, var = 0, lb = 0, lbw = 0;

		m->token_entropy = moe_routes_entropy_u64(c1, E);
		m->topk_entropy = moe_routes_entropy_u64(ck, E);
		m->weight_entropy = moe_routes_entropy_f64(wk, E);
		m->norm_entropy = m->topk_entropy / log2(E);
		m->token_kl = log2(E) - m->token_entropy;
		m->weight_kl = log2(E) - m->weight_entropy;
		m->n_dead = 0;
		for (int e = 0; e < E; e++) {
			double d = (double)ck[e] - mean;

			var += d * d;
			m->n_dead += ck[e] == 0;
			if (s->prob)
				lb += ((double)ck[e] / T) * (s->prob[(size_t)l * E + e] / T);
			lbw += ((double)ck[e] / T) * (wk[e] / T);
		}
		m->cv_percent = s->T > 0 ? 100.0 * sqrt(var / E) / mean : NAN;
		m->lb_loss = s->prob && s->T > 0 ? E * lb : NAN;
		m->lb_loss_weights = s->T > 0 ? E * lbw : NAN;
		m->ec = l + 1 < L && s->T > 0 ? (double)s->ec_same[l] / T : NAN;
		m->ec_any = l + 1 < L && s->T > 0 ? (double)s->ec_any[l] / T : NAN;
		m->mean_top1_weight = s->T > 0 ? s->top1w_sum[l] / T : NAN;
		m->mean_topk_mass = s->T > 0 ? s->mass_sum[l] / T : NAN;
		m->mean_margin = s->margin_n[l] ? s->margin_sum[l] / (double)s->margin_n[l] : NAN;
		m->token_spec = NAN;
		{
			uint64_t num = 0, den = 0;

			for (int x = 0; x < s->V; x++)
				if (s->ts_top[(size_t)x * L + l] >= 0) {
					num += s->ts_cnt[(size_t)x * L + l];
					den += s->tokn[x];
				}
			m->token_spec = den ? (double)num / (double)den : NAN;
		}
	}
}

const struct moe_layer_summary *moe_route_stats_layer(const struct moe_route_stats *s, int l)
{
	return l >= 0 && l < s->L ? &s->sum[l] : NULL;
}

const uint64_t *moe_route_stats_top1(const struct moe_route_stats *s)
{
	return s->top1;
}

const uint64_t *moe_route_stats_topk(const struct moe_route_stats *s)
{
	return s->topk;
}

const uint64_t *moe_route_stats_transitions(const struct moe_route_stats *s)
{
	return s->trans;
}

int moe_route_stats_expert_tokens(const struct moe_route_stats *s, int l, int e, int n,
				  int32_t *ids, uint64_t *counts)
{
	size_t b;
	int got;

	if (l < 0 || l >= s->L || e < 0 || e >= s->E || !s->et_n)
		return 0;
	b = ((size_t)l * s->E + e) * s->top_tokens;
	got = s->et_n[(size_t)l * s->E + e];
	if (got > n)
		got = n;
	for (int i = 0; i < got; i++) {
		ids[i] = s->et_ids[b + i];
		counts[i] = s->et_cnt[b + i];
	}
	return got;
}

uint64_t *moe_routes_paths_sorted(const struct moe_route_stats *s, int w, size_t *n)
{
	const struct pwin *p = &s->pw[w];
	uint64_t *v = malloc((p->n_top ? p->n_top : 1) * 2 * sizeof *v);

	if (!v)
		return NULL;
	memcpy(v, p->top, p->n_top * 2 * sizeof *v);
	*n = p->n_top;
	return v;
}

void moe_routes_path_unpack(const struct moe_route_stats *s, uint64_t key, int *route)
{
	uint64_t mask = (1ull << s->bpe) - 1;

	for (int i = s->S - 1; i >= 0; i--) {
		route[i] = (int)(key & mask);
		key >>= s->bpe;
	}
}
