"""Fused, micro-batched score + update step for models whose logits cannot all exist at once.

``steps.update_step`` takes the target logits of the whole batch from
``steps.score_step``; at paper scale (V = 151,936, 512 rollouts of up to 2,048
tokens) one ``[B, T, V]`` bfloat16 tensor is ~318 GB. This step scores and
updates in micro-batches instead, in two passes over the batch:

1. forward only: per micro-batch, the ``[B, T]`` statistics that need the
   whole batch: ``routing.privilege_stats`` of the privileged student and
   teacher (DOPD), and sampled-token log-probs of the diagnostic passes
   (``spec.log_passes``). Then DOPD's reference values ``A_bar, qS_bar,
   qT_bar`` over all valid tokens of the whole batch (methods.md section 4).
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
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from dopd_jax import diagnostics, divergences as div_lib, losses, routing
from dopd_jax import rollout as rollout_lib, sharding_rules, steps
from dopd_jax.models import transformer

# Methods whose loss compares tokens with batch reference values: they get the
# whole batch's values via ``refs`` (a loss of this table instead of loss_fn).
REF_METHODS = ("dopd",)


def _dopd_loss_with_refs(student_BTV, targets, ro, cfg, refs):
    """``methods._dopd_loss`` with the reference values fixed (gap_threshold is in refs)."""
    return losses.dopd_loss(
        student_BTV, targets["priv_student"], targets["priv_teacher"], ro.tokens_BT,
        ro.mask_BT, top_k=cfg.top_k, beta_light=cfg.beta_light, beta_weak=cfg.beta_weak,
        outlier_fraction=cfg.outlier_fraction, topk_mode=cfg.topk_mode,
        hs_target=cfg.hs_target, chunk_size=cfg.chunk_size, refs=refs)


def split_rows(x, num_microbatches: int):
    """``[B, ...] -> [M, B/M, ...]``; micro-batch m holds rows m, m + M, ..."""
    rest = x.shape[1:]
    return jnp.swapaxes(x.reshape(x.shape[0] // num_microbatches, num_microbatches, *rest),
                        0, 1)


def _stacked_blocks(model):
    """The decoder blocks as one graphdef and their states stacked on a leading layer axis."""
    splits = [nnx.split(block) for block in model.layers]
    graphdef = splits[0][0]
    if any(gd != graphdef for gd, _ in splits[1:]):
        raise ValueError("forward_logits needs decoder blocks of one structure")
    return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *(st for _, st in splits))


def forward_logits(graphdef, params, prefix_BP, prefix_mask_BP, response_BT, *,
                   remat: bool = False, constrain=lambda x: x):
    """``rollout.score`` as a ``lax.scan`` over layers, with optional remat and constraints.

    Same values as ``rollout.score`` (the model's own modules, as in
    ``Transformer.hidden``), but the blocks run in a scan over their stacked
    parameters (a copy of the block weights per call): one compiled block
    whatever the depth, and with ``remat`` the backward pass keeps one
    ``[B, L, D]`` input per block and recomputes the block (attention scores
    included) inside the backward loop, which XLA cannot hoist (with an
    unrolled loop XLA:CPU schedules the recomputation early and saves nothing).
    ``constrain`` is applied to the residual stream at block boundaries and to
    the logits, so that under FSDP the weights are gathered, not activations.

    Args:
      graphdef, params: the model (``nnx.split``).
      prefix_BP, prefix_mask_BP: left-padded prefix ids and mask.
      response_BT: response ids.
      remat: recompute blocks in the backward pass.
      constrain: sharding constraint of batch-leading activations.

    Returns:
      logits_BTV in the compute dtype; ``[:, n]`` predicts ``response_BT[:, n]``.
    """
    model = nnx.merge(graphdef, params)
    p, t = prefix_BP.shape[1], response_BT.shape[1]
    tokens_BL = jnp.concatenate([prefix_BP, response_BT], axis=1).astype(jnp.int32)
    mask_BL = jnp.concatenate([prefix_mask_BP.astype(bool),
                               jnp.ones(response_BT.shape, bool)], axis=1)
    positions_BL = transformer.default_positions(mask_BL)
    block_gd, blocks_N = _stacked_blocks(model)

    def body(x_BLD, block_state):
        block = nnx.merge(block_gd, block_state)
        return constrain(block(x_BLD, positions_BL, mask_BL)[0]), None

    body = jax.checkpoint(body) if remat else body
    x_BLD, _ = jax.lax.scan(body, constrain(model.embed(tokens_BL)), blocks_N)
    # RMSNorm is per position: normalising only the T scored positions is exact.
    return constrain(model.logits(model.final_norm(x_BLD[:, p - 1:p + t - 1])))


def _first_pass_names(spec) -> tuple[tuple[str, ...], bool]:
    """Passes scored in pass 1 (diagnostic log-probs and the privileged pair)."""
    diag = tuple(p for p in spec.log_passes if p not in spec.method.passes)
    needs_refs = spec.method.name in REF_METHODS
    return diag, needs_refs


def _score_pass(graphdef_s, graphdef_t, spec, constrain, state, teacher_params, mb, name):
    """Stop-gradient logits of target pass ``name`` on one micro-batch."""
    ro = mb["ro"]
    if name == "teacher":
        gd, params, prefix, mask = graphdef_t, teacher_params, ro.prompt_BP, ro.prompt_mask_BP
    elif name == "priv_teacher":
        gd, params, prefix, mask = graphdef_t, teacher_params, mb["priv_BQ"], mb["priv_mask_BQ"]
    else:
        params = steps._priv_student_params(spec, state)
        gd, prefix, mask = graphdef_s, mb["priv_BQ"], mb["priv_mask_BQ"]
    return jax.lax.stop_gradient(
        forward_logits(gd, params, prefix, mask, ro.tokens_BT, constrain=constrain))


def _first_pass(score, spec, mb) -> dict:
    """``[b, T]`` statistics of one micro-batch (forward passes only)."""
    diag, needs_refs = _first_pass_names(spec)
    tokens_BT, chunk = mb["ro"].tokens_BT, spec.loss.chunk_size
    out = {}
    if needs_refs:
        stats = routing.privilege_stats(score(mb, "priv_student"), score(mb, "priv_teacher"),
                                        tokens_BT, chunk)
        out.update(gap_BT=stats["gap"], qS_BT=stats["qS"], qT_BT=stats["qT"])
    for name in diag:
        out[f"logp_{name}_BT"] = div_lib.sampled_logprobs(score(mb, name), tokens_BT, chunk)
    return out


def _batch_refs(spec, first_MbT: dict, mask_MbT):
    """DOPD reference values over every valid token of the whole batch."""
    flat = lambda x: x.reshape(-1, x.shape[-1])
    _, refs = routing.dopd_regimes(
        flat(first_MbT["gap_BT"]), flat(first_MbT["qS_BT"]), flat(first_MbT["qT_BT"]),
        flat(mask_MbT), outlier_fraction=spec.loss.outlier_fraction,
        gap_threshold=spec.loss.gap_threshold)
    return refs


def _metric_weights(metrics: dict, mask_BT) -> dict:
    """Aggregation weight of each metric: valid tokens, or the regime's tokens."""
    n_valid = jnp.sum(mask_BT.astype(jnp.float32))
    weights = {}
    for key in metrics:
        regime = key.split("_", 1)[1] if key.startswith(("loss_", "gap_")) else None
        in_regime = regime in routing.REGIMES and f"frac_{regime}" in metrics
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


