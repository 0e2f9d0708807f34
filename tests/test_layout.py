"""The package reads as the architecture: each module imports only from the layers below its own
(docs/DESIGN.md, "Package layout"). A new module must be placed in a layer here, so that where it
belongs is decided, not drifted into."""
import ast
import pathlib

import tinybert

# lowest first; a module may import from its own layer's package and from any layer below
LAYERS = [
    {"tinybert.errors", "tinybert.xp"},                   # what everything may use
    {"tinybert.special"},                                 # erf (NumPy lacks it)
    {"tinybert.nn"},                                      # the layers
    {"tinybert.config", "tinybert.losses", "tinybert.optim", "tinybert.gradcheck"},
    {"tinybert.io"},                                      # files: checkpoints, atomic writes
    {"tinybert.models", "tinybert.text"},                 # BERT and its heads; the tokenizer
    {"tinybert.training", "tinybert.pipelines"},          # training; models put to one use
    {"tinybert.demo"},                                    # the main job
    {"tinybert.cli", "tinybert"},                         # the command line; the public names
]
ROOT = pathlib.Path(tinybert.__file__).parent


def _unit(module: str) -> str:
    """The layer entry a module belongs to: its subpackage, or itself for a top-level module."""
    parts = module.split(".")
    for n in (2, 1):
        if ".".join(parts[:n]) in set().union(*LAYERS):
            return ".".join(parts[:n])
    raise AssertionError(f"{module} is in no layer of tests/test_layout.py: place it in one")


def _layer(unit: str) -> int:
    return next(i for i, layer in enumerate(LAYERS) if unit in layer)


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("tinybert"):
            if node.module == "tinybert":               # from tinybert import corpus -> tinybert.corpus
                yield from (f"tinybert.{a.name}" for a in node.names)
            else:
                yield node.module
        elif isinstance(node, ast.Import):
            yield from (a.name for a in node.names if a.name.startswith("tinybert."))


def test_every_module_imports_only_downward():
    wrong = []
    for path in sorted(ROOT.rglob("*.py")):
        module = ".".join(("tinybert",) + path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        unit = _unit(module)
        for imported in _imports(path):
            if imported.startswith("tinybert_kernels"):
                continue
            other = _unit(imported)
            if other != unit and _layer(other) >= _layer(unit):
                wrong.append(f"{module} imports {imported} (layer {_layer(other)} >= its own {_layer(unit)})")
    assert not wrong, "\n".join(wrong)
