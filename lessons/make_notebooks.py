"""Write every lesson as a Jupyter notebook: ``lessons/notebooks/NN_name.ipynb`` (``make notebooks``).

The scripts stay the source; a notebook is generated from one and never edited by hand. Reading the
script with ``ast`` (nothing is run), a notebook gets:

    markdown  the lesson's number, title and docstring
    code      set-up, not a line of the script: lessons/ on the import path, the flags the lesson
              runs with (``_stepper.NOTEBOOK_ARGV``, e.g. ["--small"]) and ``__doc__``
    code      the preamble: the script's statements before its first ``lesson.step``
    then, for every step:
    markdown  "Step NN.k  title", the article section(s) it follows and its formula, read from the
              arguments of the ``lesson.step(...)`` call
    code      the script's top-level statements from that ``lesson.step`` up to the next one (the
              last step's cell ends before ``lesson.end``), verbatim, comments included (a ``;``
              after a cell's last expression, so IPython does not echo what a claim returns)
    markdown  + code: ``lesson.end(...)``, what the lesson showed and what to try next

So the code cells, read in order, are the script's statements (its docstring moved to ``__doc__``),
and a claim raises in the cell that states it. Steps are top-level statements in every lesson; a
``lesson.step`` inside a loop or function stays where it is, inside the cell of the step before it.

    python lessons/make_notebooks.py                    # every lesson, default settings
    python lessons/make_notebooks.py --flags="--small" 03_self_attention.py --out /tmp/nb
"""
import argparse
import ast
import glob
import os
import re
import shlex
import sys

import nbformat

LESSONS_DIR = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, LESSONS_DIR)
from _stepper import ARTICLE, CODE_LETTERS  # noqa: E402  (lessons/ is not a package)


def _is_lesson_call(stmt: ast.stmt, method: str) -> bool:
    """Whether a top-level statement is the expression ``lesson.<method>(...)``."""
    call = stmt.value if isinstance(stmt, ast.Expr) else None
    return (isinstance(call, ast.Call) and isinstance(call.func, ast.Attribute)
            and call.func.attr == method and isinstance(call.func.value, ast.Name)
            and call.func.value.id == "lesson")


def _argument(call: ast.Call, name: str, position: int | None = None):
    """The literal value of a call's argument, given by keyword or position (None if absent)."""
    node = next((k.value for k in call.keywords if k.arg == name), None)
    if node is None and position is not None and len(call.args) > position:
        node = call.args[position]
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:                    # not a literal (e.g. an f-string): show its source
        return ast.unparse(node)


def step_markdown(step_id: str, call: ast.Call) -> str:
    """The markdown cell above a step: its title, article section(s) and formula."""
    title, formula = _argument(call, "title", 0), _argument(call, "formula", 1)
    article = _argument(call, "article")
    lines = [f"## Step {step_id}  {title}", ""]
    for key in ([article] if isinstance(article, str) else article or []):
        zh, en = ARTICLE[key]
        lines.append(f"**Article:** {zh}  \n*({en})*  ")
    if formula:
        lines += ["", "```text", formula.strip("\n"), "```"]
    if _argument(call, "letters"):
        lines += ["", f"*{CODE_LETTERS}*"]
    return "\n".join(lines)


def _source(lines: list[str], first: int, last: int) -> str:
    """Lines ``first``..``last`` (0-based, inclusive), without the blank and ``# ----`` rule lines
    that end them (the script's separators between steps)."""
    chunk = lines[first:last + 1]
    while chunk and (not chunk[-1].strip() or re.fullmatch(r"#\s*[-=]{4,}\s*", chunk[-1].strip())):
        chunk.pop()
    while chunk and not chunk[0].strip():
        chunk.pop(0)
    return "".join(chunk).rstrip("\n")


def _quiet(code: str) -> str:
    """``code`` with ``;`` after its last statement when that is an expression (a call such as
    ``lesson.claim(...)``): IPython then does not echo its value, and the cell prints what the script
    prints. The ``;`` changes no statement."""
    tree = ast.parse(code)
    if not tree.body or not isinstance(tree.body[-1], ast.Expr):
        return code
    last = tree.body[-1]
    lines = code.split("\n")
    row = lines[last.end_lineno - 1].encode("utf-8")          # ast's column offsets count bytes
    lines[last.end_lineno - 1] = (row[:last.end_col_offset] + b";" + row[last.end_col_offset:]).decode("utf-8")
    return "\n".join(lines)


