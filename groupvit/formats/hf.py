"""The transformers layout (`GroupViTModel`): its state-dict names for ours, and its config to ours and back."""

from __future__ import annotations

import re
from typing import Any

from ..config import GroupViTConfig, TextConfig, VisionConfig
from ..errors import CheckpointError
from .common import CONFIG_KEY, exported_config, split_block


def hf_names(key: str) -> list[str]:
    """The transformers `GroupViTModel` key(s) for one of our keys (fused qkv -> three keys)."""
    head, tail = split_block(key)
    if head:
        for ours, theirs in (("norm1.", "layer_norm1."), ("norm2.", "layer_norm2."),
                             ("attn.proj.", "self_attn.out_proj.")):  # fmt: skip
            if tail.startswith(ours):
                tail = theirs + tail[len(ours) :]
        head = re.sub(r"\.blocks\.", ".layers.", head)
        head = head.replace("visual.stages.", "vision_model.encoder.stages.")
        head = head.replace("text.layers.", "text_model.encoder.layers.")
        if tail.startswith("attn.qkv."):
            param = tail.removeprefix("attn.qkv.")
            return [f"{head}self_attn.{p}_proj.{param}" for p in "qkv"]
        return [head + tail]
    fixed = {
        "visual.pos_embed": "vision_model.embeddings.position_embeddings",
        "text.positional_embedding": "text_model.embeddings.position_embedding.weight",
        "text.token_embedding.weight": "text_model.embeddings.token_embedding.weight",
    }
    if key in fixed:
        return [fixed[key]]
    for pattern, repl in (
        (r"^visual\.patch_embed\.proj\.", "vision_model.embeddings.patch_embeddings.projection."),
        (r"^visual\.patch_embed\.norm\.", "vision_model.embeddings.layernorm."),
        (r"^visual\.norm\.", "vision_model.layernorm."),
        (r"^visual\.stages\.", "vision_model.encoder.stages."),
        (r"\.grouping\.", ".downsample."),
        (r"\.token_mlp\.", ".mlp_inter."),
        (r"pre_assign_attn\.attn\.proj\.", "pre_assign_attn.attn.out_proj."),
        (r"^text\.ln_final\.", "text_model.final_layer_norm."),
        (r"_projection\.fc1\.", "_projection.0."),
        (r"_projection\.norm\.", "_projection.1."),
        (r"_projection\.fc2\.", "_projection.3."),
    ):
        key = re.sub(pattern, repl, key)
    return [key]


def config_from_hf(hf: dict[str, Any]) -> GroupViTConfig:
    """A transformers `GroupViTConfig` dict (config.json) -> our config."""
    v, t = hf.get("vision_config", {}), hf.get("text_config", {})
    group_tokens = list(v.get("num_group_tokens", [64, 8, 0]))
    n_grouping = sum(1 for n in group_tokens if n > 0)
    width = v.get("hidden_size", 384)
    text_width = t.get("hidden_size", 256)
    for name, value in (("vision_config.hidden_size", width), ("text_config.hidden_size", text_width)):
        if type(value) is not int or value < 1:
            raise ValueError(f"{name} is {value!r}, not a positive integer")
    if v.get("hidden_act", "gelu") != "gelu" or t.get("hidden_act", "quick_gelu") != "quick_gelu":
        raise CheckpointError("only GroupViT's activations (gelu image side, quick_gelu text side) are supported")
    return GroupViTConfig(
        vision=VisionConfig(
            image_size=v.get("image_size", 224),
            patch_size=v.get("patch_size", 16),
            in_chans=v.get("num_channels", 3),
            width=width,
            depths=list(v.get("depths", [6, 3, 3])),
            num_heads=v.get("num_attention_heads", 6),
            num_group_tokens=group_tokens,
            num_output_groups=list(v.get("num_output_groups", [64, 8, 8]))[:n_grouping],
            mlp_ratio=v.get("intermediate_size", 4 * width) / width,
            assign_mlp_ratio=tuple(v.get("assign_mlp_ratio", [0.5, 4.0])),
            assign_eps=v.get("assign_eps", 1.0),
            layer_norm_eps=v.get("layer_norm_eps", 1e-5),
        ),
        text=TextConfig(
            vocab_size=t.get("vocab_size", 49408),
            context_length=t.get("max_position_embeddings", 77),
            width=text_width,
            layers=t.get("num_hidden_layers", 12),
            heads=t.get("num_attention_heads", 4),
            mlp_ratio=t.get("intermediate_size", 4 * text_width) / text_width,
            layer_norm_eps=t.get("layer_norm_eps", 1e-5),
        ),
        projection_dim=hf.get("projection_dim", 256),
        projection_hidden_dim=hf.get("projection_intermediate_dim", 4096),
        logit_scale_init=hf.get("logit_scale_init_value", 2.6592),
        multi_label_logit_scale=False,
    )


def config_to_hf(cfg: GroupViTConfig) -> dict[str, Any]:
    """Our config -> a transformers `config.json` dict for `GroupViTModel.from_pretrained`."""
    v, t = cfg.vision, cfg.text
    return {
        "architectures": ["GroupViTModel"],
        "model_type": "groupvit",
        CONFIG_KEY: exported_config(cfg),
        "projection_dim": cfg.projection_dim,
        "projection_intermediate_dim": cfg.projection_hidden_dim,
        "logit_scale_init_value": cfg.logit_scale_init,
        "vision_config": {
            "model_type": "groupvit_vision_model",
            "hidden_size": v.width,
            "intermediate_size": int(v.width * v.mlp_ratio),
            "depths": v.depths,
            "num_hidden_layers": sum(v.depths),
            "num_group_tokens": v.num_group_tokens,
            "num_output_groups": [*v.num_output_groups, v.num_output_groups[-1]],
            "num_attention_heads": v.num_heads,
            "image_size": v.image_size,
            "patch_size": v.patch_size,
            "num_channels": v.in_chans,
            "hidden_act": "gelu",
            "layer_norm_eps": v.layer_norm_eps,
            "assign_eps": v.assign_eps,
            "assign_mlp_ratio": list(v.assign_mlp_ratio),
        },
        "text_config": {
            "model_type": "groupvit_text_model",
            "vocab_size": t.vocab_size,
            "hidden_size": t.width,
            "intermediate_size": int(t.width * t.mlp_ratio),
            "num_hidden_layers": t.layers,
            "num_attention_heads": t.heads,
            "max_position_embeddings": t.context_length,
            "hidden_act": "quick_gelu",
            "layer_norm_eps": t.layer_norm_eps,
            "bos_token_id": 49406,
            "eos_token_id": 49407,
            "pad_token_id": 1,
        },
    }
