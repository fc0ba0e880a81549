/* Opening a Parquet file and decoding column chunks page by page. */
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <snappy-c.h>
#include <zlib.h>
#include <zstd.h>

#include "parquet/internal.h"

/* Hostile-input limits: values per chunk and bytes per page. */
#ifndef PQ_MAX_VALUES
#define PQ_MAX_VALUES ((int64_t)1 << 28)
#endif
#ifndef PQ_MAX_PAGE
#define PQ_MAX_PAGE ((int64_t)1 << 30)
#endif
#define PQ_MAX_FOOTER ((uint64_t)1 << 30)
/* Chunks of this size or more are mapped from the file instead of read. */
#ifndef PQ_MAP_MIN
#define PQ_MAP_MIN ((size_t)1 << 20)
#endif

struct buf {
	uint8_t *p;
	size_t cap;
};

struct moe_pq_reader {
	struct buf raw;    /* compressed chunk bytes (file mode) */
	void *map;         /* or the chunk's pages mapped from the file */
	size_t map_len;
	struct buf *pool;  /* decompressed page buffers; [0] is scratch */
	size_t pool_n, pool_used;
	struct buf vals;   /* fixed-width output values */
	struct buf valid;  /* one byte per value */
	struct buf bytes;  /* struct moe_pq_bytes per value */
	struct buf dict;   /* dictionary: moe_pq_bytes entries, or fixed values */
	struct buf idx;    /* uint32 dictionary indices */
	struct buf levels; /* uint8 definition levels */
	/* MOE_PARQUET_SNAPPY=libsnappy: libsnappy decodes snappy pages;
	 * =bmi2: our decoder's BMI2 build (the default is the generic one) */
	bool libsnappy;
	enum pq_snappy_impl snappy_impl;
	/* MOE_PARQUET_MMAP=1: map large chunks instead of reading them */
	bool map_chunks;
};

static int buf_reserve(struct buf *b, size_t n)
{
	if (n <= b->cap)
		return 0;
	size_t cap = b->cap ? b->cap : 4096;
	while (cap < n)
		cap = cap > SIZE_MAX / 2 ? n : cap * 2;
	uint8_t *p = realloc(b->p, cap);
	if (!p)
		return -1;
	b->p = p;
	b->cap = cap;
	return 0;
}

/* ---- file ---------------------------------------------------------------- */

static int read_at(struct moe_pq_file *f, uint64_t off, void *dst, size_t len, struct moe_error *err)
{
	if (off > f->size || len > f->size - off)
		return moe_error_set(err, MOE_ETRUNC, "%s: read of %zu bytes at offset %llu past the end",
				     f->path, len, (unsigned long long)off);
	if (f->mem) {
		memcpy(dst, f->mem + off, len);
		return 0;
	}
	uint8_t *d = dst;
	while (len) {
		ssize_t n = pread(f->fd, d, len, (off_t)off);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return moe_error_errno(err, "%s: read at offset %llu", f->path,
					       (unsigned long long)off);
		if (n == 0)
			return moe_error_set(err, MOE_ETRUNC, "%s: unexpected end of file at offset %llu",
					     f->path, (unsigned long long)off);
		d += n;
		off += (uint64_t)n;
		len -= (size_t)n;
	}
	return 0;
}

static int open_common(struct moe_pq_file *f, struct moe_error *err)
{
	uint8_t tail[8], head[4];
	int rc;
	if (f->size < 12)
		return moe_error_set(err, MOE_EFORMAT, "%s: not a Parquet file (only %llu bytes)",
				     f->path, (unsigned long long)f->size);
	if ((rc = read_at(f, 0, head, 4, err)) || (rc = read_at(f, f->size - 8, tail, 8, err)))
		return rc;
	if (memcmp(tail + 4, "PARE", 4) == 0)
		return moe_error_set(err, MOE_EUNSUPPORTED, "%s: encrypted Parquet files are not supported",
				     f->path);
	if (memcmp(head, "PAR1", 4) != 0 || memcmp(tail + 4, "PAR1", 4) != 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: not a Parquet file (bad magic)", f->path);
	uint64_t flen = moe_get_u32(tail);
	if (flen > f->size - 12 || flen > PQ_MAX_FOOTER)
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: footer length %llu at offset %llu exceeds the file size",
				     f->path, (unsigned long long)flen, (unsigned long long)(f->size - 8));
	uint8_t *footer = malloc(flen ? flen : 1);
	if (!footer)
		return moe_error_set(err, MOE_ENOMEM, "%s: out of memory for a %llu-byte footer",
				     f->path, (unsigned long long)flen);
	rc = read_at(f, f->size - 8 - flen, footer, flen, err);
	if (rc == 0)
		rc = pq_parse_footer(f, footer, flen, err);
	free(footer);
	return rc;
}

/* Parquet needs random access: copy standard input to an unlinked
 * temporary file (in $TMPDIR) and return its descriptor. */
static int spool_stdin(struct moe_error *err)
{
	const char *dir = getenv("TMPDIR");
	char tmpl[4096];
	snprintf(tmpl, sizeof(tmpl), "%s/moe-parquet-XXXXXX", dir && *dir ? dir : "/tmp");
	int fd = mkstemp(tmpl);
	if (fd < 0)
		return moe_error_errno(err, "cannot create a temporary file in '%s'",
				       dir && *dir ? dir : "/tmp");
	unlink(tmpl);
	static uint8_t buf[1 << 16];
	for (;;) {
		ssize_t n = read(STDIN_FILENO, buf, sizeof(buf));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0) {
			close(fd);
			return moe_error_errno(err, "<stdin>: read error");
		}
		if (n == 0)
			break;
		for (ssize_t w = 0; w < n;) {
			ssize_t k = write(fd, buf + w, (size_t)(n - w));
			if (k < 0 && errno == EINTR)
				continue;
			if (k < 0) {
				close(fd);
				return moe_error_errno(err, "cannot write the copy of standard input");
			}
			w += k;
		}
	}
	return fd;
}

