"""Reads hone's feedback tables with pyarrow (a reader that is not hone) and prints, per
table, its row count, column names and hone's key-value metadata as JSON.

Usage: python3 tests/read_tables.py FEEDBACK_DIR REJECTS_PARQUET
"""
import json
import sys
from pathlib import Path

import pyarrow.parquet as pq


def describe(path):
    table = pq.read_table(path)
    file_meta = pq.ParquetFile(path).metadata.metadata or {}
    meta = {k.decode(): v.decode() for k, v in file_meta.items() if k.decode().startswith("hone.")}
    return {"rows": table.num_rows, "columns": table.column_names, "metadata": meta}


feedback_dir, rejects = Path(sys.argv[1]), Path(sys.argv[2])
report = {name: describe(feedback_dir / f"{name}.parquet") for name in ["comparisons", "rankings", "scores", "flags"]}
report["rejects"] = describe(rejects)
print(json.dumps(report))
