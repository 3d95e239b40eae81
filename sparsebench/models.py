"""The two architectures of the grid, at the sizes a budget asks for (archs.py registers them).

cnn: 3 conv layers (64, 128, 256 filters, 3x3, padding 1, ReLU, 2x2 max-pool each), then
     4096 -> 512 -> 10. The reference sizes, in every budget.
transformer: token embedding + learned positions, pre-norm encoder layers (attention with a
     padding mask, feed-forward), mean-pooled over real tokens into a 2-way classifier. Written
     out with plain nn.Linear layers (not nn.TransformerEncoderLayer, whose fused path reads the
     weights directly) so every projection can be sparsified.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn


@dataclass(frozen=True)
class TransformerSize:
    layers: int = 6
    heads: int = 8
    d_model: int = 512
    d_ff: int = 2048
    seq_len: int = 256
    vocab_size: int = 8192


REFERENCE_TRANSFORMER = TransformerSize()


class CNN(nn.Module):
    keep_dense = ("conv1", "fc2")  # first layer and classifier (sparsify's default rule, named)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 3, padding=1)
        self.conv2 = nn.Conv2d(64, 128, 3, padding=1)
        self.conv3 = nn.Conv2d(128, 256, 3, padding=1)
        self.fc1 = nn.Linear(256 * 4 * 4, 512)
        self.fc2 = nn.Linear(512, num_classes)

    def forward(self, x):
        for conv in (self.conv1, self.conv2, self.conv3):
            x = F.max_pool2d(F.relu(conv(x)), 2)
        return self.fc2(F.relu(self.fc1(x.flatten(1))))


class EncoderLayer(nn.Module):
    def __init__(self, size: TransformerSize):
        super().__init__()
        self.heads = size.heads
        self.norm1 = nn.LayerNorm(size.d_model)
        self.qkv = nn.Linear(size.d_model, 3 * size.d_model)
        self.proj = nn.Linear(size.d_model, size.d_model)
        self.norm2 = nn.LayerNorm(size.d_model)
        self.ff1 = nn.Linear(size.d_model, size.d_ff)
        self.ff2 = nn.Linear(size.d_ff, size.d_model)

    def forward(self, x, attn_mask):
        b, t, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask)
        x = x + self.proj(attended.transpose(1, 2).reshape(b, t, d))
        return x + self.ff2(F.gelu(self.ff1(self.norm2(x))))


class Transformer(nn.Module):
    keep_dense = ("classifier",)  # the first layer is the embedding, which is not pruned anyway

    def __init__(self, size: TransformerSize, num_classes: int = 2):
        super().__init__()
        self.embed = nn.Embedding(size.vocab_size, size.d_model, padding_idx=0)
        self.pos = nn.Parameter(torch.zeros(size.seq_len, size.d_model))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.ModuleList(EncoderLayer(size) for _ in range(size.layers))
        self.norm = nn.LayerNorm(size.d_model)
        self.classifier = nn.Linear(size.d_model, num_classes)

    def forward(self, tokens):
        real = tokens != 0  # id 0 is padding
        x = self.embed(tokens) + self.pos[: tokens.shape[1]]
        attn_mask = real[:, None, None, :]  # attend to real tokens only
        for layer in self.layers:
            x = layer(x, attn_mask)
        x = self.norm(x)
        pooled = (x * real[..., None]).sum(1) / real.sum(1, keepdim=True).clamp(min=1)
        return self.classifier(pooled)
