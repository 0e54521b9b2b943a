"""BM25: Okapi BM25 relevance of each training text to the query text (the `bm25s` library).

Texts are split into words by scikit-learn's default word analyzer (the same words TF-IDF sees);
`bm25s` then scores every training text for the query's words with k1 and b. The default variant
"lucene" is Okapi BM25 with the idf log(1 + (N - df + 0.5) / (df + 0.5)), which stays positive for
words in more than half of the texts (Robertson's original idf turns negative there).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from stride.attributor import MethodContext
from stride.baselines.common import (
    BaselineAttributor,
    check_choice,
    check_positive,
    data_texts,
    parse_settings,
    require_library,
)
from stride.errors import StrideError
from stride.tasks import Examples

VARIANTS = ("lucene", "robertson", "atire", "bm25l", "bm25+")


@dataclass
class Bm25Settings:
    """Settings of `bm25`.

    Attributes:
        k1: term-frequency saturation (1.2-2.0 is usual; 1.5 is the common default).
        b: document-length normalisation (0 = none, 1 = full).
        variant: the BM25 flavour of `bm25s` ("lucene" = Okapi BM25 with a non-negative idf).
        lowercase: fold case before splitting into words.
    """

    k1: float = 1.5
    b: float = 0.75
    variant: str = "lucene"
    lowercase: bool = True

    def validate(self) -> None:
        check_positive(self, "k1")
        if isinstance(self.b, bool) or not isinstance(self.b, (int, float)) or not 0 <= self.b <= 1:
            raise StrideError(f"b must be between 0 and 1, got {self.b!r}")
        check_choice(self, "variant", VARIANTS)


class Bm25Attributor(BaselineAttributor):
    name = "bm25"

    def __init__(self, context: MethodContext, settings: Bm25Settings):
        super().__init__(context, settings)
        self.retriever_: Any = None
        self.n_train_ = 0

    def _words(self, texts: list[str]) -> list[list[str]]:
        from sklearn.feature_extraction.text import CountVectorizer

        analyzer = CountVectorizer(lowercase=self.config.lowercase).build_analyzer()
        return [analyzer(text) for text in texts]

    def _prepare(self, train: Examples) -> None:
        import bm25s

        with self._timed("index"):
            self.retriever_ = bm25s.BM25(k1=self.config.k1, b=self.config.b, method=self.config.variant)
            self.retriever_.index(self._words(data_texts(train)), show_progress=False)
            self.n_train_ = len(train)

    def _scores(self, queries: Examples) -> torch.Tensor:
        scores = np.zeros((len(queries), self.n_train_), dtype=np.float32)
        for row, words in enumerate(self._words(data_texts(queries))):
            ids = self.retriever_.get_tokens_ids(words)
            if ids:  # a query with no word of the training texts matches nothing
                scores[row] = self.retriever_.get_scores_from_ids(ids)
        return torch.as_tensor(scores)


def create(context: MethodContext) -> Bm25Attributor:
    require_library("bm25s", "pip install bm25s==0.3.16", "bm25")
    return Bm25Attributor(context, parse_settings(Bm25Settings, context.settings, "bm25"))
