"""Official YOLO-World (MMYOLO) checkpoints: conversion parity, text tower, errors, ``yw convert``, end to end.

The official-format checkpoints here are produced by an independent reference written in this file from the official
module definitions (MMYOLO ``YOLOv8CSPDarknet``, ``CSPLayerWithTwoConv``, ``SPPFBottleneck``, ``YOLOv8PAFPN``;
YOLO-World ``YOLOWorldPAFPN`` / ``YOLOWorldDualPAFPN``, ``MaxSigmoidCSPLayerWithTwoConv``,
``EfficientCSPLayerWithTwoConv``, ``ImagePoolingAttentionModule``, ``YOLOWorldHeadModule`` with ``ContrastiveHead`` /
``BNContrastiveHead``; mmcv ``ConvModule`` = conv + BN(eps 1e-3, momentum 0.03) + SiLU; the YOLOv8 DFL decode with
``DistancePointBBoxCoder`` and 0.5-offset point priors). Its module names are the official ones, so its
``state_dict()`` has the official key names and shapes; nothing is produced by running the converter backwards. The
reference uses generic torch layers only (no Ultralytics module).
"""

from __future__ import annotations

import hashlib
import json
import math
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import yw_ext
from yw_ext.convert import CheckpointError, convert_cli, convert_official, detect_layout, text_encoder_from_state
from yw_ext.nn.model import YWDetectionModel

# ======================================================================================================================
# Reference: the official modules (names and math follow the official code; generic torch layers only)
# ======================================================================================================================


def make_divisible(x: float, widen: float, divisor: int = 8) -> int:
    """mmyolo.models.utils.make_divisible."""
    return math.ceil(x * widen / divisor) * divisor


def make_round(x: float, deepen: float) -> int:
    """mmyolo.models.utils.make_round."""
    return max(round(x * deepen), 1) if x > 1 else x


class ConvModule(nn.Module):
    """mmcv ConvModule: conv (bias only without norm) -> ``bn`` (eps 1e-3, momentum 0.03) -> SiLU."""

    def __init__(self, c1, c2, k, s=1, p=0, norm=True, act=True):
        super().__init__()
        self.conv = nn.Conv2d(c1, c2, k, s, p, bias=not norm)
        self.bn = nn.BatchNorm2d(c2, eps=1e-3, momentum=0.03) if norm else None
        self.act = nn.SiLU() if act else None

    def forward(self, x):
        x = self.conv(x)
        if self.bn is not None:
            x = self.bn(x)
        return self.act(x) if self.act is not None else x


class DarknetBottleneck(nn.Module):
    """mmyolo DarknetBottleneck(expansion=1, kernel_size=(3, 3), padding=(1, 1))."""

    def __init__(self, c1, c2, add_identity):
        super().__init__()
        self.conv1 = ConvModule(c1, c2, 3, 1, 1)
        self.conv2 = ConvModule(c2, c2, 3, 1, 1)
        self.add_identity = add_identity and c1 == c2

    def forward(self, x):
        out = self.conv2(self.conv1(x))
        return x + out if self.add_identity else out


class CSPLayerWithTwoConv(nn.Module):
    """mmyolo CSPLayerWithTwoConv (expand_ratio 0.5); ``guide`` is accepted and unused (plain neck blocks)."""

    extra = 0  # branches appended after the bottlenecks

    def __init__(self, c1, c2, num_blocks, add_identity):
        super().__init__()
        self.mid_channels = int(c2 * 0.5)
        self.main_conv = ConvModule(c1, 2 * self.mid_channels, 1)
        self.final_conv = ConvModule((2 + self.extra + num_blocks) * self.mid_channels, c2, 1)
        self.blocks = nn.ModuleList(
            DarknetBottleneck(self.mid_channels, self.mid_channels, add_identity) for _ in range(num_blocks)
        )

    def branches(self, x, guide):
        return []

    def forward(self, x, guide=None):
        x_main = list(self.main_conv(x).split((self.mid_channels, self.mid_channels), 1))
        x_main.extend(block(x_main[-1]) for block in self.blocks)
        x_main.extend(self.branches(x_main[-1], guide))
        return self.final_conv(torch.cat(x_main, 1))


