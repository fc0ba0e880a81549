/*
 * The token stream (moe-tokstream(5)): a header, one record per document and
 * an end record.  Sequential only, so that it works through pipes.
 */
#include <errno.h>
#include <stdlib.h>
#include <string.h>

#include "data/tokstream.h"

#define FIELDS_LEN 48         /* vocab, width, eos, reserved, sha256 */
#define END_MARK 0xFFFFFFFFu  /* n_tokens of the end record */
#define CHUNK_TOKENS (1u << 20) /* read long documents in pieces */

struct moe_tokstream_writer {
	FILE *fp;
	char *where;
	struct moe_tokstream_info info;
	uint64_t n_docs;
	uint64_t n_tokens;
	uint8_t *buf; /* token bytes of the current document */
	size_t cap;
	bool failed;
};

struct moe_tokstream_reader {
	FILE *fp;
	char *where;
	struct moe_tokstream_info info;
	uint64_t offset; /* bytes consumed so far */
	uint64_t n_docs;
	uint64_t n_tokens;
	uint8_t *raw; /* token bytes of the current document */
	size_t raw_cap;
	uint32_t *ids;
	size_t ids_cap;
	bool done;
	bool failed;
};

static char *dup_where(const char *where)
{
	return strdup(where ? where : "<stream>");
}

static int check_info(const struct moe_tokstream_info *info, const char *where,
		      struct moe_error *err)
{
	if (info->vocab_size == 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: vocab_size is 0", where);
	if (info->token_width != 2 && info->token_width != 4)
		return moe_error_set(err, MOE_EFORMAT, "%s: token_width %u (must be 2 or 4)", where,
				     info->token_width);
	if (info->token_width == 2 && info->vocab_size > 65536)
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: vocab_size %u does not fit token_width 2", where,
				     info->vocab_size);
	if (info->eos_id != MOE_NO_EOS && info->eos_id >= info->vocab_size)
		return moe_error_set(err, MOE_EFORMAT, "%s: eos_id %u >= vocab_size %u", where,
				     info->eos_id, info->vocab_size);
	return 0;
}

/* ---- writer ------------------------------------------------------------ */

static int write_all(struct moe_tokstream_writer *w, const void *p, size_t n,
		     struct moe_error *err)
{
	if (n && fwrite(p, 1, n, w->fp) != n) {
		w->failed = true;
		return moe_error_errno(err, "%s: write failed", w->where);
	}
	return 0;
}

struct moe_tokstream_writer *moe_tokstream_writer_new(FILE *fp, const struct moe_tokstream_info *info,
						      const char *where, struct moe_error *err)
{
	struct moe_tokstream_writer *w = calloc(1, sizeof(*w));
	if (!w) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	w->fp = fp;
	w->where = dup_where(where);
	w->info = *info;
	if (!w->where) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	if (w->info.token_width == 0)
		w->info.token_width = w->info.vocab_size <= 65536 ? 2 : 4;
	if (check_info(&w->info, w->where, err) < 0)
		goto out_free;

	struct moe_header h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, MOE_TOKSTREAM_MAGIC, sizeof(MOE_TOKSTREAM_MAGIC));
	h.version = MOE_TOKSTREAM_VERSION;
	h.payload_size = MOE_SIZE_UNKNOWN;
	h.payload_hash = 0;
	h.flags = 0;
	h.fields_len = FIELDS_LEN;
	moe_put_u32(h.fields + 0, w->info.vocab_size);
	moe_put_u32(h.fields + 4, w->info.token_width);
	moe_put_u32(h.fields + 8, w->info.eos_id);
	moe_put_u32(h.fields + 12, 0);
	memcpy(h.fields + 16, w->info.tokenizer_sha256, 32);
	uint8_t buf[MOE_HEADER_COMMON + FIELDS_LEN + 8];
	int n = moe_header_encode(&h, buf, sizeof(buf), err);
	if (n < 0)
		goto out_free;
	if (write_all(w, buf, (size_t)n, err) < 0)
		goto out_free;
	return w;
out_free:
	moe_tokstream_writer_free(w);
	return NULL;
}

int moe_tokstream_write_doc(struct moe_tokstream_writer *w, const uint32_t *ids, size_t n,
			    struct moe_error *err)
{
	if (w->failed)
		return moe_error_set(err, MOE_EINVAL, "%s: writer failed earlier", w->where);
	if (n >= END_MARK)
		return moe_error_set(err, MOE_ERANGE, "%s: document %llu has %zu tokens (too many)",
				     w->where, (unsigned long long)w->n_docs, n);
	size_t width = w->info.token_width;
	size_t bytes = n * width;
	if (bytes > w->cap) {
		size_t cap = w->cap ? w->cap : 4096;
		while (cap < bytes)
			cap *= 2;
		uint8_t *p = realloc(w->buf, cap);
		if (!p)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		w->buf = p;
		w->cap = cap;
	}
	for (size_t i = 0; i < n; i++) {
		if (ids[i] >= w->info.vocab_size)
			return moe_error_set(err, MOE_ERANGE,
					     "%s: document %llu token %zu: id %u >= vocab_size %u",
					     w->where, (unsigned long long)w->n_docs, i, ids[i],
					     w->info.vocab_size);
		if (width == 2) {
			w->buf[2 * i] = (uint8_t)ids[i];
			w->buf[2 * i + 1] = (uint8_t)(ids[i] >> 8);
		} else {
			moe_put_u32(w->buf + 4 * i, ids[i]);
		}
	}
	uint8_t rec[8];
	moe_put_u32(rec, (uint32_t)n);
	moe_put_u32(rec + 4, (uint32_t)moe_hash64(bytes ? (const void *)w->buf : "", bytes));
	if (write_all(w, rec, 8, err) < 0 || write_all(w, w->buf, bytes, err) < 0)
		return err ? err->code : MOE_EIO;
	w->n_docs++;
	w->n_tokens += n;
	return 0;
}

