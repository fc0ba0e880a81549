/*
 * Shard file header, section checks and index.json (see shardfmt.h).
 */
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zstd.h>

#include "data/shardfmt.h"

static const char shard_magic[8] = MOE_SHARD_MAGIC;

const char *moe_split_name(enum moe_split s)
{
	return s == MOE_SPLIT_VAL ? "val" : "train";
}

int moe_split_parse(const char *s, enum moe_split *out, struct moe_error *err)
{
	if (strcmp(s, "train") == 0)
		*out = MOE_SPLIT_TRAIN;
	else if (strcmp(s, "val") == 0)
		*out = MOE_SPLIT_VAL;
	else
		return moe_error_set(err, MOE_EINVAL, "invalid split '%s' (train or val)", s);
	return 0;
}

int shard_hdr_encode(const struct shard_hdr *sh, uint8_t *buf, struct moe_error *err)
{
	struct moe_header h;
	memset(&h, 0, sizeof(h));
	memcpy(h.magic, shard_magic, 8);
	h.version = MOE_SHARD_VERSION;
	h.payload_size = sh->payload_size;
	h.payload_hash = sh->payload_hash;
	h.flags = sh->flags;
	h.fields_len = SHARD_FIELDS_LEN;
	uint8_t *f = h.fields;
	moe_put_u32(f + 0, sh->vocab_size);
	moe_put_u32(f + 4, sh->token_width);
	moe_put_u32(f + 8, sh->eos_id);
	moe_put_u32(f + 12, sh->split);
	moe_put_u32(f + 16, sh->shard_index);
	moe_put_u32(f + 20, sh->block_tokens);
	moe_put_u64(f + 24, sh->n_docs);
	moe_put_u64(f + 32, sh->n_tokens);
	moe_put_u64(f + 40, sh->first_doc);
	moe_put_u64(f + 48, sh->first_token);
	moe_put_u64(f + 56, sh->tokens_offset);
	moe_put_u64(f + 64, sh->tokens_bytes);
	moe_put_u64(f + 72, sh->blocks_offset);
	moe_put_u64(f + 80, sh->n_blocks);
	moe_put_u64(f + 88, sh->docs_offset);
	moe_put_u64(f + 96, sh->ordinals_offset);
	memcpy(f + 104, sh->tokenizer_sha256, 32);
	moe_put_u64(f + 136, 0);
	int n = moe_header_encode(&h, buf, SHARD_HEADER_SIZE, err);
	if (n < 0)
		return n;
	if (n != SHARD_HEADER_SIZE)
		return moe_error_set(err, MOE_EINVAL, "shard header encoded to %d bytes", n);
	return 0;
}

/* [off, off + size) lies inside a file of len bytes. */
static bool in_file(uint64_t off, uint64_t size, uint64_t len)
{
	return off <= len && size <= len - off;
}

/* Section of count entries of 8 bytes at off. */
static int check_section(uint64_t off, uint64_t count, uint64_t len, const char *what,
			 const char *where, struct moe_error *err)
{
	if (off % 8 != 0 || count > len / 8 || !in_file(off, count * 8, len))
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: %s (offset %llu, %llu entries) outside the file of %llu bytes",
				     where, what, (unsigned long long)off, (unsigned long long)count,
				     (unsigned long long)len);
	return 0;
}

int shard_hdr_parse(const uint8_t *map, size_t len, const char *where, struct shard_hdr *sh,
		    struct moe_error *err)
{
	struct moe_header h;
	memset(sh, 0, sizeof(*sh));
	int rc = moe_header_decode(&h, map, len, shard_magic, MOE_SHARD_VERSION, where, err);
	if (rc == MOE_ETRUNC)
		return moe_error_set(err, MOE_ETRUNC, "%s: truncated header (%zu bytes)", where, len);
	if (rc < 0)
		return rc;
	if (h.fields_len < SHARD_FIELDS_LEN)
		return moe_error_set(err, MOE_EFORMAT, "%s: header fields are %u bytes (need %d)",
				     where, h.fields_len, SHARD_FIELDS_LEN);
	const uint8_t *f = h.fields;
	sh->header_size = h.header_size;
	sh->payload_size = h.payload_size;
	sh->payload_hash = h.payload_hash;
	sh->flags = h.flags;
	sh->vocab_size = moe_get_u32(f + 0);
	sh->token_width = moe_get_u32(f + 4);
	sh->eos_id = moe_get_u32(f + 8);
	sh->split = moe_get_u32(f + 12);
	sh->shard_index = moe_get_u32(f + 16);
	sh->block_tokens = moe_get_u32(f + 20);
	sh->n_docs = moe_get_u64(f + 24);
	sh->n_tokens = moe_get_u64(f + 32);
	sh->first_doc = moe_get_u64(f + 40);
	sh->first_token = moe_get_u64(f + 48);
	sh->tokens_offset = moe_get_u64(f + 56);
	sh->tokens_bytes = moe_get_u64(f + 64);
	sh->blocks_offset = moe_get_u64(f + 72);
	sh->n_blocks = moe_get_u64(f + 80);
	sh->docs_offset = moe_get_u64(f + 88);
	sh->ordinals_offset = moe_get_u64(f + 96);
	memcpy(sh->tokenizer_sha256, f + 104, 32);

