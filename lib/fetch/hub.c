/* Hugging Face Hub client: revision, tree listing, verified downloads. */
#include "config.h"

#include <errno.h>
#include <fcntl.h>
#include <fnmatch.h>
#include <math.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include <curl/curl.h>

#include "fetch/internal.h"

#define MAX_JSON_BODY ((size_t)256 << 20)


static pthread_once_t curl_once = PTHREAD_ONCE_INIT;
static void curl_init_once(void)
{
	curl_global_init(CURL_GLOBAL_DEFAULT);
}

static void hub_log(struct moe_hub *h, int level, const char *fmt, ...)
	__attribute__((format(printf, 3, 4)));
static void hub_log(struct moe_hub *h, int level, const char *fmt, ...)
{
	char msg[600];
	va_list ap;
	if (!h->o.log)
		return;
	va_start(ap, fmt);
	vsnprintf(msg, sizeof(msg), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&h->lock);
	h->o.log(h->o.log_ctx, level, msg);
	pthread_mutex_unlock(&h->lock);
}

static bool repo_name_ok(const char *r)
{
	int slashes = 0;
	if (!*r || *r == '/' || strstr(r, ".."))
		return false;
	for (const char *p = r; *p; p++) {
		if (*p == '/')
			slashes++;
		else if (!(*p >= 'a' && *p <= 'z') && !(*p >= 'A' && *p <= 'Z') &&
			 !(*p >= '0' && *p <= '9') && *p != '-' && *p != '_' && *p != '.')
			return false;
	}
	return slashes == 1 && r[strlen(r) - 1] != '/';
}

struct moe_hub *moe_hub_new(const struct moe_hub_opts *opts, struct moe_error *err)
{
	pthread_once(&curl_once, curl_init_once);
	const char *ep = opts->endpoint;
	if (!ep || !*ep)
		ep = getenv("HF_ENDPOINT");
	if (!ep || !*ep)
		ep = MOE_HUB_DEFAULT_ENDPOINT;
	if (strncmp(ep, "https://", 8) != 0 && strncmp(ep, "http://", 7) != 0) {
		moe_error_set(err, MOE_EINVAL, "endpoint '%s' is not an http(s) URL", ep);
		return NULL;
	}
	if (!opts->repo || !repo_name_ok(opts->repo)) {
		moe_error_set(err, MOE_EINVAL, "bad repository name '%s' (want OWNER/NAME)",
			      opts->repo ? opts->repo : "");
		return NULL;
	}
	struct moe_hub *h = calloc(1, sizeof(*h));
	if (!h)
		goto oom;
	h->o = *opts;
	if (h->o.retries < 0)
		h->o.retries = 0;
	if (!(h->o.backoff >= 0))
		h->o.backoff = 1;
	if (!(h->o.max_backoff > 0))
		h->o.max_backoff = 60;
	if (h->o.stall_timeout <= 0)
		h->o.stall_timeout = 60;
	pthread_mutex_init(&h->lock, NULL);
	h->endpoint = strdup(ep);
	h->repo = strdup(opts->repo);
	if (!h->endpoint || !h->repo)
		goto oom;
	size_t l = strlen(h->endpoint);
	while (l > 0 && h->endpoint[l - 1] == '/')
		h->endpoint[--l] = 0;
	if (opts->token) {
		for (const char *p = opts->token; *p; p++)
			if ((unsigned char)*p < 0x21 || *p == 0x7f) {
				moe_error_set(err, MOE_EINVAL, "HF_TOKEN contains invalid characters");
				moe_hub_free(h);
				return NULL;
			}
		size_t n = strlen(opts->token) + 32;
		h->auth = malloc(n);
		if (!h->auth)
			goto oom;
		snprintf(h->auth, n, "Authorization: Bearer %s", opts->token);
	}
	return h;
oom:
	moe_hub_free(h);
	moe_error_set(err, MOE_ENOMEM, "out of memory");
	return NULL;
}

void moe_hub_free(struct moe_hub *h)
{
	if (!h)
		return;
	if (h->auth) {
		memset(h->auth, 0, strlen(h->auth));
		free(h->auth);
	}
	free(h->endpoint);
	free(h->repo);
	pthread_mutex_destroy(&h->lock);
	free(h);
}

