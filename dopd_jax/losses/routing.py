"""Routing rules: per-token statistics -> regimes (methods.md section 4).

A rule takes per-token statistics ``[B, T]`` (captured from a run or computed
by ``privilege_stats``) and returns 0/1 regime masks that partition the valid
tokens, plus the batch reference values it compared against. Rules are pure
array functions, so they can be prototyped in a notebook on saved statistics.
What each regime trains towards (target, divergence, weight) is data in
``DOPD_REGIME_SPECS``, which the DOPD loss reads.
"""

import dataclasses

import jax
import jax.numpy as jnp

from dopd_jax.losses import divergences

REGIMES = ("LH", "LL", "HT", "HS")
REF_KEYS = ("A_bar", "qS_bar", "qT_bar")


def _percentile_linear(x_BT, valid_BT, q):
    """NumPy-default (linear) q-quantile of the valid entries; inf if none."""
    n = jnp.sum(valid_BT)
    sorted_N = jnp.sort(jnp.where(valid_BT, x_BT, jnp.inf).ravel())
    virtual = (n - 1).astype(jnp.float32) * jnp.float32(q)
    lo = jnp.clip(jnp.floor(virtual), 0, jnp.maximum(n - 1, 0)).astype(jnp.int32)
    hi = jnp.minimum(lo + 1, jnp.maximum(n - 1, 0))
    gamma = virtual - lo.astype(jnp.float32)
    a, b = sorted_N[lo], sorted_N[hi]
    # numpy's _lerp: interpolate from the nearer end for stability.
    diff = b - a
    return jnp.where(gamma >= 0.5, b - diff * (1 - gamma), a + diff * gamma)


def percentile(x_BT, valid_BT, q):
    """NumPy-default (linear) q-quantile of the valid entries (stop-gradient)."""
    x_BT = jax.lax.stop_gradient(x_BT).astype(jnp.float32)
    return _percentile_linear(x_BT, jnp.asarray(valid_BT) > 0, q)


def trimmed_mean(x_BT, mask_BT, outlier_fraction=0.05):
    """Mean of the valid values at or below their (1 - outlier_fraction) quantile.

    The quantile is NumPy's default linear-interpolation percentile over the
    valid tokens only; tokens strictly above it are excluded from the mean.
    Computed under stop-gradient.

    Args:
      x_BT: per-token values.
      mask_BT: bool or float (> 0 = valid).
      outlier_fraction: share of the top tail to drop, in [0, 1); 0 gives the
        plain mean of the valid tokens.

    Returns:
      float32 scalar; 0 if no token is valid.
    """
    if not 0.0 <= outlier_fraction < 1.0:
        raise ValueError(f"outlier_fraction must be in [0, 1), got {outlier_fraction}")
    if x_BT.shape != mask_BT.shape:
        raise ValueError(f"values {x_BT.shape} and mask {mask_BT.shape} must match")
    x_BT = jax.lax.stop_gradient(x_BT).astype(jnp.float32)
    valid_BT = mask_BT > 0
    threshold = _percentile_linear(x_BT, valid_BT, 1.0 - outlier_fraction)
    keep_BT = valid_BT & (x_BT <= threshold)
    if outlier_fraction == 0.0:
        keep_BT = valid_BT  # the maximum is never excluded, even if it is inf
    total = jnp.sum(jnp.where(keep_BT, x_BT, 0.0))
    count = jnp.sum(keep_BT)
    return jnp.where(count > 0, total / jnp.maximum(count, 1), 0.0)


