/* The Parquet footer: FileMetaData, schema, row groups, column metadata. */
#include <stdlib.h>
#include <string.h>

#include "parquet/internal.h"

#define MAX_SCHEMA_DEPTH 32

struct schema_el {
	int type; /* -1 for groups */
	int32_t type_length;
	int repetition; /* 0 required, 1 optional, 2 repeated, -1 absent */
	const uint8_t *name;
	uint32_t name_len;
	int32_t num_children;
	int converted;
	bool logical_string;
};

const char *pq_codec_name(int codec)
{
	static const char *const names[] = {"UNCOMPRESSED", "SNAPPY", "GZIP", "LZO",
					    "BROTLI", "LZ4", "ZSTD", "LZ4_RAW"};
	return codec >= 0 && codec < 8 ? names[codec] : "unknown";
}

const char *pq_encoding_name(int enc)
{
	static const char *const names[] = {"PLAIN", "GROUP_VAR_INT", "PLAIN_DICTIONARY", "RLE",
					    "BIT_PACKED", "DELTA_BINARY_PACKED",
					    "DELTA_LENGTH_BYTE_ARRAY", "DELTA_BYTE_ARRAY",
					    "RLE_DICTIONARY", "BYTE_STREAM_SPLIT"};
	return enc >= 0 && enc < 10 ? names[enc] : "unknown";
}

const char *moe_pq_type_name(enum moe_pq_type t)
{
	static const char *const names[] = {"BOOLEAN", "INT32", "INT64", "INT96",
					    "FLOAT", "DOUBLE", "BYTE_ARRAY", "FIXED_LEN_BYTE_ARRAY"};
	return (int)t >= 0 && (int)t < 8 ? names[t] : "unknown";
}

static int parse_logical(struct tc *t, bool *is_string)
{
	int16_t last = 0, id;
	int ft;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		/* union LogicalType: 1 STRING, 4 ENUM, 12 JSON */
		if (ft == TC_STRUCT && (id == 1 || id == 4 || id == 12))
			*is_string = true;
		if (tc_skip(t, ft) < 0)
			return -1;
	}
}

static int parse_schema_el(struct tc *t, struct schema_el *e)
{
	int16_t last = 0, id;
	int ft;
	int64_t v;
	memset(e, 0, sizeof(*e));
	e->type = -1;
	e->repetition = -1;
	e->converted = -1;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		switch (id) {
		case 1:
		case 2:
		case 3:
		case 5:
		case 6:
			if (tc_int(t, ft, &v) < 0)
				return -1;
			if (v < INT32_MIN || v > INT32_MAX)
				return t->bad = "schema value out of range", -1;
			if (id == 1)
				e->type = (int)v;
			else if (id == 2)
				e->type_length = (int32_t)v;
			else if (id == 3)
				e->repetition = (int)v;
			else if (id == 5)
				e->num_children = (int32_t)v;
			else
				e->converted = (int)v;
			break;
		case 4:
			if (ft != TC_BINARY)
				return t->bad = "schema name is not a string", -1;
			if (tc_binary(t, &e->name, &e->name_len) < 0)
				return -1;
			break;
		case 10:
			if (ft != TC_STRUCT)
				return t->bad = "bad logicalType", -1;
			if (parse_logical(t, &e->logical_string) < 0)
				return -1;
			break;
		default:
			if (tc_skip(t, ft) < 0)
				return -1;
		}
	}
}

static char *join_path(const char *prefix, const uint8_t *name, uint32_t len)
{
	size_t pl = prefix ? strlen(prefix) : 0;
	char *s = malloc(pl + 1 + len + 1);
	if (!s)
		return NULL;
	size_t o = 0;
	if (pl) {
		memcpy(s, prefix, pl);
		s[pl] = '.';
		o = pl + 1;
	}
	if (len)
		memcpy(s + o, name, len);
	s[o + len] = 0;
	return s;
}

