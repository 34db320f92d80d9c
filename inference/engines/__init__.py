"""Engine implementations. Each module imports its own backend library, nothing else does."""
