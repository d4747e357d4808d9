"""Operations, plain Python: alerts, backups and restore, health checks (domain layer, no Dagster)."""
