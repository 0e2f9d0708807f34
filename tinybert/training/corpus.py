"""The data: an embedded corpus the project generates itself, a labeled task built on it, and readers
for the user's own files.

Nothing is downloaded. Everything here is deterministic from a seed (``numpy.random.default_rng``).

1. **The pretraining corpus** (``generate_corpus``): short English "documents" of one or two
   sentences, drawn from templates whose words can only be filled in from *context*, which is what
   masked-language modelling has to learn::

       attribute recall   "anna has a red kite . the kite of anna is red ."      (the 2nd "red")
       agreement          "the dogs sleep in the park ." / "the dog sleeps ..."   (sleep/sleeps)
       co-reference       "tom went to the market because he wanted ..."          (he/she, his/her)
       two people         "mia gave the cup to ben , and ben thanked mia ."      (the names again)
       sentiment          "i loved the soup , it was tasty ."                     (polarity of the word)
       contrast           "the soup was tasty , not bland ."                      (opposite polarity)

   A unigram model (always guess the commonest word) gets a masked word right about one time in
   ten; a model that reads the context can get most of them.

2. **The labeled task** (``generate_sentiment_task``): sentiment with negation and contrast, built
   from *minimal pairs* — two sentences with exactly the same words and opposite labels::

       "the soup was tasty , not bland ."   -> positive
       "the soup was bland , not tasty ."   -> negative

   The label is the polarity of the adjective that is *asserted* (not the one negated), so it depends
   on word order. Both members of a pair always land in the same split, so a bag-of-words model,
   which sees identical features for the two, predicts the same label for both and is right on
   exactly one: 50% on every split. Attention can see which adjective follows "not".
   Train, validation and test pairs never share a (template, noun, positive word, negative word).

3. **Readers** for user data: ``read_texts`` (a UTF-8 ``.txt`` file, or a folder of them, one text a
   line) for pretraining, ``read_labeled`` (TSV/CSV with a header, GLUE/SST-2 style: ``sentence``
   and ``label`` columns) for fine-tuning, and ``check_label_sets`` for train/test label agreement.
   Errors name the file and what is wrong (for a file that does not decode, the byte offset).
   Files are UTF-8, or UTF-16/UTF-32 when they begin with a byte-order mark; a .txt file holds one
   text per ``\\n`` (no other line separator splits a text); tables are read by ``csv.reader``.
"""
from __future__ import annotations

import csv
import logging
import os

import numpy as np

from tinybert.config import check_memory, format_bytes
from tinybert.errors import InvalidType, InvalidValue, MissingFile
from tinybert.io.paths import CONFIG_NAME, WEIGHTS_NAME
from tinybert.training.runfolder import holds_run

logger = logging.getLogger("tinybert")

# ------------------------------------------------------------------------------------------------
# word lists (every word is a whole token of the vocabulary trained on this corpus)
# ------------------------------------------------------------------------------------------------

MALE_NAMES = ("tom", "sam", "ben", "max", "leo", "jack", "paul", "mark")
FEMALE_NAMES = ("anna", "mia", "lily", "emma", "sara", "kate", "lucy", "rose")
COLORS = ("red", "blue", "green", "yellow", "black", "white", "pink", "brown")
THINGS = ("car", "bike", "hat", "coat", "cup", "bag", "kite", "ball", "book", "lamp")
ANIMALS = (("dog", "dogs"), ("cat", "cats"), ("bird", "birds"), ("horse", "horses"),
           ("fox", "foxes"), ("duck", "ducks"))
VERBS = (("runs", "run"), ("sleeps", "sleep"), ("sings", "sing"), ("jumps", "jump"),
         ("eats", "eat"), ("swims", "swim"))
PLACES = ("park", "garden", "kitchen", "river", "school", "market")
NOUNS = ("soup", "movie", "hotel", "service", "pizza", "book", "song", "trip", "room", "coffee",
         "show", "game")
POSITIVE = ("good", "great", "tasty", "lovely", "excellent", "nice", "fresh", "wonderful")
NEGATIVE = ("bad", "awful", "bland", "terrible", "poor", "boring", "stale", "horrible")
LABELS = ("negative", "positive")          # label id 0, 1