def privilege_stats(priv_student_logits_BTV, teacher_logits_BTV, tokens_BT, chunk_size=None):
    """Sampled-token statistics of the two privileged passes (stop-gradient).

    Args:
      priv_student_logits_BTV: privileged student logits S(.|x, p, y<n).
      teacher_logits_BTV: privileged teacher logits T(.|x, p, y<n).
      tokens_BT: sampled response tokens y.
      chunk_size: positions per chunk (None: one pass).

    Returns:
      dict of float32 ``[B, T]``: ``gap`` = |log q_T - log q_S|, ``qS``,
      ``qT`` (probabilities), ``logqS``, ``logqT``.
    """
    logqS_BT = divergences.sampled_logprobs(
        jax.lax.stop_gradient(priv_student_logits_BTV), tokens_BT, chunk_size
    )
    logqT_BT = divergences.sampled_logprobs(
        jax.lax.stop_gradient(teacher_logits_BTV), tokens_BT, chunk_size
    )
    return {
        "gap": jnp.abs(logqT_BT - logqS_BT),
        "qS": jnp.exp(logqS_BT),
        "qT": jnp.exp(logqT_BT),
        "logqS": logqS_BT,
        "logqT": logqT_BT,
    }


def _given_refs(refs, gap_threshold):
    """Validates caller-supplied reference values; float32 scalars under stop-gradient."""
    if gap_threshold is not None and gap_threshold != "batch_mean":
        raise ValueError(
            "give either refs or gap_threshold, not both: refs already "
            f"fixes A_bar (got gap_threshold={gap_threshold!r})"
        )
    if not isinstance(refs, dict) or set(refs) != set(REF_KEYS):
        got = sorted(refs) if isinstance(refs, dict) else type(refs).__name__
        raise ValueError(f"refs must be a dict with keys {REF_KEYS}, got {got}")
    out = {k: jax.lax.stop_gradient(jnp.asarray(refs[k], jnp.float32)) for k in REF_KEYS}
    bad = [k for k, v in out.items() if v.shape != ()]
    if bad:
        raise ValueError(f"refs {bad} must be scalars, got shapes {[out[k].shape for k in bad]}")
    return out


def dopd_regimes(
    gap_BT, qS_BT, qT_BT, mask_BT, *, outlier_fraction=0.05, gap_threshold=None, refs=None
):
    """DOPD's advantage-gated routing (methods.md section 4 table).

    LH: A < A_bar and qS + qT >= qS_bar + qT_bar;  LL: A < A_bar otherwise;
    HT: A >= A_bar and qT >= qS;                    HS: A >= A_bar otherwise.

    Args:
      gap_BT: privilege advantage gap A = |log qT - log qS|.
      qS_BT: privileged student probability of the sampled token.
      qT_BT: privileged teacher probability of the sampled token.
      mask_BT: bool or float (> 0 = valid response token).
      outlier_fraction: tail share dropped from each trimmed batch mean.
      gap_threshold: None (or "batch_mean") for the trimmed batch mean A_bar,
        else a fixed float.
      refs: None (compute the reference values from these tokens), or a dict
        ``{"A_bar", "qS_bar", "qT_bar"}`` of scalars computed elsewhere, e.g.
        over the whole batch when this call sees one micro-batch; it replaces
        all three trimmed means (so ``gap_threshold`` must then be None).

    Returns:
      (regimes, refs): regimes maps "LH", "LL", "HT", "HS" to float32 0/1
      ``[B, T]`` masks partitioning the valid tokens; refs maps "A_bar",
      "qS_bar", "qT_bar" to float32 scalars.
    """
    if not gap_BT.shape == qS_BT.shape == qT_BT.shape == mask_BT.shape:
        raise ValueError(
            f"gap {gap_BT.shape}, qS {qS_BT.shape}, qT {qT_BT.shape} and mask "
            f"{mask_BT.shape} must have the same [B, T] shape"
        )
    gap_BT, qS_BT, qT_BT = (
        jax.lax.stop_gradient(x).astype(jnp.float32) for x in (gap_BT, qS_BT, qT_BT)
    )
    if refs is not None:
        refs = _given_refs(refs, gap_threshold)
    else:
        refs = _batch_refs(gap_BT, qS_BT, qT_BT, mask_BT, outlier_fraction, gap_threshold)
    a_bar = refs["A_bar"]
    valid_BT = mask_BT > 0
    # Complementary conditions (not two independent comparisons), so a NaN
    # statistic still lands in exactly one regime.
    small_BT = gap_BT < a_bar
    confident_BT = qS_BT + qT_BT >= refs["qS_bar"] + refs["qT_bar"]
    teacher_ahead_BT = qT_BT >= qS_BT
    regimes = {
        "LH": valid_BT & small_BT & confident_BT,
        "LL": valid_BT & small_BT & ~confident_BT,
        "HT": valid_BT & ~small_BT & teacher_ahead_BT,
        "HS": valid_BT & ~small_BT & ~teacher_ahead_BT,
    }
    return {k: v.astype(jnp.float32) for k, v in regimes.items()}, refs


