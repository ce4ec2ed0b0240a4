"""Schemathesis hooks for tests/fuzz/run.sh.

openapi.yaml names three string formats JSON Schema does not define (`phone`, `time-zone`,
`local-date-time`); these generate values of them. It also states a few rules in prose that no
schema can hold (an appointment ends after it starts, the CRM a connection is, one of several
query parameters, each CRM's shape of record id, the connect page's link or cookie): a valid-looking request breaking one of them is
refused with 400 naming the field, and `filter_failure` accepts exactly those refusals.
"""

import datetime

import schemathesis
from hypothesis import strategies as st

# Numbers libphonenumber takes for valid, in the notations callers use: international, and
# national in the demo connections' defaultCountry (US).
_US_LINES = st.integers(100, 199).map(lambda n: f"{n:04d}")
_PHONES = st.one_of(
    _US_LINES.map(lambda line: f"+1415555{line}"),
    _US_LINES.map(lambda line: f"(415) 555-{line}"),
    _US_LINES.map(lambda line: f"212.555.{line}"),
    _US_LINES.map(lambda line: f"+1 646 555 {line}"),
    st.sampled_from(["+442079460958", "+44 20 7946 0958"]),
)

_ZONES = st.sampled_from([
    "UTC", "America/New_York", "America/Los_Angeles", "America/Sao_Paulo", "Europe/London",
    "Europe/Berlin", "Africa/Lagos", "Asia/Kolkata", "Asia/Kathmandu", "Asia/Tokyo",
    "Australia/Sydney", "Pacific/Auckland",
])

# Daytime only: no zone's clocks skip an hour between 06:00 and 22:00, so every value exists
# wherever it is read.
_WALL_TIMES = st.builds(
    lambda day, hour, minute, second, shape: shape.format(day=day, h=hour, m=minute, s=second),
    st.dates(min_value=datetime.date(2020, 1, 1), max_value=datetime.date(2035, 12, 31)),
    st.integers(6, 21),
    st.integers(0, 59),
    st.integers(0, 59),
    st.sampled_from([
        "{day}T{h:02d}:{m:02d}:{s:02d}",
        "{day}T{h:02d}:{m:02d}:{s:02d}.250",
        "{day}T{h:02d}:{m:02d}",
        "{day} {h:02d}:{m:02d}:{s:02d}",
        "{day} {h:02d}:{m:02d}",
    ]),
)

schemathesis.openapi.format("phone", _PHONES)
schemathesis.openapi.format("time-zone", _ZONES)
schemathesis.openapi.format("local-date-time", _WALL_TIMES)

# (field, or a suffix of it, and a piece of the message) of the refusals the prose rules make.
_PROSE_RULES = [
    # An appointment ends after it starts and lasts at most 14 days.
    (".end", "must end after it starts"),
    (".endTime", "must end after it starts"),
    (".end", "cannot last longer than 14 days"),
    (".endTime", "cannot last longer than 14 days"),
    # The CRM a stored connection is, which `crmType` cross-checks.
    ("crmType", " connection, not "),
    # get-customer needs one of customerId, email and phone: parameters cannot say so.
    ("customerId", "give customerId, email or phone"),
    # sync-records lists a connection's records unless syncId names one.
    ("connectionId", "or give syncId for one record"),
    # Each CRM has its own shape of record id; one that cannot be one is refused.
    ("customerId", "record id"),
]


# The connect page needs the link: its `session` query parameter or the cookie it leaves, one of
# two parameters; a page opened with neither says so (HTML, no JSON error).
_NO_CONNECT_LINK = "<title>Open your link again"


def _prose_rule(response):
    if response.status_code != 400:
        return False
    # Schemathesis keeps each header as the list of its values.
    content_type = "".join(response.headers.get("content-type") or [])
    if content_type.startswith("text/html"):
        return _NO_CONNECT_LINK in response.text
    try:
        error = response.json()["error"]
    except (ValueError, KeyError, TypeError):
        return False
    field, message = error.get("field") or "", error.get("message") or ""
    return any(field.endswith(suffix) and piece in message for suffix, piece in _PROSE_RULES)


@schemathesis.hook
def filter_failure(ctx, failure, case, response):
    """Keeps every failure but a valid-looking request refused for breaking a prose rule."""
    rejected_positive = type(failure).__name__ == "RejectedPositiveData"
    return not (rejected_positive and _prose_rule(response))
