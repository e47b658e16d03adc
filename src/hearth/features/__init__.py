"""Feature definitions shared by offline ETL (DuckDB) and online serving (one transaction)."""
