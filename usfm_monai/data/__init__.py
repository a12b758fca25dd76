"""Re-exports are filled in at integration; import from the defining modules meanwhile."""
