/*
 * moe-tokenize: byte-level BPE encoding, decoding and training with Hugging
 * Face tokenizer.json (or tiktoken) vocabularies.  See moe-tokenize(1).
 *
 *   moe-tokenize encode -t TOK [options] [FILE...]
 *   moe-tokenize decode -t TOK [options] [FILE]
 *   moe-tokenize train --vocab-size N [options] -o OUT.json [FILE...]
 *   moe-tokenize info -t TOK [--json]
 */
#include "config.h"

#include <errno.h>
#include <getopt.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "core/core.h"
#include "data/tokstream.h"
#include "tok/tok.h"

static void usage(FILE *fp)
{
	const char *p = moe_progname();
	fprintf(fp,
		"Usage: %s encode -t TOKENIZER [options] [FILE...]\n"
		"       %s decode -t TOKENIZER [options] [FILE]\n"
		"       %s train --vocab-size N [options] -o OUT.json [FILE...]\n"
		"       %s info -t TOKENIZER [--json]\n"
		"Encode JSONL documents (or text lines) to token ids, decode ids to text,\n"
		"train a byte-level BPE vocabulary, or describe a tokenizer.\n"
		"\n"
		"  -t, --tokenizer FILE     tokenizer.json or .tiktoken rank file\n"
		"  -o, --output FILE        output file (default: standard output)\n"
		"      --field NAME         JSON field holding the text [text]\n"
		"      --text               inputs are raw text, one document per line\n"
		"      --lossy              replace invalid UTF-8 by U+FFFD instead of failing\n"
		"      --eos ID|TOKEN|none  appended to each document [the tokenizer's EOS]\n"
		"      --format F           encode: stream, ids or jsonl [stream];\n"
		"                           decode: text or jsonl [text]\n"
		"      --no-added           encode: do not match added/special tokens in the text\n"
		"      --skip-special       decode: drop special tokens\n"
		"      --keep-eos           decode: keep the stream's EOS at the end of documents\n"
		"  -j, --threads N          worker threads [1]\n"
		"      --vocab-size N       train: final vocabulary size (bytes and specials included)\n"
		"      --special TOKEN      train: add a special token (repeatable) [<|endoftext|>]\n"
		"      --min-frequency N    train: stop at pairs seen fewer than N times [2]\n"
		"      --json               info: print JSON\n"
		"  -f, --force              write a token stream to a terminal\n"
		"  -q, --quiet              no progress or warnings\n"
		"  -v, --verbose            more messages\n"
		"  -h, --help               show this help\n"
		"  -V, --version            show the version\n",
		p, p, p, p);
}

enum {
	OPT_FIELD = 1000,
	OPT_TEXT,
	OPT_LOSSY,
	OPT_EOS,
	OPT_FORMAT,
	OPT_NO_ADDED,
	OPT_SKIP_SPECIAL,
	OPT_KEEP_EOS,
	OPT_VOCAB_SIZE,
	OPT_SPECIAL,
	OPT_MIN_FREQ,
	OPT_JSON,
};

static const struct option long_opts[] = {
	{"tokenizer", required_argument, NULL, 't'},
	{"output", required_argument, NULL, 'o'},
	{"field", required_argument, NULL, OPT_FIELD},
	{"text", no_argument, NULL, OPT_TEXT},
	{"lossy", no_argument, NULL, OPT_LOSSY},
	{"eos", required_argument, NULL, OPT_EOS},
	{"format", required_argument, NULL, OPT_FORMAT},
	{"no-added", no_argument, NULL, OPT_NO_ADDED},
	{"skip-special", no_argument, NULL, OPT_SKIP_SPECIAL},
	{"keep-eos", no_argument, NULL, OPT_KEEP_EOS},
	{"threads", required_argument, NULL, 'j'},
	{"vocab-size", required_argument, NULL, OPT_VOCAB_SIZE},
	{"special", required_argument, NULL, OPT_SPECIAL},
	{"min-frequency", required_argument, NULL, OPT_MIN_FREQ},
	{"json", no_argument, NULL, OPT_JSON},
	{"force", no_argument, NULL, 'f'},
	MOE_TOOL_LONGOPTS,
	{NULL, 0, NULL, 0},
};

