"""Montybase server: the tree engine, queries, storage and the network endpoint."""
