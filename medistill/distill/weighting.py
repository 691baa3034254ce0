"""How MedDistill's loss terms combine into one per-example loss (docs/methods.md §1).

The released terms are named ``"bce"`` (soft-target BCE), ``"prob"`` (probability MSE)
and ``"feat"`` (feature MSE); ``"feat"`` is absent when the teacher has no features (e.g.
GrabCut). The terms added against collapse on small targets (docs/label_free_losses.md)
are ``"dice"`` (soft Dice), ``"proj"`` (box projection) and ``"outside"`` (background
outside every box).

- **ULWR** (:class:`ULWRWeighting`), the released rule, per image from its teacher
  uncertainty σ²: ``w1 = 1/(σ²+1e-6)``, ``w2 = sigmoid(1−σ²)``, ``w3 = 0.4``, normalised to
  sum 1, plus the penalty ``β·Σ_i (w_i − mean w)²``. Nothing is learned; the weights and
  the penalty are constants of the data (``stop_gradient``). Since σ² is small, ``w1``
  takes almost all the weight (0.989 at σ² = 0.01). The released rule covers only the
  released terms; any other term is added with weight 1 (ULWR has no rule for it).
- **Learned** (:class:`LearnedWeighting`): Kendall et al. (2018),
  ``Σ_i exp(−s_i)·L_i + s_i`` with trainable ``s_i`` (initialised to 0).
- **Fixed** (:class:`FixedWeighting`): ``Σ_i w_i·L_i`` with given constants.

Each is a registered Keras layer (checkpoint it with ``tf.train.Checkpoint`` or the
loop's ``extra_trackables``; build it inside ``strategy.scope()``) whose
``call(terms, uncertainty)`` returns ``(total (B,), weights)``; ``weights`` maps each term
name to its ``(B,)`` weight (for logging; ULWR adds ``"penalty"``). The layers compute in
float32 whatever the global mixed-precision policy.

Example:
    >>> import numpy as np
    >>> weighting = build_weighting("ulwr", ["bce", "prob"])
    >>> terms = {"bce": np.array([0.5], "float32"), "prob": np.array([0.1], "float32")}
    >>> total, weights = weighting(terms, np.array([0.01], "float32"))
    >>> round(float(weights["bce"][0]), 4), round(float(weights["prob"][0]), 4)
    (0.9928, 0.0072)
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import keras
import tensorflow as tf

from medistill.distill.terms import RELEASED_TERMS, TERM_NAMES, WEIGHTINGS
from medistill.errors import MedistillError

ULWR_EPS = 1e-6

_PACKAGE = "medistill"


def ulwr_weights(uncertainty: tf.Tensor, w3: float = 0.4, has_feature: bool = True) -> tf.Tensor:
    """The released per-image ULWR weights ``(B, 3)`` (bce, prob, feat), rows summing to 1.

    ``w1 = 1/(σ²+1e-6)``, ``w2 = sigmoid(1−σ²)``, ``w3`` (0 without a feature term), then
    each row divided by its sum. The weights carry no gradient (``stop_gradient``), as in
    the released code.
    """
    sigma2 = tf.stop_gradient(tf.cast(tf.reshape(uncertainty, (-1,)), tf.float32))
    w1 = 1.0 / (sigma2 + ULWR_EPS)
    w2 = tf.sigmoid(1.0 - sigma2)
    w3 = tf.fill(tf.shape(sigma2), float(w3) if has_feature else 0.0)
    raw = tf.stack([w1, w2, w3], axis=1)
    return tf.stop_gradient(raw / tf.reduce_sum(raw, axis=1, keepdims=True))


def ulwr_penalty(weights: tf.Tensor, beta: float = 0.1, has_feature: bool = True) -> tf.Tensor:
    """``β·Σ_i (w_i − mean w)²`` over the terms in use (3, or bce and prob only): ``(B,)``."""
    used = tf.cast(weights, tf.float32)[:, : 3 if has_feature else 2]
    spread = used - tf.reduce_mean(used, axis=1, keepdims=True)
    return float(beta) * tf.reduce_sum(tf.square(spread), axis=1)


def _float_policy_kwargs(kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs.setdefault("dtype", "float32")
    return kwargs


class LossWeighting(keras.layers.Layer):
    """Base class: ``call(terms, uncertainty) -> (total (B,), weights dict[str, (B,)])``.

    ``terms`` maps term names to per-example losses ``(B,)``; ``uncertainty`` is the
    teacher's per-image σ² ``(B,)`` (used by ULWR only). Subclasses implement
    :meth:`combine`; the base class casts to float32 and checks the term names.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**_float_policy_kwargs(kwargs))

    def expected_terms(self) -> tuple[str, ...] | None:
        """Names the terms must be exactly (None: any subset accepted by :meth:`check_terms`)."""
        return None

    def check_terms(self, names: Sequence[str]) -> None:
        """Raise :class:`MedistillError` if ``names`` cannot be combined by this weighting."""
        expected = self.expected_terms()
        if expected is not None and set(names) != set(expected):
            raise MedistillError(f"{type(self).__name__} was built for the loss terms {list(expected)} "
                                 f"but got {sorted(names)}; build it with the trainer's term names")

    def call(self, terms: Mapping[str, tf.Tensor], uncertainty: tf.Tensor):
        self.check_terms(list(terms))
        cast = {name: tf.cast(tf.reshape(value, (-1,)), tf.float32) for name, value in terms.items()}
        return self.combine(cast, tf.cast(tf.reshape(uncertainty, (-1,)), tf.float32))

    def combine(self, terms: dict[str, tf.Tensor], uncertainty: tf.Tensor):
        raise NotImplementedError


