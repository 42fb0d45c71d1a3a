"""Package contract: imports only torch + stdlib, registries are plain dicts, docs cover every registry key."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import mindrl.algorithms as alg

PKG = Path(alg.__file__).parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "algorithms.md"


def test_imports_only_torch_and_stdlib():
    allowed = {"torch", "__future__"} | set(sys.stdlib_module_names)
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                roots = [a.name.split(".")[0] for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                if node.level > 0:  # relative: stays inside mindrl/algorithms
                    assert node.level == 1, f"{path.name}: relative import leaves the package"
                    continue
                roots = [node.module.split(".")[0]]
            else:
                continue
            for root in roots:
                assert root in allowed, f"{path.name} imports {root}"


def test_registries_are_plain_dicts_of_callables():
    for registry, must_have in ((alg.ADVANTAGE_ESTIMATORS, {"group_norm", "grpo", "dr_grpo", "rloo"}),
                                (alg.POLICY_LOSSES, {"vanilla", "gspo", "cispo"}),
                                (alg.KL_ESTIMATORS, {"kl", "abs", "mse", "low_var_kl"}),
                                (alg.LOSS_AGGREGATIONS, {"token-mean", "seq-mean-token-mean", "seq-mean-token-sum",
                                                         "seq-mean-token-sum-norm"})):
        assert type(registry) is dict and must_have <= set(registry)
        assert all(callable(fn) for fn in registry.values())


def test_all_exports_resolve():
    for name in alg.__all__:
        assert getattr(alg, name) is not None, name


def test_docs_mention_every_registry_key():
    text = DOC.read_text(encoding="utf-8")
    for registry in (alg.ADVANTAGE_ESTIMATORS, alg.KL_ESTIMATORS, alg.LOSS_AGGREGATIONS, alg.POLICY_LOSSES):
        for key in registry:
            assert f"`{key}`" in text, f"docs/algorithms.md does not mention `{key}`"
