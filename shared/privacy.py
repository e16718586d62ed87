"""Personal data that residents write into free text themselves ("联系电话139…", "身份证号…",
"我是王秀兰").

One set of patterns, usable both in PostgreSQL (erasure and retention mask stored text with
`regexp_replace`) and in Python (what a department, a grid worker or the public is shown). The
patterns use only what both dialects read the same way (PostgreSQL's ARE and Python's `re`); a
test holds the two to the same answers. Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

# A mainland resident identity number: 18 characters (region, birth date, sequence, check
# digit or X). Letters or digits just before or after keep longer codes whole.
ID_NUMBER_IN_TEXT = (
    r"(?<![0-9A-Za-z])[1-9][0-9]{5}(?:19|20)[0-9]{2}(?:0[1-9]|1[0-2])"
    r"(?:0[1-9]|[12][0-9]|3[01])[0-9]{3}[0-9Xx](?![0-9A-Za-z])"
)
# Mainland mobile numbers and landlines with their area code. Digits just before or after keep
# longer numbers (order numbers, building codes) whole.
PHONES_IN_TEXT = r"(?<![0-9])(?:1[3-9][0-9]{9}|0[0-9]{2,3}-?[0-9]{7,8})(?![0-9])"
EMAIL_IN_TEXT = r"[A-Za-z0-9._%+-]+@[A-Za-z0-9.-]+\.[A-Za-z]{2,}"
# Everything a resident's erasure, or a reader without the right to it, must not see. The
# e-mail address comes first: PostgreSQL takes the longest of the alternatives that match at a
# place, Python the first, and an address may begin with what looks like a phone number.
PERSONAL_IN_TEXT = f"{EMAIL_IN_TEXT}|{ID_NUMBER_IN_TEXT}|{PHONES_IN_TEXT}"
MASK = "***"
# A reporter's own name is masked where their words repeat it; a name this short is not (one
# character would blank that character everywhere).
MIN_NAME_CHARS = 2

_PERSONAL = re.compile(PERSONAL_IN_TEXT)
_ID_NUMBERS = re.compile(ID_NUMBER_IN_TEXT)


def mask_in_text(
    text: str, *, keep_contacts: bool = False, names: Iterable[str | None] = ()
) -> str:
    """`text` with identity numbers masked, and phone numbers and e-mail addresses too unless
    `keep_contacts` (a department whose category says it must call the resident back); and
    each of `names` (the reporter's own, as they gave it) wherever the text repeats it."""
    masked = (_ID_NUMBERS if keep_contacts else _PERSONAL).sub(MASK, text)
    for name in names:
        if name and len(name) >= MIN_NAME_CHARS:
            masked = masked.replace(name, MASK)
    return masked


def masked_sql(sql_text: str, name_sql: str | None = None) -> str:
    """SQL for the text `sql_text` (an expression) with `PERSONAL_IN_TEXT` masked, and the
    name `name_sql` (an expression; NULL: none) as `mask_in_text` masks `names`."""
    numbers = f"regexp_replace({sql_text}, '{PERSONAL_IN_TEXT}', '{MASK}', 'g')"
    if name_sql is None:
        return numbers
    return (
        f"CASE WHEN char_length({name_sql}) >= {MIN_NAME_CHARS} "
        f"THEN replace({numbers}, {name_sql}, '{MASK}') ELSE {numbers} END"
    )