	const unsigned long long ulen = len;
	if (sh->payload_size != len - sh->header_size)
		return moe_error_set(err, MOE_ETRUNC,
				     "%s: file is %llu bytes, header says %llu (truncated or extended)",
				     where, ulen,
				     (unsigned long long)(sh->payload_size + sh->header_size));
	if (sh->flags & ~(uint64_t)MOE_SHARD_FLAG_ZSTD)
		return moe_error_set(err, MOE_EFORMAT, "%s: unknown header flags 0x%llx", where,
				     (unsigned long long)sh->flags);
	if (sh->vocab_size == 0 || (sh->token_width != 2 && sh->token_width != 4) ||
	    (sh->token_width == 2 && sh->vocab_size > 65536))
		return moe_error_set(err, MOE_EFORMAT, "%s: bad vocab_size %u / token_width %u",
				     where, sh->vocab_size, sh->token_width);
	if (sh->eos_id != MOE_NO_EOS && sh->eos_id >= sh->vocab_size)
		return moe_error_set(err, MOE_EFORMAT, "%s: eos_id %u >= vocab_size %u", where,
				     sh->eos_id, sh->vocab_size);
	if (sh->split >= MOE_N_SPLITS)
		return moe_error_set(err, MOE_EFORMAT, "%s: bad split %u", where, sh->split);
	if (sh->tokens_offset < sh->header_size || sh->tokens_offset % 8 != 0 ||
	    !in_file(sh->tokens_offset, sh->tokens_bytes, len))
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: token section (offset %llu, %llu bytes) outside the file",
				     where, (unsigned long long)sh->tokens_offset,
				     (unsigned long long)sh->tokens_bytes);
	if (sh->flags & MOE_SHARD_FLAG_ZSTD) {
		if (sh->block_tokens == 0 || sh->block_tokens > MOE_SHARD_MAX_BLOCK)
			return moe_error_set(err, MOE_EFORMAT, "%s: block_tokens %u out of range (1..%u)",
					     where, sh->block_tokens, MOE_SHARD_MAX_BLOCK);
		uint64_t nb = sh->n_tokens / sh->block_tokens + (sh->n_tokens % sh->block_tokens != 0);
		if (sh->n_blocks != nb)
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: %llu blocks for %llu tokens (expected %llu)", where,
					     (unsigned long long)sh->n_blocks,
					     (unsigned long long)sh->n_tokens, (unsigned long long)nb);
		if (sh->n_blocks > len / SHARD_BLOCK_ENTRY ||
		    check_section(sh->blocks_offset, sh->n_blocks * 3, len, "block index", where,
				  err) < 0)
			return moe_error_set(err, MOE_EFORMAT, "%s: block index outside the file",
					     where);
		const uint8_t *b = map + sh->blocks_offset;
		uint64_t end = sh->tokens_offset + sh->tokens_bytes;
		for (uint64_t i = 0; i < sh->n_blocks; i++, b += SHARD_BLOCK_ENTRY) {
			uint64_t off = moe_get_u64(b), cs = moe_get_u64(b + 8);
			if (off < sh->tokens_offset || !in_file(off, cs, end) || cs == 0)
				return moe_error_set(err, MOE_EFORMAT,
						     "%s: offset %llu: block %llu (at %llu, %llu bytes) "
						     "outside the token section",
						     where,
						     (unsigned long long)(sh->blocks_offset +
									  i * SHARD_BLOCK_ENTRY),
						     (unsigned long long)i, (unsigned long long)off,
						     (unsigned long long)cs);
			/* the frame header must promise the block's size, so that
			 * a header cannot claim tokens its frames do not hold */
			uint64_t ntok = sh->n_tokens - i * sh->block_tokens;
			if (ntok > sh->block_tokens)
				ntok = sh->block_tokens;
			unsigned long long fcs = ZSTD_getFrameContentSize(map + off, cs);
			if (fcs != ntok * sh->token_width)
				return moe_error_set(err, MOE_EFORMAT,
						     "%s: offset %llu: zstd block %llu does not hold %llu tokens",
						     where, (unsigned long long)off, (unsigned long long)i,
						     (unsigned long long)ntok);
		}
	} else {
		if (sh->block_tokens != 0 || sh->n_blocks != 0)
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: block fields set in an uncompressed shard", where);
		if (sh->n_tokens > len / sh->token_width ||
		    sh->tokens_bytes != sh->n_tokens * sh->token_width)
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: token section is %llu bytes for %llu tokens", where,
					     (unsigned long long)sh->tokens_bytes,
					     (unsigned long long)sh->n_tokens);
	}
	if (sh->n_docs >= len / 8 ||
	    check_section(sh->docs_offset, sh->n_docs + 1, len, "document index", where, err) < 0 ||
	    check_section(sh->ordinals_offset, sh->n_docs, len, "ordinals", where, err) < 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: document index or ordinals outside the file",
				     where);
	const uint8_t *d = map + sh->docs_offset;
	uint64_t prev = 0;
	for (uint64_t i = 0; i <= sh->n_docs; i++) {
		uint64_t v = moe_get_u64(d + 8 * i);
		if ((i == 0 && v != 0) || v < prev || (i == sh->n_docs && v != sh->n_tokens))
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: offset %llu: document index entry %llu (%llu) is wrong",
					     where, (unsigned long long)(sh->docs_offset + 8 * i),
					     (unsigned long long)i, (unsigned long long)v);
		prev = v;
	}
	const uint8_t *o = map + sh->ordinals_offset;
	for (uint64_t i = 1; i < sh->n_docs; i++)
		if (moe_get_u64(o + 8 * i) <= moe_get_u64(o + 8 * (i - 1)))
			return moe_error_set(err, MOE_EFORMAT,
					     "%s: offset %llu: document ordinals not increasing", where,
					     (unsigned long long)(sh->ordinals_offset + 8 * i));
	return 0;
}

