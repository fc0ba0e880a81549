/*
 * Checkpoint I/O for the parameter table: safetensors with HF OLMoE names,
 * HF sharded checkpoints (model.safetensors.index.json), config.json.
 */
#include "model/model.h"
#include "model/model_int.h"

#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

int moe_model_save_safetensors(struct moe_model *m, const char *path, struct moe_error *err)
{
	float *host = moe_model_params_host(m), *tmp = NULL;
	int rc = 0;
	if (!host) {
		tmp = malloc(m->n_floats * sizeof(float));
		if (!tmp)
			return moe_error_set(err, MOE_ENOMEM, "out of memory");
		moe_model_get_params(m, tmp);
		host = tmp;
	}
	struct moe_st_writer *w = moe_st_writer_new();
	if (!w) {
		free(tmp);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	moe_st_writer_meta(w, "format", "pt");
	for (size_t i = 0; i < m->n_params && rc == 0; i++) {
		const struct moe_param *p = &m->params[i];
		rc = moe_st_writer_add(w, p->name, MOE_F32, p->ndim, p->shape, host + p->offset, err);
	}
	if (rc == 0)
		rc = moe_st_writer_commit(w, path, err);
	moe_st_writer_free(w);
	free(tmp);
	return rc;
}

static bool ends_with(const char *s, const char *suf)
{
	size_t a = strlen(s), b = strlen(suf);
	return a >= b && !strcmp(s + a - b, suf);
}

static int convert(float *dst, const struct moe_st_tensor *t, size_t n, const char *file,
		   struct moe_error *err);

/* transformers v5 saves a layer's experts fused: mlp.experts.gate_up_proj
 * (E, 2I, D) with each expert's gate rows then up rows, and
 * mlp.experts.down_proj (E, D, I): exactly our blocks.  Returns 1 when t was
 * such a tensor (and was taken), 0 when not, or an error. */
static int take_fused(struct moe_model *m, float *host, bool *seen, const struct moe_st_tensor *t,
		      const char *file, struct moe_error *err)
{
	int l, n = 0;
	char what[16];
	if (sscanf(t->name, "model.layers.%d.mlp.experts.%15[a-z_]%n", &l, what, &n) != 2 ||
	    t->name[n] != '\0' || (strcmp(what, "gate_up_proj") && strcmp(what, "down_proj")))
		return 0;
	const struct moe_layer_offsets *lo = moe_model_layer(m, l);
	const struct moe_config *c = moe_model_config(m);
	if (!lo || !lo->is_moe)
		return moe_error_set(err, MOE_EFORMAT, "%s: unexpected tensor '%s' for this model config",
				     file, t->name);
	bool gu = !strcmp(what, "gate_up_proj");
	int64_t E = c->num_experts, I = c->intermediate_size, D = c->hidden_size;
	int64_t want[3] = {E, gu ? 2 * I : D, gu ? D : I};
	if (t->ndim != 3 || t->shape[0] != want[0] || t->shape[1] != want[1] || t->shape[2] != want[2])
		return moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s' has the wrong shape, expected [%lld, %lld, %lld]",
				     file, t->name, (long long)want[0], (long long)want[1], (long long)want[2]);
	int rc = convert(host + (gu ? lo->expert_gate_up : lo->expert_down), t, (size_t)(E * want[1] * want[2]), file, err);
	if (rc < 0)
		return rc;
	char name[MOE_NAME_MAX];
	for (int e = 0; e < E; e++)
		for (int k = 0; k < (gu ? 2 : 1); k++) {
			snprintf(name, sizeof(name), "model.layers.%d.mlp.experts.%d.%s.weight", l, e,
				 gu ? (k ? "up_proj" : "gate_proj") : "down_proj");
			const struct moe_param *p = moe_model_param_find(m, name);
			if (p)
				seen[p - moe_model_params(m, NULL)] = true;
		}
	return 1;
}

/* Copy one stored tensor into the host buffer, converting to fp32. */
static int take_tensor(struct moe_model *m, float *host, bool *seen, const struct moe_st_tensor *t,
		       const char *file, struct moe_error *err)
{
	const struct moe_param *p = moe_model_param_find(m, t->name);
	if (!p) {
		int rc = take_fused(m, host, seen, t, file, err);
		if (rc != 0)
			return rc < 0 ? rc : 0;
		if (ends_with(t->name, "rotary_emb.inv_freq"))
			return 0;
		return moe_error_set(err, MOE_EFORMAT, "%s: unexpected tensor '%s' for this model config",
				     file, t->name);
	}
	bool ok = t->ndim == p->ndim;
	for (int d = 0; ok && d < p->ndim; d++)
		ok = t->shape[d] == p->shape[d];
	if (!ok) {
		char a[64], b[64];
		if (p->ndim == 2)
			snprintf(a, sizeof(a), "[%lld, %lld]", (long long)p->shape[0], (long long)p->shape[1]);
		else
			snprintf(a, sizeof(a), "[%lld]", (long long)p->shape[0]);
		if (t->ndim == 2)
			snprintf(b, sizeof(b), "[%lld, %lld]", (long long)t->shape[0], (long long)t->shape[1]);
		else if (t->ndim == 1)
			snprintf(b, sizeof(b), "[%lld]", (long long)t->shape[0]);
		else
			snprintf(b, sizeof(b), "(%d dims)", t->ndim);
		return moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s' has shape %s, expected %s", file,
				     t->name, b, a);
	}
	int rc = convert(host + p->offset, t, p->numel, file, err);
	if (rc == 0)
		seen[p - m->params] = true;
	return rc;
}

