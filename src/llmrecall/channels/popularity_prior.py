"""An item's popularity predicted from its text: the prior a text channel adds for new items.

A channel trained with in-batch negatives (textcf's InfoNCE) sees each item as a negative
about as often as it is a positive in the data, so its logits learn how much *more* a user
likes an item than its popularity predicts: ``logit(u, i) ≈ log p(i | u) - log p(i) + c(u)``
(the sampling bias that "logQ correction" removes in two-tower retrieval). To rank by
``p(i | u)`` the log-popularity is added back. For an item with training events that is its
observed log count; a new item has none, so its log count is predicted from its text by a
ridge regression fitted on the items that do have events: what kind of item, by its title
and description, tends to be popular.

The prior is exactly a per-item additive score, so it never changes which items a user's
vector is near; it moves the popular-looking ones up.
"""

from __future__ import annotations

import numpy as np

from llmrecall.errors import DataError

#: the ridge penalties tried (efficient leave-one-out over the fitted items picks one)
ALPHAS = tuple(np.logspace(-2, 3, 12))


class TextPopularityPrior:
    """Ridge regression from an item's text vector to its log training count.

    Fitted on the items with at least one training event (an item without any may be new,
    not unpopular). Attributes after :meth:`fit`: ``coef_`` float32[d], ``intercept_``
    float32[1], ``alpha_`` float (the chosen penalty).
    """

    def fit(self, vectors: np.ndarray, counts: np.ndarray) -> TextPopularityPrior:
        """Fit on ``vectors`` float32[n_items, d] and ``counts`` float[n_items] (training
        events per item). With fewer than 2 items with events, or all of them equally
        frequent, the prediction is the constant mean log count."""
        vectors = np.asarray(vectors, np.float32)
        counts = np.asarray(counts, np.float64)
        if vectors.ndim != 2 or len(vectors) != len(counts):
            raise DataError(f"popularity prior: {len(counts)} counts for text vectors of "
                            f"shape {vectors.shape}")
        seen = counts > 0
        target = np.log(counts[seen]) if seen.any() else np.zeros(0)
        if seen.sum() < 2 or np.ptp(target) == 0:
            self.coef_ = np.zeros(vectors.shape[1], np.float32)
            self.intercept_ = np.array([target.mean() if len(target) else 0.0], np.float32)
            self.alpha_ = float("nan")
            return self
        from sklearn.linear_model import RidgeCV

        ridge = RidgeCV(alphas=ALPHAS).fit(vectors[seen], target)
        self.coef_ = np.asarray(ridge.coef_, np.float32)
        self.intercept_ = np.array([ridge.intercept_], np.float32)
        self.alpha_ = float(ridge.alpha_)
        return self

    @classmethod
    def from_arrays(cls, coef: np.ndarray, intercept: np.ndarray) -> TextPopularityPrior:
        """A fitted prior from its saved ``coef_`` float32[d] and ``intercept_`` float32[1]."""
        prior = cls()
        prior.coef_ = np.asarray(coef, np.float32)
        prior.intercept_ = np.asarray(intercept, np.float32).reshape(1)
        prior.alpha_ = float("nan")
        return prior

    def predict(self, vectors: np.ndarray) -> np.ndarray:
        """float32[n] predicted log counts of the items whose text vectors are ``vectors``
        (float32[n, d]); one row's prediction depends on that row alone."""
        return (np.asarray(vectors, np.float32) @ self.coef_ + self.intercept_[0]).astype(
            np.float32)

    def item_prior(self, vectors: np.ndarray, counts: np.ndarray) -> np.ndarray:
        """float32[n_items]: the observed log count of every item with training events, the
        predicted one (:meth:`predict`) of every item without."""
        counts = np.asarray(counts, np.float64)
        predicted = self.predict(vectors)
        observed = np.log(np.where(counts > 0, counts, 1.0)).astype(np.float32)
        return np.where(counts > 0, observed, predicted).astype(np.float32)