@keras.saving.register_keras_serializable(package=_PACKAGE)
class ULWRWeighting(LossWeighting):
    """The released uncertainty-driven weighting (see :func:`ulwr_weights`), plus the penalty.

    ``total = w1·L_bce + w2·L_prob [+ w3·L_feat] + β·Σ_i (w_i − mean w)² [+ Σ other terms]``
    per image; the returned weights are ``{"bce", "prob"[, "feat"], "penalty", other: 1}``.
    Needs ``bce`` and ``prob``; ``feat`` is optional (its weight is then 0 before
    normalising); terms outside the released three are added with weight 1.
    """

    def __init__(self, beta: float = 0.1, w3: float = 0.4, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        for name, value in (("beta", beta), ("w3", w3)):
            if not (math.isfinite(float(value)) and float(value) >= 0):
                raise MedistillError(f"ULWR weighting: {name} must be a finite number >= 0, got {value!r}")
        self.beta = float(beta)
        self.w3 = float(w3)

    def check_terms(self, names: Sequence[str]) -> None:
        unknown = sorted(set(names) - set(TERM_NAMES))
        if not {"bce", "prob"} <= set(names) or unknown:
            raise MedistillError(f"ULWR weighting needs the terms bce, prob (feat and the terms "
                                 f"{', '.join(TERM_NAMES[2:5])} are optional); got {sorted(names)}")

    def combine(self, terms: dict[str, tf.Tensor], uncertainty: tf.Tensor):
        has_feature = "feat" in terms
        weights = ulwr_weights(uncertainty, self.w3, has_feature)
        penalty = tf.stop_gradient(ulwr_penalty(weights, self.beta, has_feature))
        names = list(RELEASED_TERMS if has_feature else RELEASED_TERMS[:2])
        total = penalty
        for i, name in enumerate(names):
            total = total + weights[:, i] * terms[name]
        report = {name: weights[:, i] for i, name in enumerate(names)}
        for name in sorted(set(terms) - set(RELEASED_TERMS)):
            total = total + terms[name]
            report[name] = tf.ones_like(uncertainty)
        report["penalty"] = penalty
        return total, report

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "beta": self.beta, "w3": self.w3}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class LearnedWeighting(LossWeighting):
    """Kendall et al. (2018): ``Σ_i exp(−s_i)·L_i + s_i``, one trainable ``s_i`` per term.

    The ``s_i`` start at 0 (all weights 1) and are named ``log_var_<term>``; add
    :attr:`trainable_variables` to the optimised variables. The reported weight of a term
    is ``exp(−s_i)`` broadcast to ``(B,)``.
    """

    def __init__(self, names: Sequence[str], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.names = [str(n) for n in names]
        if not self.names or len(set(self.names)) != len(self.names):
            raise MedistillError(f"learned weighting needs distinct term names, got {list(names)!r}")
        for n in self.names:  # one attribute each: tf.train.Checkpoint does not see a list of them
            setattr(self, f"log_var_{n}", self.add_weight(name=f"log_var_{n}", shape=(),
                                                          initializer="zeros", dtype="float32"))
        self.built = True

    @property
    def log_vars(self) -> list:
        """The ``s_i``, in the order of :attr:`names`."""
        return [getattr(self, f"log_var_{n}") for n in self.names]

    def expected_terms(self) -> tuple[str, ...]:
        return tuple(self.names)

    def combine(self, terms: dict[str, tf.Tensor], uncertainty: tf.Tensor):
        total = tf.zeros_like(uncertainty)
        report = {}
        for name, s in zip(self.names, self.log_vars):
            s = tf.convert_to_tensor(s)
            total = total + tf.exp(-s) * terms[name] + s
            report[name] = tf.fill(tf.shape(uncertainty), tf.stop_gradient(tf.exp(-s)))
        return total, report

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "names": list(self.names)}


