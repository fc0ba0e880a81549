# tests/routes: (to be filled by its owner)
