"""Models shipped with mitoqp: `default/` is the one `mitoqp run` uses."""
