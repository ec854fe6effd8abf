"""Feedback: gold scorers, simulated humans, and (later) the human labeling store and app."""