/* ---- HTTP plumbing ------------------------------------------------------- */

struct resp {
	long status;
	char *next;           /* Link rel="next" */
	double retry_after;   /* seconds, < 0 when absent */
	bool have_range;
	uint64_t range_start; /* Content-Range */
	char *body;
	size_t len, cap;
	bool too_big;
};

static void resp_reset_headers(struct resp *r)
{
	free(r->next);
	r->next = NULL;
	r->retry_after = -1;
	r->have_range = false;
}

static char *dup_range(const char *a, const char *b)
{
	char *s = malloc((size_t)(b - a) + 1);
	if (s) {
		memcpy(s, a, (size_t)(b - a));
		s[b - a] = 0;
	}
	return s;
}

static bool header_is(const char *line, size_t n, const char *name, const char **val)
{
	size_t l = strlen(name);
	if (n <= l || strncasecmp(line, name, l) != 0 || line[l] != ':')
		return false;
	const char *v = line + l + 1;
	while (v < line + n && (*v == ' ' || *v == '\t'))
		v++;
	*val = v;
	return true;
}

double fetch_ratelimit_wait(const char *value)
{
	const char *t = strstr(value, ";t=");
	if (!t)
		return -1;
	char *e;
	double s = strtod(t + 3, &e);
	return e != t + 3 && s >= 0 && s < 1e6 ? s : -1;
}

static size_t header_cb(char *b, size_t sz, size_t nm, void *ud)
{
	struct resp *r = ud;
	size_t n = sz * nm, m = n;
	const char *v;
	while (m > 0 && (b[m - 1] == '\r' || b[m - 1] == '\n'))
		m--;
	if (m >= 5 && strncmp(b, "HTTP/", 5) == 0) {
		resp_reset_headers(r);
		return n;
	}
	char line[2048];
	if (m >= sizeof(line))
		return n;
	memcpy(line, b, m);
	line[m] = 0;
	if (header_is(line, m, "Link", &v)) {
		/* <url>; rel="next", <url>; rel="prev" */
		const char *p = v;
		while ((p = strchr(p, '<'))) {
			const char *q = strchr(p, '>');
			if (!q)
				break;
			const char *end = strchr(q, ',');
			if (!end)
				end = line + m;
			const char *rel = strstr(q, "rel=");
			if (rel && rel < end && (strncmp(rel, "rel=\"next\"", 10) == 0 || strncmp(rel, "rel=next", 8) == 0)) {
				free(r->next);
				r->next = dup_range(p + 1, q);
				break;
			}
			p = end;
		}
	} else if (header_is(line, m, "Retry-After", &v)) {
		char *e;
		double s = strtod(v, &e);
		if (e != v && s >= 0 && isfinite(s)) {
			r->retry_after = s;
		} else {
			time_t t = curl_getdate(v, NULL);
			if (t > 0)
				r->retry_after = difftime(t, time(NULL)) > 0 ? difftime(t, time(NULL)) : 0;
		}
	} else if (header_is(line, m, "RateLimit", &v)) {
		double s = fetch_ratelimit_wait(v);
		if (s >= 0 && r->retry_after < 0)
			r->retry_after = s;
	} else if (header_is(line, m, "Content-Range", &v)) {
		unsigned long long a;
		if (sscanf(v, "bytes %llu-", &a) == 1) {
			r->have_range = true;
			r->range_start = a;
		}
	}
	return n;
}

static size_t body_cb(char *b, size_t sz, size_t nm, void *ud)
{
	struct resp *r = ud;
	size_t n = sz * nm;
	if (r->len + n > MAX_JSON_BODY) {
		r->too_big = true;
		return 0;
	}
	if (r->len + n + 1 > r->cap) {
		size_t cap = r->cap ? r->cap : 65536;
		while (cap < r->len + n + 1)
			cap *= 2;
		char *p = realloc(r->body, cap);
		if (!p)
			return 0;
		r->body = p;
		r->cap = cap;
	}
	memcpy(r->body + r->len, b, n);
	r->len += n;
	r->body[r->len] = 0;
	return n;
}

