"""Every lesson's exercises: ``--exercise k`` runs the solution of "Try next" item k and checks it.

Apart from tests/test_lessons.py so that the two xdist workers (``--dist loadfile``) share the lessons'
runs: each file goes to one worker.
"""
import os
import re
import subprocess
import sys

import pytest

from test_lessons import EXPECTED, LESSONS, ROOT


def _exercises(script):
    """(script, k) for every ``def exercise_k`` in the lesson's lessons/solutions/NN_*.py."""
    number = script[:2]
    paths = [f for f in os.listdir(os.path.join(LESSONS, "solutions")) if f.startswith(number + "_")]
    if len(paths) != 1:
        return [(script, None)]
    with open(os.path.join(LESSONS, "solutions", paths[0]), encoding="utf-8") as f:
        ks = sorted(int(k) for k in re.findall(r"^def exercise_(\d+)\(", f.read(), re.M))
    return [(script, k) for k in ks] or [(script, None)]


@pytest.mark.parametrize("script,k", [p for s in sorted(EXPECTED) for p in _exercises(s)])
def test_every_exercise_gives_what_it_promises(script, k, tmp_path):
    """``--exercise k`` runs the solution of the lesson's "Try next" item k and checks its result."""
    assert k is not None, f"{script} has no lessons/solutions/{script[:2]}_*.py with exercise_1, exercise_2, …"
    env = dict(os.environ, MPLBACKEND="Agg", OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1",
               MKL_NUM_THREADS="1", NUMBA_NUM_THREADS="2", PYTHONHASHSEED="0")
    env.pop("DISPLAY", None)
    env.pop("WAYLAND_DISPLAY", None)
    proc = subprocess.run([sys.executable, os.path.join(LESSONS, script), "--no-pause", "--small",
                           "--exercise", str(k), "--out", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=240,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 0, f"{script} --exercise {k} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    assert f"Exercise {k} of lesson {script[:2]}" in proc.stdout
    assert "✓ claim │" in proc.stdout and "FAILED" not in proc.stdout, "an exercise checks what it promises"
    assert "Step " not in proc.stdout.split("Exercise")[0], "--exercise runs the solution, not the lesson"
