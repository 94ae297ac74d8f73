"""``TokenKeepCompressor``, a LangChain document compressor: :mod:`policies.integrations.langchain`."""

from policies.integrations.langchain import TokenKeepCompressor

__all__ = ["TokenKeepCompressor"]
