"""The CircleCI simulator and the demo built on it: not used by a real collection."""
