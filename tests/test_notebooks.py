"""The lessons as notebooks (lessons/make_notebooks.py, ``make notebooks``).

Every lesson converts into a valid notebook that keeps every statement of its script; lesson 03's
notebook runs top to bottom in a fresh Jupyter kernel with --small, its figures inline and its claims
checked; and a claim that does not hold raises in its cell.
"""
import ast
import io
import os
import re
import subprocess
import sys
import time
import tokenize

import nbformat
import pytest
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSONS = os.path.join(ROOT, "lessons")
sys.path.insert(0, LESSONS)
import make_notebooks  # noqa: E402  (lessons/ is not a package)

SCRIPTS = sorted(f for f in os.listdir(LESSONS) if re.match(r"\d\d_.*\.py$", f))


def _code_cells(nb):
    return [c for c in nb.cells if c.cell_type == "code" and c.metadata.get("tinybert") != "setup"]


def _comments(source: str) -> list[str]:
    """Every comment of a piece of Python, in order, except the ``# ----`` rules between steps."""
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return [t.string for t in tokens if t.type == tokenize.COMMENT
            and not re.fullmatch(r"#\s*[-=]{4,}\s*", t.string)]


def setup_cell(nb):
    return next(c.source for c in nb.cells if c.metadata.get("tinybert") == "setup")


def _assert_nothing_dropped(nb, source):
    """The code cells, read in order, are the script's statements (its docstring went to the set-up
    cell's ``__doc__``), and they keep its comments."""
    tree = ast.parse(source)
    code = "\n".join(c.source for c in _code_cells(nb))
    docstring = ast.get_docstring(tree, clean=False)
    if docstring is not None:
        tree.body = tree.body[1:]
    assert ast.dump(ast.parse(code)) == ast.dump(tree)
    assert _comments(code) == _comments(source)
    setup = setup_cell(nb)
    assigned = {n.targets[0].id: n.value for n in ast.parse(setup).body if isinstance(n, ast.Assign)
                and isinstance(n.targets[0], ast.Name)}
    assert ast.literal_eval(assigned["__doc__"]) == docstring


def _shown(node):
    """What a step's cell shows for an argument: a literal's value, else (an f-string) its source."""
    if node is None:
        return None
    try:
        return ast.literal_eval(node)
    except ValueError:
        return ast.unparse(node)


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_lesson_converts_and_keeps_every_statement(script):
    path = os.path.join(LESSONS, script)
    source = open(path, encoding="utf-8").read()
    nb = make_notebooks.notebook(path, ["--small"])
    nb = nbformat.reads(nbformat.writes(nb), as_version=4)           # as written to disk
    nbformat.validate(nb)
    assert nb.nbformat == 4

    tree = ast.parse(source)
    steps = [s.value for s in tree.body if make_notebooks._is_lesson_call(s, "step")]
    step_cells = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Step ")]
    assert len(step_cells) == len(steps) > 0, "one markdown cell per lesson.step"
    for k, (cell, call) in enumerate(zip(step_cells, steps), 1):
        given = dict(zip(("title", "formula"), call.args)) | {a.arg: a.value for a in call.keywords}
        title, formula = _shown(given["title"]), _shown(given.get("formula"))
        assert cell.startswith(f"## Step {script[:2]}.{k}  {title}\n")
        assert "**Article:**" in cell and (formula or "").strip() in cell

    _assert_nothing_dropped(nb, source)
    assert "_stepper.NOTEBOOK_ARGV = ['--small']" in setup_cell(nb)


def test_a_step_inside_a_loop_stays_in_the_cell_before(tmp_path):
    script = tmp_path / "99_loop.py"
    script.write_text(LOOPED, encoding="utf-8")
    nb = make_notebooks.notebook(str(script), [])
    nbformat.validate(nb)
    steps = [c.source for c in nb.cells if c.cell_type == "markdown" and c.source.startswith("## Step ")]
    assert len(steps) == 1 and steps[0].startswith("## Step 99.1  Top")
    _assert_nothing_dropped(nb, LOOPED)
    assert "__doc__ = None" in setup_cell(nb)
    assert _code_cells(nb)[1].source.endswith('lesson.claim("in the loop", k >= 0)')


LOOPED = """from _stepper import Lesson
lesson = Lesson("99", "a step in a loop")
lesson.step("Top", "x", article="math.input_ids")
for k in range(2):           # a step inside a loop: not a cell of its own
    lesson.step(f"inner {k}", "y", article="math.input_ids")
    lesson.claim("in the loop", k >= 0)
lesson.end(["shown"], try_next=[("a", "b"), ("c", "d")])
"""


def _execute(nb, folder, timeout=240):
    """Run ``nb`` in a fresh python3 kernel whose working folder is ``folder``; return the seconds."""
    t0 = time.time()
    NotebookClient(nb, timeout=timeout, kernel_name="python3",
                   resources={"metadata": {"path": str(folder)}}).execute()
    return time.time() - t0


def _outputs(cell, kind):
    return [o for o in cell.get("outputs", []) if o.output_type == kind]


