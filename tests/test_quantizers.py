"""Invariants of the quantization grids (hypothesis property tests) and agreement with PyTorch's reference ops."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from qlib import QuantGrid, QuantSpec, fake_quantize, tensor_ranges

bits_st = st.integers(2, 8)
scheme_st = st.sampled_from(["symmetric", "asymmetric"])


@st.composite
def matrices(draw, max_rows: int = 8, max_cols: int = 8):
    rows, cols = draw(st.integers(1, max_rows)), draw(st.integers(1, max_cols))
    scale = draw(st.sampled_from([1e-3, 1.0, 50.0]))
    values = draw(arrays(np.float32, (rows, cols), elements=st.floats(-1, 1, width=32)))
    return torch.from_numpy(values * np.float32(scale))


@st.composite
def spec_for(draw, x: torch.Tensor):
    """A random valid spec for ``x``: any granularity whose groups divide its rows."""
    rows = x.shape[0]
    granularity = draw(st.sampled_from(["tensor", "channel", "group"]))
    groups = draw(st.sampled_from([d for d in range(1, rows + 1) if rows % d == 0])) if granularity == "group" else None
    return QuantSpec(draw(bits_st), draw(scheme_st), granularity, groups)


def per_element(grid: QuantGrid, values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Broadcast per-group ``values`` [G] to ``x``'s shape."""
    return values.repeat_interleave(x.numel() // grid.groups).reshape(x.shape)


@settings(max_examples=200, deadline=None)
@given(data=st.data(), x=matrices())
def test_error_at_most_half_a_step_inside_the_range(data, x):
    spec = data.draw(spec_for(x))
    grid = spec.grid_for(x)
    lo, hi = (per_element(grid, t, x) for t in grid.clip_range)
    step = per_element(grid, grid.scale, x)
    inside = (x >= lo) & (x <= hi)
    error = (grid.fake_quantize(x) - x).abs()
    assert torch.all(error[inside] <= step[inside] / 2 * (1 + 1e-4) + 1e-6 * x.abs().max())


@settings(max_examples=200, deadline=None)
@given(data=st.data(), x=matrices())
def test_output_stays_within_the_clip_range(data, x):
    spec = data.draw(spec_for(x))
    grid = spec.grid_for(x * 0.5)  # a range narrower than x, so clipping happens
    lo, hi = (per_element(grid, t, x) for t in grid.clip_range)
    y = grid.fake_quantize(x)
    tol = 1e-5 * (hi - lo).abs().max() + 1e-7
    assert torch.all(y >= lo - tol) and torch.all(y <= hi + tol)


@settings(max_examples=200, deadline=None)
@given(bits=bits_st, scheme=scheme_st, lo=st.floats(-100, 0), width=st.floats(1e-3, 100), data=st.data())
def test_grid_points_are_fixed_points(bits, scheme, lo, width, data):
    grid = QuantGrid.from_range(torch.tensor([lo]), torch.tensor([lo + width]), bits, scheme == "symmetric")
    # Grid points are only representable when the step is well above float32's spacing at the range's magnitude.
    assume(float(grid.scale) > 64 * torch.finfo(torch.float32).eps * max(abs(lo), abs(lo + width)))
    q = torch.tensor(data.draw(st.lists(st.integers(grid.qmin, grid.qmax), min_size=1, max_size=16)))
    on_grid = grid.dequantize(q)
    assert torch.equal(grid.quantize(on_grid).to(torch.int64), q)
    assert torch.allclose(grid.fake_quantize(on_grid), on_grid, rtol=1e-6, atol=1e-6 * float(grid.scale))


@settings(max_examples=100, deadline=None)
@given(x=matrices(), bits=bits_st)
def test_symmetric_maps_zero_to_zero(x, bits):
    x = torch.cat([x, torch.zeros(1, x.shape[1])])
    y = fake_quantize(x, bits, "symmetric")
    assert torch.all(y[-1] == 0)
    assert torch.all(y[x == 0] == 0)


@settings(max_examples=100, deadline=None)
@given(x=matrices(), bits=bits_st, scheme=scheme_st)
def test_group_wise_with_one_group_per_row_is_per_channel(x, bits, scheme):
    per_channel = fake_quantize(x, bits, scheme, "channel")
    assert torch.equal(fake_quantize(x, bits, scheme, "group", groups=x.shape[0]), per_channel)


@settings(max_examples=100, deadline=None)
@given(x=matrices(), bits=bits_st, scheme=scheme_st)
def test_group_wise_with_one_group_is_per_tensor(x, bits, scheme):
    assert torch.equal(fake_quantize(x, bits, scheme, "group", groups=1), fake_quantize(x, bits, scheme, "tensor"))


@settings(max_examples=100, deadline=None)
@given(x=matrices(), bits=bits_st, scheme=scheme_st)
def test_ste_gradient_is_one_inside_the_clip_range_and_zero_outside(x, bits, scheme):
    grid = QuantSpec(bits, scheme).grid_for(x * 0.5)
    x = x.clone().requires_grad_(True)
    grid.fake_quantize(x).sum().backward()
    lo, hi = grid.clip_range
    expected = ((x >= lo) & (x <= hi)).float()
    assert torch.equal(x.grad, expected)


@settings(max_examples=100, deadline=None)
@given(x=matrices(max_rows=6), bits=bits_st)
def test_symmetric_matches_torch_reference_ops(x, bits):
    m = 2 ** (bits - 1) - 1
    grid = QuantSpec(bits, "symmetric").grid_for(x)
    ref = torch.fake_quantize_per_tensor_affine(x, float(grid.scale), 0, -m, m)
    assert torch.equal(grid.fake_quantize(x), ref)
    grid = QuantSpec(bits, "symmetric", "channel").grid_for(x)
    zero = torch.zeros(x.shape[0], dtype=torch.int32)
    assert torch.equal(grid.fake_quantize(x), torch.fake_quantize_per_channel_affine(x, grid.scale, zero, 0, -m, m))


@settings(max_examples=100, deadline=None)
@given(x=matrices(), bits=bits_st, zero_point=st.integers(0, 3), step=st.sampled_from([0.25, 0.5, 0.125]))
def test_asymmetric_matches_torch_where_the_schemes_coincide(x, bits, zero_point, step):
    """Q-BERT's DQ(X) = Δ·round((X - q0)/Δ) + q0 equals torch's affine scheme when q0 = -z·Δ for an integer z, except
    at a tie: both round half to even, Q-BERT's X/Δ + z and torch's X/Δ before adding z, so for an odd z they pick
    neighbouring steps there (X = 0.75, Δ = 0.5, z = 1: round(2.5) = 2 against round(1.5) + 1 = 3)."""
    assume(not bool(torch.any(torch.frac((x / step).abs()) == 0.5)))
    zero_point = min(zero_point, 2**bits - 1)
    lo = -zero_point * step
    grid = QuantGrid.from_range(torch.tensor([lo]), torch.tensor([lo + (2**bits - 1) * step]), bits, False)
    ref = torch.fake_quantize_per_tensor_affine(x, step, zero_point, 0, 2**bits - 1)
    assert torch.allclose(grid.fake_quantize(x), ref, atol=1e-6 * max(1.0, float(x.abs().max())))


def test_error_shrinks_as_bits_grow():
    x = torch.randn(256, 64, generator=torch.Generator().manual_seed(0))
    errors = [(fake_quantize(x, b) - x).pow(2).mean().item() for b in range(2, 9)]
    assert all(a > b for a, b in zip(errors, errors[1:]))


@pytest.mark.parametrize("scheme", ["symmetric", "asymmetric"])
def test_constant_tensor_is_exact_and_finite(scheme):
    for value in (0.0, 3.5, -2.0):
        x = torch.full((4, 3), value)
        y = fake_quantize(x, 4, scheme, "channel")
        assert torch.isfinite(y).all()
        if scheme == "asymmetric" or value == 0.0:
            assert torch.equal(y, x)


def test_percentile_clips_outliers_only():
    x = torch.cat([torch.linspace(-1, 1, 999), torch.tensor([50.0])])
    lo, hi = tensor_ranges(x, percentile=99.9)
    assert hi.item() < 50 and hi.item() == pytest.approx(1.0, abs=0.01)
    lo_full, hi_full = tensor_ranges(x)
    assert hi_full.item() == 50.0 and lo_full.item() == -1.0
    assert lo.item() == pytest.approx(-1.0, abs=0.01)  # the [0.1, 99.9] percentiles drop one value at each end


@settings(max_examples=200, deadline=None)
@given(x=matrices(max_rows=8, max_cols=64), data=st.data())
def test_percentile_range_is_each_groups_order_statistics(x, data):
    """lo and hi are the k-th smallest and k-th largest value of each group, k = n - round(p/100·n) + 1 (ties
    included), whatever the percentile p in (50, 100] and the groups."""
    groups = data.draw(st.sampled_from([d for d in range(1, x.shape[0] + 1) if x.shape[0] % d == 0]))
    percentile = data.draw(st.floats(50.0, 100.0, exclude_min=True))
    lo, hi = tensor_ranges(x, groups, percentile)
    view = x.reshape(groups, -1)
    n = view.shape[1]
    k_hi = min(n, max(1, round(percentile / 100.0 * n)))
    ordered = view.sort(dim=1).values
    assert torch.equal(lo, ordered[:, n - k_hi]) and torch.equal(hi, ordered[:, k_hi - 1])


def test_quantize_codes_have_integer_dtypes_and_round_trip():
    x = torch.randn(8, 8)
    sym, asym = QuantSpec(8).grid_for(x), QuantSpec(4, "asymmetric", "channel").grid_for(x)
    assert sym.quantize(x).dtype == torch.int8 and asym.quantize(x).dtype == torch.uint8
    assert torch.allclose(asym.dequantize(asym.quantize(x)), asym.fake_quantize(x), atol=1e-6)
    assert int(asym.quantize(x).max()) <= 15
