"""The split into shards: K/N parsing, pixel weights from headers, a deterministic balanced assignment."""

from __future__ import annotations

import random

import numpy as np
import pytest

from lossctl.errors import LossctlError
from lossctl.io import Pair, pair_folders
from lossctl.sharding import (
    Shard,
    assign,
    header_pixels,
    pair_pixels,
    pairing_digest,
    parse_shard,
    plan_shard,
    shard_positions,
    with_fallback,
)

from .conftest import random_rgb, save_image


@pytest.mark.parametrize(
    "text, shard", [("0/8", Shard(0, 8)), (" 7 / 8 ", Shard(7, 8)), ("0/1", Shard(0, 1))]
)
def test_shards_are_numbered_from_0(text, shard):
    assert parse_shard(text) == shard and str(shard) == text.replace(" ", "")


@pytest.mark.parametrize(
    "text, fragment",
    [
        ("8/8", "K must be 0..7 (shards are numbered from 0, like SLURM_ARRAY_TASK_ID under --array=0-7)"),
        ("1/0", "the number of shards must be at least 1"),
        ("-1/4", "--shard must look like K/N with K counted from 0"),
        ("3", "--shard must look like K/N"),
        ("/8", "--shard must look like K/N"),
        ("a/b", "e.g. --shard 0/8 or --shard $SLURM_ARRAY_TASK_ID/8"),
    ],
)
def test_bad_shards_are_refused_with_the_expected_form(text, fragment):
    with pytest.raises(LossctlError) as error:
        parse_shard(text)
    assert fragment in str(error.value)


def loads(shards: list[list[int]], weights: list[int]) -> list[int]:
    return [sum(weights[position] for position in shard) for shard in shards]


@pytest.mark.parametrize("count", [1, 2, 3, 4, 7, 8, 32])
def test_every_item_is_in_exactly_one_shard_and_the_largest_shard_is_within_the_lpt_bound(count):
    generator = random.Random(count)
    weights = [generator.choice([64 * 64, 256 * 256, 512 * 512, 2048 * 1536]) for _ in range(500)]
    names = [f"img_{index:04d}" for index in range(len(weights))]
    shards = assign(weights, names, count)
    assert sorted(position for shard in shards for position in shard) == list(range(len(weights)))
    assert all(shard == sorted(shard) for shard in shards)
    best_possible = max(sum(weights) / count, max(weights))  # no split can do better than this
    assert max(loads(shards, weights)) <= (4 / 3) * best_possible


def test_shards_balance_pixels_not_files():
    weights = [4000 * 3000] + [500 * 400] * 60  # one huge image against many small ones
    names = ["huge"] + [f"small_{index:02d}" for index in range(60)]
    huge_shard, small_shard = assign(weights, names, 2)
    assert huge_shard == [0] and len(small_shard) == 60  # 1 file against 60, the same pixels
    assert loads([huge_shard, small_shard], weights) == [weights[0], weights[0]]


def test_the_assignment_depends_only_on_names_and_weights_not_on_their_order():
    generator = random.Random(0)
    items = [(f"n{index:03d}", generator.choice([1, 2, 3, 5, 8])) for index in range(200)]  # many ties
    shuffled = items[:]
    generator.shuffle(shuffled)

    def named(entries):
        shards = assign([weight for _, weight in entries], [name for name, _ in entries], 5)
        return [sorted(entries[position][0] for position in shard) for shard in shards]

    assert named(items) == named(items)
    assert named(items) == named(shuffled)


def test_more_shards_than_items_leaves_some_empty():
    shards = assign([5, 3], ["a", "b"], 4)
    assert shards == [[0], [1], [], []]


def test_a_shard_s_positions_are_its_part_of_the_assignment_without_making_every_shard():
    """--shard 0/10000000 of 19 pairs made ten million empty lists (2.5 GB); 0/10^20 never ended."""
    generator = random.Random(1)
    weights = [generator.choice([0, 1, 4, 9]) for _ in range(40)]  # zero weights: ties on empty shards
    names = [f"p{index:02d}" for index in range(len(weights))]
    for count in (1, 3, 39, 40, 41, 100):
        assert [shard_positions(weights, names, Shard(index, count)) for index in range(count)] == assign(
            weights, names, count
        )
    huge = 10**20
    assert shard_positions(weights, names, Shard(0, huge)) == assign(weights, names, 41)[0]
    assert shard_positions(weights, names, Shard(huge - 1, huge)) == []


def test_assign_refuses_mismatched_inputs():
    with pytest.raises(ValueError, match="differ in length"):
        assign([1, 2], ["a"], 2)
    with pytest.raises(ValueError, match="at least 1"):
        assign([1], ["a"], 0)


def test_pixel_counts_come_from_headers(tmp_path, rng):
    png = save_image(tmp_path / "a.png", random_rgb(rng, 30, 50))
    jpeg = tmp_path / "b.jpg"
    save_image(jpeg, random_rgb(rng, 12, 10))
    scores = tmp_path / "c.npy"
    np.save(scores, np.zeros((3, 7, 5), np.float32))
    broken = tmp_path / "d.png"
    broken.write_bytes(b"not an image")
    assert header_pixels(png) == 1500 and header_pixels(jpeg) == 120 and header_pixels(scores) == 35
    assert header_pixels(broken) is None and header_pixels(tmp_path / "missing.png") is None
    assert pair_pixels(Pair("x", broken, png)) == 1500  # the ground truth weighs for a broken prediction
    assert pair_pixels(Pair("x", png, None)) == 1  # unmatched: nothing to decode
    assert with_fallback([100, None, 300, 200]) == [100, 200, 300, 200]  # unreadable: the median
    assert with_fallback([None, None]) == [1, 1]


def test_a_folder_splits_the_same_in_every_process_and_records_the_whole_pairing(folders, rng):
    pred, gt = folders
    for index, size in enumerate([8, 64, 16, 64, 32, 8, 128]):
        clean = random_rgb(rng, size, size)
        save_image(pred / f"p{index}.png", clean)
        save_image(gt / f"p{index}.png", clean)
    (pred / "broken.png").write_bytes(b"x")
    save_image(gt / "broken.png", random_rgb(rng, 8, 8))
    save_image(pred / "lonely.png", random_rgb(rng, 8, 8))
    pairs = pair_folders(pred, gt).pairs
    plans = [plan_shard(pairs, Shard(index, 3), workers=2) for index in range(3)]
    again = [plan_shard(pairs, Shard(index, 3), workers=1) for index in range(3)]
    assert [plan.record for plan in plans] == [plan.record for plan in again]
    positions = [position for plan in plans for position in plan.record["positions"]]
    assert sorted(positions) == list(range(len(pairs)))
    assert {plan.record["pairing"] for plan in plans} == {pairing_digest([pair.name for pair in pairs])}
    assert all(plan.record["pairs"] == len(pairs) and plan.record["count"] == 3 for plan in plans)
    assert [pair.name for pair in plans[0].pairs] == ["p6"]  # 128 x 128 outweighs the others together
    assert sum(plan.pixels for plan in plans) == plans[0].total_pixels


def test_the_pairing_digest_changes_with_names_and_order():
    assert pairing_digest(["a", "b"]) != pairing_digest(["b", "a"])
    assert pairing_digest(["a", "b"]) != pairing_digest(["a", "b", "c"])
    assert pairing_digest(["a\nb"]) != pairing_digest(["a", "b"])
