/*
 * Saving a trace directory: routes.safetensors, meta.json, vocab.json,
 * docs.jsonl and the text views (samples.csv, topks.csv, routes_wide.csv,
 * tokens.jsonl).  The directory is built under a temporary name and renamed
 * into place.
 */
#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "config.h"
#include "routes/routes.h"
#include "routes/internal.h"

char *moe_routes_clean_utf8(const char *s, size_t len)
{
	/* worst case: each byte becomes U+FFFD (3 bytes) */
	char *out = malloc(len * 3 + 1), *o = out;
	const unsigned char *p = (const unsigned char *)s, *end = p + len;

	if (!out)
		return NULL;
	while (p < end) {
		unsigned c = *p;
		int n = 0;
		uint32_t cp = 0;

		if (c == 0) {
			n = -1;
		} else if (c < 0x80) {
			*o++ = (char)c;
			p++;
			continue;
		} else if (c >= 0xC2 && c <= 0xDF) {
			n = 1;
			cp = c & 0x1F;
		} else if (c >= 0xE0 && c <= 0xEF) {
			n = 2;
			cp = c & 0x0F;
		} else if (c >= 0xF0 && c <= 0xF4) {
			n = 3;
			cp = c & 0x07;
		} else {
			n = -1;
		}
		if (n > 0 && end - p > n) {
			int i;

			for (i = 1; i <= n; i++) {
				if ((p[i] & 0xC0) != 0x80)
					break;
				cp = cp << 6 | (p[i] & 0x3F);
			}
			if (i > n && !(n == 2 && cp < 0x800) && !(n == 3 && (cp < 0x10000 || cp > 0x10FFFF)) &&
			    !(cp >= 0xD800 && cp <= 0xDFFF)) {
				memcpy(o, p, (size_t)n + 1);
				o += n + 1;
				p += n + 1;
				continue;
			}
		}
		/* invalid or NUL: one replacement character for this byte */
		memcpy(o, "\xEF\xBF\xBD", 3);
		o += 3;
		p++;
	}
	*o = 0;
	return out;
}

void moe_csv_quoted(FILE *fp, const char *s)
{
	putc('"', fp);
	for (; *s; s++) {
		if (*s == '"')
			putc('"', fp);
		putc(*s, fp);
	}
	putc('"', fp);
}

static void json_quoted(FILE *fp, const char *s)
{
	putc('"', fp);
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		switch (*p) {
		case '"': fputs("\\\"", fp); break;
		case '\\': fputs("\\\\", fp); break;
		case '\n': fputs("\\n", fp); break;
		case '\r': fputs("\\r", fp); break;
		case '\t': fputs("\\t", fp); break;
		default:
			if (*p < 0x20)
				fprintf(fp, "\\u%04x", *p);
			else
				putc(*p, fp);
		}
	}
	putc('"', fp);
}

/* A float as CSV: %.6g, empty for NaN. */
static void csv_float(FILE *fp, double v)
{
	if (isnan(v))
		return;
	fprintf(fp, "%.6g", v);
}

static void json_float(FILE *fp, double v)
{
	if (!isfinite(v))
		fputs("null", fp);
	else
		fprintf(fp, "%.6g", v);
}

/* Token strings by id (pointers into tr->vocab); *n_out = table size. */
const char **moe_routes_token_table(const struct moe_trace *tr, int64_t *n_out)
{
	int64_t n = 0;
	const char **tab;
	const char *key;
	json_t *v;

	for (int64_t t = 0; t < tr->T; t++)
		if (tr->token_id[t] + (int64_t)1 > n)
			n = tr->token_id[t] + (int64_t)1;
	tab = calloc((size_t)(n ? n : 1), sizeof *tab);
	if (!tab)
		return NULL;
	if (tr->vocab) {
		json_object_foreach(tr->vocab, key, v) {
			char *end;
			long id = strtol(key, &end, 10);

			if (*end == 0 && id >= 0 && id < n && json_is_string(v))
				tab[id] = json_string_value(v);
		}
	}
	*n_out = n;
	return tab;
}

static FILE *open_in(const char *dir, const char *name, char **path, struct moe_error *err)
{
	FILE *fp;

	*path = moe_path_join(dir, name);
	if (!*path) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	fp = fopen(*path, "w");
	if (!fp)
		moe_error_errno(err, "cannot create '%s'", *path);
	return fp;
}

