"""The grid map's topology: comprehensive grids must tile the territory (no overlaps, no gaps);
dedicated grids must lie inside comprehensive ones. Pure: geometries in, a report out."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import shapely
from shapely import STRtree
from shapely.geometry.base import BaseGeometry

AREA_EPS = 1e-12  # square degrees: shared edges have zero area, slivers above this count


@dataclass
class TopologyReport:
    comprehensive: int = 0
    dedicated: int = 0
    overlaps: list[tuple[str, str, float]] = field(default_factory=list)
    gaps: list[BaseGeometry] = field(default_factory=list)
    outside: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.overlaps or self.gaps or self.outside)

    def lines(self) -> list[str]:
        out = [f"{self.comprehensive:,} comprehensive and {self.dedicated:,} dedicated grids"]
        out.append(f"overlaps between comprehensive grids: {len(self.overlaps)}")
        out += [f"  {a} ∩ {b}: {area:.3g} deg²" for a, b, area in self.overlaps[:20]]
        out.append(f"gaps inside the comprehensive tiling: {len(self.gaps)}")
        for g in self.gaps[:20]:
            c = g.representative_point()
            out.append(f"  gap near lat {c.y:.5f}, lon {c.x:.5f} ({g.area:.3g} deg²)")
        out.append(f"dedicated grids outside every comprehensive grid: {len(self.outside)}")
        out += [f"  {gid}" for gid in self.outside[:20]]
        out.append("OK" if self.ok else "PROBLEMS FOUND")
        return out


def check(grids: Sequence[tuple[str, str, BaseGeometry]]) -> TopologyReport:
    comp = [(gid, g) for gid, kind, g in grids if kind == "comprehensive"]
    dedicated = [(gid, g) for gid, kind, g in grids if kind == "dedicated"]
    report = TopologyReport(len(comp), len(dedicated))
    if not comp:
        report.outside = [gid for gid, _ in dedicated]
        return report
    geoms = [g for _, g in comp]
    tree = STRtree(geoms)
    left, right = tree.query(geoms, predicate="intersects")
    for i, j in zip(left, right, strict=True):
        if i < j:
            area = shapely.intersection(geoms[i], geoms[j]).area
            if area > AREA_EPS:
                report.overlaps.append((comp[i][0], comp[j][0], float(area)))
    union = shapely.union_all(geoms)
    # Gaps: holes in the union of the tiling (the outer boundary is the territory's edge).
    parts = list(union.geoms) if union.geom_type == "MultiPolygon" else [union]
    for part in parts:
        for ring in part.interiors:
            hole = shapely.Polygon(ring)
            if hole.area > AREA_EPS:
                report.gaps.append(hole)
    shapely.prepare(union)
    for gid, g in dedicated:
        if not union.covers(g):
            report.outside.append(gid)
    return report
