/*
 * moe-routes plot: hand-written SVG figures from the statistics.
 *   usage_heatmap.svg   layer x expert, top-k share relative to uniform
 *   layers.svg          per-layer normalised entropy, continuity, token specialisation
 *   flow.svg            Sankey-like top-1 flow between consecutive layers
 *   expert_tokens.svg   top tokens of every expert of one layer
 */
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "routes/routes.h"
#include "routes/internal.h"

static void svg_begin(FILE *fp, int w, int h, const char *title)
{
	fprintf(fp, "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n"
		    "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"%d\" height=\"%d\" "
		    "viewBox=\"0 0 %d %d\" font-family=\"DejaVu Sans, Arial, sans-serif\" font-size=\"11\">\n"
		    "<rect width=\"100%%\" height=\"100%%\" fill=\"white\"/>\n"
		    "<text x=\"%d\" y=\"22\" font-size=\"15\" font-weight=\"bold\" text-anchor=\"middle\">%s</text>\n",
		w, h, w, h, w / 2, title);
}

/* Token text made visible and XML-safe: quotes escaped, newline as ↵, tab
 * as →, spaces at either end as ␣, other control characters as ·. */
static void svg_token(FILE *fp, const char *s, int maxchars)
{
	size_t n = strlen(s);
	int shown = 0;

	for (size_t i = 0; i < n && shown < maxchars; i++) {
		unsigned char c = (unsigned char)s[i];

		if (c == ' ' && (i == 0 || i == n - 1))
			fputs("\xE2\x90\xA3", fp);
		else if (c == '\n')
			fputs("\xE2\x86\xB5", fp);
		else if (c == '\t')
			fputs("\xE2\x86\x92", fp);
		else if (c < 0x20 || c == 0x7F)
			fputs("\xC2\xB7", fp);
		else if (c == '&')
			fputs("&amp;", fp);
		else if (c == '<')
			fputs("&lt;", fp);
		else if (c == '>')
			fputs("&gt;", fp);
		else if (c == '"')
			fputs("&quot;", fp);
		else {
			/* copy one UTF-8 character */
			size_t len = c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;

			if (i + len > n)
				len = n - i;
			fwrite(s + i, 1, len, fp);
			i += len - 1;
		}
		shown++;
	}
	if (shown == maxchars && strlen(s) > (size_t)maxchars)
		fputs("\xE2\x80\xA6", fp);
}

/* Diverging blue-white-red for v in [-1, 1]. */
static void diverging(double v, int *r, int *g, int *b)
{
	if (v < -1)
		v = -1;
	if (v > 1)
		v = 1;
	if (v < 0) { /* white -> blue (33, 102, 172) */
		double a = -v;
		*r = (int)(255 + a * (33 - 255));
		*g = (int)(255 + a * (102 - 255));
		*b = (int)(255 + a * (172 - 255));
	} else { /* white -> red (178, 24, 43) */
		*r = (int)(255 + v * (178 - 255));
		*g = (int)(255 + v * (24 - 255));
		*b = (int)(255 + v * (43 - 255));
	}
}

/* A categorical colour for an index. */
static void category(int i, int *r, int *g, int *b)
{
	static const int pal[10][3] = {{31, 119, 180}, {255, 127, 14}, {44, 160, 44}, {214, 39, 40},
				       {148, 103, 189}, {140, 86, 75}, {227, 119, 194}, {127, 127, 127},
				       {188, 189, 34}, {23, 190, 207}};
	*r = pal[i % 10][0];
	*g = pal[i % 10][1];
	*b = pal[i % 10][2];
}

static int finish(FILE *fp, struct moe_atomic *a, struct moe_error *err)
{
	fputs("</svg>\n", fp);
	if (ferror(fp)) {
		moe_atomic_abort(a);
		return moe_error_set(err, MOE_EIO, "write error");
	}
	return moe_atomic_commit(a, err);
}

static FILE *open_svg(struct moe_atomic *a, const char *dir, const char *name, struct moe_error *err)
{
	char *path = moe_path_join(dir, name);
	int rc;

	if (!path) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	rc = moe_atomic_open(a, path, err);
	free(path);
	return rc < 0 ? NULL : a->fp;
}

