"""GridIndex: dedicated precedence, boundaries, snapping, and agreement with brute force."""

from __future__ import annotations

import pytest
import shapely
from hypothesis import given, settings
from hypothesis import strategies as st

from services.router import democity, snapshot
from services.router.geo import Grid, GridIndex, GridKind


def _two_squares() -> GridIndex:
    return GridIndex.build(
        [
            Grid("b", GridKind.COMPREHENSIVE, shapely.box(1.0, 0.0, 2.0, 1.0)),
            Grid("a", GridKind.COMPREHENSIVE, shapely.box(0.0, 0.0, 1.0, 1.0)),
            Grid("a-school", GridKind.DEDICATED, shapely.box(0.4, 0.4, 0.6, 0.6), "school"),
            # a triangle: its bounding box is not its shape
            Grid("t", GridKind.COMPREHENSIVE, shapely.Polygon([(0, 1), (2, 1), (0, 2)])),
        ],
        snap_m=500,
    )


def test_dedicated_grid_wins_over_the_comprehensive_grid_around_it() -> None:
    index = _two_squares()
    assert index.locate(0.5, 0.5).grid_id == "a-school"
    assert index.locate(0.5, 0.5).how == "inside-dedicated"
    assert index.locate(0.2, 0.2).grid_id == "a"


def test_shared_boundaries_are_deterministic() -> None:
    index = _two_squares()
    # on the edge between a and b: the smaller id, every time
    assert {index.locate(0.5, 1.0).grid_id for _ in range(5)} == {"a"}
    # on the corner shared by a, b and the triangle
    assert index.locate(1.0, 1.0).grid_id == "a"


def test_a_bounding_box_is_not_the_shape() -> None:
    index = _two_squares()
    located = index.locate(1.9, 1.9, explain=True)  # in t's box, outside the triangle
    assert located.grid_id is None or located.how == "snapped"
    assert any("not its shape" in line for line in located.trail)


def test_snapping_within_the_distance_and_not_beyond() -> None:
    index = _two_squares()  # snap 500 m; 0.001° of latitude ≈ 111 m
    near = index.locate(-0.002, 0.5)
    assert (near.grid_id, near.how) == ("a", "snapped")
    assert 200 < near.distance_m < 250
    far = index.locate(-0.01, 0.5)
    assert far.grid_id is None
    assert far.how == "outside"


@pytest.fixture(scope="module")
def small_city_index() -> GridIndex:
    return snapshot.from_city(democity.generate(seed=3, scale="small")).index


@settings(max_examples=400, deadline=None)
@given(
    lat=st.floats(democity.SOUTH, democity.NORTH, allow_nan=False),
    lon=st.floats(democity.WEST, democity.EAST, allow_nan=False),
)
def test_index_agrees_with_brute_force(small_city_index: GridIndex, lat: float, lon: float) -> None:
    located = small_city_index.locate(lat, lon)
    assert located.grid_id == small_city_index.brute_force(lat, lon)
    assert located.how in ("inside", "inside-dedicated")  # the city is tiled: no gaps