struct args {
	const char *cmd;
	const char *tokenizer, *output, *field, *eos, *format;
	bool text, lossy, no_added, skip_special, keep_eos, json, force;
	int threads;
	uint32_t vocab_size, min_freq;
	const char **special;
	size_t n_special;
	char **files;
	size_t n_files;
};

/* ---- output -------------------------------------------------------------- */

struct out {
	struct moe_atomic at;
	bool atomic;
	FILE *fp;
	const char *name;
};

static void out_open(struct out *o, const char *path)
{
	struct moe_error err = {0};
	memset(o, 0, sizeof *o);
	if (!path || strcmp(path, "-") == 0) {
		o->fp = stdout;
		o->name = "standard output";
		return;
	}
	if (moe_atomic_open(&o->at, path, &err) < 0)
		moe_die_error(&err);
	o->atomic = true;
	o->fp = o->at.fp;
	o->name = path;
}

static void out_commit(struct out *o)
{
	struct moe_error err = {0};
	if (o->atomic) {
		if (moe_atomic_commit(&o->at, &err) < 0)
			moe_die_error(&err);
	} else
		moe_close_stdout();
}

static struct out *g_out; /* aborted by fail() */

static void __attribute__((noreturn)) fail(const struct moe_error *err)
{
	if (g_out && g_out->atomic)
		moe_atomic_abort(&g_out->at);
	moe_die_error(err);
}

/* ---- inputs ---------------------------------------------------------------- */

static struct moe_tok_input *open_inputs(const struct args *a, size_t *n)
{
	size_t k = a->n_files ? a->n_files : 1;
	struct moe_tok_input *in = calloc(k, sizeof *in);
	if (!in)
		moe_die("out of memory");
	for (size_t i = 0; i < k; i++) {
		const char *f = a->n_files ? a->files[i] : "-";
		if (strcmp(f, "-") == 0) {
			in[i].fp = stdin;
			in[i].name = "-";
		} else {
			in[i].fp = fopen(f, "rb");
			if (!in[i].fp)
				moe_die("cannot open '%s': %s", f, strerror(errno));
			in[i].name = f;
		}
	}
	*n = k;
	return in;
}

/* Total size of the inputs when all are regular files, else 0 (unknown). */
static uint64_t inputs_size(const struct moe_tok_input *in, size_t n)
{
	uint64_t total = 0;
	for (size_t i = 0; i < n; i++) {
		struct stat st;
		if (fstat(fileno(in[i].fp), &st) != 0 || !S_ISREG(st.st_mode))
			return 0;
		total += (uint64_t)st.st_size;
	}
	return total;
}

static void close_inputs(struct moe_tok_input *in, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (in[i].fp != stdin)
			fclose(in[i].fp);
	free(in);
}

static struct moe_tok *load_tok(const char *path)
{
	struct moe_error err = {0};
	if (!path)
		moe_usage_error("-t/--tokenizer is required");
	struct moe_tok *t = moe_tok_load(path, &err);
	if (!t)
		moe_die_error(&err);
	return t;
}

/* ---- encode ---------------------------------------------------------------- */

enum fmt { FMT_STREAM, FMT_IDS, FMT_JSONL, FMT_TEXT };

struct enc_state {
	enum fmt fmt;
	struct out *o;
	struct moe_tokstream_writer *w;
	bool text_lines;
	struct moe_progress *prog;
};

