"""Memory tier: Redis session state and buffers, PostgreSQL messages and pgvector memory.

`memory` never imports `inference`: what it needs from a model it receives as a
small Protocol.
"""
