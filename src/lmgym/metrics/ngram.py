"""N-gram overlap metrics: BLEU (NLTK and SacreBLEU), chrF, TER, ROUGE, METEOR, CIDEr-D.

Every score is a fraction (SacreBLEU's 0–100 scale divided by 100), so they compose as rewards on
one scale; TER is an edit rate (lower is better, may exceed 1). Each sample has a list of
references; BLEU, chrF and TER use all of them, ROUGE and METEOR take the best-matching one, CIDEr-D
averages over them. Per-sample values are sentence-level scores; the corpus value is the
corpus-level statistic where the metric defines one (BLEU, chrF, TER), else the mean.
"""

from __future__ import annotations

import re
from collections.abc import Sequence

from lmgym.errors import InputError
from lmgym.metrics.base import Metric, MetricResult, MetricValue, missing_packages, register_metric
from lmgym.metrics.text import mean, require_references, sentences, words


def _reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """Per-sample reference lists → SacreBLEU's reference streams; samples with fewer references get None,
    which SacreBLEU skips."""
    width = max(len(r) for r in references)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


class _SacreMetric(Metric):
    requires = "sacrebleu"
    scale = 0.01  # SacreBLEU reports 0–100

    def missing(self) -> str | None:
        return missing_packages(("sacrebleu", "sacrebleu"))

    def _scorer(self):
        raise NotImplementedError

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        scorer = self._scorer()
        per_sample = [
            scorer.sentence_score(g, list(refs)).score * self.scale
            for g, refs in zip(generations, references, strict=True)
        ]
        corpus = scorer.corpus_score(list(generations), _reference_streams(references)).score * self.scale
        return {self.name: MetricValue(per_sample, corpus)}


@register_metric("sacrebleu", "SacreBLEU (13a tokenisation, exp smoothing per sentence), as a fraction", "sacrebleu")
class SacreBLEU(_SacreMetric):
    name = "sacrebleu"

    def __init__(self, tokenize: str = "13a", lowercase: bool = False) -> None:
        self.tokenize, self.lowercase = tokenize, lowercase

    def _scorer(self):
        from sacrebleu.metrics import BLEU

        return BLEU(tokenize=self.tokenize, lowercase=self.lowercase, effective_order=True)


@register_metric("chrf", "chrF (character n-gram F-score, β=2; word_order=2 gives chrF++), as a fraction", "sacrebleu")
class ChrF(_SacreMetric):
    name = "chrf"

    def __init__(self, word_order: int = 0) -> None:
        self.word_order = word_order

    def _scorer(self):
        from sacrebleu.metrics import CHRF

        return CHRF(word_order=self.word_order)


@register_metric("ter", "TER: word edits (shifts included) per reference word; lower is better", "sacrebleu")
class TER(_SacreMetric):
    name = "ter"
    higher_is_better = False

    def __init__(self, case_sensitive: bool = False) -> None:
        self.case_sensitive = case_sensitive

    def _scorer(self):
        from sacrebleu.metrics import TER as SacreTER

        return SacreTER(case_sensitive=self.case_sensitive)


@register_metric("bleu", "BLEU-4 on lower-cased word tokens (NLTK), corpus and smoothed sentence scores", "nltk")
class BLEU(Metric):
    """Papineni et al.'s BLEU with uniform weights over 1..``max_order``-grams. ``smoothing`` names one of
    NLTK's Chen & Cherry methods (``"method1"`` adds ε to zero counts; ``"none"`` gives 0 when a 4-gram order
    has no match), used for sentence and corpus scores alike, so a one-sample corpus scores as its sentence."""

    name = "bleu"
    requires = "nltk"

    def __init__(self, max_order: int = 4, smoothing: str = "method1") -> None:
        self.weights = tuple([1.0 / max_order] * max_order)
        self.smoothing = smoothing

    def missing(self) -> str | None:
        return missing_packages(("nltk", "nltk"))

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        from nltk.translate.bleu_score import SmoothingFunction, corpus_bleu, sentence_bleu

        require_references(self.name, generations, references)
        if self.smoothing == "none":
            smooth = SmoothingFunction().method0
        elif hasattr(SmoothingFunction, self.smoothing):
            smooth = getattr(SmoothingFunction(), self.smoothing)
        else:
            raise InputError(f"bleu: smoothing must be 'none' or 'method1'..'method7', got {self.smoothing!r}")
        hyps = [words(g) for g in generations]
        refs = [[words(r) for r in rs] for rs in references]
        per_sample = [
            float(sentence_bleu(r, h, weights=self.weights, smoothing_function=smooth))
            for h, r in zip(hyps, refs, strict=True)
        ]
        corpus = float(corpus_bleu(refs, hyps, weights=self.weights, smoothing_function=smooth))
        return {self.name: MetricValue(per_sample, corpus)}


