/*
 * The encode/count pipeline behind `moe-tokenize encode` and `train`: the
 * calling thread reads lines into batches and hands them to worker threads;
 * finished batches are passed to the sink strictly in input order.  At most
 * 2 * threads + 2 batches are in flight, so memory stays bounded however
 * large the input is (one document must fit in memory).
 */
#include "tok/tok_internal.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#define BATCH_BYTES (1u << 20)
#define BATCH_LINES 4096

struct batch {
	uint64_t seq;
	const char *fname;
	uint64_t lineno0; /* line number of the first line */
	char *buf;
	size_t len, cap;
	size_t *loff; /* n_lines + 1 offsets into buf */
	size_t n_lines, lcap;
	/* results */
	struct moe_tok_ids ids;
	size_t *doff; /* n_lines + 1 offsets into ids */
	size_t dcap;
	int rc;
	struct moe_error err;
	bool done;
};

struct job_state {
	struct moe_tok_job *job;
	pthread_mutex_t mu;
	pthread_cond_t cv_work, cv_done;
	struct batch **queue; /* FIFO of batches to process */
	size_t q_head, q_n, q_cap;
	struct batch **slots; /* in flight, indexed by seq % max_inflight */
	size_t max_inflight;
	bool stop;
	int n_threads;
	struct moe_tok_ctx **ctx;
	struct moe_tok_bytes *scratch; /* per worker: decoded JSON strings */
};

static void batch_free(struct batch *b)
{
	if (!b)
		return;
	free(b->buf);
	free(b->loff);
	free(b->doff);
	moe_tok_ids_release(&b->ids);
	free(b);
}

static int batch_add_line(struct batch *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t nc = b->cap ? b->cap : BATCH_BYTES + 4096;
		while (nc < b->len + n + 1)
			nc *= 2;
		char *q = realloc(b->buf, nc);
		if (!q)
			return MOE_ENOMEM;
		b->buf = q;
		b->cap = nc;
	}
	if (b->n_lines + 2 > b->lcap) {
		size_t nc = b->lcap ? b->lcap * 2 : BATCH_LINES + 2;
		size_t *q = realloc(b->loff, nc * sizeof *q);
		if (!q)
			return MOE_ENOMEM;
		b->loff = q;
		b->lcap = nc;
	}
	if (b->n_lines == 0)
		b->loff[0] = 0;
	memcpy(b->buf + b->len, s, n);
	b->len += n;
	b->buf[b->len++] = 0; /* NUL after each line (not part of it) */
	b->loff[++b->n_lines] = b->len;
	return 0;
}

/* Process one batch in a worker (thread index w). */
static void process(struct job_state *st, int w, struct batch *b)
{
	struct moe_tok_job *job = st->job;
	b->ids.n = 0;
	if (b->dcap < b->n_lines + 1) {
		free(b->doff);
		b->doff = malloc((b->n_lines + 1) * sizeof *b->doff);
		if (!b->doff) {
			b->rc = moe_error_set(&b->err, MOE_ENOMEM, "out of memory");
			return;
		}
		b->dcap = b->n_lines + 1;
	}
	b->doff[0] = 0;
	for (size_t i = 0; i < b->n_lines; i++) {
		const char *line = b->buf + b->loff[i];
		size_t len = b->loff[i + 1] - b->loff[i] - 1;
		uint64_t lineno = b->lineno0 + i;
		const char *text = line;
		size_t tlen = len;
		json_t *obj = NULL;
		if (!job->text_lines) {
			int fr = tok_jsonl_field(line, len, job->field, &st->scratch[w], &text, &tlen);
			if (fr == MOE_ENOMEM) {
				b->rc = moe_error_set(&b->err, MOE_ENOMEM, "out of memory");
				return;
			}
			if (fr < 0) {
				/* rejected: let jansson explain (or accept) it */
				json_error_t je;
				obj = json_loadb(line, len, JSON_ALLOW_NUL, &je);
				if (!obj) {
					b->rc = moe_error_set(&b->err, MOE_EFORMAT,
							      "%s:%" PRIu64 ": invalid JSON: %s", b->fname,
							      lineno, je.text);
					return;
				}
				json_t *f = json_is_object(obj) ? json_object_get(obj, job->field) : NULL;
				fr = json_is_string(f);
				if (fr) {
					text = json_string_value(f);
					tlen = json_string_length(f);
				}
			}
			if (fr == 0) {
				b->rc = moe_error_set(&b->err, MOE_EFORMAT,
						      "%s:%" PRIu64 ": no string field '%s'", b->fname, lineno,
						      job->field);
				json_decref(obj);
				return;
			}
		}
		int rc;
		if (job->trainers) {
			rc = moe_tok_trainer_feed(job->trainers[w], text, tlen, &b->err);
		} else {
			rc = moe_tok_encode(job->tok, st->ctx[w], text, tlen, job->flags, &b->ids, &b->err);
			if (rc == 0 && job->eos != MOE_TOK_NONE) {
				struct moe_tok_ids *v = &b->ids;
				if (v->n == v->cap) {
					size_t nc = v->cap ? v->cap * 2 : 1024;
					uint32_t *q = realloc(v->ids, nc * sizeof *q);
					if (!q)
						rc = moe_error_set(&b->err, MOE_ENOMEM, "out of memory");
					else {
						v->ids = q;
						v->cap = nc;
					}
				}
				if (rc == 0)
					v->ids[v->n++] = job->eos;
			}
		}
		json_decref(obj);
		if (rc < 0) {
			moe_error_prefix(&b->err, "%s:%" PRIu64, b->fname, lineno);
			b->rc = rc;
			return;
		}
		b->doff[i + 1] = b->ids.n;
	}
}

