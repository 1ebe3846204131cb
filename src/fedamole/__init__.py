"""fedamole."""
