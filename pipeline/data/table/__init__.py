"""`mtrec prepare table`: any CSV/TSV/Parquet/JSON-lines log + a YAML spec -> an mtrec dataset.

spec.py (the spec's dataclasses and checks), readers.py (streaming readers), values.py (raw values
-> numbers/text), hashing.py (the stable string hash), transforms.py (fitters and encoders),
labels.py (label/mask/weight rules), splits.py, keys.py, rows.py (per-batch decisions shared by both
passes), fitted.py (pass 1 and the saved statistics), summary.py, importer.py (the driver).
docs/DATA.md "Bring your own data" is the user's reference.
"""