int shard_hdr_match(const struct shard_hdr *h, const struct shard_index *ix,
		    const struct idx_shard *e, enum moe_split split, uint32_t shard_index,
		    uint64_t first_doc, uint64_t first_token, const char *where,
		    struct moe_error *err)
{
	const char *field = NULL;
	if (h->vocab_size != ix->vocab_size)
		field = "vocab_size";
	else if (h->token_width != ix->token_width)
		field = "token_width";
	else if (h->eos_id != ix->eos_id)
		field = "eos_id";
	else if (memcmp(h->tokenizer_sha256, ix->tokenizer_sha256, 32) != 0)
		field = "tokenizer_sha256";
	else if (((h->flags & MOE_SHARD_FLAG_ZSTD) != 0) != ix->compressed)
		field = "compression";
	else if (h->split != (uint32_t)split)
		field = "split";
	else if (h->shard_index != shard_index)
		field = "shard_index";
	else if (h->n_docs != e->docs)
		field = "docs";
	else if (h->n_tokens != e->tokens)
		field = "tokens";
	else if (h->first_doc != first_doc)
		field = "first_doc";
	else if (h->first_token != first_token)
		field = "first_token";
	else if (h->header_size + h->payload_size != e->bytes)
		field = "bytes";
	if (field)
		return moe_error_set(err, MOE_EFORMAT, "%s: header field %s disagrees with %s", where,
				     field, MOE_SHARD_INDEX);
	return 0;
}

