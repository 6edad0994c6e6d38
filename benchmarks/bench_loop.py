"""The labelling loop, simulated with gold as the oracle, and the speed of using a trained model.

    .venv/bin/python benchmarks/bench_loop.py [--sentences 200] [--every 10] [--llm-n 24]
                                              [--no-browser]

1. Edits per sentence: an annotator labels ``--sentences`` sentences in order, from scratch
   (every gold span is an edit) or correcting the automatic CRF's suggestions (retrained, as on
   the Label page, after every ``--every`` newly labelled sentences; the first ones have no
   model). Edits = spans added + removed + changed (:func:`core.data.suggestions.compare`).
2. Active learning: the CRF's F1 on the demo's test split (and on 1,000 sentences of BC5CDR's own
   test file, steadier) after 25 / 50 / 100 / 200 labelled sentences, chosen in order, or least
   confident first (the mean marginal tag probability of the CRF retrained every ``--every``
   sentences; the first ``--every`` in order for both).
3. ``nerlab predict`` speed: sentences/s of a CRF run and of the bundled LLM (a zero-shot run:
   batched, constrained), the model loaded once (the Python API), and the CLI's wall time.
4. Accept → next suggestion on the Label page, in a real Chromium against ``streamlit run``:
   seconds from pressing Enter to the next sentence drawn with its dashed suggestions.

The pool is BC5CDR's training file (``../shared/data/bc5cdr/train.tsv``) when it is there, else
the demo's training split. Prints a table per part; figures, not assertions.
"""

from __future__ import annotations

import argparse
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from core.data import io
from core.data.spans import Example, spans_to_bio
from core.data.suggestions import Outcome, compare
from core.evaluation.scoring import score_tags
from core.prediction import baselines
from core.prediction.crf import crf_predict, crf_predict_details, train_crf

ROOT = Path(__file__).resolve().parent.parent
SHARED = ROOT.parent / "shared" / "data" / "bc5cdr"
CHECKPOINTS = (25, 50, 100, 200)


def _examples(path: Path, start_id: int = 0) -> list[Example]:
    records = io.parse_conll(path.read_text(encoding="utf-8"), path.name)
    return [Example(id=start_id + i, text=r.text, spans=tuple(r.spans),
                    tokens=tuple(tuple(t) for t in r.tokens) if r.tokens else None)
            for i, r in enumerate(records) if r.text.strip()]


def _crf(train: list[Example]):
    cfg = baselines.settings("crf")
    return train_crf(train, c1=cfg["c1"], c2=cfg["c2"], max_iterations=cfg["max_iterations"])


def _f1(crf, test: list[Example]) -> tuple[float, float]:
    pred = crf_predict(crf, test)
    gold_tags = [spans_to_bio(e.token_offsets(), e.spans) for e in test]
    pred_tags = [spans_to_bio(e.token_offsets(), p) for e, p in zip(test, pred, strict=True)]
    s = score_tags(gold_tags, pred_tags, bootstrap=0)
    return s["micro"]["f1"], s["macro"]["f1"]


def edits(pool: list[Example], n: int, every: int) -> dict:
    """Edits to reach gold from scratch vs from the automatic CRF's suggestions."""
    scratch = 0
    assisted = Outcome()
    crf = None
    labelled: list[Example] = []
    suggest_s: list[float] = []
    for ex in pool[:n]:
        scratch += len(ex.spans)
        if crf is None:
            assisted.add(compare([], ex.spans))
        else:
            t = time.perf_counter()
            (spans,) = crf_predict(crf, [ex])
            suggest_s.append(time.perf_counter() - t)
            assisted.add(compare(spans, ex.spans))
        labelled.append(ex)
        if len(labelled) % every == 0:
            crf = _crf(labelled)
    return {"sentences": n, "gold_spans": scratch, "scratch_edits": scratch,
            "assisted_edits": assisted.edits, **{f"assisted_{k}": v for k, v in
                                                  assisted.to_dict().items()},
            "fewer": 1 - assisted.edits / max(1, scratch),
            "suggest_ms": 1000 * statistics.median(suggest_s) if suggest_s else None}


def curve(pool: list[Example], tests: dict[str, list[Example]], order: str, every: int,
          seed: int = 0) -> list[dict]:
    """F1 on each test set after each checkpoint, labelling in ``order``."""
    rest = list(pool)
    if order == "random":
        random.Random(seed).shuffle(rest)
    chosen, rest = rest[:every], rest[every:]
    out = []
    while len(chosen) < CHECKPOINTS[-1]:
        # The next batch: ``every`` sentences, or fewer to land on a checkpoint.
        n = min(every, next(c for c in CHECKPOINTS if c > len(chosen)) - len(chosen))
        if order == "least-confident":
            conf = [c for _s, _c, c in crf_predict_details(_crf(chosen), rest)]
            take = set(sorted(range(len(rest)), key=lambda i: conf[i])[:n])
            chosen += [rest[i] for i in sorted(take, key=lambda i: conf[i])]
            rest = [ex for i, ex in enumerate(rest) if i not in take]
        else:
            chosen, rest = chosen + rest[:n], rest[n:]
        if len(chosen) in CHECKPOINTS:
            crf = _crf(chosen)
            row = {"order": order, "labelled": len(chosen)}
            for name, test in tests.items():
                row[name] = _f1(crf, test)
            out.append(row)
    return out


