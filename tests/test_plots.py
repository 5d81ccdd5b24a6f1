"""plots.py draws valid PNGs with Korean text in a font that has Hangul; inference_each.py --save_png,
figs/draw_model.py and figs/draw_knowledge.py write their PNGs."""
import io
import sys
import warnings

import numpy as np
import pytest
from matplotlib import ft2font, rc_context
from matplotlib.figure import Figure
from PIL import Image

import plots
from conftest import ROOT, run_script, script_output

HISTORY = [{"epoch": e, "train_loss": 2.0 / e, "valid_loss": 2.2 / e, "train_acc": 0.2 * e, "valid_acc": a}
           for e, a in zip(range(1, 5), [0.3, 0.6, 0.7, 0.65])]
BY_TYPE = {"A": {"accuracy": 0.9, "n": 100}, "B": {"accuracy": 0.8, "n": 90}, "triple": {"accuracy": 0.75, "n": 40}}
TOP = [("빨간색", 0.6), ("파란색", 0.2), ("딸기", 0.1), ("3", 0.06), ("원", 0.04)]


def check_png(path, min_size=(300, 200)):
    with Image.open(path) as im:
        assert im.format == "PNG"
        assert im.width >= min_size[0] and im.height >= min_size[1]
        im.load()  # a truncated file fails here
    assert not list(path.parent.glob("*.tmp")), "a temporary file was left behind"


@pytest.fixture
def image_file(tmp_path):
    path = tmp_path / "scene.jpg"
    Image.fromarray(np.full((64, 64, 3), (200, 30, 30), np.uint8)).save(path)
    return path


@pytest.fixture
def no_warnings():
    """Any warning, such as matplotlib's 'Glyph ... missing from font(s)', fails the test."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        yield


def test_korean_font_has_hangul():
    font = plots.korean_font()
    assert font is not None, "no font with Hangul: pip install koreanize-matplotlib"
    charmap = ft2font.FT2Font(font[1]).get_charmap()
    assert all(ord(c) in charmap for c in "가한글힣")
    assert font[0] in plots.style()["font.family"]


def test_missing_glyph_warning_is_detected():
    """The check below is real: Hangul in DejaVu Sans alone does warn."""
    with rc_context({"font.family": ["DejaVu Sans"]}), pytest.warns(UserWarning, match="missing from font"):
        fig = Figure()
        fig.text(0.5, 0.5, "한글")
        fig.savefig(io.BytesIO(), format="png")


def test_plot_curves(tmp_path, no_warnings):
    path = tmp_path / "curves.png"
    assert plots.plot_curves(HISTORY, str(path)) == str(path)
    check_png(path)


def test_plot_by_type(tmp_path, no_warnings):
    path = tmp_path / "sub" / "by_type.png"  # the folder is made
    plots.plot_by_type(BY_TYPE, str(path), overall={"accuracy": 0.85, "n": 190}, title="테스트 정확도")
    check_png(path)


def test_plot_answer(tmp_path, image_file, no_warnings):
    for gold in ["빨간색", "파란색", "없는 답", None]:
        path = tmp_path / f"answer_{gold}.png"
        plots.plot_answer(str(image_file), "이미지 속 원은 무슨 색이야?", gold, TOP, str(path))
        check_png(path)


def test_save_png_replaces_atomically(tmp_path, image_file):
    path = tmp_path / "answer.png"
    path.write_bytes(b"old")
    plots.plot_answer(str(image_file), "원의 색깔은?", "빨간색", TOP, str(path))
    check_png(path)


def test_inference_each_save_png(trained_run, tmp_path, capsys):
    import inference_each

    out = tmp_path / "answer.png"
    assert f"wrote {out}" in script_output(capsys, inference_each, "--model_path", trained_run, "--index", "0",
                                           "--save_png", out)
    check_png(out)


def test_draw_model(tmp_path):
    result = run_script("figs/draw_model.py", "--out", tmp_path, "--dpi", "60")
    assert result.returncode == 0, result.stderr
    for name in ["base_model.png", "TE_model.png"]:
        check_png(tmp_path / name, min_size=(400, 500))


def test_draw_knowledge(tmp_path):
    """The knowledge models' figures are drawn from the models, and hilink's note lists what hilink_kb changes."""
    sys.path.insert(0, str(ROOT / "figs"))
    import draw_knowledge
    import models

    result = run_script("figs/draw_knowledge.py", "--out", tmp_path, "--dpi", "60")
    assert result.returncode == 0, result.stderr
    for name in ["gel_vqa.png", "hilink.png"]:
        check_png(tmp_path / name, min_size=(400, 500))
    note = draw_knowledge.kb_note(models.MODELS["hilink_kb"])
    assert "its own head" in note and "i ⊙ t" in note and "snapped" in note
    assert "its own head" not in draw_knowledge.kb_note(models.named("hilink_kb", {"triple_head": "cascade"}))
