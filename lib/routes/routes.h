/*
 * libmoeroutes: routing traces of MoE models and their statistics.
 *
 * A trace is a directory (see moe-routes(5)):
 *   meta.json            model, router semantics, tokenizer, data, counts
 *   routes.safetensors   dense arrays, one row per real token (T rows):
 *                          topk_experts   (T, L, K) U8 / I16 / I32, weight desc
 *                          topk_weights   (T, L, K) F32 (or BF16 / F16)
 *                          topk_margin    (T, L)    F32, s_K - s_(K+1) (NaN: unknown)
 *                          token_id, doc_index, position, pred_id (T) I32
 *                          pred_prob, target_logprob (T) F32
 *                          router_logits  (T, L, E) F32, optional
 *   docs.jsonl           one object per document (sequence_ix, n_tokens, fields)
 *   vocab.json           {"id": "token string"} for every id that occurs
 *   samples.csv, topks.csv, routes_wide.csv, tokens.jsonl   text views
 *
 * Ownership: a struct moe_trace owns everything it points to (the mapped
 * file when opened, malloc'd arrays when built).  Pointers into a mapped
 * trace are read-only.  lib never prints or exits.
 */
#ifndef MOE_ROUTES_H
#define MOE_ROUTES_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define MOE_ROUTES_FORMAT "moe-routes"
#define MOE_ROUTES_VERSION 1
#define MOE_ROUTES_MAX_K 64

/* ---- the trace ----------------------------------------------------------- */

struct moe_trace {
	int64_t T;                    /* tokens (rows) */
	int L;                        /* MoE layers */
	int K;                        /* experts per token and layer */
	int E;                        /* experts per layer (routed) */
	enum moe_dtype experts_dtype; /* MOE_U8, MOE_I16 or MOE_I32 */
	enum moe_dtype weights_dtype; /* MOE_F32, MOE_BF16 or MOE_F16 */
	void *topk_experts;           /* (T, L, K) ids, weight descending */
	void *topk_weights;           /* (T, L, K) */
	float *topk_margin;           /* (T, L) or NULL */
	int32_t *token_id;            /* (T) */
	int32_t *doc_index;           /* (T) 0-based document (sequence_ix) */
	int32_t *position;            /* (T) 0-based position in the document */
	int32_t *pred_id;             /* (T) argmax next token, or NULL */
	float *pred_prob;             /* (T) its probability, or NULL */
	float *target_logprob;        /* (T) log p(true next token); NaN at a doc's end; or NULL */
	float *router_logits;         /* (T, L, E) or NULL */
	json_t *meta;                 /* meta.json (owned), may be NULL for a bare trace */
	json_t *vocab;                /* vocab.json object (owned) or NULL */
	json_t *docs;                 /* array of docs.jsonl objects (owned) or NULL */
	/* private */
	struct moe_st_file *st_;
	int64_t cap_;
};

/* One token's row, for moe_trace_append(). */
struct moe_trace_row {
	int32_t token_id, doc_index, position, pred_id;
	float pred_prob, target_logprob;
	const int32_t *experts; /* (L, K) sorted by weight descending */
	const float *weights;   /* (L, K) */
	const float *margin;    /* (L) or NULL (stored as NaN) */
	const float *logits;    /* (L, E); required when the trace keeps logits */
};

/* An empty in-memory trace (I32 ids, F32 weights).  with_logits keeps
 * router_logits.  Returns NULL on bad sizes or allocation failure. */
struct moe_trace *moe_trace_new(int L, int K, int E, bool with_logits, struct moe_error *err);
/* Append one row (copied).  Ids must lie in [0, E). */
int moe_trace_append(struct moe_trace *tr, const struct moe_trace_row *row, struct moe_error *err);
/* Open a trace directory (maps routes.safetensors; reads meta.json and, when
 * present, vocab.json and docs.jsonl).  Checks shapes and dtypes, not the
 * contents (see moe_trace_check).  NULL with err filled on failure. */
struct moe_trace *moe_trace_open(const char *dir, struct moe_error *err);
void moe_trace_free(struct moe_trace *tr);

/* Expert ids / weights of row t into dst (L*K values). */
void moe_trace_row_experts(const struct moe_trace *tr, int64_t t, int32_t *dst /* (L, K) */);
void moe_trace_row_weights(const struct moe_trace *tr, int64_t t, float *dst /* (L, K) */);

