"""Training: the trainer (steps, optimisers, RNG, checkpoints, resume), its stage loop,
batches, losses, sample grids and experiment tracking."""
