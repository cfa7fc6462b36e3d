"""Where a step's responses come from: the student, a teacher, or the data.

On-policy methods train on the deployed student's own samples. GKD mixes in
off-policy batches (methods.md section 6): a method's ``responses(cfg)``
gives the probability of each source per step,

  student   ``y ~ S(.|x)`` (on-policy)
  teacher   ``y ~ T(.|x)`` from the method's teacher role (``seq_kd``); the
            routed role ``teacher/@domain`` samples each row from its own
            domain's teacher
  gold      the task's reference responses (``PromptBatch.response_BT``)

and the step draws one source for the whole batch from its key (a seeded,
resumable draw: ``fold_in(key, step)``), inside the jitted step with
``lax.switch``, so only the drawn source runs. ``Rollout.on_policy_B`` marks
the rows the student sampled.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from dopd_jax.steps import rollout as rollout_lib
from dopd_jax.steps import scoring

SOURCES = ("student", "teacher", "gold")
_SOURCE_SALT = 0x5EED  # folded into the step key for the source draw


def response_mix(method, cfg) -> dict[str, float]:
    """``source -> probability`` of a method's responses (student only by default)."""
    if method.responses is None:
        return {"student": 1.0}
    mix = {k: float(v) for k, v in method.responses(cfg).items() if v > 0}
    bad = sorted(set(mix) - set(SOURCES))
    if bad or not mix or abs(sum(mix.values()) - 1.0) > 1e-6:
        raise ValueError(
            f"method {method.name}: responses must map sources {SOURCES} to probabilities "
            f"summing to 1, got {mix}"
        )
    return mix


def teacher_role(method, cfg) -> str:
    """The role that samples a method's ``teacher`` responses (its config's
    ``teacher_role``, default ``teacher``)."""
    return getattr(cfg, "teacher_role", "teacher")


def _with_rows(ro: rollout_lib.Rollout, on_policy: bool, domain_B, mark: bool):
    b = ro.tokens_BT.shape[0]
    on_policy_B = jnp.full((b,), on_policy) if mark else None
    return dataclasses.replace(ro, domain_B=domain_B, on_policy_B=on_policy_B)


def _sample(graphdefs, spec, state, teachers, batch, key, role: str, domain_B):
    """``sample_in_chunks`` with one role's model; the routed role samples with
    every domain teacher and keeps each row's own (D sampler calls)."""
    sample = functools.partial(
        rollout_lib.sample_in_chunks,
        prompt_BP=batch.prompt_BP,
        prompt_mask_BP=batch.prompt_mask_BP,
        key=key,
        cfg=spec.sampler,
        prompts_per_call=spec.rollout_batch,
    )
    if role != scoring.ROUTED_TEACHER:
        return sample(
            scoring.pass_graphdef(role, graphdefs), scoring.pass_params(role, state, teachers)
        )

    def one(r):
        return sample(scoring.pass_graphdef(r, graphdefs), scoring.pass_params(r, state, teachers))

    return scoring.routed(one, spec.domains, domain_B)


def gold_rollout(batch, sampler: rollout_lib.SamplerConfig) -> rollout_lib.Rollout:
    """The batch's reference responses as a Rollout (rows repeated n_samples times)."""
    if batch.response_BT is None:
        raise ValueError(
            "this method trains on gold responses, but the batch has none "
            "(encode_prompts(..., max_response_len=T))"
        )
    n = sampler.n_samples
    tokens_BT = rollout_lib.repeat_rows(jnp.asarray(batch.response_BT, jnp.int32), n)
    mask_BT = rollout_lib.repeat_rows(jnp.asarray(batch.response_mask_BT, bool), n)
    if tokens_BT.shape[1] != sampler.max_new_tokens:
        raise ValueError(
            f"gold responses are {tokens_BT.shape[1]} tokens wide, the sampler "
            f"max_new_tokens={sampler.max_new_tokens}"
        )
    return rollout_lib.Rollout(
        prompt_BP=rollout_lib.repeat_rows(jnp.asarray(batch.prompt_BP, jnp.int32), n),
        prompt_mask_BP=rollout_lib.repeat_rows(jnp.asarray(batch.prompt_mask_BP, bool), n),
        tokens_BT=tokens_BT,
        mask_BT=mask_BT,
        sampler_logp_BT=jnp.zeros(tokens_BT.shape, jnp.float32),
        truncated_B=~jnp.any(mask_BT & (tokens_BT == sampler.eos_id), axis=1),
    )


def step_responses(graphdefs, spec, state, teachers, batch, key) -> rollout_lib.Rollout:
    """The step's responses (see the module docstring); pure, jit-compatible."""
    key = jax.random.fold_in(key, state.step)
    if getattr(spec.config, "student_prefix", "x") == "x+p":  # the student samples given p
        batch = dataclasses.replace(
            batch, prompt_BP=batch.priv_BQ, prompt_mask_BP=batch.priv_mask_BQ
        )
    mix = spec.response_mix
    n = spec.sampler.n_samples
    ids = batch.domain_ids_B
    domain_B = None if ids is None else rollout_lib.repeat_rows(jnp.asarray(ids, jnp.int32), n)
    mark = set(mix) != {"student"}
    role = teacher_role(spec.method, spec.config)

    def from_source(source):
        if source == "student":
            ro = _sample(graphdefs, spec, state, teachers, batch, key, "student", domain_B)
        elif source == "teacher":
            ro = _sample(graphdefs, spec, state, teachers, batch, key, role, domain_B)
        else:
            ro = gold_rollout(batch, spec.sampler)
        return _with_rows(ro, source == "student", domain_B, mark)

    sources = list(mix)
    if len(sources) == 1:
        return from_source(sources[0])
    cum = jnp.asarray(np.cumsum([mix[s] for s in sources])[:-1], jnp.float32)
    u = jax.random.uniform(jax.random.fold_in(key, _SOURCE_SALT))
    index = jnp.sum(u >= cum).astype(jnp.int32)
    return jax.lax.switch(index, [functools.partial(from_source, s) for s in sources])
