"""Arrow Flight SQL: the subset of the protocol that flow-worker serves and ``Mesh(via=...)`` speaks.

``protocol`` holds the messages (hand-written protobuf over :mod:`ematix_flow.protobuf`, field
numbers from the Flight SQL specification), ``metadata`` the result tables of the catalog commands.
"""
