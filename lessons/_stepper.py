"""The step-through helper every lesson uses.

A lesson is a list of steps. Each step prints its title, the article section it follows (the
Chinese heading and an English gloss), the article's formula, and the source lines in tinybert that
compute it (found with ``inspect``, so they are always the code that really ran); then the lesson
prints the shapes and values it computed, and **claims**: a sentence that states a result is
checked against the lesson's own numbers, and a claim that does not hold stops the lesson with an
error (so ``make test``, which runs every lesson, fails). Between steps the script waits (Enter
continues, ``q`` quits). Figures are saved as PNG files in one folder, whose path is printed.

    from _stepper import Lesson, Code, spread
    lesson = Lesson("03", "Self-attention by hand", __doc__)
    lesson.step("Weights", "S = softmax(QKᵀ / √d_k)", code=Code(softmax, "e = xp.exp"),
                article="math.attention")
    lesson.claim("every row of S sums to 1 (worst error {err:.1e})", err < 1e-12, err=err)
    lesson.end(["what the lesson showed", ...], try_next=[("an exercise", "what you should see")])

Command line, the same for every lesson:

    --no-pause    run straight through (what the tests do)
    --no-code     print only the file:line of the code, not its source lines
    --out DIR     where figures go (default: lessons/figures/)
    --small       small, fast settings (the tests use them); the defaults are a little larger
    --seed N      the random seed (default 0); results that depend on randomness use seeds N, N+1, …
    --keep-going  report a failed claim and go on (the lesson still exits with status 1 at the end)
    --exercise N  run the solution of the lesson's exercise N (its "Try next" item N) instead of the
                  lesson, and check its expected result

In a notebook (``make notebooks`` writes one per lesson, ``lessons/make_notebooks.py``) the same
script runs cell by cell in a Jupyter kernel, and ``Lesson`` notices (``in_notebook()``): it reads its
flags from ``NOTEBOOK_ARGV`` (the notebook's first cell sets them; never the kernel's own argv), never
pauses, shows each figure inline under the cell that made it, and a claim that does not hold raises
``AssertionError`` in its cell, so "Run all" stops there as the script would. ``lesson.display_html(obj,
path)`` is for objects that render as HTML (``_repr_html_``, e.g. ``tinybert.view``'s page): a script
saves the page and prints its path, a notebook also shows it inline.

Exercises and their solutions. Each lesson ends with two or three "Try next" exercises. The solution
of lesson NN's exercise k is the function ``exercise_k(lesson)`` in ``lessons/solutions/NN_*.py``
(open it after trying): it makes the change the exercise asks for, prints what changes, and checks
the result the exercise promises with ``lesson.claim`` — so ``--exercise k`` is a test that can
fail, and ``tests/test_lessons.py`` runs every one of them.
"""
from __future__ import annotations

import argparse
import glob
import importlib.util
import inspect
import os
import re
import sys
import textwrap
import time

import numpy as np

LESSONS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(LESSONS_DIR)
WIDTH = 96
MAX_CODE_LINES = 20

