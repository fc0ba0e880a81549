/*
 * moe-routes run: forward a checkpoint over documents and record the
 * routing of every real token.  Documents longer than the window (seq_len)
 * are processed in overlapping windows: the first window emits all its
 * tokens, each later one starts seq_len/2 tokens before the first token it
 * emits, so every token sees at least seq_len/2 tokens of context (or the
 * whole document prefix).
 */
#include <errno.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "config.h"
#include "routes/routes.h"
#include "model/model.h"
#include "tok/tok.h"
#include "data/data.h"

struct src {
	/* --docs */
	FILE *fp;
	const char *path;
	const char *text_field;
	char *line;
	size_t line_cap;
	long lineno;
	const struct moe_tok *tok;
	struct moe_tok_ctx *ctx;
	struct moe_tok_ids ids;
	/* --data */
	struct moe_dataset *ds;
	uint64_t next_doc;
	uint32_t *dbuf;
	size_t dcap;
};

/* Next document: 1 with ids, n and fields (owned json object or NULL),
 * 0 at the end, negative on error. */
static int src_next(struct src *s, const uint32_t **ids, size_t *n, json_t **fields,
		    struct moe_error *err)
{
	*fields = NULL;
	if (s->ds) {
		uint64_t start, len, ord = 0;
		size_t got;
		int rc;

		if (s->next_doc >= moe_dataset_n_docs(s->ds))
			return 0;
		if ((rc = moe_dataset_doc(s->ds, s->next_doc, &start, &len, err)) < 0)
			return rc;
		if (len > s->dcap) {
			uint32_t *p = realloc(s->dbuf, (size_t)len * sizeof *p);

			if (!p)
				return moe_error_set(err, MOE_ENOMEM, "out of memory");
			s->dbuf = p;
			s->dcap = (size_t)len;
		}
		if ((rc = moe_dataset_read_doc(s->ds, s->next_doc, s->dbuf, s->dcap, &got, err)) < 0)
			return rc;
		moe_dataset_doc_ordinal(s->ds, s->next_doc, &ord, NULL);
		*fields = json_pack("{sIsI}", "split_doc", (json_int_t)s->next_doc, "ordinal",
				    (json_int_t)ord);
		s->next_doc++;
		*ids = s->dbuf;
		*n = got;
		return 1;
	}
	for (;;) {
		ssize_t len = getline(&s->line, &s->line_cap, s->fp);
		json_error_t je;
		json_t *o;
		const json_t *text;
		int rc;

		if (len < 0) {
			if (ferror(s->fp))
				return moe_error_errno(err, "%s: read error", s->path);
			return 0;
		}
		s->lineno++;
		while (len > 0 && (s->line[len - 1] == '\n' || s->line[len - 1] == '\r'))
			len--;
		if (len == 0)
			continue;
		o = json_loadb(s->line, (size_t)len, JSON_ALLOW_NUL, &je);
		if (!o || !json_is_object(o)) {
			json_decref(o);
			return moe_error_set(err, MOE_EFORMAT, "%s:%ld: not a JSON object (%s)", s->path,
					     s->lineno, o ? "wrong type" : je.text);
		}
		text = json_object_get(o, s->text_field);
		if (!text || !json_is_string(text)) {
			json_decref(o);
			return moe_error_set(err, MOE_EFORMAT, "%s:%ld: field '%s' missing or not a string",
					     s->path, s->lineno, s->text_field);
		}
		s->ids.n = 0;
		rc = moe_tok_encode(s->tok, s->ctx, json_string_value(text), json_string_length(text),
				    MOE_TOK_LOSSY, &s->ids, err);
		if (rc < 0) {
			json_decref(o);
			return moe_error_prefix(err, "%s:%ld", s->path, s->lineno);
		}
		json_object_del(o, s->text_field);
		json_object_set_new(o, "line", json_integer(s->lineno));
		*fields = o;
		*ids = s->ids.ids;
		*n = s->ids.n;
		return 1;
	}
}

static char *sha256_hex_file(const char *path)
{
	uint8_t d[32];
	char *hex = malloc(65);

	if (!hex || moe_sha256_file(path, d, NULL) < 0) {
		free(hex);
		return NULL;
	}
	moe_hex(d, 32, hex);
	return hex;
}

