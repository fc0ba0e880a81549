# lib/parquet: (to be filled by its owner)
