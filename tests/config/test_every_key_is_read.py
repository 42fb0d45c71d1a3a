"""Every schema field is read by the code it names: a key nothing reads must not exist.

How the scan works (AST over mindrl/, no code is run):

1. Sections are reached by attribute: `cfg.rl_config`, `run.cfg.generate_config.sampling_config`.
   An attribute `X.<field>` counts as a read of `<section>.<field>` when X *is* that section:
   - an attribute chain ending in the section's name whose own receiver is its parent section
     (`cfg.rl_config.kl_coef`, `cfg.generate_config.sampling_config.temperature`); the root
     config is any name or attribute called `cfg`/`config`, or a parameter annotated `MindRLConfig`;
   - a name that the package binds to that section somewhere (`rl = cfg.rl_config`,
     `mt, rl = cfg.megatron_training, cfg.rl_config`), or a parameter annotated with the
     section's class. Alias names are pooled across the package, so a parameter named `rl` that
     receives `cfg.rl_config` from its caller (`PolicyWorker.update(batch, rl)`) counts.
2. A section passed whole to `<Class>.from_config(section)` is read field by field by name
   (`SamplingParams.from_config(cfg.generate_config.sampling_config)`): the fields that `<Class>`
   also declares count as read. `GENERIC_CONSUMERS` names those classes.
3. Not reads: `mindrl/config/` itself (the schema, the loader that iterates every field, and
   `validate()`, which reads fields to check them — checking a key is not honouring it), and
   whole-config dumps (`dataclasses.asdict(cfg)` for logging).

False negatives (a field passes although nothing honours it): an alias name reused for another
object that has an attribute of the same name. False positives (a read field is reported): a
section reached only through `getattr(..., "name")`, `**asdict(section)` or a parameter whose name
is never bound as an alias; read it through a plain alias instead, or add the consumer class to
`GENERIC_CONSUMERS`.
"""
from __future__ import annotations

import ast
import dataclasses
import typing
from pathlib import Path

from mindrl.config import schema

PACKAGE = Path(__file__).resolve().parents[2] / "mindrl"
ROOT_NAMES = {"cfg", "config"}
# Section objects read field by field through `<Class>.from_config(section)`: class -> its module.
GENERIC_CONSUMERS = {"SamplingParams": "mindrl.rollout.base"}

# PENDING: fields owned by engineers whose branches are being merged in parallel (issue 11a: RLConfig
# algorithm keys; issue 12: every generate_config key). Each must be read by the trainer or deleted
# there; the lead removes an entry here as soon as its branch lands. An entry that is read already
# fails `test_pending_allowlist_has_no_stale_entries`, so the list only shrinks.
PENDING: set[str] = set()


def sections() -> dict[str, tuple[type, str | None]]:
    """Dotted section path -> (dataclass, parent path; None for the root's direct sections)."""
    out: dict[str, tuple[type, str | None]] = {}

    def walk(cls: type, prefix: str | None) -> None:
        for f in dataclasses.fields(cls):
            ftype = typing.get_type_hints(cls)[f.name]
            if dataclasses.is_dataclass(ftype):
                path = f"{prefix}.{f.name}" if prefix else f.name
                out[path] = (ftype, prefix)
                walk(ftype, path)
    walk(schema.MindRLConfig, None)
    return out


def schema_fields() -> set[str]:
    """Every leaf field, dotted (`rl_config.kl_coef`; top level: `backend`)."""
    secs = sections()
    leaves = {f.name for f in dataclasses.fields(schema.MindRLConfig) if f.name not in secs}
    for path, (cls, _) in secs.items():
        leaves |= {f"{path}.{f.name}" for f in dataclasses.fields(cls)
                   if f"{path}.{f.name}" not in secs}
    return leaves


def scanned_trees() -> list[ast.AST]:
    trees = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.parent.name == "config" and path.parent.parent == PACKAGE:
            if path.name != "validate.py":
                continue
            tree = ast.parse(path.read_text(encoding="utf-8"))
            # resolve_hf_config / actor_layout consume the model and layout keys; validate() only checks.
            tree.body = [n for n in tree.body if not (isinstance(n, ast.FunctionDef)
                                                      and n.name in ("validate", "check_config"))]
            trees.append(tree)
            continue
        trees.append(ast.parse(path.read_text(encoding="utf-8")))
    return trees


