"""Run configs, one recipe per file, and what they are built from (common.py)."""

import os

_HERE = os.path.dirname(os.path.abspath(__file__))

# Every recipe file (not this package's own modules): what the tests run at `:runlocal`.
RECIPES = tuple(
    os.path.join(_HERE, name)
    for name in sorted(os.listdir(_HERE))
    if name.endswith(".py") and name not in ("__init__.py", "common.py")
)
