"""richkd-deploy: distil small image classifiers with RichKD, export them, and prove
they are safe to ship."""

from __future__ import annotations

__version__ = "0.1.0"
