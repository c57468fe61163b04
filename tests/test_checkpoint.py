"""Checkpoint layouts: NVlabs .pth, transformers directories, our safetensors; round trips; bad files."""

from __future__ import annotations

import os
import pickle
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import groupvit
from groupvit.checkpoint import CheckpointError


def hf_to_nvlabs(hf_state: dict[str, torch.Tensor], multi_label: bool = False) -> dict[str, torch.Tensor]:
    """Rewrite a transformers state dict in the NVlabs layout, from the key table of spec section 7.

    Written independently of groupvit.checkpoint: it goes HF -> NVlabs, the package goes the other way.
    """
    out: dict[str, torch.Tensor] = {}
    for key, value in hf_state.items():
        if key == "text_model.embeddings.position_ids":
            continue
        if re.search(r"\.self_attn\.[kv]_proj\.", key):
            continue  # consumed with q_proj below
        if m := re.match(r"(.*)\.self_attn\.q_proj\.(weight|bias)$", key):
            prefix, param = m.groups()
            value = torch.cat([hf_state[f"{prefix}.self_attn.{p}_proj.{param}"] for p in "qkv"])
            key = f"{prefix}.self_attn.QKV.{param}"
        rules = [
            ("vision_model.embeddings.position_embeddings", "img_encoder.pos_embed"),
            ("vision_model.embeddings.patch_embeddings.projection", "img_encoder.patch_embed.proj"),
            ("vision_model.embeddings.layernorm", "img_encoder.patch_embed.norm"),
            ("vision_model.layernorm", "img_encoder.norm"),
            ("vision_model.encoder.stages", "img_encoder.layers"),
            ("text_model.embeddings.token_embedding", "text_encoder.token_embedding"),
            ("text_model.embeddings.position_embedding.weight", "text_encoder.positional_embedding"),
            ("text_model.encoder.layers", "text_encoder.transformer.resblocks"),
            ("text_model.final_layer_norm", "text_encoder.ln_final"),
            ("visual_projection.0.", "img_projector.linear_hidden.0."),
            ("visual_projection.1.", "img_projector.linear_hidden.1."),
            ("visual_projection.3.", "img_projector.linear_out."),
            ("text_projection.0.", "text_projector.linear_hidden.0."),
            ("text_projection.1.", "text_projector.linear_hidden.1."),
            ("text_projection.3.", "text_projector.linear_out."),
            ("pre_assign_attn.attn.out_proj", "pre_assign_attn.attn.proj"),
        ]
        for a, b in rules:
            key = key.replace(a, b)
        if key.startswith("img_encoder.layers."):
            key = re.sub(r"\.layers\.(\d+)\.self_attn\.QKV\.", r".blocks.\1.attn.qkv.", key)
            key = re.sub(r"\.layers\.(\d+)\.self_attn\.out_proj\.", r".blocks.\1.attn.proj.", key)
            key = re.sub(r"\.layers\.(\d+)\.layer_norm([12])\.", r".blocks.\1.norm\2.", key)
            key = re.sub(r"\.layers\.(\d+)\.mlp\.", r".blocks.\1.mlp.", key)
        if key.startswith("text_encoder.transformer."):
            key = key.replace("self_attn.QKV.weight", "attn.in_proj_weight").replace(
                "self_attn.QKV.bias", "attn.in_proj_bias"
            )
            key = key.replace("self_attn.out_proj", "attn.out_proj").replace("layer_norm1", "ln_1")
            key = key.replace("layer_norm2", "ln_2").replace("mlp.fc1", "mlp.c_fc").replace("mlp.fc2", "mlp.c_proj")
        if re.match(r"(img|text)_projector\.linear_(hidden\.0|out)\.weight$", key):
            value = value.unsqueeze(-1)  # Conv1d kernel [out, in, 1]
        out[key] = value.clone()
    if multi_label:
        out["multi_label_logit_scale"] = torch.tensor(2.5)
    return out


