"""Imports only go down the layers of one step; the ConfigDict stays at the top."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1] / "dopd_jax"
# Rank of each top-level unit: a module may import only units of a lower rank
# (or its own unit).
RANKS = {
    "state": 0,
    "plugins": 0,
    "losses": 1,
    "sharding": 1,
    "models": 2,
    "methods": 2,
    "data": 2,
    "steps": 3,
    "trainer": 4,
    "pipeline": 5,
    "run": 6,
    "sweep": 6,
}


def _unit(path: pathlib.Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0].removesuffix(".py")


def _imported_units(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module
            names = [f"{base}.{a.name}" for a in node.names] if base == "dopd_jax" else [base]
        elif isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "dopd_jax" and len(parts) > 1:
                yield parts[1], node.lineno


def test_imports_only_go_down_the_layers():
    bad = []
    for path in sorted(ROOT.rglob("*.py")):
        if path.name == "__init__.py" and path.parent == ROOT:
            continue
        unit = _unit(path)
        for target, line in _imported_units(path):
            if target != unit and RANKS[target] >= RANKS[unit]:
                bad.append(f"{path.relative_to(ROOT.parent)}:{line} ({unit}) imports {target}")
    assert not bad, "\n".join(bad)
    assert RANKS["sharding"] < RANKS["steps"]


def test_config_dict_is_read_only_at_the_top():
    users = sorted(
        str(p.relative_to(ROOT.parent))
        for p in ROOT.rglob("*.py")
        if "ml_collections" in p.read_text()
    )
    assert all(u.startswith(("dopd_jax/pipeline/", "dopd_jax/run.py")) for u in users), users


def test_no_literal_token_ids_in_batches_or_steps():
    """BOS / EOS / PAD come from the tokenizer: no ``== 0`` / ``!= 0`` on token ids."""
    for sub in ("data/encode.py", "steps/sft.py", "steps/distill.py", "pipeline/evaluation.py"):
        text = (ROOT / sub).read_text()
        for needle in ("BOS_ID", "EOS_ID", "PAD_ID", "_BL != 0", "_BL == 0", "eos_id=1"):
            assert needle not in text, (sub, needle)
