/*
 * Schedules, options (config file + CLI precedence) and the run directory
 * helpers.  Expected values are computed here from the formulas (and the
 * seed's logged learning rates), not taken from the code under test.
 */
#include <criterion/criterion.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "model/model.h"
#include "train/train.h"

static struct moe_schedule seed_sched(void)
{
	struct moe_schedule s = { .kind = MOE_SCHED_COSINE, .lr = 7.5e-4, .min_lr = 5e-5,
				  .warmup_steps = 200, .warmup_start = 0.2, .decay_steps = 99800 };
	return s;
}

static void near(double got, double want, double rel)
{
	cr_assert(fabs(got - want) <= rel * fabs(want) + 1e-15, "got %.10g want %.10g", got, want);
}

Test(sched, seed_logged_values)
{
	/* the seed's stored logs: step 0 uses 1.5e-4, step 100 4.5e-4,
	 * step 20001 prints 6.8e-4 (rounded to 2 digits) */
	struct moe_schedule s = seed_sched();
	near(moe_schedule_lr(&s, 0), 1.5e-4, 1e-12);
	near(moe_schedule_lr(&s, 100), 4.5e-4, 1e-12);
	double v = moe_schedule_lr(&s, 20001);
	cr_assert(v >= 6.75e-4 && v < 6.85e-4, "lr(20001) = %g", v);
}

Test(sched, cosine_formula)
{
	struct moe_schedule s = seed_sched();
	/* torch LinearLR then CosineAnnealingLR, closed forms */
	for (int64_t t = 0; t < 200; t += 7)
		near(moe_schedule_lr(&s, t), 7.5e-4 * (0.2 + 0.8 * (double)t / 200.0), 1e-12);
	near(moe_schedule_lr(&s, 200), 7.5e-4, 1e-12);
	near(moe_schedule_lr(&s, 200 + 49900), (7.5e-4 + 5e-5) / 2, 1e-9);
	near(moe_schedule_lr(&s, 200 + 99800 / 4),
	     5e-5 + 7e-4 * (1 + sqrt(0.5)) / 2, 1e-9);
	near(moe_schedule_lr(&s, 100000), 5e-5, 1e-12);
	near(moe_schedule_lr(&s, 150000), 5e-5, 1e-12); /* no periodic rise */
}

Test(sched, linear_constant_wsd)
{
	struct moe_schedule s = { .kind = MOE_SCHED_LINEAR, .lr = 1e-3, .min_lr = 1e-4,
				  .warmup_steps = 10, .warmup_start = 0.0, .decay_steps = 90 };
	cr_assert_eq(moe_schedule_lr(&s, 0), 0.0);
	near(moe_schedule_lr(&s, 5), 5e-4, 1e-12);
	near(moe_schedule_lr(&s, 10), 1e-3, 1e-12);
	near(moe_schedule_lr(&s, 55), 1e-3 - 9e-4 * 45.0 / 90.0, 1e-12);
	near(moe_schedule_lr(&s, 100), 1e-4, 1e-12);

	s.kind = MOE_SCHED_CONSTANT;
	near(moe_schedule_lr(&s, 5), 5e-4, 1e-12);
	near(moe_schedule_lr(&s, 50), 1e-3, 1e-12);
	near(moe_schedule_lr(&s, 5000), 1e-3, 1e-12);

	s.kind = MOE_SCHED_WSD;
	s.wsd_decay_steps = 30; /* stable for 60 steps after warmup, then 30 decaying */
	near(moe_schedule_lr(&s, 10), 1e-3, 1e-12);
	near(moe_schedule_lr(&s, 69), 1e-3, 1e-12);
	near(moe_schedule_lr(&s, 70), 1e-3, 1e-12);
	near(moe_schedule_lr(&s, 85), 1e-3 - 9e-4 * 15.0 / 30.0, 1e-12);
	near(moe_schedule_lr(&s, 100), 1e-4, 1e-12);
}

Test(sched, aux_coef)
{
	/* the seed: 0.005 -> 0 over 50,000 steps */
	near(moe_aux_coef(0.005, 0, 50000, 0), 0.005, 1e-12);
	near(moe_aux_coef(0.005, 0, 50000, 25000), 0.0025, 1e-12);
	near(moe_aux_coef(0.005, 0, 50000, 12500), 0.00375, 1e-12);
	cr_assert_eq(moe_aux_coef(0.005, 0, 50000, 50000), 0.0);
	cr_assert_eq(moe_aux_coef(0.005, 0, 50000, 90000), 0.0);
	near(moe_aux_coef(0.01, 0, 0, 1234), 0.01, 1e-12);
}

Test(opts, names_parse)
{
	enum moe_sched_kind k;
	cr_assert_eq(moe_sched_parse("wsd", &k), 0);
	cr_assert_eq(k, MOE_SCHED_WSD);
	cr_assert_str_eq(moe_sched_name(MOE_SCHED_COSINE), "cosine");
	cr_assert_neq(moe_sched_parse("cos", &k), 0);
}