def split_lesson(path: str):
    """``(number, title, docstring, preamble, steps, end)`` of a lesson script.

    ``steps`` is a list of ``(lesson.step call, code)``; ``preamble`` and ``end`` are code (the end:
    the ``lesson.end`` statement and anything after it). Code is the script's text, verbatim.
    """
    text = open(path, encoding="utf-8").read()
    lines = text.splitlines(keepends=True)
    tree = ast.parse(text)
    body = tree.body
    docstring = ast.get_docstring(tree, clean=False)
    if docstring is not None:
        body = body[1:]
    cuts = [i for i, s in enumerate(body) if _is_lesson_call(s, "step") or _is_lesson_call(s, "end")]
    if not cuts or not _is_lesson_call(body[cuts[-1]], "end"):
        raise ValueError(f"{path}: a lesson has lesson.step(...) calls and ends with lesson.end(...)")

    def first_line(i):                   # 0-based first line of statement i (decorators included)
        s = body[i]
        return min([s.lineno] + [d.lineno for d in getattr(s, "decorator_list", [])]) - 1

    starts = [0 if docstring is None else tree.body[0].end_lineno] + [first_line(i) for i in cuts]
    chunks = [_quiet(_source(lines, a, b - 1)) for a, b in zip(starts, starts[1:] + [len(lines)])]
    lesson_call = next(n for n in ast.walk(tree) if isinstance(n, ast.Call)
                       and isinstance(n.func, ast.Name) and n.func.id == "Lesson")
    number, title = ast.literal_eval(lesson_call.args[0]), ast.literal_eval(lesson_call.args[1])
    steps = [(body[i].value, chunk) for i, chunk in zip(cuts[:-1], chunks[1:-1])]
    doc_source = "" if docstring is None else ast.get_source_segment(text, tree.body[0])
    return number, title, docstring, doc_source, chunks[0], steps, chunks[-1]


def notebook(path: str, flags: list[str]) -> nbformat.NotebookNode:
    """The notebook of one lesson script, run with ``flags`` (as on the command line)."""
    number, title, docstring, doc_source, preamble, steps, end = split_lesson(path)
    name = os.path.relpath(path, os.path.dirname(LESSONS_DIR))
    intro = (f"# Lesson {number}: {title}\n\n```text\n{(docstring or '').strip()}\n```\n\n"
             f"*Generated from `{name}` by `make notebooks` (edit the script, not this notebook). "
             f"Run the cells in order; a claim (✓) that does not hold raises in its cell.*")
    setup = (f"# Set up by lessons/make_notebooks.py, not a line of {name}: lessons/ on the import path,\n"
             f"# the lesson's flags (as on its command line) and the docstring the script reads as __doc__.\n"
             f"import sys\nsys.path.insert(0, {LESSONS_DIR!r})\nimport _stepper\n"
             f"_stepper.NOTEBOOK_ARGV = {flags!r}\n"
             + (f"__doc__ = {doc_source}" if doc_source else "__doc__ = None"))
    cells = [nbformat.v4.new_markdown_cell(intro),
             nbformat.v4.new_code_cell(setup, metadata={"tinybert": "setup"}),
             nbformat.v4.new_code_cell(preamble)]
    for k, (call, code) in enumerate(steps, 1):
        cells.append(nbformat.v4.new_markdown_cell(step_markdown(f"{number}.{k}", call)))
        cells.append(nbformat.v4.new_code_cell(code))
    cells.append(nbformat.v4.new_markdown_cell(f"## What lesson {number} showed, and what to try next"))
    cells.append(nbformat.v4.new_code_cell(end))
    nb = nbformat.v4.new_notebook(cells=cells)
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nb.metadata["language_info"] = {"name": "python"}
    return nb


def main(argv=None):
    parser = argparse.ArgumentParser(description="Write lessons/NN_*.py as Jupyter notebooks.")
    parser.add_argument("lessons", nargs="*", help="lesson scripts (default: every lessons/NN_*.py)")
    parser.add_argument("--out", default=os.path.join(LESSONS_DIR, "notebooks"),
                        help="folder for the notebooks (default: lessons/notebooks/)")
    parser.add_argument("--flags", default="",
                        help='the lessons\' command-line flags in the notebooks, e.g. --flags="--small"')
    args = parser.parse_args(argv)
    paths = [p if os.path.exists(p) else os.path.join(LESSONS_DIR, p) for p in args.lessons] or \
        sorted(glob.glob(os.path.join(LESSONS_DIR, "[0-9][0-9]_*.py")))
    os.makedirs(args.out, exist_ok=True)
    for path in paths:
        nb = notebook(path, shlex.split(args.flags))
        nbformat.validate(nb)
        target = os.path.join(args.out, os.path.basename(path)[:-3] + ".ipynb")
        nbformat.write(nb, target)
        n_steps = sum(c.cell_type == "markdown" and c.source.startswith("## Step") for c in nb.cells)
        print(f"{target}  ({n_steps} steps)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