static int convert(float *dst, const struct moe_st_tensor *t, size_t n, const char *file,
		   struct moe_error *err)
{
	switch (t->dtype) {
	case MOE_F32:
		memcpy(dst, t->data, n * sizeof(float));
		break;
	case MOE_BF16: {
		const uint8_t *s = t->data;
		for (size_t i = 0; i < n; i++)
			dst[i] = moe_bf16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
		break;
	}
	case MOE_F16: {
		const uint8_t *s = t->data;
		for (size_t i = 0; i < n; i++)
			dst[i] = moe_f16_to_f32((uint16_t)(s[2 * i] | s[2 * i + 1] << 8));
		break;
	}
	default:
		return moe_error_set(err, MOE_EFORMAT, "%s: tensor '%s': unsupported dtype %s", file,
				     t->name, moe_dtype_name(t->dtype));
	}
	return 0;
}

static int load_file(struct moe_model *m, float *host, bool *seen, const char *path,
		     struct moe_error *err)
{
	struct moe_st_file *f = moe_st_open(path, err);
	if (!f)
		return err ? err->code : MOE_EFORMAT;
	int rc = 0;
	for (size_t i = 0; i < f->n_tensors && rc == 0; i++)
		rc = take_tensor(m, host, seen, &f->tensors[i], path, err);
	moe_st_close(f);
	return rc;
}

static bool path_is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool path_exists(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0;
}

/* Shards listed by DIR/model.safetensors.index.json ("weight_map"). */
static int load_index(struct moe_model *m, float *host, bool *seen, const char *dir,
		      const char *index, struct moe_error *err)
{
	json_t *j = moe_json_load_file(index, err);
	if (!j)
		return err ? err->code : MOE_EFORMAT;
	json_t *wm = json_object_get(j, "weight_map");
	int rc = 0;
	if (!json_is_object(wm)) {
		json_decref(j);
		return moe_error_set(err, MOE_EFORMAT, "%s: key 'weight_map': expected an object", index);
	}
	/* each distinct shard once, in order of first appearance */
	json_t *done = json_object();
	const char *key;
	json_t *v;
	json_object_foreach(wm, key, v) {
		const char *shard = json_string_value(v);
		if (!shard || strchr(shard, '/') || shard[0] == '.') {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: key 'weight_map.%s': bad shard name", index, key);
			break;
		}
		if (json_object_get(done, shard))
			continue;
		json_object_set_new(done, shard, json_true());
		char *p = moe_path_join(dir, shard);
		if (!p) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			break;
		}
		rc = load_file(m, host, seen, p, err);
		free(p);
		if (rc < 0)
			break;
	}
	json_decref(done);
	json_decref(j);
	return rc;
}

int moe_model_load_weights(struct moe_model *m, const char *path, struct moe_error *err)
{
	/* host backends are loaded in place; others through a host copy */
	float *direct = moe_model_params_host(m);
	float *host = direct ? direct : malloc(m->n_floats * sizeof(float));
	bool *seen = calloc(m->n_params, sizeof(bool));
	int rc = 0;
	if (!host || !seen) {
		if (!direct)
			free(host);
		free(seen);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	if (!direct)
		moe_model_get_params(m, host);
	if (path_is_dir(path)) {
		char *index = moe_path_join(path, "model.safetensors.index.json");
		char *single = moe_path_join(path, "model.safetensors");
		if (!index || !single)
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		else if (path_exists(single))
			rc = load_file(m, host, seen, single, err);
		else if (path_exists(index))
			rc = load_index(m, host, seen, path, index, err);
		else
			rc = moe_error_set(err, MOE_ENOTFOUND,
					   "%s: no model.safetensors or model.safetensors.index.json", path);
		free(index);
		free(single);
	} else {
		rc = load_file(m, host, seen, path, err);
	}
	for (size_t i = 0; rc == 0 && i < m->n_params; i++) {
		const struct moe_param *p = &m->params[i];
		if (seen[i])
			continue;
		if (p->kind == MOE_P_BIAS) {
			memset(host + p->offset, 0, p->numel * sizeof(float));
			continue;
		}
		rc = moe_error_set(err, MOE_EFORMAT, "%s: missing tensor '%s'", path, p->name);
	}
	if (rc == 0 && !direct)
		moe_model_set_params(m, host);
	else if (rc == 0)
		moe_model_params_updated(m);
	if (!direct)
		free(host);
	free(seen);
	return rc;
}

int moe_model_save_dir(struct moe_model *m, const char *dir, struct moe_error *err)
{
	char *cfg = moe_path_join(dir, "config.json");
	char *st = moe_path_join(dir, "model.safetensors");
	int rc;
	if (!cfg || !st)
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
	else if ((rc = moe_config_save(&m->cfg, cfg, err)) == 0)
		rc = moe_model_save_safetensors(m, st, err);
	free(cfg);
	free(st);
	return rc;
}

struct moe_model *moe_model_load_dir(const char *dir, struct moe_backend *be, struct moe_error *err)
{
	struct moe_config cfg;
	if (!path_is_dir(dir)) {
		moe_error_set(err, MOE_ENOTFOUND, "%s: not a checkpoint directory", dir);
		if (be)
			be->destroy(be);
		return NULL;
	}
	if (moe_config_load(&cfg, dir, err) < 0) {
		if (be)
			be->destroy(be);
		return NULL;
	}
	struct moe_model *m = moe_model_new(&cfg, be, err);
	if (!m)
		return NULL;
	if (moe_model_load_weights(m, dir, err) < 0) {
		moe_model_free(m);
		return NULL;
	}
	return m;
}
