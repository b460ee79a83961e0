"""
Hugging Face interop: our checkpoints and tokenizer as a transformers `nanochat` model, and back.

transformers (5.x) ships our architecture as `NanoChatForCausalLM` (model type `nanochat`): the
same rotary (base 10000, the same half-rotation sign) followed by QK norm, parameter-free
RMSNorm after the embedding and before the head, ReLU² MLP, untied head, logit soft-cap, GQA.
Only the parameter names differ, so converting a model is renaming tensors and writing a
config. The tokenizer becomes a `tokenizer.json` byte-level BPE: tiktoken keeps only each
token's rank, so the merges are recovered by replaying BPE on every token's bytes, and a
chat template renders a conversation into exactly the ids of `render_for_completion`.

transformers, safetensors and huggingface_hub are the optional `hf` extra; they are imported
where they are used so the rest of the project runs without them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import asdict
from typing import Any

import torch

from nanochat.checkpoint_manager import checkpoint_dir_for, save_checkpoint
from nanochat.errors import NanochatError
from nanochat.gpt import GPT, LOGIT_SOFTCAP, ROTARY_BASE, GPTConfig
from nanochat.stages import STAGES, lineage
from nanochat.tokenizer import SPECIAL_TOKENS, RustBPETokenizer, TokenizerNotFoundError, get_tokenizer_dir

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
WEIGHTS_INDEX_FILE = "model.safetensors.index.json"  # sharded checkpoints (large models on the hub)
HF_TOKENIZER_FILE = "tokenizer.json"
MODEL_TYPE = "nanochat"
INSTALL_HINT = "pip install -e '.[hf]'"

# our name inside a block -> transformers' name inside a decoder layer
_LAYER_KEYS = {
    "attn.c_q.weight": "self_attn.q_proj.weight",
    "attn.c_k.weight": "self_attn.k_proj.weight",
    "attn.c_v.weight": "self_attn.v_proj.weight",
    "attn.c_proj.weight": "self_attn.o_proj.weight",
    "mlp.c_fc.weight": "mlp.fc1.weight",
    "mlp.c_proj.weight": "mlp.fc2.weight",
}
_TOP_KEYS = {"transformer.wte.weight": "model.embed_tokens.weight", "lm_head.weight": "lm_head.weight"}
_OUR_LAYER_RE = re.compile(r"transformer\.h\.(\d+)\.(.+)")
_HF_LAYER_RE = re.compile(r"model\.layers\.(\d+)\.(.+)")

# Jinja twin of RustBPETokenizer.render_conversation / render_for_completion: BOS, a system
# message merged into the first user message, strict user/assistant alternation, assistant
# content as a string or a list of text / python / python_output parts. The special-token
# strings it writes are split out by the tokenizer before the text between them is encoded,
# just as render_conversation encodes each piece on its own.
CHAT_TEMPLATE = """\
{%- if messages and messages[0]['role'] == 'system' -%}
    {%- if messages | length < 2 or messages[1]['role'] != 'user' -%}
        {{- raise_exception('a system message must be followed by a user message') -}}
    {%- endif -%}
    {%- set turns = [{'role': 'user', 'content': messages[0]['content'] + '\\n\\n' + messages[1]['content']}] + messages[2:] -%}
{%- else -%}
    {%- set turns = messages -%}
{%- endif -%}
<|bos|>
{%- for message in turns -%}
    {%- set expected = 'user' if loop.index0 % 2 == 0 else 'assistant' -%}
    {%- if message['role'] != expected -%}
        {{- raise_exception('message ' ~ loop.index0 ~ ' has role ' ~ message['role'] ~ ', expected ' ~ expected ~ ' (user and assistant alternate)') -}}
    {%- endif -%}
    {%- if expected == 'user' -%}
        {%- if message['content'] is not string -%}
            {{- raise_exception('user message ' ~ loop.index0 ~ ' must have str content') -}}
        {%- endif -%}
        <|user_start|>{{ message['content'] }}<|user_end|>
    {%- else -%}
        <|assistant_start|>
        {%- if message['content'] is string -%}
            {{- message['content'] -}}
        {%- else -%}
            {%- for part in message['content'] -%}
                {%- if part['type'] == 'text' -%}
                    {{- part['text'] -}}
                {%- elif part['type'] == 'python' -%}
                    <|python_start|>{{ part['text'] }}<|python_end|>
                {%- elif part['type'] == 'python_output' -%}
                    <|output_start|>{{ part['text'] }}<|output_end|>
                {%- else -%}
                    {{- raise_exception('unknown part type ' ~ part['type']) -}}
                {%- endif -%}
            {%- endfor -%}
        {%- endif -%}
        <|assistant_end|>
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
<|assistant_start|>
{%- endif -%}
"""


class HFInteropError(NanochatError, ValueError):
    """A folder or repo cannot be converted (wrong architecture, missing files, mismatched sizes)."""


def _require(module: str) -> Any:
    """Import an optional dependency of the `hf` extra, or say how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as e:
        raise HFInteropError(f"{module} is not installed ({e}); install the hf extra: {INSTALL_HINT}") from e


