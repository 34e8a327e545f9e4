"""The pinned torch / fbgemm / torchrec triple: version check and a smoke test.

`python -m pipeline.stack` runs after every install (scripts/bootstrap.sh) and in the Docker build.
A wrong pairing shows up at `import fbgemm_gpu` as an `undefined symbol` error; this turns it into
a message that names the pairing.
"""
from __future__ import annotations

import importlib.metadata as md

# torchrec's version equals fbgemm's; fbgemm 1.8 is built against torch 2.13 (docs/STACK.md §1).
PINNED = {"torch": "2.13.0", "torchrec": "1.8.0", "fbgemm": "1.8.0"}


def installed_fbgemm() -> tuple[str, str]:
    """(distribution name, version) of the installed fbgemm: the CPU or the CUDA build."""
    for dist in ("fbgemm-gpu-cpu", "fbgemm-gpu"):
        try:
            return dist, md.version(dist)
        except md.PackageNotFoundError:
            continue
    raise RuntimeError("neither fbgemm-gpu-cpu nor fbgemm-gpu is installed; run `make setup`")


def check_stack() -> dict[str, str]:
    """Import the triple, assert the pinned versions and run one unsharded EBC forward on CPU."""
    import torch

    dist, fbgemm_version = installed_fbgemm()
    found = {"torch": torch.__version__.split("+")[0], "fbgemm": fbgemm_version.split("+")[0]}
    try:
        import fbgemm_gpu  # noqa: F401
        import torchrec
    except (ImportError, OSError) as e:
        raise RuntimeError(
            f"importing fbgemm_gpu/torchrec failed ({e}); torch {torch.__version__} needs "
            f"{dist}=={PINNED['fbgemm']} (the torch↔fbgemm pairing is strict)"
        ) from e
    found["torchrec"] = md.version("torchrec")
    wrong = {k: v for k, v in found.items() if v != PINNED[k]}
    if wrong:
        raise RuntimeError(f"unpinned versions {wrong}; expected {PINNED}")
    ebc = torchrec.EmbeddingBagCollection(
        tables=[torchrec.EmbeddingBagConfig(name="t", embedding_dim=4, num_embeddings=10, feature_names=["f"])]
    )
    kjt = torchrec.KeyedJaggedTensor.from_lengths_sync(
        keys=["f"], values=torch.tensor([1, 2, 3]), lengths=torch.tensor([2, 1])
    )
    assert ebc(kjt).values().shape == (2, 4)
    return {**found, "fbgemm_dist": dist}


if __name__ == "__main__":
    import sys

    from pipeline.cli.logs import silence_benign

    silence_benign()  # the set-up's last step shows one line, not TorchRec's import-time fx warning
    sys.stdout.write(f"stack ok: {check_stack()}\n")
