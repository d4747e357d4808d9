"""Sensors: experiment configs now; signal files (training, evaluation) and drift later."""
