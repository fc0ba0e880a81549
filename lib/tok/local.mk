# lib/tok: (to be filled by its owner)
