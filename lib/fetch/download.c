/* Parallel, resumable, verified downloads into a directory, with a manifest. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fetch/internal.h"


struct dl {
	struct moe_hub *h;
	const char *commit;
	const struct moe_hub_entry *e;
	size_t n, next;
	const struct moe_fetch_opts *opts;
	struct moe_fetch_result *res;
	json_t *manifest; /* {"repo","commit","files":{path:{size,sha256,oid}}} */
	char *manifest_path;
	pthread_mutex_t lock;
	uint64_t done, total;
	int rc;
	struct moe_error err;
};

/* One transfer's state, shared with the curl callbacks. */
struct xfer {
	struct dl *d;
	int fd;
	uint64_t off;       /* bytes in the .part file (all hashed) */
	uint64_t size;      /* expected size */
	struct moe_sha256 sha;
	bool checked;       /* response status inspected */
	bool refuse;        /* body not wanted (error status) */
	bool overflow;      /* more bytes than expected */
	bool range_bad;     /* 206 with a wrong start */
	bool io_error;
	int io_errno;
	uint64_t got;       /* bytes received in this attempt */
	long status;
	double retry_after;
	bool have_range;
	uint64_t range_start;
	CURL *c;
};

static void dl_log(struct dl *d, int level, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void dl_log(struct dl *d, int level, const char *fmt, ...)
{
	char msg[700];
	va_list ap;
	if (!d->h->o.log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&d->h->lock);
	d->h->o.log(d->h->o.log_ctx, level, msg);
	pthread_mutex_unlock(&d->h->lock);
}

static void add_progress(struct dl *d, int64_t delta)
{
	pthread_mutex_lock(&d->lock);
	d->done = (uint64_t)((int64_t)d->done + delta);
	uint64_t done = d->done, total = d->total;
	pthread_mutex_unlock(&d->lock);
	if (d->opts->progress)
		d->opts->progress(d->opts->progress_ctx, done, total);
}

/* ---- curl callbacks ------------------------------------------------------ */

static size_t x_header(char *b, size_t sz, size_t nm, void *ud)
{
	struct xfer *x = ud;
	size_t n = sz * nm, m = n;
	while (m > 0 && (b[m - 1] == '\r' || b[m - 1] == '\n'))
		m--;
	if (m >= 5 && strncmp(b, "HTTP/", 5) == 0) {
		x->retry_after = -1;
		x->have_range = false;
		return n;
	}
	if (m > 12 && strncasecmp(b, "Retry-After:", 12) == 0) {
		char tmp[64];
		size_t l = m - 12 < sizeof(tmp) - 1 ? m - 12 : sizeof(tmp) - 1;
		memcpy(tmp, b + 12, l);
		tmp[l] = 0;
		char *e;
		double s = strtod(tmp, &e);
		if (e != tmp && s >= 0 && s < 1e6) {
			x->retry_after = s;
		} else {
			time_t t = curl_getdate(tmp, NULL);
			if (t > 0)
				x->retry_after = difftime(t, time(NULL)) > 0 ? difftime(t, time(NULL)) : 0;
		}
	} else if (m > 10 && strncasecmp(b, "RateLimit:", 10) == 0) {
		char tmp[256];
		size_t l = m - 10 < sizeof(tmp) - 1 ? m - 10 : sizeof(tmp) - 1;
		memcpy(tmp, b + 10, l);
		tmp[l] = 0;
		double s = fetch_ratelimit_wait(tmp);
		if (s >= 0 && x->retry_after < 0)
			x->retry_after = s;
	} else if (m > 14 && strncasecmp(b, "Content-Range:", 14) == 0) {
		char tmp[128];
		size_t l = m - 14 < sizeof(tmp) - 1 ? m - 14 : sizeof(tmp) - 1;
		memcpy(tmp, b + 14, l);
		tmp[l] = 0;
		unsigned long long a;
		if (sscanf(tmp, " bytes %llu-", &a) == 1) {
			x->have_range = true;
			x->range_start = a;
		}
	}
	return n;
}

static int reset_part(struct xfer *x)
{
	if (ftruncate(x->fd, 0) < 0 || lseek(x->fd, 0, SEEK_SET) < 0)
		return -1;
	add_progress(x->d, -(int64_t)x->off);
	x->off = 0;
	moe_sha256_init(&x->sha);
	return 0;
}

static size_t x_body(char *b, size_t sz, size_t nm, void *ud)
{
	struct xfer *x = ud;
	size_t n = sz * nm;
	if (moe_interrupted())
		return 0;
	if (!x->checked) {
		x->checked = true;
		curl_easy_getinfo(x->c, CURLINFO_RESPONSE_CODE, &x->status);
		if (x->status == 206) {
			if (!x->have_range || x->range_start != x->off) {
				x->range_bad = true;
				return 0;
			}
		} else if (x->status == 200) {
			if (x->off > 0 && reset_part(x) < 0) {
				x->io_error = true;
				x->io_errno = errno;
				return 0;
			}
		} else {
			x->refuse = true;
		}
	}
	if (x->refuse)
		return n; /* drain an error body */
	if (x->off + n > x->size) {
		x->overflow = true;
		return 0;
	}
	size_t w = 0;
	while (w < n) {
		ssize_t k = write(x->fd, b + w, n - w);
		if (k < 0 && errno == EINTR)
			continue;
		if (k < 0) {
			x->io_error = true;
			x->io_errno = errno;
			return 0;
		}
		w += (size_t)k;
	}
	moe_sha256_update(&x->sha, b, n);
	x->off += n;
	x->got += n;
	add_progress(x->d, (int64_t)n);
	return n;
}

static int x_info(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)ud; (void)dt; (void)dn; (void)ut; (void)un;
	return moe_interrupted() ? 1 : 0;
}

