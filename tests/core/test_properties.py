"""Property-based tests: every public loss over a drawn input space, against the plain
formulas of ``reference_losses`` and torch's own ``F.cross_entropy``.

Drawn: the number of classes, the options, shapes (empty batches, one row, extra leading
dimensions for ``(..., C)`` losses, per-pixel ``(N, C, d1, ...)`` for the softmax ones),
labels with background and ``ignore_index``, per-sample weights with zeros, reductions,
``background_index``, ``avg_factor``, logits up to ±100, and non-finite values in rows
that are dropped (ignored or weighing 0) and in rows that count. Every batch is run for
one to three steps, so the statistics-driven factors of the stateful losses change
between steps.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any, Protocol

import pytest
import torch
import torch.nn.functional as F
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from reference_losses import (
    RefEFL,
    RefEQFL,
    RefEQLSigmoid,
    RefEQLSoftmax,
    RefSigmoidEQL,
    RefSoftmaxEQL,
    class_balanced_weights_ref,
    class_last,
    close,
    cross_entropy_ref,
    efl_ref,
    eqfl_ref,
    eql_sigmoid_ref,
    federated_ref,
    log_prior_ref,
    seesaw_log_factors_ref,
    sigmoid_eql_ref,
    split_by_target,
)
from torch import Tensor, nn

from eqlosses import (
    EQL,
    BalancedSoftmax,
    ClassBalancedLoss,
    EqualizedFocalLoss,
    EqualizedQualityFocalLoss,
    FederatedLoss,
    FocalLoss,
    SeesawLoss,
    SigmoidEQL,
    SoftmaxEQL,
    StatisticsLoss,
    functional,
)

# Reproducible in CI: the examples follow from each test's name, and no example database
# carries failures from one run to the next.
settings.register_profile(
    "eqlosses-properties",
    derandomize=True,
    database=None,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
PROFILE = settings.get_profile("eqlosses-properties")


def examples(count: int) -> settings:
    return settings(PROFILE, max_examples=count)


F64 = torch.float64
LOW_DTYPES = [torch.float32, torch.float16, torch.bfloat16]
ALL_DTYPES = [F64, *LOW_DTYPES]

REDUCTIONS = st.sampled_from(["mean", "sum", "none"])
LOSS_WEIGHTS = st.sampled_from([1.0, 0.5, 2.0])
# in range of the labels too: a label equal to ignore_index is ignored, whatever it is
IGNORE_INDICES = st.sampled_from([-100, -1, 0, 255])
BACKGROUND_INDICES = st.sampled_from(["last", "first"])
CLASSES = st.integers(1, 5)

LOGITS = st.one_of(st.sampled_from([-100.0, 100.0, 0.0]), st.floats(-100.0, 100.0, allow_nan=False))
POISON = st.sampled_from([math.nan, math.inf, -math.inf, 1e30, -1e30])
NON_FINITE = st.sampled_from([math.nan, math.inf, -math.inf])
WEIGHTS = st.one_of(st.just(0.0), st.floats(0.25, 4.0))
UNIT = st.one_of(st.sampled_from([0.0, 1.0]), st.floats(0.0, 1.0))


# ------------------------------------------------------------------------ the batches


@dataclass(frozen=True)
class Batch:
    """One step's inputs. ``logits``/``target``/``score`` are what the loss gets: dropped
    rows (``~kept``) may hold anything there. ``clean``/``clean_target``/``clean_score``
    are what the oracle gets: the same with the dropped rows (and the scores nothing
    reads) set to 0."""

    logits: Tensor
    clean: Tensor
    target: Tensor
    clean_target: Tensor
    kept: Tensor
    weight: Tensor | None
    score: Tensor | None
    clean_score: Tensor | None
    avg_factor: float | Tensor | None

    @property
    def rows(self) -> int:
        return self.kept.numel()

    def rounded(self, dtype: torch.dtype) -> Batch:
        """The oracle's view of this batch given to a loss in the low-precision ``dtype``:
        the logits rounded to ``dtype``, the other floats to float32, which the loss
        computes in."""

        def f32(t: Tensor | None) -> Tensor | None:
            return None if t is None else t.float().double()

        soft = self.clean_target.is_floating_point()
        return replace(
            self,
            clean=self.clean.to(dtype).double(),
            clean_target=f32(self.clean_target) if soft else self.clean_target,
            weight=f32(self.weight),
            clean_score=f32(self.clean_score),
        )


def rows_shapes(layout: str) -> st.SearchStrategy[tuple[int, ...]]:
    """Shapes of the rows (the logits without the class dimension)."""
    if layout == "rows":
        return st.tuples(st.integers(0, 6))
    if layout == "pixels":
        return st.one_of(
            st.tuples(st.integers(0, 6)),
            st.tuples(st.integers(0, 3), st.integers(0, 3)),
            st.tuples(st.integers(0, 2), st.integers(1, 3), st.integers(0, 2)),
        )
    return st.one_of(
        st.just(()),
        st.tuples(st.integers(0, 8)),
        st.tuples(st.integers(0, 3), st.integers(0, 4)),
        st.tuples(st.integers(1, 2), st.integers(0, 2), st.integers(0, 3)),
    )


def from_rows(rows: Tensor, shape: tuple[int, ...], layout: str) -> Tensor:
    """``(M, K)`` rows -> the loss's layout: ``(*shape, K)``, or ``(N, K, d1, ...)``."""
    full = rows.reshape(*shape, rows.shape[-1])
    return full.movedim(-1, 1).contiguous() if layout == "pixels" else full


def to_rows(tensor: Tensor, layout: str) -> Tensor:
    """The inverse of :func:`from_rows`: ``(M, K)``."""
    if layout == "pixels":
        return class_last(tensor)
    return tensor.reshape(-1, tensor.shape[-1])


