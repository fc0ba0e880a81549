# tests/model: (to be filled by its owner)
