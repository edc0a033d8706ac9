"""Model assembly from a config (models.factory): every registered model builds from a config and
trains at two widths; each family reads exactly its constructor's arguments."""
from __future__ import annotations

import inspect

import pytest
import torch
import torch.nn.functional as F

from s5video.models import list_models
from s5video.models.factory import CONFIG_ARGS, INPUT_WIDTH, PRETRAIN_ARGS, build_model, model_args
from s5video.models.registry import family_of
from s5video.trainer.config import ModelConfig, load_config


def test_every_config_argument_is_a_constructor_argument():
    from s5video.models.baselines import BiMambaDecoder, make_attention_baseline
    from s5video.models.captioner import GPT2Captioner
    from s5video.models.heads import MLPHead
    from s5video.models.s5 import S5
    from s5video.models.vis4mer import ViS4mer, ViS4merDecoder
    ctor = {"vis4mer": [ViS4mer, ViS4merDecoder], "s5": [S5], "bimamba": [BiMambaDecoder], "mlp_head": [MLPHead], "gpt2_captioner": [GPT2Captioner],
            **{f: [make_attention_baseline, ViS4merDecoder] for f in ("lst", "lst_full", "performer", "orthoformer")}}
    assert set(CONFIG_ARGS) == {family_of(n) for n in list_models()} == set(ctor)
    fields = set(vars(ModelConfig()))
    for family, mapping in CONFIG_ARGS.items():
        accepted = {p for c in ctor[family] for p in inspect.signature(c).parameters}
        assert set(mapping) <= fields, family
        assert set(mapping.values()) <= accepted, family
    from s5video.models.lsmcl import LSMCL
    assert set(PRETRAIN_ARGS) <= fields and set(PRETRAIN_ARGS.values()) <= set(inspect.signature(LSMCL).parameters)


@pytest.mark.parametrize("width", [16, 32])
def test_every_registered_model_trains_from_a_config(width):
    """Each name, from the demo finetune config with only model.name and model.width changed (plus a
    small depth/state so the full flavours are quick): the input projection maps the encoder's 1280
    channels to the width, the decoder runs at that width, and 8 AdamW steps fit a fixed batch.
    Seed 004's MLP head and captioner read the encoder's width themselves (no projection); the
    captioner fits the classes' names as captions."""
    torch.manual_seed(0)
    grid = (4, 2, 2)
    x = torch.randn(4, 16, 1280)  # (B, T * H' * W', D_enc): EfficientNet-Lite0 tokens
    y = torch.tensor([0, 1, 2, 1])
    for name in list_models():
        cfg = load_config("configs/demo_finetune.yaml", [f"model.name={name}", f"model.width={width}",
                                                         "model.depth=2", "model.state_size=8", "model.dropout=0.0"])
        model = build_model(cfg.model, in_dim=1280, num_classes=3)
        if family_of(name) in INPUT_WIDTH:
            assert model.temporal.in_dim == 1280 and isinstance(model.proj, torch.nn.Identity), name
        else:
            assert model.temporal.in_dim == width and model.proj.out_features == width, name
            assert model_args(cfg.model)["d_model"] == width
        opt = torch.optim.AdamW(model.parameters(), lr=3e-3)
        losses = []
        for _ in range(8):
            if family_of(name) == "gpt2_captioner":
                loss = model(x, grid=grid, captions=[["zero", "one", "two"][i] for i in y])
            else:
                loss = F.cross_entropy(model(x, grid=grid), y)
            opt.zero_grad()
            loss.backward()
            opt.step()
            model.update_momentum()
            losses.append(loss.item())
        assert losses[-1] < losses[0], (name, losses)


@pytest.mark.parametrize("kernel", ["s4", "s4d"])
def test_s4_kernel_flag_reaches_the_layers(kernel):
    from s5video.models.ssm import S4DKernel, S4Kernel
    cfg = load_config("configs/coin.yaml", [f"model.kernel={kernel}", "model.width=32", "model.state_size=8"])
    model = build_model(cfg.model, in_dim=32, num_classes=3)
    kernels = {type(m) for m in model.modules() if isinstance(m, (S4Kernel, S4DKernel))}
    assert kernels == {S4Kernel if kernel == "s4" else S4DKernel}
    default = build_model(load_config("configs/coin.yaml", ["model.width=32", "model.state_size=8"]).model, 32, 3)
    assert {type(m) for m in default.modules() if isinstance(m, (S4Kernel, S4DKernel))} == {S4Kernel}  # paper: NPLR


def test_bimamba_keeps_its_width_when_the_config_leaves_it_to_the_flavour():
    cfg = load_config("configs/demo_finetune.yaml", ["model.name=bimamba_debug", "model.width=null"])
    assert build_model(cfg.model, in_dim=1280, num_classes=3).temporal.in_dim == 32  # the flavour's d_model