/* ---- one file ------------------------------------------------------------ */

static int hash_prefix(int fd, uint64_t len, struct moe_sha256 *s)
{
	static __thread uint8_t buf[1 << 16];
	uint64_t off = 0;
	moe_sha256_init(s);
	while (off < len) {
		size_t want = len - off < sizeof(buf) ? (size_t)(len - off) : sizeof(buf);
		ssize_t k = pread(fd, buf, want, (off_t)off);
		if (k < 0 && errno == EINTR)
			continue;
		if (k <= 0)
			return -1;
		moe_sha256_update(s, buf, (size_t)k);
		off += (uint64_t)k;
	}
	return 0;
}

static char *resolve_url(struct dl *d, const char *path)
{
	size_t cap = strlen(d->h->endpoint) + strlen(d->h->repo) + strlen(d->commit) +
		     strlen(path) * 3 + 64;
	char *u = malloc(cap);
	if (!u)
		return NULL;
	int o = snprintf(u, cap, "%s/datasets/%s/resolve/%s/", d->h->endpoint, d->h->repo, d->commit);
	for (const unsigned char *p = (const unsigned char *)path; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '_' || *p == '.' || *p == '~' || *p == '/')
			u[o++] = (char)*p;
		else
			o += snprintf(u + o, cap - (size_t)o, "%%%02X", *p);
	}
	u[o] = 0;
	return u;
}

/* Download e into part (resuming); on success the .part holds the verified
 * file.  Returns 0 or an error code with err filled. */