struct moe_pq_file *moe_pq_open(const char *path, struct moe_error *err)
{
	bool in = strcmp(path, "-") == 0;
	struct moe_pq_file *f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup(in ? "<stdin>" : path))) {
		free(f);
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	f->fd = in ? spool_stdin(err) : open(path, O_RDONLY | O_CLOEXEC);
	if (f->fd < 0) {
		if (!in)
			moe_error_errno(err, "cannot open '%s'", path);
		goto fail;
	}
	struct stat st;
	if (fstat(f->fd, &st) < 0) {
		moe_error_errno(err, "cannot stat '%s'", path);
		goto fail;
	}
	if (!S_ISREG(st.st_mode)) {
		moe_error_set(err, MOE_EINVAL, "%s: not a regular file", path);
		goto fail;
	}
	f->size = (uint64_t)st.st_size;
	posix_fadvise(f->fd, 0, 0, POSIX_FADV_SEQUENTIAL);
	if (open_common(f, err) < 0)
		goto fail;
	return f;
fail:
	moe_pq_close(f);
	return NULL;
}

static struct moe_pq_file *open_mem(const uint8_t *buf, size_t len, struct moe_error *err)
{
	struct moe_pq_file *f = calloc(1, sizeof(*f));
	if (!f || !(f->path = strdup("<memory>"))) {
		free(f);
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	f->fd = -1;
	f->mem = buf;
	f->size = len;
	if (open_common(f, err) < 0) {
		moe_pq_close(f);
		return NULL;
	}
	return f;
}

void moe_pq_close(struct moe_pq_file *f)
{
	if (!f)
		return;
	pq_free_meta(f);
	if (f->fd >= 0 && !f->mem)
		close(f->fd);
	free(f->path);
	free(f);
}

int64_t moe_pq_num_rows(const struct moe_pq_file *f) { return f->num_rows; }
int moe_pq_num_row_groups(const struct moe_pq_file *f) { return f->nrgs; }
int moe_pq_num_columns(const struct moe_pq_file *f) { return f->ncolumns; }
const char *moe_pq_path(const struct moe_pq_file *f) { return f->path; }

int64_t moe_pq_row_group_rows(const struct moe_pq_file *f, int rg)
{
	return rg >= 0 && rg < f->nrgs ? f->rgs[rg].num_rows : 0;
}

const struct moe_pq_column_info *moe_pq_column(const struct moe_pq_file *f, int col)
{
	return col >= 0 && col < f->ncolumns ? &f->columns[col] : NULL;
}

int moe_pq_chunk_info(const struct moe_pq_file *f, int rg, int col, struct moe_pq_chunk_info *out)
{
	if (rg < 0 || rg >= f->nrgs || col < 0 || col >= f->ncolumns)
		return MOE_EINVAL;
	const struct pq_chunk_meta *m = &f->rgs[rg].cols[col];
	out->codec = pq_codec_name(m->codec);
	out->encodings = m->encodings;
	out->num_values = m->num_values;
	out->compressed_size = m->total_compressed_size;
	out->uncompressed_size = m->total_uncompressed_size;
	out->has_dictionary_offset = m->dictionary_page_offset > 0;
	return 0;
}

const char *moe_pq_encoding_name(int e)
{
	return pq_encoding_name(e);
}

const char *moe_pq_created_by(const struct moe_pq_file *f)
{
	return f->created_by;
}

int moe_pq_find_column(const struct moe_pq_file *f, const char *name)
{
	for (int i = 0; i < f->ncolumns; i++)
		if (strcmp(f->columns[i].name, name) == 0)
			return i;
	return -1;
}

/* ---- reader -------------------------------------------------------------- */

struct moe_pq_reader *moe_pq_reader_new(void)
{
	struct moe_pq_reader *r = calloc(1, sizeof(struct moe_pq_reader));
	const char *s = getenv("MOE_PARQUET_SNAPPY");
	if (r && s && strcmp(s, "libsnappy") == 0)
		r->libsnappy = true;
	if (r && s && strcmp(s, "bmi2") == 0)
		r->snappy_impl = PQ_SNAPPY_BMI2;
	const char *mm = getenv("MOE_PARQUET_MMAP");
	if (r && mm && strcmp(mm, "1") == 0)
		r->map_chunks = true;
	return r;
}

void moe_pq_reader_free(struct moe_pq_reader *r)
{
	if (!r)
		return;
	free(r->raw.p);
	if (r->map)
		munmap(r->map, r->map_len);
	for (size_t i = 0; i < r->pool_n; i++)
		free(r->pool[i].p);
	free(r->pool);
	free(r->vals.p);
	free(r->valid.p);
	free(r->bytes.p);
	free(r->dict.p);
	free(r->idx.p);
	free(r->levels.p);
	free(r);
}

/* A page buffer: scratch (reused by every page) or a fresh one that stays
 * valid for the whole chunk. */
static uint8_t *pool_get(struct moe_pq_reader *r, size_t len, bool keep)
{
	size_t slot = 0;
	if (keep) {
		if (r->pool_used == 0)
			r->pool_used = 1;
		slot = r->pool_used;
	}
	if (slot >= r->pool_n) {
		size_t n = r->pool_n ? r->pool_n * 2 : 8;
		while (n <= slot)
			n *= 2;
		struct buf *p = realloc(r->pool, n * sizeof(*p));
		if (!p)
			return NULL;
		memset(p + r->pool_n, 0, (n - r->pool_n) * sizeof(*p));
		r->pool = p;
		r->pool_n = n;
	}
	if (buf_reserve(&r->pool[slot], len ? len : 1) < 0)
		return NULL;
	if (keep)
		r->pool_used++;
	return r->pool[slot].p;
}

/* ---- decoding context and errors ----------------------------------------- */

struct ctx {
	struct moe_pq_file *f;
	struct moe_pq_reader *r;
	const struct moe_pq_column_info *col;
	int rg;
	int page;
	uint64_t page_off;
	struct moe_error *err;
	/* dictionary */
	bool have_dict;
	size_t dict_n;
	const uint8_t *dict_fixed; /* fixed-width values (BA: r->dict) */
	/* output */
	size_t n, cap;
	bool any_null;
};

static int perr(struct ctx *c, int code, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static int perr(struct ctx *c, int code, const char *fmt, ...)
{
	char msg[300];
	va_list ap;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	if (c->page < 0)
		return moe_error_set(c->err, code, "%s: row group %d, column '%s': %s", c->f->path,
				     c->rg, c->col->name, msg);
	return moe_error_set(c->err, code, "%s: row group %d, column '%s', page %d (offset %llu): %s",
			     c->f->path, c->rg, c->col->name, c->page,
			     (unsigned long long)c->page_off, msg);
}

static size_t elem_size(const struct moe_pq_column_info *col)
{
	switch (col->type) {
	case MOE_PQ_BOOLEAN: return 1;
	case MOE_PQ_INT32: case MOE_PQ_FLOAT: return 4;
	case MOE_PQ_INT64: case MOE_PQ_DOUBLE: return 8;
	case MOE_PQ_INT96: return 12;
	default: return sizeof(struct moe_pq_bytes);
	}
}

static bool is_bytes(const struct moe_pq_column_info *col)
{
	return col->type == MOE_PQ_BYTE_ARRAY || col->type == MOE_PQ_FIXED_LEN_BYTE_ARRAY;
}

/* ---- codecs -------------------------------------------------------------- */

static const char *inflate_all(const uint8_t *src, size_t slen, uint8_t *dst, size_t dlen)
{
	z_stream z;
	memset(&z, 0, sizeof(z));
	if (inflateInit2(&z, 15 + 32) != Z_OK)
		return "gzip: cannot initialise zlib";
	const char *why = NULL;
	z.next_in = (Bytef *)src;
	z.avail_in = (uInt)slen;
	z.next_out = dst;
	z.avail_out = (uInt)dlen;
	uint8_t dummy;
	if (dlen == 0) {
		z.next_out = &dummy;
		z.avail_out = 0;
	}
	for (;;) {
		int zr = inflate(&z, Z_FINISH);
		if (zr == Z_STREAM_END) {
			/* another member may follow */
			if (z.avail_in == 0)
				break;
			if (inflateReset(&z) != Z_OK) {
				why = "gzip: reset failed";
				break;
			}
			continue;
		}
		if (zr == Z_BUF_ERROR && z.avail_out == 0 && z.avail_in > 0) {
			why = "gzip data decompresses to more than the page size";
			break;
		}
		why = zr == Z_DATA_ERROR ? "corrupt gzip data" : "truncated gzip data";
		break;
	}
	if (!why && dlen != 0 && z.avail_out != 0)
		why = "gzip data decompresses to fewer bytes than the page size";
	inflateEnd(&z);
	return why;
}

static int decompress(struct ctx *c, int codec, const uint8_t *src, size_t slen, uint8_t *dst,
		      size_t dlen)
{
	switch (codec) {
	case PQ_CODEC_SNAPPY: {
		size_t ul, hdr;
		if (pq_snappy_length(src, slen, &ul, &hdr) < 0)
			return perr(c, MOE_EFORMAT, "corrupt snappy data (length header)");
		if (ul != dlen)
			return perr(c, MOE_EFORMAT,
				    "snappy data decompresses to %zu bytes, the page header says %zu", ul,
				    dlen);
		if (c->r->libsnappy) {
			if (snappy_uncompress((const char *)src, slen, (char *)dst, &ul) != SNAPPY_OK)
				return perr(c, MOE_EFORMAT, "corrupt snappy data");
			return 0;
		}
		const char *why = pq_snappy_decompress_impl(c->r->snappy_impl, src, slen, dst, dlen);
		return why ? perr(c, MOE_EFORMAT, "corrupt snappy data: %s", why) : 0;
	}
	case PQ_CODEC_GZIP: {
		const char *why = inflate_all(src, slen, dst, dlen);
		return why ? perr(c, MOE_EFORMAT, "%s", why) : 0;
	}
	case PQ_CODEC_ZSTD: {
		uint8_t dummy;
		size_t n = ZSTD_decompress(dlen ? dst : &dummy, dlen, src, slen);
		if (ZSTD_isError(n))
			return perr(c, MOE_EFORMAT, "zstd: %s", ZSTD_getErrorName(n));
		if (n != dlen)
			return perr(c, MOE_EFORMAT,
				    "zstd data decompresses to %zu bytes, the page header says %zu", n, dlen);
		return 0;
	}
	default:
		return perr(c, MOE_EUNSUPPORTED, "unsupported compression codec %s",
			    pq_codec_name(codec));
	}
}

/* ---- RLE / bit-packed hybrid --------------------------------------------- */

static inline uint64_t load64(const uint8_t *p, const uint8_t *end)
{
	uint64_t v = 0;
	if (end - p >= 8) {
		memcpy(&v, p, 8);
	} else {
		for (int i = 0; p + i < end; i++)
			v |= (uint64_t)p[i] << (8 * i);
	}
	return v;
}

/* Decode up to n values of bit width bw (0..32); returns how many were
 * decoded (fewer when the data runs out) or -1 on a malformed run. */
static int64_t hybrid_decode(const uint8_t *p, const uint8_t *end, int bw, uint32_t *out, size_t n)
{
	size_t got = 0;
	size_t vbytes = (size_t)(bw + 7) / 8;
	uint32_t mask = bw == 32 ? 0xffffffffu : ((1u << bw) - 1);
	while (got < n && p < end) {
		uint64_t h = 0;
		int shift = 0;
		for (;;) {
			if (p >= end || shift > 63)
				return -1;
			uint8_t b = *p++;
			h |= (uint64_t)(b & 0x7f) << shift;
			shift += 7;
			if (!(b & 0x80))
				break;
		}
		if (h & 1) {
			uint64_t groups = h >> 1;
			uint64_t count = groups * 8;
			size_t avail = (size_t)(end - p);
			uint64_t need = groups * (uint64_t)bw;
			uint64_t take = count < n - got ? count : n - got;
			if (bw == 0) {
				memset(out + got, 0, take * sizeof(*out));
			} else {
				/* values whose bits lie inside the data */
				uint64_t have = (uint64_t)avail * 8 / (uint64_t)bw;
				if (take > have)
					take = have;
				for (uint64_t i = 0; i < take; i++) {
					uint64_t bit = i * (uint64_t)bw;
					const uint8_t *q = p + (bit >> 3);
					out[got + i] = (uint32_t)(load64(q, end) >> (bit & 7)) & mask;
				}
			}
			got += take;
			p += need < avail ? need : avail;
		} else {
			uint64_t count = h >> 1;
			if ((size_t)(end - p) < vbytes)
				return -1;
			uint32_t v = 0;
			for (size_t i = 0; i < vbytes; i++)
				v |= (uint32_t)p[i] << (8 * i);
			p += vbytes;
			if (bw < 32 && v > mask)
				return -1;
			uint64_t take = count < n - got ? count : n - got;
			for (uint64_t i = 0; i < take; i++)
				out[got + i] = v;
			got += take;
		}
	}
	return (int64_t)got;
}

static int bit_width(uint32_t max)
{
	int w = 0;
	while (max) {
		w++;
		max >>= 1;
	}
	return w;
}

/* ---- output helpers -------------------------------------------------------- */

static int grow_output(struct ctx *c, size_t more)
{
	struct moe_pq_reader *r = c->r;
	size_t need = c->n + more;
	if (need > (size_t)PQ_MAX_VALUES)
		return perr(c, MOE_EFORMAT, "too many values (%zu) in one column chunk", need);
	if (need <= c->cap)
		return 0;
	size_t cap = c->cap ? c->cap : 1024;
	while (cap < need)
		cap *= 2;
	if (buf_reserve(&r->valid, cap) < 0 ||
	    (is_bytes(c->col) ? buf_reserve(&r->bytes, cap * sizeof(struct moe_pq_bytes))
			      : buf_reserve(&r->vals, cap * elem_size(c->col))) < 0)
		return perr(c, MOE_ENOMEM, "out of memory for %zu values", cap);
	c->cap = cap;
	return 0;
}

/* Decode the nn non-null values of a page into output slots [c->n, c->n+nn). */
static int decode_values(struct ctx *c, int enc, const uint8_t *p, const uint8_t *end, size_t nn)
{
	struct moe_pq_reader *r = c->r;
	const struct moe_pq_column_info *col = c->col;
	size_t es = elem_size(col);

	if (enc == PQ_ENC_PLAIN_DICTIONARY || enc == PQ_ENC_RLE_DICTIONARY) {
		if (!c->have_dict)
			return perr(c, MOE_EFORMAT, "dictionary-encoded page without a dictionary page");
		if (nn == 0)
			return 0;
		if (p >= end)
			return perr(c, MOE_EFORMAT, "dictionary indices missing");
		int bw = *p++;
		if (bw > 32)
			return perr(c, MOE_EFORMAT, "bad dictionary index bit width %d", bw);
		if (buf_reserve(&r->idx, nn * sizeof(uint32_t)) < 0)
			return perr(c, MOE_ENOMEM, "out of memory");
		uint32_t *idx = (uint32_t *)r->idx.p;
		int64_t got = hybrid_decode(p, end, bw, idx, nn);
		if (got < 0)
			return perr(c, MOE_EFORMAT, "malformed RLE/bit-packed dictionary indices");
		if ((size_t)got < nn)
			return perr(c, MOE_EFORMAT, "only %lld of %zu dictionary indices present",
				    (long long)got, nn);
		uint32_t dn = (uint32_t)c->dict_n;
		if (is_bytes(col)) {
			const struct moe_pq_bytes *d = (const struct moe_pq_bytes *)r->dict.p;
			struct moe_pq_bytes *o = (struct moe_pq_bytes *)r->bytes.p + c->n;
			for (size_t i = 0; i < nn; i++) {
				uint32_t k = idx[i];
				if (k >= dn)
					return perr(c, MOE_EFORMAT,
						    "dictionary index %u out of range (dictionary has %u entries)",
						    k, dn);
				o[i] = d[k];
			}
		} else {
			uint8_t *o = r->vals.p + c->n * es;
			for (size_t i = 0; i < nn; i++) {
				uint32_t k = idx[i];
				if (k >= dn)
					return perr(c, MOE_EFORMAT,
						    "dictionary index %u out of range (dictionary has %u entries)",
						    k, dn);
				memcpy(o + i * es, c->dict_fixed + (size_t)k * es, es);
			}
		}
		return 0;
	}
	if (enc == PQ_ENC_RLE && col->type == MOE_PQ_BOOLEAN) {
		if (end - p < 4)
			return perr(c, MOE_EFORMAT, "truncated RLE boolean length");
		uint32_t len = moe_get_u32(p);
		p += 4;
		if (len > (size_t)(end - p))
			return perr(c, MOE_EFORMAT, "RLE boolean data runs past the page");
		if (buf_reserve(&r->idx, nn * sizeof(uint32_t) + 1) < 0)
			return perr(c, MOE_ENOMEM, "out of memory");
		uint32_t *idx = (uint32_t *)r->idx.p;
		int64_t got = hybrid_decode(p, p + len, 1, idx, nn);
		if (got < 0 || (size_t)got < nn)
			return perr(c, MOE_EFORMAT, "malformed RLE boolean values");
		for (size_t i = 0; i < nn; i++)
			r->vals.p[c->n + i] = (uint8_t)idx[i];
		return 0;
	}
	if (enc != PQ_ENC_PLAIN)
		return perr(c, MOE_EUNSUPPORTED, "unsupported encoding %s for %s", pq_encoding_name(enc),
			    moe_pq_type_name(col->type));

	size_t avail = (size_t)(end - p);
	switch (col->type) {
	case MOE_PQ_BYTE_ARRAY: {
		struct moe_pq_bytes *o = (struct moe_pq_bytes *)r->bytes.p + c->n;
		for (size_t i = 0; i < nn; i++) {
			if (end - p < 4)
				return perr(c, MOE_EFORMAT, "value %zu: truncated length", i);
			uint32_t len = moe_get_u32(p);
			p += 4;
			if (len > (size_t)(end - p))
				return perr(c, MOE_EFORMAT, "value %zu: length %u runs past the page", i,
					    len);
			o[i].ptr = p;
			o[i].len = len;
			p += len;
		}
		return 0;
	}
	case MOE_PQ_FIXED_LEN_BYTE_ARRAY: {
		size_t w = (size_t)col->type_length;
		if (avail / w < nn)
			return perr(c, MOE_EFORMAT, "page holds fewer than %zu values", nn);
		struct moe_pq_bytes *o = (struct moe_pq_bytes *)r->bytes.p + c->n;
		for (size_t i = 0; i < nn; i++) {
			o[i].ptr = p + i * w;
			o[i].len = (uint32_t)w;
		}
		return 0;
	}
	case MOE_PQ_BOOLEAN:
		if (avail < (nn + 7) / 8)
			return perr(c, MOE_EFORMAT, "page holds fewer than %zu booleans", nn);
		for (size_t i = 0; i < nn; i++)
			r->vals.p[c->n + i] = (p[i >> 3] >> (i & 7)) & 1;
		return 0;
	default:
		if (avail / es < nn)
			return perr(c, MOE_EFORMAT, "page holds fewer than %zu values", nn);
		memcpy(r->vals.p + c->n * es, p, nn * es);
		return 0;
	}
}

/* Move nn dense values at [c->n, c->n+nn) into their rows [c->n, c->n+nv)
 * given valid[]; null rows are zeroed. */
static void spread_nulls(struct ctx *c, size_t nv, size_t nn)
{
	struct moe_pq_reader *r = c->r;
	const uint8_t *valid = r->valid.p + c->n;
	if (nn == nv)
		return;
	size_t j = nn;
	if (is_bytes(c->col)) {
		struct moe_pq_bytes *o = (struct moe_pq_bytes *)r->bytes.p + c->n;
		for (size_t i = nv; i-- > 0;) {
			if (valid[i])
				o[i] = o[--j];
			else
				o[i] = (struct moe_pq_bytes){NULL, 0};
		}
	} else {
		size_t es = elem_size(c->col);
		uint8_t *o = r->vals.p + c->n * es;
		for (size_t i = nv; i-- > 0;) {
			if (valid[i])
				memmove(o + i * es, o + (--j) * es, es);
			else
				memset(o + i * es, 0, es);
		}
	}
}

/* Definition levels of nv values -> valid bytes; returns the non-null count
 * in *nn. */
static int decode_levels(struct ctx *c, const uint8_t *p, const uint8_t *end, int enc, size_t nv,
			 size_t *nn)
{
	struct moe_pq_reader *r = c->r;
	int bw = bit_width((uint32_t)c->col->max_def);
	if (buf_reserve(&r->idx, nv * sizeof(uint32_t) + 4) < 0)
		return perr(c, MOE_ENOMEM, "out of memory");
	uint32_t *lv = (uint32_t *)r->idx.p;
	if (enc == PQ_ENC_RLE) {
		int64_t got = hybrid_decode(p, end, bw, lv, nv);
		if (got < 0)
			return perr(c, MOE_EFORMAT, "malformed definition levels");
		if ((size_t)got < nv)
			return perr(c, MOE_EFORMAT, "only %lld definition levels for %zu values",
				    (long long)got, nv);
	} else if (enc == PQ_ENC_BIT_PACKED) {
		/* deprecated: MSB-first, no run headers */
		if ((uint64_t)(end - p) * 8 < (uint64_t)nv * (uint64_t)bw)
			return perr(c, MOE_EFORMAT, "only part of the definition levels present");
		for (size_t i = 0; i < nv; i++) {
			uint32_t v = 0;
			for (int b = 0; b < bw; b++) {
				size_t bit = i * (size_t)bw + (size_t)b;
				v = v << 1 | ((p[bit >> 3] >> (7 - (bit & 7))) & 1);
			}
			lv[i] = v;
		}
	} else {
		return perr(c, MOE_EUNSUPPORTED, "unsupported definition level encoding %s",
			    pq_encoding_name(enc));
	}
	uint8_t *valid = r->valid.p + c->n;
	uint32_t maxd = (uint32_t)c->col->max_def;
	size_t cnt = 0;
	for (size_t i = 0; i < nv; i++) {
		if (lv[i] > maxd)
			return perr(c, MOE_EFORMAT, "definition level %u above the maximum %u", lv[i],
				    maxd);
		valid[i] = lv[i] == maxd;
		cnt += valid[i];
	}
	*nn = cnt;
	return 0;
}

/* ---- pages --------------------------------------------------------------- */

struct page_header {
	int type;
	int64_t usize, csize;
	bool has_crc;
	uint32_t crc;
	/* data page v1/v2 and dictionary page */
	int64_t num_values;
	int64_t num_nulls, num_rows;
	int encoding;
	int def_encoding, rep_encoding;
	int64_t def_len, rep_len;
	bool is_compressed;
	bool has_sub;
};

static int parse_sub_header(struct tc *t, struct page_header *h, int which)
{
	int16_t last = 0, id;
	int ft;
	int64_t v;
	h->has_sub = true;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		if (which == 8 && id == 7 && (ft == TC_TRUE || ft == TC_FALSE)) {
			h->is_compressed = ft == TC_TRUE;
			continue;
		}
		bool intfield = ft == TC_I8 || ft == TC_I16 || ft == TC_I32 || ft == TC_I64;
		if (!intfield || id > 6) {
			if (tc_skip(t, ft) < 0)
				return -1;
			continue;
		}
		if (tc_int(t, ft, &v) < 0)
			return -1;
		if (id == 1) {
			h->num_values = v;
		} else if (which == 5) { /* DataPageHeader */
			if (id == 2)
				h->encoding = (int)(v < 0 || v > 100 ? 100 : v);
			else if (id == 3)
				h->def_encoding = (int)(v < 0 || v > 100 ? 100 : v);
			else if (id == 4)
				h->rep_encoding = (int)(v < 0 || v > 100 ? 100 : v);
		} else if (which == 7) { /* DictionaryPageHeader */
			if (id == 2)
				h->encoding = (int)(v < 0 || v > 100 ? 100 : v);
		} else { /* DataPageHeaderV2 */
			if (id == 2)
				h->num_nulls = v;
			else if (id == 3)
				h->num_rows = v;
			else if (id == 4)
				h->encoding = (int)(v < 0 || v > 100 ? 100 : v);
			else if (id == 5)
				h->def_len = v;
			else if (id == 6)
				h->rep_len = v;
		}
	}
}

static int parse_page_header(struct tc *t, struct page_header *h)
{
	int16_t last = 0, id;
	int ft;
	int64_t v;
	memset(h, 0, sizeof(*h));
	h->type = -1;
	h->is_compressed = true;
	h->def_encoding = PQ_ENC_RLE;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		if (id >= 1 && id <= 4) {
			if (tc_int(t, ft, &v) < 0)
				return -1;
			if (id == 1)
				h->type = (int)(v < 0 || v > 100 ? 100 : v);
			else if (id == 2)
				h->usize = v;
			else if (id == 3)
				h->csize = v;
			else {
				h->has_crc = true;
				h->crc = (uint32_t)v;
			}
		} else if ((id == 5 || id == 7 || id == 8) && ft == TC_STRUCT) {
			if (parse_sub_header(t, h, id) < 0)
				return -1;
		} else if (tc_skip(t, ft) < 0) {
			return -1;
		}
	}
}

