"""RepVL-PAN re-parameterisation: fold a fixed vocabulary into the neck and head weights, exactly.

A YOLO-World model uses its vocabulary (text embeddings ``T``, ``(P, D)`` with ``P = K * G`` prompts) in two
places, and both are linear in ``T`` once the vocabulary is fixed:

* **Neck** (every ``C2fAttn``'s ``MaxSigmoidAttnBlock``): ``guide = gl(T)`` (``(P, ec)``, ``ec = nh * hc``) is
  dotted with the block's per-pixel embedding, per head, and reduced with a max over the prompts. For head ``h`` the
  dot products are a 1x1 conv with weights ``guide[:, h*hc:(h+1)*hc]`` (``P`` outputs from ``hc`` inputs), so all
  heads together are one grouped 1x1 conv (``groups = nh``). ``RepMaxSigmoidAttn`` computes the max over ``P`` in
  chunks of at most ``chunk`` prompts with a running maximum, so the ``(B, nh, P, H, W)`` similarity tensor is
  never materialised (the same numbers; see ``docs/performance-notes.md``).
* **Head** (``WorldDetect``): with the BatchNorm contrastive head (v2), everything from the last 1x1 conv of each
  ``cv3`` branch (hidden -> D), through the BatchNorm (running statistics), to the dot product with the
  L2-normalised text, times ``exp(logit_scale)``, plus ``bias``, is affine: one 1x1 conv hidden -> P. With the plain
  contrastive head (v1) the image embedding is L2-normalised per pixel first, a non-linearity, so the branch keeps
  its hidden -> D conv and an ``L2Normalize`` and ends in a 1x1 conv D -> P holding ``normalize(T) *
  exp(logit_scale)`` and ``bias``.

The folded model has no text path: ``RepC2fAttn`` is not a ``C2fAttn`` and ``RepWorldDetect`` is a plain
Ultralytics ``Detect`` (not a ``WorldDetect``), so ``YWDetectionModel.predict`` calls them as ``m(x)``, Ultralytics'
exporter treats the head as any detector's, and the ONNX graph is convolutions only (no MatMul / Einsum / Gemm),
except with ``score_mode = "max"`` (below), where each level's last 1x1 conv is exported as one MatMul with constant
weights (``_matmul_max``; still no text input or text math).
The head outputs all ``P = K * G`` prompt scores; ``YWDetectionModel.predict`` still reduces them to ``K`` classes
with the max over each class's ``G`` synonyms.

``RepWorldDetect.score_mode = "max"`` (set by ``YWPredictor`` for the duration of ``predict``, and by the exporter for
``scores="max"`` graphs) reduces over the prompts inside the head instead: each anchor's best logit and its prompt,
one sigmoid per anchor (``reduce_scores``), output ``(B, 6, A)`` ``[box, score, class = prompt // score_groups]``:
what Ultralytics' best-class NMS (``multi_label=False``) keeps from the full output, without writing ``(B, P, A)``.

YOLO-World v1 (``ImagePoolingAttn``) rewrites the text with pooled image features before the bottom-up ``C2fAttn``
layers, so those layers' guides depend on the image and cannot be folded. ``reparameterize`` refuses v1 models
unless ``partial_v1=True``, which folds exactly what is image-independent (the head, which always sees the original
text, and the ``C2fAttn`` layers before the ``ImagePoolingAttn``) and leaves the rest dynamic.

Classes here are pickled into checkpoints by their import path (``yw_ext.nn.rep.RepC2fAttn`` ...): keep the names.
"""

from __future__ import annotations

import math
import mmap

import torch
import torch.nn as nn
import torch.nn.functional as F
from yw_ext.seam import (
    BNContrastiveHead,
    Bottleneck,
    C2fAttn,
    ContrastiveHead,
    Conv,
    Detect,
    ImagePoolingAttn,
    MaxSigmoidAttnBlock,
    WorldDetect,
    decode_boxes,
    detect_inference,
)

DEFAULT_CHUNK = 128
"""Most prompts whose similarity maps ``RepMaxSigmoidAttn`` computes at once before updating its running max."""
CHUNK_ALIGN = 16
"""Prompts per chunk are multiples of this where possible (see ``_chunk_sizes``)."""

HUGE_PAGE_MIN_BYTES = 8 << 20
"""CPU output buffers of the folded head at least this large are backed by transparent huge pages (0: never).

The folded head's two ``(B, P, A)`` outputs (class logits and decoded scores) are fresh allocations on every forward;
glibc maps allocations of that size (> 32 MB for s at 640 with P = 1203) anew each time, and touching them first costs
one page fault per 4 KiB page: about 9 ms per 40 MB on the machines here, a quarter of the head's time. The same
buffer mapped with ``MADV_HUGEPAGE`` faults in 2 MiB pages (about 2 ms). Linux only; elsewhere, when the kernel
has no transparent huge pages (``/sys/kernel/mm/transparent_hugepage/enabled`` = never), or below this size,
buffers are plain ``torch.empty``.
"""

# Detect attributes that may be set on a head instance (by parse_model, the model build, the exporter or a predictor)
# and that the folded head must carry over.
_HEAD_ATTRS = (
    "f", "i", "type", "np", "stride", "export", "format", "dynamic", "shape", "anchors", "strides", "max_det",
    "agnostic_nms", "xyxy", "legacy",
)  # fmt: skip
_LAYER_ATTRS = ("f", "i", "type", "np")  # parse_model's bookkeeping on every layer


def _chunk_sizes(num_prompts: int, chunk: int) -> list[int]:
    """Prompts per chunk of the neck's running max: full chunks of at most ``chunk``, then the remainder.

    Full chunks hold ``chunk`` rounded down to a multiple of ``CHUNK_ALIGN`` prompts (``chunk`` itself when smaller);
    the last chunk is padded up to a multiple of ``CHUNK_ALIGN`` when it has at least that many prompts and stays
    within ``chunk``. oneDNN's grouped convolutions (PyTorch on CPU) run several times faster with a 16-aligned
    number of outputs per group (AVX-512 blocks), and the padding stays below ``CHUNK_ALIGN`` prompts in all.

    Returns:
        Sizes per chunk, ``sum >= num_prompts`` (the excess is padding), each at most ``chunk``.

    Examples:
        >>> _chunk_sizes(1203, 128) == [128] * 9 + [64]  # 51 prompts + 13 padding in the last chunk
        True
        >>> _chunk_sizes(80, 128), _chunk_sizes(300, 128), _chunk_sizes(14, 128), _chunk_sizes(300, 1000)
        ([80], [128, 128, 48], [14], [304])
        >>> _chunk_sizes(20, 7), _chunk_sizes(300, 300)
        ([7, 7, 6], [300])
    """
    if num_prompts < 1 or chunk < 1:
        raise ValueError(f"num_prompts ({num_prompts}) and chunk ({chunk}) must be positive.")
    a = CHUNK_ALIGN
    if num_prompts <= chunk:
        sizes = [num_prompts]
    else:
        size = chunk // a * a if chunk >= a else chunk
        n_full, rest = divmod(num_prompts, size)
        sizes = [size] * n_full + ([rest] if rest else [])
    padded = math.ceil(sizes[-1] / a) * a
    if sizes[-1] >= a and padded <= chunk:
        sizes[-1] = padded
    return sizes


