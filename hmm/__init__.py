"""The HMM alignment layer: hybrid scaled likelihoods, topologies, forced alignment."""