static int xfer_cb(void *ud, curl_off_t dt, curl_off_t dn, curl_off_t ut, curl_off_t un)
{
	(void)ud; (void)dt; (void)dn; (void)ut; (void)un;
	return moe_interrupted() ? 1 : 0;
}

static CURL *hub_easy(struct moe_hub *h, const char *url, struct curl_slist **hdrs)
{
	CURL *c = curl_easy_init();
	if (!c)
		return NULL;
	*hdrs = NULL;
	if (h->auth && strncmp(url, h->endpoint, strlen(h->endpoint)) == 0)
		*hdrs = curl_slist_append(*hdrs, h->auth);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, *hdrs);
	curl_easy_setopt(c, CURLOPT_FOLLOWLOCATION, 1L);
	curl_easy_setopt(c, CURLOPT_MAXREDIRS, 10L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_USERAGENT, "moe-fetch/" PACKAGE_VERSION);
	curl_easy_setopt(c, CURLOPT_CONNECTTIMEOUT, 30L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_LIMIT, 1L);
	curl_easy_setopt(c, CURLOPT_LOW_SPEED_TIME, h->o.stall_timeout);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
	curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	curl_easy_setopt(c, CURLOPT_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
	curl_easy_setopt(c, CURLOPT_NOPROGRESS, 0L);
	curl_easy_setopt(c, CURLOPT_XFERINFOFUNCTION, xfer_cb);
	return c;
}

bool fetch_retriable_status(long status)
{
	return status == 408 || status == 429 || status == 500 || status == 502 || status == 503 ||
	       status == 504;
}

bool fetch_retriable_curl(CURLcode cc)
{
	switch (cc) {
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_COULDNT_CONNECT:
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_RECV_ERROR:
	case CURLE_SEND_ERROR:
	case CURLE_PARTIAL_FILE:
	case CURLE_GOT_NOTHING:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

static bool retriable(CURLcode cc, long status)
{
	if (cc == CURLE_OK || cc == CURLE_WRITE_ERROR)
		return fetch_retriable_status(status);
	return fetch_retriable_curl(cc);
}

bool fetch_backoff_sleep(const struct moe_hub *h, int attempt, double retry_after)
{
	double d = h->o.backoff * pow(2.0, attempt);
	if (retry_after >= 0)
		d = retry_after;
	if (d > h->o.max_backoff)
		d = h->o.max_backoff;
	double until = moe_now() + d;
	while (moe_now() < until) {
		if (moe_interrupted())
			return false;
		double left = until - moe_now();
		if (left > 0.05)
			left = 0.05;
		if (left > 0) {
			struct timespec ts = {0, (long)(left * 1e9)};
			nanosleep(&ts, NULL);
		}
	}
	return !moe_interrupted();
}

/* Strip query strings from URLs in messages (signed CDN URLs). */
static void url_for_msg(const char *url, char *out, size_t cap)
{
	snprintf(out, cap, "%s", url);
	char *q = strchr(out, '?');
	if (q)
		*q = 0;
}

/* GET url as JSON with retries; *next gets the Link rel="next" URL. */
static int get_json(struct moe_hub *h, const char *url, json_t **out, char **next,
		    struct moe_error *err)
{
	char shown[512];
	url_for_msg(url, shown, sizeof(shown));
	for (int attempt = 0;; attempt++) {
		struct resp r = {.retry_after = -1};
		struct curl_slist *hdrs;
		CURL *c = hub_easy(h, url, &hdrs);
		if (!c)
			return moe_error_set(err, MOE_ENOMEM, "cannot create a curl handle");
		curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, header_cb);
		curl_easy_setopt(c, CURLOPT_HEADERDATA, &r);
		curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, body_cb);
		curl_easy_setopt(c, CURLOPT_WRITEDATA, &r);
		curl_easy_setopt(c, CURLOPT_ACCEPT_ENCODING, "");
		CURLcode cc = curl_easy_perform(c);
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
		curl_easy_cleanup(c);
		curl_slist_free_all(hdrs);
		int rc = 0;
		if (moe_interrupted()) {
			rc = moe_error_set(err, MOE_EINTR, "%s: interrupted", shown);
		} else if (cc == CURLE_OK && r.status == 200) {
			json_error_t je;
			json_t *j = json_loadb(r.body ? r.body : "", r.len, 0, &je);
			if (!j) {
				rc = moe_error_set(err, MOE_EFORMAT, "%s: bad JSON at line %d column %d: %s",
						   shown, je.line, je.column, je.text);
			} else {
				*out = j;
				*next = r.next;
				r.next = NULL;
			}
		} else if (r.too_big) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: answer larger than %zu bytes", shown,
					   MAX_JSON_BODY);
		} else if (retriable(cc, r.status) && attempt < h->o.retries) {
			hub_log(h, 2, "%s: %s; retry %d of %d", shown,
				cc != CURLE_OK ? curl_easy_strerror(cc) : "server error", attempt + 1,
				h->o.retries);
			if (r.status)
				hub_log(h, 2, "%s: HTTP %ld", shown, r.status);
			double ra = r.retry_after;
			free(r.body);
			resp_reset_headers(&r);
			if (!fetch_backoff_sleep(h, attempt, ra))
				return moe_error_set(err, MOE_EINTR, "%s: interrupted", shown);
			continue;
		} else if (cc != CURLE_OK) {
			rc = moe_error_set(err, MOE_ENET, "%s: %s", shown, curl_easy_strerror(cc));
		} else {
			rc = moe_error_set(err, r.status == 404 ? MOE_ENOTFOUND : MOE_ENET,
					   "%s: HTTP %ld%s", shown, r.status,
					   r.status == 401 || r.status == 403 ? " (check HF_TOKEN)" : "");
		}
		free(r.body);
		resp_reset_headers(&r);
		return rc;
	}
}