# minimal-pair templates: {a} is the asserted adjective (it decides the label), {b} the negated one
TASK_TEMPLATES = (
    "the {noun} was {a} , not {b} .",
    "the {noun} was not {b} , but {a} .",
    "i expected the {noun} to be {b} , but it was {a} .",
    "the {noun} was {a} . it was not {b} at all .",
    "{name} said the {noun} was {b} , but it was really {a} .",
)


def _pick(rng, seq):
    return seq[int(rng.integers(len(seq)))]


def _name_pair(rng):
    """Two different names and their genders."""
    names = MALE_NAMES + FEMALE_NAMES
    i, j = rng.choice(len(names), size=2, replace=False)
    return names[i], names[j]


def _pronouns(name):
    return ("he", "his") if name in MALE_NAMES else ("she", "her")


def _sentence(rng, kind: int) -> str:
    """One document of the pretraining corpus, of template family ``kind`` (0..5)."""
    if kind == 0:                                   # attribute recall (copy from earlier in the text)
        name, color, thing = _pick(rng, MALE_NAMES + FEMALE_NAMES), _pick(rng, COLORS), _pick(rng, THINGS)
        return f"{name} has a {color} {thing} . the {thing} of {name} is {color} ."
    if kind == 1:                                   # subject-verb agreement
        sg, pl = _pick(rng, ANIMALS)
        v_sg, v_pl = _pick(rng, VERBS)
        place = _pick(rng, PLACES)
        if rng.random() < 0.5:
            return f"the {sg} {v_sg} in the {place} and it is happy ."
        return f"the {pl} {v_pl} in the {place} and they are happy ."
    if kind == 2:                                   # co-reference by gender
        a, b = _name_pair(rng)
        he, his = _pronouns(a)
        return f"{a} went to the {_pick(rng, PLACES)} because {he} wanted to see {his} friend {b} ."
    if kind == 3:                                   # two people, named again
        a, b = _name_pair(rng)
        return f"{a} gave the {_pick(rng, THINGS)} to {b} , and {b} thanked {a} ."
    noun = _pick(rng, NOUNS)
    pos, neg = _pick(rng, POSITIVE), _pick(rng, NEGATIVE)
    if kind == 4:                                   # polarity from the verb
        if rng.random() < 0.5:
            return f"i loved the {noun} , it was {pos} ."
        return f"i hated the {noun} , it was {neg} ."
    a, b = (pos, neg) if rng.random() < 0.5 else (neg, pos)   # contrast: the task's own templates
    template = _pick(rng, TASK_TEMPLATES)
    return template.format(noun=noun, a=a, b=b, name=_pick(rng, MALE_NAMES + FEMALE_NAMES))


def generate_corpus(n_sentences: int = 20000, seed: int = 0, exclude=()) -> list[str]:
    """The embedded pretraining corpus: ``n_sentences`` lower-case documents (one str each).

    The six template families (see the module docstring) are drawn with probabilities
    0.2, 0.15, 0.15, 0.15, 0.1, 0.25. ``exclude``: texts never to emit (e.g. the task's test
    sentences, so that pretraining never reads them); a drawn text in it is redrawn.
    """
    if isinstance(n_sentences, bool) or not isinstance(n_sentences, (int, np.integer)) or n_sentences <= 0:
        raise InvalidValue(f"n_sentences={n_sentences!r}: expected a positive integer")
    rng = np.random.default_rng([int(seed), 1])
    probs = np.array([0.2, 0.15, 0.15, 0.15, 0.1, 0.25])
    exclude = set(exclude)
    out = []
    while len(out) < n_sentences:
        text = _sentence(rng, int(rng.choice(6, p=probs)))
        if text not in exclude:
            out.append(text)
    return out


