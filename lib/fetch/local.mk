# lib/fetch: (to be filled by its owner)