/* Walk the schema tree from element *idx; appends leaves to f->columns. */
static int walk_schema(struct moe_pq_file *f, const struct schema_el *els, int nels, int *idx,
		       const char *prefix, int def, int rep, int depth, struct moe_error *err)
{
	if (depth > MAX_SCHEMA_DEPTH)
		return moe_error_set(err, MOE_EFORMAT, "%s: schema nested too deeply", f->path);
	if (*idx >= nels)
		return moe_error_set(err, MOE_EFORMAT, "%s: schema has fewer elements than its groups claim",
				     f->path);
	const struct schema_el *e = &els[(*idx)++];
	if (!e->name)
		return moe_error_set(err, MOE_EFORMAT, "%s: schema element %d has no name", f->path,
				     *idx - 1);
	if (e->repetition == 1)
		def++;
	else if (e->repetition == 2) {
		def++;
		rep++;
	}
	char *path = join_path(prefix, e->name, e->name_len);
	if (!path)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	int rc = 0;
	if (e->num_children > 0) {
		if (e->num_children > nels)
			rc = moe_error_set(err, MOE_EFORMAT, "%s: schema element '%s' has %d children",
					   f->path, path, e->num_children);
		for (int i = 0; rc == 0 && i < e->num_children; i++)
			rc = walk_schema(f, els, nels, idx, path, def, rep, depth + 1, err);
		free(path);
		return rc;
	}
	if (e->type < 0 || e->type > 7) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: schema leaf '%s' has bad type %d", f->path,
				   path, e->type);
		free(path);
		return rc;
	}
	if (f->ncolumns >= nels) {
		free(path);
		return moe_error_set(err, MOE_EFORMAT, "%s: schema too large", f->path);
	}
	struct moe_pq_column_info *c = &f->columns[f->ncolumns++];
	c->name = path;
	c->type = (enum moe_pq_type)e->type;
	c->type_length = e->type_length;
	c->converted_type = e->converted;
	c->is_string = e->logical_string || e->converted == 0 || e->converted == 4 || e->converted == 19;
	c->max_def = def;
	c->max_rep = rep;
	if (c->type == MOE_PQ_FIXED_LEN_BYTE_ARRAY && c->type_length <= 0)
		return moe_error_set(err, MOE_EFORMAT, "%s: column '%s' has bad type_length %d",
				     f->path, path, c->type_length);
	return 0;
}

static int parse_column_meta(struct tc *t, struct pq_chunk_meta *m)
{
	int16_t last = 0, id;
	int ft, et;
	int64_t v;
	uint32_t n;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		switch (id) {
		case 1:
		case 4:
		case 5:
		case 6:
		case 7:
		case 9:
		case 11:
			if (tc_int(t, ft, &v) < 0)
				return -1;
			if (id == 6)
				m->total_uncompressed_size = v;
			else if (id == 1)
				m->type = v < 0 || v > 7 ? -1 : (int)v;
			else if (id == 4)
				m->codec = v < 0 || v > 100 ? 100 : (int)v;
			else if (id == 5)
				m->num_values = v;
			else if (id == 7)
				m->total_compressed_size = v;
			else if (id == 9)
				m->data_page_offset = v;
			else
				m->dictionary_page_offset = v;
			break;
		case 2: /* informational: anything but a list of i32 is skipped */
			if (ft != TC_LIST) {
				if (tc_skip(t, ft) < 0)
					return -1;
				break;
			}
			if (tc_list(t, &et, &n) < 0)
				return -1;
			for (uint32_t i = 0; i < n; i++) {
				if (et == TC_TRUE || et == TC_FALSE) {
					if (t->p >= t->end)
						return t->bad = "truncated list", -1;
					t->p++;
					continue;
				}
				if (et != TC_I32) {
					if (tc_skip(t, et) < 0)
						return -1;
					continue;
				}
				if (tc_i64(t, &v) < 0)
					return -1;
				if (v >= 0 && v < 32)
					m->encodings |= 1u << v;
			}
			break;
		case 3: {
			if (ft != TC_LIST || tc_list(t, &et, &n) < 0 || et != TC_BINARY)
				return t->bad = t->bad ? t->bad : "bad path_in_schema", -1;
			free(m->path);
			m->path = NULL;
			for (uint32_t i = 0; i < n; i++) {
				const uint8_t *p;
				uint32_t len;
				if (tc_binary(t, &p, &len) < 0)
					return -1;
				char *s = join_path(m->path, p, len);
				if (!s)
					return t->bad = "out of memory", -1;
				free(m->path);
				m->path = s;
			}
			break;
		}
		default:
			if (tc_skip(t, ft) < 0)
				return -1;
		}
	}
}

static int parse_column_chunk(struct tc *t, struct pq_chunk_meta *m)
{
	int16_t last = 0, id;
	int ft;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		if (id == 1 && ft == TC_BINARY) {
			m->has_file_path = true;
			if (tc_skip(t, ft) < 0)
				return -1;
		} else if (id == 3 && ft == TC_STRUCT) {
			m->has_meta = true;
			if (parse_column_meta(t, m) < 0)
				return -1;
		} else if (tc_skip(t, ft) < 0) {
			return -1;
		}
	}
}

static int parse_row_group(struct tc *t, struct pq_row_group *rg)
{
	int16_t last = 0, id;
	int ft, et;
	uint32_t n;
	int64_t v;
	for (;;) {
		if (tc_field(t, &last, &ft, &id) < 0)
			return -1;
		if (ft == TC_STOP)
			return 0;
		if (id == 1 && ft == TC_LIST) {
			if (tc_list(t, &et, &n) < 0)
				return -1;
			if (et != TC_STRUCT || rg->cols)
				return t->bad = "bad columns list", -1;
			rg->cols = calloc(n ? n : 1, sizeof(*rg->cols));
			if (!rg->cols)
				return t->bad = "out of memory", -1;
			for (uint32_t i = 0; i < n; i++) {
				rg->ncols++;
				if (parse_column_chunk(t, &rg->cols[i]) < 0)
					return -1;
			}
		} else if (id == 3) {
			if (tc_int(t, ft, &v) < 0)
				return -1;
			rg->num_rows = v;
		} else if (tc_skip(t, ft) < 0) {
			return -1;
		}
	}
}

