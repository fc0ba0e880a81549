/*
 * Training options: defaults (the seed's recipe), a JSON training config and
 * command-line overrides, all through one table so that the JSON keys and the
 * long options are the same names (with '_' for '-').
 */
#include <math.h>
#include <stddef.h>
#include <string.h>

#include "train/train.h"

enum opt_type { OPT_INT, OPT_DOUBLE, OPT_STRING };

struct opt_def {
	const char *name;
	enum opt_type type;
	size_t off;
	double min, max;        /* numeric range */
	const char *const *choices; /* strings: allowed values or NULL */
};

static const char *const device_choices[] = { "auto", "cpu", "cuda", NULL };
static const char *const sched_choices[] = { "cosine", "linear", "constant", "wsd", NULL };
static const char *const decay_choices[] = { "all", "matrices", NULL };
static const char *const clip_choices[] = { "expert", "global", "none", NULL };
static const char *const recompute_choices[] = { "cheap", "full", NULL };

#define O(f) offsetof(struct moe_train_opts, f)
static const struct opt_def defs[] = {
	{ "model", OPT_STRING, O(model), 0, 0, NULL },
	{ "data", OPT_STRING, O(data), 0, 0, NULL },
	{ "out", OPT_STRING, O(out), 0, 0, NULL },
	{ "device", OPT_STRING, O(device), 0, 0, device_choices },
	{ "steps", OPT_INT, O(steps), 0, 1e15, NULL },
	{ "tokens", OPT_INT, O(tokens), 0, 9e18, NULL },
	{ "micro_batch", OPT_INT, O(micro_batch), 1, 1 << 20, NULL },
	{ "grad_accum", OPT_INT, O(grad_accum), 1, 1 << 20, NULL },
	{ "seq_len", OPT_INT, O(seq_len), 0, 1 << 24, NULL },
	{ "lr", OPT_DOUBLE, O(lr), 0, 10, NULL },
	{ "min_lr", OPT_DOUBLE, O(min_lr), 0, 10, NULL },
	{ "warmup", OPT_INT, O(warmup), 0, 1e15, NULL },
	{ "warmup_start", OPT_DOUBLE, O(warmup_start), 0, 1, NULL },
	{ "schedule", OPT_STRING, O(schedule), 0, 0, sched_choices },
	{ "decay_steps", OPT_INT, O(decay_steps), 0, 1e15, NULL },
	{ "wsd_decay", OPT_DOUBLE, O(wsd_decay), 0, 1, NULL },
	{ "weight_decay", OPT_DOUBLE, O(weight_decay), 0, 10, NULL },
	{ "decay", OPT_STRING, O(decay), 0, 0, decay_choices },
	{ "beta1", OPT_DOUBLE, O(beta1), 0, 0.999999, NULL },
	{ "beta2", OPT_DOUBLE, O(beta2), 0, 0.999999999, NULL },
	{ "eps", OPT_DOUBLE, O(eps), 0, 1, NULL },
	{ "clip", OPT_DOUBLE, O(clip), 0, 1e30, NULL },
	{ "clip_expert", OPT_DOUBLE, O(clip_expert), -1, 1e30, NULL },
	{ "clip_groups", OPT_STRING, O(clip_groups), 0, 0, clip_choices },
	{ "aux_coef", OPT_DOUBLE, O(aux_coef), -1, 1e6, NULL },
	{ "aux_coef_end", OPT_DOUBLE, O(aux_coef_end), -1, 1e6, NULL },
	{ "aux_decay_steps", OPT_INT, O(aux_decay_steps), -1, 1e15, NULL },
	{ "seed", OPT_INT, O(seed), 0, 9e18, NULL },
	{ "eval_every", OPT_INT, O(eval_every), 0, 1e15, NULL },
	{ "eval_batches", OPT_INT, O(eval_batches), 0, 1e9, NULL },
	{ "ckpt_every", OPT_INT, O(ckpt_every), -1, 1e15, NULL },
	{ "keep", OPT_INT, O(keep), 0, 1e9, NULL },
	{ "threads", OPT_INT, O(threads), 0, 4096, NULL },
	{ "recompute", OPT_STRING, O(recompute), 0, 0, recompute_choices },
};
#undef O

void moe_train_opts_default(struct moe_train_opts *o)
{
	memset(o, 0, sizeof *o);
	strcpy(o->device, "auto");
	o->steps = 0;
	o->tokens = 0;
	o->micro_batch = 16;
	o->grad_accum = 1;
	o->seq_len = 0; /* the model's context */
	o->lr = 7.5e-4;
	o->min_lr = 5e-5;
	o->warmup = 200;
	o->warmup_start = 0.2;
	strcpy(o->schedule, "cosine");
	o->decay_steps = 0; /* steps - warmup */
	o->wsd_decay = 0.2;
	o->weight_decay = 0.01;
	strcpy(o->decay, "all");
	o->beta1 = 0.9;
	o->beta2 = 0.999;
	o->eps = 1e-8;
	o->clip = 1.0;
	o->clip_expert = -1; /* same as clip */
	strcpy(o->clip_groups, "expert");
	o->aux_coef = -1;       /* the model config's router_aux_loss_coef */
	o->aux_coef_end = -1;   /* the model config's */
	o->aux_decay_steps = -1; /* the model config's */
	o->seed = 1234;
	o->eval_every = 200;
	o->eval_batches = 8;
	o->ckpt_every = 1000;
	o->keep = 3;
	o->threads = 0;
	strcpy(o->recompute, "cheap");
}