def generate_sentiment_task(n_train_pairs: int = 1500, n_val_pairs: int = 200, n_test_pairs: int = 250,
                            seed: int = 0) -> dict:
    """The labeled minimal-pair sentiment task.

    Returns ``{"train": (texts, labels), "validation": ..., "test": ...}`` where texts is a list of
    str and labels a list of label names (``"negative"``/``"positive"``). Each split holds
    2 × n_pairs texts; the two members of a pair are adjacent. Keys (template, noun, positive word,
    negative word) are disjoint across splits.
    """
    counts = {"train": n_train_pairs, "validation": n_val_pairs, "test": n_test_pairs}
    for k, v in counts.items():
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v <= 0:
            raise InvalidValue(f"n_{k}_pairs={v!r}: expected a positive integer")
    n_keys = len(TASK_TEMPLATES) * len(NOUNS) * len(POSITIVE) * len(NEGATIVE)
    total = sum(counts.values())
    if total > n_keys:
        raise InvalidValue(f"asked for {total} pairs but there are only {n_keys} distinct "
                         "(template, noun, positive, negative) keys")
    rng = np.random.default_rng([int(seed), 2])
    keys = rng.permutation(n_keys)[:total]
    splits, start = {}, 0
    for split, n in counts.items():
        texts, labels = [], []
        for key in keys[start:start + n]:
            key = int(key)
            t, rest = divmod(key, len(NOUNS) * len(POSITIVE) * len(NEGATIVE))
            noun_i, rest = divmod(rest, len(POSITIVE) * len(NEGATIVE))
            pos_i, neg_i = divmod(rest, len(NEGATIVE))
            name = _pick(rng, MALE_NAMES + FEMALE_NAMES)
            pos, neg, noun = POSITIVE[pos_i], NEGATIVE[neg_i], NOUNS[noun_i]
            for a, b, label in ((pos, neg, "positive"), (neg, pos, "negative")):
                texts.append(TASK_TEMPLATES[t].format(noun=noun, a=a, b=b, name=name))
                labels.append(label)
        splits[split] = (texts, labels)
        start += n
    return splits


# ------------------------------------------------------------------------------------------------
# readers for the user's data
# ------------------------------------------------------------------------------------------------

# Byte-order marks, longest first (UTF-32-LE's BOM begins with UTF-16-LE's).
BOMS = ((b"\x00\x00\xfe\xff", "utf-32-be", "UTF-32"), (b"\xff\xfe\x00\x00", "utf-32-le", "UTF-32"),
        (b"\xef\xbb\xbf", "utf-8", "UTF-8"), (b"\xfe\xff", "utf-16-be", "UTF-16"),
        (b"\xff\xfe", "utf-16-le", "UTF-16"))


def detect_encoding(head: bytes):
    """The encoding a file's first bytes announce with a byte-order mark.

    -> (codec, BOM length in bytes, name): ("utf-16-le", 2, "UTF-16") for a UTF-16 file saved by
    Windows Notepad, ("utf-8", 0, "UTF-8") when there is no BOM (UTF-8 is then assumed).
    """
    for bom, codec, name in BOMS:
        if head.startswith(bom):
            return codec, len(bom), name
    return "utf-8", 0, "UTF-8"


def likely_encoding(data: bytes) -> tuple[str, str]:
    """For bytes that are not UTF-8 (and have no BOM): the encoding they most likely are, for the
    error's advice, and why. -> (iconv's name, reason). Checked in this order: UTF-16 without a BOM
    (line ends appear as 0A 00 or 00 0A at even offsets: CJK text in UTF-16 has no NUL-heavy bytes),
    GB18030/GBK (the bytes decode, and into CJK characters: Chinese files saved on Windows), else
    Latin-1 (every byte decodes; Western European text)."""
    if len(data) % 2 == 0:
        for codec, newline in (("utf-16le", b"\n\x00"), ("utf-16be", b"\x00\n")):
            pairs = [data[i:i + 2] for i in range(0, len(data), 2)]
            if newline in pairs:
                return codec, f"its line ends are two bytes ({newline.hex(' ')}): probably {codec.upper()} without a BOM"
    try:
        text = data.decode("gb18030")
    except UnicodeDecodeError:
        text = ""
    cjk = sum("\u4e00" <= ch <= "\u9fff" for ch in text)
    if cjk and cjk >= len([ch for ch in text if ord(ch) > 127]) // 2:
        return "gb18030", "it decodes as Chinese text in GB18030/GBK"
    return "latin1", "it may be Latin-1 or Windows-1252"


