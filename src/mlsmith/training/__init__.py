"""The generic training loop and its parts: precision, optimizers, checkpoints, callbacks."""