@st.composite
def batches(
    draw: st.DrawFn,
    case: Case,
    num_classes: int,
    options: dict[str, Any],
    *,
    hard_labels: bool = False,
    weighted: bool | None = None,
) -> Batch:
    C = num_classes
    columns = C + case.extra_columns(options)
    soft = case.float_targets and not hard_labels and draw(st.booleans(), label="float target")
    layout = "rows" if soft and case.layout == "pixels" else case.layout
    shape = draw(rows_shapes(layout), label="rows shape")
    M = math.prod(shape)
    values = draw(st.lists(LOGITS, min_size=M * columns, max_size=M * columns))
    clean = torch.tensor(values, dtype=F64).reshape(M, columns)
    ignore_index = options["ignore_index"]

    if soft:
        entries = draw(st.lists(UNIT, min_size=M * C, max_size=M * C), label="float target")
        labels = torch.tensor(entries, dtype=F64).reshape(M, C)
        labelled = torch.ones(M, dtype=torch.bool)
        has_positive = labelled
    else:
        # kinds: a class in [0, C), background (C) where the loss has one, ignored (top)
        top = C + 1 if case.background else C
        kinds = torch.tensor(
            draw(st.lists(st.integers(0, top), min_size=M, max_size=M)), dtype=torch.long
        )
        labels = kinds
        if options.get("background_index") == "first":
            labels = torch.where(kinds == C, 0, kinds + 1)
        labels = torch.where(kinds == top, ignore_index, labels)
        labelled = labels != ignore_index
        has_positive = labelled & (kinds < C)

    if weighted is None:
        weighted = draw(st.booleans(), label="weighted")
    weight = None
    kept = labelled
    if weighted:
        weight = torch.tensor(draw(st.lists(WEIGHTS, min_size=M, max_size=M)), dtype=F64)
        kept = labelled & (weight != 0)
    has_positive = has_positive & kept

    logits = clean.clone()
    target = labels.clone()
    clean_target = labels.clone()
    for row in (~kept).nonzero().flatten().tolist():
        logits[row] = draw(POISON, label="dropped row holds")
        clean[row] = 0.0
        if soft:
            target[row] = draw(st.sampled_from([math.nan, 5.0, -1.0]))
            clean_target[row] = 0.0

    score = clean_score = None
    if case.scored:
        score = torch.tensor(draw(st.lists(UNIT, min_size=M, max_size=M)), dtype=F64)
        clean_score = torch.where(has_positive, score, 0.0)
        for row in (~has_positive).nonzero().flatten().tolist():
            score[row] = draw(st.sampled_from([math.nan, -3.0, 7.0, 0.5]))
        score, clean_score = score.reshape(shape), clean_score.reshape(shape)

    avg_factor: float | Tensor | None = None
    if case.avg_factor and options["reduction"] == "mean":
        avg_factor = draw(
            st.one_of(
                st.none(),
                st.floats(0.05, 20.0),
                st.floats(0.05, 20.0).map(lambda v: torch.tensor(v, dtype=F64)),
            ),
            label="avg_factor",
        )

    target_shape = (*shape, C) if soft else shape
    return Batch(
        logits=from_rows(logits, shape, layout),
        clean=from_rows(clean, shape, layout),
        target=target.reshape(target_shape),
        clean_target=clean_target.reshape(target_shape),
        kept=kept.reshape(shape),
        weight=None if weight is None else weight.reshape(shape),
        score=score,
        clean_score=clean_score,
        avg_factor=avg_factor,
    )


# ------------------------------------------------------------------------ the oracles


class Oracle(Protocol):
    def step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        """The loss (with ``loss_weight``) and the gradient of its sum w.r.t. the logits."""
        ...

    def state(self) -> dict[str, Tensor]:
        """What the module's :func:`module_state` must equal after the steps so far."""
        ...


class StreamOracle:
    """A stateful reference (``Ref*`` of ``reference_losses``): a step without a row that
    counts is no statistics step, so it leaves the sums and the counter as they were."""

    def __init__(self, stream: Any, call: Callable[[Any, Batch], tuple[Tensor, Tensor]]):
        self.stream, self.call = stream, call

    def step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        s = self.stream
        before = s.pos.clone(), s.neg.clone(), s.updates
        loss, grad = self.call(s, batch)
        if not batch.kept.any():
            s.pos, s.neg, s.updates = before
        return loss, grad

    def state(self) -> dict[str, Tensor]:
        s = self.stream
        return {"pos": s.pos, "neg": s.neg, "updates": torch.tensor(s.updates)}


class FormulaOracle:
    """A stateless reference: ``formula(z, batch)`` is the loss (with ``loss_weight``)."""

    def __init__(self, formula: Callable[[Tensor, Batch], Tensor]):
        self.formula = formula

    def step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        return loss_and_grad(lambda z: self.formula(z, batch), batch.clean)

    def state(self) -> dict[str, Tensor]:
        return {}


def loss_and_grad(formula: Callable[[Tensor], Tensor], logits: Tensor) -> tuple[Tensor, Tensor]:
    """The formula's value at ``logits`` and the autograd gradient of its sum."""
    z = logits.double().requires_grad_(True)
    loss = formula(z)
    (grad,) = torch.autograd.grad(loss.sum(), z, allow_unused=True)
    return loss.detach(), torch.zeros_like(z) if grad is None else grad


def torch_cross_entropy(
    z: Tensor,
    batch: Batch,
    options: dict[str, Any],
    *,
    adjustment: Tensor | None = None,
    sample_factor: Callable[[Tensor], Tensor] | None = None,
) -> Tensor:
    """``F.cross_entropy`` per sample on ``z + adjustment`` (``(C,)`` or ``(M, C)``) times
    the per-sample weight and ``sample_factor(labels)``; 'mean' over the kept samples,
    times ``loss_weight``."""
    rows = class_last(z)
    if adjustment is not None:
        rows = rows + adjustment
    target = batch.clean_target
    if target.is_floating_point():
        per_sample = F.cross_entropy(
            rows, target, reduction="none", label_smoothing=options.get("label_smoothing", 0.0)
        )
    else:
        per_sample = F.cross_entropy(
            rows,
            target.reshape(-1),
            reduction="none",
            ignore_index=options["ignore_index"],
            label_smoothing=options.get("label_smoothing", 0.0),
        )
        if sample_factor is not None:
            labels = torch.where(batch.kept.reshape(-1), target.reshape(-1), 0)
            per_sample = per_sample * sample_factor(labels)
    if batch.weight is not None:
        per_sample = per_sample * batch.weight.reshape(-1)
    per_sample = per_sample * options["loss_weight"]
    if options["reduction"] == "none":
        return per_sample.reshape(batch.kept.shape)
    if options["reduction"] == "sum":
        return per_sample.sum()
    return per_sample.sum() / max(int(batch.kept.sum()), 1)


