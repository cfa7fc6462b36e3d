"""Teacher-forced forward passes: logits of given response tokens after a prefix.

``teacher_forced_logits`` is the plain forward pass; ``forward_logits`` the
same values as a ``lax.scan`` over stacked layers with optional remat and
activation sharding constraints (the micro-batched step's form).
``score_passes`` runs every pass a method declares against a dict of models.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dopd_jax.methods.base import ROUTED_TEACHER, Pass
from dopd_jax.models import transformer
from dopd_jax.steps import rollout


def teacher_forced_logits(graphdef, params, prefix_BP, prefix_mask_BP, response_BT):
    """Teacher-forced logits of a response after a left-padded prefix.

    Positions come from the cumulative mask, so a response gets the same
    positions after any amount of left padding; ``logits_BTV[:, n]`` predicts
    ``response_BT[:, n]``. Response pads after EOS are fed as ordinary tokens
    (they only affect later, masked positions).

    Args:
      graphdef: static half of ``nnx.split(model)``.
      params: parameter state of the model.
      prefix_BP: int32 left-padded prefix ids (prompt, or prompt + privilege).
      prefix_mask_BP: bool, True on real prefix tokens; every row non-empty.
      response_BT: int32 response ids.

    Returns:
      logits_BTV in the model's compute dtype.
    """
    rollout.check_prefix(prefix_BP, prefix_mask_BP, "prefix")
    if response_BT.ndim != 2 or response_BT.shape[0] != prefix_BP.shape[0]:
        raise ValueError(
            f"response {response_BT.shape} must be [B, T] with the prefix's B={prefix_BP.shape[0]}"
        )
    model = nnx.merge(graphdef, params)
    p, t = prefix_BP.shape[1], response_BT.shape[1]
    tokens_BL = jnp.concatenate([prefix_BP, response_BT], axis=1).astype(jnp.int32)
    mask_BL = jnp.concatenate(
        [jnp.asarray(prefix_mask_BP, bool), jnp.ones(response_BT.shape, bool)], axis=1
    )
    h_BLD = model.hidden(
        tokens_BL, mask_BL=mask_BL, positions_BL=transformer.default_positions(mask_BL)
    )
    # Only the T positions that predict response tokens are projected to V.
    return model.logits(h_BLD[:, p - 1 : p + t - 1])


def _stacked_blocks(model):
    """The decoder blocks as one graphdef and their states stacked on a leading layer axis."""
    splits = [nnx.split(block) for block in model.layers]
    graphdef = splits[0][0]
    if any(gd != graphdef for gd, _ in splits[1:]):
        raise ValueError("forward_logits needs decoder blocks of one structure")
    return graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *(st for _, st in splits))


def forward_logits(
    graphdef,
    params,
    prefix_BP,
    prefix_mask_BP,
    response_BT,
    *,
    remat: bool = False,
    constrain=lambda x: x,
):
    """``teacher_forced_logits`` as a ``lax.scan`` over layers, with optional remat and constraints.

    Same values as ``teacher_forced_logits`` (the model's own modules, as in
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
    mask_BL = jnp.concatenate(
        [prefix_mask_BP.astype(bool), jnp.ones(response_BT.shape, bool)], axis=1
    )
    positions_BL = transformer.default_positions(mask_BL)
    block_gd, blocks_N = _stacked_blocks(model)

    def body(x_BLD, block_state):
        block = nnx.merge(block_gd, block_state)
        return constrain(block(x_BLD, positions_BL, mask_BL)[0]), None

    body = jax.checkpoint(body) if remat else body
    x_BLD, _ = jax.lax.scan(body, constrain(model.embed(tokens_BL)), blocks_N)
    # RMSNorm is per position: normalising only the T scored positions is exact.
    return constrain(model.logits(model.final_norm(x_BLD[:, p - 1 : p + t - 1])))


def check_routing(domains, domain_B) -> None:
    """The routed teacher role needs the domain list and each row's domain index."""
    if not domains or domain_B is None:
        raise ValueError(
            f"role {ROUTED_TEACHER!r} routes rows by domain: it needs DistillSpec.domains "
            f"(got {tuple(domains)}) and PromptBatch.domain_ids_B "
            f"({'missing' if domain_B is None else 'given'})"
        )


def routed(fn, domains, domain_B):
    """``fn(role)`` of each row's domain teacher: ``fn(teacher/<d>)`` on the rows of
    domain d. Every domain teacher runs over all rows (one pass each), and each row
    keeps its own teacher's values: one ``[B, ...]`` result (an array, or a pytree of
    them such as a Rollout)."""
    check_routing(domains, domain_B)
    out = None
    for d, name in enumerate(domains):
        x = fn(f"teacher/{name}")

        def pick(new, old, d=d):
            return jnp.where((domain_B == d).reshape((-1,) + (1,) * (new.ndim - 1)), new, old)

        out = x if out is None else jax.tree.map(pick, x, out)
    return out


def pass_params(role: str, state, teachers: dict):
    """Parameters of a model role: live student, its reference copy, or a teacher."""
    if role == "student":
        return state.params
    if role == "ref":
        if state.ref_params is None:
            raise ValueError(
                "a pass uses role 'ref' but the train state keeps no reference "
                "copy (init_state(..., keep_ref=True))"
            )
        return state.ref_params
    if role not in teachers:
        raise ValueError(f"no model for role {role!r}; teachers given: {sorted(teachers)}")
    return teachers[role]


def pass_graphdef(role: str, graphdefs: dict):
    """Graphdef of a model role (``ref`` shares the student's)."""
    key = "student" if role == "ref" else role
    if key not in graphdefs:
        raise ValueError(f"no graphdef for role {role!r}; given: {sorted(graphdefs)}")
    return graphdefs[key]


def pass_prefix(p: Pass, ro, priv_BQ, priv_mask_BQ, wrong=None):
    """``(ids, mask)`` of the prefix a pass conditions on (rows as in the rollout);
    ``wrong`` holds the wrong-hint prefixes ``x + p'``."""
    if p.prefix == "x":
        return ro.prompt_BP, ro.prompt_mask_BP
    if p.prefix == "x+p'":
        if wrong is None or wrong[0] is None:
            raise ValueError(
                "a pass uses the wrong-hint prefix x+p' but the batch has none "
                "(encode_prompts(..., wrong_hints=True))"
            )
        return wrong
    return priv_BQ, priv_mask_BQ


def score_pass(
    graphdefs: dict,
    p: Pass,
    state,
    teachers: dict,
    ro,
    priv_BQ,
    priv_mask_BQ,
    forward=teacher_forced_logits,
    domains=(),
    wrong=None,
):
    """Stop-gradient logits ``[B, T, V]`` of one pass over the rollout's tokens.

    The routed role ``teacher/@domain`` gives row r the logits of the teacher
    ``teacher/<domains[ro.domain_B[r]]>`` (``routed``)."""
    prefix_BP, mask_BP = pass_prefix(p, ro, priv_BQ, priv_mask_BQ, wrong)

    def logits(role):
        return forward(
            pass_graphdef(role, graphdefs),
            pass_params(role, state, teachers),
            prefix_BP,
            mask_BP,
            ro.tokens_BT,
        )

    if p.role == ROUTED_TEACHER:
        return jax.lax.stop_gradient(routed(logits, domains, ro.domain_B))
    return jax.lax.stop_gradient(logits(p.role))