static int close_out(FILE *fp, char *path, struct moe_error *err)
{
	int bad = ferror(fp);

	if (fclose(fp) != 0 || bad) {
		moe_error_errno(err, "cannot write '%s'", path);
		free(path);
		return MOE_EIO;
	}
	free(path);
	return 0;
}

static int write_views(const struct moe_trace *tr, const char *dir, unsigned views,
		       struct moe_error *err)
{
	int64_t ntab = 0;
	const char **tab = moe_routes_token_table(tr, &ntab);
	int L = tr->L, K = tr->K;
	int32_t *ex = malloc((size_t)L * K * sizeof *ex);
	float *w = malloc((size_t)L * K * sizeof *w);
	char *path = NULL;
	FILE *fp = NULL;
	int rc = 0;

	if (!tab || !ex || !w) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	if (views & MOE_VIEW_SAMPLES) {
		if (!(fp = open_in(dir, "samples.csv", &path, err)))
			goto out_fail;
		fputs("sequence_ix,token_ix,token_id,token,output_id,output_prob,target_logprob,sample_ix\n", fp);
		for (int64_t t = 0; t < tr->T; t++) {
			const char *s = tab[tr->token_id[t]];

			fprintf(fp, "%d,%d,%d,", tr->doc_index[t], tr->position[t], tr->token_id[t]);
			moe_csv_quoted(fp, s ? s : "");
			putc(',', fp);
			if (tr->pred_id && tr->pred_id[t] >= 0)
				fprintf(fp, "%d", tr->pred_id[t]);
			putc(',', fp);
			csv_float(fp, tr->pred_prob ? tr->pred_prob[t] : NAN);
			putc(',', fp);
			csv_float(fp, tr->target_logprob ? tr->target_logprob[t] : NAN);
			fprintf(fp, ",%lld\n", (long long)t);
		}
		if ((rc = close_out(fp, path, err)) < 0)
			goto out;
	}
	if (views & MOE_VIEW_TOPKS) {
		if (!(fp = open_in(dir, "topks.csv", &path, err)))
			goto out_fail;
		fputs("sequence_ix,token_ix,layer_ix,topk_ix,expert,weight,sample_ix\n", fp);
		for (int64_t t = 0; t < tr->T; t++) {
			moe_trace_row_experts(tr, t, ex);
			moe_trace_row_weights(tr, t, w);
			for (int l = 0; l < L; l++)
				for (int k = 0; k < K; k++)
					fprintf(fp, "%d,%d,%d,%d,%d,%.6g,%lld\n", tr->doc_index[t],
						tr->position[t], l, k + 1, ex[l * K + k],
						(double)w[l * K + k], (long long)t);
		}
		if ((rc = close_out(fp, path, err)) < 0)
			goto out;
	}
	if (views & MOE_VIEW_WIDE) {
		if (!(fp = open_in(dir, "routes_wide.csv", &path, err)))
			goto out_fail;
		fputs("sample_ix,sequence_ix,token_ix,token_id", fp);
		for (int l = 0; l < L; l++)
			fprintf(fp, ",l%d", l);
		putc('\n', fp);
		for (int64_t t = 0; t < tr->T; t++) {
			moe_trace_row_experts(tr, t, ex);
			fprintf(fp, "%lld,%d,%d,%d", (long long)t, tr->doc_index[t], tr->position[t],
				tr->token_id[t]);
			for (int l = 0; l < L; l++)
				fprintf(fp, ",%d", ex[l * K]);
			putc('\n', fp);
		}
		if ((rc = close_out(fp, path, err)) < 0)
			goto out;
	}
	if (views & MOE_VIEW_JSONL) {
		if (!(fp = open_in(dir, "tokens.jsonl", &path, err)))
			goto out_fail;
		for (int64_t t = 0; t < tr->T; t++) {
			const char *s = tab[tr->token_id[t]];

			moe_trace_row_experts(tr, t, ex);
			moe_trace_row_weights(tr, t, w);
			fprintf(fp, "{\"sample_ix\":%lld,\"sequence_ix\":%d,\"token_ix\":%d,\"token_id\":%d,\"token\":",
				(long long)t, tr->doc_index[t], tr->position[t], tr->token_id[t]);
			json_quoted(fp, s ? s : "");
			fputs(",\"output_id\":", fp);
			if (tr->pred_id && tr->pred_id[t] >= 0)
				fprintf(fp, "%d", tr->pred_id[t]);
			else
				fputs("null", fp);
			fputs(",\"output_prob\":", fp);
			json_float(fp, tr->pred_prob ? tr->pred_prob[t] : NAN);
			fputs(",\"target_logprob\":", fp);
			json_float(fp, tr->target_logprob ? tr->target_logprob[t] : NAN);
			fputs(",\"experts\":[", fp);
			for (int l = 0; l < L; l++) {
				fputs(l ? ",[" : "[", fp);
				for (int k = 0; k < K; k++)
					fprintf(fp, k ? ",%d" : "%d", ex[l * K + k]);
				putc(']', fp);
			}
			fputs("],\"weights\":[", fp);
			for (int l = 0; l < L; l++) {
				fputs(l ? ",[" : "[", fp);
				for (int k = 0; k < K; k++) {
					if (k)
						putc(',', fp);
					json_float(fp, w[l * K + k]);
				}
				putc(']', fp);
			}
			fputs("]}\n", fp);
		}
		if ((rc = close_out(fp, path, err)) < 0)
			goto out;
	}
	goto out;
out_fail:
	rc = err && err->code ? err->code : MOE_EIO;
	free(path);
out:
	free(tab);
	free(ex);
	free(w);
	return rc;
}