/* Escape each '/'-separated segment of s for a URL path. */
static char *escape_path(const char *s)
{
	size_t cap = strlen(s) * 3 + 1, o = 0;
	char *out = malloc(cap);
	if (!out)
		return NULL;
	for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
		if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
		    *p == '-' || *p == '_' || *p == '.' || *p == '~' || *p == '/') {
			out[o++] = (char)*p;
		} else {
			snprintf(out + o, 4, "%%%02X", *p);
			o += 3;
		}
	}
	out[o] = 0;
	return out;
}

int moe_hub_revision(struct moe_hub *h, const char *rev, char commit[65], struct moe_error *err)
{
	char *erev = escape_path(rev && *rev ? rev : "main");
	if (!erev)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	/* a revision like refs/convert/parquet is one path segment */
	size_t ul = strlen(h->endpoint) + strlen(h->repo) + strlen(erev) * 3 + 64;
	char *url = malloc(ul);
	if (!url) {
		free(erev);
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	}
	int o = snprintf(url, ul, "%s/api/datasets/%s/revision/", h->endpoint, h->repo);
	for (const char *p = erev; *p; p++)
		o += *p == '/' ? snprintf(url + o, ul - (size_t)o, "%%2F")
			       : snprintf(url + o, ul - (size_t)o, "%c", *p);
	free(erev);
	json_t *j = NULL;
	char *next = NULL;
	int rc = get_json(h, url, &j, &next, err);
	free(next);
	if (rc == 0) {
		const char *sha = NULL;
		json_t *s = json_is_object(j) ? json_object_get(j, "sha") : NULL;
		if (json_is_string(s))
			sha = json_string_value(s);
		size_t sl = sha ? strlen(sha) : 0;
		bool hex = sl >= 7 && sl <= 64;
		for (size_t i = 0; hex && i < sl; i++)
			hex = (sha[i] >= '0' && sha[i] <= '9') || (sha[i] >= 'a' && sha[i] <= 'f');
		if (!hex)
			rc = moe_error_set(err, MOE_EFORMAT, "%s: no commit sha in the answer", url);
		else
			memcpy(commit, sha, sl + 1);
	}
	json_decref(j);
	free(url);
	return rc;
}

