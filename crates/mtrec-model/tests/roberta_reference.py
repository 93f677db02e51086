"""Tiny random RoBERTa and XLM-RoBERTa model folders, made offline, and transformers' outputs on them.

Usage: roberta_reference.py OUT_DIR
For each of `roberta` (a byte-level BPE tokenizer) and `xlm-roberta` (a Unigram tokenizer with
SentencePiece's Metaspace), both trained by the `tokenizers` package on seeded synthetic text:
OUT_DIR/<kind>/ holds config.json, model.safetensors (random init, `save_pretrained`) and
tokenizer.json; OUT_DIR/<kind>.safetensors the reference: input ids of 300 titles as the fast
tokenizer gives them (max 30 tokens, as mtrec-prep), their lengths and the model's final hidden
states (fp32, eval mode); OUT_DIR/titles.json the titles.
"""
import json
import os
import random
import sys

import torch
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import (AutoModel, AutoTokenizer, PreTrainedTokenizerFast, RobertaConfig, RobertaModel,
                          XLMRobertaConfig, XLMRobertaModel)

out = sys.argv[1]
rng = random.Random(11)
words = ("market election storm vaccine quarterback playoff recipe senator inflation hurricane "
         "streaming celebrity wildfire startup museum championship pandemic governor "
         "cryptocurrency Zürich naïve déjà-vu, 2019! O'Brien's U.S. self-driving Straße "
         "habari za leo uchaguzi mvua kubwa").split()
corpus = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 25))) for _ in range(3000)]
titles = [" ".join(rng.choice(words) for _ in range(rng.randint(1, 40))) for _ in range(300)]
specials = ["<s>", "<pad>", "</s>", "<unk>", "<mask>"]


def bpe():
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(corpus, trainers.BpeTrainer(
        vocab_size=400, special_tokens=specials, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    tok.post_processor = processors.RobertaProcessing(
        ("</s>", tok.token_to_id("</s>")), ("<s>", tok.token_to_id("<s>")), trim_offsets=True)
    return tok


def unigram():
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Metaspace()
    tok.train_from_iterator(corpus, trainers.UnigramTrainer(
        vocab_size=300, special_tokens=specials, unk_token="<unk>"))
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", tok.token_to_id("<s>")), ("</s>", tok.token_to_id("</s>"))])
    return tok


kinds = {
    "roberta": (bpe, RobertaConfig, RobertaModel),
    "xlm-roberta": (unigram, XLMRobertaConfig, XLMRobertaModel),
}
for kind, (make_tokenizer, config_class, model_class) in kinds.items():
    folder = os.path.join(out, kind)
    raw = make_tokenizer()
    fast = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>", unk_token="<unk>",
                                   pad_token="<pad>", mask_token="<mask>", cls_token="<s>", sep_token="</s>")
    fast.save_pretrained(folder)
    torch.manual_seed(5)
    config = config_class(vocab_size=raw.get_vocab_size(), hidden_size=32, num_hidden_layers=2,
                          num_attention_heads=4, intermediate_size=64, max_position_embeddings=40,
                          type_vocab_size=1, pad_token_id=fast.pad_token_id, bos_token_id=fast.bos_token_id,
                          eos_token_id=fast.eos_token_id, layer_norm_eps=1e-5)
    model = model_class(config, add_pooling_layer=False).eval()
    # Non-zero LayerNorm and bias parameters, so that a wrong epsilon or a skipped bias shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias") or "LayerNorm" in name:
                p.add_(torch.randn_like(p) * 0.1)
    model.save_pretrained(folder, safe_serialization=True)

    tokenizer = AutoTokenizer.from_pretrained(folder)
    reloaded = AutoModel.from_pretrained(folder, add_pooling_layer=False).eval()
    enc = tokenizer(titles, max_length=30, truncation=True, padding=True, return_tensors="pt")
    with torch.no_grad():
        hidden = reloaded(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
    save_file({
        "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
        "lengths": enc["attention_mask"].sum(1).to(torch.int64).contiguous(),
        "hidden": hidden.contiguous(),
    }, os.path.join(out, kind + ".safetensors"))
with open(os.path.join(out, "titles.json"), "w", encoding="utf-8") as f:
    json.dump(titles, f, ensure_ascii=False)
