"""The statistics and evidence a promotion rests on, and the model card's files. No MLflow."""