def embeddings(model: groupvit.GroupViT, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    torch.manual_seed(3)
    pixels = torch.randn(2, 3, size, size)
    ids = groupvit.tokenize(["a photo of a bird", "a red car parked outside"])
    with torch.no_grad():
        return F.normalize(model.encode_image(pixels), dim=-1), F.normalize(model.encode_text(ids), dim=-1)


def test_nvlabs_pth_loads_to_same_embeddings(hf_default, tmp_path):
    hf, path = hf_default
    reference = groupvit.load_model(path)
    nvlabs = hf_to_nvlabs(hf.state_dict(), multi_label=True)
    assert "img_encoder.layers.1.downsample.mlp_inter.fc2.weight" in nvlabs  # spec key table
    assert nvlabs["img_projector.linear_hidden.0.weight"].shape == (4096, 384, 1)
    torch.save({"model": nvlabs}, tmp_path / "release.pth")
    model = groupvit.load_model(tmp_path / "release.pth")
    assert model.config.multi_label_logit_scale and model.multi_label_logit_scale.item() == 2.5
    assert sum(p.numel() for p in model.parameters()) == 55_726_610
    for a, b in zip(embeddings(model, 224), embeddings(reference, 224), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_nvlabs_training_checkpoint_with_pickled_config(hf_small, tmp_path):
    """Training files also hold optimizer state and an OmegaConf config: the config loads inert."""
    omegaconf = pytest.importorskip("omegaconf")
    hf, path = hf_small
    cfg = omegaconf.OmegaConf.create({"model": {"type": "MultiLabelContrastive"}, "train": {"epochs": 30}})
    state = {
        "model": hf_to_nvlabs(hf.state_dict()),
        "optimizer": {"state": {}, "param_groups": [{"lr": 1e-3}]},
        "epoch": 29,
        "config": cfg,
        "max_miou": 52.3,
    }
    torch.save(state, tmp_path / "ckpt_epoch_29.pth")
    reference = groupvit.load_model(path)
    # Head counts cannot be read off tensor shapes; this small model has 16-wide heads, so say so.
    model = groupvit.load_model(tmp_path / "ckpt_epoch_29.pth", config=reference.config)
    for a, b in zip(embeddings(model, 64), embeddings(reference, 64), strict=True):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=0)


def test_our_format_round_trip_is_bit_identical(hf_small, tmp_path):
    _, path = hf_small
    model = groupvit.load_model(path)
    groupvit.save_model(model, tmp_path / "m.safetensors")
    again = groupvit.load_model(tmp_path / "m.safetensors")
    assert again.config == model.config
    for (k, a), (k2, b) in zip(model.state_dict().items(), again.state_dict().items(), strict=True):
        assert k == k2 and a.dtype == b.dtype and torch.equal(a, b), k
    assert not list(tmp_path.glob(".*.tmp"))  # the atomic write left no temporary file


def test_export_to_transformers_loads_in_transformers(hf_small, tmp_path):
    """ours -> transformers directory: transformers itself loads it and computes the same features."""
    from transformers import GroupViTModel

    hf, path = hf_small
    model = groupvit.load_model(path)
    groupvit.save_model(model, tmp_path / "hf", layout="hf")
    back = GroupViTModel.from_pretrained(tmp_path / "hf").eval()
    for k, v in hf.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k
    pixels = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(
            back.get_image_features(pixel_values=pixels).pooler_output,
            hf.get_image_features(pixel_values=pixels).pooler_output,
        )


def test_nvlabs_export_round_trip(hf_small, tmp_path):
    hf, path = hf_small
    model = groupvit.load_model(path)
    groupvit.save_model(model, tmp_path / "nv.pth", layout="nvlabs")
    written = torch.load(tmp_path / "nv.pth", weights_only=True)["model"]
    expected = hf_to_nvlabs(hf.state_dict())
    assert written.keys() == expected.keys()
    for k, v in expected.items():
        assert torch.equal(written[k], v), k
    again = groupvit.load_model(tmp_path / "nv.pth", config=model.config)
    for k, v in model.state_dict().items():
        assert torch.equal(again.state_dict()[k], v), k


def test_convert_cli(hf_small, tmp_path):
    _, path = hf_small
    dst = tmp_path / "converted.safetensors"
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "convert", str(path), str(dst)], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    for a, b in zip(embeddings(groupvit.load_model(dst), 64), embeddings(groupvit.load_model(path), 64), strict=True):
        assert torch.equal(a, b)
    back = tmp_path / "back"
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "convert", str(dst), str(back), "--to", "hf"], capture_output=True, text=True
    )
    assert run.returncode == 0, run.stderr
    assert (back / "config.json").is_file() and (back / "model.safetensors").is_file()


