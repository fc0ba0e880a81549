/*
 * Learning-rate schedules and the aux-loss coefficient schedule.
 */
#include <math.h>
#include <string.h>

#include "train/train.h"

static const char *const sched_names[] = {
	[MOE_SCHED_COSINE] = "cosine",
	[MOE_SCHED_LINEAR] = "linear",
	[MOE_SCHED_CONSTANT] = "constant",
	[MOE_SCHED_WSD] = "wsd",
};

const char *moe_sched_name(enum moe_sched_kind k)
{
	if ((unsigned)k >= sizeof sched_names / sizeof sched_names[0])
		return "?";
	return sched_names[k];
}

int moe_sched_parse(const char *s, enum moe_sched_kind *out)
{
	for (size_t i = 0; i < sizeof sched_names / sizeof sched_names[0]; i++) {
		if (strcmp(s, sched_names[i]) == 0) {
			*out = (enum moe_sched_kind)i;
			return 0;
		}
	}
	return MOE_EINVAL;
}

double moe_schedule_lr(const struct moe_schedule *s, int64_t step)
{
	if (step < 0)
		step = 0;
	if (step < s->warmup_steps) {
		double f = s->warmup_start +
			   (1.0 - s->warmup_start) * (double)step / (double)s->warmup_steps;
		return s->lr * f;
	}
	int64_t t = step - s->warmup_steps;
	int64_t n = s->decay_steps;
	switch (s->kind) {
	case MOE_SCHED_CONSTANT:
		return s->lr;
	case MOE_SCHED_COSINE:
		if (n <= 0 || t >= n)
			return s->min_lr;
		return s->min_lr + (s->lr - s->min_lr) * (1.0 + cos(M_PI * (double)t / (double)n)) / 2.0;
	case MOE_SCHED_LINEAR:
		if (n <= 0 || t >= n)
			return s->min_lr;
		return s->lr + (s->min_lr - s->lr) * (double)t / (double)n;
	case MOE_SCHED_WSD: {
		/* stable at lr until the last wsd_decay_steps of the
		 * decay_steps span, then linear to min_lr */
		int64_t d = s->wsd_decay_steps;
		if (d > n)
			d = n;
		if (t >= n)
			return s->min_lr;
		if (t < n - d)
			return s->lr;
		return s->lr + (s->min_lr - s->lr) * (double)(t - (n - d)) / (double)d;
	}
	}
	return s->lr;
}
