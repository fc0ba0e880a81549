/* lib/fetch internals shared by hub.c and download.c. */
#ifndef MOE_FETCH_INTERNAL_H
#define MOE_FETCH_INTERNAL_H

#include <pthread.h>

#include <curl/curl.h>

#include "fetch/fetch.h"

struct moe_hub {
	char *endpoint; /* no trailing slash */
	char *auth;     /* "Authorization: Bearer ..." or NULL; never printed */
	char *repo;
	struct moe_hub_opts o;
	pthread_mutex_t lock; /* serialises the log callback */
};

/* Retry policy shared by the API calls (hub.c) and the downloads
 * (download.c): HTTP statuses and transfer errors worth another try, and the
 * exponential backoff (capped; Retry-After wins when >= 0).  The sleep
 * returns false when interrupted by a signal. */
bool fetch_retriable_status(long status);
bool fetch_retriable_curl(CURLcode cc);
bool fetch_backoff_sleep(const struct moe_hub *h, int attempt, double retry_after);

/* Seconds to wait from a "RateLimit: "api";r=0;t=55" header value, or -1. */
double fetch_ratelimit_wait(const char *value);

/* SHA-1 for git blob ids (sha1.c). */
struct fetch_sha1 {
	uint32_t h[5];
	uint64_t len;
	uint8_t buf[64];
	size_t n;
};
void fetch_sha1_init(struct fetch_sha1 *s);
void fetch_sha1_update(struct fetch_sha1 *s, const void *data, size_t len);
void fetch_sha1_final(struct fetch_sha1 *s, uint8_t out[20]);

#endif
