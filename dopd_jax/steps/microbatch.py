"""Fused, micro-batched score + update step for models whose logits cannot all exist at once.

``distill.update_step`` takes the target logits of the whole batch from
``distill.score_step``; at paper scale (V = 151,936, 512 rollouts of up to 2,048
tokens) one ``[B, T, V]`` bfloat16 tensor is ~318 GB. This step scores and
updates in micro-batches instead, in two passes over the batch:

1. forward only: per micro-batch, the ``[B, T]`` statistics that need the
   whole batch: the method's ``batch_refs.stats`` (DOPD: the privilege
   statistics of the privileged student and teacher), and sampled-token
   log-probs of the diagnostic passes (``spec.log_passes``). Then the
   method's reference values (DOPD: ``A_bar, qS_bar, qT_bar``, methods.md
   section 4) over all valid tokens of the whole batch.
2. per micro-batch: recompute the method's target passes, run the student
   forward and backward with the loss's ``refs`` fixed to the batch values,
   and accumulate gradients. Each micro-batch loss (a ``sequence_mean``) is
   scaled by its share of the batch's non-empty sequences, so the sum is the
   full-batch objective. One optimizer update at the end.

For DOPD the privileged passes run twice per micro-batch (once per pass) and
the plain teacher once (a diagnostic), instead of once each: the price of
never holding more than a micro-batch of ``[B, T, V]`` logits.

Micro-batch m holds rows m, m + M, m + 2M, ...: with rows sharded in
contiguous blocks over the data-parallel axes, every micro-batch is spread
evenly over all devices. Metrics are the full-batch values: token means are
weighted by valid tokens, per-regime means (``loss_LH``, ``gap_HS``, ...) by
the regime's tokens.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import optax
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dopd_jax.losses import divergences as div_lib
from dopd_jax.losses import routing
from dopd_jax.sharding import rules as sharding_rules
from dopd_jax.steps import distill as steps
from dopd_jax.steps import rollout as rollout_lib
from dopd_jax.steps import scoring


def split_rows(x, num_microbatches: int):
    """``[B, ...] -> [M, B/M, ...]``; micro-batch m holds rows m, m + M, ..."""
    rest = x.shape[1:]
    return jnp.swapaxes(x.reshape(x.shape[0] // num_microbatches, num_microbatches, *rest), 0, 1)


def _needs_refs(spec) -> bool:
    return spec.method.refs_for(spec.config) is not None


def _score_pass(graphdefs, spec, constrain, state, teachers, mb, name):
    """Stop-gradient logits of pass ``name`` (a method slot or a log pass) on one micro-batch."""
    p = spec.passes.get(name) or spec.diagnostic_passes[name]
    forward = functools.partial(scoring.forward_logits, constrain=constrain)
    return scoring.score_pass(
        graphdefs,
        p,
        state,
        teachers,
        mb["ro"],
        mb["priv_BQ"],
        mb["priv_mask_BQ"],
        forward=forward,
        domains=spec.domains,
        wrong=mb.get("wrong"),
    )


def _first_pass(score, spec, mb) -> dict:
    """``[b, T]`` statistics of one micro-batch (forward passes only)."""
    tokens_BT, chunk = mb["ro"].tokens_BT, spec.chunk_size
    out = {}
    if _needs_refs(spec):
        targets = {name: score(mb, name) for name in spec.passes}
        stats = spec.method.refs_for(spec.config).stats(spec.config, targets, tokens_BT, chunk)
        out.update({f"ref_{k}": v for k, v in stats.items()})
    for name in spec.diagnostic_passes:
        out[f"logp_{name}_BT"] = div_lib.sampled_logprobs(score(mb, name), tokens_BT, chunk)
    return out


def _batch_refs(spec, first_MbT: dict, mask_MbT):
    """The method's reference values over every valid token of the whole batch."""
    flat = lambda x: x.reshape(-1, x.shape[-1])  # noqa: E731
    stats = {k[len("ref_") :]: flat(v) for k, v in first_MbT.items() if k.startswith("ref_")}
    return spec.method.refs_for(spec.config).reduce(spec.config, stats, flat(mask_MbT))


def _metric_weights(metrics: dict, mask_BT, domain_masks: dict) -> dict:
    """Aggregation weight of each metric: valid tokens, the regime's tokens, or the
    domain's tokens (``<metric>/<domain>``)."""
    n_valid = jnp.sum(mask_BT.astype(jnp.float32))
    weights = {}
    for key in metrics:
        regime = key.split("_", 1)[1] if key.startswith(("loss_", "gap_")) else None
        in_regime = regime in routing.REGIMES and f"frac_{regime}" in metrics
        domain = key.rsplit("/", 1)[-1] if "/" in key else None
        if domain in domain_masks:
            weights[key] = jnp.sum(domain_masks[domain])
        else:
            weights[key] = metrics[f"frac_{regime}"] * n_valid if in_regime else n_valid
    return weights


