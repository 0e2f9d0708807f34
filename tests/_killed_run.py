"""A tiny float64 MLM run that SIGKILLs itself (tests/test_save_steps.py).

    python tests/_killed_run.py OUT VOCAB_DIR MODE [N]

MODE "after-step N": killed right after optimizer step N (no handler runs, nothing is flushed: what a
preemption or the OOM killer does). MODE "while-saving N": killed halfway through writing the
checkpoint of step N (the weights are written, the rest is not). MODE "resume": continue the run
from its checkpoint. MODE "full": run it uninterrupted. Each prints the final step and writes the
final weights to OUT/final.npz.
"""
import os
import signal
import sys

import numpy as np

import tinybert
from tinybert.text.tokenizer import BertTokenizer
from tinybert.training import MLMTask, Trainer, TrainingConfig, corpus
from tinybert.training import checkpoints


def main(out, vocab_dir, mode, n=0):
    n = int(n)
    tok = BertTokenizer(os.path.join(vocab_dir, "vocab.txt"))
    texts = corpus.generate_corpus(120, seed=0)
    cfg = TrainingConfig(epochs=2, batch_size=16, lr=3e-3, seed=7, max_length=32, log_every=2, progress=False,
                         save_steps=3)
    mc = tinybert.BertConfig(vocab_size=tok.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                             intermediate_size=32, max_position_embeddings=32, hidden_dropout_prob=0.1,
                             attention_probs_dropout_prob=0.1)
    model = tinybert.BertForMaskedLM(mc, seed=3, dtype=np.float64, attention_backend="numpy")
    task = MLMTask(tok, texts[:100], texts[100:], cfg)

    def on_step(trainer, step, loss):
        if mode == "after-step" and step == n:
            os.kill(os.getpid(), signal.SIGKILL)

    if mode == "while-saving":
        real_write = checkpoints.write_json

        def dying_write(path, obj):                  # training_state.json is the last file of the folder
            if path.endswith(checkpoints.STATE_NAME) and obj["step"] == n:
                os.kill(os.getpid(), signal.SIGKILL)
            real_write(path, obj)
        checkpoints.write_json = dying_write

    result = Trainer(model, task, cfg, out, tok, on_step=on_step).train(resume=mode == "resume")
    np.savez(os.path.join(out, "final.npz"), **{k: p.data for k, p in model.named_parameters()})
    print("final step", result["step"])


if __name__ == "__main__":
    main(*sys.argv[1:])
