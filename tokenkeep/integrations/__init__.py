"""RAG integrations of ``TokenReducer`` under the installed name (the code: :mod:`policies.integrations`).

``tokenkeep.integrations.langchain.TokenKeepCompressor`` and
``tokenkeep.integrations.llamaindex.TokenKeepPostprocessor``; each module imports its framework only when it is
imported itself, like the modules it re-exports.
"""
