"""The interactive view (tinybert/viz): the page's numbers are the model's, checked in the data and then
in a real browser (headless Chromium driven by selenium, the page opened from disk): a click on a head
draws that head's weights, a hover highlights one token's attention, the screenshot is not blank, and
all-MiniLM-L6-v2's page on a 20-token sentence is under 1 MB and opens in under a second."""
import json
import os
import re
import shutil
import tempfile
import time

import numpy as np
import pytest

import tinybert
from tinybert.cli import main
from tinybert.errors import InvalidType, InvalidValue
from tinybert.pipelines.explain import attention_rollout, explain
from tinybert.text.tokenizer import BertTokenizer, write_vocab
from tinybert.viz import view
from tinybert.viz.view import SCALE

from conftest import tiny_config

WORDS = ["good", "bad", "not", "the", "soup", "was", "very", "cat", "sat", "on", "mat", "but"]
TEXT = "the soup was good , not bad"


@pytest.fixture(scope="module")
def tok(tmp_path_factory):
    folder = tmp_path_factory.mktemp("vocab")
    write_vocab(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", ","] + WORDS, str(folder / "vocab.txt"))
    return BertTokenizer(str(folder / "vocab.txt"))


def _spread(model, seed):
    """Weights ~N(0, 0.4²): attention far from uniform, so that a wrong head or token shows."""
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if "norm" not in name:
            p.data[...] = rng.normal(0, 0.4, p.data.shape)
    return model


@pytest.fixture(scope="module")
def classifier(tok):
    cfg = tiny_config(vocab_size=tok.vocab_size, num_labels=2, id2label={0: "negative", 1: "positive"},
                      label2id={"negative": 0, "positive": 1})
    return _spread(tinybert.BertForSequenceClassification(cfg, seed=1, attention_backend="numpy"), 2)


@pytest.fixture(scope="module")
def masked_lm(tok):
    return _spread(tinybert.BertForMaskedLM(tiny_config(vocab_size=tok.vocab_size), seed=1,
                                            attention_backend="numpy"), 3)


def _attentions(model, tok, text, pair=None):
    """[L, A, T, T] from the model's own output_attentions (float64 copies)."""
    enc = tok(text, pair)
    with model.evaluating():
        out = model(input_ids=enc["input_ids"][None], token_type_ids=enc["token_type_ids"][None],
                    output_attentions=True)
    return np.stack([np.asarray(p[0], dtype=np.float64) for p in out.attentions])


# --------------------------------------------------------------------------------------------------
# the data the page draws (no browser needed)
# --------------------------------------------------------------------------------------------------

def test_page_data_are_the_models_attention_rollout_and_explanation(classifier, tok):
    v = view(classifier, tok, TEXT)
    maps = _attentions(classifier, tok, TEXT)
    page = np.array(v.data["attentions"], dtype=np.float64).reshape(maps.shape) / SCALE
    assert np.abs(page - maps).max() <= 0.5 / SCALE + 1e-9
    rollout = np.array(v.data["rollout"], dtype=np.float64).reshape(maps.shape[-2:]) / SCALE
    assert np.abs(rollout - attention_rollout(maps)).max() <= 0.5 / SCALE + 1e-9
    e = explain(classifier, tok, TEXT)
    assert v.data["prediction"]["label"] == e.target
    np.testing.assert_array_equal(v.data["attributions"]["integrated_gradients"], e.integrated_gradients)
    assert v.data["tokens"] == e.tokens
    assert np.abs(rollout[0] - e.attention_rollout).max() <= 0.5 / SCALE + 1e-9


def test_masked_lm_page_predicts_the_mask_and_a_pair_has_its_segments(masked_lm, tok):
    v = view(masked_lm, tok, "the cat sat on the [MASK]")
    assert v.data["prediction"]["position"] == 6 and v.data["attributions"] is not None
    with masked_lm.evaluating():
        logits = masked_lm.forward(np.array([tok("the cat sat on the [MASK]")["input_ids"]]))
    assert v.data["prediction"]["label"] == tok.convert_ids_to_tokens(int(np.argmax(logits[0, 6])))
    assert "no [MASK]" in " ".join(view(masked_lm, tok, "the cat sat").data["notes"])
    pair = view(masked_lm, tok, "the cat sat", pair="on the mat")
    assert pair.data["segments"] == [0] * 5 + [1] * 4
    maps = _attentions(masked_lm, tok, "the cat sat", "on the mat")
    page = np.array(pair.data["attentions"], dtype=np.float64).reshape(maps.shape) / SCALE
    assert np.abs(page - maps).max() <= 0.5 / SCALE + 1e-9


def test_page_is_self_contained_and_each_view_has_its_own_ids(classifier, tok, tmp_path):
    a, b = view(classifier, tok, TEXT), view(classifier, tok, "</script><b>x")
    page = a.html
    assert page.startswith("<!DOCTYPE html>") and "tinybertView(" in page
    assert not re.search(r"<link|<img|\bsrc=|@import|url\(", page), "the page must load nothing"
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}  # a name, not a fetch
    assert a.element_id != b.element_id and a.element_id in a._repr_html_()
    assert b.html.count("</script>") == 2, "a token may not close the data's script element"
    assert a.save(tmp_path / "p.html") == str(tmp_path / "p.html")
    assert (tmp_path / "p.html").read_text(encoding="utf-8") == page


