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
    "03_self_attention.py": ["03_attention_weights.png", "03_why_sqrt_dk.png"],
    "04_encoder_layer.py": ["04_heads.png", "04_gelu.png", "04_parameter_count.png", "04_capacity.png"],
    "05_backprop_gradcheck.py": ["05_gradcheck_table.png", "05_wrong_backward.png", "05_optimizers.png"],
    "06_pretraining_mlm.py": ["06_masking.png", "06_loss_curve.png", "06_predictions.png"],
    "07_finetuning.py": ["07_full_vs_head.png", "07_regularization.png", "07_confusion.png"],
    "08_fused_attention.py": ["08_online_softmax.png", "08_tiles.png", "08_memory_time.png"],
    "09_pretrained_model.py": ["09_similarity.png", "09_attention_head.png"],
    "10_encoder_to_decoder.py": ["10_masks.png", "10_cross_attention.png", "10_lm_loss.png"],
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
    assert str(tmp_path) in out, "a lesson prints where its figures go"
    assert "formula │" in out and "code    │" in out, "steps print their formula and code"
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
