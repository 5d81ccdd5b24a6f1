"""Get the data into data/data.csv + data/image/.

    python download.py                        # the original image archive (Google Drive, 12.97 GB) into data/image/
    python download.py --zip PATH/image.zip   # unpack an archive downloaded by hand
    python download.py --sample [--lang en]   # the embedded synthetic sample into data/sample/ (offline, seconds)
    python download.py --from_csv BOKVQA_data_ko.csv [BOKVQA_data_en.csv] [--test_csv TEST.csv] --image_dir DIR
                                              # import a BOK-VQA, NIA-style or canonical CSV into data/

A file in the output folder that this repo did not write (a user's own, or one edited since) is never replaced:
the script stops and names it; --force replaces it.
"""
import argparse
import ast
import os
import re
import shutil
import socket
import stat
import sys
import tempfile
import unicodedata
import zipfile
import zlib
from pathlib import PurePosixPath

import numpy as np
import pandas as pd

import util
from splits import count_values, make_split, report_shared_images
from vqa_dataset import (OPTIONAL_COLUMNS, REQUIRED_COLUMNS, SOURCE_FILE, TEXT_COLUMNS, DataError, derive_columns,
                         format_triples, normalize_text, read_csv, validate)

GDRIVE_FILE_ID = "1E4JBTFGuGiGVjjcBDU9091Ahg480StjT"
ARCHIVE_BYTES = 12.97e9  # as the original README gives it; no checksum was published
UNPACKED_MARKER = ".unpacked"
MANUAL_INSTRUCTIONS = f"""
이미지를 자동으로 받을 수 없습니다. g-drive에서 `image.zip` 파일을 직접 다운로드 하셔야 합니다 (12.97GB):
  https://drive.google.com/file/d/{GDRIVE_FILE_ID}/view?usp=sharing
받은 뒤 `python download.py --zip 경로/image.zip` 로 `data/image/` 에 풀거나,
`image` 디렉토리를 `VQA_NIA/data/` 아래에 두세요.

The images could not be downloaded automatically. Download `image.zip` (12.97 GB) by hand from the link above,
then run `python download.py --zip PATH/image.zip` to unpack it into data/image/ (or put the `image`
directory under data/ yourself).
"""

# The CSV formats the importer knows: the columns that identify each, and the ones it also reads when present.
FORMATS = {
    "canonical": (REQUIRED_COLUMNS, OPTIONAL_COLUMNS),
    "BOK-VQA": (["img_name", "question", "h", "r", "t", "answer"], ["fold"]),  # test files have no fold
    "NIA": (["img_path", "question", "answer"], ["main_obj", "Triple", "Abstract", "subject", "relation", "object"]),
}
IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff")
LEGACY_LINKS = ".imported_links"  # in <out>/image: the links that importers before util.WRITTEN_FILE made


# ---------------------------------------------------------------- the original archive

