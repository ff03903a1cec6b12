"""Store implementations, installed as ``gso_analytics.backends``.

Each module holds one ``<Name>Store`` that translates the core's
:class:`~gso_analytics.store.Transaction` vocabulary into its own writes.
"""
