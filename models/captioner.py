"""Seed 004's captioner: a GPT-2 decoder conditioned on frozen video-encoder hidden states.

tokens (B, L, D_enc) -> Linear -> (B, L, n_embd) "encoder hidden states" that every GPT-2 block
attends to through cross-attention (HF ``GPT2LMHeadModel`` with ``add_cross_attention``, the
VisionEncoderDecoder wiring). L = 1 with the encoder's CLS token alone, L = 1 + T*h*w with all
hidden states (``model.frame_tokens``) - the seed's two variants. Trained with cross-entropy on
the caption (teacher forcing, ``<|endoftext|>`` as BOS and EOS); captions are generated greedily
(``num_beams=1``) or by beam search, at most ``max_tokens`` tokens (the seed: 128).

Weights: GPT-2 from a local directory (transformers format, its own tokenizer) when given, else
a small randomly initialised GPT-2 (tests, the demo) with a byte-level tokenizer that needs no
vocabulary file (the 256 bytes of GPT-2's byte-level alphabet, no merges).
"""
from __future__ import annotations

import torch
from torch import nn


def byte_level_tokenizer():
    """GPT-2's byte-level pre-tokenisation with no merges: one token per UTF-8 byte + ``<|endoftext|>``
    (257 ids); any text round-trips."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers  # noqa: PLC0415
    from transformers import PreTrainedTokenizerFast  # noqa: PLC0415
    vocab = {c: i for i, c in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<|endoftext|>"] = len(vocab)
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>",
                                   pad_token="<|endoftext|>")


class GPT2Captioner(nn.Module):
    """(B, L, d_model) video tokens + captions -> cross-entropy (forward) or captions (generate).

    ``gpt2``: a local GPT-2 directory (transformers format) or None for a new one of ``n_layer``
    blocks of width ``n_embd`` (heads of 64 channels as GPT-2's; one head below 128). ``max_tokens``:
    longest caption, in tokens (longer training captions are truncated). ``num_classes`` is not
    used (captions, not classes). Raises FileNotFoundError for a missing directory.
    """

    def __init__(self, num_classes: int = 0, d_model: int = 576, gpt2: str | None = None, n_layer: int = 12,
                 n_embd: int = 768, max_tokens: int = 128, num_beams: int = 1):
        super().__init__()
        from transformers import AutoTokenizer, GPT2Config, GPT2LMHeadModel  # noqa: PLC0415
        if gpt2:
            from pathlib import Path  # noqa: PLC0415
            if not Path(gpt2).is_dir():
                raise FileNotFoundError(f"model.gpt2: {gpt2} is not a local GPT-2 directory")
            self.tokenizer = AutoTokenizer.from_pretrained(gpt2)
            self.tokenizer.pad_token = self.tokenizer.eos_token
            self.gpt = GPT2LMHeadModel.from_pretrained(gpt2, add_cross_attention=True)
        else:
            self.tokenizer = byte_level_tokenizer()
            eos = self.tokenizer.eos_token_id
            self.gpt = GPT2LMHeadModel(GPT2Config(
                vocab_size=len(self.tokenizer), n_positions=max_tokens + 2, n_embd=n_embd, n_layer=n_layer,
                n_head=max(1, n_embd // 64) if n_embd % 64 == 0 else 1, add_cross_attention=True, bos_token_id=eos, eos_token_id=eos, loss_type="ForCausalLM"))
        self.max_tokens, self.num_beams = max_tokens, num_beams
        width = self.gpt.config.n_embd
        self.in_dim, self.out_dim = d_model, width
        self.video_proj = nn.Linear(d_model, width)  # encoder width -> GPT-2 width

    def encode_captions(self, captions: list[str], device) -> tuple[torch.Tensor, torch.Tensor]:
        """Captions -> (ids (B, 1 + n + 1), mask (B, 1 + n + 1)): ``<|endoftext|>`` caption ``<|endoftext|>``,
        right-padded; at most ``max_tokens`` caption tokens."""
        eos = self.tokenizer.eos_token_id
        seqs = [[eos] + self.tokenizer(c, add_special_tokens=False)["input_ids"][: self.max_tokens] + [eos]
                for c in captions]
        n = max(len(s) for s in seqs)
        ids = torch.full((len(seqs), n), eos, dtype=torch.long)
        mask = torch.zeros(len(seqs), n, dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)], mask[i, : len(s)] = torch.tensor(s), 1
        return ids.to(device), mask.to(device)

    def forward(self, x: torch.Tensor, grid=None, captions: list[str] | None = None) -> torch.Tensor:
        """Mean cross-entropy (nats per caption token, EOS included) of ``captions`` given x (B, L, d_model)."""
        if captions is None:
            raise ValueError("GPT2Captioner.forward needs captions (a training or validation batch)")
        ids, mask = self.encode_captions(captions, x.device)  # (B, n)
        labels = ids.masked_fill(mask == 0, -100)
        labels[:, 0] = -100  # BOS is given, not predicted
        video = self.video_proj(x.to(self.video_proj.weight.dtype))  # (B, L, n_embd)
        return self.gpt(input_ids=ids, attention_mask=mask, encoder_hidden_states=video, labels=labels).loss

    def forward_features(self, x: torch.Tensor, grid=None) -> torch.Tensor:
        return self.video_proj(x).mean(1)  # (B, n_embd)

    @torch.no_grad()
    def generate(self, x: torch.Tensor, num_beams: int | None = None, max_tokens: int | None = None) -> list[str]:
        """Captions of x (B, L, d_model): greedy (``num_beams`` 1) or beam search, at most ``max_tokens``."""
        video = self.video_proj(x.to(self.video_proj.weight.dtype))  # (B, L, n_embd)
        eos = self.tokenizer.eos_token_id
        bos = torch.full((x.shape[0], 1), eos, dtype=torch.long, device=x.device)
        out = self.gpt.generate(input_ids=bos, attention_mask=torch.ones_like(bos), encoder_hidden_states=video,
                                max_new_tokens=max_tokens or self.max_tokens, num_beams=num_beams or self.num_beams,
                                do_sample=False, eos_token_id=eos, pad_token_id=eos)  # (B, 1 + n)
        return [s.strip() for s in self.tokenizer.batch_decode(out[:, 1:], skip_special_tokens=True)]