class SeesawOracle:
    """Seesaw with its cumulative counts: the batch's kept labels are counted first, then
    the loss is the cross-entropy on ``z + log S``."""

    def __init__(self, num_classes: int, options: dict[str, Any]):
        self.options = options
        self.counts = torch.zeros(num_classes, dtype=F64)

    def step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        o, C = self.options, self.counts.numel()
        labels = torch.where(batch.kept, batch.clean_target, C).reshape(-1)
        self.counts += F.one_hot(labels, C + 1)[:, :C].sum(0).double()
        safe = torch.where(labels < C, labels, 0)
        log_s = seesaw_log_factors_ref(
            class_last(batch.clean), safe, self.counts, o["p"], o["q"], o["eps"]
        )
        return loss_and_grad(
            lambda z: torch_cross_entropy(z, batch, o, adjustment=log_s), batch.clean
        )

    def state(self) -> dict[str, Tensor]:
        return {"counts": self.counts}


class FederatedOracle:
    """The federated loss on the class set the module's generator draws: the draw is
    repeated by :func:`~eqlosses.functional.federated_classes` on a generator seeded alike,
    and checked here for what it must hold; the loss is the plain formula on that set."""

    def __init__(self, num_classes: int, options: dict[str, Any]):
        self.options = options
        self.counts = torch.tensor(options["counts"], dtype=F64)
        self.generator = torch.Generator().manual_seed(options["seed"])

    def step(self, batch: Batch) -> tuple[Tensor, Tensor]:
        o, C = self.options, self.counts.numel()
        # a row that weighs 0 counts nowhere: not as a positive class of the step either
        labels = torch.where(batch.kept, batch.clean_target, o["ignore_index"])
        chosen = functional.federated_classes(
            labels,
            self.counts,
            o["num_sample_classes"],
            freq_exponent=o["freq_exponent"],
            generator=self.generator,
            ignore_index=o["ignore_index"],
        )
        present = torch.zeros(C + 1, dtype=torch.bool)
        present[labels[batch.kept].reshape(-1)] = True
        present = present[:C]
        drawable = present | (self.counts > 0)
        assert not (present & ~chosen).any()
        assert not (chosen & ~drawable).any()
        wanted = max(int(present.sum()), min(o["num_sample_classes"], int(drawable.sum())))
        assert int(chosen.sum()) == wanted

        def formula(z: Tensor) -> Tensor:
            loss = federated_ref(
                z,
                batch.clean_target,
                chosen,
                weight=batch.weight,
                reduction=o["reduction"],
                ignore_index=o["ignore_index"],
            )
            return loss * o["loss_weight"]

        return loss_and_grad(formula, batch.clean)

    def state(self) -> dict[str, Tensor]:
        return {}


def module_state(module: nn.Module) -> dict[str, Tensor]:
    if isinstance(module, StatisticsLoss):
        return {
            "pos": module.pos_grad,
            "neg": module.neg_grad,
            "updates": module.statistics.num_updates,
        }
    if isinstance(module, SeesawLoss):
        return {"counts": module.class_counts}
    return {}


# -------------------------------------------------------------------------- the cases


def _common(**extra: st.SearchStrategy[Any]) -> st.SearchStrategy[dict[str, Any]]:
    return st.fixed_dictionaries(
        {
            "reduction": REDUCTIONS,
            "loss_weight": LOSS_WEIGHTS,
            "ignore_index": IGNORE_INDICES,
            **extra,
        }
    )


def _module_options(options: dict[str, Any], *names: str) -> dict[str, Any]:
    return {k: options[k] for k in ("reduction", "loss_weight", "ignore_index", *names)}


def _rare(options: dict[str, Any]) -> Tensor:
    return torch.tensor(options["counts"], dtype=F64) / 10 < options["threshold"]


def _counts(num_classes: int, high: int) -> st.SearchStrategy[list[int]]:
    return st.lists(st.integers(0, high), min_size=num_classes, max_size=num_classes)


@dataclass(frozen=True)
class Case:
    """One public loss: how to draw its options, build it and its oracle, and what
    inputs it takes."""

    options: Callable[[int], st.SearchStrategy[dict[str, Any]]]
    build: Callable[[int, dict[str, Any]], nn.Module]
    oracle: Callable[[int, dict[str, Any]], Oracle]
    layout: str  # "last": (..., C); "rows": (N, C); "pixels": (N, C) or (N, C, d1, ...)
    background: bool  # label C (or 0 with background_index='first') is background
    extra_columns: Callable[[dict[str, Any]], int] = lambda options: 0
    # trailing columns the loss never reads (the federated loss's background column)
    unread_columns: int = 0
    float_targets: bool = False
    scored: bool = False
    avg_factor: bool = False

    def call(self, module: nn.Module, logits: Tensor, batch: Batch) -> Tensor:
        extra = (batch.score,) if self.scored else ()
        kwargs: dict[str, Any] = {"weight": batch.weight}
        if self.avg_factor:
            kwargs["avg_factor"] = batch.avg_factor
        return module(logits, batch.target, *extra, **kwargs)


SIGMOID_EQL = Case(
    options=lambda C: _common(
        gamma=st.sampled_from([12.0, 4.0]),
        mu=st.sampled_from([0.8, 0.3]),
        alpha=st.sampled_from([4.0, 0.0, 1.5]),
        objectness=st.booleans(),
        background_index=BACKGROUND_INDICES,
    ),
    build=lambda C, o: SigmoidEQL(
        C,
        o["gamma"],
        o["mu"],
        o["alpha"],
        **_module_options(o, "objectness", "background_index"),
    ),
    oracle=lambda C, o: StreamOracle(
        RefSigmoidEQL(
            C,
            o["gamma"],
            o["mu"],
            o["alpha"],
            **_module_options(o, "objectness", "background_index"),
        ),
        lambda s, b: s.step(b.clean, b.clean_target, weight=b.weight),
    ),
    layout="last",
    background=True,
    extra_columns=lambda o: int(o["objectness"]),
    float_targets=True,
)


def _split_indicator_form(options: dict[str, Any]) -> dict[str, Any]:
    indicator, form = options.pop("indicator_form")
    return {**options, "indicator": indicator, "form": form}


