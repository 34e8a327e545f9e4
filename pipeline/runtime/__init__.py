"""The runtime layer shared by training and evaluation: process group, sharding plan, checkpoints,
the inference loop and atomic file output. Neither `pipeline.train` nor `pipeline.eval` imports
the other; both build on this package."""