# ----------------------------------------------------------------------------- bad inputs


def test_missing_file():
    with pytest.raises(CheckpointError, match="not found"):
        groupvit.load_model("/nonexistent/model.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file(hf_small, tmp_path, suffix):
    hf, path = hf_small
    full = tmp_path / f"full{suffix}"
    if suffix == ".pth":
        torch.save({"model": hf_to_nvlabs(hf.state_dict())}, full)
    else:
        groupvit.save_model(groupvit.load_model(path), full)
    data = full.read_bytes()
    cut = tmp_path / f"cut{suffix}"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        groupvit.load_model(cut)


class _RunsCode:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("writer", ["torch", "pickle"])
def test_pickle_that_would_run_code_is_refused(tmp_path, writer):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    payload = {"model": {"w": torch.zeros(1)}, "x": _RunsCode(marker)}
    if writer == "torch":
        torch.save(payload, path)
    else:
        path.write_bytes(pickle.dumps(payload))
    with pytest.raises(CheckpointError, match=r"system.*refusing|refusing"):
        groupvit.load_model(path)
    assert not marker.exists()


def test_wrong_architecture_vit_b_shapes(tmp_path):
    """A GroupViT of other widths (ViT-B sized) forced into the released config: shapes are named."""
    big = groupvit.model_config("small")
    big.vision.width, big.vision.num_heads = 96, 6
    groupvit.save_model(groupvit.GroupViT(big), tmp_path / "wide.pth", layout="nvlabs")
    with pytest.raises(CheckpointError, match=r"other shapes.*img_encoder.pos_embed: file \[1, 64, 96\]"):
        groupvit.load_model(tmp_path / "wide.pth", config=groupvit.model_config("small"))


def test_our_format_checked_like_the_others(tmp_path):
    groupvit.save_model(groupvit.GroupViT(groupvit.model_config("small")), tmp_path / "small.safetensors")
    with pytest.raises(CheckpointError, match=r"other shapes.*visual\.pos_embed: file \[1, 64, 128\]"):
        groupvit.load_model(tmp_path / "small.safetensors", config=groupvit.model_config("gcc_yfcc"))


def test_plain_vit_checkpoint_is_not_groupvit(tmp_path):
    state = {"cls_token": torch.zeros(1, 1, 768), "blocks.0.attn.qkv.weight": torch.zeros(2304, 768)}
    torch.save(state, tmp_path / "vit_b16.pth")
    with pytest.raises(CheckpointError, match="not a GroupViT checkpoint"):
        groupvit.load_model(tmp_path / "vit_b16.pth")


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "notes.pth").write_text("hello")
    with pytest.raises(CheckpointError, match="cannot read"):
        groupvit.load_model(tmp_path / "notes.pth")
    (tmp_path / "folder").mkdir()
    with pytest.raises(CheckpointError, match=r"without config\.json"):
        groupvit.load_model(tmp_path / "folder")


def test_cli_reports_bad_checkpoint_without_traceback(tmp_path):
    (tmp_path / "bad.pth").write_bytes(b"\x00" * 100)
    run = subprocess.run(
        [sys.executable, "-m", "groupvit", "convert", str(tmp_path / "bad.pth"), str(tmp_path / "out.safetensors")],
        capture_output=True,
        text=True,
    )
    assert run.returncode != 0
    assert "Traceback" not in run.stderr and "cannot read" in run.stderr
    assert not (tmp_path / "out.safetensors").exists()


def test_transformers_folder_with_pytorch_model_bin(hf_small, tmp_path):
    hf, path = hf_small
    (tmp_path / "config.json").write_text((path / "config.json").read_text())
    torch.save(hf.state_dict(), tmp_path / "pytorch_model.bin")
    for a, b in zip(
        embeddings(groupvit.load_model(tmp_path), 64), embeddings(groupvit.load_model(path), 64), strict=True
    ):
        assert torch.equal(a, b)
