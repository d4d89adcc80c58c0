"""Text encoders: prompt strings -> padded token features and a mask.

The released Infinity models read Flan-T5-XL features (2048 wide); tiny models read a small word-level
encoder trained with them. Generators call `encode` once per new prompt and cache the result.
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn

from ..core.errors import MissingFileError


class TextEncoder(ABC):
    """Called by a generator's `start` with the prompts of new rows."""

    dim: int  # feature width

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """-> (features [B,T,dim] float32, mask [B,T] bool, True on real tokens; every row has >= 1 token)."""

    def check_prompt(self, prompt: str) -> None:
        """Raise ValueError naming the problem if `prompt` cannot be encoded faithfully (unknown words, more
        tokens than the encoder reads). The default accepts everything."""
        return None


class T5TextEncoder(TextEncoder):
    """Flan-T5 encoder from a local Hugging Face directory (config, weights and tokenizer files)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu", dtype: torch.dtype | None = None,
                 max_length: int = 512):
        path = Path(path).expanduser()
        if not (path / "config.json").is_file():
            raise MissingFileError(
                f"no T5 encoder at {path}: expected a local Hugging Face directory with config.json, the "
                "weights (model.safetensors) and the tokenizer files of google/flan-t5-xl")
        if not any((path / f).is_file() for f in ("spiece.model", "tokenizer.json")):
            # without them transformers builds an empty tokenizer: every word becomes <unk> and the images
            # stop depending on the prompt, with no error
            raise MissingFileError(
                f"the T5 encoder at {path} has no tokenizer files (spiece.model or tokenizer.json): copy them "
                "from google/flan-t5-xl into the folder (save_pretrained of the encoder alone leaves them out)")
        from transformers import AutoTokenizer, T5EncoderModel

        self.device = torch.device(device)
        dtype = dtype or (torch.float16 if self.device.type == "cuda" else torch.float32)
        self.tokenizer = AutoTokenizer.from_pretrained(str(path), local_files_only=True)
        self.model = T5EncoderModel.from_pretrained(str(path), torch_dtype=dtype, local_files_only=True,
                                                    use_safetensors=None).to(self.device).eval()
        self.dim = self.model.config.d_model
        self.max_length = max_length
        if len(self.tokenizer) < self.model.config.vocab_size // 2:
            raise MissingFileError(
                f"the tokenizer in {path} has {len(self.tokenizer)} tokens for a T5 of {self.model.config.vocab_size}:"
                " it is not flan-t5's tokenizer (or an empty one); copy spiece.model / tokenizer.json from "
                "google/flan-t5-xl")

    def check_prompt(self, prompt: str) -> None:
        n = len(self.tokenizer(prompt, truncation=False).input_ids)
        if n > self.max_length:
            raise ValueError(f"needs {n} tokens, more than the {self.max_length} the text encoder reads "
                             "(the rest would be cut off)")

    @torch.inference_mode()
    def encode(self, prompts):
        tok = self.tokenizer(list(prompts), max_length=self.max_length, padding="longest", truncation=True,
                             return_tensors="pt")
        ids, mask = tok.input_ids.to(self.device), tok.attention_mask.to(self.device)
        feats = self.model(input_ids=ids, attention_mask=mask)["last_hidden_state"].float()
        return feats, mask.bool()


def words(prompt: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", prompt.lower())


@dataclass
class WordEncoderConfig:
    vocab: tuple[str, ...] = ()  # known words; id 0 is padding, id 1 unknown, word i -> i + 2
    dim: int = 64
    depth: int = 2
    num_heads: int = 4
    max_len: int = 16


class WordTextEncoder(nn.Module, TextEncoder):
    """A small transformer over a closed word vocabulary (for tiny models such as the testbed's)."""

    def __init__(self, config: WordEncoderConfig):
        super().__init__()
        self.config = config
        self.dim = config.dim
        self.index = {w: i + 2 for i, w in enumerate(config.vocab)}
        self.tok_embed = nn.Embedding(len(config.vocab) + 2, config.dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, config.max_len, config.dim))
        nn.init.normal_(self.pos_embed, std=0.02)
        layer = nn.TransformerEncoderLayer(config.dim, config.num_heads, 4 * config.dim, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, config.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(config.dim)

    def check_prompt(self, prompt: str) -> None:
        ws = words(prompt)
        if not ws:
            raise ValueError("has no words (letters or digits)")
        if self.config.vocab:  # an empty vocabulary (a random test encoder) reads any word as unknown
            unknown = sorted({w for w in ws if w not in self.index})
            if unknown:
                known = list(self.config.vocab)
                shown = ", ".join(known[:40]) + (", ..." if len(known) > 40 else "")
                raise ValueError(f"words the text encoder does not know: {unknown}; it knows: {shown}")
        if len(ws) > self.config.max_len:
            raise ValueError(f"has {len(ws)} words, more than the {self.config.max_len} the text encoder reads")

    def tokenize(self, prompts: Sequence[str]) -> torch.Tensor:
        rows = []
        for p in prompts:
            ids = [self.index.get(w, 1) for w in words(p)][: self.config.max_len] or [1]
            rows.append(ids)
        T = max(len(r) for r in rows)
        out = torch.zeros(len(rows), T, dtype=torch.long)
        for i, r in enumerate(rows):
            out[i, : len(r)] = torch.tensor(r)
        return out

    def forward(self, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        mask = ids != 0
        x = self.tok_embed(ids) + self.pos_embed[:, : ids.shape[1]]
        x = self.encoder(x, src_key_padding_mask=~mask)
        return self.norm(x), mask

    def encode(self, prompts):
        dev = self.tok_embed.weight.device
        with torch.inference_mode():
            feats, mask = self(self.tokenize(prompts).to(dev))
        return feats.float(), mask