def read_text(file: str) -> str:
    """The text of ``file``: UTF-8, or UTF-16/UTF-32 when a byte-order mark says so (the BOM dropped).

    Bytes that do not decode raise ValueError naming the file, the encoding, the byte offset and the
    offending byte, and how to convert it. A file without a BOM but full of NUL bytes is named as
    probably UTF-16/32 rather than blamed on a one-byte encoding.
    """
    with open(file, "rb") as f:
        data = f.read()
    codec, skip, name = detect_encoding(data[:4])
    try:
        return data[skip:].decode(codec)
    except UnicodeDecodeError as e:
        at = skip + e.start
        if skip:
            how = f"it starts with a {name} byte-order mark, but is not valid {name}"
        elif data.count(0) > len(data) // 4:
            guess = likely_encoding(data)[0]
            how = ("it has no byte-order mark and many NUL bytes: probably UTF-16 or UTF-32 saved "
                   f"without a BOM; convert it, e.g. `iconv -f {guess if guess.startswith('utf-16') else 'utf-16le'} "
                   f"-t utf-8 {os.path.basename(file)}`")
        else:
            guess, why = likely_encoding(data)
            how = (f"{why}: convert it to UTF-8, e.g. `iconv -f {guess} -t utf-8 {os.path.basename(file)}` "
                   "(`file -i` names an encoding too)")
        raise InvalidValue(f"{file} is not {name}: byte 0x{data[at]:02x} at byte offset {at} cannot be "
                         f"decoded ({e.reason}); {how}") from None


def split_lines(text: str) -> list[str]:
    """Lines split on \\n only (a trailing \\r of Windows line ends dropped).

    ``str.splitlines`` also splits on U+2028, U+2029, U+0085, \\v, \\f and \\x1c-\\x1e, which
    would cut one text of a .txt file into two; a .txt file means one text per \\n.
    """
    return [line[:-1] if line.endswith("\r") else line for line in text.split("\n")]


def _txt_files(path: str) -> list[str]:
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InvalidType(f"path must be a file or folder path, got {type(path).__name__}")
    path = os.fspath(path)
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise MissingFile(f"no such file or folder: {path}")
    files, skipped = [], []
    for root, dirs, names in os.walk(path):
        dirs.sort()
        if _is_run_or_checkpoint(root):       # its vocab.txt is not text: a run's --out inside --train
            skipped.append(root)
            dirs[:] = []
            continue
        files.extend(os.path.join(root, n) for n in sorted(names) if n.endswith(".txt"))
    if skipped:
        logger.warning("reading %s: skipped %d folder(s) holding a tinybert run or a checkpoint (%s): their "
                       "vocab.txt is a vocabulary, not training text", path, len(skipped),
                       ", ".join(skipped[:3]) + (" ..." if len(skipped) > 3 else ""))
    if not files:
        raise InvalidValue(f"the folder {path} holds no .txt files (pretraining text is read from "
                         "UTF-8 .txt files, one text a line)"
                           + (", but for the runs and checkpoints skipped" if skipped else ""))
    return files


def _is_run_or_checkpoint(folder: str) -> bool:
    """A folder a run wrote (run_config.json, metrics.jsonl, checkpoint/ ...) or a checkpoint
    (config.json beside model.safetensors): the .txt files in it are vocabularies."""
    return holds_run(folder) or (os.path.isfile(os.path.join(folder, CONFIG_NAME))
                                 and os.path.isfile(os.path.join(folder, WEIGHTS_NAME)))


# a file of S bytes takes about this many times S once read: its bytes, the decoded text, a str
# object a line (49 bytes of overhead each) and the token ids encoded from them
READ_MEMORY_FACTOR = 6


