"""Rebuild assets/demo/ from ../shared/data/bc5cdr (the first sentences of each file, up to 40 tokens).

Run from the checkout: python scripts/make_demo_assets.py [BC5CDR_DIR]
"""

import shutil
import sys
from pathlib import Path

SRC = Path(sys.argv[1] if len(sys.argv) > 1 else "../shared/data/bc5cdr")
DST = Path("assets/demo")
MAX_TOKENS = 40


def sentences(path: Path):
    block = []
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.strip():
            block.append(line)
        elif block:
            yield block
            block = []
    if block:
        yield block


def take(path: Path, n: int, skip: int = 0):
    short = [b for b in sentences(path) if len(b) <= MAX_TOKENS]
    return short[skip : skip + n]


def write_conll(blocks, out: Path):
    out.write_text("".join("\n".join(b) + "\n\n" for b in blocks), encoding="utf-8")


DST.mkdir(parents=True, exist_ok=True)
write_conll(take(SRC / "train.tsv", 300), DST / "train.conll")
unlabelled = take(SRC / "train.tsv", 40, skip=300)
(DST / "unlabelled.txt").write_text(
    "".join(" ".join(line.split("\t")[0] for line in b) + "\n" for b in unlabelled), encoding="utf-8"
)
write_conll(take(SRC / "devel.tsv", 60), DST / "dev.conll")
write_conll(take(SRC / "test.tsv", 150), DST / "test.conll")
shutil.copy(SRC / "LICENSE", DST / "LICENSE")
