/*
 * moe-routes run: forward a checkpoint over documents and record the
 * routing of every real token.  Documents longer than the window (seq_len)
 * are processed in overlapping windows: the first window emits all its
 * tokens, each later one starts `overlap` (default seq_len/2) tokens before
 * the first token it emits, so every token sees at least that much context
 * (or the whole document prefix).  Windows are forwarded in batches.
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

/* Windows waiting for one batched forward: rows right-padded to the longest
 * (causal attention: real tokens never see the padding after them). */
struct batch {
	int B, T, L, K, E, n;
	int32_t *tokens, *targets;  /* (B, T) */
	int32_t *doc, *nt;          /* (B) document index, window length */
	int64_t *start, *emit, *doc_n; /* (B) window start, first emitted position, doc length */
	struct moe_routing_capture cap;
	struct moe_token_stats *ts; /* (B*T) */
	int32_t *ex;                /* (L, K) */
	float *w, *mg, *lg;         /* (L, K), (L), (L, E) */
};

static int batch_flush(struct batch *bt, struct moe_model *m, struct moe_trace *tr, bool *seen,
		       bool keep_logits, struct moe_error *err)
{
	int L = bt->L, K = bt->K, E = bt->E, Tm = 0, rc;
	struct moe_forward_opts fo = {0};

	if (bt->n == 0)
		return 0;
	for (int b = 0; b < bt->n; b++)
		if (bt->nt[b] > Tm)
			Tm = bt->nt[b];
	/* compact rows of length bt->T into (n, Tm), padding with token 0 */
	for (int b = 0; b < bt->n; b++) {
		memmove(bt->tokens + (size_t)b * Tm, bt->tokens + (size_t)b * bt->T,
			(size_t)bt->nt[b] * sizeof *bt->tokens);
		memmove(bt->targets + (size_t)b * Tm, bt->targets + (size_t)b * bt->T,
			(size_t)bt->nt[b] * sizeof *bt->targets);
		for (int i = bt->nt[b]; i < Tm; i++)
			bt->tokens[(size_t)b * Tm + i] = bt->targets[(size_t)b * Tm + i] = 0;
	}
	fo.capture = &bt->cap;
	fo.token_stats = bt->ts;
	if ((rc = moe_model_forward(m, bt->tokens, bt->targets, bt->n, Tm, &fo, NULL, err)) < 0)
		return rc;
	for (int b = 0; b < bt->n; b++) {
		for (int64_t i = bt->emit[b]; i < bt->start[b] + bt->nt[b]; i++) {
			size_t r = (size_t)b * Tm + (size_t)(i - bt->start[b]), N = (size_t)bt->n * Tm;
			struct moe_trace_row row = {0};

			for (int l = 0; l < L; l++) {
				const float *lr = bt->cap.router_logits + ((size_t)l * N + r) * E;
				float minc = INFINITY, maxu = -INFINITY;

				for (int k = 0; k < K; k++) {
					int e = bt->cap.topk_idx[((size_t)l * N + r) * K + k];

					bt->ex[l * K + k] = e;
					bt->w[l * K + k] = bt->cap.topk_w[((size_t)l * N + r) * K + k];
					if (lr[e] < minc)
						minc = lr[e];
				}
				for (int e = 0; e < E; e++) {
					bool chosen = false;

					for (int k = 0; k < K; k++)
						chosen |= bt->ex[l * K + k] == e;
					if (!chosen && lr[e] > maxu)
						maxu = lr[e];
				}
				bt->mg[l] = minc - maxu;
				memcpy(bt->lg + (size_t)l * E, lr, (size_t)E * sizeof *bt->lg);
			}
			row.token_id = bt->tokens[r];
			row.doc_index = bt->doc[b];
			row.position = (int32_t)i;
			row.pred_id = bt->ts[r].argmax;
			row.pred_prob = bt->ts[r].p_argmax;
			row.target_logprob = i + 1 < bt->doc_n[b] ? bt->ts[r].logprob_target : NAN;
			row.experts = bt->ex;
			row.weights = bt->w;
			row.margin = bt->mg;
			row.logits = keep_logits ? bt->lg : NULL;
			if ((rc = moe_trace_append(tr, &row, err)) < 0)
				return rc;
			seen[row.token_id] = true;
		}
	}
	bt->n = 0;
	return 0;
}

static void batch_release(struct batch *bt)
{
	free(bt->tokens);
	free(bt->targets);
	free(bt->doc);
	free(bt->nt);
	free(bt->start);
	free(bt->emit);
	free(bt->doc_n);
	free(bt->cap.topk_idx);
	free(bt->cap.topk_w);
	free(bt->cap.router_logits);
	free(bt->ts);
	free(bt->ex);
	free(bt->w);
	free(bt->mg);
	free(bt->lg);
}

