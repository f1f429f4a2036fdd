"""Proving restores: scratch environments, the drill runner, faults, reports (DESIGN sections 5, 6)."""