static int plot_heatmap(const struct moe_route_stats *s, const char *dir, struct moe_error *err)
{
	struct moe_atomic a = {0};
	int L = s->L, E = s->E;
	double cw = E <= 16 ? 28 : E <= 64 ? 14 : 900.0 / E, ch = L <= 24 ? 22 : 600.0 / L;
	int left = 70, top = 50, W = (int)(left + cw * E + 150), H = (int)(top + ch * L + 70);

	if (W < 520)
		W = 520;
	if (H < top + 150 + 60)
		H = top + 150 + 60;
	int step = E <= 16 ? 1 : E <= 64 ? 4 : (E + 15) / 16;
	FILE *fp = open_svg(&a, dir, "usage_heatmap.svg", err);

	if (!fp)
		return err->code;
	svg_begin(fp, W, H, "Expert usage: top-k share relative to uniform (K/E)");
	for (int l = 0; l < L; l++) {
		for (int e = 0; e < E; e++) {
			double ratio = s->T ? (double)s->topk[(size_t)l * E + e] * E / ((double)s->T * s->K) : 0;
			int r, g, b;

			if (ratio > 0)
				diverging(log2(ratio) / 2, &r, &g, &b);
			else
				r = g = b = 0; /* dead expert: black */
			fprintf(fp, "<rect x=\"%.2f\" y=\"%.2f\" width=\"%.2f\" height=\"%.2f\" "
				    "fill=\"rgb(%d,%d,%d)\"><title>layer %d expert %d: %.3gx uniform</title></rect>\n",
				left + e * cw, top + l * ch, cw, ch, r, g, b, l, e, ratio);
		}
		fprintf(fp, "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%d</text>\n", left - 6,
			top + (l + 0.5) * ch + 4, l);
	}
	for (int e = 0; e < E; e += step)
		fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n",
			left + (e + 0.5) * cw, top + L * ch + 15, e);
	fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\">expert</text>\n",
		left + E * cw / 2, top + L * ch + 35.0);
	fprintf(fp, "<text x=\"18\" y=\"%.1f\" text-anchor=\"middle\" font-size=\"13\" "
		    "transform=\"rotate(-90 18 %.1f)\">MoE layer</text>\n",
		top + L * ch / 2, top + L * ch / 2);
	/* colour bar: log2 ratio from -2 to 2 */
	{
		double x0 = left + cw * E + 40, y0 = top, bh = fmax(fmin(ch * L, 300), 150);
		static const char *lab[] = {"4x", "2x", "1x", "1/2x", "1/4x"};

		for (int i = 0; i < 50; i++) {
			int r, g, b;

			diverging(1 - 2.0 * i / 49, &r, &g, &b);
			fprintf(fp, "<rect x=\"%.1f\" y=\"%.2f\" width=\"16\" height=\"%.2f\" fill=\"rgb(%d,%d,%d)\"/>\n",
				x0, y0 + i * bh / 50, bh / 50 + 0.5, r, g, b);
		}
		for (int i = 0; i < 5; i++)
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\">%s</text>\n", x0 + 22, y0 + i * bh / 4 + 4,
				lab[i]);
		fprintf(fp, "<rect x=\"%.1f\" y=\"%.1f\" width=\"16\" height=\"10\" fill=\"black\"/>"
			    "<text x=\"%.1f\" y=\"%.1f\">unused</text>\n",
			x0, y0 + bh + 12, x0 + 22, y0 + bh + 21);
	}
	return finish(fp, &a, err);
}