class Scan:
    def __init__(self, trees: list[ast.AST]) -> None:
        self.secs = sections()
        self.by_class = {cls.__name__: path for path, (cls, _) in self.secs.items()}
        self.aliases: dict[str, set[str]] = {}  # name -> section paths it is bound to somewhere
        self.trees = trees
        for _ in range(3):  # aliases of aliases (`s = gen.sampling_config`)
            for tree in trees:
                self._collect_aliases(tree)

    def section_of(self, node: ast.AST) -> set[str]:
        """The section paths `node` may evaluate to ("" for the root config)."""
        if isinstance(node, ast.Name):
            found = set(self.aliases.get(node.id, set()))
            if node.id in ROOT_NAMES:
                found.add("")
            return found
        if isinstance(node, ast.Attribute):
            if node.attr in ROOT_NAMES:
                return {""}
            out = set()
            for parent in self.section_of(node.value):
                path = f"{parent}.{node.attr}" if parent else node.attr
                if path in self.secs:
                    out.add(path)
            return out
        return set()

    def _bind(self, target: ast.AST, value: ast.AST) -> None:
        if isinstance(target, ast.Tuple) and isinstance(value, ast.Tuple):
            for t, v in zip(target.elts, value.elts):
                self._bind(t, v)
        elif isinstance(target, ast.Name):
            found = self.section_of(value)
            if found:
                self.aliases.setdefault(target.id, set()).update(found)

    def _collect_aliases(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if isinstance(node, ast.Assign):
                for target in node.targets:
                    self._bind(target, node.value)
            elif isinstance(node, ast.arg) and node.annotation is not None:
                ann = ast.unparse(node.annotation).strip("'\"").split(".")[-1].split(" ")[0]
                if ann == "MindRLConfig":
                    self.aliases.setdefault(node.arg, set()).add("")
                elif ann in self.by_class:
                    self.aliases.setdefault(node.arg, set()).add(self.by_class[ann])

    def reads(self) -> set[str]:
        import importlib

        read: set[str] = set()
        for tree in self.trees:
            for node in ast.walk(tree):
                if isinstance(node, ast.Attribute):
                    for sec in self.section_of(node.value):
                        read.add(f"{sec}.{node.attr}" if sec else node.attr)
                elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
                      and node.func.attr == "from_config" and isinstance(node.func.value, ast.Name)
                      and node.func.value.id in GENERIC_CONSUMERS and node.args):
                    consumer = getattr(importlib.import_module(GENERIC_CONSUMERS[node.func.value.id]),
                                       node.func.value.id)
                    names = {f.name for f in dataclasses.fields(consumer)}
                    for sec in self.section_of(node.args[0]):
                        cls = self.secs[sec][0]
                        read |= {f"{sec}.{f.name}" for f in dataclasses.fields(cls) if f.name in names}
        return read


def unread_fields() -> set[str]:
    return schema_fields() - Scan(scanned_trees()).reads()


def test_every_schema_field_is_read_by_the_code_it_names():
    unread = sorted(unread_fields() - PENDING)
    assert not unread, ("schema fields nothing in mindrl/ reads (outside config/validate): " + ", ".join(unread)
                        + ". Wire each into the code it names, or delete it from mindrl/config/schema.py.")


def test_pending_allowlist_has_no_stale_entries():
    stale = sorted(PENDING - unread_fields())
    assert not stale, f"read now (or gone from the schema): remove from PENDING: {', '.join(stale)}"


def test_the_scan_sees_aliases_chains_and_generic_consumers():
    """The scan itself, on hand-written code: each way of reading counts, and nothing else does."""
    code = '''
def f(cfg, run, rl_sec: "RLConfig"):
    mt, gen = cfg.megatron_training, run.cfg.generate_config
    s = gen.sampling_config
    use(mt.seed, s.temperature, rl_sec.kl_coef, cfg.actor_config.lr, cfg.backend)
    SamplingParams.from_config(gen.sampling_config)
    torch.save(obj); other.load; run.model.name
'''
    reads = Scan([ast.parse(code)]).reads()
    sampling = {f"generate_config.sampling_config.{f.name}" for f in dataclasses.fields(schema.SamplingConfig)}
    assert {"megatron_training.seed", "rl_config.kl_coef", "actor_config.lr", "backend"} <= reads
    assert sampling <= reads  # every SamplingConfig field is also a SamplingParams field
    # Not sections: torch.save / other.load / run.model.name (run is not the config).
    assert not {"actor_config.save", "actor_config.load", "model.name"} & reads
