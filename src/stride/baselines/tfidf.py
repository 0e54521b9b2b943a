"""TF-IDF: cosine similarity of query and training texts (scikit-learn's TfidfVectorizer).

A lexical baseline that never looks at the model: a training example that shares rare words with
the query scores high. Fitted on the training texts only, so query words unseen in training count
for nothing.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from stride.attributor import MethodContext
from stride.baselines.common import BaselineAttributor, check_positive, data_texts, parse_settings
from stride.tasks import Examples


@dataclass
class TfidfSettings:
    """scikit-learn's defaults (smooth idf, L2-normalised rows), so scores are cosines in [0, 1].

    Attributes:
        ngram_max: longest word n-gram used as a term (1 = single words).
        sublinear_tf: use 1 + log(tf) instead of raw term counts.
        lowercase: fold case before counting.
    """

    ngram_max: int = 1
    sublinear_tf: bool = False
    lowercase: bool = True

    def validate(self) -> None:
        check_positive(self, "ngram_max")


class TfidfAttributor(BaselineAttributor):
    name = "tfidf"

    def __init__(self, context: MethodContext, settings: TfidfSettings):
        super().__init__(context, settings)
        self.vectorizer_: Any = None
        self.train_matrix_: Any = None

    def _prepare(self, train: Examples) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        with self._timed("fit"):
            self.vectorizer_ = TfidfVectorizer(
                lowercase=self.config.lowercase, ngram_range=(1, self.config.ngram_max),
                sublinear_tf=self.config.sublinear_tf,
            )  # fmt: skip
            self.train_matrix_ = self.vectorizer_.fit_transform(data_texts(train))

    def _scores(self, queries: Examples) -> torch.Tensor:
        query_matrix = self.vectorizer_.transform(data_texts(queries))
        scores = (query_matrix @ self.train_matrix_.T).toarray()
        return torch.as_tensor(scores, dtype=torch.float32)


def create(context: MethodContext) -> TfidfAttributor:
    return TfidfAttributor(context, parse_settings(TfidfSettings, context.settings, "tfidf"))
