"""The train/valid/test split: made once per data set by image (every question of an image, and every language
version of a question, in one split), kept in split.csv and extended, never reshuffled; a run's own split."""
import os
import unicodedata
import warnings

import numpy as np
import pandas as pd

import images
import util
from images import cache_dir
from util import DataError


SPLIT_FILE = "split.csv"  # written next to data.csv when the data has no split column


SPLIT_FOLDS = 10  # test one fold, valid one, train the other eight: 8:1:1


def count_values(values):
    """{value: count}, most frequent first, with plain ints, so that a message prints {'train': 10240} rather than
    numpy's {'train': np.int64(10240)}."""
    return {key: int(n) for key, n in pd.Series(values).value_counts().items()}


def make_split(df, seed=0, n_folds=SPLIT_FOLDS):
    """Seeded train/valid/test labels (8:1:1) by image: every question of one image lands in one split, so no test
    image is seen in training, and with them every language version of a question (they share its image).
    Stratified by answer as far as the groups allow (scikit-learn's StratifiedGroupKFold; answers seen fewer than 10
    times share one stratum); with fewer images than folds, a seeded shuffle of the images."""
    from sklearn.model_selection import StratifiedGroupKFold

    groups = df["image"].values
    counts = df["answer"].map(df["answer"].value_counts())
    strata = df["answer"].where(counts >= 10, "__rare__").values
    if 0 < (strata == "__rare__").sum() < 10 and (strata != "__rare__").any():  # too few to be a stratum
        strata = np.where(strata == "__rare__", pd.Series(strata[strata != "__rare__"]).mode()[0], strata)
    fold = np.zeros(len(df), dtype=int)
    if pd.unique(groups).size >= n_folds:
        # "the least populated class has fewer members than n_splits": as far as groups allow
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            folds = StratifiedGroupKFold(n_folds, shuffle=True, random_state=seed).split(groups, strata, groups)
            for k, (_, held_out) in enumerate(folds):
                fold[held_out] = k
    else:
        images = np.random.default_rng(seed).permutation(pd.unique(groups))
        fold = pd.Series(groups).map({name: k % n_folds for k, name in enumerate(images)}).values
    return np.where(fold == 0, "test", np.where(fold == 1, "valid", "train")).astype(object)


def split_table(df):
    """What a split.csv holds: each row's image, question and split."""
    return df[["image", "question", "split"]]


def nfc_images(df):
    """The image column in NFC, for matching rows: a Mac's NFD name and its NFC twin are one file."""
    return df["image"].map(lambda name: unicodedata.normalize("NFC", name)).values


def split_keys(df):
    """Keys that match a saved split's rows to data.csv's: the image (nfc_images), the question, and which repeat of
    that pair the row is, so that repeated pairs match one to one."""
    images = nfc_images(df)
    repeats = df.groupby([images, df["question"].values]).cumcount().values
    return list(zip(images, df["question"].values, repeats))


def match_split(df, saved):
    """(each row's label in a saved split, '' for the rows it does not hold; the labels of its rows df lacks)."""
    labels = dict(zip(split_keys(saved), saved["split"]))
    keys = split_keys(df)
    return np.array([labels.get(k, "") for k in keys], dtype=object), [labels[k] for k in labels.keys() - set(keys)]


def load_or_make_split(data_dir, df):
    """The data's split, from data_dir/split.csv (or, for a read-only data folder, the one in its cache_dir), so that
    every script and run sees one test set. It is made once and never changed after: rows added to data.csv later
    are added to it (extend_split), and each of its rows keeps its label. A split.csv this repo did not write is
    not changed at all."""
    folder = data_dir
    if not os.path.isfile(os.path.join(data_dir, SPLIT_FILE)) and not images.writable(data_dir):
        folder = cache_dir(data_dir)
    path = os.path.join(folder, SPLIT_FILE)
    if os.path.isfile(path):
        split, gone = match_split(df, pd.read_csv(path, dtype=str, keep_default_na=False))
        if (split != "").all() and not gone:
            return split
    outputs = util.OutputFolder(folder, option="--data_dir")
    if not os.path.isfile(path):
        split = make_split(df)
        print(f"made a seeded split by image {count_values(split)} and wrote it to {path}")
    elif outputs.ours(SPLIT_FILE):
        split = extend_split(df, split, gone, path)
    else:
        raise DataError(f"{path} does not match {data_dir}/data.csv ({(split == '').sum()} rows are not in it, "
                        f"{len(gone)} of its rows are not in data.csv), and it was not written by this repo (or was "
                        f"edited since), so it is not changed: add those rows to it, give data.csv a split column, "
                        f"or move it away to make a new split.")
    outputs.write(SPLIT_FILE, util.csv_bytes(split_table(df.assign(split=split))))
    return split