static int plot_layers(const struct moe_route_stats *s, const char *dir, struct moe_error *err)
{
	struct moe_atomic a = {0};
	int L = s->L, W = 820, H = 420, left = 60, right = 240, top = 45, bottom = 55;
	double pw = W - left - right, ph = H - top - bottom;
	FILE *fp = open_svg(&a, dir, "layers.svg", err);
	static const char *names[] = {"normalised entropy (top-k)", "continuity: same top-1 at l+1",
				      "continuity: top-k sets meet at l+1", "token specialisation"};

	if (!fp)
		return err->code;
	svg_begin(fp, W, H, "Routing per layer");
	for (int i = 0; i <= 5; i++) {
		double y = top + ph - i * ph / 5;

		fprintf(fp, "<line x1=\"%d\" y1=\"%.1f\" x2=\"%.1f\" y2=\"%.1f\" stroke=\"#ddd\"/>"
			    "<text x=\"%d\" y=\"%.1f\" text-anchor=\"end\">%.1f</text>\n",
			left, y, left + pw, y, left - 6, y + 4, i / 5.0);
	}
	for (int l = 0; l < L; l++) {
		double x = left + (L > 1 ? l * pw / (L - 1) : pw / 2);

		if (L <= 24 || l % ((L + 23) / 24) == 0)
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">%d</text>\n", x,
				top + ph + 16, l);
	}
	fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"%.1f\" fill=\"none\" stroke=\"#444\"/>\n",
		left, top, pw, ph);
	fprintf(fp, "<text x=\"%.1f\" y=\"%d\" text-anchor=\"middle\" font-size=\"13\">MoE layer</text>\n",
		left + pw / 2, H - 12);
	for (int c = 0; c < 4; c++) {
		int r, g, b, started = 0;

		category(c, &r, &g, &b);
		fprintf(fp, "<polyline fill=\"none\" stroke=\"rgb(%d,%d,%d)\" stroke-width=\"2\" points=\"",
			r, g, b);
		for (int l = 0; l < L; l++) {
			const struct moe_layer_summary *m = &s->sum[l];
			double v = c == 0 ? m->norm_entropy : c == 1 ? m->ec : c == 2 ? m->ec_any : m->token_spec;
			double x = left + (L > 1 ? l * pw / (L - 1) : pw / 2);

			if (!isfinite(v))
				continue;
			fprintf(fp, "%s%.1f,%.1f", started++ ? " " : "", x, top + ph - fmin(fmax(v, 0), 1) * ph);
		}
		fputs("\"/>\n", fp);
		for (int l = 0; l < L; l++) {
			const struct moe_layer_summary *m = &s->sum[l];
			double v = c == 0 ? m->norm_entropy : c == 1 ? m->ec : c == 2 ? m->ec_any : m->token_spec;
			double x = left + (L > 1 ? l * pw / (L - 1) : pw / 2);

			if (isfinite(v))
				fprintf(fp, "<circle cx=\"%.1f\" cy=\"%.1f\" r=\"3\" fill=\"rgb(%d,%d,%d)\"/>\n",
					x, top + ph - fmin(fmax(v, 0), 1) * ph, r, g, b);
		}
		fprintf(fp, "<rect x=\"%.1f\" y=\"%d\" width=\"14\" height=\"3\" fill=\"rgb(%d,%d,%d)\"/>"
			    "<text x=\"%.1f\" y=\"%d\" font-size=\"10\">%s</text>\n",
			left + pw + 10, top + 10 + c * 22, r, g, b, left + pw + 28, top + 14 + c * 22, names[c]);
	}
	return finish(fp, &a, err);
}

struct link {
	int l, a, b;
	uint64_t c;
};

static int cmp_link(const void *x, const void *y)
{
	const struct link *p = x, *q = y;

	if (p->c != q->c)
		return p->c < q->c ? 1 : -1;
	return p->a - q->a;
}

