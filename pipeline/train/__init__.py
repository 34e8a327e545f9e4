"""Training: process group, sharding plan, optimisers, checkpoints, and the trainer loop."""
