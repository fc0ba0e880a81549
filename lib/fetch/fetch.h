/*
 * libmoefetch: Hugging Face Hub datasets over HTTP (libcurl).
 *
 * Pins a revision to a commit, lists the repository tree (following the
 * Link rel="next" pagination), and downloads files in parallel into a
 * directory: resumable partial files (NAME.part, HTTP Range), retries with
 * backoff on timeouts, 5xx and 429 (Retry-After honoured), sha256 checked
 * against the LFS oid before the file is renamed into place, and a manifest
 * (DIR/.moe-fetch.json) so that a second run only fetches what is missing
 * or wrong.  Nothing here prints: messages go to the caller's log callback.
 */
#ifndef MOE_FETCH_H
#define MOE_FETCH_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "core/core.h"

#define MOE_HUB_DEFAULT_ENDPOINT "https://huggingface.co"
#define MOE_HUB_DEFAULT_REPO "HuggingFaceFW/fineweb-edu"
#define MOE_HUB_DEFAULT_INCLUDE "sample/10BT/*"
#define MOE_FETCH_MANIFEST ".moe-fetch.json"

/* One file of a listing. */
struct moe_hub_entry {
	char *path;        /* repository path, '/'-separated */
	uint64_t size;     /* bytes */
	char sha256[65];   /* LFS sha256 (lower-case hex), "" for non-LFS files */
	char oid[65];      /* git blob id */
};

struct moe_hub_opts {
	const char *endpoint;  /* base URL; NULL: $HF_ENDPOINT or the default */
	const char *token;     /* bearer token or NULL (never printed) */
	const char *repo;      /* "owner/name" */
	int retries;           /* attempts after the first, per request [5] */
	double backoff;        /* first retry delay in seconds, doubled each time [1] */
	double max_backoff;    /* cap on one delay, Retry-After included [60] */
	long stall_timeout;    /* seconds without data before a transfer is retried [60] */
	/* Called (from any thread, serialised) with one-line messages about
	 * retries and skipped files; may be NULL. */
	void (*log)(void *ctx, int level, const char *msg);
	void *log_ctx;
};

struct moe_hub;

/* Create a client; copies what it needs from opts.  NULL on failure. */
struct moe_hub *moe_hub_new(const struct moe_hub_opts *opts, struct moe_error *err);
void moe_hub_free(struct moe_hub *h);

/* Resolve a revision (branch, tag or commit) to its commit sha (hex, up to
 * 64 characters, written to commit[65]). */
int moe_hub_revision(struct moe_hub *h, const char *rev, char commit[65], struct moe_error *err);

/* List the files at commit whose paths match one of the include globs
 * (fnmatch, '*' also matches '/'; none: every file) and none of the exclude
 * globs.  *out is a malloc'd array of *n entries sorted by path; free it
 * with moe_hub_entries_free().  A path that is absolute, empty or contains a
 * ".." component is refused (MOE_EFORMAT). */
int moe_hub_list(struct moe_hub *h, const char *commit, const char *const *include, int ninclude,
		 const char *const *exclude, int nexclude, struct moe_hub_entry **out, size_t *n,
		 struct moe_error *err);
void moe_hub_entries_free(struct moe_hub_entry *e, size_t n);

/* true when a repository path is safe to create under a directory. */
bool moe_hub_path_safe(const char *path);

struct moe_fetch_opts {
	const char *dir;   /* destination directory (created) */
	int jobs;          /* parallel downloads [4] */
	bool verify;       /* re-hash files already in place, even when recorded */
	/* Called with the bytes on disk so far and the total (serialised). */
	void (*progress)(void *ctx, uint64_t done, uint64_t total);
	void *progress_ctx;
};

struct moe_fetch_result {
	size_t fetched;  /* files downloaded and verified */
	size_t skipped;  /* files already present and recorded */
	size_t failed;   /* files that failed */
	uint64_t bytes;  /* bytes transferred */
};

/* Download entries (from a listing of commit) into opts->dir.  Stops early
 * (leaving resumable NAME.part files) when moe_interrupted() becomes true.
 * Returns 0 when every file is in place and verified; otherwise the first
 * error (err names the file). */
int moe_hub_download(struct moe_hub *h, const char *commit, const struct moe_hub_entry *e,
		     size_t n, const struct moe_fetch_opts *opts, struct moe_fetch_result *res,
		     struct moe_error *err);

#endif