static void *worker(void *arg)
{
	struct job_state *st = ((void **)arg)[0];
	int w = (int)(intptr_t)((void **)arg)[1];
	free(arg);
	pthread_mutex_lock(&st->mu);
	for (;;) {
		while (!st->stop && st->q_n == 0)
			pthread_cond_wait(&st->cv_work, &st->mu);
		if (st->q_n == 0 && st->stop)
			break;
		struct batch *b = st->queue[st->q_head];
		st->q_head = (st->q_head + 1) % st->q_cap;
		st->q_n--;
		pthread_mutex_unlock(&st->mu);
		process(st, w, b);
		pthread_mutex_lock(&st->mu);
		b->done = true;
		pthread_cond_broadcast(&st->cv_done);
	}
	pthread_mutex_unlock(&st->mu);
	return NULL;
}

/* Hand a finished batch to the sink. */
static int deliver(struct job_state *st, struct batch *b, struct moe_error *err)
{
	struct moe_tok_job *job = st->job;
	if (b->rc < 0) {
		*err = b->err;
		return b->rc;
	}
	for (size_t i = 0; i < b->n_lines; i++) {
		if (!job->trainers && job->sink) {
			const char *line = b->buf + b->loff[i];
			size_t len = b->loff[i + 1] - b->loff[i] - 1;
			int rc = job->sink(job->ud, b->ids.ids + b->doff[i], b->doff[i + 1] - b->doff[i], line,
					   len, err);
			if (rc < 0)
				return rc;
		}
		job->docs++;
		job->tokens += job->trainers ? 0 : b->doff[i + 1] - b->doff[i];
	}
	job->bytes += b->len - b->n_lines;
	if (job->progress)
		job->progress(job->ud, job->bytes);
	return 0;
}

