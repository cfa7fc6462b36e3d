"""Array-level distillation losses: ``(logits..., tokens, mask) -> (loss, metrics)``.

Every loss takes logits ``[B, T, V]`` aligned so that ``logits[:, n]``
predicts ``tokens[:, n]`` and a ``mask [B, T]`` of valid response tokens,
treats every non-student input as a constant (stop-gradient inside), and
returns a float32 scalar loss plus a dict of float32 scalar metrics. The
objective is the mean over each sequence's valid tokens, then over sequences
(``divergences.sequence_mean``).
"""

import jax
import jax.numpy as jnp

from dopd_jax.losses import divergences as div_lib
from dopd_jax.losses import policy, routing, rules

HS_TARGETS = ("priv_student", "teacher")


def _check_tokens_mask(student_logits_BTV, tokens_BT, mask_BT):
    bt = student_logits_BTV.shape[:2]
    if tokens_BT.shape != bt or mask_BT.shape != bt:
        raise ValueError(
            f"tokens {tokens_BT.shape} and mask {mask_BT.shape} must "
            f"match the logits' [B, T] = {bt}"
        )


def _masked_mean(x_BT, select_BT):
    """Mean of x over the selected tokens (0 if none)."""
    count = jnp.sum(select_BT)
    return jnp.sum(x_BT * select_BT) / jnp.maximum(count, 1.0)


def _dopd_regime_metrics(regimes, weighted_BT, gap_BT, mask_BT):
    valid_BT = (mask_BT > 0).astype(jnp.float32)
    n_valid = jnp.maximum(jnp.sum(valid_BT), 1.0)
    metrics = {}
    for name, in_r_BT in regimes.items():
        metrics[f"frac_{name}"] = jnp.sum(in_r_BT) / n_valid
        metrics[f"loss_{name}"] = _masked_mean(weighted_BT[name], in_r_BT)
        metrics[f"gap_{name}"] = _masked_mean(gap_BT, in_r_BT)
    return metrics


