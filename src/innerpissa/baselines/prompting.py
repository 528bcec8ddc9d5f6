"""Persona prompting (METHOD section 8): honest / neutral / dishonest system prompt as c = +1 / 0 / -1; and
`InstructionPrompting`, the same with an explicit instruction ("Answer in a very cheerful tone.").

The persona sentences default to the training template with the first persona pair of the built-in set
("Pretend you're an honest person making statements about the world."), so prompting is told exactly what
the other methods learn from. By default the persona sentence is appended to the evaluation's own system
message, and c = 0 leaves that message untouched: the neutral state is the base model, byte for byte.
Only c in {-1, 0, +1} exists; anything else raises instead of silently rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from innerpissa.baselines.common import SignedSteerer
from innerpissa.data.pairs import builtin_instructions, builtin_personas
from innerpissa.steering import tensor_digest

PROMPT_MODES = ("append", "replace")


class PersonaPrompting(SignedSteerer):
    """Steers through the system message only; the model's weights and activations are never touched.

    `mode="append"`: `"<default system> <persona>"`; `mode="replace"`: the persona sentence alone.
    `neutral`, when given, replaces the default system message at c = 0 (the default keeps it).
    """

    name = "prompting"
    default_coeffs = (-1.0, 0.0, 1.0)
    prompt_only = True
    fixed_states = True
    #: where the default texts come from: a built-in set's first persona pair in its template
    defaults = staticmethod(builtin_personas)

    def __init__(self, positive: str | None = None, negative: str | None = None, neutral: str | None = None,
                 mode: str = "append", builtin: str = "honesty"):
        if mode not in PROMPT_MODES:
            raise ValueError(f"mode must be one of {PROMPT_MODES}, got {mode!r}")
        if positive is None or negative is None:
            bpos, bneg = self.defaults(builtin)
            positive, negative = positive or bpos, negative or bneg
        if positive.strip() == negative.strip():
            raise ValueError("positive and negative persona texts are identical")
        self.positive, self.negative, self.neutral, self.mode = positive, negative, neutral, mode

    def _state(self, c: float) -> int:
        c = self.signed(c)
        if c not in (-1.0, 0.0, 1.0):
            raise ValueError(f"prompting defines only c in {{-1, 0, +1}}, got {c!r}")
        return int(c)

    def system_prompt(self, c: float, default: str) -> str:
        state = self._state(c)
        if state == 0:
            return default if self.neutral is None else self.neutral
        persona = self.positive if state > 0 else self.negative
        if self.mode == "replace" or not default:
            return persona
        return f"{default} {persona}"

    def fingerprint(self) -> str:
        return tensor_digest((), self.positive, self.negative, self.neutral, self.mode, self.sign)

    @contextmanager
    def at(self, c: float) -> Iterator[None]:
        self._state(c)  # validate; nothing to apply to the model
        yield


class InstructionPrompting(PersonaPrompting):
    """An explicit instruction appended to the system message: the built-in set's `instructions` pair by
    default ("Answer in a very cheerful tone." / "Answer in a very gloomy tone."; honesty: "Answer as honestly
    as you can." / "Answer deceptively."). A second prompting baseline beside the persona sentence."""

    name = "instruction"
    defaults = staticmethod(builtin_instructions)
