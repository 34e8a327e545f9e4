"""The Parquet data layer (contract and reference: docs/DATA.md).

- schema.py          schema.yaml <-> DatasetSchema; SplitWriter; the id hash; DataError
- units.py           (file, row group) work units and their assignment to ranks x workers
- arrow_to_batch.py  column checks, vectorised validation, Arrow -> MultiTaskBatch
- reader.py          ParquetBatchStream (IterableDataset), make_loader, padding_batch
- atomic.py          write-to-temp-then-rename helpers for files and directories
- census.py          `mtrec prepare census`
- synthetic.py       `mtrec prepare synthetic`
- criteo_like.py     `mtrec prepare synthetic --preset criteo-like` (the scale workload, known oracle)

Modules are imported directly (nothing is re-exported here) so that `prepare` does not import torch.
"""