static json_t *model_meta(const char *ckpt, const struct moe_config *c)
{
	json_t *m = json_object(), *dense = json_array(), *moe = json_array(), *ne = json_array(),
	       *tk = json_array();
	char *p, *sha, real[PATH_MAX];
	json_t *ts;
	int nd = c->n_dense_layers;

	for (int b = 0; b < c->num_hidden_layers; b++) {
		if (b < nd) {
			json_array_append_new(dense, json_integer(b));
		} else {
			json_array_append_new(moe, json_integer(b));
			json_array_append_new(ne, json_integer(c->num_experts));
			json_array_append_new(tk, json_integer(c->num_experts_per_tok));
		}
	}
	{
		const char *path = realpath(ckpt, real) ? real : ckpt, *base = strrchr(path, '/');

		json_object_set_new(m, "name", json_string(base && base[1] ? base + 1 : path));
		json_object_set_new(m, "checkpoint", json_string(path));
	}
	p = moe_path_join(ckpt, "model.safetensors");
	sha = p ? sha256_hex_file(p) : NULL;
	json_object_set_new(m, "weights_sha256", sha ? json_string(sha) : json_null());
	free(sha);
	free(p);
	p = moe_path_join(ckpt, "trainer_state.json");
	ts = p && access(p, R_OK) == 0 ? moe_json_load_file(p, NULL) : NULL;
	free(p);
	json_object_set_new(m, "tokens_trained",
			    ts && json_is_integer(json_object_get(ts, "tokens"))
				    ? json_incref(json_object_get(ts, "tokens")) : json_null());
	json_object_set_new(m, "step",
			    ts && json_is_integer(json_object_get(ts, "step"))
				    ? json_incref(json_object_get(ts, "step")) : json_null());
	json_decref(ts);
	json_object_set_new(m, "n_blocks", json_integer(c->num_hidden_layers));
	json_object_set_new(m, "dense_block_indices", dense);
	json_object_set_new(m, "moe_block_indices", moe);
	json_object_set_new(m, "n_moe_layers", json_integer(c->num_hidden_layers - nd));
	json_object_set_new(m, "n_experts", ne);
	json_object_set_new(m, "top_k", tk);
	json_object_set_new(m, "n_shared_experts", json_integer(c->n_shared_experts));
	json_object_set_new(m, "hidden_size", json_integer(c->hidden_size));
	json_object_set_new(m, "vocab_size", json_integer(c->vocab_size));
	json_object_set_new(m, "router",
			    json_pack("{sssssssssbsbsbssss}", "kind", moe_router_kind_name(c->router_kind),
				      "score", "softmax", "weights", "softmax_all_then_topk",
				      "selection", "topk_of_logits", "norm_topk_prob", c->norm_topk_prob,
				      "loss_free_balancing", c->loss_free_balancing,
				      "selection_bias_used", 0, "topk_order", "weight_desc", "margin",
				      "min chosen logit - max unchosen logit"));
	json_object_set_new(m, "config", moe_config_to_json(c));
	return m;
}

/* Resolve a run directory (RUN/ckpt/latest) to its checkpoint. */
static char *resolve_ckpt(const char *ckpt)
{
	char *p = moe_path_join(ckpt, "config.json");
	char *q;

	if (p && access(p, R_OK) == 0) {
		free(p);
		return strdup(ckpt);
	}
	free(p);
	q = moe_path_join(ckpt, "ckpt/latest");
	if (q) {
		p = moe_path_join(q, "config.json");
		if (p && access(p, R_OK) == 0) {
			free(p);
			return q;
		}
		free(p);
		free(q);
	}
	return strdup(ckpt);
}

