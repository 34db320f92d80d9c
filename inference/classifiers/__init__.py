"""Classifiers of user messages, each layered cheap-first: rules, a small head, a larger model.

`emotion.EmotionClassifier` labels Ekman's six emotions plus neutral; see
docs/understanding.md for the design and its evaluation.
"""
