"""Model trees: families by architecture and distance, MoTHer with the Model Atlas priors."""
