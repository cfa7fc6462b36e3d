"""What a distillation method is: its passes, its config, its loss, its label.

A method is one file that builds a ``Method``. The framework (scoring, the
fused and micro-batched updates, the runner, checkpoints, the results table)
only talks to this interface, so a new method never edits framework code.

Passes. Every target the loss compares with is a forward pass over the same
sampled response tokens, named by the slot the loss reads and given as a
``Pass(role, prefix)``:

  role    ``student``  the live student (stop-gradient)
          ``ref``      its reference copy: frozen at step 0 or an EMA
          ``teacher``  the frozen teacher; ``teacher/<name>`` one of several
  prefix  ``x``        the plain prompt the deployed student sees
          ``x+p``      the prompt followed by the privileged context p
          ``x+p'``     the prompt followed by a wrong hint p': the p of another
                       row of the batch (a fixed derangement: prompt i gets the
                       p of prompt i + 1 mod B), for the wrong-hint contrast

Slot names follow one rule (``pass_name``): ``priv_`` for the ``x+p``
prefix (``wrongp_`` for ``x+p'``), then the role, e.g. ``teacher`` (T->S), ``priv_teacher``
(Priv.T->S) and ``priv_student`` (OPSD / DOPD; backed by role ``ref`` when
the method's config asks for a frozen or EMA privileged student).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any

PREFIXES = ("x", "x+p", "x+p'")
ROUTED_TEACHER = "teacher/@domain"  # row r: the teacher of its domain (MOPD)
_SLOT_PREFIX = {"x": "", "x+p": "priv_", "x+p'": "wrongp_"}
BASE_ROLES = ("student", "ref", "teacher")
REF_UPDATES = ("frozen", "ema")
PRIV_STUDENT_MODES = ("live",) + REF_UPDATES


@dataclasses.dataclass(frozen=True)
class Pass:
    """One teacher-forced forward pass: which model, on which prefix."""

    role: str  # "student" | "ref" | "teacher" | "teacher/<name>"
    prefix: str  # "x" | "x+p"

    def __post_init__(self):
        check_role(self.role)
        if self.prefix not in PREFIXES:
            raise ValueError(f"pass prefix must be one of {PREFIXES}, got {self.prefix!r}")

    @property
    def is_teacher(self) -> bool:
        return self.role == "teacher" or self.role.startswith("teacher/")


def check_role(role: str) -> str:
    """Returns ``role`` if valid (``teacher/<name>`` with a non-empty name), else raises."""
    if role in BASE_ROLES or (
        role.startswith("teacher/")
        and len(role) > len("teacher/")
        and "/" not in role[len("teacher/") :]
    ):
        return role
    raise ValueError(f"unknown model role {role!r}; valid: {BASE_ROLES} or 'teacher/<name>'")


def pass_name(p: Pass) -> str:
    """The canonical slot name of a pass (``priv_`` + role for the x+p prefix)."""
    return _SLOT_PREFIX[p.prefix] + p.role


def pass_from_name(name: str) -> Pass:
    """Inverse of ``pass_name``: ``"priv_teacher"`` -> ``Pass("teacher", "x+p")``."""
    if name.startswith("priv_"):
        return Pass(name[len("priv_") :], "x+p")
    if name.startswith("wrongp_"):
        return Pass(name[len("wrongp_") :], "x+p'")
    return Pass(name, "x")


@dataclasses.dataclass(frozen=True)
class BatchRefs:
    """Batch reference values of a loss (e.g. DOPD's trimmed-mean threshold).

    The micro-batched step computes ``stats(cfg, targets, tokens_BT,
    chunk_size) -> {name: [b, T]}`` on every micro-batch, ``reduce(cfg,
    stats_NT, mask_NT) -> refs`` over the whole batch's valid tokens, and calls
    the loss with ``refs=refs``, so each micro-batch routes against the
    full-batch values (``loss(..., refs=None)`` computes them itself).
    """

    stats: Callable[..., dict]
    reduce: Callable[..., dict]


@dataclasses.dataclass(frozen=True)
class Method:
    """A distillation method (see the module docstring).

    Attributes:
      name: registry name (``distill.methods`` entries, results keys).
      label: row label of the results table.
      config_cls: its frozen config dataclass; every field has a default.
      passes: ``cfg -> {slot: Pass}``, the targets the loss reads.
      loss: ``(student_BTV, targets, rollout, cfg, *, chunk_size, refs) ->
        (loss, metrics)``; ``targets[slot]`` are stop-gradient logits
        ``[B, T, V]`` aligned with ``rollout.tokens_BT``.
      main_target: the slot the per-token diagnostics compare with (None:
        the method has no target, e.g. GRPO without a KL term), or
        ``cfg -> slot``.
      description: one line for listings.
      requires: example fields the method needs from the data
        (``"privileged"``, ``"response"``), checked before training.
      batch_refs: optional ``BatchRefs`` (needed to micro-batch the loss), or
        ``cfg -> BatchRefs | None``.
      monitor: optional ``() -> monitor`` with ``update(step, metrics) ->
        [warnings]`` and ``state() / from_state(dict)`` (host side).
      responses: optional ``cfg -> {source: probability}`` over ``student``,
        ``teacher`` and ``gold`` (``steps.responses``); None: on-policy only.
      needs_reward: ``cfg -> bool``; True makes the host loop score every
        rollout with the task's verifier before the update
        (``Rollout.reward_B`` and the group advantage ``advantage_B``).
      prepare: optional ``(cfg, student_params, teachers) -> params``, the
        run's starting parameters built from the student init and the teacher
        params by role (Param-Merge); None starts from the student init.
    """

    name: str
    label: str
    config_cls: type
    passes: Callable[[Any], Mapping[str, Pass]]
    loss: Callable[..., tuple[Any, dict]]
    main_target: str | None | Callable[[Any], str | None]
    description: str = ""
    requires: tuple[str, ...] = ()
    batch_refs: BatchRefs | Callable[[Any], BatchRefs | None] | None = None
    monitor: Callable[[], Any] | None = None
    responses: Callable[[Any], Mapping[str, float]] | None = None
    needs_reward: Callable[[Any], bool] = lambda cfg: False
    prepare: Callable[..., Any] | None = None

    def make_config(self, overrides: Mapping[str, Any] | None = None, where: str = ""):
        """The method's config with ``overrides`` applied; unknown fields are named."""
        return build_config(self.config_cls, overrides or {}, where or f"method {self.name}")

    def ref_update(self, cfg) -> str:
        """``"none"``, or how the role-``ref`` copy is kept (``"frozen"`` / ``"ema"``)."""
        if not any(p.role == "ref" for p in self.passes(cfg).values()):
            return "none"
        mode = getattr(cfg, "priv_student", "frozen")
        return mode if mode in REF_UPDATES else "frozen"

    def refs_for(self, cfg) -> BatchRefs | None:
        """The method's ``BatchRefs`` under ``cfg`` (None: the loss needs none)."""
        refs = self.batch_refs
        return refs(cfg) if callable(refs) and not isinstance(refs, BatchRefs) else refs

    def main_slot(self, cfg) -> str | None:
        """The slot of ``main_target`` under ``cfg``."""
        return self.main_target(cfg) if callable(self.main_target) else self.main_target

    def teacher_roles(self, cfg) -> set[str]:
        """Teacher roles the method's passes and responses read."""
        roles = {p.role for p in self.passes(cfg).values() if p.is_teacher}
        if self.responses is not None and self.responses(cfg).get("teacher", 0) > 0:
            roles.add(getattr(cfg, "teacher_role", "teacher"))
        return roles

    def reads_domain_teachers(self, cfg) -> bool:
        """True when the method reads one teacher per domain (``teacher/<domain>``)."""
        return ROUTED_TEACHER in self.teacher_roles(cfg) or self.prepare is not None

    def required_fields(self, cfg) -> set[str]:
        """Example fields the method reads: ``requires``, plus ``response`` where it
        trains on gold responses."""
        gold = self.responses is not None and self.responses(cfg).get("gold", 0) > 0
        return set(self.requires) | ({"response"} if gold else set())

    def needs_privilege(self, cfg) -> bool:
        return any(p.prefix != "x" for p in self.passes(cfg).values())

    def needs_wrong_hint(self, cfg) -> bool:
        return any(p.prefix == "x+p'" for p in self.passes(cfg).values())


def build_config(cls: type, overrides: Mapping[str, Any], where: str):
    """``cls(**overrides)`` with lists turned into tuples and unknown names refused."""
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(overrides) - fields)
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; valid: {sorted(fields)}")
    kw = {k: tuple(v) if isinstance(v, list) else v for k, v in overrides.items()}
    try:
        return cls(**kw)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{where}: {e}") from e


def config_defaults(cls: type) -> dict:
    """The config dataclass's defaults as plain values (for ``base_config``)."""
    return {f.name: getattr(cls(), f.name) for f in dataclasses.fields(cls)}


def priv_student_pass(priv_student: str) -> Pass:
    """The privileged student: the live student, or its frozen / EMA copy (role ``ref``)."""
    if priv_student not in PRIV_STUDENT_MODES:
        raise ValueError(f"priv_student must be one of {PRIV_STUDENT_MODES}, got {priv_student!r}")
    return Pass("student" if priv_student == "live" else "ref", "x+p")


def check_choice(where: str, value, valid) -> None:
    """ValueError unless ``value`` is one of ``valid`` (used by config ``__post_init__``)."""
    if value not in valid:
        raise ValueError(f"{where} must be one of {tuple(valid)}, got {value!r}")
