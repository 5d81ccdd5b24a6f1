"""Data: the canonical CSV format, the train/valid/test split, the answer vocabulary and the torch Dataset.

data_dir/data.csv columns: image (path under data_dir/image/), question, answer, and optionally
question_type (A|B), triple (head|relation|tail), abstract, split (train|valid|test), lang (ko|en).
"""
import hashlib
import os

import numpy as np
import pandas as pd
import torch
from PIL import Image
from torch.utils.data import Dataset

REQUIRED_COLUMNS = ["image", "question", "answer"]
OPTIONAL_COLUMNS = ["question_type", "triple", "abstract", "split", "lang"]
SPLITS = ("train", "valid", "test")
SPLIT_FILE = "split.csv"  # written next to data.csv when the data has no split column
SPLIT_FRACTIONS = (0.8, 0.1, 0.1)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class DataError(Exception):
    """Bad input data; the message names the file, rows and columns and says how to fix it."""


def read_data(data_dir):
    """Reads data_dir/data.csv into a DataFrame with every canonical column, split and category filled."""
    path = os.path.join(data_dir, "data.csv")
    if not os.path.isfile(path):
        raise DataError(f"{path} not found. Build the sample with `python download.py --sample` "
                        f"(then use --data_dir data/sample or --preset sample), or put your data.csv there.")
    df = pd.read_csv(path, dtype=str, keep_default_na=False, encoding="utf-8-sig")
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; found {list(df.columns)}. "
                        f"The canonical columns are {REQUIRED_COLUMNS} plus optional {OPTIONAL_COLUMNS}.")
    for column in OPTIONAL_COLUMNS:
        if column not in df.columns:
            df[column] = ""
    for column in ["question", "answer", "triple", "abstract", "question_type", "split", "lang"]:
        df[column] = df[column].str.strip()
    df["category"] = np.where(df["triple"] != "", "triple", np.where(df["abstract"] != "", "abstract", "vqa"))
    # Without an explicit type, a row that carries outside knowledge is type B.
    df["question_type"] = np.where(df["question_type"] != "", df["question_type"],
                                   np.where(df["category"] == "vqa", "A", "B"))
    bad_type = df.index[~df["question_type"].isin(["A", "B"])]
    if len(bad_type):
        raise DataError(f"{path}: column question_type must be A or B; rows {_rows(bad_type)} have "
                        f"{sorted(set(df.loc[bad_type, 'question_type']))}.")
    if (df["split"] == "").all():
        df["split"] = _load_or_make_split(data_dir, df)
    bad_split = df.index[~df["split"].isin(SPLITS)]
    if len(bad_split):
        raise DataError(f"{path}: column split must be one of {SPLITS}; rows {_rows(bad_split)} have "
                        f"{sorted(set(df.loc[bad_split, 'split']))}. Fill it for every row or drop the column.")
    return df


def _rows(index, limit=10):
    """Row numbers as a user sees them in a spreadsheet: header is line 1, first data row line 2."""
    lines = [str(i + 2) for i in list(index)[:limit]]
    return ", ".join(lines) + (f" (and {len(index) - limit} more)" if len(index) > limit else "")


def make_split(df, seed=0, fractions=SPLIT_FRACTIONS):
    """Deterministic split stratified by answer; answers too rare to stratify share one stratum."""
    from sklearn.model_selection import train_test_split

    counts = df["answer"].map(df["answer"].value_counts())
    strata = df["answer"].where(counts >= 10, "__rare__")
    if (strata == "__rare__").sum() < 10:
        strata = None if strata.nunique() == 1 else strata.where(strata != "__rare__", strata.mode()[0])
    index = np.arange(len(df))
    holdout = fractions[1] + fractions[2]
    train_idx, rest_idx = train_test_split(index, test_size=holdout, random_state=seed,
                                           stratify=None if strata is None else strata.values)
    rest_strata = None if strata is None else strata.values[rest_idx]
    if rest_strata is not None and pd.Series(rest_strata).value_counts().min() < 2:
        rest_strata = None
    valid_idx, test_idx = train_test_split(rest_idx, test_size=fractions[2] / holdout, random_state=seed,
                                           stratify=rest_strata)
    split = np.empty(len(df), dtype=object)
    split[train_idx], split[valid_idx], split[test_idx] = "train", "valid", "test"
    return split


def _load_or_make_split(data_dir, df):
    """Reuses data_dir/split.csv when it matches the data row for row, so every script sees one test set."""
    path = os.path.join(data_dir, SPLIT_FILE)
    if os.path.isfile(path):
        saved = pd.read_csv(path, dtype=str, keep_default_na=False)
        if len(saved) == len(df) and (saved["image"].values == df["image"].values).all() \
                and (saved["question"].values == df["question"].values).all():
            return saved["split"].values
        print(f"{path} does not match data.csv any more (rows changed); making a new split.")
    split = make_split(df)
    out = pd.DataFrame({"image": df["image"], "question": df["question"], "split": split})
    tmp = path + ".tmp"
    out.to_csv(tmp, index=False)
    os.replace(tmp, path)
    print(f"made a seeded split {dict(pd.Series(split).value_counts())} and wrote it to {path}")
    return split


