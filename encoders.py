"""The encoders: a Hugging Face text encoder and tokenizer and a timm image encoder, from the hub, the local cache or a
local directory (failing fast with what to do when offline), or built from a config (small ones from scratch for the
sample preset, whose tokenizer is trained on the questions)."""
import json
import os
import socket

import timm
import torch
from transformers import AutoConfig, AutoModel, AutoTokenizer, PreTrainedTokenizerFast

# --text_model scratch: a small XLM-R built from a config, with a tokenizer trained on the questions
SCRATCH = "scratch"


class OfflineError(Exception):
    """A model must be fetched but there is no network and no local copy."""


def _hub_reachable(timeout=3.0):
    """One quick connection attempt, so that offline runs fail in seconds instead of the hub client's retries."""
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    endpoint = urlparse(constants.ENDPOINT)
    try:
        socket.create_connection((endpoint.hostname, endpoint.port or 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _offline_message(kind, name, flag):
    return (f"Cannot load the {kind} '{name}': it is not a local directory, not in the Hugging Face cache, "
            f"and huggingface.co cannot be reached. Fix: download it on a machine with internet "
            f"(e.g. `huggingface-cli download {name}`) and copy the HF cache (~/.cache/huggingface) here, "
            f"or pass a local directory with {flag} PATH, or train offline with `--preset sample`.")


def _from_pretrained(loader, name, kind, flag, **kwargs):
    """loader.from_pretrained from a local dir, else the HF cache, else the hub; fails fast when offline."""
    if os.path.isdir(name):
        return loader.from_pretrained(name, **kwargs)
    try:
        return loader.from_pretrained(name, local_files_only=True, **kwargs)
    except (OSError, ValueError):
        pass
    if not _hub_reachable():
        raise OfflineError(_offline_message(kind, name, flag))
    return loader.from_pretrained(name, **kwargs)


def load_tokenizer(name):
    return _from_pretrained(AutoTokenizer, name, "tokenizer", "--text_model")


def train_tokenizer(questions, vocab_size=2000):
    """A small BPE tokenizer trained on the given questions, with XLM-R's special tokens and ids.

    BPE keeps the few distinct words of a small corpus whole, which a small encoder trained from scratch
    learns from much faster than from the single syllables a Unigram model falls back to there."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers

    special = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]  # XLM-R's ids: <s>=0, <pad>=1, </s>=2
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(questions, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special,
                                                           show_progress=False))
    tok.post_processor = processors.TemplateProcessing(single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>",
                                                       special_tokens=[("<s>", 0), ("</s>", 2)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", cls_token="<s>", sep_token="</s>", mask_token="<mask>")


def build_text_encoder(name, pretrained=True, config_overrides=None):
    """AutoModel by hub name or local directory; with pretrained=False only its config is used."""
    if not pretrained:
        config = _from_pretrained(AutoConfig, name, "text model config", "--text_model", **(config_overrides or {}))
        return AutoModel.from_config(config)
    return _from_pretrained(AutoModel, name, "text model", "--text_model")


def xlmr_base_config():
    """xlm-roberta-base's architecture without a download: XLMRobertaConfig()'s defaults are its sizes (hidden 768,
    12 layers, 12 heads) but carry BERT's vocabulary, so the values that differ are set here."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=250002, max_position_embeddings=514, type_vocab_size=1, layer_norm_eps=1e-5)


def small_text_config(vocab_size, max_token, hidden=128, layers=2, heads=4):
    """A small encoder of the XLM-RoBERTa architecture, built from a config (no download)."""
    from transformers import XLMRobertaConfig

    return XLMRobertaConfig(vocab_size=vocab_size, hidden_size=hidden, num_hidden_layers=layers,
                            num_attention_heads=heads, intermediate_size=hidden * 4,
                            max_position_embeddings=max_token + 4, pad_token_id=1, bos_token_id=0, eos_token_id=2,
                            type_vocab_size=1)


def build_image_encoder(name, pretrained=True, **kwargs):
    """timm backbone returning a feature map: hub name, or a local directory saved by timm.models.save_for_hf."""
    kwargs = {**kwargs, "num_classes": 0, "global_pool": ""}  # the feature map, without a head
    if os.path.isdir(name):
        return timm.create_model("local-dir:" + os.path.abspath(name), pretrained=pretrained, **kwargs)
    if pretrained and not _hub_reachable():
        # timm's weights live on the HF hub; use a cached copy rather than let the hub client retry for a minute
        from huggingface_hub import try_to_load_from_cache

        cfg = timm.models.get_pretrained_cfg(name)
        cached = cfg and cfg.hf_hub_id and try_to_load_from_cache(cfg.hf_hub_id, "model.safetensors")
        if not isinstance(cached, str):
            raise OfflineError(_offline_message("image model", name, "--image_model"))
        kwargs["pretrained_cfg_overlay"] = dict(file=cached)
    return timm.create_model(name, pretrained=pretrained, **kwargs)


def image_model_spec(name, kwargs):
    """(timm architecture, model kwargs) that rebuild the image encoder later without its source directory."""
    if os.path.isdir(name):
        with open(os.path.join(name, "config.json"), encoding="utf-8") as f:
            saved = json.load(f)
        model_args = {k: v for k, v in saved.get("model_args", {}).items() if k not in ("num_classes", "global_pool")}
        return saved["architecture"], {**model_args, **kwargs}
    return name, dict(kwargs)


def feature_grid(image_encoder, img_size):
    """(height, width) of the encoder's feature map for img_size inputs. Probed in eval mode without gradients and
    the mode restored, so that building a model leaves BatchNorm's (pretrained) running statistics untouched."""
    was_training = image_encoder.training
    image_encoder.eval()
    param = next(image_encoder.parameters())
    with torch.no_grad():
        grid = image_encoder(torch.zeros(1, 3, img_size, img_size, device=param.device, dtype=param.dtype)).shape[-2:]
    image_encoder.train(was_training)
    return tuple(grid)
