"""Reference outputs of Hugging Face transformers' BertModel for the hf_reference test.

Usage: hf_reference.py MODEL_DIR OUT.safetensors
Builds 300 titles of 3-40 words (seeded), tokenizes them with the model's tokenizer (max 30
tokens, as mtrec-prep does), runs BertModel in fp32 eval mode, and saves input ids, lengths and
the final hidden states.
"""
import random
import sys

import torch
from safetensors.torch import save_file
from transformers import AutoTokenizer, BertModel

model_dir, out = sys.argv[1], sys.argv[2]
rng = random.Random(7)
words = ("market election storm vaccine quarterback playoff recipe senator inflation hurricane "
         "streaming celebrity wildfire startup museum championship pandemic governor "
         "cryptocurrency Zürich naïve déjà-vu, 2019! O'Brien's U.S. self-driving").split()
titles = [" ".join(rng.choice(words) for _ in range(rng.randint(3, 40))) for _ in range(300)]
tok = AutoTokenizer.from_pretrained(model_dir)
enc = tok(titles, max_length=30, truncation=True, padding=True, return_tensors="pt")
model = BertModel.from_pretrained(model_dir, add_pooling_layer=False).eval()
with torch.no_grad():
    hidden = model(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"]).last_hidden_state
save_file({
    "input_ids": enc["input_ids"].to(torch.int64).contiguous(),
    "lengths": enc["attention_mask"].sum(1).to(torch.int64).contiguous(),
    "hidden": hidden.contiguous(),
}, out)
