"""A generated city modelled on Qiqihar, for demos, tests and benchmarks.

At `city` scale: seven urban districts side by side, tiled by 17,242 rectangular comprehensive
grids with no gaps or overlaps, 3,188 dedicated grids (schools, hospitals, markets, …) each
inside one comprehensive grid, 21,237 grid workers, two buildings per comprehensive grid,
the departments of the service catalogue and a rule table. `small` keeps the shape at a
hundredth of the size. Deterministic for a seed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from typing import Any, Literal

from services.router.rules import Rule
from shared.catalogue import load_file

Scale = Literal["small", "city"]

DISTRICTS = [
    ("longsha", "龙沙区"),
    ("jianhua", "建华区"),
    ("tiefeng", "铁锋区"),
    ("angangxi", "昂昂溪区"),
    ("fularji", "富拉尔基区"),
    ("nianzishan", "碾子山区"),
    ("meilisi", "梅里斯达斡尔族区"),
]
DEDICATED_TYPES = [
    "school",
    "hospital",
    "market",
    "industrial_park",
    "office_building",
    "administrative_centre",
]
SIZES = {
    "city": {"grids": 17_242, "dedicated": 3_188, "workers": 21_237, "buildings_per_grid": 2},
    "small": {"grids": 175, "dedicated": 32, "workers": 215, "buildings_per_grid": 2},
}
# The city's extent: about 30 km × 25 km around Qiqihar's centre.
WEST, SOUTH, EAST, NORTH = 123.80, 47.20, 124.10, 47.45
GRIDS_PER_COMMUNITY = 8
COMMUNITIES_PER_STREET = 10
DEPARTMENT_NAMES = {
    "social-security": "社会保障局",
    "medical-insurance": "医疗保障局",
    "employment": "就业服务局",
    "civil-affairs": "民政局",
    "disabled-persons": "残疾人联合会",
    "police": "公安局",
    "housing": "住房和城乡建设局",
    "health": "卫生健康委员会",
    "education": "教育局",
    "womens-federation": "妇女联合会",
    "veterans": "退役军人事务局",
    "judicial": "司法局",
    "tax": "税务局",
    "market-supervision": "市场监督管理局",
    "street-office": "街道办事处",
    "water": "供水公司",
    "power": "供电公司",
    "heating": "热力公司",
    "gas": "燃气公司",
    "sanitation": "环境卫生管理处",
    "roads": "市政道路管理处",
    "streetlights": "路灯管理处",
    "environment": "生态环境局",
    "fire": "消防救援支队",
    "grid-mediation": "网格调解中心",
    "labour-inspection": "劳动保障监察支队",
}
SURNAMES = "王李张刘陈杨赵黄周吴徐孙胡朱高林何郭马罗"
GIVEN = "伟芳娜秀英敏静丽强磊军洋勇艳杰娟涛明超秀兰霞平刚桂英"


@dataclass
class City:
    districts: list[dict[str, Any]] = field(default_factory=list)
    street_offices: list[dict[str, Any]] = field(default_factory=list)
    communities: list[dict[str, Any]] = field(default_factory=list)
    grids: list[dict[str, Any]] = field(default_factory=list)  # with "bbox": (w, s, e, n)
    buildings: list[dict[str, Any]] = field(default_factory=list)
    facilities: list[dict[str, Any]] = field(default_factory=list)
    departments: list[dict[str, Any]] = field(default_factory=list)
    workers: list[dict[str, Any]] = field(default_factory=list)
    rules: list[Rule] = field(default_factory=list)


def _name(rng: random.Random) -> str:
    return rng.choice(SURNAMES) + "".join(rng.choice(GIVEN) for _ in range(rng.choice((1, 2))))


def _phone(rng: random.Random) -> str:
    return f"1{rng.choice('3589')}{rng.randrange(10**9):09d}"


def _split(total: int, parts: int) -> list[int]:
    base, extra = divmod(total, parts)
    return [base + (1 if i < extra else 0) for i in range(parts)]


Box = tuple[float, float, float, float]


def _tile(n: int, w: float, s: float, e: float, north: float) -> list[Box]:
    """`n` rectangles that tile the box exactly: full rows of `cols`, and a last row of wider
    cells for the remainder."""
    aspect = (e - w) * math.cos(math.radians((s + north) / 2)) / (north - s)
    cols = max(1, round(math.sqrt(n * aspect)))
    full_rows, rest = divmod(n, cols)
    rows = full_rows + (1 if rest else 0)
    # Shared edges computed once, so neighbours meet exactly (no slivers, no gaps).
    ys = [s + r * (north - s) / rows for r in range(rows)] + [north]
    xs = [w + c * (e - w) / cols for c in range(cols)] + [e]
    boxes = []
    for r in range(full_rows):
        for c in range(cols):
            boxes.append((xs[c], ys[r], xs[c + 1], ys[r + 1]))
    if rest:
        xr = [w + c * (e - w) / rest for c in range(rest)] + [e]
        for c in range(rest):
            boxes.append((xr[c], ys[full_rows], xr[c + 1], north))
    return boxes


def generate(*, seed: int = 7, scale: Scale = "small") -> City:
    size = SIZES[scale]
    rng = random.Random(seed)
    city = City()
    width = (EAST - WEST) / len(DISTRICTS)
    grid_counts = _split(size["grids"], len(DISTRICTS))
    comprehensive: list[dict[str, Any]] = []
    grid: dict[str, Any]
    for d, ((code, name), count) in enumerate(zip(DISTRICTS, grid_counts, strict=True)):
        city.districts.append({"code": code, "name": name, "contact": _phone(rng)})
        w = WEST + d * width
        boxes = _tile(count, w, SOUTH, w + width, NORTH)
        for i, box in enumerate(boxes):
            community_no = i // GRIDS_PER_COMMUNITY
            street_no = community_no // COMMUNITIES_PER_STREET
            street = f"{code}-s{street_no + 1:02d}"
            community = f"{street}-c{community_no % COMMUNITIES_PER_STREET + 1:02d}"
            if i % GRIDS_PER_COMMUNITY == 0:
                if community_no % COMMUNITIES_PER_STREET == 0:
                    city.street_offices.append(
                        {
                            "code": street,
                            "district": code,
                            "name": f"{name}第{street_no + 1}街道办事处",
                            "contact": _phone(rng),
                        }
                    )
                city.communities.append(
                    {
                        "code": community,
                        "street_office": street,
                        "name": f"{name}第{community_no + 1}社区",
                        "contact": _phone(rng),
                    }
                )
            grid = {
                "grid_id": f"{code}-g{i + 1:05d}",
                "kind": "comprehensive",
                "dedicated_type": None,
                "community": community,
                "leader_name": _name(rng),
                "leader_contact": _phone(rng),
                "parent_grid": None,
                "bbox": box,
            }
            comprehensive.append(grid)
    city.grids.extend(comprehensive)
    # Dedicated grids: the middle 40% of an evenly spread choice of comprehensive grids.
    step = len(comprehensive) / size["dedicated"]
    for k in range(size["dedicated"]):
        host = comprehensive[int(k * step)]
        w, s, e, n = host["bbox"]
        dx, dy = (e - w) * 0.3, (n - s) * 0.3
        city.grids.append(
            {
                "grid_id": f"{host['grid_id']}-d",
                "kind": "dedicated",
                "dedicated_type": DEDICATED_TYPES[k % len(DEDICATED_TYPES)],
                "community": host["community"],
                "leader_name": _name(rng),
                "leader_contact": _phone(rng),
                "parent_grid": host["grid_id"],
                "bbox": (w + dx, s + dy, e - dx, n - dy),
            }
        )
    # Workers: one per grid, the rest part-time in random comprehensive grids.
    for i, grid in enumerate(city.grids):
        city.workers.append(_worker(rng, i, str(grid["grid_id"])))
    for i in range(len(city.grids), size["workers"]):
        city.workers.append(_worker(rng, i, str(rng.choice(comprehensive)["grid_id"])))
    # Buildings: in the south-west quarter of each comprehensive grid (never in a dedicated one).
    for grid in comprehensive:
        w, s, e, n = grid["bbox"]
        for b in range(size["buildings_per_grid"]):
            city.buildings.append(
                {
                    "code": f"{grid['grid_id']}-b{b + 1}",
                    "grid_id": grid["grid_id"],
                    "lat": s + (n - s) * (0.1 + 0.1 * b),
                    "lon": w + (e - w) * 0.15,
                }
            )
    # Facilities: a street light in each comprehensive grid, a heating substation per community
    # (in its first grid); numbered as the plates on them read.
    first_grid: dict[str, str] = {}
    for grid in comprehensive:
        gid = str(grid["grid_id"])
        first_grid.setdefault(str(grid["community"]), gid)
        city.facilities.append(
            {"code": f"SL-{gid}", "kind": "street_light", "grid_id": gid, "name": None}
        )
    for community, gid in first_grid.items():
        city.facilities.append(
            {
                "code": f"HS-{community}",
                "kind": "heating_substation",
                "grid_id": gid,
                "name": f"{community} 换热站",
            }
        )
    departments = {c.department for c in load_file().categories} | set(DEPARTMENT_NAMES)
    for code in sorted(departments):
        city.departments.append(
            {"code": code, "name": DEPARTMENT_NAMES.get(code, code), "contact": _phone(rng)}
        )
    city.rules = default_rules()
    return city


def _worker(rng: random.Random, i: int, grid_id: str) -> dict[str, Any]:
    return {
        "worker_id": f"w-{i + 1:06d}",
        "grid_id": grid_id,
        "name": _name(rng),
        "on_duty": rng.random() < 0.92,
        "capacity": 20,
        "contact": _phone(rng),
    }


def default_rules() -> list[Rule]:
    """The reference city's rule table (also what `griddispatch rules export` starts from)."""
    return [
        Rule.model_validate(r)
        for r in [
            {
                "id": "gas-smell",
                "description": "a smell of gas is always the gas company's, and urgent",
                "match": {"keywords": ["煤气味", "燃气味", "smell of gas", "gas smell"]},
                "route": {"department": "gas", "priority": "urgent", "acknowledge_hours": 0.25},
            },
            {
                "id": "heating-in-season",
                "description": "heating season (20 Oct – 20 Apr): no heating is high priority",
                "match": {"category": "heating.*", "dates": {"from": "10-20", "to": "04-20"}},
                "route": {"department": "heating", "priority": "high"},
            },
            {
                "id": "heating-off-season",
                "match": {"category": "heating.outage"},
                "route": {"department": "heating", "priority": "low", "resolve_hours": 72},
            },
            {
                "id": "hospital-premises",
                "description": "sanitation inside a hospital goes to the health commission",
                "match": {"category": "sanitation.*", "dedicated_type": "hospital"},
                "route": {"department": "health"},
            },
            {
                "id": "school-safety",
                "match": {"category": "safety.*", "dedicated_type": "school"},
                "route": {"department": "education", "priority": "urgent"},
            },
            {
                "id": "disputes-in-the-grid",
                "description": "Fengqiao: disputes are mediated in the grid first",
                "match": {"category": "dispute.*"},
                "route": {"mediate_in_grid_first": True},
            },
            {"id": "catalogue-default", "description": "the category's own department"},
        ]
    ]


def point_in(grid: dict[str, Any], fx: float = 0.5, fy: float = 0.5) -> tuple[float, float]:
    """(lat, lon) at a fraction of a grid's box; the centre by default."""
    w, s, e, n = grid["bbox"]
    return s + (n - s) * fy, w + (e - w) * fx