bool moe_hub_path_safe(const char *path)
{
	if (!path || !*path || path[0] == '/' || strchr(path, '\\'))
		return false;
	const char *p = path;
	for (;;) {
		const char *e = strchr(p, '/');
		size_t n = e ? (size_t)(e - p) : strlen(p);
		if (n == 0 || (n == 1 && p[0] == '.') || (n == 2 && p[0] == '.' && p[1] == '.'))
			return false;
		for (size_t i = 0; i < n; i++)
			if ((unsigned char)p[i] < 0x20)
				return false;
		if (!e)
			return true;
		p = e + 1;
	}
}

static bool matches(const char *path, const char *const *globs, int n)
{
	for (int i = 0; i < n; i++)
		if (fnmatch(globs[i], path, 0) == 0)
			return true;
	return false;
}

/* The directory part of a glob before its first wildcard ("" if none). */
static size_t glob_dir_len(const char *g)
{
	size_t first = strcspn(g, "*?[\\");
	size_t dir = 0;
	for (size_t i = 0; i < first; i++)
		if (g[i] == '/')
			dir = i;
	return dir;
}

static int cmp_entry(const void *a, const void *b)
{
	return strcmp(((const struct moe_hub_entry *)a)->path, ((const struct moe_hub_entry *)b)->path);
}

void moe_hub_entries_free(struct moe_hub_entry *e, size_t n)
{
	if (!e)
		return;
	for (size_t i = 0; i < n; i++)
		free(e[i].path);
	free(e);
}

static bool is_hex(const char *s, size_t n)
{
	if (strlen(s) != n)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!((s[i] >= '0' && s[i] <= '9') || (s[i] >= 'a' && s[i] <= 'f')))
			return false;
	return true;
}

