"""Bus semantics: peers, names, match rules, routing, the driver."""