SOFTMAX_EQL = Case(
    options=lambda C: _common(
        tau=st.sampled_from([1.0, 0.0, 0.5, 2.0]),
        eps=st.sampled_from([1e-4, 1e-2]),
        indicator_form=st.sampled_from(
            [("pos", "canonical"), ("neg", "canonical"), ("pos", "prior"), ("neg", "prior")]
        ),
        label_smoothing=st.sampled_from([0.0, 0.1]),
    ).map(_split_indicator_form),
    build=lambda C, o: SoftmaxEQL(
        C,
        o["tau"],
        o["eps"],
        **_module_options(o, "indicator", "form", "label_smoothing"),
    ),
    oracle=lambda C, o: StreamOracle(
        RefSoftmaxEQL(
            C,
            o["tau"],
            o["eps"],
            **_module_options(o, "indicator", "form", "label_smoothing"),
        ),
        lambda s, b: s.step(b.clean, b.clean_target, weight=b.weight),
    ),
    layout="pixels",
    background=False,
    float_targets=True,
)

EFL = Case(
    options=lambda C: _common(
        gamma_b=st.sampled_from([2.0, 1.0, 0.5]),
        scale=st.sampled_from([8.0, 4.0, 0.0]),
        alpha=st.sampled_from([0.25, 0.5, 1.0]),
        background_index=BACKGROUND_INDICES,
    ),
    build=lambda C, o: EqualizedFocalLoss(
        C, o["gamma_b"], o["scale"], o["alpha"], **_module_options(o, "background_index")
    ),
    oracle=lambda C, o: StreamOracle(
        RefEFL(C, o["gamma_b"], o["scale"], o["alpha"], **_module_options(o, "background_index")),
        lambda s, b: s.step(b.clean, b.clean_target, weight=b.weight, avg_factor=b.avg_factor),
    ),
    layout="last",
    background=True,
    avg_factor=True,
)

EQFL = Case(
    options=lambda C: _common(
        gamma_b=st.sampled_from([2.0, 1.0, 1.5]),
        scale=st.sampled_from([8.0, 4.0, 0.0]),
        background_index=BACKGROUND_INDICES,
    ),
    build=lambda C, o: EqualizedQualityFocalLoss(
        C, o["gamma_b"], o["scale"], **_module_options(o, "background_index")
    ),
    oracle=lambda C, o: StreamOracle(
        RefEQFL(C, o["gamma_b"], o["scale"], **_module_options(o, "background_index")),
        lambda s, b: s.step(
            b.clean, b.clean_target, b.clean_score, weight=b.weight, avg_factor=b.avg_factor
        ),
    ),
    layout="last",
    background=True,
    scored=True,
    avg_factor=True,
)

EQL_SIGMOID = Case(
    options=lambda C: _common(
        counts=_counts(C, 10),
        threshold=st.sampled_from([0.35, 0.0, 1.5]),
        background_index=BACKGROUND_INDICES,
    ),
    build=lambda C, o: EQL(
        o["counts"],
        10,
        o["threshold"],
        generator=torch.Generator().manual_seed(0),  # unused by the sigmoid form
        **_module_options(o, "background_index"),
    ),
    oracle=lambda C, o: StreamOracle(
        RefEQLSigmoid(_rare(o), **_module_options(o, "background_index")),
        lambda s, b: s.step(b.clean, b.clean_target, weight=b.weight),
    ),
    layout="last",
    background=True,
)

EQL_SOFTMAX = Case(
    options=lambda C: _common(
        counts=_counts(C, 10),
        threshold=st.sampled_from([0.35, 0.75, 0.0]),
        drop_prob=st.sampled_from([0.5, 0.0, 1.0]),
        seed=st.integers(0, 2**16),
    ),
    build=lambda C, o: EQL(
        o["counts"],
        10,
        o["threshold"],
        activation="softmax",
        drop_prob=o["drop_prob"],
        generator=torch.Generator().manual_seed(o["seed"]),
        **_module_options(o),
    ),
    oracle=lambda C, o: StreamOracle(
        RefEQLSoftmax(_rare(o), o["drop_prob"], o["seed"], **_module_options(o)),
        lambda s, b: s.step(b.clean, b.clean_target, weight=b.weight),
    ),
    layout="rows",
    background=False,
)


def _focal_formula(C: int, o: dict[str, Any]) -> Oracle:
    def formula(z: Tensor, batch: Batch) -> Tensor:
        loss, _ = efl_ref(
            z,
            batch.clean_target,
            torch.full((C,), o["gamma"], dtype=F64),
            torch.ones(C, dtype=F64),
            alpha=o["alpha"],
            weight=batch.weight,
            reduction=o["reduction"],
            avg_factor=batch.avg_factor,
            ignore_index=o["ignore_index"],
            background_index=o["background_index"],
        )
        return loss * o["loss_weight"]

    return FormulaOracle(formula)


FOCAL = Case(
    options=lambda C: _common(
        gamma=st.sampled_from([2.0, 0.0, 0.5, 3.0]),
        alpha=st.sampled_from([0.25, 0.5]),
        background_index=BACKGROUND_INDICES,
    ),
    build=lambda C, o: FocalLoss(
        C, o["gamma"], o["alpha"], **_module_options(o, "background_index")
    ),
    oracle=_focal_formula,
    layout="last",
    background=True,
    avg_factor=True,
)

BALANCED_SOFTMAX = Case(
    options=lambda C: _common(
        counts=_counts(C, 1000),
        tau=st.sampled_from([1.0, 0.0, 0.5]),
        label_smoothing=st.sampled_from([0.0, 0.1]),
    ),
    build=lambda C, o: BalancedSoftmax(
        o["counts"], o["tau"], **_module_options(o, "label_smoothing")
    ),
    oracle=lambda C, o: FormulaOracle(
        lambda z, b: torch_cross_entropy(
            z, b, o, adjustment=log_prior_ref(torch.tensor(o["counts"]), o["tau"])
        )
    ),
    layout="pixels",
    background=False,
    float_targets=True,
)

CLASS_BALANCED = Case(
    options=lambda C: _common(
        counts=_counts(C, 1000),
        beta=st.sampled_from([0.9999, 0.0, 0.9]),
        label_smoothing=st.sampled_from([0.0, 0.1]),
    ),
    build=lambda C, o: ClassBalancedLoss(
        o["counts"], o["beta"], **_module_options(o, "label_smoothing")
    ),
    oracle=lambda C, o: FormulaOracle(
        lambda z, b: torch_cross_entropy(
            z,
            b,
            o,
            sample_factor=lambda labels: class_balanced_weights_ref(
                torch.tensor(o["counts"]), o["beta"]
            )[labels],
        )
    ),
    layout="pixels",
    background=False,
)