def dopd_loss(
    student_logits,
    priv_student_logits,
    teacher_logits,
    tokens,
    mask,
    *,
    top_k=128,
    beta_light=0.6,
    beta_weak=0.3,
    outlier_fraction=0.05,
    topk_mode="renormalize",
    hs_target="priv_student",
    gap_threshold=None,
    chunk_size=None,
    refs=None,
    rule=None,
    extra_stats=None,
    regime_table=None,
    token_weights=None,
):
    """Dual on-policy distillation loss (methods.md section 4; design contract 2).

    Args:
      student_logits: ``[B, T, V]`` student S(.|x, y<n); receives gradients.
      priv_student_logits: ``[B, T, V]`` privileged student S(.|x, p, y<n).
      teacher_logits: ``[B, T, V]`` privileged teacher T(.|x, p, y<n).
      tokens: ``[B, T]`` sampled response tokens.
      mask: ``[B, T]`` bool/float, valid response tokens.
      top_k: K of the top-K reverse-KL regimes (clamped to V).
      beta_light: weight of LH and HS.
      beta_weak: weight of LL.
      outlier_fraction: tail share dropped from the trimmed batch means.
      topk_mode: "renormalize" or "generalized" (divergences.token_divergence).
      hs_target: target of HS, "priv_student" (paper) or "teacher".
      gap_threshold: None (trimmed batch mean A_bar) or a fixed float.
      chunk_size: positions per chunk for the [B, T, V] work (None: one pass).
      refs: None (reference values from this batch), or a dict of scalars
        ``{"A_bar", "qS_bar", "qT_bar"}`` computed elsewhere (e.g. over the
        whole batch when this call sees one micro-batch; see
        ``routing.dopd_regimes``); then gap_threshold must be None.
      rule: None (the paper's ``routing.dopd_regimes``) or a routing rule
        ``rule(stats, mask, *, refs, outlier_fraction, gap_threshold) ->
        (regimes, refs)`` (``losses.rules``); its refs may hold other keys.
      extra_stats: more ``[B, T]`` statistics for the rule (e.g. ``skill``).
      regime_table: None (the paper's table with beta_light / beta_weak /
        hs_target) or ``{regime: routing.Regime}``: each regime's target,
        divergence, granularity (full / topk / sampled) and weight.
      token_weights: optional ``[B, T]`` stop-gradient per-token multipliers
        (e.g. the wrong-hint contrast guardrail's cut).

    Returns:
      (loss, metrics): loss float32 scalar; metrics has frac_/loss_/gap_ per
      regime, A_bar, qS_bar, qT_bar, gap_mean, kl_priv_teacher,
      kl_priv_student (float32 scalars).
    """
    _check_dopd_args(
        student_logits,
        priv_student_logits,
        teacher_logits,
        tokens,
        mask,
        top_k,
        topk_mode,
        hs_target,
    )
    targets = {
        "teacher": jax.lax.stop_gradient(teacher_logits),
        "priv_student": jax.lax.stop_gradient(priv_student_logits),
    }

    # The gap and q's come from the two PRIVILEGED passes, never the student.
    stats = routing.privilege_stats(targets["priv_student"], targets["teacher"], tokens, chunk_size)
    stats.update(extra_stats or {})
    regimes, refs = (rule or rules.dopd)(
        stats, mask, refs=refs, outlier_fraction=outlier_fraction, gap_threshold=gap_threshold
    )
    table = regime_table or routing.dopd_regime_table(beta_light, beta_weak, hs_target)
    divs = _regime_divergences(student_logits, targets, tokens, table, top_k, topk_mode, chunk_size)
    weighted = {name: r.weight * divs[name] for name, r in table.items()}
    # where, not a product: an inf divergence outside its regime must not leak.
    per_token_BT = sum(jnp.where(regimes[r] > 0, weighted[r], 0.0) for r in table)
    if token_weights is not None:
        per_token_BT = per_token_BT * jax.lax.stop_gradient(token_weights)
    loss = div_lib.sequence_mean(per_token_BT, mask)

    logp_BT = jax.lax.stop_gradient(div_lib.sampled_logprobs(student_logits, tokens, chunk_size))
    metrics = _dopd_regime_metrics(regimes, jax.lax.stop_gradient(weighted), stats["gap"], mask)
    metrics.update(refs)
    metrics.update(_privilege_metrics(stats, logp_BT, mask))
    return loss, metrics


def _regime_divergences(student_logits, targets, tokens, table, top_k, topk_mode, chunk_size):
    """Per-token divergence of every regime (zeros for weight-0 regimes). Regimes
    sharing a divergence compute it once; the full and top-K ones in one chunked
    pass, so the backward pass holds one [B, T, V] student-gradient buffer."""
    key = lambda r: f"{r.target}/{r.kind}/{r.granularity}/{r.beta}"  # noqa: E731
    live = {name: r for name, r in table.items() if r.weight != 0}
    requests = {
        key(r): (r.target, r.kind, r.beta, top_k if r.granularity == "topk" else None)
        for r in live.values()
        if r.granularity != "sampled"
    }
    divs = (
        div_lib.token_divergences(
            student_logits, targets, requests, topk_mode=topk_mode, chunk_size=chunk_size
        )
        if requests
        else {}
    )
    for r in live.values():
        if r.granularity == "sampled" and key(r) not in divs:
            divs[key(r)] = policy.sampled_divergence_tokens(
                student_logits, targets[r.target], tokens, kind=r.kind, chunk_size=chunk_size
            )
    zero = jnp.zeros(tokens.shape, jnp.float32)
    return {name: divs[key(r)] if name in live else zero for name, r in table.items()}


def _check_dopd_args(
    student_logits, priv_student_logits, teacher_logits, tokens, mask, top_k, topk_mode, hs_target
):
    """dopd_loss's argument checks (ValueError naming the problem, before tracing)."""
    div_lib.check_top_k(top_k, allow_none=False)
    if hs_target not in HS_TARGETS:
        raise ValueError(f"hs_target must be one of {HS_TARGETS}, got {hs_target!r}")
    div_lib.check_divergence_args("rkl", 0.5, top_k, topk_mode)
    div_lib.check_same_shape(student_logits, priv_student_logits, "priv_student")
    div_lib.check_same_shape(student_logits, teacher_logits, "teacher")
    _check_tokens_mask(student_logits, tokens, mask)