static int fetch_part(struct dl *d, const struct moe_hub_entry *e, const char *part,
		      struct moe_error *err)
{
	struct xfer x = {.d = d, .size = e->size};
	bool restarted = false;
	int rc = 0;
	char *url = resolve_url(d, e->path);
	if (!url)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	x.fd = open(part, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
	if (x.fd < 0) {
		rc = moe_error_errno(err, "cannot open '%s'", part);
		goto out;
	}
again:;
	struct stat st;
	if (fstat(x.fd, &st) < 0) {
		rc = moe_error_errno(err, "cannot stat '%s'", part);
		goto out;
	}
	x.off = (uint64_t)st.st_size;
	if (x.off > e->size) {
		if (ftruncate(x.fd, 0) < 0) {
			rc = moe_error_errno(err, "cannot truncate '%s'", part);
			goto out;
		}
		x.off = 0;
	}
	bool resumed = x.off > 0;
	if (hash_prefix(x.fd, x.off, &x.sha) < 0) {
		rc = moe_error_errno(err, "cannot read '%s'", part);
		goto out;
	}
	if (lseek(x.fd, (off_t)x.off, SEEK_SET) < 0) {
		rc = moe_error_errno(err, "cannot seek '%s'", part);
		goto out;
	}
	add_progress(d, (int64_t)x.off);
	if (resumed)
		dl_log(d, 2, "%s: resuming at byte %llu of %llu", e->path, (unsigned long long)x.off,
		       (unsigned long long)e->size);

	for (int attempt = 0; x.off < e->size; attempt++) {
		if (moe_interrupted()) {
			rc = moe_error_set(err, MOE_EINTR, "%s: interrupted; '%s' kept for resuming",
					   e->path, part);
			goto out;
		}
		struct curl_slist *hdrs = NULL;
		CURL *c = curl_easy_init();
		if (!c) {
			rc = moe_error_set(err, MOE_ENOMEM, "cannot create a curl handle");
			goto out;
		}
		if (d->h->auth)
			hdrs = curl_slist_append(hdrs, d->h->auth);
		char range[64];
		if (x.off > 0) {
			snprintf(range, sizeof(range), "Range: bytes=%llu-", (unsigned long long)x.off);
			hdrs = curl_slist_append(hdrs, range);
		}
		x.c = c;
		x.checked = x.refuse = x.overflow = x.range_bad = x.io_error = false;
		x.got = 0;
		x.status = 0;
		x.retry_after = -1;
		curl_easy_setopt(c, CURLOPT_URL, url);
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
		curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
		curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(c, CURLOPT_USERAGENT, "moe-fetch/" PACKAGE_VERSION);
		curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
		curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, d->h->o.stall_timeout);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
		curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
		curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, x_header);
		curl_easy_setopt(c, CURLOPT_HEADERDATA, &x);
		curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, x_body);
		curl_easy_setopt(c, CURLOPT_WRITEDATA, &x);
		curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
		curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, x_info);
		curl_easy_setopt(c, CURLOPT_BUFFERSIZE, 512L * 1024);
		CURLcode cc = curl_easy_perform(c);
		long status = 0;
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &status);
		curl_easy_cleanup(c);
		curl_slist_free_all(hdrs);
		x.c = NULL;
		if (x.status == 0)
			x.status = status;

		if (moe_interrupted()) {
			rc = moe_error_set(err, MOE_EINTR, "%s: interrupted; '%s' kept for resuming",
					   e->path, part);
			goto out;
		}
		if (x.io_error) {
			errno = x.io_errno;
			rc = moe_error_errno(err, "cannot write '%s'", part);
			goto out;
		}
		if (x.overflow) {
			/* the server sent more than the listing says: the file is wrong */
			reset_part(&x);
			rc = moe_error_set(err, MOE_ECHECKSUM, "%s: server sent more than %llu bytes",
					   e->path, (unsigned long long)e->size);
			goto out;
		}
		if (x.status == 416 && x.off > 0) {
			dl_log(d, 2, "%s: range not satisfiable; restarting", e->path);
			if (reset_part(&x) < 0) {
				rc = moe_error_errno(err, "cannot truncate '%s'", part);
				goto out;
			}
			continue;
		}
		bool ok_status = x.status == 200 || x.status == 206;
		if (cc == CURLE_OK && ok_status && x.off == e->size)
			break;
		bool retry = x.range_bad || fetch_retriable_curl(cc) || fetch_retriable_status(x.status) ||
			     (cc == CURLE_OK && ok_status); /* short body */
		if (!retry) {
			if (cc != CURLE_OK && cc != CURLE_WRITE_ERROR)
				rc = moe_error_set(err, MOE_ENET, "%s: %s", e->path, curl_easy_strerror(cc));
			else
				rc = moe_error_set(err, x.status == 404 ? MOE_ENOTFOUND : MOE_ENET,
						   "%s: HTTP %ld%s", e->path, x.status,
						   x.status == 401 || x.status == 403 ? " (check HF_TOKEN)" : "");
			goto out;
		}
		if (attempt >= d->h->o.retries) {
			rc = moe_error_set(err, MOE_ENET, "%s: giving up after %d attempts (%s%s%ld); '%s' kept for resuming",
					   e->path, attempt + 1,
					   cc != CURLE_OK ? curl_easy_strerror(cc) : "",
					   cc != CURLE_OK ? ", HTTP " : "HTTP ", x.status, part);
			goto out;
		}
		dl_log(d, 2, "%s: %s (HTTP %ld) after %llu bytes; retry %d of %d", e->path,
		       cc != CURLE_OK ? curl_easy_strerror(cc) : "incomplete", x.status,
		       (unsigned long long)x.got, attempt + 1, d->h->o.retries);
		if (!fetch_backoff_sleep(d->h, attempt, x.retry_after)) {
			rc = moe_error_set(err, MOE_EINTR, "%s: interrupted; '%s' kept for resuming",
					   e->path, part);
			goto out;
		}
	}

	/* verify */
	if (e->sha256[0]) {
		uint8_t dig[32];
		char hex[65];
		moe_sha256_final(&x.sha, dig);
		moe_hex(dig, 32, hex);
		if (strcmp(hex, e->sha256) != 0) {
			if (resumed && !restarted) {
				dl_log(d, 1, "%s: sha256 mismatch after resuming; downloading again from the start",
				       e->path);
				restarted = true;
				if (reset_part(&x) < 0) {
					rc = moe_error_errno(err, "cannot truncate '%s'", part);
					goto out;
				}
				add_progress(d, 0);
				goto again;
			}
			reset_part(&x);
			close(x.fd);
			x.fd = -1;
			unlink(part);
			rc = moe_error_set(err, MOE_ECHECKSUM,
					   "%s: sha256 mismatch (expected %s, got %s); partial file removed",
					   e->path, e->sha256, hex);
			goto out;
		}
	} else if (strlen(e->oid) == 40) {
		/* a plain git file: its blob id is sha1("blob SIZE\0" + bytes) */
		struct fetch_sha1 s1;
		char hdr[32], hex[41];
		uint8_t dig[20], buf[65536];
		fetch_sha1_init(&s1);
		int hl = snprintf(hdr, sizeof(hdr), "blob %llu", (unsigned long long)e->size);
		fetch_sha1_update(&s1, hdr, (size_t)hl + 1);
		for (uint64_t off = 0; off < e->size;) {
			ssize_t k = pread(x.fd, buf, sizeof(buf), (off_t)off);
			if (k <= 0) {
				rc = moe_error_errno(err, "cannot read '%s'", part);
				goto out;
			}
			fetch_sha1_update(&s1, buf, (size_t)k);
			off += (uint64_t)k;
		}
		fetch_sha1_final(&s1, dig);
		moe_hex(dig, 20, hex);
		if (strcmp(hex, e->oid) != 0) {
			close(x.fd);
			x.fd = -1;
			unlink(part);
			rc = moe_error_set(err, MOE_ECHECKSUM,
					   "%s: git blob id mismatch (expected %s, got %s); partial file removed",
					   e->path, e->oid, hex);
			goto out;
		}
	}
	if (fsync(x.fd) < 0) {
		rc = moe_error_errno(err, "cannot sync '%s'", part);
		goto out;
	}
