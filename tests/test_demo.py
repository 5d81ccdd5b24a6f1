"""demo.py in a real headless browser (Debian's chromium driven by Playwright): upload an image or pick a test
sample, ask, and read the answer the page shows; it must be model.answer's top answer (as inference_each.py's).

Skipped only outside CI when chromium or Playwright is missing; in CI (CI set) that is a failure."""
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request

import pytest
import torch

import checkpoints
import util
from conftest import ROOT
from answering import answer
from models import load_run
from vqa_dataset import read_test_split

BROWSERS = ["chromium", "chromium-browser", "google-chrome", "google-chrome-stable"]
TIMEOUT_MS = 30_000
N_SAMPLES = 20  # test samples the demo offers


def missing(why):
    if os.environ.get("CI"):
        pytest.fail(f"{why} (CI is set, so the browser test must run; `make test` installs it)")
    pytest.skip(why)


def test_without_gradio_says_how_to_install():
    code = ("import runpy, sys; sys.modules['gradio'] = None; sys.argv = ['demo.py']; "
            "runpy.run_path('demo.py', run_name='__main__')")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1
    assert "pip install -r requirements-demo.txt" in result.stderr


def find_chromium():
    path = os.environ.get("CHROMIUM") or next(filter(None, map(shutil.which, BROWSERS)), None)
    if path is None:
        missing(f"no chromium found ({', '.join(BROWSERS)}, or set CHROMIUM=path); apt-get install chromium")
    return path


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serving(run_dir, log_dir):
    """demo.py serving run_dir on a free local port: yields its URL, stops it afterwards."""
    port = free_port()
    log_path = log_dir / "demo.log"
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "GRADIO_ANALYTICS_ENABLED": "False"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen([sys.executable, "demo.py", "--model_path", str(run_dir), "--port", str(port),
                                 "--device", "cpu", "--n_samples", str(N_SAMPLES)],
                                cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    deadline = time.monotonic() + 120
    try:
        while True:
            if proc.poll() is not None:
                pytest.fail(f"demo.py exited with {proc.returncode}:\n{log_path.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail(f"demo.py did not answer on {url} in 120 s:\n{log_path.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def demo_url(trained_run, tmp_path_factory):
    with serving(trained_run, tmp_path_factory.mktemp("demo")) as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    executable = find_chromium()
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        missing("playwright is not installed; pip install -r requirements-demo.txt")
    with sync_playwright() as p:
        # --no-sandbox: chromium refuses to start its sandbox as root, which CI is
        browser = p.chromium.launch(executable_path=executable, args=["--no-sandbox"])
        yield browser
        browser.close()


def open_page(browser, url):
    page = browser.new_page()
    page.set_default_timeout(TIMEOUT_MS)
    page.goto(url)
    page.wait_for_selector("#question textarea")
    return page


@pytest.fixture
def page(browser, demo_url):
    page = open_page(browser, demo_url)
    yield page
    page.close()


@pytest.fixture(scope="module")
def run(trained_run):
    """(model, tokenizer, config, answers, test rows, data_dir) for the expected answers."""
    model, tokenizer, config, answers, _ = load_run(str(trained_run), "cpu")
    data_dir, test = read_test_split(config, trained_run)
    return model, tokenizer, config, answers, test, data_dir


def expected(run, image_path, question):
    model, tokenizer, config, answers, _, _ = run
    return answer(model, tokenizer, config, answers, image_path, question, "cpu")


def shown_answers(page):
    """The answers the page shows, best first, once the model has answered."""
    top = page.locator("#answers [data-testid=label-output-value]")
    top.wait_for()
    rows = page.locator("#answers [data-testid$='-confidence-set']")
    return top.inner_text().strip(), [rows.nth(i).get_attribute("data-testid").removesuffix("-confidence-set")
                                      for i in range(rows.count())]


def test_upload_and_ask(page, run):
    *_, test, data_dir = run
    row = test.iloc[0]
    image_path = os.path.join(data_dir, "image", row["image"])
    page.locator("#image input[type=file]").set_input_files(image_path)
    page.locator("#image img").wait_for()  # the upload has reached the server
    page.locator("#question textarea").fill(row["question"])
    page.locator("#submit").click()
    top, listed = shown_answers(page)
    want = expected(run, image_path, row["question"])
    assert top == want[0][0]
    assert listed == [text for text, _ in want]


def pick_sample(page, index, row):
    """Picks test sample index in the page and waits until its image, question and gold answer are shown."""
    from playwright.sync_api import expect

    page.locator("#sample input").click()
    page.locator("#sample [role=option]").nth(index).click()
    expect(page.locator("#question textarea")).to_have_value(row["question"])
    expect(page.locator("#gold textarea")).to_have_value(row["answer"])
    page.locator("#image img").wait_for()


def test_pick_sample_and_ask(page, run):
    *_, test, data_dir = run
    index = 3
    row = test.iloc[index]
    pick_sample(page, index, row)
    page.locator("#submit").click()
    top, _ = shown_answers(page)
    assert top == expected(run, os.path.join(data_dir, "image", row["image"]), row["question"])[0][0]


def knowledge_moving_the_answers(run_dir, copy):
    """A copy of an oracle_triple run whose injection reads the triple as a longer run's does: its projection starts at
    zero (no effect of the knowledge), which three epochs hardly move."""
    from safetensors.torch import save

    shutil.copytree(run_dir, copy)
    path = os.path.join(copy, util.read_json(os.path.join(copy, util.CONFIG_FILE))["weights"])
    tensors, metadata = checkpoints.read_safetensors(path)
    tensors["injection.project.weight"] = torch.randn(tensors["injection.project.weight"].shape,
                                                      generator=torch.Generator().manual_seed(0))
    util.atomic_write(path, save(tensors, metadata=metadata))
    return copy


@pytest.mark.parametrize("knowledge", ["oracle_triple", "gel_vqa"])
def test_a_knowledge_run_takes_and_shows_knowledge(browser, knowledge_runs, knowledge, tmp_path):
    """oracle_triple: a picked sample fills the knowledge box with its triple, and the answers are those for that
    triple (another triple typed in gives that triple's answers); gel_vqa: the box is hidden and the predicted triple
    shown."""
    from playwright.sync_api import expect

    run_dir = knowledge_runs[knowledge]
    if knowledge == "oracle_triple":
        run_dir = knowledge_moving_the_answers(run_dir, tmp_path / "run")
    model, tokenizer, config, answers, _ = load_run(str(run_dir), "cpu")
    data_dir, test = read_test_split(config, run_dir)
    index = next(i for i, triple in enumerate(test["triple"].head(N_SAMPLES)) if triple)
    row = test.iloc[index]
    image_path = os.path.join(data_dir, "image", row["image"])

    def want(triple):
        return answer(model, tokenizer, config, answers, image_path, row["question"], "cpu", 5, triple)

    with serving(run_dir, tmp_path) as url:
        page = open_page(browser, url)
        pick_sample(page, index, row)
        box = page.locator("#knowledge textarea")
        if knowledge == "oracle_triple":
            expect(box).to_have_value(row["triple"])
        else:
            expect(box).to_be_hidden()
        page.locator("#submit").click()
        top, listed = shown_answers(page)
        assert listed == [text for text, _ in want(row["triple"] if knowledge == "oracle_triple" else "")]
        if knowledge == "gel_vqa":
            predicted = want("").triple
            expect(page.locator("#triple textarea")).to_have_value(" | ".join(predicted) if predicted else "(none)")
            return
        top_for_gold = want(row["triple"])[0][0]
        other = next(t for t in test["triple"].unique() if t and want(t)[0][0] != top_for_gold)
        box.fill(other)
        page.locator("#submit").click()
        expect(page.locator("#answers [data-testid=label-output-value]")).to_have_text(want(other)[0][0])
        assert shown_answers(page)[1] == [text for text, _ in want(other)]


def test_a_refused_upload_says_why(page, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"this is not a picture")
    page.locator("#image input[type=file]").set_input_files(str(broken))
    page.locator("#question textarea").fill("도형은 몇 개?")
    page.locator("#submit").click()
    page.get_by_text("broken.jpg is not an image this demo can read").first.wait_for()