ROUGE_KEYS = {"rouge1": "rouge-1", "rouge2": "rouge-2", "rougeL": "rouge-L", "rougeLsum": "rouge-Lsum"}


def _rouge_scorer(types: Sequence[str], use_stemmer: bool):
    from rouge_score.rouge_scorer import RougeScorer

    return RougeScorer(list(types), use_stemmer=use_stemmer)


def _with_sentence_breaks(text: str) -> str:
    # ROUGE-Lsum splits on newlines: one sentence per line.
    return "\n".join(sentences(text))


@register_metric(
    "rouge", "ROUGE-1/2/L/Lsum F-measure, best over references (rouge-score, Porter stemmer)", "rouge-score"
)
class Rouge(Metric):
    name = "rouge"
    requires = "rouge-score"

    def __init__(self, use_stemmer: bool = True, measure: str = "fmeasure") -> None:
        if measure not in ("precision", "recall", "fmeasure"):
            raise InputError(f"rouge: measure must be precision, recall or fmeasure, got {measure!r}")
        self.use_stemmer, self.measure = use_stemmer, measure

    def missing(self) -> str | None:
        return missing_packages(("rouge_score", "rouge-score"))

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        scorer = _rouge_scorer(list(ROUGE_KEYS), self.use_stemmer)
        per_key: dict[str, list[float]] = {key: [] for key in ROUGE_KEYS.values()}
        for gen, refs in zip(generations, references, strict=True):
            # score_multi keeps, per ROUGE type, the reference with the highest F-measure.
            scores = scorer.score_multi([_with_sentence_breaks(r) for r in refs], _with_sentence_breaks(gen))
            for key, name in ROUGE_KEYS.items():
                per_key[name].append(float(getattr(scores[key], self.measure)))
        return {name: MetricValue(values, mean(values)) for name, values in per_key.items()}


@register_metric("rouge_l_max", "ROUGE-L F-measure of the best-matching reference (GRUE's ROUGE-L-max)", "rouge-score")
class RougeLMax(Metric):
    """max over references of the LCS-based F_β (β=1 by default, as in GRUE's summarisation scoring)."""

    name = "rouge_l_max"
    requires = "rouge-score"

    def __init__(self, use_stemmer: bool = True, beta: float = 1.0) -> None:
        self.use_stemmer, self.beta = use_stemmer, beta

    def missing(self) -> str | None:
        return missing_packages(("rouge_score", "rouge-score"))

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        require_references(self.name, generations, references)
        scorer = _rouge_scorer(["rougeL"], self.use_stemmer)
        per_sample = []
        for gen, refs in zip(generations, references, strict=True):
            best = 0.0
            for ref in refs:
                s = scorer.score(ref, gen)["rougeL"]
                p, r = s.precision, s.recall
                f = (1 + self.beta**2) * p * r / (self.beta**2 * p + r) if p + r > 0 else 0.0
                best = max(best, f)
            per_sample.append(best)
        return {self.name: MetricValue(per_sample, mean(per_sample))}


@register_metric(
    "meteor", "METEOR (NLTK: exact, stem and WordNet-synonym matches), best over references", "nltk + WordNet"
)
class Meteor(Metric):
    name = "meteor"
    requires = "nltk, WordNet 3.0 (Debian wordnet-base + wordnet-sense-index, or nltk.download('wordnet'))"

    def __init__(self, alpha: float = 0.9, beta: float = 3.0, gamma: float = 0.5) -> None:
        self.alpha, self.beta, self.gamma = alpha, beta, gamma

    def missing(self) -> str | None:
        from lmgym.metrics.wordnet import wordnet_available

        return missing_packages(("nltk", "nltk")) or wordnet_available()

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        from nltk.translate.meteor_score import meteor_score

        from lmgym.metrics.wordnet import load_wordnet

        require_references(self.name, generations, references)
        wordnet = load_wordnet()
        per_sample = [
            float(
                meteor_score(
                    [words(r) for r in refs],
                    words(gen),
                    alpha=self.alpha,
                    beta=self.beta,
                    gamma=self.gamma,
                    wordnet=wordnet,
                )
            )
            for gen, refs in zip(generations, references, strict=True)
        ]
        return {self.name: MetricValue(per_sample, mean(per_sample))}