int moe_routes_run(const struct moe_routes_run_opts *o, int64_t *n_out, struct moe_error *err)
{
	struct src s = {0};
	struct moe_model *m = NULL;
	struct moe_backend *be = NULL;
	struct moe_tok *tok = NULL;
	struct moe_trace *tr = NULL;
	const struct moe_config *c;
	char *ckpt = resolve_ckpt(o->ckpt);
	int L, K, E, T, rc = 0;
	int32_t *tokens = NULL, *targets = NULL, *ex = NULL;
	float *w = NULL, *mg = NULL, *lg = NULL;
	struct moe_routing_capture cap = {0};
	struct moe_token_stats *ts = NULL;
	json_t *docs = NULL, *meta = NULL, *vocab = NULL;
	int64_t total = 0;
	int32_t doc = 0;
	bool *seen = NULL;
	uint32_t vsize;

	if (!ckpt)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	be = moe_backend_new(o->device ? o->device : "cpu", err);
	if (!be) {
		rc = err->code;
		goto out;
	}
	m = moe_model_load_dir(ckpt, be, err);
	be = NULL; /* owned by the model (also on failure) */
	if (!m) {
		rc = err->code ? err->code : MOE_EFORMAT;
		goto out;
	}
	c = moe_model_config(m);
	L = moe_config_n_moe_layers(c);
	K = c->num_experts_per_tok;
	E = c->num_experts;
	T = o->seq_len > 0 ? o->seq_len : c->max_position_embeddings > 0 ? c->max_position_embeddings : 2048;
	if (T < 2) {
		rc = moe_error_set(err, MOE_EINVAL, "--seq-len %d too short", T);
		goto out;
	}
	if (L < 1) {
		rc = moe_error_set(err, MOE_EINVAL, "%s: the model has no MoE layers", ckpt);
		goto out;
	}
	if (o->tokenizer) {
		tok = moe_tok_load(o->tokenizer, err);
		if (!tok) {
			rc = err->code;
			goto out;
		}
	}
	if (o->docs) {
		if (!tok) {
			rc = moe_error_set(err, MOE_EINVAL, "--docs needs a tokenizer (-t)");
			goto out;
		}
		s.path = o->docs;
		s.text_field = o->text_field ? o->text_field : "text";
		s.tok = tok;
		s.ctx = moe_tok_ctx_new(tok);
		s.fp = strcmp(o->docs, "-") ? fopen(o->docs, "r") : stdin;
		if (!s.fp) {
			rc = moe_error_errno(err, "cannot open '%s'", o->docs);
			goto out;
		}
	} else if (o->data_dir) {
		enum moe_split sp;

		if ((rc = moe_split_parse(o->split ? o->split : "val", &sp, err)) < 0)
			goto out;
		s.ds = moe_dataset_open(o->data_dir, sp, err);
		if (!s.ds) {
			rc = err->code;
			goto out;
		}
	} else {
		rc = moe_error_set(err, MOE_EINVAL, "no input: give --docs or --data");
		goto out;
	}
	tr = moe_trace_new(L, K, E, o->logits, err);
	if (!tr) {
		rc = err->code;
		goto out;
	}
	tokens = malloc((size_t)T * sizeof *tokens);
	targets = malloc((size_t)T * sizeof *targets);
	cap.topk_idx = malloc((size_t)L * T * K * sizeof *cap.topk_idx);
	cap.topk_w = malloc((size_t)L * T * K * sizeof *cap.topk_w);
	cap.router_logits = malloc((size_t)L * T * E * sizeof *cap.router_logits);
	ts = malloc((size_t)T * sizeof *ts);
	ex = malloc((size_t)L * K * sizeof *ex);
	w = malloc((size_t)L * K * sizeof *w);
	mg = malloc((size_t)L * sizeof *mg);
	lg = malloc((size_t)L * E * sizeof *lg);
	docs = json_array();
	vsize = (uint32_t)c->vocab_size;
	seen = calloc(vsize, sizeof *seen);
	if (!tokens || !targets || !cap.topk_idx || !cap.topk_w || !cap.router_logits || !ts || !ex ||
	    !w || !mg || !lg || !docs || !seen) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	while (o->max_tokens <= 0 || total < o->max_tokens) {
		const uint32_t *ids = NULL;
		size_t n = 0, done = 0;
		json_t *fields;
		int got = src_next(&s, &ids, &n, &fields, err);

		if (got < 0) {
			rc = got;
			goto out;
		}
		if (got == 0)
			break;
		if (n == 0) {
			json_decref(fields);
			continue;
		}
		if (o->max_tokens > 0 && (int64_t)n > o->max_tokens - total)
			n = (size_t)(o->max_tokens - total);
		for (size_t i = 0; i < n; i++)
			if (ids[i] >= vsize) {
				json_decref(fields);
				rc = moe_error_set(err, MOE_ERANGE,
						   "document %d: token id %u >= the model's vocab_size %u "
						   "(wrong tokenizer?)", doc, ids[i], vsize);
				goto out;
			}
		if (!fields)
			fields = json_object();
		json_object_set_new(fields, "sequence_ix", json_integer(doc));
		json_object_set_new(fields, "n_tokens", json_integer((json_int_t)n));
		json_array_append_new(docs, fields);
		while (done < n) {
			size_t start = done == 0 ? 0 : done - (size_t)T / 2;
			size_t end = start + (size_t)T < n ? start + (size_t)T : n;
			int nt = (int)(end - start);
			struct moe_forward_opts fo = {0};

			for (int i = 0; i < nt; i++) {
				tokens[i] = (int32_t)ids[start + i];
				/* the true next token; a placeholder after the document's end */
				targets[i] = start + i + 1 < n ? (int32_t)ids[start + i + 1]
					     : c->pad_token_id >= 0 ? c->pad_token_id : 0;
			}
			fo.capture = &cap;
			fo.token_stats = ts;
			if ((rc = moe_model_forward(m, tokens, targets, 1, nt, &fo, NULL, err)) < 0)
				goto out;
			for (size_t i = done; i < end; i++) {
				int r = (int)(i - start);
				struct moe_trace_row row = {0};

				for (int l = 0; l < L; l++) {
					const float *lr = cap.router_logits + ((size_t)l * nt + r) * E;
					float minc = INFINITY, maxu = -INFINITY;

					for (int k = 0; k < K; k++) {
						int e = cap.topk_idx[((size_t)l * nt + r) * K + k];

						ex[l * K + k] = e;
						w[l * K + k] = cap.topk_w[((size_t)l * nt + r) * K + k];
						if (lr[e] < minc)
							minc = lr[e];
					}
					for (int e = 0; e < E; e++) {
						bool chosen = false;

						for (int k = 0; k < K; k++)
							chosen |= ex[l * K + k] == e;
						if (!chosen && lr[e] > maxu)
							maxu = lr[e];
					}
					mg[l] = minc - maxu;
					memcpy(lg + (size_t)l * E, lr, (size_t)E * sizeof *lg);
				}
				row.token_id = tokens[r];
				row.doc_index = doc;
				row.position = (int32_t)i;
				row.pred_id = ts[r].argmax;
				row.pred_prob = ts[r].p_argmax;
				row.target_logprob = i + 1 < n ? ts[r].logprob_target : NAN;
				row.experts = ex;
				row.weights = w;
				row.margin = mg;
				row.logits = o->logits ? lg : NULL;
				if ((rc = moe_trace_append(tr, &row, err)) < 0)
					goto out;
				seen[tokens[r]] = true;
			}
			done = end;
		}
		total = tr->T;
		doc++;
		if (o->progress)
			o->progress(o->progress_ctx, total);
	}
	/* vocab.json: decoded token strings of the ids that occur */
	vocab = json_object();
	if (tok && vocab) {
		for (uint32_t id = 0; id < vsize; id++) {
			size_t blen;
			const char *b;
			char *clean, key[16];

			if (!seen[id])
				continue;
			b = moe_tok_token_bytes(tok, id, &blen);
			if (!b)
				continue;
			clean = moe_routes_clean_utf8(b, blen);
			if (!clean) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			snprintf(key, sizeof key, "%u", id);
			json_object_set_new(vocab, key, json_string(clean));
			free(clean);
		}
	}
	/* meta.json */
	meta = json_object();
	json_object_set_new(meta, "model", model_meta(ckpt, c));
	if (tok) {
		uint8_t d[32];
		char hex[65];
		const char *base = strrchr(o->tokenizer, '/');

		moe_tok_sha256(tok, d);
		moe_hex(d, 32, hex);
		json_object_set_new(meta, "tokenizer",
				    json_pack("{sssssssisb}", "name", base ? base + 1 : o->tokenizer,
					      "path", o->tokenizer, "sha256", hex, "vocab_size",
					      (int)moe_tok_vocab_size(tok), "add_bos", 0));
	} else {
		json_object_set_new(meta, "tokenizer", json_null());
	}
	if (s.ds) {
		const struct moe_dataset_info *di = moe_dataset_info(s.ds);
		char hex[65];

		moe_hex(di->tokenizer_sha256, 32, hex);
		json_object_set_new(meta, "data",
				    json_pack("{sssssssIsIsisisssI}", "kind", "shards", "source",
					      o->data_dir, "split", o->split ? o->split : "val", "n_docs",
					      (json_int_t)doc, "n_tokens", (json_int_t)tr->T, "seq_len", T,
					      "window_overlap", T / 2, "shard_tokenizer_sha256",
					      di->has_tokenizer_sha256 ? hex : "", "max_tokens",
					      (json_int_t)(o->max_tokens > 0 ? o->max_tokens : 0)));
	} else {
		json_object_set_new(meta, "data",
				    json_pack("{sssssssIsIsisisI}", "kind", "docs", "source", o->docs,
					      "text_field", s.text_field, "n_docs", (json_int_t)doc,
					      "n_tokens", (json_int_t)tr->T, "seq_len", T, "window_overlap",
					      T / 2, "max_tokens", (json_int_t)o->max_tokens));
	}
	json_object_set_new(meta, "device", json_string(o->device ? o->device : "cpu"));
	tr->meta = meta;
	meta = NULL;
	tr->vocab = vocab;
	vocab = NULL;
	tr->docs = docs;
	docs = NULL;
	{
		struct moe_trace_save_opts so = {.views = o->views, .replace = o->replace};

		if ((rc = moe_trace_save(tr, o->out, &so, err)) < 0)
			goto out;
	}
	if (n_out)
		*n_out = tr->T;
	rc = 0;
out:
	if (s.fp && s.fp != stdin)
		fclose(s.fp);
	free(s.line);
	moe_tok_ctx_free(s.ctx);
	moe_tok_ids_release(&s.ids);
	moe_dataset_free(s.ds);
	free(s.dbuf);
	moe_model_free(m);
	if (be)
		be->destroy(be);
	moe_tok_free(tok);
	moe_trace_free(tr);
	free(tokens);
	free(targets);
	free(cap.topk_idx);
	free(cap.topk_w);
	free(cap.router_logits);
	free(ts);
	free(ex);
	free(w);
	free(mg);
	free(lg);
	free(seen);
	json_decref(docs);
	json_decref(meta);
	json_decref(vocab);
	free(ckpt);
	return rc;
}
