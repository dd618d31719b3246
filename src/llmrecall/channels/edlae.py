"""EDLAE (Steck, NeurIPS 2020, "Autoencoders that don't overfit towards the identity"): the
full-rank emphasised denoising linear autoencoder, in closed form.

Training a linear autoencoder ``X -> X B`` on inputs with dropout (each entry of ``X`` kept
with probability ``q = 1 - p`` and scaled by ``1/q``) and with the loss on the dropped-out
entries only (full emphasis) has, in expectation, the objective

    ||X - X B||^2 + sum_j b_j^T Lambda b_j   s.t. diag(B) = 0,
    Lambda = p / (1 - p) * diagMat(diag(X^T X)) + lam * I.

Why: for a target item ``j`` that was dropped, the input ``z_uj`` is 0, so ``B_jj`` never
reaches the loss (hence diag(B) = 0: the model cannot learn the identity), and each other
input ``z_ui`` has mean ``x_ui`` and variance ``x_ui^2 p / (1 - p)``, whose sum over users
is the ridge term ``B_ij^2 * p / (1 - p) * (X^T X)_ii``. Steck adds the constant ``lam``;
with ``p = 0`` this is EASE. The constrained problem has EASE's solution with ``Lambda``
for ``lam I``: ``B = I - P diagMat(1 / diag(P))``, ``P = (X^T X + Lambda)^-1`` — popular
items, whose columns carry more of the data, are shrunk more than the tail.

``user_power`` (``a``) weights each user's loss by ``w_u^2``, ``w_u = c * n_u^-a`` (``n_u``
the user's modelled training items): ``X`` becomes ``diag(w) X`` in all of the above, the
dropout part of ``Lambda`` included (it is the weighted Gram matrix's diagonal). Why: the
Gram matrix sums over interactions, so a user with 1,000 items counts 50 times as much as one
with 20, while Recall@K averages over users; ``a > 0`` moves the fit towards the typical user.
``c`` makes ``sum_u w_u^2 n_u = sum_u n_u`` (the weighted Gram matrix keeps the unweighted
one's trace), so ``lam`` keeps its scale whatever ``a``; ``a = 0`` is the unweighted model.
"""

from __future__ import annotations

import numpy as np

from llmrecall.channels.base import Channel
from llmrecall.channels.ease import EASE
from llmrecall.channels.registry import register
from llmrecall.errors import ConfigError


@register
class EDLAE(EASE):
    """EDLAE scores ``s[u] = x_u @ weights_`` from the user's whole (binary) history, as
    :class:`EASE` does; only the penalty on the Gram matrix's diagonal differs.

    Args:
        l2: ``lam``, the constant part of the penalty (> 0: keeps items never chosen in
            training, whose dropout part is 0, invertible).
        dropout: ``p`` in [0, 1), the dropout probability the penalty stands for; the item's
            part is ``p / (1 - p)`` times its training interactions. 0 gives EASE with
            ``regularization = l2``.
        max_items: model only this many most popular items (None: all), as in EASE.
        user_power: ``a`` >= 0, each user's loss weighted by ``n_u^(-2a)`` (normalised as
            the module says); 0, the default, weights every user alike (the model above).
    The defaults were chosen on ml-1m's RecBole split (validation Recall@10, 8 points).
    Fallbacks, items outside the model, evidence and the learned state (``items_``,
    ``weights_``, ``popularity_``) are EASE's.
    """

    kind = "edlae"
    evidence_template = "predicted from {evidence} in your history (EDLAE)"

    # EASE's constructor is not called: its ``regularization`` is this channel's ``l2``, and
    # get_params() reads this signature
    def __init__(self, l2: float = 300.0, dropout: float = 0.4, max_items: int | None = 10000,
                 user_power: float = 0.0, name: str | None = None):
        Channel.__init__(self, name)
        self.l2 = l2
        self.dropout = dropout
        self.max_items = max_items
        self.user_power = user_power

    def _check_params(self) -> None:
        if self.l2 <= 0:
            raise ConfigError(f"edlae l2 must be > 0, got {self.l2}")
        if not 0 <= self.dropout < 1:
            raise ConfigError(f"edlae dropout must be in [0, 1), got {self.dropout}")
        if not self.user_power >= 0:
            raise ConfigError(f"edlae user_power must be >= 0, got {self.user_power}")

    def _user_weights(self, sub) -> np.ndarray | None:
        """``w`` float64[n_users] = ``c * n_u^-user_power`` (0 for a user with no modelled
        item, who adds nothing to the Gram matrix anyway), ``c`` keeping the Gram matrix's
        trace; None when ``user_power`` is 0 (the unweighted fit, bit for bit)."""
        lengths = np.asarray(sub.getnnz(axis=1), np.float64)
        weights = self.raw_user_weights(lengths)
        if weights is None:
            return None
        return weights * np.sqrt(weight_scale(lengths.sum(), float((weights ** 2 * lengths).sum())))

    def raw_user_weights(self, lengths: np.ndarray) -> np.ndarray | None:
        """``n_u^-user_power`` float64[n_users] (0 where ``n_u`` is 0); None when
        ``user_power`` is 0."""
        if self.user_power == 0:
            return None
        lengths = np.asarray(lengths, np.float64)
        active = lengths > 0
        weights = np.zeros_like(lengths)
        weights[active] = lengths[active] ** -float(self.user_power)
        return weights

    def _penalty(self, counts: np.ndarray) -> np.ndarray:
        """``diag(Lambda)`` float64[m] = ``p / (1 - p) * counts + lam``."""
        return self.dropout / (1.0 - self.dropout) * counts + float(self.l2)


def weight_scale(interactions: float, weighted: float) -> float:
    """``c^2`` of the module text: the factor on the squared raw weights that keeps the
    Gram matrix's trace, given ``interactions`` = ``sum_u n_u`` and ``weighted`` =
    ``sum_u raw_u^2 n_u`` (1 when nothing is weighted). A sharded fit sums both over the
    shards and scales the summed raw-weighted Gram matrix by it."""
    return interactions / weighted if weighted > 0 else 1.0
