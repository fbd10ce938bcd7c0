"""Draw the book's GLUE sample from the official files: ``python make_sample.py DATA_DIR`` (e.g. ../shared/data).

For SST-2, CoLA and RTE: 96 train and 64 dev lines drawn at random (``random.Random(0)``), written byte for byte
as they are in the official file, header (where the file has one) first, so the sample has GLUE's exact layout.
"""

import random
import sys
from pathlib import Path

SIZES = {"train": 96, "dev": 64}
HEADERLESS = {"cola"}

source = Path(sys.argv[1]) / "glue"
for task in ("sst2", "cola", "rte"):
    for split, size in SIZES.items():
        lines = (source / task / f"{split}.tsv").read_bytes().split(b"\n")[:-1]
        header, rows = ([], lines) if task in HEADERLESS else (lines[:1], lines[1:])
        drawn = random.Random(0).sample(rows, size)
        out = Path(__file__).parent / "glue" / task / f"{split}.tsv"
        out.write_bytes(b"\n".join(header + drawn) + b"\n")
