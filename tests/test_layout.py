"""The package reads as the architecture: each module imports only from the layers below its own
(docs/DESIGN.md, "Package layout"). A new module must be placed in a layer here, so that where it
belongs is decided, not drifted into."""
import ast
import pathlib

import tinybert

# lowest first; a module may import from its own layer's package and from any layer below
LAYERS = [
    {"tinybert.errors", "tinybert.xp"},                   # what everything may use
    {"tinybert.hub"},                                     # where a model name leads (package, folder, HF cache)
    {"tinybert.special"},                                 # erf (NumPy lacks it)
    {"tinybert.nn"},                                      # the layers
    {"tinybert.config", "tinybert.losses", "tinybert.optim", "tinybert.gradcheck"},
    {"tinybert.io"},                                      # files: checkpoints, atomic writes
    {"tinybert.models", "tinybert.text"},                 # BERT and its heads; the tokenizer
    {"tinybert.training", "tinybert.pipelines"},          # training; models put to one use
    {"tinybert.demo", "tinybert.real_text", "tinybert.viz"},   # the main job; real text; the HTML view
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


REPO = ROOT.parent


def test_kernels_folder_cannot_shadow_pypi_kernels(tmp_path):
    """The top-level ``kernels/`` must never answer ``import kernels``: transformers >= 5.25 imports
    PyPI's ``kernels`` when it loads, and Python started in the repository root (``python -m pytest``,
    a learner's ``python``) puts the root first on ``sys.path``. A regular package there (a folder
    with ``__init__.py``) would win; a namespace portion (no ``__init__.py``) loses to any regular
    package later on the path. Checked three ways: the folder has no ``__init__.py``; a fresh
    interpreter in the repository root, with a stand-in regular ``kernels`` later on its path, gets
    the stand-in; and in this test process, wherever PyPI's ``kernels`` is installed, it is what
    ``import kernels`` gives."""
    import importlib.metadata
    import subprocess
    import sys

    init = REPO / "kernels" / "__init__.py"
    assert not init.exists(), (f"{init} makes kernels/ a regular package, which shadows PyPI's `kernels` "
                               "(and breaks `import transformers`) for Python started in the repository "
                               "root; the dispatch lives in kernels/dispatch.py")

    elsewhere = tmp_path / "site"
    (elsewhere / "kernels").mkdir(parents=True)
    (elsewhere / "kernels" / "__init__.py").write_text("STAND_IN = True\n")
    code = "import kernels, sys; print(getattr(kernels, 'STAND_IN', False), kernels.__path__[0])"
    env = {"PATH": "/usr/bin:/bin", "PYTHONPATH": str(elsewhere)}
    for argv in ([sys.executable, "-c", code], [sys.executable, "-m", "this_is_not_run"]):
        if argv[1] == "-m":      # python -m puts the current folder first, as python -m pytest does
            (tmp_path / "this_is_not_run.py").write_text(code)
            env["PYTHONPATH"] = f"{elsewhere}:{tmp_path}"
        got = subprocess.run(argv, cwd=REPO, env=env, capture_output=True, text=True, timeout=60)
        assert got.returncode == 0, got.stderr
        stand_in, where = got.stdout.split()
        assert stand_in == "True", (f"`{' '.join(argv[1:2])}` in {REPO} imported `kernels` from {where}, "
                                    f"not the regular package later on the path ({elsewhere}/kernels)")

    try:
        importlib.metadata.distribution("kernels")
    except importlib.metadata.PackageNotFoundError:
        return                    # nothing to shadow in this environment; the two runs above still hold
    import kernels
    where = pathlib.Path(kernels.__file__ or next(iter(kernels.__path__))).resolve()
    assert REPO / "kernels" not in where.parents and where != REPO / "kernels", (
        f"`import kernels` in the test process gave {where}, the project's folder, while PyPI's "
        "`kernels` is installed: transformers would fail to import")


# ------------------------------------------------------------------------------------------------
# what round three of the house work found, guarded (issue 28)
# ------------------------------------------------------------------------------------------------

LONG_FUNCTION = 60          # lines, the def and its docstring included
SOURCE_FOLDERS = ("tinybert", "kernels", "lessons")


def _functions(folder):
    for path in sorted((REPO / folder).rglob("*.py")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for node in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield path.relative_to(REPO), node, lines[node.lineno - 1:node.end_lineno]


def test_a_long_function_says_why_it_is_long():
    """A function over LONG_FUNCTION lines carries a ``# long because:`` comment in its body (a nested
    function's reason counts for the one around it): the next reader knows it was a choice."""
    unexplained = [f"{path}:{node.lineno} {node.name} ({len(body)} lines)"
                   for folder in SOURCE_FOLDERS for path, node, body in _functions(folder)
                   if len(body) > LONG_FUNCTION and not any("# long because:" in line for line in body)]
    assert not unexplained, ("functions over %d lines without a `# long because:` comment:\n" % LONG_FUNCTION
                             + "\n".join(unexplained))


def test_kernels_never_import_the_library():
    """tinybert imports tinybert_kernels; the kernels import only each other (tinybert_kernels.xp holds
    what both need), so there is no circle."""
    wrong = [f"{path.relative_to(REPO)} imports {name}" for path in sorted((REPO / "kernels").glob("*.py"))
             for name in _imports(path) if name == "tinybert" or name.startswith("tinybert.")]
    assert not wrong, "\n".join(wrong)


def test_checkpoint_files_are_read_and_written_in_io_only():
    """The models say what they hold; tinybert/io reads and writes it (EncoderDecoderModel included)."""
    wrong = [f"{path.relative_to(REPO)} imports {name}" for path in sorted((ROOT / "models").glob("*.py"))
             for name in _imports(path) if name in ("tinybert.io.safetensors", "tinybert.io.files")]
    assert not wrong, "\n".join(wrong)


def test_no_class_is_tested_by_its_name():
    """``type(x).__name__ in ("BertForMaskedLM", ...)`` breaks silently on a subclass or a rename:
    ask the class (an attribute, as transformers' ``_tied_weights_keys``) instead."""
    import re

    pattern = re.compile(r"__name__\s*(==|!=|in\b|not in\b)")
    wrong = [f"{path.relative_to(REPO)}:{i}: {line.strip()}" for folder in SOURCE_FOLDERS
             for path in sorted((REPO / folder).rglob("*.py"))
             for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1)
             if pattern.search(line) and '"__main__"' not in line]
    assert not wrong, "\n".join(wrong)


def test_every_default_has_one_home():
    """The model-shape and training defaults live in tinybert/config.py: the library's signatures and
    the command line's help text say the same numbers."""
    import inspect

    from tinybert import cli, config
    from tinybert.real_text import pretrain_on_corpus
    from tinybert.training import pretrain

    for function, defaults in ((pretrain, config.PRETRAIN_MODEL), (pretrain_on_corpus, config.CORPUS_PRETRAIN)):
        parameters = inspect.signature(function).parameters
        for name in ("vocab_size", "num_layers", "hidden_size", "num_heads", "max_position_embeddings"):
            assert parameters[name].default == defaults[name], (function.__name__, name)
    helps = _option_help(cli.build_parser(), "pretrain")
    model = config.PRETRAIN_MODEL
    for flag, key in (("--vocab-size", "vocab_size"), ("--layers", "num_layers"), ("--hidden", "hidden_size"),
                      ("--heads", "num_heads"), ("--max-positions", "max_position_embeddings"),
                      ("--dropout", "dropout"), ("--attention-dropout", "attention_dropout")):
        assert f"({model[key]}" in helps[flag], (flag, helps[flag], model[key])
    assert f"{config.CORPUS_PRETRAIN['max_position_embeddings']} positions" in helps["--corpus"]
    assert f"{config.MLM_PROBABILITY}" in helps["--mlm-probability"]


def _option_help(parser, verb) -> dict:
    """{flag: help text} of the options of ``tinybert <verb>``."""
    import argparse

    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[verb]
    return {flag: action.help or "" for action in sub._actions for flag in action.option_strings}