# The article's sections (its own headings, in Chinese) with an English gloss. A step names the
# section it follows, so that the lesson and the article can be read side by side.
_FORMULAS = "数学模型和公式详细讲解举例说明"
_STEPS = "核心算法原理具体操作步骤"
_CODE = "项目实践：代码实例和详细解释说明"
ARTICLE = {
    "concepts.transfer": ("核心概念与联系 › 1. 大规模预训练与微调",
                          "core concepts › 1. large-scale pretraining and fine-tuning"),
    "concepts.attention": ("核心概念与联系 › 2. 自注意力机制",
                           "core concepts › 2. the self-attention mechanism (long-range dependencies)"),
    "concepts.capacity": ("核心概念与联系 › 3. 参数量与表达能力",
                          "core concepts › 3. parameter count and expressive power"),
    "pretrain.1": (f"{_STEPS} › 预训练阶段 › 1. 数据准备", "algorithm steps › pretraining › 1. data preparation"),
    "pretrain.2": (f"{_STEPS} › 预训练阶段 › 2. 模型构建", "algorithm steps › pretraining › 2. building the model"),
    "pretrain.3": (f"{_STEPS} › 预训练阶段 › 3. 损失函数定义", "algorithm steps › pretraining › 3. defining the loss"),
    "pretrain.4": (f"{_STEPS} › 预训练阶段 › 4. 反向传播", "algorithm steps › pretraining › 4. backpropagation"),
    "pretrain.5": (f"{_STEPS} › 预训练阶段 › 5. 正则化", "algorithm steps › pretraining › 5. regularisation"),
    "finetune.1": (f"{_STEPS} › 微调阶段 › 1. 任务定义", "algorithm steps › fine-tuning › 1. defining the task"),
    "finetune.2": (f"{_STEPS} › 微调阶段 › 2. 数据集准备", "algorithm steps › fine-tuning › 2. preparing the data"),
    "finetune.3": (f"{_STEPS} › 微调阶段 › 3. 模型初始化", "algorithm steps › fine-tuning › 3. initialising the model"),
    "finetune.4": (f"{_STEPS} › 微调阶段 › 4. 任务特定层添加",
                   "algorithm steps › fine-tuning › 4. adding task-specific layers"),
    "finetune.5": (f"{_STEPS} › 微调阶段 › 5. 微调训练", "algorithm steps › fine-tuning › 5. fine-tuning"),
    "math.encoder": (f"{_FORMULAS} › Transformer结构 › 编码器层",
                     "maths and formulas › the Transformer › the encoder layer"),
    "math.decoder": (f"{_FORMULAS} › Transformer结构 › 解码器层",
                     "maths and formulas › the Transformer › the decoder layer"),
    "math.input_ids": (f"{_FORMULAS} › BERT模型公式", "maths and formulas › BERT's formulas (x = (x_1, …, x_n))"),
    "math.embedding": (f"{_FORMULAS} › BERT模型公式 › 输入嵌入",
                       "maths and formulas › BERT's formulas › input embedding"),
    "math.attention": (f"{_FORMULAS} › BERT模型公式 › 自注意力机制",
                       "maths and formulas › BERT's formulas › self-attention"),
    "math.output": (f"{_FORMULAS} › BERT模型公式 › 输出", "maths and formulas › BERT's formulas › output"),
    "code.init": (f"{_CODE} › 初始化模型和分词器", "the code example › initialise the model and the tokenizer"),
    "code.tokenize": (f"{_CODE} › 分词", "the code example › tokenize"),
    "code.forward": (f"{_CODE} › 前向传播", "the code example › forward pass"),
    "code.decode": (f"{_CODE} › 解码输出", "the code example › decode the output"),
    "apps.generation": ("实际应用场景 › 文本生成", "applications › text generation"),
    "future.interpretability": ("总结：未来发展趋势与挑战 › 可解释性增强",
                                "summary: future trends and challenges › better interpretability"),
    "tools.compute": ("工具和资源推荐 › Colab 或 Google Cloud TPU",
                      "tools and resources › Colab or Google Cloud TPU: high-performance computing to speed up training"),
    "faq.evaluation": ("附录：常见问题与解答 › 如何评估大规模语言模型的效果？",
                       "appendix (FAQ) › how to evaluate a large language model"),
    "faq.overfitting": ("附录：常见问题与解答 › 大规模语言模型如何解决过拟合问题？",
                        "appendix (FAQ) › how large language models deal with over-fitting"),
}


# The lessons write attention in the article's letters: A = QKᵀ/√d_k (the scores), S = softmax(A)
# (the weights, the article's S), Z = S·V, and dX = dL/dX. The kernels and nn/softmax.py use
# FlashAttention's letters, where S is the scores and P the weights:
CODE_LETTERS = "code letters: P (p) = our S, S (s) = our A, dP (dp) = our dS, dS (ds) = our dA"


