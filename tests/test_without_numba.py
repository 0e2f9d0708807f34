"""Everything runs with NumPy alone when Numba cannot be imported (a subprocess that blocks it)."""
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent('''
    import sys

    class BlockNumba:
        def find_spec(self, name, path=None, target=None):
            if name == "numba" or name.startswith("numba."):
                raise ImportError("numba is blocked for this test")

    sys.meta_path.insert(0, BlockNumba())
    import math
    import numpy as np
    import tinybert
    from tinybert_kernels import dispatch
    from tinybert.special import erf

    assert "numba" not in sys.modules
    assert dispatch.resolve_backend("auto") == "numpy", dispatch.resolve_backend("auto")
    x = np.array([-3.0, -0.5, 0.0, 0.7, 2.0])
    assert np.array_equal(erf(x), np.array([math.erf(v) for v in x]))
    assert erf(x.astype(np.float32)).dtype == np.float32
    config = tinybert.BertConfig(vocab_size=30, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,
                                 intermediate_size=16, max_position_embeddings=8)
    model = tinybert.BertForMaskedLM(config, seed=0)
    ids = np.array([[2, 5, 7, 0]])
    logits = model.forward(ids, attention_mask=np.array([[1, 1, 1, 0]]))
    loss, d = tinybert.cross_entropy(logits, ids)
    model.backward(d)
    assert np.isfinite(loss) and all(np.isfinite(p.grad).all() for p in model.parameters())
    print("ok without numba")
''')


def test_library_runs_without_numba():
    r = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "ok without numba" in r.stdout