def test_view_refuses_bad_input(classifier, tok):
    with pytest.raises(InvalidValue, match="text=''"):
        view(classifier, tok, "")
    with pytest.raises(InvalidValue, match="pair='  '"):
        view(classifier, tok, "good", pair="  ")
    with pytest.raises(InvalidType, match="text: expected a str"):
        view(classifier, tok, ["good"])
    with pytest.raises(InvalidValue, match=r"30 tokens .* at most 24 \(max_position_embeddings\)"):
        view(classifier, tok, "good " * 28)
    with pytest.raises(InvalidType, match="model: expected a BertModel.*got dict"):
        view({}, tok, "good")
    with pytest.raises(InvalidType, match="tokenizer: expected a BertTokenizer, got str"):
        view(classifier, "vocab.txt", "good")


def test_cli_writes_the_page_and_refuses_to_overwrite(classifier, tok, tmp_path, capsys):
    folder = str(tmp_path / "clf")
    classifier.save_pretrained(folder, tokenizer=tok)
    out = str(tmp_path / "page.html")
    assert main(["view", TEXT, "--model", folder, "--out", out]) == 0
    assert f"page: {out}" in capsys.readouterr().out
    data = json.loads(re.search(r'<script type="application/json"[^>]*>(.*?)</script>',
                                open(out, encoding="utf-8").read()).group(1))
    assert data["model"] == "BertForSequenceClassification" and data["prediction"]["label"] in ("negative", "positive")
    assert main(["view", TEXT, "--model", folder, "--out", out]) != 0
    assert "--overwrite" in capsys.readouterr().err


# --------------------------------------------------------------------------------------------------
# in a real browser
# --------------------------------------------------------------------------------------------------

def _find(name):
    return shutil.which(name) or next((p for p in (f"/usr/bin/{name}", f"/usr/lib/chromium/{name}")
                                       if os.path.exists(p)), None)


@pytest.fixture(scope="module")
def browser():
    chromium, driver_path = _find("chromium"), _find("chromedriver")
    if not chromium or not driver_path:
        pytest.skip("no Chromium: apt-get install chromium chromium-driver")
    from selenium import webdriver                      # the test extras install it
    from selenium.webdriver.chrome.service import Service
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    profile = tempfile.mkdtemp(prefix="tinybert-chromium-")
    # without the background-networking flags, Chromium's own connections are refused on a closed network
    for flag in ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-dev-shm-usage", f"--user-data-dir={profile}", "--window-size=1200,900"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


def _open(browser, page: tinybert.viz.AttentionView, path):
    page.save(path)
    browser.get(f"file://{path}")
    root = browser.find_element("css selector", ".tbv")
    assert root.get_attribute("data-ready") == "1", "the page's script did not finish"
    return root


def _lines(browser):
    """(i, j, data-weight, stroke-opacity, visible) of every drawn line."""
    return browser.execute_script(
        "return Array.from(document.querySelectorAll('.tbv-headview line')).map(l => [+l.dataset.i, +l.dataset.j, "
        "+l.getAttribute('data-weight'), +l.getAttribute('stroke-opacity'), getComputedStyle(l).visibility === 'visible'])")


def test_click_a_head_draws_its_weights_and_hover_highlights_a_token(browser, classifier, tok, tmp_path):
    from selenium.webdriver.common.action_chains import ActionChains
    root = _open(browser, view(classifier, tok, TEXT), str(tmp_path / "page.html"))
    maps = _attentions(classifier, tok, TEXT)
    T = maps.shape[-1]
    for layer, head in ((1, 2), (0, 3)):
        root.find_element("css selector", f'canvas[data-layer="{layer}"][data-head="{head}"]').click()
        lines = np.array(_lines(browser))
        assert lines.shape == (T * T, 5)
        drawn = np.zeros((T, T))
        drawn[lines[:, 0].astype(int), lines[:, 1].astype(int)] = lines[:, 2]
        err = np.abs(drawn - maps[layer, head]).max()
        print(f"layer {layer + 1} head {head + 1}: worst |drawn - model| {err:.1e} over {T * T} lines")
        assert err < 1e-6
        np.testing.assert_array_equal(lines[:, 3], lines[:, 2])          # the opacity is the weight
        assert root.find_element("css selector", "svg").get_attribute("data-head") == str(head)
        assert "tbv-selected" in root.find_element(
            "css selector", f'canvas[data-layer="{layer}"][data-head="{head}"]').get_attribute("class")
        assert lines[:, 4].all(), "before a hover every line is drawn"

    i = 3                                                               # "was"
    ActionChains(browser).move_to_element(root.find_elements("css selector", "g.tbv-left text")[i]).perform()
    assert "tbv-active" in root.find_elements("css selector", "g.tbv-left")[i].get_attribute("class")
    visible = [(a, b) for a, b, _, _, shown in _lines(browser) if shown]
    assert sorted(visible) == [(i, j) for j in range(T)], "hovering a left token keeps only its lines"
    shade = [float(g.get_attribute("data-highlight")) for g in root.find_elements("css selector", "g.tbv-right")]
    assert np.abs(np.array(shade) - maps[0, 3, i]).max() < 1e-6, "the right column shows where it attends"

    j = 5
    ActionChains(browser).move_to_element(root.find_elements("css selector", "g.tbv-right text")[j]).perform()
    visible = [(a, b) for a, b, _, _, shown in _lines(browser) if shown]
    assert sorted(visible) == [(k, j) for k in range(T)], "hovering a right token keeps what attends to it"
    shade = [float(g.get_attribute("data-highlight")) for g in root.find_elements("css selector", "g.tbv-left")]
    assert np.abs(np.array(shade) - maps[0, 3, :, j]).max() < 1e-6


