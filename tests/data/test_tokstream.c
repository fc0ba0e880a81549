/*
 * Token stream (moe-tokstream(5)): round trips, pipes, and rejection of every
 * truncation and single-byte corruption of a small stream.
 */
#include <criterion/criterion.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/core.h"
#include "data/tokstream.h"

static uint64_t rng(uint64_t *s)
{
	uint64_t z = (*s += 0x9E3779B97F4A7C15ull);
	z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
	z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
	return z ^ (z >> 31);
}

struct corpus {
	size_t n_docs;
	size_t *len;
	uint32_t **ids;
};

static void corpus_make(struct corpus *c, uint64_t seed, size_t n_docs, uint32_t vocab, size_t maxlen)
{
	uint64_t s = seed;
	c->n_docs = n_docs;
	c->len = calloc(n_docs, sizeof(*c->len));
	c->ids = calloc(n_docs, sizeof(*c->ids));
	for (size_t d = 0; d < n_docs; d++) {
		c->len[d] = (size_t)(rng(&s) % (maxlen + 1));
		c->ids[d] = malloc((c->len[d] + 1) * sizeof(uint32_t));
		for (size_t i = 0; i < c->len[d]; i++)
			c->ids[d][i] = (uint32_t)(rng(&s) % vocab);
	}
}

static void corpus_free(struct corpus *c)
{
	for (size_t d = 0; d < c->n_docs; d++)
		free(c->ids[d]);
	free(c->ids);
	free(c->len);
}

/* Write the corpus as a stream into a malloc'd buffer. */
static uint8_t *write_mem(const struct corpus *c, const struct moe_tokstream_info *info, size_t *len)
{
	char *buf = NULL;
	size_t n = 0;
	FILE *fp = open_memstream(&buf, &n);
	struct moe_error err = {0};
	struct moe_tokstream_writer *w = moe_tokstream_writer_new(fp, info, "mem", &err);
	cr_assert_not_null(w, "%s", err.msg);
	for (size_t d = 0; d < c->n_docs; d++)
		cr_assert_eq(moe_tokstream_write_doc(w, c->ids[d], c->len[d], &err), 0, "%s", err.msg);
	cr_assert_eq(moe_tokstream_writer_finish(w, &err), 0, "%s", err.msg);
	moe_tokstream_writer_free(w);
	fclose(fp);
	*len = n;
	return (uint8_t *)buf;
}

/* Read a whole stream from fp, comparing with c when given; returns 0 or
 * the first error code. */
static int read_all(FILE *fp, const struct corpus *c, struct moe_error *err)
{
	struct moe_tokstream_reader *r = moe_tokstream_reader_new(fp, "test", err);
	if (!r)
		return err->code;
	const uint32_t *ids;
	size_t n, d = 0;
	int rc;
	while ((rc = moe_tokstream_read_doc(r, &ids, &n, err)) > 0) {
		if (c) {
			cr_assert_lt(d, c->n_docs);
			cr_assert_eq(n, c->len[d], "doc %zu length", d);
			cr_assert(n == 0 || memcmp(ids, c->ids[d], n * 4) == 0, "doc %zu ids", d);
		}
		d++;
	}
	if (rc == 0 && c)
		cr_assert_eq(d, c->n_docs);
	moe_tokstream_reader_free(r);
	return rc;
}

static int read_buf(const uint8_t *buf, size_t len, const struct corpus *c, struct moe_error *err)
{
	FILE *fp = fmemopen(len ? (void *)buf : (void *)"", len, "rb");
	cr_assert_not_null(fp);
	int rc = read_all(fp, c, err);
	fclose(fp);
	return rc;
}

