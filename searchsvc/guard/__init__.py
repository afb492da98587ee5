"""Guardrails: NeMo Guardrails input/output rails (offline) and cheap checks on retrieved text.

`Guardrails` / `Verdict` import nemoguardrails (~1 s), so they load on first use; `scan_untrusted` and
`RailHit` are plain Python.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from searchsvc.guard.detectors import RailHit, scan_untrusted

if TYPE_CHECKING:
    from searchsvc.guard.rails import Guardrails, Verdict

__all__ = ["Guardrails", "RailHit", "Verdict", "scan_untrusted"]


def __getattr__(name: str) -> Any:
    if name in ("Guardrails", "Verdict"):
        from searchsvc.guard import rails

        return getattr(rails, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
