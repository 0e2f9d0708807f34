"""Figures with Chinese, Japanese or Korean text: a CJK font when one is installed (found through
matplotlib's font manager), and without one a single warning that says what to install, never a
flood of per-glyph warnings; PNGs are written whole."""
import logging
import warnings

import numpy as np
import pytest

import tinybert
from tinybert.io import figures
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.training.plots import plot_attention, plot_confusion_matrix

from conftest import tiny_config

REVIEW = "这部电影很好，不是很坏。"


@pytest.fixture
def chinese(tmp_path):
    write_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + list("这部电影很好不是坏，。"), str(tmp_path / "vocab.txt"))
    tok = BertTokenizer(str(tmp_path / "vocab.txt"))
    model = tinybert.BertForSequenceClassification(tiny_config(vocab_size=16, num_hidden_layers=1, num_attention_heads=2),
                                                   attention_backend="numpy")
    return model, tok


@pytest.fixture
def no_cjk_font(monkeypatch):
    """matplotlib's font list without any CJK family (as on a machine that has none installed)."""
    from matplotlib import font_manager
    figures.pyplot()
    kept = [f for f in font_manager.fontManager.ttflist if f.name not in figures.CJK_FONTS]
    monkeypatch.setattr(font_manager.fontManager, "ttflist", kept)
    monkeypatch.setattr(figures, "_warned_missing", False)
    assert figures.find_cjk_font() is None


def _glyph_warnings(caught):
    return [w for w in caught if "missing from font" in str(w.message)]


def test_find_cjk_font_prefers_noto_and_finds_system_fonts():
    assert figures.find_cjk_font(["DejaVu Sans", "WenQuanYi Zen Hei", "Noto Sans CJK JP"]) == "Noto Sans CJK JP"
    assert figures.find_cjk_font(["DejaVu Sans", "Microsoft YaHei"]) == "Microsoft YaHei"
    assert figures.find_cjk_font(["DejaVu Sans", "PingFang SC"]) == "PingFang SC"
    assert figures.find_cjk_font(["DejaVu Sans", "Liberation Serif"]) is None
    assert figures.has_cjk(REVIEW) and figures.has_cjk("한국어") and figures.has_cjk("カタカナ")
    assert not figures.has_cjk("good, not bad — café")


def test_without_a_cjk_font_one_warning_and_no_flood(chinese, tmp_path, no_cjk_font, caplog):
    model, tok = chinese
    plt = figures.pyplot()
    # the flood this prevents: drawing the same tokens plainly warns once per character
    fig, ax = plt.subplots()
    ax.set_xticks(range(len(REVIEW)), list(REVIEW))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fig.savefig(str(tmp_path / "plain.png"))
    plt.close(fig)
    assert len(_glyph_warnings(caught)) >= 8
    with caplog.at_level(logging.WARNING, logger="tinybert"), warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plot_attention(model, tok, REVIEW, str(tmp_path / "attention.png"))
        plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["负面", "正面"], str(tmp_path / "cm.png"))
        plot_confusion_matrix(np.array([[3, 1], [0, 4]]), ["부정", "긍정"], str(tmp_path / "cm2.png"))
    assert _glyph_warnings(caught) == []
    told = [r for r in caplog.records if "CJK font" in r.getMessage()]
    assert len(told) == 1 and "fonts-noto-cjk" in told[0].getMessage()
    assert (tmp_path / "attention.png").read_bytes()[:4] == b"\x89PNG"


def test_with_a_cjk_font_it_is_put_behind_dejavu_sans(monkeypatch, caplog):
    import matplotlib
    monkeypatch.setattr(figures, "find_cjk_font", lambda names=None: "DejaVu Serif")   # stands in for Noto
    before = list(matplotlib.rcParams["font.sans-serif"])
    with caplog.at_level(logging.WARNING, logger="tinybert"):
        with figures.cjk_fonts(["电影", "good"]) as family:
            assert family == "DejaVu Serif"
            assert matplotlib.rcParams["font.sans-serif"][:2] == ["DejaVu Sans", "DejaVu Serif"]
        with figures.cjk_fonts(["good, not bad"]) as family:                          # no CJK: nothing changes
            assert family is None and matplotlib.rcParams["font.sans-serif"] == before
    assert matplotlib.rcParams["font.sans-serif"] == before                          # the caller's settings back
    assert "CJK" not in caplog.text


def test_a_failed_save_leaves_no_partial_file(tmp_path):
    plt = figures.pyplot()
    fig, ax = plt.subplots()
    ax.plot([1, 2])
    (tmp_path / "old.png").write_bytes(b"old")
    with pytest.raises(ValueError):
        figures.save_figure(fig, str(tmp_path / "old.png"), dpi=-1)     # matplotlib refuses a negative dpi
    assert (tmp_path / "old.png").read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["old.png"]
