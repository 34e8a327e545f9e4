"""`python -m pipeline ...` is the same as the `mtrec` console script (and what torchrun runs)."""
from pipeline.cli import main

if __name__ == "__main__":
    main()
