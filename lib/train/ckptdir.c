/*
 * The checkpoint directory of a run: RUN/ckpt/step-NNNNNNN/ directories, the
 * `latest` symbolic link, retention of the last K and removal of temporaries
 * left by a killed writer.
 */
#include <dirent.h>
#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "train/train.h"

void moe_ckpt_name(int64_t step, char *buf, size_t cap)
{
	snprintf(buf, cap, "step-%07lld", (long long)step);
}

/* step of a "step-NNNNNNN" name, or -1 */
static int64_t parse_step_name(const char *s)
{
	if (strncmp(s, "step-", 5) != 0 || !s[5])
		return -1;
	int64_t v = 0;
	for (const char *p = s + 5; *p; p++) {
		if (*p < '0' || *p > '9' || v > INT64_MAX / 10 - 10)
			return -1;
		v = v * 10 + (*p - '0');
	}
	return v;
}

int moe_ckpt_link_latest(const char *ckpt_root, const char *name, struct moe_error *err)
{
	char *tmp = NULL, *dst = moe_path_join(ckpt_root, "latest");
	char tname[64];
	snprintf(tname, sizeof tname, ".latest.tmp.%ld", (long)getpid());
	tmp = moe_path_join(ckpt_root, tname);
	int rc = 0;
	if (!tmp || !dst) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	unlink(tmp);
	if (symlink(name, tmp) != 0) {
		rc = moe_error_errno(err, "cannot create link '%s'", tmp);
		goto out;
	}
	if (rename(tmp, dst) != 0) {
		rc = moe_error_errno(err, "cannot rename '%s' to '%s'", tmp, dst);
		unlink(tmp);
	}
out:
	free(tmp);
	free(dst);
	return rc;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

int moe_ckpt_list(const char *ckpt_root, int64_t **steps, size_t *n, struct moe_error *err)
{
	*steps = NULL;
	*n = 0;
	DIR *d = opendir(ckpt_root);
	if (!d) {
		if (errno == ENOENT)
			return 0;
		return moe_error_errno(err, "cannot open directory '%s'", ckpt_root);
	}
	size_t cap = 0;
	struct dirent *e;
	int rc = 0;
	while ((e = readdir(d))) {
		int64_t s = parse_step_name(e->d_name);
		if (s < 0)
			continue;
		if (*n == cap) {
			cap = cap ? 2 * cap : 16;
			int64_t *p = realloc(*steps, cap * sizeof *p);
			if (!p) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				break;
			}
			*steps = p;
		}
		(*steps)[(*n)++] = s;
	}
	closedir(d);
	if (rc) {
		free(*steps);
		*steps = NULL;
		*n = 0;
		return rc;
	}
	if (*n)
		qsort(*steps, *n, sizeof **steps, cmp_i64);
	return 0;
}

int moe_ckpt_prune(const char *ckpt_root, int64_t keep, struct moe_error *err)
{
	/* temporaries of interrupted writers: ".step-NNNNNNN.tmp.XXXXXX" and
	 * ".latest.tmp.PID" */
	DIR *d = opendir(ckpt_root);
	if (d) {
		struct dirent *e;
		while ((e = readdir(d))) {
			if (strncmp(e->d_name, ".latest.tmp.", 12) == 0) {
				char *p = moe_path_join(ckpt_root, e->d_name);
				if (p)
					unlink(p);
				free(p);
			} else if (strncmp(e->d_name, ".step-", 6) == 0 && strstr(e->d_name, ".tmp.")) {
				char *p = moe_path_join(ckpt_root, e->d_name);
				if (p)
					moe_rmtree(p, NULL);
				free(p);
			}
		}
		closedir(d);
	}
	if (keep <= 0)
		return 0;
	int64_t *steps;
	size_t n;
	int rc = moe_ckpt_list(ckpt_root, &steps, &n, err);
	if (rc)
		return rc;
	for (size_t i = 0; i + (size_t)keep < n; i++) {
		char name[32];
		moe_ckpt_name(steps[i], name, sizeof name);
		char *p = moe_path_join(ckpt_root, name);
		if (!p) {
			rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
			break;
		}
		rc = moe_rmtree(p, err);
		free(p);
		if (rc)
			break;
	}
	free(steps);
	return rc;
}

static bool is_dir(const char *p)
{
	struct stat st;
	return stat(p, &st) == 0 && S_ISDIR(st.st_mode);
}

static bool has_file(const char *dir, const char *name)
{
	char *p = moe_path_join(dir, name);
	bool ok = p && access(p, F_OK) == 0;
	free(p);
	return ok;
}

char *moe_ckpt_resolve(const char *path, struct moe_error *err)
{
	if (!is_dir(path)) {
		moe_error_set(err, MOE_ENOTFOUND, "'%s': no such checkpoint directory", path);
		return NULL;
	}
	/* a checkpoint itself (ours or HF) */
	if (has_file(path, "config.json") || has_file(path, "model.safetensors"))
		return strdup(path);
	const char *tries[] = { "latest", "ckpt/latest" };
	for (size_t i = 0; i < 2; i++) {
		char *p = moe_path_join(path, tries[i]);
		if (p && is_dir(p) && has_file(p, "config.json"))
			return p;
		free(p);
	}
	moe_error_set(err, MOE_ENOTFOUND,
		      "'%s': not a checkpoint (no config.json, no latest link)", path);
	return NULL;
}
