"""The texts lesson 01 learns its WordPiece vocabulary from (shared with its exercises' solutions)."""
from tinybert.training.corpus import generate_corpus

# a few Chinese sentences of our own, so that the vocabulary has the article's characters
CHINESE_SENTENCES = ["我喜欢读书。", "雨中的城市很安静。", "他在公园里漫步。", "我们喜欢在雨天喝茶。",
                     "她每天在河边漫步。", "下雨了，我在家中看书。"] * 3


def wordpiece_corpus(small: bool, seed: int) -> list[str]:
    """The generated English sentences (1500 with --small, else 5000) of lesson 01, step 5."""
    return generate_corpus(1500 if small else 5000, seed=seed)


def vocab_size(small: bool) -> int:
    """The vocabulary size lesson 01 learns (400 with --small, else 800)."""
    return 400 if small else 800
