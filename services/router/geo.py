"""Which grid is a point in? `GridIndex.locate` answers for ~20,000 grids in microseconds.

Rules, in order:
1. dedicated grids (schools, hospitals, markets, …) before comprehensive ones: they sit inside
   comprehensive grids and handle what happens on their premises;
2. a point on a shared boundary belongs to the grid with the smallest id (deterministic);
3. a point outside every grid but within `snap_m` metres of one goes to the nearest;
4. otherwise: no grid (the case goes to manual triage).

How: a uniform lattice of cells over the city's bounding box; each cell lists the grids whose
bounding box touches it. A lookup is arithmetic to find the cell, then an exact
point-in-polygon test (shapely, prepared geometries) on the few candidates. Snapping uses an
STRtree. Coordinates are WGS84 degrees; distances use a local equirectangular approximation,
exact enough at grid scale.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum

import numpy as np
import shapely
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

M_PER_DEG_LAT = 111_320.0


class GridKind(StrEnum):
    COMPREHENSIVE = "comprehensive"
    DEDICATED = "dedicated"


@dataclass(frozen=True)
class Grid:
    grid_id: str
    kind: GridKind
    geometry: BaseGeometry
    dedicated_type: str | None = None


@dataclass(frozen=True)
class Located:
    grid_id: str | None
    how: str  # "inside-dedicated", "inside", "snapped", "outside"
    distance_m: float = 0.0
    trail: tuple[str, ...] = ()


@dataclass
class GridIndex:
    """Immutable after `build`; safe to share between tasks."""

    grids: list[Grid]
    snap_m: float = 100.0
    cell_deg: float = 0.01
    _cells: dict[tuple[int, int], tuple[int, ...]] = field(default_factory=dict, repr=False)
    _origin: tuple[float, float] = (0.0, 0.0)
    _tree: STRtree | None = None
    # per grid position: its bounding box, and whether the polygon *is* that box (then the
    # exact test is four comparisons instead of a call into GEOS)
    _boxes: list[tuple[float, float, float, float]] = field(default_factory=list, repr=False)
    _is_box: list[bool] = field(default_factory=list, repr=False)

    @classmethod
    def build(cls, grids: Sequence[Grid], *, snap_m: float = 100.0) -> GridIndex:
        # Dedicated first, then by id: candidates are tested in this order, so the first hit
        # is the answer (rules 1 and 2).
        ordered = sorted(grids, key=lambda g: (g.kind is not GridKind.DEDICATED, g.grid_id))
        index = cls(list(ordered), snap_m=snap_m)
        geoms = [g.geometry for g in index.grids]
        for geom in geoms:
            shapely.prepare(geom)
        if not geoms:
            return index
        garray = np.array(geoms, dtype=object)
        bounds = shapely.bounds(garray)
        box_areas = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
        index._boxes = [tuple(map(float, b)) for b in bounds]  # type: ignore[misc]
        index._is_box = [
            bool(abs(a - b) <= 1e-12 * max(b, 1e-12)) and shapely.get_num_coordinates(g) == 5
            for a, b, g in zip(shapely.area(garray), box_areas, geoms, strict=True)
        ]
        minx, miny = float(bounds[:, 0].min()), float(bounds[:, 1].min())
        index._origin = (minx, miny)
        # Cells about the size of a typical grid keep candidate lists short.
        areas = (bounds[:, 2] - bounds[:, 0]) * (bounds[:, 3] - bounds[:, 1])
        typical = float(np.sqrt(np.median(areas))) if len(areas) else 0.01
        index.cell_deg = max(typical, 1e-4)
        cells: dict[tuple[int, int], list[int]] = {}
        for pos, (x0, y0, x1, y1) in enumerate(bounds):
            for cx in range(index._cx(x0), index._cx(x1) + 1):
                for cy in range(index._cy(y0), index._cy(y1) + 1):
                    cells.setdefault((cx, cy), []).append(pos)
        index._cells = {k: tuple(v) for k, v in cells.items()}  # positions stay sorted
        index._tree = STRtree(geoms)
        return index

    def _cx(self, x: float) -> int:
        return math.floor((x - self._origin[0]) / self.cell_deg)

    def _cy(self, y: float) -> int:
        return math.floor((y - self._origin[1]) / self.cell_deg)

    def __len__(self) -> int:
        return len(self.grids)

    def locate(self, lat: float, lon: float, *, explain: bool = False) -> Located:
        candidates = self._cells.get((self._cx(lon), self._cy(lat)), ())
        trail: list[str] = []
        for pos in candidates:
            x0, y0, x1, y1 = self._boxes[pos]
            if not (x0 <= lon <= x1 and y0 <= lat <= y1):
                if explain:
                    trail.append(f"{self.grids[pos].grid_id}: not near")
                continue
            grid = self.grids[pos]
            # intersects, not contains: a point on the boundary counts (rule 2 via the order)
            if self._is_box[pos] or shapely.intersects_xy(grid.geometry, lon, lat):
                how = "inside-dedicated" if grid.kind is GridKind.DEDICATED else "inside"
                if explain:
                    trail.append(f"{grid.grid_id} ({grid.kind.value}) contains the point")
                return Located(grid.grid_id, how, 0.0, tuple(trail))
            if explain:
                trail.append(f"{grid.grid_id} ({grid.kind.value}): inside its box, not its shape")
        return self._snap(lat, lon, trail if explain else None)

    def _snap(self, lat: float, lon: float, trail: list[str] | None) -> Located:
        if self._tree is None:
            return Located(None, "outside", math.inf, ("no grids loaded",))
        # Search in degrees a box wide enough for snap_m, then measure properly.
        kx = M_PER_DEG_LAT * math.cos(math.radians(lat))
        pad = self.snap_m / min(kx, M_PER_DEG_LAT)
        box = shapely.box(lon - pad, lat - pad, lon + pad, lat + pad)
        best: tuple[float, str] | None = None
        for pos in self._tree.query(box):
            grid = self.grids[int(pos)]
            nx, ny = _nearest_xy(grid.geometry, lon, lat)
            d = math.hypot((nx - lon) * kx, (ny - lat) * M_PER_DEG_LAT)
            key = (d, grid.grid_id)
            if best is None or key < best:
                best = key
        if best is not None and best[0] <= self.snap_m:
            note = f"outside every grid; nearest {best[1]} at {best[0]:.0f} m ≤ {self.snap_m:.0f} m"
            return Located(best[1], "snapped", best[0], (*(trail or ()), note))
        note = (
            f"outside every grid; nearest at {best[0]:.0f} m > {self.snap_m:.0f} m"
            if best
            else f"no grid within {self.snap_m:.0f} m"
        )
        return Located(None, "outside", best[0] if best else math.inf, (*(trail or ()), note))

    def brute_force(self, lat: float, lon: float) -> str | None:
        """The same answer as `locate` for inside points, by testing every grid (tests only)."""
        for grid in self.grids:
            if shapely.intersects_xy(grid.geometry, lon, lat):
                return grid.grid_id
        return None


def _nearest_xy(geom: BaseGeometry, x: float, y: float) -> tuple[float, float]:
    nearest = shapely.shortest_line(geom, shapely.Point(x, y))
    (nx, ny), _ = shapely.get_coordinates(nearest)
    return float(nx), float(ny)