def _privilege_metrics(stats, logp_BT, mask_BT) -> dict:
    """Mean gap and sampled-token KLs of the student to both privileged passes."""
    return {
        "gap_mean": div_lib.token_mean(stats["gap"], mask_BT),
        "kl_priv_teacher": div_lib.token_mean(logp_BT - stats["logqT"], mask_BT),
        "kl_priv_student": div_lib.token_mean(logp_BT - stats["logqS"], mask_BT),
    }


def opd_pg_loss(
    student_logits,
    teacher_logits,
    tokens,
    mask,
    *,
    sampler_logp=None,
    is_clip=None,
    adv_clip=None,
    outcome_adv=None,
    chunk_size=None,
):
    """On-policy distillation, per-token advantage form (methods.md sections 3, 7).

    A_n = sg[log T(y_n) - log S(y_n)] (clipped to +-adv_clip when given, then
    plus outcome_adv); loss = sequence_mean(-w_n A_n log S(y_n)) with the
    importance weight w_n = sg[exp(log S(y_n) - sampler_logp_n)], zeroed
    outside is_clip = (lo, hi) when given (MiMo-V2-Flash form), else w_n = 1.

    Args:
      student_logits: ``[B, T, V]`` student logits; receives gradients.
      teacher_logits: ``[B, T, V]`` teacher logits (stop-gradient).
      tokens: ``[B, T]`` sampled response tokens.
      mask: ``[B, T]`` bool/float, valid response tokens.
      sampler_logp: optional ``[B, T]`` log-probs of the tokens under the
        sampler; enables the importance weight.
      is_clip: optional (lo, hi) ratio range kept; needs sampler_logp.
      adv_clip: optional positive float c: A_n is clipped to [-c, c] (MOPD: 5).
      outcome_adv: optional ``[B]`` or ``[B, T]`` already-scaled outcome
        advantage (alpha * A_ORM) added to A_n after clipping.
      chunk_size: positions per chunk for the [B, T, V] work (None: one pass).

    Returns:
      (loss, metrics) with kl_teacher, adv_mean and, with sampler_logp,
      is_weight_mean and is_zeroed_frac.
    """
    _check_pg_args(student_logits, teacher_logits, tokens, mask, sampler_logp, is_clip, adv_clip)

    logS_BT = div_lib.sampled_logprobs(student_logits, tokens, chunk_size)
    logT_BT = div_lib.sampled_logprobs(jax.lax.stop_gradient(teacher_logits), tokens, chunk_size)
    kl_BT = jax.lax.stop_gradient(logS_BT) - logT_BT
    adv_BT = _pg_advantage(kl_BT, tokens, adv_clip, outcome_adv)
    metrics = {
        "kl_teacher": div_lib.token_mean(kl_BT, mask),
        "adv_mean": div_lib.token_mean(adv_BT, mask),
    }
    weight_BT, is_metrics = _importance_weights(logS_BT, sampler_logp, is_clip, mask)
    metrics.update(is_metrics)
    loss = div_lib.sequence_mean(-weight_BT * adv_BT * logS_BT, mask)
    return loss, metrics


def _check_pg_args(student_logits, teacher_logits, tokens, mask, sampler_logp, is_clip, adv_clip):
    """opd_pg_loss's argument checks (ValueError naming the problem, before tracing)."""
    div_lib.check_same_shape(student_logits, teacher_logits, "teacher")
    _check_tokens_mask(student_logits, tokens, mask)
    if is_clip is not None and sampler_logp is None:
        raise ValueError("is_clip needs sampler_logp (the importance ratio's denominator)")
    if is_clip is not None and not (len(is_clip) == 2 and is_clip[0] <= is_clip[1]):
        raise ValueError(f"is_clip must be a (lo, hi) pair with lo <= hi, got {is_clip}")
    if adv_clip is not None and not adv_clip > 0:
        raise ValueError(f"adv_clip must be a positive float, got {adv_clip}")
    if sampler_logp is not None and sampler_logp.shape != tokens.shape:
        raise ValueError(f"sampler_logp {sampler_logp.shape} must match tokens {tokens.shape}")