static int read_dict_page(struct ctx *c, const struct page_header *h, const uint8_t *p, size_t len)
{
	struct moe_pq_reader *r = c->r;
	if (h->num_values < 0)
		return perr(c, MOE_EFORMAT, "dictionary page has a negative value count %lld",
			    (long long)h->num_values);
	if (h->encoding != PQ_ENC_PLAIN && h->encoding != PQ_ENC_PLAIN_DICTIONARY)
		return perr(c, MOE_EUNSUPPORTED, "unsupported dictionary encoding %s",
			    pq_encoding_name(h->encoding));
	size_t n = (size_t)h->num_values;
	if (n > (size_t)PQ_MAX_VALUES || (c->col->type != MOE_PQ_BOOLEAN && n > len * 8 + 64))
		return perr(c, MOE_EFORMAT, "dictionary page claims %zu values in %zu bytes", n, len);
	const uint8_t *end = p + len;
	if (c->col->type == MOE_PQ_BYTE_ARRAY) {
		if (buf_reserve(&r->dict, (n ? n : 1) * sizeof(struct moe_pq_bytes)) < 0)
			return perr(c, MOE_ENOMEM, "out of memory");
		struct moe_pq_bytes *d = (struct moe_pq_bytes *)r->dict.p;
		for (size_t i = 0; i < n; i++) {
			if (end - p < 4)
				return perr(c, MOE_EFORMAT, "dictionary entry %zu: truncated length", i);
			uint32_t l = moe_get_u32(p);
			p += 4;
			if (l > (size_t)(end - p))
				return perr(c, MOE_EFORMAT, "dictionary entry %zu: length %u runs past the page",
					    i, l);
			d[i].ptr = p;
			d[i].len = l;
			p += l;
		}
	} else if (c->col->type == MOE_PQ_FIXED_LEN_BYTE_ARRAY) {
		size_t w = (size_t)c->col->type_length;
		if (len / w < n)
			return perr(c, MOE_EFORMAT, "dictionary page holds fewer than %zu values", n);
		if (buf_reserve(&r->dict, (n ? n : 1) * sizeof(struct moe_pq_bytes)) < 0)
			return perr(c, MOE_ENOMEM, "out of memory");
		struct moe_pq_bytes *d = (struct moe_pq_bytes *)r->dict.p;
		for (size_t i = 0; i < n; i++)
			d[i] = (struct moe_pq_bytes){p + i * w, (uint32_t)w};
	} else if (c->col->type == MOE_PQ_BOOLEAN) {
		if (len < (n + 7) / 8)
			return perr(c, MOE_EFORMAT, "dictionary page holds fewer than %zu booleans", n);
		if (buf_reserve(&r->dict, n ? n : 1) < 0)
			return perr(c, MOE_ENOMEM, "out of memory");
		for (size_t i = 0; i < n; i++)
			r->dict.p[i] = (p[i >> 3] >> (i & 7)) & 1;
		c->dict_fixed = r->dict.p;
	} else {
		size_t es = elem_size(c->col);
		if (len / es < n)
			return perr(c, MOE_EFORMAT, "dictionary page holds fewer than %zu values", n);
		c->dict_fixed = p;
	}
	c->dict_n = n;
	c->have_dict = true;
	return 0;
}

