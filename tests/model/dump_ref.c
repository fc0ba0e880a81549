/*
 * dump_ref: write a small model of ours and one forward/backward of it, for
 * the parity check against transformers / PyTorch (tests/bench/parity_hf.py).
 *
 *   dump_ref -c CONFIG -o DIR [-s SEED] [-b B] [-t T] [--init-std X] [--bias-scale X]
 *
 * DIR/config.json and DIR/model.safetensors: the checkpoint (HF OLMoE names).
 * DIR/ref.safetensors: tokens (B, T) and targets (B, T) int32, logits
 * (B, T, V) f32, losses [total, ce, aux, z, aux_coef] f64, topk_idx and
 * topk_w (Lm, B*T, K), and grad.NAME (f32) for every trained tensor: the
 * gradient of `total` after one backward.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/core.h"
#include "model/model.h"

static void usage(FILE *fp)
{
	fprintf(fp, "usage: dump_ref -c CONFIG -o DIR [-s SEED] [-b B] [-t T] [--init-std X] [--bias-scale X]\n");
}

int main(int argc, char **argv)
{
	static const struct option opts[] = {
		{"config", required_argument, NULL, 'c'}, {"out", required_argument, NULL, 'o'},
		{"seed", required_argument, NULL, 's'},   {"batch", required_argument, NULL, 'b'},
		{"seq", required_argument, NULL, 't'},    {"init-std", required_argument, NULL, 'i'},
		{"bias-scale", required_argument, NULL, 'B'}, {"help", no_argument, NULL, 'h'},
		{NULL, 0, NULL, 0},
	};
	const char *cfgpath = NULL, *out = NULL;
	int64_t seed = 1, B = 2, T = 16;
	double std = -1, bias_scale = 0;
	struct moe_error err = {0};
	int c;
	moe_diag_init(argv[0]);
	while ((c = getopt_long(argc, argv, "c:o:s:b:t:h", opts, NULL)) != -1) {
		switch (c) {
		case 'c': cfgpath = optarg; break;
		case 'o': out = optarg; break;
		case 's': if (moe_parse_i64(optarg, 0, INT64_MAX, &seed, "seed", &err)) moe_usage_error("%s", err.msg); break;
		case 'b': if (moe_parse_i64(optarg, 1, 4096, &B, "batch", &err)) moe_usage_error("%s", err.msg); break;
		case 't': if (moe_parse_i64(optarg, 1, 65536, &T, "seq", &err)) moe_usage_error("%s", err.msg); break;
		case 'i': if (moe_parse_double(optarg, 0, 10, &std, "init-std", &err)) moe_usage_error("%s", err.msg); break;
		case 'B': if (moe_parse_double(optarg, 0, 100, &bias_scale, "bias-scale", &err)) moe_usage_error("%s", err.msg); break;
		case 'h': usage(stdout); return 0;
		default: usage(stderr); return 2;
		}
	}
	if (!cfgpath || !out) {
		usage(stderr);
		return 2;
	}
	struct moe_config cfg;
	if (moe_config_load(&cfg, cfgpath, &err))
		moe_die_error(&err);
	if (std >= 0)
		cfg.initializer_range = std;
	struct moe_model *m = moe_model_new(&cfg, NULL, &err);
	if (!m || moe_model_init(m, (uint64_t)seed, &err))
		moe_die_error(&err);
	float *P = moe_model_params_host(m);
	uint64_t s = (uint64_t)seed * 2654435761u + 1;
#define NEXT() (s = s * 6364136223846793005ULL + 1442695040888963407ULL, (uint32_t)(s >> 33))
	if (bias_scale > 0)
		for (int l = cfg.n_dense_layers; l < cfg.num_hidden_layers; l++)
			for (int e = 0; e < cfg.num_experts; e++)
				P[moe_model_layer(m, l)->bias + e] =
					(float)(bias_scale * ((double)NEXT() / 2147483648.0 - 1.0));
	int N = (int)(B * T), V = cfg.vocab_size, K = cfg.num_experts_per_tok, E = cfg.num_experts;
	int Lm = moe_config_n_moe_layers(&cfg);
	int32_t *tok = malloc(sizeof(int32_t) * (size_t)(N + 1));
	for (int i = 0; i <= N; i++)
		tok[i] = 2 + (int32_t)(NEXT() % (uint32_t)(V - 2));
	int32_t *tgt = malloc(sizeof(int32_t) * (size_t)N);
	for (int i = 0; i < N; i++)
		tgt[i] = tok[i + 1];
	if (cfg.pad_token_id >= 0 && N >= 8) { /* a pad input and an ignored target */
		tok[N / 2] = cfg.pad_token_id;
		tgt[N / 3] = cfg.pad_token_id;
	}
	float *logits = malloc(sizeof(float) * (size_t)N * V);
	int32_t *idx = malloc(sizeof(int32_t) * (size_t)(Lm ? Lm : 1) * N * K);
	float *w = malloc(sizeof(float) * (size_t)(Lm ? Lm : 1) * N * K);
	struct moe_routing_capture cap = {idx, w, NULL};
	struct moe_forward_opts o = {.train = true, .logits_mode = MOE_LOGITS_ALL, .logits_out = logits,
				     .capture = &cap};
	struct moe_losses L;
	moe_model_zero_grad(m);
	if (moe_model_forward(m, tok, tgt, (int)B, (int)T, &o, &L, &err) ||
	    moe_model_backward(m, 1.0f, &err))
		moe_die_error(&err);
	if (moe_mkdirs(out, &err))
		moe_die_error(&err);
	if (moe_model_save_dir(m, out, &err))
		moe_die_error(&err);
	struct moe_st_writer *wr = moe_st_writer_new();
	int64_t sh[3] = {B, T, V};
	double losses[5] = {L.total, L.ce, L.aux, L.z, L.aux_coef};
	int64_t s5 = 5, sr[3] = {Lm, N, K};
	moe_st_writer_add(wr, "tokens", MOE_I32, 2, sh, tok, &err);
	moe_st_writer_add(wr, "targets", MOE_I32, 2, sh, tgt, &err);
	moe_st_writer_add(wr, "logits", MOE_F32, 3, sh, logits, &err);
	moe_st_writer_add(wr, "losses", MOE_F64, 1, &s5, losses, &err);
	if (Lm > 0) {
		moe_st_writer_add(wr, "topk_idx", MOE_I32, 3, sr, idx, &err);
		moe_st_writer_add(wr, "topk_w", MOE_F32, 3, sr, w, &err);
	}
	size_t np;
	const struct moe_param *tab = moe_model_params(m, &np);
	const float *G = moe_model_grads_host(m);
	char **names = calloc(np, sizeof(char *));
	for (size_t i = 0; i < np; i++) {
		if (!tab[i].trainable)
			continue;
		names[i] = malloc(strlen(tab[i].name) + 6);
		sprintf(names[i], "grad.%s", tab[i].name);
		if (moe_st_writer_add(wr, names[i], MOE_F32, tab[i].ndim, tab[i].shape, G + tab[i].offset, &err))
			moe_die_error(&err);
	}
	char *ref = moe_path_join(out, "ref.safetensors");
	if (moe_st_writer_commit(wr, ref, &err))
		moe_die_error(&err);
	printf("%s: B %lld T %lld V %d E %d K %d: total %.6f ce %.6f aux %.6f z %.6f\n", out,
	       (long long)B, (long long)T, V, E, K, L.total, L.ce, L.aux, L.z);
	moe_st_writer_free(wr);
	for (size_t i = 0; i < np; i++)
		free(names[i]);
	free(names);
	free(ref);
	free(tok);
	free(tgt);
	free(logits);
	free(idx);
	free(w);
	moe_model_free(m);
	return 0;
}
