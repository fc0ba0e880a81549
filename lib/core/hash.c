/* XXH3-64 from Debian's libxxhash, inlined (header only, no runtime library). */
#define XXH_INLINE_ALL
#include <xxhash.h>

#include "core/core.h"

#include <stdlib.h>

struct moe_hash64_state {
	XXH3_state_t st;
};

uint64_t moe_hash64(const void *data, size_t len)
{
	return XXH3_64bits(data, len);
}

struct moe_hash64_state *moe_hash64_new(void)
{
	struct moe_hash64_state *s = aligned_alloc(64, (sizeof *s + 63) / 64 * 64);
	if (s)
		XXH3_64bits_reset(&s->st);
	return s;
}

void moe_hash64_update(struct moe_hash64_state *s, const void *data, size_t len)
{
	XXH3_64bits_update(&s->st, data, len);
}

uint64_t moe_hash64_digest(const struct moe_hash64_state *s)
{
	return XXH3_64bits_digest(&s->st);
}

void moe_hash64_free(struct moe_hash64_state *s)
{
	free(s);
}