static int plot_flow(const struct moe_route_stats *s, const char *dir, struct moe_error *err)
{
	struct moe_atomic a = {0};
	int L = s->L, E = s->E;
	double colw = L > 1 ? fmin(110, 1100.0 / (L - 1)) : 110, nodew = 10, gap = E <= 16 ? 4 : 1;
	int left = 60, top = 50, W = (int)(left + colw * (L > 1 ? L - 1 : 1) + nodew + 80);

	if (W < 760) { /* few layers: wider columns, room for the title */
		colw = L > 1 ? (760.0 - left - nodew - 80) / (L - 1) : colw;
		W = 760;
	}
	double ph = 620, scale = (ph - gap * (E - 1)) / (s->T ? (double)s->T : 1);
	int H = (int)(top + ph + 60);
	int nlinks = E < 12 ? E : 12;
	double *ytop = malloc((size_t)L * E * sizeof *ytop);
	double *outoff = calloc((size_t)L * E, sizeof *outoff), *inoff = calloc((size_t)L * E, sizeof *inoff);
	struct link *lk = malloc((size_t)E * E * sizeof *lk);
	FILE *fp;
	int rc;

	if (!ytop || !outoff || !inoff || !lk) {
		free(ytop);
		free(outoff);
		free(inoff);
		free(lk);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	fp = open_svg(&a, dir, "flow.svg", err);
	if (!fp) {
		rc = err->code;
		goto out;
	}
	svg_begin(fp, W, H, "Top-1 flow between consecutive layers (most common transitions)");
	for (int l = 0; l < L; l++) {
		double y = top;

		for (int e = 0; e < E; e++) {
			double h = s->top1[(size_t)l * E + e] * scale;

			ytop[(size_t)l * E + e] = y;
			y += h + gap;
		}
	}
	/* links first (under the nodes) */
	for (int l = 0; l + 1 < L; l++) {
		int n = 0;

		for (int x = 0; x < E; x++)
			for (int y = 0; y < E; y++) {
				uint64_t c = s->trans[((size_t)l * E + x) * E + y];

				if (c)
					lk[n++] = (struct link){l, x, y, c};
			}
		qsort(lk, (size_t)n, sizeof *lk, cmp_link);
		if (n > nlinks)
			n = nlinks;
		/* draw in expert order so that bands stack inside each node */
		for (int i = 0; i < n; i++)
			for (int j = i + 1; j < n; j++)
				if (lk[j].a < lk[i].a || (lk[j].a == lk[i].a && lk[j].b < lk[i].b)) {
					struct link tmp = lk[i];
					lk[i] = lk[j];
					lk[j] = tmp;
				}
		for (int i = 0; i < n; i++) {
			double h = lk[i].c * scale;
			double x0 = left + l * colw + nodew, x1 = left + (l + 1) * colw;
			size_t ia = (size_t)l * E + lk[i].a, ib = (size_t)(l + 1) * E + lk[i].b;
			double y0 = ytop[ia] + outoff[ia], y1 = ytop[ib] + inoff[ib];
			double xm = (x0 + x1) / 2;
			int r, g, b;

			outoff[ia] += h;
			inoff[ib] += h;
			category(lk[i].a, &r, &g, &b);
			/* a band: the area between two Bezier curves */
			h = fmax(h, 0.5);
			fprintf(fp, "<path d=\"M%.1f,%.2f C%.1f,%.2f %.1f,%.2f %.1f,%.2f L%.1f,%.2f "
				    "C%.1f,%.2f %.1f,%.2f %.1f,%.2f Z\" fill=\"rgb(%d,%d,%d)\" fill-opacity=\"0.45\">"
				    "<title>L%d E%d -&gt; L%d E%d: %llu tokens</title></path>\n",
				x0, y0, xm, y0, xm, y1, x1, y1, x1, y1 + h, xm, y1 + h, xm, y0 + h, x0, y0 + h,
				r, g, b, l, lk[i].a, l + 1, lk[i].b, (unsigned long long)lk[i].c);
		}
	}
	for (int l = 0; l < L; l++) {
		double x = left + l * colw;

		for (int e = 0; e < E; e++) {
			double h = s->top1[(size_t)l * E + e] * scale;
			double y = ytop[(size_t)l * E + e];

			if (h <= 0)
				continue;
			fprintf(fp, "<rect x=\"%.1f\" y=\"%.2f\" width=\"%.1f\" height=\"%.2f\" fill=\"#333\">"
				    "<title>L%d E%d: %llu tokens</title></rect>\n",
				x, y, nodew, h, l, e, (unsigned long long)s->top1[(size_t)l * E + e]);
			if (h >= 11)
				fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" font-size=\"9\" text-anchor=\"end\">%d</text>\n",
					x - 2, y + h / 2 + 3, e);
		}
		if (L <= 24 || l % ((L + 23) / 24) == 0)
			fprintf(fp, "<text x=\"%.1f\" y=\"%.1f\" text-anchor=\"middle\">L%d</text>\n",
				x + nodew / 2, top + ph + 20, l);
	}
	fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"#555\">node height = tokens with "
		    "that top-1 expert; the %d largest transitions per layer pair are drawn</text>\n",
		left, H - 12, nlinks);
	rc = finish(fp, &a, err);
