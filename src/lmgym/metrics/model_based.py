"""Metrics computed with a neural model: BERTScore, MAUVE, BLEURT, SPICE.

Each runs on a model on this machine: BERTScore and MAUVE default to the bundled all-MiniLM-L6-v2
and take any local encoder; BLEURT needs a checkpoint folder, SPICE the Stanford CoreNLP jars and
Java. When something is missing the error names it and says how to supply it. (SummaC lives in
`lmgym.metrics.summac`.)
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

from lmgym.errors import InputError, StateError
from lmgym.metrics.base import METRICS_EXTRA_PIP, Metric, MetricResult, MetricValue, missing_packages, register_metric
from lmgym.metrics.text import mean, require_references

DATA_DIR = Path(__file__).parent / "data"
MINILM_BASELINE = DATA_DIR / "bertscore_baseline_all-minilm-l6-v2.csv"  # made by scripts/bertscore_baseline.py


# --- BERTScore ------------------------------------------------------------------------------------


@register_metric(
    "bertscore",
    "BERTScore precision/recall/F1 (bert-score) with any local encoder; default the bundled MiniLM, rescaled",
    "bert-score; a local encoder (bundled all-MiniLM-L6-v2 by default)",
)
class BERTScore(Metric):
    """Zhang et al.'s BERTScore: greedy cosine matching of contextual token embeddings.

    ``model``: a local encoder folder (default: the bundled all-MiniLM-L6-v2); ``num_layers``: which
    layer's states to use (bert-score keeps a table only for hub models it knows, so we always pass it;
    default: the model's last layer). ``rescale_with_baseline`` maps scores through (s − b)/(1 − b) with b
    the mean score of unrelated sentence pairs, which spreads MiniLM's compressed range; the bundled
    encoder's baselines (every layer) are in ``metrics/data`` and ``baseline_path`` gives another model's
    (bert-score's CSV: columns LAYER,P,R,F, one row per layer). Several references: the best F1 counts.
    ``idf``: weight tokens by IDF over the references scored together (bert-score's definition; a batch
    with a single reference gives every token weight 0, so score batches).
    """

    name = "bertscore"
    requires = "bert-score"

    def __init__(
        self,
        model: str | None = None,
        num_layers: int | None = None,
        rescale_with_baseline: bool | None = None,
        baseline_path: str | None = None,
        idf: bool = False,
        batch_size: int = 32,
    ) -> None:
        self.model, self.num_layers, self.idf, self.batch_size = model, num_layers, idf, batch_size
        self.bundled = model in (None, "all-minilm-l6-v2")
        self.baseline_path = baseline_path or (str(MINILM_BASELINE) if self.bundled else None)
        if rescale_with_baseline is None:
            rescale_with_baseline = self.baseline_path is not None
        if rescale_with_baseline and self.baseline_path is None:
            raise InputError(
                "bertscore: rescale_with_baseline for a non-bundled model needs baseline_path= (a CSV with "
                "columns LAYER,P,R,F; scripts/bertscore_baseline.py computes one)"
            )
        self.rescale = rescale_with_baseline
        self._scorer = None

    def missing(self) -> str | None:
        return missing_packages(("bert_score", "bert-score"))

    def scorer(self):
        if self._scorer is None:
            from bert_score import BERTScorer
            from transformers import AutoConfig

            from lmgym.models.encoder import resolve_encoder_path

            source = resolve_encoder_path(self.model)
            layers = self.num_layers
            if layers is None:
                layers = int(AutoConfig.from_pretrained(source).num_hidden_layers)
            self._scorer = BERTScorer(
                model_type=source,
                num_layers=layers,
                lang="en",  # bert-score asks for a language whenever it rescales; the baseline file is ours
                rescale_with_baseline=self.rescale,
                baseline_path=self.baseline_path,
                idf=self.idf,  # the weights themselves are computed per call, from that call's references
                batch_size=self.batch_size,
            )
            _encode_empty_text(self._scorer._tokenizer)
        return self._scorer

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        scorer = self.scorer()
        if self.idf:  # IDF weights from the references being scored, as bert-score computes them
            with warnings.catch_warnings():  # "Overwriting the previous importance weights": intended
                warnings.simplefilter("ignore")
                scorer.compute_idf([r for refs in references for r in refs])
        p, r, f = scorer.score(list(generations), [list(refs) for refs in references])
        return {
            "bertscore-precision": MetricValue(p.tolist(), float(p.mean())),
            "bertscore-recall": MetricValue(r.tolist(), float(r.mean())),
            "bertscore-f1": MetricValue(f.tolist(), float(f.mean())),
        }


class _EmptyTextEncoding:
    """``build_inputs_with_special_tokens`` for the empty text alone (a class, not a closure: bert-score's IDF
    weights pickle the tokenizer into worker processes)."""

    def __init__(self, ids: list[int]) -> None:
        self.ids = ids

    def __call__(self, token_ids_0: list[int], token_ids_1: list[int] | None = None) -> list[int]:
        if token_ids_0 or token_ids_1:
            raise NotImplementedError("only the empty text's encoding is provided (what bert-score uses it for)")
        return list(self.ids)


def _encode_empty_text(tokenizer) -> None:
    """bert-score encodes an empty (or blank) candidate or reference with the tokenizer's
    ``build_inputs_with_special_tokens([])`` and then scores it 0, as it documents; the tokenizers-backed
    classes of transformers 5 no longer have that method, so one empty generation failed the whole batch.
    Give the tokenizer the encoding of the empty text (its special tokens alone), which is all bert-score asks."""
    if not hasattr(tokenizer, "build_inputs_with_special_tokens"):
        empty = list(tokenizer("", add_special_tokens=True)["input_ids"])
        tokenizer.build_inputs_with_special_tokens = _EmptyTextEncoding(empty)


# --- MAUVE ----------------------------------------------------------------------------------------


@register_metric(
    "mauve",
    "MAUVE (mauve-text): divergence frontier of generation vs reference features from a local model",
    "mauve-text, faiss-cpu, scikit-learn; a local encoder (bundled MiniLM by default)",
    per_sample=False,
)
class Mauve(Metric):
    """Pillutla et al.'s MAUVE between the generations (P) and the first reference of each sample (Q).

    Features come from ``model`` (default: the bundled MiniLM, mean-pooled; a causal LM folder with
    ``pooling="last"`` gives the paper's GPT-2-style features). Corpus-level only; it needs a few dozen
    samples at least to be meaningful (``num_buckets="auto"`` uses n/10 clusters)."""

    name = "mauve"
    requires = "mauve-text, faiss-cpu, scikit-learn"

    def __init__(
        self,
        model: str | None = None,
        pooling: str = "mean",
        num_buckets: int | str = "auto",
        kmeans_num_redo: int = 5,
        scaling_factor: float = 5.0,
        seed: int = 25,
    ) -> None:
        self.model, self.pooling, self.num_buckets = model, pooling, num_buckets
        self.kmeans_num_redo, self.scaling_factor, self.seed = kmeans_num_redo, scaling_factor, seed

    def missing(self) -> str | None:
        return missing_packages(("mauve", "mauve-text"), ("faiss", "faiss-cpu"), ("sklearn", "scikit-learn"))

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        import mauve

        from lmgym.models.encoder import load_encoder

        require_references(self.name, generations, references)
        if len(generations) < 2:
            raise InputError("mauve: needs at least 2 samples (it clusters the features of both sets)")
        encoder = load_encoder(self.model, pooling=self.pooling, normalize=False)  # type: ignore[arg-type]
        p = encoder.embed(list(generations)).numpy()
        q = encoder.embed([refs[0] for refs in references]).numpy()
        out = mauve.compute_mauve(
            p_features=p,
            q_features=q,
            num_buckets=self.num_buckets,
            kmeans_num_redo=self.kmeans_num_redo,
            mauve_scaling_factor=self.scaling_factor,
            seed=self.seed,
            verbose=False,
        )
        return {self.name: MetricValue(None, float(out.mauve))}


# --- BLEURT ---------------------------------------------------------------------------------------


@register_metric(
    "bleurt",
    "BLEURT: a learned regression score of (reference, candidate) from a checkpoint folder you supply",
    "checkpoint= a local BLEURT checkpoint (PyTorch/transformers)",
)
class BLEURT(Metric):
    """Sellam et al.'s BLEURT: a BERT cross-encoder of (reference, candidate) with a scalar head.

    ``checkpoint``: a local folder holding a transformers sequence-regression model (one output), e.g. a
    BLEURT port saved with ``save_pretrained``; checkpoints of ``model_type: bleurt`` (the
    ``bleurt-pytorch`` port) need that package. Also read from ``$LMGYM_BLEURT_CHECKPOINT``. Several
    references: the best score counts."""

    name = "bleurt"
    requires = "checkpoint= (or $LMGYM_BLEURT_CHECKPOINT): a local BLEURT checkpoint folder"

    def __init__(self, checkpoint: str | None = None, batch_size: int = 16, max_length: int = 512) -> None:
        self.checkpoint = checkpoint or os.environ.get("LMGYM_BLEURT_CHECKPOINT")
        self.batch_size, self.max_length = batch_size, max_length
        self._model = None

    def missing(self) -> str | None:
        if not self.checkpoint:
            return (
                "BLEURT needs a checkpoint: pass checkpoint=/path/to/folder (a transformers sequence-regression "
                "model with one output, e.g. a BLEURT-20 PyTorch port) or set LMGYM_BLEURT_CHECKPOINT"
            )
        folder = Path(self.checkpoint)
        if not (folder / "config.json").is_file():
            return f"BLEURT checkpoint {folder} has no config.json: give a folder saved with save_pretrained"
        model_type = json.loads((folder / "config.json").read_text()).get("model_type")
        if model_type == "bleurt":
            return missing_packages(("bleurt_pytorch", "bleurt-pytorch"))
        return None

    def _load(self):
        if self._model is None:
            from transformers import AutoModelForSequenceClassification, AutoTokenizer

            from lmgym.models.loading import check_safetensors

            folder = Path(self.checkpoint)  # type: ignore[arg-type]
            check_safetensors(folder)  # weights are read from safetensors only, never from pickles
            model_type = json.loads((folder / "config.json").read_text()).get("model_type")
            if model_type == "bleurt":
                from bleurt_pytorch import BleurtForSequenceClassification, BleurtTokenizer

                model = BleurtForSequenceClassification.from_pretrained(folder, use_safetensors=True)
                tokenizer = BleurtTokenizer.from_pretrained(folder)
            else:
                model = AutoModelForSequenceClassification.from_pretrained(folder, use_safetensors=True)
                tokenizer = AutoTokenizer.from_pretrained(folder)
            if model.config.num_labels != 1:
                raise InputError(f"BLEURT checkpoint {folder} has {model.config.num_labels} outputs; BLEURT has one")
            self._model = (model.eval(), tokenizer)
        return self._model

    def pair_scores(self, refs: Sequence[str], cands: Sequence[str]) -> list[float]:
        import torch

        model, tokenizer = self._load()
        out: list[float] = []
        with torch.no_grad():
            for i in range(0, len(refs), self.batch_size):
                enc = tokenizer(
                    list(refs[i : i + self.batch_size]),
                    list(cands[i : i + self.batch_size]),
                    padding=True,
                    truncation=True,
                    max_length=self.max_length,
                    return_tensors="pt",
                )
                out += model(**enc).logits[:, 0].float().tolist()
        return out

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        pairs = [(r, g, i) for i, (g, refs) in enumerate(zip(generations, references, strict=True)) for r in refs]
        scores = self.pair_scores([p[0] for p in pairs], [p[1] for p in pairs])
        per_sample = [float("-inf")] * len(generations)
        for (_, _, i), s in zip(pairs, scores, strict=True):
            per_sample[i] = max(per_sample[i], s)
        return {self.name: MetricValue(per_sample, mean(per_sample))}


# --- SPICE ----------------------------------------------------------------------------------------

CORENLP_JARS = ("stanford-corenlp-3.6.0.jar", "stanford-corenlp-3.6.0-models.jar")


@register_metric(
    "spice",
    "SPICE: F-score of scene-graph tuples (pycocoevalcap's SPICE jar, Stanford CoreNLP 3.6.0, Java)",
    "Java 8+, pycocoevalcap, corenlp_dir= with stanford-corenlp-3.6.0(-models).jar",
)
class Spice(Metric):
    """Anderson et al.'s SPICE, run with the SPICE 1.0 jar that pycocoevalcap ships.

    SPICE parses with Stanford CoreNLP 3.6.0, whose two jars pycocoevalcap would download at run time;
    here you supply them: ``corenlp_dir`` (or ``$LMGYM_CORENLP_DIR``) is a folder with
    stanford-corenlp-3.6.0.jar and stanford-corenlp-3.6.0-models.jar (from stanford-corenlp-full-2015-12-09.zip).
    """

    name = "spice"
    requires = "Java, pycocoevalcap, corenlp_dir= (Stanford CoreNLP 3.6.0 jars)"

    def __init__(self, corenlp_dir: str | None = None, java: str = "java", memory: str = "8G") -> None:
        self.corenlp_dir = corenlp_dir or os.environ.get("LMGYM_CORENLP_DIR")
        self.java, self.memory = java, memory

    def _spice_dir(self) -> Path | None:
        import importlib.util

        spec = importlib.util.find_spec("pycocoevalcap")
        if spec is None or not spec.submodule_search_locations:
            return None
        return Path(next(iter(spec.submodule_search_locations))) / "spice"

    def missing(self) -> str | None:
        if shutil.which(self.java) is None:
            return (
                f"SPICE runs on Java: install a JRE (`apt-get install default-jre-headless`); {self.java!r} not found"
            )
        spice_dir = self._spice_dir()
        if spice_dir is None or not (spice_dir / "spice-1.0.jar").is_file():
            return f"`{METRICS_EXTRA_PIP}` (pycocoevalcap, which ships the SPICE 1.0 jar)"
        if all((spice_dir / "lib" / jar).is_file() for jar in CORENLP_JARS):
            return None
        if not self.corenlp_dir:
            return (
                "SPICE needs Stanford CoreNLP 3.6.0: pass corenlp_dir= (or set LMGYM_CORENLP_DIR) to a folder with "
                f"{' and '.join(CORENLP_JARS)} (in stanford-corenlp-full-2015-12-09.zip)"
            )
        absent = [jar for jar in CORENLP_JARS if not (Path(self.corenlp_dir) / jar).is_file()]
        if absent:
            return f"corenlp_dir {self.corenlp_dir} lacks {', '.join(absent)}"
        return None

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        from lmgym.models.loading import cache_dir

        require_references(self.name, generations, references)
        spice_dir = self._spice_dir()
        assert spice_dir is not None
        classpath = [str(spice_dir / "spice-1.0.jar"), str(spice_dir / "lib" / "*")]
        if self.corenlp_dir:
            classpath += [str(Path(self.corenlp_dir) / jar) for jar in CORENLP_JARS]
        records = [
            {"image_id": i, "test": g, "refs": list(refs)}
            for i, (g, refs) in enumerate(zip(generations, references, strict=True))
        ]
        cache = cache_dir() / "spice"
        cache.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory() as tmp:
            src, dst = Path(tmp) / "in.json", Path(tmp) / "out.json"
            src.write_text(json.dumps(records))
            cmd = [self.java, f"-Xmx{self.memory}", "-cp", os.pathsep.join(classpath), "edu.anu.spice.SpiceScorer"]
            cmd += [str(src), "-cache", str(cache), "-out", str(dst), "-subset", "-silent"]
            done = subprocess.run(cmd, capture_output=True, text=True)
            if done.returncode != 0:
                raise StateError(f"SPICE failed ({done.returncode}): {done.stderr[-2000:]}")
            results = json.loads(dst.read_text())
        by_id = {r["image_id"]: float(r["scores"]["All"]["f"]) for r in results}
        per_sample = [by_id[i] for i in range(len(generations))]
        return {self.name: MetricValue(per_sample, mean(per_sample))}