def select_rows(df, split=None, train_data="all", infer_data="all", lang="all"):
    """Rows of one split, question type (A|B|all), category (vqa|triple|abstract|all) and language."""
    keep = np.ones(len(df), dtype=bool)
    if split is not None:
        keep &= df["split"].values == split
    if train_data != "all":
        keep &= df["question_type"].values == train_data
    if infer_data != "all":
        keep &= df["category"].values == infer_data
    if lang not in ("all", "bi"):
        keep &= df["lang"].values == lang
    return df[keep].reset_index(drop=True)


def build_answer_vocab(train_df):
    """Answers sorted by frequency (ties by name), so index 0 is the most frequent answer."""
    counts = train_df["answer"].value_counts()
    return sorted(counts.index, key=lambda a: (-counts[a], a))


def load_image(path, img_size):
    """One image as uint8 HWC, resized as the original's eval transform (bilinear, antialiased)."""
    with Image.open(path) as im:
        return np.asarray(im.convert("RGB").resize((img_size, img_size), Image.BILINEAR), dtype=np.uint8)


def to_model_input(images, device):
    """uint8 [B, H, W, 3] -> normalized float [B, 3, H, W] on device (channels_last memory, as it comes)."""
    images = images.to(device, non_blocking=True).permute(0, 3, 1, 2).float().div_(255)
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(1, 3, 1, 1)
    return (images - mean) / std


class ImageCache:
    """Every image of a data set decoded and resized once into a uint8 array on disk, memory-mapped.

    Reused across epochs, scripts and runs; rebuilt when the list of images, their sizes or modification
    times, or the image size change (the key is in the file name)."""

    def __init__(self, data_dir, names, img_size, num_workers=8, progress=True):
        self.names = sorted(set(names))
        self.row = {name: i for i, name in enumerate(self.names)}
        image_dir = os.path.join(data_dir, "image")
        paths = [os.path.join(image_dir, name) for name in self.names]
        key = hashlib.sha1(str(img_size).encode())
        for name, path in zip(self.names, paths):
            try:
                stat = os.stat(path)
            except OSError as e:
                raise DataError(f"{path}: cannot read image ({e.strerror}); it is listed in {data_dir}/data.csv "
                                f"column image. Put the file there or remove its rows.") from None
            key.update(f"{name}\0{stat.st_size}\0{stat.st_mtime_ns}\n".encode())
        cache_dir = os.path.join(data_dir, "cache")
        self.path = os.path.join(cache_dir, f"images_{img_size}px_{key.hexdigest()[:16]}.npy")
        self.shape = (len(self.names), img_size, img_size, 3)
        if not os.path.isfile(self.path):
            os.makedirs(cache_dir, exist_ok=True)
            self._build(paths, img_size, num_workers, progress)
        self._array = None  # opened lazily, so that DataLoader workers each map the file themselves

    def _build(self, paths, img_size, num_workers, progress):
        from concurrent.futures import ThreadPoolExecutor

        from tqdm import tqdm

        tmp = f"{self.path}.{os.getpid()}.tmp"
        array = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.uint8, shape=self.shape)

        def decode(i):
            try:
                array[i] = load_image(paths[i], img_size)
            except OSError as e:
                raise DataError(f"{paths[i]}: cannot decode image ({e}). Replace the file or remove its rows.") from None

        # PIL releases the GIL while decoding, so threads use every core
        with ThreadPoolExecutor(max(1, num_workers)) as pool:
            list(tqdm(pool.map(decode, range(len(paths))), total=len(paths), desc=f"caching images at {img_size}px",
                      disable=not progress, dynamic_ncols=True))
        array.flush()
        del array
        os.replace(tmp, self.path)

    @property
    def array(self):
        if self._array is None:
            self._array = np.load(self.path, mmap_mode="r")
        return self._array

    def __getstate__(self):
        return {**self.__dict__, "_array": None}


class VQADataset(Dataset):
    """Questions tokenized once up front; images read from the decoded cache. Unknown answers get label -1."""

    def __init__(self, df, images, tokenizer, answer_to_id, max_token):
        self.df = df.reset_index(drop=True)
        self.images = images
        self.image_rows = np.array([images.row[name] for name in self.df["image"]], dtype=np.int64)
        encoded = tokenizer(list(self.df["question"]), truncation=True, max_length=max_token)
        self.input_ids = [torch.tensor(ids, dtype=torch.long) for ids in encoded["input_ids"]]
        self.labels = torch.tensor([answer_to_id.get(a, -1) for a in self.df["answer"]], dtype=torch.long)
        self.pad_id = tokenizer.pad_token_id

    def __len__(self):
        return len(self.df)

    def __getitem__(self, i):
        return self.input_ids[i], torch.from_numpy(np.array(self.images.array[self.image_rows[i]])), self.labels[i], i


def collate(batch, pad_id):
    """Pads each batch to its own longest question."""
    ids, images, labels, index = zip(*batch)
    input_ids = torch.nn.utils.rnn.pad_sequence(ids, batch_first=True, padding_value=pad_id)
    return {"input_ids": input_ids, "attention_mask": (input_ids != pad_id).long(),
            "image": torch.stack(images), "label": torch.stack(labels), "index": torch.tensor(index)}
