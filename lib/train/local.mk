# lib/train: (to be filled by its owner)