void pq_free_meta(struct moe_pq_file *f)
{
	for (int i = 0; i < f->ncolumns; i++)
		free(f->columns[i].name);
	free(f->columns);
	f->columns = NULL;
	f->ncolumns = 0;
	for (int i = 0; i < f->nrgs; i++) {
		for (int j = 0; j < f->rgs[i].ncols; j++)
			free(f->rgs[i].cols[j].path);
		free(f->rgs[i].cols);
	}
	free(f->rgs);
	f->rgs = NULL;
	f->nrgs = 0;
	free(f->created_by);
	f->created_by = NULL;
}

int pq_parse_footer(struct moe_pq_file *f, const uint8_t *buf, size_t len, struct moe_error *err)
{
	struct tc t = {.p = buf, .start = buf, .end = buf + len};
	struct schema_el *els = NULL;
	uint32_t nels = 0;
	int16_t last = 0, id;
	int ft, et, rc = 0;
	uint32_t n;
	int64_t v;
	bool have_schema = false;

	for (;;) {
		if (tc_field(&t, &last, &ft, &id) < 0)
			goto bad;
		if (ft == TC_STOP)
			break;
		if (id == 2 && ft == TC_LIST && !have_schema) {
			have_schema = true;
			if (tc_list(&t, &et, &nels) < 0)
				goto bad;
			if (et != TC_STRUCT) {
				t.bad = "schema is not a list of structs";
				goto bad;
			}
			els = calloc(nels ? nels : 1, sizeof(*els));
			if (!els) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			for (uint32_t i = 0; i < nels; i++)
				if (parse_schema_el(&t, &els[i]) < 0)
					goto bad;
		} else if (id == 3) {
			if (tc_int(&t, ft, &v) < 0)
				goto bad;
			f->num_rows = v;
		} else if (id == 6 && ft == TC_BINARY && !f->created_by) {
			const uint8_t *p;
			uint32_t l;
			if (tc_binary(&t, &p, &l) < 0)
				goto bad;
			f->created_by = malloc((size_t)l + 1);
			if (!f->created_by) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			for (uint32_t i = 0; i < l; i++)
				f->created_by[i] = p[i] >= 0x20 && p[i] < 0x7f ? (char)p[i] : '?';
			f->created_by[l] = 0;
		} else if (id == 4 && ft == TC_LIST && !f->rgs) {
			if (tc_list(&t, &et, &n) < 0)
				goto bad;
			if (et != TC_STRUCT) {
				t.bad = "row_groups is not a list of structs";
				goto bad;
			}
			f->rgs = calloc(n ? n : 1, sizeof(*f->rgs));
			if (!f->rgs) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
			for (uint32_t i = 0; i < n; i++) {
				f->nrgs++;
				if (parse_row_group(&t, &f->rgs[i]) < 0)
					goto bad;
			}
		} else if (tc_skip(&t, ft) < 0) {
			goto bad;
		}
	}
	if (!have_schema || nels < 1) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: footer has no schema", f->path);
		goto out;
	}
	if (f->num_rows < 0) {
		rc = moe_error_set(err, MOE_EFORMAT, "%s: negative num_rows", f->path);
		goto out;
	}
	f->columns = calloc(nels, sizeof(*f->columns));
	if (!f->columns) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	/* the root's children */
	int idx = 1;
	for (int i = 0; rc == 0 && i < els[0].num_children; i++)
		rc = walk_schema(f, els, (int)nels, &idx, NULL, 0, 0, 0, err);
	if (rc)
		goto out;
	for (int i = 0; i < f->nrgs; i++) {
		struct pq_row_group *rg = &f->rgs[i];
		if (rg->ncols != f->ncolumns) {
			rc = moe_error_set(err, MOE_EFORMAT,
					   "%s: row group %d has %d column chunks, the schema has %d columns",
					   f->path, i, rg->ncols, f->ncolumns);
			goto out;
		}
		if (rg->num_rows < 0) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: row group %d: negative num_rows",
					   f->path, i);
			goto out;
		}
		for (int j = 0; j < rg->ncols; j++) {
			struct pq_chunk_meta *m = &rg->cols[j];
			if (!m->has_meta) {
				rc = moe_error_set(err, MOE_EFORMAT,
						   "%s: row group %d, column %d: no column metadata",
						   f->path, i, j);
				goto out;
			}
			if (m->path && strcmp(m->path, f->columns[j].name) != 0) {
				rc = moe_error_set(err, MOE_EFORMAT,
						   "%s: row group %d, column %d: path '%s' does not match the schema's '%s'",
						   f->path, i, j, m->path, f->columns[j].name);
				goto out;
			}
		}
	}
	goto out;
bad:
	rc = moe_error_set(err, MOE_EFORMAT, "%s: malformed footer at offset %zu of %zu: %s", f->path,
			   (size_t)(t.p - t.start), len, t.bad ? t.bad : "error");
out:
	free(els);
	return rc;
}
