"""The parts of the router's ``ControlPlane`` port that a router test does not exercise."""

from __future__ import annotations

from typing import Any


class ControlStubs:
    def health(self) -> dict[str, Any]:
        return {}

    async def forget_if_dead(self, model: str, url: str) -> bool:
        return False

    async def close(self) -> None:
        pass