/* Check the invariants: ids in [0, E) and unique per (token, layer),
 * weights finite, non-negative and non-increasing, positions restart at 0
 * per document and increase by 1, doc_index non-decreasing, token ids
 * non-negative.  Returns 0 or MOE_EFORMAT naming the first bad row/layer. */
int moe_trace_check(const struct moe_trace *tr, struct moe_error *err);

/* ---- saving -------------------------------------------------------------- */

enum moe_trace_views {
	MOE_VIEW_SAMPLES = 1u << 0, /* samples.csv */
	MOE_VIEW_TOPKS = 1u << 1,   /* topks.csv */
	MOE_VIEW_WIDE = 1u << 2,    /* routes_wide.csv */
	MOE_VIEW_JSONL = 1u << 3,   /* tokens.jsonl */
	MOE_VIEW_CSV = MOE_VIEW_SAMPLES | MOE_VIEW_TOPKS | MOE_VIEW_WIDE,
};

struct moe_trace_save_opts {
	unsigned views;              /* enum moe_trace_views */
	enum moe_dtype weights_dtype; /* MOE_F32 (default, 0) or MOE_BF16 */
	bool replace;                /* replace an existing directory */
};

/* Write the trace to directory `dir` atomically (built under a temporary
 * name, renamed into place).  tr->meta (may be NULL) is written as
 * meta.json with the "counts" and "export" members filled in; tr->vocab and
 * tr->docs (when set) as vocab.json and docs.jsonl.  Token strings in the
 * views come from tr->vocab (empty when absent). */
int moe_trace_save(const struct moe_trace *tr, const char *dir, const struct moe_trace_save_opts *o,
		   struct moe_error *err);

/* Make a token string safe for the text views: invalid UTF-8 bytes and NUL
 * become U+FFFD.  Returns a malloc'd NUL-terminated string (NULL on ENOMEM). */
char *moe_routes_clean_utf8(const char *s, size_t len);
/* Write s as a CSV field, always quoted, inner quotes doubled (RFC 4180). */
void moe_csv_quoted(FILE *fp, const char *s);

/* ---- synthetic traces (tests and benchmarks) ----------------------------- */

struct moe_synth_opts {
	int64_t T;     /* tokens */
	int L, K, E;   /* layers, top-k, experts */
	int V;         /* vocabulary (token ids drawn Zipf-like from [0, V)) */
	int doc_len;   /* mean document length */
	double stick;  /* probability that top-1 follows the previous layer's plan */
	uint64_t seed;
	bool logits;   /* also make router_logits */
};
/* A random but structured trace: experts depend on the token id and the
 * previous layer, so that statistics are non-trivial.  Weights are softmax
 * probabilities (not renormalised).  tr->meta describes it. */
struct moe_trace *moe_trace_synth(const struct moe_synth_opts *o, struct moe_error *err);

/* ---- statistics ---------------------------------------------------------- */

struct moe_route_stats_opts {
	int window;           /* path window length S (0: 3) and max continuity steps */
	int64_t path_sample;  /* tokens used for path counts (0: 1,000,000; <0: all) */
	int top_paths;        /* paths listed per window (0: 20) */
	int top_tokens;       /* tokens listed per expert (0: 10) */
	int min_count;        /* minimum occurrences for expert_tokens/token_spec (0: 5) */
	const char *label;    /* document field for label statistics, or NULL */
};

struct moe_route_stats;

/* One pass over the trace.  Returns 0 and *out (free with
 * moe_route_stats_free) or a negative code. */
int moe_route_stats_compute(const struct moe_trace *tr, const struct moe_route_stats_opts *o,
			    struct moe_route_stats **out, struct moe_error *err);
/* Write the CSV/JSON tables (usage.csv, layers.csv, ec_steps.csv,
 * transitions.csv, coactivation.csv, path_windows.csv, paths.csv,
 * expert_tokens.csv, token_spec.csv, label_spec.csv, label_js.csv,
 * stats.json) into dir, each file atomically; dir is created. */
int moe_route_stats_write(const struct moe_route_stats *s, const struct moe_trace *tr,
			  const char *dir, struct moe_error *err);
void moe_route_stats_free(struct moe_route_stats *s);