def _weighted_means(values_M: dict, weights_M: dict) -> dict:
    """``sum_m w_m x_m / sum_m w_m`` per metric (0 where every weight is 0)."""
    out = {}
    for key, x_M in values_M.items():
        w_M = weights_M[key]
        total = jnp.sum(w_M)
        # where: a metric left inf/NaN by an empty micro-batch must not leak.
        mean = jnp.sum(jnp.where(w_M > 0, x_M * w_M, 0.0)) / jnp.maximum(total, 1e-30)
        out[key] = jnp.where(total > 0, mean, 0.0)
    return out


def _second_pass(
    graphdefs, spec, score, remat, constrain, state, refs, n_seq_total, grad_acc, mb, *, diagnostics
):
    """Loss, gradient and metrics of one micro-batch; adds the gradient to ``grad_acc``."""
    ro = mb["ro"]
    targets = {name: score(mb, name) for name in spec.passes}
    targets.update(mb["logp"])
    n_seq = jnp.sum(jnp.any(ro.mask_BT, axis=1).astype(jnp.float32))
    share = n_seq / jnp.maximum(n_seq_total, 1.0)  # sequence_mean over the whole batch

    def loss_fn(params):
        s_BTV = scoring.forward_logits(
            graphdefs["student"],
            params,
            ro.prompt_BP,
            ro.prompt_mask_BP,
            ro.tokens_BT,
            remat=remat,
            constrain=constrain,
        )
        loss, metrics = spec.method.loss(
            s_BTV, targets, ro, spec.config, chunk_size=spec.chunk_size, refs=refs
        )
        return loss * share, (metrics, s_BTV)

    (loss, (metrics, s_BTV)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    metrics = dict(metrics)
    if diagnostics:
        metrics.update(steps.step_diagnostics(spec, s_BTV, targets, ro))
    grad_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grad_acc, grads)
    weights = _metric_weights(metrics, ro.mask_BT, steps.domain_token_masks(spec, ro))
    return grad_acc, (loss, metrics, weights)


def _check_rows(spec, num_microbatches, batch, ro, mesh) -> None:
    """Raises ValueError unless the rows split into equal (and evenly sharded) micro-batches."""
    rows = ro.tokens_BT.shape[0]
    if batch.priv_BQ.shape[0] * spec.sampler.n_samples != rows:
        raise ValueError(
            f"batch has {batch.priv_BQ.shape[0]} prompts x n_samples="
            f"{spec.sampler.n_samples}, but the rollout has {rows} rows"
        )
    if rows % num_microbatches:
        raise ValueError(
            f"{rows} rollout rows do not split into num_microbatches="
            f"{num_microbatches} equal micro-batches"
        )
    shards = 1 if mesh is None else sharding_rules.data_parallel_size(mesh)
    if (rows // num_microbatches) % shards:
        raise ValueError(
            f"micro-batches of {rows // num_microbatches} rows do not split "
            f"over {shards} data-parallel shards; use fewer micro-batches"
        )


def _constraints(mesh):
    """Sharding constraints: ``[M, b, ...]`` micro-batches and ``[b, L, D]`` activations."""
    if mesh is None:
        return (lambda x: x), (lambda x: x)
    axes = sharding_rules.batch_axes(mesh)
    entry = None if not axes else axes[0] if len(axes) == 1 else axes
    put = lambda spec: lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    free = P.UNCONSTRAINED  # trailing dims: left to GSPMD (e.g. heads over tensor)
    return put(P(None, entry)), put(P(entry, free, free))


def microbatched_update_step(
    graphdefs,
    optimizer,
    spec: steps.DistillSpec,
    num_microbatches: int,
    remat: bool,
    mesh,
    state: steps.TrainState,
    teachers,
    batch: steps.DistillBatch,
    ro: rollout_lib.Rollout,
    *,
    diagnostics: bool = True,
):
    """``score_step`` + ``update_step`` of one batch, in micro-batches.

    Same arguments as those two (static ones bound by ``make_microbatched_update``);
    returns ``(state, metrics)`` equal to ``update_step`` on the whole batch
    (``diagnostics`` as there).
    """
    _check_rows(spec, num_microbatches, batch, ro, mesh)
    per_mb, per_act = _constraints(mesh)
    priv_BQ, priv_mask_BQ = steps.priv_rows(batch, spec.sampler.n_samples)
    rows = {"ro": ro, "priv_BQ": priv_BQ, "priv_mask_BQ": priv_mask_BQ}
    wrong = steps.wrong_rows(batch, spec.sampler.n_samples)
    if wrong is not None:
        rows["wrong"] = wrong
    mbs = jax.tree.map(lambda x: per_mb(split_rows(x, num_microbatches)), rows)
    score = functools.partial(_score_pass, graphdefs, spec, per_act, state, teachers)
    needs_refs = _needs_refs(spec)
    first = (
        jax.lax.map(functools.partial(_first_pass, score, spec), mbs)
        if spec.diagnostic_passes or needs_refs
        else {}
    )
    refs = _batch_refs(spec, first, mbs["ro"].mask_BT) if needs_refs else None
    mbs["logp"] = {k: v for k, v in first.items() if k.startswith("logp_")}

    n_seq_total = jnp.sum(jnp.any(ro.mask_BT, axis=1).astype(jnp.float32))
    acc0 = jax.tree.map(
        lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)), state.params
    )
    body = functools.partial(
        _second_pass,
        graphdefs,
        spec,
        score,
        remat,
        per_act,
        state,
        refs,
        n_seq_total,
        diagnostics=diagnostics,
    )
    grads, (loss_M, metrics_M, weights_M) = jax.lax.scan(body, acc0, mbs)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

    new_state = steps.apply_gradients(optimizer, spec, state, grads)
    metrics = _weighted_means(metrics_M, weights_M)
    metrics.update(refs or {})
    metrics.update(loss=jnp.sum(loss_M), grad_norm=optax.tree.norm(grads))
    metrics.update(steps.rollout_metrics(ro, spec.domains))
    return new_state, metrics


