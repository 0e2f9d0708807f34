"""Every lesson runs from start to end with --no-pause --small and writes its figures.

Each lesson is a separate process (as a learner runs it), with its figures in a temporary folder.
The whole file should take well under five minutes on two cores.
"""
import os
import re
import subprocess
import sys
import time

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LESSONS = os.path.join(ROOT, "lessons")

# lesson script -> the figures it must write (file names in --out)
EXPECTED = {
    "01_tokenization.py": ["01_vocab_size.png"],
    "02_embeddings.py": ["02_sinusoidal_table.png", "02_learned_vs_sinusoidal.png"],
    "03_self_attention.py": ["03_attention_weights.png", "03_why_sqrt_dk.png", "03_view.html"],
    "04_encoder_layer.py": ["04_heads.png", "04_gelu.png", "04_parameter_count.png", "04_capacity.png",
                            "04_generalisation.png"],
    "05_backprop_gradcheck.py": ["05_gradcheck_table.png", "05_wrong_backward.png", "05_optimizers.png"],
    "06_pretraining_mlm.py": ["06_masking.png", "06_loss_curve.png", "06_predictions.png"],
    "07_finetuning.py": ["07_full_vs_head.png", "07_regularization.png", "07_confusion.png"],
    "08_fused_attention.py": ["08_online_softmax.png", "08_tiles.png", "08_memory_time.png"],
    "09_pretrained_model.py": ["09_similarity.png", "09_attention_head.png", "09_view.html"],
    "10_encoder_to_decoder.py": ["10_masks.png", "10_cross_attention.png", "10_lm_loss.png"],
    "11_data_parallel.py": ["11_gradient_sum.png", "11_ring_allreduce.png"],
    "12_explain.py": ["12_path.png", "12_explanation.png", "12_view.html"],
    "13_real_text.py": ["13_heldout.png"],
}