out:
	free(ytop);
	free(outoff);
	free(inoff);
	free(lk);
	return rc;
}

static int plot_tokens(const struct moe_route_stats *s, const struct moe_trace *tr, const char *dir,
		       int layer, struct moe_error *err)
{
	struct moe_atomic a = {0};
	int E = s->E, n = 5, cols = E <= 8 ? E : 8, rows = (E + cols - 1) / cols;
	int pw = 170, ph = 22 + 16 * n + 8, left = 20, top = 45;
	int W = left * 2 + cols * pw, H = top + rows * ph + 30;
	int64_t ntab = 0;
	const char **tab = moe_routes_token_table(tr, &ntab);
	int32_t ids[5];
	uint64_t cnt[5];
	char title[128];
	FILE *fp;

	if (!tab)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	fp = open_svg(&a, dir, "expert_tokens.svg", err);
	if (!fp) {
		free(tab);
		return err->code;
	}
	snprintf(title, sizeof title, "Top tokens per expert (top-1 routing), MoE layer %d", layer);
	svg_begin(fp, W, H, title);
	for (int e = 0; e < E; e++) {
		int x = left + (e % cols) * pw, y = top + (e / cols) * ph;
		int got = moe_route_stats_expert_tokens(s, layer, e, n, ids, cnt);
		double ne = (double)s->top1[(size_t)layer * E + e];

		fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%d\" height=\"%d\" fill=\"#f7f7f7\" stroke=\"#ccc\"/>\n",
			x + 2, y, pw - 4, ph - 4);
		fprintf(fp, "<text x=\"%d\" y=\"%d\" font-weight=\"bold\">expert %d</text>"
			    "<text x=\"%d\" y=\"%d\" text-anchor=\"end\" fill=\"#666\" font-size=\"9\">%.1f%% of tokens</text>\n",
			x + 7, y + 14, e, x + pw - 8, y + 14, s->T ? 100.0 * ne / (double)s->T : 0.0);
		for (int i = 0; i < got; i++) {
			double share = cnt[i] / ne;
			double nx = s->tokn ? (double)s->tokn[ids[i]] : 1;
			double lift = share / (nx / (double)s->T);
			const char *str = ids[i] < ntab && tab[ids[i]] ? tab[ids[i]] : NULL;
			int ty = y + 30 + i * 16;

			fprintf(fp, "<rect x=\"%d\" y=\"%d\" width=\"%.1f\" height=\"12\" fill=\"#9ecae1\"/>\n",
				x + 7, ty - 10, share * (pw - 14));
			fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"10\">", x + 9, ty);
			if (str) {
				fputs("\xE2\x80\x9C", fp);
				svg_token(fp, str, 12);
				fputs("\xE2\x80\x9D", fp);
			} else {
				fprintf(fp, "#%d", ids[i]);
			}
			fprintf(fp, "</text><text x=\"%d\" y=\"%d\" font-size=\"9\" text-anchor=\"end\" fill=\"#333\">"
				    "%.0f%% lift %.1f</text>\n", x + pw - 8, ty, 100 * share, lift);
		}
		if (!got)
			fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"#999\">(no token seen %d+ times)</text>\n",
				x + 9, y + 30, s->min_count);
	}
	fprintf(fp, "<text x=\"%d\" y=\"%d\" font-size=\"10\" fill=\"#555\">bar = share of the expert's "
		    "tokens; lift = that share / the token's share of all tokens</text>\n", left, H - 10);
	free(tab);
	return finish(fp, &a, err);
}

int moe_routes_plot(const struct moe_route_stats *s, const struct moe_trace *tr, const char *dir,
		    int layer, struct moe_error *err)
{
	int rc;

	if (layer < 0)
		layer = s->L / 2;
	if (layer >= s->L)
		return moe_error_set(err, MOE_EINVAL, "layer %d out of range [0, %d)", layer, s->L);
	if ((rc = moe_mkdirs(dir, err)) < 0 || (rc = plot_heatmap(s, dir, err)) < 0 ||
	    (rc = plot_layers(s, dir, err)) < 0 || (rc = plot_flow(s, dir, err)) < 0)
		return rc;
	if ((rc = plot_tokens(s, tr, dir, layer, err)) < 0)
		return rc;
	return 0;
}
