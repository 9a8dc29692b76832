"""How much theme a topic model can find in a corpus when it reads the words: an upper reference
for the NMI of HuBERTopic's unit topics.

``python -m apps.hubertopic.ceiling [--corpus DIR] [--topics 10] [--seeds 1 2 3] [--out FILE]``

The topic labels HuBERTopic trains on come from LDA over each utterance's *acoustic units*. Whether
they can carry the theme of what is said is bounded by what LDA finds when it sees the transcript
words themselves (no recognition errors, no speaker variation). This fits the same LDA
(:func:`apps.hubertopic.labels.fit_topics`: batch variational Bayes, same ``max_iter``) on word
documents — transcripts lower-cased, split on whitespace, optionally without English stop words —
and reports NMI of the hard topics with every per-utterance fact (speaker, gender, theme), with the
permutation chance level of :func:`apps.hubertopic.summary.nmi_chance`. The default corpus is the
generated one (``data/cache/hubertopic/espeak/corpus``, built by ``make train APP=hubertopic``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np

from apps.hubertopic.formats import FormatError, Utterance, read_librispeech
from apps.hubertopic.labels import fit_topics
from apps.hubertopic.summary import nmi_chance

DEFAULT_CORPUS = Path("data/cache/hubertopic/espeak/corpus")
FACTS = ("speaker", "gender", "theme")


def word_documents(utterances: list[Utterance], stop_words: bool) -> dict[str, np.ndarray]:
    """Word-id sequences per utterance id (one shared vocabulary), the form ``fit_topics`` takes."""
    from sklearn.feature_extraction.text import ENGLISH_STOP_WORDS

    vocabulary: dict[str, int] = {}
    documents: dict[str, np.ndarray] = {}
    for utterance in utterances:
        if not utterance.transcript:
            raise FormatError(f"{utterance.path}: utterance {utterance.utt_id} has no transcript")
        words = [
            w for w in utterance.transcript.lower().split() if not (stop_words and w in ENGLISH_STOP_WORDS)
        ]
        documents[utterance.utt_id] = np.array(
            [vocabulary.setdefault(w, len(vocabulary)) for w in words], dtype=np.int64
        )
    return documents


def word_topic_nmi(
    utterances: list[Utterance],
    num_topics: int,
    seeds: list[int],
    *,
    stop_words: bool = True,
    permutations: int = 200,
) -> dict[str, Any]:
    """NMI (observed and permutation chance) of word-LDA topics with each fact, per seed and mean."""
    facts = {
        name: [u.meta[name] for u in sorted(utterances, key=lambda u: u.utt_id)]
        for name in FACTS
        if all(name in u.meta for u in utterances)
    }
    if not facts:
        raise FormatError(f"no utterance facts among {FACTS} (metadata.tsv / SPEAKERS.TXT missing?)")
    documents = word_documents(utterances, stop_words)
    per_seed = []
    for seed in seeds:
        topics = fit_topics(documents, num_topics, seed=seed)
        per_seed.append({"seed": seed, **nmi_chance(topics.hard.tolist(), facts, permutations, seed)})
    mean = {
        name: {
            key: float(np.mean([run[name][key] for run in per_seed]))
            for key in ("observed", "chance_mean", "chance_p95")
        }
        for name in facts
    }
    return {
        "num_topics": num_topics,
        "stop_words_removed": stop_words,
        "utterances": len(utterances),
        "per_seed": per_seed,
        "mean": mean,
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="LibriSpeech-layout folder")
    parser.add_argument(
        "--metadata", type=Path, default=None, help="TSV of facts (default <corpus>/metadata.tsv)"
    )
    parser.add_argument("--topics", type=int, nargs="+", default=[10])
    parser.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    parser.add_argument("--keep-stop-words", action="store_true")
    parser.add_argument("--permutations", type=int, default=200)
    parser.add_argument("--out", type=Path, default=None, help="write the results as JSON")
    args = parser.parse_args(argv)
    utterances = read_librispeech(args.corpus, args.metadata)
    results = [
        word_topic_nmi(
            utterances,
            topics,
            args.seeds,
            stop_words=not args.keep_stop_words,
            permutations=args.permutations,
        )
        for topics in args.topics
    ]
    print(
        "| word LDA topics | " + " | ".join(f"NMI {name} (chance p95)" for name in results[0]["mean"]) + " |"
    )
    print("|---" * (1 + len(results[0]["mean"])) + "|")
    for result in results:
        cells = [
            f"{values['observed']:.3f} ({values['chance_p95']:.3f})" for values in result["mean"].values()
        ]
        print(f"| T = {result['num_topics']} | " + " | ".join(cells) + " |")
    if args.out is not None:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps({"corpus": str(args.corpus), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