# ---- model: state dict and config ----


def to_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Our GPT state dict under transformers' NanoChatForCausalLM names (contiguous, as safetensors wants)."""
    out = {}
    for key, tensor in state.items():
        if key in _TOP_KEYS:
            out[_TOP_KEYS[key]] = tensor.contiguous()
        elif (m := _OUR_LAYER_RE.fullmatch(key)) and m.group(2) in _LAYER_KEYS:
            out[f"model.layers.{m.group(1)}.{_LAYER_KEYS[m.group(2)]}"] = tensor.contiguous()
        else:
            raise HFInteropError(f"state dict key {key!r} has no transformers counterpart; is this a nanochat GPT?")
    return out


def from_hf_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """transformers' NanoChatForCausalLM tensors under our GPT names."""
    top = {hf: ours for ours, hf in _TOP_KEYS.items()}
    layer = {hf: ours for ours, hf in _LAYER_KEYS.items()}
    out = {}
    for key, tensor in state.items():
        if key in top:
            out[top[key]] = tensor
        elif (m := _HF_LAYER_RE.fullmatch(key)) and m.group(2) in layer:
            out[f"transformer.h.{m.group(1)}.{layer[m.group(2)]}"] = tensor
        else:
            raise HFInteropError(f"unexpected tensor {key!r}: our GPT has no such parameter (biases or norm weights?)")
    return out


def to_hf_config(config: GPTConfig, tokenizer: RustBPETokenizer) -> Any:
    """The NanoChatConfig that makes transformers compute exactly what our GPT computes."""
    transformers = _require("transformers")
    return transformers.NanoChatConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.n_embd,
        intermediate_size=4 * config.n_embd,
        num_hidden_layers=config.n_layer,
        num_attention_heads=config.n_head,
        num_key_value_heads=config.n_kv_head,
        max_position_embeddings=config.sequence_len,
        hidden_act="relu2",
        # F.rms_norm with no eps uses the dtype's machine epsilon; the weights are fp32
        rms_norm_eps=torch.finfo(torch.float32).eps,
        rope_parameters={"rope_type": "default", "rope_theta": float(ROTARY_BASE)},
        final_logit_softcapping=LOGIT_SOFTCAP,
        attention_bias=False,
        tie_word_embeddings=False,
        bos_token_id=tokenizer.get_bos_token_id(),
        eos_token_id=tokenizer.encode_special("<|assistant_end|>"),
        # no padding_idx: it would freeze that token's embedding when fine-tuning with transformers
        pad_token_id=None,
        architectures=["NanoChatForCausalLM"],
    )