static int64_t count_docs(const struct moe_trace *tr)
{
	int64_t n = 0;

	for (int64_t t = 0; t < tr->T; t++)
		if (t == 0 || tr->doc_index[t] != tr->doc_index[t - 1])
			n++;
	return n;
}

static json_t *build_meta(const struct moe_trace *tr, const struct moe_trace_save_opts *o,
			  enum moe_dtype edt, enum moe_dtype wdt)
{
	json_t *m = tr->meta ? json_deep_copy(tr->meta) : json_object();
	json_t *counts, *exp, *tensors, *views;
	char date[32];
	time_t now = time(NULL);
	struct tm tm;

	if (!m)
		return NULL;
	gmtime_r(&now, &tm);
	strftime(date, sizeof date, "%Y-%m-%dT%H:%M:%SZ", &tm);
	json_object_set_new(m, "format", json_string(MOE_ROUTES_FORMAT));
	json_object_set_new(m, "version", json_integer(MOE_ROUTES_VERSION));
	counts = json_pack("{sIsIsisisi}", "n_tokens", (json_int_t)tr->T, "n_docs",
			   (json_int_t)count_docs(tr), "n_layers", tr->L, "top_k", tr->K,
			   "n_experts", tr->E);
	json_object_set_new(m, "counts", counts);
	tensors = json_array();
	json_array_append_new(tensors, json_string("topk_experts"));
	json_array_append_new(tensors, json_string("topk_weights"));
	if (tr->topk_margin)
		json_array_append_new(tensors, json_string("topk_margin"));
	json_array_append_new(tensors, json_string("token_id"));
	json_array_append_new(tensors, json_string("doc_index"));
	json_array_append_new(tensors, json_string("position"));
	if (tr->pred_id)
		json_array_append_new(tensors, json_string("pred_id"));
	if (tr->pred_prob)
		json_array_append_new(tensors, json_string("pred_prob"));
	if (tr->target_logprob)
		json_array_append_new(tensors, json_string("target_logprob"));
	if (tr->router_logits)
		json_array_append_new(tensors, json_string("router_logits"));
	views = json_array();
	if (o->views & MOE_VIEW_SAMPLES)
		json_array_append_new(views, json_string("samples.csv"));
	if (o->views & MOE_VIEW_TOPKS)
		json_array_append_new(views, json_string("topks.csv"));
	if (o->views & MOE_VIEW_WIDE)
		json_array_append_new(views, json_string("routes_wide.csv"));
	if (o->views & MOE_VIEW_JSONL)
		json_array_append_new(views, json_string("tokens.jsonl"));
	exp = json_pack("{sssssosssssssisi}", "tool", "moe-routes " PACKAGE_VERSION, "date", date,
			"tensors", tensors, "experts_dtype", moe_dtype_name(edt), "weights_dtype",
			moe_dtype_name(wdt), "expert_id_base", "0", "topk_ix_base", 1,
			"layer_ix_base", 0);
	json_object_set_new(exp, "views", views);
	json_object_set_new(m, "export", exp);
	return m;
}

