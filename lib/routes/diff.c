/*
 * moe-routes diff: compare two traces of the same tokens layer by layer.
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"

static void put_list(FILE *fp, const int32_t *e, int K)
{
	putc('"', fp);
	for (int k = 0; k < K; k++)
		fprintf(fp, k ? " %d" : "%d", e[k]);
	putc('"', fp);
}

int moe_trace_diff(const struct moe_trace *a, const struct moe_trace *b, double tol,
		   struct moe_trace_diff_layer *layers, FILE *fp, struct moe_error *err)
{
	int L = a->L, K = a->K;
	int32_t *ea = NULL, *eb = NULL;
	float *wa = NULL, *wb = NULL;
	double *wsum = NULL;
	int64_t *wn = NULL;
	int rc = 0;

	if (a->T != b->T)
		return moe_error_set(err, MOE_EINVAL, "traces differ in length: %lld vs %lld tokens",
				     (long long)a->T, (long long)b->T);
	if (a->L != b->L || a->K != b->K)
		return moe_error_set(err, MOE_EINVAL, "traces differ in shape: L=%d K=%d vs L=%d K=%d",
				     a->L, a->K, b->L, b->K);
	for (int64_t t = 0; t < a->T; t++)
		if (a->token_id[t] != b->token_id[t])
			return moe_error_set(err, MOE_EINVAL,
					     "traces differ at row %lld: token %d vs %d (not the same tokens)",
					     (long long)t, a->token_id[t], b->token_id[t]);
	ea = malloc((size_t)L * K * sizeof *ea);
	eb = malloc((size_t)L * K * sizeof *eb);
	wa = malloc((size_t)L * K * sizeof *wa);
	wb = malloc((size_t)L * K * sizeof *wb);
	wsum = calloc((size_t)L, sizeof *wsum);
	wn = calloc((size_t)L, sizeof *wn);
	if (!ea || !eb || !wa || !wb || !wsum || !wn) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	memset(layers, 0, (size_t)L * sizeof *layers);
	for (int l = 0; l < L; l++)
		layers[l].max_margin = NAN;
	if (fp)
		fputs("sample_ix,sequence_ix,token_ix,layer_ix,experts_a,experts_b,margin_a,margin_b\n", fp);
	for (int64_t t = 0; t < a->T; t++) {
		moe_trace_row_experts(a, t, ea);
		moe_trace_row_experts(b, t, eb);
		moe_trace_row_weights(a, t, wa);
		moe_trace_row_weights(b, t, wb);
		for (int l = 0; l < L; l++) {
			struct moe_trace_diff_layer *d = &layers[l];
			const int32_t *x = ea + l * K, *y = eb + l * K;
			int common = 0, same_order = 1;

			d->n++;
			for (int i = 0; i < K; i++) {
				same_order &= x[i] == y[i];
				for (int j = 0; j < K; j++)
					if (x[i] == y[j]) {
						double dw = fabs((double)wa[l * K + i] - wb[l * K + j]);

						common++;
						wsum[l] += dw;
						wn[l]++;
						if (dw > d->max_weight_diff)
							d->max_weight_diff = dw;
					}
			}
			d->topk_overlap += (double)common / K;
			d->top1_agree += x[0] == y[0];
			d->set_agree += common == K;
			d->order_agree += same_order;
			if (common < K) {
				double ma = a->topk_margin ? a->topk_margin[t * L + l] : NAN;
				double mb = b->topk_margin ? b->topk_margin[t * L + l] : NAN;
				double m = isnan(ma) ? mb : isnan(mb) ? ma : fmin(ma, mb);

				d->n_disagree++;
				if (!isnan(m)) {
					if (m <= tol)
						d->n_near_tie++;
					if (isnan(d->max_margin) || m > d->max_margin)
						d->max_margin = m;
				}
				if (fp) {
					fprintf(fp, "%lld,%d,%d,%d,", (long long)t, a->doc_index[t],
						a->position[t], l);
					put_list(fp, x, K);
					putc(',', fp);
					put_list(fp, y, K);
					putc(',', fp);
					if (!isnan(ma))
						fprintf(fp, "%.6g", ma);
					putc(',', fp);
					if (!isnan(mb))
						fprintf(fp, "%.6g", mb);
					putc('\n', fp);
				}
			}
		}
	}
	for (int l = 0; l < L; l++) {
		struct moe_trace_diff_layer *d = &layers[l];
		double n = d->n ? (double)d->n : NAN;

		d->topk_overlap /= n;
		d->top1_agree /= n;
		d->set_agree /= n;
		d->order_agree /= n;
		d->mean_weight_diff = wn[l] ? wsum[l] / (double)wn[l] : NAN;
	}
out:
	free(ea);
	free(eb);
	free(wa);
	free(wb);
	free(wsum);
	free(wn);
	return rc;
}
