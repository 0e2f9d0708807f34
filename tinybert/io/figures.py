"""Figures as PNG files: matplotlib without a display, written atomically, with CJK text legible.

    pyplot()                       matplotlib.pyplot on the Agg backend (no display needed)
    save_figure(fig, path)         lay out, draw and write the PNG (beside it, then renamed over it)
    find_cjk_font(names=None)      the first installed font family of ``CJK_FONTS``, or None
    has_cjk(text)                  whether a text holds Chinese, Japanese or Korean characters

matplotlib's default font (DejaVu Sans) has no CJK glyphs: a plot of Chinese tokens draws a box for
every character and warns once per character ("Glyph 22909 missing from font(s) DejaVu Sans", often
hundreds of lines). When a figure holds CJK text, ``save_figure`` draws it with DejaVu Sans first and
a CJK font behind it (matplotlib falls back glyph by glyph along the family list), the font found
through matplotlib's font manager among ``CJK_FONTS``: Noto Sans CJK, Source Han Sans, WenQuanYi,
and the system fonts of macOS and Windows. Without one, it logs one warning per process that says
what to install, and silences the per-glyph flood.

Fonts are chosen when the figure is drawn (at ``savefig``), not when its texts are made, so the
choice is made here, in one place, for every plot the library saves; the caller's matplotlib
settings are left as they were (``rc_context``).
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
import tempfile
import warnings

from tinybert.io.files import current_umask

logger = logging.getLogger("tinybert")

# Preference order. matplotlib names a font file by its family; a .ttc collection by its first face,
# hence the several spellings of the same fonts.
CJK_FONTS = (
    "Noto Sans CJK SC", "Noto Sans CJK JP", "Noto Sans CJK TC", "Noto Sans CJK KR", "Noto Sans CJK HK",
    "Noto Sans SC", "Noto Sans JP", "Noto Sans TC", "Noto Sans KR", "Noto Serif CJK SC",
    "Source Han Sans SC", "Source Han Sans CN", "Source Han Sans", "Source Han Sans JP", "Source Han Sans K",
    "WenQuanYi Zen Hei", "WenQuanYi Micro Hei", "Droid Sans Fallback", "AR PL UMing CN",
    "PingFang SC", "Hiragino Sans GB", "Hiragino Sans", "Heiti SC", "STHeiti", "Songti SC",
    "Apple SD Gothic Neo", "Arial Unicode MS",                                               # macOS
    "Microsoft YaHei", "SimHei", "SimSun", "Microsoft JhengHei", "Yu Gothic", "Meiryo", "MS Gothic",
    "Malgun Gothic",                                                                         # Windows
)
INSTALL_HINT = ("install a CJK font, e.g. Noto Sans CJK: apt install fonts-noto-cjk (Debian/Ubuntu), "
                "dnf install google-noto-sans-cjk-fonts (Fedora), pacman -S noto-fonts-cjk (Arch), "
                "brew install --cask font-noto-sans-cjk (macOS); then delete matplotlib's font cache "
                "(python -c \"import matplotlib; print(matplotlib.get_cachedir())\") so it finds the font")

# Han (with extension A and compatibility ideographs), kana, Hangul, CJK punctuation, full-width forms
_CJK = re.compile("[\u2e80-\u2fdf\u3000-\u30ff\u3100-\u31ff\u3400-\u4dbf\u4e00-\u9fff\uac00-\ud7af"
                  "\uf900-\ufaff\uff00-\uffef]")
_warned_missing = False


def pyplot():
    """matplotlib.pyplot on the Agg backend (PNG files, no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def has_cjk(text: str) -> bool:
    """True when ``text`` holds a Chinese, Japanese or Korean character (or CJK punctuation)."""
    return bool(_CJK.search(text))


def find_cjk_font(names=None) -> str | None:
    """The first family of ``CJK_FONTS`` among ``names`` (default: every font matplotlib's font
    manager knows), or None when none is installed."""
    if names is None:
        from matplotlib import font_manager
        names = [f.name for f in font_manager.fontManager.ttflist]
    installed = set(names)
    return next((family for family in CJK_FONTS if family in installed), None)


@contextlib.contextmanager
def cjk_fonts(texts):
    """Inside the block, drawing ``texts`` puts CJK characters in a CJK font (DejaVu Sans first, the
    CJK font behind it); without one, the first call of the process logs what to install and every
    call silences matplotlib's per-glyph warnings. Texts without CJK characters change nothing."""
    global _warned_missing
    if not any(has_cjk(t) for t in texts):
        yield None
        return
    import matplotlib
    family = find_cjk_font()
    if family is None:
        if not _warned_missing:
            _warned_missing = True
            logger.warning("a figure holds Chinese, Japanese or Korean text but no CJK font is installed, so "
                           "its characters are drawn as boxes; %s", INSTALL_HINT)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from font", category=UserWarning)
            yield None
        return
    fallback = [f for f in matplotlib.rcParams["font.sans-serif"] if f != family]
    with matplotlib.rc_context({"font.family": "sans-serif", "font.sans-serif": ["DejaVu Sans", family] + fallback}):
        yield family


def figure_texts(fig) -> list[str]:
    """Every string a figure draws (titles, labels, tick labels, legends, annotations)."""
    import matplotlib.text
    return [t.get_text() for t in fig.findobj(matplotlib.text.Text)]


def save_figure(fig, path, tight: bool = True, dpi: int = 110) -> str:
    """Lay out (``tight_layout`` when ``tight``), draw and write ``fig`` to ``path`` (PNG, or the format
    its extension names; written
    beside it and renamed over it, so a reader never sees half a file), close it; -> ``path``."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with cjk_fonts(figure_texts(fig)):
            if tight:
                fig.tight_layout()
            with os.fdopen(fd, "wb") as f:
                fig.savefig(f, dpi=dpi, format=os.path.splitext(path)[1].lstrip(".").lower() or "png")
        os.chmod(tmp, 0o666 & ~current_umask())          # the user's umask, not mkstemp's 0600
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    finally:
        pyplot().close(fig)
    return path