def test_attributions_and_screenshot(browser, classifier, tok, tmp_path):
    from PIL import Image
    page = view(classifier, tok, TEXT)
    root = _open(browser, page, str(tmp_path / "page.html"))
    assert root.find_element("css selector", ".tbv-label").text == page.data["prediction"]["label"]
    rows = root.find_elements("css selector", ".tbv-attributions .tbv-row")
    ig = [float(s.get_attribute("data-value")) for s in rows[0].find_elements("css selector", ".tbv-tok")]
    np.testing.assert_array_equal(ig, page.data["attributions"]["integrated_gradients"])
    shot = str(tmp_path / "page.png")
    assert browser.save_screenshot(shot)
    image = np.asarray(Image.open(shot).convert("RGB"))
    colours = len(np.unique(image.reshape(-1, 3), axis=0))
    print(f"screenshot {image.shape[1]}x{image.shape[0]}: {colours} distinct colours")
    assert colours > 200, "a blank (or nearly blank) page"
    assert (image.reshape(-1, 3) < 100).all(axis=1).mean() > 0.002, "no dark pixels: no text was drawn"


def test_minilm_page_is_small_and_opens_fast(browser, tmp_path):
    model = tinybert.BertModel.from_pretrained("all-MiniLM-L6-v2")
    tok = BertTokenizer.from_pretrained("all-MiniLM-L6-v2")
    text = "the quick brown fox jumps over the lazy dog while the cat sleeps on a warm mat by the door"
    assert len(tok(text)["input_ids"]) == 22                             # 20 words' tokens, [CLS] and [SEP]
    t0 = time.perf_counter()
    page = view(model, tok, text)
    built = time.perf_counter() - t0
    path = str(tmp_path / "minilm.html")
    page.save(path)
    size = os.path.getsize(path)
    root = _open(browser, page, path)
    timing = browser.execute_script("const n = performance.getEntriesByType('navigation')[0]; "
                                    "return [n.domContentLoadedEventEnd, n.loadEventEnd];")
    render = float(root.get_attribute("data-render-ms"))
    print(f"all-MiniLM-L6-v2, 22 tokens: page {size / 1e3:.0f} kB, built in {built:.2f} s; in Chromium the script "
          f"drew it in {render:.0f} ms, DOMContentLoaded at {timing[0]:.0f} ms, load at {timing[1]:.0f} ms")
    assert size < 1_000_000
    assert timing[1] < 1000 and render < 1000
    assert len(root.find_elements("css selector", "canvas.tbv-thumb")) == 6 * 12


def test_two_views_in_one_notebook_like_page_work_apart(browser, classifier, masked_lm, tok, tmp_path):
    """A notebook shows each view's _repr_html_ inside its own output cell of one document: both must
    draw, and a click in one must not touch the other."""
    a, b = view(classifier, tok, TEXT), view(masked_lm, tok, "the cat sat on the [MASK]")
    cells = "".join(f'<div class="output_html">{v._repr_html_()}</div>' for v in (a, b))
    path = tmp_path / "notebook.html"
    path.write_text(f"<!DOCTYPE html><html><head><meta charset='utf-8'></head><body>{cells}</body></html>",
                    encoding="utf-8")
    browser.get(f"file://{path}")
    roots = browser.find_elements("css selector", ".tbv")
    assert [r.get_attribute("id") for r in roots] == [a.element_id, b.element_id]
    assert all(r.get_attribute("data-ready") == "1" for r in roots)
    roots[1].find_element("css selector", 'canvas[data-layer="1"][data-head="3"]').click()
    assert roots[1].find_element("css selector", "svg").get_attribute("data-head") == "3"
    assert roots[0].find_element("css selector", "svg").get_attribute("data-head") == "0"
    assert roots[1].find_element("css selector", ".tbv-label").text == b.data["prediction"]["label"]
