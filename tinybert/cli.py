"""The ``tinybert`` command line. ``tinybert --help`` lists the verbs; ``tinybert VERB --help`` each one.

Each verb is a small ``add_<verb>(subparsers)`` function that declares its arguments and points at a
``run`` function; the work itself lives in the library, so everything the CLI does can be done from
Python too.
"""
from __future__ import annotations

import argparse
import sys


def add_demo(sub):
    p = sub.add_parser("demo", help="the main job on the embedded default data (what `make demo` runs)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="runs/demo", help="run folder for metrics and plots")
    p.add_argument("--quick", action="store_true", help="a much shorter run (for tests)")

    def run(args):
        from tinybert.demo import main as demo_main
        return demo_main(seed=args.seed, out=args.out, quick=args.quick)

    p.set_defaults(func=run)


def add_embed(sub):
    p = sub.add_parser("embed", help="sentence embeddings (mean-pooled, L2-normalised), one line per text")
    p.add_argument("texts", nargs="+", metavar="TEXT", help="the sentences to embed")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint folder or 'all-MiniLM-L6-v2'")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--no-normalize", action="store_true", help="skip the L2 normalisation")
    p.add_argument("--npy", metavar="PATH", help="also save the [N, H] float32 array to this .npy file")

    def run(args):
        import numpy as np

        from tinybert.sentence import SentenceEncoder
        encoder = SentenceEncoder.from_pretrained(args.model)
        vectors = encoder.encode(args.texts, batch_size=args.batch_size, normalize=not args.no_normalize)
        for row in vectors:                      # one text per line, H numbers: np.loadtxt reads it back
            print(" ".join(f"{x:.6f}" for x in row))
        if args.npy:
            np.save(args.npy, vectors)
        return 0

    p.set_defaults(func=run)


def add_similarity(sub):
    p = sub.add_parser("similarity", help="cosine similarity of two sentences' embeddings")
    p.add_argument("a", metavar="A", help="first sentence")
    p.add_argument("b", metavar="B", help="second sentence")
    p.add_argument("--model", default="all-MiniLM-L6-v2", help="checkpoint folder or 'all-MiniLM-L6-v2'")

    def run(args):
        from tinybert.sentence import SentenceEncoder
        print(f"{SentenceEncoder.from_pretrained(args.model).similarity(args.a, args.b):.4f}")
        return 0

    p.set_defaults(func=run)


VERBS = [add_demo, add_embed, add_similarity]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tinybert", description="A BERT in plain NumPy.")
    sub = parser.add_subparsers(dest="verb", metavar="VERB")
    for add in VERBS:
        add(sub)
    return parser


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, TypeError, FileNotFoundError) as e:
        print(f"tinybert {args.verb}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"\ntinybert {args.verb}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
