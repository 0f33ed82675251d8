"""Where `splat.batch.fit_many` can run its per-file work besides this machine's processes."""
