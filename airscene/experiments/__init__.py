"""The paper's experiments (strong generalisation, downstream tasks, count curves): pieces so far."""