int shard_map(const char *path, const uint8_t **map, size_t *len, struct moe_error *err)
{
	int fd = open(path, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return moe_error_errno(err, "cannot open '%s'", path);
	struct stat st;
	if (fstat(fd, &st) < 0) {
		moe_error_errno(err, "cannot stat '%s'", path);
		close(fd);
		return MOE_EIO;
	}
	if (!S_ISREG(st.st_mode)) {
		close(fd);
		return moe_error_set(err, MOE_EFORMAT, "'%s' is not a regular file", path);
	}
	*len = (size_t)st.st_size;
	if (*len == 0) {
		*map = (const uint8_t *)"";
		close(fd);
		return 0;
	}
	void *m = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
	close(fd);
	if (m == MAP_FAILED)
		return moe_error_errno(err, "cannot map '%s'", path);
	*map = m;
	return 0;
}

void shard_unmap(const uint8_t *map, size_t len)
{
	if (map && len)
		munmap((void *)map, len);
}

/* ---- index.json -------------------------------------------------------- */

static int get_u64(const json_t *o, const char *key, uint64_t *out, const char *where,
		   struct moe_error *err)
{
	int64_t v;
	int rc = moe_json_get_int(o, key, true, &v, where, err);
	if (rc < 0)
		return rc;
	if (v < 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: field '%s' is negative", where, key);
	*out = (uint64_t)v;
	return 0;
}

static int get_hex(const json_t *o, const char *key, uint8_t *out, size_t n, const char *where,
		   struct moe_error *err)
{
	const char *s;
	int rc = moe_json_get_string(o, key, true, &s, where, err);
	if (rc < 0)
		return rc;
	if (strlen(s) != 2 * n || moe_unhex(s, out, n) < 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: field '%s' is not %zu hex digits", where,
				     key, 2 * n);
	return 0;
}

static bool plain_name(const char *s)
{
	return s[0] && s[0] != '.' && !strchr(s, '/') && strlen(s) < 256;
}

static int load_split(const json_t *root, enum moe_split sp, struct idx_split *out,
		      const char *where, struct moe_error *err)
{
	const char *name = moe_split_name(sp);
	const json_t *s = json_object_get(root, name);
	if (!json_is_object(s))
		return moe_error_set(err, MOE_EFORMAT, "%s: field '%s' missing or not an object",
				     where, name);
	char w[600];
	snprintf(w, sizeof(w), "%s: %s", where, name);
	if (get_u64(s, "docs", &out->docs, w, err) < 0 || get_u64(s, "tokens", &out->tokens, w, err) < 0)
		return err ? err->code : MOE_EFORMAT;
	const json_t *arr = json_object_get(s, "shards");
	if (!json_is_array(arr))
		return moe_error_set(err, MOE_EFORMAT, "%s: field 'shards' missing or not an array", w);
	size_t n = json_array_size(arr);
	out->shards = calloc(n ? n : 1, sizeof(*out->shards));
	if (!out->shards)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	out->n_shards = n;
	uint64_t docs = 0, toks = 0;
	for (size_t i = 0; i < n; i++) {
		const json_t *e = json_array_get(arr, i);
		struct idx_shard *x = &out->shards[i];
		char we[700];
		snprintf(we, sizeof(we), "%s: shards[%zu]", w, i);
		if (!json_is_object(e))
			return moe_error_set(err, MOE_EFORMAT, "%s: not an object", we);
		const char *file;
		if (moe_json_get_string(e, "file", true, &file, we, err) < 0)
			return err ? err->code : MOE_EFORMAT;
		if (!plain_name(file))
			return moe_error_set(err, MOE_EFORMAT, "%s: bad file name '%s'", we, file);
		x->file = strdup(file);
		if (!x->file)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		const char *xh;
		if (get_u64(e, "docs", &x->docs, we, err) < 0 ||
		    get_u64(e, "tokens", &x->tokens, we, err) < 0 ||
		    get_u64(e, "bytes", &x->bytes, we, err) < 0 ||
		    get_hex(e, "sha256", x->sha256, 32, we, err) < 0 ||
		    moe_json_get_string(e, "xxh3", true, &xh, we, err) < 0)
			return err ? err->code : MOE_EFORMAT;
		uint8_t hb[8];
		if (strlen(xh) != 16 || moe_unhex(xh, hb, 8) < 0)
			return moe_error_set(err, MOE_EFORMAT, "%s: field 'xxh3' is not 16 hex digits",
					     we);
		x->xxh3 = 0;
		for (int k = 0; k < 8; k++)
			x->xxh3 = x->xxh3 << 8 | hb[k];
		if (docs + x->docs < docs || toks + x->tokens < toks)
			return moe_error_set(err, MOE_EFORMAT, "%s: counts overflow", we);
		docs += x->docs;
		toks += x->tokens;
	}
	if (docs != out->docs || toks != out->tokens)
		return moe_error_set(err, MOE_EFORMAT,
				     "%s: docs/tokens (%llu/%llu) disagree with its shards (%llu/%llu)",
				     w, (unsigned long long)out->docs, (unsigned long long)out->tokens,
				     (unsigned long long)docs, (unsigned long long)toks);
	return 0;
}

int shard_index_load(const char *dir, struct shard_index *ix, json_t **json, struct moe_error *err)
{
	memset(ix, 0, sizeof(*ix));
	char *path = moe_path_join(dir, MOE_SHARD_INDEX);
	if (!path)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	int rc;
	char *buf = NULL;
	size_t len = 0;
	json_t *root = NULL;
	rc = moe_read_file(path, &buf, &len, err);
	if (rc < 0)
		goto out;
	moe_sha256_buf(buf, len, ix->index_sha256);
	json_error_t je;
	root = json_loadb(buf, len, 0, &je);
	if (!root) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s:%d:%d: %s", path, je.line, je.column, je.text);
		goto out;
	}
	const char *fmt, *comp;
	int64_t ver, v;
	if ((rc = moe_json_get_string(root, "format", true, &fmt, path, err)) < 0)
		goto out;
	if (strcmp(fmt, "moe-shards") != 0) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: field 'format' is '%s', not 'moe-shards'",
				   path, fmt);
		goto out;
	}
	if ((rc = moe_json_get_int(root, "version", true, &ver, path, err)) < 0)
		goto out;
	if (ver < 1 || ver > MOE_SHARD_VERSION) {
		rc = moe_error_set(err, MOE_EVERSION, "%s: unsupported version %lld (this build reads %d)",
				   path, (long long)ver, MOE_SHARD_VERSION);
		goto out;
	}
	if ((rc = moe_json_get_int(root, "vocab_size", true, &v, path, err)) < 0)
		goto out;
	if (v <= 0 || v > UINT32_MAX - 1) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: field 'vocab_size' out of range", path);
		goto out;
	}
	ix->vocab_size = (uint32_t)v;
	if ((rc = moe_json_get_int(root, "token_width", true, &v, path, err)) < 0)
		goto out;
	if ((v != 2 && v != 4) || (v == 2 && ix->vocab_size > 65536)) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: field 'token_width' is wrong", path);
		goto out;
	}
	ix->token_width = (uint32_t)v;
	const json_t *eos = json_object_get(root, "eos_id");
	if (!eos || json_is_null(eos)) {
		ix->eos_id = MOE_NO_EOS;
	} else if (json_is_integer(eos) && json_integer_value(eos) >= 0 &&
		   json_integer_value(eos) < (json_int_t)ix->vocab_size) {
		ix->eos_id = (uint32_t)json_integer_value(eos);
	} else {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: field 'eos_id' is wrong", path);
		goto out;
	}
	const json_t *sha = json_object_get(root, "tokenizer_sha256");
	if (sha && !json_is_null(sha)) {
		if ((rc = get_hex(root, "tokenizer_sha256", ix->tokenizer_sha256, 32, path, err)) < 0)
			goto out;
		ix->has_sha = true;
	}
	if ((rc = moe_json_get_string(root, "compression", true, &comp, path, err)) < 0)
		goto out;
	if (strcmp(comp, "zstd") == 0) {
		ix->compressed = true;
	} else if (strcmp(comp, "none") != 0) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: unknown compression '%s'", path, comp);
		goto out;
	}
	for (int s = 0; s < MOE_N_SPLITS; s++)
		if ((rc = load_split(root, (enum moe_split)s, &ix->split[s], path, err)) < 0)
			goto out;
	rc = 0;
out:
	free(buf);
	free(path);
	if (rc == 0 && json)
		*json = root;
	else
		json_decref(root);
	if (rc < 0)
		shard_index_release(ix);
	return rc;
}

void shard_index_release(struct shard_index *ix)
{
	for (int s = 0; s < MOE_N_SPLITS; s++) {
		for (size_t i = 0; i < ix->split[s].n_shards; i++)
			free(ix->split[s].shards[i].file);
		free(ix->split[s].shards);
		ix->split[s].shards = NULL;
		ix->split[s].n_shards = 0;
	}
}

json_t *moe_shard_index_load(const char *dir, struct moe_error *err)
{
	struct shard_index ix;
	json_t *root = NULL;
	if (shard_index_load(dir, &ix, &root, err) < 0)
		return NULL;
	shard_index_release(&ix);
	return root;
}
