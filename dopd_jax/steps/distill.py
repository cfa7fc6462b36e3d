"""Pure step functions of on-policy distillation: rollout, scoring, update.

Every function here is pure over pytrees: static configuration (graphdefs,
the optimizer, the method) is bound with ``functools.partial`` and the
caller jits once (``make_distill_fns``). Teacher parameters are always an
argument, a dict role -> params (``{"teacher": params}``, or several named
``teacher/<name>`` roles), never closed over and never donated.

A distillation step is ``rollout_step`` -> ``score_step`` -> ``update_step``;
``distill_step`` composes the three for users' own JAX code. Nothing here
names a method: the spec's method declares the passes scored and the loss.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
import optax

from dopd_jax.data.batches import PromptBatch
from dopd_jax.losses import diagnostics
from dopd_jax.losses import divergences as div_lib
from dopd_jax.methods.base import Method, Pass, pass_from_name
from dopd_jax.state import TrainState, init_state  # noqa: F401 (re-exported)
from dopd_jax.steps import responses, scoring
from dopd_jax.steps import rollout as rollout_lib

DistillBatch = PromptBatch  # the prompt batch of a distillation step


@dataclasses.dataclass(frozen=True)
class DistillSpec:
    """Static description of a distillation step (hashable; bound by partial).

    Attributes:
      method: the method plug-in.
      config: its frozen config (``method.config_cls``).
      sampler: rollout settings.
      log_passes: extra pass names (``teacher``, ``priv_teacher``, ...) scored
        only for the sampled-token KL diagnostics ``kl_to_<name>``.
      chunk_size: positions per chunk of every full-vocabulary operation
        (None: one pass).
      diag_top_k: K of the top-K agreement diagnostics (clamped to V).
      rollout_batch: prompts per sampler call (0: all of the batch in one call;
        ``rollout.sample_in_chunks``).
      domains: the domain names ``PromptBatch.domain_ids_B`` indexes; the
        routed teacher role ``teacher/@domain`` scores row r with the teacher
        ``teacher/<domains[domain_ids_B[r]]>`` (MOPD).
    """

    method: Method
    config: Any
    sampler: rollout_lib.SamplerConfig
    log_passes: tuple[str, ...] = ("teacher", "priv_teacher")
    chunk_size: int | None = None
    diag_top_k: int = 128
    rollout_batch: int = 0
    domains: tuple[str, ...] = ()

    @property
    def response_mix(self) -> dict[str, float]:
        """Response source -> probability per step (``Method.responses``)."""
        return responses.response_mix(self.method, self.config)

    @property
    def passes(self) -> dict[str, Pass]:
        """The method's target passes, slot -> Pass."""
        return dict(self.method.passes(self.config))

    @property
    def diagnostic_passes(self) -> dict[str, Pass]:
        """Log passes the method does not already score."""
        return {n: pass_from_name(n) for n in self.log_passes if n not in self.passes}

    @property
    def ref_update(self) -> str:
        """How the train state's reference copy is kept: none, frozen or ema."""
        return self.method.ref_update(self.config)

    @property
    def ema_decay(self) -> float:
        return float(getattr(self.config, "ema_decay", 0.99))


def rollout_step(
    graphdefs: dict,
    spec: DistillSpec,
    state: TrainState,
    teachers: dict,
    batch: PromptBatch,
    key: jax.Array,
) -> rollout_lib.Rollout:
    """The responses a step trains on: the deployed student's samples (prompt x only),
    or, for methods with off-policy batches (``Method.responses``), a teacher's
    samples or the batch's gold responses, drawn per step from ``key``."""
    return responses.step_responses(graphdefs, spec, state, teachers, batch, key)


def priv_rows(batch: PromptBatch, n_samples: int):
    """The privileged prefixes repeated like the rollout's rows."""
    return (
        rollout_lib.repeat_rows(batch.priv_BQ, n_samples),
        rollout_lib.repeat_rows(batch.priv_mask_BQ, n_samples),
    )


def wrong_rows(batch: PromptBatch, n_samples: int):
    """The wrong-hint prefixes repeated like the rollout's rows (None when absent)."""
    if batch.wrong_priv_BQ is None:
        return None
    return (
        rollout_lib.repeat_rows(batch.wrong_priv_BQ, n_samples),
        rollout_lib.repeat_rows(batch.wrong_priv_mask_BQ, n_samples),
    )