int moe_hub_list(struct moe_hub *h, const char *commit, const char *const *include, int ninclude,
		 const char *const *exclude, int nexclude, struct moe_hub_entry **out, size_t *nout,
		 struct moe_error *err)
{
	/* list the longest directory shared by every include glob */
	char *prefix = NULL;
	size_t plen = 0;
	if (ninclude > 0) {
		plen = glob_dir_len(include[0]);
		for (int i = 1; i < ninclude; i++) {
			const char *a = include[0], *b = include[i];
			size_t l = glob_dir_len(b), k = 0;
			while (k < l && k < plen && a[k] == b[k])
				k++;
			bool whole = (k == plen || a[k] == '/') && (k == l || b[k] == '/');
			if (!whole)
				while (k > 0 && a[k] != '/')
					k--;
			plen = k;
		}
	}
	prefix = malloc(plen + 1);
	if (!prefix)
		return moe_error_set(err, MOE_ENOMEM, "out of memory");
	memcpy(prefix, include && ninclude ? include[0] : "", plen);
	prefix[plen] = 0;
	char *eprefix = escape_path(prefix);
	size_t ul = strlen(h->endpoint) + strlen(h->repo) + strlen(commit) + strlen(eprefix ? eprefix : "") + 96;
	char *url = malloc(ul);
	struct moe_hub_entry *v = NULL;
	size_t n = 0, cap = 0;
	int rc = 0, pages = 0;
	if (!eprefix || !url) {
		rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
		goto out;
	}
	snprintf(url, ul, "%s/api/datasets/%s/tree/%s%s%s?recursive=true&expand=true", h->endpoint,
		 h->repo, commit, plen ? "/" : "", eprefix);
	while (url) {
		json_t *j = NULL;
		char *next = NULL;
		if ((rc = get_json(h, url, &j, &next, err)))
			goto out;
		if (++pages > 100000) {
			json_decref(j);
			free(next);
			rc = moe_error_set(err, MOE_EFORMAT, "%s: too many listing pages", h->repo);
			goto out;
		}
		if (!json_is_array(j)) {
			json_decref(j);
			free(next);
			rc = moe_error_set(err, MOE_EFORMAT, "%s: tree listing is not a JSON array", url);
			goto out;
		}
		size_t i;
		json_t *it;
		json_array_foreach(j, i, it) {
			const char *type = json_string_value(json_object_get(it, "type"));
			const char *path = json_string_value(json_object_get(it, "path"));
			if (!type || strcmp(type, "file") != 0)
				continue;
			if (!path) {
				rc = moe_error_set(err, MOE_EFORMAT, "%s: listing entry %zu has no path", url, i);
				break;
			}
			if (ninclude > 0 && !matches(path, include, ninclude))
				continue;
			if (nexclude > 0 && matches(path, exclude, nexclude))
				continue;
			if (!moe_hub_path_safe(path)) {
				rc = moe_error_set(err, MOE_EFORMAT,
						   "%s: refusing unsafe path '%s' in the listing", h->repo, path);
				break;
			}
			json_t *js = json_object_get(it, "size");
			json_t *lfs = json_object_get(it, "lfs");
			const char *oid = json_string_value(json_object_get(it, "oid"));
			if (!json_is_integer(js) || json_integer_value(js) < 0) {
				rc = moe_error_set(err, MOE_EFORMAT, "%s: '%s' has no valid size", h->repo, path);
				break;
			}
			if (n == cap) {
				cap = cap ? cap * 2 : 64;
				struct moe_hub_entry *nv = realloc(v, cap * sizeof(*v));
				if (!nv) {
					rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
					break;
				}
				v = nv;
			}
			struct moe_hub_entry *e = &v[n];
			memset(e, 0, sizeof(*e));
			e->path = strdup(path);
			if (!e->path) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				break;
			}
			n++;
			e->size = (uint64_t)json_integer_value(js);
			if (oid && strlen(oid) < sizeof(e->oid))
				strcpy(e->oid, oid);
			if (json_is_object(lfs)) {
				const char *sha = json_string_value(json_object_get(lfs, "oid"));
				json_t *ls = json_object_get(lfs, "size");
				if (!sha || !is_hex(sha, 64)) {
					rc = moe_error_set(err, MOE_EFORMAT, "%s: '%s' has a bad LFS sha256",
							   h->repo, path);
					break;
				}
				if (json_is_integer(ls) && (uint64_t)json_integer_value(ls) != e->size) {
					rc = moe_error_set(err, MOE_EFORMAT,
							   "%s: '%s': LFS size differs from the file size",
							   h->repo, path);
					break;
				}
				strcpy(e->sha256, sha);
			}
		}
		json_decref(j);
		if (rc) {
			free(next);
			goto out;
		}
		free(url);
		url = NULL;
		if (next) {
			/* follow the link's path and query on our endpoint: the token
			 * only ever goes there (mirrors may answer with the Hub's host) */
			const char *pq = next;
			size_t el = strlen(h->endpoint);
			if (strncmp(next, h->endpoint, el) == 0 && (next[el] == '/' || next[el] == '?')) {
				pq = next + el;
			} else if (strncmp(next, "http://", 7) == 0 || strncmp(next, "https://", 8) == 0) {
				pq = strchr(strstr(next, "://") + 3, '/');
				if (!pq) {
					rc = moe_error_set(err, MOE_EFORMAT, "%s: bad Link header '%s'", h->repo, next);
					free(next);
					goto out;
				}
			} else if (next[0] != '/') {
				rc = moe_error_set(err, MOE_EFORMAT, "%s: bad Link header '%s'", h->repo, next);
				free(next);
				goto out;
			}
			size_t l = el + strlen(pq) + 1;
			url = malloc(l);
			if (url)
				snprintf(url, l, "%s%s", h->endpoint, pq);
			free(next);
			if (!url) {
				rc = moe_error_set(err, MOE_ENOMEM, "out of memory");
				goto out;
			}
		}
	}
	if (n > 1)
		qsort(v, n, sizeof(*v), cmp_entry);
	for (size_t i = 1; i < n; i++)
		if (strcmp(v[i - 1].path, v[i].path) == 0) {
			rc = moe_error_set(err, MOE_EFORMAT, "%s: '%s' listed twice", h->repo, v[i].path);
			goto out;
		}
out:
	free(url);
	free(prefix);
	free(eprefix);
	if (rc) {
		moe_hub_entries_free(v, n);
		return rc;
	}
	*out = v;
	*nout = n;
	return 0;
}
