/* Hugging Face safetensors: a memory-mapped, bounds-checked reader and an
 * atomic writer. */
#include "core/core.h"

#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

static const struct {
	const char *name;
	size_t size;
} dtypes[] = {
	[MOE_F32] = {"F32", 4}, [MOE_F16] = {"F16", 2}, [MOE_BF16] = {"BF16", 2},
	[MOE_I32] = {"I32", 4}, [MOE_I64] = {"I64", 8}, [MOE_U8] = {"U8", 1},
	[MOE_I16] = {"I16", 2}, [MOE_U16] = {"U16", 2}, [MOE_F64] = {"F64", 8},
	[MOE_I8] = {"I8", 1},   [MOE_U32] = {"U32", 4}, [MOE_BOOL] = {"BOOL", 1},
};
#define N_DTYPES (sizeof dtypes / sizeof dtypes[0])

size_t moe_dtype_size(enum moe_dtype t)
{
	return (unsigned)t < N_DTYPES ? dtypes[t].size : 0;
}

const char *moe_dtype_name(enum moe_dtype t)
{
	return (unsigned)t < N_DTYPES ? dtypes[t].name : "?";
}

static int dtype_from_name(const char *s, enum moe_dtype *out)
{
	for (size_t i = 0; i < N_DTYPES; i++)
		if (strcmp(s, dtypes[i].name) == 0) {
			*out = (enum moe_dtype)i;
			return 0;
		}
	return MOE_EUNSUPPORTED;
}

void moe_st_close(struct moe_st_file *f)
{
	if (!f)
		return;
	for (size_t i = 0; i < f->n_tensors; i++)
		free(f->tensors[i].name);
	free(f->tensors);
	if (f->map && f->map != MAP_FAILED)
		munmap(f->map, f->map_len);
	json_decref(f->metadata);
	free(f->path);
	free(f);
}

struct moe_st_file *moe_st_open(const char *path, struct moe_error *err)
{
	struct moe_st_file *f = calloc(1, sizeof *f);
	struct stat st;
	int fd = -1;
	json_t *root = NULL;
	json_error_t je;
	uint64_t hlen;
	const uint8_t *base;
	const char *key;
	json_t *val;

