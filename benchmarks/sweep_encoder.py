"""Choose the encoder baseline's settings on dev data only (never test).

Trains on the demo project's 300 labelled training sentences with the settings given as
``key=value`` arguments, records the demo dev F1 after every epoch (exact-span F1) and, at the
end, micro/macro F1 (:func:`core.evaluation.scoring.score`, as the app scores runs) with Viterbi
and with argmax decoding on the demo dev split (60 sentences) and on a larger dev sample: the
next ``--dev-extra`` sentences of at most 40 tokens of BC5CDR's ``devel.tsv`` (none of them in
the demo dev split). Appends a JSON line (all settings, not only those given) to ``--out``;
training seconds there were measured on a shared, often overloaded 2-core machine and are not
comparable between rows.

    NERLAB_HOME=$(mktemp -d) .venv/bin/python benchmarks/sweep_encoder.py epochs=10 lr=1e-4
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_encoder import ROOT, demo_project, more_sentences, score  # noqa: E402

from core.prediction import encoder, encoder_train  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("settings", nargs="*", help="key=value encoder settings")
    parser.add_argument("--dev-extra", type=int, default=500)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "encoder_sweep.jsonl"))
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    settings = encoder.EncoderSettings.from_dict(dict(kv.split("=", 1) for kv in args.settings))
    _db, _project, splits, labels = demo_project()
    dev2 = more_sentences("devel.tsv", splits["dev"], args.dev_extra)
    started = time.perf_counter()
    bundle = encoder_train.train_encoder(splits["train"], splits["dev"], settings, log=print,
                                         labels=labels)
    seconds = time.perf_counter() - started
    full = settings.to_dict()
    full.pop("decode")  # both decoders are scored below
    row = {"tag": args.tag, "settings": full, "train_s": round(seconds, 1),
           "dev_f1_per_epoch": [round(f, 3) for f in bundle.info["dev_f1"]],
           "best_epoch": bundle.info.get("best_epoch")}
    for name, data in (("dev", splits["dev"]), (f"dev{len(dev2)}", dev2)):
        if not data:
            continue
        for decode in encoder.DECODERS:
            bundle.settings.decode = decode
            pred = [p.span_list for p in encoder.predict_encoder(bundle, data)]
            row[f"{name}_{decode}"] = score(data, pred, labels)
    print(json.dumps(row))
    with open(args.out, "a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
