"""HTTP layer: one blueprint per area; errors rendered once as problem+json (``errors``)."""