Test(tokstream, roundtrip_widths)
{
	uint32_t vocabs[] = {1, 2, 255, 65536, 65537, 50280, 1u << 24};
	uint32_t widths[] = {0, 4};
	for (size_t v = 0; v < sizeof(vocabs) / sizeof(*vocabs); v++)
		for (size_t wi = 0; wi < 2; wi++) {
			struct corpus c;
			corpus_make(&c, 100 + v, 60, vocabs[v], 200);
			struct moe_tokstream_info info = {.vocab_size = vocabs[v],
							  .token_width = widths[wi],
							  .eos_id = vocabs[v] - 1};
			memset(info.tokenizer_sha256, 0xab, 32);
			size_t len;
			uint8_t *buf = write_mem(&c, &info, &len);
			struct moe_error err = {0};
			FILE *fp = fmemopen(buf, len, "rb");
			struct moe_tokstream_reader *r = moe_tokstream_reader_new(fp, "t", &err);
			cr_assert_not_null(r, "%s", err.msg);
			const struct moe_tokstream_info *ri = moe_tokstream_reader_info(r);
			cr_assert_eq(ri->vocab_size, vocabs[v]);
			cr_assert_eq(ri->token_width,
				     widths[wi] ? widths[wi] : (vocabs[v] <= 65536 ? 2u : 4u));
			cr_assert_eq(ri->eos_id, vocabs[v] - 1);
			cr_assert_eq(ri->tokenizer_sha256[31], 0xab);
			moe_tokstream_reader_free(r);
			fclose(fp);
			cr_assert_eq(read_buf(buf, len, &c, &err), 0, "%s", err.msg);
			free(buf);
			corpus_free(&c);
		}
}

Test(tokstream, empty_stream_and_empty_docs)
{
	struct corpus c;
	corpus_make(&c, 5, 0, 10, 0);
	struct moe_tokstream_info info = {.vocab_size = 10, .eos_id = MOE_NO_EOS};
	size_t len;
	struct moe_error err = {0};
	uint8_t *buf = write_mem(&c, &info, &len);
	cr_assert_eq(read_buf(buf, len, &c, &err), 0, "%s", err.msg);
	free(buf);
	corpus_free(&c);
	corpus_make(&c, 6, 20, 10, 0); /* 20 empty documents */
	buf = write_mem(&c, &info, &len);
	cr_assert_eq(read_buf(buf, len, &c, &err), 0, "%s", err.msg);
	free(buf);
	corpus_free(&c);
}

struct pipe_job {
	int fd;
	const struct corpus *c;
};

static void *pipe_writer(void *arg)
{
	struct pipe_job *j = arg;
	FILE *fp = fdopen(j->fd, "wb");
	struct moe_tokstream_info info = {.vocab_size = 50280, .eos_id = 0};
	struct moe_error err = {0};
	struct moe_tokstream_writer *w = moe_tokstream_writer_new(fp, &info, "pipe", &err);
	for (size_t d = 0; w && d < j->c->n_docs; d++)
		moe_tokstream_write_doc(w, j->c->ids[d], j->c->len[d], &err);
	if (w)
		moe_tokstream_writer_finish(w, &err);
	moe_tokstream_writer_free(w);
	fclose(fp);
	return NULL;
}

Test(tokstream, through_a_pipe)
{
	struct corpus c;
	corpus_make(&c, 77, 400, 50280, 3000); /* far more than a pipe buffer */
	int fds[2];
	cr_assert_eq(pipe(fds), 0);
	struct pipe_job j = {fds[1], &c};
	pthread_t t;
	pthread_create(&t, NULL, pipe_writer, &j);
	FILE *in = fdopen(fds[0], "rb");
	struct moe_error err = {0};
	cr_assert_eq(read_all(in, &c, &err), 0, "%s", err.msg);
	fclose(in);
	pthread_join(t, NULL);
	corpus_free(&c);
}

Test(tokstream, every_truncation_fails)
{
	struct corpus c;
	corpus_make(&c, 9, 12, 300, 20);
	struct moe_tokstream_info info = {.vocab_size = 300, .eos_id = 299};
	size_t len;
	uint8_t *buf = write_mem(&c, &info, &len);
	for (size_t cut = 0; cut < len; cut++) {
		struct moe_error err = {0};
		int rc = read_buf(buf, cut, NULL, &err);
		cr_assert_lt(rc, 0, "prefix of %zu/%zu bytes accepted", cut, len);
		cr_assert_neq(err.msg[0], 0, "no message for cut %zu", cut);
		if (cut >= 96) /* past the header: the message names the offset */
			cr_assert(strstr(err.msg, "offset") != NULL, "cut %zu: %s", cut, err.msg);
	}
	free(buf);
	corpus_free(&c);
}