def _nerlab(home: Path, *args: str, stdin: str | None = None) -> tuple[str, float]:
    t = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "core.cli", *args], cwd=ROOT, input=stdin,
                          env={**os.environ, "NERLAB_HOME": str(home)}, capture_output=True,
                          text=True, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"nerlab {' '.join(args)} failed:\n{proc.stderr}")
    return proc.stdout, time.perf_counter() - t


def _run_id(home: Path, name: str) -> str:
    from core.data.db import get_db

    row = get_db(home / "nerlab.db").execute("SELECT id FROM runs WHERE name = ?", [name]).fetchone()
    return str(row[0])


def predict_speed(home: Path, texts: list[str], llm_n: int) -> list[dict]:
    from core.prediction.api import load

    _nerlab(home, "baseline", "BC5CDR demo", "--kind", "crf", "--run-name", "bench-crf", "--wait")
    _nerlab(home, "baseline", "BC5CDR demo", "--kind", "zero-shot", "--splits", "dev", "--limit",
            "1", "--run-name", "bench-llm", "--wait")
    rows = []
    for name, n in (("bench-crf", len(texts)), ("bench-llm", llm_n)):
        rid = _run_id(home, name)
        src = home / f"{name}.txt"
        src.write_text("\n".join(texts[:n]) + "\n", encoding="utf-8")
        _out, wall = _nerlab(home, "predict", rid, str(src), "--out", str(home / f"{name}.jsonl"))
        t = time.perf_counter()
        model = load(home / "runs" / rid)
        load_s = time.perf_counter() - t
        t = time.perf_counter()
        found = model.predict(texts[:n])
        s = time.perf_counter() - t
        rows.append({"model": "CRF" if name == "bench-crf" else "SmolLM2-135M zero-shot "
                     "(batched, constrained)", "sentences": n, "sentences_per_s": n / s,
                     "load_s": load_s, "cli_wall_s": wall,
                     "entities": sum(len(f) for f in found)})
    return rows


