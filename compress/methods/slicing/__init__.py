"""Sub-network slicing (SortedNet / Matryoshka): nestable channel groups, the nested supernet with its sliced forward
and extraction, sorted (sandwich) training and BatchNorm recalibration."""
