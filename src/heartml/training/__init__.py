"""Training: the experiment, candidates, cross-validation, fitting, the card's numbers, MLflow logging."""
