"""What a person sees of the runs: MLflow tracking, figures, job outputs, sweeps, compare, report."""