def _pg_advantage(kl_BT, tokens_BT, adv_clip, outcome_adv):
    """A_n = clip(-kl_n) (+ outcome advantage), under stop-gradient."""
    adv_BT = -kl_BT
    if adv_clip is not None:
        adv_BT = jnp.clip(adv_BT, -adv_clip, adv_clip)
    if outcome_adv is not None:
        outcome_adv = jnp.asarray(outcome_adv, jnp.float32)
        if outcome_adv.shape not in (tokens_BT.shape[:1], tokens_BT.shape):
            raise ValueError(
                f"outcome_adv {outcome_adv.shape} must be [B] or [B, T] "
                f"with [B, T] = {tokens_BT.shape}"
            )
        adv_BT = adv_BT + (outcome_adv[:, None] if outcome_adv.ndim == 1 else outcome_adv)
    return jax.lax.stop_gradient(adv_BT)


def _importance_weights(logS_BT, sampler_logp, is_clip, mask_BT):
    """sg[pi_train / pi_sampler], zeroed outside is_clip; 1 without sampler_logp."""
    if sampler_logp is None:
        return jnp.ones_like(logS_BT), {}
    weight_BT = jax.lax.stop_gradient(jnp.exp(logS_BT - sampler_logp.astype(jnp.float32)))
    metrics = {"is_weight_mean": div_lib.token_mean(weight_BT, mask_BT)}
    if is_clip is not None:
        kept_BT = (weight_BT >= is_clip[0]) & (weight_BT <= is_clip[1])
        weight_BT = jnp.where(kept_BT, weight_BT, 0.0)
        metrics["is_zeroed_frac"] = div_lib.token_mean((~kept_BT).astype(jnp.float32), mask_BT)
    return weight_BT, metrics


def divergence_loss(
    student_logits,
    target_logits,
    tokens,
    mask,
    *,
    kind="rkl",
    beta=0.5,
    top_k=None,
    topk_mode="renormalize",
    chunk_size=None,
):
    """Per-token divergence to one target (OPD analytic, Priv.T->S, OPSD).

    Args:
      student_logits: ``[B, T, V]`` student logits; receives gradients.
      target_logits: ``[B, T, V]`` target logits (stop-gradient).
      tokens: ``[B, T]`` sampled response tokens (for the sampled KL metric).
      mask: ``[B, T]`` bool/float, valid response tokens.
      kind, beta, top_k, topk_mode, chunk_size: see
        ``divergences.token_divergence``.

    Returns:
      (loss, metrics) with div_mean (token mean of the divergence) and
      kl_target (sampled-token estimate of KL(student || target)).
    """
    div_lib.check_divergence_args(kind, beta, top_k, topk_mode)
    div_lib.check_same_shape(student_logits, target_logits)
    _check_tokens_mask(student_logits, tokens, mask)
    target_logits = jax.lax.stop_gradient(target_logits)
    div_BT = div_lib.token_divergence(
        student_logits,
        target_logits,
        kind=kind,
        beta=beta,
        top_k=top_k,
        topk_mode=topk_mode,
        chunk_size=chunk_size,
    )
    logS_BT = div_lib.sampled_logprobs(student_logits, tokens, chunk_size)
    logT_BT = div_lib.sampled_logprobs(target_logits, tokens, chunk_size)
    metrics = {
        "div_mean": div_lib.token_mean(jax.lax.stop_gradient(div_BT), mask),
        "kl_target": div_lib.token_mean(jax.lax.stop_gradient(logS_BT - logT_BT), mask),
    }
    return div_lib.sequence_mean(div_BT, mask), metrics


LOSSES = {"dopd": dopd_loss, "opd_pg": opd_pg_loss, "divergence": divergence_loss}
