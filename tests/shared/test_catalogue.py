"""The service catalogue as data: the packaged file, and what a category says about answers."""

from __future__ import annotations

import pydantic
import pytest

from shared.catalogue import Catalogue, load_file


def test_a_facility_is_named_by_the_answer_the_category_asks_for() -> None:
    lights = load_file().by_code()["streetlight.out"]
    assert lights.facility_code({"pole_number": " SL-0421 "}) == "SL-0421"
    assert lights.facility_code({"pole_number": "小区门口第三根"}) is None  # words, not a number
    assert lights.facility_code({"pole_number": ""}) is None
    assert lights.facility_code({}) is None
    heating = load_file().by_code()["heating.outage"]  # asks no such question
    assert heating.facility_code({"indoor_temperature": "12"}) is None


def test_the_packaged_catalogue_asks_for_the_numbers_on_poles_and_covers() -> None:
    naming = {
        c.code: [a.code for a in c.attributes if a.names_facility]
        for c in load_file().categories
        if any(a.names_facility for a in c.attributes)
    }
    assert naming == {"streetlight.out": ["pole_number"], "roads.manhole": ["cover_number"]}


def test_a_catalogue_lists_each_category_once() -> None:
    one = load_file().categories[0].model_dump()
    with pytest.raises(pydantic.ValidationError, match=f"listed twice: {one['code']}"):
        Catalogue.model_validate({"categories": [one, one]})