def accept_to_next(home: Path, n: int) -> list[float]:
    """Seconds from Enter to the next sentence drawn with its suggestions, in a real browser."""
    sys.path.insert(0, str(ROOT / "tests" / "browser"))
    from conftest import CHROMIUM, CHROMIUM_ARGS, _free_port, _stop, _wait_until_up
    from playwright.sync_api import sync_playwright

    from core.data.db import get_db

    _nerlab(home, "suggest", "BC5CDR demo", "--run", "bench-crf", "--wait")
    db = get_db(home / "nerlab.db")
    first = db.execute("SELECT s.id FROM sentences s JOIN projects p ON p.id = s.project_id WHERE"
                       " p.name = 'BC5CDR demo' AND s.status = 'unlabelled' ORDER BY s.position"
                       ).fetchone()[0]
    port = _free_port()
    log = home / "streamlit.log"
    env = {**os.environ, "NERLAB_HOME": str(home), "STREAMLIT_SERVER_HEADLESS": "true"}
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
                                 "--server.port", str(port), "--server.address", "127.0.0.1",
                                 "--browser.gatherUsageStats", "false"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    times = []
    try:
        _wait_until_up(url, proc, log)
        with sync_playwright() as pw:
            browser = pw.chromium.launch(executable_path=CHROMIUM, headless=True,
                                         args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.goto(f"{url}/Label?sentence={first}", wait_until="domcontentloaded")
            page.wait_for_selector(".nl-text .nl-tok", timeout=120_000)
            time.sleep(2)
            for _ in range(n + 1):
                current = page.locator(".nl-root").get_attribute("data-sentence")
                t = time.perf_counter()
                page.keyboard.press("Enter")
                # The widget lives in a shadow root: Playwright's locators reach into it.
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    root = page.locator(".nl-root")
                    if (root.get_attribute("data-sentence") != current
                            and "suggest" in page.locator(".nl-meta").inner_text()):
                        break
                    time.sleep(0.01)
                else:
                    raise SystemExit("the next sentence's suggestions did not appear in 60 s")
                times.append(time.perf_counter() - t)
            browser.close()
    finally:
        _stop(proc)
    return times[1:]  # the first includes the page's warm-up


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=200)
    parser.add_argument("--every", type=int, default=10, help="retrain the CRF after N sentences")
    parser.add_argument("--pool", type=int, default=1000, help="sentences to choose from")
    parser.add_argument("--llm-n", type=int, default=24, help="sentences the LLM predicts")
    parser.add_argument("--accepts", type=int, default=10, help="Enter presses timed")
    parser.add_argument("--no-browser", action="store_true")
    parser.add_argument("--no-predict", action="store_true")
    args = parser.parse_args()

    home = Path(os.environ.setdefault("NERLAB_HOME", tempfile.mkdtemp(prefix="nerlab-bench-")))
    cached = ROOT / ".pytest_cache" / "nerlab-models"
    if cached.is_dir():
        os.environ.setdefault("NERLAB_MODELS_DIR", str(cached))
    demo = ROOT / "assets" / "demo"
    demo_test = _examples(demo / "test.conll")
    demo_texts = {e.text for e in demo_test}
    if (SHARED / "train.tsv").is_file():
        pool = [e for e in _examples(SHARED / "train.tsv") if e.text not in demo_texts]
        pool_name = "BC5CDR train.tsv"
        big_test = [e for e in _examples(SHARED / "test.tsv", 10**6)
                    if e.text not in demo_texts][:1000]
    else:
        pool, pool_name, big_test = _examples(demo / "train.conll"), "demo train", []
    pool = pool[:args.pool]
    tests = {"demo test": demo_test, **({"BC5CDR test 1k": big_test} if big_test else {})}
    print(f"Pool: {len(pool)} sentences of {pool_name}; test sets: "
          + ", ".join(f"{k} ({len(v)})" for k, v in tests.items()))

    t = time.perf_counter()
    e = edits(pool, args.sentences, args.every)
    print(f"\n## Edits to reach gold over {e['sentences']} sentences ({time.perf_counter() - t:.0f} s)")
    print("| | edits | per sentence |\n|---|---|---|")
    print(f"| from scratch | {e['scratch_edits']} | {e['scratch_edits'] / e['sentences']:.2f} |")
    print(f"| automatic CRF suggestions (every {args.every}) | {e['assisted_edits']} | "
          f"{e['assisted_edits'] / e['sentences']:.2f} |")
    print(f"Fewer edits: {100 * e['fewer']:.1f}% (target >= 40%). Suggestions: "
          f"{e['assisted_suggested']} made, {e['assisted_accepted']} accepted as they were, "
          f"{e['assisted_changed']} changed, {e['assisted_removed']} removed, "
          f"{e['assisted_added']} spans added; CRF suggestion {e['suggest_ms']:.1f} ms a sentence.")

    t = time.perf_counter()
    curves = {o: curve(pool, tests, o, args.every) for o in ("in-order", "least-confident")}
    rnd = [curve(pool, tests, "random", args.every, seed) for seed in range(3)]
    print(f"\n## CRF F1 (micro / macro) by labelled sentences ({time.perf_counter() - t:.0f} s)")
    names = list(tests)
    print("| labelled | " + " | ".join(f"{o} · {n}" for n in names for o in
                                        ("in order", "least confident", "random (3 seeds)"))
          + " |")
    print("|---" * (1 + 3 * len(names)) + "|")
    ok = True
    for i, point in enumerate(CHECKPOINTS):
        cells = []
        for n in names:
            a, b = curves["in-order"][i][n], curves["least-confident"][i][n]
            r = (statistics.mean(c[i][n][0] for c in rnd), statistics.mean(c[i][n][1] for c in rnd))
            ok &= b[0] >= a[0] if n == "demo test" else True
            cells += [f"{a[0]:.3f} / {a[1]:.3f}", f"{b[0]:.3f} / {b[1]:.3f}",
                      f"{r[0]:.3f} / {r[1]:.3f}"]
        print(f"| {point} | " + " | ".join(cells) + " |")
    print(f"Least confident first at or above in order on demo test micro-F1 at every point: {ok}")

    if not args.no_predict:
        from core.data.db import get_db
        from core.data.demo import ensure_demo_project

        ensure_demo_project(get_db(home / "nerlab.db"))
        texts = [ex.text for ex in (big_test or demo_test)][:200]
        print("\n## nerlab predict")
        print("| model | sentences | sentences/s (loaded) | load s | CLI wall s | entities |")
        print("|---|---|---|---|---|---|")
        for row in predict_speed(home, texts, args.llm_n):
            print(f"| {row['model']} | {row['sentences']} | {row['sentences_per_s']:.2f} | "
                  f"{row['load_s']:.1f} | {row['cli_wall_s']:.1f} | {row['entities']} |")
        if not args.no_browser and Path("/usr/bin/chromium").exists():
            times = accept_to_next(home, args.accepts)
            print(f"\n## Accept -> next sentence with its CRF suggestions (real browser, "
                  f"{len(times)} presses): median {statistics.median(times):.2f} s, max "
                  f"{max(times):.2f} s (target < 1 s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