int moe_tokstream_writer_finish(struct moe_tokstream_writer *w, struct moe_error *err)
{
	if (w->failed)
		return moe_error_set(err, MOE_EINVAL, "%s: writer failed earlier", w->where);
	uint8_t rec[32];
	moe_put_u32(rec, END_MARK);
	moe_put_u32(rec + 4, 0);
	moe_put_u64(rec + 8, w->n_docs);
	moe_put_u64(rec + 16, w->n_tokens);
	moe_put_u64(rec + 24, moe_hash64(rec, 24));
	if (write_all(w, rec, sizeof(rec), err) < 0)
		return err ? err->code : MOE_EIO;
	if (fflush(w->fp) != 0 || ferror(w->fp)) {
		w->failed = true;
		return moe_error_errno(err, "%s: write failed", w->where);
	}
	return 0;
}

void moe_tokstream_writer_free(struct moe_tokstream_writer *w)
{
	if (!w)
		return;
	free(w->buf);
	free(w->where);
	free(w);
}

/* ---- reader ------------------------------------------------------------ */

/* Read exactly n bytes; a short read is a truncation naming `what`. */
static int read_exact(struct moe_tokstream_reader *r, void *p, size_t n, const char *what,
		      struct moe_error *err)
{
	size_t got = n ? fread(p, 1, n, r->fp) : 0;
	if (got != n) {
		r->failed = true;
		if (ferror(r->fp))
			return moe_error_errno(err, "%s: read failed at offset %llu", r->where,
					       (unsigned long long)(r->offset + got));
		return moe_error_set(err, MOE_ETRUNC,
				     "%s: truncated at offset %llu (in %s; stream has no end record)",
				     r->where, (unsigned long long)(r->offset + got), what);
	}
	r->offset += n;
	return 0;
}

struct moe_tokstream_reader *moe_tokstream_reader_new(FILE *fp, const char *where,
						      struct moe_error *err)
{
	struct moe_tokstream_reader *r = calloc(1, sizeof(*r));
	if (!r) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	r->fp = fp;
	r->where = dup_where(where);
	if (!r->where) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	struct moe_header h;
	char magic[8] = {0};
	memcpy(magic, MOE_TOKSTREAM_MAGIC, sizeof(MOE_TOKSTREAM_MAGIC));
	if (moe_header_read(&h, fp, magic, MOE_TOKSTREAM_VERSION, r->where, err) < 0)
		goto out_free;
	if (h.fields_len < FIELDS_LEN) {
		moe_error_set(err, MOE_EFORMAT, "%s: header fields are %u bytes (need %d)", r->where,
			      h.fields_len, FIELDS_LEN);
		goto out_free;
	}
	if (h.payload_size != MOE_SIZE_UNKNOWN || h.payload_hash != 0 || h.flags != 0) {
		moe_error_set(err, MOE_EFORMAT,
			      "%s: header payload_size/payload_hash/flags must be unset in a token stream",
			      r->where);
		goto out_free;
	}
	r->offset = h.header_size;
	r->info.vocab_size = moe_get_u32(h.fields + 0);
	r->info.token_width = moe_get_u32(h.fields + 4);
	r->info.eos_id = moe_get_u32(h.fields + 8);
	if (moe_get_u32(h.fields + 12) != 0) {
		moe_error_set(err, MOE_EFORMAT, "%s: reserved header field (offset %d) is not 0",
			      r->where, MOE_HEADER_COMMON + 12);
		goto out_free;
	}
	memcpy(r->info.tokenizer_sha256, h.fields + 16, 32);
	if (check_info(&r->info, r->where, err) < 0)
		goto out_free;
	return r;
out_free:
	moe_tokstream_reader_free(r);
	return NULL;
}

const struct moe_tokstream_info *moe_tokstream_reader_info(const struct moe_tokstream_reader *r)
{
	return &r->info;
}

/* Grow *p (a malloc'd block of *cap bytes) to at least need bytes. */
static void *grow(void *p, size_t *cap, size_t need)
{
	if (need <= *cap)
		return p;
	size_t c = *cap ? *cap : 4096;
	while (c < need)
		c *= 2;
	void *q = realloc(p, c);
	if (q)
		*cap = c;
	return q;
}

