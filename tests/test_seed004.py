"""Seed 004's systems: the VideoMamba video encoder, the MLP head over its hidden states.

References: the bidirectional mixer against a sequential recurrence written out step by step
(Mamba's selective scan, one direction on the time-reversed sequence); a checkpoint written to a
file in VideoMamba's layout and read back; the weighted average against its formula.
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from s5video.models.encoders import create_encoder
from s5video.models.heads import MLPHead
from s5video.models.videomamba import BiMamba, VideoMamba


def _direction_by_recurrence(m: BiMamba, x: torch.Tensor, z: torch.Tensor, sfx: str) -> torch.Tensor:
    """One direction of the mixer, step by step: causal depthwise conv as a sum over past taps,
    then h_t = exp(dt_t A) h_{t-1} + dt_t B_t x_t, y_t = C_t h_t + D x_t, gated by SiLU(z_t)."""
    conv, xp, dtp = getattr(m, f"conv1d{sfx}"), getattr(m, f"x_proj{sfx}"), getattr(m, f"dt_proj{sfx}")
    A = -torch.exp(getattr(m, "A_log" if not sfx else "A_b_log"))  # (E, N)
    D = getattr(m, f"D{sfx}")
    Bsz, L, E = x.shape
    K = conv.weight.shape[-1]
    h = torch.zeros(Bsz, E, A.shape[1])
    ys = []
    for t in range(L):
        u = conv.bias.clone().expand(Bsz, E).clone()
        for k in range(K):  # tap k sees x_{t - (K - 1 - k)}
            s = t - (K - 1 - k)
            if s >= 0:
                u = u + conv.weight[:, 0, k] * x[:, s]
        u = F.silu(u)  # (B, E)
        dt, Bt, Ct = xp(u).split([m.dt_rank, m.d_state, m.d_state], -1)
        dt = F.softplus(dtp(dt))  # (B, E)
        h = torch.exp(dt[..., None] * A) * h + dt[..., None] * Bt[:, None, :] * u[..., None]  # (B, E, N)
        ys.append(((h * Ct[:, None, :]).sum(-1) + D * u) * F.silu(z[:, t]))
    return torch.stack(ys, 1)  # (B, L, E)


def test_bidirectional_mixer_equals_the_sequential_recurrence():
    torch.manual_seed(0)
    m = BiMamba(d_model=8, d_state=4)
    with torch.no_grad():  # both directions different, so a swapped branch would show
        for p in (m.A_b_log, m.D_b, m.conv1d_b.weight):
            p.mul_(1.5)
    h = torch.randn(2, 9, 8)
    with torch.no_grad():
        x, z = m.in_proj(h).chunk(2, -1)
        fwd = _direction_by_recurrence(m, x, z, "")
        bwd = _direction_by_recurrence(m, x.flip(1), z.flip(1), "_b").flip(1)
        ref = m.out_proj(fwd + bwd)
        out = m(h)
    assert torch.allclose(out, ref, atol=1e-5), (out - ref).abs().max()
    # the last token's output depends on the first token through the backward branch only
    h2 = h.clone()
    h2[:, -1] += 1.0
    with torch.no_grad():
        assert not torch.allclose(m(h2)[:, 0], out[:, 0])


def test_videomamba_tokens_and_a_checkpoint_in_its_layout(tmp_path):
    torch.manual_seed(0)
    video = torch.randn(2, 4, 3, 32, 48)  # (B, T, 3, H, W): a 2 x 3 patch grid per frame
    enc = create_encoder("videomamba_debug", None, "cls+patch")
    hidden, grid = enc(video)
    assert hidden.shape == (2, 1 + 4 * 2 * 3, 32) and grid is None
    cls, _ = create_encoder("videomamba_debug", None, "cls")(video)
    patch, pgrid = create_encoder("videomamba_debug", None, "patch")(video)
    assert torch.equal(cls, hidden[:, :1]) and torch.equal(patch, hidden[:, 1:]) and pgrid == (4, 2, 3)

    # a checkpoint as VideoMamba's training code saves it: {"model": state dict with a head}, 8 frames
    src = VideoMamba(32, 2, d_state=8, num_frames=8)
    sd = {**src.state_dict(), "head.weight": torch.zeros(400, 32), "head.bias": torch.zeros(400)}
    torch.save({"model": sd}, tmp_path / "vm.pth")
    loaded = create_encoder("videomamba_debug", str(tmp_path / "vm.pth"), "cls+patch")
    ref = src.eval()(video)  # its own 8 temporal embeddings, interpolated to the 4 frames of the clip
    assert torch.allclose(loaded(video)[0], ref, atol=1e-5)
    for k, v in src.state_dict().items():
        if k != "temporal_pos_embedding":
            assert torch.equal(loaded.net.state_dict()[k], v), k

    torch.save({"model": VideoMamba(48, 2, d_state=8).state_dict()}, tmp_path / "wide.pth")
    with pytest.raises(ValueError, match="model.encoder_weights: .*wide.pth"):
        create_encoder("videomamba_debug", str(tmp_path / "wide.pth"), "cls")


def test_mlp_head_weighted_average_of_hidden_states():
    torch.manual_seed(0)
    head = MLPHead(num_classes=3, d_model=6, hidden=(8, 8), dropout=0.7).eval()
    with torch.no_grad():
        head.pool.score.weight.normal_()
    x = torch.randn(2, 5, 6)  # (B, L, D)
    a = torch.softmax(x @ head.pool.score.weight[0] + head.pool.score.bias, dim=1)  # (B, L)
    assert torch.allclose(head.pool(x), (a[..., None] * x).sum(1), atol=1e-6)
    assert torch.allclose(head.pool(x[:, :1]), x[:, 0])  # CLS only: the token itself
    assert head(x).shape == (2, 3) and not any(isinstance(m, torch.nn.LayerNorm) for m in head.modules())
    assert sum(isinstance(m, torch.nn.Dropout) and m.p == 0.7 for m in head.modules()) == 2


def _grams(s: str, n: int):
    """The word n-grams of ``s`` with their counts."""
    from collections import Counter
    w = s.split()
    return Counter(tuple(w[i:i + n]) for i in range(len(w) - n + 1))


def test_caption_metrics_equal_their_formulas():
    """BLEU-n = BP x geometric mean of clipped 1..n-gram precisions over the corpus; ROUGE-n F = the
    harmonic mean of n-gram recall and precision, averaged over captions (sentences lower-case,
    no punctuation, so tokenisers agree)."""
    import math

    from s5video.trainer.evaluate import caption_metrics
    hyps = ["a person opens a box", "a man is sitting on the sofa"]
    refs = ["a person opens a box on the table", "a man sits on the sofa"]

    def bleu(n):
        logp = 0.0
        for k in range(1, n + 1):
            match = sum(sum((_grams(h, k) & _grams(r, k)).values()) for h, r in zip(hyps, refs))
            total = sum(sum(_grams(h, k).values()) for h in hyps)
            logp += math.log(match / total) / n
        c, r = sum(len(h.split()) for h in hyps), sum(len(r.split()) for r in refs)
        return min(1.0, math.exp(1 - r / c)) * math.exp(logp)

    def rouge(n):
        f = []
        for h, r in zip(hyps, refs):
            m = sum((_grams(h, n) & _grams(r, n)).values())
            p, rc = m / sum(_grams(h, n).values()), m / sum(_grams(r, n).values())
            f.append(0.0 if m == 0 else 2 * p * rc / (p + rc))
        return sum(f) / len(f)

    m = caption_metrics(hyps, [[r] for r in refs])
    for n in range(1, 5):
        assert m[f"bleu{n}"] == pytest.approx(bleu(n), rel=1e-6), n
    assert m["rouge1_f"] == pytest.approx(rouge(1)) and m["rouge2_f"] == pytest.approx(rouge(2))


@pytest.mark.parametrize("frame_tokens, length", [("cls", 1), ("cls+patch", 9)])
def test_gpt2_captioner_learns_captions_and_decodes_them_greedy_and_by_beam(frame_tokens, length):
    """Video tokens (B, L, D) of two clips -> their captions after training, by greedy decoding and
    by beam search; L = 1 (CLS only) or all hidden states, through cross-attention."""
    from s5video.models.registry import create_model
    torch.manual_seed(0)
    model = create_model("gpt2_captioner_debug", d_model=16, max_tokens=32)
    assert len(model.tokenizer) == 257 and model.gpt.config.add_cross_attention
    x = torch.randn(2, length, 16)
    captions = ["a person opens a box.", "two dogs run on grass."]
    opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
    for _ in range(200):
        loss = model(x, captions=captions)
        opt.zero_grad()
        loss.backward()
        opt.step()
    model.eval()
    assert loss.item() < 0.1
    assert model.generate(x) == captions
    assert model.generate(x, num_beams=3) == captions
    assert len(model.generate(x, max_tokens=5)[0]) <= 5  # byte-level: 5 tokens = at most 5 characters


def test_caption_metrics_score_against_every_reference():
    """Several references per caption (Charades: one per annotator): BLEU clips each n-gram by its
    largest count in any reference and takes the reference length closest to the hypothesis;
    ROUGE takes the best reference - both transcribed here from Papineni et al. 2002 / rouge-score."""
    import math
    from collections import Counter

    from s5video.trainer.evaluate import caption_metrics
    hyps = ["a person opens a box", "a man is sitting on the sofa"]
    refs = [["a person opens the door", "someone opens a box on the table"], ["a man sits on the sofa"]]

    def bleu(n):
        logp = 0.0
        for k in range(1, n + 1):
            match = 0
            for h, rs in zip(hyps, refs):
                best = Counter()
                for r in rs:
                    best |= _grams(r, k)  # the largest count of each n-gram in any reference
                match += sum((_grams(h, k) & best).values())
            total = sum(sum(_grams(h, k).values()) for h in hyps)
            logp += math.log(match / total) / n
        c = sum(len(h.split()) for h in hyps)
        r = sum(min((len(x.split()) for x in rs), key=lambda L: (abs(L - len(h.split())), L))
                for h, rs in zip(hyps, refs))
        return min(1.0, math.exp(1 - r / c)) * math.exp(logp)

    def rouge1(h, r):
        m = sum((_grams(h, 1) & _grams(r, 1)).values())
        p, rc = m / len(h.split()), m / len(r.split())
        return 0.0 if m == 0 else 2 * p * rc / (p + rc)

    m = caption_metrics(hyps, refs)
    for n in (1, 2):
        assert m[f"bleu{n}"] == pytest.approx(bleu(n), rel=1e-6), n
    assert m["rouge1_f"] == pytest.approx(sum(max(rouge1(h, r) for r in rs) for h, rs in zip(hyps, refs)) / 2)
    assert m["bleu1"] > caption_metrics(hyps, [[rs[0]] for rs in refs])["bleu1"]  # the second reference counts


def test_charades_map_is_the_official_evaluator():
    """trainer.evaluate.charades_map against Charades_v1_classify.m's THUMOSeventclspr transcribed
    here: per class, sort by -score, precision at each rank, AP = sum of the precisions at the
    positives / number of positives; classes without a positive are not averaged (and counted)."""
    from s5video.trainer.evaluate import charades_map

    def official(conf, gt):
        order = sorted(range(len(conf)), key=lambda i: -conf[i])  # MATLAB's sort: stable
        tp = fp = 0
        ap = 0.0
        npos = sum(1 for g in gt if g == 1)
        for i in order:
            if gt[i] == 1:
                tp += 1
                ap += tp / (tp + fp)
            else:
                fp += 1
        return ap / npos

    g = torch.Generator().manual_seed(0)
    V, C = 40, 12
    scores = torch.rand(V, C, generator=g).round(decimals=1)  # ties
    labels = (torch.rand(V, C, generator=g) < 0.2).float()
    labels[:, 3] = 0  # a class without a positive among these videos
    labels[:, 5] = 0
    want = [official(scores[:, c].tolist(), labels[:, c].tolist()) for c in range(C) if labels[:, c].any()]
    m, used = charades_map(scores, labels)
    assert used == C - 2 == len(want)
    assert m == pytest.approx(sum(want) / len(want), rel=1e-12)
    # torchmetrics' macro AP counts the empty classes as 0 (and interpolates ties): another number
    import torchmetrics.functional as tmf
    tm = tmf.average_precision(scores, labels.long(), task="multilabel", num_labels=C, average="macro").item()
    assert abs(tm - m) > 1e-3
    assert charades_map(scores, torch.zeros(V, C))[1] == 0


def test_timed_window_targets_and_one_description_per_training_clip():
    """A training window's targets are the actions overlapping it, clamped to the video (an action
    annotated past the end still covers the last window); a training clip's caption is one of the
    video's `;`-separated descriptions, the same for the same (seed, epoch, video), each of them over
    epochs; evaluation keeps the whole field."""
    from s5video.data.clips import ClipSpec, sample_rng, split_descriptions, window_targets
    from s5video.data.loader import SampleMaker

    actions = [[4, 0.0, 2.1], [7, 1.2, 9.8], [9, 12.0, 15.0]]  # a 3-s video: 7 runs past it, 9 starts after
    assert window_targets(actions, (0.0, 1.0), 3.0, 10).nonzero().flatten().tolist() == [4]
    assert window_targets(actions, (2.0, 3.0), 3.0, 10).nonzero().flatten().tolist() == [4, 7]
    assert window_targets(actions, (2.5, 3.0), 3.0, 10).nonzero().flatten().tolist() == [7]
    assert split_descriptions("A cup. Then a chair.; Someone sits;") == ["A cup. Then a chair.", "Someone sits"]
    meta = {"key": "AB12", "descriptions": "first one;second, with a comma", "label": [4, 7], "actions": actions,
            "duration": 3.0}
    plans = [{"video": ([0, 1], (2.5, 3.0))}]

    def make(mode, task, labels="video"):
        return SampleMaker(ClipSpec(mode=mode, window_labels=labels), 8, (0.5,) * 3, (0.5,) * 3, 0, task, 10)

    def clip(idx):
        return torch.zeros(len(idx), 3, 8, 8)

    timed = make("train", "multilabel", "timed").assemble("AB12", meta, plans, clip, sample_rng(0, 0, "AB12"))[0]
    assert timed["label"].nonzero().flatten().tolist() == [7]
    whole = make("val", "multilabel").assemble("AB12", meta, plans, clip, sample_rng(0, 0, "AB12"))[0]
    assert whole["label"].nonzero().flatten().tolist() == [4, 7]
    cap = make("train", "captioning")
    picks = [cap.assemble("AB12", meta, plans, clip, sample_rng(0, e, "AB12"))[0]["caption"] for e in range(12)]
    assert set(picks) == {"first one", "second, with a comma"}
    assert picks[3] == cap.assemble("AB12", meta, plans, clip, sample_rng(0, 3, "AB12"))[0]["caption"]
    assert make("val", "captioning").assemble("AB12", meta, plans, clip, sample_rng(0, 0, "AB12"))[0]["caption"] \
        == meta["descriptions"]