Test(tokstream, every_byte_flip_fails)
{
	struct corpus c;
	corpus_make(&c, 10, 8, 1000, 16);
	struct moe_tokstream_info info = {.vocab_size = 1000, .eos_id = MOE_NO_EOS};
	size_t len;
	uint8_t *buf = write_mem(&c, &info, &len);
	for (size_t i = 0; i < len; i++)
		for (int bit = 0; bit < 8; bit += 3) {
			buf[i] ^= (uint8_t)(1u << bit);
			struct moe_error err = {0};
			cr_assert_lt(read_buf(buf, len, NULL, &err), 0, "flip of byte %zu bit %d accepted",
				     i, bit);
			buf[i] ^= (uint8_t)(1u << bit);
		}
	struct moe_error err = {0};
	cr_assert_eq(read_buf(buf, len, NULL, &err), 0, "%s", err.msg);
	free(buf);
	corpus_free(&c);
}

Test(tokstream, wrong_version_and_magic)
{
	struct corpus c;
	corpus_make(&c, 11, 3, 100, 10);
	struct moe_tokstream_info info = {.vocab_size = 100, .eos_id = MOE_NO_EOS};
	size_t len;
	uint8_t *buf = write_mem(&c, &info, &len);
	uint32_t hs = moe_get_u32(buf + 12);
	moe_put_u32(buf + 8, 2); /* version 2, with a valid header checksum */
	moe_put_u64(buf + hs - 8, moe_hash64(buf, hs - 8));
	struct moe_error err = {0};
	cr_assert_eq(read_buf(buf, len, NULL, &err), MOE_EVERSION, "%s", err.msg);
	cr_assert(strstr(err.msg, "version") != NULL, "%s", err.msg);
	moe_put_u32(buf + 8, 1);
	buf[0] = 'X';
	moe_put_u64(buf + hs - 8, moe_hash64(buf, hs - 8));
	cr_assert_eq(read_buf(buf, len, NULL, &err), MOE_EFORMAT, "%s", err.msg);
	free(buf);
	corpus_free(&c);
}

Test(tokstream, trailing_data_and_bad_ids)
{
	struct corpus c;
	corpus_make(&c, 12, 3, 100, 10);
	struct moe_tokstream_info info = {.vocab_size = 100, .eos_id = MOE_NO_EOS};
	size_t len;
	uint8_t *buf = write_mem(&c, &info, &len);
	uint8_t *more = malloc(len + 1);
	memcpy(more, buf, len);
	more[len] = 0;
	struct moe_error err = {0};
	cr_assert_lt(read_buf(more, len + 1, NULL, &err), 0);
	cr_assert(strstr(err.msg, "after the end record") != NULL, "%s", err.msg);
	free(more);
	free(buf);
	/* the writer refuses an id outside the vocabulary */
	char *mb = NULL;
	size_t ml = 0;
	FILE *fp = open_memstream(&mb, &ml);
	struct moe_tokstream_writer *w = moe_tokstream_writer_new(fp, &info, "mem", &err);
	uint32_t bad[] = {1, 2, 100};
	cr_assert_eq(moe_tokstream_write_doc(w, bad, 3, &err), MOE_ERANGE);
	moe_tokstream_writer_free(w);
	fclose(fp);
	free(mb);
	/* and a bad header is refused */
	struct moe_tokstream_info wide = {.vocab_size = 70000, .token_width = 2, .eos_id = MOE_NO_EOS};
	fp = open_memstream(&mb, &ml);
	cr_assert_null(moe_tokstream_writer_new(fp, &wide, "mem", &err));
	fclose(fp);
	free(mb);
	corpus_free(&c);
}

Test(tokstream, reader_rejects_ids_outside_vocab)
{
	/* written with vocab 1000, then the header claims 10: the check words
	 * still match, so only the id check can catch it */
	struct corpus c;
	corpus_make(&c, 13, 4, 1000, 30);
	c.len[0] = 2;
	c.ids[0][0] = 3;
	c.ids[0][1] = 500;
	struct moe_tokstream_info info = {.vocab_size = 1000, .eos_id = MOE_NO_EOS};
	size_t len;
	uint8_t *buf = write_mem(&c, &info, &len);
	uint32_t hs = moe_get_u32(buf + 12);
	moe_put_u32(buf + 40, 10);
	moe_put_u64(buf + hs - 8, moe_hash64(buf, hs - 8));
	struct moe_error err = {0};
	cr_assert_eq(read_buf(buf, len, NULL, &err), MOE_EFORMAT, "%s", err.msg);
	cr_assert(strstr(err.msg, "id 500 >= vocab_size 10") != NULL, "%s", err.msg);
	cr_assert(strstr(err.msg, "offset 106") != NULL, "%s", err.msg); /* 96 + 8 + 1 * 2 */
	free(buf);
	corpus_free(&c);
}