/* Per-layer summary (for tools and plots). */
struct moe_layer_summary {
	double token_entropy, topk_entropy, weight_entropy; /* bits */
	double norm_entropy;                                 /* topk_entropy / log2 E */
	double token_kl, weight_kl;                          /* bits vs uniform */
	double cv_percent;                                   /* of topk counts */
	int n_dead;                                          /* experts never in a top-k */
	double lb_loss;                                      /* E sum f P (NaN without logits) */
	double lb_loss_weights;                              /* E sum f W */
	double ec, ec_any;                                   /* continuity to next layer (NaN at the last) */
	double mean_top1_weight, mean_topk_mass, mean_margin;
	double token_spec;                                   /* mean share of a token's top expert */
};
const struct moe_layer_summary *moe_route_stats_layer(const struct moe_route_stats *s, int l);
/* Counts (L, E): top-1 and any-top-k; transitions (L-1, E, E) top-1. */
const uint64_t *moe_route_stats_top1(const struct moe_route_stats *s);
const uint64_t *moe_route_stats_topk(const struct moe_route_stats *s);
const uint64_t *moe_route_stats_transitions(const struct moe_route_stats *s);
/* Top tokens of (layer, expert): up to n entries of token id and count;
 * returns the number filled. */
int moe_route_stats_expert_tokens(const struct moe_route_stats *s, int l, int e, int n,
				  int32_t *ids, uint64_t *counts);

/* Render SVG figures into dir: usage_heatmap.svg, layers.svg, flow.svg,
 * expert_tokens.svg (layer `layer`, <0: the middle MoE layer). */
int moe_routes_plot(const struct moe_route_stats *s, const struct moe_trace *tr, const char *dir,
		    int layer, struct moe_error *err);

/* ---- run: forward a checkpoint and trace it ------------------------------ */

struct moe_routes_run_opts {
	const char *ckpt;       /* checkpoint directory (or a run directory: RUN/ckpt/latest) */
	const char *docs;       /* JSONL documents ("-": stdin), or NULL */
	const char *text_field; /* NULL: "text" */
	const char *tokenizer;  /* tokenizer.json; required with docs, optional with data_dir */
	const char *data_dir;   /* shard directory, or NULL */
	const char *split;      /* NULL: "val" */
	const char *out;        /* trace directory */
	const char *device;     /* backend name, NULL: "cpu" */
	int64_t max_tokens;     /* <= 0: all */
	int seq_len;            /* window length; <= 0: max_position_embeddings */
	int overlap;            /* context repeated between windows; 0: seq_len / 2; < 0: none */
	int batch;              /* windows per forward; <= 0: 8 */
	bool logits;            /* keep router_logits */
	bool replace;           /* replace an existing out */
	unsigned views;         /* enum moe_trace_views */
	void (*progress)(void *ctx, int64_t tokens); /* after each document, or NULL */
	void *progress_ctx;
};

/* Load the model, forward every document (in windows), save the trace.
 * *n_tokens (may be NULL) gets the number of traced tokens. */
int moe_routes_run(const struct moe_routes_run_opts *o, int64_t *n_tokens, struct moe_error *err);

/* ---- diff ---------------------------------------------------------------- */

struct moe_trace_diff_layer {
	int64_t n;               /* tokens compared */
	double topk_overlap;     /* mean |A ∩ B| / K */
	double top1_agree;       /* share with the same top-1 */
	double set_agree;        /* share with identical top-k sets */
	double order_agree;      /* share with identical ordered top-k lists */
	double max_weight_diff;  /* max |wA - wB| over experts in both sets */
	double mean_weight_diff;
	int64_t n_disagree;      /* tokens whose top-k sets differ */
	int64_t n_near_tie;      /* ... of which min(margin A, margin B) <= tol */
	double max_margin;       /* largest such margin (NaN: margins unknown) */
};

/* Compare two traces of the same tokens (token ids must match row by row).
 * Fills layers[L] (caller-allocated, L = a->L) and, when fp is not NULL,
 * writes one CSV row per (token, layer) whose top-k sets differ:
 * sample_ix,sequence_ix,token_ix,layer_ix,experts_a,experts_b,margin_a,margin_b */
int moe_trace_diff(const struct moe_trace *a, const struct moe_trace *b, double tol,
		   struct moe_trace_diff_layer *layers, FILE *fp, struct moe_error *err);

#endif
