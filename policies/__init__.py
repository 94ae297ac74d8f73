"""What ships: the keep network, the train/deploy contract and the deployable ``TokenReducer``.

Plain torch, safetensors and tokenizers: nothing here imports ``envs`` or ``agents``, and only
:mod:`policies.sb3_policy` (the training adapter, never imported by deployable code) imports
stable-baselines3 or gymnasium. ``tests/test_layers.py`` keeps it so.

    from policies import TokenReducer
    reducer = TokenReducer.from_pretrained("runs/default/reducer")
    reducer.reduce(context, question, rate=0.3).text
    reducer.reduce_documents(question, retrieved_chunks, rate=0.3, force_keep=["must stay"]).text
"""

from policies.budget import Budget, BudgetConfig, BudgetError
from policies.network import NetworkConfig, TokenKeepNetwork
from policies.processor import ProcessorConfig
from policies.reducer import TokenReducer
from policies.reducer_config import ReducerConfig, ReducerError
from policies.reduction import DocumentsReduction, KeptDocument, Reduction

__all__ = [
    "Budget",
    "BudgetConfig",
    "BudgetError",
    "DocumentsReduction",
    "KeptDocument",
    "NetworkConfig",
    "ProcessorConfig",
    "ReducerConfig",
    "ReducerError",
    "Reduction",
    "TokenKeepNetwork",
    "TokenReducer",
]
