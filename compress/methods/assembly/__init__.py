"""NN-Factory assembly: a modular supernet, a generator from scenario to modules, repair and baselines."""
