/* Private to lib/routes: the statistics accumulator shared by stats.c,
 * statsio.c and plot.c. */
#ifndef MOE_ROUTES_INTERNAL_H
#define MOE_ROUTES_INTERNAL_H

#include "routes/routes.h"

/* Open-addressing table of packed top-1 routes -> counts (count 0 = empty). */
struct ptab {
	uint64_t *keys;
	uint64_t *counts;
	size_t cap, n;
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
	struct ptab *paths;         /* (n_windows) */
	int64_t path_sample, path_stride, path_n;
	int V;
	uint32_t *tokexp;           /* (V, L, E) top-1 counts, or NULL */
	uint64_t *tokn;             /* (V) */
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
/* (key, count) pairs sorted by count descending; caller frees. */
uint64_t *moe_routes_paths_sorted(const struct moe_route_stats *s, int w, size_t *n);
void moe_routes_path_unpack(const struct moe_route_stats *s, uint64_t key, int *route);
/* Token strings by id from tr->vocab (pointers into it; NULL entries when
 * unknown); caller frees the array. */
const char **moe_routes_token_table(const struct moe_trace *tr, int64_t *n);

#endif