Test(opts, json_then_cli)
{
	struct moe_train_opts o;
	struct moe_error err = { 0 };
	moe_train_opts_default(&o);
	cr_assert_eq(o.seed, 1234);
	cr_assert_eq(o.lr, 7.5e-4);
	json_t *j = json_pack("{s:f, s:i, s:s, s:i}", "lr", 0.01, "micro_batch", 3, "schedule",
			      "linear", "grad_accum", 2);
	cr_assert_eq(moe_train_opts_load_json(&o, j, "t.json", &err), 0, "%s", err.msg);
	json_decref(j);
	cr_assert_eq(o.lr, 0.01);
	cr_assert_eq(o.micro_batch, 3);
	cr_assert_str_eq(o.schedule, "linear");
	/* the command line is applied after the file and wins */
	cr_assert_eq(moe_train_opts_set(&o, "micro-batch", "5", &err), 0, "%s", err.msg);
	cr_assert_eq(moe_train_opts_set(&o, "lr", "3e-4", &err), 0, "%s", err.msg);
	cr_assert_eq(o.micro_batch, 5);
	cr_assert_eq(o.lr, 3e-4);
	cr_assert_eq(o.grad_accum, 2);
	cr_assert_eq(moe_train_opts_set(&o, "tokens", "2M", &err), 0, "%s", err.msg);
	cr_assert_eq(o.tokens, 2 * 1024 * 1024);
}

Test(opts, errors_name_the_key)
{
	struct moe_train_opts o;
	struct moe_error err = { 0 };
	moe_train_opts_default(&o);
	json_t *j = json_pack("{s:i}", "learning_rate", 1);
	cr_assert_neq(moe_train_opts_load_json(&o, j, "t.json", &err), 0);
	cr_assert(strstr(err.msg, "learning_rate") && strstr(err.msg, "t.json"), "%s", err.msg);
	json_decref(j);
	j = json_pack("{s:f}", "micro_batch", 2.5);
	cr_assert_neq(moe_train_opts_load_json(&o, j, "t.json", &err), 0);
	cr_assert(strstr(err.msg, "micro_batch"), "%s", err.msg);
	json_decref(j);
	j = json_pack("{s:s}", "schedule", "cosinus");
	cr_assert_neq(moe_train_opts_load_json(&o, j, "t.json", &err), 0);
	cr_assert(strstr(err.msg, "cosinus"), "%s", err.msg);
	json_decref(j);
	cr_assert_neq(moe_train_opts_set(&o, "micro-batch", "0", &err), 0);
	cr_assert_neq(moe_train_opts_set(&o, "lr", "abc", &err), 0);
	cr_assert_neq(moe_train_opts_set(&o, "device", "tpu", &err), 0);
	/* round trip through JSON */
	moe_train_opts_set(&o, "warmup", "17", &err);
	json_t *all = moe_train_opts_to_json(&o);
	struct moe_train_opts o2;
	moe_train_opts_default(&o2);
	cr_assert_eq(moe_train_opts_load_json(&o2, all, "x", &err), 0, "%s", err.msg);
	cr_assert_eq(memcmp(&o, &o2, sizeof o), 0);
	json_decref(all);
}

Test(ckptdir, keep_and_latest)
{
	char root[] = "/tmp/moe-test-ckptXXXXXX";
	cr_assert(mkdtemp(root));
	struct moe_error err = { 0 };
	int64_t steps[] = { 30, 10, 20, 40 };
	for (int i = 0; i < 4; i++) {
		char name[32], path[256];
		moe_ckpt_name(steps[i], name, sizeof name);
		snprintf(path, sizeof path, "%s/%s", root, name);
		cr_assert_eq(mkdir(path, 0755), 0);
	}
	char stale[256];
	snprintf(stale, sizeof stale, "%s/.step-0000050.tmp.abcdef", root);
	cr_assert_eq(mkdir(stale, 0755), 0);
	char stale_link[256];
	snprintf(stale_link, sizeof stale_link, "%s/.latest.tmp.99999", root);
	cr_assert_eq(symlink("step-0000010", stale_link), 0);
	cr_assert_eq(moe_ckpt_link_latest(root, "step-0000040", &err), 0, "%s", err.msg);
	cr_assert_eq(moe_ckpt_prune(root, 2, &err), 0, "%s", err.msg);
	int64_t *got;
	size_t n;
	cr_assert_eq(moe_ckpt_list(root, &got, &n, &err), 0);
	cr_assert_eq(n, 2);
	cr_assert_eq(got[0], 30);
	cr_assert_eq(got[1], 40);
	free(got);
	cr_assert_neq(access(stale, F_OK), 0);
	struct stat st;
	cr_assert_neq(lstat(stale_link, &st), 0);
	char link[256], target[64];
	snprintf(link, sizeof link, "%s/latest", root);
	ssize_t len = readlink(link, target, sizeof target - 1);
	cr_assert_gt(len, 0);
	target[len] = 0;
	cr_assert_str_eq(target, "step-0000040");
	moe_rmtree(root, &err);
}
