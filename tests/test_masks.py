"""Teacher-forcing mask: specific entries from REFERENCE.md, and equality with the reference's
block-by-block attention procedure (re-implemented here in numpy, independent of the mask code)."""

import numpy as np
import pytest

from dreamzero_policy.nn import masks
from dreamzero_policy.nn.masks import ACTION, CLEAN, NOISY, STATE

FS, FPB, APB, SPB, NB = 2, 2, 3, 1, 3  # 2 tokens per frame, 2 frames per block, 3 blocks
F = 1 + NB * FPB  # 7 latent frames


def _layout():
    return masks.teacher_forcing_layout(F, FS, FPB, APB, SPB)


def _idx(layout, kind, block=None, frame=None):
    sel = layout.kind == kind
    if block is not None:
        sel &= layout.block == block
    if frame is not None:
        sel &= layout.frame == frame
    return np.flatnonzero(sel)


def test_layout_order_and_sizes():
    lay = _layout()
    assert len(lay) == 2 * F * FS + NB * (APB + SPB)
    assert list(lay.kind[: F * FS]) == [CLEAN] * (F * FS)
    assert list(lay.kind[F * FS : 2 * F * FS]) == [NOISY] * (F * FS)
    assert list(lay.block[:FS]) == [0, 0] and list(lay.block[FS : 3 * FS]) == [1] * 4
    assert list(lay.kind[2 * F * FS :]) == [ACTION] * (NB * APB) + [STATE] * (NB * SPB)
    with pytest.raises(ValueError):
        masks.teacher_forcing_layout(6, FS, FPB, APB, SPB)


@pytest.mark.parametrize("window", [-1, 3])
def test_specific_entries(window):
    lay = _layout()
    m = masks.attention_mask(lay, lay, frames_per_block=FPB, local_window_frames=window)
    at = lambda q, k: m[np.ix_(q, k)]

    # clean frame 0 sees itself only
    c0 = _idx(lay, CLEAN, frame=0)
    assert at(c0, c0).all() and m[c0].sum() == len(c0) * len(c0)
    # clean block 1 sees frame 0 and block 1, nothing later, nothing noisy
    c1, c2, c3 = (_idx(lay, CLEAN, block=b) for b in (1, 2, 3))
    assert at(c1, c0).all() and at(c1, c1).all() and not at(c1, c2).any()
    assert not at(c1, _idx(lay, NOISY)).any() and not at(c1, _idx(lay, ACTION)).any()
    # clean block 3 (frames 5, 6): frame 0 always; frames 1-3 only without a window; frame 4 with a 3-frame window
    assert at(c3, c0).all() and at(c3, c3).all()
    early = _idx(lay, CLEAN, frame=1)
    assert at(c3, early).all() == (window < 0) and not at(c3, early).any() == (window > 0)
    assert at(c3, _idx(lay, CLEAN, frame=4)).all()
    if window > 0:
        assert not at(c3, _idx(lay, CLEAN, frame=3)).any()
    # noisy frame 0 sees noisy frame 0 only (not the clean frame 0)
    n0 = _idx(lay, NOISY, frame=0)
    assert at(n0, n0).all() and m[n0].sum() == len(n0) * len(n0)
    # noisy block 2 and action block 2: clean blocks 0-1, own noisy/action/state; not clean block 2 or noisy 1
    for q in (_idx(lay, NOISY, block=2), _idx(lay, ACTION, block=2)):
        assert at(q, c0).all() and at(q, c1).all() and not at(q, c2).any()
        assert at(q, _idx(lay, NOISY, block=2)).all() and at(q, _idx(lay, ACTION, block=2)).all()
        assert at(q, _idx(lay, STATE, block=2)).all()
        assert not at(q, _idx(lay, NOISY, block=1)).any() and not at(q, _idx(lay, ACTION, block=1)).any()
        assert not at(q, n0).any()
    # state i sees itself only
    s2 = _idx(lay, STATE, block=2)
    assert at(s2, s2).all() and m[s2].sum() == len(s2) * len(s2)


def _reference_procedure(q, k, v, window):
    """numpy transcription of the reference's _process_* loops (concatenated K/V per block).

    window > 0 is the reference's local-window path (the released recipes use max_chunk_size=4). For
    window < 0 the reference calls a token-causal kernel for clean blocks; we keep the block-causal rule
    REFERENCE.md states, so this transcription uses the whole block there.
    """

    def attn(qb, kb, vb):
        w = qb @ kb.T
        w = np.exp(w - w.max(-1, keepdims=True))
        return (w / w.sum(-1, keepdims=True)) @ vb

    half = F * FS
    blk = FS * FPB
    ci, ni = slice(0, half), slice(half, 2 * half)
    na = NB * APB
    ai, si = slice(2 * half, 2 * half + na), slice(2 * half + na, None)
    cq, ck, cv = q[ci], k[ci], v[ci]
    nq, nk, nv = q[ni], k[ni], v[ni]
    aq, ak, av = q[ai], k[ai], v[ai]
    sq, sk, sv = q[si], k[si], v[si]
    out = np.zeros_like(q)
    oc, on, oa, os_ = out[ci], out[ni], out[ai], out[si]
    oc[:FS] = attn(cq[:FS], ck[:FS], cv[:FS])
    on[:FS] = attn(nq[:FS], nk[:FS], nv[:FS])
    for b in range(NB):
        s, e = FS + b * blk, FS + (b + 1) * blk
        start = FS if window < 0 else max(FS, e - window * FS)
        kk = np.concatenate([ck[:FS], ck[start:e]])
        vv = np.concatenate([cv[:FS], cv[start:e]])
        oc[s:e] = attn(cq[s:e], kk, vv)
        a0, a1, s0, s1 = b * APB, (b + 1) * APB, b * SPB, (b + 1) * SPB
        kk = np.concatenate([ck[:s], nk[s:e], ak[a0:a1], sk[s0:s1]])
        vv = np.concatenate([cv[:s], nv[s:e], av[a0:a1], sv[s0:s1]])
        on[s:e] = attn(nq[s:e], kk, vv)
        oa[a0:a1] = attn(aq[a0:a1], kk, vv)
        os_[s0:s1] = attn(sq[s0:s1], sk[s0:s1], sv[s0:s1])
    return out


@pytest.mark.parametrize("window", [-1, 3])
def test_mask_equals_reference_procedure(window):
    from dreamzero_policy.nn.attention import dense_attention

    lay = _layout()
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((len(lay), 8)).astype(np.float32) for _ in range(3))
    m = masks.attention_mask(lay, lay, frames_per_block=FPB, local_window_frames=window)
    got = np.asarray(dense_attention(q[None, :, None], k[None, :, None], v[None, :, None], mask=m, scale=1.0))[0, :, 0]
    ref = _reference_procedure(q.astype(np.float64), k.astype(np.float64), v.astype(np.float64), window)
    np.testing.assert_allclose(got, ref, atol=1e-5)