out:
	if (x.fd >= 0)
		close(x.fd);
	free(url);
	return rc;
}

static int save_manifest(struct dl *d, struct moe_error *err)
{
	return moe_json_save_file(d->manifest, d->manifest_path, err);
}

/* Is e already in place?  (recorded in the manifest with the same checksum
 * and size, or present with the right size and sha256) */
static bool in_place(struct dl *d, const struct moe_hub_entry *e, const char *dest)
{
	struct stat st;
	if (stat(dest, &st) < 0 || !S_ISREG(st.st_mode) || (uint64_t)st.st_size != e->size)
		return false;
	pthread_mutex_lock(&d->lock);
	json_t *rec = json_object_get(json_object_get(d->manifest, "files"), e->path);
	const char *sha = json_string_value(json_object_get(rec, "sha256"));
	const char *oid = json_string_value(json_object_get(rec, "oid"));
	json_t *sz = json_object_get(rec, "size");
	bool ok = rec && json_is_integer(sz) && (uint64_t)json_integer_value(sz) == e->size &&
		  (e->sha256[0] ? sha && strcmp(sha, e->sha256) == 0 : oid && strcmp(oid, e->oid) == 0);
	pthread_mutex_unlock(&d->lock);
	if (!e->sha256[0] || (ok && !d->opts->verify))
		return ok;
	/* not recorded: check the bytes */
	uint8_t dig[32];
	char hex[65];
	struct moe_sha256 s;
	int fd = open(dest, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return false;
	int rc = hash_prefix(fd, e->size, &s);
	close(fd);
	if (rc < 0)
		return false;
	moe_sha256_final(&s, dig);
	moe_hex(dig, 32, hex);
	return strcmp(hex, e->sha256) == 0;
}

static void record(struct dl *d, const struct moe_hub_entry *e)
{
	json_t *rec = json_pack("{s:I, s:s, s:s}", "size", (json_int_t)e->size, "sha256", e->sha256,
				"oid", e->oid);
	pthread_mutex_lock(&d->lock);
	json_t *files = json_object_get(d->manifest, "files");
	if (rec && files)
		json_object_set_new(files, e->path, rec);
	else
		json_decref(rec);
	json_object_set_new(d->manifest, "commit", json_string(d->commit));
	struct moe_error err = {0};
	if (save_manifest(d, &err) < 0)
		dl_log(d, 1, "%s", err.msg);
	pthread_mutex_unlock(&d->lock);
}

static int fetch_one(struct dl *d, const struct moe_hub_entry *e, struct moe_error *err)
{
	char *dest = moe_path_join(d->opts->dir, e->path);
	char *part = NULL;
	int rc = 0;
	if (!dest)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	if (!moe_hub_path_safe(e->path)) {
		rc = moe_error_set(err, MOE_EINVAL, "refusing unsafe path '%s'", e->path);
		goto out;
	}
	char *slash = strrchr(dest, '/');
	if (slash) {
		*slash = 0;
		rc = moe_mkdirs(dest, err);
		*slash = '/';
		if (rc)
			goto out;
	}
	if (in_place(d, e, dest)) {
		record(d, e);
		add_progress(d, (int64_t)e->size);
		pthread_mutex_lock(&d->lock);
		d->res->skipped++;
		pthread_mutex_unlock(&d->lock);
		dl_log(d, 2, "%s: present and verified", e->path);
		goto out;
	}
	size_t pl = strlen(dest) + 6;
	part = malloc(pl);
	if (!part) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	snprintf(part, pl, "%s.part", dest);
	if ((rc = fetch_part(d, e, part, err)))
		goto out;
	if (rename(part, dest) < 0) {
		rc = moe_error_errno(err, "cannot rename '%s' to '%s'", part, dest);
		goto out;
	}
	record(d, e);
	pthread_mutex_lock(&d->lock);
	d->res->fetched++;
	d->res->bytes += e->size;
	pthread_mutex_unlock(&d->lock);
	dl_log(d, 2, "%s: downloaded and verified", e->path);
out:
	free(dest);
	free(part);
	return rc;
}

static void *worker(void *arg)
{
	struct dl *d = arg;
	for (;;) {
		pthread_mutex_lock(&d->lock);
		bool stop = d->next >= d->n || moe_interrupted() ||
			    (d->rc == MOE_EINTR);
		size_t i = d->next++;
		pthread_mutex_unlock(&d->lock);
		if (stop)
			break;
		struct moe_error err = {0};
		int rc = fetch_one(d, &d->e[i], &err);
		if (rc) {
			pthread_mutex_lock(&d->lock);
			d->res->failed++;
			bool first = d->rc == 0;
			if (first) {
				d->rc = rc;
				d->err = err;
			}
			pthread_mutex_unlock(&d->lock);
			/* the first error is the caller's to report */
			if (!first && rc != MOE_EINTR)
				dl_log(d, 1, "%s", err.msg);
		}
	}
	return NULL;
}

static json_t *load_manifest(struct dl *d)
{
	struct stat st;
	if (stat(d->manifest_path, &st) == 0) {
		struct moe_error err = {0};
		json_t *m = moe_json_load_file(d->manifest_path, &err);
		if (m && json_is_object(m) && json_is_object(json_object_get(m, "files"))) {
			const char *repo = json_string_value(json_object_get(m, "repo"));
			if (repo && strcmp(repo, d->h->repo) == 0)
				return m;
			dl_log(d, 1, "%s: written for another repository; starting a new one",
			       d->manifest_path);
		} else {
			dl_log(d, 1, "%s: unreadable manifest; starting a new one (%s)", d->manifest_path,
			       err.msg[0] ? err.msg : "not an object with 'files'");
		}
		json_decref(m);
	}
	return json_pack("{s:s, s:s, s:{}}", "repo", d->h->repo, "commit", d->commit, "files");
}

int moe_hub_download(struct moe_hub *h, const char *commit, const struct moe_hub_entry *e,
		     size_t n, const struct moe_fetch_opts *opts, struct moe_fetch_result *res,
		     struct moe_error *err)
{
	struct dl d = {.h = h, .commit = commit, .e = e, .n = n, .opts = opts, .res = res};
	int rc;
	memset(res, 0, sizeof(*res));
	if ((rc = moe_mkdirs(opts->dir, err)))
		return rc;
	d.manifest_path = moe_path_join(opts->dir, MOE_FETCH_MANIFEST);
	if (!d.manifest_path)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	pthread_mutex_init(&d.lock, NULL);
	d.manifest = load_manifest(&d);
	if (!d.manifest) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		if (!moe_hub_path_safe(e[i].path)) {
			rc = moe_error_set(err, MOE_EINVAL, "refusing unsafe path '%s'", e[i].path);
			goto out;
		}
		d.total += e[i].size;
	}
	int jobs = opts->jobs > 0 ? opts->jobs : 4;
	if ((size_t)jobs > n)
		jobs = n ? (int)n : 1;
	pthread_t th[64];
	if (jobs > 64)
		jobs = 64;
	int started = 0;
	for (int i = 0; i < jobs; i++) {
		if (pthread_create(&th[i], NULL, worker, &d) != 0)
			break;
		started++;
	}
	if (started == 0)
		worker(&d);
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	if (d.rc) {
		rc = d.rc;
		*err = d.err;
		if (res->failed > 1 && rc != MOE_EINTR)
			moe_error_prefix(err, "%zu files failed, the first", res->failed);
	}
out:
	json_decref(d.manifest);
	free(d.manifest_path);
	pthread_mutex_destroy(&d.lock);
	return rc;
}