static int batch_init(struct batch *bt, int B, int T, int L, int K, int E)
{
	size_t N = (size_t)B * T;

	bt->B = B;
	bt->T = T;
	bt->L = L;
	bt->K = K;
	bt->E = E;
	bt->n = 0;
	bt->tokens = malloc(N * sizeof *bt->tokens);
	bt->targets = malloc(N * sizeof *bt->targets);
	bt->doc = malloc((size_t)B * sizeof *bt->doc);
	bt->nt = malloc((size_t)B * sizeof *bt->nt);
	bt->start = malloc((size_t)B * sizeof *bt->start);
	bt->emit = malloc((size_t)B * sizeof *bt->emit);
	bt->doc_n = malloc((size_t)B * sizeof *bt->doc_n);
	bt->cap.topk_idx = malloc((size_t)L * N * K * sizeof *bt->cap.topk_idx);
	bt->cap.topk_w = malloc((size_t)L * N * K * sizeof *bt->cap.topk_w);
	bt->cap.router_logits = malloc((size_t)L * N * E * sizeof *bt->cap.router_logits);
	bt->ts = malloc(N * sizeof *bt->ts);
	bt->ex = malloc((size_t)L * K * sizeof *bt->ex);
	bt->w = malloc((size_t)L * K * sizeof *bt->w);
	bt->mg = malloc((size_t)L * sizeof *bt->mg);
	bt->lg = malloc((size_t)L * E * sizeof *bt->lg);
	return bt->tokens && bt->targets && bt->doc && bt->nt && bt->start && bt->emit && bt->doc_n &&
	       bt->cap.topk_idx && bt->cap.topk_w && bt->cap.router_logits && bt->ts && bt->ex &&
	       bt->w && bt->mg && bt->lg ? 0 : -1;
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
	struct batch bt = {0};
	int overlap;
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
		if (tok && moe_dataset_info(s.ds)->has_tokenizer_sha256) {
			uint8_t d[32];

			moe_tok_sha256(tok, d);
			if (memcmp(d, moe_dataset_info(s.ds)->tokenizer_sha256, 32) != 0) {
				rc = moe_error_set(err, MOE_EINVAL,
						   "%s: the shards were made with another tokenizer than '%s' "
						   "(sha256 differs)", o->data_dir, o->tokenizer);
				goto out;
			}
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
	overlap = o->overlap == 0 ? T / 2 : o->overlap < 0 ? 0 : o->overlap;
	if (overlap >= T) {
		rc = moe_error_set(err, MOE_EINVAL, "--overlap %d must be less than the window (%d)",
				   overlap, T);
		goto out;
	}
	docs = json_array();
	vsize = (uint32_t)c->vocab_size;
	seen = calloc(vsize, sizeof *seen);
	if (batch_init(&bt, o->batch > 0 ? o->batch : 8, T, L, K, E) < 0 || !docs || !seen) {
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
			size_t start = done == 0 ? 0 : done - (size_t)overlap;
			size_t end = start + (size_t)T < n ? start + (size_t)T : n;
			int nt = (int)(end - start), b = bt.n;

			for (int i = 0; i < nt; i++) {
				bt.tokens[(size_t)b * T + i] = (int32_t)ids[start + i];
				/* the true next token; a placeholder after the document's end */
				bt.targets[(size_t)b * T + i] = start + i + 1 < n ? (int32_t)ids[start + i + 1]
							      : c->pad_token_id >= 0 ? c->pad_token_id : 0;
			}
			bt.doc[b] = doc;
			bt.nt[b] = nt;
			bt.start[b] = (int64_t)start;
			bt.emit[b] = (int64_t)done;
			bt.doc_n[b] = (int64_t)n;
			bt.n++;
			if (bt.n == bt.B && (rc = batch_flush(&bt, m, tr, seen, o->logits, err)) < 0)
				goto out;
			done = end;
		}
		total += (int64_t)n;
		doc++;
		if (o->progress)
			o->progress(o->progress_ctx, total);
	}
	if ((rc = batch_flush(&bt, m, tr, seen, o->logits, err)) < 0)
		goto out;
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
					      "window_overlap", overlap, "shard_tokenizer_sha256",
					      di->has_tokenizer_sha256 ? hex : "", "max_tokens",
					      (json_int_t)(o->max_tokens > 0 ? o->max_tokens : 0)));
	} else {
		json_object_set_new(meta, "data",
				    json_pack("{sssssssIsIsisisI}", "kind", "docs", "source", o->docs,
					      "text_field", s.text_field, "n_docs", (json_int_t)doc,
					      "n_tokens", (json_int_t)tr->T, "seq_len", T, "window_overlap",
					      overlap, "max_tokens", (json_int_t)o->max_tokens));
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
	batch_release(&bt);
	free(seen);
	json_decref(docs);
	json_decref(meta);
	json_decref(vocab);
	free(ckpt);
	return rc;
}