static const struct opt_def *find_def(const char *key)
{
	char norm[64];
	size_t n = strlen(key);
	if (n >= sizeof norm)
		return NULL;
	for (size_t i = 0; i <= n; i++)
		norm[i] = key[i] == '-' ? '_' : key[i];
	for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++)
		if (strcmp(defs[i].name, norm) == 0)
			return &defs[i];
	return NULL;
}

static int set_string(struct moe_train_opts *o, const struct opt_def *d, const char *v,
		      const char *where, struct moe_error *err)
{
	char *dst = (char *)o + d->off;
	if (d->choices) {
		bool ok = false;
		for (const char *const *c = d->choices; *c; c++)
			if (strcmp(*c, v) == 0)
				ok = true;
		if (!ok) {
			char list[256] = "";
			for (const char *const *c = d->choices; *c; c++) {
				if (c != d->choices)
					strncat(list, ", ", sizeof list - strlen(list) - 1);
				strncat(list, *c, sizeof list - strlen(list) - 1);
			}
			return moe_error_set(err, MOE_EINVAL, "%s: invalid %s '%s' (one of: %s)",
					     where, d->name, v, list);
		}
	}
	if (strlen(v) >= MOE_TRAIN_STR_MAX)
		return moe_error_set(err, MOE_EINVAL, "%s: %s too long", where, d->name);
	strcpy(dst, v);
	return 0;
}

static int set_number(struct moe_train_opts *o, const struct opt_def *d, double x, bool integral,
		      const char *where, struct moe_error *err)
{
	if (d->type == OPT_INT && !integral)
		return moe_error_set(err, MOE_EINVAL, "%s: %s must be an integer", where, d->name);
	if (!(x >= d->min && x <= d->max))
		return moe_error_set(err, MOE_ERANGE, "%s: %s %g out of range [%g, %g]", where,
				     d->name, x, d->min, d->max);
	if (d->type == OPT_INT)
		*(int64_t *)((char *)o + d->off) = (int64_t)x;
	else
		*(double *)((char *)o + d->off) = x;
	return 0;
}

int moe_train_opts_set(struct moe_train_opts *o, const char *key, const char *value,
		       struct moe_error *err)
{
	const struct opt_def *d = find_def(key);
	if (!d)
		return moe_error_set(err, MOE_EINVAL, "unknown option '%s'", key);
	char where[80];
	snprintf(where, sizeof where, "--%s", key);
	for (char *p = where; *p; p++)
		if (*p == '_')
			*p = '-';
	if (d->type == OPT_STRING)
		return set_string(o, d, value, "option", err);
	if (d->type == OPT_INT) {
		int64_t v;
		/* accept 1e6-style and k/M suffixes through the size parser */
		uint64_t u;
		if (moe_parse_i64(value, (int64_t)d->min, (int64_t)d->max, &v, where + 2, err) == 0)
			return set_number(o, d, (double)v, true, "option", err);
		if (value[0] != '-' && moe_parse_size(value, &u, where + 2, err) == 0)
			return set_number(o, d, (double)u, true, "option", err);
		return moe_error_set(err, MOE_EINVAL, "invalid %s '%s'", where + 2, value);
	}
	double x;
	int rc = moe_parse_double(value, d->min, d->max, &x, where + 2, err);
	if (rc)
		return rc;
	return set_number(o, d, x, false, "option", err);
}

int moe_train_opts_load_json(struct moe_train_opts *o, const json_t *obj, const char *where,
			     struct moe_error *err)
{
	if (!json_is_object(obj))
		return moe_error_set(err, MOE_EFORMAT, "%s: not a JSON object", where);
	const char *key;
	json_t *v;
	json_object_foreach((json_t *)obj, key, v) {
		const struct opt_def *d = find_def(key);
		if (!d)
			return moe_error_set(err, MOE_EFORMAT, "%s: unknown key '%s'", where, key);
		int rc;
		if (d->type == OPT_STRING) {
			if (!json_is_string(v))
				return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be a string",
						     where, key);
			rc = set_string(o, d, json_string_value(v), where, err);
		} else {
			if (!json_is_number(v))
				return moe_error_set(err, MOE_EFORMAT, "%s: key '%s' must be a number",
						     where, key);
			double x = json_number_value(v);
			bool integral = json_is_integer(v) || (isfinite(x) && x == floor(x));
			rc = set_number(o, d, x, integral, where, err);
		}
		if (rc)
			return rc;
	}
	return 0;
}

int moe_train_opts_load_file(struct moe_train_opts *o, const char *path, struct moe_error *err)
{
	json_t *j = moe_json_load_file(path, err);
	if (!j)
		return err && err->code ? err->code : MOE_EFORMAT;
	int rc = moe_train_opts_load_json(o, j, path, err);
	json_decref(j);
	return rc;
}

json_t *moe_train_opts_to_json(const struct moe_train_opts *o)
{
	json_t *j = json_object();
	if (!j)
		return NULL;
	for (size_t i = 0; i < sizeof defs / sizeof defs[0]; i++) {
		const struct opt_def *d = &defs[i];
		const char *p = (const char *)o + d->off;
		json_t *v;
		if (d->type == OPT_STRING)
			v = json_string(p);
		else if (d->type == OPT_INT)
			v = json_integer(*(const int64_t *)p);
		else
			v = json_real(*(const double *)p);
		if (json_object_set_new(j, d->name, v)) {
			json_decref(j);
			return NULL;
		}
	}
	return j;
}
