"""Defaults of ``corpus query`` (in their own module: the command line reads them without loading DuckDB)."""

DEFAULT_MEMORY = "1GB"
"""DuckDB's ``memory_limit`` for one query."""
DEFAULT_TIMEOUT = 120.0
"""Seconds a query may run before it is interrupted."""
