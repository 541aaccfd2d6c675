"""Ray cluster files and the spot supervisor; not built yet."""
