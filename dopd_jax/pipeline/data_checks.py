"""Up-front checks of the task data against the runs and the configured lengths.

Run once at start, before any model is built: privileged forms and fields a
method or stage needs must exist, and prompts or SFT sequences longer than the
configured limits are counted and reported. Nothing is ever truncated: rows
over a limit are refused when their share exceeds
``task.max_overlength_fraction`` (default 0: any), else left out of the
evaluation sets (and of a finite training split) with a report.
"""

from __future__ import annotations

import dataclasses
import functools

from dopd_jax.data import encode, jsonl, sources, verifiers
from dopd_jax.data.example import Example
from dopd_jax.pipeline.specs import ExperimentSpec


def _row_problem(ex: Example, tok, spec: ExperimentSpec, sft: bool) -> str | None:
    """Why one example does not fit the configured lengths (None when it fits)."""
    t = spec.task
    prompt, priv = encode.prompt_ids(ex, tok, t.priv_form)
    if len(prompt) > t.max_prompt_len:
        return f"prompt has {len(prompt)} tokens > task.max_prompt_len={t.max_prompt_len}"
    if len(priv) > t.max_priv_len:
        return (
            f"prompt + {t.priv_form!r} context has {len(priv)} tokens > "
            f"task.max_priv_len={t.max_priv_len}"
        )
    if not sft:
        return None
    for form in t.sft_forms:
        prefix, response = encode.sft_ids(ex, tok, ex.p(form))
        for key, m in (("teacher", spec.teacher), ("student", spec.student)):
            n = len(prefix) + len(response) - 1
            if m.source == "scratch" and n > m.max_len:
                return f"SFT sequence with p={form!r} has {n} tokens > {key}.max_len={m.max_len}"
    return None


def overlength_rows(examples, tok, spec: ExperimentSpec, sft: bool) -> dict[int, str]:
    """Row index -> reason, for every example over a configured length."""
    out = {}
    for i, ex in enumerate(examples):
        problem = _row_problem(ex, tok, spec, sft)
        if problem is not None:
            out[i] = problem
    return out


def _apply_limit(name: str, examples: list, bad: dict, spec: ExperimentSpec, log) -> list:
    if not bad:
        return examples
    frac, limit = len(bad) / len(examples), spec.task.max_overlength_fraction
    first = min(bad)
    msg = (
        f"{name}: {len(bad)} of {len(examples)} rows ({frac:.1%}) exceed the configured "
        f"lengths; first: row {first}: {bad[first]}"
    )
    if frac > limit:
        raise ValueError(
            f"{msg}. Raise the limits (task.max_prompt_len / task.max_priv_len / "
            "teacher.max_len / student.max_len) or allow skipping them with "
            f"task.max_overlength_fraction (now {limit}); nothing is truncated"
        )
    log(f"WARNING: {msg}; they are left out")
    return [ex for i, ex in enumerate(examples) if i not in bad]


def _check_fields(spec: ExperimentSpec, task: sources.TaskData) -> None:
    needs = {f for r in spec.runs for f in r.method.required_fields(r.config)}
    if any(m.source == "scratch" for m in (spec.teacher, spec.student)):
        needs.add("response")
    jsonl.required_fields(task.train_sample, sorted(needs - {"privileged"}), "training data")
    needs_p = any(r.method.needs_privilege(r.config) for r in spec.runs)
    sources.check_forms(task, spec.task, needs_p)
    if task.verifier in verifiers.VERIFIERS.values():
        for name, examples in task.eval_sets.items():
            verifiers.check_answers(examples, f"evaluation set {name!r}")


def _check_train(spec: ExperimentSpec, task: sources.TaskData, tok, log) -> sources.TaskData:
    sft = any(m.source == "scratch" for m in (spec.teacher, spec.student))  # SFT stages run
    if task.train_examples is None:  # an infinite stream: check a sample, skip nothing
        bad = overlength_rows(task.train_sample, tok, spec, sft=sft)
        if bad:
            first = min(bad)
            raise ValueError(
                f"training data: {len(bad)} of {len(task.train_sample)} sampled "
                f"rows exceed the configured lengths (row {first}: {bad[first]}); "
                "an infinite generated stream cannot skip rows: raise the limits"
            )
        return task
    examples = task.train_examples()
    bad = overlength_rows(examples, tok, spec, sft=sft)
    _apply_limit("training data", examples, bad, spec, log)
    if not bad:
        return task
    keep = [i for i in range(len(examples)) if i not in bad]
    return dataclasses.replace(task, train=functools.partial(task.train, keep=keep))


def check_task(spec: ExperimentSpec, task: sources.TaskData, tok, log) -> sources.TaskData:
    """Checks fields, forms and lengths; returns the task with left-out rows removed."""
    _check_fields(spec, task)
    task = _check_train(spec, task, tok, log)
    evals = {
        name: _apply_limit(
            f"evaluation set {name!r}",
            examples,
            overlength_rows(examples, tok, spec, sft=False),
            spec,
            log,
        )
        for name, examples in task.eval_sets.items()
    }
    return dataclasses.replace(task, eval_sets=evals)
