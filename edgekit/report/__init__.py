"""Results store (SQLite index of the result JSON files) and the static dashboard."""