static int read_data_page(struct ctx *c, int codec, const struct page_header *h, const uint8_t *p,
			  size_t len)
{
	struct moe_pq_reader *r = c->r;
	bool v2 = h->type == PQ_PAGE_DATA_V2;
	int rc;
	if (h->num_values < 0)
		return perr(c, MOE_EFORMAT, "negative value count %lld", (long long)h->num_values);
	size_t nv = (size_t)h->num_values;
	if (nv == 0)
		return 0;
	if ((rc = grow_output(c, nv)))
		return rc;
	bool keep = is_bytes(c->col);
	const uint8_t *lp = NULL, *lend = NULL; /* definition levels */
	const uint8_t *vp, *vend;               /* values */

	if (!v2) {
		const uint8_t *d = p;
		if (codec != PQ_CODEC_UNCOMPRESSED && len > 0) {
			uint8_t *dst = pool_get(r, (size_t)h->usize, keep);
			if (!dst)
				return perr(c, MOE_ENOMEM, "out of memory for a %lld-byte page",
					    (long long)h->usize);
			if ((rc = decompress(c, codec, p, len, dst, (size_t)h->usize)))
				return rc;
			d = dst;
			len = (size_t)h->usize;
		}
		const uint8_t *end = d + len;
		if (c->col->max_def > 0) {
			if (h->def_encoding == PQ_ENC_RLE) {
				if (end - d < 4)
					return perr(c, MOE_EFORMAT, "truncated definition level length");
				uint32_t dl = moe_get_u32(d);
				d += 4;
				if (dl > (size_t)(end - d))
					return perr(c, MOE_EFORMAT,
						    "definition levels (%u bytes) run past the page", dl);
				lp = d;
				lend = d + dl;
				d += dl;
			} else if (h->def_encoding == PQ_ENC_BIT_PACKED) {
				size_t dl = (nv * (size_t)bit_width((uint32_t)c->col->max_def) + 7) / 8;
				if (dl > (size_t)(end - d))
					return perr(c, MOE_EFORMAT, "definition levels run past the page");
				lp = d;
				lend = d + dl;
				d += dl;
			} else {
				return perr(c, MOE_EUNSUPPORTED, "unsupported definition level encoding %s",
					    pq_encoding_name(h->def_encoding));
			}
		}
		vp = d;
		vend = end;
	} else {
		if (h->rep_len < 0 || h->def_len < 0 || (uint64_t)h->rep_len + (uint64_t)h->def_len > len)
			return perr(c, MOE_EFORMAT, "level lengths (%lld + %lld) exceed the page size %zu",
				    (long long)h->rep_len, (long long)h->def_len, len);
		if (h->rep_len != 0 && c->col->max_rep == 0)
			return perr(c, MOE_EFORMAT, "repetition levels in a non-repeated column");
		lp = p + h->rep_len;
		lend = lp + h->def_len;
		size_t lvl = (size_t)(h->rep_len + h->def_len);
		if ((uint64_t)h->usize < lvl)
			return perr(c, MOE_EFORMAT, "uncompressed page size smaller than its levels");
		size_t clen = len - lvl, ulen = (size_t)h->usize - lvl;
		vp = p + lvl;
		if (h->is_compressed && codec != PQ_CODEC_UNCOMPRESSED && clen > 0) {
			uint8_t *dst = pool_get(r, ulen, keep);
			if (!dst)
				return perr(c, MOE_ENOMEM, "out of memory for a %zu-byte page", ulen);
			if ((rc = decompress(c, codec, vp, clen, dst, ulen)))
				return rc;
			vp = dst;
			vend = dst + ulen;
		} else {
			vend = vp + clen;
		}
		if (c->col->max_def == 0)
			lp = lend = NULL;
	}

	size_t nn = nv;
	if (c->col->max_def > 0) {
		if ((rc = decode_levels(c, lp, lend, v2 ? PQ_ENC_RLE : h->def_encoding, nv, &nn)))
			return rc;
		if (nn != nv)
			c->any_null = true;
		if (v2 && h->num_nulls != (int64_t)(nv - nn) && h->num_nulls != 0)
			return perr(c, MOE_EFORMAT, "header says %lld nulls, levels say %zu",
				    (long long)h->num_nulls, nv - nn);
	} else {
		memset(r->valid.p + c->n, 1, nv);
	}
	if ((rc = decode_values(c, h->encoding, vp, vend, nn)))
		return rc;
	spread_nulls(c, nv, nn);
	c->n += nv;
	return 0;
}

