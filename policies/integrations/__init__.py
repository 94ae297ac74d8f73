"""Integrations of the deployable :class:`~policies.reducer.TokenReducer` with RAG frameworks (optional extras).

* :mod:`policies.integrations.langchain`: ``TokenKeepCompressor``, a LangChain ``BaseDocumentCompressor``
  (``pip install tokenkeep[langchain]``).
* :mod:`policies.integrations.llamaindex`: ``TokenKeepPostprocessor``, a LlamaIndex ``BaseNodePostprocessor``
  (``pip install tokenkeep[llamaindex]``).

Importing this package imports neither framework; each module imports its own and, when it is missing, raises
an ImportError that names the extra to install. Like the rest of :mod:`policies`, nothing here imports the
trainer, gymnasium, ``envs`` or ``agents``. Both reduce the retrieved texts together with
:meth:`~policies.reducer.TokenReducer.reduce_documents`: one budget over all of them, order kept, documents of
which nothing is kept left out.
"""
