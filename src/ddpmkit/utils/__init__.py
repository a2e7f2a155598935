"""Small shared helpers that every layer may use: atomic file I/O, the cache root, image grids."""
