"""Spool → store in a thread of its own, exactly once (decisions 005, 017)."""
