"""Graph nodes (draft, critique, revise), their prompt windows and the model factory."""
