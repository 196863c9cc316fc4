"""Pipeline stages; importing this package registers the built-in ones."""
from .base import STAGES, Stage, StageConfig, StageResult, register_stage
from . import train  # noqa: F401  (registers `train`)
from . import prune  # noqa: F401  (registers `prune`)
from . import meal  # noqa: F401  (registers `meal`)
from . import slice  # noqa: F401  (registers `slice`)
from . import mamba_pkd  # noqa: F401  (registers `mamba_pkd`)
from . import factory  # noqa: F401  (registers `factory`)

__all__ = ["STAGES", "Stage", "StageConfig", "StageResult", "register_stage"]
