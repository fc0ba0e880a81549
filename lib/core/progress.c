/* A progress line on stderr: only on a terminal, a few redraws a second,
 * with rate and ETA. */
#include "core/core.h"

#include <stdlib.h>
#include <string.h>
#include <unistd.h>

struct moe_progress {
	char label[64];
	char unit[16];
	uint64_t total, done;
	double start, last_draw;
	bool draw;
	bool drawn;
};

struct moe_progress *moe_progress_new(const char *label, uint64_t total, const char *unit)
{
	struct moe_progress *p = calloc(1, sizeof *p);
	if (!p)
		return NULL;
	snprintf(p->label, sizeof p->label, "%s", label ? label : "");
	snprintf(p->unit, sizeof p->unit, "%s", unit ? unit : "");
	p->total = total;
	p->start = moe_now();
	p->draw = moe_verbosity >= 1 && isatty(STDERR_FILENO);
	return p;
}

void moe_progress_set_total(struct moe_progress *p, uint64_t total)
{
	if (p)
		p->total = total;
}

static void fmt_amount(char *buf, size_t cap, double v, const char *unit)
{
	static const char *si[] = {"", "K", "M", "G", "T"};
	int i = 0;
	bool bytes = strcmp(unit, "B") == 0;
	double base = bytes ? 1024.0 : 1000.0;

	while (v >= base && i < 4) {
		v /= base;
		i++;
	}
	if (i == 0)
		snprintf(buf, cap, "%.0f %s", v, unit);
	else
		snprintf(buf, cap, "%.1f %s%s", v, si[i], unit);
}

static void fmt_eta(char *buf, size_t cap, double s)
{
	if (s < 0 || s > 1e7) {
		snprintf(buf, cap, "--:--");
		return;
	}
	int h = (int)(s / 3600), m = (int)(s / 60) % 60, sec = (int)s % 60;
	if (h)
		snprintf(buf, cap, "%d:%02d:%02d", h, m, sec);
	else
		snprintf(buf, cap, "%02d:%02d", m, sec);
}

static void render(struct moe_progress *p, bool final)
{
	double now = moe_now(), el = now - p->start;
	double rate = el > 0 ? (double)p->done / el : 0;
	char done[32], rt[32], tot[32], eta[16];

	fmt_amount(done, sizeof done, (double)p->done, p->unit);
	fmt_amount(rt, sizeof rt, rate, p->unit);
	if (p->total) {
		double frac = (double)p->done / (double)p->total;
		fmt_amount(tot, sizeof tot, (double)p->total, p->unit);
		fmt_eta(eta, sizeof eta, rate > 0 ? (double)(p->total - (p->done < p->total ? p->done : p->total)) / rate : -1);
		fprintf(stderr, "\r\033[K%s %5.1f%% %s / %s  %s/s  ETA %s", p->label, 100.0 * frac,
			done, tot, rt, final ? "00:00" : eta);
	} else {
		fprintf(stderr, "\r\033[K%s %s  %s/s", p->label, done, rt);
	}
	fflush(stderr);
	p->drawn = true;
	p->last_draw = now;
}

void moe_progress_update(struct moe_progress *p, uint64_t done)
{
	if (!p)
		return;
	p->done = done;
	if (p->draw && moe_now() - p->last_draw >= 0.25)
		render(p, false);
}

void moe_progress_add(struct moe_progress *p, uint64_t delta)
{
	if (p)
		moe_progress_update(p, p->done + delta);
}

void moe_progress_free(struct moe_progress *p)
{
	if (!p)
		return;
	if (p->drawn) {
		render(p, true);
		fputc('\n', stderr);
	} else if (moe_verbosity >= 2) {
		double el = moe_now() - p->start;
		char done[32], rt[32];
		fmt_amount(done, sizeof done, (double)p->done, p->unit);
		fmt_amount(rt, sizeof rt, el > 0 ? (double)p->done / el : 0, p->unit);
		fprintf(stderr, "%s: %s %s in %.2f s (%s/s)\n", moe_progname(), p->label, done, el, rt);
	}
	free(p);
}
