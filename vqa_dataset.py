"""Data: the canonical CSV format, its checks, the answer vocabulary and the torch Dataset.

data_dir/data.csv columns: image (path under data_dir/image/), question, answer, and optionally
question_type (A|B), triple (head|relation|tail), abstract, split (train|valid|test), lang (ko|en), fold (BOK-VQA's
cross-validation fold, 1-5; main.py --valid_fold).
"""
import csv
import difflib
import io
import json
import os
import re
import unicodedata

import numpy as np
import pandas as pd
import torch
from torch.utils.data import Dataset

import util
from images import cache_dir, check_image
from splits import apply_run_split, load_or_make_split
from util import DataError

REQUIRED_COLUMNS = ["image", "question", "answer"]


OPTIONAL_COLUMNS = ["question_type", "triple", "abstract", "split", "lang", "fold"]  # fold: BOK-VQA's (1-5)


# cleaned up as text when read (clean_text): every column but image, a path, which is used exactly as written
TEXT_COLUMNS = [c for c in REQUIRED_COLUMNS + OPTIONAL_COLUMNS if c != "image"]
SOURCE_FILE = "source.json"  # beside an imported data.csv: the formats and files it came from (a model card names them)


SPLITS = ("train", "valid", "test")


def read_csv(path):
    """A CSV file as strings, with its header checked: every column named once, no white space around a name, no
    repeated header line, at least one row. Any fault is a DataError naming the file, line and fix."""
    try:
        with open(path, "rb") as f:
            raw = f.read()
    except FileNotFoundError:
        raise DataError(f"{path} not found: give the path of a CSV file.") from None
    except OSError as e:
        what = "is a folder, not a CSV file" if os.path.isdir(path) else f"cannot be read ({e.strerror})"
        raise DataError(f"{path} {what}: give the path of a CSV file.") from None
    text = decode(raw, path)
    if "\x00" in text:
        raise DataError(f"{path}: the text holds NUL characters (UTF-16?); re-save the file as UTF-8.")
    if not text.strip():
        raise DataError(f"{path}: the file has no rows (it is empty or holds only blank lines, {len(raw)} bytes): it "
                        f"needs a header line and rows; see the README's data format, or build the sample with "
                        f"`python download.py --sample`.")
    try:
        header = next(row for row in csv.reader(io.StringIO(text)) if row)
        df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, csv.Error) as e:
        raise DataError(f"{path}: not a well-formed CSV ({e}). Check the quoting on that line.") from None
    check_header(header, df, path)
    return df


def check_header(header, df, path):
    """The header faults pandas would let through: a repeated name (read as 'answer.1'), white space around a name
    (' split' is not the column split), the header line again among the rows (two exports concatenated), no rows."""
    repeated = sorted({name for name in header if name and header.count(name) > 1})  # pandas names '' Unnamed: N
    if repeated:
        raise DataError(f"{path}: the header names column(s) {repeated} more than once (columns "
                        f"{[i + 1 for i, name in enumerate(header) if name in repeated]}); rename or remove the extra "
                        f"one, so that it is clear which one is meant.")
    padded = [name for name in header if name != name.strip()]
    if padded:
        raise DataError(f"{path}: column name(s) {padded} have white space around them, so they are not the columns "
                        f"they look like; rename them to {[name.strip() for name in padded]}.")
    again = (df.values == np.array(header, dtype=object)).all(axis=1) if len(df.columns) == len(header) else []
    if np.any(again):
        raise DataError(f"{path}: {row_numbers(np.flatnonzero(again) + 2)} repeat the header line (two files joined "
                        f"into one?); delete them (the header is row 1).")
    if df.empty:
        raise DataError(f"{path}: the file has no rows, only its header line {header}.")


