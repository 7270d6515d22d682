"""The redraft graph: state, convergence, companions, checkpointer factory and builder."""