def score_step(
    graphdefs: dict,
    spec: DistillSpec,
    state: TrainState,
    teachers: dict,
    batch: PromptBatch,
    ro: rollout_lib.Rollout,
) -> dict:
    """Scores the sampled responses under every pass the method declares.

    Returns a dict slot -> logits_BTV (stop-gradient) aligned with
    ``ro.tokens_BT``, plus ``logp_<name>_BT`` sampled-token log-probs of the
    diagnostic passes (``spec.log_passes``) the method does not use.
    """
    priv_BQ, priv_mask_BQ = priv_rows(batch, spec.sampler.n_samples)
    score = functools.partial(
        scoring.score_pass,
        graphdefs,
        state=state,
        teachers=teachers,
        ro=ro,
        priv_BQ=priv_BQ,
        priv_mask_BQ=priv_mask_BQ,
        domains=spec.domains,
        wrong=wrong_rows(batch, spec.sampler.n_samples),
    )
    targets = {slot: score(p=p) for slot, p in spec.passes.items()}
    for name, p in spec.diagnostic_passes.items():
        targets[f"logp_{name}_BT"] = div_lib.sampled_logprobs(
            score(p=p), ro.tokens_BT, spec.chunk_size
        )
    return targets


def rollout_metrics(ro: rollout_lib.Rollout, domains: tuple[str, ...] = ()) -> dict:
    """Response length, truncation and token count of a rollout, per domain too where
    rows carry domains, and the share of on-policy rows where a method mixes sources."""
    lengths_B = ro.mask_BT.sum(-1).astype(jnp.float32)
    out = {
        "response_len": lengths_B.mean(),
        "truncated_frac": ro.truncated_B.astype(jnp.float32).mean(),
        "num_tokens": lengths_B.sum(),
    }
    if ro.on_policy_B is not None:
        out["on_policy_frac"] = ro.on_policy_B.astype(jnp.float32).mean()
    for d, name in enumerate(domains if ro.domain_B is not None else ()):
        rows_B = (ro.domain_B == d).astype(jnp.float32)
        out[f"num_tokens/{name}"] = jnp.sum(lengths_B * rows_B)
        out[f"response_len/{name}"] = out[f"num_tokens/{name}"] / jnp.maximum(rows_B.sum(), 1.0)
    return out


def domain_token_masks(spec: DistillSpec, ro) -> dict:
    """``domain -> [B, T]`` float mask of its rows' valid tokens (empty without domains)."""
    if ro.domain_B is None or not spec.domains:
        return {}
    valid_BT = ro.mask_BT.astype(jnp.float32)
    return {
        name: valid_BT * (ro.domain_B == d).astype(jnp.float32)[:, None]
        for d, name in enumerate(spec.domains)
    }


def domain_kls(spec: DistillSpec, student_BTV, targets, ro) -> dict:
    """Sampled-token KL to the main target per domain, ``kl_to_<slot>/<domain>``
    (methods.md section 9: per teacher for MOPD)."""
    masks = domain_token_masks(spec, ro)
    slot = spec.method.main_slot(spec.config)
    if not masks or slot is None:
        return {}
    logp = functools.partial(
        div_lib.sampled_logprobs, tokens_BT=ro.tokens_BT, chunk_size=spec.chunk_size
    )
    kl_BT = logp(jax.lax.stop_gradient(student_BTV)) - logp(targets[slot])
    return {f"kl_to_{slot}/{name}": div_lib.token_mean(kl_BT, m) for name, m in masks.items()}


def sampled_kls(spec: DistillSpec, student_BTV, targets, ro) -> dict:
    """Sampled-token reverse-KL estimates ``kl_to_<slot>`` for every scored pass (chunked)."""
    logp = functools.partial(
        div_lib.sampled_logprobs, tokens_BT=ro.tokens_BT, chunk_size=spec.chunk_size
    )
    s_logp = logp(jax.lax.stop_gradient(student_BTV))
    out = {}
    for name in list(spec.passes) + list(spec.diagnostic_passes):
        t_logp = targets[name] if name in spec.passes else None
        t_logp = logp(t_logp) if t_logp is not None else targets.get(f"logp_{name}_BT")
        if t_logp is not None:
            out[f"kl_to_{name}"] = div_lib.token_mean(s_logp - t_logp, ro.mask_BT)
    return out


def step_diagnostics(spec: DistillSpec, student_BTV, targets, ro) -> dict:
    """Per-token diagnostics against the method's main target, the sampled KLs and the
    per-domain breakdown (a method without a target logs the student's entropy)."""
    student_BTV = jax.lax.stop_gradient(student_BTV)
    if spec.method.main_slot(spec.config) is None:
        ent_BT = div_lib.entropy(student_BTV, spec.chunk_size)
        out = {"student_entropy": div_lib.token_mean(ent_BT, ro.mask_BT)}
    else:
        out = diagnostics.token_stats(
            student_BTV,
            targets[spec.method.main_slot(spec.config)],
            ro.tokens_BT,
            ro.mask_BT,
            top_k=min(spec.diag_top_k, student_BTV.shape[-1]),
            chunk_size=spec.chunk_size,
        )
    out.update(sampled_kls(spec, student_BTV, targets, ro))
    out.update(domain_kls(spec, student_BTV, targets, ro))
    return out