def _batch_refs(gap_BT, qS_BT, qT_BT, mask_BT, outlier_fraction, gap_threshold):
    """A_bar (trimmed mean or fixed), qS_bar, qT_bar over the valid tokens given."""
    if gap_threshold is None or gap_threshold == "batch_mean":
        a_bar = trimmed_mean(gap_BT, mask_BT, outlier_fraction)
    elif isinstance(gap_threshold, str):
        raise ValueError(
            f"gap_threshold must be None, 'batch_mean' or a number, got {gap_threshold!r}"
        )
    else:
        a_bar = jnp.asarray(gap_threshold, jnp.float32)
    return {
        "A_bar": a_bar,
        "qS_bar": trimmed_mean(qS_BT, mask_BT, outlier_fraction),
        "qT_bar": trimmed_mean(qT_BT, mask_BT, outlier_fraction),
    }


ROUTING_RULES = {"dopd": dopd_regimes}


@dataclasses.dataclass(frozen=True)
class RegimeSpec:
    """What one regime trains the student towards.

    target: "teacher" (privileged teacher) or "priv_student".
    kind: divergence name in ``divergences.DIVERGENCES``.
    top_k: True restricts to the target's top-K ids, False is full vocabulary.
    weight_arg: name of the dopd_loss argument giving the weight, or None.
    default_weight: the paper's weight (used when weight_arg is None).
    beta: JSD mixture weight (ignored by the KLs).
    """

    target: str
    kind: str
    top_k: bool
    weight_arg: str | None
    default_weight: float
    beta: float = 0.5


DOPD_REGIME_SPECS = {
    "LH": RegimeSpec("teacher", "rkl", True, "beta_light", 0.6),
    "LL": RegimeSpec("priv_student", "rkl", True, "beta_weak", 0.3),
    "HT": RegimeSpec("teacher", "jsd", False, None, 1.0, beta=0.5),
    "HS": RegimeSpec("priv_student", "rkl", True, "beta_light", 0.6),
}


GRANULARITIES = ("full", "topk", "sampled")


@dataclasses.dataclass(frozen=True)
class Regime:
    """What one regime's tokens train towards, with its weight resolved.

    target: "teacher" (privileged teacher) or "priv_student".
    kind: "fkl" | "rkl" | "jsd".
    granularity: "full" (whole vocabulary), "topk" (the target's top-K) or
      "sampled" (the sampled token only; fkl / rkl).
    weight: the regime's loss weight (0 drops its tokens from the loss).
    """

    target: str
    kind: str
    granularity: str
    weight: float
    beta: float = 0.5


def dopd_regime_table(beta_light=0.6, beta_weak=0.3, hs_target="priv_student") -> dict:
    """The paper's table (``DOPD_REGIME_SPECS``) with these weights and HS target."""
    knobs = {"beta_light": beta_light, "beta_weak": beta_weak}
    table = {}
    for name, s in DOPD_REGIME_SPECS.items():
        table[name] = Regime(
            target=hs_target if name == "HS" else s.target,
            kind=s.kind,
            granularity="topk" if s.top_k else "full",
            weight=float(knobs.get(s.weight_arg, s.default_weight)),
            beta=s.beta,
        )
    return table
