/*
 * The training data loader: seq_len+1 windows over one split, a seeded
 * permutation per epoch, rank striding, a prefetch thread and an exact
 * resume position (see data.h for the definitions).
 */
#include <pthread.h>
#include <stdlib.h>
#include <string.h>

#include "data/shardfmt.h"

#define MAX_PREFETCH 64

struct slot {
	int32_t *tok; /* (B, T+1) */
	int rows;
	int rc;
	struct moe_error err;
};

struct moe_loader {
	struct moe_loader_opts o;
	char *dir;
	struct moe_dataset *ds;
	uint64_t T, B;
	uint64_t n_windows;
	uint64_t per_rank; /* windows per epoch for this rank */
	uint64_t k;        /* consumer position: windows consumed by this rank */
	bool failed;
	struct moe_error fail_err;

	/* producer side (the thread, or the caller when prefetch == 0) */
	uint32_t *perm; /* (n_windows) order of the epoch perm_epoch */
	uint64_t perm_epoch;
	bool perm_valid;
	uint32_t *win; /* (T+1) */
	uint64_t k_prod;

	/* prefetch ring */
	bool thread_on;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct slot *slots;
	int n_slots;
	int head, count; /* next slot to consume, filled slots */
	bool stop;
};

void moe_loader_opts_init(struct moe_loader_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->split = MOE_SPLIT_TRAIN;
	o->batch = 1;
	o->world_size = 1;
	o->shuffle = true;
	o->prefetch = 2;
}

static void make_perm(struct moe_loader *l, uint64_t epoch)
{
	uint64_t n = l->n_windows;
	for (uint64_t i = 0; i < n; i++)
		l->perm[i] = (uint32_t)i;
	uint64_t st = l->o.seed * 0x2545F4914F6CDD1Dull ^ (epoch + 1) * 0x9E3779B97F4A7C15ull;
	for (uint64_t i = n - 1; i > 0; i--) {
		uint64_t r = moe_splitmix64(&st);
		uint64_t j = (uint64_t)(((unsigned __int128)r * (i + 1)) >> 64);
		uint32_t t = l->perm[i];
		l->perm[i] = l->perm[j];
		l->perm[j] = t;
	}
	l->perm_epoch = epoch;
	l->perm_valid = true;
}

/* Window index of this rank's position kk. */
static uint64_t window_at(struct moe_loader *l, uint64_t kk)
{
	uint64_t e = kk / l->per_rank, j = kk % l->per_rank;
	uint64_t idx = (uint64_t)l->o.rank + j * (uint64_t)l->o.world_size;
	if (!l->o.shuffle)
		return idx;
	if (!l->perm_valid || l->perm_epoch != e)
		make_perm(l, e);
	return l->perm[idx];
}

/* Rows of the batch starting at position k. */
static int batch_rows(const struct moe_loader *l, uint64_t k)
{
	if (!l->o.single_epoch)
		return (int)l->B;
	if (k >= l->per_rank)
		return 0;
	return (int)(l->per_rank - k < l->B ? l->per_rank - k : l->B);
}

/* Fill dst with the batch at position k; returns rows or an error. */
static int produce(struct moe_loader *l, uint64_t k, int32_t *dst, struct moe_error *err)
{
	int rows = batch_rows(l, k);
	size_t W = (size_t)l->T + 1;
	for (int r = 0; r < rows; r++) {
		uint64_t w = window_at(l, k + (uint64_t)r);
		int rc = moe_dataset_read(l->ds, w * l->T, W, l->win, err);
		if (rc < 0)
			return rc;
		int32_t *row = dst + (size_t)r * W;
		for (size_t i = 0; i < W; i++)
			row[i] = (int32_t)l->win[i];
	}
	return rows;
}

static void *prefetch_main(void *arg)
{
	struct moe_loader *l = arg;
	pthread_mutex_lock(&l->mu);
	for (;;) {
		while (!l->stop && l->count == l->n_slots)
			pthread_cond_wait(&l->cv, &l->mu);
		if (l->stop)
			break;
		int idx = (l->head + l->count) % l->n_slots;
		uint64_t k = l->k_prod;
		pthread_mutex_unlock(&l->mu);
		struct slot *s = &l->slots[idx];
		memset(&s->err, 0, sizeof(s->err));
		int rc = produce(l, k, s->tok, &s->err);
		s->rc = rc < 0 ? rc : 0;
		s->rows = rc < 0 ? 0 : rc;
		pthread_mutex_lock(&l->mu);
		l->count++;
		pthread_cond_broadcast(&l->cv);
		if (rc < 0 || (l->o.single_epoch && k + (uint64_t)s->rows >= l->per_rank))
			break; /* nothing more to make */
		l->k_prod = k + (uint64_t)rc;
	}
	pthread_mutex_unlock(&l->mu);
	return NULL;
}

static void thread_stop(struct moe_loader *l)
{
	if (!l->thread_on)
		return;
	pthread_mutex_lock(&l->mu);
	l->stop = true;
	pthread_cond_broadcast(&l->cv);
	pthread_mutex_unlock(&l->mu);
	pthread_join(l->thread, NULL);
	l->thread_on = false;
}