	if (!f) {
		moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
		return NULL;
	}
	f->path = strdup(path);
	fd = open(path, O_RDONLY);
	if (fd < 0) {
		moe_error_errno(err, "cannot open '%s'", path);
		goto fail;
	}
	if (fstat(fd, &st) != 0) {
		moe_error_errno(err, "cannot stat '%s'", path);
		goto fail;
	}
	if (st.st_size < 8) {
		moe_error_set(err, MOE_ETRUNC, "%s: truncated safetensors file (%lld bytes)", path,
			      (long long)st.st_size);
		goto fail;
	}
	f->map_len = (size_t)st.st_size;
	f->map = mmap(NULL, f->map_len, PROT_READ, MAP_PRIVATE, fd, 0);
	if (f->map == MAP_FAILED) {
		f->map = NULL;
		moe_error_errno(err, "cannot map '%s'", path);
		goto fail;
	}
	close(fd);
	fd = -1;
	base = f->map;
	hlen = moe_get_u64(base);
	if (hlen > f->map_len - 8 || hlen > (100u << 20)) {
		moe_error_set(err, MOE_EFORMAT, "%s: header length %llu at offset 0 exceeds the file",
			      path, (unsigned long long)hlen);
		goto fail;
	}
	root = json_loadb((const char *)base + 8, hlen, JSON_REJECT_DUPLICATES, &je);
	if (!root || !json_is_object(root)) {
		moe_error_set(err, MOE_EFORMAT, "%s: bad JSON header at offset %d: %s", path,
			      8 + je.position, root ? "not an object" : je.text);
		goto fail;
	}
	size_t data_off = 8 + hlen, data_len = f->map_len - data_off;
	f->tensors = calloc(json_object_size(root) + 1, sizeof *f->tensors);
	if (!f->tensors) {
		moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
		goto fail;
	}
	json_object_foreach(root, key, val) {
		if (strcmp(key, "__metadata__") == 0) {
			if (!json_is_object(val)) {
				moe_error_set(err, MOE_EFORMAT, "%s: __metadata__ is not an object", path);
				goto fail;
			}
			f->metadata = json_incref(val);
			continue;
		}
		struct moe_st_tensor *t = &f->tensors[f->n_tensors];
		json_t *dt = json_object_get(val, "dtype"), *shape = json_object_get(val, "shape");
		json_t *offs = json_object_get(val, "data_offsets");
		if (!json_is_string(dt) || !json_is_array(shape) || !json_is_array(offs) ||
		    json_array_size(offs) != 2 || json_array_size(shape) > MOE_MAX_DIMS) {
			moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s': bad dtype/shape/data_offsets",
				      path, key);
			goto fail;
		}
		if (dtype_from_name(json_string_value(dt), &t->dtype) != 0) {
			moe_error_set(err, MOE_EUNSUPPORTED, "%s: tensor '%s': unsupported dtype '%s'",
				      path, key, json_string_value(dt));
			goto fail;
		}
		uint64_t nel = 1;
		t->ndim = (int)json_array_size(shape);
		for (int d = 0; d < t->ndim; d++) {
			json_t *s = json_array_get(shape, (size_t)d);
			if (!json_is_integer(s) || json_integer_value(s) < 0 ||
			    json_integer_value(s) > (1ll << 40)) {
				moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s': bad shape", path, key);
				goto fail;
			}
			t->shape[d] = json_integer_value(s);
			nel *= (uint64_t)t->shape[d];
			if (nel > (1ull << 42)) {
				moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s': shape too large", path, key);
				goto fail;
			}
		}
		json_t *b = json_array_get(offs, 0), *e = json_array_get(offs, 1);
		if (!json_is_integer(b) || !json_is_integer(e) || json_integer_value(b) < 0 ||
		    json_integer_value(e) < json_integer_value(b) ||
		    (uint64_t)json_integer_value(e) > data_len) {
			moe_error_set(err, MOE_EFORMAT,
				      "%s: tensor '%s': data_offsets outside the data (%zu bytes)", path,
				      key, data_len);
			goto fail;
		}
		t->nbytes = (size_t)(json_integer_value(e) - json_integer_value(b));
		if (t->nbytes != nel * moe_dtype_size(t->dtype)) {
			moe_error_set(err, MOE_EFORMAT,
				      "%s: tensor '%s': %zu bytes do not match shape and dtype", path,
				      key, t->nbytes);
			goto fail;
		}
		t->data = base + data_off + json_integer_value(b);
		t->name = strdup(key);
		if (!t->name) {
			moe_error_set(err, MOE_ENOMEM, "%s: out of memory", path);
			goto fail;
		}
		f->n_tensors++;
	}
	json_decref(root);
	return f;
fail:
	if (fd >= 0)
		close(fd);
	json_decref(root);
	moe_st_close(f);
	return NULL;
}

const struct moe_st_tensor *moe_st_find(const struct moe_st_file *f, const char *name)
{
	for (size_t i = 0; i < f->n_tensors; i++)
		if (strcmp(f->tensors[i].name, name) == 0)
			return &f->tensors[i];
	return NULL;
}

/* ---- writer ---- */

struct st_entry {
	char *name;
	enum moe_dtype dtype;
	int ndim;
	int64_t shape[MOE_MAX_DIMS];
	const void *data;
	size_t nbytes;
};

struct moe_st_writer {
	struct st_entry *e;
	size_t n, cap;
	json_t *meta;
};

struct moe_st_writer *moe_st_writer_new(void)
{
	struct moe_st_writer *w = calloc(1, sizeof *w);
	if (w)
		w->meta = json_object();
	return w;
}

void moe_st_writer_free(struct moe_st_writer *w)
{
	if (!w)
		return;
	for (size_t i = 0; i < w->n; i++)
		free(w->e[i].name);
	free(w->e);
	json_decref(w->meta);
	free(w);
}

int moe_st_writer_add(struct moe_st_writer *w, const char *name, enum moe_dtype dtype, int ndim,
		      const int64_t *shape, const void *data, struct moe_error *err)
{
	size_t nel = 1;
	if (ndim < 0 || ndim > MOE_MAX_DIMS || (unsigned)dtype >= N_DTYPES)
		return moe_error_set(err, MOE_EINVAL, "tensor '%s': bad rank or dtype", name);
	if (w->n == w->cap) {
		size_t nc = w->cap ? w->cap * 2 : 64;
		struct st_entry *ne = realloc(w->e, nc * sizeof *ne);
		if (!ne)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		w->e = ne;
		w->cap = nc;
	}
	struct st_entry *e = &w->e[w->n];
	memset(e, 0, sizeof *e);
	e->name = strdup(name);
	if (!e->name)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	e->dtype = dtype;
	e->ndim = ndim;
	for (int d = 0; d < ndim; d++) {
		e->shape[d] = shape[d];
		nel *= (size_t)shape[d];
	}
	e->data = data;
	e->nbytes = nel * moe_dtype_size(dtype);
	w->n++;
	return 0;
}