/* Map the chunk's bytes from the file (pages populated at once), or NULL
 * (then the caller reads them).  Only with MOE_PARQUET_MMAP=1 (about 3%
 * faster): reading a mapping that another process truncates raises SIGBUS,
 * and the default must turn any bad input into an error, never a crash. */
static const uint8_t *map_chunk(struct moe_pq_file *f, struct moe_pq_reader *r, uint64_t start,
				size_t len)
{
	uint64_t pg = (uint64_t)sysconf(_SC_PAGESIZE);
	uint64_t at = start / pg * pg;
	size_t delta = (size_t)(start - at);
	void *m = mmap(NULL, len + delta, PROT_READ, MAP_PRIVATE | MAP_POPULATE, f->fd, (off_t)at);
	if (m == MAP_FAILED)
		return NULL;
	r->map = m;
	r->map_len = len + delta;
	return (const uint8_t *)m + delta;
}

int moe_pq_read_chunk(struct moe_pq_file *f, int rg, int col, struct moe_pq_reader *r,
		      struct moe_pq_chunk *out, struct moe_error *err)
{
	if (rg < 0 || rg >= f->nrgs || col < 0 || col >= f->ncolumns)
		return moe_error_set(err, MOE_EINVAL, "%s: no row group %d / column %d", f->path, rg, col);
	struct pq_chunk_meta *m = &f->rgs[rg].cols[col];
	struct ctx c = {.f = f, .r = r, .col = &f->columns[col], .rg = rg, .page = -1, .err = err};
	int rc;

