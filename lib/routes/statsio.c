/*
 * Writing the statistics tables (CSV, pandas dialect: header row, ',' as the
 * separator, '"' quoting of text columns, LF, empty field for NaN) and
 * stats.json.  Column definitions: moe-routes(5).
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"
#include "routes/internal.h"

static void fnum(FILE *fp, double v)
{
	if (!isnan(v))
		fprintf(fp, "%.6g", v);
}

struct out {
	struct moe_atomic a;
	const char *dir;
	bool open;
};

static FILE *out_open(struct out *o, const char *dir, const char *name, struct moe_error *err)
{
	char *path = moe_path_join(dir, name);
	int rc;

	memset(&o->a, 0, sizeof o->a);
	o->open = false;
	if (!path) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	rc = moe_atomic_open(&o->a, path, err);
	free(path);
	if (rc < 0)
		return NULL;
	o->open = true;
	return o->a.fp;
}

static int out_commit(struct out *o, struct moe_error *err)
{
	o->open = false;
	if (ferror(o->a.fp)) {
		moe_atomic_abort(&o->a);
		return moe_error_set(err, MOE_EIO, "write error");
	}
	return moe_atomic_commit(&o->a, err);
}

static const char *tok_str(const char **tab, int64_t ntab, int64_t id)
{
	return id >= 0 && id < ntab && tab[id] ? tab[id] : "";
}

static int block_index(const struct moe_trace *tr, int l)
{
	const json_t *model = tr->meta ? json_object_get(tr->meta, "model") : NULL;
	const json_t *moe = model ? json_object_get(model, "moe_block_indices") : NULL;
	const json_t *v = moe ? json_array_get(moe, (size_t)l) : NULL;

	return v && json_is_integer(v) ? (int)json_integer_value(v) : -1;
}

int moe_route_stats_write(const struct moe_route_stats *s, const struct moe_trace *tr,
			  const char *dir, struct moe_error *err)
{
	int L = s->L, E = s->E, K = s->K;
	double T = (double)s->T;
	int64_t ntab = 0;
	const char **tab = NULL;
	struct out o = {0};
	FILE *fp;
	int rc;
	int32_t *ids = NULL;
	uint64_t *cnt = NULL;
	int *route = NULL;
	json_t *js = NULL, *jl;

	if ((rc = moe_mkdirs(dir, err)) < 0)
		return rc;
	tab = moe_routes_token_table(tr, &ntab);
	ids = malloc((size_t)s->top_tokens * sizeof *ids);
	cnt = malloc((size_t)s->top_tokens * sizeof *cnt);
	route = malloc((size_t)(s->S > 0 ? s->S : 1) * sizeof *route);
	if (!tab || !ids || !cnt || !route) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}

	/* usage.csv */
	if (!(fp = out_open(&o, dir, "usage.csv", err)))
		goto out_fail;
	fputs("layer_ix,expert,token_count,topk_count,weight_sum,weight_sum_topk,token_frac,topk_frac,"
	      "weight_frac,mean_weight_when_selected,router_prob_mean\n", fp);
	for (int l = 0; l < L; l++) {
		double wtot = 0;

		for (int e = 0; e < E; e++)
			wtot += s->wk[(size_t)l * E + e];
		for (int e = 0; e < E; e++) {
			size_t i = (size_t)l * E + e;

			fprintf(fp, "%d,%d,%llu,%llu,", l, e, (unsigned long long)s->top1[i],
				(unsigned long long)s->topk[i]);
			fnum(fp, s->w1[i]);
			putc(',', fp);
			fnum(fp, s->wk[i]);
			putc(',', fp);
			fnum(fp, T > 0 ? s->top1[i] / T : NAN);
			putc(',', fp);
			fnum(fp, T > 0 ? s->topk[i] / (T * K) : NAN);
			putc(',', fp);
			fnum(fp, wtot > 0 ? s->wk[i] / wtot : NAN);
			putc(',', fp);
			fnum(fp, s->topk[i] ? s->wk[i] / (double)s->topk[i] : NAN);
			putc(',', fp);
			fnum(fp, s->prob && T > 0 ? s->prob[i] / T : NAN);
			putc('\n', fp);
		}
	}
	if ((rc = out_commit(&o, err)) < 0)
		goto out;

	/* layers.csv */
	if (!(fp = out_open(&o, dir, "layers.csv", err)))
		goto out_fail;
	fputs("layer_ix,block_ix,n_tokens,n_experts,top_k,token_entropy,topk_entropy,weight_entropy,"
	      "norm_entropy,token_kl,weight_kl,cv_percent,n_dead_experts,lb_loss,lb_loss_weights,ec,"
	      "ec_any,mean_top1_weight,mean_topk_mass,mean_topk_margin,token_spec\n", fp);
	for (int l = 0; l < L; l++) {
		const struct moe_layer_summary *m = &s->sum[l];
		int b = block_index(tr, l);
		double v[] = {m->token_entropy, m->topk_entropy, m->weight_entropy, m->norm_entropy,
			      m->token_kl, m->weight_kl, m->cv_percent};
		double v2[] = {m->lb_loss, m->lb_loss_weights, m->ec, m->ec_any, m->mean_top1_weight,
			       m->mean_topk_mass, m->mean_margin, m->token_spec};

		fprintf(fp, "%d,", l);
		if (b >= 0)
			fprintf(fp, "%d", b);
		fprintf(fp, ",%lld,%d,%d", (long long)s->T, E, K);
		for (size_t i = 0; i < sizeof v / sizeof v[0]; i++) {
			putc(',', fp);
			fnum(fp, v[i]);
		}
		fprintf(fp, ",%d", m->n_dead);
		for (size_t i = 0; i < sizeof v2 / sizeof v2[0]; i++) {
			putc(',', fp);
			fnum(fp, v2[i]);
		}
		putc('\n', fp);
	}
	if ((rc = out_commit(&o, err)) < 0)
		goto out;

	/* ec_steps.csv */
	if (!(fp = out_open(&o, dir, "ec_steps.csv", err)))
		goto out_fail;
	fputs("steps,ec_top1,ec_all,n_top1,n_all\n", fp);
	for (int st = 1; st <= s->S; st++) {
		if (!s->ec1_den[st])
			continue;
		fprintf(fp, "%d,", st);
		fnum(fp, (double)s->ec1_num[st] / (double)s->ec1_den[st]);
		putc(',', fp);
		fnum(fp, s->ecall_den[st] ? (double)s->ecall_num[st] / (double)s->ecall_den[st] : NAN);
		fprintf(fp, ",%llu,%llu\n", (unsigned long long)s->ec1_den[st],
			(unsigned long long)s->ecall_den[st]);
	}
	if ((rc = out_commit(&o, err)) < 0)
		goto out;

	/* transitions.csv */
	if (!(fp = out_open(&o, dir, "transitions.csv", err)))
		goto out_fail;
	fputs("from_layer,to_layer,from_expert,to_expert,count,prop,prop_from\n", fp);
	for (int l = 0; l + 1 < L; l++)
		for (int a = 0; a < E; a++)
			for (int b = 0; b < E; b++) {
				uint64_t c = s->trans[((size_t)l * E + a) * E + b];

				if (!c)
					continue;
				fprintf(fp, "%d,%d,%d,%d,%llu,%.6g,%.6g\n", l, l + 1, a, b,
					(unsigned long long)c, c / T,
					(double)c / (double)s->top1[(size_t)l * E + a]);
			}
	if ((rc = out_commit(&o, err)) < 0)
		goto out;

	/* coactivation.csv */
	if (!(fp = out_open(&o, dir, "coactivation.csv", err)))
		goto out_fail;
	fputs("layer_ix,expert_i,expert_j,n_ij,n_i,coact\n", fp);
	for (int l = 0; l < L; l++)
		for (int a = 0; a < E; a++)
			for (int b = 0; b < E; b++) {
				uint64_t c = s->coact[((size_t)l * E + a) * E + b];
				uint64_t ni = s->topk[(size_t)l * E + a];

				if (!c)
					continue;
				fprintf(fp, "%d,%d,%d,%llu,%llu,%.6g\n", l, a, b, (unsigned long long)c,
					(unsigned long long)ni, (double)c / (double)ni);
			}
	if ((rc = out_commit(&o, err)) < 0)
		goto out;

	/* path_windows.csv and paths.csv */
	{
		struct out o2 = {0};
		FILE *fp2;

		if (!(fp = out_open(&o, dir, "path_windows.csv", err)))
			goto out_fail;
		if (!(fp2 = out_open(&o2, dir, "paths.csv", err))) {
			moe_atomic_abort(&o.a);
			goto out_fail;
		}
		fputs("start_layer,end_layer,path_length,n_tokens,n_distinct,top1_share,top10_share,"
		      "top100_share,routes_cover_50,routes_cover_80,routes_cover_95,obs_entropy,"
		      "max_entropy,norm_entropy\n", fp);
		fputs("start_layer,end_layer,rank,route,path_str,count,share,cumshare\n", fp2);
		for (int wi = 0; wi < s->n_windows; wi++) {
			const struct pwin *p = &s->pw[wi];
			double tot = (double)s->path_n, cum = 0;

			for (size_t i = 0; i < p->n_top; i++) {
				double q = (double)p->top[2 * i + 1] / tot;

				cum += q;
				moe_routes_path_unpack(s, p->top[2 * i], route);
				fprintf(fp2, "%d,%d,%zu,\"", wi, wi + s->S - 1, i + 1);
				for (int j = 0; j < s->S; j++)
					fprintf(fp2, j ? " %d" : "%d", route[j]);
				fputs("\",\"", fp2);
				for (int j = 0; j < s->S; j++)
					fprintf(fp2, "%s[l%d] %d", j ? " -> " : "", wi + j, route[j]);
				fprintf(fp2, "\",%llu,%.6g,%.6g\n", (unsigned long long)p->top[2 * i + 1], q,
					cum);
			}
			fprintf(fp, "%d,%d,%d,%lld,%zu,", wi, wi + s->S - 1, s->S, (long long)s->path_n,
				p->n_distinct);
			fnum(fp, p->n_distinct ? p->top1 : NAN);
			putc(',', fp);
			fnum(fp, p->n_distinct ? p->top10 : NAN);
			putc(',', fp);
			fnum(fp, p->n_distinct ? p->top100 : NAN);
			fprintf(fp, ",%zu,%zu,%zu,", p->cover50, p->cover80, p->cover95);
			fnum(fp, p->n_distinct ? p->entropy : NAN);
			putc(',', fp);
			fnum(fp, s->S * log2(E));
			putc(',', fp);
			fnum(fp, p->n_distinct ? p->entropy / (s->S * log2(E)) : NAN);
			putc('\n', fp);
		}
		if ((rc = out_commit(&o2, err)) < 0) {
			moe_atomic_abort(&o.a);
			goto out;
		}
		if ((rc = out_commit(&o, err)) < 0)
			goto out;
	}

	/* expert_tokens.csv, token_spec.csv */
	{
		if (!(fp = out_open(&o, dir, "expert_tokens.csv", err)))
			goto out_fail;
		fputs("layer_ix,expert,rank,token_id,token,count,share_of_expert,share_of_token,lift\n", fp);
		for (int l = 0; l < L; l++)
			for (int e = 0; e < E; e++) {
				int n = moe_route_stats_expert_tokens(s, l, e, s->top_tokens, ids, cnt);
				double ne = (double)s->top1[(size_t)l * E + e];

				for (int i = 0; i < n; i++) {
					double nx = (double)s->tokn[ids[i]];
					double soe = cnt[i] / ne;

					fprintf(fp, "%d,%d,%d,%d,", l, e, i + 1, ids[i]);
					moe_csv_quoted(fp, tok_str(tab, ntab, ids[i]));
					fprintf(fp, ",%llu,%.6g,%.6g,%.6g\n", (unsigned long long)cnt[i], soe,
						cnt[i] / nx, soe / (nx / T));
				}
			}
		if ((rc = out_commit(&o, err)) < 0)
			goto out;

		if (!(fp = out_open(&o, dir, "token_spec.csv", err)))
			goto out_fail;
		fputs("layer_ix,token_id,token,n,top_expert,top_share,entropy\n", fp);
		for (int l = 0; l < L; l++)
			for (int x = 0; x < s->V; x++) {
				size_t i = (size_t)x * L + l;

				if (s->ts_top[i] < 0)
					continue;
				fprintf(fp, "%d,%d,", l, x);
				moe_csv_quoted(fp, tok_str(tab, ntab, x));
				fprintf(fp, ",%llu,%d,%.6g,%.6g\n", (unsigned long long)s->tokn[x], s->ts_top[i],
					s->ts_cnt[i] / (double)s->tokn[x], (double)s->ts_ent[i]);
			}
		if ((rc = out_commit(&o, err)) < 0)
			goto out;
	}

	/* label_spec.csv, label_js.csv */
	if (s->labels) {
		uint64_t *pooled = malloc((size_t)E * sizeof *pooled);

		if (!pooled) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
		if (!(fp = out_open(&o, dir, "label_spec.csv", err))) {
			free(pooled);
			goto out_fail;
		}
		fputs("label,layer_ix,expert,n_top1,n_topk,n_label_tokens,share,ratio\n", fp);
		for (int lb = 0; lb < s->n_labels; lb++) {
			if (!s->lab_n[lb])
				continue;
			for (int l = 0; l < L; l++)
				for (int e = 0; e < E; e++) {
					size_t i = ((size_t)lb * L + l) * E + e;
					double share = (double)s->lab_topk[i] / ((double)K * s->lab_n[lb]);
					double all = (double)s->topk[(size_t)l * E + e] / (T * K);

					moe_csv_quoted(fp, s->labels[lb]);
					fprintf(fp, ",%d,%d,%llu,%llu,%llu,%.6g,", l, e,
						(unsigned long long)s->lab_top1[i],
						(unsigned long long)s->lab_topk[i],
						(unsigned long long)s->lab_n[lb], share);
					fnum(fp, all > 0 ? share / all : NAN);
					putc('\n', fp);
				}
		}
		if ((rc = out_commit(&o, err)) < 0) {
			free(pooled);
			goto out;
		}
		if (!(fp = out_open(&o, dir, "label_js.csv", err))) {
			free(pooled);
			goto out_fail;
		}
		fputs("layer_ix,label,n_tokens,js\n", fp);
		for (int l = 0; l < L; l++)
			for (int lb = 0; lb < s->n_labels; lb++) {
				if (!s->lab_n[lb])
					continue;
				fprintf(fp, "%d,", l);
				moe_csv_quoted(fp, s->labels[lb]);
				fprintf(fp, ",%llu,", (unsigned long long)s->lab_n[lb]);
				fnum(fp, moe_routes_js_distance(s->lab_topk + ((size_t)lb * L + l) * E,
								s->topk + (size_t)l * E, E));
				putc('\n', fp);
			}
		free(pooled);
		if ((rc = out_commit(&o, err)) < 0)
			goto out;
	}

	/* stats.json */
	js = json_pack("{sIsisisisisIsIsisisi}", "n_tokens", (json_int_t)s->T, "n_layers", L, "top_k",
		       K, "n_experts", E, "window", s->S, "path_tokens", (json_int_t)s->path_n,
		       "path_stride", (json_int_t)s->path_stride, "top_paths", s->top_paths,
		       "top_tokens", s->top_tokens, "min_count", s->min_count);
	if (!js) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	jl = json_array();
	for (int l = 0; l < L; l++) {
		const struct moe_layer_summary *m = &s->sum[l];
		json_t *x = json_object();

#define PUT(name, v) json_object_set_new(x, name, isfinite(v) ? json_real(v) : json_null())
		json_object_set_new(x, "layer_ix", json_integer(l));
		PUT("token_entropy", m->token_entropy);
		PUT("norm_entropy", m->norm_entropy);
		PUT("token_kl", m->token_kl);
		PUT("cv_percent", m->cv_percent);
		json_object_set_new(x, "n_dead_experts", json_integer(m->n_dead));
		PUT("lb_loss", m->lb_loss);
		PUT("lb_loss_weights", m->lb_loss_weights);
		PUT("ec", m->ec);
		PUT("ec_any", m->ec_any);
		PUT("token_spec", m->token_spec);
		if (s->labels) {
			double sum = 0;
			int n = 0;

			for (int lb = 0; lb < s->n_labels; lb++) {
				double d = moe_routes_js_distance(s->lab_topk + ((size_t)lb * L + l) * E,
								  s->topk + (size_t)l * E, E);
				if (isfinite(d)) {
					sum += d;
					n++;
				}
			}
			PUT("label_js_mean", n ? sum / n : NAN);
		}
#undef PUT
		json_array_append_new(jl, x);
	}
	json_object_set_new(js, "layers", jl);
	if (s->label_field) {
		json_t *la = json_array();

		for (int lb = 0; lb < s->n_labels; lb++)
			json_array_append_new(la, json_pack("{sssI}", "label", s->labels[lb], "n_tokens",
							    (json_int_t)s->lab_n[lb]));
		json_object_set_new(js, "label_field", json_string(s->label_field));
		json_object_set_new(js, "labels", la);
	}
	{
		char *path = moe_path_join(dir, "stats.json");

		if (!path) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out;
		}
		rc = moe_json_save_file(js, path, err);
		free(path);
		if (rc < 0)
			goto out;
	}
	rc = 0;
	goto out;
out_fail:
	rc = err && err->code ? err->code : MOE_EIO;
out:
	if (o.open)
		moe_atomic_abort(&o.a);
	json_decref(js);
	free(tab);
	free(ids);
	free(cnt);
	free(route);
	return rc;
}