class RepMaxSigmoidAttn(nn.Module):
    """Max-sigmoid attention with the text guide folded into grouped 1x1 convs (no text input).

    ``aw[h] = sigmoid(max_p(conv_h(embed)[p]) / sqrt(hc) + bias[h]) * scale[h]`` and the output is
    ``proj_conv(x)`` times ``aw[h]`` per head, as ``MaxSigmoidAttnBlock`` with a fixed guide.

    The guide is stored in ``guide_convs``, one bias-free grouped 1x1 ``nn.Conv2d`` per chunk of prompts
    (``groups = nh``, weight ``(nh * size, hc, 1, 1)`` for a chunk of ``size`` prompts): group ``h`` of a conv outputs
    the similarities of that chunk's prompts for head ``h``. Chunks hold ``chunk`` prompts (the most of any chunk),
    the last one the remainder (``_chunk_sizes``: sizes are multiples of 16 where possible). The forward keeps a
    running maximum over the chunks, so at most ``(B, nh * chunk, H, W)`` similarities exist at a time. The last
    chunk is padded with copies of the last prompt (fewer than 16); a repeated prompt cannot change a maximum, so the
    result is exact. Each conv's chunk size is read from its weight, so models folded with other chunkings (equal
    chunks) load and run unchanged. Plain 4-d conv weights: THOP counts them, and Ultralytics' ``AutoBackend`` can
    convert the model to ``channels_last``.

    Eager CPU inference without autograd runs the convs channels-last and reduces each pixel's contiguous run of a
    chunk's similarities (``_max_similarity_nhwc``); tracing / export, autograd and other devices run the plain
    NCHW loop. Both compute the same maximum.

    Args:
        c1: Input channels.
        c2: Output channels (``nh * hc``).
        nh: Number of heads.
        ec: Embedding channels (a 1x1 ``Conv`` c1 -> ec is applied first when ``c1 != ec``); must equal ``c2``.
        num_prompts: P, the number of folded prompts.
        scale: Whether the block has a learnable per-head scale (Ultralytics' ``C2fAttn`` builds it without).
        chunk: Most prompts per chunk of the running max.

    Examples:
        >>> m = RepMaxSigmoidAttn(64, 64, nh=2, ec=64, num_prompts=300)
        >>> m.n_chunks, m.chunk, [tuple(c.weight.shape) for c in m.guide_convs]  # (nh * size, hc, 1, 1) per chunk
        (3, 128, [(256, 32, 1, 1), (256, 32, 1, 1), (96, 32, 1, 1)])
        >>> tuple(m(torch.zeros(1, 64, 8, 8)).shape)
        (1, 64, 8, 8)
    """

    def __init__(
        self, c1: int, c2: int, nh: int, ec: int, num_prompts: int, scale: bool = False, chunk: int = DEFAULT_CHUNK
    ):
        """Build the block with a zero guide (fill it with ``set_guide`` or a state dict)."""
        super().__init__()
        if c2 % nh or ec != c2:
            raise ValueError(f"need c2 ({c2}) divisible by nh ({nh}) and ec ({ec}) == c2.")
        self.nh = nh
        self.hc = c2 // nh
        self.num_prompts = int(num_prompts)
        sizes = _chunk_sizes(self.num_prompts, chunk)
        self.n_chunks, self.chunk = len(sizes), max(sizes)
        self.ec = Conv(c1, ec, k=1, act=False) if c1 != ec else None
        self.bias = nn.Parameter(torch.zeros(nh))
        self.proj_conv = Conv(c1, c2, k=3, s=1, act=False)
        self.scale = nn.Parameter(torch.ones(1, nh, 1, 1)) if scale else 1.0
        self.guide_convs = nn.ModuleList(nn.Conv2d(ec, nh * size, 1, groups=nh, bias=False) for size in sizes)
        for conv in self.guide_convs:
            nn.init.zeros_(conv.weight)

    @torch.no_grad()
    def set_guide(self, guide: torch.Tensor) -> None:
        """Store a guide ``(P, nh * hc)`` (``gl(text)``) in the chunked grouped-conv layout.

        Examples:
            >>> m = RepMaxSigmoidAttn(8, 8, nh=2, ec=8, num_prompts=3, chunk=2)
            >>> m.set_guide(torch.arange(24.0).view(3, 8))
            >>> m.guide_convs[0].weight[:, :, 0, 0].tolist()  # chunk 0: prompts 0, 1 for head 0, then for head 1
            [[0.0, 1.0, 2.0, 3.0], [8.0, 9.0, 10.0, 11.0], [4.0, 5.0, 6.0, 7.0], [12.0, 13.0, 14.0, 15.0]]
            >>> m.guide_convs[1].weight[:, :, 0, 0].tolist()  # chunk 1: prompt 2; heads 0, 1
            [[16.0, 17.0, 18.0, 19.0], [20.0, 21.0, 22.0, 23.0]]
            >>> m = RepMaxSigmoidAttn(8, 8, nh=2, ec=8, num_prompts=17, chunk=32)  # one chunk of 32: 15 padding copies
            >>> m.set_guide(torch.arange(136.0).view(17, 8))
            >>> m.guide_convs[0].weight[15:18, :, 0, 0].tolist()  # head 0: prompt 15, prompt 16, a copy of 16
            [[120.0, 121.0, 122.0, 123.0], [128.0, 129.0, 130.0, 131.0], [128.0, 129.0, 130.0, 131.0]]
        """
        p, c = guide.shape
        if p != self.num_prompts or c != self.nh * self.hc:
            raise ValueError(f"guide must be ({self.num_prompts}, {self.nh * self.hc}), got {tuple(guide.shape)}.")
        sizes = [conv.out_channels // self.nh for conv in self.guide_convs]
        pad = sum(sizes) - p
        if pad < 0:
            raise ValueError(f"guide_convs hold {sum(sizes)} prompts, fewer than the guide's {p}.")
        g = torch.cat((guide, guide[-1:].expand(pad, -1)), 0) if pad else guide  # (sum(sizes), nh * hc)
        for conv, w in zip(self.guide_convs, g.split(sizes)):
            w = w.view(-1, self.nh, self.hc).transpose(0, 1)  # (nh, size, hc)
            conv.weight.copy_(w.reshape(conv.out_channels, self.hc, 1, 1))  # (nh * size, hc, 1, 1)

    def _use_fast_path(self, x: torch.Tensor) -> bool:
        """Whether ``forward`` may use the channels-last, in-place path: eager CPU inference without autograd."""
        if x.device.type != "cpu" or torch.jit.is_tracing() or torch.jit.is_scripting():
            return False
        if torch.compiler.is_compiling():
            return False
        return not torch.is_grad_enabled() or not (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _max_similarity(self, embed: torch.Tensor, guides: list[torch.Tensor] | None = None) -> torch.Tensor:
        """Reference: ``max`` over all prompts of each head's similarity, ``(B, nh, H, W)`` (NCHW, traceable).

        Args:
            embed: ``(B, nh * hc, H, W)``.
            guides: Grouped 1x1 conv weights ``(nh * size, hc, 1, 1)`` per chunk instead of ``guide_convs``' own.
        """
        bs, _, h, w = embed.shape
        aw = None
        for g in guides if guides is not None else self.guide_convs:  # one chunk of prompts, every head
            s = F.conv2d(embed, g, groups=self.nh) if guides is not None else g(embed)  # (B, nh * size, H, W)
            s = s.view(bs, self.nh, -1, h, w).amax(2)  # (B, nh, size, H, W) -> (B, nh, H, W)
            aw = s if aw is None else torch.maximum(aw, s)
        return aw

    def _export_guides(self) -> list[torch.Tensor]:
        """The guide regrouped for export graphs: the fewest equal chunks of at most ``chunk`` prompts each.

        ONNX Runtime ran the 16-aligned chunks of ``guide_convs`` (``_chunk_sizes``, chosen for PyTorch's oneDNN)
        1.5-2% slower end to end (s at 640, P = 1203) than equal unaligned ones (its profile shows more time in
        blocked-layout reorders), so traced graphs keep the equal chunks ``reparameterize`` made before the
        alignment: 10 x 121 prompts at P = 1203, the same graph as before. Padding (fewer prompts than chunks)
        repeats the last prompt. Tensor ops on the parameters: the exporter's constant folding turns them into
        initializers.

        Returns:
            Grouped 1x1 conv weights ``(nh * size, hc, 1, 1)``, one per chunk.
        """
        p, nh, hc = self.num_prompts, self.nh, self.hc
        g = torch.cat([c.weight.reshape(nh, -1, hc) for c in self.guide_convs], 1)[:, :p]  # (nh, P, hc)
        n = math.ceil(p / self.chunk)
        size = math.ceil(p / n)
        if n * size > p:
            g = torch.cat((g, g[:, -1:].expand(nh, n * size - p, hc)), 1)
        return [w.reshape(nh * size, hc, 1, 1) for w in g.split(size, 1)]

    def _max_similarity_nhwc(self, embed: torch.Tensor) -> torch.Tensor:
        """``_max_similarity`` for inference: channels-last convs, each pixel's ``chunk`` similarities contiguous.

        oneDNN runs the grouped 1x1 convs faster on channels-last data, and the max over a chunk becomes a reduction
        over the innermost dimension; the running max is updated in place. Returns a ``(B, nh, H, W)`` view of a
        channels-last ``(B, H, W, nh)`` tensor.
        """
        bs, _, h, w = embed.shape
        e = embed.contiguous(memory_format=torch.channels_last)
        aw = None
        for conv in self.guide_convs:
            s = conv(e)  # (B, nh * size, H, W), channels-last
            s = s.permute(0, 2, 3, 1).reshape(bs, h, w, self.nh, -1).amax(-1)  # (B, H, W, nh)
            aw = s if aw is None else torch.maximum(aw, s, out=aw)
        return aw.permute(0, 3, 1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Attend ``x`` ``(B, c1, H, W)`` with the folded guide; returns ``(B, c2, H, W)``."""
        bs, _, h, w = x.shape
        embed = self.ec(x) if self.ec is not None else x  # (B, nh * hc, H, W)
        fast = self._use_fast_path(x)
        if fast:
            aw = self._max_similarity_nhwc(embed)  # (B, nh, H, W)
        elif torch.jit.is_tracing() or torch.onnx.is_in_onnx_export():
            aw = self._max_similarity(embed, self._export_guides())
        else:
            aw = self._max_similarity(embed)
        aw = aw / (self.hc**0.5)
        aw = aw + self.bias[None, :, None, None]
        aw = aw.sigmoid() * self.scale  # (B, nh, H, W)
        x = self.proj_conv(x)
        x = x.view(bs, self.nh, -1, h, w)  # (B, nh, hc, H, W)
        x = x.mul_(aw.unsqueeze(2)) if fast else x * aw.unsqueeze(2)
        return x.view(bs, -1, h, w)  # (B, c2, H, W)


class RepC2fAttn(nn.Module):
    """``C2fAttn`` with its vocabulary folded in: same ``cv1``, ``cv2``, ``m``, and a ``RepMaxSigmoidAttn``.

    Not a subclass of ``C2fAttn`` on purpose: models call it as ``m(x)``, without text.

    Args:
        c1: Input channels.
        c2: Output channels.
        n: Number of bottlenecks.
        ec: Attention embedding channels.
        nh: Attention heads.
        num_prompts: P, the number of folded prompts.
        shortcut: Bottleneck shortcuts.
        g: Groups of the bottlenecks' second conv.
        e: Hidden-channel expansion.
        chunk: Most prompts per chunk of the attention's running max.

    Examples:
        >>> m = RepC2fAttn(128, 64, n=1, ec=32, nh=2, num_prompts=80)
        >>> tuple(m(torch.zeros(1, 128, 8, 8)).shape)
        (1, 64, 8, 8)
    """

    def __init__(
        self,
        c1: int,
        c2: int,
        n: int = 1,
        ec: int = 128,
        nh: int = 1,
        num_prompts: int = 80,
        shortcut: bool = False,
        g: int = 1,
        e: float = 0.5,
        chunk: int = DEFAULT_CHUNK,
    ):
        """Build the layer with a zero guide (see ``from_c2fattn`` to fold a trained ``C2fAttn``)."""
        super().__init__()
        self.c = int(c2 * e)  # hidden channels
        self.cv1 = Conv(c1, 2 * self.c, 1, 1)
        self.cv2 = Conv((3 + n) * self.c, c2, 1)
        self.m = nn.ModuleList(Bottleneck(self.c, self.c, shortcut, g, k=((3, 3), (3, 3)), e=1.0) for _ in range(n))
        self.attn = RepMaxSigmoidAttn(self.c, self.c, nh=nh, ec=ec, num_prompts=num_prompts, chunk=chunk)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """CSP forward with the folded text-guided attention on the last bottleneck's output."""
        y = list(self.cv1(x).chunk(2, 1))  # 2 x (B, c, H, W)
        y.extend(m(y[-1]) for m in self.m)
        y.append(self.attn(y[-1]))
        return self.cv2(torch.cat(y, 1))  # (B, (3 + n) * c, H, W) -> (B, c2, H, W)

    @classmethod
    @torch.no_grad()
    def from_c2fattn(cls, layer: C2fAttn, text: torch.Tensor, chunk: int = DEFAULT_CHUNK) -> RepC2fAttn:
        """Fold a ``C2fAttn`` for the text embeddings ``(P, D)`` it would be called with; shares its submodules.

        Works on fused (``Conv`` + BN merged) and unfused layers alike: ``cv1``, ``cv2``, ``m``, ``attn.ec`` and
        ``attn.proj_conv`` are the original module objects; ``attn.bias`` and ``attn.scale`` are copied.

        Examples:
            >>> layer = C2fAttn(128, 64, n=1, ec=32, nh=2, gc=512).eval()
            >>> text = torch.randn(5, 512)
            >>> x = torch.randn(1, 128, 8, 8)
            >>> rep = RepC2fAttn.from_c2fattn(layer, text)
            >>> bool(torch.allclose(rep(x), layer(x, text[None]), atol=1e-5))
            True
        """
        a: MaxSigmoidAttnBlock = layer.attn
        c1 = layer.cv1.conv.in_channels
        c2 = layer.cv2.conv.out_channels
        ec = a.gl.out_features
        e = 0.5 if layer.c == int(c2 * 0.5) else layer.c / c2  # parse_model builds C2fAttn with e=0.5
        scale = isinstance(a.scale, nn.Parameter)
        rep = cls(c1, c2, n=len(layer.m), ec=ec, nh=a.nh, num_prompts=text.shape[0], e=e, chunk=chunk)
        if rep.c != layer.c:
            raise ValueError(f"cannot infer the hidden width of {layer} (got {rep.c}, expected {layer.c}).")
        rep.cv1, rep.cv2, rep.m = layer.cv1, layer.cv2, layer.m
        ra = rep.attn
        ra.ec, ra.proj_conv = a.ec, a.proj_conv
        ref = a.bias
        ra.bias = nn.Parameter(a.bias.detach().clone())
        ra.scale = nn.Parameter(a.scale.detach().clone()) if scale else a.scale
        guide = F.linear(text.double(), a.gl.weight.double(), a.gl.bias.double())  # (P, ec)
        ra.guide_convs.to(ref.device, ref.dtype)
        ra.set_guide(guide.to(ref.device, ref.dtype))
        for k in _LAYER_ATTRS:
            if hasattr(layer, k):
                setattr(rep, k, getattr(layer, k))
        return rep.train(layer.training)


class L2Normalize(nn.Module):
    """Per-pixel L2 normalisation over channels (``F.normalize(x, dim=1)``), as ``ContrastiveHead`` does.

    Examples:
        >>> y = L2Normalize()(torch.randn(1, 8, 4, 4))
        >>> bool(torch.allclose(y.norm(dim=1), torch.ones(1, 4, 4)))
        True
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``(B, C, H, W)`` to unit L2 norm along C."""
        return F.normalize(x, dim=1, p=2)


def _empty_output(shape: tuple[int, ...], like: torch.Tensor) -> torch.Tensor:
    """``like.new_empty(shape)``, backed by an anonymous ``mmap`` advised for huge pages when large and on the CPU.

    The tensor owns the mapping (``torch.frombuffer`` keeps the ``mmap`` object alive; it is unmapped when the last
    view of the tensor is gone). Its storage is not resizable, like any ``torch.from_numpy`` tensor.

    Examples:
        >>> t = _empty_output((2, 3), torch.zeros(1))
        >>> tuple(t.shape), t.dtype
        ((2, 3), torch.float32)
    """
    n = math.prod(shape)
    nbytes = n * like.element_size()
    if (
        like.device.type != "cpu"
        or not HUGE_PAGE_MIN_BYTES
        or nbytes < HUGE_PAGE_MIN_BYTES
        or not hasattr(mmap, "MADV_HUGEPAGE")
        or like.dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64)
    ):
        return like.new_empty(shape)
    try:
        buf = mmap.mmap(-1, nbytes, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
        buf.madvise(mmap.MADV_HUGEPAGE)
    except (OSError, ValueError):
        return like.new_empty(shape)
    return torch.frombuffer(buf, dtype=like.dtype, count=n).view(shape)


BAND_BYTES = 4 << 20
"""Largest temporary (bytes) of the folded head's banded classifier in eager inference (see ``_classify_into``)."""


def _classify_into(conv: nn.Module, x: torch.Tensor, logits: torch.Tensor, probs: torch.Tensor) -> None:
    """Write ``conv(x).flatten(2)`` into ``logits`` and its sigmoid into ``probs`` (both ``(B, C_out, H * W)`` views).

    ``logits`` and ``probs`` are column blocks of the head's ``(B, P, A)`` logits and ``(B, 4 + P, A)`` output. The
    conv runs over bands of rows whose output (at most ``BAND_BYTES``, at least one row) stays in the CPU caches
    while it is copied to ``logits`` and written, through the sigmoid, to ``probs``: no ``(B, P, H * W)`` temporary
    per level, no concatenation, and one pass over the logits for the sigmoid. A 1x1 conv's output rows depend only
    on the same input rows, so the bands compute the full conv's values (up to float rounding). Other modules, and
    other devices (where bands would only add kernel launches), run on the whole level. No autograd (``out=`` ops).
    """
    bs, _, h, w = x.shape
    c = logits.shape[1]
    pointwise = (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.groups == 1
    )
    if not pointwise or x.device.type != "cpu":
        o = conv(x).flatten(2)  # (B, C_out, H * W)
        logits.copy_(o)
        torch.sigmoid(o, out=probs)
        return
    rows = max(1, min(h, BAND_BYTES // max(1, bs * c * w * logits.element_size())))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        # NCHW band (a small copy): with RepWorldDetect._apply's weight layout the output is NCHW too, so the copies
        # below are contiguous rows (a channels-last output would need transposing copies, 1.7x slower here)
        o = conv(x[:, :, r0:r1].contiguous())  # (B, C_out, r1 - r0, W)
        dst = slice(r0 * w, r1 * w)
        logits[:, :, dst].view(bs, c, r1 - r0, w).copy_(o)
        torch.sigmoid(o, out=probs[:, :, dst].view(bs, c, r1 - r0, w))


def _classify_max_into(conv: nn.Module, x: torch.Tensor, best: torch.Tensor, idx: torch.Tensor) -> None:
    """Write the max over output channels of ``conv(x)`` into ``best`` and its channel into ``idx`` (``(B, H * W)``).

    The eager counterpart of the in-graph class reduction (``RepWorldDetect.score_mode = "max"``): the conv runs over
    bands of rows as in ``_classify_into`` and only each pixel's best logit and its channel are kept, so no
    ``(B, P, H * W)`` tensor is written at all. ``torch.max`` returns the first channel among equal maxima, as the full
    output's ``argmax`` does.
    """
    bs, _, h, w = x.shape
    c = conv.out_channels if type(conv) is nn.Conv2d else None
    if c is None or conv.kernel_size != (1, 1) or conv.stride != (1, 1) or x.device.type != "cpu":
        torch.max(conv(x).flatten(2), 1, out=(best, idx))  # (B, C_out, H * W) -> (B, H * W)
        return
    rows = max(1, min(h, BAND_BYTES // max(1, bs * c * w * x.element_size())))
    for r0 in range(0, h, rows):
        r1 = min(h, r0 + rows)
        o = conv(x[:, :, r0:r1].contiguous()).flatten(2)  # (B, C_out, (r1 - r0) * W)
        torch.max(o, 1, out=(best[:, r0 * w : r1 * w], idx[:, r0 * w : r1 * w]))


def score_group(num_scores: int) -> int:
    """Group width of ``grouped_max`` for ``num_scores`` scores per row: 16 up to 256 scores, else 32.

    Wider groups make the second, per-row pass shorter; the row is padded to a multiple of the width (K = 80: no
    padding, K = 1203: 13 padded scores).

    Examples:
        >>> score_group(80), score_group(1203)
        (16, 32)
    """
    return 16 if num_scores <= 256 else 32


def grouped_max(logits: torch.Tensor, group: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Max and first argmax over the last axis of ``logits`` ``(B, N, K')``, ``K'`` a multiple of ``group``.

    Written for ONNX Runtime, whose ``ArgMax`` (and ``TopK``) scan every element one at a time, several times slower
    than its vectorised ``ReduceMax``: the full pass is a ``ReduceMax`` over contiguous groups of ``group`` scores;
    ``ArgMax`` runs only over the ``K' / group`` group maxima and then over the ``group`` scores of the winning group
    (gathered row by row). The first group holding the maximum, then the first index in it, is the first index of the
    maximum: ``torch.max``'s and ONNX ``ArgMax``'s choice. Traced: ``ReduceMax``, ``ArgMax``, ``Range``, ``Gather``.

    Returns:
        ``best`` ``(B, N)`` and its index ``(B, N)`` (int64).

    Examples:
        >>> x = torch.tensor([[[0.0, 3, 1, 3], [5, 0, 0, 5]]])  # (1, 2, 4)
        >>> [t.tolist() for t in grouped_max(x, 2)]
        [[[3.0, 5.0]], [[1, 0]]]
    """
    b, n, k = logits.shape
    groups = k // group
    best, g = logits.unflatten(2, (groups, group)).amax(3).max(2)  # (B, N, K' / group) -> (B, N)
    rows = torch.arange(b * n, device=logits.device).view(b, n) * groups + g  # (B, N): rows of (B * N * groups, group)
    sub = logits.reshape(-1, group).index_select(0, rows.flatten()).view(b, n, group)  # (B, N, group)
    return best, g * group + sub.argmax(2)


def _matmul_max(conv: nn.Conv2d, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Max over output channels of the 1x1 ``conv(x)`` and its channel, ``(B, H * W)`` each, for export graphs.

    The conv is computed as a matmul ``(B, H * W, C + 1) @ (C + 1, K')``: the bias is the weight of a constant 1
    input (inside the matmul, no pass over the logits), ``K'`` pads the K outputs to a multiple of ``score_group(K)``
    with logits of ``finfo.min``, and the reduction (``grouped_max``) runs over the contiguous last axis. Only the
    ``C x H * W`` input is transposed. In ONNX Runtime (CPU) the NCHW conv output instead costs a layout reorder and
    strided ``ReduceMax`` / ``ArgMax`` passes over axis 1 of ``(B, K, H, W)``: the s-scale head at 640 with
    K = 1203 ran 136 ms that way and 112 ms this way (one thread; K = 80: 80 ms both; ``benchmarks/head_ops.py``).
    The values are the conv's up to float rounding (bitwise equal in the tests).
    """
    k, c = conv.out_channels, conv.in_channels
    group = score_group(k)
    w = conv.weight.reshape(k, c).t()  # (C, K)
    bias = conv.bias if conv.bias is not None else w.new_zeros(k)
    w = torch.cat((w, bias[None]), 0)  # (C + 1, K)
    pad = -k % group
    if pad:
        fill = torch.cat((w.new_zeros(c, pad), w.new_full((1, pad), torch.finfo(w.dtype).min)), 0)  # (C + 1, pad)
        w = torch.cat((w, fill), 1)  # (C + 1, K')
    xt = F.pad(x.flatten(2).transpose(1, 2), (0, 1), value=1.0)  # (B, H * W, C + 1)
    return grouped_max(xt @ w, group)


def _is_pointwise(conv: nn.Module) -> bool:
    """Whether ``conv`` is a plain 1x1 ``nn.Conv2d`` (stride 1, no padding, one group): a matmul over channels."""
    return (
        type(conv) is nn.Conv2d
        and conv.kernel_size == (1, 1)
        and conv.stride == (1, 1)
        and conv.padding in ((0, 0), "valid")
        and conv.dilation == (1, 1)
        and conv.groups == 1
    )


SCORE_MODES = ("full", "max")
"""``RepWorldDetect.score_mode`` / export ``scores=``: every class's score, or each anchor's best class only."""


def reduce_scores(best: torch.Tensor, idx: torch.Tensor, groups: int = 1) -> torch.Tensor:
    """Best logits ``(B, A)`` and their prompt ids ``(B, A)`` -> ``(B, 2, A)``: ``[sigmoid(best), prompt // groups]``.

    The sigmoid is monotonic, so ``sigmoid(max(logits))`` is ``max(sigmoid(logits))``, and the first prompt with the
    largest logit belongs to the first class with the largest synonym max (classes are ``groups`` consecutive prompts):
    the same score and class a full ``(B, 4 + K, A)`` output gives Ultralytics' NMS with ``multi_label=False``.

    Examples:
        >>> best, idx = torch.tensor([[0.0, 2.0]]), torch.tensor([[3, 4]])
        >>> reduce_scores(best, idx, groups=2).tolist()
        [[[0.5, 0.8807970285415649], [1.0, 2.0]]]
    """
    cls = idx if groups == 1 else torch.div(idx, groups, rounding_mode="floor")
    return torch.stack((best.sigmoid(), cls.to(best.dtype)), 1)  # (B, 2, A)


class RepWorldDetect(Detect):
    """A ``WorldDetect`` head with its vocabulary folded in: an Ultralytics ``Detect`` with ``nc = P`` prompts.

    ``cv2`` (boxes), ``dfl``, strides and anchors are the ``WorldDetect``'s; ``cv3[i]`` ends in the folded
    classifier: ``Conv(x, c3, 3), Conv(c3, c3, 3), Conv2d(c3, P, 1)`` for the BatchNorm contrastive head, or
    ``..., Conv2d(c3, D, 1), L2Normalize(), Conv2d(D, P, 1)`` for the plain (L2) contrastive head. Forward, decoding,
    export flags and ``fuse`` are ``Detect``'s (training returns ``{"boxes", "scores", "feats"}``); only eager
    inference decoding saves one ``(B, P, A)`` temporary (see ``_inference``).

    Args:
        nc: P, the number of folded prompts (= output score channels).
        hidden: The classification branch's hidden width c3 (``WorldDetect``: ``max(ch[0], min(nc_built, 100))``).
        embed: Text-embedding width D.
        with_bn: BatchNorm contrastive head (True) or plain L2 contrastive head (False).
        reg_max: DFL channels.
        ch: Input channels per level.

    Examples:
        >>> head = RepWorldDetect(nc=7, hidden=80, embed=512, with_bn=True, ch=(64, 128, 256))
        >>> head.stride = torch.tensor([8.0, 16.0, 32.0])
        >>> x = [torch.zeros(1, c, s, s) for c, s in ((64, 8), (128, 4), (256, 2))]
        >>> tuple(head.eval()(x)[0].shape)  # (B, 4 + P, anchors)
        (1, 11, 84)
    """

    def __init__(
        self, nc: int, hidden: int, embed: int = 512, with_bn: bool = True, reg_max: int = 16, ch: tuple[int, ...] = ()
    ):
        """Build the head with zero folded classifiers (see ``from_world_detect`` to fold a trained head)."""
        super().__init__(nc, reg_max=reg_max, end2end=False, ch=ch)
        self.embed = embed
        self.with_bn = with_bn
        self.score_mode = "full"  # "max": inference outputs (B, 6, A) [box, best score, class] (see _forward_max)
        self.score_groups = 1  # prompts per class for score_mode "max" (class = prompt // score_groups)

        def cls_branch(x: int) -> nn.Sequential:
            feats = [Conv(x, hidden, 3), Conv(hidden, hidden, 3)]
            if with_bn:
                return nn.Sequential(*feats, nn.Conv2d(hidden, nc, 1))
            return nn.Sequential(*feats, nn.Conv2d(hidden, embed, 1), L2Normalize(), nn.Conv2d(embed, nc, 1))

        self.cv3 = nn.ModuleList(cls_branch(x) for x in ch)

    def bias_init(self):
        """Initialise box biases only; class scores are the folded text similarities."""
        for a in self.cv2:
            a[-1].bias.data[:] = 1.0

    def _apply(self, fn, *args, **kwargs):
        """``nn.Module._apply``, then the classifiers' 1x1 conv weights get plain strides again (a metadata change).

        ``model.to(memory_format=torch.channels_last)`` (Ultralytics' ``AutoBackend`` does it on x86 CPUs) gives every
        4-d weight channels-last strides; for a ``(P, C, 1, 1)`` weight both layouts are the same memory, but the
        strides make PyTorch return channels-last outputs even for NCHW inputs, and ``_classify_into`` wants NCHW
        outputs for its row bands. Values and memory are unchanged.
        """
        out = super()._apply(fn, *args, **kwargs)
        for branch in self.cv3:
            w = branch[-1].weight if isinstance(branch[-1], nn.Conv2d) else None
            if w is not None and w.dim() == 4 and w.shape[2:] == (1, 1):
                plain = (w.shape[1], 1, 1, 1)
                if w.stride() != plain:
                    w.data = w.data.as_strided(w.shape, plain)
        return out

    def _use_fast_path(self, x: list[torch.Tensor]) -> bool:
        """Whether ``forward`` may write into preallocated buffers: eager inference without autograd, not export."""
        if self.training or self.export or getattr(self, "one2one_cv2", None) is not None or self.cv2 is None:
            return False
        if torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling():
            return False
        if not torch.is_grad_enabled():
            return True
        return not any(t.requires_grad for t in x) and not any(p.requires_grad for p in self.parameters())

    def forward(self, x: list[torch.Tensor]):
        """``Detect.forward``; in eager inference without autograd, the outputs are written in place.

        ``Detect`` runs each level's classifier into its own ``(B, P, H_i * W_i)`` tensor, concatenates them into the
        logits ``scores`` ``(B, P, A)``, applies the sigmoid into another ``(B, P, A)`` tensor and concatenates that
        with the boxes into ``y``: for large vocabularies several ``(B, P, A)``-sized buffers and copies per forward
        (40 MB each for s at 640 with P = 1203; fresh allocations of that size also cost a page fault per 4 KiB on
        every call). Here the two outputs are allocated once (``_empty_output``, huge pages) and each level's final
        conv writes its bands of rows into its column block of ``scores`` and, through the sigmoid, of ``y``
        (``_classify_into``). The outputs are the same, ``(y, {"boxes", "scores", "feats"})``. Training, export,
        tracing and autograd use ``Detect.forward`` unchanged.
        """
        if getattr(self, "score_mode", "full") == "max" and not self.training:
            return self._forward_max(x)
        if not self._use_fast_path(x):
            return super().forward(x)
        bs = x[0].shape[0]
        boxes = torch.cat([self.cv2[i](x[i]).view(bs, 4 * self.reg_max, -1) for i in range(self.nl)], dim=-1)
        sizes = [xi.shape[2] * xi.shape[3] for xi in x]
        scores = y = None
        a = 0
        for i, n in enumerate(sizes):
            branch = self.cv3[i]
            f = x[i]
            for j in range(len(branch) - 1):
                f = branch[j](f)  # (B, c3, H, W) (plain head: unit-norm (B, D, H, W))
            if scores is None:
                scores = _empty_output((bs, self.nc, sum(sizes)), f)  # (B, P, A) logits
                y = _empty_output((bs, 4 + self.nc, sum(sizes)), f)  # (B, 4 + P, A)
            _classify_into(branch[-1], f, scores[:, :, a : a + n], y[:, 4:, a : a + n])
            a += n
        preds = {"boxes": boxes, "scores": scores, "feats": x}
        y[:, :4] = decode_boxes(self, preds)  # (B, 4, A)
        return y, preds

    def _forward_max(self, x: list[torch.Tensor]):
        """Inference with ``score_mode = "max"``: ``(B, 6, A)`` rows ``[box (4), best score, best class]``.

        Each level's classifier output is reduced over its P channels right away (``max`` and ``argmax``), and the
        sigmoid is applied to the best logit only (``reduce_scores``): no ``(B, P, A)`` concatenation, no P x A
        sigmoids. Boxes are decoded as ``Detect`` decodes them (xywh, or xyxy when the exporter set ``xyxy``). In
        eager inference the classifier runs in row bands (``_classify_max_into``, oneDNN convs); traced (export) and
        with autograd, each level's last 1x1 conv is a MatMul in ``(B, H * W, C)`` layout with a grouped reduction
        over the contiguous class axis (``_matmul_max``). Returns ``y`` in export mode, else ``(y, {"boxes",
        "scores": best logits (B, 1, A), "feats"})``.
        """
        bs = x[0].shape[0]
        boxes = torch.cat([self.cv2[i](x[i]).view(bs, 4 * self.reg_max, -1) for i in range(self.nl)], dim=-1)
        fast = self._use_fast_path(x)
        best, idx = [], []
        for i in range(self.nl):
            branch = self.cv3[i]
            f = x[i]
            if fast:
                for j in range(len(branch) - 1):
                    f = branch[j](f)  # (B, c3, H, W)
                n = f.shape[2] * f.shape[3]
                b, k = f.new_empty((bs, n)), torch.empty((bs, n), dtype=torch.long, device=f.device)
                _classify_max_into(branch[-1], f, b, k)
            elif _is_pointwise(branch[-1]):  # export / tracing / autograd: matmul layout (see _matmul_max)
                b, k = _matmul_max(branch[-1], branch[:-1](f))  # (B, H_i * W_i) each
            else:
                b, k = branch(f).flatten(2).max(1)  # (B, P, H_i * W_i) -> (B, H_i * W_i)
            best.append(b)
            idx.append(k)
        best, idx = torch.cat(best, 1), torch.cat(idx, 1)  # (B, A)
        preds = {"boxes": boxes, "scores": best.unsqueeze(1), "feats": x}
        y = torch.cat((decode_boxes(self, preds), reduce_scores(best, idx, int(self.score_groups))), 1)  # (B, 6, A)
        return y if self.export else (y, preds)

    def _inference(self, x: dict[str, torch.Tensor]) -> torch.Tensor:
        """Decode to ``(B, 4 + P, A)`` like ``Detect._inference``, writing the sigmoid scores into the output.

        ``Detect`` builds ``sigmoid(scores)`` and then concatenates it with the boxes: two ``(B, P, A)`` buffers. For
        large vocabularies that memory traffic is a visible share of the run time (about 10% for s at 640 with
        P = 1203 on a CPU), so outside export and autograd the scores go straight into the output (same numbers).
        """
        s = x["scores"]  # (B, P, A) logits
        if (
            self.export
            or torch.jit.is_tracing()
            or torch.compiler.is_compiling()
            or (torch.is_grad_enabled() and s.requires_grad)
        ):
            return detect_inference(self, x)  # Detect's traceable / differentiable path
        dbox = decode_boxes(self, x)  # (B, 4, A)
        y = _empty_output((s.shape[0], 4 + s.shape[1], s.shape[2]), dbox)  # (B, 4 + P, A)
        y[:, :4] = dbox
        torch.sigmoid(s, out=y[:, 4:])
        return y

    @classmethod
    @torch.no_grad()
    def from_world_detect(cls, head: WorldDetect, text: torch.Tensor) -> RepWorldDetect:
        """Fold a ``WorldDetect`` for the text embeddings ``(P, D)`` it would be called with.

        The BatchNorm folds with its running statistics (eval semantics). ``cv2``, ``dfl`` and the first two convs of
        each ``cv3`` branch are the original module objects (fused or not).

        Examples:
            >>> wd = WorldDetect(nc=80, embed=512, with_bn=True, ch=(64, 128, 256)).eval()
            >>> wd.stride = torch.tensor([8.0, 16.0, 32.0])
            >>> rep = RepWorldDetect.from_world_detect(wd, torch.randn(3, 512)).eval()
            >>> rep.nc, len(rep.cv3[0])
            (3, 3)
        """
        heads = list(head.cv4)
        with_bn = isinstance(heads[0], BNContrastiveHead)
        if not all(isinstance(c, BNContrastiveHead if with_bn else ContrastiveHead) for c in heads):
            raise TypeError(f"unsupported contrastive heads {[type(c).__name__ for c in heads]}.")
        if with_bn and not all(hasattr(c, "norm") for c in heads):
            raise RuntimeError("the head's BNContrastiveHead was already fused (its BatchNorm removed); cannot fold.")
        p, d = text.shape
        last = [b[-1] for b in head.cv3]  # Conv2d(c3, D, 1) per level
        hidden = last[0].in_channels
        ch = tuple(b[0].conv.in_channels for b in head.cv2)
        rep = cls(p, hidden=hidden, embed=d, with_bn=with_bn, reg_max=head.reg_max, ch=ch)
        rep.cv2, rep.dfl = head.cv2, head.dfl
        ref = last[0].weight
        t = F.normalize(text.to(ref.device).double(), dim=-1, p=2)  # (P, D)
        for i, (branch, conv, ctr) in enumerate(zip(head.cv3, last, heads)):
            ts = t * ctr.logit_scale.double().exp()  # (P, D)
            if with_bn:
                bn = ctr.norm
                a = bn.weight.double() / (bn.running_var.double() + bn.eps).sqrt()  # (D,)
                w = conv.weight.double().flatten(1)  # (D, c3)
                b = conv.bias.double() if conv.bias is not None else torch.zeros_like(a)  # (D,)
                w_img = a[:, None] * w  # (D, c3): conv then BN
                b_img = a * (b - bn.running_mean.double()) + bn.bias.double()  # (D,)
                fw = ts @ w_img  # (P, c3)
                fb = ts @ b_img + ctr.bias.double()  # (P,)
                out = nn.Conv2d(hidden, p, 1)
                out.weight.data = fw.view(p, hidden, 1, 1).to(ref.dtype)  # (P, c3, 1, 1)
                out.bias.data = fb.to(ref.dtype)
                rep.cv3[i] = nn.Sequential(branch[0], branch[1], out.to(ref.device))
            else:
                out = nn.Conv2d(d, p, 1)
                out.weight.data = ts.view(p, d, 1, 1).to(ref.dtype)  # (P, D, 1, 1)
                out.bias.data = ctr.bias.double().expand(p).to(ref.dtype).clone()
                rep.cv3[i] = nn.Sequential(branch[0], branch[1], conv, L2Normalize(), out.to(ref.device))
        for k in _HEAD_ATTRS:
            if k in vars(head):
                setattr(rep, k, getattr(head, k))
        return rep.train(head.training)


def _has_vocabulary(model: nn.Module) -> bool:
    """Whether the model's text embeddings are a vocabulary (set by set_classes / from a checkpoint), not a placeholder.

    ``YWDetectionModel`` records ``vocab_set`` in ``set_vocabulary``; models pickled before that flag existed are
    assumed to carry one.
    """
    return bool(getattr(model, "vocab_set", True)) and getattr(model, "txt_feats", None) is not None


@torch.no_grad()
def reparameterize(model: nn.Module, partial_v1: bool = False, chunk: int = DEFAULT_CHUNK) -> None:
    """Fold the model's current vocabulary into its neck and head weights, in place (RepVL-PAN).

    Every ``C2fAttn`` becomes a ``RepC2fAttn`` and the ``WorldDetect`` a ``RepWorldDetect``; outputs are unchanged
    (up to float rounding) for the vocabulary at folding time, synonyms included (the head outputs all ``K * G``
    prompt scores and ``YWDetectionModel.predict`` keeps taking the max over each class's ``G`` prompts). Afterwards
    ``model.folded`` is True, the model ignores text, and ``set_classes`` raises. BatchNorms fold with their running
    statistics, i.e. the folded model computes what the original computes in eval mode.

    Args:
        model: A ``YWDetectionModel`` with a vocabulary (``set_classes``, or a loaded checkpoint's).
        partial_v1: For YOLO-World v1 (``ImagePoolingAttn``): fold the head and the ``C2fAttn`` layers before the
            ``ImagePoolingAttn`` (exact), keep the later ``C2fAttn`` layers dynamic (they use image-enhanced text at
            run time, so the model keeps using its stored ``txt_feats`` there). Without it v1 models raise.
        chunk: Most prompts per chunk of the neck's running max (memory/speed trade-off; results do not change).

    Raises:
        RuntimeError: already folded; no vocabulary set; v1 model without ``partial_v1``.
        TypeError: not a YOLO-World model (no ``WorldDetect`` head).

    Examples:
        >>> from yw_ext.nn.model import YWDetectionModel
        >>> m = YWDetectionModel("yw-v2-n.yaml", verbose=False).eval()
        >>> m.set_classes(["car", "bus"], embeddings=torch.randn(2, 2, 512))  # 2 prompts per class
        >>> reparameterize(m)
        >>> m.folded, type(m.model[-1]).__name__, tuple(m(torch.zeros(1, 3, 64, 64))[0].shape)
        (True, 'RepWorldDetect', (1, 6, 84))
    """
    if getattr(model, "folded", False):
        raise RuntimeError(
            "this model is already re-parameterised (its vocabulary is folded into the weights); reparameterize() "
            "runs once, on an unfolded model with a vocabulary."
        )
    layers = getattr(model, "model", None)
    if not isinstance(layers, nn.Sequential) or not isinstance(layers[-1], WorldDetect):
        raise TypeError(
            f"reparameterize() needs a YOLO-World model with a WorldDetect head, got {type(model).__name__}"
            + (f" ending in {type(layers[-1]).__name__}." if isinstance(layers, nn.Sequential) else ".")
        )
    if not _has_vocabulary(model):
        raise RuntimeError(
            "this model has no vocabulary to fold (its text embeddings are the random placeholder it was built "
            "with). Call set_classes(names) or set_classes(names, embeddings=...) first."
        )
    pooling = [m.i for m in layers if isinstance(m, ImagePoolingAttn)]
    if pooling and not partial_v1:
        raise RuntimeError(
            "YOLO-World v1 models (ImagePoolingAttn) cannot be fully re-parameterised: layer "
            f"{pooling[0]} rewrites the text with pooled image features, so the later C2fAttn layers' guides depend "
            "on the image. Use a v2 model, or reparameterize(model, partial_v1=True) to fold the head and the "
            "C2fAttn layers before the ImagePoolingAttn exactly and keep the rest dynamic."
        )
    ref = layers[-1].cv3[0][-1].weight
    text = model.txt_feats.detach().to(ref.device, torch.float32)
    if text.dim() == 3:
        if text.shape[0] != 1:
            raise ValueError(f"txt_feats must hold one vocabulary (1, P, D), got {tuple(text.shape)}.")
        text = text[0]  # (P, D), P = K * G prompts
    if text.shape[-1] != layers[-1].cv3[0][-1].out_channels:
        raise ValueError(f"text width {text.shape[-1]} != head embedding width {layers[-1].cv3[0][-1].out_channels}.")
    original = True  # C2fAttn layers see the stored text until an ImagePoolingAttn rewrites it
    for idx, m in enumerate(layers):
        if isinstance(m, ImagePoolingAttn):
            original = False
        elif isinstance(m, C2fAttn) and original:
            layers[idx] = RepC2fAttn.from_c2fattn(m, text, chunk=chunk)
    head = layers[-1]  # a head with its own fold (yw_ext.nn.seg.WorldSegment) folds itself
    layers[-1] = head.fold(text) if hasattr(head, "fold") else RepWorldDetect.from_world_detect(head, text)
    model.folded = True


__all__ = ["DEFAULT_CHUNK", "SCORE_MODES", "RepMaxSigmoidAttn", "RepC2fAttn", "L2Normalize", "RepWorldDetect",
           "reduce_scores", "reparameterize"]
