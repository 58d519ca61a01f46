"""Shares of an image list (ssrseg.engine.shard): every image exactly once, balanced by size,
deterministic; ``--shard K/N`` parsing."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ssrseg.engine.shard import Shard, ShardError, assign_shares, parse_shard, share_indices

costs_lists = st.lists(st.integers(min_value=0, max_value=10**6), max_size=60)


@settings(max_examples=200, deadline=None)
@given(costs=costs_lists, count=st.integers(min_value=1, max_value=80))
def test_every_item_lands_in_exactly_one_share(costs: list[int], count: int) -> None:
    shares = assign_shares(costs, count)
    assert len(shares) == count
    flat = [i for share in shares for i in share]
    assert sorted(flat) == list(range(len(costs)))  # once each, any N (also N > len)
    assert all(share == sorted(share) for share in shares)  # list order kept inside a share
    assert assign_shares(costs, count) == shares  # deterministic


@settings(max_examples=200, deadline=None)
@given(costs=costs_lists, count=st.integers(min_value=1, max_value=8))
def test_lpt_bound(costs: list[int], count: int) -> None:
    """Greedy LPT: no share exceeds the ideal (total / N) by more than the largest item."""
    loads = [sum(costs[i] for i in share) for share in assign_shares(costs, count)]
    largest = max(costs, default=0)
    assert max(loads, default=0) <= sum(costs) / count + largest


@settings(max_examples=100, deadline=None)
@given(n=st.integers(min_value=0, max_value=40), shards=st.integers(min_value=1, max_value=6),
       world=st.integers(min_value=1, max_value=4))  # fmt: skip
def test_shard_times_ranks_cover_the_list(n: int, shards: int, world: int) -> None:
    """--shard K/N under torchrun with W ranks: the N x W shares cover the list once."""
    items = list(range(100, 100 + n))
    seen = [
        x
        for k in range(shards)
        for r in range(world)
        for x in share_indices(items, Shard(k, shards).combined(r, world), lambda x: x % 7)
    ]
    assert sorted(seen) == items


def test_hand_computed_shares() -> None:
    # sizes 5, 9, 2, 7, 7: LPT visits 9 (item 1), 7 (3), 7 (4), 5 (0), 2 (2).
    # 9 -> w0 (load 9); 7 -> w1 (7); 7 -> w1, the least loaded (14); 5 -> w0 (14);
    # 2 -> w0 and w1 tie at 14, the lower index wins -> w0 (16). w0 = {0, 1, 2}, w1 = {3, 4}.
    assert assign_shares([5, 9, 2, 7, 7], 2) == [[0, 1, 2], [3, 4]]


def test_parse_shard() -> None:
    assert parse_shard(None) == Shard() and parse_shard("") == Shard()
    assert parse_shard("2/5") == Shard(2, 5) and parse_shard(" 0 / 1 ") == Shard(0, 1)
    assert Shard(1, 3).tag() == "shard-1-of-3" and Shard().tag() == ""
    assert Shard(1, 3).combined(1, 2) == Shard(3, 6)
    for bad in ("3/3", "1/0", "a/b", "1", "-1/2", "1/2/3"):
        with pytest.raises(ShardError, match="--shard"):
            parse_shard(bad)


def test_equal_costs_split_evenly() -> None:
    shares = assign_shares([1] * 7, 3)
    assert sorted(len(s) for s in shares) == [2, 2, 3]