static int thread_start(struct moe_loader *l, struct moe_error *err)
{
	l->head = 0;
	l->count = 0;
	l->stop = false;
	l->k_prod = l->k;
	if (l->n_slots == 0 || (l->o.single_epoch && l->k >= l->per_rank))
		return 0;
	int rc = pthread_create(&l->thread, NULL, prefetch_main, l);
	if (rc != 0)
		return moe_error_set(err, MOE_EIO, "cannot start the prefetch thread: %s", strerror(rc));
	l->thread_on = true;
	return 0;
}

struct moe_loader *moe_loader_new(const struct moe_loader_opts *o, struct moe_error *err)
{
	if (!o->dir || o->seq_len <= 0 || o->batch <= 0 || o->world_size < 1 || o->rank < 0 ||
	    o->rank >= o->world_size || o->prefetch < 0 || o->prefetch > MAX_PREFETCH) {
		moe_error_set(err, MOE_EINVAL,
			      "bad loader options (dir, seq_len %d, batch %d, rank %d of %d, prefetch %d)",
			      o->seq_len, o->batch, o->rank, o->world_size, o->prefetch);
		return NULL;
	}
	struct moe_loader *l = calloc(1, sizeof(*l));
	if (!l) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		return NULL;
	}
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	l->o = *o;
	l->dir = strdup(o->dir);
	l->o.dir = l->dir;
	l->T = (uint64_t)o->seq_len;
	l->B = (uint64_t)o->batch;
	if (!l->dir) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	l->ds = moe_dataset_open(o->dir, o->split, err);
	if (!l->ds)
		goto out_free;
	uint64_t n = moe_dataset_n_tokens(l->ds);
	l->n_windows = n >= 2 ? (n - 1) / l->T : 0;
	l->per_rank = l->n_windows / (uint64_t)o->world_size;
	if (l->per_rank == 0) {
		moe_error_set(err, MOE_EINVAL,
			      "%s: the %s split has %llu tokens, too few for seq_len %d and %d rank(s)",
			      o->dir, moe_split_name(o->split), (unsigned long long)n, o->seq_len,
			      o->world_size);
		goto out_free;
	}
	if (l->n_windows > UINT32_MAX) {
		moe_error_set(err, MOE_ERANGE, "%s: %llu windows (at most 2^32; raise seq_len)", o->dir,
			      (unsigned long long)l->n_windows);
		goto out_free;
	}
	l->win = malloc(((size_t)l->T + 1) * sizeof(*l->win));
	if (o->shuffle)
		l->perm = malloc((size_t)l->n_windows * sizeof(*l->perm));
	l->n_slots = o->prefetch;
	l->slots = calloc((size_t)l->n_slots + 1, sizeof(*l->slots));
	if (!l->win || (o->shuffle && !l->perm) || !l->slots) {
		moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out_free;
	}
	for (int i = 0; i < l->n_slots; i++) {
		l->slots[i].tok = malloc((size_t)l->B * ((size_t)l->T + 1) * sizeof(int32_t));
		if (!l->slots[i].tok) {
			moe_error_set(err, MOE_ENOMEM, "out of memory");
			goto out_free;
		}
	}
	if (thread_start(l, err) < 0)
		goto out_free;
	return l;
out_free:
	moe_loader_free(l);
	return NULL;
}

void moe_loader_free(struct moe_loader *l)
{
	if (!l)
		return;
	thread_stop(l);
	if (l->slots)
		for (int i = 0; i < l->n_slots; i++)
			free(l->slots[i].tok);
	free(l->slots);
	free(l->perm);
	free(l->win);
	moe_dataset_free(l->ds);
	free(l->dir);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
}

int moe_loader_next(struct moe_loader *l, int32_t *tokens, struct moe_error *err)
{
	if (l->failed) {
		if (err)
			*err = l->fail_err;
		return l->fail_err.code ? l->fail_err.code : MOE_EIO;
	}
	if (l->o.single_epoch && l->k >= l->per_rank)
		return 0;
	int rows;
	if (!l->thread_on) {
		rows = produce(l, l->k, tokens, &l->fail_err);
		if (rows < 0)
			goto fail;
	} else {
		pthread_mutex_lock(&l->mu);
		while (l->count == 0)
			pthread_cond_wait(&l->cv, &l->mu);
		struct slot *s = &l->slots[l->head];
		pthread_mutex_unlock(&l->mu);
		if (s->rc < 0) {
			l->fail_err = s->err;
			rows = s->rc;
			goto fail;
		}
		rows = s->rows;
		memcpy(tokens, s->tok, (size_t)rows * ((size_t)l->T + 1) * sizeof(int32_t));
		pthread_mutex_lock(&l->mu);
		l->head = (l->head + 1) % l->n_slots;
		l->count--;
		pthread_cond_broadcast(&l->cv);
		pthread_mutex_unlock(&l->mu);
	}
	l->k += (uint64_t)rows;
	return rows;
fail:
	l->failed = true;
	if (!l->fail_err.code)
		l->fail_err.code = rows;
	if (err)
		*err = l->fail_err;
	return rows;
}

