"""Training: the experiment, candidates, cross-validation, the card's numbers, MLflow logging."""