def solutions_path(number: str) -> str:
    """The path of ``solutions/<number>_*.py`` beside the running lesson (``lessons/solutions/``)."""
    folder = os.path.join(_lessons_folder(), "solutions")
    paths = glob.glob(os.path.join(folder, f"{number}_*.py"))
    if len(paths) != 1:
        raise SystemExit(f"lesson {number}: expected one lessons/solutions/{number}_*.py, found {len(paths)}")
    return paths[0]


def solutions_module(number: str):
    """The module ``lessons/solutions/<number>_*.py``, imported (it may import the lesson's helpers)."""
    spec = importlib.util.spec_from_file_location(f"solutions_{number}", solutions_path(number))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def exercise_numbers(number: str) -> list[int]:
    """The k of every ``exercise_k`` in lesson ``number``'s solutions file, in order."""
    module = solutions_module(number)
    return sorted(int(n.split("_")[1]) for n in dir(module) if re.fullmatch(r"exercise_\d+", n))


# The flags a lesson reads in a notebook, as on the command line (e.g. ["--small"]): a notebook
# made by make_notebooks.py sets them in its first cell. A kernel's sys.argv is the kernel's own.
NOTEBOOK_ARGV: list[str] = []


def in_notebook() -> bool:
    """True when the lesson runs in a Jupyter (IPython) kernel rather than as a script."""
    ipython = sys.modules.get("IPython")
    shell = ipython.get_ipython() if ipython is not None else None
    return "ipykernel" in sys.modules and getattr(shell, "kernel", None) is not None


def _lessons_folder() -> str:
    """The folder of the running lesson: the script's, or lessons/ in a notebook."""
    return LESSONS_DIR if in_notebook() else os.path.dirname(os.path.abspath(sys.argv[0]))


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def _rel(path: str) -> str:
    rel = os.path.relpath(path, REPO_ROOT)
    return path if rel.startswith("..") else rel


def where(obj) -> str:
    """``"path/relative/to/repo.py:LINE: Qualified.name"`` for a function, method or class."""
    if isinstance(obj, Code):
        obj = obj.obj
    obj = _python_function(obj)
    path = inspect.getsourcefile(obj)
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))
    line = inspect.getsourcelines(obj)[1]
    return f"{_rel(path)}:{line}: {name}"


def _python_function(obj):
    """The Python function behind a method, a decorated function or a Numba dispatcher."""
    obj = getattr(obj, "py_func", obj)                     # numba.njit / numba.cuda.jit
    return inspect.unwrap(getattr(obj, "__func__", obj))


def _body_start(lines: list[str]) -> int:
    """Index of the first line after a function's ``def`` header and docstring."""
    i = 0
    while i < len(lines) and not lines[i].rstrip().endswith(":"):   # the (maybe multi-line) def
        i += 1
    i += 1
    if i < len(lines):
        s = lines[i].strip().lstrip("rRuU")
        for quote in ('"""', "'''"):
            if s.startswith(quote):
                if s.count(quote) >= 2 and len(s) > 3:
                    return i + 1
                i += 1
                while i < len(lines) and quote not in lines[i]:
                    i += 1
                return i + 1
    return i


class Code:
    """The lines of a function that compute a formula, to print beside it.

    ``Code(fn)`` is the function's body (docstring left out); ``Code(fn, "start", "end")`` the lines
    from the first one containing ``start`` to the first one after it containing ``end`` (``end``
    omitted: the ``start`` line alone). Markers are plain substrings of the source; a marker that
    is not found raises, so a lesson never prints lines that are not there.
    """

    def __init__(self, obj, start: str | None = None, end: str | None = None):
        self.obj, self.start, self.end = obj, start, end

    def lines(self) -> tuple[str, list[tuple[int, str]]]:
        obj = _python_function(self.obj)
        src, first = inspect.getsourcelines(obj)
        body = _body_start(src) if (inspect.isfunction(obj) or inspect.ismethod(obj)) else 0
        numbered = [(first + i, line.rstrip("\n")) for i, line in enumerate(src)][body:]
        if self.start is not None:
            a = next((k for k, (_, l) in enumerate(numbered) if self.start in l), None)
            if a is None:
                raise ValueError(f"{where(obj)}: no line contains {self.start!r} (update the lesson's marker)")
            if self.end is None:
                b = a
            else:
                b = next((k for k, (_, l) in enumerate(numbered) if k >= a and self.end in l), None)
                if b is None:
                    raise ValueError(f"{where(obj)}: no line after {self.start!r} contains {self.end!r}")
            numbered = numbered[a:b + 1]
        numbered = [(n, l) for n, l in numbered if l.strip()]
        return where(obj), numbered


