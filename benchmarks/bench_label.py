"""How long the Label page's server side takes with a 10,000-sentence project (target: well under 0.5 s).

Builds a temporary project from BC5CDR (``../shared/data/bc5cdr``, else the demo slice repeated)
with 10,000 sentences, about 60% of them labelled, then measures:

* the page's core calls (progress, queue count/rank/first, widget data) timed directly;
* the whole page script under Streamlit's AppTest (one rerun = what a click or a saved span costs
  on the server), for the default queue, a text-search filter, and an "accept" click;
* for comparison, one rerun of the Data page.

Run: ``.venv/bin/python benchmarks/bench_label.py [--sentences 10000] [--repeat 20]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from core.data import io, label_session, labeling, projects

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def _source_records(n: int):

    shared = ROOT.parent / "shared" / "data" / "bc5cdr"
    files = sorted(shared.glob("*.tsv")) if shared.is_dir() else []
    if not files:
        files = [ROOT / "assets" / "demo" / f for f in ("train.conll", "dev.conll", "test.conll")]
    records = []
    for path in files:
        records += io.parse_conll(path.read_text(encoding="utf-8"), path.name)
    out = []
    seen: set[str] = set()
    copy = 0
    while len(out) < n:
        for rec in records:
            if len(out) >= n:
                break
            if copy:  # repeat the corpus with a marker so de-duplication keeps every copy
                rec = type(rec)(text=f"{rec.text} [{copy}]", spans=rec.spans, labelled=rec.labelled)
            key = " ".join(rec.text.split())
            if key not in seen:
                seen.add(key)
                out.append(rec)
        copy += 1
    return out


def _build(n: int) -> int:
    from core.data.db import get_db

    db = get_db()
    project = projects.create_project(db, "Bench 10k")
    records = _source_records(n)
    for i, rec in enumerate(records):
        rec.labelled = i % 5 < 3  # 60% done
        rec.split = ("train", "train", "train", "dev", "test")[i % 5]
        rec.tokens = None
    projects.add_sentences(db, project["id"], records)
    return project["id"]


def _timed(fn, repeat: int) -> tuple[float, float]:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), max(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as tmp:
        os.environ["NERLAB_HOME"] = tmp
        os.environ["NERLAB_NO_DEMO"] = "1"
        t0 = time.perf_counter()
        pid = _build(args.sentences)
        print(f"built a project of {args.sentences} sentences in {time.perf_counter() - t0:.1f} s")

        from core.data.db import get_db

        db = get_db()
        total = db.execute("SELECT COUNT(*) FROM sentences WHERE project_id = ?", [pid]).fetchone()[0]
        spans = db.execute("SELECT COUNT(*) FROM spans").fetchone()[0]
        print(f"project: {total} sentences, {spans} spans")

        flt = labeling.QueueFilter()
        labels = projects.list_labels(db, pid)

        def core_calls(flt=flt) -> None:
            conn = get_db()
            labeling.progress(conn, pid)
            labeling.count(conn, pid, flt)
            sid = labeling.first(conn, pid, flt)
            sentence = projects.get_sentence(conn, sid)
            labeling.matches(conn, pid, flt, sid)
            label_session.widget_data(conn, sentence, labels, queue_total=1,
                                 queue_index=labeling.rank(conn, pid, flt, sentence["position"]))

        med, worst = _timed(core_calls, args.repeat)
        print(f"core calls of one Label page run (default queue): median {med * 1000:.1f} ms, max {worst * 1000:.1f} ms")
        search = labeling.QueueFilter("all", text="hypotension")
        med, worst = _timed(lambda: core_calls(search), args.repeat)
        print(f"core calls with a text search: median {med * 1000:.1f} ms, max {worst * 1000:.1f} ms")

        from streamlit.testing.v1 import AppTest  # noqa: TID251 - the test harness, not UI code

        at = AppTest.from_file(str(ROOT / "views" / "2_Label.py"), default_timeout=120)
        t0 = time.perf_counter()
        at.run()
        assert not at.exception, at.exception
        print(f"AppTest first run (imports, component registration): {time.perf_counter() - t0:.2f} s")
        med, worst = _timed(at.run, args.repeat)
        print(f"AppTest Label page rerun, default queue: median {med * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        at.text_input(key="label_search").set_value("hypotension").run()
        med, worst = _timed(at.run, args.repeat)
        print(f"AppTest Label page rerun, text search: median {med * 1000:.0f} ms, max {worst * 1000:.0f} ms")
        at.text_input(key="label_search").set_value("").run()

        def accept() -> None:
            at.button(key="label_accept").click().run()
            assert not at.exception, at.exception

        med, worst = _timed(accept, args.repeat)
        print(f"AppTest 'accept and next' (save + next sentence): median {med * 1000:.0f} ms, max {worst * 1000:.0f} ms")

        data_page = AppTest.from_file(str(ROOT / "views" / "1_Data.py"), default_timeout=120)
        data_page.run()
        assert not data_page.exception, data_page.exception
        med, worst = _timed(data_page.run, max(3, args.repeat // 4))
        print(f"AppTest Data page rerun (table page of 50, entity types, splits): median {med * 1000:.0f} ms, max {worst * 1000:.0f} ms")


if __name__ == "__main__":
    main()
