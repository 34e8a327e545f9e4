"""mtrec modelling: sparse arch, multi-task backbones, task towers, mutual learning, losses.

Pure modelling: no file I/O, no process groups. The training and evaluation code in `pipeline/`
builds these modules from typed configs and wraps them in TorchRec's DistributedModelParallel.
"""
