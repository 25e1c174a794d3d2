"""Hypothesis settings profiles for the property tests (tests/unit/test_core_properties.py).

- ``quick`` (the default, what ``make test`` runs): few examples, a per-example deadline, and
  shrinking bounded in time, so a failing property reports within seconds instead of shrinking
  for minutes (pack order once took 161 s, free-point carry-over 71 s). The failing example is
  saved in the local example database (.hypothesis/), so a ``thorough`` run replays it first and
  shrinks it fully.
- ``thorough`` (``HYPOTHESIS_PROFILE=thorough``, for a nightly or manual run): many examples, no
  deadline, full shrinking.
- ``mutate`` (set by ``make mutate``): derandomized, no database, no shrinking, so a mutant is
  killed or not by the same examples every time and a killed mutant stops at the first failure.

A test may still pass ``@settings(...)`` for what is specific to it (health checks it needs
suppressed); it must not fix ``max_examples`` or ``phases``, which belong to the profile.
"""

from __future__ import annotations

import os
from datetime import timedelta

from hypothesis import HealthCheck, Phase, settings

# The property tests build whole event streams per example: generation is slow by design.
_SLOW_DATA = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much]
QUICK_SHRINK_SECONDS = 20

settings.register_profile(
    "quick",
    max_examples=30,
    deadline=timedelta(seconds=10),  # one example replays a stream of ~40 events in milliseconds
    suppress_health_check=_SLOW_DATA,
    print_blob=True,
)
settings.register_profile(
    "thorough",
    max_examples=1000,
    deadline=None,
    suppress_health_check=_SLOW_DATA,
    print_blob=True,
)
settings.register_profile(
    "mutate",
    max_examples=20,
    deadline=None,
    derandomize=True,
    database=None,
    phases=[Phase.explicit, Phase.generate],
    suppress_health_check=_SLOW_DATA,
)

PROFILE = os.environ.get("HYPOTHESIS_PROFILE", "quick")
settings.load_profile(PROFILE)

if PROFILE == "quick":
    # Hypothesis has no public setting for the shrink time; its engine stops shrinking after
    # MAX_SHRINKING_SECONDS (300 s). Lower it for the quick profile when the constant exists;
    # with a future Hypothesis without it, the quick profile still bounds examples and deadline.
    try:
        from hypothesis.internal.conjecture import engine as _engine
    except ImportError:  # pragma: no cover - depends on the installed Hypothesis
        pass
    else:
        if hasattr(_engine, "MAX_SHRINKING_SECONDS"):
            _engine.MAX_SHRINKING_SECONDS = QUICK_SHRINK_SECONDS


def pytest_collection_modifyitems(items):
    # mutmut 3.7 (the newest that allows the click<8.4 faust-streaming needs) reads the private
    # ``item._nodeid`` that pytest 9.2 no longer has; give it the public node id. No effect on
    # a plain pytest run.
    for item in items:
        if not hasattr(item, "_nodeid"):
            try:
                item._nodeid = item.nodeid
            except AttributeError:  # pragma: no cover - a pytest whose items take no attributes
                pass
