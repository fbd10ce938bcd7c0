"""Range observers: EMA follows its formula, min/max accumulates, dynamic follows each batch."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from qlib import DynamicObserver, EMAObserver, MinMaxObserver, make_observer

batches_st = st.lists(st.lists(st.floats(-10, 10, width=32), min_size=1, max_size=8), min_size=1, max_size=6)


@settings(max_examples=100, deadline=None)
@given(batches=batches_st, decay=st.floats(0.0, 0.999))
def test_ema_follows_its_formula(batches, decay):
    observer = EMAObserver(symmetric=True, decay=decay).train()
    expected = None
    for values in batches:
        x = torch.tensor(values)
        m = x.abs().max().item()
        expected = m if expected is None else decay * expected + (1 - decay) * m
        lo, hi = observer(x)
    assert hi.item() == pytest.approx(expected, rel=1e-5, abs=1e-6)
    assert lo.item() == pytest.approx(-expected, rel=1e-5, abs=1e-6)


@settings(max_examples=50, deadline=None)
@given(batches=batches_st, decay=st.floats(0.0, 0.999))
def test_asymmetric_ema_tracks_min_and_max(batches, decay):
    observer = EMAObserver(symmetric=False, decay=decay).train()
    lo_exp = hi_exp = None
    for values in batches:
        x = torch.tensor(values)
        lo_exp = x.min().item() if lo_exp is None else decay * lo_exp + (1 - decay) * x.min().item()
        hi_exp = x.max().item() if hi_exp is None else decay * hi_exp + (1 - decay) * x.max().item()
        lo, hi = observer(x)
    assert (lo.item(), hi.item()) == (pytest.approx(lo_exp, abs=1e-4), pytest.approx(hi_exp, abs=1e-4))


def test_ema_is_frozen_in_eval_mode_and_refuses_before_any_batch():
    observer = EMAObserver().eval()
    with pytest.raises(RuntimeError, match="never observed"):
        observer(torch.ones(3))
    observer.train()(torch.tensor([2.0]))
    observer.eval()
    assert observer(torch.tensor([100.0]))[1].item() == 2.0


def test_minmax_accumulates_and_dynamic_follows_each_batch():
    minmax, dynamic = MinMaxObserver(symmetric=False).train(), DynamicObserver(symmetric=False)
    for x in (torch.tensor([-1.0, 2.0]), torch.tensor([0.5, 0.7])):
        lo, hi = minmax(x)
        dlo, dhi = dynamic(x)
    assert (lo.item(), hi.item()) == (-1.0, 2.0)
    assert (dlo.item(), dhi.item()) == (0.5, pytest.approx(0.7))


def test_bad_observer_settings_are_named():
    with pytest.raises(ValueError, match="decay must be in"):
        EMAObserver(decay=1.0)
    with pytest.raises(ValueError, match="'median'"):
        make_observer("median", True)
