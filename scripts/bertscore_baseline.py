"""Compute the BERTScore rescale baseline of a local encoder (default: the bundled all-MiniLM-L6-v2).

BERTScore's baseline b is the expected score of two unrelated sentences; rescaling (s − b)/(1 − b)
spreads scores that would otherwise crowd near the top of the range. As in Zhang et al. (2020), b is
the mean P, R and F over random pairs of unrelated sentences; here the sentences are WordNet 3.0's
usage examples (the quoted sentences in its glosses), which lmgym already reads offline for METEOR,
drawn and paired with a fixed seed. One row per layer (0 = embeddings), in bert-score's CSV format.

    python scripts/bertscore_baseline.py                   # writes src/lmgym/metrics/data/...minilm...csv
    python scripts/bertscore_baseline.py --model /path/to/encoder --out baseline.csv
"""

from __future__ import annotations

import argparse
import random
import re
from pathlib import Path

from transformers import AutoConfig

from lmgym.metrics.model_based import MINILM_BASELINE
from lmgym.metrics.wordnet import load_wordnet
from lmgym.models.encoder import resolve_encoder_path

_EXAMPLE = re.compile(r'"([^"]{20,200})"')


def wordnet_examples() -> list[str]:
    """Every distinct usage example in WordNet's data files, in file order."""
    root = Path(load_wordnet().root.path)
    seen: dict[str, None] = {}
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (root / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  "):  # license header
                continue
            gloss = line.split(" | ", 1)[-1]
            for sentence in _EXAMPLE.findall(gloss):
                seen.setdefault(sentence.strip(), None)
    return list(seen)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, help="encoder folder (default: the bundled all-MiniLM-L6-v2)")
    parser.add_argument("--pairs", type=int, default=2000, help="random sentence pairs")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=MINILM_BASELINE)
    args = parser.parse_args()

    from bert_score import BERTScorer

    sentences = wordnet_examples()
    rng = random.Random(args.seed)
    chosen = rng.sample(sentences, 2 * args.pairs)
    cands, refs = chosen[: args.pairs], chosen[args.pairs :]
    source = resolve_encoder_path(args.model)
    layers = int(AutoConfig.from_pretrained(source).num_hidden_layers)
    rows = ["LAYER,P,R,F"]
    for layer in range(layers + 1):
        scorer = BERTScorer(model_type=source, num_layers=layer, batch_size=64)
        p, r, f = scorer.score(cands, refs)
        rows.append(f"{layer},{p.mean():.6f},{r.mean():.6f},{f.mean():.6f}")
        print(rows[-1], flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text("\n".join(rows) + "\n")
    print(f"{len(sentences)} WordNet examples, {args.pairs} pairs -> {args.out}")


if __name__ == "__main__":
    main()
