"""The models one distillation run reads: its teacher(s) and its starting student.

A run starts from the student init, or from an earlier run's final student
(``distill.init = "run:NAME"``: Cascade RL). Methods that read one teacher
per domain (MOPD, Param-Merge, GKD with ``teacher_role="teacher/@domain"``)
get the roles ``teacher/<domain>`` from ``distill.teachers`` (or from their
variant's own ``teachers``: multi-round MOPD): the experiment's teacher, or an
earlier run's final student (MOPD's RL teachers: GRPO runs on one domain each
from the shared SFT checkpoint).
The final students that later runs read are kept under
``WORKDIR/runs/<name>/params``.
"""

from __future__ import annotations

import dataclasses
import os

from dopd_jax.pipeline.context import Context
from dopd_jax.pipeline.sft_stage import Model, load_into
from dopd_jax.trainer import params_io


@dataclasses.dataclass(frozen=True)
class RunModels:
    """What a run reads: ``teacher`` (role ``teacher``), the start, domain teachers."""

    teacher: Model
    start: Model  # the student the run starts from
    domain_teachers: dict  # domain -> Model (roles teacher/<domain>)

    def teacher_params(self) -> dict:
        """Teacher params by role, as the step functions take them."""
        out = {"teacher": self.teacher.params}
        out.update({f"teacher/{d}": m.params for d, m in self.domain_teachers.items()})
        return out

    def graphdefs(self) -> dict:
        out = {"student": self.start.graphdef, "teacher": self.teacher.graphdef}
        out.update({f"teacher/{d}": m.graphdef for d, m in self.domain_teachers.items()})
        return out


def params_path(ctx: Context, run_name: str) -> str:
    return os.path.join(ctx.workdir, "runs", run_name, "params")


def keep(ctx: Context, run_name: str, params, student: Model) -> Model:
    """The final student of a run that later runs read: saved now, or (run finished
    earlier) loaded from ``runs/<name>/params``."""
    path = params_path(ctx, run_name)
    if params is not None:
        params_io.save_params(path, params)
        return dataclasses.replace(student, params=params)
    if not params_io.has_params(path):
        raise ValueError(
            f"run {run_name!r} finished without keeping its final student ({path}); "
            f"delete {os.path.dirname(path)} to run it again"
        )
    return load_into(ctx, student, path)


def resolve(ctx: Context, run, teacher: Model, student: Model, finished: dict) -> RunModels:
    """The models of ``run``; ``finished`` maps run names to kept final students."""

    def source(s: str) -> Model:
        return teacher if s == "teacher" else finished[s[len("run:") :]]

    start = source(run.init) if run.init else student
    reads = run.method.reads_domain_teachers(run.config)
    pairs = (run.teachers or ctx.spec.domain_teachers) if reads else ()
    domain_teachers = {d: source(s) for d, s in pairs}
    return RunModels(teacher, start, domain_teachers)
