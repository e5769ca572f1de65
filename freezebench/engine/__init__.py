"""The engine: one trial, from building the backbone to its test outputs. Knows nothing of Optuna or MLflow."""
