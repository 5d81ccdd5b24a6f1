"""The documentation fits the code: every command README.md and docs/ show parses with this checkout's scripts,
names a make target or file that exists, and every relative link resolves (tools/check_docs.py)."""
import os

import check_docs
import yaml
from conftest import ROOT


def test_every_documented_command_and_link_fits_this_checkout():
    assert check_docs.problems() == []


def test_the_check_catches_what_a_reader_would_trip_over():
    assert check_docs.check_command("python main.py --preset sample --n_epoch 2") == ""
    assert "unrecognized arguments: --no_such_option" in check_docs.check_command("python main.py --no_such_option 1")
    assert "invalid choice" in check_docs.check_command("python inference.py --infer_data pictures")
    assert check_docs.check_command("python no_such_script.py") == "no script no_such_script.py"
    assert check_docs.check_command("make no-such-target") != "" and check_docs.check_command("make demo test") == ""
    assert check_docs.check_command("torchrun --nproc_per_node 4 main.py --resume RUN_DIR") == ""
    commands = [c for _, c in check_docs.shell_commands(
        "```shell\npython main.py --lr 1 \\\n    --n_epoch 2   # two epochs\nfor k in a b; do make $k; done\n```\n"
        "and `python inference.py --infer_data vqa`, not `python inference.py [--kb FILE]`\n")]
    assert commands == ["python main.py --lr 1      --n_epoch 2", "make a", "make b",
                        "python inference.py --infer_data vqa"]
    assert check_docs.broken_links(os.path.join(ROOT, "README.md"), "[a](docs/nothing.md) [b](docs/data.md)") == \
        ["docs/nothing.md"]


def test_the_readme_is_read_in_five_minutes():
    assert os.path.getsize(os.path.join(ROOT, "README.md")) <= 20 * 1024


def test_the_citation_file_names_the_works_reimplemented():
    with open(os.path.join(ROOT, "CITATION.cff"), encoding="utf-8") as f:
        citation = yaml.safe_load(f)
    assert citation["cff-version"] == "1.2.0" and citation["authors"]
    titles = " ".join(r["title"] for r in citation["references"])
    assert "VQA_NIA" in titles and "BOK-VQA" in titles and "HiLINK" in titles
    assert any(r.get("doi") == "10.1609/aaai.v38i16.29798" for r in citation["references"])
