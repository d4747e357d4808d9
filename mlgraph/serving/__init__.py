"""The model service: FastAPI on uvicorn serving an experiment's champion (entry point layer)."""
