"""GGUF -> Hugging Face directory, run as ``python -m labkit._convert SRC.gguf OUT_DIR``.

transformers dequantizes a GGUF on load, but the loaded model refuses ``save_pretrained``
while it still carries the GGUF quantization config. So the state dict is copied into a
plain model built from the same config and that one is saved, in bf16, with the tokenizer
(whose chat template comes from the GGUF metadata).
"""

from __future__ import annotations

import sys
from pathlib import Path


def convert(src: Path, out: Path) -> None:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder, name = str(src.parent), src.name
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    loaded = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    config = AutoConfig.from_pretrained(folder, gguf_file=name)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.torch_dtype = torch.bfloat16
    plain = AutoModelForCausalLM.from_config(config, torch_dtype=torch.bfloat16)
    plain.load_state_dict(loaded.state_dict())
    plain.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    if not (out / "generation_config.json").exists():
        plain.generation_config.save_pretrained(out)


if __name__ == "__main__":
    convert(Path(sys.argv[1]), Path(sys.argv[2]))