static int enc_sink(void *ud, const uint32_t *ids, size_t n, const char *line, size_t len,
		    struct moe_error *err)
{
	struct enc_state *s = ud;
	FILE *fp = s->o->fp;
	if (s->fmt == FMT_STREAM)
		return moe_tokstream_write_doc(s->w, ids, n, err);
	if (s->fmt == FMT_IDS) {
		for (size_t i = 0; i < n; i++)
			fprintf(fp, i ? " %" PRIu32 : "%" PRIu32, ids[i]);
		fputc('\n', fp);
	} else {
		json_t *obj = NULL;
		if (!s->text_lines)
			obj = json_loadb(line, len, JSON_ALLOW_NUL, NULL);
		if (!obj)
			obj = json_object();
		json_t *arr = json_array();
		for (size_t i = 0; i < n; i++)
			json_array_append_new(arr, json_integer(ids[i]));
		json_object_set_new(obj, "ids", arr);
		char *str = json_dumps(obj, JSON_COMPACT | JSON_ENSURE_ASCII);
		json_decref(obj);
		if (!str)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		fputs(str, fp);
		fputc('\n', fp);
		free(str);
	}
	if (ferror(fp))
		return moe_error_errno(err, "%s: write error", s->o->name);
	return 0;
}

static void enc_progress(void *ud, uint64_t bytes)
{
	struct enc_state *s = ud;
	moe_progress_update(s->prog, bytes);
}

static uint32_t parse_eos(const struct moe_tok *t, const char *s)
{
	if (!s)
		return moe_tok_eos_id(t);
	if (strcmp(s, "none") == 0)
		return MOE_TOK_NONE;
	if (s[0] >= '0' && s[0] <= '9' && strspn(s, "0123456789") == strlen(s)) {
		struct moe_error err = {0};
		uint64_t v;
		if (moe_parse_u64(s, moe_tok_vocab_size(t) - 1, &v, "EOS id", &err) < 0)
			moe_usage_error("--eos: id %s is not below the vocabulary size %u", s,
					moe_tok_vocab_size(t));
		return (uint32_t)v;
	}
	uint32_t id = moe_tok_token_id(t, s, strlen(s));
	if (id == MOE_TOK_NONE)
		moe_usage_error("--eos: '%s' is not a token of the tokenizer", s);
	return id;
}

static int cmd_encode(const struct args *a)
{
	struct moe_tok *t = load_tok(a->tokenizer);
	enum fmt fmt = FMT_STREAM;
	if (a->format) {
		if (strcmp(a->format, "stream") == 0)
			fmt = FMT_STREAM;
		else if (strcmp(a->format, "ids") == 0)
			fmt = FMT_IDS;
		else if (strcmp(a->format, "jsonl") == 0)
			fmt = FMT_JSONL;
		else
			moe_usage_error("--format: expected stream, ids or jsonl, not '%s'", a->format);
	}
	uint32_t eos = parse_eos(t, a->eos);
	if (!a->eos && eos == MOE_TOK_NONE)
		moe_warn("'%s' has no end-of-text token: documents get no EOS", a->tokenizer);
	struct out o;
	size_t n_in;
	struct moe_tok_input *in = open_inputs(a, &n_in);
	if (fmt == FMT_STREAM && !a->output)
		moe_refuse_binary_tty(stdout, a->force);
	out_open(&o, a->output);
	g_out = &o;
	struct moe_error err = {0};
	struct enc_state st = {.fmt = fmt, .o = &o, .text_lines = a->text};
	if (fmt == FMT_STREAM) {
		struct moe_tokstream_info info = {0};
		info.vocab_size = moe_tok_vocab_size(t);
		info.eos_id = eos == MOE_TOK_NONE ? MOE_NO_EOS : eos;
		moe_tok_sha256(t, info.tokenizer_sha256);
		st.w = moe_tokstream_writer_new(o.fp, &info, o.name, &err);
		if (!st.w)
			fail(&err);
	}
	st.prog = moe_progress_new("encode", inputs_size(in, n_in), "B");
	struct moe_tok_job job = {
		.tok = t,
		.threads = a->threads,
		.text_lines = a->text,
		.field = a->field ? a->field : "text",
		.flags = (a->lossy ? MOE_TOK_LOSSY : 0u) | (a->no_added ? MOE_TOK_NO_ADDED : 0u),
		.eos = eos,
		.sink = enc_sink,
		.ud = &st,
		.progress = enc_progress,
	};
	double t0 = moe_now();
	int rc = moe_tok_job_run(&job, in, n_in, &err);
	moe_progress_free(st.prog);
	if (rc < 0)
		fail(&err);
	if (st.w && moe_tokstream_writer_finish(st.w, &err) < 0)
		fail(&err);
	moe_tokstream_writer_free(st.w);
	out_commit(&o);
	double dt = moe_now() - t0;
	moe_info(2, "%" PRIu64 " documents, %" PRIu64 " tokens, %.1f MB in %.2f s (%.2f MB/s)", job.docs,
		 job.tokens, (double)job.bytes / 1e6, dt, dt > 0 ? (double)job.bytes / 1e6 / dt : 0.0);
	close_inputs(in, n_in);
	moe_tok_free(t);
	return 0;
}

