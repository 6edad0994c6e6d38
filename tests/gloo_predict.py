"""One process of a sharded prediction, for tests/test_distributed.py (not a test itself).

``python tests/gloo_predict.py rounds N STEP [STOP_AFTER] OUT`` deals N numbers over the processes with a
stand-in predictor; ``python tests/gloo_predict.py run RUN_ID BATCH OUT`` predicts a zero-shot run's
dev and test sentences with the bundled model. Started with RANK, WORLD_SIZE, MASTER_ADDR and
MASTER_PORT set (or without: one process); rank 0 writes what it saw to OUT as JSON.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from core.data.db import get_db  # noqa: E402
from core.data.runs import get_run  # noqa: E402
from core.errors import StopRequested  # noqa: E402
from core.jobs.worker import WorkerContext  # noqa: E402
from core.prediction import baselines, predict  # noqa: E402
from core.training import distributed  # noqa: E402


def rounds(group, n: int, step: int, stop_at: int) -> dict:
    seen: list[int] = []
    chunks: list[list[int]] = []
    did: list[int] = []

    def fake(mine: list[int]) -> list[dict]:
        did.extend(mine)
        return [{"sentence_id": x, "rank": group.rank} for x in mine]

    calls = {"n": 0}

    def should_stop() -> bool:
        calls["n"] += 1
        return group.rank == group.world - 1 and calls["n"] > stop_at > 0

    stopped = False
    try:
        for chunk, rows in predict.sharded_rounds(group, list(range(n)), step, fake, should_stop):
            chunks.append(chunk)
            seen += [r["sentence_id"] for r in rows]
    except StopRequested:
        stopped = True
    return {"seen": seen, "chunks": chunks, "did": did, "stopped": stopped}


def main() -> None:
    mode, arg, step, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), Path(sys.argv[-1])
    group = distributed.init()
    if mode == "rounds":
        result = rounds(group, arg, step, int(sys.argv[4]) if len(sys.argv) > 5 else 0)
    else:
        from core.models import loader

        db = get_db()
        ctx = WorkerContext(db, get_run(db, arg), group)
        model, tokenizer = loader.load_model(ctx.run.get("base_model")
                                              or ctx.run["config"]["base_model"])
        predict.predict_run(ctx, model, tokenizer, baselines.run_plan(db, ctx.run),
                            predict.PredictSettings(batch_size=step))
        result = {"rank": group.rank}
    gathered = group.gather_object(result)
    if group.main:
        out.write_text(json.dumps(gathered))
    group.close()


if __name__ == "__main__":
    main()
