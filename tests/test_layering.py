"""Dependencies point one way: each subsystem imports only what docs/architecture.md allows, and
the table there says the same as `ALLOWED` here."""
from __future__ import annotations

import ast
import re
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "mindrl"
DOC = PACKAGE.parent / "docs" / "architecture.md"

ALLOWED = {
    "backends": set(),
    "models": set(),
    "algorithms": set(),
    "rewards": {"utils"},  # utils.io only: atomic writes (utils imports nothing heavy)
    "data": {"utils"},
    "utils": {"backends"},  # launch.free_port
    "launch": {"backends", "config", "trainer", "utils"},  # Ray driver, rank actors, node roles
    # validate() checks names against the algorithm registries and asks the backend what it can run
    "config": {"models", "algorithms", "backends"},
    "checkpoint": {"models", "utils"},
    "rollout": {"backends", "models", "checkpoint", "utils"},
    # config: `PolicySpec.from_config` / `optim_config` read a MindRLConfig in one place (bringup.py).
    "workers": {"backends", "models", "algorithms", "rewards", "data", "checkpoint", "rollout", "utils", "config"},
    "eval": {"backends", "models", "checkpoint", "rollout", "rewards", "data", "workers", "utils"},
    # the planner builds the trainer's own model/DDP/optimizer (workers) from a config, on simulated ranks.
    "plan": {"backends", "models", "config", "workers"},
    "trainer": {"backends", "models", "config", "algorithms", "rewards", "data", "utils", "checkpoint", "rollout",
                "workers"},
}
# cli/ and the entry-point modules mindrl/evaluate.py, mindrl/plot.py may import anything.


def mindrl_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    found = set()
    for node in ast.walk(tree):
        names = []
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        for name in names:
            parts = name.split(".")
            if parts[0] == "mindrl" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_subsystems_import_only_what_they_may():
    problems = []
    for sub, allowed in ALLOWED.items():
        for path in sorted((PACKAGE / sub).rglob("*.py")):
            bad = mindrl_imports(path) - allowed - {sub}
            if bad:
                problems.append(f"{path.relative_to(PACKAGE)} imports mindrl.{', mindrl.'.join(sorted(bad))}")
    assert not problems, "\n".join(problems)


def test_every_subsystem_says_what_it_owns():
    for sub in ALLOWED:
        init = PACKAGE / sub / "__init__.py"
        assert init.is_file(), f"mindrl/{sub}/__init__.py missing"
        doc = ast.get_docstring(ast.parse(init.read_text(encoding="utf-8")))
        assert doc and len(doc) > 40, f"mindrl/{sub}/__init__.py needs a docstring saying what it owns"


def test_architecture_doc_table_matches():
    """docs/architecture.md's "may import" column is this file's ALLOWED (trainer: "everything but")."""
    rows = {}
    for line in DOC.read_text(encoding="utf-8").splitlines():
        m = re.match(r"\| `(\w+)/` \|.*\| ([^|]*) \|$", line)
        if m:
            rows[m.group(1)] = m.group(2)
    assert set(ALLOWED) <= set(rows), f"subsystems missing from the table: {sorted(set(ALLOWED) - set(rows))}"
    every = {p.name for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()}
    for sub, allowed in ALLOWED.items():
        names = set(re.findall(r"`(\w+)`", rows[sub]))
        said = every - names - {sub} if rows[sub].startswith("everything but") else names
        assert said == allowed, f"{sub}: the doc says {sorted(said)}, the test allows {sorted(allowed)}"
