"""Deployment switches that are configuration only: step executors and device placement."""