def from_hf_config(raw: dict[str, Any], where: str) -> GPTConfig:
    """Our GPTConfig from a config.json dict, or an error naming every feature our GPT cannot represent."""
    model_type = raw.get("model_type")
    if model_type != MODEL_TYPE:
        raise HFInteropError(
            f"{where} holds a {model_type!r} model (architectures {raw.get('architectures')}), "
            f"not a {MODEL_TYPE!r} one; only transformers' NanoChatForCausalLM converts to our GPT"
        )
    transformers = _require("transformers")
    try:  # fills defaults and upgrades older layouts (e.g. a top-level rope_theta)
        cfg = transformers.NanoChatConfig.from_dict(raw)
    except Exception as e:  # strict dataclass validation raises several types
        raise HFInteropError(f"{where}: invalid nanochat config ({type(e).__name__}: {e})") from e
    rope = cfg.rope_parameters or {}
    head_dim = getattr(cfg, "head_dim", None)
    checks = [
        ("tie_word_embeddings", cfg.tie_word_embeddings, False),
        ("hidden_act", cfg.hidden_act, "relu2"),
        ("attention_bias", cfg.attention_bias, False),
        ("final_logit_softcapping", cfg.final_logit_softcapping, LOGIT_SOFTCAP),
        ("rope_type", rope.get("rope_type"), "default"),
        ("rope_theta", rope.get("rope_theta"), ROTARY_BASE),
        ("intermediate_size", cfg.intermediate_size, 4 * cfg.hidden_size),
        ("head_dim", head_dim or cfg.hidden_size // cfg.num_attention_heads, cfg.hidden_size // cfg.num_attention_heads),
    ]
    # rms_norm_eps is not checked: ours is fp32's machine epsilon, and transformers' 1e-6 default
    # moves a unit-scale activation by about 1e-6, far below what training noise does
    unsupported = [f"{name}={got!r} (ours: {want!r})" for name, got, want in checks if got != want]
    if unsupported:
        raise HFInteropError(f"{where}: our GPT cannot represent {', '.join(unsupported)}")
    try:
        return GPTConfig(
            sequence_len=cfg.max_position_embeddings,
            vocab_size=cfg.vocab_size,
            n_layer=cfg.num_hidden_layers,
            n_head=cfg.num_attention_heads,
            n_kv_head=cfg.num_key_value_heads,
            n_embd=cfg.hidden_size,
        )
    except ValueError as e:
        raise HFInteropError(f"{where}: {e}") from e


def generation_config(tokenizer: RustBPETokenizer) -> Any:
    """Stop where our Engine stops (<|assistant_end|>, or <|bos|> starting a new document)."""
    transformers = _require("transformers")
    bos = tokenizer.get_bos_token_id()
    return transformers.GenerationConfig(
        bos_token_id=bos,
        eos_token_id=[tokenizer.encode_special("<|assistant_end|>"), bos],
        pad_token_id=bos,
    )


# ---- tokenizer: tiktoken ranks <-> tokenizer.json ----


def byte_to_unicode() -> dict[int, str]:
    """
    The byte-level alphabet tokenizer.json files use (GPT-2's): printable Latin-1 bytes stand
    for themselves, the other 68 bytes for the code points 256, 257, ... in byte order, so every
    byte sequence is a printable string without spaces or control characters.
    """
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    mapping = {b: chr(b) for b in printable}
    extra = 0
    for b in range(256):
        if b not in mapping:
            mapping[b] = chr(256 + extra)
            extra += 1
    return mapping


def _ranks_and_specials(tokenizer: RustBPETokenizer) -> tuple[dict[bytes, int], dict[str, int]]:
    """(token bytes -> rank, special token -> id) of the tiktoken Encoding; ranks are the token ids."""
    enc = tokenizer.enc
    specials = {name: enc.encode_single_token(name) for name in enc.special_tokens_set}
    special_ids = set(specials.values())
    ranks = {enc.decode_single_token_bytes(i): i for i in range(enc.n_vocab) if i not in special_ids}
    return ranks, specials


def _merge_of(token: bytes, ranks: dict[bytes, int]) -> tuple[bytes, bytes]:
    """
    The pair that BPE merges last to build `token`: replay tiktoken's algorithm (merge the
    adjacent pair whose concatenation has the lowest rank) with only the tokens ranked below it.
    """
    limit = ranks[token]
    parts = [bytes([b]) for b in token]
    while len(parts) > 2:
        candidates = [(ranks.get(parts[i] + parts[i + 1], limit), i) for i in range(len(parts) - 1)]
        rank, i = min(candidates)
        if rank >= limit:
            break
        parts[i : i + 2] = [parts[i] + parts[i + 1]]
    if len(parts) != 2:
        raise HFInteropError(f"token {token!r} (rank {limit}) is not the merge of two lower-ranked tokens; not a BPE vocabulary")
    return parts[0], parts[1]


def to_hf_tokenizer(tokenizer: RustBPETokenizer, model_max_length: int) -> Any:
    """A transformers fast tokenizer that encodes like ours, adds BOS by default, and carries the chat template."""
    tokenizers = _require("tokenizers")
    transformers = _require("transformers")
    ranks, specials = _ranks_and_specials(tokenizer)
    missing_bytes = [b for b in range(256) if bytes([b]) not in ranks]
    if missing_bytes:
        raise HFInteropError(f"the tokenizer lacks byte tokens {missing_bytes[:5]}...; not a byte-level BPE")
    missing_specials = [s for s in SPECIAL_TOKENS if s not in specials]
    if missing_specials:
        raise HFInteropError(f"the tokenizer lacks nanochat's special tokens {missing_specials}; train one with scripts.tok_train")
    to_unicode = byte_to_unicode()

    def as_str(token: bytes) -> str:
        return "".join(to_unicode[b] for b in token)

    vocab = {as_str(token): rank for token, rank in ranks.items()}
    vocab.update(specials)
    # merges in rank order: transformers merges by list position, tiktoken by the merged token's rank
    merged_tokens = sorted((token for token in ranks if len(token) > 1), key=ranks.__getitem__)
    merges = [tuple(as_str(part) for part in _merge_of(token, ranks)) for token in merged_tokens]
    # ignore_merges: a piece that is itself a token is taken whole, as tiktoken does
    backend = tokenizers.Tokenizer(tokenizers.models.BPE(vocab=vocab, merges=merges, ignore_merges=True))
    backend.pre_tokenizer = tokenizers.pre_tokenizers.Sequence([
        tokenizers.pre_tokenizers.Split(tokenizers.Regex(tokenizer.enc._pat_str), behavior="isolated"),
        tokenizers.pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    backend.decoder = tokenizers.decoders.ByteLevel()
    backend.add_special_tokens([tokenizers.AddedToken(name, special=True, normalized=False)
                                for name, _ in sorted(specials.items(), key=lambda kv: kv[1])])
    bos = tokenizer.id_to_token(tokenizer.get_bos_token_id())
    # every document we train on starts with BOS, so plain `tokenizer(text)` prepends it too
    # (tokenizer(text, add_special_tokens=False) gives our encode(text))
    backend.post_processor = tokenizers.processors.TemplateProcessing(
        single=f"{bos} $A", pair=f"{bos} $A {bos} $B", special_tokens=[(bos, tokenizer.get_bos_token_id())]
    )
    return transformers.PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=bos,
        eos_token="<|assistant_end|>",
        # padding is masked out by the attention mask, so its id is only a placeholder
        pad_token=bos,
        chat_template=CHAT_TEMPLATE,
        model_max_length=model_max_length,
        clean_up_tokenization_spaces=False,
    )


def _find_split_pattern(pre_tokenizer: dict[str, Any] | None) -> str | None:
    """The regex of the Split step in a tokenizer.json pre-tokenizer (possibly inside a Sequence)."""
    if not pre_tokenizer:
        return None
    if pre_tokenizer.get("type") == "Sequence":
        for step in pre_tokenizer.get("pretokenizers", []):
            if (pattern := _find_split_pattern(step)) is not None:
                return pattern
        return None
    if pre_tokenizer.get("type") == "Split":
        return (pre_tokenizer.get("pattern") or {}).get("Regex")
    return None


def from_hf_tokenizer(tokenizer_json: dict[str, Any], where: str) -> RustBPETokenizer:
    """Our tiktoken-backed tokenizer from a byte-level BPE tokenizer.json (as export writes, or nanochat's hub models)."""
    import tiktoken

    model = tokenizer_json.get("model") or {}
    if model.get("type") != "BPE":
        raise HFInteropError(f"{where}: the tokenizer is a {model.get('type')!r} model, not byte-level BPE")
    pattern = _find_split_pattern(tokenizer_json.get("pre_tokenizer"))
    if pattern is None:
        raise HFInteropError(f"{where}: the tokenizer has no Split regex pre-tokenizer, so its split pattern is unknown")
    to_byte = {ch: b for b, ch in byte_to_unicode().items()}
    specials = {t["content"]: t["id"] for t in tokenizer_json.get("added_tokens", []) if t.get("special")}
    ranks: dict[bytes, int] = {}
    for text, rank in (model.get("vocab") or {}).items():
        if text in specials:
            continue
        try:
            ranks[bytes(to_byte[ch] for ch in text)] = rank
        except KeyError:
            raise HFInteropError(f"{where}: vocabulary entry {text!r} is not byte-level encoded") from None
    missing = [s for s in SPECIAL_TOKENS if s not in specials]
    if missing:
        raise HFInteropError(f"{where}: the tokenizer lacks nanochat's special tokens {missing}")
    ids = sorted([*ranks.values(), *specials.values()])
    if ids != list(range(len(ids))):
        raise HFInteropError(f"{where}: token ids are not 0..{len(ids) - 1} without gaps or repeats")
    # tiktoken merges by the merged token's rank, transformers by list position: they agree only if the two orders match
    merged = []
    for merge in model.get("merges", []):
        left, right = merge.split(" ") if isinstance(merge, str) else merge
        merged.append(model["vocab"].get(left + right, -1))
    if any(r < 0 for r in merged) or any(a >= b for a, b in zip(merged, merged[1:])):
        raise HFInteropError(f"{where}: the BPE merges are not in the order of their tokens' ids, so tiktoken would encode differently")
    enc = tiktoken.Encoding(name="rustbpe", pat_str=pattern, mergeable_ranks=ranks, special_tokens=specials)
    return RustBPETokenizer(enc)


# ---- the model card ----

def report_summary(report_path: str) -> str | None:
    """The "## Summary" section (metrics per stage, wall time, cost) of a generated report.md, if there is one."""
    try:
        with open(report_path, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return None
    start = text.find("## Summary")
    return text[start:].split("\n", 1)[1].strip() if start >= 0 else None


def model_card(model: GPT, source: str, meta: dict[str, Any], summary: str | None) -> str:
    """README.md for the exported folder: architecture, training stages, the run's numbers, usage."""
    cfg = model.config
    stages = lineage(source)
    numbers = {k: v for k, v in meta.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    lines = [
        "---",
        "library_name: transformers",
        "pipeline_tag: text-generation",
        "tags: [nanochat]",
        "---",
        "",
        f"# nanochat d{cfg.n_layer} ({source})",
        "",
        f"A small language model trained with the nanochat pipeline: the `{source}` stage's checkpoint, "
        "in transformers' `nanochat` architecture (`NanoChatForCausalLM`).",
        "",
        "## Architecture",
        "",
        "| | |",
        "| --- | --- |",
        f"| parameters | {model.num_params():,} |",
        f"| layers | {cfg.n_layer} |",
        f"| width | {cfg.n_embd} (MLP {4 * cfg.n_embd}) |",
        f"| heads | {cfg.n_head} query, {cfg.n_kv_head} key/value, {cfg.n_embd // cfg.n_head} dims each |",
        f"| vocabulary | {cfg.vocab_size} (byte-level BPE, 9 special tokens) |",
        f"| context | {cfg.sequence_len} tokens in training |",
        "",
        f"Rotary embeddings (base {ROTARY_BASE}) followed by QK norm, parameter-free RMSNorm (also after "
        f"the embedding and before the head), ReLU² MLP, no biases, untied head, logits soft-capped at {LOGIT_SOFTCAP:g}.",
        "",
        "## Training",
        "",
        *[f"{i}. `{stage}`: {STAGES[stage].learns}" for i, stage in enumerate(stages, 1)],
        "",
    ]
    if numbers:
        lines += [f"This checkpoint ({source}): " + ", ".join(f"{k} = {v:.6g}" if isinstance(v, float) else f"{k} = {v}"
                                                          for k, v in numbers.items()), ""]
    lines += ["## Evaluation", "", summary if summary else "No run report was found (`python -m nanochat.report generate` writes one).", ""]
    lines += [
        "## Usage",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "model = AutoModelForCausalLM.from_pretrained(PATH)",
        "tokenizer = AutoTokenizer.from_pretrained(PATH)",
        'messages = [{"role": "user", "content": "Why is the sky blue?"}]',
        'inputs = tokenizer.apply_chat_template(messages, add_generation_prompt=True, return_tensors="pt", return_dict=True)',
        "out = model.generate(**inputs, max_new_tokens=128, do_sample=False)",
        'print(tokenizer.decode(out[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True))',
        "```",
        "",
        "`tokenizer(text)` prepends `<|bos|>` as in training; the chat template renders the ids the model was trained on.",
        "",
    ]
    return "\n".join(lines)


# ---- folders: export and import ----


def export_folder(model: GPT, tokenizer: RustBPETokenizer, out_dir: str, card: str) -> list[str]:
    """Write a transformers checkpoint (config, weights, generation config, tokenizer, card) to out_dir; returns the files."""
    safetensors_torch = _require("safetensors.torch")
    if model.config.smear:
        raise HFInteropError("the model was trained with --smear, which transformers' NanoChat does not compute; "
                             "only models without it can be exported")
    if tokenizer.get_vocab_size() != model.config.vocab_size:
        raise HFInteropError(
            f"the tokenizer has {tokenizer.get_vocab_size()} tokens but the model's vocab size is "
            f"{model.config.vocab_size}; export the model with the tokenizer it was trained with"
        )
    # the hf tokenizer is built first: it validates the vocabulary before any file is written
    hf_tokenizer = to_hf_tokenizer(tokenizer, model_max_length=model.config.sequence_len)
    os.makedirs(out_dir, exist_ok=True)
    to_hf_config(model.config, tokenizer).save_pretrained(out_dir)
    generation_config(tokenizer).save_pretrained(out_dir)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    safetensors_torch.save_file(to_hf_state_dict(state), os.path.join(out_dir, WEIGHTS_FILE), metadata={"format": "pt"})
    hf_tokenizer.save_pretrained(out_dir)
    _name_tokenizer_class(out_dir)
    with open(os.path.join(out_dir, "README.md"), "w", encoding="utf-8") as f:
        f.write(card)
    return sorted(os.listdir(out_dir))


def _name_tokenizer_class(out_dir: str) -> None:
    """
    transformers 5 records its backend class `TokenizersBackend`, which transformers 4 (what
    lm-evaluation-harness or vLLM may run on) does not know; `PreTrainedTokenizerFast` is the
    same class in 5 and its ancestor in 4, so both load the folder.
    """
    path = os.path.join(out_dir, "tokenizer_config.json")
    config = _read_json(path)
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(path, "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)


def resolve_model_dir(model: str) -> str:
    """A local folder as is; otherwise a hub repo id, downloaded (config, weights, tokenizer) into the hub cache."""
    if os.path.isdir(model):
        return model
    if os.path.exists(model) or model.count("/") != 1:
        raise HFInteropError(f"{model!r} is neither a folder nor a hub repo id like 'owner/name'")
    hub = _require("huggingface_hub")
    try:
        return hub.snapshot_download(model, allow_patterns=["*.json", "*.safetensors", "*.jinja"])
    except Exception as e:  # not found, gated, offline: the hub raises many types
        raise HFInteropError(f"could not download {model!r} from the hub ({type(e).__name__}: {e})") from e


def _read_json(path: str) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError) as e:
        raise HFInteropError(f"could not read {path} ({type(e).__name__}: {e})") from e


def _load_weights(model_dir: str) -> dict[str, torch.Tensor]:
    safetensors_torch = _require("safetensors.torch")
    index = os.path.join(model_dir, WEIGHTS_INDEX_FILE)
    if os.path.isfile(index):
        files = sorted(set(_read_json(index)["weight_map"].values()))
    elif os.path.isfile(os.path.join(model_dir, WEIGHTS_FILE)):
        files = [WEIGHTS_FILE]
    else:
        raise HFInteropError(f"no {WEIGHTS_FILE} in {model_dir} (only safetensors weights are read)")
    state: dict[str, torch.Tensor] = {}
    for name in files:
        path = os.path.join(model_dir, name)
        try:
            state.update(safetensors_torch.load_file(path))
        except Exception as e:  # missing shard, truncated or corrupt file
            raise HFInteropError(f"could not read {path} ({type(e).__name__}: {e})") from e
    return state


def load_folder(model_dir: str) -> tuple[GPTConfig, dict[str, torch.Tensor], RustBPETokenizer]:
    """Read and check a transformers nanochat folder: our config, our state dict, our tokenizer."""
    config_path = os.path.join(model_dir, CONFIG_FILE)
    if not os.path.isfile(config_path):
        raise HFInteropError(f"no {CONFIG_FILE} in {model_dir}: not a transformers checkpoint")
    config = from_hf_config(_read_json(config_path), config_path)
    tokenizer_path = os.path.join(model_dir, HF_TOKENIZER_FILE)
    if not os.path.isfile(tokenizer_path):
        raise HFInteropError(f"no {HF_TOKENIZER_FILE} in {model_dir}: the model cannot be used without the tokenizer it was trained with")
    tokenizer = from_hf_tokenizer(_read_json(tokenizer_path), tokenizer_path)
    if tokenizer.get_vocab_size() != config.vocab_size:
        raise HFInteropError(
            f"vocab size mismatch: {config_path} says {config.vocab_size} but {tokenizer_path} has "
            f"{tokenizer.get_vocab_size()} tokens; our GPT needs them equal"
        )
    state = from_hf_state_dict(_load_weights(model_dir))
    with torch.device("meta"):  # shapes only, no memory
        expected = GPT(config).state_dict()
    wrong = sorted(set(expected) ^ set(state)) + [k for k in expected if k in state and state[k].shape != expected[k].shape]
    if wrong:
        raise HFInteropError(f"the weights in {model_dir} do not match its {CONFIG_FILE}: {wrong[:5]}{' ...' if len(wrong) > 5 else ''}")
    return config, state, tokenizer


def _same_tokenizer(a: RustBPETokenizer, b: RustBPETokenizer) -> bool:
    return _ranks_and_specials(a) == _ranks_and_specials(b) and a.enc._pat_str == b.enc._pat_str


def import_folder(model_dir: str, stage: str, model_tag: str | None = None) -> str:
    """
    Convert a transformers nanochat folder into a `stage` checkpoint (step 0) under the base dir,
    and its tokenizer into the base dir's tokenizer files. Everything is checked before anything
    is written. Returns the checkpoint folder.
    """
    if stage not in STAGES:
        raise HFInteropError(f"stage must be one of {sorted(STAGES)}, not {stage!r}")
    config, state, tokenizer = load_folder(model_dir)
    checkpoint_dir = checkpoint_dir_for(stage, model_tag or f"d{config.n_layer}")
    if os.path.isdir(checkpoint_dir) and any(n.startswith("meta_") for n in os.listdir(checkpoint_dir)):
        raise HFInteropError(f"{checkpoint_dir} already holds checkpoints; pick another --model_tag")
    tokenizer_dir = get_tokenizer_dir()
    try:
        existing = RustBPETokenizer.from_directory(tokenizer_dir)
    except TokenizerNotFoundError:
        existing = None
    if existing is not None and not _same_tokenizer(existing, tokenizer):
        raise HFInteropError(
            f"{tokenizer_dir} holds a different tokenizer (vocab {existing.get_vocab_size()}) that other checkpoints "
            "may need; import into a fresh base dir (set NANOCHAT_BASE_DIR)"
        )
    if existing is None:
        tokenizer.save(tokenizer_dir)
    meta = {"step": 0, "model_config": asdict(config), "imported_from": os.path.abspath(model_dir)}
    save_checkpoint(checkpoint_dir, 0, state, None, meta, rank=0)
    return checkpoint_dir


def push_folder(out_dir: str, repo_id: str, private: bool = False) -> str:
    """Upload an exported folder to the hub (creating the repo if needed); returns the repo's URL."""
    hub = _require("huggingface_hub")
    try:
        url = hub.create_repo(repo_id, private=private, exist_ok=True)
        hub.upload_folder(repo_id=repo_id, folder_path=out_dir, commit_message="Upload nanochat model")
    except Exception as e:  # auth, network, permissions: the hub raises many types
        raise HFInteropError(f"could not upload to {repo_id!r} ({type(e).__name__}: {e}); log in with `hf auth login`") from e
    return str(url)