/* ---- decode ------------------------------------------------------------------ */

static void write_doc(FILE *fp, enum fmt fmt, const struct moe_tok_bytes *b)
{
	if (fmt == FMT_TEXT) {
		fwrite(b->data, 1, b->n, fp);
		fputc('\n', fp);
		return;
	}
	/* JSON needs valid UTF-8: encode with U+FFFD for split characters */
	json_t *s = json_stringn(b->data, b->n);
	if (!s) {
		struct moe_tok_bytes fixed = {0};
		for (size_t i = 0; i < b->n;) {
			unsigned char c = (unsigned char)b->data[i];
			size_t l = c < 0x80 ? 1 : c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : 2;
			json_t *probe = i + l <= b->n ? json_stringn(b->data + i, l) : NULL;
			const char *src = probe ? b->data + i : "\xEF\xBF\xBD";
			size_t sl = probe ? l : 3;
			if (fixed.n + sl + 1 > fixed.cap) {
				fixed.cap = (fixed.cap + sl + 1) * 2;
				fixed.data = realloc(fixed.data, fixed.cap);
				if (!fixed.data)
					moe_die("out of memory");
			}
			memcpy(fixed.data + fixed.n, src, sl);
			fixed.n += sl;
			i += probe ? l : 1;
			json_decref(probe);
		}
		s = json_stringn(fixed.data ? fixed.data : "", fixed.n);
		moe_tok_bytes_release(&fixed);
	}
	json_t *o = json_pack("{s:o}", "text", s);
	char *str = json_dumps(o, JSON_COMPACT);
	json_decref(o);
	if (!str)
		moe_die("out of memory");
	fputs(str, fp);
	fputc('\n', fp);
	free(str);
}

