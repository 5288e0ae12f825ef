"""The machinery of medallion-replay, one subpackage per concept (see the README's map).

Importing any module here has no process-wide side effects; entry points call
:func:`engine.config.start_process` explicitly.
"""