def _second_pass(graphdef_s, spec, score, remat, constrain, state, refs, n_seq_total,
                 grad_acc, mb):
    """Loss, gradient and metrics of one micro-batch; adds the gradient to ``grad_acc``."""
    ro = mb["ro"]
    targets = {name: score(mb, name) for name in spec.method.passes}
    targets.update(mb["logp"])
    n_seq = jnp.sum(jnp.any(ro.mask_BT, axis=1).astype(jnp.float32))
    share = n_seq / jnp.maximum(n_seq_total, 1.0)  # sequence_mean over the whole batch

    def loss_fn(params):
        s_BTV = forward_logits(graphdef_s, params, ro.prompt_BP, ro.prompt_mask_BP,
                               ro.tokens_BT, remat=remat, constrain=constrain)
        if refs is None:
            loss, metrics = spec.method.loss_fn(s_BTV, targets, ro, spec.loss)
        else:
            loss, metrics = _dopd_loss_with_refs(s_BTV, targets, ro, spec.loss, refs)
        return loss * share, (metrics, s_BTV)

    (loss, (metrics, s_BTV)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    s_BTV = jax.lax.stop_gradient(s_BTV)
    metrics = dict(metrics)
    metrics.update(diagnostics.token_stats(
        s_BTV, targets[spec.method.main_target], ro.tokens_BT, ro.mask_BT,
        top_k=min(spec.loss.top_k, s_BTV.shape[-1]), chunk_size=spec.loss.chunk_size))
    metrics.update(steps._sampled_kls(s_BTV, targets, ro))
    grad_acc = jax.tree.map(lambda a, g: a + g.astype(a.dtype), grad_acc, grads)
    return grad_acc, (loss, metrics, _metric_weights(metrics, ro.mask_BT))


def _check_rows(spec, num_microbatches, batch, ro, mesh) -> None:
    """Raises ValueError unless the rows split into equal (and evenly sharded) micro-batches."""
    rows = ro.tokens_BT.shape[0]
    if batch.priv_BQ.shape[0] * spec.sampler.n_samples != rows:
        raise ValueError(f"batch has {batch.priv_BQ.shape[0]} prompts x n_samples="
                         f"{spec.sampler.n_samples}, but the rollout has {rows} rows")
    if rows % num_microbatches:
        raise ValueError(f"{rows} rollout rows do not split into num_microbatches="
                         f"{num_microbatches} equal micro-batches")
    shards = 1 if mesh is None else sharding_rules.data_parallel_size(mesh)
    if (rows // num_microbatches) % shards:
        raise ValueError(f"micro-batches of {rows // num_microbatches} rows do not split "
                         f"over {shards} data-parallel shards; use fewer micro-batches")


def _constraints(mesh):
    """Sharding constraints: ``[M, b, ...]`` micro-batches and ``[b, L, D]`` activations."""
    if mesh is None:
        return (lambda x: x), (lambda x: x)
    axes = sharding_rules.batch_axes(mesh)
    entry = None if not axes else axes[0] if len(axes) == 1 else axes
    put = lambda spec: lambda x: jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))
    free = P.UNCONSTRAINED  # trailing dims: left to GSPMD (e.g. heads over tensor)
    return put(P(None, entry)), put(P(entry, free, free))


