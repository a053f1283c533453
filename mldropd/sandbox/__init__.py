"""The sandbox for model code: a pre-imported fork server forks model hosts that confine
themselves (namespaces, a dedicated uid, Landlock, seccomp, rlimits) before they read a model
byte; the trusted side talks to them over a checked protocol and keeps every clock."""

from __future__ import annotations
