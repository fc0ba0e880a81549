/*
 * Model configuration: JSON with HF OlmoeConfig key names plus our own keys.
 */
#include "model/model.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#ifndef MOE_DATADIR
#define MOE_DATADIR "/usr/local/share/moe"
#endif

void moe_config_defaults(struct moe_config *c)
{
	memset(c, 0, sizeof(*c));
	c->vocab_size = 50304;
	c->hidden_size = 2048;
	c->intermediate_size = 1024;
	c->num_hidden_layers = 16;
	c->num_attention_heads = 16;
	c->num_experts = 64;
	c->num_experts_per_tok = 8;
	c->norm_topk_prob = false;
	c->rms_norm_eps = 1e-5;
	c->rope_theta = 10000.0;
	c->max_position_embeddings = 4096;
	c->router_aux_loss_coef = 0.01;
	c->pad_token_id = 1;
	c->eos_token_id = 50279;
	c->bos_token_id = -1;
	c->initializer_range = 0.02;
	c->n_shared_experts = 0;
	c->shared_expert_intermediate_size = 0; /* 0: = intermediate_size */
	c->n_dense_layers = 0;
	c->dense_intermediate_size = 0;
	c->loss_free_balancing = false;
	c->balance_update_rate = 0.001;
	c->balance_bias_clamp = 5.0;
	c->aux_loss_form = MOE_AUX_SWITCH;
	c->router_aux_loss_coef_end = NAN; /* NAN: = router_aux_loss_coef */
	c->router_aux_loss_decay_steps = 0;
	c->router_z_loss_coef = 0.0;
	c->router_kind = MOE_ROUTER_SOFTMAX_TOPK;
}

const char *moe_aux_form_name(enum moe_aux_form f)
{
	return f == MOE_AUX_MEGABLOCKS ? "megablocks" : "switch";
}

const char *moe_router_kind_name(enum moe_router_kind k)
{
	(void)k;
	return "softmax_topk";
}

/* ---- parsing helpers ---------------------------------------------------------- */

