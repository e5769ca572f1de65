"""Results: the MLflow record layout, writing runs, leaderboards, figures and the report. No torch."""