def decode(raw, path):
    """The text of a CSV file: UTF-8 (with or without BOM), else CP949/EUC-KR (Korean exports from Windows tools),
    said, where that reading is plausible Korean. Says when UTF-8 text looks double-encoded (mojibake), before
    the clean-up of questions and answers makes it irreparable."""
    try:
        text = raw.decode("utf-8-sig")
        warn_double_encoded(text, path)
        return text
    except UnicodeDecodeError as utf8_error:
        try:
            text = raw.decode("cp949")
        except UnicodeDecodeError:
            line = raw[:utf8_error.start].count(b"\n") + 1
            raise DataError(f"{path}: the text is neither UTF-8 nor CP949/EUC-KR (undecodable byte "
                            f"{raw[utf8_error.start]:#04x} on line {line}). Re-save the file as UTF-8.") from None
    check_cp949_reading(text, raw, path)
    print(f"note: {path} is not UTF-8; read it as CP949/EUC-KR (Korean Windows)")
    return text


def ks_x_1001(char):
    """Whether a character read as CP949 is in KS X 1001 (EUC-KR: both bytes from 0xA1): the 2,350 Hangul syllables
    of everyday Korean, hanja, symbols. CP949 adds the other 8,822 syllables, which Korean text rarely holds but
    Latin-1 letters followed by ASCII give ('Ä' 'r' read as '훣')."""
    code = char.encode("cp949")
    return len(code) == 1 or min(code) >= 0xA1


def check_cp949_reading(text, raw, path):
    """Refuses a CP949 reading that is no Korean text: most of its non-ASCII characters outside KS X 1001, as a
    Latin-1 file's 'Ärger' read as CP949 gives '훣ger'."""
    wide = [c for c in text if ord(c) > 127]
    rare = {c for c in wide if not ks_x_1001(c)}
    count = sum(c in rare for c in wide)
    if count <= 0.1 * len(wide):
        return
    lines = text.split("\n")
    number = next(n for n, line in enumerate(lines) if rare & set(line))
    latin = raw.decode("cp1252", errors="replace").split("\n")[number]
    raise DataError(f"{path}: the text is not UTF-8, and read as CP949 (Korean Windows) {count} of its {len(wide)} "
                    f"non-ASCII characters are rare Hangul no Korean text would hold (line {number + 1}: "
                    f"{lines[number].strip()[:60]!r}); read as Latin-1/Windows-1252 that line is "
                    f"{latin.strip()[:60]!r}. Re-save the file as UTF-8.")


def warn_double_encoded(text, path):
    """Warns of lines that are UTF-8 which was read as Latin-1/Windows-1252 and saved as UTF-8 again (mojibake:
    '이미지' as 'ì\x9d´ë¯¸ì§\x80'), with the first one's repair."""
    found = []
    for number, line in enumerate(text.splitlines(), 1):
        if re.search("[\u0080-\u00ff]", line):
            for codec in ("cp1252", "latin-1"):
                try:
                    found.append((number, line, line.encode(codec).decode("utf-8")))
                    break
                except UnicodeError:
                    continue
    if found:
        number, line, repaired = found[0]
        print(f"warning: {path}: {len(found)} line(s) look double-encoded (UTF-8 read as Latin-1 and saved again), "
              f"line {number} first: {line[:60]!r} would read {repaired[:60]!r}. Re-export the file as UTF-8 once "
              f"(or repair it, e.g. with ftfy) before using it: the clean-up of questions and answers cannot undo it.")


def read_data(data_dir, run_dir=None):
    """data_dir/data.csv with every canonical column, its spreadsheet row number, category and split filled: the
    split of the run in run_dir (only the rows it holds), else the data's own (its split column or split.csv).

    Row-level problems are left for validate(); only problems with the whole file raise here."""
    path = os.path.join(data_dir, "data.csv")
    if os.path.isfile(data_dir):
        raise DataError(f"--data_dir {data_dir} is a file, not a folder: give the folder that holds data.csv and "
                        f"image/.")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found. Build the sample with `python download.py --sample` "
                        f"(then use --data_dir data/sample or --preset sample), import your data with "
                        f"`python download.py --from_csv ...`, or put your data.csv there.")
    df = read_csv(path)
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
                        f"The canonical columns are {REQUIRED_COLUMNS} plus optional {OPTIONAL_COLUMNS}.")
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    before = df[["question", "answer"]].copy()
    for column in TEXT_COLUMNS:
        df[column] = normalize_text(df[column])
    df.attrs["normalized_rows"] = int((df[["question", "answer"]] != before).any(axis=1).sum())
    df.insert(0, "row", np.arange(2, len(df) + 2))  # as a spreadsheet shows it: the header is row 1
    derive_columns(df)
    if run_dir is not None:
        return apply_run_split(df, run_dir, data_dir)
    if (df["split"] == "").all():
        df["split"] = load_or_make_split(data_dir, df)
    return df


INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u2028-\u202e\u2060-\u2064\ufeff]")


def clean_text(text):
    """Unicode NFC (the same Hangul typed on a Mac, NFD, and elsewhere, NFC, is one answer), invisible characters
    (zero-width spaces, BOMs, direction marks) removed and white space collapsed. Case is kept: English answers of
    this data family are lower case already, and upper case can be meaningful (DNA, UN)."""
    return " ".join(INVISIBLE.sub("", unicodedata.normalize("NFC", text)).split())


def normalize_text(column):
    return column.map(clean_text)


# A triple cell holds head|relation|tail, several joined by ';' (a two-hop chain, say); a '|', ';' or '\' inside a
# part is escaped with a backslash (BOK-VQA has a tail "Written transliteration:180px|center").
TRIPLE_PARTS, TRIPLE_SEPARATOR, ESCAPE = "|", ";", "\\"


def parse_triples(text):
    """[(head, relation, tail), ...] of a triple cell ('' gives []); raises ValueError for a malformed one."""
    triples, parts, part, chars = [], [], [], iter(text)
    for char in chars:
        if char == ESCAPE:
            escaped = next(chars, None)
            if escaped is None:
                raise ValueError(f"it ends in a lone {ESCAPE}, which escapes the next character (write "
                                 f"{ESCAPE * 2} for the character itself)")
            part.append(escaped)
        elif char in (TRIPLE_PARTS, TRIPLE_SEPARATOR):
            parts.append("".join(part).strip())
            part = []
            if char == TRIPLE_SEPARATOR:
                triples.append(parts)
                parts = []
        else:
            part.append(char)
    parts.append("".join(part).strip())
    triples.append(parts)
    triples = [t for t in triples if t != [""]]  # an empty cell, a trailing ';'
    for t in triples:
        if len(t) != 3 or not all(t):
            raise ValueError(f"{TRIPLE_PARTS.join(t)!r} is not head|relation|tail")
    return [tuple(t) for t in triples]


def format_triples(triples):
    """The triple cell of [(head, relation, tail), ...]: parse_triples' inverse."""
    def escape(part):
        return "".join(ESCAPE + c if c in (TRIPLE_PARTS, TRIPLE_SEPARATOR, ESCAPE) else c for c in part.strip())
    return TRIPLE_SEPARATOR.join(TRIPLE_PARTS.join(map(escape, t)) for t in triples)


def derive_columns(df):
    """Fills category (triple, abstract or vqa) and, where it is empty, question_type (B with knowledge, else A)."""
    df["category"] = np.where(df["triple"] != "", "triple", np.where(df["abstract"] != "", "abstract", "vqa"))
    df["question_type"] = np.where(df["question_type"] != "", df["question_type"],
                                   np.where(df["category"] == "vqa", "A", "B"))
    return df


def row_numbers(rows, limit=10):
    """'row 7' or 'rows 3, 9, ... and 12 more'."""
    rows = list(rows)
    text = ", ".join(map(str, rows[:limit])) + (f" and {len(rows) - limit} more" if len(rows) > limit else "")
    return ("rows " if len(rows) > 1 else "row ") + text