def update_step(
    graphdefs: dict,
    optimizer,
    spec: DistillSpec,
    state: TrainState,
    ro: rollout_lib.Rollout,
    targets: dict,
    *,
    diagnostics: bool = True,
) -> tuple[TrainState, dict]:
    """Student forward on x + method loss + optimizer update.

    ``diagnostics=False`` (static) leaves out ``step_diagnostics``: the loss, its
    own metrics and the rollout's are still returned, the update is the same.
    """

    def loss_fn(params):
        student_BTV = scoring.teacher_forced_logits(
            graphdefs["student"], params, ro.prompt_BP, ro.prompt_mask_BP, ro.tokens_BT
        )
        loss, metrics = spec.method.loss(
            student_BTV, targets, ro, spec.config, chunk_size=spec.chunk_size
        )
        return loss, (metrics, student_BTV)

    (loss, (metrics, student_BTV)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    new_state = apply_gradients(optimizer, spec, state, grads)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    if diagnostics:
        metrics.update(step_diagnostics(spec, student_BTV, targets, ro))
    metrics.update(rollout_metrics(ro, spec.domains))
    return new_state, metrics


def lean_spec(spec: DistillSpec) -> DistillSpec:
    """``spec`` without its diagnostic passes: what a step that logs nothing scores."""
    return dataclasses.replace(spec, log_passes=())


def apply_gradients(optimizer, spec: DistillSpec, state: TrainState, grads) -> TrainState:
    """One optimizer update of the student; an EMA reference copy follows it."""
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    ref = state.ref_params
    if spec.ref_update == "ema":
        decay = spec.ema_decay
        ref = jax.tree.map(lambda r, p: decay * r + (1 - decay) * p, ref, params)
    return TrainState(params, opt_state, ref, state.step + 1)


def distill_step(
    graphdefs: dict,
    optimizer,
    spec: DistillSpec,
    state: TrainState,
    teachers: dict,
    batch: PromptBatch,
    key: jax.Array,
):
    """One on-policy distillation step: ``(state, teachers, batch, key) -> (state, metrics)``."""
    ro = rollout_step(graphdefs, spec, state, teachers, batch, key)
    targets = score_step(graphdefs, spec, state, teachers, batch, ro)
    return update_step(graphdefs, optimizer, spec, state, ro, targets)


@dataclasses.dataclass(frozen=True)
class DistillFns:
    """The jitted pieces of a distillation step (one jit call site each).

    ``score_lean`` / ``update_lean`` (optional) take the same arguments and make the
    same update, without the diagnostic passes and per-token diagnostics: a host
    loop calls them on steps whose metrics it does not read (``loop.run_distill``:
    every step but the log steps). At V = 64 they save a teacher forward per step;
    at paper scale also the top-K statistics over the vocabulary.
    """

    rollout: Any
    score: Any
    update: Any
    score_lean: Any = None
    update_lean: Any = None

    def phase_fns(self, log: bool) -> tuple[Any, Any]:
        """``(score, update)`` of a step: the full ones on log steps, else the lean ones
        where they exist."""
        if log:
            return self.score, self.update
        return self.score_lean or self.score, self.update_lean or self.update


def make_distill_fns(graphdefs: dict, optimizer, spec: DistillSpec, shardings=None) -> DistillFns:
    """Binds static configuration and jits the three phases of a step.

    Args:
      graphdefs: dict role -> graphdef (``nnx.split``): ``student`` and every
        teacher role the passes use.
      optimizer: the student's optax transformation.
      spec: static step description.
      shardings: ``sharding.StepShardings`` (``sharding.step_shardings``), or
        None to leave placement to JAX. With shardings every phase states its
        in/out shardings; the state and teacher params must already be placed
        in them. The state is donated to the update; the teachers never are.

    Returns:
      DistillFns(rollout(state, teachers, batch, key), score(state, teachers, batch, ro),
      update(state, ro, targets)), called positionally, and their lean forms
      (``score_lean``, ``update_lean``: no diagnostics; compiled on first use).
    """
    jit_kwargs = (lambda phase: {}) if shardings is None else shardings.jit_kwargs

    def jit_update(spec_, diagnostics):
        fn = functools.partial(update_step, graphdefs, optimizer, spec_, diagnostics=diagnostics)
        return jax.jit(fn, donate_argnames=("state",), **jit_kwargs("update"))

    lean = lean_spec(spec)
    return DistillFns(
        rollout=jax.jit(functools.partial(rollout_step, graphdefs, spec), **jit_kwargs("rollout")),
        score=jax.jit(functools.partial(score_step, graphdefs, spec), **jit_kwargs("score")),
        update=jit_update(spec, True),
        score_lean=jax.jit(functools.partial(score_step, graphdefs, lean), **jit_kwargs("score")),
        update_lean=jit_update(lean, False),
    )
