"""Package contract for mindrl.data: what it imports, plain-dict registries, docs cover every key."""
from __future__ import annotations

import ast
import sys
from pathlib import Path

import mindrl.data as data
from mindrl.data.handlers import HANDLERS
from mindrl.data.templates import load_templates

PKG = Path(data.__file__).parent
DOC = Path(__file__).resolve().parents[2] / "docs" / "data.md"
ALLOWED = {"numpy", "transformers", "tokenizers", "datasets", "pyarrow", "omegaconf", "tqdm", "__future__"}


def test_imports_stay_inside_the_allowed_set():
    allowed = ALLOWED | set(sys.stdlib_module_names)
    for path in sorted(PKG.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                assert node.level == 0, f"{path.name}: use absolute imports"
                names = [node.module]
            else:
                continue
            for name in names:
                if name.startswith("mindrl."):
                    # its own modules, and the dependency-free atomic-write helpers
                    assert name.startswith(("mindrl.data", "mindrl.utils.io")), f"{path.name} imports {name}"
                elif name.startswith("megatron"):
                    assert name.startswith("megatron.core.datasets"), f"{path.name} imports {name}"
                else:
                    assert name.split(".")[0] in allowed, f"{path.name} imports {name}"


def test_registries_are_plain_dicts():
    assert type(HANDLERS) is dict and {"r1_math", "gsm8k", "countdown"} <= set(HANDLERS)
    assert all(h.name == name and callable(h.fn) for name, h in HANDLERS.items())
    assert type(load_templates()) is dict


def test_all_exports_resolve():
    for name in data.__all__:
        assert getattr(data, name) is not None, name


def test_docs_mention_every_handler_and_template():
    text = DOC.read_text(encoding="utf-8")
    for name in list(HANDLERS) + list(load_templates()):
        assert f"`{name}`" in text, f"docs/data.md does not mention `{name}`"
