"""Figures of results: training curves, test accuracy by question type, and one answered question.

Drawn with matplotlib's object API (no pyplot, no display, no global backend switch), so it is safe to call from
training and inference scripts. Korean text needs a font with Hangul: NanumGothic as shipped by the PyPI package
koreanize-matplotlib (found by path, not imported: importing it restyles matplotlib globally), else a system font
with Hangul such as Debian's fonts-nanum or fonts-noto-cjk.
"""
import functools
import importlib.util
import io
import os
import textwrap
import warnings

from matplotlib import font_manager, ft2font, rc_context
from matplotlib.figure import Figure
from matplotlib.ticker import MaxNLocator

import util

HANGUL = ord("가")
# System fonts with Hangul, most common first (Linux, Windows, macOS); any other font with Hangul is the last resort.
KNOWN_FONTS = ["NanumGothic", "NanumBarunGothic", "Noto Sans CJK KR", "Noto Sans KR", "Source Han Sans KR",
               "UnDotum", "Baekmuk Gulim", "Malgun Gothic", "AppleGothic", "Apple SD Gothic Neo"]
COLORS = {"train": "tab:blue", "valid": "tab:orange", "best": "tab:green", "all": "0.25", "type": "tab:blue",
          "category": "tab:purple", "gold": "tab:green", "other": "0.7", "wrong": "tab:red"}


def _has_hangul(path):
    try:
        return HANGUL in ft2font.FT2Font(path).get_charmap()
    except (OSError, RuntimeError, ValueError):
        return False


@functools.cache
def korean_font():
    """(family name, file) of a font that has Hangul, registered with matplotlib; None if there is none."""
    spec = importlib.util.find_spec("koreanize_matplotlib")
    if spec is not None and spec.origin:
        folder = os.path.join(os.path.dirname(spec.origin), "fonts")
        path = os.path.join(folder, "NanumGothic.ttf")
        if os.path.isfile(path) and _has_hangul(path):
            for name in sorted(os.listdir(folder)):  # the bold weight too, for bold titles
                if name.endswith(".ttf"):
                    font_manager.fontManager.addfont(os.path.join(folder, name))
            return font_manager.FontProperties(fname=path).get_name(), path
    by_name = {f.name: f.fname for f in font_manager.fontManager.ttflist}
    known = [by_name[name] for name in KNOWN_FONTS if name in by_name]
    for path in known + sorted(set(by_name.values()) - set(known)):  # any font with Hangul as the last resort
        if _has_hangul(path):
            return font_manager.FontProperties(fname=path).get_name(), path
    warnings.warn("plots: no font with Hangul found, Korean text will show as boxes. "
                  "Fix: pip install koreanize-matplotlib (or apt-get install fonts-nanum).", stacklevel=3)
    return None


def style():
    """rc settings for every figure here: DejaVu Sans (matplotlib's own) for Latin, digits and symbols, the Hangul
    font for the glyphs DejaVu lacks (matplotlib >= 3.6 falls back glyph by glyph along font.family)."""
    font = korean_font()
    family = ["DejaVu Sans", font[0]] if font else ["DejaVu Sans"]
    return {"font.family": family, "font.size": 10, "axes.spines.top": False, "axes.spines.right": False}