	memset(out, 0, sizeof(*out));
	r->pool_used = 0;
	if (m->has_file_path)
		return perr(&c, MOE_EUNSUPPORTED, "column data in an external file is not supported");
	if (c.col->max_rep > 0)
		return perr(&c, MOE_EUNSUPPORTED, "repeated (nested list) columns are not supported");
	if (m->type != (int)c.col->type)
		return perr(&c, MOE_EFORMAT, "chunk type %d differs from the schema's %s", m->type,
			    moe_pq_type_name(c.col->type));
	if (m->num_values < 0 || m->num_values > PQ_MAX_VALUES)
		return perr(&c, MOE_EFORMAT, "bad value count %lld", (long long)m->num_values);
	if (m->num_values != f->rgs[rg].num_rows)
		return perr(&c, MOE_EFORMAT, "chunk has %lld values, its row group %lld rows",
			    (long long)m->num_values, (long long)f->rgs[rg].num_rows);
	int64_t start = m->data_page_offset;
	if (m->dictionary_page_offset > 0 && m->dictionary_page_offset < start)
		start = m->dictionary_page_offset;
	c.page_off = (uint64_t)start;
	if (start < 4 || m->total_compressed_size < 0 || (uint64_t)start > f->size ||
	    (uint64_t)m->total_compressed_size > f->size - (uint64_t)start)
		return perr(&c, MOE_EFORMAT, "chunk (offset %lld, %lld bytes) lies outside the file",
			    (long long)start, (long long)m->total_compressed_size);
	size_t clen = (size_t)m->total_compressed_size;
	const uint8_t *base;
	if (!f->mem && rg + 1 < f->nrgs) {
		/* ask the kernel to read the same column of the next row group */
		const struct pq_chunk_meta *nm = &f->rgs[rg + 1].cols[col];
		int64_t ns = nm->data_page_offset;
		if (nm->dictionary_page_offset > 0 && nm->dictionary_page_offset < ns)
			ns = nm->dictionary_page_offset;
		if (ns > 0 && nm->total_compressed_size > 0)
			posix_fadvise(f->fd, (off_t)ns, (off_t)nm->total_compressed_size,
				      POSIX_FADV_WILLNEED);
	}
	if (r->map) {
		munmap(r->map, r->map_len);
		r->map = NULL;
	}
	if (f->mem) {
		base = f->mem + start;
	} else if (r->map_chunks && clen >= PQ_MAP_MIN && (base = map_chunk(f, r, (uint64_t)start, clen))) {
		/* mapped: no copy of the chunk */
	} else {
		if (buf_reserve(&r->raw, clen ? clen : 1) < 0)
			return perr(&c, MOE_ENOMEM, "out of memory for a %zu-byte chunk", clen);
		if ((rc = read_at(f, (uint64_t)start, r->raw.p, clen, err)))
			return rc;
		base = r->raw.p;
	}