def extend_split(df, split, gone, path):
    """A saved split with the rows it lacks ('') added: rows on an image it holds join that image's split, the rows
    of new images get a seeded split by image; says what was added."""
    new = split == ""
    images = nfc_images(df)
    image_split = pd.Series(split[~new], index=images[~new]).groupby(level=0).first()
    split = np.where(new, pd.Series(images).map(image_split).fillna("").values, split).astype(object)
    fresh = split == ""
    if fresh.any():
        split[fresh] = make_split(df[fresh].reset_index(drop=True))
    print(f"{path}: {new.sum()} rows of data.csv are new since the split was made; {new.sum() - fresh.sum()} of them, "
          f"on images it holds, join their image's split, and {fresh.sum()} on new images are split by image "
          f"{count_values(split[fresh])}; {len(gone)} of its rows are no longer in data.csv. "
          f"Every other row keeps its split.")
    return split


def report_shared_images(data, where=lambda row: f"data.csv row {row['row']}"):
    """Says how many valid and test images are training images too (with other questions): no question is seen in
    training, but the held-out score includes images that are (a split of the user's may mean it). where: how a
    row is named in the message."""
    train_images = set(data.loc[data["split"] == "train", "image"])
    for split in ("valid", "test"):
        rows = data[(data["split"] == split) & data["image"].isin(train_images)]
        if len(rows):
            print(f"warning: {rows['image'].nunique()} {split} images ({len(rows)} {split} rows) are training images "
                  f"too, with other questions (e.g. {rows['image'].iloc[0]}, {where(rows.iloc[0])}): the {split} "
                  f"score includes images seen in training. Give all the rows of an image one split to keep them "
                  f"apart.")


def with_valid_fold(df, fold, source, progress=True):
    """df with its train and valid rows of fold `fold` (the fold column, BOK-VQA's) as the valid split and its other
    train and valid rows with a fold as train (--valid_fold); test rows and rows without a fold keep theirs."""
    folds = df["fold"]
    if not (folds == str(fold)).any():
        found = sorted(set(folds) - {""})
        raise DataError(f"--valid_fold {fold}: no row of {source} is in fold {fold}; "
                        + (f"its folds are {', '.join(found)}." if found else
                           "it has no fold column (BOK-VQA's training files have one: import them with download.py "
                           "--from_csv)."))
    movable = df["split"].isin(["train", "valid"]).values & (folds != "").values
    df.loc[movable, "split"] = np.where(folds[movable] == str(fold), "valid", "train")
    if progress:
        print(f"--valid_fold {fold}: {int((folds[movable] == str(fold)).sum())} rows of fold {fold} are the valid "
              f"split, the {int((folds[movable] != str(fold)).sum())} train and valid rows of the other folds train")
    return df


def apply_run_split(df, run_dir, data_dir):
    """The rows of df that the run in run_dir holds in its split (run_dir/split.csv, saved when it started), each with
    the run's label: rows added to data.csv since are left out, and an edited split column or split.csv never moves
    a row; said. A run of an earlier version, which saved no split, gets the data's own."""
    path = os.path.join(run_dir, SPLIT_FILE)
    if not os.path.isfile(path):
        print(f"note: {run_dir} has no {SPLIT_FILE} (it was trained by an earlier version), so the data's own split "
              f"is used (its split column or split.csv): the run's, unless its rows changed since")
        if (df["split"] == "").all():
            df["split"] = load_or_make_split(data_dir, df)
        return df
    saved = pd.read_csv(path, dtype=str, keep_default_na=False)
    split, gone = match_split(df, saved)
    kept = split != ""
    if not kept.any():
        raise DataError(f"{data_dir}/data.csv holds none of the {len(saved)} rows {run_dir} was trained and evaluated "
                        f"on (its {SPLIT_FILE}): is it the run's data? (--data_dir)")
    moved = int((kept & (df["split"].values != "") & (df["split"].values != split)).sum())
    notes = []
    if not kept.all():
        notes.append(f"{(~kept).sum()} rows of data.csv are not in it (added since) and are left out")
    if gone:
        notes.append(f"{len(gone)} of its rows are no longer in data.csv {count_values(gone)}")
    if moved:
        notes.append(f"{moved} rows keep the run's split where data.csv's split column now says another")
    if notes:
        print(f"note: the split {run_dir} was trained with ({path}) is used: " + "; ".join(notes))
    return df[kept].assign(split=split[kept]).reset_index(drop=True)
