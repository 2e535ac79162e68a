"""Official MTEB tasks through koemb's encoder and presets, and a local BEIR folder as an MTEB task.

`run_mteb(encoder, ["Ko-StrategyQA", ...], out_dir)` needs the `mteb` package and, to download the
task data, a network (the Hugging Face hub). The encoder is wrapped so that MTEB sees exactly what
`koemb evaluate` sees: the same preset, prompts and pooling. Prompts: queries get the preset's
query prompt with the task's own MTEB description as the instruction (how MTEB runs
Qwen3-Embedding), documents the document prompt, and symmetric tasks (STS) the query prompt on
both sides.

`local_retrieval_task(folder)` turns a BEIR folder into an MTEB retrieval task without any
download: the offline parity test runs MTEB's own evaluator on it.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from koemb.errors import UserError
from koemb.model.encoder import Encoder

log = logging.getLogger(__name__)

# MTEB score names -> koemb metric names (the same fractions).
MTEB_METRICS = {
    "ndcg_at_10": "ndcg@10", "map_at_10": "map@10", "recall_at_10": "recall@10", "precision_at_10": "precision@10",
    "mrr_at_10": "mrr@10", "spearman": "spearman", "pearson": "pearson", "cosine_spearman": "spearman",
    "cosine_pearson": "pearson", "main_score": "main_score",
}
SEED_TASKS = ("Ko-StrategyQA", "MrTidyRetrieval", "BelebeleRetrieval", "MIRACLRetrieval", "AutoRAGRetrieval", "PublicHealthQA")


def _require_mteb() -> Any:
    try:
        import mteb
    except ImportError:
        raise UserError("--mteb needs the 'mteb' package (pip install mteb, see requirements.txt)") from None
    return mteb


def mteb_model(encoder: Encoder) -> Any:
    """`encoder` as an MTEB model (an `AbsEncoder`), prompting per koemb's preset."""
    _require_mteb()
    import numpy as np
    from mteb.models.abs_encoder import AbsEncoder
    from mteb.models.model_meta import ModelMeta
    from mteb.types import PromptType

    class KoembMtebModel(AbsEncoder):
        def __init__(self, enc: Encoder) -> None:
            self.enc = enc
            self.model_prompts = None
            self.instruction_template = None
            meta = ModelMeta.create_empty()
            # A name MTEB can use as a results folder; the real identity is in koemb's provenance.
            self.mteb_model_meta = meta.model_copy(update={"name": f"koemb/{enc.name}", "revision": "local"})

        def encode(self, inputs: Any, *, task_metadata: Any, hf_split: str, hf_subset: str, prompt_type: Any = None, **kwargs: Any) -> Any:
            texts = [t for batch in inputs for t in batch["text"]]
            instruction = self.get_instruction(task_metadata, prompt_type) or None
            if isinstance(instruction, dict):
                instruction = instruction.get(prompt_type.value if prompt_type else "query") or None
            p = self.enc.preset
            if prompt_type == PromptType.document:
                texts = [p.format_document(t) for t in texts]
            elif prompt_type == PromptType.query:
                texts = [p.format_query(t, instruction) for t in texts]
            else:
                texts = [p.format_symmetric(t, instruction) for t in texts]
            return self.enc.encode(texts).numpy().astype(np.float32)

    return KoembMtebModel(encoder)


def local_retrieval_task(folder: str | Path, name: str = "KoembLocalRetrieval", split: str = "test", instruction: str | None = None) -> Any:
    """An MTEB retrieval task whose data is a local BEIR folder (read by koemb's reader).

    `instruction` becomes the task's MTEB prompt, which MTEB hands to instruction-taking models
    for queries (what a koemb suite's `instruction` does)."""
    _require_mteb()
    from datasets import Dataset
    from mteb.abstasks.retrieval import AbsTaskRetrieval
    from mteb.abstasks.task_metadata import TaskMetadata

    from koemb.eval.retrieval import read_beir

    data = read_beir(folder, split)

    class LocalRetrieval(AbsTaskRetrieval):
        metadata = TaskMetadata(
            name=name, description=f"local BEIR folder {folder}", reference=None, prompt=instruction,
            dataset={"path": str(folder), "revision": "local"}, type="Retrieval", category="t2t", modalities=["text"],
            eval_splits=[split], eval_langs=["kor-Hang"], main_score="ndcg_at_10", date=None, domains=None,
            task_subtypes=None, license=None, annotations_creators=None, dialect=None, sample_creation=None,
            bibtex_citation="",
        )

        def load_data(self, num_proc: int | None = None, **kwargs: Any) -> None:
            if self.data_loaded:
                return
            corpus = Dataset.from_list([{"id": d, "title": t, "text": x} for d, (t, x) in data.corpus.items()])
            queries = Dataset.from_list([{"id": q, "text": t} for q, t in data.queries.items()])
            self.dataset = {"default": {split: {"corpus": corpus, "queries": queries, "relevant_docs": data.qrels, "top_ranked": None}}}
            self.data_loaded = True

    return LocalRetrieval()


def scores_from_mteb(task_name: str, scores: dict[str, list[dict[str, Any]]]) -> dict[str, dict[str, float]]:
    """koemb metric names from an MTEB TaskResult's `scores` (split -> list of per-subset dicts).

    One subset gives `{task_name: metrics}`; several (e.g. BelebeleRetrieval's language pairs) give
    `{f"{task_name}[{hf_subset}]": metrics}` each; with several splits the split is named too.
    """
    out: dict[str, dict[str, float]] = {}
    for split, entries in scores.items():
        for entry in entries:
            key = task_name
            if len(entries) > 1:
                key += f"[{entry.get('hf_subset', '?')}]"
            if len(scores) > 1:
                key += f"/{split}"
            out[key] = {ours: float(entry[theirs]) for theirs, ours in MTEB_METRICS.items() if theirs in entry}
    return out


def run_tasks(encoder: Encoder, tasks: list[Any], out_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Run MTEB task objects with `encoder`; koemb-named metrics per task name."""
    mteb = _require_mteb()
    from mteb.cache import ResultCache

    cache = ResultCache(str(out_dir)) if out_dir is not None else None
    result = mteb.evaluate(mteb_model(encoder), tasks, cache=cache, overwrite_strategy="always", show_progress_bar=False)
    out = {}
    for tr in result.task_results:
        out.update(scores_from_mteb(tr.task_name, tr.scores))
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        (Path(out_dir) / "koemb_scores.json").write_text(json.dumps(out, indent=2), encoding="utf-8")
    return out


def run_mteb(encoder: Encoder, task_names: list[str], out_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Official MTEB tasks by name (e.g. the seed's six: `SEED_TASKS`); needs a network for their data."""
    mteb = _require_mteb()
    try:
        tasks = list(mteb.get_tasks(tasks=task_names, languages=["kor"]))
    except Exception as exc:  # mteb raises several types for unknown names
        raise UserError(f"--mteb {','.join(task_names)}: {exc}") from None
    found = {t.metadata.name for t in tasks}
    missing = [n for n in task_names if n not in found]
    if missing:
        raise UserError(f"--mteb: unknown MTEB task(s) {missing}")
    return run_tasks(encoder, tasks, out_dir)
