"""Persistence: SQLite (one file, WAL) and content-addressed sample files. All of the admin's SQL is here."""
