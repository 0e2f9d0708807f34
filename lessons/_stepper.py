"""The step-through helper every lesson uses.

A lesson is a list of steps. Each step prints its title, the article's formula, the function in
tinybert that computed it (``tinybert/nn/attention.py: MultiHeadSelfAttention.forward``) and the
shapes and a few values of what came out; between steps the script waits (Enter continues, ``q``
quits). Figures are saved as PNG files in one folder, whose path is printed, and are also shown on
screen when a display exists.

    from _stepper import Lesson
    lesson = Lesson("03", "Self-attention by hand", __doc__)
    lesson.step("Scores", "S = softmax(QKᵀ / √d_k)", code=softmax)
    lesson.show("S", s)
    lesson.savefig(fig, "attention_heatmap")
    lesson.end(["what the lesson showed", ...])

Command line, the same for every lesson:

    --no-pause   run straight through (what the tests do)
    --out DIR    where figures go (default: lessons/figures/)
    --small      small, fast settings (the tests use it); a lesson's defaults are a little larger
    --seed N     the random seed (default 0)
"""
from __future__ import annotations

import argparse
import inspect
import os
import sys
import textwrap
import time

import numpy as np

LESSONS_DIR = os.path.dirname(os.path.abspath(__file__))
REPO_ROOT = os.path.dirname(LESSONS_DIR)
WIDTH = 96


def _has_display() -> bool:
    if sys.platform in ("darwin", "win32"):
        return True
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


def where(obj) -> str:
    """``"path/relative/to/repo.py: Qualified.name"`` for a function, method or class.

    Found with ``inspect``, so the name printed is always the code that really ran.
    """
    if isinstance(obj, str):
        return obj
    obj = inspect.unwrap(getattr(obj, "__func__", obj))
    try:
        path = inspect.getsourcefile(obj)
    except TypeError:
        return getattr(obj, "__qualname__", repr(obj))
    rel = os.path.relpath(path, REPO_ROOT) if path else "?"
    if rel.startswith(".."):  # installed elsewhere (e.g. tinybert_kernels -> kernels/)
        rel = path
    name = getattr(obj, "__qualname__", getattr(obj, "__name__", "?"))
    try:
        line = inspect.getsourcelines(obj)[1]
        return f"{rel}:{line}: {name}"
    except (OSError, TypeError):
        return f"{rel}: {name}"


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
    """One lesson's steps, printing, pausing and figures."""

    def __init__(self, number: str, title: str, doc: str | None = None, argv=None,
                 extra_args=None):
        parser = argparse.ArgumentParser(description=f"Lesson {number}: {title}")
        parser.add_argument("--no-pause", action="store_true",
                            help="run straight through without waiting for Enter")
        parser.add_argument("--out", default=os.path.join(LESSONS_DIR, "figures"),
                            help="folder for the figures (default: lessons/figures/)")
        parser.add_argument("--small", action="store_true",
                            help="small, fast settings (used by the tests)")
        parser.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
        for args, kwargs in (extra_args or []):
            parser.add_argument(*args, **kwargs)
        self.args = parser.parse_args(argv)
        self.number, self.title = number, title
        self.pause_enabled = not self.args.no_pause
        self.small = self.args.small
        self.seed = self.args.seed
        self.out = os.path.abspath(self.args.out)
        os.makedirs(self.out, exist_ok=True)
        self.figures: list[str] = []
        self.n_steps = 0
        self.t0 = time.time()

        import matplotlib
        self.interactive = self.pause_enabled and _has_display()
        if not self.interactive:
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
        if self.pause_enabled:
            print("press Enter to go to the next step, q then Enter to quit")

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
    def step(self, title: str, formula: str | None = None, code=None):
        """Start a step: wait for the learner (after the first step), then print its header.

        Args:
            title: what this step does.
            formula: the article's formula (or the procedure step) it computes; several lines allowed.
            code: the function(s) that compute it — callables (their file and name are looked up) or
                strings; one or a list.
        """
        if self.n_steps:
            self.pause()
        self.n_steps += 1
        print("\n" + "-" * WIDTH)
        print(f"Step {self.number}.{self.n_steps}  {title}")
        print("-" * WIDTH)
        if formula:
            for line in textwrap.dedent(formula).strip("\n").splitlines():
                print(f"  formula │ {line}")
        if code is not None:
            for c in (code if isinstance(code, (list, tuple)) else [code]):
                print(f"  code    │ {where(c)}")

    def say(self, text: str = ""):
        """Print a paragraph of explanation (wrapped)."""
        for para in textwrap.dedent(text).strip("\n").split("\n\n"):
            print(textwrap.fill(" ".join(para.split()), WIDTH, initial_indent="  ",
                                subsequent_indent="  "))

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
        self.figures.append(path)
        print(f"  figure  │ {path}")
        if self.interactive:
            self.plt.show(block=False)
            self.plt.pause(0.1)
        else:
            self.plt.close(fig)
        return path

    # --- the end ----------------------------------------------------------------------------------
    def end(self, shown: list[str]):
        """Say what the lesson showed, list its figures, and stop."""
        self.pause()
        print("\n" + "=" * WIDTH)
        print(f"What lesson {self.number} showed")
        print("=" * WIDTH)
        for point in shown:
            print(textwrap.fill(" ".join(point.split()), WIDTH, initial_indent="  • ",
                                subsequent_indent="    "))
        if self.figures:
            print(f"\nfigures ({len(self.figures)}) in {self.out}:")
            for p in self.figures:
                print(f"  {os.path.basename(p)}")
        print(f"\nlesson {self.number} done in {time.time() - self.t0:.1f} s")
        if self.interactive and self.figures:
            try:
                input("\n[Enter] closes the figures > ")
            except EOFError:
                pass
        self.plt.close("all")
