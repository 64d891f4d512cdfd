"""Camera simulators speaking the real protocols, for trying a setup and for tests."""
