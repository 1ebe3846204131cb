"""Export a client's personalized model from a run directory, load it back, answer prompts with it.

:func:`export_client` reads the run's resolved ``config.toml`` and one of its checkpoints
(:func:`fedamole.rundir.load_checkpoint`, chosen by ``round``) and writes the model client
``c`` was scored with:

- ``round="last"`` (the default): ``checkpoints/last``, the model the client held at the end of the
  run: after its local training in round ``R``, or, when ``eval.timing`` added the evaluation-only
  round ``R+1``, after loading what the server sent there (for FedIT, the final global adapter).
- ``round="best"``: ``checkpoints/best``, the round ``fedamole report --round best`` names (the
  highest client-mean score of the run's main split, docs/run-directory.md#checkpoints). When that
  split is ``test`` it is the client's model after local training in that round; when it is
  ``test_global`` (FedIT and the other global-model methods evaluated globally) it is the model the
  client received at the start of the next round, rebuilt from the checkpoint's server state the
  way the client's own ``load`` merges it.
- ``round=N``: the checkpoint (``best`` or ``last``) of round ``N``; other rounds are not kept.

On the Flower engine the checkpoints hold the server state only (``clients`` is empty): each
client keeps its own, and snapshots it after every round it completes to
``checkpoints/clients/client_NNN/round_RRR`` (simulation; a deployment's SuperNodes write them to
their own ``state-dir``), numbered as the checkpoints are, the evaluation-only round and round 0
included. The export then reads the client's state from its snapshot of the checkpoint's round
(the newest up to it: a client that failed in that round kept an earlier state). A client keeps the
snapshots of its last two rounds and of the run's best round (which the server names in every
message), so ``last`` and ``best`` both find theirs; an export whose snapshot is gone (a run
written before the clients kept the best round's, or a deployment's without its nodes' folders
copied in) fails naming the rounds kept and the fix. Exports that need no client state (the prompt
methods, and a received model the server's message replaces whole, as FedIT's after an
aggregation) read no snapshot.

Formats, told apart by their files (every export also has ``fedamole_export.json`` and a
``README.md`` that says how to load it):

**peft adapter** (local-only, FedIT, FFA-LoRA, FedSA-LoRA; FDLoRA with its two adapters fused by
the client's fusion weights): a standard peft directory (``adapter_config.json`` +
``adapter_model.safetensors``, written by ``PeftModel.save_pretrained``).
``base_model_name_or_path`` is the run's ``model.name``, a local folder made absolute, so
``peft.AutoPeftModelForCausalLM.from_pretrained(DIR)`` loads a hub-id or local-folder backbone
with the adapter. fedamole's own backbones (``embedded:smollm2-135m-instruct``, ``tiny:*``) are no
hub ids: for them the README says so and :func:`load_exported` is the way to load.

**FedDPA**: the same peft directory for the global adapter, plus the private one in ``local/``
(peft's layout for a second adapter, ``PeftModel.load_adapter(DIR / "local", "local")``) and
``feddpa_direction.safetensors``: ``direction`` (d,), the mean unit representation of the client's
reference training prompts under its local adapter. :func:`generate` mixes the two adapters with
the instance weight ``a(x) = 0.5 * clamp(cos(h(x), direction))`` as the evaluation does
(:mod:`fedamole.algorithms.feddpa`); a plain ``PeftModel.from_pretrained`` gives the global adapter
alone. Computing ``direction`` reloads the run's data (the client's training prompts).

**peft prompt** (FedPrompt, FedPTuning): the global soft prompt the client was evaluated with, as
a peft prompt-learning directory (P-tuning's encoder output saved as the prompt, as peft does).
Only the received global prompt is checkpointed, so these export with ``eval.timing = "global"``
or ``"both"`` (``--round best``, or ``last`` after the evaluation-only round); FedPTuning's
``reference_quirk`` mode cannot be exported. :func:`load_exported` wraps the model in
:class:`~fedamole.algorithms.virtual_tokens.VirtualTokenLM` (virtual tokens after the left
padding, as evaluated); peft's own forward places them before the padding, which gives the same
result on an unpadded input.

**FedALT** and **FedLEASE**: the same peft directory with more adapters and their gates: FedALT's
rest-of-world adapter in ``row/`` and its mixers in ``fedalt_mixers.safetensors``; FedLEASE's
cluster experts ``1..M-1`` in ``expert<k>/`` (expert 0 is the default adapter) and its routers in
``fedlease_routers.safetensors``, the manifest's ``fedlease`` entry giving ``num_experts`` and the
client's ``cluster``. :func:`load_exported` restores the gated model.

FDLoRA exports the same way: the client's fused adapter ``w0 * global + w1 * private`` with the
fusion weights it logged for the received model (``fusion/received_w0``, ``_w1``); its adapter
after local training is not checkpointed.

**fedamole MoLE** (FedAMoLE): the heterogeneous mixture has no peft equivalent, so::

    DIR/fedamole_export.json      the manifest (below), with "kind": "mole"
    DIR/mole_state.safetensors    the client's packed MoLE state, keys as in
                                  fedamole.federated.messages.pack_modules:
                                  ids:<m> (n,) int64, experts:<m>:A (n, r, d_in),
                                  experts:<m>:B (n, d_out, r), token_proj:<m> (r, d_in),
                                  shared:<m>:A / shared:<m>:B, gate:<m> (n, d_in) when present

:func:`load_exported` loads it: the backbone (:func:`fedamole.models.load_model_and_tokenizer`),
``inject_mole(model, MoLEConfig(**manifest["mole"]))``, ``set_mole_state(model,
unpack_modules(tensors))``; the result is a ``transformers`` causal LM whose wrapped projections
hold the client's experts (``model(input_ids).logits``, ``model.generate(...)``).

The manifest ``fedamole_export.json``: ``format`` ("fedamole-export"), ``version`` (1), ``kind``
("peft", "feddpa", "fedalt", "fedlease", "prompt" or "mole"), ``algorithm``, ``client``, ``round``
(of the checkpoint), ``checkpoint`` ("last" or "best"), ``model`` ("trained": the client's model
after that round's local training, "received": the model it received from the server, see above),
``selection`` (for ``best``: the split, score and rule that chose it), ``base_model`` (the backbone
to load: the run's ``model.name``, a local folder made absolute), ``model_name`` (``model.name`` as
configured), ``model_seed`` (the run seed: it fixes the weights of ``tiny:*`` test models),
``dtype``, ``max_length``, and for MoLE ``mole`` (the ``[mole]`` config) and ``expert_ids`` (module
-> the global ids of the client's experts), for FDLoRA ``fdlora`` (the fusion weights), for FedLEASE
``fedlease`` (``num_experts``, ``cluster``).

:func:`generate` loads any kind and greedily answers one instruction wrapped in the Alpaca
template (docs/algorithm.md#prompt-templates), as the evaluation decodes.

Which algorithms export, in which format, is each one's registration (``export``,
:mod:`fedamole.algorithms.registry`): the manifest ``kind`` and the writer. The modules:
:mod:`~fedamole.export.formats` (file names, the manifest's format, which algorithm exports how),
:mod:`~fedamole.export.source` (the checkpoint and the client's model in it),
:mod:`~fedamole.export.writers` (one writer per format), :mod:`~fedamole.export.readme`,
:mod:`~fedamole.export.client` (:func:`export_client`) and :mod:`~fedamole.export.loading`
(:func:`load_exported`, :func:`generate`).
"""

from fedamole.export.client import export_client
from fedamole.export.formats import (
    FEDDPA_DIRECTION,
    MANIFEST,
    MOLE_STATE,
    README,
    export_kind,
    exportable_algorithms,
)
from fedamole.export.loading import generate, load_exported

__all__ = [
    "FEDDPA_DIRECTION",
    "MANIFEST",
    "MOLE_STATE",
    "README",
    "export_client",
    "export_kind",
    "exportable_algorithms",
    "generate",
    "load_exported",
]
