"""Loading encoders from local directories, and the fast, clear failure when a model must be downloaded offline."""
import json
import time

import timm
import torch
from transformers import AutoModel

from conftest import TINY_TRAIN, run_script
from encoders import small_text_config, train_tokenizer
from vqa_dataset import read_data


def test_train_from_local_model_directories(sample_dir, tmp_path):
    """The same from_pretrained / timm loading code as for hub models, on small models saved to disk."""
    text_dir, image_dir = tmp_path / "text", tmp_path / "image"
    tokenizer = train_tokenizer(list(read_data(sample_dir)["question"]))
    tokenizer.save_pretrained(text_dir)
    AutoModel.from_config(small_text_config(len(tokenizer), 32, hidden=32, layers=1, heads=2)).save_pretrained(text_dir)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0, channels=[8, 16, 32, 64], stem_width=8)
    timm.models.save_for_hf(cnn, str(image_dir), model_args={"channels": [8, 16, 32, 64], "stem_width": 8},
                            safe_serialization=True)
    results = tmp_path / "results"
    result = run_script("main.py", *TINY_TRAIN, "--n_epoch", "1", "--data_dir", sample_dir, "--results_dir", results,
                        "--text_model", text_dir, "--image_model", image_dir, "--pretrained",
                        env={"HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-3000:]
    run_dir = next(results.iterdir())
    config = json.loads((run_dir / "config.json").read_text())
    assert config["image_arch"] == "resnet10t" and config["image_model_kwargs"]["channels"] == [8, 16, 32, 64]
    # the local weights were loaded, not a random initialisation
    from models import load_run

    model = load_run(str(run_dir))[0]
    assert model.image_encoder.conv1[0].weight.shape == cnn.conv1[0].weight.shape
    predict = run_script("inference.py", "--model_path", run_dir, "--data_dir", sample_dir)
    assert predict.returncode == 0, predict.stderr[-3000:]


def test_pretrained_weights_from_a_local_directory_are_used(tmp_path):
    from encoders import build_image_encoder, build_text_encoder

    text_dir, image_dir = tmp_path / "text", tmp_path / "image"
    text = AutoModel.from_config(small_text_config(40, 16, hidden=32, layers=1, heads=2))
    text.save_pretrained(text_dir)
    cnn = timm.create_model("resnet10t", pretrained=False, num_classes=0, channels=[8, 16, 32, 64], stem_width=8)
    timm.models.save_for_hf(cnn, str(image_dir), model_args={"channels": [8, 16, 32, 64], "stem_width": 8},
                            safe_serialization=True)
    loaded_text = build_text_encoder(str(text_dir), pretrained=True)
    assert torch.equal(loaded_text.embeddings.word_embeddings.weight, text.embeddings.word_embeddings.weight)
    loaded_cnn = build_image_encoder(str(image_dir), pretrained=True)
    assert torch.equal(loaded_cnn.conv1[0].weight, cnn.conv1[0].weight)


def test_offline_without_a_local_copy_fails_fast_and_says_how_to_fix(sample_dir, tmp_path):
    for flags in (["--text_model", "xlm-roberta-base"], ["--text_model", "scratch", "--image_model", "resnet50",
                                                          "--pretrained"]):
        start = time.time()
        result = run_script("main.py", "--data_dir", sample_dir, "--results_dir", tmp_path, "--device", "cpu",
                            "--num_workers", "0", *flags, env={"HF_HOME": str(tmp_path / "hf"), "HF_HUB_OFFLINE": "1"})
        assert time.time() - start < 60
        assert result.returncode != 0
        assert "Traceback" not in result.stderr
        assert "--preset sample" in result.stderr and "local directory" in result.stderr
