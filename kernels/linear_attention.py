"""Chunked linear attention in Triton (causal and non-causal), forward and backward.

Linear attention (Katharopoulos et al., 2020, "Transformers are RNNs") replaces ``exp(q . k)`` by
``phi(q) . phi(k)``; with feature-mapped inputs ``Q = phi(q)``, ``K = phi(k)`` this kernel returns
the two sums the mechanisms normalise (linear attention, MALA):

    numerator_i   = sum_j (Q_i . K_j) V_j        (B, H, Lq, Dv)
    denominator_i = sum_j  Q_i . K_j             (B, H, Lq)

over every key ``j`` (non-causal), or ``j <= i`` (causal). The causal sums are computed per chunk
of ``C`` tokens: inside a chunk exactly, as a ``C x C`` lower-triangular product
``tril(Q_c K_c^T) V_c``; across chunks through a running state ``S = sum K_j V_j^T`` ``(Dk, Dv)``
and ``z = sum K_j`` ``(Dk,)`` carried in registers:

    numerator_c   = Q_c S_{<c} + tril(Q_c K_c^T) V_c
    denominator_c = Q_c z_{<c} + rowsum(tril(Q_c K_c^T))

The sequence is cut into segments of whole chunks that run in parallel (enough to fill the GPU):
a first pass sums each segment's ``K_s^T V_s`` and ``K_s``, a PyTorch prefix sum over segments
gives each segment its starting state, and each program then walks the chunks of one segment of
one (batch, head) and one tile of ``Dv`` columns (non-causal: every segment starts from the total).
The backward pass walks each segment forward for ``dQ`` (from the same prefix states) and backward
for ``dK``/``dV`` (from the suffix sums ``dS = sum_i Q_i dnum_i^T`` and ``dz = sum_i dden_i Q_i`` of
the later segments). The partial ``dQ``/``dK`` of different ``Dv`` tiles are summed in float32.
All products accumulate in float32.

Reference it must match: ``shared_attention.layers.linear.linear_attention_parts`` (and the
quadratic ``linear_attention_parts_quadratic``); tests in
``tests/kernels/test_linear_attention.py`` compare values and gradients under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import contextlib
import os

import torch
import triton
import triton.language as tl
from torch import Tensor

__all__ = ["linear_attention_parts", "LinearAttentionFunction", "MAX_FEATURE_DIM", "INTERPRETED"]

INTERPRETED = os.environ.get("TRITON_INTERPRET", "0") == "1"
MAX_FEATURE_DIM = 256


@triton.jit
def _load_rows(ptr, stride_l, offs_l, offs_d, length, dim):
    """``(len(offs_l), len(offs_d))`` float32 tile of rows ``offs_l`` (zeros out of range)."""
    tile = tl.load(
        ptr + offs_l[:, None] * stride_l + offs_d[None, :],
        mask=(offs_l[:, None] < length) & (offs_d[None, :] < dim),
        other=0.0,
    )
    return tile.to(tl.float32)


@triton.jit
def _initial_state(INIT_STATE, INIT_SUM, init, offs_k, offs_v, dv_pad, BLOCK_DK: tl.constexpr):
    """The ``(Dk, Dv tile)`` state and ``(Dk,)`` sum a segment starts from (entry ``init``)."""
    state = tl.load(INIT_STATE + init * BLOCK_DK * dv_pad + offs_k[:, None] * dv_pad + offs_v[None, :])
    return state, tl.load(INIT_SUM + init * BLOCK_DK + offs_k)


@triton.jit
def _segment_sums_kernel(
    A,
    B,
    W,
    STATE,
    SUM,
    stride_abh,
    stride_al,
    stride_bbh,
    stride_bl,
    length,
    da,
    db,
    seg_len,
    n_seg,
    db_pad,
    HAS_W: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_DA: tl.constexpr,
    BLOCK_DB: tl.constexpr,
    PRECISION: tl.constexpr,
):
    """Per segment of ``seg_len`` rows: ``A_s^T B_s`` (a ``Db`` tile) and ``sum_rows w A_s``."""
    bh = tl.program_id(0).to(tl.int64)
    b_tile = tl.program_id(1)
    seg = tl.program_id(2)
    offs_c = tl.arange(0, CHUNK)
    offs_a = tl.arange(0, BLOCK_DA)
    offs_b = b_tile * BLOCK_DB + tl.arange(0, BLOCK_DB)
    start = seg * seg_len
    end = tl.minimum(start + seg_len, length)
    state = tl.zeros([BLOCK_DA, BLOCK_DB], dtype=tl.float32)
    vec = tl.zeros([BLOCK_DA], dtype=tl.float32)
    for c0 in range(start, end, CHUNK):
        rows = c0 + offs_c
        a = _load_rows(A + bh * stride_abh, stride_al, rows, offs_a, end, da)
        b = _load_rows(B + bh * stride_bbh, stride_bl, rows, offs_b, end, db)
        state += tl.dot(tl.trans(a), b, input_precision=PRECISION)
        if HAS_W:
            w = tl.load(W + bh * length + rows, mask=rows < end, other=0.0).to(tl.float32)
            vec += tl.sum(a * w[:, None], 0)
        else:
            vec += tl.sum(a, 0)
    base = bh * n_seg + seg
    tl.store(STATE + base * BLOCK_DA * db_pad + offs_a[:, None] * db_pad + offs_b[None, :], state)
    tl.store(SUM + base * BLOCK_DA + offs_a, vec, mask=(offs_a < BLOCK_DA) & (b_tile == 0))


@triton.jit
def _linear_fwd_kernel(
    QF,
    KF,
    V,
    NUM,
    DEN,
    INIT_STATE,
    INIT_SUM,
    stride_qbh,
    stride_ql,
    stride_kbh,
    stride_kl,
    stride_vbh,
    stride_vl,
    stride_nbh,
    stride_nl,
    q_len,
    k_len,
    dk,
    dv,
    seg_len,
    n_init,
    init_seg_step,
    dv_pad,
    CAUSAL: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    dv_tile = tl.program_id(1)
    seg = tl.program_id(2)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = dv_tile * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q_base = QF + bh * stride_qbh
    k_base = KF + bh * stride_kbh
    v_base = V + bh * stride_vbh
    state, key_sum = _initial_state(
        INIT_STATE, INIT_SUM, bh * n_init + seg * init_seg_step, offs_k, offs_v, dv_pad, BLOCK_DK
    )
    start = seg * seg_len
    end = tl.minimum(start + seg_len, q_len)
    for c0 in range(start, end, CHUNK):
        rows = c0 + offs_c
        q = _load_rows(q_base, stride_ql, rows, offs_k, q_len, dk)
        num = tl.dot(q, state, input_precision=PRECISION)
        den = tl.sum(q * key_sum[None, :], 1)
        if CAUSAL:
            k = _load_rows(k_base, stride_kl, rows, offs_k, k_len, dk)
            v = _load_rows(v_base, stride_vl, rows, offs_v, k_len, dv)
            intra = tl.dot(q, tl.trans(k), input_precision=PRECISION)
            intra = tl.where(offs_c[:, None] >= offs_c[None, :], intra, 0.0)
            num += tl.dot(intra, v, input_precision=PRECISION)
            den += tl.sum(intra, 1)
            state += tl.dot(tl.trans(k), v, input_precision=PRECISION)
            key_sum += tl.sum(k, 0)
        tl.store(
            NUM + bh * stride_nbh + rows[:, None] * stride_nl + offs_v[None, :],
            num.to(NUM.dtype.element_ty),
            mask=(rows[:, None] < q_len) & (offs_v[None, :] < dv),
        )
        tl.store(DEN + bh * q_len + rows, den.to(DEN.dtype.element_ty), mask=(rows < q_len) & (dv_tile == 0))


@triton.jit
def _linear_bwd_dq_kernel(
    KF,
    V,
    DNUM,
    DDEN,
    DQ,
    INIT_STATE,
    INIT_SUM,
    stride_kbh,
    stride_kl,
    stride_vbh,
    stride_vl,
    stride_gbh,
    stride_gl,
    q_len,
    k_len,
    dk,
    dv,
    n_bh,
    seg_len,
    n_init,
    init_seg_step,
    dv_pad,
    CAUSAL: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    dv_tile = tl.program_id(1)
    seg = tl.program_id(2)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = dv_tile * BLOCK_DV + tl.arange(0, BLOCK_DV)
    k_base = KF + bh * stride_kbh
    v_base = V + bh * stride_vbh
    g_base = DNUM + bh * stride_gbh
    dq_base = DQ + (dv_tile * n_bh + bh) * q_len * BLOCK_DK
    state, key_sum = _initial_state(
        INIT_STATE, INIT_SUM, bh * n_init + seg * init_seg_step, offs_k, offs_v, dv_pad, BLOCK_DK
    )
    start = seg * seg_len
    end = tl.minimum(start + seg_len, q_len)
    for c0 in range(start, end, CHUNK):
        rows = c0 + offs_c
        dnum = _load_rows(g_base, stride_gl, rows, offs_v, q_len, dv)
        dden = tl.load(DDEN + bh * q_len + rows, mask=(rows < q_len) & (dv_tile == 0), other=0.0).to(
            tl.float32
        )
        dq = tl.dot(dnum, tl.trans(state), input_precision=PRECISION) + dden[:, None] * key_sum[None, :]
        if CAUSAL:
            k = _load_rows(k_base, stride_kl, rows, offs_k, k_len, dk)
            v = _load_rows(v_base, stride_vl, rows, offs_v, k_len, dv)
            d_intra = tl.dot(dnum, tl.trans(v), input_precision=PRECISION) + dden[:, None]
            d_intra = tl.where(offs_c[:, None] >= offs_c[None, :], d_intra, 0.0)
            dq += tl.dot(d_intra, k, input_precision=PRECISION)
            state += tl.dot(tl.trans(k), v, input_precision=PRECISION)
            key_sum += tl.sum(k, 0)
        tl.store(dq_base + rows[:, None] * BLOCK_DK + offs_k[None, :], dq, mask=rows[:, None] < q_len)


@triton.jit
def _linear_bwd_dkdv_kernel(
    QF,
    KF,
    V,
    DNUM,
    DDEN,
    DK,
    DV,
    INIT_STATE,
    INIT_SUM,
    stride_qbh,
    stride_ql,
    stride_kbh,
    stride_kl,
    stride_vbh,
    stride_vl,
    stride_gbh,
    stride_gl,
    stride_dvbh,
    stride_dvl,
    q_len,
    k_len,
    dk,
    dv,
    n_bh,
    seg_len,
    n_init,
    init_seg_step,
    dv_pad,
    CAUSAL: tl.constexpr,
    CHUNK: tl.constexpr,
    BLOCK_DK: tl.constexpr,
    BLOCK_DV: tl.constexpr,
    PRECISION: tl.constexpr,
):
    bh = tl.program_id(0).to(tl.int64)
    dv_tile = tl.program_id(1)
    seg = tl.program_id(2)
    offs_c = tl.arange(0, CHUNK)
    offs_k = tl.arange(0, BLOCK_DK)
    offs_v = dv_tile * BLOCK_DV + tl.arange(0, BLOCK_DV)
    q_base = QF + bh * stride_qbh
    k_base = KF + bh * stride_kbh
    v_base = V + bh * stride_vbh
    g_base = DNUM + bh * stride_gbh
    dk_base = DK + (dv_tile * n_bh + bh) * k_len * BLOCK_DK
    init = bh * n_init + seg * init_seg_step
    # suffix sums of Q^T dNum and dDen Q over later queries (all queries when not causal)
    d_state = tl.load(INIT_STATE + init * BLOCK_DK * dv_pad + offs_k[:, None] * dv_pad + offs_v[None, :])
    d_key_sum = tl.load(
        INIT_SUM + init * BLOCK_DK + offs_k, mask=(offs_k < BLOCK_DK) & (dv_tile == 0), other=0.0
    )
    start = seg * seg_len
    n_chunks = tl.cdiv(tl.minimum(start + seg_len, k_len) - start, CHUNK)
    for step in range(0, n_chunks):
        rows = start + (n_chunks - 1 - step) * CHUNK + offs_c
        k = _load_rows(k_base, stride_kl, rows, offs_k, k_len, dk)
        v = _load_rows(v_base, stride_vl, rows, offs_v, k_len, dv)
        grad_k = tl.dot(v, tl.trans(d_state), input_precision=PRECISION) + d_key_sum[None, :]
        grad_v = tl.dot(k, d_state, input_precision=PRECISION)
        if CAUSAL:
            q = _load_rows(q_base, stride_ql, rows, offs_k, q_len, dk)
            dnum = _load_rows(g_base, stride_gl, rows, offs_v, q_len, dv)
            dden = tl.load(DDEN + bh * q_len + rows, mask=(rows < q_len) & (dv_tile == 0), other=0.0)
            dden = dden.to(tl.float32)
            causal_t = offs_c[None, :] >= offs_c[:, None]
            intra_t = tl.where(causal_t, tl.dot(k, tl.trans(q), input_precision=PRECISION), 0.0)
            d_intra_t = tl.dot(v, tl.trans(dnum), input_precision=PRECISION) + dden[None, :]
            d_intra_t = tl.where(causal_t, d_intra_t, 0.0)
            grad_k += tl.dot(d_intra_t, q, input_precision=PRECISION)
            grad_v += tl.dot(intra_t, dnum, input_precision=PRECISION)
            d_state += tl.dot(tl.trans(q), dnum, input_precision=PRECISION)
            d_key_sum += tl.sum(q * dden[:, None], 0)
        tl.store(dk_base + rows[:, None] * BLOCK_DK + offs_k[None, :], grad_k, mask=rows[:, None] < k_len)
        tl.store(
            DV + bh * stride_dvbh + rows[:, None] * stride_dvl + offs_v[None, :],
            grad_v.to(DV.dtype.element_ty),
            mask=(rows[:, None] < k_len) & (offs_v[None, :] < dv),
        )


def _tile_sizes(
    chunk_size: int, dk: int, dv: int, device: torch.device, dv_block: int | None
) -> tuple[int, int, int]:
    chunk = max(16, triton.next_power_of_2(chunk_size))
    block_dk = max(16, triton.next_power_of_2(dk))
    dv_cap = dv_block or (MAX_FEATURE_DIM if device.type == "cpu" else 64)
    block_dv = min(max(16, triton.next_power_of_2(dv)), max(16, triton.next_power_of_2(dv_cap)))
    return chunk, block_dk, block_dv


def _segment_length(
    length: int, chunk: int, programs: int, device: torch.device, segments: int | None
) -> tuple[int, int]:
    """Tokens per segment (a multiple of ``chunk``) and the segment count.

    Segments run in parallel: each starts from the sum of the states of the segments before it
    (a small prefix sum in PyTorch). ``segments=None`` picks enough to give the GPU about four
    programs per multiprocessor (``programs`` = programs per segment); in the interpreter, up to 3
    so that the tests cross segment borders.
    """
    n_chunks = max(1, triton.cdiv(length, chunk))
    if segments is None:
        if device.type == "cpu":
            segments = 3
        else:
            sms = torch.cuda.get_device_properties(device).multi_processor_count
            segments = triton.cdiv(4 * sms, max(1, programs))
    segments = max(1, min(int(segments), n_chunks))
    seg_len = triton.cdiv(n_chunks, segments) * chunk
    return seg_len, max(1, triton.cdiv(length, seg_len))


def _segment_sums(
    a3: Tensor, b3: Tensor, w: Tensor | None, length: int, seg_len: int, n_seg: int, tiles: tuple[int, ...]
) -> tuple[Tensor, Tensor]:
    """``(BH, n_seg, BLOCK_DA, Db_pad)`` segment sums of ``A^T B`` and ``(BH, n_seg, BLOCK_DA)`` of ``w A``."""
    chunk, block_da, block_db = tiles
    n_bh, db = a3.shape[0], b3.shape[2]
    n_tiles = triton.cdiv(db, block_db)
    state = torch.empty(n_bh, n_seg, block_da, n_tiles * block_db, device=a3.device, dtype=torch.float32)
    sums = torch.empty(n_bh, n_seg, block_da, device=a3.device, dtype=torch.float32)
    _segment_sums_kernel[(n_bh, n_tiles, n_seg)](
        a3,
        b3,
        a3 if w is None else w,
        state,
        sums,
        a3.stride(0),
        a3.stride(1),
        b3.stride(0),
        b3.stride(1),
        length,
        a3.shape[2],
        db,
        seg_len,
        n_seg,
        n_tiles * block_db,
        HAS_W=w is not None,
        CHUNK=chunk,
        BLOCK_DA=block_da,
        BLOCK_DB=block_db,
        PRECISION=_precision(a3.dtype),
        **_launch_options(a3.device),
    )
    return state, sums


def _initial_states(
    state: Tensor, sums: Tensor, causal: bool, n_seg: int, reverse: bool = False
) -> tuple[Tensor, Tensor, int, int]:
    """What each segment starts from: the exclusive prefix (``reverse``: suffix) of the segment sums
    when causal, else their total shared by every segment. Returns ``(state, sums, n_init, step)``
    with segment ``s`` of row ``bh`` at index ``bh * n_init + s * step``."""
    if not causal:
        return state.sum(1).contiguous(), sums.sum(1).contiguous(), 1, 0
    if state.shape[1] < n_seg:  # fewer segments on this side: the missing ones are empty
        pad = n_seg - state.shape[1]
        state = torch.cat([state, state.new_zeros(state.shape[0], pad, *state.shape[2:])], 1)
        sums = torch.cat([sums, sums.new_zeros(sums.shape[0], pad, sums.shape[2])], 1)
    state, sums = state[:, :n_seg], sums[:, :n_seg]

    def exclusive(t: Tensor) -> Tensor:
        if reverse:
            t = t.flip(1)
        t = torch.cat([torch.zeros_like(t[:, :1]), t.cumsum(1)[:, :-1]], 1)
        return (t.flip(1) if reverse else t).contiguous()

    return exclusive(state), exclusive(sums), n_seg, 1


def _precision(dtype: torch.dtype) -> str:
    return "ieee" if dtype == torch.float32 else "tf32"


def _rows_view(t: Tensor) -> Tensor:
    """``(B*H, L, D)`` view with unit stride on the last dim."""
    t = t if t.stride(-1) == 1 else t.contiguous()
    return t.reshape(-1, t.shape[-2], t.shape[-1])


# Launch overrides set by :func:`launch_config` (tuning runs).
_LAUNCH_OVERRIDES: dict[str, int] = {}


@contextlib.contextmanager
def launch_config(**options: int):
    """Run the kernels with other ``num_warps`` / ``num_stages`` (GPU only), e.g. to tune them."""
    saved = dict(_LAUNCH_OVERRIDES)
    _LAUNCH_OVERRIDES.update(options)
    try:
        yield
    finally:
        _LAUNCH_OVERRIDES.clear()
        _LAUNCH_OVERRIDES.update(saved)


def _launch_options(device: torch.device) -> dict[str, int]:
    return {} if device.type == "cpu" else {"num_warps": 4, "num_stages": 2, **_LAUNCH_OVERRIDES}


class LinearAttentionFunction(torch.autograd.Function):
    """Autograd wrapper of the chunked kernels; returns ``(numerator, denominator)``.

    ``dv_block`` caps the ``Dv`` columns per program (default: 64 on GPUs, all in the interpreter);
    several ``Dv`` tiles run in parallel and their partial ``dQ``/``dK`` are summed. ``segments``
    splits the sequence into that many parallel segments (default: enough to fill the GPU).
    """

    @staticmethod
    def forward(
        ctx,
        q_feat: Tensor,
        k_feat: Tensor,
        v: Tensor,
        causal: bool,
        chunk_size: int,
        dv_block: int | None = None,
        segments: int | None = None,
    ):
        B, H, Lq, Dk = q_feat.shape
        Lk, Dv = k_feat.shape[2], v.shape[3]
        device = q_feat.device
        chunk, block_dk, block_dv = _tile_sizes(chunk_size, Dk, Dv, device, dv_block)
        n_tiles = triton.cdiv(Dv, block_dv)
        q3, k3, v3 = _rows_view(q_feat), _rows_view(k_feat), _rows_view(v)
        seg_q, n_seg_q = _segment_length(Lq, chunk, B * H * n_tiles, device, segments)
        seg_k, n_seg_k = (
            (seg_q, triton.cdiv(Lk, seg_q))
            if causal
            else _segment_length(Lk, chunk, B * H * n_tiles, device, segments)
        )
        state, sums = _segment_sums(k3, v3, None, Lk, seg_k, n_seg_k, (chunk, block_dk, block_dv))
        init_state, init_sums, n_init, step = _initial_states(state, sums, causal, n_seg_q)
        numerator = torch.empty(B * H, Lq, Dv, device=device, dtype=v.dtype)
        denominator = torch.empty(B * H, Lq, device=device, dtype=q_feat.dtype)
        _linear_fwd_kernel[(B * H, n_tiles, n_seg_q)](
            q3,
            k3,
            v3,
            numerator,
            denominator,
            init_state,
            init_sums,
            q3.stride(0),
            q3.stride(1),
            k3.stride(0),
            k3.stride(1),
            v3.stride(0),
            v3.stride(1),
            numerator.stride(0),
            numerator.stride(1),
            Lq,
            Lk,
            Dk,
            Dv,
            seg_q,
            n_init,
            step,
            n_tiles * block_dv,
            CAUSAL=causal,
            CHUNK=chunk,
            BLOCK_DK=block_dk,
            BLOCK_DV=block_dv,
            PRECISION=_precision(q_feat.dtype),
            **_launch_options(device),
        )
        ctx.save_for_backward(q3, k3, v3)
        ctx.shape = (B, H, Lq, Lk, Dk, Dv)
        ctx.causal = causal
        ctx.tiles = (chunk, block_dk, block_dv)
        ctx.segments = (seg_q, n_seg_q, seg_k, n_seg_k)
        ctx.dtypes = (q_feat.dtype, k_feat.dtype)
        return numerator.view(B, H, Lq, Dv), denominator.view(B, H, Lq)

    @staticmethod
    def backward(ctx, grad_numerator: Tensor, grad_denominator: Tensor):
        q3, k3, v3 = ctx.saved_tensors
        B, H, Lq, Lk, Dk, Dv = ctx.shape
        chunk, block_dk, block_dv = ctx.tiles
        seg_q, n_seg_q, seg_k, n_seg_k = ctx.segments
        causal = ctx.causal
        device = q3.device
        n_tiles = triton.cdiv(Dv, block_dv)
        dv_pad = n_tiles * block_dv
        g3 = _rows_view(grad_numerator)
        dden = grad_denominator.reshape(B * H, Lq).contiguous()
        dq_parts = torch.empty(n_tiles, B * H, Lq, block_dk, device=device, dtype=torch.float32)
        dk_parts = torch.empty(n_tiles, B * H, Lk, block_dk, device=device, dtype=torch.float32)
        dv = torch.empty(B * H, Lk, Dv, device=device, dtype=v3.dtype)
        meta = {
            "CAUSAL": causal,
            "CHUNK": chunk,
            "BLOCK_DK": block_dk,
            "BLOCK_DV": block_dv,
            "PRECISION": _precision(q3.dtype),
            **_launch_options(device),
        }
        # dQ: the key-side prefix states again, as in the forward pass
        state, sums = _segment_sums(k3, v3, None, Lk, seg_k, n_seg_k, ctx.tiles)
        init_state, init_sums, n_init, step = _initial_states(state, sums, causal, n_seg_q)
        _linear_bwd_dq_kernel[(B * H, n_tiles, n_seg_q)](
            k3,
            v3,
            g3,
            dden,
            dq_parts,
            init_state,
            init_sums,
            k3.stride(0),
            k3.stride(1),
            v3.stride(0),
            v3.stride(1),
            g3.stride(0),
            g3.stride(1),
            Lq,
            Lk,
            Dk,
            Dv,
            B * H,
            seg_q,
            n_init,
            step,
            dv_pad,
            **meta,
        )
        # dK, dV: suffix sums of Q^T dNum and dDen Q over the query segments after each key segment
        state, sums = _segment_sums(q3, g3, dden, Lq, seg_q, n_seg_q, ctx.tiles)
        init_state, init_sums, n_init, step = _initial_states(state, sums, causal, n_seg_k, reverse=True)
        _linear_bwd_dkdv_kernel[(B * H, n_tiles, n_seg_k)](
            q3,
            k3,
            v3,
            g3,
            dden,
            dk_parts,
            dv,
            init_state,
            init_sums,
            q3.stride(0),
            q3.stride(1),
            k3.stride(0),
            k3.stride(1),
            v3.stride(0),
            v3.stride(1),
            g3.stride(0),
            g3.stride(1),
            dv.stride(0),
            dv.stride(1),
            Lq,
            Lk,
            Dk,
            Dv,
            B * H,
            seg_k,
            n_init,
            step,
            dv_pad,
            **meta,
        )
        dq = dq_parts.sum(0)[..., :Dk].to(ctx.dtypes[0]).view(B, H, Lq, Dk)
        dk = dk_parts.sum(0)[..., :Dk].to(ctx.dtypes[1]).view(B, H, Lk, Dk)
        return dq, dk, dv.view(B, H, Lk, Dv), None, None, None, None


def linear_attention_parts(
    q_feat: Tensor, k_feat: Tensor, v: Tensor, *, causal: bool, chunk_size: int = 64
) -> tuple[Tensor, Tensor]:
    """Numerator and denominator of linear attention from feature-mapped queries and keys.

    Args:
        q_feat: ``phi(q)``, ``(B, H, Lq, Dk)``, non-negative features (not checked).
        k_feat: ``phi(k)``, ``(B, H, Lk, Dk)``; padded keys must be zero rows.
        v: ``(B, H, Lk, Dv)``.
        causal: sum over ``j <= i`` only (needs ``Lq == Lk``).
        chunk_size: tokens per chunk; rounded up to a power of two >= 16 (a ``tl.dot`` tile).
            Affects speed and memory only, not the result beyond rounding.

    Dtypes float16, bfloat16, float32 (one for all three); ``Dk, Dv <= 256``; CUDA, or CPU under
    ``TRITON_INTERPRET=1``.

    Returns:
        ``numerator (B, H, Lq, Dv)`` (dtype of ``v``) and ``denominator (B, H, Lq)`` (dtype of
        ``q_feat``), accumulated in float32.
    """
    for name, t in (("q_feat", q_feat), ("k_feat", k_feat), ("v", v)):
        if not isinstance(t, Tensor) or t.dim() != 4:
            shape = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"linear_attention_parts: {name} must be 4-D (B, H, L, D), got {shape}")
    B, H, Lq, Dk = q_feat.shape
    if k_feat.shape[:2] != (B, H) or v.shape[:3] != k_feat.shape[:3] or k_feat.shape[3] != Dk:
        raise ValueError(
            "linear_attention_parts: need q_feat (B, H, Lq, Dk), k_feat (B, H, Lk, Dk), v (B, H, Lk, Dv); "
            f"got {tuple(q_feat.shape)}, {tuple(k_feat.shape)}, {tuple(v.shape)}"
        )
    if causal and Lq != k_feat.shape[2]:
        raise ValueError(f"linear_attention_parts: causal needs Lq == Lk, got {Lq} and {k_feat.shape[2]}")
    if not isinstance(chunk_size, int) or chunk_size <= 0:
        raise ValueError(f"linear_attention_parts: chunk_size must be a positive int, got {chunk_size!r}")
    dtypes = {q_feat.dtype, k_feat.dtype, v.dtype}
    if len(dtypes) != 1 or q_feat.dtype not in (torch.float16, torch.bfloat16, torch.float32):
        raise ValueError(
            f"linear_attention_parts (Triton): q_feat, k_feat, v must share a float16/bfloat16/float32 "
            f"dtype, got {q_feat.dtype}, {k_feat.dtype}, {v.dtype}"
        )
    if max(Dk, v.shape[3]) > MAX_FEATURE_DIM:
        raise ValueError(
            f"linear_attention_parts (Triton): feature dims up to {MAX_FEATURE_DIM}, got Dk={Dk}, Dv={v.shape[3]}"
        )
    if len({q_feat.device, k_feat.device, v.device}) != 1:
        raise ValueError("linear_attention_parts: q_feat, k_feat, v must be on one device")
    if q_feat.device.type == "cpu" and not INTERPRETED:
        raise RuntimeError(
            "linear_attention_parts (Triton) on CPU needs TRITON_INTERPRET=1 set before import"
        )
    if B * H == 0 or Lq == 0:
        numerator = q_feat.new_zeros(B, H, Lq, v.shape[3], dtype=v.dtype)
        return numerator, q_feat.new_zeros(B, H, Lq)
    return LinearAttentionFunction.apply(q_feat, k_feat, v, bool(causal), chunk_size)
