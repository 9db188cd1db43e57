"""The generic training loop, logging, checkpoints and rank awareness."""
