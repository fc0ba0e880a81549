/*
 * moe-routes stats: one pass over a trace with integer counters, then the
 * derived tables.  Definitions are in moe-routes(5).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"
#include "routes/internal.h"

/* ---- path hash table: packed top-1 route -> count ---------------------- */

static int ptab_init(struct ptab *p, size_t cap)
{
	p->cap = cap;
	p->n = 0;
	p->keys = malloc(cap * sizeof *p->keys);
	p->counts = calloc(cap, sizeof *p->counts);
	return p->keys && p->counts ? 0 : -1;
}

static inline size_t ptab_slot(uint64_t key, size_t mask)
{
	key ^= key >> 31;
	key *= 0x9E3779B97F4A7C15ull;
	key ^= key >> 29;
	return (size_t)key & mask;
}

static int ptab_grow(struct ptab *p)
{
	struct ptab q;

	if (ptab_init(&q, p->cap * 2) < 0) {
		free(q.keys);
		free(q.counts);
		return -1;
	}
	for (size_t i = 0; i < p->cap; i++) {
		size_t j;

		if (!p->counts[i])
			continue;
		for (j = ptab_slot(p->keys[i], q.cap - 1); q.counts[j]; j = (j + 1) & (q.cap - 1))
			;
		q.keys[j] = p->keys[i];
		q.counts[j] = p->counts[i];
	}
	q.n = p->n;
	free(p->keys);
	free(p->counts);
	*p = q;
	return 0;
}

static int ptab_add(struct ptab *p, uint64_t key)
{
	size_t j, mask = p->cap - 1;

	for (j = ptab_slot(key, mask); p->counts[j]; j = (j + 1) & mask)
		if (p->keys[j] == key) {
			p->counts[j]++;
			return 0;
		}
	p->keys[j] = key;
	p->counts[j] = 1;
	if (++p->n * 2 > p->cap)
		return ptab_grow(p);
	return 0;
}

