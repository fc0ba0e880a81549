/* lib/fetch internals shared by hub.c and download.c. */
#ifndef MOE_FETCH_INTERNAL_H
#define MOE_FETCH_INTERNAL_H

#include <pthread.h>

#include "fetch/fetch.h"

struct moe_hub {
	char *endpoint; /* no trailing slash */
	char *auth;     /* "Authorization: Bearer ..." or NULL; never printed */
	char *repo;
	struct moe_hub_opts o;
	pthread_mutex_t lock; /* serialises the log callback */
};

#endif
