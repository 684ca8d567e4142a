"""Layer 5: the actors that carry the MAPE-K flow, their supervisor, the daemon.

Every actor runs in one trio nursery under ``supervisor.Supervisor``; actors
talk over bounded memory channels that carry batches, and every write goes
through the one receipt writer.
"""