def microbatched_update_step(graphdef_s, graphdef_t, optimizer, spec: steps.DistillSpec,
                             num_microbatches: int, remat: bool, mesh,
                             state: steps.TrainState, teacher_params,
                             batch: steps.DistillBatch, ro: rollout_lib.Rollout):
    """``steps.score_step`` + ``steps.update_step`` of one batch, in micro-batches.

    Same arguments as those two (static ones bound by ``make_microbatched_update``);
    returns ``(state, metrics)`` equal to ``update_step`` on the whole batch.
    """
    _check_rows(spec, num_microbatches, batch, ro, mesh)
    per_mb, per_act = _constraints(mesh)
    n = spec.sampler.n_samples
    rows = {"ro": ro, "priv_BQ": rollout_lib.repeat_rows(batch.priv_BQ, n),
            "priv_mask_BQ": rollout_lib.repeat_rows(batch.priv_mask_BQ, n)}
    mbs = jax.tree.map(lambda x: per_mb(split_rows(x, num_microbatches)), rows)
    score = functools.partial(_score_pass, graphdef_s, graphdef_t, spec, per_act, state,
                              teacher_params)
    diag, needs_refs = _first_pass_names(spec)
    first = (jax.lax.map(functools.partial(_first_pass, score, spec), mbs)
             if diag or needs_refs else {})
    refs = _batch_refs(spec, first, mbs["ro"].mask_BT) if needs_refs else None
    mbs["logp"] = {k: v for k, v in first.items() if k.startswith("logp_")}

    n_seq_total = jnp.sum(jnp.any(ro.mask_BT, axis=1).astype(jnp.float32))
    acc0 = jax.tree.map(lambda p: jnp.zeros(p.shape, jnp.promote_types(p.dtype, jnp.float32)),
                        state.params)
    body = functools.partial(_second_pass, graphdef_s, spec, score, remat, per_act, state,
                             refs, n_seq_total)
    grads, (loss_M, metrics_M, weights_M) = jax.lax.scan(body, acc0, mbs)
    grads = jax.tree.map(lambda g, p: g.astype(p.dtype), grads, state.params)

    new_state = steps.apply_gradients(optimizer, spec, state, grads)
    metrics = _weighted_means(metrics_M, weights_M)
    metrics.update(refs or {})
    metrics.update(loss=jnp.sum(loss_M), grad_norm=optax.tree.norm(grads))
    metrics.update(steps._rollout_metrics(ro))
    return new_state, metrics


def make_microbatched_update(graphdef_s, graphdef_t, optimizer, spec: steps.DistillSpec,
                             num_microbatches: int, shardings=None, *, remat: bool = True):
    """Jits the fused micro-batched score + update step.

    Args:
      graphdef_s, graphdef_t: student / teacher graphdefs (``nnx.split``).
      optimizer: the student's optax transformation.
      spec: static step description (``steps.DistillSpec``).
      num_microbatches: M >= 1; the rollout rows must split into M equal
        micro-batches, each divisible by the data-parallel size.
      shardings: ``sharding.StepShardings`` with teacher shardings, or None.
        With shardings the state and teacher params must already be placed in
        them; micro-batches and block activations are constrained to rows over
        the data-parallel axes.
      remat: recompute each student block in the backward pass
        (``forward_logits``).

    Returns:
      ``step(state, teacher_params, batch, ro) -> (state, metrics)``, jitted,
      with the state donated (the teacher params never are).
    """
    if isinstance(num_microbatches, bool) or not isinstance(num_microbatches, int) \
            or num_microbatches < 1:
        raise ValueError(f"num_microbatches must be an int >= 1, got {num_microbatches!r}")
    if shardings is not None and shardings.teacher is None:
        raise ValueError("the micro-batched step needs teacher shardings: pass "
                         "teacher_params to sharding.step_shardings")
    mesh = None if shardings is None else shardings.mesh
    fn = functools.partial(microbatched_update_step, graphdef_s, graphdef_t, optimizer, spec,
                           num_microbatches, remat, mesh)
    jit_kwargs = {} if shardings is None else {
        "in_shardings": (shardings.state, shardings.teacher, shardings.rows, shardings.rows),
        "out_shardings": (shardings.state, shardings.replicated)}
    return jax.jit(fn, donate_argnames=("state",), **jit_kwargs)
