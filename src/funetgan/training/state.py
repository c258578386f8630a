"""Where training stands: what a checkpoint saves beside the weights, optimisers and RNG, and
what a resumed run continues from."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

STAGES = ("warmup", "gan", "encoder", "done")  # in the order they run


@dataclass
class TrainingState:
    """The running stage, its step count and seconds spent (a resumed stage's time budget
    counts them), the critic steps taken (they index the critic's batches), and for each
    finished stage its steps, critic steps and seconds (`completed`: saved with the model)."""

    stage: str = STAGES[0]
    step: int = 0
    seconds: float = 0.0
    critic_steps: int = 0
    completed: dict[str, dict[str, float]] = field(default_factory=dict)

    def finish_stage(self) -> None:
        """Record what the running stage did and move on to the next one."""
        self.completed[self.stage] = {
            "steps": self.step,
            "critic_steps": self.critic_steps,
            "seconds": round(self.seconds, 2),
        }
        self.stage = STAGES[STAGES.index(self.stage) + 1]
        self.step, self.seconds, self.critic_steps = 0, 0.0, 0

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict) -> TrainingState:
        return cls(**{f.name: values[f.name] for f in dataclasses.fields(cls) if f.name in values})