static void ptab_free(struct ptab *p)
{
	free(p->keys);
	free(p->counts);
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
	for (int64_t t = 0; t < tr->T; t++)
		if (tr->doc_index[t] > max_doc)
			max_doc = tr->doc_index[t];
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
	s->lab_top1 = calloc((size_t)s->n_labels * s->L * s->E, sizeof(uint64_t));
	s->lab_topk = calloc((size_t)s->n_labels * s->L * s->E, sizeof(uint64_t));
	s->lab_n = calloc((size_t)s->n_labels, sizeof(uint64_t));
	if (!s->lab_top1 || !s->lab_topk || !s->lab_n)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
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
	if (s->paths)
		for (int i = 0; i < s->n_windows; i++)
			ptab_free(&s->paths[i]);
	free(s->paths);
	free(s->tokexp);
	free(s->tokn);
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

int moe_route_stats_compute(const struct moe_trace *tr, const struct moe_route_stats_opts *o,
			    struct moe_route_stats **out, struct moe_error *err)
{
	static const struct moe_route_stats_opts defaults = {0};
	struct moe_route_stats *s = calloc(1, sizeof *s);
	int L = tr->L, K = tr->K, E = tr->E, S, W = (E + 63) / 64;
	size_t LE = (size_t)L * E;
	int32_t *ex = NULL;
	float *w = NULL;
	uint64_t *bits = NULL;
	int *run = NULL;
	double *pr = NULL;
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
	s->top_paths = o->top_paths > 0 ? o->top_paths : 20;
	s->top_tokens = o->top_tokens > 0 ? o->top_tokens : 10;
	s->min_count = o->min_count > 0 ? o->min_count : 5;
	if (S * bpe > 64) {
		rc = moe_error_set(err, MOE_ERANGE, "--window %d too long for %d experts (at most %d layers)",
				   S, E, 64 / bpe);
		goto out;
	}
	s->top1 = calloc(LE, sizeof *s->top1);
	s->topk = calloc(LE, sizeof *s->topk);
	s->w1 = calloc(LE, sizeof *s->w1);
	s->wk = calloc(LE, sizeof *s->wk);
	s->trans = calloc((size_t)(L > 1 ? L - 1 : 1) * E * E, sizeof *s->trans);
	s->coact = calloc(LE * E, sizeof *s->coact);
	s->ec_same = calloc((size_t)L, sizeof(uint64_t));
	s->ec_any = calloc((size_t)L, sizeof(uint64_t));
	s->ec1_num = calloc((size_t)S + 1, sizeof(uint64_t));
	s->ec1_den = calloc((size_t)S + 1, sizeof(uint64_t));
	s->ecall_num = calloc((size_t)S + 1, sizeof(uint64_t));
	s->ecall_den = calloc((size_t)S + 1, sizeof(uint64_t));
	s->margin_sum = calloc((size_t)L, sizeof(double));
	s->margin_n = calloc((size_t)L, sizeof(uint64_t));
	s->top1w_sum = calloc((size_t)L, sizeof(double));
	s->mass_sum = calloc((size_t)L, sizeof(double));
	s->sum = calloc((size_t)L, sizeof *s->sum);
	ex = malloc(LE > (size_t)L * K ? LE * sizeof *ex : (size_t)L * K * sizeof *ex);
	w = malloc((size_t)L * K * sizeof *w);
	bits = calloc((size_t)L * W, sizeof *bits);
	run = malloc((size_t)L * sizeof *run);
	if (!s->top1 || !s->topk || !s->w1 || !s->wk || !s->trans || !s->coact || !s->ec_same ||
	    !s->ec_any || !s->ec1_num || !s->ec1_den || !s->ecall_num || !s->ecall_den ||
	    !s->margin_sum || !s->margin_n || !s->top1w_sum || !s->mass_sum || !s->sum || !ex || !w ||
	    !bits || !run)
		goto out_nomem;
	if (tr->router_logits) {
		s->prob = calloc(LE, sizeof *s->prob);
		pr = malloc((size_t)E * sizeof *pr);
		if (!s->prob || !pr)
			goto out_nomem;
	}
	/* token x expert counts (V, L, E), when they fit in 1 GiB */
	{
		int32_t vmax = -1;

		for (int64_t t = 0; t < tr->T; t++)
			if (tr->token_id[t] > vmax)
				vmax = tr->token_id[t];
		s->V = vmax + 1;
		if ((double)s->V * LE * 4 <= 1024.0 * 1024 * 1024) {
			s->tokexp = calloc((size_t)s->V * LE + 1, sizeof *s->tokexp);
			s->tokn = calloc((size_t)s->V + 1, sizeof *s->tokn);
			if (!s->tokexp || !s->tokn)
				goto out_nomem;
		}
	}
	/* paths */
	s->n_windows = L - S + 1;
	s->paths = calloc((size_t)s->n_windows, sizeof *s->paths);
	if (!s->paths)
		goto out_nomem;
	for (int i = 0; i < s->n_windows; i++)
		if (ptab_init(&s->paths[i], 1024) < 0)
			goto out_nomem;
	s->path_sample = o->path_sample == 0 ? 1000000 : o->path_sample;
	stride = s->path_sample < 0 || s->path_sample >= tr->T ? 1
		 : (tr->T + s->path_sample - 1) / s->path_sample;
	s->path_stride = stride;
	if (o->label) {
		s->label_field = strdup(o->label);
		if (!s->label_field)
			goto out_nomem;
		if ((rc = setup_labels(s, tr, o->label, err)) < 0)
			goto out;
	}

	for (int64_t t = 0; t < tr->T; t++) {
		int lab = s->doc_label ? s->doc_label[tr->doc_index[t]] : -1;

		moe_trace_row_experts(tr, t, ex);
		moe_trace_row_weights(tr, t, w);
		for (int l = 0; l < L; l++) {
			const int32_t *el = ex + l * K;
			const float *wl = w + l * K;
			size_t base = (size_t)l * E;
			double mass = 0;

			s->top1[base + el[0]]++;
			s->w1[base + el[0]] += wl[0];
			s->top1w_sum[l] += wl[0];
			for (int k = 0; k < K; k++) {
				s->topk[base + el[k]]++;
				s->wk[base + el[k]] += wl[k];
				mass += wl[k];
				bits[(size_t)l * W + (el[k] >> 6)] |= 1ull << (el[k] & 63);
				for (int j = 0; j < K; j++)
					if (j != k)
						s->coact[(base + el[k]) * E + el[j]]++;
			}
			s->mass_sum[l] += mass;
			if (tr->topk_margin) {
				float m = tr->topk_margin[t * L + l];

				if (!isnan(m)) {
					s->margin_sum[l] += m;
					s->margin_n[l]++;
				}
			}
			if (pr) {
				const float *lg = tr->router_logits + ((size_t)t * L + l) * E;
				double mx = lg[0], z = 0;

				for (int e = 1; e < E; e++)
					if (lg[e] > mx)
						mx = lg[e];
				for (int e = 0; e < E; e++)
					z += pr[e] = exp(lg[e] - mx);
				for (int e = 0; e < E; e++)
					s->prob[base + e] += pr[e] / z;
			}
			if (lab >= 0) {
				size_t lb = ((size_t)lab * L + l) * E;

				s->lab_top1[lb + el[0]]++;
				for (int k = 0; k < K; k++)
					s->lab_topk[lb + el[k]]++;
			}
			if (s->tokexp)
				s->tokexp[((size_t)tr->token_id[t] * L + l) * E + el[0]]++;
		}
		if (lab >= 0)
			s->lab_n[lab]++;
		if (s->tokn)
			s->tokn[tr->token_id[t]]++;
		/* continuity: next layer, and s-step runs of the same top-1 */
		run[L - 1] = 0;
		for (int l = L - 2; l >= 0; l--) {
			int e1 = ex[l * K], e2 = ex[(l + 1) * K];
			const uint64_t *nb = bits + (size_t)(l + 1) * W;
			bool any = false;

			s->trans[((size_t)l * E + e1) * E + e2]++;
			run[l] = e1 == e2 ? run[l + 1] + 1 : 0;
			s->ec_same[l] += e1 == e2;
			for (int k = 0; k < K && !any; k++)
				any = nb[ex[l * K + k] >> 6] >> (ex[l * K + k] & 63) & 1;
			s->ec_any[l] += any;
		}
		for (int l = 0; l < L - 1; l++) {
			for (int st = 1; st <= S && l + st < L; st++) {
				s->ec1_den[st]++;
				s->ec1_num[st] += run[l] >= st;
			}
			/* every top-k usage event (l, e): does e stay in the top-k? */
			for (int k = 0; k < K; k++) {
				int e = ex[l * K + k], alive = 0;

				while (alive < S && l + alive + 1 < L &&
				       (bits[(size_t)(l + alive + 1) * W + (e >> 6)] >> (e & 63) & 1))
					alive++;
				for (int st = 1; st <= S && l + st < L; st++) {
					s->ecall_den[st]++;
					s->ecall_num[st] += alive >= st;
				}
			}
		}
		for (int l = 0; l < L; l++)
			for (int k = 0; k < K; k++)
				bits[(size_t)l * W + (ex[l * K + k] >> 6)] = 0;
		if (t % stride == 0) {
			for (int st = 0; st < s->n_windows; st++) {
				uint64_t key = 0;

				for (int i = 0; i < S; i++)
					key = key << bpe | (uint64_t)ex[(st + i) * K];
				if (ptab_add(&s->paths[st], key) < 0)
					goto out_nomem;
			}
			s->path_n++;
		}
	}
	s->bpe = bpe;
	moe_routes_stats_finish(s);
	*out = s;
	s = NULL;
	goto out;
out_nomem:
	rc = moe_error_set(err, MOE_ENOMEM, "stats: out of memory");
out:
	moe_route_stats_free(s);
	free(ex);
	free(w);
	free(bits);
	free(run);
	free(pr);
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
		if (s->tokexp) {
			uint64_t num = 0, den = 0;

			for (int x = 0; x < s->V; x++) {
				const uint32_t *h = s->tokexp + ((size_t)x * L + l) * E;
				uint32_t mx = 0;

				if (s->tokn[x] < (uint64_t)s->min_count)
					continue;
				for (int e = 0; e < E; e++)
					if (h[e] > mx)
						mx = h[e];
				num += mx;
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
	int got = 0;

	if (!s->tokexp || l < 0 || l >= s->L || e < 0 || e >= s->E)
		return 0;
	for (int x = 0; x < s->V; x++) {
		uint64_t c = s->tokexp[((size_t)x * s->L + l) * s->E + e];
		int i;

		if (c < (uint64_t)s->min_count || c == 0)
			continue;
		if (got == n && c <= counts[n - 1])
			continue;
		i = got < n ? got++ : n - 1;
		while (i > 0 && counts[i - 1] < c) {
			counts[i] = counts[i - 1];
			ids[i] = ids[i - 1];
			i--;
		}
		counts[i] = c;
		ids[i] = x;
	}
	return got;
}

/* Sorted (count desc, key asc) copy of a path table. */
static int cmp_path(const void *a, const void *b)
{
	const uint64_t *x = a, *y = b;

	if (x[1] != y[1])
		return x[1] < y[1] ? 1 : -1;
	return x[0] < y[0] ? -1 : x[0] > y[0];
}

uint64_t *moe_routes_paths_sorted(const struct moe_route_stats *s, int w, size_t *n)
{
	const struct ptab *p = &s->paths[w];
	uint64_t *v = malloc((p->n ? p->n : 1) * 2 * sizeof *v);
	size_t j = 0;

	if (!v)
		return NULL;
	for (size_t i = 0; i < p->cap; i++)
		if (p->counts[i]) {
			v[2 * j] = p->keys[i];
			v[2 * j + 1] = p->counts[i];
			j++;
		}
	qsort(v, j, 2 * sizeof *v, cmp_path);
	*n = j;
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