def validate(df, data_dir, skip_bad=False, progress=True, image_dir=None, source=None):
    """Checks every row: required fields, allowed values, duplicates and the image file.

    Returns (good rows, skipped rows with a problem column). Without skip_bad, any problem raises one DataError
    that lists them all, by row number, column and file. image_dir defaults to data_dir/image, source (the file
    named in messages) to data_dir/data.csv."""
    path = source or os.path.join(data_dir, "data.csv")
    image_dir = image_dir or os.path.join(data_dir, "image")
    problems = pd.Series("", index=df.index)

    def flag(mask, text):  # the first problem of a row is the one reported; text: one message or one per row
        mask = mask & (problems == "")
        problems[mask] = text[mask] if isinstance(text, pd.Series) else text

    df = df.assign(image=use_unicode_twins(df["image"], image_dir, path))
    flag(df["question"] == "", "column question is empty (or only white space and invisible characters)")
    flag(df["answer"] == "", "column answer is empty")
    flag(df["image"].str.strip() == "", "column image is empty (or only white space)")
    for column in ("question", "answer"):
        flag(df[column].map(is_placeholder), f"column {column} is " + df[column].map(repr) + ", a missing-value "
             "placeholder, not a value")
    flag(~df["image"].map(inside_image_dir), "column image is an absolute path or leaves the image folder ('..'); "
         "image paths are relative to the image folder")
    flag(~df["question_type"].isin(["A", "B"]), "column question_type is not A or B")
    flag(~df["fold"].str.fullmatch(r"[0-9]*"), "column fold is not a whole number (a BOK-VQA fold, 1 to 5)")
    flag(lang_problems(df), "column lang is " + df["lang"].map(repr) + ", not ko or en (--lang chooses rows by it; "
         "write ko or en, or leave it empty)")
    no_split = (df["split"] == "").all()  # read_data makes the seeded split for such data
    flag(~df["split"].isin(SPLITS) & ~no_split, f"column split is not one of {', '.join(SPLITS)}")
    flag(~df["triple"].map(well_formed_triples), "column triple is not head|relation|tail (several joined by ';')")
    placeholders = df["triple"].map(placeholder_part)
    flag(placeholders != "", "column triple has " + placeholders.map(repr) + ", a missing-value placeholder, as a "
         "head, relation or tail")
    keys = ["image", "question", "answer"]
    first_row = df.groupby(keys, sort=False)["row"].transform("first")
    flag(df.duplicated(keys), "duplicate of row " + first_row.astype(str))
    names = df.loc[problems == "", "image"].unique()  # never open a path that leaves the image folder
    checked = check_images(data_dir, names, progress=progress, image_dir=image_dir)
    faults = df["image"].map(lambda name: checked.get(name, ""))  # rows with other problems were not opened
    flag(faults != "", "column image: " + df["image"].map(lambda name: visible(os.path.join(image_dir, name))) + " "
         + faults)

    bad = problems != ""
    skipped = df[bad].assign(problem=problems[bad])
    if bad.any() and not skip_bad:
        lines = [f"  {row_numbers(group['row'])}: {kind}" for kind, group in skipped.groupby("problem", sort=False)]
        shown = lines[:30] + ([f"  ... and {len(lines) - 30} more kinds of problem"] if len(lines) > 30 else [])
        raise DataError(f"{path}: problems in {int(bad.sum())} of {len(df)} rows (row numbers as in a "
                        f"spreadsheet, the header is row 1):\n" + "\n".join(shown) +
                        "\nFix them, or run again with --skip_bad to leave those rows out (they are then listed "
                        "in skipped_rows.csv).")
    return df[~bad], skipped


LANGS = ("ko", "en")


def lang_problems(df):
    """Rows whose lang is neither empty nor one of LANGS: --lang would leave them out without a word."""
    return ~df["lang"].isin(("",) + LANGS)


def inside_image_dir(name):
    """Whether an image path stays inside the image folder: relative, no '..' out of it, no NUL."""
    return "\x00" not in name and not os.path.isabs(name) and not os.path.normpath(name).startswith("..") \
        and not re.match(r"^[A-Za-z]:[\\/]|^[\\/]", name)


# missing-value markers of spreadsheets and pandas (its default na_values) and a dash: never a real answer or entity
PLACEHOLDERS = {"nan", "-nan", "none", "null", "n/a", "na", "<na>", "#n/a", "#na", "#n/a n/a", "-"}