def make_microbatched_update(
    graphdefs,
    optimizer,
    spec: steps.DistillSpec,
    num_microbatches: int,
    shardings=None,
    *,
    remat: bool = True,
    diagnostics: bool = True,
):
    """Jits the fused micro-batched score + update step.

    Args:
      graphdefs: dict role -> graphdef (``nnx.split``), as for ``make_distill_fns``.
      optimizer: the student's optax transformation.
      spec: static step description (``DistillSpec``).
      num_microbatches: M >= 1; the rollout rows must split into M equal
        micro-batches, each divisible by the data-parallel size.
      shardings: ``sharding.StepShardings`` with teacher shardings, or None.
        With shardings the state and teacher params must already be placed in
        them; micro-batches and block activations are constrained to rows over
        the data-parallel axes.
      remat: recompute each student block in the backward pass
        (``forward_logits``).
      diagnostics: False leaves out the per-token diagnostics (pass a
        ``distill.lean_spec`` to leave out the diagnostic passes too).

    Returns:
      ``step(state, teachers, batch, ro) -> (state, metrics)``, jitted,
      with the state donated (the teacher params never are).
    """
    if (
        isinstance(num_microbatches, bool)
        or not isinstance(num_microbatches, int)
        or num_microbatches < 1
    ):
        raise ValueError(f"num_microbatches must be an int >= 1, got {num_microbatches!r}")
    if shardings is not None and shardings.teachers is None:
        raise ValueError(
            "the micro-batched step needs teacher shardings: pass "
            "the teachers to sharding.step_shardings"
        )
    mesh = None if shardings is None else shardings.mesh
    fn = functools.partial(
        microbatched_update_step,
        graphdefs,
        optimizer,
        spec,
        num_microbatches,
        remat,
        mesh,
        diagnostics=diagnostics,
    )
    jit_kwargs = (
        {}
        if shardings is None
        else {
            "in_shardings": (shardings.state, shardings.teachers, shardings.rows, shardings.rows),
            "out_shardings": (shardings.state, shardings.replicated),
        }
    )
    return jax.jit(fn, donate_argnames=("state",), **jit_kwargs)


def make_microbatched_fns(
    graphdefs,
    optimizer,
    spec: steps.DistillSpec,
    num_microbatches: int,
    shardings=None,
    *,
    remat: bool = True,
) -> steps.DistillFns:
    """The fused step behind the ``DistillFns`` interface of ``make_distill_fns``.

    ``score(state, teachers, batch, ro)`` only hands its arguments on (nothing is
    scored there); ``update(state, ro, (teachers, batch))`` scores and updates in
    micro-batches. A host loop written for ``make_distill_fns`` runs either
    unchanged; its ``time_score`` is then ~0 and ``time_update`` includes scoring.
    ``update_lean`` is the same step without diagnostics.
    """
    fused, fused_lean = (
        make_microbatched_update(
            graphdefs, optimizer, s, num_microbatches, shardings, remat=remat, diagnostics=d
        )
        for s, d in ((spec, True), (steps.lean_spec(spec), False))
    )
    jit_kwargs = (lambda phase: {}) if shardings is None else shardings.jit_kwargs
    rollout = jax.jit(
        functools.partial(steps.rollout_step, graphdefs, spec), **jit_kwargs("rollout")
    )

    def score(state, teachers, batch, ro):
        del state, ro
        return teachers, batch

    def deferred_update(step):
        def update(state, ro, deferred):
            teachers, batch = deferred
            return step(state, teachers, batch, ro)

        update.fused = step  # the jitted step (``memory_report`` lowers it)
        return update

    return steps.DistillFns(
        rollout=rollout,
        score=score,
        update=deferred_update(fused),
        score_lean=score,
        update_lean=deferred_update(fused_lean),
    )