def test_every_lesson_file_is_listed():
    found = sorted(f for f in os.listdir(LESSONS) if re.match(r"\d\d_.*\.py$", f))
    assert found == sorted(EXPECTED), f"lessons on disk {found} vs listed {sorted(EXPECTED)}"


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_lesson_runs_and_writes_figures(script, tmp_path):
    path = os.path.join(LESSONS, script)
    if not os.path.exists(path):
        pytest.fail(f"lessons/{script} is missing")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="2", PYTHONHASHSEED="0")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    t0 = time.time()
    proc = subprocess.run([sys.executable, path, "--no-pause", "--small", "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    elapsed = time.time() - t0
    assert proc.returncode == 0, f"{script} failed ({elapsed:.1f}s):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    out = proc.stdout
    assert "What lesson" in out and "showed" in out, "a lesson ends by saying what it showed"
    assert "Try next" in out and "→ you should see:" in out, "a lesson ends with exercises"
    assert str(tmp_path) in out, "a lesson prints where its figures go"
    assert "formula │" in out and "code    │" in out, "steps print their formula and code"
    assert re.search(r"^ +\d+  │ ", out, re.M), "steps print the source lines of their code"
    assert "✓ claim │" in out and "FAILED" not in out, "a lesson checks its claims, and they hold"
    steps = re.split(r"^Step \d\d\.\d+ ", out, flags=re.M)[1:]
    assert steps, "no steps printed"
    for i, body in enumerate(steps, 1):
        head = body.split("formula │")[0] if "formula │" in body else body[:600]
        assert "article │" in head, f"step {i} of {script} does not name the article section it follows"
        assert "code    │" in body, f"step {i} of {script} does not show the code that computes it"
    for fig in EXPECTED[script]:
        f = tmp_path / fig
        assert f.exists() and f.stat().st_size > 5000, f"{script} did not write {fig}"


def test_stepper_q_quits_and_enter_continues(tmp_path):
    """Without --no-pause, Enter goes on and q stops the lesson cleanly (exit 0)."""
    path = os.path.join(LESSONS, "03_self_attention.py")
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.run([sys.executable, path, "--small", "--out", str(tmp_path)], cwd=ROOT, env=env,
                          input="\n\nq\n", capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Step 03.3" in proc.stdout and "Step 03.4" not in proc.stdout
    assert "stopped at step 3" in proc.stdout


# --- the stepper itself: a claim that does not hold must fail the lesson ----------------------------

STEPPER_SCRIPT = """
import sys
sys.path.insert(0, {lessons!r})
from _stepper import Code, Lesson, spread

def area(w, h):
    \"\"\"the area of a rectangle\"\"\"
    a = w * h            # the formula
    return a

lesson = Lesson("99", "stepper test", "a doc")
lesson.step("Area", "a = w · h", code=Code(area, "a = w * h"), article="math.input_ids")
lesson.claim("2 · 3 is {{v}}", area(2, 3) == 6, v=area(2, 3))
lesson.claim("the mean of 1, 2, 3 is {{s:.1f}}", spread([1, 2, 3]).mean == 2, s=spread([1, 2, 3]))
lesson.claim("2 · 3 is {{v}}", area(2, 3) == {claimed}, v={claimed})
print("AFTER THE CLAIM")
lesson.end(["shown"], try_next=[("a", "b"), ("c", "d")])
"""


STEPPER_SOLUTIONS = """
def exercise_1(lesson):
    \"\"\"Double the width.\"\"\"
    lesson.claim("4 · 3 is {v}", 4 * 3 == 12, v=4 * 3)


def exercise_2(lesson):
    \"\"\"A wrong expectation.\"\"\"
    lesson.claim("4 · 3 is {v}", 4 * 3 == 13, v=13)
"""


def _run_stepper(tmp_path, claimed, *args):
    script = tmp_path / "lesson99.py"
    script.write_text(STEPPER_SCRIPT.format(lessons=LESSONS, claimed=claimed), encoding="utf-8")
    (tmp_path / "solutions").mkdir(exist_ok=True)
    (tmp_path / "solutions" / "99_stepper.py").write_text(STEPPER_SOLUTIONS, encoding="utf-8")
    env = dict(os.environ, MPLBACKEND="Agg")
    env.pop("DISPLAY", None)
    return subprocess.run([sys.executable, str(script), "--no-pause", "--out", str(tmp_path), *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
                          stdin=subprocess.DEVNULL)


def test_a_true_claim_passes_and_prints_the_code_lines(tmp_path):
    proc = _run_stepper(tmp_path, 6)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "✓ claim │ 2 · 3 is 6" in proc.stdout
    assert "✓ claim │ the mean of 1, 2, 3 is 2.0 ± 1.0" in proc.stdout
    assert re.search(r"^ +\d+  │   a = w \* h            # the formula$", proc.stdout, re.M), proc.stdout
    assert "article │ 数学模型和公式详细讲解举例说明 › BERT模型公式" in proc.stdout
    assert "3 claims checked, 0 failed" in proc.stdout


def test_a_false_claim_fails_the_lesson_and_names_the_step(tmp_path):
    proc = _run_stepper(tmp_path, 7)
    assert proc.returncode == 1
    assert "✗ FAILED claim │ 2 · 3 is 7" in proc.stdout
    assert "lesson 99, step 99.1: claim failed: 2 · 3 is 7" in proc.stderr
    assert "AFTER THE CLAIM" not in proc.stdout, "the lesson must stop at a failed claim"


def test_keep_going_reports_a_false_claim_and_still_exits_1(tmp_path):
    proc = _run_stepper(tmp_path, 7, "--keep-going")
    assert proc.returncode == 1
    assert "AFTER THE CLAIM" in proc.stdout and "3 claims checked, 1 failed" in proc.stdout
    assert "lesson 99, step 99.1: claim failed" in proc.stderr


def test_no_code_hides_the_source_lines_but_keeps_the_pointer(tmp_path):
    proc = _run_stepper(tmp_path, 6, "--no-code")
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert re.search(r"code    │ .*lesson99.py:\d+: area", proc.stdout)
    assert "# the formula" not in proc.stdout


def test_exercise_runs_its_solution_and_fails_when_its_result_does_not_hold(tmp_path):
    ok = _run_stepper(tmp_path, 6, "--exercise", "1")
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "Exercise 1 of lesson 99" in ok.stdout and "Double the width." in ok.stdout
    assert "✓ claim │ 4 · 3 is 12" in ok.stdout and "AFTER THE CLAIM" not in ok.stdout
    bad = _run_stepper(tmp_path, 6, "--exercise", "2")
    assert bad.returncode == 1 and "claim failed: 4 · 3 is 13" in bad.stderr
    missing = _run_stepper(tmp_path, 6, "--exercise", "3")
    assert missing.returncode == 1 and "has no exercise 3 (it has 1, 2)" in missing.stderr
    end = _run_stepper(tmp_path, 6)
    assert "check it: --exercise 2; the solution:" in end.stdout


def test_code_marker_that_is_not_in_the_source_raises():
    sys.path.insert(0, LESSONS)
    try:
        from _stepper import Code
    finally:
        sys.path.remove(LESSONS)

    def f(x):
        return x + 1

    assert Code(f, "return x").lines()[1][0][1].strip() == "return x + 1"
    with pytest.raises(ValueError, match=re.escape("no line contains 'x * 2'")):
        Code(f, "x * 2").lines()


# --- the formula map in lessons/README.md is true step by step ----------------------------------

def test_formula_map_points_at_steps_that_exist():
    readme = open(os.path.join(LESSONS, "README.md"), encoding="utf-8").read()
    n_steps = {}
    for f in EXPECTED:
        src = open(os.path.join(LESSONS, f), encoding="utf-8").read()
        n_steps[f[:2]] = len(re.findall(r"^lesson\.step\(", src, re.M))
    table = readme[readme.index("## The formula map"):]
    refs = re.findall(r"\b(\d\d)\.(\d+)(?:–(?:\d\d\.)?(\d+))?\b", table)      # 03.4 or 04.6–04.8
    assert len(refs) > 40, "the formula map should point at lesson steps"
    for lesson, first, last in refs:
        assert lesson in n_steps, f"the map names lesson {lesson}, which does not exist"
        top = int(last or first)
        assert 1 <= int(first) <= top <= n_steps[lesson], \
            f"the map points at step {lesson}.{top}, but lesson {lesson} has {n_steps[lesson]} steps"


def test_readme_gives_the_article_path_as_seen_from_lessons():
    readme = open(os.path.join(LESSONS, "README.md"), encoding="utf-8").read()
    rel = "../../shared/article/000_f6efe2eec2c83bdb.txt"
    assert rel in readme
    shared = os.path.normpath(os.path.join(LESSONS, "../../shared"))
    if os.path.isdir(shared):             # the project's workspace: the checkout sits beside shared/
        assert os.path.isfile(os.path.normpath(os.path.join(LESSONS, rel))), \
            f"{rel} does not resolve from lessons/ although {shared} exists"


# --- one letter per quantity (lessons/README.md, "Notation") -------------------------------------

# H is the number of heads and C the hidden size: a shape that ends in "T, H]" or "V, H]", an
# "H-dimensional" vector, "hidden size H" or a hidden-unit index h (x_th) uses H for the hidden size.
_HIDDEN_AS_H = [
    (r"\[[^\]\n]*\bT, H\]", "a shape [.., T, H]: the hidden size is C (H is the number of heads)"),
    (r"\[V, H\]", "a shape [V, H]: the hidden size is C (H is the number of heads)"),
    (r"\bH-dimensional", "'H-dimensional': the hidden size is C"),
    (r"\bhidden (?:size|units|width) H\b|\bH hidden\b", "H for the hidden size: it is C"),
    (r"\bx_th\b|\)_th\b|Σ_h x_t", "h indexes the hidden units: write c (x_tc); h is a head"),
    (r"\bhidden (?:size|units|width) (?!C\b)[A-Z]\b", "the hidden size is C"),
]
# A is the scores, S the weights (the article's): a hatted or subscripted P, or Â, in a formula is the
# kernels' letter (P = our S) or a clash with A, and needs a letters line or our letters.
_CODE_LETTER_IN_FORMULA = re.compile(r"\bP(?:_\w+)?\b(?![\w(])|Â")
# Code printed from these uses the kernels' letters (P = our S, S = our A): the step needs letters=True.
_CODE_WITH_KERNEL_LETTERS = re.compile(r"numba_kernel\.|attention_numpy\.|attention_numba\.|\bsoftmax\b|"
                                       r"attention_rollout|attention_probs")


def _steps(src):
    """(line, formula text, code text, letters=True?) of every lesson.step(...) call in a lesson's source."""
    import ast
    out = []
    for node in ast.walk(ast.parse(src)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "step"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "lesson"):
            formula = ast.get_source_segment(src, node.args[1]) if len(node.args) > 1 else ""
            kw = {k.arg: k.value for k in node.keywords}
            code = ast.get_source_segment(src, kw["code"]) if "code" in kw else ""
            letters = isinstance(kw.get("letters"), ast.Constant) and kw["letters"].value is True
            out.append((node.lineno, formula or "", code or "", letters))
    return out


def notation_problems(name, src):
    """The notation rules a lesson's source (or lessons/README.md) breaks, as 'name:line: what' strings."""
    problems = []
    for pattern, why in _HIDDEN_AS_H:
        for m in re.finditer(pattern, src):
            problems.append(f"{name}:{src.count(chr(10), 0, m.start()) + 1}: {m.group(0)!r}: {why}")
    if name.endswith(".py"):
        for line, formula, code, letters in _steps(src):
            if letters:
                continue
            m = _CODE_LETTER_IN_FORMULA.search(formula)
            if m:
                problems.append(f"{name}:{line}: the step's formula writes {m.group(0)!r} without a letters line "
                                "(letters=True) or the lessons' letters (A scores, S weights)")
            m = _CODE_WITH_KERNEL_LETTERS.search(code)
            if m:
                problems.append(f"{name}:{line}: the step prints code in the kernels' letters ({m.group(0)}) "
                                "without letters=True")
        if re.search(r"d_k", src) and not re.search(r"d_k[^\n]{0,80}\bD\b|\bD\b[^\n]{0,80}d_k", src):
            problems.append(f"{name}: writes d_k but never says that d_k is the head size D")
    return problems


def test_one_letter_per_quantity():
    """B batch, T length, H heads, C hidden size, D head size (= the article's d_k), A scores, S weights:
    every lesson and lessons/README.md, read as text (lessons/README.md, "Notation")."""
    problems = []
    for path in sorted(os.listdir(LESSONS)) + ["solutions/" + p for p in sorted(os.listdir(os.path.join(LESSONS, "solutions")))]:
        if path.endswith((".py", ".md")) and path != "_stepper.py":      # _stepper.py: the helper, not a lesson
            with open(os.path.join(LESSONS, path), encoding="utf-8") as f:
                problems += notation_problems(path, f.read())
    assert not problems, "notation (lessons/README.md) broken:\n" + "\n".join(problems)


def test_the_notation_check_catches_what_round_three_found():
    """The check flags the violations issue 24 listed: H as hidden units in 09, P_l and Â_l with no letters line in 12."""
    lesson09 = '''"""outputs = model(inputs)[0] is the last hidden state [1, T, H], so outputs[0] is [T, H], one
H-dimensional vector per token"""'''
    lesson12 = '''lesson.step("Where attention and gradients disagree",
            "R = Â_L ⋯ Â_1,  Â_l = ½ mean_heads(P_l) + ½ I;   R ≥ (½)^L I elementwise",
            code=Code(attention_rollout, "rollout = np.eye(t)", "rollout = a @ rollout"), article="math.attention")
'''
    assert len(notation_problems("09.py", lesson09)) == 3
    flagged = notation_problems("12.py", lesson12)
    assert any("'Â" in p or "'P_l'" in p for p in flagged) and any("attention_rollout" in p for p in flagged)
    fixed = lesson12.replace("Â", "Ŝ").replace("P_l", "S_l").replace('"math.attention")', '"math.attention", letters=True)')
    assert notation_problems("12.py", fixed) == []
    assert notation_problems("03.py", '"""scores QKᵀ/√d_k"""') != []
    assert notation_problems("03.py", '"""scores QKᵀ/√d_k, where d_k is the head size D"""') == []
