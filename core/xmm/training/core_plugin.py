"""Training's part of xmm-core as a plugin: core's objectives (the decoders' ``decoder_alignment`` included),
through the same hook as any plugin's.

The registry loads this module by name (``registry.CORE_PLUGINS``), so the plugin layer never imports training.
"""

from __future__ import annotations

from xmm.hookspecs import hookimpl
from xmm.objective import Objective


@hookimpl
def xmm_objectives() -> dict[str, Objective]:
    from xmm.training.objectives import CORE_OBJECTIVES
    from xmm.training.objectives_cif import CIF_OBJECTIVES
    from xmm.training.objectives_decoder import DECODER_ALIGNMENT

    return {o.name: o for o in (*CORE_OBJECTIVES, *CIF_OBJECTIVES, DECODER_ALIGNMENT)}