def save_png(fig, path, dpi=120):
    """PNG written atomically (util.atomic_write): a reader never sees half a file."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    png = io.BytesIO()
    fig.savefig(png, format="png", dpi=dpi, bbox_inches="tight")
    util.atomic_write(path, png.getvalue())
    return path


TRIPLE_CURVES = {"valid_h": "head", "valid_r": "relation", "valid_t": "tail", "valid_hrt": "whole triple"}


def plot_curves(history, path):
    """Loss and accuracy per epoch (train and valid) from history.json rows, and for runs that predict a triple the
    valid accuracy of its head, relation, tail and whole; the best valid epoch is marked."""
    epochs = [r["epoch"] for r in history]
    best = max(history, key=lambda r: r["valid_acc"])
    triple = [k for k in TRIPLE_CURVES if k in history[-1]]
    with rc_context(style()):
        fig = Figure(figsize=(15 if triple else 10, 4))
        ax_loss, ax_acc, *ax_triple = fig.subplots(1, 3 if triple else 2)
        for ax in ax_triple:
            for key in triple:
                ax.plot(epochs, [100 * r.get(key, float("nan")) for r in history], "o-", ms=3, label=TRIPLE_CURVES[key])
            ax.set(title="predicted triple (valid)", ylabel="accuracy (%)", ylim=(0, 105))
            ax.legend(loc="lower right")
        for split in ["train", "valid"]:
            ax_loss.plot(epochs, [r[f"{split}_loss"] for r in history], "o-", ms=3, color=COLORS[split], label=split)
            ax_acc.plot(epochs, [100 * r[f"{split}_acc"] for r in history], "o-", ms=3, color=COLORS[split],
                        label=split)
        for ax in (ax_loss, ax_acc, *ax_triple):
            ax.axvline(best["epoch"], color=COLORS["best"], ls="--", lw=1, label=f"best epoch {best['epoch']}")
            ax.set_xlabel("epoch")
            ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        ax_acc.plot([best["epoch"]], [100 * best["valid_acc"]], "*", ms=12, color=COLORS["best"])
        ax_acc.annotate(f"{100 * best['valid_acc']:.2f}%", (best["epoch"], 100 * best["valid_acc"]),
                        textcoords="offset points", xytext=(0, -16), ha="center", color=COLORS["best"])
        ax_loss.set(title="loss", ylabel="loss")
        ax_acc.set(title="accuracy", ylabel="accuracy (%)", ylim=(0, 105))
        ax_loss.legend()
        ax_acc.legend(loc="lower right")
        return save_png(fig, path)


def plot_by_type(by_type, path, overall=None, title="Test accuracy by question type and category"):
    """Bars of accuracy (%) with n for overall ({"accuracy", "n"}), types A/B and categories vqa/triple/abstract;
    the by_type of report.accuracy_table or eval_<infer_data>.json, types absent left out."""
    rows = [("all", overall, COLORS["all"])] if overall else []
    rows += [(name, by_type[name], COLORS["type"]) for name in ["A", "B"] if name in by_type]
    rows += [(name, by_type[name], COLORS["category"]) for name in ["vqa", "triple", "abstract"] if name in by_type]
    with rc_context(style()):
        fig = Figure(figsize=(1.2 * len(rows) + 2, 4))
        ax = fig.subplots()
        x = range(len(rows))
        values = [100 * row["accuracy"] for _, row, _ in rows]
        bars = ax.bar(x, values, color=[color for _, _, color in rows], width=0.7)
        ax.bar_label(bars, [f"{v:.1f}%\nn={row['n']}" for v, (_, row, _) in zip(values, rows)], padding=2,
                     fontsize=9)
        ax.set_xticks(list(x), [name for name, _, _ in rows])
        ax.set(ylim=(0, 118), ylabel="accuracy (%)", title=title)
        ax.grid(axis="y", alpha=0.3)
        return save_png(fig, path)


def plot_answer(image_path, question, gold, top, path):
    """The image with its question, the gold answer if known (None if not), and top answers [(text, prob)] as
    horizontal bars, best on top; the gold answer's bar is green, a wrong top answer red."""
    from images import read_image

    image = read_image(image_path)  # as the model sees it: EXIF orientation, transparency over white
    with rc_context(style()):
        fig = Figure(figsize=(9, 4))
        ax_img, ax_bar = fig.subplots(1, 2, gridspec_kw={"width_ratios": [1, 1.3]})
        ax_img.imshow(image)
        ax_img.set_axis_off()
        fig.suptitle(textwrap.fill(f"Q: {question}", 80))
        texts = [text for text, _ in top][::-1]
        probs = [100 * p for _, p in top][::-1]
        colors = [COLORS["gold"] if t == gold else COLORS["other"] for t in texts]
        if gold is not None and texts and texts[-1] != gold:
            colors[-1] = COLORS["wrong"]
        bars = ax_bar.barh(range(len(texts)), probs, color=colors)
        ax_bar.bar_label(bars, [f"{p:.1f}%" for p in probs], padding=3)
        ax_bar.set_yticks(range(len(texts)), texts)
        ax_bar.set(xlim=(0, 115), xlabel="probability (%)")
        ax_bar.spines["left"].set_visible(False)
        if gold is None:
            ax_bar.set_title(f"top-{len(texts)} answers")
        else:
            seen = "" if gold in texts else f" (not in top-{len(texts)})"
            ax_bar.set_title(f"gold: {gold}{seen}", color=COLORS["gold"] if texts and texts[-1] == gold
                             else COLORS["wrong"])
        return save_png(fig, path)