def _as_code(c):
    return c if isinstance(c, Code) else Code(c)


class Stats:
    """Mean and spread of a result over seeds: ``f"{s:.2f}"`` prints ``0.83 ± 0.04``.

    ``sd`` is the standard deviation over the seeds (ddof = 1), ``lo``/``hi`` the smallest and
    largest value, ``n`` the number of seeds.
    """

    def __init__(self, values):
        self.values = np.asarray(values, dtype=float)
        self.n = self.values.size
        self.mean = float(self.values.mean())
        self.sd = float(self.values.std(ddof=1)) if self.n > 1 else 0.0
        self.lo, self.hi = float(self.values.min()), float(self.values.max())

    def __format__(self, spec):
        spec = spec or ".3f"
        return f"{self.mean:{spec}} ± {self.sd:{spec.lstrip('+ ')}}"

    def __repr__(self):
        return f"Stats(mean={self.mean:.4g}, sd={self.sd:.4g}, n={self.n})"


def spread(values) -> Stats:
    """Mean ± standard deviation of a list of per-seed results."""
    return Stats(values)


def fmt_array(a, max_items: int = 6, precision: int = 4) -> str:
    """A few leading values of an array, flattened, as text."""
    a = np.asarray(a)
    flat = a.reshape(-1)
    if a.dtype.kind in "iub":
        vals = " ".join(str(v) for v in flat[:max_items])
    else:
        vals = " ".join(f"{v:+.{precision}f}" for v in flat[:max_items])
    more = " …" if flat.size > max_items else ""
    return f"[{vals}{more}]"