static int cmd_decode(const struct args *a)
{
	struct moe_tok *t = load_tok(a->tokenizer);
	enum fmt fmt = FMT_TEXT;
	if (a->format) {
		if (strcmp(a->format, "text") == 0)
			fmt = FMT_TEXT;
		else if (strcmp(a->format, "jsonl") == 0)
			fmt = FMT_JSONL;
		else
			moe_usage_error("--format: expected text or jsonl, not '%s'", a->format);
	}
	if (a->n_files > 1)
		moe_usage_error("decode takes at most one input");
	const char *name = a->n_files ? a->files[0] : "-";
	FILE *in = strcmp(name, "-") == 0 ? stdin : fopen(name, "rb");
	if (!in)
		moe_die("cannot open '%s': %s", name, strerror(errno));
	struct out o;
	out_open(&o, a->output);
	g_out = &o;
	struct moe_error err = {0};
	struct moe_tok_bytes text = {0};
	int c = getc(in);
	if (c != EOF)
		ungetc(c, in);
	if (c == 'M') {
		struct moe_tokstream_reader *r = moe_tokstream_reader_new(in, name, &err);
		if (!r)
			fail(&err);
		const struct moe_tokstream_info *info = moe_tokstream_reader_info(r);
		if (info->vocab_size != moe_tok_vocab_size(t))
			moe_warn("'%s' has vocabulary size %u but the tokenizer has %u", name,
				 info->vocab_size, moe_tok_vocab_size(t));
		const uint32_t *ids;
		size_t n;
		int rc;
		while ((rc = moe_tokstream_read_doc(r, &ids, &n, &err)) == 1) {
			if (!a->keep_eos && n && info->eos_id != MOE_NO_EOS && ids[n - 1] == info->eos_id)
				n--;
			text.n = 0;
			if (moe_tok_decode(t, ids, n, a->skip_special, &text, &err) < 0)
				fail(&err);
			write_doc(o.fp, fmt, &text);
		}
		if (rc < 0)
			fail(&err);
		moe_tokstream_reader_free(r);
	} else {
		/* lines of space-separated ids, or JSON objects with "ids" */
		char *line = NULL;
		size_t cap = 0;
		ssize_t got;
		uint64_t lineno = 0;
		struct moe_tok_ids ids = {0};
		while ((got = getline(&line, &cap, in)) >= 0) {
			lineno++;
			ids.n = 0;
			char *p = line;
			while (*p == ' ' || *p == '\t')
				p++;
			if (*p == '{') {
				/* a JSON object with an "ids" array (encode --format jsonl) */
				json_error_t je;
				json_t *obj = json_loads(p, JSON_ALLOW_NUL, &je), *arr = json_object_get(obj, "ids"), *v;
				size_t k;
				if (!json_is_array(arr)) {
					moe_error_set(&err, MOE_EFORMAT, "%s:%" PRIu64 ": %s", name, lineno,
						      obj ? "no \"ids\" array" : je.text);
					fail(&err);
				}
				json_array_foreach(arr, k, v)
				{
					json_int_t x = json_integer_value(v);
					if (!json_is_integer(v) || x < 0 || x >= (json_int_t)moe_tok_vocab_size(t)) {
						moe_error_set(&err, MOE_EFORMAT, "%s:%" PRIu64 ": ids[%zu]: bad token id",
							      name, lineno, k);
						fail(&err);
					}
					if (ids.n == ids.cap) {
						ids.cap = ids.cap ? ids.cap * 2 : 1024;
						ids.ids = realloc(ids.ids, ids.cap * sizeof *ids.ids);
						if (!ids.ids)
							moe_die("out of memory");
					}
					ids.ids[ids.n++] = (uint32_t)x;
				}
				json_decref(obj);
				*p = 0;
			}
			for (;;) {
				while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r' || *p == ',')
					p++;
				if (!*p)
					break;
				char *end;
				errno = 0;
				unsigned long long v = strtoull(p, &end, 10);
				if (end == p || errno || v >= moe_tok_vocab_size(t) || *p == '-') {
					moe_error_set(&err, MOE_EFORMAT, "%s:%" PRIu64 ": bad token id '%.20s'", name,
						      lineno, p);
					fail(&err);
				}
				if (ids.n == ids.cap) {
					ids.cap = ids.cap ? ids.cap * 2 : 1024;
					ids.ids = realloc(ids.ids, ids.cap * sizeof *ids.ids);
					if (!ids.ids)
						moe_die("out of memory");
				}
				ids.ids[ids.n++] = (uint32_t)v;
				p = end;
			}
			text.n = 0;
			if (moe_tok_decode(t, ids.ids, ids.n, a->skip_special, &text, &err) < 0) {
				moe_error_prefix(&err, "%s:%" PRIu64, name, lineno);
				fail(&err);
			}
			write_doc(o.fp, fmt, &text);
		}
		if (ferror(in)) {
			moe_error_errno(&err, "%s: read error", name);
			fail(&err);
		}
		free(line);
		moe_tok_ids_release(&ids);
	}
	if (ferror(o.fp)) {
		moe_error_errno(&err, "%s: write error", o.name);
		fail(&err);
	}
	moe_tok_bytes_release(&text);
	out_commit(&o);
	if (in != stdin)
		fclose(in);
	moe_tok_free(t);
	return 0;
}

/* ---- train --------------------------------------------------------------------- */