def drive_reachable(timeout=3.0):
    try:
        socket.create_connection(("drive.google.com", 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def check_free_space(directory, needed_bytes):
    """Free space on the file system that directory is (or will be) on."""
    existing = os.path.abspath(directory)
    while not os.path.isdir(existing):
        existing = os.path.dirname(existing)
    free = shutil.disk_usage(existing).free
    if free < needed_bytes:
        raise DataError(f"{existing} (for {directory}) has {free / 1e9:.1f} GB free but {needed_bytes / 1e9:.1f} GB "
                        f"are needed (the archive and its unpacked images). Free some space or use --data_dir.")


def unsafe_entries(archive):
    """Entries that could write outside the target directory: absolute paths, '..' components, links."""
    bad = []
    for info in archive.infolist():
        name = info.filename.replace("\\", "/")
        if name.startswith("/") or (len(name) > 1 and name[1] == ":"):
            bad.append(f"{info.filename} (absolute path)")
        elif ".." in PurePosixPath(name).parts:
            bad.append(f"{info.filename} ('..' in the path)")
        elif stat.S_ISLNK(info.external_attr >> 16):
            bad.append(f"{info.filename} (a link)")
    return bad


def unpack(zip_path, data_dir, force=False):
    """Unpacks an image archive into data_dir/image/. Refused whole if any entry is unsafe, if it holds no images, or
    if it would replace a file this repo did not write (unless force); unpacked into a staging folder first, so that
    a damaged entry (CRC) leaves nothing half-written."""
    image_dir = os.path.join(data_dir, "image")
    try:
        archive = zipfile.ZipFile(zip_path)
    except (OSError, zipfile.BadZipFile) as e:
        raise DataError(f"{zip_path} is not a readable zip archive ({e}); download it again.") from None
    with archive:
        bad = unsafe_entries(archive)
        if bad:
            raise DataError(f"{zip_path}: refused, nothing was unpacked; {len(bad)} entries could write outside "
                            f"{data_dir}/: " + ", ".join(bad[:10]) + (" ..." if len(bad) > 10 else ""))
        layout = archive_layout(archive, zip_path)
        outputs = util.OutputFolder(data_dir, force, "--data_dir")
        outputs.check([path for _, path in layout] + [f"image/{UNPACKED_MARKER}"])
        check_free_space(data_dir, sum(m.file_size for m, _ in layout))
        replaced = sum(os.path.lexists(os.path.join(data_dir, path)) for _, path in layout)
        if replaced:
            print(f"{replaced} of the archive's {len(layout)} files are in {image_dir}/ already (written by this repo, "
                  f"or --force) and are replaced by the archive's")
        os.makedirs(data_dir, exist_ok=True)
        staging = tempfile.mkdtemp(prefix=".unpacking_", dir=data_dir)
        try:
            extract(archive, [m for m, _ in layout], staging, zip_path)
            for member, path in layout:
                os.makedirs(os.path.dirname(os.path.join(data_dir, path)), exist_ok=True)
                os.replace(os.path.join(staging, member.filename), os.path.join(data_dir, path))
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    outputs.record([path for _, path in layout])
    outputs.write(f"image/{UNPACKED_MARKER}", f"{os.path.basename(zip_path)} {len(layout)}\n".encode())
    print(f"unpacked {len(layout)} files into {image_dir}/")


# what macOS and Windows add to an archive: never images of the data
JUNK = re.compile(r"(^|/)(__MACOSX/|\.DS_Store$|\._[^/]*$|Thumbs\.db$|desktop\.ini$)", re.IGNORECASE)
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz", ".7z", ".rar")


def archive_layout(archive, zip_path):
    """[(entry, path under the data folder)] for the archive's files, and says which it leaves out: macOS and Windows
    junk, and entries outside its image folder. The image folder is the first folder named image above its images
    (image/, or VQA_NIA/data/image/ when the archive holds a whole checkout); an archive without one has its files
    put into image/ as they are. Names are unpacked in NFC (a Mac writes NFD), as this data's CSVs spell them."""
    files = [m for m in archive.infolist() if not m.is_dir()]
    junk = [m for m in files if JUNK.search(m.filename)]
    files = [m for m in files if not JUNK.search(m.filename)]
    if not files:
        raise DataError(f"{zip_path} holds no files" + (f" but {len(junk)} macOS/Windows junk entries" if junk else "")
                        + "; download it again.")
    images = [m for m in files if m.filename.lower().endswith(IMAGE_SUFFIXES)]
    if not images:
        inner = [m.filename for m in files if m.filename.lower().endswith(ARCHIVE_SUFFIXES)]
        raise DataError(f"{zip_path} holds {len(files)} files but no images ({', '.join(IMAGE_SUFFIXES)})" +
                        (f"; it holds the archive {inner[0]}: unpack that one instead (extract it, then "
                         f"`python download.py --zip` on it)." if inner else ": is it the image archive?"))
    roots = pd.Series([image_root(m.filename) for m in images]).value_counts()
    root = roots.index[0]  # the image folder of most images ('' when they sit in no folder named image)
    inside = [m for m in files if m.filename.startswith(root)]
    stray = [m.filename for m in files if not m.filename.startswith(root)]
    left_out = []
    if junk:
        left_out.append(f"{len(junk)} macOS/Windows junk (__MACOSX/, .DS_Store, ...)")
    if stray:
        left_out.append(f"{len(stray)} outside its image folder {root}: {', '.join(stray[:5])}"
                        f"{' ...' if len(stray) > 5 else ''}")
    if left_out:
        print(f"left out {len(junk) + len(stray)} of the archive's entries: " + "; ".join(left_out))
    layout = [(m, "image/" + unicodedata.normalize("NFC", m.filename[len(root):])) for m in inside]
    renamed = sum(m.filename[len(root):] != path[len("image/"):] for m, path in layout)
    if renamed:
        print(f"note: {renamed} of the archive's file names are in NFD (as a Mac writes them); unpacked in NFC, as "
              f"this data's CSVs spell them")
    paths = pd.Series([path for _, path in layout])
    if paths.duplicated().any():
        raise DataError(f"{zip_path}: entries {paths[paths.duplicated()].tolist()[:5]} are one name in NFC: rename "
                        f"one of each pair, nothing was unpacked.")
    return layout


def image_root(name):
    """The entry's folder up to its first folder named image ('VQA_NIA/data/image/'), or '' if it has none."""
    parts = name.split("/")[:-1]
    return "/".join(parts[:parts.index("image") + 1]) + "/" if "image" in parts else ""


def extract(archive, members, folder, zip_path):
    from tqdm import tqdm

    root = os.path.realpath(folder)
    for member in tqdm(members, desc=f"unpacking {os.path.basename(zip_path)}", dynamic_ncols=True):
        path = os.path.realpath(os.path.join(folder, member.filename))
        if os.path.commonpath([root, path]) != root:  # belt and braces after unsafe_entries
            raise DataError(f"{zip_path}: entry {member.filename} would be written outside {folder}")
        try:
            archive.extract(member, folder)
        except (zipfile.BadZipFile, zlib.error, EOFError) as e:  # CRC mismatch, damaged data
            raise DataError(f"{zip_path}: entry {member.filename} is damaged ({e}); nothing was unpacked. "
                            f"Download the archive again.") from None


def download_images(data_dir, force=False):
    image_dir = os.path.join(data_dir, "image")
    if os.path.isfile(os.path.join(image_dir, UNPACKED_MARKER)):
        print(f"{image_dir}/ already holds the unpacked archive; nothing to do.")
        return
    os.makedirs(data_dir, exist_ok=True)
    zip_path = os.path.join(data_dir, "image.zip")
    if not (os.path.isfile(zip_path) and os.path.getsize(zip_path) >= 0.99 * ARCHIVE_BYTES):
        if not drive_reachable():
            sys.exit("error: Google Drive cannot be reached (offline?)." + MANUAL_INSTRUCTIONS)
        partial = os.path.getsize(zip_path) if os.path.isfile(zip_path) else 0
        check_free_space(data_dir, 2 * ARCHIVE_BYTES - partial)
        import gdown

        try:  # resume=True continues a partial image.zip
            gdown.download(id=GDRIVE_FILE_ID, output=zip_path, quiet=False, resume=True)
        except Exception as e:  # gdown raises on the Drive quota page ("Too many users have viewed or downloaded")
            sys.exit(f"error: the download failed: {e}" + MANUAL_INSTRUCTIONS)
    size = os.path.getsize(zip_path)
    if abs(size - ARCHIVE_BYTES) > 0.01 * ARCHIVE_BYTES:
        sys.exit(f"error: {zip_path} has {size / 1e9:.2f} GB, not the expected {ARCHIVE_BYTES / 1e9:.2f} GB; "
                 f"delete it and run again, or download it by hand." + MANUAL_INSTRUCTIONS)
    unpack(zip_path, data_dir, force)


# ---------------------------------------------------------------- importing CSVs

def detect_format(columns, path):
    present = set(columns)
    for name, (required, _) in FORMATS.items():
        if set(required) <= present:
            return name
    known = "\n".join(f"  {name}: {', '.join(required)} (also read: {', '.join(optional)})"
                      for name, (required, optional) in FORMATS.items())
    raise DataError(f"{path}: unknown CSV format; its header is {list(columns)}. Known formats and their "
                    f"columns:\n{known}")


def language(questions):
    """'ko' when most questions contain Hangul, else 'en'."""
    return "ko" if questions.str.contains("[가-힣]").mean() > 0.5 else "en"


def nia_triple(text):
    """A NIA export's Triple cell as the canonical triple cell (head|relation|tail, several joined by ';'): a
    Python-list string of one triple or of several, or several lists joined by '=' (a two-hop chain,
    "['나비', '강', '곤충']=['나비', '계', '동물']"). Read as literals, never run."""
    text = text.strip()
    if text in ("", "[]", "nan"):
        return ""
    value = ast.literal_eval("[" + re.sub(r"\]\s*=\s*\[", "], [", text) + "]")  # literals only: never runs code
    triples = []
    for item in value:
        items = [item] if item and all(isinstance(v, str) for v in item) else list(item)
        triples += items
    if not all(isinstance(t, (list, tuple)) and len(t) == 3 and all(str(p).strip() for p in t) for t in triples):
        raise ValueError("not a list of [head, relation, tail]")
    return format_triples([tuple(str(p).strip() for p in t) for t in triples])


def bok_rows(raw, out, valid_fold=1):
    """Fills out's columns from a BOK-VQA file (img_name, question, h, r, t, answer[, fold]); returns row problems.
    Its fold (1-5) is kept, and the rows of valid_fold are the valid split (BOK-VQA's: fold 1), the others train."""
    out["image"] = raw["img_name"].values
    out["question"], out["answer"] = raw["question"].values, raw["answer"].values
    out["question_type"] = "B"
    out["triple"] = [format_triples([hrt]) for hrt in zip(raw["h"], raw["r"], raw["t"])]
    out["abstract"] = ""
    if "fold" not in raw.columns:  # a test file, or a train file to be split by image
        out["split"] = ""
        return []
    fold = pd.to_numeric(raw["fold"], errors="coerce")
    whole = fold.notna() & (fold == fold.round())
    out["fold"] = np.where(whole, fold.fillna(0).astype(int).astype(str), "")
    out["split"] = np.where(fold.values == valid_fold, "valid", "train")
    return [(r, "column fold is not a whole number (BOK-VQA's folds are 1 to 5)") for r in out["row"][~whole.values]]


def nia_triples(raw, rows):
    """The canonical triple cell of each row of a NIA export, from Triple or else subject, relation, object."""
    blank = pd.Series("", index=raw.index)
    triples, problems = [], []
    for row, cell, parts in zip(rows, raw.get("Triple", blank),
                                zip(*(raw.get(c, blank) for c in ("subject", "relation", "object")))):
        try:
            triple = nia_triple(cell)
        except (ValueError, SyntaxError, TypeError) as e:
            triple = ""
            problems.append((row, f"column Triple is not a Python list of [head, relation, tail] ({e})"))
        if not triple and all(p.strip() for p in parts):  # a Triple-less export of subject, relation, object
            triple = format_triples([tuple(p.strip() for p in parts)])
        triples.append(triple)
    return triples, problems


def nia_rows(raw, out):
    """Fills out's columns from a NIA export (img_path, question, answer, Triple and variants); returns row
    problems. Paths of another machine are rebased by file name, so two different files with one name are
    ambiguous."""
    out["image"] = [os.path.basename(p.replace("\\", "/")) for p in raw["img_path"]]
    out["question"], out["answer"] = raw["question"].values, raw["answer"].values
    out["triple"], problems = nia_triples(raw, out["row"])
    out["abstract"] = raw["Abstract"].str.strip().values if "Abstract" in raw.columns else ""
    out["question_type"] = np.where((out["triple"] != "") | (out["abstract"] != ""), "B", "A")
    out["split"] = ""
    names = pd.DataFrame({"name": out["image"], "full": raw["img_path"].values}).drop_duplicates()
    clash = set(names[names["name"].duplicated(keep=False)]["name"])
    return problems + [(r, f"column img_path: another row has a different file named {n}")
                       for r, n in zip(out["row"], out["image"]) if n in clash]


def canonical_rows(raw, out):
    """Copies the columns of a file already in this repo's format; it has no conversion faults."""
    for column in REQUIRED_COLUMNS + OPTIONAL_COLUMNS:
        out[column] = raw[column].values if column in raw.columns else ""
    return []


ROW_READERS = {"BOK-VQA": bok_rows, "NIA": nia_rows, "canonical": canonical_rows}


def convert(path, split=None, valid_fold=1):
    """One CSV as canonical rows, plus the source file and row of each; conversion faults raise DataError."""
    raw = read_csv(path)
    kind = detect_format(raw.columns, path)
    out = pd.DataFrame({"row": np.arange(2, len(raw) + 2)})
    problems = bok_rows(raw, out, valid_fold) if kind == "BOK-VQA" else ROW_READERS[kind](raw, out)
    if problems:
        lines = "\n".join(f"  row {r}: {text}" for r, text in problems[:30])
        more = f"\n  ... and {len(problems) - 30} more" if len(problems) > 30 else ""
        raise DataError(f"{path} ({kind}): {len(problems)} rows cannot be converted (header is row 1):\n{lines}{more}")
    out["image"] = out["image"].fillna("").astype(str)  # a path: used exactly as written
    for column in TEXT_COLUMNS:
        out[column] = normalize_text(out[column].fillna("").astype(str)) if column in out else ""
    if kind == "BOK-VQA" and "fold" in raw.columns and not (out["fold"] == str(valid_fold)).any():
        print(f"warning: {path} has no row of fold {valid_fold} (--valid_fold), so none of its rows is a valid row; "
              f"its folds are {sorted(set(out['fold']) - {''})}")
    derive_columns(out)
    if split is not None:
        out["split"] = split
    out["lang"] = language(out["question"]) if kind != "canonical" or (out["lang"] == "").all() else out["lang"]
    out["source"], out["format"] = path, kind
    print(f"{path}: {kind} format, {len(out)} rows, language {out['lang'].iloc[0] if len(out) else '-'}")
    return out


def link_images(names, image_dir, outputs):
    """Makes each image available under the output folder's image/ as a link into image_dir (nothing to do if they
    are one). Only files this repo wrote there, such as the links of an earlier import, are ever replaced
    (util.OutputFolder): a user's file there is an error."""
    out_image_dir = os.path.join(outputs.folder, "image")
    os.makedirs(out_image_dir, exist_ok=True)
    if os.path.samefile(image_dir, out_image_dir):
        return
    adopt_legacy_links(outputs)
    links = {name: (os.path.abspath(os.path.join(image_dir, name)), os.path.join(out_image_dir, name))
             for name in names}
    todo = [name for name, (target, link) in links.items()
            if not (os.path.islink(link) and os.readlink(link) == target)]
    outputs.check(["image/" + name for name in todo])
    for name in todo:
        target, link = links[name]
        if os.path.lexists(link):
            os.remove(link)  # a link of an earlier import (to where the images were then), or a file under --force
        os.makedirs(os.path.dirname(link), exist_ok=True)
        os.symlink(target, link)
    outputs.record(["image/" + name for name in todo])


def adopt_legacy_links(outputs):
    """The links that importers of earlier versions listed in image/.imported_links are this repo's too."""
    path = os.path.join(outputs.folder, "image", LEGACY_LINKS)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            names = ["image/" + name for name in f.read().splitlines()]
        outputs.record([n for n in names
                        if n not in outputs.written and os.path.islink(os.path.join(outputs.folder, n))])


def fill_missing_split(data):
    """Rows of files without a fold (next to files with one, or a test file) get a seeded split by image; when a
    test file is given, what the split would hold out for testing joins valid instead."""
    missing = (data["split"] == "").values
    if missing.all() or not missing.any():
        return data  # all or none: read_data makes the seeded split, or every row has its own
    split = make_split(data[missing].reset_index(drop=True))
    if (data["split"] == "test").any():
        split = np.where(split == "test", "valid", split)
    data.loc[missing, "split"] = split
    print(f"{int(missing.sum())} rows from files without a fold were split by image: "
          f"{count_values(split)}")
    return data


# how held out each split is: a question on an image in two splits is a fault of the less held-out copy
HELD_OUT = {"train": 0, "valid": 1, "test": 2}


def cross_file_faults(data):
    """Row faults across all the input files, one problem per row ('' for a good one): a question on an image in two
    splits (a held-out question seen in training: the copy in the less held-out split is the fault, so that the
    test set stays whole), and a row repeated in another file (the later copy; validate finds repeats in a file)."""
    key = ["image", "question"]
    ranked = data.assign(rank=data["split"].map(HELD_OUT).fillna(-1))  # '' is split by image later: never apart
    held = ranked.sort_values("rank", ascending=False, kind="stable").drop_duplicates(key)
    held = ranked[key + ["rank"]].merge(held[key + ["rank", "split", "source", "row"]], "left", key,
                                        suffixes=("", "_held"))
    leak = (held["rank"] < held["rank_held"]).values
    problems = np.where(leak, "the same image and question is in the " + held["split"] + " split too, " +
                        held["source"] + " row " + held["row"].astype(str) +
                        " (a held-out question seen in training)", "")
    copy = ["image", "question", "answer", "split"]
    first = data[copy].merge(data.drop_duplicates(copy)[copy + ["source", "row"]], "left", copy)
    repeat = (first["source"].values != data["source"].values) & ~leak
    problems = np.where(repeat, "duplicate of " + first["source"] + " row " + first["row"].astype(str), problems)
    return pd.Series(problems, index=data.index)


def leave_out_cross_file_faults(data, skip_bad):
    """(data without the rows cross_file_faults finds, those rows with their problem); without skip_bad, any is a
    DataError listing them by file and row."""
    problems = cross_file_faults(data)
    bad = (problems != "").values
    if bad.any() and not skip_bad:
        lines = [f"  {source} row {row}: {problem}" for source, row, problem in
                 zip(data["source"][bad], data["row"][bad], problems[bad])]
        leaks = int(problems[bad].str.contains("held-out").sum())
        raise DataError(f"{bad.sum()} rows across the input files are faults: {leaks} put a question on an image into "
                        f"two splits (a split leak), {bad.sum() - leaks} repeat a row of another file:\n"
                        + "\n".join(lines[:30]) + (f"\n  ... and {len(lines) - 30} more" if len(lines) > 30 else "")
                        + "\nFix the files, or run again with --skip_bad to leave those rows out (listed in "
                          "skipped_rows.csv).")
    return data[~bad], data[bad].assign(problem=problems[bad])


def import_csv(csv_paths, test_paths, image_dir, out_dir, skip_bad=False, force=False, valid_fold=1):
    """Writes out_dir/data.csv (canonical) and out_dir/image/ (links) from the given CSVs; returns the row count.
    Never replaces a file in out_dir that this repo did not write, unless force. valid_fold: the fold of BOK-VQA's
    training files that is the valid split."""
    if not os.path.isdir(image_dir):
        raise DataError(f"--image_dir {image_dir} is not a directory: give the directory that holds the images.")
    given = pd.Series([os.path.realpath(p) for p in csv_paths + test_paths])
    if given.duplicated().any():
        raise DataError(f"{given[given.duplicated()].iloc[0]} is given twice (--from_csv and --test_csv together): "
                        f"its rows would be imported twice; give each file once.")
    outputs = util.OutputFolder(out_dir, force).check(["data.csv", "skipped_rows.csv", SOURCE_FILE])
    parts = [convert(p, valid_fold=valid_fold) for p in csv_paths] + [convert(p, split="test") for p in test_paths]
    kept, skipped = [], []
    for part in parts:  # validated file by file, so that row numbers refer to that file
        good, bad = validate(part, out_dir, skip_bad, image_dir=image_dir, source=part["source"].iloc[0])
        kept.append(good)
        skipped.append(bad)
    data, across = leave_out_cross_file_faults(fill_missing_split(pd.concat(kept, ignore_index=True)), skip_bad)
    skipped = pd.concat(skipped + [across], ignore_index=True)
    if data.empty:
        raise DataError(f"every row of {', '.join(csv_paths + test_paths)} has a problem, so nothing was imported; "
                        f"run again without --skip_bad to see them.")
    report_shared_images(data, lambda row: f"{row['source']} row {row['row']}")
    os.makedirs(out_dir, exist_ok=True)
    try:
        link_images(data["image"].unique(), image_dir, outputs)
    except OSError as e:
        raise util.CheckpointError(f"cannot make the image links in {out_dir}/image: {e.strerror or e}. The links "
                                   f"made so far are of this import and are used or replaced when it runs again; "
                                   f"free space and run it again.") from None
    columns = REQUIRED_COLUMNS + OPTIONAL_COLUMNS
    if (data["split"] == "").all():
        columns.remove("split")  # read_data then makes the seeded split
    if (data["fold"] == "").all():
        columns.remove("fold")
    try:
        outputs.write("data.csv", util.csv_bytes(data[columns]))
        outputs.write(SOURCE_FILE, util.json_bytes({"formats": sorted(set(data["format"])),
                                                    "files": csv_paths + test_paths, "valid_fold": valid_fold}))
    except util.CheckpointError as e:
        raise util.CheckpointError(f"{e} The image links under {out_dir}/image were made; run the import again once "
                                   f"there is room (they are this import's, and kept or replaced).") from None
    if len(skipped):
        outputs.write("skipped_rows.csv", util.csv_bytes(skipped.rename(columns={"row": "source_row"})))
        print(f"--skip_bad: skipped {len(skipped)} row(s) with problems, listed in {out_dir}/skipped_rows.csv")
        for source, row, problem in skipped[["source", "row", "problem"]].head(20).itertuples(index=False):
            print(f"  {source} row {row}: {problem}")
    counts = count_values(data["split"].replace("", "(seeded split)"))
    print(f"wrote {len(data)} rows to {out_dir}/data.csv ({counts}; languages {count_values(data['lang'])}) "
          f"and {data['image'].nunique()} images to {out_dir}/image/")
    if "test" not in counts and (data["split"] != "").any():
        print("note: no --test_csv was given, so the data has no test split; inference.py --split valid evaluates "
              "on the validation rows.")
    return len(data)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data_dir", default="data", help="where data.csv and image/ live")
    p.add_argument("--zip", default=None, help="unpack an image archive downloaded by hand")
    p.add_argument("--sample", action="store_true", help="generate the synthetic sample data set")
    p.add_argument("--lang", default="ko", choices=["ko", "en"], help="sample: language of the questions")
    p.add_argument("--n_images", type=util.at_least(1), default=3200,
                   help="sample: number of images (4 questions each)")
    p.add_argument("--seed", type=int, default=0, help="sample: random seed")
    p.add_argument("--held_out_facts", action=argparse.BooleanOptionalAction, default=True,
                   help="sample: gem facts in the knowledge base that only test questions ask, with answers no "
                        "training answer is (--no-held_out_facts: the earlier sample, question for question)")
    p.add_argument("--from_csv", nargs="+", default=None,
                   help="import these CSVs (BOK-VQA, NIA-style or canonical; several for bilingual data)")
    p.add_argument("--test_csv", nargs="+", default=[], help="import: CSVs whose rows become the test split")
    p.add_argument("--image_dir", default=None, help="import: the directory that holds the images")
    p.add_argument("--valid_fold", type=int, choices=range(1, 6), default=1,
                   help="import: the fold (1-5) of BOK-VQA's training files that is the valid split (default 1, as "
                        "BOK-VQA; main.py --valid_fold chooses another per run); the fold column is kept")
    p.add_argument("--out", default=None,
                   help="output directory (import: default --data_dir; sample: data/sample or data/sample_en)")
    p.add_argument("--skip_bad", action="store_true",
                   help="import: leave out rows with problems instead of stopping; listed in skipped_rows.csv")
    p.add_argument("--force", action="store_true",
                   help="replace files in the output folder that this repo did not write (a user's own, or edited)")
    args = p.parse_args()
    try:
        if args.sample:
            import sample_data

            out = args.out or os.path.join(args.data_dir, "sample" if args.lang == "ko" else "sample_en")
            n = sample_data.generate(out, n_images=args.n_images, lang=args.lang, seed=args.seed, force=args.force,
                                     held_out_facts=args.held_out_facts)
            print(f"wrote {n} questions on {args.n_images} images to {out}/data.csv and {out}/image/")
        elif args.from_csv:
            if not args.image_dir:
                p.error("--from_csv needs --image_dir, the directory that holds the images")
            import_csv(args.from_csv, args.test_csv, args.image_dir, args.out or args.data_dir, args.skip_bad,
                       args.force, args.valid_fold)
        elif args.zip:
            unpack(args.zip, args.data_dir, args.force)
        else:
            download_images(args.data_dir, args.force)
    except (DataError, util.CheckpointError) as e:
        sys.exit(f"error: {e}")


if __name__ == "__main__":
    main()
