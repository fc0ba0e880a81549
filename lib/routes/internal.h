/* Private to lib/routes: the statistics accumulator shared by stats.c,
 * statsio.c and plot.c. */
#ifndef MOE_ROUTES_INTERNAL_H
#define MOE_ROUTES_INTERNAL_H

#include "routes/routes.h"

/* One path window: its distinct top-1 routes, counted over the path sample. */
struct pwin {
	size_t n_distinct;
	double entropy, top1, top10, top100; /* bits; shares of the top 1/10/100 */
	size_t cover50, cover80, cover95;    /* fewest routes covering the share */
	size_t n_top;
	uint64_t *top;                       /* (n_top, 2): packed route, count; count desc */
};

struct moe_route_stats {
	int64_t T;
	int L, K, E, S; /* S: path window / continuity steps */
	int top_paths, top_tokens, min_count;
	uint64_t *top1, *topk;      /* (L, E) */
	double *w1, *wk;            /* (L, E) weight mass at rank 1 / any rank */
	double *prob;               /* (L, E) sum of router probabilities, or NULL */
	uint64_t *trans;            /* (L-1, E, E) top-1 at l -> top-1 at l+1 */
	uint64_t *coact;            /* (L, E, E) both in the top-k */
	uint64_t *ec_same, *ec_any; /* (L) */
	uint64_t *ec1_num, *ec1_den, *ecall_num, *ecall_den; /* (S+1) */
	double *margin_sum;         /* (L) */
	uint64_t *margin_n;         /* (L) */
	double *top1w_sum, *mass_sum; /* (L) */
	struct moe_layer_summary *sum; /* (L) */
	int n_windows, bpe;
	struct pwin *pw;            /* (n_windows) */
	int64_t path_sample, path_stride, path_n;
	int V;
	uint64_t *tokn;             /* (V) occurrences of each token id */
	int32_t *et_ids;            /* (L, E, top_tokens) top tokens of each expert (top-1) */
	uint32_t *et_cnt;           /* (L, E, top_tokens) their counts */
	int32_t *et_n;              /* (L, E) entries filled */
	int32_t *ts_top;            /* (V, L) a token's most frequent top-1 expert; -1: rare token */
	uint32_t *ts_cnt;           /* (V, L) its count */
	float *ts_ent;              /* (V, L) entropy (bits) of the token's top-1 experts */
	char *label_field;
	int n_labels;
	char **labels;
	int32_t *doc_label;         /* (n_docs) */
	uint64_t *lab_top1, *lab_topk; /* (n_labels, L, E) */
	uint64_t *lab_n;            /* (n_labels) */
};

double moe_routes_entropy_u64(const uint64_t *c, int n);
double moe_routes_entropy_f64(const double *c, int n);
double moe_routes_js_distance(const uint64_t *a, const uint64_t *b, int n);
void moe_routes_stats_finish(struct moe_route_stats *s);
/* The listed (key, count) pairs of window w, by count descending (at most
 * top_paths); caller frees. */
uint64_t *moe_routes_paths_sorted(const struct moe_route_stats *s, int w, size_t *n);
void moe_routes_path_unpack(const struct moe_route_stats *s, uint64_t key, int *route);
/* Token strings by id from tr->vocab (pointers into it; NULL entries when
 * unknown); caller frees the array. */
const char **moe_routes_token_table(const struct moe_trace *tr, int64_t *n);

#endif
