# tests/data: (to be filled by its owner)