class Lesson:
    """One lesson's steps, printing, claims, pausing and figures."""

    def __init__(self, number: str, title: str, doc: str | None = None, argv=None,
                 extra_args=None):
        parser = argparse.ArgumentParser(description=f"Lesson {number}: {title}")
        parser.add_argument("--no-pause", action="store_true",
                            help="run straight through without waiting for Enter")
        parser.add_argument("--no-code", action="store_true",
                            help="print only where the code is (file:line), not its lines")
        parser.add_argument("--out", default=os.path.join(LESSONS_DIR, "figures"),
                            help="folder for the figures (default: lessons/figures/)")
        parser.add_argument("--small", action="store_true",
                            help="small, fast settings (used by the tests)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        parser.add_argument("--keep-going", action="store_true",
                            help="report a failed claim and continue (exit status 1 at the end)")
        parser.add_argument("--exercise", type=int, default=0, metavar="N",
                            help="run the solution of exercise N (lessons/solutions/) instead of "
                                 "the lesson, and check its result")
        for args, kwargs in (extra_args or []):
            parser.add_argument(*args, **kwargs)
        self.notebook = in_notebook()
        if argv is None and self.notebook:
            argv = NOTEBOOK_ARGV
        self.args = parser.parse_args(argv)
        self.number, self.title = number, title
        self.pause_enabled = not self.args.no_pause and not self.notebook
        self.show_code = not self.args.no_code
        self.small = self.args.small
        self.seed = self.args.seed
        self.out = os.path.abspath(self.args.out)
        os.makedirs(self.out, exist_ok=True)
        self.figures: list[str] = []
        self.n_steps = 0
        self.n_claims = 0
        self.failed: list[str] = []
        self.t0 = time.time()

        import matplotlib
        self.interactive = self.pause_enabled and _has_display()
        if not self.interactive and not self.notebook:      # a notebook keeps its inline backend
            matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        self.plt = plt

        bar = "=" * WIDTH
        print(bar)
        print(f"Lesson {number}: {title}")
        print(bar)
        if doc:
            print(textwrap.dedent(doc).strip())
        print(f"\nfigures are written to: {self.out}")
        print("✓ claim: a result this lesson computed and checked; a claim that fails stops the lesson.")
        if self.pause_enabled:
            print("press Enter to go to the next step, q then Enter to quit")
        self.exercise = self.args.exercise
        if self.exercise:
            self._run_exercise(self.exercise)

    # --- exercises --------------------------------------------------------------------------------
    def _run_exercise(self, k: int):
        """Run ``exercise_k(self)`` from this lesson's solutions file, then stop (status 0 or 1)."""
        module = solutions_module(self.number)
        fn = getattr(module, f"exercise_{k}", None)
        if fn is None:
            have = sorted(int(n.split("_")[1]) for n in dir(module) if re.fullmatch(r"exercise_\d+", n))
            raise SystemExit(f"--exercise: lesson {self.number} has no exercise {k} "
                             f"(it has {', '.join(map(str, have))})")
        print(f"\nExercise {k} of lesson {self.number} — the solution in {_rel(module.__file__)}:")
        doc = inspect.getdoc(fn) or ""
        for para in doc.split("\n\n"):
            print(textwrap.fill(" ".join(para.split()), WIDTH, initial_indent="  ",
                                subsequent_indent="  "))
        fn(self)
        if self.n_steps:
            self._report_time()
        print(f"\nexercise {k} of lesson {self.number} done in {time.time() - self.t0:.1f} s: "
              f"{self.n_claims} claims checked, {len(self.failed)} failed")
        self.plt.close("all")
        raise SystemExit("\n".join(self.failed) if self.failed else 0)

    def seeds(self, n: int) -> list[int]:
        """``n`` seeds for a result that randomness could decide: seed, seed + 1, …"""
        return [self.seed + i for i in range(n)]

    # --- pacing -----------------------------------------------------------------------------------
    def pause(self):
        if not self.pause_enabled:
            return
        try:
            answer = input("\n[Enter] next step · [q] quit > ")
        except EOFError:          # stdin closed: keep going, like --no-pause
            self.pause_enabled = False
            return
        if answer.strip().lower() in ("q", "quit", "exit"):
            print(f"stopped at step {self.n_steps} of lesson {self.number}.")
            sys.exit(0)

    # --- a step -----------------------------------------------------------------------------------
    def step(self, title: str, formula: str | None = None, code=None, *, article, letters: bool = False):
        """Start a step: wait for the learner (after the first step), then print its header.

        Args:
            title: what this step does.
            formula: the article's formula (or the procedure step) it computes; several lines allowed.
            code: what computes it — functions/methods/classes or ``Code(fn, start, end)`` for a few
                lines of one; one or a list. Each is printed as ``file:line: name`` and, unless
                ``--no-code``, its source lines.
            article: the key (or list of keys) of the article section(s) this step follows, from
                ``ARTICLE``.
            letters: the code shown uses the attention letters of kernels/ and nn/softmax.py
                (FlashAttention's), which differ from the article's: print the translation.
        """
        if self.n_steps:
            self._report_time()
            self.pause()
        self.n_steps += 1
        self._t_step = self._t_progress = time.time()
        print("\n" + "-" * WIDTH)
        print(f"Step {self.step_id}  {title}")
        print("-" * WIDTH)
        for key in ([article] if isinstance(article, str) else article):
            zh, en = ARTICLE[key]
            print(f"  article │ {zh}")
            print(f"          │ ({en})")
        if formula:
            for line in textwrap.dedent(formula).strip("\n").splitlines():
                print(f"  formula │ {line}")
        if code is not None:
            for c in (code if isinstance(code, (list, tuple)) else [code]):
                self._print_code(_as_code(c))
        if letters:
            print(f"  letters │ {CODE_LETTERS}")

    def _report_time(self):
        if os.environ.get("TINYBERT_LESSON_TIMES"):      # for whoever sizes the lessons
            print(f"  [step {self.step_id} took {time.time() - self._t_step:.1f} s]")

    @property
    def step_id(self) -> str:
        return f"{self.number}.{self.n_steps}"

    def _print_code(self, code: Code):
        pointer, numbered = code.lines()
        print(f"  code    │ {pointer}")
        if not self.show_code:
            return
        shown = numbered[:MAX_CODE_LINES]
        indent = min(len(l) - len(l.lstrip()) for _, l in shown) if shown else 0
        for n, l in shown:
            print(f"  {n:>6}  │   {l[indent:]}")
        if len(numbered) > len(shown):
            print(f"          │   … {len(numbered) - len(shown)} more line(s)")

    def say(self, text: str = ""):
        """Print a paragraph of explanation (wrapped). Results belong in ``claim``."""
        for para in textwrap.dedent(text).strip("\n").split("\n\n"):
            print(textwrap.fill(" ".join(para.split()), WIDTH, initial_indent="  ",
                                subsequent_indent="  "))

    def claim(self, text: str, holds, **numbers):
        """State a result and check it: ``text.format(**numbers)`` is printed with ✓ when ``holds``.

        A claim that does not hold prints ✗ and stops the lesson with exit status 1 and a message
        naming the step (with ``--keep-going``: it is reported and the lesson exits 1 at the end).
        """
        self.n_claims += 1
        sentence = " ".join(textwrap.dedent(text).split()).format(**numbers)
        ok = bool(holds)
        mark = "✓" if ok else "✗ FAILED"
        print(textwrap.fill(sentence, WIDTH, initial_indent=f"  {mark} claim │ ",
                            subsequent_indent="          │ "))
        if not ok:
            msg = f"lesson {self.number}, step {self.step_id}: claim failed: {sentence}"
            if self.args.keep_going:
                self.failed.append(msg)
            else:
                self._stop(msg)
        return ok

    def progress(self, done: int, total: int, what: str = "", every_s: float = 5.0):
        """Print ``  … what done/total (elapsed)`` during long training, at most every ``every_s``.

        Call it once per iteration: it prints when ``every_s`` seconds have passed since the last
        line (and at ``done == total``), so that a full run shows it is alive at least every 10 s.
        """
        now = time.time()
        last = getattr(self, "_t_progress", self._t_step if self.n_steps else self.t0)
        if done >= total or now - last >= every_s:
            self._t_progress = now
            print(f"  … {what} {done}/{total} ({now - self.t0:.0f} s)".replace("  …  ", "  … "), flush=True)

    def show(self, name: str, a, max_items: int = 6):
        """Print an array's shape, dtype and first few values."""
        a = np.asarray(a)
        print(f"  {name:<16} shape {list(a.shape)!s:<18} {str(a.dtype):<8} {fmt_array(a, max_items)}")

    def matrix(self, name: str, a, precision: int = 3, row_labels=None, col_labels=None,
               max_rows: int = 10, max_cols: int = 10):
        """Print a small 2-D array as a table."""
        a = np.asarray(a)
        print(f"  {name}  (shape {list(a.shape)})")
        cols = min(a.shape[1], max_cols)
        w = max(precision + 4, max([len(str(c)) for c in (col_labels or [])[:cols]] + [0]) + 1)
        lw = max([len(str(r)) for r in (row_labels or [])[:max_rows]] + [0])
        if col_labels is not None:
            print("    " + " " * lw + "".join(f"{str(c)[:w - 1]:>{w}}" for c in col_labels[:cols]))
        for i in range(min(a.shape[0], max_rows)):
            lab = f"{str(row_labels[i]):<{lw}}" if row_labels is not None else ""
            print("    " + lab + "".join(f"{a[i, j]:>{w}.{precision}f}" for j in range(cols))
                  + (" …" if a.shape[1] > cols else ""))
        if a.shape[0] > max_rows:
            print("    …")

    def value(self, name: str, v, note: str = ""):
        """Print one named number (or short text)."""
        if isinstance(v, float):
            v = f"{v:.6g}"
        print(f"  {name} = {v}" + (f"   ({note})" if note else ""))

    # --- figures ----------------------------------------------------------------------------------
    def savefig(self, fig, name: str):
        """Save ``fig`` as ``<out>/<lesson>_<name>.png``, print the path, show it if we can."""
        path = os.path.join(self.out, f"{self.number}_{name}.png")
        if fig.get_layout_engine() is None:
            fig.tight_layout()
        fig.savefig(path, dpi=110)
        self.add_figure(path)
        if self.interactive:
            self.plt.show(block=False)
            self.plt.pause(0.1)
        else:
            self.plt.close(fig)       # closed, so the notebook's inline backend does not draw it twice
        return path

    def add_figure(self, path: str) -> str:
        """A PNG the lesson wrote (``savefig``, or library code such as ``plot_explanation``): print
        its path, list it at the end, and show it under the cell in a notebook."""
        self.figures.append(path)
        print(f"  figure  │ {path}")
        if self.notebook:
            from IPython.display import Image, display
            display(Image(filename=path))
        return path

    def display_html(self, obj, path: str) -> str:
        """Save an HTML view as ``path`` (relative: inside ``--out``), print the path, show it inline.

        ``obj`` has ``save(path)`` and ``_repr_html_()`` (as ``tinybert.view(...)``'s result has). A
        script writes the page and prints where (open it in a browser); a notebook also displays
        ``obj`` under the cell. Returns the absolute path.
        """
        if not (callable(getattr(obj, "save", None)) and callable(getattr(obj, "_repr_html_", None))):
            raise TypeError(f"display_html: obj must have save(path) and _repr_html_(), "
                            f"got {type(obj).__name__}")
        path = os.path.join(self.out, path)
        obj.save(path)
        self.figures.append(path)
        print(f"  page    │ {path}")
        if self.notebook:
            from IPython.display import display
            display(obj)
        return path

    # --- the end ----------------------------------------------------------------------------------
    def end(self, shown: list[str], try_next: list[tuple[str, str]]):
        """Say what the lesson showed, suggest what to try next, list the figures, and stop.

        Args:
            shown: one sentence per point the lesson made (its numbers were claimed above).
            try_next: two or three ``(exercise, what you should see)`` pairs.
        """
        if not 2 <= len(try_next) <= 3:
            raise ValueError(f"try_next: give 2 or 3 exercises, got {len(try_next)}")
        solved = exercise_numbers(self.number)
        if solved != list(range(1, len(try_next) + 1)):
            raise ValueError(f"lesson {self.number}: {len(try_next)} exercises in try_next but "
                             f"solutions for {solved} in lessons/solutions/{self.number}_*.py")
        if self.n_steps:
            self._report_time()
        self.pause()
        print("\n" + "=" * WIDTH)
        print(f"What lesson {self.number} showed")
        print("=" * WIDTH)
        for point in shown:
            print(textwrap.fill(" ".join(point.split()), WIDTH, initial_indent="  • ",
                                subsequent_indent="    "))
        print("\nTry next")
        for i, (exercise, expect) in enumerate(try_next, 1):
            print(textwrap.fill(" ".join(exercise.split()), WIDTH, initial_indent=f"  {i}. ",
                                subsequent_indent="     "))
            print(textwrap.fill(" ".join(expect.split()), WIDTH, initial_indent="     → you should see: ",
                                subsequent_indent="       "))
            print(f"       (check it: --exercise {i}; the solution: {_rel(solutions_path(self.number))})")
        if self.figures:
            print(f"\nfigures ({len(self.figures)}) in {self.out}:")
            for p in self.figures:
                print(f"  {os.path.basename(p)}")
        print(f"\nlesson {self.number} done in {time.time() - self.t0:.1f} s: {self.n_steps} steps, "
              f"{self.n_claims} claims checked, {len(self.failed)} failed")
        if self.interactive and self.figures:
            try:
                input("\n[Enter] closes the figures > ")
            except EOFError:
                pass
        self.plt.close("all")
        if self.failed:
            self._stop("\n".join(self.failed))

    def _stop(self, msg: str):
        """Stop the lesson at a failed claim: exit status 1 in a script, an error in a notebook cell."""
        if self.notebook:
            raise AssertionError(msg)
        raise SystemExit(msg)