def check_read_size(files, what: str) -> None:
    """Refuse (MemoryLimitExceeded naming ``what`` — the flag or argument — and the sizes) files
    whose text would not fit in memory once read: they are read whole, so a 5 GB .txt would end in a
    MemoryError after minutes."""
    size = sum(os.path.getsize(f) for f in files)
    where = files[0] if len(files) == 1 else f"{len(files)} files"
    check_memory(READ_MEMORY_FACTOR * size, f"{what} {where}: reading {format_bytes(size)} of text (about "
                 f"{READ_MEMORY_FACTOR}× its size in memory, with the token ids)", what, where)


def read_texts(path, what: str = "path") -> list[str]:
    """Pretraining text from a UTF-8 ``.txt`` file or a folder of them (recursively, sorted by name).

    Returns the non-blank lines, stripped, in order. Raises FileNotFoundError for a missing path and
    ValueError for a non-UTF-8 file (naming file and byte offset), a corpus with no text, or one too
    large to read into memory (``check_read_size``; ``what`` names the argument: "--train").
    """
    texts = []
    files = _txt_files(path)
    check_read_size(files, what)
    for file in files:
        texts.extend(line.strip() for line in split_lines(read_text(file)) if line.strip())
    if not texts:
        raise InvalidValue(f"the corpus at {os.fspath(path)} is empty: no non-blank line to train on")
    return texts


TEXT_COLUMNS = ("sentence", "text", "sentence1", "review", "content")
LABEL_COLUMNS = ("label", "labels", "class", "sentiment", "target")


def _delimiter(file: str, first_line: str) -> str:
    ext = os.path.splitext(file)[1].lower()
    if ext == ".tsv":
        return "\t"
    if ext == ".csv":
        return ","
    return "\t" if first_line.count("\t") >= max(1, first_line.count(",")) else ","


def _table_rows(path: str):
    """The rows of a TSV/CSV file, read by ``csv.reader`` on the file itself (not on split lines, so
    a quoted comma or a quoted line break stays inside its field). -> (delimiter, [(line, row)]) where
    line is the 1-based line on which the row starts.

    TSV is read without quoting (GLUE's files hold bare quote characters); CSV with it.
    """
    codec, skip, name = detect_encoding(open(path, "rb").read(4))
    try:
        with open(path, encoding=codec, newline="") as f:
            f.seek(0)
            if skip:
                f.read(1)                                   # the BOM, one character in every encoding
            start = f.tell()
            delim = _delimiter(path, f.readline())
            f.seek(start)
            quoting = csv.QUOTE_NONE if delim == "\t" else csv.QUOTE_MINIMAL
            reader = csv.reader(f, delimiter=delim, quoting=quoting, strict=True)
            rows, line = [], 1
            for row in reader:
                rows.append((line, row))
                line = reader.line_num + 1
    except UnicodeDecodeError:
        read_text(path)                                     # raises the error with the byte offset
        raise
    except csv.Error as e:
        raise InvalidValue(f"{path}, line {reader.line_num}: not a valid {'TSV' if delim == chr(9) else 'CSV'} "
                         f"row ({e}); a field holding the delimiter, a quote or a line break must be "
                         'quoted, with quotes inside it doubled ("say ""hi"", then go")') from None
    return delim, rows


