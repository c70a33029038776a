"""A tiny random-weight ModernBERT in sentence-transformers format, built offline.

It has the production model's architecture (ModernBERT, no token_type_ids) and pooling (CLS,
no Normalize module), so the export code path of redis/langcache-embed-v1 is covered without
the hub. The tokenizer is a WordPiece trained here on QQP questions.
"""

from __future__ import annotations

import json
from pathlib import Path

from bench.qqp import load_pairs


def build_tiny_modernbert(target: Path, seed: int = 7) -> Path:
    import torch
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.models import Pooling, Transformer
    from tokenizers import Tokenizer, normalizers, pre_tokenizers, processors, trainers
    from tokenizers.models import WordPiece
    from transformers import ModernBertConfig, ModernBertModel, PreTrainedTokenizerFast

    texts = [t for p in load_pairs(3000) for t in (p.text_a, p.text_b)]
    tokenizer = Tokenizer(WordPiece(unk_token="[UNK]"))
    tokenizer.normalizer = normalizers.BertNormalizer(lowercase=True)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tokenizer.train_from_iterator(
        texts, trainers.WordPieceTrainer(vocab_size=3000, special_tokens=specials)
    )
    cls_id, sep_id = tokenizer.token_to_id("[CLS]"), tokenizer.token_to_id("[SEP]")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]",
        pair="[CLS] $A [SEP] $B [SEP]",
        special_tokens=[("[CLS]", cls_id), ("[SEP]", sep_id)],
    )
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token="[PAD]",
        unk_token="[UNK]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=512,
        model_input_names=["input_ids", "attention_mask"],
    )
    torch.manual_seed(seed)
    config = ModernBertConfig(
        vocab_size=tokenizer.get_vocab_size(),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=512,
        pad_token_id=tokenizer.token_to_id("[PAD]"),
        cls_token_id=cls_id,
        sep_token_id=sep_id,
        bos_token_id=cls_id,
        eos_token_id=sep_id,
        global_attn_every_n_layers=1,
    )
    hf_dir = target / "hf"
    ModernBertModel(config).save_pretrained(hf_dir)
    fast.save_pretrained(hf_dir)
    transformer = Transformer(str(hf_dir), max_seq_length=128)
    pooling = Pooling(transformer.get_word_embedding_dimension(), pooling_mode="cls")
    st_dir = target / "tiny-modernbert"
    SentenceTransformer(modules=[transformer, pooling], device="cpu").save(str(st_dir))
    modules = json.loads((st_dir / "modules.json").read_text())
    assert [m["type"].rsplit(".", 1)[-1] for m in modules] == ["Transformer", "Pooling"]
    return st_dir