SEESAW = Case(
    options=lambda C: _common(
        p=st.sampled_from([0.8, 0.0, 2.0]),
        q=st.sampled_from([2.0, 0.0, 1.0]),
        eps=st.sampled_from([1e-2, 0.5, 1.0]),
    ),
    build=lambda C, o: SeesawLoss(C, o["p"], o["q"], o["eps"], **_module_options(o)),
    oracle=SeesawOracle,
    layout="pixels",
    background=False,
)

FEDERATED = Case(
    options=lambda C: _common(
        counts=_counts(C, 50),
        num_sample_classes=st.integers(1, C + 1),
        freq_exponent=st.sampled_from([0.5, 0.0, 1.0]),
        seed=st.integers(0, 2**16),
    ),
    build=lambda C, o: FederatedLoss(
        o["counts"],
        o["num_sample_classes"],
        o["freq_exponent"],
        generator=torch.Generator().manual_seed(o["seed"]),
        **_module_options(o),
    ),
    oracle=FederatedOracle,
    layout="last",
    background=True,
    extra_columns=lambda o: 1,
    unread_columns=1,
)

CASES: dict[str, Case] = {
    "sigmoid_eql": SIGMOID_EQL,
    "softmax_eql": SOFTMAX_EQL,
    "efl": EFL,
    "eqfl": EQFL,
    "eql_sigmoid": EQL_SIGMOID,
    "eql_softmax": EQL_SOFTMAX,
    "focal": FOCAL,
    "balanced_softmax": BALANCED_SOFTMAX,
    "class_balanced": CLASS_BALANCED,
    "seesaw": SEESAW,
    "federated": FEDERATED,
}
NAMES = list(CASES)


def run(
    case: Case, module: nn.Module, batch: Batch, dtype: torch.dtype, logits: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """The loss and the gradient of its sum, for ``batch`` (or ``logits``) in ``dtype``."""
    z = (batch.logits if logits is None else logits).to(dtype).requires_grad_(True)
    loss = case.call(module, z, batch)
    loss.sum().backward()
    assert z.grad is not None
    return loss.detach(), z.grad


def dropped_rows_of(grad: Tensor, batch: Batch, case: Case) -> Tensor:
    return to_rows(grad, case.layout)[~batch.kept.reshape(-1)]


def assert_near(actual: Tensor, expected: Tensor, *, rtol: float, atol: float) -> None:
    """``torch.testing.assert_close`` in float64, with the same test done cheaply first."""
    actual, expected = actual.double(), expected.double()
    if actual.shape == expected.shape and torch.allclose(actual, expected, rtol, atol):
        return
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=atol)


def snapshot(module: nn.Module) -> dict[str, Any]:
    """Every buffer, and the extra state (the random generators), copied."""
    return _copied(module.state_dict())


def _copied(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _copied(v) for k, v in value.items()}
    return value.clone() if isinstance(value, Tensor) else value


def assert_same(a: Any, b: Any, where: str = "") -> None:
    if isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for key in a:
            assert_same(a[key], b[key], f"{where}.{key}")
    elif isinstance(a, Tensor):
        assert torch.equal(a, b), where
    else:
        assert a == b, where


# ------------------------------------------------------- value, gradient, statistics


@pytest.mark.parametrize("name", NAMES)
@examples(25)
@given(data=st.data())
def test_the_loss_its_gradient_and_statistics_follow_the_formula(
    name: str, data: st.DataObject
) -> None:
    """float64, 1–3 steps: the loss and its gradient equal the plain formula's (autograd),
    the dropped rows get exactly 0, and the statistics (or counts) equal the reference's
    after every step (the weights of step t depend on the statistics of steps < t)."""
    case = CASES[name]
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    module, oracle = case.build(C, options), case.oracle(C, options)
    for step in range(data.draw(st.integers(1, 3), label="steps")):
        batch = data.draw(batches(case, C, options), label=f"batch {step}")
        loss, grad = run(case, module, batch, F64)
        want_loss, want_grad = oracle.step(batch)
        assert loss.shape == want_loss.shape
        close(loss, want_loss, F64)
        close(grad, want_grad, F64)
        dropped = dropped_rows_of(grad, batch, case)
        assert torch.equal(dropped, torch.zeros_like(dropped))
        state, want_state = module_state(module), oracle.state()
        assert state.keys() == want_state.keys()
        for key in state:
            close(state[key], want_state[key], F64)


