"""Training the amortized encoder: data generators, targets and the training loop.

Nothing here is imported by `splat fit`; `splat encoder train` and `make encoder` use it.
"""