def test_lesson_03_notebook_runs_top_to_bottom_in_a_fresh_kernel(tmp_path, monkeypatch):
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.setenv(var, "1")                  # the kernel inherits them
    monkeypatch.delenv("MPLBACKEND", raising=False)  # the kernel's own (inline) backend
    figures = tmp_path / "figures"
    assert make_notebooks.main(["03_self_attention.py", "--out", str(tmp_path),
                                f"--flags=--small --out {figures}"]) == 0
    nb = nbformat.read(str(tmp_path / "03_self_attention.ipynb"), as_version=4)
    elapsed = _execute(nb, tmp_path)
    print(f"lesson 03 (--small) as a notebook: {elapsed:.1f} s in a fresh kernel")
    assert elapsed < 240, "the notebook must run within the time the lesson test gives the script"

    cells = _code_cells(nb)
    assert not [o for c in cells for o in _outputs(c, "error")]
    text = "".join(o.text for c in cells for o in _outputs(c, "stream") if o.name == "stdout")
    images = [o for c in cells for o in _outputs(c, "display_data") if "image/png" in o.data]
    saved = re.findall(r"figure  │ (\S+\.png)", text)
    assert saved == [str(figures / "03_attention_weights.png"), str(figures / "03_why_sqrt_dk.png")]
    assert len(images) == len(saved), "every figure is shown inline, once"
    assert all(os.path.getsize(p) > 5000 for p in saved)
    done = re.search(r"lesson 03 done in [\d.]+ s: 8 steps, (\d+) claims checked, 0 failed", text)
    assert done, text[-2000:]
    assert text.count("✓ claim │") == int(done.group(1)) > 0 and "FAILED" not in text
    assert not [o for c in cells for o in _outputs(c, "execute_result")], "a cell echoes no value"


SYNTHETIC = '''"""a doc"""
import sys
sys.path.insert(0, {lessons!r})
from _stepper import Lesson


class Page:
    """An HTML view, as tinybert.view returns one."""
    def _repr_html_(self):
        return "<b id='page'>the page</b>"

    def save(self, path):
        open(path, "w").write(self._repr_html_())


lesson = Lesson("99", "notebook test", __doc__)
lesson.step("True", "2 · 3 = 6", article="math.input_ids")
lesson.claim("2 · 3 is {{v}}", 2 * 3 == 6, v=2 * 3)
lesson.display_html(Page(), "99_page.html")

lesson.step("False", "2 · 3 = 7", article="math.input_ids")
lesson.claim("2 · 3 is {{v}}", 2 * 3 == {claimed}, v={claimed})
print("AFTER THE CLAIM")
lesson.end(["shown"], try_next=[("a", "b"), ("c", "d")])
'''


def test_a_false_claim_raises_in_its_notebook_cell_and_html_shows_inline(tmp_path):
    script = tmp_path / "99_notebook.py"
    script.write_text(SYNTHETIC.format(lessons=LESSONS, claimed=7), encoding="utf-8")
    nb = make_notebooks.notebook(str(script), ["--out", str(tmp_path)])
    with pytest.raises(CellExecutionError, match=re.escape("lesson 99, step 99.2: claim failed: 2 · 3 is 7")):
        _execute(nb, tmp_path, timeout=60)
    cells = _code_cells(nb)
    first, second = cells[1], cells[2]                    # cells[0] is the preamble
    assert "✓ claim │ 2 · 3 is 6" in "".join(o.text for o in _outputs(first, "stream"))
    html = [o.data["text/html"] for o in _outputs(first, "display_data") if "text/html" in o.data]
    assert html == ["<b id='page'>the page</b>"], "display_html shows the object inline"
    assert (tmp_path / "99_page.html").read_text() == html[0], "and saves it"
    errors = _outputs(second, "error")
    assert [e.ename for e in errors] == ["AssertionError"]
    assert "AFTER THE CLAIM" not in "".join(o.text for o in _outputs(second, "stream"))


def test_display_html_in_a_script_saves_the_page_and_prints_its_path(tmp_path):
    script = tmp_path / "99_notebook.py"
    script.write_text(SYNTHETIC.format(lessons=LESSONS, claimed=7), encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    proc = subprocess.run([sys.executable, str(script), "--no-pause", "--out", str(tmp_path)], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL)
    assert f"page    │ {tmp_path / '99_page.html'}" in proc.stdout
    assert (tmp_path / "99_page.html").read_text() == "<b id='page'>the page</b>"
    assert proc.returncode == 1 and "lesson 99, step 99.2: claim failed" in proc.stderr


def test_display_html_refuses_an_object_without_save_and_repr_html(tmp_path):
    from _stepper import Lesson
    lesson = Lesson("99", "display_html", argv=["--no-pause", "--out", str(tmp_path)])
    with pytest.raises(TypeError, match=r"display_html: obj must have save\(path\) and _repr_html_\(\), got str"):
        lesson.display_html("<b>not a view</b>", "page.html")