def read_labeled(path, text_column: str | None = None, label_column: str | None = None, what: str = "path"):
    """A labeled table for fine-tuning: TSV (GLUE/SST-2 style) or CSV with a header row.

    The text column is ``text_column`` or the first header among ``TEXT_COLUMNS``
    (``sentence``, ``text``, ...); the label column ``label_column`` or the first among
    ``LABEL_COLUMNS``. The delimiter follows the extension (.tsv tab, .csv comma), else it is guessed
    from the header. The file is read by ``csv.reader`` itself, so a CSV field may hold commas and
    line breaks when quoted. -> (texts: list[str], labels: list[str]).

    Errors (ValueError naming the file): not decodable (with the byte offset; UTF-16/32 files are
    read when they start with a byte-order mark), empty, no text or label column (listing the
    columns found), a row with fewer or more fields than the header (with its line number: an
    unquoted comma in a CSV text would otherwise shift the label), an empty label.
    """
    # long because: each way a user's table can be wrong gets its own message here
    if isinstance(path, bool) or not isinstance(path, (str, os.PathLike)):
        raise InvalidType(f"path must be a .tsv/.csv file path, got {type(path).__name__}")
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise MissingFile(f"labeled data file not found: {path}")
    check_read_size([path], what)
    delim, rows = _table_rows(path)
    rows = [(line, row) for line, row in rows if row and any(f.strip() for f in row)]
    if not rows:
        raise InvalidValue(f"{path} is empty: expected a header row (e.g. 'sentence<TAB>label') and rows")
    header = [h.strip() for h in rows[0][1]]
    lower = [h.lower() for h in header]

    def find(given, candidates, what, arg):
        """The index of the column; a choice that is not one column is refused, never guessed."""
        if given is not None:
            if given not in header:
                raise InvalidValue(f"{path}: {arg}={given!r} is not a column; the columns are {header}")
            if header.count(given) > 1:
                raise InvalidValue(f"{path}: the header names {given!r} {header.count(given)} times ({header}); "
                                   "give each column its own name")
            return header.index(given)
        found = [c for c in candidates if c in lower]
        if len(found) > 1 or (found and lower.count(found[0]) > 1):
            raise InvalidValue(f"{path}: which column is the {what} is ambiguous: the header {header} has "
                               f"{', '.join(repr(header[i]) for i, h in enumerate(lower) if h in found)}; "
                               f"pass {arg}=... to choose")
        if found:
            return lower.index(found[0])
        raise InvalidValue(f"{path} has no {what} column: the header is {header}; expected one of "
                         f"{list(candidates)} (or pass {arg}=...)")

    ti = find(text_column, TEXT_COLUMNS, "text", "text_column")
    li = find(label_column, LABEL_COLUMNS, "label", "label_column")
    if ti == li:
        raise InvalidValue(f"{path}: the text and the label would be the same column {header[ti]!r}; "
                           "pass text_column=... and label_column=... naming two columns")
    texts, labels = [], []
    for lineno, row in rows[1:]:
        if len(row) != len(header):
            hint = ("quote a text that holds commas (\"good, not bad\")" if delim == ","
                    else "a text must not hold a tab")
            raise InvalidValue(f"{path}, line {lineno}: {len(row)} field(s) but the header has "
                             f"{len(header)} ({header}); is the delimiter {delim!r} right? ({hint})")
        label = row[li].strip()
        if not label:
            raise InvalidValue(f"{path}, line {lineno}: the label is empty")
        if not row[ti].strip():
            raise InvalidValue(f"{path}, line {lineno}: the text is empty (a model would learn the label of "
                               "nothing but [CLS] [SEP])")
        texts.append(row[ti].strip())
        labels.append(label)
    if not texts:
        raise InvalidValue(f"{path} has a header but no data rows")
    return texts, labels


def label_names(labels) -> list[str]:
    """The sorted distinct labels (numerically when they are all integers, as GLUE's "0"/"1")."""
    distinct = set(labels)
    if all(str(x).lstrip("-").isdigit() for x in distinct):
        return sorted(distinct, key=lambda x: int(x))
    return sorted(distinct)


def check_label_sets(train_labels, other_labels=None, other_name: str = "test") -> list[str]:
    """Check fine-tuning labels; -> the label names (id order).

    Raises ValueError when the training labels have a single class (nothing to learn), or when
    ``other_labels`` (validation/test) has a different label set than training.
    """
    names = label_names(train_labels)
    if len(names) < 2:
        raise InvalidValue(f"the training data has a single class {names}: a classifier needs at "
                         "least two labels")
    if other_labels is not None:
        other = set(other_labels)
        unseen, absent = sorted(other - set(names)), sorted(set(names) - other)
        if unseen or absent:
            raise InvalidValue(f"the {other_name} labels differ from the training labels {names}: "
                             + (f"{unseen} never occur in training" if unseen else "")
                             + ("; " if unseen and absent else "")
                             + (f"{absent} never occur in {other_name}" if absent else ""))
    return names