def is_placeholder(text):
    return text.strip().lower() in PLACEHOLDERS


def placeholder_part(cell):
    """The first head, relation or tail of a triple cell that is a missing-value placeholder ('' if none)."""
    try:
        return next((part for triple in parse_triples(cell) for part in triple if is_placeholder(part)), "")
    except ValueError:
        return ""  # a malformed cell is reported as such


def unicode_twin(image_dir, name):
    """The name's twin in the other Unicode form (NFC or NFD: a Mac writes file names in NFD) where only the twin
    is on disk; None where the name itself is there, or no twin is."""
    if not inside_image_dir(name) or os.path.lexists(os.path.join(image_dir, name)):
        return None
    twins = {unicodedata.normalize(form, name) for form in ("NFC", "NFD")} - {name}
    return next((twin for twin in twins if os.path.lexists(os.path.join(image_dir, twin))), None)


def use_unicode_twins(images, image_dir, source):
    """The image names, each one that is not on disk as written but in its other Unicode form replaced by the name
    on disk; says so. Paths are otherwise used exactly as written."""
    twins = {name: twin for name in images.unique() if (twin := unicode_twin(image_dir, name))}
    if not twins:
        return images
    name, twin = next(iter(twins.items()))
    print(f"note: {source}: {len(twins)} image name(s) are on disk in another Unicode form than written; the files "
          f"on disk are used (e.g. {visible(name)}: {name_difference(name, twin)})")
    return images.map(lambda n: twins.get(n, n))


def unicode_form(text):
    return next((form for form in ("NFC", "NFD") if unicodedata.is_normalized(form, text)), "mixed")


def code_points(text):
    return " ".join(f"U+{ord(c):04X} {unicodedata.name(c, '')}".strip() for c in text) or "nothing"


def name_difference(written, found):
    """How two names that look alike differ, for messages: their Unicode forms, or the code points that differ."""
    if unicodedata.normalize("NFC", written) == unicodedata.normalize("NFC", found):
        return f"the same letters in another Unicode form ({unicode_form(written)} as written, " \
               f"{unicode_form(found)} on disk)"
    if written.casefold() == found.casefold():
        return "the same letters in another case"
    opcodes = difflib.SequenceMatcher(None, written, found, autojunk=False).get_opcodes()
    return "; ".join(f"{code_points(written[i1:i2])} at character {i1 + 1} as written, "
                     f"{code_points(found[j1:j2])} on disk"
                     for tag, i1, i2, j1, j2 in opcodes if tag != "equal")


def lookalike(image_dir, name, listings):
    """'; the folder holds NAME, ...' for a missing image whose name differs from a file's beside it only in white
    space, invisible characters, Unicode form or case, with how they differ; '' when there is none. listings:
    {folder: {key: names}} of the folders read so far."""
    def key(text):
        return "".join(clean_text(text).split()).casefold()

    folder = os.path.join(image_dir, os.path.dirname(name))
    if folder not in listings:
        listings[folder] = {}
        for entry in os.listdir(folder) if os.path.isdir(folder) else []:
            listings[folder].setdefault(key(entry), []).append(entry)
    base = os.path.basename(name)
    found = listings[folder].get(key(base), [])
    return f"; the folder holds {visible(found[0])}, which differs from it: {name_difference(base, found[0])}" \
        if found else ""


def visible(name):
    """A name as it can be told apart in a message: quoted, with escapes, where it holds white space other than
    single spaces, invisible characters or decomposed (NFD) letters."""
    return repr(name) if clean_text(name) != name or not name.isprintable() else name


def well_formed_triples(text):
    try:
        parse_triples(text)
        return True
    except ValueError:
        return False