	const uint8_t *p = base, *end = base + clen;
	size_t want = (size_t)m->num_values;
	c.page = 0;
	while (c.n < want) {
		struct page_header h;
		c.page_off = (uint64_t)start + (uint64_t)(p - base);
		if (p >= end)
			return perr(&c, MOE_EFORMAT, "chunk ends after %zu of %zu values", c.n, want);
		struct tc t = {.p = p, .start = p, .end = end};
		if (parse_page_header(&t, &h) < 0)
			return perr(&c, MOE_EFORMAT, "malformed page header: %s", t.bad);
		p = t.p;
		if (h.csize < 0 || h.usize < 0 || h.usize > PQ_MAX_PAGE ||
		    (uint64_t)h.csize > (uint64_t)(end - p))
			return perr(&c, MOE_EFORMAT, "bad page sizes (compressed %lld, uncompressed %lld)",
				    (long long)h.csize, (long long)h.usize);
		const uint8_t *pd = p;
		size_t plen = (size_t)h.csize;
		p += plen;
		if (h.has_crc && (uint32_t)crc32(0L, pd, (uInt)plen) != h.crc)
			return perr(&c, MOE_ECHECKSUM, "page CRC mismatch");
		if (m->codec == PQ_CODEC_UNCOMPRESSED && h.type != PQ_PAGE_DATA_V2 &&
		    h.type != PQ_PAGE_INDEX && (size_t)h.usize != plen)
			return perr(&c, MOE_EFORMAT, "uncompressed page sizes differ (%lld vs %zu)",
				    (long long)h.usize, plen);
		switch (h.type) {
		case PQ_PAGE_DICT: {
			if (!h.has_sub)
				return perr(&c, MOE_EFORMAT, "dictionary page without its header");
			const uint8_t *dp = pd;
			size_t dlen = plen;
			if (m->codec != PQ_CODEC_UNCOMPRESSED && plen > 0) {
				uint8_t *dst = pool_get(r, (size_t)h.usize, true);
				if (!dst)
					return perr(&c, MOE_ENOMEM, "out of memory");
				if ((rc = decompress(&c, m->codec, pd, plen, dst, (size_t)h.usize)))
					return rc;
				dp = dst;
				dlen = (size_t)h.usize;
			}
			if ((rc = read_dict_page(&c, &h, dp, dlen)))
				return rc;
			break;
		}
		case PQ_PAGE_DATA:
		case PQ_PAGE_DATA_V2:
			if (!h.has_sub)
				return perr(&c, MOE_EFORMAT, "data page without its header");
			if (h.num_values > (int64_t)(want - c.n))
				return perr(&c, MOE_EFORMAT, "page has %lld values, only %zu remain in the chunk",
					    (long long)h.num_values, want - c.n);
			if ((rc = read_data_page(&c, m->codec, &h, pd, plen)))
				return rc;
			break;
		case PQ_PAGE_INDEX:
			break;
		default:
			return perr(&c, MOE_EFORMAT, "unknown page type %d", h.type);
		}
		c.page++;
	}
	out->type = c.col->type;
	out->n = c.n;
	out->valid = c.any_null ? r->valid.p : NULL;
	if (is_bytes(c.col))
		out->bytes = (const struct moe_pq_bytes *)r->bytes.p;
	else
		out->data = r->vals.p;
	return 0;
}

int moe_pq_check_buffer(const uint8_t *buf, size_t len, struct moe_error *err)
{
	struct moe_pq_file *f = open_mem(buf, len, err);
	if (!f)
		return err->code ? err->code : MOE_EFORMAT;
	struct moe_pq_reader *r = moe_pq_reader_new();
	int rc = 0;
	if (!r) {
		moe_pq_close(f);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	for (int g = 0; rc == 0 && g < f->nrgs; g++) {
		for (int col = 0; rc == 0 && col < f->ncolumns; col++) {
			struct moe_pq_chunk ch;
			rc = moe_pq_read_chunk(f, g, col, r, &ch, err);
		}
	}
	moe_pq_reader_free(r);
	moe_pq_close(f);
	return rc;
}
