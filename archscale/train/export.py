"""``archscale export RUN_DIR --out OUT``: a trained run as a Hugging Face Llama (or Mixtral) checkpoint.

The model's module names already follow ``LlamaForCausalLM``; export adds the
``model.`` prefix (the output head stays ``lm_head.weight``, and is left out
when tied, as transformers saves it) and writes ``config.json`` plus
``model.safetensors``. An MoE run is written as Mixtral checkpoints on the Hub
are: ``block_sparse_moe.gate`` for the router and ``block_sparse_moe.experts.{j}.w1/w2/w3``
(gate, down, up) per expert, split from the model's stacked expert tensors;
transformers (which fuses them on load) and vLLM both read that layout.

The safetensors format is small enough to write by hand (8-byte little-endian
header length, a JSON header of name -> dtype/shape/byte range, then the raw
little-endian bytes), so exporting needs no extra package; :func:`read_safetensors`
reads it back for tests and tools.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Mapping

import torch

from archscale.io.errors import UserError, keep_hint
from archscale.io.files import atomic_file, removed_on_failure, write_json
from archscale.io.units import parse_dtype
from archscale.shapes.architecture import Architecture
from archscale.shapes.hf_config import require_bundled_model
from archscale.train.checkpoint import checkpoint_path, load_checkpoint
from archscale.train.config import CONFIG_FILE
from archscale.shapes.hf_config import architecture_from_config

SAFETENSORS_FILE = "model.safetensors"
_DTYPES = {torch.float32: "F32", torch.bfloat16: "BF16", torch.float16: "F16", torch.int64: "I64", torch.int32: "I32"}
_FROM_NAME = {name: dtype for dtype, name in _DTYPES.items()}


MIXTRAL_EXPERT_NAMES = {"gate_proj": "w1", "down_proj": "w2", "up_proj": "w3"}
"""archscale's stacked expert tensors -> the names of Mixtral's per-expert matrices."""


def hf_state_dict(state: Mapping[str, torch.Tensor], tied: bool) -> dict[str, torch.Tensor]:
    """archscale parameter names -> HF Llama names (``model.`` prefix, ``lm_head`` as is); an MoE layer's router
    and stacked experts -> Mixtral's ``block_sparse_moe`` names, one matrix per expert."""
    out = {}
    for name, tensor in state.items():
        if name == "lm_head.weight":
            if not tied:
                out[name] = tensor
        elif ".mlp.experts." in name:  # layers.{i}.mlp.experts.gate_proj, (E, F, d)
            block, _, kind = name.rpartition(".experts.")
            moe = block.removesuffix(".mlp") + ".block_sparse_moe"
            for expert, matrix in enumerate(tensor.unbind(0)):
                out[f"model.{moe}.experts.{expert}.{MIXTRAL_EXPERT_NAMES[kind]}.weight"] = matrix
        elif name.endswith(".mlp.gate.weight"):  # the router
            out[f"model.{name.removesuffix('.mlp.gate.weight')}.block_sparse_moe.gate.weight"] = tensor
        else:
            out[f"model.{name}"] = tensor
    return out


def write_safetensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str] | None = None) -> None:
    """Write ``tensors`` in the safetensors format (atomically: temp file then rename)."""
    header: dict[str, object] = {"__metadata__": dict(metadata or {"format": "pt"})}
    blobs, offset = [], 0
    for name in sorted(tensors):
        tensor = tensors[name].detach().cpu().contiguous()
        if tensor.dtype not in _DTYPES:
            raise ValueError(f"safetensors writer: unsupported dtype {tensor.dtype} for {name}")
        raw = tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b""
        header[name] = {"dtype": _DTYPES[tensor.dtype], "shape": list(tensor.shape), "data_offsets": [offset, offset + len(raw)]}
        blobs.append(raw)
        offset += len(raw)
    encoded = json.dumps(header, separators=(",", ":")).encode()
    encoded += b" " * (-len(encoded) % 8)  # the data section starts 8-byte aligned
    with atomic_file(path, "wb") as out:
        out.write(struct.pack("<Q", len(encoded)))
        out.write(encoded)
        for raw in blobs:
            out.write(raw)