@keras.saving.register_keras_serializable(package=_PACKAGE)
class FixedWeighting(LossWeighting):
    """``Σ_i w_i·L_i`` with constant weights, e.g. ``FixedWeighting({"bce": 1, "prob": 1})``.

    The terms must be exactly the keys of ``weights``.
    """

    def __init__(self, weights: Mapping[str, float], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.weights_by_term = _checked_fixed(weights, "fixed weighting")

    def expected_terms(self) -> tuple[str, ...]:
        return tuple(self.weights_by_term)

    def combine(self, terms: dict[str, tf.Tensor], uncertainty: tf.Tensor):
        total = tf.zeros_like(uncertainty)
        report = {}
        for name, weight in self.weights_by_term.items():
            total = total + weight * terms[name]
            report[name] = tf.fill(tf.shape(uncertainty), weight)
        return total, report

    def get_config(self) -> dict[str, Any]:
        return {**super().get_config(), "weights": dict(self.weights_by_term)}


def _checked_fixed(weights: Any, where: str) -> dict[str, float]:
    if not isinstance(weights, Mapping) or not weights:
        raise MedistillError(f"{where}: weights must be a non-empty mapping term -> number, got {weights!r}")
    checked = {}
    for name, value in weights.items():
        try:
            number = float(value)
        except (TypeError, ValueError):
            number = math.nan
        if not (math.isfinite(number) and number >= 0):
            raise MedistillError(f"{where}: the weight of {name!r} must be a finite number >= 0, got {value!r}")
        checked[str(name)] = number
    return checked


def build_weighting(name: str, term_names: Sequence[str], fixed: Mapping[str, float] | None = None
                    ) -> LossWeighting:
    """The weighting ``name`` ("ulwr", "learned", "fixed") for the terms ``term_names``.

    ``term_names`` are names from :data:`TERM_NAMES`, each once. ``fixed`` gives the
    constants of "fixed" (default: 1.0 for every term); its keys must cover ``term_names``
    (a ``feat`` weight is dropped when there is no feature term) and name known terms only.
    """
    names = [str(n) for n in term_names]
    unknown = sorted(set(names) - set(TERM_NAMES))
    if unknown or not names or len(set(names)) != len(names):
        raise MedistillError(f"loss terms must be distinct names from {', '.join(TERM_NAMES)}, got {names}")
    if name == "ulwr":
        weighting = ULWRWeighting()
        weighting.check_terms(names)
        return weighting
    if name == "learned":
        return LearnedWeighting(names)
    if name == "fixed":
        given = _checked_fixed(fixed if fixed is not None else dict.fromkeys(names, 1.0), "fixed loss weights")
        bad = sorted(set(given) - set(TERM_NAMES))
        missing = sorted(set(names) - set(given))
        if bad or missing:
            raise MedistillError(f"fixed loss weights: unknown term(s) {bad} / missing weight(s) for {missing}; "
                                 f"give one number per term of {names}, e.g. --fixed-weights "
                                 "'{\"bce\": 1, \"prob\": 1}'")
        return FixedWeighting({n: given[n] for n in names})
    raise MedistillError(f"unknown loss weighting {name!r}; choose one of {list(WEIGHTINGS)}")
