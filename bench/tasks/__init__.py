"""The tasks: likelihood, classification, inverse_cost, stability, logdet, cost."""