def read_safetensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a safetensors file (any writer) into CPU tensors."""
    data = Path(path).read_bytes()
    (length,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8 : 8 + length])
    base = 8 + length
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        start, end = info["data_offsets"]
        dtype = _FROM_NAME[info["dtype"]]
        flat = torch.frombuffer(bytearray(data[base + start : base + end]), dtype=torch.uint8) if end > start else torch.empty(0, dtype=torch.uint8)
        tensors[name] = flat.view(dtype).reshape(info["shape"])
    return tensors


def require_transformers_loadable(hf_config: Mapping, run_dir: Path) -> Architecture:
    """Refuse, before writing anything, a checkpoint that neither transformers nor vLLM would load as the model it
    names: a shape transformers' Llama refuses, or a config whose model the bundled model is not (shared experts,
    RoPE scaling, biases, ...: :func:`~archscale.shapes.hf_config.require_bundled_model`; a run trained before train
    refused them still holds one)."""
    source = str(run_dir / CONFIG_FILE)
    arch = architecture_from_config(hf_config, source=source)
    require_bundled_model(dict(hf_config), arch, source)
    if not arch.transformers_loadable:
        raise UserError(f"{run_dir}: hidden_size {arch.d_model} is not a multiple of num_attention_heads {arch.n_heads}, "
                        "and transformers (and vLLM, which loads configs through it) refuse such a Llama config, so "
                        "nothing was exported; for a loadable shape, search with --strict-hf (the default with --emit) "
                        "and train that")
    return arch


def require_checkpoint_is_config(weights: Mapping[str, torch.Tensor], hf_config: Mapping, arch: Architecture,
                                 run_dir: Path) -> None:
    """Refuse a checkpoint whose tensors are not the model its config describes (names and shapes), before writing.

    A run's config is saved beside its weights, so they agree unless one was edited: a config changed to
    Mixtral's over a dense run's weights would otherwise export as a model with no experts to load.
    """
    from archscale.model.transformer import Transformer

    with torch.device("meta"):  # shapes only: nothing is allocated
        expected = {name: tuple(t.shape) for name, t in Transformer(arch, max_seq_len=1).state_dict().items()}
    held = {name: tuple(t.shape) for name, t in weights.items()}
    if held == expected:
        return
    missing = sorted(set(expected) - set(held))
    extra = sorted(set(held) - set(expected))
    resized = sorted(name for name in set(held) & set(expected) if held[name] != expected[name])
    detail = (f"it lacks {missing[0]}" if missing else f"it has {extra[0]}, which the config's model has not" if extra
              else f"{resized[0]} is {held[resized[0]]}, the config's model has {expected[resized[0]]}")
    shape = (f"{_experts_key(hf_config)} {arch.n_experts}, num_experts_per_tok {arch.experts_per_token}"
             if arch.is_moe else "a dense model")
    raise UserError(f"{run_dir}: the checkpoint's weights are not the model its config describes ({shape}): {detail}; "
                    "nothing was exported (was the run's config edited? export the run as it was trained)")


def _experts_key(hf_config: Mapping) -> str:
    """The config's spelling of the expert count."""
    return "num_local_experts" if "num_local_experts" in hf_config else "num_experts"


def check_export_dir(out_dir: Path) -> None:
    """Refuse an ``--out`` that already holds files, as ``train`` refuses one holding a run: an export replaces
    nothing (a mix of two exports' files would load as neither)."""
    if out_dir.is_dir():
        held = sorted(entry.name for entry in out_dir.iterdir())
        if held:
            shown = ", ".join(held[:3]) + (f" and {len(held) - 3} more" if len(held) > 3 else "")
            raise UserError(f"--out {out_dir}: already holds files ({shown}); choose another --out or empty it first")


def export_hf(run_dir: str | Path, out_dir: str | Path, dtype: str = "float32") -> Path:
    """Export a run's latest checkpoint to ``out_dir`` (``config.json`` + ``model.safetensors``).

    ``out_dir`` is new or empty; a failed write (a full disk) leaves it as it was (:func:`removed_on_failure`).
    """
    run_dir, out_dir = Path(run_dir), Path(out_dir)
    dtype = parse_dtype(dtype)
    check_export_dir(out_dir)
    if not run_dir.exists():
        raise UserError(f"{run_dir}: no such folder; give the run directory a training wrote (archscale train --out)")
    if not run_dir.is_dir():
        raise UserError(f"{run_dir}: is a file, not a folder; give the run directory (archscale train --out), not a "
                        "file in it")
    if not checkpoint_path(run_dir).exists():
        raise UserError(f"{run_dir}: no {checkpoint_path(run_dir).name}; is it a run directory (archscale train --out)?")
    state = load_checkpoint(checkpoint_path(run_dir))
    hf_config = dict(state["hf_config"])
    arch = require_transformers_loadable(hf_config, run_dir)
    require_checkpoint_is_config(state["model"], hf_config, arch, run_dir)
    torch_dtype = getattr(torch, dtype)
    tied = arch.tie_embeddings  # the config's, or its model type's default: what the reader counted
    tensors = {k: v.to(torch_dtype) for k, v in hf_state_dict(state["model"], tied).items()}
    hf_config["torch_dtype"] = dtype
    with keep_hint("nothing was exported; fix that and run it again"), \
            removed_on_failure(out_dir):
        write_safetensors(out_dir / SAFETENSORS_FILE, tensors, {"format": "pt"})
        write_json(out_dir / CONFIG_FILE, hf_config)
    return out_dir / SAFETENSORS_FILE