const struct moe_dataset_info *moe_loader_info(const struct moe_loader *l)
{
	return moe_dataset_info(l->ds);
}

uint64_t moe_loader_n_tokens(const struct moe_loader *l)
{
	return moe_dataset_n_tokens(l->ds);
}

uint64_t moe_loader_n_windows(const struct moe_loader *l)
{
	return l->n_windows;
}

uint64_t moe_loader_windows_per_epoch(const struct moe_loader *l)
{
	return l->per_rank;
}

void moe_loader_position(const struct moe_loader *l, uint64_t *epoch, uint64_t *window)
{
	*epoch = l->k / l->per_rank;
	*window = l->k % l->per_rank;
	if (l->o.single_epoch && l->k >= l->per_rank) {
		*epoch = 1;
		*window = 0;
	}
}

static int seek(struct moe_loader *l, uint64_t k, struct moe_error *err)
{
	thread_stop(l);
	l->k = k;
	l->failed = false;
	memset(&l->fail_err, 0, sizeof(l->fail_err));
	return thread_start(l, err);
}

int moe_loader_rewind(struct moe_loader *l, struct moe_error *err)
{
	return seek(l, 0, err);
}

json_t *moe_loader_state(const struct moe_loader *l)
{
	uint64_t e, w;
	char sha[65];
	moe_loader_position(l, &e, &w);
	moe_hex(dataset_index_sha256(l->ds), 32, sha);
	return json_pack("{s:i, s:I, s:I, s:I, s:i, s:i, s:i, s:b, s:s, s:I, s:I, s:s}", "version", 1,
			 "epoch", (json_int_t)e, "window", (json_int_t)w, "seed",
			 (json_int_t)l->o.seed, "seq_len", l->o.seq_len, "rank", l->o.rank,
			 "world_size", l->o.world_size, "shuffle", l->o.shuffle, "split",
			 moe_split_name(l->o.split), "n_windows", (json_int_t)l->n_windows,
			 "n_tokens", (json_int_t)moe_dataset_n_tokens(l->ds), "index_sha256", sha);
}

static int want_int(const json_t *st, const char *key, int64_t expect, struct moe_error *err)
{
	int64_t v;
	int rc = moe_json_get_int(st, key, true, &v, "loader state", err);
	if (rc < 0)
		return rc;
	if (v != expect)
		return moe_error_set(err, MOE_EINVAL,
				     "loader state: field '%s' is %lld, this loader has %lld", key,
				     (long long)v, (long long)expect);
	return 0;
}

int moe_loader_restore(struct moe_loader *l, const json_t *state, struct moe_error *err)
{
	if (!json_is_object(state))
		return moe_error_set(err, MOE_EINVAL, "loader state: not a JSON object");
	int rc;
	if ((rc = want_int(state, "version", 1, err)) < 0 ||
	    (rc = want_int(state, "seed", (int64_t)l->o.seed, err)) < 0 ||
	    (rc = want_int(state, "seq_len", l->o.seq_len, err)) < 0 ||
	    (rc = want_int(state, "rank", l->o.rank, err)) < 0 ||
	    (rc = want_int(state, "world_size", l->o.world_size, err)) < 0 ||
	    (rc = want_int(state, "n_windows", (int64_t)l->n_windows, err)) < 0 ||
	    (rc = want_int(state, "n_tokens", (int64_t)moe_dataset_n_tokens(l->ds), err)) < 0)
		return rc;
	bool shuf;
	const char *split, *sha;
	if ((rc = moe_json_get_bool(state, "shuffle", true, &shuf, "loader state", err)) < 0 ||
	    (rc = moe_json_get_string(state, "split", true, &split, "loader state", err)) < 0 ||
	    (rc = moe_json_get_string(state, "index_sha256", true, &sha, "loader state", err)) < 0)
		return rc;
	if (shuf != l->o.shuffle)
		return moe_error_set(err, MOE_EINVAL, "loader state: field 'shuffle' differs");
	if (strcmp(split, moe_split_name(l->o.split)) != 0)
		return moe_error_set(err, MOE_EINVAL, "loader state: field 'split' is '%s'", split);
	char mine[65];
	moe_hex(dataset_index_sha256(l->ds), 32, mine);
	if (strcmp(sha, mine) != 0)
		return moe_error_set(err, MOE_EINVAL,
				     "loader state: field 'index_sha256' differs (other shard data)");
	int64_t e, w;
	if ((rc = moe_json_get_int(state, "epoch", true, &e, "loader state", err)) < 0 ||
	    (rc = moe_json_get_int(state, "window", true, &w, "loader state", err)) < 0)
		return rc;
	if (e < 0 || w < 0 || (uint64_t)w >= l->per_rank ||
	    (uint64_t)e > (UINT64_MAX - (uint64_t)w) / l->per_rank)
		return moe_error_set(err, MOE_EINVAL, "loader state: epoch %lld / window %lld out of range",
				     (long long)e, (long long)w);
	return seek(l, (uint64_t)e * l->per_rank + (uint64_t)w, err);
}
