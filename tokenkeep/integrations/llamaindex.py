"""``TokenKeepPostprocessor``, a LlamaIndex node postprocessor: :mod:`policies.integrations.llamaindex`."""

from policies.integrations.llamaindex import TokenKeepPostprocessor

__all__ = ["TokenKeepPostprocessor"]