int moe_tok_job_run(struct moe_tok_job *job, const struct moe_tok_input *in, size_t n_in,
		    struct moe_error *err)
{
	struct job_state st = {0};
	int rc = 0;
	int nt = job->threads < 1 ? 1 : job->threads;
	st.job = job;
	st.n_threads = nt;
	st.max_inflight = nt == 1 ? 1 : (size_t)nt * 2 + 2;
	st.q_cap = st.max_inflight + 1;
	st.queue = calloc(st.q_cap, sizeof *st.queue);
	st.slots = calloc(st.max_inflight, sizeof *st.slots);
	st.ctx = calloc((size_t)nt, sizeof *st.ctx);
	st.scratch = calloc((size_t)nt, sizeof *st.scratch);
	pthread_t *th = calloc((size_t)nt, sizeof *th);
	int started = 0;
	if (!st.queue || !st.slots || !st.ctx || !st.scratch || !th) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	if (!job->trainers)
		for (int i = 0; i < nt; i++)
			if (!(st.ctx[i] = moe_tok_ctx_new(job->tok))) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
	pthread_mutex_init(&st.mu, NULL);
	pthread_cond_init(&st.cv_work, NULL);
	pthread_cond_init(&st.cv_done, NULL);
	if (nt > 1)
		for (; started < nt; started++) {
			void **arg = malloc(2 * sizeof *arg);
			if (!arg) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out_stop;
			}
			arg[0] = &st;
			arg[1] = (void *)(intptr_t)started;
			if (pthread_create(&th[started], NULL, worker, arg) != 0) {
				free(arg);
				rc = moe_error_set(err, MOE_ENOMEM, "cannot start a thread");
				goto out_stop;
			}
		}

	uint64_t seq_in = 0, seq_out = 0;
	char *line = NULL;
	size_t lcap = 0;
	struct batch *cur = NULL;
	for (size_t f = 0; f <= n_in && rc == 0; f++) {
		bool last = f == n_in;
		uint64_t lineno = 0;
		/* read this file's lines (for f == n_in: only flush) */
		for (;;) {
			ssize_t got = -1;
			if (!last) {
				errno = 0;
				got = getline(&line, &lcap, in[f].fp);
				if (got < 0 && ferror(in[f].fp)) {
					rc = moe_error_errno(err, "%s: read error", in[f].name);
					break;
				}
			}
			if (got >= 0) {
				lineno++;
				size_t n = (size_t)got;
				if (n && line[n - 1] == '\n')
					n--;
				if (n && line[n - 1] == '\r' && !job->text_lines)
					n--;
				if (!job->text_lines) {
					/* blank lines between JSON documents are skipped */
					size_t k = 0;
					while (k < n && (line[k] == ' ' || line[k] == '\t' || line[k] == '\r'))
						k++;
					if (k == n)
						continue;
				}
				if (!cur) {
					size_t slot = seq_in % st.max_inflight;
					cur = st.slots[slot];
					if (!cur) {
						cur = calloc(1, sizeof *cur);
						if (!cur) {
							rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
							break;
						}
						st.slots[slot] = cur;
					}
					cur->seq = seq_in;
					cur->fname = in[f].name;
					cur->lineno0 = lineno;
					cur->len = cur->n_lines = 0;
					cur->rc = 0;
					cur->done = false;
				}
				if (batch_add_line(cur, line, n) < 0) {
					rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
					break;
				}
				if (cur->len < BATCH_BYTES && cur->n_lines < BATCH_LINES)
					continue;
			}
			/* submit cur (full, or end of file) */
			if (cur && cur->n_lines) {
				if (nt == 1) {
					process(&st, 0, cur);
					cur->done = true;
				} else {
					pthread_mutex_lock(&st.mu);
					st.queue[(st.q_head + st.q_n) % st.q_cap] = cur;
					st.q_n++;
					pthread_cond_signal(&st.cv_work);
					pthread_mutex_unlock(&st.mu);
				}
				seq_in++;
				cur = NULL;
			}
			/* deliver finished batches in order; block while the window is full */
			for (;;) {
				struct batch *b = seq_out < seq_in ? st.slots[seq_out % st.max_inflight] : NULL;
				if (!b)
					break;
				bool must_wait = seq_in - seq_out >= st.max_inflight || (got < 0);
				pthread_mutex_lock(&st.mu);
				while (must_wait && !b->done)
					pthread_cond_wait(&st.cv_done, &st.mu);
				bool done = b->done;
				pthread_mutex_unlock(&st.mu);
				if (!done)
					break;
				if ((rc = deliver(&st, b, err)) < 0)
					break;
				seq_out++;
			}
			if (rc < 0 || got < 0)
				break;
		}
	}
	free(line);
out_stop:
	pthread_mutex_lock(&st.mu);
	st.stop = true;
	st.q_n = rc < 0 ? 0 : st.q_n;
	pthread_cond_broadcast(&st.cv_work);
	pthread_mutex_unlock(&st.mu);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	pthread_mutex_destroy(&st.mu);
	pthread_cond_destroy(&st.cv_work);
	pthread_cond_destroy(&st.cv_done);
out:
	if (st.ctx)
		for (int i = 0; i < nt; i++)
			moe_tok_ctx_free(st.ctx[i]);
	if (st.scratch)
		for (int i = 0; i < nt; i++)
			moe_tok_bytes_release(&st.scratch[i]);
	free(st.scratch);
	if (st.slots)
		for (size_t i = 0; i < st.max_inflight; i++)
			batch_free(st.slots[i]);
	free(st.slots);
	free(st.queue);
	free(st.ctx);
	free(th);
	return rc;
}
