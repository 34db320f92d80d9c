"""The model catalog: model specs, where weights come from, small artifacts we train."""
