# tests/train: (to be filled by its owner)
