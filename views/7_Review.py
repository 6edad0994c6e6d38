"""Review: the sentences where annotators disagree, their versions side by side; accept one, or
edit a merged one, as the gold (recorded with the reviewer)."""

import streamlit as st

from core.data import projects, review
from core.ui import current_visitor, init_page, md_escape
from core.ui import review_view as rv

db, project = init_page("Review", icon="⚖")
visitor = current_visitor()
reviewer = visitor.name or "reviewer"

st.title("⚖ Review")
if project is None:
    st.info("Create a project on the home page first.")
    st.stop()

pid = project["id"]
rv.show_notice()
rows = review.disputed(db, pid)
done = review.summary(db, pid)["reviewed"]
st.caption(f"{len(rows)} sentence(s) where annotators disagree · {done} reviewed. What you save "
           f"becomes the gold that training and evaluation use, recorded as reviewed by "
           f"{md_escape(reviewer)}; every annotator's own version is kept.")
if not rows:
    st.success("No disagreement to review. Sentences labelled differently by two or more "
               "annotators appear here.")
    st.stop()

ids = [r["id"] for r in rows]
if st.session_state.get("review_pick") not in ids:
    st.session_state["review_pick"] = ids[0]
titles = {r["id"]: f"Sentence {r['number']} — {r['text'][:70]}"
          + ("…" if len(r["text"]) > 70 else "") + f" ({', '.join(r['annotators'])})"
          + (" · changed since reviewed" if r["reviewed_by"] else "") for r in rows}
sid = st.selectbox("Sentence", ids, format_func=titles.get, key="review_pick")
sentence = projects.get_sentence(db, sid)
labels = projects.list_labels(db, pid)
colours = {row["name"]: row["color"] for row in labels}
found = review.versions(db, sid)

st.markdown("#### Each annotator's version")
rv.side_by_side(db, sentence, found, colours, reviewer)
st.markdown("#### A merged version")
st.caption("It starts from the spans most annotators marked. Edit it as on the Label page "
           "(select words and press a type's key, click a span to change or remove it); Enter "
           "or the button saves it as the gold.")
number = next(r["number"] for r in rows if r["id"] == sid)
rv.merge_editor(db, sentence, labels, found, reviewer, (number, ids.index(sid), len(ids)))