def say_lookalike_answers(answers, source):
    """Notes the answers that stay apart but look alike (the same under Unicode NFKC: a full-width '３' and '3'), as
    the Unicode twins that reading merges are noted."""
    names = pd.Series(answers.unique())
    alike = [list(group) for _, group in names.groupby(names.map(lambda a: unicodedata.normalize("NFKC", a)))
             if len(group) > 1]
    if alike:
        print(f"note: {source}: {len(alike)} group(s) of answers look alike but differ in Unicode compatibility form "
              f"(full-width letters and digits, ligatures), and stay apart as answers: e.g. "
              f"{' / '.join(map(repr, alike[0]))}; write them alike where they are one answer")


def load_data(data_dir, skip_bad=False, progress=True, run_dir=None):
    """read_data + validate: (good rows, skipped rows); says how many rows were skipped and which. run_dir: a run
    whose split is used (read_data)."""
    df = read_data(data_dir, run_dir)
    if df.attrs["normalized_rows"] and progress:
        print(f"{data_dir}/data.csv: normalised the text of {df.attrs['normalized_rows']} rows (Unicode NFC, "
              f"invisible characters, white space); answers that differed only so are now one answer")
    df, skipped = validate(df, data_dir, skip_bad, progress)
    if progress:
        say_lookalike_answers(df["answer"], f"{data_dir}/data.csv")
    if len(skipped) and progress:
        print(f"--skip_bad: skipped {len(skipped)} of {len(df) + len(skipped)} rows of {data_dir}/data.csv:")
        for row, problem in skipped[["row", "problem"]].head(20).itertuples(index=False):
            print(f"  row {row}: {problem}")
        if len(skipped) > 20:
            print(f"  ... and {len(skipped) - 20} more (all in skipped_rows.csv)")
    return df, skipped


IMAGE_CHECK = "image_check_v2.json"  # v2: images are decoded, not only their header and tail read


def check_images(data_dir, names, progress=True, num_workers=16, image_dir=None):
    """{name: problem} for image files that are missing, unreadable, empty, truncated, corrupt or of a kind with no
    RGB picture ('' when fine). Decoded in parallel threads (JPEGs at reduced size); results are cached in
    cache_dir(data_dir)/image_check_v2.json by file size and modification time, so unchanged files are not read
    again."""
    from concurrent.futures import ThreadPoolExecutor

    from tqdm import tqdm

    image_dir = image_dir or os.path.join(data_dir, "image")
    result, todo, listings = {}, [], {}
    cache = None
    for name in names:
        try:
            stat = os.stat(os.path.join(image_dir, name))
        except FileNotFoundError:
            result[name] = "does not exist" + lookalike(image_dir, name, listings)
            continue
        except OSError as e:
            result[name] = f"cannot be read ({e.strerror})"
            continue
        if cache is None:
            cache_path = os.path.join(cache_dir(data_dir), IMAGE_CHECK)
            try:
                with open(cache_path, encoding="utf-8") as f:
                    cache = json.load(f)
            except (OSError, ValueError):
                cache = {}
        stamp = [stat.st_size, stat.st_mtime_ns]
        if name in cache and cache[name][:2] == stamp:
            result[name] = cache[name][2]
        else:
            todo.append((name, stamp))
    if todo:
        with ThreadPoolExecutor(num_workers) as pool:
            found = list(tqdm(pool.map(lambda item: check_image(os.path.join(image_dir, item[0])), todo),
                              total=len(todo), desc="checking images", disable=not progress, dynamic_ncols=True))
        for (name, stamp), problem in zip(todo, found):
            result[name] = problem
            cache[name] = stamp + [problem]
        util.atomic_write(cache_path, json.dumps(cache).encode("utf-8"))
    return result


def select_rows(df, split=None, train_data="all", infer_data="all", lang="bi"):
    """Rows of one split, question type (A|B|all), category (vqa|triple|abstract|all) and language."""
    keep = np.ones(len(df), dtype=bool)
    if split is not None:
        keep &= df["split"].values == split
    if train_data != "all":
        keep &= df["question_type"].values == train_data
    if infer_data != "all":
        keep &= df["category"].values == infer_data
    if lang not in ("bi", "all"):  # "all": what runs saved before --lang became ko|en|bi
        keep &= df["lang"].values == lang
    return df[keep].reset_index(drop=True)


