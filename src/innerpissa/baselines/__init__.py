"""Baselines for the comparison (METHOD section 8), each a `Steerer` trained on the adapter's pairs:
persona prompting, steering vectors (random, PCA, mean difference), S-space weight steering, and the
external `steering-vectors` package where it imports. `build_baseline(name, ...)` builds any of them;
`calibrate_sign` fixes the sign of any Steerer on a probe."""

from innerpissa.baselines.external import SteeringVectorsSteerer, external_status
from innerpissa.baselines.prompting import PersonaPrompting
from innerpissa.baselines.registry import BASELINE_NAMES, available_baselines, build_baseline
from innerpissa.baselines.sspace import SSpaceEdits, SSpaceSteerer, train_sspace
from innerpissa.baselines.vectors import SteeringVectors, VectorSteerer, train_vectors
from innerpissa.eval.calibration import calibrate_sign

__all__ = [
    "BASELINE_NAMES", "PersonaPrompting", "SSpaceEdits", "SSpaceSteerer", "SteeringVectors",
    "SteeringVectorsSteerer", "VectorSteerer", "available_baselines", "build_baseline", "calibrate_sign",
    "external_status", "train_sspace", "train_vectors",
]