static int cmd_train(const struct args *a)
{
	if (!a->output)
		moe_usage_error("train: -o/--output is required");
	if (!a->vocab_size)
		moe_usage_error("train: --vocab-size is required");
	int nt = a->threads < 1 ? 1 : a->threads;
	struct moe_tok_trainer **tr = calloc((size_t)nt, sizeof *tr);
	if (!tr)
		moe_die("out of memory");
	for (int i = 0; i < nt; i++)
		if (!(tr[i] = moe_tok_trainer_new()))
			moe_die("out of memory");
	size_t n_in;
	struct moe_tok_input *in = open_inputs(a, &n_in);
	struct moe_error err = {0};
	struct enc_state st = {0};
	st.prog = moe_progress_new("count", inputs_size(in, n_in), "B");
	struct moe_tok_job job = {
		.threads = nt,
		.text_lines = a->text,
		.field = a->field ? a->field : "text",
		.eos = MOE_TOK_NONE,
		.ud = &st,
		.progress = enc_progress,
		.trainers = tr,
	};
	double t0 = moe_now();
	if (moe_tok_job_run(&job, in, n_in, &err) < 0)
		moe_die_error(&err);
	moe_progress_free(st.prog);
	for (int i = 1; i < nt; i++)
		if (moe_tok_trainer_merge(tr[0], tr[i], &err) < 0)
			moe_die_error(&err);
	double t1 = moe_now();
	static const char *const def_special[] = {"<|endoftext|>"};
	struct moe_tok_train_opts opts = {
		.vocab_size = a->vocab_size,
		.special = a->n_special ? a->special : def_special,
		.n_special = a->n_special ? a->n_special : 1,
		.min_frequency = a->min_freq,
		.threads = nt,
	};
	json_t *j = moe_tok_trainer_finish(tr[0], &opts, &err);
	if (!j)
		moe_die_error(&err);
	double t2 = moe_now();
	if (moe_json_save_file(j, a->output, &err) < 0)
		moe_die_error(&err);
	moe_info(2, "%" PRIu64 " documents, %.1f MB: counting %.2f s, merges %.2f s", job.docs,
		 (double)job.bytes / 1e6, t1 - t0, t2 - t1);
	json_decref(j);
	for (int i = 0; i < nt; i++)
		moe_tok_trainer_free(tr[i]);
	free(tr);
	close_inputs(in, n_in);
	return 0;
}

/* ---- info -------------------------------------------------------------------- */

static int cmd_info(const struct args *a)
{
	struct moe_tok *t = load_tok(a->tokenizer);
	json_t *d = moe_tok_describe(t);
	if (!d)
		moe_die("out of memory");
	if (a->json) {
		char *s = json_dumps(d, JSON_INDENT(2) | JSON_PRESERVE_ORDER);
		if (!s)
			moe_die("out of memory");
		puts(s);
		free(s);
	} else {
		printf("file:          %s\n", json_string_value(json_object_get(d, "path")));
		printf("format:        %s\n", json_string_value(json_object_get(d, "format")));
		printf("sha256:        %s\n", json_string_value(json_object_get(d, "sha256")));
		printf("vocab size:    %u\n", moe_tok_vocab_size(t));
		printf("merges:        %" JSON_INTEGER_FORMAT "\n",
		       json_integer_value(json_object_get(d, "n_merges")));
		if (moe_tok_eos_id(t) == MOE_TOK_NONE)
			printf("eos:           none\n");
		else
			printf("eos:           %u %s\n", moe_tok_eos_id(t),
			       moe_tok_token_str(t, moe_tok_eos_id(t)));
		json_t *v;
		size_t i;
		printf("normalizer:    ");
		json_array_foreach(json_object_get(d, "normalizers"), i, v)
			printf("%s%s", i ? ", " : "", json_string_value(v));
		printf("%s\n", json_array_size(json_object_get(d, "normalizers")) ? "" : "none");
		printf("pre-tokenizer: ");
		json_array_foreach(json_object_get(d, "splits"), i, v)
			printf("%s%s", i ? ", " : "", json_string_value(v));
		printf("%s%s, byte-level\n", json_array_size(json_object_get(d, "splits")) ? "" : "none",
		       json_is_true(json_object_get(d, "add_prefix_space")) ? ", prefix space" : "");
		json_t *ad = json_object_get(d, "added_tokens");
		printf("added tokens:  %zu\n", json_array_size(ad));
		json_array_foreach(ad, i, v)
		{
			json_t *c = json_object_get(v, "content");
			char *s = json_dumps(c, JSON_ENCODE_ANY | JSON_ENSURE_ASCII);
			printf("  %6" JSON_INTEGER_FORMAT " %s%s\n", json_integer_value(json_object_get(v, "id")),
			       s ? s : "?", json_is_true(json_object_get(v, "special")) ? " (special)" : "");
			free(s);
		}
	}
	json_decref(d);
	moe_tok_free(t);
	moe_close_stdout();
	return 0;
}