def build_answer_vocab(train_df):
    """Answers sorted by frequency (ties by name), so index 0 is the most frequent answer."""
    counts = train_df["answer"].value_counts()
    return sorted(counts.index, key=lambda a: (-counts[a], a))


def encode_questions(tokenizer, questions, max_token, texts=None):
    """Token ids per question; with texts (a knowledge text per question, '' for none), each question paired with
    its text, the text truncated first so that the question stays whole (alone where it leaves no room)."""
    questions = list(questions)
    encoded = tokenizer(questions, truncation=True, max_length=max_token)["input_ids"]
    if texts is None:
        return encoded
    room = max_token - tokenizer.num_special_tokens_to_add(pair=True)
    lengths = [len(ids) for ids in tokenizer(questions, add_special_tokens=False)["input_ids"]]
    paired = [i for i, (text, n) in enumerate(zip(texts, lengths)) if text and n < room]
    if paired:
        pairs = tokenizer([questions[i] for i in paired], [texts[i] for i in paired], truncation="only_second",
                          max_length=max_token)["input_ids"]
        for i, ids in zip(paired, pairs):
            encoded[i] = ids
    return encoded


class VQADataset(Dataset):
    """Rows of questions tokenized up front (encoded: token ids per row), their images from an ImageCache or
    ImageFiles, their answers' ids (-1 for an answer outside the vocabulary) and the per-row targets a model reads
    (targets: {name: tensor [N, ...]}, the model's targets())."""

    def __init__(self, df, images, encoded, answer_to_id, pad_id, targets=None):
        self.df = df.reset_index(drop=True)
        self.images = images
        self.image_rows = np.array([images.row[name] for name in self.df["image"]], dtype=np.int64)
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded]
        self.labels = torch.tensor([answer_to_id.get(a, -1) for a in self.df["answer"]], dtype=torch.long)
        self.answers = list(answer_to_id)  # in id order
        self.pad_id = pad_id
        self.targets = targets or {}

    def unseen(self):
        """Rows whose triples hold a head, relation or tail outside the knowledge vocabulary."""
        return int((self.targets["triples"] == -1).any(-1).any(-1).sum()) if "triples" in self.targets else 0

    def __len__(self):
        return len(self.df)

    def __getitem__(self, i):
        image = torch.from_numpy(self.images.get(self.image_rows[i]))
        return self.input_ids[i], image, self.labels[i], i, {name: t[i] for name, t in self.targets.items()}


def collate(batch, pad_id):
    """Pads each batch to its own longest question."""
    ids, images, labels, index, targets = zip(*batch)
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(), "image": torch.stack(images),
            "label": torch.stack(labels), "index": torch.tensor(index),
            **{name: torch.stack([t[name] for t in targets]) for name in targets[0]}}


def run_data_dir(config, data_dir=None):
    """The data folder a run is evaluated on: data_dir (--data_dir), else the run's own as main.py was given it; a
    run's folder that is not here is a DataError saying to give --data_dir."""
    if data_dir is not None:
        return data_dir
    saved = config["data_dir"]
    if not os.path.isdir(saved):
        where = " (relative to the folder main.py ran in)" if not os.path.isabs(saved) else ""
        raise DataError(f"the run's data folder {saved}{where} is not found from {os.getcwd()}: give the folder that "
                        f"holds its data.csv and image/ with --data_dir.")
    return saved


def read_test_split(config, run_dir, data_dir=None):
    """(data_dir, the test rows of a run's split for its train_data and lang) from the run's data or data_dir, with
    image names as they are on disk (use_unicode_twins)."""
    data_dir = run_data_dir(config, data_dir)
    test = select_rows(read_data(data_dir, run_dir), "test", config["train_data"], lang=config.get("lang", "bi"))
    names = use_unicode_twins(test["image"], os.path.join(data_dir, "image"), os.path.join(data_dir, "data.csv"))
    return data_dir, test.assign(image=names)