@pytest.mark.parametrize("name", NAMES)
@examples(12)
@given(data=st.data())
def test_low_precision_logits_agree_with_the_formula(name: str, data: st.DataObject) -> None:
    """float32/float16/bfloat16 logits: a loss and gradient in that dtype, finite, and
    equal to the float64 formula on the same (rounded) values up to that dtype's
    rounding; two steps, so the statistics of the first feed the second."""
    case = CASES[name]
    dtype = data.draw(st.sampled_from(LOW_DTYPES), label="dtype")
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    module, oracle = case.build(C, options), case.oracle(C, options)
    rtol = {torch.float32: 1e-5, torch.float16: 2e-3, torch.bfloat16: 1.6e-2}[dtype]
    for step in range(2):
        batch = data.draw(batches(case, C, options), label=f"batch {step}")
        loss, grad = run(case, module, batch, dtype)
        want_loss, want_grad = oracle.step(batch.rounded(dtype))
        assert loss.dtype == dtype and grad.dtype == dtype
        assert torch.isfinite(grad).all()
        # a value beyond the dtype's range rounds to inf, as any float16 loss would
        representable = want_loss.abs() <= torch.finfo(dtype).max
        assert torch.isfinite(loss[representable]).all()
        # float32 arithmetic on logits up to 100: an absolute error of a few float32
        # ulps of 100 per summed entry
        scale = 1.0 + float(batch.clean.abs().max()) if batch.rows else 1.0
        terms = batch.clean.numel() if loss.dim() == 0 else 1
        assert_near(
            loss[representable],
            want_loss[representable],
            rtol=rtol,
            atol=2e-5 * scale * max(terms, 1),
        )
        assert_near(grad, want_grad, rtol=rtol, atol=2e-5)
        state, want_state = module_state(module), oracle.state()
        for key in state:
            assert_near(state[key], want_state[key], rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------- dropped rows


@pytest.mark.parametrize("name", NAMES)
@examples(12)
@given(data=st.data())
def test_a_zero_weight_row_is_exactly_an_ignored_row(name: str, data: st.DataObject) -> None:
    """In any dtype, over two steps: zero weights and ignore_index labels (the dropped
    rows' logits holding anything, their weights anything) give bit-identical losses,
    gradients and state."""
    case = CASES[name]
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    by_weight, by_label = case.build(C, options), case.build(C, options)
    for step in range(2):
        batch = data.draw(
            batches(case, C, options, hard_labels=True, weighted=True), label=f"batch {step}"
        )
        assert batch.weight is not None
        zero = batch.weight == 0
        other = data.draw(st.floats(0.25, 4.0), label="weight of an ignored row")
        ignored = replace(
            batch,
            target=torch.where(zero, options["ignore_index"], batch.target),
            weight=torch.where(zero, other, batch.weight),
        )
        got = run(case, by_weight, batch, dtype)
        want = run(case, by_label, ignored, dtype)
        assert torch.equal(got[0], want[0])
        assert torch.equal(got[1], want[1])
        assert_same(snapshot(by_weight), snapshot(by_label))


# --------------------------------------------------------- non-finite rows that count


def poison_kept_entry(batch: Batch, case: Case, data: st.DataObject) -> tuple[Tensor, int, float]:
    """The batch's logits with one entry of a kept row non-finite, that row and value."""
    kept_rows = batch.kept.reshape(-1).nonzero().flatten().tolist()
    row = data.draw(st.sampled_from(kept_rows), label="kept row")
    rows = to_rows(batch.logits, case.layout).clone()
    column = data.draw(st.integers(0, rows.shape[1] - 1 - case.unread_columns), label="column")
    value = data.draw(NON_FINITE, label="value")
    rows[row, column] = value
    return from_rows(rows, tuple(batch.kept.shape), case.layout), row, value


@pytest.mark.parametrize("name", NAMES)
@examples(15)
@given(data=st.data())
def test_a_non_finite_logit_in_a_kept_row(name: str, data: st.DataObject) -> None:
    """A NaN in a kept row makes the loss non-finite; a non-finite loss drops the
    statistics step (sums and counter unchanged) and a finite one is a step as usual;
    either way the sums stay finite, and every other row's loss and gradient are those of
    the same batch without the bad value."""
    case = CASES[name]
    dtype = data.draw(st.sampled_from(ALL_DTYPES), label="dtype")
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    module, twin = case.build(C, options), case.build(C, options)
    warm_up = data.draw(batches(case, C, options), label="first batch")
    run(case, module, warm_up, dtype)
    run(case, twin, warm_up, dtype)

    batch = data.draw(batches(case, C, options), label="batch")
    assume(bool(batch.kept.any()))
    bad_logits, row, value = poison_kept_entry(batch, case, data)
    before = snapshot(module)
    loss, grad = run(case, module, batch, dtype, logits=bad_logits)
    want_loss, want_grad = run(case, twin, batch, dtype)

    finite = bool(torch.isfinite(loss).all())
    if math.isnan(value):
        assert not finite
    if isinstance(module, StatisticsLoss):
        updates = int(before["statistics.num_updates"])
        assert int(module.statistics.num_updates) == updates + int(finite)
        if not finite:
            assert torch.equal(module.pos_grad, before["statistics.pos_grad"])
            assert torch.equal(module.neg_grad, before["statistics.neg_grad"])
        assert torch.isfinite(module.pos_grad).all()
        assert torch.isfinite(module.neg_grad).all()

    others = torch.ones(batch.rows, dtype=torch.bool)
    others[row] = False
    got_rows, want_rows = to_rows(grad, case.layout), to_rows(want_grad, case.layout)
    assert torch.equal(got_rows[others], want_rows[others])
    if options["reduction"] == "none":
        assert torch.equal(
            loss.reshape(batch.rows, -1)[others], want_loss.reshape(batch.rows, -1)[others]
        )


# ------------------------------------------------------------------------ bad inputs


@pytest.mark.parametrize("name", NAMES)
@examples(12)
@given(data=st.data())
def test_a_bad_value_in_a_kept_row_raises_and_changes_nothing(
    name: str, data: st.DataObject
) -> None:
    """A label outside the range, a negative weight, a float target or quality score
    outside its range, in any kept row, or a weight, float target or score that requires
    grad: ValueError naming the argument, and the state (the statistics, counts and
    random generators) as it was."""
    case = CASES[name]
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    module = case.build(C, options)
    run(case, module, data.draw(batches(case, C, options), label="first batch"), F64)
    batch = data.draw(batches(case, C, options, weighted=True), label="batch")
    assume(bool(batch.kept.any()))
    kept_rows = batch.kept.reshape(-1).nonzero().flatten().tolist()
    row = data.draw(st.sampled_from(kept_rows), label="row")
    soft = batch.target.is_floating_point()
    kinds = ["weight", "target"] + (["score"] if case.scored else [])
    kind = data.draw(st.sampled_from(kinds), label="bad argument")
    differentiated = (kind != "target" or soft) and data.draw(st.booleans(), label="grad")
    if differentiated:
        bad = replace(batch, **{kind: getattr(batch, kind).clone().requires_grad_(True)})
    elif kind == "weight":
        assert batch.weight is not None
        weight = batch.weight.reshape(-1).clone()
        weight[row] = data.draw(st.floats(-4.0, -1e-3), label="weight")
        bad = replace(batch, weight=weight.reshape(batch.kept.shape))
    elif kind == "target" and soft:
        target = batch.target.reshape(batch.rows, -1).clone()
        column = data.draw(st.integers(0, C - 1), label="column")
        # multi-hot targets lie in [0, 1]; a softmax's soft targets are >= 0, any size
        outside = [math.nan, -0.5] + ([1.5] if case.layout == "last" else [])
        target[row, column] = data.draw(st.sampled_from(outside), label="target")
        bad = replace(batch, target=target.reshape(batch.target.shape))
    elif kind == "target":
        highest = C if case.background else C - 1
        label = data.draw(
            st.one_of(st.integers(highest + 1, highest + 300), st.integers(-300, -1)).filter(
                lambda v: v != options["ignore_index"]
            ),
            label="label",
        )
        target = batch.target.reshape(-1).clone()
        target[row] = label
        bad = replace(batch, target=target.reshape(batch.kept.shape))
    else:
        labels = batch.target.reshape(-1).tolist()
        positive_rows = [r for r in kept_rows if _is_positive(labels[r], C, options)]
        assume(positive_rows)
        assert batch.score is not None
        score = batch.score.reshape(-1).clone()
        score[data.draw(st.sampled_from(positive_rows))] = data.draw(
            st.sampled_from([math.nan, -0.25, 1.25])
        )
        bad = replace(batch, score=score.reshape(batch.kept.shape))

    before = snapshot(module)
    message = rf"^{kind}: .*requires grad" if differentiated else rf"^{kind}: "
    with pytest.raises(ValueError, match=message):
        run(case, module, bad, F64)
    after = snapshot(module)
    if name == "eql_softmax":
        # its generator is left to test_a_failed_eql_softmax_call_keeps_its_draws
        del before["_extra_state"], after["_extra_state"]
    assert_same(after, before)


def _is_positive(label: int, num_classes: int, options: dict[str, Any]) -> bool:
    if options.get("background_index") == "first":
        return 1 <= label <= num_classes
    return 0 <= label < num_classes


# ---------------------------------------------- functional forms with drawn factors


def _factors(num_classes: int, low: float, high: float) -> st.SearchStrategy[Tensor]:
    return st.lists(st.floats(low, high), min_size=num_classes, max_size=num_classes).map(
        lambda v: torch.tensor(v, dtype=F64)
    )


def _upstream(loss: Tensor, seed: int) -> Tensor:
    """A random upstream gradient for a per-entry or per-sample loss (1 for a scalar)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(loss.shape, generator=gen, dtype=F64) + 0.5


@pytest.mark.parametrize("name", ["sigmoid_eql", "eql_sigmoid", "efl", "eqfl", "softmax_eql"])
@examples(20)
@given(data=st.data())
def test_functional_forms_with_any_factors(name: str, data: st.DataObject) -> None:
    """The stateless forms with per-class factors drawn freely (not only those the
    statistics produce): loss, gradient under a random upstream gradient (per entry or
    sample for 'none'), the statistics increments (the gradient magnitude of the
    unnormalised loss split by target), their normaliser and the number of kept rows."""
    case = CASES[name]
    C = data.draw(CLASSES, label="num_classes")
    options = data.draw(case.options(C), label="options")
    options["loss_weight"] = 1.0
    batch = data.draw(batches(case, C, options), label="batch")
    r, ig = options["reduction"], options["ignore_index"]
    bg = options.get("background_index", "last")
    normaliser: float | None = None

    if name == "sigmoid_eql":
        q, rr = data.draw(_factors(C, 0.0, 6.0)), data.draw(_factors(C, 0.0, 2.0))
        kw = dict(weight=batch.weight, reduction=r, ignore_index=ig, background_index=bg)
        ob = options["objectness"]

        def library(z: Tensor):
            return functional.sigmoid_eql(z, batch.target, q, rr, objectness=ob, **kw)

        def formula(z: Tensor):
            return sigmoid_eql_ref(z, batch.clean_target, q, rr, objectness=ob, **kw)
    elif name == "eql_sigmoid":
        rare_t = torch.tensor(data.draw(st.lists(st.booleans(), min_size=C, max_size=C)))
        kw = dict(weight=batch.weight, reduction=r, ignore_index=ig, background_index=bg)

        def library(z: Tensor):
            return functional.eql_sigmoid(z, batch.target, rare_t, **kw)

        def formula(z: Tensor):
            return eql_sigmoid_ref(z, batch.clean_target, rare_t, **kw)
    elif name in ("efl", "eqfl"):
        focusing = data.draw(_factors(C, 1.0 if name == "eqfl" else 0.0, 10.0))
        weighting = data.draw(_factors(C, 0.0, 5.0))
        kw = dict(weight=batch.weight, reduction=r, ignore_index=ig, background_index=bg)
        scores = (batch.score,) if name == "eqfl" else ()
        clean_scores = (batch.clean_score,) if name == "eqfl" else ()
        alpha = {} if name == "eqfl" else {"alpha": options["alpha"]}
        lib_fn = (
            functional.equalized_quality_focal_loss if scores else functional.equalized_focal_loss
        )
        ref_fn = eqfl_ref if scores else efl_ref

        def library(z: Tensor):
            return lib_fn(
                z, batch.target, *scores, focusing, weighting, avg_factor=batch.avg_factor,
                **alpha, **kw,
            )  # fmt: skip

        def formula(z: Tensor, reduction: str = r):
            loss, y = ref_fn(
                z, batch.clean_target, *clean_scores, focusing, weighting,
                avg_factor=batch.avg_factor, **alpha, **{**kw, "reduction": reduction},
            )  # fmt: skip
            return loss, y

        if r == "mean":
            positives = batch.kept.reshape(-1) & torch.tensor(
                [_is_positive(int(v), C, options) for v in batch.target.reshape(-1)],
                dtype=torch.bool,
            )
            # the count as it is: the floor at 1 applies where the ranks' sums meet
            given_factor = batch.avg_factor
            normaliser = float(positives.sum() if given_factor is None else given_factor)
    else:
        adjustment = data.draw(_factors(C, -5.0, 5.0))
        kw = dict(
            weight=batch.weight,
            reduction=r,
            ignore_index=ig,
            label_smoothing=options["label_smoothing"],
        )
        if batch.target.is_floating_point():
            kw["label_smoothing"] = 0.0  # see test_soft_targets_with_label_smoothing

        def library(z: Tensor):
            return functional.softmax_eql(z, batch.target, adjustment, **kw)

        def formula(z: Tensor, reduction: str = r):
            return cross_entropy_ref(
                z, batch.clean_target, adjustment, **{**kw, "reduction": reduction}
            )

        if r == "mean":
            normaliser = float(batch.kept.sum())

    seed = data.draw(st.integers(0, 2**16), label="upstream seed")
    z = batch.logits.clone().requires_grad_(True)
    out = library(z)
    upstream = _upstream(out.loss, seed)
    out.loss.backward(upstream)
    zr = batch.clean.clone().requires_grad_(True)
    want = formula(zr)
    want[0].backward(upstream)
    assert out.loss.shape == want[0].shape
    close(out.loss, want[0], F64)
    close(z.grad, zr.grad, F64)
    assert float(out.num_samples) == float(batch.kept.sum())

    # increments: sigmoid forms return them unnormalised (the formula gives them too);
    # the others are the gradient magnitude of the unnormalised loss, split by target
    if name in ("sigmoid_eql", "eql_sigmoid"):
        pos, neg = want[1], want[2]
        assert out.normaliser is None
    else:
        zs = batch.clean.clone().requires_grad_(True)
        summed, split_target = formula(zs, "sum")
        (g,) = torch.autograd.grad(summed, zs)
        pos, neg = split_by_target(to_rows(g, case.layout), split_target)
        if normaliser is None:
            assert out.normaliser is None
        else:
            assert out.normaliser is not None
            close(
                torch.as_tensor(out.normaliser, dtype=F64), torch.tensor(normaliser, dtype=F64), F64
            )
    close(out.pos_increment, pos, F64)
    close(out.neg_increment, neg, F64)


# ------------------------------------------------------------ known library defects


@pytest.mark.parametrize("name", ["softmax_eql", "balanced_softmax"])
@settings(PROFILE, max_examples=10)
@given(data=st.data())
def test_soft_targets_with_label_smoothing(name: str, data: st.DataObject) -> None:
    """Soft targets and label_smoothing > 0: the loss is F.cross_entropy's with the same
    label_smoothing (on a fresh module: no adjustment for Softmax-EQL, τ = 0 for Balanced
    Softmax), or the combination is refused naming label_smoothing."""
    C = data.draw(st.integers(2, 5), label="num_classes")
    rows = data.draw(st.integers(1, 6), label="rows")
    smoothing = data.draw(st.floats(0.05, 1.0), label="label_smoothing")
    logits = torch.tensor(
        data.draw(st.lists(LOGITS, min_size=rows * C, max_size=rows * C)), dtype=F64
    ).reshape(rows, C)
    target = torch.tensor(
        data.draw(st.lists(UNIT, min_size=rows * C, max_size=rows * C)), dtype=F64
    ).reshape(rows, C)
    if name == "softmax_eql":
        module: nn.Module = SoftmaxEQL(C, label_smoothing=smoothing)
    else:
        module = BalancedSoftmax([1] * C, tau=0.0, label_smoothing=smoothing)
    try:
        got = module(logits, target)
    except ValueError as error:
        assert str(error).startswith("label_smoothing:")
        return
    close(got, F.cross_entropy(logits, target, label_smoothing=smoothing), F64)


def test_softmax_eql_statistics_stay_non_negative() -> None:
    """Class 0 is the target of every row, so its negative gradient is 0: the sums are of
    magnitudes and never fall below 0, and the 'prior' adjustment of the next step is
    the formula's."""
    module = SoftmaxEQL(2, 0.5, indicator="neg", form="prior")
    reference = RefSoftmaxEQL(2, 0.5, indicator="neg", form="prior")
    first = torch.tensor([[-100.0, -100.0]] * 3 + [[-100.0, 100.0]], dtype=F64)
    second = torch.tensor([[-100.0, -100.0]], dtype=F64)
    for logits in (first, second):
        target = torch.zeros(logits.shape[0], dtype=torch.long)
        loss = module(logits.clone().requires_grad_(True), target)
        want, _ = reference.step(logits, target)
        assert (module.pos_grad >= 0).all() and (module.neg_grad >= 0).all()
        close(loss, want, F64)


@pytest.mark.parametrize("how", ["ignore_index", "zero_weight"])
def test_dropped_rows_of_eql_softmax_with_a_rare_class_0(how: str) -> None:
    """Rare classes 0 and 1 (counts 0 and 1 of 10 images, threshold 0.35), every rare
    non-target entry dropped (drop_prob 1): a dropped row changes nothing, so the loss,
    gradient and statistics are the formula's."""
    seed = 5
    module = EQL(
        [0, 1, 10],
        10,
        0.35,
        activation="softmax",
        drop_prob=1.0,
        generator=torch.Generator().manual_seed(seed),
    )
    reference = RefEQLSoftmax(torch.tensor([True, True, False]), 1.0, seed)
    logits = torch.randn(4, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    target = torch.tensor([1, 2, 1, 2])
    weight = torch.ones(4, dtype=F64)
    if how == "ignore_index":
        target[0] = -100
    else:
        weight[0] = 0.0
    z = logits.clone().requires_grad_(True)
    loss = module(z, target, weight=weight)
    loss.backward()
    want_loss, want_grad = reference.step(logits, target, weight=weight)
    assert torch.isfinite(loss)
    close(loss, want_loss, F64)
    close(z.grad, want_grad, F64)
    assert int(module.statistics.num_updates) == 1
    close(module.pos_grad, reference.pos, F64)
    close(module.neg_grad, reference.neg, F64)


@pytest.mark.parametrize("bad", ["target", "weight"])
def test_a_failed_eql_softmax_call_keeps_its_draws(bad: str) -> None:
    """After a call that raises, the next step draws what it would have drawn without
    that call: the same loss as a module that never saw it."""

    def build() -> nn.Module:
        generator = torch.Generator().manual_seed(2)
        return EQL([10, 1, 1], 10, 0.35, activation="softmax", drop_prob=0.5, generator=generator)

    failed, untouched = build(), build()
    gen = torch.Generator().manual_seed(3)
    logits = torch.randn(6, 3, generator=gen, dtype=F64)
    target = torch.tensor([0, 1, 2, 0, 1, 2])
    kwargs: dict[str, Any] = {}
    if bad == "target":
        wrong = target.clone()
        wrong[2] = 7
        call: tuple[Tensor, Tensor] = (logits, wrong)
    else:
        call = (logits, target)
        kwargs["weight"] = torch.tensor([1.0, -1.0, 1.0, 1.0, 1.0, 1.0], dtype=F64)
    with pytest.raises(ValueError, match=rf"^{bad}: "):
        failed(*call, **kwargs)
    close(failed(logits, target), untouched(logits, target), F64)