int moe_st_writer_meta(struct moe_st_writer *w, const char *key, const char *value)
{
	return json_object_set_new(w->meta, key, json_string(value)) == 0 ? 0 : MOE_ENOMEM;
}

int moe_st_writer_commit(struct moe_st_writer *w, const char *path, struct moe_error *err)
{
	json_t *hdr = json_object();
	struct moe_atomic a;
	char *js = NULL;
	size_t off = 0;
	int rc;

	if (!hdr)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	if (json_object_size(w->meta))
		json_object_set(hdr, "__metadata__", w->meta);
	for (size_t i = 0; i < w->n; i++) {
		struct st_entry *e = &w->e[i];
		json_t *t = json_object(), *shape = json_array();
		for (int d = 0; d < e->ndim; d++)
			json_array_append_new(shape, json_integer(e->shape[d]));
		json_object_set_new(t, "dtype", json_string(moe_dtype_name(e->dtype)));
		json_object_set_new(t, "shape", shape);
		json_object_set_new(t, "data_offsets",
				    json_pack("[II]", (json_int_t)off, (json_int_t)(off + e->nbytes)));
		json_object_set_new(hdr, e->name, t);
		off += e->nbytes;
	}
	js = json_dumps(hdr, JSON_COMPACT | JSON_PRESERVE_ORDER);
	json_decref(hdr);
	if (!js)
		return moe_error_set(err, MOE_ENOMEM, "%s: cannot serialise header", path);
	size_t hl = strlen(js), padded = (hl + 7) / 8 * 8;
	uint8_t lenb[8];
	moe_put_u64(lenb, padded);
	rc = moe_atomic_open(&a, path, err);
	if (rc) {
		free(js);
		return rc;
	}
	if (fwrite(lenb, 1, 8, a.fp) != 8 || fwrite(js, 1, hl, a.fp) != hl)
		goto io;
	for (size_t i = hl; i < padded; i++)
		if (fputc(' ', a.fp) == EOF)
			goto io;
	for (size_t i = 0; i < w->n; i++)
		if (w->e[i].nbytes && fwrite(w->e[i].data, 1, w->e[i].nbytes, a.fp) != w->e[i].nbytes)
			goto io;
	free(js);
	return moe_atomic_commit(&a, err);
io:
	free(js);
	rc = moe_error_errno(err, "cannot write '%s'", path);
	moe_atomic_abort(&a);
	return rc;
}

/* ---- bf16 / f16 ---- */

uint16_t moe_f32_to_bf16(float f)
{
	uint32_t u;
	memcpy(&u, &f, 4);
	if ((u & 0x7fffffffu) > 0x7f800000u)
		return (uint16_t)((u >> 16) | 0x40); /* quiet NaN */
	u += 0x7fffu + ((u >> 16) & 1);
	return (uint16_t)(u >> 16);
}

float moe_bf16_to_f32(uint16_t h)
{
	uint32_t u = (uint32_t)h << 16;
	float f;
	memcpy(&f, &u, 4);
	return f;
}

float moe_f16_to_f32(uint16_t h)
{
	uint32_t sign = (uint32_t)(h & 0x8000) << 16, exp = (h >> 10) & 0x1f, man = h & 0x3ff, u;
	float f;
	if (exp == 0) {
		if (man == 0) {
			u = sign;
		} else {
			exp = 127 - 15 + 1;
			while (!(man & 0x400)) {
				man <<= 1;
				exp--;
			}
			man &= 0x3ff;
			u = sign | exp << 23 | man << 13;
		}
	} else if (exp == 31) {
		u = sign | 0x7f800000u | man << 13;
	} else {
		u = sign | (exp + 127 - 15) << 23 | man << 13;
	}
	memcpy(&f, &u, 4);
	return f;
}