class MaxSigmoidAttnBlock(nn.Module):
    """YOLO-World MaxSigmoidAttnBlock (with_scale=False, einsum path)."""

    def __init__(self, c1, c2, guide_channels, embed_channels, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = embed_channels // num_heads
        self.embed_conv = ConvModule(c1, embed_channels, 1, act=False) if embed_channels != c1 else None
        self.guide_fc = nn.Linear(guide_channels, embed_channels)
        self.bias = nn.Parameter(torch.zeros(num_heads))
        self.project_conv = ConvModule(c1, c2, 3, 1, 1, act=False)

    def forward(self, x, guide):
        B, _, H, W = x.shape
        guide = self.guide_fc(guide).reshape(B, -1, self.num_heads, self.head_channels)
        embed = self.embed_conv(x) if self.embed_conv is not None else x
        embed = embed.reshape(B, self.num_heads, self.head_channels, H, W)
        attn = torch.einsum("bmchw,bnmc->bmhwn", embed, guide).max(dim=-1)[0]
        attn = (attn / self.head_channels**0.5 + self.bias[None, :, None, None]).sigmoid()
        x = self.project_conv(x).reshape(B, self.num_heads, -1, H, W)
        return (x * attn.unsqueeze(2)).reshape(B, -1, H, W)


class VanillaSigmoidBlock(nn.Module):
    """YOLO-World VanillaSigmoidBlock: project_conv only (the efficient neck's text-free branch)."""

    def __init__(self, c1, c2):
        super().__init__()
        self.project_conv = ConvModule(c1, c2, 3, 1, 1, act=False)

    def forward(self, x, guide):
        return self.project_conv(x)


class MaxSigmoidCSPLayerWithTwoConv(CSPLayerWithTwoConv):
    """YOLO-World MaxSigmoidCSPLayerWithTwoConv."""

    extra = 1

    def __init__(self, c1, c2, num_blocks, add_identity, guide_channels, embed_channels, num_heads):
        super().__init__(c1, c2, num_blocks, add_identity)
        m = self.mid_channels
        self.attn_block = MaxSigmoidAttnBlock(m, m, guide_channels, embed_channels, num_heads)

    def branches(self, x, guide):
        return [self.attn_block(x, guide)]


class EfficientCSPLayerWithTwoConv(CSPLayerWithTwoConv):
    """YOLO-World EfficientCSPLayerWithTwoConv."""

    extra = 1

    def __init__(self, c1, c2, num_blocks, add_identity, guide_channels, embed_channels, num_heads):
        super().__init__(c1, c2, num_blocks, add_identity)
        self.attn_block = VanillaSigmoidBlock(self.mid_channels, self.mid_channels)

    def branches(self, x, guide):
        return [self.attn_block(x, guide)]


class RepConvMaxSigmoidAttnBlock(nn.Module):
    """YOLO-World RepConvMaxSigmoidAttnBlock: the text guide folded into one 1x1 conv per head (N outputs)."""

    def __init__(self, c1, c2, embed_channels, guide_channels, num_heads):
        super().__init__()
        self.num_heads = num_heads
        self.head_channels = c2 // num_heads
        self.split_channels = embed_channels // num_heads
        self.embed_conv = ConvModule(c1, embed_channels, 1, act=False) if embed_channels != c1 else None
        self.bias = nn.Parameter(torch.zeros(num_heads))
        self.guide_convs = nn.ModuleList(
            nn.Conv2d(self.split_channels, guide_channels, 1, bias=False) for _ in range(num_heads))
        self.project_conv = ConvModule(c1, c2, 3, 1, 1, act=False)

    def forward(self, x, guide=None):
        B, _, H, W = x.shape
        embed = self.embed_conv(x) if self.embed_conv is not None else x
        embed = list(embed.split(self.split_channels, 1))
        attn = torch.cat([conv(e) for conv, e in zip(self.guide_convs, embed)], 1).view(B, self.num_heads, -1, H, W)
        attn = (attn.max(dim=2)[0] / self.head_channels**0.5 + self.bias.view(1, -1, 1, 1)).sigmoid()[:, :, None]
        x = self.project_conv(x).view(B, self.num_heads, -1, H, W)
        return (x * attn).view(B, -1, H, W)


def rep_csp_layer(num_prompts):
    """YOLO-World RepConvMaxSigmoidCSPLayerWithTwoConv with ``num_prompts`` folded prompts."""

    class RepConvMaxSigmoidCSPLayerWithTwoConv(CSPLayerWithTwoConv):
        extra = 1

        def __init__(self, c1, c2, num_blocks, add_identity, guide_channels, embed_channels, num_heads):
            super().__init__(c1, c2, num_blocks, add_identity)
            m = self.mid_channels
            self.attn_block = RepConvMaxSigmoidAttnBlock(m, m, embed_channels, num_prompts, num_heads)

        def branches(self, x, guide):
            return [self.attn_block(x)]

    return RepConvMaxSigmoidCSPLayerWithTwoConv


class SPPFBottleneck(nn.Module):
    """mmyolo SPPFBottleneck(kernel_sizes=5)."""

    def __init__(self, c1, c2):
        super().__init__()
        mid = int(c1 * 0.5)
        self.conv1 = ConvModule(c1, mid, 1)
        self.poolings = nn.MaxPool2d(5, 1, 2)
        self.conv2 = ConvModule(mid * 4, c2, 1)

    def forward(self, x):
        x = self.conv1(x)
        y1 = self.poolings(x)
        y2 = self.poolings(y1)
        return self.conv2(torch.cat([x, y1, y2, self.poolings(y2)], 1))


class YOLOv8CSPDarknet(nn.Module):
    """mmyolo YOLOv8CSPDarknet (P5), outputs of stage2, stage3, stage4."""

    def __init__(self, deepen, widen, last):
        super().__init__()
        self.stem = ConvModule(3, make_divisible(64, widen), 3, 2, 1)
        arch = [[64, 128, 3, True, False], [128, 256, 6, True, False], [256, 512, 6, True, False],
                [512, last, 3, True, True]]  # [in, out, blocks, add_identity, use_spp] per stage (P5)
        for i, (c1, c2, n, add, spp) in enumerate(arch, 1):
            c1, c2 = make_divisible(c1, widen), make_divisible(c2, widen)
            stage = [ConvModule(c1, c2, 3, 2, 1), CSPLayerWithTwoConv(c2, c2, make_round(n, deepen), add)]
            if spp:
                stage.append(SPPFBottleneck(c2, c2))
            setattr(self, f"stage{i}", nn.Sequential(*stage))

    def forward(self, x):
        x = self.stem(x)
        outs = []
        for i in range(1, 5):
            x = getattr(self, f"stage{i}")(x)
            if i >= 2:
                outs.append(x)
        return outs


class ImagePoolingAttentionModule(nn.Module):
    """YOLO-World ImagePoolingAttentionModule (with_scale=False, einsum path)."""

    def __init__(self, image_channels, text_channels, embed_channels=256, num_heads=8, pool_size=3):
        super().__init__()
        self.embed_channels, self.num_heads, self.pool_size = embed_channels, num_heads, pool_size
        self.head_channels = embed_channels // num_heads
        self.projections = nn.ModuleList(
            ConvModule(c, embed_channels, 1, norm=False, act=False) for c in image_channels)
        self.query = nn.Sequential(nn.LayerNorm(text_channels), nn.Linear(text_channels, embed_channels))
        self.key = nn.Sequential(nn.LayerNorm(embed_channels), nn.Linear(embed_channels, embed_channels))
        self.value = nn.Sequential(nn.LayerNorm(embed_channels), nn.Linear(embed_channels, embed_channels))
        self.proj = nn.Linear(embed_channels, text_channels)
        self.image_pools = nn.ModuleList(nn.AdaptiveMaxPool2d((pool_size, pool_size)) for _ in image_channels)

    def forward(self, text_features, image_features):
        B = image_features[0].shape[0]
        feats = [pool(proj(x)).view(B, -1, self.pool_size**2)
                 for x, proj, pool in zip(image_features, self.projections, self.image_pools)]
        feats = torch.cat(feats, -1).transpose(1, 2)
        q = self.query(text_features).reshape(B, -1, self.num_heads, self.head_channels)
        k = self.key(feats).reshape(B, -1, self.num_heads, self.head_channels)
        v = self.value(feats).reshape(B, -1, self.num_heads, self.head_channels)
        w = F.softmax(torch.einsum("bnmc,bkmc->bmnk", q, k) / self.head_channels**0.5, dim=-1)
        x = torch.einsum("bmnk,bkmc->bnmc", w, v)
        return self.proj(x.reshape(B, -1, self.embed_channels)) + text_features


class YOLOWorldPAFPN(nn.Module):
    """YOLO-World YOLOWorldPAFPN (YOLOv8PAFPN with text-guided blocks); ``dual`` adds v1's text enhancer."""

    def __init__(self, block, deepen, widen, last, guide_channels, dual=False):
        super().__init__()
        cin = cout = [256, 512, last]
        embed, heads = [128, 256, last // 2], [4, 8, last // 2 // 32]
        self.reduce_layers = nn.ModuleList(nn.Identity() for _ in range(3))
        self.upsample_layers = nn.ModuleList(nn.Upsample(scale_factor=2, mode="nearest") for _ in range(2))

        def build(c1, c2, i):
            return block(make_divisible(c1, widen), make_divisible(c2, widen), make_round(3, deepen), False,
                         guide_channels, make_round(embed[i], widen), make_round(heads[i], widen))

        self.top_down_layers = nn.ModuleList(build(cin[i - 1] + cin[i], cout[i - 1], i - 1) for i in (2, 1))
        self.downsample_layers = nn.ModuleList(
            ConvModule(make_divisible(cin[i], widen), make_divisible(cin[i], widen), 3, 2, 1) for i in range(2)
        )
        self.bottom_up_layers = nn.ModuleList(build(cout[i] + cout[i + 1], cout[i + 1], i + 1) for i in range(2))
        self.out_layers = nn.ModuleList(nn.Identity() for _ in range(3))
        if dual:
            self.text_enhancer = ImagePoolingAttentionModule([int(c * widen) for c in cout], guide_channels, 256, 8, 3)

    def forward(self, img_feats, txt_feats):
        reduce_outs = [layer(x) for layer, x in zip(self.reduce_layers, img_feats)]
        inner_outs = [reduce_outs[-1]]
        for idx in range(2, 0, -1):
            up = self.upsample_layers[2 - idx](inner_outs[0])
            inner_outs.insert(0, self.top_down_layers[2 - idx](torch.cat([up, reduce_outs[idx - 1]], 1), txt_feats))
        if hasattr(self, "text_enhancer"):
            txt_feats = self.text_enhancer(txt_feats, inner_outs)
        outs = [inner_outs[0]]
        for idx in range(2):
            down = self.downsample_layers[idx](outs[-1])
            outs.append(self.bottom_up_layers[idx](torch.cat([down, inner_outs[idx + 1]], 1), txt_feats))
        return [layer(x) for layer, x in zip(self.out_layers, outs)]


class ContrastiveHead(nn.Module):
    """YOLO-World ContrastiveHead (L2-normalised image and text embeddings); 0-d ``bias`` and ``logit_scale``."""

    def __init__(self, embed_dims):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros([]))
        self.logit_scale = nn.Parameter(torch.ones([]) * math.log(1 / 0.07))

    def forward(self, x, w):
        x = F.normalize(x, dim=1, p=2)
        w = F.normalize(w, dim=-1, p=2)
        return torch.einsum("bchw,bkc->bkhw", x, w) * self.logit_scale.exp() + self.bias


class BNContrastiveHead(ContrastiveHead):
    """YOLO-World BNContrastiveHead (BatchNorm on image embeddings)."""

    def __init__(self, embed_dims):
        super().__init__(embed_dims)
        self.norm = nn.BatchNorm2d(embed_dims, eps=1e-3, momentum=0.03)
        self.logit_scale = nn.Parameter(-1.0 * torch.ones([]))

    def forward(self, x, w):
        x = self.norm(x)
        w = F.normalize(w, dim=-1, p=2)
        return torch.einsum("bchw,bkc->bkhw", x, w) * self.logit_scale.exp() + self.bias


class RepBNContrastiveHead(nn.Module):
    """YOLO-World RepBNContrastiveHead: BatchNorm, then the folded text as a K-output 1x1 conv (text ignored)."""

    def __init__(self, embed_dims, num_guide_embeds):
        super().__init__()
        self.norm = nn.BatchNorm2d(embed_dims, eps=1e-3, momentum=0.03)
        self.conv = nn.Conv2d(embed_dims, num_guide_embeds, 1)

    def forward(self, x, w=None):
        return self.conv(self.norm(x))


class YOLOWorldHeadModule(nn.Module):
    """YOLO-World YOLOWorldHeadModule (YOLOv8HeadModule with a contrastive classification branch), reg_max 16."""

    def __init__(self, widen, last, embed_dims, use_bn_head, num_classes=80, reg_max=16, rep_prompts=0):
        super().__init__()
        ch = [make_divisible(c, widen) for c in (256, 512, last)]
        self.reg_max = reg_max
        reg_out, cls_out = max(16, ch[0] // 4, reg_max * 4), max(ch[0], num_classes)
        self.reg_preds = nn.ModuleList(
            nn.Sequential(ConvModule(c, reg_out, 3, 1, 1), ConvModule(reg_out, reg_out, 3, 1, 1),
                          nn.Conv2d(reg_out, 4 * reg_max, 1)) for c in ch)
        self.cls_preds = nn.ModuleList(
            nn.Sequential(ConvModule(c, cls_out, 3, 1, 1), ConvModule(cls_out, cls_out, 3, 1, 1),
                          nn.Conv2d(cls_out, embed_dims, 1)) for c in ch)
        if rep_prompts:  # RepYOLOWorldHeadModule
            self.cls_contrasts = nn.ModuleList(RepBNContrastiveHead(embed_dims, rep_prompts) for _ in ch)
        else:
            self.cls_contrasts = nn.ModuleList((BNContrastiveHead if use_bn_head else ContrastiveHead)(embed_dims)
                                               for _ in ch)
        self.register_buffer("proj", torch.arange(reg_max, dtype=torch.float), persistent=False)

    def forward(self, feats, txt):
        cls_logits, bbox_preds = [], []
        for x, cls_pred, reg_pred, contrast in zip(feats, self.cls_preds, self.reg_preds, self.cls_contrasts):
            b, _, h, w = x.shape
            cls_logits.append(contrast(cls_pred(x), txt))
            dist = reg_pred(x).reshape(-1, 4, self.reg_max, h * w).permute(0, 3, 1, 2)  # (B, HW, 4, reg_max)
            box = dist.softmax(3).matmul(self.proj.view(-1, 1)).squeeze(-1)  # (B, HW, 4)
            bbox_preds.append(box.transpose(1, 2).reshape(b, -1, h, w))
        return cls_logits, bbox_preds


class OfficialYOLOWorld(nn.Module):
    """YOLOWorldDetector with the official module names: ``backbone.image_model``, ``backbone.text_model.model``,
    ``neck``, ``bbox_head.head_module``. ``forward`` returns decoded ``xyxy`` boxes ``(B, A, 4)`` and sigmoid scores
    ``(B, A, K)`` as ``YOLOv8Head.predict_by_feat`` computes them before NMS."""

    BLOCKS = {"vlpan": MaxSigmoidCSPLayerWithTwoConv, "efficient": EfficientCSPLayerWithTwoConv,
              "plain": lambda c1, c2, n, add, *_: CSPLayerWithTwoConv(c1, c2, n, add)}

    def __init__(self, neck="vlpan", dual=False, bn_head=True, deepen=0.33, widen=0.25, last=1024, embed_dims=512,
                 text_model=None, rep_prompts=0):
        super().__init__()
        block = rep_csp_layer(rep_prompts) if rep_prompts and neck == "vlpan" else self.BLOCKS[neck]
        self.backbone = nn.Module()
        self.backbone.image_model = YOLOv8CSPDarknet(deepen, widen, last)
        if text_model is not None:
            self.backbone.text_model = nn.Module()
            self.backbone.text_model.model = text_model
        self.neck = YOLOWorldPAFPN(block, deepen, widen, last, embed_dims, dual=dual)
        self.bbox_head = nn.Module()
        self.bbox_head.head_module = YOLOWorldHeadModule(widen, last, embed_dims, bn_head, rep_prompts=rep_prompts)

    def forward(self, img, txt):
        feats = self.neck(self.backbone.image_model(img), txt)
        cls_logits, bbox_preds = self.bbox_head.head_module(feats, txt)
        priors, strides = [], []
        for x, s in zip(cls_logits, (8, 16, 32)):  # MlvlPointGenerator(offset=0.5), row-major
            h, w = x.shape[-2:]
            yy, xx = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
            priors.append(torch.stack([(xx.reshape(-1) + 0.5) * s, (yy.reshape(-1) + 0.5) * s], -1))
            strides.append(torch.full((h * w,), float(s)))
        priors, strides = torch.cat(priors), torch.cat(strides)  # (A, 2), (A,)
        b = img.shape[0]
        scores = torch.cat([c.permute(0, 2, 3, 1).reshape(b, -1, c.shape[1]) for c in cls_logits], 1).sigmoid()
        dist = torch.cat([p.permute(0, 2, 3, 1).reshape(b, -1, 4) for p in bbox_preds], 1) * strides[None, :, None]
        boxes = torch.cat([priors - dist[..., :2], priors + dist[..., 2:]], -1)  # DistancePointBBoxCoder.decode
        return boxes, scores


@torch.no_grad()
def randomize(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random BN statistics and affine parameters, attention biases, contrastive scalars (all non-default)."""
    g = torch.Generator().manual_seed(seed)
    for name, m in model.named_modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)
        elif isinstance(m, nn.LayerNorm):
            m.weight.copy_(1 + torch.randn(m.weight.shape, generator=g) * 0.1)
            m.bias.copy_(torch.randn(m.bias.shape, generator=g) * 0.1)
        if isinstance(m, ContrastiveHead):
            m.bias.copy_(torch.randn([], generator=g) - 1.0)
            m.logit_scale.copy_(torch.rand([], generator=g) * 0.5 + (2.0 if type(m) is ContrastiveHead else 0.0))
        if isinstance(m, (MaxSigmoidAttnBlock, RepConvMaxSigmoidAttnBlock)):
            m.bias.copy_(torch.randn(m.bias.shape, generator=g))
        if isinstance(m, RepBNContrastiveHead):
            m.conv.bias.copy_(torch.randn(m.conv.bias.shape, generator=g) - 1.0)
    return model.eval()


def tiny_hf_text(heads: int = 2, projection_dim: int = 512, seed: int = 0):
    """A tiny random Hugging Face ``CLIPTextModelWithProjection`` (hidden 64, 2 layers, quick_gelu)."""
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(seed)
    cfg = transformers.CLIPTextConfig(
        vocab_size=49408, hidden_size=64, intermediate_size=256, num_hidden_layers=2, num_attention_heads=heads,
        max_position_embeddings=77, hidden_act="quick_gelu", layer_norm_eps=1e-5, projection_dim=projection_dim,
        bos_token_id=49406, eos_token_id=49407, pad_token_id=1,
    )
    hf = transformers.CLIPTextModelWithProjection(cfg).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in hf.named_parameters():  # non-default biases / LayerNorms so a wrong mapping shows
            if name.endswith("bias"):
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)
            elif "layer_norm" in name and name.endswith("weight"):
                p.copy_(1 + torch.randn(p.shape, generator=g) * 0.1)
    return hf


def official_checkpoint(neck="vlpan", dual=False, bn_head=True, embed_dims=512, scale="n", text_model=None, seed=0,
                        rep_prompts=0):
    """(reference model, official-format checkpoint dict) with random weights."""
    deepen, widen, last = {"n": (0.33, 0.25, 1024), "xl": (1.0, 1.5, 512)}[scale]
    torch.manual_seed(seed)
    ref = OfficialYOLOWorld(neck, dual, bn_head, deepen, widen, last, embed_dims, text_model, rep_prompts)
    randomize(ref, seed)
    meta = {"mmengine_version": "0.10.3", "epoch": 80, "iter": 1000, "cfg": "model = dict(type='YOLOWorldDetector')"}
    return ref, {"meta": meta, "state_dict": {k: v.clone() for k, v in ref.state_dict().items()}}


def text_embeddings(k: int, dim: int, seed: int = 1) -> torch.Tensor:
    """L2-normalised random class embeddings ``(K, D)``, as the official language backbone outputs them."""
    return F.normalize(torch.randn(k, dim, generator=torch.Generator().manual_seed(seed)), dim=-1)


def compare(ref: OfficialYOLOWorld, model, txt: torch.Tensor, hw=(96, 128), batch=2, dtype=torch.float64):
    """Max |diff| of decoded xyxy boxes and sigmoid scores, reference vs converted, same image and embeddings.

    Both run in float64 by default: random-weight boxes reach hundreds of pixels, where float32 rounding alone is
    ~1e-5 px per operation; in float64 any difference left is a conversion error, not rounding.
    """
    x = torch.rand(batch, 3, *hw, generator=torch.Generator().manual_seed(7), dtype=torch.float64).to(dtype)
    if not getattr(model, "folded", False):
        model.set_classes([f"class{i}" for i in range(txt.shape[0])], embeddings=txt)
    ref, model = ref.to(dtype), model.to(dtype)
    with torch.no_grad():
        boxes, scores = ref(x, None if txt is None else txt[None].expand(batch, -1, -1).to(dtype))
        y = model(x)[0]  # (B, 4 + K, A), boxes xywh
    ref.float(), model.float()
    xy, wh = y[:, :2].transpose(1, 2), y[:, 2:4].transpose(1, 2)
    ours = torch.cat([xy - wh / 2, xy + wh / 2], -1)  # (B, A, 4) xyxy
    assert ours.shape == boxes.shape and y[:, 4:].transpose(1, 2).shape == scores.shape
    assert scores.std() > 0.01, "scores are saturated: the parity check would be weak"
    return (ours - boxes).abs().max().item(), (y[:, 4:].transpose(1, 2) - scores).abs().max().item()


# ======================================================================================================================
# Parity per family
# ======================================================================================================================
FAMILIES = {  # id: (neck, dual, bn_head, embed_dims, scale, K, image size, expected family)
    "v2": ("vlpan", False, True, 512, "n", 5, (96, 128), "v2"),
    "v1": ("vlpan", True, False, 512, "n", 3, (128, 96), "v1"),
    "effneck": ("efficient", False, True, 512, "n", 7, (64, 96), "v2-effneck"),
    "plain-neck": ("plain", False, True, 512, "n", 4, (64, 64), "v2-plain-neck"),
    "768d": ("vlpan", False, True, 768, "n", 6, (96, 96), "v2"),
    "v1-bn-effneck": ("efficient", True, True, 512, "n", 3, (64, 64), "v1"),
}


@pytest.mark.parametrize("fam", sorted(FAMILIES))
def test_parity_with_official_reference(fam):
    neck, dual, bn, dim, scale, k, hw, family = FAMILIES[fam]
    ref, ckpt = official_checkpoint(neck, dual, bn, dim, scale, seed=len(fam))
    layout = detect_layout(ckpt["state_dict"])
    assert (layout.family, layout.scale, layout.embed_dim, layout.head) == (family, scale, dim, "bn" if bn else "l2")
    model = convert_official(ckpt, names=["a", "b"])  # no text tower: zero-embedding vocabulary, replaced below
    box, score = compare(ref, model, text_embeddings(k, dim), hw)
    assert box <= 1e-4 and score <= 1e-4, (box, score)
    # model.yaml rebuilds the same architecture (what trainers do before loading the weights)
    rebuilt = YWDetectionModel(model.yaml, verbose=False).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in model.state_dict().items()}


def test_parity_xl():
    """XL (widen 1.5 on the X base, full depth) at a tiny image size."""
    ref, ckpt = official_checkpoint("vlpan", False, True, 512, "xl", seed=3)
    layout = detect_layout(ckpt["state_dict"])
    assert (layout.family, layout.scale) == ("v2", "xl")
    model = convert_official(ckpt, names=["a"])
    assert model.model[0].conv.out_channels == 96 and model.model[9].cv2.conv.out_channels == 768
    box, score = compare(ref, model, text_embeddings(4, 512), (64, 64), batch=1)
    assert box <= 1e-4 and score <= 1e-4, (box, score)


def test_prompt_tuned_embeddings_become_the_vocabulary():
    """SimpleYOLOWorldDetector checkpoints: ``embeddings`` (+ MLP adapter) are the vocabulary, exactly."""
    ref, ckpt = official_checkpoint("vlpan", False, True, 512, "n", seed=5)
    e = torch.randn(3, 512)
    a0, a2 = nn.Linear(512, 1024), nn.Linear(1024, 512)
    ckpt["state_dict"].update({"embeddings": e, "adapter.0.weight": a0.weight.detach(),
                               "adapter.0.bias": a0.bias.detach(), "adapter.2.weight": a2.weight.detach(),
                               "adapter.2.bias": a2.bias.detach()})
    model = convert_official(ckpt, names="cat,dog,bird")
    assert model.names == {0: "cat", 1: "dog", 2: "bird"}
    with torch.no_grad():
        want = F.normalize(a2(torch.relu(a0(e))) + e, dim=-1)
    assert torch.allclose(model.txt_feats[0], want, atol=1e-6)
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        boxes, scores = ref(x, want[None])
        y = model(x)[0]
    assert (y[:, 4:].transpose(1, 2) - scores).abs().max() <= 1e-4


# ======================================================================================================================
# Re-parameterised checkpoints (vocabulary folded into the weights)
# ======================================================================================================================
@pytest.mark.parametrize("neck", ["vlpan", "efficient"])
def test_parity_rep_checkpoint(neck):
    """RepConvMaxSigmoidCSPLayerWithTwoConv / EfficientCSPLayer neck + RepYOLOWorldHeadModule, random folded weights."""
    n = 5
    ref, ckpt = official_checkpoint(neck, rep_prompts=n, seed=8)
    layout = detect_layout(ckpt["state_dict"])
    assert layout.head == "rep" and layout.folded_prompts == n and layout.family.endswith("-rep")
    with pytest.raises(CheckpointError, match="pass their 5 names"):
        convert_official(ckpt)
    model = convert_official(ckpt, names="a,b,c,d,e")
    assert model.folded and model.names == dict(enumerate("abcde"))
    box, score = compare(ref, model, None, (96, 64))
    assert box <= 1e-4 and score <= 1e-4, (box, score)
    with pytest.raises(RuntimeError):
        model.set_classes(["x"], embeddings=torch.randn(1, 512))


def official_tool(sd: dict, emb: torch.Tensor, conv_neck: bool) -> dict:
    """The math of the official tools/reparameterize_yoloworld.py, written out here (text tower dropped)."""
    out = {k: v.clone() for k, v in sd.items() if "text_model" not in k}
    for i in range(3):
        p = f"bbox_head.head_module.cls_contrasts.{i}."
        scale, bias = out.pop(p + "logit_scale"), out.pop(p + "bias")
        out[p + "conv.weight"] = (emb * scale.exp()).view(*emb.shape, 1, 1)  # (N, D, 1, 1)
        out[p + "conv.bias"] = torch.ones(emb.shape[0]) * bias
    for block in ("top_down_layers.0", "top_down_layers.1", "bottom_up_layers.0", "bottom_up_layers.1"):
        b = f"neck.{block}.attn_block."
        heads = out[b + "bias"].shape[0]
        guide = emb @ out.pop(b + "guide_fc.weight").T + out.pop(b + "guide_fc.bias")[None]  # (N, ec)
        if conv_neck:
            for h, g in enumerate(guide.split(guide.shape[1] // heads, dim=1)):
                out[b + f"guide_convs.{h}.weight"] = g[:, :, None, None]  # (N, hc, 1, 1)
        else:
            out[b + "guide_weight"] = guide.view(guide.shape[0], guide.shape[1] // heads, heads)
    return out


@pytest.mark.parametrize("conv_neck", [True, False])
def test_rep_from_official_tool_equals_unfolded(conv_neck):
    """A checkpoint folded by the official tool converts to the same outputs as the unfolded one with that text."""
    ref, ckpt = official_checkpoint(seed=9)
    emb = text_embeddings(4, 512, seed=3)
    folded = {"meta": {}, "state_dict": official_tool(ckpt["state_dict"], emb, conv_neck)}
    model = convert_official(folded, names=["w", "x", "y", "z"])
    assert model.folded
    box, score = compare(ref, model, emb, (64, 96))  # reference: the unfolded official model with the text
    assert box <= 1e-4 and score <= 1e-4, (box, score)


# ======================================================================================================================
# Text tower
# ======================================================================================================================
def test_text_tower_matches_transformers():
    """The embedded HF CLIP text tower, converted for open_clip, equals transformers' own forward (same tokens)."""
    hf = tiny_hf_text(heads=2)
    _, ckpt = official_checkpoint(text_model=hf, seed=2)
    assert any(k.startswith("backbone.text_model.model.text_model.encoder.layers.1.") for k in ckpt["state_dict"])
    model = convert_official(ckpt, names=["person", "bus"], text_config={"num_attention_heads": 2})
    enc = text_encoder_from_state(model.text_encoder_state)
    texts = ["person", "a photo of a traffic light", "bus", "hair drier"]
    tokens = enc.tokenize(texts)  # our tokenizer for both
    with torch.no_grad():
        want = F.normalize(hf(input_ids=tokens).text_embeds, dim=-1)
    got = enc.encode_tokens(tokens)
    assert (got - want).abs().max().item() <= 1e-5
    # the vocabulary installed on conversion came from the same tower
    assert (model.txt_feats[0] - want[[0, 2]]).abs().max().item() <= 1e-5
    # and set_classes uses it without any separate CLIP
    assert not os.environ.get("YW_CLIP")
    model.set_classes(["hair drier", "person"])
    assert (model.txt_feats[0] - want[[3, 0]]).abs().max().item() <= 1e-5
    assert model.text_encoder_id == enc.identity


# ======================================================================================================================
# Files: YOLOWorld("...-<8hex>.pth"), yw convert, errors
# ======================================================================================================================
def save_with_hash(ckpt: dict, folder, stem: str):
    """Save like MMEngine's publish step: the file name ends in the first 8 hex digits of its SHA-256."""
    tmp = folder / f"{stem}.tmp"
    torch.save(ckpt, tmp)
    digest = hashlib.sha256(tmp.read_bytes()).hexdigest()
    path = folder / f"{stem}-{digest[:8]}.pth"
    tmp.rename(path)
    return path


@pytest.fixture(scope="module")
def official_file(tmp_path_factory):
    """(reference, path of an official-format v2-n checkpoint with a 1-head tiny text tower, text model)."""
    hf = tiny_hf_text(heads=1)
    ref, ckpt = official_checkpoint(text_model=hf, seed=11)
    folder = tmp_path_factory.mktemp("official")
    return ref, save_with_hash(ckpt, folder, "yolo_world_v2_n_test"), hf


def test_yoloworld_loads_official_pth_end_to_end(official_file, tmp_path, assets):
    ref, path, hf = official_file
    model = yw_ext.YOLOWorld(path)
    assert type(model.model).__name__ == "YWDetectionModel"
    assert len(model.vocabulary) == 80 and model.vocabulary[:2] == ["person", "bicycle"]  # COCO by default
    assert model.model.text_encoder_state is not None
    model.set_classes(["person", "bus", "stop sign"])  # encoded by the checkpoint's own text tower
    enc = text_encoder_from_state(model.model.text_encoder_state)
    with torch.no_grad():
        want = F.normalize(hf(input_ids=enc.tokenize(["person", "bus", "stop sign"])).text_embeds, dim=-1)
    assert (model.model.txt_feats[0] - want).abs().max().item() <= 1e-5
    x = torch.rand(1, 3, 96, 96)
    with torch.no_grad():
        boxes, scores = ref(x, want[None])
        y = model.model(x)[0]
    assert (y[:, 4:].transpose(1, 2) - scores).abs().max().item() <= 1e-4
    res = model.predict(assets / "bus.jpg", imgsz=128, conf=0.0, verbose=False)[0]
    assert res.names == {0: "person", 1: "bus", 2: "stop sign"} and len(res.boxes) > 0
    # saved as .pt (Ultralytics format), the text tower and vocabulary travel with it
    out = tmp_path / "converted.pt"
    model.save(out)
    again = yw_ext.YOLOWorld(out)
    assert again.vocabulary == ["person", "bus", "stop sign"]
    again.set_classes(["bus", "person"])
    assert (again.model.txt_feats[0] - want[[1, 0]]).abs().max().item() <= 1e-5


def test_meta_class_names_pickled_meta_and_yw_clip_precedence(tmp_path, monkeypatch, tiny_clip_file):
    """meta['dataset_meta']['classes'] is the default vocabulary; a meta with non-tensor objects still loads; an
    explicit $YW_CLIP wins over the embedded text tower."""
    np = pytest.importorskip("numpy")
    _, ckpt = official_checkpoint(text_model=tiny_hf_text(heads=1, seed=4), seed=12)
    ckpt["meta"].update(dataset_meta={"classes": ("cat", "dog")}, seed=np.int64(3))  # numpy scalar: not weights-only
    path = tmp_path / "finetuned.pth"
    torch.save(ckpt, path)
    model = yw_ext.YOLOWorld(path)
    assert model.vocabulary == ["cat", "dog"]
    embedded = text_encoder_from_state(model.model.text_encoder_state).identity
    assert model.model.text_encoder_id == embedded
    monkeypatch.setenv("YW_CLIP", str(tiny_clip_file))
    model.set_classes(["cat"])
    assert model.model.text_encoder_id not in (None, embedded)


def test_yw_convert_writes_loadable_pt(official_file, tmp_path):
    ref, path, _ = official_file
    (tmp_path / "names.json").write_text(json.dumps([["person"], ["car", "automobile"], ["dog"]]))
    out = convert_cli({"src": str(path), "out": str(tmp_path / "conv.pt"), "names": str(tmp_path / "names.json")})
    assert out.is_file() and not list(tmp_path.glob("*.tmp"))
    model = yw_ext.YOLOWorld(out)
    assert model.vocabulary == ["person", "car", "dog"] and model.model.prompts_per_class == 2
    assert model.model.text_encoder_state is not None
    # names from a .txt file and as a comma list; text=False drops the text tower
    (tmp_path / "names.txt").write_text("person\nbus|coach\n")
    out2 = convert_cli({"src": str(path), "out": str(tmp_path / "conv2.pt"), "names": str(tmp_path / "names.txt")})
    assert yw_ext.YOLOWorld(out2).vocabulary == ["person", "bus"]
    out3 = convert_cli({"source": str(path), "output": str(tmp_path / "conv3.pt"), "names": "a,b", "text": False})
    m3 = yw_ext.YOLOWorld(out3)
    assert m3.vocabulary == ["a", "b"] and m3.model.text_encoder_state is None
    # weights equal the directly converted model's (fp16 storage, as Ultralytics saves)
    direct = yw_ext.YOLOWorld(path)
    direct.set_classes(["a", "b"])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        assert (direct.model.half().float()(x)[0] - m3.model(x)[0]).abs().max().item() <= 1e-4
    with pytest.raises(ValueError, match="unknown arguments"):
        convert_cli({"src": str(path), "bogus": 1})


def test_errors_are_clear_and_write_nothing(official_file, tmp_path):
    _, path, _ = official_file
    out = tmp_path / "out.pt"
    # truncated file
    bad = tmp_path / "truncated.pth"
    bad.write_bytes(path.read_bytes()[:4000])
    for call in (lambda: yw_ext.YOLOWorld(bad), lambda: convert_cli({"src": str(bad), "out": str(out)})):
        with pytest.raises(CheckpointError, match="truncated or corrupt"):
            call()
    # not a dict
    lst = tmp_path / "list.pth"
    torch.save([torch.zeros(1)], lst)
    with pytest.raises(CheckpointError, match="not an official YOLO-World checkpoint"):
        convert_cli({"src": str(lst), "out": str(out)})
    # an Ultralytics-format checkpoint (pickled model) with a .pth suffix
    ul = tmp_path / "ultralytics_style.pth"
    torch.save({"model": nn.Linear(1, 1), "train_args": {}}, ul)
    with pytest.raises(CheckpointError, match="Ultralytics-format checkpoint"):
        convert_cli({"src": str(ul), "out": str(out)})
    # a plain YOLOv8 in MMYOLO layout (backbone.stem..., head without contrastive branch, no text)
    _, ckpt = official_checkpoint(neck="plain", seed=4)
    plain = {k.replace("backbone.image_model.", "backbone."): v for k, v in ckpt["state_dict"].items()
             if "cls_contrasts" not in k}
    p = tmp_path / "yolov8_n_mmyolo.pth"
    torch.save({"meta": {}, "state_dict": plain}, p)
    with pytest.raises(CheckpointError, match="plain detector"):
        convert_cli({"src": str(p), "out": str(out)})
    # one wrong shape, one missing, one unexpected tensor: all named in one error
    _, ckpt = official_checkpoint(seed=6)
    sd = ckpt["state_dict"]
    sd["neck.top_down_layers.0.final_conv.conv.weight"] = sd["neck.top_down_layers.0.final_conv.conv.weight"][:, :-8]
    del sd["neck.bottom_up_layers.1.attn_block.guide_fc.bias"]
    sd["neck.extra_layer.weight"] = torch.zeros(3)
    p = tmp_path / "broken.pth"
    torch.save(ckpt, p)
    with pytest.raises(CheckpointError) as e:
        convert_cli({"src": str(p), "out": str(out)})
    msg = str(e.value)
    assert "neck.top_down_layers.0.final_conv.conv.weight -> model.12.cv2.conv.weight" in msg
    assert "model.21.attn.gl.bias" in msg and "neck.extra_layer.weight" in msg
    assert not out.exists() and not list(tmp_path.glob("*.tmp"))
    # a known official file name whose content does not match the hash in its name
    known = tmp_path / "yolo_world_v2_s_obj365v1_goldg_pretrain-55b943ea.pth"
    known.write_bytes(path.read_bytes())
    with pytest.raises(CheckpointError, match="damaged or incomplete"):
        yw_ext.YOLOWorld(known)


def test_yw_convert_command_line(official_file, tmp_path, capsys):
    """`yw convert src.pth out.pt names=...`: positional paths plus key=value options through the CLI."""
    from yw_ext.cli import entrypoint

    _, path, _ = official_file
    out = tmp_path / "cli.pt"
    assert entrypoint(["convert", str(path), str(out), "names=person,bus|coach"]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    assert yw_ext.YOLOWorld(out).vocabulary == ["person", "bus"]
    assert entrypoint(["convert", str(tmp_path / "missing.pth"), str(tmp_path / "x.pt")]) == 2
    assert not (tmp_path / "x.pt").exists()
