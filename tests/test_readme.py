"""The README's Python example runs as written (in a temporary folder)."""
import pathlib
import re

import numpy as np

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_example_runs(tmp_path, monkeypatch, capsys):
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(encoding="utf-8"), flags=re.S)
    assert blocks, "the README has no Python example"
    monkeypatch.chdir(tmp_path)
    namespace = {}
    exec(compile(blocks[0], "README.md", "exec"), namespace)
    assert (tmp_path / "my-bert" / "model.safetensors").is_file()
    assert (tmp_path / "my-bert" / "vocab.txt").is_file()
    assert np.isfinite(namespace["loss"])
    t = namespace["inputs"].input_ids.shape[1]
    assert namespace["hidden"].shape == (1, t, 384) and namespace["outputs"][0] is namespace["hidden"]
    assert len(namespace["attentions"]) == 6 and namespace["attentions"][0].shape == (1, 12, t, t)
    similarity = float(capsys.readouterr().out)
    assert 0.5 < similarity <= 1.0      # a paraphrase