static int get_int(const json_t *v, const char *key, int64_t lo, int64_t hi, int64_t *out,
		   const char *where, struct moe_error *err)
{
	if (json_is_real(v)) {
		double d = json_real_value(v);
		if (d != floor(d))
			return moe_error_set(err, MOE_EFORMAT, "%s: key '%s': expected an integer",
					     where, key);
		if (d < (double)lo || d > (double)hi)
			return moe_error_set(err, MOE_ERANGE, "%s: key '%s': %g out of range [%lld, %lld]",
					     where, key, d, (long long)lo, (long long)hi);
		*out = (int64_t)d;
		return 0;
	}
	if (!json_is_integer(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s': expected an integer", where, key);
	int64_t x = (int64_t)json_integer_value(v);
	if (x < lo || x > hi)
		return moe_error_set(err, MOE_ERANGE, "%s: key '%s': %lld out of range [%lld, %lld]",
				     where, key, (long long)x, (long long)lo, (long long)hi);
	*out = x;
	return 0;
}

static int get_dbl(const json_t *v, const char *key, double lo, double hi, double *out,
		   const char *where, struct moe_error *err)
{
	if (!json_is_number(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s': expected a number", where, key);
	double x = json_number_value(v);
	if (!(x >= lo && x <= hi))
		return moe_error_set(err, MOE_ERANGE, "%s: key '%s': %g out of range [%g, %g]", where,
				     key, x, lo, hi);
	*out = x;
	return 0;
}

static int get_bool(const json_t *v, const char *key, bool *out, const char *where,
		    struct moe_error *err)
{
	if (!json_is_boolean(v))
		return moe_error_set(err, MOE_EFORMAT, "%s: key '%s': expected true or false", where, key);
	*out = json_is_true(v);
	return 0;
}

#define INT_KEY(name, lo, hi)                                                            \
	if (!strcmp(key, #name)) {                                                       \
		int64_t x_;                                                              \
		if ((rc = get_int(v, key, lo, hi, &x_, where, err)) < 0)                 \
			return rc;                                                       \
		cfg->name = (int)x_;                                                     \
		continue;                                                                \
	}
#define DBL_KEY(name, lo, hi)                                                            \
	if (!strcmp(key, #name)) {                                                       \
		if ((rc = get_dbl(v, key, lo, hi, &cfg->name, where, err)) < 0)          \
			return rc;                                                       \
		continue;                                                                \
	}
#define BOOL_KEY(name)                                                                   \
	if (!strcmp(key, #name)) {                                                       \
		if ((rc = get_bool(v, key, &cfg->name, where, err)) < 0)                 \
			return rc;                                                       \
		continue;                                                                \
	}

/* Fill the derived defaults (widths that default to another key). */
static void config_finish(struct moe_config *c)
{
	if (c->shared_expert_intermediate_size <= 0)
		c->shared_expert_intermediate_size = c->intermediate_size;
	if (isnan(c->router_aux_loss_coef_end))
		c->router_aux_loss_coef_end = c->router_aux_loss_coef;
}

/* HF keys that do not change the model: accepted and ignored. */
static const char *const hf_ignored[] = {
	"architectures", "torch_dtype", "dtype", "transformers_version", "use_cache",
	"output_router_logits", "attention_dropout", "_name_or_path", "model_type",
	"rope_parameters", "return_dict", "output_hidden_states",
	"output_attentions", "is_encoder_decoder", "id2label", "label2id", "pretraining_tp",
	"layer_types", "chunk_size_feed_forward", "tokenizer_class", "_attn_implementation",
	"router_jitter_noise", NULL,
};

int moe_config_from_json(struct moe_config *cfg, const json_t *obj, const char *where,
			 struct moe_error *err)
{
	const char *key;
	json_t *v;
	int rc;
	if (!json_is_object(obj))
		return moe_error_set(err, MOE_EFORMAT, "%s: expected a JSON object", where);
	json_object_foreach((json_t *)obj, key, v) {
		INT_KEY(vocab_size, 1, 1 << 24)
		INT_KEY(hidden_size, 1, 1 << 16)
		INT_KEY(intermediate_size, 1, 1 << 20)
		INT_KEY(num_hidden_layers, 1, 4096)
		INT_KEY(num_attention_heads, 1, 4096)
		INT_KEY(num_experts, 1, 4096)
		INT_KEY(num_experts_per_tok, 1, 4096)
		BOOL_KEY(norm_topk_prob)
		DBL_KEY(rms_norm_eps, 0.0, 1.0)
		DBL_KEY(rope_theta, 1.0, 1e12)
		INT_KEY(max_position_embeddings, 1, 1 << 24)
		DBL_KEY(router_aux_loss_coef, 0.0, 1e6)
		DBL_KEY(initializer_range, 0.0, 10.0)
		INT_KEY(n_shared_experts, 0, 4096)
		INT_KEY(shared_expert_intermediate_size, 0, 1 << 20)
		INT_KEY(n_dense_layers, 0, 4096)
		INT_KEY(dense_intermediate_size, 0, 1 << 20)
		BOOL_KEY(loss_free_balancing)
		DBL_KEY(balance_update_rate, 0.0, 1e3)
		DBL_KEY(balance_bias_clamp, 0.0, 1e6)
		DBL_KEY(router_aux_loss_coef_end, 0.0, 1e6)
		DBL_KEY(router_z_loss_coef, 0.0, 1e6)
		if (!strcmp(key, "router_aux_loss_decay_steps")) {
			int64_t x;
			if ((rc = get_int(v, key, 0, INT64_MAX / 2, &x, where, err)) < 0)
				return rc;
			cfg->router_aux_loss_decay_steps = x;
			continue;
		}
		if (!strcmp(key, "pad_token_id") || !strcmp(key, "eos_token_id") ||
		    !strcmp(key, "bos_token_id")) {
			int64_t x = -1;
			if (!json_is_null(v) && (rc = get_int(v, key, -1, 1 << 24, &x, where, err)) < 0)
				return rc;
			if (key[0] == 'p')
				cfg->pad_token_id = (int)x;
			else if (key[0] == 'e')
				cfg->eos_token_id = (int)x;
			else
				cfg->bos_token_id = (int)x;
			continue;
		}
		if (!strcmp(key, "aux_loss_form")) {
			const char *s = json_string_value(v);
			if (s && !strcmp(s, "switch"))
				cfg->aux_loss_form = MOE_AUX_SWITCH;
			else if (s && !strcmp(s, "megablocks"))
				cfg->aux_loss_form = MOE_AUX_MEGABLOCKS;
			else
				return moe_error_set(err, MOE_EINVAL,
						     "%s: key 'aux_loss_form': expected \"switch\" or \"megablocks\"",
						     where);
			continue;
		}
		if (!strcmp(key, "router_kind")) {
			const char *s = json_string_value(v);
			if (s && !strcmp(s, "softmax_topk"))
				cfg->router_kind = MOE_ROUTER_SOFTMAX_TOPK;
			else
				return moe_error_set(err, MOE_EINVAL,
						     "%s: key 'router_kind': expected \"softmax_topk\"", where);
			continue;
		}
		/* HF keys with a single supported value */
		if (!strcmp(key, "num_key_value_heads")) {
			if (json_is_null(v))
				continue;
			int64_t x;
			if ((rc = get_int(v, key, 1, 4096, &x, where, err)) < 0)
				return rc;
			json_t *h = json_object_get(obj, "num_attention_heads");
			int64_t heads = h && json_is_integer(h) ? json_integer_value(h) : cfg->num_attention_heads;
			if (x != heads)
				return moe_error_set(err, MOE_EUNSUPPORTED,
						     "%s: key 'num_key_value_heads': %lld != num_attention_heads (no GQA)",
						     where, (long long)x);
			continue;
		}
		if (!strcmp(key, "tie_word_embeddings") || !strcmp(key, "attention_bias")) {
			if (!json_is_false(v))
				return moe_error_set(err, MOE_EUNSUPPORTED, "%s: key '%s': only false is supported",
						     where, key);
			continue;
		}
		if (!strcmp(key, "clip_qkv") || !strcmp(key, "rope_scaling")) {
			if (!json_is_null(v))
				return moe_error_set(err, MOE_EUNSUPPORTED, "%s: key '%s': only null is supported",
						     where, key);
			continue;
		}
		if (!strcmp(key, "hidden_act")) {
			const char *s = json_string_value(v);
			if (!s || strcmp(s, "silu"))
				return moe_error_set(err, MOE_EUNSUPPORTED, "%s: key 'hidden_act': only \"silu\" is supported",
						     where);
			continue;
		}
		if (!strcmp(key, "model_type")) {
			const char *s = json_string_value(v);
			if (!s || strcmp(s, "olmoe"))
				return moe_error_set(err, MOE_EUNSUPPORTED, "%s: key 'model_type': only \"olmoe\" is supported",
						     where);
			continue;
		}
		bool ign = false;
		for (int i = 0; hf_ignored[i]; i++)
			if (!strcmp(key, hf_ignored[i]))
				ign = true;
		if (ign)
			continue;
		return moe_error_set(err, MOE_EINVAL, "%s: unknown key '%s'", where, key);
	}
	config_finish(cfg);
	return moe_config_validate(cfg, where, err);
}

int moe_config_validate(const struct moe_config *c, const char *where, struct moe_error *err)
{
	if (c->hidden_size % c->num_attention_heads)
		return moe_error_set(err, MOE_EINVAL,
				     "%s: key 'hidden_size': %d not divisible by num_attention_heads %d",
				     where, c->hidden_size, c->num_attention_heads);
	if ((c->hidden_size / c->num_attention_heads) % 2)
		return moe_error_set(err, MOE_EINVAL, "%s: key 'num_attention_heads': head dim must be even",
				     where);
	if (c->num_experts_per_tok > c->num_experts)
		return moe_error_set(err, MOE_EINVAL,
				     "%s: key 'num_experts_per_tok': %d > num_experts %d", where,
				     c->num_experts_per_tok, c->num_experts);
	if (c->n_dense_layers > c->num_hidden_layers)
		return moe_error_set(err, MOE_EINVAL,
				     "%s: key 'n_dense_layers': %d > num_hidden_layers %d", where,
				     c->n_dense_layers, c->num_hidden_layers);
	if (c->n_dense_layers > 0 && c->dense_intermediate_size <= 0)
		return moe_error_set(err, MOE_EINVAL,
				     "%s: key 'dense_intermediate_size': required (> 0) when n_dense_layers > 0",
				     where);
	if (c->pad_token_id >= c->vocab_size)
		return moe_error_set(err, MOE_EINVAL, "%s: key 'pad_token_id': %d >= vocab_size %d", where,
				     c->pad_token_id, c->vocab_size);
	if (c->eos_token_id >= c->vocab_size)
		return moe_error_set(err, MOE_EINVAL, "%s: key 'eos_token_id': %d >= vocab_size %d", where,
				     c->eos_token_id, c->vocab_size);
	if (!(c->rms_norm_eps > 0))
		return moe_error_set(err, MOE_EINVAL, "%s: key 'rms_norm_eps': must be > 0", where);
	return 0;
}

static bool is_file(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

static bool is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

int moe_config_load(struct moe_config *cfg, const char *path_or_name, struct moe_error *err)
{
	char *path = NULL;
	char *in_dir = is_dir(path_or_name) ? moe_path_join(path_or_name, "config.json") : NULL;
	bool bare = !strchr(path_or_name, '/') && !strstr(path_or_name, ".json");
	/* a directory stands for its config.json; a bare name that is a
	 * directory without one (./tiny) is still looked up as a preset */
	if (in_dir && (is_file(in_dir) || !bare)) {
		path = in_dir;
		in_dir = NULL;
	} else if (is_file(path_or_name) || !bare) {
		path = strdup(path_or_name);
	} else {
		const char *dd = getenv("MOE_DATADIR");
		char name[256];
		snprintf(name, sizeof(name), "models/%s.json", path_or_name);
		if (dd && *dd) {
			path = moe_path_join(dd, name);
			if (path && !is_file(path)) {
				free(path);
				path = NULL;
			}
		}
		if (!path)
			path = moe_path_join(MOE_DATADIR, name);
		if (path && !is_file(path)) {
			free(path);
			free(in_dir);
			return moe_error_set(err, MOE_ENOTFOUND,
					     "model '%s': not a file and no preset of that name (looked in %s%s%s/models)",
					     path_or_name, dd && *dd ? dd : "", dd && *dd ? "/models and " : "",
					     MOE_DATADIR);
		}
	}
	free(in_dir);
	if (!path)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	json_t *j = moe_json_load_file(path, err);
	if (!j) {
		free(path);
		return err ? err->code : MOE_EFORMAT;
	}
	moe_config_defaults(cfg);
	int rc = moe_config_from_json(cfg, j, path, err);
	json_decref(j);
	free(path);
	return rc;
}

json_t *moe_config_to_json(const struct moe_config *c)
{
	json_t *j = json_object();
	if (!j)
		return NULL;
	json_t *arch = json_array();
	json_array_append_new(arch, json_string("OlmoeForCausalLM"));
	json_object_set_new(j, "architectures", arch);
	json_object_set_new(j, "model_type", json_string("olmoe"));
	json_object_set_new(j, "vocab_size", json_integer(c->vocab_size));
	json_object_set_new(j, "hidden_size", json_integer(c->hidden_size));
	json_object_set_new(j, "intermediate_size", json_integer(c->intermediate_size));
	json_object_set_new(j, "num_hidden_layers", json_integer(c->num_hidden_layers));
	json_object_set_new(j, "num_attention_heads", json_integer(c->num_attention_heads));
	json_object_set_new(j, "num_key_value_heads", json_integer(c->num_attention_heads));
	json_object_set_new(j, "num_experts", json_integer(c->num_experts));
	json_object_set_new(j, "num_experts_per_tok", json_integer(c->num_experts_per_tok));
	json_object_set_new(j, "norm_topk_prob", json_boolean(c->norm_topk_prob));
	json_object_set_new(j, "rms_norm_eps", json_real(c->rms_norm_eps));
	json_object_set_new(j, "rope_theta", json_real(c->rope_theta));
	json_object_set_new(j, "max_position_embeddings", json_integer(c->max_position_embeddings));
	json_object_set_new(j, "router_aux_loss_coef", json_real(c->router_aux_loss_coef));
	json_object_set_new(j, "pad_token_id", c->pad_token_id >= 0 ? json_integer(c->pad_token_id) : json_null());
	json_object_set_new(j, "eos_token_id", c->eos_token_id >= 0 ? json_integer(c->eos_token_id) : json_null());
	json_object_set_new(j, "bos_token_id", c->bos_token_id >= 0 ? json_integer(c->bos_token_id) : json_null());
	json_object_set_new(j, "initializer_range", json_real(c->initializer_range));
	json_object_set_new(j, "tie_word_embeddings", json_false());
	json_object_set_new(j, "attention_bias", json_false());
	json_object_set_new(j, "attention_dropout", json_real(0.0));
	json_object_set_new(j, "clip_qkv", json_null());
	json_object_set_new(j, "hidden_act", json_string("silu"));
	json_object_set_new(j, "output_router_logits", json_false());
	json_object_set_new(j, "torch_dtype", json_string("float32"));
	/* ours */
	json_object_set_new(j, "n_shared_experts", json_integer(c->n_shared_experts));
	json_object_set_new(j, "shared_expert_intermediate_size",
			    json_integer(c->shared_expert_intermediate_size > 0
						 ? c->shared_expert_intermediate_size
						 : c->intermediate_size));
	json_object_set_new(j, "n_dense_layers", json_integer(c->n_dense_layers));
	json_object_set_new(j, "dense_intermediate_size", json_integer(c->dense_intermediate_size));
	json_object_set_new(j, "loss_free_balancing", json_boolean(c->loss_free_balancing));
	json_object_set_new(j, "balance_update_rate", json_real(c->balance_update_rate));
	json_object_set_new(j, "balance_bias_clamp", json_real(c->balance_bias_clamp));
	json_object_set_new(j, "aux_loss_form", json_string(moe_aux_form_name(c->aux_loss_form)));
	json_object_set_new(j, "router_aux_loss_coef_end",
			    json_real(isnan(c->router_aux_loss_coef_end) ? c->router_aux_loss_coef
									 : c->router_aux_loss_coef_end));
	json_object_set_new(j, "router_aux_loss_decay_steps",
			    json_integer((json_int_t)c->router_aux_loss_decay_steps));
	json_object_set_new(j, "router_z_loss_coef", json_real(c->router_z_loss_coef));
	json_object_set_new(j, "router_kind", json_string(moe_router_kind_name(c->router_kind)));
	return j;
}

int moe_config_save(const struct moe_config *cfg, const char *path, struct moe_error *err)
{
	json_t *j = moe_config_to_json(cfg);
	if (!j)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	int rc = moe_json_save_file(j, path, err);
	json_decref(j);
	return rc;
}

double moe_aux_coef(double start, double end, int64_t decay_steps, int64_t step)
{
	if (decay_steps <= 0 || step >= decay_steps)
		return decay_steps <= 0 ? start : end;
	return start + ((double)step / (double)decay_steps) * (end - start);
}

double moe_config_aux_coef(const struct moe_config *c, int64_t step)
{
	double end = isnan(c->router_aux_loss_coef_end) ? c->router_aux_loss_coef : c->router_aux_loss_coef_end;
	return moe_aux_coef(c->router_aux_loss_coef, end, c->router_aux_loss_decay_steps, step);
}