static int read_end(struct moe_tokstream_reader *r, const uint8_t rec[8], struct moe_error *err)
{
	uint64_t at = r->offset - 8;
	uint8_t tail[24];
	uint8_t all[32];
	if (moe_get_u32(rec + 4) != 0) {
		r->failed = true;
		return moe_error_set(err, MOE_EFORMAT, "%s: offset %llu: bad end record", r->where,
				     (unsigned long long)at);
	}
	if (read_exact(r, tail, sizeof(tail), "the end record", err) < 0)
		return err ? err->code : MOE_ETRUNC;
	memcpy(all, rec, 8);
	memcpy(all + 8, tail, 24);
	r->failed = true; /* until proven good */
	if (moe_get_u64(all + 24) != moe_hash64(all, 24))
		return moe_error_set(err, MOE_ECHECKSUM, "%s: offset %llu: end record checksum mismatch",
				     r->where, (unsigned long long)at);
	uint64_t nd = moe_get_u64(all + 8), nt = moe_get_u64(all + 16);
	if (nd != r->n_docs || nt != r->n_tokens)
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: offset %llu: end record counts %llu docs / %llu tokens, "
				     "stream had %llu / %llu",
				     r->where, (unsigned long long)at, (unsigned long long)nd,
				     (unsigned long long)nt, (unsigned long long)r->n_docs,
				     (unsigned long long)r->n_tokens);
	int c = fgetc(r->fp);
	if (c != EOF)
		return moe_error_set(err, MOE_EFORMAT, "%s: offset %llu: data after the end record",
				     r->where, (unsigned long long)r->offset);
	if (ferror(r->fp))
		return moe_error_errno(err, "%s: read failed at offset %llu", r->where,
				       (unsigned long long)r->offset);
	r->failed = false;
	r->done = true;
	return 0;
}

int moe_tokstream_read_doc(struct moe_tokstream_reader *r, const uint32_t **ids, size_t *n,
			   struct moe_error *err)
{
	if (r->done)
		return 0;
	if (r->failed)
		return moe_error_set(err, MOE_EINVAL, "%s: reader failed earlier", r->where);
	uint8_t rec[8];
	uint64_t rec_at = r->offset;
	size_t got = fread(rec, 1, 8, r->fp);
	if (got != 8) {
		r->failed = true;
		if (ferror(r->fp))
			return moe_error_errno(err, "%s: read failed at offset %llu", r->where,
					       (unsigned long long)rec_at);
		return moe_error_set(err, MOE_ETRUNC,
				     "%s: truncated at offset %llu after %llu documents (no end record)",
				     r->where, (unsigned long long)(rec_at + got),
				     (unsigned long long)r->n_docs);
	}
	r->offset += 8;
	uint32_t nt = moe_get_u32(rec);
	if (nt == END_MARK)
		return read_end(r, rec, err);
	uint32_t check = moe_get_u32(rec + 4);
	size_t width = r->info.token_width;
	/* Grow the buffer as bytes actually arrive so that a hostile count
	 * cannot make us allocate gigabytes before hitting the end. */
	size_t have = 0;
	while (have < nt) {
		size_t want = nt - have;
		if (want > CHUNK_TOKENS)
			want = CHUNK_TOKENS;
		uint8_t *raw = grow(r->raw, &r->raw_cap, (have + want) * width);
		if (!raw) {
			r->failed = true;
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		}
		r->raw = raw;
		if (read_exact(r, r->raw + have * width, want * width, "a document", err) < 0)
			return err ? err->code : MOE_ETRUNC;
		have += want;
	}
	size_t bytes = (size_t)nt * width;
	if ((uint32_t)moe_hash64(bytes ? (const void *)r->raw : "", bytes) != check) {
		r->failed = true;
		return moe_error_set(err, MOE_ECHECKSUM,
				     "%s: offset %llu: document %llu checksum mismatch", r->where,
				     (unsigned long long)rec_at, (unsigned long long)r->n_docs);
	}
	uint32_t *idbuf = grow(r->ids, &r->ids_cap, (size_t)nt * sizeof(uint32_t) + 4);
	if (!idbuf) {
		r->failed = true;
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	r->ids = idbuf;
	const uint8_t *p = r->raw;
	for (size_t i = 0; i < nt; i++) {
		uint32_t v = width == 2 ? (uint32_t)p[2 * i] | (uint32_t)p[2 * i + 1] << 8
				       : moe_get_u32(p + 4 * i);
		if (v >= r->info.vocab_size) {
			r->failed = true;
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: offset %llu: document %llu token %zu: id %u >= vocab_size %u",
					     r->where, (unsigned long long)(rec_at + 8 + i * width),
					     (unsigned long long)r->n_docs, i, v, r->info.vocab_size);
		}
		r->ids[i] = v;
	}
	r->n_docs++;
	r->n_tokens += nt;
	*ids = r->ids;
	*n = nt;
	return 1;
}

void moe_tokstream_reader_free(struct moe_tokstream_reader *r)
{
	if (!r)
		return;
	free(r->raw);
	free(r->ids);
	free(r->where);
	free(r);
}
