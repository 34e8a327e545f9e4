"""Work units and their assignment: a partition for every world size x worker count."""
from __future__ import annotations

import numpy as np
import pytest

from pipeline.data.units import WorkUnit, assign_units, list_units


def _units(sizes) -> list[WorkUnit]:
    return [WorkUnit(f"f{i // 4}.parquet", i % 4, n) for i, n in enumerate(sizes)]


@pytest.mark.parametrize("shuffle", [False, True])
@pytest.mark.parametrize("world_size,num_workers", [(1, 0), (1, 3), (2, 0), (2, 2), (3, 4), (8, 1)])
def test_assignment_is_a_partition(shuffle, world_size, num_workers):
    units = _units(np.random.default_rng(0).integers(1, 100, 23))
    assigned = [u for r in range(world_size) for w in range(max(1, num_workers))
                for u in assign_units(units, r, world_size, w, num_workers, shuffle=shuffle, seed=5, epoch=2)]
    assert sorted(assigned, key=lambda u: (u.path, u.row_group)) == sorted(units, key=lambda u: (u.path, u.row_group))
    assert len(set(assigned)) == len(units)


def test_evaluation_assignment_is_contiguous_and_balanced():
    sizes = np.random.default_rng(1).integers(50, 100, 40)
    units = _units(sizes)
    parts = [assign_units(units, r, 2, w, 2, shuffle=False, seed=0, epoch=0) for r in range(2) for w in range(2)]
    assert [u for p in parts for u in p] == units  # in order, one contiguous run each
    rows = [sum(u.num_rows for u in p) for p in parts]
    assert max(rows) - min(rows) <= 2 * sizes.max()


def test_training_assignment_depends_on_seed_and_epoch():
    units = _units(range(1, 30))
    pick = lambda seed, epoch: assign_units(units, 0, 2, 0, 1, shuffle=True, seed=seed, epoch=epoch)  # noqa: E731
    assert pick(0, 0) == pick(0, 0)
    assert pick(0, 0) != pick(0, 1) and pick(0, 0) != pick(1, 0)


def test_list_units_reads_footers_sorted(tiny_dataset):
    paths = sorted((tiny_dataset / "train").glob("*.parquet"), reverse=True)
    units = list_units([str(p) for p in paths])
    assert units == sorted(units, key=lambda u: (u.path, u.row_group))
    assert [u.num_rows for u in units] == [10, 10, 10, 7, 10, 10, 5, 8]


def test_bad_coordinates_are_rejected():
    with pytest.raises(ValueError, match="rank=2/2"):
        assign_units(_units([1]), 2, 2, 0, 0, shuffle=False, seed=0, epoch=0)
