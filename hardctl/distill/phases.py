"""HARD's phase switch (paper section 4 and appendix A), kept free of tensors so it can be tested alone.

Training alternates between an *augmentor* phase (the augmentor learns to make the student fail) and a
*student* phase (the student learns the augmented data). The switching statistic is the student's
error on augmented data, measured on every iteration's batch:

* augmentor → student once the error has been **above** ``l_max`` for ``patience`` consecutive iterations;
* student → augmentor once it has been **below** ``l_min`` for ``patience`` consecutive iterations.

A run starts in the student phase with the identity augmentor as the pool's only entry, which is the
same as starting in the augmentor phase: an untrained student's error is far above ``l_max``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

__all__ = ["PhaseSwitch", "STUDENT", "AUGMENTOR"]

STUDENT, AUGMENTOR = "student", "augmentor"


@dataclass
class PhaseSwitch:
    l_min: float
    l_max: float
    patience: int
    phase: str = STUDENT
    streak: int = 0  # consecutive iterations past the current phase's threshold
    switches: int = 0
    history: list[tuple[int, str]] = field(default_factory=list)  # (iteration, new phase) at each switch

    def __post_init__(self):
        if not 0 <= self.l_min < self.l_max:
            raise ValueError(f"l_min ({self.l_min}) must be >= 0 and below l_max ({self.l_max})")
        if self.patience < 1:
            raise ValueError("patience must be at least 1")

    def update(self, statistic: float, iteration: int = 0) -> bool:
        """Feed one iteration's statistic; returns True when the phase just switched."""
        past = statistic > self.l_max if self.phase == AUGMENTOR else statistic < self.l_min
        self.streak = self.streak + 1 if past else 0
        if self.streak < self.patience:
            return False
        self.phase = STUDENT if self.phase == AUGMENTOR else AUGMENTOR
        self.streak = 0
        self.switches += 1
        self.history.append((iteration, self.phase))
        return True

    def force(self, phase: str, iteration: int = 0) -> None:
        """Switch without the threshold (the augmentor-phase step cap)."""
        if phase != self.phase:
            self.phase, self.streak = phase, 0
            self.switches += 1
            self.history.append((iteration, phase))

    def state_dict(self) -> dict[str, Any]:
        return {"phase": self.phase, "streak": self.streak, "switches": self.switches,
                "history": [list(h) for h in self.history]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.phase, self.streak, self.switches = state["phase"], state["streak"], state["switches"]
        self.history = [tuple(h) for h in state["history"]]