int main(int argc, char **argv)
{
	moe_diag_init(argv[0]);
	struct args a = {.threads = 1, .min_freq = 2};
	int c;
	struct moe_error err = {0};
	uint64_t v;
	/* options may come before or after the subcommand */
	while ((c = getopt_long(argc, argv, "+t:o:j:fqvhV", long_opts, NULL)) != -1 || optind < argc) {
		if (c == -1) {
			if (!a.cmd)
				a.cmd = argv[optind++];
			else {
				char **nf = realloc(a.files, (a.n_files + 1) * sizeof *nf);
				if (!nf)
					moe_die("out of memory");
				a.files = nf;
				a.files[a.n_files++] = argv[optind++];
			}
			continue;
		}
		switch (c) {
		case 't':
			a.tokenizer = optarg;
			break;
		case 'o':
			a.output = optarg;
			break;
		case 'j':
			if (moe_parse_u64(optarg, 1024, &v, "thread count", &err) < 0 || v == 0)
				moe_usage_error("-j: expected 1..1024, not '%s'", optarg);
			a.threads = (int)v;
			break;
		case 'f':
			a.force = true;
			break;
		case OPT_FIELD:
			a.field = optarg;
			break;
		case OPT_TEXT:
			a.text = true;
			break;
		case OPT_LOSSY:
			a.lossy = true;
			break;
		case OPT_EOS:
			a.eos = optarg;
			break;
		case OPT_FORMAT:
			a.format = optarg;
			break;
		case OPT_NO_ADDED:
			a.no_added = true;
			break;
		case OPT_SKIP_SPECIAL:
			a.skip_special = true;
			break;
		case OPT_KEEP_EOS:
			a.keep_eos = true;
			break;
		case OPT_VOCAB_SIZE:
			if (moe_parse_u64(optarg, 1u << 30, &v, "vocabulary size", &err) < 0 || v == 0)
				moe_usage_error("--vocab-size: expected a positive number, not '%s'", optarg);
			a.vocab_size = (uint32_t)v;
			break;
		case OPT_SPECIAL: {
			const char **ns = realloc(a.special, (a.n_special + 1) * sizeof *ns);
			if (!ns)
				moe_die("out of memory");
			a.special = ns;
			a.special[a.n_special++] = optarg;
			break;
		}
		case OPT_MIN_FREQ:
			if (moe_parse_u64(optarg, UINT32_MAX, &v, "minimum frequency", &err) < 0)
				moe_usage_error("--min-frequency: expected a number, not '%s'", optarg);
			a.min_freq = (uint32_t)v;
			break;
		case OPT_JSON:
			a.json = true;
			break;
		default: /* -q, -v, -h, -V, or a usage error */
			moe_tool_option(c, usage);
			break;
		}
	}
	if (!a.cmd)
		moe_usage_error("missing command (encode, decode, train or info)");
	moe_cleanup_install();
	int (*fn)(const struct args *) = NULL;
	if (strcmp(a.cmd, "encode") == 0)
		fn = cmd_encode;
	else if (strcmp(a.cmd, "decode") == 0)
		fn = cmd_decode;
	else if (strcmp(a.cmd, "train") == 0)
		fn = cmd_train;
	else if (strcmp(a.cmd, "info") == 0) {
		if (a.n_files)
			moe_usage_error("info takes no operands");
		fn = cmd_info;
	}
	if (fn) {
		int rc = fn(&a);
		free(a.files);
		free(a.special);
		return rc;
	}
	moe_usage_error("unknown command '%s'", a.cmd);
}
