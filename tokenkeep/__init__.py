"""The installed name of the deployable API: ``from tokenkeep import TokenReducer``.

The code lives in :mod:`policies` (what ships: the keep network, the train/deploy contract and ``TokenReducer``);
this package re-exports its public names, so ``from policies import TokenReducer`` keeps working too. The RAG
integrations are :mod:`tokenkeep.integrations.langchain` and :mod:`tokenkeep.integrations.llamaindex`.
"""

from policies import *  # noqa: F403 (the re-export is the point)
from policies import __all__ as __all__