int moe_trace_save(const struct moe_trace *tr, const char *dir, const struct moe_trace_save_opts *o,
		   struct moe_error *err)
{
	static const struct moe_trace_save_opts defaults = {0};
	struct moe_atomic_dir d = {0};
	struct moe_st_writer *w = NULL;
	json_t *meta = NULL;
	void *ebuf = NULL, *wbuf = NULL;
	char *path = NULL, *meta_text = NULL;
	enum moe_dtype edt, wdt;
	size_t n = (size_t)tr->T * tr->L * tr->K;
	int64_t shape[3];
	int rc;
	uint8_t sha[32];
	char hex[65], buf[64];

	if (!o)
		o = &defaults;
	edt = tr->E <= 256 ? MOE_U8 : tr->E <= 32767 ? MOE_I16 : MOE_I32;
	wdt = o->weights_dtype == MOE_BF16 ? MOE_BF16 : MOE_F32;
	if ((rc = moe_atomic_dir_open(&d, dir, err)) < 0)
		return rc;
	/* arrays in the stored dtypes */
	if (edt == tr->experts_dtype) {
		ebuf = NULL;
	} else {
		int32_t *row = malloc((size_t)tr->L * tr->K * sizeof *row);

		ebuf = malloc(n ? n * moe_dtype_size(edt) : 1);
		if (!ebuf || !row) {
			free(row);
			goto out_nomem;
		}
		for (int64_t t = 0; t < tr->T; t++) {
			size_t lk = (size_t)tr->L * tr->K, base = (size_t)t * lk;

			moe_trace_row_experts(tr, t, row);
			for (size_t i = 0; i < lk; i++) {
				if (edt == MOE_U8)
					((uint8_t *)ebuf)[base + i] = (uint8_t)row[i];
				else if (edt == MOE_I16)
					((int16_t *)ebuf)[base + i] = (int16_t)row[i];
				else
					((int32_t *)ebuf)[base + i] = row[i];
			}
		}
		free(row);
	}
	if (wdt != tr->weights_dtype) {
		float *row = malloc((size_t)tr->L * tr->K * sizeof *row);

		wbuf = malloc(n ? n * moe_dtype_size(wdt) : 1);
		if (!wbuf || !row) {
			free(row);
			goto out_nomem;
		}
		for (int64_t t = 0; t < tr->T; t++) {
			size_t lk = (size_t)tr->L * tr->K, base = (size_t)t * lk;

			moe_trace_row_weights(tr, t, row);
			for (size_t i = 0; i < lk; i++) {
				if (wdt == MOE_BF16)
					((uint16_t *)wbuf)[base + i] = moe_f32_to_bf16(row[i]);
				else
					((float *)wbuf)[base + i] = row[i];
			}
		}
		free(row);
	}
	/* meta.json */
	meta = build_meta(tr, o, edt, wdt);
	if (!meta)
		goto out_nomem;
	meta_text = json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS);
	if (!meta_text)
		goto out_nomem;
	path = moe_path_join(d.tmp_path, "meta.json");
	if (!path)
		goto out_nomem;
	{
		size_t ml = strlen(meta_text);

		meta_text[ml] = '\n'; /* json_dumps leaves room for the NUL only */
		rc = moe_atomic_write_file(path, meta_text, ml + 1, err);
		moe_sha256_buf(meta_text, ml + 1, sha);
		meta_text[ml] = 0;
		if (rc < 0)
			goto out_fail;
	}
	free(path);
	path = NULL;
	moe_hex(sha, 32, hex);
	/* safetensors */
	w = moe_st_writer_new();
	if (!w)
		goto out_nomem;
	shape[0] = tr->T;
	shape[1] = tr->L;
	shape[2] = tr->K;
	if ((rc = moe_st_writer_add(w, "topk_experts", edt, 3, shape, ebuf ? ebuf : tr->topk_experts,
				    err)) < 0 ||
	    (rc = moe_st_writer_add(w, "topk_weights", wdt, 3, shape, wbuf ? wbuf : tr->topk_weights,
				    err)) < 0 ||
	    (tr->topk_margin &&
	     (rc = moe_st_writer_add(w, "topk_margin", MOE_F32, 2, shape, tr->topk_margin, err)) < 0) ||
	    (rc = moe_st_writer_add(w, "token_id", MOE_I32, 1, shape, tr->token_id, err)) < 0 ||
	    (rc = moe_st_writer_add(w, "doc_index", MOE_I32, 1, shape, tr->doc_index, err)) < 0 ||
	    (rc = moe_st_writer_add(w, "position", MOE_I32, 1, shape, tr->position, err)) < 0 ||
	    (tr->pred_id && (rc = moe_st_writer_add(w, "pred_id", MOE_I32, 1, shape, tr->pred_id, err)) < 0) ||
	    (tr->pred_prob &&
	     (rc = moe_st_writer_add(w, "pred_prob", MOE_F32, 1, shape, tr->pred_prob, err)) < 0) ||
	    (tr->target_logprob &&
	     (rc = moe_st_writer_add(w, "target_logprob", MOE_F32, 1, shape, tr->target_logprob, err)) < 0))
		goto out_fail;
	if (tr->router_logits) {
		shape[2] = tr->E;
		if ((rc = moe_st_writer_add(w, "router_logits", MOE_F32, 3, shape, tr->router_logits,
					    err)) < 0)
			goto out_fail;
	}
	moe_st_writer_meta(w, "format", MOE_ROUTES_FORMAT);
	snprintf(buf, sizeof buf, "%d", MOE_ROUTES_VERSION);
	moe_st_writer_meta(w, "version", buf);
	snprintf(buf, sizeof buf, "%lld", (long long)tr->T);
	moe_st_writer_meta(w, "n_tokens", buf);
	snprintf(buf, sizeof buf, "%d", tr->L);
	moe_st_writer_meta(w, "n_layers", buf);
	snprintf(buf, sizeof buf, "%d", tr->K);
	moe_st_writer_meta(w, "top_k", buf);
	snprintf(buf, sizeof buf, "%d", tr->E);
	moe_st_writer_meta(w, "n_experts", buf);
	moe_st_writer_meta(w, "expert_id_base", "0");
	moe_st_writer_meta(w, "meta_sha256", hex);
	path = moe_path_join(d.tmp_path, "routes.safetensors");
	if (!path)
		goto out_nomem;
	if ((rc = moe_st_writer_commit(w, path, err)) < 0)
		goto out_fail;
	free(path);
	path = NULL;
	/* vocab.json, docs.jsonl */
	if (tr->vocab) {
		path = moe_path_join(d.tmp_path, "vocab.json");
		if (!path)
			goto out_nomem;
		if ((rc = moe_json_save_file(tr->vocab, path, err)) < 0)
			goto out_fail;
		free(path);
		path = NULL;
	}
	if (tr->docs) {
		FILE *fp = open_in(d.tmp_path, "docs.jsonl", &path, err);
		size_t i;
		json_t *v;

		if (!fp) {
			rc = MOE_EIO;
			goto out_fail;
		}
		json_array_foreach(tr->docs, i, v) {
			char *s = json_dumps(v, JSON_COMPACT | JSON_PRESERVE_ORDER);

			if (s) {
				fputs(s, fp);
				putc('\n', fp);
			}
			free(s);
		}
		rc = close_out(fp, path, err);
		path = NULL;
		if (rc < 0)
			goto out_fail;
	}
	if ((rc = write_views(tr, d.tmp_path, o->views, err)) < 0)
		goto out_fail;
	if ((rc = moe_atomic_dir_commit(&d, o->replace, err)) < 0)
		goto out_fail;
	rc = 0;
	goto out;
out_nomem:
	rc = moe_error_set(err, MOE_ENOMEM, "%s: out of memory", dir);
out_fail:
	moe_atomic_dir_abort(&d);
out:
	moe_st_writer_free(w);
	json_decref(meta);
	free(meta_text);
	free(path);
	free(ebuf);
	free(wbuf);
	return rc;
}