# COCO caption evaluation (pycocoevalcap.tokenizer.ptbtokenizer) drops these tokens after Stanford's PTB
# tokenizer, which it runs with -lowerCase. It compares the lower-cased tokens with this list as written, so the
# bracket tokens survive as "-lrb-" etc.; so do they here.
COCO_PUNCTUATION = frozenset(
    ["''", "'", "``", "`", "-LRB-", "-RRB-", "-LCB-", "-RCB-", ".", "?", "!", ",", ":", "-", "--", "...", ";"]
)
# Tokens whose final period PTB keeps: letter-period runs (u.s., e.g., a.m.) and common title abbreviations.
_KEEPS_PERIOD = re.compile(r"(?:[^\W\d_]\.){2,}|(?:mr|mrs|ms|dr|prof|st|jr|sr|vs|etc)\.")


def coco_tokens(text: str) -> list[str]:
    """Tokens as COCO's caption evaluation scores them, without its Java step: Penn Treebank tokens (NLTK's
    Treebank tokenizer: clitics split as in "do n't", "it 's"; hyphenated words, numbers and abbreviations
    kept whole; brackets as -lrb-/-rrb-), lower-cased, with COCO's punctuation list removed."""
    from nltk.tokenize.treebank import TreebankWordTokenizer

    tokens: list[str] = []
    for token in TreebankWordTokenizer().tokenize(text, convert_parentheses=True):
        token = token.lower()
        # NLTK splits off only the text's final period; PTB splits every sentence's.
        if len(token) > 1 and token.endswith(".") and token.rstrip(".") and not _KEEPS_PERIOD.fullmatch(token):
            token = token.rstrip(".")
        if token not in COCO_PUNCTUATION:
            tokens.append(token)
    return tokens


@register_metric(
    "cider", "CIDEr-D (pycocoevalcap): TF-IDF n-gram cosine, clipped, length-penalised, ×10", "pycocoevalcap"
)
class CiderD(Metric):
    """Vedantam et al.'s CIDEr-D, as pycocoevalcap computes it (its ×10 scale included: a generation equal to
    all its references can score 10). IDF comes from the references of the samples scored together, so a
    sample's value depends on the batch (and a batch of one scores 0: every n-gram has IDF 0). Text is
    tokenized as COCO's evaluation does (`coco_tokens`): punctuation dropped, clitics split."""

    name = "cider"
    requires = "pycocoevalcap"

    def __init__(self, n: int = 4, sigma: float = 6.0) -> None:
        if n < 2:  # pycocoevalcap measures the length penalty's lengths in bigrams
            raise InputError(f"cider: n must be at least 2, got {n}")
        self.n, self.sigma = n, sigma

    def missing(self) -> str | None:
        return missing_packages(("pycocoevalcap", "pycocoevalcap"), ("nltk", "nltk"))

    def compute(self, prompts, generations, references, meta) -> MetricResult:
        from pycocoevalcap.cider.cider_scorer import CiderScorer, precook

        require_references(self.name, generations, references)
        # The scorer's own n-gram counting (via its `Cider` class) always stops at 4-grams whatever its n, which
        # fails for n < 4 and scores (n+1)-grams and above as 0 for n > 4; count up to n here instead.
        scorer = CiderScorer(n=self.n, sigma=self.sigma)
        for gen, refs in zip(generations, references, strict=True):
            scorer.ctest.append(precook(" ".join(coco_tokens(gen)), self.n))
            scorer.crefs.append([precook(" ".join(coco_tokens(r)), self.n) for r in refs])
        corpus, per_sample = scorer.compute_score()
        return {self.name: MetricValue([float(x) for x in per_sample], float(corpus))}
