"""The end-of-run results table."""
from __future__ import annotations

METHOD_LABELS = {"opd": "vanilla OPD (T->S)", "privt": "Priv.T->S", "opsd": "OPSD",
                 "dopd": "DOPD", "dopd_hs_teacher": "DOPD hs_target=teacher",
                 "dopd_frozen": "DOPD priv_student=frozen"}


def _pct(x) -> str:
    return "-" if x is None else f"{100 * x:5.1f}"


def _num(x, fmt="{:.3f}") -> str:
    return "-" if x is None else fmt.format(x)


def _regimes(final: dict) -> str:
    if "frac_HS" not in final:
        return "-"
    return " ".join(f"{r}={100 * final['frac_' + r]:.0f}%" for r in ("LH", "LL", "HT", "HS"))


def format_table(results: dict) -> str:
    """Renders ``results.json`` content as a fixed-width text table.

    Rows: the reference models (teacher, student init) and one row per
    method. Accuracies are greedy, evaluated without privileged context
    except ``priv`` (the model given p on the test split).
    """
    head = (f"{'model':<22} {'test%':>6} {'hard%':>6} {'priv%':>6} {'entropy':>8} "
            f"{'KL(T+p)':>8} {'KL(T)':>7} {'time s':>7}  regimes (DOPD)")
    lines = [head, "-" * len(head)]
    for name, ref in results.get("references", {}).items():
        lines.append(f"{name:<22} {_pct(ref['acc_test']):>6} {_pct(ref['acc_hard']):>6} "
                     f"{_pct(ref['acc_priv']):>6} {'-':>8} {'-':>8} {'-':>7} {'-':>7}  -")
    for name, r in results.get("methods", {}).items():
        f = r.get("final", {})
        lines.append(
            f"{METHOD_LABELS.get(name, name):<22} {_pct(r['acc_test']):>6} "
            f"{_pct(r['acc_hard']):>6} {_pct(r['acc_priv']):>6} "
            f"{_num(f.get('student_entropy')):>8} {_num(f.get('kl_to_priv_teacher')):>8} "
            f"{_num(f.get('kl_to_teacher')):>7} {_num(r.get('wall_time_s'), '{:.0f}'):>7}  {_regimes(f)}")
        if r.get("warnings"):
            lines.append(f"{'':<22} warnings: {', '.join(r['warnings'])}")
    return "\n".join(lines)
