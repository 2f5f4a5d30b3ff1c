"""Rules about the data and who changes them: access-rights changes (9.2.7), subject
blocks (6.5, 6.6), subject hashing (5.3) and anomaly detection (9.1.6)."""
